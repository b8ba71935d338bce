"""ONNX front end: bnncube's ONNX form (docs/onnx-ops.md) -> the deployed IR graph.

A model written by :func:`bnncube.converters.onnx_export.export_onnx` carries the IR it came
from as JSON in ``metadata_props`` (:data:`~bnncube.converters.onnx_export.METADATA_KEY`): op
names and attributes, tensor shapes, dtypes and quantization; the constants are the
initializers of the same names.  :func:`load_onnx` rebuilds that IR, then exports it again and
checks that the result is the model's own graph (same nodes, attributes and initializers), so a
graph edited after export, or metadata that does not belong to it, is refused instead of
silently trusted.

A model without that metadata (not written by bnncube, or stripped) is read from its nodes when
it uses only bnncube's op set, in the patterns bnncube writes; every int8 tensor then needs its
scale stated in the graph itself (QuantizeLinear, DequantizeLinear, or the attributes of the
``ai.bnncube`` whole-op nodes).  The int8 convolution and dense patterns (``ConvInteger``,
``MatMulInteger``) keep their weight scales only in the metadata, so such models are refused
with a message that says so.

Every problem is a :class:`~bnncube.errors.BnnError` with a one-line message naming the file and,
where relevant, the node.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.converters.binary_reference import unpack
from bnncube.converters.ir import DTYPES, Graph, Op, Quant, Tensor
from bnncube.converters.onnx_export import (
    FORMAT_VERSION,
    METADATA_KEY,
    NCHW,
    NHWC,
    const_role,
    decode_value,
    export_onnx,
)
from bnncube.converters.onnx_ops import DOMAIN, DOMAIN_VERSION, OP_SPECS
from bnncube.errors import BnnError

# the standard ONNX ops bnncube's form uses
STANDARD_OPS = (
    "ConvInteger",
    "MatMulInteger",
    "Transpose",
    "Add",
    "Reshape",
    "Pad",
    "MaxPool",
    "Clip",
    "Relu",
    "QuantizeLinear",
    "DequantizeLinear",
)
CUSTOM_OPS = tuple(OP_SPECS)

_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_ONNX_TO_IR: dict[int, str] = {}  # filled lazily (needs onnx)


def supported_ops() -> str:
    """The op set, as error messages list it."""
    return f"{', '.join(STANDARD_OPS)} and {DOMAIN} {', '.join(CUSTOM_OPS)}"


# --------------------------------------------------------------------------------------------
# reading the file
# --------------------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(buf):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return None
    return None


def _scan_top_level(buf: bytes) -> str:
    """Classify a buffer that protobuf could not parse: ``"truncated"`` or ``"not onnx"``.

    Walks the top-level fields of ``ModelProto``: an unknown field number or a wrong wire type
    means the bytes are not an ONNX model; a length or varint that runs past the end means the
    file was cut short.
    """
    import onnx

    fields = {f.number: f for f in onnx.ModelProto.DESCRIPTOR.fields}
    pos = 0
    while pos < len(buf):
        tag = _varint(buf, pos)
        if tag is None:
            return "truncated"
        key, pos = tag
        number, wire = key >> 3, key & 7
        field = fields.get(number)
        if field is None:
            return "not onnx"
        want = 0 if field.type in (field.TYPE_INT64, field.TYPE_INT32) else 2
        if wire != want:
            return "not onnx"
        if wire == 0:
            value = _varint(buf, pos)
            if value is None:
                return "truncated"
            pos = value[1]
        else:
            length = _varint(buf, pos)
            if length is None:
                return "truncated"
            size, pos = length
            if pos + size > len(buf):
                return "truncated"
            pos += size
    return "corrupt"


def _read_model(path: Path, where: str) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.exists():
        raise BnnError(f"{where}: no such file")
    if path.is_dir():
        raise BnnError(f"{where}: is a directory, expected an ONNX model file")
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise BnnError(f"{where}: cannot read ({e.strerror or e})") from e
    if not buf:
        raise BnnError(f"{where}: not an ONNX model (empty file)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(buf)
    except (DecodeError, RuntimeError, ValueError) as e:
        kind = _scan_top_level(buf)
        if kind == "truncated":
            raise BnnError(
                f"{where}: truncated ONNX model ({len(buf)} bytes; a field runs past the end "
                "of the file)"
            ) from None
        if kind == "not onnx":
            raise BnnError(
                f"{where}: not an ONNX model (cannot parse it as onnx.ModelProto)"
            ) from e
        raise BnnError(f"{where}: corrupt ONNX model (cannot parse: {e})") from None
    if not model.HasField("graph"):
        if _scan_top_level(buf) == "not onnx":
            raise BnnError(f"{where}: not an ONNX model (no graph)")
        raise BnnError(f"{where}: not an ONNX model, or truncated (it has no graph)")
    if not model.opset_import:
        raise BnnError(f"{where}: truncated or invalid ONNX model (no opset_import)")
    if model.graph.initializer and any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    ):
        raise BnnError(
            f"{where}: initializers stored as external data are not supported (bnncube writes "
            "them inside the model)"
        )
    return model


def _ir_dtype(elem_type: int) -> str | None:
    from onnx import TensorProto

    if not _ONNX_TO_IR:
        _ONNX_TO_IR.update(
            {
                TensorProto.FLOAT: "float32",
                TensorProto.INT8: "int8",
                TensorProto.UINT8: "uint8",
                TensorProto.INT32: "int32",
                TensorProto.INT64: "int64",
                TensorProto.UINT32: "binary",
            }
        )
    return _ONNX_TO_IR.get(elem_type)


def _node_label(node: Any, index: int) -> str:
    kind = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    return f"node {node.name or f'#{index}'!r} ({kind})"


def _check_op_set(model: Any, where: str, has_metadata: bool) -> None:
    for imp in model.opset_import:
        if imp.domain == DOMAIN and imp.version != DOMAIN_VERSION:
            raise BnnError(
                f"{where}: the model uses {DOMAIN} version {imp.version}; supported: "
                f"{DOMAIN_VERSION}"
            )
    for i, node in enumerate(model.graph.node):
        if node.domain in ("", "ai.onnx"):
            ok = node.op_type in STANDARD_OPS
        else:
            ok = node.domain == DOMAIN and node.op_type in CUSTOM_OPS
        if not ok:
            hint = "" if has_metadata else " (no bnncube metadata: not written by bnncube?)"
            raise BnnError(
                f"{where}: {_node_label(node, i)}: operator is not supported{hint}; "
                f"supported: {supported_ops()}"
            )


def _check_references(model: Any, where: str) -> None:
    g = model.graph
    known = {v.name for v in g.input} | {t.name for t in g.initializer}
    for i, node in enumerate(g.node):
        for name in node.input:
            if name and name not in known:
                raise BnnError(
                    f"{where}: {_node_label(node, i)}: input {name!r} is not a graph input, an "
                    "initializer or an earlier node's output (missing initializer?)"
                )
        known.update(n for n in node.output if n)
    for v in g.output:
        if v.name not in known:
            raise BnnError(f"{where}: graph output {v.name!r} is never produced")


def _initializers(model: Any, where: str) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        try:
            out[t.name] = numpy_helper.to_array(t)
        except Exception as e:  # malformed tensor data: a bad input
            raise BnnError(f"{where}: initializer {t.name!r} is malformed ({e})") from None
    return out


# --------------------------------------------------------------------------------------------
# checks shared by both readers
# --------------------------------------------------------------------------------------------


def _check_quant(graph: Graph, where: str) -> None:
    for t in graph.tensors.values():
        q = t.quant
        if q is None:
            continue
        scale = np.asarray(q.scale, np.float64).reshape(-1)
        zp = np.asarray(q.zero_point).reshape(-1)
        what = f"{where}: tensor {t.name!r}: inconsistent quantization"
        if scale.size == 0 or not np.all(np.isfinite(scale)):
            raise BnnError(f"{what}: scale {scale.tolist()[:4]} is not finite (NaN or Inf)")
        if np.any(scale <= 0):
            raise BnnError(f"{what}: scale {float(scale.min()):g} is not positive")
        if zp.size not in (1, scale.size):
            raise BnnError(f"{what}: {zp.size} zero points for {scale.size} scales")
        if zp.dtype.kind not in "iu":
            raise BnnError(f"{what}: zero points are not integers")
        if t.dtype in _INT_RANGE:
            lo, hi = _INT_RANGE[t.dtype]
            if zp.size and (zp.min() < lo or zp.max() > hi):
                bad = int(zp.min()) if zp.min() < lo else int(zp.max())
                raise BnnError(f"{what}: zero point {bad} is outside {t.dtype} [{lo}, {hi}]")
        if q.axis is not None and not -len(t.shape) <= q.axis < max(len(t.shape), 1):
            raise BnnError(f"{what}: axis {q.axis} for shape {list(t.shape)}")
        if q.axis is not None and scale.size > 1 and t.shape and scale.size != t.shape[q.axis]:
            raise BnnError(
                f"{what}: {scale.size} scales along axis {q.axis} of shape {list(t.shape)}"
            )
    for t in graph.tensors.values():
        if t.data is not None and t.data.dtype.kind == "f" and not np.all(np.isfinite(t.data)):
            raise BnnError(f"{where}: constant {t.name!r} holds NaN or Inf values")


# --------------------------------------------------------------------------------------------
# models with bnncube metadata
# --------------------------------------------------------------------------------------------


def _metadata(model: Any, where: str) -> dict[str, Any] | None:
    props = {p.key: p.value for p in model.metadata_props}
    text = props.get(METADATA_KEY)
    if text is None:
        return None
    if isinstance(text, bytes):  # protobuf returns a string field that is not UTF-8 as bytes
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BnnError(
                f"{where}: bnncube metadata {METADATA_KEY!r} is not UTF-8 text"
            ) from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise BnnError(f"{where}: bnncube metadata {METADATA_KEY!r} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != "bnncube-ir":
        raise BnnError(f"{where}: metadata {METADATA_KEY!r} is not bnncube IR metadata")
    if meta.get("version") != FORMAT_VERSION:
        raise BnnError(
            f"{where}: bnncube metadata version {meta.get('version')!r}; supported: "
            f"{FORMAT_VERSION}"
        )
    return meta


def _decode_quant(q: Any) -> Quant | None:
    if q is None:
        return None
    scale = np.asarray(decode_value(q["scale"]))
    zp = np.asarray(decode_value(q["zero_point"]))
    axis = q.get("axis")
    return Quant(scale, zp, None if axis is None else int(axis), str(q.get("source", "")))


_NP = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int32": np.int32}
_NP["int64"] = np.int64


def from_onnx_layout(role: str, arr: np.ndarray, tensor: Tensor) -> np.ndarray:
    """Inverse of :func:`~bnncube.converters.onnx_export.to_onnx_layout` (IR layout, dtype)."""
    if role == "conv_filter":
        data = arr.transpose(0, 2, 3, 1)
    elif role == "depthwise_filter":
        data = arr.transpose(1, 2, 3, 0)
    elif role == "dense_weights":
        data = arr.T
    elif role == "binary_filter":
        if arr.dtype != np.uint32 or arr.ndim != 4 or not tensor.shape:
            raise ValueError(f"packed binary filters expected, got {arr.dtype} {list(arr.shape)}")
        data = unpack(arr, tensor.shape[-1])
    else:
        data = arr
    if tensor.dtype == "binary":
        want = np.dtype(np.int8)
    else:
        want = np.dtype(_NP[tensor.dtype])
    if data.dtype != want:
        raise ValueError(f"element type {data.dtype}, expected {want}")
    if tuple(data.shape) != tensor.shape:
        raise ValueError(f"shape {list(data.shape)} (IR layout), expected {list(tensor.shape)}")
    return np.ascontiguousarray(data)


def _from_metadata(model: Any, meta: dict[str, Any], where: str) -> Graph:
    inits = _initializers(model, where)
    try:
        graph = Graph(
            str(meta["name"]), source=str(meta["source"]), source_format=str(meta["source_format"])
        )
        const_names = []
        for t in meta["tensors"]:
            dtype = str(t["dtype"])
            if dtype not in DTYPES:
                raise ValueError(f"tensor {t['name']!r}: unknown dtype {dtype!r}")
            tensor = Tensor(str(t["name"]), tuple(int(d) for d in t["shape"]), dtype)
            tensor.quant = _decode_quant(t["quant"])
            graph.add_tensor(tensor)
            if t["const"]:
                const_names.append(tensor.name)
        for o in meta["ops"]:
            attrs = {str(k): decode_value(v) for k, v in o["attrs"].items()}
            graph.add_op(
                Op(str(o["name"]), str(o["type"]), list(o["inputs"]), list(o["outputs"]), attrs)
            )
        graph.inputs = [str(n) for n in meta["inputs"]]
        graph.outputs = [str(n) for n in meta["outputs"]]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BnnError(f"{where}: malformed bnncube metadata ({type(e).__name__}: {e})") from None

    for name in const_names:
        tensor = graph.tensors[name]
        role, user = "plain", None
        for op in graph.ops:
            if name in op.inputs:
                user = op
                role = const_role(op, op.inputs.index(name))
                break
        if name not in inits:
            used = f" (input of op {user.name!r})" if user is not None else ""
            raise BnnError(f"{where}: missing initializer {name!r}{used}")
        try:
            tensor.data = from_onnx_layout(role, inits[name], tensor)
        except ValueError as e:
            raise BnnError(
                f"{where}: initializer {name!r} does not match the metadata ({e})"
            ) from None
    try:
        graph.validate()
    except ValueError as e:
        raise BnnError(f"{where}: invalid graph in the bnncube metadata ({e})") from e
    _check_quant(graph, where)
    _check_same_as_export(model, graph, where)
    return graph


def _attr_values(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = list(v) if isinstance(v, (list, tuple)) else v
    return out


def _check_same_as_export(model: Any, graph: Graph, where: str) -> None:
    """Export ``graph`` again and compare with ``model``: they must be the same graph."""
    from onnx import numpy_helper

    try:
        again = export_onnx(graph)
    except BnnError as e:
        raise BnnError(
            f"{where}: the bnncube metadata describes a graph bnncube cannot write ({e})"
        ) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, NotImplementedError) as e:
        raise BnnError(f"{where}: malformed bnncube metadata ({type(e).__name__}: {e})") from None
    mine, theirs = model.graph, again.graph

    def mismatch(detail: str) -> BnnError:
        return BnnError(f"{where}: the graph does not match its bnncube metadata ({detail})")

    if [v.name for v in mine.input] != [v.name for v in theirs.input]:
        raise mismatch(f"graph inputs {[v.name for v in mine.input]}")
    if [v.name for v in mine.output] != [v.name for v in theirs.output]:
        raise mismatch(f"graph outputs {[v.name for v in mine.output]}")
    boundary = list(mine.input) + list(mine.output)
    for a, b in zip(boundary, list(theirs.input) + list(theirs.output), strict=True):
        if a.type != b.type:
            raise mismatch(f"type of graph input/output {a.name!r}")
    if len(mine.node) != len(theirs.node):
        raise mismatch(f"{len(mine.node)} nodes, the metadata gives {len(theirs.node)}")
    for i, (a, b) in enumerate(zip(mine.node, theirs.node, strict=True)):
        label = _node_label(a, i)
        if (a.op_type, a.domain or "") != (b.op_type, b.domain or ""):
            raise mismatch(f"{label}: expected {b.op_type}")
        if list(a.input) != list(b.input) or list(a.output) != list(b.output):
            raise mismatch(f"{label}: inputs/outputs differ")
        if _attr_values(a) != _attr_values(b):
            raise mismatch(f"{label}: attributes differ")
    mine_init = {t.name: t for t in mine.initializer}
    theirs_init = {t.name: t for t in theirs.initializer}
    if set(mine_init) != set(theirs_init):
        extra = sorted(set(mine_init) ^ set(theirs_init))[:3]
        raise mismatch(f"initializers {extra}")
    for name, t in theirs_init.items():
        a = numpy_helper.to_array(mine_init[name])
        b = numpy_helper.to_array(t)
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            raise mismatch(f"initializer {name!r} differs from what the metadata gives")


# --------------------------------------------------------------------------------------------
# models without metadata: read the node patterns
# --------------------------------------------------------------------------------------------


class _Patterns:
    """Rebuild IR ops from the node patterns of docs/onnx-ops.md (no metadata)."""

    def __init__(self, model: Any, where: str):
        self.where = where
        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.inits = _initializers(model, where)
        self.types: dict[str, tuple[str | None, tuple[int, ...] | None]] = {}
        for v in list(g.input) + list(g.output) + list(g.value_info):
            tt = v.type.tensor_type
            shape = None
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                shape = tuple(int(d.dim_value) for d in tt.shape.dim)
            self.types[v.name] = (_ir_dtype(tt.elem_type), shape)
        self.outputs = {v.name for v in g.output}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.consumers.setdefault(name, []).append(i)
        self.used: set[int] = set()
        stem = Path(where).stem
        self.graph = Graph(g.name or stem, source=where, source_format="onnx")
        self.quant: dict[str, Quant] = {}
        self.binary_channels: dict[str, int] = {}
        self.clamps: dict[str, tuple[int, tuple[float, float]]] = {}  # MaxPool output -> clip
        self.pad_values: dict[str, tuple[int, int]] = {}  # int8 Pad output -> (node, value)

    # -- helpers --------------------------------------------------------------------------
    def fail(self, index: int, message: str) -> BnnError:
        if index < 0:
            return BnnError(f"{self.where}: graph input: {message}")
        return BnnError(f"{self.where}: {_node_label(self.nodes[index], index)}: {message}")

    def attrs(self, index: int) -> dict[str, Any]:
        return _attr_values(self.nodes[index])

    def follow(self, value: str, op_type: str) -> int | None:
        """The index of the one consumer of ``value`` when it is an ``op_type`` node."""
        users = self.consumers.get(value, [])
        if value in self.outputs or len(users) != 1:
            return None
        node = self.nodes[users[0]]
        return users[0] if node.op_type == op_type else None

    def expect(self, index: int, value: str, *op_types: str) -> int:
        for op_type in op_types:
            found = self.follow(value, op_type)
            if found is not None:
                return found
        raise self.fail(index, f"expected {' or '.join(op_types)} after it (docs/onnx-ops.md)")

    def init(self, index: int, name: str) -> np.ndarray:
        if name not in self.inits:
            raise self.fail(index, f"input {name!r} must be an initializer")
        return self.inits[name]

    def tensor(self, name: str, index: int, dtype: str | None = None) -> Tensor:
        """The IR tensor for ONNX value ``name`` (activation, or an initializer used as data)."""
        if name in self.graph.tensors:
            return self.graph.tensors[name]
        if name in self.inits:
            arr = self.inits[name]
            ir = _ir_dtype_of_array(arr)
            if ir is None:
                raise self.fail(index, f"initializer {name!r} has element type {arr.dtype}")
            return self.graph.add_tensor(Tensor(name, arr.shape, ir, None, arr))
        onnx_dtype, shape = self.types.get(name, (None, None))
        if onnx_dtype is None or shape is None:
            raise self.fail(index, f"value {name!r} has no element type or shape (value_info)")
        if onnx_dtype == "binary":
            channels = self.binary_channels.get(name)
            if channels is None:
                raise self.fail(index, f"binary value {name!r}: its channel count is unknown")
            shape = shape[:-1] + (channels,)
            onnx_dtype = "binary"
        if dtype is not None and onnx_dtype != dtype:
            raise self.fail(index, f"value {name!r} is {onnx_dtype}, expected {dtype}")
        return self.graph.add_tensor(Tensor(name, shape, onnx_dtype))

    def state(self, name: str, scale: float, zero_point: int) -> None:
        """Record a tensor's (per-tensor) quantization as a node states it."""
        if not (math.isfinite(scale) and scale > 0):
            raise BnnError(
                f"{self.where}: tensor {name!r}: inconsistent quantization: scale {scale:g}"
            )
        q = Quant.per_tensor(float(scale), int(zero_point), "onnx")
        old = self.quant.get(name)
        if old is not None and (
            float(old.scale[0]) != q.scale[0] or int(old.zero_point[0]) != q.zero_point[0]
        ):
            raise BnnError(
                f"{self.where}: tensor {name!r}: inconsistent quantization: two nodes state "
                f"scale/zero point {float(old.scale[0]):g}/{int(old.zero_point[0])} and "
                f"{float(q.scale[0]):g}/{int(q.zero_point[0])}"
            )
        self.quant[name] = q

    def scales(self, index: int, name: str, count: int) -> list[float]:
        arr = self.init(index, name).reshape(-1)
        if arr.dtype != np.float32 or arr.size != count:
            raise self.fail(index, f"scales {name!r} must be float32 [{count}]")
        return [float(v) for v in arr]

    def const(self, index: int, name: str, dtype: str) -> str:
        arr = self.init(index, name)
        if np.dtype(_NP.get(dtype, np.uint32)) != arr.dtype:
            raise self.fail(index, f"initializer {name!r} is {arr.dtype}, expected {dtype}")
        if name not in self.graph.tensors:
            self.graph.add_tensor(Tensor(name, arr.shape, dtype, None, arr))
        return name

    def add_op(
        self,
        first: int,
        last: int,
        op_type: str,
        inputs: list[str],
        out: str,
        attrs: dict[str, Any],
    ) -> None:
        name = self.nodes[last].name or self.nodes[first].name or out
        self.graph.add_op(Op(name, op_type, inputs, [out], attrs))

    # -- patterns -------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.model.graph
        for v in g.input:
            if _ir_dtype(v.type.tensor_type.elem_type) not in (None, "binary"):
                self.tensor(v.name, -1)
        for i, node in enumerate(self.nodes):
            if i in self.used:
                continue
            self.used.add(i)
            kind = node.op_type
            if node.domain == DOMAIN:
                self.custom(i, kind)
            elif kind in ("ConvInteger", "MatMulInteger") or (
                kind in ("Reshape", "Transpose")
                and (
                    self.follow(node.output[0], "MatMulInteger") is not None
                    or self.follow(node.output[0], "ConvInteger") is not None
                )
            ):
                mac = i
                if kind in ("Reshape", "Transpose"):
                    mac = self.consumers[node.output[0]][0]
                raise self.fail(
                    mac,
                    "the int8 weight scales of this convolution/dense are kept in bnncube's "
                    f"metadata (metadata_props {METADATA_KEY!r}), which this model lacks",
                )
            elif kind == "Transpose":
                self.transpose(i)
            elif kind == "Reshape":
                self.reshape(i)
            elif kind == "Pad":
                self.pad(i)
            elif kind == "QuantizeLinear":
                self.quantize_linear(i)
            elif kind == "DequantizeLinear":
                self.dequantize_linear(i)
            elif kind == "Add":
                self.float_add(i)
            else:
                raise self.fail(
                    i, "not at the start of a pattern bnncube writes (docs/onnx-ops.md)"
                )
        self.graph.inputs = [v.name for v in g.input]
        self.graph.outputs = [v.name for v in g.output]
        self.share_quant()
        for name, t in self.graph.tensors.items():
            if name in self.quant:
                t.quant = self.quant[name]
        for op in self.graph.ops:
            if op.outputs[0] in self.clamps:
                last, clamp = self.clamps[op.outputs[0]]
                op.attrs["activation"] = self.activation_of(
                    last, clamp, self.graph.tensors[op.inputs[0]]
                )
            if op.outputs[0] in self.pad_values:
                index, value = self.pad_values[op.outputs[0]]
                q = self.quant.get(op.outputs[0])
                if q is not None and int(q.zero_point[0]) != value:
                    raise self.fail(
                        index, f"pad value {value} is not the zero point {int(q.zero_point[0])}"
                    )
        for t in self.graph.tensors.values():
            if t.dtype in _INT_RANGE and t.quant is None and not t.is_const:
                raise BnnError(
                    f"{self.where}: tensor {t.name!r} ({t.dtype}) has no quantization scale in "
                    f"the graph; bnncube keeps it in metadata_props {METADATA_KEY!r}, which this "
                    "model lacks (not written by bnncube?)"
                )
        try:
            self.graph.validate()
        except ValueError as e:
            raise BnnError(f"{self.where}: invalid graph ({e})") from e
        _check_quant(self.graph, self.where)
        return self.graph

    def share_quant(self) -> None:
        """Reshape, Pad and MaxPool2D keep their input's quantization: copy it either way."""
        changed = True
        while changed:
            changed = False
            for op in self.graph.ops:
                if op.type not in ("Reshape", "Pad", "MaxPool2D"):
                    continue
                x, y = op.inputs[0], op.outputs[0]
                if self.graph.tensors[x].dtype not in _INT_RANGE:
                    continue
                for src, dst in ((x, y), (y, x)):
                    if src in self.quant and dst not in self.quant:
                        q = self.quant[src]
                        self.state(dst, float(q.scale[0]), int(q.zero_point[0]))
                        changed = True

    def clamp_tail(self, index: int, value: str) -> tuple[str, tuple[float, float] | None, int]:
        """An optional Clip/Relu after ``value``: (final value, (lo, hi) or None, last node)."""
        for kind in ("Clip", "Relu"):
            nxt = self.follow(value, kind)
            if nxt is None:
                continue
            self.used.add(nxt)
            node = self.nodes[nxt]
            if kind == "Relu":
                return node.output[0], (0.0, math.inf), nxt
            lo = float(self.init(nxt, node.input[1]).reshape(-1)[0])
            hi = float(self.init(nxt, node.input[2]).reshape(-1)[0])
            return node.output[0], (lo, hi), nxt
        return value, None, index

    def transpose(self, i: int) -> None:
        node = self.nodes[i]
        if self.attrs(i).get("perm") != NCHW:
            raise self.fail(i, "only the NHWC -> NCHW transpose in front of MaxPool is read here")
        pool = self.expect(i, node.output[0], "MaxPool")
        self.used.add(pool)
        a = self.attrs(pool)
        back = self.expect(pool, self.nodes[pool].output[0], "Transpose")
        self.used.add(back)
        if self.attrs(back).get("perm") != NHWC:
            raise self.fail(back, "expected the NCHW -> NHWC transpose")
        x = self.tensor(node.input[0], i)
        out, clamp, last = self.clamp_tail(back, self.nodes[back].output[0])
        kh, kw = (int(k) for k in a["kernel_shape"])
        pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
        attrs: dict[str, Any] = {
            "pool": (kh, kw),
            "strides": tuple(int(s) for s in a.get("strides", [1, 1])),
            "pads": [pads[0], pads[2], pads[1], pads[3]],
            "activation": "none",
        }
        y = self.tensor(out, last, x.dtype)
        if clamp is not None:
            self.clamps[out] = (last, clamp)
        self.add_op(i, last, "MaxPool2D", [x.name], y.name, attrs)

    def activation_of(self, index: int, clamp: tuple[float, float], x: Tensor) -> str:
        lo, hi = clamp
        if x.dtype == "float32":
            if (lo, hi) == (0.0, math.inf):
                return "relu"
            if (lo, hi) == (0.0, 6.0):
                return "relu6"
            raise self.fail(index, f"clip to [{lo:g}, {hi:g}] is not relu or relu6")
        from bnncube.converters.reference import activation_range

        q = self.quant.get(x.name)
        if q is None:
            raise self.fail(index, f"the clip range needs the scale of {x.name!r}")
        for act in ("relu", "relu6"):
            if activation_range(act, q, x.dtype) == (int(lo), int(hi)):
                return act
        raise self.fail(index, f"clip to [{lo:g}, {hi:g}] is not a fused relu or relu6")

    def reshape(self, i: int) -> None:
        node = self.nodes[i]
        x = self.tensor(node.input[0], i)
        self.init(i, node.input[1])
        y = self.tensor(node.output[0], i, x.dtype)
        self.add_op(i, i, "Reshape", [x.name], y.name, {})

    def pad(self, i: int) -> None:
        node = self.nodes[i]
        if self.attrs(i).get("mode", b"constant") not in (b"constant", "constant"):
            raise self.fail(i, "only constant padding is read")
        p = self.init(i, node.input[1]).astype(np.int64).reshape(-1)
        if p.size != 8 or p[0] or p[3] or p[4] or p[7] or (p < 0).any():
            raise self.fail(i, f"only H/W padding of NHWC tensors is read (pads {p.tolist()})")
        x = self.tensor(node.input[0], i)
        value = self.init(i, node.input[2]).reshape(-1)[0] if len(node.input) > 2 else 0
        y = self.tensor(node.output[0], i, x.dtype)
        self.add_op(
            i, i, "Pad", [x.name], y.name, {"pads": [int(p[1]), int(p[5]), int(p[2]), int(p[6])]}
        )
        if x.dtype in _INT_RANGE:
            self.pad_values[y.name] = (i, int(value))
        elif float(value) != 0.0:
            raise self.fail(i, f"float padding with {value}, only 0 is read")

    def quantize_linear(self, i: int) -> None:
        node = self.nodes[i]
        x = self.tensor(node.input[0], i, "float32")
        scale = float(np.float32(self.init(i, node.input[1]).reshape(-1)[0]))
        zp_arr = self.init(i, node.input[2])
        out, clamp, last = self.clamp_tail(i, node.output[0])
        y = self.tensor(out, last)
        attrs: dict[str, Any] = {"rounding": "half_even"}
        if clamp is not None:
            attrs["qrange"] = (int(clamp[0]), int(clamp[1]))
        self.add_op(i, last, "Quantize", [x.name], y.name, attrs)
        self.state(y.name, scale, int(zp_arr.reshape(-1)[0]))

    def dequantize_linear(self, i: int) -> None:
        node = self.nodes[i]
        x = self.tensor(node.input[0], i)
        scale = float(self.init(i, node.input[1]).reshape(-1)[0])
        self.state(x.name, scale, int(self.init(i, node.input[2]).reshape(-1)[0]))
        y = self.tensor(node.output[0], i, "float32")
        self.add_op(i, i, "Dequantize", [x.name], y.name, {})

    def float_add(self, i: int) -> None:
        node = self.nodes[i]
        a = self.tensor(node.input[0], i, "float32")
        b = self.tensor(node.input[1], i, "float32")
        out, clamp, last = self.clamp_tail(i, node.output[0])
        y = self.tensor(out, last, "float32")
        attrs = {"activation": "none"}
        if clamp is not None:
            attrs["activation"] = self.activation_of(last, clamp, a)
        self.add_op(i, last, "Add", [a.name, b.name], y.name, attrs)

    def custom(self, i: int, kind: str) -> None:
        node = self.nodes[i]
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.attrs(i).items()}
        missing = [name for name, _ in OP_SPECS[kind].attrs if name not in a]
        if missing:
            raise self.fail(i, f"missing attributes {missing}")
        ins, out = list(node.input), node.output[0]
        if kind == "Bitpack":
            x = self.tensor(ins[0], i)
            if x.dtype in _INT_RANGE:
                q = self.quant.get(x.name)
                if q is not None and int(q.zero_point[0]) != int(a["zero_point"]):
                    raise self.fail(i, f"zero_point {a['zero_point']} differs from {x.name!r}'s")
            self.binary_channels[out] = x.shape[-1]
            y = self.tensor(out, i, "binary")
            self.add_op(i, i, "Bitpack", [x.name], y.name, {})
        elif kind == "BinaryConv2D":
            self.binary_conv(i, a)
        elif kind == "Add":
            x0, x1 = self.tensor(ins[0], i), self.tensor(ins[1], i)
            s_a, s_b, s_y = self.scales(i, ins[2], 3)
            self.state(x0.name, s_a, a["a_zero_point"])
            self.state(x1.name, s_b, a["b_zero_point"])
            y = self.tensor(out, i, x0.dtype)
            self.state(y.name, s_y, a["y_zero_point"])
            self.add_op(i, i, "Add", [x0.name, x1.name], y.name, {"activation": a["activation"]})
        elif kind == "AddAffine":
            x0, x1 = self.tensor(ins[0], i), self.tensor(ins[1], i)
            consts = [
                self.const(i, ins[2], "int32"),
                self.const(i, ins[3], "int8"),
                self.const(i, ins[4], "int64"),
            ]
            y = self.tensor(out, i, "int8")
            attrs = {"output_transform": "affine", "clamp": (a["clamp_lo"], a["clamp_hi"])}
            self.add_op(i, i, "Add", [x0.name, x1.name] + consts, y.name, attrs)
        elif kind == "AveragePool2D":
            x = self.tensor(ins[0], i)
            (s_y,) = self.scales(i, ins[1], 1)
            self.state(x.name, s_y, a["y_zero_point"])
            y = self.tensor(out, i, x.dtype)
            self.state(y.name, s_y, a["y_zero_point"])
            attrs = {
                "pool": (a["kernel_h"], a["kernel_w"]),
                "strides": (a["stride_h"], a["stride_w"]),
                "pads": [a["pad_top"], a["pad_bottom"], a["pad_left"], a["pad_right"]],
                "activation": a["activation"],
            }
            self.add_op(i, i, "AveragePool2D", [x.name], y.name, attrs)
        elif kind == "Mean":
            x = self.tensor(ins[0], i)
            axes = tuple(sorted(int(v) for v in self.init(i, ins[1]).reshape(-1)))
            s_x, s_y = self.scales(i, ins[2], 2)
            self.state(x.name, s_x, a["x_zero_point"])
            y = self.tensor(out, i, x.dtype)
            self.state(y.name, s_y, a["y_zero_point"])
            self.add_op(
                i, i, "Mean", [x.name], y.name, {"axes": axes, "keepdims": bool(a["keepdims"])}
            )
        elif kind == "Quantize":
            x = self.tensor(ins[0], i)
            zp = self.init(i, ins[1])
            s_x, s_y = self.scales(i, ins[2], 2)
            y = self.tensor(out, i)
            attrs = {"qrange": (a["clamp_lo"], a["clamp_hi"])}
            if x.dtype == "float32":
                attrs["rounding"] = a["rounding"]
            else:
                self.state(x.name, s_x, a["x_zero_point"])
            self.state(y.name, s_y, int(zp.reshape(-1)[0]))
            self.add_op(i, i, "Quantize", [x.name], y.name, attrs)
        elif kind == "QuantizeAffine":
            x = self.tensor(ins[0], i)
            consts = [
                self.const(i, ins[1], "int32"),
                self.const(i, ins[2], "int8"),
                self.const(i, ins[3], "int64"),
            ]
            y = self.tensor(out, i, "int8")
            attrs = {"output_transform": "affine", "clamp": (a["clamp_lo"], a["clamp_hi"])}
            self.add_op(i, i, "Quantize", [x.name] + consts, y.name, attrs)
        else:
            raise self.fail(i, "not at the start of a pattern bnncube writes (docs/onnx-ops.md)")

    def binary_conv(self, i: int, a: dict[str, Any]) -> None:
        node = self.nodes[i]
        channels = int(a["channels"])
        self.binary_channels.setdefault(node.input[0], channels)
        x = self.tensor(node.input[0], i, "binary")
        if x.shape[-1] != channels:
            raise self.fail(i, f"channels={channels}, but {x.name!r} has {x.shape[-1]}")
        packed = self.init(i, node.input[1])
        if packed.dtype != np.uint32 or packed.ndim != 4:
            raise self.fail(i, "the filters must be a uint32 [O, KH, KW, words] initializer")
        w_name = node.input[1]
        if w_name not in self.graph.tensors:
            w = Tensor(w_name, packed.shape[:3] + (channels,), "binary")
            try:
                w.data = from_onnx_layout("binary_filter", packed, w)
            except ValueError as e:
                raise self.fail(i, f"filters {w_name!r}: {e}") from None
            self.graph.add_tensor(w)
        acc = node.output[0]
        nxt = None
        for kind in ("RequantizeAffine", "RequantizeFloat", "Threshold"):
            nxt = self.follow(acc, kind)
            if nxt is not None:
                break
        if nxt is None:
            raise self.fail(i, "expected RequantizeAffine, RequantizeFloat or Threshold after it")
        self.used.add(nxt)
        t_node = self.nodes[nxt]
        t_attrs = {
            k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.attrs(nxt).items()
        }
        t_in = list(t_node.input)
        attrs: dict[str, Any] = {
            "strides": (int(a["stride_h"]), int(a["stride_w"])),
            "pads": [
                int(a["pad_top"]),
                int(a["pad_bottom"]),
                int(a["pad_left"]),
                int(a["pad_right"]),
            ],
            "pad_value": int(a["pad_value"]),
        }
        out = t_node.output[0]
        if t_node.op_type == "RequantizeAffine":
            consts = [
                self.const(nxt, t_in[1], "int32"),
                self.const(nxt, t_in[2], "int8"),
                self.const(nxt, t_in[3], "int64"),
            ]
            attrs["output_transform"] = "affine"
            attrs["clamp"] = (int(t_attrs["clamp_lo"]), int(t_attrs["clamp_hi"]))
            y = self.tensor(out, nxt, "int8")
        elif t_node.op_type == "RequantizeFloat":
            consts = [self.const(nxt, t_in[1], "float32"), self.const(nxt, t_in[2], "float32")]
            attrs["output_transform"] = "float"
            attrs["activation"] = str(t_attrs.get("activation", "none"))
            y = self.tensor(out, nxt, "float32")
        else:
            consts = [self.const(nxt, t_in[1], "int32"), self.const(nxt, t_in[2], "int8")]
            attrs["output_transform"] = "threshold"
            self.binary_channels[out] = int(packed.shape[0])
            y = self.tensor(out, nxt, "binary")
        self.add_op(i, nxt, "BinaryConv2D", [x.name, w_name] + consts, y.name, attrs)


def _ir_dtype_of_array(arr: np.ndarray) -> str | None:
    for name, np_type in _NP.items():
        if arr.dtype == np.dtype(np_type):
            return name
    return None


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def load_onnx(path: str | Path) -> Graph:
    """Read bnncube's ONNX form (``.onnx``) back into the deployed IR graph.

    Raises :class:`BnnError` for a missing file, a file that is not ONNX or is truncated, an
    operator outside bnncube's op set, a missing initializer, inconsistent quantization, metadata
    that does not match the graph, or (without metadata) a graph whose quantization it cannot
    rebuild.
    """
    p = Path(path)
    where = str(path)
    model = _read_model(p, where)
    meta = _metadata(model, where)
    _check_op_set(model, where, meta is not None)
    _check_references(model, where)
    if meta is not None:
        return _from_metadata(model, meta, where)
    return _Patterns(model, where).run()
