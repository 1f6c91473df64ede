"""The block-diagonal block of the first (largest) term: one k x k block per level, factored level by level.

A11_j = T' D_j T + I with D_j = sum over level j's rows of w z z' (the term's covariates). Batched over
levels: the Cholesky factors, their inverses and the weights T A11_j^{-1} T' that the Schur complement of the
remaining columns subtracts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


class BlockDiagonalBlock:
    """The diagonal blocks D_j = Z_j'W Z_j of the first term (an (L, k, k) array), fixed for every theta."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = np.asarray(blocks, dtype=np.float64)
        self.n_levels, self.k, _ = self.blocks.shape

    def factor(self, T: np.ndarray) -> "BlockDiagonalFactor":
        """Cholesky factors of A_j = T' D_j T + I for all levels at once."""
        if self.k == 1:  # scalar blocks: the batched LAPACK calls cost more than the arithmetic
            L = np.sqrt(T[0, 0] ** 2 * self.blocks + 1.0)
            return BlockDiagonalFactor(T, L, 1.0 / L)
        A = T.T[None, :, :] @ self.blocks @ T[None, :, :] + np.eye(self.k)[None, :, :]
        L = np.linalg.cholesky(A)
        return BlockDiagonalFactor(T, L, np.linalg.inv(L))


@dataclass
class BlockDiagonalFactor:
    """L_j L_j' = A_j for every level j; ``L_inv`` holds the inverses (one batched inversion, reused)."""

    T: np.ndarray
    L: np.ndarray
    L_inv: np.ndarray

    @property
    def logdet(self) -> float:
        """log |A| = sum_j log |A_j|."""
        return float(2.0 * np.sum(np.log(np.diagonal(self.L, axis1=1, axis2=2))))

    @cached_property
    def A_inv(self) -> np.ndarray:
        """A_j^{-1} for every level."""
        return self.L_inv.transpose(0, 2, 1) @ self.L_inv

    @cached_property
    def downdate_weights(self) -> np.ndarray:
        """W_j = T A_j^{-1} T': the Schur complement of the rest subtracts C W C'."""
        half = self.T[None, :, :] @ self.L_inv.transpose(0, 2, 1)
        return half @ half.transpose(0, 2, 1)

    def solve_lower(self, rhs: np.ndarray) -> np.ndarray:
        """L_j^{-1} rhs_j per level; rhs is (L, k)."""
        return np.einsum("lab,lb->la", self.L_inv, rhs)

    def solve_upper(self, rhs: np.ndarray) -> np.ndarray:
        """L_j^{-T} rhs_j per level; rhs is (L, k)."""
        return np.einsum("lba,lb->la", self.L_inv, rhs)
