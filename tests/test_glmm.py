"""glmer against lme4 1.1-31 on every shared GLMM reference (tests/reference/glmm).

Two references per case:

* ``lme4_default/<id>.json``: lme4's default fit (the shared reference). lme4 takes log|L|^2 of the Laplace
  criterion at the IRLS weights of the previous PIRLS iterate and stops PIRLS at a relative change of 1e-7,
  which moves its criterion by up to 3e-6 relative and its standard errors by up to ~1.5% (cbpp).
* ``<id>.json``: lme4 refitted with ``tolPwrss = 1e-12`` and bobyqa at ``rhoend = 1e-10``
  (tools/glmm_tight_references.R). Its ``exact_laplace`` block holds, at that optimum, the Laplace criterion
  with the determinant at the mode's own weights and the standard errors from its Hessian (lme4's own Hessian
  keeps a bias: a warm-started PIRLS at a neighbouring point stops after one step).

tfmixed computes the exact approximation, so it is held to the tight references at the issue's tolerances
(criterion 1e-6, theta / beta / SEs / modes 1e-4) and must reach a criterion no higher than lme4's default.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tfmixed as tm
from tfmixed.families import get_family
from tfmixed.laplace import GlmmObjective

HERE = Path(__file__).parent / "reference"
CASES = ["cbpp_binomial_laplace", "cbpp_binomial_agq25", "cbpp_proportion_weights", "grouseticks_poisson_crossed",
         "Mmmec_poisson_slope_offset", "guImmun_nAGQ0", "guImmun_laplace"]
_FITS = {}


def load(name):
    default = json.loads((HERE / "glmm" / "lme4_default" / f"{name}.json").read_text())
    tight = json.loads((HERE / "glmm" / f"{name}.json").read_text())
    factors = {column: str for column in default["factor_columns"]}
    data = pd.read_csv(HERE / "set2" / "data" / f"{default['data']}.csv", dtype=factors, keep_default_na=False,
                       na_values=["NA"])
    return default, tight, data


def fitted(name):
    if name not in _FITS:
        default, tight, data = load(name)
        with warnings.catch_warnings():
            warnings.simplefilter("error", tm.ConvergenceWarning)
            fit = tm.glmer(default["formula"], data, family=default["family"], nAGQ=default["nAGQ"],
                           weights=default["weights"], verbose=False)
        _FITS[name] = (default, tight, fit)
    return _FITS[name]


def lme4_criterion(default):
    """lme4's -2 log L on tfmixed's scale: with nAGQ > 1 lme4 leaves out the saturated model's term."""
    scale = default.get("agq_scale") or {}
    return default["minus2logLik"] + scale.get("saturated_minus2logLik", 0.0)


@pytest.mark.parametrize("name", CASES)
def test_criterion(name):
    default, tight, fit = fitted(name)
    assert fit.converged
    exact = (tight.get("exact_laplace") or {}).get("minus2logLik", tight["minus2logLik"])
    assert fit.minus2loglik == pytest.approx(exact, rel=1e-6)
    assert fit.minus2loglik <= lme4_criterion(default) + 1e-7 * abs(exact)
    assert fit.loglik == pytest.approx(-fit.minus2loglik / 2)
    assert fit.aic == pytest.approx(fit.minus2loglik + 2 * default["df"])
    assert fit.bic == pytest.approx(fit.minus2loglik + np.log(default["nobs"]) * default["df"])
    assert fit.deviance == pytest.approx(tight["deviance"], rel=1e-6)
    assert fit.nobs == default["nobs"]


@pytest.mark.parametrize("name", CASES)
def test_parameters_and_standard_errors(name):
    default, tight, fit = fitted(name)
    np.testing.assert_allclose(fit.theta, np.atleast_1d(tight["theta"]), rtol=1e-4, atol=1e-6)
    assert list(fit.fixef.index) == list(tight["fixef"])
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(tight["fixef"].values()), rtol=1e-4, atol=1e-6)
    standard_errors = (tight.get("exact_laplace") or tight)["fixef_se"]
    np.testing.assert_allclose(fit.fixef_se.to_numpy(), list(standard_errors.values()), rtol=1e-4)
    table = fit.coef_table
    np.testing.assert_allclose(table["z value"], fit.fixef / fit.fixef_se)
    assert list(table.columns) == ["Estimate", "Std. Error", "z value", "Pr(>|z|)"]
    # lme4's default run (its tight refit where it warned): the same model to its own accuracy
    lme4_fixef = (default.get("best_alt") or default)["fixef"]
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(lme4_fixef.values()), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("name", CASES)
def test_conditional_modes_and_predictions(name):
    default, tight, fit = fitted(name)
    theirs = pd.DataFrame(tight["ranef"])
    ours = fit.ranef_frame()
    merged = theirs.merge(ours, on=["grpvar", "term", "grp"], suffixes=("_r", "_t"))
    assert len(merged) == len(theirs) == len(ours)
    scale = merged["condsd_r"].max()
    np.testing.assert_allclose(merged["condval_t"], merged["condval_r"], rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(merged["condsd_t"], merged["condsd_r"], rtol=1e-4)
    if not default.get("best_alt"):  # lme4's default run stopped early where it has a tight refit
        head = len(default["fitted_head"])
        np.testing.assert_allclose(fit.fitted[:head], default["fitted_head"], rtol=2e-3)
        np.testing.assert_allclose(fit.predict()[:head], default["linpred_head"], rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(fit.predict(type="response"), fit.fitted)
    assert "Random effects:" in fit.summary() and "Residual" not in fit.summary()
    assert list(fit.varcorr["grp"]) == [row["grp"] for row in default["varcorr"]]


def test_three_ways_of_writing_a_binomial_response_agree():
    _, _, data = load("cbpp_binomial_laplace")
    counts = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", data, verbose=False)
    proportion = tm.glmer("incidence / size ~ period + (1 | herd)", data, weights="size", verbose=False)
    np.testing.assert_allclose(proportion.minus2loglik, counts.minus2loglik, rtol=1e-12)
    np.testing.assert_allclose(proportion.fixef, counts.fixef, rtol=1e-8)
    _, _, immun = load("guImmun_nAGQ0")
    formula = "~ kid2p + mom25p + (1 | comm)"
    factor = tm.glmer("immun" + formula, immun, nAGQ=0, verbose=False)
    numeric = tm.glmer("immun01" + formula, immun, nAGQ=0, verbose=False)
    boolean = tm.glmer("flag" + formula, immun.assign(flag=immun.immun == "Y"), nAGQ=0, verbose=False)
    np.testing.assert_allclose(factor.fixef, numeric.fixef, rtol=1e-12)
    np.testing.assert_allclose(boolean.fixef, numeric.fixef, rtol=1e-12)


@pytest.mark.parametrize("name", ["cbpp_binomial_laplace", "cbpp_binomial_agq25", "Mmmec_poisson_slope_offset",
                                  "guImmun_laplace"])
def test_analytic_gradient_matches_differences(name):
    default, tight, data = load(name)
    design = tm.build_design(default["formula"], data, weights=default["weights"],
                             binomial=default["family"] == "binomial")
    objective = GlmmObjective(design, get_family(default["family"]), n_agq=default["nAGQ"])
    theta = np.atleast_1d(tight["theta"]) * 1.2
    beta = np.array(list(tight["fixef"].values())) + 0.1
    params = np.concatenate([theta, beta])
    analytic = objective.gradient(objective.mode(theta, beta))
    for i in range(params.size):
        step = np.zeros(params.size)
        step[i] = 1e-5
        up, down = params + step, params - step
        difference = (objective.deviance(up[: theta.size], up[theta.size :])
                      - objective.deviance(down[: theta.size], down[theta.size :])) / 2e-5
        assert analytic[i] == pytest.approx(difference, rel=1e-5, abs=1e-5)
    joint = objective.gradient(objective.mode(theta), joint=True)
    for i in range(theta.size):
        step = np.zeros(theta.size)
        step[i] = 1e-5
        difference = (objective.laplace(objective.mode(theta + step)) - objective.laplace(objective.mode(theta - step))) / 2e-5
        assert joint[i] == pytest.approx(difference, rel=1e-5, abs=1e-5)


def test_probit_and_cloglog_links_fit_without_a_closed_form_gradient():
    _, _, data = load("cbpp_binomial_laplace")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    logit = tm.glmer(formula, data, verbose=False)
    for link in ("probit", "cloglog"):
        fit = tm.glmer(formula, data, family="binomial", link=link, verbose=False)
        assert fit.converged and fit.family.link.name == link
        # a different link, the same data: a similar likelihood, probabilities of the same order
        assert abs(fit.minus2loglik - logit.minus2loglik) < 5
        np.testing.assert_allclose(fit.fitted, logit.fitted, atol=0.05)
        assert f"( {link} )" in fit.summary()


def test_predict_on_new_data():
    fit = fitted("cbpp_binomial_laplace")[2]
    new = pd.DataFrame({"period": ["1", "2"], "herd": ["1", "new"]})
    with pytest.raises(tm.NewLevelError):
        fit.predict(new)
    eta = fit.predict(new, allow_new_levels=True)
    assert eta[1] == pytest.approx(fit.fixef["(Intercept)"] + fit.fixef["period2"])
    assert eta[0] == pytest.approx(fit.fixef["(Intercept)"] + fit.ranef["herd"].loc["1", "(Intercept)"])
    np.testing.assert_allclose(fit.predict(new, type="response", allow_new_levels=True), 1 / (1 + np.exp(-eta)))
    with pytest.raises(tm.DataError, match="type"):
        fit.predict(new, type="probability")


def _cbpp():
    return load("cbpp_binomial_laplace")[2]


@pytest.mark.parametrize("call, message", [
    (lambda d: tm.glmer("incidence ~ period + (1 | herd)", d, verbose=False), "0/1 or a proportion"),
    (lambda d: tm.glmer("I(incidence / size) ~ period + (1 | herd)", d, verbose=False), "whole number"),
    (lambda d: tm.glmer("I(-incidence) ~ period + (1 | herd)", d, family="poisson", verbose=False), "negative"),
    (lambda d: tm.glmer("I(incidence / 2) ~ period + (1 | herd)", d, family="poisson", verbose=False), "non-integer"),
    (lambda d: tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | period)", d, nAGQ=5,
                        verbose=False), "single scalar"),
    (lambda d: tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, nAGQ=-1), "nAGQ"),
    (lambda d: tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, nAGQ=1.5), "nAGQ"),
    (lambda d: tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, family="quasipoisson"), "family must be one of"),
    (lambda d: tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, family="gaussian"), "lmer"),
    (lambda d: tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, link="log"), "link"),
    (lambda d: tm.glmer("incidence ~ period + (1 | herd)", d, family="poisson", link="logit"), "link"),
    (lambda d: tm.glmer("cbind(incidence, size - incidence) ~ period", d), "random-effects term"),
    (lambda d: tm.glmer("cbind(incidence, -size) ~ period + (1 | herd)", d), "non-negative counts"),
    (lambda d: tm.glmer("herd3 ~ period + (1 | herd)", d.assign(herd3=d.herd.str[-1].map({"1": "a", "2": "b"}).fillna("c"))),
     "exactly two levels"),
    (lambda d: tm.lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d), "glmer"),
])
def test_bad_inputs_raise_tfmixed_errors(call, message):
    with pytest.raises(tm.TfmixedError, match=message):
        call(_cbpp())


def test_offset_argument_equals_offset_in_the_formula():
    default, _, data = load("Mmmec_poisson_slope_offset")
    in_formula = fitted("Mmmec_poisson_slope_offset")[2]
    formula = default["formula"].replace(" + offset(log(expected))", "")
    as_argument = tm.glmer(formula, data, family="poisson", offset=np.log(data["expected"]), verbose=False)
    assert as_argument.minus2loglik == pytest.approx(in_formula.minus2loglik, rel=1e-10)
    np.testing.assert_allclose(as_argument.fixef, in_formula.fixef, rtol=1e-6)
    new = data.iloc[:3]
    np.testing.assert_allclose(in_formula.predict(new, type="response"), in_formula.fitted[:3], rtol=1e-10)
    with pytest.raises(tm.DataError, match="offset"):
        as_argument.predict(new)


def _small_binary(seed=0):
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(20), 10)
    x = rng.normal(size=200)
    return pd.DataFrame({"x": x, "g": group.astype(str), "noise": rng.integers(0, 2, 200).astype(float)})


def test_separation_is_reported_not_passed_off_as_an_estimate():
    data = _small_binary().assign(y=lambda d: (d.x > 0).astype(float))
    with pytest.warns(tm.ConvergenceWarning, match="separated"):
        fit = tm.glmer("y ~ x + (1 | g)", data, verbose=False)
    assert not fit.converged and fit.optimum.status == "separated"
    assert "optimizer did not converge" in fit.summary()


@pytest.mark.parametrize("family, value", [("binomial", 0.0), ("binomial", 1.0), ("poisson", 0.0)])
def test_a_constant_response_without_a_maximum_raises(family, value):
    data = _small_binary().assign(y=value)
    with pytest.raises(tm.DataError, match="no maximum"):
        tm.glmer("y ~ x + (1 | g)", data, family=family, verbose=False)


def test_no_numpy_warnings_escape_on_a_hard_model():
    data = _small_binary(3).assign(y=lambda d: ((d.x + 3 * (d.g.astype(int) % 2)) > 1).astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", tm.TfmixedWarning)
        tm.glmer("y ~ x + (1 | g)", data, verbose=False)


@pytest.mark.parametrize("name", ["cbpp_binomial_laplace", "cbpp_binomial_agq25", "Mmmec_poisson_slope_offset"])
def test_em_reaches_the_optimisers_maximum(name):
    """EM's map with the exact gradient: the same maximum of the approximate likelihood as the optimiser (the
    Laplace-EM on conditional modes alone would stop ~5% off on cbpp)."""
    default, tight, data = load(name)
    optimiser = fitted(name)[2]
    em = tm.glmer(default["formula"], data, family=default["family"], nAGQ=default["nAGQ"], weights=default["weights"],
                  method="em", verbose=False)
    assert em.converged and em.method == "em"
    assert em.minus2loglik == pytest.approx(optimiser.minus2loglik, rel=1e-10)
    np.testing.assert_allclose(em.theta, optimiser.theta, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(em.fixef, optimiser.fixef, rtol=1e-6)
    np.testing.assert_allclose(em.fixef_se, optimiser.fixef_se, rtol=1e-5)
    np.testing.assert_allclose(em.theta, np.atleast_1d(tight["theta"]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "em", "nAGQ": 0}, "nAGQ >= 1"), ({"tol": 1e-6}, "method='em' only"), ({"method": "mackay"}, "method"),
    ({"method": "em", "tol": 2.0}, "tol"),
])
def test_method_options_are_checked(kwargs, message):
    with pytest.raises(tm.DataError, match=message):
        tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", _cbpp(), verbose=False, **kwargs)


@pytest.mark.parametrize("rest", ["bordered", "sparse"])
def test_structured_kernel_strategies_give_the_same_fit_with_an_analytic_gradient(rest):
    default, _, data = load("grouseticks_poisson_crossed")
    reference = fitted("grouseticks_poisson_crossed")[2]
    fit = tm.glmer(default["formula"], data, family="poisson", verbose=False,
                   kernel_options=tm.KernelOptions(rest=rest))
    mode = fit.objective.mode(fit.theta, fit.fixef.to_numpy())
    assert mode.factor.problem.rest_strategy == rest
    assert fit.objective.gradient(mode) is not None
    assert fit.minus2loglik == pytest.approx(reference.minus2loglik, rel=1e-10)
    np.testing.assert_allclose(fit.fixef_se, reference.fixef_se, rtol=1e-6)


@pytest.mark.parametrize("name, family, formula", [
    ("cbpp_observation_level", "binomial", "cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)"),
    ("grouseticks_observation_level", "poisson", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)"),
])
def test_observation_level_random_effects(name, family, formula):
    """A family without a dispersion parameter identifies one random effect per row (lme4's model of
    overdispersion); references from tools/glmm_observation_level.R (lme4 tight refits)."""
    path = Path(__file__).parent / "reference" / "glmm"
    reference = json.loads((path / f"{name}.json").read_text())
    data = pd.read_csv(path / reference["csv"], dtype={c: str for c in reference["factor_columns"]})
    fit = tm.glmer(formula, data, family=family, verbose=False)
    assert fit.minus2loglik == pytest.approx(reference["minus2logLik"], rel=1e-7)
    assert fit.minus2loglik <= reference["minus2logLik"] + 1e-6
    np.testing.assert_allclose(fit.fixef[list(reference["fixef"])], list(reference["fixef"].values()), rtol=1e-3, atol=1e-4)
    with pytest.raises(tm.DataError, match="confounded with the residual"):
        tm.lmer(formula.replace("cbind(incidence, size - incidence)", "incidence"), data, verbose=False)
