"""Confidence intervals of a fit's parameters: profile likelihood, Wald, parametric bootstrap (lme4's ``confint``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DataError
from ..validation import require_rows_in_memory
from .base import FitBase
from .profile import _ProfileBase, interval_columns, profile_likelihood

CONFINT_METHODS = ("profile", "Wald", "boot")


@dataclass

class Profile:
    """zeta traces of every parameter (lme4's ``profile``): ``traces[name]`` has columns value and zeta."""

    traces: dict[str, pd.DataFrame]
    likelihood: _ProfileBase

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Profile intervals at ``level`` (limits solved exactly, not read off the traces)."""
        return self.likelihood.confint(level, which=list(self.traces))

    def plot(self, level: float = 0.95):
        """The zeta plot (lme4's ``xyplot(profile(fit))``): a matplotlib Figure."""
        from .plots import profile_figure

        return profile_figure(self, level)


class Intervals(FitBase):
    """Mixed into :class:`~tfmixed.results.LmerFit` and :class:`~tfmixed.results.glmm.GlmerFit`."""

    def confint(self, method: str = "profile", level: float = 0.95, *, which=None, n_boot: int = 500,
                seed: int | None = None, verbose: bool = True) -> pd.DataFrame:
        """Intervals for the random-effect SDs and correlations, sigma and the fixed effects, named as lme4's
        ``confint(fit, oldNames = FALSE)``: ``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``, ``sigma``.

        ``method="profile"`` (lme4's default): where the ML profile's zeta = +-z_{(1+level)/2}; ``"Wald"``:
        beta +- z SE for the fixed effects, NaN for the variance parameters (as lme4); ``"boot"``: percentiles of
        ``n_boot`` parametric bootstrap replicates (``seed``). ``which`` picks parameters by name.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> fit.confint("Wald").loc["Days"].round(4).tolist()
        [7.4376, 13.497]
        """
        if method not in CONFINT_METHODS:
            raise DataError(f"method must be one of {CONFINT_METHODS}, got {method!r}")
        if not 0 < level < 1:
            raise DataError(f"level must be between 0 and 1, got {level!r}")
        if method != "Wald":
            require_rows_in_memory(self.design, f"confint(method={method!r})", "use confint('Wald')")
        if method == "profile":
            return profile_likelihood(self, verbose=verbose).confint(level, which)
        if method == "Wald":
            table = self._wald_intervals(level)
        else:
            table = self.bootstrap(n_boot, seed=seed, verbose=verbose).confint(level)
        if which is None:
            return table
        unknown = [name for name in which if name not in table.index]
        if unknown:
            raise DataError(f"unknown parameter(s) {unknown}; the fit has {list(table.index)}")
        return table.loc[list(which)]

    def _wald_intervals(self, level: float) -> pd.DataFrame:
        z = stats.norm.ppf((1 + level) / 2)
        lower, upper = interval_columns(level)
        variance = pd.DataFrame(np.nan, index=self.sdcor.index, columns=[lower, upper])
        fixed = pd.DataFrame({lower: self.fixef - z * self.fixef_se, upper: self.fixef + z * self.fixef_se})
        return pd.concat([variance, fixed])

    def profile(self, which=None, *, points: int = 8, verbose: bool = True) -> Profile:
        """zeta(v) = sign(v - v_hat) sqrt(d(v) - d_hat) of each parameter (ML deviance, the others optimised),
        ``points`` values on each side out to the 99% limits (lme4's ``profile``).

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Yield ~ 1 + (1 | Batch)", tm.datasets.load("Dyestuff"), verbose=False)
        >>> list(fit.profile(verbose=False).traces)
        ['sd_(Intercept)|Batch', 'sigma', '(Intercept)']
        """
        require_rows_in_memory(self.design, "a profile", "use confint('Wald')")
        likelihood = profile_likelihood(self, verbose=verbose)
        names = likelihood.names if which is None else list(which)
        unknown = [name for name in names if name not in likelihood.names]
        if unknown:
            raise DataError(f"unknown parameter(s) {unknown}; the fit has {likelihood.names}")
        return Profile({name: likelihood.trace(name, points) for name in names}, likelihood)
