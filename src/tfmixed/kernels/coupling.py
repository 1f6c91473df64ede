"""Strategies for the coupling C = [Lambda_rest' Zr' ; X' ; y~'] W Z1 between the first term and the rest.

Eliminating the block-diagonal first term needs three products with C, and there are three ways to form
them (a fourth splits C into its sparse and dense rows), chosen by the problem's structure (``choose_coupling``) with the limits of
:class:`tfmixed.kernels.options.KernelOptions`:

* ``DenseCoupling``: C held dense; every product is one BLAS call (small designs).
* ``PatternCoupling``: the products of pairs of C's nonzeros that share a level are precomputed once
  (MixedModels.jl's approach), so C W C' is one sparse mat-vec per evaluation (large sparse designs).
* ``SparseCoupling``: scipy sparse products (when the pattern would not fit in memory).
* ``SplitCoupling``: the pattern of the sparse random-effects rows, BLAS for the dense fixed-effects rows.

Interface: ``downdate(W, lower_only)`` = C W C' (dense; with ``lower_only`` only its lower triangle need be
filled) for block-diagonal W, ``block_sums(M)`` =
C_j' M C_j per level, ``transpose_times(z)`` = C' z per level,
``times_block_diagonal(B)`` = C blockdiag(B).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.sparse as sp

from ..cross_products import block_diagonal_matrix


class CouplingCapabilities:
    """What a coupling strategy declares about itself (read by the problem and the rest strategies, never
    probed): the defaults are the plain sparse strategy's."""

    #: ``reweighted`` takes C as a dense array (PLSProblem.reweighted skips building it sparse)
    takes_dense: bool = False
    #: ``downdate`` and ``block_sums`` read only the lower triangle of symmetric inputs
    reads_lower_triangle_only: bool = False
    #: C's sparse and dense parts are held apart and re-weighted by ``refilled(S, D)``
    holds_split_parts: bool = False


class DenseCoupling(CouplingCapabilities):
    """C as a dense (rows, L, k) array."""

    name = "dense"

    def __init__(self, C, n_levels: int, k: int):
        self.n_levels, self.k = n_levels, k
        self.C3 = (C.toarray() if sp.issparse(C) else np.asarray(C, dtype=np.float64)).reshape(C.shape[0], n_levels, k)
        self.shape = C.shape

    def downdate(self, weights: np.ndarray, lower_only: bool = False) -> np.ndarray:
        """C W C' (whole: one BLAS product fills both triangles at once)."""
        if weights.shape[1] == 1:
            C2 = self.C3[:, :, 0]
            return (C2 * weights[:, 0, 0]) @ C2.T
        return np.tensordot(np.einsum("sla,lab->slb", self.C3, weights), self.C3, axes=([1, 2], [1, 2]))

    def block_sums(self, M: np.ndarray) -> np.ndarray:
        C2 = self.C3.reshape(self.C3.shape[0], -1)
        MC = (M @ C2).reshape(self.C3.shape)
        return np.einsum("sla,slb->lab", self.C3, MC)

    def transpose_times(self, z: np.ndarray) -> np.ndarray:
        return (z @ self.C3.reshape(self.C3.shape[0], -1)).reshape(self.n_levels, self.k)

    def times_block_diagonal(self, blocks: np.ndarray) -> np.ndarray:
        return np.einsum("sla,lab->slb", self.C3, blocks).reshape(self.shape[0], -1)

    def reweighted(self, C) -> "DenseCoupling":
        """The same strategy for new values of C (same pattern; sparse, or already dense)."""
        return DenseCoupling(C, self.n_levels, self.k)

    takes_dense = True


class SparseCoupling(CouplingCapabilities):
    """C as a scipy CSR matrix; products by scipy (no precomputation)."""

    name = "sparse"

    def __init__(self, C: sp.csr_matrix, n_levels: int, k: int):
        self.C, self.n_levels, self.k = C, n_levels, k

    def downdate(self, weights: np.ndarray, lower_only: bool = False) -> np.ndarray:
        """C W C' (whole: the sparse product fills both triangles at once)."""
        return (self.C @ block_diagonal_matrix(weights) @ self.C.T).toarray()

    #: entries of the dense M C formed at a time by block_sums (its memory, 8 bytes each)
    block_sums_chunk = 4_000_000

    def block_sums(self, M: np.ndarray) -> np.ndarray:
        """C_j' M C_j per level, M C formed for a chunk of levels at a time (whole, it is dense rows x q1)."""
        k = self.k
        sums = np.zeros((self.n_levels, k, k))
        Ccsc = sp.csc_matrix(self.C)
        per_chunk = max(1, self.block_sums_chunk // max(1, self.C.shape[0] * k))
        for start in range(0, self.n_levels, per_chunk):
            stop = min(self.n_levels, start + per_chunk)
            C = Ccsc[:, start * k : stop * k]
            MC = C.T @ M  # (columns, rows): M symmetric
            for a in range(k):
                for b in range(k):
                    sums[start:stop, a, b] = np.asarray(C[:, a::k].multiply(MC[b::k].T).sum(axis=0)).ravel()
        return sums

    def transpose_times(self, z: np.ndarray) -> np.ndarray:
        return (self.C.T @ z).reshape(self.n_levels, -1)

    def times_block_diagonal(self, blocks: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(self.C @ block_diagonal_matrix(blocks))

    def reweighted(self, C: sp.csr_matrix) -> "SparseCoupling":
        """The same strategy for new values of C (same pattern)."""
        return type(self)(C, self.n_levels, self.k)


def level_pairs(C: sp.csc_matrix, n_levels: int, k: int, lower: bool = False):
    """Pairs of C's nonzeros that share a level j of the first term (k columns per level), as indices into
    C.data: (first, second, flat weight index (j k + a) k + b). Their products C[r, ja] W_j[a, b] C[c, jb] make
    up C W C'; ``lower`` keeps only the pairs with row(first) >= row(second).
    """
    C.sort_indices()
    level_ptr = C.indptr[::k]
    per_level = np.diff(level_ptr).astype(np.int64)
    entry_level = np.repeat(np.arange(n_levels), per_level)
    # for k = 1 rows are sorted within a level's column, so row >= row means position >= position: generate
    # only those pairs instead of filtering them
    if lower and k == 1:
        repeats = np.arange(C.nnz) - level_ptr[:-1][entry_level] + 1
    else:
        repeats = per_level[entry_level]
    first = np.repeat(np.arange(C.nnz), repeats)
    second = level_ptr[:-1][entry_level[first]] + np.arange(first.size) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    if lower and k > 1:
        keep = C.indices[first] >= C.indices[second]
        first, second = first[keep], second[keep]
    column_in_level = np.repeat(np.arange(C.shape[1]) % k, np.diff(C.indptr))
    weight_index = (entry_level[first] * k + column_in_level[first]) * k + column_in_level[second]
    return first, second, weight_index


class PatternCoupling(SparseCoupling):
    """The fixed sparsity pattern of C W C' for block-diagonal W (one k x k block per level).

    Pairs of nonzeros of C (row r >= row c) that share a level j contribute C[r, ja] W_j[a, b] C[c, jb] to
    entry (r, c). ``QT`` holds those products, one row per flattened weight (j, a, b) and one column per
    flattened dense position r * s + c, so each evaluation is a single sparse mat-vec.
    """

    name = "pattern"
    #: (positions, first, second) of C's pairs, set by ``_from_layout``: what ``reweighted`` refills
    _layout: tuple[sp.csr_matrix, np.ndarray, np.ndarray]

    def __init__(self, C: sp.csr_matrix, n_levels: int, k: int, QT: sp.csr_matrix, strict: np.ndarray | None = None):
        super().__init__(C, n_levels, k)
        # positions are flat in a size x size block (size: C's rows, or wider when C is the top of a larger C)
        self.QT, self.size = QT, int(round(np.sqrt(QT.shape[1])))
        if strict is None:
            rows, cols = np.divmod(QT.indices, self.size)
            strict = rows != cols
        self._strict = strict

    # block sums read the strictly-lower and diagonal positions apart (k > 1 needs the strict part's
    # transpose); for k = 1 one matrix with the strictly-lower entries doubled does it. Built on first use: a
    # PIRLS iteration refills the coupling and factors it, only the gradient reads block sums.
    @cached_property
    def sums_matrix(self) -> sp.csr_matrix:
        return self._masked(np.where(self._strict, 2.0, 1.0))

    @cached_property
    def strict_matrix(self) -> sp.csr_matrix:
        return self._masked(self._strict.astype(np.float64))

    @cached_property
    def diagonal_matrix(self) -> sp.csr_matrix:
        return self._masked((~self._strict).astype(np.float64))

    def _masked(self, factor: np.ndarray) -> sp.csr_matrix:
        QT = self.QT
        return sp.csr_matrix((factor * QT.data, QT.indices, QT.indptr), shape=QT.shape)

    @staticmethod
    def pair_count(C: sp.csc_matrix, k: int) -> int:
        per_level = np.diff(C.indptr[::k]).astype(np.int64)
        return int(np.sum(per_level**2))

    @classmethod
    def build(cls, C: sp.csr_matrix, n_levels: int, k: int, width: int | None = None) -> "PatternCoupling":
        """The pattern of C's pairs; with ``width``, C is the top of a matrix with that many rows, and the
        products land in the top-left of a width x width block (the split strategy's sparse rows)."""
        Ccsc = sp.csc_matrix(C)
        size = Ccsc.shape[0] if width is None else int(width)
        if k == 1:
            return cls._build_scalar(C, Ccsc, n_levels, size)
        first, second, weight_index = level_pairs(Ccsc, n_levels, k, lower=True)
        # the CSR layout of QT depends on the pattern only: its order is kept to refill it (reweighted)
        positions = sp.csr_matrix(
            (np.arange(1, first.size + 1, dtype=np.float64),
             (weight_index, Ccsc.indices[first].astype(np.int64) * size + Ccsc.indices[second])),
            shape=(n_levels * k * k, size * size),
        )
        pair_order = positions.data.astype(np.int64) - 1
        coupling = cls._from_layout(C, Ccsc, n_levels, k, positions, first[pair_order], second[pair_order])
        return coupling

    @classmethod
    def _build_scalar(cls, C, Ccsc: sp.csc_matrix, n_levels: int, size: int) -> "PatternCoupling":
        """The k = 1 pattern without a sort: the pairs come out level by level, which is QT's row order (the
        general path's COO -> CSR conversion dominates the set-up of a large crossed design)."""
        Ccsc.sort_indices()
        per_level = np.diff(Ccsc.indptr).astype(np.int64)
        level_start = np.repeat(Ccsc.indptr[:-1].astype(np.int64), per_level)
        # entry e pairs with its level's entries up to itself (rows sorted within a column: row <= row(e))
        repeats = np.arange(Ccsc.nnz) - level_start + 1
        first = np.repeat(np.arange(Ccsc.nnz), repeats)
        second = np.arange(first.size) - np.repeat(np.cumsum(repeats) - repeats - level_start, repeats)
        rows = Ccsc.indices.astype(np.int64)
        indptr = np.concatenate([[0], np.cumsum(per_level * (per_level + 1) // 2)])
        layout = sp.csr_matrix((np.ones(first.size), rows[first] * size + rows[second], indptr),
                               shape=(n_levels, size * size))
        return cls._from_layout(C, Ccsc, n_levels, 1, layout, first, second)

    @classmethod
    def _from_layout(cls, C, Ccsc, n_levels, k, layout, first, second, strict=None) -> "PatternCoupling":
        QT = sp.csr_matrix((Ccsc.data[first] * Ccsc.data[second], layout.indices, layout.indptr), shape=layout.shape)
        coupling = cls(C, n_levels, k, QT, strict)
        coupling._layout = (layout, first, second)
        return coupling

    def reweighted(self, C: sp.csr_matrix) -> "PatternCoupling":
        """New values of C on the same pattern: the pairs are not searched again."""
        layout, first, second = self._layout
        return self._from_layout(C, sp.csc_matrix(C), self.n_levels, self.k, layout, first, second, self._strict)

    def downdate(self, weights: np.ndarray, lower_only: bool = False) -> np.ndarray:
        """C W C'; with ``lower_only`` on and below the diagonal only (zeros above), for a caller that reads
        nothing else: the symmetric copy is one more pass over the dense block per evaluation."""
        lower = (self.QT.T @ weights.reshape(-1)).reshape(self.size, self.size)
        if lower_only:
            return lower
        diagonal = np.diag(lower).copy()
        full = lower + lower.T
        del lower  # one working copy of the dense block at a time
        full[np.diag_indices(self.size)] -= diagonal
        return full

    def block_sums(self, M: np.ndarray) -> np.ndarray:
        """Reads only M's lower triangle (M symmetric)."""
        flat = np.ascontiguousarray(M).reshape(-1)
        shape = (self.n_levels, self.k, self.k)
        if self.k == 1:
            return (self.sums_matrix @ flat).reshape(shape)
        lower = (self.strict_matrix @ flat).reshape(shape)
        return lower + lower.transpose(0, 2, 1) + (self.diagonal_matrix @ flat).reshape(shape)

    reads_lower_triangle_only = True


class SplitCoupling(CouplingCapabilities):
    """C = [S; D] held as its two parts: S = Zr'WZ1 (sparse) by the pattern strategy and D = [X y~]'WZ1 (dense:
    every level meets the fixed effects) by BLAS. The pattern of all of C pairs each level's p + 1 dense entries
    with every other entry, (nnz_j + p + 1)^2 / 2 products per level, where S alone needs nnz_j^2 / 2 (many
    fixed effects make the difference a factor of hundreds) and D's products are dense GEMMs."""

    name = "split"
    #: block_sums reads M's lower triangle only (M symmetric), as the pattern strategy does
    reads_lower_triangle_only = True
    holds_split_parts = True

    def __init__(self, S: sp.csr_matrix, D: np.ndarray, n_levels: int, k: int, pattern: "PatternCoupling | None" = None):
        self.S, self.n_levels, self.k = sp.csr_matrix(S), n_levels, k
        self.D = np.asarray(D, dtype=np.float64)
        self.D3 = self.D.reshape(self.D.shape[0], n_levels, k)
        self.split = self.S.shape[0]
        self.shape = (self.split + self.D.shape[0], self.D.shape[1])
        if pattern is None and self.split:
            pattern = PatternCoupling.build(self.S, n_levels, k, width=self.shape[0])
        self.pattern = pattern

    def refilled(self, S: sp.csr_matrix, D: np.ndarray) -> "SplitCoupling":
        """New values on the same patterns: the pairs of S are not searched again."""
        pattern = self.pattern.reweighted(sp.csr_matrix(S)) if self.pattern is not None else None
        return SplitCoupling(S, D, self.n_levels, self.k, pattern)

    @cached_property
    def C(self) -> sp.csr_matrix:
        return sp.vstack([self.S, sp.csr_matrix(self.D)]).tocsr()

    def downdate(self, weights: np.ndarray, lower_only: bool = False) -> np.ndarray:
        """C W C' (``lower_only``: on and below the diagonal, as the pattern strategy): the pattern fills S W S'
        into a full-size block (one working copy), BLAS the rows of D."""
        split, dense_rows = self.split, self.D.shape[0]
        DW = np.einsum("dla,lab->dlb", self.D3, weights).reshape(dense_rows, -1)
        if split:
            assert self.pattern is not None  # built whenever S has rows
            full = self.pattern.downdate(weights, lower_only)
        else:
            full = np.empty((self.shape[0], self.shape[0]))
        full[split:, split:] = DW @ self.D.T
        if split:
            cross = np.asarray(self.S @ DW.T)
            full[split:, :split] = cross.T
            if not lower_only:
                full[:split, split:] = cross
        return full

    def block_sums(self, M: np.ndarray) -> np.ndarray:
        """C_j' M C_j per level: S_j' M_ss S_j (pattern), D_j' M_dd D_j (BLAS) and the two cross terms; reads
        only M's lower triangle."""
        split = self.split
        M = np.asarray(M)
        corner = np.tril(M[split:, split:])
        corner = corner + np.tril(corner, -1).T
        sums = np.einsum("dla,dlb->lab", self.D3, (corner @ self.D).reshape(self.D3.shape))
        if not split:
            return sums
        assert self.pattern is not None  # built whenever S has rows
        sums += self.pattern.block_sums(M)
        # the cross terms sum_r S[r, ja] (M_sd D)[r, jb] = sum_d (M_ds S)[d, ja] D[d, jb]: one sparse product
        # with the few dense rows (M_ds = M_sd', from the lower triangle)
        projected = np.asarray(self.S.T @ M[split:, :split].T).T.reshape(self.D3.shape)
        cross = np.einsum("dla,dlb->lab", projected, self.D3)
        return sums + cross + cross.transpose(0, 2, 1)

    def transpose_times(self, z: np.ndarray) -> np.ndarray:
        out = np.einsum("d,dla->la", z[self.split :], self.D3)
        if self.split:
            out += (self.S.T @ z[: self.split]).reshape(self.n_levels, self.k)
        return out

    def times_block_diagonal(self, blocks: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(self.C @ block_diagonal_matrix(blocks))

    def reweighted(self, C: sp.csr_matrix) -> "SplitCoupling":
        """New values of the combined C (its last rows dense): split and refilled."""
        C = sp.csr_matrix(C)
        return self.refilled(C[: self.split], C[self.split :].toarray())


def choose_coupling(C: sp.csr_matrix, n_levels: int, k: int, options,
                    parts: tuple[sp.csr_matrix, np.ndarray] | None = None):
    """The cheapest strategy for C's products that fits in memory; ``parts`` = (S, D) are C's sparse
    random-effects rows and its dense fixed-effects rows, when the caller has them apart.

    Costs per evaluation, at the rates of ``options`` (:class:`~tfmixed.kernels.options.KernelOptions`): dense,
    rows^2 L k^2 flops of BLAS plus holding C dense; pattern, one multiply-add per pair of C's nonzeros sharing a
    level; sparse products, the same pairs at scipy's rate; split, the pattern of S's pairs plus D's rows times
    all of C's by BLAS. Forced by ``options``: C with at most ``dense_coupling_entries`` entries is always dense;
    more than ``pattern_pairs`` pairs never use the pattern.
    """
    strategies = {"dense": DenseCoupling, "sparse": SparseCoupling}
    if options.coupling == "pattern":
        return PatternCoupling.build(C, n_levels, k)
    if options.coupling == "split":
        if parts is None:
            raise ValueError("the split coupling needs C's sparse and dense parts")
        return SplitCoupling(*parts, n_levels, k)
    if options.coupling is not None:
        return strategies[options.coupling](C, n_levels, k)
    rows, columns = C.shape
    dense_bytes = 8 * rows * columns
    if rows * columns <= options.dense_coupling_entries:
        return DenseCoupling(C, n_levels, k)
    pairs = PatternCoupling.pair_count(sp.csc_matrix(C), k)
    costs = {}
    if dense_bytes <= options.memory_limit / 4:
        costs["dense"] = rows * rows * n_levels * k * k / options.dense_flops_per_second
    if pairs <= options.pattern_pairs:
        costs["pattern"] = pairs / options.pattern_pairs_per_second
    costs["sparse"] = pairs / options.sparse_pairs_per_second
    if parts is not None and parts[0].shape[0]:
        S, D = parts
        sparse_pairs = PatternCoupling.pair_count(sp.csc_matrix(S), k)
        if sparse_pairs <= options.pattern_pairs:
            costs["split"] = (sparse_pairs / options.pattern_pairs_per_second
                              + D.shape[0] * rows * n_levels * k * k / options.dense_flops_per_second)
    choice = min(costs, key=costs.__getitem__)
    if choice == "pattern":
        return PatternCoupling.build(C, n_levels, k)
    if choice == "split":
        assert parts is not None  # costed only with the parts
        return SplitCoupling(*parts, n_levels, k)
    return strategies[choice](C, n_levels, k)
