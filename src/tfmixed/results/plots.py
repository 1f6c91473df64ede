"""The estimation history of a fit and its plot (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

from functools import cached_property

import pandas as pd

from ..kernels.covariance import lower_indices
from .estimates import unique_names


class History:
    """Mixed into :class:`~tfmixed.results.LmerFit`."""

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
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("plot_history needs matplotlib: pip install 'tfmixed[plot]'") from None
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

