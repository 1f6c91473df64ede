"""The profiled criteria from the three numbers every kernel strategy delivers: log|L_theta|^2, log|R_X|^2 and
the penalised RSS r^2 (Bates et al. 2015):

    ML:   log|L_theta|^2 + n (1 + log(2 pi r^2 / n)) - sum log w
    REML: log|L_theta|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p))) - sum log w
"""

from __future__ import annotations

import numpy as np


class ProfiledCriterion:
    """Mixed into a kernel's factor, which provides ``logdet_L``, ``logdet_RX``, ``pwrss`` and ``problem``
    (with ``n``, ``p`` and ``cross_products.sum_log_weights``)."""

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
