"""The dense block of the blocked Cholesky: the Schur complement of the remaining columns.

After the block-diagonal first term is eliminated, the columns [Lambda_rest' Zr | X | y~] form
S = Lambda' (E - C W C') Lambda + I_rest, factored S = L L' by LAPACK. Its parts: log-determinants of
the random-effects and fixed-effects diagonal, the penalised RSS (the last pivot squared), triangular solves
and the inverse of a leading block (``dpotri``) for the selected-inverse sums.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as la

from ..errors import TfmixedError


class DenseFactor:
    """S = L L' for a dense symmetric positive definite S (overwritten)."""

    def __init__(self, S: np.ndarray):
        try:
            self.L = la.cholesky(S, lower=True, overwrite_a=True, check_finite=False)
        except la.LinAlgError:
            raise TfmixedError(
                "the penalised least-squares system is not positive definite; "
                "the fixed-effects model matrix may be rank deficient given the random effects"
            ) from None

    def logdet(self, start: int, stop: int) -> float:
        """log of the determinant of the [start, stop) diagonal block's contribution, 2 sum log L_ii."""
        return float(2.0 * np.sum(np.log(np.diag(self.L)[start:stop])))

    def solve_lower(self, rhs: np.ndarray, size: int, transpose: bool = False) -> np.ndarray:
        """L[:size, :size]^{-1} rhs (or its transpose's inverse)."""
        return la.solve_triangular(self.L[:size, :size], rhs, lower=True, trans="T" if transpose else "N",
                                   check_finite=False)

    def leading_inverse(self, size: int, full: bool = True) -> np.ndarray:
        """(L L')[:size, :size]^{-1} padded with zeros to S's shape; only the lower triangle when not ``full``."""
        inverse = np.zeros_like(self.L)
        if size:
            lower, info = la.lapack.dpotri(self.L[:size, :size], lower=1)
            if info != 0:
                raise TfmixedError("could not invert the Schur complement of the mixed model equations")
            block = inverse[:size, :size]
            block += np.tril(lower)
            if full:
                block += np.tril(lower, -1).T
        return inverse
