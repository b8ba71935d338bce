"""Damaged and inconsistent model files: one clear line naming the file and tensor or layer, exit 2.

Covers truncated `.h5`/`.tflite` files, NaN/Inf weights, zero/NaN/negative scales, zero points
outside the element type, per-channel parameters that do not match their tensor, and QKeras
constructs the integer lowering cannot honour exactly.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pathlib import Path  # noqa: E402

import flatbuffers  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.cli import main  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.errors import BnnError  # noqa: E402

tf = pytest.importorskip("tensorflow")
schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
L = tf.keras.layers


def _cli_error(capsys: pytest.CaptureFixture[str], path: Path, *needles: str) -> str:
    capsys.readouterr()
    status = main(["analyze", "-m", str(path), "-o", str(path.parent / "out")])
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for needle in (str(path), *needles):
        assert needle in lines[0], (needle, lines[0])
    assert not (path.parent / "out").exists()  # no partial output
    return lines[0]


# --------------------------------------------------------------------------------------------
# truncated files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inp = L.Input((8, 8, 3))
    out = L.Conv2D(4, 3, name="conv")(inp)
    path = tmp_path_factory.mktemp("h5") / "small.h5"
    tf.keras.Model(inp, out).save(path)
    return path


@pytest.fixture(scope="module")
def small_tflite(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from bnncube.zoo.build import quantize_mnv2

    tf.keras.utils.set_random_seed(3)
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    model = tf.keras.Model(inp, L.Dense(5, name="dense")(L.Flatten()(x)))
    images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
    return quantize_mnv2(model, images)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_h5(small_h5: Path, tmp_path: Path, capsys, keep: float) -> None:
    data = small_h5.read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: int(len(data) * keep)])
    _cli_error(capsys, path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_truncated_tflite(small_tflite: bytes, tmp_path: Path, capsys, keep: float) -> None:
    path = tmp_path / "cut.tflite"
    path.write_bytes(small_tflite[: int(len(small_tflite) * keep)])
    _cli_error(capsys, path)


# --------------------------------------------------------------------------------------------
# TFLite: quantization parameters and weights
# --------------------------------------------------------------------------------------------


def _edit(buf: bytes, fn) -> bytes:
    model = schema.ModelT.InitFromPackedBuf(buf, 0)
    fn(model)
    builder = flatbuffers.Builder(len(buf) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor(model, fragment: str, const: bool):
    sg = model.subgraphs[0]
    for t in sg.tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        has_data = model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)
        if fragment in name and bool(has_data) == const and t.quantization is not None:
            if t.quantization.scale is not None and len(t.quantization.scale):
                return t, name
    raise AssertionError(f"no tensor matching {fragment!r}")


def _write_edited(tmp_path: Path, buf: bytes, fragment: str, const: bool, change) -> tuple:
    names = []

    def fn(model):
        t, name = _tensor(model, fragment, const)
        names.append(name)
        change(t, model)

    path = tmp_path / "edited.tflite"
    path.write_bytes(_edit(buf, fn))
    return path, names[0]


@pytest.mark.parametrize(
    ("value", "needle"),
    [(0.0, "scales must be > 0"), (-0.5, "scales must be > 0"), (float("nan"), "NaN or Inf")],
)
def test_tflite_bad_activation_scale(small_tflite, tmp_path, capsys, value, needle) -> None:
    def change(t, model):
        t.quantization.scale = [value]

    path, name = _write_edited(tmp_path, small_tflite, "conv", False, change)
    _cli_error(capsys, path, name, needle)


def test_tflite_bad_weight_scale(small_tflite, tmp_path, capsys) -> None:
    def change(t, model):
        scale = list(t.quantization.scale)
        scale[1] = 0.0
        t.quantization.scale = scale

    path, name = _write_edited(tmp_path, small_tflite, "dw", True, change)
    _cli_error(capsys, path, name, "scales must be > 0")


def test_tflite_zero_point_out_of_range(small_tflite, tmp_path, capsys) -> None:
    def change(t, model):
        t.quantization.zeroPoint = [300]

    path, name = _write_edited(tmp_path, small_tflite, "conv", False, change)
    _cli_error(capsys, path, name, "zero point outside [-128, 127]")


def test_tflite_per_channel_count_mismatch(small_tflite, tmp_path, capsys) -> None:
    def change(t, model):
        t.quantization.scale = list(t.quantization.scale)[:-1]
        t.quantization.zeroPoint = list(t.quantization.zeroPoint)[:-1]

    path, name = _write_edited(tmp_path, small_tflite, "conv", True, change)
    _cli_error(capsys, path, name, "per-channel scales")


def test_tflite_nan_float_constant(tmp_path, capsys) -> None:
    inp = L.Input((4,), batch_size=1)
    model = tf.keras.Model(inp, L.Dense(3, name="dense")(inp))
    buf = tf.lite.TFLiteConverter.from_keras_model(model).convert()

    def fn(m):
        for t in m.subgraphs[0].tensors:
            data = m.buffers[t.buffer].data
            if data is not None and len(data) == 4 * 12:
                values = np.frombuffer(bytes(bytearray(data)), "<f4").copy()
                values[5] = np.inf
                m.buffers[t.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
                return
        raise AssertionError("no 3x4 weight buffer")

    path = tmp_path / "nan.tflite"
    path.write_bytes(_edit(bytes(buf), fn))
    _cli_error(capsys, path, "NaN or Inf values")


def test_tflite_edits_are_otherwise_valid(small_tflite, tmp_path) -> None:
    """The edit helper itself keeps a model loadable (so the failures above are the edits')."""
    path = tmp_path / "same.tflite"
    path.write_bytes(_edit(small_tflite, lambda m: None))
    assert [op.type for op in load_model(path).ops][:2] == ["Conv2D", "DepthwiseConv2D"]


# --------------------------------------------------------------------------------------------
# Keras / QKeras
# --------------------------------------------------------------------------------------------


def test_keras_nan_weights(tmp_path, capsys) -> None:
    inp = L.Input((6, 6, 2))
    conv = L.Conv2D(3, 3, name="conv")
    model = tf.keras.Model(inp, conv(inp))
    kernel, bias = conv.get_weights()
    kernel[0, 0, 0, 0] = np.nan
    conv.set_weights([kernel, bias])
    path = tmp_path / "nan.h5"
    model.save(path)
    _cli_error(capsys, path, "conv/kernel", "NaN or Inf")


def test_qkeras_inf_weights(tmp_path, capsys) -> None:
    from qkeras import QActivation, QConv2D, quantized_bits

    inp = L.Input((6, 6, 2))
    x = QActivation(quantized_bits(8, 0, alpha=1), name="q")(inp)
    conv = QConv2D(3, 3, kernel_quantizer=quantized_bits(8, 0, alpha="auto_po2"), name="qconv")
    y = QActivation(quantized_bits(8, 3, alpha=1), name="out")(conv(x))
    model = tf.keras.Model(inp, y)
    kernel, bias = conv.get_weights()
    kernel[1, 1, 0, 2] = np.inf
    conv.set_weights([kernel, bias])
    path = tmp_path / "inf.h5"
    model.save(path)
    _cli_error(capsys, path, "qconv", "NaN or Inf")


def test_qkeras_layer_on_float_input(tmp_path, capsys) -> None:
    from qkeras import QActivation, QConv2D, quantized_bits

    inp = L.Input((6, 6, 2))
    y = QConv2D(3, 3, kernel_quantizer=quantized_bits(8, 0, alpha=1), name="qconv")(inp)
    model = tf.keras.Model(inp, QActivation(quantized_bits(8, 3, alpha=1), name="out")(y))
    path = tmp_path / "float_in.h5"
    model.save(path)
    _cli_error(capsys, path, "layer 'qconv'", "QActivation before the layer")


def test_qkeras_average_pool_on_quantized(tmp_path, capsys) -> None:
    from qkeras import QActivation, quantized_bits

    inp = L.Input((6, 6, 2))
    x = QActivation(quantized_bits(8, 0, alpha=1), name="q")(inp)
    y = L.AveragePooling2D(2, name="pool")(x)
    path = tmp_path / "pool.h5"
    tf.keras.Model(inp, y).save(path)
    _cli_error(capsys, path, "layer 'pool'", "not supported yet")


def test_qkeras_add_without_output_quantizer(tmp_path, capsys) -> None:
    from qkeras import QActivation, quantized_bits

    inp = L.Input((6, 6, 2))
    a = QActivation(quantized_bits(8, 0, alpha=1), name="a")(inp)
    b = QActivation(quantized_bits(8, 1, alpha=1), name="b")(inp)
    path = tmp_path / "add.h5"
    tf.keras.Model(inp, L.Add(name="sum")([a, b])).save(path)
    _cli_error(capsys, path, "layer 'sum'", "QActivation after it")


def test_load_model_raises_bnnerror(small_h5: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.h5"
    path.write_bytes(small_h5.read_bytes()[:100])
    with pytest.raises(BnnError):
        load_model(path)
