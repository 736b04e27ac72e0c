"""Activation fusion: a computing op and the activation after it run as one kernel.

A backend computes ``Conv + Relu`` (or Gemm + Sigmoid, MatMul + Gelu, ...) in one kernel, so
there is no quantization point between them: the computing op's output and the activation's
input are overlapped by the activation's output, which becomes the one calibrated scale.

:class:`ActivationFusion` handles single-op activations (``platform.activation_types``);
:class:`CompositeActivationFusion` handles activations written as several ops
(``platform.activation_patterns``): Swish ``x*sigmoid(x)`` in both operand orders, Mish
``x*tanh(softplus(x))``, HardSwish ``x*clip(x+3,0,6)/6`` (and ``x*hardsigmoid(x)``) and GELU
``x*0.5*(1+erf(x/sqrt2))``; every inner slot is overlapped by the last op's output. Those rules
are the registered values of :mod:`fusekit.composites`: a match whose constants or operands
are not the activation's (``x*clip(x+5,-1,7)/8``) is refused with the reason.

PPQ-compatible rule sets (``ppq066_*``) reproduce PPQ 0.6.6: graph outputs do not block the
match (its bug), a platform mismatch is tolerated when the computing output is FP32, only
Swish and Mish exist, and composite matches are not checked beyond their op types and edges.
"""

from __future__ import annotations

import attrs

from ..composites import COMPOSITES, CompositeRule, Operands
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
    """The composite-activation patterns a platform enables, in the registry's order.

    Derived from :data:`fusekit.composites.COMPOSITES` (Swish, Mish, HardSwish, GELU; PPQ's
    Swish before Mish). These are the shapes only: a match is fused when its rule's check
    passes too (see :class:`CompositeActivationFusion`). ``anchor`` is the node the activation
    follows (by default: the platform's computing ops).
    """
    comp = anchor if anchor is not None else Node("op", platform.computing_types)
    return tuple(pattern for rule in _enabled(platform) for pattern in rule.patterns(comp))


def _enabled(platform: Platform) -> tuple[CompositeRule, ...]:
    names = platform.activation_patterns
    return tuple(r for name, r in COMPOSITES.items() if name in names)


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
    """Fuse composite activations (Swish, Mish, HardSwish, GELU) after a computing op.

    The rules are the registered values of :data:`fusekit.composites.COMPOSITES`: a
    structural match is fused only when its form's check passes (the constants are
    HardSwish's or GELU's, the operands are the same ``x``); otherwise the check's reason is
    logged as a refusal. Rule sets with the ``composite_unchecked`` quirk skip the checks.
    """

    platform: str | Platform

    name = "composite_activation_fusion"
    ensures = ("acyclic-sharing",)

    def apply(self, ctx: PassContext) -> FusionResult:
        """Apply every enabled rule; returns the new plan and the decision log."""
        graph, plan, p = ctx.graph, ctx.plan, ctx.platform
        compat = p.has_quirk("graph_output_fusion")
        rec, ar, cfgs, dispatch = ctx.rec, ctx.ar, ctx.ev.configs, ctx.ev.dispatch
        types, names = ar.op_types, ar.op_names
        operands = None if p.has_quirk("composite_unchecked") else Operands(graph)
        done: set[int] = set()
        why = "{} {} is followed by a {} written as {} ops; it runs as one kernel"
        anchor = _anchor(graph, p) if p.activation_patterns else None
        for rule in _enabled(p):
            assert anchor is not None
            name = rule.name
            for form in rule.forms:
                pattern = form.pattern(name, anchor)
                for ids, reason in find_ids(graph, pattern, graph_outputs_count=not compat):
                    if done and any(o in done for o in ids[1:]):
                        continue  # a longer pattern already took these ops
                    plat = dispatch[ids[0]]
                    # the common case (exclusive, all on one platform) without the call
                    common = reason is None and plat is not None
                    if not (common and all(dispatch[o] == plat for o in ids[1:])) and (
                        not _check_common(ctx, name, ids, reason, compat)
                    ):
                        continue
                    if operands is not None:
                        wrong = form.check(operands, ids)
                        if wrong is not None:
                            rec.refuse(name, ids, "not a {} ({}): {}", name, form.formula, wrong)
                            continue
                    last = ids[-1]
                    root = ctx.out_sid(last, 0)
                    if not compat and cfgs[root].state == FP32:
                        rec.refuse(name, ids, "the output of {} is FP32", names[last])
                        continue
                    args = (types[ids[0]], names[ids[0]], name, len(ids) - 1)
                    for s in rule.slots(ar, cfgs, ids, compat):
                        rec.overlap(name, ids, s, root, why, *args)
                    done.update(ids[1:])
        return rec.result(plan)


def activation_fusion(graph: Graph, plan: QuantPlan, options: ActivationFusion) -> FusionResult:
    """Function form of :class:`ActivationFusion`: ``(graph, plan, options) -> result``."""
    return options.run(graph, plan)
