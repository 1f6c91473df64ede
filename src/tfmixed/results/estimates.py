"""Point estimates of a fitted linear mixed model: fixed effects, variance components, conditional modes."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from ..design import Design, frames_by_factor
from ..errors import DataError
from ..objective import LmmObjective
from ..partitioned import PartitionedDesign
from .base import FitBase
from .optsum import OptSummary


def unique_names(names: list[str]) -> list[str]:
    """lme4's names for repeated grouping factors: g, g.1, g.2, ..."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        out.append(name if count == 0 else f"{name}.{count}")
        seen[name] = count + 1
    return out


class Estimates(FitBase):
    """The estimates of a fit: built from the design, the objective and an estimator's result."""

    def __init__(self, design: Design | PartitionedDesign, objective: LmmObjective, optimum):
        self.design, self.objective, self.optimum = design, objective, optimum
        self.reml = objective.reml
        self.problem = objective.problem
        # a fixed-point fit hands over the factorisation its last state already holds
        factor = optimum.factor if optimum.factor is not None else objective.factor(optimum.theta)
        # fixed-point methods estimate sigma^2 themselves; the profiled method takes it from the optimum
        sigma2 = factor.sigma2(self.reml) if optimum.sigma2 is None else float(optimum.sigma2)
        self._set_estimates(factor, sigma2, *factor.solve())

    #: whether the model has a residual variance (a Gaussian response); GLMMs have none
    has_residual = True

    def _set_estimates(self, factor, sigma2: float, beta: np.ndarray, u: np.ndarray) -> None:
        """The kernel factor at the estimates, the scale sigma^2 of Lambda, beta and the spherical modes u."""
        self._factor, self.factors = factor, factor.factors
        self._sigma2 = sigma2
        self._beta, self._u = beta, u
        self._b = factor.u_to_b(u)

    @property
    def formula(self) -> str:
        return self.design.formula

    @property
    def theta(self) -> np.ndarray:
        """The covariance parameters: for unstructured terms lme4's theta (lower triangles of T, column-major),
        for structured terms their structure's parameters (:attr:`theta_names`)."""
        return self.optimum.theta.copy()

    @cached_property
    def optsum(self) -> OptSummary:
        """The fit record: initial and final theta, evaluations, the stages taken and where each stopped, every
        tolerance used, the backend and block strategies (MixedModels.jl's ``OptSummary``)."""
        return OptSummary.of(self.optimum, criterion_name="REML" if self.reml else "ML", theta_names=self.theta_names,
                             strategies=self.problem.strategies)

    @property
    def theta_names(self) -> list[str]:
        """Names of :attr:`theta`'s entries."""
        return self.objective.covariance.theta_names(self.design.terms)

    @property
    def converged(self) -> bool:
        return self.optimum.converged

    @property
    def method(self) -> str:
        """The estimator: "profiled" (lme4's), "em", "evidence" or "mackay"."""
        return self.optimum.method

    @property
    def sigma(self) -> float:
        """Residual standard deviation (for unit prior weight)."""
        return float(np.sqrt(self._sigma2))

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates beta."""
        return pd.Series(self._beta, index=self.design.fixed_names, name="Estimate")

    @cached_property
    def vcov_beta(self) -> pd.DataFrame:
        """Covariance matrix of the fixed-effects estimates, sigma^2 (R_X'R_X)^{-1}."""
        names = self.design.fixed_names
        return pd.DataFrame(self._sigma2 * self._factor.vcov_beta_unscaled(), index=names, columns=names)

    def vcov(self) -> pd.DataFrame:
        """lme4's ``vcov(fit)``: the covariance of the fixed effects (:attr:`vcov_beta`)."""
        return self.vcov_beta

    def coef(self) -> dict[str, pd.DataFrame]:
        """lme4's ``coef(fit)``: per grouping factor, each level's coefficients, the fixed effects plus that
        level's random effects where a term has the column (levels x fixed-effect names).

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> fit.coef()["Subject"].loc["308"].round(2).tolist()
        [253.66, 19.67]
        """
        out = {}
        for factor, frame in self.ranef.items():
            table = pd.DataFrame(np.tile(self.fixef.to_numpy(), (len(frame), 1)), index=frame.index,
                                 columns=self.fixef.index)
            for column in frame.columns:
                if column not in table.columns:
                    table[column] = 0.0  # a random effect without a fixed one, as lme4 adds it
                table[column] = table[column] + frame[column]
            out[factor] = table
        return out

    @property
    def fixef_se(self) -> pd.Series:
        """Standard errors of the fixed effects (NaN where the covariance's diagonal is not positive, as at a
        separated GLMM's optimum, which the fit reports as not converged)."""
        diagonal = np.diag(self.vcov_beta.to_numpy())
        se = np.sqrt(np.where(diagonal >= 0, diagonal, np.nan))
        return pd.Series(se, index=self.design.fixed_names, name="Std. Error")

    def covariance_matrices(self) -> list[np.ndarray]:
        """Per random-effects term, the covariance matrix G_t = sigma^2 T_t T_t'."""
        return [self._sigma2 * T @ T.T for T in self.factors]

    @property
    def varcorr(self) -> pd.DataFrame:
        """Variance components in the layout of lme4's ``as.data.frame(VarCorr(fit))``."""
        rows: list[tuple] = []
        names = unique_names([term.name for term in self.design.terms])
        for name, term, G in zip(names, self.design.terms, self.covariance_matrices()):
            sd = np.sqrt(np.diag(G))
            for i, column in enumerate(term.columns):
                rows.append((name, column, None, G[i, i], sd[i]))
            for j in range(term.n_cols):
                for i in range(j + 1, term.n_cols):
                    corr = G[i, j] / (sd[i] * sd[j]) if sd[i] > 0 and sd[j] > 0 else np.nan
                    rows.append((name, term.columns[j], term.columns[i], G[i, j], corr))
        if self.has_residual:
            rows.append(("Residual", None, None, self._sigma2, self.sigma))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    @property
    def sdcor(self) -> pd.Series:
        """Random-effect standard deviations and correlations, then sigma, named and ordered as lme4's
        ``confint(fit, oldNames = FALSE)``: per term its lower triangle column by column (``sd_x|g`` on the
        diagonal, ``cor_y.x|g`` below it)."""
        return pd.Series(self.sdcor_values(), index=self.sdcor_names(), dtype=np.float64)

    def sdcor_names(self) -> list[str]:
        names = []
        for group, term in zip(unique_names([t.name for t in self.design.terms]), self.design.terms):
            names += [f"{name}|{group}" for name in term.structure.natural_names(term.columns)]
        return names + (["sigma"] if self.has_residual else [])

    def sdcor_values(self) -> np.ndarray:
        """The numbers of :attr:`sdcor`: per term its structure's natural values, standard deviations scaled by
        sigma (NaN for the correlation of a zero-variance column of an unstructured term)."""
        covariance, scale = self.objective.covariance, np.sqrt(self._sigma2)
        values = [natural * np.where(s.natural_is_sd(), scale, 1.0)
                  for s, natural in zip(covariance.structures, covariance.natural(self.theta))]
        if self.has_residual:
            values.append(np.array([self.sigma]))
        return np.concatenate(values)

    @property
    def structure_parameters(self) -> pd.DataFrame:
        """The covariance structures' own correlation parameters (rho of ``ar1`` and ``cs``, the lag correlations
        of ``toep``), one row each, as glmmTMB prints them; empty for unstructured and diagonal terms."""
        rows = []
        covariance = self.objective.covariance
        names = unique_names([t.name for t in self.design.terms])
        for group, s, part in zip(names, covariance.structures, covariance.split(self.theta)):
            rows += [(group, s.code, name, value) for name, value in s.structure_parameters(part).items()]
        return pd.DataFrame(rows, columns=["grp", "structure", "parameter", "value"])

    @property
    def b(self) -> np.ndarray:
        """Conditional modes of all random effects, in Z's column order."""
        return self._b.copy()

    def lambda_times(self, u) -> np.ndarray:
        """b = Lambda u: spherical random effects u (each N(0, sigma^2 I) a priori) mapped through the fitted
        relative covariance factor Lambda, lme4's ``getME(fit, "Lambda") %*% u``.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Yield ~ 1 + (1 | Batch)", tm.datasets.load("Dyestuff"), verbose=False)
        >>> bool(np.allclose(fit.lambda_times(np.ones(6)), fit.theta[0]))
        True
        """
        u = np.asarray(u, dtype=np.float64).ravel()
        if u.size != self._b.size:
            raise DataError(f"u needs {self._b.size} values (one per random effect), got {u.size}")
        return self._factor.u_to_b(u)

    def _per_term(self, vector: np.ndarray) -> list[np.ndarray]:
        return [vector[s].reshape(t.n_levels, t.n_cols) for t, s in zip(self.design.terms, self.design.term_slices)]

    @cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes E(b | y) per grouping factor, one row per level, one column per term column."""
        return frames_by_factor(self.design.terms, self._per_term(self._b))

    @cached_property
    def _condvar_blocks(self) -> list[np.ndarray]:
        blocks = self._factor.inverse_diagonal_blocks()
        return [self._sigma2 * T[None] @ B @ T.T[None] for T, B in zip(self.factors, blocks)]

    @property
    def ranef_condvar(self) -> dict[str, list[np.ndarray]]:
        """Conditional covariances Var(b_j | y) (lme4's ``condVar``), per factor one (levels, k, k) array per term."""
        out: dict[str, list[np.ndarray]] = {}
        for term, block in zip(self.design.terms, self._condvar_blocks):
            out.setdefault(term.name, []).append(block)
        return out

    def ranef_frame(self) -> pd.DataFrame:
        """Conditional modes and SDs in the long layout of lme4's ``as.data.frame(ranef(fit, condVar=TRUE))``
        (level labels as strings, as R prints them)."""
        pieces = []
        for term, modes, block in zip(self.design.terms, self._per_term(self._b), self._condvar_blocks):
            sds = np.sqrt(np.diagonal(block, axis1=1, axis2=2))
            labels = np.asarray(term.levels.astype(str))
            for i, column in enumerate(term.columns):
                pieces.append(pd.DataFrame(
                    {"grpvar": term.name, "term": column, "grp": labels, "condval": modes[:, i], "condsd": sds[:, i]}
                ))
        return pd.concat(pieces, ignore_index=True)

    @cached_property
    def fitted(self) -> pd.Series:
        """Fitted values X beta + Z b + offset, on the index of the data's rows (those kept); a Dask series for
        partitioned data."""
        return self._on_rows(self.design.fitted(self._beta, self._b), "fitted")

    @property
    def residuals(self) -> pd.Series:
        """Response residuals y - fitted, on the rows' index (a Dask series for partitioned data)."""
        if not self.design.in_memory:
            return self.design.residuals(self._beta, self._b)
        return self._on_rows(self.design.y - self.fitted.to_numpy(), "residuals")

    def _on_rows(self, values, name: str):
        """``values`` as a Series on the model's rows (the input's index, less the rows dropped for missing
        values); partitioned data's Dask collections pass through."""
        if not self.design.in_memory:
            return values
        index = self.design.row_index
        return pd.Series(np.asarray(values), index=pd.RangeIndex(len(values)) if index is None else index, name=name)

    @property
    def nobs(self) -> int:
        return self.design.nobs

    @property
    def ngroups(self) -> dict[str, int]:
        """Number of levels of each grouping factor."""
        return {term.name: term.n_levels for term in self.design.terms}

    @property
    def is_singular(self) -> bool:
        """lme4's ``isSingular``: a bounded theta (a relative standard deviation) within 1e-4 of 0."""
        return self.objective.is_singular(self.theta)
