"""Tests of the TFLite front end (bnncube.converters.tflite_frontend)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pathlib import Path  # noqa: E402

import flatbuffers  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
schema = pytest.importorskip("ai_edge_litert.schema_py_generated")

from bnncube.converters.tflite_frontend import (  # noqa: E402
    SUPPORTED_OPS,
    _readable_op_name,
    add_tflite_metadata,
    load_tflite,
    same_pads,
)
from bnncube.errors import BnnError  # noqa: E402

L = tf.keras.layers


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _convert(model, int8_input: bool = True) -> bytes:
    """Full-integer quantization of a Keras model (int8 input unless told otherwise)."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    shape = [1, *model.input_shape[1:]]
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(4):
            yield [rng.standard_normal(shape).astype(np.float32)]

    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_input:
        conv.inference_input_type = tf.int8
    return conv.convert()


def _write(tmp: Path, name: str, buf: bytes) -> Path:
    path = tmp / name
    path.write_bytes(buf)
    return path


def _edit(buf: bytes, fn) -> bytes:
    """Apply ``fn`` to the flatbuffer's ModelT and re-serialize it."""
    model = schema.ModelT.InitFromPackedBuf(buf, 0)
    fn(model)
    builder = flatbuffers.Builder(len(buf) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode(model, name: str) -> int:
    code = getattr(schema.BuiltinOperator, name)
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            return i
    raise AssertionError(f"no {name} in the model")


def _run(buf: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=buf)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def _ops(graph, op_type: str):
    return [op for op in graph.ops if op.type == op_type]


def _out_shape(graph, op):
    return graph.tensors[op.outputs[0]].shape


# --------------------------------------------------------------------------------------------
# models (converted once per module)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_relu(tmp_path_factory) -> tuple[Path, bytes]:
    """3x3 conv 8->16 on 10x10, SAME, stride 1, ReLU; int8 input, float output."""
    tf.keras.utils.set_random_seed(1)
    x = L.Input((10, 10, 8), batch_size=1)
    y = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    buf = _convert(tf.keras.Model(x, y))
    return _write(tmp_path_factory.mktemp("tfl"), "conv_relu.tflite", buf), buf


@pytest.fixture(scope="module")
def conv_s2(tmp_path_factory) -> Path:
    """Stride-2 SAME conv on an even input, float input and output."""
    tf.keras.utils.set_random_seed(2)
    x = L.Input((8, 8, 3), batch_size=1)
    y = L.Conv2D(4, 3, strides=2, padding="same")(x)
    buf = _convert(tf.keras.Model(x, y), int8_input=False)
    return _write(tmp_path_factory.mktemp("tfl"), "conv_s2.tflite", buf)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """One model with every other supported op type."""
    tf.keras.utils.set_random_seed(3)
    x = L.Input((12, 12, 3), batch_size=1)
    a = L.Conv2D(8, 3, strides=2, padding="same")(x)  # 6x6x8
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu6")(a)
    b = L.Conv2D(8, 1)(b)  # 6x6x8
    c = L.Add()([a, b])
    d = L.AveragePooling2D(2)(c)  # 3x3x8
    e = L.ZeroPadding2D(((1, 0), (0, 1)))(d)  # 4x4x8
    e = L.MaxPooling2D(2, strides=1)(e)  # 3x3x8
    f = L.Conv2D(4, 1, activation="relu")(e)  # 3x3x4
    g = L.GlobalAveragePooling2D()(f)  # 4
    out1 = L.Softmax()(L.Dense(5)(g))
    out2 = L.Dense(3)(L.Flatten()(f))  # reshape 3x3x4 -> 36
    buf = _convert(tf.keras.Model(x, [out1, out2]))
    return _write(tmp_path_factory.mktemp("tfl"), "mixed.tflite", buf)


# --------------------------------------------------------------------------------------------
# mapping
# --------------------------------------------------------------------------------------------


def test_same_pads_rule():
    assert same_pads(10, 3, 1) == (1, 1)
    assert same_pads(8, 3, 2) == (0, 1)
    assert same_pads(7, 3, 2) == (1, 1)
    assert same_pads(10, 3, 1, dilation=2) == (2, 2)
    assert same_pads(4, 1, 1) == (0, 0)


def test_conv_relu(conv_relu):
    path, _ = conv_relu
    g = load_tflite(path)
    assert g.name == "conv_relu"
    assert g.source == str(path)
    assert g.source_format == "tflite"
    assert [op.type for op in g.ops] == ["Conv2D", "Dequantize"]
    conv = g.ops[0]
    assert conv.name == conv.outputs[0]
    assert conv.attrs["pads"] == [1, 1, 1, 1]
    assert conv.attrs["strides"] == (1, 1)
    assert conv.attrs["dilations"] == (1, 1)
    assert conv.attrs["activation"] == "relu"

    x, w, b = (g.tensors[n] for n in conv.inputs)
    assert x.name == g.inputs[0]
    assert x.dtype == "int8" and x.shape == (1, 10, 10, 8)
    assert x.quant is not None and x.quant.axis is None and x.quant.scale.size == 1
    assert x.quant.source == "tflite"
    assert not x.is_const

    assert w.shape == (16, 3, 3, 8)
    assert w.dtype == "int8"
    assert w.data is not None and w.data.dtype == np.int8 and w.data.shape == (16, 3, 3, 8)
    assert w.quant is not None and w.quant.is_per_channel
    assert w.quant.axis == 0
    assert w.quant.scale.size == 16
    assert w.quant.scale.dtype == np.float64 and w.quant.zero_point.dtype == np.int64
    assert (w.quant.zero_point == 0).all()
    assert int(np.abs(w.data.astype(np.int32)).max()) == 127  # symmetric per channel

    assert b.shape == (16,)
    assert b.dtype == "int32" and b.data is not None and b.data.dtype == np.int32
    # bias scale is s_in * s_w per channel (TFLite quantization spec)
    np.testing.assert_allclose(b.quant.scale, x.quant.scale[0] * w.quant.scale, rtol=1e-6)

    y = g.tensors[conv.outputs[0]]
    assert y.dtype == "int8" and y.shape == (1, 10, 10, 16)
    out = g.tensors[g.outputs[0]]
    assert out.dtype == "float32" and out.quant is None and out.shape == (1, 10, 10, 16)
    assert g.ops[1].inputs == [y.name]
    assert set(g.tensors) == {x.name, w.name, b.name, y.name, out.name}


def test_stride2_same_pads_and_quantize(conv_s2):
    g = load_tflite(conv_s2)
    assert [op.type for op in g.ops] == ["Quantize", "Conv2D", "Dequantize"]
    assert g.tensors[g.inputs[0]].dtype == "float32"
    q = g.ops[0]
    assert g.tensors[q.outputs[0]].dtype == "int8"
    assert g.tensors[q.outputs[0]].quant is not None
    conv = g.ops[1]
    assert conv.inputs[0] == q.outputs[0]
    assert conv.attrs["strides"] == (2, 2)
    assert conv.attrs["pads"] == [0, 1, 0, 1]
    assert conv.attrs["activation"] == "none"
    assert _out_shape(g, conv) == (1, 4, 4, 4)


def test_mixed_model_op_types(mixed):
    g = load_tflite(mixed)
    types = [op.type for op in g.ops]
    for t in (
        "Conv2D",
        "DepthwiseConv2D",
        "Add",
        "AveragePool2D",
        "Pad",
        "MaxPool2D",
        "Mean",
        "Dense",
        "Softmax",
        "Reshape",
        "Dequantize",
    ):
        assert t in types, t
    assert "Quantize" not in types  # int8 input
    assert len(g.inputs) == 1 and len(g.outputs) == 2
    assert {g.tensors[o].dtype for o in g.outputs} == {"float32"}

    (dw,) = _ops(g, "DepthwiseConv2D")
    assert _out_shape(g, dw) == (1, 6, 6, 16)
    assert dw.attrs["depth_multiplier"] == 2
    assert dw.attrs["pads"] == [1, 1, 1, 1]
    assert dw.attrs["activation"] == "relu6"
    w = g.tensors[dw.inputs[1]]
    assert w.shape == (1, 3, 3, 16)
    assert w.quant.axis == 3 and w.quant.scale.size == 16

    first = g.ops[0]
    assert first.type == "Conv2D" and first.attrs["pads"] == [0, 1, 0, 1]

    (add,) = _ops(g, "Add")
    assert len(add.inputs) == 2 and add.attrs["activation"] == "none"
    assert _out_shape(g, add) == (1, 6, 6, 8)

    (avg,) = _ops(g, "AveragePool2D")
    assert avg.attrs["pool"] == (2, 2) and avg.attrs["strides"] == (2, 2)
    assert avg.attrs["pads"] == [0, 0, 0, 0]
    assert _out_shape(g, avg) == (1, 3, 3, 8)

    (pad,) = _ops(g, "Pad")
    assert pad.attrs["pads"] == [1, 0, 0, 1]
    assert len(pad.inputs) == 1
    assert _out_shape(g, pad) == (1, 4, 4, 8)

    (mx,) = _ops(g, "MaxPool2D")
    assert mx.attrs["pool"] == (2, 2) and mx.attrs["strides"] == (1, 1)
    assert _out_shape(g, mx) == (1, 3, 3, 8)

    (mean,) = _ops(g, "Mean")
    assert mean.attrs["axes"] == (1, 2)
    assert mean.attrs["keepdims"] is False
    assert len(mean.inputs) == 1
    assert _out_shape(g, mean) == (1, 4)

    (reshape,) = _ops(g, "Reshape")
    assert len(reshape.inputs) == 1
    assert g.tensors[reshape.inputs[0]].shape == (1, 3, 3, 4)
    assert _out_shape(g, reshape) == (1, 36)

    dense_shapes = sorted(_out_shape(g, op) for op in _ops(g, "Dense"))
    assert dense_shapes == [(1, 3), (1, 5)]
    for op in _ops(g, "Dense"):
        wt = g.tensors[op.inputs[1]]
        assert wt.dtype == "int8" and wt.shape[0] == _out_shape(g, op)[1]
        assert wt.shape[1] in (4, 36)

    (sm,) = _ops(g, "Softmax")
    assert _out_shape(g, sm) == (1, 5)

    # every op is named after its output tensor, shortened to the Keras layer name
    for op in g.ops:
        assert op.name == _readable_op_name(op.outputs[0])
        assert "/" not in op.name and ";" not in op.name
        for t in op.inputs:
            assert t in g.tensors
    g.validate()


def test_unique_tensor_names(conv_relu, tmp_path):
    _, buf = conv_relu

    def rename(model):
        for t in model.subgraphs[0].tensors:
            t.name = "same"

    g = load_tflite(_write(tmp_path, "dup.tflite", _edit(buf, rename)))
    assert len(g.tensors) == 5
    assert "same" in g.tensors and "same_1" in g.tensors
    assert len({op.name for op in g.ops}) == len(g.ops)


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------


def test_metadata_round_trip(conv_relu, tmp_path):
    _, buf = conv_relu
    tagged = add_tflite_metadata(buf, "bnncube_zoo", b"mnv2_i8")
    assert tagged[4:8] == b"TFL3"
    g = load_tflite(_write(tmp_path, "tagged.tflite", tagged))
    assert g.name == "mnv2_i8"

    # re-tagging replaces the entry instead of adding a second one
    retagged = add_tflite_metadata(tagged, "bnncube_zoo", b"other")
    assert load_tflite(_write(tmp_path, "retagged.tflite", retagged)).name == "other"
    model = schema.ModelT.InitFromPackedBuf(retagged, 0)
    names = [md.name.decode() for md in model.metadata]
    assert names.count("bnncube_zoo") == 1

    # still runs in the interpreter, with the same results
    x = (np.arange(800).reshape(1, 10, 10, 8) % 255 - 128).astype(np.int8)
    np.testing.assert_array_equal(_run(tagged, x), _run(buf, x))


def test_metadata_bad_buffer():
    with pytest.raises(BnnError, match="not a TFLite model"):
        add_tflite_metadata(b"hello world, not a model", "bnncube_zoo", b"x")


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.tflite"
    with pytest.raises(BnnError) as e:
        load_tflite(path)
    assert str(e.value) == f"{path}: no such file"


def test_random_bytes(tmp_path):
    path = _write(tmp_path, "random.tflite", np.random.default_rng(0).bytes(2000))
    with pytest.raises(BnnError, match="not a TFLite model") as e:
        load_tflite(path)
    assert str(path) in str(e.value)


def test_text_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_text("this is a text file, not a flatbuffer\n")
    with pytest.raises(BnnError, match="not a TFLite model") as e:
        load_tflite(str(path))
    assert str(path) in str(e.value)


def test_short_and_garbage_with_identifier(tmp_path):
    for name, data in (
        ("empty.tflite", b""),
        ("short.tflite", b"\x00\x00TF"),
        ("garbage.tflite", b"\xff\xff\xff\x7fTFL3" + bytes(range(256)) * 4),
    ):
        path = _write(tmp_path, name, data)
        with pytest.raises(BnnError) as e:
            load_tflite(path)
        assert str(path) in str(e.value)


def test_corrupted_model_gives_bnnerror(mixed, tmp_path):
    base = bytearray(mixed.read_bytes())
    rng = np.random.default_rng(7)
    path = tmp_path / "corrupt.tflite"
    for _ in range(150):
        data = bytearray(base)
        for _ in range(4):
            data[int(rng.integers(8, len(data)))] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            load_tflite(path)
        except BnnError as e:
            assert str(path) in str(e)


def test_custom_op_rejected(conv_relu, tmp_path):
    _, buf = conv_relu

    def to_custom(model):
        oc = model.operatorCodes[_opcode(model, "CONV_2D")]
        oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        oc.customCode = "MyCustomOp"  # LCE's custom ops are read (tests/test_lce_input.py)
        model.subgraphs[0].operators[0].builtinOptionsType = 0
        model.subgraphs[0].operators[0].builtinOptions = None

    path = _write(tmp_path, "custom.tflite", _edit(buf, to_custom))
    with pytest.raises(BnnError) as e:
        load_tflite(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: operator MyCustomOp (op #0) is not supported; supported: ")
    assert ", ".join(SUPPORTED_OPS) in msg

    def to_lce(model):
        to_custom(model)
        model.operatorCodes[_opcode(model, "CUSTOM")].customCode = "LceBconv2d"

    path = _write(tmp_path, "lce.tflite", _edit(buf, to_lce))
    with pytest.raises(BnnError, match=r"op #0 \(LceBconv2d\): expected 5 inputs, found 3"):
        load_tflite(path)


def test_unsupported_builtin_rejected(conv_relu, tmp_path):
    _, buf = conv_relu

    def to_tanh(model):
        oc = model.operatorCodes[_opcode(model, "DEQUANTIZE")]
        oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.TANH

    path = _write(tmp_path, "tanh.tflite", _edit(buf, to_tanh))
    with pytest.raises(BnnError, match=r"operator TANH \(op #1\) is not supported") as e:
        load_tflite(path)
    assert "CONV_2D, DEPTHWISE_CONV_2D" in str(e.value)


def test_builtin_code_above_127(conv_relu, tmp_path):
    """Builtins >= 127 keep 127 in deprecatedBuiltinCode; the loader takes the max."""
    _, buf = conv_relu

    def to_big(model):
        oc = model.operatorCodes[_opcode(model, "DEQUANTIZE")]
        oc.deprecatedBuiltinCode = 127
        oc.builtinCode = schema.BuiltinOperator.GELU

    path = _write(tmp_path, "gelu.tflite", _edit(buf, to_big))
    with pytest.raises(BnnError, match=r"operator GELU \(op #1\)"):
        load_tflite(path)


def test_fused_tanh_rejected(conv_relu, tmp_path):
    _, buf = conv_relu

    def fuse_tanh(model):
        model.subgraphs[0].operators[
            0
        ].builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.TANH

    path = _write(tmp_path, "fused.tflite", _edit(buf, fuse_tanh))
    with pytest.raises(BnnError, match="fused activation TANH") as e:
        load_tflite(path)
    assert str(path) in str(e.value)


def test_unsupported_dtype_rejected(conv_relu, tmp_path):
    _, buf = conv_relu

    def to_int16(model):
        sg = model.subgraphs[0]
        sg.tensors[sg.inputs[0]].type = schema.TensorType.INT16

    path = _write(tmp_path, "int16.tflite", _edit(buf, to_int16))
    with pytest.raises(BnnError, match="INT16") as e:
        load_tflite(path)
    assert "serving_default" in str(e.value)  # names the tensor
    assert str(path) in str(e.value)


def test_two_subgraphs_rejected(conv_relu, tmp_path):
    _, buf = conv_relu

    def dup(model):
        model.subgraphs.append(model.subgraphs[0])

    path = _write(tmp_path, "two.tflite", _edit(buf, dup))
    with pytest.raises(BnnError, match="2 subgraphs"):
        load_tflite(path)


def test_readable_op_names():
    long = "mnv2_fp/block_1_depthwise_relu/Relu6;mnv2_fp/block_1_depthwise_BN/FusedBatchNormV3"
    assert _readable_op_name(long) == "block_1_depthwise_relu"
    assert _readable_op_name("StatefulPartitionedCall:0") == "StatefulPartitionedCall:0"
    assert _readable_op_name("a/b") == "a/b"
