"""Exception and warning classes raised by tfmixed.

Every user mistake that tfmixed detects surfaces as a subclass of :class:`TfmixedError`
(or a subclass of :class:`TfmixedWarning` for conditions that still allow a result),
so callers can catch the library's errors without catching unrelated ones.
"""

from __future__ import annotations


class TfmixedError(Exception):
    """Base class of every exception raised deliberately by tfmixed."""


class FormulaError(TfmixedError, ValueError):
    """A model formula is malformed or refers to a column the data does not have."""


class DataError(TfmixedError, ValueError):
    """The data cannot be used as given (missing values, non-numeric response, too few levels...)."""


class ShapeError(TfmixedError, ValueError):
    """Arrays passed together have incompatible shapes (for example ``X`` and ``y`` of different lengths)."""


class RankDeficientError(TfmixedError, ValueError):
    """The fixed-effects model matrix X does not have full column rank."""


class SingularCovarianceError(TfmixedError, ValueError):
    """A covariance matrix given or produced is not positive (semi-)definite as required."""

    #: the iterations up to the collapse (:class:`~tfmixed.empirical_bayes.MacKayIteration`), where
    #: :func:`~tfmixed.mackay` raises it
    history: list


class NewLevelError(DataError):
    """``predict`` met grouping levels that were not in the training data and new levels are not allowed."""


class NotFittedError(TfmixedError, RuntimeError):
    """A result was requested from an object that has not been fitted yet."""


class ConvergenceError(TfmixedError, RuntimeError):
    """An inner iteration (PIRLS for a GLMM's conditional modes) failed to converge; no estimate is returned."""


class TfmixedWarning(UserWarning):
    """Base class of the warnings issued by tfmixed."""


class ConvergenceWarning(TfmixedWarning):
    """An iterative estimator stopped before meeting its convergence criterion."""


class SingularFitWarning(TfmixedWarning):
    """The estimated random-effects covariance is singular (a variance is 0 or a correlation is +-1)."""


class RankDeficiencyWarning(TfmixedWarning):
    """The fixed-effects model matrix was rank deficient; the aliased columns were dropped (lme4's default)."""


class CovarianceCollapseWarning(TfmixedWarning):
    """MacKay's full-covariance loop drove a random-effects covariance to singularity (correlation -> +-1)."""


class MemoryLimitError(TfmixedError, MemoryError):
    """A model's exact kernel would need more memory than the machine has; refused before allocating."""


class OptionalDependencyError(TfmixedError, ImportError):
    """A feature needs an optional dependency that is not installed (TensorFlow for the seed's modules, the
    iterative backend, Keras and log-density families: ``pip install 'tfmixed[tensorflow]'``)."""
