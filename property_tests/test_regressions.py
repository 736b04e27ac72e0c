"""Every counterexample the property suite found, shrunk by hand into a unit test.

Each test names the law that found it and what was wrong before the fix.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import fusekit
from fusekit import (
    Graph,
    Initializer,
    InvalidPlatform,
    LinkKind,
    Op,
    QuantState,
    Slot,
    TensorType,
    laws,
)
from fusekit import testing as ft
from fusekit.passes import Alignment, PassiveParameters, default_pipeline, fuse
from fusekit.rulefile import platform_from_dict, platform_to_dict

from .test_reference import disagreement, reference_of, reference_platform

S = (1, 4, 5, 5)
OVERLAPPED, PASSIVE = QuantState.OVERLAPPED, QuantState.PASSIVE


def build(ops: list[tuple[str, str, list[str]]], outputs: list[str], **consts: Any) -> Graph:
    """Ops ``(name, type, inputs)`` whose output tensor is named like the op; constants by
    keyword (``w=`` a 4x4x1x1 weight, anything else its value)."""
    inits = [Initializer.from_array(k, np.asarray(v, dtype=np.float32)) for k, v in consts.items()]
    return Graph.build(
        [Op(n, t, tuple(ins), (n,)) for n, t, ins in ops],
        {"x": TensorType(1, S)},
        outputs,
        inits,
    )


W = np.full((4, 4, 1, 1), 0.1)


def out(op: str) -> Slot:
    return Slot(op, "out", 0)


def inp(op: str, k: int = 0) -> Slot:
    return Slot(op, "in", k)


# --------------------------------------------------------------------------------------------
# Alignment pulled fused kernels apart (laws 5 and 6)


@pytest.mark.parametrize("calibrate", [False, True])
def test_alignment_leaves_a_folded_bias_add_alone(calibrate: bool) -> None:
    """Conv -> Add(bias) -> Relu -> Conv: the epilogue Add and the Relu are one kernel with the
    Conv. Before the fix Align to Large unlinked the Add's input (re-activating a slot inside the
    kernel) and made the Relu output follow it."""
    g = build(
        [
            ("c", "Conv", ["x", "w"]),
            ("a", "Add", ["c", "b"]),
            ("r", "Relu", ["a"]),
            ("c2", "Conv", ["r", "w"]),
        ],
        ["c2"],
        w=W,
        b=np.ones((1, 4, 1, 1)),
    )
    cal = ft.StandInCalibration() if calibrate else None
    res = default_pipeline("trt_int8", calibration=cal).run(g, fusekit.init_plan(g, "trt_int8"))
    plan = res.plan
    for s in (out("c"), inp("a", 0), inp("a", 1), out("a"), inp("r")):
        assert plan[s].state == OVERLAPPED and plan.root(s) == out("r"), s
    assert any("fused kernel" in d.reason for d in res.refusals)
    assert laws.check(g, plan, "trt_int8") == ()


def test_alignment_leaves_the_add_of_a_hardswish_alone() -> None:
    """Conv -> Add(3) -> Clip(0, 6) -> Div(6) -> Mul(conv, .) -> Concat: before the fix the
    HardSwish's Add was aligned, and the Mul's input read the Conv output through a slot whose
    scale came from the Concat (no dead quantization, law 6)."""
    g = build(
        [
            ("c", "Conv", ["x", "w"]),
            ("a", "Add", ["c", "three"]),
            ("k", "Clip", ["a", "lo", "hi"]),
            ("d", "Div", ["k", "six"]),
            ("m", "Mul", ["c", "d"]),
            ("cat", "Concat", ["m", "m"]),
        ],
        ["cat"],
        w=W,
        three=3.0,
        lo=0.0,
        hi=6.0,
        six=6.0,
    )
    g = g.replace_op("cat", Op("cat", "Concat", ("m", "m"), ("cat",), {"axis": 1}))
    plan = (
        default_pipeline("trt_int8", ft.StandInCalibration())
        .run(g, fusekit.init_plan(g, "trt_int8"))
        .plan
    )
    assert plan[inp("a", 0)].state == OVERLAPPED
    assert plan.root(inp("m", 0)) == plan.root(out("m"))
    assert laws.check(g, plan, "trt_int8") == ()


# --------------------------------------------------------------------------------------------
# Alignment was not idempotent, nor independent of the node order (laws 2 and 3)


def _fan_out_graph(order: list[int] | None = None) -> Graph:
    ops = [
        ("c", "Conv", ["x", "w"]),
        ("c2", "Conv", ["x", "w"]),
        ("cat", "Concat", ["c2", "c"]),
        ("add", "Add", ["c", "c2"]),
    ]
    if order is not None:
        ops = [ops[i] for i in order]
    g = build(ops, ["cat", "add"], w=W)
    return g.replace_op("cat", Op("cat", "Concat", ("c2", "c"), ("cat",), {"axis": 1}))


def test_a_producer_feeding_two_aligned_ops_is_aligned_once() -> None:
    """Conv outputs feeding both a Concat and an Add: each run re-linked them to the other op's
    master (the second run changed the plan back and forth). Now the aligned op whose name
    sorts first keeps them; the other's inputs requantize."""
    g = _fan_out_graph()
    plan = default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    second = default_pipeline("trt_int8").run(g, plan)
    assert second.plan is plan and second.changes == ()
    assert plan.parent(out("c")) == (inp("add", 0), LinkKind.FOLLOW)  # "add" < "cat"
    assert plan[inp("cat", 1)].state in (PASSIVE, QuantState.PASSIVE_INIT)
    other = _fan_out_graph([3, 2, 1, 0])
    plan2 = default_pipeline("trt_int8").run(other, fusekit.init_plan(other, "trt_int8")).plan
    assert ft.states_and_roots(plan2) == ft.states_and_roots(plan)


def test_alignment_does_not_pull_another_ops_master_through_a_follow_link() -> None:
    """Split -> Sub and Sum reading the same passive output: the overlap chain of the output
    went through the Sub's FOLLOW link to the Sub's master, which the Sum then re-linked; a
    second run undid it."""
    g = Graph.build(
        [
            Op("c", "Conv", ("x", "w"), ("c",)),
            Op("sp", "Split", ("c",), ("s0", "s1"), {"axis": 1, "num_outputs": 2}),
            Op("sub", "Sub", ("s1", "s1"), ("sub",)),
            Op("sum", "Sum", ("s1", "s1"), ("sum",)),
        ],
        {"x": TensorType(1, S)},
        ["s0", "sub", "sum"],
        [Initializer.from_array("w", W.astype(np.float32))],
    )
    ft.assert_idempotent(default_pipeline("ort_int8"), g, fusekit.init_plan(g, "ort_int8"))


def test_graph_input_sharing_does_not_depend_on_the_node_order() -> None:
    """Simplify shares one scale among the consumers of a graph input; the slot holding it was
    the first consumer in the file, so reordering two nodes changed the plan."""
    a = build([("c2", "Conv", ["x", "w"]), ("c1", "Conv", ["x", "w"])], ["c1", "c2"], w=W)
    b = build([("c1", "Conv", ["x", "w"]), ("c2", "Conv", ["x", "w"])], ["c1", "c2"], w=W)
    pa = default_pipeline("trt_int8").run(a, fusekit.init_plan(a, "trt_int8")).plan
    pb = default_pipeline("trt_int8").run(b, fusekit.init_plan(b, "trt_int8")).plan
    assert ft.states_and_roots(pa) == ft.states_and_roots(pb)
    assert pa.root(inp("c2")) == inp("c1")


def test_graph_input_sharing_groups_each_platform() -> None:
    """Consumers of a graph input on two platforms: only the first consumer's platform got a
    shared scale, and once alignment had made that slot PASSIVE, a second pipeline run shared
    the other platform's slots (law 3). Each platform now gets its group in the first run."""
    g = build([("mul", "Mul", ["x", "x"]), ("cat", "Concat", ["mul", "x"])], ["cat"])
    g = g.replace_op("cat", Op("cat", "Concat", ("mul", "x"), ("cat",), {"axis": 1}))
    plan = fusekit.init_plan(g, "trt_int8", {"mul": "other_platform"})
    first = default_pipeline("trt_int8").run(g, plan)
    assert first.plan.root(inp("mul", 1)) == inp("mul", 0)
    ft.assert_idempotent(default_pipeline("trt_int8"), g, plan)


# --------------------------------------------------------------------------------------------
# Passes raised SharingCycle on plans a user edited (laws 1-3, 8)


def test_align_to_output_refuses_a_link_that_would_close_a_cycle() -> None:
    g = build([("c", "Conv", ["x", "w"]), ("cat", "Concat", ["c", "c"])], ["cat"], w=W)
    g = g.replace_op("cat", Op("cat", "Concat", ("c", "c"), ("cat",), {"axis": 1}))
    plan = fusekit.init_plan(g, "trt_int8").follow(out("cat"), inp("cat", 0))
    res = Alignment("trt_int8").run(g, plan)  # raised SharingCycle before
    assert any("sharing cycle" in d.reason for d in res.refusals)
    ft.assert_log_complete(res)
    ft.assert_idempotent(Alignment("trt_int8"), g, plan)


def test_clip_bounds_refuse_a_link_that_would_close_a_cycle() -> None:
    g = build(
        [("c", "Conv", ["x", "w"]), ("k", "Clip", ["c", "lo", "hi"])], ["k"], w=W, lo=0.0, hi=6.0
    )
    plan = fusekit.init_plan(g, "trt_int8").with_state(inp("k", 2), QuantState.INITIAL)
    plan = plan.follow(inp("k", 0), inp("k", 2))
    res = PassiveParameters("trt_int8").run(g, plan)  # raised SharingCycle before
    assert any("sharing cycle" in d.reason for d in res.refusals)
    ft.assert_log_complete(res)


# --------------------------------------------------------------------------------------------
# PPQ parity on edited plans (law 12 / law 9)


@pytest.mark.parametrize("slot", [inp("s"), inp("m", 1)])
def test_ppq_swish_links_an_fp32_inner_slot_too(slot: Slot) -> None:
    """PPQ's Swish fusion links sigmoid.in[0] and mul.in[0..1] whatever their state; the
    ppq066 rule sets skipped FP32 ones (reached only on edited plans)."""
    g = build(
        [("c", "Conv", ["x", "w"]), ("s", "Sigmoid", ["c"]), ("m", "Mul", ["c", "s"])],
        ["m"],
        w=W,
    )
    plan = fusekit.init_plan(g, "ppq066_trt_int8").with_state(slot, QuantState.FP32)
    model = reference_of(g, plan)
    model.fusion(reference_platform(fusekit.get_platform("ppq066_trt_int8")))
    fused = fuse(g, plan, "ppq066_trt_int8").plan
    assert disagreement(fused, model) == {}
    assert fused[slot].state == OVERLAPPED


# --------------------------------------------------------------------------------------------
# Rule files: TypeError instead of InvalidPlatform (loader fuzzing)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alignment", {"concat": None}),
        ("alignment", {"concat": [1, 2]}),
        ("sockets", {"Clip": None}),
        ("sockets", {"Clip": {"inputs": None}}),
        ("sockets", {"Clip": {"outputs": 3}}),
        ("bias", {"state": "FP32", "visibility": "SOMETIMES"}),
        ("bias", {"state": ["FP32"]}),
        ("activation", {"num_bits": None}),
        ("activation", {"quant_min": "low"}),
        ("activation", {"channel_axis": 0}),
        ("passive_conditions", {"Pad": ["pad_constant_zero"]}),
        ("fp32_inputs_from", {"LayerNormalization": "1"}),
    ],
)
def test_bad_rule_file_fields_raise_invalid_platform(field: str, value: Any) -> None:
    doc = platform_to_dict(fusekit.get_platform("trt_int8"))
    doc[field] = value
    with pytest.raises(InvalidPlatform, match=field):
        platform_from_dict(json.loads(json.dumps(doc)), source="rules.json")


def test_an_op_type_with_a_lone_surrogate_raises_invalid_platform() -> None:
    """Loader fuzzing (ci profile): a quantized type "\\ud800lobalAveragePool" (one character
    of the JSON text changed) reached ``onnx.defs.has``, whose C++ binding raised TypeError."""
    doc = platform_to_dict(fusekit.get_platform("trt_int8"))
    doc["quant_types"] = [*doc["quant_types"], "\ud800lobalAveragePool"]
    with pytest.raises(InvalidPlatform, match="unknown op type"):
        platform_from_dict(json.loads(json.dumps(doc)), source="rules.json")


# --------------------------------------------------------------------------------------------
# Plan files (loader fuzzing, nightly profile)


def test_a_plan_link_kind_that_is_not_a_string_raises_invalid_plan() -> None:
    from fusekit.plan_io import plan_from_json, plan_to_dict

    g = build([("c", "Conv", ["x", "w"]), ("r", "Relu", ["c"])], ["r"], w=W)
    doc = plan_to_dict(fusekit.init_plan(g, "trt_int8"))
    doc["links"] = {"r|in|0": ["c|out|0", ["overlap"]]}
    with pytest.raises(fusekit.InvalidPlan, match="link"):
        plan_from_json(g, json.dumps(doc))


def test_passive_law_and_fusion_agree_on_a_folded_constant_chain() -> None:
    """Passive law (issue 16 join cases): a Conv reading only constants folds into a constant,
    so passive fusion refuses the MaxPool after it ("the first input of m is a graph input or
    constant") when a dispatch mapping quantizes that chain; ``laws.check`` demanded that
    the MaxPool share its input's scale, so it rejected the default pipeline's own plan. The
    law now skips producers that fold into constants, as the pass does."""
    g = Graph.build(
        [
            Op("c", "Conv", ("k", "w"), ("a",)),
            Op("r", "Relu", ("a",), ("b",)),
            Op("m", "MaxPool", ("b",), ("y",), {"kernel_shape": (1, 1)}),
            Op("add", "Add", ("x", "y"), ("z",)),
        ],
        {"x": TensorType(1, S)},
        ["z"],
        [
            Initializer.from_array("k", np.ones(S, np.float32)),
            Initializer.from_array("w", np.full((4, 4, 1, 1), 0.1, np.float32)),
        ],
    )
    plan = fusekit.init_plan(g, "trt_int8", {"c": "trt_int8", "r": "trt_int8", "m": "trt_int8"})
    assert laws.check(g, default_pipeline("trt_int8").run(g, plan).plan, "trt_int8") == ()


def test_law6_accepts_a_passive_op_that_quantizes_its_own_input() -> None:
    """Law 6 (a Hypothesis case of issue 16's join rule sets, then on any passive op): when a
    user leaves a Conv's output float (FP32), the MaxPool after it quantizes its own input and
    passive fusion overlaps its output onto that input slot, so the next Conv reads a value
    quantized at the MaxPool's input. ``no_dead_quantization`` only looked for a quantizer at
    the producer upstream and reported the edge as dead."""
    g = build(
        [
            ("c", "Conv", ["x", "w"]),
            ("r", "Relu", ["c"]),
            ("m", "MaxPool", ["c"]),
            ("c2", "Conv", ["m", "w"]),
        ],
        ["c2", "r"],
        w=W,
    )
    plan = fusekit.init_plan(g, "trt_int8", {"c": "trt_int8", "m": "trt_int8", "c2": "trt_int8"})
    ev = plan.evolver()
    ev.set_config(out("c"), plan[out("c")].with_state(QuantState.FP32))
    final = default_pipeline("trt_int8").run(g, ev.persistent()).plan
    assert final[inp("m")].state == QuantState.INITIAL and final.root(inp("m")) == inp("m")
    assert final.root(inp("c2")) == inp("m") and final[inp("c2")].state == OVERLAPPED
    assert laws.no_dead_quantization(g, final, "trt_int8") == ()
