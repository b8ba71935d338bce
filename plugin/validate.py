"""`bnncube validate --mode host`: generate, build for the host, run, compare.

The generated folder is compiled into a shared library (with the layer observer hook on, so every
layer's output can be read back) and driven through its own C API (``ai_NAME_create_and_init``,
``ai_NAME_run``) with ctypes. Its outputs are compared with

* the reference (``converters/reference.py``): must be bit-exact; the first layer that differs is
  named (exit 1 otherwise);
* the original model (Keras/QKeras forward pass, TFLite interpreter with its reference kernels,
  or onnxruntime for bnncube's ONNX form): stedgeai's metrics per output (rmse, mae, l2r, mean,
  std, nse, cos; acc for classifiers).
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.converters.ir import Graph
from bnncube.errors import BnnError, ValidationFailed

_NP = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int32": np.int32}
_FORMAT = {"float32": 1, "uint8": 2, "int8": 3, "int32": 4}
OBSERVER_C = """
#include <stdint.h>
typedef void (*bnn_observer_fn)(int layer, const void *data, unsigned int nbytes);
static bnn_observer_fn s_observer = 0;
void bnn_validation_set_observer(bnn_observer_fn fn) { s_observer = fn; }
void bnn_validation_observer(int layer, const void *data, unsigned int nbytes)
{
    if (s_observer) {
        s_observer(layer, data, nbytes);
    }
}
"""


class _Shape(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("data", ctypes.c_void_p)]


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("format", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("meta_info", ctypes.c_void_p),
        ("flags", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("shape", _Shape),
    ]


class _Error(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32, 8), ("code", ctypes.c_uint32, 24)]


_OBSERVER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)


def build_host_network(folder: Path, c_name: str, build_dir: Path) -> Path:
    """Compile a generated folder (plus the observer hook) into a shared library."""
    import os

    cc = os.environ.get("CC", "gcc")
    obs = build_dir / "bnn_validation_observer.c"
    obs.write_text(OBSERVER_C)
    lib = build_dir / f"lib{c_name}.so"
    sources = sorted(str(p) for p in Path(folder).glob("*.c"))
    hook = f"-DAI_{c_name.upper()}_LAYER_OBSERVER=bnn_validation_observer"
    cmd = [
        cc,
        "-shared",
        "-fPIC",
        "-std=c99",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-ffp-contract=off",
        hook,
        "-include",
        str(build_dir / "observer.h"),
        f"-I{folder}",
        *sources,
        str(obs),
        "-o",
        str(lib),
    ]
    (build_dir / "observer.h").write_text(
        "void bnn_validation_observer(int layer, const void *data, unsigned int nbytes);\n"
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BnnError(
            f"validate: the generated code does not compile on the host: "
            f"{(proc.stderr or proc.stdout).strip().splitlines()[0][:300]}"
        )
    return lib


@dataclass
class HostRun:
    outputs: np.ndarray  # [N, ...] in the output's IR representation
    layers: dict[int, list[bytes]] | None  # layer index -> output bytes per input


class HostNetwork:
    """A generated network loaded from its host shared library, driven through its C API."""

    def __init__(self, library: Path, folder: Path, c_name: str, graph: Graph) -> None:
        self.lib = ctypes.CDLL(str(library))
        self.graph = graph
        self.name = c_name
        self.fn = {
            f: getattr(self.lib, f"ai_{c_name}_{f}")
            for f in ("create_and_init", "run", "get_error", "destroy", "inputs_get")
        }
        self.fn["create_and_init"].restype = _Error
        self.fn["create_and_init"].argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
        ]
        self.fn["run"].restype = ctypes.c_int32
        buffer_p = ctypes.POINTER(_Buffer)
        self.fn["run"].argtypes = [ctypes.c_void_p, buffer_p, buffer_p]
        self.fn["get_error"].restype = _Error
        self.fn["get_error"].argtypes = [ctypes.c_void_p]
        self.fn["destroy"].restype = ctypes.c_void_p
        self.fn["destroy"].argtypes = [ctypes.c_void_p]
        self.activations_size = _macro_size(Path(folder), c_name)

    def run(self, inputs: np.ndarray, per_layer: bool = False) -> HostRun:
        g = self.graph
        in_t, out_t = g.tensors[g.inputs[0]], g.tensors[g.outputs[0]]
        n = int(inputs.shape[0])
        x = np.ascontiguousarray(inputs.astype(_NP[in_t.dtype]).reshape((n,) + in_t.shape[1:]))
        y = np.zeros((n,) + out_t.shape[1:], _NP[out_t.dtype])
        arena = np.zeros(self.activations_size + 8, np.uint8)
        base = arena.ctypes.data
        aligned = base + (-base) % 8
        handle = ctypes.c_void_p()
        acts = (ctypes.c_void_p * 1)(aligned)
        err = self.fn["create_and_init"](ctypes.byref(handle), acts, None)
        if err.type != 0:
            raise BnnError(f"validate: ai_{self.name}_create_and_init failed (type {err.type})")
        layers: dict[int, list[bytes]] | None = {} if per_layer else None

        def observe(layer: int, data: int, nbytes: int) -> None:
            if layers is not None:
                layers.setdefault(layer, []).append(ctypes.string_at(data, nbytes))

        callback = _OBSERVER(observe)
        self.lib.bnn_validation_set_observer(callback if per_layer else _OBSERVER(0))
        try:
            in_dims = (ctypes.c_uint32 * len(in_t.shape))(n, *in_t.shape[1:])
            out_dims = (ctypes.c_uint32 * len(out_t.shape))(n, *out_t.shape[1:])
            bin_ = _Buffer(_FORMAT[in_t.dtype], x.ctypes.data, None, 1, in_t.num_elements)
            bin_.shape = _Shape(1, len(in_t.shape), ctypes.cast(in_dims, ctypes.c_void_p))
            bout = _Buffer(_FORMAT[out_t.dtype], y.ctypes.data, None, 1, out_t.num_elements)
            bout.shape = _Shape(1, len(out_t.shape), ctypes.cast(out_dims, ctypes.c_void_p))
            done = self.fn["run"](handle, ctypes.byref(bin_), ctypes.byref(bout))
            if done != n:
                err = self.fn["get_error"](handle)
                raise BnnError(
                    f"validate: ai_{self.name}_run ran {done} of {n} inputs "
                    f"(error type {err.type:#x}, code {err.code:#x})"
                )
        finally:
            self.fn["destroy"](handle)
            self.lib.bnn_validation_set_observer(_OBSERVER(0))
        return HostRun(y, layers)


def _macro_size(folder: Path, c_name: str) -> int:
    """AI_NAME_DATA_ACTIVATIONS_SIZE as the generated header defines it."""
    text = (folder / f"{c_name}_data.h").read_text()
    key = f"#define AI_{c_name.upper()}_DATA_ACTIVATIONS_SIZE ("
    start = text.index(key) + len(key)
    return int(text[start : text.index("u)", start)])


# --------------------------------------------------------------------------------------------
# metrics (stedgeai's)
# --------------------------------------------------------------------------------------------


def metrics(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """rmse, mae, l2r, mean and std of the difference, nse and cos of ``ours`` vs ``ref``
    (float64, per output over all inputs)."""
    a = np.asarray(ours, np.float64).reshape(len(ours), -1)
    b = np.asarray(ref, np.float64).reshape(len(ref), -1)
    d = a - b
    ref_var = float(np.sum((b - b.mean()) ** 2))
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1), 1.0)
    out = {
        "rmse": float(np.sqrt(np.mean(d**2))),
        "mae": float(np.mean(np.abs(d))),
        "l2r": float(np.linalg.norm(d) / max(np.linalg.norm(b), 1e-30)),
        "mean": float(np.mean(d)),
        "std": float(np.std(d)),
        "nse": float(1.0 - np.sum(d**2) / ref_var) if ref_var > 0 else 1.0,
        "cos": float(np.mean(cos)),
    }
    if b.shape[1] > 1 and np.allclose(b.sum(axis=1), 1.0, atol=1e-3) and np.all(b >= 0):
        out["acc"] = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    return out


def dequantized(graph: Graph, name: str, values: np.ndarray) -> np.ndarray:
    t = graph.tensors[name]
    if t.dtype in ("int8", "uint8") and t.quant is not None:
        # as a DEQUANTIZE computes it: f32(double(f32(scale)) * (q - zp))
        scale = float(np.float32(t.quant.scale.reshape(-1)[0]))
        zp = int(t.quant.zero_point.reshape(-1)[0])
        real = ((values.astype(np.float64) - zp) * scale).astype(np.float32)
        return real.astype(np.float64)
    return values.astype(np.float64)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def load_inputs(path: str, graph: Graph) -> np.ndarray:
    """Inputs from a .npy or .npz (first array) file: [N, ...] matching the model's input."""
    p = Path(path)
    t = graph.tensors[graph.inputs[0]]
    if not p.is_file():
        raise BnnError(f"option -vi: {p}: no such file")
    try:
        data = np.load(p, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            keys = list(data.keys())
            if not keys:
                raise BnnError(f"option -vi: {p}: the .npz file holds no array")
            data = data[keys[0]]
    except BnnError:
        raise
    except Exception as e:  # numpy raises several types for a bad file
        raise BnnError(f"option -vi: {p}: not a .npy/.npz file ({type(e).__name__})") from None
    data = np.asarray(data)
    item = t.shape[1:]
    if data.shape == t.shape[1:]:
        data = data[None]
    if data.ndim != len(t.shape) or data.shape[1:] != item:
        raise BnnError(
            f"option -vi: {p}: arrays of shape {data.shape}; the input "
            f"{graph.inputs[0]!r} needs [N, {', '.join(map(str, item))}]"
        )
    if t.dtype == "float32" and data.dtype.kind not in "fiu":
        raise BnnError(f"option -vi: {p}: dtype {data.dtype}; the input needs numbers (float32)")
    if t.dtype in ("int8", "uint8"):
        info = np.iinfo(_NP[t.dtype])
        if data.dtype.kind not in "iu" or data.min() < info.min or data.max() > info.max:
            raise BnnError(f"option -vi: {p}: dtype {data.dtype}; the input needs {t.dtype} values")
    if t.dtype == "float32" and not np.all(np.isfinite(data)):
        raise BnnError(f"option -vi: {p}: holds NaN or Inf")
    return data.astype(_NP[t.dtype])


def random_inputs(graph: Graph, count: int, seed: int, value_range: tuple[float, float] | None):
    t = graph.tensors[graph.inputs[0]]
    rng = np.random.default_rng(seed)
    shape = (count,) + t.shape[1:]
    if t.dtype == "float32":
        lo, hi = value_range or (-1.0, 1.0)
        return rng.uniform(lo, hi, shape).astype(np.float32)
    info = np.iinfo(_NP[t.dtype])
    lo, hi = value_range or (info.min, info.max)
    return rng.integers(int(lo), int(hi) + 1, shape).astype(_NP[t.dtype])


# --------------------------------------------------------------------------------------------
# the original model
# --------------------------------------------------------------------------------------------


def original_outputs(model: str, kind: str, graph: Graph, inputs: np.ndarray) -> np.ndarray:
    """The original model's outputs for ``inputs`` (float, dequantized)."""
    if kind == "keras":
        from bnncube.converters.keras_frontend import load_keras_model

        m = load_keras_model(model)
        return np.asarray(m.predict(inputs.astype(np.float32), verbose=0), np.float64)
    if kind == "tflite" and any(op.type in ("BinaryConv2D", "Bitpack") for op in graph.ops):
        # Larq Compute Engine ops: only LCE's own interpreter runs them
        import larq_compute_engine as lce

        interp = lce.testing.Interpreter(Path(model).read_bytes(), num_threads=1)
        ys = [np.asarray(interp.predict(x[None]))[0] for x in inputs]
        return dequantized(graph, graph.outputs[0], np.stack(ys))
    if kind == "tflite":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interp = Interpreter(
            model_path=str(model), experimental_op_resolver_type=OpResolverType.BUILTIN_REF
        )
        interp.allocate_tensors()
        (inp,) = interp.get_input_details()
        (out,) = interp.get_output_details()
        results = []
        for x in inputs:
            interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
            interp.invoke()
            results.append(np.asarray(interp.get_tensor(out["index"]))[0])
        y = np.stack(results)
        scale, zp = out.get("quantization", (0.0, 0))
        if y.dtype != np.float32 and scale:
            return (y.astype(np.float64) - zp) * scale
        return y.astype(np.float64)
    from bnncube.converters.onnx_ops import make_session

    sess = make_session(model)
    name = sess.get_inputs()[0].name
    ys = [sess.run(None, {name: x[None]})[0][0] for x in inputs]
    return dequantized(graph, graph.outputs[0], np.stack(ys))


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def validate_host(
    model: str,
    kind: str,
    graph: Graph,
    generated: Any,
    c_name: str,
    inputs: np.ndarray,
    per_layer: bool,
    workspace: Path,
    expected_file: str | None = None,
) -> dict[str, Any]:
    """Run the generated code on ``inputs``; compare; return the report dict.

    The generated files go to ``workspace/NAME`` and their host build to
    ``workspace/NAME_host`` (both replaced on every run)."""
    import shutil

    from bnncube.converters.reference import run_graph
    from bnncube.generate import write_generated

    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnnError(f"option -w: cannot create {workspace}: {e.strerror}") from None
    folder = workspace / c_name
    build = workspace / f"{c_name}_host"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    write_generated(generated, folder)
    lib = build_host_network(folder, c_name, build)
    net = HostNetwork(lib, folder, c_name, graph)
    run = net.run(inputs, per_layer=per_layer)
    out_name = graph.outputs[0]
    refs, first_bad = [], None
    layer_diffs: dict[str, int] = {}
    for i, x in enumerate(inputs):
        values = run_graph(graph, [x[None]], outputs_only=not per_layer)
        refs.append(values[out_name][0])
        if per_layer and run.layers is not None:
            for layer, op in enumerate(graph.ops):
                got = run.layers.get(layer)
                if got is None:
                    continue
                want = np.ascontiguousarray(values[op.outputs[0]]).tobytes()
                if got[i] != want:
                    layer_diffs[op.name] = layer_diffs.get(op.name, 0) + 1
                    if first_bad is None:
                        first_bad = (layer, op.name)
    ref = np.stack(refs)
    exact = bool(np.array_equal(ref, run.outputs))
    if not exact and first_bad is None:  # find the first diverging layer on one failing input
        bad = next(i for i in range(len(inputs)) if not np.array_equal(ref[i], run.outputs[i]))
        again = net.run(inputs[bad : bad + 1], per_layer=True)
        values = run_graph(graph, [inputs[bad : bad + 1]], outputs_only=False)
        for layer, op in enumerate(graph.ops):
            got = (again.layers or {}).get(layer)
            if got and got[0] != np.ascontiguousarray(values[op.outputs[0]]).tobytes():
                first_bad = (layer, op.name)
                break
    if expected_file is not None:
        original = load_expected(expected_file, graph, len(inputs))
        against = f"file {Path(expected_file).name}"
    else:
        # the original model takes its own input type: dequantize an int8 input given to a
        # float model (exact: the model's first quantizer maps those values back)
        original_graph = load_model_graph(model, kind)
        model_in = original_graph.tensors[original_graph.inputs[0]]
        fed = inputs
        ours_in = graph.tensors[graph.inputs[0]]
        if model_in.dtype == "float32" and ours_in.dtype != "float32":
            fed = dequantized(graph, graph.inputs[0], inputs).astype(np.float32)
        elif model_in.dtype in ("int8", "uint8") and ours_in.dtype == "float32":
            # the Quantize the generated graph starts with (TFLite rounding)
            from bnncube.converters.reference import run_graph as _run

            first = graph.ops[0]
            step = Graph(
                "quantize", dict(graph.tensors), [first], [first.inputs[0]], [first.outputs[0]]
            )
            fed = np.concatenate([_run(step, [x[None]])[first.outputs[0]] for x in inputs])
        original = original_outputs(model, kind, original_graph, fed)
        against = {
            "keras": "Keras/QKeras",
            "tflite": "TFLite interpreter (reference kernels)",
            "onnx": "onnxruntime",
        }[kind]
    ours_f = dequantized(graph, out_name, run.outputs)
    ref_f = dequantized(graph, out_name, ref)
    report = {
        "model": Path(model).name,
        "c_name": c_name,
        "mode": "host",
        "original": against,
        "n_inputs": int(len(inputs)),
        "bit_exact": exact,
        "first_diverging_layer": None
        if first_bad is None
        else {"id": first_bad[0], "name": first_bad[1]},
        "layers_differing": layer_diffs if per_layer else None,
        "metrics": {
            out_name: {
                "vs_original": metrics(ours_f, original.reshape(ours_f.shape)),
                "vs_reference": metrics(ours_f, ref_f),
            }
        },
        "activations_bytes": generated.activations_bytes,
        "weights_bytes": generated.weights_bytes,
    }
    report["_arrays"] = {"outputs": run.outputs, "reference": ref, "original": original}
    return report


def load_expected(path: str, graph: Graph, count: int) -> np.ndarray:
    """Expected outputs from -vo (.npy/.npz): [N, ...] matching the model's output."""
    p = Path(path)
    t = graph.tensors[graph.outputs[0]]
    if not p.is_file():
        raise BnnError(f"option -vo: {p}: no such file")
    try:
        data = np.load(p, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            data = data[list(data.keys())[0]]
    except Exception as e:
        raise BnnError(f"option -vo: {p}: not a .npy/.npz file ({type(e).__name__})") from None
    data = np.asarray(data, np.float64)
    if data.shape[0] != count or int(np.prod(data.shape[1:])) != int(np.prod(t.shape[1:])):
        raise BnnError(
            f"option -vo: {p}: arrays of shape {data.shape}; expected {count} outputs of shape "
            f"{list(t.shape[1:])}"
        )
    return data


def load_model_graph(model: str, kind: str) -> Graph:
    from bnncube.converters.loader import load_model

    return load_model(model, kind)


def format_validate_report(report: dict[str, Any]) -> str:
    lines = [
        "bnncube validate report",
        "",
        f"model     : {report['model']}",
        f"c_name    : {report['c_name']}",
        f"mode      : {report['mode']}",
        f"inputs    : {report['n_inputs']}",
        f"original  : {report['original']}",
        f"bit-exact : {'yes' if report['bit_exact'] else 'NO'} (generated C vs the reference)",
    ]
    if report["first_diverging_layer"]:
        d = report["first_diverging_layer"]
        lines.append(f"first diverging layer: {d['id']} {d['name']}")
    lines.append("")
    header = f"{'output':20s} {'vs':10s} " + " ".join(
        f"{k:>10s}" for k in ("rmse", "mae", "l2r", "mean", "std", "nse", "cos")
    )
    lines.append(header)
    for out, per in report["metrics"].items():
        for against, m in per.items():
            values = " ".join(
                f"{m[k]:>10.3g}" for k in ("rmse", "mae", "l2r", "mean", "std", "nse", "cos")
            )
            lines.append(f"{out[:20]:20s} {against[3:]:10s} {values}")
    return "\n".join(lines) + "\n"


def write_validate_reports(
    report: dict[str, Any], output: Path, c_name: str, save_csv: bool = False
) -> list[Path]:
    """NAME_validate_report.txt and .json (and with ``save_csv`` the outputs as CSV), all or
    nothing."""
    from bnncube.fsutil import write_text_files

    arrays = report.get("_arrays", {})
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    newline = chr(10)
    files = {
        output / f"{c_name}_validate_report.txt": format_validate_report(public),
        output / f"{c_name}_validate_report.json": json.dumps(public, indent=2) + newline,
    }
    if save_csv:
        for key in ("outputs", "reference", "original"):
            if key in arrays:
                rows = np.asarray(arrays[key]).reshape(len(arrays[key]), -1)
                lines = [",".join(repr(float(v)) for v in row) for row in rows]
                files[output / f"{c_name}_val_{key}.csv"] = newline.join(lines) + newline
    write_text_files(files)
    return sorted(files)


def check_bit_exact(report: dict[str, Any]) -> None:
    if not report["bit_exact"]:
        where = report["first_diverging_layer"]
        at = f"; first diverging layer {where['id']} ({where['name']})" if where else ""
        raise ValidationFailed(f"the generated C differs from the reference{at}")
