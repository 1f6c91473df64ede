import warnings

import numpy as np
import pytest
from conftest import load_reference

import tfmixed as tm
from tfmixed import CovarianceCollapseWarning, SingularCovarianceError, datasets

FORMULA = "Reaction ~ 1 + Days + (1 + Days | Subject)"


@pytest.fixture(scope="module")
def seed_start():
    data = datasets.load("sleepstudy")
    return data, dict(G0=[[410.0, 10.0], [10.0, 22.0]], sigma2_0=0.25 * float(np.var(data["Reaction"])))


def test_quick_and_dirty_diagonal_fixed_point(seed_start):
    data, start = seed_start
    ref = load_reference("mackay_sleepstudy")["quick_and_dirty_diag"]
    result = tm.mackay(FORMULA, data, covariance="diagonal", verbose=False, **start)
    assert result.converged and result.status == "converged"
    np.testing.assert_allclose(np.diag(result.G[0]), ref["G_diag"], rtol=1e-6)
    assert result.G[0][0, 1] == 0.0
    assert result.sigma2 == pytest.approx(ref["sigma2"], rel=1e-6)
    np.testing.assert_allclose(result.beta, ref["beta"], rtol=1e-6)
    b = result.module.ranef()["Subject"].loc[ref["subject_order"]].to_numpy()
    np.testing.assert_allclose(b, ref["b_first_two_subjects"], rtol=1e-5)
    assert abs(result.iterations - ref["iterations"]) <= 10
    frame = result.history_frame()
    assert len(frame) == result.iterations and "sigma2" in frame


def test_seed_loop_runs_against_the_module(seed_start):
    """The seed's own for-loop, verbatim apart from the class name."""
    data, start = seed_start
    sleep_reg = tm.MixedModule.from_formula(FORMULA, data)
    sleep_reg.reset_variances(np.array([[410, 10], [10, 22]]), 0.25 * np.var(sleep_reg.design.y))
    for i in range(100):
        sigmasq_epsilon = sleep_reg.estimate_sigmasq_epsilon()
        V = sleep_reg.get_rnd_effs_variance()
        V_diag = np.diag(np.diag(V))
        sleep_reg.reset_variances(V_diag, sigmasq_epsilon)
    ref = load_reference("mackay_sleepstudy")["quick_and_dirty_diag"]
    np.testing.assert_allclose(np.diag(V_diag), ref["G_diag"], rtol=1e-6)


def test_full_covariance_collapse_is_reported_with_the_reference_trace(seed_start):
    data, start = seed_start
    trace = load_reference("mackay_sleepstudy")["quick_and_dirty_full"]["trace"]
    with pytest.warns(CovarianceCollapseWarning, match="correlation -> 1"):
        result = tm.mackay(FORMULA, data, covariance="full", verbose=False, **start)
    assert result.collapsed and not result.converged
    assert len(result.history) == len(trace)
    for step, expected in zip(result.history, trace):
        assert step.correlations[0][0, 1] == pytest.approx(expected["corr"], rel=1e-6)
        assert step.min_eigenvalues[0] == pytest.approx(expected["min_eig"], rel=1e-3, abs=1e-8)
    assert all(np.all(np.isfinite(step.G[0])) for step in result.history)


def test_collapse_can_raise(seed_start):
    data, start = seed_start
    with pytest.raises(SingularCovarianceError, match="collapsed") as info:
        tm.mackay(FORMULA, data, covariance="full", on_collapse="raise", verbose=False, **start)
    assert len(info.value.history) == 8


def test_multi_term_model_and_defaults():
    data = datasets.load("Penicillin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = tm.mackay("diameter ~ 1 + (1 | plate) + (1 | sample)", data, verbose=False)
    assert result.converged and len(result.G) == 2
    fit = tm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", data, verbose=False)
    # quick and dirty comes up short of the REML variances (law of total variance)
    assert result.G[0][0, 0] < fit.covariance_matrices()[0][0, 0]


def test_corrected_methods_through_the_module(seed_start):
    data, start = seed_start
    result = tm.mackay(FORMULA, data, method="em", acceleration="squarem", verbose=False, **start)
    ref = load_reference("mackay_sleepstudy")["em_reml"]
    assert result.converged and result.iterations < 20
    np.testing.assert_allclose(result.G[0], ref["G"], rtol=1e-6)
    np.testing.assert_allclose(result.module.beta.numpy()[:, 0], ref["beta"], rtol=1e-8)
    assert "EM loop converged" in result.report()
    fit = tm.lmer(FORMULA, data, method="em", verbose=False, **start)
    report = fit.report()
    assert report.startswith("em (REML): converged") and "updates" in report
    assert "criterion evaluations" in tm.lmer(FORMULA, data, verbose=False).report()


def test_invalid_arguments(seed_start):
    data, _ = seed_start
    with pytest.raises(tm.DataError):
        tm.mackay(FORMULA, data, covariance="banded")
    with pytest.raises(tm.DataError):
        tm.mackay(FORMULA, data, on_collapse="ignore")
