"""Simplify: one quantization per tensor, not one per producer and one per consumer.

When an op's output slot and a consumer's input slot quantize the same tensor with the same
scheme, the consumer's slot is overlapped by the producer's (PPQ's QuantizeSimplifyPass), so
the export has one Q/DQ pair on the edge instead of two. Slots with a different scheme keep
their own config: that is a real requantization.

fusekit works per consumer *slot*: ``Mul(x, x)`` de-duplicates both inputs (PPQ finds the
consumer's input index with ``list.index`` and so only ever handles the first; the
``first_occurrence_input`` quirk reproduces that). The corrected rule sets also share one
scale among the quantized consumers of a graph input, which PPQ quantizes once per consumer.
"""

from __future__ import annotations

import attrs

from ..graph import Graph, GraphArrays
from ..platforms import Platform
from ..quant import QuantPlan, QuantState
from ._core import FusionPass, FusionResult, PassContext

__all__ = ["Simplify", "simplify"]


@attrs.frozen
class Simplify(FusionPass):
    """Overlap consumer input slots by the producer output slot of the same tensor."""

    platform: str | Platform
    share_graph_inputs: bool | None = None  # None: yes for corrected rule sets, no for PPQ's

    name = "simplify"
    ensures = ("acyclic-sharing",)

    def apply(self, ctx: PassContext) -> FusionResult:
        """Apply the rule; returns the new plan and the decision log."""
        plan, p = ctx.plan, ctx.platform
        rec, ev, ar = ctx.rec, ctx.ev, ctx.ar
        first_only = p.has_quirk("first_occurrence_input")
        share_inputs = (
            (not first_only) if self.share_graph_inputs is None else self.share_graph_inputs
        )
        INITIAL, FP32 = QuantState.INITIAL, QuantState.FP32
        names, slot_op, cons, st = ar.op_names, ar.slot_op, ar.consumers, ar.slot_tensor
        base, n_in, n_out = ar.slot_base, ar.n_in, ar.n_out
        dispatch, cfgs = ev.dispatch, ev.configs
        # same_scheme per pair of config objects: slots share a handful of config objects, so
        # this compares each pair once instead of once per edge (the objects are held, so
        # their ids stay theirs for the whole pass)
        same: dict[tuple[int, int], tuple[object, object, bool]] = {}
        why = "{} reads the tensor {} writes with the same scheme: one quantization"
        for o in ar.order:
            plat = dispatch[o]
            if plat is None:
                continue
            first = base[o] + n_in[o]
            for src in range(first, first + n_out[o]):
                tid = st[src]
                if tid < 0:
                    continue
                src_cfg = cfgs[src]
                if src_cfg.state == FP32:
                    continue
                seen: set[int] = set() if first_only else _NO_OPS
                for c in cons[tid]:
                    co = slot_op[c]
                    if first_only:
                        if co in seen:
                            continue  # PPQ: dest_idx is the first occurrence, visited again
                        seen.add(co)
                        c = _first_input(ar, co, tid)
                    if dispatch[co] != plat:
                        continue
                    cfg = cfgs[c]
                    if cfg.state != INITIAL:
                        continue
                    if cfg is not src_cfg:
                        key = (id(cfg), id(src_cfg))
                        hit = same.get(key)
                        if hit is None:
                            hit = same[key] = (cfg, src_cfg, cfg.same_scheme(src_cfg))
                        if not hit[2]:
                            continue
                    rec.overlap("simplify", (o, co), c, src, why, names[co], names[o])
        if share_inputs:
            self._share_graph_inputs(ctx)
        return rec.result(plan)

    @staticmethod
    def _share_graph_inputs(ctx: PassContext) -> None:
        idx, rec, ev, graph = ctx.idx, ctx.rec, ctx.ev, ctx.graph
        INITIAL = QuantState.INITIAL
        names = idx.op_names
        for t in graph.inputs:
            if t in graph.initializers:
                continue
            tid = idx.tensor_id.get(t)
            if tid is None:
                continue
            # One shared scale per platform and scheme, held by the first consumer by name (not
            # by node order, so that reordering the nodes of a file does not change the plan).
            # Consumers on another platform or scheme form their own group rather than none.
            heads: list[int] = []
            by_name = sorted(
                idx.consumers[tid],
                key=lambda c: (names[idx.slot_op[c]], c - idx.slot_base[idx.slot_op[c]]),
            )
            for c in by_name:
                co = idx.slot_op[c]
                if ev.platform(co) is None:
                    continue
                cfg = ev.cfg(c)
                if cfg.state != INITIAL:
                    continue
                first = next(
                    (
                        h
                        for h in heads
                        if ev.platform(idx.slot_op[h]) == ev.platform(co)
                        and cfg.same_scheme(ev.cfg(h))
                    ),
                    -1,
                )
                if first < 0:
                    heads.append(c)
                    continue
                rec.overlap(
                    "simplify-input",
                    (idx.slot_op[first], co),
                    c,
                    first,
                    "{} and {} read graph input {!r} with the same scheme: one quantization",
                    names[idx.slot_op[first]],
                    names[co],
                    t,
                )


_NO_OPS: set[int] = set()  # never filled: stands in for ``seen`` when it is not needed


def _first_input(ar: GraphArrays, co: int, tid: int) -> int:
    """The first input slot of op ``co`` reading tensor ``tid``."""
    for s in range(ar.slot_base[co], ar.slot_base[co] + ar.n_in[co]):
        if ar.slot_tensor[s] == tid:
            return s
    raise AssertionError("consumer does not read the tensor")


def simplify(graph: Graph, plan: QuantPlan, options: Simplify) -> FusionResult:
    """Function form of :class:`Simplify`."""
    return options.run(graph, plan)
