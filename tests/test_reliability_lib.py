"""Issue 10, library half: wrong answers the library used to accept silently.

Each test names the issue item it covers; each fails on fusekit 0.1 (checked when written).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper

import fusekit
from fusekit import Edge, InvalidPlan, Node, Pattern, PlanGraphMismatch, QuantState, Slot, cli, laws
from fusekit.calibrate import Calibration, calibrate
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
from fusekit.platforms import unknown_op_types
from fusekit.quant import check_plan_graph, diff
from fusekit.report import render_report

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
