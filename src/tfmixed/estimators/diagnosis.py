"""What an estimator's stopping rule cannot see: optima that are not estimates. Each check returns the
estimator's result unchanged, or a new one marked not converged with the reason, before any fit is built from it
(results never amend their estimates)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .result import EstimatorResult

#: a residual variance below this fraction of the response's is a degenerate fit (sigma -> 0, theta -> infinity)
DEGENERATE_VARIANCE = 1e-10
#: fitted means this close to the boundary (0 or 1 for binomial, 0 for Poisson) mean a fixed effect has run off
BOUNDARY_MEAN = 1e-10


def flag_degenerate(objective, optimum: EstimatorResult, response_variance: float) -> EstimatorResult:
    """A residual variance of ~0 means the response is (nearly) a function of the random effects: the
    likelihood is unbounded (sigma -> 0, theta -> infinity) and no variance estimate is meaningful. Only the
    profiled estimator's sigma^2 (r^2 / dof at theta) is judged; the fixed points carry their own."""
    if optimum.status == "degenerate" or optimum.method != "profiled" or optimum.sigma2 is not None:
        return optimum
    sigma2 = objective.factor(optimum.theta).sigma2(objective.reml)
    if sigma2 > DEGENERATE_VARIANCE * response_variance:
        return optimum
    return dataclasses.replace(optimum, converged=False, status="degenerate", message=(
        f"the residual variance is estimated as {sigma2:.3g} (response variance {response_variance:.3g}): the "
        "response is (nearly) constant within the levels of the grouping factors, the likelihood has no maximum and "
        "the variance components are meaningless; remove the grouping factor or model the group means directly"))


def flag_separation(objective, optimum: EstimatorResult, fixed_names: list[str]) -> EstimatorResult:
    """Complete or quasi-complete separation: some fitted means sit numerically on 0 (or 1), the likelihood has
    no maximum and the affected fixed effects (and their SEs) are meaningless, whatever the optimiser says."""
    if not objective.family.can_separate:
        return optimum
    mode = objective.mode_at(optimum.theta)
    binomial = objective.family.name == "binomial"
    near = mode.mu < BOUNDARY_MEAN
    if binomial:
        near |= mode.mu > 1 - BOUNDARY_MEAN
    count = int(np.sum(near & (objective.pirls.prior > 0)))
    if count == 0:
        return optimum
    largest = [fixed_names[i] for i in np.argsort(np.abs(mode.beta))[-2:][::-1]]
    return dataclasses.replace(optimum, converged=False, status="separated", message=(
        f"fitted means of {count} row(s) are numerically 0{' or 1' if binomial else ''}: the data are "
        "(quasi-)completely separated by the fixed effects, the likelihood has no maximum and the largest estimates "
        f"({', '.join(largest)}) are unbounded; remove or merge the separating covariates"))
