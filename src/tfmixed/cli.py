"""Command line: ``tfmixed demo`` fits sleepstudy (lmer) and cbpp (glmer) from the built-in data and prints the
results."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np


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
    _glmm_demo(args)
    if args.skip_mackay:
        return 0

    from . import mackay

    print("\nMacKay's quick-and-dirty loop, as in the seed article (exact inner solves):")
    start = dict(G0=[[410.0, 10.0], [10.0, 22.0]], sigma2_0=0.25 * float(np.var(data["Reaction"])))
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfmixed`` command."""
    parser = argparse.ArgumentParser(prog="tfmixed", description="Empirical Bayes for TensorFlow 2")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit sleepstudy and cbpp from the built-in data and print the results")
    demo.add_argument("--quiet", action="store_true", help="no progress lines")
    demo.add_argument("--skip-mackay", action="store_true", help="only the lmer fit (no TensorFlow import)")
    demo.set_defaults(handler=_demo)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
