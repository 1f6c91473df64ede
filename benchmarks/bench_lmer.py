"""Benchmark tfmixed.lmer against lme4, run side by side in the same invocation (Rscript + lme4 required for
the ratio).

Models (issue 8's set): sleepstudy, egsingle_nested_slope, star_crossed_slope (lme4's references, data in
tests/reference/set2/data) and the real InstEval (tfmixed.datasets). For each: the median wall time of a
REML fit in a warm process (lme4's ``lmer`` with its default optimiser; tfmixed's ``lmer`` with one BLAS
thread for small dense blocks, as it chooses itself), both REML criteria, and tfmixed's time for the
Satterthwaite df of ``summary()``. Writes the markdown table to stdout and, with --write, into
benchmarks/RESULTS.md between the markers. Usage:

    python benchmarks/bench_lmer.py [--repeats 5] [--write]
"""

from __future__ import annotations

import platform
import time

import pandas as pd

import tfmixed as tm
from common import SET2, arguments, emit, lme4_available, run_r, warm_median

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = FALSE, colClasses = "character")
factors <- strsplit(args[4], ",")[[1]]
for (column in names(d)) if (!(column %in% factors)) d[[column]] <- as.numeric(d[[column]])
for (g in factors) d[[g]] <- factor(d[[g]])
f <- as.formula(args[2]); reps <- as.integer(args[3])
m <- lmer(f, d)  # warm-up, as for tfmixed
times <- numeric(reps)
for (i in seq_len(reps)) times[i] <- system.time(m <- lmer(f, d))[["elapsed"]]
cat(sprintf('{"median": %.6f, "criterion": %.10f}\n', median(times), REMLcrit(m)))
"""


def models() -> list[tuple[str, pd.DataFrame, str, list[str], int]]:
    """(label, data, formula, factor columns, repeat divisor) per benchmark model."""
    egsingle = pd.read_csv(SET2 / "egsingle.csv", dtype={c: str for c in ("schoolid", "childid")})
    star = pd.read_csv(SET2 / "star.csv", dtype={c: str for c in ("cltype", "sch", "id", "tch")},
                       keep_default_na=False, na_values=["NA"]).dropna(subset=["math", "yrs"])
    return [
        ("sleepstudy", tm.datasets.load("sleepstudy"), "Reaction ~ Days + (Days | Subject)", ["Subject"], 1),
        ("egsingle_nested_slope", egsingle, "math ~ year + (year | schoolid) + (1 | childid)", ["schoolid", "childid"], 1),
        ("star_crossed_slope", star, "math ~ yrs + cltype + (yrs | sch) + (1 | id) + (1 | tch)", ["cltype", "sch", "id", "tch"], 3),
        ("InstEval", tm.datasets.load("InstEval"), "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)",
         ["s", "d", "dept", "service", "studage", "lectage"], 2),
    ]


def run_lme4(frame: pd.DataFrame, formula: str, repeats: int, factors: list[str]) -> dict:
    return run_r(R_SCRIPT, frame, formula, str(repeats), ",".join(factors))


def run_tfmixed(frame: pd.DataFrame, formula: str, repeats: int) -> dict:
    median, fit = warm_median(lambda: tm.lmer(formula, frame, verbose=False), repeats)
    started = time.perf_counter()
    fit.satterthwaite_df
    return {"median": median, "criterion": fit.deviance, "evaluations": fit.optimum.n_evaluations,
            "df_seconds": time.perf_counter() - started}


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "timed fits per engine (star: a third, InstEval: a half)")
    with_lme4 = lme4_available()
    rows = ["| model | n | tfmixed fit | evaluations | lme4 fit | lme4 / tfmixed | REML criterion difference | tfmixed Satterthwaite df |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, frame, formula, factors, divisor in models():
        repeats = max(1, args.repeats // divisor)
        ours = run_tfmixed(frame, formula, repeats)
        theirs = run_lme4(frame, formula, repeats, factors) if with_lme4 else None
        ratio = f"{theirs['median'] / ours['median']:.1f}x" if theirs else "n/a"
        difference = f"{ours['criterion'] - theirs['criterion']:+.2e}" if theirs else "n/a"
        lme4_time = f"{theirs['median']:.3f} s" if theirs else "not installed"
        rows.append(f"| {label} | {len(frame):,} | {ours['median']:.3f} s | {ours['evaluations']} | {lme4_time} | {ratio} "
                    f"| {difference} | {ours['df_seconds']:.3f} s |")
        print(rows[-1], flush=True)
    footer = (f"\nMedian of {args.repeats} fits ({max(1, args.repeats // 3)} for star, {max(1, args.repeats // 2)} for InstEval), "
              "warm process, "
              f"{platform.machine()} with {__import__('os').cpu_count()} cores; criterion difference = tfmixed - lme4 "
              "(negative: tfmixed found a lower REML criterion).")
    emit("bench_lmer", rows, footer, args.write)


if __name__ == "__main__":
    main()
