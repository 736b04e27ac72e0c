"""Sensitivity ranking and the greedy float fallback, on a model with a planted harmful group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper

import fusekit
from fusekit import QuantState
from fusekit.calibrate import Calibration
from fusekit.cli import main
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.sensitivity import activation_groups, greedy_fallback, leave_float, sensitivity

from .test_calibrate import _model, samples


def _planted() -> bytes:
    """Concat ties a 1000x-range branch to a small one; the output reads only the small one.

    Alignment gives the concat's inputs one scale: the small branch falls below one step and
    the output is lost. Leaving that group float is the one fix worth its cost.
    """
    rng = np.random.default_rng(11)
    big = rng.standard_normal((4, 3, 1, 1)).astype(np.float32) * 1000
    small = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    head = np.zeros((2, 8, 1, 1), np.float32)
    head[:, 4:] = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    head[:, :4] = 1e-6
    nodes = [
        helper.make_node("Conv", ["x", "wb"], ["big"], "conv_big"),
        helper.make_node("Conv", ["x", "ws"], ["small"], "conv_small"),
        helper.make_node("Concat", ["big", "small"], ["cat"], "concat", axis=1),
        helper.make_node("Conv", ["cat", "wh"], ["y"], "head"),
    ]
    inits = {"wb": big, "ws": small, "wh": head}
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])])


def _calibrated(g: fusekit.Graph) -> Any:
    plan0 = fusekit.init_plan(g, "ort_int8")
    return fusekit.default_pipeline("ort_int8", calibration=Calibration(samples(8))).run(g, plan0)


def test_the_planted_group_ranks_first_with_the_rule_that_made_it() -> None:
    g = fusekit.load(_planted())
    res = _calibrated(g)
    ev = samples(4, seed=1)
    s = sensitivity(g, res.plan, ev, decisions=res.decisions)
    assert s.sessions == len(activation_groups(res.plan)) + 1 and s.samples == 4
    top = s.groups[0]
    # ort_int8 runs Concat as a node unit (QLinearConcat): its output has a scale of its own,
    # set by the 1000x branch, and the small branch's values fall below one step there
    assert "cat" in top.tensors, top
    assert top.rules == ("simplify",), top.rules  # the rule that made the group, from the log
    assert s.base_sqnr_db < 5.0 and top.gain_db > 20.0, (s.base_sqnr_db, top)
    assert all(g.gain_db < top.gain_db for g in s.groups[1:])
    assert top.pairs >= 1  # leaving it float costs int8 coverage, and says how much


def test_greedy_fallback_leaves_the_worst_group_float_and_recovers() -> None:
    g = fusekit.load(_planted())
    res = _calibrated(g)
    ev = samples(4, seed=1)
    s = sensitivity(g, res.plan, ev, decisions=res.decisions)
    plan, chosen = greedy_fallback(res.plan, s, 1)
    assert [c.root for c in chosen] == [s.groups[0].root]
    assert plan[chosen[0].root].state == QuantState.FP32
    before = evaluate(g, build_qdq(g, res.plan).model, ev).min_sqnr
    after = evaluate(g, build_qdq(g, plan).model, ev).min_sqnr
    assert after == pytest.approx(s.groups[0].sqnr_db, abs=1e-6)
    assert after > before + 20.0
    # nothing chosen: the very same plan
    same, none = greedy_fallback(res.plan, s, 0)
    assert same is res.plan and none == ()
    assert leave_float(res.plan, []) is res.plan


def test_cli_compare_sensitivity_and_fuse_max_float_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = tmp_path / "m.onnx"
    m.write_bytes(_planted())
    x = np.random.default_rng(3).standard_normal((12, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", calib__x=x[:8], eval__x=x[8:])
    data = str(tmp_path / "d.npz")
    code = main(["compare", str(m), "--platform", "ort_int8", "--calib", data, "--sensitivity"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "sensitivity: fused lowest SQNR" in out and "cat" in out
    code = main(
        ["compare", str(m), "--platform", "ort_int8", "--calib", data, "--sensitivity", "--json"]
    )
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["sensitivity"]["groups"][0]["gain_db"] > 20
    argv = [
        "fuse",
        str(m),
        "--platform",
        "ort_int8",
        "--calib",
        data,
        "-o",
        str(tmp_path / "q.onnx"),
    ]
    code = main([*argv, "--max-float-groups", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["float_groups"]["groups"]) == 1
    sqnr = doc["evaluation"]["outputs"][0]["sqnr_db"]
    code = main([*argv, "--json"])
    plain = json.loads(capsys.readouterr()[0])["evaluation"]["outputs"][0]["sqnr_db"]
    assert sqnr > plain + 20, (sqnr, plain)
    code = main([*argv, "--max-float-groups", "-1"])
    assert code == 2 and "must be 0 or more" in capsys.readouterr()[1]
