"""EmpiricalBayes updates streamed over batches: equal to the in-memory update, flat state, replicas, probes."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmixed as tm
from tfmixed.keras import EmpiricalBayes, EmpiricalBayesDecay, RandomEffects
from tfmixed.keras.evidence import DecayEvidence
from tfmixed.keras.linearisation import Linearisation


@pytest.fixture
def float64():
    # float64 networks, so that batches of different sizes give the same predictions to rounding; Keras caches
    # a dtype policy from floatx, so both are set and put back
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def crossed_rows(n=4000, users=300, items=40, seed=0):
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, users, n), rng.integers(0, items, n)
    x, z = rng.normal(size=(n, 3)), rng.normal(size=n)
    y = (np.sin(x[:, 0]) + x[:, 1] + rng.normal(0, 0.8, users)[user] + z * rng.normal(0, 0.3, users)[user]
         + rng.normal(0, 0.5, items)[item] + rng.normal(size=n))
    return {"x": x, "z": z, "user": user.astype(np.int32), "item": item.astype(np.int32)}, y, {"user": users, "item": items}


def network(levels, slopes=None, decay=False):
    x = keras.Input((3,), name="x")
    ids = {f: keras.Input((), name=f, dtype="int32") for f in levels}
    extra = {"z": keras.Input((), name="z")} if slopes else {}
    regulariser = EmpiricalBayesDecay() if decay else None
    hidden = keras.layers.Dense(6, activation="tanh", kernel_regularizer=regulariser, name="hidden")(x)
    fixed = keras.layers.Dense(1, name="fixed")(hidden)
    effects = RandomEffects(levels, slopes=slopes, name="effects")({**ids, **extra})
    model = keras.Model({"x": x, **ids, **extra}, keras.layers.Add()([fixed, effects]))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    return model


def update_from(model, source, y=None, **options):
    """One update at the model's current weights, the penalties put back afterwards."""
    saved = [v.numpy() for v in model.non_trainable_variables]
    callback = EmpiricalBayes(source, y, **options)
    callback.set_model(model)
    callback.on_train_begin()
    record = callback.update()
    for variable, value in zip(model.non_trainable_variables, saved):
        variable.assign(value)
    return record, callback


def assert_records_equal(a, b, rtol):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, err_msg=key)


def test_streamed_update_equals_the_in_memory_update(float64):
    rows, y, levels = crossed_rows()
    keras.utils.set_random_seed(0)
    model = network(levels, slopes={"user": ["z"]})
    model.fit(rows, y, epochs=3, batch_size=128, verbose=0)
    whole, callback = update_from(model, rows, y, batch_size=len(y))  # one batch: every row in memory at once
    assert callback.coupling == "exact" and set(whole) == {"sigma2", "tau2_user", "tau2_user:z", "tau2_item",
                                                          "gamma_user", "gamma_user:z", "gamma_item"}
    streamed, _ = update_from(model, rows, y, batch_size=97)
    dataset = tf.data.Dataset.from_tensor_slices((rows, y)).batch(250)
    from_dataset, _ = update_from(model, dataset)

    class Rows(keras.utils.PyDataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            part = slice(i * 600, (i + 1) * 600)
            return {k: v[part] for k, v in rows.items()}, y[part]

    from_pydataset, _ = update_from(model, Rows())
    for other in (streamed, from_dataset, from_pydataset):
        assert_records_equal(whole, other, rtol=1e-10)


def test_within_factor_coupling_is_exact_for_one_factor_and_close_for_crossed(float64):
    rows, y, levels = crossed_rows()
    keras.utils.set_random_seed(1)
    single = network({"user": levels["user"]}, slopes={"user": ["z"]})
    single.fit({k: v for k, v in rows.items() if k != "item"}, y, epochs=3, batch_size=128, verbose=0)
    exact, _ = update_from(single, rows, y, coupling="exact", batch_size=500)
    within, _ = update_from(single, rows, y, coupling="within_factor", batch_size=333)
    assert_records_equal(exact, within, rtol=1e-10)
    crossed = network(levels)
    crossed.fit({k: v for k, v in rows.items() if k != "z"}, y, epochs=3, batch_size=128, verbose=0)
    exact, _ = update_from(crossed, rows, y, coupling="exact")
    within, _ = update_from(crossed, rows, y, coupling="within_factor")
    # leaving out the crossing of 300 users with 40 items (13 rows per user) moves gamma by a fraction of a level
    for key in ("gamma_user", "gamma_item"):
        assert within[key] == pytest.approx(exact[key], abs=1.0)
        assert within[key] >= exact[key]  # fewer shared rows: the posterior looks tighter


def test_update_state_does_not_grow_with_the_rows():
    rng = np.random.default_rng(2)
    sizes = {}
    for n in (20_000, 200_000):
        rows = {"x": rng.normal(size=(n, 3)).astype(np.float32), "user": rng.integers(0, 1000, n).astype(np.int32)}
        y = (rows["x"][:, 0] + rng.normal(size=n)).astype(np.float32)
        keras.utils.set_random_seed(0)
        model = network({"user": 1000}, decay=True)
        dataset = tf.data.Dataset.from_tensor_slices((rows, y)).batch(8192)
        _, callback = update_from(model, dataset, decay_probes=64)
        sizes[n] = callback.state_nbytes
    assert sizes[20_000] == sizes[200_000] > 0


def decay_network_and_curvature(X):
    """A 5-unit tanh layer with EmpiricalBayesDecay, and sum_i (d yhat_i / d W)^2 from per-example Jacobians."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(5, activation="tanh", kernel_regularizer=EmpiricalBayesDecay(), name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    layer = model.get_layer("hidden")
    with tf.GradientTape() as tape:
        prediction = tf.reshape(model(X), (-1,))
    return model, layer, np.sum(np.square(tape.jacobian(prediction, layer.kernel.value).numpy()), axis=0)


def test_decay_probes_estimate_the_per_example_gauss_newton_curvature():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 3)).astype(np.float32)
    model, layer, exact = decay_network_and_curvature(X)
    linearisation = Linearisation(model, [], None, [layer])
    probes = DecayEvidence([tuple(layer.kernel.shape)], len(X), max_probes=10_000, seed=5)
    for start in range(0, len(X), 1000):
        probes.add(linearisation, {"x": X[start : start + 1000]}, np.ones(1000))
    estimate = probes.squares[0] * probes.n_rows / probes.rows_probed
    # 94 probes of 32 rows: about sqrt(2 / 94) = 15% per weight, much less on gamma, which sums over weights
    assert np.median(np.abs(estimate / exact - 1)) < 0.2
    exact_gamma = np.sum(1 - 1 / (1.0 * (exact / 0.5 + 1.0)))
    assert probes.gammas(0.5, [1.0])[0] == pytest.approx(exact_gamma, rel=0.05)


def test_decay_probes_on_a_share_of_each_batch_sample_its_rows_at_random():
    """With fewer probes than rows, each batch's probed rows are a random share: batches whose first half is
    unlike their second (rows sorted by something) are not misread."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(3000, 3)).astype(np.float32)
    X[np.arange(3000) % 1000 < 500] *= 0.05  # the first half of every batch has almost no curvature
    model, layer, exact = decay_network_and_curvature(X)
    probes = DecayEvidence([tuple(layer.kernel.shape)], len(X), max_probes=47, seed=7)  # about half the rows
    linearisation = Linearisation(model, [], None, [layer])
    for start in range(0, len(X), 1000):
        probes.add(linearisation, {"x": X[start : start + 1000]}, np.ones(1000))
    assert probes.rows_probed < 0.6 * len(X)
    exact_gamma = np.sum(1 - 1 / (1.0 * (exact / 0.5 + 1.0)))
    assert probes.gammas(0.5, [1.0])[0] == pytest.approx(exact_gamma, rel=0.1)


def test_streaming_options_and_bad_batches():
    rows, y, levels = crossed_rows(n=500)
    del rows["z"]
    model = network(levels)
    with pytest.raises(tm.DataError, match="coupling"):
        EmpiricalBayes(rows, y, coupling="diagonal")
    with pytest.raises(tm.DataError, match="coupling applies"):
        EmpiricalBayes(rows, y, rule="quick_and_dirty", coupling="exact")
    with pytest.raises(tm.DataError, match="family='gaussian' only"):
        EmpiricalBayes(rows, y, family="binomial", coupling="within_factor")
    with pytest.raises(tm.DataError, match="decay_probes"):
        EmpiricalBayes(rows, y, decay_probes=0)
    with pytest.raises(tm.DataError, match="generator"):
        EmpiricalBayes(((rows, y) for _ in range(2)))
    with pytest.raises(tm.DataError, match="batch_size"):
        EmpiricalBayes(rows, y, batch_size=0)
    bad = dict(rows, item=np.where(np.arange(500) == 250, 99, rows["item"]).astype(np.int32))
    dataset = tf.data.Dataset.from_tensor_slices((bad, y)).batch(100)
    with pytest.raises(tm.DataError, match="item"):
        update_from(model, dataset)  # the callback's own check (a compiled training step asserts in the graph)
    with pytest.raises(tm.ShapeError, match="lack the model's input"):
        update_from(model, {k: v for k, v in rows.items() if k != "x"}, y)
    with pytest.raises(tm.DataError, match="NaN"):
        update_from(model, tf.data.Dataset.from_tensor_slices((rows, np.where(np.arange(500) == 3, np.nan, y))).batch(64))


MIRRORED = textwrap.dedent("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_keras_streaming import crossed_rows, network, update_from
    import keras
    rows, y, levels = crossed_rows(n=3000)
    rows = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in rows.items()}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(1)
    with strategy.scope():
        distributed = network(levels)
    from tfmixed.keras import EmpiricalBayes
    callback = EmpiricalBayes(rows, y, update_every=2, warmup_epochs=2)
    distributed.fit(rows, y, epochs=4, batch_size=128, verbose=0, callbacks=[callback])
    single = network(levels)
    single.set_weights(distributed.get_weights())
    out = {"replicas": strategy.num_replicas_in_sync, "updates": len(callback.history),
           "distributed": update_from(distributed, rows, y, coupling="exact")[0],
           "single": update_from(single, rows, y, coupling="exact")[0],
           "distributed_within": update_from(distributed, rows, y, coupling="within_factor")[0],
           "single_within": update_from(single, rows, y, coupling="within_factor")[0]}
    print(json.dumps({k: {a: float(b) for a, b in v.items()} if isinstance(v, dict) else v for k, v in out.items()}))
""")


def test_mirrored_strategy_update_matches_the_single_device_update(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    done = subprocess.run([sys.executable, str(script), str(__import__("pathlib").Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["updates"] == 2
    assert_records_equal(out["distributed"], out["single"], rtol=1e-6)
    assert_records_equal(out["distributed_within"], out["single_within"], rtol=1e-6)


def test_later_updates_refill_the_first_updates_kernel_problem(float64):
    rows, y, levels = crossed_rows(n=2000, users=120, items=15)
    keras.utils.set_random_seed(5)
    model = network(levels, slopes={"user": ["z"]})
    model.fit(rows, y, epochs=2, batch_size=128, verbose=0)
    callback = EmpiricalBayes(rows, y, batch_size=300)
    callback.set_model(model)
    callback.on_train_begin()
    callback.update()
    problem = callback._problems[0]
    fresh = EmpiricalBayes(rows, y, batch_size=700)
    fresh.set_model(model)
    fresh.on_train_begin()
    fresh.sigma2, fresh.tau2 = callback.sigma2, dict(callback.tau2)
    second = callback.update()
    refilled = callback._problems[0]
    # refilled (PLSProblem.reweighted keeps the strategies chosen for the first update), not rebuilt
    assert refilled is not problem and refilled.rest_strategy == problem.rest_strategy
    assert all(refilled.__dict__[key] is problem.__dict__[key] for key in ("rest", "first", "scalar_rest"))
    assert_records_equal(second, fresh.update(), rtol=1e-10)
