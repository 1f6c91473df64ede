"""Whole-call time on small models: tfmixed against lme4, glmm, mixedlm and statsmodels (issue 28).

Ten small LMMs and five small GLMMs from R's data sets (lme4, nlme, MASS), each timed as the call a user makes:
formula and data frame in, fitted model out (``tm.lmer(..., verbose=False)``, ``lme4::lmer(...)``,
``glmm.fit(...)``, ``mixedlm.lmer(...)``, ``statsmodels``' ``mixedlm(...).fit(reml=True)``). The data sets are
exported from R to CSV once per run (``--data``, default /tmp/bench_small_data); factors are read as strings.

Every peer runs in its own persistent worker process (one Rscript for lme4, timing inside R with ``Sys.time()``,
whose resolution is finer than ``proc.time()``'s millisecond), so that imports, JIT compilation and package
loading are paid once, in a warm-up call of every model that is not timed. Then ``--rounds`` rounds: in each
round every model is fitted by every peer in turn (the peers' order rotates), each peer repeating the call until
``--budget`` seconds have passed (at least 3 and at most 30 calls, or one call past 2 s); a round's time is the
median of its calls, and the reported time the median over the rounds. Each worker gets a fresh copy of the
data frame for every call, so no peer can reuse work keyed on the frame. Every worker runs with one BLAS thread
(``--blas-threads``): tfmixed picks one itself for small blocks, and on the busy 2-core machine mixedlm's
sleepstudy fit took 8-72 ms with OpenBLAS's default of two threads against 3 ms with one. The load average is
printed at the start and the end; the criteria (REML criterion for the LMMs, -2 log L for the GLMMs) are compared
across peers, and a peer more than 1e-3 above the lowest one is flagged as stopping at a worse optimum.

Usage:

    python benchmarks/bench_small.py [--rounds 5] [--budget 0.5] [--write]
    python benchmarks/bench_small.py --profile Wafer   # cProfile of tfmixed's warm call on one model
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "bench_small"
WORSE = 1e-3  # criterion above the lowest one by more than this: flagged as a worse optimum
PEERS = ["tfmixed", "lme4", "glmm", "glmm_defaults", "mixedlm", "statsmodels"]
LABELS = {"tfmixed": "tfmixed", "lme4": "lme4", "glmm": "glmm", "glmm_defaults": "glmm (defaults)",
          "mixedlm": "mixedlm", "statsmodels": "statsmodels"}

# String (factor) columns of each exported data set; every other column is numeric.
FACTORS = {
    "sleepstudy": ["Subject"], "Dyestuff": ["Batch"], "Penicillin": ["plate", "sample"],
    "Pastes": ["batch", "cask", "sample"], "Orthodont": ["Subject", "Sex"], "Machines": ["Worker", "Machine"],
    "oats": ["B", "V", "N"], "Wafer": ["Wafer", "Site"], "cake": ["replicate", "recipe", "temperature", "rr"],
    "cbpp": ["herd", "period"], "grouseticks": ["INDEX", "BROOD", "YEAR", "LOCATION"],
    "VerbAgg": ["Gender", "item", "resp", "id", "btype", "situ", "mode"], "bacteria": ["ap", "hilo", "ID", "trt"],
}

# R writes the CSVs. Factors become strings; derived columns that some peers need (their formula syntax lacks
# cbind(a, b - a), I(x > 2)) and statsmodels' grouping columns are added here, the same file for every peer.
EXPORT_R = r"""
suppressMessages({library(lme4); library(nlme); library(MASS)})
out <- commandArgs(trailingOnly = TRUE)[1]
w <- function(d, name) {
  d <- as.data.frame(d)
  for (column in names(d)) if (is.factor(d[[column]])) d[[column]] <- as.character(d[[column]])
  write.csv(d, file.path(out, paste0(name, ".csv")), row.names = FALSE)
}
w(lme4::sleepstudy, "sleepstudy"); w(lme4::Dyestuff, "Dyestuff")
w(transform(lme4::Penicillin, one = 1), "Penicillin"); w(lme4::Pastes, "Pastes")
w(nlme::Orthodont, "Orthodont"); w(nlme::Machines, "Machines"); w(MASS::oats, "oats"); w(nlme::Wafer, "Wafer")
w(transform(lme4::cake, rr = paste(recipe, replicate, sep = ":")), "cake")
w(transform(lme4::cbpp, fail = size - incidence, prop = incidence / size), "cbpp")
g <- lme4::grouseticks; g$HEIGHT <- g$HEIGHT - mean(g$HEIGHT); g$cHEIGHT <- NULL; w(g, "grouseticks")
v <- lme4::VerbAgg; v$r2 <- as.integer(v$r2 == "Y"); w(v, "VerbAgg")
b <- MASS::bacteria; b$y <- as.integer(b$y == "y"); b$late <- as.integer(b$week > 2); w(b, "bacteria")
cat("exported\n")
"""

# lme4's worker: one persistent process reading commands (tab-separated) on stdin, one JSON line back per command.
WORKER_R = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
folder <- args[1]
spec <- read.delim(args[2], stringsAsFactors = FALSE, colClasses = "character")
frames <- list()
for (i in seq_len(nrow(spec))) {
  name <- spec$data[i]
  if (!is.null(frames[[name]])) next
  d <- read.csv(file.path(folder, paste0(name, ".csv")), colClasses = "character")
  factors <- strsplit(spec$factors[i], ",")[[1]]
  for (column in names(d)) {
    if (column %in% factors) d[[column]] <- factor(d[[column]], levels = sort(unique(d[[column]]), method = "radix"))
    else d[[column]] <- as.numeric(d[[column]])
  }
  frames[[name]] <- d
}
fit1 <- function(i) {
  d <- frames[[spec$data[i]]]
  if (spec$family[i] == "gaussian") lmer(as.formula(spec$formula[i]), d)
  else glmer(as.formula(spec$formula[i]), d, family = spec$family[i])
}
criterion <- function(m) if (isLMM(m)) REMLcrit(m) else -2 * as.numeric(logLik(m))
now <- function() as.numeric(Sys.time())
con <- file("stdin", "r")
repeat {
  line <- readLines(con, n = 1)
  if (length(line) == 0 || line == "QUIT") break
  parts <- strsplit(line, "\t")[[1]]
  if (parts[1] == "VERSION") {
    cat(sprintf('{"ok": true, "version": "lme4 %s (%s)"}\n', packageVersion("lme4"), R.version.string))
    flush(stdout()); next
  }
  i <- match(parts[2], spec$key); budget <- as.numeric(parts[3])
  lo <- as.integer(parts[4]); hi <- as.integer(parts[5]); cap <- as.numeric(parts[6])
  if (parts[1] == "WARM") { lo <- 1L; hi <- 1L }
  reply <- tryCatch({
    times <- numeric(0); started <- now()
    repeat {
      t0 <- now(); m <- suppressWarnings(suppressMessages(fit1(i))); times <- c(times, now() - t0)
      spent <- now() - started
      if (length(times) >= hi || (spent >= budget && length(times) >= lo) || spent >= cap) break
    }
    sprintf('{"ok": true, "times": [%s], "criterion": %.12g}', paste(sprintf("%.7f", times), collapse = ", "),
            criterion(m))
  }, error = function(e) sprintf('{"ok": false, "error": %s}', encodeString(conditionMessage(e), quote = '"')))
  cat(reply, "\n", sep = ""); flush(stdout())
}
"""


@dataclass
class Model:
    key: str
    data: str
    formula: str
    family: str = "gaussian"
    overrides: dict = field(default_factory=dict)  # peer -> {"formula": ..., "weights": ...}: its syntax for the same model
    statsmodels: dict | None = None  # fixed formula, groups, re_formula, vc_formula (None: not expressible)
    note: str = ""


def sm(formula, groups, re_formula=None, vc=None):
    return {"formula": formula, "groups": groups, "re_formula": re_formula, "vc_formula": vc}


WAFER = "current ~ voltage + I(voltage^2) + (1 + voltage + I(voltage^2) | Wafer) + (1 | Wafer:Site)"
MODELS = [
    Model("sleepstudy", "sleepstudy", "Reaction ~ Days + (Days | Subject)",
          statsmodels=sm("Reaction ~ Days", "Subject", "~Days")),
    Model("sleepstudy_intercept", "sleepstudy", "Reaction ~ Days + (1 | Subject)",
          statsmodels=sm("Reaction ~ Days", "Subject")),
    Model("Dyestuff", "Dyestuff", "Yield ~ 1 + (1 | Batch)", statsmodels=sm("Yield ~ 1", "Batch")),
    Model("Penicillin", "Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)",
          statsmodels=sm("diameter ~ 1", "one", vc={"plate": "0 + C(plate)", "sample": "0 + C(sample)"})),
    Model("Pastes", "Pastes", "strength ~ 1 + (1 | batch/cask)",
          statsmodels=sm("strength ~ 1", "batch", "1", vc={"cask": "0 + C(cask)"})),
    Model("Orthodont", "Orthodont", "distance ~ age + Sex + (age | Subject)",
          statsmodels=sm("distance ~ age + Sex", "Subject", "~age")),
    Model("Machines", "Machines", "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)",
          statsmodels=sm("score ~ Machine", "Worker", "1", vc={"Machine": "0 + C(Machine)"})),
    Model("oats", "oats", "Y ~ V * N + (1 | B/V)", statsmodels=sm("Y ~ V * N", "B", "1", vc={"V": "0 + C(V)"})),
    Model("Wafer", "Wafer", WAFER, overrides={"mixedlm": {"formula": WAFER.replace("^2", "**2")}},
          statsmodels=sm("current ~ voltage + I(voltage**2)", "Wafer", "~voltage + I(voltage**2)",
                         {"Site": "0 + C(Site)"})),
    Model("cake", "cake", "angle ~ recipe * temperature + (1 | recipe:replicate)",
          statsmodels=sm("angle ~ recipe * temperature", "rr")),
    Model("cbpp", "cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial",
          overrides={"glmm": {"formula": "cbind(incidence, fail) ~ period + (1 | herd)"},
                     "glmm_defaults": {"formula": "cbind(incidence, fail) ~ period + (1 | herd)"},
                     "mixedlm": {"formula": "prop ~ period + (1 | herd)", "weights": "size"}}),
    Model("grouseticks", "grouseticks", "TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
          "poisson", note="HEIGHT centred; INDEX is the observation (403 levels for 403 rows)"),
    Model("grouseticks_no_INDEX", "grouseticks", "TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | LOCATION)", "poisson",
          note="the tests' reference model, without the observation-level term"),
    Model("VerbAgg", "VerbAgg", "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "binomial"),
    Model("bacteria", "bacteria", "y ~ trt + I(week > 2) + (1 | ID)", "binomial",
          overrides={p: {"formula": "y ~ trt + late + (1 | ID)"} for p in ("glmm", "glmm_defaults", "mixedlm")}),
]
BY_KEY = {m.key: m for m in MODELS}


# --- Python workers ------------------------------------------------------------------------------------------

def load_frames(folder: Path) -> dict:
    import pandas as pd
    return {name: pd.read_csv(folder / f"{name}.csv", dtype={c: str for c in cols}, keep_default_na=False,
                              na_values=["NA"])
            for name, cols in FACTORS.items()}


def make_fitter(peer: str):
    """(version string, fit(model, frame) -> result, criterion(model, result) -> float) for a Python peer."""
    import importlib.metadata as md

    if peer == "tfmixed":
        import tfmixed as tm

        def fit(model, frame):
            if model.family == "gaussian":
                return tm.lmer(model.formula, frame, verbose=False)
            return tm.glmer(model.formula, frame, family=model.family, verbose=False)

        def criterion(model, result):
            return result.deviance if model.family == "gaussian" else result.minus2loglik
        return f"tfmixed {md.version('tfmixed')}", fit, criterion

    if peer in ("glmm", "glmm_defaults"):
        import glmm
        lean = {"satterthwaite": False, "anova_test": "Wald"} if peer == "glmm" else {}

        def fit(model, frame):
            formula = model.overrides.get(peer, {}).get("formula", model.formula)
            return glmm.fit(frame, formula, family=model.family, **lean)

        return f"glmm {md.version('glmm')}", fit, lambda model, result: -2 * result.loglik

    if peer == "mixedlm":
        import mixedlm as ml
        families = {"binomial": ml.families.Binomial, "poisson": ml.families.Poisson}

        def fit(model, frame):
            over = model.overrides.get(peer, {})
            formula = over.get("formula", model.formula)
            if model.family == "gaussian":
                return ml.lmer(formula, frame)
            return ml.glmer(formula, frame, family=families[model.family](), weights=over.get("weights"))

        def criterion(model, result):
            return result.REMLcrit() if model.family == "gaussian" else -2 * result.logLik().value
        return f"mixedlm {md.version('mixedlm')}", fit, criterion

    if peer == "statsmodels":
        import statsmodels.formula.api as smf

        def fit(model, frame):
            s = model.statsmodels
            if s is None:
                raise NotImplementedError("not expressible in statsmodels' MixedLM (GLMM or crossed terms)")
            return smf.mixedlm(s["formula"], frame, groups=s["groups"], re_formula=s["re_formula"],
                               vc_formula=s["vc_formula"]).fit(reml=True)

        return f"statsmodels {md.version('statsmodels')}", fit, lambda model, result: -2 * result.llf
    raise ValueError(peer)


def worker(peer: str, folder: Path) -> None:
    """A peer's persistent process: JSON commands on stdin, one JSON line back on the original stdout (anything
    the libraries print goes to stderr)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    warnings.simplefilter("ignore")
    frames = load_frames(folder)
    version, fit, criterion = make_fitter(peer)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "version":
            reply = {"ok": True, "version": version}
        else:
            model = BY_KEY[command["model"]]
            lo, hi = (1, 1) if command["cmd"] == "warm" else (command["min"], command["max"])
            try:
                times, started = [], time.perf_counter()
                while True:
                    frame = frames[model.data].copy()
                    t0 = time.perf_counter()
                    result = fit(model, frame)
                    times.append(time.perf_counter() - t0)
                    spent = time.perf_counter() - started
                    if len(times) >= hi or (spent >= command["budget"] and len(times) >= lo) or spent >= command["cap"]:
                        break
                reply = {"ok": True, "times": times, "criterion": float(criterion(model, result))}
                if peer == "tfmixed" and model.family != "gaussian":
                    t0 = time.perf_counter()
                    _ = result.fixef_se  # lme4's glmer computes its Hessian in the call; tfmixed when asked
                    reply["se_seconds"] = time.perf_counter() - t0
            except Exception as error:  # noqa: BLE001 - a peer that cannot fit is recorded, not fatal
                reply = {"ok": False, "error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# --- the driver ----------------------------------------------------------------------------------------------

class Peer:
    def __init__(self, name: str, folder: Path, log, blas_threads: int):
        self.name = name
        env = dict(os.environ)
        if blas_threads:
            env.update({v: str(blas_threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
        if name == "lme4":
            spec = folder / "models.tsv"
            rows = ["key\tdata\tformula\tfamily\tfactors"] + [
                f"{m.key}\t{m.data}\t{m.formula}\t{m.family}\t{','.join(FACTORS[m.data])}" for m in MODELS]
            spec.write_text("\n".join(rows) + "\n")
            (folder / "worker.R").write_text(WORKER_R)
            argv = ["Rscript", str(folder / "worker.R"), str(folder), str(spec)]
        else:
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--data", str(folder)]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                        bufsize=1, env=env)

    def ask(self, command: dict) -> dict:
        if self.name == "lme4":
            if command["cmd"] == "version":
                line = "VERSION"
            else:
                line = "\t".join([command["cmd"].upper(), command["model"], str(command.get("budget", 0)),
                                  str(command.get("min", 1)), str(command.get("max", 1)), str(command.get("cap", 0))])
        else:
            line = json.dumps(command)
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            return {"ok": False, "error": "worker died (see the log)"}
        return json.loads(answer)

    def close(self) -> None:
        try:
            self.process.stdin.write(("QUIT" if self.name == "lme4" else json.dumps({"cmd": "quit"})) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.process.kill()


def export_data(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "export.R"
    script.write_text(EXPORT_R)
    subprocess.run(["Rscript", str(script), str(folder)], check=True, capture_output=True, text=True)


def fmt_ms(seconds) -> str:
    if seconds is None:
        return "-"
    ms = 1e3 * seconds
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def run(args) -> None:
    folder = Path(args.data)
    if shutil.which("Rscript") is None:
        sys.exit("Rscript not found: this benchmark needs R with lme4, nlme and MASS")
    export_data(folder)
    peers_wanted = args.peers or PEERS
    log_path = folder / "workers.log"
    load_start = os.getloadavg()
    started = time.time()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    with open(log_path, "w") as log:
        peers = [Peer(name, folder, log, args.blas_threads) for name in peers_wanted]
        versions = {p.name: p.ask({"cmd": "version"}).get("version", "?") for p in peers}
        print("versions: " + "; ".join(versions[p] for p in peers_wanted), flush=True)
        models = [m for m in MODELS if not args.models or m.key in args.models]
        errors: dict = {}
        for p in peers:  # warm-up: the first call of every model, not timed
            for m in models:
                reply = p.ask({"cmd": "warm", "model": m.key})
                if not reply["ok"]:
                    errors[(p.name, m.key)] = reply["error"]
        print(f"warm-up done ({time.time() - started:.0f} s); failures: {len(errors)}", flush=True)
        rounds: dict = {}
        criteria: dict = {}
        se_times: dict = {}
        for r in range(args.rounds):
            for i, m in enumerate(models):
                order = peers[(r + i) % len(peers):] + peers[:(r + i) % len(peers)]
                for p in order:
                    if (p.name, m.key) in errors:
                        continue
                    reply = p.ask({"cmd": "fit", "model": m.key, "budget": args.budget, "min": 3, "max": 30,
                                   "cap": 2.0})
                    if not reply["ok"]:
                        errors[(p.name, m.key)] = reply["error"]
                        continue
                    rounds.setdefault((p.name, m.key), []).append(statistics.median(reply["times"]))
                    criteria[(p.name, m.key)] = reply["criterion"]
                    if "se_seconds" in reply:
                        se_times.setdefault(m.key, []).append(reply["se_seconds"])
            print(f"round {r + 1}/{args.rounds} done ({time.time() - started:.0f} s), "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        for p in peers:
            p.close()
    load_end = os.getloadavg()
    print(f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}", flush=True)
    report(args, models, peers_wanted, versions, rounds, criteria, se_times, errors, load_start, load_end,
           time.time() - started)


def report(args, models, peers, versions, rounds, criteria, se_times, errors, load_start, load_end, wall):
    median = {k: statistics.median(v) for k, v in rounds.items()}
    others = [p for p in peers if p != "tfmixed"]
    head = ["model", "n"] + [LABELS[p] for p in peers] + ["tfmixed / lme4", "tfmixed / fastest peer"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    crit_head = ["model", "lowest criterion"] + [LABELS[p] for p in peers]
    crit_rows = ["| " + " | ".join(crit_head) + " |", "|" + " --- |" * len(crit_head)]
    flagged, failures = [], []
    nrows = {}
    for m in models:
        if m.data not in nrows:
            with open(Path(args.data) / f"{m.data}.csv") as csv:
                nrows[m.data] = sum(1 for _ in csv) - 1
        found = {p: criteria[(p, m.key)] for p in peers if (p, m.key) in criteria}
        best = min(found.values()) if found else None
        worse = {p for p, c in found.items() if c - best > WORSE}
        cells = []
        for p in peers:
            if (p, m.key) in median:
                cells.append(fmt_ms(median[(p, m.key)]) + (" (worse optimum)" if p in worse else ""))
            elif (p, m.key) in errors:
                cells.append("not expressible" if errors[(p, m.key)].startswith("NotImplementedError")
                             else "fails")
                if not errors[(p, m.key)].startswith("NotImplementedError"):
                    failures.append(f"{LABELS[p]} on {m.key}: {errors[(p, m.key)]}")
            else:
                cells.append("-")
        ours = median.get(("tfmixed", m.key))
        lme4 = median.get(("lme4", m.key))
        good = {p: median[(p, m.key)] for p in others if (p, m.key) in median and p not in worse}
        fastest = min(good, key=good.get) if good else None
        ratio_lme4 = f"{ours / lme4:.2f}" if ours and lme4 else "-"
        ratio_fast = f"{ours / good[fastest]:.1f} ({LABELS[fastest]})" if ours and fastest else "-"
        rows.append(f"| {m.key} | {nrows[m.data]:,} | " + " | ".join(cells) + f" | {ratio_lme4} | {ratio_fast} |")
        crit_cells = []
        for p in peers:
            if p in found:
                diff = found[p] - best
                crit_cells.append(f"{diff:+.1e}" + (" **worse**" if p in worse else ""))
                if p in worse:
                    flagged.append(f"{LABELS[p]} on {m.key}: {diff:+.4g}")
            else:
                crit_cells.append("-")
        crit_rows.append(f"| {m.key} | {best:.6f} | " + " | ".join(crit_cells) + " |" if best is not None
                         else f"| {m.key} | - | " + " | ".join(crit_cells) + " |")
    formulas = ["| model | formula (lme4 and tfmixed) | family | peers' own syntax for the same model |",
                "| --- | --- | --- | --- |"]
    for m in models:
        over = "; ".join(f"{LABELS[p]}: `{o['formula']}`" + (f", weights={o['weights']}" if "weights" in o else "")
                         for p, o in m.overrides.items())
        if m.statsmodels:
            s = m.statsmodels
            over += ("; " if over else "") + (f"statsmodels: `{s['formula']}`, groups={s['groups']}"
                                              + (f", re_formula=`{s['re_formula']}`" if s["re_formula"] else "")
                                              + (f", vc_formula={s['vc_formula']}" if s["vc_formula"] else ""))
        note = f" ({m.note})" if m.note else ""
        cells = [m.key, f"`{m.formula}`{note}", m.family, over or "-"]
        formulas.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    se_line = ""
    if se_times:
        se_line = ("\ntfmixed's GLMM fits leave the standard errors to first use (`fixef_se`); lme4's `glmer` "
                   "computes its Hessian inside the call. That extra step, median ms: "
                   + ", ".join(f"{k} {fmt_ms(statistics.median(v))}" for k, v in se_times.items()) + ".")
    today = datetime.date.today().isoformat()
    command = "python benchmarks/bench_small.py " + " ".join(
        a for a in sys.argv[1:] if a != "--write") + (" --write" if args.write else "")
    text = "\n".join([
        "## Small models: whole-call time against lme4, glmm, mixedlm and statsmodels (issue 28)",
        "",
        f"`{command.strip()}`, {today}, {platform.machine()} with {os.cpu_count()} cores, "
        f"{wall / 60:.0f} min. Load average (1, 5, 15 min) at the start {load_start[0]:.2f}, {load_start[1]:.2f}, "
        f"{load_start[2]:.2f}; at the end {load_end[0]:.2f}, {load_end[1]:.2f}, {load_end[2]:.2f}. "
        "Versions: " + "; ".join(v for p, v in versions.items() if p != "glmm_defaults")
        + f"; Python {platform.python_version()}.",
        "",
        f"Median ms of the whole call (formula and data frame in, fitted model out), over {args.rounds} rounds of "
        f"at least 3 calls each (a round's value is its median), after one untimed warm-up call per peer and model; "
        "every peer in its own warm process, lme4 in one persistent Rscript timed inside R, "
        + (f"each with {args.blas_threads} BLAS thread(s) (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS). "
           if args.blas_threads else "BLAS threads left at each library's default. ")
        + "glmm: "
        "`glmm.fit(..., satterthwaite=False, anova_test='Wald')`, the fit without the inference passes it runs "
        "by default; glmm (defaults): the plain `glmm.fit(data, formula, family=...)`, which also computes "
        "Satterthwaite df and, for Poisson, likelihood-ratio refits. Ratios above 1: tfmixed is slower; the "
        "fastest peer is the fastest among the others that reached the lowest criterion (within 1e-3).",
        "",
        *rows,
        se_line,
        "",
        ("Criterion reached, minus the lowest over the peers (REML criterion for the LMMs, -2 log L for the GLMMs, "
         f"all on lme4's scale); **worse**: more than {WORSE:g} above."),
        "",
        *crit_rows,
        "",
        "Peer failures: " + ("; ".join(failures) if failures else "none") + ".",
        "",
        ("Models and each peer's syntax where it cannot read lme4's formula (the same model; derived columns "
         "are in the exported CSV for every peer):"),
        "",
        *formulas,
    ])
    print("\n" + text)
    if flagged:
        print("\nworse optima: " + "; ".join(flagged))
    if args.write:
        sys.path.insert(0, str(HERE))
        from common import write_block
        write_block(MARKER, text)
        print(f"\nwrote {HERE / 'RESULTS.md'}")


def profile(args) -> None:
    """cProfile of tfmixed's call on one model, warm (after one untimed call), sorted by cumulative time."""
    folder = Path(args.data)
    if not (folder / "sleepstudy.csv").exists():
        export_data(folder)
    warnings.simplefilter("ignore")
    frames = load_frames(folder)
    _, fit, _ = make_fitter("tfmixed")
    model = BY_KEY[args.profile]
    fit(model, frames[model.data].copy())
    profiler = cProfile.Profile()
    repeats = args.profile_repeats
    copies = [frames[model.data].copy() for _ in range(repeats)]
    t0 = time.perf_counter()
    profiler.enable()
    for frame in copies:
        fit(model, frame)
    profiler.disable()
    print(f"{model.key}: {1e3 * (time.perf_counter() - t0) / repeats:.1f} ms per call under the profiler, "
          f"{repeats} calls")
    stats = pstats.Stats(profiler)
    top = {"lmer" if model.family == "gaussian" else "glmer"}
    roots = [key for key in stats.stats if key[2] in top and "tfmixed" in key[0]]
    print(f"direct callees of tfmixed's {'/'.join(top)} (cumulative ms per call): set-up (formula, design, checks), "
          "optimiser, result construction")
    children = []
    for key, (_, _, _, _, callers) in stats.stats.items():
        edge = [callers[root][3] for root in roots if root in callers]
        if edge:
            children.append((sum(edge), f"{Path(key[0]).parent.name}/{Path(key[0]).name}:{key[1]}({key[2]})"))
    for spent, name in sorted(children, reverse=True):
        if spent / repeats >= 1e-5:
            print(f"  {1e3 * spent / repeats:8.2f}  {name}")
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(args.profile_top)
    print(stream.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each peer fits each model in every round")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of calls per peer, model and round")
    parser.add_argument("--write", action="store_true", help="append or replace this section of RESULTS.md")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "bench_small_data"),
                        help="folder for the exported CSVs and the R worker")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="OPENBLAS/OMP/MKL_NUM_THREADS for every worker (0: leave the defaults)")
    parser.add_argument("--peers", nargs="*", choices=PEERS, help="a subset of the peers")
    parser.add_argument("--models", nargs="*", choices=list(BY_KEY), help="a subset of the models")
    parser.add_argument("--profile", choices=list(BY_KEY), help="profile tfmixed on this model and stop")
    parser.add_argument("--profile-repeats", type=int, default=20)
    parser.add_argument("--profile-top", type=int, default=40)
    parser.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.data))
    elif args.profile:
        profile(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
