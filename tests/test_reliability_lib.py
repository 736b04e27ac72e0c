"""Issue 10, library half: wrong answers the library used to accept silently.

Each test names the issue item it covers; each fails on fusekit 0.1 (checked when written).
"""

from __future__ import annotations

from typing import Any

import pytest
from onnx import helper

import fusekit
from fusekit import PlanGraphMismatch, laws
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
from fusekit.quant import check_plan_graph, diff
from fusekit.report import render_report

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
