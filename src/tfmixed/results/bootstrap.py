"""Simulation from a fitted mixed model and the parametric bootstrap (lme4's ``simulate`` and ``bootMer``).

A replicate draws u* ~ N(0, sigma^2 I) (b* = Lambda u*) and e*_i ~ N(0, sigma^2 / w_i), forms
y* = X beta + Z b* + o + e*, and refits by the fit's own criterion, by Newton steps from the fit's theta in the metric of its
Hessian, with the design and the kernel's strategies reused (:func:`tfmixed.refit.refit`). Replicate i draws from the i-th child of
``numpy.random.SeedSequence(seed)``, so results do not depend on how many processes run them.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConvergenceWarning, DataError, SingularFitWarning, TfmixedError
from ..progress import Progress
from ..refit import criterion_inverse_hessian, refit, require_exact_kernel
from ..validation import require_rows_in_memory
from .base import FitBase
from .profile import interval_columns

#: below this many replicates a bootstrap runs in one process by default (starting workers costs ~0.1 s)
PARALLEL_MIN_REPLICATES = 200

#: the fit a forked worker process refits (set in the parent just before the workers start)
_WORKER_STATE: dict = {}


def default_statistic(fit) -> pd.Series:
    """Fixed effects, random-effect SDs and correlations, and sigma (the quantities of lme4's ``confint``)."""
    return pd.Series(_default_values(fit), index=list(fit.design.fixed_names) + fit.sdcor_names())


def _default_values(fit) -> np.ndarray:
    # the replicates' statistic without building a Series each time (a third of a small refit's overhead)
    return np.concatenate([fit.fixef.to_numpy(), fit.sdcor_values()])


def _draw(fit, rng: np.random.Generator, condition_on_modes: bool) -> np.ndarray:
    design = fit.design
    if condition_on_modes:
        random_part = design.z_times(fit.b)
    else:
        q = sum(term.q for term in design.terms)
        random_part = design.z_times(fit.lambda_times(fit.sigma * rng.standard_normal(q)))
    return fit.draw_response(design.X @ fit.fixef.to_numpy() + design.offset_or_zero + random_part, rng)


def _check_re_form(re_form) -> bool:
    """lme4's ``simulate`` convention: NA (default) draws new random effects, None conditions on the modes."""
    if re_form is None:
        return True
    if isinstance(re_form, str) and re_form.replace(" ", "") in ("NA", "~0", "fixed"):
        return False
    raise DataError(f"re_form must be 'NA' (new random effects, lme4's default) or None (condition on the "
                    f"conditional modes), got {re_form!r}")


def _replicate(fit, seed_sequence, statistic, condition_on_modes, metric) -> tuple[np.ndarray | None, bool, bool]:
    y_star = _draw(fit, np.random.default_rng(seed_sequence), condition_on_modes)
    try:
        refitted = fit.refit_response(y_star, metric)
    except TfmixedError:
        return None, False, False
    values = np.asarray(statistic(refitted), dtype=np.float64).ravel()
    return values, refitted.converged, refitted.is_singular


def _worker(indices):
    state = _WORKER_STATE
    return [(i, *_replicate(state["fit"], state["seeds"][i], state["statistic"], state["condition"], state["metric"]))
            for i in indices]


@dataclass
class BootstrapResult:
    """Replicates of a statistic: ``replicates`` (one row per replicate, NaN rows where a refit failed),
    ``t0`` (the statistic of the fit), ``n_failed``, ``n_not_converged``, ``n_singular``, ``seed``."""

    replicates: pd.DataFrame
    t0: pd.Series
    n_failed: int
    n_not_converged: int
    n_singular: int
    seed: int | None

    @property
    def sd(self) -> pd.Series:
        """Bootstrap standard deviations (lme4's ``boot`` "std. error")."""
        return self.replicates.std(ddof=1)

    def quantiles(self, probabilities=(0.025, 0.5, 0.975)) -> pd.DataFrame:
        """Quantiles of each statistic (R's default type 7), one row per statistic."""
        return self.replicates.quantile(list(probabilities)).T

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Percentile intervals (lme4's ``confint(method = "boot")``, ``boot.type = "perc"``)."""
        if not 0 < level < 1:
            raise DataError(f"level must be between 0 and 1, got {level!r}")
        table = self.quantiles(((1 - level) / 2, (1 + level) / 2))
        table.columns = interval_columns(level)
        return table

    def __repr__(self) -> str:
        return (f"BootstrapResult({len(self.replicates)} replicates, {self.n_failed} failed, "
                f"{self.n_not_converged} not converged, {self.n_singular} singular; seed={self.seed})")


class Resampling(FitBase):
    """Mixed into :class:`~tfmixed.results.LmerFit` and :class:`~tfmixed.results.glmm.GlmerFit`; the three hooks
    below are the Gaussian model's (a GLMM overrides them)."""

    def draw_response(self, mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A response drawn from the model's family at ``mean`` (the parametric bootstrap's noise): here
        y* = mean + e*, e*_i ~ N(0, sigma^2 / w_i) (rows of weight 0 get no noise)."""
        noise = self.sigma * rng.standard_normal(mean.size)
        weights = self.design.weights
        if weights is not None:
            with np.errstate(divide="ignore"):
                noise = np.where(weights > 0, noise / np.sqrt(np.where(weights > 0, weights, 1.0)), 0.0)
        return mean + noise

    def resampling_metric(self):
        """What every bootstrap refit may start its Newton steps from (the criterion's inverse Hessian here;
        None for a GLMM)."""
        require_exact_kernel(self, "the bootstrap")
        return criterion_inverse_hessian(self)

    def refit_response(self, response: np.ndarray, metric=None):
        """The model refitted to a new response (lme4's ``refit(fit, newresp)``), started at this fit's optimum;
        ``metric`` from :meth:`resampling_metric`."""
        return refit(self, response=response, inverse_hessian=metric)

    def simulate(self, n: int = 1, *, seed: int | None = None, re_form: str | None = "NA") -> pd.DataFrame:
        """``n`` responses simulated from the fitted model, one column ``sim_1``, ... each (lme4's ``simulate``).

        y* = X beta + Z b* + o + e*, e* ~ N(0, sigma^2 / w); ``re_form="NA"`` (default) draws new random effects
        b* ~ N(0, sigma^2 Lambda Lambda'), ``re_form=None`` keeps the conditional modes (b* = b). For a GLMM, y*
        is drawn from the family at the means g^{-1}(X beta + Z b* + o): binomial proportions of the trials
        (prior weights), Poisson counts.

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> fit.simulate(3, seed=1).shape
        (180, 3)
        """
        require_rows_in_memory(self.design, "simulate()", "simulate from a fit of a sample of the rows")
        n = _positive_count(n, "n")
        condition = _check_re_form(re_form)
        children = np.random.SeedSequence(seed).spawn(n)
        columns = {f"sim_{i + 1}": _draw(self, np.random.default_rng(child), condition) for i, child in enumerate(children)}
        return pd.DataFrame(columns, index=self.design.row_index)

    def bootstrap(self, n: int = 1000, *, seed: int | None = None, statistic=None, re_form: str | None = "NA",
                  n_jobs: int | None = None, verbose: bool = True) -> BootstrapResult:
        """Parametric bootstrap: ``n`` responses simulated as :meth:`simulate` does, each refitted, and
        ``statistic(refit)`` recorded (lme4's ``bootMer``, ``type = "parametric"``).

        ``statistic`` maps a fit to numbers (a Series keeps its names); the default is fixed effects, SDs,
        correlations and sigma. ``n_jobs`` processes share the replicates (-1: one per core; None: one per core
        for at least :data:`PARALLEL_MIN_REPLICATES` replicates unless TensorFlow is loaded, which forked
        workers must not inherit; else 1); the numbers
        depend only on ``seed``. Refits that fail give NaN rows (counted in ``n_failed``).

        >>> import tfmixed as tm
        >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
        >>> boot = fit.bootstrap(20, seed=1, verbose=False)
        >>> boot.replicates.shape, list(boot.replicates.columns[:2])
        ((20, 6), ['(Intercept)', 'Days'])
        """
        require_rows_in_memory(self.design, "a parametric bootstrap", "use confint('Wald')")
        n = _positive_count(n, "n")
        condition = _check_re_form(re_form)
        if statistic is not None and not callable(statistic):
            raise DataError("statistic must be a function of a fit, returning numbers")
        t0 = (statistic or default_statistic)(self)
        statistic = statistic or _default_values
        names = list(t0.index) if isinstance(t0, pd.Series) else None
        t0_values = np.asarray(t0, dtype=np.float64).ravel()
        seeds = np.random.SeedSequence(seed).spawn(n)
        jobs = _job_count(n_jobs, n)
        progress = Progress("bootstrap", verbose=verbose)
        results = self._run_replicates(seeds, statistic, condition, min(jobs, n), progress)
        table = np.full((n, t0_values.size), np.nan)
        failed = not_converged = singular = 0
        for i, values, converged, is_singular in results:
            if values is None or values.size != t0_values.size:
                failed += 1
                continue
            table[i] = values
            not_converged += not converged
            singular += is_singular
        progress.finish(f"{n} refits, {failed} failed")
        replicates = pd.DataFrame(table, columns=names)
        return BootstrapResult(replicates, pd.Series(t0_values, index=names), failed, not_converged, singular, seed)

    def _run_replicates(self, seeds, statistic, condition, jobs, progress) -> list:
        n, metric = len(seeds), self.resampling_metric()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", SingularFitWarning)
            if jobs == 1:
                out = []
                for i, child in enumerate(seeds):
                    out.append((i, *_replicate(self, child, statistic, condition, metric)))
                    progress.update(i + 1, f"of {n} refits")
                return out
            _WORKER_STATE.update(fit=self, seeds=seeds, statistic=statistic, condition=condition, metric=metric)
            try:
                chunks = np.array_split(np.arange(n), 4 * jobs)
                with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
                    out, done = [], 0
                    for batch in pool.map(_worker, [chunk for chunk in chunks if chunk.size]):
                        out.extend(batch)
                        done += len(batch)
                        progress.update(done, f"of {n} refits")
                return out
            finally:
                _WORKER_STATE.clear()


def _job_count(n_jobs, n: int) -> int:
    if n_jobs is None:
        forkable = "tensorflow" not in sys.modules and "fork" in multiprocessing.get_all_start_methods()
        return (os.cpu_count() or 1) if forkable and n >= PARALLEL_MIN_REPLICATES else 1
    return (os.cpu_count() or 1) if n_jobs == -1 else _positive_count(n_jobs, "n_jobs")


def _positive_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
