"""Sub-graph patterns as values, and a linear-time matcher.

A :class:`Pattern` is a small DAG of :class:`Node` predicates (a set of op types and/or a
function of the op) joined by :class:`Edge` s that may name ports (which output of the source
feeds which input of the destination; ``None`` means any). Patterns are plain frozen values a
user can write::

    swish = Pattern(
        "swish",
        nodes=(Node("x", COMPUTING), Node("sig", {"Sigmoid"}), Node("mul", {"Mul"})),
        edges=(Edge("x", "sig"), Edge("sig", "mul"), Edge("x", "mul")),
    )

:func:`find` returns every structural match with, for each, the reason it is not exclusive (or
None); :func:`match` keeps the exclusive ones. Matching starts from the op-type index of one
anchor node and walks producer/consumer edges from there, so chain and diamond patterns cost
O(candidates x pattern size x degree), linear in the graph (PPQ's matcher scans every op for
every pattern node and is quadratic).

*Exclusive* follows PPQ: an inner node (one with pattern predecessors) reads only from ops of
the match, from exactly as many distinct producer ops as it has pattern in-edges, and a node
with pattern successors feeds only ops of the match. Unlike PPQ, a graph output counts as an
outside consumer (``graph_outputs_count=False`` restores PPQ's behaviour).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import attrs

from .errors import FusekitError
from .graph import Graph, GraphIndex, Op

__all__ = ["Edge", "Match", "Node", "Pattern", "PatternError", "find", "match"]


class PatternError(FusekitError, ValueError):
    """A pattern is malformed (unknown node in an edge, a cycle, disconnected nodes)."""


def _types(value: Iterable[str] | str | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(value)


@attrs.frozen
class Node:
    """A pattern node: ``types`` (op types accepted, None = any) and ``where`` (extra test)."""

    name: str
    types: frozenset[str] | None = attrs.field(default=None, converter=_types)
    where: Callable[[Op], bool] | None = attrs.field(default=None, eq=False)

    def accepts(self, op: Op) -> bool:
        """True if ``op`` satisfies this node."""
        if self.types is not None and op.op_type not in self.types:
            return False
        return self.where is None or bool(self.where(op))


@attrs.frozen
class Edge:
    """Output ``src_port`` of ``src`` feeds input ``dst_port`` of ``dst`` (None = any port)."""

    src: str
    dst: str
    src_port: int | None = None
    dst_port: int | None = None


def _node_tuple(value: Iterable[Node]) -> tuple[Node, ...]:
    return tuple(value)


def _edge_tuple(value: Iterable[Edge]) -> tuple[Edge, ...]:
    return tuple(value)


def _check_pattern(inst: Pattern, _: object, __: object) -> None:
    names = [n.name for n in inst.nodes]
    if not names:
        raise PatternError(f"pattern {inst.name!r} has no nodes")
    if len(set(names)) != len(names):
        raise PatternError(f"pattern {inst.name!r} has duplicate node names")
    known = set(names)
    for e in inst.edges:
        if e.src not in known or e.dst not in known:
            raise PatternError(
                f"pattern {inst.name!r}: edge {e.src}->{e.dst} names an unknown node"
            )
        if e.src == e.dst:
            raise PatternError(f"pattern {inst.name!r}: self edge on {e.src}")
    # acyclic (Kahn) and connected (undirected reachability)
    indeg = dict.fromkeys(names, 0)
    for e in inst.edges:
        indeg[e.dst] += 1
    ready = [n for n in names if indeg[n] == 0]
    seen = 0
    while ready:
        n = ready.pop()
        seen += 1
        for e in inst.edges:
            if e.src == n:
                indeg[e.dst] -= 1
                if indeg[e.dst] == 0:
                    ready.append(e.dst)
    if seen != len(names):
        raise PatternError(f"pattern {inst.name!r} has a cycle")
    reach = {names[0]}
    changed = True
    while changed:
        changed = False
        for e in inst.edges:
            if (e.src in reach) != (e.dst in reach):
                reach |= {e.src, e.dst}
                changed = True
    if reach != known:
        raise PatternError(f"pattern {inst.name!r} is not connected: {sorted(known - reach)}")


@attrs.frozen
class Pattern:
    """A named DAG of nodes and edges (validated: acyclic, connected, edges name nodes)."""

    name: str
    nodes: tuple[Node, ...] = attrs.field(converter=_node_tuple)
    edges: tuple[Edge, ...] = attrs.field(converter=_edge_tuple, validator=_check_pattern)

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise PatternError(f"pattern {self.name!r} has no node {name!r}")


class Match(NamedTuple):
    """One occurrence of a pattern: op names in the pattern's node order."""

    pattern: Pattern
    ops: tuple[str, ...]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for n, op in zip(self.pattern.nodes, self.ops):
                if n.name == key:
                    return op
            raise KeyError(key)
        return tuple.__getitem__(self, key)

    def as_dict(self) -> dict[str, str]:
        """``{node name: op name}``."""
        return {n.name: op for n, op in zip(self.pattern.nodes, self.ops)}


class _Compiled:
    """A pattern turned into a search plan over node indices."""

    def __init__(self, pattern: Pattern):
        self.pattern = pattern
        names = [n.name for n in pattern.nodes]
        pos = {n: i for i, n in enumerate(names)}
        self.n = len(names)
        self.edges = [(pos[e.src], pos[e.dst], e.src_port, e.dst_port) for e in pattern.edges]
        self.preds = [sorted({s for s, d, _, _ in self.edges if d == i}) for i in range(self.n)]
        self.succs = [sorted({d for s, d, _, _ in self.edges if s == i}) for i in range(self.n)]
        # anchor: the first node (in pattern order) that names op types, else node 0
        anchor = next((i for i, n in enumerate(pattern.nodes) if n.types is not None), 0)
        self.anchor = anchor
        # binding order: BFS over undirected edges from the anchor
        order = [anchor]
        while len(order) < self.n:
            for s, d, _, _ in self.edges:
                if s in order and d not in order:
                    order.append(d)
                elif d in order and s not in order:
                    order.append(s)
        self.order = order
        # for each non-anchor node, the edge connecting it to an earlier-bound node
        self.via: list[tuple[int, int, int | None, int | None, bool]] = []
        for k in range(1, self.n):
            i = order[k]
            bound = set(order[:k])
            for s, d, sp, dp in self.edges:
                if d == i and s in bound:
                    self.via.append((s, d, sp, dp, True))  # walk downstream from s
                    break
                if s == i and d in bound:
                    self.via.append((s, d, sp, dp, False))  # walk upstream from d
                    break


_COMPILED: dict[int, _Compiled] = {}


def _compile(pattern: Pattern) -> _Compiled:
    key = id(pattern)
    c = _COMPILED.get(key)
    if c is None or c.pattern is not pattern:
        c = _Compiled(pattern)
        if len(_COMPILED) > 256:
            _COMPILED.clear()
        _COMPILED[key] = c
    return c


def _edge_holds(idx: GraphIndex, a: int, b: int, sp: int | None, dp: int | None) -> bool:
    """Does some output (port ``sp``) of op ``a`` feed some input (port ``dp``) of op ``b``?"""
    base_b = idx.slot_base[b]
    outs = idx.output_sids(a)
    if sp is not None:
        if sp >= len(outs):
            return False
        outs = range(outs[sp], outs[sp] + 1)
    for sid in outs:
        tid = idx.slot_tensor[sid]
        if tid < 0:
            continue
        for c in idx.consumers[tid]:
            if idx.slot_op[c] == b and (dp is None or c - base_b == dp):
                return True
    return False


def _downstream_ops(idx: GraphIndex, a: int, sp: int | None) -> list[int]:
    outs = idx.output_sids(a)
    if sp is not None:
        if sp >= len(outs):
            return []
        outs = range(outs[sp], outs[sp] + 1)
    seen: list[int] = []
    for sid in outs:
        tid = idx.slot_tensor[sid]
        if tid < 0:
            continue
        for c in idx.consumers[tid]:
            o = idx.slot_op[c]
            if o not in seen:
                seen.append(o)
    return seen


def _upstream_ops(
    idx: GraphIndex, b: int, dp: int | None, skip_constants: bool = False
) -> list[int]:
    """Distinct producer ops of ``b``'s inputs (port ``dp`` only, if given).

    With ``skip_constants`` a ``Constant`` op does not count as a producer: its output is a
    constant exactly like an initializer (PPQ folds Constant ops into parameters before it
    matches anything).
    """
    ins = idx.input_sids(b)
    if dp is not None:
        if dp >= len(ins):
            return []
        ins = range(ins[dp], ins[dp] + 1)
    seen: list[int] = []
    for sid in ins:
        tid = idx.slot_tensor[sid]
        if tid < 0:
            continue
        p = idx.producer[tid]
        if p >= 0:
            o = idx.slot_op[p]
            if skip_constants and idx.op_types[o] == "Constant":
                continue
            if o not in seen:
                seen.append(o)
    return seen


def _anchor_candidates(graph: Graph, node: Node) -> list[int]:
    idx = graph.index
    by_type = graph.ops_by_type()
    if node.types is not None:
        lists = [by_type.get(t, ()) for t in sorted(node.types)]
        if len(lists) == 1:
            cands = list(lists[0])
        else:
            pos = graph.positions()
            names = idx.op_names
            cands = sorted((o for lst in lists for o in lst), key=lambda o: pos[names[o]])
    else:
        op_id = idx.op_id
        cands = [op_id[n] for n in graph.order]
    if node.where is not None:
        ops, names = graph.ops, idx.op_names
        where = node.where
        cands = [o for o in cands if where(ops[names[o]])]
    return cands


def _exclusive_reason(
    graph: Graph, comp: _Compiled, bound: Sequence[int], graph_outputs_count: bool
) -> str | None:
    """Why a structural match is not exclusive (None if it is)."""
    idx = graph.index
    names = idx.op_names
    members = set(bound)
    for i in range(comp.n):
        o = bound[i]
        if comp.preds[i]:
            producers = _upstream_ops(idx, o, None, skip_constants=True)
            outside = [p for p in producers if p not in members]
            if outside:
                return f"{names[o]} also reads from {names[outside[0]]}, outside the pattern"
            if len(producers) != len(comp.preds[i]):
                return (
                    f"{names[o]} reads from {len(producers)} producer op(s), "
                    f"the pattern expects {len(comp.preds[i])}"
                )
        if comp.succs[i]:
            consumers = _downstream_ops(idx, o, None)
            outside = [c for c in consumers if c not in members]
            if outside:
                n_cons = sum(
                    len(idx.consumers[idx.slot_tensor[s]])
                    for s in idx.output_sids(o)
                    if idx.slot_tensor[s] >= 0
                )
                other = names[outside[0]]
                return f"{names[o]} has {n_cons} consumers ({other} is outside the pattern)"
            if graph_outputs_count:
                outputs = graph.outputs
                for s in idx.output_sids(o):
                    tid = idx.slot_tensor[s]
                    if tid >= 0 and idx.tensor_names[tid] in outputs:
                        return f"output of {names[o]} is a graph output"
    return None


class Found(NamedTuple):
    """A structural match and why it is not exclusive (``reason`` None when it is)."""

    match: Match
    reason: str | None
    op_ids: tuple[int, ...]


def find(graph: Graph, pattern: Pattern, *, graph_outputs_count: bool = True) -> list[Found]:
    """Every structural match of ``pattern`` (injective, edges and ports respected).

    Each comes with the reason it is not exclusive, or None. Matches are ordered by the
    topological positions of their ops (anchor first), so the result is deterministic.
    """
    comp = _compile(pattern)
    idx = graph.index
    ops, names = graph.ops, idx.op_names
    nodes = pattern.nodes
    out: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    pos = graph.positions()
    order, via = comp.order, comp.via
    edges = comp.edges
    n = comp.n

    def extend(k: int, bound: list[int]) -> Iterator[list[int]]:
        if k == n:
            yield bound
            return
        i = order[k]
        s, d, sp, dp, down = via[k - 1]
        if down:
            cands = _downstream_ops(idx, bound[s], sp)
        else:
            cands = _upstream_ops(idx, bound[d], dp)
        node = nodes[i]
        for c in cands:
            if c in bound:
                continue
            if not node.accepts(ops[names[c]]):
                continue
            bound[i] = c
            ok = True
            for es, ed, esp, edp in edges:
                touches = i in (es, ed) and bound[es] >= 0 and bound[ed] >= 0
                if touches and not _edge_holds(idx, bound[es], bound[ed], esp, edp):
                    ok = False
                    break
            if ok:
                yield from extend(k + 1, bound)
            bound[i] = -1

    for a in _anchor_candidates(graph, nodes[comp.anchor]):
        bound = [-1] * n
        bound[comp.anchor] = a
        for full in extend(1, bound):
            tup = tuple(full)
            out.append((tuple(pos[names[o]] for o in tup), tup))
    out.sort(key=lambda x: x[0])
    result: list[Found] = []
    for _, tup in out:
        m = Match(pattern, tuple(names[o] for o in tup))
        result.append(Found(m, _exclusive_reason(graph, comp, tup, graph_outputs_count), tup))
    return result


def match(
    graph: Graph, pattern: Pattern, exclusive: bool = True, *, graph_outputs_count: bool = True
) -> list[Match]:
    """Every match of ``pattern`` in topological order (only the exclusive ones by default)."""
    found = find(graph, pattern, graph_outputs_count=graph_outputs_count)
    return [f.match for f in found if not exclusive or f.reason is None]


def type_node(
    name: str, types: Iterable[str] | str, where: Callable[[Op], bool] | None = None
) -> Node:
    """Shorthand for ``Node(name, types, where)``."""
    return Node(name, _types(types), where)


def ops_of(mapping: Mapping[str, str]) -> tuple[str, ...]:
    """Op names of a match mapping, in insertion order."""
    return tuple(mapping.values())
