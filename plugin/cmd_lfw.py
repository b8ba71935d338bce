"""`bnncube lfw`: LFW pair-matching evaluation of a model in any engine (docs/lfw.md).

A thin layer over :func:`bnncube.validation.embeddings.evaluate_model`; cheap to import (no
TensorFlow, onnxruntime or PIL until the command runs).
"""

from __future__ import annotations

from pathlib import Path

import click

from bnncube.errors import BnnError
from bnncube.options import MODEL_TYPE_OPTION

ENGINE_CHOICES = ("keras", "tflite", "onnx", "host-c", "target")  # embeddings.ENGINES


def _c_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from bnncube.cli import check_c_name

    return check_c_name(ctx, param, value)


@click.command("lfw", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-m",
    "--model",
    "model",
    default=None,
    type=click.Path(dir_okay=False),
    help="Model file: .h5/.keras (QKeras), .tflite (int8, LCE) or .onnx (bnncube's form).",
)
@MODEL_TYPE_OPTION
@click.option(
    "--embeddings",
    "embeddings_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Precomputed embeddings (.npz keyed Name/Name_0001.jpg, flipped ones "
    "flip/Name/Name_0001.jpg) instead of -m.",
)
@click.option(
    "--data",
    default=None,
    type=click.Path(),
    help="Folder of the images in LFW layout (Name/Name_0001.jpg); needed with -m.",
)
@click.option(
    "--pairs",
    "pairs",
    required=True,
    type=click.Path(dir_okay=False),
    help="LFW pairs file (pairs.txt: header 'folds<TAB>per_fold', then the pair lines).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINE_CHOICES),
    default=None,
    help="Where the model runs (default: keras for .h5, tflite for .tflite, onnx for .onnx); "
    "host-c: the generated C on this machine; target: the emulated Cortex-M7 (slow, only "
    "--target-count images).",
)
@click.option("--flip", is_flag=True, help="Also embed the mirrored images: normalize(e + e_flip).")
@click.option(
    "--json",
    "json_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the results as JSON to this file.",
)
@click.option(
    "--save-embeddings",
    default=None,
    type=click.Path(dir_okay=False),
    help="With -m: write the computed embeddings to this .npz (the --embeddings format).",
)
@click.option(
    "-w",
    "--workspace",
    default=None,
    type=click.Path(file_okay=False),
    help="host-c/target: folder for the generated C and its build (default: a temporary one).",
)
@click.option(
    "--target-count",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="target: how many images (the first of the pair-image list) run on the emulator.",
)
@click.option(
    "-n",
    "--name",
    "c_name",
    default="network",
    show_default=True,
    callback=_c_name,
    help="C name of the generated network (host-c, target).",
)
def lfw(
    model: str | None,
    model_type: str | None,
    embeddings_file: str | None,
    data: str | None,
    pairs: str,
    engine: str | None,
    flip: bool,
    json_file: str | None,
    save_embeddings: str | None,
    workspace: str | None,
    target_count: int,
    c_name: str,
) -> None:
    """LFW verification (10-fold accuracy, AUC, EER, TAR@FAR=1e-3) of MODEL's embeddings.

    \b
    bnncube lfw -m MODEL --data DIR --pairs pairs.txt [--engine ENGINE] [--flip] [--json FILE]
    bnncube lfw --embeddings FILE.npz --pairs pairs.txt [--flip] [--json FILE]
    """
    import json

    from bnncube.fsutil import write_text_files
    from bnncube.validation.embeddings import check_output_file, evaluate_model, format_summary

    if model is not None and embeddings_file is not None:
        raise BnnError("options -m and --embeddings: give one of them, not both")
    if model is None and embeddings_file is None:
        raise BnnError("option -m: give a model (-m) or precomputed embeddings (--embeddings)")
    if embeddings_file is not None:
        for option, value in (
            ("--engine", engine),
            ("-t", model_type),
            ("-w", workspace),
            ("--save-embeddings", save_embeddings),
            ("--data", data),
        ):
            if value is not None:
                raise BnnError(f"option {option}: only with -m, not with --embeddings")
    if model is not None and data is None:
        raise BnnError("option --data: the folder of LFW images is required with -m")
    if json_file is not None:
        check_output_file(Path(json_file), "--json")

    summary = evaluate_model(
        model,
        Path(data) if data is not None else None,
        Path(pairs),
        engine=engine,
        flip=flip,
        embeddings_file=Path(embeddings_file) if embeddings_file is not None else None,
        workspace=Path(workspace) if workspace is not None else None,
        target_count=target_count,
        log=lambda line: click.echo(line, err=True),
        model_type=model_type,
        c_name=c_name,
        save_embeddings=Path(save_embeddings) if save_embeddings is not None else None,
    )
    if json_file is not None:
        text = json.dumps(summary, indent=2) + "\n"
        write_text_files({Path(json_file): text})
    click.echo(format_summary(summary))
    written = [p for p in (save_embeddings, json_file) if p is not None]
    if written:
        click.echo("wrote " + ", ".join(written))
