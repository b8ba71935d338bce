"""bnncube's ONNX form: exact against the reference, identity round trip, one-line errors.

(a) Exactness.  Deployed IR graphs (small TFLite int8 models, ``mnv2_i8``, the zoo hybrid, small
random QKeras models with binary layers, and hand-built graphs covering the remaining op forms)
are exported with ``export_onnx``, checked with ``onnx.checker.check_model(full_check=True)`` and
run in onnxruntime (``onnx_ops.make_session``); every output and every intermediate IR tensor
(exposed as extra graph outputs) must equal ``run_graph``'s value exactly, on several inputs.

(b) Round trip.  ``load_onnx(save_onnx(graph))`` is the same IR: ops (type, name, inputs, outputs,
attributes, arrays compared exactly), tensors (shape, dtype, quantization with its source,
constant data), graph inputs, outputs, name and source.

(c) Bad inputs.  Every error of ``load_onnx`` is a ``BnnError`` with a one-line message.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import copy  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from bnncube.converters import onnx_ops  # noqa: E402
from bnncube.converters.ir import Graph, Op, Quant, Tensor  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.onnx_export import METADATA_KEY, export_onnx, save_onnx  # noqa: E402
from bnncube.converters.onnx_frontend import load_onnx  # noqa: E402
from bnncube.converters.reference import run_graph  # noqa: E402
from bnncube.errors import BnnError  # noqa: E402

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _random_inputs(graph: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for name in graph.inputs:
        t = graph.tensors[name]
        if t.dtype == "float32":
            out.append(rng.uniform(-1.0, 1.0, t.shape).astype(np.float32))
        else:
            lo, hi = {"int8": (-128, 128), "uint8": (0, 256)}[t.dtype]
            out.append(rng.integers(lo, hi, t.shape).astype(t.dtype))
    return out


def _with_intermediates(model: Any, names: list[str]) -> Any:
    """A copy of ``model`` whose graph also outputs the values ``names`` (from value_info)."""
    m = copy.deepcopy(model)
    infos = {v.name: v for v in m.graph.value_info}
    for name in names:
        m.graph.output.append(infos[name])
    return m


def check_exact(graph: Graph, seeds: tuple[int, ...] = (0, 1, 2)) -> int:
    """Export, check and run ``graph`` in onnxruntime; assert every IR value equals the
    reference.  Returns how many intermediate tensors were compared per input."""
    model = export_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    infos = {v.name for v in model.graph.value_info}
    inner = [n for n in graph.tensors if n in infos]
    session = onnx_ops.make_session(_with_intermediates(model, inner))
    names = [o.name for o in session.get_outputs()]
    assert names[: len(graph.outputs)] == graph.outputs
    for seed in seeds:
        inputs = _random_inputs(graph, seed)
        ref = run_graph(graph, inputs, outputs_only=False)
        got = session.run(None, dict(zip(graph.inputs, inputs, strict=True)))
        bad = []
        for name, value in zip(names, got, strict=True):
            want = ref[name]
            if value.dtype != want.dtype or not np.array_equal(value, want):
                diff = np.abs(value.astype(np.float64) - want.astype(np.float64))
                bad.append(
                    f"{name}: {int((diff > 0).sum())} of {diff.size} differ, max {diff.max()}"
                )
        assert not bad, f"seed {seed}:\n" + "\n".join(bad)
    return len(inner)


def _same_value(a: Any, b: Any, where: str) -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{where}: values differ"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and (a == b or (a != a and b != b)), f"{where}: {a} vs {b}"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_value(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            _same_value(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, float):
        assert a == b or (a != a and b != b), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_same_graph(a: Graph, b: Graph) -> None:
    """The two IR graphs are identical (names, order, values, quantization, attributes)."""
    for key in ("name", "source_format", "inputs", "outputs"):
        _same_value(getattr(a, key), getattr(b, key), key)
    _same_value(Path(a.source).name, b.source, "source")  # the file name (reproducible bytes)
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        tb = b.tensors[name]
        where = f"tensor {name!r}"
        _same_value((ta.name, ta.shape, ta.dtype), (tb.name, tb.shape, tb.dtype), where)
        assert (ta.quant is None) == (tb.quant is None), where
        if ta.quant is not None and tb.quant is not None:
            _same_value(np.asarray(ta.quant.scale), np.asarray(tb.quant.scale), f"{where}.scale")
            _same_value(
                np.asarray(ta.quant.zero_point), np.asarray(tb.quant.zero_point), f"{where}.zp"
            )
            _same_value(ta.quant.axis, tb.quant.axis, f"{where}.axis")
            _same_value(ta.quant.source, tb.quant.source, f"{where}.source")
        assert (ta.data is None) == (tb.data is None), where
        if ta.data is not None:
            _same_value(np.asarray(ta.data), np.asarray(tb.data), f"{where}.data")
    assert len(a.ops) == len(b.ops)
    for oa, ob in zip(a.ops, b.ops, strict=True):
        where = f"op {oa.name!r}"
        _same_value(
            (oa.name, oa.type, oa.inputs, oa.outputs),
            (ob.name, ob.type, ob.inputs, ob.outputs),
            where,
        )
        _same_value(oa.attrs, ob.attrs, f"{where}.attrs")


def check_round_trip(graph: Graph, tmp_path: Path) -> Graph:
    path = save_onnx(graph, tmp_path / f"{graph.name or 'g'}.onnx")
    back = load_onnx(path)
    assert_same_graph(graph, back)
    return back


# --------------------------------------------------------------------------------------------
# small TFLite int8 models (bodies as in test_reference_int8.py)
# --------------------------------------------------------------------------------------------


def _keras_model(body: Callable[[Any, Any], Any], shape: tuple[int, ...], seed: int = 0) -> Any:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    inp = tf.keras.Input(shape=shape)
    return tf.keras.Model(inp, body(tf.keras.layers, inp))


def _tflite(model: Any, path: Path) -> Path:
    from bnncube.zoo.build import quantize_mnv2

    shape = (8,) + tuple(model.input_shape[1:])
    images = np.random.default_rng(0).uniform(-1.0, 1.0, size=shape).astype(np.float32)
    path.write_bytes(quantize_mnv2(model, images))
    return path


def _conv(L: Any, x: Any) -> Any:
    x = L.Conv2D(13, 3, padding="same", activation="relu")(x)
    x = L.Conv2D(5, 3, strides=2, padding="same", activation="relu6")(x)
    x = L.Conv2D(4, 3, strides=1, padding="valid")(x)
    return L.Conv2D(4, 1, padding="valid", activation="relu")(x)


def _depthwise(L: Any, x: Any) -> Any:
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="valid", activation="relu6")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    return L.ReLU()(x)


def _add(L: Any, x: Any) -> Any:
    a = L.Conv2D(5, 3, padding="same")(x)
    b = L.Conv2D(5, 1, padding="same", activation="relu")(x)
    y = L.Add()([a, b])
    return L.ReLU()(L.Add()([y, L.Conv2D(5, 1)(y)]))


def _pools(L: Any, x: Any) -> Any:
    x = L.Conv2D(5, 3, padding="same", activation="relu")(x)
    x = L.AveragePooling2D(3, strides=2, padding="same")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    x = L.MaxPooling2D(2, padding="valid")(x)
    x = L.Flatten()(x)
    return L.Dense(5, activation="relu")(x)


def _global_pool(L: Any, x: Any) -> Any:
    x = L.Conv2D(13, 3, padding="same", activation="relu6")(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Conv2D(7, 1)(x)
    x = L.GlobalAveragePooling2D()(x)
    return L.Dense(3)(x)


TFLITE_CASES: dict[str, tuple[Callable[[Any, Any], Any], tuple[int, ...], set[str]]] = {
    "conv": (_conv, (13, 11, 5), {"Conv2D"}),
    "depthwise": (_depthwise, (11, 12, 3), {"DepthwiseConv2D"}),
    "add": (_add, (8, 7, 3), {"Add"}),
    "pools": (_pools, (15, 13, 3), {"AveragePool2D", "MaxPool2D", "Reshape", "Dense"}),
    "global_pool": (_global_pool, (7, 9, 5), {"Mean", "Dense"}),
}


@pytest.fixture(scope="module")
def tflite_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graph]:
    tmp = tmp_path_factory.mktemp("onnx_tflite")
    graphs = {}
    for case, (body, shape, _) in TFLITE_CASES.items():
        path = _tflite(_keras_model(body, shape), tmp / f"{case}.tflite")
        graphs[case] = load_model(path)
    return graphs


# --------------------------------------------------------------------------------------------
# small QKeras models with binary layers
# --------------------------------------------------------------------------------------------


def _qkeras_model(seed: int) -> Any:
    """A small QKeras model; seed 0: residual binary block (40 channels, projection, alpha
    auto_po2), binary chain (threshold), float Dense; seed 1: depthwise + pointwise, strided
    valid binary conv, quantized_relu, float Dense over a flattened int8 map."""
    import tensorflow as tf
    from qkeras import (
        QActivation,
        QConv2D,
        QDense,
        QDepthwiseConv2D,
        binary,
        quantized_bits,
        quantized_relu,
    )

    from bnncube.zoo.calibrate import set_bn_statistics

    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    L = tf.keras.layers
    size = 9 if seed == 0 else 10
    inp = L.Input((size, size, 3), name="input")
    x = QActivation(quantized_bits(8, 0, alpha=1), name="input_q")(inp)
    w8 = quantized_bits(8, 0, alpha=1)

    def bconv(t: Any, ch: int, name: str, stride: int = 1, padding: str = "same", alpha: Any = 1):
        return QConv2D(
            ch,
            3,
            strides=stride,
            padding=padding,
            use_bias=False,
            kernel_quantizer=binary(alpha=alpha),
            name=name,
        )(t)

    x = QConv2D(
        16,
        3,
        strides=2 if seed else 1,
        padding="same",
        kernel_quantizer=w8,
        bias_quantizer=quantized_bits(16, 7, alpha=1),
        name="stem",
    )(x)
    x = QActivation(quantized_bits(8, 2, alpha=1), name="stem_q")(
        L.BatchNormalization(name="bn0")(x)
    )
    if seed == 0:
        b = QActivation(binary(alpha=1), name="sign1")(x)
        b = L.BatchNormalization(name="bn1")(bconv(b, 40, "bconv1", alpha="auto_po2"))
        b = QActivation(quantized_bits(8, 2, alpha=1), name="b_q")(b)
        s = QConv2D(40, 1, use_bias=False, kernel_quantizer=w8, name="proj")(x)
        s = QActivation(quantized_bits(8, 2, alpha=1), name="proj_q")(
            L.BatchNormalization(name="bn2")(s)
        )
        x = QActivation(quantized_bits(8, 3, alpha=1), name="add_q")(L.Add(name="add")([b, s]))
        b = QActivation(binary(alpha=1), name="sign2")(x)
        b = L.BatchNormalization(name="bn3")(bconv(b, 33, "bconv2"))
        b = QActivation(binary(alpha=1), name="sign3")(b)  # threshold transform
        b = L.BatchNormalization(name="bn4")(bconv(b, 24, "bconv3", padding="valid"))
        x = QActivation(quantized_bits(8, 2, alpha=1), name="chain_q")(b)
    else:
        x = QDepthwiseConv2D(3, padding="same", use_bias=False, depthwise_quantizer=w8, name="dw")(
            x
        )
        x = QActivation(quantized_relu(8, 2), name="dw_relu")(L.BatchNormalization(name="bn1")(x))
        x = QConv2D(24, 1, use_bias=False, kernel_quantizer=w8, name="pw")(x)
        x = QActivation(quantized_bits(8, 2, alpha=1), name="pw_q")(
            L.BatchNormalization(name="bn2")(x)
        )
        b = QActivation(binary(alpha=1), name="sign1")(x)
        b = L.BatchNormalization(name="bn3")(bconv(b, 16, "bconv1", stride=2, padding="valid"))
        x = QActivation(quantized_bits(8, 2, alpha=1), name="b_q")(b)
    x = L.Flatten(name="flatten")(x)
    x = QDense(
        6, kernel_quantizer=w8, bias_quantizer=quantized_bits(32, 15, alpha=1), name="dense"
    )(x)
    model = tf.keras.Model(inp, x, name=f"qkeras_{seed}")
    calib = np.random.default_rng(seed + 500).uniform(-1, 1, (8, size, size, 3))
    set_bn_statistics(model, calib.astype(np.float32), rng=rng)
    return model


@pytest.fixture(scope="module")
def qkeras_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Graph]:
    tmp = tmp_path_factory.mktemp("onnx_qkeras")
    graphs = {}
    for seed in (0, 1):
        path = tmp / f"qkeras_{seed}.h5"
        _qkeras_model(seed).save(path)
        graphs[seed] = load_model(path)
    return graphs


# --------------------------------------------------------------------------------------------
# hand-built graphs for the remaining forms
# --------------------------------------------------------------------------------------------


def _t(
    g: Graph,
    name: str,
    shape: tuple[int, ...],
    dtype: str,
    quant: Quant | None = None,
    data: np.ndarray | None = None,
) -> str:
    g.add_tensor(Tensor(name, shape, dtype, quant, data))
    return name


def int8_misc_graph() -> Graph:
    """float -> Quantize (half away) -> Pad -> Quantize to uint8 -> back to int8 -> dilated
    Conv2D (per-channel weights, bias, ReLU) -> MaxPool with ReLU -> Reshape -> Dense (per-tensor
    weights, bias, 4-D output) -> affine Quantize -> Dequantize."""
    rng = np.random.default_rng(3)
    q = Quant.per_tensor
    g = Graph("int8_misc", source="hand-built", source_format="test")
    _t(g, "x", (1, 6, 7, 5), "float32")
    _t(g, "xq", (1, 6, 7, 5), "int8", q(0.02, -3, "tflite"))
    _t(g, "xp", (1, 7, 10, 5), "int8", q(0.02, -3, "tflite"))
    _t(g, "xu", (1, 7, 10, 5), "uint8", q(0.03, 120, "tflite"))
    _t(g, "x2", (1, 7, 10, 5), "int8", q(0.025, -1, "tflite"))
    wc = rng.integers(-127, 128, (6, 3, 3, 5)).astype(np.int8)
    wq = Quant(rng.uniform(0.001, 0.01, 6), np.zeros(6, np.int64), 0, "tflite")
    _t(g, "wc", wc.shape, "int8", wq, wc)
    _t(g, "bc", (6,), "int32", None, rng.integers(-500, 500, 6).astype(np.int32))
    _t(g, "x2c", (1, 7, 10, 6), "int8", q(0.04, 5, "tflite"))
    _t(g, "x3", (1, 4, 5, 6), "int8", q(0.04, 5, "tflite"))
    _t(g, "x4", (1, 120), "int8", q(0.04, 5, "tflite"))
    w = rng.integers(-127, 128, (7, 120)).astype(np.int8)
    _t(g, "w", (7, 120), "int8", q(0.004, 0, "tflite"), w)
    _t(g, "b", (7,), "int32", q(0.0001, 0, "tflite"), rng.integers(-900, 900, 7).astype(np.int32))
    _t(g, "x5", (1, 1, 1, 7), "int8", q(0.07, 4, "tflite"))
    _t(g, "m", (1,), "int32", None, np.asarray([1_500_000_000], np.int32))
    _t(g, "s", (1,), "int8", None, np.asarray([31], np.int8))
    _t(g, "o", (1,), "int64", None, np.asarray([-(2**34)], np.int64))
    _t(g, "x6", (1, 1, 1, 7), "int8", q(0.05, 2, "quantized_bits(8,2)"))
    _t(g, "y", (1, 1, 1, 7), "float32")
    g.add_op(Op("quant", "Quantize", ["x"], ["xq"], {"rounding": "half_away"}))
    g.add_op(Op("pad", "Pad", ["xq"], ["xp"], {"pads": [1, 0, 2, 1]}))
    g.add_op(Op("to_u8", "Quantize", ["xp"], ["xu"], {}))
    g.add_op(Op("to_i8", "Quantize", ["xu"], ["x2"], {}))
    g.add_op(
        Op(
            "dilated",
            "Conv2D",
            ["x2", "wc", "bc"],
            ["x2c"],
            {"strides": (1, 1), "dilations": (2, 2), "pads": [2, 2, 2, 2], "activation": "relu"},
        )
    )
    g.add_op(
        Op(
            "pool",
            "MaxPool2D",
            ["x2c"],
            ["x3"],
            {"pool": (2, 2), "strides": (2, 2), "pads": [0, 1, 0, 0], "activation": "relu"},
        )
    )
    g.add_op(Op("flat", "Reshape", ["x3"], ["x4"], {}))
    g.add_op(Op("fc", "Dense", ["x4", "w", "b"], ["x5"], {"activation": "relu6"}))
    g.add_op(
        Op(
            "requant",
            "Quantize",
            ["x5", "m", "s", "o"],
            ["x6"],
            {"output_transform": "affine", "clamp": (-100, 100), "note": {"k": [1, (2, 3.5)]}},
        )
    )
    g.add_op(Op("deq", "Dequantize", ["x6"], ["y"], {}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def float_binary_graph() -> Graph:
    """float -> Quantize (half even, narrow range) -> Bitpack -> BinaryConv2D (one padding,
    stride 2, float transform, ReLU) -> MaxPool (ReLU6) + Add (ReLU) -> Pad -> Bitpack (float) ->
    BinaryConv2D (threshold, 33 channels) as a binary graph output."""
    rng = np.random.default_rng(5)
    g = Graph("float_binary", source="hand-built", source_format="test")
    _t(g, "x", (1, 5, 5, 40), "float32")
    _t(g, "xq", (1, 5, 5, 40), "int8", Quant.per_tensor(1 / 32, 0, "quantized_bits(6,0)"))
    _t(g, "xb", (1, 5, 5, 40), "binary")
    w1 = np.where(rng.random((8, 3, 3, 40)) < 0.5, -1, 1).astype(np.int8)
    _t(g, "w1", w1.shape, "binary", None, w1)
    _t(g, "scale", (8,), "float32", None, rng.uniform(0.01, 0.1, 8).astype(np.float32))
    _t(g, "offset", (8,), "float32", None, rng.uniform(-1, 1, 8).astype(np.float32))
    _t(g, "f", (1, 3, 3, 8), "float32")
    _t(g, "fp", (1, 3, 3, 8), "float32")
    _t(g, "fs", (1, 3, 3, 8), "float32")
    _t(g, "fpad", (1, 4, 5, 8), "float32")
    _t(g, "fb", (1, 4, 5, 8), "binary")
    w2 = np.where(rng.random((33, 2, 3, 8)) < 0.5, -1, 1).astype(np.int8)
    _t(g, "w2", w2.shape, "binary", None, w2)
    _t(g, "thr", (33,), "int32", None, rng.integers(-8, 9, 33).astype(np.int32))
    d = rng.integers(-1, 2, 33).astype(np.int8)
    _t(g, "dir", (33,), "int8", None, d)
    g.tensors["thr"].data[d == 0] = rng.integers(0, 2, int((d == 0).sum()))
    _t(g, "yb", (1, 3, 3, 33), "binary")
    g.add_op(Op("q", "Quantize", ["x"], ["xq"], {"rounding": "half_even", "qrange": (-32, 31)}))
    g.add_op(Op("sign", "Bitpack", ["xq"], ["xb"], {}))
    g.add_op(
        Op(
            "bconv1",
            "BinaryConv2D",
            ["xb", "w1", "scale", "offset"],
            ["f"],
            {
                "strides": (2, 2),
                "pads": [1, 1, 1, 1],
                "pad_value": 1,
                "output_transform": "float",
                "activation": "relu",
            },
        )
    )
    g.add_op(
        Op(
            "pool",
            "MaxPool2D",
            ["f"],
            ["fp"],
            {"pool": (3, 3), "strides": (1, 1), "pads": [1, 1, 1, 1], "activation": "relu6"},
        )
    )
    g.add_op(Op("sum", "Add", ["f", "fp"], ["fs"], {"activation": "relu"}))
    g.add_op(Op("padf", "Pad", ["fs"], ["fpad"], {"pads": [1, 0, 0, 2]}))
    g.add_op(Op("sign2", "Bitpack", ["fpad"], ["fb"], {}))
    g.add_op(
        Op(
            "bconv2",
            "BinaryConv2D",
            ["fb", "w2", "thr", "dir"],
            ["yb"],
            {
                "strides": (1, 1),
                "pads": [0, 0, 0, 0],
                "pad_value": 0,
                "output_transform": "threshold",
            },
        )
    )
    g.inputs, g.outputs = ["x"], ["yb"]
    return g


def binary_chain_graph() -> Graph:
    """A graph whose quantization is all stated by its nodes (readable without metadata):
    QuantizeLinear -> Bitpack -> BinaryConv2D (threshold) -> BinaryConv2D (affine) -> MaxPool ->
    Reshape -> DequantizeLinear."""
    rng = np.random.default_rng(7)
    g = Graph("binary_chain", source="hand-built", source_format="test")
    _t(g, "x", (1, 6, 6, 20), "float32")
    _t(g, "xq", (1, 6, 6, 20), "int8", Quant.per_tensor(1 / 16, 0))
    _t(g, "xb", (1, 6, 6, 20), "binary")
    w1 = np.where(rng.random((24, 3, 3, 20)) < 0.5, -1, 1).astype(np.int8)
    _t(g, "w1", w1.shape, "binary", None, w1)
    _t(g, "thr", (24,), "int32", None, rng.integers(-20, 21, 24).astype(np.int32))
    _t(g, "dir", (24,), "int8", None, np.where(rng.random(24) < 0.5, -1, 1).astype(np.int8))
    _t(g, "hb", (1, 6, 6, 24), "binary")
    w2 = np.where(rng.random((16, 3, 3, 24)) < 0.5, -1, 1).astype(np.int8)
    _t(g, "w2", w2.shape, "binary", None, w2)
    _t(g, "m", (16,), "int32", None, rng.integers(2**29, 2**30, 16).astype(np.int32))
    _t(g, "s", (16,), "int8", None, np.full(16, 33, np.int8))
    _t(g, "o", (16,), "int64", None, rng.integers(-(2**33), 2**33, 16).astype(np.int64))
    _t(g, "y8", (1, 4, 4, 16), "int8", Quant.per_tensor(0.125, -2))
    _t(g, "yp", (1, 2, 2, 16), "int8", Quant.per_tensor(0.125, -2))
    _t(g, "yr", (1, 64), "int8", Quant.per_tensor(0.125, -2))
    _t(g, "y", (1, 64), "float32")
    g.add_op(Op("q", "Quantize", ["x"], ["xq"], {"rounding": "half_even"}))
    g.add_op(Op("sign", "Bitpack", ["xq"], ["xb"], {}))
    g.add_op(
        Op(
            "bconv1",
            "BinaryConv2D",
            ["xb", "w1", "thr", "dir"],
            ["hb"],
            {
                "strides": (1, 1),
                "pads": [1, 1, 1, 1],
                "pad_value": 0,
                "output_transform": "threshold",
            },
        )
    )
    g.add_op(
        Op(
            "bconv2",
            "BinaryConv2D",
            ["hb", "w2", "m", "s", "o"],
            ["y8"],
            {
                "strides": (1, 1),
                "pads": [0, 0, 0, 0],
                "pad_value": 0,
                "output_transform": "affine",
                "clamp": (-128, 127),
            },
        )
    )
    g.add_op(
        Op(
            "pool",
            "MaxPool2D",
            ["y8"],
            ["yp"],
            {"pool": (2, 2), "strides": (2, 2), "pads": [0, 0, 0, 0]},
        )
    )
    g.add_op(Op("flat", "Reshape", ["yp"], ["yr"], {}))
    g.add_op(Op("deq", "Dequantize", ["yr"], ["y"], {}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def tflite_scales_graph(digits: int | None = None) -> Graph:
    """TFLite-transform Quantize, Add, AveragePool2D (ReLU) and Mean with scales of many digits
    (those of a random model where 6-digit scales changed ADD); ``digits`` rounds them."""
    scales = [0.011336380615830421, 0.00704230135306716, 0.0123456789, 0.00913377321]
    if digits is not None:
        scales = [float(f"{v:.{digits}g}") for v in scales]
    s_a, s_b, s_p, s_m = (float(np.float32(v)) for v in scales)
    q = Quant.per_tensor
    g = Graph("tflite_scales", source="hand-built", source_format="test")
    _t(g, "x", (1, 16, 16, 16), "int8", q(s_a, 15, "tflite"))
    _t(g, "x2", (1, 16, 16, 16), "int8", q(s_m, 9, "tflite"))
    _t(g, "xb", (1, 16, 16, 16), "int8", q(s_b, -5, "tflite"))
    _t(g, "y", (1, 16, 16, 16), "int8", q(s_a, 15, "tflite"))
    _t(g, "p", (1, 8, 8, 16), "int8", q(s_a, 15, "tflite"))
    _t(g, "m", (1, 1, 1, 16), "int8", q(s_m, 2, "tflite"))
    _t(g, "z", (1, 8, 8, 16), "int8", q(s_p, -7, "tflite"))
    _t(g, "zm", (1, 16), "int8", q(s_m, -1, "tflite"))
    g.add_op(Op("requant", "Quantize", ["x2"], ["xb"], {}))
    g.add_op(Op("add", "Add", ["x", "xb"], ["y"], {"activation": "none"}))
    pool = {"pool": (3, 3), "strides": (2, 2), "pads": [0, 1, 0, 1], "activation": "relu"}
    g.add_op(Op("avg", "AveragePool2D", ["y"], ["p"], pool))
    g.add_op(Op("mean", "Mean", ["p"], ["m"], {"axes": (1, 2), "keepdims": True}))
    g.add_op(Op("requant2", "Quantize", ["p"], ["z"], {}))
    g.add_op(Op("mean2", "Mean", ["z"], ["zm"], {"axes": (1, 2), "keepdims": False}))
    g.inputs, g.outputs = ["x", "x2"], ["m", "zm"]
    return g


HAND_BUILT = {
    "tflite_scales": tflite_scales_graph,
    "int8_misc": int8_misc_graph,
    "float_binary": float_binary_graph,
    "binary_chain": binary_chain_graph,
}


# --------------------------------------------------------------------------------------------
# (a) exactness and (b) round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(TFLITE_CASES))
def test_tflite_models(case: str, tflite_graphs: dict[str, Graph], tmp_path: Path) -> None:
    graph = tflite_graphs[case]
    assert TFLITE_CASES[case][2] <= {op.type for op in graph.ops}
    assert check_exact(graph) >= len(graph.ops) - 2
    back = check_round_trip(graph, tmp_path)
    x = _random_inputs(graph, 9)
    assert np.array_equal(
        run_graph(back, x)[graph.outputs[0]], run_graph(graph, x)[graph.outputs[0]]
    )


def test_mnv2_i8(mnv2_i8_tflite: Path, tmp_path: Path) -> None:
    graph = load_model(mnv2_i8_tflite)
    compared = check_exact(graph, seeds=(0, 1))
    assert compared > 60
    check_round_trip(graph, tmp_path)


def test_hybrid(hybrid_h5: Path, tmp_path: Path) -> None:
    graph = load_model(hybrid_h5)
    kinds = {(op.type, op.attrs.get("output_transform")) for op in graph.ops}
    assert {("BinaryConv2D", "affine"), ("Add", "affine"), ("Dense", "float")} <= kinds
    assert check_exact(graph, seeds=(0, 1)) > 25
    check_round_trip(graph, tmp_path)


@pytest.mark.parametrize("seed", (0, 1))
def test_qkeras_models(seed: int, qkeras_graphs: dict[int, Graph], tmp_path: Path) -> None:
    graph = qkeras_graphs[seed]
    transforms = {op.attrs.get("output_transform") for op in graph.ops}
    assert {"affine", "float"} <= transforms
    if seed == 0:
        assert "threshold" in transforms
        assert any(op.type == "Add" for op in graph.ops)
    check_exact(graph)
    check_round_trip(graph, tmp_path)


@pytest.mark.parametrize("case", list(HAND_BUILT))
def test_hand_built_graphs(case: str, tmp_path: Path) -> None:
    graph = HAND_BUILT[case]()
    check_exact(graph, seeds=(0, 1, 2, 3))
    check_round_trip(graph, tmp_path)


def test_scales_are_passed_exactly() -> None:
    """Scales reach the ai.bnncube ops exactly (float32 inputs, not 6-digit FLOAT attributes):
    with scales rounded to 6 digits the reference gives different int8 values here."""
    exact, rounded = tflite_scales_graph(), tflite_scales_graph(digits=6)
    differ = 0
    for seed in range(4):
        x = _random_inputs(exact, seed)
        a = run_graph(exact, x, outputs_only=False)
        b = run_graph(rounded, x, outputs_only=False)
        differ += sum(int((a[n] != b[n]).sum()) for n in ("xb", "y", "p", "z"))
    assert differ > 0
    check_exact(exact, seeds=(0, 1, 2, 3))


def test_node_forms(hybrid_h5: Path, mnv2_i8_tflite: Path) -> None:
    """The int8 accumulations are standard ops; requantization and binary ops are ours."""
    hybrid = export_onnx(load_model(hybrid_h5))
    mnv2 = export_onnx(load_model(mnv2_i8_tflite))
    kinds = {(n.domain, n.op_type) for m in (hybrid, mnv2) for n in m.graph.node}
    assert {("", "ConvInteger"), ("", "MatMulInteger"), ("", "QuantizeLinear")} <= kinds
    assert {("ai.bnncube", "Bitpack"), ("ai.bnncube", "BinaryConv2D")} <= kinds
    assert {("ai.bnncube", "Requantize"), ("ai.bnncube", "RequantizeAffine")} <= kinds
    assert {("", "QLinearConv"), ("", "Conv")}.isdisjoint(kinds)
    opsets = {o.domain: o.version for o in hybrid.opset_import}
    assert opsets == {"": 21, "ai.bnncube": 1}
    model_in = hybrid.graph.input[0]
    assert model_in.name == "input"
    dims = [d.dim_value for d in model_in.type.tensor_type.shape.dim]
    assert dims == [1, 96, 96, 3]  # NHWC, as the IR


def test_registration_is_idempotent() -> None:
    graph = int8_misc_graph()
    model = export_onnx(graph)
    onnx_ops.register()
    onnx_ops.register()
    importlib.reload(onnx_ops)
    onnx_ops.register()
    x = _random_inputs(graph, 0)
    ref = run_graph(graph, x)["y"]
    for level in ("all", "basic", "none"):
        for _ in range(2):
            got = onnx_ops.make_session(model, level).run(None, {"x": x[0]})[0]
            assert np.array_equal(got, ref)


def test_save_onnx_is_atomic(tmp_path: Path) -> None:
    graph = int8_misc_graph()
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    graph.ops[0].type = "Softmax"  # no ONNX form: the export fails
    with pytest.raises(BnnError, match="op 'quant' \\(Softmax\\).*no ONNX form"):
        save_onnx(graph, target)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_read_without_metadata(tmp_path: Path) -> None:
    """Stripped of its metadata, a graph whose quantization its nodes state is still read."""
    graph = binary_chain_graph()
    model = export_onnx(graph)
    model.ClearField("metadata_props")
    path = tmp_path / "stripped.onnx"
    onnx.save(model, path)
    back = load_onnx(path)
    assert back.source_format == "onnx" and back.name == "binary_chain"
    assert [op.type for op in back.ops] == [op.type for op in graph.ops]
    session = onnx_ops.make_session(model)
    for seed in range(3):
        x = _random_inputs(graph, seed)
        want = run_graph(graph, x)["y"]
        assert np.array_equal(run_graph(back, x)[back.outputs[0]], want)
        assert np.array_equal(session.run(None, {"x": x[0]})[0], want)


# --------------------------------------------------------------------------------------------
# (c) bad inputs
# --------------------------------------------------------------------------------------------


def _error(path: Path, pattern: str) -> str:
    with pytest.raises(BnnError, match=pattern) as info:
        load_onnx(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.fixture()
def tflite_onnx(tflite_graphs: dict[str, Graph]) -> Any:
    return export_onnx(tflite_graphs["global_pool"])


def _save(model: Any, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _edit_metadata(model: Any, edit: Callable[[dict[str, Any]], None]) -> Any:
    m = copy.deepcopy(model)
    for prop in m.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            edit(meta)
            prop.value = json.dumps(meta)
    return m


def _tensor_meta(meta: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in meta["tensors"] if t["name"] == name)


def test_error_not_a_file(tmp_path: Path) -> None:
    _error(tmp_path / "missing.onnx", "missing.onnx: no such file$")
    (tmp_path / "dir.onnx").mkdir()
    _error(tmp_path / "dir.onnx", "is a directory, expected an ONNX model file")


def test_error_not_onnx(tmp_path: Path) -> None:
    text = tmp_path / "text.onnx"
    text.write_text("hello, this is not a model\n")
    _error(text, "not an ONNX model")
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint8).tobytes())
    _error(noise, "not an ONNX model")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _error(empty, "not an ONNX model \\(empty file\\)")


def test_error_truncated(tflite_onnx: Any, tmp_path: Path) -> None:
    data = tflite_onnx.SerializeToString()
    for i, cut in enumerate((len(data) // 2, len(data) - 7, 40)):
        path = tmp_path / f"cut{i}.onnx"
        path.write_bytes(data[:cut])
        _error(path, "truncated")


def test_error_unsupported_op(tflite_onnx: Any, tmp_path: Path) -> None:
    m = copy.deepcopy(tflite_onnx)
    m.graph.node[1].op_type = "Softmax"
    msg = _error(_save(m, tmp_path / "softmax.onnx"), r"\(Softmax\): operator is not supported")
    assert "supported: ConvInteger, MatMulInteger" in msg and "ai.bnncube Requantize" in msg
    # a standard float model, not written by bnncube
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 2, 2])
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv0")
    foreign = helper.make_model(helper.make_graph([node], "f", [x], [y], [w]))
    msg = _error(_save(foreign, tmp_path / "foreign.onnx"), r"node 'conv0' \(Conv\)")
    assert "not written by bnncube?" in msg
    m = copy.deepcopy(tflite_onnx)
    m.graph.node[0].domain = "com.example"
    _error(_save(m, tmp_path / "domain.onnx"), r"com\.example::Transpose\): operator is not")


def test_error_missing_initializer(tflite_onnx: Any, tmp_path: Path) -> None:
    m = copy.deepcopy(tflite_onnx)
    weights = next(t for t in m.graph.initializer if t.dims and len(t.dims) == 4)
    m.graph.initializer.remove(weights)
    _error(
        _save(m, tmp_path / "noinit.onnx"),
        f"input '{weights.name}' is not a graph input, an initializer or an earlier node's output "
        r"\(missing initializer\?\)",
    )


def test_error_inconsistent_quantization(tflite_onnx: Any, hybrid_h5: Path, tmp_path: Path) -> None:
    model = tflite_onnx
    graph_meta = json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    quantized = [t for t in graph_meta["tensors"] if t["quant"] and t["dtype"] == "int8"]
    act = next(t["name"] for t in quantized if not t["const"])
    weight = next(t["name"] for t in quantized if t["const"])

    def set_scale(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
        def edit(meta: dict[str, Any]) -> None:
            scale = _tensor_meta(meta, name)["quant"]["scale"]
            scale["data"] = [value] * len(scale["data"])

        return edit

    def set_zp(meta: dict[str, Any]) -> None:
        _tensor_meta(meta, act)["quant"]["zero_point"]["data"] = [300]

    cases = [
        (set_scale(act, 0.0), "scale 0 is not positive"),
        (set_scale(weight, {"__float__": "nan"}), "scale \\[nan.* is not finite \\(NaN or Inf\\)"),
        (set_scale(act, {"__float__": "inf"}), "scale \\[inf\\] is not finite"),
        (set_zp, "zero point 300 is outside int8 \\[-128, 127\\]"),
    ]
    for i, (edit, pattern) in enumerate(cases):
        path = _save(_edit_metadata(model, edit), tmp_path / f"q{i}.onnx")
        msg = _error(path, f"inconsistent quantization: {pattern}")
        assert "tensor '" in msg
    # NaN constants (the float output transform's scale of the hybrid's Dense)
    hybrid = export_onnx(load_model(hybrid_h5))
    m = copy.deepcopy(hybrid)
    requant = next(n for n in m.graph.node if n.op_type == "RequantizeFloat")
    scale = next(t for t in m.graph.initializer if t.name == requant.input[1])
    values = numpy_helper.to_array(scale).copy()
    values[3] = np.nan
    scale.CopyFrom(numpy_helper.from_array(values, scale.name))
    _error(_save(m, tmp_path / "nan.onnx"), f"constant '{scale.name}' holds NaN or Inf values")
    # the ONNX graph's zero point disagrees with the tensor's quantization
    m = copy.deepcopy(model)
    zp = next(t for t in m.graph.initializer if t.name.endswith("x_zero_point"))
    zp.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zp) + np.int8(1), zp.name))
    _error(
        _save(m, tmp_path / "zp.onnx"),
        f"does not match its bnncube metadata \\(initializer '{zp.name}' differs",
    )


def test_error_graph_edited_after_export(tflite_onnx: Any, tmp_path: Path) -> None:
    m = copy.deepcopy(tflite_onnx)
    conv = next(n for n in m.graph.node if n.op_type == "ConvInteger")
    for a in conv.attribute:
        if a.name == "strides":
            a.ints[:] = [2, 2]
    _error(_save(m, tmp_path / "edited.onnx"), r"does not match its bnncube metadata .*attributes")
    m = _edit_metadata(tflite_onnx, lambda meta: meta.update(version=99))
    _error(_save(m, tmp_path / "v99.onnx"), "bnncube metadata version 99; supported: 1")
    m = copy.deepcopy(tflite_onnx)
    for prop in m.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = "{not json"
    _error(_save(m, tmp_path / "badjson.onnx"), "is not valid JSON")


def test_error_no_metadata(tflite_onnx: Any, tmp_path: Path) -> None:
    m = copy.deepcopy(tflite_onnx)
    m.ClearField("metadata_props")
    _error(
        _save(m, tmp_path / "stripped.onnx"),
        r"\(ConvInteger\): the int8 weight scales .*metadata_props 'bnncube.ir'.* lacks",
    )
    # only our ops, but an int8 tensor whose scale no node states
    graph = binary_chain_graph()
    graph.ops = graph.ops[:4]
    graph.outputs = ["y8"]
    graph.prune()
    m = export_onnx(graph)
    m.ClearField("metadata_props")
    _error(_save(m, tmp_path / "noscale.onnx"), "tensor 'y8' \\(int8\\) has no quantization scale")
