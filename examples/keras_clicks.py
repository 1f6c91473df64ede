"""Learned per-factor penalties for a click model: binary cross-entropy, a 100,000-level user factor.

Synthetic clicks: a 100,000-level user factor, a 1,000-level ad factor and four numeric features through a small
MLP. logit P(click) = -2 + f(x) + user + ad with f(x) = sin(2 x1) + x2 x3 - 0.5 x4^2, user ~ N(0, 0.8^2),
ad ~ N(0, 0.5^2). Rows are split 80/20 into train and test; the validation grid splits train again.

Compares the test log loss of
  (a) one shared penalty for both factors chosen on a validation grid (one run per grid value + a refit),
  (b) no penalty (one run),
  (c) learned per-factor penalties: tfmixed.keras.EmpiricalBayes(family="binomial") (one run),
and the oracle log loss of the true probabilities. Usage: python examples/keras_clicks.py [--epochs 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

# tfmixed before keras: it imports TensorFlow without TensorFlow's start-up log lines
from tfmixed.keras import EmpiricalBayes, RandomEffects

import keras  # noqa: E402

N_USERS, N_ADS, ROWS = 100_000, 1_000, 400_000
GRID = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
BATCH = 1024


def simulate(seed: int = 0):
    rng = np.random.default_rng(seed)
    user = np.concatenate([np.arange(N_USERS), rng.integers(0, N_USERS, ROWS - N_USERS)])
    ad = rng.integers(0, N_ADS, ROWS)
    features = rng.normal(size=(ROWS, 4)).astype(np.float32)
    logit = -2.0 + np.sin(2 * features[:, 0]) + features[:, 1] * features[:, 2] - 0.5 * features[:, 3] ** 2
    logit = logit + rng.normal(0, 0.8, N_USERS)[user] + rng.normal(0, 0.5, N_ADS)[ad]
    probability = 1 / (1 + np.exp(-logit))
    clicks = (rng.random(ROWS) < probability).astype(np.float32)
    test = rng.random(ROWS) < 0.2

    def part(mask):
        inputs = {"x": features[mask], "user": user[mask].astype(np.int32), "ad": ad[mask].astype(np.int32)}
        return inputs, clicks[mask, None], probability[mask]

    return part(~test), part(test)


def build(penalty: float, base_rate: float, decay_steps: int) -> keras.Model:
    x = keras.Input((4,), name="x")
    user = keras.Input((), name="user", dtype="int32")
    ad = keras.Input((), name="ad", dtype="int32")
    hidden = keras.layers.Dense(32, activation="relu")(x)
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    start = float(np.log(base_rate / (1 - base_rate)))
    fixed = keras.layers.Dense(1, name="fixed", bias_initializer=keras.initializers.Constant(start))(hidden)
    effects = RandomEffects({"user": N_USERS, "ad": N_ADS}, initial_penalty=penalty, name="effects")({"user": user, "ad": ad})
    model = keras.Model({"x": x, "user": user, "ad": ad}, keras.layers.Add()([fixed, effects]))
    schedule = keras.optimizers.schedules.CosineDecay(0.02, decay_steps=decay_steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def train(x, y, penalty: float, epochs: int, callback=None, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build(penalty, float(y.mean()), decay_steps=epochs * int(np.ceil(len(y) / BATCH)))
    if callback is None:  # a fixed penalty still needs n_train for the lambda ||E||^2 / n scaling
        model.get_layer("effects").n_train.assign(float(len(y)))
    model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0, callbacks=[callback] if callback else [])
    return model


def log_loss(model, x, y) -> float:
    logit = model.predict(x, batch_size=16384, verbose=0)
    return float(np.mean(np.logaddexp(0, logit) - y * logit))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    (x_train, y_train, _), (x_test, y_test, p_test) = simulate()
    rows = []

    started = time.perf_counter()
    validation = np.random.default_rng(1).random(len(y_train)) < 0.2
    fit_x = {k: v[~validation] for k, v in x_train.items()}
    val_x = {k: v[validation] for k, v in x_train.items()}
    scores = {}
    for penalty in GRID:
        scores[penalty] = log_loss(train(fit_x, y_train[~validation], penalty, args.epochs), val_x, y_train[validation])
    best = min(scores, key=scores.get)
    model = train(x_train, y_train, best, args.epochs)
    rows.append(("(a) shared penalty, validation grid", len(GRID) + 1, f"lambda = {best:g} (grid {GRID})",
                 log_loss(model, x_test, y_test), time.perf_counter() - started))

    started = time.perf_counter()
    model = train(x_train, y_train, 0.0, args.epochs)
    rows.append(("(b) no penalty", 1, "lambda = 0", log_loss(model, x_test, y_test), time.perf_counter() - started))

    started = time.perf_counter()
    callback = EmpiricalBayes(x_train, y_train, family="binomial", update_every=1, warmup_epochs=2)
    model = train(x_train, y_train, 1.0, args.epochs, callback=callback)
    learned = ", ".join(f"lambda[{k}] = {v:.3g}" for k, v in callback.penalties().items())
    rows.append(("(c) learned per factor, EmpiricalBayes(family='binomial')", 1, learned,
                 log_loss(model, x_test, y_test), time.perf_counter() - started))

    table = pd.DataFrame(rows, columns=["method", "training runs", "penalties", "test log loss", "seconds"]).set_index("method")
    oracle = float(np.mean(-(y_test[:, 0] * np.log(p_test) + (1 - y_test[:, 0]) * np.log1p(-p_test))))
    with pd.option_context("display.width", 250, "display.max_colwidth", 120):
        print(table.round({"test log loss": 4, "seconds": 1}).to_string())
    print(f"\noracle test log loss (true probabilities): {oracle:.4f}")
    print(f"true penalties: lambda[user] = {0.5 / 0.8**2:.3g}, lambda[ad] = {0.5 / 0.5**2:.3g} (1 / (2 tau^2))")
    print(f"validation log loss per grid value: { {k: round(v, 4) for k, v in scores.items()} }")


if __name__ == "__main__":
    main()
