"""Instructions per layer of the zoo networks' kernels on the emulated Cortex-M7.

Builds ``hybrid`` and ``mnv2_i8`` (untrained weights: the kernels' cost does not depend on the
weights' values beyond a few data-dependent branches), runs every layer through the C kernels in
Unicorn (``bnncube.validation.kernel_calls``) twice, with the Cortex-M7 DSP paths and with the
plain C paths (``BNN_FORCE_PLAIN_C``), checks both against the Python reference, and prints per
layer the executed instructions (exact) and instructions per MAC (per binary MAC for binary
convolutions). Writes OUT/kernels.json. Not a test: budgets live in tests/test_c_graphs.py and
tests/test_kernel_budgets.py, issue 8's targets in bnncube.validation.perf_targets.

Estimated milliseconds assume 480 MHz and one instruction per cycle: an estimate, not a
measurement (the Cortex-M7 is dual-issue; loads from flash and cache misses cost more).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bnncube.validation.perf_targets import HOT_LAYERS  # (network, layer) -> label

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

CLOCK_HZ = 480e6


def _run(graph: Any, backend: Any, x: Any) -> Any:
    import numpy as np

    from bnncube.converters.reference import run_graph
    from bnncube.validation.kernel_calls import run_graph_c

    run = run_graph_c(graph, backend, [x])
    ref = run_graph(graph, [x], outputs_only=False)
    bad = [n for n in ref if not np.array_equal(ref[n], run.values[n])]
    if bad:
        raise SystemExit(f"kernel outputs differ from the reference: {bad[:5]}")
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="folder for the JSON results")
    args = parser.parse_args()

    import numpy as np

    from bnncube.cli import quiet_third_party
    from bnncube.converters.loader import load_model
    from bnncube.runtime_c import SRC_DIR
    from bnncube.runtime_c.build import runtime_sources
    from bnncube.validation import emulator as em
    from bnncube.zoo.build import build

    quiet_third_party()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"clock_hz": CLOCK_HZ, "networks": {}, "hot_layers": []}
    with tempfile.TemporaryDirectory() as tmp:
        backends = {
            "m7": em.UnicornBackend(
                em.cross_compile(runtime_sources(), [SRC_DIR], Path(tmp) / "m7" / "rt.elf")
            ),
            "plain": em.UnicornBackend(
                em.cross_compile(
                    runtime_sources(),
                    [SRC_DIR],
                    Path(tmp) / "plain" / "rt.elf",
                    defines=("BNN_FORCE_PLAIN_C",),
                )
            ),
        }
        for network, suffix in (("hybrid", ".h5"), ("mnv2_i8", ".tflite")):
            model = Path(tmp) / f"{network}{suffix}"
            path = build(network, model, calib_count=8, log=lambda _: None)
            graph = load_model(path)
            t = graph.tensors[graph.inputs[0]]
            rng = np.random.default_rng(0)
            if t.dtype == "int8":
                x = rng.integers(-128, 128, t.shape).astype(np.int8)
            else:
                x = rng.uniform(-1, 1, t.shape).astype(np.float32)
            runs = {name: _run(graph, b, x) for name, b in backends.items()}
            layers = []
            for op in graph.ops:
                if op.name not in runs["m7"].instructions:
                    continue
                macs = runs["m7"].macs[op.name]
                m7 = runs["m7"].instructions[op.name]
                plain = runs["plain"].instructions[op.name]
                layers.append(
                    {
                        "name": op.name,
                        "op": op.type,
                        "macs": macs,
                        "instructions": m7,
                        "instructions_plain_c": plain,
                        "instructions_per_mac": m7 / macs if macs else None,
                        "instructions_per_mac_plain_c": plain / macs if macs else None,
                    }
                )
                label = HOT_LAYERS.get((network, op.name))
                if label:
                    results["hot_layers"].append(
                        {"network": network, "layer": op.name, "label": label, **layers[-1]}
                    )
            total = sum(r["instructions"] for r in layers)
            total_plain = sum(r["instructions_plain_c"] for r in layers)
            results["networks"][network] = {
                "instructions": total,
                "instructions_plain_c": total_plain,
                "est_ms_480mhz": total / CLOCK_HZ * 1e3,
                "macs": sum(r["macs"] for r in layers),
                "layers": layers,
            }
            _print_network(network, layers, total, total_plain)
    _print_hot(results["hot_layers"])
    path = out_dir / "kernels.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


def _print_network(network: str, layers: list[dict[str, Any]], total: int, plain: int) -> None:
    print(f"\n{network}: instructions on the emulated Cortex-M7 (exact), -O2")
    print(f"{'layer':28s} {'op':16s} {'MACs':>11s} {'M7 path':>12s} {'/MAC':>6s} {'plain C':>12s}")
    for r in layers:
        per = f"{r['instructions_per_mac']:.2f}" if r["macs"] else ""
        print(
            f"{r['name'][:28]:28s} {r['op']:16s} {r['macs']:>11,} {r['instructions']:>12,} "
            f"{per:>6s} {r['instructions_plain_c']:>12,}"
        )
    ms = total / CLOCK_HZ * 1e3
    print(
        f"{'total':28s} {'':16s} {'':>11s} {total:>12,} {'':>6s} {plain:>12,}"
        f"   (~{ms:.1f} ms at 480 MHz, 1 instruction/cycle: an estimate)"
    )


def _print_hot(rows: list[dict[str, Any]]) -> None:
    print("\nhot kernels: instructions per MAC (binary convs: per binary MAC)")
    print(f"{'kernel':34s} {'M7 path':>8s} {'plain C':>8s}")
    for r in rows:
        print(
            f"{r['label']:34s} {r['instructions_per_mac']:>8.2f} "
            f"{r['instructions_per_mac_plain_c']:>8.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
