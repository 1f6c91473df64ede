"""Fixed-point estimators of the variance components: MacKay's quick-and-dirty loop, EM and evidence updates.

All three re-solve the mixed model equations at the current (G, sigma^2) with the blocked kernel and then
update the variances. With b_j the predicted effects of level j, U the spherical effects (b = Lambda u),
r = y - X beta - Z b, and sum_j B_j the summed diagonal blocks of Omega_P^{-1} (P = [Z Lambda, X] for REML,
Z Lambda alone for ML), so that sigma^2 T B_j T' = Cov(b_j | y):

* ``mackay`` (the seed's loop): sigma^2 <- var(r), G_t <- cov_j(b_j) (population moments), optionally diagonal.
  Misses E(Cov(b_j | y)) (law of total variance), so its variances come up short.
* ``em``: G_t <- mean_j(b_j b_j' + Cov(b_j | y)) = T (U'U + sigma^2 sum_j B_j) T' / l,
  sigma^2 <- (||r||^2 + sigma^2 (dim P - tr_u Omega_P^{-1})) / n. Converges to the REML (ML) estimates.
* ``evidence``: MacKay (1992)'s evidence updates per variance component, gamma_tc = l_t - (sum_j B_j)_cc
  well-determined parameters, tau_tc^2 <- sum_j b_jc^2 / gamma_tc, sigma^2 <- ||r||^2 / (n - p_eff - sum gamma)
  (p_eff = p for REML, 0 for ML). Its fixed point maximises the evidence: the REML (ML) estimates of the
  model with diagonal G_t (lme4's ``||``).

``acceleration="squarem"`` wraps any of them in SQUAREM (Varadhan & Roland 2008, scheme S3) with a
monotonicity safeguard on the likelihood.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvergenceWarning, DataError, SingularCovarianceError
from ..kernels.covariance import covariance_factor, factors_to_theta
from ..kernels.pls import PLSFactor, PLSProblem
from ..progress import Progress
from .result import EstimatorResult

METHODS = ("mackay", "em", "evidence")


@dataclass
class VarianceState:
    """Covariance matrices G_t (one per term) and the residual variance sigma^2."""

    G: list[np.ndarray]
    sigma2: float
    _factor: PLSFactor | None = field(default=None, repr=False, compare=False)

    def factor(self, problem: PLSProblem) -> PLSFactor:
        """The mixed-model-equations factor at this state (T_t = chol(G_t / sigma^2)), computed once."""
        if self._factor is None:
            factors = [covariance_factor(G / self.sigma2, name=f"G of term {i}") for i, G in enumerate(self.G)]
            self._factor = problem.factorize(factors)
        return self._factor

    def vector(self) -> np.ndarray:
        """Lower triangles of every G_t, then sigma^2 (the space SQUAREM extrapolates in)."""
        pieces = [G[np.tril_indices(G.shape[0])] for G in self.G]
        return np.concatenate([*pieces, [self.sigma2]])

    @classmethod
    def from_vector(cls, vector: np.ndarray, dims: list[int]) -> "VarianceState":
        G, offset = [], 0
        for k in dims:
            rows, cols = np.tril_indices(k)
            matrix = np.zeros((k, k))
            matrix[rows, cols] = vector[offset : offset + rows.size]
            G.append(matrix + np.tril(matrix, -1).T)
            offset += rows.size
        return cls(G, float(vector[-1]))


@dataclass
class FixedPointStep:
    """One iteration: the state it produced and the criterion (REML or ML deviance) there."""

    iteration: int
    G: list[np.ndarray]
    sigma2: float
    criterion: float


@dataclass(frozen=True)
class FixedPointFit(EstimatorResult):
    """Outcome of :func:`fit_fixed_point`: the common estimator result plus the final (G, sigma^2) state."""

    state: VarianceState | None = field(default=None, repr=False)


def criterion_at(problem: PLSProblem, state: VarianceState, reml: bool) -> float:
    """-2 log (restricted) likelihood at (G, sigma^2), not profiled."""
    return state.factor(problem).deviance_at_sigma(state.sigma2, reml)


def _per_term(problem: PLSProblem, vector: np.ndarray) -> list[np.ndarray]:
    out, offset = [], 0
    for term in problem.terms:
        out.append(vector[offset : offset + term.q].reshape(term.n_levels, term.n_cols))
        offset += term.q
    return out


def _pieces(problem: PLSProblem, factor: PLSFactor):
    """beta, b, the weighted residual sum of squares (pwrss - ||u||^2: no pass over rows), U and B per term."""
    beta, u = factor.solve()
    b = factor.u_to_b(u)
    return beta, b, max(factor.pwrss - float(u @ u), 0.0), _per_term(problem, u), _per_term(problem, b)


def mackay_update(problem: PLSProblem, state: VarianceState, reml: bool, diagonal: bool = True,
                  residuals=None) -> VarianceState:
    """The seed's quick-and-dirty update: population variance of r, population covariance of the b_j.

    ``residuals(beta, b)`` returns the residual vector (the population variance needs its mean too).
    """
    if residuals is None:
        raise DataError("the mackay update needs the rows of the model (a residuals function)")
    beta, b, _, _, B = _pieces(problem, state.factor(problem))
    G = [np.atleast_2d(np.cov(effects, rowvar=False, ddof=0)) for effects in B]
    if diagonal:
        G = [np.diag(np.diag(matrix)) for matrix in G]
    return VarianceState(G, float(np.var(residuals(beta, b))))


def em_update(problem: PLSProblem, state: VarianceState, reml: bool) -> VarianceState:
    """EM: G_t = mean_j(b_j b_j' + Cov(b_j|y)), sigma^2 = (||r||^2 + sigma^2 (dim P - tr_u Omega_P^{-1})) / n."""
    factor = state.factor(problem)
    _, _, rss, U, _ = _pieces(problem, factor)
    sums = factor.inverse_block_sums(include_fixed=reml)
    sigma2 = state.sigma2
    G = []
    for term, T, Ut, Bt in zip(problem.terms, factor.factors, U, sums):
        G.append(T @ (Ut.T @ Ut + sigma2 * Bt) @ T.T / term.n_levels)
    dimension = problem.q + (problem.p if reml else 0)
    trace = sum(float(np.trace(Bt)) for Bt in sums)
    new_sigma2 = (rss + sigma2 * (dimension - trace)) / problem.n
    return VarianceState(G, new_sigma2)


def evidence_update(problem: PLSProblem, state: VarianceState, reml: bool) -> VarianceState:
    """MacKay's evidence update per variance component (diagonal G): tau^2 = ||b_c||^2 / gamma_c."""
    factor = state.factor(problem)
    _, _, rss, _, B = _pieces(problem, factor)
    sums = factor.inverse_block_sums(include_fixed=reml)
    G, gamma_total = [], 0.0
    for term, T, Bt, effects in zip(problem.terms, factor.factors, sums, B):
        # Cov(b_jc | y) / tau_c^2 = (T B_j T')_cc / T_cc^2 for diagonal T.
        scale = np.diag(T) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.where(scale > 0, np.diag(T @ Bt @ T.T) / np.where(scale > 0, scale, 1.0), term.n_levels)
        gamma = term.n_levels - shrink
        gamma_total += float(np.sum(gamma))
        with np.errstate(divide="ignore", invalid="ignore"):
            variances = np.where(gamma > 0, np.sum(effects**2, axis=0) / np.where(gamma > 0, gamma, 1.0), 0.0)
        G.append(np.diag(variances))
    dof = problem.n - (problem.p if reml else 0) - gamma_total
    return VarianceState(G, rss / dof)


def _update_function(method: str, covariance: str, residuals):
    if method == "mackay":
        return lambda problem, state, reml: mackay_update(problem, state, reml, diagonal=covariance == "diagonal",
                                                          residuals=residuals)
    if method == "em":
        return em_update
    if method == "evidence":
        return evidence_update
    raise DataError(f"method must be one of {METHODS}, got {method!r}")


def _is_valid(state: VarianceState) -> bool:
    if not np.isfinite(state.sigma2) or state.sigma2 <= 0:
        return False
    return all(np.all(np.isfinite(G)) and np.linalg.eigvalsh(G)[0] >= -1e-10 * max(1.0, np.max(np.abs(G))) for G in state.G)


def fit_fixed_point(
    problem: PLSProblem,
    start: VarianceState,
    *,
    method: str = "em",
    reml: bool = True,
    covariance: str = "full",
    acceleration: str | None = None,
    tol: float = 1e-10,
    max_iter: int = 10_000,
    collapse_tol: float = 1e-9,
    verbose: bool = True,
    residuals=None,
) -> FixedPointFit:
    """Iterate a variance update to its fixed point (relative change of every G_t entry and sigma^2 below ``tol``).

    ``covariance`` applies to ``mackay`` ("diagonal" keeps only variances, as the seed did); ``em`` always
    uses full G_t and ``evidence`` always diagonal G_t. ``acceleration="squarem"`` extrapolates two updates
    at a time. A G_t whose smallest eigenvalue drops below ``collapse_tol`` times its largest ends a
    full-covariance MacKay run with status "collapsed" (the seed's "bombs"). ``residuals(beta, b)`` gives the
    residual vector, which only ``mackay`` needs.
    """
    if acceleration not in (None, "squarem"):
        raise DataError(f"acceleration must be None or 'squarem', got {acceleration!r}")
    if covariance not in ("diagonal", "full"):
        raise DataError(f"covariance must be 'diagonal' or 'full', got {covariance!r}")
    if max_iter < 1:
        raise DataError(f"max_iter must be a positive number of iterations, got {max_iter}")
    update = _update_function(method, covariance, residuals)
    if method == "evidence":
        start = VarianceState([np.diag(np.diag(G)) for G in start.G], start.sigma2)
    if not _is_valid(start):
        raise SingularCovarianceError("start values must be positive semi-definite G_t and a positive sigma^2")
    dims = problem.dims
    detect_collapse = method == "mackay" and covariance == "full"
    progress = Progress(method, verbose=verbose)
    started = time.perf_counter()
    history: list[FixedPointStep] = []
    evaluations = 0

    def step(state: VarianceState) -> VarianceState:
        nonlocal evaluations
        evaluations += 1
        return update(problem, state, reml)

    def record(state: VarianceState) -> None:
        history.append(FixedPointStep(len(history), [G.copy() for G in state.G], state.sigma2, criterion_at(problem, state, reml)))
        progress.update(len(history), f"criterion {history[-1].criterion:.8f}")

    def collapsed(state: VarianceState) -> bool:
        return detect_collapse and any(
            (e := np.linalg.eigvalsh(G))[0] <= collapse_tol * max(e[-1], np.finfo(float).tiny) for G in state.G
        )

    state, status = start, "max_iter"
    for iteration in range(max_iter):
        previous = state
        if acceleration == "squarem":
            state = _squarem_step(problem, state, step, reml, dims)
        else:
            state = step(state)
        if method != "mackay" and iteration % 10 == 9:
            state = _snap_to_boundary(problem, state, reml)
        record(state)
        if collapsed(state):
            status = "collapsed"
            break
        old, new = previous.vector(), state.vector()
        scale = np.maximum(np.abs(old), 1e-8 * max(1.0, float(np.max(np.abs(old)))))
        if np.max(np.abs(new - old) / scale) < tol:
            status = "converged"
            break
    if status == "max_iter":
        warnings.warn(f"{method} did not converge in {max_iter} iterations", ConvergenceWarning, stacklevel=3)
    progress.finish(status)
    factor = state.factor(problem)
    return FixedPointFit(
        method=method,
        theta=factors_to_theta(factor.factors),
        criterion=history[-1].criterion if history else criterion_at(problem, state, reml),
        converged=status == "converged",
        status=status,
        message=f"{method}: {status} after {len(history)} iterations ({evaluations} updates)",
        n_evaluations=evaluations,
        seconds=time.perf_counter() - started,
        iterations=len(history),
        sigma2=state.sigma2,
        factor=factor,
        history=history,
        state=state,
    )


def _snap_to_boundary(problem: PLSProblem, state: VarianceState, reml: bool, threshold: float = 1e-3) -> VarianceState:
    """Set small scalar variances (below ``threshold`` sigma^2) to exactly 0 where 0 is the better local optimum.

    EM and evidence updates approach a zero variance sublinearly (Dyestuff2) and can never leave 0, so a
    variance is snapped only when the criterion at 0 is no worse than at the current iterate and no worse
    than at a tiny positive variance (the criterion is even in theta, so this says 0 is a local minimum).
    """
    tiny = [G.shape == (1, 1) and 0 < G[0, 0] < threshold * state.sigma2 for G in state.G]
    if not any(tiny):
        return state
    snapped = VarianceState([np.zeros_like(G) if t else G for G, t in zip(state.G, tiny)], state.sigma2)
    probe = VarianceState([np.full_like(G, 1e-8 * state.sigma2) if t else G for G, t in zip(state.G, tiny)], state.sigma2)
    at_zero = criterion_at(problem, snapped, reml)
    noise = 1e-11 * abs(at_zero)
    if at_zero <= criterion_at(problem, state, reml) + noise and at_zero <= criterion_at(problem, probe, reml) + noise:
        return snapped
    return state


def _project_psd(state: VarianceState) -> VarianceState:
    """Nearest state with positive semi-definite G_t (eigenvalues clipped at 0)."""
    G = []
    for matrix in state.G:
        values, vectors = np.linalg.eigh(matrix)
        G.append(matrix if values[0] >= 0 else (vectors * np.clip(values, 0.0, None)) @ vectors.T)
    return VarianceState(G, state.sigma2)


def _squarem_step(problem: PLSProblem, state: VarianceState, step, reml: bool, dims: list[int]) -> VarianceState:
    """One SQUAREM (S3) cycle with backtracking towards the plain double update when the likelihood worsens."""
    first = step(state)
    second = step(first)
    x0, x1, x2 = state.vector(), first.vector(), second.vector()
    r, v = x1 - x0, x2 - 2 * x1 + x0
    if np.linalg.norm(v) == 0:
        return second
    alpha = -np.linalg.norm(r) / np.linalg.norm(v)
    baseline = criterion_at(problem, second, reml)
    while alpha < -1.0:
        candidate = _project_psd(VarianceState.from_vector(x0 - 2 * alpha * r + alpha**2 * v, dims))
        if _is_valid(candidate):
            stabilised = step(candidate)
            if _is_valid(stabilised) and criterion_at(problem, stabilised, reml) <= baseline + 1e-9 * abs(baseline):
                return stabilised
        alpha = (alpha - 1.0) / 2.0
    return second
