"""What the parts of a fit read from one another, declared once for the type checker.

:class:`~tfmixed.results.LmerFit` and :class:`~tfmixed.results.glmm.GlmerFit` are assembled from mixins (one
file per job) that read the state :class:`~tfmixed.results.estimates.Estimates` (or ``GlmerFit``) sets and the
members of their sibling mixins. Each mixin derives from :class:`FitBase`, so that it is checked on its own and
the definitions are checked against these declarations. Nothing here exists at run time beyond the class
and the default ``family = None`` of a linear model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from ..design import Design
    from ..estimators.result import EstimatorResult
    from ..laplace import GlmmObjective
    from ..objective import LmmObjective
    from ..partitioned import PartitionedDesign
    from ..protocols import KernelFactor, KernelProblem
    from .bootstrap import BootstrapResult
    from .optsum import OptSummary


class FitBase:
    """The state of a fit (set by ``Estimates``, or ``GlmerFit``'s own constructor) and the members the mixins
    share; ``LmerFit`` narrows ``objective`` to an :class:`~tfmixed.objective.LmmObjective`, ``GlmerFit`` to a
    :class:`~tfmixed.laplace.GlmmObjective`."""

    design: Design | PartitionedDesign
    objective: LmmObjective | GlmmObjective
    optimum: EstimatorResult
    problem: KernelProblem
    reml: bool
    has_residual: bool
    #: a GLMM's family with its estimated parameters; None for a linear mixed model (the one member set here)
    family: Any = None
    #: the kernel factor at the estimates and its T_t, the scale sigma^2 of Lambda, beta and b
    _factor: KernelFactor
    factors: list[np.ndarray]
    _sigma2: float
    _beta: np.ndarray
    _b: np.ndarray

    if TYPE_CHECKING:  # defined by the mixins (Estimates, Likelihood, Inference, Resampling) or GlmerFit
        @property
        def formula(self) -> str: ...

        @property
        def theta(self) -> np.ndarray: ...

        @property
        def optsum(self) -> OptSummary: ...

        @property
        def converged(self) -> bool: ...

        @property
        def method(self) -> str: ...

        @property
        def sigma(self) -> float: ...

        @property
        def fixef(self) -> pd.Series: ...

        @property
        def vcov_beta(self) -> pd.DataFrame: ...

        @property
        def fixef_se(self) -> pd.Series: ...

        def covariance_matrices(self) -> list[np.ndarray]: ...

        @property
        def sdcor(self) -> pd.Series: ...

        def ranef_frame(self) -> pd.DataFrame: ...

        @property
        def fitted(self) -> np.ndarray: ...

        @property
        def residuals(self) -> np.ndarray: ...

        @property
        def nobs(self) -> int: ...

        @property
        def ngroups(self) -> dict[str, int]: ...

        @property
        def is_singular(self) -> bool: ...

        @property
        def deviance(self) -> float: ...

        @property
        def loglik(self) -> float: ...

        @property
        def n_params(self) -> int: ...

        @property
        def aic(self) -> float: ...

        @property
        def bic(self) -> float: ...

        @property
        def coef_table(self) -> pd.DataFrame: ...

        def bootstrap(self, n: int = 1000, *, seed: int | None = None, verbose: bool = True) -> BootstrapResult: ...
