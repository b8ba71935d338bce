"""The integer output transforms (converters/transforms.py) against exact rational arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnncube.converters.ir import Graph, Op, Quant, Tensor
from bnncube.converters.reference import OPS, _Ctx
from bnncube.converters.transforms import (
    affine_constants,
    shared_shift_constants,
    shift_round_half_even,
    threshold_constants,
)
from bnncube.errors import BnnError


def _round_half_even(value: Fraction) -> int:
    floor = math.floor(value)
    rest = value - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        return floor + 1
    return floor


@settings(max_examples=500, deadline=None)
@given(st.integers(-(2**61), 2**61), st.integers(1, 62))
def test_shift_round_half_even_is_exact(t: int, shift: int) -> None:
    got = int(shift_round_half_even(np.asarray([t], np.int64), shift)[0])
    assert got == _round_half_even(Fraction(t, 2**shift))


def test_shift_round_half_even_ties() -> None:
    t = np.asarray([1, 3, 5, -1, -3, -5, 2, -2], np.int64)  # /2: 0.5 1.5 2.5 -0.5 ... 1 -1
    assert shift_round_half_even(t, 1).tolist() == [0, 2, 2, 0, -2, -2, 1, -1]


_multipliers = st.one_of(
    st.floats(-4.0, 4.0, allow_nan=False),
    st.floats(1e-9, 1e-3),
    st.floats(-1e-3, -1e-9),
    st.just(0.0),
    st.sampled_from([2.0**-k for k in range(0, 20)]),
)


@settings(max_examples=300, deadline=None)
@given(
    _multipliers,
    st.floats(-3000.0, 3000.0, allow_nan=False),
    st.integers(1, 2**24),
    st.integers(0, 2**32),
)
def test_affine_constants_round_like_the_real_value(
    m: float, b: float, bound: int, seed: int
) -> None:
    mult, shift, offset = affine_constants(np.asarray([m]), np.asarray([b]), bound, "test")
    M, S, B = int(mult[0]), int(shift[0]), int(offset[0])
    assert 1 <= S <= 62 and abs(M) < 2**31
    rng = np.random.default_rng(seed)
    acc = np.concatenate([rng.integers(-bound, bound + 1, 64), [bound, -bound, 0]])
    t = acc.astype(np.int64) * M + B
    assert np.all(np.abs(t) < 2**62)
    q = shift_round_half_even(t, S)
    limit = bound * abs(m) + 512.0
    for a, qa in zip(acc.tolist(), q.tolist(), strict=True):
        real = Fraction(m) * a + Fraction(min(max(b, -limit), limit))
        # M = round(m * 2**S) and B = round(b * 2**S) are off by at most 2**-(S+1) each: the
        # result is the nearest integer to the real value, up to (|acc| + 1) * 2**-(S+1)
        assert abs(qa - real) <= Fraction(1, 2) + Fraction(abs(a) + 1, 2 ** (S + 1))
        if abs(real) < 300:  # where 8-bit outputs live, that error is below 1e-6 of an LSB
            assert abs(qa - real) <= Fraction(1, 2) + Fraction(1, 10**6)
            assert real == Fraction(m) * a + Fraction(b)  # and the clip of b changed nothing


def test_affine_constants_powers_of_two_are_exact() -> None:
    # QKeras without BatchNorm: power-of-two scales, integral offsets: exactly tf.round
    m = np.asarray([2.0**-3, 2.0**-7, 1.0, -(2.0**-2)])
    b = np.asarray([-128.0, 0.0, 5.0, 3.0])
    mult, shift, offset = affine_constants(m, b, 2**20, "test")
    acc = np.arange(-1000, 1000, dtype=np.int64)[:, None]
    q = shift_round_half_even(acc * mult.astype(np.int64) + offset, shift.astype(np.int64))
    expected = np.rint(acc * m + b)  # float64 is exact here; rint rounds ties to even
    assert np.array_equal(q, expected.astype(np.int64))


def test_affine_constants_errors() -> None:
    with pytest.raises(BnnError, match="not finite"):
        affine_constants(np.asarray([np.nan]), np.asarray([0.0]), 10, "layer 'x'")
    with pytest.raises(BnnError, match="layer 'x'.*too large"):
        affine_constants(np.asarray([2.0**40]), np.asarray([0.0]), 10, "layer 'x'")
    with pytest.raises(BnnError, match="accumulator"):
        affine_constants(np.asarray([1.0]), np.asarray([0.0]), 2**31, "layer 'x'")


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-2.0, 2.0, allow_nan=False),
    st.floats(-100.0, 100.0, allow_nan=False),
    st.integers(1, 300),
)
def test_threshold_constants_are_exact(m: float, b: float, bound: int) -> None:
    t, d = threshold_constants(np.asarray([m]), np.asarray([b]), bound, "test")
    acc = np.arange(-bound, bound + 1, dtype=np.int64)
    if d[0] > 0:
        bits = acc < t[0]
    elif d[0] < 0:
        bits = acc > t[0]
    else:
        bits = np.full(acc.shape, bool(t[0]))
    expected = [Fraction(m) * a + Fraction(b) < 0 for a in acc.tolist()]
    assert bits.tolist() == expected


def test_shared_shift_constants_add() -> None:
    mult, shift, offset = shared_shift_constants([0.5, 0.25], -3.0, 255, "test")
    a = np.arange(-255, 256, dtype=np.int64)
    q = shift_round_half_even(a * int(mult[0]) + 7 * int(mult[1]) + int(offset[0]), int(shift[0]))
    assert np.array_equal(q, np.rint(a * 0.5 + 7 * 0.25 - 3.0).astype(np.int64))


# --------------------------------------------------------------------------------------------
# Quantize op: both roundings, and the int8 -> int8 affine form
# --------------------------------------------------------------------------------------------


def _quantize_graph(rounding: str | None, in_dtype: str = "float32") -> Graph:
    g = Graph("q")
    in_quant = Quant.per_tensor(0.5, 3) if in_dtype == "int8" else None
    g.add_tensor(Tensor("x", (1, 8), in_dtype, in_quant))
    g.add_tensor(Tensor("y", (1, 8), "int8", Quant.per_tensor(0.25, -2)))
    attrs = {"rounding": rounding} if rounding else {}
    g.add_op(Op("q", "Quantize", ["x"], ["y"], attrs))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def test_quantize_roundings() -> None:
    x = np.asarray([[0.125, 0.375, -0.125, -0.375, 100.0, -100.0, 0.0, 0.2]], np.float32)
    # x / 0.25 = 0.5 1.5 -0.5 -1.5 400 -400 0 0.8, then + zero point -2, clamped
    away = OPS["Quantize"](_Ctx(_quantize_graph(None), _quantize_graph(None).ops[0], {"x": x}))
    assert away.tolist() == [[-1, 0, -3, -4, 127, -128, -2, -1]]
    g = _quantize_graph("half_even")
    even = OPS["Quantize"](_Ctx(g, g.ops[0], {"x": x}))
    assert even.tolist() == [[-2, 0, -2, -4, 127, -128, -2, -1]]


def test_quantize_int8_affine() -> None:
    g = _quantize_graph(None, "int8")
    op = g.ops[0]
    # real = 0.5 * (x - 3); y = real / 0.25 - 2 = 2 * (x - 3) - 2
    mult, shift, offset = shared_shift_constants([0.5 / 0.25], -2.0, 255, "test")
    op.inputs += [
        g.add_const("m", mult, "int32"),
        g.add_const("s", shift, "int8"),
        g.add_const("o", offset, "int64"),
    ]
    op.attrs.update(output_transform="affine", clamp=(-128, 127))
    x = np.asarray([[-128, -60, 0, 3, 4, 40, 70, 127]], np.int8)
    y = OPS["Quantize"](_Ctx(g, op, {"x": x}))
    expected = np.clip(2 * (x.astype(np.int64) - 3) - 2, -128, 127)
    assert np.array_equal(y, expected)
