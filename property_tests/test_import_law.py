"""The import law, at the strength export allows.

* For every graph, export is a fixed point of import: re-exporting the import of an export gives
  the same export (same float graph, points, scales, zero points, axes, sharing groups).
* When the export folds nothing (no BatchNormalization folded into its Conv/Gemm: the folded
  model no longer holds the BN, nothing can bring it back), importing it gives back the same
  graph and the same plan placement.
* FP8 exports are refused by the importer (it reads integer Q/DQ only), with
  UnsupportedQuantization, never a wrong plan.
"""

from __future__ import annotations

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit
from fusekit import Graph
from fusekit.export import build_qdq
from fusekit.passes import default_pipeline
from fusekit.qimport import import_quantized, placement

from .conftest import examples
from .strategies import CORRECTED, StandInCalibration, graphs, rule_sets

_FLOAT8 = (onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2)


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
    if any(t.data_type in _FLOAT8 for t in model.graph.initializer):
        with pytest.raises(fusekit.UnsupportedQuantization, match="float8"):
            import_quantized(model)
        return
    got = import_quantized(model)
    assert got.dangling == ()
    # export is a fixed point of import, folded or not
    again = import_quantized(
        build_qdq(got.graph, got.plan, quantized_weights=quantized_weights).model
    )
    assert again.dangling == ()
    assert again.graph.fingerprint() == got.graph.fingerprint()
    first, second = placement(got.plan), placement(again.plan)
    assert second.points == first.points
    assert second.groups == first.groups
    names = {n.name for n in model.graph.node}
    if any(op.op_type == "BatchNormalization" and op.name not in names for op in g):
        return  # folded at export: the BN is gone from the model, identity cannot hold
    assert same_graph(g, got.graph)
    want = placement(plan)
    have = placement(got.plan)
    assert have.points == want.points
    assert have.groups == want.groups
