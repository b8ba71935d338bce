"""The emulated Cortex-M7 (bnncube.validation.emulator): ABI, exact counts, faults, QEMU parity.

Most tests run the small functions of tests/c_fixtures/emu_fixtures.c; the last ones make one
smoke call of real kernels once their sources exist. Tests that need ``arm-none-eabi-gcc`` or
``qemu-system-arm`` are skipped, with the reason, when those are not installed (``make setup``).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest

from bnncube.runtime_c import SRC_DIR
from bnncube.runtime_c.build import build_host_library
from bnncube.runtime_c.cabi import (
    F32,
    OUT_AFFINE,
    OUT_TFLITE,
    STRUCTS,
    HostBackend,
    Struct,
    dims,
)
from bnncube.validation import emulator as em

FIXTURES = Path(__file__).parent / "c_fixtures" / "emu_fixtures.c"

needs_gcc = pytest.mark.skipif(
    not em.toolchain_available(),
    reason="arm-none-eabi-gcc is not installed (make setup installs gcc-arm-none-eabi)",
)
needs_qemu = pytest.mark.skipif(
    not (em.toolchain_available() and em.qemu_available()),
    reason="arm-none-eabi-gcc or qemu-system-arm is not installed (make setup installs them)",
)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator")


@pytest.fixture(scope="module")
def fx_elf(build_dir: Path) -> Path:
    return em.cross_compile([FIXTURES], [], build_dir / "fixtures.elf")


@pytest.fixture(scope="module")
def uc(fx_elf: Path) -> em.UnicornBackend:
    return em.UnicornBackend(fx_elf)


@pytest.fixture(scope="module")
def host(build_dir: Path) -> HostBackend:
    return HostBackend(build_host_library(build_dir / "host", sources=[FIXTURES]))


@pytest.fixture(scope="module")
def qemu() -> em.QemuRunner:
    return em.QemuRunner()


def f32(x: float) -> float:
    return float(np.float32(x))


# --------------------------------------------------------------------------------------------
# no toolchain needed
# --------------------------------------------------------------------------------------------


def test_arm_layout_rules() -> None:
    add = em.arm_struct_layout("bnn_add_params_t")
    assert add.offsets["affine_offset"] == 56  # int64 after 14 int32: padded to 8
    assert (add.size, add.align) == (72, 8)
    out = em.arm_struct_layout("bnn_output_t")
    assert out.offsets["bias"] == 4 and out.size == 4 * len(STRUCTS["bnn_output_t"])
    packed = em.pack_struct(Struct("bnn_add_params_t", affine_offset=-2, act_max=127), {})
    assert struct.unpack_from("<q", packed, 56)[0] == -2
    assert struct.unpack_from("<i", packed, 68)[0] == 127


def test_case_source_is_generated_without_toolchain() -> None:
    out = np.zeros(3, np.int32)
    text = em.write_case_source(
        "fx_output",
        [Struct("bnn_output_t", kind=1, bias=np.array([1, 2], np.int32)), 1, out],
        {2: np.array([2, 0, 0], np.int32)},
    )
    assert "int32_t fx_output(const void *, int32_t, void *);" in text
    assert "s0[1] = (uint32_t)(uintptr_t)a0_bias; /* .bias */" in text
    assert 'check("a2", a2, a2_expected, 12u, 4u, 1);' in text


def test_missing_toolchain_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(em, "ARM_GCC", "arm-none-eabi-gcc-that-does-not-exist")
    with pytest.raises(em.ToolchainError, match="not found on PATH.*apt-get install"):
        em.cross_compile([FIXTURES], [], tmp_path / "x.elf")


# --------------------------------------------------------------------------------------------
# build, layout, calling convention
# --------------------------------------------------------------------------------------------


def _c_field(ctype: str, name: str) -> str:
    """cabi flattens C arrays (affine_mult[2] -> affine_mult0, affine_mult1)."""
    names = [n for n, _ in STRUCTS[ctype]]
    base = name.rstrip("0123456789")
    if base != name and base not in names and sum(n.startswith(base) for n in names) > 1:
        return f"{base}[{name[len(base) :]}]"
    return name


@needs_gcc
def test_struct_layouts_match_arm_gcc(build_dir: Path) -> None:
    entries: list[tuple[str, str, str]] = []  # (ctype, field or "", C expression)
    for ctype, fields in STRUCTS.items():
        entries.append((ctype, "", f"sizeof({ctype})"))
        for name, _ in fields:
            entries.append((ctype, name, f"offsetof({ctype}, {_c_field(ctype, name)})"))
    entries.append(("", "enum", "sizeof(bnn_out_kind_t)"))
    src = build_dir / "layout.c"
    src.write_text(
        '#include <stddef.h>\n#include <stdint.h>\n#include "bnn_kernels.h"\n'
        "const int32_t bnn_layout[] = {\n"
        + "".join(f"    (int32_t){expr},\n" for _, _, expr in entries)
        + "};\n"
    )
    elf = em.cross_compile([src], [], build_dir / "layout.elf")
    data = em.ElfImage.load(elf).read_symbol("bnn_layout")
    values = struct.unpack(f"<{len(entries)}i", data)
    for (ctype, name, expr), value in zip(entries, values, strict=True):
        if not ctype:
            # arm-none-eabi-gcc uses short enums (AAPCS "variable-size enums"): 1 byte here,
            # 4 on the host. Every enum field of the cabi structs is followed by a 4-aligned
            # field and is written as 4 little-endian bytes, so the layouts agree either way.
            assert value in (1, 4)
            continue
        layout = em.arm_struct_layout(ctype)
        ours = layout.size if not name else layout.offsets[name]
        assert ours == value, f"{expr}: gcc says {value}, emulator.py says {ours}"


@needs_gcc
def test_build_is_cached(build_dir: Path, fx_elf: Path) -> None:
    mtime = fx_elf.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert em.cross_compile([FIXTURES], [], build_dir / "fixtures.elf") == fx_elf
    assert time.perf_counter() - t0 < 0.5
    assert fx_elf.stat().st_mtime_ns == mtime
    assert fx_elf.with_suffix(".map").exists()


@needs_gcc
@pytest.mark.parametrize("board", ["stm32h743", "mps2_an500"])
def test_firmware_vector_table(build_dir: Path, board: str) -> None:
    main = build_dir / f"main_{board}.c"
    main.write_text(
        "#include <stdint.h>\nint32_t fx_add(int32_t a, int32_t b);\n"
        "volatile int32_t fx_data = 0x12345678;\n"
        "int main(void);\nint main(void) { return fx_add(fx_data, 2); }\n"
    )
    elf = em.cross_compile([main, FIXTURES], [], build_dir / f"main_{board}.elf", board=board)
    image = em.ElfImage.load(elf)
    flash = em.BOARDS[board].memory_map[0].base
    sp, reset, nmi, hardfault = struct.unpack("<4I", image.read(flash, 16))
    assert sp == image.symbols["_estack"] and sp % 8 == 0
    assert reset == image.symbols["Reset_Handler"] | 1
    assert nmi == hardfault == image.symbols["bnn_fault_entry"] | 1
    assert "fx_udf" not in image.functions  # --gc-sections with an entry function

    # run the reset handler up to main in Unicorn, with the System Control Space as plain RAM
    from unicorn.arm_const import UC_ARM_REG_SP

    uc = em.UnicornBackend(elf, memory_map=board)
    uc.uc.mem_map(0xE000E000, 0x1000)
    uc.write(image.symbols["_sbss"], b"\xff" * 8)  # garbage that the startup must clear
    uc.write(image.symbols["fx_data"], bytes(4))  # and .data it must copy from flash
    uc.uc.reg_write(UC_ARM_REG_SP, sp)
    uc.uc.emu_start(reset, image.functions["main"][0], count=100_000)
    cpacr, vtor, ccr = (
        int.from_bytes(uc.read(a, 4), "little") for a in (0xE000ED88, 0xE000ED08, 0xE000ED14)
    )
    assert cpacr == 0xF << 20 and vtor == flash
    assert ccr == (0x3 << 16 if board == "stm32h743" else 0)  # I and D caches: real chip only
    assert uc.read(image.symbols["_sbss"], 8) == bytes(8)
    assert uc.read(image.symbols["fx_data"], 4) == (0x12345678).to_bytes(4, "little")


@needs_gcc
def test_int_and_array_arguments(uc: em.UnicornBackend, host: HostBackend) -> None:
    assert uc.call("fx_add", 3, 4) == 7
    assert uc.call("fx_add", -5, 2) == -3
    assert uc.call("fx_add", 0x7FFF_FFFF, 1) == -(1 << 31)  # int32 wrap-around, like the host
    x = np.random.default_rng(0).integers(-128, 128, 1001).astype(np.int8)
    assert uc.call("fx_sum_i8", x.size, x) == int(x.astype(np.int64).sum())
    assert uc.call("fx_sum_i8", 0, np.zeros(0, np.int8)) == 0
    for backend in (uc, host):
        assert backend.call("fx_many_args", 1, 2, 3, 4, 5, 6, 7) == 140  # 3 on the stack


@needs_gcc
def test_float_arguments_and_outputs(uc: em.UnicornBackend, host: HostBackend) -> None:
    x = np.random.default_rng(1).standard_normal(37).astype(np.float32)
    scale, offset = f32(0.37), f32(-1.25)
    want = (x * np.float32(scale)) + np.float32(offset)  # two roundings: no FMA on either side
    for backend in (uc, host):
        out = np.zeros_like(x)
        assert backend.call("fx_scale_f32", x.size, x, F32(scale), F32(offset), out) == x.size
        assert out.tobytes() == want.tobytes(), backend.name


@needs_gcc
def test_mixed_core_and_vfp_arguments(uc: em.UnicornBackend, host: HostBackend) -> None:
    p = np.array([3, 5, 7], np.int32)
    # a=2 -> r0, x -> s0, p -> r1, y -> s1, b c -> r2 r3, d -> stack, z -> s2, e -> stack
    args = (2, F32(1.5), p, F32(0.25), 4, 6, 8, F32(3.0), 10)
    assert uc.call("fx_mixed", *args) == host.call("fx_mixed", *args) == 1789
    # 18 floats: s0-s15 then the stack (in argument order with the core overflow)
    floats = [F32(float(i)) for i in range(17)]
    want = sum((i + 1) * i for i in range(16)) + 2 * 0 + 1000 * 16 + 100000 * 3 + 5
    args2 = (*floats, 5, F32(3.0))
    assert uc.call("fx_floats_on_stack", *args2) == host.call("fx_floats_on_stack", *args2)
    assert uc.call("fx_floats_on_stack", *args2) == want


@needs_gcc
def test_struct_arguments(uc: em.UnicornBackend, host: HostBackend) -> None:
    assert uc.call("fx_dims_volume", dims(1, 4, 5, 6)) == 120
    params = Struct(
        "bnn_add_params_t",
        kind=OUT_AFFINE,
        affine_mult0=-70000,
        affine_mult1=90000,
        affine_offset=-(1 << 40) + 3,
        act_min=-128,
        act_max=127,
        out_zero_point=5,
    )
    for backend in (uc, host):
        out = np.zeros(2, np.int64)
        assert backend.call("fx_add_params", params, out) == -128 + 127 + OUT_AFFINE + 5
        assert out.tolist() == [-(1 << 40) + 3, -70000 * 90000]
    output = Struct(
        "bnn_output_t",
        kind=OUT_TFLITE,
        bias=np.array([10, -20, 30], np.int32),
        a_offset=np.array([1 << 33, 7, -9], np.int64),
        f_scale=np.array([0.5, 1.25, 2.0], np.float32),
        act_max=100,
    )
    for backend in (uc, host):
        res = np.zeros(4, np.int32)
        assert backend.call("fx_output", output, 1, res) == OUT_TFLITE + 100
        assert res.tolist() == [-20, 7, 5, 99]  # t_direction is NULL
    assert uc.call("fx_output", Struct("bnn_output_t"), 0, np.zeros(4, np.int32)) == -1
    # an array inside a struct is an output too: it is copied back
    buf = np.zeros(10, np.uint8)
    assert uc.call("fx_context", Struct("bnn_context_t", buf=buf, size=10)) == 10
    assert buf.tolist() == [(3 * i) % 256 for i in range(10)]


# --------------------------------------------------------------------------------------------
# instruction counts
# --------------------------------------------------------------------------------------------


@needs_gcc
def test_instruction_count_is_exact_and_linear(uc: em.UnicornBackend) -> None:
    counts = {}
    for n in (0, 1, 2, 10, 100, 1000):
        uc.call("fx_loop", n)
        counts[n] = uc.last_instructions
        uc.call("fx_loop", n)
        assert uc.last_instructions == counts[n], "not deterministic"
    a = counts[2] - counts[1]
    b = counts[1] - a
    assert a > 0 and b > 0
    for n in (1, 2, 10, 100, 1000):
        assert counts[n] == a * n + b, (n, counts)
    # arm-none-eabi-gcc 12.2 -O2: 6 instructions per iteration, 8 around the loop
    print(f"fx_loop(n) = {a} n + {b} instructions; fx_loop(0) = {counts[0]}")


@needs_gcc
def test_block_hook_count_equals_per_instruction_count(fx_elf: Path) -> None:
    from unicorn import UC_HOOK_CODE

    # a fresh backend: Unicorn instruments code when it translates it, so a hook added after a
    # block was translated never sees that block
    uc = em.UnicornBackend(fx_elf)
    seen: list[int] = []
    handle = uc.uc.hook_add(UC_HOOK_CODE, lambda _uc, addr, size, _u: seen.append(addr))
    try:
        x = np.linspace(-2, 2, 33).astype(np.float32)
        calls = [
            ("fx_scale_f32", (x.size, x, F32(1.5), F32(0.5), np.zeros_like(x))),
            (
                "fx_mixed",
                (2, F32(1.5), np.array([3, 5, 7], np.int32), F32(0.25), 4, 6, 8, F32(3.0), 10),
            ),
            ("fx_layer_a", (17,)),
        ]
        for fn, args in calls:  # (none of these has an IT block)
            seen.clear()
            uc.call(fn, *args)
            assert uc.last_instructions == len(seen), fn
        # an instruction of an IT block whose condition fails is issued (counted by the block
        # hook and by QEMU's plugin) but Unicorn's code hook does not see it:
        # fx_stack_use's `it ge; movge` skips the movge when n < 1024
        for n, skipped in ((10, 1), (2000, 0)):
            seen.clear()
            uc.call("fx_stack_use", n)
            assert uc.last_instructions == len(seen) + skipped
    finally:
        uc.uc.hook_del(handle)


@needs_gcc
def test_profile_per_function(uc: em.UnicornBackend) -> None:
    uc.call("fx_loop", 10)
    c10 = uc.last_instructions
    uc.call("fx_loop", 20)
    c20 = uc.last_instructions
    uc.call("fx_layer_a", 10, profile=True)
    assert uc.last_profile["fx_loop"] == c10 + c20
    assert sum(uc.last_profile.values()) == uc.last_instructions
    assert set(uc.last_profile) == {"fx_loop", "fx_layer_a"}


@needs_gcc
def test_python_hook_counts_the_same(fx_elf: Path, uc: em.UnicornBackend) -> None:
    py = em.UnicornBackend(fx_elf, hook="python")
    assert py.hook_kind == "python"
    for n in (0, 5, 300):
        uc.call("fx_layer_a", n)
        assert py.call("fx_layer_a", n) == uc.call("fx_layer_a", n)
        assert py.last_instructions == uc.last_instructions


# --------------------------------------------------------------------------------------------
# faults, timeouts, stack
# --------------------------------------------------------------------------------------------


@needs_gcc
def test_endless_loop_hits_the_instruction_budget(uc: em.UnicornBackend) -> None:
    t0 = time.perf_counter()
    with pytest.raises(em.EmulatorError, match="fx_forever: instruction budget") as err:
        uc.call("fx_forever", 1, instruction_budget=2_000_000)
    assert time.perf_counter() - t0 < 5
    assert err.value.kind == "budget" and err.value.function == "fx_forever"
    assert err.value.symbol is not None and err.value.symbol.startswith("fx_forever")
    assert 2_000_000 < (err.value.instructions or 0) < 2_000_100


@needs_gcc
def test_endless_loop_hits_the_wall_clock_timeout(uc: em.UnicornBackend) -> None:
    t0 = time.perf_counter()
    with pytest.raises(em.EmulatorError, match="fx_forever: wall-clock timeout") as err:
        uc.call("fx_forever", 1, instruction_budget=0, timeout_s=0.3)
    assert time.perf_counter() - t0 < 5
    assert err.value.kind == "timeout"
    assert uc.call("fx_add", 1, 2) == 3  # still usable


@needs_gcc
def test_faults_name_pc_symbol_and_kind(uc: em.UnicornBackend) -> None:
    udf = uc.image.functions["fx_udf"][0]
    with pytest.raises(em.EmulatorError, match="undefined instruction") as err:
        uc.call("fx_udf", 1)
    assert err.value.pc == udf and err.value.symbol == "fx_udf"
    with pytest.raises(em.EmulatorError, match="read from unmapped memory at address 0xe0100004"):
        uc.call("fx_null_read", 4)
    assert uc.call("fx_add", 2, 2) == 4  # still usable after a fault


@needs_gcc
def test_stack_high_water_mark(uc: em.UnicornBackend) -> None:
    uc.call("fx_add", 1, 2)
    assert uc.last_stack_bytes == 0  # a leaf that keeps everything in registers
    uc.call("fx_loop", 3)
    assert 4 <= uc.last_stack_bytes <= 16  # its one volatile local
    uc.call("fx_stack_use", 1000)
    assert 4096 <= uc.last_stack_bytes <= 4096 + 64
    uc.call("fx_many_args", 1, 2, 3, 4, 5, 6, 7)  # stack arguments are the caller's, not counted
    assert uc.last_stack_bytes <= 16


@needs_gcc
def test_stack_overflow_faults_on_the_stm32_map(build_dir: Path) -> None:
    elf = em.cross_compile([FIXTURES], [], build_dir / "small_stack.elf", stack_size=1024)
    small = em.UnicornBackend(elf)
    assert small.stack_top - small.stack_bottom == 1024
    with pytest.raises(em.EmulatorError, match="write to unmapped memory at address 0x1fff"):
        small.call("fx_stack_use", 1000)


@needs_gcc
def test_misaligned_ldrd_is_silent_in_unicorn(uc: em.UnicornBackend) -> None:
    buf = np.arange(16, dtype=np.uint8)
    out = np.zeros(2, np.uint32)
    assert uc.call("fx_misaligned_ldrd", buf, out) == 0
    assert out.tolist() == [0x04030201, 0x08070605]


# --------------------------------------------------------------------------------------------
# QEMU
# --------------------------------------------------------------------------------------------


@needs_qemu
def test_same_case_in_qemu_passes_and_reports_a_mismatch(
    build_dir: Path, uc: em.UnicornBackend, qemu: em.QemuRunner
) -> None:
    x = np.random.default_rng(2).standard_normal(50).astype(np.float32)
    args = [x.size, x, F32(0.75), F32(0.125), np.zeros_like(x)]
    uc_out = np.zeros_like(x)
    uc.call("fx_scale_f32", *args[:4], uc_out)
    want = x * np.float32(0.75) + np.float32(0.125)
    assert uc_out.tobytes() == want.tobytes()
    elf = em.build_case_firmware(
        "fx_scale_f32",
        args,
        {4: want},
        sources=[FIXTURES],
        out_dir=build_dir,
        expected_status=x.size,
    )
    assert "BNN_CASE PASS" in qemu.run_checked(elf, timeout_s=20)

    wrong = want.copy()
    wrong[7] += 1
    elf = em.build_case_firmware(
        "fx_scale_f32",
        args,
        {4: wrong},
        sources=[FIXTURES],
        out_dir=build_dir,
        expected_status=x.size,
    )
    status, output = qemu.run(elf, timeout_s=20)
    assert status == 1
    assert "BNN_MISMATCH a4[7]" in output and "1 of 50 elements differ" in output

    params = Struct(
        "bnn_add_params_t",
        kind=OUT_AFFINE,
        affine_mult0=-70000,
        affine_mult1=90000,
        affine_offset=-(1 << 40) + 3,
        act_min=-128,
        act_max=127,
        out_zero_point=5,
    )
    out = np.zeros(2, np.int64)
    elf = em.build_case_firmware(
        "fx_add_params",
        [params, out],
        {1: np.array([-(1 << 40) + 3, -70000 * 90000])},
        sources=[FIXTURES],
        out_dir=build_dir,
        expected_status=-128 + 127 + OUT_AFFINE + 5,
    )
    qemu.run_checked(elf, timeout_s=20)
    buf = np.zeros(10, np.uint8)
    elf = em.build_case_firmware(
        "fx_context",
        [Struct("bnn_context_t", buf=buf, size=10)],
        {(0, "buf"): (3 * np.arange(10)).astype(np.uint8)},
        sources=[FIXTURES],
        out_dir=build_dir,
        expected_status=10,
    )
    qemu.run_checked(elf, timeout_s=20)


@needs_qemu
def test_misaligned_ldrd_faults_in_qemu(build_dir: Path, qemu: em.QemuRunner) -> None:
    buf = np.arange(16, dtype=np.uint8)
    elf = em.build_case_firmware(
        "fx_misaligned_ldrd",
        [buf, np.zeros(2, np.uint32)],
        {},
        sources=[FIXTURES],
        out_dir=build_dir,
    )
    status, output = qemu.run(elf, timeout_s=20)
    assert status == em.EXIT_FAULT
    fault = em.parse_fault(output, elf)
    assert fault is not None and fault.cfsr & (1 << 24)  # UsageFault UNALIGNED
    assert "unaligned access" in output
    with pytest.raises(em.EmulatorError) as err:
        qemu.run_checked(elf, timeout_s=20)
    assert err.value.kind == "hardfault"
    assert err.value.symbol is not None and err.value.symbol.startswith("fx_misaligned_ldrd")
    ldrd = em.ElfImage.load(elf).functions["fx_misaligned_ldrd"][0]
    assert err.value.pc is not None and ldrd <= err.value.pc < ldrd + 8


@needs_qemu
def test_qemu_hardfaults_and_timeout(build_dir: Path, qemu: em.QemuRunner) -> None:
    elf = em.build_case_firmware("fx_udf", [1], {}, sources=[FIXTURES], out_dir=build_dir)
    with pytest.raises(em.EmulatorError, match="undefined instruction") as err:
        qemu.run_checked(elf, timeout_s=20)
    assert err.value.symbol == "fx_udf"
    elf = em.build_case_firmware("fx_null_read", [0], {}, sources=[FIXTURES], out_dir=build_dir)
    with pytest.raises(em.EmulatorError, match="BusFault") as err:
        qemu.run_checked(elf, timeout_s=20)
    assert err.value.symbol is not None and err.value.symbol.startswith("fx_null_read")
    elf = em.build_case_firmware("fx_forever", [1], {}, sources=[FIXTURES], out_dir=build_dir)
    t0 = time.perf_counter()
    with pytest.raises(em.EmulatorError, match="did not finish within 1 s") as err:
        qemu.run(elf, timeout_s=1)
    assert err.value.kind == "timeout" and time.perf_counter() - t0 < 10


@needs_qemu
def test_qemu_plugin_counts_like_unicorn(
    build_dir: Path, uc: em.UnicornBackend, qemu: em.QemuRunner
) -> None:
    if not qemu.supports_plugins():
        pytest.skip("this qemu-system-arm was built without TCG plugin support")
    elf = em.build_case_firmware(
        "fx_loop", [100], {}, sources=[FIXTURES], out_dir=build_dir, expected_status=4950
    )
    status, output = qemu.run(elf, timeout_s=20, count="fx_loop")
    assert status == 0, output
    uc.call("fx_loop", 100)
    assert qemu.last_function_instructions == uc.last_instructions
    assert qemu.last_instructions is not None and qemu.last_instructions > uc.last_instructions


# --------------------------------------------------------------------------------------------
# smoke calls of the real kernels (once their sources exist)
# --------------------------------------------------------------------------------------------


def _kernel(build_dir: Path, source: str) -> tuple[em.UnicornBackend, HostBackend, Path]:
    """Unicorn and host backends of one kernel source (alone: others may be work in progress)."""
    path = SRC_DIR / source
    if not path.exists():
        pytest.skip(f"runtime_c/src/{source} not written yet")
    stem = path.stem
    elf = em.cross_compile([path], [], build_dir / f"{stem}.elf")
    host = HostBackend(build_host_library(build_dir / f"host_{stem}", sources=[path]))
    return em.UnicornBackend(elf), host, path


@needs_qemu
def test_kernel_bitpack_smoke(build_dir: Path, qemu: em.QemuRunner) -> None:
    uc, host, source = _kernel(build_dir, "bnn_bitpack.c")
    rows, channels, zp = 3, 70, -3
    x = np.random.default_rng(3).integers(-128, 128, (rows, channels)).astype(np.int8)
    words = (channels + 31) // 32
    bits = np.zeros((rows, words * 32), np.uint64)
    bits[:, :channels] = x < zp
    want = (bits.reshape(rows, words, 32) << np.arange(32, dtype=np.uint64)).sum(axis=2)
    want = want.astype(np.uint32)
    for backend in (uc, host):
        out = np.zeros((rows, words), np.uint32)
        assert backend.call("bnn_bitpack_s8", rows, channels, zp, x, out) == 0
        assert np.array_equal(out, want), backend.name
    print(f"bnn_bitpack_s8 {rows}x{channels}: {uc.last_instructions} instructions")
    args = [rows, channels, zp, x, np.zeros((rows, words), np.uint32)]
    elf = em.build_case_firmware(
        "bnn_bitpack_s8", args, {4: want}, sources=[source], out_dir=build_dir
    )
    qemu.run_checked(elf, timeout_s=20)


@needs_qemu
def test_kernel_conv2d_s8_smoke(build_dir: Path, qemu: em.QemuRunner) -> None:
    uc, host, source = _kernel(build_dir, "bnn_conv2d_s8.c")
    rng = np.random.default_rng(4)
    h, w, c, o, k = 6, 5, 8, 4, 3
    in_d, f_d, o_d = dims(1, h, w, c), dims(o, k, k, c), dims(1, h, w, o)
    x = rng.integers(-128, 128, (h, w, c)).astype(np.int8)
    f = rng.integers(-127, 128, (o, k, k, c)).astype(np.int8)
    params = Struct(
        "bnn_conv_params_t",
        stride_h=1,
        stride_w=1,
        dilation_h=1,
        dilation_w=1,
        pad_top=1,
        pad_left=1,
        input_zero_point=-5,
    )
    output = Struct(
        "bnn_output_t",
        kind=OUT_TFLITE,
        bias=rng.integers(-500, 500, o).astype(np.int32),
        q_mult=np.full(o, 1 << 30, np.int32),
        q_shift=np.full(o, -8, np.int32),
        out_zero_point=3,
        act_min=-128,
        act_max=127,
    )
    results = []
    for backend in (uc, host):
        scratch = max(backend.call("bnn_conv2d_s8_scratch_size", in_d, f_d, o_d), 1)
        ctx = Struct("bnn_context_t", buf=np.zeros(scratch, np.uint8), size=scratch)
        y = np.zeros((h, w, o), np.int8)
        assert backend.call("bnn_conv2d_s8", ctx, params, output, in_d, x, f_d, f, o_d, y) == 0
        results.append(y)
    assert np.array_equal(results[0], results[1])
    assert len(np.unique(results[0])) > 10  # not saturated: the case means something
    print(
        f"bnn_conv2d_s8 {h}x{w}x{c}->{o} k{k}: {uc.last_instructions} instructions, "
        f"stack {uc.last_stack_bytes} bytes"
    )
    uc_count = uc.last_instructions
    # QEMU's plugin counts the blocks inside the named function only (not its callees): compare
    # with Unicorn's per-function profile of the same call
    ctx = Struct("bnn_context_t", buf=np.zeros(1, np.uint8), size=1)
    y = np.zeros((h, w, o), np.int8)
    # (the transform's own entry point: bnn_conv2d_s8 itself only dispatches to it)
    uc.call("bnn_conv2d_s8_tflite", ctx, params, output, in_d, x, f_d, f, o_d, y, profile=True)
    assert np.array_equal(y, results[0])
    assert uc_count - 20 < uc.last_instructions < uc_count  # less the dispatch
    # the Cortex-M7 paths run in a function of their own per transform (bnn_conv_dsp_tflite)
    uc_in_function = uc.last_profile["bnn_conv_dsp_tflite"]
    assert uc_in_function > uc.last_instructions // 2  # the work is in that function
    scratch = max(uc.call("bnn_conv2d_s8_scratch_size", in_d, f_d, o_d), 1)
    ctx = Struct("bnn_context_t", buf=np.zeros(scratch, np.uint8), size=scratch)
    args = [ctx, params, output, in_d, x, f_d, f, o_d, np.zeros((h, w, o), np.int8)]
    elf = em.build_case_firmware(
        "bnn_conv2d_s8_tflite", args, {8: results[0]}, sources=[source], out_dir=build_dir
    )
    qemu.run_checked(elf, timeout_s=30)
    if qemu.supports_plugins():  # the same count in QEMU (IT blocks included)
        status, output = qemu.run(elf, timeout_s=30, count="bnn_conv_dsp_tflite")
        assert status == 0, output
        assert qemu.last_function_instructions == uc_in_function
