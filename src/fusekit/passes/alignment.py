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

fusekit's rule sets never align inputs whose calibrated ranges differ by ``max_spread`` (16x)
or more when alignment runs on a calibrated plan (the default pipeline calibrates first): one
shared scale would leave the smallest member 4 bits or fewer (a YOLO head's Concat of pixel
boxes and [0, 1] scores rounds every score to 0). The group is split, each input keeps its own
scale (the backend requantizes at the op), and the refusal names the op and the ranges.
``max_spread=0`` turns the check off; PPQ-compatible rule sets never make it.

PPQ 0.6.6 (``alignment_overlap`` quirk) pulls producers in with ``dominated_by``: a producer
output that also feeds another op is switched off and that other op reads unquantized data.
fusekit makes the producer output *follow* the master instead (it stays active, with the aligned
scale), as PPQ master later did. PPQ's align-to-large also re-derives the range from the current
scales every time, growing the scale by 256/255 per run; fusekit leaves an aligned op alone and
inverts the scale exactly, so the pass is idempotent. When the plan is not calibrated yet the
master becomes PASSIVE_INIT and calibration gives it the union of its followers' ranges.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
from pyrsistent import PMap, pmap

from ..errors import InvalidPlatform
from ..graph import Graph
from ..platforms import Platform
from ..quant import (
    LinkKind,
    QuantPlan,
    QuantState,
    minmax_to_scale_offset,
    scale_range,
)
from ._core import FusionPass, FusionResult, PassContext

__all__ = ["ALIGN_METHODS", "SPLIT_FACTORS", "Alignment", "alignment"]

#: Per alignment family, the calibrated-range ratio at which a preferred (not required)
#: alignment is split instead; a family not named uses ``Alignment.max_spread`` (16x: a
#: Concat's members keep their own values, and one scale 16x too wide leaves the smallest 4
#: bits). Elementwise alignment is never split: an Add's output is quantized at least as
#: coarsely as its widest input, so the narrow input's rounding stays at the output's own
#: step, and on the transformer (bert24, trt_int8) every split factor measured cost 1.4 to
#: 3.8 dB (``bench/align_sweep.py``, docs/accuracy.md).
SPLIT_FACTORS: PMap[str, float] = pmap({"elementwise": 0.0})

ALIGN_METHODS = ("Align to Large", "Align to Output", "Align to Input", "None")
_ELEM_OK = ("Align to Large", "Align to Output", "None")
_POOL_OK = ("Align to Output", "Align to Input", "None")


def _check(allowed: tuple[str, ...]) -> Callable[[object, attrs.Attribute[str], str], None]:
    def check(_: object, attr: attrs.Attribute[str], value: str) -> None:
        if value not in allowed:
            raise InvalidPlatform(
                f"{attr.name}={value!r}: choose one of {', '.join(allowed)}", field=attr.name
            )

    return check


@attrs.frozen
class Alignment(FusionPass):
    """Align the scales of Add/Sub/Sum, Concat, AveragePool and Resize (options as fields)."""

    platform: str | Platform
    elementwise: str = attrs.field(default="Align to Large", validator=_check(_ELEM_OK))
    concat: str = attrs.field(default="Align to Output", validator=_check(_ELEM_OK))
    pooling: str = attrs.field(default="None", validator=_check(_POOL_OK))
    resize: str = attrs.field(default="Align to Output", validator=_check(_POOL_OK))
    force_overlap: bool = True
    max_spread: float = 16.0
    spread_by_family: PMap[str, float] = attrs.field(default=SPLIT_FACTORS, converter=pmap)

    name = "alignment"
    ensures = ("acyclic-sharing",)

    def apply(self, ctx: PassContext) -> FusionResult:
        """Apply the alignment rules; returns the new plan and the decision log."""
        plan, p = ctx.plan, ctx.platform
        groups = p.alignment
        elem = groups.get("elementwise", frozenset())
        concat = groups.get("concat", frozenset())
        pool = groups.get("pooling", frozenset())
        resize = groups.get("resize", frozenset())
        ar, dispatch = ctx.ar, ctx.ev.dispatch
        ppq = p.has_quirk("alignment_overlap")
        types, cfgs, first_in = ar.op_types, ctx.ev.configs, ar.slot_base
        overlapped = QuantState.OVERLAPPED
        for o in ar.ops_of_types(elem | concat | pool | resize):
            if dispatch[o] is None:
                continue
            t = types[o]
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
            # (_folded needs input 0 overlapped: test that before calling it)
            cfg0 = cfgs[first_in[o]] if ar.n_in[o] else None
            if not ppq and cfg0 is not None and cfg0.state == overlapped and self._folded(ctx, o):
                ctx.rec.refuse(
                    rule,
                    (o,),
                    "{} runs inside a fused kernel (its input and output share one scale): "
                    "there is nothing to align",
                    ctx.name(o),
                )
                continue
            measured = ""
            if method != "Align to Input" and not p.has_quirk("alignment_unmeasured"):
                note = self._decide(ctx, o, rule, p)
                if note is None:
                    continue
                measured = note
            if method == "Align to Large":
                master = self._to_large(ctx, o, rule, p, measured)
            elif method == "Align to Output":
                master = self._to_output(ctx, o, rule, p, measured)
            else:
                self._to_input(ctx, o, rule, p)
                master = -1
            if master >= 0:
                self._upstream(ctx, o, master, rule, p)
        return ctx.rec.result(plan)

    # -- methods ------------------------------------------------------------------------------

    def split_factor(self, family: str) -> float:
        """The calibrated-range ratio at which ``family``'s alignment is split (0: never)."""
        return self.spread_by_family.get(family, self.max_spread)

    def _decide(self, ctx: PassContext, o: int, rule: str, p: Platform) -> str | None:
        """Align op ``o`` or split it, from its inputs' calibrated ranges; log the numbers.

        Returns None when the group is split (the refusal, with the ranges, is logged), else
        the text the alignment decisions carry: the ratio measured against the split factor,
        or that the platform's hardware needs one scale there (never split).
        """
        family = rule.removeprefix("align-")
        wide = self._spread(ctx, o)
        if family in p.alignment_required:
            if wide is None:
                return "; the backend requires one scale here"
            return "; the backend requires one scale here (ranges {:.1f}x apart: {})".format(*wide)
        limit = self.split_factor(family)
        if wide is None:
            return ""
        ratio, members = wide
        if limit <= 0:
            return (
                f"; calibrated ranges {ratio:.1f}x apart ({members}); {family} alignment is "
                "never split"
            )
        if ratio < limit:
            return (
                f"; calibrated ranges {ratio:.1f}x apart ({members}), below the {limit:g}x "
                f"split factor of {family} alignment"
            )
        ctx.rec.refuse(
            rule,
            (o,),
            "the calibrated ranges of {}'s inputs differ by {:.1f}x ({}), at or above the {:g}x "
            "split factor of {} alignment: one shared scale would leave the smallest {:.1f} of "
            "its 8 bits, so each keeps its own scale (the group is split)",
            ctx.name(o),
            ratio,
            members,
            limit,
            family,
            max(0.0, 8.0 - math.log2(ratio)) if math.isfinite(ratio) else 0.0,
        )
        return None

    @staticmethod
    def _folded(ctx: PassContext, o: int) -> bool:
        """Is op ``o`` inside a fused kernel (a bias Add folded into a Conv, the Add of a
        HardSwish, ...)? Then its first input already shares its output's group, and aligning
        it would pull the group apart: unlink the input, re-activate it inside the kernel and
        make the kernel's output follow a tensor the kernel never materializes."""
        ar, ev = ctx.ar, ctx.ev
        if ar.n_in[o] == 0 or ar.n_out[o] == 0:
            return False
        first = ar.slot_base[o]
        if ar.slot_tensor[first] < 0:
            return False
        if ev.configs[first].state != QuantState.OVERLAPPED:
            return False
        return ev.root(first) == ev.root(first + ar.n_in[o])

    @staticmethod
    def _spread(ctx: PassContext, o: int) -> tuple[float, str] | None:
        """Largest over smallest calibrated |range| of ``o``'s inputs (None if not calibrated).

        Only per-tensor inputs with a scale count; a ratio needs two of them.
        """
        ev, ar = ctx.ev, ctx.ar
        amax: dict[str, float] = {}
        first = ar.slot_base[o]
        for s in range(first, first + ar.n_in[o]):
            tid = ar.slot_tensor[s]
            cfg = ev.configs[s]
            if tid < 0 or ar.is_const[tid] or cfg is None or cfg.state == QuantState.FP32:
                continue
            rc = ev.cfg(ev.root(s))
            if rc is None or rc.scale is None or rc.offset is None or rc.policy.per_channel:
                return None
            if rc.scale.size != 1:
                return None
            lo, hi = scale_range(rc, rc.scale, rc.offset)
            amax[ar.tensor_names[tid]] = max(abs(lo), abs(hi))
        if len(amax) < 2:
            return None
        hi_v, lo_v = max(amax.values()), min(amax.values())
        ratio = math.inf if lo_v <= 0 else hi_v / lo_v
        members = ", ".join(f"{t}: {v:.4g}" for t, v in sorted(amax.items(), key=lambda kv: -kv[1]))
        return ratio, members

    @staticmethod
    def _alignable(ctx: PassContext, sid: int) -> bool:
        cfg = ctx.ev.configs[sid]
        return cfg is not None and cfg.state != QuantState.FP32 and not cfg.policy.floating

    @staticmethod
    def _alignable_inputs(ctx: PassContext, o: int) -> list[int]:
        """The input slots of ``o`` that :meth:`_alignable` accepts (one call per op)."""
        cfgs, fp32 = ctx.ev.configs, QuantState.FP32
        first = ctx.ar.slot_base[o]
        return [
            s
            for s in range(first, first + ctx.ar.n_in[o])
            if (c := cfgs[s]) is not None and c.state != fp32 and not c.policy.floating
        ]

    def _to_output(
        self, ctx: PassContext, o: int, rule: str, p: Platform, measured: str = ""
    ) -> int:
        ar = ctx.ar
        out = ar.slot_base[o] + ar.n_in[o]
        ids = (o,)
        for s in self._alignable_inputs(ctx, o):
            ctx.rec.follow(
                rule,
                ids,
                s,
                out,
                "{} {}: its inputs use its output's scale (Align to Output){}",
                ar.op_types[o],
                ar.op_names[o],
                measured,
            )
        return out

    def _to_input(self, ctx: PassContext, o: int, rule: str, p: Platform) -> None:
        ar = ctx.ar
        master = ar.slot_base[o]
        first = master + ar.n_in[o]
        for s in range(first, first + ar.n_out[o]):
            if self._alignable(ctx, s):
                ctx.rec.follow(
                    rule,
                    (o,),
                    s,
                    master,
                    "{} {}: its outputs use its input's scale (Align to Input)",
                    ar.op_types[o],
                    ar.op_names[o],
                )

    def _to_large(
        self, ctx: PassContext, o: int, rule: str, p: Platform, measured: str = ""
    ) -> int:
        ar, ev, rec = ctx.ar, ctx.ev, ctx.rec
        ids = (o,)
        ins = list(range(ar.slot_base[o], ar.slot_base[o] + ar.n_in[o]))
        if not ins:
            return -1
        compat = p.has_quirk("align_to_large_slave_bug")
        master = ins[0]
        alignable = self._alignable_inputs(ctx, o)
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
            follows = ev.follows
            aligned = ev.parent(master) < 0 and all(follows(s, master) for s in alignable[1:])
            if aligned and ev.cfg(master).state in QuantState.PASSIVE_LIKE:
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
        why = "{} {}: its inputs share the largest input range (Align to Large){}"
        args = (ar.op_types[o], ar.op_names[o], measured)
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
        idx, ev, rec, ar = ctx.idx, ctx.ev, ctx.rec, ctx.ar
        st, prod, slot_op, base, n_in = (
            ar.slot_tensor,
            ar.producer,
            ar.slot_op,
            ar.slot_base,
            ar.n_in,
        )
        names, dispatch, cfgs = ar.op_names, ev.dispatch, ev.configs
        parent, link_kind = ev.parent, ev.link_kind
        overlap = p.has_quirk("alignment_overlap")
        ups: list[int] = []
        ins = range(base[o], base[o] + n_in[o])
        for s in ins:
            tid = st[s]
            if tid >= 0 and prod[tid] >= 0:
                ups.append(slot_op[prod[tid]])
        consumed = {st[s] for s in ins}
        for up in ups:
            if dispatch[up] is None:
                continue
            n_down = ar.n_uses[up]
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
            args = (names[up], ar.op_types[o], names[o])
            if overlap:  # PPQ 0.6.6: every slot of up (inputs too) on a tensor o reads
                for s in range(base[up], base[up] + n_in[up] + ar.n_out[up]):
                    if st[s] >= 0 and st[s] in consumed:
                        rec.overlap(rule, ids, s, master, why, *args)
                continue
            first = base[up] + n_in[up]
            for s in range(first, first + ar.n_out[up]):
                if st[s] < 0 or st[s] not in consumed:
                    continue
                cfg = cfgs[s]
                if cfg is None or cfg.state == QuantState.FP32 or cfg.policy.floating:
                    continue  # not alignable
                # an overlapped output (a passive op's) is quantized by the slot its overlap
                # chain ends in (not beyond a FOLLOW link: that is another op's alignment)
                target = s
                while link_kind(target) is LinkKind.OVERLAP:
                    target = parent(target)
                if ev.root(target) == ev.root(master):
                    continue
                if link_kind(target) is LinkKind.FOLLOW:
                    master_of_target = parent(target)
                    # A producer feeding several aligned ops can use only one of their scales;
                    # the others requantize at their input. The choice must not depend on the
                    # node order (nor flip on a second run): an op's alignment of its own slot
                    # (Align to Input/Output) wins, else the aligned op whose name sorts first.
                    owner = slot_op[master_of_target]
                    own = owner in (up, slot_op[target])
                    if own or names[owner] <= names[o]:
                        rec.refuse(
                            rule,
                            ids,
                            "{} already uses the aligned scale of {}: {} requantizes at its input",
                            idx.slot_key(target),
                            idx.slot_key(master_of_target),
                            ctx.name(o),
                        )
                        continue
                rec.follow(rule, ids, target, master, why, *args)


def alignment(graph: Graph, plan: QuantPlan, options: Alignment) -> FusionResult:
    """Function form of :class:`Alignment`."""
    return options.run(graph, plan)
