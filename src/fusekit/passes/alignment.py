"""Alignment: ops whose inputs must share one scale (Add, Concat, AveragePool, Resize).

Many int8 kernels cannot rescale inside an elementwise Add or a Concat: all inputs (and often
the output) must use one scale. PPQ's QuantAlignmentPass offers, per op family:

* ``"Align to Large"`` (Add/Sub/Sum default): input 0 becomes the master with a range covering
  every input; the other inputs follow it;
* ``"Align to Output"`` (Concat and Resize default): every input follows the output;
* ``"Align to Input"`` (pooling, Resize): the outputs follow input 0;
* ``"None"``.

With ``force_overlap`` the producers of the aligned inputs are pulled into the group too, so
the backend does not requantize at the op's inputs.

PPQ 0.6.6 (``alignment_overlap`` quirk) pulls producers in with ``dominated_by``: a producer
output that also feeds another op is switched off and that other op reads unquantized data.
fusekit makes the producer output *follow* the master instead (it stays active, with the aligned
scale), as PPQ master later did. PPQ's align-to-large also re-derives the range from the current
scales every time, growing the scale by 256/255 per run; fusekit leaves an aligned op alone and
inverts the scale exactly, so the pass is idempotent. When the plan is not calibrated yet the
master becomes PASSIVE_INIT and calibration gives it the union of its followers' ranges.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..errors import InvalidPlatform, SharingCycle
from ..graph import Graph
from ..platforms import Platform, get_platform
from ..quant import (
    LinkKind,
    QuantPlan,
    QuantState,
    minmax_to_scale_offset,
    scale_range,
)
from ._core import FusionResult, PassContext

__all__ = ["ALIGN_METHODS", "Alignment", "alignment"]

ALIGN_METHODS = ("Align to Large", "Align to Output", "Align to Input", "None")
_ELEM_OK = ("Align to Large", "Align to Output", "None")
_POOL_OK = ("Align to Output", "Align to Input", "None")


def _check(allowed: tuple[str, ...]) -> Callable[[object, attrs.Attribute[str], str], None]:
    def check(_: object, attr: attrs.Attribute[str], value: str) -> None:
        if value not in allowed:
            raise InvalidPlatform(f"{attr.name}={value!r}: choose one of {', '.join(allowed)}")

    return check


@attrs.frozen
class Alignment:
    """Align the scales of Add/Sub/Sum, Concat, AveragePool and Resize (options as fields)."""

    platform: str | Platform
    elementwise: str = attrs.field(default="Align to Large", validator=_check(_ELEM_OK))
    concat: str = attrs.field(default="Align to Output", validator=_check(_ELEM_OK))
    pooling: str = attrs.field(default="None", validator=_check(_POOL_OK))
    resize: str = attrs.field(default="Align to Output", validator=_check(_POOL_OK))
    force_overlap: bool = True

    name = "alignment"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        """Apply the alignment rules; returns the new plan and the decision log."""
        p = get_platform(self.platform)
        ctx = PassContext(graph, plan, p, self.name)
        groups = p.alignment
        elem = groups.get("elementwise", frozenset())
        concat = groups.get("concat", frozenset())
        pool = groups.get("pooling", frozenset())
        resize = groups.get("resize", frozenset())
        idx, ev = ctx.idx, ctx.ev
        for name in graph.order:
            o = idx.op_id[name]
            if ev.platform(o) is None:
                continue
            t = idx.op_types[o]
            if t in elem:
                method, rule = self.elementwise, "align-elementwise"
            elif t in concat:
                method, rule = self.concat, "align-concat"
            elif t in pool:
                method, rule = self.pooling, "align-pooling"
            elif t in resize:
                method, rule = self.resize, "align-resize"
            else:
                continue
            if method == "None":
                continue
            if method == "Align to Large":
                master = self._to_large(ctx, o, rule, p)
            elif method == "Align to Output":
                master = self._to_output(ctx, o, rule, p)
            else:
                self._to_input(ctx, o, rule, p)
                master = -1
            if master >= 0:
                self._upstream(ctx, o, master, rule, p)
        return ctx.rec.result(plan)

    # -- methods ------------------------------------------------------------------------------

    @staticmethod
    def _alignable(ctx: PassContext, sid: int) -> bool:
        cfg = ctx.ev.cfg(sid)
        return cfg is not None and cfg.state != QuantState.FP32 and not cfg.policy.floating

    def _to_output(self, ctx: PassContext, o: int, rule: str, p: Platform) -> int:
        out = ctx.out_sid(o, 0)
        ids = (o,)
        for s in ctx.idx.input_sids(o):
            if self._alignable(ctx, s):
                ctx.rec.follow(
                    rule,
                    ids,
                    s,
                    out,
                    "{} {}: its inputs use its output's scale (Align to Output)",
                    ctx.idx.op_types[o],
                    ctx.name(o),
                )
        return out

    def _to_input(self, ctx: PassContext, o: int, rule: str, p: Platform) -> None:
        master = ctx.in_sid(o, 0)
        for s in ctx.idx.output_sids(o):
            if self._alignable(ctx, s):
                ctx.rec.follow(
                    rule,
                    (o,),
                    s,
                    master,
                    "{} {}: its outputs use its input's scale (Align to Input)",
                    ctx.idx.op_types[o],
                    ctx.name(o),
                )

    def _to_large(self, ctx: PassContext, o: int, rule: str, p: Platform) -> int:
        idx, ev, rec = ctx.idx, ctx.ev, ctx.rec
        ids = (o,)
        ins = list(idx.input_sids(o))
        if not ins:
            return -1
        compat = p.has_quirk("align_to_large_slave_bug")
        master = ins[0]
        alignable = [s for s in ins if self._alignable(ctx, s)]
        if not compat:
            if len(alignable) < 2 or alignable[0] != master:
                if len(alignable) >= 2:
                    rec.refuse(
                        rule,
                        ids,
                        "input 0 of {} is not quantized: nothing to align to",
                        ctx.name(o),
                    )
                return -1
            follow_link = master * 2 + int(LinkKind.FOLLOW)
            aligned = ev.link(master) < 0 and all(ev.link(s) == follow_link for s in alignable[1:])
            if aligned and ev.cfg(master).state in (QuantState.PASSIVE, QuantState.PASSIVE_INIT):
                return master  # aligned already: leave the scale alone (idempotent)
        # the union of the inputs' ranges, from their current (root) scales
        lo = hi = 0.0
        calibrated = True
        for s in alignable:
            r = ev.root(s)
            cfg = ev.cfg(r)
            if cfg.scale is None or cfg.offset is None:
                calibrated = False
                break
            if cfg.policy.per_channel:
                rec.refuse(rule, ids, "{} reads a per-channel input; cannot align", ctx.name(o))
                return -1
            if compat:
                s_, o_ = float(cfg.scale), float(cfg.offset)
                a, b = s_ * (float(cfg.quant_min) - o_), s_ * (float(cfg.quant_max) - o_)
            else:
                a, b = scale_range(cfg, cfg.scale, cfg.offset)
            lo, hi = min(lo, a), max(hi, b)
        if compat and not calibrated:
            rec.refuse(
                rule, ids, "Align to Large needs calibrated scales (PPQ aligns after calibration)"
            )
            return -1
        why = "{} {}: its inputs share the largest input range (Align to Large)"
        args = (idx.op_types[o], ctx.name(o))
        rec.unlink(rule, ids, master, why, *args)
        mcfg = ev.cfg(master)
        if calibrated:
            scale, offset = minmax_to_scale_offset(lo, hi, mcfg)
            new = mcfg.with_scale(scale, offset).with_state(QuantState.PASSIVE)
        else:  # calibration will give the master the union of its followers' ranges
            new = mcfg.with_state(QuantState.PASSIVE_INIT)
        rec.config(rule, ids, master, new, why, *args)
        if compat:
            # PPQ tests the state of the *last* input inside the slave loop (its bug)
            last = ev.cfg(ins[-1])
            if last.state == QuantState.FP32 or last.policy.floating:
                return master
            slaves = ins[1:]
        else:
            slaves = alignable[1:]
        for s in slaves:
            rec.follow(rule, ids, s, master, why, *args)
        return master

    def _upstream(self, ctx: PassContext, o: int, master: int, rule: str, p: Platform) -> None:
        """Pull the producers of ``o``'s inputs into the master's group."""
        idx, ev, rec = ctx.idx, ctx.ev, ctx.rec
        overlap = p.has_quirk("alignment_overlap")
        ups: list[int] = []
        for s in idx.input_sids(o):
            tid = idx.slot_tensor[s]
            if tid >= 0 and idx.producer[tid] >= 0:
                ups.append(idx.slot_op[idx.producer[tid]])
        consumed = {idx.slot_tensor[s] for s in idx.input_sids(o)}
        for up in ups:
            if ev.platform(up) is None:
                continue
            n_down = sum(
                len(idx.consumers[idx.slot_tensor[s]])
                for s in idx.output_sids(up)
                if idx.slot_tensor[s] >= 0
            )
            if n_down != 1 and not self.force_overlap:
                rec.refuse(
                    rule,
                    (o, up),
                    "{} has {} consumers and force_overlap is off",
                    ctx.name(up),
                    n_down,
                )
                continue
            ids = (o, up)
            why = "{} feeds the aligned {} {}: it uses the aligned scale"
            args = (ctx.name(up), idx.op_types[o], ctx.name(o))
            if overlap:  # PPQ 0.6.6: every slot of up (inputs too) on a tensor o reads
                for s in idx.slot_ids_of(up):
                    if idx.slot_tensor[s] >= 0 and idx.slot_tensor[s] in consumed:
                        rec.overlap(rule, ids, s, master, why, *args)
                continue
            for s in idx.output_sids(up):
                if idx.slot_tensor[s] < 0 or idx.slot_tensor[s] not in consumed:
                    continue
                if not self._alignable(ctx, s):
                    continue
                # an overlapped output (a passive op's) is quantized by its group root
                target = ev.root(s) if ev.cfg(s).state == QuantState.OVERLAPPED else s
                if ev.root(target) == ev.root(master):
                    continue
                try:
                    rec.follow(rule, ids, target, master, why, *args)
                except SharingCycle:
                    rec.refuse(rule, ids, "aligning {} would make a sharing cycle", ctx.name(up))


def alignment(graph: Graph, plan: QuantPlan, options: Alignment) -> FusionResult:
    """Function form of :class:`Alignment`."""
    return options.run(graph, plan)
