"""The `bnncube` command line (stedgeai-compatible where the commands overlap).

Each command is a thin layer over library functions. Errors in what the user gave (files, layers,
options) are one line on stderr and exit status 2; a validation that misses its bar exits 1.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import Any

import click

from bnncube import __version__
from bnncube.errors import BnnError, ValidationFailed
from bnncube.options import MODEL_TYPE_OPTION

C_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quiet_third_party() -> None:
    """Silence the warnings TensorFlow, QKeras and friends print on every import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    for category in (DeprecationWarning, FutureWarning, UserWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("tensorflow", "absl", "h5py", "qkeras", "larq"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # TensorFlow's C++ side logs (CUDA probing, oneDNN) before its log level applies: import it
    # with file descriptor 2 pointed at /dev/null, then restore stderr.
    from bnncube.fsutil import stderr_fd_silenced

    with stderr_fd_silenced():
        import tensorflow
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    tensorflow.get_logger().setLevel(logging.ERROR)


def check_c_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not C_NAME.match(value):
        raise click.BadParameter(f"{value!r} is not a C identifier", ctx, param)
    return value


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """-d: emu:unicorn, emu:qemu or serial:PORT[:BAUD]."""
    if value in ("emu:unicorn", "emu:qemu"):
        return value
    if value.startswith("serial:") and len(value) > len("serial:"):
        return value
    raise click.BadParameter(
        f"{value!r} is not one of 'emu:unicorn', 'emu:qemu', 'serial:PORT[:BAUD]'"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnncube")
def cli() -> None:
    """bnncube: binary and hybrid (1-bit + 8-bit) networks on STM32 microcontrollers."""
    quiet_third_party()


@cli.command()
@click.option(
    "-m",
    "--model",
    "model",
    required=True,
    type=click.Path(dir_okay=False),
    help="Model file: .h5/.keras (Keras, QKeras) or .tflite (int8).",
)
@MODEL_TYPE_OPTION
@click.option(
    "-n",
    "--name",
    "c_name",
    default="network",
    show_default=True,
    callback=check_c_name,
    help="C name of the network (names the report files).",
)
@click.option(
    "-o",
    "--output",
    "output",
    default="st_ai_output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the report files.",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not print the report.")
def analyze(model: str, model_type: str | None, c_name: str, output: str, quiet: bool) -> None:
    """Per-layer MACC, weights and activations of a model; writes NAME_analyze_report.{txt,json}."""
    from bnncube.analyze import analyze_graph, format_report, write_reports
    from bnncube.converters.loader import load_model
    from bnncube.converters.loader import model_type as detect_type

    kind = detect_type(model, model_type)
    graph = load_model(model, kind)
    report = analyze_graph(graph, c_name, model, kind)
    if not quiet:
        click.echo(format_report(report), nl=False)
    written = write_reports(report, output, c_name)
    click.echo("wrote " + ", ".join(str(p) for p in written))


CONVERT_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}


@cli.command()
@click.option(
    "-m",
    "--model",
    "model",
    required=True,
    type=click.Path(dir_okay=False),
    help="Model file: .h5/.keras (Keras, QKeras), .tflite (int8, LCE) or .onnx (bnncube's form).",
)
@MODEL_TYPE_OPTION
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Choice(["onnx", "tflite"]),
    help="Form to write: ONNX (custom domain ai.bnncube) or TFLite (builtins + LCE custom ops).",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="File to write (.onnx or .tflite, matching --to).",
)
def convert(model: str, model_type: str | None, target: str, output: str) -> None:
    """Convert a model to bnncube's ONNX form or to a TFLite model with LCE custom ops."""
    from pathlib import Path

    from bnncube.converters.loader import load_model
    from bnncube.converters.loader import model_type as detect_type

    out = Path(output)
    if out.suffix.lower() != CONVERT_SUFFIX[target]:
        raise BnnError(f"option -o: {out} must end in {CONVERT_SUFFIX[target]} for --to {target}")
    if not out.parent.is_dir():
        raise BnnError(f"option -o: folder {out.parent} does not exist or is not a folder")
    kind = detect_type(model, model_type)
    graph = load_model(model, kind)
    if target == "onnx":
        from bnncube.converters.onnx_export import save_onnx

        save_onnx(graph, out)
    else:
        from bnncube.converters.tflite_export import save_tflite

        save_tflite(graph, out)
    types: dict[str, int] = {}
    for op in graph.ops:
        types[op.type] = types.get(op.type, 0) + 1
    summary = ", ".join(f"{n} {t}" for t, n in types.items())
    click.echo(f"wrote {out} ({target}, {out.stat().st_size:,} bytes; {summary})")


def _model_options(fn):  # noqa: ANN001, ANN202 - click decorator stack
    fn = MODEL_TYPE_OPTION(fn)
    fn = click.option(
        "-m",
        "--model",
        "model",
        required=True,
        type=click.Path(dir_okay=False),
        help="Model file: .h5/.keras (QKeras), .tflite (int8) or .onnx (bnncube's form).",
    )(fn)
    return fn


def _generate_options(fn):  # noqa: ANN001, ANN202
    for option in reversed(
        [
            click.option(
                "-n",
                "--name",
                "c_name",
                default="network",
                show_default=True,
                callback=check_c_name,
                help="C name of the network (prefix of every generated symbol and file).",
            ),
            click.option(
                "-O",
                "--optimization",
                type=click.Choice(["time", "ram", "balanced"]),
                default="balanced",
                show_default=True,
                help="Memory plan: ram tries every strategy and keeps the smallest arena; "
                "balanced and ram also compute a residual Add inside the binary convolution "
                "before it where that makes the arena smaller (about 1% more instructions), "
                "time never does.",
            ),
            click.option(
                "--target",
                type=click.Choice(["stm32h7"]),
                default="stm32h7",
                show_default=True,
                help="Target device (STM32H743ZI: 2 MB flash, 1 MB RAM).",
            ),
            click.option("--split-weights", is_flag=True, help="List every constant's place."),
            click.option(
                "--no-inputs-allocation",
                is_flag=True,
                help="Inputs stay in the application's buffers, outside the activations buffer.",
            ),
            click.option(
                "--no-outputs-allocation",
                is_flag=True,
                help="Outputs go to the application's buffers, outside the activations buffer.",
            ),
            click.option(
                "--force", is_flag=True, help="Generate even if the network does not fit."
            ),
            click.option(
                "--input-data-type",
                type=click.Choice(["float32", "int8", "uint8"]),
                default=None,
                help="Element type of the input (default: the model's).",
            ),
            click.option(
                "--output-data-type",
                type=click.Choice(["float32", "int8", "uint8"]),
                default=None,
                help="Element type of the output (default: the model's).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _options_from(c_name: str, params: dict[str, Any], firmware: bool) -> Any:
    """The GenerateOptions of the options `_generate_options` declares."""
    from bnncube.generate import GenerateOptions

    return GenerateOptions(
        c_name=c_name,
        optimization=params["optimization"],
        split_weights=params["split_weights"],
        inputs_allocation=not params["no_inputs_allocation"],
        outputs_allocation=not params["no_outputs_allocation"],
        target=params["target"],
        force=params["force"],
        input_data_type=params["input_data_type"],
        output_data_type=params["output_data_type"],
        firmware=firmware and params["target"] == "stm32h7",
    )


@cli.command()
@_model_options
@_generate_options
@click.option(
    "-o",
    "--output",
    "output",
    default="st_ai_output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the generated files (replaced as a whole, atomically).",
)
@click.option(
    "-w",
    "--workspace",
    default="st_ai_ws",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Working folder (kept for stedgeai compatibility; generate writes nothing there).",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not print the report.")
def generate(
    model: str,
    model_type: str | None,
    c_name: str,
    output: str,
    workspace: str,
    quiet: bool,
    **generate_params: Any,
) -> None:
    """Generate the C code of MODEL (legacy X-CUBE-AI API) with a planned activations buffer."""
    from bnncube.converters.loader import load_model
    from bnncube.converters.loader import model_type as detect_type
    from bnncube.fsutil import write_folder
    from bnncube.generate import generate_code

    # stm32h7: X-CUBE-AI/App and a standalone firmware project too
    options = _options_from(c_name, generate_params, firmware=True)
    graph = load_model(model, detect_type(model, model_type))
    result = generate_code(graph, options, model)
    # staged beside OUTPUT, swapped in whole with Ctrl-C held back (fsutil.staged_folder)
    written = write_folder(output, result.files)
    if not quiet:
        click.echo(result.files[f"{c_name}_generate_report.txt"], nl=False)
    click.echo(
        f"wrote {len(written)} files to {output} (weights {result.weights_bytes:,} B, "
        f"activations {result.activations_bytes:,} B)"
    )


@cli.command()
@_model_options
@_generate_options
@click.option(
    "--mode",
    type=click.Choice(["host", "target"]),
    default="host",
    show_default=True,
    help="host: build the generated C for this machine and run it; target: cross-compile it "
    "for the Cortex-M7 and run it in an emulator (see -d).",
)
@click.option(
    "-d",
    "--device",
    callback=_check_device,
    default="emu:unicorn",
    show_default=True,
    help="With --mode target: emu:unicorn (exact instruction counts), emu:qemu (mps2-an500) or "
    "serial:PORT[:BAUD] (a device running the serial validation firmware, "
    "docs/serial-protocol.md).",
)
@click.option("-vi", "--valinput", "valinput", default=None, help="Inputs: .npy or .npz [N, ...].")
@click.option(
    "-vo",
    "--valoutput",
    "valoutput",
    default=None,
    help="Expected outputs (.npy/.npz) to compare with, instead of running the original model.",
)
@click.option(
    "-b",
    "--batches",
    default=10,
    show_default=True,
    type=click.IntRange(1, 100000),
    help="Number of random inputs (without -vi).",
)
@click.option(
    "--range",
    "value_range",
    nargs=2,
    type=float,
    default=None,
    help="Range of the random inputs (default: [-1, 1] for float, the full int8 range).",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--save-csv", is_flag=True, help="Also write the outputs as CSV files.")
@click.option("--per-layer", is_flag=True, help="Compare every layer's output too.")
@click.option(
    "-o",
    "--output",
    "output",
    default="st_ai_output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the validation reports.",
)
@click.option(
    "-w",
    "--workspace",
    default="st_ai_ws",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Working folder (generated code and its host build).",
)
def validate(
    model: str,
    model_type: str | None,
    c_name: str,
    mode: str,
    device: str,
    valinput: str | None,
    valoutput: str | None,
    batches: int,
    value_range: tuple[float, float] | None,
    seed: int,
    save_csv: bool,
    per_layer: bool,
    output: str,
    workspace: str,
    **generate_params: Any,
) -> None:
    """Generate MODEL, run the C code on the host, compare with the reference and the model."""
    from pathlib import Path

    from bnncube.converters.loader import load_model
    from bnncube.converters.loader import model_type as detect_type
    from bnncube.generate import generate_code
    from bnncube.validate import (
        check_bit_exact,
        format_validate_report,
        load_inputs,
        random_inputs,
        validate_host,
        write_validate_reports,
    )

    kind = detect_type(model, model_type)
    options = _options_from(c_name, generate_params, firmware=False)
    result = generate_code(load_model(model, kind), options, model)
    graph = result.graph  # with the I/O types asked for
    if valinput is not None:
        inputs = load_inputs(valinput, graph)
    else:
        inputs = random_inputs(graph, batches, seed, value_range)
    if mode == "target":
        from bnncube.validation.target import (
            format_target_report,
            validate_target,
            write_target_reports,
        )

        report = validate_target(
            model, kind, graph, result, c_name, inputs, Path(workspace), device, valoutput
        )
        written = write_target_reports(report, Path(output), c_name, save_csv)
        click.echo(format_target_report(report), nl=False)
        click.echo("wrote " + ", ".join(str(p) for p in written))
        check_bit_exact(report)
        return
    report = validate_host(
        model, kind, graph, result, c_name, inputs, per_layer, Path(workspace), valoutput
    )
    written = write_validate_reports(report, Path(output), c_name, save_csv)
    click.echo(format_validate_report(report), nl=False)
    click.echo("wrote " + ", ".join(str(p) for p in written))
    check_bit_exact(report)


@cli.group()
def zoo() -> None:
    """The paper's networks."""


@zoo.command("build")
@click.argument("network", metavar="NETWORK", type=click.Choice(["mnv2_fp", "mnv2_i8", "hybrid"]))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Model file to write: .h5 or .keras (mnv2_fp, hybrid), .tflite (mnv2_i8).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seed of the random initial weights (and generated calibration images).",
)
@click.option(
    "--calib",
    default=None,
    type=click.Path(),
    help="mnv2_i8: folder of face images for calibration (default: generated images).",
)
@click.option(
    "--calib-count",
    default=32,
    show_default=True,
    type=click.IntRange(1, 10000),
    help="mnv2_i8: number of calibration images.",
)
def zoo_build(network: str, output: str, seed: int, calib: str | None, calib_count: int) -> None:
    """Build NETWORK (untrained weights) and write it to a model file."""
    from bnncube.zoo.build import build

    build(network, output, seed=seed, calib=calib, calib_count=calib_count, log=click.echo)


@zoo.command("faces")
@click.argument("output", metavar="DIR", type=click.Path(file_okay=False))
@click.option(
    "--identities",
    default=40,
    show_default=True,
    type=click.IntRange(1, 100000),
    help="Number of synthetic people.",
)
@click.option(
    "--images",
    default=10,
    show_default=True,
    type=click.IntRange(1, 10000),
    help="Images per person.",
)
@click.option(
    "--pairs",
    "pairs",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write an LFW-format pairs.txt here.",
)
@click.option("--folds", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--per-fold",
    default=30,
    show_default=True,
    type=click.IntRange(1, 100000),
    help="Matched (and as many mismatched) pairs per fold.",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
def zoo_faces(
    output: str,
    identities: int,
    images: int,
    pairs: str | None,
    folds: int,
    per_fold: int,
    seed: int,
) -> None:
    """Write synthetic face-like identities in LFW's layout (a stand-in for real faces)."""
    import shutil
    import tempfile
    from pathlib import Path

    from bnncube.fsutil import sigint_deferred
    from bnncube.zoo.synthetic_faces import write_dataset, write_pairs

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BnnError(f"output {out}: exists and is not an empty folder; choose another")
    pairs_path = Path(pairs) if pairs is not None else None
    for folder in (out.parent, pairs_path.parent if pairs_path else None):
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BnnError(f"cannot create folder {folder}: {e.strerror}") from None
    # everything lands together or not at all: a too-small set for --pairs leaves nothing behind
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_dataset(staging / "faces", identities, images, seed)
        if pairs_path is not None:
            try:
                write_pairs(staging / "faces", staging / "pairs.txt", folds, per_fold, seed)
            except BnnError as e:  # name the folder the user asked for, not the staging one
                message = str(e).replace(str(staging / "faces"), str(out))
                raise BnnError(f"option --pairs: {message}") from None
        with sigint_deferred():  # the folder and pairs.txt land together
            if out.exists():
                out.rmdir()
            (staging / "faces").rename(out)
            if pairs_path is not None:
                (staging / "pairs.txt").replace(pairs_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    click.echo(f"wrote {identities} synthetic identities x {images} images to {out} (seed {seed})")
    if pairs_path is not None:
        click.echo(
            f"wrote {pairs_path} ({folds} folds x {per_fold} matched + {per_fold} mismatched pairs)"
        )


def _register_face_commands() -> None:
    """The face pipeline's commands live in their own modules (cheap to import: no TensorFlow)."""
    from bnncube.cmd_align import align
    from bnncube.cmd_compare import compare
    from bnncube.cmd_demo import demo
    from bnncube.cmd_lfw import lfw
    from bnncube.cmd_train import train

    for command in (align, train, lfw, compare, demo):
        cli.add_command(command)


_register_face_commands()


def _printable(message: object) -> str:
    """``message`` on one line: control characters (newlines, NUL...) written as escapes, so that
    a name read from a damaged file cannot break the one-line error or the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line and an exit status."""
    try:
        result = cli.main(args=argv, prog_name="bnncube", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        where = f" ({exc.ctx.command_path})" if exc.ctx is not None else ""
        message = " ".join(exc.format_message().split())  # one line (click lists choices on many)
        click.echo(f"error{where}: {message}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except (BnnError, ValidationFailed) as exc:
        click.echo(f"error: {_printable(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.ClickException as exc:
        click.echo(f"error: {_printable(exc.format_message())}", err=True)
        return exc.exit_code
    return result if isinstance(result, int) else 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
