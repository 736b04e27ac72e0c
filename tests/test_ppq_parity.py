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
from fusekit.dispatch import init_plan
from fusekit.passes import Alignment, PassiveParameters, Simplify, fuse
from fusekit.platforms import get_platform

from .conftest import CORPUS

PLATFORMS = {
    "TRT_INT8": "ppq066_trt_int8",
    "ONNXRUNTIME": "ppq066_ort_int8",
    "PPL_CUDA_INT8": "ppq066_ppl_cuda_int8",
    "ONNXRUNTIME_plus_Softplus_plus_Tanh": "ppq066_ort_int8_softplus_tanh",
    **{
        name: "ppq066_" + name.lower()
        for name in (
            "RKNN_INT8",
            "GRAPHCORE_FP8",
            "TRT_FP8",
            "OPENVINO_INT8",
            "NCNN_INT8",
            "MNN_INT8",
            "TENGINE_INT8",
            "SNPE_INT8",
            "QNN_DSP_INT8",
            "PPL_DSP_INT8",
            "PPL_DSP_TI_INT8",
            "ASC_INT8",
            "NXP_INT8",
            "METAX_INT8_C",
            "METAX_INT8_T",
            "FPGA_INT8",
        )
    },
}
MODELS = sorted(p.name[: -len(".onnx")] for p in (CORPUS / "ppq-view").glob("*.onnx"))
#: Golden runs where PPQ itself failed (``errors`` not empty): nothing to compare. Ascend's
#: quantizer asserts 2-D convolutions and a Gemm ``axis`` attribute; see test_ppq_failures.
PPQ_FAILED = {
    ("bert24_encoder_op13", "ASC_INT8"),
    ("mobilenet_v3_small", "ASC_INT8"),
    ("onnx_light_resnet50", "ASC_INT8"),
    ("onnx_light_shufflenet", "ASC_INT8"),
    ("silero_vad_16k_op15", "ASC_INT8"),
    ("silero_vad_16k_sequence", "ASC_INT8"),
}
CASES = [(m, g) for m in MODELS for g in PLATFORMS if (m, g) not in PPQ_FAILED]


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
    assert len(PLATFORMS) == 20  # PPQ's nineteen targets, plus ORT with Softplus/Tanh
    for m in MODELS:
        for g in PLATFORMS:
            assert (CORPUS / "ppq-golden" / f"{m}.{g}.json.gz").is_file()


def _ascend_refusals(model: str) -> list[str]:
    """The ops Ascend's quantizer asserts on: a quantized Conv/ConvTranspose whose filter is not
    4-D, or a quantized Gemm without an ``axis`` attribute (PPQ reads it as compulsory)."""
    g = _view(model)
    plan = init_plan(g, PLATFORMS["ASC_INT8"], dispatch="ppq-conservative")
    bad = []
    for name in g.order:
        op = g.ops[name]
        if not plan.is_quantized(name):
            continue
        if op.op_type in ("Conv", "ConvTranspose"):
            # the view shrinks PPQ-created weights (folded BatchNorm) to rank 1: read the kernel
            rank = len(op.attributes.get("kernel_shape", ())) + 2
            if rank != 4:
                bad.append(f"{name}: filter is {rank}-D")
        elif op.op_type == "Gemm" and "axis" not in op.attributes:
            bad.append(f"{name}: no axis")
    return bad


def test_ppq_failures_are_the_recorded_ones() -> None:
    """The goldens left out of the comparison are exactly those where PPQ itself failed, and
    each failure is one fusekit predicts from the graph (Ascend's asserts), naming the op."""
    failed = {(m, g) for m in MODELS for g in PLATFORMS if _golden(m, g)["errors"]}
    assert failed == PPQ_FAILED
    for m in MODELS:
        refusals = _ascend_refusals(m)
        if (m, "ASC_INT8") not in PPQ_FAILED:
            assert not refusals, (m, refusals)
            continue
        text = json.dumps(_golden(m, "ASC_INT8")["errors"])
        assert refusals, m
        assert any(
            f"Operation {r.split(':')[0]} " in text
            if r.endswith("no axis")
            else "filter must be 4" in text
            for r in refusals
        ), (m, refusals)


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
