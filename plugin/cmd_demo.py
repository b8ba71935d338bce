"""`bnncube demo`: the whole face pipeline on generated data (what `make demo` runs)."""

from __future__ import annotations

import click


@click.command("demo")
@click.option(
    "-o",
    "--output",
    "output",
    default="build/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for everything the demo writes (an earlier demo there is replaced).",
)
@click.option(
    "--scale",
    type=click.Choice(["default", "tiny"]),
    default="default",
    show_default=True,
    help="default: the demo (about 10 minutes on 2 cores); tiny: a one-minute wiring check.",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
def demo(output: str, scale: str, seed: int) -> None:
    """Generate synthetic identities, train mnv2_fp and hybrid, quantize mnv2_i8, convert,
    generate C, validate it on the host and the emulated Cortex-M7, and compare the three models.

    The faces are synthetic (a stand-in for real ones): the accuracies show the pipeline learns and
    keeps what it learnt; they are not LFW figures.
    """
    from bnncube.zoo.demo import run_demo

    run_demo(output, scale=scale, seed=seed, log=click.echo)
