"""The :class:`EmpiricalBayes` callback: sigma^2 and every group's tau^2 re-estimated during ``model.fit``.

``rule="quick_and_dirty"`` is the seed's MacKay loop (population variances of the residuals and weights);
``rule="corrected"`` is MacKay's (1992) evidence update tau^2 = ||E||^2 / gamma, sigma^2 = ||r||^2 / (n - p - sum
gamma) with gamma from the posterior of the network linearised at its weights (:mod:`.evidence`). Each update is
one streamed pass over the training rows (:mod:`.training_rows`, :mod:`.linearisation`); for a binomial or Poisson
loss the update is the Laplace criterion of the linearised GLMM, whose PIRLS needs the linearised rows in memory
(12 + 8 k bytes per row and factor column).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._tf import keras, tf
from ..checks import aliased_columns
from ..design import Design
from ..errors import DataError, TfmixedError, TfmixedWarning
from ..families import get_family
from ..laplace import GlmmObjective
from ..terms import RandomEffectsTerm
from .evidence import COUPLINGS, DecayEvidence, Group, RandomEffectsEvidence, choose_coupling
from .layers import EmpiricalBayesDecay, RandomEffects
from .linearisation import Linearisation
from .training_rows import TrainingRows, check_batch


def _all_layers(model) -> list:
    """Every layer of a model, nested models included (public API only)."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found


class EmpiricalBayes(keras.callbacks.Callback):
    """Learn sigma^2 and each group's prior variance tau^2 during ``model.fit`` (no validation set).

    ``x``, ``y`` are the training rows: a dict of arrays keyed by input name (or one array for a single-input
    model) and the targets, or a finite ``tf.data.Dataset`` / ``keras.utils.PyDataset`` of (inputs, targets)
    batches as ``x`` alone. Every update streams them once, ``batch_size`` rows at a time for arrays, holding
    statistics of the size of the model's levels, not of the rows. ``rule`` is "corrected" (MacKay's evidence
    update, Gauss-Newton posterior variances) or "quick_and_dirty" (the seed's). ``family`` is the loss's
    likelihood: "gaussian" (mean squared error; sigma^2 is learned), "binomial" (binary cross-entropy) or
    "poisson" (Poisson loss); for the last two the Gauss-Newton weights are those of PIRLS (p (1 - p), mu), there
    is no sigma^2 and the penalty is lambda = 1 / (2 tau^2) per training example of a mean loss. ``output`` says
    what the model's output is: "logit" (default; ``from_logits=True``) or "probability" for binomial, "log"
    (default) or "mean" for Poisson. ``fixed_layer`` is the final Dense(1) layer whose output is added to the
    random effects ("auto": the last Dense layer with one unit; None: ignore its coupling). ``coupling`` is how
    the posteriors of several factors are related ("auto", "exact", "within_factor": see
    :mod:`tfmixed.keras.evidence`). Penalised Dense kernels take their curvature from ``decay_probes``
    random-sign probes of 32 rows (``seed``). Updates run every ``update_every`` epochs after ``warmup_epochs``;
    ``update_seconds`` lists each update's wall time.

    >>> import keras, numpy as np
    >>> from tfmixed.keras import RandomEffects
    >>> g = keras.Input((), name="g", dtype="int32")
    >>> model = keras.Model({"g": g}, RandomEffects({"g": 3})({"g": g}))
    >>> model.compile(optimizer="adam", loss="mse")
    >>> x, y = {"g": np.array([0, 1, 2, 0], dtype="int32")}, np.array([1.0, 2.0, 3.0, 1.5])
    >>> callback = EmpiricalBayes(x, y, fixed_layer=None)
    >>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    >>> sorted(callback.tau2)
    ['g']
    """

    _problems: dict  # set by on_train_begin

    def __init__(self, x, y=None, *, rule: str = "corrected", family: str = "gaussian", output: str | None = None,
                 fixed_layer: Any = "auto", update_every: int = 1, warmup_epochs: int = 1, batch_size: int = 4096,
                 coupling: str = "auto", decay_probes: int = 2048, seed: int = 0, log_dir: str | None = None,
                 verbose: int = 0):
        super().__init__()
        if rule not in ("corrected", "quick_and_dirty"):
            raise DataError(f"rule must be 'corrected' or 'quick_and_dirty', got {rule!r}")
        self.family, self.output = _family_and_output(family, output)
        if self.family != "gaussian" and rule != "corrected":
            raise DataError(f"family={family!r} takes the 'corrected' rule only (the seed's rule has no residual variance)")
        if coupling not in COUPLINGS:
            raise DataError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        if rule == "quick_and_dirty" and coupling != "auto":
            raise DataError("coupling applies to rule='corrected' only (the seed's rule has no posterior)")
        if self.family != "gaussian" and coupling != "auto":
            raise DataError(f"coupling applies to family='gaussian' only: a {self.family} loss is updated from the whole "
                            "linearised GLMM (exact)")
        if int(decay_probes) < 1:
            raise DataError(f"decay_probes must be a positive integer, got {decay_probes}")
        self.rows = TrainingRows(x, y, batch_size=batch_size)
        self.rule, self.fixed_layer_option, self.coupling_option = rule, fixed_layer, coupling
        self.update_every, self.warmup_epochs = max(1, int(update_every)), int(warmup_epochs)
        self.decay_probes, self.seed, self.verbose = int(decay_probes), int(seed), verbose
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.sigma2: float | None = None
        self.tau2: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.update_seconds: list[float] = []
        #: bytes of the statistics the last update held (largest during its pass)
        self.state_nbytes = 0

    # --- set-up ------------------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        model = self.model
        layers = _all_layers(model)
        self.random_layers = [layer for layer in layers if isinstance(layer, RandomEffects)]
        self.decays = [layer for layer in layers
                       if isinstance(layer, keras.layers.Dense) and isinstance(layer.kernel_regularizer, EmpiricalBayesDecay)]
        if not self.random_layers and not self.decays:
            raise TfmixedError("the model has no RandomEffects layer and no Dense layer with EmpiricalBayesDecay")
        self.factors = {f: n for layer in self.random_layers for f, n in layer.factors.items()}
        self.rows.bind(model)
        for inputs, y in self.rows.batches() if self.rows.source == "arrays" else ():
            check_batch(inputs, y, self.factors, self.family)
        n = float(self.rows.n_rows)
        for layer in self.random_layers:
            layer.n_train.assign(n)
        for layer in self.decays:
            layer.kernel_regularizer.n_train.assign(n)
        self.fixed_layer = self._find_fixed_layer()
        if self.fixed_layer is not None and not self.fixed_layer.use_bias:
            raise TfmixedError("the fixed layer needs a bias (its Gauss-Newton sensitivity is read off the bias)")
        self.groups = list(self._groups())
        if not self.groups:
            self.coupling = None
        elif self.family != "gaussian":
            self.coupling = "exact"  # PIRLS on the whole linearised GLMM
        else:
            self.coupling = choose_coupling(self.coupling_option, self.groups)
        self.linearisation = Linearisation(model, self.random_layers, self.fixed_layer, self.decays)
        self._fixed_rank = None
        self._problems = {}  # the kernel's problems, refilled by later updates

    def _find_fixed_layer(self):
        option = self.fixed_layer_option
        if option is None:
            return None
        if option != "auto":
            return option
        dense = [l for l in _all_layers(self.model) if isinstance(l, keras.layers.Dense) and l.units == 1]
        return dense[-1] if dense else None

    def _groups(self):
        """A :class:`Group` for every penalised random-effects column."""
        for index, layer in enumerate(self.random_layers):
            for factor, levels in layer.factors.items():
                for c, column in enumerate(layer.columns(factor)):
                    label = factor if column == "(Intercept)" else f"{factor}:{column}"
                    yield Group(label, index, factor, c, levels)

    def _table(self, group: Group) -> np.ndarray:
        return self.random_layers[group.layer].tables[group.factor].numpy()[:, group.column].astype(np.float64)

    # --- one pass ------------------------------------------------------------------------------------------
    def _linearised(self, inputs, lin):
        """Codes per (layer, factor), d yhat / d e per group, and the fixed layer's columns t [a, 1] of a batch."""
        codes = {(g.layer, g.factor): np.asarray(inputs[g.factor]).reshape(-1).astype(np.int64) for g in self.groups}
        values = []
        for g in self.groups:
            layer = self.random_layers[g.layer]
            column = layer.columns(g.factor)[g.column]
            covariate = 1.0 if g.column == 0 else np.asarray(inputs[column], dtype=np.float64).reshape(-1)
            values.append(lin.sensitivities[g.layer] * covariate)
        if lin.features is None:
            X = np.zeros((len(lin.prediction), 0))
        else:
            X = lin.fixed_sensitivity[:, None] * np.column_stack([lin.features, np.ones(len(lin.prediction))])
        return codes, values, X

    def _pass(self) -> "_PassStatistics":
        """Stream the rows once: residual sums and the statistics the rule needs."""
        corrected = self.rule == "corrected"
        state = _PassStatistics(observed={g.factor: np.zeros(g.n_levels, dtype=bool) for g in self.groups},
                                kept_rows=[] if self.family != "gaussian" else None)
        if corrected and self.decays:
            assert self.rows.n_rows is not None  # counted by on_train_begin
            state.decay = DecayEvidence([tuple(l.kernel.shape) for l in self.decays], self.rows.n_rows,
                                        max_probes=self.decay_probes, seed=self.seed + len(self.history))
        if not corrected:
            step = self._quick_batch
        elif self.family == "gaussian" and self.coupling == "within_factor":
            step = self._level_sums_batch
        else:
            step = self._linearised_batch
        for inputs, y in self.rows.batches():
            if self.rows.source != "arrays":
                check_batch(inputs, y, self.factors, self.family)
            step(state, inputs, y)
            state.peak_nbytes = max(state.peak_nbytes, state.nbytes)
        self.state_nbytes = state.peak_nbytes
        return state

    def _quick_batch(self, state, inputs, y) -> None:
        """The seed's rule: residuals and which levels occur."""
        state.add_residuals(y - self.linearisation.predict(inputs))
        for g in self.groups:
            state.observed[g.factor][np.asarray(inputs[g.factor]).reshape(-1).astype(np.int64)] = True

    def _level_sums_batch(self, state, inputs, y) -> None:
        """Gaussian, within-factor coupling: the per-level sums come out of the compiled pass."""
        per_factor, gram, totals = self.linearisation.level_sums(inputs, y)
        state.sums += totals
        if state.random is None:
            state.random = RandomEffectsEvidence(self.groups, self.coupling, gram.shape[0] - 1)
        state.random.add_level_sums(per_factor, gram, int(totals[0]), self.linearisation.levels_distinct)
        if state.decay is not None:
            state.decay.add(self.linearisation, inputs, np.ones(len(y)))

    def _linearised_batch(self, state, inputs, y) -> None:
        """Exact coupling or a GLMM: the linearised rows, summed (Gaussian) or kept (PIRLS needs them)."""
        lin = self.linearisation(inputs)
        residual = y - lin.prediction
        state.add_residuals(residual)
        if self.groups:
            codes, values, X = self._linearised(inputs, lin)
            if state.kept_rows is not None:
                state.kept_rows.append((codes, values, X, lin.prediction, y))
            else:
                if state.random is None:
                    state.random = RandomEffectsEvidence(self.groups, self.coupling, X.shape[1])
                state.random.add(codes, values, X, residual)
        if state.decay is not None:
            weights = np.ones(len(y)) if self.family == "gaussian" else self._decay_weights(lin.prediction)
            state.decay.add(self.linearisation, inputs, weights)

    def _decay_weights(self, prediction):
        eta, to_link = self._on_link_scale(prediction)
        family = get_family(self.family)
        return family.working_weights(family.link.inverse(eta), eta, np.ones(len(eta))) * to_link**2

    # --- the rules -----------------------------------------------------------------------------------------
    def _penalty_scale(self, sigma2: float) -> float:
        """lambda = scale / tau^2: sigma^2 for a mean squared error, 1/2 for a mean negative log-likelihood."""
        return sigma2 if self.family == "gaussian" else 0.5

    def _current_variances(self, residual_variance: float) -> tuple[float, dict[str, float]]:
        sigma2 = 1.0 if self.family != "gaussian" else (self.sigma2 if self.sigma2 is not None else residual_variance)
        scale = self._penalty_scale(sigma2)
        tau2 = {}
        for g in self.groups:
            penalty = float(self.random_layers[g.layer].penalties[g.factor].numpy()[g.column])
            tau2[g.label] = self.tau2.get(g.label, scale / max(penalty, 1e-12))
        for layer in self.decays:
            tau2[layer.name] = self.tau2.get(layer.name, scale / max(float(layer.kernel_regularizer.penalty.numpy()), 1e-12))
        return sigma2, tau2

    def _quick_and_dirty(self, sums, observed):
        n, total, squares = sums
        tau2 = {g.label: float(np.var(self._table(g)[observed[g.factor]])) for g in self.groups}
        for layer in self.decays:
            tau2[layer.name] = float(np.mean(np.square(layer.kernel.numpy())))
        return float(squares / n - (total / n) ** 2), tau2, {}

    def _corrected(self, sums, random, decay):
        n, _, squares = sums
        sigma2, tau2 = self._current_variances(squares / n)
        gammas = random.gammas(sigma2, tau2, self._problems) if random is not None else {}
        if random is not None:
            self._fixed_rank = random.fixed_rank
        if decay is not None:
            gammas.update(zip([l.name for l in self.decays], decay.gammas(sigma2, [tau2[l.name] for l in self.decays])))
        new_tau2 = {}
        for g in self.groups:
            table = self._table(g)  # a copy of the layer's table: read it once
            new_tau2[g.label] = float(table @ table) / max(gammas[g.label], 1e-8)
        for layer in self.decays:
            new_tau2[layer.name] = float(np.sum(layer.kernel.numpy().astype(np.float64) ** 2)) / max(gammas[layer.name], 1e-8)
        dof = n - self._fixed_parameters() - sum(gammas.values())
        if dof <= 0:
            raise TfmixedError(f"the network has more well-determined parameters than observations (n - gamma = {dof:.1f})")
        return float(squares) / dof, new_tau2, gammas

    def _fixed_parameters(self) -> int:
        """Unpenalised parameters of the last layer: the rank of its linearised features once measured."""
        if self.fixed_layer is None:
            return 0
        if self._fixed_rank is not None:
            return self._fixed_rank
        return int(sum(np.prod(w.shape) for w in self.fixed_layer.trainable_weights))

    def _glmm_update(self, decay, kept_rows):
        """sigma^2 = 1 and tau^2 for a binomial or Poisson loss (see :meth:`_random_effect_laplace`); a penalised
        Dense kernel keeps the evidence update with a diagonal Gauss-Newton posterior under the PIRLS weights."""
        _, tau2 = self._current_variances(1.0)
        new_tau2, gammas = dict(tau2), {}  # a group whose update fails keeps its tau^2
        if decay is not None:
            names = [l.name for l in self.decays]
            gammas.update(zip(names, decay.gammas(1.0, [tau2[name] for name in names])))
            for layer in self.decays:
                new_tau2[layer.name] = float(np.sum(layer.kernel.numpy() ** 2)) / max(gammas[layer.name], 1e-8)
        if self.groups:
            updates, group_gammas = self._random_effect_laplace(kept_rows, tau2)
            new_tau2.update(updates)
            gammas.update(group_gammas)
        return 1.0, new_tau2, gammas

    def _random_effect_laplace(self, kept_rows, tau2):
        """The random effects' tau^2 from the Laplace approximation of the linearised GLMM at its joint mode
        (glmer's nAGQ = 0 criterion D, whose gradient includes how the IRLS weights move with the mode, which
        MacKay's gamma leaves out: ~5% low on cbpp): tau^2 <- tau^2 - tau^4 (dD / d tau^2) / gamma, a fixed
        point exactly where dD / d tau^2 = 0. gamma = L - tr(H^{-1}) per group comes from the same factor.
        Without a closed-form gradient (a singular tau^2), MacKay's evidence update tau^2 = ||e||^2 / gamma."""
        objective, order, beta = self._linearised_glmm(kept_rows)
        labels = [self.groups[i].label for i in order]
        current = np.array([tau2[label] for label in labels])
        theta = np.sqrt(np.maximum(current, 1e-12))
        tables = [self._table(self.groups[i]) for i in order]
        objective.start_from(theta, beta, np.concatenate(tables))  # the network sits near the mode: few PIRLS steps
        try:
            mode = objective.mode(theta)
        except TfmixedError as error:
            warnings.warn(f"kept tau^2 of the random effects: the linearised GLMM has no mode ({error})",
                          TfmixedWarning, stacklevel=3)
            return {}, {}
        sums = mode.factor.inverse_block_sums(include_fixed=False)
        gammas = {label: float(term.n_levels - B[0, 0]) for label, term, B in zip(labels, objective.design.terms, sums)}
        gradient = objective.gradient(mode, joint=True)
        if gradient is None:
            return {label: float(t @ t) / max(gammas[label], 1e-8) for label, t in zip(labels, tables)}, gammas
        d_tau2 = gradient / (2 * theta)
        updates = {label: float(max(t - t**2 * d / max(gammas[label], 1e-8), 1e-12 * t))
                   for label, t, d in zip(labels, current, d_tau2)}
        return updates, gammas

    def _on_link_scale(self, prediction):
        """The output as a linear predictor eta, and d eta / d output (1 for logit and log outputs)."""
        if self.output in ("logit", "log"):
            return prediction.astype(np.float64), np.ones(len(prediction))
        link = get_family(self.family).link
        upper = 1 - 1e-12 if self.family == "binomial" else None
        mean = np.clip(prediction.astype(np.float64), 1e-12, upper)
        eta = link.link(mean)
        return eta, 1.0 / link.mu_eta(eta)

    def _linearised_glmm(self, kept_rows):
        """The GLMM of the network linearised at its weights, on the link scale: random-effects columns
        d eta / d e, fixed columns the last layer's scaled features, the rest of eta an offset."""
        codes = {key: np.concatenate([rows[0][key] for rows in kept_rows]) for key in kept_rows[0][0]}
        values = [np.concatenate([rows[1][i] for rows in kept_rows]) for i in range(len(self.groups))]
        features = np.concatenate([rows[2] for rows in kept_rows])
        prediction, y = (np.concatenate([rows[k] for rows in kept_rows]) for k in (3, 4))
        eta, to_link = self._on_link_scale(prediction)
        terms, linear = [], np.zeros(len(y))
        for g, value in zip(self.groups, values):
            column = codes[(g.layer, g.factor)]
            scaled = value * to_link
            terms.append(RandomEffectsTerm(column, scaled[:, None], np.arange(g.n_levels), name=g.label))
            linear += scaled * self._table(g)[column]
        X, beta = np.zeros((len(y), 0)), np.zeros(0)
        if features.shape[1]:
            X = features * to_link[:, None]
            X = np.delete(X, aliased_columns(X), axis=1)
            beta = np.linalg.lstsq(X, eta - linear, rcond=None)[0] if X.shape[1] else beta
            linear += X @ beta
        order = np.argsort([-term.n_levels for term in terms], kind="stable")
        design = Design(formula="", parsed=None, X=X, y=y, fixed_names=[f"x{j}" for j in range(X.shape[1])],
                        terms=[terms[i] for i in order], offset=eta - linear)
        return GlmmObjective(design, get_family(self.family)), order, beta

    # --- Keras hooks ---------------------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        """One update now (what ``on_epoch_end`` runs): returns the record also appended to ``history``."""
        started = time.perf_counter()
        state = self._pass()
        if self.family != "gaussian":
            sigma2, tau2, gammas = self._glmm_update(state.decay, state.kept_rows)
        elif self.rule == "quick_and_dirty":
            sigma2, tau2, gammas = self._quick_and_dirty(state.sums, state.observed)
        else:
            sigma2, tau2, gammas = self._corrected(state.sums, state.random, state.decay)
        if np.isfinite(sigma2) and sigma2 > 0 and all(np.isfinite(v) and v >= 0 for v in tau2.values()):
            self._apply(sigma2, tau2)
        else:
            warnings.warn("skipped a non-finite empirical-Bayes update", TfmixedWarning, stacklevel=2)
        self.update_seconds.append(time.perf_counter() - started)
        record = {"sigma2": self.sigma2, **{f"tau2_{k}": v for k, v in self.tau2.items()},
                  **{f"gamma_{k}": v for k, v in gammas.items()}}
        self.history.append(record)
        return record

    def _apply(self, sigma2: float, tau2: dict[str, float]) -> None:
        self.sigma2, self.tau2 = sigma2, tau2
        scale = self._penalty_scale(sigma2)
        for g in self.groups:
            variable = self.random_layers[g.layer].penalties[g.factor]
            penalties = variable.numpy()
            penalties[g.column] = scale / max(tau2[g.label], 1e-12 * scale)
            variable.assign(penalties)
        for layer in self.decays:
            layer.kernel_regularizer.penalty.assign(scale / max(tau2[layer.name], 1e-12 * scale))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if epoch + 1 >= self.warmup_epochs and (epoch + 1 - self.warmup_epochs) % self.update_every == 0:
            self.update()
            self.history[-1]["epoch"] = epoch
        if self.sigma2 is not None:
            if self.family == "gaussian":
                logs["eb_sigma2"] = self.sigma2
            for label, value in self.tau2.items():
                logs[f"eb_tau2_{label}"] = value
                logs[f"eb_lambda_{label}"] = self._penalty_scale(self.sigma2) / max(value, 1e-300)
            if self.writer is not None:
                with self.writer.as_default(step=epoch):
                    for key in [k for k in logs if k.startswith("eb_")]:
                        tf.summary.scalar(key, logs[key])
            if self.verbose:
                scale = f"sigma2 {self.sigma2:.5g}, " if self.family == "gaussian" else ""
                print(f"[tfmixed EmpiricalBayes] epoch {epoch + 1}: {scale}"
                      + ", ".join(f"tau2[{k}] {v:.5g}" for k, v in self.tau2.items()))

    def penalties(self) -> pd.Series:
        """The learned penalties lambda = sigma^2 / tau^2 per group (1 / (2 tau^2) for a binomial or Poisson loss)."""
        if self.sigma2 is None:  # no update yet (sigma2 and tau2 are set together)
            return pd.Series({}, name="lambda")
        scale = self._penalty_scale(self.sigma2)
        return pd.Series({k: scale / v for k, v in self.tau2.items()}, name="lambda")


@dataclass
class _PassStatistics:
    """What one pass over the rows collects."""

    observed: dict[str, np.ndarray]
    kept_rows: list | None = None
    sums: np.ndarray = field(default_factory=lambda: np.zeros(3))  # n, sum r, sum r^2
    random: RandomEffectsEvidence | None = None
    decay: DecayEvidence | None = None
    peak_nbytes: int = 0

    def add_residuals(self, residual: np.ndarray) -> None:
        self.sums += [len(residual), residual.sum(), residual @ residual]

    @property
    def nbytes(self) -> int:
        return (self.random.nbytes if self.random else 0) + (self.decay.nbytes if self.decay else 0)


def _family_and_output(family: str, output: str | None) -> tuple[str, str | None]:
    outputs = {"gaussian": (None,), "binomial": ("logit", "probability"), "poisson": ("log", "mean")}
    if family not in outputs:
        raise DataError(f"family must be 'gaussian', 'binomial' or 'poisson', got {family!r}")
    output = outputs[family][0] if output is None else output
    if output not in outputs[family]:
        raise DataError(f"family={family!r} takes output in {[o for o in outputs[family] if o]}, got {output!r}")
    return family, output
