"""Activation fusion: a computing op and the activation after it run as one kernel.

A backend computes ``Conv + Relu`` (or Gemm + Sigmoid, MatMul + Gelu, ...) in one kernel, so
there is no quantization point between them: the computing op's output and the activation's
input are overlapped by the activation's output, which becomes the one calibrated scale.

:class:`ActivationFusion` handles single-op activations (``platform.activation_types``);
:class:`CompositeActivationFusion` handles activations written as several ops
(``platform.activation_patterns``): Swish ``x*sigmoid(x)`` in both operand orders, Mish
``x*tanh(softplus(x))``, HardSwish ``x*clip(x+3,0,6)/6`` (and ``x*hardsigmoid(x)``) and GELU
``x*0.5*(1+erf(x/sqrt2))``; every inner slot is overlapped by the last op's output.

PPQ-compatible rule sets (``ppq066_*``) reproduce PPQ 0.6.6: graph outputs do not block the
match (its bug), a platform mismatch is tolerated when the computing output is FP32, and only
Swish and Mish exist.
"""

from __future__ import annotations

import attrs

from ..graph import Graph
from ..patterns import Edge, Found, Node, Pattern, find
from ..platforms import Platform, get_platform
from ..quant import QuantPlan, QuantState
from ._core import FusionResult, PassContext
from .epilogue import attached_ops

__all__ = [
    "ActivationFusion",
    "CompositeActivationFusion",
    "activation_fusion",
    "composite_patterns",
]

FP32 = QuantState.FP32


def _anchor(graph: Graph, platform: Platform) -> Node:
    """The node a fused activation follows: a computing op, or an epilogue folded into one."""
    if not platform.epilogue_types:
        return Node("op", platform.computing_types)
    attached = attached_ops(graph, platform)
    names = graph.index.op_names
    attached_names = frozenset(names[o] for o in attached)
    return Node(
        "op",
        platform.computing_types | platform.epilogue_types,
        lambda op: op.name in attached_names,
    )


def _single_pattern(anchor: Node, acts: frozenset[str], port: int | None) -> Pattern:
    return Pattern("activation", (anchor, Node("act", acts)), (Edge("op", "act", None, port),))


def composite_patterns(platform: Platform, anchor: Node | None = None) -> tuple[Pattern, ...]:
    """The composite-activation patterns a platform enables, in PPQ's order (Swish, Mish).

    ``anchor`` is the node the activation follows (by default: the platform's computing ops).
    """
    comp = anchor if anchor is not None else Node("op", platform.computing_types)
    out: list[Pattern] = []
    names = platform.activation_patterns
    if "swish" in names:
        out.append(
            Pattern(
                "swish",
                (comp, Node("sigmoid", {"Sigmoid"}), Node("mul", {"Mul"})),
                (Edge("op", "sigmoid"), Edge("sigmoid", "mul"), Edge("op", "mul")),
            )
        )
    if "mish" in names:
        out.append(
            Pattern(
                "mish",
                (
                    comp,
                    Node("softplus", {"Softplus"}),
                    Node("tanh", {"Tanh"}),
                    Node("mul", {"Mul"}),
                ),
                (
                    Edge("op", "softplus"),
                    Edge("softplus", "tanh"),
                    Edge("tanh", "mul"),
                    Edge("op", "mul"),
                ),
            )
        )
    if "hardswish" in names:
        out.extend(
            [
                Pattern(  # x * (clip(x + 3, 0, 6) / 6)
                    "hardswish",
                    (
                        comp,
                        Node("add", {"Add"}),
                        Node("clip", {"Clip", "Relu6"}),
                        Node("div", {"Div", "Mul"}),
                        Node("mul", {"Mul"}),
                    ),
                    (
                        Edge("op", "add"),
                        Edge("add", "clip"),
                        Edge("clip", "div"),
                        Edge("div", "mul"),
                        Edge("op", "mul"),
                    ),
                ),
                Pattern(  # (x * clip(x + 3, 0, 6)) / 6
                    "hardswish",
                    (
                        comp,
                        Node("add", {"Add"}),
                        Node("clip", {"Clip"}),
                        Node("mul", {"Mul"}),
                        Node("div", {"Div", "Mul"}),
                    ),
                    (
                        Edge("op", "add"),
                        Edge("add", "clip"),
                        Edge("clip", "mul"),
                        Edge("op", "mul"),
                        Edge("mul", "div"),
                    ),
                ),
                Pattern(  # x * hardsigmoid(x)
                    "hardswish",
                    (comp, Node("hsig", {"HardSigmoid"}), Node("mul", {"Mul"})),
                    (Edge("op", "hsig"), Edge("hsig", "mul"), Edge("op", "mul")),
                ),
            ]
        )
    if "gelu" in names:
        out.extend(
            [
                Pattern(  # (x * (erf(x / sqrt2) + 1)) * 0.5
                    "gelu",
                    (
                        comp,
                        Node("div", {"Div", "Mul"}),
                        Node("erf", {"Erf"}),
                        Node("add", {"Add"}),
                        Node("mul", {"Mul"}),
                        Node("half", {"Mul"}),
                    ),
                    (
                        Edge("op", "div"),
                        Edge("div", "erf"),
                        Edge("erf", "add"),
                        Edge("add", "mul"),
                        Edge("op", "mul"),
                        Edge("mul", "half"),
                    ),
                ),
                Pattern(  # x * ((erf(x / sqrt2) + 1) * 0.5)
                    "gelu",
                    (
                        comp,
                        Node("div", {"Div", "Mul"}),
                        Node("erf", {"Erf"}),
                        Node("add", {"Add"}),
                        Node("half", {"Mul"}),
                        Node("mul", {"Mul"}),
                    ),
                    (
                        Edge("op", "div"),
                        Edge("div", "erf"),
                        Edge("erf", "add"),
                        Edge("add", "half"),
                        Edge("half", "mul"),
                        Edge("op", "mul"),
                    ),
                ),
            ]
        )
    return tuple(out)


def _check_common(
    ctx: PassContext, rule: str, ids: tuple[int, ...], found: Found, compat: bool
) -> bool:
    """Refuse (and return False) unless every op is quantized on the anchor's platform."""
    rec = ctx.rec
    if found.reason is not None:
        rec.refuse(rule, ids, "{}", found.reason)
        return False
    for o in ids:
        if not ctx.quantized(o):
            rec.refuse(rule, ids, "{} is not quantized", ctx.name(o))
            return False
    plat0 = ctx.ev.platform(ids[0])
    for o in ids[1:]:
        if ctx.ev.platform(o) != plat0:
            if compat and rule == "activation" and ctx.state(ctx.out_sid(ids[0], 0)) == FP32:
                continue  # PPQ only refuses when the computing output is not FP32
            rec.refuse(
                rule,
                ids,
                "{} is on platform {}, {} on {} (different platform)",
                ctx.name(ids[0]),
                plat0,
                ctx.name(o),
                ctx.ev.platform(o),
            )
            return False
    return True


def _feeding_slot(ctx: PassContext, src: int, dst: int) -> tuple[int, int] | None:
    """(output slot of ``src``, input slot of ``dst``) of the first edge src -> dst."""
    idx = ctx.idx
    for so in idx.output_sids(src):
        tid = idx.slot_tensor[so]
        if tid < 0:
            continue
        for c in idx.consumers[tid]:
            if idx.slot_op[c] == dst:
                return so, c
    return None


@attrs.frozen
class ActivationFusion:
    """Fuse each computing op with the single-op activation after it (options as fields)."""

    platform: str | Platform

    name = "activation_fusion"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        """Apply the rule; returns the new plan and the decision log."""
        p = get_platform(self.platform)
        ctx = PassContext(graph, plan, p, self.name)
        compat = p.has_quirk("graph_output_fusion")
        if not p.activation_types or not p.computing_types:
            return ctx.rec.result(plan)
        pattern = _single_pattern(_anchor(graph, p), p.activation_types, None if compat else 0)
        idx, rec = ctx.idx, ctx.rec
        for found in find(graph, pattern, graph_outputs_count=not compat):
            c, a = found.op_ids
            ids = (c, a)
            if not _check_common(ctx, "activation", ids, found, compat):
                continue
            # PPQ also counts edges with multiplicity: Conv feeding Add(x, x) is two consumers
            n_down = sum(
                len(idx.consumers[idx.slot_tensor[s]])
                for s in idx.output_sids(c)
                if idx.slot_tensor[s] >= 0
            )
            if n_down != 1:
                rec.refuse("activation", ids, "{} has {} consumers", ctx.name(c), n_down)
                continue
            n_up = 0
            for s in idx.input_sids(a):
                tid = idx.slot_tensor[s]
                prod = idx.producer[tid] if tid >= 0 else -1
                if prod >= 0 and idx.op_types[idx.slot_op[prod]] != "Constant":
                    n_up += 1
            if n_up != 1:
                rec.refuse("activation", ids, "{} reads {} produced tensors", ctx.name(a), n_up)
                continue
            a_out = ctx.out_sid(a, 0)
            if compat:
                c_out, a_in = ctx.out_sid(c, 0), ctx.in_sid(a, 0)
            else:
                edge = _feeding_slot(ctx, c, a)
                assert edge is not None
                c_out, a_in = edge
                fp32 = [o for s, o in ((c_out, c), (a_out, a)) if ctx.state(s) == FP32]
                if fp32:
                    rec.refuse("activation", ids, "the output of {} is FP32", ctx.name(fp32[0]))
                    continue
            why = "{} {} is followed by activation {} {}; the backend runs them as one kernel"
            args = (ctx.idx.op_types[c], ctx.name(c), ctx.idx.op_types[a], ctx.name(a))
            rec.overlap("activation", ids, c_out, a_out, why, *args)
            rec.overlap("activation", ids, a_in, a_out, why, *args)
        return rec.result(plan)


@attrs.frozen
class CompositeActivationFusion:
    """Fuse composite activations (Swish, Mish, HardSwish, GELU) after a computing op."""

    platform: str | Platform

    name = "composite_activation_fusion"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        """Apply every enabled pattern; returns the new plan and the decision log."""
        p = get_platform(self.platform)
        ctx = PassContext(graph, plan, p, self.name)
        compat = p.has_quirk("graph_output_fusion")
        idx, rec = ctx.idx, ctx.rec
        done: set[int] = set()
        for pattern in composite_patterns(p, _anchor(graph, p)):
            rule = pattern.name
            for found in find(graph, pattern, graph_outputs_count=not compat):
                ids = found.op_ids
                if any(o in done for o in ids[1:]):
                    continue  # a longer pattern already took these ops
                if not _check_common(ctx, rule, ids, found, compat):
                    continue
                last = ids[-1]
                root = ctx.out_sid(last, 0)
                if not compat and ctx.state(root) == FP32:
                    rec.refuse(rule, ids, "the output of {} is FP32", ctx.name(last))
                    continue
                why = "{} {} is followed by a {} written as {} ops; it runs as one kernel"
                args = (idx.op_types[ids[0]], ctx.name(ids[0]), rule, len(ids) - 1)
                for s in _inner_slots(ctx, ids, compat):
                    rec.overlap(rule, ids, s, root, why, *args)
                done.update(ids[1:])
        return rec.result(plan)


def _inner_slots(ctx: PassContext, ids: tuple[int, ...], compat: bool) -> list[int]:
    """Slots switched off inside a fused composite activation, in PPQ's linking order.

    The computing op's output 0, then the first input and output 0 of every inner op, then
    every input of the last op. fusekit also switches off the other non-FP32 inputs of inner
    ops (the constants 3, 6, 0.5 of HardSwish and GELU), which a fused kernel never quantizes.
    """
    slots = [ctx.out_sid(ids[0], 0)]
    idx = ctx.idx
    for o in ids[1:-1]:
        ins = list(idx.input_sids(o))
        if compat:
            ins = ins[:1]
        for s in ins:
            if ctx.state(s) != FP32:
                slots.append(s)
        slots.append(ctx.out_sid(o, 0))
    for s in idx.input_sids(ids[-1]):
        if ctx.state(s) != FP32:
            slots.append(s)
    return slots


def activation_fusion(graph: Graph, plan: QuantPlan, options: ActivationFusion) -> FusionResult:
    """Function form of :class:`ActivationFusion`: ``(graph, plan, options) -> result``."""
    return options.run(graph, plan)
