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

from ..graph import Graph
from ..platforms import Platform, get_platform
from ..quant import QuantPlan, QuantState
from ._core import FusionResult, PassContext

__all__ = ["Simplify", "simplify"]


@attrs.frozen
class Simplify:
    """Overlap consumer input slots by the producer output slot of the same tensor."""

    platform: str | Platform
    share_graph_inputs: bool | None = None  # None: yes for corrected rule sets, no for PPQ's

    name = "simplify"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        """Apply the rule; returns the new plan and the decision log."""
        p = get_platform(self.platform)
        ctx = PassContext(graph, plan, p, self.name)
        idx, rec, ev = ctx.idx, ctx.rec, ctx.ev
        first_only = p.has_quirk("first_occurrence_input")
        share_inputs = (
            (not first_only) if self.share_graph_inputs is None else self.share_graph_inputs
        )
        INITIAL, FP32 = QuantState.INITIAL, QuantState.FP32
        names, slot_op, cons = idx.op_names, idx.slot_op, idx.consumers
        op_id = idx.op_id
        why = "{} reads the tensor {} writes with the same scheme: one quantization"
        for name in graph.order:
            o = op_id[name]
            plat = ev.platform(o)
            if plat is None:
                continue
            for src in idx.output_sids(o):
                tid = idx.slot_tensor[src]
                if tid < 0:
                    continue
                src_cfg = ev.cfg(src)
                if src_cfg.state == FP32:
                    continue
                seen: set[int] = set()
                for c in cons[tid]:
                    co = slot_op[c]
                    if first_only:
                        if co in seen:
                            continue  # PPQ: dest_idx is the first occurrence, visited again
                        seen.add(co)
                        c = self._first_input(idx, co, tid)
                    if ev.platform(co) != plat:
                        continue
                    cfg = ev.cfg(c)
                    if cfg.state != INITIAL or not cfg.same_scheme(src_cfg):
                        continue
                    rec.overlap("simplify", (o, co), c, src, why, names[co], names[o])
        if share_inputs:
            self._share_graph_inputs(ctx)
        return rec.result(plan)

    @staticmethod
    def _first_input(idx: object, co: int, tid: int) -> int:
        from ..graph import GraphIndex

        assert isinstance(idx, GraphIndex)
        for s in idx.input_sids(co):
            if idx.slot_tensor[s] == tid:
                return s
        raise AssertionError("consumer does not read the tensor")

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
            first = -1
            for c in idx.consumers[tid]:
                co = idx.slot_op[c]
                if ev.platform(co) is None:
                    continue
                cfg = ev.cfg(c)
                if cfg.state != INITIAL:
                    continue
                if first < 0:
                    first = c
                    continue
                fcfg = ev.cfg(first)
                if ev.platform(idx.slot_op[first]) != ev.platform(co) or not cfg.same_scheme(fcfg):
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


def simplify(graph: Graph, plan: QuantPlan, options: Simplify) -> FusionResult:
    """Function form of :class:`Simplify`."""
    return options.run(graph, plan)
