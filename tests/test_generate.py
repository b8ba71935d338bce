"""`bnncube generate` and `bnncube validate --mode host`.

The generated C, built for the host and driven through its own API (``ai_network_*``), equals the
reference bit for bit on 100 random inputs for the zoo ``hybrid`` and ``mnv2_i8`` and for random
models of the converter tests; ``mnv2_i8`` also equals the TFLite interpreter (reference kernels).
The folder compiles with gcc and arm-none-eabi-gcc under -Werror; output is atomic and
reproducible; bad input is one line and exit 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.cli import main  # noqa: E402
from bnncube.converters.ir import Graph  # noqa: E402
from bnncube.converters.loader import load_model, model_type  # noqa: E402
from bnncube.generate import GenerateOptions, generate_code, write_generated  # noqa: E402
from bnncube.validate import random_inputs, validate_host  # noqa: E402

N_INPUTS = 100


def _validate(model: Path, graph: Graph, tmp: Path, n: int = N_INPUTS, **opts: Any) -> dict:
    result = generate_code(graph, GenerateOptions(**opts), str(model))
    x = random_inputs(graph, n, seed=3, value_range=None)
    return validate_host(str(model), model_type(model), graph, result, "network", x, False, tmp)


def test_hybrid_bit_exact(hybrid_h5: Path, tmp_path: Path, record_property: Any) -> None:
    report = _validate(hybrid_h5, load_model(hybrid_h5), tmp_path)
    assert report["bit_exact"] and report["n_inputs"] == N_INPUTS
    m = report["metrics"]["embedding"]["vs_original"]
    record_property("vs_qkeras", m)
    assert m["cos"] > 0.99  # vs QKeras' float forward pass (see test_reference_qkeras)
    # the planned arena: the float input (quantized in place) alone, as the residual Adds run
    # inside the binary convolutions (119,808 B without that fusion, 147,456 B in graph order)
    assert report["activations_bytes"] == 110_592


def test_time_keeps_the_residual_adds(hybrid_h5: Path) -> None:
    """-O time never fuses (the fused residual costs instructions); balanced and ram do, here."""
    from bnncube.converters.ir import fused_ops

    graph = load_model(hybrid_h5)
    time = generate_code(graph, GenerateOptions(optimization="time"))
    assert not any(fused_ops(op) for op in time.graph.ops)
    # res1_bconv is the peak there (docs/memory-plan.md): its scratch (1,464 B) adds to it
    assert time.activations_bytes == 119_808 + 1_464
    assert "bnn_bconv2d" in time.kernels and "bnn_add_s8" in time.kernels
    for optimization in ("balanced", "ram"):
        result = generate_code(graph, GenerateOptions(optimization=optimization))
        assert sum(bool(fused_ops(op)) for op in result.graph.ops) == 5
        assert result.activations_bytes == 110_592
        assert "bnn_bconv2d_add" in result.kernels and "bnn_add_s8" not in result.kernels


def test_mnv2_i8_bit_exact_and_equal_to_tflite(mnv2_i8_tflite: Path, tmp_path: Path) -> None:
    report = _validate(mnv2_i8_tflite, load_model(mnv2_i8_tflite), tmp_path)
    assert report["bit_exact"]
    (metrics,) = report["metrics"].values()
    original = metrics["vs_original"]  # the TFLite interpreter with its reference kernels
    assert original["rmse"] == 0.0 and original["mae"] == 0.0
    assert np.array_equal(report["_arrays"]["outputs"], report["_arrays"]["original"])


def test_deep_pointwise_scratch_in_the_arena(mnv2_i8_tflite: Path) -> None:
    """Every pointwise conv deeper than 128 (mnv2_i8's block_7 .. block_16 projects and
    out_relu) gets the scratch its kernel asks for as a planned buffer in the arena, live
    during its op only, and the generated call passes it in its context; the other calls pass
    an empty one. Here the buffers fit where the arena is free: it does not grow."""
    from bnncube.validation.kernel_calls import graph_scratch

    graph = load_model(mnv2_i8_tflite)
    result = generate_code(graph, GenerateOptions())
    asked = graph_scratch(result.graph)
    tensors = result.graph.tensors
    deep = {
        op.name: 8 * tensors[op.inputs[0]].shape[3]  # 4 pixels of C int16 values
        for op in result.graph.ops
        if op.type == "Conv2D"
        and tensors[op.inputs[1]].shape[1:3] == (1, 1)
        and tensors[op.inputs[0]].shape[3] > 128
    }
    assert asked == deep and len(deep) == 11
    code = result.files["network.c"]
    for layer, op in enumerate(result.graph.ops):
        entry = next((e for e in result.plan.entries if e.name == f"scratch:{op.name}"), None)
        if op.name in asked:
            assert entry is not None and entry.kind == "scratch"
            assert (entry.first, entry.last, entry.size) == (layer, layer, asked[op.name])
            assert (
                f"const bnn_context_t s{layer}_0 = {{act + {entry.offset}, {entry.size}}};" in code
            )
        else:
            assert entry is None
    assert code.count("= {act + ") == len(deep)
    assert result.activations_bytes == 129_024  # as without the scratch


def test_binary_conv_scratch_in_the_arena(hybrid_h5: Path) -> None:
    """The hybrid's binary convolutions res1 .. res4 get the scratch bnn_bconv2d_scratch_size
    asks for as planned buffers in the arena, live during their op only, passed in the
    generated calls' contexts (res5, 3x3 x 128 on a 3x3 output, asks for none: fewer pixels than
    window words). They fit where the arena is free: it stays the float input's 110,592 B."""
    from bnncube.validation.kernel_calls import bconv2d_scratch_bytes, graph_scratch

    result = generate_code(load_model(hybrid_h5), GenerateOptions())
    asked = graph_scratch(result.graph)
    tensors = result.graph.tensors
    binary = {
        op.name: bconv2d_scratch_bytes(
            tensors[op.inputs[0]].shape, tensors[op.inputs[1]].shape, tensors[op.outputs[0]].shape
        )
        for op in result.graph.ops
        if op.type == "BinaryConv2D"
    }
    assert sorted(name.split("_")[0] for name, size in binary.items() if size > 0) == [
        "res1",
        "res2",
        "res3",
        "res4",
    ]
    assert asked == {name: size for name, size in binary.items() if size > 0}
    code = result.files["network.c"]
    for layer, op in enumerate(result.graph.ops):
        entry = next((e for e in result.plan.entries if e.name == f"scratch:{op.name}"), None)
        if op.name in asked:
            assert entry is not None and (entry.first, entry.last) == (layer, layer)
            context = f"const bnn_context_t s{layer}_0 = {{act + {entry.offset}, {entry.size}}};"
            assert context in code
        else:
            assert entry is None
    assert result.activations_bytes == 110_592


@pytest.fixture(scope="module")
def random_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Random QKeras models (test_reference_qkeras) and TFLite CNNs (test_reference_random_tflite)
    saved as files."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_reference_qkeras import random_qkeras
    from test_reference_random_tflite import random_cnn

    from bnncube.zoo.build import quantize_mnv2

    tmp = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (1, 4, 7, 11, 17, 26):
        model, _ = random_qkeras(seed)
        path = tmp / f"q{seed}.h5"
        model.save(path)
        paths.append(path)
    for seed in (0, 5, 9):
        model = random_cnn(seed)
        images = np.random.default_rng(seed).uniform(-1, 1, (16, *model.input_shape[1:]))
        path = tmp / f"t{seed}.tflite"
        path.write_bytes(quantize_mnv2(model, images.astype(np.float32)))
        paths.append(path)
    return paths


def test_random_models_bit_exact(random_models: list[Path], tmp_path: Path) -> None:
    for path in random_models:
        report = _validate(path, load_model(path), tmp_path / path.stem)
        assert report["bit_exact"], path.name
        if path.suffix == ".tflite":
            assert np.array_equal(report["_arrays"]["outputs"], report["_arrays"]["original"])


def test_no_io_allocation_and_ram_plan(hybrid_h5: Path, tmp_path: Path) -> None:
    graph = load_model(hybrid_h5)
    balanced = generate_code(graph, GenerateOptions(optimization="balanced"))
    ram = generate_code(graph, GenerateOptions(optimization="ram"))
    assert ram.activations_bytes <= balanced.activations_bytes
    outside = _validate(
        hybrid_h5,
        graph,
        tmp_path,
        n=5,
        inputs_allocation=False,
        outputs_allocation=False,
    )
    assert outside["bit_exact"]
    assert outside["activations_bytes"] <= balanced.activations_bytes


def _compile_all(folder: Path, cc: list[str]) -> None:
    for src in sorted(folder.glob("*.c")):
        cmd = [*cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-c"]
        proc = subprocess.run(
            [*cmd, str(src), "-I", str(folder), "-o", os.devnull], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"


def test_generated_folder_compiles(hybrid_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    write_generated(generate_code(load_model(hybrid_h5), GenerateOptions()), out)
    _compile_all(out, ["gcc"])
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed (`make setup` installs it as root)")
    _compile_all(
        out,
        ["arm-none-eabi-gcc", "-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"],
    )


def test_cli_generate_reproducible_and_reports(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["generate", "-m", str(hybrid_h5), "-o", str(out), "-q"]) == 0
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert "X-CUBE-AI/App/app_x-cube-ai.c" in names and "firmware/Makefile" in names
    for name in (
        "network.c",
        "network.h",
        "network_data.c",
        "network_data.h",
        "network_data_params.c",
        "network_data_params.h",
        "network_config.h",
        "network_generate_report.txt",
        "network_c_info.json",
        "ai_platform.h",
    ):
        assert name in names
    info = json.loads((a / "network_c_info.json").read_text())
    for key in ("macc", "weights_bytes", "activations_bytes"):
        assert isinstance(info[key], int) and info[key] > 0
    header = (a / "network_data.h").read_text()
    assert f"#define AI_NETWORK_DATA_ACTIVATIONS_SIZE ({info['activations_bytes']}u)" in header
    assert info["memory_plan"]["size"] == info["activations_bytes"]
    text = (a / "network_generate_report.txt").read_text()
    assert "c_type" in text and "bnn_bconv2d" in text and "memory plan" in text
    assert str(tmp_path) not in "".join((a / n).read_text() for n in names)  # no absolute paths


def test_generate_failure_leaves_previous_output(
    hybrid_h5: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "gen"
    assert main(["generate", "-m", str(hybrid_h5), "-o", str(out), "-q"]) == 0
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    from bnncube import generate as gen

    real_write = Path.write_bytes
    calls = {"n": 0}

    def failing_write(self: Path, *args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", failing_write)  # fsutil.write_folder's writes
    result = generate_code(load_model(hybrid_h5), GenerateOptions(c_name="other"))
    with pytest.raises(OSError):
        gen.write_generated(result, out)
    monkeypatch.undo()
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]  # no temporary folder left


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_generate_float_model_refused(mnv2_fp_h5: Path, tmp_path: Path, capsys) -> None:
    line = _error(
        capsys,
        ["generate", "-m", str(mnv2_fp_h5), "-o", str(tmp_path / "g")],
        str(mnv2_fp_h5),
        "no C kernel",
        "int8 and binary",
    )
    assert "Conv1" in line
    assert not (tmp_path / "g").exists()


def test_generate_too_large_for_the_target(tmp_path: Path, capsys) -> None:
    """512x512x4 int8 in, the conv's int8 output and its float32 dequantization (4 MiB) live
    together: 5 MiB of activations cannot fit the STM32H743's 1 MB of RAM."""
    import tensorflow as tf

    from bnncube.zoo.build import quantize_mnv2

    inp = tf.keras.Input((512, 512, 4))
    model = tf.keras.Model(inp, tf.keras.layers.Conv2D(4, 1)(inp))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 512, 512, 4)).astype(np.float32)
    path = tmp_path / "big.tflite"
    path.write_bytes(quantize_mnv2(model, images))
    out = tmp_path / "g"
    line = _error(
        capsys,
        ["generate", "-m", str(path), "-o", str(out)],
        str(path),
        "does not fit the stm32h7 target",
        "RAM 1,048,576 B",
        "--force",
    )
    assert "activations 5,242,880 B" in line
    assert not out.exists()
    assert main(["generate", "-m", str(path), "-o", str(out), "--force", "-q"]) == 0
    assert (out / "network.c").exists()


def test_generate_unwritable_output(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error(capsys, ["generate", "-m", str(hybrid_h5), "-o", str(blocker / "out")], "option -o")


def test_validate_cli(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["validate", "-m", str(hybrid_h5), "-b", "3", "-o", str(out), "-w", str(tmp_path / "w")]
    assert main(argv) == 0
    report = json.loads((out / "network_validate_report.json").read_text())
    assert report["bit_exact"] is True and report["n_inputs"] == 3
    for m in report["metrics"].values():
        for key in ("rmse", "mae", "l2r", "cos"):
            assert key in m["vs_original"]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (np.zeros((2, 96, 96, 4), np.float32), "needs [N, 96, 96, 3]"),
        (np.zeros((2, 5), np.float32), "needs [N, 96, 96, 3]"),
        (np.array(["a", "b"]), "needs"),
    ],
)
def test_validate_bad_input_file(
    hybrid_h5: Path, tmp_path: Path, capsys, data: np.ndarray, needle: str
) -> None:
    vi = tmp_path / "x.npy"
    np.save(vi, data)
    argv = ["validate", "-m", str(hybrid_h5), "-vi", str(vi), "-o", str(tmp_path / "o")]
    _error(capsys, [*argv, "-w", str(tmp_path / "w")], "option -vi", needle)
    assert not (tmp_path / "o").exists()


def test_validate_names_the_diverging_layer(hybrid_h5: Path, tmp_path: Path) -> None:
    """A corrupted weight in the generated data: validate finds it and names the layer."""
    graph = load_model(hybrid_h5)
    result = generate_code(graph, GenerateOptions(), str(hybrid_h5))
    params = result.files["network_data_params.c"]
    marker = "s_network_weights_array_u64"
    head, body = params.split(marker + "[", 1)
    # the 5000th word is inside stem/res1 constants: change one hex digit
    words = body.split("0x")
    words[5000] = ("1" if words[5000][0] != "1" else "2") + words[5000][1:]
    result.files["network_data_params.c"] = head + marker + "[" + "0x".join(words)
    x = random_inputs(graph, 2, seed=0, value_range=None)
    report = validate_host(str(hybrid_h5), "keras", graph, result, "network", x, False, tmp_path)
    assert not report["bit_exact"]
    assert report["first_diverging_layer"] is not None


def test_api_refuses_bad_buffers(hybrid_h5: Path, tmp_path: Path) -> None:
    """create_and_init with a NULL or misaligned activations buffer: an error code, no crash;
    a second instance: AI_ERROR_CODE_IN_USE, the first handle untouched."""
    import ctypes

    from bnncube.validate import build_host_network

    folder = tmp_path / "gen"
    write_generated(generate_code(load_model(hybrid_h5), GenerateOptions()), folder)
    lib = ctypes.CDLL(str(build_host_network(folder, "network", tmp_path)))

    class Error(ctypes.Structure):
        _fields_ = [("type", ctypes.c_uint32, 8), ("code", ctypes.c_uint32, 24)]

    create = lib.ai_network_create_and_init
    create.restype = Error
    create.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_void_p]
    lib.ai_network_destroy.argtypes = [ctypes.c_void_p]
    lib.ai_network_destroy.restype = ctypes.c_void_p
    handle = ctypes.c_void_p()
    err = create(ctypes.byref(handle), None, None)
    assert (err.type, err.code) == (0x30, 0x13)  # INIT_FAILED, NETWORK_ACTIVATIONS
    assert not handle.value
    null_acts = (ctypes.c_void_p * 1)(None)
    err = create(ctypes.byref(handle), null_acts, None)
    assert (err.type, err.code) == (0x30, 0x13)
    arena = np.zeros(200_000, np.uint8)
    base = arena.ctypes.data + (-arena.ctypes.data) % 8
    err = create(ctypes.byref(handle), (ctypes.c_void_p * 1)(base + 4), None)
    assert (err.type, err.code) == (0x30, 0x17)  # INVALID_PTR: not 8-byte aligned
    err = create(ctypes.byref(handle), (ctypes.c_void_p * 1)(base), None)
    assert err.type == 0 and handle.value
    first = handle.value
    other = ctypes.c_void_p(12345)
    err = create(ctypes.byref(other), (ctypes.c_void_p * 1)(base), None)
    assert (err.type, err.code) == (0x33, 0x40)  # CREATE_FAILED, IN_USE
    assert other.value == 12345  # left as it was
    assert lib.ai_network_destroy(ctypes.c_void_p(first)) is None


def test_io_data_types(hybrid_h5: Path, mnv2_i8_tflite: Path, tmp_path: Path, capsys) -> None:
    """--input-data-type / --output-data-type: int8 input for the hybrid (its input quantizer
    dropped), float32 input and int8 output for mnv2_i8; still bit-exact, and equal to the
    original model where the inputs are exactly representable."""
    for model, extra in (
        (hybrid_h5, ["--input-data-type", "int8"]),
        (mnv2_i8_tflite, ["--input-data-type", "float32", "--output-data-type", "int8"]),
    ):
        out = tmp_path / model.stem
        argv = ["validate", "-m", str(model), "-b", "4", "-o", str(out), "-w", str(out / "w")]
        assert main([*argv, *extra]) == 0
        report = json.loads((out / "network_validate_report.json").read_text())
        assert report["bit_exact"]
        (metrics,) = report["metrics"].values()
        assert metrics["vs_original"]["rmse"] == 0.0
    info = json.loads((tmp_path / "hybrid" / "w" / "network" / "network_c_info.json").read_text())
    assert info["inputs"][0]["format"] == "int8" and info["inputs"][0]["scale"] == 2.0**-7
    _error(
        capsys,
        ["generate", "-m", str(hybrid_h5), "--output-data-type", "int8", "-o", str(tmp_path / "x")],
        "option --output-data-type",
        "DEQUANTIZE",
    )


def test_onnx_model_and_per_layer(hybrid_h5: Path, tmp_path: Path) -> None:
    """bnncube's ONNX form as input (the original model then runs in onnxruntime), with every
    layer compared (--per-layer)."""
    onnx_path = tmp_path / "hybrid.onnx"
    assert main(["convert", "-m", str(hybrid_h5), "--to", "onnx", "-o", str(onnx_path)]) == 0
    out = tmp_path / "out"
    argv = ["validate", "-m", str(onnx_path), "-b", "2", "--per-layer", "-o", str(out)]
    assert main([*argv, "-w", str(tmp_path / "w")]) == 0
    report = json.loads((out / "network_validate_report.json").read_text())
    assert report["bit_exact"] and report["original"] == "onnxruntime"
    assert report["layers_differing"] == {}
    (metrics,) = report["metrics"].values()
    assert metrics["vs_original"]["rmse"] == 0.0  # onnxruntime runs the same arithmetic


def test_validate_bad_expected_outputs_and_device(hybrid_h5: Path, tmp_path: Path, capsys) -> None:
    vo = tmp_path / "expected.npy"
    np.save(vo, np.zeros((3, 7)))
    out = tmp_path / "o"
    base = ["validate", "-m", str(hybrid_h5), "-o", str(out), "-w", str(tmp_path / "w")]
    _error(capsys, [*base, "-b", "2", "-vo", str(vo)], "option -vo", "expected 2 outputs")
    _error(capsys, [*base, "--mode", "target", "-d", "bogus"], "--device", "serial:PORT")
    assert not out.exists()


@pytest.mark.parametrize(
    ("op_type", "change", "words"),
    [
        ("Conv2D", {"strides": (3, 3)}, "height: 48 outputs from 96 inputs"),
        ("DepthwiseConv2D", {"pads": [5, 5, 5, 5]}, "height: .* and padding 5 before"),
        ("BinaryConv2D", {"strides": (2, 2)}, "height: 48 outputs from 48 inputs .* stride 2"),
        ("BinaryConv2D", {"dilations": (1, 4)}, "dilation \\(1, 4\\); the binary convolution"),
    ],
)
def test_generate_checks_the_geometry_first(
    hybrid_h5: Path, op_type: str, change: dict[str, Any], words: str
) -> None:
    """Shapes, strides, dilations and padding that do not fit together (a damaged or hand-edited
    model) stop generate with a clear error naming the op, before any C is written: the same
    check the C kernels make at run time (bnn_window_ok)."""
    from bnncube.errors import BnnError

    graph = load_model(hybrid_h5)
    op = next(o for o in graph.ops if o.type == op_type)
    op.attrs.update(change)
    with pytest.raises(BnnError, match=f"op '{op.name}': {words}"):
        generate_code(graph, GenerateOptions(c_name="bad"), str(hybrid_h5))
