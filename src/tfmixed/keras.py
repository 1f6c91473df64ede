"""Empirical-Bayes regularisation for Keras 3 networks: per-group weight decay learned without validation.

* :class:`RandomEffects` — embeddings of high-cardinality categorical inputs (random intercepts, optionally
  random slopes on numeric inputs). Its L2 penalty per factor and column is lambda = sigma^2 / tau^2, added
  to the loss as lambda * ||E||^2 / n_train, so that with a mean-squared-error loss the training objective is
  the mixed model's penalised least squares divided by n.
* :class:`EmpiricalBayesDecay` — the same learned L2 penalty for an ordinary ``Dense`` kernel (one variance
  per layer), passed as ``kernel_regularizer``.
* :class:`EmpiricalBayes` — a callback that re-estimates sigma^2 and every tau^2 during ``model.fit``:
  ``rule="quick_and_dirty"`` is the seed's MacKay loop (population variances of the residuals and weights);
  ``rule="corrected"`` is MacKay's (1992) evidence update with the number of well-determined parameters
  gamma = sum(1 - Var(w | y) / tau^2), the posterior variances taken from a Gauss-Newton (Laplace)
  linearisation: exact block-sparse algebra for the random effects jointly with the network's last linear
  layer (tfmixed's mixed-model kernel), a diagonal Gauss-Newton approximation for penalised Dense kernels.
  For a network without hidden layers this is exactly the evidence update of a linear mixed model, whose
  fixed point is the REML estimate.

The learned values are written to the Keras logs (``eb_sigma2``, ``eb_tau2_<group>``, ``eb_lambda_<group>``:
History and, listed after this callback, TensorBoard) and, with ``log_dir``, to TensorBoard directly.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ._tf import keras, tf
from .errors import DataError, ShapeError, TfmixedError, TfmixedWarning
from .cross_products import CrossProducts
from .design import Design, aliased_columns
from .families import get_family
from .laplace import GlmmObjective
from .kernels.pls import PLSProblem
from .levels import encode_levels as _encode
from .terms import RandomEffectsTerm


def encode_levels(values, levels=None, *, unseen: str = "error") -> tuple[np.ndarray, pd.Index]:
    """Integer codes 0..L-1 for a categorical column, with the same order as ``lmer`` (tfmixed.levels).

    With ``levels`` (the training levels), unseen values raise (``unseen="error"``) or get the reserved code
    L (``unseen="new"``): give the layer L + 1 levels and keep that row's effect at zero.

    >>> codes, levels = encode_levels(["b", "a", "b"])
    >>> codes.tolist(), levels.tolist()
    ([1, 0, 1], ['a', 'b'])
    """
    codes, labels = _encode(values, levels, unseen=unseen)
    return codes.astype(np.int32), labels


def check_codes(name: str, values, n_levels: int) -> np.ndarray:
    """Integer codes 0..n_levels-1 of a factor, or a :class:`DataError` naming what is wrong with them.

    >>> check_codes("customer", np.array([0, 2]), 3).tolist()
    [0, 2]
    """
    array = np.asarray(values).reshape(-1)
    if array.dtype.kind in "USO":
        raise DataError(f"ids of factor {name!r} must be integer codes, got strings ({array[:3].tolist()}); "
                        "encode them with tfmixed.keras.encode_levels")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.floor(array)):
            raise DataError(f"ids of factor {name!r} must be integer codes, got non-integer values")
    elif array.dtype.kind not in "iub":
        raise DataError(f"ids of factor {name!r} must be integer codes, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= n_levels):
        bad = array[(array < 0) | (array >= n_levels)][:5].tolist()
        raise DataError(f"ids of factor {name!r} must lie in 0..{n_levels - 1}, got {bad}; a level unseen in "
                        "training needs a reserved code (encode_levels(..., unseen='new') and one more level)")
    return array.astype(np.int64)


def _graph_codes(name: str, values, n_levels: int):
    """Codes inside a traced graph: dtype checked at trace time, range and integrality by assertions."""
    dtype = getattr(values, "dtype", None)
    if dtype is not None and getattr(dtype, "name", str(dtype)) in ("string", "str"):
        raise DataError(f"ids of factor {name!r} must be integer codes, got a string input; encode them first")
    values = tf.convert_to_tensor(values)
    checks = []
    if values.dtype.is_floating:
        checks.append(tf.debugging.assert_equal(values, tf.floor(values), message=f"tfmixed RandomEffects: ids of factor {name} must be integers"))
    codes = tf.cast(values, tf.int32)
    checks.append(tf.debugging.assert_non_negative(codes, message=f"tfmixed RandomEffects: ids of factor {name} must be >= 0"))
    checks.append(tf.debugging.assert_less(codes, n_levels, message=f"tfmixed RandomEffects: ids of factor {name} must be < {n_levels}"))
    # the lookup must wait for the checks: without the dependency the gather may fail first with TF's own message
    with tf.control_dependencies(checks):
        return tf.identity(codes)


@keras.saving.register_keras_serializable(package="tfmixed")
class RandomEffects(keras.layers.Layer):
    """Random intercepts (and slopes) for categorical inputs, penalised by learned precisions.

    ``factors`` maps each input name (integer codes 0..L-1) to its number of levels L; ``slopes`` maps a
    factor to the numeric inputs whose coefficients vary by its levels. Called on a dict of tensors, it returns
    (batch, 1): sum over factors of e_f[code] . [1, slope inputs]. The penalty added to the model's losses is
    sum_f sum_c lambda_fc ||E_f[:, c]||^2 / n_train.

    >>> layer = RandomEffects({"customer": 3})
    >>> out = layer({"customer": np.array([0, 2])})
    >>> tuple(out.shape)
    (2, 1)
    """

    def __init__(self, factors: dict[str, int], slopes: dict[str, list[str]] | None = None, *,
                 n_train: int | None = None, initial_penalty: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not factors:
            raise DataError("RandomEffects needs at least one factor")
        for name, levels in factors.items():
            if int(levels) < 2:
                raise DataError(f"factor {name!r} needs at least 2 levels, got {levels}")
        self.factors = {str(name): int(levels) for name, levels in factors.items()}
        self.slopes = {str(k): [str(v) for v in vs] for k, vs in (slopes or {}).items()}
        unknown = set(self.slopes) - set(self.factors)
        if unknown:
            raise DataError(f"slopes name factors {sorted(unknown)} that are not in factors")
        self.initial_penalty = float(initial_penalty)
        self.initial_n_train = n_train

    def columns(self, factor: str) -> list[str]:
        """Column names of a factor's effects: "(Intercept)" then its slope inputs."""
        return ["(Intercept)", *self.slopes.get(factor, [])]

    def build(self, input_shape=None):
        self.tables, self.penalties = {}, {}
        for name, levels in self.factors.items():
            width = len(self.columns(name))
            self.tables[name] = self.add_weight(name=f"effects_{name}", shape=(levels, width), initializer="zeros")
            self.penalties[name] = self.add_weight(
                name=f"penalty_{name}", shape=(width,), trainable=False,
                initializer=keras.initializers.Constant(self.initial_penalty),
            )
        self.n_train = self.add_weight(
            name="n_train", shape=(), trainable=False,
            initializer=keras.initializers.Constant(float(self.initial_n_train or 1.0)),
        )

    def call(self, inputs):
        if not isinstance(inputs, dict):
            raise ShapeError("RandomEffects must be called on a dict of inputs (factor codes and slope covariates)")
        total = None
        for name, levels in self.factors.items():
            if name not in inputs:
                raise ShapeError(f"RandomEffects needs the input {name!r}; got {sorted(inputs)}")
            raw = inputs[name]
            if isinstance(raw, np.ndarray) or (hasattr(raw, "numpy") and tf.executing_eagerly()):
                codes = keras.ops.convert_to_tensor(check_codes(name, np.asarray(raw), levels).astype(np.int32))
            else:
                codes = _graph_codes(name, raw, levels)
            codes = keras.ops.reshape(codes, (-1,))
            rows = keras.ops.take(self.tables[name], codes, axis=0)
            design = [keras.ops.ones_like(rows[:, :1])]
            design += [keras.ops.reshape(keras.ops.cast(inputs[s], rows.dtype), (-1, 1)) for s in self.slopes.get(name, [])]
            contribution = keras.ops.sum(rows * keras.ops.concatenate(design, axis=1), axis=1, keepdims=True)
            total = contribution if total is None else total + contribution
            penalty = keras.ops.sum(self.penalties[name] * keras.ops.sum(keras.ops.square(self.tables[name]), axis=0))
            self.add_loss(penalty / self.n_train)
        return total

    def compute_output_shape(self, input_shape):
        first = next(iter(input_shape.values()))
        return (first[0], 1)

    def get_config(self):
        config = super().get_config()
        config.update(factors=self.factors, slopes=self.slopes, n_train=self.initial_n_train,
                      initial_penalty=self.initial_penalty)
        return config


@keras.saving.register_keras_serializable(package="tfmixed")
class EmpiricalBayesDecay(keras.regularizers.Regularizer):
    """L2 weight decay lambda ||W||^2 / n_train whose lambda = sigma^2 / tau^2 the callback learns.

    >>> decay = EmpiricalBayesDecay(initial_penalty=2.0, n_train=4)
    >>> float(decay(np.ones((2, 2), dtype="float32")))
    2.0
    """

    def __init__(self, initial_penalty: float = 1.0, n_train: float = 1.0):
        self.initial_penalty, self.initial_n_train = float(initial_penalty), float(n_train)
        self.penalty = tf.Variable(self.initial_penalty, trainable=False, dtype=tf.float32)
        self.n_train = tf.Variable(self.initial_n_train, trainable=False, dtype=tf.float32)

    def __call__(self, weights):
        weights = tf.convert_to_tensor(weights)
        return tf.cast(self.penalty / self.n_train, weights.dtype) * tf.reduce_sum(tf.square(weights))

    def get_config(self):
        return {"initial_penalty": float(self.penalty.numpy()), "n_train": float(self.n_train.numpy())}


def _without_aliased(X: np.ndarray) -> np.ndarray:
    """The linearly independent columns of X: dead ReLU units give zero or repeated features."""
    return np.delete(X, aliased_columns(X), axis=1) if X.shape[1] else X


def _all_layers(model) -> list:
    """Every layer of a model, nested models included (public API only)."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found


def _materialise(dataset) -> tuple[Any, np.ndarray]:
    """Concatenate the (inputs, targets) batches of a finite tf.data.Dataset into arrays."""
    inputs, targets = [], []
    for batch in dataset:
        if not isinstance(batch, tuple) or len(batch) < 2:
            raise DataError("the dataset must yield (inputs, targets) pairs")
        inputs.append(batch[0])
        targets.append(np.asarray(batch[1]))
    if not inputs:
        raise DataError("the dataset is empty")
    if isinstance(inputs[0], dict):
        x = {k: np.concatenate([np.asarray(b[k]) for b in inputs]) for k in inputs[0]}
    else:
        x = np.concatenate([np.asarray(b) for b in inputs])
    return x, np.concatenate(targets)


def _as_input_dict(x, model) -> dict[str, np.ndarray]:
    if isinstance(x, dict):
        return {str(k): np.asarray(v) for k, v in x.items()}
    if len(model.inputs) == 1:
        return {model.inputs[0].name: np.asarray(x)}
    raise ShapeError("pass the training inputs as a dict keyed by input name")


class EmpiricalBayes(keras.callbacks.Callback):
    """Learn sigma^2 and each group's prior variance tau^2 during ``model.fit`` (no validation set).

    ``x``, ``y`` are the training data (a dict of arrays keyed by input name, and the targets; or a
    ``tf.data.Dataset`` of (inputs, targets) batches as ``x`` alone, read once into memory when training starts),
    used to compute residuals and posterior variances; ``rule`` is "corrected" (MacKay's evidence update, Gauss-Newton
    posterior variances) or "quick_and_dirty" (the seed's). ``family`` is the loss's likelihood: "gaussian"
    (mean squared error; sigma^2 is learned), "binomial" (binary cross-entropy) or "poisson" (Poisson loss); for the
    last two the Gauss-Newton weights are those of PIRLS (p (1 - p), mu), there is no sigma^2 and the penalty is
    lambda = 1 / (2 tau^2) per training example of a mean loss. ``output`` says what the model's output is:
    "logit" (default; ``from_logits=True``) or "probability" for binomial, "log" (default) or "mean" for Poisson.
    ``fixed_layer`` is the final Dense(1) layer whose
    output is added to the random effects ("auto": the last Dense layer with one unit; None: ignore its
    coupling). Updates run every ``update_every`` epochs after ``warmup_epochs``.
    """

    def __init__(self, x, y=None, *, rule: str = "corrected", family: str = "gaussian", output: str | None = None,
                 fixed_layer: Any = "auto", update_every: int = 1, warmup_epochs: int = 1, batch_size: int = 4096,
                 log_dir: str | None = None, verbose: int = 0):
        super().__init__()
        if rule not in ("corrected", "quick_and_dirty"):
            raise DataError(f"rule must be 'corrected' or 'quick_and_dirty', got {rule!r}")
        self.family, self.output = _family_and_output(family, output)
        if self.family != "gaussian" and rule != "corrected":
            raise DataError(f"family={family!r} takes the 'corrected' rule only (the seed's rule has no residual variance)")
        if isinstance(x, tf.data.Dataset):
            if y is not None:
                raise DataError("pass a tf.data.Dataset of (inputs, targets) as x alone, with y=None")
            x, y = _materialise(x)
        elif y is None:
            raise DataError("EmpiricalBayes needs the training targets y (or a tf.data.Dataset as x)")
        try:
            self.x, self.y = x, np.asarray(y, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError("EmpiricalBayes needs numeric targets y") from None
        self.rule, self.fixed_layer_option = rule, fixed_layer
        self.update_every, self.warmup_epochs = max(1, int(update_every)), int(warmup_epochs)
        self.batch_size, self.verbose = int(batch_size), verbose
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.sigma2: float | None = None
        self.tau2: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    # --- set-up ------------------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        model = self.model
        self.inputs = _as_input_dict(self.x, model)
        if len(self.y) != len(next(iter(self.inputs.values()))):
            raise ShapeError(f"y has {len(self.y)} values but x has {len(next(iter(self.inputs.values())))} rows")
        if not np.all(np.isfinite(self.y)):
            raise DataError(f"y has {int(np.sum(~np.isfinite(self.y)))} NaN or infinite value(s); drop those rows")
        if self.family == "binomial" and np.any((self.y < 0) | (self.y > 1)):
            raise DataError("family='binomial' needs targets in [0, 1] (0/1 labels or probabilities)")
        if self.family == "poisson" and np.any(self.y < 0):
            raise DataError("family='poisson' needs non-negative count targets")
        layers = _all_layers(model)
        self.random_layers = [layer for layer in layers if isinstance(layer, RandomEffects)]
        for layer in self.random_layers:
            for factor, levels in layer.factors.items():
                if factor in self.inputs:
                    check_codes(factor, self.inputs[factor], levels)
        self.decays = [
            layer for layer in layers
            if isinstance(layer, keras.layers.Dense) and isinstance(layer.kernel_regularizer, EmpiricalBayesDecay)
        ]
        if not self.random_layers and not self.decays:
            raise TfmixedError("the model has no RandomEffects layer and no Dense layer with EmpiricalBayesDecay")
        n = float(len(self.y))
        for layer in self.random_layers:
            layer.n_train.assign(n)
        for layer in self.decays:
            layer.kernel_regularizer.n_train.assign(n)
        self.fixed_layer = self._find_fixed_layer()
        if self.fixed_layer is not None and not self.fixed_layer.use_bias:
            raise TfmixedError("the fixed layer needs a bias (its Gauss-Newton sensitivity is read off the bias)")
        self.features = keras.Model(model.inputs, self.fixed_layer.input) if self.fixed_layer is not None else None

    def _find_fixed_layer(self):
        option = self.fixed_layer_option
        if option is None:
            return None
        if option != "auto":
            return option
        dense = [l for l in _all_layers(self.model) if isinstance(l, keras.layers.Dense) and l.units == 1]
        return dense[-1] if dense else None

    # --- the update -----------------------------------------------------------------------------------------
    def _groups(self):
        """(label, layer, factor, column index) for every penalised random-effects column."""
        for layer in self.random_layers:
            for factor in layer.factors:
                for c, column in enumerate(layer.columns(factor)):
                    label = factor if column == "(Intercept)" else f"{factor}:{column}"
                    yield label, layer, factor, c

    def _batches(self, size: int):
        n = len(self.y)
        as_dict = isinstance(getattr(self.model, "_inputs_struct", None), dict)
        for start in range(0, n, size):
            batch = {k: tf.constant(v[start : start + size]) for k, v in self.inputs.items()}
            yield batch if as_dict or len(batch) > 1 else next(iter(batch.values()))

    def _jvp(self, batch, variable, tangent) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and its per-example directional derivative along ``tangent`` (one forward-mode pass)."""
        with tf.autodiff.ForwardAccumulator(primals=variable, tangents=tangent) as accumulator:
            prediction = self.model(batch, training=False)
        return prediction.numpy().reshape(-1), accumulator.jvp(prediction).numpy().reshape(-1)

    def _forward(self):
        """Predictions, the linearised random-effects design and the last layer's linearised features.

        A tangent of ones on column c of a factor's table gives s_i x_ic = d yhat_i / d e_{code_i, c} for every
        example (each example touches one row), a tangent on the fixed layer's bias gives t_i, the sensitivity of
        yhat_i to that layer's output; the features are the fixed layer's inputs.
        """
        predictions, designs, features = [], {label: [] for label, *_ in self._groups()}, []
        for batch in self._batches(self.batch_size):
            # Every forward-mode pass also yields the prediction; keep the first instead of another forward pass.
            prediction = None
            for label, layer, factor, c in self._groups():
                table = layer.tables[factor]
                tangent = np.zeros(table.shape, dtype=table.dtype)
                tangent[:, c] = 1.0
                prediction, derivative = self._jvp(batch, table.value, tf.constant(tangent))
                designs[label].append(derivative)
            if self.fixed_layer is not None:
                bias = self.fixed_layer.bias
                prediction, scale = self._jvp(batch, bias.value, tf.ones_like(bias.value))
                inputs = self.features(batch, training=False).numpy().reshape(len(scale), -1)
                features.append(scale[:, None] * np.column_stack([inputs, np.ones(len(scale))]))
            if prediction is None:
                prediction = self.model(batch, training=False).numpy().reshape(-1)
            predictions.append(prediction)
        designs = {label: np.concatenate(parts) for label, parts in designs.items()}
        return np.concatenate(predictions), designs, np.concatenate(features) if features else None

    def _penalty_scale(self, sigma2: float) -> float:
        """lambda = scale / tau^2: sigma^2 for a mean squared error, 1/2 for a mean negative log-likelihood."""
        return sigma2 if self.family == "gaussian" else 0.5

    def _current_variances(self, residual: np.ndarray) -> tuple[float, dict[str, float]]:
        if self.family != "gaussian":
            sigma2 = 1.0
        else:
            sigma2 = self.sigma2 if self.sigma2 is not None else float(np.var(residual))
        scale = self._penalty_scale(sigma2)
        tau2 = {}
        for label, layer, factor, c in self._groups():
            tau2[label] = self.tau2.get(label, scale / max(float(layer.penalties[factor].numpy()[c]), 1e-12))
        for layer in self.decays:
            tau2[layer.name] = self.tau2.get(layer.name, scale / max(float(layer.kernel_regularizer.penalty.numpy()), 1e-12))
        return sigma2, tau2

    def _quick_and_dirty(self, residual):
        sigma2 = float(np.var(residual))
        tau2 = {}
        for label, layer, factor, c in self._groups():
            codes = np.asarray(self.inputs[factor]).reshape(-1).astype(np.int64)
            observed = np.unique(codes)
            tau2[label] = float(np.var(layer.tables[factor].numpy()[observed, c]))
        for layer in self.decays:
            tau2[layer.name] = float(np.mean(np.square(layer.kernel.numpy())))
        return sigma2, tau2, {}

    def _corrected(self, residual, designs, features):
        sigma2, tau2 = self._current_variances(residual)
        n = len(residual)
        groups = list(self._groups())
        gammas: dict[str, float] = {}
        if groups:
            gammas.update(self._random_effect_gammas(groups, sigma2, tau2, designs, features, residual))
        for layer in self.decays:
            gammas[layer.name] = self._dense_gamma(layer, sigma2, tau2[layer.name])
        new_tau2 = {}
        for label, layer, factor, c in groups:
            effects = layer.tables[factor].numpy()[:, c]
            new_tau2[label] = float(effects @ effects) / max(gammas[label], 1e-8)
        for layer in self.decays:
            W = layer.kernel.numpy()
            new_tau2[layer.name] = float(np.sum(W**2)) / max(gammas[layer.name], 1e-8)
        p_fixed = self._fixed_parameters()
        dof = n - p_fixed - sum(gammas.values())
        if dof <= 0:
            raise TfmixedError(f"the network has more well-determined parameters than observations (n - gamma = {dof:.1f})")
        return float(residual @ residual) / dof, new_tau2, gammas

    def _fixed_parameters(self) -> int:
        """Unpenalised parameters of the last layer: the rank of its linearised features once measured."""
        if self.fixed_layer is None:
            return 0
        if getattr(self, "_fixed_rank", None) is not None:
            return self._fixed_rank
        return int(sum(np.prod(w.shape) for w in self.fixed_layer.trainable_weights))

    def _random_effect_gammas(self, groups, sigma2, tau2, designs, features, residual) -> dict[str, float]:
        """gamma per random-effects column from Omega^{-1} of the linearised mixed model (blocked kernel)."""
        n = len(self.y)
        layouts, labels = [], []
        for label, layer, factor, c in groups:
            codes = np.asarray(self.inputs[factor]).reshape(-1).astype(np.int64)
            layouts.append(RandomEffectsTerm(codes, designs[label].astype(np.float64)[:, None],
                                             np.arange(layer.factors[factor]), name=label))
            labels.append(label)
        X = _without_aliased(features.astype(np.float64)) if features is not None else np.zeros((n, 0))
        self._fixed_rank = X.shape[1]
        order = np.argsort([-layout.n_levels for layout in layouts], kind="stable")
        ordered = [layouts[i] for i in order]
        factors = [np.array([[np.sqrt(tau2[labels[i]] / sigma2)]]) for i in order]
        try:
            # Omega^{-1}'s blocks do not depend on the response; the residuals keep the augmented system definite.
            problem = PLSProblem(CrossProducts.from_rows(X, residual, ordered, shift=np.zeros(X.shape[1])))
            sums = problem.factorize(factors).inverse_block_sums(include_fixed=X.shape[1] > 0)
        except TfmixedError:
            warnings.warn("the last layer's features are collinear; gamma ignores the fixed-effects coupling",
                          TfmixedWarning, stacklevel=2)
            problem = PLSProblem(CrossProducts.from_rows(np.zeros((n, 0)), residual, ordered))
            sums = problem.factorize(factors).inverse_block_sums(include_fixed=False)
        return {labels[i]: float(layouts[i].n_levels - B[0, 0]) for i, B in zip(order, sums)}

    def _dense_gamma(self, layer, sigma2: float, tau2: float, weights=None, chunk: int = 256) -> float:
        """gamma = sum_w (1 - 1 / (tau^2 h_w)), h_w = sum_i W_i (d yhat_i / d w)^2 / sigma^2 + 1 / tau^2 (diagonal GN)."""
        squares = np.zeros(layer.kernel.shape)
        for start, batch in zip(range(0, len(self.y), chunk), self._batches(chunk)):
            with tf.GradientTape() as tape:
                prediction = tf.reshape(self.model(batch, training=False), (-1,))
            jacobian = np.square(tape.jacobian(prediction, layer.kernel, experimental_use_pfor=True).numpy())
            if weights is not None:
                jacobian *= weights[start : start + len(jacobian)].reshape((-1,) + (1,) * (jacobian.ndim - 1))
            squares += np.sum(jacobian, axis=0)
        precision = squares / sigma2 + 1.0 / tau2
        return float(np.sum(1.0 - 1.0 / (tau2 * precision)))

    def _apply(self, sigma2: float, tau2: dict[str, float]) -> None:
        self.sigma2, self.tau2 = sigma2, tau2
        scale = self._penalty_scale(sigma2)
        for label, layer, factor, c in self._groups():
            penalties = layer.penalties[factor].numpy()
            penalties[c] = scale / max(tau2[label], 1e-12 * scale)
            layer.penalties[factor].assign(penalties)
        for layer in self.decays:
            layer.kernel_regularizer.penalty.assign(scale / max(tau2[layer.name], 1e-12 * scale))

    def _glmm_update(self, prediction, designs, features):
        """sigma^2 = 1 and tau^2 for a binomial or Poisson loss (see :meth:`_random_effect_laplace`); a penalised
        Dense kernel keeps the evidence update with a diagonal Gauss-Newton posterior under the PIRLS weights."""
        _, tau2 = self._current_variances(np.zeros(0))
        eta, to_link = self._on_link_scale(prediction)
        family = get_family(self.family)
        # the Fisher information of the output: PIRLS's weights on the link scale, times (d eta / d output)^2
        weights = family.working_weights(family.link.inverse(eta), eta, np.ones(len(eta))) * to_link**2
        new_tau2, gammas = dict(tau2), {}  # a group whose update fails keeps its tau^2
        for layer in self.decays:
            gammas[layer.name] = self._dense_gamma(layer, 1.0, tau2[layer.name], weights)
            new_tau2[layer.name] = float(np.sum(layer.kernel.numpy() ** 2)) / max(gammas[layer.name], 1e-8)
        if self.random_layers:
            updates, group_gammas = self._random_effect_laplace(eta, to_link, designs, features, tau2)
            new_tau2.update(updates)
            gammas.update(group_gammas)
        return 1.0, new_tau2, gammas

    def _random_effect_laplace(self, eta, to_link, designs, features, tau2):
        """The random effects' tau^2 from the Laplace approximation of the linearised GLMM at its joint mode
        (glmer's nAGQ = 0 criterion D, whose gradient includes how the IRLS weights move with the mode, which
        MacKay's gamma leaves out: ~5% low on cbpp): tau^2 <- tau^2 - tau^4 (dD / d tau^2) / gamma, a fixed
        point exactly where dD / d tau^2 = 0. gamma = L - tr(H^{-1}) per group comes from the same factor.
        Without a closed-form gradient (a singular tau^2), MacKay's evidence update tau^2 = ||e||^2 / gamma."""
        groups = list(self._groups())
        objective, order, beta = self._linearised_glmm(eta, to_link, designs, features)
        labels = [groups[i][0] for i in order]
        current = np.array([tau2[label] for label in labels])
        theta = np.sqrt(np.maximum(current, 1e-12))
        tables = [groups[i][1].tables[groups[i][2]].numpy()[:, groups[i][3]] for i in order]
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

    def _linearised_glmm(self, eta, to_link, designs, features):
        """The GLMM of the network linearised at its weights, on the link scale: random-effects columns
        d eta / d e, fixed columns the last layer's scaled features, the rest of eta an offset."""
        n = len(self.y)
        terms, linear = [], np.zeros(n)
        for label, layer, factor, c in self._groups():
            codes = np.asarray(self.inputs[factor]).reshape(-1).astype(np.int64)
            values = designs[label].astype(np.float64) * to_link
            terms.append(RandomEffectsTerm(codes, values[:, None], np.arange(layer.factors[factor]), name=label))
            linear += values * layer.tables[factor].numpy()[codes, c]
        X, beta = np.zeros((n, 0)), np.zeros(0)
        if features is not None:
            X = _without_aliased(features.astype(np.float64) * to_link[:, None])
            beta = np.linalg.lstsq(X, eta - linear, rcond=None)[0] if X.shape[1] else beta
            linear += X @ beta
        order = np.argsort([-term.n_levels for term in terms], kind="stable")
        design = Design(formula="", parsed=None, X=X, y=self.y.astype(np.float64), fixed_names=[f"x{j}" for j in range(X.shape[1])],
                        terms=[terms[i] for i in order], offset=eta - linear)
        return GlmmObjective(design, get_family(self.family)), order, beta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if epoch + 1 >= self.warmup_epochs and (epoch + 1 - self.warmup_epochs) % self.update_every == 0:
            prediction, designs, features = self._forward()
            if self.family != "gaussian":
                sigma2, tau2, gammas = self._glmm_update(prediction, designs, features)
            elif self.rule == "quick_and_dirty":
                sigma2, tau2, gammas = self._quick_and_dirty(self.y - prediction)
            else:
                sigma2, tau2, gammas = self._corrected(self.y - prediction, designs, features)
            if np.isfinite(sigma2) and sigma2 > 0 and all(np.isfinite(v) and v >= 0 for v in tau2.values()):
                self._apply(sigma2, tau2)
            else:
                warnings.warn(f"skipped a non-finite empirical-Bayes update at epoch {epoch}", TfmixedWarning, stacklevel=2)
            record = {"epoch": epoch, "sigma2": self.sigma2, **{f"tau2_{k}": v for k, v in self.tau2.items()},
                      **{f"gamma_{k}": v for k, v in gammas.items()}}
            self.history.append(record)
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
        scale = self._penalty_scale(self.sigma2)
        return pd.Series({k: scale / v for k, v in self.tau2.items()}, name="lambda")


def _family_and_output(family: str, output: str | None) -> tuple[str, str | None]:
    outputs = {"gaussian": (None,), "binomial": ("logit", "probability"), "poisson": ("log", "mean")}
    if family not in outputs:
        raise DataError(f"family must be 'gaussian', 'binomial' or 'poisson', got {family!r}")
    output = outputs[family][0] if output is None else output
    if output not in outputs[family]:
        raise DataError(f"family={family!r} takes output in {[o for o in outputs[family] if o]}, got {output!r}")
    return family, output
