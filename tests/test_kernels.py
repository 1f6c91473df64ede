"""The blocked penalised-least-squares kernel against dense linear algebra on the same problems."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import LME4_CASES, load_reference, as_array, load_data

from tfmixed.kernels.options import KernelOptions
import tfmixed as tm
from tfmixed import build_design
from tfmixed.kernels.covariance import covariance_factor, theta_to_factors, factors_to_theta
from tfmixed.lmm import problem_from_design
from tfmixed.cross_products import CrossProductPattern
from tfmixed.kernels.pls import PLSProblem


def dense_reference(design, factors, reml):
    """Textbook dense computation: Omega = [Z Lambda, X, y]'[...] + I on the u block."""
    Lambda = np.zeros((design.Z.shape[1],) * 2)
    for term, s, T in zip(design.terms, design.term_slices, factors):
        Lambda[s, s] = np.kron(np.eye(term.n_levels), T)
    ZL = design.Z.toarray() @ Lambda
    M = np.column_stack([ZL, design.X, design.y])
    Omega = M.T @ M
    q = ZL.shape[1]
    Omega[:q, :q] += np.eye(q)
    L = np.linalg.cholesky(Omega)
    n, p = design.X.shape
    r2 = L[-1, -1] ** 2
    ldL = 2 * np.sum(np.log(np.diag(L)[:q]))
    ldX = 2 * np.sum(np.log(np.diag(L)[q : q + p]))
    dof = n - p if reml else n
    dev = ldL + dof * (1 + np.log(2 * np.pi * r2 / dof)) + (ldX if reml else 0)
    solution = np.linalg.solve(Omega[:-1, :-1], Omega[:-1, -1])
    A_inv = np.linalg.inv(Omega[:q, :q])
    return dev, solution[q:], Lambda @ solution[:q], A_inv


#: the four coupling strategies, forced through the kernel's options
STRATEGY_OPTIONS = {
    "dense": KernelOptions(coupling="dense"),
    "pattern": KernelOptions(coupling="pattern"),
    "sparse": KernelOptions(coupling="sparse"),
    "split": KernelOptions(coupling="split"),
}


@pytest.fixture(params=sorted(STRATEGY_OPTIONS))
def small_path(request):
    """The four ways the kernel eliminates the first block: dense C, precomputed pattern, sparse product, and
    the pattern of the random-effects rows with the fixed-effects rows dense."""
    return request.param


def problem_for(design, strategy):
    problem = problem_from_design(design, STRATEGY_OPTIONS[strategy])
    assert problem.coupling.name == strategy
    return problem


def reference_problem(name, strategy, stretch):
    """A shared lme4 case's design and problem, with theta moved off the optimum by ``stretch``."""
    ref = load_reference(name)
    design = build_design(ref["formula"], load_data(LME4_CASES[name]))
    problem = problem_for(design, strategy)
    return ref, design, problem, as_array(ref["theta"]) * stretch + 0.05


@pytest.mark.parametrize("name", sorted(LME4_CASES))
def test_blocked_factorisation_matches_dense_algebra(name, small_path):
    ref, design, problem, theta = reference_problem(name, small_path, 1.2)
    factors = theta_to_factors(theta, problem.dims)
    factor = problem.factorize(factors)
    dev, beta, b, A_inv = dense_reference(design, factors, ref["REML"])
    assert factor.deviance(ref["REML"]) == pytest.approx(dev, rel=1e-10)
    beta_k, u_k = factor.solve()
    np.testing.assert_allclose(beta_k, beta, rtol=1e-8)
    np.testing.assert_allclose(factor.u_to_b(u_k), b, rtol=1e-7, atol=1e-9)
    blocks = factor.inverse_diagonal_blocks()
    for term, s, block in zip(design.terms, design.term_slices, blocks):
        k = term.n_cols
        expected = np.stack([A_inv[s, s][i * k : (i + 1) * k, i * k : (i + 1) * k] for i in range(term.n_levels)])
        np.testing.assert_allclose(block, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LME4_CASES))
def test_analytic_gradient_matches_central_differences(name, small_path):
    ref, _, problem, theta = reference_problem(name, small_path, 1.3)
    reml = ref["REML"]

    def deviance(t):
        return problem.factorize(theta_to_factors(t, problem.dims)).deviance(reml)

    gradient = problem.factorize(theta_to_factors(theta, problem.dims)).gradient(reml)
    h = 1e-5
    numeric = np.array([(deviance(theta + h * e) - deviance(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-5)


def test_covariance_factor_round_trip_and_singular():
    G = np.array([[612.1, 9.6], [9.6, 35.07]])
    T = covariance_factor(G)
    np.testing.assert_allclose(T @ T.T, G)
    singular = np.array([[4.0, 2.0], [2.0, 1.0]])
    T = covariance_factor(singular)
    np.testing.assert_allclose(T @ T.T, singular)
    theta = np.array([1.0, 0.5, 2.0, 3.0])
    np.testing.assert_allclose(factors_to_theta(theta_to_factors(theta, [2, 1])), theta)


@pytest.mark.parametrize("G", [np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([[1.0, 0.5], [0.4, 1.0]]), np.array([[np.nan]])])
def test_covariance_factor_rejects_invalid(G):
    from tfmixed import SingularCovarianceError

    with pytest.raises(SingularCovarianceError):
        covariance_factor(G)


def synthetic_design(seed=0):
    """Two vector-valued terms, the second-largest outside the first block, plus a scalar term."""
    rng = np.random.default_rng(seed)
    n = 400
    data = pd.DataFrame({
        "x": rng.normal(size=n),
        "z": rng.normal(size=n),
        "f": rng.choice(list("abc"), size=n),
        "g": rng.integers(0, 40, size=n),
        "h": rng.integers(0, 15, size=n),
        "k": rng.integers(0, 6, size=n),
    })
    data["y"] = data.x + rng.normal(size=n) + rng.normal(size=40)[data.g] + rng.normal(size=15)[data.h] * data.x
    return data


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ x + (1 | g) + (1 + x | h)",
        "y ~ x + (1 + x | g) + (1 + x + z | h) + (1 | k)",
        "y ~ x + (0 + f | g) + (1 | h)",
    ],
)
@pytest.mark.parametrize("dense_scaling", [True, False], ids=["dense-lambda", "per-term-lambda"])
def test_vector_terms_outside_the_first_block(formula, small_path, dense_scaling):
    # Lambda' M Lambda by two dense products (small blocks) and by per-term reshapes (large ones)
    design = build_design(formula, synthetic_design())
    options = dataclasses.replace(STRATEGY_OPTIONS[small_path], small_dense_scale=10**6 if dense_scaling else 0)
    problem = problem_from_design(design, options)
    assert problem.coupling.name == small_path
    rng = np.random.default_rng(1)
    theta = np.concatenate([factors_to_theta([np.tril(rng.uniform(0.2, 1.0, (k, k)))]) for k in problem.dims])
    factors = theta_to_factors(theta, problem.dims)
    for reml in (True, False):
        dev, beta, b, A_inv = dense_reference(design, factors, reml)
        factor = problem.factorize(factors)
        assert factor.deviance(reml) == pytest.approx(dev, rel=1e-10)
        beta_k, u_k = factor.solve()
        np.testing.assert_allclose(beta_k, beta, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(factor.u_to_b(u_k), b, rtol=1e-7, atol=1e-9)

        def deviance(t, reml=reml):
            return problem.factorize(theta_to_factors(t, problem.dims)).deviance(reml)

        h = 1e-5
        numeric = np.array([(deviance(theta + h * e) - deviance(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
        np.testing.assert_allclose(factor.gradient(reml), numeric, rtol=1e-5, atol=1e-5)
    blocks = problem.factorize(factors).inverse_diagonal_blocks()
    for term, s, block in zip(design.terms, design.term_slices, blocks):
        k = term.n_cols
        expected = np.stack([A_inv[s, s][i * k : (i + 1) * k, i * k : (i + 1) * k] for i in range(term.n_levels)])
        np.testing.assert_allclose(block, expected, rtol=1e-8, atol=1e-12)


def test_em_and_profiled_agree_on_vector_terms_outside_the_first_block():

    data = synthetic_design(2)
    formula = "y ~ x + (1 | g) + (1 + x | h)"
    profiled = tm.lmer(formula, data, verbose=False)
    em = tm.lmer(formula, data, method="em", acceleration="squarem", verbose=False)
    assert em.deviance == pytest.approx(profiled.deviance, rel=1e-8)
    np.testing.assert_allclose(em.varcorr["vcov"], profiled.varcorr["vcov"], rtol=1e-4, atol=1e-6)


def test_the_cheapest_coupling_is_chosen_by_structure():
    """Small C: dense. A large sparse C whose levels pair few rows: the pattern. Many rows per level of a
    crossed design with few levels: dense BLAS beats both sparse strategies."""
    from tfmixed.kernels.coupling import choose_coupling
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    small = sp.random(20, 30, density=0.2, format="csr", random_state=1)
    assert choose_coupling(small, 30, 1, KernelOptions()).name == "dense"
    sparse_rows = sp.csr_matrix((np.ones(40_000), (rng.integers(0, 3000, 40_000), rng.integers(0, 20_000, 40_000))), shape=(3000, 20_000))
    assert choose_coupling(sparse_rows, 20_000, 1, KernelOptions()).name == "pattern"
    crowded = sp.csr_matrix(rng.random((800, 600)) < 0.6, dtype=float)
    assert choose_coupling(crowded, 600, 1, KernelOptions()).name == "dense"
    with pytest.raises(tm.DataError):
        KernelOptions(coupling="cholmod")


def nested_design(seed=3):
    """Students within classes within schools; schools have 1..7 classes, so the remaining columns (class,
    school) split into components of different sizes."""
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(40), 30)
    klass = school * 10 + rng.integers(0, 1 + school % 7, school.size)
    student = klass * 100 + rng.integers(0, 4, school.size)
    x = rng.normal(size=school.size)
    y = x + rng.normal(size=40)[school] + rng.normal(size=400)[klass - school * 10 + school * 10 % 400] + rng.normal(size=school.size)
    return pd.DataFrame({"y": y, "x": x, "school": school, "klass": klass, "student": student})


@pytest.mark.parametrize("strategy", ["bordered", "sparse", "sparse-by-column"])
@pytest.mark.parametrize("formula, component_sizes", [
    ("y ~ x + (1 | student) + (1 | klass) + (1 + x | school)", 7),  # school (2 columns) + its 1..7 classes
    ("y ~ x + (1 + x | klass) + (1 | school)", 1),
])
def test_bordered_and_sparse_strategies_match_dense_algebra(formula, component_sizes, strategy, monkeypatch):
    if strategy == "sparse-by-column":  # Takahashi's recurrences column by column, not in batched levels
        monkeypatch.setattr("tfmixed.kernels.sparse_block.TAKAHASHI_PLAN_PAIRS", -1)
        strategy = "sparse"
    design = build_design(formula, nested_design())
    problem = problem_from_design(design, KernelOptions(rest=strategy))
    assert problem.rest_strategy == strategy
    if strategy == "bordered":
        assert len({size for size, _ in problem.bordered.layout.groups}) == component_sizes
    dense = problem_from_design(design, KernelOptions(rest="dense"))
    assert dense.rest_strategy == "dense"
    rng = np.random.default_rng(1)
    theta = np.concatenate([factors_to_theta([np.tril(rng.uniform(0.2, 1.0, (k, k)))]) for k in problem.dims])
    factors = theta_to_factors(theta, problem.dims)
    factor = problem.factorize(factors)
    for reml in (True, False):
        dev, beta, b, A_inv = dense_reference(design, factors, reml)
        assert factor.deviance(reml) == pytest.approx(dev, rel=1e-10)
        np.testing.assert_allclose(factor.gradient(reml), dense.factorize(factors).gradient(reml), rtol=1e-8, atol=1e-8)
        for blocks, reference in zip(factor.inverse_block_sums(reml), dense.factorize(factors).inverse_block_sums(reml)):
            np.testing.assert_allclose(blocks, reference, rtol=1e-9, atol=1e-12)
    beta_k, u_k = factor.solve()
    np.testing.assert_allclose(beta_k, beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(factor.u_to_b(u_k), b, rtol=1e-7, atol=1e-9)
    for term, s, block in zip(design.terms, design.term_slices, factor.inverse_diagonal_blocks()):
        k = term.n_cols
        expected = np.stack([A_inv[s, s][i * k : (i + 1) * k, i * k : (i + 1) * k] for i in range(term.n_levels)])
        np.testing.assert_allclose(block, expected, rtol=1e-8, atol=1e-12)


def test_nested_design_chooses_the_bordered_strategy_and_fits_like_dense():
    """No block without fill-in is factored dense: classes within schools leave the school block diagonal."""
    rng = np.random.default_rng(5)
    klass = rng.integers(0, 3000, 30_000)
    data = pd.DataFrame({"klass": klass, "school": klass // 10, "x": rng.normal(size=30_000)})
    data["y"] = data.x + rng.normal(size=3000)[klass] * 0.5 + rng.normal(size=300)[klass // 10] + rng.normal(size=30_000)
    fit = tm.lmer("y ~ x + (1 | klass) + (1 | school)", data, verbose=False)
    assert fit.problem.rest_strategy == "bordered" and fit.problem.bordered.layout.largest == 1
    dense = tm.lmer("y ~ x + (1 | klass) + (1 | school)", data, verbose=False, kernel_options=KernelOptions(rest="dense"))
    assert fit.deviance == pytest.approx(dense.deviance, rel=1e-10)
    np.testing.assert_allclose(fit.varcorr["vcov"], dense.varcorr["vcov"], rtol=1e-6)
    np.testing.assert_allclose(fit.satterthwaite_df, dense.satterthwaite_df, rtol=1e-6)


def test_a_large_sparse_rest_block_chooses_the_sparse_strategy():
    """star: 1,534 teacher and school columns after the 10,767 students, 0.9% nonzero, one big component."""
    from test_reference_set2 import fitted, reference_and_data

    _, _, fit = fitted("star_crossed_slope")
    assert fit.problem.rest_strategy == "sparse"
    data = reference_and_data("star_crossed_slope")[1]
    dense = tm.lmer(fit.formula, data, missing="drop", verbose=False, kernel_options=KernelOptions(rest="dense"))
    assert fit.deviance == pytest.approx(dense.deviance, rel=1e-11)
    np.testing.assert_allclose(fit.satterthwaite_df, dense.satterthwaite_df, rtol=1e-5)


@pytest.mark.parametrize("options", [KernelOptions(rest="bordered"), KernelOptions(rest="sparse"),
                                     KernelOptions(rest="dense", coupling="dense"),
                                     KernelOptions(rest="dense", coupling="pattern"),
                                     KernelOptions(rest="dense", coupling="sparse"),
                                     KernelOptions(rest="dense", coupling="split")])
def test_a_reweighted_problem_equals_a_fresh_one(options):
    """PIRLS refills the chosen strategies with new weights and responses; the result must be the fresh
    problem's, whatever strategy holds the values."""
    design = build_design("y ~ x + (1 | student) + (1 | klass) + (1 + x | school)", nested_design())
    pattern = CrossProductPattern(design.terms)
    problem = PLSProblem(pattern.compute(design.X, design.y), options)
    rng = np.random.default_rng(2)
    weights = rng.uniform(0.1, 3.0, design.nobs)
    weights[::17] = 0.0  # zero weights keep the pattern (explicit zeros), as PIRLS at mu ~ 0 does
    response = rng.normal(size=design.nobs)
    stats = pattern.compute(design.X, response, weights=weights, shift=np.zeros(design.n_fixed))
    factors = theta_to_factors(np.concatenate([factors_to_theta([np.tril(rng.uniform(0.2, 1.0, (k, k)))])
                                               for k in problem.dims]), problem.dims)
    refilled = problem.reweighted(stats).factorize(factors)
    fresh = PLSProblem(stats, options).factorize(factors)
    assert refilled.deviance(True) == pytest.approx(fresh.deviance(True), rel=1e-12)
    for a, b in zip(refilled.solve(), fresh.solve()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(tm.ShapeError):
        problem.reweighted(pattern.compute(design.X[:, :1], design.y))


@pytest.mark.parametrize("strategy", ["dense", "dense-lookup", "bordered", "sparse"])
def test_inverse_entries_match_the_dense_inverse(strategy):
    """The entries a GLMM's leverages read (every pair of nonzero columns in a row of Z), from each strategy (and
    from the dense one through its lookup, as on designs too large to hold S^{-1} M' whole)."""
    limit = {"dense_inverse_entries": 0} if strategy == "dense-lookup" else {}
    strategy = "dense" if strategy == "dense-lookup" else strategy
    design = build_design("y ~ x + (1 + x | klass) + (1 | school)", nested_design())
    problem = problem_from_design(design, KernelOptions(rest=strategy, **limit))
    assert problem.rest_strategy == strategy
    factors = theta_to_factors(np.array([0.8, 0.3, 0.5, 1.3]), problem.dims)
    factor = problem.factorize(factors)
    _, _, _, A_inv = dense_reference(design, factors, reml=False)
    Z = design.Z.tocsr()
    rows = np.random.default_rng(5).choice(design.nobs, 60, replace=False)
    pairs = {(i, j) for r in rows for i in Z[r].indices for j in Z[r].indices}
    left, right = np.array(sorted(pairs)).T
    np.testing.assert_allclose(factor.inverse_entries(left, right), A_inv[left, right], rtol=1e-9, atol=1e-12)
    if strategy == "dense":
        k1 = problem.first.n_cols
        with pytest.raises(ValueError, match="within a level"):
            factor.inverse_entries(np.array([0]), np.array([k1]))
