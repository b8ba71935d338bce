"""Footprint of the paper's three networks as `analyze` counts them, beside the paper's Table 3.

Builds each zoo network (untrained weights; sizes do not depend on training), analyzes it and
prints one table; writes the same figures to OUT/zoo_footprint.json. Not a test: the figures are
for people, and the targets of later issues are checked against them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="folder for the JSON results")
    args = parser.parse_args()

    from bnncube.analyze import analyze_graph
    from bnncube.cli import quiet_third_party
    from bnncube.converters.loader import load_model
    from bnncube.zoo.build import build
    from bnncube.zoo.networks import PAPER_TABLE3

    quiet_third_party()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for network, suffix in (("mnv2_fp", ".h5"), ("mnv2_i8", ".tflite"), ("hybrid", ".h5")):
            start = time.perf_counter()
            path = build(network, Path(tmp) / f"{network}{suffix}", log=lambda _: None)
            report = analyze_graph(load_model(path), network, path.name, suffix.lstrip("."))
            results[network] = {
                "macc": report["macc"],
                "weights_bytes": report["weights_bytes"],
                "activations_bytes": report["activations_bytes"],
                "by_precision": report["by_precision"],
                "paper": PAPER_TABLE3[network],
                "build_and_analyze_s": round(time.perf_counter() - start, 1),
            }
    header = (
        f"{'network':<9} {'MACC':>12} {'paper':>6} {'weights KiB':>12} {'paper flash':>12} "
        f"{'act. KiB':>9} {'paper RAM':>10} {'binary MACC':>12}"
    )
    print(header)
    print("-" * len(header))
    for network, r in results.items():
        paper = r["paper"]
        binary = r["by_precision"].get("binary", {}).get("macc", 0)
        print(
            f"{network:<9} {r['macc']:>12,} {paper['macc'] / 1e6:>5.0f}M "
            f"{r['weights_bytes'] / 1024:>12.1f} {paper['flash_bytes'] / 1024:>11.0f}K "
            f"{r['activations_bytes'] / 1024:>9.1f} {paper['ram_bytes'] / 1024:>9.0f}K "
            f"{100 * binary / r['macc']:>11.1f}%"
        )
    print(
        "ours: weights as deployed (binary bitpacked), activation peak from liveness; "
        "paper: X-CUBE-AI's flash/RAM of the whole network"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo_footprint.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'zoo_footprint.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
