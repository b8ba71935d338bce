"""`bnncube train`: ArcFace training of mnv2_fp or the hybrid net (library: bnncube.zoo.train)."""

from __future__ import annotations

import click


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    "model_name",
    required=True,
    type=click.Choice(["mnv2_fp", "hybrid"]),
    help="Network to train: float MobileNetV2 (mnv2_fp) or the QKeras hybrid (trained "
    "quantization-aware).",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(),
    help="Folder of aligned 96x96 faces in LFW layout (DIR/Name/Name_0001.jpg).",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(),
    help="Output folder: MODEL.h5, mnv2_i8.tflite, checkpoints/, train_log.json, report.",
)
@click.option("--epochs", default=10, show_default=True, type=int, help="Epochs in total.")
@click.option(
    "--batch", default=64, show_default=True, type=int, help="Global batch (all replicas)."
)
@click.option(
    "--lr",
    default=1e-3,
    show_default=True,
    type=float,
    help="Adam learning rate (cosine decay to 1% of it over the run).",
)
@click.option("--arcface-s", default=64.0, show_default=True, type=float, help="ArcFace scale s.")
@click.option(
    "--arcface-m",
    default=0.5,
    show_default=True,
    type=float,
    help="ArcFace additive angular margin m (radians).",
)
@click.option(
    "--margin-warmup",
    default=0,
    show_default=True,
    type=int,
    help="Epochs over which the margin rises linearly from 0 to m (helps short runs).",
)
@click.option(
    "--val-split",
    default=0.2,
    show_default=True,
    type=float,
    help="Fraction of the IDENTITIES held out for pair-verification validation.",
)
@click.option(
    "--resume", is_flag=True, help="Continue from the last checkpoint in OUTDIR/checkpoints."
)
@click.option(
    "--strategy",
    default="default",
    show_default=True,
    type=click.Choice(["default", "mirrored", "multiworker"]),
    help="tf.distribute strategy: one device, all local GPUs, or several hosts (TF_CONFIG).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of split, init, data.")
@click.option(
    "--calib-count",
    default=100,
    show_default=True,
    type=int,
    help="mnv2_fp: training images that calibrate the int8 post-training quantization.",
)
@click.option("--no-int8", is_flag=True, help="mnv2_fp: do not write mnv2_i8.tflite.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(
    model_name: str,
    data: str,
    output: str,
    epochs: int,
    batch: int,
    lr: float,
    arcface_s: float,
    arcface_m: float,
    margin_warmup: int,
    val_split: float,
    resume: bool,
    strategy: str,
    seed: int,
    calib_count: int,
    no_int8: bool,
    quiet: bool,
) -> None:
    """Train an embedding network with ArcFace on faces in LFW layout.

    The people are split 80/20 (--val-split) by identity; each epoch reports the ArcFace loss
    and the pair-verification accuracy among the held-out people. Writes OUTDIR/MODEL.h5 (the
    embedding network that generate/convert/validate accept) and, for mnv2_fp, mnv2_i8.tflite.
    """
    from bnncube.zoo.train import train as run_train

    run_train(
        model_name,
        data,
        output,
        epochs=epochs,
        batch=batch,
        lr=lr,
        arcface_s=arcface_s,
        arcface_m=arcface_m,
        val_split=val_split,
        resume=resume,
        strategy=strategy,
        seed=seed,
        int8=not no_int8,
        calib_count=calib_count,
        progress=not quiet,
        log=click.echo,
        margin_warmup=margin_warmup,
    )
