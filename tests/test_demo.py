"""`bnncube demo`: the whole face pipeline, at the `tiny` scale (the wiring; `make demo` runs the
default scale, whose figures are in docs/demo.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnncube.cli import main
from bnncube.validation import emulator as em


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--scale", "tiny"]) == 0
    printed = capsys.readouterr().out
    # every stage ran as a printed `bnncube` command
    for command in ("zoo faces", "train --model mnv2_fp", "train --model hybrid", "convert",
                    "generate", "validate", "compare"):  # fmt: skip
        assert f"$ bnncube {command}" in printed, command
    assert f"report: {out / 'report' / 'compare_report.html'}" in printed
    report = json.loads((out / "report" / "compare_report.json").read_text())
    assert set(report["models"]) == {"float", "int8", "hybrid"}
    for key in ("int8", "hybrid"):
        model = report["models"][key]
        assert model["bit_exact"]["host_vs_reference"] is True
        if em.toolchain_available():
            assert model["target"]["instructions_per_inference"] > 0
    for name in ("mnv2_i8", "hybrid"):
        assert (out / f"{name}_c" / f"{name}.c").is_file()
        modes = ("host", "target") if em.toolchain_available() else ("host",)
        for mode in modes:
            report_file = out / "validate" / mode / f"{name}_validate_report.json"
            assert json.loads(report_file.read_text())["bit_exact"] is True, report_file
    assert (out / "forms" / "hybrid.onnx").is_file() and (out / "forms" / "hybrid.tflite").is_file()
    assert (out / ".bnncube-demo").is_file()
    assert not (out / "ws").exists()  # build products removed


def test_demo_refuses_a_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["demo", "-o", str(tmp_path), "--scale", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no earlier demo" in err
    assert (tmp_path / "mine.txt").read_text() == "keep"
