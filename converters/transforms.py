"""Integer output transforms of QKeras layers: from real multipliers and offsets to constants.

A quantized layer of a QKeras model computes, in float, ``y = m * acc + b`` per output channel
(``acc`` the exact integer accumulator, ``m`` and ``b`` the folded quantizer scales, bias and
BatchNorm) and then rounds ``y`` to its output grid. bnncube deploys that as integers only
(docs/ir.md, "Deployed op semantics"):

* ``affine``: ``q = clamp(round_half_even((acc * M + B) / 2**S), lo, hi)`` with int32 ``M``,
  int8 ``S`` and int64 ``B`` per channel (:func:`affine_constants`);
* ``threshold`` (a binarized output): bit = ``acc < T`` (``D = 1``), ``acc > T`` (``D = -1``)
  or the constant ``T`` (``D = 0``) (:func:`threshold_constants`);
* ``float`` (an output that stays float32): float32 ``scale`` and ``offset``.

:func:`shift_round_half_even` is the integer rounding every back end reproduces.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from bnncube.errors import BnnError

MAX_ACC = 2**30  # bound on |accumulator| (and on |x - zp| * |M| terms) the transforms allow
_T_LIMIT = 2**61  # |acc * M| and |B| each stay below this, so |acc * M + B| < 2**62


def shift_round_half_even(t: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``t / 2**shift`` rounded to the nearest integer, ties to even (int64, shift >= 1).

    ``(t + 2**(shift-1) - 1 + ((t >> shift) & 1)) >> shift`` with arithmetic shifts: the
    integer form of ``tf.round(t / 2**shift)``.
    """
    t = np.asarray(t, np.int64)
    s = np.asarray(shift, np.int64)
    half = (np.int64(1) << (s - 1)) - 1
    return (t + half + ((t >> s) & 1)) >> s


def _round_even(value: float) -> int:
    """Round a float to the nearest integer, ties to even (exact for float64 inputs)."""
    return int(np.rint(value))


def affine_constants(
    m: np.ndarray, b: np.ndarray, acc_bound: int, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel ``(M int32, S int8, B int64)`` for ``q = round(m * acc + b)``.

    ``|acc| <= acc_bound`` is what the layer's shapes and input ranges allow.  ``S = 31 -
    e`` where ``|m| = f * 2**e`` (f in [0.5, 1)), so ``M = round(m * 2**S)`` keeps 31 bits; S is
    lowered (precision traded) when ``|B| = |b| * 2**S`` would pass 2**61, and ``b`` is first
    clipped to ``acc_bound * |m| + 512``: beyond that every output saturates the same way.
    """
    m = np.asarray(m, np.float64).reshape(-1)
    b = np.broadcast_to(np.asarray(b, np.float64).reshape(-1), m.shape)
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(b))):
        raise BnnError(f"{where}: the folded output scale or offset is not finite (NaN or Inf)")
    if acc_bound >= MAX_ACC:
        raise BnnError(
            f"{where}: the accumulator can reach {acc_bound}, beyond the supported 2**30"
        )
    mult = np.zeros(m.shape, np.int32)
    shift = np.zeros(m.shape, np.int8)
    offset = np.zeros(m.shape, np.int64)
    for c, (mc, bc) in enumerate(zip(m.tolist(), b.tolist(), strict=True)):
        limit = acc_bound * abs(mc) + 512.0
        bc = min(max(bc, -limit), limit)
        if mc == 0.0:
            s = 32
        else:
            s = min(31 - math.frexp(abs(mc))[1], 62)
            if abs(_round_even(mc * 2.0**s)) >= 2**31:
                s -= 1
        s = min(s, 62, 60 - max(int(abs(bc) + 1.0).bit_length(), 1))
        if s < 1:
            raise BnnError(
                f"{where}: output multiplier {mc:g} (offset {bc:g}) is too large for the "
                "integer output transform"
            )
        mult[c] = _round_even(mc * 2.0**s)
        shift[c] = s
        offset[c] = _round_even(bc * 2.0**s)
    return mult, shift, offset


def shared_shift_constants(
    multipliers: list[float], b: float, term_bound: int, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(M int32 [k], S int8 [1], B int64 [1])`` for ``q = round(sum_i m_i * x_i + b)``.

    One shift for all terms (Add: ``x_i = input_i - zp_i``, ``|x_i| <= term_bound``).
    """
    ms = [float(v) for v in multipliers]
    if not all(math.isfinite(v) for v in ms + [b]):
        raise BnnError(f"{where}: a scale or zero point is not finite (NaN or Inf)")
    largest = max(abs(v) for v in ms)
    limit = term_bound * sum(abs(v) for v in ms) + 512.0
    b = min(max(b, -limit), limit)
    s = 32 if largest == 0.0 else min(31 - math.frexp(largest)[1], 62)
    if largest and max(abs(_round_even(v * 2.0**s)) for v in ms) >= 2**31:
        s -= 1
    s = min(s, 62, 60 - max(int(abs(b) + 1.0).bit_length(), 1))
    if s < 1:
        raise BnnError(f"{where}: input/output scale ratio {largest:g} is too large")
    mult = np.asarray([_round_even(v * 2.0**s) for v in ms], np.int32)
    return mult, np.asarray([s], np.int8), np.asarray([_round_even(b * 2.0**s)], np.int64)


def threshold_constants(
    m: np.ndarray, b: np.ndarray, acc_bound: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(T int32, D int8)`` such that ``m * acc + b < 0`` exactly when the bit is set.

    ``m > 0``: ``acc < T`` with ``T = ceil(-b / m)``; ``m < 0``: ``acc > T`` with
    ``T = floor(-b / m)``; ``m == 0``: the constant ``b < 0``.  The division is exact (on the
    float64 values as rationals); T is clipped to ``[-acc_bound - 1, acc_bound + 1]``.
    """
    m = np.asarray(m, np.float64).reshape(-1)
    b = np.broadcast_to(np.asarray(b, np.float64).reshape(-1), m.shape)
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(b))):
        raise BnnError(f"{where}: the folded output scale or offset is not finite (NaN or Inf)")
    thresholds = np.zeros(m.shape, np.int32)
    directions = np.zeros(m.shape, np.int8)
    lo, hi = -acc_bound - 1, acc_bound + 1
    for c, (mc, bc) in enumerate(zip(m.tolist(), b.tolist(), strict=True)):
        if mc == 0.0:
            thresholds[c], directions[c] = int(bc < 0.0), 0
            continue
        ratio = -Fraction(bc) / Fraction(mc)
        t = math.ceil(ratio) if mc > 0 else math.floor(ratio)
        thresholds[c] = min(max(t, lo), hi)
        directions[c] = 1 if mc > 0 else -1
    return thresholds, directions
