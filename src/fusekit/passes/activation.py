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
from ..patterns import Edge, Node, OpSet, Pattern, find_ids
from ..platforms import Platform
from ..quant import QuantPlan, QuantState
from ._core import FusionPass, FusionResult, PassContext
from .epilogue import attached_ops

__all__ = [
    "ActivationFusion",
    "CompositeActivationFusion",
    "activation_fusion",
    "composite_patterns",
]

FP32 = QuantState.FP32


def _anchor(graph: Graph, platform: Platform) -> Node:
    """The node a fused activation follows: a computing op, or an epilogue folded into one.

    The set of folded ops is an :class:`~fusekit.patterns.OpSet`, which the matcher tests by
    op id instead of looking every candidate op up by name.
    """
    if not platform.epilogue_types:
        return Node("op", platform.computing_types)
    return Node(
        "op",
        platform.computing_types | platform.epilogue_types,
        OpSet(graph, attached_ops(graph, platform)),
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
    ctx: PassContext, rule: str, ids: tuple[int, ...], reason: str | None, compat: bool
) -> bool:
    """Refuse (and return False) unless every op is quantized on the anchor's platform."""
    rec = ctx.rec
    if reason is not None:
        rec.refuse(rule, ids, "{}", reason)
        return False
    dispatch = ctx.ev.dispatch
    for o in ids:
        if dispatch[o] is None:
            rec.refuse(rule, ids, "{} is not quantized", ctx.name(o))
            return False
    plat0 = dispatch[ids[0]]
    for o in ids[1:]:
        if dispatch[o] != plat0:
            if compat and rule == "activation" and ctx.state(ctx.out_sid(ids[0], 0)) == FP32:
                continue  # PPQ only refuses when the computing output is not FP32
            rec.refuse(
                rule,
                ids,
                "{} is on platform {}, {} on {} (different platform)",
                ctx.name(ids[0]),
                plat0,
                ctx.name(o),
                dispatch[o],
            )
            return False
    return True


def _feeding_slot(ctx: PassContext, src: int, dst: int) -> tuple[int, int] | None:
    """(output slot of ``src``, input slot of ``dst``) of the first edge src -> dst."""
    ar = ctx.ar
    st, cons, slot_op = ar.slot_tensor, ar.consumers, ar.slot_op
    first = ar.slot_base[src] + ar.n_in[src]
    for so in range(first, first + ar.n_out[src]):
        tid = st[so]
        if tid < 0:
            continue
        for c in cons[tid]:
            if slot_op[c] == dst:
                return so, c
    return None


@attrs.frozen
class ActivationFusion(FusionPass):
    """Fuse each computing op with the single-op activation after it (options as fields)."""

    platform: str | Platform

    name = "activation_fusion"
    ensures = ("acyclic-sharing",)

    def apply(self, ctx: PassContext) -> FusionResult:
        """Apply the rule; returns the new plan and the decision log."""
        graph, plan, p = ctx.graph, ctx.plan, ctx.platform
        compat = p.has_quirk("graph_output_fusion")
        if not p.activation_types or not p.computing_types:
            return ctx.rec.result(plan)
        pattern = _single_pattern(_anchor(graph, p), p.activation_types, None if compat else 0)
        rec, ar, cfgs = ctx.rec, ctx.ar, ctx.ev.configs
        types, names, base, n_in = ar.op_types, ar.op_names, ar.slot_base, ar.n_in
        st, prod, slot_op, n_uses = ar.slot_tensor, ar.producer, ar.slot_op, ar.n_uses
        why = "{} {} is followed by activation {} {}; the backend runs them as one kernel"
        dispatch = ctx.ev.dispatch
        for ids, reason in find_ids(graph, pattern, graph_outputs_count=not compat):
            c, a = ids
            # the common case (exclusive, both quantized on one platform) without the call
            plat = dispatch[c]
            if (reason is not None or plat is None or dispatch[a] != plat) and not _check_common(
                ctx, "activation", ids, reason, compat
            ):
                continue
            # PPQ also counts edges with multiplicity: Conv feeding Add(x, x) is two consumers
            n_down = n_uses[c]
            if n_down != 1:
                rec.refuse("activation", ids, "{} has {} consumers", names[c], n_down)
                continue
            n_up = 0
            for s in range(base[a], base[a] + n_in[a]):
                tid = st[s]
                pr = prod[tid] if tid >= 0 else -1
                if pr >= 0 and not ar.const_op[slot_op[pr]]:
                    n_up += 1
            if n_up != 1:
                rec.refuse("activation", ids, "{} reads {} produced tensors", names[a], n_up)
                continue
            a_out = base[a] + n_in[a]
            if compat:
                c_out, a_in = base[c] + n_in[c], base[a]
            else:
                edge = _feeding_slot(ctx, c, a)
                assert edge is not None
                c_out, a_in = edge
                if cfgs[c_out].state == FP32 or cfgs[a_out].state == FP32:
                    bad = c if cfgs[c_out].state == FP32 else a
                    rec.refuse("activation", ids, "the output of {} is FP32", names[bad])
                    continue
            args = (types[c], names[c], types[a], names[a])
            rec.overlap("activation", ids, c_out, a_out, why, *args)
            rec.overlap("activation", ids, a_in, a_out, why, *args)
        if p.placement == "node-unit":
            _standalone_inputs_float(ctx)
        return rec.result(plan)


def _standalone_inputs_float(ctx: PassContext) -> None:
    """Node-unit rule sets: an activation not fused into a computing op reads a float input.

    onnxruntime has no int8 Relu or Clip; it removes them in front of a QuantizeLinear whose
    zero point makes them redundant (uint8 with zero point 0 after a ReLU). A point on their
    input would be a Q/DQ pair executed in float, so only their output is quantized.
    """
    rec, ev, ar = ctx.rec, ctx.ev, ctx.ar
    INITIAL = QuantState.INITIAL
    why = (
        "{} {} is not fused into a computing op and has no int8 kernel: only its output is "
        "quantized (the backend removes it before that QuantizeLinear)"
    )
    for a in ar.ops_of_types(ctx.platform.activation_types):
        if ev.dispatch[a] is None or ar.n_in[a] == 0:
            continue
        s = ar.slot_base[a]
        cfg = ev.cfg(s)
        if cfg is not None and cfg.state is INITIAL:
            rec.config(
                "standalone", (a,), s, cfg.with_state(FP32), why, ar.op_types[a], ar.op_names[a]
            )


@attrs.frozen
class CompositeActivationFusion(FusionPass):
    """Fuse composite activations (Swish, Mish, HardSwish, GELU) after a computing op."""

    platform: str | Platform

    name = "composite_activation_fusion"
    ensures = ("acyclic-sharing",)

    def apply(self, ctx: PassContext) -> FusionResult:
        """Apply every enabled pattern; returns the new plan and the decision log."""
        graph, plan, p = ctx.graph, ctx.plan, ctx.platform
        compat = p.has_quirk("graph_output_fusion")
        rec, ar, cfgs, dispatch = ctx.rec, ctx.ar, ctx.ev.configs, ctx.ev.dispatch
        types, names = ar.op_types, ar.op_names
        done: set[int] = set()
        why = "{} {} is followed by a {} written as {} ops; it runs as one kernel"
        for pattern in composite_patterns(p, _anchor(graph, p)):
            rule = pattern.name
            for ids, reason in find_ids(graph, pattern, graph_outputs_count=not compat):
                if done and any(o in done for o in ids[1:]):
                    continue  # a longer pattern already took these ops
                plat = dispatch[ids[0]]
                # the common case (exclusive, all on one platform) without _check_common's call
                common = reason is None and plat is not None
                if not (common and all(dispatch[o] == plat for o in ids[1:])) and (
                    not _check_common(ctx, rule, ids, reason, compat)
                ):
                    continue
                last = ids[-1]
                root = ctx.out_sid(last, 0)
                if not compat and cfgs[root].state == FP32:
                    rec.refuse(rule, ids, "the output of {} is FP32", names[last])
                    continue
                args = (types[ids[0]], names[ids[0]], rule, len(ids) - 1)
                for s in _inner_slots(ctx, ids, compat):
                    rec.overlap(rule, ids, s, root, why, *args)
                done.update(ids[1:])
        return rec.result(plan)


def _inner_slots(ctx: PassContext, ids: tuple[int, ...], compat: bool) -> list[int]:
    """Slots switched off inside a fused composite activation, in PPQ's linking order.

    The computing op's output 0, then the first input and output 0 of every inner op, then
    every input of the last op. fusekit also switches off the other non-FP32 inputs of inner
    ops (the constants 3, 6, 0.5 of HardSwish and GELU), which a fused kernel never quantizes;
    PPQ-compatible rule sets link PPQ's slots whatever their state (FP32 ones included).
    """
    ar, cfgs = ctx.ar, ctx.ev.configs
    base, n_in = ar.slot_base, ar.n_in
    slots = [base[ids[0]] + n_in[ids[0]]]
    for o in ids[1:-1]:
        first = base[o]
        for s in range(first, first + (min(n_in[o], 1) if compat else n_in[o])):
            if compat or cfgs[s].state != FP32:  # PPQ links these whatever their state
                slots.append(s)
        slots.append(first + n_in[o])
    last = ids[-1]
    for s in range(base[last], base[last] + n_in[last]):
        if compat or cfgs[s].state != FP32:
            slots.append(s)
    return slots


def activation_fusion(graph: Graph, plan: QuantPlan, options: ActivationFusion) -> FusionResult:
    """Function form of :class:`ActivationFusion`: ``(graph, plan, options) -> result``."""
    return options.run(graph, plan)
