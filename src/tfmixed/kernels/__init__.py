"""Numerical kernels (NumPy/SciPy, float64), kept apart from the user-facing objects."""
