"""The model specification: what a formula means on a data set, built once and used by every data path.

Stage two of the pipeline (formula -> **model spec and checks** -> design -> cross-products -> kernel -> objective
-> estimators -> results). A :class:`ModelSpec` holds the model frame's columns, formulaic's specs of the fixed
part and of the response, lme4's names of the fixed-effect columns, and one :class:`TermPlan` per random-effects
term (its grouping columns, global levels, formulaic spec of its covariates, and covariance structure). It
encodes any frame of rows exactly as the whole data set: the in-memory design evaluates it on the data, each
Dask partition on its rows, a prediction on ``newdata``. The checks of what it builds live in
:mod:`tfmixed.checks`.

>>> from tfmixed import datasets
>>> from tfmixed.formula import parse_formula
>>> spec, _ = build_model_spec(parse_formula("Reaction ~ Days + (Days | Subject)"), datasets.load("sleepstudy"))
>>> spec.fixed_names, [(plan.spec.name, len(plan.levels), plan.columns) for plan in spec.terms]
(['(Intercept)', 'Days'], [('Subject', 18, ('(Intercept)', 'Days'))])
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
from formulaic import model_matrix
from formulaic.errors import FormulaicError

from .covariance_structures import CovarianceStructure, structure
from .errors import DataError, FormulaError
from .formula import ParsedFormula, RandomTermSpec, translate_r_syntax
from .levels import combine_levels, encode_levels
from .terms import RandomEffectsTerm

#: R's math functions that formulaic's evaluation context lacks (log, exp, poly, scale, C are formulaic's own);
#: the same context must be used again when a model spec evaluates new data
R_FUNCTIONS = {
    "cbind": lambda *columns: np.column_stack(columns),
    "sqrt": np.sqrt, "abs": np.abs, "log2": np.log2, "log10": np.log10, "log1p": np.log1p, "expm1": np.expm1,
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "floor": np.floor, "ceiling": np.ceil, "round": np.round,
}

_TREATMENT = re.compile(r"^(.*)\[(?:T\.)?(.*)\]$")
_POLY = re.compile(r"^(poly\(.*\))\[(\d+)\]$")


def lme4_name(column: str, renames: Mapping[str, str] | None = None) -> str:
    """lme4's coefficient names: "(Intercept)", treatment contrasts f[T.b] as fb (also inside a:b), poly(x, 2)1,
    and R's spelling of translated terms (``renames``: formulaic's name -> R's).

    >>> lme4_name("Intercept"), lme4_name("C(Days)[T.2]:x", {"C(Days)": "factor(Days)"})
    ('(Intercept)', 'factor(Days)2:x')
    """
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


def _mentions(text: str, column: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(column)}(?![\w.])", text) is not None


def mentioned_columns(text: str, columns) -> list:
    """The data columns a formula's text mentions (a sub-model's variables)."""
    return [name for name in columns if _mentions(text, str(name))]


def quote_columns(text: str, columns) -> str:
    """Backtick the data columns whose names formulaic would misread (R's dotted names such as Sepal.Length)."""
    for column in sorted((c for c in columns if isinstance(c, str) and not c.isidentifier()), key=len, reverse=True):
        text = re.sub(rf"(?<![\w.`]){re.escape(column)}(?![\w.`])", f"`{column}`", text)
    return text


def used_columns(parsed: ParsedFormula, columns, extra: list[str]) -> list:
    """The data columns the model reads (its model frame): those the formula mentions, plus ``extra``."""
    text = " ".join([parsed.fixed, *[term.expr for term in parsed.random], *parsed.offsets])
    return [name for name in columns if name in parsed.variables or name in extra or _mentions(text, str(name))]


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


def grouping_codes(data: pd.DataFrame, names: tuple[str, ...]) -> tuple[np.ndarray, pd.Index]:
    """Codes and labels of the grouping factor ``a`` or the interaction ``a:b`` (observed combinations only)."""
    encoded = [encode_levels(data[name], name=f"grouping column {name!r}") for name in names]
    if len(encoded) == 1:
        return encoded[0]
    return combine_levels([codes for codes, _ in encoded], [labels for _, labels in encoded])


def response_values(lhs, frame: pd.DataFrame, name: str, binomial: bool) -> tuple[np.ndarray, np.ndarray | None]:
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


def offset_values(parsed: ParsedFormula, frame: pd.DataFrame) -> np.ndarray | None:
    """The sum of the formula's ``offset(expr)`` terms on ``frame``, or None."""
    total: np.ndarray | None = None
    for expr in parsed.offsets:
        values = np.asarray(evaluate(f"~ 0 + I({expr})", frame)[0], dtype=np.float64).ravel()
        if not np.all(np.isfinite(values)):
            raise DataError(f"offset({expr}) has non-finite values")
        total = values if total is None else total + values
    return total


@dataclass(frozen=True, eq=False)
class TermPlan:
    """One random-effects term before it meets rows: its formula term, the levels of its grouping factor (of
    the whole data set), formulaic's spec of its covariates with the columns it takes (``piece``: one column each
    for ``||``), their lme4 names and its covariance structure."""

    spec: RandomTermSpec
    levels: pd.Index
    expr_spec: Any
    piece: tuple[int, ...]
    columns: tuple[str, ...]
    structure: CovarianceStructure

    @property
    def label(self) -> str:
        """The term as the formula writes it, for messages: ``(Days | Subject)``."""
        return f"({self.spec.expr} | {self.spec.name})"

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def codes(self, frame: pd.DataFrame, unseen: str = "error") -> np.ndarray:
        """Each row's level among the plan's levels (``unseen="new"``: ``n_levels`` for a level it lacks)."""
        group = self.spec.group
        if len(group) == 1:
            return encode_levels(frame[group[0]], self.levels, unseen=unseen, name=f"grouping column {group[0]!r}")[0]
        local, labels = grouping_codes(frame, group)
        position = self.levels.get_indexer(labels)
        if unseen == "error" and np.any(position < 0):
            raise DataError(f"rows have combinations of {group} that the model's levels lack")
        return np.where(position[local] >= 0, position[local], self.n_levels)

    def values(self, frame: pd.DataFrame) -> np.ndarray:
        """The term's covariate columns on ``frame`` (n x k)."""
        return np.asarray(self.expr_spec.get_model_matrix(frame, context=R_FUNCTIONS), dtype=np.float64)[:, list(self.piece)]

    def term(self, frame: pd.DataFrame, codes: np.ndarray | None = None,
             values: np.ndarray | None = None) -> RandomEffectsTerm:
        """The term on ``frame``'s rows (``codes`` and ``values`` when already evaluated there)."""
        return RandomEffectsTerm(self.codes(frame) if codes is None else codes,
                                 self.values(frame) if values is None else values, self.levels, name=self.spec.name,
                                 columns=self.columns, spec=self.spec, expr_spec=(self.expr_spec, list(self.piece)),
                                 structure=self.structure)

    def without_rows(self) -> RandomEffectsTerm:
        """The term with its levels and columns but no rows (what a design of partitioned data holds)."""
        k = len(self.piece)
        return RandomEffectsTerm(np.zeros(0, np.int64), np.zeros((0, k)), self.levels, name=self.spec.name,
                                 columns=self.columns, spec=self.spec, expr_spec=(self.expr_spec, list(self.piece)),
                                 structure=self.structure)


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """What the formula means on the data, independent of where the rows are.

    ``formulaic_names`` are lme4's names of every column formulaic builds; ``kept_columns`` the positions of
    those the fit keeps (None: all), after the rank check dropped the aliased ones. ``weights`` and ``offset``
    name the columns of the ``weights=`` and ``offset=`` arguments (arrays travel as hidden columns).
    """

    formula: str
    parsed: ParsedFormula
    used: tuple
    fixed_spec: Any
    response_spec: Any
    formulaic_names: tuple[str, ...]
    renames: dict = field(default_factory=dict)
    terms: tuple[TermPlan, ...] = ()
    weights: str | None = None
    offset: str | None = None
    kept_columns: np.ndarray | None = None

    @property
    def fixed_names(self) -> list[str]:
        """lme4's names of the fixed effects the fit estimates."""
        if self.kept_columns is None:
            return list(self.formulaic_names)
        return [self.formulaic_names[j] for j in self.kept_columns]

    @property
    def dropped_fixed(self) -> list[str]:
        """lme4's names of the columns dropped as linear combinations of the others."""
        if self.kept_columns is None:
            return []
        kept = set(self.kept_columns.tolist())
        return [name for j, name in enumerate(self.formulaic_names) if j not in kept]

    def dropping(self, aliased: list[int]) -> "ModelSpec":
        """The spec without the fixed-effect columns ``aliased`` (positions among formulaic's)."""
        if not aliased:
            return self
        kept = np.array([j for j in range(len(self.formulaic_names)) if j not in set(aliased)], dtype=np.int64)
        return dataclasses.replace(self, kept_columns=kept)

    def fixed_matrix(self, frame: pd.DataFrame, *, all_columns: bool = False, na_action: str = "ignore") -> np.ndarray:
        """X on ``frame``'s rows: the kept columns (``all_columns``: every column formulaic builds)."""
        X = np.asarray(self.fixed_spec.get_model_matrix(frame, na_action=na_action, context=R_FUNCTIONS),
                       dtype=np.float64)
        return X if all_columns or self.kept_columns is None else X[:, self.kept_columns]

    def response(self, frame: pd.DataFrame, binomial: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(y, binomial trials or None) on ``frame``'s rows."""
        lhs = self.response_spec.get_model_matrix(frame, context=R_FUNCTIONS)
        return response_values(lhs, frame, self.parsed.response, binomial)

    def offset_values(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The formula's offsets plus the ``offset=`` column on ``frame``'s rows (None when there is none)."""
        total = offset_values(self.parsed, frame)
        if self.offset is not None:
            column = frame[self.offset].to_numpy(dtype=np.float64)
            total = column if total is None else total + column
        return total

    def weight_values(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The ``weights=`` column on ``frame``'s rows (None when there is none)."""
        return None if self.weights is None else frame[self.weights].to_numpy(dtype=np.float64)


@dataclass
class Evaluation:
    """The matrices formulaic built while the spec was made, on the frame it was made from (the data, in
    memory): reused so that the in-memory design evaluates nothing twice."""

    fixed: Any
    term_codes: list[np.ndarray]
    term_values: list[np.ndarray]


def build_model_spec(parsed: ParsedFormula, frame: pd.DataFrame, *, formula: str | None = None,
                     weights: str | None = None, offset: str | None = None,
                     levels: Mapping[tuple[str, ...], pd.Index] | None = None,
                     extra_columns: tuple = ()) -> tuple[ModelSpec, Evaluation]:
    """The :class:`ModelSpec` of ``parsed`` made on ``frame``, and what was evaluated there.

    In memory ``frame`` is the data, and each grouping factor's levels are those observed. For partitioned data
    ``frame`` is a small prototype that holds every level of every categorical column, and ``levels`` gives each
    grouping factor's levels (found by a pass over the partitions). ``extra_columns`` join the model frame (the
    columns a sub-model such as a zero-inflation formula reads).
    """
    matrices, renames = evaluate(parsed.fixed, frame)
    # random terms often repeat the fixed right-hand side ((1 + Days | Subject) beside 1 + Days): reuse it
    evaluated = {parsed.fixed_rhs.replace(" ", ""): (matrices.rhs, renames)}
    plans: list[TermPlan] = []
    codes_of: list[np.ndarray] = []
    values_of: list[np.ndarray] = []
    for term_spec in parsed.random:
        if levels is None:
            codes, term_levels = grouping_codes(frame, term_spec.group)
        else:
            codes, term_levels = np.zeros(len(frame), np.int64), levels[term_spec.group]
        key = term_spec.expr.replace(" ", "")
        if key not in evaluated:
            expr_matrix, expr_renames = evaluate(f"~ {term_spec.expr}", frame)
            evaluated[key] = (getattr(expr_matrix, "rhs", expr_matrix), expr_renames)
        expr_matrix, expr_renames = evaluated[key]
        values = np.asarray(expr_matrix, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] == 0:
            raise FormulaError(f"random term ({term_spec.expr} | {term_spec.name}) has no columns")
        columns = [lme4_name(c, expr_renames) for c in expr_matrix.columns]
        pieces = [(i,) for i in range(len(columns))] if term_spec.split_columns else [tuple(range(len(columns)))]
        for piece in pieces:
            plans.append(TermPlan(term_spec, term_levels, expr_matrix.model_spec, piece,
                                  tuple(columns[i] for i in piece), structure(term_spec.structure, len(piece))))
            codes_of.append(codes)
            values_of.append(values[:, list(piece)])
    # lme4 orders terms by decreasing number of levels; a stable sort keeps the formula's order for ties
    order = sorted(range(len(plans)), key=lambda i: -plans[i].n_levels)
    extra = [name for name in (weights, offset) if name is not None] + list(extra_columns)
    spec = ModelSpec(
        formula=parsed.fixed if formula is None else formula, parsed=parsed,
        used=tuple(used_columns(parsed, frame.columns, extra)), fixed_spec=matrices.rhs.model_spec,
        response_spec=matrices.lhs.model_spec, formulaic_names=tuple(lme4_name(c, renames) for c in matrices.rhs.columns),
        renames=renames, terms=tuple(plans[i] for i in order), weights=weights, offset=offset,
    )
    return spec, Evaluation(matrices, [codes_of[i] for i in order], [values_of[i] for i in order])
