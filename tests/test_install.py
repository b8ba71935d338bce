"""The package installs as one `bnncube` namespace, from a plain wheel too."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_layout_and_import(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("bnncube-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "bnncube/cli.py",
        "bnncube/converters/ir.py",
        "bnncube/zoo/networks.py",
        "bnncube/validation/__init__.py",
        "bnncube/runtime_c/__init__.py",
    ):
        assert module in names
    tops = {name.split("/")[0] for name in names}
    assert not tops & {"converters", "validation", "zoo", "runtime_c", "plugin"}
    # console script declared
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "bnncube = bnncube.cli:console_main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )
    # install it on its own (dependencies come from this environment) and import it from there
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    code = "import bnncube, bnncube.converters.ir, bnncube.zoo.networks; print(bnncube.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    ).stdout
    assert out.strip().startswith(str(target))


def test_legacy_keras_is_set_before_tensorflow():
    code = "import bnncube, os; print(os.environ['TF_USE_LEGACY_KERAS'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    ).stdout
    assert out.strip() == "1"
