"""The one numerical-derivative module: difference quotients of functions the package cannot differentiate in
closed form (Hessians from analytic gradients, Jacobians of cheap parameter maps, gradients where no closed form
exists).

scipy offers ``approx_fprime`` (forward differences of a scalar function only, no bounds) and ``numdifftools``
adds Richardson extrapolation at many more evaluations; here each evaluation may be a factorisation, so the
plain central (or forward) quotient with the caller's steps, kept inside the parameters' bounds, is what is
wanted. The truncation error of a central quotient is O(h^2); of a forward one O(h).

>>> jacobian(lambda x: np.array([x[0] ** 2, x[0] * x[1]]), np.array([3.0, 2.0]), np.array([1e-5, 1e-5])).round(6)
array([[6., 0.],
       [2., 3.]])
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def relative_steps(x: np.ndarray, fraction: float, floor: float = 1.0) -> np.ndarray:
    """Steps h_i = fraction * max(|x_i|, floor): relative for large parameters, absolute near 0."""
    return fraction * np.maximum(np.abs(np.asarray(x, dtype=np.float64)), floor)


def jacobian(f: Callable[[np.ndarray], np.ndarray | float], x: np.ndarray, steps: np.ndarray, *,
             lower: np.ndarray | None = None, upper: np.ndarray | None = None,
             f0: np.ndarray | float | None = None) -> np.ndarray:
    """d f / d x by difference quotients, as an array of shape f(x).shape + (x.size,).

    Central, (f(x + h e_i) - f(x - h e_i)) / (2 h), unless ``f0`` = f(x) is given, which makes it forward
    (f(x + h e_i) - f0) / h (a negative h steps backwards). Points are clipped to [``lower``, ``upper``] and the
    quotient divides by the span actually taken, so a parameter on its bound gets a one-sided quotient; a zero
    span gives a zero column.
    """
    x = np.asarray(x, dtype=np.float64)
    steps = np.broadcast_to(np.asarray(steps, dtype=np.float64), x.shape)
    low = np.full(x.shape, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    high = np.full(x.shape, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    base = None if f0 is None else np.asarray(f0, dtype=np.float64)
    columns = []
    for i in range(x.size):
        up = x.copy()
        up[i] = min(max(x[i] + steps[i], low[i]), high[i])
        if base is None:
            down = x.copy()
            down[i] = min(max(x[i] - steps[i], low[i]), high[i])
            value_down = np.asarray(f(down), dtype=np.float64)
        else:
            down, value_down = x, base
        span = up[i] - down[i]
        value_up = np.asarray(f(up), dtype=np.float64)
        columns.append((value_up - value_down) / span if span != 0 else np.zeros_like(value_up))
    return np.stack(columns, axis=-1) if columns else np.zeros((*np.shape(f(x)), 0))


def hessian_of_gradient(gradient: Callable[[np.ndarray], np.ndarray], x: np.ndarray, steps: np.ndarray, *,
                        lower: np.ndarray | None = None, upper: np.ndarray | None = None,
                        f0: np.ndarray | None = None) -> np.ndarray:
    """The Hessian as the symmetrised Jacobian of an analytic gradient (2 gradients per parameter, central; one
    with ``f0``): rounding error eps |g| / h, where second differences of values suffer eps |f| / h^2."""
    H = jacobian(gradient, x, steps, lower=lower, upper=upper, f0=f0)
    return (H + H.T) / 2


def hessian_of_values(f: Callable[[np.ndarray], float], x: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The Hessian from second differences of a scalar function (where no gradient exists): the diagonal by
    (f(x + h) - 2 f(x) + f(x - h)) / h^2, the rest by the four-point rule."""
    x = np.asarray(x, dtype=np.float64)
    steps = np.broadcast_to(np.asarray(steps, dtype=np.float64), x.shape)
    eye = np.eye(x.size)
    center = f(x)
    H = np.empty((x.size, x.size))
    for i in range(x.size):
        ei = eye[i] * steps[i]
        H[i, i] = (f(x + ei) - 2 * center + f(x - ei)) / steps[i] ** 2
        for j in range(i):
            ej = eye[j] * steps[j]
            H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * steps[i] * steps[j])
    return H


def elementwise_central(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """d f_i / d x_i of a function acting row by row (f(x)_i depends on x_i only), by one central quotient for
    all rows at once: (f(x + h) - f(x - h)) / (2 h).

    >>> elementwise_central(np.exp, np.array([0.0, 1.0]), np.array([1e-5, 1e-5])).round(6).tolist()
    [1.0, 2.718282]
    """
    x = np.asarray(x, dtype=np.float64)
    steps = np.broadcast_to(np.asarray(steps, dtype=np.float64), x.shape)
    return (np.asarray(f(x + steps), dtype=np.float64) - np.asarray(f(x - steps), dtype=np.float64)) / (2 * steps)
