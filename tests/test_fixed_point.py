"""EM, evidence and MacKay fixed points against lmer and lme4 (issue: MacKay's method done right)."""

import warnings

import numpy as np
import pytest
from conftest import LME4_CASES, load_reference, load_data

import tfmixed as tm
from tfmixed import datasets
from tfmixed.estimators.fixed_point import VarianceState, fit_fixed_point
from tfmixed.lmm import problem_from_design

SLEEP = "Reaction ~ 1 + Days + (1 + Days | Subject)"


def quiet_lmer(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tm.SingularFitWarning)
        return tm.lmer(*args, verbose=False, **kwargs)


def assert_same_variances(fit, reference_fit, rtol):
    mine, theirs = fit.varcorr["vcov"].to_numpy(), reference_fit.varcorr["vcov"].to_numpy()
    residual = theirs[-1]
    # relative, with an absolute floor for components at or near 0 (Dyestuff2)
    np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=rtol * 1e-3 * residual)


@pytest.mark.parametrize("acceleration", [None, "squarem"])
@pytest.mark.parametrize("name", sorted(LME4_CASES))
def test_em_reaches_lmer_estimates(name, acceleration):
    ref = load_reference(name)
    data = load_data(LME4_CASES[name])
    profiled = quiet_lmer(ref["formula"], data, REML=ref["REML"])
    em = quiet_lmer(ref["formula"], data, REML=ref["REML"], method="em", acceleration=acceleration)
    assert em.optimum.converged
    assert_same_variances(em, profiled, rtol=1e-5)
    assert em.deviance == pytest.approx(ref["deviance"], rel=1e-6)
    np.testing.assert_allclose(em.fixef, profiled.fixef, rtol=1e-6)


@pytest.mark.parametrize("reml", [True, False])
def test_em_full_covariance_from_the_seed_start(reml):
    data = datasets.load("sleepstudy")
    start = dict(G0=[[410, 10], [10, 22]], sigma2_0=0.25 * float(np.var(data["Reaction"])))
    em = quiet_lmer(SLEEP, data, REML=reml, method="em", **start)
    reference = load_reference("sleepstudy_reml" if reml else "sleepstudy_ml")
    G = em.covariance_matrices()[0]
    lme4 = {(r.get("var1"), r.get("var2")): r["vcov"] for r in reference["varcorr"]}
    np.testing.assert_allclose(G[0, 0], lme4[("(Intercept)", None)], rtol=1e-4)
    np.testing.assert_allclose(G[1, 1], lme4[("Days", None)], rtol=1e-4)
    np.testing.assert_allclose(G[0, 1], lme4[("(Intercept)", "Days")], rtol=1e-3)
    if reml:
        exact = load_reference("mackay_sleepstudy")["em_reml"]
        np.testing.assert_allclose(G, exact["G"], rtol=1e-6)
        assert em.sigma**2 == pytest.approx(exact["sigma2"], rel=1e-6)
        assert abs(em.optimum.iterations - exact["iterations"]) <= 10


def test_squarem_needs_far_fewer_passes():
    data = datasets.load("sleepstudy")
    plain = quiet_lmer(SLEEP, data, method="em")
    fast = quiet_lmer(SLEEP, data, method="em", acceleration="squarem")
    assert fast.optimum.iterations <= 15
    assert fast.optimum.n_evaluations < 0.7 * plain.optimum.n_evaluations
    pastes_plain = quiet_lmer("strength ~ 1 + (1 | batch/cask)", datasets.load("Pastes"), method="em")
    pastes_fast = quiet_lmer("strength ~ 1 + (1 | batch/cask)", datasets.load("Pastes"), method="em", acceleration="squarem")
    assert pastes_fast.optimum.n_evaluations * 3 < pastes_plain.optimum.n_evaluations


def test_em_history_is_monotone_in_the_criterion():
    em = quiet_lmer(SLEEP, datasets.load("sleepstudy"), method="em")
    criterion = em.history["criterion"].to_numpy()
    assert np.all(np.diff(criterion) <= 1e-8 * np.abs(criterion[1:]))
    assert {"sigma2", "Subject (Intercept)", "Subject Days", "Subject (Intercept):Days"} <= set(em.history.columns)


@pytest.mark.parametrize(
    "name, formula",
    [
        ("Dyestuff_reml", None),
        ("sleepstudy_intercept", None),
        ("sleepstudy_uncorr", None),
        ("Penicillin_crossed", None),
    ],
)
def test_evidence_fixed_point_is_reml_for_diagonal_covariances(name, formula):
    ref = load_reference(name)
    data = load_data(LME4_CASES[name])
    evidence = quiet_lmer(ref["formula"], data, method="evidence")
    profiled = quiet_lmer(ref["formula"], data)
    assert evidence.optimum.converged
    assert_same_variances(evidence, profiled, rtol=1e-5)
    lme4 = [row["vcov"] for row in ref["varcorr"]]
    np.testing.assert_allclose(evidence.varcorr["vcov"], lme4, rtol=1e-4)


def test_evidence_on_a_correlated_model_estimates_the_diagonal_model():
    data = datasets.load("sleepstudy")
    evidence = quiet_lmer(SLEEP, data, method="evidence")
    uncorrelated = load_reference("sleepstudy_uncorr")
    G = evidence.covariance_matrices()[0]
    assert G[0, 1] == 0.0
    np.testing.assert_allclose(np.diag(G), [r["vcov"] for r in uncorrelated["varcorr"][:2]], rtol=1e-4)


def test_mackay_method_through_lmer_matches_the_reference():
    data = datasets.load("sleepstudy")
    ref = load_reference("mackay_sleepstudy")["quick_and_dirty_diag"]
    start = dict(G0=[[410, 10], [10, 22]], sigma2_0=0.25 * float(np.var(data["Reaction"])))
    fit = quiet_lmer(SLEEP, data, method="mackay", **start)
    np.testing.assert_allclose(np.diag(fit.covariance_matrices()[0]), ref["G_diag"], rtol=1e-6)
    assert fit.sigma**2 == pytest.approx(ref["sigma2"], rel=1e-6)
    np.testing.assert_allclose(fit.fixef, ref["beta"], rtol=1e-8)
    with pytest.warns(tm.CovarianceCollapseWarning), warnings.catch_warnings():
        warnings.simplefilter("ignore", tm.SingularFitWarning)
        collapsed = tm.lmer(SLEEP, data, method="mackay", covariance="full", verbose=False, **start)
    assert collapsed.optimum.status == "collapsed" and not collapsed.converged


def test_plot_history_side_by_side():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    data = datasets.load("sleepstudy")
    em = quiet_lmer(SLEEP, data, method="em")
    mackay = quiet_lmer(SLEEP, data, method="mackay")
    figure = em.plot_history(mackay, labels=["EM", "MacKay"])
    axes = figure.axes
    assert len(axes) == 5 and [line.get_label() for line in axes[0].lines] == ["EM", "MacKay"]


def test_invalid_method_arguments():
    data = datasets.load("sleepstudy")
    with pytest.raises(tm.DataError, match="method"):
        tm.lmer(SLEEP, data, method="newton", verbose=False)
    with pytest.raises(tm.DataError, match="acceleration"):
        tm.lmer(SLEEP, data, method="em", acceleration="anderson-x", verbose=False)
    with pytest.raises(tm.ShapeError):
        tm.lmer(SLEEP, data, method="em", G0=np.eye(3), verbose=False)
    problem = problem_from_design(tm.build_design(SLEEP, data))
    with pytest.raises(tm.SingularCovarianceError):
        fit_fixed_point(problem, VarianceState([np.array([[1.0, 3.0], [3.0, 1.0]])], 100.0), verbose=False)


def test_law_of_total_variance_at_the_reml_estimates():
    """docs/mackay.md: mean_j b_j b_j' + mean_j Cov(b_j | y) equals G exactly at the REML optimum."""
    fit = quiet_lmer(SLEEP, datasets.load("sleepstudy"), method="em", tol=1e-13)
    G = fit.covariance_matrices()[0]
    b = fit.ranef["Subject"].to_numpy()
    factor = VarianceState([G], fit.sigma**2).factor(fit.problem)
    T = factor.factors[0]
    conditional = fit.sigma**2 * T @ factor.inverse_block_sums(include_fixed=True)[0] @ T.T / len(b)
    np.testing.assert_allclose(b.T @ b / len(b) + conditional, G, rtol=1e-8)
    np.testing.assert_allclose(b.T @ b / len(b), [[440.475, 29.324], [29.324, 28.106]], atol=1e-3)
