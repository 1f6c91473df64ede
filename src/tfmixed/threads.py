"""BLAS threads per problem size: small problems lose to thread start-up and contention.

On a busy machine OpenBLAS's default of one thread per core makes small fits slower than one thread (the
threads contend with other work for every tiny product); the dense Schur block of a large crossed design gains
from all cores (measurements in docs/lmer.md). The switch is
threadpoolctl's (a maintained library that knows each BLAS's own API).
"""

from __future__ import annotations

import contextlib
import functools

#: below this dimension of the dense Schur block, BLAS runs on one thread
SINGLE_THREAD_BELOW = 1500


@functools.lru_cache(maxsize=1)
def _controller():
    """One ThreadpoolController per process: building one scans the loaded libraries (~2 ms), using it does not."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def blas_threads_for(dense_size: int, limit: int = SINGLE_THREAD_BELOW):
    """Run the block with one BLAS thread when the problem's dense block (``dense_size`` square) is small."""
    if dense_size >= limit:
        yield
        return
    with _controller().limit(limits=1, user_api="blas"):
        yield
