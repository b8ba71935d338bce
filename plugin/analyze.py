"""`bnncube analyze`: per-layer MACC, weights and activation figures of a model.

The figures come from :mod:`bnncube.converters.figures` on the deployed IR; this module only
assembles them into the report (text and JSON) and compares totals with the paper's Table 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnncube import __version__
from bnncube.converters.figures import activation_liveness, layer_figures
from bnncube.converters.ir import Graph, Tensor
from bnncube.fsutil import write_text_files

# Why our totals can differ from the paper's by more than 15% (docs/networks.md has the numbers).
RAM_NOTE = (
    "ours is the peak of live activation tensors (no in-place reuse, no stack, no runtime "
    "buffers); the paper gives one RAM figure per network and does not break it down"
)
FLASH_NOTE = (
    "ours counts weights only, as deployed; the paper gives one flash figure per network "
    "and does not break it down"
)
PAPER_TOLERANCE = 0.15


def _tensor_info(tensor: Tensor) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": tensor.name,
        "shape": list(tensor.shape),
        "dtype": tensor.dtype,
        "scale": None,
        "zero_point": None,
    }
    if tensor.quant is not None and not tensor.quant.is_per_channel:
        info["scale"] = float(tensor.quant.scale[0])
        info["zero_point"] = int(tensor.quant.zero_point[0])
    return info


def paper_comparison(network: str, totals: dict[str, int]) -> list[dict[str, Any]]:
    from bnncube.zoo.networks import PAPER_TABLE3

    paper = PAPER_TABLE3.get(network)
    if paper is None:
        return []
    ours = {
        "macc": totals["macc"],
        "flash_bytes": totals["weights_bytes"],
        "ram_bytes": totals["activations_bytes"],
    }
    rows = []
    for key in ("macc", "flash_bytes", "ram_bytes"):
        diff = (ours[key] - paper[key]) / paper[key]
        row: dict[str, Any] = {
            "figure": key,
            "paper": int(paper[key]),
            "ours": ours[key],
            "diff_pct": round(100 * diff, 1),
        }
        if abs(diff) > PAPER_TOLERANCE:
            if key == "ram_bytes":
                row["note"] = RAM_NOTE
            elif key == "flash_bytes":
                row["note"] = FLASH_NOTE
                if totals.get("weights_bytes_binary_as_int8") != totals["weights_bytes"]:
                    unpacked = totals["weights_bytes_binary_as_int8"]
                    row["note"] += (
                        f"; with one byte per binary weight ours would be {unpacked:,} B "
                        f"({100 * (unpacked - paper[key]) / paper[key]:+.1f}%)"
                    )
            else:
                row["note"] = "see docs/networks.md"
        rows.append(row)
    return rows


def analyze_graph(graph: Graph, c_name: str, model_path: str, model_type: str) -> dict[str, Any]:
    rows = layer_figures(graph)
    liveness = activation_liveness(graph)
    totals = {
        "macc": sum(r.macc for r in rows),
        "weights_bytes": sum(r.weights_bytes for r in rows),
        "activations_bytes": liveness.peak_bytes,
    }
    # what the weights would take if binary filters were stored one byte per weight, the
    # usual layout of tools without bitpacking: explains most of the gap to the paper's flash
    binary_unpacked = sum(
        graph.tensors[op.inputs[1]].num_elements - graph.tensors[op.inputs[1]].nbytes
        for op in graph.ops
        if op.type == "BinaryConv2D"
    )
    totals["weights_bytes_binary_as_int8"] = totals["weights_bytes"] + binary_unpacked
    by_precision: dict[str, dict[str, int]] = {}
    for r in rows:
        entry = by_precision.setdefault(r.precision, {"layers": 0, "macc": 0, "weights_bytes": 0})
        entry["layers"] += 1
        entry["macc"] += r.macc
        entry["weights_bytes"] += r.weights_bytes
    return {
        "tool": f"bnncube {__version__}",
        "command": "analyze",
        "model": Path(model_path).name,  # not the path: reports are the same from any folder
        "model_type": model_type,
        "network": graph.name,
        "c_name": c_name,
        "inputs": [_tensor_info(graph.tensors[n]) for n in graph.inputs],
        "outputs": [_tensor_info(graph.tensors[n]) for n in graph.outputs],
        **totals,
        "params": sum(r.params for r in rows),
        "activations_peak_layer": rows[liveness.peak_op].name if rows else None,
        "by_precision": by_precision,
        "layers": [r.as_dict() for r in rows],
        "paper": paper_comparison(graph.name, totals),
        "macc_convention": "one multiply-accumulate = 1 MACC, binary (XNOR-popcount) included",
    }


def _kib(n: int) -> str:
    return f"{n:,} B ({n / 1024:.1f} KiB)"


def _fmt_io(info: dict[str, Any]) -> str:
    shape = "x".join(str(d) for d in info["shape"])
    text = f"{info['name']:<20} {shape:<14} {info['dtype']}"
    if info["scale"] is not None:
        text += f"  scale={info['scale']:.6g} zero_point={info['zero_point']}"
    return text


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"bnncube analyze report ({report['tool']})",
        "",
        f"model       : {report['model']} ({report['model_type']})",
        f"network     : {report['network']}",
        f"c_name      : {report['c_name']}",
        "",
    ]
    lines += [f"input  {i}   : " + _fmt_io(t) for i, t in enumerate(report["inputs"], 1)]
    lines += [f"output {i}   : " + _fmt_io(t) for i, t in enumerate(report["outputs"], 1)]
    header = (
        f"{'id':>3}  {'layer':<20} {'op':<16} {'precision':<9} {'oshape':<14} "
        f"{'params':>8} {'macc':>11} {'rom':>9}"
    )
    lines += ["", header, "-" * len(header)]
    for r in report["layers"]:
        shape = "x".join(str(d) for d in r["output_shape"][1:] or r["output_shape"])
        lines.append(
            f"{r['id']:>3}  {r['name'][:20]:<20} {r['op']:<16} {r['precision']:<9} {shape:<14} "
            f"{r['params']:>8,} {r['macc']:>11,} {r['weights_bytes']:>9,}"
        )
    lines += [
        "-" * len(header),
        "",
        f"macc             : {report['macc']:,}",
        f"weights (ro)     : {_kib(report['weights_bytes'])}",
        f"activations (rw) : {_kib(report['activations_bytes'])}  "
        f"(peak of live tensors, at {report['activations_peak_layer']})",
        f"params           : {report['params']:,}",
        "",
        "by precision     : "
        + "; ".join(
            f"{p}: {v['layers']} layers, {100 * v['macc'] / max(report['macc'], 1):.1f}% of "
            f"macc, {v['weights_bytes']:,} B"
            for p, v in sorted(report["by_precision"].items())
        ),
        f"MACC convention  : {report['macc_convention']}",
    ]
    if report["paper"]:
        lines += ["", f"paper (Table 3, {report['network']}):  ours vs paper"]
        for row in report["paper"]:
            text = (
                f"  {row['figure']:<12} {row['ours']:>12,} vs {row['paper']:>12,}  "
                f"({row['diff_pct']:+.1f}%)"
            )
            if "note" in row:
                text += f"  -- {row['note']}"
            lines.append(text)
        lines.append(
            "  (ours: flash = weights as deployed, RAM = activation peak; the paper's "
            "figures are for the whole deployed network)"
        )
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: str | Path, c_name: str) -> list[Path]:
    import json

    out_dir = Path(out_dir)
    files = {
        out_dir / f"{c_name}_analyze_report.txt": format_report(report),
        out_dir / f"{c_name}_analyze_report.json": json.dumps(report, indent=2) + "\n",
    }
    write_text_files(files)
    return list(files)
