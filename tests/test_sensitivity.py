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
from fusekit import sensitivity as sens_mod
from fusekit.calibrate import Calibration
from fusekit.cli import main
from fusekit.errors import InvalidData
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.sensitivity import (
    activation_groups,
    fallback_to_target,
    greedy_fallback,
    leave_float,
    sensitivity,
)

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
    s = sensitivity(g, res.plan, ev, decisions=res.decisions, screen_samples=None)
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


def test_screening_scores_every_group_on_few_samples_and_refines_the_top() -> None:
    """Two stages: every group on 2 samples, the best one again on all 8 (runs counted)."""
    g = fusekit.load(_planted())
    res = _calibrated(g)
    ev = samples(8, seed=1)
    full = sensitivity(g, res.plan, ev, decisions=res.decisions, screen_samples=None)
    fast = sensitivity(g, res.plan, ev, decisions=res.decisions, screen_samples=2, refine=1)
    n = len(activation_groups(res.plan))
    assert full.runs == 8 * (n + 1) and full.screen_samples == 8
    # base on all 8 (its screening figure from the same runs), n groups on 2, the top on 8
    assert fast.runs == 8 + 2 * n + 8 and fast.sessions == n + 2 and fast.screen_samples == 2
    assert fast.runs < full.runs
    top = fast.groups[0]
    assert top.root == full.groups[0].root and top.samples == 8
    assert top.gain_db == pytest.approx(full.groups[0].gain_db, abs=1e-9)
    assert fast.base_sqnr_db == pytest.approx(full.base_sqnr_db, abs=1e-9)
    assert all(x.samples == 2 for x in fast.groups[1:])


def test_a_group_whose_export_does_not_change_is_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """An export byte-identical to the plan's own scores the same: no session, gain 0."""
    g = fusekit.load(_planted())
    res = _calibrated(g)
    roots = [r for r, _, _ in activation_groups(res.plan)]
    real = sens_mod.leave_float

    def no_op_for_first(plan: Any, which: Any) -> Any:
        which = list(which)
        return plan if which == [roots[0]] else real(plan, which)

    monkeypatch.setattr(sens_mod, "leave_float", no_op_for_first)
    s = sensitivity(g, res.plan, samples(4, seed=1), screen_samples=None)
    assert s.skipped == 1 and s.sessions == len(roots) and s.runs == 4 * len(roots)
    skipped = next(x for x in s.groups if x.root == roots[0])
    assert skipped.gain_db == 0.0 and skipped.pairs == 0


def test_fallback_to_target_leaves_the_planted_group_float_and_stops() -> None:
    g = fusekit.load(_planted())
    res = _calibrated(g)
    ev = samples(4, seed=1)
    ranking = sensitivity(g, res.plan, ev, decisions=res.decisions)
    fb = fallback_to_target(g, res.plan, ev, 20.0, ranking)
    assert fb.reached and fb.base_sqnr_db < 5.0 and fb.sqnr_db >= 20.0
    assert [x.root for x in fb.chosen] == [ranking.groups[0].root]
    assert len(fb.steps) == 1 and fb.pairs == ranking.groups[0].pairs >= 1
    assert fb.plan[ranking.groups[0].root].state == QuantState.FP32
    measured = evaluate(g, build_qdq(g, fb.plan).model, ev).min_sqnr
    assert measured == pytest.approx(fb.sqnr_db, abs=1e-6)
    # already there: the very same plan, nothing tried
    easy = fallback_to_target(g, res.plan, ev, -100.0, ranking)
    assert easy.plan is res.plan and easy.steps == () and easy.reached


def test_fallback_to_an_unreachable_target_keeps_only_groups_that_help() -> None:
    g = fusekit.load(_planted())
    res = _calibrated(g)
    ev = samples(4, seed=1)
    ranking = sensitivity(g, res.plan, ev, decisions=res.decisions)
    helpful = [x for x in ranking.groups if x.gain_db > 0]
    fb = fallback_to_target(g, res.plan, ev, 500.0, ranking)
    assert not fb.reached and len(fb.steps) == len(helpful)
    assert fb.chosen and fb.steps[0].kept and fb.steps[0].sqnr_db > fb.base_sqnr_db
    assert fb.sqnr_db == max(s.sqnr_db for s in fb.steps if s.kept)
    with pytest.raises(InvalidData, match="finite"):
        fallback_to_target(g, res.plan, ev, float("nan"), ranking)


def test_cli_fuse_target_sqnr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "m.onnx"
    m.write_bytes(_planted())
    x = np.random.default_rng(3).standard_normal((12, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", calib__x=x[:8], eval__x=x[8:])
    q = tmp_path / "q.onnx"
    argv = ["fuse", str(m), "--platform", "ort_int8", "--calib", str(tmp_path / "d.npz")]
    code = main([*argv, "-o", str(q), "--target-sqnr", "20", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    ts = doc["target_sqnr"]
    assert ts["reached"] and ts["sqnr_db"] >= 20 and ts["pairs_given_up"] >= 1
    assert ts["steps"][0]["kept"] and "cat" in ts["steps"][0]["tensors"]
    assert doc["evaluation"]["outputs"][0]["sqnr_db"] == pytest.approx(ts["sqnr_db"], abs=1e-3)
    # unreachable: exit 1, the best plan is still written, and the text says so
    q.unlink()
    code = main([*argv, "-o", str(q), "--target-sqnr", "500"])
    out, err = capsys.readouterr()
    assert code == 1 and q.exists()
    assert "NOT reached" in out and "--target-sqnr 500.0 not reached" in err
    code = main([*argv, "-o", str(q), "--target-sqnr", "20", "--max-float-groups", "1"])
    assert code == 2 and "excludes --max-float-groups" in capsys.readouterr()[1]
