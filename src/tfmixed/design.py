"""Turn a parsed formula and a data frame into model matrices: dense X, the random-effects terms, weights
and offsets.

This is the second stage of the pipeline (formula -> **design** -> cross-products -> kernel -> objective ->
estimators -> results). Nothing here depends on the covariance parameters: the design is built once per fit.

>>> from tfmixed import datasets
>>> design = build_design("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
>>> design.X.shape, design.Z.shape, [t.name for t in design.terms]
((180, 2), (180, 36), ['Subject'])
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from formulaic import model_matrix
from formulaic.errors import FormulaicError

from .covariance_structures import structure
from .cross_products import CrossProducts
from .errors import DataError, FormulaError, RankDeficiencyWarning, RankDeficientError, ShapeError, TfmixedWarning
from .formula import ParsedFormula, parse_formula, translate_r_syntax
from .levels import combine_levels, encode_levels, has_unused_categories
from .terms import RandomEffectsTerm
from .validation import RANK_POLICIES, check_choice, check_design_options, check_formula

#: R's math functions that formulaic's evaluation context lacks (log, exp, poly, scale, C are formulaic's own);
#: the same context must be used again when a model spec evaluates new data
R_FUNCTIONS = {
    "cbind": lambda *columns: np.column_stack(columns),
    "sqrt": np.sqrt, "abs": np.abs, "log2": np.log2, "log10": np.log10, "log1p": np.log1p, "expm1": np.expm1,
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "floor": np.floor, "ceiling": np.ceil, "round": np.round,
}

_TREATMENT = re.compile(r"^(.*)\[(?:T\.)?(.*)\]$")
_POLY = re.compile(r"^(poly\(.*\))\[(\d+)\]$")


def _lme4_name(column: str, renames: dict[str, str] | None = None) -> str:
    """lme4's coefficient names: "(Intercept)", treatment contrasts f[T.b] as fb (also inside a:b), poly(x, 2)1,
    and R's spelling of translated terms (``renames``: formulaic's name -> R's)."""
    if column == "Intercept":
        return "(Intercept)"
    for formulaic_name, r_name in (renames or {}).items():
        column = column.replace(formulaic_name, r_name)
    parts = [_POLY.sub(r"\1\2", _TREATMENT.sub(r"\1\2", part)).strip("`") for part in _split_interaction(column)]
    return ":".join(parts)


def _split_interaction(column: str) -> list[str]:
    """Split a column name at the ':' of interactions, not at those inside brackets or parentheses."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(column):
        depth += char in "([" 
        depth -= char in ")]"
        if char == ":" and depth == 0:
            parts.append(column[start:index])
            start = index + 1
    return parts + [column[start:]]


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
    fixed_spec: Any = field(repr=False, default=None)
    row_index: pd.Index | None = field(repr=False, default=None)
    #: positions of the kept columns among formulaic's (aliased columns dropped), None when all are kept
    kept_columns: np.ndarray | None = field(repr=False, default=None)
    #: lme4 names of the fixed-effect columns dropped as linear combinations of the others
    dropped_fixed: list[str] = field(default_factory=list)
    #: the model frame: the used columns of the rows kept (lmerTest's type III contrasts re-encode its factors)
    frame: pd.DataFrame | None = field(repr=False, default=None)
    #: formulaic's spelling of R syntax -> R's (``C(Time)`` -> ``factor(Time)``), for R's term labels
    fixed_renames: dict = field(repr=False, default_factory=dict)

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
        offsets = np.cumsum([0] + [term.q for term in self.terms])
        return [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]

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


def grouping_codes(data: pd.DataFrame, names: tuple[str, ...]) -> tuple[np.ndarray, pd.Index]:
    """Codes and labels of the grouping factor ``a`` or the interaction ``a:b`` (observed combinations only)."""
    encoded = [encode_levels(data[name], name=f"grouping column {name!r}") for name in names]
    if len(encoded) == 1:
        return encoded[0]
    return combine_levels([codes for codes, _ in encoded], [labels for _, labels in encoded])


def _mentions(text: str, column: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(column)}(?![\w.])", text) is not None


def quote_columns(text: str, columns) -> str:
    """Backtick the data columns whose names formulaic would misread (R's dotted names such as Sepal.Length)."""
    for column in sorted((c for c in columns if isinstance(c, str) and not c.isidentifier()), key=len, reverse=True):
        text = re.sub(rf"(?<![\w.`]){re.escape(column)}(?![\w.`])", f"`{column}`", text)
    return text


def _used_columns(parsed: ParsedFormula, data: pd.DataFrame, extra: list[str]) -> list:
    text = " ".join([parsed.fixed, *[term.expr for term in parsed.random], *parsed.offsets])
    return [name for name in data.columns if name in parsed.variables or name in extra or _mentions(text, str(name))]


def _check_columns(parsed: ParsedFormula, data: pd.DataFrame, missing: str, extra: list[str]) -> pd.DataFrame:
    absent = sorted(name for name in [*parsed.variables, *extra] if name not in data.columns)
    if absent:
        raise FormulaError(
            f"formula refers to grouping column(s) {absent} that the data does not have; columns are {list(data.columns)}"
        )
    used = _used_columns(parsed, data, extra)
    columns = {name: data[name] for name in used}  # one lookup each: a data frame's __getitem__ is not cheap
    null_counts = {name: int(column.isna().sum()) for name, column in columns.items()}
    null_counts = {name: count for name, count in null_counts.items() if count}
    if null_counts:
        detail = ", ".join(f"{name} ({count})" for name, count in null_counts.items())
        if missing == "raise":
            raise DataError(f"missing values (NaN/None) in column(s) {detail}; drop them first or pass missing='drop'")
        keep = ~data[used].isna().any(axis=1)
        warnings.warn(f"dropped {int((~keep).sum())} row(s) with missing values in {detail}", TfmixedWarning, stacklevel=4)
        data = data.loc[keep]
        columns = {name: data[name] for name in used}
    # categories that no (remaining) row uses would give all-zero columns: R's model frames drop them too
    categorical = [name for name, column in columns.items()
                   if isinstance(column.dtype, pd.CategoricalDtype) and has_unused_categories(column)]
    if categorical:
        data = data.assign(**{name: data[name].cat.remove_unused_categories() for name in categorical})
    return data


def aliased_columns(X: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Columns that are linear combinations of earlier ones, in order (R's dqrdc2 rule: later columns go).

    Scale-free: columns are normalised first, so a covariate in units of 1e12 is not mistaken for a collinear
    one. Each column is projected on the span of the columns kept before it.
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


def check_rank(X: np.ndarray, names: list[str], policy: str = "raise") -> list[int]:
    """The columns of X to drop as aliased (``policy="drop"``, with a :class:`RankDeficiencyWarning` as lme4's
    message) or a :class:`RankDeficientError` naming them (``"raise"``)."""
    policy = check_choice(policy, "rank_deficient", RANK_POLICIES)
    if X.shape[1] == 0:
        return []
    if X.shape[0] < X.shape[1] and policy == "raise":
        raise RankDeficientError(f"X has {X.shape[1]} columns but only {X.shape[0]} rows")
    dropped = aliased_columns(X)
    if not dropped:
        return []
    labels = [names[i] for i in dropped]
    if policy == "raise":
        raise RankDeficientError(
            f"the fixed-effects model matrix is rank deficient (rank {X.shape[1] - len(dropped)} < {X.shape[1]} "
            f"columns); column(s) {labels} are linear combinations of the others; remove them from the formula"
        )
    warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} column(s) / "
                  f"coefficient(s): {labels}", RankDeficiencyWarning, stacklevel=4)
    return dropped


def evaluate(formula: str, data: pd.DataFrame):
    """formulaic's model matrices of ``formula`` (R syntax translated) on ``data``, errors as :class:`FormulaError`.

    Returns the matrices and the map from formulaic's column names to R's.
    """
    response, _, rhs = formula.rpartition("~")
    translated, renames = translate_r_syntax(rhs, response)
    if response.strip() and not response.strip().isidentifier() and not response.strip().startswith("cbind("):
        # R evaluates the left-hand side as an expression (incidence/size is a ratio; formulaic would nest)
        response = translate_r_syntax(f"I({response.strip()})")[0]
    try:
        return model_matrix(quote_columns(f"{response}~{translated}", data.columns), data, na_action="ignore",
                            context=R_FUNCTIONS), renames
    except FormulaicError as error:
        unknown = re.search(r"`([^`]+)` is not present", str(error))
        if unknown:
            raise FormulaError(
                f"formula {formula!r} refers to {unknown.group(1)!r}, which the data does not have; "
                f"columns are {list(data.columns)}"
            ) from None
        raise FormulaError(f"cannot evaluate {formula!r}: {error}") from None


def _response(lhs, frame: pd.DataFrame, name: str, binomial: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The response vector and, for a binomial ``cbind(successes, failures)``, the number of trials."""
    column = frame[name] if name in frame.columns else None
    if binomial and column is not None and not pd.api.types.is_numeric_dtype(column.dtype):
        return _two_level_response(column, name), None
    if binomial and lhs.shape[1] == 2:
        counts = np.asarray(lhs, dtype=np.float64)
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise DataError(f"cbind response {name!r} needs finite, non-negative counts of successes and failures")
        trials = counts.sum(axis=1)
        return np.divide(counts[:, 0], trials, out=np.zeros(len(trials)), where=trials > 0), trials
    if lhs.shape[1] != 1:
        raise DataError(f"response {name!r} must be one numeric column, got columns {list(lhs.columns)}"
                        + ("; cbind(successes, failures) is a binomial response: use tfmixed.glmer" if not binomial else ""))
    if column is not None and not pd.api.types.is_numeric_dtype(column.dtype):
        raise DataError(f"response {name!r} must be numeric, got dtype {column.dtype}")
    y = np.asarray(lhs, dtype=np.float64).ravel()
    if not np.all(np.isfinite(y)):
        raise DataError(f"response {name!r} has non-finite values")
    return y, None


def _two_level_response(column: pd.Series, name: str) -> np.ndarray:
    """R's factor response of a binomial model: the first level (sorted, or the categorical order) is 0."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy().astype(np.float64)
    codes, levels = encode_levels(column, name=f"response {name!r}")
    if len(levels) != 2:
        raise DataError(f"a binomial factor response needs exactly two levels; {name!r} has {len(levels)}: "
                        f"{list(levels)[:5]}")
    return (codes == 1).astype(np.float64)


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


#: beyond this magnitude sums of squares over many rows overflow float64 (1.8e308)
LARGEST_VALUE = 1e150


def _check_magnitude(y: np.ndarray, X: np.ndarray, response: str) -> None:
    for values, what in ((y, f"response {response!r}"), (X, "the fixed-effects model matrix")):
        largest = float(np.max(np.abs(values))) if values.size else 0.0
        if largest > LARGEST_VALUE:
            raise DataError(f"{what} has values too large to square and sum in float64 (|value| up to {largest:.3g}); "
                            "rescale it (the fit does not depend on the units)")


def _as_column(value, frame: pd.DataFrame, what: str):
    if value is None or isinstance(value, str):
        return value, frame
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != len(frame):
        raise ShapeError(f"{what} must be a column name or a vector of {len(frame)} values, got shape {array.shape}")
    name = f".tfmixed_{what}"
    return name, frame.assign(**{name: array})


def offset_values(parsed: ParsedFormula, frame: pd.DataFrame) -> np.ndarray | None:
    """The sum of the formula's ``offset(expr)`` terms on ``frame``, or None."""
    total: np.ndarray | None = None
    for expr in parsed.offsets:
        values = np.asarray(evaluate(f"~ 0 + I({expr})", frame)[0], dtype=np.float64).ravel()
        if not np.all(np.isfinite(values)):
            raise DataError(f"offset({expr}) has non-finite values")
        total = values if total is None else total + values
    return total


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


def _random_terms(parsed: ParsedFormula, frame: pd.DataFrame, evaluated: dict, residual: bool = True) -> list[RandomEffectsTerm]:
    terms: list[RandomEffectsTerm] = []
    for spec in parsed.random:
        codes, levels = grouping_codes(frame, spec.group)
        if len(levels) < 2:
            raise DataError(f"grouping factor {spec.name!r} has only {len(levels)} level; it needs at least 2")
        if residual and len(levels) >= len(frame):
            raise DataError(
                f"grouping factor {spec.name!r} has {len(levels)} levels for {len(frame)} observations; "
                "its random effects would be confounded with the residual"
            )
        key = spec.expr.replace(" ", "")
        if key not in evaluated:
            matrix, renames = evaluate(f"~ {spec.expr}", frame)
            evaluated[key] = (getattr(matrix, "rhs", matrix), renames)
        expr_matrix, renames = evaluated[key]
        values = np.asarray(expr_matrix, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] == 0:
            raise FormulaError(f"random term ({spec.expr} | {spec.name}) has no columns")
        columns = [_lme4_name(c, renames) for c in expr_matrix.columns]
        pieces = [[i] for i in range(len(columns))] if spec.split_columns else [list(range(len(columns)))]
        for piece in pieces:
            covariance = structure(spec.structure, len(piece))
            if residual:
                check_identifiable(covariance, len(levels), len(frame), f"({spec.expr} | {spec.name})")
            terms.append(RandomEffectsTerm(
                codes, values[:, piece], levels, name=spec.name, columns=tuple(columns[i] for i in piece),
                spec=spec, expr_spec=(expr_matrix.model_spec, piece), structure=covariance,
            ))
    # lme4 orders terms by decreasing number of levels; sorted() is stable for ties.
    return sorted(terms, key=lambda term: -term.n_levels)


def build_design(formula: str | ParsedFormula, data: Any, *, missing: str = "raise", weights=None,
                 offset=None, rank_deficient: str = "drop", binomial: bool = False, residual: bool = True) -> Design:
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
    named = [value for value in (weights, offset) if value is not None]
    frame = _check_columns(parsed, frame, missing, named)
    if len(frame) == 0:
        raise DataError("data has no rows")

    matrices, renames = evaluate(parsed.fixed, frame)
    # Random terms often repeat the fixed right-hand side ((1 + Days | Subject) beside 1 + Days): reuse it.
    evaluated = {parsed.fixed_rhs.replace(" ", ""): (matrices.rhs, renames)}
    y, trials = _response(matrices.lhs, frame, parsed.response, binomial)
    X = np.asarray(matrices.rhs, dtype=np.float64)
    if not np.all(np.isfinite(X)):
        raise DataError("the fixed-effects model matrix has non-finite values (check for inf in the covariates)")
    _check_magnitude(y, X, parsed.response)
    fixed_names = [_lme4_name(c, renames) for c in matrices.rhs.columns]
    dropped = check_rank(X, fixed_names, rank_deficient)
    kept = np.array([j for j in range(X.shape[1]) if j not in set(dropped)], dtype=np.int64) if dropped else None
    if kept is not None:
        X, dropped_names = X[:, kept], [fixed_names[j] for j in dropped]
        fixed_names = [fixed_names[j] for j in kept]
    else:
        dropped_names = []

    prior = row_vector(weights, frame, "weights")
    if prior is not None and (np.any(prior < 0) or not np.any(prior > 0)):
        raise DataError("weights must be non-negative with at least one positive value")
    if trials is not None:
        prior = trials if prior is None else prior * trials
    total_offset = offset_values(parsed, frame)
    argument_offset = row_vector(offset, frame, "offset")
    if argument_offset is not None:
        total_offset = argument_offset if total_offset is None else total_offset + argument_offset

    return Design(
        formula=formula if isinstance(formula, str) else parsed.fixed,
        parsed=parsed,
        X=np.ascontiguousarray(X),
        y=y,
        fixed_names=fixed_names,
        terms=_random_terms(parsed, frame, evaluated, residual),
        weights=prior,
        offset=total_offset,
        fixed_spec=matrices.rhs.model_spec,
        row_index=frame.index,
        kept_columns=kept,
        dropped_fixed=dropped_names,
        frame=frame[_used_columns(parsed, frame, named)],
        fixed_renames=renames,
    )
