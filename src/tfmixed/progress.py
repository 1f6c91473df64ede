"""Minimal progress reporting for long fits (plain stderr lines; silent with ``verbose=False``)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Print a status line at most every ``interval`` seconds while an iterative fit runs.

    >>> p = Progress("demo", verbose=False); p.update(1, "x"); p.finish("done")
    """

    def __init__(self, label: str, *, verbose: bool = True, interval: float = 1.0, stream=None):
        self.label, self.verbose, self.interval = label, verbose, interval
        self.stream = stream if stream is not None else sys.stderr
        self.started = self.last = time.perf_counter()
        self.printed = False

    def update(self, iteration: int, message: str) -> None:
        now = time.perf_counter()
        if self.verbose and now - self.last >= self.interval:
            print(f"[tfmixed {self.label}] iteration {iteration}: {message} ({now - self.started:.1f}s)", file=self.stream)
            self.last, self.printed = now, True

    def finish(self, message: str) -> None:
        if self.verbose and self.printed:
            elapsed = time.perf_counter() - self.started
            print(f"[tfmixed {self.label}] done: {message} ({elapsed:.1f}s)", file=self.stream)
