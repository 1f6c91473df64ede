"""Regression tests for front-door defects (issue 9): each ends in a tfmixed error, a documented warning or the
right number."""

import warnings

import numpy as np
import pandas as pd
import pytest

import tfmixed as tm

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    return tm.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_fit(sleep):
    return tm.lmer(SLEEP, sleep, verbose=False)


def test_rank_deficient_fit_drops_the_aliased_column_and_predicts(sleep):
    data = sleep.assign(D2=sleep.Days * 2)
    with pytest.warns(tm.RankDeficiencyWarning, match="D2"):
        fit = tm.lmer("Reaction ~ Days + D2 + (1 | Subject)", data, verbose=False)
    reference = tm.lmer("Reaction ~ Days + (1 | Subject)", sleep, verbose=False)
    np.testing.assert_allclose(fit.fixef, reference.fixef, rtol=1e-10)
    np.testing.assert_allclose(fit.predict(data.iloc[:5]), reference.fitted[:5], rtol=1e-10)


def test_an_unused_category_does_not_make_the_model_rank_deficient(sleep):
    data = sleep.assign(f=pd.Categorical(np.where(sleep.Days > 4, "a", "b"), categories=["a", "b", "c"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", tm.RankDeficiencyWarning)
        fit = tm.lmer("Reaction ~ f + (1 | Subject)", data, verbose=False)
    assert fit.fixef.index.tolist() == ["(Intercept)", "fb"]


def test_as_many_random_effects_as_observations_raises_as_lme4(sleep):
    with pytest.raises(tm.DataError, match="number of observations"):
        tm.lmer(SLEEP, sleep[sleep.Days < 2], verbose=False)


@pytest.mark.parametrize("formula", [None, 5, ["y ~ x"]])
def test_a_formula_that_is_not_a_string_raises(sleep, formula):
    with pytest.raises(tm.FormulaError, match="string"):
        tm.lmer(formula, sleep, verbose=False)


@pytest.mark.parametrize("days", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_covariates(sleep_fit, days):
    with pytest.raises(tm.DataError):
        sleep_fit.predict(pd.DataFrame({"Days": [days], "Subject": ["308"]}))


def test_predict_refuses_an_unseen_level_of_a_fixed_factor(sleep):
    fit = tm.lmer("Reaction ~ g + (1 | Subject)", sleep.assign(g=np.where(sleep.Days > 4, "hi", "lo")), verbose=False)
    with pytest.raises(tm.DataError, match="'zz'"):
        fit.predict(pd.DataFrame({"g": ["zz"], "Subject": ["308"]}))
    assert fit.predict(pd.DataFrame({"g": ["lo"], "Subject": ["308"]}))[0] == pytest.approx(fit.fitted[0])


def test_grouping_levels_match_by_value_across_dtypes():
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"g": np.repeat(np.arange(1, 11), 6), "x": rng.normal(size=60)})
    data["y"] = data.x + rng.normal(size=10)[data.g - 1] + rng.normal(size=60)
    fit = tm.lmer("y ~ x + (1 | g)", data, verbose=False)
    as_int = fit.predict(pd.DataFrame({"g": [3], "x": [0.5]}))
    as_float = fit.predict(pd.DataFrame({"g": [3.0], "x": [0.5]}), allow_new_levels=True)
    assert as_int[0] == pytest.approx(as_float[0], rel=1e-14)
    assert as_int[0] != pytest.approx(fit.predict(pd.DataFrame({"g": [3], "x": [0.5]}), re_form="fixed")[0])


@pytest.mark.parametrize("response", [1.0, 0.0])
def test_a_constant_response_says_why_it_cannot_be_fitted(sleep, response):
    with pytest.raises(tm.TfmixedError, match="constant"):
        tm.lmer("Reaction ~ Days + (1 | Subject)", sleep.assign(Reaction=response), verbose=False)


def test_huge_values_say_why(sleep):
    with pytest.raises(tm.TfmixedError, match="too large"):
        tm.lmer("Reaction ~ Days + (1 | Subject)", sleep.assign(Reaction=sleep.Reaction * 1e200), verbose=False)


def test_the_response_among_the_covariates_says_why(sleep):
    with pytest.raises(tm.TfmixedError, match="among the covariates"):
        tm.lmer("Reaction ~ Days + R2 + (1 | Subject)", sleep.assign(R2=sleep.Reaction), verbose=False)


def test_the_same_random_term_twice_is_named_as_lme4(sleep):
    fit = tm.lmer("Reaction ~ Days + (1 | Subject) + (1 | Subject)", sleep, verbose=False)
    assert fit.varcorr["grp"].tolist() == ["Subject", "Subject.1", "Residual"]
    assert set(fit.ranef) == {"Subject", "Subject.1"}
    assert "Subject.1" in fit.summary()


def test_missing_policy_is_validated_without_missing_values(sleep):
    with pytest.raises(tm.DataError, match="missing"):
        tm.lmer(SLEEP, sleep, missing="bogus", verbose=False)


def test_mackay_refuses_a_model_that_is_neither_formula_nor_module(sleep):
    with pytest.raises(tm.DataError, match="MixedModule"):
        tm.mackay(5, sleep)


@pytest.mark.parametrize("ids, message", [([-1], "0..2"), ([3], "0..2"), ([1.5], "integer"), (["a"], "integer")])
def test_random_effects_ids_are_checked_where_they_enter(ids, message):
    from tfmixed.keras import RandomEffects

    layer = RandomEffects({"c": 3})
    with pytest.raises(tm.DataError, match=message):
        layer({"c": np.array(ids)})
    assert layer({"c": np.array([0.0, 2.0])}).shape == (2, 1)  # integral floats are codes


def test_empirical_bayes_refuses_nan_targets_and_out_of_range_ids():
    import keras

    from tfmixed.keras import EmpiricalBayes, RandomEffects

    codes = keras.Input((), name="c", dtype="int32")
    model = keras.Model({"c": codes}, RandomEffects({"c": 3})({"c": codes}))
    model.compile(optimizer="sgd", loss="mse")
    x = {"c": np.array([0, 1, 2, 1])}
    with pytest.raises(tm.DataError, match="NaN"):
        model.fit(x, np.array([1.0, np.nan, 0.0, 1.0]), epochs=1, verbose=0,
                  callbacks=[EmpiricalBayes(x, np.array([1.0, np.nan, 0.0, 1.0]))])
    bad = {"c": np.array([0, 1, 5, 1])}
    with pytest.raises(tm.DataError, match="0..2"):
        model.fit(x, np.ones(4), epochs=1, verbose=0, callbacks=[EmpiricalBayes(bad, np.ones(4))])


def test_tm_keras_is_a_lazy_submodule():
    assert tm.keras.RandomEffects.__name__ == "RandomEffects"


@pytest.mark.parametrize("code", ["import tfmixed.keras", "import tfmixed as tm; tm.MixedModule; tm.LinearRegression"])
def test_no_tensorflow_log_lines_on_import(code):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_linear_regression_with_as_many_coefficients_as_rows_warns():
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(3), rng.normal(size=3), rng.normal(size=3)])
    with pytest.warns(tm.TfmixedWarning, match="no residual degrees of freedom"):
        model = tm.LinearRegression(3).fit(X, rng.normal(size=3))
    assert np.isnan(model.sigma)


def test_a_covariate_in_units_of_1e12_is_not_called_collinear():
    rng = np.random.default_rng(1)
    X = np.column_stack([np.ones(50), rng.normal(size=50) * 1e12, rng.normal(size=50)])
    y = X[:, 1] * 1e-12 + X[:, 2] + rng.normal(size=50)
    np.testing.assert_allclose(tm.LinearRegression(3).fit(X, y).coef, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-9)


def test_diverging_gradient_training_warns():
    import tensorflow as tf

    rng = np.random.default_rng(2)
    X = np.column_stack([np.ones(50), rng.normal(size=50)])
    with pytest.warns(tm.ConvergenceWarning, match="diverged"):
        tm.LinearRegression(2).fit(X, 1 + 2 * X[:, 1], method="gradient", optimizer=tf.keras.optimizers.SGD(10.0),
                                   epochs=50, verbose=False)


def test_gradient_solve_from_the_exact_optimum_stays_there(sleep):
    module = tm.MixedModule.from_formula(SLEEP, sleep)
    G = [[612.1, 9.6], [9.6, 35.07]]
    module.reset_variances(G, 654.94)
    exact = module.beta.numpy().copy()
    module.reset_variances(G, 654.94, method="gradient", verbose=False)
    np.testing.assert_allclose(module.beta.numpy(), exact, rtol=1e-9)
    with pytest.raises(tm.DataError, match="sigmasq_epsilon"):
        module.reset_variances(G, "abc")


@pytest.mark.parametrize("kind", ["polars", "pyarrow", "string[pyarrow]", "Int64", "Float64 with NA", "dict"])
def test_data_in_the_shapes_users_have(sleep, sleep_fit, kind):
    if kind == "polars":
        data = pytest.importorskip("polars").from_pandas(sleep)
    elif kind == "pyarrow":
        data = pytest.importorskip("pyarrow").Table.from_pandas(sleep)
    elif kind == "string[pyarrow]":
        pytest.importorskip("pyarrow")
        data = sleep.assign(Subject=sleep.Subject.astype("string[pyarrow]"))
    elif kind == "Int64":
        data = sleep.assign(Days=sleep.Days.astype("Int64"))
    elif kind == "dict":
        data = {column: sleep[column].to_numpy() for column in sleep.columns}
    else:
        data = pd.concat([sleep, pd.DataFrame({"Reaction": [300.0], "Days": [pd.NA], "Subject": ["308"]})],
                         ignore_index=True).astype({"Days": "Float64"})
        with pytest.warns(tm.TfmixedWarning, match="dropped 1 row"):
            fit = tm.lmer(SLEEP, data, missing="drop", verbose=False)
        assert fit.deviance == pytest.approx(sleep_fit.deviance, rel=1e-12)
        return
    fit = tm.lmer(SLEEP, data, verbose=False)
    assert fit.deviance == pytest.approx(sleep_fit.deviance, rel=1e-12)
    np.testing.assert_allclose(fit.predict(data)[:5], sleep_fit.fitted[:5], rtol=1e-12)


@pytest.mark.parametrize("data", [[1, 2, 3], "sleepstudy.csv", {"y": [1.0, 2.0], "g": ["a"]}])
def test_data_that_is_not_a_frame_raises(data):
    with pytest.raises(tm.TfmixedError):
        tm.lmer("y ~ 1 + (1 | g)", data, verbose=False)


def test_linear_regression_from_formula_drops_missing_rows_on_request(sleep):
    data = sleep.copy()
    data.loc[data.index[:3], "Days"] = np.nan
    with pytest.warns(tm.TfmixedWarning, match="dropped 3 row"):
        model = tm.LinearRegression.from_formula("Reaction ~ Days", data, missing="drop").fit()
    X = np.column_stack([np.ones(177), sleep.Days.to_numpy()[3:]])
    np.testing.assert_allclose(model.coef, np.linalg.lstsq(X, sleep.Reaction.to_numpy()[3:], rcond=None)[0], rtol=1e-10)


def test_r_transforms_scale_log_exp_sqrt(sleep):
    data = sleep.assign(z=(sleep.Days - sleep.Days.mean()) / sleep.Days.std(), p=sleep.Days + 1.0)
    scaled = tm.lmer("Reaction ~ scale(Days) + (1 | Subject)", data, verbose=False)
    explicit = tm.lmer("Reaction ~ z + (1 | Subject)", data, verbose=False)
    assert scaled.deviance == pytest.approx(explicit.deviance, rel=1e-10)
    for transform, values in [("log(p)", np.log(data.p)), ("exp(Days / 10)", np.exp(data.Days / 10)), ("sqrt(p)", np.sqrt(data.p))]:
        fitted = tm.lmer(f"Reaction ~ {transform} + (1 | Subject)", data, verbose=False)
        reference = tm.lmer("Reaction ~ v + (1 | Subject)", data.assign(v=values), verbose=False)
        assert fitted.deviance == pytest.approx(reference.deviance, rel=1e-10)
        assert fitted.fixef.index[1] == transform
        np.testing.assert_allclose(fitted.predict(data.iloc[:3]), fitted.fitted[:3], rtol=1e-12)  # same context


def test_interactions_written_with_a_star_are_named_in_rs_order():
    """R names an interaction's variables by first appearance: meanses * cses + sector * cses gives cses:sectorPublic."""
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"meanses": rng.normal(size=300), "cses": rng.normal(size=300),
                         "sector": rng.choice(["Catholic", "Public"], 300), "school": rng.integers(0, 30, 300)})
    data["y"] = data.meanses + data.cses + rng.normal(size=30)[data.school] + rng.normal(size=300)
    design = tm.build_design("y ~ meanses * cses + sector * cses + (1 | school)", data)
    assert design.fixed_names == ["(Intercept)", "meanses", "cses", "sectorPublic", "meanses:cses", "cses:sectorPublic"]


def test_ids_inside_a_compiled_fit_are_checked_by_graph_assertions():
    """Inside model.fit's compiled step no Python class can be raised: TensorFlow's InvalidArgumentError carries
    tfmixed's message. (EmpiricalBayes checks its data before training and raises DataError.)"""
    import keras
    import tensorflow as tf

    from tfmixed.keras import RandomEffects

    codes = keras.Input((), name="c", dtype="int32")
    model = keras.Model({"c": codes}, RandomEffects({"c": 3})({"c": codes}))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(tf.errors.InvalidArgumentError, match="tfmixed RandomEffects: ids of factor c must be < 3"):
        model.fit({"c": np.array([0, 1, 7, 1])}, np.ones(4), epochs=1, verbose=0)


def test_predictions_fitted_and_residuals_keep_the_inputs_index():
    """pandas conventions: ``nd.join(fit.predict(nd))`` aligns; fitted and residuals carry the data's index
    (less the rows dropped for missing values)."""
    sleep = tm.datasets.load("sleepstudy")
    sleep.index = [f"row{i}" for i in range(len(sleep))]
    sleep.loc["row3", "Days"] = np.nan
    with pytest.warns(tm.TfmixedWarning):
        fit = tm.lmer("Reaction ~ Days + (Days | Subject)", sleep, missing="drop", verbose=False)
    assert list(fit.fitted.index) == [label for label in sleep.index if label != "row3"]
    assert fit.residuals.index.equals(fit.fitted.index)
    np.testing.assert_allclose((fit.fitted + fit.residuals).to_numpy(), sleep["Reaction"].drop("row3").to_numpy())
    new = sleep.dropna().iloc[[5, 1, 7]]
    prediction = fit.predict(new)
    assert list(prediction.index) == list(new.index)
    joined = new.join(fit.predict(new, interval="confidence"))
    np.testing.assert_allclose(joined["fit"].to_numpy(), fit.fitted.loc[new.index].to_numpy(), rtol=1e-10)
    glmm = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
                    family="binomial", verbose=False)
    cbpp = tm.datasets.load("cbpp")
    assert glmm.fitted.index.equals(cbpp.index) and glmm.predict(cbpp.iloc[[3, 0]], type="response").index.tolist() == [3, 0]


def test_lme4_accessors_coef_vcov_and_named_anova():
    sleep = tm.datasets.load("sleepstudy")
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", sleep, verbose=False)
    coefficients = fit.coef()["Subject"]
    # lme4: coef(fm1)$Subject["308", ] = 253.6637, 19.6662 (fixef + ranef)
    np.testing.assert_allclose(coefficients.loc["308"].to_numpy(), [253.6637, 19.6662], atol=1e-3)
    np.testing.assert_allclose(coefficients.to_numpy(), fit.fixef.to_numpy() + fit.ranef["Subject"].to_numpy())
    pd.testing.assert_frame_equal(fit.vcov(), fit.vcov_beta)
    null = tm.lmer("Reaction ~ Days + (1 | Subject)", sleep, verbose=False)
    table = tm.anova(intercept=null, slope=fit)
    assert list(table.table.index) == ["intercept", "slope"]
    assert table["Chisq"].loc["slope"] == pytest.approx(42.1393, abs=1e-3)
    assert "slope" in str(table)
