"""Result objects of fitted mixed models: estimates, inference, lme4-style summaries and prediction."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from formulaic.errors import FormulaicError

from .design import Design, _as_frame, frames_by_factor, make_grouping_factor
from .errors import DataError, NewLevelError
from .inference import deviance_from_factor, satterthwaite, t_pvalues
from .kernels.covariance import lower_indices, theta_lower_bounds, theta_to_factors
from .kernels.pls import PLSProblem


def _unique_names(names: list[str]) -> list[str]:
    """lme4's names for repeated grouping factors: g, g.1, g.2, ..."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        out.append(name if count == 0 else f"{name}.{count}")
        seen[name] = count + 1
    return out


class LmerFit:
    """A fitted linear mixed model (the analogue of lme4's ``merMod``).

    Attributes follow lme4's accessors: ``fixef``, ``fixef_se``, ``vcov_beta``, ``coef_table``, ``theta``,
    ``sigma``, ``varcorr``, ``ranef``, ``ranef_condvar``, ``fitted``, ``residuals``, ``loglik``,
    ``deviance``, ``aic``, ``bic``, ``nobs``, ``ngroups``, ``is_singular``, ``converged``.
    """

    def __init__(self, design: Design, problem: PLSProblem, optimum, reml: bool, sigma2: float | None = None,
                 factor=None):
        self.design, self.problem, self.optimum, self.reml = design, problem, optimum, reml
        # A fixed-point fit hands over the factorisation its last state already holds.
        self._factor = factor if factor is not None else problem.factorize(theta_to_factors(optimum.theta, problem.dims))
        self.factors = self._factor.factors
        # Fixed-point methods estimate sigma^2 themselves; the profiled method takes it from the optimum.
        self._sigma2 = self._factor.sigma2(reml) if sigma2 is None else float(sigma2)
        self._beta, self._u = self._factor.solve()
        self._b = self._factor.u_to_b(self._u)

    # --- estimates -------------------------------------------------------------------------------------
    @property
    def formula(self) -> str:
        return self.design.formula

    @property
    def theta(self) -> np.ndarray:
        """Relative covariance factor parameters in lme4's order (lower triangles, column-major)."""
        return self.optimum.theta.copy()

    @property
    def converged(self) -> bool:
        return self.optimum.converged

    @property
    def method(self) -> str:
        """The estimator: "profiled" (lme4's), "em", "evidence" or "mackay"."""
        return getattr(self.optimum, "method", "profiled")

    @property
    def sigma(self) -> float:
        """Residual standard deviation."""
        return float(np.sqrt(self._sigma2))

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates beta."""
        return pd.Series(self._beta, index=self.design.fixed_names, name="Estimate")

    @cached_property
    def vcov_beta(self) -> pd.DataFrame:
        """Covariance matrix of the fixed-effects estimates, sigma^2 (R_X'R_X)^{-1}."""
        names = self.design.fixed_names
        return pd.DataFrame(self.sigma**2 * self._factor.vcov_beta_unscaled(), index=names, columns=names)

    @property
    def fixef_se(self) -> pd.Series:
        """Standard errors of the fixed effects."""
        return pd.Series(np.sqrt(np.diag(self.vcov_beta.to_numpy())), index=self.design.fixed_names, name="Std. Error")

    @cached_property
    def satterthwaite_df(self) -> pd.Series:
        """Satterthwaite denominator degrees of freedom of each fixed effect (lmerTest)."""
        df = satterthwaite(self.problem, self.optimum.theta, self.sigma, self.reml)
        return pd.Series(df, index=self.design.fixed_names, name="df")

    @property
    def coef_table(self) -> pd.DataFrame:
        """Estimate, Std. Error, df (Satterthwaite), t value and Pr(>|t|), as lmerTest's summary."""
        t_values = self.fixef / self.fixef_se
        df = self.satterthwaite_df
        return pd.DataFrame(
            {
                "Estimate": self.fixef,
                "Std. Error": self.fixef_se,
                "df": df,
                "t value": t_values,
                "Pr(>|t|)": t_pvalues(t_values.to_numpy(), df.to_numpy()),
            }
        )

    def covariance_matrices(self) -> list[np.ndarray]:
        """Per random-effects term, the covariance matrix G_t = sigma^2 T_t T_t'."""
        return [self.sigma**2 * T @ T.T for T in self.factors]

    @property
    def varcorr(self) -> pd.DataFrame:
        """Variance components in the layout of lme4's ``as.data.frame(VarCorr(fit))``."""
        rows = []
        names = _unique_names([term.name for term in self.design.terms])
        for name, term, G in zip(names, self.design.terms, self.covariance_matrices()):
            sd = np.sqrt(np.diag(G))
            for i, column in enumerate(term.columns):
                rows.append((name, column, None, G[i, i], sd[i]))
            for j in range(term.n_cols):
                for i in range(j + 1, term.n_cols):
                    corr = G[i, j] / (sd[i] * sd[j]) if sd[i] > 0 and sd[j] > 0 else np.nan
                    rows.append((name, term.columns[j], term.columns[i], G[i, j], corr))
        rows.append(("Residual", None, None, self.sigma**2, self.sigma))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    @property
    def b(self) -> np.ndarray:
        """Conditional modes of all random effects, in Z's column order."""
        return self._b.copy()

    @cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes E(b | y) per grouping factor, one row per level, one column per term column."""
        values = [self._b[s].reshape(t.n_levels, t.n_cols) for t, s in zip(self.design.terms, self.design.term_slices)]
        return frames_by_factor(self.design.terms, values)

    @cached_property
    def _condvar_blocks(self) -> list[np.ndarray]:
        blocks = self._factor.inverse_diagonal_blocks()
        return [self.sigma**2 * T[None] @ B @ T.T[None] for T, B in zip(self.factors, blocks)]

    @property
    def ranef_condvar(self) -> dict[str, list[np.ndarray]]:
        """Conditional covariance matrices Var(b_j | y) (lme4's ``condVar``), per factor one (levels, k, k) array per term."""
        out: dict[str, list[np.ndarray]] = {}
        for term, block in zip(self.design.terms, self._condvar_blocks):
            out.setdefault(term.name, []).append(block)
        return out

    def ranef_frame(self) -> pd.DataFrame:
        """Conditional modes and SDs in the long layout of lme4's ``as.data.frame(ranef(fit, condVar=TRUE))``."""
        pieces = []
        for term, s, block in zip(self.design.terms, self.design.term_slices, self._condvar_blocks):
            modes = self._b[s].reshape(term.n_levels, term.n_cols)
            sds = np.sqrt(np.diagonal(block, axis1=1, axis2=2))
            for i, column in enumerate(term.columns):
                pieces.append(
                    pd.DataFrame(
                        {"grpvar": term.name, "term": column, "grp": term.factor.levels, "condval": modes[:, i], "condsd": sds[:, i]}
                    )
                )
        return pd.concat(pieces, ignore_index=True)

    @cached_property
    def fitted(self) -> np.ndarray:
        """Fitted values X beta + Z b."""
        return self.design.X @ self._beta + self.design.Z @ self._b

    @property
    def residuals(self) -> np.ndarray:
        """Response residuals y - fitted."""
        return self.design.y - self.fitted

    # --- likelihood-based summaries --------------------------------------------------------------------
    @property
    def deviance(self) -> float:
        """The REML criterion (REML fits) or the deviance -2 log L (ML fits) at the estimates."""
        return deviance_from_factor(self._factor, self._sigma2, self.reml)

    @property
    def loglik(self) -> float:
        """Log-likelihood (REML log-likelihood for REML fits), -deviance / 2."""
        return -self.deviance / 2.0

    @property
    def n_params(self) -> int:
        """Number of estimated parameters: theta, beta and sigma."""
        return self.theta.size + self.problem.p + 1

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + np.log(self.nobs) * self.n_params

    @property
    def nobs(self) -> int:
        return self.design.nobs

    @property
    def ngroups(self) -> dict[str, int]:
        """Number of levels of each grouping factor."""
        return {term.name: term.n_levels for term in self.design.terms}

    @property
    def is_singular(self) -> bool:
        """lme4's ``isSingular``: a bounded theta (a relative standard deviation) within 1e-4 of 0."""
        lower = theta_lower_bounds(self.problem.dims)
        bounded = np.isfinite(lower)
        return bool(np.any(self.theta[bounded] - lower[bounded] < 1e-4))

    def report(self) -> str:
        """Convergence report: estimator, status, iterations or evaluations, time and criterion."""
        optimum = self.optimum
        status = getattr(optimum, "status", "converged" if optimum.converged else "not converged")
        iterations = getattr(optimum, "iterations", None)
        count = f"{iterations} iterations, " if iterations is not None else ""
        return (
            f"{self.method} ({'REML' if self.reml else 'ML'}): {status}; {count}{optimum.n_evaluations} "
            f"{'updates' if iterations is not None else 'criterion evaluations'}, {optimum.seconds:.3f} s; "
            f"criterion {self.deviance:.6f}; {optimum.message}"
        )

    # --- history of the estimation -------------------------------------------------------------------
    @cached_property
    def history(self) -> pd.DataFrame:
        """One row per iteration (per criterion evaluation for the profiled method): every variance and
        covariance of every term, sigma2 and the criterion."""
        rows = []
        names = _unique_names([term.name for term in self.design.terms])
        for index, entry in enumerate(self.optimum.history):
            if isinstance(entry, tuple):  # profiled: (theta, criterion), sigma^2 profiled at theta
                theta, criterion = entry
                factor = self.problem.factorize(theta_to_factors(theta, self.problem.dims))
                sigma2 = factor.sigma2(self.reml)
                G = [sigma2 * T @ T.T for T in factor.factors]
            else:
                G, sigma2, criterion = entry.G, entry.sigma2, entry.criterion
            row = {"iteration": index, "criterion": criterion, "sigma2": sigma2}
            for name, term, matrix in zip(names, self.design.terms, G):
                rows_, cols_ = lower_indices(term.n_cols)
                for i, j in zip(rows_, cols_):
                    label = term.columns[i] if i == j else f"{term.columns[j]}:{term.columns[i]}"
                    row[f"{name} {label}"] = matrix[i, j]
            rows.append(row)
        return pd.DataFrame(rows).set_index("iteration")

    def plot_history(self, *others: "LmerFit", labels: list[str] | None = None):
        """Trajectories of every variance component and the criterion, this fit and ``others`` side by side.

        Needs matplotlib (``pip install tfmixed[plot]``). Returns the matplotlib Figure.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("plot_history needs matplotlib: pip install 'tfmixed[plot]'") from None
        fits = [self, *others]
        labels = labels or [fit.method for fit in fits]
        columns = [c for c in self.history.columns if c != "criterion"] + ["criterion"]
        figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.0), squeeze=False)
        for axis, column in zip(axes[0], columns):
            for fit, label in zip(fits, labels):
                if column in fit.history:
                    axis.plot(fit.history.index, fit.history[column], marker=".", label=label)
            axis.set_title(column, fontsize=9)
            axis.set_xlabel("iteration")
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
        return figure

    # --- prediction ------------------------------------------------------------------------------------
    def predict(self, newdata: Any = None, *, re_form: str | None = None, allow_new_levels: bool = False) -> np.ndarray:
        """Predictions X beta + Z b for ``newdata`` (the training data when None), with lme4's semantics.

        ``re_form=None`` includes all random effects, ``re_form="fixed"`` (lme4's ``NA`` or ``~0``) none.
        Levels not seen in training raise :class:`NewLevelError` unless ``allow_new_levels=True``,
        in which case their random effects are 0.
        """
        if re_form not in (None, "fixed", "~0", "NA"):
            raise DataError(f"re_form must be None or 'fixed', got {re_form!r}")
        if newdata is None:
            return self.fitted.copy() if re_form is None else self.design.X @ self._beta
        frame = _as_frame(newdata)
        needed = {name for term in self.design.terms for name in term.spec.group} if re_form is None else set()
        try:
            X = np.asarray(self.design.fixed_spec.get_model_matrix(frame, na_action="raise"), dtype=np.float64)
        except (FormulaicError, ValueError, KeyError) as error:
            raise DataError(f"cannot build the fixed-effects matrix for newdata: {error}") from None
        prediction = X @ self._beta
        if re_form is not None:
            return prediction
        missing = sorted(name for name in needed if name not in frame.columns)
        if missing:
            raise DataError(f"newdata lacks grouping column(s) {missing}")
        for term, s in zip(self.design.terms, self.design.term_slices):
            factor = make_grouping_factor(frame, term.spec.group, term.name)
            position = term.factor.levels.get_indexer(factor.levels)
            if np.any(position < 0) and not allow_new_levels:
                new = list(factor.levels[position < 0][:5])
                raise NewLevelError(
                    f"newdata has level(s) {new} of {term.name!r} not seen in training; pass allow_new_levels=True"
                )
            spec, piece = term.expr_spec
            values = np.asarray(spec.get_model_matrix(frame), dtype=np.float64)[:, piece]
            effects = self._b[s].reshape(term.n_levels, term.n_cols)
            rows = position[factor.codes]
            known = rows >= 0
            prediction[known] += np.sum(values[known] * effects[rows[known]], axis=1)
        return prediction

    # --- printing --------------------------------------------------------------------------------------
    def summary(self, satterthwaite: bool = True) -> str:
        """lme4-style summary text (random effects with Std.Dev. and Corr, fixed effects, scaled residuals)."""
        lines = [
            f"Linear mixed model fit by {'REML' if self.reml else 'maximum likelihood'} [tfmixed, {self.method}]",
            f"Formula: {self.formula}",
            "",
        ]
        if self.reml:
            lines.append(f"REML criterion at convergence: {self.deviance:.1f}")
        else:
            lines.append(f"{'AIC':>9}{'BIC':>9}{'logLik':>9}{'deviance':>9}{'df.resid':>9}")
            lines.append(
                f"{self.aic:9.1f}{self.bic:9.1f}{self.loglik:9.1f}{self.deviance:9.1f}{self.nobs - self.n_params:9d}"
            )
        scaled = self.residuals / self.sigma
        quantiles = np.quantile(scaled, [0, 0.25, 0.5, 0.75, 1])
        lines += ["", "Scaled residuals: "]
        lines.append("".join(f"{h:>9}" for h in ["Min", "1Q", "Median", "3Q", "Max"]))
        lines.append("".join(f"{q:9.4f}" for q in quantiles))
        lines += ["", "Random effects:", self._random_effects_table()]
        groups = ", ".join(f"{name}, {count}" for name, count in self.ngroups.items())
        lines.append(f"Number of obs: {self.nobs}, groups:  {groups}")
        lines += ["", "Fixed effects:"]
        table = self.coef_table if satterthwaite else self.coef_table.drop(columns=["df", "Pr(>|t|)"])
        lines.append(table.to_string(float_format=lambda v: f"{v:.4g}"))
        if self.is_singular:
            lines += ["", "boundary (singular) fit: see LmerFit.is_singular"]
        if not self.converged:
            lines += ["", f"optimizer did not converge: {self.optimum.message}"]
        return "\n".join(lines)

    def _random_effects_table(self) -> str:
        rows = [("Groups", "Name", "Variance", "Std.Dev.", "Corr")]
        for term, G in zip(self.design.terms, self.covariance_matrices()):
            sd = np.sqrt(np.diag(G))
            for i, column in enumerate(term.columns):
                corr = [
                    f"{G[i, j] / (sd[i] * sd[j]):.2f}" if sd[i] > 0 and sd[j] > 0 else "NaN" for j in range(i)
                ]
                rows.append((term.name if i == 0 else "", column, f"{G[i, i]:.4g}", f"{sd[i]:.4g}", " ".join(corr)))
        rows.append(("Residual", "", f"{self.sigma**2:.4g}", f"{self.sigma:.4g}", ""))
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        return "\n".join(
            " " + "  ".join(cell.ljust(widths[c]) if c < 2 else cell.rjust(widths[c]) for c, cell in enumerate(row)).rstrip()
            for row in rows
        )

    def __repr__(self) -> str:
        return (
            f"LmerFit({self.formula!r}, {'REML' if self.reml else 'ML'}, method={self.method!r}, deviance={self.deviance:.4f}, "
            f"nobs={self.nobs}, converged={self.converged})"
        )
