"""The kernels in QEMU's Cortex-M7 (`mps2-an500`), which faults on misaligned LDRD/LDM like the
chip (Unicorn does not): layers of a small QKeras network with binary layers and of a TFLite int8
network, each run by a self-checking firmware against the reference's output, with the arrays
aligned and with the int8 buffers misaligned by one byte (they may sit anywhere in a user's
arena; wider arrays keep the alignment C requires of their type)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.converters.ir import Graph  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.reference import run_graph  # noqa: E402
from bnncube.runtime_c.build import runtime_sources  # noqa: E402
from bnncube.validation import emulator as em  # noqa: E402
from bnncube.validation.kernel_calls import kernel_call  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which(em.ARM_GCC) is None or shutil.which("qemu-system-arm") is None,
    reason="needs arm-none-eabi-gcc and qemu-system-arm (`make setup` installs them as root)",
)


WANTED = {"threshold", "add", "depthwise", "dense_float_out", "bvalid", "bstride2"}


@pytest.fixture(scope="module")
def qkeras_graphs(tmp_path_factory: pytest.TempPathFactory) -> list[Graph]:
    """Random QKeras models (tests/test_reference_qkeras.py) that together have every feature."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_reference_qkeras import _lowered, random_qkeras

    graphs, covered = [], set()
    for seed in range(40):
        model, features = random_qkeras(seed)
        if (features & WANTED) - covered:
            graphs.append(_lowered(model, tmp_path_factory.mktemp("q"))[0])
            covered |= features & WANTED
        if covered == WANTED:
            return graphs
    raise AssertionError(f"the random models lack {WANTED - covered}")


def _cases(graph: Graph, seed: int, seen: set[Any]) -> list[tuple[str, Any]]:
    t = graph.tensors[graph.inputs[0]]
    rng = np.random.default_rng(seed)
    if t.dtype == "int8":
        x: np.ndarray = rng.integers(-128, 128, t.shape).astype(np.int8)
    else:
        x = rng.uniform(-1, 1, t.shape).astype(np.float32)
    values = run_graph(graph, [x], outputs_only=False)
    cases = []
    for op in graph.ops:
        call = kernel_call(graph, op, values)
        if call.output is None:
            continue
        key = (
            op.type,
            str(op.attrs.get("output_transform")),
            tuple(op.attrs.get("strides", ())),
            tuple(op.attrs.get("pads", ())),
        )
        if key in seen:
            continue
        seen.add(key)
        index = next(
            i
            for i, a in enumerate(call.args)
            if isinstance(a, np.ndarray) and np.shares_memory(a, call.output)
        )
        want = np.asarray(values[op.outputs[0]]).reshape(call.args[index].shape)
        cases.append((op.name, (call.function, call.args, {index: want})))
    return cases


def _run_all(
    graph: Graph, qemu: Any, out_dir: Path, offset: int, seen: set[Any]
) -> list[tuple[str, str]]:
    """Run one case per distinct (op type, transform, strides, pads) not in ``seen``."""
    ran = []
    for name, (function, args, expected) in _cases(graph, 0, seen):
        elf = em.build_case_firmware(
            function,
            args,
            expected,
            sources=runtime_sources(),
            out_dir=out_dir,
            array_offset=offset,
        )
        qemu.run_checked(elf, timeout_s=60)
        ran.append((name, function))
    return ran


@pytest.mark.parametrize("offset", [0, 1])
def test_qkeras_layers_in_qemu(qkeras_graphs: list[Graph], tmp_path: Path, offset: int) -> None:
    seen: set[Any] = set()
    qemu = em.QemuRunner()
    ran = [r for g in qkeras_graphs for r in _run_all(g, qemu, tmp_path, offset, seen)]
    functions = {function for _, function in ran}
    assert {"bnn_bconv2d", "bnn_conv2d_s8_affine", "bnn_dense_s8", "bnn_add_s8"} <= functions, ran


@pytest.mark.parametrize("offset", [0, 1])
def test_tflite_layers_in_qemu(mnv2_i8_tflite: Path, tmp_path: Path, offset: int) -> None:
    ran = _run_all(load_model(mnv2_i8_tflite), em.QemuRunner(), tmp_path, offset, set())
    functions = {function for _, function in ran}
    kernels = {
        "bnn_conv2d_s8_tflite",
        "bnn_depthwise_conv2d_s8_tflite",
        "bnn_add_s8",
        "bnn_dense_s8",
    }
    assert kernels <= functions
