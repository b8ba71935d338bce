import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The numpy int8 reference (bnncube.converters.reference) is bit-exact with TFLite.
#
# Small Keras models are quantized by the TFLite converter (full integer, int8 in, float32 out),
# loaded through bnncube's TFLite front end and lowering, and run both by ``run_graph`` and by the
# TFLite interpreter with its reference kernels (``OpResolverType.BUILTIN_REF``) on the same random
# int8 inputs.  Every int8 tensor the two share by name must be equal, with no tolerance, and so
# must the float32 output.

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.reference import (  # noqa: E402
    OPS,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    run_graph,
)


def _interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True,
    )
    interp.allocate_tensors()
    return interp


def _compare(path: Path, seeds: tuple[int, ...] = (0, 1)) -> dict[str, int]:
    """Run the model file with both; assert bit-exactness; return the op types seen."""
    graph = load_model(path)
    interp = _interpreter(path)
    details = {d["name"]: d for d in interp.get_tensor_details()}
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    assert graph.inputs == [inp["name"]] and graph.outputs == [out["name"]]
    final_op = graph.producer(graph.outputs[0])
    assert final_op is not None and final_op.type == "Dequantize"
    pre_output = final_op.inputs[0]
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x = rng.integers(-128, 128, size=inp["shape"], dtype=np.int8)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        ours = run_graph(graph, {graph.inputs[0]: x}, outputs_only=False)
        compared = []
        mismatched = []
        for name, value in ours.items():
            d = details.get(name)
            if d is None or d["dtype"] != np.int8 or tuple(d["shape"]) != value.shape:
                continue
            theirs = interp.get_tensor(d["index"])
            compared.append(name)
            if not np.array_equal(theirs, value):
                diff = np.abs(theirs.astype(np.int64) - value.astype(np.int64))
                mismatched.append(f"{name}: {int((diff > 0).sum())} differ, max {diff.max()}")
        assert pre_output in compared
        assert not mismatched, "\n".join(mismatched)
        ref_out = interp.get_tensor(out["index"])
        assert ours[graph.outputs[0]].dtype == np.float32
        assert np.array_equal(ours[graph.outputs[0]], ref_out)
    types: dict[str, int] = {}
    for op in graph.ops:
        types[op.type] = types.get(op.type, 0) + 1
    return types


def _quantize_to(model: Any, path: Path, seed: int = 0) -> Path:
    from bnncube.zoo.build import quantize_mnv2

    rng = np.random.default_rng(seed)
    shape = (16,) + tuple(model.input_shape[1:])
    images = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    path.write_bytes(quantize_mnv2(model, images))
    return path


def _model(body: Callable[[Any, Any], Any], shape: tuple[int, ...], seed: int = 0) -> Any:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    inp = tf.keras.Input(shape=shape)
    return tf.keras.Model(inp, body(tf.keras.layers, inp))


def _conv(L: Any, x: Any) -> Any:
    x = L.Conv2D(13, 3, padding="same", activation="relu")(x)
    x = L.Conv2D(5, 3, strides=2, padding="same", activation="relu6")(x)
    x = L.Conv2D(7, 3, strides=2, padding="valid")(x)
    return L.Conv2D(4, 1, dilation_rate=1, padding="valid", activation="relu")(x)


def _depthwise(L: Any, x: Any) -> Any:
    x = L.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="valid")(x)
    x = L.ReLU()(x)
    return L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=1)(x)


def _zero_pad(L: Any, x: Any) -> Any:
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = L.Conv2D(8, 3, strides=2, padding="valid", activation="relu6")(x)
    x = L.ZeroPadding2D(((1, 1), (1, 1)))(x)
    return L.DepthwiseConv2D(3, strides=2, padding="valid", activation="relu6")(x)


def _dense(L: Any, x: Any) -> Any:
    x = L.Flatten()(x)
    x = L.Dense(13, activation="relu")(x)
    return L.Dense(5)(x)


def _add(L: Any, x: Any) -> Any:
    a = L.Conv2D(5, 3, padding="same")(x)
    b = L.Conv2D(5, 1, padding="same", activation="relu")(x)
    y = L.Add()([a, b])
    c = L.Conv2D(5, 1, padding="same")(y)
    z = L.Add()([y, c])
    return L.ReLU()(z)


def _pools(L: Any, x: Any) -> Any:
    x = L.Conv2D(5, 3, padding="same", activation="relu")(x)
    x = L.AveragePooling2D(3, strides=2, padding="same")(x)
    x = L.Conv2D(13, 1)(x)
    x = L.AveragePooling2D(2, strides=1, padding="valid")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    return L.MaxPooling2D(2, padding="valid")(x)


def _global_pool(L: Any, x: Any) -> Any:
    x = L.Conv2D(13, 3, padding="same", activation="relu6")(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Conv2D(7, 1)(x)
    x = L.GlobalAveragePooling2D()(x)
    return L.Dense(3)(x)


CASES = {
    "conv": (_conv, (13, 11, 5)),
    "depthwise": (_depthwise, (11, 12, 3)),
    "zero_pad": (_zero_pad, (12, 12, 3)),
    "dense": (_dense, (4, 3, 5)),
    "add": (_add, (8, 7, 3)),
    "pools": (_pools, (15, 13, 3)),
    "global_pool": (_global_pool, (7, 9, 5)),
}

EXPECTED_OPS = {
    "conv": {"Conv2D"},
    "depthwise": {"DepthwiseConv2D"},
    "zero_pad": {"Conv2D", "DepthwiseConv2D"},
    "dense": {"Dense"},
    "add": {"Add"},
    "pools": {"AveragePool2D", "MaxPool2D"},
    "global_pool": {"Mean", "Dense"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_bit_exact_with_tflite(case: str, tmp_path: Path) -> None:
    body, shape = CASES[case]
    path = _quantize_to(_model(body, shape), tmp_path / f"{case}.tflite")
    types = _compare(path)
    assert EXPECTED_OPS[case] <= set(types), types
    assert "Pad" not in types or case != "zero_pad"  # folded into the convolutions


def test_quantize_multiplier() -> None:
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (2**30, 0)
    assert quantize_multiplier(1.0) == (2**30, 1)
    # rounds up to 2**31: halved, shift incremented
    assert quantize_multiplier(1.0 - 2.0**-40) == (2**30, 1)
    q, s = quantize_multiplier(0.3)
    assert abs(q * 2.0 ** (s - 31) - 0.3) < 1e-9
    x = np.array([-(2**20), -5, -3, 0, 3, 5, 2**20], np.int64)
    # 0.5 as (2**30, 0): SaturatingRoundingDoublingHighMul rounds halves toward +inf
    got = multiply_by_quantized_multiplier(x, 2**30, 0)
    assert got.tolist() == [-(2**19), -2, -1, 0, 2, 3, 2**19]
    # 0.25: then RoundingDivideByPOT(1), half away from zero: double rounding (5 -> 3 -> 2)
    got = multiply_by_quantized_multiplier(x, 2**30, -1)
    assert got.tolist() == [-(2**18), -1, -1, 0, 1, 2, 2**18]


def test_unsupported_op_is_named() -> None:
    from bnncube.converters.ir import Graph, Op, Tensor

    g = Graph("g")
    g.add_tensor(Tensor("x", (1, 4), "float32"))
    g.add_tensor(Tensor("y", (1, 4), "float32"))
    g.add_op(Op("sm", "Softmax", ["x"], ["y"]))
    g.inputs, g.outputs = ["x"], ["y"]
    with pytest.raises(NotImplementedError, match="op type Softmax.*implemented: Conv2D"):
        run_graph(g, [np.zeros((1, 4), np.float32)])
    assert "Softmax" not in OPS


def test_float_model_close_to_tflite(tmp_path: Path) -> None:
    """Float32 graphs run too (float64 accumulation, so close to TFLite, not bit-exact)."""
    import tensorflow as tf

    def body(L: Any, x: Any) -> Any:
        a = _depthwise(L, L.Conv2D(6, 3, padding="same", activation="relu")(x))
        b = L.AveragePooling2D(3, strides=2, padding="same")(L.MaxPooling2D(2)(a))
        c = L.Add()([b, L.Conv2D(12, 1)(b)])
        return _dense(L, c)

    model = _model(body, (17, 15, 3))
    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    graph = load_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, graph.tensors[graph.inputs[0]].shape)
    x = x.astype(np.float32)
    interp = _interpreter(path)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    ref = interp.get_tensor(interp.get_output_details()[0]["index"])
    ours = run_graph(graph, [x])[graph.outputs[0]]
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_mnv2_i8_bit_exact(mnv2_i8_tflite: Path) -> None:
    types = _compare(mnv2_i8_tflite, seeds=(0, 1))
    assert types.get("Conv2D", 0) > 10 and types.get("DepthwiseConv2D", 0) > 10
