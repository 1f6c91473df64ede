"""Import TensorFlow quietly and once; float64 throughout the statistics.

TensorFlow 2.21 writes its start-up lines (absl's "All log messages before absl::InitializeLog()", CUDA
probing, oneDNN and CPU-feature notices) from C++ straight to file descriptor 2, before
``TF_CPP_MIN_LOG_LEVEL`` is read. They say nothing to a tfmixed user, so descriptor 2 points at /dev/null
while TensorFlow and Keras import and create their first tensor; Python exceptions are unaffected.
``TFMIXED_SHOW_TF_LOGS=1`` keeps them (for debugging a TensorFlow installation).
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _quiet_stderr():
    if os.environ.get("TFMIXED_SHOW_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


try:
    with _quiet_stderr():
        import tensorflow as tf  # noqa: E402
        import keras  # noqa: E402,F401  (imported here, quietly, for tfmixed.keras)

        tf.constant(0.0) + 1.0  # the first op triggers the CPU-feature notice: inside the quiet block
except ImportError as error:  # the core install (lmer, glmer, inference, CLI) has no TensorFlow
    from .errors import OptionalDependencyError

    raise OptionalDependencyError(
        f"this part of tfmixed (the seed's modules, MacKay's loop, the iterative backend, tfmixed.keras, "
        f"LogDensityFamily) needs TensorFlow, which is not installed ({error}): pip install 'tfmixed[tensorflow]'"
    ) from None

DTYPE = tf.float64


def default_optimizer(name: str = "adam", learning_rate: float = 0.1):
    """A fresh Keras optimizer (``"adam"`` or ``"sgd"``) for the gradient-based fits."""
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    return tf.keras.optimizers.Adam(learning_rate=learning_rate)
