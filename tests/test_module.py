"""MixedModule.reset_variances with lme4's variances gives lme4's fixed effects and conditional modes."""

import numpy as np
import pandas as pd
import pytest
from conftest import as_array, load_reference

from tfmixed import MixedModule, ShapeError, SingularCovarianceError, datasets

CASES = {
    "sleepstudy_reml": "sleepstudy",
    "Penicillin_crossed": "Penicillin",
    "Pastes_nested": "Pastes",
    "sleepstudy_uncorr": "sleepstudy",
}


def lme4_covariances(ref, module):
    """G per term of the module from lme4's VarCorr table (variances, then covariances)."""
    varcorr = pd.DataFrame(ref["varcorr"])
    names = []
    seen = {}
    for term in module.design.terms:
        count = seen.get(term.name, 0)
        names.append(term.name if count == 0 else f"{term.name}.{count}")
        seen[term.name] = count + 1
    matrices = []
    for name, term in zip(names, module.design.terms):
        rows = varcorr[varcorr.grp == name]
        G = np.zeros((term.n_cols, term.n_cols))
        for row in rows.itertuples():
            i = term.columns.index(row.var1)
            if isinstance(getattr(row, "var2", None), str):
                j = term.columns.index(row.var2)
                G[i, j] = G[j, i] = row.vcov
            else:
                G[i, i] = row.vcov
        matrices.append(G)
    return matrices


@pytest.mark.parametrize("name", sorted(CASES))
def test_reset_variances_reproduces_lme4(name):
    ref = load_reference(name)
    module = MixedModule.from_formula(ref["formula"], datasets.load(CASES[name]))
    module.reset_variances(lme4_covariances(ref, module), ref["sigma"] ** 2)
    np.testing.assert_allclose(module.beta.numpy()[:, 0], as_array(ref["fixef"]), rtol=1e-6)
    ranef = pd.DataFrame(ref["ranef"])
    frames = module.ranef()
    for row in ranef.itertuples():
        value = frames[row.grpvar].loc[row.grp, row.term]
        assert value == pytest.approx(row.condval, rel=1e-6, abs=1e-8)


def test_seed_interface_on_sleepstudy():
    data = datasets.load("sleepstudy")
    module = MixedModule.from_formula("Reaction ~ 1 + Days + (1 + Days | Subject)", data)
    off_diag = 24.7404 * 5.9221 * 0.066
    module.reset_variances(np.array([[24.7404**2, off_diag], [off_diag, 5.9221**2]]), 25.5918**2)
    assert {v.name.split(":")[0] for v in module.trainable_variables} == {"beta", "b"}
    np.testing.assert_allclose(module.beta.numpy()[:, 0], [251.405105, 10.467286], rtol=1e-6)
    # the seed printed these first predictions (mu, b) for subject 308
    np.testing.assert_allclose(module.ranef()["Subject"].iloc[0], [2.262934, 9.198305], rtol=2e-3)
    sigma2 = module.estimate_sigmasq_epsilon()
    residuals = module.residuals()
    assert sigma2 == pytest.approx(np.var(residuals))
    V = module.get_rnd_effs_variance()
    assert V.shape == (2, 2)
    np.testing.assert_allclose(V, np.cov(module.random_effects_matrices()[0], rowvar=False, ddof=0))


def test_gradient_solve_matches_exact_solve():
    data = datasets.load("sleepstudy")
    G = np.array([[612.1, 9.6], [9.6, 35.07]])
    exact = MixedModule.from_formula("Reaction ~ 1 + Days + (1 + Days | Subject)", data)
    exact.reset_variances(G, 654.94)
    trained = MixedModule.from_formula("Reaction ~ 1 + Days + (1 + Days | Subject)", data)
    trained.reset_variances(G, 654.94, method="gradient", verbose=False)
    np.testing.assert_allclose(trained.beta.numpy(), exact.beta.numpy(), rtol=1e-4)
    np.testing.assert_allclose(trained.b.numpy(), exact.b.numpy(), atol=1e-2)


def test_gradient_mode_traces_its_step_once_across_calls():
    module = MixedModule.from_formula("Reaction ~ 1 + Days + (1 + Days | Subject)", datasets.load("sleepstudy"))
    import tensorflow as tf

    optimizer = tf.keras.optimizers.Adam(0.5)
    module.reset_variances(np.diag([600.0, 30.0]), 650.0, method="gradient", optimizer=optimizer, verbose=False)
    first = module.beta.numpy().copy()
    step = module._steps[id(optimizer)][1]
    traced = step.experimental_get_tracing_count()  # 1, or 2 when the optimizer created its slots in the trace
    module.reset_variances(np.diag([400.0, 20.0]), 600.0, method="gradient", optimizer=optimizer, verbose=False)
    assert step.experimental_get_tracing_count() == traced
    exact = MixedModule.from_formula("Reaction ~ 1 + Days + (1 + Days | Subject)", datasets.load("sleepstudy"))
    exact.reset_variances(np.diag([400.0, 20.0]), 600.0)
    np.testing.assert_allclose(module.beta.numpy(), exact.beta.numpy(), rtol=1e-4)
    assert not np.allclose(first, module.beta.numpy(), rtol=1e-8)


def test_conditional_covariances_match_lme4_condsd():
    ref = load_reference("sleepstudy_reml")
    module = MixedModule.from_formula(ref["formula"], datasets.load("sleepstudy"))
    module.reset_variances(lme4_covariances(ref, module), ref["sigma"] ** 2)
    cov = module.conditional_covariances()[0]
    condsd = pd.DataFrame(ref["ranef"]).groupby("term")["condsd"].first()
    np.testing.assert_allclose(np.sqrt(cov[0, 0, 0]), condsd["(Intercept)"], rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(cov[0, 1, 1]), condsd["Days"], rtol=1e-6)


def test_bad_covariances_are_refused():
    module = MixedModule.from_formula("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
    with pytest.raises(ShapeError, match="2 x 2"):
        module.reset_variances(np.eye(3), 600.0)
    with pytest.raises(SingularCovarianceError, match="positive semi-definite"):
        module.reset_variances(np.array([[1.0, 5.0], [5.0, 1.0]]), 600.0)
    with pytest.raises(SingularCovarianceError, match="singular"):
        module.reset_variances(np.array([[4.0, 2.0], [2.0, 1.0]]), 600.0, method="gradient", verbose=False)
    with pytest.raises(Exception, match="positive"):
        module.reset_variances(np.eye(2), -1.0)
    # singular but PSD G is legal for the exact solve
    module.reset_variances(np.array([[4.0, 2.0], [2.0, 1.0]]), 600.0)
    assert np.all(np.isfinite(module.b.numpy()))
