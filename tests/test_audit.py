"""fusekit.audit and ``fusekit audit``: a quantized model's placement against a platform's."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusekit
from fusekit.audit import audit
from fusekit.calibrate import calibrate, random_data
from fusekit.cli import main
from fusekit.export import export_qdq
from fusekit.qimport import import_quantized

from .conftest import corpus_bytes


def _kinds(result: Any) -> dict[str, int]:
    return dict(result.by_kind())


def _export(model: str, platform: str | None, fused: bool = True) -> onnx.ModelProto:
    """fusekit's export of a corpus model: fused for ``platform``, or (fused=False) every
    slot quantized on its own (what a naive quantizer does)."""
    g = fusekit.load(corpus_bytes(model))
    p = platform or "trt_int8"
    plan = fusekit.init_plan(g, p)
    if fused:
        plan = fusekit.default_pipeline(p).run(g, plan).plan
    return export_qdq(g, calibrate(g, plan, random_data(g, 2)))


@pytest.mark.parametrize("platform", ["trt_int8", "ort_int8"])
def test_own_export_has_no_findings_on_its_platform(platform: str) -> None:
    """A model placed by the platform's own pipeline agrees with it: no finding at all."""
    got = import_quantized(_export("yolov5s_silu", platform))
    assert audit(got.graph, got.plan, platform, dangling=got.dangling).findings == ()


@pytest.mark.parametrize("model", ["ppocr_mobile_v2_cls", "onnx_light_shufflenet"])
def test_own_export_of_an_old_opset_softmax_is_clean(model: str) -> None:
    """An opset < 13 Softmax is raised to 13 as Flatten -> Softmax -> Reshape; the Softmax's
    output point must sit on the Softmax, not after the Reshape (there, read back, it is a
    passive op quantizing a float input: one ``passive_scale_change`` before the fix)."""
    exported = _export(model, "trt_int8")
    by_output = {t: n for n in exported.graph.node for t in n.output}
    softmaxes = [n for n in exported.graph.node if n.op_type == "Softmax"]
    assert softmaxes
    for sm in softmaxes:
        readers = [n for n in exported.graph.node if sm.output[0] in n.input]
        assert [n.op_type for n in readers] == ["QuantizeLinear"], (sm.name, readers)
    reshapes = [n for n in exported.graph.node if n.op_type == "Reshape"]
    assert any(by_output[r.input[0]].op_type == "DequantizeLinear" for r in reshapes)
    got = import_quantized(exported)
    assert audit(got.graph, got.plan, "trt_int8", dangling=got.dangling).findings == ()


def test_unfused_model_reports_fused_activations_with_the_rule() -> None:
    """Q/DQ between Conv and its SiLU (Sigmoid*Mul) are 'fused_activation_qdq' warnings
    naming the swish rule and the decision of the platform's pipeline."""
    got = import_quantized(_export("yolov5s_silu", "trt_int8", fused=False))
    result = audit(got.graph, got.plan, "trt_int8")
    kinds = _kinds(result)
    assert kinds.get("fused_activation_qdq", 0) > 0
    f = next(f for f in result.findings if f.kind == "fused_activation_qdq")
    assert f.severity == "warning" and f.rule == "swish"
    assert "overlap" in f.decision and f.ops[0].endswith("Conv")
    assert not result.has_errors


def _model(nodes: list[onnx.NodeProto], inits: list[TensorProto], shape: list[int]) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    buf = io.BytesIO()
    onnx.save(m, buf)
    return buf.getvalue()


def _c(name: str, value: Any, dtype: Any = np.float32) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _qdq(src: str, dst: str, s: str, z: str, tag: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("QuantizeLinear", [src, s, z], [f"{tag}_q"], f"q_{tag}"),
        helper.make_node("DequantizeLinear", [f"{tag}_q", s, z], [dst], f"dq_{tag}"),
    ]


def _conv_model(*, weight_axis: int | None = 0, act_zp: int = 0, act_type: Any = np.int8) -> bytes:
    """x -> Q/DQ -> Conv(DQ(w)) -> MaxPool -> Q/DQ(other scale) -> y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, size=(4, 3, 1, 1)).astype(np.int8)
    ws = np.full((4,), 0.01, np.float32) if weight_axis is not None else np.float32(0.01)
    wz = np.zeros((4,), np.int8) if weight_axis is not None else np.int8(0)
    inits = [
        _c("w_q", w, np.int8),
        _c("w_s", ws),
        _c("w_z", wz, np.int8),
        _c("sx", 0.05),
        _c("zx", act_zp, act_type),
        _c("sy", 0.2),
        _c("zy", 0, np.int8),
    ]
    dq_w = helper.make_node(
        "DequantizeLinear",
        ["w_q", "w_s", "w_z"],
        ["w"],
        "dq_w",
        **({"axis": weight_axis} if weight_axis is not None else {}),
    )
    nodes = [
        *_qdq("x", "xd", "sx", "zx", "x"),
        dq_w,
        helper.make_node("Conv", ["xd", "w"], ["c"], "conv"),
        *_qdq("c", "cd", "sx", "zx", "c"),
        helper.make_node("MaxPool", ["cd"], ["m"], "pool", kernel_shape=[1, 1]),
        *_qdq("m", "y", "sy", "zy", "m"),
    ]
    return _model(nodes, inits, [1, 3, 4, 4])


def test_passive_scale_change_is_a_warning() -> None:
    """MaxPool's output quantized with another scale than its input: a warning naming the op."""
    got = import_quantized(_conv_model())
    result = audit(got.graph, got.plan, "trt_int8")
    f = next(f for f in result.findings if f.kind == "passive_scale_change")
    assert f.severity == "warning" and f.ops == ("pool",) and f.rule == "passive"


def test_asymmetric_uint8_is_an_error_on_tensorrt_and_info_on_ort() -> None:
    """uint8 activations with a zero point: TensorRT cannot run them (error, exit 1);
    ORT runs them (info)."""
    got = import_quantized(_conv_model(act_zp=128, act_type=np.uint8))
    trt = audit(got.graph, got.plan, "trt_int8")
    bad = [f for f in trt.findings if f.kind == "unsupported_scheme"]
    assert bad and all(f.severity == "error" for f in bad) and trt.has_errors
    assert "unsigned" in bad[0].message and "zero point" in bad[0].message
    ort_ = audit(got.graph, got.plan, "ort_int8")
    assert all(f.severity == "info" for f in ort_.findings if f.kind == "unsupported_scheme")


def test_per_tensor_weight_where_platform_is_per_channel() -> None:
    """A per-tensor Conv weight under a per-channel rule is a 'weight_per_tensor' warning."""
    got = import_quantized(_conv_model(weight_axis=None))
    result = audit(got.graph, got.plan, "trt_int8")
    f = next(f for f in result.findings if f.kind == "weight_per_tensor")
    assert f.severity == "warning" and f.slots == (fusekit.Slot("conv", "in", 1),)


def test_weight_on_the_wrong_axis_is_an_error() -> None:
    """Per-channel weights along axis 1 instead of the output channels: 'weight_axis'."""
    w = np.ones((4, 4, 1, 1), np.int8)
    inits = [
        _c("w_q", w, np.int8),
        _c("w_s", np.full(4, 0.01)),
        _c("sx", 0.05),
        _c("zx", 0, np.int8),
    ]
    nodes = [
        *_qdq("x", "xd", "sx", "zx", "x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "dq_w", axis=1),
        helper.make_node("Conv", ["xd", "w"], ["y"], "conv"),
    ]
    got = import_quantized(_model(nodes, inits, [1, 4, 4, 4]))
    result = audit(got.graph, got.plan, "trt_int8")
    assert [f.kind for f in result.findings if f.severity == "error"] == ["weight_axis"]


def test_float_input_and_bias_on_ort() -> None:
    """A Conv whose activation input has no Q/DQ runs in float (error); ort_int8 wants an
    int32 bias with scale input x weight (error when float, and when the scale is off)."""
    w = np.ones((4, 4, 1, 1), np.int8)
    base = [_c("w_q", w, np.int8), _c("w_s", np.full(4, 0.01)), _c("b", np.zeros(4))]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "dq_w", axis=0),
        helper.make_node("Conv", ["x", "w", "b"], ["y"], "conv"),
    ]
    got = import_quantized(_model(nodes, base, [1, 4, 4, 4]))
    kinds = {f.kind: f.severity for f in audit(got.graph, got.plan, "ort_int8").findings}
    assert kinds["float_input"] == "error" and kinds["bias_not_int32"] == "error"

    inits = [
        *base[:2],
        _c("sx", 0.05),
        _c("zx", 0, np.int8),
        _c("b_q", np.zeros(4), np.int32),
        _c("b_s", np.full(4, 0.3)),  # not 0.05 * 0.01
    ]
    nodes = [
        *_qdq("x", "xd", "sx", "zx", "x"),
        nodes[0],
        helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], "dq_b", axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["y"], "conv"),
    ]
    got = import_quantized(_model(nodes, inits, [1, 4, 4, 4]))
    kinds = {f.kind: f.severity for f in audit(got.graph, got.plan, "ort_int8").findings}
    assert kinds == {"bias_scale": "error"}


def test_unaligned_concat_inputs() -> None:
    """Concat inputs with two scales, where the platform aligns them: a warning."""
    inits = [
        _c("s1", 0.1),
        _c("s2", 0.3),
        _c("z", 0, np.int8),
        _c("w_q", np.ones((2, 8, 1, 1)), np.int8),
        _c("w_s", np.full(2, 0.01)),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], "r1"),
        helper.make_node("Sigmoid", ["x"], ["b"], "s1g"),
        *_qdq("a", "ad", "s1", "z", "a"),
        *_qdq("b", "bd", "s2", "z", "b"),
        helper.make_node("Concat", ["ad", "bd"], ["cat"], "cat", axis=1),
        *_qdq("cat", "catd", "s2", "z", "cat"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "dq_w", axis=0),
        helper.make_node("Conv", ["catd", "w"], ["y"], "conv"),
    ]
    got = import_quantized(_model(nodes, inits, [1, 4, 4, 4]))
    result = audit(got.graph, got.plan, "trt_int8", dangling=got.dangling)
    f = next(f for f in result.findings if f.kind == "unaligned_inputs")
    # the float tensors take the DQ outputs' names (what the Concat read)
    assert f.severity == "warning" and f.ops == ("cat",) and set(f.tensors) == {"ad", "bd"}


def test_dangling_q_is_a_finding() -> None:
    """A Q whose output a Cast reads (no DQ) is reported as a dangling Q/DQ."""
    inits = [_c("s1", 0.1), _c("z", 0, np.int8)]
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], "r1"),
        helper.make_node("QuantizeLinear", ["a", "s1", "z"], ["aq"], "q_dangling"),
        helper.make_node("Cast", ["aq"], ["y"], "cast", to=TensorProto.FLOAT),
    ]
    got = import_quantized(_model(nodes, inits, [1, 4, 4, 4]))
    result = audit(got.graph, got.plan, "trt_int8", dangling=got.dangling)
    f = next(f for f in result.findings if f.kind == "dangling_qdq")
    assert f.severity == "warning" and f.ops == ("q_dangling",)


def test_cli_audit_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """exit 1 with an error finding, 0 without, 2 on bad input; --json has every field."""
    bad = tmp_path / "uint8.onnx"
    bad.write_bytes(_conv_model(act_zp=128, act_type=np.uint8))
    assert main(["audit", str(bad), "--platform", "trt_int8", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["error"] > 0 and doc["platform"] == "trt_int8"
    assert set(doc["findings"][0]) >= {"kind", "severity", "ops", "tensors", "slots", "rule", "fix"}
    assert main(["audit", str(bad), "--platform", "ort_int8"]) == 0
    assert "finding(s)" in capsys.readouterr().out
    missing = tmp_path / "nope.onnx"
    assert main(["audit", str(missing), "--platform", "trt_int8"]) == 2
    assert main(["audit", str(bad), "--platform", "no_such_platform"]) == 2


def test_cli_refusal_of_quantized_model_points_to_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fuse still refuses a QDQ model, and now says which verbs read one."""
    q = tmp_path / "q.onnx"
    q.write_bytes(_conv_model())
    assert main(["fuse", str(q), "--no-calibrate"]) == 2
    err = capsys.readouterr().err
    assert "already quantized" in err and "fusekit audit" in err


# --------------------------------------------------------------------------------------------
# fix


def test_fix_keeps_model_scales_and_resolves_findings() -> None:
    """fix re-places an unfused model by the platform's plan: every point of that plan takes
    the model's own scale (nothing is missing), the Q/DQ between Conv and its activation go,
    and the audit of the fixed model is clean."""
    from fusekit.export import count_qdq
    from fusekit.fix import fix_plan

    src = _export("yolov5s_silu", "trt_int8", fused=False)
    got = import_quantized(src)
    result = fix_plan(got.graph, got.plan, "trt_int8")
    counts = result.counts()
    assert counts.get("missing", 0) == 0 and counts["removed"] > 0 and counts["kept"] > 0
    fixed = export_qdq(got.graph, result.plan)
    assert count_qdq(fixed)["QuantizeLinear"] < count_qdq(src)["QuantizeLinear"]
    again = import_quantized(fixed)
    assert audit(again.graph, again.plan, "trt_int8").findings == ()
    # a kept point has exactly the model's scale
    kept = next(c for c in result.changes if c.action == "kept" and c.slot.side == "out")
    assert np.array_equal(
        result.plan.scale_of(kept.slot), got.plan.scale_of(got.plan.root(kept.slot))
    )


def test_fix_keeps_integer_weights_when_the_scheme_is_unchanged() -> None:
    """Per-channel int8 weights under a per-channel rule keep their exact integers."""
    from fusekit.fix import fix_plan

    src = _conv_model()
    got = import_quantized(src)
    result = fix_plan(got.graph, got.plan, "trt_int8")
    fixed = export_qdq(got.graph, result.plan)
    w_src = next(
        numpy_helper.to_array(t)
        for t in onnx.load_from_string(src).graph.initializer
        if t.name == "w_q"
    )
    w_fixed = [
        numpy_helper.to_array(t)
        for t in fixed.graph.initializer
        if t.data_type == TensorProto.INT8 and t.dims == list(w_src.shape)
    ]
    assert len(w_fixed) == 1 and np.array_equal(w_fixed[0], w_src)


def test_fix_converts_uint8_and_keeps_the_clamp() -> None:
    """uint8 activations (zero point 0) become symmetric int8 covering the same range; the
    clamp the Q stood for is restored as a Clip (restore_clamps), so the float graph keeps it."""
    from fusekit.fix import fix_plan

    got = import_quantized(_conv_model(act_zp=0, act_type=np.uint8), restore_clamps=True)
    assert [op.op_type for op in got.graph].count("Clip") == 1  # after the Conv
    result = fix_plan(got.graph, got.plan, "trt_int8")
    conv_out = next(c for c in result.changes if c.tensor == "cd")
    assert conv_out.action == "converted"
    # a [0, 255 * 0.05] range becomes +-12.75 symmetric
    assert np.isclose(float(result.plan.scale_of(conv_out.slot)), 2 * 255 * 0.05 / 255)
    plain = import_quantized(_conv_model(act_zp=0, act_type=np.uint8))
    assert "Clip" not in [op.op_type for op in plain.graph]


def test_fix_names_missing_points_without_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A point the platform needs but the model lacks: without --calib the CLI names it and
    exits 2 and writes nothing; with --calib it is measured and the output written."""
    inits = [_c("w_q", np.ones((4, 4, 1, 1)), np.int8), _c("w_s", np.full(4, 0.01))]
    nodes = [  # the Conv input has no Q/DQ: the platform's point on x is missing
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "dq_w", axis=0),
        helper.make_node("Conv", ["x", "w"], ["y"], "conv"),
    ]
    src = tmp_path / "m.onnx"
    src.write_bytes(_model(nodes, inits, [1, 4, 4, 4]))
    out = tmp_path / "fixed.onnx"
    assert main(["fix", str(src), "--platform", "trt_int8", "-o", str(out)]) == 2
    assert "x" in capsys.readouterr().err and not out.exists()
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(2, 1, 4, 4, 4)).astype(np.float32))
    code = main(
        ["fix", str(src), "--platform", "trt_int8", "-o", str(out), "--calib", str(calib), "--json"]
    )
    assert code == 0 and out.exists()
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["calibrated"] >= 1 and doc["qdq_after"]["QuantizeLinear"] >= 1
    assert main(["fix", str(src), "--platform", "trt_int8", "-o", str(src)]) == 2  # overwrite


def test_cli_fix_reports_sqnr_against_the_float_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--float evaluates the original and the fixed model against the float one."""
    g = fusekit.load(corpus_bytes("unet_small_leaky"))
    plan = calibrate(g, fusekit.init_plan(g, "trt_int8"), random_data(g, 2))
    src = tmp_path / "q.onnx"
    src.write_bytes(export_qdq(g, plan).SerializeToString())
    flt = tmp_path / "f.onnx"
    flt.write_bytes(corpus_bytes("unet_small_leaky"))
    out = tmp_path / "fixed.onnx"
    args = ["fix", str(src), "--platform", "trt_int8", "-o", str(out), "--float", str(flt)]
    assert main([*args, "--json", "--samples", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc["sqnr_before"], float) and isinstance(doc["sqnr_after"], float)
    assert doc["counts"]["removed"] > 0


def test_one_channel_weight_per_tensor_is_not_a_finding() -> None:
    """A Conv with one output channel: its per-tensor weight scale is its per-channel one."""
    inits = [
        _c("w_q", np.ones((1, 4, 1, 1)), np.int8),
        _c("w_s", 0.01),
        _c("sx", 0.05),
        _c("zx", 0, np.int8),
    ]
    nodes = [
        *_qdq("x", "xd", "sx", "zx", "x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "dq_w"),
        helper.make_node("Conv", ["xd", "w"], ["c"], "conv"),
        *_qdq("c", "y", "sx", "zx", "c"),
    ]
    got = import_quantized(_model(nodes, inits, [1, 4, 4, 4]))
    assert "weight_per_tensor" not in audit(got.graph, got.plan, "trt_int8").by_kind()


def test_kernel_findings_from_onnxruntime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--kernels adds onnxruntime's verdict: a Conv whose input has no Q/DQ runs in float."""
    from fusekit.audit import kernel_findings
    from fusekit.kernels import kernel_report

    inits = [_c("w_q", np.ones((4, 4, 1, 1)), np.int8), _c("w_s", np.full(4, 0.01))]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "dq_w", axis=0),
        helper.make_node("Conv", ["x", "w"], ["y"], "conv"),
    ]
    src = tmp_path / "m.onnx"
    src.write_bytes(_model(nodes, inits, [1, 4, 4, 4]))
    found = kernel_findings(kernel_report(str(src)))
    assert any(f.kind == "float_kernel" and f.ops == ("conv",) for f in found)
    assert main(["audit", str(src), "--platform", "ort_int8", "--kernels", "--json"]) == 1
    kinds = {f["kind"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert {"float_kernel", "float_input"} <= kinds


def test_cli_audit_report_highlights_every_finding(tmp_path: Path) -> None:
    """``fusekit audit --report R.html`` draws the model's placement with every finding's
    tensors marked (table and drawing) beside the platform's plan, slot by slot."""
    import re

    src = tmp_path / "unfused.onnx"
    src.write_bytes(_export("yolov5s_silu", "trt_int8", fused=False).SerializeToString())
    report = tmp_path / "audit.html"
    assert main(["audit", str(src), "--platform", "trt_int8", "--report", str(report)]) in (0, 1)
    text = report.read_text()
    got = import_quantized(src.read_bytes(), restore_clamps=True)
    result = audit(got.graph, got.plan, "trt_int8", dangling=got.dangling)
    assert result.findings
    marked = set(re.findall(r'<mark class="fk-finding fk-sev-\w+" data-tensor="([^"]*)"', text))
    drawn = set(re.findall(r'<path class="e [a-z]+ fk-hl"[^>]*><title>([^<]*) \(', text))
    drawn |= set(  # edges cut by a page break: a stub on each page
        re.findall(
            r'<path class="stub fk-hl"[^>]*/><text[^<]*</text><title>(.*?) (?:read|from) ', text
        )
    )
    import html as html_lib

    for f in result.findings:
        assert f.kind in text
        for t in f.tensors:
            assert html_lib.escape(t) in marked, (f.kind, t)
            if f.kind == "fused_activation_qdq":  # a quantized edge of the drawing
                assert html_lib.escape(t) in drawn, t
    assert 'id="beside"' in text and "OVERLAPPED" in text  # the platform fuses what it flags
    assert main(["audit", str(src), "--platform", "trt_int8", "--report", str(src)]) == 2
