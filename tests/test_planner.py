"""The arena planner (``bnncube.planner``): invariants on random buffers, hand-made cases with
known optimal sizes, small IR graphs, and the zoo networks' arena sizes.

The random tests check every plan twice: with ``planner.verify`` and with ``_independent_check``
below, a deliberately plain re-statement of the rules that shares no code with the planner.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnncube.converters.ir import Graph, Op, Quant, Tensor
from bnncube.errors import BnnError
from bnncube.planner import (
    BASE_STRATEGIES,
    STRATEGIES,
    Buffer,
    Plan,
    PlanError,
    lower_bound,
    memory_order,
    naive_size,
    peak_live,
    plan_buffers,
    plan_graph,
    schedule_for_arena,
    verify,
)

# --------------------------------------------------------------------------------------------
# an independent statement of the rules
# --------------------------------------------------------------------------------------------


def _independent_check(plan: Plan, buffers: list[Buffer]) -> None:
    """Assert the arena rules from first principles (pairwise, no grouping helpers)."""
    by_name = {b.name: b for b in buffers}

    def root(name: str) -> str:
        while by_name[name].alias_of is not None:
            name = by_name[name].alias_of
        return name

    # an alias group lives from its earliest first to its latest last
    span: dict[str, tuple[int, int]] = {}
    for b in buffers:
        r = root(b.name)
        lo, hi = span.get(r, (b.first, b.last))
        span[r] = (min(lo, b.first), max(hi, b.last))
    extent: dict[str, int] = {}
    for b in buffers:
        extent[root(b.name)] = max(extent.get(root(b.name), 0), b.size)

    assert plan.size % 8 == 0
    for b in buffers:
        off = plan.offsets[b.name]
        assert off % b.alignment == 0, (b, off)
        assert off + b.size <= plan.size
        assert off == plan.offsets[root(b.name)], f"alias {b.name} moved"

    def may_share(taker: str, host: str) -> bool:
        (t_first, _), (_, h_last) = span[taker], span[host]
        named = any(
            root(h) == host for m in buffers if root(m.name) == taker for h in m.inplace_candidates
        )
        return named and h_last == t_first and 0 < extent[taker] <= extent[host]

    roots = sorted(span)
    for i, a in enumerate(roots):
        for b in roots[i + 1 :]:
            (fa, la), (fb, lb) = span[a], span[b]
            if la < fb or lb < fa:
                continue  # never live together
            oa, ob = plan.offsets[a], plan.offsets[b]
            if oa + extent[a] <= ob or ob + extent[b] <= oa or not extent[a] or not extent[b]:
                continue  # disjoint in memory
            assert oa == ob and (may_share(a, b) or may_share(b, a)), (a, b, plan.offsets)


# --------------------------------------------------------------------------------------------
# random buffer sets
# --------------------------------------------------------------------------------------------


@st.composite
def buffer_sets(draw: st.DrawFn, max_buffers: int = 14, max_ops: int = 10) -> list[Buffer]:
    n = draw(st.integers(1, max_buffers))
    buffers: list[Buffer] = []
    for i in range(n):
        first = draw(st.integers(0, max_ops))
        last = first + draw(st.integers(0, 4))
        size = draw(st.one_of(st.integers(0, 300), st.sampled_from([64, 128, 256, 512])))
        alignment = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
        relation = draw(st.sampled_from(["none", "none", "alias", "inplace"])) if i else "none"
        alias_of = None
        inplace_of: tuple[str, ...] = ()
        if relation == "alias":
            alias_of = f"b{draw(st.integers(0, i - 1))}"
        elif relation == "inplace":
            hosts = draw(st.lists(st.integers(0, i - 1), min_size=1, max_size=2, unique=True))
            inplace_of = tuple(f"b{j}" for j in hosts)
            host = buffers[hosts[0]]
            if draw(st.booleans()):  # usually make the first candidate legal
                first, last = host.last, host.last + draw(st.integers(0, 3))
                size = draw(st.integers(0, max(host.size, 1)))
        buffers.append(Buffer(f"b{i}", size, first, last, alignment, alias_of, inplace_of))
    return buffers


@settings(max_examples=150, deadline=None)
@given(buffer_sets())
def test_every_strategy_keeps_the_invariants(buffers: list[Buffer]) -> None:
    bound = lower_bound(buffers)
    assert bound <= peak_live(buffers) <= naive_size(buffers)
    sizes = {}
    for strategy in STRATEGIES:
        plan = plan_buffers(buffers, strategy)
        verify(plan, buffers)
        _independent_check(plan, buffers)
        assert plan.size >= bound
        assert plan.strategy == strategy
        sizes[strategy] = plan.size
        if strategy in BASE_STRATEGIES:
            assert plan.inplace == {}, "greedy_* strategies never share in place"
    assert sizes["ram"] <= sizes["balanced"] == sizes["time"]
    assert sizes["ram"] == min(sizes.values())


@settings(max_examples=60, deadline=None)
@given(buffer_sets(), st.randoms(use_true_random=False))
def test_plans_are_deterministic_and_ignore_input_order(
    buffers: list[Buffer], rnd: random.Random
) -> None:
    shuffled = list(buffers)
    rnd.shuffle(shuffled)
    for strategy in ("balanced", "ram", "greedy_breadth"):
        a = plan_buffers(buffers, strategy)
        b = plan_buffers(buffers, strategy)
        c = plan_buffers(shuffled, strategy)
        assert a == b
        assert a.offsets == c.offsets and a.size == c.size and a.inplace == c.inplace


@settings(max_examples=60, deadline=None)
@given(buffer_sets(max_buffers=8))
def test_verify_rejects_broken_plans(buffers: list[Buffer]) -> None:
    plan = plan_buffers(buffers, "ram")
    # misalign a buffer that needs alignment
    for b in buffers:
        if b.alignment > 1 and b.alias_of is None:
            bad = Plan({**plan.offsets, b.name: plan.offsets[b.name] + 1}, plan.size + 8, "x", "x")
            with pytest.raises(PlanError):
                verify(bad, buffers)
            break
    # an arena size that is not a multiple of 8
    with pytest.raises(PlanError):
        verify(Plan(dict(plan.offsets), plan.size + 1, "x", "x"), buffers)
    # stack every buffer at offset 0: wrong whenever two live buffers may not share
    stacked = Plan({b.name: 0 for b in buffers}, plan.size, "x", "x")
    try:
        _independent_check(stacked, buffers)
        expect_ok = True
    except AssertionError:
        expect_ok = False
    if expect_ok:
        verify(stacked, buffers)
    else:
        with pytest.raises(PlanError):
            verify(stacked, buffers)


# --------------------------------------------------------------------------------------------
# hand-made cases with known optimal sizes
# --------------------------------------------------------------------------------------------


def test_chain_ping_pong_and_in_place() -> None:
    # x -> a -> b -> c, each 96 bytes: ping-pong needs two blocks, in place one
    plain = [Buffer("a", 96, 0, 1), Buffer("b", 96, 1, 2), Buffer("c", 96, 2, 3)]
    assert plan_buffers(plain, "greedy_size").size == 192
    assert plan_buffers(plain, "ram").size == 192 == lower_bound(plain)
    chain = [
        Buffer("a", 96, 0, 1),
        Buffer("b", 96, 1, 2, inplace_of="a"),
        Buffer("c", 96, 2, 3, inplace_of="b"),
    ]
    assert plan_buffers(chain, "greedy_size").size == 192
    plan = plan_buffers(chain, "balanced")
    assert plan.size == 96 == lower_bound(chain)
    assert plan.inplace == {"b": "a", "c": "b"}
    assert set(plan.offsets.values()) == {0}


def test_in_place_needs_the_host_to_die_and_to_be_big_enough() -> None:
    lives_on = [Buffer("a", 64, 0, 2), Buffer("b", 64, 1, 2, inplace_of="a")]
    assert plan_buffers(lives_on, "ram").size == 128
    bigger = [Buffer("a", 64, 0, 1), Buffer("b", 72, 1, 2, inplace_of="a")]
    assert plan_buffers(bigger, "ram").size == 136 == lower_bound(bigger)
    smaller = [Buffer("a", 64, 0, 1), Buffer("b", 40, 1, 2, inplace_of="a")]
    assert plan_buffers(smaller, "balanced").size == 64
    misaligned = [
        Buffer("x", 8, 0, 1),
        Buffer("a", 64, 0, 1, 8),
        Buffer("b", 64, 1, 2, 128, None, "a"),
    ]
    plan = plan_buffers(misaligned, "ram")
    verify(plan, misaligned)
    assert plan.offsets["b"] % 128 == 0


def test_add_of_two_dying_inputs_reuses_one() -> None:
    s = 1024
    bufs = [
        Buffer("a", s, 0, 2),
        Buffer("b", s, 1, 2),
        Buffer("sum", s, 2, 3, inplace_of=("a", "b")),
        Buffer("next", s, 3, 4),
    ]
    assert plan_buffers(bufs, "greedy_size").size == 3 * s
    assert plan_buffers(bufs, "balanced").size == 2 * s == lower_bound(bufs)


def test_residual_block_keeps_the_shortcut_live() -> None:
    # x feeds conv1 (op 0) and the Add (op 2): it stays live across the block
    s = 4096
    bufs = [
        Buffer("x", s, 0, 2),
        Buffer("y", s, 0, 1),  # conv1(x)
        Buffer("z", s, 1, 2),  # conv2(y)
        Buffer("out", s, 2, 3, inplace_of=("z", "x")),  # Add(z, x)
        Buffer("head", s // 2, 3, 4),
    ]
    for strategy in ("balanced", "ram", "greedy_size"):
        plan = plan_buffers(bufs, strategy)
        verify(plan, bufs)
        assert plan.size == 3 * s == lower_bound(bufs)
        # the shortcut never shares with the conv outputs it lives beside
        assert len({plan.offsets["x"], plan.offsets["y"], plan.offsets["z"]}) == 3


def test_alias_merges_lifetimes() -> None:
    bufs = [
        Buffer("x", 64, 0, 1),
        Buffer("r", 64, 1, 3, alias_of="x"),  # reshape of x, read until op 3
        Buffer("z", 64, 2, 2),
        Buffer("w", 64, 1, 2, inplace_of="x"),  # not legal: x's group lives to op 3
    ]
    plan = plan_buffers(bufs, "ram")
    verify(plan, bufs)
    assert plan.offsets["r"] == plan.offsets["x"]
    assert plan.inplace == {}
    assert plan.size == 192 == lower_bound(bufs)


def test_alignment_and_rounding() -> None:
    bufs = [Buffer("a", 3, 0, 0, 16), Buffer("b", 3, 0, 0, 16)]
    plan = plan_buffers(bufs, "balanced")
    assert sorted(plan.offsets.values()) == [0, 16]
    assert plan.size == 24  # 19 bytes rounded up to 8
    assert plan_buffers([], "ram").size == 0


def test_bad_buffers_are_refused() -> None:
    with pytest.raises(ValueError, match="lifetime"):
        Buffer("a", 8, 3, 2)
    with pytest.raises(ValueError, match="both"):
        Buffer("a", 8, 0, 1, alias_of="b", inplace_of="c")
    with pytest.raises(ValueError, match="duplicate"):
        plan_buffers([Buffer("a", 8, 0, 0), Buffer("a", 8, 1, 1)])
    with pytest.raises(ValueError, match="cycle"):
        plan_buffers([Buffer("a", 8, 0, 0, alias_of="b"), Buffer("b", 8, 1, 1, alias_of="a")])
    with pytest.raises(ValueError, match="not a buffer"):
        plan_buffers([Buffer("a", 8, 0, 0, inplace_of="zz")])
    with pytest.raises(BnnError, match="unknown memory strategy"):
        plan_buffers([Buffer("a", 8, 0, 0)], "fastest")


# --------------------------------------------------------------------------------------------
# small IR graphs
# --------------------------------------------------------------------------------------------


def _small_graph() -> Graph:
    """float input -> Quantize -> Conv2D -> Add(conv, q) -> Reshape -> Dense -> Dequantize,
    and a Bitpack branch feeding a BinaryConv2D whose output is a second graph output."""
    g = Graph("small")
    q8 = Quant.per_tensor(0.05, 0)

    def act(name: str, shape: tuple[int, ...], dtype: str = "int8") -> str:
        g.add_tensor(Tensor(name, shape, dtype, None if dtype in ("float32", "binary") else q8))
        return name

    x = act("x", (1, 4, 4, 8), "float32")
    q = act("q", (1, 4, 4, 8))
    c = act("c", (1, 4, 4, 8))
    s = act("s", (1, 4, 4, 8))
    r = act("r", (1, 128))
    d = act("d", (1, 16))
    y = act("y", (1, 16), "float32")
    bits = act("bits", (1, 4, 4, 8), "binary")
    bc = act("bc", (1, 4, 4, 8))
    w = g.add_const("w", np.ones((8, 1, 1, 8), np.int8), "int8", q8)
    wd = g.add_const("wd", np.ones((16, 128), np.int8), "int8", q8)
    wb = g.add_const("wb", np.ones((8, 1, 1, 8), np.int8), "binary")
    g.add_op(Op("quant", "Quantize", [x], [q]))  # 0
    g.add_op(Op("conv", "Conv2D", [q, w], [c]))  # 1
    g.add_op(Op("add", "Add", [c, q], [s]))  # 2
    g.add_op(Op("sign", "Bitpack", [s], [bits]))  # 3
    g.add_op(Op("flatten", "Reshape", [s], [r]))  # 4
    g.add_op(Op("dense", "Dense", [r, wd], [d]))  # 5
    g.add_op(Op("bconv", "BinaryConv2D", [bits, wb], [bc]))  # 6
    g.add_op(Op("deq", "Dequantize", [d], [y]))  # 7
    g.inputs, g.outputs = [x], [y, bc]
    g.validate()
    return g


def _residual_graph() -> Graph:
    """A residual block in the order a converter writes it: the binary branch (Bitpack ->
    BinaryConv2D, a wide output) first, then the shortcut projection, then the Add."""
    g = Graph("residual")
    q8 = Quant.per_tensor(0.05, 0)
    for name, shape, dtype in (
        ("x", (1, 8, 8, 16), "int8"),
        ("bits", (1, 8, 8, 16), "binary"),
        ("b", (1, 8, 8, 64), "int8"),
        ("p", (1, 8, 8, 64), "int8"),
        ("out", (1, 8, 8, 64), "int8"),
    ):
        g.add_tensor(Tensor(name, shape, dtype, None if dtype == "binary" else q8))
    rng = np.random.default_rng(3)
    wb = g.add_const("wb", rng.choice([-1, 1], (64, 3, 3, 16)).astype(np.int8), "binary")
    wp = g.add_const("wp", rng.integers(-9, 9, (64, 1, 1, 16)).astype(np.int8), "int8", q8)
    conv = {"strides": (1, 1), "dilations": (1, 1)}
    g.add_op(Op("sign", "Bitpack", ["x"], ["bits"]))
    g.add_op(Op("bconv", "BinaryConv2D", ["bits", wb], ["b"], {**conv, "pads": [1, 1, 1, 1]}))
    g.add_op(Op("proj", "Conv2D", ["x", wp], ["p"], {**conv, "pads": [0, 0, 0, 0]}))
    g.add_op(Op("add", "Add", ["b", "p"], ["out"]))
    g.inputs, g.outputs = ["x"], ["out"]
    g.validate()
    return g


def test_schedule_runs_the_shortcut_first() -> None:
    g = _residual_graph()
    assert [g.ops[i].name for i in memory_order(g)] == ["sign", "proj", "bconv", "add"]
    scheduled = schedule_for_arena(g)
    assert [op.name for op in scheduled.ops] == ["sign", "proj", "bconv", "add"]
    assert [op.name for op in g.ops] == ["sign", "bconv", "proj", "add"]  # not changed
    before, after = plan_graph(g), plan_graph(scheduled)
    verify(after)
    _independent_check(after.plan, list(after.buffers))
    # x (1,024 B) dies at proj, before bconv makes its wide output: bits + p + b = 8,448 B at
    # the peak, in place of x + b + p = 9,216 B (out is in place of b or p)
    assert (before.size, after.size) == (9_216, 8_448) == (before.lower_bound, after.lower_bound)
    assert schedule_for_arena(scheduled) is scheduled  # already in its best order


def test_graph_lifetimes_kinds_aliases_and_in_place() -> None:
    g = _small_graph()
    mp = plan_graph(g)
    verify(mp)
    e = {entry.name: entry for entry in mp.entries}
    assert "w" not in e and "wd" not in e  # constants are not planned
    assert (e["x"].kind, e["x"].first, e["x"].last, e["x"].size) == ("input", 0, 0, 512)
    assert (e["q"].first, e["q"].last) == (0, 2)
    assert (e["s"].first, e["s"].last) == (2, 4)
    assert e["r"].alias_of == "s" and e["r"].offset == e["s"].offset
    assert e["s"].inplace_candidates == ("c", "q")
    assert e["s"].inplace_of in ("c", "q") and e["s"].offset == e[e["s"].inplace_of].offset
    # float32 -> int8 Quantize: the output shrinks behind the reads, so it may start at x
    assert e["q"].inplace_candidates == ("x",)
    assert e["bits"].inplace_candidates == ()  # Bitpack: never in place
    assert e["y"].inplace_candidates == ()  # Dequantize: 4x bigger
    assert (e["y"].kind, e["y"].last) == ("output", 7)
    assert (e["bc"].kind, e["bc"].first, e["bc"].last) == ("output", 6, 7)
    assert mp.lower_bound <= mp.size <= mp.naive_size
    table = mp.format_table()
    assert "alias of s" in table and "lower bound" in table
    json.dumps(mp.as_dict())


def test_graph_without_input_and_output_allocation() -> None:
    g = _small_graph()
    full = plan_graph(g, "ram")
    mp = plan_graph(g, "ram", inputs_allocation=False, outputs_allocation=False)
    verify(mp)
    assert {e.name for e in mp.external} == {"x", "y", "bc"}
    assert all(e.offset is None for e in mp.external)
    assert not {"x", "y", "bc"} & {b.name for b in mp.buffers}
    assert mp.size <= full.size
    assert mp.as_dict()["inputs_allocation"] is False
    assert "caller's buffer" in mp.format_table()


def test_graph_scratch_is_live_during_its_op_only() -> None:
    g = _small_graph()
    mp = plan_graph(g, "balanced", scratch={"conv": 200, "dense": 0})
    verify(mp)
    scratch = mp.entry("scratch:conv")
    assert (scratch.kind, scratch.first, scratch.last, scratch.size) == ("scratch", 1, 1, 200)
    names = {e.name for e in mp.entries}
    assert "scratch:dense" not in names  # zero bytes: nothing to plan
    with pytest.raises(BnnError, match="no op named"):
        plan_graph(g, scratch={"nope": 8})


def test_binary_reshape_across_the_packed_axis_is_not_an_alias() -> None:
    g = Graph("binreshape")
    g.add_tensor(Tensor("a", (1, 2, 2, 8), "int8", Quant.per_tensor(1.0)))
    g.add_tensor(Tensor("b", (1, 2, 2, 8), "binary"))
    g.add_tensor(Tensor("f", (1, 32), "binary"))
    g.add_tensor(Tensor("k", (1, 4, 8), "binary"))
    g.add_op(Op("pack", "Bitpack", ["a"], ["b"]))
    g.add_op(Op("flat", "Reshape", ["b"], ["f"]))  # 4 rows of 1 word -> 1 row of 1 word
    g.add_op(Op("rows", "Reshape", ["b"], ["k"]))  # same packed axis, same bytes
    g.inputs, g.outputs = ["a"], ["f", "k"]
    mp = plan_graph(g)
    verify(mp)
    assert mp.entry("f").alias_of is None
    assert mp.entry("k").alias_of == "b"


# --------------------------------------------------------------------------------------------
# the zoo networks
# --------------------------------------------------------------------------------------------

# measured with this planner (docs/memory-plan.md); paper RAM: hybrid 198 KB, mnv2_i8 163 KB
ZOO_SIZES = {
    # fixture: (balanced, ram, lower bound, peak live without in-place, naive)
    "hybrid_h5": (147_456, 147_456, 147_456, 165_888, 541_936),
    # mnv2_i8: its stride-2 depthwise convolutions write over their inputs (138,240 B before)
    "mnv2_i8_tflite": (129_024, 129_024, 129_024, 138_240, 720_336),
}
# the same after generate's schedule_for_arena (the hybrid's shortcut projections run before the
# binary branch; mnv2_i8 keeps its order): (balanced, lower bound)
ZOO_SCHEDULED = {"hybrid_h5": (119_808, 119_808), "mnv2_i8_tflite": (129_024, 129_024)}


@pytest.mark.slow
@pytest.mark.parametrize("fixture", sorted(ZOO_SIZES))
def test_zoo_arena_sizes(
    fixture: str, request: pytest.FixtureRequest, record_property, capsys
) -> None:
    from bnncube.converters.figures import activation_liveness
    from bnncube.converters.loader import load_model

    graph = load_model(request.getfixturevalue(fixture))
    balanced = plan_graph(graph, "balanced")
    ram = plan_graph(graph, "ram")
    for mp in (balanced, ram):
        verify(mp)
        _independent_check(mp.plan, list(mp.buffers))
    assert ram.size <= balanced.size
    assert balanced.plan.inplace, "the residual Adds reuse an input in place"
    assert any(e.alias_of for e in balanced.entries), "the flatten Reshape is an alias"
    assert balanced.peak_live == activation_liveness(graph).peak_bytes
    measured = (balanced.size, ram.size, ram.lower_bound, ram.peak_live, ram.naive_size)
    with capsys.disabled():
        print(f"\n{graph.name}: balanced/ram/lower bound/peak live/naive = {measured}")
    print(ram.format_table())
    for key, value in zip(
        ("balanced", "ram", "lower_bound", "peak_live", "naive"), measured, strict=True
    ):
        record_property(f"{graph.name}_{key}", value)
    assert measured == ZOO_SIZES[fixture]
    scheduled = plan_graph(schedule_for_arena(graph, "balanced"), "balanced")
    verify(scheduled)
    _independent_check(scheduled.plan, list(scheduled.buffers))
    assert (scheduled.size, scheduled.lower_bound) == ZOO_SCHEDULED[fixture]


def _depthwise_graph(
    hw: tuple[int, int],
    stride: int,
    pads: tuple[int, int, int, int],
    out_hw: tuple[int, int],
    multiplier: int = 1,
    out_dtype: str = "int8",
) -> Graph:
    c = 8
    g = Graph("dw")
    g.add_tensor(Tensor("x", (1, *hw, c), "int8"))
    g.add_tensor(
        Tensor("w", (1, 3, 3, c * multiplier), "int8", data=np.ones((1, 3, 3, c * multiplier)))
    )
    g.add_tensor(Tensor("y", (1, *out_hw, c * multiplier), out_dtype))
    attrs = {"strides": (stride, stride), "pads": pads, "depth_multiplier": multiplier}
    g.add_op(Op("dw", "DepthwiseConv2D", ["x", "w"], ["y"], attrs))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


@pytest.mark.parametrize(
    "case, allowed",
    [
        (((8, 8), 2, (0, 1, 0, 1), (4, 4)), True),  # MobileNetV2's stride-2 blocks
        (((9, 9), 2, (1, 1, 1, 1), (5, 5)), True),  # odd input, "same"
        (((6, 6), 1, (0, 0, 0, 0), (4, 4)), True),  # stride 1, valid
        (((3, 3), 1, (0, 0, 0, 0), (1, 1)), True),  # 3x3 to 1x1 (the heads)
        (((6, 6), 1, (1, 1, 1, 1), (6, 6)), False),  # stride 1, "same": reads the row above
        (((2, 6), 1, (0, 0, 1, 1), (1, 6)), False),  # one row, padding on the left
        (((8, 8), 2, (0, 1, 0, 1), (4, 4), 2), False),  # depth multiplier 2
        (((8, 8), 2, (0, 1, 0, 1), (4, 4), 1, "float32"), False),  # float output
    ],
)
def test_depthwise_in_place_rule(case: tuple[object, ...], allowed: bool) -> None:
    """planner._depthwise_in_place: every output pixel's first input pixel at or after its own
    index, depth multiplier 1, 1-byte output (the C kernel's in-place contract)."""
    from bnncube.planner import _depthwise_in_place, graph_buffers

    g = _depthwise_graph(*case)
    assert _depthwise_in_place(g, g.ops[0]) is allowed
    buffers = {b.name: b for b in graph_buffers(g)}
    assert buffers["y"].inplace_candidates == (("x",) if allowed else ())
