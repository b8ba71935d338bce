"""TFLite form of a deployed IR graph: int8 builtins plus Larq Compute Engine (LCE) custom ops.

:func:`export_tflite` writes the flatbuffer directly with the object API of
``ai_edge_litert.schema_py_generated`` and the ``flatbuffers`` package (``flexbuffers`` for the
custom options); no converter is involved.  :func:`save_tflite` writes it to a file atomically.
``docs/tflite-form.md`` gives the mapping, the packed layouts and the measured differences.

Op mapping (``output_transform`` "tflite" = the attribute absent, see docs/ir.md):

====================================  ===================================================
IR op                                 TFLite
====================================  ===================================================
Conv2D / DepthwiseConv2D / Dense      CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED
  "tflite"                              the same op, tensors and quantization (exact)
  "affine"                              per-channel int8 weights whose scales make
                                        ``s_in * s_w[o] / s_out`` the op's real multiplier,
                                        int32 bias = the offset in accumulator units
                                        (weights negated where the multiplier is negative,
                                        times the largest integer gain that fits int8)
  "float"                               DEQUANTIZE -> float op on the integer weights ->
                                        MUL(scale) -> ADD(offset, fused activation)
BinaryConv2D                          LceBconv2d (filters OHWI, bitpacked along I)
  "affine"                              int8 output, ``post_activation_multiplier/bias``
  "float"                               float output, ``post_activation_multiplier/bias``
  "threshold"                           bitpacked output, ``thresholds``
Bitpack                               LceQuantize
Dequantize (binary input)             LceDequantize
Add                                   ADD (an "affine" Add must be TFLite's scaled add)
AveragePool2D / MaxPool2D / Mean      AVERAGE_POOL_2D / MAX_POOL_2D / MEAN
Reshape / Pad / Softmax               RESHAPE / PAD / SOFTMAX
Quantize / Dequantize                 QUANTIZE / DEQUANTIZE
====================================  ===================================================

Explicit pads that are neither TensorFlow's SAME nor VALID become a PAD op before the
convolution (exact: the padded value is the real zero).  An int8 output range (``clamp``) that
no fused activation gives becomes MAXIMUM/MINIMUM ops after the producer.

Zero padding of binary convolutions (QKeras, ``pad_value`` 0 with SAME pads): LCE 0.16 handles
it with float output in all its kernels (a zero-padding correction), with int8 output only in its
reference kernel and an even channel count, and its reference kernel crashes with bitpacked
output.  The writer therefore gives such a convolution float output and converts it after:
QUANTIZE for int8, LceQuantize for a ``threshold`` output (exact: the float value is the integer
``acc - T``).  One padding (``pad_value`` 1) and VALID map directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.converters.binary_reference import pack_filters
from bnncube.converters.ir import Graph, Op, Quant, Tensor, packed_words, unfused
from bnncube.converters.reference import activation_range, quantize_multiplier
from bnncube.converters.tflite_frontend import ZOO_METADATA_NAME, same_pads
from bnncube.errors import BnnError

FILE_IDENTIFIER = b"TFL3"

# IR dtype -> TFLite TensorType (binary activations travel as bitpacked INT32 words)
_TENSOR_TYPE = {"float32": 0, "int32": 2, "uint8": 3, "int8": 9, "binary": 2}
_NP_TYPE: dict[str, Any] = {
    "float32": np.float32,
    "int32": np.int32,
    "uint8": np.uint8,
    "int8": np.int8,
    "binary": np.uint32,
}
_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_FUSED = {"none": 0, "linear": 0, "relu": 1, "relu6": 3}  # TFLite ActivationFunctionType
_SAME, _VALID = 0, 1  # TFLite Padding

# builtin versions (the kernels do not depend on them; these are what TensorFlow's converter
# writes for int8 models, and float ones for the float ops)
_VERSIONS_INT8 = {
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4,
    "ADD": 2,
    "AVERAGE_POOL_2D": 2,
    "MAX_POOL_2D": 2,
    "MEAN": 2,
    "PAD": 2,
    "QUANTIZE": 2,
    "DEQUANTIZE": 2,
    "SOFTMAX": 2,
    "MAXIMUM": 2,
    "MINIMUM": 2,
}


def _schema() -> Any:
    try:
        import ai_edge_litert.schema_py_generated as schema
    except ImportError as e:  # pragma: no cover - part of the pinned environment
        raise BnnError(f"writing TFLite models needs the ai-edge-litert package ({e})") from e
    return schema


def _f32(v: Any) -> float:
    return float(np.float32(v))


def _scalar(quant: Quant | None, what: str) -> tuple[float, int]:
    if quant is None:
        raise BnnError(f"{what}: a quantized tensor has no quantization parameters")
    return float(quant.scale.reshape(-1)[0]), int(quant.zero_point.reshape(-1)[0])


def tflite_multiplier(s_in: float, s_w: float, s_out: float, float_product: bool = False) -> float:
    """The real multiplier TFLite's int8 conv/FC kernels realise for these float32 scales."""
    if float_product:  # per-tensor FULLY_CONNECTED: float32 product of s_in and s_w first
        real = _f32(np.float32(s_in) * np.float32(s_w)) / _f32(s_out)
    else:
        real = _f32(s_in) * _f32(s_w) / _f32(s_out)
    q, shift = quantize_multiplier(real)  # TFLite QuantizeMultiplier, as the kernels do
    return q * 2.0 ** (shift - 31)


def _real(values: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``values / 2**shift`` as float64 (the real multiplier or offset of an affine transform)."""
    v = np.asarray(values).reshape(-1).astype(np.float64)
    return np.ldexp(v, -np.asarray(shift).reshape(-1).astype(np.int64))


def _is_pow2(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5


# --------------------------------------------------------------------------------------------
# flatbuffer helpers
# --------------------------------------------------------------------------------------------


def _aligned_buffer_class(schema: Any) -> Any:
    """``BufferT`` whose data vector starts on a 16-byte boundary (as TFLite's converter does)."""

    class AlignedBufferT(schema.BufferT):  # type: ignore[misc, name-defined]
        def Pack(self, builder: Any) -> Any:  # noqa: N802 - flatbuffers' method name
            data = None
            if self.data is not None:
                raw = bytes(self.data)
                builder.StartVector(1, len(raw), 16)
                builder.head = builder.Head() - len(raw)
                builder.Bytes[builder.Head() : builder.Head() + len(raw)] = raw
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            return schema.BufferEnd(builder)

    return AlignedBufferT


def _qparams(schema: Any, scale: Any, zero_point: Any, axis: int | None = None) -> Any:
    q = schema.QuantizationParametersT()
    q.scale = [float(np.float32(s)) for s in np.asarray(scale, np.float64).reshape(-1)]
    q.zeroPoint = [int(z) for z in np.asarray(zero_point, np.int64).reshape(-1)]
    q.quantizedDimension = int(axis or 0)
    return q


def _quant_of(schema: Any, quant: Quant | None) -> Any:
    if quant is None:
        return None
    return _qparams(schema, quant.scale, quant.zero_point, quant.axis)


# --------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------


class _Writer:
    def __init__(self, graph: Graph) -> None:
        self.s = _schema()
        self.g = graph
        self.buffer_class = _aligned_buffer_class(self.s)
        self.buffers: list[Any] = [self.buffer_class()]  # buffer 0: the empty sentinel
        self.tensors: list[Any] = []
        self.index: dict[str, int] = {}
        self.taken: set[str] = set(graph.tensors)
        self.opcodes: list[Any] = []
        self.opcode_index: dict[tuple[int, str, int], int] = {}
        self.operators: list[Any] = []
        self.op: Op | None = None  # the IR op being written (for messages)

    # -- names and tensors --------------------------------------------------------------
    def where(self) -> str:
        op = self.op
        return f"op {op.name!r} ({op.type})" if op is not None else f"graph {self.g.name!r}"

    def fail(self, message: str) -> BnnError:
        return BnnError(f"TFLite export: {self.where()}: {message}")

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return name

    def add(
        self,
        name: str,
        shape: tuple[int, ...],
        ttype: int,
        quant: Any = None,
        data: np.ndarray | None = None,
    ) -> int:
        t = self.s.TensorT()
        t.name = name
        t.shape = [int(d) for d in shape]
        t.type = ttype
        t.quantization = quant
        if data is not None:
            b = self.buffer_class()
            arr = np.ascontiguousarray(data)
            b.data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(-1)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def new(
        self,
        base: str,
        shape: tuple[int, ...],
        dtype: str,
        quant: Quant | None = None,
        data: np.ndarray | None = None,
        qparams: Any = None,
    ) -> int:
        """A tensor the IR does not have (an intermediate or a rewritten constant)."""
        if data is not None:
            data = np.asarray(data, _NP_TYPE[dtype])
        q = qparams if qparams is not None else _quant_of(self.s, quant)
        return self.add(self.unique(base), shape, _TENSOR_TYPE[dtype], q, data)

    def const(self, base: str, data: np.ndarray, dtype: str, qparams: Any = None) -> int:
        data = np.asarray(data)
        return self.new(base, tuple(data.shape), dtype, data=data, qparams=qparams)

    def tensor(self, name: str) -> int:
        """Index of IR tensor ``name`` (written unchanged on first use)."""
        if name in self.index:
            return self.index[name]
        t = self.g.tensors[name]
        if t.dtype not in _TENSOR_TYPE:
            raise self.fail(f"tensor {name!r} has dtype {t.dtype}; supported: {list(_TENSOR_TYPE)}")
        shape = t.shape
        data = None
        if t.dtype == "binary":
            if t.data is not None:
                raise self.fail(f"binary constant {name!r} is only supported as a filter")
            shape = (*t.shape[:-1], packed_words(t.shape[-1])) if t.shape else (1,)
        elif t.data is not None:
            data = np.asarray(t.data).astype(_NP_TYPE[t.dtype])
        quant = None if t.dtype == "binary" else _quant_of(self.s, t.quant)
        self.index[name] = self.add(name, shape, _TENSOR_TYPE[t.dtype], quant, data)
        return self.index[name]

    # -- operators ------------------------------------------------------------------------
    def _opcode(self, builtin: int, custom: str, version: int) -> int:
        key = (builtin, custom, version)
        if key not in self.opcode_index:
            oc = self.s.OperatorCodeT()
            oc.builtinCode = builtin
            oc.deprecatedBuiltinCode = min(builtin, 127)
            oc.version = version
            if custom:
                oc.customCode = custom
            self.opcodes.append(oc)
            self.opcode_index[key] = len(self.opcodes) - 1
        return self.opcode_index[key]

    def builtin(
        self,
        kind: str,
        inputs: list[int],
        outputs: list[int],
        options: Any = None,
        options_type: str = "",
        int8: bool = True,
    ) -> None:
        code = getattr(self.s.BuiltinOperator, kind)
        version = _VERSIONS_INT8.get(kind, 1) if int8 else 1
        op = self.s.OperatorT()
        op.opcodeIndex = self._opcode(code, "", version)
        op.inputs = list(inputs)
        op.outputs = list(outputs)
        if options is not None:
            op.builtinOptionsType = getattr(self.s.BuiltinOptions, options_type)
            op.builtinOptions = options
        self.operators.append(op)

    def custom(
        self, code: str, inputs: list[int], outputs: list[int], options: dict[str, int] | None
    ) -> None:
        from flatbuffers import flexbuffers

        op = self.s.OperatorT()
        op.opcodeIndex = self._opcode(self.s.BuiltinOperator.CUSTOM, code, 1)
        op.inputs = list(inputs)
        op.outputs = list(outputs)
        if options:
            op.customOptions = np.frombuffer(bytes(flexbuffers.Dumps(options)), np.uint8).copy()
            op.customOptionsFormat = self.s.CustomOptionsFormat.FLEXBUFFERS
        self.operators.append(op)

    def finish(self) -> bytes:
        import flatbuffers

        s = self.s
        sg = s.SubGraphT()
        sg.tensors = self.tensors
        sg.inputs = [self.tensor(n) for n in self.g.inputs]
        sg.outputs = [self.tensor(n) for n in self.g.outputs]
        sg.operators = self.operators
        sg.name = "main"
        name_buffer = self.buffer_class()
        name_buffer.data = np.frombuffer(self.g.name.encode("utf-8"), np.uint8).copy()
        self.buffers.append(name_buffer)
        md = s.MetadataT()
        md.name = ZOO_METADATA_NAME
        md.buffer = len(self.buffers) - 1
        model = s.ModelT()
        model.version = 3
        model.description = "bnncube TFLite export"
        model.operatorCodes = self.opcodes
        model.subgraphs = [sg]
        model.buffers = self.buffers
        model.metadata = [md]
        size = sum(len(b.data) if b.data is not None else 0 for b in self.buffers)
        builder = flatbuffers.Builder(size + 65536)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    # -- common pieces ------------------------------------------------------------------
    def padding(
        self, x: Tensor, out: Tensor, kernel: tuple[int, int], attrs: dict[str, Any]
    ) -> tuple[int, list[int] | None]:
        """(SAME or VALID, explicit pads still to apply or None) for a conv/pool op."""
        if len(x.shape) != 4 or len(out.shape) != 4:
            raise self.fail(f"NHWC tensors expected, got {list(x.shape)} -> {list(out.shape)}")
        sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
        dh, dw = (int(v) for v in attrs.get("dilations", (1, 1)))
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        eff = ((kernel[0] - 1) * dh + 1, (kernel[1] - 1) * dw + 1)
        h, w = x.shape[1] + pads[0] + pads[1], x.shape[2] + pads[2] + pads[3]
        if ((h - eff[0]) // sh + 1, (w - eff[1]) // sw + 1) != tuple(out.shape[1:3]):
            raise self.fail(f"output {out.name!r} shape does not follow from the pads {pads}")
        same = [
            *same_pads(x.shape[1], kernel[0], sh, dh),
            *same_pads(x.shape[2], kernel[1], sw, dw),
        ]
        if pads == [0, 0, 0, 0]:
            return _VALID, None
        if pads == same:
            return _SAME, None
        return _VALID, pads

    def pad_first(self, x_name: str, pads: list[int] | None, fill_binary_ones: bool = False) -> int:
        """The input index, behind an explicit PAD (with the real zero, or +1 bits) if needed."""
        xi = self.tensor(x_name)
        if pads is None:
            return xi
        x = self.g.tensors[x_name]
        top, bottom, left, right = pads
        shape = (x.shape[0], x.shape[1] + top + bottom, x.shape[2] + left + right, x.shape[3])
        if x.dtype == "binary":
            if not fill_binary_ones:
                raise self.fail("explicit (not SAME/VALID) zero padding of a binary input")
            shape = (*shape[:3], packed_words(x.shape[3]))
        paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
        pi = self.const(f"{x_name}/paddings", paddings, "int32")
        quant = None if x.dtype == "binary" else x.quant
        out = self.new(f"{x_name}/padded", shape, x.dtype, quant)
        self.builtin("PAD", [xi, pi], [out], self.s.PadOptionsT(), "PadOptions")
        return out

    def clamp_plan(
        self, out_name: str, lo: int, hi: int, choices: tuple[str, ...] = ("none", "relu", "relu6")
    ) -> tuple[int, int, Callable[[], None]]:
        """(index the producer writes, fused activation code, writes the clamp ops after it)."""
        out = self.g.tensors[out_name]
        for act in choices:
            if activation_range(act, out.quant, out.dtype) == (lo, hi):
                return self.tensor(out_name), _FUSED[act], lambda: None
        qmin, qmax = _INT_RANGE[out.dtype]
        if not qmin <= lo <= hi <= qmax:
            raise self.fail(f"clamp [{lo}, {hi}] is outside the {out.dtype} range")
        first = self.new(f"{out_name}/unclamped", out.shape, out.dtype, out.quant)
        steps = [("MAXIMUM", lo)] if lo > qmin else []
        steps += [("MINIMUM", hi)] if hi < qmax else []

        def after() -> None:
            src = first
            for k, (kind, bound) in enumerate(steps):
                bi = self.const(f"{out_name}/{kind.lower()}", np.array([bound]), out.dtype)
                self.tensors[bi].quantization = _quant_of(self.s, out.quant)
                if k == len(steps) - 1:
                    dst = self.tensor(out_name)
                else:
                    dst = self.new(f"{out_name}/clamped_low", out.shape, out.dtype, out.quant)
                self.builtin(kind, [src, bi], [dst])
                src = dst

        return first, _FUSED["none"], after

    def clamp_of(self, op: Op) -> tuple[int, int]:
        out = self.g.tensors[op.outputs[0]]
        qmin, qmax = _INT_RANGE.get(out.dtype, (-128, 127))
        lo, hi = op.attrs.get("clamp", op.attrs.get("qrange", (qmin, qmax)))
        return max(int(lo), qmin), min(int(hi), qmax)

    def consts(self, op: Op, first: int, names: tuple[str, ...]) -> list[np.ndarray]:
        got = []
        for k, what in enumerate(names):
            i = first + k
            if i >= len(op.inputs) or self.g.tensors[op.inputs[i]].data is None:
                raise self.fail(f"output transform needs a constant {what!r} input #{i}")
            got.append(np.asarray(self.g.tensors[op.inputs[i]].data))
        return got

    # -- ops ------------------------------------------------------------------------------
    def write(self, op: Op) -> None:
        self.op = op
        handler = getattr(self, f"op_{op.type}", None)
        if handler is None:
            raise self.fail(
                f"op type {op.type} has no TFLite form; supported: {', '.join(SUPPORTED)}"
            )
        if len(op.outputs) != 1:
            raise self.fail(f"{len(op.outputs)} outputs; supported: 1")
        handler(op)

    def form(self, op: Op, allowed: tuple[str, ...]) -> str:
        form = str(op.attrs.get("output_transform", "tflite"))
        if form not in allowed:
            raise self.fail(f"output_transform {form!r} is not supported; supported: {allowed}")
        return form

    def conv_options(self, op: Op, padding: int, fused: int) -> tuple[Any, str]:
        sh, sw = (int(v) for v in op.attrs.get("strides", (1, 1)))
        dh, dw = (int(v) for v in op.attrs.get("dilations", (1, 1)))
        if op.type == "Conv2D":
            o = self.s.Conv2DOptionsT()
            kind = "Conv2DOptions"
        else:
            o = self.s.DepthwiseConv2DOptionsT()
            w = self.g.tensors[op.inputs[1]]
            x = self.g.tensors[op.inputs[0]]
            o.depthMultiplier = int(op.attrs.get("depth_multiplier", w.shape[3] // x.shape[3]))
            kind = "DepthwiseConv2DOptions"
        o.padding, o.strideH, o.strideW = padding, sh, sw
        o.dilationHFactor, o.dilationWFactor = dh, dw
        o.fusedActivationFunction = fused
        return o, kind

    def mac_builtin(
        self, op: Op, x: int, w: int, bias: int, out: int, fused: int, padding: int, int8: bool
    ) -> None:
        kind = {"Conv2D": "CONV_2D", "DepthwiseConv2D": "DEPTHWISE_CONV_2D"}.get(op.type)
        if kind is None:  # Dense
            o = self.s.FullyConnectedOptionsT()
            o.fusedActivationFunction = fused
            self.builtin(
                "FULLY_CONNECTED", [x, w, bias], [out], o, "FullyConnectedOptions", int8=int8
            )
            return
        options, options_type = self.conv_options(op, padding, fused)
        self.builtin(kind, [x, w, bias], [out], options, options_type, int8=int8)

    def mac_geometry(self, op: Op) -> tuple[int, list[int] | None]:
        if op.type == "Dense":
            return _VALID, None
        w = self.g.tensors[op.inputs[1]]
        x, out = self.g.tensors[op.inputs[0]], self.g.tensors[op.outputs[0]]
        return self.padding(x, out, (w.shape[1], w.shape[2]), op.attrs)

    def op_Conv2D(self, op: Op) -> None:  # noqa: N802 - named after the IR op
        form = self.form(op, ("tflite", "affine", "float"))
        if form == "affine":
            return self.mac_affine(op)
        if form == "float":
            return self.mac_float(op)
        for key in ("channel_scale", "channel_offset"):
            if key in op.attrs:
                raise self.fail(f"unlowered per-channel transform ({key}); run the lowering")
        x = self.g.tensors[op.inputs[0]]
        padding, pads = self.mac_geometry(op)
        xi = self.pad_first(op.inputs[0], pads)
        bias = self.tensor(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] else -1
        act = str(op.attrs.get("activation", "none"))
        if act not in _FUSED:
            raise self.fail(f"activation {act!r}; supported: none, relu, relu6")
        self.mac_builtin(
            op,
            xi,
            self.tensor(op.inputs[1]),
            bias,
            self.tensor(op.outputs[0]),
            _FUSED[act],
            padding,
            int8=x.dtype != "float32",
        )

    op_DepthwiseConv2D = op_Conv2D  # noqa: N815
    op_Dense = op_Conv2D  # noqa: N815

    def mac_affine(self, op: Op) -> None:
        """int8 MAC op with ``clamp(round((acc * M + B) / 2**S))`` as a TFLite builtin."""
        g = self.g
        x, w, out = (g.tensors[n] for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
        if (x.dtype, w.dtype, out.dtype) != ("int8", "int8", "int8"):
            raise self.fail("affine transform needs int8 input, weights and output")
        mult, shift, offset = self.consts(op, 2, ("multiplier", "shift", "offset"))
        axis = 3 if op.type == "DepthwiseConv2D" else 0
        channels = w.shape[axis]
        s_in, _ = _scalar(x.quant, self.where())
        s_out, zp_out = _scalar(out.quant, self.where())
        per_tensor_fc = op.type == "Dense" and channels == 1
        wdata = np.moveaxis(np.asarray(w.data, np.int64), axis, 0).copy()
        scales = np.empty(channels, np.float64)
        bias = np.empty(channels, np.int64)
        taps = int(wdata[0].size)
        for o in range(channels):
            m = int(mult.reshape(-1)[o]) * 2.0 ** -int(shift.reshape(-1)[o])
            b = int(offset.reshape(-1)[o]) * 2.0 ** -int(shift.reshape(-1)[o])
            if m < 0:
                if (wdata[o] == -128).any():
                    raise self.fail(
                        f"channel {o} has a negative multiplier and a weight -128, which cannot "
                        "be negated in int8; TFLite needs positive weight scales"
                    )
                wdata[o] = -wdata[o]
            elif m == 0:  # a constant channel: zero weights, the value in the bias
                wdata[o] = 0
                m = 2.0**-20
            # Weights times an integer gain k (|k * w| <= 127) and the scale divided by k give
            # the same real weights but an accumulator unit k times finer, so the bias (an
            # integer in accumulator units) lands k times closer to the real offset.
            gain = _weight_gain(wdata[o], taps)
            wdata[o] *= gain
            s_w, realised = _closest_weight_scale(abs(m) / gain, s_in, s_out, per_tensor_fc)
            scales[o] = s_w
            bias[o] = int(np.rint((b - zp_out) / realised))
            if not -(2**31) <= bias[o] < 2**31:
                raise self.fail(f"channel {o}: the offset does not fit an int32 bias")
        wq = _qparams(self.s, scales, np.zeros(channels, np.int64), axis)
        wi = self.const(f"{w.name}/tflite", np.moveaxis(wdata, 0, axis), "int8", wq)
        bq = _qparams(self.s, [_f32(s_in) * _f32(s) for s in scales], np.zeros(channels), 0)
        bi = self.const(f"{op.name}/bias", bias, "int32", bq)
        padding, pads = self.mac_geometry(op)
        xi = self.pad_first(op.inputs[0], pads)
        lo, hi = self.clamp_of(op)
        target, fused, after = self.clamp_plan(op.outputs[0], lo, hi)
        self.mac_builtin(op, xi, wi, bi, target, fused, padding, int8=True)
        after()

    def mac_float(self, op: Op) -> None:
        """int8 MAC op with float32 output ``f32(f32(acc) * scale) + offset``, exactly."""
        g = self.g
        x, w, out = (g.tensors[n] for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
        if (x.dtype, w.dtype, out.dtype) != ("int8", "int8", "float32"):
            raise self.fail("float transform needs int8 input and weights and a float32 output")
        scale, offset = self.consts(op, 2, ("scale", "offset"))
        s_in, _ = _scalar(x.quant, self.where())
        if not _is_pow2(_f32(s_in)):
            raise self.fail(
                f"float transform needs a power-of-two input scale (got {s_in}) to stay exact"
            )
        padding, pads = self.mac_geometry(op)
        xi = self.pad_first(op.inputs[0], pads)  # int8 PAD fills with the zero point
        xf = self.new(f"{op.name}/input_float", tuple(self.tensors[xi].shape), "float32")
        self.builtin("DEQUANTIZE", [xi], [xf])
        wf = self.const(f"{w.name}/float", np.asarray(w.data, np.float32), "float32")
        acc = self.new(f"{op.name}/accumulator", out.shape, "float32")
        channels = int(np.asarray(scale).size)
        zero = self.const(f"{op.name}/zero_bias", np.zeros(channels), "float32")  # TFLite < 2.17
        self.mac_builtin(op, xf, wf, zero, acc, _FUSED["none"], padding, int8=False)
        sc = self.const(f"{op.name}/scale", np.asarray(scale, np.float64) / s_in, "float32")
        scaled = self.new(f"{op.name}/scaled", out.shape, "float32")
        self.builtin("MUL", [acc, sc], [scaled], self.s.MulOptionsT(), "MulOptions", int8=False)
        of = self.const(f"{op.name}/offset", np.asarray(offset).reshape(channels), "float32")
        act = str(op.attrs.get("activation", "none"))
        add = self.s.AddOptionsT()
        add.fusedActivationFunction = _FUSED[act]
        self.builtin("ADD", [scaled, of], [self.tensor(op.outputs[0])], add, "AddOptions", False)

    def op_BinaryConv2D(self, op: Op) -> None:  # noqa: N802
        """LceBconv2d: bitpacked input, OHWI filters packed along I; see the module notes.

        LCE computes ``acc = K - 2 * p`` (``p`` the XOR popcount over all ``K = KH*KW*C``
        filter taps) and writes, per output type: bitpacked ``p > thresholds[o]``; float
        ``f32(f32(p) * A[o] + B[o])`` with ``A = -2 * post_activation_multiplier`` and ``B =
        post_activation_bias + K * post_activation_multiplier``; int8 the same value on the
        output scale, rounded half away from zero (measured, docs/tflite-form.md).
        """
        form = self.form(op, ("affine", "float", "threshold"))
        g = self.g
        x, w, out = (g.tensors[n] for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
        if x.dtype != "binary" or w.dtype != "binary" or w.data is None:
            raise self.fail("binary input and constant binary filters expected")
        if tuple(op.attrs.get("dilations", (1, 1))) != (1, 1):
            raise self.fail("dilated binary convolution is not supported; supported: dilation 1")
        o_ch, kh, kw, c = w.shape
        k_full = kh * kw * c
        pad_value = int(op.attrs.get("pad_value", 0))
        padding, pads = self.padding(x, out, (kh, kw), op.attrs)
        xi = self.pad_first(op.inputs[0], pads, fill_binary_ones=pad_value == 1)
        # LCE 0.16 has zero padding only for float output in all its kernels: give such a
        # convolution float output and convert it after (exact for thresholds, see the notes).
        zero_padded = padding == _SAME and pad_value == 0
        lce_out = "float" if zero_padded or form == "float" else form
        flip = np.zeros(o_ch, bool)
        mul = add = np.zeros(o_ch)
        if form == "threshold":
            t, d = (a.reshape(-1).astype(np.int64) for a in self.consts(op, 2, ("T", "D")))
            flip = d == -1  # filters negated: acc > T becomes -acc < -T
            t_eff = np.where(flip, -t, t)
            # float: y = acc - T_eff (bit where y < 0); constant channels: y = -1 or +1
            mul = np.where(d == 0, 0.0, 1.0)
            add = np.where(d == 0, np.where(t != 0, -1.0, 1.0), -t_eff.astype(np.float64))
            # bitpacked: acc < T_eff  <=>  p > (K - T_eff) / 2  <=>  p > floor((K - T_eff) / 2)
            thresholds = np.where(d == 0, np.where(t != 0, -1, k_full), (k_full - t_eff) // 2)
        elif form == "affine":
            if out.dtype != "int8":
                raise self.fail(f"affine output must be int8, got {out.dtype}")
            m_, s_, b_ = self.consts(op, 2, ("multiplier", "shift", "offset"))
            s_out, zp_out = _scalar(out.quant, self.where())
            mul = _real(m_, s_) * s_out
            add = (_real(b_, s_) - zp_out) * s_out
        else:
            if out.dtype != "float32":
                raise self.fail(f"float output must be float32, got {out.dtype}")
            sc, of = self.consts(op, 2, ("scale", "offset"))
            mul, add = np.asarray(sc, np.float64).reshape(-1), np.asarray(of).reshape(-1)
        w_pm1 = np.asarray(w.data).astype(np.int8)
        w_pm1 = np.where(flip[:, None, None, None], -w_pm1, w_pm1).astype(np.int8)
        inputs = [xi, self.const(f"{w.name}/packed", pack_filters(w_pm1).view(np.int32), "int32")]
        if lce_out == "threshold":
            inputs += [-1, -1, self.const(f"{op.name}/thresholds", thresholds, "int32")]
        else:
            inputs += [
                self.const(f"{op.name}/post_activation_multiplier", mul, "float32"),
                self.const(f"{op.name}/post_activation_bias", add, "float32"),
                -1,
            ]
        strides = [int(v) for v in op.attrs.get("strides", (1, 1))]
        options = {
            "channels_in": int(c),
            "dilation_height_factor": 1,
            "dilation_width_factor": 1,
            "fused_activation_function": 0,  # LCE clamps the accumulator, not the output
            "pad_values": 1 if pad_value == 1 and padding == _SAME else 0,
            "padding": padding,
            "stride_height": strides[0],
            "stride_width": strides[1],
        }
        act = str(op.attrs.get("activation", "none"))
        if form == "float":
            if act not in ("none", "relu", "relu6"):
                raise self.fail(f"activation {act!r}; supported: none, relu, relu6")
            final = self.tensor(op.outputs[0])
            if act == "none":
                self.custom("LceBconv2d", inputs, [final], options)
                return
            linear = self.new(f"{op.name}/linear", out.shape, "float32")
            self.custom("LceBconv2d", inputs, [linear], options)
            self.builtin(act.upper(), [linear], [final], int8=False)
            return
        if form == "threshold":
            if lce_out == "threshold":
                self.custom("LceBconv2d", inputs, [self.tensor(op.outputs[0])], options)
                return
            y = self.new(f"{op.name}/float", out.shape, "float32")
            self.custom("LceBconv2d", inputs, [y], options)
            self.custom("LceQuantize", [y], [self.tensor(op.outputs[0])], None)
            return
        lo, hi = self.clamp_of(op)
        target, _, after = self.clamp_plan(op.outputs[0], lo, hi, ("none",))
        if lce_out == "float":
            y = self.new(f"{op.name}/float", out.shape, "float32")
            self.custom("LceBconv2d", inputs, [y], options)
            self.builtin("QUANTIZE", [y], [target])
        else:
            self.custom("LceBconv2d", inputs, [target], options)
        after()

    def op_Bitpack(self, op: Op) -> None:  # noqa: N802
        x = self.g.tensors[op.inputs[0]]
        if x.dtype not in ("int8", "float32"):
            raise self.fail(f"input dtype {x.dtype}; supported: int8, float32")
        self.custom("LceQuantize", [self.tensor(op.inputs[0])], [self.tensor(op.outputs[0])], None)

    def op_Add(self, op: Op) -> None:  # noqa: N802
        form = self.form(op, ("tflite", "affine"))
        a, b, out = (self.g.tensors[n] for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
        ai, bi = self.tensor(op.inputs[0]), self.tensor(op.inputs[1])
        if form == "tflite":
            act = str(op.attrs.get("activation", "none"))
            o = self.s.AddOptionsT()
            o.fusedActivationFunction = _FUSED[act]
            self.builtin(
                "ADD",
                [ai, bi],
                [self.tensor(op.outputs[0])],
                o,
                "AddOptions",
                out.dtype != "float32",
            )
            return
        mult, shift, offset = self.consts(op, 2, ("multiplier", "shift", "offset"))
        s = int(shift.reshape(-1)[0])
        s_out, zp_out = _scalar(out.quant, self.where())
        for k, t in enumerate((a, b)):
            want = int(mult.reshape(-1)[k]) * 2.0**-s
            s_t, zp_t = _scalar(t.quant, self.where())
            have = _f32(s_t) / _f32(s_out)
            if abs(want - have) > 1e-6 * abs(have):
                raise self.fail(
                    f"multiplier {want:.9g} of input {t.name!r} is not its scale ratio "
                    f"{have:.9g}; TFLite's ADD only adds rescaled inputs"
                )
        if abs(int(offset.reshape(-1)[0]) * 2.0**-s - zp_out) > 1e-6:
            raise self.fail("offset is not the output zero point; TFLite's ADD has no offset")
        lo, hi = self.clamp_of(op)
        target, fused, after = self.clamp_plan(op.outputs[0], lo, hi)
        o = self.s.AddOptionsT()
        o.fusedActivationFunction = fused
        self.builtin("ADD", [ai, bi], [target], o, "AddOptions")
        after()

    def pool(self, op: Op, kind: str) -> None:
        self.form(op, ("tflite",))
        x, out = self.g.tensors[op.inputs[0]], self.g.tensors[op.outputs[0]]
        k = tuple(int(v) for v in op.attrs["pool"])
        attrs = dict(op.attrs)
        attrs.setdefault("strides", k)
        padding, pads = self.padding(x, out, (k[0], k[1]), attrs)
        if pads is not None:
            raise self.fail(f"pads {pads} are neither SAME nor VALID (pooling counts valid taps)")
        o = self.s.Pool2DOptionsT()
        o.padding = padding
        o.strideH, o.strideW = (int(v) for v in attrs["strides"])
        o.filterHeight, o.filterWidth = k
        o.fusedActivationFunction = _FUSED[str(op.attrs.get("activation", "none"))]
        self.builtin(
            kind,
            [self.tensor(op.inputs[0])],
            [self.tensor(op.outputs[0])],
            o,
            "Pool2DOptions",
            x.dtype != "float32",
        )

    def op_AveragePool2D(self, op: Op) -> None:  # noqa: N802
        self.pool(op, "AVERAGE_POOL_2D")

    def op_MaxPool2D(self, op: Op) -> None:  # noqa: N802
        self.pool(op, "MAX_POOL_2D")

    def op_Mean(self, op: Op) -> None:  # noqa: N802
        self.form(op, ("tflite",))
        x = self.g.tensors[op.inputs[0]]
        axes = np.array([int(a) for a in op.attrs.get("axes", (1, 2))], np.int32)
        ai = self.const(f"{op.outputs[0]}/axes", axes, "int32")
        o = self.s.ReducerOptionsT()
        o.keepDims = bool(op.attrs.get("keepdims", False))
        self.builtin(
            "MEAN",
            [self.tensor(op.inputs[0]), ai],
            [self.tensor(op.outputs[0])],
            o,
            "ReducerOptions",
            x.dtype != "float32",
        )

    def op_Reshape(self, op: Op) -> None:  # noqa: N802
        out = self.g.tensors[op.outputs[0]]
        if out.dtype == "binary":
            raise self.fail("reshaping a bitpacked binary tensor is not supported")
        shape = np.array(out.shape, np.int32)
        si = self.const(f"{op.outputs[0]}/shape", shape, "int32")
        o = self.s.ReshapeOptionsT()
        o.newShape = [int(d) for d in out.shape]
        self.builtin(
            "RESHAPE",
            [self.tensor(op.inputs[0]), si],
            [self.tensor(op.outputs[0])],
            o,
            "ReshapeOptions",
        )

    def op_Pad(self, op: Op) -> None:  # noqa: N802
        x = self.g.tensors[op.inputs[0]]
        if x.dtype == "binary":
            raise self.fail("padding a bitpacked binary tensor is not supported")
        top, bottom, left, right = (int(p) for p in op.attrs["pads"])
        paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
        pi = self.const(f"{op.outputs[0]}/paddings", paddings, "int32")
        self.builtin(
            "PAD",
            [self.tensor(op.inputs[0]), pi],
            [self.tensor(op.outputs[0])],
            self.s.PadOptionsT(),
            "PadOptions",
            x.dtype != "float32",
        )

    def op_Softmax(self, op: Op) -> None:  # noqa: N802
        x = self.g.tensors[op.inputs[0]]
        o = self.s.SoftmaxOptionsT()
        o.beta = float(op.attrs.get("beta", 1.0))
        self.builtin(
            "SOFTMAX",
            [self.tensor(op.inputs[0])],
            [self.tensor(op.outputs[0])],
            o,
            "SoftmaxOptions",
            x.dtype != "float32",
        )

    def op_Quantize(self, op: Op) -> None:  # noqa: N802
        form = self.form(op, ("tflite", "affine"))
        x, out = self.g.tensors[op.inputs[0]], self.g.tensors[op.outputs[0]]
        if out.dtype not in _INT_RANGE:
            raise self.fail(f"output dtype {out.dtype}; supported: int8, uint8")
        if form == "affine" and x.dtype != "float32":
            mult, shift, offset = self.consts(op, 1, ("multiplier", "shift", "offset"))
            s = int(shift.reshape(-1)[0])
            s_in, _ = _scalar(x.quant, self.where())
            s_out, zp_out = _scalar(out.quant, self.where())
            want, have = int(mult.reshape(-1)[0]) * 2.0**-s, _f32(s_in) / _f32(s_out)
            if abs(want - have) > 1e-6 * have:
                raise self.fail(f"multiplier {want:.9g} is not the scale ratio {have:.9g}")
            if abs(int(offset.reshape(-1)[0]) * 2.0**-s - zp_out) > 1e-6:
                raise self.fail("offset is not the output zero point; QUANTIZE has no offset")
        lo, hi = self.clamp_of(op)
        target, _, after = self.clamp_plan(op.outputs[0], lo, hi, ("none",))
        self.builtin("QUANTIZE", [self.tensor(op.inputs[0])], [target])
        after()

    def op_Dequantize(self, op: Op) -> None:  # noqa: N802
        x = self.g.tensors[op.inputs[0]]
        xi, oi = self.tensor(op.inputs[0]), self.tensor(op.outputs[0])
        if x.dtype == "binary":
            self.custom("LceDequantize", [xi], [oi], None)
            return
        self.builtin("DEQUANTIZE", [xi], [oi])


SUPPORTED = sorted(n[3:] for n in vars(_Writer) if n.startswith("op_"))


def _weight_gain(w: np.ndarray, taps: int) -> int:
    """Largest integer k with ``|k * w| <= 127`` whose accumulator still fits int32 easily."""
    largest = int(np.abs(w).max()) if w.size else 0
    if largest == 0:
        return 1
    gain = 127 // largest
    while gain > 1 and gain * largest * 255 * taps >= 2**30:
        gain -= 1
    return max(gain, 1)


def _closest_weight_scale(
    m: float, s_in: float, s_out: float, float_product: bool
) -> tuple[float, float]:
    """float32 weight scale whose TFLite multiplier is closest to ``m``; (scale, realised)."""
    start = np.float32(m * s_out / s_in)
    candidates = [start]
    up = down = start
    for _ in range(3):  # the nearest float32 and three neighbours on each side
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(0))
        candidates += [up, down]
    best: tuple[float, float, float] | None = None
    for s_w in candidates:
        if not s_w > 0:
            continue
        realised = tflite_multiplier(s_in, float(s_w), s_out, float_product)
        err = abs(realised - m)
        if best is None or err < best[0]:
            best = (err, float(s_w), realised)
    assert best is not None
    return best[1], best[2]


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def export_tflite(graph: Graph) -> bytes:
    """The TFLite flatbuffer of a deployed graph: int8 builtins and LCE custom ops.

    Raises :class:`BnnError` naming the op for anything without a TFLite form.
    """
    graph = unfused(graph)  # a generated graph's fused ops: the model's own ops again
    try:
        graph.validate()
    except ValueError as e:
        raise BnnError(f"TFLite export: invalid graph ({e})") from e
    writer = _Writer(graph)
    for op in graph.ops:
        writer.write(op)
    writer.op = None
    return writer.finish()


def save_tflite(graph: Graph, path: str | Path) -> Path:
    """Write :func:`export_tflite` of ``graph`` to ``path`` (whole file or nothing)."""
    from bnncube.fsutil import atomic_output_file

    data = export_tflite(graph)
    path = Path(path)
    with atomic_output_file(path) as tmp:
        tmp.write_bytes(data)
    return path
