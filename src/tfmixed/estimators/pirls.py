"""Penalised iteratively re-weighted least squares (PIRLS): the conditional modes of a GLMM.

For theta (relative covariance factor Lambda) and fixed effects beta, the conditional mode of the spherical
random effects u minimises the penalised deviance

    pdev(u) = sum_i d_i(y_i, mu_i) + ||u||^2,    mu = g^{-1}(o + X beta + Z Lambda u)

(d_i: deviance residuals). Each PIRLS step is one penalised weighted least-squares problem of the LMM
kernel, with the IRLS weights w_i (d mu / d eta)^2 / V(mu) and the working response
eta - o - X beta + (y - mu) / (d mu / d eta): the cross-products are re-weighted on the fixed pattern
(:class:`~tfmixed.cross_products.CrossProductPattern`) and factored by :class:`~tfmixed.kernels.pls.PLSProblem`.
Steps are halved until pdev decreases (lme4's ``pwrssUpdate``). With ``beta=None`` beta joins u in the
least-squares problem (lme4's ``nAGQ = 0``).

The factor returned is taken at the final weights, so log|L|^2 (the Laplace approximation's determinant)
and the conditional variances belong to the mode itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cross_products import CrossProductPattern
from ..errors import ConvergenceError, TfmixedError
from ..families import Family
from ..covariance_structures import CovarianceParameters
from ..kernels.covariance import lambda_times
from ..kernels.options import KernelOptions
from ..kernels.pls import PLSFactor, PLSProblem

#: the relative decrease of the penalised deviance below which PIRLS has converged (Newton's method
#: converges quadratically, so the mode is then exact to rounding)
PIRLS_TOL = 1e-13
MAX_HALVINGS = 30
#: a non-canonical link's PIRLS has converged when a step moves the linear predictor by less than this (relative)
ETA_STEP_TOL = 1e-10
#: under a canonical link PIRLS is Newton's method: decreases d_k shrink quadratically, d_{k+1} ~ d_k^3 / d_{k-1}^2.
#: A step whose predicted successor is below PIRLS_TOL * QUADRATIC_MARGIN has reached the mode to rounding, which
#: saves the last, confirming step of every run (about a fifth of a fit's factorisations)
QUADRATIC_MARGIN = 1e-6


@dataclass
class WarmStart:
    """Where PIRLS can start: spherical u, b = Lambda u, linear predictor and mean at (theta, beta), of a mode
    or of effects a model trained elsewhere holds (:meth:`~tfmixed.laplace.GlmmObjective.start_from`)."""

    theta: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    b: np.ndarray
    eta: np.ndarray
    mu: np.ndarray


@dataclass
class Mode(WarmStart):
    """The conditional mode at (theta, beta): spherical u, b = Lambda u, linear predictor and mean."""

    pdev: float
    factor: PLSFactor
    iterations: int
    #: the family with the parameters (dispersion, size, ...) this mode was found at
    family: Family | None = None
    #: the factor at the Laplace weights, once :meth:`PIRLS.laplace_factor` has made it (criterion, gradient and
    #: the fit's conditional variances all read it)
    laplace: PLSFactor | None = None


class PIRLS:
    """The PIRLS solver of one GLMM design (rows, terms, family); reused for every theta and beta.

    >>> import tfmixed as tm
    >>> from tfmixed.families import get_family
    >>> design = tm.build_design("y ~ x + (1 | g)", tm.datasets.load("sleepstudy").assign(
    ...     y=lambda d: (d.Reaction > 280).astype(float), x=lambda d: d.Days, g=lambda d: d.Subject))
    >>> mode = PIRLS(design, get_family("binomial")).run(np.array([1.0]))
    >>> round(mode.pdev, 4) > 0, mode.beta.size
    (True, 2)
    """

    def __init__(self, design, family: Family, options: KernelOptions | None = None):
        self.design, self.family, self.options = design, family, options
        self.X, self.y = design.X, design.y
        self.n = design.nobs
        self.prior = np.ones(self.n) if design.weights is None else design.weights
        self.offset = design.offset_or_zero
        self.dims = [term.n_cols for term in design.terms]
        self.covariance = CovarianceParameters.of_terms(design.terms)
        self._levels = [term.n_levels for term in design.terms]
        self.pattern = CrossProductPattern(design.terms)
        # Z (n x q, CSR) from the pattern's Z': one sparse product per linear predictor, for every step and halving
        self._z = self.pattern.z_transpose.T
        self._no_fixed = np.zeros((self.n, 0))
        self._problems: dict[int, PLSProblem] = {}

    def problem(self, stats) -> PLSProblem:
        """The kernel problem of re-weighted cross-products: strategies chosen once per number of fixed
        columns (0 for the conditional modes at fixed beta, p for the joint mode), then only refilled."""
        known = self._problems.get(stats.p)
        problem = PLSProblem(stats, self.options) if known is None else known.reweighted(stats)
        self._problems.setdefault(stats.p, problem)
        return problem

    def weighted_cross_products(self, mode: Mode):
        """Cross-products of [Z | X] with the working weights at ``mode``: the mixed-model equations of the
        Laplace approximation's Gaussian (prediction variances of a GLMM)."""
        family = mode.family or self.family
        weights = family.laplace_weights(self.y, mode.mu, mode.eta, self.prior)
        return self.pattern.compute(self.X, mode.eta - self.offset, weights=weights, signed=True)

    def laplace_factor(self, mode: Mode) -> PLSFactor:
        """The factor of Lambda'Z'W Z Lambda + I with the Laplace approximation's weights at the mode: lme4's
        Fisher weights for binomial and Poisson (the mode's own factor), else the observed information
        -d^2 log p / d eta^2 (exact Laplace; some rows' W may be negative where the sum stays positive
        definite). Its log-determinant is the criterion's, its inverse the conditional variances."""
        family = mode.family or self.family
        if family.laplace_uses_fisher_weights or (family.canonical and family.has_fisher_information):
            return mode.factor
        if mode.laplace is None:
            weights = family.laplace_weights(self.y, mode.mu, mode.eta, self.prior)
            stats = self.pattern.compute(self._no_fixed, np.zeros(self.n), weights=weights, shift=np.zeros(0),
                                         signed=True)
            stats.xy_xy[-1, -1] = 1.0  # the zero response's pivot: log|L| and the inverse blocks never read it
            mode.laplace = self.problem(stats).factorize(mode.factor.factors)
        return mode.laplace

    def to_b(self, u: np.ndarray, factors: list[np.ndarray]) -> np.ndarray:
        """b = Lambda u (before a factor exists: :meth:`PLSFactor.u_to_b` is the same map)."""
        return lambda_times(u, factors, self._levels)

    def z_times(self, b: np.ndarray) -> np.ndarray:
        """Z b."""
        return self._z @ b

    def linear_predictor(self, beta: np.ndarray, b: np.ndarray) -> np.ndarray:
        """eta = o + X beta + Z b."""
        return self.offset + self.X @ beta + self._z @ b

    def penalised_deviance(self, eta: np.ndarray, u: np.ndarray, family: Family | None = None) -> tuple[float, np.ndarray]:
        """(the family's deviance (or -2 log p) + ||u||^2, mu); NaN where eta leaves the family's range."""
        family = family or self.family
        mu = family.link.inverse(eta)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = family.pirls_deviance(self.y, mu, self.prior) + u @ u
        return (float(value) if np.isfinite(value) else np.inf), mu

    def run(self, theta: np.ndarray, beta: np.ndarray | None = None, start: WarmStart | None = None,
            family: Family | None = None) -> Mode:
        """The conditional mode at theta and ``beta`` (or the joint mode of beta and u when beta is None),
        from the mode ``start`` (warm start) or from the family's starting means; ``family`` carries the
        family's parameters (default: the solver's family)."""
        family = family or self.family
        theta = np.asarray(theta, dtype=np.float64)
        factors = self.covariance.factors(theta)
        joint = beta is None
        X = self.X if joint else self._no_fixed
        fixed_part = 0.0 if joint else self.X @ beta
        if start is None:
            mu = family.start_mu(self.y, self.prior)
            eta = family.link.link(mu)
            current: tuple | None = None
        else:
            current_beta = start.beta if joint else np.asarray(beta, dtype=np.float64)
            current = self._warm_start(start, current_beta, factors, family)
            eta, mu = current[2], current[3]
        converged, decreases = False, []
        for iteration in range(1, 101):
            shift = current[0] if joint and current is not None else np.zeros(X.shape[1])
            factor = self._factorize(family, X, eta, mu, fixed_part, shift, factors)
            if converged:
                break
            new_beta, new_u = factor.solve()
            new_beta = new_beta if joint else np.asarray(beta, dtype=np.float64)
            previous = None if current is None else current[4]
            current, converged = self._step(current, new_beta, new_u, factors, family)
            if previous is not None and not converged:
                decreases.append(previous - current[4])
                converged = family.canonical and self._quadratically_converged(decreases, current[4])
            eta, mu = current[2], current[3]
        else:
            raise ConvergenceError(f"PIRLS did not converge in 100 iterations at theta={theta.tolist()}")
        assert current is not None  # the first iteration always steps
        beta_out, u, eta, mu, pdev = current
        if not np.isfinite(pdev):
            raise ConvergenceError(f"PIRLS found no finite penalised deviance at theta={theta.tolist()} (the linear "
                                   "predictor leaves the family's range)")
        return Mode(theta, beta_out, u, self.to_b(u, factors), eta, mu, pdev, factor, iteration, family)

    def _factorize(self, family: Family, X, eta, mu, fixed_part, shift, factors) -> PLSFactor:
        """The penalised least-squares factor of one step at (eta, mu): Fisher scoring's weights, or Newton's
        on the observed information, which may be negative on some rows; where that system is not positive
        definite (far from the mode) the step falls back to positive weights."""
        signed = family.signed_weights
        residual, weights = family.working_parts(self.y, mu, eta, self.prior)
        if signed and np.all(weights > 0):
            signed = False
        if signed:
            stats = self.pattern.compute(X, eta - self.offset - fixed_part + residual, weights=weights, shift=shift,
                                         signed=True)
            try:
                return self.problem(stats).factorize(factors)
            except TfmixedError:
                residual, weights = family.positive_working_parts(self.y, mu, eta, self.prior)
        stats = self.pattern.compute(X, eta - self.offset - fixed_part + residual, weights=weights, shift=shift)
        return self.problem(stats).factorize(factors)

    def _warm_start(self, start: WarmStart, beta: np.ndarray, factors, family: Family) -> tuple:
        """The better of two starts from a nearby mode: its spherical effects u (kept when theta moves little) or
        its effects b = Lambda u themselves (the same linear predictor: an optimiser's trial point far in theta,
        where Lambda_new u would put eta, and a Poisson mean, far out and cost PIRLS a dozen halving steps)."""
        candidates = [start.u]
        try:
            candidates.append(self._to_u(start.b, factors))
        except np.linalg.LinAlgError:
            pass
        best: tuple | None = None
        for u in candidates:
            eta = self.linear_predictor(beta, self.to_b(u, factors))
            pdev, mu = self.penalised_deviance(eta, u, family)
            if best is None or pdev < best[4]:
                best = (beta, u, eta, mu, pdev)
        assert best is not None  # start.u is always a candidate
        return best

    def _to_u(self, b: np.ndarray, factors) -> np.ndarray:
        """u = Lambda^{-1} b term by term (LinAlgError for a singular T)."""
        pieces, offset = [], 0
        for T, count in zip(factors, self._levels):
            size = count * T.shape[0]
            pieces.append(np.linalg.solve(T, b[offset : offset + size].reshape(count, T.shape[0]).T).T.ravel())
            offset += size
        return np.concatenate(pieces)

    def _quadratically_converged(self, decreases: list[float], pdev: float) -> bool:
        """Whether Newton's quadratic convergence puts the next decrease below the tolerance (canonical links)."""
        if len(decreases) < 2 or decreases[-2] <= 0:
            return False
        last = decreases[-1]
        return 0 <= last <= decreases[-2] and last**3 / decreases[-2] ** 2 <= PIRLS_TOL * QUADRATIC_MARGIN * (1.0 + abs(pdev))

    def _step(self, current, new_beta, new_u, factors, family: Family) -> tuple[tuple, bool]:
        """Move towards the least-squares solution, halving the step until the penalised deviance decreases."""
        if current is None:
            eta = self.linear_predictor(new_beta, self.to_b(new_u, factors))
            pdev, mu = self.penalised_deviance(eta, new_u, family)
            return (new_beta, new_u, eta, mu, pdev), False
        beta0, u0, eta0, _, pdev0 = current
        fraction = 1.0
        for _ in range(MAX_HALVINGS):
            beta = beta0 + fraction * (new_beta - beta0)
            u = u0 + fraction * (new_u - u0)
            eta = self.linear_predictor(beta, self.to_b(u, factors))
            pdev, mu = self.penalised_deviance(eta, u, family)
            tolerance = PIRLS_TOL * (1.0 + abs(pdev0))
            if pdev <= pdev0 + tolerance:  # at the mode, rounding may raise pdev by a few ulps
                converged = abs(pdev0 - pdev) <= tolerance
                if converged and not family.canonical:
                    # Fisher scoring converges linearly and pdev's decrease is quadratic in the distance to the
                    # mode: the step itself must be small too, or the Laplace determinant (not stationary at the
                    # mode) keeps the distance's first-order error
                    converged = float(np.max(np.abs(eta - eta0), initial=0.0)) <= ETA_STEP_TOL * (
                        1.0 + float(np.max(np.abs(eta0), initial=0.0)))
                return (beta, u, eta, mu, pdev), converged
            fraction /= 2
        # no decrease along the step: the current point is the mode to rounding
        return current, True
