"""The bordered block-diagonal strategy for the remaining columns, when they do not fill in.

After the first term is eliminated, the random-effects columns of the remaining terms couple only where rows
share levels. In nested designs (classes within schools, children within schools) their block
S_rr = Lambda'(Zr'W Zr - Zr'W Z1 A^{-1} Z1'W Zr)Lambda + I splits into many small connected components
(1 x 1 for 10,000 schools whose classes are the first term). Factoring it densely wastes O(q^3) time and
O(q^2) memory on zeros; here each component is factored on its own (batched Cholesky per component size) and
the X, y~ columns form a dense border:

    S = [S_rr  S_rb]   L = [L_rr       0  ]   L_br = S_br L_rr^{-T},  L_bb L_bb' = S_bb - L_br L_br'
        [S_br  S_bb]       [L_br   L_bb  ]

The block values come from a precomputed pattern (pairs of Zr'W Z1's nonzeros that share a first-term level,
mapped straight to positions inside the component blocks), so nothing of size q_rest^2 is ever formed. The
inverse the gradient needs is block-diagonal plus a rank-p border term, applied through the coupling's sparse
products. Same interface as :class:`~tfmixed.kernels.dense_block.DenseFactor`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..errors import TfmixedError
from .coupling import level_pairs
from .dense_block import cholesky_or_raise

if TYPE_CHECKING:
    from .pls import PLSProblem


class ComponentLayout:
    """The remaining columns grouped into the connected components of their sparsity graph, by size.

    Every component's s x s block is stored at a flat offset: group g (components of size s) holds an
    (n_g, s, s) array; ``position(rows, cols)`` maps same-component entries to flat indices.
    """

    def __init__(self, pattern: sp.spmatrix):
        self.q = pattern.shape[0]
        count, self.labels = connected_components(pattern, directed=False)
        sizes = np.bincount(self.labels, minlength=count)
        order = np.argsort(self.labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.local = np.empty(self.q, dtype=np.int64)
        self.local[order] = np.arange(self.q) - np.repeat(starts[:-1], sizes)
        self.group_of = np.empty(count, dtype=np.int64)
        self.slot_of = np.empty(count, dtype=np.int64)
        self.groups: list[tuple[int, np.ndarray]] = []
        self.offsets, flat = [], 0
        for g, size in enumerate(np.unique(sizes)):
            components = np.flatnonzero(sizes == size)
            self.group_of[components], self.slot_of[components] = g, np.arange(components.size)
            self.groups.append((int(size), order[starts[components][:, None] + np.arange(size)[None, :]]))
            self.offsets.append(flat)
            flat += components.size * size * size
        self.size_of = np.array([size for size, _ in self.groups])
        self.n_entries = flat
        self.largest = int(sizes.max()) if count else 0

    def position(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Flat indices of entries (rows[i], cols[i]), which must lie in the same component."""
        component = self.labels[rows]
        group = self.group_of[component]
        size = self.size_of[group]
        return np.asarray(self.offsets)[group] + (self.slot_of[component] * size + self.local[rows]) * size + self.local[cols]

    def blocks(self, flat: np.ndarray) -> list[np.ndarray]:
        """The flat values as one (n_g, s, s) array per group (views)."""
        return [flat[offset : offset + idx.size * size].reshape(idx.shape[0], size, size)
                for offset, (size, idx) in zip(self.offsets, self.groups)]


def component_pattern(rest_rest: sp.spmatrix, rest_first: sp.spmatrix) -> sp.csr_matrix:
    """Where S_rr can be nonzero: Zr'W Zr and the fill-in Zr'W Z1 (.) Z1'W Zr of eliminating the first term."""
    structure = abs(sp.csr_matrix(rest_first))
    structure.data[:] = 1.0
    fill = structure @ structure.T
    own = abs(sp.csr_matrix(rest_rest))
    return sp.csr_matrix(fill + own + sp.identity(rest_rest.shape[0]))


def term_entries(rest_terms) -> list[list[tuple[int, int, np.ndarray, np.ndarray]]]:
    """Per remaining term, (a, b, rows, cols) over its levels: where its k x k diagonal blocks sit in S_rr."""
    out, offset = [], 0
    for term in rest_terms:
        base = offset + np.arange(term.n_levels) * term.n_cols
        out.append([(a, b, base + a, base + b) for a in range(term.n_cols) for b in range(term.n_cols)])
        offset += term.q
    return out


def downdate_pattern(C: sp.csc_matrix, n_levels: int, k: int, position, size: int) -> sp.csr_matrix:
    """Q with Q @ W.ravel() = C W C' at the stored positions ``position(rows, cols)`` (all ordered pairs)."""
    first, second, weight = level_pairs(C, n_levels, k)
    where = position(C.indices[first].astype(np.int64), C.indices[second].astype(np.int64))
    return sp.csr_matrix((C.data[first] * C.data[second], (where, weight)), shape=(size, n_levels * k * k))


def level_block_sums(Q: sp.csr_matrix, values: np.ndarray, k: int) -> np.ndarray:
    """C_j' M C_j per level j for a symmetric M given by its ``values`` at Q's stored positions: the transpose
    of the downdate, Q' m (C's pairs within a level are exactly the positions Q maps)."""
    return np.asarray(Q.T @ values).reshape(-1, k, k)


class BorderedStructure:
    """What the bordered factorisation precomputes from the cross-products: layout, block pattern, border."""

    def __init__(self, cross_products, layout: ComponentLayout, rest_terms, k1: int):
        cp = cross_products
        self.layout, self.k1 = layout, k1
        self.rest_terms = rest_terms
        coo = sp.coo_matrix(cp.rest_rest)
        self.E_flat = np.zeros(layout.n_entries)
        np.add.at(self.E_flat, layout.position(coo.row, coo.col), coo.data)
        self.diagonal = layout.position(np.arange(layout.q), np.arange(layout.q))
        self.Q = downdate_pattern(sp.csc_matrix(cp.rest_first), cp.dims[0][0], k1, layout.position, layout.n_entries)
        self.C_rest = sp.csr_matrix(cp.rest_first)
        self.C_border = cp.xy_first
        self.E_border, self.E_corner = cp.xy_rest, cp.xy_xy
        self.lambda_positions = self._lambda_positions()

    def _lambda_positions(self) -> list[list[tuple[int, int, np.ndarray]]]:
        """Per remaining term, (a, b, flat positions over levels) of Lambda's entries T[a, b]."""
        return [[(a, b, self.layout.position(rows, cols)) for a, b, rows, cols in entries]
                for entries in term_entries(self.rest_terms)]

    def lambda_flat(self, factors: list[np.ndarray]) -> np.ndarray:
        flat = np.zeros(self.layout.n_entries)
        for positions, T in zip(self.lambda_positions, factors[1:]):
            for a, b, where in positions:
                flat[where] = T[a, b]
        return flat


class BorderedBase:
    """The dense border shared by the bordered and sparse strategies, through ``inverse_times`` (S_rr^{-1} rhs).

    With G = S_rr^{-1} S_rb (the X and y~ columns), the corner K = S_bb - S_br G = L_c L_c' is dense and small;
    the solution, the log-determinants of the fixed block and the border's rank-p part of the inverse follow.
    """

    # set by each strategy's constructor
    problem: PLSProblem
    q_rest: int
    p: int

    def inverse_times(self, rhs: np.ndarray) -> np.ndarray:  # pragma: no cover - each strategy defines it
        raise NotImplementedError

    def inverse_lookup(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:  # pragma: no cover - as above
        raise NotImplementedError

    def _finish_border(self, structure, factors, weights: np.ndarray) -> None:
        k1 = structure.k1
        border = structure.C_border
        CbW = np.einsum("cla,lab->clb", border.reshape(border.shape[0], -1, k1), weights).reshape(border.shape)
        S_border = structure.E_border - (structure.C_rest @ CbW.T).T
        self.S_border = self.problem.scale_rows(np.ascontiguousarray(S_border.T), factors, transpose=True).T
        self.G = self.inverse_times(self.S_border.T)
        corner = structure.E_corner - CbW @ border.T - self.S_border @ self.G
        self.L_corner = cholesky_or_raise((corner + corner.T) / 2)

    def logdet_fixed(self) -> float:
        return float(2.0 * np.sum(np.log(np.diag(self.L_corner)[: self.p])))

    def last_pivot(self) -> float:
        return float(self.L_corner[-1, -1])

    def fixed_block(self) -> np.ndarray:
        return self.L_corner[: self.p, : self.p]

    def back_substitute(self) -> np.ndarray:
        """x = S[:-1, :-1]^{-1} S[:-1, -1] by block elimination: x_X = L_c[:p, :p]^{-T} L_c[p, :p] (the corner's
        own back-substitution), x_r = G_y - G_X x_X."""
        p = self.p
        fixed = la.solve_triangular(self.L_corner[:p, :p], self.L_corner[-1, :p], lower=True, trans="T",
                                    check_finite=False) if p else np.zeros(0)
        return np.concatenate([self.G[:, -1] - self.G[:, :p] @ fixed, fixed])

    def solve_equations(self, rhs: np.ndarray) -> np.ndarray:
        """S[:-1, :-1]^{-1} rhs over [rest | X] by block elimination: with K = L_c[:p, :p] L_c[:p, :p]' (the
        Schur complement of S_rr on X), x_X = K^{-1}(c - G_X' a) and x_r = S_rr^{-1} a - G_X x_X."""
        p, qr = self.p, self.q_rest
        rhs = np.asarray(rhs, dtype=np.float64).reshape(qr + p, -1)
        rest = self.inverse_times(rhs[:qr])
        if not p:
            return rest
        G_fixed = self.G[:, :p]
        fixed = la.cho_solve((self.L_corner[:p, :p], True), rhs[qr:] - G_fixed.T @ rhs[:qr], check_finite=False)
        return np.vstack([rest - G_fixed @ fixed, fixed])

    def _term_blocks(self, lookup) -> list[np.ndarray]:
        """Each remaining term's (L, k, k) diagonal blocks of S_rr^{-1}; ``lookup(rows, cols)`` reads entries."""
        blocks = []
        for term, entries in zip(self.problem.rest, term_entries(self.problem.rest)):
            block = np.empty((term.n_levels, term.n_cols, term.n_cols))
            for a, b, rows, cols in entries:
                block[:, a, b] = lookup(rows, cols)
            blocks.append(block)
        return blocks

    def rest_inverse_blocks(self, terms) -> list[np.ndarray]:
        return self._term_blocks(self.inverse_lookup())

    def _border_term(self, include_fixed: bool) -> np.ndarray | None:
        """U with S_P^{-1} = blockdiag(S_rr^{-1}, 0) + U U' (REML: P includes X), rows [rest | X]."""
        if not include_fixed or self.p == 0:
            return None
        p = self.p
        V = np.vstack([self.G[:, :p], -np.eye(p)])
        return la.solve_triangular(self.L_corner[:p, :p], V.T, lower=True, check_finite=False).T

    def _add_border_term(self, problem, factors, include_fixed: bool, H: np.ndarray, sums: list[np.ndarray]):
        U = self._border_term(include_fixed)
        if U is None:
            return H, sums
        size = problem.q_rest + problem.p + 1  # C's rows: [Zr; X; y~]'WZ1
        rows = np.zeros((size, U.shape[1]))
        rows[: self.q_rest] = problem.scale_rows(U[: self.q_rest], factors, transpose=False)
        rows[self.q_rest : self.q_rest + self.p] = U[self.q_rest :]
        projected = np.stack([problem.coupling.transpose_times(rows[:, c]) for c in range(U.shape[1])], axis=-1)
        H = H + np.einsum("lac,lbc->lab", projected, projected)
        offset, out = 0, []
        for term, total in zip(problem.rest, sums):
            part = U[offset : offset + term.q].reshape(term.n_levels, term.n_cols, -1)
            out.append(total + np.einsum("lac,lbc->ab", part, part))
            offset += term.q
        return H, out


class BorderedFactor(BorderedBase):
    """L L' = S for the bordered block-diagonal S (see the module docstring)."""

    name = "bordered"

    def __init__(self, structure: BorderedStructure, problem, factors, weights: np.ndarray):
        self.structure, self.problem = structure, problem
        self.q_rest, self.p = problem.q_rest, problem.p
        layout = structure.layout
        values = structure.E_flat - structure.Q @ weights.reshape(-1)
        self.lambda_blocks = layout.blocks(structure.lambda_flat(factors))
        self.L, self.L_inv = [], []
        for B, Lam in zip(layout.blocks(values), self.lambda_blocks):
            A = Lam.transpose(0, 2, 1) @ B @ Lam + np.eye(B.shape[1])[None]
            try:
                L = np.linalg.cholesky(A)
            except np.linalg.LinAlgError:
                raise TfmixedError("the penalised least-squares system is not positive definite") from None
            self.L.append(L)
            self.L_inv.append(np.linalg.inv(L))
        self._finish_border(structure, factors, weights)

    def _per_group(self, rows: np.ndarray) -> list[np.ndarray]:
        return [rows[idx] for _, idx in self.structure.layout.groups]

    def _scatter(self, pieces: list[np.ndarray], width: int) -> np.ndarray:
        out = np.empty((self.q_rest, width))
        for (_, idx), piece in zip(self.structure.layout.groups, pieces):
            out[idx.ravel()] = piece.reshape(-1, width)
        return out

    def solve_rest(self, rhs: np.ndarray) -> np.ndarray:
        """L_rr^{-1} rhs for a (q_rest, m) rhs, component by component."""
        rhs = rhs.reshape(self.q_rest, -1)
        pieces = [np.einsum("nij,njm->nim", L_inv, part) for L_inv, part in zip(self.L_inv, self._per_group(rhs))]
        return self._scatter(pieces, rhs.shape[1])

    def inverse_times(self, rhs: np.ndarray) -> np.ndarray:
        """S_rr^{-1} rhs = L_rr^{-T} L_rr^{-1} rhs."""
        half = self.solve_rest(rhs)
        pieces = [np.einsum("nji,njm->nim", L_inv, part) for L_inv, part in zip(self.L_inv, self._per_group(half))]
        return self._scatter(pieces, half.shape[1])

    def logdet_rest(self) -> float:
        return float(sum(2.0 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2))) for L in self.L))

    def _inverse_flat(self) -> np.ndarray:
        """S_rr^{-1} at the block positions."""
        return np.concatenate([(L_inv.transpose(0, 2, 1) @ L_inv).reshape(-1) for L_inv in self.L_inv])

    def inverse_sums(self, problem, factors, include_fixed: bool):
        structure = self.structure
        inverse = self._inverse_flat()
        scaled = np.concatenate([(Lam @ block @ Lam.transpose(0, 2, 1)).reshape(-1) for Lam, block in
                                 zip(self.lambda_blocks, structure.layout.blocks(inverse))])
        H = level_block_sums(structure.Q, scaled, structure.k1)
        sums = [block.sum(axis=0) for block in self._term_blocks(self._flat_lookup(inverse))]
        return self._add_border_term(problem, factors, include_fixed, H, sums)

    def _flat_lookup(self, inverse: np.ndarray):
        return lambda rows, cols: inverse[self.structure.layout.position(rows, cols)]

    def inverse_lookup(self):
        """Entries of S_rr^{-1} for pairs within one component (pairs that share a row of Z or a first-term level)."""
        return self._flat_lookup(self._inverse_flat())
