"""MacKay's "quick and dirty" empirical-Bayes loop, as the seed ran it, with a convergence report.

Each iteration re-solves beta and b for the current (G, sigma^2), then sets

    sigma^2 <- var(y - X beta - Z b)              (population variance of the residuals)
    G_t     <- cov(B_t)                           (population covariance of the predicted effects)

keeping only the diagonal of G_t (``covariance="diagonal"``, the seed's ``V_diag``) or all of it
(``"full"``). The full version drives the correlation to +-1 and G_t to singularity: predicted effects
E(b | y) are shrunk along the directions the data determine poorly, so their sample covariance is
more correlated than G itself and each pass feeds the distortion back (docs/mackay.md). tfmixed detects
that collapse and reports it (:class:`CovarianceCollapseWarning`) instead of producing NaNs.
The loop itself is :func:`tfmixed.estimators.fixed_point.fit_fixed_point` with ``method="mackay"``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import CovarianceCollapseWarning, DataError, SingularCovarianceError
from .estimators.fixed_point import fit_fixed_point
from .lmm import default_start
from .module import MixedModule


@dataclass
class MacKayIteration:
    """One pass of the loop: the G and sigma^2 it estimated, and the state of the collapse diagnostics."""

    iteration: int
    G: list[np.ndarray]
    sigma2: float
    criterion: float
    correlations: list[np.ndarray]
    min_eigenvalues: list[float]


@dataclass
class MacKayResult:
    """Outcome of :func:`mackay`: final estimates, per-iteration history and a convergence report."""

    G: list[np.ndarray]
    sigma2: float
    beta: np.ndarray
    module: MixedModule
    iterations: int
    converged: bool
    status: str
    history: list[MacKayIteration] = field(default_factory=list, repr=False)
    method: str = "MacKay"

    @property
    def collapsed(self) -> bool:
        return self.status == "collapsed"

    def history_frame(self) -> pd.DataFrame:
        """One row per iteration: sigma2, the REML criterion there, and every variance/covariance of every term."""
        rows = []
        for step in self.history:
            row = {"iteration": step.iteration, "sigma2": step.sigma2, "criterion": step.criterion}
            for t, (G, corr) in enumerate(zip(step.G, step.correlations)):
                for i in range(G.shape[0]):
                    for j in range(i + 1):
                        row[f"G{t}[{i},{j}]"] = G[i, j]
                        if i != j:
                            row[f"corr{t}[{i},{j}]"] = corr[i, j]
            rows.append(row)
        return pd.DataFrame(rows).set_index("iteration")

    def report(self) -> str:
        """A short human-readable convergence report."""
        text = f"{self.method} loop {self.status} after {self.iterations} iterations; sigma2 = {self.sigma2:.6g}"
        for name, G in zip(self.module.term_names, self.G):
            text += f"\n  {name}: G = {np.array2string(G, precision=6)}"
        return text


def _correlation(G: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.clip(np.diag(G), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.outer(sd, sd) > 0, G / np.outer(sd, sd), 0.0)


def mackay(
    model: MixedModule | str,
    data: Any = None,
    *,
    method: str = "mackay",
    covariance: str = "diagonal",
    acceleration: str | None = None,
    REML: bool = True,
    G0=None,
    sigma2_0: float | None = None,
    tol: float = 1e-10,
    max_iter: int = 1000,
    collapse_tol: float = 1e-9,
    on_collapse: str = "warn",
    verbose: bool = True,
) -> MacKayResult:
    """Run MacKay's quick-and-dirty loop until (G, sigma^2) change by less than ``tol`` (relative).

    ``model`` is a :class:`MixedModule` or an lme4 formula (with ``data``); the module ends holding the
    final beta and b. ``method="em"`` or ``"evidence"`` runs the corrected updates instead (docs/mackay.md;
    ``REML`` chooses their target, ``acceleration="squarem"`` extrapolates; ``covariance`` applies to
    ``"mackay"``). Start values default to sigma^2_0 = var(y) and G0_t = sigma^2_0 I. With
    ``covariance="full"``, a G_t whose smallest eigenvalue falls below ``collapse_tol`` times its largest
    is reported as a collapse: a :class:`CovarianceCollapseWarning` (``on_collapse="warn"``) or a
    :class:`SingularCovarianceError` (``"raise"``).

    >>> from tfmixed import datasets
    >>> data = datasets.load("sleepstudy")
    >>> result = mackay("Reaction ~ Days + (Days | Subject)", data, G0=[[410, 10], [10, 22]],
    ...                 sigma2_0=0.25 * data.Reaction.var(ddof=0), verbose=False)
    >>> result.converged, np.diag(result.G[0]).round(2).tolist(), round(result.sigma2, 2)
    (True, [371.46, 29.15], 556.22)
    """
    if on_collapse not in ("warn", "raise"):
        raise DataError(f"on_collapse must be 'warn' or 'raise', got {on_collapse!r}")
    if isinstance(model, str):
        module = MixedModule.from_formula(model, data)
    elif isinstance(model, MixedModule):
        module = model
    else:
        raise DataError(f"model must be an lme4 formula string or a MixedModule, got {type(model).__name__}")
    design = module.design
    start = default_start(module.problem, G0, sigma2_0, response_variance=float(np.var(design.y)))
    fit = fit_fixed_point(
        module.problem, start, method=method, reml=REML, covariance=covariance, acceleration=acceleration,
        tol=tol, max_iter=max_iter, collapse_tol=collapse_tol, verbose=verbose,
        residuals=design.residuals,
    )
    history = [
        MacKayIteration(
            step.iteration, step.G, step.sigma2, step.criterion,
            [_correlation(G) for G in step.G], [float(np.linalg.eigvalsh(G)[0]) for G in step.G],
        )
        for step in fit.history
    ]
    if fit.status == "collapsed":
        last = history[-1]
        detail = "; ".join(
            f"{name}: smallest eigenvalue {e:.3g}, largest |correlation| {np.max(np.abs(c - np.diag(np.diag(c))), initial=0.0):.12f}"
            for name, e, c in zip(module.term_names, last.min_eigenvalues, last.correlations)
        )
        message = (
            f"MacKay's full-covariance loop collapsed at iteration {last.iteration}: G became singular "
            f"(correlation -> 1) for {detail}. The sample covariance of shrunken predictions E(b|y) "
            "omits E(Cov(b|y)); use covariance='diagonal' or method='em' (tfmixed.lmer)."
        )
        if on_collapse == "raise":
            error = SingularCovarianceError(message)
            error.history = history
            raise error
        warnings.warn(message, CovarianceCollapseWarning, stacklevel=2)
    state, iterations = fit.state, fit.iterations
    assert state is not None and iterations is not None  # fit_fixed_point sets both
    module.reset_variances(state.G, state.sigma2)
    return MacKayResult(
        G=state.G,
        sigma2=state.sigma2,
        beta=module.beta.numpy()[:, 0].copy(),
        module=module,
        iterations=iterations,
        converged=fit.converged,
        status=fit.status,
        history=history,
        method={"mackay": "MacKay", "em": "EM", "evidence": "evidence"}[method],
    )
