"""Epilogue fusion: BatchNormalization, bias Add and scale Mul fold into the computing op.

Exported models often keep ``Conv -> BatchNormalization -> Relu`` or ``MatMul -> Add(bias)``;
every backend folds the per-channel affine into the computing op's kernel, so there is no
quantization point between them either. For a computing op with exactly one consumer, that
consumer of an ``epilogue_types`` type whose other operands are all constant is folded: the
computing op's output and the epilogue's input are overlapped by the epilogue's output, and
activation fusion then treats the epilogue's output as the computing op's.

PPQ folds BatchNorm and bias Add while loading a graph, before any pass runs (so its rule sets
have no epilogue types); fusekit keeps the graph as it is and records the fold as a decision.
"""

from __future__ import annotations

import attrs

from ..graph import Graph, GraphIndex
from ..platforms import Platform, get_platform
from ..quant import QuantPlan, QuantState
from ._core import FusionResult, PassContext

__all__ = ["EpilogueFusion", "attached_ops", "epilogue_input"]


def _is_const(idx: GraphIndex, graph: Graph, tid: int) -> bool:
    if tid < 0:
        return True
    if idx.tensor_names[tid] in graph.initializers:
        return True
    p = idx.producer[tid]
    return bool(p >= 0 and idx.op_types[idx.slot_op[p]] == "Constant")


def epilogue_input(graph: Graph, oid: int) -> int:
    """The one non-constant input slot of op ``oid`` (-1 if it has none or several)."""
    idx = graph.index
    found = -1
    for s in idx.input_sids(oid):
        if not _is_const(idx, graph, idx.slot_tensor[s]):
            if found >= 0:
                return -1
            found = s
    return found


def _single_consumer(graph: Graph, oid: int) -> int:
    """The input slot consuming ``oid``'s only output, if exactly one and not a graph output."""
    idx = graph.index
    outs = idx.output_sids(oid)
    if len(outs) != 1:
        return -1
    tid = idx.slot_tensor[outs[0]]
    if tid < 0 or idx.tensor_names[tid] in graph.outputs:
        return -1
    cons = idx.consumers[tid]
    return cons[0] if len(cons) == 1 else -1


def attached_ops(graph: Graph, platform: Platform) -> frozenset[int]:
    """Computing ops plus the epilogue ops that fold into them (structurally), as op ids.

    An epilogue op is attached when its only non-constant input is the sole consumer of an
    attached op's output (and not a graph output). Chains fold too (Conv -> BN -> Mul).
    """
    idx = graph.index
    comp, epi = platform.computing_types, platform.epilogue_types
    attached: set[int] = set()
    op_id, types = idx.op_id, idx.op_types
    for name in graph.order:
        o = op_id[name]
        t = types[o]
        if t in comp:
            attached.add(o)
            continue
        if t not in epi:
            continue
        s = epilogue_input(graph, o)
        if s < 0:
            continue
        tid = idx.slot_tensor[s]
        p = idx.producer[tid]
        if p < 0:
            continue
        src = idx.slot_op[p]
        if src in attached and _single_consumer(graph, src) == s:
            attached.add(o)
    return frozenset(attached)


@attrs.frozen
class EpilogueFusion:
    """Fold BatchNormalization / bias Add / scale Mul into the computing op before them."""

    platform: str | Platform

    name = "epilogue_fusion"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        """Apply the rule; returns the new plan and the decision log."""
        p = get_platform(self.platform)
        ctx = PassContext(graph, plan, p, self.name)
        if not p.epilogue_types:
            return ctx.rec.result(plan)
        idx, rec, ev = ctx.idx, ctx.rec, ctx.ev
        attached = attached_ops(graph, p)
        fp32 = QuantState.FP32
        for name in graph.order:
            o = idx.op_id[name]
            if o not in attached or idx.op_types[o] not in p.epilogue_types:
                continue
            if idx.op_types[o] in p.computing_types:
                continue
            s = epilogue_input(graph, o)
            src = idx.slot_op[idx.producer[idx.slot_tensor[s]]]
            ids = (src, o)
            if ev.platform(o) is None or ev.platform(src) is None:
                bad = o if ev.platform(o) is None else src
                rec.refuse("epilogue", ids, "{} is not quantized", ctx.name(bad))
                continue
            if ev.platform(o) != ev.platform(src):
                rec.refuse(
                    "epilogue",
                    ids,
                    "{} and {} are on different platforms",
                    ctx.name(src),
                    ctx.name(o),
                )
                continue
            out = ctx.out_sid(o, 0)
            src_out = idx.producer[idx.slot_tensor[s]]
            if ctx.state(out) == fp32 or ctx.state(src_out) == fp32:
                rec.refuse(
                    "epilogue", ids, "a slot of {} or {} is FP32", ctx.name(src), ctx.name(o)
                )
                continue
            why = "{} {} folds into {} {}: one kernel computes both"
            args = (idx.op_types[o], ctx.name(o), idx.op_types[src], ctx.name(src))
            rec.overlap("epilogue", ids, src_out, out, why, *args)
            rec.overlap("epilogue", ids, s, out, why, *args)
            for k in idx.input_sids(o):  # constant operands (BN stats, the bias) are folded too
                if k != s and ctx.state(k) != fp32:
                    rec.overlap("epilogue", ids, k, out, why, *args)
        return rec.result(plan)
