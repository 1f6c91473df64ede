"""Benchmark the EmpiricalBayes callback at scale: epoch time with and without it, update time, peak memory.

The data follow the issue's shape: a user factor with rows / 10 levels, an item factor with rows / 1,000 levels
(a million and ten thousand at 1e7 rows), four numeric features through a 32-16 ReLU MLP, Gaussian noise; the
network is ``Dense(1)(MLP(x)) + RandomEffects({user, item})``, Adam, batch 1,024, one epoch per measurement.
For each size: the seconds of a plain epoch, of an epoch followed by a ``rule="corrected"`` update (the update
timed alone too, and its share of the epoch), the coupling the update chose, the bytes of its statistics and the
process's peak RSS (each size runs in a fresh process, so the peaks do not mix). Writes the markdown table to
stdout and, with --write, into benchmarks/RESULTS.md. Usage:

    python benchmarks/bench_keras.py [--rows 1e5 1e6 1e7] [--write]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np

from common import emit


def simulate(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    users, items = max(10, n // 10), max(10, n // 1000)
    user = rng.integers(0, users, n).astype(np.int32)
    item = rng.integers(0, items, n).astype(np.int32)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    signal = np.sin(x[:, 0]) + x[:, 1] * x[:, 2] - 0.5 * x[:, 3]
    y = (signal + rng.normal(0, 0.7, users)[user] + rng.normal(0, 0.4, items)[item] + rng.normal(size=n)).astype(np.float32)
    return {"x": x, "user": user, "item": item}, y, {"user": users, "item": items}


def one_size(n: int) -> dict:
    import tfmixed  # noqa: F401  (quiet TensorFlow first)
    from tfmixed._tf import keras
    from tfmixed.keras import EmpiricalBayes, RandomEffects

    inputs, y, levels = simulate(n)
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    ids = {f: keras.Input((), name=f, dtype="int32") for f in levels}
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Dense(32, activation="relu")(x))
    fixed = keras.layers.Dense(1, name="fixed")(hidden)
    model = keras.Model({"x": x, **ids}, keras.layers.Add()([fixed, RandomEffects(levels, name="effects")(ids)]))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(inputs, y, epochs=1, batch_size=1024, verbose=0)  # compiles the training step
    started = time.perf_counter()
    model.fit(inputs, y, epochs=1, batch_size=1024, verbose=0)
    plain = time.perf_counter() - started
    callback = EmpiricalBayes(inputs, y, rule="corrected", warmup_epochs=1, batch_size=16384)
    started = time.perf_counter()
    model.fit(inputs, y, epochs=2, batch_size=1024, verbose=0, callbacks=[callback])
    with_update = (time.perf_counter() - started) / 2
    update = callback.update_seconds[-1]  # the second update: the passes are compiled by then
    return {"rows": n, "levels": levels, "plain_epoch": plain, "epoch_with_update": with_update, "update": update,
            "coupling": callback.coupling, "state_bytes": callback.state_nbytes,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "tau2": callback.tau2, "sigma2": callback.sigma2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(int(args.one))))
        return
    rows = ["| rows | user x item levels | epoch | epoch + update | update | update / epoch | coupling | statistics | peak RSS |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in args.rows:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(f"| {r['rows']:,} | {r['levels']['user']:,} x {r['levels']['item']:,} | {r['plain_epoch']:.1f} s | "
                    f"{r['epoch_with_update']:.1f} s | {r['update']:.1f} s | {100 * r['update'] / r['plain_epoch']:.0f}% | "
                    f"{r['coupling']} | {r['state_bytes'] / 2**20:.0f} MiB | {r['peak_rss'] / 2**30:.2f} GiB |")
        print(rows[-1], flush=True)
    footer = (f"\nSeconds per epoch after a compiling one (Adam, batch 1,024), the update timed at its second run, {platform.machine()} with {__import__('os').cpu_count()} cores; "
              "the update streams the rows in batches of 16,384; statistics: the bytes the update held; peak RSS of the "
              "whole process (data, model, TensorFlow).")
    emit("bench_keras", rows, footer, args.write)


if __name__ == "__main__":
    main()
