"""``glmer``: lme4's generalised linear mixed models (binomial, Poisson), from formula to fitted model.

The pipeline (lme4's glFormula -> mkGlmerDevfun -> optimizeGlmer -> mkMerMod): formula and design as for
``lmer`` -> family (:mod:`tfmixed.families`) -> conditional modes by PIRLS on the LMM kernel
(:mod:`tfmixed.estimators.pirls`) -> the Laplace / quadrature objective (:mod:`tfmixed.laplace`) -> the optimiser
of :mod:`tfmixed.estimators.profiled` in lme4's two stages -> :class:`~tfmixed.results.glmm.GlmerFit`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from .design import build_design
from .errors import ConvergenceWarning, DataError, FormulaError, SingularFitWarning
from .estimators.laplace_em import fit_laplace_em
from .estimators.optimizer import minimize_bounded
from .estimators.profiled import fit_profiled
from .families import Binomial, get_family
from .kernels.options import KernelOptions
from .partitioned import is_partitioned
from .laplace import GlmmObjective, JointCriterion, ThetaCriterion
from .results.glmm import GlmerFit
from .threads import blas_threads_for
from .validation import check_flag, check_positive_integer


def _check_nagq(nAGQ) -> int:
    if isinstance(nAGQ, bool) or not isinstance(nAGQ, (int, np.integer)) or nAGQ < 0:
        raise DataError(f"nAGQ must be a non-negative integer (0, 1 = Laplace, or > 1 quadrature knots), got {nAGQ!r}")
    if nAGQ > 100:
        raise DataError(f"nAGQ = {nAGQ} knots is beyond any accuracy gain (lme4 allows at most 25); use at most 100")
    return int(nAGQ)


def glmer(
    formula: str,
    data: Any,
    family="binomial",
    *,
    link: str | None = None,
    nAGQ: int = 1,
    weights=None,
    offset=None,
    method: str = "optimizer",
    start: np.ndarray | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    missing: str = "raise",
    rank_deficient: str = "drop",
    verbose: bool = True,
    kernel_options: KernelOptions | None = None,
) -> GlmerFit:
    """Fit a generalised linear mixed model by maximum likelihood, as lme4's ``glmer`` does.

    g(E[y | b]) = X beta + Z b + o, b ~ N(0, Lambda Lambda'), y | b from the ``family`` ("binomial" with link
    "logit", "probit" or "cloglog"; "poisson" with "log"). The likelihood integral is approximated by Laplace's
    method at the conditional modes (``nAGQ=1``), by adaptive Gauss-Hermite quadrature with ``nAGQ`` knots (one
    scalar random-effects term only), or, with ``nAGQ=0``, by the Laplace value at the joint PIRLS mode of
    beta and u (only theta optimised: fast, approximate). Binomial responses are 0/1 (numbers, booleans or a
    two-level factor whose first level is failure), ``cbind(successes, failures)``, or proportions with
    ``weights`` = trials. ``offset`` and ``offset(expr)`` in the formula add to the linear predictor.
    ``start`` is lme4's theta order for the first stage. ``method="optimizer"`` (default) maximises the
    approximate likelihood by L-BFGS-B and a Newton step, as lme4's optimiser does; ``method="em"`` reaches the
    same maximum by EM's fixed-point map with the exact gradient (:mod:`tfmixed.estimators.laplace_em`, MacKay's
    method done right), stopping at relative change ``tol`` (1e-8). ``verbose`` prints progress of long fits.

    >>> import tfmixed as tm
    >>> fit = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
    ...                family="binomial", verbose=False)
    >>> round(fit.minus2loglik, 2), fit.fixef.round(3).tolist()
    (184.05, [-1.399, -0.992, -1.129, -1.58])
    """
    family = get_family(family, link)
    n_agq = _check_nagq(nAGQ)
    if method not in ("optimizer", "em"):
        raise DataError(f"method must be 'optimizer' (lme4's) or 'em', got {method!r}")
    if method == "em" and n_agq == 0:
        raise DataError("method='em' maximises the Laplace or quadrature likelihood: it needs nAGQ >= 1")
    if tol is not None and method != "em":
        raise DataError("tol applies to method='em' only (the optimiser judges convergence by its Newton decrement)")
    if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise DataError(f"tol must be a number in (0, 1), got {tol!r}")
    max_iter = check_positive_integer(max_iter, "max_iter")
    verbose = check_flag(verbose, "verbose")
    if is_partitioned(data):
        raise DataError("glmer on partitioned (Dask) data is not available: PIRLS re-weights the rows every "
                        "iteration; fit lmer, or glmer on the data in memory")
    design = build_design(formula, data, missing=missing, weights=weights, offset=offset,
                          rank_deficient=rank_deficient, binomial=isinstance(family, Binomial))
    if not design.terms:
        raise FormulaError(f"formula {formula!r} has no random-effects term such as (1 | group); a GLM without random "
                           "effects is statsmodels' GLM")
    prior = np.ones(design.nobs) if design.weights is None else design.weights
    family.check_response(design.y, prior, design.parsed.response)
    if method == "em" and not objective_is_unstructured(design):
        raise DataError("method='em' updates unstructured covariances; structured terms (ar1, cs, ...) are "
                        "estimated by method='optimizer'")
    objective = GlmmObjective(design, family, n_agq, kernel_options)
    with blas_threads_for(sum(term.q for term in design.terms[1:]) + design.n_fixed + 1):
        optimum, hessian = _estimate(objective, method, start, tol, max_iter, verbose)
        fit = GlmerFit(design, objective, optimum, hessian=hessian)
    _warn_about(fit)
    return fit


def objective_is_unstructured(design) -> bool:
    """Whether every random-effects term has lme4's unstructured covariance."""
    return all(term.structure.is_lme4_theta for term in design.terms)


def _estimate(objective: GlmmObjective, method: str, start, tol, max_iter, verbose):
    """lme4's stages: theta on the nAGQ = 0 criterion (the whole fit for nAGQ = 0, else a start), then (theta,
    beta) on the Laplace or quadrature criterion by the optimiser or EM. Returns the optimum and the Hessian the
    standard errors use (None for nAGQ = 0)."""
    if objective.n_agq == 0:
        return fit_profiled(ThetaCriterion(objective), start=start, max_iter=max_iter or 1000, verbose=verbose,
                            method="nAGQ=0"), None
    theta = _rough_start(ThetaCriterion(objective), start)
    first = objective.mode(theta)
    if method == "em":
        optimum = fit_laplace_em(objective, theta, first.beta, tol=1e-8 if tol is None else tol,
                                 max_iter=max_iter or 5000, verbose=verbose)
        return optimum, _gradient_and_hessian(objective, optimum.theta)[1]
    joint = JointCriterion(objective, np.concatenate([theta, first.beta]))
    # covariates on different scales make beta's coordinates ill-conditioned: search in units of their
    # approximate standard errors (from the first stage's PIRLS factor)
    standard_errors = _approximate_standard_errors(first)
    scale = np.concatenate([np.full(objective.n_theta, np.median(standard_errors)), standard_errors])
    label = "laplace" if objective.n_agq == 1 else f"agq{objective.n_agq}"
    optimum = fit_profiled(joint, start=joint.start, max_iter=max_iter or 1000, verbose=verbose, method=label,
                           scale=scale)
    return _newton_polish(objective, joint, optimum)


def _rough_start(criterion: ThetaCriterion, start, max_iter: int = 20) -> np.ndarray:
    """lme4's first stage, as a start only: theta from a short L-BFGS-B run on the nAGQ = 0 criterion (the best
    point it saw; a trial point where PIRLS fails ends the run, which is fine for a start)."""
    theta = criterion.start.copy() if start is None else np.asarray(start, dtype=np.float64).ravel()
    if theta.shape != criterion.lower.shape or np.any(theta < criterion.lower):
        raise DataError(f"start must hold {criterion.lower.size} theta values (lme4's order) with non-negative "
                        "relative standard deviations")
    best = [theta.copy(), criterion(theta)]
    if not np.isfinite(best[1]):
        raise DataError(f"the criterion is not finite at the starting theta: {criterion.diagnose(theta)}")

    def value_and_gradient(point):
        value, gradient = criterion.value_and_gradient(point)
        if value < best[1]:
            best[:] = [point.copy(), value]
        return value, gradient

    minimize_bounded(value_and_gradient, theta, criterion.lower, max_iter=max_iter, ftol=1e-8, gtol=1e-5)
    return best[0]


def _approximate_standard_errors(joint_mode) -> np.ndarray:
    """sqrt(diag((R_X'R_X)^{-1})) of the joint PIRLS factor: the standard errors at known theta."""
    return np.sqrt(np.maximum(np.diag(joint_mode.factor.vcov_beta_unscaled()), 1e-300))


def _gradient_and_hessian(objective: GlmmObjective, params: np.ndarray):
    """The gradient (None without a closed form) and the Hessian of the criterion in (theta, beta), with
    steps scaled by theta and the PIRLS standard errors."""
    n_theta = objective.n_theta
    gradient = objective.gradient(objective.mode(params[:n_theta], params[n_theta:]))
    rx_se = _approximate_standard_errors(objective.mode(params[:n_theta]))
    scales = np.concatenate([0.1 * np.maximum(np.abs(params[:n_theta]), 0.1), rx_se])
    return gradient, objective.hessian(params, scales, analytic=gradient is not None)


def _newton_polish(objective: GlmmObjective, joint: JointCriterion, optimum):
    """One Newton step from the optimiser's point with the Hessian that the standard errors need anyway: the
    quasi-Newton search stops at a gradient of ~1e-4 on flat optima, the step brings the estimates to rounding.
    Returns the (possibly improved) optimum and the Hessian (taken before the step, which is ~1e-5 of an SE)."""
    params = optimum.theta
    gradient, hessian = _gradient_and_hessian(objective, params)
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
        optimum = dataclasses.replace(optimum, theta=candidate, criterion=value, n_evaluations=optimum.n_evaluations + 1)
    return optimum, hessian


#: fitted means this close to the boundary (0 or 1 for binomial, 0 for Poisson) mean a fixed effect has run off
BOUNDARY_MEAN = 1e-10


def _flag_separation(fit: GlmerFit) -> None:
    """Complete or quasi-complete separation: some fitted means sit numerically on 0 (or 1), the likelihood has
    no maximum and the affected fixed effects (and their SEs) are meaningless, whatever the optimiser says."""
    mu = fit.fitted
    informative = fit.objective.pirls.prior > 0
    near = mu < BOUNDARY_MEAN
    if fit.family.name == "binomial":
        near |= mu > 1 - BOUNDARY_MEAN
    count = int(np.sum(near & informative))
    if count == 0:
        return
    optimum = fit.optimum
    optimum.converged, optimum.status = False, "separated"
    optimum.message = (f"fitted means of {count} row(s) are numerically 0{' or 1' if fit.family.name == 'binomial' else ''}: "
                       "the data are (quasi-)completely separated by the fixed effects, the likelihood has no maximum and "
                       f"the largest estimates ({', '.join(fit.fixef.abs().sort_values().index[-2:][::-1])}) are unbounded; "
                       "remove or merge the separating covariates")


def _warn_about(fit: GlmerFit) -> None:
    _flag_separation(fit)
    if not fit.converged:
        warnings.warn(f"glmer did not converge: {fit.optimum.message}", ConvergenceWarning, stacklevel=3)
    if fit.is_singular:
        warnings.warn("boundary (singular) fit: a variance is 0 or a correlation is +-1; see GlmerFit.is_singular",
                      SingularFitWarning, stacklevel=3)


def refit_glmer(fit: GlmerFit, response: np.ndarray) -> GlmerFit:
    """The same GLMM re-estimated on a new response (a bootstrap replicate), by lme4's stages from the fit's
    theta, with separation reported as for ``glmer``."""
    response = np.asarray(response, dtype=np.float64).ravel()
    if response.shape != fit.design.y.shape:
        raise DataError(f"response must have {fit.design.y.size} values, got {response.size}")
    design = dataclasses.replace(fit.design, y=response)
    fit.family.check_response(design.y, fit.objective.pirls.prior, design.parsed.response)
    objective = GlmmObjective(design, fit.family, fit.n_agq, fit.objective.pirls.options)
    with blas_threads_for(sum(term.q for term in design.terms[1:]) + design.n_fixed + 1):
        optimum, hessian = _estimate(objective, "optimizer", fit.theta, None, None, False)
        refitted = GlmerFit(design, objective, optimum, hessian=hessian)
    _flag_separation(refitted)
    return refitted
