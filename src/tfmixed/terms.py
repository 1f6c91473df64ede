"""The one random-effects term type: ``(expr | group)`` evaluated on data.

A term with k covariate columns (``values``, n x k) and L levels (``codes`` per row) contributes q = L k
columns to Z, level by level (all k columns of level 1, then level 2, ...) as lme4 orders them:
Z[i, j k + a] = values[i, a] if codes[i] == j. Design, kernel, results and the Keras callback all use this
type; the kernel reads only ``codes``, ``values`` and ``n_levels``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .covariance_structures import Unstructured
from .errors import ShapeError


@dataclass(frozen=True, eq=False)
class RandomEffectsTerm:
    """Level codes, covariate columns and labels of one random-effects term.

    >>> term = RandomEffectsTerm(np.array([0, 1, 1]), np.ones((3, 1)), levels=np.array(["a", "b"]))
    >>> term.q, term.z_matrix().toarray().tolist()
    (2, [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    """

    codes: np.ndarray
    values: np.ndarray
    levels: Any
    name: str = "group"
    columns: tuple[str, ...] = ()
    #: the formula's description of the term (tfmixed.formula.RandomTermSpec), None when built from arrays
    spec: Any = field(default=None, repr=False)
    #: how to evaluate ``values`` on new data: (formulaic model spec, column selection)
    expr_spec: Any = field(default=None, repr=False)
    #: the covariance structure of the term's k effects per level (:mod:`tfmixed.covariance_structures`);
    #: unstructured (lme4's default) when not given
    structure: Any = None

    def __post_init__(self):
        codes = np.asarray(self.codes, dtype=np.int64).ravel()
        values = np.asarray(self.values, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        if values.ndim != 2 or values.shape[0] != codes.shape[0]:
            raise ShapeError(f"term {self.name!r}: values must be (n, k) with n = {codes.shape[0]}, got {values.shape}")
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "values", np.ascontiguousarray(values))
        if not self.columns:
            object.__setattr__(self, "columns", tuple(f"x{a}" for a in range(values.shape[1])))
        if len(self.columns) != values.shape[1]:
            raise ShapeError(f"term {self.name!r}: {len(self.columns)} column names for {values.shape[1]} columns")
        if self.structure is None:
            object.__setattr__(self, "structure", Unstructured(values.shape[1]))
        elif self.structure.k != values.shape[1]:
            raise ShapeError(f"term {self.name!r}: a {self.structure.code} structure of {self.structure.k} columns "
                             f"for {values.shape[1]} columns")

    @classmethod
    def intercept(cls, codes: np.ndarray, n_levels: int, name: str = "group") -> "RandomEffectsTerm":
        """A random intercept ``(1 | group)`` from codes 0..n_levels-1."""
        codes = np.asarray(codes, dtype=np.int64).ravel()
        return cls(codes, np.ones((codes.size, 1)), np.arange(n_levels), name=name, columns=("(Intercept)",))

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def n_cols(self) -> int:
        return self.values.shape[1]

    @property
    def q(self) -> int:
        """Columns of Z for this term, L k."""
        return self.n_levels * self.n_cols

    @property
    def nobs(self) -> int:
        return self.codes.shape[0]

    def rows(self, index) -> "RandomEffectsTerm":
        """The same term on a subset (or chunk) of rows, with the same levels."""
        return RandomEffectsTerm(self.codes[index], self.values[index], self.levels, self.name, self.columns,
                                 self.spec, self.expr_spec, self.structure)

    def z_matrix(self) -> sp.csc_matrix:
        """The sparse n x q block of Z."""
        n, k = self.values.shape
        rows = np.repeat(np.arange(n), k)
        cols = (self.codes[:, None] * k + np.arange(k)[None, :]).ravel()
        return sp.csc_matrix((self.values.ravel(), (rows, cols)), shape=(n, self.q))

    def z_times(self, effects: np.ndarray) -> np.ndarray:
        """Z_t b_t without forming Z_t; ``effects`` is (L, k) or its flattening."""
        effects = np.asarray(effects).reshape(self.n_levels, self.n_cols)
        return np.einsum("ik,ik->i", self.values, effects[self.codes])


def term_slices(terms) -> list[slice]:
    """The slice of the columns of Z (and of b) that belongs to each term, in order.

    >>> term_slices([RandomEffectsTerm.intercept([0, 1, 2], 3), RandomEffectsTerm.intercept([0, 1, 0], 2)])
    [slice(0, 3, None), slice(3, 5, None)]
    """
    offsets = np.cumsum([0] + [term.q for term in terms])
    return [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
