"""The Keras and TFLite front ends give the same IR figures for the same network."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np

from bnncube.converters.figures import layer_figures
from bnncube.converters.ir import MAC_OPS
from bnncube.converters.loader import load_model


def mac_rows(graph):
    """(op, output shape, MACC, weight elements) of each MAC op, in order."""
    rows = []
    for fig, op in zip(layer_figures(graph), graph.ops, strict=True):
        if op.type in MAC_OPS:
            weights = graph.tensors[op.inputs[1]]
            rows.append((fig.op, fig.output_shape, fig.macc, weights.num_elements))
    return rows


def test_small_network_keras_vs_tflite(tmp_path):
    import tensorflow as tf

    from bnncube.zoo.build import quantize_mnv2

    tf.keras.utils.set_random_seed(3)
    layers = tf.keras.layers
    inputs = layers.Input((20, 20, 3))
    x = layers.ZeroPadding2D(((0, 1), (0, 1)))(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="valid", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    y = layers.ReLU()(y)
    y = layers.Conv2D(8, 1)(y)
    x = layers.Add()([x, y])
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(10)(x)
    model = tf.keras.Model(inputs, x)
    # non-trivial BatchNorm statistics, so that folding changes the weights
    bn = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)][0]
    bn.set_weights(
        [
            np.random.uniform(0.5, 2, 8),
            np.random.uniform(-1, 1, 8),
            np.random.uniform(-1, 1, 8),
            np.random.uniform(0.5, 2, 8),
        ]
    )
    model.save(tmp_path / "small.h5")
    images = np.random.default_rng(0).uniform(-1, 1, (8, 20, 20, 3)).astype(np.float32)
    (tmp_path / "small.tflite").write_bytes(quantize_mnv2(model, images))

    keras_graph = load_model(tmp_path / "small.h5")
    tflite_graph = load_model(tmp_path / "small.tflite")
    assert mac_rows(keras_graph) == mac_rows(tflite_graph)
    assert len(mac_rows(keras_graph)) == 5
    # padding folded the same way in both (TFLite keeps PAD, our lowering folds it)
    k_conv = next(op for op in keras_graph.ops if op.type == "Conv2D")
    t_conv = next(op for op in tflite_graph.ops if op.type == "Conv2D")
    assert k_conv.attrs["pads"] == t_conv.attrs["pads"] == [0, 1, 0, 1]
    assert k_conv.attrs["activation"] == t_conv.attrs["activation"] == "relu6"
    # the folded float weights and TFLite's int8 weights agree within one quantization step
    k_w = keras_graph.tensors[k_conv.inputs[1]].data
    t_w = tflite_graph.tensors[t_conv.inputs[1]]
    scale = t_w.quant.scale.reshape(-1, 1, 1, 1)
    assert np.max(np.abs(t_w.data * scale - k_w) / scale) <= 0.5 + 1e-3


def test_mnv2_keras_vs_tflite(mnv2_fp_h5, mnv2_i8_tflite):
    keras_rows = mac_rows(load_model(mnv2_fp_h5))
    tflite_rows = mac_rows(load_model(mnv2_i8_tflite))
    assert keras_rows == tflite_rows
    assert len(keras_rows) == 54  # 52 convolutions of MobileNetV2 + head depthwise + dense
    assert sum(r[2] for r in keras_rows) == sum(r[2] for r in tflite_rows)
