"""`bnncube generate`: C code for a deployed graph, with the legacy X-CUBE-AI network API.

Files written for ``-n NAME`` (DESIGN section 4, docs/generate.md):

* ``NAME.h`` / ``NAME.c``: the API (``ai_NAME_create``, ``_init``, ``_create_and_init``,
  ``_inputs_get``, ``_outputs_get``, ``_run``, ``_get_error``, ``_get_report``, ``_destroy``) and
  the forward pass: one runtime kernel call per IR op, straight-line, with every activation at
  its planned offset in the activations buffer and every constant at its offset in the weights;
* ``NAME_data.h`` / ``NAME_data.c``: ``AI_NAME_DATA_ACTIVATIONS_SIZE``,
  ``AI_NAME_DATA_WEIGHTS_SIZE``, ``ai_NAME_data_weights_get()`` and the ``AI_NAME_DATA_*`` helpers;
* ``NAME_data_params.h`` / ``NAME_data_params.c``: the weights (one 8-byte aligned blob, or one
  array per constant with ``--split-weights``);
* ``NAME_config.h``; ``NAME_generate_report.txt`` and ``NAME_c_info.json``;
* ``ai_platform.h`` (bnncube's API types) and the runtime sources the network needs (``bnn_*``).

The weights hold every constant a kernel reads: filters (binary ones packed), biases, the
integer output transforms, TFLite multipliers (computed here, exactly as the reference does).
Generated files contain no timestamps or absolute paths: generating twice gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnncube import __version__
from bnncube.converters.figures import layer_figures
from bnncube.converters.ir import Graph, Op
from bnncube.errors import BnnError
from bnncube.runtime_c import ROOT as RUNTIME_ROOT
from bnncube.runtime_c.cabi import F32, POINTERS, STRUCTS, Struct

TARGETS = {
    # name: (flash bytes, RAM bytes) of the device (what the generated network may use at most)
    "stm32h7": (2 * 1024 * 1024, 1024 * 1024),
}
OPTIMIZATIONS = ("time", "ram", "balanced")
_C_TYPES = {
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int32): "int32_t",
    np.dtype(np.uint32): "uint32_t",
    np.dtype(np.int64): "int64_t",
    np.dtype(np.float32): "float",
}
_FORMATS = {
    "float32": "AI_BUFFER_FORMAT_FLOAT",
    "int8": "AI_BUFFER_FORMAT_S8",
    "uint8": "AI_BUFFER_FORMAT_U8",
    "int32": "AI_BUFFER_FORMAT_S32",
    "binary": "AI_BUFFER_FORMAT_U32",
}
ALIGN = 8
_OUT_KINDS = (
    "BNN_OUT_TFLITE",
    "BNN_OUT_AFFINE",
    "BNN_OUT_FLOAT",
    "BNN_OUT_THRESHOLD",
    "BNN_OUT_LCE",
)
_ENUM_NAMES = {
    "kind": _OUT_KINDS,
    "float_activation": ("BNN_ACT_NONE", "BNN_ACT_RELU", "BNN_ACT_RELU6"),
}


@dataclass
class GenerateOptions:
    c_name: str = "network"
    optimization: str = "balanced"
    split_weights: bool = False
    inputs_allocation: bool = True
    outputs_allocation: bool = True
    target: str = "stm32h7"
    force: bool = False  # generate even when the network does not fit the target
    input_data_type: str | None = None  # None: the model's; float32 | int8 | uint8
    output_data_type: str | None = None
    # also write X-CUBE-AI/App/ and firmware/ (plugin/firmware.py, docs/firmware.md); stm32h7 only
    firmware: bool = False


@dataclass
class _Weights:
    """The weights blob: constants placed at 8-byte aligned offsets, identical ones shared."""

    data: bytearray = field(default_factory=bytearray)
    by_content: dict[tuple[str, bytes], int] = field(default_factory=dict)
    names: list[tuple[str, int, int, str]] = field(default_factory=list)  # name, offset, size, C

    def add(self, array: np.ndarray, name: str) -> int:
        array = np.ascontiguousarray(array)
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        key = (array.dtype.str, raw)
        if key in self.by_content:
            return self.by_content[key]
        pad = (-len(self.data)) % ALIGN
        self.data += b"\0" * pad
        offset = len(self.data)
        self.data += raw
        self.by_content[key] = offset
        self.names.append((name, offset, len(raw), _C_TYPES[array.dtype]))
        return offset

    @property
    def size(self) -> int:
        return len(self.data) + (-len(self.data)) % ALIGN


def _f32_literal(value: float) -> str:
    v = float(np.float32(value))
    if math.isnan(v) or math.isinf(v):
        raise BnnError(f"generate: a float constant is {v}")
    return f"{v.hex()}f" if v != 0 else "0.0f"


class _Emitter:
    """Turns each op's kernel call (validation.kernel_calls) into C statements."""

    def __init__(
        self, graph: Graph, plan: Any, weights: _Weights, io: dict[str, str], observer: str
    ):
        self.observer = observer  # macro called after each layer when defined (validation)
        self.graph = graph
        self.plan = plan
        self.weights = weights
        self.io = io  # graph input/output tensor -> C expression of its buffer
        self.tracked: dict[int, str] = {}  # id of a stand-in array -> tensor name
        self.lines: list[str] = []
        self.kernels: set[str] = set()

    def tensor_expr(self, name: str, ctype: str) -> str:
        if name in self.io:
            return f"(({ctype} *){self.io[name]})"
        return f"(({ctype} *)(act + {_offset(self.plan, name)}))"

    def arg(self, value: Any, index: int, layer: int, op: Op, structs: list[str]) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, F32):
            return _f32_literal(value.value)
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        if isinstance(value, np.ndarray):
            name = self._activation_of(value)
            ctype = _C_TYPES[value.dtype]
            if name is not None:
                return self.tensor_expr(name, ctype)
            offset = self.weights.add(value, f"{op.name}/arg{index}")
            return f"((const {ctype} *)(w + {offset}))"
        if isinstance(value, Struct) and value.fields.get("buf") is not None:
            # a bnn_context_t with the kernel's scratch: its planned buffer in the arena, live
            # during this op only
            entry = self.plan.entry(f"scratch:{op.name}")
            if entry.size != int(value.fields["size"]):
                raise BnnError(
                    f"generate: op {op.name!r}: scratch planned {entry.size} B, "
                    f"the kernel asks for {int(value.fields['size'])} B"
                )
            var = f"s{layer}_{index}"
            structs.append(
                f"        const bnn_context_t {var} = {{act + {int(entry.offset)}, {entry.size}}};"
            )
            return f"&{var}"
        if isinstance(value, Struct):
            var = f"s{layer}_{index}"
            structs.append(self._struct(var, value, op))
            return f"&{var}"
        raise BnnError(f"generate: op {op.name!r}: unsupported kernel argument {value!r}")

    def _activation_of(self, array: np.ndarray) -> str | None:
        for stand_in, name in self.stand_ins:
            if np.shares_memory(array, stand_in):
                return name
        return None

    def _struct(self, var: str, value: Struct, op: Op) -> str:
        parts = []
        has_pointer = False
        for fname, kind in STRUCTS[value.ctype]:
            field_value = value.fields[fname]
            if field_value is None:
                continue
            if kind in POINTERS:
                has_pointer = True
                continue
            if fname in ("affine_mult0", "affine_mult1"):
                continue
            literal = _f32_literal(field_value) if kind == "f32" else f"{int(field_value)}"
            if kind == "i64":
                literal = f"INT64_C({int(field_value)})"
            parts.append(f".{fname} = {literal}")
        if value.ctype == "bnn_add_params_t":
            m0, m1 = value.fields["affine_mult0"], value.fields["affine_mult1"]
            if m0 is not None or m1 is not None:
                parts.append(f".affine_mult = {{{int(m0 or 0)}, {int(m1 or 0)}}}")
        init = "{" + ", ".join(parts) + "}" if parts else "{0}"
        if not has_pointer:
            return f"        static const {value.ctype} {var} = {init};"
        lines = [f"        {value.ctype} {var} = {init};"]
        for fname, kind in STRUCTS[value.ctype]:
            field_value = value.fields[fname]
            if kind in POINTERS and field_value is not None:
                offset = self.weights.add(field_value, f"{op.name}/{fname}")
                ctype = _C_TYPES[np.dtype(POINTERS[kind])]
                lines.append(f"        {var}.{fname} = (const {ctype} *)(w + {offset});")
        return "\n".join(lines)

    def emit_copy(self, layer: int, op: Op, plan: Any) -> None:
        """A Reshape: nothing when the planner made its output an alias of its input."""
        out_name, in_name = op.outputs[0], op.inputs[0]
        entry = plan.entry(out_name)
        if entry.alias_of is not None and out_name not in self.io and in_name not in self.io:
            return
        nbytes = self.graph.tensors[out_name].nbytes
        dst = self.tensor_expr(out_name, "ai_u8")
        src = self.tensor_expr(in_name, "const ai_u8")
        self.lines.append(f"    /* layer {layer}: {op.name} ({op.type}): a copy */")
        self.lines.append(f"    memmove({dst}, {src}, {nbytes}u);")

    def emit(self, layer: int, op: Op, call: Any, stand_ins: list[tuple[np.ndarray, str]]) -> None:
        self.stand_ins = stand_ins
        out_name = op.outputs[0]
        structs: list[str] = []
        args = []
        for i, value in enumerate(call.args):
            if value is call.output or (
                isinstance(value, np.ndarray)
                and call.output is not None
                and np.shares_memory(value, call.output)
            ):
                args.append(self.tensor_expr(out_name, _C_TYPES[value.dtype]))
            else:
                args.append(self.arg(value, i, layer, op, structs))
        self.kernels.add(call.function)
        self.lines.append(f"    /* layer {layer}: {op.name} ({op.type}) */")
        self.lines.append("    {")
        self.lines.extend(structs)
        self.lines.append(f"        if ({call.function}({', '.join(args)}) != BNN_OK) {{")
        self.lines.append(f"            return {layer};")
        self.lines.append("        }")
        out_t = self.graph.tensors[out_name]
        ptr = self.tensor_expr(out_name, "const void")
        self.lines.append(f"#ifdef {self.observer}")
        self.lines.append(f"        {self.observer}({layer}, {ptr}, {out_t.nbytes}u);")
        self.lines.append("#endif")
        self.lines.append("    }")


def _stand_ins(graph: Graph) -> dict[str, np.ndarray]:
    """One zero array per activation tensor, in its IR representation (tracked by identity)."""
    from bnncube.converters.reference import packed_shape

    arrays = {}
    for name, t in graph.tensors.items():
        if t.is_const:
            continue
        if t.dtype == "binary":
            arrays[name] = np.zeros(packed_shape(t), np.uint32)
        else:
            dtype = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int32": np.int32}
            arrays[name] = np.zeros(t.shape, dtype[t.dtype])
    return arrays


def _offset(plan: Any, tensor: str) -> int:
    """The planned offset of ``tensor`` in the activations buffer."""
    return int(plan.entry(tensor).offset)


def _c_identifier(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)


# --------------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------------


@dataclass
class GenerateResult:
    files: dict[str, str]  # file name -> text
    graph: Graph  # the graph generated (after --input/--output-data-type)
    weights_bytes: int
    activations_bytes: int
    macc: int
    report: dict[str, Any]
    plan: Any
    kernels: list[str]


def set_io_types(graph: Graph, input_type: str | None, output_type: str | None) -> Graph:
    """``--input-data-type`` / ``--output-data-type``: the network's I/O element types.

    int8 input of a model whose float input is quantized first (QKeras ``QActivation``, TFLite
    QUANTIZE): that Quantize is dropped and the application passes the quantized values (scale
    and zero point in the buffer's meta info). float32 input of an int8 model: a Quantize (TFLite
    rounding) is added. The same for the output with Dequantize. A copy is changed.
    """
    import copy

    from bnncube.converters.ir import Op, Tensor

    g = copy.deepcopy(graph)
    where = "option --input-data-type"
    name = g.inputs[0]
    t = g.tensors[name]
    if input_type and input_type != t.dtype:
        users = g.consumers(name)
        first = users[0] if len(users) == 1 else None
        if input_type in ("int8", "uint8") and t.dtype == "float32":
            out_t = g.tensors[first.outputs[0]] if first is not None else None
            if first is None or first.type != "Quantize" or out_t.dtype != input_type:
                raise BnnError(
                    f"{where}: {input_type} needs a model whose float input is quantized to "
                    f"{input_type} first (a QActivation or QUANTIZE on the input)"
                )
            g.ops.remove(first)
            g.inputs = [first.outputs[0]]
        elif input_type == "float32" and t.dtype in ("int8", "uint8"):
            new = g.unique_name(f"{name}_float")
            g.add_tensor(Tensor(new, t.shape, "float32"))
            g.ops.insert(0, Op(f"{name}_quantize", "Quantize", [new], [name], {}))
            g.inputs = [new]
        else:
            raise BnnError(f"{where}: {input_type} for a {t.dtype} input is not supported")
    where = "option --output-data-type"
    name = g.outputs[0]
    t = g.tensors[name]
    if output_type and output_type != t.dtype:
        last = g.producer(name)
        if output_type in ("int8", "uint8") and t.dtype == "float32":
            src = g.tensors[last.inputs[0]] if last is not None and last.inputs else None
            if last is None or last.type != "Dequantize" or src.dtype != output_type:
                raise BnnError(
                    f"{where}: {output_type} needs a model whose output is dequantized from "
                    f"{output_type} last (a DEQUANTIZE); this one computes float32"
                )
            g.ops.remove(last)
            g.outputs = [last.inputs[0]]
        elif output_type == "float32" and t.dtype in ("int8", "uint8"):
            new = g.unique_name(f"{name}_float")
            g.add_tensor(Tensor(new, t.shape, "float32"))
            g.ops.append(Op(f"{name}_dequantize", "Dequantize", [name], [new], {}))
            g.outputs = [new]
        else:
            raise BnnError(f"{where}: {output_type} for a {t.dtype} output is not supported")
    g.validate()
    g.prune()
    return g


def generate_code(graph: Graph, options: GenerateOptions, model_path: str = "") -> GenerateResult:
    """All generated files for ``graph`` as texts (nothing written yet)."""
    from bnncube.converters.passes import fuse_residual_adds
    from bnncube.planner import plan_graph, schedule_for_arena
    from bnncube.validation.kernel_calls import UnsupportedOp, graph_scratch, kernel_call

    if options.input_data_type or options.output_data_type:
        graph = set_io_types(graph, options.input_data_type, options.output_data_type)

    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise BnnError(
            f"{model_path or graph.name}: {len(graph.inputs)} inputs and {len(graph.outputs)} "
            "outputs; generate supports one input and one output"
        )
    strategy = "balanced" if options.optimization == "time" else options.optimization
    arena = {
        "inputs_allocation": options.inputs_allocation,
        "outputs_allocation": options.outputs_allocation,
    }
    graph = schedule_for_arena(graph, strategy, **arena)
    plan = plan_graph(graph, strategy, scratch=graph_scratch(graph), **arena)
    if options.optimization != "time":
        # residual Adds computed by the binary convolutions before them (bit for bit the same,
        # about 1% more instructions), kept only where the arena gets smaller
        fused = fuse_residual_adds(graph)
        if fused is not graph:
            fused = schedule_for_arena(fused, strategy, **arena)
            fused_plan = plan_graph(fused, strategy, scratch=graph_scratch(fused), **arena)
            if fused_plan.size < plan.size:
                graph, plan = fused, fused_plan
    io = {graph.inputs[0]: "net->in_data", graph.outputs[0]: "net->out_data"}
    weights = _Weights()
    observer = f"AI_{options.c_name.upper()}_LAYER_OBSERVER"
    emitter = _Emitter(graph, plan, weights, io, observer)
    stand_ins = _stand_ins(graph)
    tracked = [(arr, n) for n, arr in stand_ins.items()]
    c_types: dict[str, str] = {}
    for layer, op in enumerate(graph.ops):
        try:
            call = kernel_call(graph, op, stand_ins)
        except UnsupportedOp as e:
            raise BnnError(f"{model_path or graph.name}: {e}") from None
        if call.output is None:  # Reshape: an alias of its input, or a copy
            emitter.emit_copy(layer, op, plan)
            continue
        emitter.emit(layer, op, call, tracked)
        c_types[op.name] = call.function
    figures = layer_figures(graph)
    macc = sum(f.macc for f in figures)
    weights_bytes = weights.size
    activations_bytes = int(plan.size)
    _check_fits(graph, options, weights_bytes, activations_bytes, model_path)
    report = _report(graph, options, plan, figures, c_types, weights_bytes, macc, model_path)
    files = _files(graph, options, emitter, weights, plan, report, macc)
    result = GenerateResult(
        files, graph, weights_bytes, activations_bytes, macc, report, plan, sorted(emitter.kernels)
    )
    if options.firmware and options.target == "stm32h7":
        from bnncube.firmware import firmware_files

        files.update(firmware_files(result, options))
    return result


def _check_fits(
    graph: Graph, options: GenerateOptions, weights: int, activations: int, model: str
) -> None:
    flash, ram = TARGETS[options.target]
    problems = []
    if weights > flash:
        problems.append(f"weights {weights:,} B > flash {flash:,} B")
    if activations > ram:
        problems.append(f"activations {activations:,} B > RAM {ram:,} B")
    if problems and not options.force:
        raise BnnError(
            f"{model or graph.name}: does not fit the {options.target} target: "
            + "; ".join(problems)
            + " (use --force to generate anyway)"
        )


def _tensor_info(graph: Graph, name: str) -> dict[str, Any]:
    t = graph.tensors[name]
    info: dict[str, Any] = {"name": name, "shape": list(t.shape), "format": t.dtype}
    if t.quant is not None and t.dtype in ("int8", "uint8"):
        info["scale"] = float(np.float32(t.quant.scale.reshape(-1)[0]))
        info["zero_point"] = int(t.quant.zero_point.reshape(-1)[0])
    return info


def _report(
    graph: Graph,
    options: GenerateOptions,
    plan: Any,
    figures: list[Any],
    c_types: dict[str, str],
    weights_bytes: int,
    macc: int,
    model: str,
) -> dict[str, Any]:
    layers = []
    for f in figures:
        row = f.as_dict()
        row["c_type"] = c_types.get(f.name, "(alias: no code)")
        row["rom"] = row.pop("weights_bytes")
        layers.append(row)
    activations = int(plan.size)
    io_bytes = 0
    for n in graph.inputs if not options.inputs_allocation else []:
        io_bytes += graph.tensors[n].nbytes
    for n in graph.outputs if not options.outputs_allocation else []:
        io_bytes += graph.tensors[n].nbytes
    return {
        "tool": f"bnncube {__version__}",
        "model": Path(model).name if model else graph.name,
        "c_name": options.c_name,
        "options": {
            "optimization": options.optimization,
            "target": options.target,
            "split_weights": options.split_weights,
            "inputs_allocation": options.inputs_allocation,
            "outputs_allocation": options.outputs_allocation,
            "input_data_type": options.input_data_type or "(the model's)",
            "output_data_type": options.output_data_type or "(the model's)",
        },
        "inputs": [_tensor_info(graph, n) for n in graph.inputs],
        "outputs": [_tensor_info(graph, n) for n in graph.outputs],
        "macc": macc,
        "weights_bytes": weights_bytes,
        "activations_bytes": activations,
        "io_bytes_outside_activations": io_bytes,
        "ram_total_bytes": activations + io_bytes,
        "layers": layers,
        "memory_plan": plan.as_dict(),
    }


def format_report(report: dict[str, Any], plan_table: str) -> str:
    out = [f"bnncube generate report ({report['tool']})", ""]
    out.append(f"model            : {report['model']}")
    out.append(f"c_name           : {report['c_name']}")
    opts = report["options"]
    out.append("options          : " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    out.append("")
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(report[kind], start=1):
            q = f" scale={t['scale']:.9g} zero_point={t['zero_point']}" if "scale" in t else ""
            shape = "x".join(str(d) for d in t["shape"])
            out.append(f"{kind[:-1]:6s} {i}       : {t['name']} {shape} {t['format']}{q}")
    out.append("")
    out.append(f"macc             : {report['macc']:,}")
    out.append(f"weights (ro)     : {report['weights_bytes']:,} B")
    out.append(f"activations (rw) : {report['activations_bytes']:,} B")
    out.append(f"ram (total)      : {report['ram_total_bytes']:,} B")
    out.append("")
    out.append(
        f"{'id':>3s}  {'layer':24s} {'oshape':16s} {'params':>9s} {'macc':>11s} {'rom':>9s}  c_type"
    )
    for r in report["layers"]:
        shape = "x".join(str(d) for d in r["output_shape"][1:] or r["output_shape"])
        out.append(
            f"{r['id']:>3d}  {r['name'][:24]:24s} {shape[:16]:16s} {r['params']:>9,} "
            f"{r['macc']:>11,} {r['rom']:>9,}  {r['c_type']}"
        )
    out.append("")
    out.append("memory plan (activations buffer):")
    out.append(plan_table)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# C files
# --------------------------------------------------------------------------------------------


def _files(
    graph: Graph,
    options: GenerateOptions,
    emitter: _Emitter,
    weights: _Weights,
    plan: Any,
    report: dict[str, Any],
    macc: int,
) -> dict[str, str]:
    name = options.c_name
    up = name.upper()
    files: dict[str, str] = {}
    in_t = graph.tensors[graph.inputs[0]]
    out_t = graph.tensors[graph.outputs[0]]
    files[f"{name}_config.h"] = _config_h(name, up, options)
    files[f"{name}_data_params.h"], files[f"{name}_data_params.c"] = _params_files(
        name, up, weights, options.split_weights
    )
    files[f"{name}_data.h"], files[f"{name}_data.c"] = _data_files(name, up, weights, plan)
    files[f"{name}.h"] = _network_h(name, up, in_t, out_t, macc, options, plan)
    files[f"{name}.c"] = _network_c(graph, name, up, emitter, options, plan, macc, len(graph.ops))
    files[f"{name}_generate_report.txt"] = format_report(report, plan.format_table())
    files[f"{name}_c_info.json"] = json.dumps(report, indent=2, sort_keys=False) + "\n"
    files["ai_platform.h"] = (RUNTIME_ROOT / "api" / "ai_platform.h").read_text()
    for header in ("bnn_types.h", "bnn_kernels.h"):
        files[header] = (RUNTIME_ROOT / "include" / header).read_text()
    for src in sorted((RUNTIME_ROOT / "src").glob("*.h")):
        files[src.name] = src.read_text()
    for src in _kernel_sources(emitter.kernels):
        files[src.name] = src.read_text()
    return files


def _kernel_sources(kernels: set[str]) -> list[Path]:
    """The runtime source files defining ``kernels`` (by scanning for their definitions), and
    those defining the functions they call in turn (bnn_bconv2d_add uses bnn_add_s8.c's)."""
    texts = {src: src.read_text() for src in sorted((RUNTIME_ROOT / "src").glob("*.c"))}
    defines = {src: set(_DEFINITION.findall(text)) for src, text in texts.items()}
    found: set[Path] = set()
    wanted, done = set(kernels), set()
    while wanted - done:
        name = sorted(wanted - done)[0]
        done.add(name)
        homes = [src for src, names in defines.items() if name in names]
        if not homes:
            if name in kernels:
                raise BnnError(f"generate: no runtime source defines {name}")
            continue
        for src in homes:
            if src not in found:
                found.add(src)
                wanted |= set(_CALL.findall(texts[src]))
    return sorted(found)


# a function definition of the runtime with external linkage (at the start of a line), a call
_DEFINITION = re.compile(r"^(?:bnn_status_t|void|int|int32_t)\s+(bnn_\w+)\(", re.MULTILINE)
_CALL = re.compile(r"\b(bnn_\w+)\(")


def _config_h(name: str, up: str, options: GenerateOptions) -> str:
    return f"""/* {name}_config.h: generated by bnncube {__version__} */
#ifndef AI_{up}_CONFIG_H
#define AI_{up}_CONFIG_H

#define AI_{up}_CONFIG_TARGET "{options.target}"
#define AI_{up}_CONFIG_OPTIMIZATION "{options.optimization}"
#define AI_{up}_INPUTS_IN_ACTIVATIONS {int(options.inputs_allocation)}
#define AI_{up}_OUTPUTS_IN_ACTIVATIONS {int(options.outputs_allocation)}

#endif
"""


def _params_files(name: str, up: str, weights: _Weights, split: bool) -> tuple[str, str]:
    size = weights.size
    words = np.frombuffer(bytes(weights.data) + b"\0" * (size - len(weights.data)), "<u8")
    header = f"""/* {name}_data_params.h: generated by bnncube {__version__} */
#ifndef AI_{up}_DATA_PARAMS_H
#define AI_{up}_DATA_PARAMS_H

#include "ai_platform.h"

#define AI_{up}_DATA_WEIGHTS_SIZE ({size}u)

/* The weights, little-endian, 8-byte aligned: every constant the kernels read. */
extern const ai_u64 s_{name}_weights_array_u64[{max(len(words), 1)}];

#endif
"""
    body = [
        f"/* {name}_data_params.c: generated by bnncube {__version__} */",
        f'#include "{name}_data_params.h"',
        "",
    ]
    if split:
        body.append("/* constants (offset, bytes, C type):")
        for cname, offset, nbytes, ctype in weights.names:
            body.append(f" *   {offset:>9} {nbytes:>9} {ctype:9s} {cname}")
        body.append(" */")
    body.append(f"const ai_u64 s_{name}_weights_array_u64[{max(len(words), 1)}] = {{")
    values = [f"0x{int(w):016x}u" for w in words] or ["0x0u"]
    for i in range(0, len(values), 4):
        body.append("    " + ", ".join(values[i : i + 4]) + ",")
    body.append("};")
    return header, "\n".join(body) + "\n"


def _data_files(name: str, up: str, weights: _Weights, plan: Any) -> tuple[str, str]:
    header = f"""/* {name}_data.h: generated by bnncube {__version__} */
#ifndef AI_{up}_DATA_H
#define AI_{up}_DATA_H

#include "ai_platform.h"
#include "{name}_data_params.h"

#ifdef __cplusplus
extern "C" {{
#endif

/* Bytes of the activations buffer the application provides (8-byte aligned). */
#define AI_{up}_DATA_ACTIVATIONS_SIZE ({int(plan.size)}u)
#define AI_{up}_DATA_ACTIVATIONS_COUNT (1u)
#define AI_{up}_DATA_WEIGHTS_COUNT (1u)

#define AI_{up}_DATA_ACTIVATIONS(ptr) AI_BUFFER_INIT_RAW(ptr, AI_{up}_DATA_ACTIVATIONS_SIZE)
#define AI_{up}_DATA_WEIGHTS(ptr) AI_BUFFER_INIT_RAW(ptr, AI_{up}_DATA_WEIGHTS_SIZE)

/* The generated weights (flash). */
ai_handle ai_{name}_data_weights_get(void);
/* Fill `buffer` with the activations buffer at `ptr` (AI_FALSE if ptr is NULL). */
ai_bool ai_{name}_data_activations_buffer_get(const ai_handle ptr, ai_buffer *buffer);
/* Fill `buffer` with the weights at `ptr` (NULL: the generated weights). */
ai_bool ai_{name}_data_weights_buffer_get(const ai_handle ptr, ai_buffer *buffer);

#ifdef __cplusplus
}}
#endif

#endif
"""
    body = f"""/* {name}_data.c: generated by bnncube {__version__} */
#include "{name}_data.h"

ai_handle ai_{name}_data_weights_get(void)
{{
    return (ai_handle)s_{name}_weights_array_u64;
}}

ai_bool ai_{name}_data_activations_buffer_get(const ai_handle ptr, ai_buffer *buffer)
{{
    ai_buffer raw = AI_{up}_DATA_ACTIVATIONS(ptr);
    if (ptr == AI_HANDLE_NULL || buffer == (ai_buffer *)0) {{
        return AI_FALSE;
    }}
    *buffer = raw;
    return AI_TRUE;
}}

ai_bool ai_{name}_data_weights_buffer_get(const ai_handle ptr, ai_buffer *buffer)
{{
    ai_handle p = ptr ? ptr : ai_{name}_data_weights_get();
    ai_buffer raw = AI_{up}_DATA_WEIGHTS(p);
    if (buffer == (ai_buffer *)0) {{
        return AI_FALSE;
    }}
    *buffer = raw;
    return AI_TRUE;
}}
"""
    return header, body


def _io_macros(up: str, kind: str, t: Any) -> list[str]:
    shape = list(t.shape)
    size = int(np.prod(shape))
    fmt = _FORMATS[t.dtype]
    lines = [
        f"#define AI_{up}_{kind}_1_FORMAT {fmt}",
        f"#define AI_{up}_{kind}_1_SIZE ({size}u)",
        f"#define AI_{up}_{kind}_1_SIZE_BYTES ({t.nbytes}u)",
    ]
    if len(shape) == 4:
        lines += [
            f"#define AI_{up}_{kind}_1_HEIGHT ({shape[1]}u)",
            f"#define AI_{up}_{kind}_1_WIDTH ({shape[2]}u)",
            f"#define AI_{up}_{kind}_1_CHANNEL ({shape[3]}u)",
        ]
    else:
        lines += [f"#define AI_{up}_{kind}_1_CHANNEL ({shape[-1]}u)"]
    return lines


def _network_h(
    name: str, up: str, in_t: Any, out_t: Any, macc: int, options: GenerateOptions, plan: Any
) -> str:
    macros = "\n".join(_io_macros(up, "IN", in_t) + _io_macros(up, "OUT", out_t))
    return f"""/* {name}.h: generated by bnncube {__version__} (legacy X-CUBE-AI network API) */
#ifndef AI_{up}_H
#define AI_{up}_H

#include "ai_platform.h"
#include "{name}_config.h"
#include "{name}_data.h"

#ifdef __cplusplus
extern "C" {{
#endif

#define AI_{up}_MODEL_NAME "{name}"
#define AI_{up}_IN_NUM (1u)
#define AI_{up}_OUT_NUM (1u)
#define AI_{up}_N_MACC ({macc}u)
{macros}

/* Create the (single) instance. `network_config` is unused (may be NULL). */
ai_error ai_{name}_create(ai_handle *network, const ai_buffer *network_config);
/* Give it its weights (params.params.data NULL: the generated ones) and activations buffer
 * (AI_{up}_DATA_ACTIVATIONS_SIZE bytes, 8-byte aligned). */
ai_bool ai_{name}_init(ai_handle network, const ai_network_params *params);
/* create + init; activations[0] must not be NULL; weights NULL or weights[0] NULL: the
 * generated weights. */
ai_error ai_{name}_create_and_init(ai_handle *network, const ai_handle activations[],
                                  const ai_handle weights[]);
ai_buffer *ai_{name}_inputs_get(ai_handle network, ai_u16 *n_buffer);
ai_buffer *ai_{name}_outputs_get(ai_handle network, ai_u16 *n_buffer);
/* Run `input->shape.data[0]` batches (1 when the shape is empty); returns the number of
 * batches run, or <= 0 on error (then ai_{name}_get_error says why; a failing layer's index is
 * AI_ERROR_LAYER_INDEX(error)). */
ai_i32 ai_{name}_run(ai_handle network, const ai_buffer *input, ai_buffer *output);
ai_error ai_{name}_get_error(ai_handle network);
ai_bool ai_{name}_get_report(ai_handle network, ai_network_report *report);
ai_handle ai_{name}_destroy(ai_handle network);

#ifdef __cplusplus
}}
#endif

#endif
"""


def _quant_decls(name: str, which: str, t: Any) -> tuple[str, str]:
    """Static quantization info of an I/O buffer and its meta-info expression."""
    if t.quant is None or t.dtype not in ("int8", "uint8"):
        return "", "(const ai_buffer_meta_info *)0"
    scale = _f32_literal(float(t.quant.scale.reshape(-1)[0]))
    zp = int(t.quant.zero_point.reshape(-1)[0])
    ctype = "ai_i8" if t.dtype == "int8" else "ai_u8"
    flag = (
        "AI_BUFFER_META_FLAG_ZEROPOINT_S8"
        if t.dtype == "int8"
        else ("AI_BUFFER_META_FLAG_ZEROPOINT_U8")
    )
    decl = f"""static const ai_float s_{which}_scale[1] = {{{scale}}};
static const {ctype} s_{which}_zero_point[1] = {{{zp}}};
static const ai_intq_info s_{which}_intq = {{s_{which}_scale, s_{which}_zero_point}};
static const ai_intq_info_list s_{which}_intq_list = {{
    (ai_u16)(AI_BUFFER_META_FLAG_SCALE_FLOAT | {flag}), 1u, &s_{which}_intq}};
static const ai_buffer_meta_info s_{which}_meta = {{0u, &s_{which}_intq_list}};
"""
    return decl, f"&s_{which}_meta"


def _network_c(
    graph: Graph,
    name: str,
    up: str,
    emitter: _Emitter,
    options: GenerateOptions,
    plan: Any,
    macc: int,
    n_nodes: int,
) -> str:
    in_name, out_name = graph.inputs[0], graph.outputs[0]
    in_t, out_t = graph.tensors[in_name], graph.tensors[out_name]
    in_off = _offset(plan, in_name) if options.inputs_allocation else -1
    out_off = _offset(plan, out_name) if options.outputs_allocation else -1
    in_q, in_meta = _quant_decls(name, "in", in_t)
    out_q, out_meta = _quant_decls(name, "out", out_t)
    in_dims = ", ".join(f"{d}u" for d in in_t.shape)
    out_dims = ", ".join(f"{d}u" for d in out_t.shape)
    signature = hashlib.sha256("\n".join(emitter.lines).encode()).hexdigest()[:8]
    forward = "\n".join(emitter.lines)
    return f"""/* {name}.c: generated by bnncube {__version__}
 * model: {_c_identifier(graph.name)}; {len(graph.ops)} layers, {macc} MACC.
 * Every activation lives at a planned offset in the activations buffer ({int(plan.size)} bytes);
 * every constant at an offset in the weights ({emitter.weights.size} bytes).
 */
#include <string.h>

#include "{name}.h"
#include "bnn_kernels.h"

#define N_LAYERS {n_nodes}
#define IN_OFFSET ({in_off})   /* -1: the input stays in the application's buffer */
#define OUT_OFFSET ({out_off}) /* -1: the output goes to the application's buffer */

typedef struct {{
    ai_bool created;
    ai_bool initialized;
    ai_error error;
    ai_u8 *activations;
    const ai_u8 *weights;
    ai_u8 *in_data;  /* the input of the batch being run */
    ai_u8 *out_data; /* where the output of that batch goes */
    ai_buffer inputs[1];
    ai_buffer outputs[1];
}} network_ctx;

static network_ctx s_{name};

static const ai_shape_dimension s_in_dims[{len(in_t.shape)}] = {{{in_dims}}};
static const ai_shape_dimension s_out_dims[{len(out_t.shape)}] = {{{out_dims}}};
{in_q}{out_q}
static ai_error make_error(ai_u32 type, ai_u32 code)
{{
    ai_error e;
    e.type = type & 0xFFu;
    e.code = code & 0xFFFFFFu;
    return e;
}}

static void set_error(network_ctx *net, ai_u32 type, ai_u32 code)
{{
    if (net->error.type == AI_ERROR_NONE) {{
        net->error = make_error(type, code);
    }}
}}

/* The forward pass: returns -1 on success, else the index of the failing layer. */
static int forward(network_ctx *net)
{{
    ai_u8 *act = net->activations;
    const ai_u8 *w = net->weights;
    (void)act;
    (void)w;
{forward}
    return -1;
}}

static ai_buffer make_io(ai_buffer_format format, ai_u8 *data, const ai_buffer_meta_info *meta,
                         ai_size size, const ai_shape_dimension *dims, ai_u32 rank)
{{
    ai_buffer b;
    b.format = format;
    b.data = (ai_handle)data;
    b.meta_info = meta;
    b.flags = AI_BUFFER_FLAG_IS_IO | (data ? AI_BUFFER_FLAG_ALLOCATED : 0u);
    b.size = size;
    b.shape.type = AI_SHAPE_BHWC;
    b.shape.size = rank;
    b.shape.data = dims;
    return b;
}}

static network_ctx *get(ai_handle network)
{{
    return (network == (ai_handle)&s_{name} && s_{name}.created) ? &s_{name} : (network_ctx *)0;
}}

ai_error ai_{name}_create(ai_handle *network, const ai_buffer *network_config)
{{
    (void)network_config;
    if (network == (ai_handle *)0) {{
        return make_error(AI_ERROR_CREATE_FAILED, AI_ERROR_CODE_INVALID_PTR);
    }}
    if (s_{name}.created) {{ /* one instance; *network is left as it was */
        return make_error(AI_ERROR_CREATE_FAILED, AI_ERROR_CODE_IN_USE);
    }}
    memset(&s_{name}, 0, sizeof(s_{name}));
    s_{name}.created = AI_TRUE;
    *network = (ai_handle)&s_{name};
    return make_error(AI_ERROR_NONE, AI_ERROR_CODE_NONE);
}}

ai_bool ai_{name}_init(ai_handle network, const ai_network_params *params)
{{
    network_ctx *net = get(network);
    ai_u8 *act;
    if (net == (network_ctx *)0) {{
        return AI_FALSE;
    }}
    if (params == (const ai_network_params *)0) {{
        set_error(net, AI_ERROR_INIT_FAILED, AI_ERROR_CODE_NETWORK_PARAMS);
        return AI_FALSE;
    }}
    act = (ai_u8 *)params->activations.data;
    if (act == (ai_u8 *)0 && AI_{up}_DATA_ACTIVATIONS_SIZE > 0u) {{
        set_error(net, AI_ERROR_INIT_FAILED, AI_ERROR_CODE_NETWORK_ACTIVATIONS);
        return AI_FALSE;
    }}
    if (((size_t)act & 7u) != 0u) {{ /* the arena holds int64 and float data */
        set_error(net, AI_ERROR_INIT_FAILED, AI_ERROR_CODE_INVALID_PTR);
        return AI_FALSE;
    }}
    net->weights = params->params.data ? (const ai_u8 *)params->params.data
                                       : (const ai_u8 *)ai_{name}_data_weights_get();
    if (((size_t)net->weights & 7u) != 0u) {{
        set_error(net, AI_ERROR_INIT_FAILED, AI_ERROR_CODE_NETWORK_WEIGHTS);
        return AI_FALSE;
    }}
    net->activations = act;
    net->inputs[0] = make_io({_FORMATS[in_t.dtype]}, IN_OFFSET >= 0 ? act + IN_OFFSET : (ai_u8 *)0,
                             {in_meta}, AI_{up}_IN_1_SIZE, s_in_dims, {len(in_t.shape)}u);
    net->outputs[0] = make_io({_FORMATS[out_t.dtype]},
                              OUT_OFFSET >= 0 ? act + OUT_OFFSET : (ai_u8 *)0, {out_meta},
                              AI_{up}_OUT_1_SIZE, s_out_dims, {len(out_t.shape)}u);
    net->initialized = AI_TRUE;
    return AI_TRUE;
}}

ai_error ai_{name}_create_and_init(ai_handle *network, const ai_handle activations[],
                                  const ai_handle weights[])
{{
    ai_error err = ai_{name}_create(network, (const ai_buffer *)0);
    ai_network_params params;
    if (err.type != AI_ERROR_NONE) {{
        return err;
    }}
    if (activations == (const ai_handle *)0 || activations[0] == AI_HANDLE_NULL) {{
        ai_{name}_destroy(*network);
        *network = AI_HANDLE_NULL;
        return make_error(AI_ERROR_INIT_FAILED, AI_ERROR_CODE_NETWORK_ACTIVATIONS);
    }}
    memset(&params, 0, sizeof(params));
    params.activations.data = activations[0];
    params.activations.size = AI_{up}_DATA_ACTIVATIONS_SIZE;
    params.params.data = weights ? weights[0] : AI_HANDLE_NULL;
    params.params.size = AI_{up}_DATA_WEIGHTS_SIZE;
    if (!ai_{name}_init(*network, &params)) {{
        err = ai_{name}_get_error(*network);
        ai_{name}_destroy(*network);
        *network = AI_HANDLE_NULL;
        return err;
    }}
    return make_error(AI_ERROR_NONE, AI_ERROR_CODE_NONE);
}}

ai_buffer *ai_{name}_inputs_get(ai_handle network, ai_u16 *n_buffer)
{{
    network_ctx *net = get(network);
    if (net == (network_ctx *)0 || !net->initialized) {{
        return (ai_buffer *)0;
    }}
    if (n_buffer) {{
        *n_buffer = 1u;
    }}
    return net->inputs;
}}

ai_buffer *ai_{name}_outputs_get(ai_handle network, ai_u16 *n_buffer)
{{
    network_ctx *net = get(network);
    if (net == (network_ctx *)0 || !net->initialized) {{
        return (ai_buffer *)0;
    }}
    if (n_buffer) {{
        *n_buffer = 1u;
    }}
    return net->outputs;
}}

ai_i32 ai_{name}_run(ai_handle network, const ai_buffer *input, ai_buffer *output)
{{
    network_ctx *net = get(network);
    ai_i32 batches, b;
    ai_u8 *src;
    ai_u8 *dst;
    if (net == (network_ctx *)0) {{
        return -1;
    }}
    if (!net->initialized) {{
        set_error(net, AI_ERROR_INVALID_STATE, AI_ERROR_CODE_MISSED_INIT);
        return -1;
    }}
    net->error = make_error(AI_ERROR_NONE, AI_ERROR_CODE_NONE); /* the error of this run */
    if (input == (const ai_buffer *)0 || input->data == AI_HANDLE_NULL) {{
        set_error(net, AI_ERROR_INVALID_INPUT, AI_ERROR_CODE_INVALID_PTR);
        return -1;
    }}
    if (output == (ai_buffer *)0 || output->data == AI_HANDLE_NULL) {{
        set_error(net, AI_ERROR_INVALID_OUTPUT, AI_ERROR_CODE_INVALID_PTR);
        return -1;
    }}
    if (input->format != {_FORMATS[in_t.dtype]} || output->format != {_FORMATS[out_t.dtype]}) {{
        set_error(net, AI_ERROR_INVALID_INPUT, AI_ERROR_CODE_INVALID_FORMAT);
        return -1;
    }}
    batches = (input->shape.size > 0u && input->shape.data) ? (ai_i32)input->shape.data[0] : 1;
    if (batches < 1) {{
        set_error(net, AI_ERROR_INVALID_INPUT, AI_ERROR_CODE_INVALID_BATCH);
        return -1;
    }}
    src = (ai_u8 *)input->data;
    dst = (ai_u8 *)output->data;
    for (b = 0; b < batches; ++b) {{
        int failed;
        ai_u8 *in_here = src + (size_t)b * AI_{up}_IN_1_SIZE_BYTES;
        ai_u8 *out_here = dst + (size_t)b * AI_{up}_OUT_1_SIZE_BYTES;
        if (IN_OFFSET >= 0) {{
            net->in_data = net->activations + IN_OFFSET;
            if (in_here != net->in_data) {{
                memmove(net->in_data, in_here, AI_{up}_IN_1_SIZE_BYTES);
            }}
        }} else {{
            net->in_data = in_here;
        }}
        net->out_data = OUT_OFFSET >= 0 ? net->activations + OUT_OFFSET : out_here;
        failed = forward(net);
        if (failed >= 0) {{
            set_error(net, AI_ERROR_INVALID_STATE,
                      AI_ERROR_CODE_LAYER | ((ai_u32)failed << 8));
            return -b;
        }}
        if (OUT_OFFSET >= 0 && out_here != net->out_data) {{
            memmove(out_here, net->out_data, AI_{up}_OUT_1_SIZE_BYTES);
        }}
    }}
    return batches;
}}

ai_error ai_{name}_get_error(ai_handle network)
{{
    network_ctx *net = get(network);
    if (net == (network_ctx *)0) {{
        return make_error(AI_ERROR_INVALID_HANDLE, AI_ERROR_CODE_NETWORK);
    }}
    return net->error;
}}

ai_bool ai_{name}_get_report(ai_handle network, ai_network_report *report)
{{
    network_ctx *net = get(network);
    if (net == (network_ctx *)0 || report == (ai_network_report *)0) {{
        return AI_FALSE;
    }}
    memset(report, 0, sizeof(*report));
    report->model_name = AI_{up}_MODEL_NAME;
    report->model_signature = "{signature}";
    report->model_datetime = "";
    report->compile_datetime = "";
    report->runtime_revision = "bnncube {__version__}";
    report->tool_revision = "bnncube {__version__}";
    report->n_macc = (ai_u64)AI_{up}_N_MACC;
    report->n_inputs = 1u;
    report->n_outputs = 1u;
    report->inputs = net->initialized ? net->inputs : (ai_buffer *)0;
    report->outputs = net->initialized ? net->outputs : (ai_buffer *)0;
    report->params.format = AI_BUFFER_FORMAT_U8;
    report->params.data = (ai_handle)net->weights;
    report->params.size = AI_{up}_DATA_WEIGHTS_SIZE;
    report->activations.format = AI_BUFFER_FORMAT_U8;
    report->activations.data = (ai_handle)net->activations;
    report->activations.size = AI_{up}_DATA_ACTIVATIONS_SIZE;
    report->n_nodes = N_LAYERS;
    report->signature = 0x{signature}u;
    return AI_TRUE;
}}

ai_handle ai_{name}_destroy(ai_handle network)
{{
    network_ctx *net = get(network);
    if (net == (network_ctx *)0) {{
        return network;
    }}
    memset(net, 0, sizeof(*net));
    return AI_HANDLE_NULL;
}}
"""


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def write_generated(result: GenerateResult, output: str | Path) -> list[Path]:
    """Write the files into ``output`` as a whole (fsutil.write_folder: a staged folder swapped
    into place, the previous folder kept on failure or Ctrl-C)."""
    from bnncube.fsutil import write_folder

    return write_folder(output, result.files)
