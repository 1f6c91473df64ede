"""The statistics of an evidence update, summed over the batches of one pass, and the gammas they give.

MacKay's update needs, per penalised group, gamma = sum_j (1 - Var(e_j | y) / tau^2), the number of well-determined
parameters, from the posterior of the network linearised at its weights. Its random effects and last linear layer
form a linear mixed model: random-effects columns d yhat / d e (codes of each factor, values s_i x_ic), fixed
columns the last layer's scaled features t_i [a_i, 1], response the residuals. Its cross-products are sums over
rows (:class:`~tfmixed.cross_products.CrossProductsSum`), so one pass of any length fills them in memory
independent of the number of rows; the mixed-model kernel then gives Omega^{-1}'s block sums.

``coupling="exact"`` keeps every group in one model (crossed factors coupled: the kernel's Schur complement has
the columns of every group but the largest). ``coupling="within_factor"`` fits one model per factor (its
columns jointly, with the fixed layer): exact for a single factor, and for several it leaves out how the
posteriors of crossed factors correlate, which the data's crossing makes small when each level has many rows;
it is what scales to a million-level factor crossed with a ten-thousand-level one. ``"auto"`` takes the exact
model when the columns outside the largest group number at most ``EXACT_REST_COLUMNS`` and, times the largest
group's levels, at most ``EXACT_COUPLING_ENTRIES`` (the kernel's coupling block).

Penalised Dense kernels use the diagonal Gauss-Newton posterior, its curvature from random-sign probes
(:meth:`~tfmixed.keras.linearisation.Linearisation.decay_curvature`) over at most ``max_probes`` groups of
``probe_rows`` rows per pass, scaled to all rows (an unbiased estimate; relative error about sqrt(2 / probes)
per weight, less on gamma, which sums over weights).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..cross_products import CrossProductsSum
from ..checks import aliased_from_gram
from ..errors import DataError, TfmixedError, TfmixedWarning
from ..kernels.pls import PLSProblem
from ..terms import RandomEffectsTerm

#: "auto" couples the groups exactly while the kernel's Schur complement stays this small and its coupling
#: block (largest group's levels x the other columns) this small
EXACT_REST_COLUMNS = 4000
EXACT_COUPLING_ENTRIES = 20_000_000
COUPLINGS = ("auto", "exact", "within_factor")


@dataclass(frozen=True)
class Group:
    """One penalised random-effects column: ``factor``'s column ``column`` of RandomEffects layer ``layer``."""

    label: str
    layer: int
    factor: str
    column: int
    n_levels: int


def choose_coupling(coupling: str, groups: list[Group]) -> str:
    if coupling not in COUPLINGS:
        raise DataError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    if coupling != "auto":
        return coupling
    sizes = sorted((g.n_levels for g in groups), reverse=True)
    rest = sum(sizes[1:])
    return "exact" if rest <= EXACT_REST_COLUMNS and sizes[0] * rest <= EXACT_COUPLING_ENTRIES else "within_factor"


class RandomEffectsEvidence:
    """Cross-products of the linearised mixed model over one pass, then gamma per group."""

    def __init__(self, groups: list[Group], coupling: str, n_fixed: int):
        self.groups, self.coupling, self.p = list(groups), coupling, int(n_fixed)
        if coupling == "exact":
            order = sorted(range(len(groups)), key=lambda i: -groups[i].n_levels)
            self.models = [(order, CrossProductsSum(tuple((groups[i].n_levels, 1) for i in order), self.p))]
        else:
            by_factor: dict[tuple[int, str], list[int]] = {}
            for i, group in enumerate(groups):
                by_factor.setdefault((group.layer, group.factor), []).append(i)
            self.models = [(members, CrossProductsSum(((groups[members[0]].n_levels, len(members)),), self.p))
                           for members in by_factor.values()]
        self.fixed_rank = self.p

    def add(self, codes: dict[tuple[int, str], np.ndarray], values: list[np.ndarray], X: np.ndarray,
            residual: np.ndarray) -> None:
        """One batch of the exact model: codes per (layer, factor), values per group (d yhat / d e), fixed
        columns, residuals (the within-factor models take :meth:`add_level_sums`)."""
        if self.coupling != "exact":
            raise ValueError("rows are added to the exact model; within-factor models take per-level sums")
        (members, running), = self.models
        running.add(X, residual, [RandomEffectsTerm(codes[self._key(i)], values[i][:, None],
                                                    np.arange(self.groups[i].n_levels)) for i in members])

    def add_level_sums(self, per_factor, gram: np.ndarray, n: int, distinct: bool) -> None:
        """One batch of the within-factor models, summed per level in the network's graph
        (:meth:`~tfmixed.keras.linearisation.Linearisation.level_sums`), factors in the groups' order."""
        for (members, running), (levels, blocks, level_xy) in zip(self.models, per_factor):
            running.add_level_sums(levels, blocks, level_xy, gram, n, distinct=distinct)

    def _key(self, i: int) -> tuple[int, str]:
        return self.groups[i].layer, self.groups[i].factor

    @property
    def nbytes(self) -> int:
        return sum(running.nbytes for _, running in self.models)

    def gammas(self, sigma2: float, tau2: dict[str, float], problems: dict | None = None) -> dict[str, float]:
        """gamma per group label: L - sum_j (Omega^{-1})_jj at T = sqrt(tau^2 / sigma^2) (spherical units).

        ``problems`` carries the kernel's problems from one update to the next: the level codes never change, so
        neither do the cross-products' patterns, and the strategies chosen for them are only refilled."""
        problems = {} if problems is None else problems
        out: dict[str, float] = {}
        for index, (members, running) in enumerate(self.models):
            cross_products = running.total()
            kept = np.setdiff1d(np.arange(self.p), aliased_from_gram(cross_products.xy_xy[:-1, :-1]))
            cross_products = cross_products.select_fixed(kept) if kept.size < self.p else cross_products
            self.fixed_rank = int(kept.size)
            groups = [self.groups[i] for i in members]
            scales = [np.sqrt(tau2[g.label] / sigma2) for g in groups]
            factors = ([np.array([[s]]) for s in scales] if self.coupling == "exact" else [np.diag(scales)])
            sums = self._block_sums(cross_products, factors, problems, index)
            if self.coupling == "exact":
                out.update({g.label: float(g.n_levels - B[0, 0]) for g, B in zip(groups, sums)})
            else:
                out.update({g.label: float(g.n_levels - sums[0][c, c]) for c, g in enumerate(groups)})
        return out

    @staticmethod
    def _block_sums(cross_products, factors, problems: dict, index: int) -> list[np.ndarray]:
        try:
            # Omega^{-1}'s blocks do not depend on the response; the residuals keep the augmented system definite
            problem = _refilled(problems.get(index), cross_products)
            problems[index] = problem
            return problem.factorize(factors).inverse_block_sums(include_fixed=cross_products.p > 0)
        except TfmixedError:
            warnings.warn("the last layer's features are collinear; gamma ignores the fixed-effects coupling",
                          TfmixedWarning, stacklevel=4)
            alone = cross_products.select_fixed(np.zeros(0, dtype=np.int64))
            return PLSProblem(alone).factorize(factors).inverse_block_sums(include_fixed=False)


def _refilled(previous: PLSProblem | None, cross_products) -> PLSProblem:
    """``previous`` refilled with these cross-products when their structure and sparsity patterns are the same
    (the next update of the same rows), else a new problem."""
    if previous is not None:
        old = previous.cross_products
        same = (old.dims == cross_products.dims and old.p == cross_products.p
                and all(np.array_equal(getattr(a, part), getattr(b, part))
                        for a, b in ((old.rest_first, cross_products.rest_first), (old.rest_rest, cross_products.rest_rest))
                        for part in ("indptr", "indices")))
        if same:
            return previous.reweighted(cross_products)
    return PLSProblem(cross_products)


class DecayEvidence:
    """Diagonal Gauss-Newton curvature of penalised Dense kernels from random-sign probes over one pass."""

    def __init__(self, shapes: list[tuple[int, ...]], n_rows: int, *, probe_rows: int = 32, max_probes: int = 2048,
                 seed: int = 0):
        self.squares = [np.zeros(shape) for shape in shapes]
        self.probe_rows, self.n_rows = int(probe_rows), int(n_rows)
        # probe every row while that takes at most max_probes groups, else an even share of each batch
        self.fraction = min(1.0, max_probes * probe_rows / max(n_rows, 1))
        self.rows_probed = 0
        self.rng = np.random.default_rng(seed)

    def add(self, linearisation, inputs: dict[str, np.ndarray], weights: np.ndarray) -> None:
        rows = len(weights)
        if self.fraction >= 1.0:
            take, chosen = rows, np.arange(rows)
        else:  # a random share of the batch: its first rows could all be alike (rows sorted by a factor)
            take = int(np.ceil(self.fraction * rows))
            chosen = np.sort(self.rng.choice(rows, size=take, replace=False))
        for start in range(0, take, self.probe_rows):
            part = chosen[start : start + self.probe_rows]
            signs = self.rng.choice([-1.0, 1.0], size=part.size)
            coefficients = signs * np.sqrt(weights[part])
            batch = {k: np.asarray(v)[part] for k, v in inputs.items()}
            for total, square in zip(self.squares, linearisation.decay_curvature(batch, coefficients)):
                total += square
        self.rows_probed += take

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.squares)

    def gammas(self, sigma2: float, tau2: list[float]) -> list[float]:
        """gamma = sum_w (1 - 1 / (tau^2 h_w)), h_w = sum_i W_i (d yhat_i / d w)^2 / sigma^2 + 1 / tau^2."""
        scale = self.n_rows / max(self.rows_probed, 1)
        out = []
        for squares, t2 in zip(self.squares, tau2):
            precision = scale * squares / sigma2 + 1.0 / t2
            out.append(float(np.sum(1.0 - 1.0 / (t2 * precision))))
        return out
