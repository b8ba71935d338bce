"""The ``ai.bnncube`` ONNX custom ops, run in onnxruntime through onnxruntime-extensions.

docs/onnx-ops.md is the specification of the domain; every op here is implemented by calling
:mod:`bnncube.converters.reference` (or :mod:`~bnncube.converters.binary_reference`), the
executable form of docs/ir.md "Deployed op semantics", so there is one definition of the
arithmetic:

* the *transform* ops (``Requantize``, ``RequantizeAffine``, ``RequantizeFloat``,
  ``Threshold``) turn an int32 accumulator made by standard ONNX ops (``ConvInteger``,
  ``MatMulInteger``) or by ``BinaryConv2D`` into the op's output: ``Requantize`` with the
  reference's TFLite fixed-point helpers, the others through the reference's own output-transform
  function on a one-op context;
* the *whole-op* custom ops (``Add``, ``AddAffine``, ``AveragePool2D``, ``Mean``, ``Quantize``,
  ``QuantizeAffine``), where no standard ONNX op is exact, build a one-op IR graph from their
  inputs and attributes and run it with :func:`~bnncube.converters.reference.run_graph`;
* ``Bitpack`` and ``BinaryConv2D`` call :mod:`~bnncube.converters.binary_reference`.

onnxruntime-extensions binds a Python function to a fixed list of input and output element
types; an op that accepts several input types is registered once per type combination (the
kernel is chosen by the input types, so the output type must follow from them: ops whose output
may be int8 or uint8 take a ``y_zero_point`` input of the output type, as ONNX's QuantizeLinear
does).  Attributes must be scalars (INT, FLOAT, STRING) and every declared attribute must be
present on the node.  onnxruntime-extensions hands FLOAT attributes to Python as decimal strings
of about 7 significant digits (0.0070423014 arrives as 0.0070423), so no op here takes a FLOAT
attribute: scales are float32 input tensors (exact), integers INT attributes (exact).

:func:`register` is idempotent (it looks at what onnxruntime-extensions already holds, so
importing this module again or reloading it does not register twice); :func:`make_session`
registers and returns a CPU :class:`onnxruntime.InferenceSession`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.converters import reference
from bnncube.converters.binary_reference import binary_conv_accumulate, bitpack
from bnncube.converters.ir import Graph, Op, Quant, Tensor

DOMAIN = "ai.bnncube"
DOMAIN_VERSION = 1

_NP_TO_IR = {
    np.dtype(np.float32): "float32",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
}


# --------------------------------------------------------------------------------------------
# helpers: running the reference on one op
# --------------------------------------------------------------------------------------------


def _scalar(a: np.ndarray) -> Any:
    return np.asarray(a).reshape(-1)[0].item()


def _quant(scale: float, zero_point: int) -> Quant:
    return Quant.per_tensor(float(scale), int(zero_point))


def _run_ir_op(
    op_type: str,
    data: list[tuple[np.ndarray, Quant | None]],
    consts: list[np.ndarray],
    out_dtype: str,
    out_shape: tuple[int, ...],
    out_quant: Quant | None,
    attrs: dict[str, Any],
) -> np.ndarray:
    """Run one IR op (data inputs, then constant inputs) with the reference; return its output."""
    g = Graph(f"onnx:{op_type}")
    names: list[str] = []
    for i, (arr, quant) in enumerate(data):
        g.add_tensor(Tensor(f"x{i}", arr.shape, _NP_TO_IR[arr.dtype], quant))
        names.append(f"x{i}")
    for i, arr in enumerate(consts):
        g.add_tensor(Tensor(f"c{i}", arr.shape, _NP_TO_IR[arr.dtype], None, arr))
        names.append(f"c{i}")
    g.add_tensor(Tensor("y", out_shape, out_dtype, out_quant))
    g.add_op(Op(op_type, op_type, names, ["y"], attrs))
    g.inputs = [f"x{i}" for i in range(len(data))]
    g.outputs = ["y"]
    return reference.run_graph(g, [arr for arr, _ in data])["y"]


def _output_transform(
    transform: str,
    acc: np.ndarray,
    consts: list[np.ndarray],
    out_dtype: str,
    attrs: dict[str, Any],
) -> np.ndarray:
    """The reference's output transform (``affine``, ``float``, ``threshold``) of ``acc``
    (:func:`bnncube.converters.reference.output_transform`, the one definition)."""
    y = reference.output_transform(transform, acc, consts, attrs)
    return y.astype(np.int8 if out_dtype == "int8" else np.uint8) if transform == "affine" else y


# --------------------------------------------------------------------------------------------
# the ops
# --------------------------------------------------------------------------------------------


def requantize(
    acc: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray,
    y_zero_point: np.ndarray,
    clamp_lo: int,
    clamp_hi: int,
    single_rounding: int = 0,
) -> np.ndarray:
    """TFLite requantization of an int32 accumulator (channels last).

    ``y = clamp(MultiplyByQuantizedMultiplier(acc, multiplier[c], shift[c]) + y_zero_point,
    clamp_lo, clamp_hi)`` (:func:`~bnncube.converters.reference.multiply_by_quantized_multiplier`;
    ``single_rounding`` 1: the single-rounding form of TFLite's per-channel FULLY_CONNECTED,
    :func:`~bnncube.converters.reference.multiply_by_quantized_multiplier_single`).
    """
    mbqm = (
        reference.multiply_by_quantized_multiplier_single
        if int(single_rounding)
        else reference.multiply_by_quantized_multiplier
    )
    y = mbqm(acc.astype(np.int64), multiplier.astype(np.int64), shift.astype(np.int64)) + int(
        _scalar(y_zero_point)
    )
    return np.clip(y, clamp_lo, clamp_hi).astype(y_zero_point.dtype)


def requantize_affine(
    acc: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray,
    offset: np.ndarray,
    clamp_lo: int,
    clamp_hi: int,
) -> np.ndarray:
    """The ``affine`` output transform: ``clamp(round_half_even((acc*M + B) / 2**S), lo, hi)``."""
    y = _output_transform(
        "affine", acc, [multiplier, shift, offset], "int8", {"clamp": (clamp_lo, clamp_hi)}
    )
    return y.astype(np.int8)


def requantize_float(
    acc: np.ndarray, scale: np.ndarray, offset: np.ndarray, activation: str
) -> np.ndarray:
    """The ``float`` output transform: ``f32(f32(f32(acc) * scale) + offset)``, then activation."""
    y = _output_transform("float", acc, [scale, offset], "float32", {"activation": activation})
    return y.astype(np.float32)


def threshold(acc: np.ndarray, thresholds: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The ``threshold`` output transform: packed bits ``acc < T`` / ``acc > T`` / ``T``."""
    y = _output_transform("threshold", acc, [thresholds, direction], "binary", {})
    return np.asarray(y, np.uint32)


def bitpack_op(x: np.ndarray, zero_point: int) -> np.ndarray:
    """Bitpack along the last axis: bit 1 where ``x < zero_point`` (float: ``x < 0``)."""
    if x.dtype == np.float32:
        return bitpack(x, 0)
    return bitpack(x, int(zero_point))


def binary_conv2d(
    x: np.ndarray,
    w: np.ndarray,
    channels: int,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_bottom: int,
    pad_left: int,
    pad_right: int,
    pad_value: int,
) -> np.ndarray:
    """Binary convolution accumulator (int32) of packed x and packed OHWI filters."""
    return binary_conv_accumulate(
        x,
        channels,
        w,
        w.shape[1:3],
        (stride_h, stride_w),
        (pad_top, pad_bottom, pad_left, pad_right),
        pad_value,
    ).astype(np.int32)


def add(
    a: np.ndarray,
    b: np.ndarray,
    scales: np.ndarray,
    a_zero_point: int,
    b_zero_point: int,
    y_zero_point: int,
    activation: str,
) -> np.ndarray:
    """TFLite int8 ADD (the IR ``Add`` with the ``tflite`` transform); ``scales`` = (s_a, s_b,
    s_y) as float32."""
    s_a, s_b, s_y = (float(v) for v in np.asarray(scales, np.float32).reshape(-1)[:3])
    shape = np.broadcast_shapes(a.shape, b.shape)
    return _run_ir_op(
        "Add",
        [(a, _quant(s_a, a_zero_point)), (b, _quant(s_b, b_zero_point))],
        [],
        _NP_TO_IR[a.dtype],
        shape,
        _quant(s_y, y_zero_point),
        {"activation": activation},
    )


def add_affine(
    a: np.ndarray,
    b: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray,
    offset: np.ndarray,
    a_zero_point: int,
    b_zero_point: int,
    clamp_lo: int,
    clamp_hi: int,
) -> np.ndarray:
    """The IR ``Add`` with the ``affine`` transform (int8 output)."""
    shape = np.broadcast_shapes(a.shape, b.shape)
    y = _run_ir_op(
        "Add",
        [(a, _quant(1.0, a_zero_point)), (b, _quant(1.0, b_zero_point))],
        [multiplier, shift, offset],
        "int8",
        shape,
        None,
        {"output_transform": "affine", "clamp": (clamp_lo, clamp_hi)},
    )
    return y.astype(np.int8)


def _pool_out(size: int, kernel: int, stride: int, before: int, after: int) -> int:
    return (size + before + after - kernel) // stride + 1


def average_pool2d(
    x: np.ndarray,
    y_scale: np.ndarray,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_bottom: int,
    pad_left: int,
    pad_right: int,
    activation: str,
    y_zero_point: int,
) -> np.ndarray:
    """TFLite int8 AVERAGE_POOL_2D, NHWC (the IR ``AveragePool2D``)."""
    n, h, w, c = x.shape
    oh = _pool_out(h, kernel_h, stride_h, pad_top, pad_bottom)
    ow = _pool_out(w, kernel_w, stride_w, pad_left, pad_right)
    quant = _quant(float(np.float32(_scalar(y_scale))), y_zero_point)
    attrs = {
        "pool": (kernel_h, kernel_w),
        "strides": (stride_h, stride_w),
        "pads": [pad_top, pad_bottom, pad_left, pad_right],
        "activation": activation,
    }
    return _run_ir_op(
        "AveragePool2D", [(x, quant)], [], _NP_TO_IR[x.dtype], (n, oh, ow, c), quant, attrs
    )


def mean(
    x: np.ndarray,
    axes: np.ndarray,
    scales: np.ndarray,
    keepdims: int,
    x_zero_point: int,
    y_zero_point: int,
) -> np.ndarray:
    """TFLite int8 MEAN over ``axes`` (the IR ``Mean``); ``scales`` = (s_x, s_y) as float32."""
    s_x, s_y = (float(v) for v in np.asarray(scales, np.float32).reshape(-1)[:2])
    ax = tuple(sorted(int(a) % x.ndim for a in np.asarray(axes).reshape(-1)))
    if keepdims:
        shape = tuple(1 if i in ax else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in ax)
    return _run_ir_op(
        "Mean",
        [(x, _quant(s_x, x_zero_point))],
        [],
        _NP_TO_IR[x.dtype],
        shape,
        _quant(s_y, y_zero_point),
        {"axes": ax, "keepdims": bool(keepdims)},
    )


def quantize(
    x: np.ndarray,
    y_zero_point: np.ndarray,
    scales: np.ndarray,
    x_zero_point: int,
    rounding: str,
    clamp_lo: int,
    clamp_hi: int,
) -> np.ndarray:
    """The IR ``Quantize`` (``tflite`` transform): float32 -> int, or int -> int (requantize);
    ``scales`` = (s_x, s_y) as float32 (s_x unused for a float input)."""
    s_x, s_y = (float(v) for v in np.asarray(scales, np.float32).reshape(-1)[:2])
    out_dtype = _NP_TO_IR[y_zero_point.dtype]
    x_quant = None if x.dtype == np.float32 else _quant(s_x, x_zero_point)
    attrs: dict[str, Any] = {"qrange": (clamp_lo, clamp_hi)}
    if x.dtype == np.float32:
        attrs["rounding"] = rounding
    return _run_ir_op(
        "Quantize",
        [(x, x_quant)],
        [],
        out_dtype,
        x.shape,
        _quant(s_y, _scalar(y_zero_point)),
        attrs,
    )


def quantize_affine(
    x: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray,
    offset: np.ndarray,
    x_zero_point: int,
    clamp_lo: int,
    clamp_hi: int,
) -> np.ndarray:
    """The IR ``Quantize`` int -> int8 with the ``affine`` transform."""
    y = _run_ir_op(
        "Quantize",
        [(x, _quant(1.0, x_zero_point))],
        [multiplier, shift, offset],
        "int8",
        x.shape,
        _quant(1.0, 0),
        {"output_transform": "affine", "clamp": (clamp_lo, clamp_hi)},
    )
    return y.astype(np.int8)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    """One ``ai.bnncube`` op: its function, type signatures, attributes (name -> kind)."""

    name: str
    fn: Callable[..., np.ndarray]
    signatures: tuple[tuple[tuple[str, ...], str], ...]  # ((input dtypes), output dtype)
    attrs: tuple[tuple[str, str], ...]  # (name, "int" | "float" | "string")


_I8, _U8 = "int8", "uint8"
_PER_TYPE = ((_I8,), (_U8,))

OP_SPECS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "Requantize",
            requantize,
            (
                (("int32", "int32", "int32", _I8), _I8),
                (("int32", "int32", "int32", _U8), _U8),
            ),
            (("clamp_lo", "int"), ("clamp_hi", "int"), ("single_rounding", "int")),
        ),
        OpSpec(
            "RequantizeAffine",
            requantize_affine,
            ((("int32", "int32", "int8", "int64"), _I8),),
            (("clamp_lo", "int"), ("clamp_hi", "int")),
        ),
        OpSpec(
            "RequantizeFloat",
            requantize_float,
            ((("int32", "float32", "float32"), "float32"),),
            (("activation", "string"),),
        ),
        OpSpec(
            "Threshold",
            threshold,
            ((("int32", "int32", "int8"), "uint32"),),
            (),
        ),
        OpSpec(
            "Bitpack",
            bitpack_op,
            (((_I8,), "uint32"), ((_U8,), "uint32"), (("float32",), "uint32")),
            (("zero_point", "int"),),
        ),
        OpSpec(
            "BinaryConv2D",
            binary_conv2d,
            ((("uint32", "uint32"), "int32"),),
            tuple(
                (a, "int")
                for a in (
                    "channels",
                    "stride_h",
                    "stride_w",
                    "pad_top",
                    "pad_bottom",
                    "pad_left",
                    "pad_right",
                    "pad_value",
                )
            ),
        ),
        OpSpec(
            "Add",
            add,
            (((_I8, _I8, "float32"), _I8), ((_U8, _U8, "float32"), _U8)),
            (
                ("a_zero_point", "int"),
                ("b_zero_point", "int"),
                ("y_zero_point", "int"),
                ("activation", "string"),
            ),
        ),
        OpSpec(
            "AddAffine",
            add_affine,
            (
                ((_I8, _I8, "int32", "int8", "int64"), _I8),
                ((_U8, _U8, "int32", "int8", "int64"), _I8),
            ),
            (
                ("a_zero_point", "int"),
                ("b_zero_point", "int"),
                ("clamp_lo", "int"),
                ("clamp_hi", "int"),
            ),
        ),
        OpSpec(
            "AveragePool2D",
            average_pool2d,
            (((_I8, "float32"), _I8), ((_U8, "float32"), _U8)),
            tuple(
                (a, "int")
                for a in (
                    "kernel_h",
                    "kernel_w",
                    "stride_h",
                    "stride_w",
                    "pad_top",
                    "pad_bottom",
                    "pad_left",
                    "pad_right",
                )
            )
            + (("activation", "string"), ("y_zero_point", "int")),
        ),
        OpSpec(
            "Mean",
            mean,
            (((_I8, "int64", "float32"), _I8), ((_U8, "int64", "float32"), _U8)),
            (("keepdims", "int"), ("x_zero_point", "int"), ("y_zero_point", "int")),
        ),
        OpSpec(
            "Quantize",
            quantize,
            tuple(((x, y, "float32"), y) for x in ("float32", _I8, _U8) for y in (_I8, _U8)),
            (
                ("x_zero_point", "int"),
                ("rounding", "string"),
                ("clamp_lo", "int"),
                ("clamp_hi", "int"),
            ),
        ),
        OpSpec(
            "QuantizeAffine",
            quantize_affine,
            (((_I8, "int32", "int8", "int64"), _I8), ((_U8, "int32", "int8", "int64"), _I8)),
            (("x_zero_point", "int"), ("clamp_lo", "int"), ("clamp_hi", "int")),
        ),
    )
}

_lock = threading.Lock()


def _registered_keys() -> set[tuple[str, tuple[int, ...]]]:
    from onnxruntime_extensions import _ocos

    keys = set()
    for od in list(_ocos.Opdef._odlist.values()):
        try:
            keys.add((str(od.op_type), tuple(int(t) for t in od._nativedef.input_types)))
        except AttributeError:  # pragma: no cover - not one of ours
            continue
    return keys


def register() -> None:
    """Register every ``ai.bnncube`` op with onnxruntime-extensions (once per process).

    onnxruntime refuses a session when a kernel is registered twice, so this looks at the
    extension's own table of Python ops first: calling it again (or after reloading this module)
    registers nothing new.
    """
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    types = {
        "float32": PyCustomOpDef.dt_float,
        "int8": PyCustomOpDef.dt_int8,
        "uint8": PyCustomOpDef.dt_uint8,
        "int32": PyCustomOpDef.dt_int32,
        "int64": PyCustomOpDef.dt_int64,
        "uint32": PyCustomOpDef.dt_uint32,
    }
    kinds = {
        "int": PyCustomOpDef.dt_int64,
        "float": PyCustomOpDef.dt_float,
        "string": PyCustomOpDef.dt_string,
    }
    with _lock:
        done = _registered_keys()
        for spec in OP_SPECS.values():
            op_type = f"{DOMAIN}::{spec.name}"
            for in_types, out_type in spec.signatures:
                ins = [types[t] for t in in_types]
                if (op_type, tuple(int(t) for t in ins)) in done:
                    continue
                onnx_op(
                    op_type=op_type,
                    inputs=ins,
                    outputs=[types[out_type]],
                    attrs={name: kinds[kind] for name, kind in spec.attrs},
                )(spec.fn)


def make_session(model_or_path: Any, optimization: str = "all") -> Any:
    """A CPU :class:`onnxruntime.InferenceSession` for a bnncube ONNX model.

    ``model_or_path``: an ``onnx.ModelProto``, serialized bytes, or a file path.
    ``optimization``: onnxruntime's graph optimization level, ``"all"`` (its default),
    ``"extended"``, ``"basic"`` or ``"none"``.
    """
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    register()
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    options.log_severity_level = 3
    options.graph_optimization_level = levels[optimization]
    if isinstance(model_or_path, (str, Path)):
        source: Any = str(model_or_path)
    elif isinstance(model_or_path, bytes):
        source = model_or_path
    else:
        source = model_or_path.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
