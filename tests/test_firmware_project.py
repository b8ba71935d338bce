"""The project files `generate` writes for the STM32H743 (plugin/firmware.py, docs/firmware.md).

The zoo's hybrid network is generated with ``firmware=True``; ``firmware/`` must build with its
own Makefile for the STM32H743 (weights in flash, activations in AXI SRAM) and for QEMU's
mps2-an500, whose run must exit with 0 and print the FNV-1a checksum of bnncube's reference
output (``run_graph``) on the same built-in input, also with the activations moved to .bss by
``ARENA_SECTION``. ``X-CUBE-AI/App/app_x-cube-ai.c`` compiles on its own under -Werror, and
generation stays byte-reproducible, with the flat file set unchanged.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.converters.ir import Graph  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.reference import run_graph  # noqa: E402
from bnncube.firmware import builtin_input  # noqa: E402
from bnncube.generate import GenerateOptions, generate_code, write_generated  # noqa: E402
from bnncube.validation import emulator as em  # noqa: E402

NM = "arm-none-eabi-nm"

needs_arm_gcc = pytest.mark.skipif(
    shutil.which(em.ARM_GCC) is None or shutil.which("make") is None,
    reason=f"needs {em.ARM_GCC} and make (`make setup` installs them as root)",
)
needs_qemu = pytest.mark.skipif(
    shutil.which(em.ARM_GCC) is None
    or shutil.which(em.QEMU) is None
    or shutil.which("make") is None,
    reason=f"needs {em.ARM_GCC}, {em.QEMU} and make (`make setup` installs them as root)",
)


def _fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) % (1 << 32)
    return h


@pytest.fixture(scope="module")
def graph(hybrid_h5: Path) -> Graph:
    return load_model(hybrid_h5)


@pytest.fixture(scope="module")
def generated(graph: Graph, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fw") / "gen"
    write_generated(generate_code(graph, GenerateOptions(firmware=True)), out)
    return out


@pytest.fixture(scope="module")
def expected_checksum(graph: Graph) -> int:
    t = graph.tensors[graph.inputs[0]]
    x = builtin_input(t.dtype, t.shape)
    # the pattern main.c builds: v = (37 i + 11) mod 256, as v - 128, v or (v - 128) / 128
    v = (np.arange(x.size) * 37 + 11) % 256
    want = {"int8": v - 128, "uint8": v, "float32": (v - 128) / 128.0}[t.dtype]
    assert np.array_equal(x.reshape(-1).astype(np.float64), want)
    (y,) = run_graph(graph, [x]).values()
    y = np.ascontiguousarray(y)
    return _fnv1a(y.astype(y.dtype.newbyteorder("<"), copy=False).tobytes())


def _make(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CFLAGS", "LDFLAGS", "MAKEFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", "-j4", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        env=env,
    )


def _symbol(elf: Path, name: str) -> int:
    proc = subprocess.run([NM, str(elf)], capture_output=True, text=True, check=True)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{elf.name}: no symbol {name}")


def _checksum(output: str) -> int:
    m = re.search(r"^checksum: 0x([0-9a-f]+)$", output, re.M)
    assert m is not None, output
    return int(m.group(1), 16)


def test_flat_files_unchanged_and_reproducible(graph: Graph, tmp_path: Path) -> None:
    plain = generate_code(graph, GenerateOptions())
    full = generate_code(graph, GenerateOptions(firmware=True))
    flat = {n: t for n, t in full.files.items() if "/" not in n}
    assert flat == plain.files  # the flat set is exactly what generate wrote before
    extra = sorted(n for n in full.files if "/" in n)
    for name in (
        "X-CUBE-AI/App/app_x-cube-ai.c",
        "X-CUBE-AI/App/app_x-cube-ai.h",
        "X-CUBE-AI/App/README.txt",
        "firmware/Makefile",
        "firmware/main.c",
        "firmware/startup_m7.c",
        "firmware/stm32h743.ld",
        "firmware/mps2_an500.ld",
    ):
        assert name in extra
    a, b = tmp_path / "a", tmp_path / "b"
    write_generated(full, a)
    write_generated(generate_code(graph, GenerateOptions(firmware=True)), b)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert [str(p) for p in files_a] == sorted(full.files)
    for rel in files_a:
        data = (a / rel).read_bytes()
        assert data == (b / rel).read_bytes(), rel
        assert str(tmp_path).encode() not in data, rel  # no absolute paths
    assert "\t$(CC) $(CFLAGS) -c $< -o $@" in (a / "firmware" / "Makefile").read_text()


@needs_arm_gcc
def test_app_layer_compiles_alone(generated: Path) -> None:
    app = generated / "X-CUBE-AI" / "App"
    flags = [*em.CPU_FLAGS, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-c"]
    for defines in ([], ["-DBNN_APP_CYCLES()=0u", '-DBNN_APP_ACTIVATIONS_SECTION=".bss.x"']):
        proc = subprocess.run(
            [em.ARM_GCC, *flags, *defines, str(app / "app_x-cube-ai.c"), "-I", str(app)]
            + ["-I", str(generated), "-o", os.devnull],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr


@needs_arm_gcc
def test_firmware_builds_for_stm32h743(generated: Path) -> None:
    proc = _make(generated / "firmware")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "-ffp-contract=off" in proc.stdout and "-Werror" in proc.stdout
    assert re.search(r"^\s*text\s+data\s+bss\s+dec\s+hex\s+filename$", proc.stdout, re.M)
    elf = generated / "firmware" / "build" / "network.elf"
    assert elf.is_file()
    assert 0x2400_0000 <= _symbol(elf, "s_activations") < 0x2408_0000  # AXI SRAM
    assert 0x0800_0000 <= _symbol(elf, "s_network_weights_array_u64") < 0x0820_0000  # flash
    assert 0x2000_0000 <= _symbol(elf, "bnn_fw_result") < 0x2002_0000  # DTCM


@needs_qemu
def test_firmware_runs_in_qemu(generated: Path, expected_checksum: int) -> None:
    folder = generated / "firmware"
    runner = em.QemuRunner()
    for build, extra in (("build", []), ("build_bss", ["ARENA_SECTION=.bss.bnn_arena"])):
        proc = _make(folder, "BOARD=mps2_an500", f"BUILD={build}", *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "arm-none-eabi-size" in proc.stdout
        elf = folder / build / "network_mps2_an500.elf"
        arena = _symbol(elf, "s_activations")
        if extra:
            assert 0x2000_0000 <= arena < 0x2040_0000  # .bss
        else:
            assert 0x6000_0000 <= arena < 0x6100_0000  # PSRAM, the board's .arena region
        output = runner.run_checked(elf, timeout_s=30)
        assert "model: network\n" in output
        assert re.search(r"^cycles: \d+$", output, re.M), output
        assert _checksum(output) == expected_checksum, output


@needs_qemu
def test_firmware_other_name_io_outside_activations(
    graph: Graph, expected_checksum: int, tmp_path: Path
) -> None:
    """`-n mynet --no-inputs-allocation --no-outputs-allocation`: the application layer gives
    the I/O buffers (in the arena section, so the STM32H743 link still fits DTCM)."""
    options = GenerateOptions(
        c_name="mynet", firmware=True, inputs_allocation=False, outputs_allocation=False
    )
    out = tmp_path / "gen"
    write_generated(generate_code(graph, options), out)
    for board in ("stm32h743", "mps2_an500"):
        proc = _make(out / "firmware", f"BOARD={board}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "firmware" / "build" / "mynet.elf").is_file()
    output = em.QemuRunner().run_checked(out / "firmware" / "build" / "mynet_mps2_an500.elf")
    assert "model: mynet\n" in output
    assert _checksum(output) == expected_checksum, output
