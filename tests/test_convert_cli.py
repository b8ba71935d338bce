"""`bnncube convert`: the ONNX and TFLite forms from the command line, and its errors."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.cli import main  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.reference import run_graph  # noqa: E402


def _ok(capsys: pytest.CaptureFixture[str], argv: list[object]) -> str:
    capsys.readouterr()
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 0, (out, err)
    return out


def _error(capsys: pytest.CaptureFixture[str], argv: list[object], *needles: str) -> str:
    capsys.readouterr()
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_convert_hybrid_to_onnx_and_back(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hybrid.onnx"
    text = _ok(capsys, ["convert", "-m", hybrid_h5, "--to", "onnx", "-o", out])
    assert f"wrote {out} (onnx" in text and "BinaryConv2D" in text
    original, reread = load_model(hybrid_h5), load_model(out)
    assert [op.type for op in reread.ops] == [op.type for op in original.ops]
    x = np.random.default_rng(0).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    a = run_graph(original, [x])[original.outputs[0]]
    b = run_graph(reread, [x])[reread.outputs[0]]
    assert np.array_equal(a, b)
    # the converted file is a model the other commands take
    _ok(capsys, ["analyze", "-m", out, "-o", tmp_path / "report", "-q"])
    assert (tmp_path / "report" / "network_analyze_report.json").exists()


def test_convert_hybrid_to_tflite(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hybrid.tflite"
    text = _ok(capsys, ["convert", "-m", hybrid_h5, "--to", "tflite", "-o", out])
    assert f"wrote {out} (tflite" in text
    assert out.read_bytes()[4:8] == b"TFL3"
    assert b"LceBconv2d" in out.read_bytes()


def test_convert_wrong_suffix(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    _error(
        capsys,
        ["convert", "-m", hybrid_h5, "--to", "onnx", "-o", tmp_path / "x.tflite"],
        "option -o",
        ".onnx",
    )
    assert not (tmp_path / "x.tflite").exists()


def test_convert_missing_folder(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    _error(
        capsys,
        ["convert", "-m", hybrid_h5, "--to", "onnx", "-o", tmp_path / "no" / "x.onnx"],
        "does not exist",
    )


def test_convert_missing_model(tmp_path: Path, capsys) -> None:
    _error(
        capsys,
        ["convert", "-m", tmp_path / "nope.h5", "--to", "onnx", "-o", tmp_path / "x.onnx"],
        "nope.h5",
    )
    assert not (tmp_path / "x.onnx").exists()


def test_convert_unknown_form(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    _error(capsys, ["convert", "-m", hybrid_h5, "--to", "pb", "-o", tmp_path / "x.pb"], "--to")
