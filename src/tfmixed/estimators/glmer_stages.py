"""glmer's estimation stages as public estimator functions (lme4's ``optimizeGlmer``, stage 1 and stage 2).

Stage 1 minimises the nAGQ = 0 criterion over theta (beta inside PIRLS): the whole fit for ``nAGQ=0``, else
a short run that gives stage 2 its start. Stage 2 minimises the Laplace (or quadrature) criterion over (theta,
beta) jointly by :func:`~tfmixed.estimators.profiled.fit_profiled` in coordinates scaled by approximate standard
errors, or by EM (:func:`~tfmixed.estimators.laplace_em.fit_laplace_em`), and ends with one Newton step on the
Hessian the standard errors need anyway. Each stage is recorded in the result's ``stages``.

>>> import tfmixed as tm
>>> from tfmixed.families import get_family
>>> from tfmixed.laplace import GlmmObjective
>>> design = tm.build_design("incidence / size ~ period + (1 | herd)", tm.datasets.load("cbpp"), weights="size")
>>> optimum, hessian = optimize_glmer(GlmmObjective(design, get_family("binomial")))
>>> [stage.name for stage in optimum.stages][0], round(optimum.criterion, 3)
('nAGQ=0 start', 184.053)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import DataError
from ..laplace import GlmmObjective, JointCriterion, ThetaCriterion
from .laplace_em import fit_laplace_em
from .optimizer import minimize_bounded
from .profiled import ProfiledOptions, fit_profiled
from .result import EstimatorResult, StageRecord

#: L-BFGS-B's limits in stage 1 when it only gives stage 2 its start (a rough theta is enough there)
ROUGH_START_ITERATIONS = 20
ROUGH_START_FTOL = 1e-8
ROUGH_START_GTOL = 1e-5


def optimize_glmer(objective: GlmmObjective, *, method: str = "optimizer", start: np.ndarray | None = None,
                   tol: float | None = None, max_iter: int | None = None, verbose: bool = False,
                   options: ProfiledOptions | None = None) -> tuple[EstimatorResult, np.ndarray | None]:
    """lme4's stages (module docstring). Returns the optimum, whose ``theta`` stacks (theta, beta) for nAGQ >= 1,
    and the Hessian in (theta, beta) the standard errors use (None for nAGQ = 0)."""
    if objective.n_agq == 0:
        return fit_profiled(ThetaCriterion(objective), start=start, max_iter=max_iter or 1000, verbose=verbose,
                            method="nAGQ=0", options=options), None
    theta, rough = rough_theta_start(ThetaCriterion(objective), start)
    first = objective.mode(theta)
    if method == "em":
        optimum = fit_laplace_em(objective, theta, first.beta, tol=1e-8 if tol is None else tol,
                                 max_iter=max_iter or 5000, verbose=verbose)
        optimum = dataclasses.replace(optimum, stages=(rough, *optimum.stages))
        return optimum, gradient_and_hessian(objective, optimum.theta)[1]
    joint = JointCriterion(objective, np.concatenate([theta, first.beta]))
    label = "laplace" if objective.n_agq == 1 else f"agq{objective.n_agq}"
    optimum = fit_profiled(joint, start=joint.start, max_iter=max_iter or 1000, verbose=verbose, method=label,
                           scale=joint_scales(objective, first), options=options)
    optimum = with_first_stage(optimum, rough, start if start is not None else objective.theta_start)
    return newton_polish(objective, joint, optimum)


def with_first_stage(optimum: EstimatorResult, rough: StageRecord, start) -> EstimatorResult:
    """Stage 2's result with stage 1 in its record: its evaluations counted, the search's start the one stage 1
    began from (beta: PIRLS's at that theta), its limits among the tolerances."""
    n_theta = np.asarray(start).size
    initial = optimum.start.copy() if optimum.start is not None else optimum.theta.copy()
    initial[:n_theta] = start
    tolerances = {**optimum.tolerances, "stage 1 max_iter": ROUGH_START_ITERATIONS, "stage 1 ftol": ROUGH_START_FTOL,
                  "stage 1 gtol": ROUGH_START_GTOL}
    return dataclasses.replace(optimum, stages=(rough, *optimum.stages), start=initial, tolerances=tolerances,
                               n_evaluations=optimum.n_evaluations + rough.evaluations)


def rough_theta_start(criterion: ThetaCriterion, start, max_iter: int = ROUGH_START_ITERATIONS):
    """Stage 1 as a start only: theta from a short L-BFGS-B run on the nAGQ = 0 criterion (the best point it
    saw; a trial point where PIRLS fails ends the run, which is fine for a start) and its stage record."""
    theta = criterion.start.copy() if start is None else np.asarray(start, dtype=np.float64).ravel()
    if theta.shape != criterion.lower.shape or np.any(theta < criterion.lower):
        raise DataError(f"start must hold {criterion.lower.size} theta values (lme4's order) with non-negative "
                        "relative standard deviations")
    best = [theta.copy(), criterion(theta)]
    if not np.isfinite(best[1]):
        raise DataError(f"the criterion is not finite at the starting theta: {criterion.diagnose(theta)}")
    evaluations = [1]

    def value_and_gradient(point):
        value, gradient = criterion.value_and_gradient(point)
        evaluations[0] += 1
        if value < best[1]:
            best[:] = [point.copy(), value]
        return value, gradient

    result = minimize_bounded(value_and_gradient, theta, criterion.lower, max_iter=max_iter, ftol=ROUGH_START_FTOL,
                              gtol=ROUGH_START_GTOL)
    return best[0], StageRecord("nAGQ=0 start", evaluations[0], float(best[1]), str(result.message))


def approximate_standard_errors(joint_mode) -> np.ndarray:
    """sqrt(diag((R_X'R_X)^{-1})) of the joint PIRLS factor: the standard errors at known theta."""
    return np.sqrt(np.maximum(np.diag(joint_mode.factor.vcov_beta_unscaled()), 1e-300))


def joint_scales(objective: GlmmObjective, first_mode) -> np.ndarray:
    """Coordinates of stage 2: covariates on different scales make beta's ill-conditioned, so the search runs
    in units of beta's approximate standard errors (theta's in their median)."""
    standard_errors = approximate_standard_errors(first_mode)
    return np.concatenate([np.full(objective.n_theta, np.median(standard_errors)), standard_errors])


def gradient_and_hessian(objective: GlmmObjective, params: np.ndarray):
    """The gradient (None without a closed form) and the Hessian of the criterion in (theta, beta), with
    steps scaled by theta and the PIRLS standard errors."""
    n_theta = objective.n_theta
    gradient = objective.gradient(objective.mode(params[:n_theta], params[n_theta:]))
    rx_se = approximate_standard_errors(objective.mode(params[:n_theta]))
    scales = np.concatenate([0.1 * np.maximum(np.abs(params[:n_theta]), 0.1), rx_se])
    return gradient, objective.hessian(params, scales, analytic=gradient is not None)


def newton_polish(objective: GlmmObjective, joint: JointCriterion, optimum: EstimatorResult):
    """One Newton step from the optimiser's point with the Hessian that the standard errors need anyway: the
    quasi-Newton search stops at a gradient of ~1e-4 on flat optima, the step brings the estimates to rounding.
    Returns the (possibly improved) optimum and the Hessian (taken before the step, which is ~1e-5 of an SE)."""
    params = optimum.theta
    gradient, hessian = gradient_and_hessian(objective, params)
    if gradient is None or not np.all(np.isfinite(hessian)):
        return optimum, hessian
    free = ~(np.isfinite(joint.lower) & (params <= joint.lower + 1e-10) & (gradient >= 0))
    try:
        step = np.linalg.solve(hessian[np.ix_(free, free)], gradient[free])
    except np.linalg.LinAlgError:
        return optimum, hessian
    candidate = params.copy()
    candidate[free] -= step
    if np.any(candidate < joint.lower):
        return optimum, hessian
    value = joint(candidate)
    if value <= optimum.criterion:
        record = StageRecord("Newton polish", 1, float(value), "one Newton step on the Hessian of the standard errors")
        optimum = dataclasses.replace(optimum, theta=candidate, criterion=value, n_evaluations=optimum.n_evaluations + 1,
                                      stages=(*optimum.stages, record))
    return optimum, hessian
