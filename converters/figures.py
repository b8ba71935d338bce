"""Per-layer figures of a deployed IR graph: MACC, parameters, weight bytes, activation memory.

MACC convention (docs/analyze.md):

* Conv2D: ``Ho*Wo*Co*Kh*Kw*Ci``; DepthwiseConv2D: ``Ho*Wo*Co*Kh*Kw``; Dense: ``in*out``.
* BinaryConv2D: the same as Conv2D; one binary multiply-accumulate (XNOR + popcount of one bit)
  counts as one MACC, as the paper does.
* Add, Quantize, Dequantize, Bitpack, Activation, Softmax: one per output element; BatchNorm left
  unfolded: one per element; AveragePool2D/MaxPool2D: ``Ho*Wo*C*Kh*Kw``; Mean: one per input
  element. Reshape and Pad: 0 (data movement).
* Bias additions and the per-channel output transforms are not counted (as in X-CUBE-AI reports).

Weight bytes are counted as deployed:

* binary filters: packed, ``ceil(Ci/32)`` 32-bit words per (output channel, tap): the bitpacked
  layout of DESIGN section 5 (1 bit per weight plus padding to a word);
* int8 filters: 1 byte per weight; float32: 4 bytes; int32 bias: 4 bytes per output channel;
* the constants of an explicit output transform (QKeras models, docs/ir.md) as stored: ``affine``
  int32 multiplier + int8 shift + int64 offset = 13 bytes per output channel; ``float`` 8;
  ``threshold`` 5;
* TFLite-style ops (``tflite`` transform), whose requantization constants the code generator
  derives from the scales: int32 multiplier and shift (8 bytes per output channel) when the
  output is int8, a dequantization scale (4 bytes per channel) when it is float32.

Parameters (``params``) count the weights and the per-channel bias, or the offset that holds it
in an explicit transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bnncube.converters.ir import MAC_OPS, Graph, Op, data_inputs, fused_ops, transform_of

ELEMENTWISE = ("Add", "Quantize", "Dequantize", "Bitpack", "Activation", "Softmax", "BatchNorm")
LAYOUT = ("Reshape", "Pad")


@dataclass
class LayerFigures:
    id: int
    name: str
    op: str
    precision: str  # "binary" | "int8" | "float32" | ...
    output_shape: tuple[int, ...]
    output_dtype: str
    params: int  # number of parameters (weights + bias elements)
    macc: int
    weights_bytes: int
    c_type: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "op": self.op,
            "precision": self.precision,
            "output_shape": list(self.output_shape),
            "output_dtype": self.output_dtype,
            "params": self.params,
            "macc": self.macc,
            "weights_bytes": self.weights_bytes,
        }


def op_macc(graph: Graph, op: Op) -> int:
    if fused_ops(op):  # a fused op: the sum of its parts
        return sum(op_macc(graph, part) for part in fused_ops(op))
    out = graph.tensors[op.outputs[0]]
    if op.type in ("Conv2D", "BinaryConv2D"):
        w = graph.tensors[op.inputs[1]]
        o, kh, kw, ci = w.shape
        return math.prod(out.shape[:-1]) * o * kh * kw * ci
    if op.type == "DepthwiseConv2D":
        w = graph.tensors[op.inputs[1]]
        _, kh, kw, _ = w.shape
        return out.num_elements * kh * kw
    if op.type == "Dense":
        w = graph.tensors[op.inputs[1]]
        rows = out.num_elements // w.shape[0]
        return rows * w.shape[0] * w.shape[1]
    if op.type in ("AveragePool2D", "MaxPool2D"):
        kh, kw = op.attrs["pool"]
        return out.num_elements * kh * kw
    if op.type == "Mean":
        return graph.tensors[op.inputs[0]].num_elements
    if op.type in ELEMENTWISE:
        return out.num_elements
    return 0


def op_precision(graph: Graph, op: Op) -> str:
    if fused_ops(op):  # a fused op: its first part's (the MAC op)
        return op_precision(graph, fused_ops(op)[0])
    if op.type in ("BinaryConv2D", "Bitpack"):
        return "binary"
    if op.type in MAC_OPS:
        return graph.tensors[op.inputs[1]].dtype
    dtypes = {t.dtype for t in graph.activation_inputs(op)}
    dtypes.add(graph.tensors[op.outputs[0]].dtype)
    for dtype in ("int8", "uint8", "float32"):
        if dtype in dtypes:
            return dtype
    return sorted(dtypes)[0]


def _weights_bytes(graph: Graph, op: Op) -> int:
    if fused_ops(op):
        return sum(_weights_bytes(graph, part) for part in fused_ops(op))
    total = sum(t.nbytes for t in graph.const_inputs(op))
    if op.type in MAC_OPS and transform_of(op) == "tflite":
        w = graph.tensors[op.inputs[1]]
        channels = w.shape[3] if op.type == "DepthwiseConv2D" else w.shape[0]
        out_dtype = graph.tensors[op.outputs[0]].dtype
        quantized = w.dtype in ("int8", "uint8", "binary")
        if quantized:
            if out_dtype in ("int8", "uint8"):
                total += 8 * channels  # requantization multiplier + shift
            elif out_dtype == "float32":
                total += 4 * channels  # dequantization scale
    return total


def op_params(graph: Graph, op: Op) -> int:
    if fused_ops(op):
        return sum(op_params(graph, part) for part in fused_ops(op))
    transform = transform_of(op)
    total = 0
    for i, name in enumerate(op.inputs):
        tensor = graph.tensors[name]
        if not tensor.is_const:
            continue
        extra = i - data_inputs(op)
        if extra < 0 or (transform == "tflite" and extra == 0):
            total += tensor.num_elements  # weights, TFLite bias
        elif transform in ("affine", "float") and name.endswith("/offset") and op.type in MAC_OPS:
            total += tensor.num_elements  # the offset holds the bias
    return total


def layer_figures(graph: Graph) -> list[LayerFigures]:
    rows = []
    for i, op in enumerate(graph.ops):
        out = graph.tensors[op.outputs[0]]
        rows.append(
            LayerFigures(
                id=i,
                name=op.name,
                op=op.type,
                precision=op_precision(graph, op),
                output_shape=out.shape,
                output_dtype=out.dtype,
                params=op_params(graph, op),
                macc=op_macc(graph, op),
                weights_bytes=_weights_bytes(graph, op),
            )
        )
    return rows


@dataclass
class Liveness:
    peak_bytes: int
    peak_op: int  # index of the op at which the peak happens
    per_op: list[int]  # live activation bytes while each op runs


def activation_liveness(graph: Graph) -> Liveness:
    """Peak of live activation bytes, walking the ops in order (no buffer sharing in place).

    A tensor is live from the op that produces it (the graph input: from the start) to the last
    op that reads it (graph outputs: to the end). While an op runs its inputs and outputs are all
    live. This is the estimate ``analyze`` reports; ``generate`` later plans a real arena.
    """
    last_use: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        for name in op.inputs:
            last_use[name] = i
    end = len(graph.ops)
    for name in graph.outputs:
        last_use[name] = end
    live: dict[str, int] = {n: graph.tensors[n].nbytes for n in graph.inputs}
    per_op = []
    for i, op in enumerate(graph.ops):
        for name in op.outputs:
            live[name] = graph.tensors[name].nbytes
        per_op.append(sum(live.values()))
        for name in list(live):
            if last_use.get(name, -1) <= i:
                del live[name]
    if not per_op:
        total = sum(graph.tensors[n].nbytes for n in graph.inputs)
        return Liveness(total, 0, [])
    peak = max(per_op)
    return Liveness(peak, per_op.index(peak), per_op)
