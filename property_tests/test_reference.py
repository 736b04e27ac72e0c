"""Law 9: fusekit's PPQ-compatible rule sets agree with an independent PPQ-style model.

The model (``reference_model.py``) is mutable, pointer-based and written from the PPQ
behaviour notes, not from fusekit. On every generated graph and every ``ppq066_*`` rule set
(with PPQ's conservative dispatcher, the default one and random dispatch tables) both are run
stage by stage, as PPQ's default pipeline does: QuantizeFusionPass, QuantizeSimplifyPass, the
goldens' stand-in calibration, QuantAlignmentPass, PassiveParameterQuantizePass; after each
stage every slot's state and root must agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fusekit
from fusekit import Graph, Platform, QuantPlan, QuantProperty, QuantState
from fusekit import testing as ft
from fusekit.passes import Alignment, PassiveParameters, Simplify, fuse

from . import reference_model as rm
from .strategies import COMPAT, graphs, initial_plans, mixed_scheme_plans


def reference_of(graph: Graph, plan: QuantPlan) -> rm.RefModel:
    """The reference model of a graph and plan, built from plain data only."""
    slots: dict[str, dict[str, Any]] = {}
    for s in plan.slots():
        if s.side == "in" and not graph.tensor_of(s):
            continue  # an omitted optional input: PPQ has no config for it
        c = plan[s]
        slots[str(s)] = {
            "state": int(c.state),
            "scheme": (
                c.quant_min,
                c.quant_max,
                c.policy.flags,
                c.num_bits,
                c.exponent_bits,
                c.channel_axis,
                int(c.rounding),
            ),
            "scale": None if c.scale is None else np.array(c.scale),
            "offset": None if c.offset is None else np.array(c.offset),
            "qmin": c.quant_min,
            "qmax": c.quant_max,
            "asym": c.policy.has(QuantProperty.ASYMMETRICAL),
            "per_channel": c.policy.per_channel,
            "floating": c.policy.floating,
            "power_of_2": c.policy.has(QuantProperty.POWER_OF_2),
        }
    model = rm.build(
        [(op.name, op.op_type, op.inputs, op.outputs) for op in graph],
        graph.outputs,
        graph.initializers,
        slots,
        {op.name: plan.platform_of(op.name) for op in graph},
    )
    for s in plan.slots():  # links already in the plan (the stateful test starts from some)
        parent = plan.parent(s)
        cfgs = model.configs()
        if parent is not None and str(s) in cfgs and str(parent[0]) in cfgs:
            cfgs[str(s)].dominator = cfgs[str(parent[0])]
    return model


def reference_platform(p: Platform) -> rm.RefPlatform:
    """The op-type lists of a rule set, as plain sets."""
    al = p.alignment
    return rm.RefPlatform(
        p.computing_types,
        p.activation_types,
        p.passive_types,
        al.get("elementwise", ()),
        al.get("concat", ()),
        al.get("resize", ()),
    )


def fake_calibration(plan: QuantPlan) -> QuantPlan:
    """The PPQ goldens' stand-in calibration: every INITIAL slot gets scale 1, offset 0."""
    ev = plan.evolver()
    for s in plan.slots():
        c = plan[s]
        if c.state == QuantState.INITIAL:
            ev.set_config(s, c.with_scale(1.0, 0.0).with_state(QuantState.ACTIVATED))
    return ev.persistent()


def disagreement(plan: QuantPlan, model: rm.RefModel) -> dict[str, Any]:
    """Slots whose (state, root) differ between fusekit and the model."""
    ours = ft.states_and_roots(plan)
    theirs = model.states_and_roots()
    return {k: (ours.get(k), v) for k, v in theirs.items() if ours.get(k) != v}


def first_disagreement(g: Graph, p: Platform, plan: QuantPlan) -> str | None:
    """Run fusekit and the model stage by stage; the first stage after which some slot's state
    or root differs (with the slots), or None when they agree throughout."""
    model, rp = reference_of(g, plan), reference_platform(p)
    assert set(model.states_and_roots()) <= set(ft.states_and_roots(plan))

    model.fusion(rp)
    plan = fuse(g, plan, p).plan
    if diff := disagreement(plan, model):
        return f"after QuantizeFusionPass: {diff}"

    model.simplify()
    plan = Simplify(p).run(g, plan).plan
    if diff := disagreement(plan, model):
        return f"after QuantizeSimplifyPass: {diff}"

    model.fake_calibration()
    plan = fake_calibration(plan)
    model.alignment(rp)
    plan = Alignment(p).run(g, plan).plan
    if diff := disagreement(plan, model):
        return f"after QuantAlignmentPass: {diff}"

    model.passive_parameters(rp)
    plan = PassiveParameters(p).run(g, plan).plan
    if diff := disagreement(plan, model):
        return f"after PassiveParameterQuantizePass: {diff}"
    for key, cfg in model.configs().items():
        if cfg.state == rm.PASSIVE and key.endswith("|in|2") and cfg.dominator is cfg:
            ours = plan.scale_of(fusekit.Slot.parse(key))
            if ours is None or not np.allclose(ours, cfg.scale, rtol=1e-6):
                return f"bias scale of {key}: {ours} vs {cfg.scale}"
    return None


@given(graphs(), st.sampled_from(COMPAT), st.data())
def test_law9_reference_model_agrees(g: Graph, name: str, data: st.DataObject) -> None:
    """Stage by stage, fusekit (ppq066 rule sets) and the PPQ-style model make the same links;
    half the time on a mixed-scheme plan, where simplify must leave edges between two schemes
    alone (as PPQ's ``is_same_scheme`` check does)."""
    p = fusekit.get_platform(name)
    plan = data.draw(initial_plans(g, p))
    if data.draw(st.booleans()):
        plan = data.draw(mixed_scheme_plans(plan))
    assert first_disagreement(g, p, plan) is None


def test_the_reference_model_can_disagree() -> None:
    """The comparison is not vacuous: the corrected trt_int8 rule set, which differs from PPQ
    on purpose (graph outputs block fusion), disagrees with the model on a Conv -> Relu whose
    Conv output is also a graph output."""
    s = (1, 4, 5, 5)
    g = Graph.build(
        [fusekit.Op("c", "Conv", ("x", "w"), ("c",)), fusekit.Op("r", "Relu", ("c",), ("r",))],
        {"x": fusekit.TensorType(1, s)},
        ["r", "c"],
        [fusekit.Initializer.from_array("w", np.full((4, 4, 1, 1), 0.1, np.float32))],
    )
    plan = fusekit.init_plan(g, "trt_int8")
    model = reference_of(g, plan)
    model.fusion(reference_platform(fusekit.get_platform("trt_int8")))
    assert disagreement(fuse(g, plan, "trt_int8").plan, model) != {}
    ppq = fusekit.init_plan(g, "ppq066_trt_int8")
    model = reference_of(g, ppq)
    model.fusion(reference_platform(fusekit.get_platform("ppq066_trt_int8")))
    assert disagreement(fuse(g, ppq, "ppq066_trt_int8").plan, model) == {}
