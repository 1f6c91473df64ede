"""Validation of user-supplied arrays: the seed's 1-D ``y`` trap becomes impossible."""

from __future__ import annotations

import numpy as np

from .errors import DataError, ShapeError


def as_matrix(X, name: str = "X") -> np.ndarray:
    """X as a finite float64 2-D array; a 1-D X is ambiguous (one feature or one row?) and is refused."""
    array = np.asarray(X, dtype=np.float64) if not hasattr(X, "numpy") else np.asarray(X.numpy(), dtype=np.float64)
    if array.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D matrix (n observations x p columns), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{name} contains NaN or infinite values")
    return array


def as_response(y, n_rows: int, name: str = "y") -> np.ndarray:
    """y as a float64 column vector of length ``n_rows``; 1-D and (n, 1) inputs give the same result."""
    try:
        array = np.asarray(y if not hasattr(y, "numpy") else y.numpy(), dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be numeric") from None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ShapeError(f"{name} must be a vector or an (n, 1) column, got shape {array.shape}")
    if array.shape[0] != n_rows:
        raise ShapeError(f"{name} has {array.shape[0]} values but X has {n_rows} rows")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{name} contains NaN or infinite values")
    return array.reshape(-1, 1)
