"""Printing a fit: lme4-style summary, convergence report, repr."""

from __future__ import annotations

import numpy as np

from .base import FitBase
from .estimates import unique_names


class SummaryBody(FitBase):
    """The part of a summary that lmer and glmer fits share (each has its own report, summary and repr)."""

    def _fit_record_lines(self, verbose: bool) -> list[str]:
        return ["", "Fit record (optsum):", str(self.optsum)] if verbose else []

    def _summary_body(self, scaled_residuals, coefficients,
                      why: str = "partitioned data; fit.residuals is a Dask series") -> list[str]:
        """The part of lme4's summary after the fit criteria: residual quantiles, random effects, coefficients,
        singular-fit and convergence notes; ``why`` says why ``scaled_residuals`` is None."""
        if scaled_residuals is None:  # e.g. partitioned data: quantiles would need another pass over the rows
            lines = ["", f"Scaled residuals: not computed ({why})"]
        else:
            quantiles = np.quantile(scaled_residuals, [0, 0.25, 0.5, 0.75, 1])
            lines = ["", "Scaled residuals: ", "".join(f"{h:>9}" for h in ["Min", "1Q", "Median", "3Q", "Max"]),
                     "".join(f"{q:9.4f}" for q in quantiles)]
        lines += ["", "Random effects:", self._random_effects_table()]
        groups = ", ".join(f"{name}, {count}" for name, count in self.ngroups.items())
        lines += [f"Number of obs: {self.nobs}, groups:  {groups}", "", "Fixed effects:",
                  coefficients.to_string(float_format=lambda v: f"{v:.4g}")]
        if self.is_singular:
            lines += ["", f"boundary (singular) fit: see {type(self).__name__}.is_singular"]
        if not self.converged:
            lines += ["", f"optimizer did not converge: {self.optimum.message}"]
        return lines

    def _random_effects_table(self) -> str:
        rows = [("Groups", "Name", "Variance", "Std.Dev.", "Corr")]
        names = unique_names([term.name for term in self.design.terms])
        covariance = self.objective.covariance
        for name, term, G, part in zip(names, self.design.terms, self.covariance_matrices(), covariance.split(self.theta)):
            sd = np.sqrt(np.diag(G))
            structured = not term.structure.is_lme4_theta
            for i, column in enumerate(term.columns):
                if structured:  # glmmTMB's layout: the structure's own parameters once, tagged with its name
                    values = term.structure.structure_parameters(part).values()
                    corr = [" ".join(f"{v:.2f}" for v in values) + f" ({term.structure.code})"] if i == 0 else []
                else:
                    corr = [f"{G[i, j] / (sd[i] * sd[j]):.2f}" if sd[i] > 0 and sd[j] > 0 else "NaN" for j in range(i)]
                rows.append((name if i == 0 else "", column, f"{G[i, i]:.4g}", f"{sd[i]:.4g}", " ".join(corr).strip()))
        if self.has_residual:
            rows.append(("Residual", "", f"{self.sigma**2:.4g}", f"{self.sigma:.4g}", ""))
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        return "\n".join(
            " " + "  ".join(cell.ljust(widths[c]) if c < 2 else cell.rjust(widths[c]) for c, cell in enumerate(row)).rstrip()
            for row in rows
        )


class Printing(SummaryBody):
    """Mixed into :class:`~tfmixed.results.LmerFit`."""

    def report(self) -> str:
        """Convergence report: estimator, status, iterations or evaluations, time and criterion."""
        optimum = self.optimum
        profiled = self.method == "profiled"
        count = f"{optimum.iterations} {'optimiser runs' if profiled else 'iterations'}, " if optimum.iterations else ""
        return (
            f"{self.method} ({'REML' if self.reml else 'ML'}): {optimum.status}; {count}{optimum.n_evaluations} "
            f"{'criterion evaluations' if profiled else 'updates'}, {optimum.seconds:.3f} s; "
            f"criterion {self.deviance:.6f}; {optimum.message}"
        )

    def summary(self, satterthwaite: bool = True, verbose: bool = False) -> str:
        """lme4-style summary text (random effects with Std.Dev. and Corr, fixed effects, scaled residuals); with
        ``verbose`` the fit record (:attr:`optsum`: stages, tolerances, backend and block strategies) too."""
        lines = [
            f"Linear mixed model fit by {'REML' if self.reml else 'maximum likelihood'} [tfmixed, {self.method}]",
            f"Formula: {self.formula}",
        ]
        if self.problem.strategy == "iterative":  # the iterative kernel states its accuracy settings
            lines.append(f"Backend: {self.problem.options.describe()}; conditional variances not available")
            covariance = self.optimum.extra.get("monte_carlo_cov")
            if covariance is not None:
                spread = ", ".join(f"{value:.2g}" for value in np.sqrt(np.maximum(np.diag(covariance), 0.0)))
                lines.append(f"Monte Carlo standard errors of theta (from the probes' spread): {spread}")
        if self.design.has_weights:
            lines.append("Weights: prior weights (residual variance sigma^2 / w)")
        if self.design.has_offset:
            lines.append("Offset: " + (", ".join(self.design.parsed.offsets) or "offset= argument"))
        lines.append("")
        if self.reml:
            lines.append(f"REML criterion at convergence: {self.deviance:.1f}")
        else:
            lines.append(f"{'AIC':>9}{'BIC':>9}{'logLik':>9}{'deviance':>9}{'df.resid':>9}")
            lines.append(
                f"{self.aic:9.1f}{self.bic:9.1f}{self.loglik:9.1f}{self.deviance:9.1f}{self.nobs - self.n_params:9d}"
            )
        scaled = self.residuals / self.sigma if self.design.in_memory else None
        table = self.coef_table if satterthwaite else self.coef_table.drop(columns=["df", "Pr(>|t|)"])
        return "\n".join(lines + self._summary_body(scaled, table) + self._fit_record_lines(verbose))

    def __repr__(self) -> str:
        return (
            f"LmerFit({self.formula!r}, {'REML' if self.reml else 'ML'}, method={self.method!r}, deviance={self.deviance:.4f}, "
            f"nobs={self.nobs}, converged={self.converged})"
        )
