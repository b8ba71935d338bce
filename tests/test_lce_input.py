"""Reading LCE-converted Larq models (LceQuantize / LceBconv2d / LceDequantize): the reference
and the C kernels must equal LCE's own interpreter bit for bit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")
lq = pytest.importorskip("larq")
lce = pytest.importorskip("larq_compute_engine")

from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.reference import run_graph  # noqa: E402

# (pad_values, stride, channels in, channels out, int8 output, fused relu)
CASES = [
    (1, 1, 16, 24, False, False),
    (0, 1, 24, 40, False, False),
    (1, 2, 40, 70, True, False),
    (0, 2, 70, 16, True, False),
    (1, 2, 24, 40, False, False),
    (0, 2, 40, 24, False, False),
]
# the cases without the float MaxPool2D that LCE writes after a float-output bconv (the C
# runtime has no float pooling): one and zero padding, stride 1 and 2
C_CASES = [i for i, case in enumerate(CASES) if not case[4]]


def _layer(cout: int, stride: int, pad: int, **kw: Any) -> Any:
    return lq.layers.QuantConv2D(
        cout,
        3,
        strides=stride,
        padding="same",
        pad_values=pad,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip",
        use_bias=False,
        **kw,
    )


def _model(pad: int, stride: int, cin: int, cout: int, int8_out: bool, seed: int) -> Any:
    keras = tf.keras
    inp = keras.Input((10, 9, cin))
    x = _layer(cout, stride, pad)(inp)
    x = keras.layers.BatchNormalization()(x)  # binarized next: bitpacked output
    x = _layer(cout, 1, pad)(x)
    x = keras.layers.BatchNormalization()(x)
    if int8_out:  # an int8 op after: LCE writes int8 output
        x = keras.layers.MaxPool2D(1)(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, mu, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, g.shape).astype("f4") * rng.choice([-1, 1], g.shape),
                    rng.normal(0, 1, b.shape).astype("f4"),
                    rng.normal(0, 3, mu.shape).astype("f4"),
                    rng.uniform(1, 20, var.shape).astype("f4"),
                ]
            )
        elif isinstance(layer, lq.layers.QuantConv2D):
            (w,) = layer.get_weights()
            layer.set_weights([rng.normal(0, 1, w.shape).astype("f4")])
    return model


@pytest.fixture(scope="module")
def lce_models(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Any]]:
    out = []
    d = tmp_path_factory.mktemp("lce")
    for i, (pad, stride, cin, cout, int8_out, _) in enumerate(CASES):
        model = _model(pad, stride, cin, cout, int8_out, i)
        buf = lce.convert_keras_model(
            model,
            inference_input_type=tf.int8,
            inference_output_type=tf.int8,
            experimental_default_int8_range=(-3.0, 3.0),
        )
        path = d / f"lce_{i}.tflite"
        path.write_bytes(buf)
        out.append((path, buf))
    return out


def _inputs(graph: Any, seed: int, n: int = 3) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    res = []
    for _ in range(n):
        row = []
        for name in graph.inputs:
            t = graph.tensors[name]
            if t.dtype == "int8":
                row.append(rng.integers(-128, 128, t.shape).astype(np.int8))
            else:
                row.append(rng.normal(0, 1, t.shape).astype(np.float32))
        res.append(row)
    return res


@pytest.mark.parametrize("case", range(len(CASES)))
def test_reference_equals_lce_interpreter(lce_models: Any, case: int) -> None:
    path, buf = lce_models[case]
    graph = load_model(path)
    types = sorted({op.type for op in graph.ops})
    assert "BinaryConv2D" in types and "Bitpack" in types
    interp = lce.testing.Interpreter(buf, num_threads=1)
    for xs in _inputs(graph, case):
        want = interp.predict(xs[0] if len(xs) == 1 else xs)
        got = run_graph(graph, xs)[graph.outputs[0]]
        assert got.dtype == want.dtype
        assert np.array_equal(got, want), (case, np.abs(got.astype(float) - want).max())
        if got.dtype == np.float32:
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.fixture(scope="module", params=["host", "m7"])
def c_backend(request: pytest.FixtureRequest, tmp_path_factory: Any, m7_runtime: Any) -> Any:
    from bnncube.runtime_c import SRC_DIR
    from bnncube.runtime_c.build import build_host_library
    from bnncube.runtime_c.cabi import HostBackend

    if request.param == "m7":
        return m7_runtime(False)
    lib = build_host_library(tmp_path_factory.mktemp("lce_c"), include_dirs=[SRC_DIR])
    return HostBackend(lib)


@pytest.mark.parametrize("case", C_CASES)
def test_c_kernels_equal_reference(lce_models: Any, case: int, c_backend: Any) -> None:
    """LCE's output transform in the C binary conv (BNN_OUT_LCE), one padding and zero padding
    with its border correction, on the host and on the emulated Cortex-M7."""
    from bnncube.validation.kernel_calls import run_graph_c

    path, _ = lce_models[case]
    graph = load_model(path)
    assert any(op.attrs.get("output_transform") == "lce" for op in graph.ops)
    if any(
        op.type == "MaxPool2D" and graph.tensors[op.inputs[0]].dtype == "float32"
        for op in graph.ops
    ):
        pytest.skip("LCE wrote a float MaxPool2D here, and the C runtime has no float pooling")
    for xs in _inputs(graph, 100 + case, n=2):
        ref = run_graph(graph, xs, outputs_only=False)
        run = run_graph_c(graph, c_backend, xs)
        bad = [n for n in ref if not np.array_equal(ref[n], run.values[n])]
        assert not bad, (case, bad)


def test_validate_lce_model(lce_models: Any, tmp_path: Path) -> None:
    """generate + validate --mode host on an LCE model: bit-exact with the reference, and equal
    to LCE's own interpreter."""
    import json

    from bnncube.cli import main

    path, _ = lce_models[1]  # zero padding: the border correction
    out = tmp_path / "out"
    argv = ["validate", "-m", str(path), "-b", "5", "-o", str(out), "-w", str(tmp_path / "w")]
    assert main(argv) == 0
    report = json.loads((out / "network_validate_report.json").read_text())
    assert report["bit_exact"]
    (metrics,) = report["metrics"].values()
    assert metrics["vs_original"]["rmse"] == 0.0  # LCE's interpreter
