"""Relative covariance factors: the map between lme4's theta vector and per-term factors T_t.

For a term with k columns, ``G_t = sigma^2 T_t T_t'`` with ``T_t`` lower triangular; theta stacks the
lower triangles column by column (lme4's order), and the diagonal of each ``T_t`` is bounded below by 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import SingularCovarianceError


@lru_cache(maxsize=64)
def lower_indices(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a k x k lower triangle in lme4's column-major order (cached: hot path)."""
    cols, rows = np.triu_indices(k)
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def theta_to_factors(theta: np.ndarray, dims: list[int]) -> list[np.ndarray]:
    """Split theta into the lower-triangular factors T_t of terms with ``dims[t]`` columns.

    >>> theta_to_factors(np.array([1.0, 0.5, 2.0]), [2])[0]
    array([[1. , 0. ],
           [0.5, 2. ]])
    """
    factors, offset = [], 0
    for k in dims:
        rows, cols = lower_indices(k)
        factor = np.zeros((k, k))
        factor[rows, cols] = theta[offset : offset + rows.size]
        factors.append(factor)
        offset += rows.size
    return factors


def lambda_times(u: np.ndarray, factors: list[np.ndarray], levels: list[int]) -> np.ndarray:
    """b = Lambda u for Lambda = blockdiag_t(I_{levels_t} (x) T_t), u ordered term by term, level by level.

    >>> lambda_times(np.array([1.0, 2.0, 3.0]), [np.array([[2.0]]), np.array([[10.0]])], [2, 1]).tolist()
    [2.0, 4.0, 30.0]
    """
    u = np.asarray(u, dtype=np.float64)
    return lambda_matrix_times(u[:, None], factors, levels)[:, 0] if u.size else np.zeros(0)


def lambda_matrix_times(M: np.ndarray, factors: list[np.ndarray], levels: list[int], transpose: bool = False) -> np.ndarray:
    """Lambda M (Lambda' M with ``transpose``) for a q x m matrix M, term by term.

    >>> lambda_matrix_times(np.ones((3, 2)), [np.array([[2.0]]), np.array([[10.0]])], [2, 1], transpose=True)[:, 0].tolist()
    [2.0, 2.0, 10.0]
    """
    M = np.asarray(M, dtype=np.float64)
    out, offset = np.empty_like(M), 0
    for T, count in zip(factors, levels):
        size = count * T.shape[0]
        block = M[offset : offset + size].reshape(count, T.shape[0], -1)
        out[offset : offset + size] = ((T.T if transpose else T) @ block).reshape(size, -1)
        offset += size
    return out


def factors_to_theta(factors: list[np.ndarray]) -> np.ndarray:
    """Stack lower-triangular factors into lme4's theta vector (inverse of :func:`theta_to_factors`)."""
    pieces = []
    for factor in factors:
        rows, cols = lower_indices(factor.shape[0])
        pieces.append(factor[rows, cols])
    return np.concatenate(pieces) if pieces else np.zeros(0)


def covariance_factor(G: np.ndarray, name: str = "G", tol: float = 1e-10) -> np.ndarray:
    """A lower-triangular T with T T' = G for a symmetric positive semi-definite G.

    Singular G (a zero variance, or correlation +-1) is legal and gives a T with a zero on its diagonal.
    Raises :class:`SingularCovarianceError` when G is not symmetric or has a clearly negative eigenvalue.

    >>> covariance_factor(np.array([[4.0, 2.0], [2.0, 1.0]]))
    array([[2., 0.],
           [1., 0.]])
    """
    G = np.atleast_2d(np.asarray(G, dtype=np.float64))
    if G.shape[0] != G.shape[1]:
        raise SingularCovarianceError(f"{name} must be square, got shape {G.shape}")
    if not np.all(np.isfinite(G)):
        raise SingularCovarianceError(f"{name} has non-finite entries")
    scale = max(float(np.max(np.abs(G))), np.finfo(float).tiny)
    if not np.allclose(G, G.T, rtol=1e-8, atol=1e-12 * scale):
        raise SingularCovarianceError(f"{name} must be symmetric, got {G.tolist()}")
    G = (G + G.T) / 2
    eigenvalues = np.linalg.eigvalsh(G)
    if eigenvalues[0] < -tol * scale:
        raise SingularCovarianceError(
            f"{name} is not positive semi-definite (smallest eigenvalue {eigenvalues[0]:.4g})"
        )
    return pivot_free_cholesky(G, tol * scale)


def pivot_free_cholesky(G: np.ndarray, tol: float) -> np.ndarray:
    """Lower T with T T' = G for a positive semi-definite G that may be singular: a pivot at or below ``tol``
    leaves its column 0 (a hand loop because LAPACK's potrf stops at the first zero pivot, and boundary
    covariances, a zero variance or a correlation of +-1, are legal).

    >>> pivot_free_cholesky(np.array([[1.0, 1.0], [1.0, 1.0]]), 1e-12).tolist()
    [[1.0, 0.0], [1.0, 0.0]]
    """
    k = G.shape[0]
    T = np.zeros((k, k))
    for j in range(k):
        pivot = G[j, j] - T[j, :j] @ T[j, :j]
        if pivot <= tol:
            continue
        T[j, j] = np.sqrt(pivot)
        T[j + 1 :, j] = (G[j + 1 :, j] - T[j + 1 :, :j] @ T[j, :j]) / T[j, j]
    return T
