"""`bnncube compare`: the float, int8 and hybrid face-embedding networks side by side.

For each model given (``float``: MobileNetV2 in Keras, ``int8``: its full-integer TFLite form,
``hybrid``: the QKeras binary/8-bit net) the report holds

1. LFW-protocol verification figures on the given images and pairs (10-fold accuracy, AUC,
   TAR@FAR=1e-3, EER; :mod:`bnncube.validation.lfw`);
2. the ROC of every model on one plot (linear and logarithmic FAR axes);
3. the agreement of the deployed embeddings with their float counterparts (per-image cosine:
   int8 deployed vs the float model in Keras, hybrid deployed vs the hybrid in QKeras);
4. bit-exactness of the generated C (host build vs the reference interpreter; the emulated
   Cortex-M7 vs the host build);
5. flash, RAM, MACC, instructions per inference and the estimated time at 480 MHz beside the
   paper's Table 3.

It reuses :mod:`bnncube.validation.embeddings` (images, embeddings), ``validate_host`` (host
bit-exactness), ``validate_target`` (target build, Unicorn, ``memory_usage``) and
``analyze_graph``. The JSON keys are documented in docs/compare.md.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.errors import BnnError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

SCHEMA_VERSION = 1
MODEL_KEYS = ("float", "int8", "hybrid")
NETWORKS = {"float": "mnv2_fp", "int8": "mnv2_i8", "hybrid": "hybrid"}
OPTION = {"float": "--float", "int8": "--int8", "hybrid": "--hybrid"}
# model types (by suffix) each model may be; the IR then decides whether it is the right kind
MODEL_TYPES = {"float": ("keras",), "int8": ("tflite", "keras"), "hybrid": ("keras",)}
SUFFIXES = {"keras": (".h5", ".keras"), "tflite": (".tflite",)}
WHAT = {
    "float": "the float MobileNetV2",
    "int8": "the int8 quantized MobileNetV2",
    "hybrid": "the QKeras hybrid network",
}
DEFAULT_ENGINES = {"float": "keras", "int8": "host-c", "hybrid": "host-c"}
ALLOWED_ENGINES = {"float": ("keras",), "int8": ("host-c", "tflite"), "hybrid": ("host-c", "keras")}
ENGINE_OPTION = {"float": "engines['float']", "int8": "--engine-int8", "hybrid": "--engine-hybrid"}
HOST_SAMPLE = 16  # images compared host C vs reference (at least --target-count)
CLOCK_HZ = 480e6
FAR = 1e-3
ROC_MAX_POINTS = 1000
REPORT_FILES = ("compare_report.html", "compare_report.md", "compare_report.json", "roc.png")
SYNTHETIC_NAME = re.compile(r"^Person_\d{4}$")  # bnncube.zoo.synthetic_faces.identity_name
EST_MS_NOTE = (
    "estimate: instructions per inference / 480 MHz at 1 instruction per cycle; the Cortex-M7 "
    "is dual-issue with caches and wait states, so real cycles differ"
)
SYNTHETIC_NOTE = (
    "the images are synthetic faces (bnncube.zoo.synthetic_faces): accuracy on them is not an "
    "LFW figure and says nothing about face recognition on real faces"
)
LABELS = {"float": "float (mnv2_fp)", "int8": "int8 (mnv2_i8)", "hybrid": "hybrid (binary/8-bit)"}

Log = Callable[[str], Any]


# --------------------------------------------------------------------------------------------
# checking what the user gave
# --------------------------------------------------------------------------------------------


def _graph_kind(graph: Any) -> str:
    """``binary`` (binary ops), ``int8`` (int8 tensors) or ``float``."""
    if any(op.type in ("BinaryConv2D", "Bitpack") for op in graph.ops):
        return "binary"
    if any(t.dtype in ("int8", "uint8") for t in graph.tensors.values()):
        return "int8"
    return "float"


def _check_model(key: str, path: Path) -> tuple[Any, str]:
    """(IR, model type) of model ``key``; BnnError naming the option when it is the wrong kind."""
    from bnncube.converters.loader import load_model

    option = OPTION[key]
    if not path.exists():
        raise BnnError(f"option {option}: {path}: no such file")
    if not path.is_file():
        raise BnnError(f"option {option}: {path}: not a file")
    suffixes = [x for kind in MODEL_TYPES[key] for x in SUFFIXES[kind]]
    kind = next((k for k in MODEL_TYPES[key] if path.suffix.lower() in SUFFIXES[k]), None)
    if kind is None:
        raise BnnError(
            f"option {option}: {path}: expected {WHAT[key]} as a {', '.join(suffixes)} file"
        )
    try:
        graph = load_model(path, kind)
    except BnnError as e:
        raise BnnError(f"option {option}: {e}") from None
    except Exception as e:  # a damaged file: h5py, flatbuffers... raise their own types
        raise BnnError(
            f"option {option}: {path}: cannot read it as a {kind} model ({type(e).__name__})"
        ) from None
    found = _graph_kind(graph)
    want = {"float": "float", "int8": "int8", "hybrid": "binary"}[key]
    if found != want:
        what = {
            "float": "has no int8 or binary layers (a float Keras model)",
            "int8": "has int8 layers and no binary ones (a full-integer TFLite model)",
            "hybrid": "has binary layers (a QKeras binary/8-bit model)",
        }[key]
        kinds = {"float": "a float model", "int8": "an int8 model", "binary": "a binary model"}
        raise BnnError(
            f"option {option}: {path} is {kinds[found]}; {option} needs a model that {what}"
        )
    return graph, kind


def _check_output(output: Path) -> None:
    """The output folder may be new, empty, or hold a previous compare report (it is replaced)."""
    if output.exists() and not output.is_dir():
        raise BnnError(f"option -o: {output} exists and is not a folder")
    if output.is_dir():
        entries = list(output.iterdir())
        if entries and not (output / "compare_report.json").is_file():
            raise BnnError(
                f"option -o: {output} is a non-empty folder without compare_report.json; "
                "give a new or empty folder (a previous compare report folder is replaced)"
            )


def _check_engines(models: dict[str, Path], engines: dict[str, str] | None) -> dict[str, str]:
    chosen = dict(DEFAULT_ENGINES)
    for key, engine in (engines or {}).items():
        if key not in ALLOWED_ENGINES:
            raise BnnError(f"engines: unknown model {key!r}; one of {', '.join(MODEL_KEYS)}")
        if engine not in ALLOWED_ENGINES[key]:
            raise BnnError(
                f"option {ENGINE_OPTION[key]}: {engine!r} is not one of "
                f"{', '.join(ALLOWED_ENGINES[key])}"
            )
        chosen[key] = engine
    return {k: chosen[k] for k in MODEL_KEYS if k in models}


def check_inputs(
    models: dict[str, Path],
    data: Path,
    pairs: Path,
    output: Path,
    engines: dict[str, str] | None,
    target_count: int,
) -> tuple[dict[str, Any], dict[str, str], list[Any]]:
    """Every check on the user's inputs, before any work: ({key: (IR, model type)}, engines,
    pairs)."""
    from bnncube.zoo.synthetic_faces import read_pairs

    if not models:
        raise BnnError("no model given: pass at least one of --float, --int8, --hybrid")
    for key in models:
        if key not in MODEL_KEYS:
            raise BnnError(f"models: unknown key {key!r}; one of {', '.join(MODEL_KEYS)}")
    if target_count < 0:
        raise BnnError(f"option --target-count: {target_count} is negative")
    chosen = _check_engines(models, engines)
    data, pairs = Path(data), Path(pairs)
    if not data.is_dir():
        raise BnnError(
            f"option --data: {data}: no such folder (LFW layout: DIR/Name/Name_0001.jpg)"
        )
    if not pairs.is_file():
        raise BnnError(f"option --pairs: {pairs}: no such file (LFW pairs.txt format)")
    try:
        pair_list = read_pairs(pairs)
    except BnnError as e:
        raise BnnError(f"option --pairs: {e}") from None
    _check_output(Path(output))
    graphs = {key: _check_model(key, Path(models[key])) for key in MODEL_KEYS if key in models}
    return graphs, chosen, pair_list


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b`` (1.0 for two zero rows, 0.0 for
    one)."""
    x = np.asarray(a, np.float64).reshape(len(a), -1)
    y = np.asarray(b, np.float64).reshape(len(b), -1)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    dots = np.einsum("ij,ij->i", x, y)
    both_zero = (nx == 0) & (ny == 0)
    denom = np.where(nx * ny > 0, nx * ny, 1.0)
    return np.where(both_zero, 1.0, np.where(nx * ny > 0, dots / denom, 0.0))


def agreement_stats(cos: np.ndarray) -> dict[str, float | int]:
    """mean, min, max and percentiles (1, 5, 50) of per-image cosines."""
    c = np.asarray(cos, np.float64)
    return {
        "n_images": int(c.size),
        "mean": float(np.mean(c)),
        "min": float(np.min(c)),
        "p01": float(np.percentile(c, 1)),
        "p05": float(np.percentile(c, 5)),
        "p50": float(np.percentile(c, 50)),
        "max": float(np.max(c)),
    }


def _records(pair_list: list[Any], pair_index: list[tuple[int | None, int | None]]) -> list[Any]:
    return [
        (i, j, p.name1 == p.name2, p.fold) for p, (i, j) in zip(pair_list, pair_index, strict=True)
    ]


def _check_evaluable(records: list[Any], data: Path, pairs: Path) -> None:
    """The protocol needs pairs with both images in two folds or more, matched and mismatched."""
    from bnncube.validation.embeddings import pair_coverage

    n, folds, both = pair_coverage(records)
    if n == 0:
        raise BnnError(
            f"option --data: {data}: none of the pairs of {pairs} has both images there "
            "(expected DIR/Name/Name_0001.jpg)"
        )
    if folds < 2 or not both:
        raise BnnError(
            f"option --pairs: {pairs}: {n} pairs with both images under {data}, in "
            f"{folds} fold(s), {'both kinds' if both else 'all of one kind'}; "
            "the protocol needs two folds or more and matched and mismatched pairs"
        )


def _scores(emb: np.ndarray, flip: np.ndarray | None, records: list[Any]) -> tuple[Any, Any]:
    """Scores and labels of the pairs lfw.evaluate scores (both images present, finite)."""
    from bnncube.validation import lfw

    e = np.asarray(emb, np.float64)
    if flip is not None:
        e = e + np.asarray(flip, np.float64)
    valid = np.all(np.isfinite(e), axis=1)
    e = lfw.normalize(np.where(valid[:, None], e, 0.0))
    p = lfw.pairs_from_records(records)
    n = len(e)

    def present(ix: np.ndarray) -> np.ndarray:
        inside = (ix >= 0) & (ix < n)
        ok = inside.copy()
        ok[inside] = valid[ix[inside]]
        return ok

    ok = present(p.idx_a) & present(p.idx_b)
    return lfw.pair_scores(e[p.idx_a[ok]], e[p.idx_b[ok]]), p.same[ok]


def _thin(fpr: np.ndarray, tpr: np.ndarray) -> dict[str, list[float]]:
    if len(fpr) > ROC_MAX_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_MAX_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def lfw_figures(
    emb: np.ndarray, flip: np.ndarray | None, records: list[Any]
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """(the report's ``lfw`` object, the ROC points) of one model's embeddings."""
    from bnncube.validation import lfw

    try:
        full = lfw.evaluate(emb, records, flip_embeddings=flip, far=FAR)
        scores, same = _scores(emb, flip, records)
        fpr, tpr, _ = lfw.roc(scores, same)
    except ValueError as e:
        raise BnnError(f"option --pairs: cannot evaluate these pairs: {e}") from None
    figures = {
        "accuracy_mean": full["accuracy_mean"],
        "accuracy_std": full["accuracy_std"],
        "accuracy_std_kind": full["accuracy_std_kind"],
        "auc": full["auc"],
        "eer": full["eer"],
        "tar_at_far_1e-3": full["tar_at_far"],
        "tar_at_far_underresolved": full["tar_at_far_underresolved"],
        "tar_at_far_false_accepts": full["tar_at_far_false_accepts"],
        "n_pairs": full["n_pairs"],
        "n_evaluated": full["n_evaluated"],
        "n_skipped": full["n_missing"],
        "n_folds": len(full["folds"]),
        "fold_accuracies": full["fold_accuracies"],
        "fold_thresholds": full["fold_thresholds"],
        "flip": full["flip"],
    }
    return figures, _thin(fpr, tpr)


# --------------------------------------------------------------------------------------------
# generated C: bit-exactness and target figures
# --------------------------------------------------------------------------------------------


def deployed_checks(
    key: str,
    model: Path,
    kind: str,
    graph: Any,
    images: np.ndarray,
    workspace: Path,
    target_count: int,
    log: Log,
    deployed: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Host C vs reference on a sample, emulated target vs host C; (bit_exact, target) objects.

    ``deployed``: the host-c embeddings of ``images``, checked equal to the host build's outputs
    on the sample (``host_sample_equals_embeddings``)."""
    from bnncube.generate import GenerateOptions, generate_code
    from bnncube.validate import dequantized, validate_host
    from bnncube.validation.embeddings import model_inputs

    c_name = NETWORKS[key]
    # as embed's host-c engine generates it (force: report a network that does not fit too)
    generated = generate_code(graph, GenerateOptions(c_name=c_name, force=True), str(model))
    g = generated.graph
    n_host = min(len(images), max(HOST_SAMPLE, target_count))
    sample = model_inputs(g, images[:n_host])
    log(f"  {key}: generated C on the host vs the reference, {n_host} images")
    host = validate_host(str(model), kind, g, generated, c_name, sample, False, workspace)
    host_out = host["_arrays"]["outputs"]
    out_name = g.outputs[0]
    same_as_embeddings = None
    if deployed is not None:  # the embeddings evaluated came from this very code
        host_f = dequantized(g, out_name, host_out).reshape(n_host, -1).astype(np.float32)
        same_as_embeddings = bool(np.array_equal(host_f, deployed[:n_host]))
    bit_exact: dict[str, Any] = {
        "host_vs_reference": bool(host["bit_exact"]),
        "n_host": int(n_host),
        "host_sample_equals_embeddings": same_as_embeddings,
        "host_first_diverging_layer": host["first_diverging_layer"],
        "host_vs_original_cos": host["metrics"][out_name]["vs_original"]["cos"],
        "target_vs_host": None,
        "target_vs_reference": None,
        "n_target": 0,
        "device": None,
    }
    target: dict[str, Any] = {"measured": False, "reason": None}
    n_target = min(target_count, len(images))
    if n_target == 0:
        target["reason"] = "not run (--target-count 0)"
        return bit_exact, target
    from bnncube.validation import emulator as em

    if not em.toolchain_available():
        target["reason"] = f"not run: {em.ARM_GCC} is not installed (`make setup`)"
        return bit_exact, target
    from bnncube.validation.target import validate_target

    log(f"  {key}: emulated Cortex-M7 (Unicorn), {n_target} images")
    rep = validate_target(
        str(model), kind, g, generated, c_name, sample[:n_target], workspace, layers=False
    )
    t = rep["target"]
    target_out = rep["_arrays"]["outputs"]
    bit_exact.update(
        target_vs_host=bool(np.array_equal(target_out, host_out[:n_target])),
        target_vs_reference=bool(rep["bit_exact"]),
        n_target=int(n_target),
        device=t["device"],
    )
    counts = [int(c) for c in t["instructions"]["per_inference"]]
    target.update(
        measured=True,
        reason=None,
        device=t["device"],
        board=t["board"],
        elf=t["elf"],
        flash_bytes=int(t["flash_bytes"]),
        ram_bytes=int(t["ram_bytes"]),
        text_rodata_bytes=int(t["text_rodata_bytes"]),
        data_bytes=int(t["data_bytes"]),
        bss_bytes=int(t["bss_bytes"]),
        arena_bytes=int(t["arena_bytes"]),
        stack_used_bytes=t.get("stack_used_bytes"),
        weights_bytes=int(generated.weights_bytes),
        activations_bytes=int(generated.activations_bytes),
        instructions_per_inference=max(counts),
        instructions_mean=float(np.mean(counts)),
        instructions_all=counts,
        est_ms_480mhz=max(counts) / CLOCK_HZ * 1e3,
        est_ms_note=EST_MS_NOTE,
    )
    return bit_exact, target


def footprint(
    key: str, model: Path, kind: str, graph: Any, target: dict[str, Any] | None
) -> dict[str, Any]:
    """Flash/RAM/MACC/instructions of one model beside the paper's Table 3, with ratios."""
    from bnncube.analyze import analyze_graph
    from bnncube.zoo.networks import PAPER_TABLE3

    network = NETWORKS[key]
    a = analyze_graph(graph, network, str(model), kind)
    fp: dict[str, Any] = {
        "deployable": key != "float",
        "macc": int(a["macc"]),
        "analyze_weights_bytes": int(a["weights_bytes"]),
        "analyze_activations_bytes": int(a["activations_bytes"]),
        "flash_bytes": None,
        "ram_bytes": None,
        "source": None,
        "instructions_per_inference": None,
        "est_ms_480mhz": None,
    }
    if key == "float":
        fp.update(
            flash_bytes=int(a["weights_bytes"]),
            ram_bytes=int(a["activations_bytes"]),
            source="analyze: float32 weights and the activation peak; not deployable (the C "
            "runtime is int8/binary), like the paper's 'does not fit'",
        )
    elif target and target.get("measured"):
        fp.update(
            flash_bytes=target["flash_bytes"],
            ram_bytes=target["ram_bytes"],
            source="STM32H743 link of the generated C (memory_usage of the ELF) and Unicorn",
            instructions_per_inference=target["instructions_per_inference"],
            est_ms_480mhz=target["est_ms_480mhz"],
        )
    else:
        fp["source"] = "target " + ((target or {}).get("reason") or "not measured")
    paper = dict(PAPER_TABLE3.get(network, {}))
    fp["paper"] = {k: (float(v) if k == "inference_ms" else int(v)) for k, v in paper.items()}

    def ratio(ours: float | None, theirs: float | None) -> float | None:
        if ours is None or not theirs:
            return None
        return float(ours) / float(theirs)

    fp["ratio_to_paper"] = {
        "flash": ratio(fp["flash_bytes"], paper.get("flash_bytes")),
        "ram": ratio(fp["ram_bytes"], paper.get("ram_bytes")),
        "macc": ratio(fp["macc"], paper.get("macc")),
        "ms": ratio(fp["est_ms_480mhz"], paper.get("inference_ms")),
    }
    return fp


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def data_summary(
    data: Path, pairs: Path, pair_list: list[Any], rel_paths: list[str], missing: list[str]
) -> dict[str, Any]:
    names = {p.name1 for p in pair_list} | {p.name2 for p in pair_list}
    folders = [d.name for d in data.iterdir() if d.is_dir()]
    synthetic = bool(names) and all(SYNTHETIC_NAME.match(n) for n in names)
    return {
        "path": str(data),
        "pairs_file": str(pairs),
        "n_identities": len(folders),
        "n_identities_in_pairs": len(names),
        "n_images": len(rel_paths),
        "n_images_missing": len(missing),
        "missing_images": list(missing[:20]),
        "n_pairs": len(pair_list),
        "n_folds": len({p.fold for p in pair_list}),
        "synthetic": synthetic,
        "note": SYNTHETIC_NOTE if synthetic else None,
    }


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------


def compare(
    models: dict[str, Path],
    data: Path,
    pairs: Path,
    output: Path,
    *,
    flip: bool = False,
    engines: dict[str, str] | None = None,
    target_count: int = 4,
    workspace: Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Compare the models (keys ``float``, ``int8``, ``hybrid``) on ``data``/``pairs``; write
    OUTDIR/compare_report.{html,md,json} and roc.png atomically; return the JSON dict."""
    from bnncube import __version__

    models = {k: Path(v) for k, v in models.items()}
    data, pairs, output = Path(data), Path(pairs), Path(output)
    from bnncube.converters.loader import reading_each_file_once

    with reading_each_file_once():
        graphs, chosen, pair_list = check_inputs(models, data, pairs, output, engines, target_count)
        from bnncube.validation.embeddings import embed, load_images, pair_images

        rel_paths, pair_index, missing = pair_images(data, pair_list)
        records = _records(pair_list, pair_index)
        _check_evaluable(records, data, pairs)
        log(f"compare: {len(rel_paths)} images, {len(pair_list)} pairs from {data}")
        images = np.asarray(load_images(data, rel_paths), np.float32)
        flipped = np.ascontiguousarray(images[:, :, ::-1, :]) if flip else None

        with tempfile.TemporaryDirectory(prefix="bnncube_compare_") as tmp:
            ws = Path(workspace) if workspace is not None else Path(tmp)
            report_models: dict[str, Any] = {}
            embeddings: dict[str, np.ndarray] = {}
            for key in MODEL_KEYS:
                if key not in models:
                    continue
                engine, model = chosen[key], models[key]
                graph, kind = graphs[key]
                log(f"{key}: {model.name} ({NETWORKS[key]}), embeddings with {engine}")
                kws = ws / key
                emb = np.asarray(
                    embed(
                        model,
                        engine,
                        images,
                        workspace=kws / "embed",
                        c_name=NETWORKS[key],
                        log=log,
                    ),
                    np.float32,
                )
                emb_flip = None
                if flipped is not None:
                    emb_flip = np.asarray(
                        embed(
                            model,
                            engine,
                            flipped,
                            workspace=kws / "embed",
                            c_name=NETWORKS[key],
                            log=log,
                        ),
                        np.float32,
                    )
                embeddings[key] = emb
                lfw_fig, roc_points = lfw_figures(emb, emb_flip, records)
                entry: dict[str, Any] = {
                    "label": LABELS[key],
                    "network": NETWORKS[key],
                    "model": str(model),
                    "model_type": kind,
                    "engine": engine,
                    "embedding_dim": int(emb.shape[1]),
                    "lfw": lfw_fig,
                    "roc": roc_points,
                    "agreement": None,
                    "bit_exact": None,
                    "target": None,
                }
                if key == "hybrid":
                    if engine == "keras":
                        entry["agreement"] = {
                            "against": None,
                            "reason": "the hybrid ran in QKeras (--engine-hybrid keras): no "
                            "deployed embedding to compare",
                        }
                    else:
                        log("hybrid: QKeras embeddings (the float simulation) for the agreement")
                        ref = embed(model, "keras", images, workspace=kws / "embed", log=log)
                        entry["agreement"] = {
                            "against": "hybrid in QKeras (float simulation of the quantized net)",
                            "deployed": engine,
                            **agreement_stats(cosine_rows(emb, np.asarray(ref))),
                        }
                if key != "float":
                    log(f"{key}: bit-exactness and target figures")
                    bit_exact, target = deployed_checks(
                        key,
                        model,
                        kind,
                        graph,
                        images,
                        kws,
                        target_count,
                        log,
                        deployed=emb if engine == "host-c" else None,
                    )
                    entry["bit_exact"] = bit_exact
                    entry["target"] = target
                entry["footprint"] = footprint(key, model, kind, graph, entry["target"])
                report_models[key] = entry
            if "int8" in report_models:
                if "float" in embeddings:
                    entry = report_models["int8"]
                    entry["agreement"] = {
                        "against": "mnv2_fp in Keras (--float)",
                        "deployed": entry["engine"],
                        **agreement_stats(cosine_rows(embeddings["int8"], embeddings["float"])),
                    }
                else:
                    report_models["int8"]["agreement"] = {
                        "against": None,
                        "reason": "no --float model given",
                    }

    report: dict[str, Any] = {
        "tool": f"bnncube {__version__}",
        "command": "compare",
        "schema_version": SCHEMA_VERSION,
        "data": data_summary(data, pairs, pair_list, rel_paths, missing),
        "options": {
            "flip": bool(flip),
            "engines": chosen,
            "target_count": int(target_count),
            "host_sample": HOST_SAMPLE,
            "far": FAR,
        },
        "models": report_models,
        "files": list(REPORT_FILES),
    }
    write_report(report, output)
    log(f"wrote {', '.join(str(output / f) for f in REPORT_FILES)}")
    return report


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.0f} KiB"


def _mega(n: float | None) -> str:
    return "-" if not n else f"{n / 1e6:.0f} M"


def _yes(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "NO")


def headline_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "engine",
        "accuracy (mean ± std)",
        "AUC",
        "TAR@FAR=1e-3",
        "EER",
        "pairs (eval/skipped)",
        "flash",
        "RAM",
        "MACC",
        "instr./inference",
        "est. ms @480 MHz",
        "bit-exact",
    ]
    rows = []
    for m in report["models"].values():
        lf, fp = m["lfw"], m["footprint"]
        be = m.get("bit_exact")
        if be is None:
            exact = "n/a (float)"
        else:
            exact = "host " + _yes(be["host_vs_reference"])
            if be["target_vs_host"] is not None:
                exact += ", target " + _yes(be["target_vs_host"])
        ins = fp["instructions_per_inference"]
        ms = fp["est_ms_480mhz"]
        flash = _kib(fp["flash_bytes"]) + ("" if fp["deployable"] else " (not deployable)")
        rows.append(
            [
                m["label"],
                m["engine"],
                f"{100 * lf['accuracy_mean']:.2f}% ± {100 * lf['accuracy_std']:.2f}%",
                f"{lf['auc']:.4f}",
                _pct(lf["tar_at_far_1e-3"]) + (" *" if lf["tar_at_far_underresolved"] else ""),
                _pct(lf["eer"]),
                f"{lf['n_evaluated']}/{lf['n_skipped']}",
                flash,
                _kib(fp["ram_bytes"]),
                f"{fp['macc'] / 1e6:.1f} M",
                "-" if ins is None else f"{ins:,}",
                "-" if ms is None else f"{ms:.1f} (estimate)",
                exact,
            ]
        )
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def headline_table(report: dict[str, Any]) -> str:
    """The headline table (Markdown), one row per model."""
    header, rows = headline_rows(report)
    return _md_table(header, rows) + "\n"


def _agreement_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "deployed vs", "images", "mean", "min", "p01", "p05", "median", "max"]
    rows = []
    for m in report["models"].values():
        a = m.get("agreement")
        if not a:
            continue
        if a.get("against") is None:
            rows.append([m["label"], f"n/a: {a['reason']}", "", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                f"{m['label']} ({a['deployed']})",
                a["against"],
                str(a["n_images"]),
                *(f"{a[k]:.4f}" for k in ("mean", "min", "p01", "p05", "p50", "max")),
            ]
        )
    return header, rows


def _bit_exact_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "host C == reference", "images", "target == host C", "images", "device"]
    rows = []
    for m in report["models"].values():
        be = m.get("bit_exact")
        if be is None:
            continue
        reason = (m.get("target") or {}).get("reason")
        rows.append(
            [
                m["label"],
                _yes(be["host_vs_reference"]),
                str(be["n_host"]),
                _yes(be["target_vs_host"]) if reason is None else f"n/a ({reason})",
                str(be["n_target"]),
                be["device"] or "-",
            ]
        )
    return header, rows


def _vs_paper(ours: str, paper: str, r: float | None) -> str:
    ratio = "" if r is None else f", x{r:.2f}"
    return f"{ours} (paper {paper}{ratio})"


def _footprint_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "flash",
        "RAM",
        "MACC",
        "instr./inference",
        "est. ms @480 MHz",
        "source",
    ]
    rows = []
    for m in report["models"].values():
        fp = m["footprint"]
        paper, r = fp["paper"], fp["ratio_to_paper"]
        ms = fp["est_ms_480mhz"]
        paper_ms = paper.get("inference_ms")
        ins = fp["instructions_per_inference"]
        rows.append(
            [
                m["label"],
                _vs_paper(_kib(fp["flash_bytes"]), _kib(paper.get("flash_bytes")), r["flash"]),
                _vs_paper(_kib(fp["ram_bytes"]), _kib(paper.get("ram_bytes")), r["ram"]),
                _vs_paper(f"{fp['macc'] / 1e6:.1f} M", _mega(paper.get("macc")), r["macc"]),
                "-" if ins is None else f"{ins:,}",
                _vs_paper(
                    "-" if ms is None else f"{ms:.1f} (estimate)",
                    "does not fit" if paper_ms is None else f"{paper_ms:g}",
                    r["ms"],
                ),
                fp["source"],
            ]
        )
    return header, rows


def _data_lines(report: dict[str, Any]) -> list[str]:
    d = report["data"]
    lines = [
        f"Data: {d['path']} ({d['n_identities']} identities, {d['n_images']} images used, "
        f"{d['n_images_missing']} missing); pairs: {d['pairs_file']} ({d['n_pairs']} pairs, "
        f"{d['n_folds']} folds, {d['n_identities_in_pairs']} identities in the pairs).",
        f"Options: flip {'on' if report['options']['flip'] else 'off'}; engines "
        + ", ".join(f"{k} {v}" for k, v in report["options"]["engines"].items())
        + f"; target images {report['options']['target_count']}.",
    ]
    if d["synthetic"]:
        lines.append(f"NOTE: {d['note']}.")
    return lines


NOTES = [
    "Accuracy: the LFW protocol (threshold chosen on the other folds, applied to each fold; mean "
    "± population std over the folds); TAR@FAR=1e-3 at most floor(1e-3 x mismatched pairs) "
    "false accepts, '*' when that is 0 (too few pairs to resolve FAR 1e-3).",
    "Agreement: per image, the cosine between the deployed embedding and its float counterpart: "
    "int8 deployed vs the float MobileNetV2 in Keras (quantization error of the whole network, "
    "meaningful when the int8 model was quantized from that float model); hybrid deployed vs "
    "the same hybrid in QKeras (QKeras simulates the quantized net in float: the gap is the "
    "integer arithmetic of the deployed code, rounding and BN folding).",
    "Bit-exact: the generated C built for this machine vs bnncube's reference interpreter "
    "(outputs compared with ==), and the generated C built for the Cortex-M7 and run in Unicorn "
    "vs the host build, on the first images.",
    f"Time: {EST_MS_NOTE}.",
]


def markdown_report(report: dict[str, Any]) -> str:
    parts = ["# bnncube compare: float / int8 / hybrid", "", *_data_lines(report), ""]
    parts += ["## Headline", "", headline_table(report)]
    for title, rows in (
        ("Agreement of embeddings (cosine)", _agreement_rows(report)),
        ("Bit-exactness of the generated C", _bit_exact_rows(report)),
        ("Flash / RAM / MACC / time vs the paper's Table 3", _footprint_rows(report)),
    ):
        if rows[1]:
            parts += [f"## {title}", "", _md_table(*rows), ""]
    parts += ["## ROC", "", "![ROC](roc.png)", "", "## Notes", ""]
    parts += [f"- {n}" for n in NOTES]
    return "\n".join(parts) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(report: dict[str, Any], roc_png: bytes) -> str:
    b64 = base64.b64encode(roc_png).decode("ascii")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>bnncube compare</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1400px}",
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #999;padding:4px 8px;"
        "text-align:right}th{background:#eee}td:first-child{text-align:left}",
        ".note{background:#fff3cd;padding:0.5em;border:1px solid #e0c060}",
        "</style></head><body>",
        "<h1>bnncube compare: float / int8 / hybrid</h1>",
    ]
    for line in _data_lines(report):
        cls = " class='note'" if line.startswith("NOTE") else ""
        parts.append(f"<p{cls}>{html.escape(line)}</p>")
    parts += ["<h2>Headline</h2>", _html_table(*headline_rows(report))]
    for title, rows in (
        ("Agreement of embeddings (cosine)", _agreement_rows(report)),
        ("Bit-exactness of the generated C", _bit_exact_rows(report)),
        ("Flash / RAM / MACC / time vs the paper's Table 3", _footprint_rows(report)),
    ):
        if rows[1]:
            parts += [f"<h2>{html.escape(title)}</h2>", _html_table(*rows)]
    parts += [
        "<h2>ROC</h2>",
        f"<img alt='ROC curves' src='data:image/png;base64,{b64}'>",
        "<h2>Notes</h2><ul>",
        *(f"<li>{html.escape(n)}</li>" for n in NOTES),
        "</ul></body></html>",
    ]
    return "\n".join(parts) + "\n"


def roc_png(report: dict[str, Any]) -> bytes:
    """ROC curves of all models: linear and logarithmic FAR axes (matplotlib Agg)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), dpi=100)
    lin, log = fig.subplots(1, 2)
    floor = 1.0
    for m in report["models"].values():
        fpr = np.asarray(m["roc"]["fpr"])
        tpr = np.asarray(m["roc"]["tpr"])
        label = f"{m['label']} [{m['engine']}] AUC {m['lfw']['auc']:.3f}"
        lin.plot(fpr, tpr, label=label)
        positive = fpr > 0
        if positive.any():
            floor = min(floor, float(fpr[positive].min()))
        log.step(np.where(positive, fpr, np.nan), tpr, where="post", label=label)
    for ax in (lin, log):
        ax.set_ylabel("TAR (true accept rate)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, 1.01)
    lin.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    lin.set_xlabel("FAR (false accept rate)")
    lin.set_xlim(0, 1)
    lin.legend(loc="lower right", fontsize=8)
    log.set_xscale("log")
    log.set_xlim(min(floor, FAR) / 2, 1)
    log.axvline(FAR, color="grey", linestyle="--", linewidth=0.8)
    log.set_xlabel("FAR (log scale; dashed: 1e-3)")
    fig.suptitle("ROC, all pairs")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict[str, Any], output: Path) -> None:
    """Write the four files into a temporary folder beside ``output``, then swap it into place:
    a failure leaves the previous report as it was."""
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnnError(f"option -o: cannot create {parent}: {e.strerror}") from None
    _check_output(output)
    png = roc_png(report)
    from bnncube.fsutil import staged_folder

    with staged_folder(output) as stage:  # swapped in whole, with Ctrl-C held back
        (stage / "roc.png").write_bytes(png)
        (stage / "compare_report.json").write_text(
            json.dumps(_json_safe(report), indent=2) + "\n", encoding="utf-8"
        )
        (stage / "compare_report.md").write_text(markdown_report(report), encoding="utf-8")
        (stage / "compare_report.html").write_text(html_report(report, png), encoding="utf-8")
