"""QKeras quantizers as bnncube understands them.

Each supported quantizer maps to a deployed element type and an affine grid
(real = step * (q - zero_point)):

* ``quantized_bits(b, i)``, b <= 8 -> int8, zero point 0, step = 2**(i - b + 1),
  q in [-2**(b-1), 2**(b-1) - 1] (symmetric=1 drops the lowest level);
  ``alpha="auto"/"auto_po2"`` gives a per-channel step (weights only).
* ``quantized_bits(b, i, keep_negative=False)`` -> int8, zero point -128, step = 2**(i - b).
* ``quantized_relu(b, i)``, b <= 8 -> int8, zero point -128, step = 2**(i - b).
* ``binary(alpha=1)`` -> binary, +1 / -1 (0 maps to +1); ``alpha="auto"``: per-channel scale.
* ``quantized_bits(b, i)``, b > 8 -> int32, for bias quantizers only.

Anything else is refused with a message that lists this table's quantizers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnncube.errors import BnnError

SUPPORTED_QUANTIZERS = "quantized_bits(bits<=8), quantized_relu(bits<=8), binary(alpha=1|'auto')"


@dataclass(frozen=True)
class QSpec:
    """What a quantizer means once deployed."""

    dtype: str  # "int8" | "binary" | "int32"
    step: float  # real value of one integer step (for alpha=auto: the step before channel scale)
    zero_point: int
    per_channel: bool  # alpha="auto"/"auto_po2": the scale comes from the weights
    relu: bool  # the grid has no negative values
    text: str  # the quantizer as QKeras prints it
    qmin: int = -128  # the deployed integers it can produce (zero point included)
    qmax: int = 127


def describe(quantizer: object) -> str:
    return str(quantizer)


def _po2(value: object) -> float:
    return float(2.0 ** float(np.asarray(value)))


def quantizer_spec(quantizer: object, where: str, *, allow_wide: bool = False) -> QSpec:
    """Interpret a QKeras quantizer object; ``where`` names the layer/role for errors."""
    import qkeras

    name = type(quantizer).__name__
    text = describe(quantizer)
    if isinstance(quantizer, qkeras.binary):
        if getattr(quantizer, "use_01", False):
            raise BnnError(
                f"{where}: quantizer {text} (use_01=True, values 0/1) is not supported; "
                f"supported: {SUPPORTED_QUANTIZERS}"
            )
        alpha = quantizer.alpha
        per_channel = isinstance(alpha, str)
        if not per_channel and alpha not in (None, 1, 1.0):
            raise BnnError(
                f"{where}: quantizer {text} with alpha={alpha!r} is not supported; "
                f"supported: {SUPPORTED_QUANTIZERS}"
            )
        return QSpec("binary", 1.0, 0, per_channel, False, text, -1, 1)
    if isinstance(quantizer, qkeras.quantized_relu):
        bits = int(quantizer.bits)
        if bits > 8:
            raise BnnError(f"{where}: {text} has {bits} bits; supported: {SUPPORTED_QUANTIZERS}")
        if getattr(quantizer, "negative_slope", 0.0):
            raise BnnError(f"{where}: {text} (leaky) is not supported; {SUPPORTED_QUANTIZERS}")
        step = _po2(float(quantizer.integer) - bits)
        # is_quantized_clip (the default) clips to the top level: integers 0 .. 2**bits - 1
        return QSpec("int8", step, -128, False, True, text, -128, 2**bits - 1 - 128)
    if isinstance(quantizer, qkeras.quantized_bits):
        bits = int(quantizer.bits)
        alpha = quantizer.alpha
        per_channel = isinstance(alpha, str)
        if not per_channel and alpha not in (None, 1, 1.0):
            raise BnnError(
                f"{where}: {text}: a fixed alpha={alpha!r} is not supported; "
                f"use alpha=1, 'auto' or 'auto_po2'"
            )
        if bits > 8:
            if not allow_wide:
                raise BnnError(
                    f"{where}: {text} has {bits} bits; supported: {SUPPORTED_QUANTIZERS}"
                )
            return QSpec(
                "int32",
                _po2(float(quantizer.integer) - bits + 1),
                0,
                False,
                False,
                text,
                -(2**31),
                2**31 - 1,
            )
        if quantizer.keep_negative:
            low = -(2 ** (bits - 1)) + int(bool(getattr(quantizer, "symmetric", 0)))
            return QSpec(
                "int8",
                _po2(float(quantizer.integer) - bits + 1),
                0,
                per_channel,
                False,
                text,
                low,
                2 ** (bits - 1) - 1,
            )
        return QSpec(
            "int8",
            _po2(float(quantizer.integer) - bits),
            -128,
            per_channel,
            True,
            text,
            -128,
            2**bits - 1 - 128,
        )
    raise BnnError(
        f"{where}: quantizer {name} ({text}) is not supported; supported: {SUPPORTED_QUANTIZERS}"
    )


def quantize_weights(
    quantizer: object,
    weights: np.ndarray,
    spec: QSpec,
    where: str,
    to_ir: Callable[[np.ndarray], np.ndarray],
    channel_axis: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the trained quantizer to float weights and return (integers, per-channel steps).

    ``weights`` are in Keras' layout, where QKeras computes its per-channel scales
    (``alpha="auto"/"auto_po2"``); ``to_ir`` maps an array of that shape to the IR layout, whose
    output-channel axis is ``channel_axis``.  The integers are exact: QKeras' own output divided
    by the step must be integral (checked), and the step must be one value per output channel.
    Binary weights come back as int8 +1/-1 with step 1 (or the per-channel alpha).
    """
    import tensorflow as tf

    q = np.asarray(quantizer(tf.constant(weights, tf.float32)), dtype=np.float64)
    if spec.per_channel:
        scale = np.asarray(quantizer.scale, dtype=np.float64)
        if spec.dtype != "binary":
            m = 2.0 ** (int(quantizer.bits) - int(bool(quantizer.keep_negative)))
            scale = scale * 2.0 ** float(quantizer.integer) / m
        try:
            step = np.broadcast_to(scale, weights.shape)
        except ValueError:
            raise BnnError(
                f"{where}: {spec.text}: scale of shape {scale.shape} does not fit the weights "
                f"{weights.shape}"
            ) from None
    else:
        step = np.full(weights.shape, spec.step, np.float64)
    if not np.all(np.isfinite(step)) or not np.all(np.isfinite(q)):
        raise BnnError(f"{where}: weights or their scale are NaN or Inf")
    safe = np.where(step == 0, 1.0, step)
    ints = np.rint(q / safe)
    if np.max(np.abs(q / safe - ints), initial=0.0) > 1e-3:
        raise BnnError(f"{where}: weights quantized by {spec.text} do not fall on its grid")
    ints, step = to_ir(ints), to_ir(step)
    per_channel = np.moveaxis(step, channel_axis, 0).reshape(step.shape[channel_axis], -1)
    if not np.all(per_channel == per_channel[:, :1]):
        raise BnnError(
            f"{where}: {spec.text} gives scales that vary within an output channel; "
            "supported: one scale per output channel"
        )
    steps = per_channel[:, 0].astype(np.float64)
    if spec.dtype == "binary":
        ints = np.where(ints >= 0, 1, -1)
    ints = np.clip(ints + (spec.zero_point if spec.dtype == "int8" else 0), -128, 127)
    return ints.astype(np.int8), steps
