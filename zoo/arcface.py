"""ArcFace (additive angular margin) head, used only while training an embedding network.

The head holds one weight vector per training identity. Embeddings and class weights are
L2-normalised, so their product is cos(theta); the true class's logit gets the angular margin,
``s * cos(theta + m)``, every other class stays ``s * cos(theta)``. Where ``theta + m`` would pass
pi, cos(theta + m) is no longer decreasing in theta, so (as in the reference implementation) the
target logit falls back to ``s * (cos(theta) - m * sin(m))``, which is monotonic and continuous
at ``theta = pi - m``. The loss is softmax cross-entropy over these logits.
"""

from __future__ import annotations

import math
import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

_EPS = 1e-7


def arcface_logits(embeddings: Any, weights: Any, labels: Any, scale: Any, margin: Any) -> Any:
    """ArcFace logits (batch, classes) for ``embeddings`` (batch, dim), ``weights`` (dim, classes).

    ``scale`` and ``margin`` may be Python floats or scalar tensors (a margin warm-up passes a
    tensor so that the traced step is not re-traced when it changes).
    """
    import tensorflow as tf

    emb = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
    w = tf.math.l2_normalize(tf.cast(weights, tf.float32), axis=0)
    cos = tf.clip_by_value(tf.matmul(emb, w), -1.0 + _EPS, 1.0 - _EPS)
    m = tf.cast(margin, tf.float32)
    sin = tf.sqrt(1.0 - tf.square(cos))
    cos_m = cos * tf.cos(m) - sin * tf.sin(m)  # cos(theta + m)
    threshold = tf.cos(math.pi - m)  # theta + m > pi  <=>  cos(theta) < cos(pi - m)
    fallback = cos - m * tf.sin(m)
    target = tf.where(cos > threshold, cos_m, fallback)
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(w)[1]) > 0.5
    return tf.cast(scale, tf.float32) * tf.where(one_hot, target, cos)


def arcface_loss(embeddings: Any, weights: Any, labels: Any, scale: Any, margin: Any) -> Any:
    """Per-example softmax cross-entropy of the ArcFace logits (shape: batch)."""
    import tensorflow as tf

    logits = arcface_logits(embeddings, weights, labels, scale, margin)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)


def make_head(embedding_size: int, n_classes: int, seed: int) -> Any:
    """A ``tf.Module`` holding the class weights ``w`` (embedding_size, n_classes)."""
    import tensorflow as tf

    class ArcFaceHead(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="arcface_head")
            init = tf.keras.initializers.GlorotUniform(seed=seed)
            self.w = tf.Variable(init((embedding_size, n_classes)), name="w", trainable=True)

    return ArcFaceHead()
