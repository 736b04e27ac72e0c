"""Differential test: fusekit's PPQ-compatible mode makes exactly PPQ 0.6.6's decisions.

For every model of ../shared/corpus and every PPQ platform with a golden file, start from PPQ's
own view of the model and compare, slot by slot, the state and root (the slot whose scale it
uses) with what PPQ 0.6.6 recorded: after config initialisation (``init_plan`` with the
conservative dispatcher), after QuantizeFusionPass, and, in the default pipeline, after
QuantizeSimplifyPass, QuantAlignmentPass and PassiveParameterQuantizePass. PPQ's calibration
was replaced by a stand-in in the goldens (every INITIAL slot gets scale 1, state ACTIVATED);
the test does the same.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from typing import Any

import pytest

import fusekit
from fusekit import QuantPlan, QuantState, Slot
from fusekit.passes import Alignment, PassiveParameters, Simplify, fuse
from fusekit.platforms import get_platform, init_plan

from .conftest import CORPUS

PLATFORMS = {
    "TRT_INT8": "ppq066_trt_int8",
    "ONNXRUNTIME": "ppq066_ort_int8",
    "PPL_CUDA_INT8": "ppq066_ppl_cuda_int8",
    "ONNXRUNTIME_plus_Softplus_plus_Tanh": "ppq066_ort_int8_softplus_tanh",
}
MODELS = sorted(p.name[: -len(".onnx")] for p in (CORPUS / "ppq-view").glob("*.onnx"))
CASES = [(m, g) for m in MODELS for g in PLATFORMS]


@cache
def _golden(model: str, platform: str) -> dict[str, Any]:
    with gzip.open(CORPUS / "ppq-golden" / f"{model}.{platform}.json.gz") as f:
        return json.load(f)  # type: ignore[no-any-return]


@cache
def _view(model: str) -> fusekit.Graph:
    return fusekit.load(CORPUS / "ppq-view" / f"{model}.onnx")


def _state_root(plan: QuantPlan) -> dict[str, tuple[str, str]]:
    return {str(s): (plan[s].state.name, str(plan.root(s))) for s in plan.slots()}


def _fake_calibration(plan: QuantPlan) -> QuantPlan:
    ev = plan.evolver()
    for s in plan.slots():
        c = plan[s]
        if c.state == QuantState.INITIAL:
            ev.set_config(s, c.with_scale(1.0, 0.0).with_state(QuantState.ACTIVATED))
    return ev.persistent()


def test_corpus_is_complete() -> None:
    assert len(MODELS) == 15
    for m in MODELS:
        for g in PLATFORMS:
            assert (CORPUS / "ppq-golden" / f"{m}.{g}.json.gz").is_file()


@pytest.mark.parametrize("ppq_name", sorted(PLATFORMS))
def test_rule_lists_match_ppq(ppq_name: str) -> None:
    """The ppq066 rule sets list exactly PPQ's quantable and activation types."""
    q = _golden("resnet18", ppq_name)["quantizer"]
    p = get_platform(PLATFORMS[ppq_name])
    assert set(q["quant_operation_types"]) == set(p.quant_types)
    assert set(q["activation_fusion_types"]) == set(p.activation_types)
    consts = _golden("resnet18", ppq_name)["ppq_constants"]
    assert set(consts["PASSIVE_OPERATIONS"]) == set(p.passive_types)
    assert set(consts["COMPUTING_OP"]) == set(p.computing_types)


@pytest.mark.parametrize(("model", "ppq_name"), CASES)
def test_init_plan_matches_ppq(model: str, ppq_name: str) -> None:
    g = _view(model)
    gold = _golden(model, ppq_name)["runs"]["fusion_only"]
    plan = init_plan(g, PLATFORMS[ppq_name], dispatch="ppq-conservative")
    mismatches = []
    n = 0
    for op in gold["ops"]:
        n += 1
        if plan.is_quantized(op["name"]) != op["quantized"]:
            mismatches.append(f"op {op['name']}: quantized={plan.is_quantized(op['name'])}")
            continue
        if not op["quantized"]:
            continue
        for side, key in (("inputs", "in"), ("outputs", "out")):
            for s in op[side]:
                slot = Slot(op["name"], key, s["idx"])
                c = plan[slot]
                n += 1
                got = (c.state.name, str(c.policy), c.num_bits)
                want = (gold["initial"][str(slot)][0], s["policy"], s["num_of_bits"])
                if got != want:
                    mismatches.append(f"{slot}: {got} != {want}")
    assert n > 0
    assert not mismatches, mismatches[:10]


@pytest.mark.parametrize(("model", "ppq_name"), CASES)
def test_fusion_matches_ppq(model: str, ppq_name: str) -> None:
    g = _view(model)
    gold = _golden(model, ppq_name)["runs"]["fusion_only"]
    plan = init_plan(g, PLATFORMS[ppq_name], dispatch="ppq-conservative")
    result = fuse(g, plan, PLATFORMS[ppq_name])
    p2 = result.plan
    mismatches = []
    for op in gold["ops"]:
        if not op["quantized"]:
            continue
        for side, key in (("inputs", "in"), ("outputs", "out")):
            for s in op[side]:
                slot = Slot(op["name"], key, s["idx"])
                got = (p2[slot].state.name, p2.root(slot))
                want = (s["state"], Slot(*s["root"]))
                if got != want:
                    mismatches.append(f"{slot}: {got} != {want}")
    assert not mismatches, mismatches[:10]
    # PPQ's groups, as sets of slots, are fusekit's groups
    ours = {frozenset(str(s) for s in grp) for grp in p2.groups()}
    theirs = {frozenset("|".join(map(str, s)) for s in grp) for grp in gold["groups"]}
    assert ours == theirs
    # every change fusekit made is one PPQ recorded
    changed = {str(c.slot) for d in result.changes for c in d.changes}
    assert changed == set(gold["changed_by_fusion"])


@pytest.mark.parametrize(("model", "ppq_name"), CASES)
def test_default_pipeline_matches_ppq(model: str, ppq_name: str) -> None:
    g = _view(model)
    dp = _golden(model, ppq_name)["runs"]["default_pipeline"]
    initial = _golden(model, ppq_name)["runs"]["fusion_only"]["initial"]
    expected: dict[str, tuple[str, str]] = {k: (v[0], v[1]) for k, v in initial.items()}
    after: dict[str, dict[str, tuple[str, str]]] = {}
    for stage in dp["stages"]:
        for k, v in (stage["slots_changed"] or {}).items():
            expected[k] = (v[0], v[1])
        after[stage["stage"]] = dict(expected)
    pname = PLATFORMS[ppq_name]
    plan = init_plan(g, pname, dispatch="ppq-conservative")
    plan = fuse(g, plan, pname).plan
    plan = Simplify(pname).run(g, plan).plan
    assert _state_root(plan) == after["QuantizeSimplifyPass"]
    plan = _fake_calibration(plan)
    plan = Alignment(pname).run(g, plan).plan
    assert _state_root(plan) == after["QuantAlignmentPass"]
    plan = PassiveParameters(pname).run(g, plan).plan
    assert _state_root(plan) == after["PassiveParameterQuantizePass"]
