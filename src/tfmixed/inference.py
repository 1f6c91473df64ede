"""Inference for fixed effects: Satterthwaite's degrees of freedom as computed by lmerTest.

With varpar = (theta, sigma), the asymptotic covariance of varpar is A = 2 H^{-1}, H the Hessian of the
(unprofiled) deviance d(theta, sigma). For a contrast L, with V(varpar) = sigma^2 (R_X'R_X)^{-1}(theta)::

    df = 2 (L'VL)^2 / (g' A g),   g_k = L' (dV / d varpar_k) L

Derivatives are central differences with one Richardson extrapolation step (numDeriv's approach).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .kernels.covariance import theta_to_factors
from .kernels.pls import PLSProblem


def deviance_from_factor(factor, sigma2: float, reml: bool) -> float:
    """Deviance with sigma explicit: log|L|^2 + r^2/sigma^2 + n log(2 pi sigma^2) [+ log|R_X|^2 - p log(2 pi sigma^2)]."""
    problem = factor.problem
    value = factor.logdet_L + factor.pwrss / sigma2 + problem.n * np.log(2 * np.pi * sigma2)
    if reml:
        value += factor.logdet_RX - problem.p * np.log(2 * np.pi * sigma2)
    return float(value)


def deviance_at(problem: PLSProblem, varpar: np.ndarray, reml: bool) -> float:
    """:func:`deviance_from_factor` at varpar = (theta, sigma), lmerTest's ``devfun_vp``."""
    factor = problem.factorize(theta_to_factors(varpar[:-1], problem.dims))
    return deviance_from_factor(factor, varpar[-1] ** 2, reml)


def vcov_beta_at(problem: PLSProblem, varpar: np.ndarray) -> np.ndarray:
    """sigma^2 (R_X' R_X)^{-1} at the given (theta, sigma)."""
    factor = problem.factorize(theta_to_factors(varpar[:-1], problem.dims))
    return varpar[-1] ** 2 * factor.vcov_beta_unscaled()


def _steps(x: np.ndarray) -> np.ndarray:
    return 1e-4 * np.maximum(np.abs(x), 0.1)


def richardson_hessian(fun, x: np.ndarray) -> np.ndarray:
    """Hessian of a scalar function by central differences, refined by one Richardson step."""
    x = np.asarray(x, dtype=np.float64)
    size = x.size

    def estimate(h: np.ndarray) -> np.ndarray:
        f0 = fun(x)
        H = np.empty((size, size))
        for i in range(size):
            ei = np.zeros(size)
            ei[i] = h[i]
            H[i, i] = (fun(x + ei) - 2 * f0 + fun(x - ei)) / h[i] ** 2
            for j in range(i):
                ej = np.zeros(size)
                ej[j] = h[j]
                value = fun(x + ei + ej) - fun(x + ei - ej) - fun(x - ei + ej) + fun(x - ei - ej)
                H[i, j] = H[j, i] = value / (4 * h[i] * h[j])
        return H

    h = _steps(x)
    coarse, fine = estimate(2 * h), estimate(h)
    return (4 * fine - coarse) / 3


def richardson_jacobian(fun, x: np.ndarray) -> np.ndarray:
    """Jacobian of an array-valued function (result shape + (len(x),)), central differences + Richardson."""
    x = np.asarray(x, dtype=np.float64)
    h = _steps(x)
    columns = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1.0

        def central(step: float, e: np.ndarray = e) -> np.ndarray:
            return (fun(x + step * e) - fun(x - step * e)) / (2 * step)

        columns.append((4 * central(h[i]) - central(2 * h[i])) / 3)
    return np.stack(columns, axis=-1)


def satterthwaite(problem: PLSProblem, theta: np.ndarray, sigma: float, reml: bool) -> np.ndarray:
    """Satterthwaite degrees of freedom of each fixed-effect coefficient (lmerTest's ``contest1D``).

    NaN where the Hessian of the deviance in (theta, sigma) is not positive definite.
    """
    varpar = np.concatenate([np.asarray(theta, dtype=np.float64), [sigma]])
    hessian = richardson_hessian(lambda v: deviance_at(problem, v, reml), varpar)
    try:
        eigenvalues = np.linalg.eigvalsh(hessian)
        if eigenvalues[0] <= 0:
            raise np.linalg.LinAlgError
        vcov_varpar = 2.0 * np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        return np.full(problem.p, np.nan)
    jacobian = richardson_jacobian(lambda v: vcov_beta_at(problem, v), varpar)
    vcov = vcov_beta_at(problem, varpar)
    variance = np.diag(vcov)
    gradients = np.stack([np.diagonal(jacobian[:, :, k]) for k in range(varpar.size)], axis=1)
    denominator = np.einsum("ik,kl,il->i", gradients, vcov_varpar, gradients)
    return 2.0 * variance**2 / denominator


def t_pvalues(t_values: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided p-values of t statistics with the given degrees of freedom."""
    return 2.0 * stats.t.sf(np.abs(t_values), df)
