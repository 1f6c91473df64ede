"""Likelihood summaries of a fit: deviance, log-likelihood, information criteria (lme4's definitions)."""

from __future__ import annotations

import numpy as np

from .base import FitBase


class Likelihood(FitBase):
    """Mixed into :class:`~tfmixed.results.LmerFit`; reads the factor and sigma^2 of the estimates."""

    @property
    def deviance(self) -> float:
        """The REML criterion (REML fits) or the deviance -2 log L (ML fits) at the estimates, with lme4's
        prior-weights term -sum(log w)."""
        return self._factor.deviance_at_sigma(self._sigma2, self.reml)

    @property
    def loglik(self) -> float:
        """Log-likelihood (REML log-likelihood for REML fits), -deviance / 2."""
        return -self.deviance / 2.0

    @property
    def n_params(self) -> int:
        """Number of estimated parameters: theta, beta and sigma."""
        return self.theta.size + self.problem.p + 1

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + np.log(self.nobs) * self.n_params
