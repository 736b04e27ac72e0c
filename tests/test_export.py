"""QDQ ONNX export, the plan JSON and the TensorRT dynamic-range file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusekit
from fusekit import NotCalibrated, QuantPlan, QuantState, Slot
from fusekit.calibrate import Calibration, calibrate
from fusekit.export import (
    build_qdq,
    count_qdq,
    dequantize_values,
    dynamic_ranges,
    export_qdq,
    quant_points,
    quantize_values,
    save_qdq,
    save_ranges,
)
from fusekit.plan_io import load_plan, save_plan

from .test_calibrate import _model, _w, branch_add_model, conv_relu_model, samples


def calibrated(model: bytes, platform: str, n: int = 3, shape: Any = (1, 3, 8, 8)) -> Any:
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, platform)
    data = samples(n, shape)
    return g, fusekit.default_pipeline(platform, calibration=Calibration(data)).run(g, plan).plan


def session(model: onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray[Any, Any]]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# --------------------------------------------------------------------------------------------
# placement


def test_conv_relu_exports_dq_conv_relu_q_dq() -> None:
    g, plan = calibrated(conv_relu_model(), "trt_int8")
    m = export_qdq(g, plan)
    onnx.checker.check_model(m)
    prod = producers(m)
    conv1, relu1, conv2 = node(m, "conv1"), node(m, "relu1"), node(m, "conv2")
    # DQ -> Conv (data and weight), no Q/DQ between Conv and Relu, Q -> DQ after the Relu
    assert prod[conv1.input[0]].op_type == "DequantizeLinear"
    assert prod[prod[conv1.input[0]].input[0]].op_type == "QuantizeLinear"
    w_dq = prod[conv1.input[1]]
    assert w_dq.op_type == "DequantizeLinear" and w_dq.input[0] in inits(m)
    assert inits(m)[w_dq.input[0]].dtype == np.int8
    assert helper.get_attribute_value(w_dq.attribute[0]) == 0  # per output channel
    assert relu1.input[0] == conv1.output[0]
    assert prod[conv2.input[0]].op_type == "DequantizeLinear"
    assert prod[prod[conv2.input[0]].input[0]].input[0] == relu1.output[0]
    # trt_int8 keeps the bias float
    assert conv1.input[2] == "b1"
    assert count_qdq(m) == {"QuantizeLinear": 3, "DequantizeLinear": 5}
    # names the user knows survive: graph input, output, ops
    assert [i.name for i in m.graph.input] == ["x"]
    assert [o.name for o in m.graph.output] == ["y"]
    assert prod["y"].op_type == "DequantizeLinear"  # the graph output is the quantized value


def test_export_runs_and_matches_its_own_quantization_grid() -> None:
    g, plan = calibrated(conv_relu_model(), "trt_int8")
    res = build_qdq(g, plan)
    m = res.model
    s = float(plan.scale_of(Slot("relu1", "out", 0)))
    float_name = node(m, "relu1").output[0]
    m.graph.output.extend([onnx.ValueInfoProto(name=float_name), onnx.ValueInfoProto(name="r1")])
    x = samples(1)[0]
    y, before, after = session(m).run(["y", float_name, "r1"], x)
    q = np.round(before / s)
    np.testing.assert_allclose(after, np.clip(q, -128, 127) * s, rtol=0, atol=1e-6)
    ref = session(onnx.load_from_string(conv_relu_model())).run(["y"], x)[0]
    err = np.sum((ref - y) ** 2) / np.sum(ref**2)
    assert 10 * np.log10(1 / err) > 25  # quantized, but close
    assert res.activation_pairs == 3 and res.parameter_dqs == 2 and res.opset == 13


def test_int8_weights_are_the_integers_a_q_node_would_produce() -> None:
    g, plan = calibrated(conv_relu_model(), "trt_int8")
    a, b = build_qdq(g, plan), build_qdq(g, plan, quantized_weights=False)
    assert b.q_nodes == a.q_nodes + 2 and b.parameter_dqs == 0
    x = samples(1, seed=3)[0]
    ya = session(a.model).run(None, x)[0]
    yb = session(b.model).run(None, x)[0]
    np.testing.assert_array_equal(ya, yb)
    w = numpy_helper.to_array(onnx.load_from_string(conv_relu_model()).graph.initializer[0])
    cfg = plan[Slot("conv1", "in", 1)]
    q = quantize_values(w, cfg, cfg.scale, cfg.offset, 0)
    stored = next(v for k, v in inits(a.model).items() if k.startswith("w1_quantized"))
    np.testing.assert_array_equal(stored, q.astype(np.int8))
    deq = dequantize_values(q, cfg.scale, cfg.offset, 0)
    assert np.max(np.abs(deq - w)) <= float(np.max(cfg.scale)) / 2 + 1e-7


def test_int32_bias_when_the_plan_says_so() -> None:
    g, plan = calibrated(conv_relu_model(), "ort_int8")
    m = export_qdq(g, plan)
    prod = producers(m)
    dq = prod[node(m, "conv1").input[2]]
    assert dq.op_type == "DequantizeLinear"
    values = inits(m)
    assert values[dq.input[0]].dtype == np.int32
    assert values[dq.input[2]].dtype == np.int32 and not values[dq.input[2]].any()
    expected = plan[Slot("conv1", "in", 1)].scale * float(plan.scale_of(Slot("conv1", "in", 0)))
    np.testing.assert_allclose(values[dq.input[1]], expected, rtol=1e-6)
    assert session(m, optimize=True).run(None, samples(1)[0])[0].shape == (1, 2, 8, 8)


def test_group_members_share_one_scale_initializer() -> None:
    g, plan = calibrated(branch_add_model(), "trt_int8", shape=(1, 3, 6, 6))
    m = export_qdq(g, plan)
    prod = producers(m)
    add = node(m, "add")
    pairs = [prod[prod[t].input[0]] for t in add.input]  # DQ <- Q of each Add input
    assert all(p.op_type == "QuantizeLinear" for p in pairs)
    assert pairs[0].input[1] == pairs[1].input[1] and pairs[0].input[2] == pairs[1].input[2]
    # one scale for the whole aligned group: the master's
    master = float(plan.scale_of(Slot("add", "in", 0)))
    assert float(inits(m)[pairs[0].input[1]]) == pytest.approx(master)
    # the graph input read by two convs is quantized once (one shared scale)
    qx = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    assert len(qx) == 1
    session(m).run(None, samples(1, (1, 3, 6, 6))[0])


def test_requantization_gives_q_dq_q_dq() -> None:
    g = fusekit.load(conv_relu_model())
    plan = calibrate(g, fusekit.init_plan(g, "trt_int8"), samples(2))  # unfused
    # same tensor, same range: the consumer's pair is the producer's (dropped as identical)
    m = export_qdq(g, plan)
    chain = producers(m)[node(m, "relu1").input[0]]
    assert chain.op_type == "DequantizeLinear"
    assert producers(m)[chain.input[0]].input[0] != producers(m)[chain.input[0]].output[0]
    assert producers(m)[producers(m)[chain.input[0]].input[0]].op_type == "Conv"
    # give the consumer its own scale: a real requantization
    relu_in = Slot("relu1", "in", 0)
    requant = plan.set_scale(relu_in, np.float32(0.5), np.float32(0.0))
    m2 = export_qdq(g, requant)
    prod = producers(m2)
    ops = []
    t = node(m2, "relu1").input[0]
    while t in prod and prod[t].op_type in ("QuantizeLinear", "DequantizeLinear"):
        ops.append(prod[t].op_type)
        t = prod[t].input[0]
    assert ops == ["DequantizeLinear", "QuantizeLinear"] * 2


def test_uncalibrated_plans_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    g = fusekit.load(conv_relu_model())
    plan = fusekit.init_plan(g, "trt_int8")
    target = tmp_path / "out.onnx"
    with pytest.raises(NotCalibrated, match=r"conv1\|in\|0") as e:
        save_qdq(g, plan, target)
    assert e.value.slot == Slot("conv1", "in", 0)
    assert list(tmp_path.iterdir()) == []
    fused = fusekit.default_pipeline("ort_int8").run(g, fusekit.init_plan(g, "ort_int8")).plan
    no_bias = calibrate(g, fused, samples(1), passive_parameters=False)
    with pytest.raises(NotCalibrated, match="PassiveParameters"):
        export_qdq(g, no_bias)


def test_save_qdq_is_atomic_and_loadable(tmp_path: Path) -> None:
    g, plan = calibrated(conv_relu_model(), "ppl_cuda_int8")
    target = tmp_path / "m.onnx"
    res = save_qdq(g, plan, target)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    back = onnx.load(target)
    assert count_qdq(back)["QuantizeLinear"] == res.q_nodes
    with pytest.raises(fusekit.FusekitError):
        save_qdq(g, plan, tmp_path / "missing" / "m.onnx")


def test_export_does_not_mutate_its_inputs() -> None:
    g, plan = calibrated(conv_relu_model(), "ort_int8")
    before = fusekit.to_model(g).SerializeToString()
    configs = [plan[s] for s in plan.slots()]
    a = export_qdq(g, plan).SerializeToString()
    b = export_qdq(g, plan).SerializeToString()
    assert a == b
    assert fusekit.to_model(g).SerializeToString() == before
    assert [plan[s] for s in plan.slots()] == configs


def test_constant_op_weights_become_int8_initializers() -> None:
    w = _w((4, 3, 3, 3), seed=11)
    nodes = [
        helper.make_node("Constant", [], ["w"], "const_w", value=numpy_helper.from_array(w)),
        helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], "relu"),
    ]
    model = _model(nodes, {}, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    g, plan = calibrated(model, "trt_int8")
    m = export_qdq(g, plan)
    assert "Constant" not in {n.op_type for n in m.graph.node}
    dq = producers(m)[node(m, "conv").input[1]]
    assert dq.op_type == "DequantizeLinear" and inits(m)[dq.input[0]].dtype == np.int8
    session(m).run(None, samples(1)[0])


def test_non_float_tensors_are_left_unquantized() -> None:
    nodes = [
        helper.make_node("Mul", ["n", "n"], ["m"], "mul"),
        helper.make_node("Cast", ["m"], ["mf"], "cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "mf"], ["y"], "add"),
    ]
    g = helper.make_graph(
        nodes,
        "ints",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = fusekit.load(model)
    # fusekit's own dispatch infers that 'm' is int64 and never quantizes it
    assert not fusekit.init_plan(graph, "trt_int8").is_quantized("mul")
    # a plan that quantizes it anyway (PPQ's rules, an explicit dispatch): the exporter refuses
    ppq = "ppq066_trt_int8"
    plan = fusekit.init_plan(graph, ppq, dispatch={"mul": ppq, "add": ppq})
    assert plan.is_quantized("mul")
    feeds = [{"x": np.ones((1, 4), np.float32), "n": np.array([3], np.int64)}]
    cal = calibrate(graph, plan, feeds)
    res = build_qdq(graph, cal)
    assert any("is int64, not float" in note for note in res.skipped)
    y = session(res.model).run(None, feeds[0])[0]
    np.testing.assert_allclose(y, np.full((1, 4), 10.0), rtol=0.02)


def test_models_below_opset_13_are_raised_with_their_meaning_kept() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
        helper.make_node("Softmax", ["c"], ["s"], "softmax", axis=1),  # opset 11: 2-D coercion
        helper.make_node("Unsqueeze", ["s"], ["u"], "unsq", axes=[0]),
        helper.make_node("Split", ["u"], ["a", "b"], "split", axis=2, split=[2, 2]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["y"], "clip"),
    ]
    inits_ = {
        "w": _w((4, 3, 1, 1), seed=12),
        "lo": np.array(0.0, np.float32),
        "hi": np.array(0.5, np.float32),
    }
    model = _model(
        nodes,
        inits_,
        [("x", [1, 3, 4, 4])],
        [("y", [1, 1, 2, 4, 4]), ("b", [1, 1, 2, 4, 4])],
        opset=11,
    )
    g = fusekit.load(model)
    x = samples(1, (1, 3, 4, 4))[0]
    ref = session(onnx.load_from_string(model)).run(None, x)
    empty = build_qdq(g, QuantPlan.empty(g))
    assert empty.opset == 13 and empty.q_nodes == 0
    for r, got in zip(ref, session(empty.model).run(None, x)):
        np.testing.assert_allclose(got, r, rtol=1e-6, atol=1e-7)
    plan = calibrate(g, fusekit.init_plan(g, "trt_int8"), samples(2, (1, 3, 4, 4)))
    m = export_qdq(g, plan)
    assert m.opset_import[0].version == 13 and m.ir_version >= 7
    for r, got in zip(ref, session(m).run(None, x)):
        assert np.sum((r - got) ** 2) < 1e-2 * np.sum(r**2)


# --------------------------------------------------------------------------------------------
# counting


def test_quant_points_counts_what_export_places() -> None:
    g = fusekit.load(conv_relu_model())
    plan0 = fusekit.init_plan(g, "trt_int8")
    # unfused: every op quantizes its own inputs and outputs (3 producer + 3 consumer pairs)
    assert quant_points(plan0) == {"activations": 6, "parameters": 2, "total": 8}
    fused = fusekit.default_pipeline("trt_int8").run(g, plan0).plan
    assert quant_points(fused)["activations"] == 3
    cal = calibrate(g, fused, samples(2))
    res = build_qdq(g, cal)
    assert quant_points(cal) == {
        "activations": res.activation_pairs,
        "parameters": res.parameter_dqs,
        "total": res.activation_pairs + res.parameter_dqs,
    }


# --------------------------------------------------------------------------------------------
# JSON


def test_dynamic_ranges_come_from_group_roots(tmp_path: Path) -> None:
    g, plan = calibrated(conv_relu_model(), "trt_int8")
    ranges = dynamic_ranges(plan)
    relu = float(plan.scale_of(Slot("relu1", "out", 0))) * 127
    assert ranges["r1"] == pytest.approx(relu)
    assert ranges["c1"] == pytest.approx(relu)  # fused: the conv output reads the ReLU's range
    assert ranges["x"] == pytest.approx(float(plan.scale_of(Slot("conv1", "in", 0))) * 127)
    assert "w1" not in ranges and "b1" not in ranges
    path = tmp_path / "r.json"
    assert save_ranges(plan, path) == ranges
    assert json.loads(path.read_text()) == pytest.approx(ranges)
    with pytest.raises(NotCalibrated, match="no scale"):
        dynamic_ranges(fusekit.init_plan(g, "trt_int8"))


def test_plan_json_round_trips(tmp_path: Path) -> None:
    g, plan = calibrated(branch_add_model(), "ort_int8", shape=(1, 3, 6, 6))
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    back = load_plan(g, path)
    assert back == plan
    assert export_qdq(g, back).SerializeToString() == export_qdq(g, plan).SerializeToString()


def test_overlapped_edge_has_no_qdq_even_with_calibrated_root() -> None:
    g, plan = calibrated(conv_relu_model(), "ort_int8")
    assert plan[Slot("conv1", "out", 0)].state == QuantState.OVERLAPPED
    m = export_qdq(g, plan)
    q_inputs = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert "c1" not in q_inputs and all(not t.startswith("c1") for t in q_inputs)


def _conv_bn_relu_bytes() -> bytes:
    """x -> Conv -> BatchNormalization -> Relu -> y (random weight, a non-trivial BatchNorm)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w")]
    for name, v in (("g", 1.5), ("b", 0.2), ("m", 0.1), ("v", 2.0)):
        inits.append(numpy_helper.from_array(np.full(4, v, np.float32), name))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv", kernel_shape=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], "bn"),
        helper.make_node("Relu", ["n"], ["y"], "relu"),
    ]
    src = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    return src.SerializeToString()


class TestBatchNormNotFoldedOverAQuantizedOutput:
    """Issue 15 follow-up: ``trt_int8`` without epilogue fusion failed ``onnx.checker`` on
    ppocrv4_rec (``conv2d_185.tmp_0_float`` read before it is written).

    Without the epilogue pass the Conv's own output is a quantization point and the
    BatchNormalization reads it (overlapped: it shares the point's scale). The exporter folded
    the BatchNormalization into the Conv anyway, so the Conv wrote the BatchNormalization's
    output and the QuantizeLinear of the Conv output read a tensor nothing writes. A tensor
    that is quantized must still be computed: no fold there.
    """

    def _export(self) -> tuple[fusekit.Graph, QuantPlan, onnx.ModelProto]:
        g, plan, m, _ = self._build()
        return g, plan, m

    def _build(self) -> tuple[fusekit.Graph, QuantPlan, onnx.ModelProto, tuple[str, ...]]:
        g = fusekit.load(_conv_bn_relu_bytes())
        rng = np.random.default_rng(1)
        data = [{"x": rng.normal(size=(1, 4, 5, 5)).astype(np.float32)} for _ in range(3)]
        pipe = fusekit.default_pipeline("trt_int8", calibration=Calibration(data))
        plan = pipe.without("epilogue_fusion").run(g, fusekit.init_plan(g, "trt_int8")).plan
        res = build_qdq(g, plan)  # runs onnx.checker (topological order included)
        return g, plan, res.model, res.skipped

    def test_the_conv_output_is_a_quantization_point_here(self) -> None:
        _, plan, _ = self._export()
        assert plan[Slot("conv", "out", 0)].state is QuantState.ACTIVATED
        assert plan[Slot("bn", "in", 0)].state is QuantState.OVERLAPPED

    def test_exports_sorted_and_keeps_the_batchnorm(self) -> None:
        _, _, m = self._export()
        written = {t.name for t in m.graph.initializer} | {i.name for i in m.graph.input}
        for n in m.graph.node:
            assert all(t in written for t in n.input if t), n.name
            written.update(n.output)
        assert [n.name for n in m.graph.node if n.op_type == "BatchNormalization"] == ["bn"]
        q_inputs = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
        conv_out = node(m, "conv").output[0]
        assert conv_out in q_inputs  # the Conv output is quantized, as the plan says

    def test_says_why_it_did_not_fold(self) -> None:
        notes = self._build()[3]
        assert any(n.startswith("bn: not folded") and "quantized" in n for n in notes), notes

    def test_the_export_runs_close_to_float(self) -> None:
        g, _, m = self._export()
        from fusekit.evaluate import evaluate

        rng = np.random.default_rng(2)
        data = [{"x": rng.normal(size=(1, 4, 5, 5)).astype(np.float32)} for _ in range(2)]
        assert evaluate(g, m, data).min_sqnr > 20.0
