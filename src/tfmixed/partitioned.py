"""The design of data held in partitions (a Dask data frame, or Parquet files read by Dask): only the
cross-products are ever brought together.

A linear mixed model needs its data only through the cross-products, which are sums over rows
(:mod:`tfmixed.cross_products`). So:

1. a first, cheap pass (one ``dask.compute``) finds the row count, the missing values, the levels of every
   grouping factor (observed combinations for ``a:b``) and of every categorical fixed-effect column;
2. formulaic's model specs are built once, on a small prototype frame that holds every level, and shipped to the
   workers with the level labels (a :class:`PartitionPlan`), so each partition is encoded exactly as the whole
   data would be;
3. each partition's cross-products are computed where the partition lives, with the partition's own response
   shift, and summed by a tree reduction (:meth:`CrossProducts.with_shift` makes shifted statistics addable
   without cancellation).

The kernel, objective and estimators then work on the reduced statistics: the estimates equal the in-memory
fit's to rounding. Row-level results (fitted values, residuals, predictions) are Dask collections computed
partition by partition when asked for.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .covariance_structures import structure
from .cross_products import CrossProducts
from .design import (R_FUNCTIONS, _lme4_name, check_identifiable, _response, _used_columns, aliased_from_gram, evaluate, grouping_codes,
                     offset_values, plain_strings)
from .errors import DataError, FormulaError, RankDeficiencyWarning, RankDeficientError, TfmixedWarning
from .formula import ParsedFormula, parse_formula
from .levels import encode_levels
from .progress import Progress
from .terms import RandomEffectsTerm
from .validation import check_design_options, check_formula

_FACTOR_CALL = re.compile(r"(?:factor|as\.factor|C)\(\s*`?([A-Za-z_.][\w.]*)`?")


def is_partitioned(data: Any) -> bool:
    """A Dask data frame, or a path (or glob) of Parquet files."""
    dataframe = sys.modules.get("dask.dataframe")
    if dataframe is not None and isinstance(data, dataframe.DataFrame):
        return True
    if isinstance(data, (str, Path)):
        text = str(data)
        return text.endswith((".parquet", ".pq")) or ("*" in text) or Path(text).is_dir()
    return False


def as_dask_frame(data: Any):
    """The Dask data frame of ``data`` (Parquet paths are read lazily)."""
    try:
        import dask.dataframe as dd
    except ImportError:
        raise ImportError("partitioned data needs Dask: pip install 'tfmixed[dask]'") from None
    if isinstance(data, dd.DataFrame):
        return data
    try:
        return dd.read_parquet(str(data))
    except (OSError, ValueError, ImportError) as error:
        raise DataError(f"cannot read {str(data)!r} as Parquet: {error}") from None


@dataclass
class TermPlan:
    """What a partition needs to build one random-effects term: its grouping columns, global levels and the
    formulaic spec of its covariates."""

    spec: Any
    levels: pd.Index
    expr_spec: Any
    piece: list[int]
    columns: tuple[str, ...]

    def term(self, frame: pd.DataFrame) -> RandomEffectsTerm:
        group = self.spec.group
        if len(group) == 1:
            codes, _ = encode_levels(frame[group[0]], self.levels, name=f"grouping column {group[0]!r}")
        else:
            local, labels = grouping_codes(frame, group)
            codes = self.levels.get_indexer(labels)[local]
        values = np.asarray(self.expr_spec.get_model_matrix(frame, context=R_FUNCTIONS), dtype=np.float64)
        return RandomEffectsTerm(codes, values[:, self.piece], self.levels, name=self.spec.name, columns=self.columns,
                                 spec=self.spec, expr_spec=(self.expr_spec, self.piece),
                                 structure=structure(self.spec.structure, len(self.piece)))


@dataclass
class PartitionPlan:
    """Everything a worker needs to turn a partition into cross-products (picklable, built once)."""

    parsed: ParsedFormula
    used: list
    drop_missing: bool
    fixed_spec: Any
    response_spec: Any
    terms: list[TermPlan]
    weights: str | None
    offset: str | None

    def rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = plain_strings(frame[self.used])
        return frame.dropna() if self.drop_missing else frame

    def matrices(self, frame: pd.DataFrame):
        """(X, y, terms, weights, offset) of the partition's rows."""
        X = np.asarray(self.fixed_spec.get_model_matrix(frame, context=R_FUNCTIONS), dtype=np.float64)
        lhs = self.response_spec.get_model_matrix(frame, context=R_FUNCTIONS)
        y, _ = _response(lhs, frame, self.parsed.response, False)
        weights = None if self.weights is None else frame[self.weights].to_numpy(dtype=np.float64)
        offset = offset_values(self.parsed, frame)
        if self.offset is not None:
            column = frame[self.offset].to_numpy(dtype=np.float64)
            offset = column if offset is None else offset + column
        return X, y, [plan.term(frame) for plan in self.terms], weights, offset


@dataclass
class PartitionStatistics:
    """A partition's (or a sum of partitions') cross-products, row count, and mean and sum of squared deviations
    of y - offset (Chan's pairwise update)."""

    cross_products: CrossProducts
    rows: int
    mean: float
    m2: float

    def __add__(self, other: "PartitionStatistics") -> "PartitionStatistics":
        rows = self.rows + other.rows
        delta = other.mean - self.mean
        return PartitionStatistics(self.cross_products + other.cross_products.with_shift(self.cross_products.shift),
                                   rows, self.mean + delta * other.rows / rows,
                                   self.m2 + other.m2 + delta * delta * self.rows * other.rows / rows)


def partition_statistics(frame: pd.DataFrame, plan: PartitionPlan) -> PartitionStatistics | None:
    """The statistics of one partition (None when it has no rows)."""
    frame = plan.rows(frame)
    if len(frame) == 0:
        return None
    X, y, terms, weights, offset = plan.matrices(frame)
    working = y if offset is None else y - offset
    return PartitionStatistics(CrossProducts.from_rows(X, y, terms, weights=weights, offset=offset), len(frame),
                               float(np.mean(working)), float(np.sum((working - np.mean(working)) ** 2)))


def combine(a: PartitionStatistics | None, b: PartitionStatistics | None) -> PartitionStatistics | None:
    if a is None or b is None:
        return b if a is None else a
    return a + b


def partition_fitted(frame: pd.DataFrame, plan: PartitionPlan, beta: np.ndarray, b: np.ndarray,
                     residuals: bool = False) -> pd.Series:
    """X beta + Z b + offset (or y minus it) on one partition's rows."""
    frame = plan.rows(frame)
    if len(frame) == 0:
        return pd.Series([], dtype=np.float64, index=frame.index)
    X, y, terms, _, offset = plan.matrices(frame)
    values = X @ beta + (0.0 if offset is None else offset)
    start = 0
    for term in terms:
        values = values + term.z_times(b[start : start + term.q])
        start += term.q
    return pd.Series(y - values if residuals else values, index=frame.index)


def partition_response(frame: pd.DataFrame, plan: PartitionPlan) -> pd.Series:
    frame = plan.rows(frame)
    if len(frame) == 0:
        return pd.Series([], dtype=np.float64, index=frame.index)
    lhs = plan.response_spec.get_model_matrix(frame, context=R_FUNCTIONS)
    return pd.Series(_response(lhs, frame, plan.parsed.response, False)[0], index=frame.index)


@contextlib.contextmanager
def dask_client(client=None, verbose: bool = False):
    """The user's client, the current one, or a LocalCluster started (one worker per core) and closed here."""
    from distributed import Client, LocalCluster, get_client

    if client is not None:
        with client.as_current():
            yield client
        return
    try:
        current = get_client()
    except ValueError:  # no client running
        current = None
    if current is not None:
        yield current
        return
    if verbose:
        print("[tfmixed dask] starting a LocalCluster for this fit (pass client= to use your own)", file=sys.stderr)
    with LocalCluster(threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as own:
        yield own


def _tree_sum(delayed_parts):
    import dask

    parts = list(delayed_parts)
    while len(parts) > 1:
        parts = [dask.delayed(combine)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


class PartitionedDesign:
    """A design whose rows stay in their partitions: the cross-products, the specs that encode a partition, and
    lazy row-level results. Built by :func:`build_partitioned_design`."""

    in_memory = False
    frame = None
    row_index = None

    def __init__(self, formula, parsed, plan, dask_frame, statistics, fixed_names, renames, terms, kept, dropped):
        self.formula, self.parsed, self.plan, self.dask_frame = formula, parsed, plan, dask_frame
        self._statistics = statistics
        self.fixed_names, self.fixed_renames, self.terms = fixed_names, renames, terms
        self.kept_columns, self.dropped_fixed = kept, dropped
        self.fixed_spec = plan.fixed_spec
        self.weights = plan.weights
        self.offset = "offset" if (plan.offset is not None or parsed.offsets) else None
        self.nobs = statistics.rows

    def __getstate__(self):
        # a fit shipped to the workers (predictions on partitions) must not carry the Dask graph of its data
        return {key: value for key, value in self.__dict__.items() if key != "dask_frame"} | {"dask_frame": None}

    @property
    def n_fixed(self) -> int:
        return len(self.fixed_names)

    @property
    def term_slices(self) -> list[slice]:
        offsets = np.cumsum([0] + [term.q for term in self.terms])
        return [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]

    @property
    def response_variance(self) -> float:
        return self._statistics.m2 / self._statistics.rows

    def cross_products(self, *, shift=None) -> CrossProducts:
        cp = self._statistics.cross_products
        return cp if shift is None else cp.with_shift(shift)

    def _full_beta(self, beta: np.ndarray) -> np.ndarray:
        """beta over all of formulaic's columns (0 for the aliased ones the fit dropped)."""
        if self.kept_columns is None:
            return np.asarray(beta)
        full = np.zeros(len(self.plan.fixed_spec.column_names))
        full[self.kept_columns] = beta
        return full

    def fitted(self, beta: np.ndarray, b: np.ndarray):
        """X beta + Z b + offset as a Dask series (computed partition by partition when asked)."""
        return self.dask_frame.map_partitions(partition_fitted, self.plan, self._full_beta(beta), b,
                                              meta=pd.Series([], dtype=np.float64))

    def residuals(self, beta: np.ndarray, b: np.ndarray):
        return self.dask_frame.map_partitions(partition_fitted, self.plan, self._full_beta(beta), b, True,
                                              meta=pd.Series([], dtype=np.float64))

    @property
    def y(self):
        """The response as a Dask series."""
        return self.dask_frame.map_partitions(partition_response, self.plan, meta=pd.Series([], dtype=np.float64))

    def _rows_needed(self, what: str):
        raise DataError(f"{what} needs the model's rows in memory; this fit's data are partitioned (Dask): use the "
                        "Dask collections fit.fitted, fit.residuals and fit.predict(dask_frame), or fit a sample")

    @property
    def X(self):
        self._rows_needed("the fixed-effects matrix X")

    @property
    def offset_or_zero(self):
        self._rows_needed("the offset vector")

    def z_times(self, b):
        self._rows_needed("Z b")


def _first_pass(parsed: ParsedFormula, ddf, used: list, drop_missing: bool, categorical: list):
    import dask

    frame = model_rows(ddf, used, drop_missing)
    nulls = ddf[used].isna().sum()
    # one output partition: a tree reduction (levels are held whole anyway), not a shuffle
    groups = {spec.group: frame[list(spec.group)].drop_duplicates(split_out=1) for spec in parsed.random}
    factors = {column: frame[column].drop_duplicates(split_out=1) for column in categorical}
    return dask.compute(nulls, groups, factors, frame.shape[0] if drop_missing else ddf.shape[0])


def _categorical_columns(parsed: ParsedFormula, ddf, used: list) -> list:
    inside_factor = set(_FACTOR_CALL.findall(parsed.fixed_rhs + " " + " ".join(t.expr for t in parsed.random)))
    out = []
    for column in used:
        dtype = ddf.dtypes[column]
        text_like = (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
                     or isinstance(dtype, pd.CategoricalDtype))
        if (text_like or column in inside_factor) and column not in (parsed.response,):
            out.append(column)
    return out


def _prototype(ddf, used: list, factors: dict) -> pd.DataFrame:
    """A small frame with every level of every categorical column (as a Categorical of the sorted levels) and
    placeholder numbers elsewhere: formulaic's specs built on it encode any partition as the whole data."""
    sizes = [len(values) for values in factors.values()]
    rows = max([3, *sizes])
    columns = {}
    for column in used:
        if column in factors:
            unique = plain_strings(factors[column].reset_index(drop=True).to_frame())[column]
            _, levels = encode_levels(unique, name=f"column {column!r}")
            columns[column] = pd.Categorical(levels.take(np.arange(rows) % len(levels)), categories=levels)
        else:
            columns[column] = 1.0 + (np.arange(rows) % 5) / 4.0
    return pd.DataFrame(columns)


def _refuse_stateful(spec, what: str) -> None:
    state = {name: value for name, value in getattr(spec, "transform_state", {}).items() if value}
    if state:
        raise DataError(f"{what} uses a transform that learns from the data ({sorted(state)}: scale, center, poly, "
                        "...); on partitioned data compute that column first (its state would come from one partition)")


def build_partitioned_design(formula: str, data: Any, *, missing: str = "raise", weights=None, offset=None,
                             rank_deficient: str = "drop", client=None, verbose: bool = True) -> PartitionedDesign:
    """The design of ``formula`` on partitioned ``data`` (a Dask data frame or Parquet path): two passes over
    the data (levels, then cross-products), neither of which brings rows together.

    ``weights`` and ``offset`` must be column names here (an array cannot be split with the partitions).
    """
    missing, rank_deficient = check_design_options(missing=missing, rank_deficient=rank_deficient, partitioned=True,
                                                   weights=weights, offset=offset)
    parsed = parse_formula(check_formula(formula))
    ddf = as_dask_frame(data)
    for name, value in (("weights", weights), ("offset", offset)):
        if value is not None and value not in ddf.columns:
            raise DataError(f"{name} column {value!r} is not in the data; columns are {list(ddf.columns)}")
    absent = sorted(name for name in parsed.variables if name not in ddf.columns)
    if absent:
        raise FormulaError(f"formula refers to grouping column(s) {absent} that the data does not have; columns are "
                           f"{list(ddf.columns)}")
    extra = [value for value in (weights, offset) if value is not None]
    used = _used_columns(parsed, ddf, extra)
    categorical = _categorical_columns(parsed, ddf, used)
    progress = Progress("dask", verbose=verbose, interval=0.0)
    with dask_client(client, verbose):
        nulls, groups, factors, rows = _first_pass(parsed, ddf, used, missing == "drop", categorical)
        nulls = nulls[nulls > 0]
        if len(nulls) and missing == "raise":
            detail = ", ".join(f"{name} ({count})" for name, count in nulls.items())
            raise DataError(f"missing values (NaN/None) in column(s) {detail}; drop them first or pass missing='drop'")
        if len(nulls):
            warnings.warn(f"dropping rows with missing values in {list(nulls.index)} (partition by partition)",
                          TfmixedWarning, stacklevel=3)
        progress.update(1, f"levels found: {rows:,} rows, {ddf.npartitions} partitions")
        plan, names, renames = _plan(parsed, ddf, used, missing == "drop", factors, groups, weights, offset)
        import dask

        parts = [dask.delayed(partition_statistics)(part, plan) for part in ddf.to_delayed()]
        statistics = _tree_sum(parts).compute()
    if statistics is None:
        raise DataError("data has no rows")
    progress.finish(f"cross-products of {statistics.rows:,} rows reduced")
    return _finish(formula, parsed, plan, ddf, statistics, names, renames, rank_deficient)


def _plan(parsed, ddf, used, drop_missing, factors, groups, weights, offset):
    prototype = _prototype(ddf, used, factors)
    matrices, renames = evaluate(parsed.fixed, prototype)
    fixed_spec, response_spec = matrices.rhs.model_spec, matrices.lhs.model_spec
    _refuse_stateful(fixed_spec, f"the fixed part {parsed.fixed_rhs!r}")
    names = [_lme4_name(c, renames) for c in matrices.rhs.columns]
    term_plans = []
    for spec in parsed.random:
        unique = plain_strings(groups[spec.group].reset_index(drop=True))
        _, levels = grouping_codes(unique, spec.group)
        expr_matrix, expr_renames = evaluate(f"~ {spec.expr}", prototype)
        expr_matrix = getattr(expr_matrix, "rhs", expr_matrix)
        _refuse_stateful(expr_matrix.model_spec, f"the random term ({spec.expr} | {spec.name})")
        columns = [_lme4_name(c, expr_renames) for c in expr_matrix.columns]
        if not columns:
            raise FormulaError(f"random term ({spec.expr} | {spec.name}) has no columns")
        pieces = [[i] for i in range(len(columns))] if spec.split_columns else [list(range(len(columns)))]
        for piece in pieces:
            term_plans.append(TermPlan(spec, levels, expr_matrix.model_spec, piece, tuple(columns[i] for i in piece)))
    term_plans.sort(key=lambda plan: -len(plan.levels))  # lme4's order, stable for ties, as build_design
    return PartitionPlan(parsed, used, drop_missing, fixed_spec, response_spec, term_plans, weights, offset), names, renames


def _finish(formula, parsed, plan, ddf, statistics, names, renames, rank_deficient) -> PartitionedDesign:
    cp = statistics.cross_products
    nobs = statistics.rows
    for term_plan in plan.terms:
        levels, k = len(term_plan.levels), len(term_plan.piece)
        if levels < 2:
            raise DataError(f"grouping factor {term_plan.spec.name!r} has only {levels} level; it needs at least 2")
        check_identifiable(structure(term_plan.spec.structure, k), levels, nobs,
                           f"({term_plan.spec.expr} | {term_plan.spec.name})")
    dropped = aliased_from_gram(cp.xy_xy[:-1, :-1]) if cp.p else []
    kept = None
    if dropped:
        labels = [names[j] for j in dropped]
        if rank_deficient == "raise":
            raise RankDeficientError(f"the fixed-effects model matrix is rank deficient; column(s) {labels} are linear "
                                     "combinations of the others; remove them from the formula")
        warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} column(s) / "
                      f"coefficient(s): {labels}", RankDeficiencyWarning, stacklevel=3)
        kept = np.array([j for j in range(cp.p) if j not in set(dropped)], dtype=np.int64)
        statistics = PartitionStatistics(cp.select_fixed(kept), statistics.rows, statistics.mean, statistics.m2)
    terms = [RandomEffectsTerm(np.zeros(0, np.int64), np.zeros((0, len(t.piece))), t.levels, name=t.spec.name,
                               columns=t.columns, spec=t.spec, expr_spec=(t.expr_spec, t.piece),
                               structure=structure(t.spec.structure, len(t.piece))) for t in plan.terms]
    fixed_names = names if kept is None else [names[j] for j in kept]
    return PartitionedDesign(formula, parsed, plan, model_rows(ddf, plan.used, plan.drop_missing), statistics, fixed_names, renames, terms,
                             kept, [names[j] for j in dropped])


def model_rows(ddf, used: list, drop_missing: bool):
    """The data frame restricted to the model's columns (and rows, with missing='drop')."""
    frame = ddf[used]
    return frame.dropna() if drop_missing else frame
