"""The QKeras affine requantization of the C runtime (bnn_requant.h ``bnn_affine``), case by case.

``clamp(round_half_even((acc * M + B) / 2^S), lo, hi)`` is computed by the kernels from the
rounding-ready offset R = B + 2^(S-1) (what ``bnn_output_t.a_offset`` holds) on the two 32-bit
halves of the 64-bit sum. Here it is checked against Python's exact integers on random cases over
the whole contract (any int32 acc and M, 1 <= S <= 62, |R| < 2^62, any bounds), on exact ties and
their neighbours, and on the edges, on the host (also under the sanitizers through
``BNN_C_SANITIZE``) and on the emulated Cortex-M7.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnncube.runtime_c import SRC_DIR
from bnncube.runtime_c.build import build_host_library
from bnncube.runtime_c.cabi import HostBackend
from bnncube.validation import emulator as em

FIXTURE = Path(__file__).parent / "c_fixtures" / "affine_fixture.c"
LIMIT = 1 << 62  # |R| < 2^62: the kernels' contract

# The cases are (acc, M, R, S, lo, hi) with R the rounding-ready offset B + 2^(S-1).


@pytest.fixture(scope="module", params=["host", "m7"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    build_dir = tmp_path_factory.mktemp("affine")
    if request.param == "host":
        sanitize = os.environ.get("BNN_C_SANITIZE") == "1"
        lib = build_host_library(
            build_dir, sources=[FIXTURE], include_dirs=[SRC_DIR], sanitize=sanitize
        )
        return HostBackend(Path(lib))
    if not em.toolchain_available():
        pytest.skip(f"{em.ARM_GCC} is not installed (`make setup` installs it as root)")
    return em.UnicornBackend(em.cross_compile([FIXTURE], [SRC_DIR], build_dir / "affine.elf"))


def expected(acc: int, mult: int, ready: int, shift: int, lo: int, hi: int) -> int:
    t = acc * mult + ready - (1 << (shift - 1))  # acc * M + B
    q, r = t >> shift, t & ((1 << shift) - 1)  # floor and remainder, exact
    half = 1 << (shift - 1)
    if r > half or (r == half and q & 1):
        q += 1
    return min(max(q, lo), hi)


def run(backend: Any, cases: list[tuple[int, int, int, int, int, int]]) -> np.ndarray:
    n = len(cases)
    cols = list(zip(*cases, strict=True))
    acc = np.asarray(cols[0], np.int32)
    mult = np.asarray(cols[1], np.int32)
    offset = np.asarray(cols[2], np.int64)
    shift = np.asarray(cols[3], np.int8)
    bounds = np.asarray([v for lo, hi in zip(cols[4], cols[5], strict=True) for v in (lo, hi)])
    out = np.zeros(n, np.int32)
    args = (acc, mult, offset, shift, bounds.astype(np.int32), n, out)
    assert backend.call("fx_affine_batch", *args) == n
    return out


def random_cases(rng: np.random.Generator, n: int) -> list[tuple[int, int, int, int, int, int]]:
    cases = []
    i32 = (-(1 << 31), (1 << 31) - 1)
    for _ in range(n):
        shift = int(rng.integers(1, 63))
        # magnitudes spread over many scales, edges included
        acc = int(rng.choice([rng.integers(*i32, endpoint=True), rng.integers(-300, 301)]))
        mult = int(rng.choice([rng.integers(*i32, endpoint=True), rng.integers(1 << 30, 1 << 31)]))
        bits = int(rng.integers(0, 62))
        offset = int(rng.integers(-(1 << bits), (1 << bits) + 1))
        if rng.random() < 0.05:
            offset = int(rng.choice([LIMIT - 1, -LIMIT + 1]))
        if rng.random() < 0.5:
            lo, hi = -128, 127
        elif rng.random() < 0.5:
            lo, hi = i32
        else:
            lo, hi = sorted(int(v) for v in rng.integers(-200, 200, 2))
        cases.append((acc, mult, offset, shift, lo, hi))
    return cases


def tie_cases(rng: np.random.Generator) -> list[tuple[int, int, int, int, int, int]]:
    """t = (q + 1/2) * 2^S exactly, and t +- 1, for q of both parities and signs."""
    cases = []
    for shift in range(1, 63):
        for q in (-129, -128, -2, -1, 0, 1, 2, 3, 126, 127, int(rng.integers(-(1 << 20), 1 << 20))):
            tie = q * (1 << shift) + (1 << (shift - 1))
            for delta in (-1, 0, 1):
                acc, mult = int(rng.integers(-1000, 1001)), int(rng.integers(-(1 << 31), 1 << 31))
                ready = tie + delta - acc * mult + (1 << (shift - 1))
                if abs(ready) < LIMIT:
                    bounds = (-(1 << 31), (1 << 31) - 1) if rng.random() < 0.5 else (-128, 127)
                    cases.append((acc, mult, ready, shift, *bounds))
    return cases


def edge_cases() -> list[tuple[int, int, int, int, int, int]]:
    i32min, i32max = -(1 << 31), (1 << 31) - 1
    cases = []
    for shift in (1, 2, 30, 31, 32, 33, 61, 62):
        for acc in (i32min, i32max, -1, 0, 1):
            for mult in (i32min, i32max, -1, 1):
                for offset in (-LIMIT + 1, LIMIT - 1, 0, -1):
                    for lo, hi in ((i32min, i32max), (-128, 127), (0, 0), (i32max, i32max)):
                        cases.append((acc, mult, offset, shift, lo, hi))
    return cases


@pytest.mark.parametrize("kind", ["random", "ties", "edges"])
def test_affine_exact(backend: Any, kind: str) -> None:
    rng = np.random.default_rng(7)
    if kind == "random":
        cases = random_cases(rng, 3000 if isinstance(backend, HostBackend) else 1500)
    elif kind == "ties":
        cases = tie_cases(rng)
    else:
        cases = edge_cases()
    got = run(backend, cases)
    want = np.asarray([expected(*c) for c in cases], np.int64)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} of {len(cases)} differ, first {cases[bad[0]]}: " + (
        f"{got[bad[0]]} != {want[bad[0]]}"
    )
    if kind == "ties":
        assert len(cases) > 1500


@pytest.fixture(scope="module", params=["host", "m7"])
def runtime(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, m7_runtime: Any
) -> Any:
    """The whole runtime for the Add kernel: on the host (sanitized under BNN_C_SANITIZE), and
    on the emulated Cortex-M7, where the affine Add runs its assembly loops."""
    from bnncube.runtime_c.build import runtime_sources

    sanitize = os.environ.get("BNN_C_SANITIZE") == "1"
    if request.param == "m7":
        if sanitize:
            pytest.skip("the sanitizer run covers the host builds only")
        return m7_runtime(plain=False)
    build_dir = tmp_path_factory.mktemp("add")
    return HostBackend(
        Path(build_host_library(build_dir, sources=runtime_sources(), sanitize=sanitize))
    )


@pytest.mark.parametrize("shift", [1, 2, 17, 30, 31, 32, 33, 40, 61, 62])
def test_add_affine_every_shift(runtime: Any, shift: int) -> None:
    """bnn_add_s8's affine path (computed apart for shift < 32 and >= 32) against Python's exact
    integers: every pair of int8 values, random multipliers and offsets, and tie-heavy constants
    (each sum an odd multiple of 2^(shift-1) for half of the pairs)."""
    from bnncube.runtime_c.cabi import OUT_AFFINE, Struct

    rng = np.random.default_rng(shift)
    a = np.repeat(np.arange(-128, 128, dtype=np.int8), 256)
    b = np.tile(np.arange(-128, 128, dtype=np.int8), 256)
    half = 1 << (shift - 1)
    cases = [  # (M_a, M_b, B): random over the contract (|B| < 2^61 here)
        (
            int(rng.integers(-(1 << 31), 1 << 31)),
            int(rng.integers(-(1 << 31), 1 << 31)),
            int(rng.integers(-(1 << 61), 1 << 61)),
        )
        for _ in range(2)
    ]
    # ties: M a power of two and B a multiple of it, plus a multiple of 2^shift
    m = 1 << min(shift - 1, 30)
    step = int(rng.integers(-(1 << max(0, 60 - shift)), 1 << max(0, 60 - shift))) << shift
    cases.append((m, m, (half if shift - 1 > 30 else 0) + step))
    cases.append((m, -m, (-half - m if shift - 1 > 30 else 0) - step))
    for ma, mb, offset in cases:
        za, zb = (int(v) for v in rng.integers(-128, 128, 2))
        lo, hi = (-128, 127) if rng.random() < 0.5 else (-20, 90)
        params = Struct(
            "bnn_add_params_t",
            kind=OUT_AFFINE,
            a_zero_point=za,
            b_zero_point=zb,
            affine_mult0=ma,
            affine_mult1=mb,
            affine_shift=shift,
            affine_offset=offset,
            act_min=lo,
            act_max=hi,
        )
        out = np.zeros(a.size, np.int8)
        assert runtime.call("bnn_add_s8", params, a.size, a, b, out) == 0
        want = [
            expected(1, (int(x) - za) * ma + (int(y) - zb) * mb + offset + half, 0, shift, lo, hi)
            for x, y in zip(a.tolist(), b.tolist(), strict=True)
        ]
        bad = np.flatnonzero(out != np.asarray(want))
        assert bad.size == 0, (ma, mb, offset, za, zb, int(a[bad[0]]), int(b[bad[0]]))
