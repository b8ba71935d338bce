"""`bnncube train`: ArcFace training on synthetic faces, resume, strategies, outputs, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bnncube.cli import main
from bnncube.zoo.synthetic_faces import read_pairs, write_dataset, write_pairs
from bnncube.zoo.train import TrainResult

TINY = {"epochs": 1, "batch": 8, "progress": False, "log": lambda _: None}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 identities x 4 images (--val-split 0.34: 4 training, 2 held-out identities)."""
    return write_dataset(tmp_path_factory.mktemp("tiny") / "faces", 6, 4, seed=5)


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _embed(model_path: Path, files: list[Path]) -> np.ndarray:
    from qkeras.utils import load_qmodel

    from bnncube.zoo.train import load_images

    model = load_qmodel(str(model_path), compile=False)
    return np.asarray(model(load_images(files), training=False))


def held_out_accuracy(model_path: Path, root: Path) -> float:
    """LFW 10-fold pair accuracy of the saved model on the people and pairs under ``root``."""
    from bnncube.validation.lfw import evaluate

    pairs = read_pairs(root / "pairs.txt")
    index: dict[tuple[str, int], int] = {}
    files: list[Path] = []
    for p in pairs:
        for name, i in ((p.name1, p.index1), (p.name2, p.index2)):
            if (name, i) not in index:
                index[(name, i)] = len(files)
                files.append(root / name / f"{name}_{i:04d}.jpg")
    emb = _embed(model_path, files)
    records = [
        (index[(p.name1, p.index1)], index[(p.name2, p.index2)], p.matched, p.fold) for p in pairs
    ]
    return float(evaluate(emb, records)["accuracy_mean"])


# ------------------------------------------------------------------------------ units


def test_arcface_logits_margin_and_fallback() -> None:
    import tensorflow as tf

    from bnncube.zoo.arcface import arcface_logits

    w = tf.constant([[1.0, 0.0], [0.0, 1.0]])  # two classes along the axes
    angles = np.array([0.3, 2.9])  # the second one: theta + m > pi
    emb = tf.constant(np.stack([np.cos(angles), np.sin(angles)], axis=1), tf.float32)
    logits = arcface_logits(emb, w, tf.constant([0, 0]), 10.0, 0.5).numpy()
    assert logits[0, 0] == pytest.approx(10 * math.cos(0.3 + 0.5), abs=1e-4)
    assert logits[0, 1] == pytest.approx(10 * math.cos(math.pi / 2 - 0.3), abs=1e-4)
    assert logits[1, 0] == pytest.approx(10 * (math.cos(2.9) - 0.5 * math.sin(0.5)), abs=1e-4)
    plain = arcface_logits(emb, w, tf.constant([0, 0]), 10.0, 0.0).numpy()
    assert plain[0, 0] == pytest.approx(10 * math.cos(0.3), abs=1e-4)


def test_split_by_identity_is_seeded_and_disjoint(tiny_data: Path) -> None:
    from bnncube.zoo.train import scan_people, split_identities, validation_pairs

    people = scan_people(tiny_data)
    a = split_identities(people, 0.34, seed=3)
    assert a == split_identities(people, 0.34, seed=3)
    train_names, val_names = a
    assert len(val_names) == 2 and len(train_names) == 4
    assert not set(train_names) & set(val_names)
    idx_a, idx_b, same, fold = validation_pairs([4, 4], seed=0)
    assert int(same.sum()) == int((~same).sum()) == 12  # balanced: all 2 x 6 matched pairs
    owner = np.repeat([0, 1], 4)
    assert np.array_equal(owner[idx_a] == owner[idx_b], same)


# ------------------------------------------------------------------------------ CLI errors


def test_cli_bad_inputs(tmp_path: Path, tiny_data: Path, capsys) -> None:
    out = tmp_path / "out"
    _error(capsys, ["train", "--model", "mnv2_fp", "-o", str(out)], "--data")
    empty = tmp_path / "empty"
    (empty / "Nobody").mkdir(parents=True)
    _error(capsys, ["train", "--model", "mnv2_fp", "--data", str(empty), "-o", str(out)], "--data")
    one = write_dataset(tmp_path / "one", 1, 3, seed=2)
    _error(
        capsys,
        ["train", "--model", "hybrid", "--data", str(one), "-o", str(out)],
        "--data/--val-split",
    )
    for bad in ("1.5", "0", "-0.2"):
        argv = ["train", "--model", "mnv2_fp", "--data", str(tiny_data), "-o", str(out)]
        _error(capsys, [*argv, "--val-split", bad], "--val-split")
    _error(
        capsys,
        ["train", "--model", "vgg", "--data", str(tiny_data), "-o", str(out)],
        "--model",
    )
    assert not out.exists()


# ------------------------------------------------------------------------------ training runs


@pytest.mark.slow
def test_resume_int8_and_determinism(tmp_path: Path, tiny_data: Path, capsys) -> None:
    from bnncube.converters.loader import load_model
    from bnncube.zoo.train import train

    out = tmp_path / "run"
    first = train("mnv2_fp", tiny_data, out, val_split=0.34, int8=False, **TINY)
    assert [h["epoch"] for h in first.history] == [1]
    assert first.int8_path is None and not (out / "mnv2_i8.tflite").exists()
    assert (out / "mnv2_fp.h5").is_file() and (out / "checkpoints").is_dir()

    # same seed, same data -> same split and first-epoch loss (float noise only)
    again = train("mnv2_fp", tiny_data, tmp_path / "again", val_split=0.34, int8=False, **TINY)
    assert again.history[0]["loss"] == pytest.approx(first.history[0]["loss"], rel=1e-4)
    log_a = json.loads((out / "train_log.json").read_text())
    log_b = json.loads((tmp_path / "again" / "train_log.json").read_text())
    assert log_a["val_identity_names"] == log_b["val_identity_names"]

    # without --resume, an existing checkpoints/ folder is refused
    argv = ["train", "--model", "mnv2_fp", "--data", str(tiny_data), "-o", str(out)]
    _error(capsys, [*argv, "--val-split", "0.34", "--epochs", "2"], "--resume")

    lines: list[str] = []
    second = train(
        "mnv2_fp",
        tiny_data,
        out,
        **{**TINY, "epochs": 2, "log": lines.append},
        val_split=0.34,
        resume=True,
        calib_count=8,
    )
    assert [h["epoch"] for h in second.history] == [1, 2]
    assert second.history[0] == first.history[0]
    trained = [line for line in lines if line.startswith("epoch ")]
    assert len(trained) == 1 and trained[0].startswith("epoch 2/2")
    log = json.loads((out / "train_log.json").read_text())
    assert [h["epoch"] for h in log["history"]] == [1, 2]
    assert log["split"]["train_identities"] == 4 and log["split"]["val_identities"] == 2
    assert "val pair acc" in (out / "train_report.txt").read_text()
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.index"))
    assert ckpts == ["ckpt-1.index", "ckpt-2.index"]

    # the int8 model of the resumed run
    assert second.int8_path == out / "mnv2_i8.tflite"
    graph = load_model(second.int8_path)
    assert graph.name == "mnv2_i8"
    assert graph.tensors[graph.inputs[0]].dtype == "int8"
    assert graph.tensors[graph.outputs[0]].shape == (1, 128)

    # resume: no checkpoint, or another model's checkpoint -> exit 2, one line, nothing written
    fresh = tmp_path / "fresh"
    argv = ["train", "--model", "mnv2_fp", "--data", str(tiny_data), "--resume"]
    _error(capsys, [*argv, "-o", str(fresh), "--val-split", "0.34"], "--resume")
    assert not fresh.exists()
    argv = ["train", "--model", "hybrid", "--data", str(tiny_data), "--resume", "-o", str(out)]
    _error(capsys, [*argv, "--val-split", "0.34"], "--resume", "mnv2_fp")


@pytest.mark.slow
def test_strategy_mirrored_cli(tmp_path: Path, tiny_data: Path, capsys) -> None:
    out = tmp_path / "mirrored"
    argv = ["train", "--model", "mnv2_fp", "--data", str(tiny_data), "-o", str(out)]
    argv += ["--epochs", "1", "--batch", "8", "--val-split", "0.34", "--no-int8", "-q"]
    assert main([*argv, "--strategy", "mirrored"]) == 0
    stdout = capsys.readouterr().out
    assert "epoch 1/1: loss" in stdout and "val pair accuracy" in stdout
    log = json.loads((out / "train_log.json").read_text())
    assert log["settings"]["strategy"] == "mirrored" and log["settings"]["replicas"] >= 1
    assert math.isfinite(log["history"][0]["loss"])
    assert not (out / "mnv2_i8.tflite").exists()


# A short quantization-aware training of the hybrid net that reaches useful accuracy on people
# it never saw (another seed); shared by the accuracy and the generate/validate tests.
ACCURACY_RUN = {"identities": 80, "images": 8, "epochs": 12, "batch": 16, "lr": 3e-3}


@pytest.fixture(scope="module")
def trained_hybrid(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    from bnncube.zoo.train import train

    root = tmp_path_factory.mktemp("acc")
    data = write_dataset(root / "train", ACCURACY_RUN["identities"], ACCURACY_RUN["images"], 11)
    result = train(
        "hybrid",
        data,
        root / "out",
        epochs=ACCURACY_RUN["epochs"],
        batch=ACCURACY_RUN["batch"],
        lr=ACCURACY_RUN["lr"],
        arcface_s=16.0,
        arcface_m=0.2,
        margin_warmup=2,
        seed=0,
        progress=False,
        log=lambda _: None,
    )
    test = write_dataset(root / "test", 20, 5, seed=12)  # other people
    write_pairs(test, test / "pairs.txt", folds=10, per_fold=20, seed=0)
    return result, test


@pytest.mark.slow
def test_training_lowers_loss_and_generalises(trained_hybrid: tuple[TrainResult, Path]) -> None:
    result, test = trained_hybrid
    losses = [h["loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == list(range(1, ACCURACY_RUN["epochs"] + 1))
    assert losses[-1] < losses[0]
    assert result.int8_path is None and result.model_path.name == "hybrid.h5"
    accuracy = held_out_accuracy(result.model_path, test)
    print(f"held-out accuracy {accuracy:.4f}, history {result.history}")
    assert accuracy >= 0.8, (accuracy, result.history)


@pytest.mark.slow
def test_trained_hybrid_generates_and_validates_bit_exact(
    trained_hybrid: tuple[TrainResult, Path], tmp_path: Path
) -> None:
    """QAT result: the saved hybrid.h5 goes through generate and validate -b 5 bit-exact."""
    result, _ = trained_hybrid
    gen = tmp_path / "gen"
    assert main(["generate", "-m", str(result.model_path), "-o", str(gen), "-q"]) == 0
    assert (gen / "network.c").is_file()
    out = tmp_path / "val"
    argv = ["validate", "-m", str(result.model_path), "-b", "5", "-o", str(out)]
    assert main([*argv, "-w", str(tmp_path / "w")]) == 0
    report = json.loads((out / "network_validate_report.json").read_text())
    assert report["bit_exact"] is True and report["n_inputs"] == 5


@pytest.mark.slow
def test_cli_undecodable_training_image(tmp_path: Path, tiny_data: Path, capsys) -> None:
    import shutil

    data = tmp_path / "faces"
    shutil.copytree(tiny_data, data)
    from bnncube.zoo.train import scan_people, split_identities

    train_names, val_names = split_identities(scan_people(data), 0.34, seed=0)
    argv = ["train", "--model", "hybrid", "--data", str(data), "-q", "--epochs", "1"]
    argv += ["--batch", "8", "--val-split", "0.34"]
    # a held-out image (decoded before training) and a training image (decoded by tf.data)
    for name, where in ((val_names[0], "an image"), (train_names[0], "a training image")):
        bad = data / name / f"{name}_0002.jpg"
        saved = bad.read_bytes()
        bad.write_bytes(b"not an image")
        out = tmp_path / f"out_{name}"
        _error(capsys, [*argv, "-o", str(out)], "option --data", f"cannot decode {where}")
        assert not out.exists()
        bad.write_bytes(saved)
