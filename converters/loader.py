"""Pick the front end for a model file and return its deployed IR graph."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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


T = TypeVar("T")

# {file key: object} while `reading_each_file_once` is active, else None
_CACHE: dict[tuple[Any, ...], Any] | None = None


@contextmanager
def reading_each_file_once() -> Iterator[None]:
    """Within the block, each model file is read once: :func:`load_model` returns a deep copy of
    the IR it first built for a file, and ``keras_frontend.load_keras_model`` the same Keras
    model object (use it for inference only). A file is the same while its resolved path, size
    and modification time are. For commands that run one model through several runners
    (``compare``); nested blocks share the outer cache. Not thread-safe."""
    global _CACHE
    outer = _CACHE
    if outer is None:
        _CACHE = {}
    try:
        yield
    finally:
        if outer is None:
            _CACHE = None


def cached(kind: str, path: Path, build: Callable[[], T], copied: bool) -> T:
    """``build()``, or what it returned for this file earlier in a `reading_each_file_once`
    block (a deep copy when ``copied``)."""
    if _CACHE is None:
        return build()
    try:
        st = path.stat()
    except OSError:
        return build()
    key = (kind, str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = build()
    return copy.deepcopy(_CACHE[key]) if copied else _CACHE[key]


def load_model(path: str | Path, forced_type: str | None = None) -> Graph:
    path = Path(path)
    kind = model_type(path, forced_type)
    if not path.exists():
        raise BnnError(f"{path}: no such file")
    if path.is_dir():
        raise BnnError(f"{path}: is a directory, expected a model file")
    try:
        return cached(f"ir:{kind}", path, lambda: _load(path, kind), copied=True)
    except BnnError as e:
        text = str(e)
        if text.isprintable():
            raise
        # a name read from the file (tensor, operator, layer) may hold newlines or control
        # characters: the message must stay one printable line
        raise BnnError(printable(text)) from None


def printable(text: str) -> str:
    """``text`` with every non-printable character (newline, NUL, ...) written as an escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _load(path: Path, kind: str) -> Graph:
    if kind == "keras":
        from bnncube.converters.keras_frontend import load_keras

        return load_keras(path)
    if kind == "tflite":
        from bnncube.converters.passes import lower_graph
        from bnncube.converters.tflite_frontend import load_tflite

        return lower_graph(load_tflite(path))
    from bnncube.converters.onnx_frontend import load_onnx

    return load_onnx(path)
