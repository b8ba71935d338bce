"""MTCNN face alignment: detect 5 landmarks, warp them onto a fixed template (``bnncube align``).

Pipeline for one image (:func:`align_image`):

1. MTCNN (the ``mtcnn`` 1.0.0 package, weights bundled, runs offline on the CPU) finds face boxes
   and 5 landmarks per face: left eye, right eye, nose, left and right mouth corner, where "left"
   means the IMAGE's left (smaller x), which is the order of the template below.
2. Faces whose box is smaller than ``min_face`` pixels (shorter side) are ignored. Among the rest
   one is chosen deterministically (:func:`choose_face`): the largest box, unless another box at
   least 80% as large (by area) lies closer to the image centre; ties go to the larger box, then to
   the one MTCNN listed first.
3. A 2-D similarity transform (rotation + uniform scale + translation, no reflection) is fitted by
   least squares from the 5 landmarks to the template (:func:`estimate_similarity`, Umeyama's
   closed form) and the image is warped with Pillow's bilinear affine transform into a
   ``size x size`` RGB image. When the face must shrink by 2x or more, the source is first reduced
   by an integer factor with a box filter (:meth:`PIL.Image.Image.reduce`) so the bilinear warp
   does not alias.

Template (:func:`template`): the five 112x112 reference points used by InsightFace's ArcFace
alignment (Deng et al., "ArcFace", CVPR 2019; the ``arcface_dst`` constants of InsightFace's
``face_align`` utility), which are published numbers, scaled by 96/112 for the default 96x96
output and by ``size/96`` from there for other sizes.

No face: ``no_face="center"`` writes the central square of side ``CENTER_CROP_FRACTION`` (1/2)
of the shorter image side, resized to ``size`` (LFW's 250x250 images have the face centred, so
this is a rough stand-in); ``no_face="skip"`` writes nothing. Either way the image is listed.

Folder runs (:func:`align_folder`) keep relative paths, skip outputs that already exist (so an
interrupted run resumes), write every image to a temporary name in its folder and rename it into
place, and can spread the images over a spawn-context process pool whose workers each build their
own detector once; the outputs do not depend on the number of workers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from bnncube.errors import BnnError

__all__ = [
    "ARCFACE_112",
    "CENTER_CROP_FRACTION",
    "IMAGE_SUFFIXES",
    "JPEG_QUALITY",
    "LANDMARK_NAMES",
    "MIN_FACE_LOWER",
    "MIN_SIZE",
    "TEMPLATE_96",
    "align_folder",
    "align_image",
    "center_crop",
    "choose_face",
    "detect_faces",
    "estimate_similarity",
    "format_report",
    "make_detector",
    "template",
    "warp_similarity",
]

#: Landmark order used everywhere in this module (MTCNN's names; left/right as seen in the image).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

#: InsightFace's ArcFace reference points for a 112x112 crop (x, y), in LANDMARK_NAMES order.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: The template for 96x96 outputs: ARCFACE_112 * 96/112 (rounded to 1e-4 px), in pixel units with
#: pixel centres at integer coordinates (column x, row y).
TEMPLATE_96 = np.array(
    [
        [32.8239, 44.3111],
        [63.0273, 44.1441],
        [48.0216, 61.4885],
        [35.6137, 79.1704],
        [60.6256, 79.0321],
    ],
    dtype=np.float64,
)

#: Smallest output size accepted.
MIN_SIZE = 32
#: Smallest --min-face accepted: PNet's window is 12 px; smaller faces would need upscaling.
MIN_FACE_LOWER = 12
#: Sources with one of these suffixes (case-insensitive) are aligned.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: JPEG quality of the outputs written for .jpg/.jpeg sources.
JPEG_QUALITY = 95
#: No-face fallback: side of the central square crop as a fraction of the shorter image side.
CENTER_CROP_FRACTION = 0.5
#: A box at least this fraction of the largest box's area may win by being closer to the centre.
NEAR_LARGEST = 0.8

TEMPLATE_SOURCE = (
    "InsightFace ArcFace 112x112 reference points (arcface_dst; Deng et al., CVPR 2019) "
    "scaled by 96/112, then by size/96"
)

Log = Callable[[str], Any]


# --------------------------------------------------------------------------- geometry


def template(size: int = 96) -> np.ndarray:
    """The 5 template points (5x2, x then y, LANDMARK_NAMES order) for a ``size x size`` output."""
    if size < MIN_SIZE:
        raise BnnError(f"option --size: {size} is below the minimum {MIN_SIZE}")
    return TEMPLATE_96 * (size / 96.0)


def estimate_similarity(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst.

    Umeyama's closed form: returns the 2x3 matrix ``M = [s R | t]`` minimising
    ``sum |dst_i - (s R src_i + t)|^2``. Raises ValueError for mismatched shapes, fewer than two
    points, non-finite values, or points that (nearly) coincide, where no unique transform exists.
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(
            f"estimate_similarity: need two Nx2 point arrays of the same shape, got "
            f"{src.shape} and {dst.shape}"
        )
    n = src.shape[0]
    if n < 2:
        raise ValueError(f"estimate_similarity: need at least 2 points, got {n}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("estimate_similarity: points contain NaN or infinity")
    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    xs = src - mu_src
    xd = dst - mu_dst
    var_src = float((xs**2).sum() / n)
    var_dst = float((xd**2).sum() / n)
    extent = max(1.0, float(np.abs(src).max()), float(np.abs(dst).max()))
    tiny = (1e-9 * extent) ** 2
    if var_src <= tiny or var_dst <= tiny:
        which = "source" if var_src <= tiny else "destination"
        raise ValueError(
            f"estimate_similarity: degenerate input, the {which} points all coincide "
            "(no unique similarity)"
        )
    cov = xd.T @ xs / n
    u, d, vt = np.linalg.svd(cov)
    flip = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[-1] = -1.0
    rot = u @ np.diag(flip) @ vt
    scale = float((d * flip).sum() / var_src)
    if not scale > 0:
        raise ValueError("estimate_similarity: degenerate input (no positive scale fits)")
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_dst - scale * rot @ mu_src
    return matrix


def warp_similarity(img: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp ``img`` (HxWx3 uint8) with the 2x3 similarity ``matrix`` into ``size x size``.

    ``matrix`` maps source pixel coordinates to output pixel coordinates, both with pixel centres at
    integers. Pillow's affine transform wants the inverse map in its own convention (pixel centres
    at +0.5), so the inverse is shifted accordingly. Shrinking by 2x or more first box-reduces the
    source by the integer part of the shrink factor. Pixels mapped from outside the source are 0.
    """
    a = np.asarray(matrix, dtype=np.float64)[:, :2]
    t = np.asarray(matrix, dtype=np.float64)[:, 2]
    scale = math.sqrt(abs(float(np.linalg.det(a))))
    image = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), "RGB")
    factor = int(math.floor(1.0 / scale)) if scale > 0 else 1
    if factor >= 2:
        image = image.reduce(factor)
    else:
        factor = 1
    inv = np.linalg.inv(a)
    # source index coords: p = inv (q - t); Pillow coords: P = p + 0.5, Q = q + 0.5, and the
    # reduced image's Pillow coords are P / factor.
    lin = inv / factor
    off = (inv @ (np.full(2, -0.5) - t) + 0.5) / factor
    coeffs = (lin[0, 0], lin[0, 1], off[0], lin[1, 0], lin[1, 1], off[1])
    out = image.transform(
        (size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(out, dtype=np.uint8)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central square (side CENTER_CROP_FRACTION of the shorter side) resized to size x size."""
    h, w = img.shape[:2]
    side = max(1.0, CENTER_CROP_FRACTION * min(h, w))
    left = (w - side) / 2.0
    top = (h - side) / 2.0
    image = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), "RGB")
    out = image.resize(
        (size, size),
        Image.Resampling.BILINEAR,
        box=(left, top, left + side, top + side),
        reducing_gap=2.0,
    )
    return np.asarray(out, dtype=np.uint8)


# --------------------------------------------------------------------------- detection


def make_detector() -> Any:
    """An MTCNN detector on the CPU (imports TensorFlow quietly on first use)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bnncube.fsutil import stderr_fd_silenced

    with stderr_fd_silenced():
        import tensorflow  # noqa: F401
        from mtcnn import MTCNN

        return MTCNN(device="CPU:0")


def detect_faces(img: np.ndarray, detector: Any, min_face: int = 20) -> list[dict[str, Any]]:
    """All faces MTCNN finds in ``img`` (HxWx3 uint8): dicts with ``box`` [x, y, w, h] (floats),
    ``confidence`` and ``landmarks`` (5x2 array, LANDMARK_NAMES order), in MTCNN's order.

    ``min_face`` is passed to MTCNN's image pyramid (the smallest face it looks for).
    """
    h, w = img.shape[:2]
    if min(h, w) < MIN_FACE_LOWER:
        return []
    rows = detector.detect_faces(
        np.asarray(img, dtype=np.float32),
        output_type="numpy",
        box_format="xyxy",
        min_face_size=max(MIN_FACE_LOWER, int(min_face)),
    )
    faces = []
    # MTCNN's numpy rows: image id, x1, y1, x2, y2, confidence, then the five x coordinates and
    # the five y coordinates (left eye, right eye, nose, mouth left, mouth right).
    for row in np.asarray(rows, dtype=np.float64).reshape(-1, 16):
        x1, y1, x2, y2 = (float(v) for v in row[1:5])
        faces.append(
            {
                "box": [x1, y1, x2 - x1, y2 - y1],
                "confidence": float(row[5]),
                "landmarks": np.stack([row[6:11], row[11:16]], axis=1),
            }
        )
    return faces


def choose_face(faces: list[dict[str, Any]], width: int, height: int) -> int:
    """Index of the face to align: the largest box, unless another box at least NEAR_LARGEST as
    large (by area) is closer to the image centre. Ties: larger area, then the earlier index."""
    if not faces:
        raise ValueError("choose_face: no faces")
    areas = [max(0.0, f["box"][2]) * max(0.0, f["box"][3]) for f in faces]
    largest = max(areas)
    cx, cy = width / 2.0, height / 2.0

    def centre_distance(i: int) -> float:
        x, y, w, h = faces[i]["box"]
        return math.hypot(x + w / 2.0 - cx, y + h / 2.0 - cy)

    candidates = [i for i, area in enumerate(areas) if area >= NEAR_LARGEST * largest]
    return min(candidates, key=lambda i: (centre_distance(i), -areas[i], i))


def _round_box(box: list[float]) -> list[float]:
    return [round(float(v), 2) for v in box]


def align_image(
    img: np.ndarray, detector: Any, size: int = 96, min_face: int = 20
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Detect, choose and align one face of ``img`` (HxWx3 uint8 RGB).

    Returns ``(aligned size x size x 3 uint8 array, info)``, or ``(None, info)`` when no face with
    a box side of at least ``min_face`` px is found. ``info``: ``faces`` (faces >= min_face),
    ``small_faces`` (smaller ones ignored), and for an aligned face ``box`` [x, y, w, h],
    ``confidence``, ``landmarks`` (5x2 list) and ``matrix`` (the 2x3 source->output transform).
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"align_image: need an HxWx3 uint8 image, got {img.shape} {img.dtype}")
    dst = template(size)
    found = detect_faces(img, detector, min_face)
    faces = [f for f in found if min(f["box"][2], f["box"][3]) >= min_face]
    info: dict[str, Any] = {"faces": len(faces), "small_faces": len(found) - len(faces)}
    if not faces:
        return None, info
    chosen = faces[choose_face(faces, img.shape[1], img.shape[0])]
    matrix = estimate_similarity(chosen["landmarks"], dst)
    aligned = warp_similarity(img, matrix, size)
    info.update(
        box=_round_box(chosen["box"]),
        confidence=round(chosen["confidence"], 4),
        landmarks=[[round(float(v), 2) for v in p] for p in chosen["landmarks"]],
        matrix=[[round(float(v), 6) for v in r] for r in matrix],
    )
    return aligned, info


# --------------------------------------------------------------------------- one file


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _save(arr: np.ndarray, path: Path) -> None:
    """Write ``arr`` to ``path`` atomically: a temporary name in the same folder, then rename."""
    from bnncube.fsutil import atomic_output_file

    image = Image.fromarray(arr, "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_file(path) as tmp:
        if path.suffix.lower() == ".png":
            image.save(tmp, format="PNG")
        else:
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY)


_DETECTOR: Any = None


def _detector() -> Any:
    """The process's detector, built once."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = make_detector()
    return _DETECTOR


_BUSY = False


def _process(task: tuple[str, str, str, int, str, int]) -> dict[str, Any]:
    """Align one file (runs in the main process or a pool worker). Returns a result record."""
    global _BUSY
    _BUSY = True
    try:
        return _process_one(task)
    finally:
        _BUSY = False


def _process_one(task: tuple[str, str, str, int, str, int]) -> dict[str, Any]:
    rel, src, dst, size, no_face, min_face = task
    record: dict[str, Any] = {"path": rel}
    try:
        img = _read_rgb(Path(src))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        record.update(status="unreadable", reason=f"{type(exc).__name__}: {reason}")
        return record
    detector = _detector()  # outside the try: a detector that cannot be built stops the run
    try:
        aligned, info = align_image(img, detector, size, min_face)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop a long run
        record.update(status="failed", reason=f"{type(exc).__name__}: {exc}".splitlines()[0])
        return record
    record.update(info)
    out = Path(dst)
    if aligned is not None:
        _save(aligned, out)
        record["status"] = "aligned"
    elif no_face == "center":
        _save(center_crop(img, size), out)
        record.update(status="no_face", action="center crop written")
    else:
        record.update(status="no_face", action="skipped, nothing written")
    return record


def _worker_init() -> None:
    """Pool worker: leave Ctrl-C to the parent; a SIGTERM (the parent's ``terminate``) arriving
    while an image is being written unwinds the task so its temporary file is removed.

    TensorFlow's thread settings are left at their defaults, as in the parent process: changing the
    intra-op thread count changes MTCNN's float results in the last bits, and with them a few
    output pixels, which would break the promise that outputs do not depend on ``workers``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _term(signum: int, frame: object) -> None:
        if _BUSY:
            raise SystemExit(128 + signum)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, _term)
    _detector()


# --------------------------------------------------------------------------- folders


def _list_images(src: Path) -> list[Path]:
    """Image files under ``src`` (any depth), sorted by relative path; hidden names are skipped."""
    found = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(root, name))
    return sorted(found, key=lambda p: p.relative_to(src).as_posix())


def _check_inputs(
    src: Path, dst: Path, size: int, workers: int, no_face: str, min_face: int
) -> list[Path]:
    if not src.exists():
        raise BnnError(f"SRC: {src} does not exist")
    if not src.is_dir():
        raise BnnError(f"SRC: {src} is not a folder (give the top folder of the image tree)")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise BnnError(f"option --size: {size} is below the minimum {MIN_SIZE} (pixels)")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise BnnError(f"option --workers: {workers} must be an integer >= 1")
    if no_face not in ("center", "skip"):
        raise BnnError(f"option --no-face: {no_face!r} is not one of 'center', 'skip'")
    if isinstance(min_face, bool) or not isinstance(min_face, int) or min_face < MIN_FACE_LOWER:
        raise BnnError(
            f"option --min-face: {min_face} must be an integer >= {MIN_FACE_LOWER} (pixels)"
        )
    src_r = src.resolve()
    dst_r = dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise BnnError(f"DST: {dst} is inside SRC {src}; choose an output folder outside SRC")
    if dst.exists() and not dst.is_dir():
        raise BnnError(f"DST: {dst} exists and is not a folder")
    images = _list_images(src)
    if not images:
        raise BnnError(
            f"SRC: no images ({', '.join(IMAGE_SUFFIXES)}) under {src}; expected an LFW-style "
            "tree such as person/person_0001.jpg"
        )
    return images


def _check_existing_size(dst: Path, images: list[Path], src: Path, size: int) -> None:
    """Resuming into a DST made with another --size would mix sizes: refuse (one header read)."""
    for path in images:
        out = dst / path.relative_to(src)
        if out.exists():
            try:
                with Image.open(out) as image:
                    found = image.size
            except Exception:  # noqa: BLE001 - an odd file there is the user's; leave it alone
                return
            if found != (size, size):
                raise BnnError(
                    f"option --size: {dst} already holds {found[0]}x{found[1]} images (e.g. "
                    f"{out}); resume with --size {found[0]} or choose a new DST"
                )
            return


def _summary_lines(report: dict[str, Any]) -> list[str]:
    c = report["counts"]
    no_face_what = "center crop written" if report["settings"]["no_face"] == "center" else "skipped"
    lines = [
        f"aligned {c['aligned']} of {c['images']} images "
        f"({c['processed']} processed, {c['skipped_existing']} skipped: output already existed)",
        f"no face: {c['no_face']} ({no_face_what})",
        f"several faces: {c['multi_face']} (the largest / most central one aligned)",
        f"unreadable: {c['unreadable']} (nothing written)",
    ]
    if c["failed"]:
        lines.append(f"failed: {c['failed']} (detector error, nothing written)")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The text form of an align report (``align_report.txt``)."""
    s = report["settings"]
    lines = ["bnncube align report", ""]
    lines += [
        f"source:       {s['src']}",
        f"output:       {s['dst']}",
        f"size:         {s['size']}x{s['size']}",
        f"min face:     {s['min_face']} px (shorter box side)",
        f"no face:      {s['no_face']}",
        f"workers:      {s['workers']}",
        f"template:     {s['template_source']}",
    ]
    for name, (x, y) in zip(LANDMARK_NAMES, s["template"], strict=True):
        lines.append(f"  {name:<12} x={x:8.4f}  y={y:8.4f}")
    lines += ["", *_summary_lines(report)]
    t = report["timing"]
    lines.append(f"time: {t['seconds']:.1f} s, {t['images_per_s']:.2f} images/s (processed)")
    for key, title in (
        ("no_face", "no face"),
        ("multi_face", "several faces"),
        ("unreadable", "unreadable"),
        ("failed", "failed"),
    ):
        entries = report[key]
        if not entries:
            continue
        lines += ["", f"{title} ({len(entries)}):"]
        for e in entries:
            if key == "no_face":
                lines.append(f"  {e['path']}: {e['action']}")
            elif key == "multi_face":
                box = ", ".join(f"{v:.1f}" for v in e["box"])
                lines.append(f"  {e['path']}: {e['faces']} faces, chose box [{box}]")
            else:
                lines.append(f"  {e['path']}: {e['reason']} ({e['action']})")
    return "\n".join(lines) + "\n"


def _tasks(
    images: list[Path], src: Path, dst: Path, size: int, no_face: str, min_face: int
) -> Iterator[tuple[str, str, str, int, str, int]]:
    for path in images:
        rel = path.relative_to(src)
        yield (rel.as_posix(), str(path), str(dst / rel), size, no_face, min_face)


def align_folder(
    src: str | Path,
    dst: str | Path,
    size: int = 96,
    workers: int = 1,
    no_face: str = "center",
    min_face: int = 20,
    progress: bool = True,
    log: Log | None = print,
) -> dict[str, Any]:
    """Align every .jpg/.jpeg/.png under ``src`` into ``dst`` (same relative paths and suffixes).

    Outputs that already exist are skipped. Writes ``dst/align_report.json`` and
    ``dst/align_report.txt`` and returns the report dict (see docs/align.md). Raises BnnError for
    bad input (missing/empty ``src``, ``dst`` inside ``src``, size < 32, workers < 1, ...).
    """
    from tqdm import tqdm

    from bnncube.fsutil import write_text_files

    src = Path(src)
    dst = Path(dst)
    images = _check_inputs(src, dst, size, workers, no_face, min_face)
    say: Log = log if log is not None else (lambda _: None)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnnError(f"DST: cannot create {dst}: {exc.strerror}") from None

    todo = [t for t in _tasks(images, src, dst, size, no_face, min_face) if not Path(t[2]).exists()]
    skipped = len(images) - len(todo)
    if skipped:
        _check_existing_size(dst, images, src, size)
    records: list[dict[str, Any]] = []
    start = time.monotonic()
    bar = tqdm(
        total=len(images),
        initial=skipped,
        desc="align",
        unit="img",
        file=sys.stderr,
        disable=None if progress else True,  # None: no bar when stderr is not a terminal
        dynamic_ncols=True,
    )
    counts = {"aligned": 0, "no_face": 0, "multi": 0, "bad": 0}

    def take(record: dict[str, Any]) -> None:
        records.append(record)
        status = record["status"]
        if status == "aligned":
            counts["aligned"] += 1
        elif status == "no_face":
            counts["no_face"] += 1
        else:
            counts["bad"] += 1
        if record.get("faces", 0) >= 2:
            counts["multi"] += 1
        bar.update(1)
        bar.set_postfix(
            ok=counts["aligned"],
            noface=counts["no_face"],
            multi=counts["multi"],
            bad=counts["bad"],
            skip=skipped,
            refresh=False,
        )

    try:
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                take(_process(task))
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(min(workers, len(todo)), initializer=_worker_init)
            try:
                for record in pool.imap(_process, todo, chunksize=1):
                    take(record)
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
    finally:
        bar.close()
    seconds = time.monotonic() - start

    report = _build_report(src, dst, size, workers, no_face, min_face, images, skipped, records)
    report["timing"] = {
        "seconds": round(seconds, 3),
        "images_per_s": round(len(records) / seconds, 3) if seconds > 0 and records else 0.0,
    }
    json_path = dst / "align_report.json"
    txt_path = dst / "align_report.txt"
    write_text_files(
        {json_path: json.dumps(report, indent=2) + "\n", txt_path: format_report(report)}
    )
    for line in _summary_lines(report):
        say(line)
    say(f"wrote {json_path}, {txt_path}")
    return report


def _mtcnn_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtcnn")
    except PackageNotFoundError:
        return "(version unknown)"


def _build_report(
    src: Path,
    dst: Path,
    size: int,
    workers: int,
    no_face: str,
    min_face: int,
    images: list[Path],
    skipped: int,
    records: list[dict[str, Any]],
) -> dict[str, Any]:
    no_face_list = [
        {"path": r["path"], "action": r["action"], "small_faces": r.get("small_faces", 0)}
        for r in records
        if r["status"] == "no_face"
    ]
    multi = [
        {
            "path": r["path"],
            "faces": r["faces"],
            "box": r["box"],
            "confidence": r["confidence"],
        }
        for r in records
        if r["status"] == "aligned" and r["faces"] >= 2
    ]
    unreadable = [
        {"path": r["path"], "reason": r["reason"], "action": "nothing written"}
        for r in records
        if r["status"] == "unreadable"
    ]
    failed = [
        {"path": r["path"], "reason": r["reason"], "action": "nothing written"}
        for r in records
        if r["status"] == "failed"
    ]
    written = sum(
        1
        for r in records
        if r["status"] == "aligned" or (r["status"] == "no_face" and no_face == "center")
    )
    return {
        "tool": "bnncube align",
        "settings": {
            "src": str(src),
            "dst": str(dst),
            "size": size,
            "workers": workers,
            "no_face": no_face,
            "min_face": min_face,
            "detector": f"mtcnn {_mtcnn_version()} (PNet, RNet, ONet on the CPU)",
            "template": [[round(float(v), 4) for v in p] for p in template(size)],
            "template_names": list(LANDMARK_NAMES),
            "template_source": TEMPLATE_SOURCE,
            "center_crop_fraction": CENTER_CROP_FRACTION,
            "choice_rule": (
                "largest box, unless a box with >= 80% of its area is closer to the image centre"
            ),
            "output_format": "same suffix as the source: JPEG quality 95, or PNG",
        },
        "counts": {
            "images": len(images),
            "processed": len(records),
            "skipped_existing": skipped,
            "aligned": sum(1 for r in records if r["status"] == "aligned"),
            "no_face": len(no_face_list),
            "multi_face": len(multi),
            "unreadable": len(unreadable),
            "failed": len(failed),
            "written": written,
        },
        "no_face": no_face_list,
        "multi_face": multi,
        "unreadable": unreadable,
        "failed": failed,
    }
