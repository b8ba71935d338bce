"""Face embeddings of an LFW-layout image folder, by any engine, and their LFW evaluation.

``bnncube lfw`` (plugin/cmd_lfw.py, docs/lfw.md "The `bnncube lfw` command") is a thin layer over
:func:`evaluate_model`. The pieces:

* :func:`pair_images`: the images a ``pairs.txt`` needs, once each, and each pair's two indices
  into that list (``None`` where the image is not on disk);
* :func:`load_images`: RGB images scaled to [-1, 1] (``v / 127.5 - 1``, as the zoo's calibration
  does), resized (bilinear) to 96x96 when they are not;
* :func:`embed`: a model's embeddings of those images in one of :data:`ENGINES`, reusing the
  project's runners: ``keras``/``tflite``/``onnx`` through :func:`bnncube.validate.original_outputs`
  (the models ``bnncube validate`` compares with), ``host-c`` through the generated C code built
  for this machine (:class:`bnncube.validate.HostNetwork`), ``target`` through the generated C
  cross-compiled for the Cortex-M7 and run in Unicorn (:mod:`bnncube.validation.target`);
* :func:`evaluate_model`: all of it plus :func:`bnncube.validation.lfw.evaluate`.

A model with an int8 input gets ``q = clamp(round_half_away(x / scale) + zero_point)``, computed
by the reference's Quantize (TFLite's AffineQuantize), on every engine alike.

Embeddings files (``--embeddings`` / ``--save-embeddings``) are ``.npz`` archives with one 1-D
float array per image, keyed by the image path relative to the data folder
(``Name/Name_0001.jpg``); embeddings of the mirrored images are keyed ``flip/Name/Name_0001.jpg``.
"""

from __future__ import annotations

import tempfile
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.errors import BnnError
from bnncube.zoo.synthetic_faces import Pair, read_pairs

__all__ = [
    "ENGINES",
    "check_output_file",
    "FLIP_PREFIX",
    "default_engine",
    "embed",
    "evaluate_model",
    "format_summary",
    "load_embeddings_file",
    "load_images",
    "model_inputs",
    "pair_coverage",
    "pair_images",
    "save_embeddings_file",
]

ENGINES = ("keras", "tflite", "onnx", "host-c", "target")
FLIP_PREFIX = "flip/"
FAR = 1e-3

#: model types (``-t``) each engine accepts; the model is converted when it is not the engine's own
_ENGINE_KINDS = {
    "keras": ("keras",),
    "tflite": ("tflite", "keras"),
    "onnx": ("onnx", "keras", "tflite"),
    "host-c": ("keras", "tflite", "onnx"),
    "target": ("keras", "tflite", "onnx"),
}
_DEFAULT_ENGINE = {"keras": "keras", "tflite": "tflite", "onnx": "onnx"}

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def _rel_path(name: str, index: int, ext: str) -> str:
    return f"{name}/{name}_{index:04d}{ext}"


def _interleaved(pairs: Sequence[Pair]) -> list[int]:
    """Pair positions in round-robin order over (fold, matched/mismatched) groups, so that any
    prefix of the image list covers pairs of every fold, matched and mismatched alike."""
    groups: dict[tuple[int, bool], list[int]] = {}
    for k, p in enumerate(pairs):
        groups.setdefault((p.fold, not p.matched), []).append(k)
    queues = [groups[key] for key in sorted(groups)]
    order: list[int] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        order += [q[depth] for q in queues if depth < len(q)]
    return order


def pair_images(
    data: Path, pairs: Sequence[Pair], ext: str = ".jpg"
) -> tuple[list[str], list[tuple[int | None, int | None]], list[str]]:
    """The images ``pairs`` need: (unique relative paths of those that exist under ``data``,
    per pair ``(index_a, index_b)`` into that list or ``None`` where the image is missing, the
    missing relative paths).

    Paths are ``Name/Name_0001.jpg`` (``/``-separated). The list is ordered by taking the pairs
    round-robin over the (fold, matched/mismatched) groups, so its first images (the ones the
    ``target`` engine runs) make pairs of every fold and of both kinds.
    """
    data = Path(data)
    rel: list[str] = []
    index: dict[str, int | None] = {}
    missing: list[str] = []

    def lookup(path: str) -> int | None:
        if path not in index:
            if (data / path).is_file():
                index[path] = len(rel)
                rel.append(path)
            else:
                index[path] = None
                missing.append(path)
        return index[path]

    for k in _interleaved(pairs):
        p = pairs[k]
        lookup(_rel_path(p.name1, p.index1, ext))
        lookup(_rel_path(p.name2, p.index2, ext))
    per_pair = [
        (index[_rel_path(p.name1, p.index1, ext)], index[_rel_path(p.name2, p.index2, ext)])
        for p in pairs
    ]
    return rel, per_pair, missing


def load_images(data: Path, rel_paths: Sequence[str], size: int = 96) -> np.ndarray:
    """float32 ``[N, size, size, 3]`` RGB in [-1, 1] (``v / 127.5 - 1``); bilinear resize when an
    image is not ``size`` x ``size``. An unreadable image raises :class:`BnnError` naming it."""
    from PIL import Image

    out = np.empty((len(rel_paths), size, size, 3), np.float32)
    for i, rel in enumerate(rel_paths):
        path = Path(data) / rel
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(rgb, np.float32) / np.float32(127.5) - np.float32(1.0)
        except (OSError, ValueError, SyntaxError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BnnError(f"{path}: cannot read image ({reason})") from None
    return out


# --------------------------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------------------------


def default_engine(kind: str) -> str:
    """The engine a model type runs in by default: keras, tflite or onnx."""
    return _DEFAULT_ENGINE[kind]


def model_inputs(graph: Any, images: np.ndarray) -> np.ndarray:
    """``images`` (float32 in [-1, 1]) as ``graph``'s input: unchanged for a float input; for an
    int8/uint8 input the reference's Quantize of TFLite, ``clamp(round_half_away(x / s) + zp)``
    (float32 division), image by image."""
    from bnncube.converters.ir import Graph
    from bnncube.converters.reference import run_graph
    from bnncube.generate import set_io_types

    t = graph.tensors[graph.inputs[0]]
    if t.dtype == "float32":
        return np.ascontiguousarray(images, np.float32)
    g = set_io_types(graph, "float32", None)  # a Quantize (TFLite rounding) in front
    first = g.ops[0]
    step = Graph("quantize", dict(g.tensors), [first], [first.inputs[0]], [first.outputs[0]])
    out = [run_graph(step, [x[None]])[first.outputs[0]][0] for x in images]
    return np.stack(out) if out else np.zeros((0,) + t.shape[1:], images.dtype)


def _check_engine(engine: str, kind: str, model: Path) -> None:
    if engine not in ENGINES:
        raise BnnError(f"option --engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if kind not in _ENGINE_KINDS[engine]:
        kinds = ", ".join(_ENGINE_KINDS[engine])
        raise BnnError(
            f"option --engine: {engine} does not run {model.name} (a {kind} model); "
            f"it runs {kinds} models"
        )


def _flat(y: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(y, np.float64).reshape(n, -1).astype(np.float32)


def _run_original(
    path: Path, kind: str, graph: Any, images: np.ndarray, log: Log, label: str
) -> np.ndarray:
    from bnncube.validate import original_outputs

    log(f"lfw: running {len(images)} images in {label}")
    y = original_outputs(str(path), kind, graph, model_inputs(graph, images))
    return _flat(y, len(images))


def _generate(graph: Any, c_name: str, model: Path) -> Any:
    from bnncube.generate import GenerateOptions, generate_code

    return generate_code(graph, GenerateOptions(c_name=c_name, force=True), str(model))


def _host_c(
    graph: Any, model: Path, images: np.ndarray, workspace: Path, c_name: str, batch: int, log: Log
) -> np.ndarray:
    import shutil

    from bnncube.generate import write_generated
    from bnncube.validate import HostNetwork, build_host_network, dequantized

    result = _generate(graph, c_name, model)
    g = result.graph
    folder, build = workspace / c_name, workspace / f"{c_name}_host"
    write_generated(result, folder)
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    log(f"lfw: building the generated C for the host in {build}")
    net = HostNetwork(build_host_network(folder, c_name, build), folder, c_name, g)
    x = model_inputs(g, images)
    out: list[np.ndarray] = []
    for start in range(0, len(x), batch):
        part = x[start : start + batch]
        out.append(dequantized(g, g.outputs[0], net.run(part).outputs))
        log(f"lfw: host-c {min(start + batch, len(x))}/{len(x)} images")
    if not out:
        return np.zeros((0, int(np.prod(g.tensors[g.outputs[0]].shape[1:]))), np.float32)
    return _flat(np.concatenate(out), len(images))


def _target(
    graph: Any, model: Path, images: np.ndarray, workspace: Path, c_name: str, log: Log
) -> np.ndarray:
    from bnncube.errors import ValidationFailed
    from bnncube.generate import write_generated
    from bnncube.runtime_c.build import BuildError
    from bnncube.validate import dequantized
    from bnncube.validation import emulator as em
    from bnncube.validation.target import build_target, run_unicorn

    if not em.toolchain_available():
        raise BnnError(
            f"option --engine target: {em.ARM_GCC} is not installed; install it with `make setup` "
            "or `sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi`"
        )
    try:
        import unicorn  # noqa: F401
    except ImportError:
        raise BnnError(
            "option --engine target: the unicorn Python package is not installed "
            "(pip install unicorn)"
        ) from None
    result = _generate(graph, c_name, model)
    g = result.graph
    folder, build_dir = workspace / c_name, workspace / f"{c_name}_target"
    write_generated(result, folder)
    log(f"lfw: cross-compiling the generated C for the Cortex-M7 in {build_dir}")
    try:
        build = build_target(folder, c_name, build_dir, layers=False)
    except BuildError as exc:
        raise ValidationFailed(f"target: the firmware does not build: {exc}") from None
    log(f"lfw: running {len(images)} images on the emulated Cortex-M7 (Unicorn)")
    run = run_unicorn(build, g, result.report, model_inputs(g, images))
    return _flat(dequantized(g, g.outputs[0], run.outputs), len(images))


def embed(
    model: str | Path,
    engine: str,
    images: np.ndarray,
    *,
    workspace: Path | None = None,
    c_name: str = "network",
    batch: int = 64,
    log: Callable[[str], None] | None = None,
    model_type: str | None = None,
) -> np.ndarray:
    """Embeddings of ``images`` (float32 ``[N, 96, 96, 3]`` in [-1, 1]) by ``model`` in
    ``engine``: float32 ``[N, D]`` (dequantized outputs).

    keras: a ``.h5``/``.keras`` in (Q)Keras. tflite: a ``.tflite`` in ai-edge-litert's reference
    kernels (LCE's interpreter for LCE ops); a Keras model is first converted to bnncube's TFLite
    form (a temporary file). onnx: a ``.onnx`` in onnxruntime; a Keras or TFLite model is first
    converted to bnncube's ONNX form. host-c: the generated C built for this machine, ``batch``
    images per call. target: the generated C on the emulated Cortex-M7 (slow). The generated code
    goes to ``workspace/c_name`` (default: a temporary folder). An engine that does not apply to
    the model's type raises :class:`BnnError`.
    """
    from bnncube.converters.loader import load_model
    from bnncube.converters.loader import model_type as detect_type

    log = log or _quiet
    path = Path(model)
    kind = detect_type(path, model_type)
    _check_engine(engine, kind, path)
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise BnnError(f"lfw: images must be [N, H, W, 3], got shape {images.shape}")
    if batch < 1:
        raise BnnError(f"lfw: batch must be >= 1, got {batch}")
    graph = load_model(path, kind)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bnncube_lfw_")))
        if engine == "keras" or (engine == kind and engine in ("tflite", "onnx")):
            return _run_original(path, kind, graph, images, log, engine)
        if engine == "tflite":
            from bnncube.converters.tflite_export import save_tflite

            converted = save_tflite(graph, tmp / f"{path.stem}.tflite")
            log(f"lfw: converted {path.name} to bnncube's TFLite form")
            # the IR graph it was written from stands in for it (its LCE ops, its output type)
            return _run_original(converted, "tflite", graph, images, log, "tflite (converted)")
        if engine == "onnx":
            from bnncube.converters.onnx_export import save_onnx

            converted = save_onnx(graph, tmp / f"{path.stem}.onnx")
            log(f"lfw: converted {path.name} to bnncube's ONNX form")
            return _run_original(converted, "onnx", graph, images, log, "onnxruntime (converted)")
        ws = Path(workspace) if workspace is not None else tmp
        try:
            ws.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BnnError(f"option -w: cannot create {ws}: {e.strerror}") from None
        if engine == "host-c":
            return _host_c(graph, path, images, ws, c_name, batch, log)
        return _target(graph, path, images, ws, c_name, log)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# embeddings files
# --------------------------------------------------------------------------------------------


def check_output_file(path: Path, option: str, suffix: str | None = None) -> None:
    """Before any work: ``path`` must end in ``suffix`` (if given) and its folder must exist."""
    if suffix is not None and path.suffix.lower() != suffix:
        raise BnnError(f"option {option}: {path} must end in {suffix}")
    if not path.parent.is_dir():
        raise BnnError(f"option {option}: folder {path.parent} does not exist or is not a folder")
    if path.is_dir():
        raise BnnError(f"option {option}: {path} is a folder")


def save_embeddings_file(
    path: Path, rel_paths: Sequence[str], emb: np.ndarray, flip: np.ndarray | None = None
) -> None:
    """Write ``{rel_path: emb[i]}`` (and ``{flip/rel_path: flip[i]}``) to ``path`` atomically."""
    from bnncube.fsutil import atomic_output_file

    path = Path(path)
    check_output_file(path, "--save-embeddings", ".npz")
    arrays = {rel: np.asarray(emb[i], np.float32) for i, rel in enumerate(rel_paths)}
    if flip is not None:
        arrays.update(
            {FLIP_PREFIX + rel: np.asarray(flip[i], np.float32) for i, rel in enumerate(rel_paths)}
        )
    with atomic_output_file(path) as tmp:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)


def load_embeddings_file(path: Path) -> dict[str, np.ndarray]:
    """``{key: 1-D float32 embedding}`` of an embeddings ``.npz``; a bad file (not an npz, an
    array that is not one vector, different sizes, NaN/Inf) raises :class:`BnnError` naming
    the file and the key."""
    path = Path(path)
    where = f"option --embeddings: {path}"
    if not path.is_file():
        raise BnnError(f"{where}: no such file")
    out: dict[str, np.ndarray] = {}
    dim: tuple[str, int] | None = None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise BnnError(f"{where}: not an .npz archive (a single .npy array)")
            for key in npz.files:
                try:
                    arr = np.asarray(npz[key])
                except (ValueError, SyntaxError, tokenize.TokenError):  # numpy's header parser
                    raise BnnError(f"{where}: key {key!r}: not a numeric array") from None
                except MemoryError:
                    raise BnnError(
                        f"{where}: key {key!r}: its header declares an array too large to load"
                    ) from None
                if arr.ndim == 2 and arr.shape[0] == 1:
                    arr = arr[0]
                if arr.ndim != 1 or arr.size == 0:
                    raise BnnError(
                        f"{where}: key {key!r}: shape {arr.shape}; expected one embedding "
                        "vector (D,) per image"
                    )
                if arr.dtype.kind not in "fiu":
                    raise BnnError(f"{where}: key {key!r}: dtype {arr.dtype}; expected numbers")
                if dim is None:
                    dim = (key, arr.size)
                elif arr.size != dim[1]:
                    raise BnnError(
                        f"{where}: key {key!r}: {arr.size} values, but {dim[0]!r} has {dim[1]}; "
                        "every embedding must have the same size"
                    )
                if not np.all(np.isfinite(arr)):
                    raise BnnError(f"{where}: key {key!r}: holds NaN or Inf")
                out[key] = arr.astype(np.float32)
    except BnnError:
        raise
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # zipfile: an unsupported zip version or compression method
        zlib.error,
    ) as exc:
        raise BnnError(f"{where}: not a readable .npz file ({type(exc).__name__})") from None
    if not out:
        raise BnnError(f"{where}: holds no embeddings")
    return out


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def pair_coverage(records: Sequence[tuple[Any, Any, bool, int]]) -> tuple[int, int, bool]:
    """(pairs with both images, folds among them, whether both matched and mismatched pairs are
    among them) of ``(index_a, index_b, same, fold)`` records: the protocol needs >= 1 pair, two
    folds or more and both kinds."""
    usable = [r for r in records if r[0] is not None and r[1] is not None]
    return len(usable), len({r[3] for r in usable}), len({r[2] for r in usable}) > 1


def _lfw_evaluate(
    emb: np.ndarray,
    records: list[tuple[Any, Any, bool, int]],
    flip: np.ndarray | None,
    what: str,
    pairs_path: Path,
) -> dict[str, Any]:
    from bnncube.validation import lfw

    n, folds, both = pair_coverage(records)
    if n == 0:
        raise BnnError(f"lfw: {pairs_path}: every pair was skipped ({what}); nothing to evaluate")
    if folds < 2 or not both:
        raise BnnError(
            f"lfw: {pairs_path}: only {n} pairs can be evaluated ({what}), in {folds} fold(s), "
            f"{'matched and mismatched' if both else 'all of one kind'}; the protocol "
            "needs pairs in at least two folds and both matched and mismatched pairs"
        )
    return lfw.evaluate(emb, records, flip_embeddings=flip, far=FAR)


def evaluate_model(
    model: str | Path | None,
    data: Path | None,
    pairs_path: Path,
    *,
    engine: str | None = "keras",
    flip: bool = False,
    embeddings_file: Path | None = None,
    workspace: Path | None = None,
    target_count: int = 20,
    log: Callable[[str], None] | None = None,
    model_type: str | None = None,
    c_name: str = "network",
    save_embeddings: Path | None = None,
    batch: int = 64,
) -> dict[str, Any]:
    """LFW evaluation of ``model`` in ``engine`` on the images under ``data`` named by the pairs
    file ``pairs_path`` (or of the precomputed ``embeddings_file`` instead of a model).

    ``engine=None`` picks the model type's own engine. Returns the summary ``bnncube lfw --json``
    writes (``accuracy_mean``, ``accuracy_std``, ``auc``, ``eer``, ``tar_at_far_1e-3``,
    ``fold_accuracies``, ``n_pairs``, ``n_skipped``, ``n_images``, ...) with the full
    :func:`bnncube.validation.lfw.evaluate` result under ``"lfw"``. ``save_embeddings`` writes the
    computed embeddings (atomically) in the ``--embeddings`` format.
    """
    log = log or _quiet
    if (model is None) == (embeddings_file is None):
        raise BnnError("lfw: give either a model (-m) or precomputed embeddings (--embeddings)")
    if save_embeddings is not None:
        check_output_file(Path(save_embeddings), "--save-embeddings", ".npz")
    pairs = read_pairs(pairs_path)
    if target_count < 1:
        raise BnnError(f"option --target-count: must be >= 1, got {target_count}")
    summary: dict[str, Any] = {"flip": bool(flip), "pairs_file": str(pairs_path)}
    flip_emb: np.ndarray | None = None
    keep = [True] * len(pairs)
    if embeddings_file is not None:
        if save_embeddings is not None:
            raise BnnError("option --save-embeddings: only with -m (embeddings computed here)")
        table = load_embeddings_file(Path(embeddings_file))
        rel, per_pair, missing = _pairs_in_table(pairs, table, flip, Path(embeddings_file))
        emb = np.stack([table[r] for r in rel])
        if flip:
            flip_emb = np.stack([table[FLIP_PREFIX + r] for r in rel])
        summary.update(engine="embeddings", model=str(embeddings_file))
        skipped_what = f"images missing from {embeddings_file}"
    else:
        from bnncube.converters.loader import model_type as detect_type

        assert model is not None
        path = Path(model)
        kind = detect_type(path, model_type)
        engine = engine or default_engine(kind)
        _check_engine(engine, kind, path)
        if not path.is_file():
            raise BnnError(f"option -m: {path}: no such file")
        if data is None:
            raise BnnError("option --data: the folder of LFW images is required with -m")
        data = Path(data)
        if not data.is_dir():
            raise BnnError(f"option --data: {data} is not a folder")
        rel, per_pair, missing = pair_images(data, pairs)
        if not rel:
            raise BnnError(
                f"lfw: every pair was skipped: none of the {len(missing)} images named by "
                f"{pairs_path} is under {data} (expected {data}/Name/Name_0001.jpg)"
            )
        if engine == "target" and len(rel) > target_count:
            # pairs whose images exist but were not all run are left out (n_pairs_not_run);
            # a pair with a missing image stays, and is skipped as missing
            rel = rel[:target_count]
            keep = [
                a is None or b is None or (a < target_count and b < target_count)
                for a, b in per_pair
            ]

            def run_here(i: int | None) -> int | None:
                return i if i is not None and i < target_count else None

            per_pair = [(run_here(a), run_here(b)) for a, b in per_pair]
        if engine == "target":
            summary["target_images"] = len(rel)
        log(f"lfw: loading {len(rel)} images from {data}")
        images = load_images(data, rel)
        common = {"workspace": workspace, "c_name": c_name, "batch": batch, "log": log}
        if flip:  # one run (one build of the C code) for the images and their mirrors
            log("lfw: the mirrored images too (--flip)")
            images = np.concatenate([images, images[:, :, ::-1, :]])
        emb = embed(path, engine, images, model_type=kind, **common)
        if flip:
            emb, flip_emb = emb[: len(rel)], emb[len(rel) :]
        summary.update(engine=engine, model=str(path))
        skipped_what = f"images missing under {data}"
    if not np.all(np.isfinite(emb)) or (flip_emb is not None and not np.all(np.isfinite(flip_emb))):
        raise BnnError(f"lfw: the {summary['engine']} engine produced NaN or Inf embeddings")
    records = [
        (a, b, p.matched, p.fold) for (a, b), p, k in zip(per_pair, pairs, keep, strict=True) if k
    ]
    n_skipped = sum(1 for a, b, _, _ in records if a is None or b is None)
    n_not_run = len(pairs) - len(records)
    result = _lfw_evaluate(emb, records, flip_emb, skipped_what, Path(pairs_path))
    summary.update(
        accuracy_mean=result["accuracy_mean"],
        accuracy_std=result["accuracy_std"],
        auc=result["auc"],
        eer=result["eer"],
        **{"tar_at_far_1e-3": result["tar_at_far"]},
        fold_accuracies=result["fold_accuracies"],
        n_pairs=len(pairs),
        n_pairs_evaluated=result["n_evaluated"],
        n_skipped=n_skipped,
        n_images=len(rel),
        embedding_dim=int(emb.shape[1]),
        missing_images=missing,
    )
    if summary["engine"] == "target":
        summary["n_pairs_not_run"] = n_not_run
    summary["lfw"] = result
    if save_embeddings is not None:  # last: a failed evaluation leaves no file behind
        save_embeddings_file(Path(save_embeddings), rel, emb, flip_emb)
    return summary


def _pairs_in_table(
    pairs: Sequence[Pair], table: dict[str, np.ndarray], flip: bool, path: Path
) -> tuple[list[str], list[tuple[int | None, int | None]], list[str]]:
    """:func:`pair_images` over the keys of an embeddings file instead of a folder."""
    if flip and not any(k.startswith(FLIP_PREFIX) for k in table):
        raise BnnError(
            f"option --flip: {path} holds no flipped embeddings (keys {FLIP_PREFIX}Name/...)"
        )
    rel: list[str] = []
    index: dict[str, int | None] = {}
    missing: list[str] = []
    per_pair: list[tuple[int | None, int | None]] = []
    for p in pairs:
        pair_ix: list[int | None] = []
        for name, i in ((p.name1, p.index1), (p.name2, p.index2)):
            key = _rel_path(name, i, ".jpg")
            if key not in index:
                present = key in table and (not flip or FLIP_PREFIX + key in table)
                index[key] = len(rel) if present else None
                (rel if present else missing).append(key)
            pair_ix.append(index[key])
        per_pair.append((pair_ix[0], pair_ix[1]))
    return rel, per_pair, missing


def format_summary(summary: dict[str, Any]) -> str:
    """The LFW report plus one line: engine, model, pairs and images skipped (first 10 listed)."""
    from bnncube.validation import lfw

    lines = [lfw.format_report(summary["lfw"])]
    where = f"engine {summary['engine']}, model {Path(summary['model']).name}"
    skipped = f"{summary['n_skipped']} of {summary['n_pairs']} pairs skipped"
    missing = summary["missing_images"]
    if missing:
        listed = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        skipped += f" ({len(missing)} images missing: {listed})"
    else:
        skipped += " (no image missing)"
    lines.append(f"  {where}; {summary['n_images']} images; {skipped}")
    if "target_images" in summary:
        lines.append(
            f"  target: {summary['target_images']} images run on the emulated Cortex-M7, "
            f"{summary['n_pairs_evaluated']} pairs evaluated "
            f"({summary['n_pairs_not_run']} pairs outside those images not run)"
        )
    return "\n".join(lines)
