"""The one level encoder of tfmixed: categorical values -> integer codes 0..L-1 and their labels.

Every categorical column (grouping factors of ``lmer``, ids of :class:`tfmixed.keras.RandomEffects`) goes
through :func:`encode_levels`, so the same values always get the same order: numbers sort as numbers
(``[9, 10, 100]``), strings in byte order (R's C locale, Python's ``sorted``), a pandas Categorical keeps
its categories' order. Labels keep their values (an int level 1 and a float level 1.0 are the same level).
Codes come from :func:`pandas.factorize`, which hashes once instead of sorting the labels (``np.unique``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError, NewLevelError

#: policies for values that are not among the given levels
UNSEEN_POLICIES = ("error", "new")


def unique_with_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for integer keys, by hashing (pandas.factorize) and sorting only
    the distinct keys (numpy sorts all of them; the distinct ones are usually far fewer).

    >>> u, inverse = unique_with_inverse(np.array([7, 3, 7, 5]))
    >>> u.tolist(), inverse.tolist()
    ([3, 5, 7], [2, 0, 2, 1])
    """
    codes, distinct = pd.factorize(np.asarray(keys).ravel())
    order = np.argsort(distinct, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return np.asarray(distinct)[order], rank[codes]


def _as_series(values, name: str) -> pd.Series:
    if isinstance(values, pd.Series):
        return values
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {array.shape}")
    return pd.Series(array)


def encode_levels(values, levels=None, *, unseen: str = "error", name: str = "values") -> tuple[np.ndarray, pd.Index]:
    """Codes (int64, one per value) and the level labels of a categorical column.

    Without ``levels`` the observed values are the levels, sorted. With ``levels`` (a training set's labels)
    values are matched by value; ``unseen="error"`` raises :class:`NewLevelError` for values not among them,
    ``unseen="new"`` gives them the code ``len(levels)`` (a reserved row with zero effect).

    >>> codes, levels = encode_levels([10, 9, 100, 9])
    >>> codes.tolist(), levels.tolist()
    ([1, 0, 2, 0], [9, 10, 100])
    >>> encode_levels(["b", "c"], levels=["a", "b"], unseen="new")[0].tolist()
    [1, 2]
    """
    if unseen not in UNSEEN_POLICIES:
        raise DataError(f"unseen must be one of {UNSEEN_POLICIES}, got {unseen!r}")
    series = _as_series(values, name)
    if series.isna().any():
        raise DataError(f"{name} has missing values; drop them first or pass missing='drop'")
    if levels is None:
        return _factorize(series, name)
    known = levels if isinstance(levels, pd.Index) else pd.Index(list(levels))
    codes = known.get_indexer(_match_dtype(series, known))
    absent = codes < 0
    if np.any(absent):
        if unseen == "error":
            examples = list(pd.unique(series[absent]))[:5]
            raise NewLevelError(f"{name} has level(s) {examples} not among the {len(known)} known levels")
        codes[absent] = len(known)
    return codes.astype(np.int64), known


def has_unused_categories(column: pd.Series) -> bool:
    """Whether a categorical column has categories no row uses, by a count per category (pandas' own removal
    sorts the codes, a cost paid even when every category is used).

    >>> has_unused_categories(pd.Series(pd.Categorical(["a", "b"], categories=["a", "b", "c"])))
    True
    """
    codes = column.cat.codes.to_numpy()
    return bool(np.any(np.bincount(codes[codes >= 0], minlength=len(column.cat.categories)) == 0))


def _factorize(series: pd.Series, name: str) -> tuple[np.ndarray, pd.Index]:
    if isinstance(series.dtype, pd.CategoricalDtype):
        used = series.cat.remove_unused_categories() if has_unused_categories(series) else series
        return np.asarray(used.cat.codes, dtype=np.int64), pd.Index(used.cat.categories)
    try:
        codes, uniques = pd.factorize(series, sort=True)
    except TypeError:
        raise DataError(f"{name} mixes types that cannot be ordered (numbers and strings?); convert it to str") from None
    return np.asarray(codes, dtype=np.int64), pd.Index(uniques)


def _match_dtype(series: pd.Series, known: pd.Index) -> pd.Series:
    """Values as the known levels' kind: numbers compare by value, and "1" matches a level "1"."""
    numeric_known = pd.api.types.is_numeric_dtype(known.dtype) and not pd.api.types.is_bool_dtype(known.dtype)
    if numeric_known and not pd.api.types.is_numeric_dtype(series.dtype):
        converted = pd.to_numeric(series, errors="coerce")
        return converted.where(converted.notna(), other=np.nan)
    if not numeric_known and pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        # string levels (as R and CSV readers keep ids) against numbers: compare the numbers' text, 7.0 as "7"
        return series.map(lambda v: str(int(v)) if float(v).is_integer() else str(v))
    return series


def combine_levels(codes: list[np.ndarray], labels: list[pd.Index]) -> tuple[np.ndarray, pd.Index]:
    """The interaction a:b of factors: observed combinations only, ordered by a's level then b's (R's order).

    >>> c, l = combine_levels([np.array([0, 1, 0]), np.array([1, 0, 1])], [pd.Index(["x", "y"]), pd.Index([1, 2])])
    >>> c.tolist(), l.tolist()
    ([0, 1, 0], ['x:2', 'y:1'])
    """
    combined, text = codes[0].astype(np.int64), np.asarray(labels[0].astype(str), dtype=object)
    for more_codes, more_labels in zip(codes[1:], labels[1:]):
        width = len(more_labels)
        observed, combined = unique_with_inverse(combined * width + more_codes)
        more_text = np.asarray(more_labels.astype(str), dtype=object)
        text = text[observed // width] + ":" + more_text[observed % width]
    return combined.astype(np.int64).ravel(), pd.Index(text)
