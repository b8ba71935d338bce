"""Bad input to every `bnncube` command: one line `error: ...` on stderr, exit status 2, no output.

Most cases call ``bnncube.cli.main`` in-process; a few run the real console entry point in a
subprocess (``python -m bnncube``) to show that no traceback or library noise reaches the user.
The zoo cases never build a full network: they either fail before the build or replace the
network builders with a tiny stand-in model.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
qkeras = pytest.importorskip("qkeras")

from qkeras import QActivation, QConv2D, QDense, binary, quantized_bits, quantized_tanh  # noqa: E402

from bnncube.cli import main  # noqa: E402

L = tf.keras.layers


class MyLayer(tf.keras.layers.Layer):
    """A custom layer that neither Keras nor QKeras knows when the model is loaded."""

    def call(self, inputs):
        return inputs * 2.0


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _check_error_text(err: str, *needles: str) -> str:
    assert "Traceback" not in err, err
    assert err.endswith("\n"), repr(err)
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.strip(), "empty error line"
    assert line.startswith("error"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def _run_error(capsys, argv: list[str], *needles: str) -> str:
    """Run ``main(argv)`` in-process; check status 2 and one error line naming ``needles``."""
    capsys.readouterr()  # drop anything printed before
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 2, f"status {status}, stdout={out!r}, stderr={err!r}"
    assert "Traceback" not in out
    return _check_error_text(err, *needles)


def _run_subprocess(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    # the environment a user has: none of the log-silencing variables a test setup may export
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP_", "TF_ENABLE_"))}
    env["TF_USE_LEGACY_KERAS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "bnncube", *[str(a) for a in argv]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _save(model, path: Path) -> Path:
    model.save(str(path))
    return path


def _tiny_model():
    inp = L.Input((4, 4, 2))
    return tf.keras.Model(inp, L.Conv2D(2, 1, name="tiny")(inp))


@pytest.fixture
def custom_layer_model(tmp_path) -> Path:
    inp = L.Input((8, 8, 4))
    out = MyLayer(name="mine")(inp)
    return _save(tf.keras.Model(inp, out), tmp_path / "custom.h5")


@pytest.fixture
def no_zoo_builds(monkeypatch):
    """Replace the zoo network builders and the TFLite conversion: record calls, build nothing."""
    from bnncube.zoo import build as build_module
    from bnncube.zoo import networks

    calls: list[str] = []

    def fake_builder(name):
        def builder(seed=0):
            calls.append(name)
            return _tiny_model()

        return builder

    def no_conversion(model, images):
        calls.append("quantize_mnv2")
        raise AssertionError("the long int8 conversion ran although the input was invalid")

    monkeypatch.setattr(networks, "build_mnv2_fp", fake_builder("build_mnv2_fp"))
    monkeypatch.setattr(networks, "build_hybrid", fake_builder("build_hybrid"))
    monkeypatch.setattr(build_module, "quantize_mnv2", no_conversion)
    return calls


# --------------------------------------------------------------------------------------------
# analyze
# --------------------------------------------------------------------------------------------


def test_analyze_missing_model_file(tmp_path, capsys):
    out = tmp_path / "out"
    _run_error(capsys, ["analyze", "-m", tmp_path / "missing.h5", "-o", out], "missing.h5")
    assert not out.exists()


def test_analyze_directory_as_model(tmp_path, capsys):
    folder = tmp_path / "model.h5"
    folder.mkdir()
    out = tmp_path / "out"
    line = _run_error(capsys, ["analyze", "-m", folder, "-o", out], "model.h5")
    assert "directory" in line
    assert not out.exists()


def test_analyze_text_file_named_h5(tmp_path, capsys):
    model = tmp_path / "x.h5"
    model.write_text("this is not HDF5\n")
    out = tmp_path / "out"
    _run_error(capsys, ["analyze", "-m", model, "-o", out], "x.h5")
    assert not out.exists()


def test_analyze_random_bytes_tflite(tmp_path, capsys):
    model = tmp_path / "x.tflite"
    model.write_bytes(bytes(range(256)) * 3)
    out = tmp_path / "out"
    line = _run_error(capsys, ["analyze", "-m", model, "-o", out], "x.tflite")
    assert "TFLite" in line
    assert not out.exists()


def test_analyze_unknown_suffix(tmp_path, capsys):
    model = tmp_path / "x.bin"
    model.write_bytes(b"\x00\x01\x02")
    out = tmp_path / "out"
    line = _run_error(capsys, ["analyze", "-m", model, "-o", out], "x.bin", ".bin")
    assert ".h5" in line and ".tflite" in line  # says what is supported
    assert not out.exists()


def test_analyze_invalid_type_option(tmp_path, capsys):
    model = tmp_path / "x.h5"
    model.write_text("x")
    out = tmp_path / "out"
    line = _run_error(capsys, ["analyze", "-m", model, "-t", "pytorch", "-o", out], "pytorch")
    assert "-t" in line or "--type" in line
    assert not out.exists()


def test_analyze_custom_layer_unknown_to_keras(tmp_path, capsys, custom_layer_model):
    out = tmp_path / "out"
    line = _run_error(
        capsys, ["analyze", "-m", custom_layer_model, "-o", out], "custom.h5", "MyLayer"
    )
    assert "supported" in line
    assert not out.exists()


@pytest.mark.parametrize("kind", ["LSTM", "UpSampling2D", "Conv2DTranspose"])
def test_analyze_keras_layer_we_do_not_support(tmp_path, capsys, kind):
    inp = L.Input((8, 8, 4))
    if kind == "LSTM":
        out = L.LSTM(3, name="the_layer")(L.Reshape((64, 4), name="seq")(inp))
    elif kind == "UpSampling2D":
        out = L.UpSampling2D(name="the_layer")(inp)
    else:
        out = L.Conv2DTranspose(4, 3, name="the_layer")(inp)
    model = _save(tf.keras.Model(inp, out), tmp_path / "m.h5")
    out_dir = tmp_path / "out"
    line = _run_error(capsys, ["analyze", "-m", model, "-o", out_dir], "the_layer", kind)
    assert "supported" in line
    for supported in ("Conv2D", "DepthwiseConv2D", "QConv2D", "QActivation"):
        assert supported in line
    assert not out_dir.exists()


def test_analyze_unsupported_quantizer(tmp_path, capsys):
    inp = L.Input((8, 8, 4))
    out = QActivation(quantized_tanh(8), name="tanh_act")(inp)
    model = _save(tf.keras.Model(inp, out), tmp_path / "m.h5")
    out_dir = tmp_path / "out"
    line = _run_error(capsys, ["analyze", "-m", model, "-o", out_dir], "tanh_act", "quantized_tanh")
    assert "supported" in line
    assert "quantized_bits" in line and "binary" in line
    assert not out_dir.exists()


def test_analyze_invalid_c_name(tmp_path, capsys):
    model = _save(_tiny_model(), tmp_path / "m.h5")
    out = tmp_path / "out"
    line = _run_error(capsys, ["analyze", "-m", model, "-n", "9bad", "-o", out], "9bad")
    assert "-n" in line or "--name" in line
    assert not out.exists()


def test_analyze_broken_onnx(tmp_path, capsys):
    model = tmp_path / "x.onnx"
    model.write_bytes(b"\x08\x07")
    out = tmp_path / "out"
    line = _run_error(capsys, ["analyze", "-m", model, "-o", out], "x.onnx")
    assert "not an ONNX model" in line
    assert not out.exists()


def test_analyze_output_below_a_file(tmp_path, capsys):
    """-o names a folder inside a regular file: a one-line error, not an OSError traceback."""
    model = _save(_tiny_model(), tmp_path / "m.h5")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _run_error(capsys, ["analyze", "-m", model, "-o", blocker / "out", "-q"], "afile")
    assert blocker.read_text() == "x"


# --------------------------------------------------------------------------------------------
# zoo build
# --------------------------------------------------------------------------------------------


def test_zoo_unknown_network(tmp_path, capsys, no_zoo_builds):
    out = tmp_path / "net.h5"
    _run_error(capsys, ["zoo", "build", "resnet50", "-o", out], "resnet50")
    assert not out.exists()
    assert no_zoo_builds == []


@pytest.mark.parametrize(
    ("network", "name"), [("hybrid", "x.tflite"), ("mnv2_fp", "x.tflite"), ("mnv2_i8", "x.h5")]
)
def test_zoo_wrong_output_suffix(tmp_path, capsys, no_zoo_builds, network, name):
    out = tmp_path / name
    line = _run_error(capsys, ["zoo", "build", network, "-o", out], name, "-o")
    assert (".tflite" in line) if network == "mnv2_i8" else (".h5" in line)
    assert not out.exists()
    assert _listing(tmp_path) == []
    assert no_zoo_builds == []


def test_zoo_negative_seed(tmp_path, capsys, no_zoo_builds):
    out = tmp_path / "x.h5"
    _run_error(capsys, ["zoo", "build", "hybrid", "-o", out, "--seed", "-1"], "--seed", "-1")
    assert not out.exists()
    assert no_zoo_builds == []


@pytest.mark.parametrize("network", ["hybrid", "mnv2_fp"])
def test_zoo_calib_with_other_network(tmp_path, capsys, no_zoo_builds, network):
    calib = tmp_path / "faces"
    calib.mkdir()
    out = tmp_path / "x.h5"
    line = _run_error(capsys, ["zoo", "build", network, "-o", out, "--calib", calib], "--calib")
    assert "mnv2_i8" in line
    assert not out.exists()
    assert no_zoo_builds == []


def test_zoo_calib_missing_folder(tmp_path, capsys, no_zoo_builds):
    out = tmp_path / "x.tflite"
    missing = tmp_path / "no_such_faces"
    _run_error(
        capsys,
        ["zoo", "build", "mnv2_i8", "-o", out, "--calib", missing],
        "--calib",
        "no_such_faces",
    )
    assert not out.exists()
    assert "quantize_mnv2" not in no_zoo_builds  # rejected before the long conversion
    assert _listing(tmp_path) == []


def test_zoo_calib_folder_without_images(tmp_path, capsys, no_zoo_builds):
    calib = tmp_path / "faces"
    calib.mkdir()
    (calib / "readme.txt").write_text("no images here\n")
    out = tmp_path / "x.tflite"
    line = _run_error(
        capsys, ["zoo", "build", "mnv2_i8", "-o", out, "--calib", calib], "--calib", "faces"
    )
    assert "no images" in line
    assert not out.exists()
    assert "quantize_mnv2" not in no_zoo_builds  # rejected before the long conversion
    assert _listing(tmp_path) == ["faces", "faces/readme.txt"]


def test_zoo_output_folder_missing(tmp_path, capsys, no_zoo_builds):
    out = tmp_path / "no_such_dir" / "x.h5"
    _run_error(capsys, ["zoo", "build", "hybrid", "-o", out], "no_such_dir")
    assert not out.parent.exists()
    assert no_zoo_builds == []


def test_zoo_output_below_a_file(tmp_path, capsys, no_zoo_builds):
    """-o names a file inside a regular file: a one-line error, not an OSError traceback."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _run_error(capsys, ["zoo", "build", "hybrid", "-o", blocker / "x.h5"], "afile")
    assert blocker.read_text() == "x"


# --------------------------------------------------------------------------------------------
# the real entry point, in a subprocess: no traceback, no library noise
# --------------------------------------------------------------------------------------------


def test_subprocess_analyze_missing_file(tmp_path):
    proc = _run_subprocess(tmp_path, ["analyze", "-m", "missing.h5", "-o", "out"])
    assert proc.returncode == 2, proc.stderr
    _check_error_text(proc.stderr, "missing.h5")
    assert not (tmp_path / "out").exists()
    assert _listing(tmp_path) == []


def test_subprocess_analyze_custom_layer(tmp_path, custom_layer_model):
    proc = _run_subprocess(tmp_path, ["analyze", "-m", custom_layer_model.name, "-o", "out"])
    assert proc.returncode == 2, proc.stderr
    _check_error_text(proc.stderr, "custom.h5", "MyLayer")
    assert not (tmp_path / "out").exists()
    assert _listing(tmp_path) == ["custom.h5"]


def test_subprocess_zoo_wrong_suffix(tmp_path):
    proc = _run_subprocess(tmp_path, ["zoo", "build", "hybrid", "-o", "x.tflite"])
    assert proc.returncode == 2, proc.stderr
    _check_error_text(proc.stderr, "x.tflite")
    assert _listing(tmp_path) == []


# --------------------------------------------------------------------------------------------
# a successful analyze
# --------------------------------------------------------------------------------------------


def _small_qkeras_model():
    inp = L.Input((8, 8, 4))
    x = QActivation(quantized_bits(8, 3, alpha=1), name="qin")(inp)
    x = QConv2D(8, 3, padding="same", kernel_quantizer=quantized_bits(8, 0, alpha=1), name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = QActivation(quantized_bits(8, 3, alpha=1), name="q1")(x)
    x = QActivation(binary(alpha=1), name="sign")(x)
    x = QConv2D(
        16, 3, padding="same", use_bias=False, kernel_quantizer=binary(alpha=1), name="bconv"
    )(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = QActivation(quantized_bits(8, 3, alpha=1), name="q2")(x)
    x = L.Flatten(name="flat")(x)
    out = QDense(3, kernel_quantizer=quantized_bits(8, 0, alpha=1), name="fc")(x)
    return tf.keras.Model(inp, out)


def _report_number(text: str, label: str) -> int:
    match = re.search(rf"^{label}\s*:\s*([\d,]+)", text, re.MULTILINE)
    assert match, f"no {label!r} line in the text report:\n{text}"
    return int(match.group(1).replace(",", ""))


def test_analyze_success_writes_two_consistent_reports(tmp_path, capsys):
    model = _save(_small_qkeras_model(), tmp_path / "small.h5")
    out = tmp_path / "reports"
    capsys.readouterr()
    status = main(["analyze", "-m", str(model), "-n", "small_net", "-o", str(out)])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert sorted(os.listdir(out)) == [
        "small_net_analyze_report.json",
        "small_net_analyze_report.txt",
    ]

    report = json.loads((out / "small_net_analyze_report.json").read_text())
    text = (out / "small_net_analyze_report.txt").read_text()
    assert text in stdout  # the printed report is the text file

    layers = report["layers"]
    assert layers
    for layer in layers:
        for key in ("name", "op", "macc", "weights_bytes", "precision"):
            assert key in layer, f"layer {layer} lacks {key!r}"
        assert type(layer["macc"]) is int
        assert type(layer["weights_bytes"]) is int
    for key in ("macc", "weights_bytes", "activations_bytes"):
        assert type(report[key]) is int, f"{key}: {report[key]!r}"
    assert report["macc"] == sum(layer["macc"] for layer in layers)
    assert report["weights_bytes"] == sum(layer["weights_bytes"] for layer in layers)
    assert report["activations_bytes"] > 0

    assert _report_number(text, "macc") == report["macc"]
    assert _report_number(text, r"weights \(ro\)") == report["weights_bytes"]
    assert _report_number(text, r"activations \(rw\)") == report["activations_bytes"]

    ops = {layer["name"]: layer for layer in layers}
    assert ops["bconv"]["op"] == "BinaryConv2D"
    assert ops["bconv"]["precision"] == "binary"
    assert ops["bconv"]["macc"] == 8 * 8 * 16 * 3 * 3 * 8


def test_error_lines_escape_control_characters(tmp_path, capsys) -> None:  # noqa: ANN001
    """A name read from a damaged file may hold newlines or NULs: the error stays one line."""
    from bnncube import cli
    from bnncube.errors import BnnError

    assert cli._printable("op 'a\nb\x00c' x") == "op 'a\\nb\\x00c' x"

    def broken(*args: object, **kwargs: object) -> None:
        raise BnnError("m.tflite: operator 'Q\nuantize\x00' is not supported")

    original = cli.cli.main
    try:
        cli.cli.main = broken  # type: ignore[method-assign]
        assert cli.main(["analyze", "-m", str(tmp_path / "m.tflite")]) == 2
    finally:
        cli.cli.main = original  # type: ignore[method-assign]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Q\\nuantize\\x00" in err
