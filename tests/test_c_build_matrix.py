"""The C runtime compiles, warning-free, under the optimization levels and cores a user may pick.

The Cortex-M7 paths hold inline assembly with up to 13 registers, some of them fixed (the LDM
lists). Whether GCC finds registers for it depends on the optimization level and on the frame
pointer: with `-fno-omit-frame-pointer` r7 is taken, and during issue 8 one register list
compiled at -O2 but failed ("'asm' operand has impossible constraints") at -Og with a frame
pointer. So every
runtime source is compiled here at -O0, -Og, -O1, -O2, -O3 and -Os, with and without a frame
pointer, for the Cortex-M7 (the DSP paths and the assembly), and at -O2 for the Cortex-M4, M33
and M55 and a soft-float M7. Compilation only: the tests of test_c_*.py run the code.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bnncube.runtime_c import SRC_DIR
from bnncube.runtime_c.build import runtime_sources
from bnncube.validation import emulator as em

M7 = list(em.CPU_FLAGS)
OPT_LEVELS = ["-O0", "-Og", "-O1", "-O2", "-O3", "-Os"]
OTHER_CORES = {
    "m4": ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"],
    "m33": ["-mcpu=cortex-m33", "-mthumb"],
    "m55": ["-mcpu=cortex-m55", "-mthumb"],
    "m7-soft": ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=soft"],
}

CONFIGS: dict[str, list[str]] = {}
for _opt in OPT_LEVELS:
    CONFIGS[f"m7{_opt}"] = [*M7, _opt]
    CONFIGS[f"m7{_opt}-fp"] = [*M7, _opt, "-fno-omit-frame-pointer"]
for _core, _flags in OTHER_CORES.items():
    CONFIGS[f"{_core}-O2"] = [*_flags, "-O2"]
    CONFIGS[f"{_core}-O2-fp"] = [*_flags, "-O2", "-fno-omit-frame-pointer"]


def _compile(flags: list[str], source: Path, out: Path) -> tuple[Path, int, str]:
    cmd = [
        em.ARM_GCC,
        *flags,
        *em.C_FLAGS,
        "-I",
        str(em.INCLUDE_DIR),
        "-I",
        str(SRC_DIR),
        "-c",
        str(source),
        "-o",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return source, run.returncode, run.stderr


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_runtime_compiles(config: str, tmp_path: Path) -> None:
    if shutil.which(em.ARM_GCC) is None:
        pytest.skip(f"{em.ARM_GCC} is not installed (`make setup` installs it as root)")
    sources = runtime_sources()
    assert len(sources) >= 9
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(
            pool.map(lambda s: _compile(CONFIGS[config], s, tmp_path / f"{s.stem}.o"), sources)
        )
    failed = [f"{src.name}: {err.strip()[-600:]}" for src, rc, err in results if rc != 0]
    assert not failed, f"{config}: " + "\n".join(failed)
    assert all((tmp_path / f"{s.stem}.o").stat().st_size > 0 for s in sources)
