"""The GLMM objective: (theta, beta) -> the Laplace or adaptive Gauss-Hermite approximation of -2 log L.

The analogue of lme4's ``mkGlmerDevfun``. With u* the conditional mode (:mod:`tfmixed.estimators.pirls`) and
L L' = Lambda'Z'WZ Lambda + I at the IRLS weights of the mode, the Laplace approximation is

    -2 log L(theta, beta) ~ sum_i -2 log p(y_i | mu_i(u*)) + ||u*||^2 + log|L|^2.

For one scalar random-effects term (levels independent given beta) adaptive Gauss-Hermite quadrature with
knots z_k and standard-normal weights w_k replaces the Laplace step per level j:

    -2 log integral_j = A_j(u*_j) + log L_jj^2 - 2 log sum_k w_k exp(z_k^2 / 2 - (A_j(u*_j + z_k / L_jj) - A_j(u*_j)) / 2)

with A_j(u) = sum_{i in j} -2 log p(y_i | u) + u^2; one knot is the Laplace approximation. Unlike lme4 (its
issue #161), the quadrature value keeps the saturated model's constant, so Laplace and AGQ log-likelihoods
compare. The determinant is taken at the weights of the mode itself (lme4 takes it at the previous PIRLS
iterate, which moves its criterion by up to ~1e-5 relative).

Two criteria are minimised by the optimiser of :mod:`tfmixed.estimators.profiled`: :class:`ThetaCriterion`
(theta only, beta inside PIRLS: lme4's ``nAGQ = 0`` and the start of the others) and :class:`JointCriterion`
(theta and beta).
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from .errors import DataError, TfmixedError
from .estimators.pirls import PIRLS, Mode
from .families import Family
from .kernels.covariance import theta_lower_bounds, theta_start
from .kernels.options import KernelOptions


class GlmmObjective:
    """The approximate deviance of a GLMM design and family, with warm-started conditional modes.

    >>> import tfmixed as tm
    >>> from tfmixed.families import get_family
    >>> cbpp = tm.datasets.load("cbpp")
    >>> design = tm.build_design("incidence / size ~ period + (1 | herd)", cbpp, weights="size")
    >>> objective = GlmmObjective(design, get_family("binomial"))
    >>> beta = [-1.39834286, -0.99192498, -1.12821622, -1.57974541]
    >>> round(objective.deviance([0.64206992], beta), 3)
    184.053
    """

    def __init__(self, design, family: Family, n_agq: int = 1, options: KernelOptions | None = None):
        self.design, self.family = design, family
        self.n_agq = int(n_agq)
        self.pirls = PIRLS(design, family, options)
        self.dims = self.pirls.dims
        self.n_theta = int(sum(k * (k + 1) // 2 for k in self.dims))
        self.p = design.n_fixed
        self.theta_lower = theta_lower_bounds(self.dims)
        self.theta_start = theta_start(self.dims)
        if self.n_agq > 1:
            if len(self.dims) != 1 or self.dims[0] != 1:
                raise DataError("nAGQ > 1 needs a single scalar random-effects term such as (1 | g), as in lme4; "
                                f"this model has terms with {self.dims} columns")
            knots, weights = hermegauss(self.n_agq)
            self.knots, self.knot_weights = knots, weights / np.sqrt(2 * np.pi)
        self._last: Mode | None = None
        self.n_pirls = 0

    def mode(self, theta, beta=None) -> Mode:
        """The conditional mode at theta and beta (joint with beta when None), warm-started from the last one."""
        theta = np.asarray(theta, dtype=np.float64)
        beta = None if beta is None else np.asarray(beta, dtype=np.float64)
        mode = self.pirls.run(theta, beta, start=self._last)
        self._last = mode
        self.n_pirls += 1
        return mode

    def laplace(self, mode: Mode) -> float:
        """sum -2 log p(y | mu) + ||u||^2 + log|L|^2 at the mode."""
        minus2 = np.sum(self.family.minus2_loglik(self.pirls.y, mode.mu, self.pirls.prior))
        return float(minus2 + mode.u @ mode.u + mode.factor.logdet_L)

    def quadrature(self, mode: Mode) -> float:
        """The adaptive Gauss-Hermite approximation (one scalar term) at the mode."""
        term = self.design.terms[0]
        codes, covariate = term.codes, term.values[:, 0]
        scale = mode.theta[0]
        sd = np.sqrt(mode.factor.first.A_inv[:, 0, 0])  # 1 / L_jj
        base = mode.eta - covariate * scale * mode.u[codes]

        def per_level(u):
            mu = self.family.link.inverse(base + covariate * scale * u[codes])
            minus2 = self.family.minus2_loglik(self.pirls.y, mu, self.pirls.prior)
            return np.bincount(codes, minus2, minlength=term.n_levels) + u**2

        at_mode = per_level(mode.u)
        total = np.zeros(term.n_levels)
        for knot, weight in zip(self.knots, self.knot_weights):
            if knot == 0.0:
                total += weight
                continue
            change = per_level(mode.u + knot * sd) - at_mode
            total += weight * np.exp(knot**2 / 2 - change / 2)
        return float(np.sum(at_mode - 2 * np.log(sd) - 2 * np.log(total)))

    def value(self, mode: Mode) -> float:
        return self.quadrature(mode) if self.n_agq > 1 else self.laplace(mode)

    def deviance(self, theta, beta) -> float:
        """The approximate -2 log-likelihood at (theta, beta)."""
        return self.value(self.mode(theta, beta))

    def hessian(self, params: np.ndarray, scales: np.ndarray, fraction: float = 0.05) -> np.ndarray:
        """Hessian of the deviance in (theta, beta) by central differences with steps ``fraction`` times
        ``scales`` (approximate standard errors, refined once from the diagonal: the step is then small against
        the curvature's scale and large against the rounding of the criterion)."""
        params = np.asarray(params, dtype=np.float64)
        n_theta = self.n_theta

        def at(shift):
            point = params + shift
            return self.deviance(point[:n_theta], point[n_theta:])

        center = at(np.zeros_like(params))
        eye = np.eye(params.size)
        steps = fraction * np.asarray(scales, dtype=np.float64)
        diagonal = np.array([(at(h * e) - 2 * center + at(-h * e)) / h**2 for h, e in zip(steps, eye)])
        positive = diagonal > 0
        steps[positive] = fraction * np.sqrt(2.0 / diagonal[positive])
        H = np.empty((params.size, params.size))
        for i in range(params.size):
            ei, hi = eye[i] * steps[i], steps[i]
            H[i, i] = (at(ei) - 2 * center + at(-ei)) / hi**2
            for j in range(i):
                ej = eye[j] * steps[j]
                H[i, j] = H[j, i] = (at(ei + ej) - at(ei - ej) - at(ej - ei) + at(-ei - ej)) / (4 * hi * steps[j])
        return H

    def is_singular(self, theta: np.ndarray, tol: float = 1e-4) -> bool:
        """lme4's ``isSingular``: a bounded theta within ``tol`` of 0."""
        bounded = np.isfinite(self.theta_lower)
        return bool(np.any(np.asarray(theta)[bounded] - self.theta_lower[bounded] < tol))


class _FiniteDifferences:
    """Central-difference gradients of a criterion whose evaluations are exact to rounding (PIRLS is run to
    convergence), for the optimiser of :mod:`tfmixed.estimators.profiled`."""

    step = 1e-5

    def __call__(self, params) -> float:
        try:
            value = self.evaluate(np.asarray(params, dtype=np.float64))
        except (TfmixedError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf
        return value if np.isfinite(value) else np.inf

    def value_and_gradient(self, params):
        params = np.asarray(params, dtype=np.float64)
        value = self(params)
        if not np.isfinite(value):
            return np.inf, np.zeros_like(params)
        gradient = np.empty_like(params)
        for i in range(params.size):
            h = self.step * max(1.0, abs(params[i]))
            plus, minus = params.copy(), params.copy()
            plus[i] += h
            minus[i] -= h
            gradient[i] = (self(plus) - self(minus)) / (2 * h)
        # the centre's mode stays the warm start of the next evaluation
        self(params)
        return value, gradient

    def is_degenerate(self, params) -> bool:
        return False

    def diagnose(self, params) -> str:
        try:
            self.evaluate(np.asarray(params, dtype=np.float64))
        except TfmixedError as error:
            return str(error)
        return "the approximate deviance overflows (check the response and the scale of the covariates)"


class ThetaCriterion(_FiniteDifferences):
    """theta -> approximate deviance with beta estimated inside PIRLS (lme4's nAGQ = 0)."""

    label = "GLMM nAGQ=0"

    def __init__(self, objective: GlmmObjective):
        self.objective = objective
        self.lower, self.start = objective.theta_lower, objective.theta_start.copy()

    def evaluate(self, theta) -> float:
        return self.objective.laplace(self.objective.mode(theta))


class JointCriterion(_FiniteDifferences):
    """(theta, beta) -> the Laplace or quadrature deviance."""

    def __init__(self, objective: GlmmObjective, start: np.ndarray):
        self.objective = objective
        self.label = "GLMM Laplace" if objective.n_agq == 1 else f"GLMM nAGQ={objective.n_agq}"
        self.lower = np.concatenate([objective.theta_lower, np.full(objective.p, -np.inf)])
        self.start = np.asarray(start, dtype=np.float64)

    def evaluate(self, params) -> float:
        n_theta = self.objective.n_theta
        return self.objective.deviance(params[:n_theta], params[n_theta:])
