"""`bnncube align`: MTCNN 5-point face alignment of an LFW-style image tree.

Cheap to import: MTCNN and TensorFlow load inside the command (see bnncube.zoo.align).
"""

from __future__ import annotations

import click


@click.command("align", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("src", type=click.Path(file_okay=True, dir_okay=True))
@click.argument("dst", type=click.Path(file_okay=True, dir_okay=True))
@click.option(
    "--size",
    "size",
    type=int,
    default=96,
    show_default=True,
    help="Side of the square output images in pixels (>= 32); the template scales with it.",
)
@click.option(
    "--workers",
    "workers",
    type=int,
    default=1,
    show_default=True,
    help="Processes (each builds its own MTCNN); outputs are identical for any number.",
)
@click.option(
    "--no-face",
    "no_face",
    type=click.Choice(["center", "skip"]),
    default="center",
    show_default=True,
    help="Image without a face: write a centre crop (central half) resized to SIZE, or skip it.",
)
@click.option(
    "--min-face",
    "min_face",
    type=int,
    default=20,
    show_default=True,
    help="Ignore faces whose box is smaller than this many pixels (shorter side; >= 12).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def align(
    src: str, dst: str, size: int, workers: int, no_face: str, min_face: int, quiet: bool
) -> None:
    """Detect faces with MTCNN and warp each onto a fixed 5-point template.

    SRC is a folder tree such as LFW's (person/person_0001.jpg; .jpg, .jpeg, .png at any depth).
    DST receives the aligned SIZExSIZE images under the same relative paths (JPEG quality 95 or
    PNG, as the source), plus align_report.json and align_report.txt. Outputs that already exist
    are skipped, so an interrupted run can simply be started again.
    """
    from bnncube.zoo.align import align_folder

    align_folder(
        src,
        dst,
        size=size,
        workers=workers,
        no_face=no_face,
        min_face=min_face,
        progress=not quiet,
        log=click.echo,
    )
