"""The laws a fused quantization plan must obey, checked on one concrete graph and plan.

These are the postconditions of fusekit's passes, stated on the *result* so that they can be
checked on any plan, however it was made (by the default pipeline, by a user's own passes, or read
from a plan file a CI job wants to gate). :func:`check` returns every broken law as a
:class:`Violation`; an empty tuple means the plan is sound. No Hypothesis needed: the property
tests (and :mod:`fusekit.testing`) call the same functions on random graphs.

The four laws:

* **passive** -- a passive op (``platform.passive_types``) whose fusion applies (it is quantized,
  its first input is produced by an op on the same platform, its precondition such as
  ``pad_constant_zero`` holds, its first input is not FP32) moves data without rescaling, so every
  non-FP32 output slot shares the group (and therefore the scale) of its first input slot.
* **activation** -- a computing op's output slot (or that of an epilogue op folded into one: a
  bias Add, a BatchNorm) is OVERLAPPED only if it is fused into what follows: either its tensor
  has exactly one consumer slot, is not a graph output, and that consumer is an activation of the
  platform's list or an epilogue folded into it; or the op starts an exclusive
  composite-activation match (Swish, Mish, HardSwish, GELU) that the platform enables.
* **no dead quantization** -- every edge between two quantized ops is quantized somewhere: for each
  OVERLAPPED input slot ``s`` reading tensor ``t`` written by output slot ``p`` of a quantized op,
  either ``t`` is quantized upstream (``p`` is active or pending, or ``p`` was overlapped by passive
  fusion and the passive op's own first input is quantized upstream) and ``s`` shares ``p``'s
  group, or the edge is internal to one fusion (``t`` is not a graph output, and every consumer
  slot of ``t`` and every consumer op's output 0 are in ``s``'s group, so the tensor never leaves
  the fused kernel). And every OVERLAPPED slot's chain ends in a root that is active or pending
  (ACTIVATED, PASSIVE, INITIAL, PASSIVE_INIT, BAKED or PASSIVE_BAKED), never in an FP32 or
  switched-off root. FP32 slots are never "dead": FP32 is a deliberate choice (a socket, a user).
* **acyclic sharing** -- every link chain ends in a root.

PPQ 0.6.6 breaks the activation and no-dead-quantization laws on purpose in the ``ppq066_*`` rule
sets (graph outputs fused away, fan-out edges overlapped by alignment); :func:`check` reports
those violations too, which is how a user sees what PPQ's behaviour costs on their model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from .errors import UnknownLaw
from .graph import Graph, Slot, rule_type
from .patterns import Node, find
from .platforms import Platform, get_platform
from .quant import QuantPlan, QuantState, check_plan_graph

__all__ = [
    "LAWS",
    "PENDING_OR_ACTIVE",
    "Violation",
    "activation_law",
    "acyclic_sharing",
    "check",
    "no_dead_quantization",
    "passive_law",
]

#: States in which a slot quantizes its tensor now or will after calibration / derivation.
PENDING_OR_ACTIVE = frozenset(
    {
        QuantState.ACTIVATED,
        QuantState.PASSIVE,
        QuantState.INITIAL,
        QuantState.PASSIVE_INIT,
        QuantState.BAKED,
        QuantState.PASSIVE_BAKED,
    }
)


@attrs.frozen
class Violation:
    """One broken law: which law, the slot it is about (None for the whole plan), and why."""

    law: str
    slot: Slot | None
    message: str

    def __str__(self) -> str:
        where = f" at {self.slot}" if self.slot is not None else ""
        return f"[{self.law}]{where}: {self.message}"


# --------------------------------------------------------------------------------------------
# helpers


def _links_ok(plan: QuantPlan) -> bool:
    """True if no link chain loops (the other laws follow chains and need this first)."""
    return not acyclic_sharing(plan)


def _quantized_slots(plan: QuantPlan, op: str, side: str, n: int) -> list[Slot]:
    return [s for s in (Slot(op, side, i) for i in range(n)) if plan.get(s) is not None]


def _producing_op(graph: Graph, tensor: str) -> str | None:
    p = graph.producer(tensor) if tensor else None
    return p.op if p is not None else None


# --------------------------------------------------------------------------------------------
# the laws


def acyclic_sharing(plan: QuantPlan) -> tuple[Violation, ...]:
    """Every slot's link chain ends in a root (no slot is, even indirectly, its own master)."""
    return tuple(
        Violation("acyclic-sharing", loop[0], "link chain loops: " + " -> ".join(map(str, loop)))
        for loop in plan.sharing_cycles()
    )


def _passive_applies(graph: Graph, plan: QuantPlan, p: Platform, op_name: str) -> bool:
    """Do passive fusion's preconditions hold for ``op_name`` (so its law applies)?"""
    from .passes.passive import PASSIVE_CONDITIONS

    op = graph.ops[op_name]
    if not op.inputs or not op.inputs[0] or not plan.is_quantized(op_name):
        return False
    src = _producing_op(graph, op.inputs[0])
    if src is None or plan.platform_of(src) != plan.platform_of(op_name):
        return False
    # an op reading only constants folds into a constant: passive fusion treats its output as
    # a constant input (no producer to share a scale with), and so does the law
    if graph.arrays().const_op[graph.index.op_id[src]]:
        return False
    cond = p.passive_conditions.get(rule_type(op))
    if cond is not None:
        check_fn = PASSIVE_CONDITIONS.get(cond)
        if check_fn is not None and check_fn(graph, op) is not None:
            return False
    return plan[Slot(op_name, "in", 0)].state != QuantState.FP32


def passive_law(graph: Graph, plan: QuantPlan, platform: Platform | str) -> tuple[Violation, ...]:
    """Outputs of each fusable passive op share the group and scale of its first input."""
    p = get_platform(platform)
    out: list[Violation] = []
    if not _links_ok(plan):
        return ()
    for op in graph:
        if rule_type(op) not in p.passive_types or not _passive_applies(graph, plan, p, op.name):
            continue
        first = Slot(op.name, "in", 0)
        root = plan.root(first)
        for s in _quantized_slots(plan, op.name, "out", len(op.outputs)):
            if plan[s].state == QuantState.FP32:
                continue
            r = plan.root(s)
            if r != root:
                out.append(
                    Violation(
                        "passive",
                        s,
                        f"{op.op_type} {op.name} only moves data, but its output uses the scale of "
                        f"{r} while its first input uses {root}",
                    )
                )
    return tuple(out)


def _anchors(graph: Graph, p: Platform) -> frozenset[str]:
    """Computing ops, plus the epilogue ops (bias Add, BatchNorm) structurally folded into one."""
    from .passes.epilogue import attached_ops

    names = graph.index.op_names
    if not p.epilogue_types:
        return frozenset(op.name for op in graph if rule_type(op) in p.computing_types)
    return frozenset(names[o] for o in attached_ops(graph, p))


def _composite_heads(graph: Graph, p: Platform, anchors: frozenset[str]) -> frozenset[str]:
    """Anchor ops that start an exclusive composite-activation match the platform enables."""
    from .passes.activation import composite_patterns

    anchor = Node("op", p.computing_types | p.epilogue_types, lambda op: op.name in anchors)
    heads: set[str] = set()
    for pattern in composite_patterns(p, anchor):
        for found in find(graph, pattern):
            if found.reason is None:
                heads.add(found.match.ops[0])
    return frozenset(heads)


def activation_law(
    graph: Graph, plan: QuantPlan, platform: Platform | str
) -> tuple[Violation, ...]:
    """A computing op's output is OVERLAPPED only when an activation is fused into it."""
    p = get_platform(platform)
    out: list[Violation] = []
    heads: frozenset[str] | None = None
    outputs = frozenset(graph.outputs)
    anchors = _anchors(graph, p)
    for op in graph:
        if op.name not in anchors or not plan.is_quantized(op.name):
            continue
        for s in _quantized_slots(plan, op.name, "out", len(op.outputs)):
            if plan[s].state != QuantState.OVERLAPPED:
                continue
            t = op.outputs[s.index]
            consumers = graph.consumers(t)
            single = (
                len(consumers) == 1
                and t not in outputs
                and (
                    rule_type(graph.ops[consumers[0].op]) in p.activation_types
                    or (  # an epilogue (bias Add, BatchNorm) folded into this op
                        consumers[0].op in anchors
                        and rule_type(graph.ops[consumers[0].op]) not in p.computing_types
                    )
                )
            )
            if single:
                continue
            if heads is None:
                heads = _composite_heads(graph, p, anchors)
            if op.name in heads:
                continue
            why = (
                "it is a graph output"
                if t in outputs
                else f"it has {len(consumers)} consumer slot(s)"
                if len(consumers) != 1
                else f"its consumer {consumers[0].op} is not an activation of {p.name}"
            )
            out.append(
                Violation(
                    "activation",
                    s,
                    f"the output of {op.op_type} {op.name} is switched off (OVERLAPPED) but no "
                    f"activation is fused into it: {why}",
                )
            )
    return tuple(out)


def no_dead_quantization(
    graph: Graph, plan: QuantPlan, platform: Platform | str
) -> tuple[Violation, ...]:
    """No edge between quantized ops is left unquantized; no chain ends in a dead root."""
    p = get_platform(platform)
    if not _links_ok(plan):
        return ()
    out: list[Violation] = []
    outputs = frozenset(graph.outputs)
    memo: dict[str, bool] = {}

    def quantized_at(slot: Slot, t: str) -> bool:
        """Does ``slot`` read ``t`` through an active quantizer on ``t`` itself? (A passive
        op whose producer leaves ``t`` float quantizes it at its own input; its output then
        carries that quantized value.)"""
        root = plan.root(slot)
        return plan[root].state in PENDING_OR_ACTIVE and graph.tensor_of(root) == t

    def upstream(t: str) -> bool:
        """Is tensor ``t`` quantized where it is produced (directly or through passive ops)?"""
        if t in memo:
            return memo[t]
        memo[t] = False  # the graph is acyclic; this only guards against malformed input
        prod = graph.producer(t)
        ok = False
        if prod is not None and plan.is_quantized(prod.op):
            st = plan[prod].state
            if st in PENDING_OR_ACTIVE:
                ok = True
            elif st == QuantState.OVERLAPPED:
                pop = graph.ops[prod.op]
                first = Slot(prod.op, "in", 0)
                ok = (
                    rule_type(pop) in p.passive_types
                    and bool(pop.inputs)
                    and bool(pop.inputs[0])
                    and plan.get(first) is not None
                    and plan.root(first) == plan.root(prod)
                    and (upstream(pop.inputs[0]) or quantized_at(first, pop.inputs[0]))
                )
        memo[t] = ok
        return ok

    for op in graph:
        if not plan.is_quantized(op.name):
            continue
        for s in _quantized_slots(plan, op.name, "in", len(op.inputs)):
            if plan[s].state != QuantState.OVERLAPPED:
                continue
            t = op.inputs[s.index]
            prod = graph.producer(t) if t else None
            if prod is None or not plan.is_quantized(prod.op):
                continue
            root = plan.root(s)
            if upstream(t) and plan.root(prod) == root:
                continue
            consumers = graph.consumers(t)
            internal = t not in outputs and all(
                plan.get(c) is not None
                and plan.root(c) == root
                and plan.get(Slot(c.op, "out", 0)) is not None
                and plan.root(Slot(c.op, "out", 0)) == root
                for c in consumers
            )
            if internal:
                continue
            out.append(
                Violation(
                    "no-dead-quantization",
                    s,
                    f"{op.name} reads {t!r} (written by {prod}) through a switched-off slot whose "
                    f"scale comes from {root}, which does not quantize that tensor",
                )
            )
    for s in plan.slots():
        if plan[s].state != QuantState.OVERLAPPED:
            continue
        root = plan.root(s)
        st = plan[root].state
        if st not in PENDING_OR_ACTIVE:
            out.append(
                Violation(
                    "no-dead-quantization",
                    s,
                    f"the link chain ends in {root}, which is {st.name}: nothing quantizes it",
                )
            )
    return tuple(out)


#: The laws :func:`check` runs, by name.
LAWS: dict[str, Callable[[Graph, QuantPlan, Platform], tuple[Violation, ...]]] = {
    "acyclic-sharing": lambda g, plan, p: acyclic_sharing(plan),
    "passive": passive_law,
    "activation": activation_law,
    "no-dead-quantization": no_dead_quantization,
}


def check(
    graph: Graph,
    plan: QuantPlan,
    platform: Platform | str,
    laws: Iterable[str] | None = None,
) -> tuple[Violation, ...]:
    """Every violation of the plan laws (all four, or the ones named in ``laws``).

    ``platform`` is the rule set whose op-type lists (passive, computing, activation types) give
    the laws their meaning. The plan must belong to ``graph``.
    """
    p = get_platform(platform)
    check_plan_graph(plan, graph, "laws.check")
    names = tuple(LAWS) if laws is None else tuple(laws)
    out: list[Violation] = []
    for name in names:
        fn = LAWS.get(name)
        if fn is None:
            raise UnknownLaw(name, tuple(LAWS))
        out.extend(fn(graph, plan, p))
    return tuple(out)
