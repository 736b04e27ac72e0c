"""Issue 10, library half: wrong answers the library used to accept silently.

Each test names the issue item it covers; each fails on fusekit 0.1 (checked when written).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusekit
from fusekit import (
    Edge,
    InvalidPlan,
    Node,
    Pattern,
    PlanGraphMismatch,
    QuantState,
    Slot,
    UnsupportedModel,
    cli,
    laws,
)
from fusekit.calibrate import Calibration, InvalidData, calibrate
from fusekit.export import export_qdq
from fusekit.passes import (
    ActivationFusion,
    Alignment,
    CompositeActivationFusion,
    EpilogueFusion,
    PassiveFusion,
    PassiveParameters,
    Simplify,
    default_pipeline,
    fuse,
)
from fusekit.plan_io import plan_from_dict, plan_to_dict
from fusekit.quant import check_plan_graph, diff, minmax_to_scale_offset
from fusekit.report import render_report
from fusekit.rulefile import unknown_op_types

from .graphs import G
from .test_calibrate import _model, _w, conv_relu_model, samples


def sigmoid_model() -> bytes:
    """conv_relu_model with relu1 a Sigmoid: same op names and slot counts, other structure."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], "conv2"),
    ]
    inits = {
        "w1": _w((4, 3, 3, 3), seed=11),
        "b1": _w((4,), 0.1, seed=12),
        "w2": _w((2, 4, 1, 1), seed=13),
        "b2": _w((2,), 0.1, seed=14),
    }
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])])


def _two_graphs() -> tuple[fusekit.Graph, fusekit.Graph]:
    return fusekit.load(conv_relu_model()), fusekit.load(sigmoid_model())


# --------------------------------------------------------------------------------------------
# item 5: a plan of another graph is refused everywhere, by one check


def test_item5_graphs_differ_but_slot_counts_match() -> None:
    """The premise: the old check (slot counts) cannot tell these graphs apart."""
    a, b = _two_graphs()
    assert a.index.n_slots == b.index.n_slots
    assert a.fingerprint() != b.fingerprint()


ALL_PASSES: list[Any] = [
    EpilogueFusion("trt_int8"),
    ActivationFusion("trt_int8"),
    CompositeActivationFusion("trt_int8"),
    PassiveFusion("trt_int8"),
    Alignment("trt_int8"),
    PassiveParameters("trt_int8"),
    Simplify("trt_int8"),
    default_pipeline("trt_int8"),
    default_pipeline("trt_int8", calibration=Calibration(samples(1))),
    fusekit.Pipeline(()),
]


@pytest.mark.parametrize("p", ALL_PASSES, ids=lambda p: type(p).__name__)
def test_item5_every_pass_refuses_a_plan_of_another_graph(p: Any) -> None:
    a, b = _two_graphs()
    plan_b = fusekit.init_plan(b, "trt_int8")
    with pytest.raises(PlanGraphMismatch, match=r"op 'relu1' is Sigmoid against Relu"):
        p.run(a, plan_b)


def test_item5_calibrate_fuse_report_export_laws_diff_refuse() -> None:
    a, b = _two_graphs()
    plan_a = fusekit.init_plan(a, "trt_int8")
    plan_b = fusekit.init_plan(b, "trt_int8")
    cal_b = calibrate(b, plan_b, samples(2))
    with pytest.raises(PlanGraphMismatch, match=r"calibrate: .*op 'relu1' is Sigmoid"):
        calibrate(a, plan_b, samples(2))
    with pytest.raises(PlanGraphMismatch, match="fuse"):
        fuse(a, plan_b, "trt_int8")
    with pytest.raises(PlanGraphMismatch, match="render_report"):
        render_report(a, plan_b)
    with pytest.raises(PlanGraphMismatch, match="export"):
        export_qdq(a, cal_b)
    with pytest.raises(PlanGraphMismatch, match=r"laws\.check"):
        laws.check(a, plan_b, "trt_int8")
    with pytest.raises(PlanGraphMismatch, match="diff"):
        diff(plan_a, plan_b)


def test_item5_same_structure_is_accepted_and_cheap() -> None:
    """A plan of an equal graph (the model loaded twice) fits; the fingerprint is cached."""
    a1 = fusekit.load(conv_relu_model())
    a2 = fusekit.load(conv_relu_model())
    plan = fusekit.init_plan(a1, "trt_int8")
    res = default_pipeline("trt_int8").run(a2, plan)
    assert res.plan.graph is a1
    fp = a2.fingerprint()
    assert a2.fingerprint() is fp  # computed once per graph value
    check_plan_graph(plan, a1)  # identity: no fingerprint needed
    assert a1._cache.fingerprint is not None  # a1 was fingerprinted by the comparison above


def test_item5_wiring_difference_is_named() -> None:
    g = fusekit.load(conv_relu_model())
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["c1", "w2", "b2"], ["y"], "conv2"),  # skips relu1
    ]
    inits = {
        "w1": _w((4, 3, 3, 3), seed=1),
        "b1": _w((4,), 0.1, seed=2),
        "w2": _w((2, 4, 1, 1), seed=3),
        "b2": _w((2,), 0.1, seed=4),
    }
    other = fusekit.load(
        _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8]), ("r1", [1, 4, 8, 8])])
    )
    plan = fusekit.init_plan(other, "trt_int8")
    with pytest.raises(PlanGraphMismatch, match=r"slot conv2\|in\|0 is tensor 'c1' against 'r1'"):
        calibrate(g, plan, samples(1))


# --------------------------------------------------------------------------------------------
# item 6: a plan file records its graph; a plan of another model is refused on load


def test_item6_plan_file_of_another_model_with_the_same_op_names_is_refused(
    tmp_path: Path,
) -> None:
    a, b = _two_graphs()
    assert set(a.ops) == set(b.ops) and a.name == b.name  # exporter-style look-alikes
    path = tmp_path / "b.plan.json"
    fusekit.save_plan(
        default_pipeline("trt_int8").run(b, fusekit.init_plan(b, "trt_int8")).plan, path
    )
    with pytest.raises(PlanGraphMismatch, match=r"b\.plan\.json: .*structural fingerprint"):
        fusekit.load_plan(a, path)
    assert fusekit.load_plan(b, path).graph is b


def test_item6_graph_record_name_and_counts_are_compared() -> None:
    a = fusekit.load(conv_relu_model())
    good = plan_to_dict(fusekit.init_plan(a, "trt_int8"))
    for field, value, words in (
        ("name", "yolo", "graph name 'yolo'"),
        ("ops", 4, "4 ops, this graph has 3"),
        ("slots", 99, "99 quantized slots"),
    ):
        data = json.loads(json.dumps(good))
        data["graph"][field] = value
        with pytest.raises(PlanGraphMismatch, match=words):
            plan_from_dict(a, data)


def test_item6_version_1_files_are_read_with_the_checks_they_allow() -> None:
    """0.1 wrote version 1 without a fingerprint: still read, checked on name and counts."""
    a = fusekit.load(conv_relu_model())
    v1 = plan_to_dict(fusekit.init_plan(a, "trt_int8"))
    v1["version"] = 1
    del v1["graph"]["fingerprint"]
    assert plan_from_dict(a, v1) == fusekit.init_plan(a, "trt_int8")
    wrong = json.loads(json.dumps(v1))
    wrong["graph"]["ops"] = 7
    with pytest.raises(PlanGraphMismatch, match="7 ops"):
        plan_from_dict(a, wrong)
    v2 = plan_to_dict(fusekit.init_plan(a, "trt_int8"))
    del v2["graph"]["fingerprint"]  # version 2 must carry it
    with pytest.raises(InvalidPlan, match="fingerprint"):
        plan_from_dict(a, v2)


def test_item6_check_plan_of_another_model_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_path, b_path = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a_path.write_bytes(conv_relu_model())
    b_path.write_bytes(sigmoid_model())
    plan = tmp_path / "b.plan.json"
    b = fusekit.load(b_path)
    fusekit.save_plan(fusekit.init_plan(b, "trt_int8"), plan)
    assert cli.main(["check", str(b_path), "--platform", "trt_int8", "--plan", str(plan)]) == 0
    capsys.readouterr()
    assert cli.main(["check", str(a_path), "--platform", "trt_int8", "--plan", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "written for another graph" in err and "fingerprint" in err


# --------------------------------------------------------------------------------------------
# item 11: op rules apply to ONNX's own domain only


def _domain_graph(domain: str) -> fusekit.Graph:
    """x -> conv (of ``domain``) -> relu -> c2 (an ONNX Conv); the first Conv is private."""
    b = G()
    w = b.const("w", np.ones((4, 4, 1, 1)) * 0.1)
    b.ops = [
        fusekit.Op("conv", "Conv", ("x", w), ("conv",), domain=domain),
        fusekit.Op("relu", "Relu", ("conv",), ("relu",)),
        fusekit.Op("c2", "Conv", ("relu", w), ("c2",), domain="ai.onnx"),
    ]
    return b.build(["c2"])


@pytest.mark.parametrize("platform", ["trt_int8", "ort_int8", "ppq066_trt_int8"])
def test_item11_a_private_conv_is_not_planned_as_onnx_conv(platform: str) -> None:
    g = _domain_graph("com.example")
    plan = fusekit.init_plan(g, platform)
    assert not plan.is_quantized("conv")
    assert plan.is_quantized("c2")  # "ai.onnx" is ONNX's domain
    fused = default_pipeline(platform).run(g, plan).plan
    # the Relu is not fused into a Conv it is not the activation of
    assert fused.state(Slot("relu", "in", 0)) != QuantState.OVERLAPPED
    assert not laws.check(g, fused, platform)
    ppq = fusekit.init_plan(g, platform, dispatch="ppq-conservative")
    assert not ppq.is_quantized("conv")


def test_item11_patterns_and_laws_see_the_domain() -> None:
    g = _domain_graph("com.example")
    conv_relu = Pattern("cr", (Node("c", "Conv"), Node("r", "Relu")), (Edge("c", "r"),))
    assert fusekit.find(g, conv_relu) == []
    assert not Node("c", "Conv").accepts(g.op("conv"))
    assert Node("c", "com.example::Conv").accepts(g.op("conv"))
    same = _domain_graph("")
    assert [f.match.ops for f in fusekit.find(same, conv_relu)] == [("conv", "relu")]


def test_item11_a_rule_set_can_name_another_domain_explicitly() -> None:
    g = _domain_graph("com.microsoft")
    base = fusekit.get_platform("trt_int8")
    p = base.evolve(
        name="trt_int8_ms",
        quant_types=base.quant_types | {"com.microsoft::Conv"},
        computing_types=base.computing_types | {"com.microsoft::Conv"},
    )
    assert not unknown_op_types(p)
    plan = fusekit.init_plan(g, p)
    assert plan.is_quantized("conv")
    fused = default_pipeline(p).run(g, plan).plan
    assert fused.state(Slot("conv", "out", 0)) == QuantState.OVERLAPPED  # Relu fused into it


# --------------------------------------------------------------------------------------------
# item 7: non-finite values are refused unless the user opts in


def _nan_weight_model(value: float = np.nan, tensor: str = "w1") -> bytes:
    w = {
        "w1": _w((4, 3, 3, 3), seed=1),
        "b1": _w((4,), 0.1, seed=2),
        "w2": _w((2, 4, 1, 1), seed=3),
        "b2": _w((2,), 0.1, seed=4),
    }
    w[tensor].flat[min(5, w[tensor].size - 1)] = value
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], "conv2"),
    ]
    return _model(nodes, w, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])])


def _fused(g: fusekit.Graph) -> fusekit.QuantPlan:
    return default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan


def test_item7_nan_in_a_data_file_names_file_input_and_sample(tmp_path: Path) -> None:
    g = fusekit.load(conv_relu_model())
    x = np.stack([s["x"] for s in samples(4)])
    x[2, 0, 1, 2, 3] = np.nan
    path = tmp_path / "calib.npz"
    np.savez(path, x=x)
    with pytest.raises(InvalidData, match=r"calib\.npz: input 'x', sample 2: 1 NaN, 0 Inf"):
        calibrate(g, _fused(g), path)


def test_item7_inf_in_python_samples_is_refused() -> None:
    g = fusekit.load(conv_relu_model())
    feeds = samples(3)
    feeds[1]["x"][0, 0, 0, 0] = -np.inf
    with pytest.raises(InvalidData, match=r"input 'x', sample 1: 0 NaN, 1 Inf"):
        calibrate(g, _fused(g), feeds)


def test_item7_opt_in_skips_non_finite_values_exactly() -> None:
    """With allow_nonfinite the range is the finite values' range, as if they were absent."""
    g = fusekit.load(conv_relu_model())
    plan = _fused(g)
    dirty = samples(3)
    x0 = dirty[0]["x"]
    x0.flat[int(np.argmin(x0))] = np.nan  # the NaN hides the minimum of sample 0
    dirty[2]["x"][0, 1, 2, 3] = np.inf
    finite = np.concatenate([d["x"][np.isfinite(d["x"])] for d in dirty])
    lo, hi = float(finite.min()), float(finite.max())
    got = calibrate(g, plan, dirty, allow_nonfinite=True, weights_first=False)
    cfg = got[Slot("conv1", "in", 0)]
    want_scale, _ = minmax_to_scale_offset(lo, hi, cfg)
    assert float(got.scale_of(Slot("conv1", "in", 0))) == pytest.approx(want_scale, rel=1e-6)


def test_item7_all_nan_data_never_gives_a_silent_minimum_scale() -> None:
    g = fusekit.load(conv_relu_model())
    feeds = [{"x": np.full((1, 3, 8, 8), np.nan, np.float32)} for _ in range(2)]
    with pytest.raises(InvalidData, match="sample 0: 192 NaN"):
        calibrate(g, _fused(g), feeds)
    with pytest.raises(InvalidData, match=r"tensor 'x' has no finite value in any of its 2"):
        calibrate(g, _fused(g), feeds, allow_nonfinite=True)


def test_item7_nan_weight_of_a_quantized_op_is_refused_naming_the_initializer() -> None:
    g = fusekit.load(_nan_weight_model())
    with pytest.raises(InvalidData, match=r"initializer 'w1' \(read by conv1\) has 1 NaN"):
        calibrate(g, _fused(g), samples(2))
    gb = fusekit.load(_nan_weight_model(np.inf, "b2"))
    ort_plan = default_pipeline("ort_int8").run(gb, fusekit.init_plan(gb, "ort_int8")).plan
    assert ort_plan.state(Slot("conv2", "in", 2)) == QuantState.PASSIVE_INIT  # int32 bias
    with pytest.raises(InvalidData, match=r"initializer 'b2' .* 0 NaN, 1 Inf"):
        calibrate(gb, ort_plan, samples(2))


def test_item7_opted_in_nan_weight_exports_without_numpy_warnings() -> None:
    g = fusekit.load(_nan_weight_model())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = calibrate(g, _fused(g), samples(2), allow_nonfinite=True)
        model = export_qdq(g, plan)
    w = next(t for t in model.graph.initializer if t.name.startswith("w1"))
    q = numpy_helper.to_array(w)
    assert q.dtype == np.int8 and q.flat[5] == 0  # NaN -> the zero point, explicitly


def _unary_model(op_type: str) -> fusekit.Graph:
    nodes = [
        helper.make_node(op_type, ["x"], ["r"], "unary"),
        helper.make_node("Conv", ["r", "w"], ["y"], "conv"),
    ]
    m = _model(nodes, {"w": _w((2, 3, 1, 1))}, [("x", [1, 3, 4, 4])], [("y", [1, 2, 4, 4])])
    return fusekit.load(m)


def test_item7_model_computing_nan_is_refused_naming_the_tensor() -> None:
    g = _unary_model("Sqrt")
    feeds = [{"x": np.ones((1, 3, 4, 4), np.float32)} for _ in range(2)]
    feeds[1]["x"][0, 0, 0, 0] = -1.0  # finite data, sqrt(-1) = NaN inside the model
    with pytest.raises(InvalidData, match=r"sample 1: the model computes NaN in tensor 'r'"):
        calibrate(g, _fused(g), feeds)
    calibrate(g, _fused(g), feeds, allow_nonfinite=True)


def test_item7_inf_computed_by_the_model_saturates_and_is_left_out_of_the_range() -> None:
    """A mask's -inf (here 1/0) is not the data's fault: it saturates, the range stays finite."""
    g = _unary_model("Reciprocal")
    feeds = [{"x": np.full((1, 3, 4, 4), 2.0, np.float32)} for _ in range(2)]
    feeds[1]["x"][0, 0, 0, 0] = 0.0
    plan = calibrate(g, _fused(g), feeds, weights_first=False)
    scale = plan.scale_of(Slot("conv", "in", 0))
    assert scale is not None
    expect, _ = minmax_to_scale_offset(0.5, 0.5, plan[Slot("conv", "in", 0)])
    assert float(scale) == pytest.approx(expect)  # the finite values' range, 0.5 .. 0.5


def test_item7_cli_refuses_nan_data_with_exit_2_and_accepts_the_opt_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(conv_relu_model())
    x = np.stack([s["x"] for s in samples(3)])
    x[1, 0, 0, 0, 0] = np.nan
    data = tmp_path / "d.npz"
    np.savez(data, x=x)
    argv = ["fuse", str(model), "--platform", "trt_int8", "--calib", str(data), "--json"]
    assert cli.main(argv) == 2
    assert "d.npz: input 'x', sample 1" in capsys.readouterr().err
    clean = tmp_path / "e.npz"
    np.savez(clean, x=np.stack([s["x"] for s in samples(2, seed=5)]))
    assert cli.main([*argv, "--allow-nonfinite", "--eval", str(clean)]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]


# --------------------------------------------------------------------------------------------
# item 10: float16 models are refused clearly (plan, export, ranges and summary cannot disagree)


def _fp16_model(elem: int = TensorProto.FLOAT16, dtype: Any = np.float16) -> bytes:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], "conv2"),
    ]
    inits = [
        numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(dtype), n)
        for n, s in [("w1", (4, 3, 3, 3)), ("b1", (4,)), ("w2", (2, 4, 1, 1))]
    ]
    graph = helper.make_graph(
        nodes,
        "half",
        [helper.make_tensor_value_info("x", elem, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", elem, [1, 2, 8, 8])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return bytes(m.SerializeToString())


@pytest.mark.parametrize("dispatch", ["all", "ppq-conservative"])
def test_item10_float16_model_is_refused_by_init_plan(dispatch: str) -> None:
    g = fusekit.load(_fp16_model())
    with pytest.raises(UnsupportedModel, match=r"half: 6 tensor\(s\) to quantize are float16"):
        fusekit.init_plan(g, "trt_int8", dispatch=dispatch)


def test_item10_double_model_is_refused_and_float32_parts_still_plan() -> None:
    with pytest.raises(UnsupportedModel, match="double"):
        fusekit.init_plan(fusekit.load(_fp16_model(TensorProto.DOUBLE, np.float64)), "ort_int8")
    g = fusekit.load(_fp16_model())
    plan = fusekit.init_plan(g, "trt_int8", dispatch={"conv1": None, "conv2": None, "relu1": None})
    assert len(plan) == 0  # nothing quantized, nothing claimed


def test_item10_a_plan_file_cannot_bring_float16_back() -> None:
    """load_plan applies the same refusal, so no route gives a plan claiming float16 tensors."""
    g = fusekit.load(_fp16_model())
    as32 = fusekit.load(conv_relu_model())
    data = plan_to_dict(fusekit.init_plan(as32, "trt_int8"))
    data["graph"] = {"name": "half", "ops": 3, "slots": 0, "fingerprint": g.fingerprint()}
    data["ops"] = {"relu1": data["ops"]["relu1"]}
    data["links"] = {}
    with pytest.raises(UnsupportedModel, match="float16"):
        plan_from_dict(g, data)


def test_item10_cli_refuses_a_float16_model_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "half.onnx"
    model.write_bytes(_fp16_model())
    out = tmp_path / "out"
    assert cli.main(["fuse", str(model), "--platform", "trt_int8", "--out-dir", str(out)]) == 2
    assert "float16, not float32" in capsys.readouterr().err
    assert not any(out.glob("*")) if out.exists() else True


# --------------------------------------------------------------------------------------------
# item 9: If/Loop/Scan bodies are listed as left float (summary, --json, report, export notes)


def _if_model() -> bytes:
    """x -> conv -> c; If(cond) { then: Relu(c), else: Conv(c) } -> y. The bodies stay float."""
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["c"], ["t"], "then_relu")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 8, 8])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Conv", ["c", "w2"], ["e"], "else_conv")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4, 8, 8])],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("If", ["cond"], ["y"], "branch", then_branch=then_g, else_branch=else_g),
    ]
    g = helper.make_graph(
        nodes,
        "with_if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [
            numpy_helper.from_array(_w((4, 3, 3, 3), seed=1), "w1"),
            numpy_helper.from_array(_w((4, 4, 1, 1), seed=2), "w2"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return bytes(m.SerializeToString())


def test_item9_subgraph_bodies_are_listed_as_left_float(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = fusekit.load(_if_model())
    assert g.subgraph_ops() == (("branch", "If", ("else_branch", "then_branch")),)
    note = "If 'branch': sub-graph else_branch, then_branch not planned; its ops run in float"
    model = tmp_path / "m.onnx"
    model.write_bytes(_if_model())
    report = tmp_path / "r.html"
    argv = ["fuse", str(model), "--platform", "trt_int8", "--report", str(report)]
    assert cli.main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["export"]["left_float"][0] == note
    assert "<th>left float</th><td>If &#x27;branch&#x27;: sub-graph" in report.read_text()
    assert cli.main(argv) == 0
    assert f"left float: {note}" in capsys.readouterr().out


def test_item9_graphs_without_bodies_list_nothing() -> None:
    g = fusekit.load(conv_relu_model())
    assert g.subgraph_ops() == ()
    assert "left float" not in render_report(g, fusekit.init_plan(g, "trt_int8"))


# --------------------------------------------------------------------------------------------
# the fingerprint itself


def test_fingerprint_ignores_order_weights_and_name_but_sees_structure() -> None:
    def build(ops: list[fusekit.Op], w: float = 0.1, name: str = "g") -> fusekit.Graph:
        b = G()
        b.const("w", np.ones((4, 4, 1, 1)) * w)
        b.ops = ops
        return fusekit.Graph.build(b.ops, b.inputs, ["r"], b.inits.values(), name=name)

    conv = fusekit.Op("c", "Conv", ("x", "w"), ("c",))
    relu = fusekit.Op("r", "Relu", ("c",), ("r",))
    base = build([conv, relu]).fingerprint()
    assert len(base) == 16 and int(base, 16) >= 0
    assert build([relu, conv]).fingerprint() == base  # op order
    assert build([conv, relu], w=0.7, name="other").fingerprint() == base  # weights, name
    assert build([conv, fusekit.Op("r", "Sigmoid", ("c",), ("r",))]).fingerprint() != base
    assert (
        build([conv, fusekit.Op("r", "Relu", ("c",), ("r",), domain="x.y")]).fingerprint() != base
    )
    assert (
        build([conv, fusekit.Op("r", "Relu", ("c",), ("r",), domain="ai.onnx")]).fingerprint()
        == base
    )
    assert build([conv, fusekit.Op("r", "Relu", ("x",), ("r",))]).fingerprint() != base  # wiring
