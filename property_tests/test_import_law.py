"""The import law: importing fusekit's own QDQ export gives back the same graph and the same
plan placement (points, scales, zero points, axes, sharing groups)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit
from fusekit import Graph
from fusekit.export import build_qdq
from fusekit.passes import default_pipeline
from fusekit.qimport import import_quantized, placement

from .conftest import examples
from .strategies import CORRECTED, StandInCalibration, graphs, rule_sets


def _op_view(op: fusekit.Op) -> tuple[object, ...]:
    return (op.name, op.op_type, op.domain, op.inputs, op.outputs, op.attributes)


def same_graph(g: Graph, got: Graph) -> bool:
    """The same ops, inputs, outputs and initializer names, except that a ``Constant`` op
    holding a weight the export stored as an integer initializer comes back as an initializer
    (the export drops the Constant; nothing says it was one)."""
    folded = {
        op.name
        for op in g
        if op.op_type == "Constant" and op.outputs[0] in got.initializers and op.name not in got.ops
    }
    if {n for n in g.ops if n not in folded} != set(got.ops):
        return False
    if any(_op_view(g.ops[n]) != _op_view(got.ops[n]) for n in got.ops):
        return False
    consts = {g.ops[n].outputs[0] for n in folded}
    return (
        got.inputs == g.inputs
        and got.outputs == g.outputs
        and set(got.initializers) == set(g.initializers) | consts
    )


@settings(max_examples=examples(0.5))
@given(
    graphs(),
    st.one_of(st.sampled_from(CORRECTED).map(fusekit.get_platform), rule_sets()),
    st.booleans(),
)
def test_import_of_own_export_is_identity(
    g: Graph, p: fusekit.Platform, quantized_weights: bool
) -> None:
    plan = fusekit.init_plan(g, p)
    plan = default_pipeline(p, calibration=StandInCalibration()).run(g, plan).plan
    model = build_qdq(g, plan, quantized_weights=quantized_weights).model
    got = import_quantized(model)
    assert got.dangling == ()
    assert same_graph(g, got.graph)
    want = placement(plan)
    have = placement(got.plan)
    assert have.points == want.points
    assert have.groups == want.groups
