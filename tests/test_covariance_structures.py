"""Covariance structures on the random-effects term: the maps, their derivatives, the formula syntax, and fits
that must equal fits of equivalent unstructured models."""

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import solve_toeplitz

import tfmixed as tm
from tfmixed.covariance_structures import STRUCTURES, CovarianceParameters, structure
from tfmixed.errors import DataError, FormulaError
from tfmixed.formula import parse_formula
from tfmixed.kernels.covariance import lower_indices


def _perturbed(s, seed=0):
    rng = np.random.default_rng(seed)
    return s.start() + rng.uniform(0.1, 0.6, s.n_params)


@pytest.mark.parametrize("code", sorted(STRUCTURES))
def test_factor_jacobian_matches_differences(code):
    s = structure(code, 4)
    params = _perturbed(s)
    rows, cols = lower_indices(4)
    numeric = np.column_stack([
        (s.factor(params + 1e-6 * e)[rows, cols] - s.factor(params - 1e-6 * e)[rows, cols]) / 2e-6
        for e in np.eye(s.n_params)
    ])
    np.testing.assert_allclose(s.factor_jacobian(params), numeric, atol=1e-8)


@pytest.mark.parametrize("code", sorted(STRUCTURES))
def test_natural_values_round_trip(code):
    s = structure(code, 3)
    params = _perturbed(s, seed=1)
    np.testing.assert_allclose(s.from_natural(s.to_natural(params)), params, rtol=1e-10)
    G = s.factor(params) @ s.factor(params).T
    natural = s.to_natural(params)
    sds = natural[s.natural_is_sd()]
    expected = np.sqrt(np.diag(G))
    np.testing.assert_allclose(sds, expected if sds.size == 3 else expected[:1], rtol=1e-12)


def test_correlation_patterns():
    ar1 = structure("ar1", 4)
    params = ar1.from_natural(np.array([2.0, -0.6]))
    G = ar1.factor(params) @ ar1.factor(params).T
    lags = np.abs(np.subtract.outer(np.arange(4), np.arange(4)))
    np.testing.assert_allclose(G, 4.0 * (-0.6) ** lags, atol=1e-12)

    cs = structure("cs", 3)
    params = cs.from_natural(np.array([1.0, 2.0, 3.0, 0.25]))
    G = cs.factor(params) @ cs.factor(params).T
    sd = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(G, np.outer(sd, sd) * (0.75 * np.eye(3) + 0.25), atol=1e-12)
    assert cs.natural_lower()[-1] == pytest.approx(-0.5)


def test_toeplitz_partial_autocorrelations():
    toep = structure("toep", 5)
    partial = np.array([0.7, -0.4, 0.3, 0.5])
    params = toep.from_natural(np.concatenate([np.ones(5), partial]))
    R = toep.factor(params) @ toep.factor(params).T
    assert np.linalg.eigvalsh(R)[0] > 0
    rho = R[0]
    # the last coefficient of each order-m Yule-Walker solve is the partial autocorrelation of lag m
    recovered = [solve_toeplitz(rho[:m], rho[1 : m + 1])[-1] for m in range(1, 5)]
    np.testing.assert_allclose(recovered, partial, atol=1e-12)
    assert toep.structure_parameters(params)["rho1"] == pytest.approx(0.7)


def test_singularity_and_evenness():
    assert structure("ar1", 3).is_singular(np.array([0.0, 0.3]))
    assert structure("ar1", 3).is_singular(np.array([1.0, 500.0]))  # rho within 1e-4 of 1
    assert not structure("cs", 3).is_singular(np.array([1.0, 1.0, 1.0, 0.0]))
    assert structure("diag", 2).even().all() and not structure("cs", 2).even().any()
    assert structure("cs", 2).canonical(np.array([-1.0, 1.0, 0.0])) is None
    cs = structure("cs", 3)
    flipped = cs.canonical(np.array([-1.0, -2.0, -0.5, 0.3]))
    np.testing.assert_allclose(cs.factor(flipped) @ cs.factor(flipped).T,
                               cs.factor(np.array([-1.0, -2.0, -0.5, 0.3])) @ cs.factor(np.array([-1.0, -2.0, -0.5, 0.3])).T)
    assert flipped.tolist()[:3] == [1.0, 2.0, 0.5]
    assert structure("us", 2).canonical(np.array([-1.0, 0.5, 2.0])).tolist() == [1.0, -0.5, 2.0]


def test_parameters_chain_rule_and_names():
    parameters = CovarianceParameters([structure("us", 2), structure("ar1", 3)])
    theta = np.array([1.0, 0.2, 0.5, 2.0, 0.3])
    J = parameters.jacobian(theta)
    assert J.shape == (3 + 6, 5)
    g = np.arange(9.0)
    np.testing.assert_allclose(parameters.chain(g, theta), J.T @ g)
    np.testing.assert_allclose(J[:3, :3], np.eye(3))


def test_formula_syntax():
    parsed = parse_formula("y ~ x + ar1(0 + factor(t) | g) + cs(x | h) + (1 | k)")
    assert [(t.structure, t.name) for t in parsed.random] == [("ar1", "g"), ("cs", "h"), ("us", "k")]
    assert [t.structure for t in parse_formula("y ~ toep(0 + f | a/b)").random] == ["toep", "toep"]
    with pytest.raises(FormulaError, match="'\\|\\|' already"):
        parse_formula("y ~ ar1(x || g)")
    with pytest.raises(FormulaError, match="unknown covariance structure"):
        structure("ou", 2)
    with pytest.raises(FormulaError, match="at least two columns"):
        structure("ar1", 1)


def _machines_like(seed=3):
    """Six workers, three machines, three replicates (the layout of nlme::Machines), simulated."""
    rng = np.random.default_rng(seed)
    rows = []
    worker_effect = rng.normal(0, 5, 6)
    cell = rng.normal(0, 3, (6, 3))
    for w in range(6):
        for m, machine in enumerate("ABC"):
            for _ in range(3):
                rows.append((f"W{w}", machine, 50 + 5 * m + worker_effect[w] + cell[w, m] + rng.normal(0, 1)))
    return pd.DataFrame(rows, columns=["Worker", "Machine", "score"])


@pytest.mark.parametrize("reml", [True, False])
def test_homogeneous_structures_equal_nested_models(reml):
    data = _machines_like()
    nested = tm.lmer("score ~ Machine + (1 | Worker) + (1 | Worker:Machine)", data, REML=reml, verbose=False)
    homcs = tm.lmer("score ~ Machine + homcs(0 + Machine | Worker)", data, REML=reml, verbose=False)
    assert homcs.deviance == pytest.approx(nested.deviance, abs=1e-7)
    var = nested.varcorr.set_index("grp")["vcov"]
    total = var["Worker"] + var["Worker:Machine"]
    assert homcs.sdcor["sd_homcs|Worker"] == pytest.approx(np.sqrt(total), rel=1e-5)
    assert homcs.sdcor["rho_homcs|Worker"] == pytest.approx(var["Worker"] / total, rel=1e-5)
    np.testing.assert_allclose(homcs.fixef, nested.fixef, rtol=1e-7)

    cells = tm.lmer("score ~ Machine + (1 | Worker:Machine)", data, REML=reml, verbose=False)
    homdiag = tm.lmer("score ~ Machine + homdiag(0 + Machine | Worker)", data, REML=reml, verbose=False)
    assert homdiag.deviance == pytest.approx(cells.deviance, abs=1e-7)


def test_diag_and_us_equal_lme4_spellings():
    sleep = tm.datasets.load("sleepstudy")
    split = tm.lmer("Reaction ~ Days + (Days || Subject)", sleep, verbose=False)
    diag = tm.lmer("Reaction ~ Days + diag(Days | Subject)", sleep, verbose=False)
    assert diag.deviance == pytest.approx(split.deviance, abs=1e-7)
    np.testing.assert_allclose(diag.sdcor.to_numpy(), split.sdcor.to_numpy(), rtol=1e-5)
    assert list(diag.sdcor.index) == ["sd_(Intercept)|Subject", "sd_Days|Subject", "sigma"]
    plain = tm.lmer("Reaction ~ Days + (Days | Subject)", sleep, verbose=False)
    us = tm.lmer("Reaction ~ Days + us(Days | Subject)", sleep, verbose=False)
    np.testing.assert_array_equal(us.theta, plain.theta)


def _sleep_by_day():
    sleep = tm.datasets.load("sleepstudy")
    return sleep.assign(dayf=[f"d{day}" for day in sleep.Days])


@pytest.mark.parametrize("code", ["ar1", "cs", "toep"])
def test_structured_gradient_matches_differences(code):
    formula = f"Reaction ~ Days + {code}(0 + dayf | Subject)"
    data = _sleep_by_day()
    if code != "ar1":  # identified with replicates per subject and day only
        data = pd.concat([data, data.assign(Reaction=data.Reaction + np.random.default_rng(2).normal(0, 20, len(data)))])
    fit = tm.lmer(formula, data, verbose=False)
    objective = fit.objective
    theta = fit.theta + 0.05
    _, gradient = objective.value_and_gradient(theta)
    steps = 1e-6 * np.maximum(1.0, np.abs(theta))
    numeric = [(objective(theta + h * e) - objective(theta - h * e)) / (2 * h) for h, e in zip(steps, np.eye(theta.size))]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-5)


def test_one_observation_per_cell_needs_a_correlation():
    data = _sleep_by_day()
    fit = tm.lmer("Reaction ~ Days + ar1(0 + dayf | Subject)", data, verbose=False)
    assert fit.converged and not fit.is_singular
    assert 0 < fit.structure_parameters["value"].iloc[0] < 1
    for code in ("diag", "homdiag", "homcs", "us", "cs", "toep"):
        with pytest.raises(DataError, match="check.nobs.vs.nRE"):
            tm.lmer(f"Reaction ~ Days + {code}(0 + dayf | Subject)", data, verbose=False)
    two_days = data[data.dayf.isin(["d0", "d5"])]  # ar1 over two columns: three moments, three parameters
    with pytest.raises(DataError, match="check.nobs.vs.nRE"):
        tm.lmer("Reaction ~ Days + ar1(0 + dayf | Subject)", two_days, verbose=False)


def test_structured_options_that_do_not_apply():
    data = _sleep_by_day()
    with pytest.raises(DataError, match="method='profiled'"):
        tm.lmer("Reaction ~ Days + ar1(0 + dayf | Subject)", data, method="em", verbose=False)
    fit = tm.lmer("Reaction ~ Days + ar1(0 + dayf | Subject)", data, verbose=False)
    with pytest.raises(DataError, match="Satterthwaite"):
        fit.coefficient_tests("Kenward-Roger")


def test_summary_prints_structure_parameters():
    fit = tm.lmer("Reaction ~ Days + ar1(0 + dayf | Subject)", _sleep_by_day(), verbose=False)
    text = fit.summary()
    rho = fit.structure_parameters["value"].iloc[0]
    assert f"{rho:.2f} (ar1)" in text
    assert fit.theta_names == ["Subject.sd_ar1", "Subject.z(rho_ar1)"]
    assert list(fit.sdcor.index) == ["sd_ar1|Subject", "rho_ar1|Subject", "sigma"]


def test_likelihood_ratio_between_structures():
    data = _machines_like()
    ar1 = tm.lmer("score ~ Machine + ar1(0 + Machine | Worker)", data, REML=False, verbose=False)
    toep = tm.lmer("score ~ Machine + toep(0 + Machine | Worker)", data, REML=False, verbose=False)
    # toep nests ar1 (equal SDs, partial autocorrelations (rho, 0)): started at ar1's optimum it can only go lower,
    # and the default start must reach the same optimum
    s, rho = ar1.sdcor["sd_ar1|Worker"] / ar1.sigma, ar1.sdcor["rho_ar1|Worker"]
    nested = toep.objective.covariance.structures[0].from_natural(np.array([s, s, s, rho, 0.0]))
    from_ar1 = tm.lmer("score ~ Machine + toep(0 + Machine | Worker)", data, REML=False, verbose=False, start=nested)
    assert from_ar1.deviance <= ar1.deviance + 1e-8
    assert toep.deviance == pytest.approx(from_ar1.deviance, abs=1e-6)
    table = tm.anova(ar1, toep).table
    assert table["Df"].tolist()[-1] == toep.n_params - ar1.n_params == 3


def _dense_reml(fit) -> float:
    """The REML criterion from dense n x n matrices at the fit's estimates, independent of the kernel:
    (n - p) log(2 pi) + log|V| + log|X'V^-1 X| + r'V^-1 r, V = Z G Z' + sigma^2 I."""
    design = fit.design
    Z = design.Z.toarray()
    G = np.zeros((Z.shape[1], Z.shape[1]))
    for term, s, block in zip(design.terms, design.term_slices, fit.covariance_matrices()):
        G[s, s] = np.kron(np.eye(term.n_levels), block)
    V = Z @ G @ Z.T + fit.sigma**2 * np.eye(design.nobs)
    X, y = design.X, design.y
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    r = y - X @ beta
    n, p = X.shape
    return float((n - p) * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(X.T @ Vi @ X)[1]
                 + r @ Vi @ r)


def test_sleepstudy_ar1_beats_glmmtmb_boundary_stop():
    """glmmTMB 1.1.5 from its default start stops this model at sigma -> 0, REML criterion 1739.2060 ('singular
    convergence'; ``fit_from_default_start`` in tests/reference/covstruct/sleepstudy_ar1_reml.json); the
    interior optimum is 5 units lower, and the dense criterion there confirms the kernel's."""
    fit = tm.lmer("Reaction ~ Days + ar1(0 + dayf | Subject)", _sleep_by_day(), verbose=False)
    assert fit.deviance == pytest.approx(_dense_reml(fit), rel=1e-11)
    assert fit.deviance < 1739.2060152220117 - 5
    assert fit.sigma > 10 and fit.converged


@pytest.mark.parametrize("code", ["ar1", "cs"])
def test_iterative_backend_reaches_the_exact_optimum(code):
    data = _sleep_by_day()
    if code == "cs":  # identified with replicates per subject and day only
        data = pd.concat([data, data.assign(Reaction=data.Reaction + np.random.default_rng(2).normal(0, 20, len(data)))])
    formula = f"Reaction ~ Days + {code}(0 + dayf | Subject)"
    exact = tm.lmer(formula, data, backend="exact", verbose=False)
    iterative = tm.lmer(formula, data, backend="iterative", verbose=False)
    assert iterative.converged
    np.testing.assert_allclose(iterative.sdcor, exact.sdcor, rtol=5e-3)
    assert iterative.deviance == pytest.approx(exact.deviance, rel=1e-4)


def test_glmer_structured_profile():
    cbpp = tm.datasets.load("cbpp")
    fit = tm.glmer("cbind(incidence, size - incidence) ~ period + ar1(0 + period | herd)", cbpp,
                   family="binomial", verbose=False)
    intervals = fit.confint(verbose=False)
    rho = fit.sdcor["rho_ar1|herd"]
    assert intervals.loc["rho_ar1|herd", "2.5 %"] < rho < intervals.loc["rho_ar1|herd", "97.5 %"]
    assert -1 < intervals.loc["rho_ar1|herd", "2.5 %"] and intervals.loc["rho_ar1|herd", "97.5 %"] < 1
    # each limit is where the profiled deviance has risen by the chi-square quantile (zeta = -+1.96)
    from tfmixed.results.profile import profile_likelihood

    profile = profile_likelihood(fit)
    index = profile.names.index("rho_ar1|herd")
    for limit, z in ((intervals.loc["rho_ar1|herd", "2.5 %"], -1.959964), (intervals.loc["rho_ar1|herd", "97.5 %"], 1.959964)):
        assert profile.zeta(index, limit)[0] == pytest.approx(z, abs=1e-4)


def test_prediction_at_an_unseen_column_level_is_refused():
    """ar1(0 + dayf | Subject) has no column for a day it was not fitted on: predicting there would drop that
    day's random effect and its variance silently."""
    data = _sleep_by_day()
    fit = tm.lmer("Reaction ~ Days + ar1(0 + dayf | Subject)", data, verbose=False)
    new = pd.DataFrame({"Days": [10], "dayf": ["d10"], "Subject": [data.Subject.iloc[0]]})
    with pytest.raises(DataError, match="'d10'.*random term of 'Subject'"):
        fit.predict(new)
    known = new.assign(dayf="d9", Days=9)
    assert np.isfinite(fit.predict(known)).all()


def test_near_a_bound_is_relative_to_the_standard_deviations():
    from tfmixed.objective import bounded_scale

    parameters = CovarianceParameters([structure("ar1", 3)])
    theta = np.array([2.0, 1e7])  # rho = 1 - 5e-15: z is huge, the SD is not small
    assert bounded_scale(theta, parameters.lower) == 2.0
    probes = parameters.correlation_probes(theta, (1e-3, 1e-2))
    rhos = [structure("ar1", 3).to_natural(p)[1] for p in probes]
    np.testing.assert_allclose(rhos, [1 - 2e-3, 1 - 2e-2])
    assert all(p[0] == 2.0 for p in probes)
    assert parameters.correlation_probes(np.array([2.0, 0.3]), (1e-3,)) == []


def test_mackay_refuses_a_structure():
    with pytest.raises(DataError, match="unstructured covariances"):
        tm.mackay("Reaction ~ Days + ar1(0 + dayf | Subject)", _sleep_by_day())


def test_kenward_roger_for_structures_linear_in_their_variances():
    sleep = tm.datasets.load("sleepstudy")
    split = tm.lmer("Reaction ~ Days + (Days || Subject)", sleep, verbose=False).coefficient_tests("Kenward-Roger")
    diag = tm.lmer("Reaction ~ Days + diag(Days | Subject)", sleep, verbose=False).coefficient_tests("Kenward-Roger")
    np.testing.assert_allclose(diag["df"], split["df"], rtol=1e-6)
    np.testing.assert_allclose(diag["Std. Error"], split["Std. Error"], rtol=1e-6)
    cells = tm.lmer("score ~ Machine + (1 | Worker:Machine)", _machines_like(), verbose=False)
    homdiag = tm.lmer("score ~ Machine + homdiag(0 + Machine | Worker)", _machines_like(), verbose=False)
    np.testing.assert_allclose(homdiag.coefficient_tests("Kenward-Roger")["df"],
                               cells.coefficient_tests("Kenward-Roger")["df"], rtol=1e-5)


def test_re_form_names_the_structure():
    data = _sleep_by_day()
    fit = tm.lmer("Reaction ~ Days + ar1(0 + dayf | Subject)", data, verbose=False)
    np.testing.assert_allclose(fit.predict(data, re_form="~ ar1(0 + dayf | Subject)"), fit.predict(data))
    with pytest.raises(DataError, match="not random terms of the model"):
        fit.predict(data, re_form="~ cs(0 + dayf | Subject)")
