import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The TFLite form (bnncube.converters.tflite_export) against the reference (run_graph).
#
# (a) TFLite-sourced int8 graphs ("tflite" transforms) map 1:1 to builtins: the exported file runs
#     bit-exactly in ai_edge_litert's reference kernels (BUILTIN_REF) and loads back to the same IR.
# (b) QKeras graphs (affine/float/threshold transforms, binary ops) run in Larq Compute Engine's
#     interpreter.  Every op is measured alone (fed the reference values of its inputs) so that
#     each op's own difference shows; the numbers are printed (pytest -s) and recorded as test
#     properties.  Binary ops, Bitpack, Add, Quantize, Reshape and the float Dense are exact; int8
#     convolutions with an "affine" transform differ by at most 1 LSB on a small fraction of
#     elements (their bias is an integer in accumulator units, see docs/tflite-form.md).

import copy  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.converters.binary_reference import bitpack, unpack  # noqa: E402
from bnncube.converters.ir import Graph, Op, Quant, Tensor  # noqa: E402
from bnncube.converters.loader import load_model  # noqa: E402
from bnncube.converters.reference import run_graph  # noqa: E402
from bnncube.converters.tflite_export import export_tflite, save_tflite  # noqa: E402
from bnncube.errors import BnnError  # noqa: E402

# --------------------------------------------------------------------------------------------
# interpreters and comparisons
# --------------------------------------------------------------------------------------------


def _ref_interpreter(buf: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_content=buf,
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True,
    )
    interp.allocate_tensors()
    return interp


def _lce_run(buf: bytes, feeds: list[np.ndarray]) -> list[np.ndarray]:
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    got = Interpreter(buf).predict(feeds if len(feeds) > 1 else feeds[0])
    return list(got) if isinstance(got, list) else [got]


def _equal_values(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal_values(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _assert_same_ir(a: Graph, b: Graph) -> None:
    assert (a.name, a.inputs, a.outputs) == (b.name, b.inputs, b.outputs)
    assert [(o.name, o.type, o.inputs, o.outputs) for o in a.ops] == [
        (o.name, o.type, o.inputs, o.outputs) for o in b.ops
    ]
    for x, y in zip(a.ops, b.ops, strict=True):
        assert x.attrs.keys() == y.attrs.keys(), x.name
        for key in x.attrs:
            assert _equal_values(x.attrs[key], y.attrs[key]), (x.name, key)
    assert a.tensors.keys() == b.tensors.keys()
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert (t.shape, t.dtype) == (u.shape, u.dtype), name
        assert (t.quant is None) == (u.quant is None), name
        if t.quant is not None and u.quant is not None:
            assert np.array_equal(t.quant.scale, u.quant.scale), name
            assert np.array_equal(t.quant.zero_point, u.quant.zero_point), name
            assert (t.quant.axis, t.quant.source) == (u.quant.axis, u.quant.source), name
        assert _equal_values(t.data, u.data), name


def _diff(got: np.ndarray, want: np.ndarray, tensor: Tensor) -> dict[str, float]:
    """max |difference| and fraction of differing elements (bits for binary tensors)."""
    if tensor.dtype == "binary":
        c = tensor.shape[-1]
        g = unpack(np.asarray(got).view(np.uint32), c)
        w = unpack(np.asarray(want).view(np.uint32), c)
        d = (g != w).astype(np.float64)
        return {"max": float(d.max()), "frac": float(d.mean()), "rel": 0.0}
    d = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    scale = float(np.abs(np.asarray(want, np.float64)).max()) or 1.0
    return {"max": float(d.max()), "frac": float((d > 0).mean()), "rel": float(d.max()) / scale}


def _single_op_graph(graph: Graph, op: Op) -> Graph:
    sub = Graph(f"{graph.name}_{op.name}")
    for name in dict.fromkeys(op.inputs + op.outputs):
        sub.add_tensor(copy.deepcopy(graph.tensors[name]))
    sub.add_op(copy.deepcopy(op))
    sub.inputs = [n for n in dict.fromkeys(op.inputs) if graph.tensors[n].data is None]
    sub.outputs = list(op.outputs)
    return sub


def _feed(value: np.ndarray, tensor: Tensor) -> np.ndarray:
    return np.asarray(value).view(np.int32) if tensor.dtype == "binary" else value


def _per_op(graph: Graph, x: np.ndarray) -> list[dict[str, Any]]:
    """Every op exported alone and run on the reference values of its inputs.

    Graphs with LCE ops run in LCE's interpreter; int8-only ops run in both LCE's interpreter
    (TFLite's optimized kernels) and ai_edge_litert's reference kernels ("ref_*" numbers).
    """
    values = run_graph(graph, [x], outputs_only=False)
    rows = []
    for op in graph.ops:
        sub = _single_op_graph(graph, op)
        buf = export_tflite(sub)
        out = graph.tensors[op.outputs[0]]
        feeds = [_feed(values[n], graph.tensors[n]) for n in sub.inputs]
        row: dict[str, Any] = {"op": op.name, "type": op.type}
        row["form"] = op.attrs.get("output_transform", "tflite")
        row.update(_diff(_lce_run(buf, feeds)[0], values[op.outputs[0]], out))
        if b"Lce" not in buf:
            interp = _ref_interpreter(buf)
            for detail, value in zip(interp.get_input_details(), feeds, strict=True):
                interp.set_tensor(detail["index"], value)
            interp.invoke()
            got = interp.get_tensor(interp.get_output_details()[0]["index"])
            ref = _diff(got, values[op.outputs[0]], out)
            row.update({"ref_max": ref["max"], "ref_frac": ref["frac"]})
        rows.append(row)
    return rows


def _report(title: str, rows: list[dict[str, Any]], record_property: Any) -> None:
    lines = [f"{title}: op, transform, max |diff|, fraction differing (LCE; TFLite ref)"]
    for r in rows:
        ref = f"; ref {r['ref_max']:.3g} {r['ref_frac']:.5f}" if "ref_max" in r else ""
        rel = f" rel {r['rel']:.2g}" if r["form"] == "float" else ""
        lines.append(
            f"  {r['op']:<16} {r['type']:<16} {r['form']:<9} {r['max']:.3g} "
            f"{r['frac']:.5f}{rel}{ref}"
        )
    print("\n".join(lines))
    record_property(title, "\n".join(lines))


def _check_bounds(rows: list[dict[str, Any]], graph: Graph) -> None:
    """The per-op bounds measured and explained in docs/tflite-form.md."""
    for r in rows:
        op = next(o for o in graph.ops if o.name == r["op"])
        out = graph.tensors[op.outputs[0]]
        where = f"{r['op']} ({r['type']}, {r['form']})"
        if r["type"] in ("Conv2D", "DepthwiseConv2D", "Dense") and r["form"] == "affine":
            # bias in accumulator units: off by at most m/(2k) LSB, so +-1 where the real value
            # lies that close to a rounding boundary
            assert r["max"] <= 1 and r["frac"] <= 0.02, where
        elif r["type"] == "BinaryConv2D" and r["form"] == "float" and out.dtype == "float32":
            # LCE: f32(f32(p * -2m) + f32(b + K m)) against f32(f32(acc * m) + b)
            assert r["rel"] < 1e-6, where
        elif r["type"] == "BinaryConv2D" and r["form"] == "affine":
            # direct int8 output: LCE rounds a float32 value half away from zero
            assert r["max"] <= 1 and r["frac"] <= 1e-3, where
        else:  # Bitpack, thresholds, Add, Quantize, Reshape, float Dense/Conv2D: exact
            assert r["max"] == 0, where
        if "ref_max" in r and r["form"] == "affine":  # the same bound in TFLite's ref kernels
            assert r["ref_max"] <= 1 and r["ref_frac"] <= 0.02, where
        elif "ref_max" in r:
            assert r["ref_max"] == 0, where


def _end_to_end(graph: Graph, x: np.ndarray) -> list[dict[str, float]]:
    want = run_graph(graph, [x])
    got = _lce_run(export_tflite(graph), [x])
    return [_diff(g, want[n], graph.tensors[n]) for g, n in zip(got, graph.outputs, strict=True)]


def _perturbed_tail(
    graph: Graph, values: dict[str, np.ndarray], index: int, rate: float, seed: int
) -> np.ndarray:
    """The reference output when op ``index``'s int8 output moves by +-1 at ``rate``."""
    rng = np.random.default_rng(seed + 100)
    name = graph.ops[index].outputs[0]
    v = values[name].astype(np.int64)
    hit = rng.random(v.shape) < rate
    v[hit] += rng.choice([-1, 1], int(hit.sum()))
    tail = copy.copy(graph)
    tail.ops = graph.ops[index + 1 :]
    produced = {t for op in tail.ops for t in op.outputs}
    needed = [t for op in tail.ops for t in op.inputs if graph.tensors[t].data is None]
    tail.inputs = [t for t in dict.fromkeys(needed) if t not in produced]
    feeds = {t: values[t] for t in tail.inputs}
    feeds[name] = np.clip(v, -128, 127).astype(np.int8)
    return run_graph(tail, feeds)[graph.outputs[0]]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------------------------
# (a) TFLite-sourced int8 graphs: exact, and they load back to the same IR
# --------------------------------------------------------------------------------------------


def _int8_tflite(body: Callable[[Any, Any], Any], shape: tuple[int, ...], path: Path) -> Path:
    import tensorflow as tf

    from bnncube.zoo.build import quantize_mnv2

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input(shape=shape)
    model = tf.keras.Model(inp, body(tf.keras.layers, inp))
    images = np.random.default_rng(0).uniform(-1.0, 1.0, (16, *shape)).astype(np.float32)
    path.write_bytes(quantize_mnv2(model, images))
    return path


def _conv_pad(L: Any, x: Any) -> Any:
    x = L.Conv2D(13, 3, padding="same", activation="relu")(x)
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = L.Conv2D(8, 3, strides=2, padding="valid", activation="relu6")(x)
    x = L.ZeroPadding2D(((1, 1), (2, 0)))(x)
    x = L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="valid")(x)
    return L.DepthwiseConv2D(3, padding="same", activation="relu6")(x)


def _add(L: Any, x: Any) -> Any:
    a = L.Conv2D(5, 3, padding="same")(x)
    b = L.Conv2D(5, 1, padding="same", activation="relu")(x)
    y = L.Add()([a, b])
    z = L.Add()([y, L.Conv2D(5, 1, padding="same")(y)])
    return L.ReLU()(z)


def _pools(L: Any, x: Any) -> Any:
    x = L.Conv2D(5, 3, padding="same", activation="relu")(x)
    x = L.AveragePooling2D(3, strides=2, padding="same")(x)
    x = L.Conv2D(13, 1)(x)
    x = L.AveragePooling2D(2, strides=1, padding="valid")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    return L.MaxPooling2D(2, padding="valid")(x)


def _head(L: Any, x: Any) -> Any:
    x = L.Conv2D(13, 3, padding="same", activation="relu6")(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Conv2D(7, 1)(x)
    x = L.Flatten()(x)
    x = L.Dense(11, activation="relu")(x)
    return L.Dense(3)(x)


TFLITE_CASES = {
    "conv_pad": (_conv_pad, (13, 11, 5)),
    "add": (_add, (8, 7, 3)),
    "pools": (_pools, (15, 13, 3)),
    "head": (_head, (7, 9, 5)),
}


def _check_tflite_sourced(path: Path, tmp_path: Path) -> Graph:
    graph = load_model(path)
    out_path = save_tflite(graph, tmp_path / f"{path.stem}_exported.tflite")
    interp = _ref_interpreter(out_path.read_bytes())
    details = {d["name"]: d for d in interp.get_tensor_details()}
    (inp,) = interp.get_input_details()
    for seed in (0, 1):
        x = np.random.default_rng(seed).integers(-128, 128, inp["shape"], dtype=np.int8)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        ours = run_graph(graph, [x], outputs_only=False)
        compared = 0
        for name, value in ours.items():
            got = interp.get_tensor(details[name]["index"])
            assert got.dtype == value.dtype and np.array_equal(got, value), name
            compared += 1
        assert compared == len(graph.ops) + 1
    _assert_same_ir(graph, load_model(out_path))
    return graph


@pytest.mark.parametrize("case", list(TFLITE_CASES))
def test_tflite_sourced_exact_and_round_trip(case: str, tmp_path: Path) -> None:
    body, shape = TFLITE_CASES[case]
    graph = _check_tflite_sourced(_int8_tflite(body, shape, tmp_path / f"{case}.tflite"), tmp_path)
    if case == "conv_pad":  # the odd explicit pads went out as PAD ops and folded back in
        assert [o.attrs["pads"] for o in graph.ops[1:3]] == [[0, 1, 0, 1], [1, 1, 2, 0]]


@pytest.mark.slow
def test_mnv2_i8_exact_and_round_trip(mnv2_i8_tflite: Path, tmp_path: Path) -> None:
    graph = _check_tflite_sourced(mnv2_i8_tflite, tmp_path)
    assert graph.name == "mnv2_i8"


# --------------------------------------------------------------------------------------------
# (b) QKeras graphs with binary layers, in LCE's interpreter
# --------------------------------------------------------------------------------------------


def _qkeras_net(kind: str, path: Path) -> Path:
    """Small QKeras nets covering every transform; BatchNorm statistics set from data."""
    import tensorflow as tf
    from qkeras import (
        QActivation,
        QConv2D,
        QDense,
        QDepthwiseConv2D,
        binary,
        quantized_bits,
        quantized_relu,
    )

    from bnncube.zoo.calibrate import set_bn_statistics

    tf.keras.utils.set_random_seed(5)
    L = tf.keras.layers

    def a8() -> Any:
        return QActivation(quantized_bits(8, 3, alpha=1))

    def conv(x: Any, ch: int, k: int, **kw: Any) -> Any:
        q = quantized_bits(8, 0, alpha=1)
        return QConv2D(ch, k, use_bias=False, kernel_quantizer=q, **kw)(x)

    def bconv(x: Any, ch: int, stride: int, padding: str, sign: bool = True) -> Any:
        if sign:
            x = QActivation(binary(alpha=1))(x)
        return QConv2D(
            ch, 3, strides=stride, padding=padding, use_bias=False, kernel_quantizer=binary(alpha=1)
        )(x)

    if kind == "a":  # 12x12x3: channels 16 -> 24 -> 40 -> 70 into the binary convolutions
        inp = L.Input((12, 12, 3))
        x = QActivation(quantized_bits(8, 0, alpha=1))(inp)
        x = a8()(L.BatchNormalization()(conv(x, 16, 3, padding="same")))
        y = a8()(L.BatchNormalization()(bconv(x, 24, 1, "same")))  # affine, zero padding
        s = a8()(L.BatchNormalization()(conv(x, 24, 1)))
        x = a8()(L.Add()([y, s]))
        x = L.BatchNormalization()(bconv(x, 40, 2, "same"))
        x = QActivation(binary(alpha=1))(x)  # threshold, stride 2, zero padding
        x = L.BatchNormalization()(bconv(x, 70, 1, "valid", sign=False))
        x = QActivation(binary(alpha=1))(x)  # threshold, valid
        x = a8()(L.BatchNormalization()(bconv(x, 32, 1, "same", sign=False)))  # C = 70
        x = QDepthwiseConv2D(
            3, padding="same", use_bias=False, depthwise_quantizer=quantized_bits(8, 0, alpha=1)
        )(x)
        x = QActivation(quantized_relu(8, 3))(L.BatchNormalization()(x))
        outputs = [L.BatchNormalization()(conv(x, 8, 3, padding="same"))]  # float output
        images = np.random.default_rng(1).uniform(-1, 1, (32, 12, 12, 3))
    else:  # 11x11x5: odd channels (33), direct int8 and float binary outputs, affine Dense
        inp = L.Input((11, 11, 5))
        x = QActivation(quantized_bits(8, 0, alpha=1))(inp)
        x = a8()(L.BatchNormalization()(conv(x, 33, 1)))
        y = a8()(L.BatchNormalization()(bconv(x, 24, 1, "valid")))  # direct int8, C = 33
        out1 = L.BatchNormalization()(bconv(y, 16, 2, "valid"))  # float binary output
        z = QDense(
            10,
            kernel_quantizer=quantized_bits(8, 0, alpha=1),
            bias_quantizer=quantized_bits(32, 15, alpha=1),
        )(L.Flatten()(y))
        outputs = [out1, a8()(z)]
        images = np.random.default_rng(1).uniform(-1, 1, (32, 11, 11, 5))
    model = tf.keras.Model(inp, outputs)
    set_bn_statistics(model, images.astype(np.float32), np.random.default_rng(2))
    model.save(path)
    return path


@pytest.fixture(scope="module")
def qkeras_nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("qkeras_nets")
    return {kind: _qkeras_net(kind, folder / f"net_{kind}.h5") for kind in ("a", "b")}


def _input(graph: Graph, seed: int) -> np.ndarray:
    shape = graph.tensors[graph.inputs[0]].shape
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_hybrid_in_lce(hybrid_h5: Path, record_property: Any) -> None:
    graph = load_model(hybrid_h5)
    x = _input(graph, 0)
    rows = _per_op(graph, x)
    _report("hybrid per op", rows, record_property)
    _check_bounds(rows, graph)
    forms = {(r["type"], r["form"]) for r in rows}
    assert ("BinaryConv2D", "affine") in forms and ("Dense", "float") in forms
    # end to end: +-1 LSB differences in the int8 convolutions flip some signs at the next
    # binarization, and the untrained network amplifies them.  The reference itself, given the
    # same kind of perturbation (its first convolution's output moved by +-1 LSB at the rate
    # measured above), drifts as far (docs/tflite-form.md).
    first = next(i for i, op in enumerate(graph.ops) if op.attrs.get("output_transform"))
    rate = rows[first]["frac"]
    lines = []
    for seed in (0, 1):
        xs = _input(graph, seed)
        values = run_graph(graph, [xs], outputs_only=False)
        want = values[graph.outputs[0]]
        (got,) = _lce_run(export_tflite(graph), [xs])
        cos = _cosine(got, want)
        perturbed = _perturbed_tail(graph, values, first, rate, seed)
        lines.append(
            f"seed {seed}: embedding max |diff| {np.abs(got - want).max():.3g} "
            f"(max |ref| {np.abs(want).max():.3g}), cosine {cos:.4f}; reference with op "
            f"{graph.ops[first].name!r} perturbed: cosine {_cosine(perturbed, want):.4f}"
        )
        assert cos > 0.8
    print("hybrid end to end:\n  " + "\n  ".join(lines))
    record_property("hybrid end to end", "; ".join(lines))


@pytest.mark.parametrize("kind", ["a", "b"])
def test_qkeras_binary_nets_in_lce(
    kind: str, qkeras_nets: dict[str, Path], record_property: Any
) -> None:
    graph = load_model(qkeras_nets[kind])
    rows = _per_op(graph, _input(graph, 0))
    _report(f"net {kind} per op", rows, record_property)
    _check_bounds(rows, graph)
    bconvs = [op for op in graph.ops if op.type == "BinaryConv2D"]
    if kind == "a":
        assert [graph.tensors[op.inputs[0]].shape[-1] for op in bconvs] == [16, 24, 40, 70]
        assert [op.attrs["output_transform"] for op in bconvs] == [
            "affine",
            "threshold",
            "threshold",
            "affine",
        ]
        assert {op.attrs["strides"] for op in bconvs} == {(1, 1), (2, 2)}
    else:
        assert [op.attrs["output_transform"] for op in bconvs] == ["affine", "float"]
    stats = _end_to_end(graph, _input(graph, 1))
    print(f"net {kind} end to end: {stats}")
    record_property(f"net {kind} end to end", str(stats))


def _variant(graph: Graph, name: str) -> Graph:
    """Edits of net a's IR that reach the writer's other paths."""
    g = copy.deepcopy(graph)
    first = next(op for op in g.ops if op.type == "Conv2D")
    bconvs = [op for op in g.ops if op.type == "BinaryConv2D"]
    if name == "one_padding":  # LCE pad_values=1, direct int8 / bitpacked outputs
        for op in bconvs:
            op.attrs["pad_value"] = 1
    elif name == "explicit_pads":  # PAD before a conv (zero point) and a binary conv (+1 bits)
        first.attrs["pads"] = [2, 0, 2, 0]
        bconvs[0].attrs["pads"] = [0, 2, 2, 0]
        bconvs[0].attrs["pad_value"] = 1
    elif name == "clamp_and_signs":  # MAXIMUM/MINIMUM, negated weights, a constant channel
        first.attrs["clamp"] = (-100, 90)
        mult = g.tensors[first.inputs[2]]
        w = g.tensors[first.inputs[1]]
        mult.data = mult.data.copy()
        negate = [o for o in range(w.shape[0]) if (w.data[o] != -128).all()][:5]
        mult.data[negate] = -mult.data[negate]
        mult.data[negate[-1]] = 0
    return g


@pytest.mark.parametrize("name", ["one_padding", "explicit_pads", "clamp_and_signs"])
def test_writer_paths_in_lce(name: str, qkeras_nets: dict[str, Path], record_property: Any) -> None:
    graph = _variant(load_model(qkeras_nets["a"]), name)
    rows = _per_op(graph, _input(graph, 0))
    _report(f"net a, {name}, per op", rows, record_property)
    _check_bounds(rows, graph)
    ops = _lce_opcodes(export_tflite(graph))
    if name == "explicit_pads":
        assert "PAD" in ops
    if name == "clamp_and_signs":
        assert {"MAXIMUM", "MINIMUM"} <= set(ops)
    if name == "one_padding":  # no float detour: direct int8 and bitpacked outputs
        assert ops.count("QUANTIZE") == sum(op.type == "Quantize" for op in graph.ops)


def _lce_opcodes(buf: bytes) -> list[str]:
    import ai_edge_litert.schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}
    codes = model.operatorCodes
    out = []
    for op in model.subgraphs[0].operators:
        oc = codes[op.opcodeIndex]
        out.append(oc.customCode.decode() if oc.customCode else names[oc.builtinCode])
    return out


def test_binary_layout_and_lce_ops() -> None:
    """LceQuantize packs like Bitpack (float: -0.0 is +1); LceDequantize gives +1/-1."""
    g = Graph("pack")
    g.add_tensor(Tensor("x", (1, 3, 4, 40), "float32"))
    g.add_tensor(Tensor("b", (1, 3, 4, 40), "binary", Quant.per_tensor(1.0, 0)))
    g.add_tensor(Tensor("y", (1, 3, 4, 40), "float32"))
    g.add_op(Op("pack", "Bitpack", ["x"], ["b"]))
    g.add_op(Op("unpack", "Dequantize", ["b"], ["y"]))
    g.inputs, g.outputs = ["x"], ["b", "y"]
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 40)).astype(np.float32)
    x[0, 0, 0] = -0.0
    x[0, 0, 1] = 0.0
    packed, values = _lce_run(export_tflite(g), [x])
    assert packed.shape == (1, 3, 4, 2) and packed.dtype == np.int32
    assert np.array_equal(packed.view(np.uint32), bitpack(x))
    assert np.array_equal(values, np.where(x < 0, -1.0, 1.0).astype(np.float32))
    assert _lce_opcodes(export_tflite(g)) == ["LceQuantize", "LceDequantize"]


def test_lce_int8_output_rounds_ties_away(record_property: Any) -> None:
    """LceBconv2d's int8 output rounds half away from zero; the IR rounds half to even.

    With the real multiplier 1/8 every accumulator 4 (mod 8) is a tie: exactly those elements
    whose half-even and half-away roundings differ come out 1 LSB apart.
    """
    from bnncube.converters.binary_reference import binary_conv_accumulate, pack_filters

    rng = np.random.default_rng(7)
    g = Graph("ties")
    g.add_tensor(Tensor("x", (1, 10, 10, 16), "int8", Quant.per_tensor(2**-4, 0)))
    g.add_tensor(Tensor("b", (1, 10, 10, 16), "binary", Quant.per_tensor(1.0, 0)))
    g.add_tensor(Tensor("y", (1, 8, 8, 8), "int8", Quant.per_tensor(2**-4, 0)))
    w = np.where(rng.random((8, 3, 3, 16)) < 0.5, -1, 1).astype(np.int8)
    g.add_tensor(Tensor("w", w.shape, "binary", None, w))
    consts = [
        g.add_const("m", np.full(8, 2**28, np.int32), "int32"),
        g.add_const("s", np.full(8, 31, np.int8), "int8"),
        g.add_const("o", np.zeros(8, np.int64), "int64"),
    ]
    attrs = {"strides": (1, 1), "pads": [0, 0, 0, 0], "pad_value": 0}
    attrs.update({"output_transform": "affine", "clamp": (-128, 127)})
    g.add_op(Op("pack", "Bitpack", ["x"], ["b"]))
    g.add_op(Op("bconv", "BinaryConv2D", ["b", "w", *consts], ["y"], attrs))
    g.inputs, g.outputs = ["x"], ["y"]
    x = rng.integers(-128, 128, (1, 10, 10, 16), dtype=np.int8)
    want = run_graph(g, [x])["y"].astype(np.int64)
    (got,) = _lce_run(export_tflite(g), [x])
    acc = binary_conv_accumulate(bitpack(x), 16, pack_filters(w), (3, 3)).astype(np.int64)
    away = np.sign(acc) * ((np.abs(acc) + 4) // 8)
    assert np.array_equal(got, away)
    assert np.array_equal(want, np.rint(acc / 8))
    ties = acc % 8 == 4
    differ = got != want
    assert differ.any() and not (differ & ~ties).any()
    line = f"{differ.mean():.4f} of the outputs differ (ties: {ties.mean():.4f}), by 1"
    print(f"LCE int8 output, multiplier 1/8: {line}")
    record_property("lce int8 ties", line)


# --------------------------------------------------------------------------------------------
# errors and files
# --------------------------------------------------------------------------------------------


def test_unsupported_things_are_named(qkeras_nets: dict[str, Path]) -> None:
    g = Graph("g")
    g.add_tensor(Tensor("x", (1, 4), "float32"))
    g.add_tensor(Tensor("y", (1, 4), "float32"))
    g.add_op(Op("act", "Activation", ["x"], ["y"], {"activation": "relu"}))
    g.inputs, g.outputs = ["x"], ["y"]
    with pytest.raises(BnnError, match=r"op 'act' \(Activation\).*supported: .*BinaryConv2D"):
        export_tflite(g)

    graph = load_model(qkeras_nets["a"])
    bconv = next(op for op in graph.ops if op.type == "BinaryConv2D")
    bconv.attrs["pads"] = [0, 2, 2, 0]  # explicit, with QKeras zero padding
    with pytest.raises(BnnError, match="BinaryConv2D.*explicit.*zero padding"):
        export_tflite(graph)

    graph = load_model(qkeras_nets["a"])
    first = next(op for op in graph.ops if op.type == "Conv2D")
    w = graph.tensors[first.inputs[1]]
    w.data = w.data.copy()
    w.data[0, 0, 0, 0] = -128
    graph.tensors[first.inputs[2]].data[0] *= -1
    with pytest.raises(BnnError, match="Conv2D.*channel 0.*negative multiplier.*-128"):
        export_tflite(graph)


def test_save_is_atomic(qkeras_nets: dict[str, Path], tmp_path: Path) -> None:
    graph = load_model(qkeras_nets["b"])
    path = save_tflite(graph, tmp_path / "net_b.tflite")
    assert path.read_bytes()[4:8] == b"TFL3"
    graph.ops[-1].type = "BatchNorm"  # now the export fails half way: the file stays as it was
    before = path.read_bytes()
    with pytest.raises(BnnError):
        save_tflite(graph, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net_b.tflite"]
    graph.ops[-1].type = "Dense"
    save_tflite(graph, path)
    back = load_model(path)  # the TFLite front end reads LCE's ops too
    assert any(op.type == "BinaryConv2D" for op in back.ops)


def test_hybrid_form_reads_back(hybrid_h5: Path, tmp_path: Path) -> None:
    """bnncube's own TFLite form of the hybrid loads again: its float Dense, written as
    DEQUANTIZE -> FULLY_CONNECTED (float) -> MUL -> ADD, becomes the int8 Dense with the same
    float output transform, bit for bit; the other ops read as any TFLite/LCE model does."""
    graph = load_model(hybrid_h5)
    path = save_tflite(graph, tmp_path / "hybrid.tflite")
    back = load_model(path)
    dense, dense_back = graph.ops[-1], back.ops[-1]
    assert (dense.type, dense_back.type) == ("Dense", "Dense")
    assert dense_back.attrs["output_transform"] == "float"
    assert dense_back.attrs["activation"] == dense.attrs.get("activation", "none")
    for i in range(4):  # input, weights, scale, offset
        a, b = graph.tensors[dense.inputs[i]], back.tensors[dense_back.inputs[i]]
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        if a.data is not None:
            assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name
    # the chain became one op: the same op types lead to the Dense as in the original
    assert [op.type for op in back.ops[-4:]] == [op.type for op in graph.ops[-4:]]
    # the same input through both Dense ops: the same float32 bits
    x = np.random.default_rng(5).integers(-128, 128, (1, 1280), dtype=np.int8)
    outs = []
    for g, op in ((graph, dense), (back, dense_back)):
        single = _single_op_graph(g, op)
        outs.append(run_graph(single, [x.reshape(single.tensors[single.inputs[0]].shape)]))
    assert np.array_equal(
        outs[0][graph.ops[-1].outputs[0]].view(np.uint32),
        outs[1][back.ops[-1].outputs[0]].view(np.uint32),
    )
