"""Run a deployed IR graph op by op through the C runtime kernels (host or emulated Cortex-M7).

:func:`kernel_call` maps one IR op and the values of its inputs to the C call that computes it
(function name and arguments in the :mod:`bnncube.runtime_c.cabi` convention) and the output
buffer; :func:`run_graph_c` runs a whole graph that way on a backend (``HostBackend`` or the
emulator's ``UnicornBackend``) and returns every value, plus the instructions each op executed
when the backend counts them. The results must equal :func:`bnncube.converters.reference.run_graph`
bit for bit: this is the whole-network check of the kernels, before any code is generated.

The constants the kernels take are derived here exactly as the reference derives them (TFLite
multipliers from the tensor scales; the explicit constants of the QKeras transforms as stored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnncube.converters.binary_reference import pack_filters
from bnncube.converters.ir import Graph, Op, Tensor, fused_ops, transform_of
from bnncube.converters.reference import (
    activation_range,
    packed_shape,
    quantize_multiplier,
    tflite_add_multipliers,
    tflite_channel_multipliers,
)
from bnncube.runtime_c.cabi import (
    ACT_NONE,
    ACT_RELU,
    ACT_RELU6,
    F32,
    OUT_AFFINE,
    OUT_FLOAT,
    OUT_LCE,
    OUT_TFLITE,
    OUT_THRESHOLD,
    ROUND_HALF_AWAY,
    ROUND_HALF_EVEN,
    Struct,
    dims,
)

_ACTIVATION = {"none": ACT_NONE, "linear": ACT_NONE, "relu": ACT_RELU, "relu6": ACT_RELU6}
_NP = {"int8": np.int8, "uint8": np.uint8, "int32": np.int32, "float32": np.float32}


class UnsupportedOp(ValueError):
    """An IR op the C runtime has no kernel for."""


#: runtime_c/src/bnn_conv2d_s8.c BNN_PW_SCRATCH_C: pointwise layers deeper than this take their
#: expanded inputs from the scratch
PW_SCRATCH_C = 128


def conv2d_scratch_bytes(in_shape: tuple[int, ...], filter_shape: tuple[int, ...]) -> int:
    """``bnn_conv2d_s8_scratch_size`` for an NHWC input and an OHWI filter: 8 * C bytes for a
    1x1 filter with C a multiple of 4 above :data:`PW_SCRATCH_C`, else 0 (a test holds the two
    equal)."""
    c, kh, kw = int(in_shape[3]), int(filter_shape[1]), int(filter_shape[2])
    if kh == 1 and kw == 1 and c % 4 == 0 and PW_SCRATCH_C < c <= (2**31 - 1) // 8:
        return 8 * c
    return 0


#: runtime_c/src/bnn_bconv2d.c BNN_BCONV2D_SCR_WORDS: the longest window of the binary
#: convolution's scratch path, in words
BCONV2D_SCR_WORDS = 36


def bconv2d_scratch_bytes(
    in_shape: tuple[int, ...], filter_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> int:
    """``bnn_bconv2d_scratch_size`` for an NHWC input and an OHWI filter (logical channels): per
    pair of output channels the filter words its loop reads (9 for a 3x3 filter with C <= 16,
    else twice the window's KH * KW * ceil(C / 32) words rounded up to a multiple of 3, at most
    :data:`BCONV2D_SCR_WORDS`) and 8 store words, then 2 * O corrections, O * KH * KW 16-bit
    popcounts and O bytes (rounded up to words) for the outputs before a general Add. 0 where
    the path does not apply, or for fewer output pixels than window words (a test holds the two
    equal)."""
    c, o = int(in_shape[3]), int(filter_shape[0])
    kh, kw = int(filter_shape[1]), int(filter_shape[2])
    limit = BCONV2D_SCR_WORDS
    if c < 1 or kh < 1 or kw < 1 or o < 2 or kh > limit or kw > limit:
        return 0
    taps, nw = kh * kw, (c + 31) // 32
    if int(out_shape[1]) * int(out_shape[2]) < taps * nw:
        return 0
    if nw == 1 and c <= 16 and taps == 9:
        filter_words = 9
    elif taps * nw <= limit:
        filter_words = 2 * 3 * ((taps * nw + 2) // 3)
    else:
        return 0
    words = (o + 1) // 2 * (filter_words + 8) + 2 * o + (o * taps + 1) // 2 + (o + 3) // 4
    return 4 * words if words <= (2**31 - 1) // 4 else 0


def op_scratch_bytes(graph: Graph, op: Op) -> int:
    """The scratch bytes the kernel of ``op`` asks for (0: none)."""
    in_shape = graph.tensors[op.inputs[0]].shape
    if op.type == "Conv2D" and graph.tensors[op.inputs[0]].dtype in ("int8", "uint8"):
        return conv2d_scratch_bytes(in_shape, graph.tensors[op.inputs[1]].shape)
    if op.type == "BinaryConv2D":
        return bconv2d_scratch_bytes(
            in_shape, graph.tensors[op.inputs[1]].shape, graph.tensors[op.outputs[0]].shape
        )
    return 0


def graph_scratch(graph: Graph) -> dict[str, int]:
    """Per op name, the scratch bytes its kernel asks for (the ops that ask for some), for the
    memory planner (``plan_graph(scratch=...)``)."""
    return {op.name: n for op in graph.ops if (n := op_scratch_bytes(graph, op)) > 0}


@dataclass
class KernelCall:
    """One C call: ``function(*args)``, writing ``output`` (an array among ``args``)."""

    function: str
    args: list[Any]
    output: np.ndarray | None  # None: the op only moves data (Reshape)
    macs: int = 0


def _quant(t: Tensor) -> tuple[float, int]:
    if t.quant is None:
        raise UnsupportedOp(f"tensor {t.name!r} has no quantization")
    return float(t.quant.scale.reshape(-1)[0]), int(t.quant.zero_point.reshape(-1)[0])


def _dims4(shape: tuple[int, ...]) -> Struct:
    if len(shape) != 4:
        raise UnsupportedOp(f"expected an NHWC shape, got {shape}")
    return dims(*shape)


def _const(graph: Graph, op: Op, i: int) -> np.ndarray:
    return np.ascontiguousarray(graph.tensors[op.inputs[i]].data)


def _out_buffer(t: Tensor) -> np.ndarray:
    if t.dtype == "binary":
        return np.zeros(packed_shape(t), np.uint32)
    return np.zeros(t.shape, _NP[t.dtype])


# |a_offset| bound of the C kernels (bnn_requant.h BNN_AFFINE_OFFSET_LIMIT)
AFFINE_OFFSET_LIMIT = 1 << 62


def rounding_ready(offsets: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """The rounding-ready offsets B + 2^(S-1) that ``bnn_output_t.a_offset`` holds (the C
    kernels then round half to even with one shift and a tie test; bnn_requant.h). Raises
    ValueError outside the kernels' contract (S in 1..62, |B + 2^(S-1)| < 2^62)."""
    b_list = np.asarray(offsets).reshape(-1).tolist()
    s_list = np.asarray(shifts).reshape(-1).tolist()
    if len(b_list) != len(s_list) or any(s < 1 or s > 62 for s in s_list):
        raise ValueError("affine shifts must be 1..62, one per offset")
    ready = [int(b) + (1 << (int(s) - 1)) for b, s in zip(b_list, s_list, strict=True)]
    if any(abs(v) >= AFFINE_OFFSET_LIMIT for v in ready):
        raise ValueError("affine offset beyond 2^62 (the C kernels' int64 range)")
    return np.asarray(ready, np.int64)


def ready_offsets(op: Op, offsets: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """:func:`rounding_ready` for op ``op`` (UnsupportedOp naming it when out of range)."""
    try:
        return rounding_ready(offsets, shifts)
    except ValueError as exc:
        raise UnsupportedOp(f"op {op.name!r}: {exc}") from None


def output_struct(graph: Graph, op: Op) -> Struct:
    """The ``bnn_output_t`` of a MAC op."""
    transform = transform_of(op)
    out = graph.tensors[op.outputs[0]]
    act = op.attrs.get("activation", "none")
    if transform == "tflite":
        x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
        s_in, _ = _quant(x)
        s_out, zp_out = _quant(out)
        channels = out.shape[-1]
        per_tensor = op.type == "Dense" and not w.quant.is_per_channel
        mult, shift = tflite_channel_multipliers(s_in, w.quant.scale, s_out, channels, per_tensor)
        lo, hi = activation_range(act, out.quant, out.dtype)
        bias = _const(graph, op, 2).astype(np.int32).reshape(-1) if len(op.inputs) > 2 else None
        return Struct(
            "bnn_output_t",
            kind=OUT_TFLITE,
            bias=bias,
            q_mult=mult.astype(np.int32),
            q_shift=shift.astype(np.int32),
            out_zero_point=zp_out,
            act_min=lo,
            act_max=hi,
            q_single_rounding=int(op.type == "Dense" and not per_tensor),
        )
    if transform == "affine":
        lo, hi = op.attrs["clamp"]
        return Struct(
            "bnn_output_t",
            kind=OUT_AFFINE,
            a_mult=_const(graph, op, 2).reshape(-1),
            a_shift=_const(graph, op, 3).reshape(-1),
            a_offset=ready_offsets(op, _const(graph, op, 4), _const(graph, op, 3)),
            act_min=lo,
            act_max=hi,
        )
    if transform == "float":
        return Struct(
            "bnn_output_t",
            kind=OUT_FLOAT,
            f_scale=_const(graph, op, 2).reshape(-1),
            f_offset=_const(graph, op, 3).reshape(-1),
            float_activation=_ACTIVATION[act],
        )
    if transform == "threshold":
        return Struct(
            "bnn_output_t",
            kind=OUT_THRESHOLD,
            t_threshold=_const(graph, op, 2).reshape(-1),
            t_direction=_const(graph, op, 3).reshape(-1),
        )
    if transform == "lce" and op.type == "BinaryConv2D":
        lo, hi = op.attrs["lce_clamp"]
        return Struct(
            "bnn_output_t",
            kind=OUT_LCE,
            f_scale=_const(graph, op, 2).reshape(-1),
            f_offset=_const(graph, op, 3).reshape(-1),
            lce_k=int(op.attrs["lce_k"]),
            lce_clamp_lo=int(lo),
            lce_clamp_hi=int(hi),
            lce_int8_output=int(op.attrs.get("lce_output", "float32") == "int8"),
        )
    raise UnsupportedOp(f"op {op.name!r}: output transform {transform!r}")


def _conv_params(op: Op, zero_point: int = 0) -> Struct:
    a = op.attrs
    sh, sw = a.get("strides", (1, 1))
    dh, dw = a.get("dilations", (1, 1))
    pads = a.get("pads", (0, 0, 0, 0))
    return Struct(
        "bnn_conv_params_t",
        stride_h=int(sh),
        stride_w=int(sw),
        dilation_h=int(dh),
        dilation_w=int(dw),
        pad_top=int(pads[0]),
        pad_left=int(pads[2]),
        pad_value=int(a.get("pad_value", 0)),
        depth_multiplier=int(a.get("depth_multiplier", 1)),
        input_zero_point=zero_point,
    )


def _window_ok(n_in: int, n_out: int, kernel: int, stride: int, dilation: int, pad: int) -> bool:
    """bnn_requant.h ``bnn_window_ok`` in Python: ``n_out`` windows of ``kernel`` taps spaced by
    ``dilation``, moved by ``stride``, starting ``pad`` before an input of ``n_in``, each with a
    tap inside the input, and ``n_out`` the count for some padding after the input."""
    if min(n_in, n_out, kernel, stride, dilation) <= 0 or pad < 0:
        return False
    extent = (kernel - 1) * dilation + 1
    if pad >= extent:
        return False
    last_start = (n_out - 1) * stride - pad
    return last_start <= n_in - 1 and last_start + extent - n_in > -stride


def check_geometry(
    op: Op, x_shape: tuple[int, ...], out_shape: tuple[int, ...], kh: int, kw: int
) -> None:
    """The window geometry the C kernels check at run time, checked here first (generation time):
    UnsupportedOp naming the op and the axis when the shapes, strides, dilations and padding
    of ``op`` do not fit together (a damaged or hand-edited model)."""
    if len(x_shape) != 4 or len(out_shape) != 4 or x_shape[0] != 1 or out_shape[0] != 1:
        raise UnsupportedOp(
            f"op {op.name!r}: expected [1, H, W, C] shapes, got {x_shape} -> {out_shape}"
        )
    a = op.attrs
    strides = a.get("strides", (1, 1))
    dilations = a.get("dilations", (1, 1))
    pads = a.get("pads", (0, 0, 0, 0))
    for axis, i, o, k, st, d, p in (
        ("height", x_shape[1], out_shape[1], kh, strides[0], dilations[0], pads[0]),
        ("width", x_shape[2], out_shape[2], kw, strides[1], dilations[1], pads[2]),
    ):
        if not _window_ok(int(i), int(o), int(k), int(st), int(d), int(p)):
            raise UnsupportedOp(
                f"op {op.name!r}: {axis}: {o} outputs from {i} inputs do not fit a {k}-tap window "
                f"with stride {st}, dilation {d} and padding {p} before (the model's geometry is "
                "inconsistent)"
            )


_KIND_SUFFIX = {OUT_AFFINE: "_affine", OUT_TFLITE: "_tflite", OUT_FLOAT: "_float"}


def kernel_call(graph: Graph, op: Op, values: dict[str, np.ndarray]) -> KernelCall:
    """The C call computing ``op`` from ``values`` (the IR representation of its inputs)."""
    from bnncube.converters.figures import op_macc

    x_t = graph.tensors[op.inputs[0]]
    out_t = graph.tensors[op.outputs[0]]
    out = _out_buffer(out_t)
    x = values.get(op.inputs[0])
    if x is None:
        x = np.asarray(x_t.data)
    x = np.ascontiguousarray(x)
    macs = op_macc(graph, op)
    ctx = Struct("bnn_context_t")
    scratch = op_scratch_bytes(graph, op)
    if scratch > 0:  # the generated code passes its planned buffer in the arena instead
        ctx = Struct("bnn_context_t", buf=np.zeros(scratch, np.uint8), size=scratch)
    if op.type in ("Conv2D", "DepthwiseConv2D"):
        if x_t.dtype not in ("int8", "uint8"):
            raise UnsupportedOp(
                f"op {op.name!r}: {op.type} on a {x_t.dtype} input has no C kernel; the runtime "
                "runs int8 and binary layers (quantize the model: QKeras quantizers, or TFLite "
                "full-integer quantization)"
            )
        _, zp = _quant(x_t)
        w_t = graph.tensors[op.inputs[1]]
        check_geometry(op, x_t.shape, out_t.shape, w_t.shape[1], w_t.shape[2])
        channels_in = x_t.shape[3] * (
            op.attrs.get("depth_multiplier", 1) if op.type != "Conv2D" else 1
        )
        if op.type == "Conv2D" and (w_t.shape[3] != x_t.shape[3] or w_t.shape[0] != out_t.shape[3]):
            raise UnsupportedOp(
                f"op {op.name!r}: filter {w_t.shape} does not fit input {x_t.shape} and output "
                f"{out_t.shape} (expected [{out_t.shape[3]}, KH, KW, {x_t.shape[3]}])"
            )
        if op.type != "Conv2D" and (
            w_t.shape[3] != out_t.shape[3] or channels_in != out_t.shape[3]
        ):
            raise UnsupportedOp(
                f"op {op.name!r}: depthwise filter {w_t.shape} does not fit input {x_t.shape} and "
                f"output {out_t.shape}"
            )
        fn = "bnn_conv2d_s8" if op.type == "Conv2D" else "bnn_depthwise_conv2d_s8"
        output = output_struct(graph, op)
        # the entry point of this output transform only (the linker drops the others)
        fn += _KIND_SUFFIX[int(output.fields["kind"])]
        args = [
            ctx,
            _conv_params(op, zp),
            output,
            _dims4(x_t.shape),
            x,
            _dims4(w_t.shape),
            _const(graph, op, 1).astype(np.int8),
            _dims4(out_t.shape),
            out,
        ]
        return KernelCall(fn, args, out, macs)
    if op.type == "Dense":
        _, zp = _quant(x_t)
        w = _const(graph, op, 1).astype(np.int8)
        args = [
            ctx,
            _conv_params(op, zp),
            output_struct(graph, op),
            int(w.shape[1]),
            x.reshape(-1),
            int(w.shape[0]),
            w,
            out,
        ]
        return KernelCall("bnn_dense_s8", args, out, macs)
    if op.type == "BinaryConv2D":
        parts = fused_ops(op)
        conv = parts[0] if parts else op  # errors name the model's own layer
        w_t = graph.tensors[op.inputs[1]]
        check_geometry(conv, x_t.shape, out_t.shape, w_t.shape[1], w_t.shape[2])
        if tuple(op.attrs.get("dilations", (1, 1))) != (1, 1):
            raise UnsupportedOp(
                f"op {conv.name!r}: dilation {tuple(op.attrs['dilations'])}; the binary "
                "convolution kernel takes dilation 1 only"
            )
        if w_t.shape[3] != x_t.shape[3] or w_t.shape[0] != out_t.shape[3]:
            raise UnsupportedOp(
                f"op {conv.name!r}: filter {w_t.shape} does not fit input {x_t.shape} and output "
                f"{out_t.shape} (expected [{out_t.shape[3]}, KH, KW, {x_t.shape[3]}])"
            )
        filters = pack_filters(_const(graph, op, 1))
        head = [ctx, _conv_params(op), output_struct(graph, conv)]
        data = [_dims4(x_t.shape), np.asarray(x, np.uint32), _dims4(w_t.shape), filters]
        if parts:  # BinaryConv2D + Add (passes.fuse_residual_adds)
            return _bconv_add_call(graph, op, values, head, data, out, macs)
        return KernelCall("bnn_bconv2d", [*head, *data, _dims4(out_t.shape), out], out, macs)
    if op.type == "Bitpack":
        rows = int(np.prod(x_t.shape[:-1]))
        channels = int(x_t.shape[-1])
        if x_t.dtype == "float32":
            return KernelCall("bnn_bitpack_f32", [rows, channels, x, out], out, macs)
        _, zp = _quant(x_t)
        return KernelCall("bnn_bitpack_s8", [rows, channels, zp, x, out], out, macs)
    if op.type == "Add":
        return KernelCall("bnn_add_s8", _add_args(graph, op, values, out), out, macs)
    if op.type in ("AveragePool2D", "MaxPool2D"):
        lo, hi = activation_range(op.attrs.get("activation", "none"), out_t.quant, out_t.dtype)
        kh, kw = op.attrs["pool"]
        check_geometry(op, x_t.shape, out_t.shape, int(kh), int(kw))
        fn = "bnn_avgpool_s8" if op.type == "AveragePool2D" else "bnn_maxpool_s8"
        args = [
            _conv_params(op),
            int(kh),
            int(kw),
            lo,
            hi,
            _dims4(x_t.shape),
            x,
            _dims4(out_t.shape),
            out,
        ]
        return KernelCall(fn, args, out, macs)
    if op.type == "Mean":
        if tuple(op.attrs.get("axes", (1, 2))) != (1, 2):
            raise UnsupportedOp(f"op {op.name!r}: Mean over axes other than (1, 2)")
        s_in, zp_in = _quant(x_t)
        s_out, zp_out = _quant(out_t)
        q, shift = quantize_multiplier(float(np.float32(s_in)) / float(np.float32(s_out)))
        args = [q, shift, zp_in, zp_out, _dims4(x_t.shape), x, out]
        return KernelCall("bnn_mean_s8", args, out, macs)
    if op.type == "Quantize":
        return KernelCall(*_quantize_args(graph, op, x, out), out, macs)
    if op.type == "Dequantize":
        s, zp = _quant(x_t)
        args = [int(x.size), x.reshape(-1), F32(float(np.float32(s))), zp, out]
        return KernelCall("bnn_dequantize_s8_f32", args, out, macs)
    if op.type == "Reshape":
        return KernelCall("", [], None)
    raise UnsupportedOp(
        f"op {op.name!r}: no C kernel for {op.type}; supported: Conv2D, DepthwiseConv2D, Dense "
        "(int8), BinaryConv2D, Bitpack, Add, AveragePool2D, MaxPool2D, Mean, Quantize, "
        "Dequantize, Reshape"
    )


def _bconv_add_call(
    graph: Graph,
    op: Op,
    values: dict[str, np.ndarray],
    head: list[Any],
    data: list[Any],
    out: np.ndarray,
    macs: int,
) -> KernelCall:
    """``bnn_bconv2d_add`` for a fused BinaryConv2D + Add: the Add's parameters with the
    convolution's value as input a (the Add is symmetric in its inputs, bit for bit)."""
    conv, add = fused_ops(op)
    position = int(op.attrs.get("residual_position", 0))
    params = _add_params(graph, add)
    if position == 1:
        params = _swap_add_inputs(params)
    residual = np.ascontiguousarray(values[add.inputs[1 - position]])
    out_dims = _dims4(graph.tensors[op.outputs[0]].shape)
    args = [*head, params, *data, out_dims, residual, out]
    return KernelCall("bnn_bconv2d_add", args, out, macs)


def _swap_add_inputs(params: Struct) -> Struct:
    """The same ``bnn_add_params_t`` with inputs a and b exchanged."""
    fields = dict(params.fields)
    for a, b in (
        ("a_zero_point", "b_zero_point"),
        ("a_mult", "b_mult"),
        ("a_shift", "b_shift"),
        ("affine_mult0", "affine_mult1"),
    ):
        fields[a], fields[b] = params.fields[b], params.fields[a]
    return Struct(params.ctype, **fields)


def _add_args(graph: Graph, op: Op, values: dict[str, np.ndarray], out: np.ndarray) -> list[Any]:
    a = np.ascontiguousarray(values[op.inputs[0]]).reshape(-1)
    b = np.ascontiguousarray(values[op.inputs[1]]).reshape(-1)
    return [_add_params(graph, op), int(a.size), a, b, out.reshape(-1)]


def _add_params(graph: Graph, op: Op) -> Struct:
    a_t, b_t, out_t = (graph.tensors[n] for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if a_t.shape != b_t.shape:
        raise UnsupportedOp(f"op {op.name!r}: Add with broadcasting")
    s_a, zp_a = _quant(a_t)
    s_b, zp_b = _quant(b_t)
    s_o, zp_o = _quant(out_t)
    if transform_of(op) == "affine":
        mult = _const(graph, op, 2).reshape(-1)
        lo, hi = op.attrs["clamp"]
        params = Struct(
            "bnn_add_params_t",
            kind=OUT_AFFINE,
            a_zero_point=zp_a,
            b_zero_point=zp_b,
            affine_mult0=int(mult[0]),
            affine_mult1=int(mult[1]),
            affine_shift=int(_const(graph, op, 3).reshape(-1)[0]),
            affine_offset=int(_const(graph, op, 4).reshape(-1)[0]),
            act_min=lo,
            act_max=hi,
        )
    else:
        left, (qa, sa), (qb, sb), (qo, so) = tflite_add_multipliers(s_a, s_b, s_o)
        lo, hi = activation_range(op.attrs.get("activation", "none"), out_t.quant, out_t.dtype)
        params = Struct(
            "bnn_add_params_t",
            kind=OUT_TFLITE,
            a_zero_point=zp_a,
            b_zero_point=zp_b,
            left_shift=left,
            a_mult=qa,
            a_shift=sa,
            b_mult=qb,
            b_shift=sb,
            out_mult=qo,
            out_shift=so,
            out_zero_point=zp_o,
            act_min=lo,
            act_max=hi,
        )
    return params


def _quantize_args(graph: Graph, op: Op, x: np.ndarray, out: np.ndarray) -> tuple[str, list[Any]]:
    x_t, out_t = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    s_out, zp_out = _quant(out_t)
    flat_out = out.reshape(-1)
    if x_t.dtype == "float32":
        lo, hi = op.attrs.get("qrange", (-128, 127))
        rounding = (
            ROUND_HALF_EVEN
            if op.attrs.get("rounding", "half_away") == "half_even"
            else ROUND_HALF_AWAY
        )
        args = [int(x.size), x.reshape(-1), F32(float(np.float32(s_out))), zp_out, rounding, lo, hi]
        return "bnn_quantize_f32_s8", [*args, flat_out]
    s_in, zp_in = _quant(x_t)
    if transform_of(op) == "affine":
        lo, hi = op.attrs["clamp"]
        output = Struct(
            "bnn_output_t",
            kind=OUT_AFFINE,
            a_mult=_const(graph, op, 1).reshape(-1),
            a_shift=_const(graph, op, 2).reshape(-1),
            a_offset=ready_offsets(op, _const(graph, op, 3), _const(graph, op, 2)),
            act_min=lo,
            act_max=hi,
        )
    else:
        q, shift = quantize_multiplier(float(np.float32(s_in)) / float(np.float32(s_out)))
        lo, hi = op.attrs.get("qrange", (-128, 127))
        output = Struct(
            "bnn_output_t",
            kind=OUT_TFLITE,
            q_mult=np.asarray([q], np.int32),
            q_shift=np.asarray([shift], np.int32),
            out_zero_point=zp_out,
            act_min=lo,
            act_max=hi,
        )
    return "bnn_requantize_s8", [output, zp_in, int(x.size), x.reshape(-1), flat_out]


@dataclass
class GraphRun:
    values: dict[str, np.ndarray]
    instructions: dict[str, int] = field(default_factory=dict)  # op name -> instructions
    macs: dict[str, int] = field(default_factory=dict)


def run_graph_c(graph: Graph, backend: Any, inputs: list[np.ndarray]) -> GraphRun:
    """Run ``graph`` op by op through the C kernels on ``backend``; every value is returned."""
    values: dict[str, np.ndarray] = {}
    for name, arr in zip(graph.inputs, inputs, strict=True):
        t = graph.tensors[name]
        values[name] = np.ascontiguousarray(np.asarray(arr).astype(_NP[t.dtype]).reshape(t.shape))
    run = GraphRun(values)
    for op in graph.ops:
        call = kernel_call(graph, op, values)
        out_t = graph.tensors[op.outputs[0]]
        if call.output is None:  # Reshape: the same bytes
            values[op.outputs[0]] = values[op.inputs[0]].reshape(out_t.shape)
            continue
        status = backend.call(call.function, *call.args)
        if status != 0:
            raise RuntimeError(f"op {op.name!r}: {call.function} returned {status}")
        values[op.outputs[0]] = call.output
        run.macs[op.name] = call.macs
        count = getattr(backend, "last_instructions", None)
        if count is not None:
            run.instructions[op.name] = int(count)
    return run
