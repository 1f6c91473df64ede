"""The reshaped core: cross-products as data, precision, option checks, optimiser robustness, memory refusal."""

import warnings

import numpy as np
import pandas as pd
import pytest

import tfmixed as tm
from tfmixed.cross_products import CrossProductPattern, CrossProducts
from tfmixed.kernels.options import KernelOptions
from tfmixed.kernels.pls import PLSProblem
from tfmixed.objective import LmmObjective

SLEEP = "Reaction ~ Days + (Days | Subject)"


def dyadic_design(seed=0, n=997):
    """Covariates on a 1/4 grid, integer responses and weights in {0.5, 1, 2}: every product and every partial
    sum of the cross-products is exact in float64, so any grouping of rows must give identical bits."""
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({
        "x": rng.integers(-32, 33, size=n) / 4.0,
        "g": rng.integers(0, 40, size=n),
        "h": rng.integers(0, 9, size=n),
        "w": rng.choice([0.5, 1.0, 2.0], size=n),
    })
    data["y"] = rng.integers(0, 200, size=n).astype(float)
    return data


def test_seven_uneven_chunks_give_the_criterion_of_the_whole_bit_for_bit():
    data = dyadic_design()
    design = tm.build_design("y ~ x + (1 | g) + (1 + x | h)", data, weights="w")
    shift = np.array([100.0, 0.0])
    whole = design.cross_products(shift=shift)
    bounds = [0, 3, 120, 121, 400, 640, 900, len(data)]
    chunks = [
        CrossProducts.from_rows(design.X[a:b], design.y[a:b], [t.rows(slice(a, b)) for t in design.terms],
                                weights=design.weights[a:b], shift=shift)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    summed = sum(chunks)
    theta = np.array([0.7, 0.4, -0.2, 0.9])
    for reml in (True, False):
        one = LmmObjective(PLSProblem(whole), reml)(theta)
        seven = LmmObjective(PLSProblem(summed), reml)(theta)
        assert one == seven  # bit for bit
    assert summed.n == whole.n and summed.sum_log_weights == pytest.approx(whole.sum_log_weights, rel=1e-14)


def test_chunked_cross_products_of_real_valued_data_agree_to_rounding():
    data = tm.datasets.load("sleepstudy")
    design = tm.build_design(SLEEP, data)
    whole = design.cross_products()
    pieces = [CrossProducts.from_rows(design.X[s], design.y[s], [t.rows(s) for t in design.terms], shift=whole.shift)
              for s in (slice(0, 7), slice(7, 100), slice(100, 180))]
    theta = np.array([0.9, 0.02, 0.2])
    assert LmmObjective(PLSProblem(sum(pieces)))(theta) == pytest.approx(LmmObjective(PLSProblem(whole))(theta), rel=1e-13)
    with pytest.raises(tm.ShapeError, match="shift"):
        CrossProducts.from_rows(design.X[:7], design.y[:7], [t.rows(slice(0, 7)) for t in design.terms]) + whole


def test_reweighting_reuses_the_pattern_and_equals_a_fresh_build():
    data = dyadic_design(1)
    design = tm.build_design("y ~ x + (1 | g) + (1 + x | h)", data)
    pattern = CrossProductPattern(design.terms)
    positions = pattern._rest_rest[0]
    first = pattern.compute(design.X, design.y, weights=np.ones(len(data)), shift=[0.0, 0.0])
    new_weights = data["w"].to_numpy()
    again = pattern.compute(design.X, design.y, weights=new_weights, shift=[0.0, 0.0])
    fresh = CrossProducts.from_rows(design.X, design.y, design.terms, weights=new_weights, shift=[0.0, 0.0])
    assert pattern._rest_rest[0] is positions
    assert np.array_equal(again.xy_xy, fresh.xy_xy) and (again.rest_rest != fresh.rest_rest).nnz == 0
    assert not np.array_equal(first.xy_xy, again.xy_xy)


def test_a_new_response_on_kept_cross_products_equals_computing_them_again():
    """with_response (the Laplace gradient's solve) replaces only the y~ rows of a computation's statistics."""
    data = dyadic_design(2)
    design = tm.build_design("y ~ x + (1 | g) + (1 + x | h)", data)
    pattern = CrossProductPattern(design.terms)
    weights = data["w"].to_numpy()
    kept = pattern.compute(design.X, design.y, weights=weights, shift=[0.3, -0.2])
    response = np.random.default_rng(3).normal(size=len(data))
    replaced = pattern.with_response(kept, design.X, response, weights)
    fresh = pattern.compute(design.X, response, weights=weights, shift=[0.0, 0.0])
    for name in ("first_blocks", "xy_first", "xy_rest", "xy_xy", "shift"):
        np.testing.assert_allclose(getattr(replaced, name), getattr(fresh, name), rtol=1e-12, atol=1e-12, err_msg=name)
    assert abs(replaced.rest_first - fresh.rest_first).max() == 0 and abs(replaced.rest_rest - fresh.rest_rest).max() == 0
    with pytest.raises(tm.ShapeError):
        pattern.with_response(kept, design.X[:, :1], response, weights)


def test_reweighted_cross_products_are_independent_and_bad_weights_refused():
    """Re-weighted computations share the pattern's index arrays, never their values; weights are checked."""
    data = dyadic_design(4)
    design = tm.build_design("y ~ x + (1 | g) + (1 + x | h)", data)
    pattern = CrossProductPattern(design.terms)
    first = pattern.compute(design.X, design.y, shift=[0.0, 0.0])
    before = (first.rest_first.toarray(), first.rest_rest.toarray())
    second = pattern.compute(design.X, design.y, weights=data["w"].to_numpy(), shift=[0.0, 0.0])
    assert second.rest_first.indices is first.rest_first.indices  # the shared layout
    np.testing.assert_array_equal(first.rest_first.toarray(), before[0])
    np.testing.assert_array_equal(first.rest_rest.toarray(), before[1])
    fresh = CrossProducts.from_rows(design.X, design.y, design.terms, weights=data["w"].to_numpy(), shift=[0.0, 0.0])
    assert abs(second.rest_rest - fresh.rest_rest).max() == 0
    for bad in (np.nan, -1.0, np.inf):
        weights = np.ones(len(data))
        weights[7] = bad
        with pytest.raises(tm.DataError, match="finite and non-negative"):
            pattern.compute(design.X, design.y, weights=weights)


@pytest.mark.parametrize("transform", [lambda y: y + 1e8, lambda y: y * 1e6, lambda y: (y + 1e8) * 1e6, lambda y: y * 1e-8])
def test_theta_does_not_depend_on_where_or_how_large_y_is(transform):
    data = tm.datasets.load("sleepstudy")
    base = tm.lmer(SLEEP, data, verbose=False)
    moved = data.assign(Reaction=transform(data["Reaction"]))
    fit = tm.lmer(SLEEP, moved, verbose=False)
    np.testing.assert_allclose(fit.theta, base.theta, rtol=1e-6)
    assert fit.converged


def test_response_constant_within_groups_is_reported_not_converged():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(20), 5)
    data = pd.DataFrame({"y": rng.normal(size=20)[g] * 3 + 10, "g": g})
    with pytest.warns(tm.ConvergenceWarning, match="constant within the levels"):
        fit = tm.lmer("y ~ 1 + (1 | g)", data, verbose=False)
    assert not fit.converged and fit.optimum.status == "degenerate"


def test_random_slope_on_an_uncentred_covariate_converges_to_the_centred_optimum():
    """(1 + x | g) and (1 + (x - c) | g) span the same model: the optimal criteria must be equal."""
    rng = np.random.default_rng(7)
    g = rng.integers(0, 30, size=600)
    x = 1000 + rng.uniform(0, 100, size=600)
    y = 5 + 0.01 * x + rng.normal(size=30)[g] + rng.normal(size=30)[g] * 0.05 * (x - 1000) + rng.normal(size=600)
    data = pd.DataFrame({"y": y, "x": x, "xc": x - 1000, "g": g})
    with warnings.catch_warnings():
        warnings.simplefilter("error", tm.ConvergenceWarning)
        raw = tm.lmer("y ~ x + (x | g)", data, verbose=False)
    centred = tm.lmer("y ~ xc + (xc | g)", data, verbose=False)
    assert raw.converged
    assert raw.deviance == pytest.approx(centred.deviance, rel=1e-9)
    np.testing.assert_allclose(raw.sigma, centred.sigma, rtol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="profiled", G0=[[1.0]]), "G0"),
        (dict(method="profiled", acceleration="squarem"), "acceleration"),
        (dict(method="profiled", tol=1e-6), "tol"),
        (dict(method="em", start=[1.0]), "start"),
        (dict(method="em", covariance="diagonal"), "covariance"),
        (dict(method="evidence", covariance="full"), "covariance"),
        (dict(method="bogus"), "method"),
        (dict(max_iter=0), "max_iter"),
        (dict(method="em", max_iter=0), "max_iter"),
    ],
)
def test_options_that_do_not_apply_raise(options, message):
    with pytest.raises(tm.DataError, match=message):
        tm.lmer("Yield ~ 1 + (1 | Batch)", tm.datasets.load("Dyestuff"), verbose=False, **options)


def test_a_dense_block_over_the_memory_limit_is_refused_up_front():
    data = tm.datasets.load("Penicillin")
    with pytest.raises(tm.MemoryLimitError, match="GiB"):
        tm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", data, kernel_options=KernelOptions(memory_bytes=1000),
                backend="exact", verbose=False)


def test_one_level_encoder_for_lmer_and_keras():
    from tfmixed.levels import encode_levels

    data = pd.DataFrame({"y": np.arange(9.0), "g": [9, 10, 100] * 3})
    design = tm.build_design("y ~ 1 + (1 | g)", data)
    codes, levels = encode_levels([9, 10, 100])
    assert design.terms[0].levels.tolist() == levels.tolist() == [9, 10, 100]
    assert codes.tolist() == [0, 1, 2]
    # values match by value: 1 and 1.0 are one level, and text ids match numbers
    assert encode_levels([1.0, 2.0], levels=pd.Index([1, 2]))[0].tolist() == [0, 1]
    assert encode_levels([308], levels=pd.Index(["308", "309"]))[0].tolist() == [0]
    with pytest.raises(tm.NewLevelError):
        encode_levels([3], levels=pd.Index([1, 2]))


def test_the_dense_block_is_held_at_most_three_times_while_factoring_and_differentiating():
    """Peak numpy allocations (tracemalloc) of one factorisation and of its gradient, in dense blocks."""
    import tracemalloc

    from tfmixed.kernels.covariance import theta_to_factors
    from tfmixed.lmm import problem_from_design

    rng = np.random.default_rng(0)
    data = pd.DataFrame({"a": rng.integers(0, 1500, 20_000), "b": rng.integers(0, 800, 20_000), "x": rng.normal(size=20_000)})
    data["y"] = data.x + rng.normal(size=1500)[data.a] + rng.normal(size=800)[data.b] + rng.normal(size=20_000)
    problem = problem_from_design(tm.build_design("y ~ x + (1 | a) + (1 | b)", data))
    block = 8 * (problem.q_rest + problem.p + 1) ** 2
    factors = theta_to_factors(np.array([0.8, 0.9]), problem.dims)
    problem.factorize(factors).gradient(True)
    peaks = []
    for work in (lambda: problem.factorize(factors), lambda: problem.factorize(factors).gradient(True)):
        tracemalloc.start()
        work()
        peaks.append(tracemalloc.get_traced_memory()[1] / block)
        tracemalloc.stop()
    assert peaks[0] < 2.2 and peaks[1] < 3.2, peaks
