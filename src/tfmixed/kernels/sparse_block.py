"""The sparse strategy for the remaining columns: a fill-reducing sparse LDL' of their block, the X, y~ columns
as a dense border, and Takahashi's selected inverse for the gradient.

When the remaining random-effects columns form one large but sparse block (partially crossed designs such as
students x teachers within schools), neither dense LAPACK (O(q^3) on mostly zeros) nor the component-wise
bordered strategy (one huge component) fits. S_rr is factored by SuperLU in symmetric mode with a minimum-degree
ordering (P S_rr P' = L D L', diagonal pivots; scipy's maintained sparse direct solver: scipy has no sparse
Cholesky), the border by block elimination as in :mod:`tfmixed.kernels.bordered_block`, and the entries of
S_rr^{-1} on the pattern of L + L' (which contains every entry the gradient reads) by Takahashi's recurrences:

    Z_jj = 1 / D_j - l_j' Z_Jj,   Z_Jj = -Z_JJ l_j        (J: the rows below j in column j of L)

Same interface as :class:`~tfmixed.kernels.dense_block.DenseFactor`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import TfmixedError
from .bordered_block import BorderedBase, downdate_pattern


class SparseStructure:
    """What the sparse factorisation precomputes: the pattern of S_rr, the downdate pattern into it, the border."""

    def __init__(self, cross_products, pattern: sp.spmatrix, rest_terms, k1: int):
        cp = cross_products
        self.k1, self.rest_terms = k1, rest_terms
        pattern = sp.csc_matrix(pattern)
        pattern.sort_indices()
        self.n = pattern.shape[0]
        self.indptr, self.indices = pattern.indptr, pattern.indices
        columns = np.repeat(np.arange(self.n), np.diff(self.indptr))
        self.keys = columns.astype(np.int64) * self.n + self.indices  # sorted: column-major
        self.rows_of, self.cols_of = self.indices.astype(np.int64), columns
        coo = sp.coo_matrix(cp.rest_rest)
        self.E_data = np.zeros(self.keys.size)
        np.add.at(self.E_data, self.position(coo.row, coo.col), coo.data)
        self.Q = downdate_pattern(sp.csc_matrix(cp.rest_first), cp.dims[0][0], k1, self.position, self.keys.size)
        self.C_rest = sp.csr_matrix(cp.rest_first)
        self.C_border, self.E_border, self.E_corner = cp.xy_first, cp.xy_rest, cp.xy_xy

    def reweighted(self, cross_products) -> "SparseStructure":
        """The structure for new values on the same pattern."""
        pattern = sp.csc_matrix((np.ones(self.keys.size), self.indices, self.indptr), shape=(self.n, self.n))
        return SparseStructure(cross_products, pattern, self.rest_terms, self.k1)

    def position(self, rows, cols) -> np.ndarray:
        return np.searchsorted(self.keys, np.asarray(cols, dtype=np.int64) * self.n + np.asarray(rows, dtype=np.int64))

    def lambda_matrix(self, factors) -> sp.csr_matrix:
        return sp.csr_matrix(sp.block_diag([sp.kron(sp.identity(t.n_levels), sp.csr_matrix(T))
                                            for t, T in zip(self.rest_terms, factors[1:])]))


class SparseFactor(BorderedBase):
    """P S_rr P' = L D L' (SuperLU, symmetric mode) bordered by the dense X, y~ columns."""

    name = "sparse"

    def __init__(self, structure: SparseStructure, problem, factors, weights: np.ndarray):
        self.structure, self.problem = structure, problem
        self.q_rest, self.p = problem.q_rest, problem.p
        values = structure.E_data - structure.Q @ weights.reshape(-1)
        M = sp.csc_matrix((values, structure.indices, structure.indptr), shape=(structure.n, structure.n))
        self.Lam = structure.lambda_matrix(factors)
        A = sp.csc_matrix(self.Lam.T @ M @ self.Lam) + sp.identity(structure.n, format="csc")
        try:
            self.lu = spla.splu(A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        except RuntimeError:
            raise TfmixedError("the penalised least-squares system is not positive definite") from None
        self.D = self.lu.U.diagonal()
        if not np.array_equal(self.lu.perm_r, self.lu.perm_c) or np.any(self.D <= 0):
            raise TfmixedError("the penalised least-squares system is not positive definite")
        self._finish_border(structure, factors, weights)

    def inverse_times(self, rhs: np.ndarray) -> np.ndarray:
        return self.lu.solve(np.asfortranarray(rhs))

    def logdet_rest(self) -> float:
        return float(np.sum(np.log(self.D)))

    def solve_rest(self, rhs: np.ndarray) -> np.ndarray:
        """A matrix V with V'V = rhs' S_rr^{-1} rhs: D^{-1/2} L^{-1} P rhs."""
        rhs = np.asarray(rhs, dtype=np.float64).reshape(self.q_rest, -1)
        y = np.empty_like(rhs)
        y[self.lu.perm_r] = rhs
        z = spla.spsolve_triangular(sp.csr_matrix(self.lu.L), y, lower=True, unit_diagonal=True)
        return z / np.sqrt(self.D)[:, None]

    def _selected_inverse(self) -> np.ndarray:
        """S_rr^{-1} on the pattern of L + L', in the permuted order, as a dense array (Takahashi)."""
        L = sp.csc_matrix(self.lu.L)
        L.sort_indices()
        n = L.shape[0]
        indptr, indices, data = L.indptr, L.indices, L.data
        Z = np.zeros((n, n))
        inverse_d = 1.0 / self.D
        for j in range(n - 1, -1, -1):
            # sorted rows of a unit lower-triangular column: the diagonal comes first, the rows below after it
            start, stop = indptr[j] + 1, indptr[j + 1]
            if start < stop:
                J, l = indices[start:stop], data[start:stop]
                z = Z[J[:, None], J] @ l
                Z[J, j] = -z
                Z[j, J] = -z
                Z[j, j] = inverse_d[j] + l @ z
            else:
                Z[j, j] = inverse_d[j]
        return Z

    def inverse_lookup(self):
        """Entries of S_rr^{-1} in the original order, read from the selected inverse (permuted order): exact at
        the pattern of S_rr (pairs that share a row of Z, or a level of the first term)."""
        Z, perm = self._selected_inverse(), self.lu.perm_r
        return lambda rows, cols: Z[perm[rows], perm[cols]]

    def inverse_sums(self, problem, factors, include_fixed: bool):
        lookup = self.inverse_lookup()
        s = self.structure
        inverse = sp.csr_matrix((lookup(s.rows_of, s.cols_of), (s.rows_of, s.cols_of)), shape=(s.n, s.n))
        size = problem.coupling.C.shape[0]
        scaled = sp.csr_matrix(self.Lam @ inverse @ self.Lam.T)
        scaled.resize((size, size))
        H = problem.coupling.sparse_block_sums(scaled)
        sums = [block.sum(axis=0) for block in self._term_blocks(lookup)]
        return self._add_border_term(problem, factors, include_fixed, H, sums)
