"""Click options shared by several commands (cheap to import: click only)."""

from __future__ import annotations

import click

MODEL_TYPE_OPTION = click.option(
    "-t",
    "--type",
    "model_type",
    type=click.Choice(["keras", "tflite", "onnx"]),
    default=None,
    help="Force the model type instead of guessing it from the suffix.",
)
