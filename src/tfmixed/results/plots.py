"""Plots of a fit (matplotlib, the ``plot`` extra): estimation history, caterpillar plots of the conditional
modes, residuals against fitted values, normal QQ plots, profile zeta traces. Each returns the Figure."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DataError
from ..kernels.covariance import lower_indices
from ..objective import LmmObjective
from ..validation import require_rows_in_memory
from .base import FitBase
from .estimates import unique_names


def pyplot():
    """matplotlib.pyplot, or an ImportError that names the extra to install."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'tfmixed[plot]'") from None
    return plt


def _grid(count: int, width: float = 3.4, height: float = 3.0):
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, axes = pyplot().subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for axis in axes.ravel()[count:]:
        axis.set_visible(False)
    return figure, axes.ravel()[:count]


def _normal_qq(axis, values: np.ndarray, title: str) -> None:
    values = np.sort(np.asarray(values, dtype=np.float64))
    n = values.size
    theoretical = stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n)
    axis.plot(theoretical, values, ".", markersize=4)
    q1, q3 = np.quantile(values, [0.25, 0.75])
    slope = (q3 - q1) / (stats.norm.ppf(0.75) - stats.norm.ppf(0.25))
    axis.plot(theoretical, np.median(values) + slope * theoretical, "-", linewidth=1)  # R's qqline
    axis.set_xlabel("standard normal quantiles")
    axis.set_title(title, fontsize=9)


def profile_figure(profile, level: float = 0.95):
    """zeta against each parameter with the +-z lines of ``level`` (lme4's ``xyplot(profile(fit))``)."""
    z = stats.norm.ppf((1 + level) / 2)
    figure, axes = _grid(len(profile.traces))
    for axis, (name, trace) in zip(axes, profile.traces.items()):
        axis.plot(trace["value"], trace["zeta"], "-o", markersize=3)
        for line in (-z, 0.0, z):
            axis.axhline(line, color="grey", linewidth=0.6, linestyle="--" if line else ":")
        axis.set_title(name, fontsize=9)
        axis.set_ylabel("zeta")
    figure.tight_layout()
    return figure


class Plots(FitBase):
    """Mixed into :class:`~tfmixed.results.LmerFit`: diagnostic plots."""

    def plot_ranef(self, level: float = 0.95, factor: str | None = None):
        """Caterpillar plot: each level's conditional mode with a +-z conditional-SD interval, sorted, one panel
        per term column (lme4's ``dotplot(ranef(fit, condVar = TRUE))``). ``factor`` picks one grouping factor.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> len(fit.plot_ranef().axes)
        2
        """
        if not 0 < level < 1:
            raise DataError(f"level must be between 0 and 1, got {level!r}")
        frame = self.ranef_frame()
        if factor is not None:
            if factor not in set(frame["grpvar"]):
                raise DataError(f"unknown grouping factor {factor!r}; the fit has {sorted(set(frame['grpvar']))}")
            frame = frame[frame["grpvar"] == factor]
        panels = list(frame.groupby(["grpvar", "term"], sort=False))
        z = stats.norm.ppf((1 + level) / 2)
        figure, axes = _grid(len(panels), height=max(3.0, min(12.0, 0.12 * frame.groupby(["grpvar", "term"]).size().max())))
        for axis, ((group, term), panel) in zip(axes, panels):
            panel = panel.sort_values("condval")
            position = np.arange(len(panel))
            axis.errorbar(panel["condval"], position, xerr=z * panel["condsd"], fmt="o", markersize=3, linewidth=0.8)
            axis.axvline(0.0, color="grey", linewidth=0.6)
            if len(panel) <= 40:
                axis.set_yticks(position, panel["grp"].tolist(), fontsize=7)
            axis.set_title(f"{group}: {term}", fontsize=9)
        figure.tight_layout()
        return figure

    def plot_residuals(self):
        """Residuals against fitted values, with the zero line (lme4's ``plot(fit)``).

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> fit.plot_residuals().axes[0].get_xlabel()
        'fitted values'
        """
        require_rows_in_memory(self.design, "plot_residuals()", "fit.residuals is a Dask series; plot a sample of it")
        figure, axes = _grid(1, width=4.5, height=3.5)
        axes[0].plot(self.fitted, self.residuals, ".", markersize=4)
        axes[0].axhline(0.0, color="grey", linewidth=0.6)
        axes[0].set_xlabel("fitted values")
        axes[0].set_ylabel("residuals")
        figure.tight_layout()
        return figure

    def plot_qq(self, which: str = "residuals"):
        """Normal QQ plot of the scaled residuals (``which="residuals"``) or of the conditional modes of each
        term column (``"ranef"``), with R's qqline through the quartiles.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> len(fit.plot_qq("ranef").axes)
        2
        """
        if which == "residuals":
            require_rows_in_memory(self.design, "plot_qq('residuals')", "fit.residuals is a Dask series; plot a "
                                   "sample of it")
            figure, axes = _grid(1, width=4.5, height=3.5)
            _normal_qq(axes[0], self.residuals / self.sigma if self.has_residual else self.residuals,
                       "scaled residuals")
        elif which == "ranef":
            frame = self.ranef_frame()
            panels = list(frame.groupby(["grpvar", "term"], sort=False))
            figure, axes = _grid(len(panels))
            for axis, ((group, term), panel) in zip(axes, panels):
                _normal_qq(axis, panel["condval"].to_numpy(), f"{group}: {term}")
        else:
            raise DataError(f"which must be 'residuals' or 'ranef', got {which!r}")
        figure.tight_layout()
        return figure


class History(FitBase):
    """Mixed into :class:`~tfmixed.results.LmerFit`."""

    objective: LmmObjective

    @cached_property
    def history(self) -> pd.DataFrame:
        """One row per iteration (per criterion evaluation for the profiled method): every variance and
        covariance of every term, sigma2 and the criterion."""
        rows = []
        names = unique_names([term.name for term in self.design.terms])
        for index, entry in enumerate(self.optimum.history):
            if isinstance(entry, tuple):  # profiled: (theta, criterion), sigma^2 profiled at theta
                theta, criterion = entry
                factor = self.objective.factor(theta)
                sigma2 = factor.sigma2(self.reml)
                G = [sigma2 * T @ T.T for T in factor.factors]
            else:
                G, sigma2, criterion = entry.G, entry.sigma2, entry.criterion
            row = {"iteration": index, "criterion": criterion, "sigma2": sigma2}
            for name, term, matrix in zip(names, self.design.terms, G):
                rows_, cols_ = lower_indices(term.n_cols)
                for i, j in zip(rows_, cols_):
                    label = term.columns[i] if i == j else f"{term.columns[j]}:{term.columns[i]}"
                    row[f"{name} {label}"] = matrix[i, j]
            rows.append(row)
        return pd.DataFrame(rows).set_index("iteration")

    def plot_history(self, *others: "History", labels: list[str] | None = None):
        """Trajectories of every variance component and the criterion, this fit and ``others`` side by side.

        Needs matplotlib (``pip install tfmixed[plot]``). Returns the matplotlib Figure.
        """
        plt = pyplot()
        fits = [self, *others]
        labels = labels or [fit.method for fit in fits]
        columns = [c for c in self.history.columns if c != "criterion"] + ["criterion"]
        figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.0), squeeze=False)
        for axis, column in zip(axes[0], columns):
            for fit, label in zip(fits, labels):
                if column in fit.history:
                    axis.plot(fit.history.index, fit.history[column], marker=".", label=label)
            axis.set_title(column, fontsize=9)
            axis.set_xlabel("iteration")
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
        return figure

