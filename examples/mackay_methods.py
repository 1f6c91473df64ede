"""Compare the variance estimators on sleepstudy from the seed's start: lme4's REML, EM, evidence, MacKay.

Prints the methods table used in docs/mackay.md and, with --plot FILE, saves the trajectories side by side.
    python examples/mackay_methods.py [--plot history.png]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import tfmixed as tm

FORMULA = "Reaction ~ 1 + Days + (1 + Days | Subject)"
#: lme4 1.1-31, REML, from the shared reference (tests/reference/sleepstudy_reml.json)
LME4 = {"(Intercept)": 612.100158024769, "Days": 35.0717144509388, "cov": 9.60440895115776, "Residual": 654.940008259961}


def row(label: str, fit: tm.LmerFit, seconds: float) -> dict:
    G = fit.covariance_matrices()[0]
    return {
        "method": label,
        "var (Intercept)": G[0, 0],
        "var Days": G[1, 1],
        "cov": G[0, 1],
        "residual": fit.sigma**2,
        "REML criterion": fit.deviance,
        "iterations": getattr(fit.optimum, "iterations", fit.optimum.n_evaluations),
        "updates": fit.optimum.n_evaluations,
        "ms": seconds * 1000,
        "status": getattr(fit.optimum, "status", "converged" if fit.converged else "not converged"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", help="save the trajectories of EM, SQUAREM-EM and MacKay to this PNG")
    args = parser.parse_args()
    data = tm.datasets.load("sleepstudy")
    seed_start = dict(G0=[[410.0, 10.0], [10.0, 22.0]], sigma2_0=0.25 * float(np.var(data["Reaction"])))
    runs = [
        ("lmer profiled REML", dict(method="profiled")),
        ("EM (REML)", dict(method="em", **seed_start)),
        ("EM + SQUAREM", dict(method="em", acceleration="squarem", **seed_start)),
        ("evidence (diagonal G)", dict(method="evidence", **seed_start)),
        ("MacKay quick & dirty, diagonal", dict(method="mackay", covariance="diagonal", **seed_start)),
        ("MacKay quick & dirty, full", dict(method="mackay", covariance="full", **seed_start)),
    ]
    rows, fits = [], {}
    for label, options in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (tm.CovarianceCollapseWarning, tm.SingularFitWarning))
            started = time.perf_counter()
            fit = tm.lmer(FORMULA, data, verbose=False, **options)
            seconds = time.perf_counter() - started
        fits[label] = fit
        rows.append(row(label, fit, seconds))
    rows.append({"method": "lme4 1.1-31 REML", "var (Intercept)": LME4["(Intercept)"], "var Days": LME4["Days"],
                 "cov": LME4["cov"], "residual": LME4["Residual"], "REML criterion": 1743.62827195995})
    table = pd.DataFrame(rows).set_index("method")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round({"var (Intercept)": 2, "var Days": 3, "cov": 3, "residual": 2, "REML criterion": 4, "ms": 1}).to_string())

    # The law of total variance at the REML estimates: G = mean_j E(b_j|y)E(b_j|y)' + mean_j Cov(b_j|y).
    reml = fits["lmer profiled REML"]
    b = reml.ranef["Subject"].to_numpy()
    predicted = b.T @ b / len(b)
    # Cov(b_j | y) with beta integrated out (REML), as the EM update uses it.
    from tfmixed.estimators.fixed_point import VarianceState

    factor = VarianceState(reml.covariance_matrices(), reml.sigma**2).factor(reml.problem)
    T = factor.factors[0]
    conditional = reml.sigma**2 * T @ factor.inverse_block_sums(include_fixed=True)[0] @ T.T / len(b)
    print("\nAt the REML estimates (sleepstudy):")
    print("  mean_j b_j b_j'        =", np.array2string(predicted, precision=3).replace("\n", ""))
    print("  mean_j Cov(b_j | y)    =", np.array2string(conditional, precision=3).replace("\n", ""))
    print("  sum                    =", np.array2string(predicted + conditional, precision=3).replace("\n", ""))
    print("  G (REML)               =", np.array2string(reml.covariance_matrices()[0], precision=3).replace("\n", ""))
    collapse = fits["MacKay quick & dirty, full"].history
    print("\nFull-covariance MacKay loop, per iteration:")
    G_cols = [c for c in collapse.columns if c.startswith("Subject")]
    for index, entry in collapse.iterrows():
        G = np.array([[entry[G_cols[0]], entry[G_cols[1]]], [entry[G_cols[1]], entry[G_cols[2]]]])
        eig = np.linalg.eigvalsh(G)
        print(f"  {index}: corr {G[0, 1] / np.sqrt(G[0, 0] * G[1, 1]):.10f}  eigenvalues {eig[0]:.3e} {eig[1]:.2f}")
    if args.plot:
        figure = fits["EM (REML)"].plot_history(fits["EM + SQUAREM"], fits["MacKay quick & dirty, diagonal"],
                                                labels=["EM", "EM + SQUAREM", "MacKay (diagonal)"])
        figure.savefig(args.plot, dpi=110)
        print(f"\nsaved {Path(args.plot).resolve()}")


if __name__ == "__main__":
    main()
