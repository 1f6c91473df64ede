"""The declared interfaces between the pipeline's stages (PEP 544 protocols, checked by mypy in CI).

A kernel problem factorises for per-term factors T_t; its factor delivers the profiled criterion's parts; a rest
strategy eliminates the columns after the first term; a coupling strategy holds C = [Zr'WZ1; [X y]'WZ1]; a
criterion is what the estimators minimise. Capabilities are attributes a class declares (``has_average_information``,
``takes_dense``, ...), never found by probing. New backends, strategies and criteria implement these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

if TYPE_CHECKING:
    from .cross_products import CrossProducts
    from .kernels.pls import BlockShape


class Coupling(Protocol):
    """A strategy holding the coupling C of the first term to the rest (``kernels/coupling.py``)."""

    name: str
    #: ``reweighted`` takes C dense
    takes_dense: bool
    #: ``downdate`` and ``block_sums`` read only the lower triangle of symmetric inputs
    reads_lower_triangle_only: bool
    #: C's sparse and dense parts are held apart and re-weighted by ``refilled(S, D)``
    holds_split_parts: bool

    def downdate(self, weights: np.ndarray, lower_only: bool = False) -> Any: ...

    def block_sums(self, M: np.ndarray) -> np.ndarray: ...

    def transpose_times(self, z: np.ndarray) -> np.ndarray: ...

    def times_block_diagonal(self, blocks: np.ndarray) -> Any: ...

    def reweighted(self, C: Any) -> "Coupling": ...


class RestFactor(Protocol):
    """The factor of the columns after the first term (dense, bordered or sparse strategy)."""

    def logdet_rest(self) -> float: ...

    def logdet_fixed(self) -> float: ...

    def last_pivot(self) -> float: ...

    def back_substitute(self) -> np.ndarray: ...

    def solve_equations(self, rhs: np.ndarray) -> np.ndarray: ...

    def solve_rest(self, rhs: np.ndarray) -> np.ndarray: ...

    def rest_inverse_blocks(self, terms: Any) -> list[np.ndarray]: ...

    def fixed_block(self) -> np.ndarray: ...

    def inverse_sums(self, problem: Any, factors: list[np.ndarray],
                     include_fixed: bool) -> tuple[np.ndarray, list[np.ndarray]]: ...

    def inverse_lookup(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]: ...


class FactoredProblem(Protocol):
    """What a factor's profiled criterion, gradient and average information (``kernels/criterion.py``,
    ``kernels/information.py``) read from the problem it factors: exact and iterative problems alike."""

    n: int
    p: int
    cross_products: CrossProducts
    terms: list[BlockShape]


class KernelFactor(Protocol):
    """What every kernel's factor at one theta delivers (``kernels/pls.py``, ``kernels/iterative.py``)."""

    #: whether :meth:`average_information` is offered (one solve per parameter: the exact kernel)
    has_average_information: bool
    factors: list[np.ndarray]

    @property
    def pwrss(self) -> float: ...

    @property
    def logdet_L(self) -> float: ...

    @property
    def logdet_RX(self) -> float: ...

    def deviance(self, reml: bool) -> float: ...

    def deviance_at_sigma(self, sigma2: float, reml: bool) -> float: ...

    def sigma2(self, reml: bool) -> float: ...

    def dof(self, reml: bool) -> int: ...

    def solve(self) -> tuple[np.ndarray, np.ndarray]: ...

    def u_to_b(self, u: np.ndarray) -> np.ndarray: ...

    def vcov_beta_unscaled(self) -> np.ndarray: ...

    def gradient(self, reml: bool, singular_tol: float = 1e-9) -> np.ndarray | None: ...

    def gradient_parts(self, reml: bool, singular_tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray] | None: ...

    def inverse_diagonal_blocks(self) -> list[np.ndarray]: ...


class AverageInformationFactor(KernelFactor, Protocol):
    """A factor that declares ``has_average_information`` (the exact kernel's) and so offers it."""

    def average_information(self, reml: bool) -> np.ndarray: ...


class KernelProblem(Protocol):
    """The mixed model equations of one set of cross-products with the strategies chosen for them."""

    #: "exact" or "iterative"
    strategy: str
    dims: list[int]
    n: int
    p: int
    q_rest: int
    options: Any
    cross_products: CrossProducts

    @property
    def strategies(self) -> dict[str, str]: ...

    def factorize(self, factors: list[np.ndarray]) -> KernelFactor: ...

    def reweighted(self, cross_products: Any) -> "KernelProblem": ...


class Criterion(Protocol):
    """What :func:`~tfmixed.estimators.profiled.fit_profiled` minimises: the LMM objective, the GLMM's nAGQ = 0
    and joint Laplace criteria."""

    lower: np.ndarray
    start: np.ndarray
    #: an average-information Hessian (the Newton stage runs where it is declared)
    has_average_information: bool

    @property
    def label(self) -> str: ...

    @property
    def has_evidence_step(self) -> bool:
        """Whether the search starts with MacKay's evidence updates (``evidence_step``)."""
        ...

    def even_parameters(self) -> np.ndarray:
        """Parameters in which the criterion is even (a zero there is stationary)."""
        ...

    def correlation_probes(self, theta: np.ndarray, distances: Any, /) -> list[np.ndarray]:
        """theta with a correlation parameter at its bound moved inside by each distance."""
        ...

    # theta is passed positionally (the GLMM's criteria name it ``params``)
    def __call__(self, theta: np.ndarray, /) -> float: ...

    def value_and_gradient(self, theta: np.ndarray, /) -> tuple[float, np.ndarray]: ...

    def is_degenerate(self, theta: np.ndarray, /) -> bool: ...

    def diagnose(self, theta: np.ndarray, /) -> str: ...


class AverageInformationCriterion(Criterion, Protocol):
    """A criterion that declares ``has_average_information`` and so offers it (None where its kernel has none)."""

    def average_information(self, theta: np.ndarray, /) -> np.ndarray | None: ...
