"""Turn a parsed formula and a data frame into model matrices: dense X, the random-effects terms, weights
and offsets.

This is the third stage of the pipeline (formula -> model spec and checks -> **design** -> cross-products ->
kernel -> objective -> estimators -> results): the :class:`~tfmixed.model_spec.ModelSpec` evaluated on rows held
in memory, checked by :mod:`tfmixed.checks`. Nothing here depends on the covariance parameters: the design is
built once per fit.

>>> from tfmixed import datasets
>>> design = build_design("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
>>> design.X.shape, design.Z.shape, [t.name for t in design.terms]
((180, 2), (180, 36), ['Subject'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .checks import (aliased_columns, check_finite_fixed, check_magnitude, check_missing, check_rank, check_terms,
                     check_weights, largest_magnitude)
from .cross_products import CrossProducts
from .errors import DataError, FormulaError, ShapeError
from .formula import ParsedFormula, parse_formula
from .levels import has_unused_categories
from .model_spec import ModelSpec, build_model_spec, response_values, used_columns
from .terms import RandomEffectsTerm, term_slices
from .validation import check_design_options, check_formula


@dataclass
class Design:
    """Everything the estimators need from formula and data.

    ``X`` is n x p dense, ``y`` has length n, ``terms`` are sorted by decreasing number of levels (lme4's
    order, which also puts the largest, block-diagonal factor first for the blocked Cholesky); ``weights``
    (prior weights, residual variance sigma^2 / w) and ``offset`` are None when absent.
    """

    formula: str
    parsed: ParsedFormula
    X: np.ndarray
    y: np.ndarray
    fixed_names: list[str]
    terms: list[RandomEffectsTerm]
    weights: np.ndarray | None = None
    offset: np.ndarray | None = None
    #: what the formula means on the data (None for a design built from arrays, as the Keras callback's)
    spec: ModelSpec | None = field(repr=False, default=None)
    row_index: pd.Index | None = field(repr=False, default=None)
    #: the model frame: the used columns of the rows kept (lmerTest's type III contrasts re-encode its factors)
    frame: pd.DataFrame | None = field(repr=False, default=None)

    @property
    def fixed_spec(self) -> Any:
        """formulaic's spec of the fixed part (None without a formula)."""
        return None if self.spec is None else self.spec.fixed_spec

    @property
    def kept_columns(self) -> np.ndarray | None:
        """Positions of the kept columns among formulaic's (aliased columns dropped), None when all are kept."""
        return None if self.spec is None else self.spec.kept_columns

    @property
    def dropped_fixed(self) -> list[str]:
        """lme4 names of the fixed-effect columns dropped as linear combinations of the others."""
        return [] if self.spec is None else self.spec.dropped_fixed

    @property
    def fixed_renames(self) -> dict:
        """formulaic's spelling of R syntax -> R's (``C(Time)`` -> ``factor(Time)``), for R's term labels."""
        return {} if self.spec is None else self.spec.renames

    @property
    def nobs(self) -> int:
        return self.X.shape[0]

    @property
    def n_fixed(self) -> int:
        return self.X.shape[1]

    @property
    def Z(self) -> sp.csc_matrix:
        """Sparse n x q random-effects model matrix (never densified)."""
        if not self.terms:
            return sp.csc_matrix((self.nobs, 0))
        return sp.hstack([term.z_matrix() for term in self.terms], format="csc")

    @property
    def term_slices(self) -> list[slice]:
        """The slice of the columns of Z (and of b) that belongs to each term."""
        return term_slices(self.terms)

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    @property
    def has_offset(self) -> bool:
        return self.offset is not None

    def require_spec(self) -> ModelSpec:
        """The model spec, which evaluates new data; a design built from arrays has none."""
        if self.spec is None:
            raise DataError("this design was built from arrays, not from a formula: it cannot evaluate new data")
        return self.spec

    @property
    def offset_or_zero(self) -> np.ndarray:
        return np.zeros(self.nobs) if self.offset is None else self.offset

    #: whether the rows are held here (a design of partitioned data holds only its cross-products)
    in_memory = True

    @property
    def response_variance(self) -> float:
        """Variance of y - offset (the scale of the default starts and of the degenerate-fit check)."""
        return float(np.var(self.y - self.offset_or_zero))

    def z_times(self, b: np.ndarray) -> np.ndarray:
        """Z b without forming Z."""
        out = np.zeros(self.nobs)
        for term, s in zip(self.terms, self.term_slices):
            out += term.z_times(b[s])
        return out

    def fitted(self, beta: np.ndarray, b: np.ndarray) -> np.ndarray:
        """X beta + Z b + offset."""
        return self.X @ beta + self.z_times(b) + self.offset_or_zero

    def residuals(self, beta: np.ndarray, b: np.ndarray) -> np.ndarray:
        """y - X beta - Z b - offset."""
        return self.y - self.fitted(beta, b)

    def cross_products(self, *, shift=None) -> CrossProducts:
        """The sufficient statistics of this design (new weights: :class:`CrossProductPattern`, which keeps
        the pattern)."""
        return CrossProducts.from_rows(self.X, self.y, self.terms, weights=self.weights, offset=self.offset,
                                       shift=shift)


def frames_by_factor(terms: list[RandomEffectsTerm], per_term: list[np.ndarray]) -> dict[str, pd.DataFrame]:
    """lme4's ``ranef`` layout: one DataFrame per grouping factor (levels x columns of all its terms); a term
    that repeats a column of the same factor, as in ``(1 | g) + (1 | g)``, gets its own frame ``g.1``."""
    frames: dict[str, pd.DataFrame] = {}
    for term, values in zip(terms, per_term):
        frame = pd.DataFrame(values, index=term.levels, columns=list(term.columns))
        key, copy = term.name, 0
        while key in frames and frames[key].columns.intersection(frame.columns).size:
            copy += 1
            key = f"{term.name}.{copy}"
        frame.index.name = term.name
        frames[key] = frames[key].join(frame) if key in frames else frame
    return frames


def _is_nullable_text(dtype) -> bool:
    """pandas' "string" dtype (NA-valued) or an Arrow string: formulaic does not treat them as categorical and
    silently encodes them as garbage, so they are converted to plain Python strings."""
    if isinstance(dtype, pd.StringDtype):
        return dtype.na_value is pd.NA
    if isinstance(dtype, pd.ArrowDtype):
        import pyarrow as pa

        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype)
    return False


#: pandas' default string dtype (NaN-valued "str" from pandas 3, object before): what formulaic encodes as a factor
PLAIN_TEXT = pd.StringDtype(na_value=np.nan) if int(pd.__version__.split(".")[0]) >= 3 else object


def plain_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with NA-valued string columns in pandas' default string dtype (missing values stay missing)."""
    text = [name for name, dtype in frame.dtypes.items() if _is_nullable_text(dtype)]
    return frame.astype({name: object for name in text}).astype({name: PLAIN_TEXT for name in text}) if text else frame


def as_frame(data: Any) -> pd.DataFrame:
    """The one entry point for user data: a pandas DataFrame, a dict of equally long columns, or any eager data
    frame narwhals knows (polars, pyarrow Table, modin, cuDF...), converted once to pandas.

    >>> as_frame({"y": [1.0, 2.0], "g": ["a", "b"]}).shape
    (2, 2)
    """
    if isinstance(data, pd.DataFrame):
        return plain_strings(data)
    if isinstance(data, dict):
        lengths = {name: len(np.atleast_1d(column)) for name, column in data.items()}
        if len(set(lengths.values())) > 1:
            raise ShapeError(f"the columns of a dict must have equal lengths, got {lengths}")
        return plain_strings(pd.DataFrame(data))
    try:
        import narwhals as nw

        frame = nw.from_native(data, eager_only=True)
    except (TypeError, ImportError):
        raise DataError(
            f"data must be a data frame (pandas, polars, pyarrow Table, ...) or a dict of columns, got {type(data).__name__}"
        ) from None
    if isinstance(frame, nw.Series):
        raise DataError("data must be a data frame with named columns, got a single series")
    return plain_strings(frame.to_pandas())


def _check_columns(parsed: ParsedFormula, data: pd.DataFrame, missing: str, extra: list[str]) -> pd.DataFrame:
    absent = sorted(name for name in [*parsed.variables, *extra] if name not in data.columns)
    if absent:
        raise FormulaError(
            f"formula refers to grouping column(s) {absent} that the data does not have; columns are {list(data.columns)}"
        )
    used = used_columns(parsed, data.columns, extra)
    columns = {name: data[name] for name in used}  # one lookup each: a data frame's __getitem__ is not cheap
    null_counts = {name: int(column.isna().sum()) for name, column in columns.items()}
    if any(null_counts.values()):
        keep = ~data[used].isna().any(axis=1)
        check_missing(null_counts, missing, int((~keep).sum()), stacklevel=5)
        data = data.loc[keep]
        columns = {name: data[name] for name in used}
    # categories that no (remaining) row uses would give all-zero columns: R's model frames drop them too
    categorical = [name for name, column in columns.items()
                   if isinstance(column.dtype, pd.CategoricalDtype) and has_unused_categories(column)]
    if categorical:
        data = data.assign(**{name: data[name].cat.remove_unused_categories() for name in categorical})
    return data


def row_vector(value, frame: pd.DataFrame, what: str) -> np.ndarray | None:
    """A per-row numeric vector given as a column name or an array of the data's length (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in frame.columns:
            raise DataError(f"{what} column {value!r} is not in the data; columns are {list(frame.columns)}")
        value = frame[value].to_numpy()
    try:
        array = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numeric") from None
    if array.shape[0] != len(frame):
        raise ShapeError(f"{what} has {array.shape[0]} values for {len(frame)} rows")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{what} has non-finite values")
    return array


def _as_column(value, frame: pd.DataFrame, what: str):
    if value is None or isinstance(value, str):
        return value, frame
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != len(frame):
        raise ShapeError(f"{what} must be a column name or a vector of {len(frame)} values, got shape {array.shape}")
    name = f".tfmixed_{what}"
    return name, frame.assign(**{name: array})


def build_design(formula: str | ParsedFormula, data: Any, *, missing: str = "raise", weights=None,
                 offset=None, rank_deficient: str = "drop", binomial: bool = False, residual: bool = True,
                 extra_columns: tuple = ()) -> Design:
    """Build X, y, the random-effects terms, prior weights and offset for an lme4 ``formula`` on ``data``.

    ``weights`` and ``offset`` are column names or arrays (lme4's ``weights =`` and ``offset =``); offsets
    in the formula (``offset(log(exposure))``) add to ``offset``. Validates what a user can get wrong: unknown
    columns, missing values, a non-numeric response, grouping factors with a single level or as many levels
    as observations, negative weights. Columns of X that are linear combinations of earlier ones are dropped
    with a :class:`RankDeficiencyWarning` (lme4's default; ``rank_deficient="raise"`` raises instead).
    ``binomial=True`` accepts R's binomial responses: ``cbind(successes, failures)`` (y is the proportion and
    the trials multiply the weights), a two-level factor (the first level is failure) or booleans.
    ``residual=False`` is for families without a dispersion parameter (binomial, Poisson): nothing confounds a
    random effect with a residual there, so observation-level terms such as ``(1 | obs)`` (lme4's way to model
    overdispersion) are allowed, where a Gaussian model refuses them (lme4's check.nobs.vs.nlev / nRE).
    ``extra_columns`` are data columns a sub-model reads (kept in ``design.frame``, their missing rows dropped).

    >>> from tfmixed import datasets
    >>> d = build_design("diameter ~ 1 + (1 | plate) + (1 | sample)", datasets.load("Penicillin"))
    >>> [(t.name, t.n_levels) for t in d.terms]
    [('plate', 24), ('sample', 6)]
    """
    missing, rank_deficient = check_design_options(missing=missing, rank_deficient=rank_deficient, partitioned=False)
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(check_formula(formula))
    frame = as_frame(data)
    # arrays travel as hidden columns so that rows dropped for missing values drop their weights too
    weights, frame = _as_column(weights, frame, "weights")
    offset, frame = _as_column(offset, frame, "offset")
    frame = _check_columns(parsed, frame, missing, [value for value in (weights, offset) if value is not None]
                           + list(extra_columns))
    if len(frame) == 0:
        raise DataError("data has no rows")

    spec, evaluation = build_model_spec(parsed, frame, formula=formula if isinstance(formula, str) else None,
                                        weights=weights, offset=offset, extra_columns=tuple(extra_columns))
    y, trials = response_values(evaluation.fixed.lhs, frame, parsed.response, binomial)
    X = np.asarray(evaluation.fixed.rhs, dtype=np.float64)
    check_finite_fixed(X)
    check_magnitude(largest_magnitude(y), largest_magnitude(X), parsed.response)
    spec = spec.dropping(check_rank(aliased_columns(X) if X.shape[1] else [], spec.formulaic_names, len(frame),
                                    rank_deficient))
    if spec.kept_columns is not None:
        X = X[:, spec.kept_columns]

    prior = row_vector(weights, frame, "weights")
    check_weights(prior)
    if trials is not None:
        prior = trials if prior is None else prior * trials
    row_vector(offset, frame, "offset")  # the offset= argument's checks; the spec sums it with the formula's
    total_offset = spec.offset_values(frame)
    check_terms(spec.terms, len(frame), residual)
    return Design(
        formula=spec.formula, parsed=parsed, X=np.ascontiguousarray(X), y=y, fixed_names=spec.fixed_names,
        terms=[plan.term(frame, codes, values) for plan, codes, values
               in zip(spec.terms, evaluation.term_codes, evaluation.term_values)],
        weights=prior, offset=total_offset, spec=spec, row_index=frame.index, frame=frame[list(spec.used)],
    )
