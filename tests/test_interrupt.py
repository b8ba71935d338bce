"""Failed and interrupted runs leave the previous output as it was, and no partial files (issue 9).

For every command that writes: (a) a failure injected late in the run (after its first files are
written or staged) and (b) Ctrl-C, as the KeyboardInterrupt Python raises for SIGINT, from the
same place. Then a real SIGINT sent to a ``python -m bnncube`` process while it writes: generate
(held at its third file by a wrapper script, so the signal lands mid-write every time) and
``zoo faces`` (the plain CLI, signalled once its staging folder holds images). The long,
resumable commands (align, train) leave only whole files and resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnncube import fsutil
from bnncube.cli import main

KINDS = ["failure", "interrupt"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def hidden(root: Path) -> list[str]:
    """Temporary files or folders (bnncube's all start with a dot) anywhere under ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*"))


def _exception(kind: str) -> BaseException:
    return OSError(28, "No space left on device") if kind == "failure" else KeyboardInterrupt()


def fail_on_call(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, n: int, kind: str
) -> dict[str, int]:
    """Make ``owner.name`` raise on its ``n``-th call (the calls before it run for real)."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise _exception(kind)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def run_failing(argv: list[str], kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Run the CLI in this process: an injected OSError propagates; Ctrl-C is exit 130."""
    capsys.readouterr()
    if kind == "failure":
        with pytest.raises(OSError, match="No space left"):
            main(argv)
        return
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ in-process


@pytest.mark.parametrize("kind", KINDS)
def test_analyze(kind: str, hybrid_h5: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    assert main(["analyze", "-m", str(hybrid_h5), "-o", str(out), "-q"]) == 0
    (out / "mine.txt").write_text("not ours")
    (out / "network_analyze_report.json").write_text("{}")  # differs from what a run writes
    before = snapshot(out)
    calls = fail_on_call(monkeypatch, fsutil, "_file_mode", 2, kind)  # the 2nd report staged
    run_failing(["analyze", "-m", str(hybrid_h5), "-o", str(out), "-q"], kind, capsys)
    assert calls["n"] == 2
    assert snapshot(out) == before and hidden(tmp_path) == []


@pytest.mark.parametrize("form", ["onnx", "tflite"])
@pytest.mark.parametrize("kind", KINDS)
def test_convert(
    kind: str, form: str, hybrid_h5: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    target = tmp_path / f"hybrid.{form}"
    target.write_bytes(b"previous")
    calls = fail_on_call(monkeypatch, fsutil, "_file_mode", 1, kind)  # the file is written
    run_failing(["convert", "-m", str(hybrid_h5), "--to", form, "-o", str(target)], kind, capsys)
    assert calls["n"] == 1
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.fixture(autouse=True)
def python_handles_ctrl_c() -> Any:
    """Ctrl-C as at an interactive prompt, whatever this process inherited: a job started in the
    background of a non-interactive shell (``cmd &``, nohup) begins with SIGINT ignored, and then
    neither this process nor the commands it starts would see the signal. The subprocesses below
    inherit the default disposition from this handler (exec resets a handler, not an ignore)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def previous_generate(hybrid_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("previous") / "gen"
    assert main(["generate", "-m", str(hybrid_h5), "-o", str(out), "-q"]) == 0
    return out


def _copy(folder: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(folder, dest)
    return dest


@pytest.mark.parametrize("kind", KINDS)
def test_generate(
    kind: str, hybrid_h5: Path, previous_generate: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = _copy(previous_generate, tmp_path / "gen")
    before = snapshot(out)
    calls = fail_on_call(monkeypatch, Path, "write_bytes", 5, kind)  # 4 files staged
    run_failing(["generate", "-m", str(hybrid_h5), "-n", "other", "-o", str(out)], kind, capsys)
    assert calls["n"] == 5
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]


@pytest.mark.parametrize("moment", ["aside", "in_place"])
def test_generate_swap(
    moment: str, hybrid_h5: Path, previous_generate: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The two renames that swap the new folder in. ``aside``: the second one fails, and the
    previous folder is put back. ``in_place``: Ctrl-C arrives between them; it is held back until
    both are done, so the new folder is complete and the previous one is gone."""
    out = _copy(previous_generate, tmp_path / "gen")
    before = snapshot(out)
    real_replace = os.replace
    seen: list[str] = []

    def replace(src: Any, dst: Any) -> None:
        seen.append(Path(src).name)
        if moment == "aside" and Path(src).name.startswith(".gen.") and ".old." not in str(src):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)
        if moment == "in_place" and Path(src) == out:
            os.kill(os.getpid(), signal.SIGINT)  # blocked: delivered after the second rename

    monkeypatch.setattr(fsutil.os, "replace", replace)
    argv = ["generate", "-m", str(hybrid_h5), "-n", "other", "-o", str(out), "-q"]
    if moment == "aside":
        with pytest.raises(OSError, match="Input/output"):
            main(argv)
        assert snapshot(out) == before
    else:
        capsys.readouterr()
        assert main(argv) == 130
        assert capsys.readouterr().err.strip() == "error: interrupted"
        names = snapshot(out)
        assert "other.c" in names and "network.c" not in names
    assert seen[0] == "gen" and seen[1].startswith(".gen.")
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]


@pytest.mark.parametrize("kind", KINDS)
def test_validate_reports(kind: str, hybrid_h5: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The reports land in a folder that may hold other outputs (st_ai_output): all of them or
    none; the previous ones stay."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("network_validate_report.txt", "network_validate_report.json", "other.c"):
        (out / name).write_text(f"previous {name}\n")
    before = snapshot(out)
    calls = fail_on_call(monkeypatch, fsutil, "_file_mode", 2, kind)
    argv = ["validate", "-m", str(hybrid_h5), "-b", "1", "-o", str(out), "-w", str(tmp_path / "w")]
    run_failing(argv, kind, capsys)
    assert calls["n"] == 2
    assert snapshot(out) == before and hidden(out) == []


@pytest.mark.parametrize("kind", KINDS)
def test_zoo_build(kind: str, tmp_path: Path, monkeypatch, capsys) -> None:
    target = tmp_path / "hybrid.h5"
    target.write_bytes(b"previous")
    calls = fail_on_call(monkeypatch, fsutil, "_file_mode", 1, kind)  # the model is saved
    run_failing(["zoo", "build", "hybrid", "-o", str(target)], kind, capsys)
    assert calls["n"] == 1
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["hybrid.h5"]


@pytest.mark.parametrize("kind", KINDS)
def test_zoo_faces(kind: str, tmp_path: Path, monkeypatch, capsys) -> None:
    from bnncube.zoo import synthetic_faces

    pairs = tmp_path / "pairs.txt"
    pairs.write_text("previous pairs\n")
    calls = fail_on_call(monkeypatch, synthetic_faces, "write_pairs", 1, kind)  # faces written
    argv = ["zoo", "faces", str(tmp_path / "faces"), "--identities", "4", "--images", "3"]
    run_failing([*argv, "--pairs", str(pairs), "--folds", "2", "--per-fold", "2"], kind, capsys)
    assert calls["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.txt"]
    assert pairs.read_text() == "previous pairs\n"


@pytest.fixture(scope="module")
def lfw_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A pairs file and an embeddings file for it (random vectors): `lfw --embeddings` is fast."""
    from bnncube.validation.embeddings import pair_images, save_embeddings_file
    from bnncube.zoo.synthetic_faces import read_pairs, write_dataset, write_pairs

    root = tmp_path_factory.mktemp("lfw")
    faces = write_dataset(root / "faces", 6, 3, seed=3)
    pairs = write_pairs(faces, root / "pairs.txt", folds=2, per_fold=3, seed=3)
    rel, _, _ = pair_images(faces, read_pairs(pairs))
    emb = np.random.default_rng(0).normal(size=(len(rel), 8)).astype(np.float32)
    save_embeddings_file(root / "emb.npz", rel, emb)
    return pairs, root / "emb.npz"


@pytest.mark.parametrize("kind", KINDS)
def test_lfw_json(
    kind: str, lfw_inputs: tuple[Path, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    pairs, emb = lfw_inputs
    result = tmp_path / "lfw.json"
    argv = ["lfw", "--embeddings", str(emb), "--pairs", str(pairs), "--json", str(result)]
    assert main(argv) == 0  # the previous result
    before = result.read_bytes()
    calls = fail_on_call(monkeypatch, fsutil, "_file_mode", 1, kind)
    run_failing(argv, kind, capsys)
    assert calls["n"] == 1
    assert result.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lfw.json"]


@pytest.mark.parametrize("kind", KINDS)
def test_compare_report(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compare's report folder (the comparison itself is long; its last step, the writing, is
    what matters here): the last file fails, the previous report stays; then a run replaces it."""
    from bnncube.validation import compare as cmp

    out = tmp_path / "report"
    out.mkdir()
    for name in cmp.REPORT_FILES:
        (out / name).write_text(f"previous {name}\n")
    before = snapshot(out)
    monkeypatch.setattr(cmp, "roc_png", lambda report: b"png")
    monkeypatch.setattr(cmp, "markdown_report", lambda report: "markdown\n")
    monkeypatch.setattr(cmp, "html_report", lambda report, png: "<html></html>\n")
    calls = fail_on_call(monkeypatch, cmp, "html_report", 1, kind)
    with pytest.raises(OSError if kind == "failure" else KeyboardInterrupt):
        cmp.write_report({"models": {}}, out)
    assert calls["n"] == 1
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    cmp.write_report({"models": {}}, out)  # the next run replaces it as a whole
    assert snapshot(out)["compare_report.md"] == b"markdown\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("kind", KINDS)
def test_demo(kind: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """The demo's stages write into its folder as they go (its reports name those paths): the
    previous demo is set aside meanwhile and put back, and the new files removed, when a stage
    fails or is interrupted (here the third, training, after two data stages wrote files)."""
    from bnncube.zoo import train as train_module

    demo = tmp_path / "demo"
    (demo / "report").mkdir(parents=True)
    (demo / ".bnncube-demo").write_text("an earlier demo\n")
    (demo / "report" / "compare_report.json").write_text('{"previous": true}\n')
    before = snapshot(demo)
    calls = fail_on_call(monkeypatch, train_module, "train", 1, kind)
    run_failing(["demo", "-o", str(demo), "--scale", "tiny"], kind, capsys)
    assert calls["n"] == 1
    assert snapshot(demo) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_align_interrupted_then_resumed(tmp_path: Path, capsys) -> None:
    """align writes image by image (each file atomic) so that a long run can be resumed: Ctrl-C
    after the first image leaves that image whole, nothing temporary, and no report; the next run
    skips it and does the rest."""
    import bnncube.zoo.align as align_module
    from bnncube.zoo.synthetic_faces import write_dataset

    src = write_dataset(tmp_path / "src", 3, 1, seed=2)
    dst = tmp_path / "dst"
    with pytest.MonkeyPatch.context() as mp:
        calls = fail_on_call(mp, align_module, "_process", 2, "interrupt")
        run_failing(["align", str(src), str(dst), "-q"], "interrupt", capsys)
        assert calls["n"] == 2
    written = snapshot(dst)
    assert len(written) == 1 and hidden(dst) == [] and "align_report.json" not in written
    assert main(["align", str(src), str(dst), "-q"]) == 0
    after = snapshot(dst)
    assert {k: after[k] for k in written} == written  # kept, not redone
    assert len([k for k in after if k.endswith(".jpg")]) == 3 and "align_report.json" in after
    assert hidden(dst) == []
    assert '"skipped_existing": 1' in after["align_report.json"].decode()


@pytest.mark.slow
def test_train_interrupted_then_resumed(tmp_path: Path, capsys) -> None:
    """train checkpoints every epoch (each file atomic): Ctrl-C after the first epoch leaves the
    checkpoint and no temporary files, and --resume finishes the run from it."""
    import bnncube.zoo.train as train_module
    from bnncube.zoo.synthetic_faces import write_dataset

    data = write_dataset(tmp_path / "faces", 6, 4, seed=5)
    out = tmp_path / "run"
    argv = ["train", "--model", "mnv2_fp", "--data", str(data), "-o", str(out), "--epochs", "1"]
    argv += ["--batch", "8", "--val-split", "0.34", "--no-int8", "-q"]
    with pytest.MonkeyPatch.context() as mp:
        calls = fail_on_call(mp, train_module, "atomic_output_file", 1, "interrupt")
        run_failing(argv, "interrupt", capsys)
        assert calls["n"] == 1  # interrupted as the model was about to be saved
    assert hidden(out) == [] and not list(out.rglob("*tmp*")) and not list(out.rglob("*temp*"))
    assert (out / "checkpoints" / "ckpt-1.index").is_file()
    assert not (out / "mnv2_fp.h5").exists()
    assert main([*argv, "--resume"]) == 0
    assert (out / "mnv2_fp.h5").is_file() and (out / "train_log.json").is_file()
    assert hidden(out) == []


# ------------------------------------------------------------------------------ real SIGINT

HOLD = r"""
import os, sys, time
from pathlib import Path

real = Path.write_bytes
count = [0]

def write_bytes(self, data):
    done = real(self, data)
    count[0] += 1
    if count[0] == 3:  # the third generated file is written: say so, then wait for Ctrl-C
        real(Path(sys.argv[1]), b"writing")
        time.sleep(120)
    return done

Path.write_bytes = write_bytes
from bnncube.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _interrupt(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted", err
    assert "Traceback" not in err
    return err


def test_sigint_generate_subprocess(
    hybrid_h5: Path, previous_generate: Path, tmp_path: Path
) -> None:
    outs = tmp_path / "outs"
    outs.mkdir()
    out = _copy(previous_generate, outs / "gen")
    before = snapshot(out)
    script, mark = tmp_path / "hold.py", tmp_path / "writing"
    script.write_text(HOLD)
    argv = ["generate", "-m", str(hybrid_h5), "-n", "other", "-o", str(out), "-q"]
    proc = subprocess.Popen(
        [sys.executable, str(script), str(mark), *argv],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(mark.exists, proc, "generate writes its files")
    staged = [p for p in outs.iterdir() if p.name.startswith(".gen.")]
    assert len(staged) == 1 and len(list(staged[0].rglob("*.*"))) >= 3  # mid-write, staged
    _interrupt(proc)
    assert snapshot(out) == before
    assert [p.name for p in outs.iterdir()] == ["gen"]


def test_sigint_zoo_faces_subprocess(tmp_path: Path) -> None:
    """The plain CLI, signalled once its staging folder holds images (a few seconds of writing
    are left then): no dataset, no staging folder, the previous pairs.txt as it was."""
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("previous pairs\n")
    out = tmp_path / "faces"
    argv = ["zoo", "faces", str(out), "--identities", "400", "--images", "5", "--pairs", str(pairs)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnncube", *argv],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def writing() -> bool:
        return any(
            next(p.rglob("*.jpg"), None) is not None
            for p in tmp_path.iterdir()
            if p.name.startswith(".faces.")
        )

    _wait_for(writing, proc, "zoo faces writes images")
    _interrupt(proc)
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.txt"]
    assert pairs.read_text() == "previous pairs\n"


def test_sigint_deferred_holds_ctrl_c_until_the_end() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt):
        with fsutil.sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append(1)  # still running: the signal waits
    assert done == [1]
