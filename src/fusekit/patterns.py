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
None); :func:`match` keeps the exclusive ones. Matching starts from the candidates of one
anchor node, the node with the fewest (by the graph's op-type index: the Sigmoid of a Swish,
the Erf of a GELU), and walks producer/consumer edges from there, so chain and diamond patterns
cost O(candidates x pattern size x degree), linear in the graph (PPQ's matcher scans every op
for every pattern node and is quadratic). Edge checks against an op with many readers use a
set of its readers, so a tensor read by thousands of ops does not make matching quadratic.
The matcher reads the graph's plain-list arrays (:meth:`fusekit.graph.Graph.arrays`);
:func:`find_ids` gives the matches as op ids, without building :class:`Match` values.

*Exclusive* follows PPQ: an inner node (one with pattern predecessors) reads only from ops of
the match, from exactly as many distinct producer ops as it has pattern in-edges, and a node
with pattern successors feeds only ops of the match. Unlike PPQ, a graph output counts as an
outside consumer (``graph_outputs_count=False`` restores PPQ's behaviour).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import attrs

from .errors import PatternError
from .graph import Graph, GraphArrays, Op, rule_type

__all__ = [
    "Edge",
    "Found",
    "Match",
    "Node",
    "OpSet",
    "Pattern",
    "PatternError",
    "find",
    "find_ids",
    "match",
]


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
        if self.types is not None and rule_type(op) not in self.types:
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


class _Step(NamedTuple):
    """How the search binds one non-anchor node (see :class:`_Compiled`)."""

    node: int  # the pattern node bound at this step
    other: int  # the already-bound node it is reached from
    port: int | None  # port of the walked edge at ``other``'s end
    down: bool  # True: walk from ``other``'s outputs to consumers; False: to producers
    checks: tuple[tuple[int, int, int | None, int | None], ...]  # edges to verify


class _Compiled:
    """A pattern turned into search plans over node indices, one per anchor node.

    The anchor is chosen per graph (:func:`_pick_anchor`): the node with the fewest candidate
    ops. Every other node is bound by walking one edge from an already-bound node; the
    remaining edges between bound nodes are checked as soon as both ends are bound. The set of
    matches does not depend on the anchor (every edge is walked or checked), only the work does.
    """

    def __init__(self, pattern: Pattern):
        self.pattern = pattern
        names = [n.name for n in pattern.nodes]
        pos = {n: i for i, n in enumerate(names)}
        self.n = len(names)
        self.edges = [(pos[e.src], pos[e.dst], e.src_port, e.dst_port) for e in pattern.edges]
        self.preds = [sorted({s for s, d, _, _ in self.edges if d == i}) for i in range(self.n)]
        self.succs = [sorted({d for s, d, _, _ in self.edges if s == i}) for i in range(self.n)]
        self._plans: dict[int, tuple[_Step, ...]] = {}

    def steps(self, anchor: int) -> tuple[_Step, ...]:
        """The binding steps after ``anchor`` (breadth-first over undirected edges)."""
        plan = self._plans.get(anchor)
        if plan is not None:
            return plan
        order = [anchor]
        while len(order) < self.n:
            for s, d, _, _ in self.edges:
                if s in order and d not in order:
                    order.append(d)
                elif d in order and s not in order:
                    order.append(s)
        steps: list[_Step] = []
        for k in range(1, self.n):
            i = order[k]
            bound = set(order[:k])
            via = next(
                e
                for e in self.edges
                if (e[1] == i and e[0] in bound) or (e[0] == i and e[1] in bound)
            )
            s, d, sp, dp = via
            down = d == i
            # walking the edge proves it, unless the far end's port is constrained too
            implied = (dp is None) if down else (sp is None)
            checks = tuple(
                e
                for e in self.edges
                if (e[0] == i and e[1] in bound) or (e[1] == i and e[0] in bound)
                if not (e is via and implied)
            )
            steps.append(_Step(i, s if down else d, sp if down else dp, down, checks))
        plan = self._plans[anchor] = tuple(steps)
        return plan


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


class OpSet:
    """A :attr:`Node.where` predicate: the op is one of a fixed set of ops of a graph.

    ``where=lambda op: op.name in names`` makes the matcher fetch every candidate's
    :class:`~fusekit.graph.Op` from the graph's name map (about a microsecond each, for tens of
    thousands of candidates). The matcher recognises an ``OpSet`` built for the graph it
    searches and tests the integer op id instead; called with an op, from any graph, it tests
    the op's name, so the predicate means the same thing either way.
    """

    __slots__ = ("_names", "arrays", "ids")

    def __init__(self, graph: Graph, op_ids: Iterable[int]):
        self.arrays: GraphArrays = graph.arrays()
        self.ids: frozenset[int] = frozenset(op_ids)
        self._names: frozenset[str] | None = None

    def __call__(self, op: Op) -> bool:
        names = self._names
        if names is None:
            op_names = self.arrays.op_names
            names = self._names = frozenset(op_names[o] for o in self.ids)
        return op.name in names


def _candidates(ar: GraphArrays, node: Node, ids: frozenset[int] | None) -> list[int]:
    """The ops a node accepts by type and id set, in topological order (``where`` not applied)."""
    if node.types is not None:
        lists = [ar.by_type.get(t, ()) for t in sorted(node.types)]
        lists = [lst for lst in lists if lst]
        if ids is not None and len(ids) < sum(map(len, lists)):
            types = node.types
            op_types = ar.op_types
            return sorted((o for o in ids if op_types[o] in types), key=ar.pos.__getitem__)
        if len(lists) == 1:
            cands = list(lists[0])
        else:
            cands = sorted((o for lst in lists for o in lst), key=ar.pos.__getitem__)
    elif ids is not None:
        return sorted(ids, key=ar.pos.__getitem__)
    else:
        cands = list(ar.order)
    if ids is not None:
        cands = [o for o in cands if o in ids]
    return cands


def _n_candidates(ar: GraphArrays, node: Node, ids: frozenset[int] | None) -> int:
    n = len(ar.order)
    if node.types is not None:
        n = sum(len(ar.by_type.get(t, ())) for t in node.types)
    return n if ids is None else min(n, len(ids))


def _search(graph: Graph, pattern: Pattern) -> tuple[list[tuple[int, ...]], _Compiled]:
    """Every structural match of ``pattern`` as a tuple of op ids in node order, sorted by
    the topological positions of those ops."""
    comp = _compile(pattern)
    ar = graph.arrays()
    nodes = pattern.nodes
    n = comp.n
    ids_of: list[frozenset[int] | None] = []
    pred_of: list[Callable[[Op], bool] | None] = []
    for node in nodes:
        w = node.where
        if isinstance(w, OpSet) and w.arrays is ar:
            ids_of.append(w.ids)
            pred_of.append(None)
        else:
            ids_of.append(None)
            pred_of.append(w)
    counts = [_n_candidates(ar, node, ids_of[i]) for i, node in enumerate(nodes)]
    anchor = counts.index(min(counts))
    steps = comp.steps(anchor)
    op_types, op_names, ops = ar.op_types, ar.op_names, graph.ops
    base, n_in, n_out = ar.slot_base, ar.n_in, ar.n_out
    st, cons, prod, slot_op = ar.slot_tensor, ar.consumers, ar.producer, ar.slot_op

    n_uses = ar.n_uses
    # (op, output port) -> (reading ops, (reading op, input port) pairs), for ops with many
    # readers: a tensor read by thousands of ops (a graph input, a shared mask) would make
    # every edge check scan all its readers, which is quadratic; sets keep it linear
    fed: dict[tuple[int, int | None], tuple[frozenset[int], frozenset[tuple[int, int]]]] = {}

    def readers(a: int, sp: int | None) -> tuple[frozenset[int], frozenset[tuple[int, int]]]:
        first = base[a] + n_in[a]
        outs = range(first, first + n_out[a]) if sp is None else range(first + sp, first + sp + 1)
        slots = [
            c for sid in outs if sid < first + n_out[a] and st[sid] >= 0 for c in cons[st[sid]]
        ]
        return (
            frozenset(slot_op[c] for c in slots),
            frozenset((slot_op[c], c - base[slot_op[c]]) for c in slots),
        )

    def holds(a: int, b: int, sp: int | None, dp: int | None) -> bool:
        """Does some output (port ``sp``) of op ``a`` feed some input (port ``dp``) of ``b``?"""
        if n_uses[a] > 8:
            hit = fed.get((a, sp))
            if hit is None:
                hit = fed[(a, sp)] = readers(a, sp)
            return b in hit[0] if dp is None else (b, dp) in hit[1]
        first = base[a] + n_in[a]
        if sp is None:
            outs: Iterable[int] = range(first, first + n_out[a])
        elif sp >= n_out[a]:
            return False
        else:
            outs = (first + sp,)
        b_base = base[b]
        for sid in outs:
            tid = st[sid]
            if tid >= 0:
                for c in cons[tid]:
                    if slot_op[c] == b and (dp is None or c - b_base == dp):
                        return True
        return False

    def neighbours(o: int, port: int | None, down: bool) -> list[int]:
        """Distinct consumer ops of ``o``'s outputs, or producer ops of its inputs, in order."""
        found: list[int] = []
        if down:
            first, count = base[o] + n_in[o], n_out[o]
        else:
            first, count = base[o], n_in[o]
        if port is not None:
            if port >= count:
                return found
            first, count = first + port, 1
        for sid in range(first, first + count):
            tid = st[sid]
            if tid < 0:
                continue
            if down:
                found.extend(slot_op[c] for c in cons[tid])
            elif prod[tid] >= 0:
                found.append(slot_op[prod[tid]])
        if len(found) > 1:
            found = list(dict.fromkeys(found))  # linear even for a tensor read by thousands
        return found

    out: list[tuple[int, ...]] = []
    bound = [-1] * n
    last = n - 1
    tests = [(nodes[st_.node].types, ids_of[st_.node], pred_of[st_.node]) for st_ in steps]

    def extend(k: int) -> None:
        i, other, port, down, checks = steps[k - 1]
        types, ids, pred = tests[k - 1]
        for c in neighbours(bound[other], port, down):
            if c in bound:
                continue
            if types is not None and op_types[c] not in types:
                continue
            if ids is not None and c not in ids:
                continue
            if pred is not None and not pred(ops[op_names[c]]):
                continue
            ok = True
            for es, ed, esp, edp in checks:
                if not holds(c if es == i else bound[es], c if ed == i else bound[ed], esp, edp):
                    ok = False
                    break
            if not ok:
                continue
            bound[i] = c
            if k == last:
                out.append(tuple(bound))
            else:
                extend(k + 1)
        bound[i] = -1

    anchor_pred = pred_of[anchor]
    for a in _candidates(ar, nodes[anchor], ids_of[anchor]):
        if anchor_pred is not None and not anchor_pred(ops[op_names[a]]):
            continue
        bound[anchor] = a
        if n == 1:
            out.append((a,))
        else:
            extend(1)
    out.sort()  # op ids are topological positions
    return out, comp


def _exclusivity_check(
    graph: Graph, comp: _Compiled, graph_outputs_count: bool
) -> Callable[[tuple[int, ...]], str | None]:
    """A function telling why a structural match is not exclusive (None if it is).

    Built once per search with the graph's arrays bound to locals: passes check tens of
    thousands of matches, and re-reading a dozen attributes per match cost more than the check.
    """
    ar = graph.arrays()
    names, n_uses, is_output = ar.op_names, ar.n_uses, ar.is_output
    base, n_in, n_out = ar.slot_base, ar.n_in, ar.n_out
    st, cons, prod, slot_op = ar.slot_tensor, ar.consumers, ar.producer, ar.slot_op
    const_op = ar.const_op
    # (node index, number of pattern predecessors, has pattern successors) per node
    shape = [(i, len(comp.preds[i]), bool(comp.succs[i])) for i in range(comp.n)]

    def reason(bound: tuple[int, ...]) -> str | None:
        for i, n_preds, has_succs in shape:
            o = bound[i]
            if n_preds:
                # distinct producer ops of o's inputs; a Constant op is a constant, not a producer
                producers: list[int] = []
                for sid in range(base[o], base[o] + n_in[o]):
                    tid = st[sid]
                    if tid >= 0 and prod[tid] >= 0:
                        p = slot_op[prod[tid]]
                        if not const_op[p] and p not in producers:
                            producers.append(p)
                for p in producers:
                    if p not in bound:
                        return f"{names[o]} also reads from {names[p]}, outside the pattern"
                if len(producers) != n_preds:
                    return (
                        f"{names[o]} reads from {len(producers)} producer op(s), "
                        f"the pattern expects {n_preds}"
                    )
            if has_succs:
                first = base[o] + n_in[o]
                for sid in range(first, first + n_out[o]):
                    tid = st[sid]
                    if tid < 0:
                        continue
                    for c in cons[tid]:
                        if slot_op[c] not in bound:
                            other = names[slot_op[c]]
                            return (
                                f"{names[o]} has {n_uses[o]} consumers "
                                f"({other} is outside the pattern)"
                            )
                if graph_outputs_count:
                    for sid in range(first, first + n_out[o]):
                        tid = st[sid]
                        if tid >= 0 and is_output[tid]:
                            return f"output of {names[o]} is a graph output"
        return None

    return reason


class Found(NamedTuple):
    """A structural match and why it is not exclusive (``reason`` None when it is)."""

    match: Match
    reason: str | None
    op_ids: tuple[int, ...]


def find_ids(
    graph: Graph, pattern: Pattern, *, graph_outputs_count: bool = True
) -> list[tuple[tuple[int, ...], str | None]]:
    """:func:`find` as ``(op ids, reason)`` pairs, without building :class:`Match` objects.

    What the fusion passes use: they work on op ids and a 100k-op graph has tens of thousands
    of matches, whose name tuples nobody reads.
    """
    found, comp = _search(graph, pattern)
    reason = _exclusivity_check(graph, comp, graph_outputs_count)
    return [(tup, reason(tup)) for tup in found]


def find(graph: Graph, pattern: Pattern, *, graph_outputs_count: bool = True) -> list[Found]:
    """Every structural match of ``pattern`` (injective, edges and ports respected).

    Each comes with the reason it is not exclusive, or None. Matches are ordered by the
    topological positions of their ops (in the pattern's node order), so the result is
    deterministic. The cost is linear in the graph: the search starts from the node with the
    fewest candidate ops (by the graph's op-type index) and walks edges from there.
    """
    names = graph.arrays().op_names
    return [
        Found(Match(pattern, tuple(names[o] for o in tup)), reason, tup)
        for tup, reason in find_ids(graph, pattern, graph_outputs_count=graph_outputs_count)
    ]


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
