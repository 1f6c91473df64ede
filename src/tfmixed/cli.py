"""Command line: ``tfmixed demo`` fits sleepstudy (lmer: with a likelihood-ratio test, profile intervals and
prediction intervals) and cbpp (glmer) from the built-in data and prints the results; ``tfmixed fit data.csv "y ~ x + (1 | g)"`` and ``tfmixed glmer data.csv "..." --family binomial`` fit a
model to a file and print its summary (``--json`` writes the numbers)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: exit status of a run that met a user mistake (a bad file, formula or option)
USAGE_ERROR = 2


def _demo(args: argparse.Namespace) -> int:
    from . import datasets, lmer

    data = datasets.load("sleepstudy")
    formula = "Reaction ~ 1 + Days + (1 + Days | Subject)"
    print(f"tfmixed demo: {datasets.describe('sleepstudy')}\n")
    started = time.perf_counter()
    fit = lmer(formula, data, REML=True, verbose=not args.quiet)
    elapsed = time.perf_counter() - started
    print(fit.summary())
    print(f"\n(fit in {elapsed * 1000:.1f} ms; lme4 1.1-31 reports REML criterion 1743.6, the same model)")
    print("\nConditional modes (first 5 subjects):")
    print(fit.ranef["Subject"].head().round(4).to_string())
    _analysis_demo(fit, data, args)
    _glmm_demo(args)
    if args.skip_mackay:
        return 0
    from .errors import OptionalDependencyError

    try:
        from . import mackay
    except OptionalDependencyError as error:  # the core install: the seed's TensorFlow loop is an extra
        print(f"\nMacKay's loop (the seed's TensorFlow module) skipped: {error}")
        return 0

    print("\nMacKay's quick-and-dirty loop, as in the seed article (exact inner solves):")
    start: dict[str, Any] = dict(G0=[[410.0, 10.0], [10.0, 22.0]], sigma2_0=0.25 * float(np.var(data["Reaction"])))
    result = mackay(formula, data, covariance="diagonal", verbose=False, **start)
    print(result.report())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        collapsed = mackay(formula, data, covariance="full", verbose=False, **start)
    correlations = [step.correlations[0][0, 1] for step in collapsed.history]
    print(f"\nKeeping the full covariance: correlation per iteration {np.round(correlations, 6).tolist()}")
    for warning in caught:
        print(f"  -> {warning.category.__name__}: {warning.message}")
    em = lmer(formula, data, method="em", acceleration="squarem", verbose=False, **start)
    G, G_em = fit.covariance_matrices()[0], em.covariance_matrices()[0]
    print(
        f"\nVariances  lmer REML:   intercept {G[0, 0]:.2f}, Days {G[1, 1]:.2f}, residual {fit.sigma ** 2:.2f}"
        f"\n           MacKay:      intercept {result.G[0][0, 0]:.2f}, Days {result.G[0][1, 1]:.2f}, residual {result.sigma2:.2f}"
        f"\n           EM (+E Cov(b|y), full G, SQUAREM, {em.optimum.iterations} cycles): intercept {G_em[0, 0]:.2f}, "
        f"Days {G_em[1, 1]:.2f}, residual {em.sigma ** 2:.2f}, correlation {G_em[0, 1] / (G_em[0, 0] * G_em[1, 1]) ** 0.5:.3f}"
        "\nSee docs/mackay.md for why MacKay's loop comes up short and why the full-covariance loop collapses."
    )
    return 0


def _analysis_demo(fit, data, args: argparse.Namespace) -> None:
    """After the fit: a likelihood-ratio test, profile intervals, a prediction interval for a new subject."""
    from . import anova, lmer

    print("\nIs the random slope needed? (lme4's anova: both models refitted by ML)")
    print(anova(lmer("Reaction ~ 1 + Days + (1 | Subject)", data, verbose=False), fit))
    print("\nProfile 95% confidence intervals (lme4's confint):")
    print(fit.confint(verbose=not args.quiet).round(3).to_string())
    new = {"Days": [0, 9], "Subject": ["a new subject", "a new subject"]}
    print("\nPredictions for a new subject, with 95% prediction intervals (lme4 has none):")
    print(fit.predict(new, allow_new_levels=True, interval="prediction").round(1).to_string())


def _glmm_demo(args: argparse.Namespace) -> None:
    from . import datasets, glmer

    print(f"\nA binomial GLMM: {datasets.describe('cbpp')}\n")
    started = time.perf_counter()
    fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", datasets.load("cbpp"), family="binomial",
                verbose=not args.quiet)
    elapsed = time.perf_counter() - started
    print(fit.summary())
    print(f"\n(fit and standard errors in {elapsed * 1000:.0f} ms; -2 log L {fit.minus2loglik:.6f}, the exact Laplace "
          "approximation: lme4 1.1-31 reports 184.053133, see docs/glmm.md)")


def _read_table(path: str, separator: str | None):
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if file.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(file)
    try:
        return pd.read_csv(file, sep=separator or ("\t" if file.suffix.lower() in (".tsv", ".tab") else ","))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path} as a delimited text file: {error}") from None


def _fit_from_file(args: argparse.Namespace):
    from . import glmer, lmer

    data = _read_table(args.data, args.sep)
    options = dict(weights=args.weights, offset=args.offset, missing="drop" if args.drop_missing else "raise",
                   verbose=not args.quiet)
    if args.command == "glmer":
        return glmer(args.formula, data, family=args.family, link=args.link, nAGQ=args.nagq,
                     ziformula=args.ziformula, dispformula=args.dispformula, **options)
    return lmer(args.formula, data, REML=not args.ml, **options)


def _fit_record(fit, args: argparse.Namespace) -> dict:
    record = {
        "formula": fit.formula, "nobs": fit.nobs, "ngroups": fit.ngroups, "converged": bool(fit.converged),
        "singular": bool(fit.is_singular), "theta": fit.theta.tolist(), "loglik": fit.loglik, "AIC": fit.aic,
        "BIC": fit.bic, "deviance": fit.deviance,
        "coefficients": json.loads(fit.coef_table.to_json(orient="index")),
        "varcorr": json.loads(fit.varcorr.to_json(orient="records")),
    }
    if args.command == "fit":
        record.update(REML=fit.reml, sigma=fit.sigma)
    else:
        record.update(family=fit.family.name, link=fit.family.link.name, nAGQ=fit.n_agq,
                      minus2loglik=fit.minus2loglik, family_parameters=fit.family_parameters.to_dict())
    return record


def _fit(args: argparse.Namespace) -> int:
    from .errors import TfmixedError

    try:
        _check_output(args.json)
        fit = _fit_from_file(args)
        print(fit.summary())
        record = _fit_record(fit, args)
        if getattr(args, "anova", False):
            table = fit.anova(ddf=args.ddf)
            print(f"\nType III Analysis of Variance Table with {args.ddf}'s method\n{table.to_string()}")
            record["anova"] = json.loads(table.to_json(orient="index"))
        if getattr(args, "confint", None):
            options = dict(n_boot=args.nboot, seed=args.seed) if args.confint == "boot" else {}
            intervals = fit.confint(args.confint, level=args.level, verbose=not args.quiet, **options)
            print(f"\n{args.confint} {100 * args.level:g}% confidence intervals\n{intervals.to_string()}")
            record["confint"] = json.loads(intervals.to_json(orient="index"))
            record["confint_level"] = args.level
    except (TfmixedError, OSError, ValueError, ImportError) as error:
        print(f"tfmixed {args.command}: error: {_cli_message(str(error))}", file=sys.stderr)
        return USAGE_ERROR
    if args.json:
        Path(args.json).write_text(json.dumps(_json_ready(record), indent=2, allow_nan=False))
    return 0


def _json_ready(value):
    """The record with NaN and infinities as null (JSON has neither); floats keep their repr (full precision)."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


#: the Python spellings in tfmixed's messages, and the flags a CLI user types instead
_FLAG_NAMES = {"missing='drop'": "--drop-missing", "nAGQ": "--nagq", "weights=": "--weights ", "offset=": "--offset ",
               "family=": "--family ", "link=": "--link ", "n_boot": "--nboot", "tfmixed.glmer": "tfmixed glmer",
               "tfmixed.lmer": "tfmixed fit", "use lmer": "use tfmixed fit"}


def _cli_message(message: str) -> str:
    for python, flag in _FLAG_NAMES.items():
        message = message.replace(python, flag)
    return message


def _check_output(path: str | None) -> None:
    """The --json file's folder must exist and be writable before the fit starts."""
    if path is None:
        return
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"--json: the folder {folder} does not exist")
    if Path(path).is_dir():
        raise IsADirectoryError(f"--json: {path} is a folder, not a file")
    import os

    if not os.access(folder, os.W_OK):
        raise PermissionError(f"--json: cannot write to {folder}")


def _version() -> str:
    from . import __version__

    return __version__


def _any_case(choices: list[str]):
    """An argparse type that accepts a choice in any case and returns its canonical spelling."""
    lookup = {choice.lower(): choice for choice in choices}
    return lambda text: lookup.get(text.lower(), text)


def _add_interval_arguments(parser: argparse.ArgumentParser) -> None:
    methods = ["profile", "Wald", "boot"]
    parser.add_argument("--confint", type=_any_case(methods), choices=methods, help="also print confidence intervals")
    parser.add_argument("--level", type=float, default=0.95, help="the intervals' confidence level (default 0.95)")
    parser.add_argument("--nboot", type=int, default=500, help="bootstrap replicates of --confint boot (default 500)")
    parser.add_argument("--seed", type=int, help="the bootstrap's random seed (reproducible intervals)")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="a CSV (or .tsv, .parquet) file with a header row")
    parser.add_argument("formula", help="an lme4 formula, e.g. 'y ~ x + (1 | g)'")
    parser.add_argument("--weights", help="column of prior weights")
    parser.add_argument("--offset", help="column of offsets (or put offset(col) in the formula)")
    parser.add_argument("--sep", help="field separator of a text file (default: ',' or a tab for .tsv)")
    parser.add_argument("--drop-missing", action="store_true", help="drop rows with missing values (default: refuse)")
    parser.add_argument("--json", metavar="OUT", help="also write the estimates to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfmixed`` command."""
    parser = argparse.ArgumentParser(prog="tfmixed", description="Empirical Bayes for TensorFlow 2")
    parser.add_argument("--version", action="version", version=f"tfmixed {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit sleepstudy and cbpp from the built-in data and print the results")
    demo.add_argument("--quiet", action="store_true", help="no progress lines")
    demo.add_argument("--skip-mackay", action="store_true", help="only the lmer fit (no TensorFlow import)")
    demo.set_defaults(handler=_demo)
    fit = commands.add_parser("fit", help="fit a linear mixed model (lmer) to a data file and print its summary")
    _add_model_arguments(fit)
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--anova", action="store_true", help="also print lmerTest's type III F tests")
    fit.add_argument("--ddf", default="Satterthwaite", type=_any_case(["Satterthwaite", "Kenward-Roger"]),
                     choices=["Satterthwaite", "Kenward-Roger"])
    _add_interval_arguments(fit)
    fit.set_defaults(handler=_fit)
    generalised = commands.add_parser("glmer", help="fit a GLMM (glmer) to a data file")
    _add_model_arguments(generalised)
    families = ["binomial", "poisson", "negative_binomial", "nbinom1", "Gamma", "inverse.gaussian", "gaussian",
                "beta", "tweedie"]
    generalised.add_argument("--family", required=True, type=_any_case(families), choices=families)
    generalised.add_argument("--link", help="the link (default: the family's first, e.g. logit, log, inverse)")
    generalised.add_argument("--nagq", type=int, default=1, help="quadrature points (1: Laplace, 0: fast)")
    generalised.add_argument("--ziformula", help="glmmTMB's zero-inflation formula, e.g. '~1' (count families)")
    generalised.add_argument("--dispformula", help="glmmTMB's dispersion formula, e.g. '~ x'")
    _add_interval_arguments(generalised)
    generalised.set_defaults(handler=_fit)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
