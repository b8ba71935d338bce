"""bnncube's one graph representation (IR).

Every front end (Keras/QKeras, TFLite, later ONNX) produces a :class:`Graph`; every back end
(analyze, exporters, code generator) consumes one. The IR describes the network *as deployed*
once the lowering passes in :mod:`bnncube.converters.passes` have run: BatchNormalization folded
into the producing layer, activations fused, explicit zero padding folded into convolutions.

Conventions
-----------
* Layout is NHWC for activations (batch included, always 1 for the zoo networks).
* Conv filters are OHWI; depthwise filters are 1HW(C*M) as in TFLite; dense weights are [out, in].
* ``Tensor.dtype`` is the *deployed* element type:

  - ``float32``, ``int8``, ``uint8``, ``int32``, ``int64`` (constants of output transforms only):
    ordinary arrays;
  - ``binary``: 1-bit values (+1 / -1).  Activations of this type are bitpacked along the channel
    axis into 32-bit words, LSB first, bit 1 meaning -1 (DESIGN section 5), so a row of C channels
    takes ``ceil(C / 32)`` words.  Binary constants (filters) are held unpacked in ``data`` as
    int8 +1/-1 and packed the same way when deployed.

* ``Tensor.quant`` (``Quant``) gives the affine mapping real = scale * (q - zero_point), per tensor
  (``axis is None``) or per channel along ``axis``.  QKeras tensors also keep the quantizer they
  came from in ``Quant.source`` (e.g. ``"quantized_bits(8,3,1,alpha=1)"``) for reports.
* ``Op.type`` is one of :data:`OP_TYPES`; ``Op.attrs`` hold the op's options (documented there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DTYPES = ("float32", "int8", "uint8", "int32", "int64", "binary")

# op type -> the attributes it may carry (all optional unless noted)
OP_TYPES: dict[str, str] = {
    "Conv2D": "strides, pads [top,bottom,left,right], dilations, activation, output_transform, "
    "(inputs: x, w, then the transform's constants)",
    "DepthwiseConv2D": "strides, pads, dilations, depth_multiplier, activation, output_transform, "
    "(x, w, constants)",
    "Dense": "activation, output_transform, (x, w, constants)",
    "BinaryConv2D": "strides, pads, pad_value (0 QKeras / 1 Larq), activation, output_transform, "
    "(x binary, w binary, constants)",
    "Add": "activation, output_transform, (a, b, constants)",
    "AveragePool2D": "pool, strides, pads, activation; divides by the valid (unpadded) taps",
    "MaxPool2D": "pool, strides, pads, activation",
    "Mean": "axes, keepdims",
    "Reshape": "(x) -> shape of the output tensor",
    "Pad": "pads [top,bottom,left,right], (x); fills with real zero (the zero point if int8)",
    "Quantize": "(x float/int) -> int8/uint8 with the output tensor's quant; rounding "
    "(float input), output_transform (int8 input)",
    "Dequantize": "(x int8) -> float32",
    "Bitpack": "(x int8 or float) -> binary; threshold is the value 0 (zero point for int8)",
    "BatchNorm": "gamma, beta, mean, variance, epsilon (removed by fold_batchnorm)",
    "Activation": "activation in ACTIVATIONS (removed by fuse_activations where possible)",
    "Softmax": "(x), beta 1",
}

# output_transform -> the constant inputs that follow the op's data inputs (docs/ir.md).
# "tflite" (or no attribute): an optional int32 bias for MAC ops, nothing for Add / Quantize.
OUTPUT_TRANSFORMS: dict[str, tuple[str, ...]] = {
    "tflite": ("bias",),
    "affine": ("multiplier", "shift", "offset"),
    "float": ("scale", "offset"),
    "threshold": ("threshold", "direction"),
    "lce": ("multiplier", "bias"),
}

ACTIVATIONS = ("none", "relu", "relu6", "linear")

# Ops whose arithmetic is multiply-accumulate; used for MACC and precision reports.
MAC_OPS = ("Conv2D", "DepthwiseConv2D", "Dense", "BinaryConv2D")


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    source: str = ""  # the quantizer it came from, for reports (QKeras string, "tflite", ...)

    @staticmethod
    def per_tensor(scale: float, zero_point: int = 0, source: str = "") -> Quant:
        return Quant(
            np.asarray([scale], np.float64), np.asarray([zero_point], np.int64), None, source
        )

    @property
    def is_per_channel(self) -> bool:
        return self.axis is not None and self.scale.size > 1

    def describe(self) -> str:
        if self.is_per_channel:
            return f"per-channel(axis={self.axis}, n={self.scale.size})"
        return f"scale={float(self.scale[0]):.6g} zp={int(self.zero_point[0])}"


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: Quant | None = None
    data: np.ndarray | None = None  # constants only

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}")
        self.shape = tuple(int(d) for d in self.shape)

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def num_elements(self) -> int:
        return int(math.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies as deployed (binary: packed along the last axis)."""
        if self.dtype == "binary":
            if not self.shape:
                return 4
            rows = int(math.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
            return rows * packed_words(self.shape[-1]) * 4
        sizes = {"float32": 4, "int32": 4, "int64": 8, "int8": 1, "uint8": 1}
        return self.num_elements * sizes[self.dtype]


def data_inputs(op: Op) -> int:
    """How many of ``op``'s inputs are data (activations and weights) rather than the constants
    of its output transform: 2 for MAC ops and Add, 1 otherwise."""
    return 2 if op.type in MAC_OPS or op.type == "Add" else 1


def fused_ops(op: Op) -> list[Op]:
    """The ops ``op`` stands for when a deployment pass fused them (``attrs["fused"]``, in the
    order they run; e.g. ``passes.fuse_residual_adds``), or ``[]`` for an ordinary op. The
    tensors between them stay in the graph (unproduced by any top-level op) so that the
    reference can run the inner ops one by one."""
    return list(op.attrs.get("fused", ()))


def unfused(graph: Graph) -> Graph:
    """``graph`` with every fused op replaced by the ops it stands for (``graph`` itself when it
    has none; otherwise a copy sharing the tensors): the exporters write the model's own ops."""
    if not any(fused_ops(op) for op in graph.ops):
        return graph
    import copy

    plain = copy.copy(graph)
    plain.ops = [part for op in graph.ops for part in (fused_ops(op) or [op])]
    return plain


def transform_of(op: Op) -> str:
    """The op's output transform (``"tflite"`` when the attribute is absent)."""
    return str(op.attrs.get("output_transform", "tflite"))


def packed_words(channels: int) -> int:
    """32-bit words needed for one bitpacked row of ``channels`` binary values."""
    return (int(channels) + 31) // 32


@dataclass
class Op:
    name: str
    type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in OP_TYPES:
            raise ValueError(f"op {self.name!r}: unknown IR op type {self.type!r}")


@dataclass
class Graph:
    name: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    source: str = ""  # file the graph was read from
    source_format: str = ""  # "keras" | "tflite" | "onnx"

    # -- construction helpers -------------------------------------------------------------
    def add_tensor(self, tensor: Tensor) -> Tensor:
        if tensor.name in self.tensors:
            raise ValueError(f"duplicate tensor name {tensor.name!r}")
        self.tensors[tensor.name] = tensor
        return tensor

    def unique_name(self, base: str) -> str:
        if base not in self.tensors:
            return base
        i = 1
        while f"{base}_{i}" in self.tensors:
            i += 1
        return f"{base}_{i}"

    def add_const(self, base: str, data: np.ndarray, dtype: str, quant: Quant | None = None) -> str:
        name = self.unique_name(base)
        self.add_tensor(Tensor(name, tuple(data.shape), dtype, quant, np.asarray(data)))
        return name

    def add_op(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    # -- queries --------------------------------------------------------------------------
    def producer(self, tensor: str) -> Op | None:
        for op in self.ops:
            if tensor in op.outputs:
                return op
        return None

    def consumers(self, tensor: str) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]

    def activation_inputs(self, op: Op) -> list[Tensor]:
        """The non-constant inputs of ``op`` (activations flowing through the graph)."""
        return [self.tensors[t] for t in op.inputs if not self.tensors[t].is_const]

    def const_inputs(self, op: Op) -> list[Tensor]:
        return [self.tensors[t] for t in op.inputs if self.tensors[t].is_const]

    def validate(self) -> None:
        """Check that the graph is well formed and its ops are in topological order."""
        known = set(self.inputs) | {n for n, t in self.tensors.items() if t.is_const}
        for name in self.inputs + self.outputs:
            if name not in self.tensors:
                raise ValueError(f"graph {self.name!r}: missing tensor {name!r}")
        for op in self.ops:
            for t in op.inputs:
                if t not in self.tensors:
                    raise ValueError(f"op {op.name!r}: unknown input tensor {t!r}")
                if t not in known:
                    raise ValueError(f"op {op.name!r}: input {t!r} used before it is produced")
            for t in op.outputs:
                if t not in self.tensors:
                    raise ValueError(f"op {op.name!r}: unknown output tensor {t!r}")
                known.add(t)
        for name in self.outputs:
            if name not in known:
                raise ValueError(f"graph {self.name!r}: output {name!r} is never produced")

    def prune(self) -> None:
        """Drop tensors no op or graph boundary refers to."""
        used = set(self.inputs) | set(self.outputs)
        for op in self.ops:
            for inner in [op, *fused_ops(op)]:
                used.update(inner.inputs)
                used.update(inner.outputs)
        self.tensors = {n: t for n, t in self.tensors.items() if n in used}
