"""The iterative backend against the exact kernel on a crossed design both can fit (issue 10, first step).

Simulates ``y ~ service + (1 | g1) + (1 | g2)`` with Zipf-like level frequencies
(``tm.datasets.simulate_crossed(frequencies="zipf")``), fits it with ``backend="exact"`` and
``backend="iterative"``, and prints seconds, criterion evaluations, the relative differences of the REML
criterion, the variances and the fixed effects (in SEs), and this process's peak RSS. GPBoost side by side and the
growth table to 3.2e7 rows are not here yet. Usage:

    python benchmarks/bench_scale.py --rows 1_000_000 --levels 20000 5000
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import tfmixed as tm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--levels", type=int, nargs=2, default=(20_000, 5_000))
    parser.add_argument("--zipf-exponent", type=float, default=0.7)
    args = parser.parse_args()
    data = tm.datasets.simulate_crossed(n_obs=args.rows, levels=tuple(args.levels), sds=(0.5, 0.4), residual_sd=1.0,
                                        seed=5, frequencies="zipf", zipf_exponent=args.zipf_exponent)
    formula = "y ~ service + (1 | g1) + (1 | g2)"
    results = {}
    for backend in ("exact", "iterative"):
        started = time.perf_counter()
        try:
            fit = tm.lmer(formula, data, backend=backend, verbose=backend == "iterative")
        except tm.MemoryLimitError as error:  # the exact kernel refuses before allocating
            fit = error
        results[backend] = (fit, time.perf_counter() - started)
    (exact, exact_s), (iterative, iterative_s) = results["exact"], results["iterative"]
    rows = ["| quantity | exact | iterative |", "| --- | --- | --- |"]
    truth = ", ".join(f"{v:.4f}" for v in iterative.varcorr["vcov"])
    if isinstance(exact, Exception):
        rows += [f"| seconds (criterion evaluations) | refused: {str(exact).split(';')[0]} | "
                 f"{iterative_s:.1f} ({iterative.optimum.n_evaluations}) |",
                 f"| variances (simulated 0.25, 0.16, 1) | | {truth} |"]
    else:
        variance = exact.varcorr["vcov"].to_numpy()
        rows += [
            f"| seconds (criterion evaluations) | {exact_s:.1f} ({exact.optimum.n_evaluations}) | "
            f"{iterative_s:.1f} ({iterative.optimum.n_evaluations}) |",
            f"| REML criterion | {exact.deviance:.4f} | {iterative.deviance:.4f} "
            f"(relative {(iterative.deviance - exact.deviance) / abs(exact.deviance):+.1e}) |",
            f"| variances, largest relative difference | | "
            f"{np.max(np.abs(iterative.varcorr['vcov'].to_numpy() / variance - 1)):.1e} |",
            f"| fixed effects, largest difference in SEs | | "
            f"{np.max(np.abs((iterative.fixef - exact.fixef) / exact.fixef_se)):.1e} |",
        ]
    rows.append(f"| peak RSS of the process | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB | |")
    print(f"{args.rows:,} rows, {args.levels[0]:,} x {args.levels[1]:,} levels (Zipf exponent {args.zipf_exponent})")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
