"""tfmixed.keras: learned per-group penalties in ordinary Keras training."""


import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tfmixed as tm
from tfmixed.keras import EmpiricalBayes, EmpiricalBayesDecay, RandomEffects, encode_levels


@pytest.fixture(scope="module")
def sleep():
    data = tm.datasets.load("sleepstudy")
    codes, levels = encode_levels(data.Subject)
    x = {"days": data.Days.to_numpy(np.float32)[:, None], "subject": codes}
    y = data.Reaction.to_numpy(np.float32)[:, None]
    return data, x, y, levels


def linear_mixed_model(levels, y, learning_rate=0.5):
    days = keras.Input((1,), name="days")
    subject = keras.Input((), name="subject", dtype="int32")
    fixed = keras.layers.Dense(1, name="fixed", bias_initializer=keras.initializers.Constant(float(np.mean(y))))(days)
    effects = RandomEffects({"subject": len(levels)}, name="random")({"subject": subject})
    model = keras.Model({"days": days, "subject": subject}, keras.layers.Add()([fixed, effects]))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse")
    return model


def test_corrected_rule_reproduces_lmer_on_a_linear_model(sleep):
    data, x, y, levels = sleep
    keras.utils.set_random_seed(0)
    model = linear_mixed_model(levels, y)
    callback = EmpiricalBayes(x, y, rule="corrected", update_every=5, warmup_epochs=10)
    history = model.fit(x, y, epochs=120, batch_size=36, verbose=0, callbacks=[callback])
    fit = tm.lmer("Reaction ~ Days + (1 | Subject)", data, verbose=False)
    variances = fit.varcorr.set_index("grp")["vcov"]
    assert callback.tau2["subject"] == pytest.approx(variances["Subject"], rel=0.01)
    assert callback.sigma2 == pytest.approx(variances["Residual"], rel=0.01)
    assert {"eb_sigma2", "eb_tau2_subject", "eb_lambda_subject"} <= set(history.history)
    penalty = float(model.get_layer("random").penalties["subject"].numpy()[0])
    assert penalty == pytest.approx(callback.sigma2 / callback.tau2["subject"], rel=1e-5)
    # the effective number of subject parameters is below the 18 levels (shrinkage)
    assert 14 < callback.history[-1]["gamma_subject"] < 18


def test_quick_and_dirty_rule_comes_up_short(sleep):
    data, x, y, levels = sleep
    keras.utils.set_random_seed(1)
    model = linear_mixed_model(levels, y)
    callback = EmpiricalBayes(x, y, rule="quick_and_dirty", update_every=5, warmup_epochs=10)
    model.fit(x, y, epochs=120, batch_size=36, verbose=0, callbacks=[callback])
    reml = tm.lmer("Reaction ~ Days + (1 | Subject)", data, verbose=False).covariance_matrices()[0][0, 0]
    mackay = tm.lmer("Reaction ~ Days + (1 | Subject)", data, method="mackay", verbose=False)
    assert callback.tau2["subject"] < reml
    assert callback.tau2["subject"] == pytest.approx(mackay.covariance_matrices()[0][0, 0], rel=0.05)


def test_save_load_and_tf_data(sleep, tmp_path):
    _, x, y, levels = sleep
    keras.utils.set_random_seed(2)
    model = linear_mixed_model(levels, y)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(180, seed=0).batch(45)
    callback = EmpiricalBayes(dataset, update_every=2, warmup_epochs=2)
    model.fit(dataset, epochs=12, verbose=0, shuffle=False, callbacks=[callback])
    assert callback.sigma2 > 0 and callback.rows.n_rows == 180
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(
        restored.get_layer("random").penalties["subject"].numpy(), model.get_layer("random").penalties["subject"].numpy()
    )
    assert float(restored.get_layer("random").n_train.numpy()) == 180.0


def test_dense_kernel_decay_is_learned():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = (X[:, :2] @ np.array([1.0, -0.5]) + rng.normal(scale=0.3, size=400)).astype(np.float32)[:, None]
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(4, activation="tanh", kernel_regularizer=EmpiricalBayesDecay(), name="hidden")(inputs)
    output = keras.layers.Dense(1, name="out")(hidden)
    model = keras.Model(inputs, output)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    gammas = {}
    for rule in ("corrected", "quick_and_dirty"):
        callback = EmpiricalBayes(X, y, rule=rule, update_every=5, warmup_epochs=5)
        model.fit(X, y, epochs=20, batch_size=100, verbose=0, callbacks=[callback])
        decay = model.get_layer("hidden").kernel_regularizer
        assert float(decay.penalty.numpy()) == pytest.approx(callback.sigma2 / callback.tau2["hidden"], rel=1e-5)
        assert 0.05 < callback.sigma2 < 0.5
        gammas[rule] = callback.history[-1].get("gamma_hidden")
    # the corrected rule counts well-determined kernel weights (24 in all); the seed's rule has no such count
    assert 0 < gammas["corrected"] < 24
    assert gammas["quick_and_dirty"] is None


def test_penalty_enters_the_loss_scaled_by_n_train():
    layer = RandomEffects({"g": 3}, n_train=10, initial_penalty=4.0)
    layer({"g": np.array([0, 1])})
    layer.tables["g"].assign(np.array([[1.0], [2.0], [0.0]], dtype=np.float32))
    out = layer({"g": np.array([0, 1])})
    np.testing.assert_allclose(out.numpy().ravel(), [1.0, 2.0])
    assert float(layer.losses[-1]) == pytest.approx(4.0 * 5.0 / 10)


def test_random_slopes_column():
    layer = RandomEffects({"g": 2}, slopes={"g": ["x"]})
    layer({"g": np.array([0]), "x": np.array([1.0])})
    layer.tables["g"].assign(np.array([[1.0, 2.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(layer({"g": np.array([0, 1]), "x": np.array([3.0, 3.0])}).numpy().ravel(), [7.0, 0.0])
    assert layer.columns("g") == ["(Intercept)", "x"]


def test_errors(sleep):
    _, x, y, levels = sleep
    with pytest.raises(tm.DataError):
        EmpiricalBayes(x, y, rule="validation")
    with pytest.raises(tm.DataError, match="targets"):
        EmpiricalBayes(x)
    with pytest.raises(tm.DataError):
        RandomEffects({"g": 1})
    with pytest.raises(tm.DataError):
        RandomEffects({"g": 3}, slopes={"h": ["x"]})
    with pytest.raises(tm.DataError):
        encode_levels(["a", "z"], levels=["a", "b"])
    model = linear_mixed_model(levels, y)
    with pytest.raises(tm.ShapeError):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[EmpiricalBayes(x, y[:10])])
    plain = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    plain.compile(optimizer="adam", loss="mse")
    with pytest.raises(tm.TfmixedError, match="no RandomEffects"):
        plain.fit(x["days"], y, epochs=1, verbose=0, callbacks=[EmpiricalBayes(x["days"], y)])


def _bernoulli_cbpp():
    cbpp = tm.datasets.load("cbpp")
    rows = []
    for _, r in cbpp.iterrows():
        rows += [(r.herd, r.period, 1.0)] * int(r.incidence) + [(r.herd, r.period, 0.0)] * int(r["size"] - r.incidence)
    frame = pd.DataFrame(rows, columns=["herd", "period", "y"])
    codes, levels = encode_levels(frame.herd)
    x = {"period": pd.get_dummies(frame.period, drop_first=True).to_numpy(np.float32), "herd": codes}
    return cbpp, x, frame.y.to_numpy(np.float32)[:, None], levels


def _logistic_model(levels, output_activation=None):
    period = keras.Input((3,), name="period")
    herd = keras.Input((), name="herd", dtype="int32")
    logit = keras.layers.Add()([keras.layers.Dense(1, name="fixed")(period),
                                RandomEffects({"herd": len(levels)}, name="random")({"herd": herd})])
    out = keras.layers.Activation(output_activation)(logit) if output_activation else logit
    return keras.Model({"period": period, "herd": herd}, out)


def test_binomial_loss_learns_glmers_herd_variance():
    """A logistic model without hidden layers trained with binary cross-entropy: the learned tau^2 is the
    Laplace estimate at the joint mode (glmer's nAGQ = 0, which a MAP-trained network computes) and within 5% of
    glmer's default Laplace fit."""
    cbpp, x, y, levels = _bernoulli_cbpp()
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    laplace = tm.glmer(formula, cbpp, verbose=False).theta[0] ** 2
    joint = tm.glmer(formula, cbpp, nAGQ=0, verbose=False)
    keras.utils.set_random_seed(0)
    model = _logistic_model(levels)
    model.compile(optimizer=keras.optimizers.Adam(0.3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    callback = EmpiricalBayes(x, y, family="binomial", update_every=2, warmup_epochs=10)
    history = model.fit(x, y, epochs=150, batch_size=len(y), verbose=0, callbacks=[callback])
    tau2 = callback.tau2["herd"]
    assert tau2 == pytest.approx(joint.theta[0] ** 2, rel=1e-3)
    assert tau2 == pytest.approx(laplace, rel=0.05)
    weights, bias = model.get_layer("fixed").get_weights()
    np.testing.assert_allclose(np.concatenate([bias, weights[:, 0]]), joint.fixef, rtol=1e-3)
    assert float(model.get_layer("random").penalties["herd"].numpy()[0]) == pytest.approx(0.5 / tau2, rel=1e-5)
    assert "eb_sigma2" not in history.history and "eb_lambda_herd" in history.history
    assert callback.penalties()["herd"] == pytest.approx(0.5 / tau2)


def test_poisson_loss_with_a_mean_output():
    rng = np.random.default_rng(3)
    group = np.repeat(np.arange(30), 20)
    x1 = rng.normal(size=group.size)
    counts = rng.poisson(np.exp(0.5 + 0.3 * x1 + rng.normal(0, 0.6, 30)[group])).astype(np.float32)
    frame = pd.DataFrame({"y": counts, "x1": x1, "g": group.astype(str)})
    joint = tm.glmer("y ~ x1 + (1 | g)", frame, family="poisson", nAGQ=0, verbose=False)
    laplace = tm.glmer("y ~ x1 + (1 | g)", frame, family="poisson", verbose=False)
    codes, levels = encode_levels(frame.g)
    x = {"x1": x1.astype(np.float32)[:, None], "g": codes}
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,), name="x1")
    g = keras.Input((), name="g", dtype="int32")
    eta = keras.layers.Add()([keras.layers.Dense(1, name="fixed")(inputs), RandomEffects({"g": 30}, name="random")({"g": g})])
    model = keras.Model({"x1": inputs, "g": g}, keras.layers.Activation("exponential")(eta))
    model.compile(optimizer=keras.optimizers.Adam(0.2), loss="poisson")
    callback = EmpiricalBayes(x, counts[:, None], family="poisson", output="mean", update_every=4, warmup_epochs=20)
    model.fit(x, counts[:, None], epochs=100, batch_size=len(counts), verbose=0, callbacks=[callback])
    assert callback.tau2["g"] == pytest.approx(joint.theta[0] ** 2, rel=5e-3)
    assert callback.tau2["g"] == pytest.approx(laplace.theta[0] ** 2, rel=0.05)


@pytest.mark.parametrize("kwargs, message", [
    ({"family": "gamma"}, "family"), ({"family": "binomial", "output": "log"}, "output"),
    ({"family": "binomial", "rule": "quick_and_dirty"}, "corrected"),
])
def test_family_options_are_checked(kwargs, message):
    _, x, y, _ = _bernoulli_cbpp()
    with pytest.raises(tm.DataError, match=message):
        EmpiricalBayes(x, y, **kwargs)


def test_binomial_targets_must_be_probabilities():
    _, x, y, levels = _bernoulli_cbpp()
    model = _logistic_model(levels)
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(tm.DataError, match=r"\[0, 1\]"):
        model.fit(x, y * 2, epochs=1, verbose=0, callbacks=[EmpiricalBayes(x, y * 2, family="binomial")])
