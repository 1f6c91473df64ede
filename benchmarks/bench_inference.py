"""Benchmark tfmixed's inference after the fit against lme4, side by side (issue 13's targets).

On sleepstudy (``Reaction ~ Days + (Days | Subject)``, REML): profile confidence intervals (tfmixed's
``fit.confint()`` against lme4's ``confint(m)``), 1,000 parametric bootstrap refits (``fit.bootstrap(1000)``, one
process and ``n_jobs=2``, against ``bootMer(m, FUN, nsim = 1000)``), the likelihood-ratio test against
``(1 | Subject)`` and the Kenward-Roger type III table (against lmerTest's ``anova(m, ddf = "Kenward-Roger")``).
Each timing is the median of --repeats runs in a warm process (one for the bootstraps); writes the markdown
table to stdout and, with --write, into benchmarks/RESULTS.md. Usage:

    python benchmarks/bench_inference.py [--repeats 3] [--write]
"""

from __future__ import annotations

import os
import platform
import time

import tfmixed as tm
from common import arguments, emit, lme4_available, run_r, warm_median

R_SCRIPT = r"""
suppressMessages({library(lme4); library(lmerTest)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1]); d$Subject <- factor(d$Subject); reps <- as.integer(args[2]); nsim <- as.integer(args[3])
m <- lme4::lmer(Reaction ~ Days + (Days | Subject), d)
m0 <- lme4::lmer(Reaction ~ Days + (1 | Subject), d)
mt <- lmerTest::lmer(Reaction ~ Days + (Days | Subject), d)
timed <- function(expr) { times <- numeric(reps); for (i in seq_len(reps)) times[i] <- system.time(suppressMessages(expr()))[["elapsed"]]; median(times) }
profile_s <- timed(function() confint(m, method = "profile", oldNames = FALSE))
lrt_s <- timed(function() anova(m0, m))
kr_s <- timed(function() anova(mt, ddf = "Kenward-Roger"))
stat <- function(f) c(fixef(f), as.data.frame(VarCorr(f))$sdcor)
set.seed(1)
boot_s <- system.time(b <- bootMer(m, stat, nsim = nsim))[["elapsed"]]
cat(sprintf('{"profile": %.6f, "bootstrap": %.6f, "lrt": %.6f, "kr": %.6f}\n', profile_s, boot_s, lrt_s, kr_s))
"""


def run_tfmixed(repeats: int, nsim: int) -> dict:
    data = tm.datasets.load("sleepstudy")
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", data, verbose=False)
    small = tm.lmer("Reaction ~ Days + (1 | Subject)", data, verbose=False)
    timings = {}
    timings["profile"], _ = warm_median(lambda: fit.confint(verbose=False), repeats)
    timings["lrt"], _ = warm_median(lambda: tm.anova(small, fit), repeats)
    timings["kr"], _ = warm_median(lambda: tm.lmer("Reaction ~ Days + (Days | Subject)", data, verbose=False)
                                   .anova(ddf="Kenward-Roger"), repeats)
    for jobs in (1, 2):
        started = time.perf_counter()
        fit.bootstrap(nsim, seed=1, n_jobs=jobs, verbose=False)
        timings[f"bootstrap_{jobs}"] = time.perf_counter() - started
    return timings


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "timed runs per task (the bootstraps run once)")
    nsim = 1000
    ours = run_tfmixed(args.repeats, nsim)
    theirs = run_r(R_SCRIPT, tm.datasets.load("sleepstudy"), str(args.repeats), str(nsim)) if lme4_available() else None

    def row(task, ours_s, theirs_key):
        lme4 = f"{theirs[theirs_key]:.3f} s" if theirs else "not installed"
        ratio = f"{theirs[theirs_key] / ours_s:.1f}x" if theirs else "n/a"
        return f"| {task} | {ours_s:.3f} s | {lme4} | {ratio} |"

    rows = ["| sleepstudy task | tfmixed | lme4 / lmerTest | lme4 / tfmixed |", "| --- | --- | --- | --- |",
            row("profile intervals, 6 parameters (`confint`)", ours["profile"], "profile"),
            row(f"parametric bootstrap, {nsim:,} refits, 1 process", ours["bootstrap_1"], "bootstrap"),
            row(f"parametric bootstrap, {nsim:,} refits, `n_jobs=2`", ours["bootstrap_2"], "bootstrap"),
            row("LRT against `(1 \\| Subject)` (both refitted by ML)", ours["lrt"], "lrt"),
            row("Kenward-Roger type III table (tfmixed: fit included)", ours["kr"], "kr")]
    footer = (f"\nMedian of {args.repeats} runs (the bootstraps once each), warm process, {platform.machine()} with "
              f"{os.cpu_count()} cores; lme4 1.1-31 / lmerTest 3.1-3 in the same run (`bootMer` with set.seed(1)).")
    emit("bench_inference", rows, footer, args.write)


if __name__ == "__main__":
    main()
