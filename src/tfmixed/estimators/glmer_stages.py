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

from ..derivatives import jacobian
from ..errors import DataError
from ..laplace import GlmmObjective, JointCriterion, ThetaCriterion
from .laplace_em import fit_laplace_em
from .optimizer import minimize_bounded
from .pirls import ETA_STEP_TOL, PIRLS_TOL
from .profiled import ProfiledOptions, fit_profiled
from .result import EstimatorResult, StageRecord

#: step of the central-difference gradient of the Newton polish where no closed form exists, in units of the
#: Hessian's scales (about a thousandth of a standard error: truncation ~1e-6, rounding of the criterion ~1e-6)
POLISH_STEP = 1e-3
#: Newton steps of the polish with a central-difference gradient (the Hessian is the standard errors' one)
POLISH_STEPS = 3
#: L-BFGS-B's limits in stage 1 when it only gives stage 2 its start (a rough theta is enough there)
ROUGH_START_ITERATIONS = 20
ROUGH_START_FTOL = 1e-8
ROUGH_START_GTOL = 1e-5


def optimize_glmer(objective: GlmmObjective, *, method: str = "optimizer", start: np.ndarray | None = None,
                   tol: float | None = None, max_iter: int | None = None, verbose: bool = False,
                   options: ProfiledOptions | None = None) -> tuple[EstimatorResult, np.ndarray | None]:
    """lme4's stages (module docstring). Returns the optimum, whose ``theta`` stacks (theta, beta, phi) for
    nAGQ >= 1 and (theta, phi) for nAGQ = 0 (phi: the family's estimated parameters on the log scale, absent for
    binomial and Poisson), and the Hessian in (theta, beta, phi) the standard errors use (None for nAGQ = 0)."""
    stage_one = ThetaCriterion(objective)
    if start is not None and objective.n_family:
        start = np.concatenate([np.asarray(start, dtype=np.float64).ravel(), stage_one.start[objective.n_theta:]])
    if objective.n_agq == 0:
        return fit_profiled(stage_one, start=start, max_iter=max_iter or 1000, verbose=verbose,
                            method="nAGQ=0", options=options), None
    params, rough = rough_theta_start(stage_one, start)
    theta, phi = params[: objective.n_theta], params[objective.n_theta :]
    first = objective.mode(theta, None, phi if objective.n_family else None)
    if method == "em":
        optimum = fit_laplace_em(objective, theta, first.beta, tol=1e-8 if tol is None else tol,
                                 max_iter=max_iter or 5000, verbose=verbose)
        optimum = dataclasses.replace(optimum, stages=(rough, *optimum.stages))
        return optimum, gradient_and_hessian(objective, optimum.theta)[1]
    joint = JointCriterion(objective, np.concatenate([theta, first.beta, phi]))
    label = "laplace" if objective.n_agq == 1 else f"agq{objective.n_agq}"
    optimum = fit_profiled(joint, start=joint.start, max_iter=max_iter or 1000, verbose=verbose, method=label,
                           scale=joint_scales(objective, first), options=options)
    optimum = with_first_stage(optimum, rough, start if start is not None else stage_one.start, objective)
    return newton_polish(objective, joint, optimum)


def with_first_stage(optimum: EstimatorResult, rough: StageRecord, start, objective: GlmmObjective) -> EstimatorResult:
    """Stage 2's result with stage 1 in its record: its evaluations counted, the search's start the one stage 1
    began from (theta and phi; beta: PIRLS's at that theta), its limits among the tolerances."""
    start = np.asarray(start, dtype=np.float64)
    n_theta = objective.n_theta
    initial = optimum.start.copy() if optimum.start is not None else optimum.theta.copy()
    initial[:n_theta] = start[:n_theta]
    if objective.n_family:
        initial[initial.size - objective.n_family :] = start[n_theta:]
    tolerances = {**optimum.tolerances, "stage 1 max_iter": ROUGH_START_ITERATIONS, "stage 1 ftol": ROUGH_START_FTOL,
                  "stage 1 gtol": ROUGH_START_GTOL, "pirls_tol": PIRLS_TOL, "pirls eta_step_tol": ETA_STEP_TOL,
                  "polish step": POLISH_STEP, "polish steps": POLISH_STEPS}
    return dataclasses.replace(optimum, stages=(rough, *optimum.stages), start=initial, tolerances=tolerances,
                               n_evaluations=optimum.n_evaluations + rough.evaluations)


def rough_theta_start(criterion: ThetaCriterion, start, max_iter: int = ROUGH_START_ITERATIONS):
    """Stage 1 as a start only: theta from a short L-BFGS-B run on the nAGQ = 0 criterion (the best point it
    saw; a trial point where PIRLS fails ends the run, which is fine for a start) and its stage record."""
    theta = criterion.start.copy() if start is None else np.asarray(start, dtype=np.float64).ravel()
    if theta.shape != criterion.lower.shape or np.any(theta < criterion.lower):
        raise DataError(f"start must hold {criterion.objective.n_theta} theta values (lme4's order) with "
                        "non-negative relative standard deviations")
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
    theta_scale = np.median(standard_errors) if standard_errors.size else 1.0
    return np.concatenate([np.full(objective.n_theta, theta_scale), standard_errors, np.ones(objective.n_family)])


def gradient_and_hessian(objective: GlmmObjective, params: np.ndarray):
    """The gradient (None without a closed form) and the Hessian of the criterion in (theta, beta, phi), with
    steps scaled by theta, the PIRLS standard errors and (phi, on the log scale) 0.1."""
    gradient = objective.gradient(objective.mode_at(params))
    # families without the closed form: second differences of the exact criterion (their gradient's row-wise
    # quotients, ~1e-8, would limit differences of it to ~1e-4), with a hundredth of the curvature's scale,
    # which keeps truncation and the criterion's rounding (~1e-9) both near 1e-7 of the standard errors
    closed = objective.family.has_closed_form_gradient
    return gradient, objective.hessian(params, hessian_scales(objective, params), analytic=closed and gradient is not None,
                                       fraction=0.05 if closed else 0.01)


def hessian_scales(objective: GlmmObjective, params: np.ndarray) -> np.ndarray:
    """The scale of each parameter the Hessian's steps are taken in: beta's PIRLS standard errors, theta's
    tenth (at least 0.01, or for families with parameters of their own a tenth of beta's median standard error,
    as an inverse link's theta can be 1e-4), and 0.1 for phi's logarithms."""
    theta, _, phi = objective.split(params)
    rx_se = approximate_standard_errors(objective.mode(theta, None, phi))
    floor = 0.1 if objective.family.has_closed_form_gradient or not rx_se.size else float(np.median(rx_se))
    return np.concatenate([0.1 * np.maximum(np.abs(theta), floor), rx_se, np.full(objective.n_family, 0.1)])


def newton_polish(objective: GlmmObjective, joint: JointCriterion, optimum: EstimatorResult):
    """One Newton step from the optimiser's point with the Hessian that the standard errors need anyway: the
    quasi-Newton search stops at a gradient of ~1e-4 on flat optima, the step brings the estimates to rounding.
    Returns the (possibly improved) optimum and the Hessian (taken before the step, which is ~1e-5 of an SE)."""
    params = optimum.theta
    gradient, hessian = gradient_and_hessian(objective, params)
    numerical = gradient is None  # no gradient at all (quadrature of such a family): central differences
    closed = objective.family.has_closed_form_gradient
    steps = POLISH_STEP * hessian_scales(objective, params)
    evaluations, moved, start = 0, False, params
    for step in range(1 if closed else POLISH_STEPS):
        if numerical:
            gradient = jacobian(joint, params, steps)
            evaluations += 2 * params.size
        elif step:
            gradient = objective.gradient(objective.mode_at(params))
            evaluations += 1
        candidate = _newton_step(params, gradient, hessian, joint.lower)
        if candidate is None:
            break
        value = joint(candidate)
        evaluations += 1
        if not value <= optimum.criterion:
            break
        params, moved = candidate, True
        optimum = dataclasses.replace(optimum, theta=candidate, criterion=value)
    stages = optimum.stages
    if moved and not closed and _moved_far(start, params, hessian):  # the SEs' Hessian follows a long move
        hessian = gradient_and_hessian(objective, params)[1]
    if moved:
        stages = (*stages, StageRecord("Newton polish", evaluations, float(optimum.criterion),
                                       "Newton steps on the Hessian of the standard errors"))
    return dataclasses.replace(optimum, n_evaluations=optimum.n_evaluations + evaluations, stages=stages), hessian


def _moved_far(start: np.ndarray, end: np.ndarray, hessian: np.ndarray) -> bool:
    """Whether the polish moved by more than 1e-5 of a standard error in some parameter (then a Hessian taken at
    the start would put the standard errors off by about as much)."""
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.abs(np.diag(2.0 * np.linalg.pinv(hessian))))
    return bool(np.any(np.abs(end - start) > 1e-5 * np.where(se > 0, se, np.inf)))


def _newton_step(params, gradient, hessian, lower) -> np.ndarray | None:
    """params - H^{-1} g over the parameters not held at their bound (None where the step fails or leaves the
    bounds)."""
    if gradient is None or not (np.all(np.isfinite(hessian)) and np.all(np.isfinite(gradient))):
        return None
    free = ~(np.isfinite(lower) & (params <= lower + 1e-10) & (gradient >= 0))
    try:
        step = np.linalg.solve(hessian[np.ix_(free, free)], gradient[free])
    except np.linalg.LinAlgError:
        return None
    candidate = params.copy()
    candidate[free] -= step
    return None if np.any(candidate < lower) else candidate
