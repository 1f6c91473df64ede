"""Maximum likelihood and REML by minimising the profiled deviance over theta (lme4's approach).

beta and sigma^2 are profiled out analytically (see :mod:`tfmixed.kernels.pls`), leaving a smooth function
of the few covariance parameters theta, minimised with bounds (diagonals of T_t >= 0) by L-BFGS-B.
A boundary optimum (a zero variance, as in Dyestuff2) is legal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from ..errors import TfmixedError
from ..kernels.covariance import theta_lower_bounds, theta_start, theta_to_factors
from ..kernels.pls import PLSProblem
from ..progress import Progress


@dataclass
class ProfiledFit:
    """Outcome of the theta optimisation."""

    theta: np.ndarray
    criterion: float
    converged: bool
    message: str
    n_evaluations: int
    seconds: float
    history: list[tuple[np.ndarray, float]] = field(default_factory=list, repr=False)


def profiled_objective(problem: PLSProblem, reml: bool):
    """theta -> profiled deviance (ML) or REML criterion; +inf where the factorisation fails."""

    def objective(theta: np.ndarray) -> float:
        try:
            return problem.factorize(theta_to_factors(theta, problem.dims)).deviance(reml)
        except (TfmixedError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf

    return objective


def _forward_difference(objective, theta: np.ndarray, value: float, lower: np.ndarray) -> np.ndarray:
    """One-sided differences stepping away from the bounds (used only where T_t is singular)."""
    gradient = np.empty_like(theta)
    for i in range(theta.size):
        step = 1e-7 * max(1.0, abs(theta[i]))
        shifted = theta.copy()
        shifted[i] += step
        gradient[i] = (objective(shifted) - value) / step
    return gradient


def profiled_value_and_gradient(problem: PLSProblem, reml: bool, lower: np.ndarray):
    """theta -> (criterion, gradient): analytic gradient, one-sided differences at singular factors."""
    objective = profiled_objective(problem, reml)

    def value_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            factor = problem.factorize(theta_to_factors(theta, problem.dims))
        except (TfmixedError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf, np.zeros_like(theta)
        value = factor.deviance(reml)
        gradient = factor.gradient(reml)
        if gradient is None:
            # The criterion is smooth in T even where T is singular: take the exact gradient a hair inside
            # the feasible region, which costs one factorisation instead of one per theta.
            inside = np.where(np.isfinite(lower), np.maximum(theta, lower + 2e-4 * max(1.0, float(np.max(np.abs(theta))))), theta)
            nudged = problem.factorize(theta_to_factors(inside, problem.dims)).gradient(reml)
            gradient = nudged if nudged is not None else _forward_difference(objective, theta, value, lower)
        return value, gradient

    return value_and_gradient


def _clip_to_boundary(theta: np.ndarray, lower: np.ndarray, objective, best: float) -> tuple[np.ndarray, float]:
    """Snap diagonal elements that ended within rounding of 0 onto the boundary when that is no worse.

    Finite-difference optimisers stop a hair inside a zero-variance boundary; lme4 reports exactly 0.
    """
    on_bound = np.isfinite(lower) & (theta - lower < 1e-4)
    if not np.any(on_bound):
        return theta, best
    snapped = theta.copy()
    snapped[on_bound] = lower[on_bound]
    value = objective(snapped)
    if value <= best + 1e-10 * max(1.0, abs(best)):
        return snapped, value
    return theta, best


def fit_profiled(
    problem: PLSProblem,
    *,
    reml: bool = True,
    theta0: np.ndarray | None = None,
    max_iter: int = 1000,
    verbose: bool = False,
) -> ProfiledFit:
    """Minimise the profiled REML criterion (or ML deviance) over theta.

    >>> from tfmixed import datasets
    >>> from tfmixed.design import build_design
    >>> from tfmixed.kernels.pls import TermLayout
    >>> d = build_design("Yield ~ 1 + (1 | Batch)", datasets.load("Dyestuff"))
    >>> p = PLSProblem(d.X, d.y, [TermLayout(t.factor.codes, t.values, t.n_levels) for t in d.terms])
    >>> round(float(fit_profiled(p).theta[0]), 4)
    0.8483
    """
    lower = theta_lower_bounds(problem.dims)
    start = theta_start(problem.dims) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    objective = profiled_objective(problem, reml)
    value_and_gradient = profiled_value_and_gradient(problem, reml, lower)
    history: list[tuple[np.ndarray, float]] = []
    progress = Progress("REML" if reml else "ML", verbose=verbose)
    started = time.perf_counter()

    def tracked(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = value_and_gradient(theta)
        if not history and not np.isfinite(value):
            raise TfmixedError("the deviance is not finite at the starting theta")
        history.append((theta.copy(), value))
        progress.update(len(history), f"criterion {value:.6f}")
        return value, gradient

    if start.shape != lower.shape:
        raise TfmixedError(f"start must have {lower.size} theta values (lme4's order), got {start.size}")
    if np.any(start < lower):
        raise TfmixedError("start has a negative relative standard deviation (a diagonal theta below 0)")
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    # ftol sits just above the criterion's rounding noise (~1e-12 relative). Two guards against a premature
    # stop: a projected gradient still large relative to the criterion restarts L-BFGS-B, and a theta left
    # exactly on a zero bound (where a scalar term's derivative is 0 by symmetry) is probed from inside.
    theta, message, success, value = start, "", False, np.inf
    for _ in range(4):
        result = minimize(
            tracked,
            theta,
            method="L-BFGS-B",
            jac=True,
            bounds=bounds,
            options={"maxiter": max_iter, "ftol": 1e-11, "gtol": 1e-7, "maxls": 50},
        )
        theta, value, message = np.asarray(result.x, dtype=np.float64), float(result.fun), str(result.message)
        success = bool(result.success) or "ABNORMAL" in message
        gradient = np.asarray(result.jac, dtype=np.float64)
        at_bound = np.isfinite(lower) & (theta <= lower + 1e-10)
        free = ~(at_bound & (gradient >= 0))
        if np.max(np.abs(gradient[free]), initial=0.0) > 1e-6 * max(1.0, abs(value)):
            continue
        probe = theta.copy()
        probe[at_bound] = lower[at_bound] + 1e-3 * max(1.0, float(np.max(np.abs(theta))))
        if np.any(at_bound) and objective(probe) < value - 1e-8 * max(1.0, abs(value)):
            theta = probe
            continue
        break
    else:
        success = False
    theta, value = _clip_to_boundary(theta, lower, objective, value)
    converged = success
    progress.finish(f"{len(history)} evaluations, criterion {value:.6f}")
    return ProfiledFit(
        theta=theta,
        criterion=value,
        converged=converged,
        message=message,
        n_evaluations=len(history),
        seconds=time.perf_counter() - started,
        history=history,
    )
