"""Per-group weight decay learned without validation, on the seed's motivating problem.

Synthetic data as the seed describes it: a 10,000-level customer factor, a 50-level state factor and numeric
features entering through a small MLP. y = f(x) + customer + state + noise with
f(x) = sin(2 x1) + x2 x3 - 0.5 x4^2, customer ~ N(0, 0.6^2), state ~ N(0, 0.8^2), noise ~ N(0, 1).
Training rows are split 80/20 per customer into train and test; the validation grid splits train again.

Compares the test MSE of
  (a) one shared penalty for both factors chosen on a validation grid (one run per grid value + a refit),
  (b) no penalty (one run),
  (c) learned per-factor penalties, tfmixed.keras.EmpiricalBayes, corrected rule (one run),
  (d) the same with the seed's quick-and-dirty rule (one run),
  (e) as (c), with the two hidden layers' weight decay learned too (EmpiricalBayesDecay, one run),
  (f) as (c), with one hidden-layer weight decay chosen on a validation grid (one run per grid value + a refit),
and the oracle MSE of the true mean function.
Usage: python examples/keras_customers.py [--epochs 20] [--methods abcdef] [--seeds 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

# tfmixed before keras: it imports TensorFlow without TensorFlow's start-up log lines
from tfmixed.keras import EmpiricalBayes, EmpiricalBayesDecay, RandomEffects

import keras  # noqa: E402

N_CUSTOMERS, N_STATES, ROWS = 10_000, 50, 80_000
GRID = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
#: lambda of the hidden layers' L2 penalty lambda ||W||^2 / n_train (the scale EmpiricalBayesDecay learns on)
HIDDEN_GRID = [0.3, 1.0, 3.0, 10.0, 30.0, 100.0]


def simulate(seed: int = 0):
    rng = np.random.default_rng(seed)
    customer = np.concatenate([np.arange(N_CUSTOMERS), rng.integers(0, N_CUSTOMERS, ROWS - N_CUSTOMERS)])
    state_of_customer = rng.integers(0, N_STATES, N_CUSTOMERS)
    state = state_of_customer[customer]
    features = rng.normal(size=(ROWS, 4)).astype(np.float32)
    mean = np.sin(2 * features[:, 0]) + features[:, 1] * features[:, 2] - 0.5 * features[:, 3] ** 2
    mean = mean + rng.normal(0, 0.6, N_CUSTOMERS)[customer] + rng.normal(0, 0.8, N_STATES)[state]
    y = (mean + rng.normal(0, 1.0, ROWS)).astype(np.float32)
    test = rng.random(ROWS) < 0.2
    def part(mask):
        return {"x": features[mask], "customer": customer[mask].astype(np.int32), "state": state[mask].astype(np.int32)}, y[mask, None], mean[mask]
    return part(~test), part(test)


def hidden_regulariser(hidden, n_train: int):
    """None, a learned EmpiricalBayesDecay ("learned") or a fixed L2 penalty lambda ||W||^2 / n_train."""
    if hidden is None:
        return None
    if hidden == "learned":
        return EmpiricalBayesDecay(initial_penalty=1.0, n_train=n_train)
    return keras.regularizers.L2(hidden / n_train)


def build(penalty: float, y_mean: float, decay_steps: int, hidden=None, n_train: int = 1) -> keras.Model:
    x = keras.Input((4,), name="x")
    customer = keras.Input((), name="customer", dtype="int32")
    state = keras.Input((), name="state", dtype="int32")
    hidden_layer = keras.layers.Dense(32, activation="relu", kernel_regularizer=hidden_regulariser(hidden, n_train))(x)
    hidden_layer = keras.layers.Dense(32, activation="relu", kernel_regularizer=hidden_regulariser(hidden, n_train))(hidden_layer)
    hidden = hidden_layer
    fixed = keras.layers.Dense(1, name="fixed", bias_initializer=keras.initializers.Constant(y_mean))(hidden)
    effects = RandomEffects({"customer": N_CUSTOMERS, "state": N_STATES}, initial_penalty=penalty, name="effects")(
        {"customer": customer, "state": state}
    )
    model = keras.Model({"x": x, "customer": customer, "state": state}, keras.layers.Add()([fixed, effects]))
    # Cosine decay lets every run settle at its penalised optimum, so runs differ by their penalties, not SGD noise.
    schedule = keras.optimizers.schedules.CosineDecay(0.02, decay_steps=decay_steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss="mse")
    return model


def train(x, y, penalty: float, epochs: int, callback=None, seed: int = 0, hidden=None) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build(penalty, float(y.mean()), decay_steps=epochs * int(np.ceil(len(y) / 256)), hidden=hidden, n_train=len(y))
    callbacks = [callback] if callback is not None else []
    if callback is None:  # a fixed penalty still needs n_train for the lambda ||E||^2 / n scaling
        model.get_layer("effects").n_train.assign(float(len(y)))
    model.fit(x, y, epochs=epochs, batch_size=256, verbose=0, callbacks=callbacks)
    return model


def mse(model, x, y) -> float:
    return float(np.mean((model.predict(x, batch_size=8192, verbose=0) - y) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--methods", default="abcdef", help="which of the methods (a)-(f) to run")
    parser.add_argument("--seeds", type=int, default=1,
                        help="replications: seed s simulates data set s and trains with seed s (default: 1, seed 0)")
    args = parser.parse_args()
    per_seed = {}
    for seed in range(args.seeds):
        table = run(args, seed)
        for method, score in table["test MSE"].items():
            per_seed.setdefault(method, []).append(score)
    if args.seeds > 1:
        summary(per_seed)


def summary(per_seed: dict) -> None:
    """Mean test MSE over the replications, and the paired difference of learned against grid hidden decay."""
    print(f"\nover {len(next(iter(per_seed.values())))} replications:")
    for method, scores in per_seed.items():
        print(f"  {method}: mean test MSE {np.mean(scores):.4f} (per seed {', '.join(f'{v:.4f}' for v in scores)})")
    learned = [m for m in per_seed if m.startswith("(e)")]
    grid = [m for m in per_seed if m.startswith("(f)")]
    if learned and grid:
        difference = np.array(per_seed[learned[0]]) - np.array(per_seed[grid[0]])
        print(f"  (e) - (f), paired: mean {difference.mean():+.4f}, standard error "
              f"{difference.std(ddof=1) / np.sqrt(difference.size):.4f}")


def run(args, seed: int) -> pd.DataFrame:
    """Every chosen method on data set ``seed``; prints and returns the table."""
    (x_train, y_train, _), (x_test, y_test, mean_test) = simulate(seed)
    rows, scores, hidden_scores = [], {}, {}
    rng = np.random.default_rng(seed + 1)  # the validation split
    validation = rng.random(len(y_train)) < 0.2
    fit_x = {k: v[~validation] for k, v in x_train.items()}
    val_x = {k: v[validation] for k, v in x_train.items()}

    def learned(x, y, hidden=None):
        callback = EmpiricalBayes(x, y, rule="corrected", update_every=1, warmup_epochs=2)
        return train(x, y, 1.0, args.epochs, callback=callback, seed=seed, hidden=hidden), callback

    def describe(callback):
        return ", ".join(f"lambda[{k}] = {v:.3g}" for k, v in callback.penalties().items()) + f"; sigma2 = {callback.sigma2:.3f}"

    if "a" in args.methods:
        started = time.perf_counter()
        for penalty in GRID:
            model = train(fit_x, y_train[~validation], penalty, args.epochs, seed=seed)
            scores[penalty] = mse(model, val_x, y_train[validation])
        best = min(scores, key=scores.get)
        model = train(x_train, y_train, best, args.epochs, seed=seed)
        rows.append(("(a) shared penalty, validation grid", len(GRID) + 1, f"lambda = {best:g} (grid {GRID})",
                     mse(model, x_test, y_test), time.perf_counter() - started))
    if "b" in args.methods:
        started = time.perf_counter()
        model = train(x_train, y_train, 0.0, args.epochs, seed=seed)
        rows.append(("(b) no penalty", 1, "lambda = 0", mse(model, x_test, y_test), time.perf_counter() - started))
    for key, label, rule in (("c", "(c) learned, corrected rule", "corrected"), ("d", "(d) learned, quick-and-dirty rule", "quick_and_dirty")):
        if key in args.methods:
            started = time.perf_counter()
            callback = EmpiricalBayes(x_train, y_train, rule=rule, update_every=1, warmup_epochs=2)
            model = train(x_train, y_train, 1.0, args.epochs, callback=callback, seed=seed)
            rows.append((label, 1, describe(callback), mse(model, x_test, y_test), time.perf_counter() - started))
    if "e" in args.methods:
        started = time.perf_counter()
        model, callback = learned(x_train, y_train, hidden="learned")
        rows.append(("(e) learned, hidden layers' decay learned too", 1, describe(callback), mse(model, x_test, y_test),
                     time.perf_counter() - started))
    if "f" in args.methods:
        started = time.perf_counter()
        for value in HIDDEN_GRID:
            model, _ = learned(fit_x, y_train[~validation], hidden=value)
            hidden_scores[value] = mse(model, val_x, y_train[validation])
        best = min(hidden_scores, key=hidden_scores.get)
        model, callback = learned(x_train, y_train, hidden=best)
        rows.append(("(f) learned, hidden decay from a validation grid", len(HIDDEN_GRID) + 1,
                     f"hidden lambda = {best:g} (grid {HIDDEN_GRID}); " + describe(callback), mse(model, x_test, y_test),
                     time.perf_counter() - started))

    table = pd.DataFrame(rows, columns=["method", "training runs", "penalties", "test MSE", "seconds"]).set_index("method")
    oracle = float(np.mean((mean_test[:, None] - y_test) ** 2))
    with pd.option_context("display.width", 250, "display.max_colwidth", 120):
        print(f"data set and training seed {seed}:")
        print(table.round({"test MSE": 4, "seconds": 1}).to_string())
    print(f"\noracle test MSE (true mean function, noise only): {oracle:.4f}")
    print(f"true penalties: lambda[customer] = {1 / 0.6**2:.3g}, lambda[state] = {1 / 0.8**2:.3g} (sigma2 = 1)")
    if scores:
        print(f"validation MSE per grid value: { {k: round(v, 4) for k, v in scores.items()} }")
    if hidden_scores:
        print(f"validation MSE per hidden-decay value: { {k: round(v, 4) for k, v in hidden_scores.items()} }")
    return table


if __name__ == "__main__":
    main()
