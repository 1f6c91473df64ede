"""Benchmark lmer on Parquet data larger than a process may hold, through Dask (issue 11).

Generates (once, into --dir) a Parquet data set of --rows rows in files of --rows-per-file rows:
x1, x2 ~ N(0, 1), a 4-level factor f, g1 with 10,000 levels and g2 with 2,000 (uniform), and
y = 1 + 0.5 x1 - 0.3 x2 + f effect + b1[g1] + b2[g2] + e. Then fits ``y ~ x1 + x2 + f + (1 | g1) + (1 | g2)`` from
the Parquet glob on a LocalCluster of --workers processes (one thread each, --memory-limit each), and reports the
fit time, the reduction's rows per second per core, the peak RSS of each worker and of this (client) process,
and the in-memory fit of the first file against the Dask fit of the same file. Writes the table to stdout and,
with --write, into benchmarks/RESULTS.md. Usage:

    python benchmarks/bench_dask.py --rows 200_000_000 --dir /tmp/tfmixed-bench-dask [--write]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

import tfmixed as tm
from common import emit

FORMULA = "y ~ x1 + x2 + f + (1 | g1) + (1 | g2)"
LEVELS = (10_000, 2_000)


def generate(folder: Path, rows: int, rows_per_file: int, seed: int = 1) -> None:
    """Write the data set file by file (each file's rows from its own seed; memory: one file)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    effects1, effects2 = rng.normal(size=LEVELS[0]) * 0.8, rng.normal(size=LEVELS[1]) * 0.5
    factor_effect = np.array([0.0, 0.3, -0.2, 0.5])
    for index, start in enumerate(range(0, rows, rows_per_file)):
        path = folder / f"part-{index:05d}.parquet"
        if path.exists():
            continue
        n = min(rows_per_file, rows - start)
        local = np.random.default_rng([seed, index])
        g1, g2, f = local.integers(0, LEVELS[0], n), local.integers(0, LEVELS[1], n), local.integers(0, 4, n)
        x1, x2 = local.standard_normal(n), local.standard_normal(n)
        y = 1 + 0.5 * x1 - 0.3 * x2 + factor_effect[f] + effects1[g1] + effects2[g2] + local.standard_normal(n)
        frame = pd.DataFrame({"y": y, "x1": x1, "x2": x2, "f": pd.Categorical.from_codes(f, ["a", "b", "c", "d"]),
                              "g1": g1.astype(np.int32), "g2": g2.astype(np.int32)})
        frame.to_parquet(path, index=False)
        print(f"wrote {path.name} ({n:,} rows)", flush=True)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000_000)
    parser.add_argument("--rows-per-file", type=int, default=5_000_000)
    parser.add_argument("--dir", default="/tmp/tfmixed-bench-dask")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--memory-limit", default="4GiB", help="per worker")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    folder = Path(args.dir) / f"rows-{args.rows}"
    started = time.perf_counter()
    # in a child process, so that the peak memory reported for this (client) process is the fit's alone
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=generate, args=(folder, args.rows, args.rows_per_file))
    child.start()
    child.join()
    print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)
    size = sum(p.stat().st_size for p in folder.glob("*.parquet")) / 2**30

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        started = time.perf_counter()
        fit = tm.lmer(FORMULA, str(folder / "*.parquet"), verbose=True)
        seconds = time.perf_counter() - started
        workers = client.run(peak_rss_gib)
        first = str(sorted(folder.glob("*.parquet"))[0])
        sliced = tm.lmer(FORMULA, first, verbose=False)
    client_peak = peak_rss_gib()
    frame = pd.read_parquet(first)
    memory_started = time.perf_counter()
    in_memory = tm.lmer(FORMULA, frame, verbose=False)
    memory_seconds = time.perf_counter() - memory_started
    reduction = seconds - fit.optimum.seconds
    rate = fit.nobs / reduction / args.workers
    rows = [
        "| quantity | value |", "| --- | --- |",
        f"| data | {fit.nobs:,} rows, {size:.1f} GiB of Parquet in {len(list(folder.glob('*.parquet')))} files |",
        f"| fit (two passes over the files, reduction, optimisation) | {seconds:.1f} s, {fit.optimum.n_evaluations} evaluations |",
        f"| of which the two passes and the reduction | {reduction:.1f} s ({rate:,.0f} rows per second per core) |",
        f"| of which the optimisation (on the reduced statistics, in this process) | {fit.optimum.seconds:.1f} s |",
        f"| peak RSS per worker (limit {args.memory_limit}) | {', '.join(f'{v:.2f} GiB' for v in workers.values())} |",
        f"| peak RSS of the client process | {client_peak:.2f} GiB |",
        f"| estimates | sigma {fit.sigma:.4f}, sd(g1) {np.sqrt(fit.covariance_matrices()[0][0, 0]):.4f}, "
        f"sd(g2) {np.sqrt(fit.covariance_matrices()[1][0, 0]):.4f} (simulated 1, 0.8, 0.5) |",
        f"| first file ({frame.shape[0]:,} rows): in-memory fit | {memory_seconds:.1f} s |",
        f"| first file: Dask fit - in-memory fit, REML criterion | {sliced.deviance - in_memory.deviance:+.2e} "
        f"(relative {abs(sliced.deviance - in_memory.deviance) / abs(in_memory.deviance):.1e}) |",
        f"| first file: largest relative difference of theta, beta | "
        f"{np.max(np.abs(sliced.theta - in_memory.theta) / np.abs(in_memory.theta)):.1e}, "
        f"{np.max(np.abs(sliced.fixef - in_memory.fixef) / np.abs(in_memory.fixef)):.1e} |",
    ]
    footer = (f"\n`python benchmarks/bench_dask.py --rows {args.rows} --workers {args.workers}`, LocalCluster of "
              f"{args.workers} worker processes x 1 thread, {os.cpu_count()} cores.")
    emit("bench_dask", rows, footer, args.write)


if __name__ == "__main__":
    main()
