"""The one bounded-optimiser wrapper: scipy's L-BFGS-B (and COBYQA, derivative-free) on a function of x with
bounds given as arrays, optionally in scaled coordinates z = x / scale.

scipy.optimize.minimize wants bounds as (low, high) pairs with None for an open side and the function in the
coordinates it searches; every caller in the package has lower/upper arrays (with +-inf) and some precondition
by approximate standard errors. Both conversions live here, once.

>>> result = minimize_bounded(lambda x: (float(((x - 3) ** 2).sum()), 2 * (x - 3)), np.zeros(2), np.array([0.0, 4.0]))
>>> result.x.round(6).tolist()
[3.0, 4.0]
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import OptimizeResult, minimize


def scipy_bounds(lower: np.ndarray | None, upper: np.ndarray | None, size: int,
                 scale: np.ndarray | None = None) -> list[tuple[float | None, float | None]]:
    """(low, high) pairs in the searched coordinates x / scale, None where a side is unbounded."""
    low = np.full(size, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    high = np.full(size, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    factor = np.ones(size) if scale is None else np.asarray(scale, dtype=np.float64)
    return [(float(lo / s) if np.isfinite(lo) else None, float(hi / s) if np.isfinite(hi) else None)
            for lo, hi, s in zip(low, high, factor)]


def minimize_bounded(value_and_gradient: Callable[[np.ndarray], tuple[float, np.ndarray]], start: np.ndarray,
                     lower: np.ndarray | None = None, upper: np.ndarray | None = None, *,
                     scale: np.ndarray | None = None, max_iter: int = 1000, ftol: float = 1e-12,
                     gtol: float = 1e-8, maxls: int = 20) -> OptimizeResult:
    """L-BFGS-B on (value, gradient) = ``value_and_gradient(x)`` within [``lower``, ``upper``] (arrays, +-inf for
    open sides), searching z = x / ``scale``; the result's ``x`` is back in x."""
    start = np.asarray(start, dtype=np.float64)
    factor = np.ones(start.size) if scale is None else np.asarray(scale, dtype=np.float64)

    def scaled(z):
        value, gradient = value_and_gradient(z * factor)
        return value, np.asarray(gradient, dtype=np.float64) * factor

    result = minimize(scaled, start / factor, method="L-BFGS-B", jac=True,
                      bounds=scipy_bounds(lower, upper, start.size, factor),
                      options={"maxiter": max_iter, "ftol": ftol, "gtol": gtol, "maxls": maxls})
    result.x = result.x * factor
    return result


def minimize_derivative_free(value: Callable[[np.ndarray], float], start: np.ndarray,
                             lower: np.ndarray | None = None, upper: np.ndarray | None = None, *,
                             scale: np.ndarray | None = None, max_evaluations: int = 1000,
                             final_radius: float = 1e-10) -> OptimizeResult:
    """COBYQA (Powell's quadratic models with bounds, BOBYQA's maintained successor) on ``value(x)``, searching
    z = x / ``scale``; a non-finite value counts as 1e300."""
    start = np.asarray(start, dtype=np.float64)
    factor = np.ones(start.size) if scale is None else np.asarray(scale, dtype=np.float64)

    def scaled(z):
        result = value(z * factor)
        return result if np.isfinite(result) else 1e300

    bounds = [(-np.inf if lo is None else lo, np.inf if hi is None else hi)
              for lo, hi in scipy_bounds(lower, upper, start.size, factor)]
    result = minimize(scaled, start / factor, method="COBYQA", bounds=bounds,
                      options={"maxfev": max_evaluations, "final_tr_radius": final_radius, "initial_tr_radius": 1.0})
    result.x = result.x * factor
    return result
