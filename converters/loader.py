"""Pick the front end for a model file and return its deployed IR graph."""

from __future__ import annotations

from pathlib import Path

from bnncube.converters.ir import Graph
from bnncube.errors import BnnError

MODEL_TYPES = {".h5": "keras", ".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}


def model_type(path: str | Path, forced: str | None = None) -> str:
    """The front end for ``path``: ``forced`` (``-t``) or the file suffix."""
    path = Path(path)
    if forced:
        if forced not in ("keras", "tflite", "onnx"):
            raise BnnError(f"option -t/--type: {forced!r} is not one of keras, tflite, onnx")
        return forced
    kind = MODEL_TYPES.get(path.suffix.lower())
    if kind is None:
        raise BnnError(
            f"{path}: unknown model type {path.suffix or '(no suffix)'!r}; supported: "
            ".h5/.keras (Keras, QKeras), .tflite, .onnx (or force it with -t)"
        )
    return kind


def load_model(path: str | Path, forced_type: str | None = None) -> Graph:
    path = Path(path)
    kind = model_type(path, forced_type)
    if not path.exists():
        raise BnnError(f"{path}: no such file")
    if path.is_dir():
        raise BnnError(f"{path}: is a directory, expected a model file")
    if kind == "keras":
        from bnncube.converters.keras_frontend import load_keras

        return load_keras(path)
    if kind == "tflite":
        from bnncube.converters.passes import lower_graph
        from bnncube.converters.tflite_frontend import load_tflite

        return lower_graph(load_tflite(path))
    from bnncube.converters.onnx_frontend import load_onnx

    return load_onnx(path)
