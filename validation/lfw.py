"""LFW-style face verification protocol: scores, 10-fold accuracy, ROC/AUC, TAR@FAR, EER.

Numpy only. Pairs are plain data: for each pair the index of both embeddings (``None`` or a
negative / out-of-range index means the image is missing), whether it is a matched pair, and its
fold. Reading ``pairs.txt`` lives elsewhere; :func:`lfw_folds` gives the standard fold of each line
position (600 consecutive pairs per fold). The exact protocol is documented in ``docs/lfw.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Metric = Literal["cosine", "euclidean"]

__all__ = [
    "FoldResult",
    "Pairs",
    "auc",
    "eer",
    "evaluate",
    "flip_fused",
    "format_report",
    "lfw_folds",
    "normalize",
    "pair_scores",
    "pairs_from_records",
    "roc",
    "tar_at_far",
    "ten_fold_accuracy",
]


# --------------------------------------------------------------------------- embeddings, scores


def normalize(emb: npt.ArrayLike, eps: float = 1e-12) -> FloatArray:
    """L2-normalise along the last axis. Zero (or near-zero) vectors stay zero, never NaN."""
    x = np.asarray(emb, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > eps, x / np.maximum(norm, eps), 0.0)


def flip_fused(emb: npt.ArrayLike, emb_flip: npt.ArrayLike) -> FloatArray:
    """Flip test-time augmentation: ``normalize(e + e_flip)`` (raw sum, then one normalisation)."""
    a = np.asarray(emb, dtype=np.float64)
    b = np.asarray(emb_flip, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"flip embeddings {b.shape} do not match embeddings {a.shape}")
    return normalize(a + b)


def pair_scores(
    emb_a: npt.ArrayLike, emb_b: npt.ArrayLike, metric: Metric = "cosine"
) -> FloatArray:
    """Similarity of row i of ``emb_a`` with row i of ``emb_b``; higher always means "same".

    ``cosine``: cosine similarity of the L2-normalised rows, in [-1, 1].
    ``euclidean``: minus the Euclidean distance of the L2-normalised rows, in [-2, 0]. On unit
    vectors ``d = sqrt(2 - 2 cos)``, so both metrics rank pairs identically (zero vectors aside).
    """
    a = normalize(emb_a)
    b = normalize(emb_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (n, d) arrays of equal shape, got {a.shape} and {b.shape}")
    if metric == "cosine":
        return np.einsum("ij,ij->i", a, b)
    if metric == "euclidean":
        return -np.linalg.norm(a - b, axis=1)
    raise ValueError(f"unknown metric {metric!r} (cosine or euclidean)")


# --------------------------------------------------------------------------- 10-fold accuracy


@dataclass(frozen=True)
class FoldResult:
    """Per-fold accuracies and thresholds; ``std`` is the population std (ddof=0)."""

    folds: list[int]
    accuracies: list[float]
    thresholds: list[float]
    mean: float
    std: float
    std_sample: float
    n_test: list[int] = field(default_factory=list)


def _best_threshold(scores: FloatArray, same: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """Threshold maximising accuracy of the rule ``same iff score > t`` on these pairs.

    Candidates: below the smallest unique score (``min - 1``), every midpoint between consecutive
    sorted unique scores, above the largest (``max + 1``). Ties: the smallest best candidate.
    Returns (threshold, training accuracy).
    """
    if scores.size == 0:
        raise ValueError("no training pairs to choose a threshold on")
    uniq, inv = np.unique(scores, return_inverse=True)
    n_same_at = np.bincount(inv, weights=same.astype(np.float64), minlength=uniq.size)
    n_diff_at = np.bincount(inv, weights=(~same).astype(np.float64), minlength=uniq.size)
    # candidate c (0..m) puts the c smallest unique values below the threshold
    diff_below = np.concatenate(([0.0], np.cumsum(n_diff_at)))
    same_below = np.concatenate(([0.0], np.cumsum(n_same_at)))
    correct = diff_below + (same_below[-1] - same_below)
    c = int(np.argmax(correct))  # first maximum = smallest threshold
    if c == 0:
        t = float(uniq[0]) - 1.0
    elif c == uniq.size:
        t = float(uniq[-1]) + 1.0
    else:
        t = float((uniq[c - 1] + uniq[c]) / 2.0)
    return t, float(correct[c] / scores.size)


def ten_fold_accuracy(
    scores: npt.ArrayLike, same: npt.ArrayLike, folds: npt.ArrayLike
) -> FoldResult:
    """Standard LFW accuracy: for each fold, threshold chosen on all other folds, applied to it.

    Works for any number of folds (the distinct values of ``folds``, in sorted order). A pair is
    predicted "same" iff ``score > threshold``.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    f = np.asarray(folds)
    if not (s.shape == y.shape == f.shape) or s.ndim != 1:
        raise ValueError("scores, same and folds must be 1-D arrays of equal length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    fold_ids = [int(k) for k in np.unique(f)]
    if len(fold_ids) < 2:
        raise ValueError("need at least two folds")
    accs: list[float] = []
    ths: list[float] = []
    n_test: list[int] = []
    for k in fold_ids:
        test = f == k
        t, _ = _best_threshold(s[~test], y[~test])
        pred = s[test] > t
        accs.append(float(np.mean(pred == y[test])))
        ths.append(t)
        n_test.append(int(test.sum()))
    a = np.asarray(accs)
    return FoldResult(
        folds=fold_ids,
        accuracies=accs,
        thresholds=ths,
        mean=float(a.mean()),
        std=float(a.std(ddof=0)),
        std_sample=float(a.std(ddof=1)) if a.size > 1 else 0.0,
        n_test=n_test,
    )


# --------------------------------------------------------------------------- ROC, AUC, TAR, EER


def roc(scores: npt.ArrayLike, same: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Exact ROC for the rule ``accept iff score >= t``, t over all unique scores (descending).

    The first point is (0, 0) at ``t = +inf`` (nothing accepted); the last is (1, 1) at the smallest
    score. Tied scores move together, so each point is an achievable operating point.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both matched and mismatched pairs")
    uniq, inv = np.unique(s, return_inverse=True)
    pos_at = np.bincount(inv, weights=y.astype(np.float64), minlength=uniq.size)[::-1]
    neg_at = np.bincount(inv, weights=(~y).astype(np.float64), minlength=uniq.size)[::-1]
    tp = np.concatenate(([0.0], np.cumsum(pos_at)))
    fp = np.concatenate(([0.0], np.cumsum(neg_at)))
    thresholds = np.concatenate(([np.inf], uniq[::-1]))
    return fp / n_neg, tp / n_pos, thresholds


def auc(fpr: npt.ArrayLike, tpr: npt.ArrayLike) -> float:
    """Area under the ROC by the trapezoid rule (fpr must be non-decreasing)."""
    x = np.asarray(fpr, dtype=np.float64)
    yv = np.asarray(tpr, dtype=np.float64)
    if x.shape != yv.shape or x.ndim != 1:
        raise ValueError("fpr and tpr must be 1-D arrays of equal length")
    if np.any(np.diff(x) < 0):
        raise ValueError("fpr must be non-decreasing")
    return float(np.sum(np.diff(x) * (yv[1:] + yv[:-1]) / 2.0))


@dataclass(frozen=True)
class TarAtFar:
    tar: float
    far: float  # the FAR actually achieved (<= requested)
    threshold: float  # accept iff score >= threshold
    false_accepts: int
    max_false_accepts: int  # floor(far * n_negatives)
    n_negatives: int
    underresolved: bool  # requested far < 1 / n_negatives: only FAR = 0 is admissible


def tar_at_far(scores: npt.ArrayLike, same: npt.ArrayLike, far: float = 1e-3) -> TarAtFar:
    """Largest TAR over exact ROC points whose FAR is <= ``far``.

    Counted in integers: at most ``floor(far * n_neg)`` false accepts (3 of 3000 negatives at 1e-3).
    Tied scores cannot be split, so if a tie straddles the limit the stricter point is used. With
    too few negatives (``far * n_neg < 1``) only zero false accepts are allowed and the result is
    flagged ``underresolved``.
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError("far must be in [0, 1]")
    fpr, tpr, th = roc(scores, same)
    n_neg = int(np.size(same) - np.count_nonzero(same))
    max_fa = int(math.floor(far * n_neg + 1e-9))
    fa = np.rint(fpr * n_neg).astype(np.int64)
    ok = fa <= max_fa
    i = int(np.flatnonzero(ok)[-1])  # tpr is non-decreasing: last admissible point is the best
    return TarAtFar(
        tar=float(tpr[i]),
        far=float(fpr[i]),
        threshold=float(th[i]),
        false_accepts=int(fa[i]),
        max_false_accepts=max_fa,
        n_negatives=n_neg,
        underresolved=max_fa == 0 and far > 0.0,
    )


def eer(fpr: npt.ArrayLike, tpr: npt.ArrayLike) -> float:
    """Equal error rate: where FAR = FRR (= 1 - TAR), linearly interpolated along the ROC."""
    x = np.asarray(fpr, dtype=np.float64)
    d = (1.0 - np.asarray(tpr, dtype=np.float64)) - x  # FRR - FAR, non-increasing along the ROC
    idx = np.flatnonzero(d <= 0.0)
    i = int(idx[0])  # exists: the last ROC point is (1, 1), d = -1
    if d[i] == 0.0 or i == 0:
        return float(x[i])
    w = d[i - 1] / (d[i - 1] - d[i])
    return float(x[i - 1] + w * (x[i] - x[i - 1]))


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pairs:
    """Pairs as arrays; ``idx_a``/``idx_b`` are -1 where the image is missing."""

    idx_a: npt.NDArray[np.int64]
    idx_b: npt.NDArray[np.int64]
    same: npt.NDArray[np.bool_]
    fold: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.same.size)


def lfw_folds(n_pairs: int = 6000, n_folds: int = 10) -> npt.NDArray[np.int64]:
    """Fold of each pair by its position in ``pairs.txt`` (equal consecutive blocks)."""
    if n_pairs % n_folds:
        raise ValueError(f"{n_pairs} pairs do not split into {n_folds} equal folds")
    return np.repeat(np.arange(n_folds, dtype=np.int64), n_pairs // n_folds)


def pairs_from_records(records: Iterable[Sequence[Any]] | Pairs) -> Pairs:
    """``(index_a, index_b, same, fold)`` tuples -> :class:`Pairs` (``None`` index = missing)."""
    if isinstance(records, Pairs):
        return records
    rows = list(records)
    if not rows:
        raise ValueError("no pairs")

    def idx(v: Any) -> int:
        return -1 if v is None else int(v)

    return Pairs(
        idx_a=np.array([idx(r[0]) for r in rows], dtype=np.int64),
        idx_b=np.array([idx(r[1]) for r in rows], dtype=np.int64),
        same=np.array([bool(r[2]) for r in rows], dtype=bool),
        fold=np.array([int(r[3]) for r in rows], dtype=np.int64),
    )


# --------------------------------------------------------------------------- evaluation


def evaluate(
    embeddings: npt.ArrayLike,
    pairs: Iterable[Sequence[Any]] | Pairs,
    flip_embeddings: npt.ArrayLike | None = None,
    metric: Metric = "cosine",
    far: float = 1e-3,
) -> dict[str, Any]:
    """Full LFW-style evaluation of one embedding table (one row per image).

    With ``flip_embeddings`` (same shape, row i = embedding of the mirrored image i) each image is
    represented by ``normalize(e + e_flip)``. A pair is *missing* when either index is ``None``,
    negative, out of range, or points at a row with non-finite values; missing pairs are left out of
    every metric and reported (count, per fold, the first indices).
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (n_images, dim), got {emb.shape}")
    flip_used = flip_embeddings is not None
    if flip_embeddings is not None:
        fl = np.asarray(flip_embeddings, dtype=np.float64)
        if fl.shape != emb.shape:
            raise ValueError(f"flip embeddings {fl.shape} do not match embeddings {emb.shape}")
        emb = emb + fl
    valid_row = np.all(np.isfinite(emb), axis=1)
    emb = normalize(np.where(valid_row[:, None], emb, 0.0))

    p = pairs_from_records(pairs)
    n_img = emb.shape[0]

    def present(ix: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        inside = (ix >= 0) & (ix < n_img)
        ok = inside.copy()
        ok[inside] = valid_row[ix[inside]]
        return ok

    ok = present(p.idx_a) & present(p.idx_b)
    missing = np.flatnonzero(~ok)
    scores = pair_scores(emb[p.idx_a[ok]], emb[p.idx_b[ok]], metric=metric)
    same = p.same[ok]
    folds = p.fold[ok]

    fr = ten_fold_accuracy(scores, same, folds)
    fpr, tpr, _ = roc(scores, same)
    ta = tar_at_far(scores, same, far=far)
    all_folds = sorted({int(k) for k in np.unique(p.fold)})
    return {
        "accuracy_mean": fr.mean,
        "accuracy_std": fr.std,
        "accuracy_std_kind": "population (ddof=0)",
        "accuracy_std_sample": fr.std_sample,
        "folds": fr.folds,
        "fold_accuracies": fr.accuracies,
        "fold_thresholds": fr.thresholds,
        "fold_sizes": fr.n_test,
        "auc": auc(fpr, tpr),
        "eer": eer(fpr, tpr),
        "far": far,
        "tar_at_far": ta.tar,
        "tar_at_far_achieved_far": ta.far,
        "tar_at_far_threshold": ta.threshold,
        "tar_at_far_false_accepts": ta.false_accepts,
        "tar_at_far_max_false_accepts": ta.max_false_accepts,
        "tar_at_far_underresolved": ta.underresolved,
        "metric": metric,
        "flip": flip_used,
        "n_pairs": len(p),
        "n_evaluated": int(ok.sum()),
        "n_matched": int(same.sum()),
        "n_mismatched": int((~same).sum()),
        "n_missing": int(missing.size),
        "missing_per_fold": {k: int(np.sum(p.fold[missing] == k)) for k in all_folds},
        "missing_pairs": [int(i) for i in missing[:20]],
    }


def format_report(result: dict[str, Any]) -> str:
    """Human-readable summary of :func:`evaluate`'s result."""
    pct = 100.0
    lines = [
        f"LFW verification ({result['metric']}, flip {'on' if result['flip'] else 'off'})",
        f"  pairs: {result['n_evaluated']} evaluated of {result['n_pairs']} "
        f"({result['n_matched']} matched, {result['n_mismatched']} mismatched)",
        f"  accuracy: {result['accuracy_mean'] * pct:.2f}% ± {result['accuracy_std'] * pct:.2f}% "
        f"({len(result['folds'])}-fold, std {result['accuracy_std_kind']})",
        f"  AUC: {result['auc']:.4f}   EER: {result['eer'] * pct:.2f}%",
        f"  TAR@FAR={result['far']:g}: {result['tar_at_far'] * pct:.2f}% "
        f"({result['tar_at_far_false_accepts']} of at most "
        f"{result['tar_at_far_max_false_accepts']} false accepts)"
        + (" [FAR below 1/negatives]" if result["tar_at_far_underresolved"] else ""),
        "  per fold: "
        + "  ".join(
            f"{k}:{a * pct:.2f}%@{t:.4f}"
            for k, a, t in zip(
                result["folds"], result["fold_accuracies"], result["fold_thresholds"], strict=True
            )
        ),
    ]
    if result["n_missing"]:
        per = ", ".join(f"{k}:{v}" for k, v in result["missing_per_fold"].items() if v)
        lines.append(
            f"  WARNING: {result['n_missing']} pairs missing an image, excluded (per fold {per}); "
            f"first: {result['missing_pairs']}"
        )
    return "\n".join(lines)
