"""Synthetic face-like identities in LFW's folder layout and ``pairs.txt`` format.

This is a STAND-IN FOR REAL FACES, NOT A FACE MODEL. No face dataset with identities is reachable
from the build and test machines, so the face-verification harness is exercised on cartoon
"faces" drawn here: each identity is a fixed set of geometric and colour parameters (head ellipse,
hair, skin/hair/eye colours, eye spacing and size, eyebrows, nose, mouth, a low-frequency skin
texture), and each image adds per-image nuisances (pose jitter, lighting, blur, noise, occasional
occlusion). The images are roughly aligned like MTCNN crops (eyes on a fixed row), so a 96x96
network can learn to tell the identities apart. Accuracy measured on this data says nothing about
accuracy on real faces; use a real LFW copy for that.

Everything is deterministic for a seed: :func:`write_dataset` and :func:`write_pairs` produce the
same bytes on every run with the same numpy and Pillow (libjpeg) versions.

Layout written by :func:`write_dataset` (LFW's)::

    root/Person_0001/Person_0001_0001.jpg
    root/Person_0001/Person_0001_0002.jpg
    ...

``pairs.txt`` (LFW View 2 format, read by :func:`read_pairs`, which also reads the real file)::

    10<TAB>300
    Name<TAB>i<TAB>j                      (per_fold matched lines, 1-based image numbers)
    Name1<TAB>i<TAB>Name2<TAB>j           (per_fold mismatched lines)
    ... repeated for each fold
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bnncube.errors import BnnError

__all__ = [
    "EYE_ROW",
    "JPEG_QUALITY",
    "Identity",
    "Pair",
    "generate_identity",
    "identity_name",
    "image_path",
    "read_pairs",
    "render",
    "write_dataset",
    "write_pairs",
]

#: JPEG quality used by :func:`write_dataset` (fixed, so output bytes are reproducible).
JPEG_QUALITY = 92

#: Canonical eye row, in face coordinates where the crop spans [-1, 1] on both axes; in pixels the
#: eyes sit near row ``(1 + EYE_ROW) / 2 * size`` (about 0.41 * size) before pose jitter.
EYE_ROW = -0.18

_Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Identity:
    """The stable, per-person parameters of a synthetic face (face coordinates span [-1, 1])."""

    head_rx: float
    head_ry: float
    head_cy: float
    skin: _Colour
    hair: _Colour
    hairline: float  # y of the hairline inside the head (smaller = higher forehead)
    hair_volume: float  # how far the hair extends beyond the head outline
    eye_colour: _Colour
    eye_dx: float  # half the distance between the eye centres
    eye_r: float
    brow_gap: float
    brow_angle: float  # radians; positive lifts the outer ends
    brow_thickness: float
    nose_length: float
    nose_width: float
    mouth_y: float
    mouth_width: float
    mouth_curve: float  # positive = smile
    lip: _Colour
    beard: float  # 0 = none, else the beard's opacity
    texture: tuple[tuple[float, float, float, float], ...]  # (fx, fy, phase, amplitude)


@dataclass(frozen=True)
class Pair:
    """One line of ``pairs.txt``: two images, by person name and 1-based image number."""

    fold: int  # 0-based
    name1: str
    index1: int
    name2: str
    index2: int

    @property
    def matched(self) -> bool:
        return self.name1 == self.name2

    def paths(self, root: Path | str, ext: str = ".jpg") -> tuple[Path, Path]:
        return (
            image_path(root, self.name1, self.index1, ext),
            image_path(root, self.name2, self.index2, ext),
        )


def identity_name(index: int) -> str:
    """The folder name of identity ``index`` (0-based): ``Person_0001`` for index 0."""
    return f"Person_{index + 1:04d}"


def image_path(root: Path | str, name: str, index: int, ext: str = ".jpg") -> Path:
    """LFW's image path: ``root/name/name_0001.jpg`` for 1-based ``index`` 1."""
    return Path(root) / name / f"{name}_{index:04d}{ext}"


# --------------------------------------------------------------------------------------------
# Identities


def _colour(rng: np.random.Generator, lo: Iterable[float], hi: Iterable[float]) -> _Colour:
    c = rng.uniform(np.asarray(list(lo)), np.asarray(list(hi)))
    return (float(c[0]), float(c[1]), float(c[2]))


def generate_identity(rng: np.random.Generator) -> Identity:
    """Draw a new identity's stable features from ``rng``."""
    u = rng.uniform
    # Skin: a tone along a light-to-dark axis plus a small hue shift.
    tone = u(0.25, 1.0)
    skin = _colour(rng, (0.0, 0.0, 0.0), (0.08, 0.06, 0.06))
    skin = (
        min(1.0, 0.35 + 0.6 * tone + skin[0]),
        min(1.0, 0.22 + 0.55 * tone + skin[1]),
        min(1.0, 0.15 + 0.45 * tone + skin[2]),
    )
    hair_kind = int(rng.integers(0, 5))
    hair_palette: list[tuple[tuple[float, ...], tuple[float, ...]]] = [
        ((0.02, 0.02, 0.02), (0.15, 0.12, 0.10)),  # black
        ((0.25, 0.15, 0.08), (0.45, 0.30, 0.18)),  # brown
        ((0.70, 0.55, 0.30), (0.90, 0.78, 0.50)),  # blond
        ((0.50, 0.20, 0.08), (0.75, 0.35, 0.15)),  # red (index 4 = grey, below)
    ]
    if hair_kind == len(hair_palette):  # grey: equal channels
        grey = float(u(0.55, 0.85))
        hair = (grey, grey, grey * 0.97)
    else:
        hair = _colour(rng, *hair_palette[hair_kind])
    eye_kind = int(rng.integers(0, 3))
    eye_palette: list[tuple[tuple[float, ...], tuple[float, ...]]] = [
        ((0.20, 0.10, 0.05), (0.40, 0.25, 0.12)),  # brown
        ((0.20, 0.35, 0.55), (0.40, 0.60, 0.85)),  # blue
        ((0.25, 0.40, 0.20), (0.45, 0.60, 0.35)),  # green
    ]
    n_tex = 3
    texture = tuple(
        (
            float(u(-2.0, 2.0)),
            float(u(-2.0, 2.0)),
            float(u(0.0, 2.0 * math.pi)),
            float(u(0.03, 0.09)),
        )
        for _ in range(n_tex)
    )
    return Identity(
        head_rx=float(u(0.50, 0.68)),
        head_ry=float(u(0.68, 0.86)),
        head_cy=float(u(0.00, 0.10)),
        skin=skin,
        hair=hair,
        hairline=float(u(-0.62, -0.38)),
        hair_volume=float(u(0.02, 0.16)),
        eye_colour=_colour(rng, *eye_palette[eye_kind]),
        eye_dx=float(u(0.18, 0.30)),
        eye_r=float(u(0.045, 0.075)),
        brow_gap=float(u(0.09, 0.16)),
        brow_angle=float(u(-0.35, 0.35)),
        brow_thickness=float(u(0.015, 0.045)),
        nose_length=float(u(0.18, 0.32)),
        nose_width=float(u(0.05, 0.11)),
        mouth_y=float(u(0.28, 0.42)),
        mouth_width=float(u(0.12, 0.24)),
        mouth_curve=float(u(-0.06, 0.08)),
        lip=_colour(rng, (0.45, 0.12, 0.12), (0.80, 0.40, 0.38)),
        beard=float(u(0.5, 0.9)) if rng.random() < 0.2 else 0.0,
        texture=texture,
    )


# --------------------------------------------------------------------------------------------
# Rendering


def _cover(dist: np.ndarray, px: float) -> np.ndarray:
    """Antialiased coverage from an approximate signed distance (negative = inside)."""
    return np.clip(0.5 - dist / px, 0.0, 1.0)


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return (r - 1.0) * min(rx, ry)


def _box(
    x: np.ndarray,
    y: np.ndarray,
    cx: float,
    cy: float,
    hw: float,
    hh: float,
    angle: float = 0.0,
) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    lx = (x - cx) * c + (y - cy) * s
    ly = -(x - cx) * s + (y - cy) * c
    return np.maximum(np.abs(lx) - hw, np.abs(ly) - hh)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: _Colour | np.ndarray) -> None:
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, dtype=np.float64)


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    h, w = img.shape[:2]
    p = np.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    out = sum(k[i] * p[i : i + h] for i in range(k.size))
    p = np.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i : i + w] for i in range(k.size))


def render(identity: Identity, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """One ``[size, size, 3]`` uint8 image of ``identity`` with nuisances drawn from ``rng``."""
    if size < 16:
        raise BnnError(f"synthetic faces: size {size} is too small (need >= 16)")
    u = rng.uniform
    idt = identity
    # Pose jitter (similarity transform from face coordinates to the crop).
    angle = float(u(-0.10, 0.10))  # about +-6 degrees
    scale = float(u(0.93, 1.07))
    tx, ty = float(u(-0.06, 0.06)), float(u(-0.06, 0.06))
    # Pixel centres in crop coordinates [-1, 1], mapped back into face coordinates.
    g = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    cu, cv = np.meshgrid(g, g)
    c, s = math.cos(angle), math.sin(angle)
    du, dv = cu - tx, cv - ty
    x = (c * du + s * dv) / scale
    y = (-s * du + c * dv) / scale
    px = 2.0 / size / scale

    # Background: a per-image colour with a soft vertical gradient.
    bg = np.clip(u(0.3, 0.7) + rng.uniform(-0.1, 0.1, size=3), 0.0, 1.0)
    bg2 = np.clip(bg + rng.uniform(-0.1, 0.1, size=3), 0.0, 1.0)
    tt = ((cv + 1.0) / 2.0)[..., None]
    img = (1.0 - tt) * bg + tt * bg2

    hx, hy = idt.head_rx, idt.head_ry
    cy = idt.head_cy
    # Hair behind the head, neck, ears.
    hv = idt.hair_volume
    hair_back = _ellipse(x, y, 0.0, cy - hv, hx + hv, hy + hv)
    hair_back = np.maximum(hair_back, y - (cy + 0.15))
    _paint(img, _cover(hair_back, px), idt.hair)
    skin = np.asarray(idt.skin)
    _paint(img, _cover(_box(x, y, 0.0, cy + hy, 0.26, 0.35), px), skin * 0.85)
    for side in (-1.0, 1.0):
        ear = _ellipse(x, y, side * hx, EYE_ROW + 0.08, 0.08, 0.14)
        _paint(img, _cover(ear, px), skin * 0.92)

    # Head with a low-frequency texture and soft shading.
    head = _ellipse(x, y, 0.0, cy, hx, hy)
    tex = np.ones_like(x)
    for fx, fy, ph, amp in idt.texture:
        tex += amp * np.cos(math.pi * (fx * x + fy * y) + ph)
    shade = 1.0 - 0.18 * np.clip(((x / hx) ** 2 + ((y - cy) / hy) ** 2), 0.0, 1.0)
    face = np.clip(skin * (tex * shade)[..., None], 0.0, 1.0)
    a = _cover(head, px)[..., None]
    img = img * (1.0 - a) + face * a

    # Beard on the lower face, hair cap on the upper face.
    if idt.beard > 0.0:
        beard = np.maximum(head, idt.mouth_y - 0.10 - y)
        _paint(img, _cover(beard, px) * idt.beard, idt.hair)
    cap = np.maximum(head + 0.0, y - (idt.hairline + 0.06 * np.cos(2.5 * x)))
    _paint(img, _cover(cap, px), idt.hair)

    # Eyebrows.
    by = EYE_ROW - idt.brow_gap
    for side in (-1.0, 1.0):
        brow = _box(
            x, y, side * idt.eye_dx, by, idt.eye_r * 1.9, idt.brow_thickness, -side * idt.brow_angle
        )
        _paint(img, _cover(brow, px) * 0.9, np.asarray(idt.hair) * 0.7)

    # Eyes: sclera, iris, pupil; the gaze shifts a little per image.
    gx, gy = float(u(-0.3, 0.3)) * idt.eye_r, float(u(-0.15, 0.15)) * idt.eye_r
    for side in (-1.0, 1.0):
        ex = side * idt.eye_dx
        _paint(
            img,
            _cover(_ellipse(x, y, ex, EYE_ROW, idt.eye_r * 1.7, idt.eye_r), px),
            (0.93, 0.92, 0.90),
        )
        r_iris = idt.eye_r * 0.8
        _paint(
            img, _cover(_ellipse(x, y, ex + gx, EYE_ROW + gy, r_iris, r_iris), px), idt.eye_colour
        )
        r_pupil = idt.eye_r * 0.38
        _paint(
            img,
            _cover(_ellipse(x, y, ex + gx, EYE_ROW + gy, r_pupil, r_pupil), px),
            (0.03, 0.03, 0.03),
        )

    # Nose: a shaded ridge and two nostrils.
    n_top, n_tip = EYE_ROW + 0.06, EYE_ROW + 0.06 + idt.nose_length
    ridge = _box(x, y, 0.02, (n_top + n_tip) / 2, idt.nose_width * 0.25, (n_tip - n_top) / 2)
    _paint(img, _cover(ridge, px) * 0.35, skin * 0.6)
    for side in (-1.0, 1.0):
        nostril = _ellipse(x, y, side * idt.nose_width * 0.6, n_tip, idt.nose_width * 0.35, 0.025)
        _paint(img, _cover(nostril, px) * 0.8, skin * 0.45)

    # Mouth: a curved band; the opening varies a little per image.
    mw = idt.mouth_width
    yc = idt.mouth_y + idt.mouth_curve * (1.0 - (x / mw) ** 2)
    half_t = 0.022 + float(u(0.0, 0.012))
    mouth = np.maximum(np.abs(x) - mw, np.abs(y - yc) - half_t)
    _paint(img, _cover(mouth, px), idt.lip)
    _paint(
        img,
        _cover(np.maximum(np.abs(x) - mw * 0.9, np.abs(y - yc) - 0.006), px) * 0.7,
        np.asarray(idt.lip) * 0.4,
    )

    # Lighting: global gain, colour cast, linear gradient across the crop.
    gain = float(u(0.75, 1.2))
    cast = rng.uniform(0.94, 1.06, size=3)
    grad = rng.uniform(-0.25, 0.25, size=2)
    light = gain * (1.0 + grad[0] * cu + grad[1] * cv)
    img = img * light[..., None] * cast

    # Occlusion: sometimes a rectangle over part of the face.
    if rng.random() < 0.15:
        w_, h_ = u(0.15, 0.40) * size, u(0.15, 0.40) * size
        x0, y0 = u(0.15, 0.85) * size - w_ / 2, u(0.2, 0.85) * size - h_ / 2
        col = (np.arange(size) + 0.5)[None, :]
        row = (np.arange(size) + 0.5)[:, None]
        occ = (col >= x0) & (col < x0 + w_) & (row >= y0) & (row < y0 + h_)
        img[occ] = rng.uniform(0.0, 1.0, size=3)

    img = _gaussian_blur(img, float(u(0.0, 1.2)) * size / 96.0)
    img = img + rng.normal(0.0, float(u(0.0, 0.03)), size=img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Dataset and pairs


def write_dataset(
    root: Path | str,
    n_identities: int,
    images_per_identity: int | tuple[int, int],
    seed: int,
    size: int = 96,
) -> Path:
    """Write ``n_identities`` synthetic people in LFW's layout under ``root``; return ``root``.

    ``images_per_identity`` is a count, or an inclusive ``(min, max)`` range drawn per identity.
    Identity ``i`` and its images come from generators seeded ``[seed, i]`` and
    ``[seed, i, j]``, so the output is the same for a seed, byte for byte (JPEG at
    :data:`JPEG_QUALITY`, no optimisation, 4:2:0 subsampling, no metadata).
    """
    if n_identities < 1:
        raise BnnError(f"synthetic faces: n_identities must be >= 1, got {n_identities}")
    if isinstance(images_per_identity, int):
        lo = hi = images_per_identity
    else:
        lo, hi = images_per_identity
    if lo < 1 or hi < lo:
        raise BnnError(
            f"synthetic faces: images_per_identity {images_per_identity!r} must be >= 1 "
            "(or a (min, max) range with 1 <= min <= max)"
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_identities):
        rng = np.random.default_rng([seed, i])
        identity = generate_identity(rng)
        count = int(rng.integers(lo, hi + 1))
        name = identity_name(i)
        (root / name).mkdir(exist_ok=True)
        for j in range(count):
            img = render(identity, np.random.default_rng([seed, i, j]), size=size)
            Image.fromarray(img, mode="RGB").save(
                image_path(root, name, j + 1),
                format="JPEG",
                quality=JPEG_QUALITY,
                optimize=False,
                subsampling=2,
            )
    return root


_IMAGE_RE = re.compile(r"^(?P<name>.+)_(?P<index>\d{4})\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def _scan(root: Path) -> dict[str, list[int]]:
    """Person name -> sorted 1-based image numbers found under ``root`` (LFW layout)."""
    if not root.is_dir():
        raise BnnError(f"{root}: not a directory (expected LFW layout root/Name/Name_0001.jpg)")
    people: dict[str, list[int]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        idx = []
        for f in d.iterdir():
            m = _IMAGE_RE.match(f.name)
            if m and m.group("name") == d.name and f.is_file():
                idx.append(int(m.group("index")))
        if idx:
            people[d.name] = sorted(idx)
    if not people:
        raise BnnError(f"{root}: no images in LFW layout (root/Name/Name_0001.jpg)")
    return people


def _sample_unique(
    rng: np.random.Generator,
    total: int,
    need: int,
    enumerate_all: Callable[[], list[tuple[str, int, str, int]]],
    draw: Callable[[], tuple[str, int, str, int]],
) -> list[tuple[str, int, str, int]]:
    """``need`` distinct pairs out of ``total`` possible ones: enumerate when small, else reject."""
    if total <= 200_000 or need * 4 > total:
        every = enumerate_all()
        pick = rng.choice(len(every), size=need, replace=False)
        return [every[int(k)] for k in pick]
    seen: set[tuple[str, int, str, int]] = set()
    out: list[tuple[str, int, str, int]] = []
    while len(out) < need:
        p = draw()
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def write_pairs(
    root: Path | str,
    path: Path | str,
    folds: int = 10,
    per_fold: int = 300,
    seed: int = 0,
) -> Path:
    """Write an LFW-format ``pairs.txt`` for the images under ``root``; return ``path``.

    Each fold holds ``per_fold`` matched lines (one person, two different images, only people
    with at least two images) then ``per_fold`` mismatched lines (two different people). Image
    numbers are 1-based and point at files that exist; no pair appears twice in the file (pairs
    are unordered). Within a fold, lines are sorted by name, as in LFW; unlike LFW, a person may
    appear in several folds. Raises :class:`BnnError` when there are not enough distinct pairs.
    """
    if folds < 1 or per_fold < 1:
        raise BnnError(f"pairs: folds and per_fold must be >= 1, got {folds} and {per_fold}")
    root, path = Path(root), Path(path)
    people = _scan(root)
    names = sorted(people)
    need = folds * per_fold
    rng = np.random.default_rng([seed, 0x9A125])

    multi = [n for n in names if len(people[n]) >= 2]
    total_matched = sum(len(people[n]) * (len(people[n]) - 1) // 2 for n in multi)
    if total_matched < need:
        raise BnnError(
            f"{root}: only {total_matched} distinct matched pairs (people with >= 2 images), "
            f"{need} needed for {folds} folds x {per_fold}"
        )
    counts = np.array([len(people[n]) for n in names], dtype=np.int64)
    n_img = int(counts.sum())
    total_mismatched = (n_img * n_img - int((counts**2).sum())) // 2
    if total_mismatched < need:
        raise BnnError(
            f"{root}: only {total_mismatched} distinct mismatched pairs, {need} needed for "
            f"{folds} folds x {per_fold}"
        )

    def all_matched() -> list[tuple[str, int, str, int]]:
        out = []
        for n in multi:
            ix = people[n]
            for a in range(len(ix)):
                for b in range(a + 1, len(ix)):
                    out.append((n, ix[a], n, ix[b]))
        return out

    mweights = np.array([len(people[n]) ** 2 for n in multi], dtype=np.float64)
    mweights /= mweights.sum()

    def draw_matched() -> tuple[str, int, str, int]:
        n = multi[int(rng.choice(len(multi), p=mweights))]
        a, b = sorted(int(v) for v in rng.choice(people[n], size=2, replace=False))
        return (n, a, n, b)

    def all_mismatched() -> list[tuple[str, int, str, int]]:
        out = []
        for ia, na in enumerate(names):
            for nb in names[ia + 1 :]:
                for a in people[na]:
                    for b in people[nb]:
                        out.append((na, a, nb, b))
        return out

    iweights = counts / counts.sum()

    def draw_mismatched() -> tuple[str, int, str, int]:
        while True:
            ka, kb = (int(v) for v in rng.choice(len(names), size=2, p=iweights))
            if ka != kb:
                break
        na, nb = sorted((names[ka], names[kb]))
        return (na, int(rng.choice(people[na])), nb, int(rng.choice(people[nb])))

    matched = _sample_unique(rng, total_matched, need, all_matched, draw_matched)
    mismatched = _sample_unique(rng, total_mismatched, need, all_mismatched, draw_mismatched)

    lines = [f"{folds}\t{per_fold}"]
    for f in range(folds):
        chunk = slice(f * per_fold, (f + 1) * per_fold)
        lines += [f"{n}\t{a}\t{b}" for n, a, _, b in sorted(matched[chunk])]
        lines += [f"{na}\t{a}\t{nb}\t{b}" for na, a, nb, b in sorted(mismatched[chunk])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode("ascii"))
    return path


def _positive_int(text: str, path: Path, lineno: int, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # not '²', which int() refuses
        raise BnnError(f"{path}:{lineno}: {what} {text!r} is not a positive integer")
    return int(text)


def read_pairs(path: Path | str) -> list[Pair]:
    """Parse an LFW ``pairs.txt`` (View 2 ``folds<TAB>per_fold`` header, or a single count).

    Fields may be separated by tabs or spaces; ``\\r\\n`` line endings and trailing blank lines
    are accepted. A malformed file raises :class:`BnnError` naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BnnError(f"{path}: pairs file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BnnError(f"{path}: cannot read pairs file ({e})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise BnnError(f"{path}:1: empty pairs file (expected a header such as '10\\t300')")
    head = lines[0].split()
    if len(head) == 2:
        folds = _positive_int(head[0], path, 1, "fold count")
        per_fold = _positive_int(head[1], path, 1, "pairs per fold")
        per_set = per_fold  # matched lines, then as many mismatched lines, per fold
    elif len(head) == 1:  # pairsDevTrain/DevTest style: N matched then N mismatched
        folds = 1
        per_fold = per_set = _positive_int(head[0], path, 1, "pair count")
    else:
        raise BnnError(
            f"{path}:1: header {lines[0]!r} should be 'folds<TAB>pairs_per_fold' (e.g. '10\\t300')"
        )
    expected = folds * 2 * per_set
    body = lines[1:]
    if len(body) != expected:
        lineno = min(len(body), expected) + 2
        raise BnnError(
            f"{path}:{lineno}: expected {expected} pair lines after the header "
            f"({folds} folds x {per_fold} matched + {per_fold} mismatched), found {len(body)}"
        )
    pairs: list[Pair] = []
    for k, line in enumerate(body):
        lineno = k + 2
        fold, pos = divmod(k, 2 * per_set)
        want_matched = pos < per_set
        fields = line.split()
        if want_matched:
            if len(fields) != 3:
                raise BnnError(
                    f"{path}:{lineno}: expected a matched pair 'name<TAB>i<TAB>j' "
                    f"(fold {fold + 1}), got {len(fields)} fields: {line!r}"
                )
            name, i, j = fields
            pairs.append(
                Pair(
                    fold,
                    name,
                    _positive_int(i, path, lineno, "image number"),
                    name,
                    _positive_int(j, path, lineno, "image number"),
                )
            )
        else:
            if len(fields) != 4:
                raise BnnError(
                    f"{path}:{lineno}: expected a mismatched pair 'name1<TAB>i<TAB>name2<TAB>j' "
                    f"(fold {fold + 1}), got {len(fields)} fields: {line!r}"
                )
            n1, i, n2, j = fields
            if n1 == n2:
                raise BnnError(f"{path}:{lineno}: mismatched pair names the same person {n1!r}")
            pairs.append(
                Pair(
                    fold,
                    n1,
                    _positive_int(i, path, lineno, "image number"),
                    n2,
                    _positive_int(j, path, lineno, "image number"),
                )
            )
    return pairs
