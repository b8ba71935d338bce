"""`bnncube zoo faces`: synthetic identities and pairs from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnncube.cli import main
from bnncube.zoo.synthetic_faces import read_pairs, write_dataset


def test_writes_dataset_and_pairs(tmp_path: Path) -> None:
    out, pairs = tmp_path / "faces", tmp_path / "lists" / "pairs.txt"
    args = ["zoo", "faces", str(out), "--identities", "5", "--images", "4", "--seed", "3"]
    assert main(args + ["--pairs", str(pairs), "--folds", "2", "--per-fold", "5"]) == 0
    people = sorted(p.name for p in out.iterdir())
    assert people == [f"Person_{i:04d}" for i in range(1, 6)]
    assert all(len(list((out / p).glob("*.jpg"))) == 4 for p in people)
    read = read_pairs(pairs)
    assert len(read) == 20 and sum(p.matched for p in read) == 10
    assert all(path.is_file() for p in read for path in p.paths(out))
    # the same bytes as the library writes for that seed
    ref = write_dataset(tmp_path / "ref", 5, 4, seed=3)
    for person in people:
        for image in sorted((out / person).iterdir()):
            assert image.read_bytes() == (ref / person / image.name).read_bytes()


def test_refuses_non_empty_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "keep.txt").write_text("mine")
    assert main(["zoo", "faces", str(tmp_path / "faces"), "--identities", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not an empty folder" in err
    assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == ["keep.txt"]


def test_too_few_pairs_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, pairs = tmp_path / "faces", tmp_path / "pairs.txt"
    args = ["zoo", "faces", str(out), "--identities", "2", "--images", "2", "--pairs", str(pairs)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: option --pairs: ") and str(out) in err and "needed" in err
    assert err.count("\n") == 0
    assert sorted(tmp_path.iterdir()) == []  # no dataset, no pairs, no staging folder
