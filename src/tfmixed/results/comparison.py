"""Likelihood-ratio tests between nested models: lme4's ``anova(m0, m1, ...)``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DataError
from ..refit import refit as refit_fit
from .base import FitBase


@dataclass
class LikelihoodRatioTable:
    """lme4's model-comparison table: one row per model, by increasing number of parameters.

    ``table`` has npar, AIC, BIC, logLik, deviance, Chisq, Df and Pr(>Chisq) (NaN on the first row);
    ``formulas`` names the models (rows ``m0``, ``m1``, ... in that order); ``notes`` says what was refitted.
    """

    table: pd.DataFrame
    formulas: list[str]
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key):
        """The table's columns, as R's ``anova(m0, m1)$Chisq`` (``tab["Chisq"]``)."""
        return self.table[key]

    @property
    def loc(self):
        return self.table.loc

    def __str__(self) -> str:
        lines = ["Models:"] + [f"{name}: {formula}" for name, formula in zip(self.table.index, self.formulas)]
        shown = self.table.copy()
        lines.append(shown.to_string(float_format=lambda v: f"{v:.6g}", na_rep=""))
        return "\n".join(self.notes + lines)

    __repr__ = __str__


def _check_comparable(fits) -> None:
    strangers = [type(fit).__name__ for fit in fits if not isinstance(fit, FitBase)]
    if strangers:
        raise DataError(f"anova compares fits of tfmixed.lmer or tfmixed.glmer, got {strangers}")
    first = fits[0]
    for other in fits[1:]:
        if type(other) is not type(first):
            raise DataError(f"cannot compare a {type(first).__name__} with a {type(other).__name__}")
        if not (first.design.in_memory and other.design.in_memory):
            _check_partitioned_comparable(first, other)
            continue
        if other.nobs != first.nobs or not np.array_equal(other.design.y, first.design.y):
            raise DataError("the models were not fitted to the same data (the responses differ): a likelihood-ratio "
                            f"test needs the same observations ({first.nobs} and {other.nobs} rows)")
        same_weights = (first.design.weights is None) == (other.design.weights is None) and (
            first.design.weights is None or np.array_equal(first.design.weights, other.design.weights))
        if not same_weights:
            raise DataError("the models have different prior weights: their likelihoods are not comparable")
        if _family_kind(first) != _family_kind(other):
            raise DataError("the models have different families: their likelihoods are not comparable")


def _family_kind(fit) -> tuple:
    """A fit's family and link, without its estimated parameters (two negative binomial fits with different
    sizes are comparable); fits of linear models have none."""
    family = fit.family
    if family is None:
        return ()
    fixed = tuple(zip(family.parameter_names, family.estimated, np.where(family.estimated, np.nan, family.parameters)))
    return type(family).__name__, family.link.name, repr(fixed)


def _check_partitioned_comparable(first, other) -> None:
    """Partitioned data are compared by what their reductions kept: row count, variance of y - offset, weights."""
    same = (first.nobs == other.nobs and first.design.spec.weights == other.design.spec.weights
            and np.isclose(first.design.response_variance, other.design.response_variance, rtol=1e-12, atol=0))
    if not same:
        raise DataError("the models were not fitted to the same data (row counts, weights or the response's variance "
                        f"differ: {first.nobs} and {other.nobs} rows)")


def _check_nested_fixed(small, big) -> None:
    """The column space of the smaller model's X must lie inside the larger one's (for partitioned data, whose
    rows are not here: its coefficient names among the larger one's)."""
    if not (small.design.in_memory and big.design.in_memory):
        missing = sorted(set(small.design.fixed_names) - set(big.design.fixed_names))
        if missing:
            raise DataError(f"the models are not nested in their fixed effects: {missing} of {small.formula!r} are not "
                            f"fixed effects of {big.formula!r}")
        return
    X_small, X_big = small.design.X, big.design.X
    if X_small.shape[1] == 0:
        return
    coefficients, *_ = np.linalg.lstsq(X_big, X_small, rcond=None)
    residual = np.linalg.norm(X_small - X_big @ coefficients, axis=0)
    scale = np.maximum(np.linalg.norm(X_small, axis=0), 1e-300)
    if np.any(residual > 1e-8 * scale):
        names = [small.design.fixed_names[j] for j in np.flatnonzero(residual > 1e-8 * scale)]
        raise DataError(f"the models are not nested in their fixed effects: {names} of {small.formula!r} are not in "
                        f"the span of {big.formula!r}'s fixed effects")


def anova(*fits, refit: bool = True, **named) -> LikelihoodRatioTable:
    """Likelihood-ratio tests of nested mixed models, as lme4's ``anova(m0, m1, ...)``.

    Chisq_i = deviance_{i-1} - deviance_i (= 2 (logLik_i - logLik_{i-1})) on Df_i = npar_i - npar_{i-1}
    degrees of freedom, models ordered by npar. REML fits are refitted by ML first (lme4's ``refit = TRUE``,
    with its note), since REML criteria of models with different fixed effects are not comparable. Fits passed
    by keyword (``anova(null=m0, slope=m1)``) name the table's rows, as R names them after the arguments;
    positional ones are ``m0``, ``m1``, ... The table is subscriptable (``anova(m0, m1)["Chisq"]``).

    >>> import tfmixed as tm
    >>> data = tm.datasets.load("sleepstudy")
    >>> m0 = tm.lmer("Reaction ~ Days + (1 | Subject)", data, verbose=False)
    >>> m1 = tm.lmer("Reaction ~ Days + (Days | Subject)", data, verbose=False)
    >>> round(float(anova(m0, m1).table["Chisq"].iloc[1]), 4)
    42.1393
    """
    given = [None] * len(fits) + list(named)  # positional fits are named m0, m1, ... in the table's order
    fits = (*fits, *named.values())
    if len(fits) < 2:
        raise DataError("anova needs at least two fitted models to compare")
    _check_comparable(fits)
    notes = []
    if refit and any(fit.reml for fit in fits):
        fits = tuple(refit_fit(fit, reml=False) if fit.reml else fit for fit in fits)
        notes.append("refitting model(s) with ML (instead of REML)")
    elif any(fit.reml for fit in fits):
        if len({tuple(fit.design.fixed_names) for fit in fits}) > 1:
            raise DataError("REML criteria of models with different fixed effects are not comparable: use refit=True")
        if not all(fit.reml for fit in fits):
            raise DataError("cannot compare REML and ML criteria: use refit=True")
    order = sorted(range(len(fits)), key=lambda i: fits[i].n_params)
    ordered = [fits[i] for i in order]
    for small, big in zip(ordered[:-1], ordered[1:]):
        _check_nested_fixed(small, big)
    npar = np.array([fit.n_params for fit in ordered], dtype=np.int64)
    loglik = np.array([fit.loglik for fit in ordered])
    deviance = -2.0 * loglik
    chisq = np.concatenate([[np.nan], deviance[:-1] - deviance[1:]])
    df = np.concatenate([[np.nan], np.diff(npar).astype(np.float64)])
    with np.errstate(invalid="ignore"):
        p_values = np.where(df > 0, stats.chi2.sf(np.maximum(chisq, 0.0), np.where(df > 0, df, 1)), np.nan)
    table = pd.DataFrame({
        "npar": npar,
        "AIC": [fit.aic for fit in ordered],
        "BIC": [fit.bic for fit in ordered],
        "logLik": loglik,
        "deviance": deviance,
        "Chisq": chisq,
        "Df": df,
        "Pr(>Chisq)": p_values,
    }, index=[given[i] or f"m{row}" for row, i in enumerate(order)])
    return LikelihoodRatioTable(table, [fit.formula for fit in ordered], notes)
