"""BatchNormalization statistics from data, for untrained networks.

A freshly initialised network has BatchNormalization layers with mean 0 and variance 1, which
says nothing about the values that reach them: 8-bit quantizers after them then saturate or see
only a few levels, and binarizations see constants. :func:`set_bn_statistics` sets each BN
layer's moving mean and variance to the per-channel statistics of its actual input on a batch of
images, layer by layer in order (so each layer sees the already-normalised layers before it), as
a trained network would have them. It leaves gamma and beta alone unless ``rng`` is given, in
which case they are drawn at random (gamma mostly positive, some negative) so that tests exercise
every sign of the folded output transform.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def set_bn_statistics(
    model: Any, images: np.ndarray, rng: np.random.Generator | None = None
) -> int:
    """Set every BatchNormalization layer of ``model`` from ``images``; return how many."""
    import tensorflow as tf

    bns = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    x = np.asarray(images, np.float32)
    for bn in bns:
        probe = tf.keras.Model(model.inputs, bn.input)
        values = np.asarray(probe(x, training=False), np.float64)
        axes = tuple(range(values.ndim - 1))
        mean = values.mean(axis=axes)
        var = values.var(axis=axes) + 1e-6
        weights = {w.name.split("/")[-1].split(":")[0]: w for w in bn.weights}
        weights["moving_mean"].assign(mean.astype(np.float32))
        weights["moving_variance"].assign(var.astype(np.float32))
        if rng is not None:
            channels = mean.size
            if "gamma" in weights:
                sign = np.where(rng.random(channels) < 0.15, -1.0, 1.0)
                weights["gamma"].assign((sign * rng.uniform(0.5, 1.5, channels)).astype(np.float32))
            if "beta" in weights:
                weights["beta"].assign(rng.normal(0.0, 0.4, channels).astype(np.float32))
    return len(bns)
