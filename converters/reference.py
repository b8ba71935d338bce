"""Executable reference of deployed IR graphs (numpy): the specification the C kernels must meet.

:func:`run_graph` runs a lowered :class:`~bnncube.converters.ir.Graph` op by op.  Every op is one
small function registered in :data:`OPS`; its docstring states the exact integer arithmetic.  The
int8 ops reproduce TFLite's *reference* int8 kernels bit for bit (the interpreter created with
``OpResolverType.BUILTIN_REF``).  Helpers shared by the ops:

* :func:`quantize_multiplier` -- TFLite ``QuantizeMultiplier``: a positive real multiplier
  ``m`` becomes ``(q, shift)`` with ``m ~= q * 2**(shift - 31)``, ``q`` in ``[2**30, 2**31)``.
* :func:`multiply_by_quantized_multiplier` -- TFLite ``MultiplyByQuantizedMultiplier``
  (``SaturatingRoundingDoublingHighMul`` of ``x * 2**max(shift, 0)`` by ``q``, then
  ``RoundingDivideByPOT`` by ``max(-shift, 0)``), evaluated in int64 numpy.
* :func:`activation_range` -- TFLite ``CalculateActivationRangeQuantized``.

Multiply-accumulates are computed with float64 matrix products: every product of two int8-range
values is below 2**15 in magnitude, so any sum of fewer than 2**37 of them is an integer exactly
representable in float64, and the result (converted back to int64) is the exact integer sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bnncube.converters.binary_reference import (
    binary_conv_accumulate,
    bitpack,
    pack_filters,
    unpack,
)
from bnncube.converters.ir import (
    Graph,
    Op,
    Quant,
    Tensor,
    fused_ops,
    packed_words,
    transform_of,
)
from bnncube.converters.transforms import shift_round_half_even

_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}
_NP_DTYPES = {
    "float32": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int32": np.int32,
    "int64": np.int64,
}


# --------------------------------------------------------------------------------------------
# fixed-point helpers (TFLite's)
# --------------------------------------------------------------------------------------------


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier``: ``real`` -> ``(q, shift)``, ``real ~= q * 2**(shift-31)``.

    ``(f, shift) = frexp(real)`` (f in [0.5, 1)); ``q = round_half_away(f * 2**31)``; when q
    reaches 2**31 it is halved and shift incremented; a shift below -31 gives (0, 0); real == 0
    gives (0, 0).
    """
    real = float(real)
    if real == 0.0:
        return 0, 0
    if real < 0:
        raise ValueError(f"reference: negative multiplier {real}")
    f, shift = math.frexp(real)
    q = int(math.floor(f * 2**31 + 0.5))  # f > 0: round half away from zero
    if q == 2**31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, shift


def _wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to the int32 range (C int32 arithmetic)."""
    return ((x + 2**31) & 0xFFFFFFFF) - 2**31


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 values held in int64.

    ``ab = a*b`` (64-bit); ``nudge = 2**30`` if ab >= 0 else ``1 - 2**30``;
    result = ``(ab + nudge) / 2**31`` truncated toward zero; a == b == -2**31 saturates to
    2**31 - 1.
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    s = ab + nudge
    # C division truncates toward zero
    q = np.where(s >= 0, s >> 31, -((-s) >> 31))
    overflow = (a == b) & (a == -(2**31))
    return np.where(overflow, np.int64(2**31 - 1), q)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: x / 2**exponent rounded half away from zero.

    ``mask = 2**e - 1; rem = x & mask; threshold = (mask >> 1) + (x < 0)``;
    result = ``(x >> e) + (rem > threshold)`` (arithmetic shift).
    """
    x = np.asarray(x, np.int64)
    e = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > threshold)


def multiply_by_quantized_multiplier(
    x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(x, q, shift)`` (double rounding, int32 x).

    ``left = max(shift, 0)``, ``right = max(-shift, 0)``;
    result = ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**left, q), right)``,
    where ``x * 2**left`` wraps like C int32 arithmetic.
    """
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = _wrap_int32(np.asarray(x, np.int64) << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def _f32(v: Any) -> np.float32:
    return np.float32(v)


def activation_range(activation: str, quant: Quant | None, dtype: str = "int8") -> tuple[int, int]:
    """TFLite ``CalculateActivationRangeQuantized`` for the output tensor's quantization.

    ``quantize(f) = zp + (int)round_half_away(float32(f) / float32(scale))`` (float32 division);
    none/linear: [qmin, qmax]; relu: [max(qmin, quantize(0)), qmax];
    relu6: [max(qmin, quantize(0)), min(qmax, quantize(6))].
    """
    qmin, qmax = _INT_RANGE[dtype]
    if activation in (None, "none", "linear"):
        return qmin, qmax
    scale, zp = _scalar_quant(quant)

    def quantize(f: float) -> int:  # std::round on the float32 quotient: half away from 0
        r = float(_f32(_f32(f) / _f32(scale)))
        return zp + int(math.copysign(math.floor(abs(r) + 0.5), r))

    if activation == "relu":
        return max(qmin, quantize(0.0)), qmax
    if activation == "relu6":
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    raise NotImplementedError(f"reference: fused activation {activation!r} is not implemented")


def _scalar_quant(quant: Quant | None) -> tuple[float, int]:
    if quant is None:
        raise ValueError("reference: a quantized tensor has no quantization parameters")
    return float(quant.scale.reshape(-1)[0]), int(quant.zero_point.reshape(-1)[0])


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """std::round on float32 arrays: the nearest integer, ties away from zero (exact: 0.5 is
    added in float64, where ``|x| + 0.5`` of a float32 below 2**29 needs no rounding)."""
    return np.copysign(np.floor(np.abs(x).astype(np.float64) + 0.5), x).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------------------------


def _pad_hw(x: np.ndarray, pads: list[int], value: Any) -> np.ndarray:
    top, bottom, left, right = (int(p) for p in pads)
    return np.pad(
        x, ((0, 0), (top, bottom), (left, right), (0, 0)), mode="constant", constant_values=value
    )


def _windows(
    xp: np.ndarray,
    k: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """View [N, OH, OW, KH, KW, C] of the padded NHWC array ``xp``."""
    n, h, w, c = xp.shape
    kh, kw = k
    sh, sw = strides
    dh, dw = dilations
    oh, ow = out_hw
    need_h = (oh - 1) * sh + (kh - 1) * dh + 1
    need_w = (ow - 1) * sw + (kw - 1) * dw + 1
    if need_h > h or need_w > w:  # pads shorter than the output needs: extend (never read)
        xp = np.pad(xp, ((0, 0), (0, max(need_h - h, 0)), (0, max(need_w - w, 0)), (0, 0)))
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp,
        shape=(n, oh, ow, kh, kw, c),
        strides=(s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]),
        writeable=False,
    )


# --------------------------------------------------------------------------------------------
# op context
# --------------------------------------------------------------------------------------------


class _Ctx:
    """What an op function sees: the graph, the op and the values computed so far."""

    def __init__(self, graph: Graph, op: Op, values: dict[str, np.ndarray]):
        self.graph = graph
        self.op = op
        self.values = values

    def t(self, i: int) -> Tensor:
        return self.graph.tensors[self.op.inputs[i]]

    def x(self, i: int) -> np.ndarray:
        name = self.op.inputs[i]
        if name in self.values:
            return self.values[name]
        t = self.graph.tensors[name]
        if t.data is None:
            raise ValueError(f"reference: op {self.op.name!r}: input {name!r} has no value")
        return np.asarray(t.data)

    @property
    def out(self) -> Tensor:
        return self.graph.tensors[self.op.outputs[0]]

    @property
    def n_inputs(self) -> int:
        return len(self.op.inputs)


def _is_int8_op(ctx: _Ctx) -> bool:
    return ctx.t(0).dtype in ("int8", "uint8") and ctx.out.dtype in ("int8", "uint8")


def tflite_channel_multipliers(
    s_in: float, w_scales: Any, s_out: float, channels: int, float_product: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(q, shift)`` of TFLite's requantization of a MAC op (int64 arrays).

    ``real = double(f32(s_in)) * double(f32(s_w[o])) / double(f32(s_out))``; with
    ``float_product`` (Dense with a per-tensor weight scale, TFLite's
    GetQuantizedConvolutionMultipler) the two input scales are multiplied in float32 first.
    ``(q, shift) = QuantizeMultiplier(real)``.
    """
    ws = np.broadcast_to(np.asarray(w_scales, np.float64).reshape(-1), (channels,))
    mult = np.empty(channels, np.int64)
    shift = np.empty(channels, np.int64)
    for c in range(channels):
        if float_product:
            real = float(_f32(s_in) * _f32(ws[c])) / float(_f32(s_out))
        else:
            real = float(_f32(s_in)) * float(_f32(ws[c])) / float(_f32(s_out))
        mult[c], shift[c] = quantize_multiplier(real)
    return mult, shift


def multiply_by_quantized_multiplier_single(
    x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    """TFLite's single-rounding ``MultiplyByQuantizedMultiplier`` (its per-channel int8
    FULLY_CONNECTED reference kernel): with ``x`` wrapped to int32 (as the int32 accumulator plus
    bias wraps) and ``total = 31 - shift``, ``(x * q + 2**(total - 1)) >> total`` in int64
    (``total == 0``: ``x * q``), saturated to int32."""
    total = 31 - np.asarray(shift, np.int64)
    t = _wrap_int32(np.asarray(x, np.int64)) * np.asarray(multiplier, np.int64)
    half = np.where(total > 0, np.int64(1) << np.maximum(total - 1, 0), 0)
    y = (t + half) >> total
    return np.clip(y, -(2**31), 2**31 - 1)


def _requantize_per_channel(
    acc: np.ndarray,
    ctx: _Ctx,
    w_scales: np.ndarray,
    float_product: bool = False,
    single_rounding: bool = False,
) -> np.ndarray:
    """acc (int64, channels last) -> output int8 with the op's activation."""
    s_in, _ = _scalar_quant(ctx.t(0).quant)
    s_out, zp_out = _scalar_quant(ctx.out.quant)
    mult, shift = tflite_channel_multipliers(s_in, w_scales, s_out, acc.shape[-1], float_product)
    if single_rounding:
        y = multiply_by_quantized_multiplier_single(acc, mult, shift) + zp_out
    else:
        y = multiply_by_quantized_multiplier(acc, mult, shift) + zp_out
    lo, hi = activation_range(ctx.op.attrs.get("activation", "none"), ctx.out.quant, ctx.out.dtype)
    return np.clip(y, lo, hi).astype(_NP_DTYPES[ctx.out.dtype])


def _check_plain(ctx: _Ctx) -> None:
    for key in ("channel_scale", "channel_offset"):
        if key in ctx.op.attrs:
            raise NotImplementedError(
                f"reference: op {ctx.op.name!r} ({ctx.op.type}) still carries a folded float "
                f"output transform ({key}); lower the graph first"
            )


def _bias(ctx: _Ctx, channels: int, dtype: Any = np.int64) -> np.ndarray:
    if ctx.n_inputs > 2 and ctx.op.inputs[2]:
        return np.asarray(ctx.x(2), dtype).reshape(-1)
    return np.zeros(channels, dtype)


def _float_activation(y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "relu6":
        return np.clip(y, 0, 6)
    return y


def _affine(ctx: _Ctx, t: np.ndarray, first: int) -> np.ndarray:
    """``clamp(round_half_even(t / 2**S), lo, hi)``; ``t`` holds ``acc * M`` (or
    the sum of the input terms) and ``B`` (input ``first + 2``) still to add."""
    shift = np.asarray(ctx.x(first + 1), np.int64).reshape(-1)
    offset = np.asarray(ctx.x(first + 2), np.int64).reshape(-1)
    q = shift_round_half_even(t + offset, shift)
    lo, hi = ctx.op.attrs["clamp"]
    return np.clip(q, lo, hi).astype(_NP_DTYPES[ctx.out.dtype])


def _mac_output(
    ctx: _Ctx,
    acc: np.ndarray,
    w_scales: Any = None,
    per_tensor: bool = False,
    single_rounding: bool = False,
):
    """Turn the integer accumulator ``acc`` (int64, channels last) into the op's output.

    ``tflite``: bias added, then :func:`_requantize_per_channel`; ``affine``:
    ``clamp(round_half_even((acc * M + B) / 2**S), lo, hi)`` (int64 arithmetic, see
    :func:`~bnncube.converters.transforms.shift_round_half_even`); ``float``:
    ``f32(f32(f32(acc) * scale) + offset)`` then the activation; ``threshold``: the packed bits
    ``acc < T`` (D = 1), ``acc > T`` (D = -1) or ``T`` (D = 0).
    """
    transform = transform_of(ctx.op)
    if transform == "tflite":
        acc = acc + _bias(ctx, acc.shape[-1])
        return _requantize_per_channel(
            acc, ctx, w_scales, float_product=per_tensor, single_rounding=single_rounding
        )
    constants = [np.asarray(ctx.x(i)) for i in range(2, ctx.n_inputs)]
    y = output_transform(transform, acc, constants, ctx.op.attrs)
    if transform == "affine":
        return y.astype(_NP_DTYPES[ctx.out.dtype])
    return y


def output_transform(
    transform: str, acc: np.ndarray, constants: list[np.ndarray], attrs: dict[str, Any]
) -> np.ndarray:
    """The explicit output transforms of a MAC op on its accumulator ``acc`` (channels last).

    ``constants`` are the op's constant inputs after its data inputs (docs/ir.md), ``attrs`` its
    attributes (``clamp``, ``activation``).  ``affine``: ``clamp(round_half_even((acc * M + B)
    / 2**S), lo, hi)`` (int64); ``float``: ``f32(f32(f32(acc) * scale) + offset)`` then the
    activation (float32); ``threshold``: packed bits ``acc < T`` (D = 1), ``acc > T`` (D = -1)
    or ``T`` (D = 0) (uint32 words).
    """
    acc = np.asarray(acc, np.int64)
    if transform == "affine":
        mult, shift, offset = (np.asarray(c, np.int64).reshape(-1) for c in constants[:3])
        q = shift_round_half_even(acc * mult + offset, shift)
        lo, hi = attrs["clamp"]
        return np.clip(q, lo, hi)
    if transform == "float":
        scale = np.asarray(constants[0], np.float32).reshape(-1)
        offset = np.asarray(constants[1], np.float32).reshape(-1)
        y = (acc.astype(np.float32) * scale).astype(np.float32) + offset
        return _float_activation(y.astype(np.float32), attrs.get("activation", "none"))
    if transform == "lce":
        return lce_transform(acc, constants, attrs)
    if transform == "threshold":
        t = np.asarray(constants[0], np.int64).reshape(-1)
        d = np.asarray(constants[1], np.int64).reshape(-1)
        neg = np.where(d > 0, acc < t, np.where(d < 0, acc > t, t != 0))
        return bitpack(np.where(neg, -1, 1).astype(np.int8), 0)  # bit 1 where negative
    raise NotImplementedError(f"reference: output transform {transform!r} is not implemented")


def lce_transform(
    acc: np.ndarray,
    constants: list[np.ndarray],
    attrs: dict[str, Any],
    correction: np.ndarray | None = None,
    border: np.ndarray | None = None,
) -> np.ndarray:
    """Larq Compute Engine's ``LceBconv2d`` float / int8 output (transform ``"lce"``).

    ``acc`` is the one-padded +1/-1 sum (every one of the ``K = attrs["lce_k"]`` taps counts, a
    padded tap as +1), so that LCE's XOR popcount is ``p = (K - acc) / 2``.  ``constants`` are
    LCE's folded per-channel float32 ``multiplier = f32(-m / s)`` and ``bias = f32((b + K * m)
    / s + zp)`` (``m``, ``b`` the stored ``post_activation_multiplier`` / ``_bias``; ``s, zp`` the
    int8 output scale and zero point, 1 and 0 for float output; computed in double).  Then

    ``x = clamp(2 * p, lo, hi)`` (int32, ``(lo, hi) = attrs["lce_clamp"]``: LCE's fused
    activation range ``[a, b]`` of ``acc`` as ``[K - min(b, K), K - max(a, -K)]``),
    ``y = f32(f32(f32(x) * multiplier[o]) + bias[o])`` (two roundings, no fused multiply-add).

    Zero padding (float output only): at every output pixel whose window holds a padded tap
    (``border``), ``y = f32(y + f32(multiplier[o] * corr))`` with ``corr`` (``correction``) the
    sum of the filter's +1/-1 values over the padded taps (``multiplier = -m`` there).

    ``attrs["lce_output"]`` ``"float32"``: ``y``; ``"int8"``: ``clamp(round_half_away(y), -128,
    127)`` (TfLiteRound; int64 result).
    """
    acc = np.asarray(acc, np.int64)
    k = int(attrs["lce_k"])
    lo, hi = (int(v) for v in attrs["lce_clamp"])
    mult = np.asarray(constants[0], np.float32).reshape(-1)
    bias = np.asarray(constants[1], np.float32).reshape(-1)
    x = np.clip(k - acc, lo, hi).astype(np.float32)
    y = ((x * mult).astype(np.float32) + bias).astype(np.float32)
    if correction is not None and border is not None:
        fix = (np.asarray(correction, np.int64).astype(np.float32) * mult).astype(np.float32)
        y = np.where(border[..., None], (y + fix).astype(np.float32), y).astype(np.float32)
    if attrs.get("lce_output", "float32") == "float32":
        return y
    r = np.clip(_round_half_away(y).astype(np.float64), -128, 127)
    return r.astype(np.int64)


def _border_mask(
    in_hw: tuple[int, int], k: tuple[int, int], strides: Any, pads: Any, out_hw: tuple[int, int]
) -> np.ndarray:
    """bool [OH, OW]: the output pixels whose window holds a tap outside the input."""
    axes = []
    for axis in range(2):
        start = np.arange(out_hw[axis]) * int(strides[axis]) - int(pads[2 * axis])
        axes.append((start < 0) | (start + k[axis] > in_hw[axis]))
    return axes[0][:, None] | axes[1][None, :]


def _int_input(ctx: _Ctx) -> bool:
    return ctx.t(0).dtype in ("int8", "uint8")


# --------------------------------------------------------------------------------------------
# ops
# --------------------------------------------------------------------------------------------


def conv2d(ctx: _Ctx) -> np.ndarray:
    """Conv2D, int8 x [N,H,W,C], int8 w [O,KH,KW,C] (per-channel scale s_w[o]).

    ``acc[n,y,x,o] = sum_{i,j,c} w[o,i,j,c] * (x[n, y*sh - top + i*dh, x*sw - left + j*dw, c]
    - zp_in)`` over the taps inside the input (taps in the padding count 0, i.e. the input is
    padded with its zero point), exact (int32 in C, int64 here).  Output by the op's
    ``output_transform`` (:func:`_mac_output`).  ``tflite``: ``acc += bias[o]``, then
    ``clamp(MultiplyByQuantizedMultiplier(acc, q[o], shift[o]) + zp_out, act_min, act_max)``
    with ``(q[o], shift[o]) = QuantizeMultiplier(double(s_in) * double(s_w[o]) /
    double(s_out))`` and the activation range of :func:`activation_range`.
    Float32 models: the same sum in float64 (bias added, activation applied), cast to float32.
    """
    _check_plain(ctx)
    a = ctx.op.attrs
    x, w = ctx.x(0), ctx.x(1)
    o, kh, kw, c = w.shape
    out_hw = ctx.out.shape[1:3]
    quantized = _int_input(ctx)
    zp_in = _scalar_quant(ctx.t(0).quant)[1] if quantized else 0
    xp = _pad_hw(x.astype(np.float64) - zp_in, a.get("pads", [0] * 4), 0.0)
    win = _windows(xp, (kh, kw), a.get("strides", (1, 1)), a.get("dilations", (1, 1)), out_hw)
    n, oh, ow = win.shape[:3]
    cols = win.reshape(n * oh * ow, kh * kw * c)
    acc = cols @ w.reshape(o, kh * kw * c).astype(np.float64).T
    acc = acc.reshape(n, oh, ow, o)
    if quantized:
        return _mac_output(ctx, np.rint(acc).astype(np.int64), ctx.t(1).quant.scale)
    y = acc + _bias(ctx, o, np.float64)
    return _float_activation(y, a.get("activation", "none")).astype(np.float32)


def depthwise_conv2d(ctx: _Ctx) -> np.ndarray:
    """DepthwiseConv2D, int8 x [N,H,W,C], int8 w [1,KH,KW,C*M].

    Output channel ``oc = c*M + m`` reads input channel ``c``:
    ``acc[n,y,x,oc] = sum_{i,j} w[0,i,j,oc] * (x[n, y*sh - top + i*dh, x*sw - left + j*dw, c]
    - zp_in)`` over taps inside the input; output as :func:`conv2d` (``tflite``: bias added and
    requantized per output channel).
    """
    _check_plain(ctx)
    a = ctx.op.attrs
    x, w = ctx.x(0), ctx.x(1)
    _, kh, kw, cm = w.shape
    c = x.shape[3]
    m = int(a.get("depth_multiplier", cm // c))
    quantized = _int_input(ctx)
    zp_in = _scalar_quant(ctx.t(0).quant)[1] if quantized else 0
    xp = _pad_hw(x.astype(np.float64) - zp_in, a.get("pads", [0] * 4), 0.0)
    win = _windows(
        xp, (kh, kw), a.get("strides", (1, 1)), a.get("dilations", (1, 1)), ctx.out.shape[1:3]
    )
    wf = w.reshape(kh, kw, c, m).astype(np.float64)
    acc = np.einsum("nyxijc,ijcm->nyxcm", win, wf, optimize=True)
    acc = acc.reshape(acc.shape[:3] + (c * m,))
    if quantized:
        return _mac_output(ctx, np.rint(acc).astype(np.int64), ctx.t(1).quant.scale)
    y = acc + _bias(ctx, c * m, np.float64)
    return _float_activation(y, a.get("activation", "none")).astype(np.float32)


def dense(ctx: _Ctx) -> np.ndarray:
    """Dense (TFLite FULLY_CONNECTED), int8 x flattened to [B, K], int8 w [O, K].

    ``acc[b,o] = sum_k w[o,k] * (x[b,k] - zp_in)``; output as :func:`conv2d`, except that for
    ``tflite`` with a per-tensor weight scale the real multiplier is
    ``double(float32(s_in * s_w)) / double(s_out)`` (TFLite's GetQuantizedConvolutionMultipler
    multiplies the two scales in float32 first); per-channel weights use the conv formula.
    """
    _check_plain(ctx)
    x, w = ctx.x(0), ctx.x(1)
    o, k = w.shape
    quantized = _int_input(ctx)
    zp_in = _scalar_quant(ctx.t(0).quant)[1] if quantized else 0
    xf = x.astype(np.float64).reshape(-1, k) - zp_in
    acc = xf @ w.astype(np.float64).T
    if quantized:
        wq = ctx.t(1).quant
        per_tensor = wq is not None and not wq.is_per_channel
        scales = wq.scale if wq is not None else None
        # TFLite's per-channel FULLY_CONNECTED reference kernel rounds once (measured on
        # mnv2_i8: double rounding differs on 4 of 100 inputs); per-tensor and conv: twice
        y = _mac_output(
            ctx, np.rint(acc).astype(np.int64), scales, per_tensor, single_rounding=not per_tensor
        )
    else:
        y = _float_activation(acc + _bias(ctx, o, np.float64), ctx.op.attrs.get("activation"))
        y = y.astype(np.float32)
    return y.reshape(ctx.out.shape)


def binary_conv2d(ctx: _Ctx) -> np.ndarray:
    """BinaryConv2D: packed binary x [N,H,W,ceil(C/32)], +1/-1 filters w [O,KH,KW,C].

    ``acc[n,y,x,o] = sum over taps of (C - 2 * popcount(x_row XOR w_row))``, the integer sum of
    the +1/-1 products (:func:`~bnncube.converters.binary_reference.binary_conv_accumulate`):
    ``pad_value`` 0 (QKeras) leaves the taps outside the input out, ``pad_value`` 1 (Larq)
    counts them as +1 inputs.  Output by the op's ``output_transform`` (``affine`` int8,
    ``float`` float32 or ``threshold`` packed bits; :func:`_mac_output`).
    """
    _check_plain(ctx)
    a = ctx.op.attrs
    if tuple(a.get("dilations", (1, 1))) != (1, 1):
        raise NotImplementedError(f"reference: op {ctx.op.name!r}: dilated binary convolution")
    w = ctx.x(1)
    o, kh, kw, c = w.shape
    strides, pads = a.get("strides", (1, 1)), a.get("pads", (0, 0, 0, 0))
    pad_value = int(a.get("pad_value", 0))
    packed_w = pack_filters(w)
    acc = binary_conv_accumulate(ctx.x(0), c, packed_w, (kh, kw), strides, pads, pad_value).astype(
        np.int64
    )
    if transform_of(ctx.op) == "lce":
        constants = [np.asarray(ctx.x(i)) for i in range(2, ctx.n_inputs)]
        if pad_value == 1 or not any(int(p) for p in pads):
            return lce_transform(acc, constants, a)
        one = binary_conv_accumulate(ctx.x(0), c, packed_w, (kh, kw), strides, pads, 1)
        one = one.astype(np.int64)
        border = _border_mask(ctx.t(0).shape[1:3], (kh, kw), strides, pads, ctx.out.shape[1:3])
        return lce_transform(one, constants, a, one - acc, border)
    if transform_of(ctx.op) == "tflite":
        raise NotImplementedError(
            f"reference: op {ctx.op.name!r}: BinaryConv2D needs an output "
            "transform (affine, float or threshold)"
        )
    return _mac_output(ctx, acc)


def bitpack_op(ctx: _Ctx) -> np.ndarray:
    """Bitpack: int8 x (bit 1 where ``x < zero_point``) or float32 x (bit 1 where ``x < 0``;
    0.0 and -0.0 give 0) -> packed uint32 [N,H,W,ceil(C/32)], LSB first, bits beyond C zero
    (:func:`~bnncube.converters.binary_reference.bitpack`)."""
    x = ctx.x(0)
    if ctx.t(0).dtype == "float32":
        return bitpack(np.asarray(x, np.float32))
    return bitpack(x, _scalar_quant(ctx.t(0).quant)[1])


def tflite_add_multipliers(
    s_a: float, s_b: float, s_out: float
) -> tuple[int, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """TFLite int8 ADD constants: ``(left_shift, (qa, sa), (qb, sb), (qo, so))`` (see
    :func:`add`)."""
    left_shift = 20
    twice_max = float(np.float32(2) * max(_f32(s_a), _f32(s_b)))
    a = quantize_multiplier(float(_f32(s_a)) / twice_max)
    b = quantize_multiplier(float(_f32(s_b)) / twice_max)
    o = quantize_multiplier(twice_max / float(_f32((1 << left_shift) * _f32(s_out))))
    return left_shift, a, b, o


def add(ctx: _Ctx) -> np.ndarray:
    """Add (TFLite int8 ADD), with numpy broadcasting of a and b.

    ``left_shift = 20``; ``twice_max = 2 * max(s_a, s_b)``;
    ``(qa, sa) = QuantizeMultiplier(s_a / twice_max)``, ``(qb, sb)`` likewise,
    ``(qo, so) = QuantizeMultiplier(twice_max / (2**20 * s_out))`` (scales float32, divisions in
    double).  Then ``a' = MBQM((a - zp_a) * 2**20, qa, sa)``,
    ``b' = MBQM((b - zp_b) * 2**20, qb, sb)``,
    ``y = clamp(MBQM(a' + b', qo, so) + zp_out, act_min, act_max)``, MBQM being
    :func:`multiply_by_quantized_multiplier`.  Float32: a + b then the activation.
    ``affine`` (QKeras): ``t = (a - zp_a) * M[0] + (b - zp_b) * M[1] + B[0]``,
    ``y = clamp(round_half_even(t / 2**S[0]), lo, hi)``.
    """
    a, b = ctx.x(0), ctx.x(1)
    act = ctx.op.attrs.get("activation", "none")
    if transform_of(ctx.op) == "affine":
        _, zp_a = _scalar_quant(ctx.t(0).quant)
        _, zp_b = _scalar_quant(ctx.t(1).quant)
        mult = np.asarray(ctx.x(2), np.int64).reshape(-1)
        t = (a.astype(np.int64) - zp_a) * mult[0] + (b.astype(np.int64) - zp_b) * mult[1]
        return _affine(ctx, t, 2).reshape(ctx.out.shape)
    if not _is_int8_op(ctx):
        y = _float_activation(a.astype(np.float32) + b.astype(np.float32), act)
        return y.astype(np.float32)
    s_a, zp_a = _scalar_quant(ctx.t(0).quant)
    s_b, zp_b = _scalar_quant(ctx.t(1).quant)
    s_o, zp_o = _scalar_quant(ctx.out.quant)
    left_shift, (qa, sa), (qb, sb), (qo, so) = tflite_add_multipliers(s_a, s_b, s_o)
    av = multiply_by_quantized_multiplier((a.astype(np.int64) - zp_a) << left_shift, qa, sa)
    bv = multiply_by_quantized_multiplier((b.astype(np.int64) - zp_b) << left_shift, qb, sb)
    y = multiply_by_quantized_multiplier(_wrap_int32(av + bv), qo, so) + zp_o
    lo, hi = activation_range(act, ctx.out.quant, ctx.out.dtype)
    return np.clip(y, lo, hi).astype(_NP_DTYPES[ctx.out.dtype]).reshape(ctx.out.shape)


def _pool_windows(ctx: _Ctx, x: np.ndarray, fill: Any) -> tuple[np.ndarray, np.ndarray]:
    a = ctx.op.attrs
    pads = a.get("pads", [0] * 4)
    k = tuple(a["pool"])
    strides = tuple(a.get("strides", k))
    out_hw = ctx.out.shape[1:3]
    win = _windows(_pad_hw(x, pads, fill), k, strides, (1, 1), out_hw)
    ones = np.ones((1,) + x.shape[1:3] + (1,), np.int64)
    valid = _windows(_pad_hw(ones, pads, 0), k, strides, (1, 1), out_hw)
    return win, valid


def average_pool2d(ctx: _Ctx) -> np.ndarray:
    """AveragePool2D (TFLite int8 reference): only taps inside the input count.

    ``sum = sum of x over the valid taps`` (raw int8 values, no zero point), ``n`` = number of
    valid taps; ``avg = (sum + n/2) / n`` if sum > 0 else ``(sum - n/2) / n`` (C integer
    division, truncating: round half away from zero); ``y = clamp(avg, act_min, act_max)``.
    Input and output share their quantization (TFLite requires it).  Float32: sum / n.
    """
    x = ctx.x(0)
    act = ctx.op.attrs.get("activation", "none")
    if not _is_int8_op(ctx):
        win, valid = _pool_windows(ctx, x.astype(np.float32), 0.0)
        s = win.sum(axis=(3, 4), dtype=np.float32)
        n = valid.sum(axis=(3, 4)).astype(np.float32)
        return _float_activation(s / n, act).astype(np.float32)
    win, valid = _pool_windows(ctx, x.astype(np.int64), 0)
    s = win.sum(axis=(3, 4))
    n = valid.sum(axis=(3, 4))
    num = np.where(s > 0, s + n // 2, s - n // 2)
    avg = np.sign(num) * (np.abs(num) // n)  # truncating division
    lo, hi = activation_range(act, ctx.out.quant, ctx.out.dtype)
    return np.clip(avg, lo, hi).astype(_NP_DTYPES[ctx.out.dtype])


def max_pool2d(ctx: _Ctx) -> np.ndarray:
    """MaxPool2D: ``y = clamp(max of x over the taps inside the input, act_min, act_max)``."""
    x = ctx.x(0)
    act = ctx.op.attrs.get("activation", "none")
    if not _is_int8_op(ctx):
        win, _ = _pool_windows(ctx, x.astype(np.float32), -np.inf)
        return _float_activation(win.max(axis=(3, 4)), act).astype(np.float32)
    win, _ = _pool_windows(ctx, x.astype(np.int64), -(2**40))
    m = win.max(axis=(3, 4))
    lo, hi = activation_range(act, ctx.out.quant, ctx.out.dtype)
    return np.clip(m, lo, hi).astype(_NP_DTYPES[ctx.out.dtype])


def mean(ctx: _Ctx) -> np.ndarray:
    """Mean over ``axes`` (TFLite int8 MEAN, reference kernel of TFLite 2.x reduce.h).

    ``n`` = number of reduced elements; ``(q, shift) = QuantizeMultiplier(double(s_in) /
    double(s_out))``; ``k = min(floor(log2 n), 32, 31 + shift)``;
    ``q' = (q * 2**k) / n`` (int64, truncating), ``shift' = shift - k``;
    ``y = clamp(MultiplyByQuantizedMultiplier(sum(x) - zp_in * n, q', shift') + zp_out,
    -128, 127)``.  Float32: float64 mean cast to float32.
    """
    x = ctx.x(0)
    axes = tuple(int(a) for a in ctx.op.attrs.get("axes", (1, 2)))
    if not _is_int8_op(ctx):
        return x.astype(np.float64).mean(axis=axes).astype(np.float32).reshape(ctx.out.shape)
    s_in, zp_in = _scalar_quant(ctx.t(0).quant)
    s_out, zp_out = _scalar_quant(ctx.out.quant)
    n = int(np.prod([x.shape[a] for a in axes]))
    total = x.astype(np.int64).sum(axis=axes)
    q, shift = quantize_multiplier(float(_f32(s_in)) / float(_f32(s_out)))
    k = min(n.bit_length() - 1, 32, 31 + shift)
    q2 = (q << k) // n
    shift2 = shift - k
    y = multiply_by_quantized_multiplier(_wrap_int32(total - zp_in * n), q2, shift2) + zp_out
    lo, hi = _INT_RANGE[ctx.out.dtype]
    return np.clip(y, lo, hi).astype(_NP_DTYPES[ctx.out.dtype]).reshape(ctx.out.shape)


def reshape(ctx: _Ctx) -> np.ndarray:
    """Reshape: the same values in row-major order, with the output tensor's shape."""
    return np.asarray(ctx.x(0)).reshape(ctx.out.shape)


def pad(ctx: _Ctx) -> np.ndarray:
    """Pad H and W by ``pads`` [top, bottom, left, right] with the zero point (0.0 for float)."""
    x = ctx.x(0)
    fill = _scalar_quant(ctx.out.quant)[1] if ctx.out.dtype in ("int8", "uint8") else 0
    return _pad_hw(x, ctx.op.attrs["pads"], fill).astype(x.dtype)


def quantize(ctx: _Ctx) -> np.ndarray:
    """Quantize. float32 -> int8: ``y = clamp((int)round_half_away(float32(x / s_out)) + zp_out)``
    (TFLite AffineQuantize, float32 division).  int8 -> int8 (requantize):
    ``(q, shift) = QuantizeMultiplier(double(s_in) / double(s_out))``,
    ``y = clamp(MultiplyByQuantizedMultiplier(x - zp_in, q, shift) + zp_out)``.
    QKeras (``rounding="half_even"``, ``qrange``): float input rounded half to even and clamped to
    the quantizer's range; a NaN input gives the range's low end; int8 input with the ``affine``
    transform:
    ``y = clamp(round_half_even(((x - zp_in) * M[0] + B[0]) / 2**S[0]), lo, hi)``.
    """
    x = ctx.x(0)
    s_out, zp_out = _scalar_quant(ctx.out.quant)
    lo, hi = ctx.op.attrs.get("qrange", _INT_RANGE[ctx.out.dtype])
    if transform_of(ctx.op) == "affine":
        _, zp_in = _scalar_quant(ctx.t(0).quant)
        mult = int(np.asarray(ctx.x(1)).reshape(-1)[0])
        return _affine(ctx, (x.astype(np.int64) - zp_in) * mult, 1)
    if ctx.t(0).dtype == "float32":
        q = x.astype(np.float32) / np.float32(s_out)
        if ctx.op.attrs.get("rounding", "half_away") == "half_even":
            r = np.rint(q)
        else:
            r = _round_half_away(q)
        nan = np.isnan(r)  # NaN gives the range's low end (the C kernel's contract)
        r = np.where(nan, 0.0, r)
        y = np.clip(r.astype(np.float64), -(2.0**31), 2.0**31 - 1).astype(np.int64) + zp_out
        y = np.where(nan, lo, y)
    else:
        s_in, zp_in = _scalar_quant(ctx.t(0).quant)
        q, shift = quantize_multiplier(float(_f32(s_in)) / float(_f32(s_out)))
        y = multiply_by_quantized_multiplier(x.astype(np.int64) - zp_in, q, shift) + zp_out
    return np.clip(y, lo, hi).astype(_NP_DTYPES[ctx.out.dtype])


def dequantize(ctx: _Ctx) -> np.ndarray:
    """Dequantize: ``y = float32(double(s) * (x - zp))`` (equal to the float32 product, since
    the product of a float32 and a 9-bit integer is exact in double)."""
    if ctx.t(0).dtype == "binary":
        return _dequantize_binary(ctx)
    s, zp = _scalar_quant(ctx.t(0).quant)
    y = float(_f32(s)) * (ctx.x(0).astype(np.float64) - zp)
    return y.astype(np.float32)


def _dequantize_binary(ctx: _Ctx) -> np.ndarray:
    """Dequantize of a packed binary tensor (LCE's ``LceDequantize``): float32 output +1.0 (bit
    0) / -1.0 (bit 1); int8 output ``min(127, zp + r)`` / ``max(-128, zp - r)`` with ``r =
    round_half_away(f32(1 / f32(scale)))``."""
    pm1 = unpack(ctx.x(0), ctx.t(0).shape[-1])
    if ctx.out.dtype == "float32":
        return pm1.astype(np.float32)
    s, zp = _scalar_quant(ctx.out.quant)
    r = int(_round_half_away(np.asarray([np.float32(1) / _f32(s)], np.float32))[0])
    return np.where(pm1 > 0, min(127, zp + r), max(-128, zp - r)).astype(_NP_DTYPES[ctx.out.dtype])


OPS: dict[str, Callable[[_Ctx], np.ndarray]] = {
    "Conv2D": conv2d,
    "DepthwiseConv2D": depthwise_conv2d,
    "Dense": dense,
    "Add": add,
    "AveragePool2D": average_pool2d,
    "MaxPool2D": max_pool2d,
    "Mean": mean,
    "Reshape": reshape,
    "Pad": pad,
    "Quantize": quantize,
    "Dequantize": dequantize,
    "BinaryConv2D": binary_conv2d,
    "Bitpack": bitpack_op,
}


# --------------------------------------------------------------------------------------------
# running a graph
# --------------------------------------------------------------------------------------------


def packed_shape(tensor: Tensor) -> tuple[int, ...]:
    """Shape of a binary tensor's packed value: the channel axis becomes ``ceil(C/32)`` words."""
    return tensor.shape[:-1] + (packed_words(tensor.shape[-1]),)


def run_graph(
    graph: Graph,
    inputs: dict[str, np.ndarray] | list[np.ndarray],
    outputs_only: bool = True,
) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``inputs`` (by name, or a list in ``graph.inputs`` order).

    Returns ``{output name: array}``, or with ``outputs_only=False`` the value of every
    non-constant tensor (graph inputs included).  Raises :class:`NotImplementedError` for an op
    type without a reference implementation.
    """
    if isinstance(inputs, dict):
        missing = [n for n in graph.inputs if n not in inputs]
        if missing:
            raise ValueError(f"reference: missing graph inputs {missing}")
        given = {n: inputs[n] for n in graph.inputs}
    else:
        if len(inputs) != len(graph.inputs):
            raise ValueError(
                f"reference: {len(inputs)} inputs given, the graph has {len(graph.inputs)}"
            )
        given = dict(zip(graph.inputs, inputs, strict=True))
    values: dict[str, np.ndarray] = {}
    for name, arr in given.items():
        t = graph.tensors[name]
        arr = np.asarray(arr)
        if tuple(arr.shape) != t.shape:
            raise ValueError(f"reference: input {name!r} has shape {arr.shape}, expected {t.shape}")
        if t.dtype not in _NP_DTYPES:
            raise NotImplementedError(f"reference: input {name!r} of dtype {t.dtype}")
        values[name] = arr.astype(_NP_DTYPES[t.dtype])
    for op in graph.ops:
        fn = OPS.get(op.type)
        if fn is None:
            raise NotImplementedError(
                f"reference: op type {op.type} is not implemented yet; "
                f"implemented: {', '.join(OPS)}"
            )
        if len(op.outputs) != 1:
            raise NotImplementedError(f"reference: op {op.name!r} has {len(op.outputs)} outputs")
        inner = fused_ops(op)
        for part in inner[:-1]:  # a fused op: its ops one by one, as before the fusion
            values[part.outputs[0]] = _store(graph, part, OPS[part.type](_Ctx(graph, part, values)))
        last = inner[-1] if inner else op
        values[op.outputs[0]] = _store(graph, op, OPS[last.type](_Ctx(graph, last, values)))
    if outputs_only:
        return {n: values[n] for n in graph.outputs}
    return values


def _store(graph: Graph, op: Op, y: Any) -> np.ndarray:
    """``op``'s result ``y`` in the representation of its output tensor."""
    out = graph.tensors[op.outputs[0]]
    if out.dtype == "binary":
        return np.asarray(y, np.uint32).reshape(packed_shape(out))
    return np.asarray(y).astype(_NP_DTYPES[out.dtype], copy=False).reshape(out.shape)
