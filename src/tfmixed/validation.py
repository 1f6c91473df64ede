"""The one place where a user's options are checked, before any work starts, for every data path alike.

A front door (``lmer``, ``glmer``, ``build_design``, ``build_partitioned_design``) passes its options here first,
so a bad value raises the same :class:`~tfmixed.errors.DataError` whether the rows are in memory or partitioned
(in the spirit of glum's ``_validation.py``). Results that need the rows themselves ask
:func:`require_rows_in_memory` before they start.

>>> check_choice("Drop", "missing", ("raise", "drop"))
'drop'
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import DataError, FormulaError

MISSING_POLICIES = ("raise", "drop")
RANK_POLICIES = ("drop", "raise")


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` as one of ``choices`` (case-insensitive, as R's match.arg is forgiving of case in practice);
    a DataError naming the option and the choices otherwise."""
    if isinstance(value, str):
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
    raise DataError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_flag(value: Any, name: str) -> bool:
    """A boolean option (numpy booleans and the integers 0 and 1 too); strings such as "False" are refused
    rather than read as true."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise DataError(f"{name} must be True or False, got {value!r}")


def check_positive_integer(value: Any, name: str, *, allow_none: bool = True) -> int | None:
    """A positive integer option (None where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_formula(formula: Any) -> str:
    """The model formula as a string (parsed later by :func:`tfmixed.formula.parse_formula`)."""
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string such as 'y ~ x + (1 | g)', got {type(formula).__name__}")
    return formula


def check_design_options(*, missing: Any, rank_deficient: Any, partitioned: bool, weights: Any = None,
                         offset: Any = None) -> tuple[str, str]:
    """The design's options, normalised: (missing, rank_deficient). On partitioned data, ``weights`` and
    ``offset`` must be column names (an array cannot be split with the partitions)."""
    missing = check_choice(missing, "missing", MISSING_POLICIES)
    rank_deficient = check_choice(rank_deficient, "rank_deficient", RANK_POLICIES)
    if partitioned:
        for name, value in (("weights", weights), ("offset", offset)):
            if value is not None and not isinstance(value, str):
                raise DataError(f"with partitioned data, {name} must be the name of a column, got "
                                f"{type(value).__name__}")
    return missing, rank_deficient


def require_unstructured(terms: Any, what: str) -> None:
    """Refuse structured covariances (ar1, cs, ...) where ``what`` updates unstructured ones (EM, evidence and
    MacKay's fixed points, the seed's module)."""
    structured = sorted({term.structure.code for term in terms if not term.structure.is_lme4_theta})
    if structured:
        raise DataError(f"{what} updates unstructured covariances; the {structured} structure(s) are estimated by "
                        "tfmixed.lmer's method='profiled' (or glmer's method='optimizer')")


def require_rows_in_memory(design: Any, what: str, alternative: str) -> None:
    """Refuse at once what needs the model's rows (residuals, simulated responses, held fixed effects) when the
    design holds only the cross-products of partitioned data."""
    if not design.in_memory:
        raise DataError(f"{what} needs the model's rows in memory; this fit's data are partitioned (Dask or "
                        f"Parquet), which keeps only their cross-products: {alternative}")
