"""`bnncube compare`: float vs int8 vs hybrid on one face set (docs/compare.md).

Cheap to import: TensorFlow and the runners load inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("compare")
@click.option(
    "--float",
    "float_model",
    default=None,
    type=click.Path(dir_okay=False),
    help="Float MobileNetV2 (.h5/.keras), run in Keras.",
)
@click.option(
    "--int8",
    "int8_model",
    default=None,
    type=click.Path(dir_okay=False),
    help="Its full-integer quantized form (.tflite, int8 ops).",
)
@click.option(
    "--hybrid",
    "hybrid_model",
    default=None,
    type=click.Path(dir_okay=False),
    help="The hybrid binary/8-bit network (QKeras .h5/.keras).",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(),
    help="Folder of aligned faces in LFW layout (DIR/Name/Name_0001.jpg).",
)
@click.option("--pairs", required=True, type=click.Path(), help="LFW-format pairs.txt.")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for compare_report.{html,md,json} and roc.png (a new or empty folder, or a "
    "previous report's, replaced as a whole).",
)
@click.option(
    "--flip",
    is_flag=True,
    help="Represent each image by normalize(f(img) + f(mirrored img)).",
)
@click.option(
    "--engine-int8",
    type=click.Choice(["host-c", "tflite"]),
    default="host-c",
    show_default=True,
    help="Runs the int8 model: the generated C on this machine, or the TFLite interpreter.",
)
@click.option(
    "--engine-hybrid",
    type=click.Choice(["host-c", "keras"]),
    default="host-c",
    show_default=True,
    help="Runs the hybrid model: the generated C on this machine, or QKeras.",
)
@click.option(
    "--target-count",
    default=4,
    show_default=True,
    type=click.IntRange(min=0),
    help="Images run on the emulated Cortex-M7 (bit-exactness, instructions, flash/RAM); "
    "0 skips the target.",
)
@click.option(
    "-w",
    "--workspace",
    default=None,
    type=click.Path(file_okay=False),
    help="Working folder for the generated code and its builds (default: a temporary one).",
)
def compare(
    float_model: str | None,
    int8_model: str | None,
    hybrid_model: str | None,
    data: str,
    pairs: str,
    output: str,
    flip: bool,
    engine_int8: str,
    engine_hybrid: str,
    target_count: int,
    workspace: str | None,
) -> None:
    """Compare the float, int8 and hybrid networks: LFW accuracy, ROC, embedding agreement,
    bit-exactness of the generated C, flash/RAM/MACC/instructions beside the paper's Table 3."""
    from bnncube.errors import BnnError
    from bnncube.validation.compare import compare as run_compare
    from bnncube.validation.compare import headline_table

    given = {"float": float_model, "int8": int8_model, "hybrid": hybrid_model}
    models = {k: Path(v) for k, v in given.items() if v is not None}
    if not models:
        raise BnnError("no model given: pass at least one of --float, --int8, --hybrid")
    report = run_compare(
        models,
        Path(data),
        Path(pairs),
        Path(output),
        flip=flip,
        engines={"int8": engine_int8, "hybrid": engine_hybrid},
        target_count=target_count,
        workspace=None if workspace is None else Path(workspace),
        log=click.echo,
    )
    click.echo("")
    click.echo(headline_table(report), nl=False)
    if report["data"]["synthetic"]:
        click.echo(f"note: {report['data']['note']}")
