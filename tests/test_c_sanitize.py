"""The C kernel tests again, on the runtime built with AddressSanitizer and UBSan.

The files in :data:`TEST_FILES` run in a subprocess whose ``backend`` fixture builds the library
with ``sanitize=True`` (``BNN_C_SANITIZE=1``), with the ASan runtime preloaded into Python
(``LD_PRELOAD``): any out-of-bounds access, use of uninitialised stack, signed overflow, bad
shift or misaligned access in a kernel fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnncube.runtime_c import SRC_DIR
from bnncube.runtime_c.build import build_host_library, sanitizer_runtime

ROOT = Path(__file__).resolve().parent.parent
# test files whose `backend` fixture honours SANITIZE_ENV (add the binary kernels' file here)
TEST_FILES = ("tests/test_c_int8.py", "tests/test_c_binary.py", "tests/test_c_affine.py")
SANITIZE_ENV = "BNN_C_SANITIZE"  # read by the `backend` fixtures of TEST_FILES
SANITIZER_MARKERS = ("runtime error", "AddressSanitizer")


def test_kernels_under_sanitizers(tmp_path: Path) -> None:
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        pytest.skip(f"C compiler {compiler!r} not found: the sanitized C runtime cannot be built")
    runtime = sanitizer_runtime(compiler)
    if runtime is None or not Path(runtime).is_file():
        pytest.skip(f"{compiler} has no libasan (install libasan / gcc's sanitizer runtimes)")
    # build once here, so that a build error is reported as such (the subprocess reuses nothing)
    build_host_library(tmp_path / "build", include_dirs=[SRC_DIR], sanitize=True)
    env = {
        **os.environ,
        "LD_PRELOAD": runtime,
        "ASAN_OPTIONS": "detect_leaks=0",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        SANITIZE_ENV: "1",
    }
    # --capture=sys: a sanitizer writes its report to file descriptor 2 and ends the process;
    # pytest's default fd capture would swallow it
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys",
        "--basetemp", str(tmp_path / "run"), *TEST_FILES,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for marker in SANITIZER_MARKERS:
        assert marker not in output, output[-6000:]
