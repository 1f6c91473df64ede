"""REML or ML for the iterative kernel: Newton steps to the root of its estimated gradient.

The iterative kernel estimates the gradient's traces from fixed probes, so the estimated gradient g(theta) is a
smooth, deterministic function whose root is the estimate; its value (a stochastic log-determinant) costs more
than the gradient and is needed only once, at the end. Hence no line search on the criterion: Newton steps
-H^{-1} g with H from forward differences of g (dim(theta) gradients) and BFGS updates after, and a line search on
the directional derivative (:func:`_line_search`). From lme4's start theta = 1, MacKay's evidence updates of the
scalar terms (whose fixed point is the same root) come first, while they move theta by more than 10%. It stops when the
Newton decrement g' H^{-1} g / 2 (the criterion decrease still expected, deviance units) is below ``tol``.

The search runs in log theta for the diagonals of the T_t: the criterion is far from quadratic in theta (for a
crossed design its slope peaks near lme4's start theta = 1, so Newton steps in theta overshoot), nearly so in
log theta, and a zero variance is approached geometrically (reported as 0 below ``ZERO_THETA``). The criterion
depends on each T_t only through T_t T_t', so column signs are made canonical at the end. The
probes' spread gives the Monte Carlo covariance of the root, H^{-1} Cov(g) H^{-1}, in the result's ``extra``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import numpy as np

from ..errors import TfmixedError
from ..derivatives import hessian_of_gradient
from ..objective import LmmObjective, bounded_scale
from ..progress import Progress
from .result import EstimatorResult, StageRecord

if TYPE_CHECKING:
    from ..kernels.iterative import IterativeFactor

#: Newton decrement (deviance units) below which the root is accepted
DECREMENT_TOL = 1e-6
#: at most this many evidence updates of the scalar terms before the Newton steps
EVIDENCE_STEPS = 8
#: a diagonal theta below this (relative to the largest) at the root is a zero variance
ZERO_THETA = 1e-4


class _GradientSearch:
    """The estimated gradient in the search's coordinates z: log theta for the diagonals of the T_t (bounded below
    by 0: a variance ratio is searched on its natural scale), theta itself for the rest."""

    def __init__(self, objective: LmmObjective, progress: Progress):
        self.objective, self.progress = objective, progress
        self.logged = np.isfinite(objective.lower)
        self.evaluations = 0
        self.history: list[tuple[np.ndarray, float]] = []

    def theta(self, z: np.ndarray) -> np.ndarray:
        return np.where(self.logged, np.exp(np.where(self.logged, z, 0.0)), z)

    def coordinates(self, theta: np.ndarray) -> np.ndarray:
        safe = np.where(self.logged, np.maximum(np.abs(theta), 1e-8), 1.0)
        return np.where(self.logged, np.log(safe), theta)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        theta = self.theta(z)
        gradient = self.objective.factor(theta).gradient(self.objective.reml)
        if gradient is None:
            raise TfmixedError("the iterative kernel's gradient is not defined at this theta (a singular covariance "
                               "factor); refit with backend='exact', or a simpler random-effects structure")
        gradient = self.objective.covariance.chain(np.asarray(gradient, dtype=np.float64), theta)
        self.evaluations += 1
        self.history.append((theta.copy(), np.nan))
        self.progress.update(self.evaluations, f"gradient norm {np.linalg.norm(gradient):.3g}")
        return np.where(self.logged, theta, 1.0) * np.asarray(gradient, dtype=np.float64)

    def evidence_step(self, z: np.ndarray) -> np.ndarray | None:
        """:meth:`LmmObjective.evidence_step` at z, read from the factor there (no new solve)."""
        return self.objective.evidence_step(self.theta(z))

    def hessian(self, z: np.ndarray, gradient: np.ndarray, step: float = 1e-4) -> np.ndarray:
        """Symmetrised forward differences of the estimated gradient (a start for BFGS)."""
        steps = np.where(self.logged, step, step * np.maximum(0.1, np.abs(z)))
        return hessian_of_gradient(self, z, steps, f0=gradient)


def _positive_definite(H: np.ndarray) -> np.ndarray:
    """H with its eigenvalues made at least 1e-8 of the largest in size (a non-convex region: steps downhill)."""
    values, vectors = np.linalg.eigh(H)
    floor = 1e-8 * max(float(np.max(np.abs(values))), 1e-300)
    return (vectors * np.maximum(np.abs(values), floor)) @ vectors.T


def _line_search(search, z, gradient, direction, radius, tries: int = 6):
    """A step along ``direction`` judged by directional derivatives alone (the criterion's value is not at hand),
    at most ``radius`` in any coordinate: accepted where the slope is still downhill or the trapezoid rule says the
    criterion fell, else shortened to the secant root of the slope."""
    alpha = min(1.0, radius / max(float(np.max(np.abs(direction))), 1e-300))
    slope = float(gradient @ direction)
    for _ in range(tries):
        trial = z + alpha * direction
        trial_gradient = search(trial)
        trial_slope = float(trial_gradient @ direction)
        if trial_slope <= 0 or trial_slope < -slope:
            break
        alpha *= min(0.9, max(0.1, slope / (slope - trial_slope)))
    return trial, trial_gradient


def fit_stochastic_newton(objective: LmmObjective, *, start: np.ndarray | None = None, max_iter: int = 100,
                          verbose: bool = False, method: str = "profiled", tol: float = DECREMENT_TOL,
                          radius: float = 1.5) -> EstimatorResult:
    """Find the root of the iterative kernel's estimated gradient by safeguarded Newton steps (module doc).

    ``radius`` bounds each step's largest change in the search's coordinates (log theta for diagonals);
    ``max_iter`` counts Newton steps. A diagonal that ends below ``ZERO_THETA`` (relative) is reported as 0.

    >>> from tfmixed import datasets, build_design
    >>> from tfmixed.kernels.iterative import IterativeProblem
    >>> d = build_design("Yield ~ 1 + (1 | Batch)", datasets.load("Dyestuff"))
    >>> round(float(fit_stochastic_newton(LmmObjective(IterativeProblem(d.cross_products()))).theta[0]), 2)
    0.85
    """
    theta = objective.start.copy() if start is None else np.asarray(start, dtype=np.float64).ravel()
    if theta.shape != objective.lower.shape:
        raise TfmixedError(f"start must have {objective.lower.size} theta values (lme4's order), got {theta.size}")
    progress = Progress(objective.label, verbose=verbose)
    started = time.perf_counter()
    search = _GradientSearch(objective, progress)
    initial = theta.copy()
    z = search.coordinates(theta)
    gradient = search(z)
    for _ in range(EVIDENCE_STEPS):  # far from the root, evidence updates move faster than Newton's first steps
        step = search.evidence_step(z)
        if step is None or np.max(np.abs(step)) < 0.1:
            break
        z = z + np.clip(step, -radius, radius)
        gradient = search(z)
    evidence_gradients = search.evaluations
    H = search.hessian(z, gradient)
    converged, decrement, iterations = False, np.inf, 0
    for iterations in range(1, max_iter + 1):
        H_pd = _positive_definite(H)
        direction = -np.linalg.solve(H_pd, gradient)
        decrement = float(-gradient @ direction / 2)
        if decrement < tol:
            converged = True
            break
        trial, trial_gradient = _line_search(search, z, gradient, direction, radius)
        s, y = trial - z, trial_gradient - gradient
        if s @ y > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            Hs = H_pd @ s
            H = H_pd + np.outer(y, y) / (s @ y) - np.outer(Hs, Hs) / (s @ Hs)
        else:  # no curvature information along s: measure H again
            H = search.hessian(trial, trial_gradient)
        z, gradient = trial, trial_gradient
    theta = search.theta(z)
    canonical = objective.covariance.canonical(theta)
    theta = theta if canonical is None else canonical
    theta[search.logged & (theta < ZERO_THETA * bounded_scale(theta, objective.lower))] = 0.0
    factor = cast("IterativeFactor", objective.factor(theta))  # this estimator is the iterative kernel's
    value = factor.deviance(objective.reml)
    covariance = factor.gradient_covariance(objective.reml)
    if covariance is not None and not objective.covariance.is_lme4_theta:
        J = objective.covariance.jacobian(theta)
        covariance = J.T @ covariance @ J
    jacobian = np.where(search.logged, theta, 1.0)  # d theta / dz: the covariance back in theta
    H_inv = jacobian[:, None] * np.linalg.inv(_positive_definite(H)) * jacobian[None, :]
    extra = {"monte_carlo_cov": None if covariance is None else H_inv @ covariance @ H_inv}
    progress.finish(f"{search.evaluations} gradients, criterion {value:.6f}")
    message = (f"Newton decrement {decrement:.2g} below {tol:g}" if converged
               else f"Newton decrement {decrement:.3g} after {max_iter} steps")
    stages = (StageRecord("evidence", evidence_gradients, np.nan, "evidence updates while they move theta by 10%"),
              StageRecord("stochastic Newton", search.evaluations - evidence_gradients, value, message))
    return EstimatorResult(
        method=method, theta=theta, criterion=value, converged=converged,
        status="converged" if converged else "not converged", message=message,
        n_evaluations=search.evaluations, seconds=time.perf_counter() - started, iterations=iterations,
        history=search.history, extra=extra, start=initial, stages=stages,
        tolerances={"decrement_tol": tol, "radius": radius, "evidence_steps": EVIDENCE_STEPS, "zero_theta": ZERO_THETA},
    )
