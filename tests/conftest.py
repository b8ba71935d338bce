"""Shared test setup: legacy Keras before TensorFlow, quiet logs, the zoo models built once."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def hybrid_h5(zoo_dir: Path) -> Path:
    from bnncube.zoo.build import build

    return build("hybrid", zoo_dir / "hybrid.h5", seed=1, log=lambda _: None)


@pytest.fixture(scope="session")
def mnv2_fp_h5(zoo_dir: Path) -> Path:
    from bnncube.zoo.build import build

    return build("mnv2_fp", zoo_dir / "mnv2_fp.h5", seed=1, log=lambda _: None)


@pytest.fixture(scope="session")
def mnv2_i8_tflite(zoo_dir: Path) -> Path:
    from bnncube.zoo.build import build

    return build("mnv2_i8", zoo_dir / "mnv2_i8.tflite", seed=1, calib_count=8, log=lambda _: None)


@pytest.fixture(scope="session")
def m7_runtime(tmp_path_factory: pytest.TempPathFactory):
    """A function ``(plain: bool) -> UnicornBackend`` of the whole C runtime cross-compiled for
    the Cortex-M7 (DSP paths, or ``BNN_FORCE_PLAIN_C``); skips when the ARM toolchain is absent."""
    import shutil

    from bnncube.runtime_c import SRC_DIR
    from bnncube.runtime_c.build import runtime_sources
    from bnncube.validation import emulator as em

    built: dict[bool, object] = {}

    def make(plain: bool = False):
        if shutil.which(em.ARM_GCC) is None:
            pytest.skip(f"{em.ARM_GCC} is not installed (`make setup` installs it as root)")
        if plain not in built:
            out = tmp_path_factory.mktemp("m7_plain" if plain else "m7") / "runtime.elf"
            defines = ("BNN_FORCE_PLAIN_C",) if plain else ()
            elf = em.cross_compile(runtime_sources(), [SRC_DIR], out, defines=defines)
            built[plain] = em.UnicornBackend(elf)
        return built[plain]

    return make
