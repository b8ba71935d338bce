"""Regression tests for what fuzzing every front end found (docs/fuzzing.md, issue 9).

Each input is rebuilt here from a tiny seed file plus the exact change that broke the front end
(no binary files in the repository). Every case must end as one ``error: ...`` line that names
the file, exit status 2, no traceback and no output left behind.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import io  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.cli import main  # noqa: E402
from bnncube.validation import fuzz  # noqa: E402


def _clean_error(capsys: pytest.CaptureFixture[str], argv: list[str], path: Path) -> str:
    capsys.readouterr()
    out_dir = path.parent / "out"
    status = main([*argv, *(["-o", str(out_dir)] if argv[0] == "analyze" else [])])
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    assert str(path) in lines[0], lines[0]
    assert not out_dir.exists()
    return lines[0]


# --------------------------------------------------------------------------------------------
# embeddings .npz and pairs.txt (cheap: no TensorFlow model)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lfw_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lfw_seeds")
    fuzz.make_seeds(folder, ("npz", "pairs"))
    return folder


def _npz_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _write_npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return path


def _lfw_embeddings(seeds: Path, npz: Path) -> list[str]:
    return ["lfw", "--embeddings", str(npz), "--pairs", str(seeds / "pairs.txt")]


def test_npz_unbalanced_npy_header(lfw_seeds: Path, tmp_path: Path, capsys) -> None:
    """npz case 40: an ``.npy`` header with an unclosed parenthesis made numpy's header parser
    raise tokenize.TokenError, which escaped as a traceback."""
    members = _npz_members(lfw_seeds / "embeddings.npz")
    name = sorted(members)[0]
    members[name] = members[name].replace(b"'shape': (", b"'shape': ((", 1)
    npz = _write_npz(tmp_path / "emb.npz", members)
    line = _clean_error(capsys, _lfw_embeddings(lfw_seeds, npz), npz)
    assert "not a numeric array" in line


def test_npz_unsupported_zip_version(lfw_seeds: Path, tmp_path: Path, capsys) -> None:
    """npz case 29: a central-directory entry asking for zip version 14.8 made zipfile raise
    NotImplementedError, which escaped as a traceback."""
    raw = bytearray((lfw_seeds / "embeddings.npz").read_bytes())
    at = raw.index(b"PK\x01\x02")  # first central directory entry; "version needed" at +6
    raw[at + 6 : at + 8] = (148).to_bytes(2, "little")
    npz = tmp_path / "emb.npz"
    npz.write_bytes(bytes(raw))
    line = _clean_error(capsys, _lfw_embeddings(lfw_seeds, npz), npz)
    assert "not a readable .npz file" in line


def test_npz_header_declaring_a_huge_array(lfw_seeds: Path, tmp_path: Path, capsys) -> None:
    """An ``.npy`` header that declares far more data than the member holds."""
    members = _npz_members(lfw_seeds / "embeddings.npz")
    name = sorted(members)[0]
    members[name] = members[name].replace(b"'shape': (", b"'shape': (1099511627776, ", 1)
    npz = _write_npz(tmp_path / "emb.npz", members)
    _clean_error(capsys, _lfw_embeddings(lfw_seeds, npz), npz)


@pytest.mark.parametrize("number", ["\u00b2", "\u2460"])  # SUPERSCRIPT TWO, CIRCLED DIGIT ONE
def test_pairs_unicode_digit(lfw_seeds: Path, tmp_path: Path, capsys, number: str) -> None:
    """pairs case 88: an image number '²' passed str.isdigit() but int() refused it
    (ValueError traceback); only ASCII digits are numbers now."""
    lines = (lfw_seeds / "pairs.txt").read_text().splitlines()
    fields = lines[9].split("\t")
    fields[1] = number
    lines[9] = "\t".join(fields)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["lfw", "--embeddings", str(lfw_seeds / "embeddings.npz"), "--pairs", str(pairs)]
    line = _clean_error(capsys, argv, pairs)
    assert f"{pairs}:10:" in line and "not a positive integer" in line


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx")
    folder = tmp_path_factory.mktemp("model_seeds")
    fuzz.make_seeds(folder, ("h5", "keras", "onnx"))
    return folder


def test_onnx_metadata_not_utf8(model_seeds: Path, tmp_path: Path, capsys) -> None:
    """onnx cases 3, 18, 28: a bit flip in the bnncube metadata string left invalid UTF-8, which
    protobuf hands back as bytes; json.loads then raised UnicodeDecodeError (a traceback)."""
    raw = (model_seeds / "tiny_bin.onnx").read_bytes()
    at = raw.index(b"bnncube-ir")
    path = tmp_path / "model.onnx"
    path.write_bytes(raw[:at] + b"\xff" + raw[at + 1 :])
    line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
    assert "not UTF-8" in line


# --------------------------------------------------------------------------------------------
# Keras / QKeras
# --------------------------------------------------------------------------------------------


def _h5_with_dense_kernel_quantizer(seed: Path, path: Path, **changes: object) -> Path:
    import h5py

    buf = io.BytesIO(seed.read_bytes())
    with h5py.File(buf, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["name"] == "dense":
                layer["config"]["kernel_quantizer"]["config"].update(changes)
        f.attrs["model_config"] = json.dumps(config)
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"integer": -128}, "integer=-128"),  # keras case 185: TF Pow InvalidArgumentError
        ({"integer": 65536}, "integer=65536"),  # keras case 49: OverflowError in 2.0 ** x
        ({"bits": 0}, "bits=0"),
        ({"bits": "x"}, "bits="),
    ],
)
def test_qkeras_quantizer_parameters_out_of_range(
    model_seeds: Path, tmp_path: Path, capsys, changes: dict, needle: str
) -> None:
    """keras cases 49 and 185: a quantizer's ``integer`` of -128 or 65536 in the saved config
    reached QKeras and Python arithmetic (InvalidArgumentError, OverflowError tracebacks)."""
    path = _h5_with_dense_kernel_quantizer(model_seeds / "tiny.h5", tmp_path / "m.h5", **changes)
    line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
    if "cannot load Keras model" not in line:  # QKeras may refuse the config itself
        assert "layer 'dense'" in line and needle in line


def test_h5_hang_in_hdf5_library(model_seeds: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """h5 case 14 (seed 0): one duplicate_chunk mutation (316 bytes copied into the HDF5
    metadata) made the HDF5 library loop forever reading the 'backend' attribute. The front end
    now reads the file's HDF5 data once in a child process and gives up after a time limit."""
    from bnncube.converters import keras_frontend

    monkeypatch.setattr(keras_frontend, "HDF5_PROBE_TIMEOUT_S", 3.0)
    case = fuzz.build_case(
        fuzz.Task("h5", 14, seed=0), {"h5": [(model_seeds / "tiny.h5").read_bytes()]}
    )
    path = tmp_path / "case.h5"
    path.write_bytes(case[0])
    started = time.monotonic()
    _clean_error(capsys, ["analyze", "-m", str(path)], path)
    assert time.monotonic() - started < 60


def _hang(path: str) -> None:
    time.sleep(60)


def _crash(path: str) -> None:
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.parametrize(
    ("reader", "needle"),
    [(_hang, "did not finish within 1 s"), (_crash, "crashed reading it (signal 11)")],
)
def test_hdf5_probe_turns_hang_and_crash_into_errors(
    model_seeds: Path, tmp_path: Path, capsys, monkeypatch, reader, needle: str
) -> None:
    """The HDF5 probe's two outcomes, forced: a hang and a crash of the HDF5 library."""
    from bnncube.converters import keras_frontend

    monkeypatch.setattr(keras_frontend, "HDF5_PROBE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(keras_frontend, "_read_all_hdf5", reader)
    for name in ("tiny.h5", "tiny.keras"):
        path = tmp_path / name
        path.write_bytes((model_seeds / name).read_bytes())
        line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
        assert needle in line and "damaged HDF5 data" in line


def test_hdf5_probe_passes_valid_models(model_seeds: Path, tmp_path: Path, capsys) -> None:
    for name in ("tiny.h5", "tiny.keras"):
        assert main(["analyze", "-m", str(model_seeds / name), "-q", "-o", str(tmp_path)]) == 0


def test_npz_seed_is_valid(lfw_seeds: Path, capsys) -> None:
    """The seeds the regressions start from are accepted as they are."""
    assert main(_lfw_embeddings(lfw_seeds, lfw_seeds / "embeddings.npz")) == 0
    data = np.load(lfw_seeds / "embeddings.npz")
    assert len(data.files) == 24


# --------------------------------------------------------------------------------------------
# TFLite
# --------------------------------------------------------------------------------------------


def test_tflite_operator_name_with_control_characters(
    model_seeds: Path, tmp_path: Path, capsys
) -> None:
    """tflite case 5054 (seed 1): a mutated custom-op name held newlines and NUL bytes, which the
    'operator ... is not supported' message printed as they were: several stderr lines. Names
    read from the file are now printable text (escapes), and so is every model error line."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    lce = tmp_path / "lce.tflite"
    assert (
        main(["convert", "-m", str(model_seeds / "tiny.h5"), "--to", "tflite", "-o", str(lce)]) == 0
    )
    model = schema.ModelT.InitFromPackedBuf(lce.read_bytes(), 0)
    custom = [oc for oc in model.operatorCodes if oc.customCode]
    custom[0].customCode = b"Lce\nQuantize\x00\x0c"
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "case.tflite"
    path.write_bytes(bytes(builder.Output()))
    line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
    assert "Lce\\nQuantize\\x00\\x0c" in line and "is not supported" in line


def _with_inbound(config: dict, changes: dict[str, list]) -> dict:
    for layer in config["config"]["layers"]:
        if layer["name"] in changes:
            layer["inbound_nodes"] = changes[layer["name"]]
    return config


MISSING_NODE = {"sign": [[["in_q", 1, 0, {}]]]}  # keras case 212 (seed 1)
NODE_NOT_A_NUMBER = {"bn": [[["bconv", "", 0, {}]]]}  # keras case 667 (seed 1)
CYCLE = {"in_q": [[["sign", 0, 0, {}]]], "sign": [[["in_q", 0, 0, {}]]]}


@pytest.mark.parametrize(
    "changes", [MISSING_NODE, NODE_NOT_A_NUMBER, CYCLE], ids=["missing", "not_a_number", "cycle"]
)
def test_keras_inbound_node_that_never_exists(
    model_seeds: Path, tmp_path: Path, capsys, changes: dict
) -> None:
    """keras cases 212 and 667 (seed 1): layer 'sign' named node 1 of 'in_q', which has one node,
    and layer 'bn' node '' of 'bconv'; Keras' functional reconstruction re-queued them
    forever (a hang). The node graph is checked first."""
    members = _npz_members(model_seeds / "tiny.keras")  # a zip archive like an npz
    config = _with_inbound(json.loads(members["config.json"]), changes)
    members["config.json"] = json.dumps(config).encode()
    path = _write_npz(tmp_path / "case.keras", members)
    line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
    assert "the model config is damaged" in line

    import h5py

    buf = io.BytesIO((model_seeds / "tiny.h5").read_bytes())
    with h5py.File(buf, "r+") as f:
        config = _with_inbound(json.loads(f.attrs["model_config"]), changes)
        f.attrs["model_config"] = json.dumps(config)
    path = tmp_path / "case.h5"
    path.write_bytes(buf.getvalue())
    line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
    assert "the model config is damaged" in line


def _keras_with_layer_config(seed: Path, path: Path, edit) -> Path:  # noqa: ANN001
    members = _npz_members(seed)  # a zip archive like an npz
    config = json.loads(members["config.json"])
    layer = next(la for la in config["config"]["layers"] if la["name"] == "bconv")
    edit(layer)
    members["config.json"] = json.dumps(config).encode()
    return _write_npz(path, members)


def test_keras_layer_called_on_two_inputs(model_seeds: Path, tmp_path: Path, capsys) -> None:
    """keras case 2851 (seed 1): the binary conv's inbound node listed its input twice; Keras
    built it with an output shape holding None and int(None) raised TypeError (a traceback)."""

    def edit(layer: dict) -> None:
        layer["inbound_nodes"] = [[["sign", 0, 0, {}], ["sign", 0, 0, {}]]]

    path = _keras_with_layer_config(model_seeds / "tiny.keras", tmp_path / "case.keras", edit)
    line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
    assert "layer 'bconv'" in line and "not fully defined" in line


def test_keras_quantizer_parameter_of_wrong_type(model_seeds: Path, tmp_path: Path, capsys) -> None:
    """keras case 3558 (seed 1): ``use_01`` of the binary kernel quantizer was a dict; QKeras'
    own ``__str__`` raised TypeError (a traceback) when the front end described it."""

    def edit(layer: dict) -> None:
        layer["config"]["kernel_quantizer"]["config"]["use_01"] = {"a": 1}

    path = _keras_with_layer_config(model_seeds / "tiny.keras", tmp_path / "case.keras", edit)
    line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
    assert "layer 'bconv' (kernel)" in line and "wrong type" in line


def test_keras_input_layer_without_config(model_seeds: Path, tmp_path: Path, capsys) -> None:
    """keras case 789 (seed 2): the InputLayer's config was null; Keras made an input layer with
    no batch_input_shape and ``tuple(None)`` raised TypeError (a traceback)."""
    members = _npz_members(model_seeds / "tiny.keras")  # a zip archive like an npz
    config = json.loads(members["config.json"])
    config["config"]["layers"][0]["config"] = None
    members["config.json"] = json.dumps(config).encode()
    path = _write_npz(tmp_path / "case.keras", members)
    line = _clean_error(capsys, ["analyze", "-m", str(path)], path)
    assert "(InputLayer): input shape" in line and "must be fully defined" in line


@pytest.mark.parametrize(("fields", "needle"), [(4, "all of one kind"), (None, "every pair")])
def test_pairs_too_few_usable_pairs_names_the_file(
    lfw_seeds: Path, tmp_path: Path, capsys, fields: int | None, needle: str
) -> None:
    """pairs case 5507 (seed 2): the mismatched pairs named images the embeddings file lacks; the
    'only 4 pairs can be evaluated' error named neither the pairs file nor the embeddings."""
    lines = (lfw_seeds / "pairs.txt").read_text().splitlines()
    for k, line in enumerate(lines[1:], start=1):
        parts = line.split("\t")
        if fields is None or len(parts) == fields:
            parts[1] = "9"  # an image number no embedding has
            lines[k] = "\t".join(parts)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    npz = lfw_seeds / "embeddings.npz"
    argv = ["lfw", "--embeddings", str(npz), "--pairs", str(pairs)]
    line = _clean_error(capsys, argv, pairs)
    assert needle in line and str(npz) in line
