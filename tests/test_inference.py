"""After the fit: LRTs, intervals, bootstrap, simulation, predictions with uncertainty, F tests, plots.

References: lme4 1.1-31 / lmerTest 3.1-3 / pbkrtest 0.5.2 (``reference/extra/``: the shared sleepstudy and
Penicillin extras, and ``cake_ftests.json`` from tools/ftest_references.R).
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

import tfmixed as tm
from tfmixed.results.comparison import anova

EXTRA = Path(__file__).parent / "reference" / "extra"
SLEEP = "Reaction ~ Days + (Days | Subject)"
PENICILLIN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


def reference(name):
    return json.loads((EXTRA / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def sleep():
    return tm.lmer(SLEEP, tm.datasets.load("sleepstudy"), verbose=False)


@pytest.fixture(scope="module")
def penicillin():
    return tm.lmer(PENICILLIN, tm.datasets.load("Penicillin"), verbose=False)


def relative(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


# -- likelihood-ratio tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, key, data", [("sleepstudy_reml", "anova_lrt", "sleepstudy"),
                                              ("sleepstudy_reml", "anova_lrt_2", "sleepstudy"),
                                              ("Penicillin_crossed", "anova_lrt", "Penicillin")])
def test_likelihood_ratio_tests_match_lme4(name, key, data):
    ref = reference(name)[key]
    frame = tm.datasets.load(data)
    small, big = tm.lmer(ref["small"], frame, verbose=False), tm.lmer(ref["big"], frame, verbose=False)
    result = tm.anova(big, small)  # any order: rows by number of parameters, as lme4
    assert result.notes == ["refitting model(s) with ML (instead of REML)"]
    table = pd.DataFrame(ref["table"])
    for column in ["npar", "AIC", "BIC", "logLik", "deviance"]:
        assert relative(result.table[column], table[column]) < 1e-6, column
    assert relative(result.table["Chisq"].iloc[1], table["Chisq"].iloc[1]) < 1e-6
    assert relative(result.table["Pr(>Chisq)"].iloc[1], table["Pr(>Chisq)"].iloc[1]) < 1e-6
    assert result.table["Df"].iloc[1] == table["Df"].iloc[1]
    assert "m1: " + ref["big"] in str(result)


def test_anova_refuses_what_is_not_comparable(sleep):
    data = tm.datasets.load("sleepstudy")
    with pytest.raises(tm.DataError, match="at least two"):
        tm.anova(sleep)
    other = tm.lmer(SLEEP, data.assign(Reaction=data.Reaction + 1.0), verbose=False)
    with pytest.raises(tm.DataError, match="same data"):
        tm.anova(sleep, other)
    shorter = tm.lmer(SLEEP, data.iloc[:-10], verbose=False)
    with pytest.raises(tm.DataError, match="same data"):
        tm.anova(sleep, shorter)
    quadratic = tm.lmer("Reaction ~ I(Days^2) + (Days | Subject)", data, verbose=False)
    with pytest.raises(tm.DataError, match="not nested"):
        tm.anova(sleep, tm.lmer("Reaction ~ Days + I(Days^2) + (1 | Subject)", data, verbose=False), quadratic)
    with pytest.raises(tm.DataError, match="not comparable"):
        tm.anova(sleep, tm.lmer("Reaction ~ 1 + (Days | Subject)", data, verbose=False), refit=False)
    glmm = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
                    family="binomial", verbose=False)
    with pytest.raises(tm.DataError, match="compare"):
        tm.anova(sleep, glmm)


def test_anova_of_ml_fits_needs_no_refit_and_compares_glmms():
    data = tm.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ {} + (1 | herd)"
    small = tm.glmer(formula.format("1"), data, family="binomial", verbose=False)
    big = tm.glmer(formula.format("period"), data, family="binomial", verbose=False)
    result = anova(small, big)
    assert result.notes == []
    assert result.table["Chisq"].iloc[1] == pytest.approx(small.minus2loglik - big.minus2loglik, rel=1e-12)
    assert result.table["Df"].iloc[1] == 3


# -- intervals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fixture", [("sleepstudy_reml", "sleep"), ("Penicillin_crossed", "penicillin")])
def test_profile_and_wald_intervals_match_lme4(name, fixture, request):
    fit = request.getfixturevalue(fixture)
    ref = reference(name)
    profile = pd.DataFrame(ref["confint_profile"]["ci"]).set_index("parm")
    ours = fit.confint("profile", verbose=False)
    assert list(ours.index) == list(profile.index)
    assert relative(ours[["2.5 %", "97.5 %"]], profile[["lower", "upper"]]) < 1e-3
    wald = pd.DataFrame(ref["confint_wald"]["ci"]).set_index("parm")
    ours = fit.confint("Wald")
    assert list(ours.index) == list(wald.index)
    assert ours.loc[wald["lower"].isna()].isna().all().all()
    fixed = wald.dropna()
    # lme4 stopped a hair early on Penicillin (REML criterion 8.5e-9 above ours; sd_sample 3e-5 off), which moves
    # its SE by 2.7e-5: the Wald limits agree to 1e-6 on sleepstudy, to 1e-5 there
    assert relative(ours.loc[fixed.index], fixed) < (1e-6 if name.startswith("sleep") else 1e-5)
    z = 1.959963984540054
    assert relative(ours.loc[fit.fixef.index, "97.5 %"], fit.fixef + z * fit.fixef_se) < 1e-14


def test_profile_traces_are_monotone_and_cross_the_limits(sleep, tmp_path):
    profile = sleep.profile(["sd_Days|Subject", "Days"], points=4, verbose=False)
    for name, trace in profile.traces.items():
        assert np.all(np.diff(trace["zeta"]) > 0), name
        assert trace["zeta"].min() < -2.5 and trace["zeta"].max() > 2.5
    limits = profile.confint(0.95)
    assert limits.loc["Days", "2.5 %"] == pytest.approx(7.35865327511699, rel=1e-4)
    profile.plot().savefig(tmp_path / "zeta.png")
    assert (tmp_path / "zeta.png").stat().st_size > 5000


def test_profile_of_a_singular_fit_has_a_zero_lower_limit():
    with pytest.warns(tm.SingularFitWarning):
        fit = tm.lmer("Yield ~ 1 + (1 | Batch)", tm.datasets.load("Dyestuff2"), verbose=False)
    limits = fit.confint(verbose=False)
    assert limits.loc["sd_(Intercept)|Batch", "2.5 %"] == 0.0
    assert limits.loc["sd_(Intercept)|Batch", "97.5 %"] > 0.5


def test_confint_arguments(sleep):
    with pytest.raises(tm.DataError, match="method"):
        sleep.confint("likelihood")
    with pytest.raises(tm.DataError, match="level"):
        sleep.confint("Wald", level=95)
    with pytest.raises(tm.DataError, match="unknown parameter"):
        sleep.confint("Wald", which=["slope"])
    assert list(sleep.confint("Wald", which=["Days"]).index) == ["Days"]


# -- bootstrap and simulation ---------------------------------------------------------------------------------
def test_bootstrap_quantiles_agree_with_bootmer_within_monte_carlo_error(sleep):
    """500 replicates each side. The difference of two independent 2.5% (50%) quantile estimates from 500 draws
    has SD about 0.17 (0.08) bootstrap SDs for a near-normal statistic; 4 such SDs are allowed (0.7 and 0.32),
    and 20% for the bootstrap SDs (the SD of a difference of two SD estimates is about 4.5%)."""
    ref = reference("sleepstudy_reml")["bootstrap"]
    boot = sleep.bootstrap(500, seed=20261201, verbose=False)
    assert boot.n_failed == 0
    quantiles = boot.quantiles()
    expected = pd.DataFrame(ref["quantiles"]).T
    sd = pd.Series(ref["boot_sd"])
    for name in expected.index:
        assert abs(quantiles.loc[name, 0.5] - expected.loc[name, "q50"]) < 0.32 * sd[name], name
        for ours, theirs in [(0.025, "q2.5"), (0.975, "q97.5")]:
            assert abs(quantiles.loc[name, ours] - expected.loc[name, theirs]) < 0.7 * sd[name], (name, theirs)
    assert relative(boot.sd, sd[boot.sd.index]) < 0.2
    assert relative(boot.t0, pd.Series(ref["t0"])[boot.t0.index]) < 1e-4


def test_bootstrap_is_seeded_and_the_same_in_parallel(sleep):
    one = sleep.bootstrap(12, seed=7, verbose=False)
    again = sleep.bootstrap(12, seed=7, verbose=False, n_jobs=2)
    pd.testing.assert_frame_equal(one.replicates, again.replicates)
    other = sleep.bootstrap(12, seed=8, verbose=False)
    assert not np.allclose(one.replicates, other.replicates)
    custom = sleep.bootstrap(5, seed=1, statistic=lambda f: [f.sigma], verbose=False)
    assert custom.replicates.shape == (5, 1)
    intervals = sleep.confint("boot", n_boot=40, seed=3, verbose=False)
    assert np.all(intervals["2.5 %"] < intervals["97.5 %"])


def test_newton_refits_of_replicates_reach_the_optimisers_criterion(sleep):
    from tfmixed.refit import criterion_inverse_hessian, refit

    metric = criterion_inverse_hessian(sleep)
    sims = sleep.simulate(40, seed=5).to_numpy()
    for column in sims.T:
        near = refit(sleep, response=column, inverse_hessian=metric)
        full = refit(sleep, response=column)
        assert near.converged and full.converged
        assert near.deviance <= full.deviance + 1e-7
        assert np.all(near.theta[[0, 2]] >= 0)  # diagonals canonical (non-negative)


def test_simulate_has_the_model_mean_and_marginal_variance(sleep):
    sims = sleep.simulate(4000, seed=11).to_numpy()
    design = sleep.design
    G = sleep.covariance_matrices()[0]
    values = design.terms[0].values
    variance = np.einsum("ik,kl,il->i", values, G, values) + sleep.sigma**2
    mean = design.X @ sleep.fixef.to_numpy()
    z = (sims.mean(axis=1) - mean) / np.sqrt(variance / sims.shape[1])
    assert np.max(np.abs(z)) < 4.5
    assert relative(sims.var(axis=1, ddof=1), variance) < 0.15
    # conditional on the modes, rows vary only by the residual
    conditional = sleep.simulate(2000, seed=1, re_form=None).to_numpy()
    assert np.allclose(conditional.mean(axis=1), sleep.fitted, atol=5 * sleep.sigma / np.sqrt(2000))
    assert relative(conditional.std(axis=1, ddof=1), np.full(design.nobs, sleep.sigma)) < 0.1
    with pytest.raises(tm.DataError, match="re_form"):
        sleep.simulate(1, re_form="~ (1 | Subject)")
    with pytest.raises(tm.DataError, match="positive integer"):
        sleep.simulate(0)


def test_glmer_simulate_bootstrap_and_wald_intervals():
    fit = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
                   family="binomial", verbose=False)
    trials = fit.design.weights
    sims = fit.simulate(3000, seed=3, re_form=None).to_numpy()
    assert np.all(np.isclose(sims * trials[:, None], np.rint(sims * trials[:, None])))  # whole counts of trials
    se = np.sqrt(fit.fitted * (1 - fit.fitted) / (trials * sims.shape[1]))
    assert np.max(np.abs(sims.mean(axis=1) - fit.fitted) / se) < 4.5
    boot = fit.bootstrap(40, seed=2, verbose=False)
    assert boot.n_failed == 0 and list(boot.replicates.columns[-1:]) == ["sd_(Intercept)|herd"]
    # a robust spread: period 4 has few cases, so some replicates have a long tail that inflates the SD
    quartiles = boot.quantiles((0.25, 0.75)).loc[fit.fixef.index]
    assert relative((quartiles[0.75] - quartiles[0.25]) / 1.349, fit.fixef_se) < 0.35
    wald = fit.confint("Wald")
    z = 1.959963984540054
    assert relative(wald.loc[fit.fixef.index, "2.5 %"], fit.fixef - z * fit.fixef_se) < 1e-14
    assert wald.loc["sd_(Intercept)|herd"].isna().all()
    assert list(fit.confint("profile", which=["period2"], verbose=False).index) == ["period2"]


def test_glmer_profile_intervals_match_lme4():
    """lme4 refitted with a tight PIRLS tolerance (tools/glmm_confint_references.R). On grouseticks two YEAR limits
    differ by 3e-3 and 4e-3: a glmer fit with YEAR96 held at lme4's limit by an offset has zeta -1.9696, not -1.96,
    so the difference is lme4's (its spline through the profile), and those two are allowed 5e-3."""
    ref = reference("glmm_confint")
    cbpp = tm.glmer(ref["cbpp_binomial_laplace"]["formula"], tm.datasets.load("cbpp"), family="binomial", verbose=False)
    expected = pd.DataFrame(ref["cbpp_binomial_laplace"]["profile"]).set_index("parm")
    ours = cbpp.confint(verbose=False)
    assert list(ours.index) == list(expected.index)
    assert relative(ours, expected) < 1e-3
    data = pd.read_csv(Path(__file__).parent / "reference" / "set2" / "data" / "grouseticks.csv",
                       dtype={"BROOD": str, "LOCATION": str, "YEAR": str})
    grouse = tm.glmer(ref["grouseticks_poisson_crossed"]["formula"], data, family="poisson", verbose=False)
    expected = pd.DataFrame(ref["grouseticks_poisson_crossed"]["profile"]).set_index("parm")
    ours = grouse.confint(verbose=False)
    assert ours.loc["sd_(Intercept)|LOCATION", "2.5 %"] == 0.0 == expected.loc["sd_(Intercept)|LOCATION", "lower"]
    nonzero = expected.drop(index="sd_(Intercept)|LOCATION")
    close = nonzero.drop(index=["YEAR96", "YEAR97"])
    assert relative(ours.loc[close.index], close) < 1e-3
    assert relative(ours.loc[["YEAR96", "YEAR97"]], nonzero.loc[["YEAR96", "YEAR97"]]) < 5e-3
    limit = expected.loc["YEAR96", "lower"]
    held = tm.glmer("TICKS ~ y97 + cHEIGHT + offset(off) + (1 | BROOD) + (1 | LOCATION)",
                    data.assign(y97=(data.YEAR == "97").astype(float), off=limit * (data.YEAR == "96")),
                    family="poisson", verbose=False)
    from tfmixed.results.profile import GlmmProfileLikelihood

    profile = GlmmProfileLikelihood(grouse)
    zeta, _ = profile.zeta(profile.names.index("YEAR96"), limit)
    assert zeta == pytest.approx(-np.sqrt(held.minus2loglik - grouse.minus2loglik), rel=1e-6)
    with pytest.raises(tm.DataError, match="nAGQ = 0"):
        tm.glmer(ref["cbpp_binomial_laplace"]["formula"], tm.datasets.load("cbpp"), family="binomial", nAGQ=0,
                 verbose=False).confint(verbose=False)


# -- predictions ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fixture", [("sleepstudy_reml", "sleep"), ("Penicillin_crossed", "penicillin")])
def test_predictions_match_lme4(name, fixture, request):
    fit = request.getfixturevalue(fixture)
    ref = reference(name)["predict"]
    new = pd.read_csv(EXTRA / f"{name}_newdata.csv", dtype=str)
    if "Days" in new:
        new["Days"] = new["Days"].astype(float)
    known = new.iloc[ref["full_rows"]]
    assert relative(fit.predict(known), ref["full"]) < 1e-6
    assert relative(fit.predict(new, re_form="fixed"), ref["re_form_NA"]) < 1e-6
    assert relative(fit.predict(new, allow_new_levels=True), ref["allow_new_levels"]) < 1e-6
    if "re_form_partial" in ref:
        partial = ref["re_form_partial"]
        assert relative(fit.predict(new, re_form=partial["re_form"], allow_new_levels=True), partial["values"]) < 1e-6


def test_prediction_standard_errors_are_hendersons(penicillin):
    """Against the inverse of the dense mixed-model equations C = [[X'X, X'Z], [Z'X, Z'Z + sigma^2 G^-1]]."""
    fit = penicillin
    X, Z = fit.design.X, fit.design.Z.toarray()
    G = np.diag(np.concatenate([np.full(t.n_levels, g[0, 0]) for t, g in zip(fit.design.terms, fit.covariance_matrices())]))
    s2 = fit.sigma**2
    C = np.block([[X.T @ X, X.T @ Z], [Z.T @ X, Z.T @ Z + s2 * np.linalg.inv(G)]])
    W = np.hstack([X, Z])
    expected = np.sqrt(s2 * np.einsum("ij,jk,ik->i", W, np.linalg.inv(C), W))
    ours = fit.predict(se_fit=True)
    assert relative(ours["se_fit"], expected) < 1e-8
    assert relative(ours["fit"], fit.fitted) < 1e-12
    fixed = fit.predict(re_form="fixed", se_fit=True)
    assert relative(fixed["se_fit"], np.full(fit.nobs, fit.fixef_se.iloc[0])) < 1e-8


def test_prediction_intervals_add_what_the_prediction_does_not_condition_on(penicillin):
    fit = penicillin
    new = pd.DataFrame({"plate": ["a", "zz", "zz"], "sample": ["A", "A", "G"]})
    confidence = fit.predict(new, allow_new_levels=True, interval="confidence", level=0.9)
    prediction = fit.predict(new, allow_new_levels=True, interval="prediction", level=0.9)
    z = 1.6448536269514722
    G_plate, G_sample = (g[0, 0] for g in fit.covariance_matrices())
    unconditioned = np.array([0.0, G_plate, G_plate + G_sample])
    half = z * np.sqrt(confidence["se_fit"] ** 2 + unconditioned + fit.sigma**2)
    assert relative(prediction["upper"] - prediction["fit"], half) < 1e-10
    assert relative(confidence["upper"] - confidence["fit"], z * confidence["se_fit"]) < 1e-10
    # a new level of both factors: only the fixed part is estimated
    assert confidence["se_fit"].iloc[2] == pytest.approx(fit.fixef_se.iloc[0], rel=1e-8)
    with pytest.raises(tm.DataError, match="interval"):
        fit.predict(new, interval="credible", allow_new_levels=True)
    with pytest.raises(tm.DataError, match="level"):
        fit.predict(new, interval="prediction", level=1.5, allow_new_levels=True)
    with pytest.raises(tm.DataError, match="not random terms"):
        fit.predict(new, re_form="~ (1 | batch)")


def test_glmm_prediction_standard_errors_at_the_modes():
    """Link scale: Henderson's equations with the working weights at the modes; response scale: the delta method."""
    fit = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
                   family="binomial", verbose=False)
    X, Z = fit.design.X, fit.design.Z.toarray()
    mode = fit._mode
    w = fit.family.working_weights(mode.mu, mode.eta, fit.objective.pirls.prior)
    G = fit.covariance_matrices()[0][0, 0] * np.eye(Z.shape[1])
    C = np.block([[X.T @ (w[:, None] * X), X.T @ (w[:, None] * Z)], [Z.T @ (w[:, None] * X), Z.T @ (w[:, None] * Z) + np.linalg.inv(G)]])
    W = np.hstack([X, Z])
    expected = np.sqrt(np.einsum("ij,jk,ik->i", W, np.linalg.inv(C), W))
    link = fit.predict(se_fit=True)
    assert relative(link["se_fit"], expected) < 1e-8
    response = fit.predict(type="response", interval="confidence")
    assert relative(response["fit"], fit.fitted) < 1e-12
    assert relative(response["se_fit"], expected * fit.fitted * (1 - fit.fitted)) < 1e-8
    assert np.all((response["lower"] < response["fit"]) & (response["fit"] < response["upper"]))
    assert response["upper"].max() < 1 and response["lower"].min() > 0
    with pytest.raises(tm.DataError, match="confidence"):
        fit.predict(interval="prediction")


# -- F tests ----------------------------------------------------------------------------------------------------
def test_lmertest_type3_tables_on_sleepstudy(sleep):
    ref = reference("sleepstudy_reml")
    for key, ddf, df_tol in [("lmerTest_anova_type3", "Satterthwaite", 1e-4),
                             ("lmerTest_anova_type3_KR", "Kenward-Roger", 1e-3)]:
        expected = pd.DataFrame(ref[key]).set_index("term")
        ours = sleep.anova(type=3, ddf=ddf)
        assert list(ours.index) == list(expected.index)
        for column in ["Sum Sq", "Mean Sq", "F value"]:
            assert relative(ours[column], expected[column]) < 1e-4, (key, column)
        assert (ours["NumDF"] == expected["NumDF"]).all()
        assert relative(ours["DenDF"], expected["DenDF"]) < df_tol
    coef = sleep.coefficient_tests("Kenward-Roger")
    assert relative(coef["df"], pd.Series(ref["KR_coef_df"])) < 1e-3
    assert relative(coef["Std. Error"], pd.Series(ref["KR_coef_se"])) < 1e-4


def test_kenward_roger_df_on_crossed_penicillin(penicillin):
    ref = reference("Penicillin_crossed")
    coef = penicillin.coefficient_tests("Kenward-Roger")
    assert relative(coef["df"], pd.Series(ref["KR_coef_df"])) < 1e-3
    assert relative(coef["Std. Error"], pd.Series(ref["KR_coef_se"])) < 1e-4
    assert penicillin.anova().empty  # intercept only: lmerTest's table is empty too


@pytest.mark.parametrize("model", sorted(reference("cake_ftests")))
def test_lmertest_tables_with_interactions(model):
    ref = reference("cake_ftests")[model]
    data = pd.read_csv(EXTRA / ref["csv"], dtype={"replicate": str, "recipe": str, "temperature": str})
    fit = tm.lmer(ref["formula"], data, verbose=False)
    for key, type_, ddf in [("type3", 3, "Satterthwaite"), ("type1", 1, "Satterthwaite"),
                            ("type3_KR", 3, "Kenward-Roger"), ("type1_KR", 1, "Kenward-Roger")]:
        expected = pd.DataFrame(ref[key]).set_index("term")
        ours = fit.anova(type=type_, ddf=ddf)
        assert list(ours.index) == list(expected.index), key
        assert relative(ours[expected.columns], expected) < 1e-4, key
    coef = fit.coefficient_tests("Kenward-Roger")
    expected = pd.DataFrame(ref["coef_KR"]).set_index("term")
    assert relative(coef["df"], expected["df"]) < 1e-3
    assert relative(coef["Std. Error"], expected["Std. Error"]) < 1e-4


def test_f_test_arguments(sleep):
    with pytest.raises(tm.DataError, match="type"):
        sleep.anova(type=2)
    with pytest.raises(tm.DataError, match="ddf"):
        sleep.anova(ddf="containment")
    ml = tm.lmer(SLEEP, tm.datasets.load("sleepstudy"), REML=False, verbose=False)
    with pytest.raises(tm.DataError, match="REML"):
        ml.anova(ddf="Kenward-Roger")


# -- plots ------------------------------------------------------------------------------------------------------
def test_plots_render(sleep, tmp_path):
    glmm = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
                    family="binomial", verbose=False)
    figures = {
        "ranef": sleep.plot_ranef(), "residuals": sleep.plot_residuals(), "qq": sleep.plot_qq(),
        "qq_ranef": sleep.plot_qq("ranef"), "glmm_ranef": glmm.plot_ranef(level=0.9), "glmm_qq": glmm.plot_qq(),
    }
    for name, figure in figures.items():
        path = tmp_path / f"{name}.png"
        figure.savefig(path)
        assert path.stat().st_size > 5000, name
    panel = figures["ranef"].axes[0]
    assert len(panel.get_yticklabels()) == 18  # one row per subject
    with pytest.raises(tm.DataError, match="grouping factor"):
        sleep.plot_ranef(factor="Days")
    with pytest.raises(tm.DataError, match="which"):
        sleep.plot_qq("fitted")
