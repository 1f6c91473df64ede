"""Before and after: the same tfmixed fits from two source trees, in alternating rounds on one machine.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_change.py /tmp/before/src --rounds 5

Each tree runs in its own warm worker process (one BLAS thread); in every round each worker fits every model of
bench_lmer.py and bench_glmer.py (at least 3 calls, the round's median), the workers' order alternating. The
table gives each side's median over the rounds, the ratio after / before, and the criteria (which must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent / "src"


def _models():
    sys.path.insert(0, str(HERE))
    import bench_glmer
    import bench_lmer

    lmms = [(label, frame, formula, None, 1, None, divisor) for label, frame, formula, _, divisor in bench_lmer.models()]
    glmms = [(label, frame, formula, family, n_agq, weights, divisor)
             for label, frame, formula, family, n_agq, weights, _, divisor in bench_glmer.models()]
    return lmms + glmms


def worker(source: str) -> None:
    """Answer "index repeats" lines with one JSON line: the median seconds and the criterion."""
    sys.path.insert(0, source)
    import tfmixed as tm

    models = _models()

    def fit(index):
        label, frame, formula, family, n_agq, weights, _ = models[index]
        if family is None:
            return tm.lmer(formula, frame, verbose=False).deviance
        result = tm.glmer(formula, frame, family=family, nAGQ=n_agq, weights=weights, verbose=False)
        result.fixef_se  # as bench_glmer times it: lme4's fit includes its Hessian
        return result.minus2loglik

    print(json.dumps({"source": tm.__file__, "models": [m[0] for m in models]}), flush=True)
    for line in sys.stdin:
        index, repeats = map(int, line.split())
        criterion, times = fit(index), []  # the first call of a round warms caches
        for _ in range(repeats):
            started = time.perf_counter()
            criterion = fit(index)
            times.append(time.perf_counter() - started)
        print(json.dumps({"median": statistics.median(times), "criterion": criterion}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="the src/ folder of the tree to compare with (a git worktree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", help="labels of the models to time (default: all)")
    args = parser.parse_args()
    environment = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    sides = {}
    for name, source in (("before", args.before), ("after", str(AFTER))):
        process = subprocess.Popen([sys.executable, __file__, "--worker", source], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, env=environment)
        sides[name] = (process, json.loads(process.stdout.readline()))
    labels = sides["after"][1]["models"]
    divisors = [model[-1] for model in _models()]
    chosen = [i for i, label in enumerate(labels) if not args.models or label in args.models]
    times: dict[str, list[list[float]]] = {name: [[] for _ in labels] for name in sides}
    criteria: dict[str, list[float]] = {name: [np.nan] * len(labels) for name in sides}
    load = os.getloadavg()
    try:
        for round_ in range(args.rounds):
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
            for index in chosen:
                for name in order:
                    process = sides[name][0]
                    process.stdin.write(f"{index} {max(1, args.repeats // divisors[index])}\n")
                    process.stdin.flush()
                    answer = json.loads(process.stdout.readline())
                    times[name][index].append(answer["median"])
                    criteria[name][index] = answer["criterion"]
            print(f"round {round_ + 1}/{args.rounds}, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    finally:
        for process, _ in sides.values():
            process.stdin.close()
            process.wait(timeout=60)
    print(f"before: {sides['before'][1]['source']}; after: {sides['after'][1]['source']}; load at start "
          f"{load[0]:.2f}, at end {os.getloadavg()[0]:.2f}; {args.rounds} rounds, 1 BLAS thread")
    print("| model | before (ms) | after (ms) | after / before | criterion after - before |")
    print("| --- | --- | --- | --- | --- |")
    for index in chosen:
        label = labels[index]
        before, after = (statistics.median(times[name][index]) * 1000 for name in ("before", "after"))
        difference = criteria["after"][index] - criteria["before"][index]
        print(f"| {label} | {before:.1f} | {after:.1f} | {after / before:.2f} | {difference:+.1e} |")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
