"""The one result protocol of every estimator (profiled, EM, evidence, MacKay)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StageRecord:
    """One stage of an estimator: its name, the criterion evaluations it spent, the best criterion after it
    and where (why) it stopped."""

    name: str
    evaluations: int
    criterion: float
    message: str


@dataclass(frozen=True)
class EstimatorResult:
    """Where an estimator stopped and how it got there.

    ``sigma2`` is None for the profiled estimator (sigma^2 is profiled out: r^2 / dof at theta) and the
    estimator's own value for the fixed-point methods. ``iterations`` counts outer iterations where the
    method has them (fixed points, optimiser restarts), ``n_evaluations`` criterion evaluations or updates.
    ``history`` holds (theta, criterion) pairs (profiled) or the fixed-point steps; ``extra`` what one estimator
    alone reports (the iterative kernel's Monte Carlo covariance of theta). ``start`` is the parameter vector the
    search started from, ``stages`` the :class:`StageRecord` of each stage taken, ``tolerances`` every tolerance
    and limit the estimator used.
    """

    method: str
    theta: np.ndarray
    criterion: float
    converged: bool
    status: str
    message: str
    n_evaluations: int
    seconds: float
    iterations: int | None = None
    sigma2: float | None = None
    factor: Any = field(default=None, repr=False)
    history: list = field(default_factory=list, repr=False)
    extra: dict = field(default_factory=dict, repr=False)
    start: np.ndarray | None = field(default=None, repr=False)
    stages: tuple = ()
    tolerances: dict = field(default_factory=dict, repr=False)
