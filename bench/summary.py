"""Issue 8's summary: the zoo networks on the emulated Cortex-M7 beside the paper and the targets.

For ``hybrid`` and ``mnv2_i8`` (untrained zoo weights, seed 0, as bench/kernels.py builds them):

* **target**: the generated C, cross-compiled for the STM32H743 and run in Unicorn exactly as
  ``bnncube validate --mode target`` does (:func:`bnncube.validation.target.validate_target`):
  executed instructions per inference (exact), flash and RAM of the production link
  (:func:`~bnncube.validation.target.memory_usage`);
* **kernels**: per layer instructions and instructions per MAC (per binary MAC for binary
  convolutions) from OUT/kernels.json, which bench/kernels.py writes (run it first);
* **paper**: Table 3's flash, RAM and milliseconds (``bnncube.zoo.networks.PAPER_TABLE3``);
* **targets**: issue 8's (``bnncube.validation.perf_targets``), with met / NOT MET;
* **host**: the generated C built for this machine (as ``validate --mode host`` builds it) timed
  against the TFLite interpreter (ai-edge-litert, one thread) on mnv2_i8's .tflite and against
  LCE's interpreter (one thread) on the hybrid's TFLite form, on the same inputs.

Prints one table and writes OUT/summary.json (docs/bench.md describes it) and, per network,
OUT/target_NETWORK.json (the target validation report: per-layer counts, memory sections).
Estimated milliseconds are instructions / 480 MHz at one instruction per cycle: an estimate.
A benchmark, not a test: timings on a shared machine are noisy and nothing here fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bnncube.errors import BnnError
from bnncube.validation.perf_targets import KERNEL_TARGETS, NETWORK_TARGETS, met

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SCHEMA_VERSION = 1
CLOCK_HZ = 480e6
NETWORKS = (("hybrid", ".h5"), ("mnv2_i8", ".tflite"))
SEED = 0  # the zoo build's seed, as bench/kernels.py
CALIB_COUNT = 8  # mnv2_i8's calibration images, as bench/kernels.py
FLASH_INCLUDES = "vector table + .text (code, .rodata: weights) + unwind tables + .data image"
RAM_INCLUDES = ".data + .bss + .arena (activations) + stack used (measured in the emulator)"


# --------------------------------------------------------------------------------------------
# pure parts: ratios, targets, the kernels list, the table
# --------------------------------------------------------------------------------------------


def est_ms(instructions: float) -> float:
    """Milliseconds at 480 MHz and one instruction per cycle (an estimate)."""
    return instructions / CLOCK_HZ * 1e3


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs``; None when either is missing or ``theirs`` is 0."""
    if ours is None or not theirs:
        return None
    return float(ours) / float(theirs)


def paper_figures(network: str) -> dict[str, float | None]:
    """Table 3's flash, RAM (bytes) and inference time (ms) of ``network``."""
    from bnncube.zoo.networks import PAPER_TABLE3

    row = PAPER_TABLE3[network]
    return {
        "flash_bytes": row.get("flash_bytes"),
        "ram_bytes": row.get("ram_bytes"),
        "ms": row.get("inference_ms"),
    }


def network_summary(
    network: str, instructions: int, flash_bytes: int, ram_bytes: int
) -> dict[str, Any]:
    """Ours, the paper's, the ratios (ours / paper) and issue 8's targets of one network."""
    ms = est_ms(instructions)
    paper = paper_figures(network)
    target = NETWORK_TARGETS[network]
    targets = {
        "flash_bytes": target.flash_bytes,
        "ram_bytes": target.ram_bytes,
        "instructions": target.instructions,
    }
    ours = {"flash_bytes": flash_bytes, "ram_bytes": ram_bytes, "instructions": instructions}
    return {
        "instructions": instructions,
        "flash_bytes": flash_bytes,
        "ram_bytes": ram_bytes,
        "est_ms": ms,
        "paper": paper,
        "ratios": {
            "flash_bytes": ratio(flash_bytes, paper["flash_bytes"]),
            "ram_bytes": ratio(ram_bytes, paper["ram_bytes"]),
            "ms": ratio(ms, paper["ms"]),
        },
        "targets": targets,
        "met": {key: met(ours[key], limit) for key, limit in targets.items()},
    }


def load_kernels(path: Path) -> dict[str, Any]:
    """bench/kernels.py's results; :class:`BnnError` when missing or not its JSON."""
    if not path.is_file():
        raise BnnError(f"{path}: no such file; run bench/kernels.py --out {path.parent} first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BnnError(f"{path}: not bench/kernels.py's JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("networks"), dict):
        raise BnnError(f"{path}: not bench/kernels.py's JSON (no 'networks' object)")
    return data


def kernel_rows(kernels: dict[str, Any], network: str) -> list[dict[str, Any]]:
    """The ``kernels`` list of one network: per layer name, op, instructions, MACs and
    instructions per MAC; hot layers also label, target and met."""
    net = kernels["networks"].get(network)
    if net is None:
        raise BnnError(f"kernels.json has no results for {network!r}; rerun bench/kernels.py")
    rows = []
    for layer in net.get("layers", []):
        try:
            row: dict[str, Any] = {
                "name": str(layer["name"]),
                "op": layer.get("op"),
                "instructions": int(layer["instructions"]),
                "macs": int(layer["macs"]),
                "instructions_per_mac": layer.get("instructions_per_mac"),
            }
        except (KeyError, TypeError, ValueError) as e:
            raise BnnError(f"kernels.json: a {network} layer lacks a field ({e})") from None
        if row["instructions_per_mac"] is None and row["macs"]:
            row["instructions_per_mac"] = row["instructions"] / row["macs"]
        target = KERNEL_TARGETS.get((network, row["name"]))
        if target is not None:
            row["label"] = target.label
            row["target"] = target.instructions_per_mac
            row["met"] = met(row["instructions_per_mac"], target.instructions_per_mac)
        rows.append(row)
    names = {r["name"] for r in rows}
    missing = [n for (net_name, n) in KERNEL_TARGETS if net_name == network and n not in names]
    if missing:
        raise BnnError(f"kernels.json: {network} has no layer(s) {', '.join(missing)}")
    return rows


def _met_word(value: bool | None) -> str:
    return "-" if value is None else "met" if value else "NOT MET"


def _kb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KB"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def format_table(summary: dict[str, Any]) -> str:
    """The printed summary: per network ours / paper / target, hot kernels, host timing."""
    lines = [
        "issue 8 summary: emulated Cortex-M7 (exact instructions; ms = instructions / 480 MHz, "
        "an estimate), KB = 1024 B",
        f"{'network':9s} {'figure':13s} {'ours':>12s} {'paper':>10s} {'ours/paper':>10s} "
        f"{'target':>10s} {'ours/target':>11s}  status",
    ]
    for network, n in summary["networks"].items():
        t, p, r, m = n["targets"], n["paper"], n["ratios"], n["met"]
        figures = [
            ("flash", _kb(n["flash_bytes"]), _kb(p["flash_bytes"]), r["flash_bytes"],
             _kb(t["flash_bytes"]), ratio(n["flash_bytes"], t["flash_bytes"]), m["flash_bytes"]),
            ("RAM", _kb(n["ram_bytes"]), _kb(p["ram_bytes"]), r["ram_bytes"],
             _kb(t["ram_bytes"]), ratio(n["ram_bytes"], t["ram_bytes"]), m["ram_bytes"]),
            ("instructions", f"{n['instructions'] / 1e6:.2f} M", "-", None,
             f"{t['instructions'] / 1e6:.1f} M", ratio(n["instructions"], t["instructions"]),
             m["instructions"]),
            ("est. ms", f"{n['est_ms']:.1f}", "-" if p["ms"] is None else f"{p['ms']:g}",
             r["ms"], f"{est_ms(t['instructions']):.1f}",
             ratio(n["est_ms"], est_ms(t["instructions"])), m["instructions"]),
        ]  # fmt: skip
        for i, (name, ours, paper, rp, target, rt, ok) in enumerate(figures):
            lines.append(
                f"{network if i == 0 else '':9s} {name:13s} {ours:>12s} {paper:>10s} "
                f"{_x(rp):>10s} {target:>10s} {_x(rt):>11s}  {_met_word(ok)}"
            )
    lines += [
        "",
        "hot kernels: instructions per MAC (binary convs: per binary MAC), per layer alone",
        f"{'network':9s} {'layer':12s} {'kernel':30s} {'MACs':>11s} {'instructions':>13s} "
        f"{'/MAC':>6s} {'target':>6s}  status",
    ]
    for network, n in summary["networks"].items():
        for k in n["kernels"]:
            if "target" not in k:
                continue
            per = k["instructions_per_mac"]
            lines.append(
                f"{network:9s} {k['name']:12s} {k['label']:30s} {k['macs']:>11,} "
                f"{k['instructions']:>13,} {'-' if per is None else f'{per:.2f}':>6s} "
                f"{k['target']:>6.2f}  {_met_word(k['met'])}"
            )
    host = summary.get("host") or {}
    if host.get("networks"):
        lines += [
            "",
            f"host ({host['inputs']} inputs, median ms per inference, one thread; "
            "theirs/ours > 1: ours is faster)",
            f"{'network':9s} {'theirs':42s} {'ours ms':>9s} {'theirs ms':>10s} "
            f"{'theirs/ours':>11s}  outputs",
        ]
        for network, h in host["networks"].items():
            ours_ms, theirs_ms = h["ours_ms"], h.get("theirs_ms")
            if theirs_ms is None:
                agree = f"not run: {h.get('error', '?')}"
            elif h.get("outputs_equal"):
                agree = "identical"
            else:
                agree = (
                    f"max |diff| {h['max_abs_diff']:.3g} of max |y| {h['max_abs_output']:.3g} "
                    f"({h['differing_fraction']:.0%} differ), cosine {h['cosine']:.3f}"
                )
            exact_ref = h.get("outputs_equal_tflite_reference_kernels")
            if exact_ref is not None:
                agree += "; vs TFLite reference kernels: " + (
                    "identical" if exact_ref else "DIFFERENT"
                )
            lines.append(
                f"{network:9s} {h['theirs'][:42]:42s} {ours_ms:>9.2f} "
                f"{'-' if theirs_ms is None else f'{theirs_ms:.2f}':>10s} "
                f"{_x(h.get('ratio_theirs_over_ours')):>11s}  {agree}"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------


def _median_ms(times: Sequence[float]) -> float:
    import numpy as np

    return float(np.median(np.asarray(times))) * 1e3


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _peer(network: str, model: Path, graph: Any, tmp: Path) -> tuple[str, Callable[[Any], Any]]:
    """The peer interpreter of ``network``: (its name, x -> float output of one input)."""
    import numpy as np

    if network == "mnv2_i8":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(model), num_threads=1)
        interp.allocate_tensors()
        (inp,) = interp.get_input_details()
        (out,) = interp.get_output_details()
        scale, zp = out.get("quantization", (0.0, 0))

        def run_tflite(x: Any) -> Any:
            interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
            interp.invoke()
            y = np.asarray(interp.get_tensor(out["index"]))[0]
            return (y.astype(np.float64) - zp) * scale if y.dtype != np.float32 and scale else y

        return "TFLite (ai-edge-litert, default: XNNPACK)", run_tflite
    import larq_compute_engine as lce

    from bnncube.converters.tflite_export import save_tflite
    from bnncube.validate import dequantized

    tflite = save_tflite(graph, tmp / f"{network}_lce.tflite")
    interp = lce.testing.Interpreter(tflite.read_bytes(), num_threads=1)
    out_name = graph.outputs[0]

    def run_lce(x: Any) -> Any:
        y = np.asarray(interp.predict(x[None]))
        return dequantized(graph, out_name, y)[0] if y.dtype != np.float32 else y[0]

    return f"LCE {lce.__version__} interpreter (TFLite form)", run_lce


def host_timing(
    network: str,
    model: Path,
    graph: Any,
    folder: Path,
    inputs: Any,
    tmp: Path,
    warmup: int,
) -> dict[str, Any]:
    """Our host C build against the peer interpreter, input by input, interleaved."""
    import numpy as np

    from bnncube.validate import HostNetwork, build_host_network, dequantized

    build_dir = tmp / f"{network}_host"
    build_dir.mkdir(parents=True, exist_ok=True)
    net = HostNetwork(build_host_network(folder, network, build_dir), folder, network, graph)
    out_name = graph.outputs[0]

    def ours(x: Any) -> Any:
        return dequantized(graph, out_name, net.run(x[None]).outputs)[0]

    row: dict[str, Any] = {"ours": "generated C, host gcc -O2 (validate --mode host build)"}
    try:
        row["theirs"], theirs = _peer(network, model, graph, tmp)
    except Exception as e:  # a missing or failing peer is reported, not fatal
        row["theirs"], theirs = "peer interpreter", None
        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    for i in range(warmup):
        ours(inputs[i % len(inputs)])
        if theirs is not None:
            theirs(inputs[i % len(inputs)])
    t_ours, t_theirs, y_ours, y_theirs = [], [], [], []
    for x in inputs:  # interleaved, so that load changes hit both
        dt, y = _timed(lambda x=x: ours(x))
        t_ours.append(dt)
        y_ours.append(np.asarray(y, np.float64))
        if theirs is not None:
            dt, y = _timed(lambda x=x: theirs(x))
            t_theirs.append(dt)
            y_theirs.append(np.asarray(y, np.float64).reshape(y_ours[-1].shape))
    row["ours_ms"] = _median_ms(t_ours)
    row["theirs_ms"] = _median_ms(t_theirs) if t_theirs else None
    row["ratio_theirs_over_ours"] = ratio(row["theirs_ms"], row["ours_ms"])
    if y_theirs:
        a, b = np.stack(y_ours), np.stack(y_theirs)
        row["outputs_equal"] = bool(np.array_equal(a, b))
        row["max_abs_diff"] = float(np.max(np.abs(a - b)))
        row["max_abs_output"] = float(np.max(np.abs(b)))
        row["differing_fraction"] = float(np.mean(a != b))
        a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
        norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
        row["cosine"] = float(np.mean(np.sum(a2 * b2, axis=1) / np.maximum(norms, 1e-30)))
    if network == "mnv2_i8":  # what ours is bit-exact with: TFLite's reference kernels
        from bnncube.validate import original_outputs

        ref = original_outputs(str(model), "tflite", graph, np.asarray(inputs))
        row["outputs_equal_tflite_reference_kernels"] = bool(
            np.array_equal(
                np.stack(y_ours).reshape(len(inputs), -1),
                np.asarray(ref, np.float64).reshape(len(inputs), -1),
            )
        )
    return row


def measure_network(
    network: str, suffix: str, tmp: Path, target_inputs: int, host_inputs: int, warmup: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(target figures, the target validation report, host timing) of one network."""
    from bnncube.converters.loader import load_model, model_type
    from bnncube.generate import GenerateOptions, generate_code
    from bnncube.validation.embeddings import model_inputs
    from bnncube.validation.target import validate_target
    from bnncube.zoo.build import build, generated_images

    model = build(
        network, tmp / f"{network}{suffix}", seed=SEED, calib_count=CALIB_COUNT, log=lambda _: None
    )
    kind = model_type(model)
    result = generate_code(load_model(model, kind), GenerateOptions(c_name=network), str(model))
    graph = result.graph
    images = generated_images(max(target_inputs, host_inputs), seed=SEED + 77)
    inputs = model_inputs(graph, images)
    workspace = tmp / "ws"
    report = validate_target(
        str(model), kind, graph, result, network, inputs[:target_inputs], workspace
    )
    target = report["target"]
    per_inference = [int(v) for v in target["instructions"]["per_inference"]]
    figures = {
        "instructions_per_inference": per_inference,
        "memory": {
            k: target[k]
            for k in (
                "text_rodata_bytes",
                "data_bytes",
                "bss_bytes",
                "arena_bytes",
                "stack_used_bytes",
                "stack_reserved_bytes",
                "weights_bytes",
            )
            if k in target
        },
        "bit_exact_vs_reference": bool(report["bit_exact"]),
        "target_inputs": target_inputs,
        **network_summary(network, max(per_inference), target["flash_bytes"], target["ram_bytes"]),
    }
    host = host_timing(
        network, model, graph, workspace / network, inputs[:host_inputs], tmp, warmup
    )
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    return figures, public, host


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="folder for the JSON results")
    parser.add_argument(
        "--kernels", default=None, help="bench/kernels.py's JSON (default: OUT/kernels.json)"
    )
    parser.add_argument("--target-inputs", type=int, default=2, help="inputs run in Unicorn")
    parser.add_argument("--host-inputs", type=int, default=20, help="inputs timed on the host")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    args = parser.parse_args(argv)
    if args.target_inputs < 1 or args.host_inputs < 1 or args.warmup < 0:
        raise BnnError("--target-inputs and --host-inputs must be >= 1, --warmup >= 0")

    from bnncube.cli import quiet_third_party

    quiet_third_party()
    out = Path(args.out)
    kernels = load_kernels(Path(args.kernels) if args.kernels else out / "kernels.json")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "clock_hz": CLOCK_HZ,
        "notes": {
            "instructions": "executed per inference on the emulated Cortex-M7 (Unicorn), exact; "
            "the largest over the target inputs",
            "est_ms": "instructions / 480 MHz at 1 instruction per cycle: an estimate",
            "flash_bytes": FLASH_INCLUDES,
            "ram_bytes": RAM_INCLUDES,
            "ratios": "ours / paper",
            "kernels": "each layer alone through its C kernel (bench/kernels.py); "
            "instructions_per_mac per binary MAC for binary convolutions",
            "host": "median wall-clock ms per inference, one thread, same inputs, interleaved; "
            "ratio_theirs_over_ours > 1: ours is faster",
        },
        "networks": {},
        "host": {"inputs": args.host_inputs, "warmup": args.warmup, "networks": {}},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bnncube_bench_") as tmp:
        for network, suffix in NETWORKS:
            figures, report, host = measure_network(
                network, suffix, Path(tmp), args.target_inputs, args.host_inputs, args.warmup
            )
            figures["kernels"] = kernel_rows(kernels, network)
            summary["networks"][network] = figures
            summary["host"]["networks"][network] = host
            (out / f"target_{network}.json").write_text(json.dumps(report, indent=2) + "\n")
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(format_table(summary), end="")
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {path} ({summary['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BnnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
