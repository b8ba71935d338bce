"""The paper's three networks: shapes, per-layer precisions and the analyze figures."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest

from bnncube.cli import main
from bnncube.converters.loader import load_model

# The hybrid net as deployed (Table 2 of the paper, DESIGN section 6): (layer, op, precision,
# output HxWxC). Residual blocks: Bitpack + binary 3x3 conv (+ 1x1 int8 projection when the
# channels change) + int8 add; transition blocks: int8 depthwise 3x3 s2 + int8 pointwise.
STEM = [
    ("input_q", "Quantize", "int8", (96, 96, 3)),
    ("stem_conv", "Conv2D", "int8", (48, 48, 16)),
    ("stem_dw", "DepthwiseConv2D", "int8", (48, 48, 16)),
    ("stem_pw", "Conv2D", "int8", (48, 48, 16)),
]
BLOCKS = [  # (block, size, channels, projection, next transition (size, channels) or None)
    (1, 48, 24, True, (24, 24)),
    (2, 24, 24, False, (12, 64)),
    (3, 12, 64, False, (6, 64)),
    (4, 6, 64, False, (3, 128)),
    (5, 3, 128, False, None),
]


def expected_hybrid_layers() -> list[tuple[str, str, str, tuple[int, ...]]]:
    rows = list(STEM)
    in_channels = 16
    for i, size, channels, projection, transition in BLOCKS:
        rows.append((f"res{i}_sign", "Bitpack", "binary", (size, size, in_channels)))
        rows.append((f"res{i}_bconv", "BinaryConv2D", "binary", (size, size, channels)))
        if projection:
            rows.append((f"res{i}_proj", "Conv2D", "int8", (size, size, channels)))
        rows.append((f"res{i}_add", "Add", "int8", (size, size, channels)))
        in_channels = channels
        if transition:
            t_size, t_channels = transition
            rows.append((f"trans{i}_dw", "DepthwiseConv2D", "int8", (t_size, t_size, channels)))
            rows.append((f"trans{i}_pw", "Conv2D", "int8", (t_size, t_size, t_channels)))
            in_channels = t_channels
    rows += [
        ("head_relu", "Quantize", "int8", (3, 3, 128)),
        ("head_pw", "Conv2D", "int8", (3, 3, 1280)),
        ("head_dw", "DepthwiseConv2D", "int8", (1, 1, 1280)),
        ("flatten", "Reshape", "int8", (1280,)),
        ("embedding", "Dense", "int8", (128,)),
    ]
    return rows


def test_hybrid_layers_shapes_and_precisions(hybrid_h5):
    from bnncube.converters.figures import layer_figures

    graph = load_model(hybrid_h5)
    got = [(r.name, r.op, r.precision, r.output_shape[1:]) for r in layer_figures(graph)]
    assert got == expected_hybrid_layers()
    (inp,) = graph.inputs
    (out,) = graph.outputs
    assert graph.tensors[inp].shape == (1, 96, 96, 3)
    assert graph.tensors[out].shape == (1, 128)
    assert graph.tensors[out].dtype == "float32"  # Table 2: 32-bit output
    # every tensor between layers is int8 or bitpacked: nothing float inside the network
    inner = [t for n, t in graph.tensors.items() if not t.is_const and n not in (inp, out)]
    assert {t.dtype for t in inner} == {"int8", "binary"}
    # the binarized tensors come from signed quantizers (a ReLU output would binarize to +1)
    for op in graph.ops:
        if op.type == "Bitpack":
            quant = graph.tensors[op.inputs[0]].quant
            assert int(quant.zero_point[0]) == 0, op.name


def test_hybrid_keras_quantizers(hybrid_h5):
    import qkeras

    from bnncube.converters.keras_frontend import load_keras_model

    model = load_keras_model(hybrid_h5)
    convs = [layer for layer in model.layers if isinstance(layer, qkeras.QConv2D)]
    binary = [
        layer.name for layer in convs if isinstance(layer.kernel_quantizer_internal, qkeras.binary)
    ]
    assert binary == [f"res{i}_bconv" for i in range(1, 6)]
    for layer in convs:
        if layer.name not in binary:
            q = layer.kernel_quantizer_internal
            assert isinstance(q, qkeras.quantized_bits) and q.bits == 8, layer.name


def test_mnv2_fp_structure(mnv2_fp_h5):
    from bnncube.converters.figures import layer_figures

    graph = load_model(mnv2_fp_h5)
    rows = layer_figures(graph)
    assert {r.precision for r in rows} == {"float32"}
    assert rows[0].name == "Conv1" and rows[0].output_shape == (1, 48, 48, 16)  # alpha=0.5
    assert [r.name for r in rows[-4:]] == ["Conv_1", "head_dw", "flatten", "embedding"]
    assert rows[-4].output_shape == (1, 3, 3, 1280)
    assert rows[-3].output_shape == (1, 1, 1, 1280)
    assert rows[-1].output_shape == (1, 128)
    # BatchNorm, ReLU6 and ZeroPadding are folded into the convolutions
    assert not {"BatchNorm", "Activation", "Pad"} & {r.op for r in rows}


def test_mnv2_i8_io(mnv2_i8_tflite):
    graph = load_model(mnv2_i8_tflite)
    assert graph.name == "mnv2_i8"
    (inp,) = graph.inputs
    (out,) = graph.outputs
    assert graph.tensors[inp].dtype == "int8"
    assert graph.tensors[inp].shape == (1, 96, 96, 3)
    assert graph.tensors[out].dtype == "float32"
    assert graph.tensors[out].shape == (1, 128)
    mac_precisions = {
        graph.tensors[op.inputs[1]].dtype
        for op in graph.ops
        if op.type in ("Conv2D", "DepthwiseConv2D", "Dense")
    }
    assert mac_precisions == {"int8"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "fixture, network, paper_macc",
    [
        ("hybrid_h5", "hybrid", 26e6),
        ("mnv2_fp_h5", "mnv2_fp", 19e6),
        ("mnv2_i8_tflite", "mnv2_i8", 19e6),
    ],
)
def test_analyze_cli_on_zoo(request, tmp_path, capsys, fixture, network, paper_macc):
    model = request.getfixturevalue(fixture)
    out = tmp_path / "report"
    assert main(["analyze", "-m", str(model), "-n", network, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / f"{network}_analyze_report.json").read_text())
    assert report["network"] == network
    for key in ("macc", "weights_bytes", "activations_bytes"):
        assert isinstance(report[key], int)
    assert report["macc"] == sum(layer["macc"] for layer in report["layers"])
    assert report["weights_bytes"] == sum(layer["weights_bytes"] for layer in report["layers"])
    # the text report (printed and written) carries the same totals
    assert text.startswith((out / f"{network}_analyze_report.txt").read_text())
    assert f"macc             : {report['macc']:,}" in text
    assert f"weights (ro)     : {report['weights_bytes']:,} B" in text
    assert f"activations (rw) : {report['activations_bytes']:,} B" in text
    for layer in report["layers"]:
        assert f" {layer['macc']:>11,} {layer['weights_bytes']:>9,}" in text
    # our MACC is within 15% of the paper's (docs/networks.md explains the rest)
    assert abs(report["macc"] - paper_macc) / paper_macc < 0.15
    paper_rows = {row["figure"]: row for row in report["paper"]}
    assert paper_rows["macc"]["ours"] == report["macc"]
    for row in report["paper"]:
        assert ("note" in row) == (abs(row["diff_pct"]) > 15)


def test_hybrid_keras_format_equals_h5(hybrid_h5, tmp_path):
    """The `.keras` archive (Keras 3 config layout) reads back to the same deployed graph."""
    import numpy as np

    from bnncube.converters.figures import layer_figures
    from bnncube.zoo.build import build

    keras_file = build("hybrid", tmp_path / "hybrid.keras", seed=1, log=lambda _: None)
    from_h5, from_keras = load_model(hybrid_h5), load_model(keras_file)
    assert layer_figures(from_h5) == layer_figures(from_keras)
    for name, tensor in from_h5.tensors.items():
        if tensor.is_const:
            other = from_keras.tensors[name]
            assert other.dtype == tensor.dtype
            assert np.array_equal(other.data, tensor.data), name
