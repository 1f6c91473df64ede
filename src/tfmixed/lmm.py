"""``lmer``: lme4's linear mixed models, from formula to fitted model.

The pipeline, one stage per module (lme4's lFormula -> mkLmerDevfun -> optimizeLmer -> mkMerMod):
formula (:func:`tfmixed.formula.parse_formula`) -> design (:func:`tfmixed.design.build_design`) ->
cross-products (:class:`tfmixed.cross_products.CrossProducts`) -> kernel (:class:`tfmixed.kernels.pls.PLSProblem`)
-> objective (:class:`tfmixed.objective.LmmObjective`) -> estimator (:mod:`tfmixed.estimators`) -> result
(:class:`tfmixed.results.LmerFit`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .covariance_structures import CovarianceParameters
from .design import Design, build_design
from .errors import (ConvergenceWarning, CovarianceCollapseWarning, DataError, FormulaError, MemoryLimitError, ShapeError,
                     SingularFitWarning)
from .estimators.diagnosis import flag_degenerate
from .estimators.fixed_point import METHODS, VarianceState, fit_fixed_point
from .estimators.profiled import ProfiledOptions, fit_profiled
from .estimators.stochastic_newton import fit_stochastic_newton
from .kernels.iterative import IterativeOptions, IterativeProblem
from .kernels.options import KernelOptions
from .kernels.pls import PLSProblem
from .objective import LmmObjective
from .partitioned import PartitionedDesign, build_partitioned_design, is_partitioned
from .results import LmerFit
from .threads import blas_threads_for
from .validation import check_choice, check_flag, check_positive_integer, require_unstructured

#: the options that only some methods use: method -> the options it accepts
_METHOD_OPTIONS = {
    "profiled": {"start", "optimizer"},
    "em": {"G0", "sigma2_0", "acceleration", "tol"},
    "evidence": {"G0", "sigma2_0", "acceleration", "tol"},
    "mackay": {"G0", "sigma2_0", "acceleration", "tol", "covariance"},
}


BACKENDS = ("exact", "iterative", "auto")


def problem_from_design(design: Design | PartitionedDesign, options: KernelOptions | None = None,
                        backend: str = "exact", iterative_options: IterativeOptions | None = None):
    """The penalised least-squares problem (cross-products, chosen strategies) of a design: the exact kernel,
    the iterative one, or (``"auto"``) the exact one unless its blocks exceed the memory limit."""
    if not design.terms:
        raise FormulaError(
            f"formula {design.formula!r} has no random-effects term such as (1 | group); "
            "use tfmixed.LinearRegression for a fixed-effects-only model"
        )
    if backend not in BACKENDS:
        raise DataError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "iterative":
        return IterativeProblem(design.cross_products(), iterative_options)
    try:
        return PLSProblem(design.cross_products(), options)
    except MemoryLimitError:
        if backend == "exact":
            raise
        return IterativeProblem(design.cross_products(), iterative_options)


def default_start(problem: PLSProblem, G0=None, sigma2_0: float | None = None, response_variance: float = 1.0) -> VarianceState:
    """Start of the fixed-point methods: sigma^2_0 = var(y) and G0_t = sigma^2_0 I unless given."""
    sigma2 = float(response_variance) if sigma2_0 is None else float(sigma2_0)
    if not np.isfinite(sigma2) or sigma2 <= 0:
        raise DataError(f"sigma2_0 must be a positive number, got {sigma2_0!r}")
    if G0 is None:
        G = [sigma2 * np.eye(k) for k in problem.dims]
    else:
        G = [G0] if len(problem.dims) == 1 and np.ndim(G0) == 2 else list(G0)
        G = [np.atleast_2d(np.asarray(matrix, dtype=np.float64)) for matrix in G]
        if len(G) != len(problem.dims) or any(m.shape != (k, k) for m, k in zip(G, problem.dims)):
            raise ShapeError(f"G0 must hold one matrix per term with shapes {[(k, k) for k in problem.dims]}")
    return VarianceState(G, sigma2)


def _check_method_options(method: str, given: dict[str, Any]) -> None:
    if method not in _METHOD_OPTIONS:
        raise DataError(f"method must be 'profiled' or one of {METHODS}, got {method!r}")
    unused = sorted(name for name, value in given.items() if value is not None and name not in _METHOD_OPTIONS[method])
    if unused:
        raise DataError(f"option(s) {unused} do not apply to method={method!r} (it accepts {sorted(_METHOD_OPTIONS[method])})")


def lmer(
    formula: str,
    data: Any,
    *,
    REML: bool = True,
    weights=None,
    offset=None,
    method: str = "profiled",
    start: np.ndarray | None = None,
    G0=None,
    sigma2_0: float | None = None,
    acceleration: str | None = None,
    covariance: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    missing: str = "raise",
    rank_deficient: str = "drop",
    verbose: bool = True,
    kernel_options: KernelOptions | None = None,
    client=None,
    backend: str = "auto",
    iterative_options: IterativeOptions | None = None,
    optimizer: ProfiledOptions | None = None,
) -> LmerFit:
    """Fit a linear mixed model by REML (default) or maximum likelihood, as lme4's ``lmer`` does.

    y = X beta + Z b + o + e, b ~ N(0, sigma^2 Lambda Lambda'), e_i ~ N(0, sigma^2 / w_i).

    ``weights`` (prior weights) and ``offset`` o are column names or arrays; ``offset(expr)`` in the formula
    adds to o. ``method="profiled"`` (default) minimises the profiled deviance over the relative covariance
    factor theta (Bates et al. 2015) from ``start`` (lme4's theta order). The empirical-Bayes fixed points of
    :mod:`tfmixed.estimators.fixed_point`: ``"em"`` (converges to the same REML/ML estimates), ``"evidence"``
    (MacKay's gamma updates; REML/ML of the diagonal-covariance model) and ``"mackay"`` (the seed's loop,
    ``covariance`` "diagonal" or "full"), started from ``G0`` (one matrix per term) and ``sigma2_0`` (default
    var(y) I and var(y)), stopping at relative change ``tol`` (1e-10), with ``acceleration="squarem"``.
    An option that does not apply to the chosen method raises :class:`DataError`. ``missing`` is 'raise' or
    'drop'; ``rank_deficient="drop"`` (lme4's default) drops fixed-effect columns that are linear combinations
    of earlier ones with a :class:`RankDeficiencyWarning` (``fit.design.dropped_fixed`` names them), "raise"
    raises; ``verbose`` prints progress of long fits.

    ``backend="auto"`` (default) uses the exact kernel unless its blocks would exceed the memory limit, and then
    the iterative one (the summary says which); ``"iterative"`` forces it: preconditioned conjugate gradients in
    TensorFlow, the gradient's traces from fixed random probes and Newton steps to its root, the log-determinant
    by stochastic Lanczos quadrature at the optimum (:mod:`tfmixed.kernels.iterative`,
    :mod:`tfmixed.estimators.stochastic_newton`, accuracy set by ``iterative_options``); ``"exact"`` refuses such
    a model with :class:`MemoryLimitError`.

    ``data`` may be a Dask data frame or a path (glob) of Parquet files: the cross-products are then computed
    partition by partition on a ``dask.distributed`` client (``client``, the current one, or a LocalCluster
    started for the fit) and summed, never collecting the rows (:mod:`tfmixed.partitioned`); fitted values,
    residuals and predictions on Dask frames are Dask series.

    >>> from tfmixed import datasets
    >>> fit = lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"), verbose=False)
    >>> round(fit.deviance, 3), fit.fixef.round(3).tolist()
    (1743.628, [251.405, 10.467])
    """
    REML, verbose = check_flag(REML, "REML"), check_flag(verbose, "verbose")
    backend = check_choice(backend, "backend", BACKENDS)
    max_iter = check_positive_integer(max_iter, "max_iter")
    if optimizer is not None and not isinstance(optimizer, ProfiledOptions):
        raise DataError(f"optimizer must be a tfmixed.ProfiledOptions, got {type(optimizer).__name__}")
    _check_method_options(method, {"start": start, "optimizer": optimizer, "G0": G0, "sigma2_0": sigma2_0, "acceleration": acceleration,
                                   "tol": tol, "covariance": covariance})
    design: Design | PartitionedDesign
    if is_partitioned(data):
        if method != "profiled":
            raise DataError(f"method={method!r} needs the rows in memory; partitioned (Dask) data are fitted by the "
                            "profiled method from their cross-products")
        design = build_partitioned_design(formula, data, missing=missing, weights=weights, offset=offset,
                                          rank_deficient=rank_deficient, client=client, verbose=verbose)
    else:
        if client is not None:
            raise DataError("client= applies to partitioned (Dask) data only")
        design = build_design(formula, data, missing=missing, weights=weights, offset=offset,
                              rank_deficient=rank_deficient)
    if iterative_options is not None and backend == "exact":
        raise DataError("iterative_options apply to backend='iterative' or 'auto'")
    problem = problem_from_design(design, kernel_options, backend, iterative_options)
    iterative = isinstance(problem, IterativeProblem)
    if iterative and optimizer is not None:
        raise DataError("optimizer= sets the exact kernel's profiled estimator; the iterative backend's accuracy is "
                        "set by iterative_options")
    if iterative and method != "profiled":
        raise DataError(f"method={method!r} needs the exact kernel; the iterative backend fits by the profiled method")
    if method != "profiled":
        require_unstructured(design.terms, f"method={method!r}")
    objective = LmmObjective(problem, reml=REML, covariance=CovarianceParameters.of_terms(design.terms))
    with blas_threads_for(problem.q_rest + problem.p + 1):
        if iterative:
            optimum = fit_stochastic_newton(objective, start=start, max_iter=max_iter or 100, verbose=verbose)
        elif method == "profiled":
            optimum = fit_profiled(objective, start=start, max_iter=max_iter or 1000, verbose=verbose, options=optimizer)
        else:
            optimum = _fit_fixed_point(design, problem, method, REML, G0, sigma2_0, acceleration, covariance,
                                       tol, max_iter, verbose)
        fit = LmerFit(design, objective, flag_degenerate(objective, optimum, design.response_variance))
    _warn_about(fit, method)
    return fit


def _fit_fixed_point(design, problem, method, reml, G0, sigma2_0, acceleration, covariance, tol, max_iter, verbose):
    initial = default_start(problem, G0, sigma2_0, response_variance=design.response_variance)
    return fit_fixed_point(
        problem, initial, method=method, reml=reml, acceleration=acceleration,
        covariance=covariance or ("full" if method == "em" else "diagonal"),
        tol=1e-10 if tol is None else tol, max_iter=max_iter or 10_000, verbose=verbose, residuals=design.residuals,
    )


def _warn_about(fit: LmerFit, method: str) -> None:
    optimum = fit.optimum
    if optimum.status == "collapsed":
        assert optimum.iterations is not None  # the fixed-point methods count theirs
        warnings.warn(
            f"{method} collapsed at iteration {optimum.iterations - 1}: a covariance matrix became singular "
            "(correlation -> 1); see docs/mackay.md", CovarianceCollapseWarning, stacklevel=3,
        )
    elif not optimum.converged:
        warnings.warn(f"lmer did not converge: {optimum.message}", ConvergenceWarning, stacklevel=3)
    if fit.is_singular:
        warnings.warn("boundary (singular) fit: a variance is 0 or a correlation is +-1; see LmerFit.is_singular",
                      SingularFitWarning, stacklevel=3)
