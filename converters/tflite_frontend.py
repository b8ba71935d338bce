"""TFLite front end: a ``.tflite`` flatbuffer -> bnncube IR :class:`~bnncube.converters.ir.Graph`.

The model is read with the flatbuffer object API of ``ai_edge_litert.schema_py_generated`` (no
interpreter is involved), so any well-formed TFLite file can be inspected even when it holds ops
the interpreter cannot run.  A TFLite model is already in *deployed form* (batch normalization
folded, activations fused into the producing op), so the mapping is one TFLite operator to one IR
op:

=====================  ==================  ==============================================
TFLite                 IR                  notes
=====================  ==================  ==============================================
CONV_2D                Conv2D              filter OHWI kept; explicit ``pads``
DEPTHWISE_CONV_2D      DepthwiseConv2D     filter 1HW(C*M) kept; ``depth_multiplier``
FULLY_CONNECTED        Dense               weights [out, in] kept
ADD                    Add
AVERAGE_POOL_2D        AveragePool2D       ``pool``, ``strides``, ``pads``
MAX_POOL_2D            MaxPool2D           ``pool``, ``strides``, ``pads``
MEAN                   Mean                ``axes`` from the constant axis tensor, ``keepdims``
RESHAPE                Reshape             the shape input is dropped
PAD                    Pad                 ``pads`` [top, bottom, left, right] (H and W only)
QUANTIZE               Quantize
DEQUANTIZE             Dequantize
SOFTMAX                Softmax             beta must be 1
=====================  ==================  ==============================================

Anything else (other builtins, custom ops) is rejected with a :class:`BnnError` that names the
operator and lists the supported ones.  :func:`add_tflite_metadata` tags a model with a metadata
entry; the zoo writes ``"bnncube_zoo"`` there, and :func:`load_tflite` uses it as the graph name.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.converters.checks import check_graph
from bnncube.converters.ir import Graph, Op, Quant, Tensor
from bnncube.errors import BnnError

_FILE_IDENTIFIER = b"TFL3"
ZOO_METADATA_NAME = "bnncube_zoo"

# TFLite TensorType value -> (IR dtype, numpy dtype); values from the schema.  TFLite buffers
# are little-endian.
_TENSOR_TYPES: dict[int, tuple[str, type]] = {
    0: ("float32", np.float32),  # FLOAT32
    2: ("int32", np.int32),  # INT32
    3: ("uint8", np.uint8),  # UINT8
    9: ("int8", np.int8),  # INT8
}

# TFLite builtin operator name -> IR op type, in the order given in error messages.
SUPPORTED_OPS: dict[str, str] = {
    "CONV_2D": "Conv2D",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2D",
    "FULLY_CONNECTED": "Dense",
    "ADD": "Add",
    "AVERAGE_POOL_2D": "AveragePool2D",
    "MAX_POOL_2D": "MaxPool2D",
    "MEAN": "Mean",
    "RESHAPE": "Reshape",
    "PAD": "Pad",
    "QUANTIZE": "Quantize",
    "DEQUANTIZE": "Dequantize",
    "SOFTMAX": "Softmax",
}

# TFLite ActivationFunctionType value -> IR activation
_ACTIVATIONS = {0: "none", 1: "relu", 3: "relu6"}
_ACTIVATION_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

# errors that a malformed (but parseable) flatbuffer can raise while we walk it
_MALFORMED = (IndexError, KeyError, ValueError, TypeError, AttributeError, struct.error)


def _schema() -> Any:
    try:
        import ai_edge_litert.schema_py_generated as schema
    except ImportError as e:  # pragma: no cover - part of the pinned environment
        raise BnnError(f"reading TFLite models needs the ai-edge-litert package ({e})") from e
    return schema


def _builtin_names(schema: Any) -> dict[int, str]:
    ops = schema.BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


def _text(value: Any) -> str:
    """A name from the file as printable text (newlines and control characters escaped)."""
    from bnncube.converters.loader import printable

    if value is None:
        return ""
    if isinstance(value, bytes):
        return printable(value.decode("utf-8", errors="replace"))
    return printable(str(value))


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one spatial axis under TensorFlow's SAME rule."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


# --------------------------------------------------------------------------------------------
# reading the flatbuffer
# --------------------------------------------------------------------------------------------


def _read_model(path: Path, where: str) -> tuple[bytes, Any]:
    if not path.exists():
        raise BnnError(f"{where}: no such file")
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise BnnError(f"{where}: cannot read ({e.strerror or e})") from e
    return buf, _parse(buf, where)


def _parse(buf: bytes, where: str) -> Any:
    if len(buf) < 8:
        raise BnnError(f"{where}: not a TFLite model (only {len(buf)} bytes)")
    if buf[4:8] != _FILE_IDENTIFIER:
        raise BnnError(
            f"{where}: not a TFLite model (file identifier {bytes(buf[4:8])!r}, "
            f"expected {_FILE_IDENTIFIER!r})"
        )
    schema = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(buf, 0)
    except Exception as e:  # any parse failure of a user's file is a bad input
        raise BnnError(
            f"{where}: not a TFLite model (cannot parse: {type(e).__name__}: {e})"
        ) from e
    if not model.subgraphs or not model.buffers:
        raise BnnError(f"{where}: not a TFLite model (no subgraphs or buffers)")
    return model


def _buffer_bytes(model: Any, raw: bytes, index: int) -> bytes | None:
    """The bytes of buffer ``index`` (inline data, or offset/size for models over 2 GB)."""
    if index <= 0 or index >= len(model.buffers):
        return None
    b = model.buffers[index]
    if b.data is not None and len(b.data) > 0:
        return bytes(np.asarray(b.data, np.uint8))
    if b.offset > 1 and b.size > 0:
        if b.offset + b.size > len(raw):
            raise ValueError(f"buffer {index} lies outside the file")
        return bytes(raw[b.offset : b.offset + b.size])
    return None


def _model_name(model: Any, raw: bytes, path: Path) -> str:
    for md in model.metadata or []:
        if _text(md.name) == ZOO_METADATA_NAME:
            data = _buffer_bytes(model, raw, md.buffer)
            if data:
                name = data.decode("utf-8", errors="replace").strip("\x00").strip()
                if name:
                    return name
    return path.stem


# --------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------


def _quant(q: Any) -> Quant | None:
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    scale = np.asarray(q.scale, np.float64).reshape(-1)
    if q.zeroPoint is None or len(q.zeroPoint) == 0:
        zp = np.zeros(scale.shape, np.int64)
    else:
        zp = np.asarray(q.zeroPoint, np.int64).reshape(-1)
        if zp.size == 1 and scale.size > 1:
            zp = np.full(scale.shape, int(zp[0]), np.int64)
    axis = int(q.quantizedDimension) if scale.size > 1 else None
    return Quant(scale, zp, axis, "tflite")


def _make_tensor(graph: Graph, model: Any, raw: bytes, t: Any, index: int, where: str) -> Tensor:
    base = _text(t.name) or f"tensor_{index}"
    name = graph.unique_name(base)
    if t.type not in _TENSOR_TYPES:
        tname = {v: k for k, v in vars(_schema().TensorType).items() if isinstance(v, int)}.get(
            t.type, str(t.type)
        )
        raise BnnError(
            f"{where}: tensor {base!r} has type {tname}; supported: FLOAT32, INT8, UINT8, INT32"
        )
    dtype, np_dtype = _TENSOR_TYPES[t.type]
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    data = None
    content = _buffer_bytes(model, raw, t.buffer)
    if content is not None:
        count = int(math.prod(shape)) if shape else 1
        itemsize = np.dtype(np_dtype).itemsize
        if len(content) != count * itemsize:
            raise BnnError(
                f"{where}: constant tensor {base!r} holds {len(content)} bytes, "
                f"shape {list(shape)} of {dtype} needs {count * itemsize}"
            )
        stored = np.dtype(np_dtype).newbyteorder("<")
        data = np.frombuffer(content, stored).astype(np_dtype).reshape(shape)
    tensor = Tensor(name, shape, dtype, _quant(t.quantization), data)
    graph.add_tensor(tensor)
    return tensor


# --------------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------------


def _activation(opts: Any, where: str) -> str:
    code = int(getattr(opts, "fusedActivationFunction", 0) or 0) if opts is not None else 0
    if code not in _ACTIVATIONS:
        name = _ACTIVATION_NAMES.get(code, str(code))
        raise BnnError(
            f"{where}: fused activation {name} is not supported; supported: NONE, RELU, RELU6"
        )
    return _ACTIVATIONS[code]


def _spatial(
    opts: Any, x: Tensor, kh: int, kw: int, where: str, dilated: bool = True
) -> dict[str, Any]:
    """strides, dilations and explicit pads of a conv/pool op."""
    if opts is None:
        raise BnnError(f"{where}: missing operator options")
    sh, sw = int(opts.strideH), int(opts.strideW)
    dh, dw = (int(opts.dilationHFactor), int(opts.dilationWFactor)) if dilated else (1, 1)
    if min(sh, sw, dh, dw, kh, kw) < 1:
        raise BnnError(f"{where}: invalid strides/dilations/kernel ({sh},{sw})/({dh},{dw})")
    if len(x.shape) != 4:
        raise BnnError(f"{where}: input {x.name!r} has shape {list(x.shape)}, expected NHWC")
    if int(opts.padding) == 0:  # SAME
        top, bottom = same_pads(x.shape[1], kh, sh, dh)
        left, right = same_pads(x.shape[2], kw, sw, dw)
    else:  # VALID
        top = bottom = left = right = 0
    attrs: dict[str, Any] = {"strides": (sh, sw)}
    if dilated:
        attrs["dilations"] = (dh, dw)
    attrs["pads"] = [top, bottom, left, right]
    return attrs


def _check_out_hw(
    out: Tensor, x: Tensor, k: tuple[int, int], attrs: dict[str, Any], where: str
) -> None:
    if len(out.shape) != 4:
        raise BnnError(f"{where}: output {out.name!r} has shape {list(out.shape)}, expected NHWC")
    top, bottom, left, right = attrs["pads"]
    dh, dw = attrs.get("dilations", (1, 1))
    sh, sw = attrs["strides"]
    eh = (x.shape[1] + top + bottom - ((k[0] - 1) * dh + 1)) // sh + 1
    ew = (x.shape[2] + left + right - ((k[1] - 1) * dw + 1)) // sw + 1
    if (eh, ew) != tuple(out.shape[1:3]):
        raise BnnError(
            f"{where}: output {out.name!r} is {out.shape[1]}x{out.shape[2]}, "
            f"but the op's options give {eh}x{ew}"
        )


def _const(graph: Graph, name: str, what: str, where: str) -> np.ndarray:
    t = graph.tensors[name]
    if t.data is None:
        raise BnnError(f"{where}: the {what} input {name!r} must be a constant tensor")
    return t.data


def _convert_op(
    graph: Graph, kind: str, opts: Any, ins: list[str], outs: list[str], where: str
) -> Op:
    """One TFLite builtin op -> one IR op (inputs/outputs already mapped to IR names)."""
    ir_type = SUPPORTED_OPS[kind]
    attrs: dict[str, Any] = {}
    if len(outs) != 1:
        raise BnnError(f"{where}: expected 1 output, found {len(outs)}")
    min_inputs = {"ADD": 2, "CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2}
    min_inputs.update({"MEAN": 2, "PAD": 2})
    if len(ins) < min_inputs.get(kind, 1):
        raise BnnError(f"{where}: expected at least {min_inputs.get(kind, 1)} inputs")
    out = graph.tensors[outs[0]]
    x = graph.tensors[ins[0]]

    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        ins = ins[:3]
        w = graph.tensors[ins[1]]
        if len(w.shape) != 4:
            raise BnnError(f"{where}: filter {w.name!r} has shape {list(w.shape)}, expected 4-D")
        attrs.update(_spatial(opts, x, w.shape[1], w.shape[2], where))
        _check_out_hw(out, x, (w.shape[1], w.shape[2]), attrs, where)
        if kind == "CONV_2D":
            if w.shape[3] != x.shape[3]:
                raise BnnError(
                    f"{where}: filter {w.name!r} has {w.shape[3]} input channels but the input "
                    f"has {x.shape[3]} (grouped convolution is not supported)"
                )
        else:
            mult = int(opts.depthMultiplier or 0)
            if mult <= 0:
                mult = w.shape[3] // max(x.shape[3], 1)
            if mult < 1 or w.shape[3] != x.shape[3] * mult:
                raise BnnError(
                    f"{where}: depthwise filter {w.name!r} has {w.shape[3]} channels, "
                    f"input has {x.shape[3]} (depth multiplier {mult})"
                )
            attrs["depth_multiplier"] = mult
        attrs["activation"] = _activation(opts, where)
    elif kind == "FULLY_CONNECTED":
        ins = ins[:3]
        if opts is not None and int(getattr(opts, "weightsFormat", 0) or 0) != 0:
            raise BnnError(f"{where}: shuffled FULLY_CONNECTED weights are not supported")
        w = graph.tensors[ins[1]]
        if len(w.shape) != 2:
            raise BnnError(f"{where}: weights {w.name!r} have shape {list(w.shape)}, expected 2-D")
        attrs["activation"] = _activation(opts, where)
    elif kind == "ADD":
        ins = ins[:2]
        attrs["activation"] = _activation(opts, where)
    elif kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        ins = ins[:1]
        if opts is None:
            raise BnnError(f"{where}: missing operator options")
        kh, kw = int(opts.filterHeight), int(opts.filterWidth)
        attrs["pool"] = (kh, kw)
        attrs.update(_spatial(opts, x, kh, kw, where, dilated=False))
        _check_out_hw(out, x, (kh, kw), attrs, where)
        attrs["activation"] = _activation(opts, where)
    elif kind == "MEAN":
        axes_data = _const(graph, ins[1], "axis", where).reshape(-1)
        rank = len(x.shape)
        axes = []
        for a in axes_data.tolist():
            a = int(a)
            if not -rank <= a < rank:
                raise BnnError(f"{where}: axis {a} is out of range for rank {rank}")
            axes.append(a % rank)
        attrs["axes"] = tuple(sorted(set(axes)))
        attrs["keepdims"] = bool(getattr(opts, "keepDims", False)) if opts is not None else False
        ins = ins[:1]
    elif kind == "RESHAPE":
        ins = ins[:1]
        if x.num_elements != out.num_elements:
            raise BnnError(
                f"{where}: reshape from {list(x.shape)} to {list(out.shape)} changes the size"
            )
    elif kind == "PAD":
        p = _const(graph, ins[1], "paddings", where)
        if p.shape != (4, 2) or len(x.shape) != 4:
            raise BnnError(
                f"{where}: only NHWC padding is supported (paddings shape {list(p.shape)}, "
                f"input shape {list(x.shape)})"
            )
        p = p.astype(np.int64)
        if p[0].any() or p[3].any():
            raise BnnError(
                f"{where}: padding of the batch or channel axis is not supported "
                f"(paddings {p.tolist()})"
            )
        if (p < 0).any():
            raise BnnError(f"{where}: negative padding {p.tolist()}")
        attrs["pads"] = [int(p[1, 0]), int(p[1, 1]), int(p[2, 0]), int(p[2, 1])]
        ins = ins[:1]
    elif kind == "SOFTMAX":
        ins = ins[:1]
        beta = float(opts.beta) if opts is not None else 1.0
        if beta != 1.0:
            raise BnnError(f"{where}: SOFTMAX with beta={beta} is not supported (only beta=1)")
    else:  # QUANTIZE, DEQUANTIZE
        ins = ins[:1]
    return Op(_readable_op_name(outs[0]), ir_type, list(ins), list(outs), attrs)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def load_tflite(path: str | Path) -> Graph:
    """Read a ``.tflite`` file into a bnncube IR graph (deployed form).

    Raises :class:`BnnError` for a missing file, a file that is not a TFLite flatbuffer, more
    than one subgraph, an unsupported tensor type, operator or fused activation.
    """
    p = Path(path)
    raw, model = _read_model(p, str(path))
    try:
        return _convert(model, raw, p, str(path))
    except BnnError:
        raise
    except _MALFORMED as e:
        raise BnnError(f"{path}: malformed TFLite model ({type(e).__name__}: {e})") from e


def _convert(model: Any, raw: bytes, p: Path, where: str) -> Graph:
    schema = _schema()
    if len(model.subgraphs) != 1:
        raise BnnError(
            f"{where}: the model has {len(model.subgraphs)} subgraphs; only single-subgraph "
            "models are supported"
        )
    sg = model.subgraphs[0]
    graph = Graph(_model_name(model, raw, p), source=where, source_format="tflite")

    # tensors that the subgraph uses (inputs, outputs, op operands), in TFLite index order
    tensors = sg.tensors or []
    used: set[int] = set(int(i) for i in (sg.inputs if sg.inputs is not None else []))
    used.update(int(i) for i in (sg.outputs if sg.outputs is not None else []))
    for op in sg.operators or []:
        used.update(int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0)
        used.update(int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0)
    for i in used:
        if not 0 <= i < len(tensors):
            raise BnnError(f"{where}: tensor index {i} is out of range")
    names: dict[int, str] = {}
    for i in sorted(used):
        names[i] = _make_tensor(graph, model, raw, tensors[i], i, where).name

    builtin = _builtin_names(schema)
    custom_code = schema.BuiltinOperator.CUSTOM
    kinds: list[str] = []
    for k, op in enumerate(sg.operators or []):
        if not 0 <= op.opcodeIndex < len(model.operatorCodes or []):
            raise BnnError(f"{where}: op #{k} has an invalid opcode index {op.opcodeIndex}")
        oc = model.operatorCodes[op.opcodeIndex]
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
        kinds.append(
            _text(oc.customCode) or "CUSTOM"
            if code == custom_code
            else builtin.get(code, f"BUILTIN_{code}")
        )
    float_macs = _float_mac_chains(graph, sg, names, kinds)
    inside_chains = {k for chain in float_macs.values() for k in chain[1:]}
    for k, op in enumerate(sg.operators or []):
        oc = model.operatorCodes[op.opcodeIndex]
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
        kind = kinds[k]
        if k in inside_chains:
            continue
        if k in float_macs:
            graph.add_op(_fuse_float_mac(graph, sg, names, kinds, float_macs[k], where))
            continue
        if code == custom_code and kind in LCE_OPS:
            ins = [
                names[int(i)] if i >= 0 else ""
                for i in (op.inputs if op.inputs is not None else [])
            ]
            outs = [names[int(i)] for i in (op.outputs if op.outputs is not None else []) if i >= 0]
            opts = _custom_options(op, f"{where}: op #{k} ({kind})")
            graph.add_op(
                _convert_lce_op(graph, kind, opts, ins, outs, f"{where}: op #{k} ({kind})")
            )
            continue
        if kind not in SUPPORTED_OPS or code == custom_code:
            hint = (
                " (the TFLite converter writes a dilated convolution as SPACE_TO_BATCH_ND + "
                "CONV_2D + BATCH_TO_SPACE_ND; dilated convolutions are not supported)"
                if kind in ("SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND")
                else ""
            )
            raise BnnError(
                f"{where}: operator {kind} (op #{k}) is not supported{hint}; "
                f"supported: {', '.join(SUPPORTED_OPS)}"
            )
        ins = [names[int(i)] for i in (op.inputs if op.inputs is not None else []) if i >= 0]
        outs = [names[int(i)] for i in (op.outputs if op.outputs is not None else []) if i >= 0]
        graph.add_op(_convert_op(graph, kind, op.builtinOptions, ins, outs, f"{where}: op #{k}"))

    graph.inputs = [names[int(i)] for i in (sg.inputs if sg.inputs is not None else [])]
    graph.outputs = [names[int(i)] for i in (sg.outputs if sg.outputs is not None else [])]
    check_graph(graph, where)
    try:
        graph.validate()
    except ValueError as e:
        raise BnnError(f"{where}: invalid graph ({e})") from e
    graph.prune()
    return graph


# --------------------------------------------------------------------------------------------
# int8 MAC ops with a float output, as bnncube's TFLite form writes them
# --------------------------------------------------------------------------------------------

_FLOAT_MAC_KINDS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


def _float_mac_chains(
    graph: Graph, sg: Any, names: dict[int, str], kinds: list[str]
) -> dict[int, tuple[int, int, int, int]]:
    """``{k: (k, mac, mul, add)}`` for each chain DEQUANTIZE (int8, power-of-two scale) ->
    float FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D (integer-valued int8-range weights, zero
    bias, no activation) -> MUL (constant) -> ADD (constant): the exact form of an int8 MAC op
    with a float output transform that ``tflite_export`` writes (docs/tflite-form.md). Each
    intermediate tensor must feed only the next op of the chain."""
    ops = list(sg.operators or [])
    consumers: dict[int, list[int]] = {}
    for k, op in enumerate(ops):
        for i in op.inputs if op.inputs is not None else []:
            if i >= 0:
                consumers.setdefault(int(i), []).append(k)
    outputs = {int(i) for i in (sg.outputs if sg.outputs is not None else [])}

    def ins(k: int) -> list[int]:
        return [int(i) for i in (ops[k].inputs if ops[k].inputs is not None else [])]

    def single_next(k: int, kind: tuple[str, ...]) -> int | None:
        outs = [int(i) for i in (ops[k].outputs if ops[k].outputs is not None else [])]
        if len(outs) != 1 or outs[0] in outputs or len(consumers.get(outs[0], [])) != 1:
            return None
        nxt = consumers[outs[0]][0]
        return nxt if kinds[nxt] in kind and ins(nxt) and ins(nxt)[0] == outs[0] else None

    def const(i: int) -> np.ndarray | None:
        return graph.tensors[names[i]].data if i >= 0 and i in names else None

    def no_activation(k: int) -> bool:
        opts = ops[k].builtinOptions
        return int(getattr(opts, "fusedActivationFunction", 0) or 0) == 0

    chains: dict[int, tuple[int, int, int, int]] = {}
    for k, kind in enumerate(kinds):
        if kind != "DEQUANTIZE" or not ins(k):
            continue
        x = graph.tensors[names[ins(k)[0]]]
        if x.dtype != "int8" or x.quant is None or x.quant.is_per_channel:
            continue
        s_in = float(np.float32(x.quant.scale.reshape(-1)[0]))
        if s_in <= 0 or math.frexp(s_in)[0] != 0.5:  # a power of two keeps it exact
            continue
        mac = single_next(k, _FLOAT_MAC_KINDS)
        if mac is None or not no_activation(mac) or len(ins(mac)) < 2:
            continue
        w = const(ins(mac)[1])
        bias = const(ins(mac)[2]) if len(ins(mac)) > 2 and ins(mac)[2] >= 0 else None
        if (
            w is None
            or not np.all(np.isfinite(w))
            or not np.array_equal(w, np.rint(w))
            or w.min() < -128
            or w.max() > 127
            or (bias is not None and np.any(bias != 0))
        ):
            continue
        mul = single_next(mac, ("MUL",))
        if mul is None or not no_activation(mul) or len(ins(mul)) != 2:
            continue
        if const(ins(mul)[1]) is None:
            continue
        add = single_next(mul, ("ADD",))
        if add is None or len(ins(add)) != 2 or const(ins(add)[1]) is None:
            continue
        chains[k] = (k, mac, mul, add)
    return chains


def _fuse_float_mac(
    graph: Graph,
    sg: Any,
    names: dict[int, str],
    kinds: list[str],
    chain: tuple[int, int, int, int],
    where: str,
) -> Op:
    """The IR op of one chain found by :func:`_float_mac_chains`: the MAC op on the int8 input
    and int8 weights with ``output_transform = "float"``, ``scale = mul * input scale`` (exact:
    a power of two) and ``offset = add``, and the ADD's activation."""
    ops = list(sg.operators or [])
    k, mac, mul, add = chain

    def ins(j: int) -> list[str]:
        return [names[int(i)] for i in (ops[j].inputs if ops[j].inputs is not None else [])]

    x_name = ins(k)[0]
    out_name = names[int(ops[add].outputs[0])]
    here = f"{where}: op #{mac} ({kinds[mac]})"
    # geometry and checks as for the op itself, on the int8 input
    op = _convert_op(graph, kinds[mac], ops[mac].builtinOptions, [x_name, ins(mac)[1]],
                     [names[int(ops[mac].outputs[0])]], here)  # fmt: skip
    w = graph.tensors[ins(mac)[1]]
    channels = int(w.shape[0] if kinds[mac] != "DEPTHWISE_CONV_2D" else w.shape[-1])
    s_in = np.float32(graph.tensors[x_name].quant.scale.reshape(-1)[0])
    scale = np.broadcast_to(np.asarray(graph.tensors[ins(mul)[1]].data, np.float32), (channels,))
    offset = np.broadcast_to(np.asarray(graph.tensors[ins(add)[1]].data, np.float32), (channels,))
    w_name = graph.add_const(f"{w.name}/int8", np.asarray(w.data).astype(np.int8), "int8",
                             Quant.per_tensor(1.0, 0, "tflite"))  # fmt: skip
    op.inputs = [
        x_name,
        w_name,
        graph.add_const(f"{op.name}/scale", (scale * s_in).astype(np.float32), "float32"),
        graph.add_const(f"{op.name}/offset", offset.astype(np.float32), "float32"),
    ]
    op.outputs = [out_name]
    op.attrs["output_transform"] = "float"
    op.attrs["activation"] = _activation(ops[add].builtinOptions, f"{where}: op #{add} (ADD)")
    return op


# --------------------------------------------------------------------------------------------
# Larq Compute Engine custom ops
# --------------------------------------------------------------------------------------------

# LCE custom op -> IR op type
LCE_OPS: dict[str, str] = {
    "LceQuantize": "Bitpack",
    "LceBconv2d": "BinaryConv2D",
    "LceDequantize": "Dequantize",
}

# TFLite ActivationFunctionType -> the int32 range LCE's CalculateActivationRange gives
_LCE_ACT_RANGE = {0: (-(2**31), 2**31 - 1), 1: (0, 2**31 - 1), 2: (-1, 1), 3: (0, 6)}


def _custom_options(op: Any, where: str) -> dict[str, Any]:
    raw = op.customOptions
    if raw is None or len(raw) < 3:
        return {}
    from flatbuffers import flexbuffers

    try:
        value = flexbuffers.Loads(bytes(np.asarray(raw, np.uint8)))
    except Exception as e:  # a user's file
        raise BnnError(f"{where}: unreadable custom options ({type(e).__name__}: {e})") from e
    if not isinstance(value, dict):
        raise BnnError(f"{where}: custom options are not a flexbuffer map")
    return value


def _as_binary(graph: Graph, name: str, channels: int, where: str) -> None:
    """Retype the TFLite INT32 tensor ``name`` [..., ceil(C/32)] as the IR binary [..., C]."""
    t = graph.tensors[name]
    if t.dtype == "binary":
        if t.shape[-1] != channels:
            raise BnnError(
                f"{where}: binary tensor {name!r} has {t.shape[-1]} channels, not {channels}"
            )
        return
    if t.dtype != "int32" or not t.shape or t.shape[-1] != -(-channels // 32):
        raise BnnError(
            f"{where}: tensor {name!r} ({t.dtype} {list(t.shape)}) is not a bitpacked tensor "
            f"of {channels} channels"
        )
    if t.data is not None:
        raise BnnError(f"{where}: constant bitpacked activations are not supported")
    graph.tensors[name] = Tensor(name, tuple(t.shape[:-1]) + (channels,), "binary", None, None)


def _unpack_filters(graph: Graph, name: str, channels: int, where: str) -> str:
    from bnncube.converters.binary_reference import unpack

    t = graph.tensors[name]
    if t.data is None or t.dtype != "int32" or len(t.shape) != 4:
        raise BnnError(f"{where}: the filter {name!r} must be a constant INT32 [O, KH, KW, words]")
    if t.shape[3] != -(-channels // 32):
        raise BnnError(
            f"{where}: the filter {name!r} has {t.shape[3]} words per row; channels_in "
            f"{channels} needs {-(-channels // 32)} (grouped binary convolution is not supported)"
        )
    pm1 = unpack(np.asarray(t.data).view(np.uint32), channels)
    new = graph.unique_name(f"{name}/unpacked")
    graph.add_tensor(Tensor(new, tuple(pm1.shape), "binary", None, pm1))
    return new


def _lce_option(opts: dict[str, Any], key: str, where: str) -> int:
    if key not in opts:
        raise BnnError(f"{where}: custom option {key!r} is missing")
    try:
        return int(opts[key])
    except (TypeError, ValueError) as e:
        raise BnnError(f"{where}: custom option {key!r} = {opts[key]!r} is not an integer") from e


def _convert_lce_op(
    graph: Graph, kind: str, opts: dict[str, Any], ins: list[str], outs: list[str], where: str
) -> Op:
    """One LCE custom op -> one IR op (docs/tflite-form.md "Reading LCE models")."""
    if len(outs) != 1 or not ins or not ins[0]:
        raise BnnError(f"{where}: expected 1 data input and 1 output")
    x, out = graph.tensors[ins[0]], graph.tensors[outs[0]]
    name = _readable_op_name(outs[0])
    if kind == "LceQuantize":
        if x.dtype not in ("float32", "int8"):
            raise BnnError(f"{where}: input dtype {x.dtype}; supported: FLOAT32, INT8")
        _as_binary(graph, outs[0], x.shape[-1], where)
        return Op(name, "Bitpack", [ins[0]], list(outs), {})
    if kind == "LceDequantize":
        if out.dtype not in ("float32", "int8"):
            raise BnnError(f"{where}: output dtype {out.dtype}; supported: FLOAT32, INT8")
        if out.dtype == "int8" and out.quant is None:
            raise BnnError(f"{where}: int8 output {out.name!r} has no quantization")
        _as_binary(graph, ins[0], out.shape[-1], where)
        return Op(name, "Dequantize", [ins[0]], list(outs), {})
    # LceBconv2d
    if len(ins) != 5:
        raise BnnError(f"{where}: expected 5 inputs, found {len(ins)}")
    c = _lce_option(opts, "channels_in", where)
    dh = _lce_option(opts, "dilation_height_factor", where)
    dw = _lce_option(opts, "dilation_width_factor", where)
    if (dh, dw) != (1, 1):
        raise BnnError(f"{where}: dilation ({dh}, {dw}) is not supported; supported: 1")
    padding = _lce_option(opts, "padding", where)
    pad_value = _lce_option(opts, "pad_values", where)
    act = _lce_option(opts, "fused_activation_function", where)
    sh, sw = _lce_option(opts, "stride_height", where), _lce_option(opts, "stride_width", where)
    if padding not in (0, 1):
        raise BnnError(f"{where}: padding {padding}; supported: 0 (SAME), 1 (VALID)")
    if pad_value not in (0, 1):
        raise BnnError(f"{where}: pad_values {pad_value}; supported: 0, 1")
    if act not in _LCE_ACT_RANGE:
        raise BnnError(
            f"{where}: fused activation {_ACTIVATION_NAMES.get(act, str(act))} is not supported; "
            "supported: NONE, RELU, RELU_N1_TO_1, RELU6"
        )
    if c < 1 or sh < 1 or sw < 1:
        raise BnnError(f"{where}: invalid channels_in {c} or strides ({sh}, {sw})")
    _as_binary(graph, ins[0], c, where)
    x = graph.tensors[ins[0]]
    if len(x.shape) != 4:
        raise BnnError(f"{where}: input {x.name!r} has shape {list(x.shape)}, expected NHWC")
    w_name = _unpack_filters(graph, ins[1], c, where)
    o, kh, kw, _ = graph.tensors[w_name].shape
    k_all = kh * kw * c
    if padding == 0:
        top, bottom = same_pads(x.shape[1], kh, sh)
        left, right = same_pads(x.shape[2], kw, sw)
    else:
        top = bottom = left = right = 0
    attrs: dict[str, Any] = {
        "strides": (sh, sw),
        "dilations": (1, 1),
        "pads": [top, bottom, left, right],
        "pad_value": pad_value,
    }
    zero_padded = padding == 0 and pad_value == 0 and top + bottom + left + right > 0
    if out.dtype == "int32":  # bitpacked output: bit = popcount > thresholds[o]
        if zero_padded:
            raise BnnError(
                f"{where}: bitpacked output with zero padding (LCE 0.16's kernels refuse it); "
                "supported: one padding or VALID"
            )
        th = _const(graph, ins[4], "thresholds", where).reshape(-1).astype(np.int64)
        if th.size != o:
            raise BnnError(f"{where}: {th.size} thresholds for {o} output channels")
        _as_binary(graph, outs[0], o, where)
        # p > th  <=>  acc = K - 2p < K - 2 * th
        t = np.clip(k_all - 2 * th, -(2**31), 2**31 - 1).astype(np.int32)
        t_name = graph.unique_name(f"{name}/threshold")
        d_name = graph.unique_name(f"{name}/direction")
        graph.add_tensor(Tensor(t_name, (o,), "int32", None, t))
        graph.add_tensor(Tensor(d_name, (o,), "int8", None, np.ones(o, np.int8)))
        attrs["output_transform"] = "threshold"
        op = Op(name, "BinaryConv2D", [ins[0], w_name, t_name, d_name], list(outs), attrs)
        _check_out_hw(graph.tensors[outs[0]], x, (kh, kw), attrs, where)
        return op
    if out.dtype not in ("float32", "int8"):
        raise BnnError(f"{where}: output dtype {out.dtype}; supported: INT32, INT8, FLOAT32")
    if zero_padded and (out.dtype != "float32" or act != 0):
        raise BnnError(
            f"{where}: zero padding with {out.dtype} output / a fused activation (LCE 0.16's "
            "default kernels refuse it); supported: float output without fused activation"
        )
    m = _const(graph, ins[2], "post_activation_multiplier", where).reshape(-1)
    b = _const(graph, ins[3], "post_activation_bias", where).reshape(-1)
    if m.size != o or b.size != o:
        raise BnnError(f"{where}: post_activation_multiplier/bias must have {o} elements")
    s_out, zp_out = 1.0, 0.0
    if out.dtype == "int8":
        if out.quant is None or out.quant.scale.size != 1:
            raise BnnError(f"{where}: int8 output {out.name!r} needs a per-tensor quantization")
        s_out = float(np.float32(out.quant.scale[0]))
        zp_out = float(out.quant.zero_point[0])
    m64, b64 = m.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    mult = (-1.0 * m64 / s_out).astype(np.float32)
    bias = ((b64 + float(k_all) * m64) / s_out + zp_out).astype(np.float32)
    a_lo, a_hi = _LCE_ACT_RANGE[act]
    a_lo, a_hi = max(a_lo, -k_all), min(a_hi, k_all)
    m_name = graph.unique_name(f"{name}/lce_multiplier")
    b_name = graph.unique_name(f"{name}/lce_bias")
    graph.add_tensor(Tensor(m_name, (o,), "float32", None, mult))
    graph.add_tensor(Tensor(b_name, (o,), "float32", None, bias))
    attrs.update(
        {
            "output_transform": "lce",
            "lce_k": k_all,
            "lce_clamp": (k_all - a_hi, k_all - a_lo),
            "lce_output": out.dtype,
        }
    )
    _check_out_hw(out, x, (kh, kw), attrs, where)
    if out.shape[-1] != o:
        raise BnnError(f"{where}: output {out.name!r} has {out.shape[-1]} channels, expected {o}")
    return Op(name, "BinaryConv2D", [ins[0], w_name, m_name, b_name], list(outs), attrs)


def _readable_op_name(tensor_name: str) -> str:
    """A short op name from a TFLite tensor name.

    The converter names tensors after every fused TF op (``model/layer/Relu6;model/layer_BN/...``);
    keep the first of them and, for ``model/layer/TfOp``, just ``layer``.
    """
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    return parts[1] if len(parts) >= 3 else first


def add_tflite_metadata(buf: bytes, name: str, value: bytes) -> bytes:
    """Return ``buf`` (a TFLite flatbuffer) re-serialized with metadata ``name`` = ``value``.

    The value goes into a new buffer.  An existing entry of the same name is pointed at the new
    buffer instead of being duplicated (its old buffer is left in place, unreferenced).
    """
    import flatbuffers

    schema = _schema()
    model = _parse(bytes(buf), "model buffer")
    if any(b.offset > 1 for b in model.buffers):
        raise BnnError("model buffer: models with external (offset) buffers cannot be re-tagged")
    new = schema.BufferT()
    new.data = np.frombuffer(bytes(value), np.uint8).copy()
    model.buffers.append(new)
    index = len(model.buffers) - 1
    if model.metadata is None:
        model.metadata = []
    for md in model.metadata:
        if _text(md.name) == name:
            md.buffer = index
            break
    else:
        md = schema.MetadataT()
        md.name = name
        md.buffer = index
        model.metadata.append(md)
    builder = flatbuffers.Builder(max(1024, len(buf) + len(value) + 1024))
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())
