"""`bnncube demo`: the whole face pipeline on generated data, as a user would run it.

Every stage is one `bnncube` command, printed before it runs and run in this process, so the demo
doubles as a worked example of the command line:

1. ``zoo faces``: synthetic identities for training, and other identities (never seen in
   training) with an LFW-format ``pairs.txt`` for testing;
2. ``train``: ``mnv2_fp`` (float, then ``mnv2_i8`` by post-training quantization) and ``hybrid``
   (quantization-aware, QKeras), briefly;
3. ``convert``: the hybrid to bnncube's ONNX and TFLite (LCE ops) forms;
4. ``generate``: C code of ``mnv2_i8`` and ``hybrid``;
5. ``validate``: the generated C on the host and on the emulated Cortex-M7 against the reference,
   on test faces;
6. ``compare``: LFW-protocol accuracy of the three models on the test pairs, embedding agreement,
   bit-exactness, flash / RAM / instructions beside the paper's Table 3.

The output folder is the demo's own: a previous demo there (marked by a ``.bnncube-demo`` file) is
replaced when the new one succeeds (set aside meanwhile, put back if the run fails or is
interrupted); any other non-empty folder is refused. The faces are synthetic: the accuracy figures
say the pipeline learns and keeps what it learnt through quantization and code generation; they are
not LFW figures.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.errors import BnnError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

MARKER = ".bnncube-demo"


@dataclass(frozen=True)
class DemoScale:
    """How much the demo does: data sizes and training settings."""

    train_identities: int
    train_images: int
    test_identities: int
    test_images: int
    folds: int
    per_fold: int
    training: dict[str, dict[str, Any]]  # network -> `bnncube train` options (without --)
    validate_images: int  # test faces run through the generated C on the host
    target_images: int  # of which this many also on the emulated Cortex-M7
    calib_count: int


def scales() -> dict[str, DemoScale]:
    """``default`` is what ``make demo`` runs (zoo.train.DEMO_SETTINGS, measured to fit the
    10-minute budget on 2 cores); ``tiny`` checks the wiring in the tests."""
    from bnncube.zoo.train import DEMO_SETTINGS as T

    tiny = {"epochs": 1, "batch": 8, "lr": 1e-3, "arcface_s": 16.0, "arcface_m": 0.2}
    return {
        "default": DemoScale(
            train_identities=T["identities"],
            train_images=T["images_per_identity"],
            test_identities=30,
            test_images=6,
            folds=10,
            per_fold=30,
            training={net: dict(T[net]) for net in ("mnv2_fp", "hybrid")},
            validate_images=20,
            target_images=2,
            calib_count=64,
        ),
        "tiny": DemoScale(
            train_identities=10,
            train_images=4,
            test_identities=6,
            test_images=3,
            folds=2,
            per_fold=6,
            training={"mnv2_fp": tiny, "hybrid": tiny},
            validate_images=3,
            target_images=1,
            calib_count=8,
        ),
    }


def _options(settings: dict[str, Any]) -> list[str]:
    """``{"arcface_s": 16.0}`` -> ``["--arcface-s", "16.0"]``."""
    out: list[str] = []
    for key, value in settings.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


class _Runner:
    """Runs `bnncube` commands in this process, printing each one first."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.timings: list[tuple[str, float]] = []

    def __call__(self, title: str, *args: str | Path) -> None:
        from bnncube.cli import main

        argv = [str(a) for a in args]
        self.log(f"\n== {title}\n$ bnncube {shlex.join(argv)}")
        start = time.perf_counter()
        code = main(argv)
        self.timings.append((title, time.perf_counter() - start))
        if code == 130:  # Ctrl-C in the stage: stop the demo as an interruption, not an error
            raise KeyboardInterrupt
        if code != 0:
            raise BnnError(f"demo: `bnncube {shlex.join(argv)}` failed (exit status {code})")


def run_demo(
    output: str | Path = "build/demo",
    scale: str = "default",
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the pipeline into ``output`` (a previous demo there is replaced when it succeeds);
    return the comparison report."""
    from bnncube.fsutil import folder_set_aside

    table = scales()
    if scale not in table:
        raise BnnError(f"option --scale: {scale!r} is not one of {', '.join(table)}")
    s = table[scale]
    work = Path(output)
    if work.exists():
        if not work.is_dir():
            raise BnnError(f"option -o: {work} exists and is not a folder")
        if any(work.iterdir()) and not (work / MARKER).is_file():
            raise BnnError(
                f"option -o: {work} is not empty and holds no earlier demo; choose another folder"
            )
    # a previous demo is set aside (not deleted) while this one runs: a failed or interrupted run
    # removes what it wrote and puts the previous one back
    with folder_set_aside(work) as work:
        (work / MARKER).write_text("written by `bnncube demo`; the next demo replaces it\n")
        return _pipeline(work, s, seed, log)


def _pipeline(work: Path, s: DemoScale, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The stages of :func:`run_demo`, into the (new, empty but for the marker) folder ``work``."""
    from bnncube.converters.loader import load_model
    from bnncube.validation.embeddings import load_images, model_inputs, pair_images
    from bnncube.validation.emulator import toolchain_available
    from bnncube.zoo.synthetic_faces import read_pairs

    start = time.perf_counter()
    run = _Runner(log)
    data, test, pairs = work / "data" / "train", work / "data" / "test", work / "data" / "pairs.txt"
    # 1. data: training people and other, unseen people for the test pairs
    run(
        "synthetic training identities",
        "zoo", "faces", data, "--identities", s.train_identities,
        "--images", s.train_images, "--seed", seed,
    )  # fmt: skip
    run(
        "synthetic test identities (not in training) and their pairs",
        "zoo", "faces", test, "--identities", s.test_identities, "--images", s.test_images,
        "--pairs", pairs, "--folds", s.folds, "--per-fold", s.per_fold, "--seed", seed + 1,
    )  # fmt: skip
    # 2. training
    run(
        "train mnv2_fp (float), then mnv2_i8 by post-training quantization",
        "train", "--model", "mnv2_fp", "--data", data, "-o", work / "mnv2_fp", "--seed", seed,
        "--calib-count", s.calib_count, *_options(s.training["mnv2_fp"]),
    )  # fmt: skip
    run(
        "train hybrid (quantization-aware, QKeras)",
        "train", "--model", "hybrid", "--data", data, "-o", work / "hybrid", "--seed", seed,
        *_options(s.training["hybrid"]),
    )  # fmt: skip
    models = {
        "mnv2_fp": work / "mnv2_fp" / "mnv2_fp.h5",
        "mnv2_i8": work / "mnv2_fp" / "mnv2_i8.tflite",
        "hybrid": work / "hybrid" / "hybrid.h5",
    }
    # 3. the exchange forms of the hybrid
    forms = work / "forms"
    forms.mkdir()
    for to in ("onnx", "tflite"):
        run(
            f"convert hybrid to bnncube's {to.upper()} form",
            "convert", "-m", models["hybrid"], "--to", to, "-o", forms / f"hybrid.{to}",
        )  # fmt: skip
    # 4. C code
    for name in ("mnv2_i8", "hybrid"):
        run(
            f"generate the C code of {name}",
            "generate", "-m", models[name], "-n", name, "-o", work / f"{name}_c", "-q",
        )  # fmt: skip
    # 5. validation on test faces
    rel, _, _ = pair_images(test, read_pairs(pairs))
    faces = load_images(test, rel[: s.validate_images])
    inputs = work / "validate" / "inputs"
    inputs.mkdir(parents=True)
    modes = ["host"] + (["target"] if toolchain_available() else [])
    if "target" not in modes:
        log("\n(arm-none-eabi-gcc is not installed: the emulated target is skipped)")
    for name in ("mnv2_i8", "hybrid"):
        x = model_inputs(load_model(models[name]), faces)
        np.savez(inputs / f"{name}.npz", x=x)
        np.savez(inputs / f"{name}_target.npz", x=x[: s.target_images])
        for mode in modes:
            vi = inputs / (f"{name}.npz" if mode == "host" else f"{name}_target.npz")
            run(
                f"validate {name}: generated C on the {mode} vs the reference, test faces",
                "validate", "-m", models[name], "-n", name, "--mode", mode, "-vi", vi,
                "-o", work / "validate" / mode, "-w", work / "ws",
            )  # fmt: skip
    # 6. the comparison
    run(
        "compare float, int8 and hybrid on the test pairs",
        "compare", "--float", models["mnv2_fp"], "--int8", models["mnv2_i8"],
        "--hybrid", models["hybrid"], "--data", test, "--pairs", pairs,
        "-o", work / "report", "-w", work / "ws",
        "--target-count", s.target_images if "target" in modes else 0,
    )  # fmt: skip
    shutil.rmtree(work / "ws", ignore_errors=True)  # build products, large and rebuildable
    report = json.loads((work / "report" / "compare_report.json").read_text())
    total = time.perf_counter() - start
    from bnncube.validation.compare import headline_table

    log("\n== stage times")
    for title, seconds in run.timings:
        log(f"  {seconds:7.1f} s  {title}")
    log(f"  {total:7.1f} s  total")
    log(f"\nreport: {work / 'report' / 'compare_report.html'}")
    log(headline_table(report))
    report["demo_seconds"] = round(total, 1)
    return report
