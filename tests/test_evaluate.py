"""Accuracy evaluation of QDQ exports and the fused/unfused comparison."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fusekit
from fusekit import QuantPlan, Slot
from fusekit.calibrate import InvalidData
from fusekit.evaluate import (
    Evaluation,
    OutputMetrics,
    compare,
    evaluate,
    group_spreads,
    unquantized_inputs,
)
from fusekit.export import build_qdq, export_qdq

from .test_calibrate import branch_add_model, concat_model, conv_relu_model, samples
from .test_export import calibrated


def test_identical_model_is_perfect() -> None:
    g = fusekit.load(conv_relu_model())
    m = export_qdq(g, QuantPlan.empty(g))
    ev = evaluate(g, m, samples(3))
    (o,) = ev.outputs
    assert o.name == "y" and o.samples == 3 and ev.samples == 3
    assert math.isinf(o.sqnr_db) and o.sqnr_db > 0
    assert o.cosine == pytest.approx(1.0) and o.max_abs_error == 0.0
    assert ev.to_dict()["outputs"][0]["sqnr_db"] == "inf"
    json.dumps(ev.to_dict(), allow_nan=False)


def test_metrics_match_a_direct_computation() -> None:
    g, plan = calibrated(conv_relu_model(), "trt_int8")
    m = export_qdq(g, plan)
    feeds = samples(4, seed=9)
    ev = evaluate(g, m, feeds)
    sf = ort.InferenceSession(conv_relu_model(), providers=["CPUExecutionProvider"])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sq = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = np.concatenate([sf.run(None, f)[0].ravel() for f in feeds]).astype(np.float64)
    got = np.concatenate([sq.run(None, f)[0].ravel() for f in feeds]).astype(np.float64)
    o = ev["y"]
    assert o.sqnr_db == pytest.approx(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))
    cos = np.dot(ref, got) / np.linalg.norm(ref) / np.linalg.norm(got)
    assert o.cosine == pytest.approx(cos)
    assert o.max_abs_error == pytest.approx(np.max(np.abs(ref - got)), rel=1e-6)
    assert 20 < o.sqnr_db < 60 and ev.min_sqnr == o.sqnr_db
    assert "y" in ev.table() and ev.kernels == "reference"


def test_int8_kernels_run_the_fused_integer_path() -> None:
    g, plan = calibrated(conv_relu_model(), "ort_int8")
    m = export_qdq(g, plan)
    ref = evaluate(g, m, samples(2), kernels="reference")
    fast = evaluate(g, m, samples(2), kernels="int8")
    assert fast.kernels == "int8"
    assert abs(fast.min_sqnr - ref.min_sqnr) < 6  # same scheme, integer arithmetic
    with pytest.raises(InvalidData, match="unknown kernels"):
        evaluate(g, m, samples(1), kernels="fp8")


def test_evaluate_reads_files_and_splits(tmp_path: Any) -> None:
    g, plan = calibrated(conv_relu_model(), "trt_int8")
    path = tmp_path / "q.onnx"
    path.write_bytes(export_qdq(g, plan).SerializeToString())
    x = np.stack([s["x"] for s in samples(5)])
    np.savez(tmp_path / "d.npz", calib__x=x[:3], eval__x=x[3:])
    ev = evaluate(g, path, tmp_path / "d.npz")
    assert ev.samples == 2 and "eval__" in ev.data_label


def test_qdq_model_without_the_float_outputs_is_refused() -> None:
    g = fusekit.load(conv_relu_model())
    m = export_qdq(g, QuantPlan.empty(g))
    m.graph.output[0].name = "other"
    m.graph.node[-1].output[0] = "other"
    with pytest.raises(InvalidData, match="no output"):
        evaluate(g, m, samples(1))


def test_report_mapping_has_the_report_schema() -> None:
    ev = Evaluation((OutputMetrics("y", 30.0, 0.99, 0.1, 4),), 4, "data", "reference")
    rep = ev.to_report()
    assert rep["outputs"] == {"y": {"sqnr_db": 30.0, "cosine": 0.99, "max_abs": 0.1}}
    assert rep["samples"] == 4


def test_unquantized_inputs_finds_conv_inputs_without_dq() -> None:
    g, plan = calibrated(conv_relu_model(), "trt_int8")
    m = export_qdq(g, plan)
    assert unquantized_inputs(m) == []
    float_model = onnx.load_from_string(conv_relu_model())
    assert unquantized_inputs(float_model) == [
        "conv1|in|0",
        "conv1|in|1",
        "conv2|in|0",
        "conv2|in|1",
    ]


# --------------------------------------------------------------------------------------------
# compare


def test_compare_fused_unfused_and_no_alignment() -> None:
    g = fusekit.load(branch_add_model())
    feeds = samples(4, (1, 3, 6, 6))
    cmp = compare(g, "trt_int8", feeds, samples(3, (1, 3, 6, 6), seed=1), alignment_off=True)
    names = [v.name for v in cmp.variants]
    assert names == ["fused", "unfused", "fused, no alignment"]
    fused, unfused = cmp["fused"], cmp["unfused"]
    assert fused.activation_pairs < unfused.activation_pairs
    assert fused.evaluation.samples == 3
    assert fused.evaluation["y"].sqnr_db > unfused.evaluation["y"].sqnr_db
    d = cmp.to_dict()
    json.dumps(d, allow_nan=False)
    assert "fused, no alignment" in cmp.table()
    # the aligned Add ties two branches whose ranges differ about 10x
    (group,) = [gs for gs in cmp.groups if any(t == "ra" for t, _ in gs.members)]
    assert {t for t, _ in group.members} >= {"ra", "rb"}
    assert group.ratio > 2


def test_compare_has_no_wide_group_to_flag_after_alignment_split_it() -> None:
    """The boxes/scores Concat (ranges 16x+ apart) is no longer tied: nothing to flag.

    Before the 16x rule the fused plan shared one scale between pixel boxes and [0, 1] scores
    and compare flagged that group (ratio >= 16, 4+ bits lost); alignment now refuses it.
    """
    g = fusekit.load(concat_model())
    feeds = samples(3, (1, 3, 5, 5))
    cmp = compare(g, "trt_int8", feeds)
    assert cmp.flagged == ()
    assert not [gs for gs in cmp.groups if {"boxes", "scores"} <= {t for t, _ in gs.members}]
    # scores keep their own scale: the fused export tracks the float head (39.6 dB measured)
    assert cmp["fused"].evaluation["y"].sqnr_db > 30


def test_group_spreads_on_given_ranges() -> None:
    _, plan = calibrated(branch_add_model(), "trt_int8", shape=(1, 3, 6, 6))
    root = plan.root(Slot("add", "in", 0))
    spreads = group_spreads(plan, {"ra": 1.0, "rb": 100.0}, threshold=50)
    (gs,) = [s for s in spreads if s.root == root]
    assert gs.members[0] == ("rb", 100.0) and gs.ratio == pytest.approx(100.0) and gs.flagged
    calm = group_spreads(plan, {"ra": 1.0, "rb": 2.0}, threshold=50)
    assert not any(s.flagged for s in calm)


def test_compare_is_deterministic_and_leaves_graph_alone() -> None:
    g = fusekit.load(conv_relu_model())
    before = fusekit.to_model(g).SerializeToString()
    a = compare(g, "ort_int8", samples(2)).to_dict()
    b = compare(g, "ort_int8", samples(2)).to_dict()
    assert a == b
    assert fusekit.to_model(g).SerializeToString() == before
    qdq = build_qdq(g, compare(g, "ort_int8", samples(2))["fused"].plan)
    assert qdq.activation_pairs == a["variants"][0]["activation_pairs"]
