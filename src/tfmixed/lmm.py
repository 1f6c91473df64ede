"""``lmer``: lme4's linear mixed models, from formula to fitted model.

The pipeline is formula -> design (:func:`tfmixed.design.build_design`) -> penalised least squares problem
(:class:`tfmixed.kernels.pls.PLSProblem`) -> estimator (:func:`tfmixed.estimators.profiled.fit_profiled`)
-> result (:class:`LmerFit`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .design import Design, build_design
from .errors import ConvergenceWarning, CovarianceCollapseWarning, DataError, ShapeError, SingularFitWarning
from .estimators.fixed_point import METHODS, VarianceState, fit_fixed_point
from .estimators.profiled import fit_profiled
from .kernels.pls import PLSProblem
from .results import LmerFit


def problem_from_design(design: Design) -> PLSProblem:
    """The penalised least-squares problem (cross-products, patterns) of a design."""
    if not design.terms:
        from .errors import FormulaError

        raise FormulaError(
            f"formula {design.formula!r} has no random-effects term such as (1 | group); "
            "use tfmixed.LinearRegression for a fixed-effects-only model"
        )
    return PLSProblem(design.X, design.y, [term.layout() for term in design.terms])


def default_start(problem: PLSProblem, G0=None, sigma2_0: float | None = None) -> VarianceState:
    """Start of the fixed-point methods: sigma^2_0 = var(y) and G0_t = sigma^2_0 I unless given."""
    sigma2 = float(np.var(problem.y)) if sigma2_0 is None else float(sigma2_0)
    if G0 is None:
        G = [sigma2 * np.eye(k) for k in problem.dims]
    else:
        G = [G0] if len(problem.dims) == 1 and np.ndim(G0) == 2 else list(G0)
        G = [np.atleast_2d(np.asarray(matrix, dtype=np.float64)) for matrix in G]
        if len(G) != len(problem.dims) or any(m.shape != (k, k) for m, k in zip(G, problem.dims)):
            raise ShapeError(f"G0 must hold one matrix per term with shapes {[(k, k) for k in problem.dims]}")
    return VarianceState(G, sigma2)


def lmer(
    formula: str,
    data: Any,
    *,
    REML: bool = True,
    method: str = "profiled",
    acceleration: str | None = None,
    covariance: str | None = None,
    start: np.ndarray | None = None,
    G0=None,
    sigma2_0: float | None = None,
    tol: float = 1e-10,
    missing: str = "raise",
    verbose: bool = True,
    max_iter: int | None = None,
) -> LmerFit:
    """Fit a linear mixed model by REML (default) or maximum likelihood, as lme4's ``lmer`` does.

    y = X beta + Z b + e, b ~ N(0, sigma^2 Lambda Lambda'), e ~ N(0, sigma^2 I).

    ``method="profiled"`` (default) minimises the profiled deviance over the relative covariance factor
    theta (Bates et al. 2015), from ``start`` (lme4's theta order; default identity factors).
    The empirical-Bayes fixed points of :mod:`tfmixed.estimators.fixed_point` are also available:
    ``"em"`` (converges to the same REML/ML estimates), ``"evidence"`` (MacKay's gamma updates; REML/ML of
    the diagonal-covariance model) and ``"mackay"`` (the seed's quick-and-dirty loop; ``covariance`` =
    "diagonal", the default, or "full"), started from ``G0`` (one matrix per term) and ``sigma2_0``
    (default: var(y) and var(y) I, lme4's theta = 1), with ``acceleration="squarem"`` to extrapolate.
    ``missing`` is 'raise' or 'drop' for rows with missing values; ``verbose`` prints progress of long fits.

    >>> from tfmixed import datasets
    >>> fit = lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"), verbose=False)
    >>> round(fit.deviance, 3), fit.fixef.round(3).tolist()
    (1743.628, [251.405, 10.467])
    """
    design = build_design(formula, data, missing=missing)
    problem = problem_from_design(design)
    if method == "profiled":
        optimum = fit_profiled(problem, reml=REML, theta0=start, max_iter=max_iter or 1000, verbose=verbose)
        fit = LmerFit(design=design, problem=problem, optimum=optimum, reml=REML)
    elif method in METHODS:
        initial = default_start(problem, G0, sigma2_0)
        optimum = fit_fixed_point(
            problem, initial, method=method, reml=REML, acceleration=acceleration,
            covariance=covariance or ("full" if method == "em" else "diagonal"),
            tol=tol, max_iter=max_iter or 10_000, verbose=verbose,
        )
        fit = LmerFit(design=design, problem=problem, optimum=optimum, reml=REML, sigma2=optimum.state.sigma2,
                      factor=optimum.state.factor(problem))
        if optimum.status == "collapsed":
            warnings.warn(
                f"{method} collapsed at iteration {optimum.iterations - 1}: a covariance matrix became singular "
                "(correlation -> 1); see docs/mackay.md", CovarianceCollapseWarning, stacklevel=2,
            )
    else:
        raise DataError(f"method must be 'profiled' or one of {METHODS}, got {method!r}")
    if not optimum.converged and getattr(optimum, "status", "") != "collapsed":
        warnings.warn(f"lmer did not converge: {optimum.message}", ConvergenceWarning, stacklevel=2)
    if fit.is_singular:
        warnings.warn(
            "boundary (singular) fit: a variance is 0 or a correlation is +-1; see LmerFit.is_singular",
            SingularFitWarning,
            stacklevel=2,
        )
    return fit
