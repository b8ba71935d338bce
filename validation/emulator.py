"""Run C code on an emulated Cortex-M7: Unicorn (exact instruction counts) and QEMU (faults).

Three pieces, described in ``docs/emulator.md``:

* :func:`cross_compile` builds a firmware ELF with ``arm-none-eabi-gcc`` for one of the
  :data:`BOARDS` (``unicorn``: the STM32H743 memory map, functions called one by one;
  ``stm32h743``: the real chip; ``mps2_an500``: QEMU's Cortex-M7 board, with semihosting);
* :class:`UnicornBackend` loads such an ELF into Unicorn and calls its functions with the
  calling convention of :mod:`bnncube.runtime_c.cabi` (the same ``call(function, *args)`` as the
  host backend), counts the instructions executed (exactly, with a block hook written in C),
  profiles them per function, measures the stack used and turns faults and endless loops into
  :class:`EmulatorError`;
* :class:`QemuRunner` runs a whole firmware in ``qemu-system-arm -M mps2-an500 -cpu cortex-m7``,
  which faults like the chip (misaligned LDRD/LDM, ...); :func:`build_case_firmware` turns one
  kernel call plus its expected outputs into such a firmware that checks itself.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.runtime_c import INCLUDE_DIR, ROOT
from bnncube.runtime_c.build import BuildError
from bnncube.runtime_c.cabi import F32, POINTERS, STRUCTS, Struct

TARGET_DIR = ROOT / "target"
ARM_GCC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"

# DESIGN.md section 7, plus the runtime's own C flags
CPU_FLAGS = ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard")
C_FLAGS = (
    "-ffunction-sections",
    "-fdata-sections",
    "-ffp-contract=off",
    "-std=c99",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-g",
)
LINK_FLAGS = ("-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs")
LINK_LIBS = ("-lgcc", "-lc")

EXIT_FAULT = 3  # BNN_EXIT_FAULT of runtime_c/target/bnn_target.h
STACK_PATTERN = 0xA5C3_5A3C  # fills the stack before a call, to find the high-water mark


class EmulatorError(RuntimeError):
    """A call or a firmware run ended abnormally (fault, timeout, instruction budget)."""

    def __init__(
        self,
        message: str,
        *,
        function: str | None = None,
        kind: str | None = None,
        pc: int | None = None,
        symbol: str | None = None,
        instructions: int | None = None,
    ) -> None:
        super().__init__(message)
        self.function = function
        self.kind = kind
        self.pc = pc
        self.symbol = symbol
        self.instructions = instructions


class ToolchainError(RuntimeError):
    """``arm-none-eabi-gcc`` or ``qemu-system-arm`` is not installed."""


# --------------------------------------------------------------------------------------------
# boards and memory maps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    name: str
    base: int
    size: int
    executable: bool = False

    @property
    def end(self) -> int:
        return self.base + self.size


STM32H743_MAP = (
    Region("flash", 0x0800_0000, 2 << 20, executable=True),
    Region("dtcm", 0x2000_0000, 128 << 10),
    Region("axisram", 0x2400_0000, 512 << 10),
)
MPS2_AN500_MAP = (
    Region("ssram1", 0x0000_0000, 4 << 20, executable=True),
    Region("ssram23", 0x2000_0000, 4 << 20),
    Region("psram", 0x6000_0000, 16 << 20),
)
MEMORY_MAPS: dict[str, tuple[Region, ...]] = {
    "stm32h743": STM32H743_MAP,
    "unicorn": STM32H743_MAP,
    "mps2_an500": MPS2_AN500_MAP,
}


@dataclass(frozen=True)
class Board:
    name: str
    linker_script: Path
    memory_map: tuple[Region, ...]
    defines: tuple[str, ...] = ()
    extra_sources: tuple[Path, ...] = ()
    default_entry: str | None = "main"


BOARDS: dict[str, Board] = {
    # functions called one by one by UnicornBackend: no entry function, nothing garbage-collected
    "unicorn": Board("unicorn", TARGET_DIR / "stm32h743.ld", STM32H743_MAP, default_entry=None),
    "stm32h743": Board(
        "stm32h743", TARGET_DIR / "stm32h743.ld", STM32H743_MAP, defines=("BNN_ENABLE_CACHES",)
    ),
    "mps2_an500": Board(
        "mps2_an500",
        TARGET_DIR / "mps2_an500.ld",
        MPS2_AN500_MAP,
        defines=("BNN_SEMIHOSTING",),
        extra_sources=(TARGET_DIR / "semihost.c",),
    ),
}


# --------------------------------------------------------------------------------------------
# cross compilation
# --------------------------------------------------------------------------------------------


def toolchain_available() -> bool:
    return shutil.which(ARM_GCC) is not None


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def _require(tool: str, packages: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolchainError(
            f"{tool} not found on PATH; install it with `make setup` or "
            f"`sudo apt-get install -y {packages}`"
        )
    return path


@functools.cache
def _gcc_version(gcc: str) -> str:
    proc = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True)
    return proc.stdout.strip()


def cross_compile(
    sources: Sequence[str | Path],
    include_dirs: Sequence[str | Path],
    out_elf: str | Path,
    board: str = "unicorn",
    defines: Iterable[str] = (),
    opt: str = "-O2",
    entry: str | None = None,
    *,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
    startup: bool = True,
) -> Path:
    """Compile and link ``sources`` into a Cortex-M7 firmware ELF for ``board``; return its path.

    The startup code (``runtime_c/target/startup_m7.c``) is added unless ``startup`` is false,
    and the board's own sources (the semihosting helper on ``mps2_an500``). ``entry`` is the C
    function the reset handler calls (``None``: the board's default, ``main`` except on
    ``unicorn``; ``""``: none). Without an entry function nothing is garbage-collected, so every
    function of ``sources`` stays callable from :class:`UnicornBackend`. ``defines`` are
    ``NAME`` or ``NAME=VALUE``. ``stack_size`` (bytes) overrides the linker script's 32 KB.

    The build is cached: ``out_elf`` is reused while the sources, headers, flags and compiler are
    unchanged (a ``.sha256`` stamp beside it records their hash). A ``.map`` file is written
    beside the ELF.
    """
    gcc = _require(ARM_GCC, "gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi")
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; one of {sorted(BOARDS)}")
    spec = BOARDS[board]
    entry_fn = spec.default_entry if entry is None else (entry or None)
    srcs = [Path(s) for s in sources]
    if startup:
        srcs = [TARGET_DIR / "startup_m7.c", *spec.extra_sources, *srcs]
    incs = [TARGET_DIR, INCLUDE_DIR, *(Path(d) for d in include_dirs)]
    macro = [*spec.defines, *defines]
    macro.append(f"BNN_ENTRY={entry_fn}" if entry_fn else "BNN_NO_ENTRY")
    cflags = [*CPU_FLAGS, opt, *C_FLAGS, *(f"-D{d}" for d in macro), *extra_flags]
    ldflags = [*LINK_FLAGS, "-T", str(spec.linker_script)]
    if entry_fn:
        ldflags.append("-Wl,--gc-sections")
    if stack_size is not None:
        ldflags.append(f"-Wl,--defsym=_stack_size={int(stack_size)}")

    out_elf = Path(out_elf)
    # headers of the include path and beside each source (a kernel's private header)
    headers = sorted({p for d in [*incs, *(s.parent for s in srcs)] for p in d.glob("*.h")})
    h = hashlib.sha256()
    for path in [*srcs, *headers, spec.linker_script]:
        h.update(str(path).encode())
        h.update(path.read_bytes())
    h.update("\0".join([*cflags, *ldflags, _gcc_version(gcc)]).encode())
    digest = h.hexdigest()
    stamp = out_elf.with_name(out_elf.name + ".sha256")
    if out_elf.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return out_elf

    out_elf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_elf.parent) as tmp:
        tmp_elf = Path(tmp) / out_elf.name
        cmd = [
            gcc,
            *cflags,
            *(f"-I{d}" for d in incs),
            *map(str, srcs),
            *ldflags,
            f"-Wl,-Map={tmp_elf.with_suffix('.map')}",
            *LINK_LIBS,
            "-o",
            str(tmp_elf),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        os.replace(tmp_elf.with_suffix(".map"), out_elf.with_suffix(".map"))
        os.replace(tmp_elf, out_elf)
    stamp.write_text(digest + "\n")
    return out_elf


# --------------------------------------------------------------------------------------------
# ELF files
# --------------------------------------------------------------------------------------------


@dataclass
class ElfImage:
    """The loadable segments and the symbols of a firmware ELF."""

    path: Path
    segments: list[tuple[int, bytes, int]]  # (run address, file bytes, memory size)
    load_images: list[tuple[int, bytes]]  # (load address, file bytes) where it is not the run one
    symbols: dict[str, int]  # name -> address (Thumb bit cleared for functions)
    sizes: dict[str, int]  # name -> st_size
    functions: dict[str, tuple[int, int]]  # name -> (address, size)
    _starts: list[int] = field(default_factory=list)
    _names: list[str] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> ElfImage:
        from elftools.elf.elffile import ELFFile

        path = Path(path)
        with path.open("rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_ARM" or elf.elfclass != 32:
                raise ValueError(f"{path}: not a 32-bit ARM ELF")
            loadable = [
                seg
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD" and seg["p_memsz"] > 0
            ]
            segments = [(int(s["p_vaddr"]), s.data(), int(s["p_memsz"])) for s in loadable]
            # .data: initial values stored in flash (LMA), copied to RAM (VMA) by the startup
            load_images = [
                (int(s["p_paddr"]), s.data())
                for s in loadable
                if s["p_filesz"] > 0 and s["p_paddr"] != s["p_vaddr"]
            ]
            symbols: dict[str, int] = {}
            sizes: dict[str, int] = {}
            functions: dict[str, tuple[int, int]] = {}
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise ValueError(f"{path}: no symbol table (stripped?)")
            for sym in symtab.iter_symbols():
                if not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                    continue
                kind = sym["st_info"]["type"]
                value = int(sym["st_value"])
                if kind == "STT_FUNC":
                    value &= ~1
                    functions[sym.name] = (value, int(sym["st_size"]))
                if kind in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE"):
                    if sym.name not in symbols or sym["st_info"]["bind"] == "STB_GLOBAL":
                        symbols[sym.name] = value
                        sizes[sym.name] = int(sym["st_size"])
        image = cls(path, segments, load_images, symbols, sizes, functions)
        ordered = sorted((a, a + max(s, 1), n) for n, (a, s) in functions.items())
        image._starts = [a for a, _, _ in ordered]
        image._ends = [e for _, e, _ in ordered]
        image._names = [n for _, _, n in ordered]
        return image

    def symbol_at(self, address: int) -> str:
        """``name+0xoff`` of the function containing ``address`` (``?`` if none)."""
        address &= ~1
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0 or address >= self._ends[i] + 64:
            return "?"
        off = address - self._starts[i]
        return self._names[i] if off == 0 else f"{self._names[i]}+{off:#x}"

    def function_at(self, address: int) -> str:
        """Name of the function containing ``address`` (``?`` if none)."""
        i = bisect.bisect_right(self._starts, address & ~1) - 1
        if i < 0 or address >= self._ends[i]:
            return "?"
        return self._names[i]

    def read(self, address: int, size: int) -> bytes:
        """Initial contents of ``size`` bytes at ``address`` (.bss and gaps read as zeros)."""
        out = bytearray(size)
        for seg_addr, data, memsz in [
            *self.segments,
            *((a, d, len(d)) for a, d in self.load_images),
        ]:
            lo, hi = max(address, seg_addr), min(address + size, seg_addr + memsz)
            if lo < hi:
                chunk = data[lo - seg_addr : hi - seg_addr]
                out[lo - address : lo - address + len(chunk)] = chunk
        return bytes(out)

    def read_symbol(self, name: str, size: int | None = None) -> bytes:
        """Initial contents of a symbol (its ELF size when ``size`` is None)."""
        if name not in self.symbols:
            raise KeyError(f"{self.path}: no symbol {name!r}")
        return self.read(self.symbols[name], self.sizes[name] if size is None else size)

    def load_end(self, region: Region) -> int:
        """First address after every loaded segment that starts inside ``region``."""
        end = region.base
        for addr, size in [(a, m) for a, _, m in self.segments] + [
            (a, len(d)) for a, d in self.load_images
        ]:
            if region.base <= addr < region.end:
                end = max(end, addr + size)
        return end


# --------------------------------------------------------------------------------------------
# 32-bit ARM struct layout (AAPCS)
# --------------------------------------------------------------------------------------------

_ARM_SCALARS = {"i32": (4, "<i"), "i64": (8, "<q"), "f32": (4, "<f")}


@dataclass(frozen=True)
class StructLayout:
    ctype: str
    size: int
    align: int
    offsets: dict[str, int]


def arm_struct_layout(ctype: str) -> StructLayout:
    """Layout of one of :data:`cabi.STRUCTS` on 32-bit ARM (AAPCS): pointers and ``int32_t``
    are 4 bytes, 4-aligned; ``int64_t`` is 8 bytes, 8-aligned; the size is rounded up to the
    largest alignment of a field."""
    offset, align = 0, 1
    offsets: dict[str, int] = {}
    for name, kind in STRUCTS[ctype]:
        size = 4 if kind in POINTERS else _ARM_SCALARS[kind][0]
        offset = (offset + size - 1) // size * size
        offsets[name] = offset
        offset += size
        align = max(align, size)
    return StructLayout(ctype, (offset + align - 1) // align * align, align, offsets)


def pack_struct(value: Struct, pointers: Mapping[str, int]) -> bytes:
    """The bytes of ``value`` on 32-bit ARM; ``pointers`` gives the address of each non-NULL
    pointer field."""
    layout = arm_struct_layout(value.ctype)
    out = bytearray(layout.size)
    for name, kind in STRUCTS[value.ctype]:
        off = layout.offsets[name]
        if kind in POINTERS:
            struct.pack_into(
                "<I", out, off, pointers.get(name, 0) if value.fields[name] is not None else 0
            )
        else:
            v = value.fields[name]
            fmt = _ARM_SCALARS[kind][1]
            if kind == "f32":
                struct.pack_into(fmt, out, off, float(v or 0.0))
            else:
                bits = 8 * _ARM_SCALARS[kind][0]
                struct.pack_into(fmt.upper(), out, off, int(v or 0) & ((1 << bits) - 1))
    return bytes(out)


def _f32_bits(value: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", value))[0])


# --------------------------------------------------------------------------------------------
# the instruction-counting block hook (C, loaded through ctypes)
# --------------------------------------------------------------------------------------------

_HOOK_SOURCE = r"""
/* bnncube: Unicorn block hook counting executed Thumb instructions (see validation/emulator.py).
 * Unicorn calls it at the start of every translated block it executes, with the block's
 * address and size in bytes. The number of instructions of each distinct block is decoded once
 * (a Thumb-2 halfword whose top five bits are 11101, 11110 or 11111 starts a 32-bit
 * instruction) and kept in a hash table, which also counts the executions of every block for
 * the per-function profile. */
#include <stdint.h>

typedef int (*mem_read_fn)(void *uc, uint64_t address, void *bytes, uint64_t size);
typedef int (*emu_stop_fn)(void *uc);

typedef struct {
    uint64_t instructions; /* executed so far */
    uint64_t blocks;       /* blocks executed so far */
    uint64_t limit;        /* stop the emulation once instructions > limit (0: no limit) */
    uint32_t stopped;      /* set when the limit stopped the emulation */
    uint32_t overflow;     /* the table was full: totals exact, profile incomplete */
    uint32_t capacity;     /* table entries, a power of two */
    uint32_t used;
    mem_read_fn mem_read;
    emu_stop_fn emu_stop;
    uint64_t *keys;        /* (size << 32) | address, all ones when empty */
    uint32_t *insns;       /* instructions of the block */
    uint64_t *execs;       /* executions of the block */
} bnn_counter_t;

static uint32_t decode(void *uc, bnn_counter_t *c, uint64_t address, uint32_t size)
{
    uint32_t off = 0, n = 0;
    while (off < size) {
        uint8_t b[2] = {0, 0};
        uint16_t hw;
        c->mem_read(uc, address + off, b, 2);
        hw = (uint16_t)(b[0] | (b[1] << 8));
        off += (hw & 0xF800u) >= 0xE800u ? 4u : 2u;
        ++n;
    }
    return n;
}

void bnn_count_block(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    bnn_counter_t *c = (bnn_counter_t *)user_data;
    uint64_t key = ((uint64_t)size << 32) | (address & 0xFFFFFFFFu);
    uint32_t mask = c->capacity - 1u;
    uint32_t i = (uint32_t)((address * 0x9E3779B1u) >> 7) & mask;
    uint32_t n;
    for (;;) {
        uint64_t k = c->keys[i];
        if (k == key) {
            n = c->insns[i];
            c->execs[i] += 1u;
            break;
        }
        if (k == UINT64_MAX) {
            n = decode(uc, c, address, size);
            if ((c->used + 1u) * 4u > c->capacity * 3u) {
                c->overflow = 1u;
            } else {
                c->keys[i] = key;
                c->insns[i] = n;
                c->execs[i] = 1u;
                c->used += 1u;
            }
            break;
        }
        i = (i + 1u) & mask;
    }
    c->instructions += n;
    c->blocks += 1u;
    if (c->limit != 0u && c->instructions > c->limit && !c->stopped) {
        c->stopped = 1u;
        c->emu_stop(uc);
    }
}
"""


class _Counter(ctypes.Structure):
    _fields_ = [
        ("instructions", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("stopped", ctypes.c_uint32),
        ("overflow", ctypes.c_uint32),
        ("capacity", ctypes.c_uint32),
        ("used", ctypes.c_uint32),
        ("mem_read", ctypes.c_void_p),
        ("emu_stop", ctypes.c_void_p),
        ("keys", ctypes.c_void_p),
        ("insns", ctypes.c_void_p),
        ("execs", ctypes.c_void_p),
    ]


def cache_dir() -> Path:
    """Where host-side helpers are built (``$BNNCUBE_CACHE_DIR``, else ``~/.cache/bnncube``)."""
    base = os.environ.get("BNNCUBE_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bnncube"


_HOOK_LIB: ctypes.CDLL | None = None


def _hook_library() -> ctypes.CDLL | None:
    """The compiled counting hook, or None when no host C compiler is available."""
    global _HOOK_LIB
    if _HOOK_LIB is None:
        lib = _host_library(_HOOK_SOURCE, "uc_count")
        _HOOK_LIB = ctypes.CDLL(str(lib)) if lib is not None else None
    return _HOOK_LIB


# --------------------------------------------------------------------------------------------
# Unicorn backend
# --------------------------------------------------------------------------------------------

_UC_ERRORS = {
    "UC_ERR_READ_UNMAPPED": "read from unmapped memory",
    "UC_ERR_WRITE_UNMAPPED": "write to unmapped memory",
    "UC_ERR_FETCH_UNMAPPED": "instruction fetch from unmapped memory",
    "UC_ERR_READ_PROT": "read from protected memory",
    "UC_ERR_WRITE_PROT": "write to protected memory",
    "UC_ERR_FETCH_PROT": "instruction fetch from non-executable memory",
    "UC_ERR_INSN_INVALID": "undefined instruction",
    "UC_ERR_EXCEPTION": "CPU exception (e.g. BKPT, SVC, semihosting call)",
    "UC_ERR_READ_UNALIGNED": "unaligned read",
    "UC_ERR_WRITE_UNALIGNED": "unaligned write",
    "UC_ERR_FETCH_UNALIGNED": "unaligned fetch",
}

DEFAULT_BUDGET = 2_000_000_000
HOOK_TABLE_SIZE = 1 << 16


class UnicornBackend:
    """Call the functions of a Cortex-M7 firmware ELF in Unicorn (see the module doc).

    ``memory_map`` names one of :data:`MEMORY_MAPS` (default: the STM32H743's flash, DTCM and
    AXI SRAM). Arrays and structs of a call are placed in the RAM after the ELF's ``.arena``
    (the AXI SRAM), 8-byte aligned (``array_align``). The stack is the ELF's
    (``_sstack``..``_estack``). ``hook`` is ``"c"`` (the compiled counting hook, falls back to
    Python when there is no host C compiler) or ``"python"``.

    After each call: :attr:`last_instructions` (exact count), :attr:`last_blocks`,
    :attr:`last_stack_bytes` (deepest stack use below the stack pointer at the call),
    :attr:`last_profile` (instructions per function, with ``call(..., profile=True)``) and
    :attr:`last_wall_s`.
    """

    name = "unicorn"

    def __init__(
        self,
        elf: str | Path,
        *,
        memory_map: str = "stm32h743",
        instruction_budget: int = DEFAULT_BUDGET,
        timeout_s: float = 120.0,
        hook: str = "c",
        array_align: int = 8,
    ) -> None:
        from unicorn import UC_ARCH_ARM, UC_MODE_THUMB, Uc
        from unicorn.arm_const import UC_CPU_ARM_CORTEX_M7

        if memory_map not in MEMORY_MAPS:
            raise ValueError(f"unknown memory map {memory_map!r}; one of {sorted(MEMORY_MAPS)}")
        self.image = ElfImage.load(elf)
        self.regions = MEMORY_MAPS[memory_map]
        self.instruction_budget = int(instruction_budget)
        self.timeout_s = float(timeout_s)
        self.array_align = int(array_align)
        self.last_instructions = 0
        self.last_blocks = 0
        self.last_stack_bytes = 0
        self.last_profile: dict[str, int] = {}
        self.last_wall_s = 0.0

        # a plain Thumb CPU switched to the Cortex-M7 model (UC_MODE_MCLASS would give an M33)
        self.uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB)
        self.uc.ctl_set_cpu_model(UC_CPU_ARM_CORTEX_M7)
        for region in self.regions:
            self.uc.mem_map(region.base, region.size)
        self._load()

        flash = self.regions[0]
        self.return_address = flash.end - 16  # `b .`; the emulation stops when PC gets there
        if self.image.load_end(flash) > self.return_address:
            raise ValueError(f"{elf}: the image fills the flash; no room for the return stub")
        self.uc.mem_write(self.return_address, b"\xfe\xe7")

        syms = self.image.symbols
        ram = self.regions[1]
        self.stack_top = syms.get("_estack", ram.end)
        self.stack_bottom = syms.get("_sstack", self.stack_top - 0x8000)
        arena_region = self.regions[2] if len(self.regions) > 2 else ram
        self.scratch_base = (
            max(syms.get("_earena", arena_region.base), self.image.load_end(arena_region)) + 63
        ) & ~63
        self.scratch_end = arena_region.end

        self._fault: tuple[str, int, int] | None = None
        self._install_hooks(hook)

    # ---- setup -----------------------------------------------------------------------------

    def _load(self) -> None:
        # each segment at its run address (so .data starts initialised without running the
        # startup) and, for .data, its initial values at their load address in flash too
        images = [(a, d + bytes(m - len(d))) for a, d, m in self.image.segments]
        for addr, data in [*images, *self.image.load_images]:
            if not any(r.base <= addr and addr + len(data) <= r.end for r in self.regions):
                raise ValueError(
                    f"{self.image.path}: segment {addr:#x}+{len(data):#x} outside the memory map"
                )
            self.uc.mem_write(addr, data)

    def reset(self) -> None:
        """Reload the ELF's segments (initial .data, zero .bss), as after a reset."""
        self._load()

    def _install_hooks(self, hook: str) -> None:
        from unicorn import UC_HOOK_BLOCK, UC_HOOK_MEM_INVALID

        self.uc.hook_add(UC_HOOK_MEM_INVALID, self._on_invalid_memory)
        self._keys = np.full(HOOK_TABLE_SIZE, np.iinfo(np.uint64).max, dtype=np.uint64)
        self._insns = np.zeros(HOOK_TABLE_SIZE, dtype=np.uint32)
        self._execs = np.zeros(HOOK_TABLE_SIZE, dtype=np.uint64)
        self._counter = _Counter()
        lib = _hook_library() if hook == "c" else None
        self.hook_kind = "c" if lib is not None and self._add_c_hook(lib) else "python"
        if self.hook_kind == "python":
            self._py_blocks: dict[tuple[int, int], list[int]] = {}
            self._py_state = [0, 0, 0, 0]
            self.uc.hook_add(UC_HOOK_BLOCK, self._on_block_python)

    def _add_c_hook(self, lib: ctypes.CDLL) -> bool:
        """Register the compiled hook with libunicorn directly (the Python binding only takes
        Python callables). Uses the 2.1 binding's `uclib` and `Uc._uch`; False if they moved."""
        from unicorn import UC_HOOK_BLOCK

        try:
            from unicorn.unicorn_py3 import unicorn as ucmod

            uclib, engine = ucmod.uclib, self.uc._uch
        except (ImportError, AttributeError):
            return False
        c = self._counter
        c.capacity = HOOK_TABLE_SIZE
        c.mem_read = ctypes.cast(uclib.uc_mem_read, ctypes.c_void_p).value
        c.emu_stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        c.keys = self._keys.ctypes.data
        c.insns = self._insns.ctypes.data
        c.execs = self._execs.ctypes.data
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(
            engine,
            ctypes.byref(handle),
            UC_HOOK_BLOCK,
            ctypes.cast(lib.bnn_count_block, ctypes.c_void_p),
            ctypes.cast(ctypes.byref(c), ctypes.c_void_p),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if status != 0:
            raise RuntimeError(f"uc_hook_add failed: {status}")
        self._hook_lib = lib  # keep the library loaded
        return True

    def _on_block_python(self, uc: Any, address: int, size: int, _user: Any) -> None:
        # the same bookkeeping as the C hook; `state` is [instructions, blocks, limit, stopped]
        entry = self._py_blocks.get((address, size))
        if entry is None:
            code = bytes(uc.mem_read(address, size))
            n = off = 0
            while off < size:
                hw = code[off] | (code[off + 1] << 8) if off + 1 < size else code[off]
                off += 4 if (hw & 0xF800) >= 0xE800 else 2
                n += 1
            entry = self._py_blocks[(address, size)] = [n, 0]
        entry[1] += 1
        state = self._py_state
        state[0] += entry[0]
        state[1] += 1
        if state[2] and state[0] > state[2] and not state[3]:
            state[3] = 1
            uc.emu_stop()

    def _on_invalid_memory(
        self, uc: Any, access: int, address: int, size: int, value: int, _user: Any
    ) -> bool:
        from unicorn import unicorn_const as k

        kinds = {
            k.UC_MEM_READ_UNMAPPED: "read from unmapped memory",
            k.UC_MEM_WRITE_UNMAPPED: "write to unmapped memory",
            k.UC_MEM_FETCH_UNMAPPED: "instruction fetch from unmapped memory",
            k.UC_MEM_READ_PROT: "read from protected memory",
            k.UC_MEM_WRITE_PROT: "write to protected memory",
            k.UC_MEM_FETCH_PROT: "instruction fetch from protected memory",
        }
        self._fault = (kinds.get(access, f"invalid memory access {access}"), address, size)
        return False

    # ---- memory helpers --------------------------------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        try:
            return bytes(self.uc.mem_read(address, size))
        except Exception as exc:  # unicorn.UcError: the range is not mapped
            raise EmulatorError(
                f"host read of {size} bytes at {address:#010x}: outside the mapped memory ({exc})",
                kind="unmapped",
            ) from None

    def write(self, address: int, data: bytes) -> None:
        try:
            self.uc.mem_write(address, data)
        except Exception as exc:  # unicorn.UcError: the range is not mapped
            raise EmulatorError(
                f"host write of {len(data)} bytes at {address:#010x}: outside the mapped memory "
                f"({exc})",
                kind="unmapped",
            ) from None

    def read_symbol(self, name: str, size: int | None = None) -> bytes:
        """The current bytes of a symbol in emulated memory (its ELF size if ``size`` is None)."""
        if name not in self.image.symbols:
            raise KeyError(f"{self.image.path}: no symbol {name!r}")
        size = self.image.sizes[name] if size is None else size
        return self.read(self.image.symbols[name], size)

    # ---- calls -----------------------------------------------------------------------------

    def int_function(self, function: str, *args: Any) -> int:
        """Call a function returning int32 (e.g. a ``_scratch_size`` query)."""
        return self.call(function, *args)

    def call(
        self,
        function: str,
        *args: Any,
        profile: bool = False,
        instruction_budget: int | None = None,
        timeout_s: float | None = None,
    ) -> int:
        """Call ``function`` with the :mod:`~bnncube.runtime_c.cabi` arguments; return r0 as an
        int32. Raises :class:`EmulatorError` on a fault, after ``instruction_budget``
        instructions (0: no limit) or ``timeout_s`` seconds (0: no limit)."""
        from unicorn import UcError
        from unicorn import arm_const as a

        if function not in self.image.functions:
            raise KeyError(f"{self.image.path.name}: no function {function!r}")
        entry = self.image.functions[function][0]

        # ---- arguments: arrays and structs into the scratch RAM, then registers and stack
        alloc = _Allocator(self.scratch_base, self.scratch_end, self.array_align)
        copies: list[tuple[int, np.ndarray]] = []
        placed: dict[int, int] = {}  # id of an array argument -> its address

        def place_array(arr: np.ndarray) -> int:
            # the same array object passed twice is one buffer (in-place calls), as on the host
            if id(arr) in placed:
                return placed[id(arr)]
            if not arr.flags.c_contiguous:
                raise ValueError(f"{function}: array arguments must be C-contiguous")
            addr = alloc.take(arr.nbytes, f"{function}: arguments")
            self.uc.mem_write(addr, arr.tobytes())
            copies.append((addr, arr))
            placed[id(arr)] = addr
            return addr

        core: list[int] = []  # r0-r3
        slots: list[int] = []  # stack slots (4 bytes each), in argument order
        sregs: list[int] = []  # s0-s15
        vfp_on_stack = False
        for arg in args:
            if arg is None:
                value, is_float = 0, False
            elif isinstance(arg, Struct):
                pointers = {
                    name: place_array(arg.fields[name])
                    for name, kind in STRUCTS[arg.ctype]
                    if kind in POINTERS and arg.fields[name] is not None
                }
                data = pack_struct(arg, pointers)
                value = alloc.take(len(data), f"{function}: arguments")
                self.uc.mem_write(value, data)
                is_float = False
            elif isinstance(arg, np.ndarray):
                value, is_float = place_array(arg), False
            elif isinstance(arg, F32):
                value, is_float = _f32_bits(arg.value), True
            elif isinstance(arg, (bool, int, np.integer)):
                value, is_float = int(arg) & 0xFFFF_FFFF, False
            else:
                raise TypeError(f"{function}: unsupported argument {arg!r}")
            if is_float:
                if not vfp_on_stack and len(sregs) < 16:
                    sregs.append(value)
                else:
                    vfp_on_stack = True  # AAPCS: once a VFP argument is on the stack, all are
                    slots.append(value)
            elif len(core) < 4:  # 4-byte arguments only: r0-r3 fill in order, then the stack
                core.append(value)
            else:
                slots.append(value)

        # ---- stack: pattern below the arguments, SP 8-byte aligned at the call
        sp = (self.stack_top - 4 * len(slots)) & ~7
        if sp - 256 < self.stack_bottom:
            raise ValueError(f"{function}: too many stack arguments for the stack")
        nwords = (sp - self.stack_bottom) // 4
        self.uc.mem_write(self.stack_bottom, np.full(nwords, STACK_PATTERN, "<u4").tobytes())
        if slots:
            self.uc.mem_write(sp, struct.pack(f"<{len(slots)}I", *slots))

        uc = self.uc
        for i in range(13):
            uc.reg_write(a.UC_ARM_REG_R0 + i, core[i] if i < len(core) else 0)
        for i in range(32):
            uc.reg_write(a.UC_ARM_REG_S0 + i, sregs[i] if i < len(sregs) else 0)
        uc.reg_write(a.UC_ARM_REG_FPSCR, 0)
        uc.reg_write(a.UC_ARM_REG_XPSR, 0x0100_0000)  # Thumb; no flags, no IT state left over
        uc.reg_write(a.UC_ARM_REG_SP, sp)
        uc.reg_write(a.UC_ARM_REG_LR, self.return_address | 1)

        # ---- run
        c = self._counter
        c.instructions = c.blocks = 0
        c.stopped = 0
        c.limit = self.instruction_budget if instruction_budget is None else int(instruction_budget)
        if self.hook_kind == "c":
            self._execs[:] = 0
        else:
            self._py_state[:] = [0, 0, int(c.limit), 0]
            for v in self._py_blocks.values():
                v[1] = 0
        self._fault = None
        limit_s = self.timeout_s if timeout_s is None else timeout_s
        t0 = time.perf_counter()
        error: Exception | None = None
        try:
            uc.emu_start(entry | 1, self.return_address, timeout=int(limit_s * 1e6))
        except UcError as exc:
            error = exc
        self.last_wall_s = time.perf_counter() - t0
        if self.hook_kind == "python":
            c.instructions, c.blocks, _, c.stopped = self._py_state
        self.last_instructions = int(c.instructions)
        self.last_blocks = int(c.blocks)
        pc = int(uc.reg_read(a.UC_ARM_REG_PC))

        if error is not None:
            raise self._fault_error(function, error, pc)
        if pc != self.return_address:
            where = self.image.symbol_at(pc)
            if c.stopped:
                why = f"instruction budget of {c.limit} exceeded (endless loop?)"
                kind = "budget"
            else:
                why = f"wall-clock timeout of {limit_s:g} s (endless loop?)"
                kind = "timeout"
            raise EmulatorError(
                f"{function}: {why}, stopped at pc={pc:#010x} in {where} "
                f"after {self.last_instructions} instructions",
                function=function,
                kind=kind,
                pc=pc,
                symbol=where,
                instructions=self.last_instructions,
            )

        # ---- results
        for addr, arr in copies:
            if arr.flags.writeable and arr.nbytes:
                arr[...] = np.frombuffer(self.read(addr, arr.nbytes), dtype=arr.dtype).reshape(
                    arr.shape
                )
        words = np.frombuffer(self.read(self.stack_bottom, nwords * 4), dtype="<u4")
        touched = np.flatnonzero(words != STACK_PATTERN)
        self.last_stack_bytes = int(nwords - touched[0]) * 4 if touched.size else 0
        self.last_profile = self._profile() if profile else {}
        r0 = int(uc.reg_read(a.UC_ARM_REG_R0)) & 0xFFFF_FFFF
        return r0 - (1 << 32) if r0 & 0x8000_0000 else r0

    def _fault_error(self, function: str, error: Exception, pc: int) -> EmulatorError:
        errno = getattr(error, "errno", None)
        from unicorn import unicorn_const as k

        name = next(
            (n for n in dir(k) if n.startswith("UC_ERR_") and getattr(k, n) == errno), str(error)
        )
        kind = _UC_ERRORS.get(name, name)
        detail = ""
        if self._fault is not None:
            kind, address, size = self._fault
            detail = f" at address {address:#010x} ({size} bytes)"
        where = self.image.symbol_at(pc)
        return EmulatorError(
            f"{function}: {kind}{detail}, pc={pc:#010x} in {where} "
            f"after {self.last_instructions} instructions",
            function=function,
            kind=kind,
            pc=pc,
            symbol=where,
            instructions=self.last_instructions,
        )

    def _profile(self) -> dict[str, int]:
        prof: dict[str, int] = {}
        if self.hook_kind == "c":
            used = np.flatnonzero(self._execs)
            for i in used:
                addr = int(self._keys[i]) & 0xFFFF_FFFF
                name = self.image.function_at(addr)
                prof[name] = prof.get(name, 0) + int(self._insns[i]) * int(self._execs[i])
        else:
            for (addr, _), (n, execs) in self._py_blocks.items():
                if execs:
                    name = self.image.function_at(addr)
                    prof[name] = prof.get(name, 0) + n * execs
        return dict(sorted(prof.items(), key=lambda kv: -kv[1]))


class _Allocator:
    def __init__(self, base: int, end: int, align: int) -> None:
        self.next, self.end, self.align = base, end, align

    def take(self, size: int, what: str) -> int:
        addr = (self.next + self.align - 1) // self.align * self.align
        if addr + size > self.end:
            raise ValueError(
                f"{what} need more than the {self.end - self.next} bytes of emulator scratch RAM"
            )
        self.next = addr + max(size, 1)
        return addr


# --------------------------------------------------------------------------------------------
# QEMU
# --------------------------------------------------------------------------------------------

_FAULT_RE = re.compile(r"BNN_HARDFAULT((?: \w+=0x[0-9a-f]{8})+)")


@dataclass(frozen=True)
class FaultReport:
    """A HardFault reported by the firmware's handler (runtime_c/target/startup_m7.c)."""

    registers: dict[str, int]
    symbol: str

    @property
    def pc(self) -> int:
        return self.registers["pc"]

    @property
    def cfsr(self) -> int:
        return self.registers["cfsr"]

    def describe(self) -> str:
        return f"HardFault at pc={self.pc:#010x} in {self.symbol}: {describe_cfsr(self.cfsr)}"


_CFSR_BITS = {
    0: "MemManage: instruction access violation",
    1: "MemManage: data access violation",
    8: "BusFault: instruction bus error",
    9: "BusFault: precise data bus error",
    10: "BusFault: imprecise data bus error",
    16: "UsageFault: undefined instruction",
    17: "UsageFault: invalid state",
    18: "UsageFault: invalid PC load",
    19: "UsageFault: no coprocessor (FPU disabled?)",
    24: "UsageFault: unaligned access",
    25: "UsageFault: divide by zero",
}


def describe_cfsr(cfsr: int) -> str:
    names = [text for bit, text in _CFSR_BITS.items() if cfsr >> bit & 1]
    return "; ".join(names) if names else f"CFSR={cfsr:#010x}"


def parse_fault(output: str, elf: str | Path | ElfImage | None = None) -> FaultReport | None:
    """The HardFault report in a firmware's output, if any."""
    m = _FAULT_RE.search(output)
    if m is None:
        return None
    regs = {k: int(v, 16) for k, v in re.findall(r"(\w+)=(0x[0-9a-f]{8})", m.group(1))}
    image = ElfImage.load(elf) if isinstance(elf, (str, Path)) else elf
    symbol = image.symbol_at(regs.get("pc", 0)) if image is not None else "?"
    return FaultReport(regs, symbol)


_PLUGIN_SOURCE = r"""
/* bnncube: a QEMU TCG plugin (API version 1, QEMU 7.x) counting executed guest instructions:
 * all of them, and those of translated blocks starting in [lo, hi) (plugin arguments lo=, hi=).
 * Prints "BNN_QEMU_INSNS total=<n> range=<n>" (to QEMU's log: run with -d plugin) at exit.
 * Debian ships no qemu-plugin.h, so the few API functions used are declared here. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_info_t;
enum { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };
typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*udata_cb)(qemu_plugin_id_t id, void *userdata);
extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, int op, void *ptr,
                                                     uint64_t imm);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb cb, void *userdata);
extern void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;
__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const struct qemu_info_t *info,
                                                               int argc, char **argv);

static uint64_t total, in_range, lo, hi = UINT64_MAX;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uint64_t n = qemu_plugin_tb_n_insns(tb), pc = qemu_plugin_tb_vaddr(tb);
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &total, n);
    if (pc >= lo && pc < hi) {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &in_range, n);
    }
}

static void on_quit(qemu_plugin_id_t id, void *userdata)
{
    char text[96];
    (void)id;
    (void)userdata;
    snprintf(text, sizeof text, "BNN_QEMU_INSNS total=%llu range=%llu\n",
             (unsigned long long)total, (unsigned long long)in_range);
    qemu_plugin_outs(text);
}

int qemu_plugin_install(qemu_plugin_id_t id, const struct qemu_info_t *info, int argc, char **argv)
{
    int i;
    (void)info;
    for (i = 0; i < argc; ++i) {
        if (strncmp(argv[i], "lo=", 3) == 0) {
            lo = strtoull(argv[i] + 3, NULL, 0);
        } else if (strncmp(argv[i], "hi=", 3) == 0) {
            hi = strtoull(argv[i] + 3, NULL, 0);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_quit, NULL);
    return 0;
}
"""


def _host_library(source: str, stem: str) -> Path | None:
    """Compile a small host C source into a shared library in :func:`cache_dir` (cached by
    its hash); None when there is no host C compiler or it fails."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return None
    digest = hashlib.sha256((source + cc + sys.platform).encode()).hexdigest()[:16]
    out_dir = cache_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        out_dir = Path(tempfile.gettempdir()) / "bnncube-cache"
        out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"{stem}_{digest}.so"
    if lib.exists():
        return lib
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = Path(tmp) / f"{stem}.c"
        src.write_text(source)
        tmp_lib = Path(tmp) / lib.name
        cmd = [cc, "-O2", "-shared", "-fPIC", "-std=c99", "-Wall", "-Wextra", "-Werror"]
        proc = subprocess.run([*cmd, str(src), "-o", str(tmp_lib)], capture_output=True)
        if proc.returncode != 0:
            return None
        os.replace(tmp_lib, lib)
    return lib


_COUNT_RE = re.compile(r"BNN_QEMU_INSNS total=(\d+) range=(\d+)")


class QemuRunner:
    """Run a firmware built for ``mps2_an500`` in ``qemu-system-arm`` (Cortex-M7).

    :meth:`run` returns ``(exit status, output)``: the status given to semihosting's
    SYS_EXIT_EXTENDED (``main``'s return value; :data:`EXIT_FAULT` after a HardFault, whose
    report -- with the faulting function's name added -- is in the output). A run longer than
    ``timeout_s`` raises :class:`EmulatorError`.
    """

    def __init__(
        self, qemu: str = QEMU, machine: str = "mps2-an500", cpu: str = "cortex-m7"
    ) -> None:
        self.qemu, self.machine, self.cpu = qemu, machine, cpu

    def command(self, elf: str | Path, plugin: str | Path | None = None) -> list[str]:
        cmd = [
            _require(self.qemu, "qemu-system-arm"),
            "-M",
            self.machine,
            "-cpu",
            self.cpu,
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "null",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
            str(elf),
        ]
        if plugin is not None:
            cmd += ["-plugin", str(plugin), "-d", "plugin"]
        return cmd

    def run(
        self, elf: str | Path, timeout_s: float = 30.0, count: bool | str = False
    ) -> tuple[int, str]:
        """Run ``elf``; return (exit status, output). ``count`` loads the instruction-counting
        TCG plugin: :attr:`last_instructions` then holds the firmware's total and
        :attr:`last_function_instructions` those of the blocks inside the function named by
        ``count`` (a string)."""
        plugin = None
        self.last_instructions: int | None = None
        self.last_function_instructions: int | None = None
        if count:
            lib = _host_library(_PLUGIN_SOURCE, "qemu_count")
            if lib is None:
                raise ToolchainError("no host C compiler to build the QEMU counting plugin")
            plugin = str(lib)
            if isinstance(count, str):
                addr, size = ElfImage.load(elf).functions[count]
                plugin += f",lo={addr},hi={addr + size}"
        cmd = self.command(elf, plugin)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise EmulatorError(
                f"{Path(elf).name}: QEMU did not finish within {timeout_s:g} s (endless loop?)",
                kind="timeout",
            ) from exc
        output = proc.stdout + proc.stderr
        m = _COUNT_RE.search(output)
        if m is not None:
            self.last_instructions = int(m.group(1))
            self.last_function_instructions = int(m.group(2))
        fault = parse_fault(output, elf)
        if fault is not None:
            output += f"\n{fault.describe()}\n"
        return proc.returncode, output

    def run_checked(self, elf: str | Path, timeout_s: float = 30.0) -> str:
        """Run ``elf``; return its output when it exits with 0, otherwise raise
        :class:`EmulatorError` (kind ``"hardfault"`` with the PC and function of a fault,
        ``"failed"`` for another status, ``"timeout"``)."""
        status, output = self.run(elf, timeout_s)
        if status == 0:
            return output
        fault = parse_fault(output, elf) if status == EXIT_FAULT else None
        if fault is not None:
            raise EmulatorError(
                f"{Path(elf).name}: {fault.describe()}\n{output}",
                kind="hardfault",
                pc=fault.pc,
                symbol=fault.symbol,
            )
        raise EmulatorError(f"{Path(elf).name}: exit status {status}\n{output}", kind="failed")

    def supports_plugins(self) -> bool:
        """Whether this QEMU build accepts ``-plugin`` (TCG plugins; Debian ships none)."""
        proc = subprocess.run(
            [_require(self.qemu, "qemu-system-arm"), "-help"], capture_output=True, text=True
        )
        return "-plugin" in proc.stdout


# ---- one kernel call as a self-checking firmware ---------------------------------------------

_CHECK_C = r"""
static uint32_t load_le(const uint8_t *p, uint32_t n)
{
    uint32_t v = 0, i;
    for (i = 0; i < n && i < 4u; ++i) {
        v |= (uint32_t)p[i] << (8u * i);
    }
    return v;
}

static void put_value(const uint8_t *p, uint32_t elem, int is_signed)
{
    uint32_t v = load_le(p, elem);
    if (elem == 8u) {
        bnn_sh_put_hex(load_le(p + 4, 4u));
        bnn_sh_puts(":");
    }
    bnn_sh_put_hex(v);
    if (is_signed && elem <= 4u) {
        uint32_t bits = 8u * elem;
        int32_t s = (int32_t)(bits == 32u ? v : (v ^ (1u << (bits - 1u))) - (1u << (bits - 1u)));
        bnn_sh_puts(" (");
        bnn_sh_put_dec(s);
        bnn_sh_puts(")");
    }
}

/* compare an output with its expected bytes; print the first mismatch; return the number of
 * mismatching elements */
__attribute__((unused)) static uint32_t check(const char *name, const uint8_t *got,
                                              const uint8_t *want, uint32_t n, uint32_t elem,
                                              int is_signed)
{
    uint32_t i, bad = 0, first = n;
    for (i = 0; i < n; i += elem) {
        uint32_t j;
        for (j = 0; j < elem; ++j) {
            if (got[i + j] != want[i + j]) {
                break;
            }
        }
        if (j < elem) {
            if (bad == 0u) {
                first = i;
            }
            ++bad;
        }
    }
    if (bad != 0u) {
        bnn_sh_puts("BNN_MISMATCH ");
        bnn_sh_puts(name);
        bnn_sh_puts("[");
        bnn_sh_put_dec((int32_t)(first / elem));
        bnn_sh_puts("]: got ");
        put_value(got + first, elem, is_signed);
        bnn_sh_puts(" expected ");
        put_value(want + first, elem, is_signed);
        bnn_sh_puts("; ");
        bnn_sh_put_dec((int32_t)bad);
        bnn_sh_puts(" of ");
        bnn_sh_put_dec((int32_t)(n / elem));
        bnn_sh_puts(" elements differ\n");
    }
    return bad;
}

__attribute__((unused)) static float f32_from_bits(uint32_t bits)
{
    union {
        uint32_t u;
        float f;
    } v;
    v.u = bits;
    return v.f;
}
"""


def _c_bytes(name: str, data: bytes, const: bool, offset: int = 0) -> str:
    """A byte array ``name`` holding ``data``; with ``offset``, ``name`` is a macro for the
    address ``offset`` bytes into an 8-aligned buffer."""
    qual = "static const" if const else "static"
    values = ["0"] * offset + [str(b) for b in data]
    values = values or ["0"]
    lines = (",".join(values[i : i + 24]) for i in range(0, len(values), 24))
    store = f"{name}_mem" if offset else name
    text = (
        f"{qual} uint8_t {store}[{len(values)}] __attribute__((aligned(8))) = {{\n"
        + ",\n".join(lines)
        + "\n};\n"
    )
    if offset:
        text += f"#define {name} ({store} + {offset})\n"
    return text


def write_case_source(
    function: str,
    args: Sequence[Any],
    expected: Mapping[int | tuple[int, str], np.ndarray],
    expected_status: int | None = 0,
    array_offset: int = 0,
) -> str:
    """C source of a ``main`` that calls ``function(*args)`` (cabi argument kinds) and checks
    the outputs against ``expected`` (keys: the index of an array argument, or
    ``(index, field)`` for an array in a struct's pointer field), byte for byte, and the
    return value against ``expected_status`` (None: not checked). ``main`` returns 0 when all
    match, 1 otherwise, after printing ``BNN_MISMATCH ...`` lines and ``BNN_CASE PASS|FAIL``.

    Arrays are 8-byte aligned; ``array_offset`` places every byte array (int8/uint8, also in
    struct fields) that many bytes past an 8-byte boundary instead, to check that kernels take
    int8 buffers at any address; wider arrays keep the alignment C requires of their type."""
    decls: list[str] = []
    patches: list[str] = []
    call_args: list[str] = []
    params: list[str] = []
    arrays: dict[int | tuple[int, str], tuple[str, np.ndarray]] = {}
    for i, arg in enumerate(args):
        if arg is None:
            call_args.append("(void *)0")
            params.append("void *")
        elif isinstance(arg, Struct):
            layout = arm_struct_layout(arg.ctype)
            sname = f"s{i}"
            fake = {}
            for fname, kind in STRUCTS[arg.ctype]:
                v = arg.fields[fname]
                if kind in POINTERS and v is not None:
                    aname = f"a{i}_{fname}"
                    offset = array_offset if v.dtype.itemsize == 1 else 0
                    decls.append(_c_bytes(aname, v.tobytes(), False, offset))
                    arrays[(i, fname)] = (aname, v)
                    fake[fname] = 0
                    patches.append(
                        f"    {sname}[{layout.offsets[fname] // 4}] = "
                        f"(uint32_t)(uintptr_t){aname}; /* .{fname} */"
                    )
            data = pack_struct(arg, fake)
            words = struct.unpack(f"<{len(data) // 4}I", data)
            fields = ", ".join(f"{n}@{layout.offsets[n]}" for n, _ in STRUCTS[arg.ctype])
            decls.append(
                f"/* {arg.ctype}: {fields} */\n"
                f"static uint32_t {sname}[{len(words)}] __attribute__((aligned(8))) = {{"
                + ", ".join(f"{w:#010x}u" for w in words)
                + "};\n"
            )
            call_args.append(f"(const void *){sname}")
            params.append("const void *")
        elif isinstance(arg, np.ndarray):
            aname = f"a{i}"
            offset = array_offset if arg.dtype.itemsize == 1 else 0
            decls.append(_c_bytes(aname, np.ascontiguousarray(arg).tobytes(), False, offset))
            arrays[i] = (aname, arg)
            call_args.append(f"(void *){aname}")
            params.append("void *")
        elif isinstance(arg, F32):
            call_args.append(f"f32_from_bits({_f32_bits(arg.value):#010x}u)")
            params.append("float")
        elif isinstance(arg, (bool, int, np.integer)):
            call_args.append(f"(int32_t){int(arg) & 0xFFFF_FFFF:#010x}u")
            params.append("int32_t")
        else:
            raise TypeError(f"{function}: unsupported argument {arg!r}")

    checks: list[str] = []
    for key, want in expected.items():
        if key not in arrays:
            raise KeyError(f"{function}: expected output {key!r} is not an array argument")
        aname, arr = arrays[key]
        want = np.ascontiguousarray(want, dtype=arr.dtype)
        if want.nbytes != arr.nbytes:
            raise ValueError(
                f"{function}: expected {key!r} has {want.nbytes} bytes, not {arr.nbytes}"
            )
        decls.append(_c_bytes(f"{aname}_expected", want.tobytes(), const=True))
        signed = int(arr.dtype.kind == "i")
        checks.append(
            f'    bad += check("{aname}", {aname}, {aname}_expected, {arr.nbytes}u, '
            f"{arr.dtype.itemsize}u, {signed});"
        )
    status_check = ""
    if expected_status is not None:
        status_check = (
            f"    if (status != (int32_t){int(expected_status)}) {{\n"
            '        bnn_sh_puts("BNN_MISMATCH status: got ");\n'
            "        bnn_sh_put_dec(status);\n"
            f'        bnn_sh_puts(" expected {int(expected_status)}\\n");\n'
            "        ++bad;\n"
            "    }\n"
        )
    proto = ", ".join(params) if params else "void"
    return (
        f"/* generated by bnncube.validation.emulator.write_case_source: {function} */\n"
        "#include <stdint.h>\n\n"
        '#include "semihost.h"\n\n'
        f"int32_t {function}({proto});\n"
        "int main(void);\n"
        + _CHECK_C
        + "\n"
        + "".join(decls)
        + "\nint main(void)\n{\n    int32_t status;\n    uint32_t bad = 0;\n"
        + "".join(p + "\n" for p in patches)
        + f"    status = {function}({', '.join(call_args)});\n"
        + '    bnn_sh_puts("BNN_CASE status=");\n    bnn_sh_put_dec(status);\n'
        + '    bnn_sh_puts("\\n");\n'
        + status_check
        + "".join(c + "\n" for c in checks)
        + '    bnn_sh_puts(bad == 0u ? "BNN_CASE PASS\\n" : "BNN_CASE FAIL\\n");\n'
        + "    return bad == 0u ? 0 : 1;\n}\n"
    )


def build_case_firmware(
    function: str,
    args: Sequence[Any],
    expected: Mapping[int | tuple[int, str], np.ndarray],
    *,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    include_dirs: Sequence[str | Path] = (),
    expected_status: int | None = 0,
    defines: Iterable[str] = (),
    opt: str = "-O2",
    name: str | None = None,
    array_offset: int = 0,
) -> Path:
    """Build an ``mps2_an500`` firmware that runs one call and checks it (see
    :func:`write_case_source`); run it with :meth:`QemuRunner.run` or
    :meth:`QemuRunner.run_checked`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = write_case_source(function, args, expected, expected_status, array_offset)
    stem = name or f"case_{function}_{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    src = out_dir / f"{stem}.c"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    return cross_compile(
        [src, *sources],
        include_dirs,
        out_dir / f"{stem}.elf",
        board="mps2_an500",
        defines=defines,
        opt=opt,
    )
