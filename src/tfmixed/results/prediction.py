"""Predictions of a fit on the training data or new data, with lme4's semantics."""

from __future__ import annotations

import dataclasses
import re
import sys
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from formulaic.errors import FormulaicError
from scipy import stats

from ..design import as_frame
from ..model_spec import R_FUNCTIONS, grouping_codes, offset_values
from ..errors import DataError, FormulaError, NewLevelError
from ..formula import parse_formula
from ..kernels.joint_system import JointSystem
from ..levels import encode_levels
from .base import FitBase


_NO_RANDOM = ("fixed", "~0", "~ 0", "NA")
INTERVALS = ("confidence", "prediction")
TABLE_COLUMNS = ("fit", "se_fit", "lower", "upper")


def is_dask_frame(data) -> bool:
    dataframe = sys.modules.get("dask.dataframe")
    return dataframe is not None and isinstance(data, dataframe.DataFrame)


def _predict_partition(frame: pd.DataFrame, predictor, method: str, options: dict, transform):
    result = getattr(predictor, method)(frame, **options)
    if transform is not None:
        result = transform(result)
    return result.set_axis(frame.index) if isinstance(result, pd.DataFrame) else pd.Series(result, index=frame.index)


def on_partitions(fit, frame, method: str, options: dict, meta, transform=None):
    """``method(partition, **options)`` of the fit's :class:`Predictor` on each partition of a Dask frame (then
    ``transform``, such as a GLMM's inverse link), as a Dask collection."""
    return frame.map_partitions(_predict_partition, Predictor(fit), method, options, transform, meta=meta)


class Prediction(FitBase):
    """Mixed into :class:`~tfmixed.results.LmerFit`."""

    def predict(self, newdata: Any = None, *, re_form: str | None = None, allow_new_levels: bool = False,
                interval: str | None = None, level: float = 0.95, se_fit: bool = False):
        """Predictions X beta + Z b + offset for ``newdata`` (the training data when None), as lme4's ``predict``,
        with standard errors and intervals that lme4 lacks.

        ``re_form=None`` includes all random effects, ``re_form="fixed"`` (lme4's ``NA`` or ``~0``) none, and a
        formula such as ``"~ (1 | sample)"`` only the terms it lists. Levels are matched by value; levels not
        seen in training raise :class:`NewLevelError` unless ``allow_new_levels=True``, in which case their random
        effects are 0. Offsets in the formula are evaluated on ``newdata``; an ``offset=`` argument of the fit
        cannot be, so it is refused.

        The result is a pandas Series with the index of ``newdata`` (of the model's rows when None); with
        ``se_fit=True`` or ``interval`` a DataFrame (fit, se_fit, lower, upper) on that index. For the
        predicted mean, Var = sigma^2 a'A^{-1}a with a = [Lambda'z; x] and A the mixed-model equations
        (Henderson's prediction-error variance: beta's uncertainty and that of the conditional modes, given
        theta). ``interval="confidence"`` covers the predicted quantity x'beta + z'b over the terms it
        conditions on; ``"prediction"`` covers a new observation and adds sigma^2 plus z'G z for every term it
        does not condition on (excluded by ``re_form`` or a new level). Normal quantiles at ``level``.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> new = {"Days": [0, 1], "Subject": [308, 999]}
        >>> fit.predict(new, allow_new_levels=True).round(2).tolist()
        [253.66, 261.87]
        >>> fit.predict(new, allow_new_levels=True, interval="prediction").round(1).to_dict("list")["upper"]
        [309.3, 334.3]
        """
        if interval not in (None, *INTERVALS):
            raise DataError(f"interval must be None, 'confidence' or 'prediction', got {interval!r}")
        if not 0 < level < 1:
            raise DataError(f"level must be between 0 and 1, got {level!r}")
        if interval == "prediction" and not self.has_residual:
            raise DataError("prediction intervals of a new observation are for lmer fits; a GLMM's intervals are for "
                            "its mean (interval='confidence')")
        newdata = self._default_rows(newdata)
        if is_dask_frame(newdata):
            columns = TABLE_COLUMNS if interval else TABLE_COLUMNS[:2]
            meta = pd.DataFrame({c: pd.Series(dtype=float) for c in columns}) if interval or se_fit \
                else pd.Series([], dtype=float)
            return on_partitions(self, newdata, "predict", dict(re_form=re_form, allow_new_levels=allow_new_levels,
                                                                interval=interval, level=level, se_fit=se_fit), meta)
        labels = self._row_labels(newdata)
        if interval is None and not se_fit:
            return pd.Series(self.linear_predictor(newdata, re_form=re_form, allow_new_levels=allow_new_levels),
                             index=labels, name="fit")
        X, rows, fit = self._prediction_rows(newdata, re_form, allow_new_levels)
        variance = self._prediction_variance(X, rows)
        frame = pd.DataFrame({"fit": fit, "se_fit": np.sqrt(variance[0])}, index=labels)
        if interval is not None:
            if interval == "prediction" and not np.all(np.isfinite(variance[1])):
                raise DataError("a prediction interval needs the covariates of every random term in newdata, also "
                                "of the terms re_form leaves out (their variance is part of a new observation's)")
            spread = variance[0] + (variance[1] + self._sigma2 if interval == "prediction" else 0.0)
            half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(spread)
            frame["lower"], frame["upper"] = fit - half, fit + half
        return frame

    def linear_predictor(self, newdata: Any = None, *, re_form: str | None = None,
                         allow_new_levels: bool = False) -> np.ndarray:
        """X beta + Z b + offset on ``newdata`` (the training data when None); arguments as :meth:`predict`.
        A Dask frame gives a Dask series, computed partition by partition."""
        newdata = self._default_rows(newdata)
        if is_dask_frame(newdata):
            return on_partitions(self, newdata, "linear_predictor",
                                 dict(re_form=re_form, allow_new_levels=allow_new_levels), pd.Series([], dtype=float))
        return self._prediction_rows(newdata, re_form, allow_new_levels)[2]

    def _row_labels(self, newdata) -> pd.Index:
        """The index a prediction carries: the training rows' (after any dropped for missing values), a pandas
        ``newdata``'s own, else positions."""
        if newdata is None:
            index = self.design.row_index
            return pd.RangeIndex(self.nobs) if index is None else index
        if isinstance(newdata, pd.DataFrame):
            return newdata.index
        return pd.RangeIndex(len(as_frame(newdata)))

    def _default_rows(self, newdata):
        """A fit to partitioned data predicts on its own Dask frame when no newdata is given."""
        return self.design.dask_frame if newdata is None and not self.design.in_memory else newdata

    def _included_terms(self, re_form) -> list[bool]:
        """Which random-effects terms a prediction conditions on."""
        terms = self.design.terms
        if re_form is None:
            return [True] * len(terms)
        if not isinstance(re_form, str):
            raise DataError(f"re_form must be None, 'fixed' or a formula such as '~ (1 | g)', got {re_form!r}")
        if re_form.replace(" ", "") in {f.replace(" ", "") for f in _NO_RANDOM}:
            return [False] * len(terms)
        text = re_form.strip()
        try:
            specs = parse_formula(".y " + (text if text.startswith("~") else "~ " + text)).random
        except FormulaError as error:
            raise DataError(f"re_form {re_form!r} is not a formula of random terms: {error}") from None
        if not specs:
            raise DataError(f"re_form {re_form!r} lists no random term such as (1 | g); use re_form='fixed' for none")
        key = lambda spec: (spec.expr.replace(" ", ""), spec.group, spec.split_columns, spec.structure)
        wanted = {key(spec) for spec in specs}
        known = {key(term.spec) for term in terms}
        unknown = [spec.name for spec in specs if key(spec) not in known]
        if unknown:
            raise DataError(f"re_form {re_form!r} has term(s) for {unknown} that are not random terms of the model "
                            f"{self.formula!r}")
        return [key(term.spec) in wanted for term in terms]

    def _prediction_rows(self, newdata, re_form, allow_new_levels):
        """(X, per term (codes with n_levels for new levels or excluded terms, covariate values, included), the
        linear predictor) for ``newdata`` or the training rows."""
        included = self._included_terms(re_form)
        if newdata is None:
            X, offset = self.design.X, self.design.offset_or_zero
            rows = [(t.codes if inc else np.full(t.nobs, t.n_levels), t.values, inc)
                    for t, inc in zip(self.design.terms, included)]
        else:
            frame = as_frame(newdata)
            X, offset = self._fixed_rows(frame)
            rows = [self._term_rows(frame, term, inc, allow_new_levels) for term, inc in zip(self.design.terms, included)]
        prediction = X @ self._beta + offset
        for (codes, values, inc), term, s in zip(rows, self.design.terms, self.design.term_slices):
            if inc:
                effects = self._b[s].reshape(term.n_levels, term.n_cols)
                known = codes < term.n_levels
                prediction[known] += np.sum(values[known] * effects[codes[known]], axis=1)
        return X, rows, prediction

    def _term_rows(self, frame, term, included: bool, allow_new_levels: bool):
        spec, piece = term.expr_spec
        # a factor level of the term's own expression (ar1(0 + factor(t) | g) at a new t) has no column: refuse it
        self._check_new_categories(frame, spec, f"the random term of {term.name!r}")
        try:
            values = np.asarray(spec.get_model_matrix(frame, context=R_FUNCTIONS), dtype=np.float64)[:, piece]
        except (FormulaicError, ValueError, KeyError) as error:
            if not included:  # only a prediction interval needs them: NaN says they are unknown
                return np.full(len(frame), term.n_levels), np.full((len(frame), term.n_cols), np.nan), False
            raise DataError(f"cannot evaluate the random term of {term.name!r} on newdata: {error}") from None
        if not included:
            return np.full(len(frame), term.n_levels), values, False
        if not np.all(np.isfinite(values)):
            raise DataError(f"newdata gives non-finite covariates (NaN or inf) for the random term of {term.name!r}")
        missing = sorted(set(term.spec.group) - set(frame.columns))
        if missing:
            raise DataError(f"newdata lacks grouping column(s) {missing}")
        return self._level_rows(frame, term, allow_new_levels), values, True

    def _prediction_variance(self, X, rows) -> tuple[np.ndarray, np.ndarray]:
        """(Var of the predicted mean, z'G z of the effects the prediction does not condition on) per row."""
        n, offsets = X.shape[0], np.cumsum([0] + [term.q for term in self.design.terms])
        cols, vals, row_ids, unconditioned = [], [], [], np.zeros(n)
        for (codes, values, _), term, T, start in zip(rows, self.design.terms, self.factors, offsets):
            known = codes < term.n_levels
            spherical = values[known] @ T  # Lambda'z: (T' z) per row
            k = term.n_cols
            cols.append((start + codes[known][:, None] * k + np.arange(k)[None, :]).ravel())
            vals.append(spherical.ravel())
            row_ids.append(np.repeat(np.flatnonzero(known), k))
            unconditioned[~known] += self._sigma2 * np.sum((values[~known] @ T) ** 2, axis=1)
        q = int(offsets[-1])
        cols.append(q + np.tile(np.arange(X.shape[1]), n))
        vals.append(X.ravel())
        row_ids.append(np.repeat(np.arange(n), X.shape[1]))
        a = sp.csr_matrix((np.concatenate(vals), (np.concatenate(row_ids), np.concatenate(cols))),
                          shape=(n, q + X.shape[1]))
        return self._sigma2 * self._joint_system.quadratic_forms(a), unconditioned

    @cached_property
    def _joint_system(self) -> JointSystem:
        return JointSystem(self._prediction_cross_products, self.factors)

    @property
    def _prediction_cross_products(self):
        return self.problem.cross_products

    def _fixed_rows(self, frame) -> tuple[np.ndarray, np.ndarray]:
        """(X, offset) of ``newdata``."""
        spec = self.design.require_spec()
        self._check_new_categories(frame, spec.fixed_spec)
        try:
            X = spec.fixed_matrix(frame, na_action="raise")
        except (FormulaicError, ValueError, KeyError) as error:
            if "null" in str(error).lower() or "nan" in str(error).lower():
                raise DataError(f"newdata has missing values in a column the fixed effects use: {error}") from None
            raise DataError(f"cannot build the fixed-effects matrix for newdata: {error}") from None
        if not np.all(np.isfinite(X)):
            rows = np.flatnonzero(~np.all(np.isfinite(X), axis=1))[:5].tolist()
            raise DataError(f"newdata gives non-finite fixed-effect covariates (NaN or inf) in row(s) {rows}")
        offset = np.zeros(X.shape[0])
        if self.design.has_offset:
            formula_offset = offset_values(spec.parsed, frame)
            if formula_offset is None or not spec.parsed.offsets:
                raise DataError("the fit has an offset= argument, which newdata cannot supply; put it in the "
                                "formula as offset(column) to predict on new data")
            offset += formula_offset
        return X, offset

    @staticmethod
    def _check_new_categories(frame, spec, what: str = "the fixed effects") -> None:
        """A factor level not seen in training has no coefficient (or random-effect column): refuse it
        (formulaic would code it as the reference level, or all zeros, silently)."""
        for expression, (kind, state) in spec.encoder_state.items():
            if getattr(kind, "value", kind) != "categorical":
                continue
            match = re.fullmatch(r"(?:C\()?`?([^`(),]+)`?\)?", expression)
            column = match.group(1) if match else None
            if column not in frame.columns:
                continue
            known = pd.Index(state["categories"])
            values = frame[column]
            codes = known.get_indexer(values.astype(known.dtype) if known.dtype != object else values)
            unseen = values[(codes < 0) & values.notna().to_numpy()]
            if len(unseen):
                raise DataError(f"newdata has level(s) {list(pd.unique(unseen))[:5]} of the factor {column!r} in "
                                f"{what} that training did not have (levels {list(known)[:10]})")

    def _level_rows(self, frame, term, allow_new_levels: bool) -> np.ndarray:
        """Each row's level index in the training levels (n_levels for an unseen level)."""
        if len(term.spec.group) == 1:
            codes, _ = encode_levels(frame[term.spec.group[0]], term.levels, unseen="new", name=term.name)
        else:
            new_codes, new_levels = grouping_codes(frame, term.spec.group)
            position = term.levels.get_indexer(new_levels)
            codes = np.where(position[new_codes] >= 0, position[new_codes], term.n_levels)
        if np.any(codes == term.n_levels) and not allow_new_levels:
            column = frame[term.spec.group[0]] if len(term.spec.group) == 1 else None
            examples = list(column[codes == term.n_levels].unique()[:5]) if column is not None else []
            raise NewLevelError(
                f"newdata has level(s) {examples} of {term.name!r} not seen in training; pass allow_new_levels=True"
            )
        return codes


def _rowless(design):
    """The design without its rows: what predicting on new data reads (specs, levels, names), light to ship."""
    if not design.in_memory:
        return design  # a partitioned design pickles without its Dask frame
    return dataclasses.replace(
        design, X=np.zeros((0, design.n_fixed)), y=np.zeros(0), terms=[t.rows(slice(0, 0)) for t in design.terms],
        weights=None, offset=None if design.offset is None else np.zeros(0), frame=None, row_index=None)


class Predictor(Prediction):
    """The part of a fit that predicts, without its rows or kernel factorisations (picklable): what Dask workers
    receive to predict on their partitions."""

    def __init__(self, fit):
        self.design, self.formula, self.has_residual = _rowless(fit.design), fit.formula, fit.has_residual
        self._beta, self._b, self.factors, self._sigma2 = fit.fixef.to_numpy(), fit.b, fit.factors, fit.sigma**2
        self._cross_products = fit.problem.cross_products if fit.has_residual else None

    @property
    def _prediction_cross_products(self):
        return self._cross_products

    def __dask_tokenize__(self):
        return ("Predictor", self.formula, self._beta.tobytes(), self._b.tobytes(), self._sigma2)
