"""Satterthwaite's degrees of freedom for fixed-effect contrasts, as lmerTest computes them.

With varpar = (theta, sigma), the asymptotic covariance of varpar is A = 2 H^{-1}, H the Hessian of the
deviance d(theta, sigma) = log|L|^2 + r^2(theta)/sigma^2 + dof log(2 pi sigma^2) [+ log|R_X|^2]. For a
contrast l, with V(varpar) = sigma^2 (R_X'R_X)^{-1}(theta):

    df = 2 (l'Vl)^2 / (g' A g),   g_k = l' (dV / d varpar_k) l

The theta-theta block of H is the central difference of the *analytic* gradient (2 factorisations per theta;
with h = 1e-4 |theta| the truncation error is O(h^2) ~ 1e-8 relative and the rounding error eps |g| / h,
where second differences of the deviance suffer eps |d| / h^2); the sigma rows are closed-form:
d^2 d / d sigma^2 = 6 r^2 / sigma^4 - 2 dof / sigma^2, d^2 d / d theta d sigma = -2 (d r^2 / d theta) / sigma^3,
dV / d sigma = 2 V / sigma. dV / d theta comes from the same factorisations.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .. import derivatives
from ..objective import LmmObjective


class _NotExact(Exception):
    """The gradient is not exact at a point of the difference quotient (a singular factor there)."""


def _steps(theta: np.ndarray) -> np.ndarray:
    return 1e-4 * np.maximum(np.abs(theta), 0.1)


def _theta_gradient_and_vcov(objective: LmmObjective, theta: np.ndarray, sigma2: float):
    """(grad_theta d(theta, sigma) at fixed sigma, d r^2 / d theta, (R_X'R_X)^{-1}, the factor); None where the
    gradient is not exact."""
    factor = objective.factor(theta)
    # exact wherever T is invertible, however small: the differences straddle theta = 0 at a boundary fit
    parts = factor.gradient_parts(objective.reml, singular_tol=1e-12)
    if parts is None:
        return None
    d_logdet, d_r2 = (objective.covariance.chain(part, theta) for part in parts)
    return d_logdet + d_r2 / sigma2, d_r2, factor.vcov_beta_unscaled(), factor, factor.solve()[0]


def varpar_hessian_and_jacobian(objective: LmmObjective, theta: np.ndarray, sigma: float):
    """(H of the deviance in (theta, sigma), dV/d varpar as a (p, p, m + 1) array, V at theta, d beta_hat /
    d theta as a (p, m) array), or None at a singular fit. One factorisation at theta and two per theta
    component."""
    sigma2 = sigma * sigma
    m, p = theta.size, objective.problem.p
    centre = _theta_gradient_and_vcov(objective, theta, sigma2)
    if centre is None:
        return None
    _, d_r2, M, factor, _ = centre
    H = np.zeros((m + 1, m + 1))
    jacobian = np.zeros((p, p, m + 1))

    def gradient_and_vcov(point):  # both from one factorisation, stacked for one difference quotient
        pieces = _theta_gradient_and_vcov(objective, point, sigma2)
        if pieces is None:
            raise _NotExact
        return np.concatenate([pieces[0], pieces[2].ravel(), pieces[4]])

    try:
        quotients = derivatives.jacobian(gradient_and_vcov, theta, _steps(theta))
    except _NotExact:
        return None
    H[:m, :m] = quotients[:m]
    jacobian[:, :, :m] = sigma2 * quotients[m : m + p * p].reshape(p, p, m)
    beta_jacobian = quotients[m + p * p :]
    H[:m, :m] = (H[:m, :m] + H[:m, :m].T) / 2
    H[m, :m] = H[:m, m] = -2.0 * d_r2 / sigma**3
    H[m, m] = 6.0 * factor.pwrss / sigma**4 - 2.0 * factor.dof(objective.reml) / sigma2
    jacobian[:, :, m] = 2.0 * sigma * M
    return H, jacobian, sigma2 * M, beta_jacobian


class SatterthwaiteParts:
    """A = 2 H^{-1} (the asymptotic covariance of varpar = (theta, sigma)), dV/d varpar and V at the estimates:
    what the df of any contrast need. ``A`` is None where H is not positive definite or not available."""

    def __init__(self, objective: LmmObjective, theta: np.ndarray, sigma: float):
        pieces = varpar_hessian_and_jacobian(objective, np.asarray(theta, dtype=np.float64), sigma)
        self.A = self.jacobian = self.V = self.beta_jacobian = None
        if pieces is not None:
            H, self.jacobian, self.V, self.beta_jacobian = pieces
            if np.linalg.eigvalsh(H)[0] > 0:
                self.A = 2.0 * np.linalg.inv(H)

    def contrast_df(self, L: np.ndarray) -> np.ndarray:
        """df = 2 (l'Vl)^2 / (g'Ag), g_k = l' (dV/d varpar_k) l, for each row l of L (lmerTest's contest1D); NaN
        where A is not available."""
        L = np.atleast_2d(np.asarray(L, dtype=np.float64))
        if self.A is None or self.jacobian is None or self.V is None:  # A is set only with the other two
            return np.full(L.shape[0], np.nan)
        gradients = np.einsum("ci,ijk,cj->ck", L, self.jacobian, L)
        variance = np.einsum("ci,ij,cj->c", L, self.V, L)
        return 2.0 * variance**2 / np.einsum("ck,kl,cl->c", gradients, self.A, gradients)


def satterthwaite_df(objective: LmmObjective, theta: np.ndarray, sigma: float) -> np.ndarray:
    """Satterthwaite df of each fixed-effect coefficient: lmerTest's contest1D.

    NaN where the Hessian of the deviance in (theta, sigma) is not positive definite or not available.
    """
    return SatterthwaiteParts(objective, theta, sigma).contrast_df(np.eye(objective.problem.p))


def t_pvalues(t_values: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided p-values of t statistics with the given degrees of freedom."""
    return 2.0 * stats.t.sf(np.abs(t_values), df)
