"""Fuzzing of every front end: mutated valid files and random bytes through the real CLI.

Six front ends: ``h5`` and ``keras`` (Keras/QKeras model files), ``tflite``, ``onnx`` (the model
front ends, each case run as ``bnncube analyze -m CASE``), ``npz`` (``bnncube lfw --embeddings
CASE``) and ``pairs`` (``bnncube lfw --pairs CASE``). Seeds are tiny valid files made at run time
(:func:`make_seeds`); each case is a seed changed by one to three mutations (byte-level: bit
flips, byte insert/delete, truncation, chunk duplication, splicing, random bytes; structured: a
field of the ONNX protobuf or the TFLite flatbuffer, the Keras JSON config, an HDF5 attribute or
weight, an array of the npz or its ``.npy`` header, a line or field of pairs.txt).

Every case runs in a worker process (restarted when it dies), under a per-case time limit, and
gets one outcome:

* ``ok``: exit status 0;
* ``error``: exit status 2 with one ``error: ...`` line that names the input file, no
  traceback, and no partial output left behind;
* ``finding``: anything else: another status, an exception escaping ``main``, traceback text,
  an error line that does not name the file, output left behind, a crash of the worker
  (segfault, abort, out of memory) or a hang past the time limit.

``python -m bnncube.validation.fuzz --cases 10000 --out build/fuzz`` (``make fuzz``) prints a
table per front end, writes ``summary.json`` and copies every finding's input under
``findings/``. A case is reproducible from (seed, front end, index): ``--front-end F --seed S
--start I --cases 1`` reruns it. docs/fuzzing.md has the details.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRONT_ENDS = ("h5", "keras", "tflite", "onnx", "npz", "pairs")
MODEL_FRONT_ENDS = ("h5", "keras", "tflite", "onnx")
SUFFIX = {
    "h5": ".h5",
    "keras": ".keras",
    "tflite": ".tflite",
    "onnx": ".onnx",
    "npz": ".npz",
    "pairs": ".txt",
}
CASE_TIMEOUT_S = 60.0  # above keras_frontend.HDF5_PROBE_TIMEOUT_S
WORKER_START_S = 300.0
SELF_TEST_CRASH = b"bnncube-fuzz self-test: the worker kills itself with SIGSEGV"
MEMORY_LIMIT_BYTES = 6 << 30  # per worker: a case that asks for more is a finding, not an OOM
RESTART_EVERY = 400  # worker restarts after this many cases (bounds TensorFlow's growth)

INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 8, 127, 128, 255, 256, -128, 2**15, 2**16, 2**31 - 1)
INTERESTING_INTS += (2**31, 2**32 - 1, -(2**31), 2**63 - 1, -(2**63), 10**9)
INTERESTING_FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-45, 1e38, 3.5e38, float("nan"), float("inf"))
INTERESTING_FLOATS += (float("-inf"), 0.5, 1e-12)


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------

PERSONS = ("Ada_Lovelace", "Alan_Turing", "Grace_Hopper", "John_von_Neumann")
EMBEDDING_DIM = 8


def _tiny_qkeras_model() -> Any:
    """Input -> 8-bit input quantizer -> sign -> binary 3x3 conv -> BN -> 8-bit -> int8 dense."""
    import tensorflow as tf
    from qkeras import QActivation, QConv2D, QDense, binary, quantized_bits

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inp = layers.Input((6, 6, 2), name="input")
    x = QActivation(quantized_bits(8, 0, alpha=1), name="in_q")(inp)
    x = QActivation(binary(alpha=1), name="sign")(x)
    x = QConv2D(4, 3, use_bias=False, kernel_quantizer=binary(alpha=1), name="bconv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = QActivation(quantized_bits(8, 2, alpha=1), name="bconv_q")(x)
    x = layers.Flatten(name="flatten")(x)
    x = QDense(
        3,
        kernel_quantizer=quantized_bits(8, 0, alpha=1),
        bias_quantizer=quantized_bits(32, 15, alpha=1),
        name="dense",
    )(x)
    return tf.keras.Model(inp, x, name="tiny")


def _tiny_int8_tflite() -> bytes:
    """A tiny float model (conv, depthwise, dense) through TF's own int8 converter."""
    import numpy as np
    import tensorflow as tf

    from bnncube.zoo.build import quantize_mnv2

    tf.keras.utils.set_random_seed(1)
    layers = tf.keras.layers
    inp = layers.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = layers.DepthwiseConv2D(3, name="dw")(x)
    model = tf.keras.Model(inp, layers.Dense(3, name="dense")(layers.Flatten()(x)))
    images = np.random.default_rng(0).uniform(-1, 1, (4, 6, 6, 2)).astype(np.float32)
    return quantize_mnv2(model, images)


def _run_cli(argv: list[str]) -> None:
    from contextlib import redirect_stderr, redirect_stdout

    from bnncube.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(argv)
    if status != 0:
        raise RuntimeError(f"bnncube {' '.join(argv)} failed ({status}): {err.getvalue()}")


def seed_pairs_text() -> str:
    """An LFW-format pairs.txt (2 folds x 3 matched + 3 mismatched) over :data:`PERSONS`."""
    lines = ["2\t3"]
    for fold in range(2):
        for k in range(3):
            lines.append(f"{PERSONS[(fold + k) % 4]}\t1\t{2 + (k % 2)}")
        for k in range(3):
            a, b = PERSONS[k], PERSONS[(k + 1 + fold) % 4]
            lines.append(f"{a}\t{1 + k % 3}\t{b}\t{1 + (k + fold) % 3}")
    return "\n".join(lines) + "\n"


def make_seeds(folder: Path, front_ends: tuple[str, ...] = FRONT_ENDS) -> dict[str, list[Path]]:
    """Write the valid seed files of ``front_ends`` under ``folder``; ``{front end: [paths]}``.

    The companions the lfw cases need (``pairs.txt`` for npz cases, ``embeddings.npz`` for pairs
    cases) are written as well, as ``companion.txt`` and ``companion.npz``."""
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, list[Path]] = {}
    models = [f for f in front_ends if f in MODEL_FRONT_ENDS]
    if models:
        from bnncube.cli import quiet_third_party

        quiet_third_party()
        model = _tiny_qkeras_model()
        h5 = folder / "tiny.h5"
        model.save(h5)
        if "keras" in front_ends:
            model.save(folder / "tiny.keras")
            seeds["keras"] = [folder / "tiny.keras"]
        if "h5" in front_ends:
            seeds["h5"] = [h5]
        if "tflite" in front_ends or "onnx" in front_ends:
            ours = folder / "tiny_lce.tflite"
            _run_cli(["convert", "-m", str(h5), "--to", "tflite", "-o", str(ours)])
            tf_int8 = folder / "tiny_int8.tflite"
            tf_int8.write_bytes(_tiny_int8_tflite())
            seeds["tflite"] = [ours, tf_int8]
            onnx_seeds = []
            for src, name in ((h5, "tiny_bin.onnx"), (tf_int8, "tiny_int8.onnx")):
                _run_cli(["convert", "-m", str(src), "--to", "onnx", "-o", str(folder / name)])
                onnx_seeds.append(folder / name)
            seeds["onnx"] = onnx_seeds
        for kind in ("tflite", "onnx"):
            if kind not in front_ends:
                seeds.pop(kind, None)
    if "npz" in front_ends or "pairs" in front_ends:
        from bnncube.validation.embeddings import save_embeddings_file

        rng = np.random.default_rng(0)
        rel = [f"{p}/{p}_{i:04d}.jpg" for p in PERSONS for i in (1, 2, 3)]
        emb = rng.normal(size=(len(rel), EMBEDDING_DIM)).astype(np.float32)
        flip = emb + rng.normal(scale=0.1, size=emb.shape).astype(np.float32)
        npz = folder / "embeddings.npz"
        save_embeddings_file(npz, rel, emb, flip)
        pairs = folder / "pairs.txt"
        pairs.write_text(seed_pairs_text())
        shutil.copyfile(npz, folder / "companion.npz")
        shutil.copyfile(pairs, folder / "companion.txt")
        if "npz" in front_ends:
            seeds["npz"] = [npz]
        if "pairs" in front_ends:
            seeds["pairs"] = [pairs]
    return seeds


# --------------------------------------------------------------------------------------------
# byte-level mutators
# --------------------------------------------------------------------------------------------


def _span(rnd: random.Random, n: int, most: int = 64) -> tuple[int, int]:
    start = rnd.randrange(max(n, 1))
    return start, min(n, start + rnd.randint(1, most))


def bit_flips(data: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.choice((1, 1, 2, 4, 16))):
        if buf:
            i = rnd.randrange(len(buf))
            buf[i] ^= 1 << rnd.randrange(8)
    return bytes(buf)


def set_bytes(data: bytes, rnd: random.Random) -> bytes:
    """Overwrite 1, 2, 4 or 8 bytes with an interesting integer (either byte order)."""
    buf = bytearray(data)
    if not buf:
        return data
    width = rnd.choice((1, 2, 4, 8))
    value = rnd.choice(INTERESTING_INTS) % (1 << (8 * width))
    raw = value.to_bytes(width, rnd.choice(("little", "big")))
    i = rnd.randrange(len(buf))
    buf[i : i + width] = raw[: len(buf) - i]
    return bytes(buf)


def insert_bytes(data: bytes, rnd: random.Random) -> bytes:
    i = rnd.randrange(len(data) + 1)
    chunk = rnd.choice((bytes([rnd.randrange(256)]) * rnd.randint(1, 64), rnd.randbytes(16)))
    return data[:i] + chunk + data[i:]


def delete_bytes(data: bytes, rnd: random.Random) -> bytes:
    start, end = _span(rnd, len(data), rnd.choice((1, 8, 256)))
    return data[:start] + data[end:]


def truncate(data: bytes, rnd: random.Random) -> bytes:
    return data[: rnd.randrange(len(data) + 1)]


def duplicate_chunk(data: bytes, rnd: random.Random) -> bytes:
    start, end = _span(rnd, len(data), 512)
    at = rnd.randrange(len(data) + 1)
    return data[:at] + data[start:end] + data[at:]


def random_bytes(data: bytes, rnd: random.Random) -> bytes:
    n = rnd.choice((0, 1, 7, 8, 64, 1024, len(data)))
    head = data[: rnd.choice((0, 0, 4, 8, 16))]  # sometimes keep the magic number
    return head + rnd.randbytes(n)


BYTE_MUTATORS: tuple[Callable[[bytes, random.Random], bytes], ...] = (
    bit_flips,
    set_bytes,
    insert_bytes,
    delete_bytes,
    truncate,
    duplicate_chunk,
)


def splice(data: bytes, other: bytes, rnd: random.Random) -> bytes:
    """The head of ``data`` and the tail of ``other`` (another seed, or ``data`` itself)."""
    return data[: rnd.randrange(len(data) + 1)] + other[rnd.randrange(len(other) + 1) :]


# --------------------------------------------------------------------------------------------
# structured mutators
# --------------------------------------------------------------------------------------------


def _other_int(value: int, rnd: random.Random) -> int:
    return rnd.choice(
        (rnd.choice(INTERESTING_INTS), value + 1, value - 1, -value, value * 2, rnd.randrange(64))
    )


def _other_float(value: float, rnd: random.Random) -> float:
    return rnd.choice((rnd.choice(INTERESTING_FLOATS), -value, value * 1000.0, value / 1000.0))


def _other_text(value: str, rnd: random.Random) -> str:
    return rnd.choice(
        (
            "",
            value[: rnd.randrange(len(value) + 1)],
            value + value,
            value.upper(),
            "x" * rnd.choice((1, 300)),
            "\u00e9\u2603",
            "../" + value,
            value + "\x00",
        )
    )


def mutate_json(value: Any, rnd: random.Random) -> Any:
    """One change somewhere in a JSON value (a config): a leaf replaced, a key or item dropped
    or duplicated, a value turned into another type."""
    spots: list[tuple[Any, Any]] = []  # (container, key)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                spots.append((node, k))
                walk(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                spots.append((node, i))
                walk(v)

    walk(value)
    if not spots:
        return rnd.choice((None, 0, "", [], {}))
    parent, key = rnd.choice(spots)
    old = parent[key]
    action = rnd.randrange(6)
    if action == 0:
        del parent[key]
    elif action == 1 and isinstance(parent, list):
        parent.insert(key, json.loads(json.dumps(old)))
    elif action == 2:
        parent[key] = rnd.choice((None, True, 0, -1, 1.5, "", "x", [], {}, [1, 2], {"a": 1}))
    elif isinstance(old, bool):
        parent[key] = not old
    elif isinstance(old, int):
        parent[key] = _other_int(old, rnd)
    elif isinstance(old, float):
        parent[key] = _other_float(old, rnd)
    elif isinstance(old, str):
        parent[key] = _other_text(old, rnd)
    elif isinstance(old, list):
        parent[key] = old[: rnd.randrange(len(old) + 1)] if old else [None]
    else:
        parent[key] = rnd.choice((None, "x", 7))
    return value


def _mutate_json_bytes(raw: bytes, rnd: random.Random) -> bytes:
    try:
        value = json.loads(raw)
    except ValueError:
        return bit_flips(raw, rnd)
    text = json.dumps(mutate_json(value, rnd), allow_nan=True)
    return text.encode()


def _mutate_h5_object(handle: Any, rnd: random.Random) -> None:
    """One change in an open (writable) h5py file: an attribute (a JSON one edited as JSON), a
    dataset's values, shape or type, or an object deleted."""
    import h5py
    import numpy as np

    attrs: list[tuple[Any, str]] = []
    datasets: list[Any] = []

    def visit(_: str, obj: Any) -> None:
        for name in obj.attrs:
            attrs.append((obj, name))
        if isinstance(obj, h5py.Dataset):
            datasets.append(obj)

    for name in handle.attrs:
        attrs.append((handle, name))
    handle.visititems(visit)
    choice = rnd.randrange(4)
    if choice <= 1 and attrs:
        obj, name = rnd.choice(attrs)
        value = obj.attrs[name]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value[:1] in "{[":
            new: Any = json.dumps(mutate_json(json.loads(value), rnd), allow_nan=True)
        elif isinstance(value, str):
            new = _other_text(value, rnd)
        elif isinstance(value, np.ndarray) and value.size:
            items = list(value)
            action = rnd.randrange(3)
            if action == 0:
                items = items[: rnd.randrange(len(items))]
            elif action == 1:
                items = items + items[:1]
            else:
                items[rnd.randrange(len(items))] = b"bogus:0"
            new = np.array(items, dtype=value.dtype) if items else np.array([], dtype="S1")
        else:
            new = rnd.choice((0, "", "x"))
        if rnd.random() < 0.15:
            del obj.attrs[name]
        else:
            obj.attrs[name] = new
    elif choice == 2 and datasets:
        ds = rnd.choice(datasets)
        parent, name = ds.parent, ds.name.rsplit("/", 1)[-1]
        data = ds[()]
        action = rnd.randrange(5)
        if action == 0:
            data = np.full_like(data, rnd.choice((np.nan, np.inf, 0.0, 1e30)), dtype=np.float32)
        elif action == 1:
            data = np.asarray(data).reshape(-1)[: max(0, np.size(data) - rnd.randint(1, 4))]
        elif action == 2:
            data = np.zeros(np.shape(data) + (2,), np.float32)
        elif action == 3:
            data = np.asarray(data).astype(rnd.choice((np.int8, np.float16, np.float64, np.int64)))
        else:
            data = np.zeros((0,), np.float32)
        del parent[name]
        parent.create_dataset(name, data=data)
    else:
        names: list[str] = []
        handle.visit(names.append)
        if names:
            del handle[rnd.choice(names)]


def mutate_h5(data: bytes, rnd: random.Random) -> bytes:
    import h5py

    buf = io.BytesIO(data)
    with h5py.File(buf, "r+") as handle:
        _mutate_h5_object(handle, rnd)
    return buf.getvalue()


def mutate_keras_zip(data: bytes, rnd: random.Random) -> bytes:
    """A ``.keras`` archive with one member changed (JSON edit, HDF5 edit or bytes), dropped,
    or a junk member added."""
    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        members = {info.filename: zin.read(info) for info in zin.infolist()}
    name = rnd.choice(sorted(members))
    action = rnd.randrange(10)
    if action == 0:
        del members[name]
    elif action == 1:
        members[rnd.choice(("junk.bin", "config.json", "assets/x"))] = rnd.randbytes(32)
    elif name.endswith(".json"):
        members[name] = _mutate_json_bytes(members[name], rnd)
    elif name.endswith(".h5") and action < 7:
        members[name] = mutate_h5(members[name], rnd)
    else:
        members[name] = rnd.choice(BYTE_MUTATORS)(members[name], rnd)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for member, raw in members.items():
            zout.writestr(member, raw)
    return out.getvalue()


def _mutate_leaf(value: Any, rnd: random.Random) -> Any:
    import numpy as np

    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return _other_int(value, rnd)
    if isinstance(value, float):
        return _other_float(value, rnd)
    if isinstance(value, bytes):
        return rnd.choice((b"", value[: len(value) // 2], value + value, rnd.randbytes(8)))
    if isinstance(value, str):
        return _other_text(value, rnd)
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1).copy()
        action = rnd.randrange(4)
        if action == 0 or not flat.size:
            return flat[: max(0, flat.size - rnd.randint(1, 3))]
        if action == 1:
            return np.concatenate([flat, flat[:1]])
        i = rnd.randrange(flat.size)
        if flat.dtype.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow is wanted
                flat[i] = _other_float(float(flat[i]), rnd)
        else:
            info = np.iinfo(flat.dtype)
            flat[i] = min(max(_other_int(int(flat[i]), rnd), info.min), info.max)
        return flat
    return value


def _object_spots(root: Any) -> list[tuple[Any, Any, Any]]:
    """(container, key or index or attribute, value) of every field of a flatbuffer object
    tree (``schema.ModelT``)."""
    spots: list[tuple[Any, Any, Any]] = []
    seen: set[int] = set()

    def walk(node: Any) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, list):
            for i, v in enumerate(node):
                spots.append((node, i, v))
                walk(v)
        elif hasattr(node, "__dict__"):
            for k, v in vars(node).items():
                spots.append((node, k, v))
                walk(v)

    walk(root)
    return spots


def mutate_tflite(data: bytes, rnd: random.Random) -> bytes:
    """One field of the TFLite flatbuffer changed (a shape, type, buffer or tensor index,
    opcode, quantization parameter, option, ...), a list item dropped or duplicated, or a
    buffer's bytes cut; the model is packed again."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    spots = [s for s in _object_spots(model) if s[2] is not None]
    parent, key, value = rnd.choice(spots)
    if isinstance(value, list) and value and rnd.random() < 0.5:
        if rnd.random() < 0.5:
            del value[rnd.randrange(len(value))]
        else:
            value.append(value[rnd.randrange(len(value))])
    elif isinstance(parent, list):
        parent[key] = _mutate_leaf(value, rnd)
    elif rnd.random() < 0.1:
        setattr(parent, key, None)
    else:
        setattr(parent, key, _mutate_leaf(value, rnd))
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def mutate_onnx(data: bytes, rnd: random.Random) -> bytes:
    """One field of the ONNX protobuf changed (an attribute, dims, data type, raw data, a name,
    an opset, metadata), a repeated item dropped or duplicated."""
    import onnx
    from google.protobuf.descriptor import FieldDescriptor

    model = onnx.ModelProto()
    model.ParseFromString(data)
    spots: list[tuple[Any, Any, int | None]] = []  # (message, field descriptor, index)

    def walk(msg: Any) -> None:
        for fd, value in msg.ListFields():
            if fd.label == FieldDescriptor.LABEL_REPEATED:
                spots.append((msg, fd, None))
                for i, item in enumerate(value):
                    if fd.type == FieldDescriptor.TYPE_MESSAGE:
                        walk(item)
                    else:
                        spots.append((msg, fd, i))
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                spots.append((msg, fd, -1))
                walk(value)
            else:
                spots.append((msg, fd, -1))

    walk(model)
    msg, fd, index = rnd.choice(spots)
    if index is None:  # a repeated field: drop or duplicate an item
        items = getattr(msg, fd.name)
        if len(items) and rnd.random() < 0.5:
            del items[rnd.randrange(len(items))]
        elif len(items):
            item = items[rnd.randrange(len(items))]
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                items.add().CopyFrom(item)
            else:
                items.append(item)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        msg.ClearField(fd.name)
    else:
        value = getattr(msg, fd.name) if index < 0 else getattr(msg, fd.name)[index]
        for _ in range(8):  # protobuf refuses values outside the field's type: try again
            new = _mutate_leaf(value, rnd)
            try:
                if index < 0:
                    setattr(msg, fd.name, new)
                else:
                    getattr(msg, fd.name)[index] = new
                break
            except (ValueError, TypeError):
                continue
    return model.SerializeToString()


def mutate_npz(data: bytes, rnd: random.Random) -> bytes:
    """The embeddings archive with one array changed (type, shape, values), a key dropped,
    renamed or added, or a member's ``.npy`` header edited."""
    import numpy as np

    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        members = {info.filename: zin.read(info) for info in zin.infolist()}
    name = rnd.choice(sorted(members))
    action = rnd.randrange(8)
    if action == 0:  # edit the .npy header text (shape, descr, fortran_order)
        raw = members[name]
        end = raw.find(b"}")
        if end > 0:
            head = raw[: end + 1]
            for old, new in (
                (
                    b"'shape': (",
                    b"'shape': (" + str(rnd.choice((0, 3, 2**20, 2**40))).encode() + b", ",
                ),
                (b"<f4", rnd.choice((b"<f8", b"|O", b"<U4", b"|b1", b">f4", b"<c8", b"V4"))),
                (b"False", b"True"),
                (b"'descr'", b"'dtype'"),
            ):
                if rnd.random() < 0.5 and old in head:
                    head = head.replace(old, new, 1)
            members[name] = head + raw[end + 1 :]
    elif action == 1:
        del members[name]
    elif action == 2:
        key = rnd.choice(("", "x", "a/b/c", "flip/", "../up", "\u00e9/\u00e9_0001.jpg", name))
        members[key + rnd.choice((".npy", "", ".npz"))] = members.pop(name)
    elif action == 3:
        members[name] = rnd.choice(BYTE_MUTATORS)(members[name], rnd)
    else:
        arr = np.load(io.BytesIO(members[name]), allow_pickle=False)
        choice = rnd.randrange(9)
        if choice == 0:
            arr = arr.astype(rnd.choice((np.float16, np.float64, np.int8, np.uint64, bool)))
        elif choice == 1:
            arr = arr.astype(np.complex64)
        elif choice == 2:
            arr = np.array([str(v) for v in arr])
        elif choice == 3:
            arr = np.array([None, 1.0], dtype=object)
        elif choice == 4:
            arr = arr.reshape(rnd.choice(((1, -1), (-1, 1), (2, -1), (1, 1, -1))))
        elif choice == 5:
            arr = arr[: rnd.choice((0, 1, arr.size - 1))]
        elif choice == 6:
            arr = np.float32(arr[0]) if arr.size else np.float32(0)
        elif choice == 7:
            arr = arr.copy()
            arr[rnd.randrange(arr.size)] = rnd.choice((np.nan, np.inf, -np.inf, 3.4e38))
        else:
            arr = np.concatenate([arr, arr])
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=True)
        members[name] = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", rnd.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))) as z:
        for member, raw in members.items():
            z.writestr(member, raw)
    return out.getvalue()


_PAIR_FIELD_VALUES = (
    "0",
    "-1",
    "1.5",
    "abc",
    "",
    "99999999999999999999",
    "\u00b2",  # SUPERSCRIPT TWO: str.isdigit() is True, int() refuses it
    "\u0663",  # ARABIC-INDIC DIGIT THREE: int() accepts it
    "\uff11",  # FULLWIDTH DIGIT ONE
    "0001",
    "1e3",
    "0x10",
    "Ada_Lovelace",
    "../etc",
    "Name With Spaces",
)


def mutate_pairs(data: bytes, rnd: random.Random) -> bytes:
    """A line of pairs.txt dropped, duplicated, swapped or added, a field replaced or dropped,
    separators, line endings or encoding changed."""
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if not lines:
        return data
    i = rnd.randrange(len(lines))
    action = rnd.randrange(9)
    if action == 0:
        del lines[i]
    elif action == 1:
        lines.insert(i, lines[i])
    elif action == 2:
        j = rnd.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif action in (3, 4, 5):
        fields = lines[i].split("\t")
        k = rnd.randrange(len(fields))
        if rnd.random() < 0.15:
            del fields[k]
        else:
            fields[k] = rnd.choice(_PAIR_FIELD_VALUES)
        lines[i] = "\t".join(fields)
    elif action == 6:
        lines[i] = lines[i].replace("\t", rnd.choice((" ", "  ", "\t\t", ",", "\x00", "\u00a0")))
    elif action == 7:
        lines.insert(i, rnd.choice(("", " ", "#comment", "\t".join(PERSONS), "1\t1")))
    else:
        new_text = "\n".join(lines)
        new_text = rnd.choice(
            (
                new_text.replace("\n", "\r\n"),
                new_text.replace("\n", "\r"),
                "\ufeff" + new_text,
                new_text.rstrip("\n"),
                new_text + "\n\n\n",
            )
        )
        return new_text.encode("utf-8") if rnd.random() < 0.9 else new_text.encode("utf-16")
    return "\n".join(lines).encode("utf-8")


STRUCTURED: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "h5": mutate_h5,
    "keras": mutate_keras_zip,
    "tflite": mutate_tflite,
    "onnx": mutate_onnx,
    "npz": mutate_npz,
    "pairs": mutate_pairs,
}


def mutate(front_end: str, seeds: list[bytes], rnd: random.Random) -> tuple[bytes, list[str]]:
    """A case for ``front_end``: one of ``seeds`` changed by one to three mutations (about two
    in three structured, where they apply). Returns the bytes and the mutation names."""
    data = rnd.choice(seeds)
    names: list[str] = []
    if rnd.random() < 0.03:
        return random_bytes(data, rnd), ["random_bytes"]
    for _ in range(rnd.choice((1, 1, 1, 2, 3))):
        roll = rnd.random()
        if roll < 0.6:
            structured = STRUCTURED[front_end]
            try:
                data = structured(data, rnd)
                names.append(structured.__name__)
                continue
            except Exception:  # the input is already too damaged to parse: mutate bytes
                pass
        if roll > 0.95:
            data = splice(data, rnd.choice(seeds), rnd)
            names.append("splice")
        else:
            mutator = rnd.choice(BYTE_MUTATORS)
            data = mutator(data, rnd)
            names.append(mutator.__name__)
    return data, names


# --------------------------------------------------------------------------------------------
# running one case
# --------------------------------------------------------------------------------------------


def case_argv(front_end: str, case: Path, seeds_dir: Path, out: Path, flip: bool) -> list[str]:
    """The bnncube command line of one case; ``out`` is where its output would go."""
    if front_end in MODEL_FRONT_ENDS:
        return ["analyze", "-m", str(case), "-o", str(out), "-q"]
    argv = ["lfw", "--json", str(out)]
    if front_end == "npz":
        argv += ["--embeddings", str(case), "--pairs", str(seeds_dir / "companion.txt")]
    else:
        argv += ["--embeddings", str(seeds_dir / "companion.npz"), "--pairs", str(case)]
    return argv + (["--flip"] if flip else [])


def classify(
    case: Path, out: Path, status: int | None, stdout: str, stderr: str, escaped: str | None
) -> tuple[str, str]:
    """(``ok`` | ``error`` | ``finding``, reason) of a finished case."""
    text = stdout + stderr
    if escaped is not None:
        return "finding", "exception escaped main: " + escaped.strip().splitlines()[-1]
    if "Traceback (most recent call last)" in text:
        return "finding", "traceback printed"
    if status == 0:
        return "ok", ""
    lines = stderr.strip().splitlines()
    if status != 2:
        return "finding", f"exit status {status}: {lines[-1] if lines else '(no message)'}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return "finding", f"exit 2 but stderr is not one error line: {stderr.strip()[:300]!r}"
    if str(case) not in lines[0] and case.name not in lines[0]:
        return "finding", f"error line does not name the file: {lines[0][:300]}"
    if out.exists():
        return "finding", f"output {out} left behind after an error"
    return "error", lines[0]


@dataclass
class Task:
    front_end: str
    index: int
    data: bytes | None = None  # None: the worker mutates a seed itself (from seed, index)
    flip: bool | None = None
    seed: int = 0


def case_random(seed: int, front_end: str, index: int) -> random.Random:
    return random.Random(f"bnncube-fuzz:{seed}:{front_end}:{index}")


def build_case(task: Task, seeds: dict[str, list[bytes]]) -> tuple[bytes, bool, list[str]]:
    """(bytes, flip, mutations) of ``task``: its own bytes or the mutation its index names."""
    if task.data is not None:
        return task.data, bool(task.flip), ["given"]
    rnd = case_random(task.seed, task.front_end, task.index)
    flip = rnd.random() < 0.3 if task.front_end in ("npz", "pairs") else False
    data, names = mutate(task.front_end, seeds[task.front_end], rnd)
    return data, flip, names


def _set_memory_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = (
            MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(hard, MEMORY_LIMIT_BYTES)
        )
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


def _worker(
    conn: Any, seeds_dir: str, work: str, timeout: float
) -> None:  # pragma: no cover - child process
    """Child process: run the cases it is sent through the CLI in-process, send the outcomes."""
    from contextlib import redirect_stderr, redirect_stdout

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # a damaged HDF5 file that hangs the HDF5 library is given up after this many seconds (a
    # clean error); 20 s by default, less here to keep such cases cheap
    os.environ.setdefault("BNNCUBE_HDF5_PROBE_TIMEOUT", "3")
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    log = os.open(work_dir / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)  # C++ libraries' own output goes to the log, not to the table
    os.dup2(log, 2)
    import faulthandler

    faulthandler.enable()  # a crash or a hang leaves the Python stacks in worker.log
    from bnncube.cli import main, quiet_third_party

    quiet_third_party()
    try:
        import tensorflow as tf
    except ImportError:
        tf = None
    import warnings

    warnings.simplefilter("ignore")
    sdir = Path(seeds_dir)
    seeds = {
        fe: [
            p.read_bytes() for p in sorted(sdir.glob(f"*{SUFFIX[fe]}")) if "companion" not in p.name
        ]
        for fe in FRONT_ENDS
    }
    _set_memory_limit()
    conn.send("ready")
    done = 0
    while True:
        try:
            task: Task = conn.recv()
        except EOFError:
            return
        data, flip, names = build_case(task, seeds)
        if data == SELF_TEST_CRASH:  # tests/test_fuzz.py: the runner must survive this
            import signal

            os.kill(os.getpid(), signal.SIGSEGV)
        case = work_dir / f"case{SUFFIX[task.front_end]}"
        out = work_dir / ("out" if task.front_end in MODEL_FRONT_ENDS else "out.json")
        for stale in (case, out):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        case.write_bytes(data)
        argv = case_argv(task.front_end, case, sdir, out, flip)
        stdout, stderr = io.StringIO(), io.StringIO()
        status: int | None = None
        escaped: str | None = None
        started = time.monotonic()
        os.write(2, f"case {task.front_end} {task.index}\n".encode())
        faulthandler.dump_traceback_later(max(1.0, timeout - 1.0))
        try:
            with redirect_stdout(stdout), redirect_stderr(stderr):
                status = main(argv)
        except BaseException:  # noqa: BLE001 - anything escaping main is what we look for
            escaped = traceback.format_exc()
        faulthandler.cancel_dump_traceback_later()
        seconds = time.monotonic() - started
        outcome, reason = classify(case, out, status, stdout.getvalue(), stderr.getvalue(), escaped)
        conn.send(
            {
                "outcome": outcome,
                "reason": reason,
                "mutations": names,
                "flip": flip,
                "argv": argv,
                "seconds": round(seconds, 4),
                "traceback": escaped,
            }
        )
        done += 1
        if tf is not None and done % 50 == 0:
            tf.keras.backend.clear_session()


class Runner:
    """One worker process: sends it cases, restarts it when it dies or hangs."""

    def __init__(self, seeds_dir: Path, work: Path, timeout: float = CASE_TIMEOUT_S) -> None:
        self.seeds_dir, self.work, self.timeout = Path(seeds_dir), Path(work), timeout
        self.ctx = mp.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None
        self.count = 0

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_worker,
            args=(child, str(self.seeds_dir), str(self.work), self.timeout),
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.conn = parent
        self.count = 0
        # importing TensorFlow and reading the seeds take a while on a busy machine
        ready = False
        if parent.poll(WORKER_START_S):
            try:
                ready = parent.recv() == "ready"
            except (EOFError, OSError):
                pass
        if not ready:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"the fuzz worker did not start; its log ends with:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self.proc = None

    def case_file(self, front_end: str) -> Path:
        return self.work / f"case{SUFFIX[front_end]}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.work / "worker.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def run(self, task: Task) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive() or self.count >= RESTART_EVERY:
            self.stop()
            self._start()
        self.count += 1
        self.conn.send(task)
        limit = self.timeout
        if self.conn.poll(limit):
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
            self.proc.join(5)
            code = self.proc.exitcode
            self.stop()
            what = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            reason = f"worker process died ({what})"
            return {"outcome": "finding", "reason": reason, "log_tail": self.log_tail()}
        time.sleep(2.0)  # the worker's faulthandler dumps its stacks at the limit
        tail = self.log_tail()
        self.stop()
        reason = f"hang: no result within {limit:.0f} s"
        return {"outcome": "finding", "reason": reason, "log_tail": tail}


# --------------------------------------------------------------------------------------------
# a campaign
# --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    cases: int = 0
    ok: int = 0
    error: int = 0
    finding: int = 0
    seconds: float = 0.0
    findings: list[dict[str, Any]] = field(default_factory=list)
    errors_seen: dict[str, int] = field(default_factory=dict)


def _error_kind(line: str) -> str:
    """An error line with the file name and numbers taken out, to count distinct messages."""
    import re

    line = re.sub(r"/\S*case\.\w+", "FILE", line)
    return re.sub(r"\d+", "N", line)[:160]


def run_campaign(
    out: Path,
    front_ends: tuple[str, ...] = FRONT_ENDS,
    cases: int = 1000,
    seed: int = 0,
    jobs: int = 1,
    start: int = 0,
    timeout: float = CASE_TIMEOUT_S,
    log: Callable[[str], None] = print,
) -> dict[str, Tally]:
    """Fuzz ``front_ends`` with ``cases`` cases each (indices ``start`` on); write
    ``summary.json`` and ``findings/`` under ``out``; return the tallies."""
    out = Path(out)
    seeds_dir = out / "seeds"
    if seeds_dir.exists():
        shutil.rmtree(seeds_dir)
    log(f"fuzz: making seed files in {seeds_dir}")
    make_seeds(seeds_dir, front_ends)
    findings_dir = out / "findings"
    findings_dir.mkdir(parents=True, exist_ok=True)
    tallies: dict[str, Tally] = {}
    runners = [Runner(seeds_dir, out / "work" / f"w{j}", timeout) for j in range(max(1, jobs))]
    lock = threading.Lock()
    try:
        for fe in front_ends:
            tally = tallies[fe] = Tally()
            started = time.monotonic()
            queue = iter(range(start, start + cases))

            def drive(
                runner: Runner, fe: str = fe, tally: Tally = tally, queue=queue, started=started
            ) -> None:
                while True:
                    with lock:
                        index = next(queue, None)
                    if index is None:
                        return
                    result = runner.run(Task(fe, index, seed=seed))
                    with lock:
                        tally.cases += 1
                        setattr(tally, result["outcome"], getattr(tally, result["outcome"]) + 1)
                        if result["outcome"] == "error":
                            kind = _error_kind(result["reason"])
                            tally.errors_seen[kind] = tally.errors_seen.get(kind, 0) + 1
                        if result["outcome"] == "finding":
                            name = f"{fe}-seed{seed}-case{index}{SUFFIX[fe]}"
                            src = runner.case_file(fe)
                            if src.exists():
                                shutil.copyfile(src, findings_dir / name)
                            entry = {"front_end": fe, "index": index, "file": name}
                            entry.update({k: v for k, v in result.items() if k != "outcome"})
                            tally.findings.append(entry)
                            log(f"fuzz: FINDING {fe} case {index}: {result['reason'][:200]}")
                        if tally.cases % 100 == 0:  # a stopped run still has its counts
                            tally.seconds = round(time.monotonic() - started, 1)
                            _write_summary(out, tallies, seed, start)
                        if tally.cases % 500 == 0:
                            log(
                                f"fuzz: {fe}: {tally.cases}/{cases} cases, {tally.finding} "
                                f"findings ({time.monotonic() - started:.0f} s)"
                            )

            threads = [threading.Thread(target=drive, args=(r,)) for r in runners]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            tally.seconds = round(time.monotonic() - started, 1)
            _write_summary(out, tallies, seed, start)
    finally:
        for r in runners:
            r.stop()
    return tallies


def _write_summary(out: Path, tallies: dict[str, Tally], seed: int, start: int) -> None:
    summary = {
        "seed": seed,
        "start": start,
        "front_ends": {
            fe: {
                "cases": t.cases,
                "ok": t.ok,
                "errors": t.error,
                "findings": t.finding,
                "seconds": t.seconds,
                "distinct_error_messages": len(t.errors_seen),
                "findings_list": t.findings,
            }
            for fe, t in tallies.items()
        },
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "summary.json")


def format_table(tallies: dict[str, Tally]) -> str:
    rows = [("front end", "cases", "ok", "errors", "findings", "seconds")]
    for fe, t in tallies.items():
        rows.append((fe, str(t.cases), str(t.ok), str(t.error), str(t.finding), f"{t.seconds:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def front_end_of(path: Path) -> str:
    """The front end of a case file, by its suffix (``.txt``: pairs)."""
    suffix = path.suffix.lower()
    for fe, known in SUFFIX.items():
        if known == suffix:
            return fe
    raise SystemExit(f"{path}: suffix {suffix!r} is not one of {', '.join(SUFFIX.values())}")


def replay(files: list[Path], out: Path, flip: bool, timeout: float) -> int:
    """Run ``files`` once each through a worker (seeds under ``out``); print their outcomes."""
    seeds_dir = Path(out) / "seeds"
    make_seeds(seeds_dir)
    runner = Runner(seeds_dir, Path(out) / "work" / "replay", timeout)
    bad = 0
    try:
        for path in files:
            fe = front_end_of(path)
            result = runner.run(Task(fe, 0, data=path.read_bytes(), flip=flip))
            bad += result["outcome"] == "finding"
            print(f"{path}: {result['outcome']}: {result['reason']}")
            if result.get("traceback"):
                print(result["traceback"])
            if result.get("log_tail"):
                print(result["log_tail"])
    finally:
        runner.stop()
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnncube.validation.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--front-end", action="append", choices=FRONT_ENDS, help="repeatable; default: all six"
    )
    parser.add_argument("--cases", type=int, default=1000, help="cases per front end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index (to rerun one)")
    parser.add_argument("--out", type=Path, default=Path("build/fuzz"))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT_S, help="seconds per case")
    parser.add_argument(
        "--replay",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="run these files (e.g. findings/*) once each instead, with --flip for lfw cases",
    )
    parser.add_argument("--flip", action="store_true", help="with --replay: lfw --flip")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.out, args.flip, args.timeout)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    front_ends = tuple(args.front_end or FRONT_ENDS)
    started = time.monotonic()
    tallies = run_campaign(
        args.out,
        front_ends,
        args.cases,
        args.seed,
        args.jobs,
        args.start,
        args.timeout,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_table(tallies))
    total = sum(t.finding for t in tallies.values())
    print(f"{total} findings in {time.monotonic() - started:.0f} s; see {args.out}/summary.json")
    return 1 if total else 0


if __name__ == "__main__":
    # run the importable module's main, so that worker processes unpickle its classes
    from bnncube.validation.fuzz import main as _main

    sys.exit(_main())
