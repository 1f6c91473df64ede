"""Penalised least squares for linear mixed models with a blocked Cholesky factorisation.

For relative covariance factor Lambda(theta) (block diagonal, ``I_l (x) T_t`` per term) the spherical
random effects u = Lambda^{-1} b solve (Bates et al. 2015, J. Stat. Softw. 67(1), eq. 8-18)::

    [Lambda'Z'Z Lambda + I   Lambda'Z'X] [u]   [Lambda'Z'y]
    [X'Z Lambda              X'X       ] [b] = [X'y       ]

We factor the augmented matrix Omega of the columns [Z_1 Lambda_1 | Z_rest Lambda_rest | X | y] as L L'.
The first (largest) term's block is block diagonal (one k x k block per level), so it is factored level by
level and eliminated with a precomputed sparsity pattern, as MixedModels.jl does; the remaining columns form
a small dense Schur complement S = L22 L22'. The last diagonal entry of L is sqrt of the penalised residual
sum of squares r^2(theta), from which the profiled deviances follow:

    ML:   log|L_theta|^2 + n (1 + log(2 pi r^2 / n))
    REML: log|L_theta|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p)))

Never forms a dense n x q Z or a dense q x q matrix for the first term.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from ..errors import TfmixedError
from .covariance import lower_indices

#: above this many entries the first-block pattern is not precomputed (memory), a sparse product is used.
PATTERN_LIMIT = 40_000_000
#: below this many entries of C (rest x q1) the dense path (BLAS) is used.
DENSE_LIMIT = 250_000


@dataclass(frozen=True)
class TermLayout:
    """What the kernel needs of a random-effects term: per-observation level codes and covariate values."""

    codes: np.ndarray
    values: np.ndarray
    n_levels: int

    @property
    def n_cols(self) -> int:
        return self.values.shape[1]

    @property
    def q(self) -> int:
        return self.n_levels * self.n_cols

    def z_matrix(self) -> sp.csc_matrix:
        n, k = self.values.shape
        rows = np.repeat(np.arange(n), k)
        cols = (self.codes[:, None] * k + np.arange(k)[None, :]).ravel()
        return sp.csc_matrix((self.values.ravel(), (rows, cols)), shape=(n, self.q))


def _block_diagonal(blocks: np.ndarray) -> sp.bsr_matrix:
    """Sparse block-diagonal matrix from an (l, k, k) array of blocks."""
    count, k, _ = blocks.shape
    return sp.bsr_matrix((blocks, np.arange(count), np.arange(count + 1)), shape=(count * k, count * k))


def _diagonal_block_sums(M: np.ndarray, n_levels: int, k: int) -> np.ndarray:
    """Sum over levels of the k x k diagonal blocks of a (n_levels * k) square matrix."""
    return np.einsum("iaib->ab", M.reshape(n_levels, k, n_levels, k))


class _FirstBlockPattern:
    """The fixed sparsity pattern of C W C' for block-diagonal W (one k1 x k1 block per level).

    Pairs of nonzeros of C (row r >= row c) that share a level j of the first term contribute
    C[r, ja] W_j[a, b] C[c, jb] to entry (r, c). ``QT`` holds those products, one row per flattened
    weight (j, a, b) and one column per flattened dense position r * s + c, so each evaluation is a single
    sparse mat-vec (no sparse-sparse product, no sorting).
    """

    def __init__(self, QT: sp.csr_matrix, size: int, n_levels: int, k: int):
        self.QT, self.size, self.n_levels, self.k = QT, size, n_levels, k
        # For block sums: strictly-lower positions and diagonal positions apart (k > 1 needs the transpose of
        # the strict part), or, for k = 1, one matrix with the strictly-lower entries doubled.
        rows, cols = np.divmod(QT.indices, size)
        strict = rows != cols
        if k == 1:
            self.sums_matrix = sp.csr_matrix((np.where(strict, 2.0, 1.0) * QT.data, QT.indices, QT.indptr), shape=QT.shape)
        else:
            self.strict_matrix = sp.csr_matrix((np.where(strict, QT.data, 0.0), QT.indices, QT.indptr), shape=QT.shape)
            self.diagonal_matrix = sp.csr_matrix((np.where(strict, 0.0, QT.data), QT.indices, QT.indptr), shape=QT.shape)

    @classmethod
    def build(cls, C: sp.csc_matrix, n_levels: int, k: int, limit: int | None = None):
        """The pattern of C, or None when it would hold more than ``limit`` pairs (default PATTERN_LIMIT)."""
        limit = PATTERN_LIMIT if limit is None else limit
        C = sp.csc_matrix(C)
        C.sort_indices()
        level_ptr = C.indptr[::k]
        per_level = np.diff(level_ptr).astype(np.int64)
        if int(np.sum(per_level**2)) > limit:
            return None
        entry_level = np.repeat(np.arange(n_levels), per_level)
        row_of = C.indices.astype(np.int64)
        # Pair every nonzero with the nonzeros of its level. For k = 1, rows are sorted within the level's column,
        # so the pairs with row >= row are exactly those with position >= position: generate only those.
        if k == 1:
            repeats = np.arange(C.nnz) - level_ptr[:-1][entry_level] + 1
        else:
            repeats = per_level[entry_level]
        first = np.repeat(np.arange(C.nnz), repeats)
        offsets = np.arange(first.size) - np.repeat(np.cumsum(repeats) - repeats, repeats)
        second = level_ptr[:-1][entry_level[first]] + offsets
        if k == 1:
            weight_index = entry_level[first]
        else:
            keep = row_of[first] >= row_of[second]
            first, second = first[keep], second[keep]
            column_in_level = np.repeat(np.arange(C.shape[1]) % k, np.diff(C.indptr))
            weight_index = (entry_level[first] * k + column_in_level[first]) * k + column_in_level[second]
        size = C.shape[0]
        QT = sp.csr_matrix(
            (C.data[first] * C.data[second], (weight_index, row_of[first] * size + row_of[second])),
            shape=(n_levels * k * k, size * size),
        )
        return cls(QT, size, n_levels, k)

    def product(self, weights: np.ndarray) -> np.ndarray:
        """C W C' (dense, symmetric) for the blocks ``weights`` (l, k, k), each W_j symmetric."""
        lower = (self.QT.T @ weights.reshape(-1)).reshape(self.size, self.size)
        full = lower + lower.T
        full[np.diag_indices(self.size)] -= np.diag(lower)
        return full

    def block_sums(self, M: np.ndarray) -> np.ndarray:
        """H_j = C_j' M C_j for every level j (C_j: the k1 columns of level j), M symmetric."""
        flat = np.ascontiguousarray(M).reshape(-1)
        shape = (self.n_levels, self.k, self.k)
        if self.k == 1:
            return (self.sums_matrix @ flat).reshape(shape)
        lower = (self.strict_matrix @ flat).reshape(shape)
        return lower + lower.transpose(0, 2, 1) + (self.diagonal_matrix @ flat).reshape(shape)


@dataclass
class PLSFactor:
    """The blocked Cholesky factor of Omega(theta) and the quantities derived from it."""

    problem: "PLSProblem"
    factors: list[np.ndarray]
    A11: np.ndarray
    L11: np.ndarray
    L22: np.ndarray

    @cached_property
    def L11_inv(self) -> np.ndarray:
        """Inverses of the per-level Cholesky factors of A11 (one batched inversion, reused)."""
        return np.linalg.inv(self.L11)

    @cached_property
    def A11_inv(self) -> np.ndarray:
        """Inverses of the per-level blocks A11_j = T1' D_j T1 + I."""
        return self.L11_inv.transpose(0, 2, 1) @ self.L11_inv

    @cached_property
    def rest_scale(self) -> sp.csr_matrix:
        """Lambda_rest as a sparse matrix (identity on the X and y columns)."""
        blocks = [
            sp.kron(sp.identity(term.n_levels), sp.csr_matrix(T))
            for term, T in zip(self.problem.rest, self.factors[1:])
        ]
        blocks.append(sp.identity(self.problem.p + 1))
        return sp.csr_matrix(sp.block_diag(blocks))

    @property
    def logdet_L(self) -> float:
        """log |Lambda'Z'Z Lambda + I| (= log|L_theta|^2)."""
        qr = self.problem.q_rest
        first = 2.0 * np.sum(np.log(np.diagonal(self.L11, axis1=1, axis2=2)))
        return float(first + 2.0 * np.sum(np.log(np.diag(self.L22)[:qr])))

    @property
    def logdet_RX(self) -> float:
        """log |R_X|^2, the REML correction."""
        qr, p = self.problem.q_rest, self.problem.p
        return float(2.0 * np.sum(np.log(np.diag(self.L22)[qr : qr + p])))

    @property
    def pwrss(self) -> float:
        """Penalised residual sum of squares r^2(theta) = ||y - X beta - Z b||^2 + ||u||^2 at the optimum."""
        return float(self.L22[-1, -1] ** 2)

    def deviance(self, reml: bool) -> float:
        """Profiled deviance (ML) or REML criterion at this theta."""
        n, p = self.problem.n, self.problem.p
        dof = n - p if reml else n
        value = self.logdet_L + dof * (1.0 + np.log(2.0 * np.pi * self.pwrss / dof))
        return float(value + self.logdet_RX) if reml else float(value)

    def sigma2(self, reml: bool) -> float:
        """Profiled residual variance r^2 / (n - p) for REML, r^2 / n for ML."""
        return self.pwrss / (self.problem.n - self.problem.p if reml else self.problem.n)

    def vcov_beta_unscaled(self) -> np.ndarray:
        """(R_X' R_X)^{-1}; multiply by sigma^2 for the covariance of the fixed-effects estimates."""
        qr, p = self.problem.q_rest, self.problem.p
        LX = self.L22[qr : qr + p, qr : qr + p]
        LX_inv = la.solve_triangular(LX, np.eye(p), lower=True, check_finite=False)
        return LX_inv.T @ LX_inv

    def _L21_transpose_times(self, z: np.ndarray) -> np.ndarray:
        """L21' z = L11^{-1} Lambda_1' C' Lambda_rest z, level by level; z has the length of the rest block."""
        problem = self.problem
        scaled = problem.scale_rows(z[:, None], self.factors, transpose=False)[:, 0] if problem.rest else z
        if problem._C_dense is not None:
            projected = np.tensordot(scaled, problem._C_dense, axes=(0, 0))
        else:
            projected = (problem.C.T @ scaled).reshape(problem.first.n_levels, -1)
        projected = projected @ self.factors[0]
        return np.einsum("lab,lb->la", self.L11_inv, projected)

    @cached_property
    def _solution(self) -> tuple[np.ndarray, np.ndarray]:
        problem = self.problem
        qr = problem.q_rest
        x2 = la.solve_triangular(self.L22[:-1, :-1], self.L22[-1, :-1], lower=True, trans="T", check_finite=False)
        z = np.zeros(self.L22.shape[0])
        z[-1] = 1.0
        z[:-1] = -x2
        rhs1 = self._L21_transpose_times(z)
        x1 = np.einsum("lba,lb->la", self.L11_inv, rhs1).reshape(-1)
        return x2[qr:], np.concatenate([x1, x2[:qr]])

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed effects beta and spherical random effects u that minimise the penalised RSS."""
        beta, u = self._solution
        return beta.copy(), u.copy()

    def u_to_b(self, u: np.ndarray) -> np.ndarray:
        """b = Lambda u."""
        problem = self.problem
        q1 = problem.first.q
        first = (u[:q1].reshape(problem.first.n_levels, -1) @ self.factors[0].T).ravel()
        rest = np.zeros(problem.C.shape[0])
        rest[: problem.q_rest] = u[q1:]
        rest = problem.scale_rows(rest[:, None], self.factors, transpose=False)[: problem.q_rest, 0]
        return np.concatenate([first, rest])

    def _rest_inverse(self, size: int, full: bool = True) -> np.ndarray:
        """Inverse of the leading ``size`` block of the Schur complement S, padded with zeros to S's shape.

        With ``full=False`` only the lower triangle is filled (the first-block pattern reads nothing else).
        """
        inverse = np.zeros_like(self.L22)
        if size:
            lower, info = la.lapack.dpotri(self.L22[:size, :size], lower=1)
            if info != 0:
                raise TfmixedError("could not invert the Schur complement of the mixed model equations")
            # dpotri fills the lower triangle; the upper one still holds L22's zeros.
            block = inverse[:size, :size]
            block += lower
            if full:
                block += lower.T
                block[np.diag_indices(size)] -= np.diag(lower)
        return inverse

    def inverse_block_sums(self, include_fixed: bool) -> list[np.ndarray]:
        """Per term, the sum over levels of the k x k diagonal blocks of Omega_P^{-1}.

        Omega_P is Lambda'Z'Z Lambda + I (``include_fixed=False``) or the [Z Lambda, X] system of the REML
        determinant (``include_fixed=True``); uses Omega^{-1}_11 = A11^{-1} + W'W with W = L22^{-1} L21 L11^{-1}.
        """
        problem = self.problem
        size = problem.q_rest + (problem.p if include_fixed else 0)
        lower_only = problem._pattern is not None and problem._scalar_rest
        S_inv = self._rest_inverse(size, full=not lower_only)
        if not problem.rest:
            scaled = S_inv
        elif problem._scalar_rest:
            d = problem._rest_diagonal(self.factors)
            scaled = S_inv * d[:, None] * d[None, :]
        else:
            scaled = problem.scale_rows(problem.scale_rows(S_inv, self.factors, False).T, self.factors, False)
        H = problem.first_block_sums(scaled)
        A_inv = self.A11_inv
        V = self.factors[0][None, :, :] @ A_inv
        first = np.sum(A_inv + V.transpose(0, 2, 1) @ H @ V, axis=0)
        sums, offset = [first], 0
        for term in problem.rest:
            block = S_inv[offset : offset + term.q, offset : offset + term.q]
            sums.append(_diagonal_block_sums(block, term.n_levels, term.n_cols))
            offset += term.q
        return sums

    def gradient(self, reml: bool, singular_tol: float = 1e-4) -> np.ndarray | None:
        """Gradient of the profiled criterion with respect to theta, or None where it cannot be formed exactly.

        d log|Omega_P| / dT_ab = 2 [(l I - sum_j B_j) T^{-1}]_ba and d r^2 / dT_ab = -2 [T^{-T} U'U]_ab,
        with B_j the diagonal blocks of Omega_P^{-1} and U the l x k spherical random effects of the term.
        A scalar term at T = 0 has derivative exactly 0 (the criterion is even in its theta); a vector-valued
        term with a (near-)singular T returns None, and the caller falls back to finite differences.
        """
        scale = max(1.0, max(float(np.max(np.abs(T))) for T in self.factors))
        singular = [float(np.min(np.abs(np.diag(T)))) < singular_tol * scale for T in self.factors]
        for T, is_singular in zip(self.factors, singular):
            if is_singular and (T.shape[0] > 1 or T[0, 0] != 0.0):
                return None
        problem = self.problem
        _, u = self._solution
        dof = problem.n - problem.p if reml else problem.n
        r2 = self.pwrss
        sums = self.inverse_block_sums(include_fixed=reml)
        pieces, offset = [], 0
        for term, T, B, is_singular in zip(problem.terms, self.factors, sums, singular):
            if is_singular:
                pieces.append(np.zeros(1))
                offset += term.q
                continue
            U = u[offset : offset + term.q].reshape(term.n_levels, term.n_cols)
            T_inv = np.linalg.inv(T)
            d_logdet = 2.0 * ((term.n_levels * np.eye(term.n_cols) - B) @ T_inv).T
            d_r2 = -2.0 * T_inv.T @ (U.T @ U)
            full = d_logdet + dof * d_r2 / r2
            rows, cols = lower_indices(term.n_cols)
            pieces.append(full[rows, cols])
            offset += term.q
        return np.concatenate(pieces)

    def inverse_diagonal_blocks(self, chunk_columns: int = 4096) -> list[np.ndarray]:
        """Diagonal k x k blocks of (Lambda'Z'Z Lambda + I)^{-1}, one (l_t, k_t, k_t) array per term.

        The dense rest x q1 product W = L22^{-1} L21 L11^{-1} is formed in column chunks (memory O(q_rest chunk)).
        """
        problem = self.problem
        qr, l1, k1 = problem.q_rest, problem.first.n_levels, problem.first.n_cols
        L11_inv = self.L11_inv
        first = self.A11_inv.copy()
        blocks = [first]
        if qr == 0:
            return blocks
        L22q = self.L22[:qr, :qr]
        per_level = self.factors[0][None, :, :] @ L11_inv.transpose(0, 2, 1) @ L11_inv
        scaled = sp.csr_matrix(self.rest_scale.T @ (problem.C @ _block_diagonal(per_level)))[:qr, :]
        per_chunk = max(1, chunk_columns // k1)
        for start in range(0, l1, per_chunk):
            stop = min(l1, start + per_chunk)
            W = la.solve_triangular(
                L22q, scaled[:, start * k1 : stop * k1].toarray(), lower=True, check_finite=False
            ).reshape(qr, stop - start, k1)
            first[start:stop] += np.einsum("rla,rlb->lab", W, W)
        L22q_inv = la.solve_triangular(L22q, np.eye(qr), lower=True, check_finite=False)
        offset = 0
        for term in problem.rest:
            columns = L22q_inv[:, offset : offset + term.q].reshape(qr, term.n_levels, term.n_cols)
            blocks.append(np.einsum("rla,rlb->lab", columns, columns))
            offset += term.q
        return blocks


class PLSProblem:
    """Cross-products of a mixed model's design, computed once and reused for every theta.

    ``terms[0]`` should be the term with the most levels: its block of Omega is factored level by level.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> codes = np.repeat(np.arange(5), 4)
    >>> X = np.ones((20, 1)); y = rng.normal(size=20) + codes
    >>> problem = PLSProblem(X, y, [TermLayout(codes, np.ones((20, 1)), 5)])
    >>> problem.factorize([np.array([[1.0]])]).deviance(reml=True) > 0
    True
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, terms: list[TermLayout]):
        if not terms:
            raise TfmixedError("a mixed model needs at least one random-effects term")
        self.X = np.asarray(X, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64).ravel()
        self.n, self.p = self.X.shape
        self.first, self.rest = terms[0], list(terms[1:])
        self.terms = list(terms)
        self.dims = [term.n_cols for term in terms]
        self.q_rest = sum(term.q for term in self.rest)

        first, k1 = self.first, self.first.n_cols
        self.D1 = np.zeros((first.n_levels, k1, k1))
        for a in range(k1):
            for c in range(a, k1):
                cross = np.bincount(first.codes, first.values[:, a] * first.values[:, c], minlength=first.n_levels)
                self.D1[:, a, c] = self.D1[:, c, a] = cross

        Z1 = first.z_matrix()
        Zr = sp.hstack([term.z_matrix() for term in self.rest], format="csc") if self.rest else None
        Xy = np.column_stack([self.X, self.y])
        dense_part = sp.csr_matrix((Z1.T @ Xy).T)
        if Zr is not None:
            self.C = sp.vstack([sp.csr_matrix(Zr.T @ Z1), dense_part], format="csr")
            ZrXy = np.asarray(Zr.T @ Xy)
            self.E = np.block([[(Zr.T @ Zr).toarray(), ZrXy], [ZrXy.T, Xy.T @ Xy]])
        else:
            self.C = dense_part
            self.E = Xy.T @ Xy
        self.C.sort_indices()
        small = self.C.shape[0] * self.C.shape[1] <= DENSE_LIMIT
        # Small designs: a dense C makes the Schur complement one BLAS call.
        self._C_dense = self.C.toarray().reshape(self.C.shape[0], first.n_levels, k1) if small else None
        self._pattern = None if small else _FirstBlockPattern.build(self.C.tocsc(), first.n_levels, k1)
        self._rest_index = np.arange(self.q_rest)
        self._scalar_rest = all(term.n_cols == 1 for term in self.rest)

    @property
    def q(self) -> int:
        return self.first.q + self.q_rest

    def z_times(self, b: np.ndarray) -> np.ndarray:
        """Z b without forming Z: each term adds its covariates times its level's effects."""
        out = np.zeros(self.n)
        offset = 0
        for term in self.terms:
            effects = b[offset : offset + term.q].reshape(term.n_levels, term.n_cols)
            out += np.sum(term.values * effects[term.codes], axis=1)
            offset += term.q
        return out

    def scale_rows(self, M: np.ndarray, factors: list[np.ndarray], transpose: bool = True) -> np.ndarray:
        """Lambda_rest' M (or Lambda_rest M), applied term by term on row slices of a rest x m matrix."""
        out = M.copy()
        offset = 0
        for term, T in zip(self.rest, factors[1:]):
            rows = slice(offset, offset + term.q)
            if term.n_cols == 1:
                out[rows] *= T[0, 0]
            else:
                block = M[rows].reshape(term.n_levels, term.n_cols, -1)
                spec = "ba,lbc->lac" if transpose else "ab,lbc->lac"
                out[rows] = np.einsum(spec, T, block).reshape(term.q, -1)
            offset += term.q
        return out

    def _rest_diagonal(self, factors: list[np.ndarray]) -> np.ndarray:
        scale = np.ones(self.C.shape[0])
        offset = 0
        for term, T in zip(self.rest, factors[1:]):
            scale[offset : offset + term.q] = T[0, 0]
            offset += term.q
        return scale

    def first_block_sums(self, M: np.ndarray) -> np.ndarray:
        """H_j = C_j' M C_j for every level j of the first term (an (l1, k1, k1) array)."""
        if self._C_dense is not None:
            C3 = self._C_dense
            C2 = C3.reshape(C3.shape[0], -1)
            MC = (M @ C2).reshape(C3.shape)
            return np.einsum("sla,slb->lab", C3, MC)
        if self._pattern is not None:
            return self._pattern.block_sums(M)
        sums = np.zeros((self.first.n_levels, self.first.n_cols, self.first.n_cols))
        k1 = self.first.n_cols
        MC = (self.C.T @ M).T
        for a in range(k1):
            for b in range(k1):
                Ca = self.C[:, a::k1]
                sums[:, a, b] = np.asarray(Ca.multiply(MC[:, b::k1]).sum(axis=0)).ravel()
        return sums

    def _schur_first(self, weights: np.ndarray) -> np.ndarray:
        """E - C W C' for the block-diagonal W = blockdiag(T1 A11_j^{-1} T1')."""
        if self._C_dense is not None:
            C3 = self._C_dense
            if weights.shape[1] == 1:
                C2 = C3[:, :, 0]
                return self.E - (C2 * weights[:, 0, 0]) @ C2.T
            return self.E - np.tensordot(np.einsum("sla,lab->slb", C3, weights), C3, axes=([1, 2], [1, 2]))
        if self._pattern is not None:
            return self.E - self._pattern.product(weights)
        Cw = self.C @ _block_diagonal(weights)
        return self.E - (Cw @ self.C.T).toarray()

    def factorize(self, factors: list[np.ndarray]) -> PLSFactor:
        """Factor Omega for the given relative covariance factors T_t (one k_t x k_t matrix per term).

        Any square root of G_t / sigma^2 works as T_t, triangular or not; singular T_t is allowed.
        """
        factors = [np.asarray(T, dtype=np.float64) for T in factors]
        T1 = factors[0]
        A11 = T1.T[None, :, :] @ self.D1 @ T1[None, :, :] + np.eye(T1.shape[0])[None, :, :]
        L11 = np.linalg.cholesky(A11)
        L11_inv = np.linalg.inv(L11)
        # Schur complement of the first block: C T1 A11^{-1} T1' C' is subtracted before scaling by Lambda_rest.
        half = T1[None, :, :] @ L11_inv.transpose(0, 2, 1)
        weights = half @ half.transpose(0, 2, 1)
        schur = self._schur_first(weights)
        if not self.rest:
            S = schur
        elif self._scalar_rest:
            d = self._rest_diagonal(factors)
            S = schur * d[:, None] * d[None, :]
        else:
            S = self.scale_rows(self.scale_rows(schur, factors).T, factors)
        S[self._rest_index, self._rest_index] += 1.0
        try:
            L22 = la.cholesky(S, lower=True, check_finite=False)
        except la.LinAlgError:
            raise TfmixedError(
                "the penalised least-squares system is not positive definite; "
                "the fixed-effects model matrix may be rank deficient given the random effects"
            ) from None
        factor = PLSFactor(self, factors, A11, L11, L22)
        factor.__dict__["L11_inv"] = L11_inv
        return factor
