"""Keras / QKeras (`.h5`, `.keras`) front end: a Keras model to bnncube's IR.

``keras_to_ir`` maps each layer to one IR op, as the model is written (BatchNorm and activations as
their own ops, a QActivation as a Quantize or Bitpack op). ``load_keras`` then runs the lowering
passes (:mod:`bnncube.converters.passes`) to get the deployed form that every back end reads.

Weights of quantized layers are stored as the integers the trained quantizer produces (honouring
the quantizer, never recalibrating): int8 for ``quantized_bits``, +1/-1 for ``binary``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.converters.checks import check_graph
from bnncube.converters.ir import Graph, Op, Quant, Tensor
from bnncube.converters.quantizers import QSpec, quantize_weights, quantizer_spec
from bnncube.errors import BnnError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

SUPPORTED_LAYERS = (
    "InputLayer, Conv2D, DepthwiseConv2D, Dense, BatchNormalization, ReLU, Activation, Add, "
    "ZeroPadding2D, Flatten, Reshape, AveragePooling2D, MaxPooling2D, GlobalAveragePooling2D, "
    "Dropout, QConv2D, QDepthwiseConv2D, QDense, QActivation"
)


def custom_objects() -> dict[str, Any]:
    """The QKeras classes a saved model may name."""
    from qkeras.utils import _add_supported_quantized_objects

    objects: dict[str, Any] = {}
    _add_supported_quantized_objects(objects)
    return objects


def load_keras_model(path: str | Path) -> Any:
    """Load a Keras/QKeras model file, turning every failure into a one-line BnnError (read once
    per file inside ``loader.reading_each_file_once``)."""
    from bnncube.converters.loader import cached

    path = Path(path)
    return cached("keras", path, lambda: _load_keras_model(path), copied=False)


try:  # seconds the HDF5 probe may take; the fuzz workers set less
    HDF5_PROBE_TIMEOUT_S = float(os.environ.get("BNNCUBE_HDF5_PROBE_TIMEOUT", "20"))
except ValueError:
    HDF5_PROBE_TIMEOUT_S = 20.0


def _read_all_hdf5(path: str) -> None:
    """Read every attribute and dataset of the HDF5 file ``path`` (of each ``.h5`` member of a
    ``.keras`` archive); Python-level errors are ignored: Keras reports them."""
    import io
    import zipfile

    import h5py

    def visit(_: str, obj: Any) -> None:
        for key in list(obj.attrs):
            try:
                obj.attrs[key]
            except Exception:
                pass
        if isinstance(obj, h5py.Dataset):
            try:
                obj[()]
            except Exception:
                pass

    def read(source: Any) -> None:
        with h5py.File(source, "r") as handle:
            visit("", handle)
            handle.visititems(visit)

    if path.lower().endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(".h5"):
                    read(io.BytesIO(archive.read(name)))
    else:
        read(path)


def _probe_hdf5(path: Path) -> None:
    """Read the HDF5 data of ``path`` once in a forked child process first: the HDF5 library can
    loop forever or crash on a damaged file (fuzzing found both, docs/fuzzing.md), which must
    become a clear error rather than a hang or a dead process. (Without ``os.fork`` the file is
    loaded directly.)"""
    import signal
    import time

    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # the child: only h5py, then leave at once (no atexit, no buffers flushed)
        import faulthandler

        faulthandler.disable()  # its crash is reported by the parent, without a stack dump
        try:
            _read_all_hdf5(str(path))
        except BaseException:  # noqa: BLE001
            os._exit(1)
        os._exit(0)
    deadline = time.monotonic() + HDF5_PROBE_TIMEOUT_S
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                raise BnnError(
                    f"{path}: damaged HDF5 data: reading it did not finish within "
                    f"{HDF5_PROBE_TIMEOUT_S:.0f} s; save the model again"
                )
            time.sleep(0.002)
    except BaseException:  # the time limit, or an interrupt: the child must not outlive us
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        raise BnnError(
            f"{path}: damaged HDF5 data: the HDF5 library crashed reading it "
            f"(signal {os.WTERMSIG(status)}); save the model again"
        )


def _node_refs(node: Any) -> list[tuple[str, Any]] | None:
    """``[(layer name, node index)]`` of one inbound node of a functional config (the
    ``[[name, node_index, tensor_index, kwargs], ...]`` form), or None for another form."""
    if not isinstance(node, list):
        return None
    refs = []
    for ref in node:
        if not (isinstance(ref, list) and len(ref) >= 2 and isinstance(ref[0], str)):
            return None
        refs.append((ref[0], ref[1]))
    return refs


def _node_exists(made: dict[str, int], ref: str, index: Any) -> bool:
    """Whether node ``index`` of layer ``ref`` exists yet (Keras looks a node index up as given,
    so one that is not an integer never exists)."""
    if not isinstance(index, int) or isinstance(index, bool):
        return False
    return 0 <= index < made.get(ref, 0)


def check_node_graph(model_config: Any, path: Path) -> None:
    """Refuse a functional model config whose layers can never all be connected: an inbound
    node that names a node index its layer never gets, or layers that feed each other in a
    cycle. Keras would re-queue such nodes forever (a hang found by fuzzing). Other damage,
    and configs in another form, are left to Keras to report."""
    if not isinstance(model_config, dict) or not isinstance(model_config.get("config"), dict):
        return
    layers = model_config["config"].get("layers")
    if not isinstance(layers, list) or model_config.get("class_name") == "Sequential":
        return
    made: dict[str, int] = {}  # layer name -> nodes created so far
    pending: dict[str, list[list[tuple[str, int]]]] = {}
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
            return
        if isinstance(layer.get("config"), dict) and "layers" in layer["config"]:
            check_node_graph(layer, path)  # a nested model
        nodes = layer.get("inbound_nodes") or []
        if not isinstance(nodes, list):
            return
        refs = [_node_refs(node) for node in nodes]
        if any(r is None for r in refs):
            return
        name = layer["name"]
        if layer.get("class_name") == "InputLayer" or name not in made:
            made[name] = 1 if layer.get("class_name") == "InputLayer" else 0
        pending.setdefault(name, []).extend(r for r in refs if r is not None)
    while any(pending.values()):
        progress = False
        for name, nodes in pending.items():
            while nodes and all(_node_exists(made, ref, index) for ref, index in nodes[0]):
                nodes.pop(0)
                made[name] += 1
                progress = True
        if not progress:
            name, nodes = next((n, v) for n, v in pending.items() if v)
            missing = [(ref, i) for ref, i in nodes[0] if not _node_exists(made, ref, i)]
            ref, index = missing[0]
            if ref not in made:
                return  # an unknown layer: Keras reports it
            raise BnnError(
                f"{path}: layer {name!r}: its input is node {index!r} of layer {ref!r}, which "
                "does not exist or depends on this layer (a cycle); the model config is damaged"
            )


def _check_h5_node_graph(path: Path) -> None:
    import json

    import h5py

    try:
        with h5py.File(path, "r") as handle:
            text = handle.attrs.get("model_config")
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        config = json.loads(text) if isinstance(text, str) else None
    except Exception:  # unreadable: Keras reports it
        return
    check_node_graph(config, path)


def _integer_param(quantizer: Any, name: str, low: int, high: int, where: str) -> None:
    value = getattr(quantizer, name, None)
    try:
        number = float(np.asarray(value))
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number == round(number) and low <= number <= high):
        raise BnnError(
            f"{where}: quantizer {quantizer}: {name}={value!r} is not supported; expected an "
            f"integer in {low}..{high}"
        )


def _checked_spec(quantizer: Any, where: str, *, allow_wide: bool = False) -> QSpec:
    """:func:`quantizer_spec` of a quantizer whose bits and integer bits are in range (a file can
    hold any number there; QKeras itself fails on negative or huge ones)."""
    import qkeras

    try:
        str(quantizer)  # QKeras' __str__ converts its parameters and fails on odd ones
    except (TypeError, ValueError, ArithmeticError) as e:
        raise BnnError(
            f"{where}: quantizer {type(quantizer).__name__} has a parameter of the wrong type "
            f"({type(e).__name__}: {' '.join(str(e).split())[:120]})"
        ) from None
    if isinstance(quantizer, qkeras.quantized_bits | qkeras.quantized_relu):
        _integer_param(quantizer, "bits", 1, 32, where)
        _integer_param(quantizer, "integer", 0, int(quantizer.bits), where)
    return quantizer_spec(quantizer, where, allow_wide=allow_wide)


def _apply_quantizer(quantizer: Any, run: Any, where: str) -> Any:
    """``run()``, which applies the QKeras ``quantizer``; its TensorFlow or arithmetic errors
    (parameters that passed the checks but that it cannot apply) become a BnnError."""
    import tensorflow as tf

    try:
        return run()
    except (tf.errors.OpError, ArithmeticError, ValueError, TypeError) as e:
        first = " ".join(str(e).split())[:160]
        raise BnnError(
            f"{where}: quantizer {quantizer} cannot quantize the weights ({type(e).__name__}: "
            f"{first})"
        ) from None


def _load_keras_model(path: Path) -> Any:
    import tensorflow as tf

    if not path.is_file():
        raise BnnError(f"{path}: no such file")
    if path.suffix.lower() == ".h5":
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89HDF\r\n\x1a\n":
                raise BnnError(f"{path}: not a Keras .h5 model (no HDF5 signature)")
    elif path.suffix.lower() == ".keras":
        import zipfile

        if not zipfile.is_zipfile(path):
            raise BnnError(f"{path}: not a Keras .keras model (not a zip archive)")
    _probe_hdf5(path)
    if path.suffix.lower() == ".h5":
        _check_h5_node_graph(path)
    try:
        if path.suffix.lower() == ".keras":
            model = _load_keras_v3(path)
        else:
            model = tf.keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    except BnnError:
        raise
    except Exception as exc:  # Keras raises many types; all mean "this file is not usable"
        message = " ".join(str(exc).split())
        message = re.sub(r" (at|from) <[^>]* at 0x[0-9a-f]+>", "", message)
        if "Unknown layer" in message or "Unknown" in message and "layer" in message.lower():
            first = message.split(".")[0]
            raise BnnError(f"{path}: {first}; supported layers: {SUPPORTED_LAYERS}") from None
        raise BnnError(f"{path}: cannot load Keras model ({message[:200]})") from None
    if not isinstance(model, tf.keras.Model):
        raise BnnError(f"{path}: does not hold a Keras model")
    return model


def _quantizer_dicts_to_strings(node: Any) -> Any:
    """Keras-3-format configs hold QActivation quantizers as nested dicts that QActivation's
    from_config cannot read; QKeras reads its own string form (``quantized_bits(bits=8, ...)``)."""
    if isinstance(node, dict):
        if node.get("module") == "qkeras.quantizers" and isinstance(node.get("config"), dict):
            args = ", ".join(f"{key}={value!r}" for key, value in node["config"].items())
            return f"{node['class_name']}({args})"
        return {key: _quantizer_dicts_to_strings(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_quantizer_dicts_to_strings(value) for value in node]
    return node


def _load_keras_v3(path: Path) -> Any:
    """Load a `.keras` archive, rewriting QKeras activation quantizers QKeras cannot reload."""
    import json
    import tempfile
    import zipfile

    import tensorflow as tf

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if "config.json" not in members:
        raise BnnError(f"{path}: not a Keras .keras model (no config.json inside)")
    config = json.loads(members["config.json"])
    check_node_graph(config, path)
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("class_name") in ("QActivation", "QConv2D", "QDepthwiseConv2D", "QDense"):
            activation = layer.get("config", {}).get("activation")
            layer["config"]["activation"] = _quantizer_dicts_to_strings(activation)
    members["config.json"] = json.dumps(config).encode()
    with tempfile.TemporaryDirectory() as tmp:
        patched = Path(tmp) / path.name
        with zipfile.ZipFile(patched, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return tf.keras.models.load_model(patched, custom_objects=custom_objects(), compile=False)


def load_keras(path: str | Path, *, lower: bool = True) -> Graph:
    """Read a Keras/QKeras model file into the IR (lowered to its deployed form by default)."""
    from bnncube.converters.passes import lower_graph

    model = load_keras_model(path)
    try:
        graph = keras_to_ir(model, source=str(path))
        check_graph(graph, str(path))
        return lower_graph(graph) if lower else graph
    except BnnError as e:  # name the file in every message about its layers
        if str(path) in str(e):
            raise
        raise BnnError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
def _tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    out = -(-size // stride)
    effective = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _pads(layer: Any, in_shape: tuple[int, ...], kernel: tuple[int, int]) -> list[int]:
    strides = tuple(layer.strides)
    dil = tuple(getattr(layer, "dilation_rate", (1, 1)))
    if layer.padding == "valid":
        return [0, 0, 0, 0]
    if layer.padding != "same":
        raise BnnError(f"layer {layer.name!r}: padding {layer.padding!r} is not supported")
    top, bottom = _tf_same_pads(in_shape[1], kernel[0], strides[0], dil[0])
    left, right = _tf_same_pads(in_shape[2], kernel[1], strides[1], dil[1])
    return [top, bottom, left, right]


def _activation_name(fn: Any, where: str) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name in ("linear", None):
        return "none"
    if name in ("relu", "relu6"):
        return name
    raise BnnError(
        f"{where}: activation {name!r} is not supported; supported: linear, relu, relu6 "
        "(or a QActivation quantizer)"
    )


class _Builder:
    """Walks the Keras layers in order and emits IR ops."""

    def __init__(self, model: Any, source: str) -> None:
        self.model = model
        self.graph = Graph(name=model.name, source=source, source_format="keras")
        self.out_of: dict[str, str] = {}  # keras layer name -> IR tensor name

    # -- helpers --------------------------------------------------------------------------
    def shape_of(self, tensor: str) -> tuple[int, ...]:
        return self.graph.tensors[tensor].shape

    def new_tensor(
        self, name: str, shape: tuple[int, ...], dtype: str = "float32", quant: Quant | None = None
    ) -> str:
        name = self.graph.unique_name(name)
        self.graph.add_tensor(Tensor(name, shape, dtype, quant))
        return name

    def emit(
        self,
        layer: Any,
        type_: str,
        inputs: list[str],
        out_shape: tuple[int, ...],
        dtype: str = "float32",
        quant: Quant | None = None,
        **attrs: Any,
    ) -> str:
        out = self.new_tensor(layer.name, out_shape, dtype, quant)
        attrs.setdefault("keras_layer", type(layer).__name__)
        self.graph.add_op(Op(layer.name, type_, inputs, [out], attrs))
        return out

    def emit_like_input(
        self, layer: Any, type_: str, inputs: list[str], out_shape: tuple[int, ...], **attrs: Any
    ) -> str:
        """An op that moves data without changing its type or quantization (pad, reshape)."""
        src = self.graph.tensors[inputs[0]]
        return self.emit(layer, type_, inputs, out_shape, src.dtype, src.quant, **attrs)

    def layer_inputs(self, layer: Any) -> list[str]:
        # Layers come in topological order: the node of this model is the one whose inbound
        # layers have all been seen already.
        nodes = [n for n in layer._inbound_nodes if self._node_in_model(n)]
        if not nodes:
            raise BnnError(
                f"layer {layer.name!r}: its inputs are not layers of this model "
                "(nested models are not supported)"
            )
        if len(nodes) > 1:
            raise BnnError(
                f"layer {layer.name!r}: shared layers (called more than once) are not supported"
            )
        return [self.out_of[src.name] for src in self._inbound(nodes[0])]

    @staticmethod
    def _inbound(node: Any) -> list[Any]:
        inbound = node.inbound_layers
        return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]

    def _node_in_model(self, node: Any) -> bool:
        inbound = self._inbound(node)
        return bool(inbound) and all(src.name in self.out_of for src in inbound)

    # -- weights ------------------------------------------------------------------------------
    def weight_tensor(
        self,
        layer: Any,
        role: str,
        values: np.ndarray,
        quantizer: Any,
        channel_axis: int,
        *,
        bias: bool = False,
        to_ir: Any = None,
    ) -> str:
        """A constant from Keras-layout ``values``; ``to_ir`` maps them to the IR layout, whose
        output-channel axis is ``channel_axis``."""
        to_ir = to_ir or (lambda a: a)
        where = f"layer {layer.name!r} ({role})"
        base = f"{layer.name}/{role}"
        if quantizer is None:
            return self.graph.add_const(base, to_ir(values).astype(np.float32), "float32")
        spec: QSpec = _checked_spec(quantizer, where, allow_wide=bias)
        if spec.dtype == "int32":
            q = _apply_quantizer(
                quantizer, lambda: np.asarray(quantizer(values), np.float64), where
            )
            ints = np.rint(q / spec.step)
            quant = Quant.per_tensor(spec.step, 0, spec.text)
            return self.graph.add_const(base, ints.astype(np.int32), "int32", quant)
        ints, steps = _apply_quantizer(
            quantizer,
            lambda: quantize_weights(quantizer, values, spec, where, to_ir, channel_axis),
            where,
        )
        if np.all(steps == steps[0]):
            quant = Quant.per_tensor(float(steps[0]), spec.zero_point, spec.text)
        else:
            quant = Quant(
                steps, np.full(steps.shape, spec.zero_point, np.int64), channel_axis, spec.text
            )
        return self.graph.add_const(base, ints, spec.dtype, quant)

    @staticmethod
    def quantizers(layer: Any) -> tuple[Any, Any]:
        kq = getattr(layer, "kernel_quantizer_internal", None)
        if kq is None:
            kq = getattr(layer, "depthwise_quantizer_internal", None)
        bq = getattr(layer, "bias_quantizer_internal", None)
        return kq, bq

    def fused_activation(self, layer: Any, out: str) -> str:
        """Keras layers may carry an activation; QKeras ones may carry a quantizer there."""
        act = getattr(layer, "activation", None)
        if act is None:
            return out
        if hasattr(act, "__name__"):  # a Keras activation function (QKeras: quantizer objects)
            name = _activation_name(act, f"layer {layer.name!r}")
            if name == "none":
                return out
            result = self.new_tensor(f"{layer.name}/{name}", self.shape_of(out))
            self.graph.add_op(
                Op(f"{layer.name}/{name}", "Activation", [out], [result], {"activation": name})
            )
            return result
        return self.quantize(f"{layer.name}/act", act, out, f"layer {layer.name!r} activation")

    def quantize(self, name: str, quantizer: Any, src: str, where: str) -> str:
        spec = _checked_spec(quantizer, where)
        shape = self.shape_of(src)
        if spec.dtype == "binary":
            if spec.per_channel:
                raise BnnError(f"{where}: binary activations need alpha=1, got {spec.text}")
            out = self.new_tensor(name, shape, "binary", Quant.per_tensor(1.0, 0, spec.text))
            self.graph.add_op(Op(name, "Bitpack", [src], [out], {"quantizer": spec.text}))
            return out
        if spec.per_channel:
            raise BnnError(f"{where}: activations need a fixed grid, got {spec.text}")
        quant = Quant.per_tensor(spec.step, spec.zero_point, spec.text)
        out = self.new_tensor(name, shape, "int8", quant)
        attrs = {
            "quantizer": spec.text,
            "activation": "relu" if spec.relu else "none",
            "qrange": (spec.qmin, spec.qmax),
            "rounding": "half_even",  # QKeras rounds with tf.round
        }
        self.graph.add_op(Op(name, "Quantize", [src], [out], attrs))
        return out

    # -- layers ---------------------------------------------------------------------------
    def build(self) -> Graph:
        for tensor in self.model.inputs:
            self.layer(tensor._keras_history.layer)
        for layer in self.model.layers:
            if layer.name not in self.out_of:
                self.layer(layer)
        for tensor in self.model.outputs:
            self.graph.outputs.append(self.out_of[tensor._keras_history.layer.name])
        self.graph.validate()
        return self.graph

    def layer(self, layer: Any) -> None:  # noqa: C901 - one branch per supported layer
        kind = type(layer).__name__
        where = f"layer {layer.name!r} ({kind})"
        if kind == "InputLayer":
            raw = layer.get_config().get("batch_input_shape")
            shape = tuple(raw) if isinstance(raw, list | tuple) else (raw,)
            if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
                raise BnnError(f"{where}: input shape {shape} must be fully defined")
            name = self.new_tensor(layer.name, (1,) + tuple(shape[1:]))
            self.graph.inputs.append(name)
            self.out_of[layer.name] = name
            return
        if kind in ("Functional", "Sequential", "Model"):
            raise BnnError(f"{where}: nested models are not supported; flatten the model first")
        inputs = self.layer_inputs(layer)
        in_shape = self.shape_of(inputs[0])
        out_shape = None
        if not isinstance(layer.output_shape, list):
            dims = tuple(layer.output_shape[1:])
            if not all(isinstance(d, int) and d >= 0 for d in dims):
                raise BnnError(
                    f"{where}: output shape {tuple(layer.output_shape)} is not fully defined "
                    f"(from {len(inputs)} input(s) of shapes "
                    f"{', '.join(str(self.shape_of(i)) for i in inputs)})"
                )
            out_shape = (1,) + dims
        handler = getattr(self, f"_layer_{kind}", None)
        if handler is None:
            raise BnnError(
                f"{where}: layer type {kind} is not supported; supported: {SUPPORTED_LAYERS}"
            )
        self.out_of[layer.name] = handler(layer, inputs, in_shape, out_shape, where)

    def _conv(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        depthwise: bool,
    ) -> str:
        if len(in_shape) != 4:
            raise BnnError(f"layer {layer.name!r}: expects a 4-D NHWC input, got {in_shape}")
        weights = layer.get_weights()
        kq, bq = self.quantizers(layer)
        kernel = np.asarray(weights[0])
        kh, kw = kernel.shape[:2]
        if depthwise:
            # Keras (kh, kw, C, M) -> IR 1,kh,kw,C*M; the channel axis is the last one
            def to_ir(a: np.ndarray) -> np.ndarray:
                return a.reshape(1, kh, kw, -1)

            channel_axis = 3
        else:
            # Keras (kh, kw, I, O) -> IR OHWI
            if getattr(layer, "groups", 1) != 1:
                raise BnnError(f"layer {layer.name!r}: grouped convolution is not supported")

            def to_ir(a: np.ndarray) -> np.ndarray:
                return np.transpose(a, (3, 0, 1, 2))

            channel_axis = 0
        w = self.weight_tensor(layer, "kernel", kernel, kq, channel_axis, to_ir=to_ir)
        op_inputs = [inputs[0], w]
        if getattr(layer, "use_bias", False):
            op_inputs.append(
                self.weight_tensor(layer, "bias", np.asarray(weights[1]), bq, 0, bias=True)
            )
        binary_w = self.graph.tensors[w].dtype == "binary"
        binary_x = self.graph.tensors[inputs[0]].dtype == "binary"
        if binary_w != binary_x:
            what = (
                "binary weights but a non-binary input"
                if binary_w
                else "a binary input but non-binary weights"
            )
            raise BnnError(
                f"layer {layer.name!r}: {what}; a binary convolution needs both: put "
                "QActivation('binary') before it and kernel_quantizer=binary() on it"
            )
        attrs: dict[str, Any] = {
            "strides": tuple(int(s) for s in layer.strides),
            "pads": _pads(layer, in_shape, (kh, kw)),
            "dilations": tuple(int(d) for d in layer.dilation_rate),
            "activation": "none",
        }
        if depthwise:
            attrs["depth_multiplier"] = int(layer.depth_multiplier)
            op_type = "DepthwiseConv2D"
            if binary_w:
                raise BnnError(
                    f"layer {layer.name!r}: binary depthwise convolution is not "
                    "supported; supported binary layer: QConv2D"
                )
        elif binary_w:
            op_type = "BinaryConv2D"
            attrs["pad_value"] = 0  # QKeras pads the +1/-1 input with real zeros
        else:
            op_type = "Conv2D"
        out = self.emit(layer, op_type, op_inputs, out_shape, **attrs)
        return self.fused_activation(layer, out)

    def _layer_Conv2D(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        return self._conv(layer, inputs, in_shape, out_shape, depthwise=False)

    _layer_QConv2D = _layer_Conv2D

    def _layer_DepthwiseConv2D(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        return self._conv(layer, inputs, in_shape, out_shape, depthwise=True)

    _layer_QDepthwiseConv2D = _layer_DepthwiseConv2D

    def _layer_Dense(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        if len(in_shape) != 2:
            raise BnnError(f"{where}: Dense needs a flat input (add Flatten), got {in_shape}")
        weights = layer.get_weights()
        kq, bq = self.quantizers(layer)
        w = self.weight_tensor(
            layer, "kernel", np.asarray(weights[0]), kq, 0, to_ir=lambda a: np.asarray(a).T
        )
        if self.graph.tensors[w].dtype == "binary":
            raise BnnError(
                f"{where}: binary Dense is not supported; supported binary layer: QConv2D"
            )
        op_inputs = [inputs[0], w]
        if layer.use_bias:
            op_inputs.append(
                self.weight_tensor(layer, "bias", np.asarray(weights[1]), bq, 0, bias=True)
            )
        out = self.emit(layer, "Dense", op_inputs, out_shape, activation="none")
        return self.fused_activation(layer, out)

    _layer_QDense = _layer_Dense

    def _layer_BatchNormalization(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)[0]
        if axis not in (-1, len(in_shape) - 1):
            raise BnnError(f"{where}: only channel-last BatchNormalization is supported")
        channels = in_shape[-1]
        ones, zeros = np.ones(channels), np.zeros(channels)
        values = dict(
            zip(
                [w.name.split("/")[-1].split(":")[0] for w in layer.weights],
                layer.get_weights(),
                strict=True,
            )
        )
        attrs = {
            "gamma": np.asarray(values.get("gamma", ones), np.float64),
            "beta": np.asarray(values.get("beta", zeros), np.float64),
            "mean": np.asarray(values["moving_mean"], np.float64),
            "variance": np.asarray(values["moving_variance"], np.float64),
            "epsilon": float(layer.epsilon),
        }
        return self.emit(layer, "BatchNorm", inputs, out_shape, **attrs)

    def _layer_ReLU(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        cfg = layer.get_config()
        if cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
            raise BnnError(f"{where}: leaky or thresholded ReLU is not supported")
        max_value = cfg.get("max_value")
        if max_value is None:
            name = "relu"
        elif float(max_value) == 6.0:
            name = "relu6"
        else:
            raise BnnError(
                f"{where}: ReLU(max_value={max_value}) is not supported; "
                "supported: max_value None or 6"
            )
        return self.emit(layer, "Activation", inputs, out_shape, activation=name)

    def _layer_Activation(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        name = _activation_name(layer.activation, where)
        if name == "none":
            return inputs[0]
        return self.emit(layer, "Activation", inputs, out_shape, activation=name)

    def _layer_QActivation(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        quantizer = layer.quantizer
        if isinstance(quantizer, str) or quantizer is None:
            raise BnnError(f"{where}: QActivation({quantizer!r}) is not supported")
        return self.quantize(layer.name, quantizer, inputs[0], where)

    def _layer_Add(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        if len(inputs) != 2:
            raise BnnError(f"{where}: Add of {len(inputs)} inputs; supported: 2")
        return self.emit(layer, "Add", inputs, out_shape, activation="none")

    def _layer_ZeroPadding2D(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        (top, bottom), (left, right) = layer.padding
        return self.emit_like_input(
            layer, "Pad", inputs, out_shape, pads=[top, bottom, left, right]
        )

    def _layer_Flatten(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        return self.emit_like_input(layer, "Reshape", inputs, out_shape)

    _layer_Reshape = _layer_Flatten

    def _pool(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        op_type: str,
    ) -> str:
        pool = tuple(int(p) for p in layer.pool_size)
        emit = self.emit_like_input if op_type == "MaxPool2D" else self.emit
        return emit(
            layer,
            op_type,
            inputs,
            out_shape,
            pool=pool,
            strides=tuple(int(s) for s in layer.strides),
            pads=_pads(layer, in_shape, pool),
            activation="none",
        )

    def _layer_AveragePooling2D(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        return self._pool(layer, inputs, in_shape, out_shape, "AveragePool2D")

    def _layer_MaxPooling2D(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        return self._pool(layer, inputs, in_shape, out_shape, "MaxPool2D")

    def _layer_GlobalAveragePooling2D(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        return self.emit(
            layer, "Mean", inputs, out_shape, axes=(1, 2), keepdims=len(out_shape) == 4
        )

    def _layer_Dropout(
        self,
        layer: Any,
        inputs: list[str],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        where: str,
    ) -> str:
        return inputs[0]  # inference: identity


def keras_to_ir(model: Any, source: str = "") -> Graph:
    """Map a Keras/QKeras model to the IR, one op per layer (not yet lowered)."""
    if len(model.inputs) != 1:
        raise BnnError(
            f"{source or model.name}: models with {len(model.inputs)} inputs are not "
            "supported; supported: one input"
        )
    return _Builder(model, source).build()
