"""Learned per-factor weight decay on real data: lme4's InstEval (73,421 ratings of 1,128 lecturers by 2,972
students in 14 departments), five folds, the same folds for every method.

Methods (test MSE per fold, then mean and SD; training runs per fold):
  (a) ``tm.lmer("y ~ studage + lectage + service + (1 | s) + (1 | d) + (1 | dept)")``, new levels predicted at 0;
  (b) an MLP on the one-hot covariates plus plain embeddings of s, d and dept (scalar, added to the output), no
      penalty;
  (c) the same network with one shared penalty for the three embeddings, chosen on a validation split of the
      training fold (a grid of values, then a refit);
  (d) a per-factor grid: from (c)'s value, each factor's penalty in turn over the grid, the others kept (a
      coordinate search), then a refit;
  (e) ``RandomEffects`` + ``EmpiricalBayes(rule="corrected")``: the three penalties learned in one run.

Usage: python examples/keras_insteval.py [--epochs 20] [--folds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

# tfmixed before keras: it imports TensorFlow without TensorFlow's start-up log lines
import tfmixed as tm
from tfmixed.keras import EmpiricalBayes, RandomEffects

import keras  # noqa: E402

FACTORS = ("s", "d", "dept")
COVARIATES = ("studage", "lectage", "service")
GRID = [1.0, 3.0, 10.0, 30.0, 100.0, 300.0]


def load():
    data = tm.datasets.load("InstEval")
    codes = {f: tm.keras.encode_levels(data[f])[0] for f in FACTORS}
    onehot = pd.get_dummies(data[list(COVARIATES)].astype(str), drop_first=True).to_numpy(np.float32)
    return data, codes, onehot, data["y"].to_numpy(np.float32)


def inputs(rows, codes, onehot):
    return {"x": onehot[rows], **{f: codes[f][rows].astype(np.int32) for f in FACTORS}}


def build(penalties: dict, y_mean: float, n_covariates: int, levels: dict, decay_steps: int) -> keras.Model:
    x = keras.Input((n_covariates,), name="x")
    ids = {f: keras.Input((), name=f, dtype="int32") for f in FACTORS}
    hidden = keras.layers.Dense(16, activation="relu")(x)
    fixed = keras.layers.Dense(1, name="fixed", bias_initializer=keras.initializers.Constant(y_mean))(hidden)
    layer = RandomEffects(levels, name="effects")
    model = keras.Model({"x": x, **ids}, keras.layers.Add()([fixed, layer(ids)]))
    for factor, penalty in penalties.items():
        layer.penalties[factor].assign([penalty])
    # Cosine decay lets every run settle at its penalised optimum, so runs differ by their penalties, not SGD noise.
    schedule = keras.optimizers.schedules.CosineDecay(0.01, decay_steps=decay_steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss="mse")
    return model


def train(x, y, penalties: dict, epochs: int, levels: dict, callback=None, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build(penalties, float(y.mean()), x["x"].shape[1], levels, epochs * int(np.ceil(len(y) / 256)))
    if callback is None:  # a fixed penalty still needs n_train for the lambda ||E||^2 / n scaling
        model.get_layer("effects").n_train.assign(float(len(y)))
    model.fit(x, y, epochs=epochs, batch_size=256, verbose=0, callbacks=[callback] if callback else [])
    return model


def mse(model, x, y) -> float:
    return float(np.mean((model.predict(x, batch_size=8192, verbose=0)[:, 0] - y) ** 2))


def split(rows, fraction: float, seed: int):
    mask = np.random.default_rng(seed).random(rows.size) < fraction
    return rows[~mask], rows[mask]


def grid_search(train_rows, codes, onehot, y, levels, epochs, fold):
    """(c) and (d): validation MSE over a shared grid, then per factor (coordinate search). Returns the chosen
    penalties of each and the number of runs each needed (the refit included)."""
    fit_rows, val_rows = split(train_rows, 0.2, seed=100 + fold)
    fit_x, val_x = inputs(fit_rows, codes, onehot), inputs(val_rows, codes, onehot)

    def score(penalties):
        return mse(train(fit_x, y[fit_rows], penalties, epochs, levels), val_x, y[val_rows])

    shared_scores = {value: score({f: value for f in FACTORS}) for value in GRID}
    shared = min(shared_scores, key=shared_scores.get)
    best = {f: shared for f in FACTORS}
    best_score, runs = shared_scores[shared], len(GRID)
    for factor in FACTORS:
        for value in GRID:
            if value == best[factor]:
                continue
            trial = {**best, factor: value}
            trial_score = score(trial)
            runs += 1
            if trial_score < best_score:
                best, best_score = trial, trial_score
    return {f: shared for f in FACTORS}, len(GRID) + 1, best, runs + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    data, codes, onehot, y = load()
    levels = {f: int(codes[f].max()) + 1 for f in FACTORS}
    fold_of = np.random.default_rng(2026).integers(0, args.folds, len(y))
    results, runs, chosen = {}, {}, {}
    for fold in range(args.folds):
        train_rows, test_rows = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
        x_train, x_test = inputs(train_rows, codes, onehot), inputs(test_rows, codes, onehot)
        record = lambda method, value, count: (results.setdefault(method, []).append(value), runs.setdefault(method, count))
        started = time.perf_counter()
        fit = tm.lmer("y ~ studage + lectage + service + (1 | s) + (1 | d) + (1 | dept)", data.iloc[train_rows],
                      verbose=False)
        predicted = fit.predict(data.iloc[test_rows], allow_new_levels=True)
        record("(a) lmer", float(np.mean((predicted - y[test_rows]) ** 2)), 1)
        record("(b) MLP + embeddings, no penalty",
               mse(train(x_train, y[train_rows], {f: 0.0 for f in FACTORS}, args.epochs, levels), x_test, y[test_rows]), 1)
        shared, shared_runs, per_factor, per_factor_runs = grid_search(train_rows, codes, onehot, y, levels, args.epochs, fold)
        record("(c) one shared penalty, validation grid",
               mse(train(x_train, y[train_rows], shared, args.epochs, levels), x_test, y[test_rows]), shared_runs)
        record("(d) per-factor grid (coordinate search)",
               mse(train(x_train, y[train_rows], per_factor, args.epochs, levels), x_test, y[test_rows]), per_factor_runs)
        callback = EmpiricalBayes(x_train, y[train_rows], rule="corrected", update_every=1, warmup_epochs=2)
        model = train(x_train, y[train_rows], {f: 1.0 for f in FACTORS}, args.epochs, levels, callback=callback)
        record("(e) RandomEffects + EmpiricalBayes (corrected)", mse(model, x_test, y[test_rows]), 1)
        lmer_lambda = {t: fit.sigma**2 / g[0, 0] for t, g in zip([t.name for t in fit.design.terms], fit.covariance_matrices())}
        chosen.setdefault("(a) lmer", []).append(lmer_lambda)
        chosen.setdefault("(c) one shared penalty, validation grid", []).append(shared)
        chosen.setdefault("(d) per-factor grid (coordinate search)", []).append(per_factor)
        chosen.setdefault("(e) RandomEffects + EmpiricalBayes (corrected)", []).append(callback.penalties().to_dict())
        print(f"fold {fold}: " + ", ".join(f"{m[:3]} {v[-1]:.4f}" for m, v in results.items())
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = []
    for method, values in results.items():
        penalties = chosen.get(method)
        text = "" if penalties is None else ", ".join(
            f"{f} {np.median([p.get(f, np.nan) for p in penalties]):.3g}" for f in FACTORS)
        rows.append((method, np.mean(values), np.std(values, ddof=1), runs[method], text))
    table = pd.DataFrame(rows, columns=["method", "test MSE (mean)", "SD over folds", "training runs per fold",
                                        "penalties lambda (median over folds)"]).set_index("method")
    with pd.option_context("display.width", 250, "display.max_colwidth", 100):
        print(table.round(4).to_string())


if __name__ == "__main__":
    main()
