"""Law 10: plan JSON and ONNX round trips are exact for generated graphs and plans."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

import fusekit
from fusekit import Graph, Initializer, Op, Platform, QuantPlan, TensorType
from fusekit import testing as ft
from fusekit.passes import default_pipeline
from fusekit.plan_io import plan_from_json, plan_to_json

from .strategies import StandInCalibration, any_platforms, cases, graphs


@given(cases(any_platforms(), edited=True), st.booleans())
def test_law10_plan_json_round_trip(
    case: tuple[Graph, Platform, QuantPlan], run_pipeline: bool
) -> None:
    """``plan_from_json(g, plan_to_json(plan)) == plan``: configs (scales bit for bit), links
    and dispatch, for fresh, edited, calibrated and fused plans."""
    g, p, plan = case
    if run_pipeline:
        plan = default_pipeline(p, calibration=StandInCalibration()).run(g, plan).plan
    back = plan_from_json(g, plan_to_json(plan))
    assert back == plan
    assert ft.plan_snapshot(back) == ft.plan_snapshot(plan)
    assert plan_to_json(back) == plan_to_json(plan)


def _zero_d_graph() -> Graph:
    """The counterexample Hypothesis found: a scalar (0-d) initializer and Constant value."""
    s = (1, 4, 5, 5)
    ops = [
        Op("k", "Constant", (), ("half",), {"value": np.asarray(np.float32(0.5))}),
        Op("m", "Mul", ("x", "half"), ("a",)),
        Op("clip", "Clip", ("a", "lo", "hi"), ("y",)),
    ]
    inits = [
        Initializer.from_array("lo", np.float32(0.0)),
        Initializer.from_array("hi", np.float32(6.0)),
    ]
    return Graph.build(
        ops, {"x": TensorType(1, s)}, ["y"], inits, {"a": TensorType(1, s), "y": TensorType(1, s)}
    )


@example(_zero_d_graph())
@given(graphs())
def test_law10_onnx_round_trip(g: Graph) -> None:
    """``load(to_model(g)) == g`` (ops, attributes, order, initializers, types), and writing the
    loaded graph again gives the same bytes."""
    model = fusekit.to_model(g)
    back = fusekit.load(model.SerializeToString())
    fusekit.check_invariants(back)
    assert back.order == g.order
    assert back.inputs == g.inputs and back.outputs == g.outputs
    assert back.value_types == g.value_types
    for name, init in g.initializers.items():
        assert back.initializers[name].dims == init.dims, name
        assert back.initializers[name] == init, name
    for op in g:
        assert back.ops[op.name] == op, op.name
    assert back == g
    assert fusekit.to_model(back).SerializeToString() == model.SerializeToString()
