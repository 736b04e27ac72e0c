"""Re-place a quantized model's Q/DQ by a platform's plan, reusing the model's own scales.

:func:`fix_plan` takes an imported model (:func:`fusekit.load_quantized`), plans its float
graph with the platform's default pipeline and gives every quantization point of that plan a
scale, taken from the model wherever the model quantizes the same tensor:

* a point whose tensor the model quantizes keeps the model's scale and zero point when the
  scheme is the platform's; otherwise (uint8 or a zero point where the platform is symmetric)
  the range the model's scale represents is requantized in the platform's scheme;
* merged groups: a fused ``Conv + Relu`` point is the activation output's, so it keeps that
  scale; a passive group's root is its first input, so it keeps that input's scale; an
  aligned group (members following one master) takes the range covering every member's range;
* weights keep their exact integer values when their scheme (per-tensor/per-channel, axis,
  bits, symmetry) does not change; otherwise they are measured min-max on the float weight
  (the imported, dequantized one);
* biases are derived afterwards (input scale x weight scale) by ``PassiveParameters``.

Points the model lacks are listed in :attr:`FixResult.missing`; ``calibrate`` them with data
(``fix_plan(..., data=...)``) or :func:`fix_plan` raises :class:`~fusekit.errors.NotCalibrated`
naming them when ``require_complete``.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from .audit import _Where
from .dispatch import init_plan
from .errors import NotCalibrated
from .graph import Graph, Slot
from .passes import PassiveParameters, default_pipeline
from .platforms import Platform, get_platform
from .quant import QuantPlan, QuantState, TensorQuantConfig, minmax_to_scale_offset

__all__ = ["FixResult", "PointChange", "fix_plan"]


@attrs.frozen
class PointChange:
    """What :func:`fix_plan` did at one quantization point of the platform's plan.

    ``action``: ``"kept"`` (the model's scale), ``"converted"`` (the model's range in the
    platform's scheme), ``"merged"`` (an aligned group: the range covering its members),
    ``"weights"`` (measured on the weight: its scheme changed), ``"missing"`` (no scale in the
    model: calibrate), ``"removed"`` (the model's Q/DQ on a tensor the platform leaves float).
    """

    action: str
    tensor: str
    slot: Slot | None
    detail: str = ""

    def line(self) -> str:
        """One human line."""
        where = f" ({self.slot})" if self.slot is not None else ""
        return f"{self.action:9s} {self.tensor}{where}{': ' + self.detail if self.detail else ''}"


@attrs.frozen
class FixResult:
    """The fixed plan and what changed, point by point."""

    plan: QuantPlan
    changes: tuple[PointChange, ...]

    @property
    def missing(self) -> tuple[PointChange, ...]:
        """Points of the platform's plan the model has no scale for."""
        return tuple(c for c in self.changes if c.action == "missing")

    def counts(self) -> dict[str, int]:
        """``{action: count}``."""
        out: dict[str, int] = {}
        for c in self.changes:
            out[c.action] = out.get(c.action, 0) + 1
        return dict(sorted(out.items()))


def _range(cfg: TensorQuantConfig, scale: Any, offset: Any) -> tuple[float, float]:
    """The float range a per-tensor (scale, zero point) represents under ``cfg``."""
    s = float(np.max(np.asarray(scale, np.float64)))
    z = float(np.round(np.max(np.asarray(offset, np.float64)))) if offset is not None else 0.0
    return s * (float(cfg.quant_min) - z), s * (float(cfg.quant_max) - z)


def _same_scheme(model: TensorQuantConfig, want: TensorQuantConfig, n_scales: int) -> bool:
    per_channel = n_scales > 1
    if per_channel != want.policy.per_channel:
        return False
    if per_channel and model.channel_axis != want.channel_axis:
        return False
    if model.num_bits != want.num_bits or model.quant_min != want.quant_min:
        return False
    asymmetric = model.offset is not None and bool(np.any(model.offset != 0))
    return not (want.policy.symmetric and asymmetric)


def fix_plan(
    graph: Graph,
    plan: QuantPlan,
    platform: Platform | str,
    *,
    data: Any = None,
    dispatch: str = "all",
    require_complete: bool = True,
) -> FixResult:
    """The platform's plan for ``graph`` with the scales of ``plan`` (see the module docstring).

    ``data`` (anything :func:`fusekit.calibrate.calibrate` reads) calibrates the points the
    model lacks; without it such points raise :class:`~fusekit.errors.NotCalibrated` naming
    them (``require_complete=False`` returns the incomplete plan instead, for a summary).
    """
    p = get_platform(platform)
    want = default_pipeline(p).run(graph, init_plan(graph, p, dispatch)).plan
    have = _Where(plan, require_scales=True)
    idx = graph.index
    st, names = idx.slot_tensor, idx.tensor_names
    roots = want.root_ids()
    follow = want.follower_ids()
    configs = want.configs
    members: dict[int, list[int]] = {}
    for sid, r in enumerate(roots):
        if r >= 0:
            members.setdefault(r, []).append(sid)
    from .export import _constant_tensors

    consts = _constant_tensors(graph)  # initializers and Constant outputs: weights

    def model_root(sid: int) -> int | None:
        got = have.reads.get(sid)
        if got is not None:
            return got
        tid = st[sid]
        if tid < 0:
            return None
        got = have.after.get(tid)
        if got is not None:
            return got
        for c in graph.consumers(names[tid]):
            got = have.reads.get(idx.slot_id(c))
            if got is not None:
                return got
        return None

    e = want.evolver()
    changes: list[PointChange] = []
    for r, group in sorted(members.items()):
        cfg = configs[r]
        if cfg is None or st[r] < 0:
            continue
        # INITIAL roots, and the masters alignment left PASSIVE_INIT (biases come later)
        if cfg.state != QuantState.INITIAL and not (
            cfg.state == QuantState.PASSIVE_INIT and len(group) > 1
        ):
            continue
        slot = idx.slot_key(r)
        t = names[st[r]]
        if st[r] in consts:
            _weight(e, graph, plan, r, cfg, model_root(r), slot, t, changes)
            continue
        followers = follow.get(r, [])
        # the aligned members (FOLLOW links) and the root; overlapped members (a fused or
        # passive op's slots) take the root's scale, whatever the model gave them
        aligned = [r, *followers] if followers else []
        sources = {m for m in map(model_root, aligned) if m is not None}
        if len(sources) > 1:  # an aligned group the model quantizes apart: cover every range
            lo, hi = 0.0, 0.0
            for m in sorted(sources):
                mc = plan.configs[m]
                a, b = _range(mc, mc.scale, mc.offset)
                lo, hi = min(lo, a), max(hi, b)
            sc, off = minmax_to_scale_offset(lo, hi, cfg)
            _set(e, r, cfg, sc, off)
            changes.append(
                PointChange(
                    "merged", t, slot, f"{len(sources)} model scales, range [{lo:.6g}, {hi:.6g}]"
                )
            )
            continue
        mr = model_root(r)
        if mr is None and sources:
            mr = next(iter(sources))  # an aligned group the model quantizes with one scale
        if mr is None:
            changes.append(PointChange("missing", t, slot, "the model does not quantize it"))
            continue
        mc = plan.configs[mr]
        assert mc.scale is not None
        if _same_scheme(mc, cfg, int(mc.scale.size)):
            _set(e, r, cfg, mc.scale, mc.offset)
            changes.append(PointChange("kept", t, slot, f"scale {_fmt(mc.scale)}"))
        else:
            lo, hi = _range(mc, mc.scale, mc.offset)
            sc, off = minmax_to_scale_offset(lo, hi, cfg)
            _set(e, r, cfg, sc, off)
            changes.append(
                PointChange("converted", t, slot, f"range [{lo:.6g}, {hi:.6g}] -> scale {sc:.6g}")
            )
    # followers of a master that now has a scale quantize with it (PASSIVE_INIT -> PASSIVE)
    cfgs = e.configs
    for sid, r in enumerate(roots):
        c = cfgs[sid]
        if (
            r >= 0
            and r != sid
            and c is not None
            and c.state == QuantState.PASSIVE_INIT
            and cfgs[r].scale is not None
        ):
            e.set_state(sid, QuantState.PASSIVE)
    want_tensors = _Where(want, require_scales=False).quantized_tensors
    for tid in sorted(have.quantized_tensors - want_tensors):
        changes.append(PointChange("removed", names[tid], None, "the platform leaves it float"))
    fixed = e.persistent()
    missing = [c for c in changes if c.action == "missing"]
    if missing and data is not None:
        from .calibrate import calibrate

        fixed = calibrate(graph, fixed, data)
        changes = [
            attrs.evolve(c, action="calibrated", detail="measured on the data")
            if c.action == "missing"
            else c
            for c in changes
        ]
    else:
        if missing and require_complete:
            listed = ", ".join(c.tensor for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise NotCalibrated(
                f"{len(missing)} quantization point(s) of {p.name} are not in the model: "
                f"{listed}{more}; give calibration data (--calib) to measure them",
                missing[0].slot,
            )
        fixed = PassiveParameters(p).run(graph, fixed).plan
    return FixResult(fixed, tuple(changes))


def _fmt(scale: Any) -> str:
    a = np.asarray(scale).reshape(-1)
    return f"{float(a[0]):.6g}" if a.size == 1 else f"{a.size} channel scales"


def _set(e: Any, sid: int, cfg: TensorQuantConfig, scale: Any, offset: Any) -> None:
    state = QuantState.PASSIVE if cfg.state == QuantState.PASSIVE_INIT else QuantState.ACTIVATED
    e.set_cfg(sid, cfg.with_scale(scale, offset).with_state(state))


def _weight(
    e: Any,
    graph: Graph,
    plan: QuantPlan,
    sid: int,
    cfg: TensorQuantConfig,
    mr: int | None,
    slot: Slot,
    t: str,
    changes: list[PointChange],
) -> None:
    """A weight keeps its integers when the scheme is unchanged, else is measured min-max."""
    if mr is not None:
        mc = plan.configs[mr]
        if mc.scale is not None and _same_scheme(mc, cfg, int(mc.scale.size)):
            _set(e, sid, cfg, mc.scale, mc.offset)
            changes.append(PointChange("kept", t, slot, "integer weights unchanged"))
            return
    from .export import _const_value

    value = _const_value(graph, t)
    if value is None:  # a constant fusekit cannot read: leave it to calibration
        changes.append(PointChange("missing", t, slot, "a constant fusekit cannot read"))
        return
    w = np.asarray(value, np.float32)
    if cfg.policy.per_channel and cfg.channel_axis is not None and w.ndim:
        ax = cfg.channel_axis % w.ndim
        flat = np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)
        pairs = [minmax_to_scale_offset(float(r.min()), float(r.max()), cfg) for r in flat]
        scale = np.array([s for s, _ in pairs], np.float32)
        offset = np.array([o for _, o in pairs], np.float32)
    else:
        s, o = minmax_to_scale_offset(float(w.min()), float(w.max()), cfg)
        scale, offset = np.float32(s), np.float32(o)
    _set(e, sid, cfg, scale, offset)
    why = "the model leaves it float" if mr is None else "its scheme changes"
    changes.append(PointChange("weights", t, slot, f"measured min-max: {why}"))
