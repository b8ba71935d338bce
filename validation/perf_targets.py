"""Issue 8's performance targets in one place: whole networks and the hot kernels.

Network targets are per inference on the Cortex-M7 (STM32H743): flash and RAM as
:func:`bnncube.validation.target.memory_usage` counts them (RAM = .data + .bss + .arena + the
measured stack) and executed instructions (exact, emulated). Kernel targets are instructions per
MAC (per binary MAC for binary convolutions) of one layer of a zoo network, as
``bench/kernels.py`` measures them. KB = 1024 bytes. ``bench/summary.py`` prints and checks
them; ``tests/test_kernel_budgets.py`` guards the hot layers' current counts.
"""

from __future__ import annotations

from dataclasses import dataclass

KB = 1024


@dataclass(frozen=True)
class NetworkTarget:
    """Upper bounds for one network (inclusive)."""

    flash_bytes: int
    ram_bytes: int
    instructions: int


@dataclass(frozen=True)
class KernelTarget:
    """Upper bound of instructions per MAC for one layer of a zoo network (inclusive)."""

    label: str  # what the layer is, for people
    instructions_per_mac: float


NETWORK_TARGETS: dict[str, NetworkTarget] = {
    "hybrid": NetworkTarget(flash_bytes=430 * KB, ram_bytes=110 * KB, instructions=14_000_000),
    "mnv2_i8": NetworkTarget(flash_bytes=900 * KB, ram_bytes=130 * KB, instructions=30_000_000),
}

# (network, layer name) -> target; binary convs per binary MAC
KERNEL_TARGETS: dict[tuple[str, str], KernelTarget] = {
    ("hybrid", "res1_bconv"): KernelTarget("binary conv 48x48 16->24", 0.30),
    ("hybrid", "res3_bconv"): KernelTarget("binary conv 12x12 64->64", 0.30),
    ("hybrid", "head_pw"): KernelTarget("int8 1x1 conv 3x3 128->1280", 1.3),
    ("hybrid", "trans1_pw"): KernelTarget("int8 1x1 conv 24x24 24->24", 1.3),
    ("hybrid", "stem_dw"): KernelTarget("depthwise 3x3 48x48x16", 3.0),
    ("hybrid", "trans1_dw"): KernelTarget("depthwise 3x3 s2 48->24 x24", 3.0),
}

# the hot layers' labels, as bench/kernels.py prints them
HOT_LAYERS: dict[tuple[str, str], str] = {key: t.label for key, t in KERNEL_TARGETS.items()}


def met(value: float | None, limit: float) -> bool | None:
    """Whether ``value`` is within ``limit`` (None when there is no value)."""
    return None if value is None else value <= limit
