"""LFW verification protocol (validation/lfw.py) on hand-made and synthetic data, numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from bnncube.validation import lfw

LABELS_6000 = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)


def _mann_whitney(scores: np.ndarray, same: np.ndarray) -> float:
    pos = scores[same][:, None]
    neg = scores[~same][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _synthetic(seed: int, sigma: float) -> tuple[np.ndarray, list[tuple[int, int, bool, int]]]:
    """Identity centroids on the unit sphere + Gaussian noise; 6000 pairs in LFW's fold layout."""
    rng = np.random.default_rng(seed)
    n_id, per, dim = 400, 5, 64
    cent = rng.standard_normal((n_id, dim))
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    emb = np.repeat(cent, per, axis=0) + sigma * rng.standard_normal((n_id * per, dim)) / 8.0
    recs: list[tuple[int, int, bool, int]] = []
    for k in range(10):
        for _ in range(300):
            i = int(rng.integers(n_id))
            a, b = rng.choice(per, 2, replace=False)
            recs.append((i * per + int(a), i * per + int(b), True, k))
        for _ in range(300):
            i, j = rng.choice(n_id, 2, replace=False)
            a, b = rng.integers(per, size=2)
            recs.append((int(i) * per + int(a), int(j) * per + int(b), False, k))
    return emb, recs


# --------------------------------------------------------------------------- basics


def test_normalize_unit_and_zero_safe() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    n = lfw.normalize(x)
    assert np.allclose(n[0], [0.6, 0.8])
    assert np.array_equal(n[1], [0.0, 0.0])
    assert np.all(np.isfinite(n))


def test_pair_scores_cosine_and_euclidean_rank_alike() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 50, 8))
    cos = lfw.pair_scores(a, b)
    euc = lfw.pair_scores(a, b, metric="euclidean")
    assert np.allclose(cos, np.sum(lfw.normalize(a) * lfw.normalize(b), axis=1))
    assert np.allclose(euc, -np.sqrt(2.0 - 2.0 * cos))
    assert np.array_equal(np.argsort(cos), np.argsort(euc))
    assert lfw.pair_scores(a[:1], a[:1])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lfw.pair_scores(a, b, metric="manhattan")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- threshold protocol


def test_threshold_by_hand_and_no_test_fold_leakage() -> None:
    # fold 0: d 0.1, s 0.4, d 0.3, s 0.8 ; fold 1: d 0.2, d 0.5, s 0.6, s 0.9
    scores = np.array([0.1, 0.4, 0.3, 0.8, 0.2, 0.5, 0.6, 0.9])
    same = np.array([0, 1, 0, 1, 0, 0, 1, 1], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    r = lfw.ten_fold_accuracy(scores, same, folds)
    # test fold 0: trained on fold 1 -> midpoint of 0.5 and 0.6; 0.4 (same) rejected -> 3/4
    # test fold 1: trained on fold 0 -> midpoint of 0.3 and 0.4; 0.5 (diff) accepted -> 3/4
    assert r.thresholds == pytest.approx([0.55, 0.35])
    assert r.accuracies == pytest.approx([0.75, 0.75])
    assert r.mean == pytest.approx(0.75)
    assert r.std == 0.0
    # choosing the threshold with the test fold included would give 7/8 on every split
    for t in (0.35, 0.55):
        assert np.mean((scores > t) == same) == pytest.approx(0.875)
    assert r.mean != pytest.approx(0.875)


def test_threshold_ties_take_smallest_candidate() -> None:
    # fold 0 trains fold 1: only "same" pairs -> everything accepted is best: t = min - 1 = -0.7
    # fold 1 trains fold 0 (s 0.2, d 0.5): all-accept (-0.8) and all-reject (1.5) both give 1/2,
    # the midpoint 0.35 gives 0 -> tie broken to the smallest, -0.8
    scores = np.array([0.2, 0.5, 0.3, 0.7])
    same = np.array([1, 0, 1, 1], bool)
    folds = np.array([0, 0, 1, 1])
    r = lfw.ten_fold_accuracy(scores, same, folds)
    assert r.thresholds == pytest.approx([-0.7, -0.8])
    assert r.accuracies == pytest.approx([0.5, 1.0])
    assert r.std == pytest.approx(0.25)  # population std of (0.5, 1.0)
    assert r.std_sample == pytest.approx(np.std([0.5, 1.0], ddof=1))


def test_tied_scores_with_both_labels_and_score_equal_to_threshold() -> None:
    # fold 0: d 0.2, s 0.4 ; fold 1: s 0.3, s 0.3, d 0.3 (one score, both labels)
    # test fold 0, trained on fold 1: accept all (t = 0.3 - 1) gives 2/3, reject all 1/3 -> -0.7;
    #   fold 0 fully accepted -> 1/2
    # test fold 1, trained on fold 0: t = 0.3 exactly; scores equal to t are rejected (score > t)
    #   -> only the "different" pair is right -> 1/3
    scores = np.array([0.2, 0.4, 0.3, 0.3, 0.3])
    same = np.array([0, 1, 1, 1, 0], bool)
    folds = np.array([0, 0, 1, 1, 1])
    r = lfw.ten_fold_accuracy(scores, same, folds)
    assert r.thresholds == pytest.approx([-0.7, 0.3])
    assert r.accuracies == pytest.approx([0.5, 1 / 3])


def test_identical_distributions_give_chance_accuracy() -> None:
    s = np.random.default_rng(0).standard_normal(6000)
    r = lfw.ten_fold_accuracy(s, LABELS_6000, lfw.lfw_folds())
    # over 200 seeds: mean 0.500, std 0.0066, range [0.484, 0.517]; seed 0 gives 0.4938
    assert 0.46 <= r.mean <= 0.54
    assert len(r.accuracies) == 10 and all(n == 600 for n in r.n_test)


def test_perfectly_separable() -> None:
    rng = np.random.default_rng(1)
    s = np.where(LABELS_6000, rng.uniform(0.6, 1.0, 6000), rng.uniform(-1.0, 0.4, 6000))
    r = lfw.ten_fold_accuracy(s, LABELS_6000, lfw.lfw_folds())
    assert r.mean == 1.0 and r.std == 0.0
    fpr, tpr, _ = lfw.roc(s, LABELS_6000)
    assert lfw.auc(fpr, tpr) == 1.0
    assert lfw.eer(fpr, tpr) == 0.0
    assert lfw.tar_at_far(s, LABELS_6000).tar == 1.0


# --------------------------------------------------------------------------- ROC, AUC, TAR, EER


def test_roc_monotone_and_auc_is_mann_whitney() -> None:
    rng = np.random.default_rng(7)
    same = rng.random(500) < 0.4
    s = np.round(rng.standard_normal(500) + 0.8 * same, 1)  # rounding makes many ties
    fpr, tpr, th = lfw.roc(s, same)
    assert fpr[0] == 0.0 and tpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(th) < 0)
    assert th.size == np.unique(s).size + 1
    assert lfw.auc(fpr, tpr) == pytest.approx(_mann_whitney(s, same), abs=1e-12)


def test_eer_by_hand() -> None:
    # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1); FRR = FAR = 0.5 at t = 0.6
    s = np.array([0.9, 0.4, 0.6, 0.1])
    same = np.array([1, 1, 0, 0], bool)
    fpr, tpr, _ = lfw.roc(s, same)
    assert lfw.eer(fpr, tpr) == pytest.approx(0.5)


def _tar_case(tied: bool) -> tuple[np.ndarray, np.ndarray]:
    neg = list(np.linspace(0.0, 0.5, 998)) + [0.95, 0.95 if tied else 0.9]
    pos = [0.99, 0.97, 0.95, 0.93, 0.91, 0.8, 0.7, 0.6, 0.3, 0.1]
    return np.array(pos + neg), np.array([True] * 10 + [False] * 1000)


def test_tar_at_far_constructed() -> None:
    s, same = _tar_case(tied=False)
    r = lfw.tar_at_far(s, same, far=1e-3)  # 1000 negatives -> at most 1 false accept
    assert r.max_false_accepts == 1 and r.false_accepts == 1
    assert r.threshold == pytest.approx(0.91) and r.tar == pytest.approx(0.5)
    assert r.far == pytest.approx(1e-3) and not r.underresolved
    r0 = lfw.tar_at_far(s, same, far=0.0)  # strictly above the top negative (0.95)
    assert r0.tar == pytest.approx(0.2) and r0.threshold == pytest.approx(0.97)
    assert not r0.underresolved
    r_small = lfw.tar_at_far(s, same, far=5e-4)  # below 1/1000: only zero false accepts
    assert r_small.tar == pytest.approx(0.2) and r_small.underresolved


def test_tar_at_far_ties_are_not_split() -> None:
    s, same = _tar_case(tied=True)  # two negatives tied at 0.95, one allowed -> stop above them
    r = lfw.tar_at_far(s, same, far=1e-3)
    assert r.false_accepts == 0 and r.tar == pytest.approx(0.2)


def test_far_1e3_on_3000_negatives_allows_3_false_accepts() -> None:
    s = np.random.default_rng(2).standard_normal(6000) + LABELS_6000
    r = lfw.tar_at_far(s, LABELS_6000, far=1e-3)
    assert r.n_negatives == 3000 and r.max_false_accepts == 3 and r.false_accepts <= 3


# --------------------------------------------------------------------------- evaluate


def test_flip_fusion_is_normalized_sum() -> None:
    e = np.array([[1.0, 0.0], [1.0, 0.0]])
    f = np.array([[0.0, 10.0], [0.0, 0.0]])
    fused = lfw.flip_fused(e, f)
    assert np.allclose(fused[0], np.array([1.0, 10.0]) / np.sqrt(101.0))  # not mean of units
    assert np.allclose(fused[1], [1.0, 0.0])
    emb, recs = _synthetic(5, 1.2)
    flip = np.random.default_rng(6).standard_normal(emb.shape) * 0.1 + emb
    with_flip = lfw.evaluate(emb, recs, flip_embeddings=flip)
    assert with_flip["flip"] is True
    same_by_hand = lfw.evaluate(emb + flip, recs)
    assert same_by_hand["flip"] is False
    for key in ("accuracy_mean", "auc", "tar_at_far", "eer", "fold_thresholds"):
        assert with_flip[key] == pytest.approx(same_by_hand[key])
    assert with_flip["auc"] != lfw.evaluate(emb, recs)["auc"]


def test_missing_pairs_counted_and_reported() -> None:
    emb, recs = _synthetic(4, 1.0)
    emb[7] = np.nan  # an image whose embedding failed
    used7 = sum(1 for a, b, _, _ in recs if 7 in (a, b))
    recs[0] = (None, recs[0][1], True, 0)
    recs[601] = (recs[601][0], -1, True, 1)
    recs[1500] = (recs[1500][0], 10**6, False, 2)
    res = lfw.evaluate(emb, recs)
    n_missing = 3 + used7
    assert res["n_missing"] == n_missing
    assert res["n_pairs"] == 6000 and res["n_evaluated"] == 6000 - n_missing
    assert res["missing_per_fold"][1] >= 1 and res["missing_per_fold"][2] >= 1
    assert {0, 601, 1500} <= set(res["missing_pairs"])
    assert sum(res["fold_sizes"]) == res["n_evaluated"]
    text = lfw.format_report(res)
    assert "WARNING" in text and f"{n_missing} pairs missing" in text


def test_synthetic_identities_accuracy_range() -> None:
    emb, recs = _synthetic(0, 1.2)
    res = lfw.evaluate(emb, recs)
    # measured: seeds 0..7 give 10-fold accuracy 0.959..0.970, AUC ~0.995
    assert 0.95 <= res["accuracy_mean"] <= 0.98
    assert 0.0 < res["accuracy_std"] < 0.02
    assert res["auc"] > 0.98 and 0.0 < res["eer"] < 0.06
    assert 0.3 < res["tar_at_far"] < 0.9 and res["tar_at_far_max_false_accepts"] == 3
    assert res["n_pairs"] == 6000 and res["n_missing"] == 0 and len(res["folds"]) == 10
    # the protocol's value never beats the threshold chosen on all 6000 pairs (an oracle)
    p = lfw.pairs_from_records(recs)
    s = lfw.pair_scores(emb[p.idx_a], emb[p.idx_b])
    oracle = max(np.mean((s > t) == p.same) for t in np.unique(s))
    assert res["accuracy_mean"] <= oracle + 1e-12
    # euclidean on unit vectors ranks as cosine: same accuracy and AUC
    euc = lfw.evaluate(emb, recs, metric="euclidean")
    assert euc["accuracy_mean"] == pytest.approx(res["accuracy_mean"])
    assert euc["auc"] == pytest.approx(res["auc"])
    text = lfw.format_report(res)
    assert "accuracy:" in text and "TAR@FAR=0.001" in text and "WARNING" not in text
