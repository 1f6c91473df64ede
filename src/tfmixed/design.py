"""Turn a parsed formula and a data frame into model matrices: dense X, sparse Z, and term structures.

This is the second stage of the pipeline (formula -> **design** -> model -> estimator -> results).
Nothing here depends on the covariance parameters: the design is built once per fit.

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

from .errors import DataError, FormulaError, RankDeficientError, TfmixedWarning
from .formula import ParsedFormula, RandomTermSpec, parse_formula
from .kernels.pls import TermLayout


_TREATMENT = re.compile(r"^(.*)\[T\.(.*)\]$")


def _lme4_name(column: str) -> str:
    """lme4's coefficient names: "(Intercept)", and treatment contrasts f[T.b] as fb (also inside a:b)."""
    if column == "Intercept":
        return "(Intercept)"
    return ":".join(_TREATMENT.sub(r"\1\2", part).strip("`") for part in column.split(":"))


@dataclass
class GroupingFactor:
    """A categorical grouping factor: integer codes per observation and the level labels (lme4's order)."""

    name: str
    codes: np.ndarray
    levels: pd.Index

    @property
    def n_levels(self) -> int:
        return len(self.levels)


@dataclass
class RandomTerm:
    """One random-effects term ``(expr | factor)`` evaluated on the data.

    ``values`` is the n x k model matrix of ``expr``; the term contributes ``q = n_levels * k`` columns
    to Z, ordered level by level (all k columns of level 1, then level 2, ...) as in lme4.
    """

    spec: RandomTermSpec
    factor: GroupingFactor
    columns: list[str]
    values: np.ndarray
    expr_spec: Any = field(repr=False, default=None)

    @property
    def name(self) -> str:
        return self.factor.name

    @property
    def n_levels(self) -> int:
        return self.factor.n_levels

    @property
    def n_cols(self) -> int:
        return len(self.columns)

    @property
    def q(self) -> int:
        return self.n_levels * self.n_cols

    @property
    def n_theta(self) -> int:
        return self.n_cols * (self.n_cols + 1) // 2

    def layout(self) -> TermLayout:
        """What the numerical kernel needs of this term (level codes and covariate values)."""
        return TermLayout(self.factor.codes, self.values, self.n_levels)

    def z_matrix(self) -> sp.csc_matrix:
        """The sparse n x q indicator-times-covariate matrix of this term."""
        return self.layout().z_matrix()


@dataclass
class Design:
    """Everything the estimators need from formula and data.

    ``X`` is n x p dense, ``y`` has length n, ``terms`` are sorted by decreasing number of levels
    (lme4's order, which also puts the largest, block-diagonal factor first for the blocked Cholesky).
    """

    formula: str
    parsed: ParsedFormula
    X: np.ndarray
    y: np.ndarray
    fixed_names: list[str]
    terms: list[RandomTerm]
    fixed_spec: Any = field(repr=False, default=None)
    row_index: pd.Index | None = field(repr=False, default=None)

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


def frames_by_factor(terms: list[RandomTerm], per_term: list[np.ndarray]) -> dict[str, pd.DataFrame]:
    """lme4's ``ranef`` layout: one DataFrame per grouping factor (levels x columns of all its terms)."""
    frames: dict[str, pd.DataFrame] = {}
    for term, values in zip(terms, per_term):
        frame = pd.DataFrame(values, index=term.factor.levels, columns=term.columns)
        frame.index.name = term.name
        frames[term.name] = frames[term.name].join(frame) if term.name in frames else frame
    return frames


def _as_frame(data: Any) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, dict):
        return pd.DataFrame(data)
    raise DataError(f"data must be a pandas DataFrame (or a dict of columns), got {type(data).__name__}")


def _factor_levels(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Codes and labels of one categorical column; numbers sort numerically, strings alphabetically."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categorical = column.cat.remove_unused_categories()
        codes = np.asarray(categorical.cat.codes, dtype=np.int64)
        return codes, pd.Index(np.asarray(categorical.cat.categories).astype(str))
    try:
        levels, codes = np.unique(column.to_numpy(), return_inverse=True)
    except TypeError:
        raise DataError(f"grouping column {column.name!r} mixes types that cannot be ordered; convert it to str") from None
    return codes.astype(np.int64).ravel(), pd.Index(levels.astype(str))


def make_grouping_factor(data: pd.DataFrame, names: tuple[str, ...], label: str) -> GroupingFactor:
    """Build the grouping factor for ``a`` or an interaction ``a:b`` (observed combinations only).

    Levels of an interaction are ordered by the first factor's level, then the second's, as R's ``a:b``.
    """
    codes, labels = _factor_levels(data[names[0]])
    for name in names[1:]:
        more_codes, more_labels = _factor_levels(data[name])
        combined = codes * len(more_labels) + more_codes
        observed, codes = np.unique(combined, return_inverse=True)
        first = labels.to_numpy(dtype=str)[observed // len(more_labels)]
        second = more_labels.to_numpy(dtype=str)[observed % len(more_labels)]
        labels = pd.Index(np.char.add(np.char.add(first, ":"), second))
    return GroupingFactor(name=label, codes=codes.astype(np.int64), levels=labels)


def _mentions(text: str, column: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(column)}(?![\w.])", text) is not None


def quote_columns(text: str, columns) -> str:
    """Backtick the data columns whose names formulaic would misread (R's dotted names such as Sepal.Length)."""
    for column in sorted((c for c in columns if isinstance(c, str) and not c.isidentifier()), key=len, reverse=True):
        text = re.sub(rf"(?<![\w.`]){re.escape(column)}(?![\w.`])", f"`{column}`", text)
    return text


def _check_columns(parsed: ParsedFormula, data: pd.DataFrame, missing: str) -> pd.DataFrame:
    absent = sorted(name for name in parsed.variables if name not in data.columns)
    if absent:
        raise FormulaError(
            f"formula refers to grouping column(s) {absent} that the data does not have; columns are {list(data.columns)}"
        )
    text = " ".join([parsed.fixed, *[term.expr for term in parsed.random]])
    used = [name for name in data.columns if name in parsed.variables or _mentions(text, str(name))]
    null_counts = pd.Series({name: int(pd.isna(data[name].to_numpy()).sum()) for name in used}, dtype=np.int64)
    null_counts = null_counts[null_counts > 0]
    if len(null_counts):
        detail = ", ".join(f"{name} ({count})" for name, count in null_counts.items())
        if missing == "raise":
            raise DataError(
                f"missing values (NaN/None) in column(s) {detail}; drop them first or pass missing='drop'"
            )
        if missing != "drop":
            raise DataError(f"missing must be 'raise' or 'drop', got {missing!r}")
        keep = ~data[used].isna().any(axis=1)
        warnings.warn(
            f"dropped {int((~keep).sum())} row(s) with missing values in {detail}", TfmixedWarning, stacklevel=3
        )
        data = data.loc[keep]
    return data


def _check_rank(X: np.ndarray, names: list[str]) -> None:
    if X.shape[1] == 0:
        return
    if X.shape[0] < X.shape[1]:
        raise RankDeficientError(f"X has {X.shape[1]} columns but only {X.shape[0]} rows")
    from scipy.linalg import qr

    _, r, perm = qr(X, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    tol = diag[0] * max(X.shape) * np.finfo(float).eps if diag.size else 0.0
    rank = int(np.sum(diag > tol))
    if rank < X.shape[1]:
        dropped = [names[i] for i in perm[rank:]]
        raise RankDeficientError(
            f"the fixed-effects model matrix is rank deficient (rank {rank} < {X.shape[1]} columns); "
            f"column(s) {dropped} are linear combinations of the others; remove them from the formula"
        )


def _evaluate(formula: str, data: pd.DataFrame):
    try:
        return model_matrix(quote_columns(formula, data.columns), data, na_action="ignore")
    except FormulaicError as error:
        unknown = re.search(r"`([^`]+)` is not present", str(error))
        if unknown:
            raise FormulaError(
                f"formula {formula!r} refers to {unknown.group(1)!r}, which the data does not have; "
                f"columns are {list(data.columns)}"
            ) from None
        raise FormulaError(f"cannot evaluate {formula!r}: {error}") from None


def build_design(formula: str | ParsedFormula, data: Any, *, missing: str = "raise") -> Design:
    """Build X, y and the random-effects terms for an lme4 ``formula`` on ``data``.

    Validates what a user can get wrong: unknown columns, missing values, a non-numeric response,
    grouping factors with a single level or as many levels as observations, and rank-deficient X.

    >>> from tfmixed import datasets
    >>> d = build_design("diameter ~ 1 + (1 | plate) + (1 | sample)", datasets.load("Penicillin"))
    >>> [(t.name, t.n_levels) for t in d.terms]
    [('plate', 24), ('sample', 6)]
    """
    parsed = parse_formula(formula) if isinstance(formula, str) else formula
    frame = _check_columns(parsed, _as_frame(data), missing)
    if len(frame) == 0:
        raise DataError("data has no rows")

    matrices = _evaluate(parsed.fixed, frame)
    # Random terms often repeat the fixed right-hand side ((1 + Days | Subject) beside 1 + Days): reuse it.
    evaluated = {parsed.fixed_rhs.replace(" ", ""): matrices.rhs}
    lhs = matrices.lhs
    if lhs.shape[1] != 1:
        raise DataError(f"response {parsed.response!r} must be one numeric column, got columns {list(lhs.columns)}")
    response = frame[parsed.response] if parsed.response in frame.columns else None
    if response is not None and not pd.api.types.is_numeric_dtype(response.dtype):
        raise DataError(f"response {parsed.response!r} must be numeric, got dtype {response.dtype}")
    y = np.asarray(lhs, dtype=np.float64).ravel()
    if not np.all(np.isfinite(y)):
        raise DataError(f"response {parsed.response!r} has non-finite values")
    X = np.asarray(matrices.rhs, dtype=np.float64)
    if not np.all(np.isfinite(X)):
        raise DataError("the fixed-effects model matrix has non-finite values (check for inf in the covariates)")
    fixed_names = [_lme4_name(c) for c in matrices.rhs.columns]
    _check_rank(X, fixed_names)

    terms: list[RandomTerm] = []
    for spec in parsed.random:
        factor = make_grouping_factor(frame, spec.group, spec.name)
        if factor.n_levels < 2:
            raise DataError(f"grouping factor {spec.name!r} has only {factor.n_levels} level; it needs at least 2")
        if factor.n_levels >= len(frame):
            raise DataError(
                f"grouping factor {spec.name!r} has {factor.n_levels} levels for {len(frame)} observations; "
                "its random effects would be confounded with the residual"
            )
        key = spec.expr.replace(" ", "")
        if key not in evaluated:
            evaluated[key] = _evaluate(spec.expr, frame)
        expr_matrix = evaluated[key]
        values = np.asarray(expr_matrix, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] == 0:
            raise FormulaError(f"random term ({spec.expr} | {spec.name}) has no columns")
        columns = [_lme4_name(c) for c in expr_matrix.columns]
        pieces = [[i] for i in range(len(columns))] if spec.split_columns else [list(range(len(columns)))]
        for piece in pieces:
            terms.append(
                RandomTerm(
                    spec=spec,
                    factor=factor,
                    columns=[columns[i] for i in piece],
                    values=np.ascontiguousarray(values[:, piece]),
                    expr_spec=(expr_matrix.model_spec, piece),
                )
            )
    # lme4 orders terms by decreasing number of levels; sorted() is stable for ties.
    terms = sorted(terms, key=lambda term: -term.n_levels)
    return Design(
        formula=formula if isinstance(formula, str) else parsed.fixed,
        parsed=parsed,
        X=np.ascontiguousarray(X),
        y=y,
        fixed_names=fixed_names,
        terms=terms,
        fixed_spec=matrices.rhs.model_spec,
        row_index=frame.index,
    )
