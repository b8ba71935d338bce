"""Compare bnncube's reference with the Keras/QKeras forward pass of the same model.

Every IR tensor of a graph read from a Keras model is named after the Keras layer that produces
it, so the Keras values of all of them come out of one forward pass. Two comparisons:

* **per op** (teacher forcing): each reference op is fed the *Keras* values of its inputs and its
  output is compared with the Keras value of its output. This isolates the arithmetic of one op
  from the drift of the ops before it; the contract (issue 3) is at most 1 LSB per int8 tensor;
* **end to end**: the reference runs the whole graph from the input and every tensor is compared
  with Keras. Small per-op differences can grow here, notably where a value close to 0 is
  binarized and one flipped bit changes a binary convolution's sum by 2.

Differences are in LSB of the tensor's grid for int8 tensors, flipped bits for binary tensors,
and units of the float32 output's "LSB-equivalent" (the product of the scales that reach it,
see :func:`float_lsb`) for float outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bnncube.converters.binary_reference import bitpack, unpack
from bnncube.converters.ir import Graph, Op, Tensor, transform_of
from bnncube.converters.reference import OPS, _Ctx, packed_shape, run_graph


@dataclass
class TensorDiff:
    """How a reference tensor differs from Keras' (differences in LSB or flipped bits)."""

    name: str
    dtype: str
    max_diff: float
    differing: int
    size: int
    over_one: int = 0  # elements differing by more than 1 (LSB, flipped bit, LSB-equivalent)

    @property
    def fraction(self) -> float:
        return self.differing / self.size if self.size else 0.0


def keras_values(model: Any, graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Keras' value of every IR tensor named after a layer, in the IR's representation.

    int8 tensors: the integers ``round(v / scale) + zero_point`` (exact for QKeras outputs, which
    lie on their grid); binary tensors: packed bits of the +1/-1 values; float32: as is.
    """
    import tensorflow as tf

    names = [n for n, t in graph.tensors.items() if not t.is_const]
    layers = {layer.name: layer for layer in model.layers}
    wanted = [n for n in names if n in layers]
    probe = tf.keras.Model(model.inputs, [layers[n].output for n in wanted])
    outs = probe(np.asarray(x, np.float32), training=False)
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    result: dict[str, np.ndarray] = {}
    for name, value in zip(wanted, outs, strict=True):
        result[name] = to_ir_value(graph.tensors[name], np.asarray(value))
    return result


def to_ir_value(tensor: Tensor, value: np.ndarray) -> np.ndarray:
    value = value.reshape(tensor.shape)
    if tensor.dtype == "binary":
        return bitpack(value.astype(np.float32))
    if tensor.dtype in ("int8", "uint8"):
        scale = float(tensor.quant.scale.reshape(-1)[0])
        zp = int(tensor.quant.zero_point.reshape(-1)[0])
        return np.rint(value.astype(np.float64) / scale).astype(np.int64) + zp
    return value.astype(np.float32)


def float_lsb(graph: Graph, op: Op) -> float:
    """The float output's resolution: the real value of one accumulator unit, for ops with the
    ``float`` transform (``max |scale|``); 0 (exact comparison) otherwise."""
    if transform_of(op) != "float":
        return 0.0
    return float(np.max(np.abs(np.asarray(graph.tensors[op.inputs[2]].data, np.float64))))


def diff(tensor: Tensor, ours: np.ndarray, theirs: np.ndarray, lsb: float = 0.0) -> TensorDiff:
    if tensor.dtype == "binary":
        a = unpack(np.asarray(ours, np.uint32).reshape(packed_shape(tensor)), tensor.shape[-1])
        b = unpack(np.asarray(theirs, np.uint32).reshape(packed_shape(tensor)), tensor.shape[-1])
        d = (a != b).astype(np.float64)
    elif tensor.dtype == "float32":
        d = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
        d = d / lsb if lsb > 0 else d
    else:
        d = np.abs(np.asarray(ours, np.int64) - np.asarray(theirs, np.int64)).astype(np.float64)
    nonzero = int(np.count_nonzero(d))
    over = int(np.count_nonzero(d > 1.0))
    return TensorDiff(
        tensor.name, tensor.dtype, float(d.max(initial=0.0)), nonzero, int(d.size), over
    )


def per_op_diffs(graph: Graph, values: dict[str, np.ndarray]) -> list[TensorDiff]:
    """Run each op on the Keras values of its inputs; compare with the Keras value of its output.

    Ops whose inputs or output Keras does not expose (e.g. tensors renamed by lowering) are
    skipped; the caller checks that the ones it cares about are present.
    """
    diffs = []
    for op in graph.ops:
        out = op.outputs[0]
        inputs = [n for n in op.inputs if not graph.tensors[n].is_const]
        if out not in values or any(n not in values for n in inputs):
            continue
        given = {n: values[n] for n in inputs}
        ours = OPS[op.type](_Ctx(graph, op, given))
        tensor = graph.tensors[out]
        diffs.append(diff(tensor, ours, values[out], float_lsb(graph, op)))
    return diffs


def end_to_end_diffs(graph: Graph, values: dict[str, np.ndarray]) -> list[TensorDiff]:
    """Run the whole graph from Keras' input value; compare every tensor Keras exposes."""
    ours = run_graph(graph, [values[graph.inputs[0]]], outputs_only=False)
    diffs = []
    for op in graph.ops:
        out = op.outputs[0]
        if out in values:
            diffs.append(diff(graph.tensors[out], ours[out], values[out], float_lsb(graph, op)))
    return diffs
