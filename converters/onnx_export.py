"""ONNX exporter: a deployed IR :class:`~bnncube.converters.ir.Graph` -> an ONNX model.

docs/onnx-ops.md is the specification of the form written here; in short:

* integer accumulations as standard ONNX ops that are exact (``ConvInteger``, ``MatMulInteger``
  producing int32, with ``Transpose`` around them since the IR is NHWC and ONNX convolutions are
  NCHW), the TFLite bias as a standard int32 ``Add``;
* the output transform (TFLite fixed-point requantization, QKeras ``affine``, ``float``,
  ``threshold``) and the ops no standard ONNX op reproduces bit for bit (TFLite ADD, average
  pooling, MEAN, half-away-from-zero quantization, ...) as ops of the ``ai.bnncube`` domain
  (:mod:`bnncube.converters.onnx_ops` runs them in onnxruntime);
* ``MaxPool``, ``Reshape``, ``Pad``, ``QuantizeLinear`` (ties to even) and ``DequantizeLinear``
  as standard ops, which are exact;
* binary activations as ``uint32 [N, H, W, ceil(C/32)]`` (LCE bit layout), binary filters packed
  the same way (OHWI, I packed).

The model's inputs and outputs keep the IR's names, NHWC shapes and element types.  What the IR
holds that the ONNX graph does not (tensor quantization with its quantizer string, op names and
all op attributes, graph name and source file name) is stored as JSON in the model's
``metadata_props`` under :data:`METADATA_KEY`; every IR constant is an initializer of the same
name (in the layout its ONNX consumer needs, see docs/onnx-ops.md).
:func:`bnncube.converters.onnx_frontend.load_onnx` reads both back into the same IR.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.converters import reference
from bnncube.converters.binary_reference import pack_filters
from bnncube.converters.ir import Graph, Op, Quant, Tensor, packed_words, unfused
from bnncube.converters.onnx_ops import DOMAIN, DOMAIN_VERSION
from bnncube.errors import BnnError

OPSET = 21  # default-domain opset (onnx 1.23 and onnxruntime 1.32 both support it)
IR_VERSION = 10  # the ONNX IR version that goes with opset 21
METADATA_KEY = "bnncube.ir"
FORMAT_VERSION = 1
PRODUCER = "bnncube"

_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_NP = {
    "float32": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int32": np.int32,
    "int64": np.int64,
}
NCHW = [0, 3, 1, 2]
NHWC = [0, 2, 3, 1]


def onnx_elem_type(dtype: str) -> int:
    """ONNX TensorProto element type of an IR dtype (binary: packed uint32)."""
    from onnx import TensorProto

    return {
        "float32": TensorProto.FLOAT,
        "int8": TensorProto.INT8,
        "uint8": TensorProto.UINT8,
        "int32": TensorProto.INT32,
        "int64": TensorProto.INT64,
        "binary": TensorProto.UINT32,
    }[dtype]


def onnx_shape(tensor: Tensor) -> list[int]:
    """Shape of the tensor's ONNX value: binary tensors are packed along their last axis."""
    if tensor.dtype == "binary":
        if not tensor.shape:
            return [1]
        return list(tensor.shape[:-1]) + [packed_words(tensor.shape[-1])]
    return list(tensor.shape)


# --------------------------------------------------------------------------------------------
# JSON form of attribute values and quantization (exact round trip)
# --------------------------------------------------------------------------------------------


def encode_value(v: Any) -> Any:
    """A JSON-able form of an attribute value that :func:`decode_value` turns back exactly."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(v, np.ndarray):
        return {
            "__ndarray__": str(v.dtype),
            "shape": list(v.shape),
            "data": [encode_value(x) for x in v.reshape(-1).tolist()],
        }
    if isinstance(v, np.generic):
        return {"__numpy__": str(v.dtype), "value": encode_value(v.item())}
    if isinstance(v, tuple):
        return {"__tuple__": [encode_value(x) for x in v]}
    if isinstance(v, list):
        return [encode_value(x) for x in v]
    if isinstance(v, dict):
        return {"__dict__": [[encode_value(k), encode_value(x)] for k, x in v.items()]}
    raise BnnError(f"ONNX export: cannot store an attribute value of type {type(v).__name__}")


def decode_value(v: Any) -> Any:
    """Inverse of :func:`encode_value` (raises ValueError/KeyError/TypeError on bad input)."""
    if isinstance(v, list):
        return [decode_value(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__float__" in v:
        return float(v["__float__"])
    if "__ndarray__" in v:
        data = [decode_value(x) for x in v["data"]]
        arr = np.array(data, dtype=np.dtype(v["__ndarray__"]))
        return arr.reshape([int(d) for d in v["shape"]])
    if "__numpy__" in v:
        return np.dtype(v["__numpy__"]).type(decode_value(v["value"]))
    if "__tuple__" in v:
        return tuple(decode_value(x) for x in v["__tuple__"])
    if "__dict__" in v:
        return {decode_value(k): decode_value(x) for k, x in v["__dict__"]}
    raise ValueError(f"unknown encoded value {sorted(v)}")


def _quant_json(q: Quant | None) -> Any:
    if q is None:
        return None
    return {
        "scale": encode_value(np.asarray(q.scale)),
        "zero_point": encode_value(np.asarray(q.zero_point)),
        "axis": q.axis,
        "source": q.source,
    }


def graph_metadata(graph: Graph) -> dict[str, Any]:
    """Everything the IR holds except constant data (that is in the initializers)."""
    return {
        "format": "bnncube-ir",
        "version": FORMAT_VERSION,
        "name": graph.name,
        # the file name only: the same model gives the same bytes wherever it lies
        "source": Path(graph.source).name if graph.source else "",
        "source_format": graph.source_format,
        "inputs": list(graph.inputs),
        "outputs": list(graph.outputs),
        "tensors": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "const": t.is_const,
                "quant": _quant_json(t.quant),
            }
            for t in graph.tensors.values()
        ],
        "ops": [
            {
                "name": op.name,
                "type": op.type,
                "inputs": list(op.inputs),
                "outputs": list(op.outputs),
                "attrs": {k: encode_value(v) for k, v in op.attrs.items()},
            }
            for op in graph.ops
        ],
    }


# --------------------------------------------------------------------------------------------
# constants in their ONNX layout
# --------------------------------------------------------------------------------------------

# role of a constant input -> how its IR array becomes the initializer (and back, in the front
# end): see docs/onnx-ops.md "Initializers".
CONST_ROLES = ("conv_filter", "depthwise_filter", "dense_weights", "binary_filter", "plain")


def const_role(op: Op, index: int) -> str:
    """How constant input ``index`` of ``op`` is laid out in the ONNX model."""
    if index == 1:
        if op.type == "Conv2D":
            return "conv_filter"
        if op.type == "DepthwiseConv2D":
            return "depthwise_filter"
        if op.type == "Dense":
            return "dense_weights"
        if op.type == "BinaryConv2D":
            return "binary_filter"
    return "plain"


def to_onnx_layout(role: str, data: np.ndarray) -> np.ndarray:
    if role == "conv_filter":  # OHWI -> OIHW
        return np.ascontiguousarray(data.transpose(0, 3, 1, 2))
    if role == "depthwise_filter":  # 1HW(C*M) -> (C*M)1HW
        return np.ascontiguousarray(data.transpose(3, 0, 1, 2))
    if role == "dense_weights":  # [O, K] -> [K, O] (MatMulInteger's B)
        return np.ascontiguousarray(data.T)
    if role == "binary_filter":  # +1/-1 OHWI -> packed uint32 [O, KH, KW, ceil(I/32)]
        return pack_filters(data)
    return np.ascontiguousarray(data)


# --------------------------------------------------------------------------------------------
# the exporter
# --------------------------------------------------------------------------------------------


def _where(graph: Graph, op: Op) -> str:
    return f"ONNX export of {graph.source or graph.name}: op {op.name!r} ({op.type})"


def transform_of(op: Op) -> str:
    return str(op.attrs.get("output_transform") or "tflite")


def _scalar_quant(t: Tensor, where: str) -> tuple[float, int]:
    if t.quant is None:
        raise BnnError(f"{where}: tensor {t.name!r} ({t.dtype}) has no quantization parameters")
    return float(np.asarray(t.quant.scale).reshape(-1)[0]), int(
        np.asarray(t.quant.zero_point).reshape(-1)[0]
    )


def tflite_multipliers(
    op: Op, x: Tensor, w: Tensor, out: Tensor, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(q, shift)`` of TFLite's requantization (as the reference derives them).

    ``real = double(s_in) * double(s_w[o]) / double(s_out)`` (scales rounded to float32 first);
    Dense with a per-tensor weight scale multiplies ``s_in * s_w`` in float32 first (TFLite's
    GetQuantizedConvolutionMultipler).  ``(q, shift) = QuantizeMultiplier(real)``.
    """
    s_in, _ = _scalar_quant(x, where)
    s_out, _ = _scalar_quant(out, where)
    if w.quant is None:
        raise BnnError(f"{where}: weights {w.name!r} have no quantization parameters")
    channels = out.shape[-1]
    float_product = op.type == "Dense" and not w.quant.is_per_channel
    try:
        mult, shift = reference.tflite_channel_multipliers(
            s_in, w.quant.scale, s_out, channels, float_product
        )
    except ValueError as e:
        raise BnnError(f"{where}: {e}") from None
    mult, shift = mult.astype(np.int32), shift.astype(np.int32)
    return mult, shift


class _Exporter:
    def __init__(self, graph: Graph):
        from onnx import helper

        self.helper = helper
        self.g = graph
        self.nodes: list[Any] = []
        self.inits: dict[str, np.ndarray] = {}
        self.values: set[str] = set(graph.tensors)
        self.node_names: set[str] = set()

    # -- naming and building --------------------------------------------------------------
    def value(self, base: str) -> str:
        name, i = base, 1
        while name in self.values:
            name = f"{base}_{i}"
            i += 1
        self.values.add(name)
        return name

    def _node_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.node_names:
            name = f"{base}_{i}"
            i += 1
        self.node_names.add(name)
        return name

    def init(self, name: str, data: np.ndarray, where: str) -> str:
        data = np.asarray(data)
        old = self.inits.get(name)
        if old is not None and (old.dtype != data.dtype or not np.array_equal(old, data)):
            raise BnnError(f"{where}: constant {name!r} is used in two different layouts")
        self.inits[name] = data
        return name

    def const(self, op: Op, role: str, data: np.ndarray) -> str:
        name = self.value(f"{op.name}/{role}")
        self.inits[name] = np.asarray(data)
        return name

    def node(
        self,
        op_type: str,
        inputs: list[str],
        output: str,
        name: str,
        domain: str = "",
        **attrs: Any,
    ) -> None:
        self.nodes.append(
            self.helper.make_node(
                op_type,
                inputs,
                [output],
                name=self._node_name(name),
                domain=domain or None,
                **attrs,
            )
        )

    def custom(self, op_type: str, inputs: list[str], output: str, name: str, **attrs: Any) -> None:
        self.node(op_type, inputs, output, name, DOMAIN, **attrs)

    # -- inputs of IR ops -----------------------------------------------------------------
    def ir_const(self, op: Op, index: int, where: str, dtype: str | None = None) -> str:
        """Initializer for IR constant input ``index`` of ``op`` (its own name)."""
        name = op.inputs[index]
        t = self.g.tensors[name]
        if t.data is None:
            raise BnnError(f"{where}: input {index} ({name!r}) must be a constant")
        if dtype is not None and t.dtype != dtype:
            raise BnnError(f"{where}: constant {name!r} is {t.dtype}; the ONNX form needs {dtype}")
        return self.init(name, to_onnx_layout(const_role(op, index), np.asarray(t.data)), where)

    def data_input(self, op: Op, index: int, where: str) -> str:
        """An activation input (or an IR constant used as data: its own initializer)."""
        name = op.inputs[index]
        t = self.g.tensors[name]
        if t.data is not None:
            if t.dtype == "binary":
                raise BnnError(f"{where}: binary constant {name!r} used as data")
            self.init(name, np.asarray(t.data).astype(_NP[t.dtype]), where)
        return name

    # -- output transforms ----------------------------------------------------------------
    def transform(self, op: Op, acc: str, where: str, out: Tensor | None = None) -> None:
        """acc (int32, channels last) -> ``out`` (default: the op's output tensor), by the
        op's ``output_transform``."""
        out = out if out is not None else self.g.tensors[op.outputs[0]]
        transform = transform_of(op)
        x = self.g.tensors[op.inputs[0]]
        w = self.g.tensors[op.inputs[1]]
        if transform == "tflite":
            if out.dtype not in _INT_RANGE:
                raise BnnError(
                    f"{where}: output {out.name!r} is {out.dtype}; the tflite transform needs "
                    "int8 or uint8"
                )
            if op.type == "BinaryConv2D":
                raise BnnError(
                    f"{where}: BinaryConv2D needs an affine, float or threshold transform"
                )
            if len(op.inputs) > 2 and op.inputs[2]:
                bias = self.ir_const(op, 2, where, "int32")
                summed = self.value(f"{op.name}/acc_bias")
                self.node("Add", [acc, bias], summed, f"{op.name}/bias")
                acc = summed
            mult, shift = tflite_multipliers(op, x, w, out, where)
            _, zp = _scalar_quant(out, where)
            lo, hi = reference.activation_range(
                op.attrs.get("activation", "none"), out.quant, out.dtype
            )
            zp_name = self.const(op, "y_zero_point", np.asarray([zp], _NP[out.dtype]))
            self.custom(
                "Requantize",
                [
                    acc,
                    self.const(op, "multiplier", mult),
                    self.const(op, "shift", shift),
                    zp_name,
                ],
                out.name,
                op.name,
                clamp_lo=int(lo),
                clamp_hi=int(hi),
                # TFLite's per-channel FULLY_CONNECTED rounds once (docs/ir.md)
                single_rounding=int(op.type == "Dense" and bool(w.quant.is_per_channel)),
            )
            return
        if transform == "affine":
            if out.dtype != "int8":
                raise BnnError(f"{where}: the affine transform writes int8, not {out.dtype}")
            lo, hi = self._clamp(op, where)
            self._expect_inputs(op, 5, where)
            self.custom(
                "RequantizeAffine",
                [
                    acc,
                    self.ir_const(op, 2, where, "int32"),
                    self.ir_const(op, 3, where, "int8"),
                    self.ir_const(op, 4, where, "int64"),
                ],
                out.name,
                op.name,
                clamp_lo=lo,
                clamp_hi=hi,
            )
            return
        if transform == "float":
            if out.dtype != "float32":
                raise BnnError(f"{where}: the float transform writes float32, not {out.dtype}")
            self._expect_inputs(op, 4, where)
            self.custom(
                "RequantizeFloat",
                [
                    acc,
                    self.ir_const(op, 2, where, "float32"),
                    self.ir_const(op, 3, where, "float32"),
                ],
                out.name,
                op.name,
                activation=str(op.attrs.get("activation", "none") or "none"),
            )
            return
        if transform == "threshold":
            if out.dtype != "binary":
                raise BnnError(f"{where}: the threshold transform writes binary, not {out.dtype}")
            self._expect_inputs(op, 4, where)
            self.custom(
                "Threshold",
                [acc, self.ir_const(op, 2, where, "int32"), self.ir_const(op, 3, where, "int8")],
                out.name,
                op.name,
            )
            return
        raise BnnError(
            f"{where}: output transform {transform!r} is not supported; supported: tflite, "
            "affine, float, threshold"
        )

    def _expect_inputs(self, op: Op, n: int, where: str) -> None:
        if len(op.inputs) != n:
            raise BnnError(
                f"{where}: the {transform_of(op)} transform takes {n} inputs, found "
                f"{len(op.inputs)}"
            )

    def _clamp(self, op: Op, where: str) -> tuple[int, int]:
        clamp = op.attrs.get("clamp")
        if clamp is None or len(clamp) != 2:
            raise BnnError(f"{where}: the affine transform needs attrs['clamp'] = (lo, hi)")
        return int(clamp[0]), int(clamp[1])

    def _x_zero_point(self, op: Op, where: str) -> str:
        x = self.g.tensors[op.inputs[0]]
        if x.dtype not in _INT_RANGE:
            raise BnnError(
                f"{where}: input {x.name!r} is {x.dtype}; the ONNX form has int8/uint8 MAC ops "
                "only (float models: use tf2onnx)"
            )
        _, zp = _scalar_quant(x, where)
        lo, hi = _INT_RANGE[x.dtype]
        if not lo <= zp <= hi:
            raise BnnError(f"{where}: zero point {zp} of {x.name!r} is outside {x.dtype}")
        return self.const(op, "x_zero_point", np.asarray(zp, _NP[x.dtype]))

    # -- ops --------------------------------------------------------------------------------
    def conv(self, op: Op, where: str) -> None:
        a = op.attrs
        w = self.g.tensors[op.inputs[1]]
        x = self.g.tensors[op.inputs[0]]
        if w.data is None or w.data.ndim != 4:
            raise BnnError(f"{where}: the filter must be a 4-D constant")
        zp = self._x_zero_point(op, where)
        if w.dtype != "int8":
            raise BnnError(f"{where}: filter {w.name!r} is {w.dtype}; int8 expected")
        weights = self.ir_const(op, 1, where)
        kh, kw = int(w.shape[1]), int(w.shape[2])
        top, bottom, left, right = (int(p) for p in a.get("pads", [0, 0, 0, 0]))
        group = 1
        if op.type == "DepthwiseConv2D":
            group = int(x.shape[3])
        x_nchw = self.value(f"{op.name}/x_nchw")
        self.node("Transpose", [op.inputs[0]], x_nchw, f"{op.name}/to_nchw", perm=NCHW)
        acc_nchw = self.value(f"{op.name}/acc_nchw")
        self.node(
            "ConvInteger",
            [x_nchw, weights, zp],
            acc_nchw,
            f"{op.name}/conv",
            kernel_shape=[kh, kw],
            strides=[int(s) for s in a.get("strides", (1, 1))],
            dilations=[int(d) for d in a.get("dilations", (1, 1))],
            pads=[top, left, bottom, right],
            group=group,
        )
        acc = self.value(f"{op.name}/acc")
        self.node("Transpose", [acc_nchw], acc, f"{op.name}/to_nhwc", perm=NHWC)
        self.transform(op, acc, where)

    def dense(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        w = self.g.tensors[op.inputs[1]]
        out = self.g.tensors[op.outputs[0]]
        if w.data is None or w.data.ndim != 2 or w.dtype != "int8":
            raise BnnError(f"{where}: the weights must be a 2-D int8 constant")
        zp = self._x_zero_point(op, where)
        o, k = (int(d) for d in w.shape)
        if x.num_elements % k:
            raise BnnError(f"{where}: input {list(x.shape)} does not flatten to rows of {k}")
        rows = x.num_elements // k
        x2 = op.inputs[0]
        if x.shape != (rows, k):
            x2 = self.value(f"{op.name}/x_2d")
            shape = self.const(op, "x_shape", np.asarray([rows, k], np.int64))
            self.node("Reshape", [op.inputs[0], shape], x2, f"{op.name}/flatten")
        acc = self.value(f"{op.name}/acc")
        self.node("MatMulInteger", [x2, self.ir_const(op, 1, where), zp], acc, f"{op.name}/matmul")
        if out.shape == (rows, o):
            self.transform(op, acc, where)
            return
        y2 = self.value(f"{op.name}/y_2d")
        self.transform(op, acc, where, Tensor(y2, (rows, o), out.dtype, out.quant))
        shape = self.const(op, "y_shape", np.asarray(out.shape, np.int64))
        self.node("Reshape", [y2, shape], out.name, f"{op.name}/reshape")

    def binary_conv(self, op: Op, where: str) -> None:
        a = op.attrs
        x = self.g.tensors[op.inputs[0]]
        w = self.g.tensors[op.inputs[1]]
        if x.dtype != "binary" or w.dtype != "binary" or w.data is None or w.data.ndim != 4:
            raise BnnError(f"{where}: binary input and 4-D binary constant filters expected")
        if tuple(a.get("dilations", (1, 1))) != (1, 1):
            raise BnnError(f"{where}: dilated binary convolution is not supported")
        pad_value = int(a.get("pad_value", 0))
        if pad_value not in (0, 1):
            raise BnnError(f"{where}: pad_value {pad_value} is not 0 or 1")
        top, bottom, left, right = (int(p) for p in a.get("pads", [0, 0, 0, 0]))
        sh, sw = (int(s) for s in a.get("strides", (1, 1)))
        acc = self.value(f"{op.name}/acc")
        self.custom(
            "BinaryConv2D",
            [op.inputs[0], self.ir_const(op, 1, where)],
            acc,
            f"{op.name}/bconv",
            channels=int(w.shape[3]),
            stride_h=sh,
            stride_w=sw,
            pad_top=top,
            pad_bottom=bottom,
            pad_left=left,
            pad_right=right,
            pad_value=pad_value,
        )
        self.transform(op, acc, where)

    def bitpack(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        if x.dtype == "float32":
            zp = 0
        elif x.dtype in _INT_RANGE:
            zp = _scalar_quant(x, where)[1]
        else:
            raise BnnError(f"{where}: Bitpack of {x.dtype} is not supported")
        self.custom(
            "Bitpack", [self.data_input(op, 0, where)], op.outputs[0], op.name, zero_point=zp
        )

    def add(self, op: Op, where: str) -> None:
        a_t, b_t = (self.g.tensors[n] for n in op.inputs[:2])
        out = self.g.tensors[op.outputs[0]]
        a, b = self.data_input(op, 0, where), self.data_input(op, 1, where)
        act = str(op.attrs.get("activation", "none") or "none")
        transform = transform_of(op)
        if transform == "affine":
            self._expect_inputs(op, 5, where)
            lo, hi = self._clamp(op, where)
            if out.dtype != "int8":
                raise BnnError(f"{where}: the affine transform writes int8, not {out.dtype}")
            if a_t.dtype != b_t.dtype or a_t.dtype not in _INT_RANGE:
                raise BnnError(f"{where}: affine Add of {a_t.dtype} and {b_t.dtype}")
            self.custom(
                "AddAffine",
                [
                    a,
                    b,
                    self.ir_const(op, 2, where, "int32"),
                    self.ir_const(op, 3, where, "int8"),
                    self.ir_const(op, 4, where, "int64"),
                ],
                out.name,
                op.name,
                a_zero_point=_scalar_quant(a_t, where)[1],
                b_zero_point=_scalar_quant(b_t, where)[1],
                clamp_lo=lo,
                clamp_hi=hi,
            )
            return
        if transform != "tflite":
            raise BnnError(f"{where}: output transform {transform!r} of Add is not supported")
        if a_t.dtype == b_t.dtype == out.dtype == "float32":
            if act == "none" or act == "linear":
                self.node("Add", [a, b], out.name, op.name)
                return
            summed = self.value(f"{op.name}/sum")
            self.node("Add", [a, b], summed, op.name)
            self._float_activation(op, summed, out.name, act, where)
            return
        if not (a_t.dtype == b_t.dtype == out.dtype and out.dtype in _INT_RANGE):
            raise BnnError(
                f"{where}: Add of {a_t.dtype} and {b_t.dtype} into {out.dtype} is not supported"
            )
        sa, za = _scalar_quant(a_t, where)
        sb, zb = _scalar_quant(b_t, where)
        so, zo = _scalar_quant(out, where)
        scales = self.const(op, "scales", np.asarray([sa, sb, so], np.float32))
        self.custom(
            "Add",
            [a, b, scales],
            out.name,
            op.name,
            a_zero_point=za,
            b_zero_point=zb,
            y_zero_point=zo,
            activation=act,
        )

    def _float_activation(self, op: Op, x: str, y: str, act: str, where: str) -> None:
        if act == "relu":
            self.node("Relu", [x], y, f"{op.name}/relu")
        elif act == "relu6":
            lo = self.const(op, "clip_min", np.asarray(0.0, np.float32))
            hi = self.const(op, "clip_max", np.asarray(6.0, np.float32))
            self.node("Clip", [x, lo, hi], y, f"{op.name}/relu6")
        else:
            raise BnnError(f"{where}: activation {act!r} is not supported")

    def _pool_geometry(self, op: Op, where: str) -> dict[str, int]:
        a = op.attrs
        x = self.g.tensors[op.inputs[0]]
        out = self.g.tensors[op.outputs[0]]
        kh, kw = (int(k) for k in a["pool"])
        sh, sw = (int(s) for s in a.get("strides", (kh, kw)))
        top, bottom, left, right = (int(p) for p in a.get("pads", [0, 0, 0, 0]))
        oh = (x.shape[1] + top + bottom - kh) // sh + 1
        ow = (x.shape[2] + left + right - kw) // sw + 1
        if (oh, ow) != tuple(out.shape[1:3]):
            raise BnnError(
                f"{where}: output {out.name!r} is {out.shape[1]}x{out.shape[2]}, the window "
                f"gives {oh}x{ow}"
            )
        return {
            "kernel_h": kh,
            "kernel_w": kw,
            "stride_h": sh,
            "stride_w": sw,
            "pad_top": top,
            "pad_bottom": bottom,
            "pad_left": left,
            "pad_right": right,
        }

    def max_pool(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        out = self.g.tensors[op.outputs[0]]
        geo = self._pool_geometry(op, where)
        act = str(op.attrs.get("activation", "none") or "none")
        x_nchw = self.value(f"{op.name}/x_nchw")
        self.node(
            "Transpose", [self.data_input(op, 0, where)], x_nchw, f"{op.name}/to_nchw", perm=NCHW
        )
        y_nchw = self.value(f"{op.name}/y_nchw")
        self.node(
            "MaxPool",
            [x_nchw],
            y_nchw,
            f"{op.name}/pool",
            kernel_shape=[geo["kernel_h"], geo["kernel_w"]],
            strides=[geo["stride_h"], geo["stride_w"]],
            pads=[geo["pad_top"], geo["pad_left"], geo["pad_bottom"], geo["pad_right"]],
        )
        if x.dtype in _INT_RANGE:
            lo, hi = reference.activation_range(act, out.quant, out.dtype)
            if (lo, hi) == _INT_RANGE[out.dtype]:
                self.node("Transpose", [y_nchw], out.name, f"{op.name}/to_nhwc", perm=NHWC)
                return
            y = self.value(f"{op.name}/y")
            self.node("Transpose", [y_nchw], y, f"{op.name}/to_nhwc", perm=NHWC)
            lo_name = self.const(op, "clip_min", np.asarray(lo, _NP[out.dtype]))
            hi_name = self.const(op, "clip_max", np.asarray(hi, _NP[out.dtype]))
            self.node("Clip", [y, lo_name, hi_name], out.name, f"{op.name}/clip")
            return
        if x.dtype != "float32":
            raise BnnError(f"{where}: MaxPool2D of {x.dtype} is not supported")
        if act in ("none", "linear"):
            self.node("Transpose", [y_nchw], out.name, f"{op.name}/to_nhwc", perm=NHWC)
            return
        y = self.value(f"{op.name}/y")
        self.node("Transpose", [y_nchw], y, f"{op.name}/to_nhwc", perm=NHWC)
        self._float_activation(op, y, out.name, act, where)

    def average_pool(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        out = self.g.tensors[op.outputs[0]]
        if x.dtype not in _INT_RANGE or out.dtype != x.dtype:
            raise BnnError(
                f"{where}: AveragePool2D of {x.dtype} has no exact ONNX form here (int8/uint8 only)"
            )
        geo = self._pool_geometry(op, where)
        so, zo = _scalar_quant(out, where)
        self.custom(
            "AveragePool2D",
            [
                self.data_input(op, 0, where),
                self.const(op, "y_scale", np.asarray([so], np.float32)),
            ],
            out.name,
            op.name,
            activation=str(op.attrs.get("activation", "none") or "none"),
            y_zero_point=zo,
            **geo,
        )

    def mean(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        out = self.g.tensors[op.outputs[0]]
        if x.dtype not in _INT_RANGE or out.dtype != x.dtype:
            raise BnnError(f"{where}: Mean of {x.dtype} has no exact ONNX form here (int8 only)")
        axes = np.asarray([int(a) for a in op.attrs.get("axes", (1, 2))], np.int64)
        sx, zx = _scalar_quant(x, where)
        so, zo = _scalar_quant(out, where)
        self.custom(
            "Mean",
            [
                self.data_input(op, 0, where),
                self.const(op, "axes", axes),
                self.const(op, "scales", np.asarray([sx, so], np.float32)),
            ],
            out.name,
            op.name,
            keepdims=int(bool(op.attrs.get("keepdims", False))),
            x_zero_point=zx,
            y_zero_point=zo,
        )

    def reshape(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        out = self.g.tensors[op.outputs[0]]
        if x.dtype == "binary" or out.dtype == "binary":
            raise BnnError(f"{where}: reshaping a binary (packed) tensor is not supported")
        shape = self.const(op, "shape", np.asarray(out.shape, np.int64))
        self.node("Reshape", [self.data_input(op, 0, where), shape], out.name, op.name)

    def pad(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        out = self.g.tensors[op.outputs[0]]
        top, bottom, left, right = (int(p) for p in op.attrs["pads"])
        if x.dtype in _INT_RANGE:
            value = np.asarray(_scalar_quant(out, where)[1], _NP[x.dtype])
        elif x.dtype == "float32":
            value = np.asarray(0.0, np.float32)
        else:
            raise BnnError(f"{where}: Pad of {x.dtype} is not supported")
        pads = np.asarray([0, top, left, 0, 0, bottom, right, 0], np.int64)
        self.node(
            "Pad",
            [
                self.data_input(op, 0, where),
                self.const(op, "pads", pads),
                self.const(op, "value", value),
            ],
            out.name,
            op.name,
            mode="constant",
        )

    def quantize(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        out = self.g.tensors[op.outputs[0]]
        if out.dtype not in _INT_RANGE:
            raise BnnError(f"{where}: Quantize into {out.dtype} is not supported")
        xin = self.data_input(op, 0, where)
        if transform_of(op) == "affine":
            if x.dtype not in _INT_RANGE or out.dtype != "int8":
                raise BnnError(f"{where}: affine Quantize of {x.dtype} into {out.dtype}")
            self._expect_inputs(op, 4, where)
            lo, hi = self._clamp(op, where)
            self.custom(
                "QuantizeAffine",
                [
                    xin,
                    self.ir_const(op, 1, where, "int32"),
                    self.ir_const(op, 2, where, "int8"),
                    self.ir_const(op, 3, where, "int64"),
                ],
                out.name,
                op.name,
                x_zero_point=_scalar_quant(x, where)[1],
                clamp_lo=lo,
                clamp_hi=hi,
            )
            return
        so, zo = _scalar_quant(out, where)
        lo, hi = (int(v) for v in op.attrs.get("qrange", _INT_RANGE[out.dtype]))
        rounding = str(op.attrs.get("rounding", "half_away") or "half_away")
        if rounding not in ("half_away", "half_even"):
            raise BnnError(f"{where}: rounding {rounding!r} is not half_away or half_even")
        if x.dtype == "float32" and rounding == "half_even":
            scale = self.const(op, "y_scale", np.asarray(so, np.float32))
            zp = self.const(op, "y_zero_point", np.asarray(zo, _NP[out.dtype]))
            if (lo, hi) == _INT_RANGE[out.dtype]:
                self.node("QuantizeLinear", [xin, scale, zp], out.name, op.name)
                return
            q = self.value(f"{op.name}/q")
            self.node("QuantizeLinear", [xin, scale, zp], q, op.name)
            lo_name = self.const(op, "clip_min", np.asarray(lo, _NP[out.dtype]))
            hi_name = self.const(op, "clip_max", np.asarray(hi, _NP[out.dtype]))
            self.node("Clip", [q, lo_name, hi_name], out.name, f"{op.name}/clip")
            return
        if x.dtype == "float32":
            sx, zx = 0.0, 0
        elif x.dtype in _INT_RANGE:
            sx, zx = _scalar_quant(x, where)
        else:
            raise BnnError(f"{where}: Quantize of {x.dtype} is not supported")
        self.custom(
            "Quantize",
            [
                xin,
                self.const(op, "y_zero_point", np.asarray([zo], _NP[out.dtype])),
                self.const(op, "scales", np.asarray([sx, so], np.float32)),
            ],
            out.name,
            op.name,
            x_zero_point=zx,
            rounding=rounding,
            clamp_lo=lo,
            clamp_hi=hi,
        )

    def dequantize(self, op: Op, where: str) -> None:
        x = self.g.tensors[op.inputs[0]]
        out = self.g.tensors[op.outputs[0]]
        if x.dtype not in _INT_RANGE or out.dtype != "float32":
            raise BnnError(f"{where}: Dequantize of {x.dtype} into {out.dtype} is not supported")
        s, zp = _scalar_quant(x, where)
        self.node(
            "DequantizeLinear",
            [
                self.data_input(op, 0, where),
                self.const(op, "x_scale", np.asarray(s, np.float32)),
                self.const(op, "x_zero_point", np.asarray(zp, _NP[x.dtype])),
            ],
            out.name,
            op.name,
        )

    # -- the whole model ----------------------------------------------------------------
    def build(self) -> Any:
        from onnx import helper, numpy_helper

        g = self.g
        handlers = {
            "Conv2D": self.conv,
            "DepthwiseConv2D": self.conv,
            "Dense": self.dense,
            "BinaryConv2D": self.binary_conv,
            "Bitpack": self.bitpack,
            "Add": self.add,
            "MaxPool2D": self.max_pool,
            "AveragePool2D": self.average_pool,
            "Mean": self.mean,
            "Reshape": self.reshape,
            "Pad": self.pad,
            "Quantize": self.quantize,
            "Dequantize": self.dequantize,
        }
        for op in g.ops:
            where = _where(g, op)
            handler = handlers.get(op.type)
            if handler is None:
                raise BnnError(
                    f"{where}: op type {op.type} has no ONNX form; supported: {', '.join(handlers)}"
                )
            if len(op.outputs) != 1:
                raise BnnError(f"{where}: ops with {len(op.outputs)} outputs are not supported")
            try:
                handler(op, where)
            except KeyError as e:
                raise BnnError(f"{where}: missing attribute or tensor {e}") from None
            except (ValueError, TypeError, IndexError, NotImplementedError) as e:
                raise BnnError(f"{where}: {e}") from None

        def info(name: str) -> Any:
            t = g.tensors[name]
            return helper.make_tensor_value_info(name, onnx_elem_type(t.dtype), onnx_shape(t))

        boundary = set(g.inputs) | set(g.outputs)
        value_info = [
            info(n)
            for n, t in g.tensors.items()
            if not t.is_const and n not in boundary and g.producer(n) is not None
        ]
        initializers = [numpy_helper.from_array(arr, name) for name, arr in self.inits.items()]
        graph = helper.make_graph(
            self.nodes,
            g.name or "bnncube",
            [info(n) for n in g.inputs],
            [info(n) for n in g.outputs],
            initializers,
            value_info=value_info,
        )
        model = helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid("", OPSET),
                helper.make_opsetid(DOMAIN, DOMAIN_VERSION),
            ],
            producer_name=PRODUCER,
            producer_version=_version(),
            ir_version=IR_VERSION,
            doc_string=(
                "bnncube deployed graph; ai.bnncube ops: docs/onnx-ops.md; IR metadata: "
                f"metadata_props[{METADATA_KEY!r}]"
            ),
        )
        text = json.dumps(graph_metadata(g), allow_nan=False, separators=(",", ":"))
        helper.set_model_props(model, {METADATA_KEY: text})
        return model


def _version() -> str:
    import bnncube

    return str(getattr(bnncube, "__version__", ""))


def export_onnx(graph: Graph) -> Any:
    """The ONNX model (``onnx.ModelProto``) of a deployed IR graph.

    Raises :class:`BnnError` naming the op for anything the ONNX form does not cover (float MAC
    ops, transforms or dtypes outside docs/onnx-ops.md).
    """
    graph = unfused(graph)  # a generated graph's fused ops: the model's own ops again
    try:
        graph.validate()
    except ValueError as e:
        raise BnnError(f"ONNX export of {graph.source or graph.name}: invalid graph ({e})") from e
    return _Exporter(graph).build()


def save_onnx(graph: Graph, path: str | Path) -> Path:
    """Export ``graph`` and write it to ``path`` atomically (whole file or nothing)."""
    from bnncube.fsutil import atomic_output_file

    model = export_onnx(graph)
    data = model.SerializeToString()
    path = Path(path)
    with atomic_output_file(path) as tmp:
        tmp.write_bytes(data)
    return path
