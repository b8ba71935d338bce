"""Sanity checks of a graph's constants and quantization, shared by the front ends.

A model file can be damaged or hand-edited: zero or negative scales, NaN or Inf scales or
weights, zero points outside the element type, per-channel parameters that do not match the
tensor. Such a model must stop with one clear line naming the file and the tensor, not run into a
division by zero or produce garbage later.
"""

from __future__ import annotations

import numpy as np

from bnncube.converters.ir import Graph, Tensor
from bnncube.errors import BnnError

_ZP_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int32": (0, 0), "int64": (0, 0)}


def tensor_problem(tensor: Tensor) -> str | None:
    """What is wrong with ``tensor``'s quantization or constant data (None: nothing)."""
    q = tensor.quant
    if q is not None and tensor.dtype not in ("float32", "binary"):
        scale = np.asarray(q.scale, np.float64).reshape(-1)
        zp = np.asarray(q.zero_point).reshape(-1)
        if scale.size == 0:
            return "has an empty quantization scale"
        if not np.all(np.isfinite(scale)):
            return "has a NaN or Inf quantization scale"
        if np.any(scale <= 0):
            return f"has quantization scale {float(scale[scale <= 0][0]):g}; scales must be > 0"
        if zp.size not in (1, scale.size):
            return f"has {zp.size} zero points for {scale.size} scales"
        lo, hi = _ZP_RANGE.get(tensor.dtype, (-(2**31), 2**31 - 1))
        if np.any(zp < lo) or np.any(zp > hi):
            return f"has a zero point outside [{lo}, {hi}] for {tensor.dtype}"
        if scale.size > 1:
            axis = q.axis
            if axis is None or not -len(tensor.shape) <= axis < len(tensor.shape):
                return f"has {scale.size} per-channel scales but no valid channel axis ({axis})"
            if tensor.shape[axis] != scale.size:
                return (
                    f"has {scale.size} per-channel scales for {tensor.shape[axis]} channels "
                    f"(axis {axis})"
                )
    if tensor.data is not None and np.asarray(tensor.data).dtype.kind == "f":
        if not np.all(np.isfinite(tensor.data)):
            return "holds NaN or Inf values"
    return None


def check_graph(graph: Graph, source: str) -> None:
    """Raise a one-line :class:`BnnError` for the first damaged tensor of ``graph``."""
    for tensor in graph.tensors.values():
        problem = tensor_problem(tensor)
        if problem:
            raise BnnError(f"{source}: tensor {tensor.name!r} {problem}")
