"""BLAS threads per problem size: small problems lose to thread start-up and contention.

On a busy 2-core machine OpenBLAS's default of one thread per core made the sleepstudy fit several times
slower than one thread; the dense Schur block of a large crossed design gains from all cores. The switch is
threadpoolctl's (a maintained library that knows each BLAS's own API).
"""

from __future__ import annotations

import contextlib

#: below this dimension of the dense Schur block, BLAS runs on one thread
SINGLE_THREAD_BELOW = 1500


@contextlib.contextmanager
def blas_threads_for(problem, limit: int = SINGLE_THREAD_BELOW):
    """Run the block with one BLAS thread when the problem's dense block is small."""
    size = problem.q_rest + problem.p + 1
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; degrade to the BLAS default
        yield
        return
    if size >= limit:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
