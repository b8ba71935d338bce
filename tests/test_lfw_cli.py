"""`bnncube lfw` and bnncube.validation.embeddings: LFW evaluation over every engine.

* The protocol (bnncube.validation.lfw) against an independent computation: scikit-learn's KFold
  over the pair list (LFW's fold order, no shuffle) and a brute-force threshold sweep written here;
  per-fold and mean accuracies must be equal (==), with and without tied scores.
* Synthetic faces (6 identities x 3 images, 2 folds x 6 pairs): embeddings of the untrained zoo
  hybrid in keras / tflite / onnx / host-c / target. host-c equals the reference interpreter
  exactly, onnx equals host-c exactly (bnncube's ONNX form is exact), target equals host-c
  exactly, Keras is close (per-image cosine >= 0.98 asserted, 0.9913 measured at worst). The
  hybrid's TFLite form runs in LCE, whose int8 kernels differ by +-1 LSB, and the untrained
  binary network amplifies it (docs/tflite-form.md): mean cosine 0.59 measured, > 0.4 asserted.
* mnv2_i8 (int8 input) in tflite and host-c: host-c equals the reference exactly, and TFLite's
  reference kernels too.
* --save-embeddings / --embeddings round trip, a missing image, and bad inputs (exit 2, one line,
  no JSON left).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.cli import main  # noqa: E402
from bnncube.validation import embeddings as E  # noqa: E402
from bnncube.validation import lfw  # noqa: E402
from bnncube.zoo.synthetic_faces import read_pairs, write_dataset, write_pairs  # noqa: E402

# --------------------------------------------------------------------------------------------
# the protocol against an independent computation
# --------------------------------------------------------------------------------------------


def _independent_accuracies(
    emb: np.ndarray, ia: np.ndarray, ib: np.ndarray, same: np.ndarray, n_folds: int
) -> list[float]:
    """10-fold accuracy written from scratch: KFold (no shuffle) over the pairs in file order,
    cosine scores, a brute-force sweep over midpoint thresholds (plus below-min / above-max),
    the best training accuracy, the smallest threshold on ties, rule score > t."""
    from sklearn.model_selection import KFold

    unit = emb / np.sqrt(np.sum(emb * emb, axis=1, keepdims=True))
    scores = np.sum(unit[ia] * unit[ib], axis=1)
    accs = []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(scores):
        u = np.array(sorted(set(scores[train].tolist())))
        candidates = [u[0] - 1.0] + [(u[i] + u[i + 1]) / 2.0 for i in range(len(u) - 1)]
        candidates.append(u[-1] + 1.0)
        best_t, best_correct = None, -1
        for t in candidates:  # ascending: a strictly better one replaces, ties keep the smallest
            correct = int(np.sum((scores[train] > t) == same[train]))
            if correct > best_correct:
                best_t, best_correct = t, correct
        correct_test = int(np.sum((scores[test] > best_t) == same[test]))
        accs.append(correct_test / len(test))
    return accs


def _protocol_case(seed: int, ties: bool) -> tuple[np.ndarray, list[tuple[int, int, bool, int]]]:
    rng = np.random.default_rng(seed)
    n_folds, per_fold, n_people, per_person, dim = 10, 15, 40, 4, 16
    centres = rng.normal(size=(n_people, dim))
    if ties:
        # few distinct vectors: every image is one of 6 prototypes, so many pairs score exactly
        # the same (the same two rows give bit-identical scores)
        protos = rng.normal(size=(6, dim))
        emb = protos[rng.integers(0, 6, n_people * per_person)]
    else:
        emb = np.repeat(centres, per_person, axis=0) + rng.normal(
            scale=1.2, size=(n_people * per_person, dim)
        )
    records = []
    for fold in range(n_folds):
        for _ in range(per_fold):  # matched
            p = int(rng.integers(n_people))
            a, b = rng.choice(per_person, 2, replace=False)
            records.append((p * per_person + int(a), p * per_person + int(b), True, fold))
        for _ in range(per_fold):  # mismatched
            p, q = rng.choice(n_people, 2, replace=False)
            a, b = rng.integers(per_person, size=2)
            pa, pb = int(p) * per_person + int(a), int(q) * per_person + int(b)
            records.append((pa, pb, False, fold))
    return emb, records


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, False), (2, False), (3, True)])
def test_protocol_equals_independent_computation(seed: int, ties: bool) -> None:
    emb, records = _protocol_case(seed, ties)
    ia = np.array([r[0] for r in records])
    ib = np.array([r[1] for r in records])
    same = np.array([r[2] for r in records])
    mine = _independent_accuracies(emb, ia, ib, same, 10)
    got = lfw.evaluate(emb, records)
    assert got["fold_accuracies"] == mine
    assert got["accuracy_mean"] == float(np.mean(mine))
    assert got["accuracy_std"] == float(np.std(mine))
    assert got["n_evaluated"] == len(records) == 300
    if ties:  # the case really has ties, and they straddle the classes
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        scores = np.round(np.sum(unit[ia] * unit[ib], axis=1), 12)
        assert len(set(scores.tolist())) < 30
        assert 0.5 < got["accuracy_mean"] < 1.0


# --------------------------------------------------------------------------------------------
# synthetic faces through every engine
# --------------------------------------------------------------------------------------------


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a64 * b64, 1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = write_dataset(tmp_path_factory.mktemp("faces") / "lfw", 6, 3, seed=0)
    pairs_path = write_pairs(root, root.parent / "pairs.txt", folds=2, per_fold=6, seed=0)
    pairs = read_pairs(pairs_path)
    rel, per_pair, missing = E.pair_images(root, pairs)
    return {
        "root": root,
        "pairs_path": pairs_path,
        "pairs": pairs,
        "rel": rel,
        "per_pair": per_pair,
        "missing": missing,
        "images": E.load_images(root, rel),
    }


@pytest.fixture(scope="module")
def hybrid_embeddings(hybrid_h5: Path, faces: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        engine: E.embed(hybrid_h5, engine, faces["images"])
        for engine in ("keras", "tflite", "onnx", "host-c")
    }


def _reference(model: Path, images: np.ndarray) -> np.ndarray:
    from bnncube.converters.loader import load_model
    from bnncube.converters.reference import run_graph
    from bnncube.validate import dequantized

    g = load_model(model)
    x = E.model_inputs(g, images)
    out = np.stack([run_graph(g, [xi[None]])[g.outputs[0]][0] for xi in x])
    return dequantized(g, g.outputs[0], out).reshape(len(images), -1).astype(np.float32)


def test_pair_images_and_load_images(faces: dict[str, Any], tmp_path: Path) -> None:
    rel, per_pair, pairs = faces["rel"], faces["per_pair"], faces["pairs"]
    assert faces["missing"] == []
    assert len(set(rel)) == len(rel) == 17
    for (a, b), p in zip(per_pair, pairs, strict=True):
        assert rel[a] == f"{p.name1}/{p.name1}_{p.index1:04d}.jpg"
        assert rel[b] == f"{p.name2}/{p.name2}_{p.index2:04d}.jpg"
    # the first four images make the first matched and mismatched pairs of fold 0
    first = {(a, b) for a, b in per_pair if a is not None and max(a, b) < 4}
    kinds = {p.matched for (a, b), p in zip(per_pair, pairs, strict=True) if (a, b) in first}
    assert kinds == {True, False}
    img = faces["images"]
    assert img.shape == (17, 96, 96, 3) and img.dtype == np.float32
    assert -1.0 <= img.min() and img.max() <= 1.0
    # a 48x48 image is resized; a broken file is named
    from PIL import Image

    (tmp_path / "A").mkdir()
    Image.fromarray(np.full((48, 48, 3), 255, np.uint8)).save(tmp_path / "A" / "A_0001.jpg")
    (tmp_path / "A" / "A_0002.jpg").write_bytes(b"not a jpeg")
    small = E.load_images(tmp_path, ["A/A_0001.jpg"])
    assert small.shape == (1, 96, 96, 3) and np.allclose(small, 1.0, atol=0.02)
    with pytest.raises(E.BnnError, match="A_0002.jpg"):
        E.load_images(tmp_path, ["A/A_0002.jpg"])


def test_hybrid_host_c_equals_reference(
    hybrid_h5: Path, faces: dict[str, Any], hybrid_embeddings: dict[str, np.ndarray]
) -> None:
    host = hybrid_embeddings["host-c"]
    assert host.shape == (17, 128) and host.dtype == np.float32
    assert np.array_equal(host, _reference(hybrid_h5, faces["images"]))


def test_hybrid_onnx_equals_host_c(hybrid_embeddings: dict[str, np.ndarray]) -> None:
    assert np.array_equal(hybrid_embeddings["onnx"], hybrid_embeddings["host-c"])


def test_hybrid_keras_and_tflite_close(hybrid_embeddings: dict[str, np.ndarray]) -> None:
    host = hybrid_embeddings["host-c"]
    keras_cos = _cosine(hybrid_embeddings["keras"], host)
    tflite_cos = _cosine(hybrid_embeddings["tflite"], host)
    print(
        f"hybrid cosine vs host-c: keras min {keras_cos.min():.4f}; "
        f"tflite (LCE) min {tflite_cos.min():.4f} mean {tflite_cos.mean():.4f}"
    )
    assert keras_cos.min() >= 0.98  # margin for float differences across CPUs
    assert hybrid_embeddings["tflite"].shape == host.shape
    assert tflite_cos.mean() > 0.4


@pytest.mark.slow
def test_hybrid_target_equals_host_c(
    hybrid_h5: Path, faces: dict[str, Any], hybrid_embeddings: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from bnncube.validation import emulator as em

    if shutil.which(em.ARM_GCC) is None:
        pytest.skip(f"{em.ARM_GCC} is not installed")
    pytest.importorskip("unicorn")
    saved = tmp_path / "target.npz"
    count = 8
    summary = E.evaluate_model(
        hybrid_h5,
        faces["root"],
        faces["pairs_path"],
        engine="target",
        target_count=count,
        workspace=tmp_path / "ws",
        save_embeddings=saved,
    )
    inside = sum(1 for a, b in faces["per_pair"] if max(a, b) < count)
    assert summary["target_images"] == summary["n_images"] == count
    assert summary["n_pairs_evaluated"] == inside >= 4
    assert summary["n_pairs_not_run"] == 24 - inside
    assert summary["n_skipped"] == 0
    with np.load(saved) as npz:
        assert sorted(npz.files) == sorted(faces["rel"][:count])
        got = np.stack([npz[r] for r in faces["rel"][:count]])
    assert np.array_equal(got, hybrid_embeddings["host-c"][:count])


def test_target_without_toolchain(
    hybrid_h5: Path, faces: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnncube.validation import emulator as em

    monkeypatch.setattr(em, "toolchain_available", lambda: False)
    with pytest.raises(E.BnnError, match=f"{em.ARM_GCC} is not installed"):
        E.embed(hybrid_h5, "target", faces["images"][:1])


def test_mnv2_i8_tflite_and_host_c(mnv2_i8_tflite: Path, faces: dict[str, Any]) -> None:
    images = faces["images"][:6]
    host = E.embed(mnv2_i8_tflite, "host-c", images, batch=4)
    tfl = E.embed(mnv2_i8_tflite, "tflite", images)
    assert host.shape == (6, 128)
    assert np.array_equal(host, _reference(mnv2_i8_tflite, images))
    assert np.array_equal(tfl, host)  # TFLite's reference kernels: exact too


def test_int8_input_quantization(mnv2_i8_tflite: Path) -> None:
    from bnncube.converters.loader import load_model

    g = load_model(mnv2_i8_tflite)
    t = g.tensors[g.inputs[0]]
    scale, zp = float(t.quant.scale.reshape(-1)[0]), int(t.quant.zero_point.reshape(-1)[0])
    x = np.linspace(-1.2, 1.2, 96 * 96 * 3, dtype=np.float32).reshape(1, 96, 96, 3)
    q = E.model_inputs(g, x)
    v = x / np.float32(scale)
    want = np.clip(np.copysign(np.floor(np.abs(v).astype(np.float64) + 0.5), v) + zp, -128, 127)
    assert q.dtype == np.int8
    assert np.array_equal(q.astype(np.int64), want.astype(np.int64))


def test_engine_not_valid_for_model(mnv2_i8_tflite: Path, faces: dict[str, Any]) -> None:
    with pytest.raises(E.BnnError, match="keras does not run"):
        E.embed(mnv2_i8_tflite, "keras", faces["images"][:1])
    with pytest.raises(E.BnnError, match="is not one of"):
        E.embed(mnv2_i8_tflite, "gpu", faces["images"][:1])


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------

NUMBERS = (
    "accuracy_mean",
    "accuracy_std",
    "auc",
    "eer",
    "tar_at_far_1e-3",
    "fold_accuracies",
    "n_pairs",
    "n_pairs_evaluated",
    "n_skipped",
    "n_images",
    "flip",
)


def _run(capsys: pytest.CaptureFixture[str], argv: list[object]) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
def test_save_and_reuse_embeddings(
    hybrid_h5: Path,
    faces: dict[str, Any],
    hybrid_embeddings: dict[str, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    npz, first, second = tmp_path / "emb.npz", tmp_path / "a.json", tmp_path / "b.json"
    base = ["lfw", "--pairs", faces["pairs_path"], "--flip"]
    rc, out, _ = _run(
        capsys,
        [
            *base,
            "-m",
            hybrid_h5,
            "--data",
            faces["root"],
            "--engine",
            "host-c",
            "--json",
            first,
            "--save-embeddings",
            npz,
        ],
    )
    assert rc == 0
    assert "LFW verification (cosine, flip on)" in out
    assert "engine host-c, model hybrid.h5; 17 images; 0 of 24 pairs skipped" in out
    with np.load(npz) as data:
        assert len(data.files) == 34
        key = faces["rel"][0]
        assert np.array_equal(data[key], hybrid_embeddings["host-c"][0])
        mirrored = _reference(hybrid_h5, faces["images"][:1, :, ::-1, :])[0]
        assert np.array_equal(data["flip/" + key], mirrored)
    rc, out, _ = _run(capsys, [*base, "--embeddings", npz, "--json", second])
    assert rc == 0 and "engine embeddings, model emb.npz" in out
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert {k: a[k] for k in NUMBERS} == {k: b[k] for k in NUMBERS}
    assert a["engine"] == "host-c" and b["engine"] == "embeddings" and a["flip"] is True
    assert a["n_pairs"] == 24 and len(a["fold_accuracies"]) == 2
    assert a["lfw"]["n_evaluated"] == 24


def test_missing_image_is_skipped(
    hybrid_h5: Path, faces: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "lfw"
    shutil.copytree(faces["root"], root)
    gone = faces["rel"][2]
    (root / gone).unlink()
    uses = sum(1 for a, b in faces["per_pair"] if 2 in (a, b))
    out_json = tmp_path / "r.json"
    rc, out, _ = _run(
        capsys,
        [
            "lfw",
            "-m",
            hybrid_h5,
            "--data",
            root,
            "--pairs",
            faces["pairs_path"],
            "--engine",
            "host-c",
            "--json",
            out_json,
        ],
    )
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert uses >= 1
    assert result["n_skipped"] == uses
    assert result["n_pairs_evaluated"] == 24 - uses
    assert result["missing_images"] == [gone]
    assert result["n_images"] == 16
    assert f"{uses} of 24 pairs skipped (1 images missing: {gone})" in out


def test_image_missing_from_embeddings_file(
    faces: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    gone = faces["rel"][5]
    np.savez(
        tmp_path / "e.npz",
        **{r: rng.normal(size=(1, 32)).astype(np.float32) for r in faces["rel"] if r != gone},
    )
    out_json = tmp_path / "r.json"
    argv = ["lfw", "--embeddings", tmp_path / "e.npz", "--pairs", faces["pairs_path"]]
    rc, out, _ = _run(capsys, [*argv, "--json", out_json])
    assert rc == 0
    result = json.loads(out_json.read_text())
    uses = sum(1 for a, b in faces["per_pair"] if 5 in (a, b))
    assert result["n_skipped"] == uses >= 1
    assert result["missing_images"] == [gone]
    assert result["n_images"] == 16 and result["embedding_dim"] == 32
    assert result["lfw"]["n_missing"] == uses
    assert "WARNING" in out


def _bad_npz(kind: str, path: Path, rel: list[str]) -> None:
    if kind == "not-npz":
        path.write_text("hello")
        return
    arrays = {r: np.ones(8, np.float32) for r in rel}
    if kind == "sizes":
        arrays[rel[3]] = np.ones(9, np.float32)
    elif kind == "2d":
        arrays[rel[3]] = np.ones((2, 8), np.float32)
    elif kind == "nan":
        arrays[rel[3]] = np.full(8, np.nan, np.float32)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("both", "give one of them"),
        ("neither", "give a model"),
        ("no-data", "option --data"),
        ("data-not-folder", "is not a folder"),
        ("no-pairs-option", "--pairs"),
        ("pairs-missing", "pairs file not found"),
        ("pairs-malformed", "pairs.txt:3:"),
        ("engine", "keras does not run"),
        ("all-skipped", "every pair was skipped"),
        ("not-npz", "emb.npz: not"),
        ("sizes", "Person_"),
        ("2d", "shape (2, 8)"),
        ("nan", "NaN"),
        ("npz-flip", "no flipped embeddings"),
    ],
)
def test_bad_inputs(
    case: str,
    needle: str,
    faces: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # every check comes before the model is read: stand-in files are enough (and fast)
    hybrid_h5, mnv2_i8_tflite = tmp_path / "hybrid.h5", tmp_path / "mnv2_i8.tflite"
    hybrid_h5.write_bytes(b"stand-in")
    mnv2_i8_tflite.write_bytes(b"stand-in")
    out_json = tmp_path / "r.json"
    npz = tmp_path / "emb.npz"
    pairs = faces["pairs_path"]
    model = ["-m", hybrid_h5, "--data", faces["root"]]
    argv: list[object] = ["lfw", "--pairs", pairs, "--json", out_json]
    if case == "both":
        _bad_npz("ok", npz, faces["rel"])
        argv += [*model, "--embeddings", npz]
    elif case == "neither":
        pass
    elif case == "no-data":
        argv += ["-m", hybrid_h5]
    elif case == "data-not-folder":
        argv += ["-m", hybrid_h5, "--data", tmp_path / "nowhere"]
    elif case == "no-pairs-option":
        argv = ["lfw", *model, "--json", out_json]
    elif case == "pairs-missing":
        argv = ["lfw", *model, "--pairs", tmp_path / "nope.txt", "--json", out_json]
    elif case == "pairs-malformed":
        bad = tmp_path / "pairs.txt"
        lines = pairs.read_text().splitlines()
        lines[2] = "Person_0001\t1"
        bad.write_text("\n".join(lines) + "\n")
        argv = ["lfw", *model, "--pairs", bad, "--json", out_json]
    elif case == "engine":
        argv += ["-m", mnv2_i8_tflite, "--data", faces["root"], "--engine", "keras"]
    elif case == "all-skipped":
        (tmp_path / "empty").mkdir()
        argv += ["-m", hybrid_h5, "--data", tmp_path / "empty", "--engine", "host-c"]
    elif case == "npz-flip":
        _bad_npz("ok", npz, faces["rel"])
        argv += ["--embeddings", npz, "--flip"]
    else:
        _bad_npz(case, npz, faces["rel"])
        argv += ["--embeddings", npz]
    rc, out, err = _run(capsys, argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error") and needle in lines[0], lines[0]
    if case in ("sizes", "2d", "nan"):
        assert "emb.npz" in lines[0] and faces["rel"][3] in lines[0]
    assert not out_json.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.")] == []
