"""MACC, parameters, weight bytes and activation liveness of small models, against hand counts.

Each test builds a small tf.keras / QKeras model, saves it as .h5, loads it with
``bnncube.converters.loader.load_model`` (which lowers the graph: BatchNorm folded, activations and
output quantizers fused) and compares ``layer_figures`` / ``activation_liveness`` with numbers
worked out by hand here, following the conventions of ``bnncube.converters.figures``:

* Conv2D / BinaryConv2D MACC = Ho*Wo*Co*Kh*Kw*Ci; DepthwiseConv2D = Ho*Wo*Co*Kh*Kw; Dense = in*out.
* float32 weights: 4 bytes each; int8: 1 byte; binary: ceil(Ci/32) 32-bit words per (Co, tap).
* quantized MAC op with int8 output: + 8 bytes per output channel (multiplier + shift); a folded
  BatchNorm without bias: + 4 bytes per output channel (int32 offset).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
qkeras = pytest.importorskip("qkeras")

from qkeras import (  # noqa: E402
    QActivation,
    QConv2D,
    QDense,
    binary,
    quantized_bits,
    quantized_po2,
    quantized_tanh,
)

from bnncube.converters.figures import activation_liveness, layer_figures  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.errors import BnnError  # noqa: E402

L = tf.keras.layers


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _save_load(model, tmp_path, name: str = "model.h5"):
    path = tmp_path / name
    model.save(str(path))
    return load_model(path)


def _figures(graph) -> dict:
    return {row.name: row for row in layer_figures(graph)}


def _op(graph, name: str):
    matches = [op for op in graph.ops if op.name == name]
    assert len(matches) == 1, f"no single op named {name!r}: {[o.name for o in graph.ops]}"
    return matches[0]


def _conv_nhwc_ohwi(x, w, b, strides, pads):
    """Reference convolution: x NHWC, w OHWI, pads [top, bottom, left, right] (float64)."""
    top, bottom, left, right = pads
    sh, sw = strides
    xp = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    _, hp, wp, _ = xp.shape
    co, kh, kw, _ = w.shape
    ho = (hp - kh) // sh + 1
    wo = (wp - kw) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, co), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, dy : dy + sh * (ho - 1) + 1 : sh, dx : dx + sw * (wo - 1) + 1 : sw, :]
            out += np.einsum("nhwc,oc->nhwo", patch, w[:, dy, dx, :].astype(np.float64))
    if b is not None:
        out += b.astype(np.float64)
    return out


def _set_random_bn(bn, channels: int, rng) -> None:
    gamma = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, channels).astype(np.float32)
    mean = rng.uniform(-0.3, 0.3, channels).astype(np.float32)
    var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    bn.set_weights([gamma, beta, mean, var])


# --------------------------------------------------------------------------------------------
# float convolutions
# --------------------------------------------------------------------------------------------


def test_float_conv_same_stride1_with_bias(tmp_path):
    inp = L.Input((10, 10, 8))
    out = L.Conv2D(16, 3, padding="same", use_bias=True, name="conv")(inp)
    graph = _save_load(tf.keras.Model(inp, out), tmp_path)

    assert [op.type for op in graph.ops] == ["Conv2D"]
    fig = _figures(graph)["conv"]
    assert fig.op == "Conv2D"
    assert fig.precision == "float32"
    assert fig.output_shape == (1, 10, 10, 16)
    assert fig.macc == 10 * 10 * 16 * 3 * 3 * 8
    assert fig.macc == 115200
    assert fig.params == 3 * 3 * 8 * 16 + 16
    assert fig.weights_bytes == 4 * (1152 + 16)


@pytest.mark.parametrize("relu", ["layer", "activation"])
def test_float_conv_bn_relu_folds_into_one_conv(tmp_path, relu):
    rng = np.random.default_rng(1)
    inp = L.Input((10, 10, 8))
    conv = L.Conv2D(16, 3, padding="same", use_bias=True, name="conv")
    bn = L.BatchNormalization(name="bn")
    x = bn(conv(inp))
    out = L.ReLU(name="relu")(x) if relu == "layer" else L.Activation("relu", name="relu")(x)
    model = tf.keras.Model(inp, out)
    kernel = rng.normal(0, 0.1, (3, 3, 8, 16)).astype(np.float32)
    bias = rng.normal(0, 0.1, 16).astype(np.float32)
    conv.set_weights([kernel, bias])
    _set_random_bn(bn, 16, rng)

    graph = _save_load(model, tmp_path)

    assert [op.type for op in graph.ops] == ["Conv2D"]
    op = graph.ops[0]
    assert op.attrs["activation"] == "relu"
    assert op.attrs["pads"] == [1, 1, 1, 1]
    fig = _figures(graph)[op.name]
    assert fig.macc == 10 * 10 * 16 * 3 * 3 * 8
    assert fig.params == 3 * 3 * 8 * 16 + 16
    assert fig.weights_bytes == 4 * (1152 + 16)

    w = graph.tensors[op.inputs[1]]
    b = graph.tensors[op.inputs[2]]
    assert w.dtype == "float32" and w.shape == (16, 3, 3, 8)
    assert b.dtype == "float32" and b.shape == (16,)
    # the folded weights differ from the raw kernel (BN really was folded into them)
    assert not np.allclose(w.data, np.transpose(kernel, (3, 0, 1, 2)))

    x = rng.normal(0, 1, (1, 10, 10, 8)).astype(np.float32)
    ours = np.maximum(_conv_nhwc_ohwi(x, w.data, b.data, op.attrs["strides"], op.attrs["pads"]), 0)
    keras = model(x, training=False).numpy()
    assert ours.shape == keras.shape
    np.testing.assert_allclose(ours, keras, atol=1e-4, rtol=0)


def test_float_conv_stride2_same(tmp_path):
    rng = np.random.default_rng(2)
    inp = L.Input((10, 10, 8))
    conv = L.Conv2D(16, 3, strides=2, padding="same", name="conv")
    model = tf.keras.Model(inp, conv(inp))
    graph = _save_load(model, tmp_path)

    op = _op(graph, "conv")
    # TF 'same': out = ceil(10/2) = 5; total pad = (5-1)*2 + 3 - 10 = 1 -> top 0, bottom 1
    assert op.attrs["pads"] == [0, 1, 0, 1]
    assert tuple(op.attrs["strides"]) == (2, 2)
    fig = _figures(graph)["conv"]
    assert fig.output_shape == (1, 5, 5, 16)
    assert fig.macc == 5 * 5 * 16 * 9 * 8

    x = rng.normal(0, 1, (1, 10, 10, 8)).astype(np.float32)
    w = graph.tensors[op.inputs[1]].data
    b = graph.tensors[op.inputs[2]].data
    ours = _conv_nhwc_ohwi(x, w, b, op.attrs["strides"], op.attrs["pads"])
    np.testing.assert_allclose(ours, model(x).numpy(), atol=1e-4, rtol=0)


def test_depthwise_stride2_same(tmp_path):
    inp = L.Input((8, 8, 12))
    out = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(inp)
    graph = _save_load(tf.keras.Model(inp, out), tmp_path)

    fig = _figures(graph)["dw"]
    assert fig.op == "DepthwiseConv2D"
    assert fig.output_shape == (1, 4, 4, 12)
    assert fig.macc == 4 * 4 * 12 * 9
    assert fig.params == 3 * 3 * 12 + 12
    assert fig.weights_bytes == 4 * (3 * 3 * 12 + 12)


def test_dense_float(tmp_path):
    inp = L.Input((20,))
    out = L.Dense(7, name="fc")(inp)
    graph = _save_load(tf.keras.Model(inp, out), tmp_path)

    fig = _figures(graph)["fc"]
    assert fig.op == "Dense"
    assert fig.precision == "float32"
    assert fig.macc == 20 * 7
    assert fig.macc == 140
    assert fig.params == 140 + 7
    assert fig.weights_bytes == 4 * (140 + 7)


# --------------------------------------------------------------------------------------------
# int8 QKeras convolution
# --------------------------------------------------------------------------------------------


def test_int8_qconv_bn_quantized_output(tmp_path):
    rng = np.random.default_rng(3)
    inp = L.Input((10, 10, 8))
    x = QActivation(quantized_bits(8, 0, alpha=1), name="qin")(inp)
    qconv = QConv2D(
        16, 3, use_bias=False, kernel_quantizer=quantized_bits(8, 0, alpha=1), name="qc"
    )
    bn = L.BatchNormalization(name="bn")
    x = bn(qconv(x))
    out = QActivation(quantized_bits(8, 3, alpha=1), name="qout")(x)
    model = tf.keras.Model(inp, out)
    # spread the kernel past [-1, 1) so that the quantizer also saturates some weights
    kernel = rng.uniform(-1.5, 1.5, (3, 3, 8, 16)).astype(np.float32)
    qconv.set_weights([kernel])
    _set_random_bn(bn, 16, rng)

    graph = _save_load(model, tmp_path)

    assert [op.type for op in graph.ops] == ["Quantize", "Conv2D"]
    quantize, conv = graph.ops
    assert conv.name == "qc"
    assert graph.tensors[quantize.outputs[0]].dtype == "int8"
    assert conv.inputs[0] == quantize.outputs[0]
    w = graph.tensors[conv.inputs[1]]
    assert w.dtype == "int8"
    assert w.shape == (16, 3, 3, 8)
    # no bias: the folded BN and the scales become the integer output transform's constants
    assert conv.attrs["output_transform"] == "affine"
    assert [graph.tensors[n].dtype for n in conv.inputs[2:]] == ["int32", "int8", "int64"]
    out_t = graph.tensors[conv.outputs[0]]
    assert out_t.dtype == "int8"
    assert out_t.shape == (1, 8, 8, 16)
    assert float(out_t.quant.scale[0]) == 2.0**-4  # quantized_bits(8, 3): 2**(3 - 8 + 1)

    # weights: exactly what the trained quantizer gives, in units of its step 2**-7, as OHWI
    quantized = np.asarray(qconv.kernel_quantizer_internal(tf.constant(kernel)), np.float64)
    expected = np.rint(quantized / 2.0**-7).astype(np.int64)
    expected = np.transpose(expected, (3, 0, 1, 2))
    assert w.data.dtype == np.int8
    np.testing.assert_array_equal(w.data.astype(np.int64), expected)
    assert int(expected.max()) == 127 and int(expected.min()) == -128  # saturation exercised

    fig = _figures(graph)["qc"]
    assert fig.op == "Conv2D"
    assert fig.precision == "int8"
    assert fig.output_dtype == "int8"
    assert fig.macc == 8 * 8 * 16 * 3 * 3 * 8
    # int8 weights + per channel: int32 multiplier + int8 shift + int64 offset (folded BN)
    assert fig.weights_bytes == 16 * 3 * 3 * 8 + 16 * (4 + 1 + 8)
    assert fig.params == 16 * 3 * 3 * 8 + 16  # weights + the per-channel offset


# --------------------------------------------------------------------------------------------
# binary QKeras convolution
# --------------------------------------------------------------------------------------------


def _binary_model(channels: int):
    inp = L.Input((12, 12, channels))
    x = QActivation(quantized_bits(8, 3, alpha=1), name="qin")(inp)
    x = QActivation(binary(alpha=1), name="sign")(x)
    bconv = QConv2D(
        24, 3, padding="same", use_bias=False, kernel_quantizer=binary(alpha=1), name="bconv"
    )
    x = bconv(x)
    x = L.BatchNormalization(name="bn")(x)
    out = QActivation(quantized_bits(8, 3, alpha=1), name="qout")(x)
    return tf.keras.Model(inp, out), bconv


@pytest.mark.parametrize("channels", [16, 40])
def test_binary_qconv(tmp_path, channels):
    model, bconv = _binary_model(channels)
    graph = _save_load(model, tmp_path)

    assert [op.type for op in graph.ops] == ["Quantize", "Bitpack", "BinaryConv2D"]
    _, bitpack, conv = graph.ops
    packed = graph.tensors[bitpack.outputs[0]]
    assert packed.dtype == "binary"
    assert packed.nbytes == 12 * 12 * math.ceil(channels / 32) * 4

    fig = _figures(graph)["bconv"]
    assert fig.op == "BinaryConv2D"
    assert fig.precision == "binary"
    assert fig.output_shape == (1, 12, 12, 24)
    assert fig.output_dtype == "int8"
    assert fig.macc == 12 * 12 * 24 * 9 * channels
    # packed filters + per channel: int32 multiplier + int8 shift + int64 offset (folded BN)
    assert fig.weights_bytes == 24 * 9 * math.ceil(channels / 32) * 4 + 24 * 13
    if channels == 40:
        assert fig.weights_bytes == 24 * 9 * 8 + 312

    w = graph.tensors[conv.inputs[1]]
    assert w.dtype == "binary"
    assert w.shape == (24, 3, 3, channels)
    assert w.data.dtype == np.int8
    assert set(np.unique(w.data).tolist()) <= {-1, 1}
    kernel = bconv.get_weights()[0]
    signs = np.asarray(bconv.kernel_quantizer_internal(tf.constant(kernel)))
    expected = np.transpose(np.where(signs >= 0, 1, -1), (3, 0, 1, 2))
    np.testing.assert_array_equal(w.data.astype(np.int64), expected)


# --------------------------------------------------------------------------------------------
# activation liveness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("c1", "c2", "expected_per_op", "peak_op"),
    [
        # input 1x10x10x8 f32 = 3200 B; conv1 out 10x10x16 f32 = 6400 B; conv2 out 10x10x4 = 1600
        (16, 4, [10 * 10 * 8 * 4 + 10 * 10 * 16 * 4, 10 * 10 * 16 * 4 + 10 * 10 * 4 * 4], 0),
        # conv1 out 10x10x4 = 1600 B; conv2 out 10x10x32 = 12800 B: the peak is at conv2
        (4, 32, [10 * 10 * 8 * 4 + 10 * 10 * 4 * 4, 10 * 10 * 4 * 4 + 10 * 10 * 32 * 4], 1),
    ],
)
def test_liveness_conv_chain(tmp_path, c1, c2, expected_per_op, peak_op):
    inp = L.Input((10, 10, 8))
    x = L.Conv2D(c1, 3, padding="same", name="conv1")(inp)
    out = L.Conv2D(c2, 3, padding="same", name="conv2")(x)
    graph = _save_load(tf.keras.Model(inp, out), tmp_path)

    assert graph.tensors[graph.inputs[0]].nbytes == 1 * 10 * 10 * 8 * 4
    live = activation_liveness(graph)
    assert live.per_op == expected_per_op
    assert live.peak_bytes == max(expected_per_op)
    assert live.peak_op == peak_op


def test_liveness_peak_is_9600_for_16_then_4(tmp_path):
    inp = L.Input((10, 10, 8))
    x = L.Conv2D(16, 3, padding="same", name="conv1")(inp)
    out = L.Conv2D(4, 3, padding="same", name="conv2")(x)
    graph = _save_load(tf.keras.Model(inp, out), tmp_path)
    # while conv1 runs: input (3200 B) and its output (6400 B) are live
    assert activation_liveness(graph).peak_bytes == 3200 + 6400


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def _expect_error(tmp_path, model, *needles):
    with pytest.raises(BnnError) as info:
        _save_load(model, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_error_binary_weights_without_binary_activation(tmp_path):
    inp = L.Input((8, 8, 4))
    x = QActivation(quantized_bits(8, 3, alpha=1), name="qin")(inp)
    out = QConv2D(4, 3, kernel_quantizer=binary(alpha=1), name="lonely_bconv")(x)
    _expect_error(tmp_path, tf.keras.Model(inp, out), "lonely_bconv", "binary")


@pytest.mark.parametrize(
    "quantizer", [quantized_tanh(8), quantized_po2(4)], ids=["quantized_tanh", "quantized_po2"]
)
def test_error_unsupported_activation_quantizer(tmp_path, quantizer):
    inp = L.Input((8, 8, 4))
    out = QActivation(quantizer, name="odd_act")(inp)
    message = _expect_error(tmp_path, tf.keras.Model(inp, out), "odd_act")
    assert type(quantizer).__name__ in message
    assert "quantized_bits" in message  # says what is supported


def test_error_binary_qdense(tmp_path):
    inp = L.Input((8, 8, 4))
    x = QActivation(binary(alpha=1), name="sign")(inp)
    x = L.Flatten(name="flat")(x)
    out = QDense(3, kernel_quantizer=binary(alpha=1), name="bin_fc")(x)
    _expect_error(tmp_path, tf.keras.Model(inp, out), "bin_fc", "Dense")


def test_error_16_bit_kernel_quantizer(tmp_path):
    inp = L.Input((8, 8, 4))
    out = QConv2D(4, 3, kernel_quantizer=quantized_bits(16, 0, alpha=1), name="wide_conv")(inp)
    _expect_error(tmp_path, tf.keras.Model(inp, out), "wide_conv", "16")
