"""The whole mixed-model system as one sparse matrix, for quadratic forms with arbitrary vectors.

The blocked strategies of :mod:`tfmixed.kernels.pls` answer the questions the criterion and its gradient ask
(log-determinants, selected blocks of the inverse). Prediction intervals ask another one: for a new row with
covariates x and random-effects columns z, the prediction-error variance of x'beta + z'b is

    Var = sigma^2 a' A^{-1} a,   a = [Lambda'z; x],   A = [[Lambda'Z'WZ Lambda + I, Lambda'Z'WX], [X'WZ Lambda, X'WX]]

(Henderson's mixed-model equations in the spherical parametrisation), where z may pair levels that never
share a training row (a new plate with a known sample), so no selected inverse holds a'A^{-1}a. A is assembled
from the cross-products and factored once by SuperLU (scipy has no sparse Cholesky; A is symmetric positive
definite, so the LU with a symmetric ordering is as stable), then each batch of rows costs one solve.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..cross_products import CrossProducts


def _lambda_matrix(factors: list[np.ndarray], levels: list[int]) -> sp.csr_matrix:
    return sp.block_diag([sp.kron(sp.identity(count), sp.csr_matrix(T)) for T, count in zip(factors, levels)],
                         format="csr")


class JointSystem:
    """A = [[Lambda'Z'WZ Lambda + I, Lambda'Z'WX], [X'WZ Lambda, X'WX]] for cross-products and factors T_t.

    >>> import numpy as np
    >>> from tfmixed.terms import RandomEffectsTerm
    >>> term = RandomEffectsTerm.intercept(np.repeat(np.arange(3), 2), 3)
    >>> cp = CrossProducts.from_rows(np.ones((6, 1)), np.arange(6.0), [term])
    >>> system = JointSystem(cp, [np.eye(1)])
    >>> a = np.array([[1.0, 0.0, 0.0, 1.0]])  # level 0's effect plus the intercept
    >>> A = np.array([[3.0, 0, 0, 2], [0, 3, 0, 2], [0, 0, 3, 2], [2, 2, 2, 6]])  # Z'Z + I, Z'X; X'X = 6
    >>> bool(np.isclose(system.quadratic_forms(a)[0], a[0] @ np.linalg.solve(A, a[0])))
    True
    """

    def __init__(self, cross_products: CrossProducts, factors: list[np.ndarray]):
        cp = cross_products
        levels = [count for count, _ in cp.dims]
        Lam = _lambda_matrix(factors, levels)
        ZWZ = cp.z_gram()
        XWZ = cp.xy_z()[:-1]
        upper = Lam.T @ ZWZ @ Lam + sp.identity(cp.q, format="csr")
        coupling = sp.csr_matrix(XWZ @ Lam) if cp.p else sp.csr_matrix((0, cp.q))
        A = sp.bmat([[upper, coupling.T], [coupling, sp.csr_matrix(cp.xy_xy[:-1, :-1])]], format="csc")
        self.size = A.shape[0]
        self._lu = spla.splu(A, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})

    def quadratic_forms(self, rows: np.ndarray | sp.spmatrix, chunk: int = 512) -> np.ndarray:
        """a_i' A^{-1} a_i for each row a_i of ``rows`` (m x size, dense or sparse), solved in chunks of rows."""
        rows = sp.csr_matrix(rows)
        out = np.empty(rows.shape[0])
        for start in range(0, rows.shape[0], chunk):
            block = rows[start : start + chunk].toarray().T
            out[start : start + chunk] = np.einsum("ij,ij->j", block, self._lu.solve(block))
        return out
