"""Law 11: the QDQ export of a fused, calibrated plan is a valid model that ONNX Runtime runs,
with no Q/DQ pair on an overlapped (fused or shared) edge."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit
from fusekit import Graph, QuantState
from fusekit.export import build_qdq
from fusekit.passes import default_pipeline

from .conftest import examples
from .strategies import COMPAT, CORRECTED, StandInCalibration, graphs, rule_sets


def qdq_on_overlapped_edges(g: Graph, plan: fusekit.QuantPlan, model: onnx.ModelProto) -> list[str]:
    """Overlapped input slots that got a Q/DQ pair of their own in the exported model."""
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    bad = []
    for s in plan.slots():
        if s.side != "in" or plan[s].state != QuantState.OVERLAPPED or not g.tensor_of(s):
            continue
        if s.op not in nodes:  # a BatchNormalization folded into its Conv at export
            assert g.ops[s.op].op_type == "BatchNormalization", f"{s.op} vanished from the export"
            continue
        t = g.tensor_of(s)
        # it reads the tensor itself, or the one pair its group shares on that tensor
        # (the consumers of a graph input share one pair)
        allowed = {t} | {
            nodes[q.op].input[q.index]
            for q in plan.group(s)
            if q.side == "in" and q != s and g.tensor_of(q) == t
        }
        if nodes[s.op].input[s.index] not in allowed:
            bad.append(f"{s} reads {nodes[s.op].input[s.index]}")
            continue
        src = g.producer(t)
        fused = src is not None and plan.is_quantized(src.op)
        writer = src.op if src is not None else ""
        if src is not None and writer not in nodes:  # a folded BatchNormalization: its Conv
            folded_into = g.producer(g.ops[writer].inputs[0])
            writer = folded_into.op if folded_into is not None else writer
        if fused and plan[src].state == QuantState.OVERLAPPED and producer[t].name != writer:
            bad.append(f"{s}: a {producer[t].op_type} sits on the fused edge from {src}")
    return bad


def test_law11_catches_a_qdq_pair_on_a_fused_edge() -> None:
    """Conv -> Relu is fused; a Q/DQ pair slipped between them is reported."""
    s = (1, 4, 5, 5)
    w = fusekit.Initializer.from_array("w", np.full((4, 4, 1, 1), 0.1, np.float32))
    g = Graph.build(
        [fusekit.Op("c", "Conv", ("x", "w"), ("a",)), fusekit.Op("r", "Relu", ("a",), ("y",))],
        {"x": fusekit.TensorType(1, s)},
        ["y"],
        [w],
        {"a": fusekit.TensorType(1, s), "y": fusekit.TensorType(1, s)},
    )
    plan = (
        default_pipeline("trt_int8", StandInCalibration())
        .run(g, fusekit.init_plan(g, "trt_int8"))
        .plan
    )
    model = build_qdq(g, plan).model
    assert qdq_on_overlapped_edges(g, plan, model) == []
    relu = next(n for n in model.graph.node if n.name == "r")
    relu.input[0] = "a_dq"
    model.graph.node.extend(
        [
            onnx.helper.make_node("QuantizeLinear", ["a", "y_scale"], ["a_q"], name="q"),
            onnx.helper.make_node("DequantizeLinear", ["a_q", "y_scale"], ["a_dq"], name="dq"),
        ]
    )
    assert qdq_on_overlapped_edges(g, plan, model) == ["r|in|0 reads a_dq"]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    # ORT_ENABLE_ALL is avoided on purpose: ONNX Runtime 1.32's QDQ propagation rewrites a
    # Q/DQ pair in front of a Transpose/Reshape of an opset-21 model into a QuantizeLinear it
    # then rejects itself ("output_dtype INT8 does not match y_zero_point type UINT8"); the
    # model is valid (onnx.checker, ORT_ENABLE_BASIC). See the report of issue 5.
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@settings(max_examples=examples(0.5))
@given(
    graphs(),
    st.one_of(st.sampled_from(CORRECTED + COMPAT).map(fusekit.get_platform), rule_sets()),
    st.integers(0, 2**31 - 1),
)
def test_law11_export(g: Graph, p: fusekit.Platform, seed: int) -> None:
    plan = fusekit.init_plan(g, p)
    plan = default_pipeline(p, calibration=StandInCalibration()).run(g, plan).plan
    res = build_qdq(g, plan)  # runs onnx.checker; raises ExportError otherwise
    model = res.model
    onnx.checker.check_model(model, full_check=True)

    assert qdq_on_overlapped_edges(g, plan, model) == []

    rng = np.random.default_rng(seed)
    feeds = {
        t: rng.normal(size=g.value_types[t].shape).astype(np.float32)
        for t in g.inputs
        if t not in g.initializers
    }
    outs = _session(model).run(None, feeds)
    ref = _session(fusekit.to_model(g)).run(None, feeds)
    assert [o.shape for o in outs] == [r.shape for r in ref]
