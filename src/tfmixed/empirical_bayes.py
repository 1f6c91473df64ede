"""MacKay's "quick and dirty" empirical-Bayes loop, as the seed ran it, with a convergence report.

Each iteration re-solves beta and b for the current (G, sigma^2), then sets

    sigma^2 <- var(y - X beta - Z b)              (population variance of the residuals)
    G_t     <- cov(B_t)                           (population covariance of the predicted effects)

keeping only the diagonal of G_t (``covariance="diagonal"``, the seed's ``V_diag``) or all of it
(``"full"``). The full version drives the correlation to +-1 and G_t to singularity: predicted effects
E(b | y) are shrunk along the directions the data determine poorly, so their sample covariance is
more correlated than G itself and each pass feeds the distortion back. tfmixed detects that collapse
and reports it (:class:`CovarianceCollapseWarning`) instead of producing NaNs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConvergenceWarning, CovarianceCollapseWarning, DataError, SingularCovarianceError
from .module import MixedModule
from .progress import Progress


@dataclass
class MacKayIteration:
    """One pass of the loop: the G and sigma^2 it estimated, and the state of the collapse diagnostics."""

    iteration: int
    G: list[np.ndarray]
    sigma2: float
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

    @property
    def collapsed(self) -> bool:
        return self.status == "collapsed"

    def history_frame(self) -> pd.DataFrame:
        """One row per iteration: sigma2 and every variance/covariance of every term."""
        rows = []
        for step in self.history:
            row = {"iteration": step.iteration, "sigma2": step.sigma2}
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
        text = f"MacKay loop {self.status} after {self.iterations} iterations; sigma2 = {self.sigma2:.6g}"
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
    covariance: str = "diagonal",
    G0=None,
    sigma2_0: float | None = None,
    tol: float = 1e-10,
    max_iter: int = 1000,
    collapse_tol: float = 1e-9,
    on_collapse: str = "warn",
    verbose: bool = True,
) -> MacKayResult:
    """Run MacKay's quick-and-dirty loop until (G, sigma^2) change by less than ``tol`` (relative).

    ``model`` is a :class:`MixedModule` or an lme4 formula (with ``data``). Start values default to the
    seed's recipe: sigma^2_0 = var(y) / 4 and G0_t = sigma^2_0 I. With ``covariance="full"``, a G_t whose
    smallest eigenvalue falls below ``collapse_tol`` times its largest is reported as a collapse:
    a :class:`CovarianceCollapseWarning` (``on_collapse="warn"``) or a :class:`SingularCovarianceError`.

    >>> from tfmixed import datasets
    >>> result = mackay("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"),
    ...                 G0=[[410, 10], [10, 22]], sigma2_0=0.25 * datasets.load("sleepstudy").Reaction.var(ddof=0),
    ...                 verbose=False)
    >>> result.converged, np.diag(result.G[0]).round(2).tolist(), round(result.sigma2, 2)
    (True, [371.46, 29.15], 556.22)
    """
    if covariance not in ("diagonal", "full"):
        raise DataError(f"covariance must be 'diagonal' or 'full', got {covariance!r}")
    if on_collapse not in ("warn", "raise"):
        raise DataError(f"on_collapse must be 'warn' or 'raise', got {on_collapse!r}")
    module = MixedModule.from_formula(model, data) if isinstance(model, str) else model
    if sigma2_0 is None:
        sigma2_0 = 0.25 * float(np.var(module.design.y))
    if G0 is None:
        G0 = [sigma2_0 * np.eye(term.n_cols) for term in module.design.terms]
    module.reset_variances(G0, sigma2_0)

    progress = Progress("mackay", verbose=verbose)
    history: list[MacKayIteration] = []
    status, converged = "max_iter", False
    previous = None
    for iteration in range(max_iter):
        sigma2 = module.estimate_sigmasq_epsilon()
        estimates = module.get_rnd_effs_variance()
        G = [estimates] if isinstance(estimates, np.ndarray) else list(estimates)
        if covariance == "diagonal":
            G = [np.diag(np.diag(matrix)) for matrix in G]
        eigenvalues = [np.linalg.eigvalsh(matrix) for matrix in G]
        history.append(
            MacKayIteration(iteration, G, sigma2, [_correlation(m) for m in G], [float(e[0]) for e in eigenvalues])
        )
        collapsed = [
            name for name, e in zip(module.term_names, eigenvalues) if e[0] <= collapse_tol * max(e[-1], np.finfo(float).tiny)
        ]
        if collapsed:
            status = "collapsed"
            corr = history[-1].correlations
            detail = "; ".join(
                f"{name}: smallest eigenvalue {e[0]:.3g}, largest |correlation| "
                f"{np.max(np.abs(c - np.diag(np.diag(c))), initial=0.0):.12f}"
                for name, e, c in zip(module.term_names, eigenvalues, corr)
                if name in collapsed
            )
            message = (
                f"MacKay's full-covariance loop collapsed at iteration {iteration}: G became singular "
                f"(correlation -> 1) for {detail}. The sample covariance of shrunken predictions E(b|y) "
                "omits E(Cov(b|y)); use covariance='diagonal' or the EM-corrected update."
            )
            if on_collapse == "raise":
                error = SingularCovarianceError(message)
                error.history = history
                raise error
            warnings.warn(message, CovarianceCollapseWarning, stacklevel=2)
            break
        if any(e[0] < -1e-8 * max(abs(e[-1]), 1.0) for e in eigenvalues):
            raise SingularCovarianceError("MacKay update produced a covariance that is not positive semi-definite")
        module.reset_variances(G, sigma2)
        current = np.concatenate([[sigma2], *[m.ravel() for m in G]])
        progress.update(iteration + 1, f"sigma2 {sigma2:.6g}")
        if previous is not None and np.max(np.abs(current - previous) / np.maximum(np.abs(previous), 1e-12)) < tol:
            status, converged = "converged", True
            break
        previous = current
    if status == "max_iter":
        warnings.warn(f"MacKay loop did not converge in {max_iter} iterations", ConvergenceWarning, stacklevel=2)
    progress.finish(status)
    last = history[-1]
    return MacKayResult(
        G=last.G,
        sigma2=last.sigma2,
        beta=module.beta.numpy()[:, 0].copy(),
        module=module,
        iterations=len(history),
        converged=converged,
        status=status,
        history=history,
    )
