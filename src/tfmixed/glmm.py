"""``glmer``: lme4's generalised linear mixed models (binomial, Poisson), from formula to fitted model.

The pipeline (lme4's glFormula -> mkGlmerDevfun -> optimizeGlmer -> mkMerMod): formula and design as for
``lmer`` -> family (:mod:`tfmixed.families`) -> conditional modes by PIRLS on the LMM kernel
(:mod:`tfmixed.estimators.pirls`) -> the Laplace / quadrature objective (:mod:`tfmixed.laplace`) -> the optimiser
of :mod:`tfmixed.estimators.profiled` in lme4's two stages (:mod:`tfmixed.estimators.glmer_stages`, lme4's
``optimizeGlmer``) -> :class:`~tfmixed.results.glmm.GlmerFit`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from .design import as_frame, build_design
from .model_spec import evaluate, lme4_name, mentioned_columns
from .errors import ConvergenceWarning, DataError, FormulaError, SingularFitWarning
from .estimators.diagnosis import flag_separation
from .estimators.glmer_stages import optimize_glmer
from .estimators.profiled import ProfiledOptions
from .families import Binomial, DispersionModel, ZeroInflated, get_family
from .kernels.options import KernelOptions
from .partitioned import is_partitioned
from .laplace import GlmmObjective
from .results.glmm import GlmerFit
from .threads import blas_threads_for
from .validation import check_flag, check_positive_integer, require_unstructured


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
    optimizer: ProfiledOptions | None = None,
    ziformula: str | None = None,
    dispformula: str | None = None,
) -> GlmerFit:
    """Fit a generalised linear mixed model by maximum likelihood, as lme4's ``glmer`` does.

    g(E[y | b]) = X beta + Z b + o, b ~ N(0, Lambda Lambda'), y | b from the ``family``: "binomial" (links
    "logit", "probit", "cloglog", "cauchit"), "poisson" ("log", "sqrt", "identity"), "negative_binomial"
    (NB2, lme4's ``glmer.nb``: size estimated), "Gamma" ("inverse", "log", "identity"), "inverse.gaussian",
    "gaussian" with link "log" or "inverse", "beta" (proportions in (0, 1)), or a
    :class:`tfmixed.families.Family` (one with fixed parameters, e.g. ``NegativeBinomial(size=2)``, or a
    :class:`~tfmixed.families.LogDensityFamily` written as its log-density). A family's own parameters are
    estimated with theta and beta (``fit.family_parameters``). ``ziformula`` ("~1", "~ x"; glmmTMB's) adds a
    zero-inflation model to a count family, ``dispformula`` a log-linear model of the family's dispersion
    parameter. The likelihood integral is approximated by Laplace's
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
    if optimizer is not None:
        check_glmer_options(optimizer, method)
    if is_partitioned(data):
        raise DataError("glmer on partitioned (Dask) data is not available: PIRLS re-weights the rows every "
                        "iteration; fit lmer, or glmer on the data in memory")
    zi_rhs = _zero_inflation_rhs(ziformula, family)
    disp_rhs = _sub_model_rhs(dispformula, "dispformula", ("1",))
    sub_columns = [column for rhs in (zi_rhs, disp_rhs) if rhs is not None
                   for column in mentioned_columns(rhs, as_frame(data).columns)]
    design = build_design(formula, data, missing=missing, weights=weights, offset=offset,
                          rank_deficient=rank_deficient, binomial=isinstance(family, Binomial),
                          residual=family.has_dispersion, extra_columns=tuple(sub_columns))
    if disp_rhs is not None:  # inside: the count model's dispersion; the zero-inflation wraps the whole
        family = DispersionModel(family, *_sub_model_matrix(disp_rhs, design, "dispersion"))
    if zi_rhs is not None:
        family = ZeroInflated(family, *_sub_model_matrix(zi_rhs, design, "zero-inflation"))
    if not design.terms:
        raise FormulaError(f"formula {formula!r} has no random-effects term such as (1 | group); a GLM without random "
                           "effects is statsmodels' GLM")
    prior = np.ones(design.nobs) if design.weights is None else design.weights
    family.check_response(design.y, prior, design.parsed.response)
    if method == "em":
        require_unstructured(design.terms, "method='em'")
        if family.n_estimated:
            raise DataError(f"method='em' updates theta and beta only; the {family.name} family's "
                            f"{family.estimated_names} are estimated by method='optimizer'")
    objective = GlmmObjective(design, family, n_agq, kernel_options)
    with blas_threads_for(sum(term.q for term in design.terms[1:]) + design.n_fixed + 1):
        optimum, hessian = optimize_glmer(objective, method=method, start=start, tol=tol, max_iter=max_iter,
                                          verbose=verbose, options=optimizer)
        optimum = flag_separation(objective, optimum, design.fixed_names)
        fit = GlmerFit(design, objective, optimum, hessian=hessian)
    _warn_about(fit)
    return fit


def _sub_model_rhs(formula, option: str, defaults: tuple[str, ...] = ("0", "-1", "0 + 1")) -> str | None:
    """The right-hand side of a one-sided sub-model formula ("~1", "~ x"), None for glmmTMB's default (``~0`` for
    ziformula: no zero-inflation; ``~1`` for dispformula: one dispersion)."""
    if formula is None:
        return None
    if not isinstance(formula, str) or "~" not in formula or formula.split("~", 1)[0].strip():
        raise DataError(f"{option} must be a one-sided formula such as '~1' or '~ x', got {formula!r}")
    rhs = formula.split("~", 1)[1].strip()
    if "|" in rhs:
        raise DataError(f"random effects in {option} are not available; use fixed effects there")
    return None if rhs in defaults else rhs


def _zero_inflation_rhs(ziformula, family) -> str | None:
    """The right-hand side of glmmTMB's ``ziformula`` ("~1", "~ x"), None for none ("~0", glmmTMB's default)."""
    rhs = _sub_model_rhs(ziformula, "ziformula")
    if rhs is None:
        return None
    if not family.zero_inflatable:
        raise DataError(f"zero-inflation (ziformula) wraps the count families (poisson, negative_binomial, "
                        f"negative_binomial1), not {family.name}")
    return rhs


def _sub_model_matrix(rhs: str, design, what: str) -> tuple[np.ndarray, list[str]]:
    """A sub-model's X on the model's rows (those kept after missing values), with lme4's column names."""
    matrix, renames = evaluate(f"~ {rhs}", design.frame)
    matrix = getattr(matrix, "rhs", matrix)
    values = np.asarray(matrix, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError(f"the {what} model matrix has non-finite values")
    return values, [lme4_name(column, renames) for column in matrix.columns]


#: the ProfiledOptions fields glmer's stages read: its criteria declare no average information, so the Newton
#: stage's settings and the evidence start do not apply
GLMER_OPTIONS = ("gradient_tol", "decrement_tol", "boundary_probes")


def check_glmer_options(optimizer, method: str) -> None:
    """Refuse optimizer settings glmer would ignore."""
    if not isinstance(optimizer, ProfiledOptions) or method == "em":
        raise DataError("optimizer= must be a tfmixed.ProfiledOptions and applies to method='optimizer'")
    ignored = [field.name for field in dataclasses.fields(ProfiledOptions)
               if field.name not in GLMER_OPTIONS and getattr(optimizer, field.name) != field.default]
    if ignored:
        raise DataError(f"glmer's stages use only {list(GLMER_OPTIONS)} of ProfiledOptions; {ignored} do not apply "
                        "(the Laplace criterion has no average-information Newton stage)")


def _warn_about(fit: GlmerFit) -> None:
    if not fit.converged:
        warnings.warn(f"glmer did not converge: {fit.optimum.message}", ConvergenceWarning, stacklevel=3)
    if fit.is_singular:
        warnings.warn("boundary (singular) fit: a variance is 0 or a correlation is +-1; see GlmerFit.is_singular",
                      SingularFitWarning, stacklevel=3)
    at_limit = fit.family.parameters_at_limit()
    if at_limit:
        values = ", ".join(f"{name} = {fit.family_parameters[name]:.3g}" for name in at_limit)
        warnings.warn(f"boundary fit of the {fit.family.name} family: {values} is at the edge of its range; "
                      f"{fit.family.parameter_limit_note}", SingularFitWarning, stacklevel=3)
