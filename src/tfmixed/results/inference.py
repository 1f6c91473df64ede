"""Inference on the fixed effects of a fit: Satterthwaite df, t tests."""

from __future__ import annotations

from functools import cached_property

import pandas as pd

from .satterthwaite import satterthwaite_df, t_pvalues


class Inference:
    """Mixed into :class:`~tfmixed.results.LmerFit`."""

    @cached_property
    def satterthwaite_df(self) -> pd.Series:
        """Satterthwaite denominator degrees of freedom of each fixed effect (lmerTest); 2 factorisations
        per theta."""
        df = satterthwaite_df(self.objective, self.optimum.theta, self.sigma)
        return pd.Series(df, index=self.design.fixed_names, name="df")

    @property
    def coef_table(self) -> pd.DataFrame:
        """Estimate, Std. Error, df (Satterthwaite), t value and Pr(>|t|), as lmerTest's summary."""
        t_values = self.fixef / self.fixef_se
        df = self.satterthwaite_df
        return pd.DataFrame({
            "Estimate": self.fixef,
            "Std. Error": self.fixef_se,
            "df": df,
            "t value": t_values,
            "Pr(>|t|)": t_pvalues(t_values.to_numpy(), df.to_numpy()),
        })
