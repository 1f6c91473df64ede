"""lmer against lme4 1.1-31 / lmerTest references (tolerances from the issue)."""

import numpy as np
import pandas as pd
import pytest
from conftest import as_array, load_data

import tfmixed as tm
from tfmixed import NewLevelError, datasets


@pytest.fixture
def fitted(lme4_case):
    name, ref, data = lme4_case
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tm.SingularFitWarning)
        fit = tm.lmer(ref["formula"], load_data(data), REML=ref["REML"], verbose=False)
    return name, ref, fit


def test_criterion_and_loglik(fitted):
    _, ref, fit = fitted
    assert fit.deviance == pytest.approx(ref["deviance"], rel=1e-6)
    assert fit.loglik == pytest.approx(ref["logLik"], rel=1e-6)
    assert fit.aic == pytest.approx(ref["AIC"], rel=1e-6)
    assert fit.bic == pytest.approx(ref["BIC"], rel=1e-6)
    assert fit.n_params == ref["df"]
    assert fit.converged


def test_variance_components(fitted):
    _, ref, fit = fitted
    ours = fit.varcorr
    theirs = pd.DataFrame(ref["varcorr"])
    assert ours["grp"].tolist() == theirs["grp"].tolist()
    assert ours["var1"].fillna("").tolist() == theirs["var1"].fillna("").tolist()
    for mine, expected in zip(ours.itertuples(), theirs.itertuples()):
        for column in ("vcov", "sdcor"):
            value = getattr(expected, column)
            if abs(value) < 1e-6:
                assert abs(getattr(mine, column)) < 1e-3
            else:
                assert getattr(mine, column) == pytest.approx(value, rel=1e-4)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-4)


def test_fixed_effects_and_standard_errors(fitted):
    _, ref, fit = fitted
    np.testing.assert_allclose(fit.fixef.to_numpy(), as_array(ref["fixef"]), rtol=1e-4)
    np.testing.assert_allclose(fit.fixef_se.to_numpy(), as_array(ref["fixef_se"]), rtol=1e-4)
    np.testing.assert_allclose(fit.vcov_beta.to_numpy().ravel(), as_array(ref["vcov_beta"]).ravel(), rtol=2e-4)
    table = fit.coef_table
    np.testing.assert_allclose(table["t value"], as_array(ref["t_value"]), rtol=1e-4)
    np.testing.assert_allclose(table["df"], as_array(ref["satterthwaite_df"]), rtol=1e-4)
    np.testing.assert_allclose(table["Pr(>|t|)"], as_array(ref["satterthwaite_p"]), rtol=5e-3)
    if isinstance(ref["fixef"], dict):
        assert fit.fixef.index.tolist() == list(ref["fixef"])


def test_conditional_modes_and_sds(fitted):
    _, ref, fit = fitted
    theirs = pd.DataFrame(ref["ranef"])
    ours = fit.ranef_frame()
    merged = theirs.merge(ours, on=["grpvar", "term", "grp"], suffixes=("_lme4", ""))
    assert len(merged) == len(theirs) == len(ours)
    scale = max(1.0, float(np.max(np.abs(theirs["condval"]))))
    np.testing.assert_allclose(merged["condval"], merged["condval_lme4"], rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(merged["condsd"], merged["condsd_lme4"], rtol=1e-4, atol=1e-6)


def test_fitted_residuals_and_singularity(fitted):
    _, ref, fit = fitted
    np.testing.assert_allclose(fit.fitted[:20], ref["fitted_head"], rtol=1e-5)
    np.testing.assert_allclose(fit.residuals[:20], ref["resid_head"], rtol=1e-3, atol=1e-4 * fit.sigma)
    assert fit.is_singular == ref["isSingular"]
    assert fit.nobs == ref["nobs"]
    assert fit.ngroups == {k: v for k, v in ref["ngrps"].items()} or set(fit.ngroups.items()) >= set(ref["ngrps"].items())


def test_theta_in_lme4_order(fitted):
    _, ref, fit = fitted
    np.testing.assert_allclose(fit.theta, as_array(ref["theta"]), rtol=1e-3, atol=1e-4)


def test_singular_fit_is_flagged():
    with pytest.warns(tm.SingularFitWarning):
        fit = tm.lmer("Yield ~ 1 + (1 | Batch)", datasets.load("Dyestuff2"), verbose=False)
    assert fit.theta[0] == 0.0 and fit.is_singular
    assert "singular" in fit.summary()


def test_summary_prints_like_lme4():
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"), verbose=False)
    text = fit.summary()
    for fragment in ["REML criterion at convergence: 1743.6", "Scaled residuals", "Random effects:",
                     "Subject", "Residual", "Number of obs: 180, groups:  Subject, 18", "Fixed effects:", "0.07"]:
        assert fragment in text
    ml = tm.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"), REML=False, verbose=False)
    assert "logLik" in ml.summary() and "maximum likelihood" in ml.summary()


def test_predict_semantics():
    data = datasets.load("sleepstudy")
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", data, verbose=False)
    np.testing.assert_allclose(fit.predict(data), fit.fitted)
    np.testing.assert_allclose(fit.predict(data, re_form="fixed"), fit.design.X @ fit.fixef.to_numpy())
    new = pd.DataFrame({"Days": [0.0, 5.0], "Subject": ["308", "999"]})
    with pytest.raises(NewLevelError, match="999"):
        fit.predict(new)
    predicted = fit.predict(new, allow_new_levels=True)
    b308 = fit.ranef["Subject"].loc["308"]
    assert predicted[0] == pytest.approx(fit.fixef.iloc[0] + b308.iloc[0])
    assert predicted[1] == pytest.approx(fit.fixef.iloc[0] + 5 * fit.fixef.iloc[1])
    with pytest.raises(tm.DataError):
        fit.predict(pd.DataFrame({"Days": [1.0]}))
    with pytest.raises(tm.DataError):
        fit.predict(pd.DataFrame({"Days": [np.nan], "Subject": ["308"]}))
    with pytest.raises(tm.DataError):
        fit.predict(data, re_form="something")


def test_crossed_prediction_with_numeric_new_data():
    data = datasets.load("Penicillin")
    fit = tm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", data, verbose=False)
    np.testing.assert_allclose(fit.predict(data.iloc[::7]), fit.fitted[::7])


def test_no_random_terms_is_refused():
    with pytest.raises(tm.FormulaError, match="no random-effects term"):
        tm.lmer("Reaction ~ Days", datasets.load("sleepstudy"), verbose=False)


def test_simulated_crossed_design_recovers_variances():
    data = datasets.simulate_crossed(n_obs=6000, levels=(400, 150, 12), sds=(0.5, 0.8, 0.3), residual_sd=1.0, seed=3)
    fit = tm.lmer("y ~ service + (1 | g1) + (1 | g2) + (1 | g3)", data, verbose=False)
    sds = fit.varcorr.set_index("grp")["sdcor"]
    assert sds["g1"] == pytest.approx(0.5, rel=0.15)
    assert sds["g2"] == pytest.approx(0.8, rel=0.15)
    assert sds["Residual"] == pytest.approx(1.0, rel=0.05)
