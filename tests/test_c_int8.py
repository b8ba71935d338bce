"""The int8 C kernels (runtime_c/src/bnn_*_s8.c) against the Python reference, bit for bit.

Every kernel runs on seeded random data and its output is compared with the reference op
(``converters/reference.py``, called through ``OPS`` on a one-op graph) or helper with
``np.array_equal`` (float32 outputs: on their bit patterns).  The constants given to the C
kernels are computed the way the lowering and the TFLite front end compute them
(``quantize_multiplier`` for ``tflite``, ``affine_constants`` / ``shared_shift_constants`` for
``affine``).  Each kernel also has a test that bad arguments return ``BNN_ERROR_ARGUMENT`` and
leave the output untouched.

Kernels are called through ``backend.call`` only, so the same tests can run on another backend
(the emulated Cortex-M7).  With ``BNN_C_SANITIZE=1`` the ``backend`` fixture builds the library
with AddressSanitizer and UndefinedBehaviorSanitizer (``tests/test_c_sanitize.py`` runs this file
that way, with the ASan runtime preloaded).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnncube.converters.ir import Graph, Op, Quant, Tensor
from bnncube.converters.reference import (
    OPS,
    _Ctx,
    activation_range,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
)
from bnncube.converters.transforms import affine_constants, shared_shift_constants
from bnncube.runtime_c import SRC_DIR
from bnncube.runtime_c.build import build_host_library
from bnncube.runtime_c.cabi import (
    ACT_NONE,
    ACT_RELU,
    ACT_RELU6,
    BNN_ERROR_ARGUMENT,
    BNN_OK,
    F32,
    OUT_AFFINE,
    OUT_FLOAT,
    OUT_TFLITE,
    OUT_THRESHOLD,
    ROUND_HALF_AWAY,
    ROUND_HALF_EVEN,
    HostBackend,
    Struct,
    dims,
)
from bnncube.validation.kernel_calls import conv2d_scratch_bytes, rounding_ready

SANITIZE_ENV = "BNN_C_SANITIZE"  # "1": build the library with ASan + UBSan
SENTINEL = 0x5A  # byte value output buffers start with
ACTIVATIONS = {"none": ACT_NONE, "relu": ACT_RELU, "relu6": ACT_RELU6}
F32_ONE_PLUS = float(np.float32(1 + 2**-23))  # with F32_ONE_MINUS: a Q31 multiplier that
F32_ONE_MINUS = float(np.float32(1 - 2**-23))  # rounds up to 2**31 (QuantizeMultiplier halves it)


@pytest.fixture(scope="module", params=["host", "m7", "m7-plain"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, m7_runtime: Any
) -> Any:
    """The C runtime, built once per module: on the host (sanitized when BNN_C_SANITIZE=1), and
    cross-compiled for the Cortex-M7 and run in Unicorn, with its DSP paths (``m7``) and with
    the plain C paths (``m7-plain``, ``BNN_FORCE_PLAIN_C``)."""
    sanitize = os.environ.get(SANITIZE_ENV) == "1"
    build_dir = tmp_path_factory.mktemp("bnn_c")
    if request.param != "host":
        if sanitize:
            pytest.skip("the sanitizer run covers the host build only")
        return m7_runtime(plain=request.param == "m7-plain")
    # SRC_DIR among the include dirs: its internal headers (bnn_requant.h) enter the build hash
    library = build_host_library(build_dir, include_dirs=[SRC_DIR], sanitize=sanitize)
    return HostBackend(Path(library))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _f32(v: float) -> float:
    return float(np.float32(v))


def _int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def _sentinel(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.full(int(np.prod(shape)) * np.dtype(dtype).itemsize, SENTINEL, np.uint8).view(dtype)


def _assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    """Bit-for-bit equality (float32 compared on their bit patterns, so -0.0 != 0.0)."""
    expected = np.ascontiguousarray(expected).reshape(-1)
    got = got.reshape(-1)
    assert got.dtype == expected.dtype
    if got.dtype == np.float32:
        got, expected = got.view(np.uint32), expected.view(np.uint32)
    if not np.array_equal(got, expected):
        bad = np.flatnonzero(got != expected)
        raise AssertionError(
            f"{bad.size} of {got.size} differ; first at {bad[:8].tolist()}: "
            f"C {got[bad[:8]].tolist()} reference {expected[bad[:8]].tolist()}"
        )


def _one_op_graph(
    op_type: str,
    inputs: list[Tensor],
    output: Tensor,
    attrs: dict[str, Any],
) -> Graph:
    g = Graph("one_op")
    for t in inputs:
        g.add_tensor(t)
    g.add_tensor(output)
    g.add_op(Op("op", op_type, [t.name for t in inputs], [output.name], attrs))
    g.inputs = [t.name for t in inputs if t.data is None]
    g.outputs = [output.name]
    return g


def _reference(graph: Graph, values: dict[str, np.ndarray]) -> np.ndarray:
    op = graph.ops[0]
    return np.asarray(OPS[op.type](_Ctx(graph, op, values)))


def _ctx() -> Struct:
    return Struct("bnn_context_t", buf=None, size=0)


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geo:
    """A window geometry: input h x w, kernel kh x kw, strides, dilations, padding."""

    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: str | tuple[int, int, int, int] = "valid"  # or explicit [top, bottom, left, right]

    def pads(self) -> tuple[int, int, int, int]:
        if isinstance(self.padding, tuple):
            return self.padding
        if self.padding == "valid":
            return (0, 0, 0, 0)
        top, bottom = _same_pads(self.h, self.kh, self.stride[0], self.dilation[0])
        left, right = _same_pads(self.w, self.kw, self.stride[1], self.dilation[1])
        return (top, bottom, left, right)

    def out_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.pads()
        eff_h = (self.kh - 1) * self.dilation[0] + 1
        eff_w = (self.kw - 1) * self.dilation[1] + 1
        return (
            (self.h + top + bottom - eff_h) // self.stride[0] + 1,
            (self.w + left + right - eff_w) // self.stride[1] + 1,
        )

    def attrs(self) -> dict[str, Any]:
        return {
            "strides": self.stride,
            "dilations": self.dilation,
            "pads": list(self.pads()),
        }

    def params(self, zp_in: int = 0, depth_multiplier: int = 1) -> Struct:
        top, _, left, _ = self.pads()
        return Struct(
            "bnn_conv_params_t",
            stride_h=self.stride[0],
            stride_w=self.stride[1],
            dilation_h=self.dilation[0],
            dilation_w=self.dilation[1],
            pad_top=top,
            pad_left=left,
            depth_multiplier=depth_multiplier,
            input_zero_point=zp_in,
        )


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding: (before, after), the extra one after."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


# --------------------------------------------------------------------------------------------
# output transforms of MAC ops: constants for the reference graph and the C struct
# --------------------------------------------------------------------------------------------

S_IN = _f32(F32_ONE_PLUS * 2.0**-6)  # input scale (mantissa 1 + 2**-23: see the Q31 edge)
S_OUT = 2.0**-2


@dataclass
class MacOutput:
    """One output transform of a MAC op: reference inputs/attrs and the C ``bnn_output_t``."""

    kind: str
    consts: list[Tensor]
    attrs: dict[str, Any]
    out_dtype: str
    out_quant: Quant | None
    w_scales: np.ndarray
    struct: Struct


def _weight_scales(rng: np.random.Generator, channels: int, k_len: int) -> np.ndarray:
    """Per-channel weight scales: ordinary ones plus the Q31 edges of QuantizeMultiplier.

    Channel 1: a real multiplier (1 - 2**-46) * 2**-12, whose Q31 value rounds to 2**31 (halved
    by QuantizeMultiplier); 2: 2**-34 (shift < -31: multiplier 0); 3: 0.6 * 2**-31 (shift -31);
    4: 3.3 (a left shift); the others about 1 / (400 * sqrt(K)) so outputs spread over int8.
    """
    base = 2.0 ** rng.uniform(-3.0, 1.0, channels) / (400.0 * math.sqrt(k_len))
    reals = base.copy()
    specials = {2: 2.0**-34, 3: 0.6 * 2.0**-31, 4: 3.3}
    for c, real in specials.items():
        if c < channels:
            reals[c] = real
    scales = (reals * S_OUT / S_IN).astype(np.float32)
    if channels > 1:
        scales[1] = np.float32(F32_ONE_MINUS * 2.0**-8)  # S_IN * this / S_OUT = (1-2**-46)*2**-12
    return scales.astype(np.float64)


def _tflite_output(
    rng: np.random.Generator,
    channels: int,
    k_len: int,
    zp_out: int,
    activation: str,
    per_tensor: bool = False,
    fast_only: bool = False,
) -> MacOutput:
    """``fast_only``: channels 2 and 4 (multiplier 0, a left shift) get the right shifts 2 and
    3 instead (large multipliers, many saturated outputs), channel 3 (shift -31) the right
    shift 22, the largest the M7's fast store takes, and channels 5 and 6 the largest biases
    it takes (|acc + bias| < 2^30 for every |acc| <= 128 * 255 * k_len), so that every channel
    is one it takes (bnn_tflite_fast_ok, bnn_tflite_bias_ok)."""
    ws = _weight_scales(rng, 1 if per_tensor else channels, k_len)
    if fast_only:
        for c, real in ((2, 0.2), (3, 0.6 * 2.0**-22), (4, 0.124)):
            if c < channels:
                ws[c] = _f32(real) * S_OUT / S_IN
    mults, shifts = [], []
    for c in range(channels):
        s_w = ws[0] if per_tensor else ws[c]
        if per_tensor:  # TFLite's GetQuantizedConvolutionMultipler: float32 product first
            real = float(np.float32(S_IN) * np.float32(s_w)) / _f32(S_OUT)
        else:
            real = _f32(S_IN) * _f32(s_w) / _f32(S_OUT)
        q, s = quantize_multiplier(real)
        mults.append(q)
        shifts.append(s)
    if channels > 1 and not per_tensor:
        assert mults[1] == 2**30, "the Q31 rounding edge was not reached"
    out_quant = Quant.per_tensor(S_OUT, zp_out)
    lo, hi = activation_range(activation, out_quant)
    bias = rng.integers(-(2**12), 2**12, channels).astype(np.int32)
    edge = 2**30 - 1 - 128 * 255 * k_len  # the largest |bias| of the fast store
    if channels > 5:  # near the int32 limits: acc + bias wraps like int32 (as the reference)
        bias[5] = edge if fast_only else 2**31 - 7
    if channels > 6:
        bias[6] = -edge if fast_only else -(2**31) + 3
    struct = Struct(
        "bnn_output_t",
        kind=OUT_TFLITE,
        bias=bias,
        q_mult=np.asarray(mults, np.int32),
        q_shift=np.asarray(shifts, np.int32),
        out_zero_point=zp_out,
        act_min=lo,
        act_max=hi,
    )
    consts = [Tensor("bias", (channels,), "int32", data=bias)]
    return MacOutput("tflite", consts, {"activation": activation}, "int8", out_quant, ws, struct)


def _affine_transform(
    mult: np.ndarray, shift: np.ndarray, offset: np.ndarray, clamp: tuple[int, int]
) -> tuple[list[Tensor], dict[str, Any], Struct]:
    """The affine output transform's IR constants and attrs, and its C ``bnn_output_t`` (the
    rounding-ready offset), for per-channel constants from affine_constants."""
    c = mult.size
    consts = [
        Tensor("multiplier", (c,), "int32", data=mult),
        Tensor("shift", (c,), "int8", data=shift),
        Tensor("offset", (c,), "int64", data=offset),
    ]
    struct = Struct(
        "bnn_output_t",
        kind=OUT_AFFINE,
        a_mult=mult,
        a_shift=shift,
        a_offset=rounding_ready(offset, shift),
        act_min=clamp[0],
        act_max=clamp[1],
        out_zero_point=99,  # unused by the affine transform
    )
    return consts, {"output_transform": "affine", "clamp": clamp}, struct


def _affine_output(
    rng: np.random.Generator, channels: int, acc_bound: int, k_len: int, clamp: tuple[int, int]
) -> MacOutput:
    m = rng.choice([-1.0, 1.0], channels) * 2.0 ** rng.uniform(-2.0, 1.0, channels)
    m /= 400.0 * math.sqrt(k_len)
    b = rng.uniform(-40.0, 40.0, channels)
    specials = [0.0, 2.0**-7, -1e-9, 37.0, -(2.0**-3)]  # zero, exact, tiny, saturating, negative
    for c, v in enumerate(specials[: max(channels - 1, 0)]):
        m[c + 1] = v
    if channels > 2:
        b[2] = 0.5  # a tie, where round-half-even matters
    mult, shift, offset = affine_constants(m, b, acc_bound, "test")
    consts, attrs, struct = _affine_transform(mult, shift, offset, clamp)
    return MacOutput(
        "affine", consts, attrs, "int8", Quant.per_tensor(S_OUT, 0), np.ones(channels), struct
    )


def _float_output(
    rng: np.random.Generator, channels: int, k_len: int, activation: str
) -> MacOutput:
    scale = rng.choice([-1.0, 1.0], channels) * 2.0 ** rng.uniform(-3.0, 1.0, channels)
    scale = (scale / (3000.0 * math.sqrt(k_len))).astype(np.float32)
    offset = rng.uniform(-3.0, 3.0, channels).astype(np.float32)
    offset[:: max(channels // 3, 1)] = np.float32(-0.0)
    struct = Struct(
        "bnn_output_t",
        kind=OUT_FLOAT,
        f_scale=scale,
        f_offset=offset,
        float_activation=ACTIVATIONS[activation],
        act_min=5,  # unused by the float transform
        act_max=-5,
    )
    consts = [
        Tensor("scale", (channels,), "float32", data=scale),
        Tensor("offset", (channels,), "float32", data=offset),
    ]
    attrs = {"output_transform": "float", "activation": activation}
    return MacOutput("float", consts, attrs, "float32", None, np.ones(channels), struct)


TRANSFORMS = ("tflite", "affine", "float")
# (zero point of the output, activation) for tflite; clamp for affine; activation for float
TFLITE_OUT = [(-128, "relu"), (127, "none"), (-3, "relu6"), (5, "none")]
AFFINE_CLAMP = [(-128, 127), (0, 127), (-100, 50), (-128, 127)]
FLOAT_ACT = ["relu", "none", "relu6", "relu"]


def _mac_output(
    kind: str, rng: np.random.Generator, channels: int, k_len: int, variant: int
) -> MacOutput:
    acc_bound = 255 * 128 * k_len
    if kind == "tflite":
        zp_out, act = TFLITE_OUT[variant % len(TFLITE_OUT)]
        return _tflite_output(rng, channels, k_len, zp_out, act)
    if kind == "affine":
        return _affine_output(rng, channels, acc_bound, k_len, AFFINE_CLAMP[variant % 4])
    return _float_output(rng, channels, k_len, FLOAT_ACT[variant % len(FLOAT_ACT)])


def _mac_case(
    op_type: str,
    x: np.ndarray,
    zp_in: int,
    w: np.ndarray,
    w_axis: int,
    out_shape: tuple[int, ...],
    mac: MacOutput,
    attrs: dict[str, Any],
) -> np.ndarray:
    """Reference output of a one-op MAC graph."""
    graph = _mac_graph(op_type, x, zp_in, w, w_axis, out_shape, mac, attrs)
    return _reference(graph, {"x": x})


def _mac_graph(
    op_type: str,
    x: np.ndarray,
    zp_in: int,
    w: np.ndarray,
    w_axis: int,
    out_shape: tuple[int, ...],
    mac: MacOutput,
    attrs: dict[str, Any],
) -> Graph:
    """The one-op IR graph of a MAC case (input x, constant weights w, output y)."""
    x_t = Tensor("x", x.shape, "int8", Quant.per_tensor(S_IN, zp_in))
    w_quant = Quant(mac.w_scales, np.zeros(mac.w_scales.size, np.int64), w_axis)
    w_t = Tensor("w", w.shape, "int8", w_quant, w)
    y_t = Tensor("y", out_shape, mac.out_dtype, mac.out_quant)
    return _one_op_graph(op_type, [x_t, w_t, *mac.consts], y_t, {**attrs, **mac.attrs})


def _call_depthwise(
    backend: Any,
    geo: Geo,
    zp_in: int,
    mult: int,
    mac: MacOutput,
    x: np.ndarray,
    w: np.ndarray,
    out_shape: tuple[int, ...],
    x_buf: np.ndarray,
    out: np.ndarray,
    **options: Any,
) -> int:
    """bnn_depthwise_conv2d_s8 on a case: x's dims with x_buf's data (x itself, or a buffer
    that holds it), writing out (which may be x_buf: in place); options go to backend.call."""
    return int(
        backend.call(
            "bnn_depthwise_conv2d_s8",
            _ctx(),
            geo.params(zp_in, mult),
            mac.struct,
            dims(*x.shape),
            x_buf,
            dims(*w.shape),
            w,
            dims(*out_shape),
            out,
            **options,
        )
    )


# --------------------------------------------------------------------------------------------
# Conv2D
# --------------------------------------------------------------------------------------------

# (geometry, input channels, output channels, input zero point)
CONV_CASES: list[tuple[Geo, int, int, int]] = [
    (Geo(5, 5, 1, 1), 16, 24, -128),  # pointwise
    (Geo(1, 1, 1, 1), 70, 40, 127),  # 1x1 spatial, pointwise
    (Geo(7, 7, 1, 1, stride=(2, 2)), 24, 16, 3),  # pointwise, stride 2, odd input
    (Geo(3, 5, 1, 1), 7, 5, -3),  # pointwise, odd channel counts, C < 8
    (Geo(3, 3, 1, 1), 128, 13, 99),  # pointwise expanded path: odd pixels and channels
    (Geo(2, 3, 1, 1), 260, 6, -77),  # pointwise, C > 256: without scratch, int8 pairs
    (Geo(2, 3, 1, 1), 516, 5, 33),  # pointwise, C > 512
    (Geo(2, 5, 1, 1), 12, 9, 17),  # 4-pixel blocks, then a pair; an odd number of groups
    (Geo(1, 7, 1, 1), 4, 3, -5),  # one 4-pixel block of a single group, then 3 pixels
    (Geo(3, 3, 1, 1), 136, 5, 8),  # 128 < C <= 256: without scratch, pairs in the 1 KB buffer
    (Geo(6, 6, 1, 1, stride=(2, 2)), 40, 2, -128),  # strided 4-pixel blocks across rows
    (Geo(7, 7, 3, 3, stride=(2, 2), padding="same"), 3, 16, -128),  # stem: odd input, stride 2
    (Geo(6, 6, 3, 3, stride=(2, 2), padding="same"), 3, 16, 0),  # same, asymmetric (0, 1)
    (Geo(8, 8, 3, 3, stride=(2, 2)), 16, 3, 127),  # valid, a row left out at the bottom
    (Geo(9, 7, 5, 3, padding="same"), 1, 3, 10),  # kernel 5x3
    (Geo(7, 9, 5, 3, stride=(1, 2)), 3, 1, -7),  # kernel 5x3, valid, stride (1, 2)
    (Geo(9, 9, 3, 3, dilation=(2, 2)), 8, 4, -128),  # dilation 2, valid
    (Geo(7, 6, 3, 3, dilation=(2, 2), padding="same"), 3, 24, 127),  # dilation 2, same
    (Geo(6, 5, 3, 3, padding=(2, 0, 1, 2)), 40, 1, -1),  # explicit asymmetric pads
    (Geo(1, 1, 3, 3, padding="same"), 16, 8, -128),  # 3x3 on a 1x1 input
    (Geo(3, 3, 3, 3, padding="same"), 70, 70, 5),  # many channels
    (Geo(4, 3, 2, 2, stride=(2, 1), padding=(0, 0, 1, 0)), 24, 40, -20),  # even kernel
    (Geo(4, 4, 3, 3, padding="same"), 32, 6, -9),  # 288 taps: the largest patch
    (Geo(9, 3, 7, 1, padding="same"), 41, 3, 2),  # 287 taps: the largest with a partial group
]


def _conv_id(case: tuple[Geo, int, int, int]) -> str:
    g, c, o, zp = case
    return f"{g.h}x{g.w}x{c}-k{g.kh}x{g.kw}-s{g.stride[0]}{g.stride[1]}-{g.padding}-o{o}-zp{zp}"


def _conv_and_check(
    backend: Any,
    geo: Geo,
    zp_in: int,
    mac: MacOutput,
    x: np.ndarray,
    w: np.ndarray,
    expected: np.ndarray,
    **options: Any,
) -> None:
    """bnn_conv2d_s8 on x and w into a sentinel-filled output: BNN_OK and the reference's
    values; ``scratch``: that many bytes of scratch in the context (else none), the other
    options go to backend.call."""
    out = _sentinel(expected.shape, np.float32 if mac.kind == "float" else np.int8)
    scratch = int(options.pop("scratch", 0))
    ctx = (
        Struct("bnn_context_t", buf=np.zeros(scratch, np.uint8), size=scratch)
        if scratch
        else _ctx()
    )
    status = backend.call(
        "bnn_conv2d_s8",
        ctx,
        geo.params(zp_in),
        mac.struct,
        dims(*x.shape),
        x,
        dims(*w.shape),
        w,
        dims(*expected.shape),
        out,
        **options,
    )
    assert status == BNN_OK
    _assert_same(out, expected)


@pytest.mark.parametrize("kind", TRANSFORMS)
@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_id)
def test_conv2d(backend: Any, case: tuple[Geo, int, int, int], kind: str) -> None:
    geo, c, o, zp_in = case
    variant = CONV_CASES.index(case)
    rng = np.random.default_rng(100 + variant)
    x = _int8(rng, (1, geo.h, geo.w, c))
    w = _int8(rng, (o, geo.kh, geo.kw, c))
    oh, ow = geo.out_hw()
    mac = _mac_output(kind, rng, o, geo.kh * geo.kw * c, variant)
    expected = _mac_case("Conv2D", x, zp_in, w, 0, (1, oh, ow, o), mac, geo.attrs())
    scratch = backend.int_function(
        "bnn_conv2d_s8_scratch_size", dims(*x.shape), dims(*w.shape), dims(1, oh, ow, o)
    )
    assert scratch == conv2d_scratch_bytes(x.shape, w.shape)
    assert scratch == (8 * c if geo.kh == geo.kw == 1 and c % 4 == 0 and c > 128 else 0)
    _conv_and_check(backend, geo, zp_in, mac, x, w, expected)  # no scratch
    if scratch > 0:
        _conv_and_check(backend, geo, zp_in, mac, x, w, expected, scratch=scratch)


# Deep pointwise layers (C > 128), which take the M7's 4-pixel blocks in the scratch they ask
# for: (geometry, channels, outputs, input zero point)
PW_SCRATCH_CASES: list[tuple[Geo, int, int, int]] = [
    (Geo(6, 6, 1, 1), 288, 48, 9),  # MobileNetV2's block_11 project
    (Geo(3, 3, 1, 1), 480, 80, -128),  # block_14: two blocks of 4, then one pixel
    (Geo(5, 3, 1, 1, stride=(2, 2)), 132, 7, 127),  # strided, the shallowest that asks
    (Geo(2, 5, 1, 1), 516, 33, -40),  # deeper than the old 2 KB buffer took
]


@pytest.mark.parametrize("given", ["exact", "larger", "short", "none"])
@pytest.mark.parametrize("kind", TRANSFORMS)
@pytest.mark.parametrize("case", PW_SCRATCH_CASES, ids=_conv_id)
def test_conv2d_pointwise_scratch(
    backend: Any, case: tuple[Geo, int, int, int], kind: str, given: str
) -> None:
    """A deep pointwise layer with the scratch bnn_conv2d_s8_scratch_size asks for (8 * C
    bytes), a larger one (the channels' constants then fit after the inputs), one 4 bytes
    short, and none: the reference's values every time. On the M7 build the scratch path
    (bnn_conv_dsp_scratch_*, Unicorn profile) must run exactly when the scratch is enough."""
    geo, c, o, zp_in = case
    variant = PW_SCRATCH_CASES.index(case)
    rng = np.random.default_rng([41, variant, TRANSFORMS.index(kind)])
    x = _int8(rng, (1, geo.h, geo.w, c))
    w = _int8(rng, (o, 1, 1, c))
    oh, ow = geo.out_hw()
    mac = _mac_output(kind, rng, o, c, variant)
    expected = _mac_case("Conv2D", x, zp_in, w, 0, (1, oh, ow, o), mac, geo.attrs())
    need = backend.int_function(
        "bnn_conv2d_s8_scratch_size", dims(*x.shape), dims(*w.shape), dims(1, oh, ow, o)
    )
    assert need == 8 * c == conv2d_scratch_bytes(x.shape, w.shape)
    size = {"exact": need, "larger": need + 16 * o, "short": need - 4, "none": 0}[given]
    fn = f"bnn_conv_dsp_scratch_{kind}"
    profiled = fn in getattr(getattr(backend, "image", None), "functions", {})
    options: dict[str, Any] = {"scratch": size} if size else {}
    _conv_and_check(
        backend,
        geo,
        zp_in,
        mac,
        x,
        w,
        expected,
        **options,
        **({"profile": True} if profiled else {}),
    )
    if profiled:
        assert (backend.last_profile.get(fn, 0) > 0) == (given in ("exact", "larger"))


# --------------------------------------------------------------------------------------------
# DepthwiseConv2D
# --------------------------------------------------------------------------------------------

# (geometry, channels, depth multiplier, input zero point)
DW_CASES: list[tuple[Geo, int, int, int]] = [
    (Geo(6, 6, 3, 3, padding="same"), 16, 1, -128),
    (Geo(7, 7, 3, 3, stride=(2, 2), padding="same"), 24, 1, 127),  # transition block
    (Geo(6, 6, 3, 3, stride=(2, 2), padding="same"), 40, 1, 0),  # asymmetric same
    (Geo(3, 3, 3, 3), 70, 1, -5),  # 3x3 to 1x1 (the hybrid's head), 70 = 4 * 17 + 2
    (Geo(1, 1, 3, 3, padding="same"), 1, 1, 127),  # 1x1 spatial, one channel
    (Geo(5, 4, 3, 3, padding="same"), 3, 2, -128),  # depth multiplier 2
    (Geo(8, 7, 5, 3, stride=(2, 1), padding="same"), 16, 2, 9),  # 5x3, depth multiplier 2
    (Geo(5, 5, 1, 1), 24, 1, -1),  # 1x1 kernel
    (Geo(9, 8, 3, 3, dilation=(2, 2), padding="same"), 24, 1, 100),  # dilation 2
    (Geo(6, 7, 3, 3, padding=(0, 2, 2, 1)), 40, 1, -128),  # explicit asymmetric pads
    (Geo(8, 8, 3, 3, stride=(2, 2)), 70, 2, 64),  # valid, stride 2, M = 2
    (Geo(10, 9, 3, 3, padding="same"), 12, 1, 3),  # 3x3 path: mostly interior pixels
    (Geo(9, 11, 3, 3, stride=(1, 2), padding=(1, 0, 0, 1)), 8, 1, -7),  # 3x3 path, uneven
]


@pytest.mark.parametrize("kind", TRANSFORMS)
@pytest.mark.parametrize("case", DW_CASES, ids=_conv_id)
def test_depthwise_conv2d(backend: Any, case: tuple[Geo, int, int, int], kind: str) -> None:
    geo, c, mult, zp_in = case
    variant = DW_CASES.index(case)
    rng = np.random.default_rng(200 + variant)
    x = _int8(rng, (1, geo.h, geo.w, c))
    w = _int8(rng, (1, geo.kh, geo.kw, c * mult))
    oh, ow = geo.out_hw()
    mac = _mac_output(kind, rng, c * mult, geo.kh * geo.kw, variant)
    attrs = {**geo.attrs(), "depth_multiplier": mult}
    expected = _mac_case("DepthwiseConv2D", x, zp_in, w, 3, (1, oh, ow, c * mult), mac, attrs)
    out = _sentinel((1, oh, ow, c * mult), np.float32 if kind == "float" else np.int8)
    status = _call_depthwise(backend, geo, zp_in, mult, mac, x, w, (1, oh, ow, c * mult), x, out)
    assert status == BNN_OK
    _assert_same(out, expected)


# --------------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------------

# (in features, out features, input zero point)
DENSE_CASES = [(1, 1, 0), (3, 24, -128), (16, 3, 127), (70, 40, 7), (1280, 128, -128), (37, 70, 1)]


@pytest.mark.parametrize("kind", [*TRANSFORMS, "tflite-per-tensor"])
@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: f"{c[0]}to{c[1]}-zp{c[2]}")
def test_dense(backend: Any, case: tuple[int, int, int], kind: str) -> None:
    k, o, zp_in = case
    variant = DENSE_CASES.index(case)
    rng = np.random.default_rng(300 + variant)
    x = _int8(rng, (1, k))
    w = _int8(rng, (o, k))
    if kind == "tflite-per-tensor":
        zp_out, act = TFLITE_OUT[variant % len(TFLITE_OUT)]
        mac = _tflite_output(rng, o, k, zp_out, act, per_tensor=True)  # one weight scale
    else:
        mac = _mac_output(kind, rng, o, k, variant)
    if kind == "tflite":  # per-channel weights: TFLite's FULLY_CONNECTED rounds once
        mac.struct.fields["q_single_rounding"] = 1
    expected = _mac_case("Dense", x, zp_in, w, 0, (1, o), mac, {})
    out = _sentinel((o,), np.float32 if kind == "float" else np.int8)
    params = Struct("bnn_conv_params_t", input_zero_point=zp_in, stride_h=9, dilation_w=-3)
    status = backend.call("bnn_dense_s8", _ctx(), params, mac.struct, k, x, o, w, out)
    assert status == BNN_OK
    _assert_same(out, expected)


def _affine_exact_output(m: np.ndarray, b: np.ndarray, acc_bound: int) -> MacOutput:
    """An affine output (full int8 range) for real multipliers m and offsets b that the
    constants represent exactly (powers of two, (half-)integers): many results are ties."""
    c = m.size
    mult, shift, offset = affine_constants(m, b, acc_bound, "test")
    consts, attrs, struct = _affine_transform(mult, shift, offset, (-128, 127))
    return MacOutput("affine", consts, attrs, "int8", Quant.per_tensor(1.0, 0), np.ones(c), struct)


@pytest.mark.parametrize("depth", [1, 4])
def test_affine_ties(backend: Any, depth: int) -> None:
    """QKeras without BatchNorm: power-of-two multipliers and (half-)integer offsets are exact,
    so many results are ties, which round half to even (a 1x1 conv of every int8 value). Depth
    4 takes the M7's 4-pixel path and, for the shifts >= 32, its 6-instruction store: the
    other 3 input channels hold the zero point, so the sums are those of depth 1."""
    rng = np.random.default_rng(12)
    x = np.full((1, 16, 16, depth), 3, np.int8)
    x[..., 0] = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    w = _int8(rng, (8, 1, 1, depth))
    w[:, 0, 0, 0] = [1, -1, 3, -3, 1, 2, -1, 5]
    m = np.asarray([2.0**-1, 2.0**-2, -(2.0**-3), 2.0**-1, -(2.0**-4), 2.0**-2, 2.0**-1, 1.0])
    b = np.asarray([0.0, 0.5, -3.0, 7.5, 0.25, -0.5, 100.0, -0.5])
    mac = _affine_exact_output(m, b, 255 * 128)
    expected = _mac_case("Conv2D", x, 3, w, 0, (1, 16, 16, 8), mac, {})
    acc = (x[..., 0].reshape(-1, 1).astype(np.int64) - 3) * w[:, 0, 0, 0].reshape(1, 8)
    real = acc * m + b
    assert np.sum(real - np.floor(real) == 0.5) > 500  # ties, plenty
    assert np.array_equal(expected.reshape(-1, 8), np.clip(np.rint(real), -128, 127))
    out = _sentinel((1, 16, 16, 8), np.int8)
    status = backend.call(
        "bnn_conv2d_s8",
        _ctx(),
        Geo(16, 16, 1, 1).params(3),
        mac.struct,
        dims(*x.shape),
        x,
        dims(*w.shape),
        w,
        dims(1, 16, 16, 8),
        out,
    )
    assert status == BNN_OK
    _assert_same(out, expected)


# (geometry, channels, output channels, input zero point) of the M7's 4-pixel blocks with every
# channel stored by its assembly loop (bnn_x4_asm)
X4_CASES: list[tuple[Geo, int, int, int]] = [
    (Geo(3, 5, 1, 1), 12, 9, 17),  # pointwise: 3 groups (two per turn, then the odd one)
    (Geo(2, 4, 1, 1), 4, 5, -128),  # one group
    (Geo(4, 4, 1, 1), 16, 33, 127),  # an even number of groups, 33 channels
    (Geo(6, 6, 1, 1, stride=(2, 2)), 8, 7, -3),  # strided pointwise
    (Geo(8, 8, 3, 3, stride=(2, 2), padding="same"), 3, 16, -128),  # stem: 27 taps, the last
    # filter's partial group from its padded copy
    (Geo(5, 5, 3, 3, padding="same"), 8, 6, 5),  # patch: 72 taps, 18 groups
    (Geo(5, 4, 5, 5, padding="same"), 4, 3, 0),  # patch: 100 taps, the largest
    (Geo(3, 4, 1, 1), 8, 100, 5),  # pointwise: the constants' table in chunks of 48 or 60
    (Geo(2, 3, 1, 1), 96, 40, -7),  # pointwise: chunks would cost more than they save
    (Geo(2, 4, 1, 1), 32, 11, 3),  # 8 groups: the whole unrolled MAC sequence
    (Geo(2, 4, 1, 1), 36, 10, -9),  # 9 groups: the loop again
]
# Whether the M7 reads the channels' constants from a table (bnn_x4_tab_*: it fits in the
# 1 KB buffer after the expanded inputs, in one chunk or in chunks that pay) for X4_CASES; with
# at most 8 groups of 4 taps, by the unrolled bnn_x4_tab8_*.
X4_TABLE = [True, True, True, True, True, True, False, True, False, True, True]


def _x4_affine_output(rng: np.random.Generator, w: np.ndarray) -> MacOutput:
    """Affine constants with every shift >= 32 and the full int8 range for the weights w
    (output channels first): every third channel an ordinary one; the others multiply by
    +-2^-2 or +-2^-3 with (half-)integer offsets and get weights in [-2, 2] (changed in w), so
    that about a quarter of their results are ties; channel 0 has a zero multiplier, channel 1
    a saturating one."""
    channels = w.shape[0]
    k_len = w[0].size
    sign = rng.choice([-1.0, 1.0], channels)
    m = sign * 2.0 ** -rng.integers(2, 4, channels).astype(np.float64)
    b = rng.integers(-60, 60, channels) / 2.0
    usual = np.arange(channels) % 3 == 2
    m[usual] = sign[usual] * rng.uniform(0.2, 3.0, int(usual.sum())) / (4000.0 * math.sqrt(k_len))
    b[usual] = rng.uniform(-40.0, 40.0, int(usual.sum()))
    w[~usual] = rng.integers(-2, 3, w[~usual].shape)
    m[0], b[0] = 0.0, 3.5
    if channels > 1:
        m[1], b[1] = -0.49, 1e6
    mac = _affine_exact_output(m, b, 255 * 128 * k_len)
    assert mac.struct.fields["a_shift"].min() >= 32
    return mac


@pytest.mark.parametrize("kind", ["tflite", "affine"])
@pytest.mark.parametrize("case", X4_CASES, ids=_conv_id)
def test_conv2d_x4_assembly(backend: Any, case: tuple[Geo, int, int, int], kind: str) -> None:
    """Convolutions in the M7's 4-pixel blocks whose every channel takes the fast store, so
    that the whole channel loop runs in assembly (bnn_x4_asm; with the channels' constants from
    a table, bnn_x4_tab_*, where X4_TABLE says so, which the M7 build's profile checks): TFLite
    (bias, two roundings, multipliers over [2^30, 2^31), right shifts 2 .. 22, biases at the
    fast store's limits,
    output zero points -90, 100 and 3) and affine (shifts >= 32: ties, a zero and a saturating
    multiplier), with the full int8 range. The same integers as the reference; the other
    backends run the same cases through their C paths."""
    geo, c, o, zp_in = case
    variant = X4_CASES.index(case)
    rng = np.random.default_rng(300 + variant)
    x = _int8(rng, (1, geo.h, geo.w, c))
    w = _int8(rng, (o, geo.kh, geo.kw, c))
    oh, ow = geo.out_hw()
    k_len = geo.kh * geo.kw * c
    if kind == "tflite":
        zp_out = (-90, 100, 3)[variant % 3]
        mac = _tflite_output(rng, o, k_len, zp_out, "none", fast_only=True)
        fields = mac.struct.fields
        assert np.all(fields["q_mult"] > 0) and np.all(fields["q_shift"] <= -2)
        assert (fields["act_min"], fields["act_max"]) == (-128, 127)
    else:
        mac = _x4_affine_output(rng, w)
    expected = _mac_case("Conv2D", x, zp_in, w, 0, (1, oh, ow, o), mac, geo.attrs())
    inside = (expected > -128) & (expected < 127)
    assert np.sum(inside) >= 8 and len(np.unique(expected[inside])) >= 4, "all clamped"
    table, table8 = f"bnn_x4_tab_{kind}", f"bnn_x4_tab8_{kind}"
    profiled = table in getattr(getattr(backend, "image", None), "functions", {})
    _conv_and_check(
        backend, geo, zp_in, mac, x, w, expected, **({"profile": True} if profiled else {})
    )
    if profiled:
        unrolled = -(-geo.kh * geo.kw * c // 4) <= 8  # groups of 4 taps
        ran = [backend.last_profile.get(f, 0) > 0 for f in (table, table8)]
        assert ran == [X4_TABLE[variant] and not unrolled, X4_TABLE[variant] and unrolled]


@pytest.mark.parametrize("op", ["Conv2D", "DepthwiseConv2D"])
def test_tflite_bias_past_the_fast_bound(backend: Any, op: str) -> None:
    """A TFLite call whose every channel would take the M7's fast store but for two biases that
    let acc + bias pass 2^30 (the fast store doubles it: bnn_tflite_bias_ok): the C store for
    them, the reference's values (saturated there). On the M7 build the conv's 4-pixel table
    loop (all channels or none) does not run; the depthwise assembly loop runs for the groups
    of 4 channels without them (two of four)."""
    c = 16
    rng = np.random.default_rng(77)
    geo = Geo(4, 6, 1, 1) if op == "Conv2D" else Geo(5, 6, 3, 3, padding="same")
    x = _int8(rng, (1, geo.h, geo.w, c))
    w = _int8(rng, (c, 1, 1, c)) if op == "Conv2D" else _int8(rng, (1, 3, 3, c))
    k_len = c if op == "Conv2D" else 9
    mac = _tflite_output(rng, c, k_len, 5, "none", fast_only=True)
    mac.struct.fields["bias"][[0, 9]] = [2**30 + 5_000, -(2**30) - 5_000]
    out_shape = (1, *geo.out_hw(), c)
    attrs = {**geo.attrs(), **({"depth_multiplier": 1} if op != "Conv2D" else {})}
    expected = _mac_case(op, x, 3, w, 3 if op != "Conv2D" else 0, out_shape, mac, attrs)
    assert set(expected[..., 0].ravel()) == {127} and set(expected[..., 9].ravel()) == {-128}
    assert len(np.unique(expected)) > 20
    loops = ("bnn_x4_tab_tflite", "bnn_x4_tab8_tflite")
    profiled = loops[0] in getattr(getattr(backend, "image", None), "functions", {})
    options = {"profile": True} if profiled else {}
    if op == "Conv2D":
        _conv_and_check(backend, geo, 3, mac, x, w, expected, **options)
    else:
        out = _sentinel(out_shape, np.int8)
        status = _call_depthwise(backend, geo, 3, 1, mac, x, w, out_shape, x, out, **options)
        assert status == BNN_OK
        _assert_same(out, expected)
    if profiled and op == "Conv2D":
        assert not any(backend.last_profile.get(f, 0) for f in loops)
    elif profiled:  # about half of what it runs with both biases back within the bound
        ran = backend.last_profile.get("bnn_dw3_asm", 0)
        mac.struct.fields["bias"][[0, 9]] = [2**20, -(2**20)]
        status = _call_depthwise(backend, geo, 3, 1, mac, x, w, out_shape, x, out, **options)
        assert status == BNN_OK and ran > 0
        assert 0.4 < ran / backend.last_profile.get("bnn_dw3_asm", 0) < 0.6  # 2 of 4 groups


# 3x3 depthwise geometries for the M7's assembly loop, which reads a window one row or column
# outside the input one row or column further in (weights 0 for the taps outside): (geometry,
# channels, input zero point)
DW_ASM_CASES: list[tuple[Geo, int, int]] = [
    (Geo(11, 13, 3, 3, padding="same"), 8, -5),  # every run of rows and columns
    (Geo(3, 3, 3, 3, padding="same"), 12, 7),  # a 3x3 map: one window inside
    (Geo(6, 6, 3, 3, stride=(2, 2), padding="same"), 8, 0),  # one past the end only
    (Geo(7, 7, 3, 3, stride=(2, 2), padding="same"), 4, -128),  # one outside at both ends
    (Geo(3, 3, 3, 3), 16, 3),  # valid 3x3 -> 1x1 (MobileNetV2's head)
    (Geo(4, 3, 3, 3, padding=(2, 2, 1, 1)), 8, 127),  # rows two outside: those in C
    (Geo(6, 5, 3, 3, stride=(1, 2), padding=(0, 2, 2, 0)), 8, 9),  # uneven, columns in C
    (Geo(2, 5, 3, 3, padding="same"), 8, -1),  # 2 rows: all of it in C
]


def _dw_asm_windows(geo: Geo) -> int:
    """The output pixels whose windows the M7's assembly loop reads: along each axis, window
    starts from -1 to in - 2 (at most one row or column outside), when the input has >= 3."""
    top, _, left, _ = geo.pads()
    (oh, ow), count = geo.out_hw(), 1
    for out_n, stride, pad, size in (
        (oh, geo.stride[0], top, geo.h),
        (ow, geo.stride[1], left, geo.w),
    ):
        starts = np.arange(out_n) * stride - pad
        count *= int(np.sum((starts >= -1) & (starts <= size - 2))) if size >= 3 else 0
    return count


@pytest.mark.parametrize("kind", ["tflite", "affine"])
@pytest.mark.parametrize("case", DW_ASM_CASES, ids=lambda c: _conv_id((*c[:2], 1, c[2])))
def test_depthwise_asm_windows(backend: Any, case: tuple[Geo, int, int], kind: str) -> None:
    """The 3x3 depthwise path with every channel taking a fast store (TFLite: multipliers over
    [2^30, 2^31), right shifts >= 2; affine: shifts >= 32, ties, a zero and a saturating
    multiplier; the full int8 range), on maps where windows stick out by one row or column
    (read moved, weights 0 outside), by two (the C loop) or not at all: the reference's
    integers, also in place where the planner allows it. On the M7 build the assembly loop
    must have run for exactly the windows in its reach (Unicorn profile: at least its 74 tap
    instructions per window and group of 4 channels)."""
    from bnncube.planner import _depthwise_in_place

    geo, c, zp_in = case
    rng = np.random.default_rng([17, DW_ASM_CASES.index(case), kind == "affine"])
    x = _int8(rng, (1, geo.h, geo.w, c))
    w = _int8(rng, (1, 3, 3, c))
    out_shape = (1, *geo.out_hw(), c)
    if kind == "tflite":
        mac = _tflite_output(rng, c, 9, (-90, 100, 3)[c % 3], "none", fast_only=True)
        assert np.all(mac.struct.fields["q_mult"] > 0) and np.all(
            mac.struct.fields["q_shift"] <= -2
        )
    else:
        mac = _x4_affine_output(rng, np.moveaxis(w, -1, 0))  # changes w's channels too
    attrs = {**geo.attrs(), "depth_multiplier": 1}
    graph = _mac_graph("DepthwiseConv2D", x, zp_in, w, 3, out_shape, mac, attrs)
    expected = _reference(graph, {"x": x})
    assert len(np.unique(expected)) >= min(8, expected.size // 2), "all clamped"
    profiled = "bnn_dw3_asm" in getattr(getattr(backend, "image", None), "functions", {})
    out = _sentinel(out_shape, np.int8)
    options = {"profile": True} if profiled else {}
    assert (
        _call_depthwise(backend, geo, zp_in, 1, mac, x, w, out_shape, x, out, **options) == BNN_OK
    )
    _assert_same(out, expected)
    if profiled:
        windows = _dw_asm_windows(geo) * (c // 4)
        ran = backend.last_profile.get("bnn_dw3_asm", 0)
        assert (ran >= 74 * windows > 0) if windows else ran == 0, (ran, windows)
    if _depthwise_in_place(graph, graph.ops[0]):
        buf = x.reshape(-1).copy()  # the input, overwritten by the output
        assert _call_depthwise(backend, geo, zp_in, 1, mac, x, w, out_shape, buf, buf) == BNN_OK
        _assert_same(buf[: expected.size], expected)


def test_depthwise_affine_ties(backend: Any) -> None:
    """The 3x3 depthwise path's affine stores on ties: power-of-two multipliers (shifts 32 ..
    36, so that the M7 takes its 6-instruction store for both groups of 4 channels) and
    (half-)integer offsets; the ties round half to even."""
    rng = np.random.default_rng(13)
    c = 8
    x = _int8(rng, (1, 9, 9, c))
    w = rng.integers(-3, 4, size=(1, 3, 3, c)).astype(np.int8)
    m = np.asarray([2.0**-2, -(2.0**-3), 2.0**-4, -(2.0**-5), 2.0**-2, 2.0**-3, -(2.0**-4)])
    m = np.append(m, 2.0**-6)
    b = np.asarray([0.5, -3.0, 7.5, 0.25, -0.5, 100.0, -0.5, 1.5])
    mac = _affine_exact_output(m, b, 9 * 255 * 3)
    assert mac.struct.fields["a_shift"].min() >= 32
    geo = Geo(9, 9, 3, 3, padding="same")
    dw_attrs = {**geo.attrs(), "depth_multiplier": 1}
    expected = _mac_case("DepthwiseConv2D", x, -1, w, 3, (1, 9, 9, c), mac, dw_attrs)
    xp = np.pad(x[0].astype(np.int64) + 1, ((1, 1), (1, 1), (0, 0)))
    acc = sum(xp[i : i + 9, j : j + 9, :] * w[0, i, j, :] for i in range(3) for j in range(3))
    real = acc * m + b
    assert np.sum(real - np.floor(real) == 0.5) > 50  # ties, plenty
    assert np.array_equal(expected[0], np.clip(np.rint(real), -128, 127))
    out = _sentinel((1, 9, 9, c), np.int8)
    assert _call_depthwise(backend, geo, -1, 1, mac, x, w, (1, 9, 9, c), x, out) == BNN_OK
    _assert_same(out, expected)


@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
def test_float_transform_signed_zeros(backend: Any, activation: str) -> None:
    """Zero accumulators (x == zero point): f32(0 * scale) + offset keeps or drops the sign of
    zero as float32 arithmetic does; ReLU / ReLU6 give +0.0 (numpy's maximum(y, 0))."""
    k, o = 5, 6
    x = np.full((1, k), -7, np.int8)
    w = np.random.default_rng(9).integers(-128, 128, (o, k), dtype=np.int8)
    scale = np.asarray([-0.5, 0.5, -0.5, 0.5, -1e-3, 2.0], np.float32)
    offset = np.asarray([-0.0, -0.0, 0.0, 0.0, -3.0, 7.0], np.float32)
    struct = Struct(
        "bnn_output_t",
        kind=OUT_FLOAT,
        f_scale=scale,
        f_offset=offset,
        float_activation=ACTIVATIONS[activation],
    )
    consts = [
        Tensor("scale", (o,), "float32", data=scale),
        Tensor("offset", (o,), "float32", data=offset),
    ]
    attrs = {"output_transform": "float", "activation": activation}
    mac = MacOutput("float", consts, attrs, "float32", None, np.ones(o), struct)
    expected = _mac_case("Dense", x, -7, w, 0, (1, o), mac, {})
    if activation == "none":
        assert np.signbit(expected.reshape(-1)[:4]).tolist() == [True, False, False, False]
    out = _sentinel((o,), np.float32)
    params = Struct("bnn_conv_params_t", input_zero_point=-7)
    assert backend.call("bnn_dense_s8", _ctx(), params, struct, k, x, o, w, out) == BNN_OK
    _assert_same(out, expected)


def test_dense_large_accumulators(backend: Any) -> None:
    """Accumulators near 2**28 and wrapping biases, through every TFLite multiplier edge."""
    rng = np.random.default_rng(7)
    k, o = 8192, 12
    x = np.full((1, k), 127, np.int8)
    w = np.where(rng.random((o, k)) < 0.97, 127, -128).astype(np.int8)
    w[1::2] = -w[1::2] - 1  # negative sums too
    mac = _tflite_output(rng, o, 16, -128, "none")
    mac.struct.fields["q_single_rounding"] = 1  # per-channel weights
    expected = _mac_case("Dense", x, -128, w, 0, (1, o), mac, {})
    out = _sentinel((o,), np.int8)
    params = Struct("bnn_conv_params_t", input_zero_point=-128)
    assert backend.call("bnn_dense_s8", _ctx(), params, mac.struct, k, x, o, w, out) == BNN_OK
    _assert_same(out, expected)


# --------------------------------------------------------------------------------------------
# Add
# --------------------------------------------------------------------------------------------

# (shape, (s_a, zp_a), (s_b, zp_b), (s_out, zp_out), activation)
ADD_CASES = [
    ((1, 4, 4, 16), (0.05, -128), (0.02, 127), (0.06, 3), "none"),
    ((1, 1, 1, 1), (0.1, 0), (0.1, 0), (0.2, -128), "relu"),
    ((1, 3, 5, 3), (0.013, 20), (0.5, -7), (0.3, -100), "relu6"),
    ((1, 7, 7, 24), (1e-3, -128), (2e-3, 127), (2.5e-4, 127), "none"),  # out scale < inputs'
    ((1, 2, 3, 70), (0.4, 5), (0.003, -60), (0.01, 0), "relu"),
]


def _add_tensors(
    case: tuple[Any, ...],
) -> tuple[Tensor, Tensor, Tensor, tuple[float, int], tuple[float, int], tuple[float, int]]:
    shape, (s_a, zp_a), (s_b, zp_b), (s_o, zp_o), _ = case
    a_t = Tensor("a", shape, "int8", Quant.per_tensor(s_a, zp_a))
    b_t = Tensor("b", shape, "int8", Quant.per_tensor(s_b, zp_b))
    y_t = Tensor("y", shape, "int8", Quant.per_tensor(s_o, zp_o))
    return a_t, b_t, y_t, (s_a, zp_a), (s_b, zp_b), (s_o, zp_o)


def _add_tflite_params(case: tuple[Any, ...]) -> Struct:
    """The bnn_add_params_t of a TFLite Add from (za, zb, left_shift, (qa, sa), (qb, sb),
    (qo, so), zo, (act_min, act_max))."""
    za, zb, ls, (qa, sa), (qb, sb), (qo, so), zo, (lo, hi) = case
    return Struct(
        "bnn_add_params_t",
        kind=OUT_TFLITE,
        a_zero_point=za,
        b_zero_point=zb,
        left_shift=ls,
        a_mult=qa,
        a_shift=sa,
        b_mult=qb,
        b_shift=sb,
        out_mult=qo,
        out_shift=so,
        out_zero_point=zo,
        act_min=lo,
        act_max=hi,
    )


@pytest.mark.parametrize("case", ADD_CASES, ids=lambda c: "x".join(map(str, c[0])) + c[-1])
def test_add_tflite(backend: Any, case: tuple[Any, ...]) -> None:
    a_t, b_t, y_t, (s_a, zp_a), (s_b, zp_b), (s_o, zp_o) = _add_tensors(case)
    act = case[-1]
    rng = np.random.default_rng(400 + ADD_CASES.index(case))
    a, b = _int8(rng, a_t.shape), _int8(rng, b_t.shape)
    graph = _one_op_graph("Add", [a_t, b_t], y_t, {"activation": act})
    expected = _reference(graph, {"a": a, "b": b})
    # the constants of TFLite's int8 ADD (as the reference derives them)
    twice_max = float(np.float32(2) * max(np.float32(s_a), np.float32(s_b)))
    qa, sa = quantize_multiplier(_f32(s_a) / twice_max)
    qb, sb = quantize_multiplier(_f32(s_b) / twice_max)
    qo, so = quantize_multiplier(twice_max / _f32((1 << 20) * np.float32(s_o)))
    lo, hi = activation_range(act, y_t.quant)
    params = _add_tflite_params((zp_a, zp_b, 20, (qa, sa), (qb, sb), (qo, so), zp_o, (lo, hi)))
    out = _sentinel(a.shape, np.int8)
    assert backend.call("bnn_add_s8", params, a.size, a, b, out) == BNN_OK
    _assert_same(out, expected)


# (za, zb, left_shift, (qa, sa), (qb, sb), (qo, so), zo, (act_min, act_max))
ADD_TFLITE_EXTREMES = [
    (-128, 127, 20, (1518500250, -1), (2**30, 0), (1395864371, -19), 3, (-128, 127)),
    (5, -7, 20, (2**30, 0), (1518500250, -3), (2**31 - 1, -17), -128, (-128, 127)),
    (0, 0, 20, (2**30, 0), (2**30, 0), (1518500250, -20), -128, (-128, 50)),  # narrow: C
    (-3, 9, 24, (2**31 - 1, 0), (2**30, -3), (2**31 - 1, -24), 0, (-128, 127)),  # a' wraps
    (127, -128, 20, (2**30, 0), (2**31 - 1, -1), (1000, 0), 127, (-128, 127)),  # shift 0: C
    (127, -128, 20, (2**30, 0), (2**31 - 1, -1), (2000, -1), -20, (-128, 127)),  # -1: C
    # the fast store's largest right shifts (22, 21) with the extreme zero points, and 23 (C)
    (-3, 9, 20, (2**31 - 1, 0), (2**30, -3), (2**31 - 1, -22), 127, (-128, 127)),
    (-3, 9, 20, (2**31 - 1, 0), (2**30, -3), (2**31 - 1, -21), -128, (-128, 127)),
    (-3, 9, 20, (2**31 - 1, 0), (2**30, -3), (2**31 - 1, -23), 0, (-128, 127)),
    (-3, 9, 24, (2**31 - 1, 0), (2**30, -3), (2**31 - 1, -22), 0, (-128, 127)),  # sums past 2^30
]


@pytest.mark.parametrize("case", ADD_TFLITE_EXTREMES)
def test_add_tflite_every_pair(backend: Any, case: tuple[Any, ...]) -> None:
    """The TFLite Add on all 65,536 pairs of int8 values (its table path, and on the M7 the
    6-instruction output store where it applies: the full range, -22 <= out_shift <= -1), against
    MultiplyByQuantizedMultiplier as the reference applies it, with (x - zp) * 2^left_shift and
    a' + b' wrapping like int32."""
    from bnncube.converters.reference import multiply_by_quantized_multiplier as mbqm

    za, zb, ls, (qa, sa), (qb, sb), (qo, so), zo, (lo, hi) = case
    a = np.repeat(np.arange(-128, 128), 256).astype(np.int8)
    b = np.tile(np.arange(-128, 128), 256).astype(np.int8)

    def wrap(v: np.ndarray) -> np.ndarray:
        return ((v.astype(np.int64) + 2**31) % 2**32) - 2**31

    sa_ = np.asarray(mbqm(wrap((a.astype(np.int64) - za) << ls), qa, sa), np.int64)
    sb_ = np.asarray(mbqm(wrap((b.astype(np.int64) - zb) << ls), qb, sb), np.int64)
    scaled = np.asarray(mbqm(wrap(sa_ + sb_), qo, so), np.int64)
    expected = np.clip(scaled + zo, lo, hi).astype(np.int8)
    assert len(np.unique(expected)) > 20  # not a clamp everywhere
    params = _add_tflite_params(case)
    out = _sentinel(a.shape, np.int8)
    assert backend.call("bnn_add_s8", params, a.size, a, b, out) == BNN_OK
    _assert_same(out, expected)


def _affine_add(
    tensors: tuple[Tensor, Tensor, Tensor],
    mult: np.ndarray,
    shift: int,
    offset: int,
    clamp: tuple[int, int],
) -> tuple[Graph, Struct]:
    """A one-op affine Add graph of (a, b, y) and its bnn_add_params_t, built independently."""
    a_t, b_t, y_t = tensors
    consts = [
        Tensor("multiplier", (2,), "int32", data=np.asarray(mult, np.int32)),
        Tensor("shift", (1,), "int8", data=np.asarray([shift], np.int8)),
        Tensor("offset", (1,), "int64", data=np.asarray([offset], np.int64)),
    ]
    attrs = {"output_transform": "affine", "clamp": clamp}
    graph = _one_op_graph("Add", [a_t, b_t, *consts], y_t, attrs)
    zp_a, zp_b = (int(t.quant.zero_point[0]) if t.quant is not None else 0 for t in (a_t, b_t))
    params = Struct(
        "bnn_add_params_t",
        kind=OUT_AFFINE,
        a_zero_point=zp_a,
        b_zero_point=zp_b,
        affine_mult0=int(mult[0]),
        affine_mult1=int(mult[1]),
        affine_shift=int(shift),
        affine_offset=int(offset),
        act_min=clamp[0],
        act_max=clamp[1],
    )
    return graph, params


@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("case", ADD_CASES, ids=lambda c: "x".join(map(str, c[0])) + c[-1])
def test_add_affine(backend: Any, case: tuple[Any, ...], negative: bool) -> None:
    a_t, b_t, y_t, (s_a, zp_a), (s_b, zp_b), (s_o, zp_o) = _add_tensors(case)
    rng = np.random.default_rng(450 + ADD_CASES.index(case))
    a, b = _int8(rng, a_t.shape), _int8(rng, b_t.shape)
    m_b = -s_b / s_o if negative else s_b / s_o  # a negative multiplier (a subtraction)
    mult, shift, offset = shared_shift_constants([s_a / s_o, m_b], zp_o, 255, "test")
    clamp = (-128, 127) if case[-1] == "none" else (max(zp_o, -128), 127)
    graph, params = _affine_add((a_t, b_t, y_t), mult, int(shift[0]), int(offset[0]), clamp)
    expected = _reference(graph, {"a": a, "b": b})
    out = _sentinel(a.shape, np.int8)
    assert backend.call("bnn_add_s8", params, a.size, a, b, out) == BNN_OK
    _assert_same(out, expected)


@pytest.mark.parametrize("shift", [1, 12, 30])
def test_add_affine_plain_sum(backend: Any, shift: int) -> None:
    """An affine Add that is the plain sum saturated (M0 = M1 = 2^S, offset (za + zb) * 2^S, the
    full int8 range: the QKeras residual of two tensors of one scale), which bnn_add_s8 adds
    four bytes per QADD8 on the Cortex-M7, and near misses (offset + 1, M1 = 2^S - 1, a narrower
    range) that take the general form: the reference's values for sizes around the groups of 4,
    into a separate buffer and in place over a and over b. On the Cortex-M7 build a plain sum
    of 4,096 elements takes under 2 instructions per element (the general form: over 10)."""
    rng = np.random.default_rng(shift)
    # the Cortex-M7 build with its DSP paths (a naked assembly function only it has)
    dsp = "bnn_bconv2d_scr_p9" in getattr(getattr(backend, "image", None), "functions", {})
    for size in (1, 3, 4, 5, 8, 31, 4096):
        for miss in ("", "offset", "mult", "range"):
            zp_a, zp_b = (int(v) for v in rng.integers(-20, 20, 2))
            clamp = (-100, 127) if miss == "range" else (-128, 127)
            mult = np.asarray([1 << shift, (1 << shift) - (miss == "mult")], np.int32)
            offset = ((zp_a + zp_b) << shift) + (miss == "offset")
            tensors = (
                Tensor("a", (size,), "int8", Quant.per_tensor(0.05, zp_a)),
                Tensor("b", (size,), "int8", Quant.per_tensor(0.05, zp_b)),
                Tensor("y", (size,), "int8", Quant.per_tensor(0.05, 0)),
            )
            graph, params = _affine_add(tensors, mult, shift, offset, clamp)
            a, b = _int8(rng, (size,)), _int8(rng, (size,))
            expected = _reference(graph, {"a": a, "b": b})
            if not miss:
                wide = a.astype(np.int32) + b
                assert np.array_equal(expected, np.clip(wide, -128, 127)), "the plain sum"
            out = _sentinel(a.shape, np.int8)
            assert backend.call("bnn_add_s8", params, size, a, b, out) == BNN_OK
            _assert_same(out, expected)
            if dsp and size == 4096:
                per_element = backend.last_instructions / size
                assert (per_element < 2) == (miss == ""), (miss, per_element)
            for first in (True, False):  # in place over a, then over b
                x, y = a.copy(), b.copy()
                target = x if first else y
                assert backend.call("bnn_add_s8", params, size, x, y, target) == BNN_OK
                _assert_same(target, expected)


# --------------------------------------------------------------------------------------------
# pooling and mean
# --------------------------------------------------------------------------------------------

# (input h, w, c, pool (kh, kw), strides, padding)
POOL_CASES: list[tuple[Geo, int]] = [
    (Geo(8, 8, 2, 2, stride=(2, 2)), 16),
    (Geo(7, 7, 3, 3, stride=(2, 2), padding="same"), 3),  # odd input, same, stride 2
    (Geo(6, 6, 3, 3, stride=(2, 2), padding="same"), 24),  # asymmetric same
    (Geo(5, 6, 3, 3, padding="same"), 1),
    (Geo(9, 7, 5, 3, stride=(2, 2)), 40),  # 5x3 valid
    (Geo(3, 3, 3, 3), 70),  # global
    (Geo(1, 1, 1, 1), 16),  # 1x1 spatial
    (Geo(5, 5, 3, 3, stride=(1, 1), padding=(2, 0, 0, 2)), 3),  # explicit asymmetric pads
]


@pytest.mark.parametrize("op_type", ["AveragePool2D", "MaxPool2D"])
@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: _conv_id((c[0], c[1], c[1], 0)))
def test_pool(backend: Any, case: tuple[Geo, int], act: str, op_type: str) -> None:
    geo, c = case
    rng = np.random.default_rng(500 + POOL_CASES.index(case))
    zp = int(rng.choice([-128, 127, -3]))
    quant = Quant.per_tensor(0.05, zp)
    x = _int8(rng, (1, geo.h, geo.w, c))
    oh, ow = geo.out_hw()
    x_t = Tensor("x", x.shape, "int8", quant)
    y_t = Tensor("y", (1, oh, ow, c), "int8", quant)
    attrs = {"pool": (geo.kh, geo.kw), "strides": geo.stride, "pads": list(geo.pads())}
    graph = _one_op_graph(op_type, [x_t], y_t, {**attrs, "activation": act})
    expected = _reference(graph, {"x": x})
    lo, hi = activation_range(act, quant)
    out = _sentinel(y_t.shape, np.int8)
    function = "bnn_avgpool_s8" if op_type == "AveragePool2D" else "bnn_maxpool_s8"
    status = backend.call(
        function, geo.params(), geo.kh, geo.kw, lo, hi, dims(*x.shape), x, dims(*y_t.shape), out
    )
    assert status == BNN_OK
    _assert_same(out, expected)


def test_avgpool_rounding(backend: Any) -> None:
    """Sums that are exact halves, positive and negative (round half away from zero)."""
    x = np.asarray([1, 2, -1, -2, 3, 0, -3, 0, 127, 127, -128, -128], np.int8).reshape(1, 1, 12, 1)
    geo = Geo(1, 12, 1, 2, stride=(1, 2))
    x_t = Tensor("x", x.shape, "int8", Quant.per_tensor(1.0, 0))
    y_t = Tensor("y", (1, 1, 6, 1), "int8", Quant.per_tensor(1.0, 0))
    graph = _one_op_graph("AveragePool2D", [x_t], y_t, {"pool": (1, 2), "strides": (1, 2)})
    expected = _reference(graph, {"x": x})
    assert expected.reshape(-1).tolist() == [2, -2, 2, -2, 127, -128]
    out = _sentinel((6,), np.int8)
    status = backend.call(
        "bnn_avgpool_s8", geo.params(), 1, 2, -128, 127, dims(*x.shape), x, dims(1, 1, 6, 1), out
    )
    assert status == BNN_OK
    _assert_same(out, expected)


# (h, w, c, (s_in, zp_in), (s_out, zp_out))
MEAN_CASES = [
    (3, 3, 70, (0.05, -128), (0.05, -128)),
    (1, 1, 16, (0.1, 127), (0.07, 0)),
    (7, 7, 3, (0.02, 5), (0.01, -3)),  # ratio 2: positive shift
    (6, 6, 24, (0.01, 0), (0.5, 127)),  # small ratio
    (2, 3, 1, (3e-7, -100), (0.9, 10)),  # tiny ratio: QuantizeMultiplier gives (0, 0)
    (96, 96, 3, (0.03, 17), (0.03, 17)),  # n = 9216
    (5, 1, 40, (0.7, -1), (0.001, 2)),  # saturating
]


@pytest.mark.parametrize("case", MEAN_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}")
def test_mean(backend: Any, case: tuple[Any, ...]) -> None:
    h, w, c, (s_in, zp_in), (s_out, zp_out) = case
    rng = np.random.default_rng(600 + MEAN_CASES.index(case))
    x = _int8(rng, (1, h, w, c))
    x_t = Tensor("x", x.shape, "int8", Quant.per_tensor(s_in, zp_in))
    y_t = Tensor("y", (1, c), "int8", Quant.per_tensor(s_out, zp_out))
    graph = _one_op_graph("Mean", [x_t], y_t, {"axes": (1, 2)})
    expected = _reference(graph, {"x": x})
    q, shift = quantize_multiplier(_f32(s_in) / _f32(s_out))
    out = _sentinel((c,), np.int8)
    status = backend.call("bnn_mean_s8", q, shift, zp_in, zp_out, dims(*x.shape), x, out)
    assert status == BNN_OK
    _assert_same(out, expected)


# --------------------------------------------------------------------------------------------
# quantize, dequantize, requantize
# --------------------------------------------------------------------------------------------


def _quantize_inputs(rng: np.random.Generator, scale: float) -> np.ndarray:
    s = np.float32(scale)
    ties = (np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)) * s  # exact for 2**k
    near_half = np.asarray([0.49999997, -0.49999997, 0.50000006, 1.4999999, 2.5000002], np.float32)
    special = np.asarray([0.0, -0.0, 1e30, -1e30, np.inf, -np.inf, 1e-30, 126.5, -128.5, np.nan])
    return np.concatenate(
        [
            ties,
            near_half * s,
            special.astype(np.float32),
            (rng.normal(0.0, 60.0, 2000) * s).astype(np.float32),
            rng.uniform(-1.0, 1.0, 200).astype(np.float32),
        ]
    ).astype(np.float32)


@pytest.mark.parametrize("rounding", ["half_away", "half_even"])
@pytest.mark.parametrize(
    "scale, zp, qrange",
    [
        (0.25, 0, None),
        (0.25, -128, None),
        (0.25, 127, None),
        (1.0, 127, (-127, 127)),
        (0.0137, 3, (0, 100)),
    ],
)
def test_quantize(
    backend: Any, rounding: str, scale: float, zp: int, qrange: tuple[int, int] | None
) -> None:
    rng = np.random.default_rng(700)
    x = _quantize_inputs(rng, scale)
    x_t = Tensor("x", x.shape, "float32")
    y_t = Tensor("y", x.shape, "int8", Quant.per_tensor(scale, zp))
    attrs: dict[str, Any] = {"rounding": rounding}
    if qrange is not None:
        attrs["qrange"] = qrange
    with np.errstate(invalid="ignore", over="ignore"):
        expected = _reference(_one_op_graph("Quantize", [x_t], y_t, attrs), {"x": x})
    lo, hi = qrange if qrange is not None else (-128, 127)
    mode = ROUND_HALF_AWAY if rounding == "half_away" else ROUND_HALF_EVEN
    out = _sentinel(x.shape, np.int8)
    status = backend.call("bnn_quantize_f32_s8", x.size, x, F32(scale), zp, mode, lo, hi, out)
    assert status == BNN_OK
    _assert_same(out, expected)


def test_quantize_roundings_differ(backend: Any) -> None:
    """The two roundings on the ties of test_transforms, through the C kernel."""
    x = np.asarray([0.125, 0.375, -0.125, -0.375, 100.0, -100.0, 0.0, 0.2], np.float32)
    got = {}
    for mode in (ROUND_HALF_AWAY, ROUND_HALF_EVEN):
        out = _sentinel(x.shape, np.int8)
        assert backend.call("bnn_quantize_f32_s8", 8, x, F32(0.25), -2, mode, -128, 127, out) == 0
        got[mode] = out.tolist()
    assert got[ROUND_HALF_AWAY] == [-1, 0, -3, -4, 127, -128, -2, -1]
    assert got[ROUND_HALF_EVEN] == [-2, 0, -2, -4, 127, -128, -2, -1]


@pytest.mark.parametrize("scale, zp", [(0.05, -128), (0.1, 127), (3.3e-5, 0), (1.7, -9)])
def test_dequantize(backend: Any, scale: float, zp: int) -> None:
    x = np.arange(-128, 128, dtype=np.int8)
    x_t = Tensor("x", x.shape, "int8", Quant.per_tensor(scale, zp))
    y_t = Tensor("y", x.shape, "float32")
    expected = _reference(_one_op_graph("Dequantize", [x_t], y_t, {}), {"x": x})
    out = _sentinel(x.shape, np.float32)
    assert backend.call("bnn_dequantize_s8_f32", x.size, x, F32(scale), zp, out) == BNN_OK
    _assert_same(out, expected)


@pytest.mark.parametrize(
    "s_in, zp_in, s_out, zp_out",
    [(0.5, 3, 0.25, -2), (0.02, -128, 0.1, 127), (0.1, 127, 0.013, -128), (1e-3, 0, 7.0, 0)],
)
@pytest.mark.parametrize("kind", ["tflite", "affine"])
def test_requantize(
    backend: Any, kind: str, s_in: float, zp_in: int, s_out: float, zp_out: int
) -> None:
    x = np.arange(-128, 128, dtype=np.int8)
    x_t = Tensor("x", x.shape, "int8", Quant.per_tensor(s_in, zp_in))
    y_t = Tensor("y", x.shape, "int8", Quant.per_tensor(s_out, zp_out))
    consts: list[Tensor] = []
    attrs: dict[str, Any] = {}
    if kind == "tflite":
        q, shift = quantize_multiplier(_f32(s_in) / _f32(s_out))
        struct = Struct(
            "bnn_output_t",
            kind=OUT_TFLITE,
            q_mult=np.asarray([q], np.int32),
            q_shift=np.asarray([shift], np.int32),
            out_zero_point=zp_out,
            act_min=-128,
            act_max=127,
            bias=np.asarray([1000], np.int32),  # bias is not used
        )
    else:
        mult, shift_a, offset = shared_shift_constants([s_in / s_out], zp_out, 255, "test")
        consts, attrs, struct = _affine_transform(mult, shift_a, offset, (-120, 100))
    expected = _reference(_one_op_graph("Quantize", [x_t, *consts], y_t, attrs), {"x": x})
    out = _sentinel(x.shape, np.int8)
    assert backend.call("bnn_requantize_s8", struct, zp_in, x.size, x, out) == BNN_OK
    _assert_same(out, expected)


def _mbqm_pairs(rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    """(multiplier, shift) pairs at the edges of MultiplyByQuantizedMultiplier."""
    yield from [
        (2**31 - 1, 0),
        (2**31 - 1, -31),
        (2**31 - 1, 31),
        (2**30, -31),
        (2**30, 24),
        (-(2**31), 24),  # with x = -128 << 24 = INT32_MIN: the saturating case
        (-(2**31), 0),
        (1, 0),
        (0, 0),
        (-12345, -3),
    ]
    for _ in range(40):
        yield int(rng.integers(-(2**31), 2**31)), int(rng.integers(-31, 32))


def test_requantize_mbqm_edges(backend: Any) -> None:
    """bnn_requantize_s8 (TFLITE) against multiply_by_quantized_multiplier, any (q, shift)."""
    rng = np.random.default_rng(800)
    x = np.arange(-128, 128, dtype=np.int8)
    for zp_in in (0, -128, 127):
        for q, shift in _mbqm_pairs(rng):
            d = x.astype(np.int64) - zp_in
            expected = np.clip(multiply_by_quantized_multiplier(d, q, shift) + 5, -128, 127)
            struct = Struct(
                "bnn_output_t",
                kind=OUT_TFLITE,
                q_mult=np.asarray([q], np.int32),
                q_shift=np.asarray([shift], np.int32),
                out_zero_point=5,
                act_min=-128,
                act_max=127,
            )
            out = _sentinel(x.shape, np.int8)
            assert backend.call("bnn_requantize_s8", struct, zp_in, x.size, x, out) == BNN_OK
            _assert_same(out, expected.astype(np.int8))


# --------------------------------------------------------------------------------------------
# bad arguments: BNN_ERROR_ARGUMENT and nothing written
# --------------------------------------------------------------------------------------------


def _tflite_struct(channels: int, **changes: Any) -> Struct:
    fields: dict[str, Any] = {
        "kind": OUT_TFLITE,
        "q_mult": np.full(channels, 2**30, np.int32),
        "q_shift": np.full(channels, -8, np.int32),
        "out_zero_point": 0,
        "act_min": -128,
        "act_max": 127,
    }
    fields.update(changes)
    return Struct("bnn_output_t", **fields)


def _bad_outputs(channels: int) -> list[Struct]:
    """Output transforms every int8 MAC kernel must refuse."""
    ones = np.ones(channels, np.int32)
    shifts = np.full(channels, 20, np.int8)
    offsets = np.zeros(channels, np.int64)
    bad_shift = np.full(channels, -8, np.int32)
    bad_shift[-1] = -32
    return [
        _tflite_struct(channels, q_mult=None),
        _tflite_struct(channels, q_shift=None),
        _tflite_struct(channels, q_shift=bad_shift),
        _tflite_struct(channels, act_min=10, act_max=9),
        _tflite_struct(channels, act_max=128),
        _tflite_struct(channels, out_zero_point=-129),
        _tflite_struct(channels, kind=OUT_THRESHOLD),
        _tflite_struct(channels, kind=7),
        Struct("bnn_output_t", kind=OUT_AFFINE, a_mult=ones, a_shift=shifts, a_offset=None),
        Struct(
            "bnn_output_t",
            kind=OUT_AFFINE,
            a_mult=ones,
            a_shift=np.zeros(channels, np.int8),
            a_offset=offsets,
        ),  # shift 0
        Struct(
            "bnn_output_t",
            kind=OUT_AFFINE,
            a_mult=ones,
            a_shift=np.full(channels, 63, np.int8),
            a_offset=offsets,
        ),
        Struct(
            "bnn_output_t",
            kind=OUT_AFFINE,
            a_mult=ones,
            a_shift=shifts,
            a_offset=np.full(channels, 2**62, np.int64),
        ),
        Struct("bnn_output_t", kind=OUT_FLOAT, f_scale=None, f_offset=np.zeros(channels)),
        Struct(
            "bnn_output_t",
            kind=OUT_FLOAT,
            f_scale=np.ones(channels),
            f_offset=np.ones(channels),
            float_activation=3,
        ),
    ]


def _refused(backend: Any, function: str, out: np.ndarray, *args: Any) -> None:
    before = out.copy()
    assert backend.call(function, *args) == BNN_ERROR_ARGUMENT, (function, args)
    assert np.array_equal(out.view(np.uint8), before.view(np.uint8)), f"{function} wrote"


def test_conv2d_bad_arguments(backend: Any) -> None:
    geo = Geo(5, 5, 3, 3, padding="same")
    x, w = np.zeros((1, 5, 5, 4), np.int8), np.zeros((2, 3, 3, 4), np.int8)
    out = _sentinel((1, 5, 5, 2), np.int8)
    good = (
        _ctx(),
        geo.params(),
        _tflite_struct(2),
        dims(1, 5, 5, 4),
        x,
        dims(2, 3, 3, 4),
        w,
        dims(1, 5, 5, 2),
        out,
    )
    assert backend.call("bnn_conv2d_s8", *good) == BNN_OK
    out[...] = SENTINEL

    def bad(**changes: Any) -> None:
        names = ["ctx", "params", "output", "in_dims", "x", "f_dims", "w", "out_dims", "out"]
        args = dict(zip(names, good, strict=True))
        args.update(changes)
        _refused(backend, "bnn_conv2d_s8", out, *args.values())

    for name in ("params", "output", "in_dims", "x", "f_dims", "w", "out_dims", "out"):
        bad(**{name: None})
    bad(in_dims=dims(2, 5, 5, 4))
    bad(out_dims=dims(0, 5, 5, 2))
    bad(in_dims=dims(1, 0, 5, 4))
    bad(in_dims=dims(1, 5, 5, -4))
    bad(f_dims=dims(2, 3, 3, 3))  # input channels differ
    bad(f_dims=dims(3, 3, 3, 4))  # output channels differ
    bad(f_dims=dims(2, 0, 3, 4))
    bad(out_dims=dims(1, 7, 5, 2))  # the last window would start below the input
    bad(out_dims=dims(1, 5, 3, 2))  # one column too few
    p = geo.params()
    for field, value in [
        ("stride_h", 0),
        ("stride_w", -1),
        ("dilation_h", 0),
        ("pad_top", -1),
        ("pad_left", 3),
        ("input_zero_point", 128),
        ("input_zero_point", -129),
    ]:
        changed = Struct("bnn_conv_params_t", **{**p.fields, field: value})
        bad(params=changed)
    for output in _bad_outputs(2):
        bad(output=output)


def test_depthwise_conv2d_bad_arguments(backend: Any) -> None:
    geo = Geo(4, 4, 3, 3, padding="same")
    x, w = np.zeros((1, 4, 4, 3), np.int8), np.zeros((1, 3, 3, 6), np.int8)
    out = _sentinel((1, 4, 4, 6), np.int8)
    good = (
        _ctx(),
        geo.params(depth_multiplier=2),
        _tflite_struct(6),
        dims(1, 4, 4, 3),
        x,
        dims(1, 3, 3, 6),
        w,
        dims(1, 4, 4, 6),
        out,
    )
    assert backend.call("bnn_depthwise_conv2d_s8", *good) == BNN_OK
    out[...] = SENTINEL

    def bad(**changes: Any) -> None:
        names = ["ctx", "params", "output", "in_dims", "x", "f_dims", "w", "out_dims", "out"]
        args = dict(zip(names, good, strict=True))
        args.update(changes)
        _refused(backend, "bnn_depthwise_conv2d_s8", out, *args.values())

    for name in ("params", "output", "in_dims", "x", "f_dims", "w", "out_dims", "out"):
        bad(**{name: None})
    bad(params=geo.params(depth_multiplier=1))
    bad(params=geo.params(depth_multiplier=0))
    bad(params=geo.params(zp_in=200, depth_multiplier=2))
    bad(f_dims=dims(2, 3, 3, 6))
    bad(f_dims=dims(1, 3, 3, 5))
    bad(out_dims=dims(1, 4, 4, 5))
    bad(out_dims=dims(1, 2, 4, 6))
    bad(in_dims=dims(1, 4, 4, 0))
    for output in _bad_outputs(6):
        bad(output=output)


def test_dense_bad_arguments(backend: Any) -> None:
    x, w = np.zeros(8, np.int8), np.zeros((3, 8), np.int8)
    out = _sentinel((3,), np.int8)
    params = Struct("bnn_conv_params_t", input_zero_point=0)
    good = (_ctx(), params, _tflite_struct(3), 8, x, 3, w, out)
    assert backend.call("bnn_dense_s8", *good) == BNN_OK
    out[...] = SENTINEL

    def bad(index: int, value: Any) -> None:
        args = list(good)
        args[index] = value
        _refused(backend, "bnn_dense_s8", out, *args)

    for index in (1, 2, 4, 6, 7):
        bad(index, None)
    bad(3, 0)
    bad(3, -8)
    bad(5, 0)
    bad(5, 2**31 - 1)  # K * O beyond int32
    bad(1, Struct("bnn_conv_params_t", input_zero_point=-129))
    for output in _bad_outputs(3):
        bad(2, output)


def test_add_bad_arguments(backend: Any) -> None:
    a, b = np.zeros(5, np.int8), np.zeros(5, np.int8)
    out = _sentinel((5,), np.int8)
    fields: dict[str, Any] = {
        "kind": OUT_TFLITE,
        "left_shift": 20,
        "a_mult": 2**30,
        "a_shift": -1,
        "b_mult": 2**30,
        "b_shift": -1,
        "out_mult": 2**30,
        "out_shift": -19,
        "act_min": -128,
        "act_max": 127,
    }
    assert backend.call("bnn_add_s8", Struct("bnn_add_params_t", **fields), 5, a, b, out) == 0
    out[...] = SENTINEL
    good = Struct("bnn_add_params_t", **fields)
    _refused(backend, "bnn_add_s8", out, None, 5, a, b, out)
    _refused(backend, "bnn_add_s8", out, good, 5, None, b, out)
    _refused(backend, "bnn_add_s8", out, good, 5, a, None, out)
    _refused(backend, "bnn_add_s8", out, good, 5, a, b, None)
    _refused(backend, "bnn_add_s8", out, good, 0, a, b, out)
    affine = {"kind": OUT_AFFINE, "affine_shift": 10, "act_min": -128, "act_max": 127}
    for changes in [
        {"left_shift": 32},
        {"left_shift": -1},
        {"a_shift": 32},
        {"b_shift": -32},
        {"out_shift": 40},
        {"a_zero_point": 128},
        {"out_zero_point": -200},
        {"act_min": 1, "act_max": 0},
        {"kind": OUT_FLOAT},
        {"kind": OUT_THRESHOLD},
        {**affine, "affine_shift": 0},
        {**affine, "affine_shift": 63},
        {**affine, "affine_offset": -(2**62)},
        {**affine, "b_zero_point": 300},
    ]:
        params = Struct("bnn_add_params_t", **{**fields, **changes})
        _refused(backend, "bnn_add_s8", out, params, 5, a, b, out)


def test_pool_bad_arguments(backend: Any) -> None:
    geo = Geo(4, 4, 2, 2, stride=(2, 2))
    x = np.zeros((1, 4, 4, 3), np.int8)
    out = _sentinel((1, 2, 2, 3), np.int8)
    for function in ("bnn_avgpool_s8", "bnn_maxpool_s8"):
        good = [geo.params(), 2, 2, -128, 127, dims(1, 4, 4, 3), x, dims(1, 2, 2, 3), out]
        assert backend.call(function, *good) == BNN_OK
        out[...] = SENTINEL
        for index, value in [
            (0, None),
            (5, None),
            (6, None),
            (7, None),
            (8, None),
            (1, 0),
            (2, -1),
            (3, -129),
            (4, 128),
            (5, dims(1, 4, 4, 2)),
            (7, dims(1, 3, 2, 3)),
            (7, dims(1, 1, 2, 3)),
            (5, dims(2, 4, 4, 3)),
            (0, Struct("bnn_conv_params_t", stride_h=2, stride_w=0)),
            (0, Struct("bnn_conv_params_t", stride_h=2, stride_w=2, pad_top=2)),
        ]:
            args = list(good)
            args[index] = value
            _refused(backend, function, out, *args)
    big = _sentinel((1, 1, 1, 1), np.int8)
    # pool 4096 x 1025 > 2**22 taps; refused before any read, so a small buffer stands in for
    # the input (small enough for an emulated target's memory)
    x_big = np.zeros(16, np.int8)
    _refused(
        backend,
        "bnn_avgpool_s8",
        big,
        Struct("bnn_conv_params_t", stride_h=1, stride_w=1),
        4096,
        1025,
        -128,
        127,
        dims(1, 4096, 1025, 1),
        x_big,
        dims(1, 1, 1, 1),
        big,
    )


def test_mean_bad_arguments(backend: Any) -> None:
    x = np.zeros((1, 2, 2, 3), np.int8)
    out = _sentinel((3,), np.int8)
    good = [2**30, -1, 0, 0, dims(1, 2, 2, 3), x, out]
    assert backend.call("bnn_mean_s8", *good) == BNN_OK
    out[...] = SENTINEL
    for index, value in [
        (0, -1),
        (1, 32),
        (1, -32),
        (2, 128),
        (3, -129),
        (4, None),
        (5, None),
        (6, None),
        (4, dims(1, 2, 0, 3)),
        (4, dims(3, 2, 2, 3)),
    ]:
        args = list(good)
        args[index] = value
        _refused(backend, "bnn_mean_s8", out, *args)


def test_quantize_bad_arguments(backend: Any) -> None:
    x = np.zeros(4, np.float32)
    q = np.zeros(4, np.int8)
    out = _sentinel((4,), np.int8)
    out_f = _sentinel((4,), np.float32)
    fn = "bnn_quantize_f32_s8"
    good = [4, x, F32(0.5), 0, ROUND_HALF_EVEN, -128, 127, out]
    assert backend.call(fn, *good) == BNN_OK
    out[...] = SENTINEL
    for index, value in [
        (0, 0),
        (1, None),
        (7, None),
        (2, F32(0.0)),
        (2, F32(-1.0)),
        (2, F32(float("inf"))),
        (2, F32(float("nan"))),
        (3, 128),
        (4, 2),
        (5, 128),
        (6, -129),
        (5, -129),
    ]:
        args = list(good)
        args[index] = value
        _refused(backend, fn, out, *args)
    fn = "bnn_dequantize_s8_f32"
    for args in [
        (0, q, F32(1.0), 0, out_f),
        (4, None, F32(1.0), 0, out_f),
        (4, q, F32(1.0), 0, None),
        (4, q, F32(1.0), -129, out_f),
    ]:
        _refused(backend, fn, out_f, *args)
    fn = "bnn_requantize_s8"
    good_r = [_tflite_struct(1), 0, 4, q, out]
    assert backend.call(fn, *good_r) == BNN_OK
    out[...] = SENTINEL
    float_output = Struct(
        "bnn_output_t", kind=OUT_FLOAT, f_scale=np.ones(1, np.float32), f_offset=np.zeros(1)
    )
    for index, value in [(0, None), (1, 128), (2, 0), (3, None), (4, None), (0, float_output)]:
        args = list(good_r)
        args[index] = value
        _refused(backend, fn, out, *args)
    for output in _bad_outputs(1):
        _refused(backend, fn, out, output, 0, 4, q, out)


# --------------------------------------------------------------------------------------------
# DepthwiseConv2D in place (the memory planner's rule, planner._depthwise_in_place)
# --------------------------------------------------------------------------------------------

# more geometries the rule accepts: MobileNetV2's stride-2 blocks (pads 0/1 and 1/1), valid
IN_PLACE_CASES: list[tuple[Geo, int, int, int]] = [
    (Geo(8, 8, 3, 3, stride=(2, 2), padding=(0, 1, 0, 1)), 16, 1, -128),
    (Geo(9, 9, 3, 3, stride=(2, 2), padding=(1, 1, 1, 1)), 8, 1, 5),
    (Geo(7, 6, 3, 3), 12, 1, 0),  # stride 1, valid
    (Geo(12, 12, 3, 3, stride=(2, 2), padding="same"), 24, 1, -3),  # the 3x3 path, interior
]


@pytest.mark.parametrize("kind", ["tflite", "affine"])
def test_depthwise_conv2d_in_place(backend: Any, kind: str) -> None:
    """Where the planner lets a depthwise convolution write over its input, the C kernel (every
    path: plain, M7 3x3 and general) gives the reference's output in the input's memory (the
    same buffer for both arguments, also on the emulator). Of the geometries of this file, the
    rule accepts 9: stride 2 with "same" and explicit pads, "valid" windows, 1x1 kernels and
    3x3 -> 1x1 (tests/test_planner.py tests the rule itself)."""
    from bnncube.planner import _depthwise_in_place

    ran = []
    for case in DW_CASES + IN_PLACE_CASES:
        geo, c, mult, zp_in = case
        rng = np.random.default_rng(300 + len(str(case)))
        x = _int8(rng, (1, geo.h, geo.w, c))
        w = _int8(rng, (1, geo.kh, geo.kw, c * mult))
        oh, ow = geo.out_hw()
        mac = _mac_output(kind, rng, c * mult, geo.kh * geo.kw, 7)
        attrs = {**geo.attrs(), "depth_multiplier": mult}
        out_shape = (1, oh, ow, c * mult)
        graph = _mac_graph("DepthwiseConv2D", x, zp_in, w, 3, out_shape, mac, attrs)
        if not _depthwise_in_place(graph, graph.ops[0]):
            continue
        expected = _reference(graph, {"x": x})
        buf = x.reshape(-1).copy()  # the input, overwritten by the output
        status = _call_depthwise(backend, geo, zp_in, mult, mac, x, w, out_shape, buf, buf)
        assert status == BNN_OK, _conv_id(case)
        got = buf[: expected.size].reshape(expected.shape)
        assert np.array_equal(got, expected), _conv_id(case)
        ran.append(_conv_id(case))
    assert len(ran) == 9, ran


@pytest.mark.parametrize("act", [(-100, 90, -128), (-128, 127, -128), (-128, 127, 127)])
def test_depthwise_tflite_every_multiplier_and_shift(
    backend: Any, act: tuple[int, int, int]
) -> None:
    """The TFLite store of the 3x3 depthwise path on extreme per-channel constants, against the
    reference's MultiplyByQuantizedMultiplier: multipliers INT32_MIN (the saturating case, which
    the M7 path hands to C), 2^31 - 1, 2^30 and small ones, shifts from -31 to +8, zero points
    at both ends, a narrow activation range (the C store) and the full one (the M7's
    6-instruction store for the channels with a multiplier > 0 and a shift from -22 to -1;
    channels 8-11 land mostly inside int8, so that the roundings decide). Inputs at -128 and
    127 give extreme sums."""
    c = 12
    rng = np.random.default_rng(8)
    x = rng.choice(np.asarray([-128, 127, 0, 1], np.int8), size=(1, 9, 11, c))
    w = rng.choice(np.asarray([-128, 127, -1], np.int8), size=(1, 3, 3, c))
    mult = np.asarray(
        [-(2**31), 2**31 - 1, 2**30, 1, 12345, -(2**31), 2**30 + 7, 2**31 - 1,
         2**30, 1518500250, 2**19, 2**24 + 3]
    )  # fmt: skip
    shift = np.asarray([0, -31, -8, 8, -1, 1, -22, 3, -9, -10, -2, -5], np.int32)
    bias = rng.integers(-(2**20), 2**20, c).astype(np.int32)
    bias[8:] //= 2**10
    zp_in = 127
    lo, hi, zp_out = act
    geo = Geo(9, 11, 3, 3, padding="same")
    got = _depthwise_tflite_call(backend, geo, zp_in, x, w, (bias, mult, shift), act)
    scaled = _depthwise_tflite_scaled(x, w, zp_in, geo, bias, mult, shift)
    want = np.clip(scaled + zp_out, lo, hi)
    assert (np.abs(scaled[..., 8:]) < 90).mean() > 0.7
    assert np.array_equal(got, want.astype(np.int8))


def _depthwise_tflite_call(
    backend: Any,
    geo: Geo,
    zp_in: int,
    x: np.ndarray,
    w: np.ndarray,
    constants: tuple[np.ndarray, np.ndarray, np.ndarray],
    act: tuple[int, int, int],
) -> np.ndarray:
    """bnn_depthwise_conv2d_s8 (depth multiplier 1) with a TFLite store: constants (bias,
    multipliers, shifts), act (act_min, act_max, output zero point); returns the output as
    [OH, OW, C] after checking BNN_OK."""
    bias, mult, shift = constants
    lo, hi, zp_out = act
    (oh, ow), c = geo.out_hw(), x.shape[-1]
    out = _sentinel((1, oh, ow, c), np.int8)
    output = Struct(
        "bnn_output_t",
        kind=OUT_TFLITE,
        bias=bias,
        q_mult=mult.astype(np.int32),
        q_shift=shift,
        out_zero_point=zp_out,
        act_min=lo,
        act_max=hi,
    )
    args = [_ctx(), geo.params(zp_in, 1), output, dims(*x.shape), x, dims(*w.shape), w]
    status = backend.call("bnn_depthwise_conv2d_s8", *args, dims(1, oh, ow, c), out)
    assert status == BNN_OK
    return out.reshape(oh, ow, c)


def _depthwise_tflite_scaled(
    x: np.ndarray,
    w: np.ndarray,
    zp_in: int,
    geo: Geo,
    bias: np.ndarray,
    mult: np.ndarray,
    shift: np.ndarray,
) -> np.ndarray:
    """The reference of a 3x3 depthwise TFLite store before the zero point and the clamp: the
    int32 sums (exact, + bias wrapping like int32), then MultiplyByQuantizedMultiplier per
    channel."""
    from bnncube.converters.reference import multiply_by_quantized_multiplier

    (oh, ow), (sh, sw), c = geo.out_hw(), geo.stride, x.shape[-1]
    pads = geo.pads()
    xp = np.pad(x[0].astype(np.int64) - zp_in, ((pads[0], pads[1]), (pads[2], pads[3]), (0, 0)))
    acc = np.zeros((oh, ow, c), np.int64)
    for i in range(3):
        for j in range(3):
            window = xp[i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
            acc += window * w[0, i, j, :].astype(np.int64)
    acc = ((acc + bias + 2**31) % 2**32) - 2**31  # acc + bias wraps like int32
    scaled = np.empty_like(acc)
    for o in range(c):
        scaled[..., o] = multiply_by_quantized_multiplier(acc[..., o], int(mult[o]), int(shift[o]))
    return scaled


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("zp_out", [-128, 127, 0])
def test_depthwise_tflite_fast_channels(backend: Any, zp_out: int, stride: int) -> None:
    """The 3x3 depthwise path with every channel taking the M7's fast TFLite store (multipliers
    in [2^30, 2^31), right shifts 2 .. 12, the full int8 range), so that the interior pixels of
    each row run in one assembly loop (bnn_dw3_asm); most results lie inside int8, so that
    the roundings decide them."""
    c = 8
    rng = np.random.default_rng([11, zp_out + 128, stride])
    x = _int8(rng, (1, 11, 13, c))
    w = _int8(rng, (1, 3, 3, c))
    w[..., :2] = rng.integers(-2, 3, (1, 3, 3, 2))  # small sums for the small shifts
    mult = rng.integers(2**30, 2**31, c)
    shift = np.asarray([-2, -3, -7, -8, -9, -10, -12, -8], np.int32)
    bias = rng.integers(-(2**12), 2**12, c).astype(np.int32)
    zp_in = -5
    geo = Geo(11, 13, 3, 3, stride=(stride, stride), padding="same")
    got = _depthwise_tflite_call(
        backend, geo, zp_in, x, w, (bias, mult, shift), (-128, 127, zp_out)
    )
    scaled = _depthwise_tflite_scaled(x, w, zp_in, geo, bias, mult, shift)
    assert (np.abs(scaled) < 100).mean() > 0.6
    want = np.clip(scaled + zp_out, -128, 127)
    assert np.array_equal(got, want.astype(np.int8))


@pytest.mark.parametrize("channels", [17, 11])
@pytest.mark.parametrize("act", [(-128, 127, -128), (-128, 127, 127), (-100, 90, 3)])
def test_pointwise_tflite_every_multiplier_and_shift(
    backend: Any, act: tuple[int, int, int], channels: int
) -> None:
    """The TFLite stores of the pointwise paths (255 pixels: 63 blocks of 4, a pair, one) on
    extreme per-channel constants, against the reference's MultiplyByQuantizedMultiplier. With
    the full int8 range the M7 takes its 6-instruction store for every channel with a multiplier
    > 0, a shift from -22 to -1 and |acc + bias| < 2^30 for any acc, and the C store for the
    rest (INT32_MIN, a negative multiplier, shifts 0 .. 3 and -31, biases near the ends of
    int32); a narrow range takes the C store throughout. With the first 11 channels only (all of
    the first kind) and the full range, the whole channel loop of the 4-pixel blocks runs in
    assembly (bnn_x4_asm). Channels 1-7 land mostly inside int8, so that the roundings (ties
    included) decide the result; channels 0, 8, 9 and 10 have the fast store's largest biases
    (9 and 10 with its largest shifts), channels 11, 12 and 16 biases at the ends of int32, so
    that acc + bias wraps or reaches the ends of the 64-bit product."""
    from bnncube.converters.reference import multiply_by_quantized_multiplier

    lo, hi, zp_out = act
    c, zp_in = 128, -3
    rng = np.random.default_rng(9)
    x = _int8(rng, (1, 15, 17, c))
    mult = np.asarray(
        [2**31 - 1, 2**30, 1518500250, 2**30 + 7, 2**31 - 1, 2**19, 2**24 + 3, 2**22 + 1,
         1, 2**31 - 1, 2**31 - 1, -(2**31), -5, 2**30, 2**30, 2**31 - 1, 2**31 - 1]
    )  # fmt: skip
    shift = np.asarray([-2, -9, -10, -9, -10, -2, -3, -5, -2, -22, -21, 0, -4, -1, 0, 3, -31])
    mult, shift = mult[:channels], shift[:channels]
    o = mult.size
    w = _int8(rng, (o, 1, 1, c))
    bias = rng.integers(-(2**16), 2**16, o, dtype=np.int64)
    edge = 2**30 - 1 - 128 * 255 * c  # the largest |bias| of the fast store
    bias[[0, 8, 9, 10]] = [edge, -edge, -edge, edge]
    if o > 16:
        bias[[11, 12, 16]] = [2**31 - 1, -(2**31), -(2**31) + 4_000_000]
    geo = Geo(15, 17, 1, 1)
    out = _sentinel((1, 15, 17, o), np.int8)
    output = Struct(
        "bnn_output_t",
        kind=OUT_TFLITE,
        bias=bias.astype(np.int32),
        q_mult=mult.astype(np.int32),
        q_shift=shift.astype(np.int32),
        out_zero_point=zp_out,
        act_min=lo,
        act_max=hi,
    )
    args = [_ctx(), geo.params(zp_in), output, dims(*x.shape), x, dims(*w.shape), w]
    status = backend.call("bnn_conv2d_s8", *args, dims(1, 15, 17, o), out)
    assert status == BNN_OK
    acc = (x[0].astype(np.int64) - zp_in) @ w[:, 0, 0, :].astype(np.int64).T
    acc = ((acc + bias + 2**31) % 2**32) - 2**31  # acc + bias wraps like int32
    scaled = np.empty_like(acc)
    for k in range(o):
        scaled[..., k] = multiply_by_quantized_multiplier(acc[..., k], int(mult[k]), int(shift[k]))
    want = np.clip(scaled + zp_out, lo, hi)
    # the roundings, not the clamp, decide most of these (within the clamp with a centred zp)
    assert (np.abs(scaled[..., 1:8]) < 90).mean() > 0.7
    assert np.array_equal(out.reshape(15, 17, o), want.astype(np.int8))
