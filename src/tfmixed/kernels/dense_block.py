"""The dense strategy for the remaining columns: their Schur complement factored by LAPACK.

After the block-diagonal first term is eliminated, the columns [Lambda_rest' Zr | X | y~] form
S = Lambda' (E - C W C') Lambda + I_rest, factored S = L L'. The interface every rest strategy offers
(see also :mod:`tfmixed.kernels.bordered_block`):

* ``logdet_rest()``, ``logdet_fixed()``: 2 sum log L_ii over the random-effects and fixed-effects pivots;
* ``last_pivot()``: sqrt of the penalised RSS; ``fixed_block()``: the p x p factor R_X';
* ``back_substitute()``: x with L[:-1, :-1]' x = L[-1, :-1] (the solution of the mixed model equations);
* ``solve_rest(rhs)``: L_rr^{-1} rhs on the random-effects rows;
* ``solve_equations(rhs)``: S[:-1, :-1]^{-1} rhs over [rest | X] (new right-hand sides of the mixed model equations);
* ``inverse_sums(problem, factors, include_fixed)``: the first term's per-level C_j' Lambda S_P^{-1} Lambda C_j
  and each remaining term's summed diagonal blocks of S_P^{-1} (P: the random-effects columns, plus X for REML);
* ``rest_inverse_blocks(terms)``: diagonal blocks of S_rr^{-1} per remaining term (conditional variances);
* ``inverse_lookup()``: a function (rows, cols) -> entries of S_rr^{-1}, exact at least where Z has two nonzeros in
  one row or two remaining columns share a first-term level (GLMM leverages).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as la

from ..errors import TfmixedError


def cholesky_or_raise(S: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor of symmetric S (overwritten where possible). LAPACK's dpotrf is called
    directly: scipy.linalg.cholesky's argument checks cost more than the factorisation of a small GLMM's block,
    which PIRLS factors hundreds of times per fit."""
    if S.size == 0:
        return S
    # S's C-ordered buffer is S' in Fortran order (no copy); the upper factor U of S' read from its upper
    # triangle (S's lower one, the triangle scipy.linalg.cholesky(S, lower=True) reads) is L'
    U, info = la.lapack.dpotrf(S.T, lower=0, clean=1, overwrite_a=1)
    L = U.T
    if info != 0 or not np.isfinite(L[-1, -1]):
        raise TfmixedError(
            "the penalised least-squares system is not positive definite; "
            "the fixed-effects model matrix may be rank deficient given the random effects"
        )
    return L


def solve_lower(L: np.ndarray, rhs: np.ndarray, transpose: bool = False) -> np.ndarray:
    """L^{-1} rhs (L' ^{-1} rhs with ``transpose``) for lower-triangular L, by LAPACK's dtrtrs directly (the
    same reason as :func:`cholesky_or_raise`)."""
    if L.shape[0] == 0:
        return np.array(rhs, dtype=np.float64)
    x, info = la.lapack.dtrtrs(L, rhs, lower=1, trans=1 if transpose else 0)
    if info != 0:
        raise TfmixedError("a triangular factor of the mixed model equations is singular")
    return x


#: inverses of the dense block up to this many entries are kept by its factor
KEPT_INVERSE_ENTRIES = 250_000


class DenseFactor:
    """S = L L' for the dense Schur complement S over [rest | X | y~] (S is overwritten)."""

    name = "dense"

    def __init__(self, S: np.ndarray, q_rest: int, p: int):
        self.L, self.q_rest, self.p = cholesky_or_raise(S), q_rest, p
        self._inverses: dict[tuple[int, bool], np.ndarray] = {}

    def logdet_rest(self) -> float:
        return float(2.0 * np.sum(np.log(np.diag(self.L)[: self.q_rest])))

    def logdet_fixed(self) -> float:
        return float(2.0 * np.sum(np.log(np.diag(self.L)[self.q_rest : self.q_rest + self.p])))

    def last_pivot(self) -> float:
        return float(self.L[-1, -1])

    def fixed_block(self) -> np.ndarray:
        qr, p = self.q_rest, self.p
        return self.L[qr : qr + p, qr : qr + p]

    def back_substitute(self) -> np.ndarray:
        size = self.L.shape[0] - 1
        return self._solve_leading(self.L[-1, :size], size, transpose=True)

    def solve_equations(self, rhs: np.ndarray) -> np.ndarray:
        """S[:-1, :-1]^{-1} rhs: the Schur complement over [rest | X] for new right-hand sides (not y~'s)."""
        size = self.L.shape[0] - 1
        return self._solve_leading(self._solve_leading(rhs, size), size, transpose=True)

    def solve_rest(self, rhs: np.ndarray) -> np.ndarray:
        return self._solve_leading(rhs, self.q_rest)

    def _solve_leading(self, rhs: np.ndarray, size: int, transpose: bool = False) -> np.ndarray:
        """L[:size, :size]^{-1} rhs (^{-T} with ``transpose``) through the whole factor, rhs padded with zeros:
        L' = U is Fortran-ordered as LAPACK left it, while a leading block would be copied on every call (a
        large share of a big dense factor's solve). The padding gives the leading solution exactly:
        forward, the first rows do not see the later ones; backward, the padded rows solve to 0."""
        n = self.L.shape[0]
        if size == n or np.any(np.diag(self.L)[size:] == 0):
            return solve_lower(self.L[:size, :size], rhs, transpose)
        rhs = np.asarray(rhs, dtype=np.float64)
        padded = np.zeros((n, *rhs.shape[1:]))
        padded[:size] = rhs
        x, info = la.lapack.dtrtrs(self.L.T, padded, lower=0, trans=0 if transpose else 1, overwrite_b=1)
        if info != 0:
            raise TfmixedError("a triangular factor of the mixed model equations is singular")
        return x[:size]

    def leading_inverse(self, size: int, full: bool = True) -> np.ndarray:
        """(L L')[:size, :size]^{-1} padded with zeros to S's shape; only the lower triangle when not ``full``.
        Small inverses are kept (a GLMM gradient reads the same one twice); the caller gets its own copy."""
        kept = self._inverses.get((size, full))
        if kept is not None:
            return kept.copy()
        inverse = self._leading_inverse(size, full)
        if inverse.size <= KEPT_INVERSE_ENTRIES:
            self._inverses[(size, full)] = inverse.copy()
        return inverse

    def _leading_inverse(self, size: int, full: bool) -> np.ndarray:
        inverse = np.zeros_like(self.L)
        if size:
            # from U = L' in LAPACK's own (Fortran) order, a contiguous copy: the C-ordered L would be transposed
            # on the way in and out. U^{-1} U^{-T} = (L L')^{-1}; its upper
            # triangle in Fortran order is the lower one read in C order, and dpotri leaves U's zeros below.
            # (always a copy: a leading block that is itself contiguous would be a view, and dpotri overwrites it)
            upper, info = la.lapack.dpotri(np.array(self.L.T[:size, :size], order="F"), lower=0, overwrite_c=1)
            if info != 0:
                raise TfmixedError("could not invert the Schur complement of the mixed model equations")
            block = inverse[:size, :size]
            block[...] = upper.T
            del upper
            if full:
                block += np.tril(block, -1).T
        return inverse

    def inverse_sums(self, problem, factors, include_fixed: bool):
        size = self.q_rest + (self.p if include_fixed else 0)
        lower_only = problem.coupling.reads_lower_triangle_only and problem.scalar_rest
        S_inv = self.leading_inverse(size, full=not lower_only)
        sums, offset = [], 0
        for term in problem.rest:
            # with lower_only every remaining term is scalar: its block sums read only the diagonal
            block = S_inv[offset : offset + term.q, offset : offset + term.q]
            sums.append(np.einsum("iaib->ab", block.reshape(term.n_levels, term.n_cols, term.n_levels, term.n_cols)))
            offset += term.q
        # the remaining terms' sums are read: scale the inverse in place (no second dense copy)
        H = problem.coupling.block_sums(problem.scale_both(S_inv, factors, transpose=False, in_place=True))
        return H, sums

    def inverse_lookup(self):
        """Entries (rows[i], cols[i]) of S_rr^{-1}."""
        inverse = self.leading_inverse(self.q_rest)
        return lambda rows, cols: inverse[rows, cols]

    def rest_inverse_blocks(self, terms) -> list[np.ndarray]:
        rest_inv = self.solve_rest(np.eye(self.q_rest))
        blocks, offset = [], 0
        for term in terms:
            columns = rest_inv[:, offset : offset + term.q].reshape(self.q_rest, term.n_levels, term.n_cols)
            blocks.append(np.einsum("rla,rlb->lab", columns, columns))
            offset += term.q
        return blocks
