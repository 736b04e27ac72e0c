"""Plan JSON: exact round trips and errors that name the bad field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fusekit
from fusekit import InvalidPlan, Slot
from fusekit.plan_io import PLAN_VERSION, plan_from_dict, plan_to_dict

from .conftest import corpus_bytes
from .graphs import G


def pipeline_plan(graph: fusekit.Graph, platform: str) -> fusekit.QuantPlan:
    return fusekit.default_pipeline(platform).run(graph, fusekit.init_plan(graph, platform)).plan


@pytest.mark.parametrize("platform", ["trt_int8", "ppq066_ort_int8", "ppl_cuda_int8"])
def test_round_trip_is_exact_on_a_real_model(platform: str, tmp_path: Path) -> None:
    g = fusekit.load(corpus_bytes("yolov5s_silu"))
    plan = pipeline_plan(g, platform)
    root = next(s for s in plan.slots() if plan.parent(s) is None)
    plan = plan.set_scale(root, np.float32(0.1) / 3, 0.0)  # a float32 that is not short in decimal
    path = tmp_path / "plan.json"
    fusekit.save_plan(plan, path)
    back = fusekit.load_plan(g, path)
    assert back == plan
    assert np.array_equal(back.scale_of(root), plan.scale_of(root))
    assert {s: back.parent(s) for s in back.slots()} == {s: plan.parent(s) for s in plan.slots()}
    data = json.loads(path.read_text())
    assert data["format"] == "fusekit-plan" and data["version"] == PLAN_VERSION == 2
    assert data["graph"]["fingerprint"] == g.fingerprint()
    assert len(data["configs"]) < 40  # shared configs are written once


def test_per_channel_scales_round_trip() -> None:
    g = G().conv("c", "x").relu("r", "c").build(["r"])
    plan = fusekit.init_plan(g, "trt_int8")
    plan = plan.set_scale(
        Slot("c", "in", 1), np.array([0.1, 0.2, 0.3, 0.4], np.float32), np.zeros(4)
    )
    back = fusekit.plan_from_json(g, fusekit.plan_to_json(plan))
    assert back == plan and back[Slot("c", "in", 1)].scale.shape == (4,)


def _bad(graph: fusekit.Graph, data: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidPlan, match=match):
        plan_from_dict(graph, data)


def test_errors_name_the_field() -> None:
    g = G().conv("c", "x").relu("r", "c").build(["r"])
    good = plan_to_dict(
        fusekit.init_plan(g, "trt_int8").overlap(Slot("c", "out", 0), Slot("r", "out", 0))
    )
    _bad(g, {**good, "version": 3}, "version")
    _bad(g, {**good, "version": True}, "version")
    _bad(g, {**good, "format": "x"}, "format")
    d = json.loads(json.dumps(good))
    d["configs"][0]["state"] = "FUSED"
    _bad(g, d, r"configs\[0\]\.state")
    d = json.loads(json.dumps(good))
    d["configs"][0]["policy"] = "PER_TENSOR+NOPE"
    _bad(g, d, "NOPE")
    d = json.loads(json.dumps(good))
    d["ops"]["c"]["in"] = [0]
    _bad(g, d, r"ops\['c'\]\.in")
    d = json.loads(json.dumps(good))
    d["ops"]["ghost"] = d["ops"]["c"]
    _bad(g, d, "ghost")
    d = json.loads(json.dumps(good))
    d["ops"]["c"]["out"] = [99]
    _bad(g, d, "out of range")
    d = json.loads(json.dumps(good))
    d["links"]["r|out|0"] = ["c|out|0", "overlap"]
    _bad(g, d, "cycle")
    d = json.loads(json.dumps(good))
    d["links"]["c|out|0"] = ["r|out|0", "merge"]
    _bad(g, d, "merge")
    d = json.loads(json.dumps(good))
    d["configs"][0]["scale"] = {"dtype": "float32", "shape": [2], "data": [1.0]}
    _bad(g, d, "scale")
    with pytest.raises(InvalidPlan, match="JSON"):
        fusekit.plan_from_json(g, "{")
    assert isinstance(InvalidPlan("x"), ValueError)


def test_non_finite_scales_are_refused() -> None:
    g = G().conv("c", "x").relu("r", "c").build(["r"])
    good = plan_to_dict(fusekit.init_plan(g, "trt_int8"))
    for bad in ([1e39], [float("nan")], [float("inf")]):
        d = json.loads(json.dumps(good))
        d["configs"][0]["scale"] = {"dtype": "float32", "shape": [1], "data": bad}
        _bad(g, d, "scale")
