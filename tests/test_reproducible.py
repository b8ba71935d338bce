"""What bnncube writes is the same bytes from any folder, at any time, for any user (issue 9).

Two runs in separate processes that differ in everything a file could pick up by accident: the
absolute paths (model, output, working folder), relative versus absolute ``-o``, the time zone,
``SOURCE_DATE_EPOCH``, the user name and home folder, the locale. Each run generates C (the full
CLI set, X-CUBE-AI/App and firmware/ included, and the plain library set) for the binary hybrid
and the int8 mnv2_i8, converts the hybrid to both exchange forms and analyzes both models. Every
file must be byte-identical between the runs, and none may hold a path, the user, the host name
or today's date.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = r"""
import json, sys
from pathlib import Path

from bnncube.cli import main
from bnncube.converters.loader import load_model
from bnncube.generate import GenerateOptions, generate_code, write_generated

models = json.loads(sys.argv[1])
for name, model in models.items():
    for argv in (
        ["generate", "-m", model, "-n", name, "-o", f"out/{name}_cli", "-q"],
        ["analyze", "-m", model, "-n", name, "-o", "out/analyze", "-q"],
    ):
        assert main(argv) == 0, argv
    plain = generate_code(load_model(model), GenerateOptions(c_name=name), model)
    write_generated(plain, Path(f"out/{name}_plain"))
for form in ("onnx", "tflite"):
    argv = ["convert", "-m", models["hybrid"], "--to", form, "-o", f"out/hybrid.{form}"]
    assert main(argv) == 0, argv
"""


def _run(base: Path, models: dict[str, Path], env: dict[str, str], nested: bool) -> Path:
    """Copy the models under ``base``, run the driver with its working folder there; return the
    output folder."""
    placed = {}
    for name, model in models.items():
        folder = base / "models" / ("a" if nested else "bb/cc")
        folder.mkdir(parents=True, exist_ok=True)
        placed[name] = str(shutil.copy(model, folder / model.name))
    cwd = base / "work" / ("x/y" if nested else "z")
    cwd.mkdir(parents=True)
    home = base / "home"
    home.mkdir()
    full_env = {
        **os.environ,
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "HOME": str(home),
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(placed)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "out"


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def two_runs(
    hybrid_h5: Path, mnv2_i8_tflite: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, bytes], dict[str, bytes], list[str]]:
    models = {"hybrid": hybrid_h5, "mnv2_i8": mnv2_i8_tflite}
    a = tmp_path_factory.mktemp("repro_first_place")
    b = tmp_path_factory.mktemp("repro_elsewhere_entirely")
    env_a = {
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": "315532800",
        "USER": "bnnrepro_alice",
        "LOGNAME": "bnnrepro_alice",
        "LC_ALL": "C",
    }
    env_b = {
        "TZ": "Pacific/Kiritimati",  # UTC+14: another calendar day than UTC for 10 hours a day
        "SOURCE_DATE_EPOCH": "1893456000",
        "USER": "bnnrepro_bob",
        "LOGNAME": "bnnrepro_bob",
        "LC_ALL": "C.UTF-8",
    }
    first = _files(_run(a, models, env_a, nested=True))
    second = _files(_run(b, models, env_b, nested=False))
    now = dt.datetime.now(dt.timezone.utc)
    dates = set()
    for moment in (now, now.astimezone(dt.timezone(dt.timedelta(hours=14)))):
        dates |= {
            moment.strftime("%Y-%m-%d"),
            moment.strftime("%Y%m%d"),
            moment.strftime("%d/%m/%Y"),
            moment.strftime("%b %d %Y"),  # C's __DATE__ ...
            moment.strftime("%b ") + f"{moment.day:>2} " + moment.strftime("%Y"),  # ... padded
            moment.strftime("%H:%M:%S"),
        }
    needles = [str(a), str(b), str(Path.home()), "bnnrepro_", *sorted(dates)]
    host = socket.gethostname()
    if len(host) >= 6:  # a short name ("vm") would match ordinary text
        needles.append(host)
    return first, second, needles


def test_same_file_set(two_runs: tuple[dict[str, bytes], dict[str, bytes], list[str]]) -> None:
    first, second, _ = two_runs
    assert sorted(first) == sorted(second)
    for name in ("hybrid", "mnv2_i8"):
        assert f"{name}_cli/{name}.c" in first
        assert f"{name}_cli/firmware/Makefile" in first
        assert f"{name}_cli/X-CUBE-AI/App/app_x-cube-ai.c" in first
        assert f"{name}_plain/{name}_data_params.c" in first
        assert f"analyze/{name}_analyze_report.json" in first
    assert "hybrid.onnx" in first and "hybrid.tflite" in first


def test_every_file_byte_identical(
    two_runs: tuple[dict[str, bytes], dict[str, bytes], list[str]],
) -> None:
    first, second, _ = two_runs
    differ = [name for name in first if first[name] != second.get(name)]
    assert differ == []


def test_no_path_user_host_or_date_in_any_file(
    two_runs: tuple[dict[str, bytes], dict[str, bytes], list[str]],
) -> None:
    first, second, needles = two_runs
    for files in (first, second):
        for name, data in files.items():
            for needle in needles:
                assert needle.encode() not in data, (name, needle)


def test_analyze_report_names_the_model_file_only(
    two_runs: tuple[dict[str, bytes], dict[str, bytes], list[str]],
) -> None:
    first, _, _ = two_runs
    report = json.loads(first["analyze/hybrid_analyze_report.json"])
    assert report["model"] == "hybrid.h5"


def test_file_modes_follow_the_umask(tmp_path: Path) -> None:
    """Staged files and folders are created private (mkstemp, mkdtemp); what lands gets the
    modes an ordinary write would give, not 0600/0700."""
    from bnncube.fsutil import atomic_output_file, write_folder, write_text_files

    mask = os.umask(0o022)
    try:
        write_folder(tmp_path / "folder", {"a.txt": "a", "sub/b.bin": b"b"})
        write_text_files({tmp_path / "c.txt": "c"})
        with atomic_output_file(tmp_path / "d.bin") as tmp:
            tmp.write_bytes(b"d")
    finally:
        os.umask(mask)
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    for name in ("folder/a.txt", "folder/sub/b.bin", "c.txt", "d.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
