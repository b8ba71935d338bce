"""Bit-level reference of the binary ops (numpy): the specification the binary C kernels must meet.

Binary tensors follow DESIGN section 5 (Larq Compute Engine's public conventions):

* values are +1 / -1; a value is stored as one bit, **bit 1 meaning -1** and bit 0 meaning +1;
* activations are NHWC and packed along the channel axis into ``uint32`` words, channel ``c`` in
  word ``c // 32``, bit ``c % 32`` (LSB first), so a row of C channels takes
  :func:`~bnncube.converters.ir.packed_words` ``(C) = ceil(C / 32)`` words; the bits beyond C in
  the last word are 0;
* filters are OHWI, packed along I the same way.

A binary dot product of two packed rows holding K valid elements is
``dot = K - 2 * popcount(a XOR w)``: equal bits multiply to +1, different bits to -1, and the
padding bits beyond C are 0 in both operands, so they never count.

Every function is vectorized over the elements (the convolution loops only over its kernel taps).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bnncube.converters.ir import packed_words

__all__ = [
    "binary_conv_accumulate",
    "bitpack",
    "pack_filters",
    "popcount32",
    "unpack",
]

_BIT_WEIGHTS = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)


def _pack_bits(neg: np.ndarray) -> np.ndarray:
    """Pack a boolean array (True = -1) along its last axis into uint32 words, LSB first."""
    neg = np.asarray(neg, dtype=bool)
    c = neg.shape[-1]
    nw = packed_words(c)
    padded = np.zeros(neg.shape[:-1] + (nw * 32,), dtype=np.uint32)
    padded[..., :c] = neg
    bits = padded.reshape(neg.shape[:-1] + (nw, 32))
    # distinct powers of two: the sum is the bitwise OR, and stays below 2**32
    return (bits * _BIT_WEIGHTS).sum(axis=-1, dtype=np.uint64).astype(np.uint32)


def bitpack(x: np.ndarray, zero_point: int = 0) -> np.ndarray:
    """Bitpack ``x`` [N,H,W,C] (int8 with ``zero_point``, or float with zero point 0).

    Result: uint32 [N,H,W,ceil(C/32)]; ``bit(c) = 1 if x[..., c] < zero_point else 0`` (for
    int8 the comparison is on the quantized value ``x_q``, i.e. real value < 0), stored in word
    ``c // 32`` at bit ``c % 32``.  A value equal to the threshold (real 0, and float ``-0.0``)
    gives bit 0, i.e. +1.  Bits beyond C are 0.  Works on any rank; only the last axis is packed.
    """
    x = np.asarray(x)
    if x.dtype.kind == "f":
        if zero_point != 0:
            raise ValueError("bitpack: float input takes zero_point 0")
        neg = x < 0
    elif x.dtype.kind in "iu":
        neg = x.astype(np.int64) < int(zero_point)
    else:
        raise TypeError(f"bitpack: unsupported dtype {x.dtype}")
    return _pack_bits(neg)


def unpack(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of :func:`bitpack`: uint32 [..., ceil(C/32)] -> int8 [..., C] of +1 / -1.

    ``value(c) = 1 - 2 * ((words[..., c // 32] >> (c % 32)) & 1)``; the padding bits are ignored.
    """
    words = np.asarray(words, dtype=np.uint32)
    channels = int(channels)
    if words.shape[-1] != packed_words(channels):
        raise ValueError(
            f"unpack: {words.shape[-1]} words do not hold {channels} channels "
            f"({packed_words(channels)} expected)"
        )
    bits = (words[..., :, None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    bits = bits.reshape(words.shape[:-1] + (words.shape[-1] * 32,))[..., :channels]
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def pack_filters(w_pm1: np.ndarray) -> np.ndarray:
    """Pack OHWI +1/-1 filters into uint32 [O,KH,KW,ceil(I/32)]: bit 1 where ``w == -1``.

    Raises ``ValueError`` when a value is neither +1 nor -1.
    """
    w = np.asarray(w_pm1)
    if w.ndim != 4:
        raise ValueError(f"pack_filters: OHWI filters expected, got shape {w.shape}")
    if not np.all((w == 1) | (w == -1)):
        raise ValueError("pack_filters: filters must hold only +1 and -1")
    return _pack_bits(w < 0)


def popcount32(words: np.ndarray) -> np.ndarray:
    """Number of 1 bits of each uint32 word (SWAR bit counting, int32 result, same shape)."""
    u = np.uint64
    v = np.asarray(words, dtype=np.uint32).astype(np.uint64)
    v = v - ((v >> u(1)) & u(0x55555555))
    v = (v & u(0x33333333)) + ((v >> u(2)) & u(0x33333333))
    v = (v + (v >> u(4))) & u(0x0F0F0F0F)
    v = ((v * u(0x01010101)) & u(0xFFFFFFFF)) >> u(24)
    return v.astype(np.int32)


def binary_conv_accumulate(
    x_packed: np.ndarray,
    channels: int,
    w_packed: np.ndarray,
    kernel_hw: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    pad_value: int = 0,
) -> np.ndarray:
    """Binary Conv2D accumulator: packed x [N,H,W,ceil(C/32)], packed w [O,KH,KW,ceil(C/32)].

    Output size as in TF: ``Ho = (H + top + bottom - KH) // sh + 1`` (and likewise ``Wo``),
    ``pads = [top, bottom, left, right]``.  Tap ``(i, j)`` of output ``(y, x)`` reads input
    ``(y*sh - top + i, x*sw - left + j)``.  With ``a`` the packed input row there and ``w`` the
    packed filter row ``w[o, i, j]``:

    ``acc[n,y,x,o] = sum over taps of (C - 2 * sum_words popcount(a XOR w))``

    which is the integer ``sum_{i,j,c} x[.., c] * w[o,i,j,c]`` of the +1/-1 values.  Taps outside
    the input depend on ``pad_value``:

    * ``0`` (QKeras: the padding is a real 0, neither +1 nor -1): padded taps contribute nothing,
      i.e. the sum runs only over the valid taps and ``K = C * (number of valid taps)``;
    * ``1`` (Larq one-padding): a padded position holds +1 in every channel (all-zero bits) and
      counts like any other tap: it contributes ``C - 2 * popcount(w)``.

    Range: ``-K <= acc <= K`` with ``acc = K (mod 2)``; ``K = KH * KW * C`` for interior pixels
    (and always with ``pad_value=1``).  Result int32 [N,Ho,Wo,O].
    """
    x = np.asarray(x_packed, dtype=np.uint32)
    w = np.asarray(w_packed, dtype=np.uint32)
    channels = int(channels)
    nw = packed_words(channels)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError("binary_conv_accumulate: x [N,H,W,words] and w [O,KH,KW,words] expected")
    if x.shape[-1] != nw or w.shape[-1] != nw:
        raise ValueError(
            f"binary_conv_accumulate: {channels} channels take {nw} words, got x "
            f"{x.shape[-1]} and w {w.shape[-1]}"
        )
    kh, kw = (int(k) for k in kernel_hw)
    if w.shape[1:3] != (kh, kw):
        raise ValueError(f"binary_conv_accumulate: filter shape {w.shape} vs kernel {kh}x{kw}")
    if pad_value not in (0, 1):
        raise ValueError(f"binary_conv_accumulate: pad_value must be 0 or 1, got {pad_value}")
    sh, sw = (int(s) for s in strides)
    top, bottom, left, right = (int(p) for p in pads)
    n, h, wd, _ = x.shape
    o = w.shape[0]
    oh = (h + top + bottom - kh) // sh + 1
    ow = (wd + left + right - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError("binary_conv_accumulate: empty output")

    # Pad with all-zero words (+1 everywhere) plus a validity mask for zero padding.
    xp = np.zeros((n, h + top + bottom, wd + left + right, nw), dtype=np.uint32)
    xp[:, top : top + h, left : left + wd] = x
    valid = np.zeros((h + top + bottom, wd + left + right), dtype=bool)
    valid[top : top + h, left : left + wd] = True

    acc = np.zeros((n, oh, ow, o), dtype=np.int64)
    ys = np.arange(oh) * sh
    xs = np.arange(ow) * sw
    for i in range(kh):
        for j in range(kw):
            a = xp[:, ys + i][:, :, xs + j]  # [N,Ho,Wo,words]
            diff = popcount32(a[:, :, :, None, :] ^ w[None, None, None, :, i, j, :]).sum(
                axis=-1, dtype=np.int64
            )  # [N,Ho,Wo,O]
            contrib = channels - 2 * diff
            if pad_value == 0:
                mask = valid[ys + i][:, xs + j]  # [Ho,Wo]
                contrib = contrib * mask[None, :, :, None]
            acc += contrib
    return acc.astype(np.int32)
