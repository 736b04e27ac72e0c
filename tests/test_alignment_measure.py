"""Alignment by measurement: preferred alignment split by calibrated ranges, required kept."""

from __future__ import annotations

from typing import Any

import pytest
from onnx import helper

import fusekit
from fusekit.calibrate import Calibration
from fusekit.errors import InvalidPlatform
from fusekit.passes.alignment import SPLIT_FACTORS, Alignment
from fusekit.rulefile import platform_from_dict, platform_to_dict

from .test_calibrate import _model, _w, concat_model, samples


def add_model(ratio: float) -> bytes:
    """conv_a and conv_b read the same input; conv_b's weights are ``ratio`` times larger."""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], "conv_a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], "conv_b"),
        helper.make_node("Add", ["a", "b"], ["s"], "add"),
        helper.make_node("Conv", ["s", "wc"], ["y"], "conv_c"),
    ]
    inits = {
        "wa": _w((4, 3, 1, 1), seed=5),
        "wb": _w((4, 3, 1, 1), scale=0.5 * ratio, seed=5),
        "wc": _w((2, 4, 1, 1), seed=7),
    }
    return _model(nodes, inits, [("x", [1, 3, 5, 5])], [("y", [1, 2, 5, 5])])


def run(model: bytes, platform: Any = "trt_int8", **alignment: Any) -> Any:
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, platform)
    cal = Calibration(samples(4, (1, 3, 5, 5)))
    return fusekit.default_pipeline(platform, calibration=cal, **alignment).run(g, plan)


A, B = fusekit.Slot("add", "in", 0), fusekit.Slot("add", "in", 1)


def test_ranges_within_the_factor_align_and_the_decision_says_by_how_much() -> None:
    res = run(add_model(30.0), spread_by_family={"elementwise": 64.0})
    assert res.plan.root(A) == res.plan.root(B)
    why = [d.reason for d in res.decisions if d.reason.startswith("Add add:")]
    assert why and all("30.0x apart" in w and "below the 64x split factor" in w for w in why), why
    assert not [d for d in res.refusals if d.rule == "align-elementwise"]


def test_ranges_beyond_the_factor_are_split_with_the_numbers() -> None:
    res = run(add_model(30.0), spread_by_family={"elementwise": 8.0})
    assert res.plan.root(A) != res.plan.root(B)
    (refusal,) = [d for d in res.refusals if d.rule == "align-elementwise"]
    assert "differ by 30.0x" in refusal.reason
    assert "8x split factor of elementwise" in refusal.reason


def test_elementwise_alignment_is_never_split_by_default_and_says_so() -> None:
    """The measured default: an Add's inputs align whatever their spread (1000x here)."""
    res = run(add_model(1000.0))
    assert SPLIT_FACTORS["elementwise"] == 0.0
    assert res.plan.root(A) == res.plan.root(B)
    why = [d.reason for d in res.decisions if d.reason.startswith("Add add:")]
    assert why and all("x apart" in w and "never split" in w for w in why), why


def test_a_family_without_its_own_factor_uses_max_spread() -> None:
    split = run(add_model(30.0), spread_by_family={}, max_spread=16.0)
    assert split.plan.root(A) != split.plan.root(B)
    kept = run(add_model(30.0), spread_by_family={}, max_spread=0.0)  # 0: never split
    assert kept.plan.root(A) == kept.plan.root(B)
    assert Alignment("trt_int8").split_factor("concat") == SPLIT_FACTORS.get("concat", 16.0)


def test_required_alignment_is_kept_whatever_the_ranges() -> None:
    """Boxes (x400) and scores: split when preferred, one scale when the backend needs it."""
    boxes, scores = fusekit.Slot("concat", "in", 0), fusekit.Slot("concat", "in", 1)
    preferred = run(concat_model())
    assert preferred.plan.root(boxes) != preferred.plan.root(scores)
    strict = fusekit.get_platform("trt_int8").evolve(
        name="trt_int8_concat_required", alignment_required={"concat"}
    )
    res = run(concat_model(), strict)
    assert res.plan.root(boxes) == res.plan.root(scores)
    assert not [d for d in res.refusals if d.rule == "align-concat"]
    why = [d.reason for d in res.decisions if d.reason.startswith("Concat concat:")]
    assert why and all("the backend requires one scale here (ranges" in w for w in why), why


def test_rule_files_carry_alignment_required() -> None:
    p = fusekit.get_platform("trt_int8").evolve(name="strict", alignment_required={"concat"})
    d = platform_to_dict(p)
    assert d["alignment_required"] == ["concat"]
    assert platform_from_dict(d) == p
    with pytest.raises(InvalidPlatform, match="unknown alignment group"):
        platform_from_dict({"name": "x", "base": "trt_int8", "alignment_required": ["add"]})


def test_the_alignment_unmeasured_quirk_alone_keeps_wide_groups_aligned() -> None:
    """Measured splitting is switched off by its named quirk, not by "has any quirk": a
    corrected rule set with an unrelated quirk still splits."""
    trt = fusekit.get_platform("trt_int8")
    other = trt.evolve(name="trt_other_quirk", quirks={"graph_output_fusion"})
    res = run(add_model(30.0), other, spread_by_family={"elementwise": 8.0})
    assert res.plan.root(A) != res.plan.root(B)
    unmeasured = trt.evolve(name="trt_unmeasured", quirks={"alignment_unmeasured"})
    res = run(add_model(30.0), unmeasured, spread_by_family={"elementwise": 8.0})
    assert res.plan.root(A) == res.plan.root(B)
