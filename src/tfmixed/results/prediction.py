"""Predictions of a fit on the training data or new data, with lme4's semantics."""

from __future__ import annotations

from typing import Any

import re

import numpy as np
import pandas as pd
from formulaic.errors import FormulaicError

from ..design import R_FUNCTIONS, as_frame, grouping_codes, offset_values
from ..errors import DataError, NewLevelError
from ..levels import encode_levels


class Prediction:
    """Mixed into :class:`~tfmixed.results.LmerFit`."""

    def predict(self, newdata: Any = None, *, re_form: str | None = None, allow_new_levels: bool = False) -> np.ndarray:
        """Predictions X beta + Z b + offset for ``newdata`` (the training data when None), as lme4's ``predict``.

        ``re_form=None`` includes all random effects, ``re_form="fixed"`` (lme4's ``NA`` or ``~0``) none.
        Levels are matched by value; levels not seen in training raise :class:`NewLevelError` unless
        ``allow_new_levels=True``, in which case their random effects are 0. Offsets in the formula are
        evaluated on ``newdata``; an ``offset=`` argument of the fit cannot be, so it is refused.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> new = {"Days": [0, 1], "Subject": [308, 999]}
        >>> fit.predict(new, allow_new_levels=True).round(2).tolist()
        [253.66, 261.87]
        """
        return self.linear_predictor(newdata, re_form=re_form, allow_new_levels=allow_new_levels)

    def linear_predictor(self, newdata: Any = None, *, re_form: str | None = None,
                         allow_new_levels: bool = False) -> np.ndarray:
        """X beta + Z b + offset on ``newdata`` (the training data when None); arguments as :meth:`predict`."""
        if re_form not in (None, "fixed", "~0", "NA"):
            raise DataError(f"re_form must be None or 'fixed', got {re_form!r}")
        if newdata is None:
            if re_form is None:
                return self.design.fitted(self._beta, self._b)
            return self.design.X @ self._beta + self.design.offset_or_zero
        frame = as_frame(newdata)
        prediction = self._fixed_prediction(frame)
        if re_form is not None:
            return prediction
        missing = sorted({name for term in self.design.terms for name in term.spec.group} - set(frame.columns))
        if missing:
            raise DataError(f"newdata lacks grouping column(s) {missing}")
        for term, s in zip(self.design.terms, self.design.term_slices):
            rows = self._level_rows(frame, term, allow_new_levels)
            spec, piece = term.expr_spec
            values = np.asarray(spec.get_model_matrix(frame, context=R_FUNCTIONS), dtype=np.float64)[:, piece]
            if not np.all(np.isfinite(values)):
                raise DataError(f"newdata gives non-finite covariates (NaN or inf) for the random term of {term.name!r}")
            effects = self._b[s].reshape(term.n_levels, term.n_cols)
            known = rows < term.n_levels
            prediction[known] += np.sum(values[known] * effects[rows[known]], axis=1)
        return prediction

    def _fixed_prediction(self, frame) -> np.ndarray:
        spec = self.design.fixed_spec
        self._check_new_categories(frame, spec)
        try:
            X = np.asarray(spec.get_model_matrix(frame, na_action="raise", context=R_FUNCTIONS), dtype=np.float64)
        except (FormulaicError, ValueError, KeyError) as error:
            if "null" in str(error).lower() or "nan" in str(error).lower():
                raise DataError(f"newdata has missing values in a column the fixed effects use: {error}") from None
            raise DataError(f"cannot build the fixed-effects matrix for newdata: {error}") from None
        if self.design.kept_columns is not None:
            X = X[:, self.design.kept_columns]
        if not np.all(np.isfinite(X)):
            rows = np.flatnonzero(~np.all(np.isfinite(X), axis=1))[:5].tolist()
            raise DataError(f"newdata gives non-finite fixed-effect covariates (NaN or inf) in row(s) {rows}")
        prediction = X @ self._beta
        if self.design.offset is not None:
            formula_offset = offset_values(self.design.parsed, frame)
            if formula_offset is None or not self.design.parsed.offsets:
                raise DataError("the fit has an offset= argument, which newdata cannot supply; put it in the "
                                "formula as offset(column) to predict on new data")
            prediction += formula_offset
        return prediction

    @staticmethod
    def _check_new_categories(frame, spec) -> None:
        """A fixed-effect factor level not seen in training has no coefficient: refuse it (formulaic would code
        it as the reference level, silently)."""
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
                raise DataError(f"newdata has level(s) {list(pd.unique(unseen))[:5]} of the fixed-effect factor "
                                f"{column!r} that training did not have (levels {list(known)[:10]})")

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
