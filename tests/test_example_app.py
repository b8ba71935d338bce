"""The user-facing example `examples/classify`, built against a generated folder.

A tiny QKeras network (8-bit conv, binary conv with an 8-bit shortcut, dense float output) is
generated with `bnncube generate`; `main_host.c` is built by the example's Makefile with
`gcc -std=c99 -Wall -Wextra -Werror -pedantic` and its output file must equal bnncube's reference
(`run_graph`) byte for byte, under the default name and under `-n mynet` (generated with the
input and output outside the activations); a wrong input size is refused with a clear message.
With arm-none-eabi-gcc and qemu-system-arm, `main_m7.c` runs in QEMU's Cortex-M7 (built by
`emulator.cross_compile` and by the Makefile's `m7` target) and prints the same bytes; the
generated folder alone compiles for the Cortex-M7 under -Werror.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.cli import main  # noqa: E402
from bnncube.converters.ir import Graph  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.reference import run_graph  # noqa: E402
from bnncube.validation import emulator as em  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classify"
ARM_FLAGS = [*em.CPU_FLAGS, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]

needs_host_cc = pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("make") is None,
    reason="needs gcc and make to build the host example",
)
needs_arm_gcc = pytest.mark.skipif(
    shutil.which(em.ARM_GCC) is None,
    reason=f"needs {em.ARM_GCC} (`make setup` installs it as root)",
)
needs_qemu = pytest.mark.skipif(
    shutil.which(em.ARM_GCC) is None or shutil.which(em.QEMU) is None,
    reason=f"needs {em.ARM_GCC} and {em.QEMU} (`make setup` installs them as root)",
)


@dataclass
class Case:
    """A model, one input for it (the raw bytes the example reads) and the expected output."""

    model: Path
    graph: Graph
    input_bytes: bytes
    expected: bytes


def _tiny_qkeras(path: Path) -> Path:
    """10x10x3 -> 8-bit conv s2 -> BN -> binary 3x3 conv + BN, added to the 8-bit shortcut ->
    dense to 10 float scores."""
    import tensorflow as tf
    from qkeras import QActivation, QConv2D, QDense, binary, quantized_bits

    from bnncube.zoo.calibrate import set_bn_statistics

    tf.keras.utils.set_random_seed(7)
    layers = tf.keras.layers
    inp = layers.Input((10, 10, 3), name="input")
    x = QActivation(quantized_bits(8, 0, alpha=1), name="input_q")(inp)
    x = QConv2D(
        16,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_quantizer=quantized_bits(8, 0, alpha=1),
        name="conv",
    )(x)
    x = QActivation(quantized_bits(8, 2, alpha=1), name="conv_q")(
        layers.BatchNormalization(name="conv_bn")(x)
    )
    b = QActivation(binary(alpha=1), name="sign")(x)
    b = QConv2D(
        16, 3, padding="same", use_bias=False, kernel_quantizer=binary(alpha=1), name="bconv"
    )(b)
    b = QActivation(quantized_bits(8, 2, alpha=1), name="bconv_q")(
        layers.BatchNormalization(name="bconv_bn")(b)
    )
    x = QActivation(quantized_bits(8, 2, alpha=1), name="add_q")(layers.Add(name="add")([b, x]))
    x = layers.Flatten(name="flatten")(x)
    x = QDense(
        10,
        kernel_quantizer=quantized_bits(8, 0, alpha=1),
        bias_quantizer=quantized_bits(32, 15, alpha=1),
        name="scores",
    )(x)
    model = tf.keras.Model(inp, x, name="tiny_classifier")
    calib = np.random.default_rng(1).uniform(-1, 1, (16, 10, 10, 3)).astype(np.float32)
    set_bn_statistics(model, calib, rng=np.random.default_rng(2))
    model.save(path)
    return path


def _raw(array: np.ndarray) -> bytes:
    """The bytes of an array as the C code holds it: little-endian, C order."""
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    model = _tiny_qkeras(tmp_path_factory.mktemp("model") / "tiny.h5")
    graph = load_model(model)
    assert {"BinaryConv2D", "Conv2D", "Add", "Dense"} <= {op.type for op in graph.ops}
    t = graph.tensors[graph.inputs[0]]
    rng = np.random.default_rng(3)
    if t.dtype == "int8":
        x: np.ndarray = rng.integers(-128, 128, t.shape).astype(np.int8)
    else:
        x = rng.uniform(-1, 1, t.shape).astype(np.float32)
    (y,) = run_graph(graph, [x]).values()
    return Case(model, graph, _raw(x), _raw(y))


def _generate(case: Case, name: str, out: Path, *options: str) -> Path:
    argv = ["generate", "-m", str(case.model), "-n", name, "-o", str(out), "-q", *options]
    assert main(argv) == 0
    assert (out / f"{name}.h").is_file()
    return out


@pytest.fixture(scope="module")
def generated(case: Case, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The generated folder under the default name, and under `-n mynet` with the input and
    output outside the activations buffer (the example then gives its own buffers)."""
    tmp = tmp_path_factory.mktemp("gen")
    return {
        "network": _generate(case, "network", tmp / "network"),
        "mynet": _generate(
            case, "mynet", tmp / "mynet", "--no-inputs-allocation", "--no-outputs-allocation"
        ),
    }


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CFLAGS", "LDFLAGS", "MAKEFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        env=env,
    )


def _build_host(gen: Path, name: str, out: Path) -> Path:
    proc = _make(f"GEN={gen}", f"NAME={name}", f"OUT={out}", "CC=gcc")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for flag in ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"):
        assert flag in proc.stdout  # the command make echoed
    return out / "app"


def _run_app(app: Path, data: bytes, tmp: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    src, dst = tmp / "input.bin", tmp / "output.bin"
    src.write_bytes(data)
    dst.unlink(missing_ok=True)
    proc = subprocess.run([str(app), str(src), str(dst)], capture_output=True, text=True)
    return proc, dst


def _macc(gen: Path, name: str) -> int:
    return int(json.loads((gen / f"{name}_c_info.json").read_text())["macc"])


@needs_host_cc
@pytest.mark.parametrize("name", ["network", "mynet"])
def test_host_app_equals_reference(
    case: Case, generated: dict[str, Path], name: str, tmp_path: Path
) -> None:
    app = _build_host(generated[name], name, tmp_path / "build")
    proc, out = _run_app(app, case.input_bytes, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_bytes() == case.expected
    assert f"model:       {name}\n" in proc.stdout
    assert f"MACC:        {_macc(generated[name], name)}\n" in proc.stdout
    assert re.search(r"activations: [1-9]\d* bytes", proc.stdout), proc.stdout
    assert f"input:       {len(case.input_bytes)} bytes" in proc.stdout


@needs_host_cc
def test_host_app_refuses_wrong_input_size(
    case: Case, generated: dict[str, Path], tmp_path: Path
) -> None:
    app = _build_host(generated["network"], "network", tmp_path / "build")
    n = len(case.input_bytes)
    for data, got in (
        (case.input_bytes[:-1], f"{n - 1} bytes"),
        (case.input_bytes + b"\0", f"more than {n} bytes"),
    ):
        proc, out = _run_app(app, data, tmp_path)
        assert proc.returncode != 0
        assert "error:" in proc.stderr and "wrong input size" in proc.stderr, proc.stderr
        assert f"takes exactly {n} bytes" in proc.stderr and got in proc.stderr
        assert not out.exists()
    proc = subprocess.run([str(app)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


@needs_host_cc
def test_makefile_names_a_missing_folder(tmp_path: Path) -> None:
    proc = _make(f"GEN={tmp_path / 'nothing'}", "NAME=network", f"OUT={tmp_path}")
    assert proc.returncode != 0
    assert "bnncube generate" in proc.stderr


@needs_arm_gcc
def test_generated_folder_compiles_for_cortex_m7(generated: dict[str, Path]) -> None:
    folder = generated["network"]
    sources = sorted(folder.glob("*.c"))
    assert sources
    for src in sources:
        proc = subprocess.run(
            [em.ARM_GCC, *ARM_FLAGS, "-I", str(folder), "-c", str(src), "-o", os.devnull],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"


def _input_c(data: bytes, path: Path) -> Path:
    rows = (",".join(str(b) for b in data[i : i + 24]) for i in range(0, len(data), 24))
    path.write_text(
        "/* one raw input of the network (generated by tests/test_example_app.py) */\n"
        "const unsigned char g_input[] = {\n" + ",\n".join(rows) + "\n};\n"
        "const unsigned int g_input_size = sizeof(g_input);\n"
    )
    return path


def _qemu_output(elf: Path) -> bytes:
    status, output = em.QemuRunner().run(elf, timeout_s=30)
    assert status == 0, output
    m = re.search(r"^output: ([0-9a-f]*)$", output, re.MULTILINE)
    assert m is not None, output
    assert "model: " in output and "MACC: " in output
    return bytes.fromhex(m.group(1))


@needs_qemu
def test_m7_app_in_qemu_equals_reference(
    case: Case, generated: dict[str, Path], tmp_path: Path
) -> None:
    input_c = _input_c(case.input_bytes, tmp_path / "input_data.c")
    # the test harness's own build (emulator.cross_compile), default name
    gen = generated["network"]
    elf = em.cross_compile(
        [EXAMPLE / "main_m7.c", input_c, *sorted(gen.glob("*.c"))],
        [gen],
        tmp_path / "harness" / "app_m7.elf",
        board="mps2_an500",
        extra_flags=["-pedantic"],
    )
    assert _qemu_output(elf) == case.expected
    # the Makefile's `m7` target, as a user runs it, with `-n mynet`
    proc = _make(
        "m7",
        f"GEN={generated['mynet']}",
        "NAME=mynet",
        f"OUT={tmp_path / 'make'}",
        f"INPUT_C={input_c}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _qemu_output(tmp_path / "make" / "app_m7.elf") == case.expected


@needs_qemu
def test_m7_app_refuses_wrong_input_size(
    case: Case, generated: dict[str, Path], tmp_path: Path
) -> None:
    input_c = _input_c(case.input_bytes[:-4], tmp_path / "input_data.c")
    gen = generated["network"]
    elf = em.cross_compile(
        [EXAMPLE / "main_m7.c", input_c, *sorted(gen.glob("*.c"))],
        [gen],
        tmp_path / "app_m7.elf",
        board="mps2_an500",
    )
    status, output = em.QemuRunner().run(elf, timeout_s=30)
    assert status == 1, output
    assert "error: wrong input size" in output
