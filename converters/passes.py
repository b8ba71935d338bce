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
5. ``fuse_bitpack``: a ``Bitpack`` right after a ``BinaryConv2D`` whose output is still float
   (BatchNorm folded, no quantizer between) makes the convolution write packed bits directly.

Then, for QKeras models only, ``quantized_output_transforms`` replaces the folded float
``channel_scale``/``channel_offset``, the bias and the tensor scales of every quantized op by the
integer constants of its output transform (docs/ir.md, "Deployed op semantics";
:mod:`bnncube.converters.transforms`).

Each pass only fuses when the intermediate tensor has a single consumer and is not a graph output.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np

from bnncube.converters.ir import MAC_OPS, Graph, Op, Tensor, fused_ops, transform_of
from bnncube.converters.transforms import (
    affine_constants,
    shared_shift_constants,
    threshold_constants,
)
from bnncube.errors import BnnError

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
        if "qrange" in q.attrs:
            producer.attrs["output_qrange"] = q.attrs["qrange"]
        _rewire_output(graph, producer, q)
        changed = True
    return changed


def fuse_bitpack(graph: Graph) -> bool:
    changed = False
    for pack in list(graph.ops):
        if pack.type != "Bitpack":
            continue
        producer = graph.producer(pack.inputs[0])
        if producer is None or producer.type != "BinaryConv2D":
            continue
        if producer.attrs.get("output_transform") == "lce":  # deployed LCE float output
            continue
        if graph.tensors[pack.inputs[0]].dtype != "float32":
            continue
        if _single_consumer(graph, pack.inputs[0]) is not pack:
            continue
        _rewire_output(graph, producer, pack)
        changed = True
    return changed


PASSES: tuple[Callable[[Graph], bool], ...] = (
    fold_pad,
    fold_batchnorm,
    fuse_activations,
    fuse_quantize,
    fuse_bitpack,
)


# --------------------------------------------------------------------------------------------
# integer output transforms (QKeras models)
# --------------------------------------------------------------------------------------------


def _scale_zp(tensor: Tensor, where: str) -> tuple[float, int]:
    if tensor.dtype == "binary":
        return 1.0, 0
    if tensor.quant is None:
        raise BnnError(f"{where}: tensor {tensor.name!r} has no quantization parameters")
    scale = float(tensor.quant.scale.reshape(-1)[0])
    if not math.isfinite(scale) or scale <= 0.0:
        raise BnnError(f"{where}: tensor {tensor.name!r} has scale {scale}; it must be > 0")
    return scale, int(tensor.quant.zero_point.reshape(-1)[0])


def _weight_scales(w: Tensor, channels: int, where: str) -> np.ndarray:
    if w.dtype == "binary" and w.quant is None:
        return np.ones(channels)
    if w.quant is None:
        raise BnnError(f"{where}: weights {w.name!r} have no quantization parameters")
    if np.any(w.quant.zero_point != 0):
        raise BnnError(f"{where}: weights {w.name!r} have a non-zero zero point; supported: 0")
    scales = np.broadcast_to(np.asarray(w.quant.scale, np.float64).reshape(-1), (channels,))
    if not np.all(np.isfinite(scales)):
        raise BnnError(f"{where}: weights {w.name!r} have a NaN or Inf scale")
    return scales


def _acc_bound(graph: Graph, op: Op) -> int:
    """Largest |accumulator| the op's shapes and input type allow."""
    x = graph.tensors[op.inputs[0]]
    w = graph.tensors[op.inputs[1]]
    if op.type == "BinaryConv2D":
        return int(math.prod(w.shape[1:]))
    taps = int(math.prod(w.shape[1:3])) if op.type == "DepthwiseConv2D" else int(w.shape[-1])
    if op.type == "Conv2D":
        taps = int(math.prod(w.shape[1:]))
    in_range = 255 if x.dtype in ("int8", "uint8") else 1
    return taps * in_range * 128


def _clamp(op: Op, out: Tensor) -> tuple[int, int]:
    from bnncube.converters.reference import activation_range

    lo, hi = op.attrs.get("output_qrange", (-128, 127) if out.dtype == "int8" else (0, 255))
    a_lo, a_hi = activation_range(op.attrs.get("activation", "none"), out.quant, out.dtype)
    return max(int(lo), a_lo), min(int(hi), a_hi)


def _const(graph: Graph, op: Op, role: str, data: np.ndarray, dtype: str) -> str:
    return graph.add_const(f"{op.name}/{role}", data, dtype)


def _mac_transform(graph: Graph, op: Op) -> None:
    where = f"layer {op.name!r}"
    x, w, out = (
        graph.tensors[op.inputs[0]],
        graph.tensors[op.inputs[1]],
        graph.tensors[op.outputs[0]],
    )
    if w.dtype not in ("int8", "binary"):
        if x.dtype != "float32" or out.dtype != "float32":
            raise BnnError(
                f"{where}: float weights between quantized tensors are not supported; "
                "quantize the weights (kernel_quantizer) or keep the layer float"
            )
        return
    if x.dtype == "float32":
        raise BnnError(
            f"{where}: quantized weights on a float input are not supported; put a "
            "QActivation before the layer so that its input is quantized"
        )
    channels = w.shape[3] if op.type == "DepthwiseConv2D" else w.shape[0]
    s_in, _ = _scale_zp(x, where)
    s_w = _weight_scales(w, channels, where)
    bias = np.zeros(channels)
    if len(op.inputs) > 2:
        b = graph.tensors[op.inputs[2]]
        step = float(b.quant.scale.reshape(-1)[0]) if b.quant is not None else 1.0
        # an unquantized (float) bias is folded into the offset as it is
        bias = np.asarray(b.data, np.float64).reshape(-1) * step
    scale = np.asarray(op.attrs.pop("channel_scale", np.ones(channels)), np.float64)
    shift = np.asarray(op.attrs.pop("channel_offset", np.zeros(channels)), np.float64)
    m = scale * s_in * s_w  # real output per unit of accumulator
    b_real = scale * bias + shift
    bound = _acc_bound(graph, op)
    op.inputs = op.inputs[:2]
    if out.dtype in ("int8", "uint8"):
        s_out, zp_out = _scale_zp(out, where)
        mult, shifts, offset = affine_constants(m / s_out, b_real / s_out + zp_out, bound, where)
        op.inputs += [
            _const(graph, op, "multiplier", mult, "int32"),
            _const(graph, op, "shift", shifts, "int8"),
            _const(graph, op, "offset", offset, "int64"),
        ]
        op.attrs["output_transform"] = "affine"
        op.attrs["clamp"] = _clamp(op, out)
    elif out.dtype == "float32":
        op.inputs += [
            _const(graph, op, "scale", m.astype(np.float32), "float32"),
            _const(graph, op, "offset", b_real.astype(np.float32), "float32"),
        ]
        op.attrs["output_transform"] = "float"
    elif out.dtype == "binary":
        if op.attrs.get("activation", "none") != "none":
            raise BnnError(f"{where}: a fused ReLU before a binarization is not supported")
        thresholds, directions = threshold_constants(m, b_real, bound, where)
        op.inputs += [
            _const(graph, op, "threshold", thresholds, "int32"),
            _const(graph, op, "direction", directions, "int8"),
        ]
        op.attrs["output_transform"] = "threshold"
    else:
        raise BnnError(f"{where}: output type {out.dtype} is not supported")


def _add_transform(graph: Graph, op: Op) -> None:
    where = f"layer {op.name!r}"
    a, b, out = (graph.tensors[n] for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
    kinds = {a.dtype, b.dtype, out.dtype}
    if kinds == {"float32"}:
        return
    if out.dtype == "float32" or "float32" in kinds or "binary" in kinds:
        raise BnnError(
            f"{where}: Add of quantized tensors needs a QActivation after it (and quantized "
            "inputs on both sides)"
        )
    s_a, zp_a = _scale_zp(a, where)
    s_b, zp_b = _scale_zp(b, where)
    s_o, zp_o = _scale_zp(out, where)
    mult, shifts, offset = shared_shift_constants([s_a / s_o, s_b / s_o], zp_o, 255, where)
    op.inputs += [
        _const(graph, op, "multiplier", mult, "int32"),
        _const(graph, op, "shift", shifts, "int8"),
        _const(graph, op, "offset", offset, "int64"),
    ]
    op.attrs["output_transform"] = "affine"
    op.attrs["clamp"] = _clamp(op, out)


def _requantize_transform(graph: Graph, op: Op) -> None:
    where = f"layer {op.name!r}"
    x, out = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    if x.dtype == "float32":
        op.attrs.setdefault("rounding", "half_even")
        return
    s_in, _ = _scale_zp(x, where)
    s_o, zp_o = _scale_zp(out, where)
    mult, shifts, offset = shared_shift_constants([s_in / s_o], zp_o, 255, where)
    op.inputs += [
        _const(graph, op, "multiplier", mult, "int32"),
        _const(graph, op, "shift", shifts, "int8"),
        _const(graph, op, "offset", offset, "int64"),
    ]
    op.attrs["output_transform"] = "affine"
    op.attrs["clamp"] = _clamp(op, out)


def _check_keras_op(graph: Graph, op: Op) -> None:
    if op.type in ("AveragePool2D", "Mean"):
        if graph.tensors[op.inputs[0]].dtype != "float32":
            raise BnnError(
                f"layer {op.name!r}: {op.type} of a quantized tensor is not supported yet in "
                "QKeras models; supported on quantized tensors: QConv2D, QDepthwiseConv2D, "
                "QDense, Add, MaxPooling2D, Flatten, QActivation"
            )


def quantized_output_transforms(graph: Graph) -> bool:
    """Give every quantized op of a QKeras graph its integer output transform (once)."""
    for op in graph.ops:
        if "output_transform" in op.attrs:
            continue
        if op.type in MAC_OPS:
            _mac_transform(graph, op)
        elif op.type == "Add":
            _add_transform(graph, op)
        elif op.type == "Quantize":
            _requantize_transform(graph, op)
        else:
            _check_keras_op(graph, op)
    return False


def lower_graph(graph: Graph) -> Graph:
    """Run the lowering passes to a fixed point, then check and tidy the graph."""
    changed = True
    while changed:
        changed = False
        for lowering in PASSES:
            changed = lowering(graph) or changed
    if graph.source_format == "keras":
        quantized_output_transforms(graph)
    graph.validate()
    graph.prune()
    return graph


# --------------------------------------------------------------------------------------------
# deployment fusions (the code generator's; the IR of analyze and the exporters keeps the ops)
# --------------------------------------------------------------------------------------------


def fuse_residual_adds(graph: Graph) -> Graph:
    """``graph`` with every int8 ``Add`` fed by an affine ``BinaryConv2D`` (its only consumer)
    fused into that convolution: one ``BinaryConv2D`` op named ``"<conv>+<add>"`` whose
    ``attrs["fused"]`` holds the two original ops (``ir.fused_ops``), inputs the convolution's,
    then the Add's other input (the residual), then the Add's constants, and the Add's output.
    The C runtime runs it as ``bnn_bconv2d_add``: each output is the Add of the convolution's
    int8 value and the residual's, made as the convolution makes it, so the convolution's
    int8 tensor never exists (a residual block's widest buffer) and the sum may overwrite the
    residual in place. The arithmetic is the two ops', bit for bit (the reference runs the
    inner ops). Returns a copy sharing the tensors (``graph`` itself when nothing fuses);
    ``graph`` is unchanged."""
    fused_graph = copy.copy(graph)
    fused_graph.ops = list(graph.ops)
    fused_graph.tensors = dict(graph.tensors)
    for add in list(fused_graph.ops):
        pair = _residual_pair(fused_graph, add)
        if pair is None:
            continue
        conv, position = pair
        residual = add.inputs[1 - position]
        fused = Op(
            f"{conv.name}+{add.name}",
            "BinaryConv2D",
            [*conv.inputs, residual, *add.inputs[2:]],
            list(add.outputs),
            {**conv.attrs, "fused": (conv, add), "residual_position": position},
        )
        ops = fused_graph.ops
        producer = fused_graph.producer(residual)
        ready = producer is None or ops.index(producer) < ops.index(conv)
        # at the convolution's place when the residual is made before it, else at the Add's
        at = ops.index(conv) if ready else ops.index(add)
        ops[at] = fused
        ops.remove(add if ready else conv)
    if len(fused_graph.ops) == len(graph.ops):
        return graph
    fused_graph.validate()
    return fused_graph


def _residual_pair(graph: Graph, add: Op) -> tuple[Op, int] | None:
    """(the BinaryConv2D, its input position) when ``add`` may be fused into it."""
    if add.type != "Add" or len(add.inputs) < 2 or len(add.outputs) != 1:
        return None
    out = graph.tensors[add.outputs[0]]
    for position in (0, 1):
        conv_out, residual = add.inputs[position], add.inputs[1 - position]
        conv = graph.producer(conv_out)
        if conv is None or conv.type != "BinaryConv2D" or fused_ops(conv):
            continue
        if conv_out == residual or transform_of(conv) != "affine":
            continue
        t, r = graph.tensors[conv_out], graph.tensors[residual]
        if r.is_const or {t.dtype, r.dtype, out.dtype} != {"int8"}:
            continue
        if not (t.shape == r.shape == out.shape) or _single_consumer(graph, conv_out) is not add:
            continue
        return conv, position
    return None
