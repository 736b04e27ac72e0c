"""Passive fusion: ops that only move data keep their input's scale.

``MaxPool``, ``Reshape``, ``Transpose``, ``Slice``, ``Split``... never rescale: the backend
passes the quantized data through. So every output of such an op is overlapped by the op's
first input (all outputs share the first input's scale; a Split's outputs share one scale).
With a ``"node-unit"`` rule set the outputs follow the input's scale instead of being
overlapped: they keep a Q/DQ pair with the same parameters, which is what onnxruntime needs
to see (DQ -> op -> Q) before it drops both and moves the integers through the op.

Skipped, with a reason, when the first input has no producer (a graph input or constant: its
scale is calibrated where it is consumed), when the producer is on another platform, and when
a precondition the maths needs does not hold (``Pad`` only commutes with quantization in
constant mode with value 0). PPQ-compatible rule sets keep PPQ 0.6.6's list, in which a missing
comma fuses ``'Dropout' 'Slice'`` into one name, so Slice and Dropout are never passive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
import numpy as np

from ..graph import Graph, Op
from ..platforms import Platform
from ..quant import QuantPlan, QuantState
from ._core import FusionPass, FusionResult, PassContext

__all__ = ["PASSIVE_CONDITIONS", "PassiveFusion", "passive_fusion"]


def _pad_constant_zero(graph: Graph, op: Op) -> str | None:
    mode = op.attributes.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    if mode != "constant":
        return f"{op.name} pads in {mode!r} mode"
    value = op.attributes.get("value")
    if len(op.inputs) > 2 and op.inputs[2]:
        t = op.inputs[2]
        init = graph.initializers.get(t)
        if init is None:
            return f"the pad value of {op.name} is computed at run time"
        value = init.array()
    if value is not None and np.any(np.asarray(value) != 0):
        return f"{op.name} pads with a non-zero constant"
    return None


#: Named preconditions a rule set can attach to a passive op type. Each returns None when the
#: op may share its input's scale, or the reason it may not. Its keys are the names
#: :data:`fusekit.platforms.PASSIVE_CONDITIONS` lets a :class:`~fusekit.platforms.Platform`
#: use, so every name a rule set gives has a check here.
PASSIVE_CONDITIONS: dict[str, Callable[[Graph, Op], str | None]] = {
    "pad_constant_zero": _pad_constant_zero,
}


@attrs.frozen
class PassiveFusion(FusionPass):
    """Overlap every output of each passive op by its first input."""

    platform: str | Platform

    name = "passive_fusion"
    ensures = ("acyclic-sharing",)

    def apply(self, ctx: PassContext) -> FusionResult:
        """Apply the rule; returns the new plan and the decision log."""
        graph, plan, p = ctx.graph, ctx.plan, ctx.platform
        rec, ev, ar = ctx.rec, ctx.ev, ctx.ar
        compat = p.has_quirk("graph_output_fusion")
        names, types = ar.op_names, ar.op_types
        todo = ar.ops_of_types(p.passive_types)
        conditions = dict(p.passive_conditions)
        fp32 = QuantState.FP32
        dispatch, cfgs = ev.dispatch, ev.configs
        # node-unit rule sets (onnxruntime) keep a point after the passive op: the backend
        # runs the op on integers only when it sees DequantizeLinear -> op -> QuantizeLinear
        node_unit = p.placement == "node-unit"
        outside = _outside_int8(ar, todo, dispatch, cfgs) if node_unit else set()
        for o in todo:
            ids = (o,)
            if ar.n_in[o] == 0:
                continue
            if o in outside:
                for sid in range(ar.slot_base[o], ar.slot_base[o] + ar.n_in[o] + ar.n_out[o]):
                    cfg = cfgs[sid]
                    if cfg is not None and cfg.state is not fp32:
                        rec.config(
                            "passive",
                            ids,
                            sid,
                            cfg.with_state(fp32),
                            "{} {} only moves data between float values (its producer and "
                            "its readers run in float): a Q/DQ there would be a round trip "
                            "executed in float",
                            types[o],
                            names[o],
                        )
                continue
            s_in = ar.slot_base[o]
            tid = ar.slot_tensor[s_in]
            prod = ar.producer[tid] if tid >= 0 else -1
            # node units: the op's own input slot quantizes a graph input or a float producer's
            # output, and the output follows it (the backend still sees DQ -> op -> Q)
            own_input = node_unit and tid >= 0 and not ar.is_const[tid]
            if (prod < 0 and not own_input) or (prod >= 0 and ar.const_op[ar.slot_op[prod]]):
                rec.refuse(
                    "passive",
                    ids,
                    "the first input of {} is a graph input or constant",
                    names[o],
                )
                continue
            src = ar.slot_op[prod] if prod >= 0 else o
            if dispatch[o] is None:
                rec.refuse("passive", ids, "{} is not quantized", names[o])
                continue
            if dispatch[o] != dispatch[src] and not (own_input and dispatch[src] is None):
                rec.refuse(
                    "passive",
                    ids,
                    "{} is on platform {}, its producer {} on {} (different platform)",
                    names[o],
                    dispatch[o],
                    names[src],
                    dispatch[src] or "FP32",
                )
                continue
            cond = conditions.get(types[o])
            if cond is not None:
                # Platform validates the name: a missing check is a bug, never "no condition"
                why = PASSIVE_CONDITIONS[cond](graph, graph.ops[names[o]])
                if why is not None:
                    rec.refuse("passive", ids, "{}", why)
                    continue
            if not compat and cfgs[s_in].state == fp32:
                rec.refuse("passive", ids, "the first input of {} is FP32", names[o])
                continue
            first = s_in + ar.n_in[o]
            for s_out in range(first, first + ar.n_out[o]):
                if not compat and cfgs[s_out].state == fp32:
                    continue
                if node_unit:
                    rec.follow(
                        "passive",
                        ids,
                        s_out,
                        s_in,
                        "{} {} only moves data: its output keeps its first input's scale, "
                        "with its own Q/DQ so that the backend matches DQ -> {} -> Q and "
                        "drops both",
                        types[o],
                        names[o],
                        types[o],
                    )
                    continue
                rec.overlap(
                    "passive",
                    ids,
                    s_out,
                    s_in,
                    "{} {} only moves data: its output keeps its first input's scale",
                    types[o],
                    names[o],
                )
        return rec.result(plan)


def _outside_int8(ar: Any, todo: Iterable[int], dispatch: Any, cfgs: Any) -> set[int]:
    """Node units: the passive ops that sit outside every int8 region.

    onnxruntime moves integers through a data mover only between a DequantizeLinear and a
    QuantizeLinear. When the mover's producer runs in float (an LSTM, a graph input) and every
    reader takes a float value (a float op, a standalone Relu whose input is FP32, a graph
    output), a point on it is a Q -> DQ round trip executed in float. Such movers chain (a
    Squeeze then an Unsqueeze), so this is the largest set closed under the rule: start from
    every candidate and drop those with an int8 neighbour until nothing changes.
    """
    fp32 = QuantState.FP32
    base, n_in, n_out, st = ar.slot_base, ar.n_in, ar.n_out, ar.slot_tensor
    prod, cons, slot_op, is_out = ar.producer, ar.consumers, ar.slot_op, ar.is_output
    cand = {o for o in todo if dispatch[o] is not None and n_in[o] > 0}
    changed = True
    while changed:
        changed = False
        for o in sorted(cand):
            tid = st[base[o]]
            ok = tid >= 0
            if ok and prod[tid] >= 0:
                ps = prod[tid]
                src = slot_op[ps]
                ok = (
                    src in cand
                    or dispatch[src] is None
                    or cfgs[ps] is None
                    or (cfgs[ps].state is fp32)
                )
            for sid in range(base[o] + n_in[o], base[o] + n_in[o] + n_out[o]):
                t = st[sid]
                if not ok or t < 0:
                    continue
                for c in cons[t]:
                    co = slot_op[c]
                    if co in cand or dispatch[co] is None:
                        continue
                    if cfgs[c] is not None and cfgs[c].state is not fp32:
                        ok = False
                        break
                ok = ok and not is_out[t]
            if not ok:
                cand.discard(o)
                changed = True
    return cand


def passive_fusion(graph: Graph, plan: QuantPlan, options: PassiveFusion) -> FusionResult:
    """Function form of :class:`PassiveFusion`."""
    return options.run(graph, plan)
