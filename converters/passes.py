"""Lowering passes: from the graph as a front end wrote it to the graph as it will be deployed.

``lower_graph`` runs, in order:

1. ``fold_pad``: an explicit zero ``Pad`` feeding only convolutions/pooling becomes their ``pads``
   (exact: padding with real zero is what the convolution's own padding does, in float and in
   int8 where the pad value is the zero point).
2. ``fold_batchnorm``: a ``BatchNorm`` right after a MAC op (its only consumer) is folded.
   Float weights: into the weights and bias (with f = g/sqrt(v+eps): w' = w*f,
   b' = (b-mean)*f + beta).
   Quantized weights (int8, binary) are never touched: the fold becomes a per-channel output
   transform ``channel_scale``/``channel_offset`` (y = acc * scale + offset) kept in the op's
   attributes, from which the code generator derives integer multipliers.
3. ``fuse_activations``: a ReLU/ReLU6 right after a MAC op or Add becomes its ``activation``.
4. ``fuse_quantize``: a ``Quantize`` right after a MAC op or Add (its only consumer) makes the op
   write the quantized tensor directly (the int8 requantization of TFLite's kernels).

Each pass only fuses when the intermediate tensor has a single consumer and is not a graph output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bnncube.converters.ir import MAC_OPS, Graph, Op

FUSE_TARGETS = MAC_OPS + ("Add",)


def _single_consumer(graph: Graph, tensor: str) -> Op | None:
    if tensor in graph.outputs:
        return None
    users = graph.consumers(tensor)
    return users[0] if len(users) == 1 else None


def _bypass(graph: Graph, op: Op, keep_tensor: str) -> None:
    """Remove ``op`` whose output is replaced by ``keep_tensor`` (the producer's output)."""
    old = op.outputs[0]
    graph.ops.remove(op)
    for other in graph.ops:
        other.inputs = [keep_tensor if t == old else t for t in other.inputs]
    graph.outputs = [keep_tensor if t == old else t for t in graph.outputs]


def _rewire_output(graph: Graph, producer: Op, removed: Op) -> None:
    """``producer`` now writes what ``removed`` wrote; ``removed`` disappears."""
    producer.outputs = list(removed.outputs)
    graph.ops.remove(removed)


def fold_pad(graph: Graph) -> bool:
    changed = False
    for op in list(graph.ops):
        if op.type != "Pad":
            continue
        users = graph.consumers(op.outputs[0])
        if not users or op.outputs[0] in graph.outputs:
            continue
        if not all(
            u.type in ("Conv2D", "DepthwiseConv2D", "AveragePool2D")
            and u.inputs[0] == op.outputs[0]
            for u in users
        ):
            continue
        if any(u.type == "AveragePool2D" for u in users):
            continue  # average pooling divides by the valid taps only: not equivalent
        for user in users:
            user.attrs["pads"] = [
                a + b
                for a, b in zip(user.attrs.get("pads", [0, 0, 0, 0]), op.attrs["pads"], strict=True)
            ]
        _bypass(graph, op, op.inputs[0])
        changed = True
    return changed


def fold_batchnorm(graph: Graph) -> bool:
    changed = False
    for bn in list(graph.ops):
        if bn.type != "BatchNorm":
            continue
        producer = graph.producer(bn.inputs[0])
        if producer is None or producer.type not in MAC_OPS:
            continue
        if _single_consumer(graph, bn.inputs[0]) is not bn:
            continue
        if producer.attrs.get("activation", "none") != "none":
            continue
        a = bn.attrs
        factor = a["gamma"] / np.sqrt(a["variance"] + a["epsilon"])
        shift = a["beta"] - a["mean"] * factor
        weights = graph.tensors[producer.inputs[1]]
        channels = factor.size
        if weights.dtype == "float32" and "channel_scale" not in producer.attrs:
            axis = 3 if producer.type == "DepthwiseConv2D" else 0
            shape = [1] * weights.data.ndim
            shape[axis] = channels
            weights.data = (weights.data * factor.reshape(shape)).astype(np.float32)
            if len(producer.inputs) > 2:
                bias = graph.tensors[producer.inputs[2]]
                bias.data = (bias.data * factor + shift).astype(np.float32)
            else:
                name = graph.add_const(f"{producer.name}/bias", shift.astype(np.float32), "float32")
                producer.inputs.append(name)
        else:
            old_scale = producer.attrs.get("channel_scale", np.ones(channels))
            old_offset = producer.attrs.get("channel_offset", np.zeros(channels))
            producer.attrs["channel_scale"] = old_scale * factor
            producer.attrs["channel_offset"] = old_offset * factor + shift
        producer.attrs["folded_batchnorm"] = bn.name
        _rewire_output(graph, producer, bn)
        changed = True
    return changed


def fuse_activations(graph: Graph) -> bool:
    changed = False
    for act in list(graph.ops):
        if act.type != "Activation" or act.attrs["activation"] not in ("relu", "relu6"):
            continue
        producer = graph.producer(act.inputs[0])
        if producer is None or producer.type not in FUSE_TARGETS:
            continue
        if _single_consumer(graph, act.inputs[0]) is not act:
            continue
        if producer.attrs.get("activation", "none") != "none":
            continue
        producer.attrs["activation"] = act.attrs["activation"]
        _rewire_output(graph, producer, act)
        changed = True
    return changed


def fuse_quantize(graph: Graph) -> bool:
    changed = False
    for q in list(graph.ops):
        if q.type != "Quantize":
            continue
        producer = graph.producer(q.inputs[0])
        if producer is None or producer.type not in FUSE_TARGETS:
            continue
        if graph.tensors[q.inputs[0]].dtype != "float32":
            continue
        if _single_consumer(graph, q.inputs[0]) is not q:
            continue
        if (
            q.attrs.get("activation", "none") == "relu"
            and producer.attrs.get("activation", "none") == "none"
        ):
            producer.attrs["activation"] = "relu"
        producer.attrs["output_quantizer"] = q.attrs.get("quantizer", "")
        _rewire_output(graph, producer, q)
        changed = True
    return changed


PASSES: tuple[Callable[[Graph], bool], ...] = (
    fold_pad,
    fold_batchnorm,
    fuse_activations,
    fuse_quantize,
)


def lower_graph(graph: Graph) -> Graph:
    """Run the lowering passes to a fixed point, then check and tidy the graph."""
    changed = True
    while changed:
        changed = False
        for lowering in PASSES:
            changed = lowering(graph) or changed
    graph.validate()
    graph.prune()
    return graph
