"""Calling the C runtime from Python, the same way on the host and on an emulated Cortex-M7.

A kernel call is described once, independently of where it runs::

    status = backend.call("bnn_conv2d_s8", ctx, params, output, in_dims, x, f_dims, w, o_dims, y)

with arguments of these kinds:

* :class:`Struct` -- one of the C structs of ``include/bnn_types.h`` / ``bnn_kernels.h``, passed
  by pointer (``None`` passes NULL); its pointer fields hold numpy arrays (or ``None``);
* a numpy array -- passed as a pointer to its data; every array is copied back after the call
  (so output buffers are just arrays the caller made);
* :class:`F32` -- a C ``float`` argument; a plain Python ``int`` -- an ``int32_t``.

:class:`HostBackend` runs the kernels from a host shared library through ctypes.  The emulator
backend (``bnncube.validation.emulator``) lays the same structs out with the 32-bit ARM rules
(4-byte pointers, 8-byte aligned ``int64_t``) and passes arguments by the AAPCS-VFP rules (core
registers r0-r3 then the stack; floats in s0-s15).  :data:`STRUCTS` is the single description of
the C structs both use; a test checks it against ``sizeof``/``offsetof`` compiled from the
headers.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# C field types: scalars and pointers to arrays of a numpy dtype
SCALARS = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "f32": ctypes.c_float}
POINTERS = {
    "ptr:u8": np.uint8,
    "ptr:i8": np.int8,
    "ptr:i32": np.int32,
    "ptr:i64": np.int64,
    "ptr:u32": np.uint32,
    "ptr:f32": np.float32,
}

_I32 = "i32"
STRUCTS: dict[str, list[tuple[str, str]]] = {
    "bnn_context_t": [("buf", "ptr:u8"), ("size", _I32)],
    "bnn_dims_t": [("n", _I32), ("h", _I32), ("w", _I32), ("c", _I32)],
    "bnn_conv_params_t": [
        ("stride_h", _I32),
        ("stride_w", _I32),
        ("dilation_h", _I32),
        ("dilation_w", _I32),
        ("pad_top", _I32),
        ("pad_left", _I32),
        ("pad_value", _I32),
        ("depth_multiplier", _I32),
        ("input_zero_point", _I32),
    ],
    "bnn_output_t": [
        ("kind", _I32),
        ("bias", "ptr:i32"),
        ("q_mult", "ptr:i32"),
        ("q_shift", "ptr:i32"),
        ("out_zero_point", _I32),
        ("a_mult", "ptr:i32"),
        ("a_shift", "ptr:i8"),
        ("a_offset", "ptr:i64"),
        ("act_min", _I32),
        ("act_max", _I32),
        ("f_scale", "ptr:f32"),
        ("f_offset", "ptr:f32"),
        ("float_activation", _I32),
        ("t_threshold", "ptr:i32"),
        ("t_direction", "ptr:i8"),
        ("q_single_rounding", _I32),
        ("lce_k", _I32),
        ("lce_clamp_lo", _I32),
        ("lce_clamp_hi", _I32),
        ("lce_int8_output", _I32),
    ],
    "bnn_add_params_t": [
        ("kind", _I32),
        ("a_zero_point", _I32),
        ("b_zero_point", _I32),
        ("left_shift", _I32),
        ("a_mult", _I32),
        ("a_shift", _I32),
        ("b_mult", _I32),
        ("b_shift", _I32),
        ("out_mult", _I32),
        ("out_shift", _I32),
        ("out_zero_point", _I32),
        ("affine_mult0", _I32),  # int32_t affine_mult[2]
        ("affine_mult1", _I32),
        ("affine_shift", _I32),
        ("affine_offset", "i64"),
        ("act_min", _I32),
        ("act_max", _I32),
    ],
}

# enum values of bnn_types.h
OUT_TFLITE, OUT_AFFINE, OUT_FLOAT, OUT_THRESHOLD, OUT_LCE = 0, 1, 2, 3, 4
ACT_NONE, ACT_RELU, ACT_RELU6 = 0, 1, 2
ROUND_HALF_AWAY, ROUND_HALF_EVEN = 0, 1
BNN_OK, BNN_ERROR_ARGUMENT, BNN_ERROR_SCRATCH = 0, -1, -2


class Struct:
    """A value of one of the C structs in :data:`STRUCTS` (missing fields are 0 / NULL)."""

    def __init__(self, ctype: str, **fields: Any) -> None:
        if ctype not in STRUCTS:
            raise KeyError(f"unknown C struct {ctype!r}")
        names = {name for name, _ in STRUCTS[ctype]}
        unknown = set(fields) - names
        if unknown:
            raise KeyError(f"{ctype} has no field(s) {sorted(unknown)}")
        self.ctype = ctype
        self.fields: dict[str, Any] = {}
        for name, kind in STRUCTS[ctype]:
            value = fields.get(name)
            if kind in POINTERS and value is not None:
                value = np.ascontiguousarray(value, dtype=POINTERS[kind])
            self.fields[name] = value

    def __repr__(self) -> str:
        return f"Struct({self.ctype!r}, {self.fields!r})"


@dataclass(frozen=True)
class F32:
    """A C ``float`` argument."""

    value: float


def dims(n: int, h: int, w: int, c: int) -> Struct:
    return Struct("bnn_dims_t", n=n, h=h, w=w, c=c)


# --------------------------------------------------------------------------------------------
# host backend (ctypes)
# --------------------------------------------------------------------------------------------

_CTYPES_STRUCTS: dict[str, type[ctypes.Structure]] = {}


def host_struct_type(ctype: str) -> type[ctypes.Structure]:
    """The ctypes Structure for ``ctype`` on this host."""
    if ctype not in _CTYPES_STRUCTS:
        fields = [
            (name, SCALARS[kind] if kind in SCALARS else ctypes.c_void_p)
            for name, kind in STRUCTS[ctype]
        ]
        _CTYPES_STRUCTS[ctype] = type(ctype, (ctypes.Structure,), {"_fields_": fields})
    return _CTYPES_STRUCTS[ctype]


class HostBackend:
    """Run runtime kernels from a host shared library (see :mod:`bnncube.runtime_c.build`)."""

    name = "host"

    def __init__(self, library: str | Path) -> None:
        self.library = Path(library)
        self.lib = ctypes.CDLL(str(library))

    def call(self, function: str, *args: Any) -> int:
        keep: list[Any] = []  # objects that must outlive the call
        c_args: list[Any] = []
        argtypes: list[Any] = []
        for arg in args:
            if arg is None:
                c_args.append(None)
                argtypes.append(ctypes.c_void_p)
            elif isinstance(arg, Struct):
                value = self._struct(arg, keep)
                keep.append(value)
                c_args.append(ctypes.byref(value))
                argtypes.append(ctypes.c_void_p)
            elif isinstance(arg, np.ndarray):
                if not arg.flags.c_contiguous:
                    raise ValueError(f"{function}: array arguments must be C-contiguous")
                c_args.append(arg.ctypes.data_as(ctypes.c_void_p))
                argtypes.append(ctypes.c_void_p)
            elif isinstance(arg, F32):
                c_args.append(ctypes.c_float(arg.value))
                argtypes.append(ctypes.c_float)
            elif isinstance(arg, (int, np.integer)):
                c_args.append(ctypes.c_int32(int(arg)))
                argtypes.append(ctypes.c_int32)
            else:
                raise TypeError(f"{function}: unsupported argument {arg!r}")
        fn = getattr(self.lib, function)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int32
        return int(fn(*c_args))

    def int_function(self, function: str, *args: Any) -> int:
        """Call a function returning int32 (e.g. a ``_scratch_size`` query)."""
        return self.call(function, *args)

    @staticmethod
    def _struct(value: Struct, keep: list[Any]) -> ctypes.Structure:
        cls = host_struct_type(value.ctype)
        out = cls()
        for name, kind in STRUCTS[value.ctype]:
            field = value.fields[name]
            if field is None:
                continue
            if kind in POINTERS:
                keep.append(field)
                setattr(out, name, field.ctypes.data)
            else:
                setattr(out, name, field)
        return out
