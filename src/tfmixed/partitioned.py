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
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .checks import (aliased_from_gram, check_magnitude, check_missing, check_rank, check_terms,
                     refuse_stateful_transforms, largest_magnitude)
from .cross_products import CrossProducts
from .design import plain_strings
from .errors import DataError, FormulaError
from .formula import ParsedFormula, parse_formula
from .levels import encode_levels
from .model_spec import ModelSpec, build_model_spec, grouping_codes, used_columns
from .progress import Progress
from .terms import term_slices
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
class PartitionPlan:
    """What a worker needs to turn a partition into cross-products or row-level results (picklable, built
    once): the model spec and whether rows with missing values are dropped."""

    spec: ModelSpec
    drop_missing: bool

    def rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = plain_strings(frame[list(self.spec.used)])
        return frame.dropna() if self.drop_missing else frame

    def matrices(self, frame: pd.DataFrame, *, all_columns: bool = False):
        """(X, y, terms, weights, offset) of the partition's rows (``all_columns``: X before the rank check)."""
        y, _ = self.spec.response(frame)
        return (self.spec.fixed_matrix(frame, all_columns=all_columns), y,
                [plan.term(frame) for plan in self.spec.terms], self.spec.weight_values(frame),
                self.spec.offset_values(frame))


@dataclass
class PartitionStatistics:
    """A partition's (or a sum of partitions') cross-products, row count, and mean and sum of squared deviations
    of y - offset (Chan's pairwise update)."""

    cross_products: CrossProducts
    rows: int
    mean: float
    m2: float
    #: the largest |y| and |X| seen (the magnitude check of :mod:`tfmixed.checks`)
    largest_response: float = 0.0
    largest_fixed: float = 0.0

    def __add__(self, other: "PartitionStatistics") -> "PartitionStatistics":
        rows = self.rows + other.rows
        delta = other.mean - self.mean
        return PartitionStatistics(self.cross_products + other.cross_products.with_shift(self.cross_products.shift),
                                   rows, self.mean + delta * other.rows / rows,
                                   self.m2 + other.m2 + delta * delta * self.rows * other.rows / rows,
                                   max(self.largest_response, other.largest_response),
                                   max(self.largest_fixed, other.largest_fixed))


def partition_statistics(frame: pd.DataFrame, plan: PartitionPlan) -> PartitionStatistics | None:
    """The statistics of one partition (None when it has no rows)."""
    frame = plan.rows(frame)
    if len(frame) == 0:
        return None
    X, y, terms, weights, offset = plan.matrices(frame, all_columns=True)
    working = y if offset is None else y - offset
    # values too large to square overflow here; the check after the reduction refuses them with a DataError
    with np.errstate(over="ignore", invalid="ignore"):
        return PartitionStatistics(CrossProducts.from_rows(X, y, terms, weights=weights, offset=offset), len(frame),
                                   float(np.mean(working)), float(np.sum((working - np.mean(working)) ** 2)),
                                   largest_magnitude(y), largest_magnitude(X))


def combine(a: PartitionStatistics | None, b: PartitionStatistics | None) -> PartitionStatistics | None:
    if a is None or b is None:
        return b if a is None else a
    with np.errstate(over="ignore", invalid="ignore"):  # as in partition_statistics
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
    return pd.Series(plan.spec.response(frame)[0], index=frame.index)


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

    def __init__(self, plan: PartitionPlan, dask_frame, statistics: PartitionStatistics):
        self.plan, self.dask_frame, self._statistics = plan, dask_frame, statistics
        spec = plan.spec
        self.spec, self.formula, self.parsed = spec, spec.formula, spec.parsed
        self.fixed_names, self.fixed_renames = spec.fixed_names, spec.renames
        self.kept_columns, self.dropped_fixed, self.fixed_spec = spec.kept_columns, spec.dropped_fixed, spec.fixed_spec
        self.terms = [term_plan.without_rows() for term_plan in spec.terms]
        self.has_weights = spec.weights is not None
        self.has_offset = spec.offset is not None or bool(spec.parsed.offsets)
        self.nobs = statistics.rows

    def require_spec(self) -> ModelSpec:
        return self.spec

    def __getstate__(self):
        # a fit shipped to the workers (predictions on partitions) must not carry the Dask graph of its data
        return {key: value for key, value in self.__dict__.items() if key != "dask_frame"} | {"dask_frame": None}

    @property
    def n_fixed(self) -> int:
        return len(self.fixed_names)

    @property
    def term_slices(self) -> list[slice]:
        return term_slices(self.terms)

    @property
    def response_variance(self) -> float:
        return self._statistics.m2 / self._statistics.rows

    def cross_products(self, *, shift=None) -> CrossProducts:
        cp = self._statistics.cross_products
        return cp if shift is None else cp.with_shift(shift)

    def fitted(self, beta: np.ndarray, b: np.ndarray):
        """X beta + Z b + offset as a Dask series (computed partition by partition when asked)."""
        return self.dask_frame.map_partitions(partition_fitted, self.plan, np.asarray(beta), b,
                                              meta=pd.Series([], dtype=np.float64))

    def residuals(self, beta: np.ndarray, b: np.ndarray):
        return self.dask_frame.map_partitions(partition_fitted, self.plan, np.asarray(beta), b, True,
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

    @property
    def offset(self):
        self._rows_needed("the offset vector")

    @property
    def weights(self):
        self._rows_needed("the prior weights vector")

    def z_times(self, b):
        self._rows_needed("Z b")


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


def build_partitioned_design(formula: str, data: Any, *, missing: str = "raise", weights=None, offset=None,
                             rank_deficient: str = "drop", client=None, verbose: bool = True) -> PartitionedDesign:
    """The design of ``formula`` on partitioned ``data`` (a Dask data frame or Parquet path): two passes over
    the data (levels, then cross-products), neither of which brings rows together. The model spec and the
    checks are those of the in-memory :func:`~tfmixed.design.build_design`, run on what the passes find.

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
    used = used_columns(parsed, ddf.columns, [value for value in (weights, offset) if value is not None])
    progress = Progress("dask", verbose=verbose, interval=0.0)
    with dask_client(client, verbose):
        nulls, groups, factors, rows, kept_rows = _first_pass(parsed, ddf, used, missing == "drop",
                                                             _categorical_columns(parsed, ddf, used))
        check_missing(dict(nulls.items()), missing, rows - kept_rows, stacklevel=4)
        progress.update(1, f"levels found: {kept_rows:,} rows, {ddf.npartitions} partitions")
        levels = {spec.group: grouping_codes(plain_strings(groups[spec.group].reset_index(drop=True)), spec.group)[1]
                  for spec in parsed.random}
        spec, _ = build_model_spec(parsed, _prototype(ddf, used, factors), formula=formula, weights=weights,
                                   offset=offset, levels=levels)
        refuse_stateful_transforms(spec.fixed_spec, f"the fixed part {parsed.fixed_rhs!r}")
        for term_plan in spec.terms:
            refuse_stateful_transforms(term_plan.expr_spec, f"the random term {term_plan.label}")
        plan = PartitionPlan(spec, missing == "drop")
        import dask

        parts = [dask.delayed(partition_statistics)(part, plan) for part in ddf.to_delayed()]
        statistics = _tree_sum(parts).compute()
    if statistics is None:
        raise DataError("data has no rows")
    progress.finish(f"cross-products of {statistics.rows:,} rows reduced")
    return _finish(plan, model_rows(ddf, list(spec.used), plan.drop_missing), statistics, rank_deficient)


def _first_pass(parsed: ParsedFormula, ddf, used: list, drop_missing: bool, categorical: list):
    """One ``dask.compute``: null counts, the levels of every grouping factor and categorical column, the number
    of rows, and of rows kept."""
    import dask

    frame = model_rows(ddf, used, drop_missing)
    nulls = ddf[used].isna().sum()
    # one output partition: a tree reduction (levels are held whole anyway), not a shuffle
    groups = {spec.group: frame[list(spec.group)].drop_duplicates(split_out=1) for spec in parsed.random}
    factors = {column: frame[column].drop_duplicates(split_out=1) for column in categorical}
    return dask.compute(nulls, groups, factors, ddf.shape[0], frame.shape[0])


def _finish(plan: PartitionPlan, rows, statistics: PartitionStatistics, rank_deficient: str) -> PartitionedDesign:
    spec, cp = plan.spec, statistics.cross_products
    check_magnitude(statistics.largest_response, statistics.largest_fixed, spec.parsed.response)
    check_terms(spec.terms, statistics.rows)
    aliased = check_rank(aliased_from_gram(cp.xy_xy[:-1, :-1]) if cp.p else [], spec.formulaic_names,
                         statistics.rows, rank_deficient, stacklevel=5)
    if aliased:
        spec = spec.dropping(aliased)
        statistics = dataclasses.replace(statistics, cross_products=cp.select_fixed(spec.kept_columns))
    return PartitionedDesign(PartitionPlan(spec, plan.drop_missing), rows, statistics)


def model_rows(ddf, used: list, drop_missing: bool):
    """The data frame restricted to the model's columns (and rows, with missing='drop')."""
    frame = ddf[used]
    return frame.dropna() if drop_missing else frame
