"""The result of ``glmer``: a fitted generalised linear mixed model (the analogue of lme4's ``glmerMod``).

It shares the term, variance-component, conditional-mode and prediction pieces of
:class:`~tfmixed.results.LmerFit` and replaces what differs for a non-Gaussian response: no residual variance,
fitted values on the response scale, lme4's two deviances, Wald z tests, and the covariance of beta from the
Hessian of the approximate deviance (lme4's default ``use.hessian = TRUE``).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..design import Design
from ..errors import DataError
from ..refit import refit_glmer
from ..laplace import GlmmObjective
from .estimates import Estimates
from .likelihood import Likelihood
from .prediction import Prediction, is_dask_frame, on_partitions
from .bootstrap import Resampling
from .intervals import Intervals
from .plots import Plots
from .optsum import OptSummary
from .printing import SummaryBody


class GlmerFit(Estimates, Likelihood, Intervals, Prediction, Resampling, Plots, SummaryBody):
    """A fitted GLMM: ``fixef``, ``fixef_se``, ``vcov_beta``, ``coef_table``, ``theta``, ``varcorr``, ``ranef``,
    ``ranef_frame()``, ``fitted`` (means), ``linear_predictor()``, ``predict(type=)``, ``residuals``
    (deviance residuals), ``deviance`` (lme4's conditional deviance), ``minus2loglik``, ``loglik``, ``aic``,
    ``bic``, ``is_singular``, ``converged``, ``summary()``.
    """

    has_residual = False
    design: Design  # glmer refuses partitioned data
    objective: GlmmObjective

    def __init__(self, design, objective, optimum, *, hessian: np.ndarray | None = None):
        self.design, self.objective, self.optimum = design, objective, optimum
        self.n_agq = objective.n_agq
        self.reml = False
        theta, beta, phi = objective.split(optimum.theta)
        self._theta = theta.copy()
        self._phi = None if phi is None else phi.copy()
        #: the family with its estimated parameters (a negative binomial's size, a Gamma's dispersion, ...)
        self.family = objective.family_at(self._phi)
        self._mode = objective.mode(self._theta, beta, self._phi)
        # conditional variances from the Laplace approximation's Gaussian: its factor at the criterion's weights
        self._set_estimates(objective.pirls.laplace_factor(self._mode), 1.0, self._mode.beta, self._mode.u)
        self._hessian = hessian

    @property
    def theta(self) -> np.ndarray:
        """The covariance parameters (lme4's theta for unstructured terms; the scale is 1: no residual
        variance)."""
        return self._theta.copy()

    @cached_property
    def optsum(self) -> OptSummary:
        """The fit record (see :class:`~tfmixed.results.optsum.OptSummary`), theta and beta held apart."""
        label = {0: "nAGQ=0", 1: "Laplace"}.get(self.n_agq, f"AGQ {self.n_agq}")
        strategies = {"backend": "exact", "criterion": f"{label}, {self.family.name}"}
        return OptSummary.of(self.optimum, criterion_name=label, theta_names=self.theta_names,
                             strategies=strategies, n_theta=self.objective.n_theta,
                             family_names=tuple(self.family.estimated_names),
                             family_from_working=self.family.from_working)

    @cached_property
    def criterion(self) -> float:
        """The minimised approximate -2 log-likelihood (Laplace, or quadrature for nAGQ > 1)."""
        return self.objective.value(self._mode)

    @property
    def minus2loglik(self) -> float:
        """-2 log L. For nAGQ > 1 it keeps the saturated model's constant that lme4's value leaves out."""
        return self.criterion

    @property
    def loglik(self) -> float:
        return -self.criterion / 2

    @property
    def deviance(self) -> float:
        """lme4's ``deviance()``: the sum of squared deviance residuals at the conditional modes."""
        return float(np.sum(self.family.deviance_residuals(self.design.y, self._mode.mu, self._prior)))

    @property
    def _prior(self) -> np.ndarray:
        return self.objective.pirls.prior

    @property
    def n_params(self) -> int:
        """theta, beta and the family's estimated parameters; AIC and BIC follow as for ``lmer``."""
        return self._theta.size + self.design.n_fixed + self.objective.n_family

    @property
    def family_parameters(self) -> pd.Series:
        """The family's parameters (estimated or fixed) on their natural scale: a negative binomial's ``size``
        (lme4's ``getME(fit, "glmer.nb.theta")``, glmmTMB's nbinom2 ``sigma``), a Gamma's, inverse Gaussian's or
        Gaussian's ``dispersion`` (glmmTMB's sigma^2), a beta's ``precision``; empty for binomial and Poisson."""
        return pd.Series(self.family.parameters, index=list(self.family.parameter_names), name="estimate", dtype=float)

    @cached_property
    def _parameter_covariance(self) -> np.ndarray | None:
        """2 H^-1 in (theta, beta, phi): the covariance of all estimates (None without the Hessian, or where it
        is singular)."""
        if self._hessian is None:
            return None
        try:
            return 2.0 * np.linalg.inv(self._hessian)
        except np.linalg.LinAlgError:
            return None

    @cached_property
    def family_parameters_se(self) -> pd.Series:
        """Standard errors of the estimated family parameters from 2 H^-1 (their working scale, mapped to the
        natural one by the delta method); a sub-model's coefficients (zero-inflation) are on their own scale."""
        names = self.family.estimated_names
        if self._parameter_covariance is None or not names:
            return pd.Series(np.full(len(names), np.nan), index=names, name="Std. Error", dtype=float)
        diagonal = np.diag(self._parameter_covariance)[-len(names):]
        se = np.sqrt(np.where(diagonal >= 0, diagonal, np.nan)) * np.abs(self.family.natural_derivative(self._phi))
        return pd.Series(se, index=names, name="Std. Error")

    #: the sub-models' coefficient prefixes and glmmTMB's table titles
    SUB_MODELS = (("zi_", "Zero-inflation model"), ("disp_", "Dispersion model"))

    def _sub_model_table(self, prefix: str) -> pd.DataFrame | None:
        """glmmTMB's table of a sub-model (zero-inflation, dispersion): Estimate, Std. Error, z value, Pr(>|z|)."""
        names = [name for name in self.family.estimated_names if name.startswith(prefix)]
        if not names:
            return None
        estimate = self.family_parameters[names]
        se = self.family_parameters_se[names]
        z = estimate / se
        table = pd.DataFrame({"Estimate": estimate, "Std. Error": se, "z value": z,
                              "Pr(>|z|)": 2 * stats.norm.sf(np.abs(z.to_numpy()))})
        table.index = [name[len(prefix):] for name in names]
        return table

    @cached_property
    def vcov_beta(self) -> pd.DataFrame:
        """Covariance of beta: the beta block of 2 H^{-1}, H the Hessian of the approximate deviance in
        (theta, beta) at the optimum (nAGQ >= 1, lme4's default ``use.hessian``), or (R_X'R_X)^{-1} of the joint
        PIRLS step (nAGQ = 0, as lme4)."""
        names = self.design.fixed_names
        if self._hessian is None:
            unscaled = self.objective.mode(self._theta, None, self._phi).factor.vcov_beta_unscaled()
        else:
            fixed = slice(self._theta.size, self._theta.size + len(names))
            covariance = self._parameter_covariance
            unscaled = covariance[fixed, fixed] if covariance is not None else np.full((len(names), len(names)), np.nan)
        return pd.DataFrame((unscaled + unscaled.T) / 2, index=names, columns=names)

    @property
    def coef_table(self) -> pd.DataFrame:
        """Estimate, Std. Error, z value and Pr(>|z|) (Wald tests), as lme4's summary of a GLMM."""
        z = self.fixef / self.fixef_se
        return pd.DataFrame({"Estimate": self.fixef, "Std. Error": self.fixef_se, "z value": z,
                             "Pr(>|z|)": 2 * stats.norm.sf(np.abs(z.to_numpy()))})

    @cached_property
    def fitted(self) -> pd.Series:
        """Fitted means mu = g^{-1}(X beta + Z b + offset) (lme4's ``fitted``), on the rows' index; for a
        zero-inflated family E[y] = (1 - pi) mu, as glmmTMB's."""
        return self._on_rows(self.family.response_mean(self._mode.mu.copy()), "fitted")

    @property
    def residuals(self) -> pd.Series:
        """Deviance residuals sign(y - mu) sqrt(d_i) (lme4's default ``residuals``), on the rows' index."""
        d = self.family.deviance_residuals(self.design.y, self._mode.mu, self._prior)
        return self._on_rows(np.sign(self.design.y - self._mode.mu) * np.sqrt(np.maximum(d, 0.0)), "residuals")

    @property
    def pearson_residuals(self) -> pd.Series:
        """(y - mu) sqrt(w) / sqrt(V(mu)), on the rows' index."""
        mu = self._mode.mu
        return self._on_rows((self.design.y - mu) * np.sqrt(self._prior / self.family.variance(mu)), "pearson")

    def predict(self, newdata: Any = None, *, type: str = "link", re_form: str | None = None,
                allow_new_levels: bool = False, interval: str | None = None, level: float = 0.95,
                se_fit: bool = False):
        """Predictions on the link scale (``type="link"``, lme4's default) or the response scale
        (``type="response"``: means, probabilities for binomial); other arguments as ``LmerFit.predict``.

        ``se_fit=True`` or ``interval="confidence"`` give a DataFrame (fit, se_fit, lower, upper): on the link
        scale the prediction-error variance a'A^{-1}a of the mixed-model equations at the conditional modes, with
        the PIRLS weights (the Laplace approximation's Gaussian); on the response scale the interval's limits
        through the inverse link and se_fit by the delta method (d mu / d eta times the link-scale SE).

        >>> import tfmixed as tm
        >>> fit = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
        ...                family="binomial", verbose=False)
        >>> fit.predict({"period": ["1"], "herd": ["1"]}, type="response").round(3).tolist()
        [0.308]
        """
        if type not in ("link", "response"):
            raise DataError(f"type must be 'link' or 'response', got {type!r}")
        if type == "response" and self.family.sub_model_title is not None and newdata is not None:
            raise DataError(f"predictions on the response scale of new rows need the {self.family.sub_model_title} "
                            "on those rows, which is not available yet: use type='link' (the conditional model)")
        if interval is not None or se_fit:
            if is_dask_frame(newdata):
                raise DataError("intervals of a GLMM's predictions on a Dask frame: compute the frame first")
            table = Prediction.predict(self, newdata, re_form=re_form, allow_new_levels=allow_new_levels,
                                       interval=interval, level=level, se_fit=True)
            if type == "response":
                link = self.family.link
                table["se_fit"] = table["se_fit"] * link.mu_eta(table["fit"].to_numpy())
                for column in ("fit", "lower", "upper")[: 3 if interval else 1]:
                    table[column] = link.inverse(table[column].to_numpy())
            return table
        if is_dask_frame(newdata):
            return on_partitions(self, newdata, "linear_predictor", dict(re_form=re_form, allow_new_levels=allow_new_levels),
                                 pd.Series([], dtype=float), self.family.link.inverse if type == "response" else None)
        eta = self.linear_predictor(newdata, re_form=re_form, allow_new_levels=allow_new_levels)
        if type == "response":
            mean = self.family.link.inverse(eta)
            eta = self.family.response_mean(mean) if newdata is None else mean
        return pd.Series(eta, index=self._row_labels(newdata), name="fit")

    @property
    def _prediction_cross_products(self):
        # the mixed-model equations at the conditional modes: [Z | X] with the PIRLS weights there
        return self.objective.pirls.weighted_cross_products(self._mode)

    def draw_response(self, mean_eta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A response drawn from the fitted family at mu = g^{-1}(eta): binomial proportions of the trials (the
        prior weights), Poisson or negative binomial counts, Gamma, inverse Gaussian, Gaussian or beta values."""
        return self.family.sample(self.family.link.inverse(mean_eta), self._prior, rng)

    def resampling_metric(self):
        return None

    def refit_response(self, response: np.ndarray, metric=None):
        return refit_glmer(self, response)

    def report(self) -> str:
        """Convergence report: approximation, status, evaluations, time and criterion."""
        optimum = self.optimum
        return (f"{self.approximation}: {optimum.status}; {optimum.n_evaluations} criterion evaluations "
                f"({self.objective.n_pirls} PIRLS runs), {optimum.seconds:.3f} s; -2 log L {self.criterion:.6f}; "
                f"{optimum.message}")

    @property
    def approximation(self) -> str:
        if self.n_agq == 0:
            return "Laplace at the joint PIRLS mode (nAGQ = 0)"
        if self.n_agq == 1:
            return "Laplace Approximation"
        return f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.n_agq}"

    def summary(self, verbose: bool = False) -> str:
        """lme4-style summary: family, information criteria, scaled residuals, random effects, z tests; with
        ``verbose`` the fit record (:attr:`optsum`) too."""
        family = self.family
        values = ", ".join(f"{name} = {value:.4g}" for name, value in self.family_parameters.items()
                           if not name.startswith(("zi_", "disp_")))
        lines = [f"Generalized linear mixed model fit by maximum likelihood ({self.approximation}) [tfmixed]",
                 f" Family: {family.name}{f'({values})' if values else ''}  ( {family.link.name} )",
                 f"Formula: {self.formula}", ""]
        lines.append("".join(f"{h:>10}" for h in ["AIC", "BIC", "logLik", "-2logLik", "deviance", "df.resid"]))
        lines.append("".join(f"{v:10.1f}" for v in [self.aic, self.bic, self.loglik, self.minus2loglik, self.deviance])
                     + f"{self.nobs - self.n_params:10d}")
        body = self._summary_body(self._scaled_residuals(), self.coef_table,
                                  why="the family defines no variance function for Pearson residuals")
        labels = [label for label in (family.parameter_label, *family.more_parameter_labels) if label]
        if labels:  # glmmTMB's lines, before the fixed effects
            at = body.index("Fixed effects:") - 1
            body[at:at] = [""] + [f"{label}: {value:.4g}" for label, value in zip(labels, family.parameters)]
        at = body.index("Fixed effects:") + 2 + len(self.design.fixed_names)
        for prefix, title in self.SUB_MODELS:
            table = self._sub_model_table(prefix)
            if table is not None:
                body[at:at] = ["", f"{title}:", table.to_string(float_format=lambda v: f"{v:.4g}")]
                at += 3
        return "\n".join(lines + body + self._fit_record_lines(verbose))

    def _scaled_residuals(self) -> np.ndarray | None:
        try:
            return self.pearson_residuals
        except DataError:  # a family written as its log-density alone has no variance function
            return None

    def __repr__(self) -> str:
        return (f"GlmerFit({self.formula!r}, family={self.family!r}, nAGQ={self.n_agq}, "
                f"-2logLik={self.criterion:.4f}, nobs={self.nobs}, converged={self.converged})")
