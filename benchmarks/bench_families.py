"""Families with parameters of their own against glmmTMB, same machine, alternating rounds (issue 24).

    python benchmarks/bench_families.py --rounds 3

Each round fits every model once in tfmixed (this process, warm) and once in glmmTMB (one persistent Rscript,
timed inside R with glmmTMB's default control), in alternating order. The table gives the median seconds per
model, the ratio tfmixed / glmmTMB and the log-likelihoods reached (tfmixed's minus glmmTMB's default fit).
Not run in CI.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

R_WORKER = r"""
suppressMessages(library(glmmTMB)); suppressMessages(library(jsonlite))
con <- file("stdin"); open(con)
while (length(line <- readLines(con, n = 1)) > 0) {
  job <- fromJSON(line)
  frame <- read.csv(job$csv, stringsAsFactors = TRUE)
  for (column in names(job$levels)) frame[[column]] <- factor(as.character(frame[[column]]), levels = job$levels[[column]])
  family <- eval(parse(text = job$family))
  started <- proc.time()[["elapsed"]]
  fit <- glmmTMB(as.formula(job$formula), frame, family = family)
  seconds <- proc.time()[["elapsed"]] - started
  cat(toJSON(list(seconds = seconds, logLik = as.numeric(logLik(fit))), digits = NA, auto_unbox = TRUE), "\n")
  flush(stdout())
}
"""

FAMILY_CALLS = {"nbinom2": "nbinom2()", "nbinom1": "nbinom1()", "beta": "beta_family(link = 'logit')"}


def jobs():
    from test_families import FAMILY_MAP, SUPPORTED, load

    out = []
    for reference_id in SUPPORTED:
        reference, frame = load(reference_id)
        family = FAMILY_CALLS.get(reference["family"], f"{reference['family']}(link = '{reference['link']}')")
        out.append((reference_id, reference, frame, FAMILY_MAP[reference["family"]][0], family))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import tfmixed as tm

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    worker = subprocess.Popen(["Rscript", "-e", R_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=ROOT / "tests" / "reference" / "families", env={**os.environ})
    models = jobs()
    times: dict[str, dict[str, list[float]]] = {m[0]: {"tfmixed": [], "glmmTMB": []} for m in models}
    loglik: dict[str, dict[str, float]] = {m[0]: {} for m in models}
    load_start = os.getloadavg()
    for round_number in range(args.rounds + 1):  # round 0 warms both sides up and is not counted
        for reference_id, reference, frame, family, r_family in models:
            order = ("tfmixed", "glmmTMB") if round_number % 2 else ("glmmTMB", "tfmixed")
            for side in order:
                if side == "tfmixed":
                    started = time.perf_counter()
                    fit = tm.glmer(reference["formula"], frame, family=family, link=reference["link"], verbose=False)
                    seconds, value = time.perf_counter() - started, fit.loglik
                else:
                    job = {"csv": reference["csv"], "formula": reference["formula"], "family": r_family,
                           "levels": reference.get("factor_levels", {})}
                    assert worker.stdin is not None and worker.stdout is not None
                    worker.stdin.write(json.dumps(job) + "\n")
                    worker.stdin.flush()
                    answer = json.loads(worker.stdout.readline())
                    seconds, value = answer["seconds"], answer["logLik"]
                if round_number:
                    times[reference_id][side].append(seconds)
                loglik[reference_id][side] = value
    worker.terminate()
    print(f"{args.rounds} rounds, load average at the start {load_start[0]:.2f}, at the end {os.getloadavg()[0]:.2f}")
    print("| model | tfmixed (s) | glmmTMB (s) | tfmixed / glmmTMB | logLik tfmixed - glmmTMB |")
    print("| --- | --- | --- | --- | --- |")
    for reference_id, *_ in models:
        mine, theirs = (statistics.median(times[reference_id][side]) for side in ("tfmixed", "glmmTMB"))
        theirs_value = loglik[reference_id]["glmmTMB"]
        gap = (f"{loglik[reference_id]['tfmixed'] - theirs_value:+.1e}" if isinstance(theirs_value, float)
               else "glmmTMB's default fit fails (logLik NA)")
        print(f"| {reference_id} | {mine:.3f} | {theirs:.3f} | {mine / theirs:.2f} | {gap} |")


if __name__ == "__main__":
    main()
