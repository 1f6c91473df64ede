"""The profiled criteria from the three numbers every kernel strategy delivers: log|L_theta|^2, log|R_X|^2 and
the penalised RSS r^2 (Bates et al. 2015):

    ML:   log|L_theta|^2 + n (1 + log(2 pi r^2 / n)) - sum log w
    REML: log|L_theta|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p))) - sum log w

and their gradient in theta from the per-term sums of the inverse's diagonal blocks and the spherical random
effects, which every strategy with a gradient delivers (exactly, or estimated as the iterative one does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .covariance import lower_indices

if TYPE_CHECKING:
    from ..protocols import FactoredProblem


class ProfiledCriterion:
    """Mixed into a kernel's factor, which provides ``logdet_L``, ``logdet_RX``, ``pwrss`` and ``problem``
    (with ``n``, ``p`` and ``cross_products.sum_log_weights``)."""

    problem: FactoredProblem

    if TYPE_CHECKING:  # provided by the factor
        @property
        def logdet_L(self) -> float: ...

        @property
        def logdet_RX(self) -> float: ...

        @property
        def pwrss(self) -> float: ...

    def dof(self, reml: bool) -> int:
        return self.problem.n - self.problem.p if reml else self.problem.n

    def deviance(self, reml: bool) -> float:
        """Profiled deviance (ML) or REML criterion at this theta (lme4's, with its weights term)."""
        dof = self.dof(reml)
        value = self.logdet_L + dof * (1.0 + np.log(2.0 * np.pi * self.pwrss / dof))
        value -= self.problem.cross_products.sum_log_weights
        return float(value + self.logdet_RX) if reml else float(value)

    def deviance_at_sigma(self, sigma2: float, reml: bool) -> float:
        """Deviance with sigma explicit: log|L|^2 + r^2/sigma^2 + dof log(2 pi sigma^2) - sum log w [+ log|R_X|^2]."""
        value = self.logdet_L + self.pwrss / sigma2 + self.dof(reml) * np.log(2 * np.pi * sigma2)
        value -= self.problem.cross_products.sum_log_weights
        return float(value + self.logdet_RX) if reml else float(value)

    def sigma2(self, reml: bool) -> float:
        """Profiled residual variance r^2 / (n - p) for REML, r^2 / n for ML."""
        return self.pwrss / self.dof(reml)


class FactorMembers:
    """What the mixins of a kernel's factor read from it (declared for the type checker; ``dof`` comes from
    :class:`ProfiledCriterion`)."""

    problem: FactoredProblem
    factors: list[np.ndarray]

    if TYPE_CHECKING:
        @property
        def pwrss(self) -> float: ...

        def dof(self, reml: bool) -> int: ...

        def spherical_effects(self) -> np.ndarray: ...


class ProfiledGradient(FactorMembers):
    """Mixed into a kernel's factor that provides ``inverse_block_sums(include_fixed)``, ``spherical_effects()``
    (u), ``factors`` (the T_t), ``pwrss``, ``dof`` and ``problem.terms``."""

    if TYPE_CHECKING:  # provided by the factor
        def inverse_block_sums(self, include_fixed: bool) -> list[np.ndarray]: ...

    def _singular_terms(self, singular_tol: float) -> list[bool]:
        scale = max(1.0, max(float(np.max(np.abs(T))) for T in self.factors))
        return [float(np.min(np.abs(np.diag(T)))) < singular_tol * scale for T in self.factors]

    def gradient_parts(self, reml: bool, singular_tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray] | None:
        """(d log-determinants / d theta, d r^2 / d theta), or None where they cannot be formed exactly.

        d log|Omega_P| / dT_ab = 2 [(L I - sum_j B_j) T^{-1}]_ba and d r^2 / dT_ab = -2 [T^{-T} U'U]_ab,
        with B_j the diagonal blocks of Omega_P^{-1} and U the L x k spherical random effects of the term.
        A scalar term at T = 0 has derivative exactly 0 (the criterion is even in its theta); a vector-valued
        term whose T is singular to ``singular_tol`` (relative) returns None. The T^{-1} formula loses only
        ~eps / sigma_min(T) relative, so a small diagonal of a badly scaled covariate is no reason to refuse it.
        """
        key = (bool(reml), singular_tol)
        kept = self.__dict__.setdefault("_kept_gradient_parts", {})
        if key not in kept:  # a factor is fixed at one theta: the gradient and the evidence step share these
            kept[key] = self._gradient_parts(reml, singular_tol)
        return kept[key]

    def _gradient_parts(self, reml: bool, singular_tol: float) -> tuple[np.ndarray, np.ndarray] | None:
        d_logdet = self.logdet_gradient(include_fixed=reml, singular_tol=singular_tol)
        if d_logdet is None:
            return None
        u = self.spherical_effects()
        r2_parts, offset = [], 0
        for term, T, is_singular in zip(self.problem.terms, self.factors, self._singular_terms(singular_tol)):
            rows, cols = lower_indices(term.n_cols)
            if is_singular:
                r2_parts.append(np.zeros(1))
            else:
                U = u[offset : offset + term.q].reshape(term.n_levels, term.n_cols)
                r2_parts.append((-2.0 * np.linalg.inv(T).T @ (U.T @ U))[rows, cols])
            offset += term.q
        return d_logdet, np.concatenate(r2_parts)

    def gradient(self, reml: bool, singular_tol: float = 1e-9) -> np.ndarray | None:
        """Gradient of the profiled criterion in theta: d log-dets + dof (d r^2) / r^2; None as gradient_parts."""
        parts = self.gradient_parts(reml, singular_tol)
        if parts is None:
            return None
        d_logdet, d_r2 = parts
        return d_logdet + self.dof(reml) * d_r2 / self.pwrss

    def logdet_gradient(self, include_fixed: bool = False, singular_tol: float = 1e-9) -> np.ndarray | None:
        """d log|Omega_P| / d theta at fixed weights (Omega_P as in ``inverse_block_sums``); None where a
        vector-valued T is singular (see :meth:`gradient_parts`)."""
        singular = self._singular_terms(singular_tol)
        for T, is_singular in zip(self.factors, singular):
            if is_singular and (T.shape[0] > 1 or T[0, 0] != 0.0):
                return None
        return self.logdet_gradient_from(self.inverse_block_sums(include_fixed=include_fixed), singular)

    def logdet_gradient_from(self, sums: list[np.ndarray], singular: list[bool]) -> np.ndarray:
        """d log|Omega_P| / d theta given the per-term inverse block sums (exact or estimated)."""
        parts = []
        for term, T, B, is_singular in zip(self.problem.terms, self.factors, sums, singular):
            rows, cols = lower_indices(term.n_cols)
            if is_singular:
                parts.append(np.zeros(1))
            else:
                parts.append((2.0 * ((term.n_levels * np.eye(term.n_cols) - B) @ np.linalg.inv(T)).T)[rows, cols])
        return np.concatenate(parts)
