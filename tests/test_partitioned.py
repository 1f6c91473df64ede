"""lmer on partitioned data (Dask data frames, Parquet files): the same numbers as the in-memory fit, with the
rows never brought together (issue 11)."""

import warnings

import numpy as np
import pandas as pd
import pytest

import tfmixed as tm

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


def uneven(frame: pd.DataFrame, sizes) -> "dd.DataFrame":
    """A Dask frame whose partitions have the given numbers of rows (the last takes the rest)."""
    bounds = np.cumsum([0, *sizes, len(frame) - sum(sizes)])
    return dd.concat([dd.from_pandas(frame.iloc[a:b], npartitions=1) for a, b in zip(bounds[:-1], bounds[1:])])


def synthetic(n=2400, seed=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g1, g2 = rng.integers(0, 60, n), rng.integers(0, 25, n)
    frame = pd.DataFrame({
        "x": rng.normal(size=n), "f": rng.choice(["lo", "mid", "hi"], n), "g1": [f"s{v}" for v in g1], "g2": g2,
        "w": rng.uniform(0.5, 2.0, n), "exposure": rng.uniform(1.0, 3.0, n),
    })
    effects1, effects2 = rng.normal(size=60), rng.normal(size=25) * 0.8
    frame["y"] = (1.0 + 0.5 * frame.x + (frame.f == "hi") * 0.7 + effects1[g1] * (1 + 0.3 * frame.x) + effects2[g2]
                  + np.log(frame.exposure) + rng.normal(size=n) / np.sqrt(frame.w))
    frame.loc[rng.choice(n, 15, replace=False), "x"] = np.nan
    return frame


def assert_same_fit(partitioned, memory, tol=1e-10):
    assert partitioned.nobs == memory.nobs
    assert partitioned.deviance == pytest.approx(memory.deviance, rel=tol)
    np.testing.assert_allclose(partitioned.theta, memory.theta, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(partitioned.fixef, memory.fixef, rtol=1e-8)
    np.testing.assert_allclose(partitioned.fixef_se, memory.fixef_se, rtol=1e-8)
    np.testing.assert_allclose(partitioned.varcorr["vcov"], memory.varcorr["vcov"], rtol=1e-7)
    assert list(partitioned.fixef.index) == list(memory.fixef.index)
    for name, frame in memory.ranef.items():
        pd.testing.assert_index_equal(partitioned.ranef[name].index, frame.index)
        np.testing.assert_allclose(partitioned.ranef[name], frame, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(partitioned.satterthwaite_df, memory.satterthwaite_df, rtol=1e-6)


def test_without_a_client_a_local_cluster_is_started_and_closed(capsys):
    data = tm.datasets.load("sleepstudy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distributed's own start-up notes
        fit = tm.lmer("Reaction ~ Days + (1 | Subject)", uneven(data, [100]), verbose=True)
    assert "starting a LocalCluster" in capsys.readouterr().err
    with pytest.raises(ValueError):
        distributed.get_client()  # closed again
    assert fit.deviance == pytest.approx(tm.lmer("Reaction ~ Days + (1 | Subject)", data, verbose=False).deviance, rel=1e-10)


def test_sleepstudy_on_uneven_partitions_equals_the_in_memory_fit(client):
    data = tm.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    for sizes in ([7, 50, 1, 90], [179]):
        fit = tm.lmer(formula, uneven(data, sizes), verbose=False)
        assert_same_fit(fit, tm.lmer(formula, data, verbose=False))
    assert "not computed (partitioned data" in fit.summary()


def test_factors_interactions_transforms_weights_offsets_and_missing_rows(client):
    data = synthetic()
    formula = "y ~ x * f + I(x^2) + offset(log(exposure)) + (1 + x | g1) + (1 | g2)"
    options = dict(weights="w", missing="drop", verbose=False)
    with pytest.warns(tm.TfmixedWarning):
        memory = tm.lmer(formula, data, **options)
    with pytest.warns(tm.TfmixedWarning, match="missing values"):
        fit = tm.lmer(formula, uneven(data, [500, 13, 900]), **options)
    assert_same_fit(fit, memory)
    assert fit.design.has_weights and fit.design.spec.weights == "w" and fit.nobs == len(data) - 15


def test_ml_fit_and_parquet_files(client, tmp_path):
    data = synthetic(seed=5).dropna()
    for i, rows in enumerate(np.array_split(np.arange(len(data)), 3)):
        piece = data.iloc[rows]
        piece.to_parquet(tmp_path / f"part-{i}.parquet")
    formula = "y ~ x + f + (1 | g1) + (1 | g2)"
    fit = tm.lmer(formula, str(tmp_path / "*.parquet"), REML=False, verbose=False)
    assert_same_fit(fit, tm.lmer(formula, data, REML=False, verbose=False))


def test_aliased_columns_are_dropped_as_in_memory(client):
    data = tm.datasets.load("sleepstudy").assign(D2=lambda d: 2.0 * d.Days)
    formula = "Reaction ~ Days + D2 + (1 | Subject)"
    with pytest.warns(tm.RankDeficiencyWarning, match="D2"):
        fit = tm.lmer(formula, uneven(data, [60, 60]), verbose=False)
    with pytest.warns(tm.RankDeficiencyWarning):
        memory = tm.lmer(formula, data, verbose=False)
    assert fit.design.dropped_fixed == memory.design.dropped_fixed == ["D2"]
    assert_same_fit(fit, memory)
    np.testing.assert_allclose(fit.fitted.compute().to_numpy(), memory.fitted, rtol=1e-8)


def test_row_results_are_dask_collections(client):
    data = tm.datasets.load("Penicillin")
    formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"
    frame = uneven(data, [40, 3])
    fit, memory = tm.lmer(formula, frame, verbose=False), tm.lmer(formula, data, verbose=False)
    for lazy, eager in [(fit.fitted, memory.fitted), (fit.residuals, memory.residuals), (fit.predict(), memory.fitted)]:
        assert isinstance(lazy, dd.Series)
        np.testing.assert_allclose(lazy.compute().to_numpy(), eager, rtol=1e-9)
    table = fit.predict(frame, interval="prediction").compute()
    np.testing.assert_allclose(table.to_numpy(), memory.predict(data, interval="prediction").to_numpy(), rtol=1e-8)
    # a fit from memory predicts on a Dask frame too; new levels as in memory
    new = pd.DataFrame({"plate": ["a", "zz"], "sample": ["A", "G"]})
    lazy = memory.predict(dd.from_pandas(new, npartitions=2), allow_new_levels=True)
    np.testing.assert_allclose(lazy.compute().to_numpy(), memory.predict(new, allow_new_levels=True))
    assert fit.anova().empty and fit.confint("Wald").shape == (4, 2)
    small = tm.lmer("diameter ~ 1 + (1 | plate)", frame, verbose=False)
    lrt = tm.anova(small, fit).table
    expected = tm.anova(tm.lmer("diameter ~ 1 + (1 | plate)", data, verbose=False), memory).table
    np.testing.assert_allclose(lrt["Chisq"].iloc[1], expected["Chisq"].iloc[1], rtol=1e-9)


def test_what_partitioned_data_cannot_do_is_refused(client):
    data = tm.datasets.load("sleepstudy")
    frame = uneven(data, [90])
    formula = "Reaction ~ Days + (Days | Subject)"
    with pytest.raises(tm.DataError, match="column"):
        tm.lmer(formula, frame, weights=np.ones(180), verbose=False)
    with pytest.raises(tm.DataError, match="profiled"):
        tm.lmer(formula, frame, method="em", verbose=False)
    with pytest.raises(tm.DataError, match="learns from the data"):
        tm.lmer("Reaction ~ scale(Days) + (1 | Subject)", frame, verbose=False)
    with pytest.raises(tm.DataError, match="partitioned"):
        tm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", dd.from_pandas(tm.datasets.load("cbpp"), npartitions=2),
                 family="binomial", verbose=False)
    with pytest.raises(tm.DataError, match="Dask"):
        tm.lmer(formula, data, client=client, verbose=False)
    with pytest.raises(tm.DataError, match="missing values"):
        tm.lmer(formula, uneven(data.assign(Days=data.Days.where(data.index != 5)), [90]), verbose=False)
    with pytest.raises(tm.FormulaError, match="nope"):
        tm.lmer("Reaction ~ Days + (1 | nope)", frame, verbose=False)
    fit = tm.lmer(formula, frame, verbose=False)
    for thunk in (lambda: fit.bootstrap(5, verbose=False), lambda: fit.anova(ddf="Kenward-Roger"),
                  lambda: fit.confint(verbose=False)):
        with pytest.raises(tm.DataError, match="in memory"):
            thunk()


def test_the_iterative_backend_fits_the_reduced_statistics(client):
    """What issue 11 asks where the structure is too large for the exact kernel: the iterative backend on the
    partitions' summed cross-products (here forced by a small memory limit)."""
    from tfmixed.kernels.iterative import IterativeOptions

    data = tm.datasets.simulate_crossed(n_obs=3000, levels=(200, 80), sds=(0.6, 0.4), residual_sd=1.0, seed=4)
    formula = "y ~ service + (1 | g1) + (1 | g2)"
    fit = tm.lmer(formula, uneven(data, [700, 11, 1500]), backend="auto", kernel_options=tm.KernelOptions(memory_bytes=10**5),
                  iterative_options=IterativeOptions(probes=32, lanczos_steps=40), verbose=False)
    memory = tm.lmer(formula, data, verbose=False)
    assert "Backend: iterative" in fit.summary()
    assert abs(fit.deviance - memory.deviance) < 1e-4 * abs(memory.deviance)
    np.testing.assert_allclose(fit.varcorr["vcov"], memory.varcorr["vcov"], rtol=5e-3)


def test_structured_covariance_on_partitions(client):
    """A term's covariance structure travels with its plan: the partitioned fit equals the in-memory one."""
    frame = synthetic().dropna().reset_index(drop=True).assign(level=lambda d: d.f)
    formula = "y ~ x + cs(0 + level | g1) + (1 | g2)"
    memory = tm.lmer(formula, frame, verbose=False)
    partitioned = tm.lmer(formula, uneven(frame, [700, 13]), client=client, verbose=False)
    assert partitioned.deviance == pytest.approx(memory.deviance, rel=1e-10)
    np.testing.assert_allclose(partitioned.theta, memory.theta, rtol=1e-5, atol=1e-7)
    assert list(partitioned.sdcor.index) == list(memory.sdcor.index)
