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

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import TfmixedError
from .bordered_block import BorderedBase, downdate_pattern, level_block_sums


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
        #: the Takahashi plan of L's pattern, shared with the structures re-weighted from this one
        self._plan_cache: dict = {}

    def reweighted(self, cross_products) -> "SparseStructure":
        """The structure for new values on the same pattern."""
        pattern = sp.csc_matrix((np.ones(self.keys.size), self.indices, self.indptr), shape=(self.n, self.n))
        new = SparseStructure(cross_products, pattern, self.rest_terms, self.k1)
        new._plan_cache = self._plan_cache  # the same pattern: the same ordering and plan
        return new

    def takahashi_plan(self, L: sp.csc_matrix) -> list["TakahashiBatch"] | None:
        """The batches of Takahashi's recurrences for L's pattern, built once (the ordering, hence L's pattern,
        depends only on S_rr's pattern); None where their index arrays would pass ``TAKAHASHI_PLAN_PAIRS``."""
        kept = self._plan_cache.get("takahashi")
        if kept is not None and np.array_equal(kept[0], L.indptr) and np.array_equal(kept[1], L.indices):
            return kept[2]
        plan = takahashi_batches(L)
        self._plan_cache["takahashi"] = (L.indptr.copy(), L.indices.copy(), plan)
        return plan

    def position(self, rows, cols) -> np.ndarray:
        return np.searchsorted(self.keys, np.asarray(cols, dtype=np.int64) * self.n + np.asarray(rows, dtype=np.int64))

    def lambda_matrix(self, factors) -> sp.csr_matrix:
        return sp.csr_matrix(sp.block_diag([sp.kron(sp.identity(t.n_levels), sp.csr_matrix(T))
                                            for t, T in zip(self.rest_terms, factors[1:])]))


#: at most this many (row, column) products in a batched Takahashi plan (three int64 index arrays of this size)
TAKAHASHI_PLAN_PAIRS = 5_000_000


@dataclass(frozen=True)
class TakahashiBatch:
    """Columns of L with no ancestor among them (one level of the elimination tree): their recurrences
    Z_Jj = -Z_JJ l_j, Z_jj = 1 / D_j + l_j' z_j run as one gather and two bincounts over flat indices of Z."""

    columns: np.ndarray     # the batch's columns j
    pair_z: np.ndarray      # flat index of Z[r, c] for every product Z[r, c] l_c (r, c below j)
    pair_l: np.ndarray      # index into L.data of l_c
    pair_out: np.ndarray    # which (j, r) output the product adds to
    out_l: np.ndarray       # index into L.data of l_r, per output
    out_column: np.ndarray  # position of the output's column in ``columns``
    below: np.ndarray       # flat index of Z[r, j], per output
    above: np.ndarray       # flat index of Z[j, r], per output
    diagonal: np.ndarray    # flat index of Z[j, j], per column


def takahashi_batches(L: sp.csc_matrix) -> list[TakahashiBatch] | None:
    """Batches by depth in the elimination tree (parent = first row below the diagonal), roots first: a
    column's recurrence reads only its ancestors' entries, which earlier batches wrote."""
    n, indptr, indices = L.shape[0], L.indptr, L.indices
    below_counts = np.diff(indptr) - 1  # sorted unit lower-triangular columns: the diagonal comes first
    if float(np.sum(below_counts.astype(np.float64) ** 2)) > TAKAHASHI_PLAN_PAIRS:
        return None
    parent = np.where(below_counts > 0, indices[np.minimum(indptr[:-1] + 1, indices.size - 1)], -1)
    depth = np.zeros(n, dtype=np.int64)
    for j in range(n - 1, -1, -1):  # parents have larger indices
        if parent[j] >= 0:
            depth[j] = depth[parent[j]] + 1
    batches = []
    for level in range(int(depth.max(initial=-1)) + 1):
        columns = np.flatnonzero(depth == level)
        pieces = [_column_plan(j, indptr, indices, n) for j in columns]
        offsets = np.cumsum([0] + [piece[0].size for piece in pieces])
        batches.append(TakahashiBatch(
            columns=columns,
            pair_z=np.concatenate([piece[2] for piece in pieces]),
            pair_l=np.concatenate([piece[3] for piece in pieces]),
            pair_out=np.concatenate([piece[4] + offset for piece, offset in zip(pieces, offsets)]),
            out_l=np.concatenate([piece[1] for piece in pieces]),
            out_column=np.repeat(np.arange(columns.size), np.diff(offsets)),
            below=np.concatenate([piece[0] * n + j for piece, j in zip(pieces, columns)]),
            above=np.concatenate([j * n + piece[0] for piece, j in zip(pieces, columns)]),
            diagonal=columns * (n + 1),
        ))
    return batches


def _column_plan(j: int | np.integer, indptr, indices, n: int):
    """Column j's rows below the diagonal, their L.data indices, and its products' (Z, l, output) indices."""
    positions = np.arange(indptr[j] + 1, indptr[j + 1])
    rows = indices[positions].astype(np.int64)
    m = rows.size
    return (rows, positions, (rows[:, None] * n + rows[None, :]).ravel(), np.tile(positions, m),
            np.repeat(np.arange(m), m))


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
        plan = self.structure.takahashi_plan(L)
        if plan is None:
            return self._selected_inverse_by_column(L)
        n = L.shape[0]
        Z, data, inverse_d = np.zeros(n * n), L.data, 1.0 / self.D
        for batch in plan:
            z = np.bincount(batch.pair_out, Z[batch.pair_z] * data[batch.pair_l], minlength=batch.out_l.size)
            Z[batch.below] = -z
            Z[batch.above] = -z
            Z[batch.diagonal] = inverse_d[batch.columns] + np.bincount(
                batch.out_column, data[batch.out_l] * z, minlength=batch.columns.size)
        return Z.reshape(n, n)

    def _selected_inverse_by_column(self, L: sp.csc_matrix) -> np.ndarray:
        """Takahashi's recurrences one column at a time (where a batched plan would not fit in memory)."""
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
        inverse = sp.csc_matrix((lookup(s.rows_of, s.cols_of), s.indices, s.indptr), shape=(s.n, s.n))
        scaled = sp.coo_matrix(self.Lam @ inverse @ self.Lam.T)
        # H = Q' m for M's values m on the pattern (Lambda keeps M on it: the pattern holds every column of a
        # level of each term)
        where = np.minimum(s.position(scaled.row, scaled.col), s.keys.size - 1)
        if not np.array_equal(s.keys[where], scaled.col.astype(np.int64) * s.n + scaled.row):
            raise TfmixedError("internal: the scaled inverse left the pattern of the remaining block")
        on_pattern = np.zeros(s.keys.size)
        on_pattern[where] = scaled.data
        H = level_block_sums(s.Q, on_pattern, s.k1)
        sums = [block.sum(axis=0) for block in self._term_blocks(lookup)]
        return self._add_border_term(problem, factors, include_fixed, H, sums)
