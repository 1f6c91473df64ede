"""Benchmark tfmixed.lmer against lme4 (run in the same invocation when Rscript + lme4 are installed).

(a) sleepstudy, Reaction ~ 1 + Days + (1 + Days | Subject): median time per fit in a warm process.
(b) an InstEval-shaped crossed design: 73,421 rows, random intercepts for 2,972 x 1,128 crossed levels
    plus a 28-level factor, one two-level fixed effect (tfmixed.datasets.simulate_crossed).

Prints each time, the ratio lme4 / tfmixed, and the REML criteria. Usage:
    python benchmarks/bench_lmer.py [--repeats 30] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import tfmixed as tm

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = TRUE)
for (g in strsplit(args[4], ",")[[1]]) d[[g]] <- factor(d[[g]])
f <- as.formula(args[2]); reps <- as.integer(args[3])
m <- lmer(f, d)  # warm-up, as for tfmixed
times <- numeric(reps)
for (i in seq_len(reps)) times[i] <- system.time(m <- lmer(f, d))[["elapsed"]]
cat(sprintf('{"median": %.6f, "criterion": %.10f}\n', median(times), REMLcrit(m)))
"""


def lme4_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(["Rscript", "-e", "suppressMessages(library(lme4))"], capture_output=True)
    return probe.returncode == 0


def run_lme4(frame, formula: str, repeats: int, grouping: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        csv, script = Path(folder) / "data.csv", Path(folder) / "fit.R"
        frame.to_csv(csv, index=False)
        script.write_text(R_SCRIPT)
        out = subprocess.run(
            ["Rscript", str(script), str(csv), formula, str(repeats), ",".join(grouping)],
            capture_output=True, text=True, check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_tfmixed(frame, formula: str, repeats: int) -> dict:
    fit = tm.lmer(formula, frame, verbose=False)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fit = tm.lmer(formula, frame, verbose=False)
        times.append(time.perf_counter() - started)
    return {"median": statistics.median(times), "criterion": fit.deviance, "evaluations": fit.optimum.n_evaluations}


def compare(label: str, frame, formula: str, repeats: int, grouping: list[str], with_lme4: bool) -> None:
    ours = run_tfmixed(frame, formula, repeats)
    print(f"\n{label}: {formula}  (n = {len(frame)}, median of {repeats})")
    print(f"  tfmixed  {ours['median'] * 1000:10.1f} ms   REML criterion {ours['criterion']:.8f}  ({ours['evaluations']} evaluations)")
    if not with_lme4:
        print("  lme4     not installed (apt-get install -y r-cran-lme4): no ratio")
        return
    theirs = run_lme4(frame, formula, repeats, grouping)
    relative = abs(ours["criterion"] - theirs["criterion"]) / abs(theirs["criterion"])
    print(f"  lme4     {theirs['median'] * 1000:10.1f} ms   REML criterion {theirs['criterion']:.8f}")
    print(f"  speed-up lme4 / tfmixed = {theirs['median'] / ours['median']:.2f}x; criterion relative difference {relative:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed fits of sleepstudy per engine")
    parser.add_argument("--large-repeats", type=int, default=1, help="timed fits of the InstEval-shaped design")
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    with_lme4 = lme4_available()
    compare("sleepstudy", tm.datasets.load("sleepstudy"), "Reaction ~ 1 + Days + (1 + Days | Subject)",
            args.repeats, ["Subject"], with_lme4)
    if not args.skip_large:
        frame = tm.datasets.simulate_crossed()
        compare("InstEval-shaped crossed design", frame, "y ~ service + (1 | g1) + (1 | g2) + (1 | g3)",
                args.large_repeats, ["g1", "g2", "g3"], with_lme4)


if __name__ == "__main__":
    main()
