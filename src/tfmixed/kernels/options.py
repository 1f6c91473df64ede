"""Size limits that choose the kernel's strategies: parameters, never module globals."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import DataError


def physical_memory_bytes() -> int:
    """Installed memory (POSIX sysconf), or 8 GiB where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass(frozen=True)
class KernelOptions:
    """Limits used when the kernel chooses how to eliminate the block-diagonal first term.

    ``dense_coupling_entries``: up to this many entries of the coupling C (rest x q1), C is held dense
    and its products are BLAS calls. ``pattern_pairs``: up to this many pairs of C's nonzeros sharing a level,
    the product C W C' is precomputed as a sparse pattern. ``memory_bytes``: the dense Schur block, held 4 times
    (the cross-products, the factor, the gradient's inverse and one temporary), must fit in it, else the model
    is refused up front.
    ``coupling`` forces a strategy (for tests and experiments); by default the cheapest is chosen.
    """

    dense_coupling_entries: int = 250_000
    pattern_pairs: int = 40_000_000
    memory_bytes: int | None = None
    #: force a coupling strategy ("dense", "pattern", "sparse" or "split") instead of choosing the cheapest
    coupling: str | None = None
    #: force the strategy of the remaining columns ("dense", "bordered" or "sparse") instead of choosing by structure
    rest: str | None = None
    #: the bordered strategy is chosen when the largest component of the remaining columns has at most this
    #: many columns and there are at least ``bordered_min_columns`` of them
    bordered_max_block: int = 64
    bordered_min_columns: int = 200
    #: the sparse strategy is chosen for at least this many remaining columns whose block is at most this dense
    sparse_min_columns: int = 500
    sparse_max_density: float = 0.05
    #: the coupling strategies' cost model (per evaluation): BLAS flops per second of the dense strategy, products
    #: per second of the pattern strategy's pairs and of scipy's sparse products (defaults calibrated on the
    #: project's 2-core benchmark machine, see docs/lmer.md)
    dense_flops_per_second: float = 20e9
    pattern_pairs_per_second: float = 0.3e9
    sparse_pairs_per_second: float = 0.03e9
    #: below this many entries (rest x first columns) the exact inverse's entries may come from S^{-1} M' held dense
    dense_inverse_entries: int = 4_000_000
    #: a BLAS flop of that dense S^{-1} M' costs this fraction of one indexed product of the per-pair path
    dense_flop_cost: float = 0.01
    #: up to this size Lambda' M Lambda with vector-valued terms is two dense products (the per-term reshapes
    #: cost more there)
    small_dense_scale: int = 48

    def __post_init__(self):
        if self.coupling not in (None, "dense", "pattern", "sparse", "split"):
            raise DataError(f"coupling must be None, 'dense', 'pattern', 'sparse' or 'split', got {self.coupling!r}")
        if self.rest not in (None, "dense", "bordered", "sparse"):
            raise DataError(f"rest must be None, 'dense', 'bordered' or 'sparse', got {self.rest!r}")
        rates = (("dense_flops_per_second", self.dense_flops_per_second),
                 ("pattern_pairs_per_second", self.pattern_pairs_per_second),
                 ("sparse_pairs_per_second", self.sparse_pairs_per_second), ("dense_flop_cost", self.dense_flop_cost))
        for name, value in rates:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise DataError(f"KernelOptions.{name} must be a positive number, got {value!r}")
        for name, value in (("dense_inverse_entries", self.dense_inverse_entries),
                            ("small_dense_scale", self.small_dense_scale)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"KernelOptions.{name} must be a non-negative integer, got {value!r}")

    @property
    def memory_limit(self) -> int:
        return int(0.8 * physical_memory_bytes()) if self.memory_bytes is None else int(self.memory_bytes)
