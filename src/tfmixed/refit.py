"""Re-estimating a fitted model: a linear mixed model by the other criterion (REML <-> ML), on a new response,
or with some fixed effects held at given values; a GLMM on a new response (a bootstrap replicate). A refit
returns a fit of the class it was given and imports no result module.

The analogue of lme4's ``refit`` / ``refitML``: the design and the kernel's chosen strategies are reused
(:meth:`~tfmixed.kernels.pls.PLSProblem.reweighted`), so a refit costs only the optimisation, warm-started at the
fit's own theta. The likelihood-ratio tests, profiles and the parametric bootstrap of :mod:`tfmixed.results`
all refit through here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import DataError, ShapeError
from .estimators.diagnosis import flag_degenerate, flag_separation
from .estimators.glmer_stages import optimize_glmer
from .estimators.profiled import ProfiledOptions, fit_near, fit_profiled, hessian_of_gradient
from .estimators.stochastic_newton import fit_stochastic_newton
from .kernels.pls import PLSProblem
from .laplace import GlmmObjective
from .objective import LmmObjective
from .threads import blas_threads_for


def _require_lmer(fit, what: str) -> None:
    if getattr(fit, "has_residual", False) is not True or not hasattr(fit, "problem"):
        raise DataError(f"{what} needs a fit of tfmixed.lmer (a linear mixed model), got {type(fit).__name__}")


def require_exact_kernel(fit, what: str) -> None:
    """Profiles, bootstraps and new-response refits lean on the exact kernel: its criterion and gradient at every
    step, where the iterative backend has stochastic estimates (their Monte Carlo error would enter every interval)."""
    if fit.problem.strategy == "iterative":
        raise DataError(f"{what} needs the exact kernel; this fit used the iterative backend, whose criterion and "
                        "gradient are stochastic estimates "
                        "(use confint('Wald'), or refit with backend='exact' where the model fits in memory)")


def refit(fit, *, reml: bool | None = None, response: np.ndarray | None = None, start: np.ndarray | None = None,
          inverse_hessian: np.ndarray | None = None, max_iter: int = 1000):
    """The same model re-estimated by REML (``reml=True``) or ML, and/or on a new ``response`` vector.

    The new fit starts from ``start`` (default: the fit's theta) and shares the fit's design and kernel
    strategies. With ``inverse_hessian`` (:func:`criterion_inverse_hessian` of a fit to similar data, as for
    bootstrap replicates) the search is Newton's from ``start`` (:func:`~tfmixed.estimators.profiled.fit_near`).
    Refits are always by the profiled estimator (lme4's ``refit``).

    >>> import tfmixed as tm
    >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
    >>> round(refit(fit, reml=False).deviance, 4)
    1751.9393
    """
    _require_lmer(fit, "refit")
    design, problem = fit.design, fit.problem
    if response is not None:
        require_exact_kernel(fit, "a refit on a new response")
        response = np.asarray(response, dtype=np.float64).ravel()
        if response.shape != design.y.shape:
            raise ShapeError(f"response must have {design.y.size} values (one per row of the fit), got {response.size}")
        if not np.all(np.isfinite(response)):
            raise DataError("response has non-finite values")
        design = dataclasses.replace(design, y=response)
        problem = problem.reweighted(design.cross_products())
    objective = LmmObjective(problem, reml=fit.reml if reml is None else bool(reml), covariance=fit.objective.covariance)
    with blas_threads_for(problem.q_rest + problem.p + 1):
        start = fit.theta if start is None else start
        if problem.strategy == "iterative":  # an estimated gradient: Newton to its root
            optimum = fit_stochastic_newton(objective, start=start, max_iter=max_iter)
        elif inverse_hessian is None:
            optimum = fit_profiled(objective, start=start, max_iter=max_iter, options=profiled_options(fit))
        else:
            optimum = fit_near(objective, start, inverse_hessian)
        # the fit's own class: refitting returns what it was given, and imports no result module
        return type(fit)(design, objective, flag_degenerate(objective, optimum, design.response_variance))


def profiled_options(fit) -> ProfiledOptions | None:
    """The tolerances the fit's own profiled estimator used (``lmer(..., optimizer=...)``), for its refits."""
    names = {field.name for field in dataclasses.fields(ProfiledOptions)}
    tolerances = fit.optimum.tolerances
    return ProfiledOptions(**tolerances) if tolerances and set(tolerances) == names else None


def criterion_inverse_hessian(fit) -> np.ndarray:
    """H^{-1}, H the Hessian of the fit's criterion in theta (differences of the analytic gradient): the metric
    in which refits of similar data (bootstrap replicates) converge in fewest Newton steps."""
    _require_lmer(fit, "criterion_inverse_hessian")
    with blas_threads_for(fit.problem.q_rest + fit.problem.p + 1):
        H = hessian_of_gradient(fit.objective, fit.theta)
    eigenvalues, vectors = np.linalg.eigh((H + H.T) / 2)
    # a boundary fit can leave a flat or negative direction: keep the metric positive definite
    floor = 1e-8 * max(float(np.max(np.abs(eigenvalues))), 1e-300)
    return (vectors / np.maximum(eigenvalues, floor)) @ vectors.T


class HeldFixedEffect:
    """The ML objective of the fit's model with one fixed-effect coefficient held at a value: its column moves
    into the offset (lme4's profile of a fixed effect). The reduced problem's strategies are chosen once.

    >>> import tfmixed as tm
    >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
    >>> held = HeldFixedEffect(fit, 1)
    >>> ml = refit(fit, reml=False)
    >>> bool(abs(held.objective(float(ml.fixef["Days"]))(ml.theta) - ml.deviance) < 1e-8)
    True
    """

    def __init__(self, fit, column: int):
        _require_lmer(fit, "a fixed-effect profile")
        design = fit.design
        keep = [j for j in range(design.n_fixed) if j != column]
        self.column_values = design.X[:, column].copy()
        self.design = dataclasses.replace(
            design, X=np.ascontiguousarray(design.X[:, keep]), fixed_names=[design.fixed_names[j] for j in keep],
            offset=design.offset_or_zero.copy(),
        )
        self.problem = PLSProblem(self.design.cross_products(), fit.problem.options)
        self.covariance = fit.objective.covariance

    def objective(self, value: float) -> LmmObjective:
        """theta -> ML deviance of the model with the coefficient held at ``value``."""
        shifted = dataclasses.replace(self.design, offset=self.design.offset + value * self.column_values)
        return LmmObjective(self.problem.reweighted(shifted.cross_products()), reml=False, covariance=self.covariance)


def refit_glmer(fit, response: np.ndarray):
    """The same GLMM re-estimated on a new response (a bootstrap replicate), by lme4's stages from the fit's
    theta, with separation reported as for ``glmer``."""
    response = np.asarray(response, dtype=np.float64).ravel()
    if response.shape != fit.design.y.shape:
        raise DataError(f"response must have {fit.design.y.size} values, got {response.size}")
    design = dataclasses.replace(fit.design, y=response)
    fit.family.check_response(design.y, fit.objective.pirls.prior, design.parsed.response)
    objective = GlmmObjective(design, fit.family, fit.n_agq, fit.objective.pirls.options)
    with blas_threads_for(sum(term.q for term in design.terms[1:]) + design.n_fixed + 1):
        optimum, hessian = optimize_glmer(objective, start=fit.theta)
        # the fit's own class: refitting returns what it was given, and imports no result module
        return type(fit)(design, objective, flag_separation(objective, optimum, design.fixed_names), hessian=hessian)
