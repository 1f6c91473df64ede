"""lme4 1.1-31 references, set 2: prior weights, offsets, factor slopes, nested and partially crossed designs,
and the ill-scaled models on which lme4's default optimiser stops early.

Where lme4's tight refit (``best_alt``: bobyqa / nloptwrap at 1e-12..1e-14) reached a lower criterion than its
default run, the refit is the reference (README-set2.md; for Sitka and Spruce lme4 warned, for the others the
default stopped 1e-12..1e-10 short, which on a flat optimum moves variances by up to 1e-3). Our criterion must
then be no higher than the refit's.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tfmixed as tm

SET2 = Path(__file__).parent / "reference" / "set2"
SHARED_DATA = {"sleepstudy": "sleepstudy", "Penicillin": "Penicillin"}
CASES = [
    "sleepstudy_weights_reml", "sleepstudy_weights_ml", "sleepstudy_offset_formula", "sleepstudy_offset_arg",
    "Penicillin_offset_arg", "Gcsemv_factor_slope", "Sitka_illscaled", "Spruce_illscaled_ml",
    "egsingle_nested_slope", "egsingle_slopes_both_ml", "star_crossed_slope",
    # R's formula syntax: I() with ^, poly(), "- 1" after a random term, interaction naming, factor()
    "sleepstudy_I_Days2", "sleepstudy_poly2", "sleepstudy_poly2_ml", "sleepstudy_minus1", "bdf_3way_naming",
    "Milk_factor_numeric",
]
SYNTAX_CASES = CASES[-6:]
CASES.append("InstEval_crossed")  # the real InstEval (tfmixed.datasets), 73,421 rows: about 3 s; stores no ranef


def reference_and_data(name):
    ref = json.loads((SET2 / f"{name}.json").read_text())
    csv = ref.get("csv") or ""
    if csv.startswith("shared") or not csv:
        data = tm.datasets.load(ref["data"])
    else:
        factors = {column: str for column in ref.get("factor_columns") or []}
        data = pd.read_csv(SET2 / csv, dtype=factors, keep_default_na=False, na_values=["NA"])
    return ref, data


def target(ref):
    """lme4's tight refit where it found a lower criterion than the default run, else the default run."""
    best = ref.get("best_alt")
    if best and best["deviance"] < ref["deviance"]:
        return best
    return ref


_FITS = {}


def fitted(name):
    if name not in _FITS:
        ref, data = reference_and_data(name)
        with warnings.catch_warnings():
            warnings.simplefilter("error", tm.ConvergenceWarning)
            warnings.filterwarnings("ignore", "dropped", tm.TfmixedWarning)
            fit = tm.lmer(ref["formula"], data, REML=ref["REML"], weights=ref.get("weights"),
                          offset=ref.get("offset_argument"), missing="drop", verbose=False)
        _FITS[name] = (ref, target(ref), fit)
    return _FITS[name]


def named(value):
    return pd.Series(value) if isinstance(value, dict) else pd.Series([value])


@pytest.mark.parametrize("name", CASES)
def test_criterion_and_loglik(name):
    ref, best, fit = fitted(name)
    assert fit.converged
    assert fit.deviance <= best["deviance"] + 1e-6 * abs(best["deviance"])
    assert fit.deviance == pytest.approx(best["deviance"], rel=1e-6)
    assert fit.loglik == pytest.approx(best["logLik"], rel=1e-6)
    assert fit.nobs == ref["nobs"]


@pytest.mark.parametrize("name", CASES)
def test_variances_fixed_effects_and_standard_errors(name):
    _, best, fit = fitted(name)
    theirs = pd.DataFrame(best["varcorr"])
    np.testing.assert_allclose(fit.varcorr["vcov"], theirs["vcov"], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(fit.sigma, best["sigma"], rtol=1e-4)
    fixef = named(best["fixef"])
    np.testing.assert_allclose(fit.fixef[fixef.index], fixef, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(fit.fixef_se[fixef.index], named(best["fixef_se"]), rtol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_satterthwaite_df(name):
    _, best, fit = fitted(name)
    theirs = named(best["satterthwaite_df"])
    np.testing.assert_allclose(fit.satterthwaite_df[theirs.index], theirs, rtol=1e-4)


@pytest.mark.parametrize("name", [c for c in CASES if c not in ("Sitka_illscaled", "Spruce_illscaled_ml", "InstEval_crossed")])
def test_conditional_modes_and_sds(name):
    ref, best, fit = fitted(name)
    # lme4's tight refits store no ranef: the modes are compared with its default run, looser where that run
    # stopped short of the refit's criterion
    theirs = pd.DataFrame(ref["ranef"])
    ours = fit.ranef_frame()
    merged = theirs.merge(ours, on=["grpvar", "term", "grp"], suffixes=("_lme4", ""))
    assert len(merged) == len(theirs)
    tolerance = 1e-4 if best is ref else 2e-3  # a default run that stopped short is itself off by ~1e-4
    np.testing.assert_allclose(merged["condval"], merged["condval_lme4"], rtol=tolerance, atol=tolerance * merged["condval_lme4"].abs().max())
    np.testing.assert_allclose(merged["condsd"], merged["condsd_lme4"], rtol=tolerance)


def test_fitted_values_include_the_offset():
    ref, _, fit = fitted("Penicillin_offset_arg")
    np.testing.assert_allclose(fit.fitted[: len(ref["fitted_head"])], ref["fitted_head"], rtol=1e-6)
    np.testing.assert_allclose(fit.residuals[: len(ref["resid_head"])], ref["resid_head"], rtol=1e-5, atol=1e-8)


def test_offset_in_formula_equals_offset_argument_and_predicts_on_new_data():
    _, _, by_formula = fitted("sleepstudy_offset_formula")
    _, _, by_argument = fitted("sleepstudy_offset_arg")
    assert by_formula.deviance == pytest.approx(by_argument.deviance, rel=1e-12)
    new = pd.DataFrame({"Days": [0.0, 5.0], "Subject": ["308", "308"]})
    expected = by_formula.fixef["(Intercept)"] + by_formula.fixef["Days"] * new.Days + 2 * new.Days
    expected += by_formula.ranef["Subject"].loc["308", "(Intercept)"] + by_formula.ranef["Subject"].loc["308", "Days"] * new.Days
    np.testing.assert_allclose(by_formula.predict(new), expected, rtol=1e-12)
    with pytest.raises(tm.DataError, match="offset"):
        by_argument.predict(new)


def test_weighted_fits_say_so_and_refuse_negative_weights():
    """(lme4's logLik with its + sum(log w) / 2 is checked in test_criterion_and_loglik.)"""
    _, _, fit = fitted("sleepstudy_weights_ml")
    assert "Weights" in fit.summary()
    with pytest.raises(tm.DataError, match="non-negative"):
        tm.lmer("Reaction ~ Days + (1 | Subject)", tm.datasets.load("sleepstudy"), weights=-np.ones(180), verbose=False)


@pytest.mark.parametrize("name", SYNTAX_CASES)
def test_r_formula_syntax_gives_lme4s_names_matrix_and_predictions(name):
    ref, _, fit = fitted(name)
    assert fit.design.fixed_names == list(named(ref["fixef"]).index)
    np.testing.assert_allclose(fit.design.X[: len(ref["model_matrix_head"])], ref["model_matrix_head"], rtol=1e-10, atol=1e-12)
    _, data = reference_and_data(name)
    np.testing.assert_allclose(fit.predict(data.iloc[:25]), fit.fitted[:25], rtol=1e-10)


def test_i_with_a_power_is_not_xor():
    """formulaic reads ^ as XOR; in R's I() it is a power (Days^2, not Days XOR 2)."""
    _, _, fit = fitted("sleepstudy_I_Days2")
    days = fit.design.X[:, 1]
    np.testing.assert_array_equal(fit.design.X[:, 2], days**2)


@pytest.mark.parametrize("name", ["sleepstudy_weights_reml", "sleepstudy_weights_ml", "sleepstudy_offset_arg"])
def test_em_reaches_the_weighted_and_offset_optimum(name):
    ref, best, fit = fitted(name)
    _, data = reference_and_data(name)
    em = tm.lmer(ref["formula"], data, REML=ref["REML"], weights=ref.get("weights"), offset=ref.get("offset_argument"),
                 method="em", acceleration="squarem", verbose=False)
    assert em.deviance == pytest.approx(best["deviance"], rel=1e-9)
    np.testing.assert_allclose(em.varcorr["vcov"], pd.DataFrame(best["varcorr"])["vcov"], rtol=1e-4)


#: the most evaluations each profiled fit may take: a little above those measured on 2026-12-01 with the Newton
#: stage on the average information (L-BFGS-B took 14, 33, 44, 37, 24 and 20), so that a change of the search
#: that costs evaluations shows here
EVALUATIONS_AT_MOST = {"InstEval_crossed": 8, "star_crossed_slope": 20, "Sitka_illscaled": 24, "Spruce_illscaled_ml": 22,
                       "sleepstudy_weights_reml": 14, "egsingle_nested_slope": 16}


@pytest.mark.parametrize("name", sorted(EVALUATIONS_AT_MOST))
def test_the_profiled_fit_takes_few_evaluations(name):
    # measured: InstEval 7, star 17, Sitka 20, Spruce 19, sleepstudy with weights 12, egsingle 14
    _, _, fit = fitted(name)
    assert fit.optimum.n_evaluations <= EVALUATIONS_AT_MOST[name]
