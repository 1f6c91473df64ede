"""Bad and unusual inputs, table-driven: each case names the exact tfmixed error or warning class and a fragment of
its message, or checks the number against an equivalent well-formed fit (issue 9)."""

import warnings

import numpy as np
import pandas as pd
import pytest

import tfmixed as tm
from tfmixed import (
    ConvergenceWarning, CovarianceCollapseWarning, DataError, FormulaError, MemoryLimitError, NewLevelError,
    NotFittedError, RankDeficiencyWarning, RankDeficientError, ShapeError, SingularCovarianceError, SingularFitWarning,
    TfmixedError, TfmixedWarning,
)

SLEEP = tm.datasets.load("sleepstudy")
SLEEP_W = SLEEP.assign(w=1 + (SLEEP.Days % 3) / 2, off=2.0 * SLEEP.Days, D2=SLEEP.Days * 2, Days2=SLEEP.Days**2)
F = "Reaction ~ Days + (Days | Subject)"
F1 = "Reaction ~ Days + (1 | Subject)"
G = [[612.1, 9.6], [9.6, 35.07]]


def lmer(formula=F, data=SLEEP, **options):
    options.setdefault("verbose", False)
    return tm.lmer(formula, data, **options)


def with_row(data, **values):
    frame = data.copy()
    for column, value in values.items():
        frame[column] = frame[column].astype(object if isinstance(value, str) else float)
        frame.loc[frame.index[0], column] = value
    return frame


_FITS = {}


def fit(formula=F, **options):
    key = (formula, tuple(sorted((name, id(value) if isinstance(value, pd.DataFrame) else value)
                                 for name, value in options.items())))
    if key not in _FITS:
        _FITS[key] = lmer(formula, **options)
    return _FITS[key]


def module():
    return tm.MixedModule.from_formula(F, SLEEP)


def effects_layer():
    from tfmixed.keras import RandomEffects

    return RandomEffects({"c": 3})


def empirical_bayes(*args, **kwargs):
    from tfmixed.keras import EmpiricalBayes

    return EmpiricalBayes(*args, **kwargs)


def encode(*args, **kwargs):
    from tfmixed.keras import encode_levels

    return encode_levels(*args, **kwargs)


# (case id, thunk, error class, message fragment)
RAISES = [
    # --- lmer: formulas ---------------------------------------------------------------------------------------
    ("empty formula", lambda: lmer(""), FormulaError, "~"),
    ("no tilde", lambda: lmer("Reaction"), FormulaError, "exactly one '~'"),
    ("two tildes", lambda: lmer("Reaction ~ Days ~ x + (1 | Subject)"), FormulaError, "exactly one '~'"),
    ("no response", lambda: lmer("~ Days + (1 | Subject)"), FormulaError, "no response"),
    ("no right side", lambda: lmer("Reaction ~ "), FormulaError, "no right-hand side"),
    ("unbalanced open", lambda: lmer("Reaction ~ Days + (1 | Subject"), FormulaError, "unbalanced"),
    ("unbalanced close", lambda: lmer("Reaction ~ Days + 1 | Subject)"), FormulaError, "unbalanced"),
    ("bar outside parentheses", lambda: lmer("Reaction ~ Days + 1 | Subject"), FormulaError, "parentheses"),
    ("empty random expression", lambda: lmer("Reaction ~ Days + ( | Subject)"), FormulaError, "nothing left of the bar"),
    ("empty grouping", lambda: lmer("Reaction ~ Days + (1 | )"), FormulaError, "empty grouping"),
    ("two bars", lambda: lmer("Reaction ~ Days + (1 | Subject | Days)"), FormulaError, "exactly one '|'"),
    ("two double bars", lambda: lmer("Reaction ~ Days + (1 || Subject || Days)"), FormulaError, "more than one '||'"),
    ("unknown fixed column", lambda: lmer("Reaction ~ nope + (1 | Subject)"), FormulaError, "'nope'"),
    ("unknown grouping column", lambda: lmer("Reaction ~ Days + (1 | nope)"), FormulaError, "nope"),
    ("unknown response", lambda: lmer("nope ~ Days + (1 | Subject)"), FormulaError, "'nope'"),
    ("unknown random covariate", lambda: lmer("Reaction ~ Days + (nope | Subject)"), FormulaError, "'nope'"),
    ("unknown column in interaction grouping", lambda: lmer("Reaction ~ Days + (1 | Subject:nope)"), FormulaError, "nope"),
    ("grouping not a name", lambda: lmer("Reaction ~ Days + (1 | 1Subject)"), FormulaError, "column name"),
    ("grouping an expression", lambda: lmer("Reaction ~ Days + (1 | log(Days))"), FormulaError, "column name"),
    ("no random term", lambda: lmer("Reaction ~ Days"), FormulaError, "no random-effects term"),
    ("subtracted random term", lambda: lmer("Reaction ~ Days - (1 | Subject)"), FormulaError, "subtracts a random term"),
    ("empty offset", lambda: lmer("Reaction ~ Days + offset() + (1 | Subject)"), FormulaError, "offset()"),
    ("trailing plus", lambda: lmer("Reaction ~ Days + (1 | Subject) +"), FormulaError, "empty term"),
    ("double plus", lambda: lmer("Reaction ~ Days + + (1 | Subject)"), FormulaError, "empty term"),
    ("formula None", lambda: lmer(None), FormulaError, "must be a string"),
    ("formula number", lambda: lmer(5), FormulaError, "must be a string"),
    ("formula list", lambda: lmer(["Reaction ~ Days"]), FormulaError, "must be a string"),
    ("formula dict", lambda: lmer({"y": 1}), FormulaError, "must be a string"),
    ("bad function", lambda: lmer("Reaction ~ nofunction(Days) + (1 | Subject)"), FormulaError, "nofunction"),
    ("unclosed I()", lambda: lmer("Reaction ~ I(Days + (1 | Subject)"), FormulaError, "unbalanced"),
    # --- lmer: data ----------------------------------------------------------------------------------------------
    ("data list", lambda: lmer(data=[1, 2, 3]), DataError, "data frame"),
    ("data string", lambda: lmer(data="sleepstudy.csv"), DataError, "data frame"),
    ("data None", lambda: lmer(data=None), DataError, "data frame"),
    ("data array", lambda: lmer(data=np.ones((3, 3))), DataError, "data frame"),
    ("dict of unequal columns", lambda: lmer("y ~ 1 + (1 | g)", {"y": [1.0, 2.0, 3.0], "g": ["a", "b"]}), ShapeError, "equal lengths"),
    ("no rows", lambda: lmer(data=SLEEP.iloc[:0]), DataError, "no rows"),
    ("NaN response", lambda: lmer(data=with_row(SLEEP, Reaction=np.nan)), DataError, "missing values"),
    ("NaN covariate", lambda: lmer(data=with_row(SLEEP, Days=np.nan)), DataError, "Days"),
    ("None grouping", lambda: lmer(data=with_row(SLEEP, Subject=None)), DataError, "Subject"),
    ("missing policy", lambda: lmer(missing="bogus"), DataError, "missing must be"),
    ("string response", lambda: lmer(data=SLEEP.assign(Reaction=SLEEP.Reaction.astype(str))), DataError, "numeric"),
    ("inf response", lambda: lmer(data=with_row(SLEEP, Reaction=np.inf)), DataError, "non-finite"),
    ("inf covariate", lambda: lmer(data=with_row(SLEEP, Days=np.inf)), DataError, "non-finite"),
    ("one grouping level", lambda: lmer(data=SLEEP.assign(Subject="a")), DataError, "only 1 level"),
    ("a level per row", lambda: lmer(F1, SLEEP.assign(Subject=np.arange(180))), DataError, "levels for 180 observations"),
    ("random effects as many as rows", lambda: lmer(data=SLEEP[SLEEP.Days < 2]), DataError, "number of observations"),
    ("huge response", lambda: lmer(data=SLEEP.assign(Reaction=SLEEP.Reaction * 1e200)), DataError, "too large"),
    ("huge covariate", lambda: lmer(data=SLEEP.assign(Days=SLEEP.Days * 1e200)), DataError, "too large"),
    ("constant response", lambda: lmer(F1, SLEEP.assign(Reaction=3.0)), TfmixedError, "constant"),
    ("response among covariates", lambda: lmer("Reaction ~ Days + R + (1 | Subject)", SLEEP.assign(R=SLEEP.Reaction)), TfmixedError, "among the covariates"),
    # --- lmer: weights and offsets ---------------------------------------------------------------------------------
    ("negative weights", lambda: lmer(weights=-np.ones(180)), DataError, "non-negative"),
    ("zero weights", lambda: lmer(weights=np.zeros(180)), DataError, "non-negative"),
    ("short weights", lambda: lmer(weights=np.ones(10)), ShapeError, "weights"),
    ("2-D weights", lambda: lmer(weights=np.ones((180, 2))), ShapeError, "weights"),
    ("absent weights column", lambda: lmer(weights="nope"), FormulaError, "nope"),
    ("text weights column", lambda: lmer(data=SLEEP_W.assign(t="a"), weights="t"), DataError, "weights must be numeric"),
    ("NaN weights", lambda: lmer(weights=np.r_[np.nan, np.ones(179)]), DataError, "missing values"),
    ("short offset", lambda: lmer(offset=np.ones(3)), ShapeError, "offset"),
    ("absent offset column", lambda: lmer(offset="nope"), FormulaError, "nope"),
    ("inf offset", lambda: lmer(offset=np.r_[np.inf, np.zeros(179)]), DataError, "offset"),
    ("inf offset in formula", lambda: lmer("Reaction ~ Days + offset(log(Days)) + (1 | Subject)"), DataError, "offset(log(Days))"),
    # --- lmer: options ---------------------------------------------------------------------------------------------
    ("rank deficient, raise", lambda: lmer("Reaction ~ Days + D2 + (1 | Subject)", SLEEP_W, rank_deficient="raise"), RankDeficientError, "D2"),
    ("rank policy", lambda: lmer(rank_deficient="bogus"), DataError, "rank_deficient"),
    ("method", lambda: lmer(method="bogus"), DataError, "method must be"),
    ("G0 with profiled", lambda: lmer(G0=G), DataError, "G0"),
    ("sigma2_0 with profiled", lambda: lmer(sigma2_0=1.0), DataError, "sigma2_0"),
    ("acceleration with profiled", lambda: lmer(acceleration="squarem"), DataError, "acceleration"),
    ("tol with profiled", lambda: lmer(tol=1e-6), DataError, "tol"),
    ("covariance with profiled", lambda: lmer(covariance="full"), DataError, "covariance"),
    ("start with em", lambda: lmer(method="em", start=[1.0, 0.0, 1.0]), DataError, "start"),
    ("covariance with em", lambda: lmer(method="em", covariance="diagonal"), DataError, "covariance"),
    ("covariance with evidence", lambda: lmer(method="evidence", covariance="full"), DataError, "covariance"),
    ("max_iter zero", lambda: lmer(max_iter=0), DataError, "max_iter"),
    ("max_iter negative", lambda: lmer(max_iter=-3), DataError, "max_iter"),
    ("max_iter fractional", lambda: lmer(max_iter=1.5), DataError, "max_iter"),
    ("max_iter zero, em", lambda: lmer(method="em", max_iter=0), DataError, "max_iter"),
    ("start too short", lambda: lmer(start=[1.0]), TfmixedError, "3 theta values"),
    ("start negative", lambda: lmer(start=[-1.0, 0.0, 1.0]), TfmixedError, "negative"),
    ("acceleration unknown", lambda: lmer(method="em", acceleration="bogus"), DataError, "acceleration"),
    ("covariance unknown", lambda: lmer(method="mackay", covariance="bogus"), DataError, "covariance"),
    ("G0 shape", lambda: lmer(method="em", G0=[[1.0]]), ShapeError, "G0"),
    ("G0 not definite", lambda: lmer(method="em", G0=[[1.0, 3.0], [3.0, 1.0]]), SingularCovarianceError, "positive semi-definite"),
    ("sigma2_0 negative", lambda: lmer(method="em", sigma2_0=-1.0), DataError, "sigma2_0"),
    ("memory limit", lambda: lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", tm.datasets.load("Penicillin"),
                                  kernel_options=tm.KernelOptions(memory_bytes=100), backend="exact"), MemoryLimitError, "GiB"),
    ("coupling option", lambda: tm.KernelOptions(coupling="cholmod"), DataError, "coupling"),
    ("rest option", lambda: tm.KernelOptions(rest="cholmod"), DataError, "rest"),
    # --- predict ---------------------------------------------------------------------------------------------------
    ("predict without a fixed column", lambda: fit().predict(pd.DataFrame({"Subject": ["308"]})), DataError, "newdata"),
    ("predict without a grouping column", lambda: fit().predict(pd.DataFrame({"Days": [1.0]})), DataError, "grouping column"),
    ("predict an unseen level", lambda: fit().predict(pd.DataFrame({"Days": [1.0], "Subject": ["999"]})), NewLevelError, "999"),
    ("predict NaN", lambda: fit().predict(pd.DataFrame({"Days": [np.nan], "Subject": ["308"]})), DataError, "missing values"),
    ("predict inf", lambda: fit().predict(pd.DataFrame({"Days": [np.inf], "Subject": ["308"]})), DataError, "non-finite"),
    ("predict -inf", lambda: fit().predict(pd.DataFrame({"Days": [-np.inf], "Subject": ["308"]})), DataError, "non-finite"),
    ("predict an unseen fixed level", lambda: fit("Reaction ~ g + (1 | Subject)", data=SLEEP.assign(g=np.where(SLEEP.Days > 4, "a", "b")))
        .predict(pd.DataFrame({"g": ["z"], "Subject": ["308"]})), DataError, "'z'"),
    ("predict re_form", lambda: fit().predict(SLEEP, re_form="bogus"), DataError, "re_form"),
    ("predict on a list", lambda: fit().predict([1, 2]), DataError, "data frame"),
    ("predict after an offset argument", lambda: fit(offset="off", data=SLEEP_W).predict(SLEEP_W.iloc[:2]), DataError, "offset"),
    ("predict a NaN level", lambda: fit().predict(pd.DataFrame({"Days": [1.0], "Subject": [None]})), DataError, "missing values"),
    # --- LinearRegression ------------------------------------------------------------------------------------------
    ("linear 1-D X", lambda: tm.LinearRegression(1).fit(np.ones(5), np.ones(5)), ShapeError, "2-D"),
    ("linear y length", lambda: tm.LinearRegression(1).fit(np.ones((5, 1)), np.ones(4)), ShapeError, "4 values"),
    ("linear NaN X", lambda: tm.LinearRegression(1).fit(np.array([[np.nan], [1.0]]), np.ones(2)), DataError, "NaN"),
    ("linear NaN y", lambda: tm.LinearRegression(1).fit(np.ones((2, 1)), np.array([1.0, np.nan])), DataError, "NaN"),
    ("linear 2-column y", lambda: tm.LinearRegression(1).fit(np.ones((3, 1)), np.ones((3, 2))), ShapeError, "vector"),
    ("linear text y", lambda: tm.LinearRegression(1).fit(np.ones((2, 1)), ["a", "b"]), DataError, "numeric"),
    ("linear columns", lambda: tm.LinearRegression(2).fit(np.ones((3, 3)), np.ones(3)), DataError, "coefficients"),
    ("linear no data", lambda: tm.LinearRegression(1).fit(), NotFittedError, "needs X and y"),
    ("linear coef before fit", lambda: tm.LinearRegression(1).coef, NotFittedError, "fit()"),
    ("linear penalty", lambda: tm.LinearRegression(1).fit(np.ones((3, 1)), np.ones(3), penalty="elastic"), DataError, "penalty"),
    ("linear alpha", lambda: tm.LinearRegression(1).fit(np.ones((3, 1)), np.ones(3), penalty="ridge", alpha=-1), DataError, "alpha"),
    ("linear method", lambda: tm.LinearRegression(1).fit(np.ones((3, 1)), np.ones(3), method="newton"), DataError, "method"),
    ("linear collinear", lambda: tm.LinearRegression(2).fit(np.column_stack([np.arange(5.0), 2 * np.arange(5.0)]), np.ones(5)), RankDeficientError, "x1"),
    ("linear random term", lambda: tm.LinearRegression.from_formula(F, SLEEP), DataError, "fixed effects only"),
    ("linear start length", lambda: tm.LinearRegression(2, starting_vector=[1.0]), DataError, "starting_vector"),
    ("linear negative weights", lambda: tm.LinearRegression(1).fit(np.ones((3, 1)), np.ones(3), weights=[-1, 1, 1]), DataError, "non-negative"),
    ("linear missing", lambda: tm.LinearRegression.from_formula("Reaction ~ Days", with_row(SLEEP, Days=np.nan)), DataError, "missing values"),
    # --- MixedModule -----------------------------------------------------------------------------------------------
    ("module without random term", lambda: tm.MixedModule.from_formula("Reaction ~ Days", SLEEP), FormulaError, "no random-effects term"),
    ("module G shape", lambda: module().reset_variances([[1.0]], 1.0), ShapeError, "2 x 2"),
    ("module G not definite", lambda: module().reset_variances([[1.0, 3.0], [3.0, 1.0]], 1.0), SingularCovarianceError, "positive semi-definite"),
    ("module G not symmetric", lambda: module().reset_variances([[1.0, 0.5], [0.1, 1.0]], 1.0), SingularCovarianceError, "symmetric"),
    ("module G NaN", lambda: module().reset_variances([[np.nan, 0.0], [0.0, 1.0]], 1.0), SingularCovarianceError, "non-finite"),
    ("module sigma zero", lambda: module().reset_variances(G, 0.0), DataError, "sigmasq_epsilon"),
    ("module sigma negative", lambda: module().reset_variances(G, -1.0), DataError, "sigmasq_epsilon"),
    ("module sigma text", lambda: module().reset_variances(G, "abc"), DataError, "sigmasq_epsilon"),
    ("module sigma NaN", lambda: module().reset_variances(G, np.nan), DataError, "sigmasq_epsilon"),
    ("module method", lambda: module().reset_variances(G, 1.0, method="bogus"), DataError, "method"),
    ("module G dict key", lambda: module().reset_variances({"nope": G}, 1.0), ShapeError, "G keys"),
    ("module G count", lambda: module().reset_variances([G, G], 1.0), ShapeError, "must be 2 x 2"),
    ("module G terms", lambda: tm.MixedModule.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", tm.datasets.load("Penicillin"))
        .reset_variances([[[1.0]]], 1.0), ShapeError, "expected 2"),
    ("module singular G for gradient", lambda: module().reset_variances([[4.0, 2.0], [2.0, 1.0]], 1.0, method="gradient", verbose=False), SingularCovarianceError, "singular"),
    ("module covariances before reset", lambda: module().conditional_covariances(), DataError, "reset_variances"),
    # --- mackay ----------------------------------------------------------------------------------------------------
    ("mackay model number", lambda: tm.mackay(5, SLEEP), DataError, "MixedModule"),
    ("mackay on_collapse", lambda: tm.mackay(F, SLEEP, on_collapse="ignore"), DataError, "on_collapse"),
    ("mackay method", lambda: tm.mackay(F, SLEEP, method="bogus", verbose=False), DataError, "method"),
    ("mackay covariance", lambda: tm.mackay(F, SLEEP, covariance="bogus", verbose=False), DataError, "covariance"),
    ("mackay acceleration", lambda: tm.mackay(F, SLEEP, acceleration="bogus", verbose=False), DataError, "acceleration"),
    ("mackay G0 shape", lambda: tm.mackay(F, SLEEP, G0=[[1.0]], verbose=False), ShapeError, "G0"),
    ("mackay sigma2_0", lambda: tm.mackay(F, SLEEP, sigma2_0=0.0, verbose=False), DataError, "sigma2_0"),
    ("mackay max_iter", lambda: tm.mackay(F, SLEEP, max_iter=0, verbose=False), DataError, "max_iter"),
    ("mackay collapse raises", lambda: tm.mackay(F, SLEEP, covariance="full", G0=G, sigma2_0=160.0, on_collapse="raise", verbose=False),
        SingularCovarianceError, "collapsed"),
    # --- tfmixed.keras ---------------------------------------------------------------------------------------------
    ("layer without factors", lambda: __import__("tfmixed.keras").keras.RandomEffects({}), DataError, "at least one factor"),
    ("layer one level", lambda: __import__("tfmixed.keras").keras.RandomEffects({"c": 1}), DataError, "at least 2 levels"),
    ("layer unknown slope factor", lambda: __import__("tfmixed.keras").keras.RandomEffects({"c": 3}, slopes={"d": ["x"]}), DataError, "slopes name"),
    ("layer call on a tensor", lambda: effects_layer()(np.array([0, 1])), ShapeError, "dict"),
    ("layer missing input", lambda: effects_layer()({"d": np.array([0])}), ShapeError, "'c'"),
    ("layer negative id", lambda: effects_layer()({"c": np.array([-1])}), DataError, "0..2"),
    ("layer id too large", lambda: effects_layer()({"c": np.array([3])}), DataError, "0..2"),
    ("layer fractional id", lambda: effects_layer()({"c": np.array([0.5])}), DataError, "integer"),
    ("layer text id", lambda: effects_layer()({"c": np.array(["a"])}), DataError, "integer"),
    ("layer NaN id", lambda: effects_layer()({"c": np.array([np.nan])}), DataError, "integer"),
    ("encode unseen", lambda: encode(["z"], levels=["a", "b"]), NewLevelError, "'z'"),
    ("encode policy", lambda: encode(["a"], levels=["a"], unseen="bogus"), DataError, "unseen"),
    ("encode 2-D", lambda: encode(np.ones((2, 2))), DataError, "one-dimensional"),
    ("encode NaN", lambda: encode([1.0, np.nan]), DataError, "missing values"),
    ("callback rule", lambda: empirical_bayes({"c": np.array([0])}, [1.0], rule="bogus"), DataError, "rule"),
    ("callback without y", lambda: empirical_bayes({"c": np.array([0])}), DataError, "targets"),
    ("callback text y", lambda: empirical_bayes({"c": np.array([0])}, ["a"]), DataError, "numeric"),
    # --- the stages -------------------------------------------------------------------------------------------------
    ("term values shape", lambda: tm.RandomEffectsTerm(np.zeros(3, int), np.ones((2, 1)), levels=[0]), ShapeError, "values"),
    ("term column names", lambda: tm.RandomEffectsTerm(np.zeros(3, int), np.ones((3, 1)), levels=[0], columns=("a", "b")), ShapeError, "column names"),
    ("cross-products weights", lambda: tm.CrossProducts.from_rows(np.ones((3, 1)), np.ones(3), [tm.RandomEffectsTerm.intercept(np.array([0, 1, 1]), 2)], weights=np.ones(2)), ShapeError, "weights"),
    ("cross-products shift", lambda: tm.CrossProducts.from_rows(np.ones((3, 1)), np.ones(3), [tm.RandomEffectsTerm.intercept(np.array([0, 1, 1]), 2)], shift=[0.0, 0.0]), ShapeError, "shift"),
    ("cross-products structures", lambda: tm.CrossProducts.from_rows(np.ones((3, 1)), np.ones(3), [tm.RandomEffectsTerm.intercept(np.array([0, 1, 1]), 2)], shift=[0.0])
        + tm.CrossProducts.from_rows(np.ones((3, 1)), np.ones(3), [tm.RandomEffectsTerm.intercept(np.array([0, 1, 2]), 3)], shift=[0.0]), ShapeError, "different structures"),
    ("unknown dataset", lambda: tm.datasets.load("nope"), DataError, "nope"),
    # --- after the fit ----------------------------------------------------------------------------------------------
    ("anova of one fit", lambda: tm.anova(fit()), DataError, "at least two"),
    ("anova of a non-fit", lambda: tm.anova(fit(), "m1"), DataError, "got ['str']"),
    ("anova of other data", lambda: tm.anova(fit(), lmer(data=SLEEP.iloc[10:])), DataError, "same data"),
    ("anova of other weights", lambda: tm.anova(fit(), lmer(data=SLEEP_W, weights="w")), DataError, "weights"),
    ("anova not nested", lambda: tm.anova(fit("Reaction ~ Days2 + (Days | Subject)", data=SLEEP_W),
                                          fit("Reaction ~ Days + D2 + (1 | Subject)", data=SLEEP_W)), DataError, "not nested"),
    ("confint method", lambda: fit().confint("exact"), DataError, "method"),
    ("confint level", lambda: fit().confint("Wald", level=0), DataError, "level"),
    ("confint which", lambda: fit().confint(which=["nope"], verbose=False), DataError, "unknown parameter"),
    ("profile which", lambda: fit().profile(["nope"], verbose=False), DataError, "unknown parameter"),
    ("bootstrap zero", lambda: fit().bootstrap(0), DataError, "positive integer"),
    ("bootstrap float count", lambda: fit().bootstrap(2.5), DataError, "positive integer"),
    ("bootstrap statistic", lambda: fit().bootstrap(2, statistic="mean"), DataError, "statistic"),
    ("bootstrap jobs", lambda: fit().bootstrap(2, n_jobs=0), DataError, "n_jobs"),
    ("simulate re_form", lambda: fit().simulate(1, re_form="~ (1 | Subject)"), DataError, "re_form"),
    ("predict interval", lambda: fit().predict(interval="ci"), DataError, "interval"),
    ("predict level", lambda: fit().predict(interval="confidence", level=2), DataError, "level"),
    ("predict re_form not a term", lambda: fit().predict(re_form="~ (1 | Days)"), DataError, "not random terms"),
    ("predict re_form without a term", lambda: fit().predict(re_form="~ Days"), DataError, "no random term"),
    ("predict re_form type", lambda: fit().predict(re_form=0), DataError, "re_form"),
    ("prediction interval without covariates", lambda: fit().predict({"Subject": [308]}, re_form="fixed", interval="prediction"),
        DataError, "Days"),
    ("anova type", lambda: fit().anova(type="III"), DataError, "type"),
    ("anova ddf", lambda: fit().anova(ddf="KR"), DataError, "ddf"),
    ("coefficient tests ddf", lambda: fit().coefficient_tests("Satterthwaite's"), DataError, "ddf"),
    ("Kenward-Roger of ML", lambda: fit(REML=False).anova(ddf="Kenward-Roger"), DataError, "REML"),
    ("Kenward-Roger too large", lambda: tm.lmer(F, SLEEP, verbose=False, kernel_options=tm.KernelOptions(memory_bytes=10**5))
        .anova(ddf="Kenward-Roger"), MemoryLimitError, "Satterthwaite"),
    ("plot level", lambda: fit().plot_ranef(level=1), DataError, "level"),
    ("plot factor", lambda: fit().plot_ranef(factor="Days"), DataError, "grouping factor"),
    ("qq which", lambda: fit().plot_qq("fitted"), DataError, "which"),
    ("refit response length", lambda: __import__("tfmixed.refit").refit.refit(fit(), response=np.ones(3)), ShapeError, "180"),
    ("refit response NaN", lambda: __import__("tfmixed.refit").refit.refit(fit(), response=np.full(180, np.nan)), DataError, "non-finite"),
]


@pytest.mark.parametrize("case, thunk, error, fragment", RAISES, ids=[case[0] for case in RAISES])
def test_bad_input_raises_a_tfmixed_error(case, thunk, error, fragment):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as caught:
            thunk()
    assert fragment in str(caught.value)


WARNS = [
    ("rank deficient, dropped", lambda: lmer("Reaction ~ Days + D2 + (1 | Subject)", SLEEP_W), RankDeficiencyWarning, "dropping 1 column"),
    ("singular fit", lambda: lmer("Yield ~ 1 + (1 | Batch)", tm.datasets.load("Dyestuff2")), SingularFitWarning, "singular"),
    ("rows dropped", lambda: lmer(data=with_row(SLEEP, Days=np.nan), missing="drop"), TfmixedWarning, "dropped 1 row"),
    ("degenerate response", lambda: lmer("y ~ 1 + (1 | g)", pd.DataFrame({"y": np.repeat(np.arange(20.0), 5) ** 1.5, "g": np.repeat(np.arange(20), 5)})),
        ConvergenceWarning, "constant within the levels"),
    ("iteration limit", lambda: lmer(method="em", max_iter=2), ConvergenceWarning, "did not converge"),
    ("MacKay collapse", lambda: tm.mackay(F, SLEEP, covariance="full", G0=G, sigma2_0=160.0, verbose=False), CovarianceCollapseWarning, "collapsed"),
    ("no residual df", lambda: tm.LinearRegression(3).fit(np.column_stack([np.ones(3), [1.0, 2, 4], [0.0, 1, 0]]), [1.0, 2, 3]), TfmixedWarning, "degrees of freedom"),
]


@pytest.mark.parametrize("case, thunk, warning, fragment", WARNS, ids=[case[0] for case in WARNS])
def test_questionable_input_warns(case, thunk, warning, fragment):
    with pytest.warns(warning, match=fragment):
        thunk()


def quiet(thunk):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return thunk()


# (case id, thunk giving a fit, thunk giving the equivalent well-formed fit)
SAME = [
    ("double parentheses", lambda: lmer("Reaction ~ Days + ((Days | Subject))"), lambda: fit()),
    ("explicit intercepts", lambda: lmer("Reaction ~ 1 + Days + (1 + Days | Subject)"), lambda: fit()),
    ("minus one after a random term", lambda: lmer("Reaction ~ Days + (Days | Subject) - 1"), lambda: lmer("Reaction ~ 0 + Days + (Days | Subject)")),
    ("I() with a power", lambda: lmer("Reaction ~ Days + I(Days^2) + (1 | Subject)", SLEEP_W), lambda: lmer("Reaction ~ Days + Days2 + (1 | Subject)", SLEEP_W)),
    ("I() with a power of a float column", lambda: lmer("Reaction ~ Dx + I(Dx^2) + (1 | Subject)", SLEEP_W.assign(Dx=SLEEP_W.Days + 0.5)),
        lambda: lmer("Reaction ~ Dx + Dx2 + (1 | Subject)", SLEEP_W.assign(Dx=SLEEP_W.Days + 0.5, Dx2=(SLEEP_W.Days + 0.5) ** 2))),
    ("uncorrelated bars", lambda: lmer("Reaction ~ Days + (Days || Subject)"), lambda: lmer("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)")),
    ("unit weights", lambda: lmer(weights=np.ones(180)), lambda: fit()),
    ("zero offset", lambda: lmer(offset=np.zeros(180)), lambda: fit()),
    ("offset in formula and as argument", lambda: lmer("Reaction ~ Days + offset(off) + (Days | Subject)", SLEEP_W), lambda: lmer(data=SLEEP_W, offset="off")),
    ("integer grouping codes", lambda: lmer(data=SLEEP.assign(Subject=SLEEP.Subject.astype(int))), lambda: fit()),
    # pandas' NA-valued "string" dtype: formulaic used to encode such a factor as garbage (2 of 4 coefficients)
    ("nullable string factor", lambda: lmer("Reaction ~ phase + (1 | Subject)", SLEEP.assign(phase=(SLEEP.Days // 4).astype(str).astype("string"))),
        lambda: lmer("Reaction ~ phase + (1 | Subject)", SLEEP.assign(phase=(SLEEP.Days // 4).astype(str)))),
    ("Arrow string factor", lambda: lmer("Reaction ~ phase + (1 | Subject)", SLEEP.assign(phase=(SLEEP.Days // 4).astype(str).astype("string[pyarrow]"))),
        lambda: lmer("Reaction ~ phase + (1 | Subject)", SLEEP.assign(phase=(SLEEP.Days // 4).astype(str)))),
    ("categorical grouping", lambda: lmer(data=SLEEP.assign(Subject=SLEEP.Subject.astype("category"))), lambda: fit()),
    ("float grouping codes", lambda: lmer(data=SLEEP.assign(Subject=SLEEP.Subject.astype(float))), lambda: fit()),
    ("nullable integers", lambda: lmer(data=SLEEP.assign(Days=SLEEP.Days.astype("Int64"))), lambda: fit()),
    ("dict of columns", lambda: lmer(data={c: SLEEP[c].to_numpy() for c in SLEEP.columns}), lambda: fit()),
    ("dropped rows", lambda: lmer(data=with_row(SLEEP, Days=np.nan), missing="drop"), lambda: lmer(data=SLEEP.iloc[1:])),
    ("aliased column dropped", lambda: lmer("Reaction ~ Days + D2 + (1 | Subject)", SLEEP_W), lambda: lmer(F1)),
    ("response moved by 1e8", lambda: lmer(data=SLEEP.assign(Reaction=SLEEP.Reaction + 1e8)), lambda: fit()),
    ("grouping of mixed types", lambda: lmer(F1, SLEEP.assign(g=[1, "a"] * 90, Subject=SLEEP.Subject).assign(Subject=lambda d: d.g)),
        lambda: lmer(F1, SLEEP.assign(Subject=["1", "a"] * 90))),
    ("rows in another order", lambda: lmer(data=SLEEP.sample(frac=1.0, random_state=1)), lambda: fit()),
    ("factor() of a numeric column", lambda: lmer("Reaction ~ factor(Days) + (1 | Subject)"), lambda: lmer("Reaction ~ d + (1 | Subject)", SLEEP.assign(d=pd.Categorical(SLEEP.Days)))),
]


@pytest.mark.parametrize("case, unusual, usual", SAME, ids=[case[0] for case in SAME])
def test_unusual_but_valid_input_gives_the_same_fit(case, unusual, usual):
    mine, reference = quiet(unusual), quiet(usual)
    assert mine.deviance == pytest.approx(reference.deviance, rel=1e-9)
    np.testing.assert_allclose(mine.varcorr["vcov"], reference.varcorr["vcov"], rtol=1e-5)
    expected = reference.fixef.to_numpy().copy()
    if case == "response moved by 1e8":
        expected[0] += 1e8  # the intercept moves with the response; nothing else does
    np.testing.assert_allclose(mine.fixef.to_numpy(), expected, rtol=1e-6)


def test_the_table_has_at_least_150_cases():
    assert len(RAISES) + len(WARNS) + len(SAME) >= 150
