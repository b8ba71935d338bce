"""Build the C runtime for the host: a shared library that Python calls through ctypes.

Used by the tests (every kernel against the Python reference, also under ASan and UBSan) and by
``validate --mode host``. Builds are cached by a hash of the sources and flags, so repeated calls
are free. C flags: C99, ``-Wall -Wextra -Werror``, ``-ffp-contract=off`` (no fused multiply-add:
float output transforms must round like the reference on every machine).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bnncube.runtime_c import INCLUDE_DIR, SRC_DIR

WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
BASE_FLAGS = (*WARNINGS, "-O2", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1")


class BuildError(RuntimeError):
    """The C compiler failed; the message holds its output."""


def runtime_sources() -> list[Path]:
    return sorted(SRC_DIR.glob("*.c"))


def _digest(sources: Sequence[Path], flags: Sequence[str], headers: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in [*sources, *headers]:
        h.update(str(path.name).encode())
        h.update(path.read_bytes())
    h.update("\0".join(flags).encode())
    return h.hexdigest()[:16]


def build_host_library(
    build_dir: str | Path,
    *,
    sources: Sequence[Path] | None = None,
    include_dirs: Sequence[Path] = (),
    sanitize: bool = False,
    plain_c: bool = False,
    extra_flags: Sequence[str] = (),
    compiler: str | None = None,
) -> Path:
    """Compile ``sources`` (default: every runtime source) into a shared library; return it.

    ``sanitize`` adds AddressSanitizer and UndefinedBehaviorSanitizer (load the result with
    :func:`load_library`, which needs the ASan runtime preloaded: see ``sanitizer_env``);
    ``plain_c`` defines ``BNN_FORCE_PLAIN_C``.
    """
    cc = compiler or os.environ.get("CC", "gcc")
    sources = list(sources) if sources is not None else runtime_sources()
    incs = [INCLUDE_DIR, *include_dirs]
    headers = sorted({p for d in [*incs, SRC_DIR] for p in Path(d).glob("*.h")})
    flags = list(BASE_FLAGS)
    if sanitize:
        flags += SANITIZE_FLAGS
    if plain_c:
        flags.append("-DBNN_FORCE_PLAIN_C=1")
    flags += list(extra_flags)
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    out = build_dir / f"libbnn_{_digest(sources, flags, headers)}.so"
    if out.exists():
        return out
    cmd = [cc, "-shared", *flags, *[f"-I{d}" for d in incs], *map(str, sources)]
    with tempfile.TemporaryDirectory(dir=build_dir) as tmp:
        tmp_out = Path(tmp) / out.name
        proc = subprocess.run([*cmd, "-o", str(tmp_out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        shutil.move(str(tmp_out), out)
    return out


def sanitizer_runtime(compiler: str | None = None) -> str | None:
    """Path of the compiler's libasan (to LD_PRELOAD into a Python process), if any."""
    cc = compiler or os.environ.get("CC", "gcc")
    proc = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = proc.stdout.strip()
    return path if proc.returncode == 0 and os.path.isabs(path) else None


def load_library(path: str | Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(path))
