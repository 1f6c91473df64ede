"""Benchmark tfmixed.glmer against lme4's glmer, run side by side in the same invocation (Rscript + lme4).

Models: every shared GLMM reference (tests/reference/glmm: cbpp Laplace, AGQ 25 and proportions, grouseticks,
Mmmec, guImmun nAGQ=0 and Laplace) and a model of the shape of MixedModels.jl's VerbAgg benchmark (7,584 binary
responses, 316 subjects crossed with 24 items; simulated, since VerbAgg itself is not among the shared data).
For each: the median wall time of a whole fit in a warm process (tfmixed: including the standard errors, which
lme4 computes during its fit), both -2 log L, and lme4 refitted with a tight PIRLS tolerance where its default
criterion is inexact (see tests/test_glmm.py). Writes the markdown table to stdout and, with --write, into
benchmarks/RESULTS.md. Usage:

    python benchmarks/bench_glmer.py [--repeats 5] [--write]
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np
import pandas as pd

import tfmixed as tm
from common import HERE, SET2, arguments, emit, lme4_available, run_r, warm_median

GLMM = HERE.parent / "tests" / "reference" / "glmm" / "lme4_default"

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = FALSE, colClasses = "character")
factors <- strsplit(args[6], ",")[[1]]
for (column in names(d)) if (!(column %in% factors)) d[[column]] <- as.numeric(d[[column]])
for (g in factors) d[[g]] <- factor(d[[g]], levels = sort(unique(d[[g]]), method = "radix"))
f <- as.formula(args[2]); reps <- as.integer(args[3]); family <- get(args[4]); nAGQ <- as.integer(args[5])
w <- if (nchar(args[7])) d[[args[7]]] else NULL
fit <- function(control = glmerControl()) glmer(f, d, family = family, nAGQ = nAGQ, weights = w, control = control)
m <- suppressWarnings(fit())  # warm-up, as for tfmixed
times <- numeric(reps)
for (i in seq_len(reps)) times[i] <- system.time(m <- suppressWarnings(fit()))[["elapsed"]]
tight <- suppressWarnings(fit(glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-10))))
sat <- 0
if (nAGQ > 1) { y <- m@resp$y; n <- m@resp$weights; sat <- -2 * sum(dbinom(round(y * n), round(n), y, log = TRUE)) }
cat(sprintf('{"median": %.6f, "criterion": %.10f, "tight": %.10f}\n', median(times), -2 * logLik(m) + sat, -2 * logLik(tight) + sat))
"""


def verbagg_shaped(seed: int = 20) -> pd.DataFrame:
    """316 subjects x 24 items, binary: subject covariates (anger score, gender), item factors (behaviour type
    with 3 levels, situation, mode), subject and item random intercepts of VerbAgg's size (SDs 1.3 and 0.5)."""
    rng = np.random.default_rng(seed)
    subject, item = np.meshgrid(np.arange(316), np.arange(24), indexing="ij")
    subject, item = subject.ravel(), item.ravel()
    anger = rng.integers(11, 40, 316)[subject]
    gender = np.where(rng.random(316) < 0.77, "F", "M")[subject]
    btype = np.array(["curse", "scold", "shout"])[item % 3]
    situ = np.where(item < 12, "other", "self")
    mode = np.where((item // 3) % 2 == 0, "want", "do")
    eta = (-0.2 + 0.06 * (anger - 20) + 0.3 * (gender == "M") - 1.0 * (btype == "scold") - 2.0 * (btype == "shout")
           - 1.0 * (situ == "self") - 0.7 * (mode == "do") + rng.normal(0, 1.3, 316)[subject] + rng.normal(0, 0.5, 24)[item])
    r2 = (rng.random(eta.size) < 1 / (1 + np.exp(-eta))).astype(int)
    return pd.DataFrame({"r2": r2, "Anger": anger, "Gender": gender, "btype": btype, "situ": situ, "mode": mode,
                         "id": subject.astype(str), "item": item.astype(str)})


def models():
    """(label, data, formula, family, nAGQ, weights, factor columns, repeat divisor)."""
    out = []
    for path in sorted(GLMM.glob("*.json")):
        ref = json.loads(path.read_text())
        factors = ref["factor_columns"]
        data = pd.read_csv(SET2 / f"{ref['data']}.csv", dtype={c: str for c in factors}, keep_default_na=False,
                           na_values=["NA"])
        divisor = 5 if ref["id"] == "guImmun_laplace" else 1
        out.append((ref["id"], data, ref["formula"], ref["family"], ref["nAGQ"], ref["weights"], factors, divisor))
    verbagg = verbagg_shaped()
    out.append(("VerbAgg-shaped (316 x 24 crossed, binary)", verbagg,
                "r2 ~ Anger + Gender + btype + situ + mode + (1 | id) + (1 | item)", "binomial", 1, None,
                ["Gender", "btype", "situ", "mode", "id", "item"], 1))
    return out


def run_tfmixed(frame, formula, family, n_agq, weights, repeats):
    def fit():
        result = tm.glmer(formula, frame, family=family, nAGQ=n_agq, weights=weights, verbose=False)
        result.fixef_se  # lme4's fit includes its Hessian
        return result

    median, result = warm_median(fit, repeats)
    return {"median": median, "criterion": result.minus2loglik, "evaluations": result.optimum.n_evaluations}


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "timed fits per engine (guImmun Laplace: a fifth)")
    with_lme4 = lme4_available()
    rows = ["| model | n | tfmixed fit + SEs | lme4 fit | lme4 / tfmixed | -2 log L: tfmixed - lme4 | tfmixed - lme4 (tight) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, frame, formula, family, n_agq, weights, factors, divisor in models():
        repeats = max(1, args.repeats // divisor)
        ours = run_tfmixed(frame, formula, family, n_agq, weights, repeats)
        theirs = (run_r(R_SCRIPT, frame, formula, str(repeats), family, str(n_agq), ",".join(factors), weights or "")
                  if with_lme4 else None)
        if theirs:
            cells = [f"{theirs['median']:.3f} s", f"{theirs['median'] / ours['median']:.1f}x",
                     f"{ours['criterion'] - theirs['criterion']:+.2e}", f"{ours['criterion'] - theirs['tight']:+.2e}"]
        else:
            cells = ["not installed", "n/a", "n/a", "n/a"]
        rows.append(f"| {label} | {len(frame):,} | {ours['median']:.3f} s | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    footer = (f"\nMedian of {args.repeats} fits ({max(1, args.repeats // 5)} for guImmun Laplace), warm process, "
              f"{platform.machine()} with {os.cpu_count()} cores. -2 log L on one scale (lme4's nAGQ > 1 value plus "
              "the saturated model's term); negative: tfmixed's is lower. lme4 (tight): glmerControl(optimizer = "
              "'bobyqa', tolPwrss = 1e-12, rhoend = 1e-10), not timed.")
    emit("bench_glmer", rows, footer, args.write)


if __name__ == "__main__":
    main()
