"""Inference on the fixed effects of a fit: Satterthwaite or Kenward-Roger df, t tests, F tests of terms."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from ..errors import DataError
from ..objective import LmmObjective
from .base import FitBase
from .ftests import DDF_METHODS, anova_table
from .kenward_roger import KenwardRoger
from .satterthwaite import SatterthwaiteParts, t_pvalues


class Inference(FitBase):
    """Mixed into :class:`~tfmixed.results.LmerFit`."""

    objective: LmmObjective

    @cached_property
    def _satterthwaite_parts(self) -> SatterthwaiteParts:
        # one factorisation at theta and two per theta component, shared by every contrast
        return SatterthwaiteParts(self.objective, self.optimum.theta, self.sigma)

    @cached_property
    def kenward_roger(self) -> KenwardRoger:
        """The Kenward-Roger adjustment (pbkrtest's ``vcovAdj`` and ``get_Lb_ddf``): the adjusted covariance of
        the fixed effects and denominator df of any contrast (REML fits)."""
        return KenwardRoger.of(self)

    def contrast_df(self, L) -> np.ndarray:
        """Satterthwaite degrees of freedom of each contrast l'beta, a row of ``L`` (lmerTest's ``contest``):

            nu = 2 (l' C l)^2 / (g' A g),   g = d (l' C(varpar) l) / d varpar,

        C = Var(beta_hat), A = 2 H^-1 the asymptotic covariance of the variance parameters.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> np.round(fit.contrast_df([[0.0, 1.0]]), 3).tolist()
        [17.0]
        """
        L = np.atleast_2d(np.asarray(L, dtype=np.float64))
        if L.shape[1] != self.problem.p:
            raise DataError(f"a contrast needs {self.problem.p} columns (one per fixed effect), got {L.shape[1]}")
        return self._satterthwaite_parts.contrast_df(L)

    @cached_property
    def satterthwaite_df(self) -> pd.Series:
        """Satterthwaite denominator degrees of freedom of each fixed effect (lmerTest); 2 factorisations
        per theta."""
        df = self._satterthwaite_parts.contrast_df(np.eye(self.problem.p))
        return pd.Series(df, index=self.design.fixed_names, name="df")

    @cached_property
    def vcov_beta_joint(self) -> pd.DataFrame:
        """The fixed effects' covariance with the variance parameters' uncertainty, as glmmTMB's ``vcov``:

            (X'V^-1 X)^-1 + J A J',   J = d beta_hat / d varpar,   A = 2 H^-1,

        H the Hessian of the criterion (REML or ML deviance, beta profiled) in varpar = (theta, sigma), beta_hat
        the GLS estimate at theta. Under ML this is the beta block of the inverse joint Hessian in (beta, varpar)
        (the block-inverse identity), under REML glmmTMB's marginal precision of beta. :attr:`vcov_beta` is
        lme4's plug-in, the first term alone. Raises :class:`DataError` at a boundary fit, where H is singular.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> bool((np.diag(fit.vcov_beta_joint) >= np.diag(fit.vcov_beta)).all())
        True
        """
        parts = self._satterthwaite_parts
        if parts.A is None:
            raise DataError("the joint covariance needs the Hessian in (theta, sigma) to be positive definite; this "
                            "fit is at a boundary (singular) or its gradient is not available: use vcov_beta")
        m = self.optimum.theta.size
        J = np.zeros((self.problem.p, m + 1))  # beta_hat does not depend on sigma: its column stays 0
        J[:, :m] = parts.beta_jacobian  # from the factorisations the df's Hessian already made
        covariance = self.vcov_beta.to_numpy() + J @ parts.A @ J.T
        names = self.design.fixed_names
        return pd.DataFrame((covariance + covariance.T) / 2, index=names, columns=names)

    @property
    def fixef_se_joint(self) -> pd.Series:
        """Standard errors from :attr:`vcov_beta_joint` (glmmTMB's)."""
        return pd.Series(np.sqrt(np.diag(self.vcov_beta_joint.to_numpy())), index=self.design.fixed_names,
                         name="Std. Error")

    @property
    def coef_table(self) -> pd.DataFrame:
        """Estimate, Std. Error, df (Satterthwaite), t value and Pr(>|t|), as lmerTest's summary."""
        return self.coefficient_tests("Satterthwaite")

    def coefficient_tests(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """t tests of each fixed effect with Satterthwaite's df, or Kenward-Roger's (``ddf="Kenward-Roger"``:
        the SE from the adjusted covariance Phi_A, df from pbkrtest's Lb_ddf; REML fits only).

        >>> import tfmixed as tm
        >>> fit = tm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", tm.datasets.load("Penicillin"), verbose=False)
        >>> round(float(fit.coefficient_tests("Kenward-Roger")["df"].iloc[0]), 4)
        5.4871
        """
        if ddf not in DDF_METHODS:
            raise DataError(f"ddf must be one of {DDF_METHODS}, got {ddf!r}")
        if ddf == "Satterthwaite":
            se, df = self.fixef_se, self.satterthwaite_df
        else:
            kr = self.kenward_roger
            identity = np.eye(self.problem.p)
            se = pd.Series(np.sqrt(np.diag(kr.Phi_A)), index=self.design.fixed_names)
            df = pd.Series(kr.coefficient_df(identity), index=self.design.fixed_names)
        t_values = self.fixef / se
        return pd.DataFrame({
            "Estimate": self.fixef,
            "Std. Error": se,
            "df": df,
            "t value": t_values,
            "Pr(>|t|)": t_pvalues(t_values.to_numpy(), df.to_numpy()),
        })

    def anova(self, type: int = 3, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """F tests of the fixed-effect terms as lmerTest's ``anova(fit, type, ddf)``: Sum Sq, Mean Sq, NumDF,
        DenDF, F value, Pr(>F). ``type=3`` (marginal, lmerTest's construction) or 1 (sequential);
        ``ddf="Satterthwaite"`` or ``"Kenward-Roger"`` (REML fits, dense in the number of rows).

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> round(float(fit.anova()["F value"].iloc[0]), 3)
        45.853
        """
        return anova_table(self, type=type, ddf=ddf)
