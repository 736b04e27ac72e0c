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

from .._topology import Topology
from ..graph import Graph
from ..platforms import Platform
from ..quant import QuantState
from ._core import FusionPass, FusionResult, PassContext

__all__ = ["EpilogueFusion", "attached_ops", "epilogue_input"]


def _epilogue_input(ar: Topology, oid: int) -> int:
    """:func:`epilogue_input` over the graph's arrays (an omitted input counts as constant)."""
    found = -1
    st, is_const = ar.slot_tensor, ar.is_const
    first = ar.slot_base[oid]
    for s in range(first, first + ar.n_in[oid]):
        tid = st[s]
        if tid >= 0 and not is_const[tid]:
            if found >= 0:
                return -1
            found = s
    return found


def epilogue_input(graph: Graph, oid: int) -> int:
    """The one non-constant input slot of op ``oid`` (-1 if it has none or several)."""
    return _epilogue_input(graph.arrays(), oid)


def _single_consumer(ar: Topology, oid: int) -> int:
    """The input slot consuming ``oid``'s only output, if exactly one and not a graph output."""
    if ar.n_out[oid] != 1:
        return -1
    tid = ar.slot_tensor[ar.slot_base[oid] + ar.n_in[oid]]
    if tid < 0 or ar.is_output[tid]:
        return -1
    cons = ar.consumers[tid]
    return cons[0] if len(cons) == 1 else -1


def attached_ops(graph: Graph, platform: Platform) -> frozenset[int]:
    """Computing ops plus the epilogue ops that fold into them (structurally), as op ids.

    An epilogue op is attached when its only non-constant input is the sole consumer of an
    attached op's output (and not a graph output). Chains fold too (Conv -> BN -> Mul).
    Depends on the graph and the two type sets only, so it is computed once per graph and
    shared by the epilogue, activation and composite-activation passes.
    """
    return graph.derived(_attached, platform.computing_types, platform.epilogue_types).ops


@attrs.frozen
class _Attached:
    """What :func:`attached_ops` derives once per graph and pair of type sets."""

    ops: frozenset[int]  # computing ops and the epilogue ops attached to them
    epilogues: tuple[int, ...]  # the attached epilogue ops, in topological order


def _attached(graph: Graph, comp: frozenset[str], epi: frozenset[str]) -> _Attached:
    ar = graph.index
    attached: set[int] = set()
    types, st, prod, slot_op = ar.op_types, ar.slot_tensor, ar.producer, ar.slot_op
    for o in ar.order:
        t = types[o]
        if t in comp:
            attached.add(o)
            continue
        if t not in epi:
            continue
        s = _epilogue_input(ar, o)
        if s < 0:
            continue
        p = prod[st[s]]
        if p < 0:
            continue
        src = slot_op[p]
        if src in attached and _single_consumer(ar, src) == s:
            attached.add(o)
    # the attached epilogue ops in topological order, for EpilogueFusion (no sort per run)
    epilogues = tuple(
        o for o in ar.order if o in attached and types[o] in epi and types[o] not in comp
    )
    return _Attached(frozenset(attached), epilogues)


def _attached_epilogues(graph: Graph, platform: Platform) -> tuple[int, ...]:
    """The epilogue ops of :func:`attached_ops` (not the computing ops), in topological order."""
    return graph.derived(_attached, platform.computing_types, platform.epilogue_types).epilogues


@attrs.frozen
class EpilogueFusion(FusionPass):
    """Fold BatchNormalization / bias Add / scale Mul into the computing op before them."""

    platform: str | Platform

    name = "epilogue_fusion"
    ensures = ("acyclic-sharing",)

    def apply(self, ctx: PassContext) -> FusionResult:
        """Apply the rule; returns the new plan and the decision log."""
        graph, plan, p = ctx.graph, ctx.plan, ctx.platform
        if not p.epilogue_types:
            return ctx.rec.result(plan)
        rec, ev, ar = ctx.rec, ctx.ev, ctx.ar
        fp32 = QuantState.FP32
        types, names, st, prod, slot_op = (
            ar.op_types,
            ar.op_names,
            ar.slot_tensor,
            ar.producer,
            ar.slot_op,
        )
        base, n_in = ar.slot_base, ar.n_in
        dispatch, cfgs = ev.dispatch, ev.configs
        why = "{} {} folds into {} {}: one kernel computes both"
        for o in _attached_epilogues(graph, p):
            s = _epilogue_input(ar, o)
            src_out = prod[st[s]]
            src = slot_op[src_out]
            ids = (src, o)
            if dispatch[o] is None or dispatch[src] is None:
                bad = o if dispatch[o] is None else src
                rec.refuse("epilogue", ids, "{} is not quantized", names[bad])
                continue
            if dispatch[o] != dispatch[src]:
                rec.refuse(
                    "epilogue",
                    ids,
                    "{} and {} are on different platforms",
                    names[src],
                    names[o],
                )
                continue
            out = base[o] + n_in[o]
            if cfgs[out].state == fp32 or cfgs[src_out].state == fp32:
                rec.refuse("epilogue", ids, "a slot of {} or {} is FP32", names[src], names[o])
                continue
            args = (types[o], names[o], types[src], names[src])
            rec.overlap("epilogue", ids, src_out, out, why, *args)
            rec.overlap("epilogue", ids, s, out, why, *args)
            for k in range(base[o], base[o] + n_in[o]):
                # constant operands (BN stats, the bias) are folded too
                if k != s and cfgs[k].state != fp32:
                    rec.overlap("epilogue", ids, k, out, why, *args)
        return rec.result(plan)
