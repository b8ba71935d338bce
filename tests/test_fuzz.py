"""The short seeded fuzz run of every front end (issue 9; the long run is `make fuzz`).

Hypothesis draws the mutations (derandomized: the same cases on every run) that
:mod:`bnncube.validation.fuzz` applies to tiny valid seed files; each case runs through the CLI
in a worker process (so a crash or hang of a C++ library is caught) and must end as ``ok`` or as
a clean one-line error naming the file (docs/fuzzing.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import random  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bnncube.validation import fuzz  # noqa: E402

pytest.importorskip("tensorflow")
pytest.importorskip("onnx")

# cases per front end (about 100 s in all on 2 cores): a Keras case costs a TensorFlow model
# load, the others a few milliseconds
EXAMPLES = {"h5": 150, "keras": 150, "tflite": 300, "onnx": 300, "npz": 300, "pairs": 300}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[bytes]]]:
    folder = tmp_path_factory.mktemp("fuzz_seeds")
    made = fuzz.make_seeds(folder)
    return folder, {fe: [p.read_bytes() for p in paths] for fe, paths in made.items()}


@pytest.fixture(scope="module")
def runner(
    seeds: tuple[Path, dict[str, list[bytes]]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[fuzz.Runner]:
    r = fuzz.Runner(seeds[0], tmp_path_factory.mktemp("fuzz_work"))
    yield r
    r.stop()


def _check(front_end: str, rnd: random.Random, seeds, runner: fuzz.Runner) -> None:
    data, names = fuzz.mutate(front_end, seeds[1][front_end], rnd)
    flip = front_end in ("npz", "pairs") and rnd.random() < 0.3
    result = runner.run(fuzz.Task(front_end, 0, data=data, flip=flip))
    assert result["outcome"] != "finding", (names, result)


def _fuzz_test(front_end: str):  # noqa: ANN202 - a test function
    @pytest.mark.slow
    @settings(
        max_examples=EXAMPLES[front_end],
        derandomize=True,
        deadline=None,
        database=None,  # nothing written outside tmp_path
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(rnd=st.randoms(use_true_random=False))
    def test(rnd: random.Random, seeds, runner) -> None:
        _check(front_end, rnd, seeds, runner)

    test.__name__ = f"test_fuzz_{front_end}"
    return test


test_fuzz_h5 = _fuzz_test("h5")
test_fuzz_keras = _fuzz_test("keras")
test_fuzz_tflite = _fuzz_test("tflite")
test_fuzz_onnx = _fuzz_test("onnx")
test_fuzz_npz = _fuzz_test("npz")
test_fuzz_pairs = _fuzz_test("pairs")


def test_seeded_cases_are_reproducible(seeds) -> None:
    """A case is the same bytes for the same (seed, front end, index): findings can be rerun."""
    for fe in fuzz.FRONT_ENDS:
        a = fuzz.build_case(fuzz.Task(fe, 7, seed=3), seeds[1])
        b = fuzz.build_case(fuzz.Task(fe, 7, seed=3), seeds[1])
        assert a == b


@pytest.mark.parametrize(
    ("status", "stderr", "escaped", "outcome"),
    [
        (0, "", None, "ok"),
        (2, "error: CASE: not a model\n", None, "error"),
        (2, "error: not a model\n", None, "finding"),  # does not name the file
        (2, "error: CASE: x\nmore\n", None, "finding"),  # two lines
        (1, "", None, "finding"),
        (None, "", "Traceback (most recent call last):\nValueError: x\n", "finding"),
        (2, "Traceback (most recent call last):\nerror: CASE\n", None, "finding"),
    ],
)
def test_classify(tmp_path: Path, status, stderr, escaped, outcome) -> None:
    case = tmp_path / "case.onnx"
    stderr = stderr.replace("CASE", str(case))
    assert fuzz.classify(case, tmp_path / "out", status, "", stderr, escaped)[0] == outcome


def test_classify_output_left_behind(tmp_path: Path) -> None:
    case, out = tmp_path / "case.onnx", tmp_path / "out"
    out.mkdir()
    result = fuzz.classify(case, out, 2, "", f"error: {case}: bad\n", None)
    assert result[0] == "finding" and "left behind" in result[1]


def test_runner_reports_a_dead_worker(seeds, tmp_path: Path) -> None:
    """A case that kills the worker process (as a segfault in a C++ parser would) is a finding,
    and the next case runs in a fresh worker."""
    r = fuzz.Runner(seeds[0], tmp_path / "work", timeout=60)
    try:
        died = r.run(fuzz.Task("pairs", 0, data=fuzz.SELF_TEST_CRASH))
        assert died["outcome"] == "finding" and "died" in died["reason"], died
        again = r.run(fuzz.Task("pairs", 1, data=(seeds[0] / "pairs.txt").read_bytes()))
        assert again["outcome"] == "ok", again
    finally:
        r.stop()
