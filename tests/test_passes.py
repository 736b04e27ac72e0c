"""The fusion passes on hand-built graphs.

Each PPQ worked example of ../shared/reference/ppq-behaviour.md section 3.10 is checked in the
PPQ-compatible mode (``ppq066_*``), and every PPQ bug fusekit fixes has a regression test showing
the corrected rule sets (``trt_int8``, ``ort_int8``, ``ppl_cuda_int8``) behave differently.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusekit
from fusekit import QuantPlan, QuantState, Slot
from fusekit.passes import (
    ActivationFusion,
    Alignment,
    CompositeActivationFusion,
    EpilogueFusion,
    PassiveFusion,
    PassiveParameters,
    Simplify,
    default_pipeline,
    explain,
    fuse,
    replay,
)

from .graphs import G

OVERLAPPED, INITIAL, ACTIVATED = QuantState.OVERLAPPED, QuantState.INITIAL, QuantState.ACTIVATED
PASSIVE, FP32 = QuantState.PASSIVE, QuantState.FP32


def out(op: str, i: int = 0) -> Slot:
    return Slot(op, "out", i)


def inp(op: str, i: int = 0) -> Slot:
    return Slot(op, "in", i)


def fake_calibrate(plan: QuantPlan) -> QuantPlan:
    """PPQ goldens' stand-in for calibration: every INITIAL slot gets scale 1, offset 0."""
    ev = plan.evolver()
    for s in plan.slots():
        c = plan[s]
        if c.state == INITIAL:
            ev.set_config(s, c.with_scale(1.0, 0.0).with_state(ACTIVATED))
    return ev.persistent()


def ppq_pipeline(graph: fusekit.Graph, platform: str, *, calibrate: bool = True) -> QuantPlan:
    """PPQ's default pipeline: fusion, simplify, [calibration], alignment, passive params."""
    plan = fusekit.init_plan(graph, platform, dispatch="ppq-conservative")
    plan = fuse(graph, plan, platform).plan
    plan = Simplify(platform).run(graph, plan).plan
    if calibrate:
        plan = fake_calibrate(plan)
    plan = Alignment(platform).run(graph, plan).plan
    return PassiveParameters(platform).run(graph, plan).plan


def state_root(plan: QuantPlan, slot: Slot) -> tuple[QuantState, Slot]:
    return plan[slot].state, plan.root(slot)


# --------------------------------------------------------------------------------------------
# section 3.10, PPQ-compatible mode


class TestWorkedExamples:
    """PPQ 0.6.6's results on the worked examples, reproduced by the ppq066 rule sets."""

    def test_conv_relu_conv(self) -> None:
        g = G().conv("c1", "x").relu("r", "c1").conv("c2", "r").build(["c2"])
        p = ppq_pipeline(g, "ppq066_trt_int8", calibrate=False)
        assert state_root(p, out("c1")) == (OVERLAPPED, out("r"))
        assert state_root(p, inp("r")) == (OVERLAPPED, out("r"))
        assert state_root(p, inp("c2")) == (OVERLAPPED, out("r"))
        assert state_root(p, out("r")) == (INITIAL, out("r"))

    def test_fan_out_blocks_activation_fusion(self) -> None:
        g = G().conv("c1", "x").relu("r", "c1").conv("c3", "c1").conv("c4", "r").build(["c3", "c4"])
        p = ppq_pipeline(g, "ppq066_trt_int8", calibrate=False)
        assert state_root(p, out("c1")) == (INITIAL, out("c1"))
        assert state_root(p, inp("r")) == (OVERLAPPED, out("c1"))
        assert state_root(p, inp("c3")) == (OVERLAPPED, out("c1"))
        assert p.root(out("r")) == out("r")
        r = fuse(
            g,
            fusekit.init_plan(g, "ppq066_trt_int8", dispatch="ppq-conservative"),
            "ppq066_trt_int8",
        )
        assert any("c1 has 2 consumers" in d.reason for d in r.refusals)

    def test_graph_output_is_fused_anyway_in_ppq(self) -> None:
        g = G().conv("c0", "x").conv("c1", "c0").relu("r", "c1").conv("c2", "r").build(["c1", "c2"])
        p = ppq_pipeline(g, "ppq066_trt_int8", calibrate=False)
        assert state_root(p, out("c1")) == (OVERLAPPED, out("r"))  # PPQ's bug: output unquantized

    def test_relu_before_first_computing_op_stays_fp32(self) -> None:
        g = (
            G()
            .relu("r0", "x")
            .unary("MaxPool", "p0", "r0")
            .conv("c", "p0")
            .unary("MaxPool", "p1", "c")
            .relu("r1", "p1")
            .conv("c2", "r1")
            .build(["c2"])
        )
        p = ppq_pipeline(g, "ppq066_trt_int8", calibrate=False)
        assert not p.is_quantized("r0") and not p.is_quantized("p0")
        assert state_root(p, inp("p1")) == (OVERLAPPED, out("c"))
        assert state_root(p, out("p1")) == (OVERLAPPED, out("c"))
        assert state_root(p, inp("r1")) == (OVERLAPPED, out("c"))
        assert p.root(out("r1")) == out("r1")

    def test_single_conv_graph_is_not_quantized(self) -> None:
        g = G().conv("c", "x").build(["c"])
        p = fusekit.init_plan(g, "ppq066_trt_int8", dispatch="ppq-conservative")
        assert not p.is_quantized("c")
        assert fusekit.init_plan(g, "trt_int8").is_quantized("c")

    def test_conv_clip_bounds_follow_the_input(self) -> None:
        g = G().conv("c", "x").clip("k", "c").conv("c2", "k").build(["c2"])
        p = ppq_pipeline(g, "ppq066_trt_int8")
        assert state_root(p, out("c")) == (OVERLAPPED, out("k"))
        for i in (1, 2):
            assert p[inp("k", i)].state == PASSIVE
            assert p.root(inp("k", i)) == out("k")
            assert p[inp("k", i)].visibility == fusekit.Visibility.INTERNAL

    def test_swish_trt_fuses_all_five_slots(self) -> None:
        g = (
            G()
            .conv("c", "x")
            .unary("Sigmoid", "s", "c")
            .binary("Mul", "m", "c", "s")
            .conv("c2", "m")
            .build(["c2"])
        )
        p = ppq_pipeline(g, "ppq066_trt_int8", calibrate=False)
        for slot in (out("c"), inp("s"), out("s"), inp("m", 0), inp("m", 1)):
            assert state_root(p, slot) == (OVERLAPPED, out("m")), slot

    def test_swish_ppl_has_no_swish(self) -> None:
        g = (
            G()
            .conv("c", "x")
            .unary("Sigmoid", "s", "c")
            .binary("Mul", "m", "c", "s")
            .conv("c2", "m")
            .build(["c2"])
        )
        p = ppq_pipeline(g, "ppq066_ppl_cuda_int8", calibrate=False)
        assert state_root(p, inp("s")) == (OVERLAPPED, out("c"))
        assert state_root(p, inp("m", 0)) == (OVERLAPPED, out("c"))
        assert state_root(p, inp("m", 1)) == (OVERLAPPED, out("s"))
        assert p[out("c")].state == INITIAL

    def test_mish_never_fires_in_ppq_trt(self) -> None:
        g = (
            G()
            .conv("c", "x")
            .unary("Softplus", "sp", "c")
            .unary("Tanh", "t", "sp")
            .binary("Mul", "m", "c", "t")
            .conv("c2", "m")
            .build(["c2"])
        )
        p = fuse(
            g,
            fusekit.init_plan(g, "ppq066_ort_int8", dispatch="ppq-conservative"),
            "ppq066_ort_int8",
        )
        assert not p.plan.is_quantized("sp")
        assert p.plan[out("c")].state == INITIAL
        q = fusekit.init_plan(g, "ppq066_ort_int8_softplus_tanh", dispatch="ppq-conservative")
        r = fuse(g, q, "ppq066_ort_int8_softplus_tanh").plan
        for slot in (out("c"), inp("sp"), out("sp"), inp("t"), out("t"), inp("m", 0), inp("m", 1)):
            assert state_root(r, slot) == (OVERLAPPED, out("m")), slot

    def test_mul_x_x_second_input_not_simplified_in_ppq(self) -> None:
        g = (
            G()
            .conv("c0", "x")
            .conv("c", "c0")
            .binary("Mul", "m", "c", "c")
            .conv("c2", "m")
            .build(["c2"])
        )
        p = ppq_pipeline(g, "ppq066_trt_int8")
        assert p[inp("m", 0)].state == OVERLAPPED
        assert p[inp("m", 1)].state == ACTIVATED  # PPQ's first-occurrence bug
        q = ppq_pipeline(g, "trt_int8")
        assert q[inp("m", 1)].state == OVERLAPPED
        assert q.root(inp("m", 1)) == q.root(inp("m", 0))

    def test_residual_add_alignment(self) -> None:
        g = (
            G()
            .conv("c1", "x")
            .conv("c2", "x")
            .binary("Add", "a", "c1", "c2")
            .relu("r", "a")
            .conv("c3", "r")
            .build(["c3"])
        )
        p = ppq_pipeline(g, "ppq066_trt_int8")
        assert p[inp("a", 0)].state == PASSIVE
        assert p[inp("a", 1)].state == PASSIVE
        assert state_root(p, out("c1")) == (OVERLAPPED, inp("a", 0))
        assert state_root(p, out("c2")) == (OVERLAPPED, inp("a", 0))
        assert state_root(p, out("a")) == (ACTIVATED, out("a"))
        assert state_root(p, inp("r")) == (OVERLAPPED, out("a"))


# --------------------------------------------------------------------------------------------
# the PPQ bugs fusekit fixes (each has a line in docs/differences-from-ppq.md)


class TestCorrections:
    """Corrected rule sets fix PPQ 0.6.6's bugs deliberately."""

    def test_slice_is_passive_only_when_corrected(self) -> None:
        b = G()
        b.conv("c", "x")
        b.inits["st"] = fusekit.Initializer.from_array("st", np.array([0], np.int64))
        b.inits["en"] = fusekit.Initializer.from_array("en", np.array([2], np.int64))
        b.op("Slice", "sl", ["c", "st", "en"]).unary("Transpose", "t", "sl").conv("c2", "t")
        g = b.build(["c2"])
        ppq = ppq_pipeline(g, "ppq066_trt_int8")
        assert ppq[out("sl")].state == ACTIVATED  # 'Dropout' 'Slice' -> 'DropoutSlice'
        assert ppq.root(out("t")) == out("sl")
        ours = ppq_pipeline(g, "trt_int8")
        assert ours[out("sl")].state == OVERLAPPED
        assert ours.root(out("sl")) == ours.root(out("c"))

    def test_graph_output_blocks_fusion(self) -> None:
        g = G().conv("c0", "x").conv("c1", "c0").relu("r", "c1").conv("c2", "r").build(["c1", "c2"])
        plan = fusekit.init_plan(g, "trt_int8")
        r = fuse(g, plan, "trt_int8")
        assert r.plan[out("c1")].state == INITIAL
        assert any(d.reason == "output of c1 is a graph output" for d in r.refusals)

    def test_softplus_spelling(self) -> None:
        g = G().conv("c", "x").unary("Softplus", "sp", "c").conv("c2", "sp").build(["c2"])
        ppq = fuse(
            g,
            fusekit.init_plan(g, "ppq066_trt_int8", dispatch="ppq-conservative"),
            "ppq066_trt_int8",
        )
        assert not ppq.plan.is_quantized("sp")  # 'SoftPlus' is not an ONNX op type
        ours = fuse(g, fusekit.init_plan(g, "trt_int8"), "trt_int8").plan
        assert ours.root(out("c")) == out("sp")

    def test_alignment_fan_out_stays_quantized(self) -> None:
        g = (
            G()
            .conv("c0", "x")
            .conv("c1", "c0")
            .conv("c2", "c0")
            .binary("Add", "a", "c1", "c2")
            .conv("c3", "c2")
            .relu("r", "a")
            .build(["r", "c3"])
        )
        ppq = ppq_pipeline(g, "ppq066_trt_int8")
        # PPQ 0.6.6: c2's output is switched off and c3 reads unquantized data
        assert ppq[out("c2")].state == OVERLAPPED
        assert ppq[inp("c3")].state == OVERLAPPED
        assert not ppq[ppq.root(inp("c3"))].state.is_active or ppq.root(inp("c3")) == inp("a", 0)
        ours = ppq_pipeline(g, "trt_int8")
        assert ours[out("c2")].state == PASSIVE  # still quantizes, with the aligned scale
        assert ours.parent(out("c2")) == (inp("a", 0), fusekit.LinkKind.FOLLOW)
        assert ours.root(inp("c3")) == ours.root(inp("a", 0))

    def test_align_to_large_is_idempotent(self) -> None:
        g = (
            G()
            .conv("c1", "x")
            .conv("c2", "x")
            .binary("Add", "a", "c1", "c2")
            .conv("c3", "a")
            .build(["c3"])
        )
        for platform, grows in (("ppq066_trt_int8", True), ("trt_int8", False)):
            plan = fusekit.init_plan(g, platform)
            plan = fake_calibrate(Simplify(platform).run(g, fuse(g, plan, platform).plan).plan)
            a1 = Alignment(platform).run(g, plan)
            a2 = Alignment(platform).run(g, a1.plan)
            s1 = float(a1.plan.scale_of(inp("a", 0)))
            s2 = float(a2.plan.scale_of(inp("a", 0)))
            if grows:
                assert s2 == pytest.approx(s1 * 256 / 255)
            else:
                assert a2.plan is a1.plan and s2 == s1 and not a2.changes

    def test_master_by_cycle_raises(self) -> None:
        g = G().conv("c1", "x").relu("r", "c1").build(["r"])
        plan = fusekit.init_plan(g, "trt_int8")
        p = plan.follow(out("c1"), out("r"))
        with pytest.raises(fusekit.SharingCycle) as e:
            p.follow(out("r"), out("c1"))
        assert "r|out|0" in str(e.value) and "c1|out|0" in str(e.value)


# --------------------------------------------------------------------------------------------
# fusekit's own rules


class TestFusekitRules:
    def test_batchnorm_epilogue_then_relu(self) -> None:
        b = G().conv("c", "x", bias=False)
        for k in ("s", "b", "m", "v"):
            b.const(f"bn.{k}", np.ones(4))
        b.op("BatchNormalization", "bn", ["c", "bn.s", "bn.b", "bn.m", "bn.v"]).relu(
            "r", "bn"
        ).conv("c2", "r")
        g = b.build(["c2"])
        res = default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
        p = res.plan
        for s in (out("c"), inp("bn"), out("bn"), inp("r")):
            assert state_root(p, s) == (OVERLAPPED, out("r")), s
        assert p[inp("bn", 1)].state == FP32  # BN statistics are never quantized
        assert any(d.rule == "epilogue" for d in res.changes)

    @pytest.mark.parametrize("order", ["x_first", "sig_first"])
    def test_swish_both_operand_orders(self, order: str) -> None:
        b = G().conv("c", "x").unary("Sigmoid", "s", "c")
        b.binary("Mul", "m", *(("c", "s") if order == "x_first" else ("s", "c")))
        g = b.conv("c2", "m").build(["c2"])
        p = fuse(g, fusekit.init_plan(g, "trt_int8"), "trt_int8").plan
        for slot in (out("c"), inp("s"), out("s"), inp("m", 0), inp("m", 1)):
            assert p.root(slot) == out("m"), slot

    def test_hardswish_decomposed(self) -> None:
        b = G().conv("c", "x")
        b.binary("Add", "ad", "c", b.const("three", 3.0)).clip("k", "ad")
        b.binary("Div", "dv", "k", b.const("six", 6.0)).binary("Mul", "m", "c", "dv").conv(
            "c2", "m"
        )
        g = b.build(["c2"])
        r = CompositeActivationFusion("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
        for slot in (out("c"), inp("ad"), out("ad"), out("k"), out("dv"), inp("m", 0), inp("m", 1)):
            assert r.plan.root(slot) == out("m"), slot
        assert r.plan[inp("k", 1)].state == FP32  # Clip bounds untouched
        assert {d.rule for d in r.changes} == {"hardswish"}

    def test_gelu_decomposed(self) -> None:
        b = G().conv("c", "x")
        b.binary("Div", "d", "c", b.const("sqrt2", 1.4142)).unary("Erf", "e", "d")
        b.binary("Add", "a", "e", b.const("one", 1.0)).binary("Mul", "m", "c", "a")
        b.binary("Mul", "h", "m", b.const("half", 0.5)).conv("c2", "h")
        g = b.build(["c2"])
        r = CompositeActivationFusion("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
        for slot in (out("c"), inp("d"), out("e"), out("a"), out("m"), inp("h", 0)):
            assert r.plan.root(slot) == out("h"), slot

    def test_pad_precondition(self) -> None:
        b = G().conv("c", "x")
        b.inits["pads"] = fusekit.Initializer.from_array("pads", np.zeros(8, np.int64))
        b.op("Pad", "pz", ["c", "pads"]).op("Pad", "pr", ["c", "pads"], mode="reflect")
        b.conv("c2", "pz").conv("c3", "pr")
        g = b.build(["c2", "c3"])
        r = PassiveFusion("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
        assert r.plan[out("pz")].state == OVERLAPPED
        assert r.plan[out("pr")].state == INITIAL
        assert any("reflect" in d.reason for d in r.refusals)

    def test_split_outputs_share_the_input_scale(self) -> None:
        g = (
            G()
            .conv("c", "x")
            .op("Split", "sp", ["c"], n_out=2, axis=1)
            .conv("c1", "sp:0")
            .conv("c2", "sp:1")
            .build(["c1", "c2"])
        )
        p = default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
        assert p.root(out("sp", 0)) == p.root(out("sp", 1)) == out("c")

    def test_graph_input_consumers_share_one_scale(self) -> None:
        g = G().conv("c1", "x").conv("c2", "x").build(["c1", "c2"])
        ppq = Simplify("ppq066_trt_int8").run(g, fusekit.init_plan(g, "ppq066_trt_int8")).plan
        assert ppq.root(inp("c2")) == inp("c2")
        ours = Simplify("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
        assert ours.root(inp("c2")) == inp("c1")


# --------------------------------------------------------------------------------------------
# purity, identity on no-op, replay, explain


class TestPassContract:
    def graph(self) -> fusekit.Graph:
        return (
            G()
            .conv("c1", "x")
            .relu("r", "c1")
            .unary("MaxPool", "mp", "r")
            .conv("c2", "mp")
            .conv("c3", "mp")
            .binary("Add", "a", "c2", "c3")
            .unary("Sigmoid", "s", "a")
            .build(["s"])
        )

    @pytest.mark.parametrize("platform", ["trt_int8", "ppq066_trt_int8", "ppl_cuda_int8"])
    def test_inputs_unchanged_and_second_run_is_identity(self, platform: str) -> None:
        g = self.graph()
        plan = fusekit.init_plan(g, platform)
        before_cfg, before_links = list(plan.configs), plan.link_table()
        order = list(g.order)
        res = default_pipeline(platform).run(g, plan)
        assert list(plan.configs) == before_cfg and plan.link_table() == before_links
        assert list(g.order) == order
        again = default_pipeline(platform).run(g, res.plan)
        assert again.plan is res.plan
        assert again.changes == ()

    @pytest.mark.parametrize(
        "pass_",
        [
            EpilogueFusion,
            ActivationFusion,
            CompositeActivationFusion,
            PassiveFusion,
            Simplify,
            Alignment,
            PassiveParameters,
        ],
    )
    def test_nothing_to_do_returns_same_plan(self, pass_: type) -> None:
        g = G().unary("Sigmoid", "s", "x").build(["s"])
        plan = fusekit.init_plan(g, "trt_int8")
        r = pass_("trt_int8").run(g, plan)
        assert r.plan is plan and not r.changed

    def test_replay_reproduces_the_plan(self) -> None:
        g = self.graph()
        plan = fusekit.init_plan(g, "trt_int8")
        res = default_pipeline("trt_int8").run(g, plan)
        assert replay(plan, res.decisions) == res.plan
        changed = {c.slot for d in res.changes for c in d.changes}
        assert changed
        for d in fusekit.diff(plan, res.plan):
            if d.before != d.after or plan.parent(d.slot) != res.plan.parent(d.slot):
                assert d.slot in changed

    def test_explain_names_the_rules(self) -> None:
        g = self.graph()
        res = default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
        text = str(explain(res, out("c1")))
        assert "activation" in text and "r|out|0" in text
        text = str(explain(res, out("mp")))
        assert "passive" in text
        assert "is its own root" in str(explain(res.plan, out("r")))
