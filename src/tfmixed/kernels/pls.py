"""Penalised least squares for linear mixed models with a blocked Cholesky factorisation.

For the relative covariance factor Lambda(theta) (block diagonal, I_L (x) T_t per term) the spherical random
effects u = Lambda^{-1} b solve (Bates et al. 2015, J. Stat. Softw. 67(1), eq. 8-18)::

    [Lambda'Z'WZ Lambda + I   Lambda'Z'WX] [u]   [Lambda'Z'W y~]
    [X'WZ Lambda              X'WX       ] [b] = [X'W y~       ]

The augmented matrix Omega of [Z1 Lambda1 | Zr Lambdar | X | y~] is factored as L L' in two blocks:

1. the first (largest) term, block diagonal: :class:`~tfmixed.kernels.block_diagonal.BlockDiagonalBlock`;
2. its Schur complement on the remaining columns, dense:
   :class:`~tfmixed.kernels.dense_block.DenseFactor`, formed through a coupling strategy of
   :mod:`tfmixed.kernels.coupling`.

The last pivot squared is the penalised RSS r^2(theta); the profiled criteria follow:

    ML:   log|L_theta|^2 + n (1 + log(2 pi r^2 / n)) - sum log w
    REML: log|L_theta|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p))) - sum log w

The kernel reads only :class:`~tfmixed.cross_products.CrossProducts`; it never sees rows or data frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..cross_products import CrossProducts, block_diagonal_matrix
from ..errors import MemoryLimitError, ShapeError
from ..protocols import RestFactor
from .block_diagonal import BlockDiagonalBlock, BlockDiagonalFactor
from .bordered_block import BorderedFactor, BorderedStructure, ComponentLayout, component_pattern
from .coupling import PatternCoupling, choose_coupling
from .covariance import lambda_times
from .criterion import ProfiledCriterion, ProfiledGradient
from .dense_block import DenseFactor
from .information import AverageInformation
from .sparse_block import SparseFactor, SparseStructure
from .options import KernelOptions


@dataclass(frozen=True)
class BlockShape:
    """Levels and covariate columns of one random-effects term, as the kernel sees it."""

    n_levels: int
    n_cols: int

    @property
    def q(self) -> int:
        return self.n_levels * self.n_cols


class PLSProblem:
    """The mixed model equations of one set of cross-products, with the strategies chosen for them.

    >>> import numpy as np
    >>> from tfmixed.cross_products import CrossProducts
    >>> from tfmixed.terms import RandomEffectsTerm
    >>> codes = np.repeat(np.arange(5), 4)
    >>> y = np.random.default_rng(0).normal(size=20) + codes
    >>> stats = CrossProducts.from_rows(np.ones((20, 1)), y, [RandomEffectsTerm.intercept(codes, 5)])
    >>> PLSProblem(stats).factorize([np.array([[1.0]])]).deviance(reml=True) > 0
    True
    """

    strategy = "exact"

    def __init__(self, cross_products: CrossProducts, options: KernelOptions | None = None):
        self.options = options or KernelOptions()
        self.cross_products = cp = cross_products
        self.terms = [BlockShape(levels, cols) for levels, cols in cp.dims]
        self.first, self.rest = self.terms[0], self.terms[1:]
        self.dims = [term.n_cols for term in self.terms]
        self.n, self.p = cp.n, cp.p
        self.q_rest = cp.q_rest
        self.first_block = BlockDiagonalBlock(cp.first_blocks)
        #: what depends only on the pattern (and the last theta), computed on demand; re-weighted problems share it
        self._pattern_cache: dict[str, Any] = {}
        C = self._coupling_matrix(cp)
        self.scalar_rest = all(term.n_cols == 1 for term in self.rest)
        self._pattern = None
        self.bordered = self._bordered_structure(cp)
        self.sparse = self._sparse_structure(cp) if self.bordered is None else None
        self._pattern = None  # only the chosen structure keeps what it needs
        if self.bordered is None and self.sparse is None:
            self._check_memory()
            self.E = self._dense_rest(cp)
        self.coupling = choose_coupling(C, self.first.n_levels, self.first.n_cols, self.options,
                                        parts=(sp.csr_matrix(cp.rest_first), cp.xy_first))

    @property
    def strategies(self) -> dict[str, str]:
        """The block strategies chosen for these cross-products (shown in a fit's ``optsum``)."""
        rest = "bordered" if self.bordered is not None else "sparse" if self.sparse is not None else "dense"
        return {"backend": "exact", "first term": f"block-diagonal ({self.first.n_levels} x {self.first.n_cols})",
                "coupling": self.coupling.name, "remaining terms": rest if self.rest else "none"}

    @staticmethod
    def _coupling_matrix(cp: CrossProducts) -> sp.csr_matrix:
        """C = [Zr'WZ1; [X y~]'WZ1] with every entry of the dense rows stored (zeros too), so that the pattern
        does not depend on the values: re-weighted problems refill it."""
        rest = sp.csr_matrix(cp.rest_first)
        rest.sort_indices()
        rows, width = cp.xy_first.shape
        indptr = np.concatenate([rest.indptr, rest.indptr[-1] + width * np.arange(1, rows + 1)])
        indices = np.concatenate([rest.indices, np.tile(np.arange(width, dtype=rest.indices.dtype), rows)])
        data = np.concatenate([rest.data, cp.xy_first.ravel()])
        return sp.csr_matrix((data, indices, indptr), shape=(rest.shape[0] + rows, width))

    @staticmethod
    def _dense_rest(cp: CrossProducts) -> np.ndarray:
        if cp.q_rest == 0:
            return cp.xy_xy.copy()
        # filled in place: np.block's checks cost more than the copies for the small blocks of a PIRLS step
        q = cp.q_rest
        E = np.empty((q + cp.xy_xy.shape[0],) * 2)
        E[:q, :q] = cp.rest_rest.toarray()
        E[:q, q:] = cp.xy_rest.T
        E[q:, :q] = cp.xy_rest
        E[q:, q:] = cp.xy_xy
        return E

    @staticmethod
    def _dense_coupling_matrix(cp: CrossProducts) -> np.ndarray:
        """C = [Zr'WZ1; [X y~]'WZ1] as a dense array."""
        return np.vstack([cp.rest_first.toarray(), cp.xy_first]) if cp.q_rest else cp.xy_first

    def reweighted(self, cross_products: CrossProducts) -> "PLSProblem":
        """The same problem for new cross-products of the same rows and pattern (new weights or a new working
        response, as every PIRLS iteration has): the strategies chosen for this one are kept, only the values
        they hold are rebuilt.

        >>> import numpy as np
        >>> from tfmixed.cross_products import CrossProductPattern
        >>> from tfmixed.terms import RandomEffectsTerm
        >>> pattern = CrossProductPattern([RandomEffectsTerm.intercept(np.repeat(np.arange(5), 4), 5)])
        >>> X, y = np.ones((20, 1)), np.arange(20.0)
        >>> weighted = pattern.compute(X, y, weights=np.linspace(0.5, 2.0, 20))
        >>> again = PLSProblem(pattern.compute(X, y)).reweighted(weighted)
        >>> fresh = PLSProblem(weighted)
        >>> bool(np.isclose(again.factorize([np.eye(1)]).pwrss, fresh.factorize([np.eye(1)]).pwrss))
        True
        """
        cp = cross_products
        if cp.dims != self.cross_products.dims or cp.p != self.p:
            raise ShapeError(f"cross-products of structure {cp.dims}/{cp.p} cannot replace {self.cross_products.dims}/{self.p}")
        new = object.__new__(PLSProblem)
        new.__dict__.update(self.__dict__)
        new.cross_products, new.n = cp, cp.n
        new.first_block = BlockDiagonalBlock(cp.first_blocks)
        if self.bordered is not None:
            new.bordered = BorderedStructure(cp, self.bordered.layout, self.rest, self.first.n_cols)
        elif self.sparse is not None:
            new.sparse = self.sparse.reweighted(cp)
        else:
            new.E = self._dense_rest(cp)
        if self.coupling.holds_split_parts:
            new.coupling = self.coupling.refilled(cp.rest_first, cp.xy_first)
        else:
            dense = self.coupling.takes_dense
            new.coupling = self.coupling.reweighted(self._dense_coupling_matrix(cp) if dense else self._coupling_matrix(cp))
        return new

    def coupling_counts(self) -> np.ndarray:
        """Nonzeros per first-term column of M' (C's pattern widened by each rest term's k, bounded by the
        largest k): computed once per pattern, shared by the re-weighted problems."""
        if "coupling_counts" not in self._pattern_cache:
            counts = np.bincount(sp.csr_matrix(self.cross_products.rest_first).indices, minlength=self.first.q)
            self._pattern_cache["coupling_counts"] = counts * max(term.n_cols for term in self.rest)
        return self._pattern_cache["coupling_counts"]

    @property
    def rest_strategy(self) -> str:
        """"bordered" (components factored apart), "sparse" (sparse LDL') or "dense"."""
        return "bordered" if self.bordered is not None else "sparse" if self.sparse is not None else "dense"

    def _considers(self, strategy: str, cp: CrossProducts, min_columns: int) -> bool:
        """Whether a structured rest strategy is forced, or may pay off: enough remaining columns, and a
        fill-in pattern that is affordable to compute."""
        rest = self.options.rest
        if rest not in (None, strategy) or not self.rest:
            return False
        if rest == strategy:
            return True
        if self.q_rest < min_columns:
            return False
        return PatternCoupling.pair_count(sp.csc_matrix(cp.rest_first), self.first.n_cols) <= self.options.pattern_pairs

    def _rest_pattern(self, cp: CrossProducts) -> sp.csr_matrix:
        """Where S_rr can be nonzero (computed once, for whichever strategy asks first)."""
        if self._pattern is None:
            self._pattern = component_pattern(cp.rest_rest, cp.rest_first)
        return self._pattern

    def _sparse_structure(self, cp: CrossProducts) -> SparseStructure | None:
        """The sparse strategy where the remaining columns form a large block that is mostly zeros."""
        if not self._considers("sparse", cp, self.options.sparse_min_columns):
            return None
        if 2 * 8 * self.q_rest**2 > self.options.memory_limit:
            return None  # its selected inverse is held as a dense array: refused with the dense path's estimate
        pattern = self._rest_pattern(cp)
        if self.options.rest is None and pattern.nnz > self.options.sparse_max_density * self.q_rest**2:
            return None
        return SparseStructure(cp, pattern, self.rest, self.first.n_cols)

    def _bordered_structure(self, cp: CrossProducts) -> BorderedStructure | None:
        """The bordered strategy where the remaining columns split into small components (no fill-in)."""
        if not self._considers("bordered", cp, self.options.bordered_min_columns):
            return None
        layout = ComponentLayout(self._rest_pattern(cp))
        if self.options.rest is None and layout.largest > self.options.bordered_max_block:
            return None
        return BorderedStructure(cp, layout, self.rest, self.first.n_cols)

    def _check_memory(self) -> None:
        size = self.q_rest + self.p + 1
        # E, the factor, the gradient's inverse and one temporary (tests/test_core.py pins the working copies)
        needed = 4 * 8 * size * size
        if needed > self.options.memory_limit:
            raise MemoryLimitError(
                f"the exact kernel needs a dense {size:,} x {size:,} block for the random effects after the "
                f"first term ({needed / 2**30:.1f} GiB with its working copies; limit "
                f"{self.options.memory_limit / 2**30:.1f} GiB). Put the factor with the most levels first is "
                "automatic; reduce the levels of the other factors, or fit with lmer(..., backend='auto') (the iterative backend)"
            )

    @property
    def q(self) -> int:
        return self.first.q + self.q_rest

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
                out[rows] = ((T.T if transpose else T) @ block).reshape(term.q, -1)
            offset += term.q
        return out

    def rest_lambda(self, factors: list[np.ndarray]) -> np.ndarray:
        """blockdiag(Lambda_rest, I) over [rest | X | y~] as a dense array (for small blocks); the last one is
        kept, as the steps of a PIRLS run share theta."""
        key = b"".join(T.tobytes() for T in factors[1:])
        kept = self._pattern_cache.get("rest_lambda")
        if kept is not None and kept[0] == key:
            return kept[1]
        Lam = np.eye(self.q_rest + self.p + 1)
        offset = 0
        for term, T in zip(self.rest, factors[1:]):
            levels, k = term.n_levels, term.n_cols
            block = Lam[offset : offset + term.q, offset : offset + term.q].reshape(levels, k, levels, k)
            block[np.arange(levels), :, np.arange(levels), :] = T
            offset += term.q
        Lam.setflags(write=False)
        self._pattern_cache["rest_lambda"] = (key, Lam)
        return Lam

    def rest_diagonal(self, factors: list[np.ndarray]) -> np.ndarray:
        """The diagonal of blockdiag(Lambda_rest, I) for the scalar terms (1 on vector-valued terms' rows)."""
        scale = np.ones(self.q_rest + self.p + 1)
        offset = 0
        for term, T in zip(self.rest, factors[1:]):
            if term.n_cols == 1:
                scale[offset : offset + term.q] = T[0, 0]
            offset += term.q
        return scale

    def scale_both(self, M: np.ndarray, factors: list[np.ndarray], transpose: bool = True, *,
                   in_place: bool = False) -> np.ndarray:
        """Lambda' M Lambda (or Lambda M Lambda') for a symmetric M over [rest | X | y~].

        Scalar terms scale rows and columns by one pass over M; only the (few) rows and columns of
        vector-valued terms are transformed by their T_t. ``in_place`` overwrites M (no copy of the dense block).
        """
        if not self.rest:
            return M
        if not self.scalar_rest and M.shape[0] <= self.options.small_dense_scale:
            Lam = self.rest_lambda(factors)
            product = Lam.T @ M @ Lam if transpose else Lam @ M @ Lam.T
            if not in_place:
                return product
            M[...] = product
            return M
        d = self.rest_diagonal(factors)
        out = M if in_place else M.copy()
        out *= d[:, None]
        out *= d[None, :]
        if self.scalar_rest:
            return out
        offset, size = 0, out.shape[0]
        for term, T in zip(self.rest, factors[1:]):
            if term.n_cols > 1:
                rows = slice(offset, offset + term.q)
                left = T.T if transpose else T
                out[rows] = (left @ out[rows].reshape(term.n_levels, term.n_cols, -1)).reshape(term.q, -1)
                out[:, rows] = (out[:, rows].reshape(size, term.n_levels, term.n_cols) @ left.T).reshape(size, term.q)
            offset += term.q
        return out

    def factorize(self, factors: list[np.ndarray]) -> "PLSFactor":
        """Factor Omega for relative covariance factors T_t (one k_t x k_t matrix per term).

        Any square root of G_t / sigma^2 works as T_t, triangular or not; a singular T_t is allowed.
        """
        factors = [np.asarray(T, dtype=np.float64) for T in factors]
        first = self.first_block.factor(factors[0])
        if self.bordered is not None:
            return PLSFactor(self, factors, first, BorderedFactor(self.bordered, self, factors, first.downdate_weights))
        if self.sparse is not None:
            return PLSFactor(self, factors, first, SparseFactor(self.sparse, self, factors, first.downdate_weights))
        # S = Lambda'(E - C W C')Lambda + I_rest, built in the downdate's own array: one dense working copy
        # LAPACK reads the lower triangle; only a vector-valued term's Lambda mixes it with the upper one
        S = self.coupling.downdate(first.downdate_weights, lower_only=self.scalar_rest)
        np.subtract(self.E, S, out=S)
        S = self.scale_both(S, factors, in_place=True)
        S[np.arange(self.q_rest), np.arange(self.q_rest)] += 1.0
        return PLSFactor(self, factors, first, DenseFactor(S, self.q_rest, self.p))


@dataclass
class PLSFactor(ProfiledCriterion, ProfiledGradient, AverageInformation):
    """The blocked Cholesky factor of Omega(theta) and the quantities derived from it."""

    #: exact solves make the average information cheap (one solve per parameter)
    has_average_information = True

    problem: PLSProblem
    factors: list[np.ndarray]
    first: BlockDiagonalFactor
    rest: RestFactor

    @property
    def logdet_L(self) -> float:
        """log |Lambda'Z'WZ Lambda + I| (= log|L_theta|^2)."""
        return self.first.logdet + self.rest.logdet_rest()

    @property
    def logdet_RX(self) -> float:
        """log |R_X|^2, the REML correction."""
        return self.rest.logdet_fixed()

    @property
    def pwrss(self) -> float:
        """Penalised weighted residual sum of squares r^2(theta) = ||y - X beta - Z b||_W^2 + ||u||^2."""
        return self.rest.last_pivot() ** 2

    def vcov_beta_unscaled(self) -> np.ndarray:
        """(R_X' R_X)^{-1}; multiply by sigma^2 for the covariance of the fixed-effects estimates."""
        p = self.problem.p
        LX_inv = np.linalg.solve(self.rest.fixed_block(), np.eye(p)) if p else np.zeros((0, 0))
        return LX_inv.T @ LX_inv

    def _L21_transpose_times(self, z: np.ndarray) -> np.ndarray:
        """L21' z = L11^{-1} T1' C' Lambda_rest z, level by level; z has the length of the rest block."""
        problem = self.problem
        scaled = problem.scale_rows(z[:, None], self.factors, transpose=False)[:, 0] if problem.rest else z
        projected = problem.coupling.transpose_times(scaled) @ self.factors[0]
        return self.first.solve_lower(projected)

    @cached_property
    def _solution(self) -> tuple[np.ndarray, np.ndarray]:
        problem = self.problem
        qr = problem.q_rest
        x2 = self.rest.back_substitute()
        z = np.zeros(x2.size + 1)
        z[-1] = 1.0
        z[:-1] = -x2
        x1 = self.first.solve_upper(self._L21_transpose_times(z)).reshape(-1)
        return x2[qr:] + problem.cross_products.shift, np.concatenate([x1, x2[:qr]])

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed effects beta and spherical random effects u that minimise the penalised RSS."""
        beta, u = self._solution
        return beta.copy(), u.copy()

    def solve_equations(self, rhs: np.ndarray) -> np.ndarray:
        """Omega_ub^{-1} rhs for new right-hand sides of the mixed model equations (rows: u of the first term, u of
        the rest, beta; spherical coordinates): x1 = A11^{-1}(r1 - Omega_1r x2) after x2 = S^{-1}(r2 - Omega_r1
        A11^{-1} r1), S the rest strategy's Schur complement over [rest | X]."""
        problem, T1 = self.problem, self.factors[0]
        q1, k1 = problem.first.q, problem.first.n_cols
        rhs = np.asarray(rhs, dtype=np.float64).reshape(problem.q + problem.p, -1)
        first = rhs[:q1].reshape(-1, k1, rhs.shape[1])
        rest = self.rest.solve_equations(rhs[q1:] - self._coupled_rows(self.first.A_inv @ first))
        first = self.first.A_inv @ (first - T1.T @ self._coupled_columns(rest))
        return np.vstack([first.reshape(q1, -1), rest])

    def _coupled_rows(self, first: np.ndarray) -> np.ndarray:
        """Omega_r1 x = blockdiag(Lambda_r', I) [Zr; X]'WZ1 T1 x for first-term blocks x (L, k, m)."""
        cp, problem = self.problem.cross_products, self.problem
        scaled = (self.factors[0] @ first).reshape(problem.first.q, -1)
        if not problem.q_rest:
            return cp.xy_first[: problem.p] @ scaled
        rows = np.vstack([cp.rest_first @ scaled, cp.xy_first[: problem.p] @ scaled])
        return problem.scale_rows(rows, self.factors, transpose=True)

    def _coupled_columns(self, rest: np.ndarray) -> np.ndarray:
        """Z1'W[Zr; X] blockdiag(Lambda_r, I) x as first-term blocks (L, k, m) (T1' is left to the caller)."""
        cp, problem = self.problem.cross_products, self.problem
        if not problem.q_rest:
            columns = cp.xy_first[: problem.p].T @ rest
            return columns.reshape(problem.first.n_levels, problem.first.n_cols, -1)
        scaled = problem.scale_rows(rest, self.factors, transpose=False)
        columns = cp.rest_first.T @ scaled[: problem.q_rest] + cp.xy_first[: problem.p].T @ scaled[problem.q_rest :]
        return columns.reshape(problem.first.n_levels, problem.first.n_cols, -1)

    def spherical_effects(self) -> np.ndarray:
        """u (read-only view: the solution is cached)."""
        return self._solution[1]

    def u_to_b(self, u: np.ndarray) -> np.ndarray:
        """b = Lambda u."""
        return lambda_times(u, self.factors, [term.n_levels for term in self.problem.terms])

    def inverse_block_sums(self, include_fixed: bool) -> list[np.ndarray]:
        """Per term, the sum over levels of the k x k diagonal blocks of Omega_P^{-1}.

        Omega_P is Lambda'Z'WZ Lambda + I (``include_fixed=False``) or the [Z Lambda, X] system of the REML
        determinant (``include_fixed=True``); uses Omega^{-1}_11 = A11^{-1} + V'V with V = L22^{-1} L21 L11^{-1}.
        """
        problem = self.problem
        H, rest_sums = self.rest.inverse_sums(problem, self.factors, include_fixed)
        A_inv = self.first.A_inv
        V = self.factors[0][None, :, :] @ A_inv
        return [np.sum(A_inv + V.transpose(0, 2, 1) @ H @ V, axis=0), *rest_sums]

    def inverse_entries(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Entries (left[m], right[m]) of (Lambda'Z'WZ Lambda + I)^{-1} (random-effects columns in the kernel's
        order: first term, then the rest), for the leverages of a GLMM's Laplace gradient.

        With M' = Lambda_r' C T1 A11^{-1} (sparse: C's pattern) and S the Schur complement of the remaining
        columns, the inverse is [[A11^{-1} + M S^{-1} M', -M S^{-1}], [-S^{-1} M', S^{-1}]]. On a small dense block
        S^{-1} M' is formed whole (``KernelOptions.dense_inverse_entries``); otherwise each pair costs the product of its
        columns' nonzero counts in M', reading S^{-1} through the strategy's ``inverse_lookup`` (the bordered and
        sparse strategies hold it on the pattern of S, where the pairs of a row lie). Pass each pair once;
        first-term pairs must share a level.
        """
        problem = self.problem
        q1, qr, k1 = problem.first.q, problem.q_rest, problem.first.n_cols
        a, b = np.asarray(left, np.int64), np.asarray(right, np.int64)
        both_first = (a < q1) & (b < q1)
        if np.any(a[both_first] // k1 != b[both_first] // k1):
            raise ValueError("inverse_entries reads first-term pairs only within a level")
        out = np.zeros(a.size)
        out[both_first] = self.first.A_inv[a[both_first] // k1, a[both_first] % k1, b[both_first] % k1]
        if qr:
            first_rest, rest_first = (a < q1) & (b >= q1), (a >= q1) & (b < q1)
            if isinstance(self.rest, DenseFactor) and self._dense_coupling_inverse_pays(a[both_first], b[both_first],
                                                                                        first_rest | rest_first):
                # small enough to hold S^{-1} M' dense: every entry is a lookup or one length-qr dot product
                S_inv = self.rest.leading_inverse(qr)[:qr, :qr]
                coupled = problem.coupling.times_block_diagonal(self.factors[0][None, :, :] @ self.first.A_inv)[:qr]
                Mt = problem.scale_rows(coupled.toarray() if sp.issparse(coupled) else np.asarray(coupled), self.factors)
                G = S_inv @ Mt
                out[both_first] += np.einsum("ri,ri->i", Mt[:, a[both_first]], G[:, b[both_first]])
                out[first_rest] = -G[b[first_rest] - q1, a[first_rest]]
                out[rest_first] = -G[a[rest_first] - q1, b[rest_first]]
                both_rest = (a >= q1) & (b >= q1)
                out[both_rest] = S_inv[a[both_rest] - q1, b[both_rest] - q1]
                return out
            Mt, lookup = self._coupling_times_inverse(), self.rest.inverse_lookup()
            out[both_first] += _quadratic_entries(Mt, lookup, a[both_first], b[both_first])
            out[first_rest] = -_linear_entries(Mt, lookup, a[first_rest], b[first_rest] - q1)
            out[rest_first] = -_linear_entries(Mt, lookup, b[rest_first], a[rest_first] - q1)
            both_rest = (a >= q1) & (b >= q1)
            out[both_rest] = lookup(a[both_rest] - q1, b[both_rest] - q1)
        return out

    def _dense_coupling_inverse_pays(self, left: np.ndarray, right: np.ndarray, mixed: np.ndarray) -> bool:
        """Whether forming S^{-1} M' whole (q_rest^2 q1 flops) is cheaper than the per-pair sums (a product of
        the pair's nonzero counts in M' each): the dense way wins on small blocks, the per-pair one where the
        coupling is sparse (a nested-like factor: one nonzero per column, as mothers within communities)."""
        problem = self.problem
        qr, q1 = problem.q_rest, problem.first.q
        options = self.problem.options
        if not isinstance(self.rest, DenseFactor) or qr * q1 > options.dense_inverse_entries:
            return False
        counts = problem.coupling_counts()
        per_pair = float(np.sum(counts[left] * counts[right])) + float(np.count_nonzero(mixed)) * float(np.max(counts, initial=0))
        return options.dense_flop_cost * qr * qr * q1 <= per_pair + q1

    def _coupling_times_inverse(self) -> sp.csc_matrix:
        """M' = Lambda_r' Zr'WZ1 T1 A11^{-1} as a sparse qr x q1 matrix (the pattern of the coupling)."""
        problem = self.problem
        per_level = block_diagonal_matrix(self.factors[0][None, :, :] @ self.first.A_inv)
        rest_lambda = sp.block_diag([
            block_diagonal_matrix(np.broadcast_to(T.T, (term.n_levels, *T.shape)).copy())
            for term, T in zip(problem.rest, self.factors[1:])
        ])
        return sp.csc_matrix(rest_lambda @ (problem.cross_products.rest_first @ per_level))

    def inverse_diagonal_blocks(self, chunk_columns: int = 4096) -> list[np.ndarray]:
        """Diagonal k x k blocks of (Lambda'Z'WZ Lambda + I)^{-1}, one (L_t, k_t, k_t) array per term.

        The dense rest x q1 product V = L22^{-1} L21 L11^{-1} is formed in column chunks (memory O(q_rest chunk)).
        """
        problem = self.problem
        qr, l1, k1 = problem.q_rest, problem.first.n_levels, problem.first.n_cols
        first = self.first.A_inv.copy()
        blocks = [first]
        if qr == 0:
            return blocks
        per_level = self.factors[0][None, :, :] @ self.first.A_inv
        coupled = problem.coupling.times_block_diagonal(per_level)[:qr]
        per_chunk = max(1, min(chunk_columns, 20_000_000 // max(qr, 1)) // k1)
        for start in range(0, l1, per_chunk):
            stop = min(l1, start + per_chunk)
            piece = coupled[:, start * k1 : stop * k1]
            piece = problem.scale_rows(piece.toarray() if sp.issparse(piece) else piece, self.factors, transpose=True)
            V = self.rest.solve_rest(piece).reshape(qr, stop - start, k1)
            first[start:stop] += np.einsum("rla,rlb->lab", V, V)
        return blocks + self.rest.rest_inverse_blocks(problem.rest)



def _nonzeros_of(M: sp.csc_matrix, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each entry of ``columns``, the positions of its column's nonzeros in M: (owner, position)."""
    counts = M.indptr[columns + 1] - M.indptr[columns]
    owner = np.repeat(np.arange(columns.size), counts)
    first = np.repeat(M.indptr[columns] - (np.cumsum(counts) - counts), counts)
    return owner, first + np.arange(owner.size)


def _linear_entries(Mt: sp.csc_matrix, lookup, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(S^{-1} M')[rows[m], columns[m]], summing over the nonzeros of each column of M'; ``lookup(r, c)`` reads
    S^{-1}."""
    owner, position = _nonzeros_of(Mt, columns)
    values = lookup(rows[owner], Mt.indices[position]) * Mt.data[position]
    return np.bincount(owner, values, minlength=columns.size)


def _quadratic_entries(Mt: sp.csc_matrix, lookup, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(M S^{-1} M')[left[m], right[m]] over the nonzeros of both columns of M'."""
    owner, position = _nonzeros_of(Mt, left)
    inner, right_position = _nonzeros_of(Mt, right[owner])
    values = (Mt.data[position[inner]] * lookup(Mt.indices[position[inner]], Mt.indices[right_position])
              * Mt.data[right_position])
    return np.bincount(owner[inner], values, minlength=left.size)
