"""The paper's networks, built in Keras (float) and QKeras (hybrid). See docs/networks.md.

Input: 96x96x3 aligned faces scaled to [-1, 1]; output: a 128-d float32 embedding.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

INPUT_SHAPE = (96, 96, 3)
EMBEDDING_SIZE = 128
HEAD_CHANNELS = 1280

# Residual block channels and the transition block that follows each (None: the last block).
# Table 2: 48x48x16 -> [res 16->24] -> [trans 48->24] -> [res 24] -> [trans 24->12, 24->64]
#   -> [res 64] -> [trans 12->6] -> [res 64] -> [trans 6->3, 64->128] -> [res 128]
HYBRID_BLOCKS: tuple[tuple[int, int | None], ...] = (
    (24, 24),
    (24, 64),
    (64, 64),
    (64, 128),
    (128, None),
)

# (flash, RAM, MACC) as the paper's Table 3 gives them; flash/RAM in bytes (1 KB = 1024 B,
# 1 MB = 1024 KB), used only to print our figures beside the paper's.
PAPER_TABLE3: dict[str, dict[str, float]] = {
    "mnv2_fp": {"flash_bytes": 3.27 * 1024 * 1024, "ram_bytes": 477 * 1024, "macc": 19e6},
    "mnv2_i8": {
        "flash_bytes": 850 * 1024,
        "ram_bytes": 163 * 1024,
        "macc": 19e6,
        "inference_ms": 98,
    },
    "hybrid": {
        "flash_bytes": 650 * 1024,
        "ram_bytes": 198 * 1024,
        "macc": 26e6,
        "inference_ms": 89,
    },
}


def _q() -> dict[str, Any]:
    """The quantizers of the hybrid net (fresh objects: QKeras quantizers keep state)."""
    from qkeras import binary, quantized_bits, quantized_relu

    return {
        # weights of 8-bit layers: [-1, 1) in steps of 2^-7
        "w8": quantized_bits(8, 0, alpha=1),
        # signed 8-bit activations (BN outputs that feed a binarization or an add): [-8, 8)
        "a8": quantized_bits(8, 3, alpha=1),
        # unsigned 8-bit activations after ReLU: [0, 8)
        "relu8": quantized_relu(8, 3),
        # input image in [-1, 1)
        "in8": quantized_bits(8, 0, alpha=1),
        # 1-bit activations and weights: sign, 0 -> +1
        "bin": binary(alpha=1),
        # Dense bias: int32 accumulator range
        "bias32": quantized_bits(32, 15, alpha=1),
    }


def build_mnv2_fp(seed: int = 0) -> Any:
    """MobileNetV2 alpha=0.5 on 96x96x3 with the hybrid net's embedding head.

    Keras' MobileNetV2 (include_top=False) already ends in the head's pointwise conv to 1280 +
    BN + ReLU(6); we add the rest of the head: 3x3 depthwise (valid, 3x3 -> 1x1), BN, Dense 128.
    """
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    base = tf.keras.applications.MobileNetV2(
        input_shape=INPUT_SHAPE, alpha=0.5, include_top=False, weights=None
    )
    x = layers.DepthwiseConv2D(3, padding="valid", use_bias=False, name="head_dw")(base.output)
    x = layers.BatchNormalization(name="head_dw_bn")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(EMBEDDING_SIZE, name="embedding")(x)
    return tf.keras.Model(base.input, x, name="mnv2_fp")


def _bn(x: Any, name: str) -> Any:
    import tensorflow as tf

    return tf.keras.layers.BatchNormalization(name=name)(x)


def _residual_block(x: Any, channels: int, name: str) -> Any:
    """Binarize the int8 input, binary 3x3 conv + BN, add the 8-bit shortcut."""
    import tensorflow as tf
    from qkeras import QActivation, QConv2D

    q = _q()
    b = QActivation(q["bin"], name=f"{name}_sign")(x)
    b = QConv2D(
        channels, 3, padding="same", use_bias=False, kernel_quantizer=q["bin"], name=f"{name}_bconv"
    )(b)
    b = QActivation(_q()["a8"], name=f"{name}_bconv_q")(_bn(b, f"{name}_bconv_bn"))
    shortcut = x
    if int(x.shape[-1]) != channels:
        shortcut = QConv2D(
            channels, 1, use_bias=False, kernel_quantizer=q["w8"], name=f"{name}_proj"
        )(x)
        shortcut = QActivation(q["a8"], name=f"{name}_proj_q")(_bn(shortcut, f"{name}_proj_bn"))
    y = tf.keras.layers.Add(name=f"{name}_add")([b, shortcut])
    return QActivation(_q()["a8"], name=f"{name}_out")(y)


def _transition_block(x: Any, channels: int, name: str) -> Any:
    """8-bit depthwise 3x3 stride 2 + BN + ReLU, pointwise + BN (signed output, no ReLU)."""
    from qkeras import QActivation, QConv2D, QDepthwiseConv2D

    q = _q()
    t = QDepthwiseConv2D(
        3, strides=2, padding="same", use_bias=False, depthwise_quantizer=q["w8"], name=f"{name}_dw"
    )(x)
    t = QActivation(q["relu8"], name=f"{name}_dw_relu")(_bn(t, f"{name}_dw_bn"))
    t = QConv2D(channels, 1, use_bias=False, kernel_quantizer=_q()["w8"], name=f"{name}_pw")(t)
    return QActivation(_q()["a8"], name=f"{name}_pw_q")(_bn(t, f"{name}_pw_bn"))


def build_hybrid(seed: int = 0) -> Any:
    """The paper's Table 2 in QKeras: 8-bit stem and transitions, binary residual blocks."""
    import tensorflow as tf
    from qkeras import QActivation, QConv2D, QDense, QDepthwiseConv2D

    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    q = _q()
    inputs = layers.Input(INPUT_SHAPE, name="input")
    x = QActivation(q["in8"], name="input_q")(inputs)
    # stem: Conv 3x3 s2 -> BN+ReLU -> depthwise -> BN+ReLU -> pointwise -> BN
    x = QConv2D(
        16, 3, strides=2, padding="same", use_bias=False, kernel_quantizer=q["w8"], name="stem_conv"
    )(x)
    x = QActivation(q["relu8"], name="stem_conv_relu")(_bn(x, "stem_conv_bn"))
    x = QDepthwiseConv2D(
        3, padding="same", use_bias=False, depthwise_quantizer=_q()["w8"], name="stem_dw"
    )(x)
    x = QActivation(_q()["relu8"], name="stem_dw_relu")(_bn(x, "stem_dw_bn"))
    x = QConv2D(16, 1, use_bias=False, kernel_quantizer=_q()["w8"], name="stem_pw")(x)
    x = QActivation(q["a8"], name="stem_pw_q")(_bn(x, "stem_pw_bn"))
    for i, (channels, next_channels) in enumerate(HYBRID_BLOCKS, start=1):
        x = _residual_block(x, channels, f"res{i}")
        if next_channels is not None:
            x = _transition_block(x, next_channels, f"trans{i}")
    # head: ReLU -> pointwise 1280 -> BN+ReLU -> depthwise 3x3 (to 1x1) -> BN -> Dense 128
    x = QActivation(_q()["relu8"], name="head_relu")(x)
    x = QConv2D(HEAD_CHANNELS, 1, use_bias=False, kernel_quantizer=_q()["w8"], name="head_pw")(x)
    x = QActivation(_q()["relu8"], name="head_pw_relu")(_bn(x, "head_pw_bn"))
    x = QDepthwiseConv2D(
        3, padding="valid", use_bias=False, depthwise_quantizer=_q()["w8"], name="head_dw"
    )(x)
    x = QActivation(_q()["a8"], name="head_dw_q")(_bn(x, "head_dw_bn"))
    x = layers.Flatten(name="flatten")(x)
    x = QDense(
        EMBEDDING_SIZE, kernel_quantizer=_q()["w8"], bias_quantizer=q["bias32"], name="embedding"
    )(x)
    return tf.keras.Model(inputs, x, name="hybrid")
