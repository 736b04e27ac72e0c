"""Passive parameters: values whose quantization follows from other slots.

* The bias of Conv/ConvTranspose/Gemm, when the rule set quantizes it (PASSIVE_INIT), gets
  ``scale = input scale x weight scale`` (per output channel) and offset 0, so the integer
  accumulator adds it directly.
* Clip's min/max follow the Clip's input, and Pad's constant value follows the padded input,
  with INTERNAL visibility: simulation clamps on the quantization grid, and nothing is exported
  for them. fusekit never rewrites the float model's Clip bounds (PPQ bakes a fused ReLU6 bound
  of 6.0 into 127*scale).

Like PPQ's PassiveParameterQuantizePass this runs after calibration; before it, biases stay
PASSIVE_INIT and the refusal says so.
"""

from __future__ import annotations

import attrs
import numpy as np

from ..graph import Graph
from ..platforms import Platform
from ..quant import QuantPlan, QuantPolicy, QuantProperty, QuantState, Visibility
from ._core import FusionPass, FusionResult, PassContext

__all__ = ["PassiveParameters", "passive_parameters"]


def _per_tensor(policy: QuantPolicy) -> QuantPolicy:
    """``policy`` with PER_TENSOR in place of PER_CHANNEL."""
    flags = policy.flags & ~int(QuantProperty.PER_CHANNEL)
    return QuantPolicy(flags | int(QuantProperty.PER_TENSOR))


_PROPER = (QuantState.PASSIVE, QuantState.ACTIVATED, QuantState.BAKED, QuantState.OVERLAPPED)


@attrs.frozen
class PassiveParameters(FusionPass):
    """Derive bias scales and tie Clip bounds / Pad values to their input (options as fields)."""

    platform: str | Platform
    process_bias: bool = True
    process_clip: bool = True
    process_pad: bool = True

    name = "passive_parameters"
    ensures = ("acyclic-sharing",)

    def apply(self, ctx: PassContext) -> FusionResult:
        """Apply the rules; returns the new plan and the decision log."""
        plan, p = ctx.plan, ctx.platform
        ev, rec, ar = ctx.ev, ctx.rec, ctx.ar
        compat = p.has_quirk("bake_clip_bounds")
        types, dispatch, cfgs = ar.op_types, ev.dispatch, ev.configs
        wanted = (p.bias_types if self.process_bias else frozenset()) | {"Clip", "Pad"}
        pending = QuantState.PASSIVE_LIKE
        for o in ar.ops_of_types(wanted):
            t = types[o]
            if dispatch[o] is None:
                continue
            n_in = ar.n_in[o]
            if self.process_bias and t in p.bias_types and n_in == 3:
                bias = cfgs[ar.slot_base[o] + 2]
                if bias is not None and bias.state in pending:  # else _bias does nothing
                    self._bias(ctx, o)
            elif self.process_clip and t == "Clip" and n_in > 1:
                self._bounds(ctx, o, range(1, n_in), "clip-bounds", compat)
            elif self.process_pad and t == "Pad" and n_in == 3:
                self._bounds(ctx, o, range(2, 3), "pad-value", compat)
        return rec.result(plan)

    @staticmethod
    def _bias(ctx: PassContext, o: int) -> None:
        ev, rec = ctx.ev, ctx.rec
        b = ctx.in_sid(o, 2)
        bcfg = ev.cfg(b)
        if bcfg is None or bcfg.state not in QuantState.PASSIVE_LIKE:
            return
        x, w = ctx.in_sid(o, 0), ctx.in_sid(o, 1)
        if ctx.state(x) not in _PROPER:
            rec.refuse(
                "bias",
                (o,),
                "the input of {} is not quantized yet ({})",
                ctx.name(o),
                ctx.state(x).name,
            )
            return
        xs, ws = ev.cfg(ev.root(x)).scale, ev.cfg(ev.root(w)).scale
        if xs is None or ws is None:
            rec.refuse("bias", (o,), "the input or weight of {} has no scale yet", ctx.name(o))
            return
        scale = (np.asarray(ws, dtype=np.float64) * float(np.max(xs))).astype(np.float32)
        if not bcfg.policy.per_channel:
            scale = np.asarray(float(np.max(scale)), dtype=np.float32)
        elif scale.size == 1:
            # a per-tensor weight (a rule set's variant) under a per-channel bias rule: the
            # accumulator has one scale, so the bias is per tensor too. A per-channel config
            # with one scale left the bias float at export (channel count mismatch).
            bcfg = attrs.evolve(bcfg, policy=_per_tensor(bcfg.policy), channel_axis=None)
            scale = scale.reshape(())
        new = bcfg.with_scale(scale, np.zeros_like(scale)).with_state(QuantState.PASSIVE)
        rec.config("bias", (o,), b, new, "bias of {} = input scale x weight scale", ctx.name(o))

    @staticmethod
    def _bounds(ctx: PassContext, o: int, ks: range, rule: str, compat: bool) -> None:
        ev, rec, st = ctx.ev, ctx.rec, ctx.ar.slot_tensor
        x = ctx.in_sid(o, 0)
        xstate = ctx.state(x)
        if compat and xstate not in _PROPER:
            rec.refuse(
                rule, (o,), "the input of {} is not quantized yet ({})", ctx.name(o), xstate.name
            )
            return
        if xstate == QuantState.FP32:
            rec.refuse(rule, (o,), "the input of {} is FP32", ctx.name(o))
            return
        for k in ks:
            s = ctx.in_sid(o, k)
            tid = st[s]
            if tid < 0:
                continue
            if not compat and not ctx.ar.is_const[tid]:
                rec.refuse(
                    rule, (o,), "input {} of {} is computed at run time: left FP32", k, ctx.name(o)
                )
                continue
            cfg = ev.cfg(s)
            assert cfg is not None
            if cfg.visibility != Visibility.INTERNAL:
                rec.config(
                    rule,
                    (o,),
                    s,
                    cfg.with_visibility(Visibility.INTERNAL),
                    "{} of {} is never exported",
                    "bound" if rule == "clip-bounds" else "pad value",
                    ctx.name(o),
                )
            rec.follow(
                rule,
                (o,),
                s,
                x,
                "{} of {} is clamped on its input's grid",
                "bound" if rule == "clip-bounds" else "pad value",
                ctx.name(o),
            )


def passive_parameters(graph: Graph, plan: QuantPlan, options: PassiveParameters) -> FusionResult:
    """Function form of :class:`PassiveParameters`."""
    return options.run(graph, plan)
