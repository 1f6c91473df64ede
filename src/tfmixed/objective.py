"""The model objective: theta -> profiled REML criterion or ML deviance, and its gradient.

The analogue of lme4's ``mkLmerDevfun``: it wraps one :class:`~tfmixed.kernels.pls.PLSProblem` and knows
nothing of optimisers or results. Estimators (:mod:`tfmixed.estimators`) call it; results read the factor
at the optimum from it. The last factorisation is cached, since optimisers ask for the same theta twice.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from .errors import TfmixedError
from .covariance_structures import CovarianceParameters
from .derivatives import jacobian, relative_steps
from .protocols import AverageInformationFactor, KernelFactor, KernelProblem


#: a penalised RSS below this fraction of the response's own sum of squares means the random effects reproduce
#: the response: the likelihood grows without bound as theta -> infinity
DEGENERATE_RSS = 1e-12


def bounded_scale(theta: np.ndarray, lower: np.ndarray) -> float:
    """The scale of theta's bounded entries (the standard deviations), at least 1: what "near a bound" is relative
    to. Unbounded entries (correlation parameters on their unbounded scale, fixed effects) do not count: a
    correlation near +-1 has a huge z, which must not make every standard deviation look like 0."""
    bounded = np.isfinite(lower)
    return max(1.0, float(np.max(np.abs(theta[bounded]), initial=0.0)))


class LmmObjective:
    """The profiled criterion of a linear mixed model, as a function of theta: lme4's theta for unstructured
    terms, the structures' parameters otherwise (``covariance``, :class:`CovarianceParameters`; by default every
    term unstructured). The kernel sees only the factors T_t; gradients and the average information in the
    stacked vech(T_t) are mapped to theta by the structures' Jacobian.

    >>> from tfmixed import datasets, build_design
    >>> from tfmixed.kernels.pls import PLSProblem
    >>> design = build_design("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
    >>> objective = LmmObjective(PLSProblem(design.cross_products()), reml=True)
    >>> round(objective(objective.start), 2)
    1773.68
    """

    #: a capability the estimators read: an average-information Hessian (None where the kernel has none)
    has_average_information = True

    def __init__(self, problem: KernelProblem, reml: bool = True, covariance: CovarianceParameters | None = None):
        self.problem, self.reml = problem, bool(reml)
        self.dims = problem.dims
        self.covariance = CovarianceParameters.unstructured(self.dims) if covariance is None else covariance
        if self.covariance.dims != list(self.dims):
            raise TfmixedError(f"covariance structures of {self.covariance.dims} columns for terms of {self.dims}")
        self.lower = self.covariance.lower
        self.start = self.covariance.start.copy()
        self._cache: tuple[bytes, KernelFactor] | None = None
        self.response_ss = float(problem.cross_products.xy_xy[-1, -1])

    @property
    def has_evidence_step(self) -> bool:
        """Whether the estimators start with MacKay's evidence updates: every term scalar and unstructured (the
        update moves only scalar terms, and with a vector-valued term it lengthened the search)."""
        return bool(self.dims) and bool(np.all(self.covariance.scalar_lme4()))

    def correlation_probes(self, theta: np.ndarray, distances) -> list[np.ndarray]:
        """Points with a correlation at its bound moved inside (:meth:`CovarianceParameters.correlation_probes`)."""
        return self.covariance.correlation_probes(theta, distances)

    def even_parameters(self) -> np.ndarray:
        """Parameters in which the criterion is even (the Newton stage may snap such a variance to 0)."""
        return self.covariance.even()

    @property
    def label(self) -> str:
        """The criterion's name in progress lines."""
        return "REML" if self.reml else "ML"

    def factor(self, theta: np.ndarray) -> KernelFactor:
        """The blocked Cholesky factor at theta (raises TfmixedError where Omega is not positive definite)."""
        theta = np.asarray(theta, dtype=np.float64)
        key = theta.tobytes()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.problem.factorize(self.covariance.factors(theta)))
        return self._cache[1]

    def __call__(self, theta: np.ndarray) -> float:
        """The criterion; +inf where the factorisation fails (outside the feasible region)."""
        try:
            value = self.factor(theta).deviance(self.reml)
        except (TfmixedError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf
        return value if np.isfinite(value) else np.inf

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Criterion and its analytic gradient; at a singular vector-valued factor, the gradient is taken a
        hair inside the feasible region (the criterion is smooth there), else by one-sided differences."""
        theta = np.asarray(theta, dtype=np.float64)
        value = self(theta)
        if not np.isfinite(value):
            return np.inf, np.zeros_like(theta)
        gradient = self.factor(theta).gradient(self.reml)
        if gradient is not None:
            return value, self.covariance.chain(gradient, theta)
        scale = 1e-7 * bounded_scale(theta, self.lower)
        inside = np.where(np.isfinite(self.lower), np.maximum(theta, self.lower + scale), theta)
        try:
            gradient = self.factor(inside).gradient(self.reml)
        except TfmixedError:
            gradient = None
        if gradient is not None:
            return value, self.covariance.chain(gradient, inside)
        return value, self._forward_difference(theta, value)

    def average_information(self, theta: np.ndarray) -> np.ndarray | None:
        """The criterion's average-information Hessian in theta (:mod:`tfmixed.kernels.information`): positive
        semi-definite, at the cost of one solve per parameter with the factor of ``value_and_gradient``. None
        for a kernel that offers none (the iterative one: its solves are the expensive part)."""
        factor = self.factor(theta)
        if not factor.has_average_information:
            return None
        information = cast(AverageInformationFactor, factor).average_information(self.reml)
        if self.covariance.is_lme4_theta:
            return information
        J = self.covariance.jacobian(theta)
        return J.T @ information @ J

    def _forward_difference(self, theta: np.ndarray, value: float) -> np.ndarray:
        return jacobian(self, theta, relative_steps(theta, 1e-7), f0=value)

    def evidence_step(self, theta: np.ndarray) -> np.ndarray | None:
        """MacKay's evidence update of each scalar term as a step in log theta: theta_t^2 <- theta_t^2 b_t / a_t
        with a_t = d log-dets / d theta_t and b_t = -dof (d r^2 / d theta_t) / r^2. The gradient is a_t - b_t, so
        the update's fixed point is the optimum; far from it, one update moves much further than a gradient step.
        Zero for vector-valued terms and where a_t or b_t is not positive; None without scalar terms or where
        the gradient's parts cannot be formed."""
        if not self.covariance.is_lme4_theta:
            return None  # the update is of lme4's theta_t^2; a structure's parameters are not
        scalar = self.covariance.scalar_lme4()
        if not np.any(scalar):
            return None
        factor = self.factor(theta)
        parts = factor.gradient_parts(self.reml)
        if parts is None:
            return None
        a, b = parts[0], -factor.dof(self.reml) * parts[1] / factor.pwrss
        usable = scalar & (a > 0) & (b > 0)
        return np.where(usable, 0.5 * np.log(np.where(usable, b / np.where(usable, a, 1.0), 1.0)), 0.0)

    def is_singular(self, theta: np.ndarray, tol: float = 1e-4) -> bool:
        """lme4's ``isSingular``, per structure (:meth:`CovarianceParameters.is_singular`)."""
        return self.covariance.is_singular(theta, tol)

    def is_degenerate(self, theta: np.ndarray) -> bool:
        """Whether the random effects reproduce the response (penalised RSS ~ 0): no maximum exists."""
        return self.factor(theta).pwrss < DEGENERATE_RSS * self.response_ss

    def diagnose(self, theta: np.ndarray) -> str:
        """Why the criterion cannot be evaluated at theta, in the user's terms."""
        cp = self.problem.cross_products
        scale = float(np.max(np.abs(cp.xy_xy))) if cp.xy_xy.size else 0.0
        if not np.isfinite(scale):
            return ("the cross-products overflow: the response or a covariate has values too large (near 1e150 or "
                    "more); rescale them")
        exact_fit = ("the fixed effects reproduce the response exactly (residual sum of squares 0): the response is "
                     "constant, or the response (or a copy of it) is among the covariates")
        fitted = float(cp.shift @ cp.xy_xy[:-1, :-1] @ cp.shift) if cp.p else 0.0
        if cp.xy_xy[-1, -1] <= 1e-20 * max(fitted, np.finfo(float).tiny):
            return exact_fit
        try:
            factor = self.factor(theta)
        except TfmixedError as error:
            return str(error)
        if factor.pwrss == 0:
            return exact_fit
        return f"penalised residual sum of squares {factor.pwrss!r}, log-determinant {factor.logdet_L!r}"
