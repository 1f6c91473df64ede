"""The training rows an :class:`~tfmixed.keras.EmpiricalBayes` update reads, one batch at a time.

The rows come as arrays (a dict keyed by input name, or one array for a single-input model, and the targets), a
finite ``tf.data.Dataset`` of (inputs, targets) batches, or a ``keras.utils.PyDataset``. Whatever the source, an
update streams it: it never holds more than one batch of rows (an array source is sliced, not copied).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .._tf import keras, tf
from ..errors import DataError, ShapeError
from .layers import check_codes


class TrainingRows:
    """A re-iterable source of (inputs dict, targets) batches with the checks of the rows' values.

    >>> rows = TrainingRows({"g": np.array([0, 1, 1])}, np.array([1.0, 2.0, 3.0]), batch_size=2)
    >>> [(sorted(x), y.tolist()) for x, y in rows.batches()]
    [(['g'], [1.0, 2.0]), (['g'], [3.0])]
    """

    def __init__(self, x, y=None, *, batch_size: int = 4096):
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size}")
        self.source, self.x, self.y = self._classify(x, y)
        self.n_rows: int | None = None
        self.input_names: list[str] | None = None

    @staticmethod
    def _classify(x, y):
        if isinstance(x, Iterator):
            raise DataError("a generator can be read once only, and every update reads the rows again: pass a "
                            "tf.data.Dataset.from_generator(...) or a keras.utils.PyDataset instead")
        if isinstance(x, tf.data.Dataset) or isinstance(x, keras.utils.PyDataset):
            if y is not None:
                raise DataError("pass a tf.data.Dataset or PyDataset of (inputs, targets) as x alone, with y=None")
            return ("dataset" if isinstance(x, tf.data.Dataset) else "pydataset"), x, None
        if y is None:
            raise DataError("EmpiricalBayes needs the training targets y (or a tf.data.Dataset as x)")
        try:
            y = np.asarray(y, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError("EmpiricalBayes needs numeric targets y") from None
        return "arrays", x, y

    def bind(self, model) -> None:
        """Name the inputs after the model's and count the rows (a dataset is read once, without the model)."""
        if self.source == "arrays":
            self.x = _as_input_dict(self.x, model)
            lengths = {len(v) for v in self.x.values()}
            if lengths != {len(self.y)}:
                raise ShapeError(f"y has {len(self.y)} values but x has {sorted(lengths)} rows")
            self.n_rows = len(self.y)
        else:
            self.input_names = [tensor.name for tensor in model.inputs] if len(model.inputs) == 1 else None
            self.n_rows = sum(len(y) for _, y in self.batches())
        if not self.n_rows:
            raise DataError("the training data are empty")

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """(inputs as numpy arrays keyed by input name, float64 targets) per batch."""
        if self.source == "arrays":
            for start in range(0, len(self.y), self.batch_size):
                yield {k: np.asarray(v[start : start + self.batch_size]) for k, v in self.x.items()}, \
                    self.y[start : start + self.batch_size]
            return
        items = self.x if self.source == "dataset" else (self.x[i] for i in range(len(self.x)))
        for item in items:
            if not isinstance(item, tuple) or len(item) < 2:
                raise DataError("the dataset must yield (inputs, targets) pairs")
            inputs, targets = item[0], item[1]
            if not isinstance(inputs, dict):
                if self.input_names is None:
                    raise ShapeError("a multi-input model needs its dataset's inputs as a dict keyed by input name")
                inputs = {self.input_names[0]: inputs}
            try:
                targets = np.asarray(targets, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise DataError("EmpiricalBayes needs numeric targets y") from None
            yield {str(k): np.asarray(v) for k, v in inputs.items()}, targets


def check_batch(inputs: dict[str, np.ndarray], y: np.ndarray, factors: dict[str, int], family: str) -> None:
    """The checks of one batch's rows: factor codes in range, finite targets valid for the family."""
    for factor, levels in factors.items():
        if factor in inputs:
            check_codes(factor, inputs[factor], levels)
    if not np.all(np.isfinite(y)):
        raise DataError(f"y has {int(np.sum(~np.isfinite(y)))} NaN or infinite value(s); drop those rows")
    if family == "binomial" and np.any((y < 0) | (y > 1)):
        raise DataError("family='binomial' needs targets in [0, 1] (0/1 labels or probabilities)")
    if family == "poisson" and np.any(y < 0):
        raise DataError("family='poisson' needs non-negative count targets")


def _as_input_dict(x, model) -> dict[str, Any]:
    if isinstance(x, dict):
        return {str(k): v for k, v in x.items()}
    if len(model.inputs) == 1:
        return {model.inputs[0].name: x}
    raise ShapeError("pass the training inputs as a dict keyed by input name")
