"""`bnncube validate --mode target`: the generated C on an emulated Cortex-M7 (docs/target.md).

The generated folder is cross-compiled with ``runtime_c/target/validate_main.c`` for the
STM32H743 memory map (``arm-none-eabi-gcc -O2``, the DESIGN flags of
:func:`~bnncube.validation.emulator.cross_compile`) and run

* in **Unicorn** (``emu:unicorn``, the default): ``bnn_validate_init`` creates the network, then
  for each input the host writes the input into the network's input buffer in emulated RAM and
  calls ``ai_<name>_run`` through :meth:`UnicornBackend.call`, which counts the instructions of
  that call exactly. Per-layer counts come from a second build with
  ``AI_<NAME>_LAYER_OBSERVER`` defined to ``bnn_validate_layer_done`` (an empty function): a
  Unicorn code hook on that function's first instruction records the instruction counter and the
  layer index (r0) at every call;
* in **QEMU** (``emu:qemu``): an ``mps2_an500`` firmware with the inputs compiled in prints each
  output over semihosting; instruction counts (whole firmware) come from the counting TCG plugin
  when this QEMU accepts plugins;
* on a **serial device** (``serial:PORT[:BAUD]``): a board (or QEMU with ``-serial pty``) running
  the serial validation firmware (``runtime_c/target/bnn_serial.c``) of the same generated
  network; each input is sent in a RUN frame and the output comes back
  (:mod:`bnncube.validation.serial_protocol`, docs/serial-protocol.md).

Outputs are compared bit for bit with the reference (``run_graph``) and with the original model
(metrics), as ``--mode host`` does. Flash and RAM come from the production link (board
``stm32h743``, no observer). Faults, instruction budgets and timeouts end the validation with
:class:`~bnncube.errors.ValidationFailed` (exit 1) naming the PC, the function and the layer.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.converters.ir import Graph
from bnncube.errors import BnnError, ValidationFailed
from bnncube.runtime_c.build import BuildError
from bnncube.validation import emulator as em

CLOCK_HZ = 480e6  # STM32H743 maximum core clock
DEVICES = ("emu:unicorn", "emu:qemu")  # and serial:PORT[:BAUD]
DEFAULT_BUDGET = 2_000_000_000  # instructions per call
DEFAULT_TIMEOUT_S = 120.0  # per call (Unicorn) or per firmware run (QEMU)
OBSERVER = "bnn_validate_layer_done"
HARNESS = em.TARGET_DIR / "validate_main.c"

_NP = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int32": np.int32}


@dataclass
class TargetBuild:
    """The firmware ELFs of one generated folder."""

    folder: Path
    c_name: str
    elf: Path  # production: board stm32h743, no observer
    elf_layers: Path | None = None  # with the layer observer (Unicorn only)


@dataclass
class TargetRun:
    outputs: np.ndarray
    instructions: list[int]  # per inference (Unicorn); empty when not measured
    layers: list[dict[str, Any]] = field(default_factory=list)
    stack_bytes: int | None = None
    firmware_instructions: int | None = None  # QEMU plugin: whole firmware
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def _name_defines(c_name: str) -> list[str]:
    return [
        f"NETWORK_NAME={c_name}",
        f"NETWORK_NAME_UPPER={c_name.upper()}",
        f'NETWORK_HEADER="{c_name}.h"',
    ]


def build_target(
    folder: Path,
    c_name: str,
    build_dir: Path,
    *,
    layers: bool = True,
    defines: tuple[str, ...] = (),
) -> TargetBuild:
    """Cross-compile ``folder`` with the harness: the production ELF and, with ``layers``, the
    one with the layer observer. ``defines`` are added to both (tests inject faults with them)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [HARNESS, *sorted(Path(folder).glob("*.c"))]
    base = [*_name_defines(c_name), *defines]
    elf = em.cross_compile(
        sources, [folder, build_dir], build_dir / "validate.elf", board="stm32h743", defines=base
    )
    elf_layers = None
    if layers:
        header = build_dir / "bnn_validate_observer.h"
        text = f"void {OBSERVER}(int layer, const void *data, unsigned int nbytes);\n"
        if not header.exists() or header.read_text() != text:
            header.write_text(text)
        elf_layers = em.cross_compile(
            sources,
            [folder, build_dir],
            build_dir / "validate_layers.elf",
            board="stm32h743",
            defines=[*base, f"AI_{c_name.upper()}_LAYER_OBSERVER={OBSERVER}"],
            extra_flags=("-include", str(header)),
        )
    return TargetBuild(Path(folder), c_name, elf, elf_layers)


def memory_usage(elf: Path, stack_bytes: int | None = None) -> dict[str, int]:
    """Flash and RAM of a firmware linked with ``stm32h743.ld`` (section sizes, pyelftools).

    flash = vector table + .text (code and .rodata: the weights) + unwind tables + .data's
    load image; RAM = .data + .bss + .arena (+ ``stack_bytes``, the measured stack use)."""
    from elftools.elf.elffile import ELFFile

    sizes: dict[str, int] = {}
    with Path(elf).open("rb") as f:
        for sec in ELFFile(f).iter_sections():
            if sec["sh_flags"] & 0x2:  # SHF_ALLOC
                sizes[sec.name] = int(sec["sh_size"])
    code = sum(sizes.get(s, 0) for s in (".isr_vector", ".text", ".ARM.extab", ".ARM.exidx"))
    data, bss, arena = sizes.get(".data", 0), sizes.get(".bss", 0), sizes.get(".arena", 0)
    out = {
        "text_rodata_bytes": code,
        "data_bytes": data,
        "bss_bytes": bss,
        "arena_bytes": arena,
        "stack_reserved_bytes": sizes.get(".stack", 0),
        "flash_bytes": code + data,
        "ram_bytes": data + bss + arena + (stack_bytes or 0),
    }
    if stack_bytes is not None:
        out["stack_used_bytes"] = int(stack_bytes)
    return out


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------


def _layer_table(graph: Graph, report: dict[str, Any]) -> list[tuple[int, str, str]]:
    """(index, name, c_type) of every op, in the generated code's order."""
    c_types = {row.get("name"): row.get("c_type", "?") for row in report.get("layers", [])}
    return [(i, op.name, c_types.get(op.name, "?")) for i, op in enumerate(graph.ops)]


def _fault_layer(
    table: list[tuple[int, str, str]], symbol: str | None, last_layer: int | None
) -> str:
    """Where a fault happened: the layer after the last one the observer saw, or the layers
    whose kernel is the faulting function."""
    if last_layer is not None or symbol is None:
        after = -1 if last_layer is None else last_layer
        for i, name, c_type in table:
            if i > after and not c_type.startswith("(alias"):
                return f"layer {i} ({name}, {c_type})"
        return "after the last layer"
    function = symbol.split("+")[0]
    hits = [f"{i} ({name})" for i, name, c_type in table if c_type == function]
    if hits:
        return f"in {function}, used by layer(s) " + ", ".join(hits[:8])
    return f"in {function} (no layer calls it directly)"


# --------------------------------------------------------------------------------------------
# Unicorn
# --------------------------------------------------------------------------------------------


def _build_error(exc: Exception) -> str:
    """The compiler's/linker's messages of a BuildError, without the command line."""
    lines = [ln for ln in str(exc).splitlines()[1:] if ln.strip()]
    return "; ".join(lines[:6]) or str(exc)[:300]


def _u32(data: bytes) -> int:
    return int(struct.unpack("<I", data[:4])[0])


def _init(uc: em.UnicornBackend, what: str) -> tuple[int, int, int, int, int]:
    status = uc.call("bnn_validate_init")
    if status != 0:
        raise ValidationFailed(f"target: {what}: ai_*_create_and_init failed (status {status})")
    names = ("g_val_network", "g_val_in", "g_val_out", "g_val_in_data", "g_val_out_data")
    net, bin_, bout, in_data, out_data = (_u32(uc.read_symbol(n)) for n in names)
    return net, bin_, bout, in_data, out_data


def _counter(uc: em.UnicornBackend) -> int:
    if uc.hook_kind == "c":
        return int(uc._counter.instructions)
    return int(uc._py_state[0])


def run_unicorn(
    build: TargetBuild,
    graph: Graph,
    report: dict[str, Any],
    inputs: np.ndarray,
    *,
    instruction_budget: int = DEFAULT_BUDGET,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> TargetRun:
    """Run every input through ``ai_<name>_run`` in Unicorn; per-layer counts on the first."""
    from unicorn import UC_HOOK_CODE
    from unicorn.arm_const import UC_ARM_REG_R0

    c_name = build.c_name
    run_fn = f"ai_{c_name}_run"
    table = _layer_table(graph, report)
    in_t, out_t = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    out_dtype = np.dtype(_NP[out_t.dtype])
    limits = {"instruction_budget": instruction_budget, "timeout_s": timeout_s}

    def fail(exc: em.EmulatorError, where: str, last_layer: int | None) -> ValidationFailed:
        place = _fault_layer(table, exc.symbol, last_layer)
        return ValidationFailed(f"target (emu:unicorn): {where}: {exc}; {place}")

    # ---- per-layer counts: the observer build, first input
    layers: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if build.elf_layers is not None:
        uc = em.UnicornBackend(build.elf_layers, **limits)
        obs_addr = uc.image.functions[OBSERVER][0]
        marks: list[tuple[int, int]] = []

        def on_observer(engine: Any, _address: int, _size: int, _user: Any) -> None:
            layer = int(engine.reg_read(UC_ARM_REG_R0))
            marks.append((layer, _counter(uc)))

        uc.uc.hook_add(UC_HOOK_CODE, on_observer, begin=obs_addr, end=obs_addr)
        try:
            net, bin_, bout, in_data, _ = _init(uc, "observer build")
            marks.clear()
            uc.write(in_data, np.ascontiguousarray(inputs[0], _NP[in_t.dtype]).tobytes())
            done = uc.call(run_fn, net, bin_, bout)
        except em.EmulatorError as exc:
            last = marks[-1][0] if marks else None
            raise fail(exc, "input 0 (observer build)", last) from None
        if done != 1:
            raise ValidationFailed(f"target: {run_fn} returned {done} for input 0, not 1")
        total = uc.last_instructions
        previous = 0
        names = {i: (n, c) for i, n, c in table}
        for layer, count in marks:
            name, c_type = names.get(layer, ("?", "?"))
            layers.append(
                {"id": layer, "name": name, "c_type": c_type, "instructions": count - previous}
            )
            previous = count
        extra["layers_epilogue_instructions"] = total - previous
        extra["layers_total_instructions"] = total

    # ---- production build: every input
    uc = em.UnicornBackend(build.elf, **limits)
    try:
        net, bin_, bout, in_data, out_data = _init(uc, "production build")
    except em.EmulatorError as exc:
        raise fail(exc, "bnn_validate_init", None) from None
    stack = uc.last_stack_bytes
    outputs = np.zeros((len(inputs),) + tuple(out_t.shape[1:]), out_dtype)
    counts: list[int] = []
    for i, x in enumerate(inputs):
        uc.write(in_data, np.ascontiguousarray(x, _NP[in_t.dtype]).tobytes())
        try:
            done = uc.call(run_fn, net, bin_, bout)
        except em.EmulatorError as exc:
            raise fail(exc, f"input {i}", None) from None
        if done != 1:
            raise ValidationFailed(f"target: {run_fn} returned {done} for input {i}, not 1")
        counts.append(uc.last_instructions)
        stack = max(stack, uc.last_stack_bytes)
        raw = uc.read(out_data, out_t.nbytes)
        outputs[i] = np.frombuffer(raw, out_dtype).reshape(out_t.shape[1:])
    if layers:
        extra["observer_overhead_instructions"] = extra["layers_total_instructions"] - counts[0]
    return TargetRun(outputs, counts, layers, stack, extra=extra)


# --------------------------------------------------------------------------------------------
# QEMU
# --------------------------------------------------------------------------------------------


def _inputs_source(inputs: np.ndarray, dtype: Any) -> str:
    data = np.ascontiguousarray(inputs, dtype).tobytes()
    rows = (",".join(map(str, data[i : i + 32])) for i in range(0, len(data), 32))
    return (
        "/* generated by bnncube.validation.target: the validation inputs */\n"
        "const unsigned char g_val_inputs[] __attribute__((aligned(8))) = {\n"
        + ",\n".join(rows)
        + "\n};\n"
        + f"const unsigned int g_val_count = {len(inputs)}u;\n"
    )


def run_qemu(
    folder: Path,
    c_name: str,
    graph: Graph,
    report: dict[str, Any],
    inputs: np.ndarray,
    build_dir: Path,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    defines: tuple[str, ...] = (),
) -> TargetRun:
    """Build an ``mps2_an500`` firmware with ``inputs`` compiled in, run it in QEMU, parse the
    outputs it prints."""
    if not em.qemu_available():
        raise BnnError("option -d emu:qemu: qemu-system-arm is not installed (`make setup`)")
    in_t, out_t = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    build_dir.mkdir(parents=True, exist_ok=True)
    src = build_dir / "val_inputs.c"
    text = _inputs_source(inputs, _NP[in_t.dtype])
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    try:
        elf = em.cross_compile(
            [HARNESS, src, *sorted(Path(folder).glob("*.c"))],
            [folder],
            build_dir / "validate_qemu.elf",
            board="mps2_an500",
            defines=[*_name_defines(c_name), "BNN_VALIDATE_QEMU", *defines],
        )
    except BuildError as exc:
        raise ValidationFailed(
            f"target: the QEMU firmware does not build: {_build_error(exc)}"
        ) from None
    runner = em.QemuRunner()
    count = runner.supports_plugins() and em._host_library(em._PLUGIN_SOURCE, "qemu_count")
    try:
        status, output = runner.run(elf, timeout_s=timeout_s, count=bool(count))
    except em.ToolchainError:
        status, output = runner.run(elf, timeout_s=timeout_s)
    except em.EmulatorError as exc:
        raise ValidationFailed(f"target (emu:qemu): {exc}") from None
    if status == em.EXIT_FAULT:
        fault = em.parse_fault(output, elf)
        if fault is not None:
            place = _fault_layer(_layer_table(graph, report), fault.symbol, None)
            raise ValidationFailed(f"target (emu:qemu): {fault.describe()}; {place}")
    if status != 0:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise ValidationFailed(f"target (emu:qemu): the firmware exited with {status}: {tail}")
    out_dtype = np.dtype(_NP[out_t.dtype])
    outputs = np.zeros((len(inputs),) + tuple(out_t.shape[1:]), out_dtype)
    seen = 0
    for line in output.splitlines():
        if line.startswith("BNN_VAL_OUT "):
            _, index, hexdata = line.split(" ", 2)
            raw = bytes.fromhex(hexdata.strip())
            if len(raw) != out_t.nbytes:
                raise ValidationFailed(f"target (emu:qemu): output {index} has {len(raw)} bytes")
            outputs[int(index)] = np.frombuffer(raw, out_dtype).reshape(out_t.shape[1:])
            seen += 1
    if seen != len(inputs):
        raise ValidationFailed(f"target (emu:qemu): {seen} of {len(inputs)} outputs printed")
    return TargetRun(outputs, [], firmware_instructions=runner.last_instructions)


# --------------------------------------------------------------------------------------------
# serial device
# --------------------------------------------------------------------------------------------


def run_serial(
    device: str,
    c_name: str,
    graph: Graph,
    inputs: np.ndarray,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> TargetRun:
    """Send every input to the serial validation firmware on ``device`` (serial:PORT[:BAUD]),
    after a HELLO that checks the network's name and I/O sizes."""
    from bnncube.validation import serial_protocol as sp

    port, baud = sp.parse_device(device)
    in_t, out_t = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    out_dtype = np.dtype(_NP[out_t.dtype])
    outputs = np.zeros((len(inputs),) + tuple(out_t.shape[1:]), out_dtype)
    cycles: list[int] = []
    attempts = 0
    try:
        with sp.SerialPort(port, baud) as transport:
            client = sp.SerialClient(transport, timeout_s=timeout_s)
            info = client.hello()
            in_bytes = int(np.dtype(_NP[in_t.dtype]).itemsize * np.prod(in_t.shape[1:]))
            if (info.name, info.in_size, info.out_size) != (c_name, in_bytes, out_t.nbytes):
                raise ValidationFailed(
                    f"target ({device}): the device serves network {info.name!r} "
                    f"(input {info.in_size} B, output {info.out_size} B), not {c_name!r} "
                    f"(input {in_bytes} B, output {out_t.nbytes} B): flash the serial "
                    "validation firmware of this generated folder"
                )
            for i, x in enumerate(inputs):
                result = client.run(np.ascontiguousarray(x, _NP[in_t.dtype]).tobytes())
                attempts += result.attempts
                if len(result.output) != out_t.nbytes:
                    raise ValidationFailed(
                        f"target ({device}): output {i} has {len(result.output)} bytes"
                    )
                outputs[i] = np.frombuffer(result.output, out_dtype).reshape(out_t.shape[1:])
                if result.cycles is not None:
                    cycles.append(result.cycles)
    except sp.SerialProtocolError as exc:
        raise ValidationFailed(f"target ({device}): {exc}") from None
    extra: dict[str, Any] = {
        "serial": {
            "port": port,
            "baud": baud,
            "protocol_version": info.version,
            "retries": attempts - len(inputs),
        }
    }
    if cycles:
        extra["cycles"] = {"mean": float(np.mean(cycles)), "per_inference": cycles}
    return TargetRun(outputs, [], extra=extra)


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _original(
    model: str, kind: str, graph: Graph, inputs: np.ndarray, expected_file: str | None
) -> tuple[np.ndarray, str]:
    """The original model's outputs (or -vo's), as ``--mode host`` computes them."""
    from bnncube.converters.reference import run_graph
    from bnncube.validate import dequantized, load_expected, load_model_graph, original_outputs

    if expected_file is not None:
        return load_expected(expected_file, graph, len(inputs)), f"file {Path(expected_file).name}"
    original_graph = load_model_graph(model, kind)
    model_in = original_graph.tensors[original_graph.inputs[0]]
    ours_in = graph.tensors[graph.inputs[0]]
    fed = inputs
    if model_in.dtype == "float32" and ours_in.dtype != "float32":
        fed = dequantized(graph, graph.inputs[0], inputs).astype(np.float32)
    elif model_in.dtype in ("int8", "uint8") and ours_in.dtype == "float32":
        first = graph.ops[0]
        step = Graph(
            "quantize", dict(graph.tensors), [first], [first.inputs[0]], [first.outputs[0]]
        )
        fed = np.concatenate([run_graph(step, [x[None]])[first.outputs[0]] for x in inputs])
    against = {
        "keras": "Keras/QKeras",
        "tflite": "TFLite interpreter (reference kernels)",
        "onnx": "onnxruntime",
    }[kind]
    return original_outputs(model, kind, original_graph, fed), against


def paper_row(graph: Graph, model: str) -> tuple[str, dict[str, float]] | None:
    """The paper's Table 3 row of a zoo network (by graph name, else the model file's stem)."""
    from bnncube.zoo.networks import PAPER_TABLE3

    for key in (graph.name, Path(model).stem):
        if key in PAPER_TABLE3:
            return key, PAPER_TABLE3[key]
    return None


def validate_target(
    model: str,
    kind: str,
    graph: Graph,
    generated: Any,
    c_name: str,
    inputs: np.ndarray,
    workspace: Path,
    device: str = "emu:unicorn",
    expected_file: str | None = None,
    *,
    instruction_budget: int = DEFAULT_BUDGET,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    defines: tuple[str, ...] = (),
    layers: bool = True,
) -> dict[str, Any]:
    """Build the generated code for the Cortex-M7, run it on ``device``, compare; return the
    report dict (``--mode host``'s, plus a ``target`` object)."""
    from bnncube.converters.reference import run_graph
    from bnncube.generate import write_generated
    from bnncube.validate import dequantized, metrics

    serial = device.startswith("serial:")
    if device not in DEVICES and not serial:
        raise BnnError(
            f"option -d: unknown device {device!r}; one of {', '.join(DEVICES)}, serial:PORT[:BAUD]"
        )
    if serial:
        from bnncube.validation.serial_protocol import parse_device

        try:
            parse_device(device)
        except ValueError as e:
            raise BnnError(f"option -d: {e}") from None
    if not em.toolchain_available():
        raise BnnError(
            f"--mode target: {em.ARM_GCC} is not installed; install it with `make setup` or "
            "`sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi`"
        )
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnnError(f"option -w: cannot create {workspace}: {e.strerror}") from None
    folder = workspace / c_name
    build_dir = workspace / f"{c_name}_target"
    write_generated(generated, folder)
    unicorn = device == "emu:unicorn"
    try:
        build = build_target(folder, c_name, build_dir, layers=layers and unicorn, defines=defines)
    except BuildError as exc:
        raise ValidationFailed(
            f"target: the firmware does not build: {_build_error(exc)}"
        ) from None
    gen_report = generated.report
    if serial:
        run = run_serial(device, c_name, graph, inputs, timeout_s=timeout_s)
    elif unicorn:
        run = run_unicorn(
            build,
            graph,
            gen_report,
            inputs,
            instruction_budget=instruction_budget,
            timeout_s=timeout_s,
        )
    else:
        run = run_qemu(
            folder,
            c_name,
            graph,
            gen_report,
            inputs,
            build_dir,
            timeout_s=timeout_s,
            defines=defines,
        )

    out_name = graph.outputs[0]
    ref = np.stack([run_graph(graph, [x[None]])[out_name][0] for x in inputs])
    exact = bool(np.array_equal(ref, run.outputs))
    original, against = _original(model, kind, graph, inputs, expected_file)
    ours_f = dequantized(graph, out_name, run.outputs)
    ref_f = dequantized(graph, out_name, ref)

    usage = memory_usage(build.elf, run.stack_bytes)
    target: dict[str, Any] = {
        "device": device,
        "board": "stm32h743 (Cortex-M7)"
        if unicorn
        else "serial device; flash/RAM of the stm32h743 link"
        if serial
        else "mps2-an500 (Cortex-M7); flash/RAM of the stm32h743 link",
        "elf": str(build.elf),
    }
    if run.instructions:
        mean = float(np.mean(run.instructions))
        target["instructions"] = {"mean": mean, "per_inference": run.instructions}
        target["est_ms_480mhz"] = mean / CLOCK_HZ * 1e3
        target["est_ms_note"] = (
            "estimate: instructions / 480 MHz at 1 instruction per cycle; the Cortex-M7 is "
            "dual-issue with caches and wait states, so real cycles differ"
        )
    else:
        target["instructions"] = None
        target["est_ms_480mhz"] = None
    if run.firmware_instructions is not None:
        target["firmware_instructions"] = run.firmware_instructions
    target.update(usage)
    target["weights_bytes"] = int(generated.weights_bytes)
    target["layers"] = run.layers
    target.update(run.extra)
    paper = paper_row(graph, model)
    if paper is not None:
        target["paper_table3"] = {"network": paper[0], **paper[1]}

    report: dict[str, Any] = {
        "model": Path(model).name,
        "c_name": c_name,
        "mode": "target",
        "device": device,
        "original": against,
        "n_inputs": int(len(inputs)),
        "bit_exact": exact,
        "first_diverging_layer": None,
        "layers_differing": None,
        "metrics": {
            out_name: {
                "vs_original": metrics(ours_f, original.reshape(ours_f.shape)),
                "vs_reference": metrics(ours_f, ref_f),
            }
        },
        "activations_bytes": generated.activations_bytes,
        "weights_bytes": generated.weights_bytes,
        "target": target,
    }
    report["_arrays"] = {"outputs": run.outputs, "reference": ref, "original": original}
    return report


def _kb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.0f} KB"


def format_target_report(report: dict[str, Any]) -> str:
    """The host-mode text report plus the target section."""
    from bnncube.validate import format_validate_report

    text = format_validate_report(report)
    t = report.get("target")
    if not t:
        return text
    lines = ["", f"target    : {t['device']} ({t['board']})"]
    ins = t.get("instructions")
    if ins:
        lines.append(
            f"instructions per inference: {ins['mean']:,.0f} (exact; "
            + ", ".join(f"{v:,}" for v in ins["per_inference"][:8])
            + (" ..." if len(ins["per_inference"]) > 8 else "")
            + ")"
        )
        lines.append(
            f"est. time at 480 MHz: {t['est_ms_480mhz']:.1f} ms "
            "(ESTIMATE: 1 instruction per cycle, no caches/wait states)"
        )
    cyc = t.get("cycles")
    if cyc:
        lines.append(
            f"cycles per inference (device counter): {cyc['mean']:,.0f} ("
            + ", ".join(f"{v:,}" for v in cyc["per_inference"][:8])
            + ")"
        )
    if t.get("serial"):
        s = t["serial"]
        lines.append(f"serial: {s['port']} at {s['baud']} baud, {s['retries']} retries")
    if t.get("firmware_instructions") is not None:
        lines.append(f"instructions, whole firmware (QEMU plugin): {t['firmware_instructions']:,}")
    stack = t.get("stack_used_bytes")
    lines.append(
        f"flash: {t['flash_bytes']:,} B (.text+.rodata {t['text_rodata_bytes']:,}, "
        f".data {t['data_bytes']:,}; weights {t['weights_bytes']:,})"
    )
    lines.append(
        f"RAM  : {t['ram_bytes']:,} B (.data {t['data_bytes']:,}, .bss {t['bss_bytes']:,}, "
        f".arena {t['arena_bytes']:,}, stack used "
        + ("not measured" if stack is None else f"{stack:,}")
        + f" of {t['stack_reserved_bytes']:,} reserved)"
    )
    paper = t.get("paper_table3")
    if paper:
        ms = t.get("est_ms_480mhz")
        lines += [
            "",
            f"{'vs paper Table 3 (' + paper['network'] + ')':34s} {'bnncube':>12s} {'paper':>12s}",
            f"{'flash':34s} {_kb(t['flash_bytes']):>12s} {_kb(paper.get('flash_bytes')):>12s}",
            f"{'RAM':34s} {_kb(t['ram_bytes']):>12s} {_kb(paper.get('ram_bytes')):>12s}",
            f"{'inference (ms; ours an estimate)':34s} "
            f"{('-' if ms is None else f'{ms:.1f}'):>12s} "
            f"{('-' if 'inference_ms' not in paper else str(paper['inference_ms'])):>12s}",
        ]
    if t.get("layers"):
        lines += ["", f"{'id':>3s}  {'layer':28s} {'c_type':28s} {'instructions':>14s}"]
        for row in t["layers"]:
            lines.append(
                f"{row['id']:>3d}  {row['name'][:28]:28s} {row['c_type'][:28]:28s} "
                f"{row['instructions']:>14,}"
            )
        lines.append(
            f"     (per-layer counts from the observer build, input 0; overhead "
            f"{t.get('observer_overhead_instructions', 0):,} instructions in all)"
        )
    return text + "\n".join(lines) + "\n"


def write_target_reports(
    report: dict[str, Any], output: Path, c_name: str, save_csv: bool = False
) -> list[Path]:
    """NAME_validate_report.txt (with the target section) and .json (with ``target``)."""
    from bnncube.fsutil import write_text_files

    arrays = report.get("_arrays", {})
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    files = {
        output / f"{c_name}_validate_report.txt": format_target_report(public),
        output / f"{c_name}_validate_report.json": json.dumps(public, indent=2) + "\n",
    }
    if save_csv:
        for key in ("outputs", "reference", "original"):
            if key in arrays:
                rows = np.asarray(arrays[key]).reshape(len(arrays[key]), -1)
                lines = [",".join(repr(float(v)) for v in row) for row in rows]
                files[output / f"{c_name}_val_{key}.csv"] = "\n".join(lines) + "\n"
    write_text_files(files)
    return sorted(files)
