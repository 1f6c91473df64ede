"""Covariance structures of random-effects terms: the map from a term's parameters to its relative covariance
factor T, with G = sigma^2 T T' (lme4 2.0's and glmmTMB's ``us``, ``diag``, ``homdiag``, ``cs``, ``homcs``,
``ar1`` and ``toep``).

Every kernel works with T alone (Lambda = blockdiag_t(I (x) T_t)); a structure says how its parameters make T,
gives d vech(T) / d params for the chain rule of the criterion's gradient and average information, bounds,
starts, names and the values users read (standard deviations and correlation parameters). With D the diagonal
of relative standard deviations and R(rho) a correlation matrix,

* ``us``: T lower triangular, the parameters its lower triangle column by column (lme4's theta, unchanged);
* ``diag`` / ``homdiag``: T = D (k standard deviations / one shared);
* ``cs`` / ``homcs``: R = (1 - rho) I + rho 11', rho in (-1/(k-1), 1); T = D chol(R) (k SDs / one);
* ``ar1``: R_ij = rho^|i-j|, rho in (-1, 1), one SD (glmmTMB's homogeneous ar1);
* ``toep``: R Toeplitz with lag correlations from k - 1 partial autocorrelations in (-1, 1) (Durbin-Levinson),
  k SDs (glmmTMB's heterogeneous toep).

Standard deviations are bounded below by 0, as lme4 bounds the diagonal of T, so a zero variance is reached
exactly (a singular fit). Correlation parameters are optimised on an unbounded scale z: rho = z / sqrt(1 + z^2)
for ar1 and the partial autocorrelations (glmmTMB's map), a shifted logistic for compound symmetry. The
criterion is smooth in G and so in rho, but T = D chol(R) is not at |rho| = 1 (d chol / d rho grows as
1 / sqrt(1 - rho^2)): on the z scale the boundary is at infinity and the criterion stays smooth, as in glmmTMB; a
correlation matrix whose smallest eigenvalue is below 1e-4 is reported as a singular fit.

>>> s = structure("ar1", 3)
>>> T = s.factor(np.array([2.0, s.from_natural(np.array([2.0, 0.5]))[1]]))
>>> np.round(T @ T.T, 6).tolist()
[[4.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 4.0]]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import numpy as np
from scipy.special import logit

from .errors import FormulaError
from .derivatives import jacobian, relative_steps
from .kernels.covariance import lower_indices, pivot_free_cholesky

#: a standard deviation below this (relative to sigma) or a correlation matrix whose smallest eigenvalue is below
#: it is a boundary (singular) fit: lme4's isSingular tolerance
SINGULAR_TOL = 1e-4
#: a pivot of a correlation matrix at or below this is 0 (a correlation of +-1 makes one)
PIVOT_TOL = 1e-24
#: the complex step of the correlation maps' derivatives: exact to rounding for analytic maps (Squire & Trapp 1998)
COMPLEX_STEP = 1e-30


def _ratio_to_unit(z):
    """glmmTMB's map of an unbounded parameter to (-1, 1): z / sqrt(1 + z^2) (analytic: complex steps work)."""
    return z / np.sqrt(1.0 + z * z)


def _unit_to_ratio(rho: float) -> float:
    rho = float(np.clip(rho, -1 + 1e-15, 1 - 1e-15))
    return rho / np.sqrt(1.0 - rho * rho)


class CovarianceStructure(ABC):
    """How a term's k x k relative covariance factor T follows from its parameters.

    Subclasses set ``code`` (the formula's name of the structure) and implement the abstract methods. The
    parameters are what the optimiser moves (``lower`` bounds them; there are no upper bounds); the *natural*
    values are what users read: standard deviations relative to sigma (``natural_is_sd``) and correlation
    parameters, bounded by ``natural_lower`` / ``natural_upper`` (profiles hold them one at a time).
    """

    code: ClassVar[str]
    #: whether the parameters are lme4's theta (the lower triangle of T): the evidence update and lme4's
    #: starting values apply to them as they are
    is_lme4_theta: ClassVar[bool] = False
    @property
    def identifies_residual(self) -> bool:
        """Whether the structure tells its effects from the residual with one observation per level and column.
        Only ar1 over at least three columns does (V = s^2 R(rho) + sigma^2 I: lag-1 and lag-2 covariances give s^2
        = c1^2 / c2). us, diag, homdiag and homcs trade a common diagonal against sigma^2; cs and toep do where
        their standard deviations are equal (the Jacobian of V is rank deficient there), so lme4's
        check.nobs.vs.nRE applies to them."""
        return False

    def __init__(self, k: int):
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise FormulaError(f"a {self.code}() term needs at least one column, got {k!r}")
        self.k = int(k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.k == other.k

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.k))

    @property
    @abstractmethod
    def n_params(self) -> int:
        """Number of parameters."""

    @abstractmethod
    def lower(self) -> np.ndarray:
        """Lower bounds of the parameters (0 for standard deviations, -inf elsewhere)."""

    @abstractmethod
    def start(self) -> np.ndarray:
        """Starting parameters: unit relative standard deviations, zero correlations."""

    @abstractmethod
    def factor(self, params: np.ndarray) -> np.ndarray:
        """The lower-triangular T (k x k)."""

    @abstractmethod
    def factor_jacobian(self, params: np.ndarray) -> np.ndarray:
        """d vech(T) / d params, (k (k + 1) / 2) x n_params, vech in lme4's order (lower triangle by columns)."""

    @abstractmethod
    def natural_names(self, columns: Sequence[str]) -> list[str]:
        """Names of the natural values ("sd_x", "cor_y.x", "rho", ...), without the group suffix."""

    @abstractmethod
    def to_natural(self, params: np.ndarray) -> np.ndarray:
        """Relative standard deviations and correlation parameters."""

    @abstractmethod
    def from_natural(self, values: np.ndarray) -> np.ndarray:
        """The parameters of natural values (inverse of :meth:`to_natural`)."""

    @abstractmethod
    def natural_is_sd(self) -> np.ndarray:
        """Which natural values are standard deviations (they scale with sigma)."""

    def natural_lower(self) -> np.ndarray:
        return np.where(self.natural_is_sd(), 0.0, -1.0)

    def natural_upper(self) -> np.ndarray:
        return np.where(self.natural_is_sd(), np.inf, 1.0)

    def even(self) -> np.ndarray:
        """Parameters in which the criterion is even (a sign flip leaves T T' unchanged): a zero there is
        always stationary, so an optimiser may snap such a variance to 0."""
        return np.zeros(self.n_params, dtype=bool)

    def is_singular(self, params: np.ndarray, tol: float = SINGULAR_TOL) -> bool:
        """A standard deviation within ``tol`` of 0 or a correlation matrix within ``tol`` of singular."""
        natural = self.to_natural(params)
        sd = self.natural_is_sd()
        return bool(np.any(natural[sd] < tol)) or self._correlation_singular(params, tol)

    def _correlation_singular(self, params: np.ndarray, tol: float) -> bool:
        return False

    def canonical(self, params: np.ndarray) -> np.ndarray | None:
        """The same T T' with parameters inside the bounds, for parameters found without bounds; None where a
        sign flip changes the covariance (the search must then keep the bounds)."""
        return None

    def structure_parameters(self, params: np.ndarray) -> dict[str, float]:
        """The structure's own correlation parameters as glmmTMB prints them (rho of ar1 and cs, the lag
        correlations of toep); empty for us and diag."""
        return {}

    def covariance_basis(self) -> list[np.ndarray] | None:
        """Symmetric k x k matrices E_m with G = sum_m gamma_m E_m, where G is linear in some parameters gamma
        (what Kenward-Roger's method assumes); None where it is not (cs, homcs, ar1, toep)."""
        return None


class Unstructured(CovarianceStructure):
    """``us``: T lower triangular with free lower triangle, lme4's default (and ``(x | g)``)."""

    code = "us"
    is_lme4_theta = True

    @property
    def n_params(self) -> int:
        return self.k * (self.k + 1) // 2

    def _diagonal(self) -> np.ndarray:
        rows, cols = lower_indices(self.k)
        return rows == cols

    def lower(self) -> np.ndarray:
        return np.where(self._diagonal(), 0.0, -np.inf)

    def start(self) -> np.ndarray:
        return self._diagonal().astype(np.float64)

    def factor(self, params: np.ndarray) -> np.ndarray:
        T = np.zeros((self.k, self.k))
        T[lower_indices(self.k)] = params
        return T

    def factor_jacobian(self, params: np.ndarray) -> np.ndarray:
        return np.eye(self.n_params)

    def natural_names(self, columns: Sequence[str]) -> list[str]:
        return [f"sd_{columns[i]}" if i == j else f"cor_{columns[i]}.{columns[j]}" for i, j in zip(*lower_indices(self.k))]

    def natural_is_sd(self) -> np.ndarray:
        return self._diagonal()

    def to_natural(self, params: np.ndarray) -> np.ndarray:
        T = self.factor(params)
        G = T @ T.T
        sd = np.sqrt(np.diag(G))
        rows, cols = lower_indices(self.k)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(rows == cols, sd[rows], G[rows, cols] / (sd[rows] * sd[cols]))

    def from_natural(self, values: np.ndarray) -> np.ndarray:
        rows, cols = lower_indices(self.k)
        block = np.zeros((self.k, self.k))
        block[rows, cols] = values
        sd = np.diag(block).copy()
        off = block - np.diag(sd)
        T = sd[:, None] * pivot_free_cholesky(off + off.T + np.eye(self.k), PIVOT_TOL)
        return T[rows, cols]

    def even(self) -> np.ndarray:
        return np.full(self.n_params, self.k == 1)

    def is_singular(self, params: np.ndarray, tol: float = SINGULAR_TOL) -> bool:
        return bool(np.any(np.asarray(params)[self._diagonal()] < tol))

    def canonical(self, params: np.ndarray) -> np.ndarray:
        T = self.factor(params)
        T[:, np.diag(T) < 0] *= -1.0
        return T[lower_indices(self.k)]

    def covariance_basis(self) -> list[np.ndarray]:
        basis = []
        for i, j in zip(*lower_indices(self.k)):
            E = np.zeros((self.k, self.k))
            E[i, j] = E[j, i] = 1.0
            basis.append(E)
        return basis


class Diagonal(CovarianceStructure):
    """``diag``: independent effects with their own variances (lme4's ``||`` as one term)."""

    code = "diag"
    #: whether every column shares one standard deviation
    homogeneous: ClassVar[bool] = False

    @property
    def n_params(self) -> int:
        return 1 if self.homogeneous else self.k

    def lower(self) -> np.ndarray:
        return np.zeros(self.n_params)

    def start(self) -> np.ndarray:
        return np.ones(self.n_params)

    def factor(self, params: np.ndarray) -> np.ndarray:
        return np.diag(np.broadcast_to(np.asarray(params, dtype=np.float64), (self.k,)))

    def factor_jacobian(self, params: np.ndarray) -> np.ndarray:
        rows, cols = lower_indices(self.k)
        on_diagonal = np.flatnonzero(rows == cols)
        J = np.zeros((rows.size, self.n_params))
        J[on_diagonal, 0 if self.homogeneous else np.arange(self.k)] = 1.0
        return J

    def natural_names(self, columns: Sequence[str]) -> list[str]:
        return [f"sd_{self.code}"] if self.homogeneous else [f"sd_{column}" for column in columns]

    def natural_is_sd(self) -> np.ndarray:
        return np.ones(self.n_params, dtype=bool)

    def to_natural(self, params: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(params, dtype=np.float64))

    def from_natural(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64).copy()

    def even(self) -> np.ndarray:
        return np.ones(self.n_params, dtype=bool)

    def canonical(self, params: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(params, dtype=np.float64))

    def covariance_basis(self) -> list[np.ndarray]:
        if self.homogeneous:
            return [np.eye(self.k)]
        return [np.diag(np.eye(self.k)[i]) for i in range(self.k)]


class HomogeneousDiagonal(Diagonal):
    """``homdiag``: independent effects with one shared variance."""

    code = "homdiag"
    homogeneous = True


class _Correlated(CovarianceStructure):
    """T = D chol(R(z)): standard deviations (k, or one shared) and correlation parameters z on an unbounded
    scale. A subclass gives ``correlation(z)`` (analytic, so that complex steps give its derivative exactly),
    the map between z and the natural correlation parameters, and their names."""

    homogeneous: ClassVar[bool] = False

    @property
    def n_correlation(self) -> int:
        """Number of correlation parameters (one; toep has k - 1)."""
        return 1

    @property
    def n_sd(self) -> int:
        return 1 if self.homogeneous else self.k

    @property
    def n_params(self) -> int:
        return self.n_sd + self.n_correlation

    def __init__(self, k: int):
        super().__init__(k)
        if self.k < 2:
            raise FormulaError(f"a {self.code}() term needs at least two columns (one correlation), got {k}")

    @abstractmethod
    def correlation(self, z: np.ndarray) -> np.ndarray:
        """R(z), k x k; must accept complex z."""

    @abstractmethod
    def correlation_values(self, z: np.ndarray) -> np.ndarray:
        """The natural correlation parameters at z."""

    @abstractmethod
    def correlation_scale(self, values: np.ndarray) -> np.ndarray:
        """z of natural correlation parameters."""

    @abstractmethod
    def correlation_names(self) -> list[str]:
        """Names of the natural correlation parameters."""

    def lower(self) -> np.ndarray:
        return np.concatenate([np.zeros(self.n_sd), np.full(self.n_correlation, -np.inf)])

    def start(self) -> np.ndarray:
        return np.concatenate([np.ones(self.n_sd), self.correlation_scale(np.zeros(self.n_correlation))])

    def _split(self, params):
        params = np.asarray(params, dtype=np.float64)
        return np.broadcast_to(params[: self.n_sd], (self.k,)), params[self.n_sd :]

    def factor(self, params: np.ndarray) -> np.ndarray:
        sd, z = self._split(params)
        return sd[:, None] * pivot_free_cholesky(self.correlation(z), PIVOT_TOL)

    def factor_jacobian(self, params: np.ndarray) -> np.ndarray:
        sd, z = self._split(params)
        R = self.correlation(z)
        try:
            L = np.linalg.cholesky(R)
        except np.linalg.LinAlgError:  # R singular to rounding (a correlation at +-1): chol is not differentiable
            return self._differenced_jacobian(params)
        rows, cols = lower_indices(self.k)
        columns = []
        if self.homogeneous:
            columns.append(L[rows, cols])
        else:
            for i in range(self.k):
                columns.append(np.where(rows == i, L[rows, cols], 0.0))
        L_inv = np.linalg.inv(L)
        for j in range(z.size):
            step = np.zeros(z.size, dtype=complex)
            step[j] = 1j * COMPLEX_STEP
            dR = self.correlation(z + step).imag / COMPLEX_STEP
            inner = L_inv @ dR @ L_inv.T
            dL = L @ (np.tril(inner, -1) + 0.5 * np.diag(np.diag(inner)))
            columns.append((sd[:, None] * dL)[rows, cols])
        return np.column_stack(columns)

    def _differenced_jacobian(self, params: np.ndarray) -> np.ndarray:
        """One-sided differences of :meth:`factor` into the feasible side, where chol(R) has no derivative."""
        rows, cols = lower_indices(self.k)
        params = np.asarray(params, dtype=np.float64)

        def vech(point):
            return self.factor(point)[rows, cols]

        # towards 0 for each parameter: into the feasible side of a correlation at its bound
        return jacobian(vech, params, -np.sign(params + (params == 0)) * relative_steps(params, 1e-7), f0=vech(params))

    def natural_names(self, columns: Sequence[str]) -> list[str]:
        sds = [f"sd_{self.code}"] if self.homogeneous else [f"sd_{column}" for column in columns]
        return sds + self.correlation_names()

    def natural_is_sd(self) -> np.ndarray:
        return np.arange(self.n_params) < self.n_sd

    def to_natural(self, params: np.ndarray) -> np.ndarray:
        params = np.asarray(params, dtype=np.float64)
        return np.concatenate([np.abs(params[: self.n_sd]), self.correlation_values(params[self.n_sd :])])

    def from_natural(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return np.concatenate([values[: self.n_sd], self.correlation_scale(values[self.n_sd :])])

    def even(self) -> np.ndarray:
        # a shared SD multiplies the whole T; separate SDs flip the sign of their column's correlations
        return np.arange(self.n_params) < (1 if self.homogeneous else 0)

    def canonical(self, params: np.ndarray) -> np.ndarray | None:
        # D R D is unchanged when every SD flips sign together (and a shared SD is one), not when some do
        params = np.asarray(params, dtype=np.float64).copy()
        sd = params[: self.n_sd]
        if np.all(sd <= 0):
            params[: self.n_sd] = -sd
        elif np.any(sd < 0):
            return None
        return params

    def _correlation_singular(self, params: np.ndarray, tol: float) -> bool:
        return bool(np.linalg.eigvalsh(self.correlation(self._split(params)[1]))[0] < tol)

    def structure_parameters(self, params: np.ndarray) -> dict[str, float]:
        values = self.correlation_values(self._split(params)[1])
        return dict(zip(self.correlation_names(), map(float, values)))


class CompoundSymmetry(_Correlated):
    """``cs``: one correlation rho between every pair of columns, separate variances (glmmTMB's ``cs``)."""

    code = "cs"

    def _floor(self) -> float:
        return -1.0 / (self.k - 1)

    def _rho(self, z):
        floor = self._floor()
        return floor + (1.0 - floor) / (1.0 + np.exp(-z))

    def correlation(self, z: np.ndarray) -> np.ndarray:
        rho = self._rho(z[0])
        return (1.0 - rho) * np.eye(self.k) + rho * np.ones((self.k, self.k))

    def correlation_values(self, z: np.ndarray) -> np.ndarray:
        return np.array([self._rho(float(z[0]))])

    def correlation_scale(self, values: np.ndarray) -> np.ndarray:
        floor = self._floor()
        share = (float(values[0]) - floor) / (1.0 - floor)
        return np.array([logit(np.clip(share, 1e-15, 1 - 1e-15))])

    def correlation_names(self) -> list[str]:
        return ["rho_cs"]

    def natural_lower(self) -> np.ndarray:
        return np.where(self.natural_is_sd(), 0.0, self._floor())

    def structure_parameters(self, params: np.ndarray) -> dict[str, float]:
        return {"rho": float(self._rho(float(self._split(params)[1][0])))}


class HomogeneousCompoundSymmetry(CompoundSymmetry):
    """``homcs``: one variance and one correlation for every column (nlme's ``pdCompSymm``)."""

    code = "homcs"
    homogeneous = True

    def correlation_names(self) -> list[str]:
        return ["rho_homcs"]


class AutoRegressive(_Correlated):
    """``ar1``: correlation rho^|i - j| between columns i and j, one variance (glmmTMB's ``ar1``)."""

    code = "ar1"
    homogeneous = True

    @property
    def identifies_residual(self) -> bool:
        return self.k >= 3

    def correlation(self, z: np.ndarray) -> np.ndarray:
        rho = _ratio_to_unit(z[0])
        lags = np.abs(np.subtract.outer(np.arange(self.k), np.arange(self.k)))
        powers = np.ones((self.k, self.k), dtype=np.result_type(rho, float))
        for lag in range(1, self.k):
            powers[lags == lag] = rho**lag
        return powers

    def correlation_values(self, z: np.ndarray) -> np.ndarray:
        return np.array([_ratio_to_unit(float(z[0]))])

    def correlation_scale(self, values: np.ndarray) -> np.ndarray:
        return np.array([_unit_to_ratio(values[0])])

    def correlation_names(self) -> list[str]:
        return ["rho_ar1"]

    def structure_parameters(self, params: np.ndarray) -> dict[str, float]:
        return {"rho": float(self.correlation_values(self._split(params)[1])[0])}


class Toeplitz(_Correlated):
    """``toep``: a Toeplitz correlation (one correlation per lag) and separate variances (glmmTMB's ``toep``).

    Its k - 1 parameters are the partial autocorrelations phi_1..phi_{k-1} in (-1, 1), so every value gives a
    positive-definite R (Durbin-Levinson); the natural values are the phis (a box, which profiles need), and
    :meth:`structure_parameters` gives the lag correlations glmmTMB prints.
    """

    code = "toep"

    @property
    def n_correlation(self) -> int:
        return self.k - 1

    def lag_correlations(self, z: np.ndarray) -> np.ndarray:
        """rho_1..rho_{k-1} from the partial autocorrelations phi_m = z_m / sqrt(1 + z_m^2) (Durbin-Levinson)."""
        partial = _ratio_to_unit(np.asarray(z))
        rho = [partial[0]]
        phi = np.array([partial[0]])
        for m in range(1, self.k - 1):
            p = partial[m]
            rho.append(p * (1.0 - phi @ np.array(rho)) + phi @ np.array(rho[::-1]))
            phi = np.concatenate([phi - p * phi[::-1], [p]])
        return np.array(rho)

    def correlation(self, z: np.ndarray) -> np.ndarray:
        rho = np.concatenate([[1.0], self.lag_correlations(z)])
        lags = np.abs(np.subtract.outer(np.arange(self.k), np.arange(self.k)))
        return rho[lags]

    def correlation_values(self, z: np.ndarray) -> np.ndarray:
        return _ratio_to_unit(np.asarray(z, dtype=np.float64))

    def correlation_scale(self, values: np.ndarray) -> np.ndarray:
        return np.array([_unit_to_ratio(value) for value in values])

    def correlation_names(self) -> list[str]:
        return [f"pacf{lag}_toep" for lag in range(1, self.k)]

    def structure_parameters(self, params: np.ndarray) -> dict[str, float]:
        rho = self.lag_correlations(self._split(params)[1])
        return {f"rho{lag}": float(value) for lag, value in enumerate(rho, start=1)}


# declared: mypy 1.10 would join the classes to the abstract _Correlated and refuse them as dict values
_CONCRETE: tuple[type[CovarianceStructure], ...] = (Unstructured, Diagonal, HomogeneousDiagonal, CompoundSymmetry,
                                                     HomogeneousCompoundSymmetry, AutoRegressive, Toeplitz)
STRUCTURES: dict[str, type[CovarianceStructure]] = {cls.code: cls for cls in _CONCRETE}


def structure(code: str, k: int) -> CovarianceStructure:
    """The structure named ``code`` (a formula's ``us``, ``diag``, ``homdiag``, ``cs``, ``homcs``, ``ar1`` or
    ``toep``) for a term with ``k`` columns.

    >>> structure("cs", 3).n_params, structure("us", 3).n_params
    (4, 6)
    """
    if code not in STRUCTURES:
        raise FormulaError(f"unknown covariance structure {code!r}; choose one of {sorted(STRUCTURES)}")
    return STRUCTURES[code](k)


class CovarianceParameters:
    """The parameter vector theta of a model's random-effects terms: the concatenation of each term's
    structure parameters (for ``us`` terms exactly lme4's theta), the factors T_t it gives and the chain rule
    d vech(T) / d theta.

    >>> parameters = CovarianceParameters([structure("us", 2), structure("ar1", 3)])
    >>> parameters.n_theta, parameters.lower.tolist()
    (5, [0.0, -inf, 0.0, 0.0, -inf])
    """

    def __init__(self, structures: Sequence[CovarianceStructure]):
        self.structures = tuple(structures)
        sizes = [s.n_params for s in self.structures]
        offsets = np.cumsum([0] + sizes)
        self.slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        self.n_theta = int(offsets[-1])
        self.lower = np.concatenate([s.lower() for s in self.structures]) if self.structures else np.zeros(0)
        self.start = np.concatenate([s.start() for s in self.structures]) if self.structures else np.zeros(0)
        self.is_lme4_theta = all(s.is_lme4_theta for s in self.structures)
        self.dims = [s.k for s in self.structures]

    @classmethod
    def unstructured(cls, dims: Sequence[int]) -> "CovarianceParameters":
        """lme4's parametrisation of terms with ``dims`` columns."""
        return cls([Unstructured(k) for k in dims])

    @classmethod
    def of_terms(cls, terms) -> "CovarianceParameters":
        """The parameters of a design's random-effects terms."""
        return cls([term.structure for term in terms])

    def split(self, theta: np.ndarray) -> list[np.ndarray]:
        theta = np.asarray(theta, dtype=np.float64)
        return [theta[s] for s in self.slices]

    def factors(self, theta: np.ndarray) -> list[np.ndarray]:
        """The T_t at theta."""
        return [s.factor(part) for s, part in zip(self.structures, self.split(theta))]

    def chain(self, gradient_in_factors: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """A gradient in the stacked vech(T_t) as a gradient in theta (J' g)."""
        if self.is_lme4_theta:
            return gradient_in_factors
        return self.jacobian(theta).T @ gradient_in_factors

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """d (stacked vech T_t) / d theta, block diagonal."""
        blocks = [s.factor_jacobian(part) for s, part in zip(self.structures, self.split(theta))]
        rows = sum(b.shape[0] for b in blocks)
        J, r = np.zeros((rows, self.n_theta)), 0
        for block, cols in zip(blocks, self.slices):
            J[r : r + block.shape[0], cols] = block
            r += block.shape[0]
        return J

    def even(self) -> np.ndarray:
        """Parameters in which the criterion is even (see :meth:`CovarianceStructure.even`)."""
        return np.concatenate([s.even() for s in self.structures]) if self.structures else np.zeros(0, dtype=bool)

    def scalar_lme4(self) -> np.ndarray:
        """Parameters that are the relative SD of an unstructured scalar term (the evidence update's)."""
        return np.concatenate([np.full(s.n_params, s.is_lme4_theta and s.k == 1) for s in self.structures])

    def is_singular(self, theta: np.ndarray, tol: float = SINGULAR_TOL) -> bool:
        """lme4's ``isSingular``, per structure: a standard deviation at 0 or a correlation at its bound."""
        return any(s.is_singular(part, tol) for s, part in zip(self.structures, self.split(theta)))

    def canonical(self, theta: np.ndarray) -> np.ndarray | None:
        """theta inside the bounds with the same covariances (None where a structure cannot flip signs)."""
        parts = [s.canonical(part) for s, part in zip(self.structures, self.split(theta))]
        kept = [part for part in parts if part is not None]
        if len(kept) < len(parts):
            return None
        return np.concatenate(kept) if kept else np.zeros(0)

    def correlation_probes(self, theta: np.ndarray, distances: Sequence[float],
                           tol: float = SINGULAR_TOL) -> list[np.ndarray]:
        """theta with one correlation parameter that sits within ``tol`` of its bound (+-1, or cs's floor) moved
        inside by each of ``distances`` (fractions of its range), the rest unchanged. On its unbounded scale such
        a correlation has a vanishing gradient (z -> infinity), so a search stops there whether or not the optimum
        is; these are the points to compare it with."""
        theta = np.asarray(theta, dtype=np.float64)
        probes = []
        for s, part, cut in zip(self.structures, self.split(theta), self.slices):
            natural = s.to_natural(part)
            low, high = s.natural_lower(), s.natural_upper()
            for i in np.flatnonzero(~s.natural_is_sd()):
                width = high[i] - low[i]
                for bound, direction in ((low[i], 1.0), (high[i], -1.0)):
                    if abs(natural[i] - bound) >= tol * width:
                        continue
                    for distance in distances:
                        moved = natural.copy()
                        moved[i] = bound + direction * distance * width
                        probe = theta.copy()
                        probe[cut] = s.from_natural(moved)
                        probes.append(probe)
        return probes

    def natural(self, theta: np.ndarray) -> list[np.ndarray]:
        """Per term, the relative SDs and correlation parameters."""
        return [s.to_natural(part) for s, part in zip(self.structures, self.split(theta))]

    def theta_names(self, terms) -> list[str]:
        """Names of theta's entries: lme4's ``Subject.(Intercept)``-style labels for us terms, the structure's
        parameter names (``Subject.sd_ar1``, ``Subject.z(rho_ar1)``) for the others."""
        names = []
        for term, s in zip(terms, self.structures):
            if s.is_lme4_theta:
                cols = term.columns
                names += [f"{term.name}.{cols[i]}" if i == j else f"{term.name}.{cols[i]}.{cols[j]}"
                          for i, j in zip(*lower_indices(s.k))]
            else:
                natural = s.natural_names(term.columns)
                names += [f"{term.name}.{name}" if is_sd else f"{term.name}.z({name})"
                          for name, is_sd in zip(natural, s.natural_is_sd())]
        return names
