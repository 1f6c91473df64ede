"""Crossed designs at scale: the iterative backend against GPBoost (and lme4, and the exact kernel) (issue 10).

Simulates ``y ~ service + (1 | g1) + (1 | g2)`` with MovieLens-shaped Zipf-like level frequencies
(``tm.datasets.simulate_crossed(frequencies="zipf")``; users = rows / 160 and items = rows / 380, MovieLens 32M's
ratios: 3.2e7 rows give 200,000 x 84,211 levels) and fits it, each fit in a fresh process (peak RSS per fit):

* tfmixed, ``backend="iterative"``, REML, timed from the data frame (design, cross-products, fit);
* GPBoost (pip ``gpboost``), ``matrix_inversion_method="iterative"``, its ML fit, timed from the arrays;
* lme4 (REML, its default optimiser) at the sizes where ``--lme4-max-rows`` allows, within ``--timeout``.

``--accuracy`` adds the issue's accuracy check on 1e6 rows with ``--accuracy-levels`` (2e4 x 5e3) levels, where
the exact kernel runs: the iterative and GPBoost estimates against the exact ones. Usage:

    python benchmarks/bench_scale.py --rows 1e5 1e6 1e7 3.2e7 --accuracy --write
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

from common import emit, lme4_available, run_r

FORMULA = "y ~ service + (1 | g1) + (1 | g2)"
LME4 = """
suppressMessages({library(lme4); library(jsonlite)})
d <- read.csv(commandArgs(TRUE)[1], colClasses = c("numeric", "factor", "factor", "factor"))
t <- system.time(m <- lmer(y ~ service + (1 | g1) + (1 | g2), d))[["elapsed"]]
vc <- as.data.frame(VarCorr(m))
cat(toJSON(list(seconds = t, vcov = vc$vcov, grp = vc$grp, deviance = REMLcrit(m)), digits = 15, auto_unbox = TRUE), "\n")
"""


def levels_for(rows: int) -> tuple[int, int]:
    return round(rows / 160), round(rows / 380)


def simulate(rows: int, levels: tuple[int, int]):
    import tfmixed as tm

    return tm.datasets.simulate_crossed(n_obs=rows, levels=levels, sds=(0.5, 0.4), residual_sd=1.0, seed=5,
                                        frequencies="zipf", zipf_exponent=0.7)


def peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def fit_tfmixed(rows: int, levels: tuple[int, int], backend: str) -> dict:
    import tfmixed as tm
    from tfmixed._tf import tf

    tf.constant(0.0)  # TensorFlow imported before the clock starts, as GPBoost's library is
    data = simulate(rows, levels)
    started = time.perf_counter()
    fit = tm.lmer(FORMULA, data, backend=backend, verbose=False)
    seconds = time.perf_counter() - started
    variances = fit.varcorr["vcov"].to_numpy()  # g1, g2, residual
    out = {"seconds": seconds, "optimiser_seconds": fit.optimum.seconds, "evaluations": fit.optimum.n_evaluations,
           "vcov": variances.tolist(), "fixef": fit.fixef.tolist(), "fixef_se": fit.fixef_se.tolist(),
           "deviance": fit.deviance, "converged": fit.converged, "theta": fit.theta.tolist(), "peak_rss": peak_rss()}
    if backend == "iterative":
        factor = fit.objective.factor(fit.theta)
        covariance = fit.optimum.extra["monte_carlo_cov"]
        out.update(cg_iterations=factor.cg_iterations, theta_mc_se=np.sqrt(np.diag(covariance)).tolist())
    return out


def fit_gpboost(rows: int, levels: tuple[int, int]) -> dict:
    import gpboost as gpb

    data = simulate(rows, levels)
    groups = np.column_stack([data["g1"].cat.codes.to_numpy(), data["g2"].cat.codes.to_numpy()])
    X = np.column_stack([np.ones(rows), (data["service"] == "yes").to_numpy(float)])
    y = data["y"].to_numpy()
    del data
    started = time.perf_counter()
    model = gpb.GPModel(group_data=groups, likelihood="gaussian", matrix_inversion_method="iterative")
    model.fit(y=y, X=X, params={"trace": False})
    seconds = time.perf_counter() - started
    error, g1, g2 = np.asarray(model.get_cov_pars()).ravel()[:3]
    return {"seconds": seconds, "vcov": [g1, g2, error], "fixef": np.asarray(model.get_coef()).ravel().tolist(),
            "peak_rss": peak_rss()}


def fit_lme4(rows: int, levels: tuple[int, int]) -> dict:
    data = simulate(rows, levels)
    return run_r(LME4, data)


def in_child(kind: str, rows: int, levels: tuple[int, int], timeout: float) -> dict | None:
    """One fit in a fresh process (its own peak RSS); None if it ran past ``timeout`` seconds."""
    command = [sys.executable, __file__, "--child", kind, str(rows), str(levels[0]), str(levels[1])]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        raise RuntimeError(f"{kind} at {rows:,} rows failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_relative(ours, theirs) -> float:
    return float(np.max(np.abs(np.asarray(ours) / np.asarray(theirs) - 1)))


def growth(args) -> list[str]:
    rows_out = ["| rows | levels (users x items) | tfmixed iterative | gradients, CG iterations | peak RSS | GPBoost iterative "
                "| peak RSS | GPBoost / tfmixed | variances (tfmixed; GPBoost) | lme4 |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rows in (int(r) for r in args.rows):
        levels = levels_for(rows)
        ours = in_child("iterative", rows, levels, args.timeout)
        peer = in_child("gpboost", rows, levels, args.timeout) if args.gpboost else None
        lme4 = in_child("lme4", rows, levels, args.timeout) if rows <= args.lme4_max_rows and lme4_available() else None
        variances = ", ".join(f"{v:.4f}" for v in ours["vcov"])
        if peer is not None:
            variances += "; " + ", ".join(f"{v:.4f}" for v in peer["vcov"])
        lme4_cell = ("not run" if rows > args.lme4_max_rows else f"over {args.timeout:.0f} s") if lme4 is None else \
            f"{lme4['seconds']:.1f} s ({lme4['seconds'] / ours['seconds']:.1f}x)"
        peer_cells = (f"{peer['seconds']:.1f} s | {peer['peak_rss'] / 2**30:.2f} GiB | {peer['seconds'] / ours['seconds']:.1f}x"
                      if peer is not None else f"over {args.timeout:.0f} s | | ")
        rows_out.append(f"| {rows:,} | {levels[0]:,} x {levels[1]:,} | {ours['seconds']:.1f} s | {ours['evaluations']}, "
                        f"{ours['cg_iterations']} | {ours['peak_rss'] / 2**30:.2f} GiB | {peer_cells} | {variances} | {lme4_cell} |")
        print(rows_out[-1], flush=True)
    return rows_out


def accuracy(args) -> list[str]:
    rows, levels = 1_000_000, tuple(args.accuracy_levels)
    exact = in_child("exact", rows, levels, 4 * args.timeout)
    ours = in_child("iterative", rows, levels, args.timeout)
    peer = in_child("gpboost", rows, levels, args.timeout) if args.gpboost else None
    se = np.asarray(exact["fixef_se"])
    lines = ["", f"Accuracy on {rows:,} rows with {levels[0]:,} x {levels[1]:,} Zipf levels, against the exact kernel "
             f"({exact['seconds']:.1f} s, {exact['evaluations']} evaluations, peak RSS {exact['peak_rss'] / 2**30:.2f} GiB):", "",
             "| fit | seconds | variances, largest relative difference | fixed effects, largest difference in SEs | REML criterion, relative difference |",
             "| --- | --- | --- | --- | --- |",
             f"| tfmixed iterative | {ours['seconds']:.1f} | {largest_relative(ours['vcov'], exact['vcov']):.1e} | "
             f"{np.max(np.abs(np.asarray(ours['fixef']) - exact['fixef']) / se):.1e} | "
             f"{(ours['deviance'] - exact['deviance']) / abs(exact['deviance']):+.1e} |"]
    if peer is not None:
        lines.append(f"| GPBoost iterative (ML) | {peer['seconds']:.1f} | {largest_relative(peer['vcov'], exact['vcov']):.1e} | "
                     f"{np.max(np.abs(np.asarray(peer['fixef']) - exact['fixef']) / se):.1e} | |")
    for line in lines:
        print(line, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    parser.add_argument("--accuracy", action="store_true", help="the exact-kernel comparison at 1e6 rows")
    parser.add_argument("--accuracy-levels", type=int, nargs=2, default=(20_000, 5_000))
    parser.add_argument("--no-gpboost", dest="gpboost", action="store_false")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per fit before it is reported as over")
    parser.add_argument("--lme4-max-rows", type=float, default=1e6)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, rows, l1, l2 = args.child[0], int(args.child[1]), int(args.child[2]), int(args.child[3])
        fit = {"iterative": lambda: fit_tfmixed(rows, (l1, l2), "iterative"),
               "exact": lambda: fit_tfmixed(rows, (l1, l2), "exact"),
               "gpboost": lambda: fit_gpboost(rows, (l1, l2)), "lme4": lambda: fit_lme4(rows, (l1, l2))}[kind]
        print(json.dumps(fit()))
        return
    table = growth(args)
    extra = accuracy(args) if args.accuracy else []
    footer = (f"\nOne fit per cell, each in a fresh process, {platform.machine()} with "
              f"{__import__('os').cpu_count()} cores. tfmixed: `backend='iterative'`, REML, default accuracy settings, "
              "timed from the data frame (design, cross-products, fit; TensorFlow imported before); gradients: estimated gradients the Newton "
              "search took; CG iterations: the most in one solve at the last one. GPBoost 1.8.0: "
              "`matrix_inversion_method='iterative'`, its ML fit, timed from the arrays. Variances: g1, g2, residual "
              "(simulated 0.25, 0.16, 1). lme4 1.1-31 (REML, default optimiser) where run."
              + ("\n" + "\n".join(extra) if extra else ""))
    emit("bench_scale", table, footer, args.write)


if __name__ == "__main__":
    main()
