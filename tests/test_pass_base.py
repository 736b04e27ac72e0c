"""The pass base (issue 12 item 3): one run with the prologue, ensures, results that concatenate."""

from __future__ import annotations

import gc

import attrs
import pytest

import fusekit
from fusekit import (
    FusionPass,
    FusionResult,
    NotAPass,
    Pipeline,
    PipelineResult,
    PlanGraphMismatch,
    PostconditionError,
    Slot,
    UnknownLaw,
)
from fusekit import testing as ft
from fusekit.passes import DEBUG_ENV, EpilogueFusion, Pass, PassContext

from .graphs import G


def conv_conv() -> fusekit.Graph:
    return G().conv("c1", "x").conv("c2", "c1").build(["c2"])


@attrs.frozen
class SwitchOffConv(FusionPass):
    """A buggy pass: it switches off c1's output though no activation follows c1."""

    platform: str | fusekit.Platform = "trt_int8"

    name = "switch_off_conv"
    ensures = ("acyclic-sharing", "activation")

    def apply(self, ctx: PassContext) -> FusionResult:
        sid = ctx.idx.slot_id
        a, b = sid(Slot("c1", "out", 0)), sid(Slot("c2", "in", 0))
        ctx.rec.overlap("bug", (ctx.idx.op_id["c1"],), a, b, "no reason")
        return ctx.rec.result(ctx.plan)


@attrs.frozen
class Probe(FusionPass):
    """Records what the prologue gave ``apply`` (the platform resolved, gc paused)."""

    platform: str | fusekit.Platform = "trt_int8"
    seen: list[object] = attrs.field(factory=list, eq=False)

    name = "probe"

    def apply(self, ctx: PassContext) -> FusionResult:
        self.seen.append((ctx.platform, gc.isenabled(), ctx.plan))
        return ctx.rec.result(ctx.plan)


class TestRun:
    """FusionPass.run does the prologue once and calls apply."""

    def test_apply_sees_the_resolved_platform_with_gc_paused(self) -> None:
        g = conv_conv()
        plan = fusekit.init_plan(g, "trt_int8")
        probe = Probe()
        assert gc.isenabled()
        r = probe.run(g, plan)
        assert r.plan is plan and not r.changed
        platform, gc_on, seen_plan = probe.seen[0]  # type: ignore[misc]
        assert platform is fusekit.get_platform("trt_int8")
        assert gc_on is False and seen_plan is plan
        assert gc.isenabled()

    def test_a_plan_of_another_graph_is_refused_before_apply(self) -> None:
        g = conv_conv()
        other = G().conv("c1", "x").relu("r", "c1").build(["r"])
        probe = Probe()
        with pytest.raises(PlanGraphMismatch):
            probe.run(g, fusekit.init_plan(other, "trt_int8"))
        assert probe.seen == []

    def test_every_shipped_pass_is_a_fusion_pass(self) -> None:
        for step in fusekit.default_pipeline("trt_int8"):
            assert isinstance(step, FusionPass), step
            assert step.ensures and "acyclic-sharing" in step.ensures

    def test_apply_must_be_implemented(self) -> None:
        @attrs.frozen
        class Nothing(FusionPass):
            platform: str = "trt_int8"

        g = conv_conv()
        with pytest.raises(NotImplementedError, match="apply"):
            Nothing().run(g, fusekit.init_plan(g, "trt_int8"))


class TestEnsures:
    """ensures names laws of fusekit.laws; check_pass and the debug mode check them."""

    def test_an_unknown_law_is_refused_when_the_class_is_defined(self) -> None:
        with pytest.raises(UnknownLaw) as e:

            class Typo(FusionPass):
                ensures = ("acyclic-sharnig",)

        assert e.value.law == "acyclic-sharnig"
        assert "no-dead-quantization" in e.value.known
        assert isinstance(e.value, KeyError)

    def test_check_pass_raises_postcondition_error(self) -> None:
        g = conv_conv()
        with pytest.raises(PostconditionError) as e:
            ft.check_pass(SwitchOffConv(), g, fusekit.init_plan(g, "trt_int8"))
        assert e.value.pass_name == "switch_off_conv"
        assert [v.law for v in e.value.violations] == ["activation"]
        assert isinstance(e.value, AssertionError)

    def test_check_pass_checks_each_pass_of_a_pipeline(self) -> None:
        g = conv_conv()
        pipe = Pipeline((fusekit.ActivationFusion("trt_int8"), SwitchOffConv()))
        with pytest.raises(PostconditionError, match="switch_off_conv"):
            ft.check_pass(pipe, g, fusekit.init_plan(g, "trt_int8"))

    def test_debug_mode_checks_every_run(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = conv_conv()
        plan = fusekit.init_plan(g, "trt_int8")
        monkeypatch.delenv(DEBUG_ENV, raising=False)
        assert SwitchOffConv().run(g, plan).changed  # off: not checked
        monkeypatch.setenv(DEBUG_ENV, "1")
        with pytest.raises(PostconditionError, match="activation"):
            SwitchOffConv().run(g, plan)

    def test_debug_mode_accepts_the_shipped_pipeline(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(DEBUG_ENV, "1")
        g = (
            G()
            .conv("c1", "x")
            .relu("r1", "c1")
            .op("MaxPool", "p", ["r1"])
            .conv("c2", "p")
            .op("Add", "add", ["c2", "p"])
            .build(["add"])
        )
        for name in ("trt_int8", "ort_int8", "ppq066_trt_int8"):
            plan = fusekit.init_plan(g, name)
            assert fusekit.default_pipeline(name).run(g, plan).changed

    def test_a_law_broken_on_the_input_is_not_blamed_on_the_pass(self) -> None:
        g = conv_conv()
        broken = SwitchOffConv().run(g, fusekit.init_plan(g, "trt_int8")).plan
        # the input already breaks "activation": running again changes nothing, blames nothing
        ft.check_pass(SwitchOffConv(), g, broken)


class TestPipeline:
    """A pipeline is a pass: its result is a FusionResult; it refuses what is not a pass."""

    def test_not_a_pass(self) -> None:
        with pytest.raises(NotAPass) as e:
            Pipeline((fusekit.Simplify("trt_int8"), "simplify"))
        assert e.value.value == "simplify"
        assert isinstance(e.value, TypeError)

    def test_pipeline_matches_the_pass_protocol(self) -> None:
        g = conv_conv()
        pipe = fusekit.default_pipeline("trt_int8")
        assert isinstance(pipe, Pass)
        r = pipe.run(g, fusekit.init_plan(g, "trt_int8"))
        assert isinstance(r, FusionResult) and isinstance(r, PipelineResult)
        assert r.n_changes == sum(x.n_changes for x in r.results)
        assert {d.pass_name for d in r.decisions} <= {p.name for p in pipe}

    def test_nested_pipelines_flatten(self) -> None:
        g = conv_conv()
        plan = fusekit.init_plan(g, "trt_int8")
        inner = Pipeline((EpilogueFusion("trt_int8"), fusekit.Simplify("trt_int8")))
        outer = Pipeline((inner, fusekit.Alignment("trt_int8")))
        r = outer.run(g, plan)
        assert [x.pass_name for x in r.results] == ["epilogue_fusion", "simplify", "alignment"]


class TestConcat:
    """FusionResult.concat / then: the public way to join results (no _raw splicing)."""

    def test_concat_keeps_every_decision_in_order(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").op("MaxPool", "p", ["r1"]).build(["p"])
        plan = fusekit.init_plan(g, "trt_int8")
        a = fusekit.ActivationFusion("trt_int8").run(g, plan)
        b = fusekit.PassiveFusion("trt_int8").run(g, a.plan)
        both = FusionResult.concat("mine", plan, [a, b])
        assert both.plan is b.plan and both.input_plan is plan
        assert [d.reason for d in both.decisions] == [
            d.reason for d in (*a.decisions, *b.decisions)
        ]
        assert {d.pass_name for d in both.decisions} == {"mine"}
        assert fusekit.replay(plan, both.decisions) == both.plan

    def test_concat_of_nothing_is_the_input(self) -> None:
        g = conv_conv()
        plan = fusekit.init_plan(g, "trt_int8")
        r = FusionResult.concat("none", plan, [])
        assert r.plan is plan and not r.changed and r.decisions == ()

    def test_concat_refuses_results_out_of_sequence(self) -> None:
        g = conv_conv()
        plan = fusekit.init_plan(g, "trt_int8")
        a = SwitchOffConv().run(g, plan)
        with pytest.raises(fusekit.InvalidPlan, match="did not run on"):
            FusionResult.concat("x", plan, [a, a])

    def test_then_keeps_the_name_and_extends_the_log(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").op("MaxPool", "p", ["r1"]).build(["p"])
        plan = fusekit.init_plan(g, "trt_int8")
        a = fusekit.ActivationFusion("trt_int8").run(g, plan)
        b = fusekit.PassiveFusion("trt_int8").run(g, a.plan)
        ab = a.then(b)
        assert ab.pass_name == a.pass_name and ab.plan is b.plan
        assert ab.n_changes == a.n_changes + b.n_changes
        assert a.plan is not b.plan and a.n_changes == len(a.changes)  # a is unchanged
        assert a.then() is a

    def test_fuse_is_the_concatenation_of_its_passes(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").op("MaxPool", "p", ["r1"]).build(["p"])
        plan = fusekit.init_plan(g, "trt_int8")
        r = fusekit.fuse(g, plan, "trt_int8")
        steps = Pipeline(
            (
                EpilogueFusion("trt_int8"),
                fusekit.ActivationFusion("trt_int8"),
                fusekit.CompositeActivationFusion("trt_int8"),
                fusekit.PassiveFusion("trt_int8"),
            )
        ).run(g, plan)
        assert r.plan == steps.plan
        assert [d.reason for d in r.decisions] == [d.reason for d in steps.decisions]


def _first_change_scan(res: fusekit.FusionResult) -> dict[fusekit.Slot, object]:
    want: dict[fusekit.Slot, object] = {}
    for d in res.changes:
        for ch in d.changes:
            want.setdefault(ch.slot, d)
    return want


@pytest.mark.parametrize("platform", ["trt_int8", "ort_int8", "ppq066_trt_int8"])
def test_first_changes_name_the_first_decision_that_changed_each_slot(platform: str) -> None:
    """The audit's lookup of "which decision changed this slot" replays the log as ids and
    builds only the decisions asked for; it must give, for every slot, the first change that
    lists the slot among its ``changes``, as scanning the materialized log does."""
    import sys
    from pathlib import Path

    from fusekit.examples import example_model_path
    from fusekit.passes._core import _first_changes

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import generate

    for g in (
        fusekit.load(example_model_path()),
        fusekit.load(generate.make_model(400, seed=3).SerializeToString()),
    ):
        res = fusekit.default_pipeline(platform).run(g, fusekit.init_plan(g, platform))
        want = _first_change_scan(res)
        get = _first_changes(res)
        got = {s: get(s) for op in g for s in op.slots()}
        assert len(want) > 100
        assert {s: d for s, d in got.items() if d is not None} == want
        assert get(fusekit.Slot("no such op", "in", 0)) is None


def test_first_changes_name_an_old_root_switched_off_by_an_overlap() -> None:
    """Overlapping a slot that already shares another root switches that root off too: the
    decision lists both slots, and the lookup names it for the old root as well."""
    from fusekit.examples import example_model_path
    from fusekit.passes._core import _first_changes

    g = fusekit.load(example_model_path())
    plan = fusekit.init_plan(g, "trt_int8")
    idx = g.index
    convs = [op.name for op in g if op.op_type == "Conv"][:3]
    a, b, c = (idx.slot_id(fusekit.Slot(n, "out", 0)) for n in convs)
    ctx = PassContext(g, plan, "trt_int8", "test")
    ctx.rec.overlap("r", (idx.op_id[convs[0]],), a, b, "first")
    ctx.rec.overlap("r", (idx.op_id[convs[0]],), a, c, "second")
    res = ctx.rec.result(plan)
    first, second = res.changes
    assert len(second.changes) == 2  # a, and b (a's root until then)
    get = _first_changes(res)
    assert get(fusekit.Slot(convs[0], "out", 0)) == first
    assert get(fusekit.Slot(convs[1], "out", 0)) == second
    assert get(fusekit.Slot(convs[2], "out", 0)) is None
    assert {k: get(k) for k in _first_change_scan(res)} == _first_change_scan(res)
