"""Arena planner: buffer lifetimes in, byte offsets in one activation arena out.

The generated C code keeps every activation tensor of a deployed graph in a single buffer of
``AI_<NAME>_DATA_ACTIVATIONS_SIZE`` bytes and runs one kernel per op in graph order. This module
decides where in that buffer each tensor lives. It is pure (no TensorFlow, no code generation) and
works at two levels:

* :func:`plan_buffers` knows nothing about graphs. A :class:`Buffer` is a name, a size in bytes,
  the inclusive range of op indices ``first..last`` during which it must hold its data, an
  alignment, and two optional relations to other buffers:

  - ``alias_of=X``: the buffer *is* ``X`` (same offset, merged lifetime). A Reshape output is an
    alias of its input: the kernel moves no data.
  - ``inplace_of=X`` (a name or several): the buffer *may* start at ``X``'s offset when ``X``'s
    last op is the op that first writes this buffer, this buffer is not larger than ``X`` and the
    offset suits its alignment. This is legal only for kernels that read element ``i`` before
    they write element ``i`` and whose output elements are no larger than their input elements
    (Add, int8 requantization, a binary convolution fused with the Add after it, and a
    depthwise convolution whose every output pixel reads input pixels at or after its own
    index: ``_depthwise_in_place``).

  Any other two buffers whose lifetimes share an op must not share a byte.

* :func:`plan_graph` derives the buffers of a :class:`~bnncube.converters.ir.Graph` (lifetimes
  from the op order, sizes from ``Tensor.nbytes``, Reshape aliases, Add / Quantize in-place
  candidates, optional per-op scratch) and returns a :class:`MemoryPlan` with a printable table.

:func:`verify` re-checks a plan against its buffers; tests and the code generator call it.
``docs/memory-plan.md`` explains the strategies and gives the zoo networks' arena sizes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnncube.converters.ir import Graph, Op, fused_ops
from bnncube.errors import BnnError

ARENA_ROUND = 8  # the arena size is a multiple of this many bytes

# Strategy names accepted by plan_buffers / plan_graph. The greedy_* heuristics never share
# memory in place; "balanced" (and "time", its stedgeai name) is greedy_size with in-place
# sharing, then a short seeded search on the placement order (_search); "ram" runs every
# heuristic with and without in-place sharing, searches from the best, and keeps the smallest
# of that and balanced's plan.
BASE_STRATEGIES = (
    "greedy_size",
    "greedy_size_best_fit",
    "greedy_lifetime",
    "greedy_breadth",
    "greedy_order",
)
STRATEGIES = (*BASE_STRATEGIES, "balanced", "time", "ram")

# In-place modes: "off" never shares; "prefer" takes a partner's offset whenever it fits;
# "low" takes it only when it is no higher than the lowest free offset; "chain" is "prefer" that
# also places a buffer's in-place takers right after it, at its offset, before the heuristic's
# order would put other buffers there (a float input quantized in place, say).
INPLACE_MODES = ("off", "prefer", "low", "chain")

# Ops whose output may reuse an input's memory (see _inplace_inputs for the exact conditions).
INPLACE_OPS = ("Add", "Quantize", "DepthwiseConv2D")

KINDS = ("input", "output", "activation", "scratch")


class PlanError(RuntimeError):
    """A plan breaks one of the arena invariants (a planner bug, never a user error)."""


# --------------------------------------------------------------------------------------------
# buffers and plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Buffer:
    """One block of the arena: ``size`` bytes needed from op ``first`` to op ``last``
    (inclusive), at an offset that is a multiple of ``alignment``."""

    name: str
    size: int
    first: int
    last: int
    alignment: int = 8
    alias_of: str | None = None
    inplace_of: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        # normalise inplace_of to a tuple of names (a single name is the common case)
        if self.inplace_of is None:
            names: tuple[str, ...] = ()
        elif isinstance(self.inplace_of, str):
            names = (self.inplace_of,)
        else:
            names = tuple(self.inplace_of)
        object.__setattr__(self, "inplace_of", names)
        if self.size < 0:
            raise ValueError(f"buffer {self.name!r}: negative size {self.size}")
        if self.first < 0 or self.last < self.first:
            raise ValueError(f"buffer {self.name!r}: bad lifetime {self.first}..{self.last}")
        if self.alignment < 1:
            raise ValueError(f"buffer {self.name!r}: alignment {self.alignment} is not positive")
        if self.alias_of is not None and names:
            raise ValueError(f"buffer {self.name!r}: both alias_of and inplace_of are set")

    @property
    def inplace_candidates(self) -> tuple[str, ...]:
        """The buffers whose memory this one may reuse in place (``inplace_of`` as a tuple)."""
        value = self.inplace_of
        assert isinstance(value, tuple)
        return value


@dataclass
class Plan:
    """Offsets of a set of buffers in one arena.

    ``offsets`` has every buffer (aliases included); ``size`` is the arena size in bytes (a
    multiple of 8); ``alignment`` the largest alignment any buffer asked for (the arena's base
    address must be aligned to it); ``strategy`` the strategy asked for and ``chosen`` the
    heuristic that produced the plan (e.g. ``"greedy_size+inplace"``); ``inplace`` maps each
    buffer that reuses memory in place to the buffer whose memory it reuses; ``tried`` gives the
    arena size of every heuristic that was run (one entry unless the strategy is ``"ram"``).
    """

    offsets: dict[str, int]
    size: int
    strategy: str
    chosen: str
    alignment: int = 1
    inplace: dict[str, str] = field(default_factory=dict)
    tried: dict[str, int] = field(default_factory=dict)


@dataclass
class _Group:
    """Buffers tied together by ``alias_of``: planned as one block."""

    name: str  # the root buffer (the one the others alias)
    members: tuple[str, ...]
    size: int
    first: int
    last: int
    alignment: int

    def overlaps_in_time(self, other: _Group) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class _Pairing:
    """A legal in-place pairing: ``taker`` may start at ``host``'s offset."""

    taker: str  # buffer names (members of their groups)
    host: str
    taker_group: str
    host_group: str


class _Problem:
    """Buffers grouped by alias, with the legal in-place pairings between groups."""

    def __init__(self, buffers: Sequence[Buffer]) -> None:
        self.buffers = {b.name: b for b in buffers}
        if len(self.buffers) != len(buffers):
            names = [b.name for b in buffers]
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate buffer names: {dupes}")
        for b in buffers:
            if b.alias_of is not None and b.alias_of not in self.buffers:
                raise ValueError(f"buffer {b.name!r}: alias_of {b.alias_of!r} is not a buffer")
            for host in b.inplace_candidates:
                if host not in self.buffers:
                    raise ValueError(f"buffer {b.name!r}: inplace_of {host!r} is not a buffer")
        self.root = {name: self._resolve(name) for name in self.buffers}
        members: dict[str, list[str]] = {}
        for name in sorted(self.buffers):
            members.setdefault(self.root[name], []).append(name)
        self.groups: dict[str, _Group] = {}
        for root, names in members.items():
            bufs = [self.buffers[n] for n in names]
            self.groups[root] = _Group(
                root,
                tuple(names),
                max(b.size for b in bufs),
                min(b.first for b in bufs),
                max(b.last for b in bufs),
                math.lcm(*(b.alignment for b in bufs)),
            )
        # in-place pairings, indexed by both groups they join
        self.pairings: dict[str, list[_Pairing]] = {g: [] for g in self.groups}
        for name in sorted(self.buffers):
            for host in self.buffers[name].inplace_candidates:
                pairing = self._pairing(name, host)
                if pairing is not None:
                    self.pairings[pairing.taker_group].append(pairing)
                    self.pairings[pairing.host_group].append(pairing)

    def _resolve(self, name: str) -> str:
        seen = [name]
        while (target := self.buffers[seen[-1]].alias_of) is not None:
            if target in seen:
                raise ValueError(f"alias cycle: {' -> '.join([*seen, target])}")
            seen.append(target)
        return seen[-1]

    def _pairing(self, taker: str, host: str) -> _Pairing | None:
        """The pairing ``taker`` in place of ``host`` if the rules allow it, else None."""
        tg, hg = self.groups[self.root[taker]], self.groups[self.root[host]]
        if tg is hg or hg.last != tg.first or tg.size > hg.size or tg.size == 0:
            return None
        return _Pairing(taker, host, tg.name, hg.name)

    def pairing_between(self, a: str, b: str) -> _Pairing | None:
        """A legal in-place pairing joining groups ``a`` and ``b`` (either way round)."""
        for p in self.pairings[a]:
            if {p.taker_group, p.host_group} == {a, b}:
                return p
        return None


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def _overlap(off_a: int, size_a: int, off_b: int, size_b: int) -> bool:
    return size_a > 0 and size_b > 0 and off_a < off_b + size_b and off_b < off_a + size_a


# -- where to put one block, given the blocks it must avoid ------------------------------------
Fit = Callable[[list[tuple[int, int]], int, int], int]


def _first_fit(busy: list[tuple[int, int]], size: int, alignment: int) -> int:
    """Lowest aligned offset where ``size`` bytes avoid every ``(start, end)`` in ``busy``
    (sorted by start)."""
    offset = 0
    for start, end in busy:
        if offset + size <= start:
            break
        offset = max(offset, _align_up(end, alignment))
    return offset


def _best_fit(busy: list[tuple[int, int]], size: int, alignment: int) -> int:
    """The aligned offset in the smallest gap between busy blocks that holds ``size`` bytes (the
    lowest such gap on ties); above every block when no gap is big enough."""
    best: tuple[int, int] | None = None  # (gap size, offset)
    cursor = 0
    for start, end in busy:
        offset = _align_up(cursor, alignment)
        if offset + size <= start:
            gap = start - cursor
            if best is None or gap < best[0]:
                best = (gap, offset)
        cursor = max(cursor, end)
    return best[1] if best is not None else _align_up(cursor, alignment)


# -- the order in which each heuristic places blocks -------------------------------------------
def _order_size(groups: list[_Group]) -> list[_Group]:
    return sorted(groups, key=lambda g: (-g.size, g.first, g.last, g.name))


def _order_lifetime(groups: list[_Group]) -> list[_Group]:
    return sorted(groups, key=lambda g: (-(g.last - g.first), -g.size, g.first, g.name))


def _order_execution(groups: list[_Group]) -> list[_Group]:
    return sorted(groups, key=lambda g: (g.first, -g.size, g.last, g.name))


def _order_breadth(groups: list[_Group]) -> list[_Group]:
    """Op steps from the most live bytes to the fewest; at each step its live blocks not yet
    ordered, largest first (the "greedy by breadth" idea of Pisarchyk and Lee, 2020)."""
    steps = sorted({g.first for g in groups} | {g.last for g in groups})
    live = {t: [g for g in groups if g.first <= t <= g.last] for t in steps}
    order: list[_Group] = []
    taken: set[str] = set()
    for t in sorted(steps, key=lambda t: (-sum(g.size for g in live[t]), t)):
        for g in _order_size(live[t]):
            if g.name not in taken:
                taken.add(g.name)
                order.append(g)
    return order


_HEURISTICS: dict[str, tuple[Callable[[list[_Group]], list[_Group]], Fit]] = {
    "greedy_size": (_order_size, _first_fit),
    "greedy_size_best_fit": (_order_size, _best_fit),
    "greedy_lifetime": (_order_lifetime, _first_fit),
    "greedy_breadth": (_order_breadth, _first_fit),
    "greedy_order": (_order_execution, _first_fit),
}


def _place(
    problem: _Problem, heuristic: str, inplace_mode: str, order: list[_Group] | None = None
) -> Plan:
    """Place every group in the order of ``heuristic`` (or ``order``), each at the offset its fit
    rule picks among the blocks already placed whose lifetimes overlap it, or in place of a
    partner."""
    order_of, fit = _HEURISTICS[heuristic]
    offsets: dict[str, int] = {}  # group -> offset
    inplace: dict[str, str] = {}
    placed: list[_Group] = []

    def chain(host: _Group) -> None:
        """Place the in-place takers of ``host`` (not placed yet) at its offset, if free."""
        for pairing in problem.pairings[host.name]:
            taker = problem.groups[pairing.taker_group]
            if pairing.host_group != host.name or taker.name in offsets:
                continue
            at = offsets[host.name]
            if at % taker.alignment or any(
                _overlap(at, taker.size, offsets[c.name], c.size)
                for c in placed
                if c.name != host.name and c.overlaps_in_time(taker)
            ):
                continue
            offsets[taker.name] = at
            inplace[pairing.taker] = pairing.host
            placed.append(taker)
            chain(taker)

    for group in order if order is not None else order_of(list(problem.groups.values())):
        if group.name in offsets:  # placed by chain()
            continue
        conflicts = [p for p in placed if p.overlaps_in_time(group)]
        busy = sorted((offsets[p.name], offsets[p.name] + p.size) for p in conflicts if p.size)
        offset = fit(busy, group.size, group.alignment)
        if inplace_mode != "off" and group.size:
            partners = [
                (offsets[other], other, pairing)
                for pairing in problem.pairings[group.name]
                if (other := _other(pairing, group.name)) in offsets
            ]
            for partner_offset, other, pairing in sorted(partners, key=lambda p: p[:2]):
                if partner_offset % group.alignment:
                    continue
                if inplace_mode == "low" and partner_offset > offset:
                    break
                if not any(
                    _overlap(partner_offset, group.size, offsets[c.name], c.size)
                    for c in conflicts
                    if c.name != other
                ):
                    offset = partner_offset
                    inplace[pairing.taker] = pairing.host
                    break
        offsets[group.name] = offset
        placed.append(group)
        if inplace_mode == "chain" and group.size:
            chain(group)
    top = max((offsets[g.name] + g.size for g in placed), default=0)
    suffix = {"off": "", "prefer": "+inplace", "low": "+inplace_low", "chain": "+inplace_chain"}[
        inplace_mode
    ]
    alignment = max((b.alignment for b in problem.buffers.values()), default=1)
    return Plan(
        offsets={name: offsets[problem.root[name]] for name in sorted(problem.buffers)},
        size=_align_up(top, ARENA_ROUND),
        strategy=heuristic,
        chosen=heuristic + suffix,
        alignment=alignment,
        inplace=dict(sorted(inplace.items())),
    )


def _other(pairing: _Pairing, group: str) -> str:
    return pairing.host_group if pairing.taker_group == group else pairing.taker_group


def plan_buffers(buffers: Sequence[Buffer], strategy: str = "balanced") -> Plan:
    """Offsets for ``buffers`` in one arena, by ``strategy`` (one of :data:`STRATEGIES`).

    The plan depends only on the buffers (not on their order in ``buffers``): ties are broken
    by name.
    """
    if strategy not in STRATEGIES:
        raise BnnError(f"unknown memory strategy {strategy!r}; expected one of {STRATEGIES}")
    problem = _Problem(buffers)
    if strategy in ("balanced", "time"):
        # "prefer" first: "chain" is kept only where it is strictly smaller
        candidates = [("greedy_size", "prefer"), ("greedy_size", "chain")]
    elif strategy == "ram":
        # balanced first, so that ram keeps balanced's plan when nothing does better
        candidates = [("greedy_size", "prefer")] + [
            (h, m)
            for h in BASE_STRATEGIES
            for m in INPLACE_MODES
            if (h, m) != ("greedy_size", "prefer")
        ]
    else:
        candidates = [(strategy, "off")]
    best: Plan | None = None
    tried: dict[str, int] = {}
    for heuristic, mode in candidates:
        plan = _place(problem, heuristic, mode)
        tried[plan.chosen] = plan.size
        if best is None or plan.size < best.size:
            best = plan
    assert best is not None
    if strategy in ("balanced", "time", "ram") and best.size > lower_bound(buffers):
        best = _search(problem, best, tried)
    if strategy == "ram":
        # balanced's own search may have found a smaller plan than the one from ram's best start
        balanced = plan_buffers(buffers, "balanced")
        if balanced.size < best.size:
            best = balanced
        tried.update(balanced.tried)
    best.strategy = strategy
    best.tried = tried
    return best


# Orders tried by the search after the heuristics (seeded: plans reproduce).
SEARCH_STEPS = 400


def _search(problem: _Problem, start: Plan, tried: dict[str, int]) -> Plan:
    """Hill climbing on the placement order, from the best heuristic's: swap two groups, keep
    the swap when the arena does not grow; stop at the lower bound or after SEARCH_STEPS."""
    import random

    heuristic = start.chosen.split("+")[0]
    mode = {"": "off", "inplace": "prefer", "inplace_low": "low", "inplace_chain": "chain"}[
        start.chosen.partition("+")[2]
    ]
    order_of, _ = _HEURISTICS[heuristic]
    order = order_of(list(problem.groups.values()))
    bound = lower_bound(list(problem.buffers.values()))
    rng = random.Random(0)
    best = start
    for _ in range(SEARCH_STEPS if len(order) > 1 else 0):
        i, j = rng.sample(range(len(order)), 2)
        order[i], order[j] = order[j], order[i]
        plan = _place(problem, heuristic, mode, order)
        if plan.size <= best.size:
            best = plan
            if best.size <= bound:
                break
        else:
            order[i], order[j] = order[j], order[i]
    if best is not start:
        best.chosen = f"{start.chosen}+search"
        tried[best.chosen] = best.size
    return best


# --------------------------------------------------------------------------------------------
# bounds and checks
# --------------------------------------------------------------------------------------------


def peak_live(buffers: Sequence[Buffer]) -> int:
    """The most bytes live at any one op when nothing shares memory (aliases count once)."""
    groups = list(_Problem(buffers).groups.values())
    steps = {g.first for g in groups}
    return max((sum(g.size for g in groups if g.first <= t <= g.last) for t in steps), default=0)


def lower_bound(buffers: Sequence[Buffer]) -> int:
    """Bytes no plan can go below: the largest, over ops, of the bytes live at that op less what
    in-place sharing could save there.

    At op ``t`` only pairs (host ending at ``t``, taker starting at ``t``) may share bytes, each
    host with one taker and each taker with one host, so the saving is at most both the sum of
    the takers' sizes and the sum over hosts of their largest taker.
    """
    problem = _Problem(buffers)
    groups = list(problem.groups.values())
    if not groups:
        return 0
    events = {g.first for g in groups} | {g.last for g in groups}
    lo, hi = min(events), max(events)
    steps = sorted({t for e in events for t in (e, e + 1) if lo <= t <= hi})
    bound = 0
    for t in steps:
        live = sum(g.size for g in groups if g.first <= t <= g.last)
        takers: dict[str, int] = {}
        hosts: dict[str, int] = {}
        for name, group in problem.groups.items():
            if group.first != t:
                continue
            for p in problem.pairings[name]:
                if p.taker_group == name:
                    takers[name] = group.size
                    hosts[p.host_group] = max(hosts.get(p.host_group, 0), group.size)
        saving = min(sum(takers.values()), sum(hosts.values()))
        bound = max(bound, live - saving)
    return bound


def naive_size(buffers: Sequence[Buffer]) -> int:
    """Bytes if every buffer had its own memory (aliases count once, no alignment padding)."""
    return sum(g.size for g in _Problem(buffers).groups.values())


def verify(plan: Plan | MemoryPlan, buffers: Sequence[Buffer] | None = None) -> None:
    """Raise :class:`PlanError` listing every broken invariant of ``plan`` for ``buffers``
    (taken from the plan itself for a :class:`MemoryPlan`).

    Checked: every buffer has an offset, aligned, inside the arena; the arena size is a multiple
    of 8; aliases share their target's offset; two buffers live at the same op share no byte
    unless they are aliases or a legal in-place pair at the same offset; every recorded in-place
    pair is legal.
    """
    if isinstance(plan, MemoryPlan):
        buffers = plan.buffers if buffers is None else buffers
        plan = plan.plan
    if buffers is None:
        raise TypeError("verify: buffers are required for a Plan")
    problem = _Problem(buffers)
    errors: list[str] = []
    if plan.size % ARENA_ROUND:
        errors.append(f"arena size {plan.size} is not a multiple of {ARENA_ROUND}")
    for b in buffers:
        off = plan.offsets.get(b.name)
        if off is None:
            errors.append(f"{b.name}: no offset")
            continue
        if off < 0 or off % b.alignment:
            errors.append(f"{b.name}: offset {off} is not a multiple of {b.alignment}")
        if off + b.size > plan.size:
            errors.append(f"{b.name}: ends at {off + b.size}, past the arena ({plan.size})")
        root = problem.root[b.name]
        if plan.offsets.get(root) != off:
            errors.append(f"{b.name}: alias of {root} at {off}, not {plan.offsets.get(root)}")
    if errors:
        raise PlanError("\n".join(errors))
    groups = sorted(problem.groups.values(), key=lambda g: plan.offsets[g.name])
    for i, a in enumerate(groups):
        off_a = plan.offsets[a.name]
        for b in groups[i + 1 :]:
            off_b = plan.offsets[b.name]
            if off_b >= off_a + a.size:
                break  # sorted by offset: nothing further can overlap a
            if not a.overlaps_in_time(b) or not _overlap(off_a, a.size, off_b, b.size):
                continue
            if off_a == off_b and problem.pairing_between(a.name, b.name) is not None:
                continue
            errors.append(
                f"{a.name} [{off_a}, {off_a + a.size}) ops {a.first}..{a.last} overlaps "
                f"{b.name} [{off_b}, {off_b + b.size}) ops {b.first}..{b.last}"
            )
    for taker, host in plan.inplace.items():
        if taker not in problem.buffers or host not in problem.buffers:
            errors.append(f"in-place {taker} -> {host}: unknown buffer")
            continue
        if host not in problem.buffers[taker].inplace_candidates:
            errors.append(f"in-place {taker} -> {host}: {host} is not in {taker}'s inplace_of")
        elif problem._pairing(taker, host) is None:
            errors.append(f"in-place {taker} -> {host}: lifetimes or sizes do not allow it")
        elif plan.offsets[taker] != plan.offsets[host]:
            errors.append(f"in-place {taker} -> {host}: offsets differ")
    if errors:
        raise PlanError("\n".join(errors))


# --------------------------------------------------------------------------------------------
# graphs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanEntry:
    """Where one tensor (or one op's scratch) lives.

    ``offset`` is None for a graph input or output left out of the arena (the caller passes its
    own buffer). ``first``/``last`` are op indices (inclusive). ``alias_of`` names the tensor this
    one shares memory with for its whole life (Reshape); ``inplace_of`` the tensor whose memory
    this one reuses in place (the plan chose it), ``inplace_candidates`` those it was allowed.
    """

    name: str
    kind: str
    offset: int | None
    size: int
    first: int
    last: int
    op: str | None = None  # the producing op (for scratch: the op it serves)
    alias_of: str | None = None
    inplace_of: str | None = None
    inplace_candidates: tuple[str, ...] = ()

    @property
    def in_arena(self) -> bool:
        return self.offset is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "offset": self.offset,
            "size": self.size,
            "first": self.first,
            "last": self.last,
            "op": self.op,
            "alias_of": self.alias_of,
            "inplace_of": self.inplace_of,
            "inplace_candidates": list(self.inplace_candidates),
        }


@dataclass
class MemoryPlan:
    """The arena plan of a graph: :func:`plan_graph`'s result.

    ``size`` is the arena size in bytes (``AI_<NAME>_DATA_ACTIVATIONS_SIZE``); ``lower_bound``
    the bytes no plan of these buffers can go below; ``peak_live`` the most bytes live at one op
    without in-place sharing; ``naive_size`` the bytes if no two tensors shared memory.
    """

    graph: str
    strategy: str
    chosen: str
    size: int
    lower_bound: int
    peak_live: int
    naive_size: int
    alignment: int
    num_ops: int
    entries: list[PlanEntry]
    inputs_allocation: bool
    outputs_allocation: bool
    tried: dict[str, int]
    plan: Plan
    buffers: tuple[Buffer, ...]

    @property
    def offsets(self) -> dict[str, int]:
        """Offset of every entry in the arena (entries outside it are left out)."""
        return {e.name: e.offset for e in self.entries if e.offset is not None}

    @property
    def external(self) -> list[PlanEntry]:
        """Graph inputs and outputs the caller provides buffers for."""
        return [e for e in self.entries if e.offset is None]

    def entry(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def format_table(self) -> str:
        """The plan as text: one line per entry by offset, then the totals."""
        in_arena = sorted(
            (e for e in self.entries if e.offset is not None),
            key=lambda e: (e.offset, e.first, e.name),
        )
        rows = [("offset", "size", "ops", "kind", "name")]
        for e in [*in_arena, *self.external]:
            note = ""
            if e.alias_of:
                note = f"  (alias of {e.alias_of})"
            elif e.inplace_of:
                note = f"  (in place of {e.inplace_of})"
            elif e.offset is None:
                note = "  (caller's buffer)"
            rows.append(
                (
                    "-" if e.offset is None else f"{e.offset:,}",
                    f"{e.size:,}",
                    f"{e.first}..{e.last}",
                    e.kind,
                    e.name + note,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            f"memory plan of {self.graph!r}: strategy {self.strategy} ({self.chosen}), "
            f"{self.num_ops} ops, arena aligned to {self.alignment} B"
        ]
        for r in rows:
            lines.append(
                f"{r[0]:>{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  "
                f"{r[3]:<{widths[3]}}  {r[4]}"
            )
        external = sum(e.size for e in self.external)
        lines.append(
            f"arena {_bytes(self.size)} | lower bound {_bytes(self.lower_bound)} | "
            f"peak live without in-place {_bytes(self.peak_live)} | "
            f"naive (no sharing) {_bytes(self.naive_size)}"
        )
        if self.external:
            lines.append(f"outside the arena (caller's buffers): {_bytes(external)}")
        if len(self.tried) > 1:
            lines.append("tried: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.tried.items())))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return {
            "graph": self.graph,
            "strategy": self.strategy,
            "chosen": self.chosen,
            "size": self.size,
            "lower_bound": self.lower_bound,
            "peak_live": self.peak_live,
            "naive_size": self.naive_size,
            "alignment": self.alignment,
            "num_ops": self.num_ops,
            "inputs_allocation": self.inputs_allocation,
            "outputs_allocation": self.outputs_allocation,
            "tried": dict(self.tried),
            "entries": [e.as_dict() for e in self.entries],
        }


def _bytes(n: int) -> str:
    return f"{n:,} B ({n / 1024:.1f} KiB)"


def _scratch_name(op_name: str) -> str:
    return f"scratch:{op_name}"


def _same_layout(graph: Graph, x: str, y: str) -> bool:
    """Whether a Reshape from ``x`` to ``y`` leaves the bytes as they are (binary tensors are
    packed along their last axis, so reshaping across it moves bits)."""
    tx, ty = graph.tensors[x], graph.tensors[y]
    if tx.dtype != ty.dtype or tx.nbytes != ty.nbytes:
        return False
    return tx.dtype != "binary" or (tx.shape[-1:] == ty.shape[-1:])


def _inplace_inputs(graph: Graph, op_index: int, arena: set[str]) -> tuple[str, ...]:
    """The inputs of op ``op_index`` whose memory its output may reuse: Add (same dtype and size
    as the output, so no broadcast), a 1-byte to 1-byte Quantize (requantization), a float32
    to 1-byte Quantize (the output shrinks behind the reads), a fused BinaryConv2D + Add (its
    residual) and a DepthwiseConv2D that passes :func:`_depthwise_in_place`. Dequantize (4 bytes
    out per byte in) and Bitpack (reads 32 values per word) never."""
    op = graph.ops[op_index]
    if len(op.outputs) != 1 or op.outputs[0] not in arena:
        return ()
    out = graph.tensors[op.outputs[0]]
    if op.type == "BinaryConv2D" and fused_ops(op):
        # a fused BinaryConv2D + Add writes each sum over the residual's element it read
        # (bnn_bconv2d_add); never over its packed binary input
        conv, add = fused_ops(op)
        residual = graph.tensors[add.inputs[1 - int(op.attrs.get("residual_position", 0))]]
        if residual.name in arena and residual.nbytes == out.nbytes:
            return (residual.name,)
        return ()
    if op.type not in INPLACE_OPS:
        return ()
    one_byte = ("int8", "uint8")
    names: list[str] = []
    for t in graph.activation_inputs(op):
        if t.name not in arena or t.name in names:
            continue
        if op.type == "Add" and t.dtype == out.dtype and t.nbytes == out.nbytes:
            names.append(t.name)
        elif op.type == "Quantize" and t.dtype in one_byte and out.dtype in one_byte:
            if t.nbytes == out.nbytes:
                names.append(t.name)
        elif op.type == "DepthwiseConv2D" and _depthwise_in_place(graph, op):
            names.append(t.name)
            break  # its input is the first activation input
        elif op.type == "Quantize" and t.dtype == "float32" and out.dtype in one_byte:
            # float32 -> int8 front to back: byte i of the output is written after element i
            # (bytes 4i .. 4i + 3) was read, and i <= 4i, so the output may start where the
            # input starts (bnn_quantize_f32_s8's contract)
            if 4 * out.nbytes == t.nbytes:
                names.append(t.name)
    return tuple(names)


def _depthwise_in_place(graph: Graph, op: Op) -> bool:
    """Whether a DepthwiseConv2D may write its output over its input (bnn_depthwise_conv2d_s8's
    in-place contract): depth multiplier 1, 1-byte input and output of the same channels, and
    every output pixel's first input pixel (the smallest row-major index among its taps inside
    the input) at or after the output pixel's own index. Each channel's outputs are written in
    row-major order, each after all its taps were read, so no output then overwrites an input
    pixel that a later output still reads. True for the stride-2 depthwise convolutions of
    MobileNetV2 and of the hybrid, never for stride 1 with padding."""
    x, out = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    one_byte = ("int8", "uint8")
    if int(op.attrs.get("depth_multiplier", 1)) != 1 or x.dtype not in one_byte:
        return False
    if out.dtype not in one_byte or len(x.shape) != 4 or len(out.shape) != 4:
        return False
    if x.shape[3] != out.shape[3] or out.nbytes > x.nbytes:
        return False
    w = graph.tensors[op.inputs[1]]
    (_, in_h, in_w, _), (_, out_h, out_w, _) = x.shape, out.shape
    sh, sw = op.attrs.get("strides", (1, 1))
    dh, dw = op.attrs.get("dilations", (1, 1))
    top, _, left, _ = op.attrs.get("pads", (0, 0, 0, 0))

    def first_inside(start: np.ndarray, taps: int, dilation: int, size: int) -> np.ndarray:
        # the first tap index i with 0 <= start + i * dilation < size (the smallest position)
        pos = start[:, None] + np.arange(taps)[None, :] * int(dilation)
        inside = (pos >= 0) & (pos < size)
        return np.where(inside.any(axis=1), pos[np.arange(len(start)), inside.argmax(axis=1)], -1)

    rows = first_inside(np.arange(out_h) * int(sh) - int(top), int(w.shape[1]), dh, in_h)
    cols = first_inside(np.arange(out_w) * int(sw) - int(left), int(w.shape[2]), dw, in_w)
    if (rows < 0).any() or (cols < 0).any():
        return False
    first = rows[:, None] * in_w + cols[None, :]  # first input pixel read, per output pixel
    own = np.arange(out_h * out_w).reshape(out_h, out_w)
    return bool((first >= own).all())


@dataclass(frozen=True)
class _TensorUse:
    name: str
    kind: str
    first: int
    last: int
    op: str | None
    external: bool


def _tensor_uses(
    graph: Graph, inputs_allocation: bool, outputs_allocation: bool
) -> list[_TensorUse]:
    """Every activation tensor of ``graph`` with its lifetime, in order of first appearance."""
    last_op = max(len(graph.ops) - 1, 0)
    producer: dict[str, int] = {}
    last_read: dict[str, int] = {}
    order: list[str] = list(dict.fromkeys(graph.inputs))
    for i, op in enumerate(graph.ops):
        for name in op.inputs:
            if not graph.tensors[name].is_const:
                last_read[name] = i
                order.append(name)
        for name in op.outputs:
            producer.setdefault(name, i)
            order.append(name)
    order.extend(graph.outputs)
    uses: list[_TensorUse] = []
    for name in dict.fromkeys(order):
        if graph.tensors[name].is_const:
            continue
        is_input, is_output = name in graph.inputs, name in graph.outputs
        first = 0 if is_input else producer[name]
        last = last_op if is_output else max(first, last_read.get(name, first))
        kind = "input" if is_input else "output" if is_output else "activation"
        external = (is_input and not inputs_allocation) or (is_output and not outputs_allocation)
        op = None if is_input else graph.ops[producer[name]].name
        uses.append(_TensorUse(name, kind, first, last, op, external))
    return uses


def graph_buffers(
    graph: Graph,
    *,
    inputs_allocation: bool = True,
    outputs_allocation: bool = True,
    scratch: dict[str, int] | None = None,
    alignment: int = 8,
) -> list[Buffer]:
    """The arena buffers of ``graph``: one per activation tensor in the arena (Reshape outputs as
    aliases, Add / requantize outputs with their in-place candidates) and one per op scratch."""
    graph.validate()
    uses = _tensor_uses(graph, inputs_allocation, outputs_allocation)
    arena = {u.name for u in uses if not u.external}
    alias: dict[str, str] = {}
    inplace: dict[str, tuple[str, ...]] = {}
    for i, op in enumerate(graph.ops):
        if op.type == "Reshape" and len(op.outputs) == 1:
            x, y = op.inputs[0], op.outputs[0]
            if x in arena and y in arena and _same_layout(graph, x, y):
                alias[y] = x
        if op.outputs:
            candidates = _inplace_inputs(graph, i, arena)
            if candidates:
                inplace[op.outputs[0]] = candidates
    buffers = [
        Buffer(
            u.name,
            graph.tensors[u.name].nbytes,
            u.first,
            u.last,
            alignment,
            alias.get(u.name),
            inplace.get(u.name),
        )
        for u in uses
        if not u.external
    ]
    index = {op.name: i for i, op in enumerate(graph.ops)}
    for op_name, nbytes in sorted((scratch or {}).items()):
        if op_name not in index:
            raise BnnError(f"scratch: graph {graph.name!r} has no op named {op_name!r}")
        if nbytes < 0:
            raise BnnError(f"scratch: op {op_name!r} asks for {nbytes} bytes")
        if nbytes:
            i = index[op_name]
            buffers.append(Buffer(_scratch_name(op_name), int(nbytes), i, i, alignment))
    return buffers


def plan_graph(
    graph: Graph,
    strategy: str = "balanced",
    *,
    inputs_allocation: bool = True,
    outputs_allocation: bool = True,
    scratch: dict[str, int] | None = None,
    alignment: int = 8,
) -> MemoryPlan:
    """Plan the activation arena of a deployed ``graph`` (ops in the order they will run).

    Graph inputs live from op 0, graph outputs until the last op, every other tensor from the op
    that writes it to the last op that reads it. Constants are not planned. With
    ``inputs_allocation`` / ``outputs_allocation`` False the graph inputs / outputs stay out of
    the arena (their entries have no offset). ``scratch`` maps op names to scratch bytes needed
    while that op runs. Every buffer offset is a multiple of ``alignment``.
    """
    buffers = graph_buffers(
        graph,
        inputs_allocation=inputs_allocation,
        outputs_allocation=outputs_allocation,
        scratch=scratch,
        alignment=alignment,
    )
    plan = plan_buffers(buffers, strategy)
    verify(plan, buffers)
    by_name = {b.name: b for b in buffers}
    entries: list[PlanEntry] = []
    for u in _tensor_uses(graph, inputs_allocation, outputs_allocation):
        b = by_name.get(u.name)
        entries.append(
            PlanEntry(
                u.name,
                u.kind,
                None if b is None else plan.offsets[u.name],
                graph.tensors[u.name].nbytes,
                u.first,
                u.last,
                u.op,
                None if b is None else b.alias_of,
                plan.inplace.get(u.name),
                () if b is None else b.inplace_candidates,
            )
        )
    for op_name in sorted(scratch or {}):
        name = _scratch_name(op_name)
        if name in by_name:
            b = by_name[name]
            entries.append(
                PlanEntry(name, "scratch", plan.offsets[name], b.size, b.first, b.last, op_name)
            )
    return MemoryPlan(
        graph=graph.name,
        strategy=strategy,
        chosen=plan.chosen,
        size=plan.size,
        lower_bound=lower_bound(buffers),
        peak_live=peak_live(buffers),
        naive_size=naive_size(buffers),
        alignment=plan.alignment,
        num_ops=len(graph.ops),
        entries=entries,
        inputs_allocation=inputs_allocation,
        outputs_allocation=outputs_allocation,
        tried=dict(plan.tried),
        plan=plan,
        buffers=tuple(buffers),
    )


def format_buffers(plan: Plan, buffers: Iterable[Buffer]) -> str:
    """A graph-free plan as text: offset, size, ops and name of each buffer, by offset."""
    rows = sorted(buffers, key=lambda b: (plan.offsets[b.name], b.first, b.name))
    lines = [f"plan ({plan.strategy}: {plan.chosen}), arena {_bytes(plan.size)}"]
    for b in rows:
        lines.append(
            f"{plan.offsets[b.name]:>10,}  {b.size:>10,}  {b.first:>4}..{b.last:<4}  {b.name}"
        )
    return "\n".join(lines)


def memory_order(graph: Graph) -> list[int]:
    """A topological order of ``graph.ops`` (indices) by greedy list scheduling for memory: among
    the ops whose inputs are ready, run the one that adds the fewest live bytes (its outputs less
    the inputs it is the last reader of), the earliest in the given order on ties. In a residual
    block this runs the shortcut's projection before the binary branch, so that the block input
    dies before the branch's wide output is made."""
    produced = {name for name in graph.inputs}
    remaining: dict[str, int] = {}
    for op in graph.ops:
        for t in graph.activation_inputs(op):
            remaining[t.name] = remaining.get(t.name, 0) + 1
    keep = set(graph.outputs)  # live to the end; graph inputs die at their last reader
    order: list[int] = []
    done = [False] * len(graph.ops)
    for _ in graph.ops:
        best: tuple[int, int] | None = None
        for i, op in enumerate(graph.ops):
            if done[i]:
                continue
            ins = graph.activation_inputs(op)
            if any(t.name not in produced for t in ins):
                continue
            grow = sum(graph.tensors[o].nbytes for o in op.outputs)
            freed = sum(
                t.nbytes
                for t in {t.name: t for t in ins}.values()
                if t.name not in keep and remaining[t.name] == sum(x.name == t.name for x in ins)
            )
            if best is None or grow - freed < best[0]:
                best = (grow - freed, i)
        if best is None:  # not a DAG in this order: keep the given one
            return list(range(len(graph.ops)))
        i = best[1]
        done[i] = True
        order.append(i)
        for t in graph.activation_inputs(graph.ops[i]):
            remaining[t.name] -= 1
        produced.update(graph.ops[i].outputs)
    return order


def schedule_for_arena(
    graph: Graph,
    strategy: str = "balanced",
    *,
    inputs_allocation: bool = True,
    outputs_allocation: bool = True,
) -> Graph:
    """``graph`` with its ops in the order whose planned arena is smaller: as given, or
    :func:`memory_order`'s. Returns ``graph`` itself when its own order is as good; otherwise a
    copy sharing the tensors, with the ops reordered (every order is a valid execution order, so
    results are the same bit for bit)."""
    order = memory_order(graph)
    if order == list(range(len(graph.ops))):
        return graph
    options = {"inputs_allocation": inputs_allocation, "outputs_allocation": outputs_allocation}
    reordered = copy.copy(graph)
    reordered.ops = [graph.ops[i] for i in order]
    if (
        plan_graph(reordered, strategy, **options).size
        < plan_graph(graph, strategy, **options).size
    ):
        return reordered
    return graph
