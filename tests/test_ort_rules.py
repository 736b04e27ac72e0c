"""The corrected ``ort_int8`` rule set against onnxruntime's own QDQ optimizer.

Each test exports a tiny model, lets onnxruntime optimize it (``ORT_ENABLE_EXTENDED``, what a
deployment runs) and reads the optimized graph: which ops became int8 kernels, which stayed
float. docs/platforms.md lists the onnxruntime source behind each expectation.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import fusekit
from fusekit.calibrate import Calibration
from fusekit.errors import InvalidPlatform
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq, export_qdq
from fusekit.rulefile import platform_from_dict, platform_to_dict

from .test_calibrate import _model, _w, concat_model, conv_relu_model, samples


def optimized_ops(model: onnx.ModelProto) -> Counter[str]:
    """Op types of onnxruntime's optimized graph of ``model`` (CPU provider)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "optimized.onnx")
        so.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(path).graph.node)


def exported(
    model: bytes, platform: str | fusekit.Platform = "ort_int8", n: int = 4, **init: Any
) -> Any:
    g = fusekit.load(model)
    shape = tuple(g.value_types[g.inputs[0]].shape)  # type: ignore[union-attr,arg-type]
    data = samples(n, shape)
    plan = fusekit.init_plan(g, platform, **init)
    res = fusekit.default_pipeline(platform, calibration=Calibration(data)).run(g, plan)
    return g, res.plan, export_qdq(g, res.plan), data


def q_zero_points(model: onnx.ModelProto, tensor: str) -> tuple[int, np.dtype[Any]]:
    """The zero point (value, dtype) of the QuantizeLinear reading ``tensor``."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    zp = inits[q.input[2]]
    return int(zp.reshape(-1)[0]), zp.dtype


def conv_bn_relu_model() -> bytes:
    """x -> conv1 -> bn1 -> relu1 -> conv2 (no bias) -> bn2 -> relu2 -> conv3 -> y."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"], "bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], "conv2"),
        helper.make_node("BatchNormalization", ["c2", "g2", "be2", "m2", "v2"], ["n2"], "bn2"),
        helper.make_node("Relu", ["n2"], ["r2"], "relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], "conv3"),
    ]
    rng = np.random.default_rng(3)
    inits = {"w1": _w((4, 3, 3, 3), seed=1), "b1": _w((4,), 0.1, seed=2)}
    inits["w2"] = _w((6, 4, 1, 1), seed=4)
    for i, c in ((1, 4), (2, 6)):
        inits[f"g{i}"] = rng.uniform(0.2, 3.0, c).astype(np.float32)
        inits[f"be{i}"] = rng.normal(0, 0.5, c).astype(np.float32)
        inits[f"m{i}"] = rng.normal(0, 0.5, c).astype(np.float32)
        inits[f"v{i}"] = rng.uniform(0.1, 2.0, c).astype(np.float32)
    inits["w3"] = _w((2, 6, 1, 1), seed=5)
    inits["b3"] = _w((2,), 0.1, seed=6)
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])])


def swish_model() -> bytes:
    """x -> conv1 -> Sigmoid * conv1 (SiLU) -> conv2 -> y."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], "sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["m1"], "mul1"),
        helper.make_node("Conv", ["m1", "w2", "b2"], ["y"], "conv2"),
    ]
    inits = {
        "w1": _w((4, 3, 3, 3), seed=1),
        "b1": _w((4,), 0.1, seed=2),
        "w2": _w((2, 4, 1, 1), seed=3),
        "b2": _w((2,), 0.1, seed=4),
    }
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])])


class TestActivations:
    """uint8 activations: ReLU outputs get zero point 0, and the Relu folds into QLinearConv."""

    def test_relu_output_is_uint8_with_zero_point_0(self) -> None:
        _, _, model, _ = exported(conv_relu_model())
        zp, dtype = q_zero_points(
            model, next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
        )
        assert (zp, dtype) == (0, np.dtype(np.uint8))

    def test_conv_relu_runs_as_qlinearconv(self) -> None:
        _, _, model, _ = exported(conv_relu_model())
        ops = optimized_ops(model)
        assert ops["QLinearConv"] == 2
        assert ops["Relu"] == ops["Conv"] == ops["FusedConv"] == 0

    def test_no_swish_fusion_into_the_conv(self) -> None:
        """onnxruntime runs SiLU as QLinearConv, QLinearSigmoid, QLinearMul: no fusion."""
        _, plan, model, _ = exported(swish_model())
        out = plan[fusekit.Slot("conv1", "out", 0)]
        assert out.state is fusekit.QuantState.ACTIVATED
        ops = optimized_ops(model)
        assert ops["QLinearConv"] == 2
        assert ops["QLinearSigmoid"] == ops["QLinearMul"] == 1
        assert ops["Conv"] == ops["FusedConv"] == ops["Sigmoid"] == ops["Mul"] == 0


class TestBatchNormFolding:
    """BatchNorm fused by the plan is folded into the Conv at export, then quantized."""

    def test_no_batchnorm_in_the_export(self) -> None:
        _, _, model, _ = exported(conv_bn_relu_model())
        types = Counter(n.op_type for n in model.graph.node)
        assert types["BatchNormalization"] == 0
        assert types["Conv"] == 3

    def test_every_conv_runs_int8(self) -> None:
        _, _, model, _ = exported(conv_bn_relu_model())
        ops = optimized_ops(model)
        assert ops["QLinearConv"] == 3
        assert ops["Conv"] == ops["FusedConv"] == ops["BatchNormalization"] == 0

    def test_folded_export_tracks_the_float_model(self) -> None:
        g, _, model, data = exported(conv_bn_relu_model())
        sqnr = evaluate(g, model, data).outputs[0].sqnr_db
        assert sqnr > 25.0, sqnr

    def test_bias_scale_is_input_times_folded_weight_scale(self) -> None:
        """onnxruntime refuses QLinearConv when the int32 bias scale is anything else."""
        _, _, model, _ = exported(conv_bn_relu_model())
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        prod = {o: n for n in model.graph.node for o in n.output}
        conv2 = next(n for n in model.graph.node if n.name == "conv2")
        x_dq, w_dq, b_dq = (prod[t] for t in conv2.input)
        x_scale = inits[x_dq.input[1]]
        assert np.allclose(inits[b_dq.input[1]], x_scale * inits[w_dq.input[1]], rtol=1e-6)

    def test_the_plan_is_not_changed(self) -> None:
        g, plan, _, _ = exported(conv_bn_relu_model())
        before = plan.configs
        export_qdq(g, plan)
        assert plan.configs is before
        assert "bn1" in g.ops


class TestTail:
    """The tail after the last computing op stays float unless asked for."""

    def test_concat_head_is_float(self) -> None:
        g, plan, model, _ = exported(concat_model())
        assert plan.dispatch[g.index.op_id["concat"]] is None
        assert plan.dispatch[g.index.op_id["sigmoid"]] is None
        # the Convs still close their node units with a QuantizeLinear
        assert optimized_ops(model)["QLinearConv"] == 2
        assert all(n.input[0] != "y" for n in model.graph.node)  # the output is not requantized
        assert not any(
            n.op_type == "QuantizeLinear" and n.input[0].startswith("y") for n in model.graph.node
        )

    def test_quantize_tail_option(self) -> None:
        g, plan, model, _ = exported(concat_model(), quantize_tail=True)
        assert plan.dispatch[g.index.op_id["concat"]] == "ort_int8"
        assert any(
            n.op_type == "QuantizeLinear" and n.input[0].startswith("y") for n in model.graph.node
        )

    def test_tail_float_keeps_the_scores(self) -> None:
        """Sharing one scale between pixel boxes and [0, 1] scores loses the scores."""
        g, _, model, data = exported(concat_model())
        _, _, tail_q, _ = exported(concat_model(), quantize_tail=True)
        float_tail = evaluate(g, model, data).outputs[0].sqnr_db
        quant_tail = evaluate(g, tail_q, data).outputs[0].sqnr_db
        assert float_tail > quant_tail


class TestPlacementField:
    def test_ort_int8_is_node_unit(self) -> None:
        assert fusekit.get_platform("ort_int8").placement == "node-unit"
        assert fusekit.get_platform("ppq066_ort_int8").placement == "fused-output"

    def test_unknown_placement_is_refused(self) -> None:
        with pytest.raises(InvalidPlatform, match="placement"):
            fusekit.get_platform("ort_int8").evolve(placement="everywhere")

    def test_rule_file_round_trip(self) -> None:
        p = fusekit.get_platform("ort_int8")
        d = platform_to_dict(p)
        assert d["placement"] == "node-unit"
        assert platform_from_dict(d) == p
        with pytest.raises(InvalidPlatform, match="placement"):
            platform_from_dict({"name": "x", "base": "ort_int8", "placement": 3})

    def test_fused_output_quantizes_the_tail(self) -> None:
        p = fusekit.get_platform("ort_int8").evolve(name="ort_fused_out", placement="fused-output")
        g = fusekit.load(concat_model())
        plan = fusekit.init_plan(g, p)
        assert plan.dispatch[g.index.op_id["concat"]] == "ort_fused_out"


def test_batchnorm_not_after_a_computing_op_stays() -> None:
    """A BatchNorm the plan did not fuse (after a Relu) is exported as it is."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("BatchNormalization", ["r1", "g", "b", "m", "v"], ["n"], "bn"),
        helper.make_node("Conv", ["n", "w2"], ["y"], "conv2"),
    ]
    ones = np.ones(4, np.float32)
    inits = {"w1": _w((4, 3, 1, 1), seed=1), "w2": _w((2, 4, 1, 1), seed=2)}
    inits.update(g=ones, b=ones * 0.1, m=ones * 0.2, v=ones)
    model = _model(nodes, inits, [("x", [1, 3, 4, 4])], [("y", [1, 2, 4, 4])])
    g, plan, _, _ = exported(model)
    res = build_qdq(g, plan)
    assert Counter(n.op_type for n in res.model.graph.node)["BatchNormalization"] == 1


def flatten_gemm_model() -> bytes:
    """x -> conv1 -> relu1 -> GlobalAveragePool -> Flatten -> Gemm -> y (a classifier head)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"], "gap"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], "fc", transB=1),
    ]
    inits = {
        "w1": _w((4, 3, 3, 3), seed=1),
        "b1": _w((4,), 0.1, seed=2),
        "wg": _w((5, 4), seed=3),
        "bg": _w((5,), 0.1, seed=4),
    }
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 5])])


def add_relu_model() -> bytes:
    """x -> conv_a, conv_b -> Add -> Relu -> conv_c -> y: a Relu that follows no computing op."""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ca"], "conv_a"),
        helper.make_node("Conv", ["x", "wb"], ["cb"], "conv_b"),
        helper.make_node("Add", ["ca", "cb"], ["s"], "add"),
        helper.make_node("Relu", ["s"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "wc"], ["y"], "conv_c"),
    ]
    inits = {
        "wa": _w((4, 3, 1, 1), seed=5),
        "wb": _w((4, 3, 1, 1), seed=6),
        "wc": _w((2, 4, 1, 1), seed=7),
    }
    return _model(nodes, inits, [("x", [1, 3, 6, 6])], [("y", [1, 2, 6, 6])])


class TestNodeUnits:
    """What onnxruntime needs to see around ops without a computing kernel."""

    def test_data_mover_keeps_its_own_pair(self) -> None:
        """DQ -> Flatten -> Q with equal parameters: onnxruntime drops both, Gemm runs QGemm.

        (With the classifier Gemm in int8: ``ort_int8`` leaves it float by default.)"""
        int8_matvec = fusekit.get_platform("ort_int8").evolve(float_matvec=False)
        _, plan, model, _ = exported(flatten_gemm_model(), int8_matvec)
        s_in, s_out = fusekit.Slot("flatten", "in", 0), fusekit.Slot("flatten", "out", 0)
        assert plan[s_out].state is fusekit.QuantState.PASSIVE
        assert plan.root(s_out) == plan.root(s_in)
        ops = optimized_ops(model)
        assert ops["QGemm"] == 1 and ops["QLinearConv"] == 1
        assert ops["Gemm"] == ops["FusedGemm"] == 0

    def test_standalone_relu_reads_float(self) -> None:
        """A Relu after an Add: only its output is quantized; no Q/DQ pair runs in float."""
        _, plan, model, _ = exported(add_relu_model())
        assert plan[fusekit.Slot("relu", "in", 0)].state is fusekit.QuantState.FP32
        ops = optimized_ops(model)
        assert ops["QLinearConv"] == 3
        assert ops["QLinearAdd"] == 1
        assert ops["Relu"] == 0  # removed before its QuantizeLinear (zero point 0)


class TestWideGroups:
    """A sharing group whose calibrated ranges differ by 16x or more is split, with a reason."""

    def run(self, model: bytes, **alignment: Any) -> Any:
        g = fusekit.load(model)
        plan = fusekit.init_plan(g, "trt_int8")
        cal = Calibration(samples(4, (1, 3, 5, 5)))
        return g, fusekit.default_pipeline("trt_int8", calibration=cal, **alignment).run(g, plan)

    def test_concat_of_boxes_and_scores_is_split(self) -> None:
        g, res = self.run(concat_model())
        refusals = [d for d in res.refusals if d.rule == "align-concat"]
        assert len(refusals) == 1
        assert "differ by" in refusals[0].reason and "boxes" in refusals[0].reason
        boxes, scores = fusekit.Slot("concat", "in", 0), fusekit.Slot("concat", "in", 1)
        assert res.plan.root(boxes) != res.plan.root(scores)
        export_qdq(g, res.plan)  # exports with two scales at the Concat
        _, shared = self.run(concat_model(), max_spread=0)
        assert shared.plan.root(boxes) == shared.plan.root(scores)

    def test_narrow_groups_still_align(self) -> None:
        """Two inputs of similar range share one scale as before."""
        nodes = [
            helper.make_node("Conv", ["x", "wa"], ["a"], "conv_a"),
            helper.make_node("Conv", ["x", "wb"], ["b"], "conv_b"),
            helper.make_node("Concat", ["a", "b"], ["c"], "concat", axis=1),
            helper.make_node("Conv", ["c", "wc"], ["y"], "conv_c"),
        ]
        inits = {
            "wa": _w((4, 3, 1, 1), seed=1),
            "wb": _w((4, 3, 1, 1), seed=2),
            "wc": _w((2, 8, 1, 1), seed=3),
        }
        model = _model(nodes, inits, [("x", [1, 3, 5, 5])], [("y", [1, 2, 5, 5])])
        _, res = self.run(model)
        assert not [d for d in res.refusals if d.rule == "align-concat"]
        a, b = fusekit.Slot("concat", "in", 0), fusekit.Slot("concat", "in", 1)
        assert res.plan.root(a) == res.plan.root(b)


def test_stand_in_calibration_activates_passive_followers() -> None:
    """Hypothesis' counterexample: graph input -> Flatten -> Gemm under ort_int8.

    The Flatten output follows its input (node-unit passive fusion) before calibration; the
    stand-in calibration must activate it as real calibration does, or export refuses it.
    """
    from fusekit.testing import StandInCalibration

    nodes = [
        helper.make_node("Flatten", ["x0"], ["t1"], "flatten_2", axis=3),
        helper.make_node("Gemm", ["t1", "c3"], ["t4"], "gemm_5"),
        helper.make_node("Relu", ["t4"], ["t6"], "relu_7"),
        helper.make_node("Relu", ["t6"], ["t8"], "relu_9"),
    ]
    model = _model(nodes, {"c3": _w((5, 5), seed=1)}, [("x0", [1, 4, 5, 5])], [("t8", [20, 5])])
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, "ort_int8")
    plan = fusekit.default_pipeline("ort_int8", calibration=StandInCalibration()).run(g, plan).plan
    assert plan[fusekit.Slot("flatten_2", "out", 0)].state is fusekit.QuantState.PASSIVE
    build_qdq(g, plan)


def residual_model() -> bytes:
    """x -> conv1 -> relu1 -> conv2 -> Add(relu1) -> relu -> MaxPool -> conv3 -> y."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], "conv2"),
        helper.make_node("Add", ["c2", "r1"], ["s"], "add"),
        helper.make_node("Relu", ["s"], ["r2"], "relu2"),
        helper.make_node("MaxPool", ["r2"], ["m"], "pool", kernel_shape=[2, 2]),
        helper.make_node("Conv", ["m", "w3"], ["y"], "conv3"),
    ]
    inits = {
        "w1": _w((4, 3, 1, 1), seed=1),
        "w2": _w((4, 4, 1, 1), seed=2),
        "w3": _w((2, 4, 1, 1), seed=3),
    }
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 7, 7])])


class TestComputingInput:
    """The computing-input style: points on computing inputs and residual Add inputs only."""

    def platform(self) -> fusekit.Platform:
        trt = fusekit.get_platform("trt_int8")
        return trt.evolve(name="trt_int8_ci", placement="computing-input")

    def test_points_only_on_computing_and_residual_inputs(self) -> None:
        p = self.platform()
        g = fusekit.load(residual_model())
        plan = fusekit.init_plan(g, p)
        assert {g.op(n).op_type for n in g.ops if plan.is_quantized(n)} == {"Conv", "Add"}
        for name in ("conv1", "conv2", "conv3", "add"):
            assert plan[fusekit.Slot(name, "out", 0)].state is fusekit.QuantState.FP32
            assert plan[fusekit.Slot(name, "in", 0)].state is fusekit.QuantState.INITIAL
        assert plan[fusekit.Slot("add", "in", 1)].state is fusekit.QuantState.INITIAL

    def test_export_has_a_pair_before_each_computing_input(self) -> None:
        p = self.platform()
        g, _, model, data = exported(residual_model(), p)
        prod = {o: n for n in model.graph.node for o in n.output}
        for n in model.graph.node:
            if n.op_type in ("Conv", "Add"):
                assert prod[n.input[0]].op_type == "DequantizeLinear", n.name
        # graph input, the residual Add's two inputs, the pooled input of conv3: nothing else
        q_inputs = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
        assert q_inputs == {"x", "r1", "c2", "m"}
        assert evaluate(g, model, data).outputs[0].sqnr_db > 25

    def test_unknown_styles_still_refused(self) -> None:
        with pytest.raises(InvalidPlatform):
            self.platform().evolve(placement="computing-output")


def _stray_free(model: onnx.ModelProto) -> None:
    from fusekit.kernels import kernel_report

    report = kernel_report(model)
    assert report.stray_qdq == (), report.stray_qdq
    assert all(e.int8 for e in report.ops if e.op_type != "ConvTranspose"), report.table()


def _dq_outputs(model: onnx.ModelProto) -> set[str]:
    return {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


class TestNoRoundTripIntoFloat:
    """No quantization point that onnxruntime executes in float next to a float op."""

    def test_float_sum_reads_the_float_tensor(self) -> None:
        """Sum (no int8 kernel) -> standalone Relu -> {Conv, Sum}: the second Sum reads the
        Relu's float output, not a Q -> DQ round trip (resnet50's opset-9 residuals)."""
        nodes = [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Sum", ["c1", "x"], ["s1"], "sum1"),
            helper.make_node("Relu", ["s1"], ["r1"], "relu1"),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
            helper.make_node("Sum", ["c2", "r1"], ["y"], "sum2"),
        ]
        inits = {
            "w1": _w((3, 3, 3, 3), seed=1),
            "b1": _w((3,), 0.1, seed=2),
            "w2": _w((3, 3, 3, 3), seed=3),
            "b2": _w((3,), 0.1, seed=4),
        }
        model_bytes = _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 3, 8, 8])])
        _, plan, model, _ = exported(model_bytes)
        assert plan[fusekit.Slot("relu1", "out", 0)].state is fusekit.QuantState.ACTIVATED
        relu = _node(model, "relu1")
        sum2 = _node(model, "sum2")
        assert sum2.input[1] == relu.output[0]  # the float value, no DQ in between
        assert _node(model, "conv2").input[0] in _dq_outputs(model)
        _stray_free(model)

    def test_conv_transpose_gets_no_dequantized_input(self) -> None:
        """An op whose only reader is a float ConvTranspose stays float: with a DQ on its
        input onnxruntime quantizes the ConvTranspose weights itself and runs it in float."""
        nodes = [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
            helper.make_node("LeakyRelu", ["c1"], ["l1"], "leaky1", alpha=0.1),
            helper.make_node("ConvTranspose", ["l1", "wt", "bt"], ["u1"], "up1", strides=[2, 2]),
            helper.make_node("Conv", ["u1", "w2", "b2"], ["y"], "conv2"),
        ]
        inits = {
            "w1": _w((4, 3, 3, 3), seed=1),
            "b1": _w((4,), 0.1, seed=2),
            "wt": _w((4, 4, 2, 2), seed=3),
            "bt": _w((4,), 0.1, seed=4),
            "w2": _w((2, 4, 1, 1), seed=5),
            "b2": _w((2,), 0.1, seed=6),
        }
        model_bytes = _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 16, 16])])
        g, plan, model, _ = exported(model_bytes)
        assert plan.dispatch[g.index.op_id["leaky1"]] is None
        up = _node(model, "up1")
        assert up.input[1:] == ["wt", "bt"]
        assert up.input[0] not in _dq_outputs(model)
        assert optimized_ops(model)["QLinearConv"] == 2
        _stray_free(model)

    def test_data_mover_between_float_ops_carries_no_point(self) -> None:
        """Tanh (float) -> Transpose -> standalone Relu -> Conv: the Transpose sits outside
        every int8 region (silero's LSTM -> Squeeze -> Relu), so no Q on the Tanh output."""
        nodes = [
            helper.make_node("Tanh", ["x"], ["t1"], "tanh1"),
            helper.make_node("Transpose", ["t1"], ["p1"], "perm1", perm=[0, 1, 3, 2]),
            helper.make_node("Relu", ["p1"], ["r1"], "relu1"),
            helper.make_node("Conv", ["r1", "w1", "b1"], ["y"], "conv1"),
        ]
        inits = {"w1": _w((2, 3, 1, 1), seed=1), "b1": _w((2,), 0.1, seed=2)}
        model_bytes = _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])])
        _, plan, model, _ = exported(model_bytes)
        FP32 = fusekit.QuantState.FP32
        assert plan[fusekit.Slot("perm1", "in", 0)].state is FP32
        assert plan[fusekit.Slot("perm1", "out", 0)].state is FP32
        assert not any(
            n.op_type == "QuantizeLinear" and n.input[0] == "t1" for n in model.graph.node
        )
        _stray_free(model)
