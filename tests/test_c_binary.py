import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The binary C kernels (runtime_c/src/bnn_bitpack.c, bnn_bconv2d.c) equal the Python reference bit
# for bit: bnn_bitpack_s8 / bnn_bitpack_f32 against binary_reference.bitpack, bnn_bconv2d against
# reference.OPS["BinaryConv2D"] run on a one-op IR graph (all three output transforms, both
# pad values, every padding split, strides 1 and 2, channel counts around the word size).
# Kernels are called only through ``backend.call`` so that an emulated Cortex-M7 backend can be
# added to the ``backend`` fixture's parameters. The host builds are the plain C path and the
# Cortex-M7 path's algorithm compiled for the host (BNN_TEST_M7_PATH: portable C for USADA8,
# SSUB8 and SEL). BNN_C_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer
# (the caller preloads libasan). Every output buffer has a guard zone after it that must stay
# untouched, and a refused call must leave the whole buffer as it was.

from dataclasses import dataclass, replace  # noqa: E402
from functools import cache  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.converters.binary_reference import bitpack, pack_filters  # noqa: E402
from bnncube.converters.ir import Graph, Op, Tensor, packed_words  # noqa: E402
from bnncube.converters.reference import OPS, _Ctx  # noqa: E402
from bnncube.converters.transforms import affine_constants, threshold_constants  # noqa: E402
from bnncube.runtime_c.build import build_host_library  # noqa: E402
from bnncube.runtime_c.cabi import (  # noqa: E402
    ACT_NONE,
    ACT_RELU,
    ACT_RELU6,
    BNN_ERROR_ARGUMENT,
    BNN_OK,
    OUT_AFFINE,
    OUT_FLOAT,
    OUT_TFLITE,
    OUT_THRESHOLD,
    HostBackend,
    Struct,
    dims,
)
from bnncube.validation.kernel_calls import rounding_ready  # noqa: E402

# backend name -> build_host_library options
BACKENDS: dict[str, dict[str, Any]] = {
    "host-plain": {"plain_c": True},
    "host-m7path": {"extra_flags": ("-DBNN_TEST_M7_PATH=1",)},
}

GUARD = 16  # elements after every output buffer that a kernel must not touch
ACTIVATIONS = {"none": ACT_NONE, "relu": ACT_RELU, "relu6": ACT_RELU6}
KINDS = ("affine", "float", "threshold")


@pytest.fixture(scope="module", params=[*sorted(BACKENDS), "m7", "m7-plain"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, m7_runtime: Any
) -> Any:
    """Host builds (plain C, and the M7 path in portable C), and the Cortex-M7 build in Unicorn
    with its DSP paths (``m7``) and with plain C (``m7-plain``)."""
    name = str(request.param)
    if name.startswith("m7"):
        if os.environ.get("BNN_C_SANITIZE") == "1":
            pytest.skip("the sanitizer run covers the host builds only")
        return m7_runtime(plain=name == "m7-plain")
    lib = build_host_library(
        tmp_path_factory.mktemp(f"bnn_c_{name}"),
        sanitize=os.environ.get("BNN_C_SANITIZE") == "1",
        **BACKENDS[name],
    )
    return HostBackend(lib)


# --------------------------------------------------------------------------------------------
# bitpack
# --------------------------------------------------------------------------------------------

BITPACK_CHANNELS = list(range(1, 131))
SENTINEL_U32 = np.uint32(0xDEADBEEF)


def _words_buffer(rows: int, channels: int) -> np.ndarray:
    return np.full(rows * packed_words(channels) + GUARD, SENTINEL_U32, np.uint32)


def _check_words(out: np.ndarray, expected: np.ndarray) -> None:
    n = expected.size
    assert np.array_equal(out[:n], expected.reshape(-1))
    assert np.all(out[n:] == SENTINEL_U32), "bitpack wrote past its output"


def test_bitpack_s8(backend: Any) -> None:
    rng = np.random.default_rng(1)
    rows = 3
    for c in BITPACK_CHANNELS:
        for zp in (-128, -5, 0, 7, 127):
            x = rng.integers(-128, 128, size=(rows, c), dtype=np.int8)
            x[0, ::3] = np.int8(zp)  # the threshold itself gives bit 0
            x[1, :] = np.int8(-128)
            # an offset view: the M7 path loads 4 bytes at a time from any address
            offset = c % 4
            buf = np.zeros(rows * c + offset, np.int8)
            buf[offset:] = x.reshape(-1)
            view = buf[offset:]
            out = _words_buffer(rows, c)
            assert backend.call("bnn_bitpack_s8", rows, c, zp, view, out) == BNN_OK
            _check_words(out, bitpack(x, zp))


def test_bitpack_s8_zero_point_beyond_int8(backend: Any) -> None:
    x = np.arange(-128, 128, dtype=np.int8).reshape(4, 64)
    for zp in (-1000, -129, 128, 300):
        out = _words_buffer(4, 64)
        assert backend.call("bnn_bitpack_s8", 4, 64, zp, x, out) == BNN_OK
        _check_words(out, bitpack(x, zp))
        assert np.all(out[:8] == (0 if zp < 0 else 0xFFFFFFFF))


def test_bitpack_f32(backend: Any) -> None:
    rng = np.random.default_rng(2)
    tiny = np.float32(1e-45)  # the smallest subnormal
    specials = np.asarray(
        [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, tiny, -tiny, 1.0, -1.0], np.float32
    )
    rows = 3
    for c in BITPACK_CHANNELS:
        x = rng.standard_normal((rows, c)).astype(np.float32)
        x[0] = np.resize(specials, c)
        x[1, : c // 2] = -0.0
        out = _words_buffer(rows, c)
        assert backend.call("bnn_bitpack_f32", rows, c, x, out) == BNN_OK
        _check_words(out, bitpack(x))
    # -0.0, +0.0 and NaN (either sign) give bit 0; -inf and -subnormal bit 1
    assert int(bitpack(specials)[0]) == (1 << 3) | (1 << 7) | (1 << 9)


def test_bitpack_rows_zero(backend: Any) -> None:
    out = _words_buffer(0, 5)
    assert backend.call("bnn_bitpack_s8", 0, 5, 0, np.zeros(1, np.int8), out) == BNN_OK
    assert backend.call("bnn_bitpack_f32", 0, 5, np.zeros(1, np.float32), out) == BNN_OK
    assert np.all(out == SENTINEL_U32)


@pytest.mark.parametrize(
    "rows, channels, null_in, null_out",
    [
        (-1, 8, False, False),
        (2, 0, False, False),
        (2, -3, False, False),
        (2, 8, True, False),
        (2, 8, False, True),
        (2**16, 2**16, False, False),
    ],
)
def test_bitpack_bad_arguments(
    backend: Any, rows: int, channels: int, null_in: bool, null_out: bool
) -> None:
    x8 = None if null_in else np.zeros(64, np.int8)
    xf = None if null_in else np.zeros(64, np.float32)
    out = None if null_out else np.full(64, SENTINEL_U32, np.uint32)
    assert backend.call("bnn_bitpack_s8", rows, channels, 0, x8, out) == BNN_ERROR_ARGUMENT
    assert backend.call("bnn_bitpack_f32", rows, channels, xf, out) == BNN_ERROR_ARGUMENT
    if out is not None:
        assert np.all(out == SENTINEL_U32)


# --------------------------------------------------------------------------------------------
# binary Conv2D: cases, reference, C call
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    h: int
    w: int
    c: int
    o: int
    kh: int
    kw: int
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    pad_value: int
    kind: str  # "affine" | "float" | "threshold"
    clamp: tuple[int, int] = (-128, 127)
    activation: str = "none"
    fill: str = "random"  # "random" | "agree" (every product +1) | "disagree" (every one -1)
    seed: int = 0

    @property
    def out_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.pads
        oh = (self.h + top + bottom - self.kh) // self.stride[0] + 1
        ow = (self.w + left + right - self.kw) // self.stride[1] + 1
        return oh, ow

    @property
    def k_all(self) -> int:
        return self.kh * self.kw * self.c


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TF "same" padding (before, after): output ceil(size / s)."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class Data:
    x_packed: np.ndarray  # uint32 [1, H, W, NW]
    w_pm1: np.ndarray  # int8 +1/-1 [O, KH, KW, C]
    w_packed: np.ndarray  # uint32 [O, KH, KW, NW]
    consts: tuple[tuple[str, np.ndarray, str], ...]  # (name, value, IR dtype) of the transform
    expected: np.ndarray  # the reference output (int8, float32 or packed uint32)


def _transform_constants(case: Case, rng: np.random.Generator) -> list[tuple[str, np.ndarray, str]]:
    o, k = case.o, case.k_all
    sign = rng.choice([-1.0, 1.0], size=o)
    if case.kind == "affine":
        # output ~ m * acc + b over the int8 range; some exact powers of two (rounding ties)
        m = sign * rng.uniform(0.2, 6.0, size=o) * 40.0 / np.sqrt(k)
        b = rng.uniform(-60.0, 60.0, size=o)
        ties = rng.random(o) < 0.3
        m[ties] = sign[ties] * rng.choice([0.5, 0.25, 0.125], size=int(ties.sum()))
        b[ties] = rng.integers(-8, 8, size=int(ties.sum())) / 2.0
        mult, shift, offset = affine_constants(m, b, k, "test")
        return [
            ("multiplier", mult, "int32"),
            ("shift", shift, "int8"),
            ("offset", offset, "int64"),
        ]
    if case.kind == "float":
        scale = (sign * rng.uniform(0.01, 0.5, size=o) / np.sqrt(k)).astype(np.float32)
        offset = rng.uniform(-1.0, 1.0, size=o).astype(np.float32)
        return [("scale", scale, "float32"), ("offset", offset, "float32")]
    # threshold: m > 0 (direction 1), m < 0 (-1), m == 0 (0, constant bit either way); the
    # thresholds land among the reachable accumulators, integer ones exactly on them
    m = sign * rng.uniform(0.1, 2.0, size=o)
    b = -m * rng.uniform(-0.6, 0.6, size=o) * k
    exact = rng.random(o) < 0.3
    m[exact] = sign[exact]
    b[exact] = -sign[exact] * rng.integers(-k, k + 1, size=int(exact.sum()))
    zero = rng.random(o) < 0.15
    m[zero] = 0.0
    b[zero] = rng.choice([-1.0, 0.0, 1.0], size=int(zero.sum()))
    thr, direction = threshold_constants(m, b, k, "test")
    return [("threshold", thr, "int32"), ("direction", direction, "int8")]


def reference_bconv(case: Case, x_packed: np.ndarray, w_pm1: np.ndarray, consts: Any) -> Any:
    """The output of OPS["BinaryConv2D"] on a one-op IR graph."""
    oh, ow = case.out_hw
    g = Graph("bconv")
    g.add_tensor(Tensor("x", (1, case.h, case.w, case.c), "binary"))
    w_name = g.add_const("w", w_pm1, "binary")
    out_dtype = {"affine": "int8", "float": "float32", "threshold": "binary"}[case.kind]
    g.add_tensor(Tensor("y", (1, oh, ow, case.o), out_dtype))
    inputs = ["x", w_name] + [g.add_const(name, value, dt) for name, value, dt in consts]
    attrs = {
        "strides": case.stride,
        "pads": list(case.pads),
        "pad_value": case.pad_value,
        "output_transform": case.kind,
        "clamp": case.clamp,
        "activation": case.activation,
    }
    op = g.add_op(Op("bconv", "BinaryConv2D", inputs, ["y"], attrs))
    g.inputs, g.outputs = ["x"], ["y"]
    return np.asarray(OPS["BinaryConv2D"](_Ctx(g, op, {"x": x_packed})))


@cache
def case_data(case: Case) -> Data:
    """Inputs, constants and reference output of a case (shared by the backends)."""
    rng = np.random.default_rng(
        [case.seed, case.h, case.w, case.c, case.o, case.kh, case.kw, case.pad_value]
    )
    if case.fill == "random":
        x_pm1 = rng.choice(np.asarray([-1, 1], np.int8), size=(1, case.h, case.w, case.c))
        w_pm1 = rng.choice(np.asarray([-1, 1], np.int8), size=(case.o, case.kh, case.kw, case.c))
    else:
        x_pm1 = np.full((1, case.h, case.w, case.c), -1, np.int8)
        w_pm1 = np.full((case.o, case.kh, case.kw, case.c), 1 if case.fill == "disagree" else -1)
        w_pm1 = w_pm1.astype(np.int8)
    x_packed = bitpack(x_pm1)
    consts = tuple(_transform_constants(case, rng))
    expected = reference_bconv(case, x_packed, w_pm1, consts)
    return Data(x_packed, w_pm1, pack_filters(w_pm1), consts, expected)


def output_struct(case: Case, consts: Any) -> Struct:
    values = {name: value for name, value, _ in consts}
    if case.kind == "affine":
        return Struct(
            "bnn_output_t",
            kind=OUT_AFFINE,
            a_mult=values["multiplier"],
            a_shift=values["shift"],
            a_offset=rounding_ready(values["offset"], values["shift"]),
            act_min=case.clamp[0],
            act_max=case.clamp[1],
        )
    if case.kind == "float":
        return Struct(
            "bnn_output_t",
            kind=OUT_FLOAT,
            f_scale=values["scale"],
            f_offset=values["offset"],
            float_activation=ACTIVATIONS[case.activation],
        )
    return Struct(
        "bnn_output_t",
        kind=OUT_THRESHOLD,
        t_threshold=values["threshold"],
        t_direction=values["direction"],
    )


def out_buffer(case: Case) -> np.ndarray:
    """The C output buffer (flat) with GUARD sentinel elements after it."""
    oh, ow = case.out_hw
    if case.kind == "threshold":
        return np.full(oh * ow * packed_words(case.o) + GUARD, SENTINEL_U32, np.uint32)
    if case.kind == "float":
        return np.full(oh * ow * case.o + GUARD, np.nan, np.float32)
    return np.full(oh * ow * case.o + GUARD, 0x5A, np.int8)


def call_bconv(
    backend: Any,
    case: Case,
    data: Data,
    out: Any,
    *,
    params: Any = "default",
    output: Any = "default",
    in_dims: Any = "default",
    filter_dims: Any = "default",
    out_dims: Any = "default",
    x: Any = "default",
    w: Any = "default",
    ctx: Any = None,
) -> int:
    """bnn_bconv2d on a case; any argument can be replaced (None passes NULL)."""
    args = call_args(case, data)
    given = (ctx, params, output, in_dims, x, filter_dims, w, out_dims)
    for i, value in enumerate(given):
        if not isinstance(value, str):
            args[i] = value
    args.append(out)
    return int(backend.call("bnn_bconv2d", *args))


def scratch_bytes(backend: Any, case: Case) -> int:
    """bnn_bconv2d_scratch_size for a case, checked against the generator's Python mirror."""
    from bnncube.validation.kernel_calls import bconv2d_scratch_bytes

    x_shape, w_shape = (1, case.h, case.w, case.c), (case.o, case.kh, case.kw, case.c)
    oh, ow = case.out_hw
    size = backend.int_function(
        "bnn_bconv2d_scratch_size", dims(*x_shape), dims(*w_shape), dims(1, oh, ow, case.o)
    )
    assert size == bconv2d_scratch_bytes(x_shape, w_shape, (1, oh, ow, case.o)), case
    return int(size)


def scratch_ctx(size: int) -> Struct:
    return Struct("bnn_context_t", buf=np.zeros(size, np.uint8), size=size)


def run_case(backend: Any, case: Case) -> None:
    """The case without a scratch, and with the one bnn_bconv2d_scratch_size asks for."""
    data = case_data(case)
    size = scratch_bytes(backend, case)
    for ctx in [None, scratch_ctx(size)] if size > 0 else [None]:
        out = out_buffer(case)
        status = call_bconv(backend, case, data, out, ctx=ctx)
        assert status == BNN_OK, case
        n = data.expected.size
        got = out[:n].reshape(data.expected.shape)
        assert np.array_equal(got, data.expected), (
            f"{case} scratch {ctx is not None}\nC:   {got.ravel()[:40]}\nref: "
            + str(data.expected.ravel()[:40])
        )
        guard = out[n:]
        if case.kind == "float":
            assert np.all(np.isnan(guard)), f"{case}: wrote past the output"
        else:
            assert np.all(guard == out_buffer(case)[n:]), f"{case}: wrote past the output"


# --------------------------------------------------------------------------------------------
# binary Conv2D: tests
# --------------------------------------------------------------------------------------------

CHANNELS = (1, 3, 16, 24, 32, 40, 64, 70, 128)
OUT_CHANNELS = (1, 5, 24, 33, 64)
KERNELS = ((3, 3), (1, 1), (3, 1))
# (h, w, strides, padding): 1x1 inputs, odd sizes, stride 2 on odd and even inputs
GEOMETRIES = (
    (1, 1, (1, 1), "same"),
    (5, 7, (1, 1), "same"),
    (7, 5, (2, 2), "same"),
    (9, 9, (2, 2), "valid"),
    (6, 4, (1, 1), "valid"),
    (4, 6, (2, 1), "same"),
    (3, 3, (1, 1), "same"),
    (8, 8, (2, 2), "same"),
    (5, 5, (1, 2), "valid"),
    (2, 3, (2, 2), "same"),
    (1, 4, (1, 1), "same"),
)
CLAMPS = ((-128, 127), (-128, 20), (-5, 5), (0, 127), (3, 3))


def _grid_case(
    c: int, index: int, o: int, kernel: tuple[int, int], pad_value: int, kind: str
) -> Case:
    h, w, stride, padding = GEOMETRIES[index % len(GEOMETRIES)]
    kh, kw = kernel
    if padding == "valid" and h >= kh and w >= kw:
        pads = (0, 0, 0, 0)
    else:
        pads = same_pads(h, kh, stride[0]) + same_pads(w, kw, stride[1])
    return Case(
        h,
        w,
        c,
        o,
        kh,
        kw,
        stride,
        pads,
        pad_value,
        kind,
        clamp=CLAMPS[index % len(CLAMPS)],
        activation=("none", "relu", "relu6")[(index // 3) % 3],  # kinds cycle by 3,
        seed=index,
    )


@pytest.mark.parametrize("c", CHANNELS)
def test_bconv_grid(backend: Any, c: int) -> None:
    """Every output channel count x kernel x pad value x output kind, geometries cycling."""
    index = 0
    for o in OUT_CHANNELS:
        for kernel in KERNELS:
            for pad_value in (0, 1):
                for kind in KINDS:
                    run_case(backend, _grid_case(c, index, o, kernel, pad_value, kind))
                    index += 1


@pytest.mark.parametrize("pad_value", [0, 1])
@pytest.mark.parametrize("c", [16, 40])
def test_bconv_padding_splits(backend: Any, c: int, pad_value: int) -> None:
    """Every (before, after) padding pair up to K - 1 on both axes, strides 1 and 2."""
    index = 0
    for kh, kw in ((3, 3), (3, 1), (1, 3)):
        for stride in ((1, 1), (2, 2), (1, 2)):
            for top in range(kh):
                for bottom in range(kh):
                    for left in range(kw):
                        for right in range(kw):
                            case = Case(
                                5 + index % 2,
                                6 + index % 3,
                                c,
                                5 if index % 2 else 24,
                                kh,
                                kw,
                                stride,
                                (top, bottom, left, right),
                                pad_value,
                                ("threshold", "affine")[index % 2],
                                seed=index,
                            )
                            run_case(backend, case)
                            index += 1


@pytest.mark.parametrize(
    "case",
    [
        # larger pictures: mostly interior pixels (the M7 path's unchecked windows)
        Case(16, 16, 16, 24, 3, 3, (1, 1), (1, 1, 1, 1), 1, "affine"),
        Case(16, 16, 16, 24, 3, 3, (1, 1), (1, 1, 1, 1), 0, "threshold"),
        Case(12, 12, 64, 64, 3, 3, (1, 1), (1, 1, 1, 1), 1, "float", activation="relu"),
        Case(13, 11, 24, 24, 3, 3, (2, 2), (1, 1, 1, 1), 0, "affine", clamp=(-128, 20)),
        # 5x5 (25 taps: the two-channel path) and 7x5 (35 taps: beyond it), padded
        Case(9, 8, 16, 6, 5, 5, (1, 1), (2, 2, 2, 2), 1, "threshold"),
        Case(9, 8, 16, 6, 7, 5, (1, 1), (3, 3, 2, 2), 0, "affine"),
        Case(9, 8, 16, 7, 7, 5, (2, 1), (3, 3, 2, 2), 1, "float"),
        # long word runs: 31 words (one byte-count flush), 32 and 36 words (two)
        Case(3, 3, 992, 3, 1, 1, (1, 1), (0, 0, 0, 0), 0, "affine"),
        Case(3, 3, 1024, 3, 1, 1, (1, 1), (0, 0, 0, 0), 1, "threshold"),
        Case(2, 11, 128, 4, 1, 9, (1, 1), (0, 0, 4, 4), 1, "affine"),
        Case(2, 11, 128, 4, 1, 9, (1, 1), (0, 0, 4, 4), 0, "float"),
        # windows of 72 words (the M7 path's stack copy at its limit) and beyond (81, 288)
        Case(4, 5, 256, 3, 3, 3, (1, 1), (1, 1, 1, 1), 1, "affine"),
        Case(4, 5, 288, 3, 3, 3, (1, 1), (1, 1, 1, 1), 1, "threshold"),
        Case(5, 4, 288, 3, 3, 3, (1, 1), (1, 1, 1, 1), 1, "float"),
        Case(4, 5, 288, 3, 3, 3, (2, 1), (1, 1, 1, 1), 0, "float"),
        Case(3, 3, 1024, 2, 3, 3, (1, 1), (1, 1, 1, 1), 1, "float", fill="agree"),
        # every product +1 or every product -1: the largest |acc| (byte counts at their limit)
        Case(4, 4, 1024, 2, 1, 1, (1, 1), (0, 0, 0, 0), 0, "float", fill="disagree"),
        Case(4, 4, 16, 4, 5, 5, (1, 1), (2, 2, 2, 2), 0, "float", fill="disagree"),
        Case(4, 4, 16, 4, 5, 5, (1, 1), (2, 2, 2, 2), 1, "float", fill="disagree"),
        Case(4, 4, 16, 4, 5, 5, (1, 1), (2, 2, 2, 2), 1, "float", fill="agree"),
        Case(9, 8, 16, 4, 7, 5, (1, 1), (3, 3, 2, 2), 0, "float", fill="disagree"),
        Case(9, 8, 16, 4, 7, 5, (1, 1), (3, 3, 2, 2), 1, "float", fill="agree"),
        Case(5, 5, 128, 3, 3, 3, (1, 1), (1, 1, 1, 1), 1, "float", fill="disagree"),
        Case(5, 5, 32, 3, 3, 3, (1, 1), (1, 1, 1, 1), 0, "float", fill="agree"),
        # many output channels: several 32-channel blocks, threshold words with padding bits
        Case(3, 4, 24, 100, 3, 3, (1, 1), (1, 1, 1, 1), 1, "threshold"),
        # C <= 16 on the M7 path: filter pairs made once per call (two blocks of 32, odd O)
        Case(6, 7, 16, 41, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine"),
        Case(6, 5, 9, 40, 3, 3, (1, 1), (1, 1, 1, 1), 1, "threshold"),
        Case(7, 7, 12, 7, 5, 5, (1, 1), (2, 2, 2, 2), 1, "float"),
        # 16 < C < 32 on the M7 path: window and filters as bit streams (odd and > 32 channels)
        Case(7, 6, 31, 9, 3, 3, (1, 1), (1, 1, 1, 1), 1, "affine"),
        Case(7, 6, 31, 9, 3, 3, (1, 1), (1, 1, 1, 1), 0, "threshold"),
        Case(6, 7, 20, 33, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine", clamp=(-50, 60)),
        Case(6, 7, 17, 5, 5, 5, (2, 1), (2, 2, 2, 2), 1, "float"),
        Case(3, 4, 16, 65, 3, 3, (1, 1), (1, 1, 1, 1), 0, "threshold"),
    ],
    ids=lambda case: (
        f"{case.h}x{case.w}x{case.c}-o{case.o}-k{case.kh}x{case.kw}"
        f"-s{case.stride[0]}{case.stride[1]}-p{case.pad_value}-{case.kind}-{case.fill}"
    ),
)
def test_bconv_special(backend: Any, case: Case) -> None:
    run_case(backend, case)


def test_bconv_extreme_accumulators(backend: Any) -> None:
    """|acc| = K: every product agrees or disagrees; the float transform shows acc itself."""
    for fill, sign in (("agree", 1), ("disagree", -1)):
        case = Case(3, 3, 70, 3, 3, 3, (1, 1), (1, 1, 1, 1), 1, "float", fill=fill)
        data = case_data(case)
        out = out_buffer(case)
        ones = Struct(
            "bnn_output_t",
            kind=OUT_FLOAT,
            f_scale=np.ones(3, np.float32),
            f_offset=np.zeros(3, np.float32),
            float_activation=ACT_NONE,
        )
        assert call_bconv(backend, case, data, out, output=ones) == BNN_OK
        # one padding: every tap counts, padded ones as +1 inputs
        acc = out[: 9 * 3].reshape(3, 3, 3)
        if sign == 1:  # x = -1, w = -1 inside; padded taps are +1 * -1
            inside = np.asarray([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
            expected = 70 * (inside - (9 - inside))
        else:  # x = -1, w = +1 inside (-1 each); padded taps +1 * +1
            inside = np.asarray([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
            expected = 70 * ((9 - inside) - inside)
        assert np.array_equal(acc, np.repeat(expected[:, :, None], 3, axis=2).astype(np.float32))


@pytest.mark.parametrize("clamp", [(-100, 90), (-128, 127)])
def test_bconv_affine_extreme_constants(backend: Any, clamp: tuple[int, int]) -> None:
    """Multipliers over the whole int32 range, shifts 1..62, rounding-ready offsets near +-2^62.
    With the full int8 range the M7 stores the channels with shifts >= 16 by its fast paths
    (bnn_affine_run), whose saturation these offsets test."""
    rng = np.random.default_rng(7)
    o = 64
    base = Case(4, 5, 70, o, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine", clamp=clamp)
    data = case_data(base)
    mult = rng.integers(-(2**31), 2**31, size=o, dtype=np.int64).astype(np.int32)
    mult[:4] = [-(2**31), 2**31 - 1, 0, 1]
    shift = rng.integers(1, 63, size=o).astype(np.int8)
    shift[:8] = [1, 62, 31, 32, 62, 1, 40, 61]
    offset = rng.integers(-(2**62) + 1, 2**62, size=o, dtype=np.int64)
    offset[:8] = [2**62 - 1, -(2**62) + 1, 0, 2**40, -(2**40), 3, -(2**61), 2**61]
    # channels 40..63: t / 2^S = acc / 4 + k / 2, many exact ties (rounded to even)
    for ch in range(40, o):
        s = int(rng.integers(2, 32))
        shift[ch], mult[ch] = s, 1 << (s - 2)
        offset[ch] = int(rng.integers(-300, 300)) << (s - 1)
    # the kernels' contract is on the rounding-ready offset B + 2^(S-1): |it| < 2^62
    half = [1 << (int(s) - 1) for s in shift]
    offset = np.asarray(
        [
            min(max(int(b), -(2**62) + 1 - h), 2**62 - 1 - h)
            for b, h in zip(offset, half, strict=True)
        ],
        np.int64,
    )
    consts = (("multiplier", mult, "int32"), ("shift", shift, "int8"), ("offset", offset, "int64"))
    expected = reference_bconv(base, data.x_packed, data.w_pm1, consts)
    out = out_buffer(base)
    status = call_bconv(backend, base, data, out, output=output_struct(base, consts))
    assert status == BNN_OK
    assert np.array_equal(out[: expected.size].reshape(expected.shape), expected)


def test_bconv_context_is_optional(backend: Any) -> None:
    case = Case(5, 5, 40, 5, 3, 3, (1, 1), (1, 1, 1, 1), 1, "affine")
    data = case_data(case)
    out = out_buffer(case)
    ctx = Struct("bnn_context_t", buf=np.zeros(8, np.uint8), size=8)
    oh, ow = case.out_hw
    status = backend.call(
        "bnn_bconv2d",
        ctx,
        Struct(
            "bnn_conv_params_t",
            stride_h=1,
            stride_w=1,
            dilation_h=1,
            dilation_w=1,
            pad_top=1,
            pad_left=1,
            pad_value=1,
        ),
        output_struct(case, data.consts),
        dims(1, 5, 5, 40),
        data.x_packed.reshape(-1),
        dims(5, 3, 3, 40),
        data.w_packed.reshape(-1),
        dims(1, oh, ow, 5),
        out,
    )
    assert status == BNN_OK
    assert np.array_equal(out[: data.expected.size].reshape(data.expected.shape), data.expected)


# --------------------------------------------------------------------------------------------
# binary Conv2D: refused arguments (status -1, nothing written)
# --------------------------------------------------------------------------------------------

BAD_BASE = Case(5, 6, 40, 5, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine")


def _params(**changes: int) -> Struct:
    fields = dict(
        stride_h=1, stride_w=1, dilation_h=1, dilation_w=1, pad_top=1, pad_left=1, pad_value=0
    )
    fields.update(changes)
    return Struct("bnn_conv_params_t", **fields)


def _affine(**changes: Any) -> Struct:
    o = BAD_BASE.o
    fields: dict[str, Any] = dict(
        kind=OUT_AFFINE,
        a_mult=np.full(o, 1 << 20, np.int32),
        a_shift=np.full(o, 20, np.int8),
        a_offset=np.zeros(o, np.int64),
        act_min=-128,
        act_max=127,
    )
    fields.update(changes)
    return Struct("bnn_output_t", **fields)


def _with(values: np.ndarray, index: int, value: int) -> np.ndarray:
    values = values.copy()
    values[index] = value
    return values


_O = BAD_BASE.o
BAD_ARGUMENTS: dict[str, dict[str, Any]] = {
    "params NULL": {"params": None},
    "output NULL": {"output": None},
    "in_dims NULL": {"in_dims": None},
    "in NULL": {"x": None},
    "filter_dims NULL": {"filter_dims": None},
    "filter NULL": {"w": None},
    "out_dims NULL": {"out_dims": None},
    "dilation_h 2": {"params": _params(dilation_h=2)},
    "dilation_w 2": {"params": _params(dilation_w=2)},
    "dilation 0": {"params": _params(dilation_h=0, dilation_w=0)},
    "stride 0": {"params": _params(stride_h=0)},
    "stride_w -1": {"params": _params(stride_w=-1)},
    "pad_top = KH": {"params": _params(pad_top=3)},
    "pad_left -1": {"params": _params(pad_left=-1)},
    "pad_value 2": {"params": _params(pad_value=2)},
    "pad_value -1": {"params": _params(pad_value=-1)},
    "in n 2": {"in_dims": dims(2, 5, 6, 40)},
    "in c != filter c": {"in_dims": dims(1, 5, 6, 41)},
    "filter c != in c": {"filter_dims": dims(_O, 3, 3, 39)},
    "filter kh 0": {"filter_dims": dims(_O, 0, 3, 40)},
    "filter o 0": {"filter_dims": dims(0, 3, 3, 40)},
    "out c != O": {"out_dims": dims(1, 5, 6, _O + 1)},
    "out n 0": {"out_dims": dims(0, 5, 6, _O)},
    "out h too large": {"out_dims": dims(1, 7, 6, _O)},
    "out h too small": {"out_dims": dims(1, 3, 6, _O)},
    "out w too large": {"out_dims": dims(1, 5, 8, _O)},
    "out w 0": {"out_dims": dims(1, 5, 0, _O)},
    "in h 0": {"in_dims": dims(1, 0, 6, 40)},
    "kernel too large": {"filter_dims": dims(_O, 2**15, 2**15, 40)},
    "kind TFLITE": {
        "output": _affine(
            kind=OUT_TFLITE, q_mult=np.ones(_O, np.int32), q_shift=np.zeros(_O, np.int32)
        )
    },
    "kind 7": {"output": _affine(kind=7)},
    "affine a_mult NULL": {"output": _affine(a_mult=None)},
    "affine a_shift NULL": {"output": _affine(a_shift=None)},
    "affine a_offset NULL": {"output": _affine(a_offset=None)},
    "affine shift 0": {"output": _affine(a_shift=_with(np.full(_O, 20, np.int8), 3, 0))},
    "affine shift 63": {"output": _affine(a_shift=_with(np.full(_O, 20, np.int8), 4, 63))},
    "affine offset 2^62": {"output": _affine(a_offset=_with(np.zeros(_O, np.int64), 2, 2**62))},
    "affine act_min > act_max": {"output": _affine(act_min=5, act_max=4)},
    "affine act_max 128": {"output": _affine(act_max=128)},
    "affine act_min -129": {"output": _affine(act_min=-129)},
    "float f_scale NULL": {
        "output": Struct("bnn_output_t", kind=OUT_FLOAT, f_offset=np.zeros(_O, np.float32))
    },
    "float f_offset NULL": {
        "output": Struct("bnn_output_t", kind=OUT_FLOAT, f_scale=np.ones(_O, np.float32))
    },
    "float activation 5": {
        "output": Struct(
            "bnn_output_t",
            kind=OUT_FLOAT,
            f_scale=np.ones(_O, np.float32),
            f_offset=np.zeros(_O, np.float32),
            float_activation=5,
        )
    },
    "threshold NULL": {
        "output": Struct("bnn_output_t", kind=OUT_THRESHOLD, t_direction=np.ones(_O, np.int8))
    },
    "direction NULL": {
        "output": Struct("bnn_output_t", kind=OUT_THRESHOLD, t_threshold=np.zeros(_O, np.int32))
    },
    "direction 2": {
        "output": Struct(
            "bnn_output_t",
            kind=OUT_THRESHOLD,
            t_threshold=np.zeros(_O, np.int32),
            t_direction=_with(np.ones(_O, np.int8), 4, 2),
        )
    },
}


@pytest.mark.parametrize("what", sorted(BAD_ARGUMENTS))
def test_bconv_bad_arguments(backend: Any, what: str) -> None:
    case = BAD_BASE
    data = case_data(case)
    out = out_buffer(case)
    before = out.copy()
    assert call_bconv(backend, case, data, out, **BAD_ARGUMENTS[what]) == BNN_ERROR_ARGUMENT
    assert np.array_equal(out, before), f"{what}: the refused call wrote its output"


def test_bconv_out_null(backend: Any) -> None:
    assert call_bconv(backend, BAD_BASE, case_data(BAD_BASE), None) == BNN_ERROR_ARGUMENT


def test_bconv_bad_base_is_valid(backend: Any) -> None:
    """The refused calls above differ from a valid call in one argument only."""
    run_case(backend, BAD_BASE)
    run_case(backend, replace(BAD_BASE, kind="threshold"))
    run_case(backend, replace(BAD_BASE, kind="float"))


def test_grid_constants_cover_every_case() -> None:
    """The grid's constants hold negative multipliers, every threshold direction, and clamps
    and activations of every kind (no C call)."""
    seen: dict[str, set[int]] = {"mult_sign": set(), "direction": set()}
    clamps: set[tuple[int, int]] = set()
    activations: set[str] = set()
    index = 0
    for o in OUT_CHANNELS:
        for kernel in KERNELS:
            for pad_value in (0, 1):
                for kind in KINDS:
                    case = _grid_case(40, index, o, kernel, pad_value, kind)
                    index += 1
                    values = {name: value for name, value, _ in case_data(case).consts}
                    if kind == "affine":
                        seen["mult_sign"].update(np.sign(values["multiplier"]).tolist())
                        clamps.add(case.clamp)
                    elif kind == "threshold":
                        seen["direction"].update(values["direction"].tolist())
                    else:
                        activations.add(case.activation)
    assert seen["mult_sign"] >= {-1, 1}
    assert seen["direction"] == {-1, 0, 1}
    assert clamps == set(CLAMPS)
    assert activations == {"none", "relu", "relu6"}


# --------------------------------------------------------------------------------------------
# binary Conv2D + Add (bnn_bconv2d_add, the fused residual block of passes.fuse_residual_adds)
# --------------------------------------------------------------------------------------------


def _add_graph(
    shape: tuple[int, ...],
    kind: str,
    rng: np.random.Generator,
    affine: tuple[tuple[int, int], int, int] | None = None,
) -> tuple[Graph, Op]:
    """A one-op IR graph: y = Add(a, b) of int8 tensors of ``shape``; ``kind`` "affine_hi"
    (shift >= 32), "affine_lo" (shift < 32) or "tflite". ``affine``: the affine Add's
    ``((M0, M1), shift, offset)`` with the full int8 range, in place of random ones."""
    from bnncube.converters.ir import Quant

    g = Graph("add")
    zps = [int(v) for v in rng.integers(-20, 20, 3)]
    scales = [float(v) for v in rng.uniform(0.02, 0.2, 3)]
    for name, s, zp in zip(("a", "b", "y"), scales, zps, strict=True):
        g.add_tensor(Tensor(name, shape, "int8", Quant.per_tensor(s, zp)))
    inputs = ["a", "b"]
    attrs: dict[str, Any] = {}
    if kind != "tflite":
        shift = int(rng.integers(33, 50)) if kind == "affine_hi" else int(rng.integers(8, 31))
        mult = rng.integers(-(1 << (shift - 8)), 1 << (shift - 8), 2).astype(np.int32)
        mult = np.clip(mult, -(2**31), 2**31 - 1).astype(np.int32)
        offset = int(rng.integers(-(1 << (shift + 4)), 1 << (shift + 4)))
        clamp = (-100, 90) if shift % 2 else (-128, 127)
        if affine is not None:
            (m0, m1), shift, offset = affine
            mult, clamp = np.asarray([m0, m1], np.int32), (-128, 127)
        inputs += [
            g.add_const("mult", mult, "int32"),
            g.add_const("shift", np.asarray([shift], np.int8), "int8"),
            g.add_const("offset", np.asarray([offset], np.int64), "int64"),
        ]
        attrs = {"output_transform": "affine", "clamp": clamp}
    op = g.add_op(Op("add", "Add", inputs, ["y"], attrs))
    g.inputs, g.outputs = ["a", "b"], ["y"]
    return g, op


@pytest.mark.parametrize("add_kind", ["affine_hi", "affine_lo", "tflite"])
def test_bconv_add(backend: Any, add_kind: str) -> None:
    """bnn_bconv2d_add equals the reference BinaryConv2D then Add, element for element, into a
    separate buffer (with a guard zone) and in place over the residual (on the host builds the
    same memory; the emulator copies each argument, so there it checks the values only)."""
    from bnncube.validation.kernel_calls import _add_params

    index = 0
    for c in (3, 16, 24, 40, 64):
        for o in (5, 24, 33):
            case = _grid_case(c, index, o, KERNELS[index % 2], index % 2, "affine")
            index += 1
            data = case_data(case)
            rng = np.random.default_rng([index, c, o])
            g, op = _add_graph(data.expected.shape, add_kind, rng)
            residual = rng.integers(-128, 128, data.expected.shape).astype(np.int8)
            want = np.asarray(OPS["Add"](_Ctx(g, op, {"a": data.expected, "b": residual})))
            args = call_args(case, data)
            n = data.expected.size
            out = np.full(n + GUARD, 0x5A, np.int8)
            flat = residual.reshape(-1).copy()
            call = [*args[:3], _add_params(g, op), *args[3:8]]
            assert backend.call("bnn_bconv2d_add", *call, flat, out) == BNN_OK, case
            assert np.array_equal(out[:n].reshape(want.shape), want), case
            assert np.all(out[n:] == 0x5A), f"{case}: wrote past the output"
            size = scratch_bytes(backend, case)
            if size > 0:  # the scratch path, with the general Add after the loops
                out[:] = 0x5A
                assert backend.call("bnn_bconv2d_add", scratch_ctx(size), *call[1:], flat, out) == 0
                assert np.array_equal(out[:n].reshape(want.shape), want), f"{case}: scratch"
                assert np.all(out[n:] == 0x5A), f"{case}: wrote past the output"
            assert backend.call("bnn_bconv2d_add", *call, flat, flat) == BNN_OK
            assert np.array_equal(flat.reshape(want.shape), want), f"{case}: in place"


def _fast_store_conv_constants(
    o: int, k_all: int, shift_class: str, rng: np.random.Generator
) -> tuple[tuple[str, np.ndarray, str], ...]:
    """Affine constants of a binary conv whose every shift is 16..31 ("lo") or >= 32 ("hi"):
    the usual channels (output ~ m * acc + b over the int8 range), exact ties (t / 2^S = acc /
    4 + k / 2 or acc / 8 + k / 2), and extremes (the int32 ends of the multiplier, offsets near
    the contract's +-2^62)."""
    sign = rng.choice([-1.0, 1.0], size=o)
    scale = rng.uniform(0.6, 6.0, o) if shift_class == "lo" else rng.uniform(0.02, 0.45, o)
    m = sign * scale * (40.0 / np.sqrt(k_all) if shift_class == "lo" else 1.0)
    b = rng.uniform(-60.0, 60.0, size=o)
    mult, shift, offset = affine_constants(m, b, k_all, "test")
    for ch in range(o - 8, o):  # ties
        s = int(rng.integers(18, 32)) if shift_class == "lo" else int(rng.integers(32, 34))
        shift[ch] = s
        mult[ch] = (1 << (s - 2)) if shift_class == "lo" else (1 << 30)
        offset[ch] = int(rng.integers(-200, 200)) << (s - 1)
    extremes = [(2**31 - 1, 16, 2**61), (-(2**31), 31, -(2**61)), (2**31 - 1, 31, 0)]
    if shift_class == "hi":
        extremes = [(2**31 - 1, 32, 2**61), (-(2**31), 62, 2**62 - 2**61 - 1), (1, 62, -(2**61))]
    for ch, (mu, s, off) in enumerate(extremes):
        mult[ch], shift[ch], offset[ch] = mu, s, off
    lo_s, hi_s = (16, 31) if shift_class == "lo" else (32, 62)
    assert lo_s <= shift.min() and shift.max() <= hi_s
    return (("multiplier", mult, "int32"), ("shift", shift, "int8"), ("offset", offset, "int64"))


# The affine Add's constants ((M0, M1), shift, offset) per shift class: usual, exact ties (the
# sum is (a - za) / 2 + (b - zb) / 2 + k / 2, or quarters), and extremes that saturate
FAST_STORE_ADDS = {
    "lo": [
        ((1 << 29, -(1 << 28)), 30, 3 << 27),
        ((1 << 19, 1 << 19), 20, 5 << 19),
        ((2**31 - 1, -(2**31)), 16, 0),
        ((1 << 30, 1 << 30), 31, -(7 << 30)),
    ],
    "hi": [
        ((1 << 30, 1 << 30), 32, 3 << 31),
        ((2**31 - 1, 1 << 29), 33, -(1 << 32)),
        ((-(2**31), 2**31 - 1), 62, 2**61),
        ((1 << 30, -(1 << 30)), 34, 0),
        ((2**31 - 1, -(2**31)), 32, 60 << 32),
    ],
}


@pytest.mark.parametrize("add_class", ["lo", "hi"])
@pytest.mark.parametrize("conv_class", ["lo", "hi"])
def test_bconv_add_fast_stores(backend: Any, conv_class: str, add_class: str) -> None:
    """bnn_bconv2d_add where the Cortex-M7 runs the conv's store and the Add in one assembly
    pass (bnn_bconv2d_sum_asm): every conv shift 16..31 ("lo") or every one >= 32 ("hi"), the
    Add's shift in the same classes, full int8 ranges. Usual, tied and extreme constants in
    both roundings, 37 channels (a block of 32 and one of 5), into a separate buffer and in
    place; on the ``m7`` build the assembly pass must have run."""
    from bnncube.validation.kernel_calls import _add_params

    base = Case(5, 6, 24, 37, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine", seed=3)
    data = case_data(base)
    rng = np.random.default_rng([7, conv_class == "hi", add_class == "hi"])
    consts = _fast_store_conv_constants(base.o, base.k_all, conv_class, rng)
    conv_out = reference_bconv(base, data.x_packed, data.w_pm1, consts)
    assert len(np.unique(conv_out)) > 100, "mostly rounded, not clamped"
    args = call_args(base, data)
    args[2] = output_struct(base, consts)
    profiled = "bnn_bconv2d_sum_asm" in getattr(getattr(backend, "image", None), "functions", {})
    for affine in FAST_STORE_ADDS[add_class]:
        g, op = _add_graph(conv_out.shape, "affine", rng, affine)
        residual = rng.integers(-128, 128, conv_out.shape).astype(np.int8)
        want = np.asarray(OPS["Add"](_Ctx(g, op, {"a": conv_out, "b": residual})))
        call = [*args[:3], _add_params(g, op), *args[3:8]]
        n = want.size
        out = np.full(n + GUARD, 0x5A, np.int8)
        flat = residual.reshape(-1).copy()
        extra = {"profile": True} if profiled else {}
        assert backend.call("bnn_bconv2d_add", *call, flat, out, **extra) == BNN_OK, affine
        assert np.array_equal(out[:n].reshape(want.shape), want), affine
        assert np.all(out[n:] == 0x5A), f"{affine}: wrote past the output"
        if profiled:
            assert backend.last_profile.get("bnn_bconv2d_sum_asm", 0) > 20 * n, affine
        assert backend.call("bnn_bconv2d_add", *call, flat, flat) == BNN_OK
        assert np.array_equal(flat.reshape(want.shape), want), f"{affine}: in place"


def call_args(case: Case, data: Data) -> list[Any]:
    """bnn_bconv2d's arguments for a case, without the output buffer."""
    oh, ow = case.out_hw
    params = Struct(
        "bnn_conv_params_t",
        stride_h=case.stride[0],
        stride_w=case.stride[1],
        dilation_h=1,
        dilation_w=1,
        pad_top=case.pads[0],
        pad_left=case.pads[2],
        pad_value=case.pad_value,
    )
    return [
        None,
        params,
        output_struct(case, data.consts),
        dims(1, case.h, case.w, case.c),
        data.x_packed.reshape(-1),
        dims(case.o, case.kh, case.kw, case.c),
        data.w_packed.reshape(-1),
        dims(1, oh, ow, case.o),
    ]


@pytest.mark.parametrize("what", ["float_output", "no_add", "bad_add", "no_residual"])
def test_bconv_add_bad_arguments(backend: Any, what: str) -> None:
    """Refused calls of bnn_bconv2d_add write nothing."""
    from bnncube.validation.kernel_calls import _add_params

    case = _grid_case(16, 1, 5, (3, 3), 0, "affine")
    data = case_data(case)
    g, op = _add_graph(data.expected.shape, "affine_hi", np.random.default_rng(0))
    add = _add_params(g, op)
    args = call_args(case, data)
    residual = np.zeros(data.expected.size, np.int8)
    if what == "float_output":
        args[2] = output_struct(
            replace(case, kind="float"), case_data(replace(case, kind="float")).consts
        )
    elif what == "no_add":
        add = None
    elif what == "bad_add":
        add.fields["affine_shift"] = 63
    out = np.full(data.expected.size, 0x5A, np.int8)
    res = None if what == "no_residual" else residual
    status = backend.call("bnn_bconv2d_add", *args[:3], add, *args[3:8], res, out)
    assert status == BNN_ERROR_ARGUMENT
    assert np.all(out == 0x5A)


# --------------------------------------------------------------------------------------------
# binary Conv2D: the scratch path (bnn_bconv2d_scratch_size; on the Cortex-M7 the filters
# reordered once per call and the int8 store, and the plain-sum Add, in the counting loop)
# --------------------------------------------------------------------------------------------

# the assembly loops of the scratch path (PAIR9: C <= 16 and 3x3; RUN: a window of <= 36
# words), without and with the plain-sum Add and the border corrections
SCRATCH_LOOPS = tuple(
    f"bnn_bconv2d_scr_{form}{add}{corr}"
    for form in ("p9", "run")
    for add in ("", "_add")
    for corr in ("", "_corr")
)


def _loops_ran(backend: Any, add: bool | None = None) -> int:
    """Instructions the scratch path's assembly loops (those with the plain-sum Add, or those
    without, if ``add`` is given) ran in the last profiled call."""
    return sum(
        n
        for f, n in backend.last_profile.items()
        if f in SCRATCH_LOOPS and (add is None or ("_add" in f) == add)
    )


def _profiled(backend: Any) -> bool:
    """Whether the backend is the Cortex-M7 build with the scratch path's assembly."""
    return "bnn_bconv2d_scr_p9" in getattr(getattr(backend, "image", None), "functions", {})


def _count_form_constants(
    o: int, k_all: int, rng: np.random.Generator, *, bad: str = ""
) -> tuple[tuple[str, np.ndarray, str], ...]:
    """Affine constants whose every channel has the scratch path's count form (shift 2..32,
    M != INT32_MIN, 2K * 2^(32 - shift) < 2^31, (+-K * M + offset) * 2^(32 - shift) within
    int64): usual channels over the int8 range, exact ties, and the edges (the smallest shift
    K allows, shift 32 with the int32 ends of M, offsets at the int64 bound). ``bad`` makes one
    channel miss the form (the whole call then takes the other paths)."""
    mult, shift, offset = (
        np.asarray(v)
        for v in affine_constants(
            rng.choice([-1.0, 1.0], size=o) * rng.uniform(0.3, 6.0, o) * 40.0 / np.sqrt(k_all),
            rng.uniform(-60.0, 60.0, size=o),
            k_all,
            "test",
        )
    )
    mult, shift, offset = mult.astype(np.int32), shift.astype(np.int8), offset.astype(np.int64)
    s_min = k_all.bit_length() + 2  # the smallest shift with 2K * 2^(32 - s) < 2^31
    for ch in range(o):
        if ch % 4 == 1:  # a tie on every other accumulator: t / 2^s = acc / 4 + k / 2
            s = int(rng.integers(max(s_min, 2), 33))
            shift[ch], mult[ch] = s, 1 << (s - 2)
            offset[ch] = int(rng.integers(-200, 200)) << (s - 1)
    edges = [
        (2**31 - 1, 32, 2**62 - 2**61),
        (-(2**31) + 1, 32, -(2**61)),
        (3 << (s_min - 4), s_min, -(5 << (s_min - 1))),
        (2**31 - 1, 31, 2**62 - 1 - (k_all * (2**31 - 1)) - (1 << 30)),
    ]
    for ch, (mu, s, off) in enumerate(edges[:o]):
        mult[ch], shift[ch], offset[ch] = mu, s, off
    if bad == "shift":  # one shift below what K allows
        shift[o - 1], mult[o - 1], offset[o - 1] = s_min - 1, 1 << (s_min - 3), 0
    elif bad == "shift33":
        shift[o - 1], mult[o - 1], offset[o - 1] = 33, 1 << 30, 1 << 32
    elif bad == "int32_min":
        mult[o - 1], shift[o - 1] = -(2**31), 32
    elif bad == "offset":  # (K * M + offset) * 2 past int64 at shift 31
        mult[o - 1], shift[o - 1], offset[o - 1] = 2**31 - 1, 31, 2**62 - 1 - (1 << 30)
    # the contract: the rounding-ready offset B + 2^(S-1) within +-2^62
    ready = [int(b) + (1 << (int(s) - 1)) for b, s in zip(offset, shift, strict=True)]
    assert all(abs(r) < 2**62 for r in ready)
    return (("multiplier", mult, "int32"), ("shift", shift, "int8"), ("offset", offset, "int64"))


SCRATCH_CASES = [
    # PAIR9: C <= 16, 3x3 (the hybrid's res1: 16 -> 24)
    Case(9, 10, 16, 24, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine"),
    Case(9, 10, 16, 24, 3, 3, (1, 1), (1, 1, 1, 1), 1, "affine"),
    Case(8, 7, 9, 7, 3, 3, (2, 2), (0, 1, 1, 1), 0, "affine"),  # odd O, stride 2, split pads
    Case(6, 6, 16, 2, 3, 3, (1, 2), (2, 0, 0, 2), 0, "affine"),  # O = 2, pads on one side
    Case(5, 5, 1, 3, 3, 3, (1, 1), (0, 0, 0, 0), 0, "affine"),  # valid: no border
    Case(6, 5, 16, 6, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine", fill="disagree"),
    Case(6, 5, 16, 6, 3, 3, (1, 1), (1, 1, 1, 1), 1, "affine", fill="agree"),
    # RUN: windows of 9 (C = 24), 18 (64), 27 (96), 30 (1x3, C = 320) and 36 words (3x3 x 128,
    # the hybrid's res5; 1x3 x 384, every product -1: the largest counts), 1x1 and 5x5
    Case(7, 6, 24, 24, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine"),
    Case(8, 8, 64, 64, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine"),
    Case(10, 10, 64, 9, 3, 3, (2, 2), (0, 1, 0, 1), 1, "affine"),
    Case(5, 6, 96, 5, 3, 3, (1, 1), (2, 0, 1, 1), 0, "affine"),
    Case(5, 7, 320, 4, 1, 3, (1, 1), (0, 0, 1, 1), 0, "affine", fill="disagree"),
    Case(5, 7, 320, 5, 1, 3, (1, 1), (0, 0, 2, 0), 0, "affine"),
    Case(4, 5, 300, 6, 1, 1, (1, 1), (0, 0, 0, 0), 0, "affine"),
    Case(7, 6, 128, 6, 3, 3, (1, 1), (1, 1, 1, 1), 0, "affine"),
    Case(6, 7, 384, 3, 1, 3, (1, 1), (0, 0, 1, 1), 0, "affine", fill="disagree"),
    Case(7, 7, 16, 8, 5, 5, (1, 1), (2, 2, 2, 2), 0, "affine"),
    Case(7, 7, 40, 3, 3, 1, (2, 1), (1, 1, 0, 0), 1, "affine", fill="agree"),
]


def _scratch_id(case: Case) -> str:
    return (
        f"{case.h}x{case.w}x{case.c}-o{case.o}-k{case.kh}x{case.kw}-s{case.stride[0]}"
        f"{case.stride[1]}-p{''.join(map(str, case.pads))}-v{case.pad_value}-{case.fill}"
    )


def _scratch_case(case: Case) -> tuple[Data, tuple[tuple[str, np.ndarray, str], ...], Any]:
    """The case's data with count-form constants, and the reference output for them."""
    data = case_data(case)
    rng = np.random.default_rng([11, case.h, case.w, case.c, case.o])
    consts = _count_form_constants(case.o, case.k_all, rng)
    return data, consts, reference_bconv(case, data.x_packed, data.w_pm1, consts)


@pytest.mark.parametrize("case", SCRATCH_CASES, ids=_scratch_id)
def test_bconv_scratch_path(backend: Any, case: Case) -> None:
    """The reference's values with the scratch bnn_bconv2d_scratch_size asks for, a larger one,
    one 4 bytes short, one not 4-byte aligned and none; on the Cortex-M7 build the assembly
    loops run exactly when the scratch is enough (and aligned: the emulator copies it aligned)."""
    data, consts, expected = _scratch_case(case)
    if case.fill == "random" and case.o > 4:  # (channels 0..3 are the edges: clamped)
        usual = expected[..., 4:]
        assert len(np.unique(usual)) > min(20, usual.size // 4), "not mostly clamped"
    size = scratch_bytes(backend, case)
    assert size > 0
    args = call_args(case, data)
    args[2] = output_struct(case, consts)
    profiled = _profiled(backend)
    unaligned = np.zeros(size + 4, np.uint8)[1 : size + 1]
    for label, ctx, fast in (
        ("exact", scratch_ctx(size), True),
        ("larger", scratch_ctx(size + 64), True),
        ("short", scratch_ctx(size - 4), False),
        ("unaligned", Struct("bnn_context_t", buf=unaligned, size=size), None),
        ("none", None, False),
    ):
        out = out_buffer(case)
        extra = {"profile": True} if profiled else {}
        assert backend.call("bnn_bconv2d", ctx, *args[1:], out, **extra) == BNN_OK, label
        n = expected.size
        assert np.array_equal(out[:n].reshape(expected.shape), expected), label
        assert np.all(out[n:] == out_buffer(case)[n:]), f"{label}: wrote past the output"
        if profiled and fast is not None:
            assert (_loops_ran(backend) > 0) == fast, label


@pytest.mark.parametrize("bad", ["shift", "shift33", "int32_min", "offset"])
def test_bconv_scratch_path_declines(backend: Any, bad: str) -> None:
    """One channel without the count form (a shift too small for K, a shift past 32,
    M = INT32_MIN, u past int64): the call takes the other paths, the same values."""
    case = SCRATCH_CASES[8]
    data = case_data(case)
    consts = _count_form_constants(case.o, case.k_all, np.random.default_rng(5), bad=bad)
    expected = reference_bconv(case, data.x_packed, data.w_pm1, consts)
    args = call_args(case, data)
    args[2] = output_struct(case, consts)
    out = out_buffer(case)
    profiled = _profiled(backend)
    extra = {"profile": True} if profiled else {}
    ctx = scratch_ctx(scratch_bytes(backend, case))
    assert backend.call("bnn_bconv2d", ctx, *args[1:], out, **extra) == BNN_OK
    assert np.array_equal(out[: expected.size].reshape(expected.shape), expected)
    if profiled:
        assert _loops_ran(backend) == 0
    if bad == "shift":  # one more bit of shift and the same channel takes the form
        shift = consts[1][1].copy()
        shift[-1] += 1
        consts = (consts[0], ("shift", shift, "int8"), consts[2])
        expected = reference_bconv(case, data.x_packed, data.w_pm1, consts)
        args[2] = output_struct(case, consts)
        assert backend.call("bnn_bconv2d", ctx, *args[1:], out, **extra) == BNN_OK
        assert np.array_equal(out[: expected.size].reshape(expected.shape), expected)
        if profiled:
            assert _loops_ran(backend) > 0


def test_bconv_scratch_size_mirror(backend: Any) -> None:
    """bnn_bconv2d_scratch_size equals the generator's Python mirror on every geometry class:
    PAIR9, RUN up to 36 words and past it, one output channel (none), odd O."""
    from bnncube.validation.kernel_calls import bconv2d_scratch_bytes

    sizes = set()
    for c in (1, 9, 16, 17, 24, 32, 33, 64, 96, 128, 160, 320, 330, 1152, 1153):
        for kh, kw in ((3, 3), (1, 1), (1, 3), (3, 1), (5, 5), (7, 5)):
            for o in (1, 2, 7, 24, 64):
                for side in (3, 6, 9):  # output pixels against the window's words
                    x_shape, w_shape = (1, side, side, c), (o, kh, kw, c)
                    size = backend.int_function(
                        "bnn_bconv2d_scratch_size",
                        dims(*x_shape),
                        dims(*w_shape),
                        dims(1, side, side, o),
                    )
                    assert size == bconv2d_scratch_bytes(x_shape, w_shape, (1, side, side, o)), (
                        c,
                        kh,
                        kw,
                        o,
                        side,
                    )
                    sizes.add(size > 0)
    assert sizes == {True, False}
    good = (dims(1, 9, 9, 16), dims(24, 3, 3, 16), dims(1, 9, 9, 24))
    assert backend.int_function("bnn_bconv2d_scratch_size", *good) > 0
    for missing in range(3):  # a NULL dims pointer: no scratch, no crash
        args = [None if i == missing else d for i, d in enumerate(good)]
        assert backend.int_function("bnn_bconv2d_scratch_size", *args) == 0
    # the hybrid's res1 (16 -> 24, 3x3): 12 pairs of 9 filter and 8 store words, 48
    # corrections, 24 * 9 popcounts of 16 bits, 24 bytes; res5 (3x3 x 128 on 3x3): none
    res1 = bconv2d_scratch_bytes((1, 48, 48, 16), (24, 3, 3, 16), (1, 48, 48, 24))
    assert res1 == 4 * (12 * 17 + 48 + 108 + 6)
    assert bconv2d_scratch_bytes((1, 3, 3, 128), (128, 3, 3, 128), (1, 3, 3, 128)) == 0
    assert bconv2d_scratch_bytes((1, 6, 6, 128), (128, 3, 3, 128), (1, 6, 6, 128)) > 0


@pytest.mark.parametrize("shift", [1, 12, 30])
def test_bconv_add_plain_sum(backend: Any, shift: int) -> None:
    """bnn_bconv2d_add with the scratch where the Add is the plain sum saturated (M0 = M1 =
    2^S, offset (za + zb) * 2^S: the QKeras residual of two tensors of one scale), which the
    Cortex-M7 adds in the counting loop (QADD8), and near misses that take the general Add
    after the loop (offset + 1, M1 = 2^S - 1, a narrower range): the reference's values, into a
    separate buffer and in place."""
    from bnncube.validation.kernel_calls import _add_params, _quant

    profiled = _profiled(backend)
    for index, case in enumerate((SCRATCH_CASES[0], SCRATCH_CASES[2], SCRATCH_CASES[8])):
        data, consts, conv_out = _scratch_case(case)
        args = call_args(case, data)
        args[2] = output_struct(case, consts)
        ctx = scratch_ctx(scratch_bytes(backend, case))
        rng = np.random.default_rng([shift, index])
        for miss in ("", "offset", "mult", "range"):
            g, op = _add_graph(conv_out.shape, "affine", rng, ((1, 1), shift, 0))
            za, zb = (_quant(g.tensors[name])[1] for name in ("a", "b"))
            m1 = (1 << shift) - (miss == "mult")
            g.tensors[op.inputs[2]].data = np.asarray([1 << shift, m1], np.int32)
            g.tensors[op.inputs[4]].data = np.asarray([((za + zb) << shift) + (miss == "offset")])
            if miss == "range":
                op.attrs["clamp"] = (-100, 127)
            residual = rng.integers(-128, 128, conv_out.shape).astype(np.int8)
            want = np.asarray(OPS["Add"](_Ctx(g, op, {"a": conv_out, "b": residual})))
            if not miss:
                wide = conv_out.astype(np.int32) + residual
                assert np.array_equal(want, np.clip(wide, -128, 127)), "the plain sum"
            call = [ctx, *args[1:3], _add_params(g, op), *args[3:8]]
            n = want.size
            out = np.full(n + GUARD, 0x5A, np.int8)
            flat = residual.reshape(-1).copy()
            extra = {"profile": True} if profiled else {}
            assert backend.call("bnn_bconv2d_add", *call, flat, out, **extra) == BNN_OK
            assert np.array_equal(out[:n].reshape(want.shape), want), (case, miss)
            assert np.all(out[n:] == 0x5A), f"{case}: wrote past the output"
            if profiled:
                assert _loops_ran(backend) > 0, (case, miss)
                assert (_loops_ran(backend, add=True) > 0) == (miss == ""), (case, miss)
            assert backend.call("bnn_bconv2d_add", *call, flat, flat) == BNN_OK
            assert np.array_equal(flat.reshape(want.shape), want), f"{case} {miss}: in place"
