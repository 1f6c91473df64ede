"""The Keras layers whose penalties tfmixed learns: :class:`RandomEffects` (embeddings of categorical inputs as
random intercepts and slopes) and :class:`EmpiricalBayesDecay` (an L2 kernel regulariser), with the level encoder
and the checks of their integer codes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._tf import keras, tf
from ..errors import DataError, ShapeError
from ..levels import encode_levels as _encode


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


