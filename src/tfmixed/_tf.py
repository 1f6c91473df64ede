"""Import TensorFlow quietly and once; float64 throughout the statistics."""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) says nothing to a tfmixed user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

DTYPE = tf.float64


def default_optimizer(name: str = "adam", learning_rate: float = 0.1):
    """A fresh Keras optimizer (``"adam"`` or ``"sgd"``) for the gradient-based fits."""
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    return tf.keras.optimizers.Adam(learning_rate=learning_rate)
