"""The fit record (fit.optsum): where the optimisation started and ended, its stages and tolerances, the backend;
every tolerance an option (issue 28)."""

import numpy as np
import pytest

import tfmixed as tm
from tfmixed.errors import DataError


def test_lmer_record():
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
    record = fit.optsum
    np.testing.assert_array_equal(record.initial, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(record.final, fit.theta)
    assert record.theta_names == ("Subject.(Intercept)", "Subject.Days.(Intercept)", "Subject.Days")
    assert record.evaluations == fit.optimum.n_evaluations == record.stages["evaluations"].sum()
    assert record.stages["stage"].tolist() == ["newton"]
    assert record.criterion == pytest.approx(fit.deviance, rel=1e-12)
    assert record.tolerances["decrement_tol"] == 1e-7 and record.final_beta is None
    assert record.strategies["backend"] == "exact" and record.strategies["coupling"] in ("dense", "pattern", "sparse", "split")
    assert "Tolerances: gradient_tol 1e-06" in str(record)


def test_glmer_record_holds_beta_apart():
    fit = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
                   family="binomial", verbose=False)
    record = fit.optsum
    assert record.final.size == 1 and record.final_beta.size == 4
    np.testing.assert_allclose(record.final_beta, fit.fixef, rtol=1e-10)
    assert record.stages["stage"].iloc[0] == "nAGQ=0 start" and record.initial_beta is not None


def test_tolerances_are_options():
    data = tm.datasets.load("sleepstudy")
    loose = tm.lmer("Reaction ~ Days + (Days | Subject)", data, verbose=False,
                    optimizer=tm.ProfiledOptions(newton_iterations=0, gradient_tol=1e-3))
    assert "newton" not in loose.optsum.stages["stage"].tolist()
    assert loose.optsum.tolerances["gradient_tol"] == 1e-3
    tight = tm.lmer("Reaction ~ Days + (Days | Subject)", data, verbose=False)
    assert loose.deviance == pytest.approx(tight.deviance, abs=1e-3)
    with pytest.raises(DataError, match="decrement_tol must be a positive number"):
        tm.ProfiledOptions(decrement_tol=-1.0)
    with pytest.raises(DataError, match="max_damping_tries must be an integer"):
        tm.ProfiledOptions(max_damping_tries=1.5)
    with pytest.raises(DataError, match="optimizer"):
        tm.lmer("Reaction ~ Days + (Days | Subject)", data, optimizer={"gradient_tol": 1e-3})
    with pytest.raises(DataError, match="do not apply"):
        tm.lmer("Reaction ~ Days + (Days | Subject)", data, method="em", optimizer=tm.ProfiledOptions())


def test_verbose_summary_shows_the_record():
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
    assert "Fit record (optsum):" in fit.summary(verbose=True)
    assert "Fit record" not in fit.summary()
    glmm = tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", tm.datasets.load("cbpp"),
                    family="binomial", verbose=False)
    assert "nAGQ=0 start" in glmm.summary(verbose=True)


def test_cost_rates_are_kernel_options():
    """The coupling strategy follows the cost model's rates, which are options (not module globals)."""
    data = tm.datasets.load("Penicillin")
    formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"
    cheap_sparse = tm.KernelOptions(dense_coupling_entries=0, sparse_pairs_per_second=1e30)
    cheap_dense = tm.KernelOptions(dense_coupling_entries=0, dense_flops_per_second=1e30)
    sparse = tm.lmer(formula, data, kernel_options=cheap_sparse, verbose=False)
    dense = tm.lmer(formula, data, kernel_options=cheap_dense, verbose=False)
    assert sparse.optsum.strategies["coupling"] == "sparse" and dense.optsum.strategies["coupling"] == "dense"
    assert sparse.deviance == pytest.approx(dense.deviance, rel=1e-12)
    with pytest.raises(DataError, match="dense_flops_per_second must be a positive number"):
        tm.KernelOptions(dense_flops_per_second=0)


def test_refits_keep_the_fits_optimizer_options():
    from tfmixed.refit import refit

    options = tm.ProfiledOptions(newton_iterations=0, gradient_tol=1e-4)
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False, optimizer=options)
    ml = refit(fit, reml=False)
    assert ml.optsum.tolerances["gradient_tol"] == 1e-4 and "newton" not in ml.optsum.stages["stage"].tolist()


def test_glmer_record_and_options():
    cbpp = tm.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    fit = tm.glmer(formula, cbpp, family="binomial", verbose=False)
    assert fit.optsum.evaluations == fit.optsum.stages["evaluations"].sum()
    np.testing.assert_array_equal(fit.optsum.initial, [1.0])  # stage 1's start, lme4's
    assert fit.optsum.tolerances["stage 1 max_iter"] == 20
    with pytest.raises(DataError, match="do not apply"):
        tm.glmer(formula, cbpp, family="binomial", optimizer=tm.ProfiledOptions(newton_iterations=3))
    loose = tm.glmer(formula, cbpp, family="binomial", verbose=False, optimizer=tm.ProfiledOptions(gradient_tol=1e-3))
    assert loose.optsum.tolerances["gradient_tol"] == 1e-3


def test_option_types():
    with pytest.raises(DataError, match="small_dense_scale must be a non-negative integer"):
        tm.KernelOptions(small_dense_scale="x")
    fit = tm.lmer("Reaction ~ Days + (1 | Subject)", tm.datasets.load("sleepstudy"), REML=0, verbose=0)
    assert fit.reml is False
