"""Profile likelihood of a linear mixed model and the intervals it gives (lme4's ``profile`` and
``confint(method = "profile")``).

As lme4 does, the profile is of the ML deviance (a REML fit is refitted by ML first), in the parameters
p = (per term: standard deviations and correlations in lme4's order; sigma) and beta. For a parameter held at
v, the deviance is minimised over the others and zeta(v) = sign(v - v_hat) sqrt(d(v) - d_hat). A variance
parameter is held with the others free by L-BFGS-B on d(p) = log|L|^2 + r^2/sigma^2 + n log(2 pi sigma^2)
(beta profiled), with the analytic theta gradient mapped through the Jacobian of p -> theta; a fixed effect is
held by moving its column into the offset and refitting theta. Interval limits solve zeta(v) = +-z by Brent's
method, not by lme4's spline through the trace, so they are exact to the inner optimisation's precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ..errors import DataError, TfmixedError
from ..estimators.profiled import fit_profiled
from ..estimators.optimizer import minimize_bounded
from ..covariance_structures import CovarianceParameters
from ..derivatives import hessian_of_gradient, jacobian, relative_steps
from ..objective import LmmObjective
from ..progress import Progress
from ..refit import HeldFixedEffect, refit, require_exact_kernel

#: how far beyond the limit at the highest level the traces of ``fit.profile()`` reach
TRACE_LEVEL = 0.99
#: the inner optimisations of a profile run to the criterion's rounding: zeta is a square root of differences
INNER_OPTIONS: dict[str, Any] = {"ftol": 1e-15, "gtol": 1e-9, "max_iter": 500}



def interval_columns(level: float) -> list[str]:
    """lme4's column names of a confidence interval table: "2.5 %" and "97.5 %" at level 0.95.

    >>> interval_columns(0.95), interval_columns(0.9)
    (['2.5 %', '97.5 %'], ['5 %', '95 %'])
    """
    return [f"{100 * (1 - level) / 2:.3g} %", f"{100 * (1 + level) / 2:.3g} %"]


class VarianceParameters:
    """The map p = (per term its natural values: standard deviations and correlation parameters, in the order of
    the fit's ``sdcor``; sigma) -> (theta, sigma), and the parameters' bounds."""

    def __init__(self, covariance: CovarianceParameters):
        self.covariance = covariance
        structures = covariance.structures
        self.lower = np.concatenate([s.natural_lower() for s in structures] + [np.zeros(1)])
        self.upper = np.concatenate([s.natural_upper() for s in structures] + [np.full(1, np.inf)])
        self.is_sd = np.concatenate([s.natural_is_sd() for s in structures] + [np.ones(1, dtype=bool)])

    def theta(self, p: np.ndarray) -> np.ndarray:
        relative = p[:-1] / np.where(self.is_sd[:-1], p[-1], 1.0)
        parts = [s.from_natural(part) for s, part in zip(self.covariance.structures, self.covariance.split(relative))]
        return np.concatenate(parts) if parts else np.zeros(0)

    def jacobian(self, p: np.ndarray) -> np.ndarray:
        """d theta / d p by central differences of the (cheap) map, one-sided at the bounds."""
        return jacobian(self.theta, p, relative_steps(p, 1e-6, floor=1e-3), lower=self.lower, upper=self.upper)


class _ProfileBase:
    """What every profile shares: limits by Brent's method on zeta(v) = +-z, intervals, traces. A subclass sets
    ``names``, ``estimate``, ``minimum``, ``verbose``, ``_scales`` (first steps), ``parameters`` and
    ``n_variance`` and provides ``zeta(index, value, start)``."""

    names: list[str]
    estimate: np.ndarray
    minimum: float
    verbose: bool
    _scales: np.ndarray
    parameters: VarianceParameters
    n_variance: int

    def zeta(self, index: int, value: float, start=None) -> tuple[float, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def bounds(self, index: int) -> tuple[float, float]:
        """The range of parameter ``index``: an SD >= 0, a correlation in [-1, 1], a fixed effect free."""
        if index < self.n_variance:
            return float(self.parameters.lower[index]), float(self.parameters.upper[index])
        return -np.inf, np.inf

    def limit(self, index: int, target: float) -> float:
        """The value where zeta = ``target`` (a bound of the parameter where zeta never gets there)."""
        estimate, direction = self.estimate[index], np.sign(target)
        lower, upper = self.bounds(index)
        bound = lower if direction < 0 else upper
        step = abs(target) * self._scales[index]
        inner, start = estimate, None
        for _ in range(60):
            trial = estimate + direction * step
            if (direction < 0 and trial <= lower) or (direction > 0 and trial >= upper):
                trial = bound
            value, where = self.zeta(index, trial, start)
            if abs(value) >= abs(target):
                break
            if trial == bound:
                return float(bound)
            inner, start = trial, where
            step *= 1.6
        else:
            return float(bound)
        return optimize.brentq(lambda v: self.zeta(index, v, start)[0] - target, min(inner, trial), max(inner, trial),
                               xtol=1e-10 * max(abs(estimate), self._scales[index]), rtol=1e-12)

    def confint(self, level: float = 0.95, which=None) -> pd.DataFrame:
        """Profile intervals at ``level`` for the parameters named in ``which`` (default all), lme4's names."""
        z = stats.norm.ppf((1 + level) / 2)
        names = self.names if which is None else list(which)
        unknown = [name for name in names if name not in self.names]
        if unknown:
            raise DataError(f"unknown parameter(s) {unknown}; the fit has {self.names}")
        progress = Progress("profile", verbose=self.verbose)
        rows = []
        for count, name in enumerate(names):
            index = self.names.index(name)
            rows.append((self.limit(index, -z), self.limit(index, z)))
            progress.update(count + 1, f"{name}")
        progress.finish(f"{len(names)} parameters")
        return pd.DataFrame(rows, index=names, columns=interval_columns(level))

    def trace(self, name: str, points: int = 8) -> pd.DataFrame:
        """zeta at ``points`` values on each side of the estimate, out to the 99% limits."""
        index = self.names.index(name)
        z = stats.norm.ppf((1 + TRACE_LEVEL) / 2)
        rows = [(self.estimate[index], 0.0)]
        for target in (-z, z):
            limit, start = self.limit(index, target), None
            for value in np.linspace(self.estimate[index], limit, points + 1)[1:]:
                zeta, start = self.zeta(index, value, start)
                rows.append((value, zeta))
        frame = pd.DataFrame(rows, columns=["value", "zeta"]).sort_values("value").drop_duplicates("value")
        return frame.reset_index(drop=True)


class ProfileLikelihood(_ProfileBase):
    """zeta traces and profile limits of every parameter of an lmer fit (use :meth:`LmerFit.profile`)."""

    def __init__(self, fit, *, verbose: bool = False):
        if not getattr(fit, "has_residual", False):
            raise DataError("profile likelihood intervals are available for lmer fits")
        require_exact_kernel(fit, "a profile")
        self.fit = fit
        self.ml_fit = refit(fit, reml=False) if fit.reml else fit
        self.objective = LmmObjective(fit.problem, reml=False, covariance=fit.objective.covariance)
        self.parameters = VarianceParameters(self.objective.covariance)
        self.names = list(self.ml_fit.sdcor.index) + list(self.ml_fit.design.fixed_names)
        self.n_variance = len(self.ml_fit.sdcor)
        self.estimate = np.concatenate([self.ml_fit.sdcor.to_numpy(), self.ml_fit.fixef.to_numpy()])
        self.estimate[np.isnan(self.estimate)] = 0.0  # a correlation of a zero-variance column
        self.minimum = self.ml_fit.deviance
        self.verbose = verbose
        self._held: dict[int, HeldFixedEffect] = {}
        self._scales = self._standard_errors()

    # -- the deviance as a function of the variance parameters ------------------------------------------------
    def deviance(self, p: np.ndarray) -> float:
        sigma = p[-1]
        if sigma <= 0:
            return np.inf
        try:
            factor = self.objective.factor(self.parameters.theta(p))
        except TfmixedError:
            return np.inf
        return factor.deviance_at_sigma(sigma * sigma, reml=False)

    def deviance_and_gradient(self, p: np.ndarray) -> tuple[float, np.ndarray]:
        value = self.deviance(p)
        if not np.isfinite(value):
            return 1e300, np.zeros_like(p)
        factor, sigma = self.objective.factor(self.parameters.theta(p)), p[-1]
        parts = factor.gradient_parts(reml=False, singular_tol=1e-12)
        if parts is None:
            return value, jacobian(self.deviance, p, relative_steps(p, 1e-7, floor=1e-3), f0=value)
        d_logdet, d_r2 = parts
        theta = self.parameters.theta(p)
        gradient = self.parameters.jacobian(p).T @ self.objective.covariance.chain(d_logdet + d_r2 / sigma**2, theta)
        gradient[-1] += -2.0 * factor.pwrss / sigma**3 + 2.0 * factor.dof(False) / sigma
        return value, gradient

    def _standard_errors(self) -> np.ndarray:
        """Approximate standard errors (inverse Hessian of d / 2) that set the first step of each limit search."""
        p = self.estimate[: self.n_variance].copy()
        p[-1] = max(p[-1], 1e-12)
        H = hessian_of_gradient(lambda point: self.deviance_and_gradient(point)[1], p, relative_steps(p, 1e-4, floor=1e-2),
                                lower=self.parameters.lower, upper=self.parameters.upper)
        try:
            variance = np.abs(np.diag(np.linalg.inv(H / 2)))
        except np.linalg.LinAlgError:
            variance = np.full(p.size, np.nan)
        scale = np.where(np.isfinite(variance) & (variance > 0), np.sqrt(variance), np.maximum(np.abs(p), 1e-2) / 4)
        return np.concatenate([scale, self.ml_fit.fixef_se.to_numpy()])

    # -- zeta ----------------------------------------------------------------------------------------------------
    def _held_variance(self, index: int, value: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        free = np.arange(self.n_variance) != index
        full = start.copy()
        full[index] = value

        def criterion(z):
            full[free] = z
            d, g = self.deviance_and_gradient(full)
            return d, g[free]

        lower = self.parameters.lower.copy()
        lower[-1] = 1e-8 * self.estimate[self.n_variance - 1]  # sigma > 0: the deviance is infinite at 0
        result = minimize_bounded(criterion, start[free], lower[free], self.parameters.upper[free], **INNER_OPTIONS)
        full[free] = result.x
        return float(result.fun), full.copy()

    def _held_fixed(self, column: int, value: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        if column not in self._held:
            self._held[column] = HeldFixedEffect(self.ml_fit, column)
        objective = self._held[column].objective(value)
        optimum = fit_profiled(objective, start=start)
        return float(optimum.criterion), optimum.theta

    def zeta(self, index: int, value: float, start=None) -> tuple[float, np.ndarray]:
        """(zeta at ``value`` of parameter ``index``, the other parameters' optimum there)."""
        if index < self.n_variance:
            start = self.estimate[: self.n_variance] if start is None else start
            deviance, where = self._held_variance(index, value, start)
        else:
            start = self.ml_fit.theta if start is None else start
            deviance, where = self._held_fixed(index - self.n_variance, value, start)
        spread = max(deviance - self.minimum, 0.0)
        return float(np.sign(value - self.estimate[index]) * np.sqrt(spread)), where



class GlmmProfileLikelihood(_ProfileBase):
    """The profile of a glmer fit's approximate deviance (Laplace or quadrature) in p = (SDs and correlations of
    each term; beta), as lme4's ``profile`` of a glmerMod: for a parameter held at v, L-BFGS-B over all the
    others, with the criterion's analytic gradient mapped through the Jacobian of p -> theta."""

    def __init__(self, fit, *, verbose: bool = False):
        from ..laplace import JointCriterion

        if fit.n_agq == 0:
            raise DataError("profile intervals need the Laplace or quadrature likelihood; this fit used nAGQ = 0")
        self.fit, self.verbose = fit, verbose
        family = fit.family_parameters[fit.family.estimated_names].to_numpy()
        self.n_family = family.size
        self.family = fit.family
        self.criterion = JointCriterion(fit.objective, np.concatenate([fit.theta, fit.fixef.to_numpy(),
                                                                       fit.family.to_working(family)]))
        self.parameters = VarianceParameters(fit.objective.covariance)  # its last entry (sigma) is held at 1
        self.n_variance, self.n_theta = len(fit.sdcor_names()), fit.theta.size
        # the family's own parameters (a negative binomial's size, a dispersion) are profiled on their natural
        # scale, after beta
        self.names = fit.sdcor_names() + list(fit.design.fixed_names) + list(fit.family.estimated_names)
        self.estimate = np.concatenate([np.nan_to_num(fit.sdcor_values()), fit.fixef.to_numpy(), family])
        self.minimum = fit.criterion
        self._scales = self._standard_errors()

    def bounds(self, index: int) -> tuple[float, float]:
        first = self.estimate.size - self.n_family
        if index >= first:
            allowed = self.family.estimated_ranges()[index - first]
            return (0.0, np.inf) if allowed is None else allowed
        return super().bounds(index)

    def _split(self, z: np.ndarray):
        variance = np.concatenate([z[: self.n_variance], [1.0]])
        end = z.size - self.n_family
        return variance, z[self.n_variance : end], z[end:]

    def deviance_and_gradient(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        variance, beta, family = self._split(z)
        limits = [self.bounds(i) for i in range(z.size - self.n_family, z.size)]
        if any(not low < value < high for value, (low, high) in zip(family, limits)):
            return 1e300, np.zeros_like(z)
        working = self.family.to_working(family)
        params = np.concatenate([self.parameters.theta(variance), beta, working])
        value, gradient = self.criterion.value_and_gradient(params)
        if not np.isfinite(value):
            return 1e300, np.zeros_like(z)
        jacobian = self.parameters.jacobian(variance)[:, :-1]
        end = gradient.size - self.n_family
        return value, np.concatenate([jacobian.T @ gradient[: self.n_theta], gradient[self.n_theta : end],
                                      gradient[end:] / self.family.natural_derivative(working)])

    def _standard_errors(self) -> np.ndarray:
        """First steps of the limit searches: Wald SEs of beta, and of the SDs from the fit's Hessian in theta."""
        se_beta = self.fit.fixef_se.to_numpy()
        hessian = getattr(self.fit, "_hessian", None)
        theta_se = np.full(self.n_variance, np.nan)
        if hessian is not None:
            with np.errstate(invalid="ignore"):
                theta_se = np.sqrt(np.abs(np.diag(2.0 * np.linalg.pinv(hessian))))[: self.n_variance]
        fallback = np.maximum(np.abs(self.estimate[: self.n_variance]), 1e-2) / 4
        family = self.estimate[self.estimate.size - self.n_family :]
        family_se = family / 4  # phi's log-scale SE from the Hessian, mapped to its natural scale
        if hessian is not None and self.n_family:
            with np.errstate(invalid="ignore"):
                log_se = np.sqrt(np.abs(np.diag(2.0 * np.linalg.pinv(hessian))))[-self.n_family :]
            family_se = np.where(np.isfinite(log_se) & (log_se > 0), family * log_se, family_se)
        return np.concatenate([np.where(np.isfinite(theta_se) & (theta_se > 0), theta_se, fallback), se_beta,
                               family_se])

    def zeta(self, index: int, value: float, start=None) -> tuple[float, np.ndarray]:
        full = (self.estimate if start is None else start).copy()
        full[index] = value
        free = np.arange(full.size) != index
        lower, upper = (np.array(side) for side in zip(*(self.bounds(i) for i in range(full.size))))
        lower, upper = lower[free], upper[free]
        scale = self._scales[free]  # covariates on different scales: search in units of approximate SEs

        def criterion(point):
            full[free] = point
            d, g = self.deviance_and_gradient(full)
            return d, g[free]

        result = minimize_bounded(criterion, full[free], lower, upper, scale=scale, **INNER_OPTIONS)
        # an SD left at 0 may be a saddle (a scalar term's criterion is even in its SD): try again from inside
        at_zero = (lower == 0.0) & (result.x <= 0.0)
        if np.any(at_zero):
            inside = result.x.copy()
            inside[at_zero] = 0.1 * scale[at_zero]
            retry = minimize_bounded(criterion, inside, lower, upper, scale=scale, **INNER_OPTIONS)
            result = retry if retry.fun < result.fun else result
        full[free] = result.x
        spread = max(float(result.fun) - self.minimum, 0.0)
        return float(np.sign(value - self.estimate[index]) * np.sqrt(spread)), full.copy()


def profile_likelihood(fit, *, verbose: bool = False) -> _ProfileBase:
    """The profile of an lmer or glmer fit."""
    if getattr(fit, "has_residual", False):
        return ProfileLikelihood(fit, verbose=verbose)
    return GlmmProfileLikelihood(fit, verbose=verbose)
