import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# Seeded random int8 CNNs: bnncube's numpy reference is bit-exact with TFLite.
#
# ``random_cnn(seed)`` draws a small Keras CNN (convolutions, depthwise convolutions, residual
# adds, average pooling, a Flatten/GlobalAveragePooling + Dense head).  Each is quantized by the
# TFLite converter (full integer, int8 in, float32 out), loaded through bnncube's TFLite front end
# and lowering, and run by ``run_graph`` and by the TFLite interpreter with its reference kernels
# (``OpResolverType.BUILTIN_REF``) on two random int8 inputs.  Every int8 tensor the two share by
# name and shape must be equal, with no tolerance, and so must the float32 output.
# ``test_random_models_cover_the_ops`` checks that the seeds below still exercise every op and
# option the generator is meant to cover.

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.converters.ir import Graph  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.reference import run_graph  # noqa: E402

SEEDS = tuple(range(24))

FILTERS = (3, 4, 7, 8, 13, 16)
INPUT_CHANNELS = (1, 2, 3, 4, 5, 8)
ACTIVATIONS = (None, "relu", "relu6")


# --------------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------------


def _out_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def _spatial_choice(rng: np.random.Generator, hw: tuple[int, int], kernel: int) -> tuple[int, str]:
    """(stride, padding) for a window of ``kernel`` on an ``hw`` input.

    'valid' is only drawn when the window fits in both spatial axes; otherwise 'same' is used
    (the output would be empty).
    """
    stride = int(rng.choice((1, 2)))
    padding = str(rng.choice(("same", "valid")))
    if padding == "valid" and min(hw) < kernel:
        padding = "same"
    return stride, padding


def random_cnn(seed: int) -> Any:
    """A small random Keras CNN (float32), fully determined by ``seed``."""
    import tensorflow as tf

    L = tf.keras.layers
    rng = np.random.default_rng(seed)
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)

    h, w = (int(v) for v in rng.integers(5, 17, size=2))
    c = int(rng.choice(INPUT_CHANNELS))
    inp = tf.keras.Input(shape=(h, w, c))
    x = inp

    def act() -> str | None:
        return ACTIVATIONS[int(rng.integers(len(ACTIVATIONS)))]

    for _ in range(int(rng.integers(2, 7))):
        kind = str(rng.choice(("conv", "depthwise", "residual", "avgpool")))
        if kind == "conv":
            k = int(rng.choice((1, 3)))
            stride, padding = _spatial_choice(rng, (h, w), k)
            c = int(rng.choice(FILTERS))
            x = L.Conv2D(c, k, strides=stride, padding=padding, activation=act())(x)
            h, w = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
        elif kind == "depthwise":
            stride, padding = _spatial_choice(rng, (h, w), 3)
            mult = int(rng.choice((1, 2))) if c <= 8 else 1  # keep the channel count small
            x = L.DepthwiseConv2D(
                3, strides=stride, padding=padding, depth_multiplier=mult, activation=act()
            )(x)
            c *= mult
            h, w = _out_size(h, 3, stride, padding), _out_size(w, 3, stride, padding)
        elif kind == "residual":
            # two branches of the same shape: stride 1, 'same', so only channels can differ
            identity = bool(rng.integers(2))
            filters = c if identity else int(rng.choice(FILTERS))
            a = L.Conv2D(filters, int(rng.choice((1, 3))), padding="same", activation=act())(x)
            if identity:
                b = x
            else:
                b = L.Conv2D(filters, int(rng.choice((1, 3))), padding="same", activation=act())(x)
            x = L.Add()([a, b])
            if rng.integers(2):
                x = L.ReLU()(x)
            c = filters
        else:
            pool = int(rng.choice((2, 3)))
            stride, padding = _spatial_choice(rng, (h, w), pool)
            x = L.AveragePooling2D(pool, strides=stride, padding=padding)(x)
            h, w = _out_size(h, pool, stride, padding), _out_size(w, pool, stride, padding)
        assert h >= 1 and w >= 1

    if rng.integers(2):
        x = L.Flatten()(x)
    else:
        x = L.GlobalAveragePooling2D()(x)
    units = int(rng.integers(3, 14))
    x = L.Dense(units, activation=str(rng.choice(("linear", "relu"))))(x)
    model = tf.keras.Model(inp, x, name=f"random_cnn_{seed:02d}")

    # Keras initializes biases to zero: draw them, so that the bias path is exercised too.
    for layer in model.layers:
        weights = layer.get_weights()
        if len(weights) == 2:
            kernel, bias = weights
            layer.set_weights([kernel, rng.uniform(-0.3, 0.3, bias.shape).astype(np.float32)])
    return model


# --------------------------------------------------------------------------------------------
# quantize, load, run both
# --------------------------------------------------------------------------------------------


def _quantize_to(model: Any, path: Path, seed: int) -> Path:
    """Full-integer int8 quantization (int8 in, float32 out) by the TFLite converter."""
    from bnncube.zoo.build import quantize_mnv2

    rng = np.random.default_rng([seed, 1])
    shape = (16,) + tuple(model.input_shape[1:])
    images = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    path.write_bytes(quantize_mnv2(model, images))
    return path


_BUILT: dict[int, tuple[Path, Graph]] = {}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("random_tflite")


def _built(seed: int, directory: Path) -> tuple[Path, Graph]:
    """The quantized model file of ``seed`` and its lowered IR graph (built once per session)."""
    if seed not in _BUILT:
        path = _quantize_to(random_cnn(seed), directory / f"seed{seed:02d}.tflite", seed)
        _BUILT[seed] = (path, load_model(path))
    return _BUILT[seed]


def _interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True,
    )
    interp.allocate_tensors()
    return interp


def _difference(theirs: np.ndarray, ours: np.ndarray) -> tuple[int, float]:
    """(number of differing elements, max absolute difference)."""
    if theirs.dtype.kind == "f" or ours.dtype.kind == "f":
        diff = np.abs(theirs.astype(np.float64) - ours.astype(np.float64))
    else:
        diff = np.abs(theirs.astype(np.int64) - ours.astype(np.int64))
    return int((diff > 0).sum()), float(diff.max()) if diff.size else 0.0


def _compare(seed: int, path: Path, graph: Graph, inputs: int = 2) -> None:
    """Run the model with both on ``inputs`` random int8 inputs; assert bit-exactness."""
    interp = _interpreter(path)
    details = {d["name"]: d for d in interp.get_tensor_details()}
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    assert graph.inputs == [inp["name"]] and graph.outputs == [out["name"]]
    final_op = graph.producer(graph.outputs[0])
    assert final_op is not None and final_op.type == "Dequantize"
    pre_output = final_op.inputs[0]
    for k in range(inputs):
        rng = np.random.default_rng([seed, 2, k])
        x = rng.integers(-128, 128, size=inp["shape"], dtype=np.int8)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        ours = run_graph(graph, {graph.inputs[0]: x}, outputs_only=False)
        compared = []
        mismatched = []
        for name, value in ours.items():
            d = details.get(name)
            if d is None or d["dtype"] != np.int8 or tuple(d["shape"]) != value.shape:
                continue
            theirs = interp.get_tensor(d["index"])
            compared.append(name)
            if not np.array_equal(theirs, value):
                count, most = _difference(theirs, value)
                producer = graph.producer(name)
                op = f"{producer.type} {producer.name!r}" if producer else "input"
                mismatched.append(
                    f"tensor {name!r} ({op}): {count} of {value.size} differ, max diff {most:g}"
                )
        where = f"seed{seed:02d}, input {k}"
        assert pre_output in compared, f"{where}: the last int8 tensor {pre_output!r} not compared"
        assert not mismatched, f"{where}:\n" + "\n".join(mismatched)
        got, want = ours[graph.outputs[0]], interp.get_tensor(out["index"])
        assert got.dtype == np.float32 and got.shape == want.shape, (where, got.dtype, got.shape)
        if not np.array_equal(got, want):
            count, most = _difference(want, got)
            pytest.fail(
                f"{where}: float32 output {graph.outputs[0]!r}: {count} of {got.size} differ, "
                f"max diff {most:g}"
            )


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{s:02d}" for s in SEEDS])
def test_random_model_bit_exact_with_tflite(seed: int, model_dir: Path) -> None:
    path, graph = _built(seed, model_dir)
    _compare(seed, path, graph)


def _features(graph: Graph) -> set[str]:
    """What a lowered graph exercises: op types and the conv/activation options that matter."""
    found: set[str] = set()
    for op in graph.ops:
        found.add(op.type)
        a = op.attrs
        if op.type in ("Conv2D", "DepthwiseConv2D"):
            w = graph.tensors[op.inputs[1]]
            if tuple(a.get("strides", (1, 1))) == (2, 2):
                found.add(f"{op.type} stride 2")
            if max(w.shape[1:3]) > 1 and not any(a.get("pads", [0] * 4)):
                found.add(f"{op.type} valid")
            if op.type == "DepthwiseConv2D" and a.get("depth_multiplier", 1) > 1:
                found.add("DepthwiseConv2D depth_multiplier 2")
        activation = a.get("activation", "none")
        if activation != "none":
            found.add(f"{activation} fused")
            found.add(f"{op.type} {activation}")
    return found


REQUIRED = {
    "Conv2D",
    "DepthwiseConv2D",
    "Dense",
    "Add",
    "AveragePool2D",
    "Mean",
    "Conv2D stride 2",
    "Conv2D valid",
    "DepthwiseConv2D stride 2",
    "DepthwiseConv2D valid",
    "DepthwiseConv2D depth_multiplier 2",
    "relu fused",
    "relu6 fused",
    "Add relu",
}


def test_random_models_cover_the_ops(model_dir: Path) -> None:
    covered: set[str] = set()
    for seed in SEEDS:
        covered |= _features(_built(seed, model_dir)[1])
    assert not REQUIRED - covered, f"not covered by the seeds: {sorted(REQUIRED - covered)}"
