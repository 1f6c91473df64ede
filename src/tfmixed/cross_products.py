"""Cross-products of a linear mixed model's design: the sufficient statistics, as data.

For prior weights w, an offset o and a response shift beta0, the working response is
y~ = y - o - X beta0 and, with W = diag(w) and the terms ordered with the block-diagonal first term Z1 and
the rest Zr, the model needs only

    Z1'W Z1 (diagonal k1 x k1 blocks)   Zr'W Z1   [X y~]'W Z1   Zr'W Zr   [X y~]'W Zr   [X y~]'W [X y~]

All are sums over rows, so the statistics of row chunks add up (``a + b``, ``sum(chunks)``) to those of
the whole data. ``CrossProductPattern`` keeps the index structure of one set of rows so that new weights
(PIRLS, every iteration) recompute the values without rebuilding patterns.

The shift is what makes the criterion independent of where y sits: the penalised RSS is the same for
y and y - X beta0 (beta is free), and with beta0 near the least-squares fit the cross-products no longer hold
the y'y ~ n mean(y)^2 that cancels to ~ pwrss (at y + 1e8 the raw products lose every significant digit).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from .errors import DataError, ShapeError
from .levels import unique_with_inverse
from .terms import RandomEffectsTerm


@dataclass(frozen=True, eq=False)
class CrossProducts:
    """Weighted cross-products of [Z1 | Zr | X | y~] (see the module docstring); ``+`` sums row chunks.

    ``dims`` lists (levels, columns) per term, first the block-diagonal term; ``n`` counts rows,
    ``sum_log_weights`` is sum(log w) (lme4's likelihood term), ``shift`` is beta0 (y~ = y - o - X beta0).
    """

    dims: tuple[tuple[int, int], ...]
    n: int
    first_blocks: np.ndarray
    rest_first: sp.csr_matrix
    xy_first: np.ndarray
    rest_rest: sp.csr_matrix
    xy_rest: np.ndarray
    xy_xy: np.ndarray
    sum_log_weights: float = 0.0
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def p(self) -> int:
        return self.xy_xy.shape[0] - 1

    @property
    def q_first(self) -> int:
        return self.dims[0][0] * self.dims[0][1]

    @property
    def q_rest(self) -> int:
        return sum(levels * cols for levels, cols in self.dims[1:])

    @property
    def q(self) -> int:
        return self.q_first + self.q_rest

    def __add__(self, other: "CrossProducts") -> "CrossProducts":
        if not isinstance(other, CrossProducts):
            return NotImplemented
        if self.dims != other.dims or self.p != other.p:
            raise ShapeError(f"cannot add cross-products of different structures: {self.dims}/{self.p} and {other.dims}/{other.p}")
        if not np.array_equal(self.shift, other.shift):
            raise ShapeError("cannot add cross-products computed with different response shifts")
        return CrossProducts(
            self.dims, self.n + other.n, self.first_blocks + other.first_blocks,
            (self.rest_first + other.rest_first).tocsr(), self.xy_first + other.xy_first,
            (self.rest_rest + other.rest_rest).tocsr(), self.xy_rest + other.xy_rest, self.xy_xy + other.xy_xy,
            self.sum_log_weights + other.sum_log_weights, self.shift,
        )

    def z_gram(self, format: str = "csr") -> sp.spmatrix:
        """Z'WZ as one sparse q x q matrix (the first term's blocks, then the rest), for kernels that need it whole
        (the joint system of predictions, the iterative strategy)."""
        first = block_diagonal_matrix(self.first_blocks)
        if not self.q_rest:
            return first.asformat(format)
        return sp.bmat([[first, self.rest_first.T], [self.rest_first, self.rest_rest]], format=format)

    def gram_times(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Z'WZ A, X'WZ A) for a q x m matrix A, from the stored blocks (Z'WZ is never assembled).

        >>> import numpy as np
        >>> from tfmixed.terms import RandomEffectsTerm
        >>> codes = np.array([0, 0, 1, 2])
        >>> cp = CrossProducts.from_rows(np.ones((4, 1)), np.arange(4.0), [RandomEffectsTerm.intercept(codes, 3)])
        >>> [part.ravel().tolist() for part in cp.gram_times(np.eye(3))]
        [[2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], [2.0, 1.0, 1.0]]
        """
        A = np.asarray(A, dtype=np.float64).reshape(self.q, -1)
        (levels, k), q1, p = self.dims[0], self.q_first, self.p
        first, rest = A[:q1], A[q1:]
        zz_first = (self.first_blocks @ first.reshape(levels, k, -1)).reshape(q1, -1)
        xz = self.xy_first[:p] @ first
        if not self.q_rest:
            return zz_first, xz
        zz_first += self.rest_first.T @ rest
        zz_rest = self.rest_first @ first + self.rest_rest @ rest
        return np.vstack([zz_first, zz_rest]), xz + self.xy_rest[:p] @ rest

    def xy_z(self) -> np.ndarray:
        """[X y~]'WZ as one dense (p + 1) x q array."""
        return np.hstack([self.xy_first, self.xy_rest])

    def with_shift(self, shift) -> "CrossProducts":
        """The same statistics for another response shift: y~' = y~ - X delta with delta = shift' - shift.

        Only the y~ rows change: Z'W y~' = Z'W y~ - Z'WX delta, X'W y~' = X'W y~ - X'WX delta and
        y~''W y~' = y~'W y~ - 2 delta'X'W y~ + delta'X'WX delta. Between shifts near the least-squares fit (those
        of row chunks) the corrections are of the size of the residuals, so nothing cancels: chunks with their
        own shifts can be added exactly.

        >>> import numpy as np
        >>> from tfmixed.terms import RandomEffectsTerm
        >>> term = RandomEffectsTerm.intercept(np.array([0, 0, 1, 1]), 2)
        >>> X, y = np.column_stack([np.ones(4), np.arange(4.0)]), np.array([1.0, 2.0, 4.0, 3.0])
        >>> a = CrossProducts.from_rows(X, y, [term], shift=[0.0, 0.0])
        >>> b = CrossProducts.from_rows(X, y, [term], shift=[1.0, 0.5])
        >>> bool(np.allclose(a.with_shift([1.0, 0.5]).xy_xy, b.xy_xy))
        True
        """
        shift = np.asarray(shift, dtype=np.float64)
        if shift.shape != self.shift.shape:
            raise ShapeError(f"shift must have {self.shift.size} values, got {shift.shape}")
        delta = shift - self.shift
        if not np.any(delta):
            return self
        XWX, XWy = self.xy_xy[:-1, :-1], self.xy_xy[:-1, -1]
        xy_xy = self.xy_xy.copy()
        xy_xy[:-1, -1] = xy_xy[-1, :-1] = XWy - XWX @ delta
        xy_xy[-1, -1] = self.xy_xy[-1, -1] - 2.0 * delta @ XWy + delta @ XWX @ delta
        xy_first, xy_rest = self.xy_first.copy(), self.xy_rest.copy()
        xy_first[-1] -= delta @ self.xy_first[:-1]
        xy_rest[-1] -= delta @ self.xy_rest[:-1]
        return CrossProducts(self.dims, self.n, self.first_blocks, self.rest_first, xy_first, self.rest_rest, xy_rest,
                             xy_xy, self.sum_log_weights, shift)

    def select_fixed(self, kept) -> "CrossProducts":
        """The statistics of the model with only the fixed-effect columns ``kept`` (aliased ones dropped): the
        dropped columns' shift is moved into y~ first, so y~ stays the same response."""
        kept = np.asarray(kept, dtype=np.int64)
        shift = np.zeros_like(self.shift)
        shift[kept] = self.shift[kept]
        moved = self.with_shift(shift)
        rows = np.concatenate([kept, [self.p]])
        return CrossProducts(self.dims, self.n, self.first_blocks, self.rest_first, moved.xy_first[rows],
                             self.rest_rest, moved.xy_rest[rows], moved.xy_xy[np.ix_(rows, rows)],
                             self.sum_log_weights, shift[kept])

    def __radd__(self, other):
        # sum() starts from 0
        return self if isinstance(other, int) and other == 0 else NotImplemented

    @classmethod
    def from_rows(cls, X, y, terms: list[RandomEffectsTerm], *, weights=None, offset=None, shift=None) -> "CrossProducts":
        """Cross-products of one set (or chunk) of rows; ``terms[0]`` is eliminated block by block.

        >>> import numpy as np
        >>> from tfmixed.terms import RandomEffectsTerm
        >>> term = RandomEffectsTerm.intercept(np.array([0, 0, 1, 1]), 2)
        >>> X, y = np.ones((4, 1)), np.array([1.0, 2.0, 3.0, 5.0])
        >>> whole = CrossProducts.from_rows(X, y, [term], shift=[0.0])
        >>> parts = CrossProducts.from_rows(X[:1], y[:1], [term.rows(slice(0, 1))], shift=[0.0]) + \\
        ...     CrossProducts.from_rows(X[1:], y[1:], [term.rows(slice(1, 4))], shift=[0.0])
        >>> bool(np.array_equal(whole.xy_xy, parts.xy_xy)), whole.first_blocks.ravel().tolist()
        (True, [2.0, 2.0])
        """
        return CrossProductPattern(terms).compute(X, y, weights=weights, offset=offset, shift=shift)


class CrossProductsSum:
    """Cross-products summed over a stream of row chunks that each touch few levels of large factors (the
    minibatches of a training set): each chunk's statistics are computed on its own levels only and scattered
    into the totals, so a chunk costs O(its rows), not O(levels); the sparse blocks collect entries that are
    compacted whenever they outgrow the total (amortised linear). Memory: the totals (O(levels) dense parts,
    the sparse blocks' nonzeros), whatever the number of rows.

    >>> import numpy as np
    >>> from tfmixed.terms import RandomEffectsTerm
    >>> codes = np.array([0, 3, 3, 1, 0, 2])
    >>> X, y = np.ones((6, 1)), np.arange(6.0)
    >>> running = CrossProductsSum(((4, 1),), p=1)
    >>> for rows in (slice(0, 2), slice(2, 6)):
    ...     running.add(X[rows], y[rows], [RandomEffectsTerm.intercept(codes[rows], 4)])
    >>> whole = CrossProducts.from_rows(X, y, [RandomEffectsTerm.intercept(codes, 4)], shift=[0.0])
    >>> bool(np.allclose(running.total().xy_first, whole.xy_first))
    True
    """

    def __init__(self, dims, p: int):
        self.dims, self.p = tuple((int(levels), int(cols)) for levels, cols in dims), int(p)
        (l1, k1), rest = self.dims[0], self.dims[1:]
        self.rest_offsets = np.cumsum([0] + [levels * cols for levels, cols in rest])
        q1, qr = l1 * k1, int(self.rest_offsets[-1])
        self.first_blocks = np.zeros((l1, k1, k1))
        # [X y~]'WZ transposed, so that a chunk's levels are scattered as contiguous rows
        self.first_xy = np.zeros((q1, p + 1))
        self.rest_xy = np.zeros((qr, p + 1))
        self.xy_xy = np.zeros((p + 1, p + 1))
        self.rest_first, self.rest_rest = _SparseSum((qr, q1)), _SparseSum((qr, qr))
        self.n, self.sum_log_weights = 0, 0.0

    def add(self, X, y, terms: list[RandomEffectsTerm], *, weights=None) -> None:
        """Add the rows (X, y, the terms' codes in the global levels), response shift 0."""
        if tuple((t.n_levels, t.n_cols) for t in terms) != self.dims:
            raise ShapeError(f"terms of structure {[(t.n_levels, t.n_cols) for t in terms]} cannot join {self.dims}")
        local, columns = [], []
        for term, offset in zip(terms, np.concatenate([[0], self.rest_offsets[:-1]])):
            present, codes = np.unique(term.codes, return_inverse=True)
            local.append(RandomEffectsTerm(codes.ravel(), term.values, np.arange(present.size)))
            columns.append(offset + (present[:, None] * term.n_cols + np.arange(term.n_cols)).ravel())
        chunk = CrossProducts.from_rows(X, y, local, weights=weights, shift=np.zeros(self.p))
        first, rest = columns[0], np.concatenate(columns[1:]) if len(columns) > 1 else np.zeros(0, np.int64)
        self.first_blocks[first[:: self.dims[0][1]] // self.dims[0][1]] += chunk.first_blocks
        self.first_xy[first] += chunk.xy_first.T
        self.rest_xy[rest] += chunk.xy_rest.T
        self.xy_xy += chunk.xy_xy
        for total, block, left, right in ((self.rest_first, chunk.rest_first, rest, first),
                                          (self.rest_rest, chunk.rest_rest, rest, rest)):
            entries = block.tocoo()
            total.add(left[entries.row], right[entries.col], entries.data)
        self.n += chunk.n
        self.sum_log_weights += chunk.sum_log_weights

    def add_level_sums(self, levels, blocks, level_xy, xy_xy, n: int, *, distinct: bool = False) -> None:
        """Add rows already summed per level (a single-term model; the sums made elsewhere, e.g. in a network's
        graph): for level j = ``levels[m]`` the k x k block sum_i v_i v_i' and the k x (p + 1) block
        sum_i v_i [x_i y_i]', with [X y]'[X y] and the rows' count. ``distinct``: no level repeats."""
        if len(self.dims) != 1:
            raise ShapeError("per-level sums describe a model with one random-effects term")
        k = self.dims[0][1]
        levels = np.asarray(levels, dtype=np.int64)
        columns = (levels[:, None] * k + np.arange(k)).ravel()
        flat = np.asarray(level_xy, dtype=np.float64).reshape(-1, self.p + 1)
        if distinct:
            self.first_blocks[levels] += blocks
            self.first_xy[columns] += flat
        else:
            np.add.at(self.first_blocks, levels, blocks)
            np.add.at(self.first_xy, columns, flat)
        self.xy_xy += xy_xy
        self.n += int(n)

    def total(self) -> CrossProducts:
        """The cross-products of every row added so far."""
        return CrossProducts(self.dims, self.n, self.first_blocks.copy(), self.rest_first.matrix(), self.first_xy.T.copy(),
                             self.rest_rest.matrix(), self.rest_xy.T.copy(), self.xy_xy.copy(), self.sum_log_weights,
                             np.zeros(self.p))

    @property
    def nbytes(self) -> int:
        """Bytes held: the dense totals and the sparse blocks (compacted and pending)."""
        dense = self.first_blocks.nbytes + self.first_xy.nbytes + self.rest_xy.nbytes + self.xy_xy.nbytes
        return dense + self.rest_first.nbytes + self.rest_rest.nbytes


class _SparseSum:
    """A sparse matrix summed from (row, column, value) entries: pending entries are compacted into the
    total when they outnumber its nonzeros (each entry is compacted O(log) times at most)."""

    def __init__(self, shape):
        self.shape, self._total = shape, sp.csr_matrix(shape)
        self._pending, self._count = [], 0

    def add(self, rows, cols, values) -> None:
        if rows.size:
            self._pending.append((rows, cols, values))
            self._count += rows.size
        if self._count > max(self._total.nnz, 1 << 16):
            self._fold()

    def _fold(self) -> None:
        if self._pending:
            rows, cols, values = (np.concatenate(parts) for parts in zip(*self._pending))
            self._total = (self._total + sp.csr_matrix((values, (rows, cols)), shape=self.shape)).tocsr()
            self._pending, self._count = [], 0

    def matrix(self) -> sp.csr_matrix:
        self._fold()
        return self._total.copy()

    @property
    def nbytes(self) -> int:
        total = self._total.data.nbytes + self._total.indices.nbytes + self._total.indptr.nbytes
        return total + sum(r.nbytes + c.nbytes + v.nbytes for r, c, v in self._pending)


def block_diagonal_matrix(blocks: np.ndarray) -> sp.bsr_matrix:
    """Sparse block-diagonal matrix from an (L, k, k) array of blocks."""
    count, k, _ = blocks.shape
    return sp.bsr_matrix((blocks, np.arange(count), np.arange(count + 1)), shape=(count * k, count * k))


def least_squares_shift(X, y, weights=None, offset=None) -> np.ndarray:
    """beta0 = argmin ||W^(1/2) (y - o - X beta)||, refined once: the shift that centres the response.

    >>> least_squares_shift(np.ones((3, 1)), np.array([1e8 + 1, 1e8 + 2, 1e8 + 3])).tolist()
    [100000002.0]
    """
    X = np.asarray(X, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64) - (0.0 if offset is None else np.asarray(offset, dtype=np.float64))
    if X.shape[1] == 0:
        return np.zeros(0)
    root = np.ones(X.shape[0]) if weights is None else np.sqrt(np.asarray(weights, dtype=np.float64))
    A = X * root[:, None]
    beta = la.lstsq(A, target * root, check_finite=False)[0]
    # one step of iterative refinement: the residual of a large-mean response is accurate only after it
    beta += la.lstsq(A, (target - X @ beta) * root, check_finite=False)[0]
    return beta


class CrossProductPattern:
    """Index structure of the cross-products of one set of rows: computed once, reused for new weights.

    Pairs of nonzeros of Z (a row's column in Zr and its column in Z1, or two columns of Zr) are mapped once
    to their position in the sparse products; ``compute`` then needs one ``bincount`` per product.
    """

    def __init__(self, terms: list[RandomEffectsTerm]):
        if not terms:
            raise ShapeError("cross-products need at least one random-effects term")
        self.terms = list(terms)
        self.n = terms[0].nobs
        if any(term.nobs != self.n for term in terms):
            raise ShapeError(f"random-effects terms have different numbers of rows: {[t.nobs for t in terms]}")
        first, rest = terms[0], terms[1:]
        self.dims = tuple((t.n_levels, t.n_cols) for t in terms)
        self.q_first = first.q
        self.rest_offsets = np.cumsum([0] + [t.q for t in rest])
        self.q_rest = int(self.rest_offsets[-1])
        self.first_columns = first.codes[:, None] * first.n_cols + np.arange(first.n_cols)[None, :]
        self.rest_columns = [
            (offset + t.codes[:, None] * t.n_cols + np.arange(t.n_cols)[None, :])
            for offset, t in zip(self.rest_offsets[:-1], rest)
        ]
        self._empty: dict[tuple[int, int], sp.csr_matrix] = {}
        self.z_transpose = self._z_transpose()
        self._rest_first = self._pairs(self.rest_columns, [self.first_columns], self.q_first, symmetric=False)
        self._rest_rest = self._pairs(self.rest_columns, self.rest_columns, self.q_rest, symmetric=True)

    def with_response(self, stats: CrossProducts, X, y, weights) -> CrossProducts:
        """``stats`` (computed by :meth:`compute` for these rows, X and weights) with the response y (shift 0)
        in place of its own: only the y~ rows change, Z'WZ, Z'WX and X'WX are kept (the Laplace gradient's
        solve reuses the mode's cross-products)."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        if X.shape[1] != stats.p or y.shape[0] != self.n:
            raise ShapeError(f"X {X.shape} and y {y.shape} do not match cross-products with {stats.p} fixed columns")
        wy = np.asarray(weights, dtype=np.float64) * y
        zwy = self.z_transpose @ wy
        xy_first, xy_rest, xy_xy = stats.xy_first.copy(), stats.xy_rest.copy(), stats.xy_xy.copy()
        xy_first[-1], xy_rest[-1] = zwy[: self.q_first], zwy[self.q_first :]
        xy_xy[-1, :-1] = xy_xy[:-1, -1] = wy @ X
        xy_xy[-1, -1] = wy @ y
        return dataclasses.replace(stats, xy_first=xy_first, xy_rest=xy_rest, xy_xy=xy_xy, shift=np.zeros(stats.p))

    def _z_transpose(self) -> sp.csc_matrix:
        """Z' (q x n): the transpose of Z held as CSR, one row per data row with its K = sum k_t entries (built in
        O(n K), no sort); products accumulate each output in row order, as bincount does."""
        columns = np.column_stack([self.first_columns] + [self.q_first + c for c in self.rest_columns])
        values = np.column_stack([t.values for t in self.terms])
        width = columns.shape[1]
        Z = sp.csr_matrix((values.ravel(), columns.ravel(), np.arange(0, self.n * width + 1, width)),
                          shape=(self.n, self.q_first + self.q_rest))
        return Z.T

    def _pairs(self, left_columns, right_columns, width, symmetric):
        """The CSR layout of the products of left and right Z columns, set up once: each row's pairs of
        nonzeros map to a unique position; ``source`` lists, in CSR order, the unique position of each stored
        entry (a symmetric product stores every off-diagonal position twice)."""
        keys, slots = [], []
        for i, left in enumerate(left_columns):
            for j, right in enumerate(right_columns):
                if symmetric and j < i:
                    continue
                for a in range(left.shape[1]):
                    # within one term of a symmetric product, (a, b) and (b, a) are mirror images: form b >= a
                    for b in range(a if symmetric and i == j else 0, right.shape[1]):
                        keys.append(left[:, a].astype(np.int64) * width + right[:, b])
                        slots.append((i, a, j, b))
        if not keys:
            return None
        unique, inverse = unique_with_inverse(np.concatenate(keys))
        rows, cols = np.divmod(unique, width)
        source = np.arange(unique.size)
        if symmetric:
            off = rows != cols
            rows, cols = np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]])
            source = np.concatenate([source, source[off]])
        order = np.lexsort((cols, rows))
        indptr = np.zeros(self.q_rest + 1, dtype=np.int64)
        np.add.at(indptr, rows + 1, 1)
        indptr, indices = np.cumsum(indptr), cols[order]
        if indptr[-1] < 2**31 and width < 2**31:  # scipy's own index type: its constructor then skips a cast
            indptr, indices = indptr.astype(np.int32), indices.astype(np.int32)
        template = sp.csr_matrix((np.zeros(indices.size), indices, indptr), shape=(self.q_rest, width))
        template.has_sorted_indices = True
        return unique.size, inverse.ravel(), slots, source[order], template

    def _values(self, pairs, left_terms, right_terms, weights, shape, symmetric):
        if pairs is None:  # no pairs, no values: one empty matrix per shape serves every computation
            if shape not in self._empty:
                self._empty[shape] = sp.csr_matrix(shape)
            return self._empty[shape]
        n_unique, inverse, slots, source, template = pairs
        products = np.concatenate([
            weights * left_terms[i].values[:, a] * right_terms[j].values[:, b] for i, a, j, b in slots
        ])
        values = np.bincount(inverse, weights=products, minlength=n_unique)
        # a shallow copy shares the template's (never modified) index arrays: scipy's constructor would check
        # them again, which costs more than the values for small models (a PIRLS step makes two of these)
        matrix = copy.copy(template)
        matrix.data = values[source]
        return matrix

    def compute(self, X, y, *, weights=None, offset=None, shift=None, signed: bool = False) -> CrossProducts:
        """The cross-products for these rows with prior ``weights`` (default 1), ``offset`` and ``shift``;
        ``signed`` allows negative weights (an observed information whose sum stays positive definite; pass
        ``shift`` then, which a least-squares start cannot give)."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        if X.ndim != 2 or X.shape[0] != self.n or y.shape[0] != self.n:
            raise ShapeError(f"X {X.shape} and y {y.shape} must have the {self.n} rows of the terms")
        w = np.ones(self.n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
        if w.shape[0] != self.n:
            raise ShapeError(f"weights has {w.shape[0]} values for {self.n} rows")
        if w.size and not (np.all(np.isfinite(w)) if signed else (w.min() >= 0.0 and w.max() < np.inf)):
            raise DataError("weights must be finite and non-negative")
        shift = least_squares_shift(X, y, w, offset) if shift is None else np.asarray(shift, dtype=np.float64)
        if shift.shape != (X.shape[1],):
            raise ShapeError(f"shift must have {X.shape[1]} values, got {shift.shape}")
        working = y - (0.0 if offset is None else np.asarray(offset, dtype=np.float64).ravel()) - X @ shift
        Xy = np.column_stack([X, working])
        first, rest = self.terms[0], self.terms[1:]
        k1, l1 = first.n_cols, first.n_levels
        weighted_first = first.values * w[:, None]
        first_blocks = np.empty((l1, k1, k1))
        for a in range(k1):
            for b in range(a, k1):
                block = np.bincount(first.codes, weighted_first[:, a] * first.values[:, b], minlength=l1)
                first_blocks[:, a, b] = first_blocks[:, b, a] = block
        # [X y~]'W Z in one sparse product (Z' is kept with the pattern); rows are summed in order, as bincount does
        zw = self.z_transpose @ (Xy * w[:, None])
        xy_first, xy_rest = np.ascontiguousarray(zw[: self.q_first].T), np.ascontiguousarray(zw[self.q_first :].T)
        positive = w[w > 0]
        return CrossProducts(
            dims=self.dims,
            n=int(np.count_nonzero(w)),
            first_blocks=first_blocks,
            rest_first=self._values(self._rest_first, rest, [first], w, (self.q_rest, self.q_first), False),
            xy_first=xy_first,
            rest_rest=self._values(self._rest_rest, rest, rest, w, (self.q_rest, self.q_rest), True),
            xy_rest=xy_rest,
            xy_xy=(Xy * w[:, None]).T @ Xy,
            sum_log_weights=float(np.sum(np.log(positive))),
            shift=shift,
        )
