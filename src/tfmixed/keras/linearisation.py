"""The network linearised at its weights, one batch at a time (the Gauss-Newton view of an update).

For each batch: the prediction yhat, for each :class:`~tfmixed.keras.RandomEffects` layer the sensitivity
s_i = d yhat_i / d o_i of the prediction to the layer's output o (so d yhat_i / d e_f[code_i, c] = s_i x_ic for
every factor f and column c of the layer: the layer's output is linear in its tables), and for the last
Dense(1) layer the sensitivity t_i of the prediction to its output and its input features. Forward mode gives
each sensitivity in one pass of the compiled network: one pass per RandomEffects layer and one for the fixed
layer, whatever the number of factors and columns.

Penalised Dense kernels need sum_i w_i (d yhat_i / d W)^2 (the diagonal Gauss-Newton curvature). Per-example
Jacobians do not scale; a random-sign probe does: for signs v_i = +-1 over a group of rows,
g = d (sum_i v_i sqrt(w_i) yhat_i) / d W has E[g^2] = sum_i w_i (d yhat_i / d W)^2, one backward pass per group.

Under ``tf.distribute`` (a model built in a strategy's scope) each batch is split across the replicas, every
replica runs the passes on its part with its copy of the weights, and the parts come back in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._tf import keras, tf
from ..errors import ShapeError


@dataclass
class LinearisedBatch:
    """One batch of the linearised network (float64 arrays over the batch's rows)."""

    prediction: np.ndarray
    #: per RandomEffects layer (in the callback's order), s_i
    sensitivities: list[np.ndarray]
    #: t_i of the fixed layer, None without one
    fixed_sensitivity: np.ndarray | None
    #: the fixed layer's input features, (rows, width); None without a fixed layer
    features: np.ndarray | None


class Linearisation:
    """The compiled per-batch passes of one model (built once, at the start of training)."""

    def __init__(self, model, random_layers, fixed_layer, decay_layers):
        self.model, self.fixed_layer, self.decay_layers = model, fixed_layer, list(decay_layers)
        #: (layer index, factor, slope inputs) of every factor, for the in-graph per-level sums
        self.factor_models = [(index, factor, tuple(layer.slopes.get(factor, ())))
                              for index, layer in enumerate(random_layers) for factor in layer.factors]
        self.strategy = model.distribute_strategy
        outputs = model.output if fixed_layer is None else [model.output, fixed_layer.input]
        self.probe_model = model if fixed_layer is None else keras.Model(model.input, outputs)
        self.directions = []
        for layer in random_layers:
            table = layer.tables[next(iter(layer.factors))]
            tangent = np.zeros(table.shape, dtype=table.dtype)
            tangent[:, 0] = 1.0  # the intercept column: d yhat_i / d e[code_i, 0] = s_i
            self.directions.append((table, tf.constant(tangent)))
        if fixed_layer is not None:
            self.directions.append((fixed_layer.bias, tf.ones(fixed_layer.bias.shape, dtype=fixed_layer.bias.dtype)))
        self._passes = tf.function(self._linearise, reduce_retracing=True)
        self._predict = tf.function(lambda inputs: self._outputs(inputs)[0], reduce_retracing=True)
        self._probe = tf.function(self._decay_gradients, reduce_retracing=True)
        self._level_sums = tf.function(self._within_factor_sums, reduce_retracing=True)

    # --- compiled bodies ---------------------------------------------------------------------------------------
    def _outputs(self, inputs):
        out = self.probe_model(inputs, training=False)
        if self.fixed_layer is None:
            return tf.reshape(out, (-1,)), None
        return tf.reshape(out[0], (-1,)), out[1]

    def _linearise(self, inputs):
        prediction, features, sensitivities = None, None, []
        for variable, tangent in self.directions:
            with tf.autodiff.ForwardAccumulator(primals=variable.value, tangents=tangent) as accumulator:
                prediction, features = self._outputs(inputs)
            sensitivities.append(tf.reshape(accumulator.jvp(prediction), (-1,)))
        if prediction is None:
            prediction, features = self._outputs(inputs)
        return prediction, sensitivities, features

    def _within_factor_sums(self, inputs, columns, y):
        """Per factor: the batch's levels and, over each level's rows, sum V V' and sum V [X r]' (V the factor's
        columns d yhat / d e, X = t [a, 1] the fixed layer's, r the residual); with [X r]'[X r] and (n, sum r,
        sum r^2). Float64 from the network's outputs on."""
        prediction, sensitivities, features = self._linearise(inputs)
        prediction = tf.cast(prediction, tf.float64)
        residual = tf.cast(tf.reshape(y, (-1,)), tf.float64) - prediction
        ones = tf.ones_like(residual)[:, None]
        if self.fixed_layer is None:
            fixed = tf.zeros_like(ones)[:, :0]
        else:
            scale = tf.cast(sensitivities[-1], tf.float64)[:, None]
            width = tf.reduce_prod(tf.shape(features)[1:])
            fixed = scale * tf.concat([tf.reshape(tf.cast(features, tf.float64), (-1, width)), ones], axis=1)
        Xr = tf.concat([fixed, residual[:, None]], axis=1)
        per_factor = []
        for index, factor, slopes in self.factor_models:
            s = tf.cast(sensitivities[index], tf.float64)[:, None]
            V = s * tf.concat([ones] + [tf.reshape(tf.cast(columns[name], tf.float64), (-1, 1)) for name in slopes], axis=1)
            present, position = tf.unique(tf.reshape(tf.cast(columns[factor], tf.int64), (-1,)))
            count = tf.size(present)
            per_factor.append((present,
                               tf.math.unsorted_segment_sum(V[:, :, None] * V[:, None, :], position, count),
                               tf.math.unsorted_segment_sum(V[:, :, None] * Xr[:, None, :], position, count)))
        n = tf.cast(tf.size(residual), tf.float64)
        totals = tf.stack([n, tf.reduce_sum(residual), tf.reduce_sum(residual * residual)])[None]
        return per_factor, tf.matmul(Xr, Xr, transpose_a=True)[None], totals

    def _decay_gradients(self, inputs, coefficients):
        with tf.GradientTape() as tape:
            prediction, _ = self._outputs(inputs)
            probe = tf.reduce_sum(prediction * tf.cast(coefficients, prediction.dtype))
        return tape.gradient(probe, [layer.kernel.value for layer in self.decay_layers])

    # --- per batch -----------------------------------------------------------------------------------------------
    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """yhat of the batch (one compiled forward pass)."""
        return self._run(self._predict, inputs)

    def __call__(self, inputs: dict[str, np.ndarray]) -> LinearisedBatch:
        prediction, sensitivities, features = self._run(self._passes, inputs)
        n_random = len(self.directions) - (self.fixed_layer is not None)
        return LinearisedBatch(
            prediction=prediction,
            sensitivities=sensitivities[:n_random],
            fixed_sensitivity=sensitivities[n_random] if self.fixed_layer is not None else None,
            features=None if features is None else features.reshape(len(prediction), -1),
        )

    def level_sums(self, inputs: dict[str, np.ndarray], y: np.ndarray):
        """The batch's per-level sums of the within-factor models, computed in the graph (see
        :meth:`_within_factor_sums`): [(levels, sum V V', sum V [X r]')] per factor, [X r]'[X r], (n, sum r, sum r^2).
        Under a strategy the replicas' parts are stacked (a level may then appear once per replica: see
        :attr:`levels_distinct`)."""
        names = {factor for _, factor, _ in self.factor_models} | {n for *_, slopes in self.factor_models for n in slopes}
        per_factor, gram, totals = self._run(self._level_sums, inputs, {n: inputs[n] for n in names}, y)
        return ([(codes.astype(np.int64), D, B) for codes, D, B in per_factor], gram.sum(axis=0), totals.sum(axis=0))

    @property
    def levels_distinct(self) -> bool:
        """Whether :meth:`level_sums` lists each level once per batch (one replica)."""
        return self.strategy.num_replicas_in_sync == 1

    def decay_curvature(self, inputs: dict[str, np.ndarray], coefficients: np.ndarray) -> list[np.ndarray]:
        """g^2 per penalised Dense kernel for one probe: g = d (sum_i c_i yhat_i) / d W over these rows."""
        gradients = self._run(self._probe, inputs, coefficients, concatenate=False)
        return [np.square(g) for g in gradients]

    def _run(self, function, inputs, *extra, concatenate: bool = True):
        """``function`` on the batch: directly, or split across the replicas of the model's strategy (the
        outputs concatenated in row order, or summed when ``concatenate`` is False: gradients)."""
        replicas = self.strategy.num_replicas_in_sync
        if replicas == 1:
            return tf.nest.map_structure(_as_numpy, function(self._structured(inputs), *extra))
        rows = len(next(iter(inputs.values())))
        parts = np.array_split(np.arange(rows), replicas)

        def shard(context):
            part = parts[context.replica_id_in_sync_group]
            local = self._structured({k: tf.constant(v[part]) for k, v in inputs.items()})
            pieces = [{k: tf.constant(v[part]) for k, v in e.items()} if isinstance(e, dict) else tf.constant(e[part])
                      for e in extra]
            return (local, *pieces)

        arguments = self.strategy.experimental_distribute_values_from_function(shard)
        outputs = self.strategy.run(function, args=arguments)
        flat = tf.nest.flatten(outputs)
        combined = []
        for value in flat:
            pieces = [] if value is None else [_as_numpy(v) for v in self.strategy.experimental_local_results(value)]
            combined.append(None if value is None else np.concatenate(pieces) if concatenate else np.sum(pieces, axis=0))
        return tf.nest.pack_sequence_as(outputs, combined)

    def _structured(self, inputs: dict):
        """The batch in the structure of the model's inputs: a dict, one tensor, or a list in input order."""
        structure = self.model.input
        names = list(structure) if isinstance(structure, dict) else [t.name for t in tf.nest.flatten(structure)]
        missing = [name for name in names if name not in inputs] if isinstance(structure, dict) or len(names) > 1 else []
        if missing:
            raise ShapeError(f"the training rows lack the model's input(s) {missing}; they have {sorted(inputs)}")
        if isinstance(structure, dict):
            return {name: inputs[name] for name in structure}
        if isinstance(structure, (list, tuple)):
            return [inputs[tensor.name] for tensor in structure]
        return inputs[structure.name] if structure.name in inputs else next(iter(inputs.values()))


def _as_numpy(value):
    if value is None:
        return None
    array = np.asarray(value)
    return array if array.dtype.kind in "iu" else array.astype(np.float64)
