"""kernel_report: which ops onnxruntime's CPU provider runs as int8 kernels, and why not.

The tiny models are built so the answer is known from onnxruntime's QDQ selectors: a
DequantizeLinear on every input and a QuantizeLinear on the output make an int8 kernel; a Relu
between the op and its QuantizeLinear is dropped only when the zero point is the type minimum
(uint8 zp 0), not with int8 zp 0; a QuantizeLinear -> DequantizeLinear pair around an op
without an int8 kernel is executed in float.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusekit
from fusekit.calibrate import Calibration, random_data
from fusekit.errors import FusekitError, InvalidData, ModelNotFound, ModelRunError
from fusekit.export import build_qdq
from fusekit.kernels import COMPUTING_OPS, KernelReport, kernel_report

from .conftest import corpus_bytes

U8, S8 = TensorProto.UINT8, TensorProto.INT8


def qdq_model(
    *,
    op: str = "Conv",
    act: int = U8,
    x_dq: bool = True,
    w_dq: bool = True,
    relu: bool = False,
    out_q: bool = True,
) -> onnx.ModelProto:
    """x -> [Q -> DQ] -> op(W) -> [Relu] -> [Q -> DQ] -> y, with the parts chosen."""
    zp_dtype = np.uint8 if act == U8 else np.int8
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(0, zp_dtype), "zp"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wzp"),
    ]
    w = rng.standard_normal((8, 4) if op == "MatMul" else (4, 3, 3, 3)).astype(np.float32)
    nodes = []
    x = "x"
    if x_dq:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
        ]
        x = "xd"
    if w_dq:
        wq = np.clip(np.round(w / 0.01), -127, 127).astype(np.int8)
        inits.append(numpy_helper.from_array(wq, "wq"))
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], name="dq_w"))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes.append(helper.make_node(op, [x, "w"], ["c"], name="op0"))
    last = "c"
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu0"))
        last = "r"
    if out_q:
        nodes += [
            helper.make_node("QuantizeLinear", [last, "s", "zp"], ["yq"], name="q_out"),
            helper.make_node("DequantizeLinear", ["yq", "s", "zp"], ["y"], name="dq_out"),
        ]
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    shape = [1, 8] if op == "MatMul" else [1, 3, 8, 8]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def stray_model() -> onnx.ModelProto:
    """x -> Q -> DQ -> Tanh -> Q -> DQ -> y: Tanh has no int8 kernel in onnxruntime."""
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
        helper.make_node("Tanh", ["xd"], ["t"], name="tanh0"),
        helper.make_node("QuantizeLinear", ["t", "s", "zp"], ["tq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["tq", "s", "zp"], ["y"], name="dq_out"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def only(report: KernelReport) -> Any:
    assert len(report.ops) == 1
    return report.ops[0]


class TestComputingOps:
    """Conv and MatMul node units: int8 when fully quantized, float with the cause otherwise."""

    def test_full_conv_node_unit_is_qlinearconv(self) -> None:
        r = kernel_report(qdq_model())
        e = only(r)
        assert (e.op, e.op_type, e.int8, e.kernel, e.reason) == (
            "op0",
            "Conv",
            True,
            "QLinearConv",
            "",
        )
        assert r.coverage() == 1.0
        assert r.stray_qdq == ()

    def test_conv_without_dq_on_its_input_stays_float(self) -> None:
        e = only(kernel_report(qdq_model(x_dq=False)))
        assert not e.int8
        assert e.kernel == "Conv"
        assert "input 0 is the float graph input 'x'" in e.reason

    def test_conv_with_a_float_weight(self) -> None:
        """onnxruntime >= 1.20 quantizes a float Conv weight itself when input and output are
        quantized (its WeightBiasQuantization transformer), so the unit still becomes int8."""
        e = only(kernel_report(qdq_model(w_dq=False)))
        assert e.int8 and e.kernel == "QLinearConv"

    def test_conv_without_quantized_output_stays_float(self) -> None:
        r = kernel_report(qdq_model(out_q=False))
        e = only(r)
        assert not e.int8 and e.kernel == "Conv"
        assert "output is not quantized (feeds Identity)" in e.reason
        assert r.coverage() == 0.0
        # the DequantizeLinear of the weight and the Q/DQ of the input now run in float
        assert {s.node for s in r.stray_qdq} == {"dq_w", "q_in", "dq_in"}

    def test_relu_dropped_with_uint8_zero_point_at_type_minimum(self) -> None:
        e = only(kernel_report(qdq_model(relu=True, act=U8)))
        assert e.int8 and e.kernel == "QLinearConv"

    def test_relu_kept_with_int8_zero_point_zero(self) -> None:
        r = kernel_report(qdq_model(relu=True, act=S8))
        e = only(r)
        assert not e.int8
        assert e.kernel == "FusedConv"
        assert "Relu 'relu0' kept between it and its QuantizeLinear" in e.reason
        assert "zero point 0 of int8" in e.reason
        assert "q_out" in {s.node for s in r.stray_qdq}

    def test_matmul_node_unit_is_qlinearmatmul(self) -> None:
        e = only(kernel_report(qdq_model(op="MatMul")))
        assert e.int8 and e.kernel == "QLinearMatMul"

    def test_matmul_with_float_output_is_matmulintegertofloat(self) -> None:
        e = only(kernel_report(qdq_model(op="MatMul", out_q=False)))
        assert e.int8 and e.kernel == "MatMulIntegerToFloat"

    def test_gemm_is_qgemm_with_or_without_quantized_output(self) -> None:
        for out_q in (True, False):
            m = qdq_model(op="MatMul", out_q=out_q)
            m.graph.node[3].op_type = "Gemm"
            e = only(kernel_report(m))
            assert (e.op_type, e.int8, e.kernel) == ("Gemm", True, "QGemm")

    def test_matmul_fused_with_its_bias_add_is_found_under_its_new_name(self) -> None:
        """MatMul + Add becomes one Gemm named 'op0/MatMulAddFusion'; the bias is float, so
        the Gemm is no node unit and runs in float."""
        m = qdq_model(op="MatMul", out_q=False)
        m.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "bias"))
        m.graph.node[4].CopyFrom(helper.make_node("Add", ["c", "bias"], ["y"], name="add0"))
        r = kernel_report(m)
        e = r["op0"]
        assert (e.int8, e.kernel) == (False, "Gemm")
        assert e.reason.startswith("runs as float Gemm")
        with pytest.raises(KeyError):
            r["add0"]  # a float Add outside any Q/DQ is not reported

    def test_conv_transpose_has_no_int8_node_unit(self) -> None:
        m = qdq_model()
        m.graph.node[3].op_type = "ConvTranspose"
        w = next(t for t in m.graph.initializer if t.name == "wq")
        wt = numpy_helper.to_array(w).transpose(1, 0, 2, 3).copy()
        w.CopyFrom(numpy_helper.from_array(wt, "wq"))
        e = only(kernel_report(m))
        assert not e.int8 and e.kernel == "ConvTranspose"
        assert "no ConvTranspose node unit" in e.reason

    def test_level_all_gives_the_same_verdicts(self) -> None:
        """At level 3 the NHWC transformer renames QLinearConv 'op0' to 'op0_token_N'."""
        for kw in ({}, {"relu": True, "act": S8}):
            ext = kernel_report(qdq_model(**kw))
            full = kernel_report(qdq_model(**kw), level="all")
            assert [(e.op, e.int8) for e in full.ops] == [(e.op, e.int8) for e in ext.ops]


class TestStrayAndOthers:
    """Q/DQ that no int8 kernel uses, and the non-computing quantized ops."""

    def test_qdq_around_a_float_op_is_stray(self) -> None:
        r = kernel_report(stray_model())
        assert r.ops == ()
        assert r.coverage() == 1.0  # vacuous: no computing op
        by_node = {s.node: s for s in r.stray_qdq}
        assert set(by_node) == {"q_in", "dq_in", "q_out", "dq_out"}
        assert by_node["q_out"].next_to == ("Tanh tanh0",)
        assert by_node["dq_in"].next_to == ("Tanh tanh0",)

    def test_qlinear_add_is_reported_among_others(self) -> None:
        m = qdq_model()
        g = m.graph
        # y = DQ(Q(conv)) + DQ(Q(conv)) -> Q -> DQ: a QLinearAdd node unit after the conv
        g.output[0].name = "z"
        g.node.extend(
            [
                helper.make_node("Add", ["y", "y"], ["a"], name="add0"),
                helper.make_node("QuantizeLinear", ["a", "s", "zp"], ["aq"], name="q_add"),
                helper.make_node("DequantizeLinear", ["aq", "s", "zp"], ["z"], name="dq_add"),
            ]
        )
        r = kernel_report(m)
        assert [(e.op, e.op_type, e.int8, e.kernel) for e in r.others] == [
            ("add0", "Add", True, "QLinearAdd")
        ]


class TestInterface:
    """Inputs, outputs and errors."""

    def test_path_bytes_and_proto_agree_and_input_is_untouched(self, tmp_path: Path) -> None:
        m = qdq_model(relu=True, act=S8)
        before = m.SerializeToString()
        p = tmp_path / "m.onnx"
        p.write_bytes(before)
        a = kernel_report(m)
        b = kernel_report(before)
        c = kernel_report(p)
        assert a.ops == b.ops == c.ops
        assert a.stray_qdq == b.stray_qdq == c.stray_qdq
        assert c.model == str(p)
        assert m.SerializeToString() == before

    def test_to_json(self) -> None:
        r = kernel_report(qdq_model(relu=True, act=S8))
        d = json.loads(r.to_json())
        assert d["computing_ops"] == 1 and d["int8_computing_ops"] == 0
        assert d["coverage"] == 0.0
        assert d["ops"][0]["op"] == "op0" and d["ops"][0]["int8"] is False
        assert "Relu" in d["ops"][0]["reason"]
        assert {s["node"] for s in d["stray_qdq"]} >= {"q_out"}
        assert d["optimized_op_types"]["FusedConv"] == 1
        assert "op0" in r.table() and "NO" in r.table()

    def test_onnxruntime_refusal_names_the_model(self, tmp_path: Path) -> None:
        m = qdq_model()
        m.graph.node[3].op_type = "NoSuchOp"  # the Conv
        p = tmp_path / "broken.qdq.onnx"
        p.write_bytes(m.SerializeToString())
        with pytest.raises(ModelRunError, match=r"broken\.qdq\.onnx: onnxruntime cannot load"):
            kernel_report(p)

    def test_bad_arguments(self, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFound):
            kernel_report(tmp_path / "missing.onnx")
        with pytest.raises(InvalidData, match="unknown level"):
            kernel_report(qdq_model(), level="basic")
        with pytest.raises(FusekitError):
            kernel_report(qdq_model(), threads=0)


# --------------------------------------------------------------------------------------------
# corpus models


def _computing_ops(m: onnx.ModelProto) -> int:
    return sum(n.op_type in COMPUTING_OPS for n in m.graph.node)


def test_fusekit_export_of_a_corpus_model() -> None:
    """Every computing op of the export is reported, with a kernel or a reason."""
    g = fusekit.load(corpus_bytes("mobilenet_v2"))
    data = random_data(g, 2)
    plan = fusekit.init_plan(g, "ort_int8")
    res = fusekit.default_pipeline("ort_int8", calibration=Calibration(data)).run(g, plan)
    m = build_qdq(g, res.plan).model
    r = kernel_report(m)
    assert len(r.ops) == _computing_ops(m) > 0
    for e in r.ops + r.others:
        assert e.kernel
        assert e.int8 == (e.reason == "")
        # every float verdict names a visible cause, not the catch-all
        assert "although its inputs and output are quantized" not in e.reason, e


def test_quantize_static_export_runs_fully_int8(tmp_path: Path) -> None:
    """onnxruntime's own quantizer (QDQ, uint8 activations) gets every Conv/Gemm into int8."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = tmp_path / "float.onnx"
    src.write_bytes(corpus_bytes("mobilenet_v2"))
    g = fusekit.load(src)
    feeds = list(random_data(g, 2))

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> Any:
            return next(self.it, None)

    out = tmp_path / "qs.onnx"
    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    r = kernel_report(out)
    assert len(r.ops) == _computing_ops(onnx.load(str(out))) > 0
    assert r.coverage() == 1.0, r.table()
    assert r.stray_qdq == ()
