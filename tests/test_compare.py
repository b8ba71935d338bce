"""`bnncube compare` (validation/compare.py, plugin/cmd_compare.py, docs/compare.md).

The untrained zoo models on a tiny synthetic face set (6 identities x 3 images, 2 folds x 6
pairs): every model gets LFW figures, the generated C is bit-exact on the host and on the
emulated Cortex-M7, instruction counts and flash/RAM equal an independent validate_target run and
the ELF's memory_usage, the hybrid's deployed embeddings agree with QKeras, the reports hold the
ROC image and one table row per model, and bad inputs exit 2 with one line and no output folder.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.cli import main  # noqa: E402
from bnncube.validation import compare as cmp  # noqa: E402

HYBRID_AGREEMENT_BAR = 0.9  # mean cosine, hybrid C vs QKeras (0.9995 measured, min 0.991)


def _toolchain() -> bool:
    from bnncube.validation import emulator as em

    if not em.toolchain_available():
        return False
    try:
        import unicorn  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from bnncube.zoo.synthetic_faces import write_dataset, write_pairs

    root = tmp_path_factory.mktemp("faces")
    data = write_dataset(root / "data", 6, 3, seed=3)
    pairs = write_pairs(data, root / "pairs.txt", folds=2, per_fold=6, seed=3)
    return data, pairs


@pytest.fixture(scope="module")
def full_run(
    tmp_path_factory: pytest.TempPathFactory,
    faces: tuple[Path, Path],
    mnv2_fp_h5: Path,
    mnv2_i8_tflite: Path,
    hybrid_h5: Path,
) -> dict[str, Any]:
    """The three models through the CLI, 2 images on the target; the workspace is kept."""
    data, pairs = faces
    tmp = tmp_path_factory.mktemp("compare")
    out, ws = tmp / "out", tmp / "ws"
    args = [
        "compare",
        "--float",
        str(mnv2_fp_h5),
        "--int8",
        str(mnv2_i8_tflite),
        "--hybrid",
        str(hybrid_h5),
        "--data",
        str(data),
        "--pairs",
        str(pairs),
        "-o",
        str(out),
        "-w",
        str(ws),
        "--target-count",
        "2" if _toolchain() else "0",
    ]
    rc = main(args)
    assert rc == 0
    report = json.loads((out / "compare_report.json").read_text())
    return {"out": out, "ws": ws, "report": report, "data": data, "pairs": pairs}


# --------------------------------------------------------------------------------------------
# the full run
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_model_has_lfw_figures(full_run: dict[str, Any]) -> None:
    report = full_run["report"]
    assert list(report["models"]) == ["float", "int8", "hybrid"]
    assert report["data"]["synthetic"] is True
    assert report["data"]["n_pairs"] == 24
    assert report["data"]["n_identities"] == 6
    for key, m in report["models"].items():
        lf = m["lfw"]
        assert 0.0 <= lf["accuracy_mean"] <= 1.0, key
        assert 0.0 <= lf["accuracy_std"] <= 1.0, key
        assert 0.0 <= lf["auc"] <= 1.0, key
        assert 0.0 <= lf["tar_at_far_1e-3"] <= 1.0, key
        assert 0.0 <= lf["eer"] <= 1.0, key
        assert lf["n_pairs"] == 24 and lf["n_evaluated"] + lf["n_skipped"] == 24
        assert lf["n_folds"] == 2
        assert m["roc"]["fpr"][0] == 0.0 and m["roc"]["tpr"][-1] == 1.0
        assert m["embedding_dim"] == 128
    assert report["models"]["float"]["engine"] == "keras"
    assert report["models"]["int8"]["engine"] == "host-c"
    assert report["models"]["hybrid"]["engine"] == "host-c"
    assert report["models"]["float"]["footprint"]["deployable"] is False


@pytest.mark.slow
def test_generated_c_is_bit_exact(full_run: dict[str, Any]) -> None:
    for key in ("int8", "hybrid"):
        be = full_run["report"]["models"][key]["bit_exact"]
        assert be["host_vs_reference"] is True, key
        assert be["n_host"] == 16, key
        # the embeddings evaluated are the outputs of the very code checked
        assert be["host_sample_equals_embeddings"] is True, key
        if _toolchain():
            assert be["target_vs_host"] is True, key
            assert be["target_vs_reference"] is True, key
            assert be["n_target"] == 2, key
    assert full_run["report"]["models"]["float"]["bit_exact"] is None


@pytest.mark.slow
def test_target_figures_match_an_independent_run(full_run: dict[str, Any]) -> None:
    if not _toolchain():
        pytest.skip("arm-none-eabi-gcc or unicorn is not installed (`make setup`)")
    from bnncube.converters.loader import load_model
    from bnncube.generate import GenerateOptions, generate_code
    from bnncube.validation.embeddings import load_images, model_inputs, pair_images
    from bnncube.validation.target import memory_usage, validate_target
    from bnncube.zoo.synthetic_faces import read_pairs

    report = full_run["report"]
    rel, _, _ = pair_images(full_run["data"], read_pairs(full_run["pairs"]))
    images = load_images(full_run["data"], rel[:2])
    for key in ("int8", "hybrid"):
        m = report["models"][key]
        t, fp = m["target"], m["footprint"]
        assert t["measured"] is True
        assert fp["instructions_per_inference"] > 0
        assert fp["instructions_per_inference"] == max(t["instructions_all"])
        # flash/RAM: the ELF's sections
        usage = memory_usage(Path(t["elf"]), t["stack_used_bytes"])
        assert fp["flash_bytes"] == usage["flash_bytes"] == t["flash_bytes"]
        assert fp["ram_bytes"] == usage["ram_bytes"] == t["ram_bytes"]
        # instructions: a second, independent generate + build + Unicorn run
        result = generate_code(
            load_model(m["model"], m["model_type"]), GenerateOptions(c_name=f"again_{key}")
        )
        again = validate_target(
            m["model"],
            m["model_type"],
            result.graph,
            result,
            f"again_{key}",
            model_inputs(result.graph, images),
            full_run["ws"] / "again",
            layers=False,
        )
        assert again["bit_exact"] is True
        assert again["target"]["instructions"]["per_inference"] == t["instructions_all"]
        est = fp["instructions_per_inference"] / 480e6 * 1e3
        assert fp["est_ms_480mhz"] == pytest.approx(est)
        paper = fp["paper"]
        assert fp["ratio_to_paper"]["flash"] == pytest.approx(
            fp["flash_bytes"] / paper["flash_bytes"]
        )


@pytest.mark.slow
def test_hybrid_c_agrees_with_qkeras(full_run: dict[str, Any]) -> None:
    models = full_run["report"]["models"]
    agree = models["hybrid"]["agreement"]
    assert agree["n_images"] == full_run["report"]["data"]["n_images"]
    assert agree["mean"] >= HYBRID_AGREEMENT_BAR
    assert agree["min"] <= agree["p01"] <= agree["p05"] <= agree["p50"] <= agree["max"]
    int8 = models["int8"]["agreement"]
    assert int8["against"].startswith("mnv2_fp")
    assert -1.0 <= int8["min"] <= int8["mean"] <= 1.0 + 1e-9


@pytest.mark.slow
def test_html_and_markdown(full_run: dict[str, Any]) -> None:
    out = full_run["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(cmp.REPORT_FILES)
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "compare_report.html").read_text()
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("<table>") >= 3
    for label in cmp.LABELS.values():
        assert label in page
    assert "not an LFW figure" in page
    md = (out / "compare_report.md").read_text()
    headline = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in headline.splitlines() if ln.startswith("| ") and "| --- |" not in ln]
    assert len(rows) == 1 + 3  # the header and one row per model
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == list(cmp.LABELS.values())
    assert cmp.headline_table(full_run["report"]).count("\n") == 2 + 3


@pytest.mark.slow
def test_failed_write_keeps_previous_report(
    full_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(full_run["out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*_: Any, **__: Any) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(cmp, "html_report", boom)
    with pytest.raises(RuntimeError):
        cmp.write_report(full_run["report"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    monkeypatch.undo()
    cmp.write_report(full_run["report"], out)  # replaces a previous report folder
    assert sorted(p.name for p in out.iterdir()) == sorted(cmp.REPORT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_api_hybrid_only_flip_no_target(
    faces: tuple[Path, Path], hybrid_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, pairs = faces
    monkeypatch.setattr(cmp, "HOST_SAMPLE", 3)
    from bnncube.converters import loader

    lines: list[str] = []
    report = cmp.compare(
        {"hybrid": hybrid_h5},
        data,
        pairs,
        tmp_path / "out",
        flip=True,
        engines={"hybrid": "keras"},
        target_count=0,
        log=lines.append,
    )
    assert loader._CACHE is None  # the read-once cache ends with the comparison
    assert list(report["models"]) == ["hybrid"]
    m = report["models"]["hybrid"]
    assert m["engine"] == "keras" and m["lfw"]["flip"] is True
    assert m["agreement"]["against"] is None
    assert m["bit_exact"]["host_vs_reference"] is True
    assert m["bit_exact"]["n_host"] == 3
    assert m["bit_exact"]["host_sample_equals_embeddings"] is None  # engine keras
    assert m["bit_exact"]["target_vs_host"] is None and m["target"]["measured"] is False
    assert m["footprint"]["instructions_per_inference"] is None
    assert m["footprint"]["macc"] > 20_000_000
    saved = json.loads((tmp_path / "out" / "compare_report.json").read_text())
    assert saved["options"]["flip"] is True and saved["options"]["target_count"] == 0
    assert any("wrote" in line for line in lines)


# --------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------


def _bad(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    rc = main(["compare", *args, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not out.exists()
    return err


def test_bad_inputs_quick(
    faces: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, pairs = faces
    out = tmp_path / "out"
    common = ["--data", str(data), "--pairs", str(pairs)]
    assert "--float, --int8, --hybrid" in _bad(common, out, capsys)
    missing = tmp_path / "nope.h5"
    assert "--hybrid" in _bad(["--hybrid", str(missing), *common], out, capsys)
    assert "--int8" in _bad(["--int8", str(tmp_path / "x.onnx"), *common], out, capsys)
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"not an hdf5 file")
    assert "--float" in _bad(["--float", str(h5), *common], out, capsys)
    err = _bad(
        ["--hybrid", str(h5), "--data", str(tmp_path / "none"), "--pairs", str(pairs)], out, capsys
    )
    assert "--data" in err
    err = _bad(
        ["--hybrid", str(h5), "--data", str(data), "--pairs", str(tmp_path / "p")], out, capsys
    )
    assert "--pairs" in err
    bad_pairs = tmp_path / "pairs.txt"
    bad_pairs.write_text("2\t6\nPerson_0001\t1\n")
    assert "--pairs" in _bad(
        ["--hybrid", str(h5), "--data", str(data), "--pairs", str(bad_pairs)], out, capsys
    )
    # an output folder that is not a previous report is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["compare", "--hybrid", str(h5), *common, "-o", str(other)]) == 2
    assert "-o" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_models_of_the_wrong_kind(
    faces: tuple[Path, Path],
    mnv2_fp_h5: Path,
    hybrid_h5: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, pairs = faces
    out = tmp_path / "out"
    common = ["--data", str(data), "--pairs", str(pairs)]
    err = _bad(["--int8", str(mnv2_fp_h5), *common], out, capsys)
    assert "--int8" in err and "float model" in err and "int8" in err
    err = _bad(["--float", str(hybrid_h5), *common], out, capsys)
    assert "--float" in err and "binary model" in err
    err = _bad(["--hybrid", str(mnv2_fp_h5), *common], out, capsys)
    assert "--hybrid" in err and "float model" in err


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------


def test_cosine_and_agreement_stats() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    assert cmp.cosine_rows(a, b).tolist() == [1.0, -1.0, 1.0, 0.0]
    stats = cmp.agreement_stats(np.array([1.0, 0.5, 0.0, 0.75]))
    assert stats["n_images"] == 4
    assert stats["mean"] == pytest.approx(0.5625)
    assert stats["min"] == 0.0 and stats["max"] == 1.0
    assert stats["p50"] == pytest.approx(0.625)


def test_check_evaluable_needs_two_folds_and_both_kinds(tmp_path: Path) -> None:
    from bnncube.errors import BnnError

    with pytest.raises(BnnError, match="--data"):
        cmp._check_evaluable([(None, 1, True, 0)], tmp_path, tmp_path / "p.txt")
    with pytest.raises(BnnError, match="--pairs"):
        cmp._check_evaluable([(0, 1, True, 0), (0, 2, False, 0)], tmp_path, tmp_path / "p")
    cmp._check_evaluable([(0, 1, True, 0), (0, 2, False, 1)], tmp_path, tmp_path / "p")


def test_command_imports_cheaply() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bnncube.cmd_compare; "
        "print(any(m.split('.')[0] in ('tensorflow', 'keras', 'matplotlib') for m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
