"""The checks of a model on its data, one module for every data path: missing values, level counts, random
effects against observations, rank of X, magnitudes and weights.

The in-memory design runs them on the rows; the partitioned design on what its passes over the partitions
found (null counts, levels, the reduced cross-products, the largest values). Both raise or warn with the same
messages, so a user sees the same :class:`~tfmixed.errors.DataError` wherever the rows live. The options
themselves are checked before, in :mod:`tfmixed.validation`.

>>> check_grouping("g", 1, 10)
Traceback (most recent call last):
...
tfmixed.errors.DataError: grouping factor 'g' has only 1 level; it needs at least 2
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DataError, RankDeficiencyWarning, RankDeficientError, TfmixedWarning

#: beyond this magnitude sums of squares over many rows overflow float64 (1.8e308)
LARGEST_VALUE = 1e150


def check_missing(null_counts: Mapping[Any, int], policy: str, dropped_rows: int, *, stacklevel: int = 4) -> None:
    """Missing values in the model's columns: a :class:`DataError` (``policy="raise"``) or a
    :class:`TfmixedWarning` that says how many rows are dropped (``"drop"``, R's ``na.omit``)."""
    null_counts = {name: int(count) for name, count in null_counts.items() if count}
    if not null_counts:
        return
    detail = ", ".join(f"{name} ({count})" for name, count in null_counts.items())
    if policy == "raise":
        raise DataError(f"missing values (NaN/None) in column(s) {detail}; drop them first or pass missing='drop'")
    warnings.warn(f"dropped {dropped_rows} row(s) with missing values in {detail}", TfmixedWarning,
                  stacklevel=stacklevel)


def check_grouping(name: str, n_levels: int, nobs: int, residual: bool = True) -> None:
    """A grouping factor needs two levels, and (with a residual) fewer levels than observations."""
    if n_levels < 2:
        raise DataError(f"grouping factor {name!r} has only {n_levels} level; it needs at least 2")
    if residual and n_levels >= nobs:
        raise DataError(f"grouping factor {name!r} has {n_levels} levels for {nobs} observations; "
                        "its random effects would be confounded with the residual")


def check_identifiable(covariance, n_levels: int, nobs: int, label: str) -> None:
    """lme4's check.nobs.vs.nRE (as many random effects as observations leave their variances and the
    residual's unidentifiable) for structures that cannot tell them apart; ar1, cs and toep terms need only more
    observations than covariance parameters, since their correlations identify the residual (glmmTMB fits
    them with one observation per level and column)."""
    if not covariance.identifies_residual and n_levels * covariance.k >= nobs:
        raise DataError(
            f"number of observations ({nobs}) <= number of random effects ({n_levels * covariance.k}) "
            f"for term {label}; the random-effects parameters and the residual variance "
            "are probably unidentifiable (lme4's check.nobs.vs.nRE; a structured covariance such as "
            "ar1(...) or cs(...) has fewer parameters)"
        )
    if covariance.n_params + 1 >= nobs:
        raise DataError(f"term {label} has {covariance.n_params} covariance parameters for {nobs} observations")


def check_terms(plans: Sequence, nobs: int, residual: bool = True) -> None:
    """Every random-effects term of a model spec (:class:`~tfmixed.model_spec.TermPlan`) against ``nobs``
    observations: level counts, and (with a residual) identifiability."""
    for plan in plans:
        check_grouping(plan.spec.name, plan.n_levels, nobs, residual)
        if residual:
            check_identifiable(plan.structure, plan.n_levels, nobs, plan.label)


def check_magnitude(largest_response: float, largest_fixed: float, response: str) -> None:
    """Values so large that their squares summed over rows overflow float64 are refused (rescaling does not
    change the fit)."""
    for largest, what in ((largest_response, f"response {response!r}"),
                          (largest_fixed, "the fixed-effects model matrix")):
        if largest > LARGEST_VALUE:
            raise DataError(f"{what} has values too large to square and sum in float64 (|value| up to {largest:.3g}); "
                            "rescale it (the fit does not depend on the units)")


def largest_magnitude(values: np.ndarray) -> float:
    return float(np.max(np.abs(values))) if values.size else 0.0


def check_finite_fixed(X: np.ndarray) -> None:
    if not np.all(np.isfinite(X)):
        raise DataError("the fixed-effects model matrix has non-finite values (check for inf in the covariates)")


def check_weights(prior: np.ndarray | None) -> None:
    """Prior weights must be non-negative, with at least one positive."""
    if prior is not None and (np.any(prior < 0) or not np.any(prior > 0)):
        raise DataError("weights must be non-negative with at least one positive value")


def aliased_columns(X: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Columns that are linear combinations of earlier ones, in order (R's dqrdc2 rule: later columns go).

    Scale-free: columns are normalised first, so a covariate in units of 1e12 is not mistaken for a collinear
    one. Each column is projected on the span of the columns kept before it (numpy's and scipy's pivoted QR
    reorder columns, which would drop the wrong ones).

    >>> aliased_columns(np.column_stack([np.ones(4), np.arange(4.0), 2 * np.arange(4.0)]))
    [2]
    """
    norms = np.linalg.norm(X, axis=0)
    unit = X / np.where(norms > 0, norms, 1.0)
    kept, dropped = np.zeros((X.shape[0], 0)), []
    for j in range(X.shape[1]):
        column = unit[:, j]
        residual = column - kept @ (kept.T @ column) if kept.shape[1] else column
        residual -= kept @ (kept.T @ residual) if kept.shape[1] else 0.0  # re-orthogonalise once
        size = np.linalg.norm(residual)
        if norms[j] == 0 or size < tol:
            dropped.append(j)
        else:
            kept = np.column_stack([kept, residual / size])
    return dropped


def aliased_from_gram(gram: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Columns that are (numerically) combinations of earlier ones, from X'WX: the same rule as
    :func:`aliased_columns` (residual norm of the unit-scaled column below ``tol``), for statistics summed over
    row chunks where X itself is never whole.

    >>> X = np.column_stack([np.ones(4), np.arange(4.0), 2 * np.arange(4.0)])
    >>> aliased_from_gram(X.T @ X)
    [2]
    """
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    unit = gram / np.outer(np.where(norms > 0, norms, 1.0), np.where(norms > 0, norms, 1.0))
    kept: list[int] = []
    dropped: list[int] = []
    for j in range(gram.shape[0]):
        if norms[j] == 0:
            dropped.append(j)
            continue
        if kept:
            block = unit[np.ix_(kept, kept)]
            cross = unit[kept, j]
            residual = unit[j, j] - cross @ np.linalg.solve(block, cross)
        else:
            residual = unit[j, j]
        if residual < tol * tol:
            dropped.append(j)
        else:
            kept.append(j)
    return dropped


def check_rank(aliased: list[int], names: Sequence[str], nobs: int, policy: str, *, stacklevel: int = 4) -> list[int]:
    """The aliased columns of X (found by :func:`aliased_columns` or :func:`aliased_from_gram`) to drop, with a
    :class:`RankDeficiencyWarning` as lme4's message (``policy="drop"``), or a :class:`RankDeficientError`
    naming them (``"raise"``)."""
    if policy == "raise" and nobs < len(names):
        raise RankDeficientError(f"X has {len(names)} columns but only {nobs} rows")
    if not aliased:
        return []
    labels = [names[i] for i in aliased]
    if policy == "raise":
        raise RankDeficientError(
            f"the fixed-effects model matrix is rank deficient (rank {len(names) - len(aliased)} < {len(names)} "
            f"columns); column(s) {labels} are linear combinations of the others; remove them from the formula"
        )
    warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(aliased)} column(s) / "
                  f"coefficient(s): {labels}", RankDeficiencyWarning, stacklevel=stacklevel)
    return list(aliased)


def refuse_stateful_transforms(spec, what: str) -> None:
    """On partitioned data a transform that learns from the data (scale, center, poly) would learn from the
    prototype frame, not from the rows: refused."""
    state = {name: value for name, value in getattr(spec, "transform_state", {}).items() if value}
    if state:
        raise DataError(f"{what} uses a transform that learns from the data ({sorted(state)}: scale, center, poly, "
                        "...); on partitioned data compute that column first (its state would come from one partition)")
