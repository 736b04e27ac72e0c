"""The laws of every pass (issue 5, laws 1-8), each over random graphs, rule sets and plans.

Every law has a companion test showing it can fail: a deliberately broken pass (or PPQ 0.6.6's
rule sets, which break some laws on purpose) is caught by the same check on a graph Hypothesis
finds. The checks themselves live in :mod:`fusekit.testing` and :mod:`fusekit.laws`.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, find, given, settings
from hypothesis import strategies as st
from pyrsistent import pvector

import fusekit
from fusekit import (
    Graph,
    Initializer,
    LinkKind,
    Op,
    Platform,
    QuantPlan,
    QuantState,
    SharingCycle,
    Slot,
    laws,
)
from fusekit import testing as ft
from fusekit.passes import (
    ActivationFusion,
    Alignment,
    CompositeActivationFusion,
    EpilogueFusion,
    FusionResult,
    PassiveFusion,
    PassiveParameters,
    Simplify,
    default_pipeline,
    fuse,
)
from fusekit.passes._core import PassContext

from .conftest import examples
from .strategies import (
    COMPAT,
    CORRECTED,
    StandInCalibration,
    any_platforms,
    cases,
    compat_platforms,
    corrected_platforms,
    graphs,
    mixed_scheme_cases,
    permuted,
)

FIND = settings(
    max_examples=2000, database=None, suppress_health_check=list(HealthCheck), deadline=None
)


@attrs.frozen
class Fuse:
    """:func:`fusekit.fuse` as a pass value (it is a function)."""

    platform: Platform

    name = "fuse"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        return fuse(graph, plan, self.platform)


def steps(p: Platform, *, pipelines: bool = True) -> list[Any]:
    """Every pass of fusekit and the default pipeline (without and with calibration)."""
    out: list[Any] = [
        EpilogueFusion(p),
        ActivationFusion(p),
        CompositeActivationFusion(p),
        PassiveFusion(p),
        Simplify(p),
        Alignment(p),
        PassiveParameters(p),
        Fuse(p),
    ]
    if pipelines:
        out += [default_pipeline(p), default_pipeline(p, calibration=StandInCalibration())]
    return out


def pipeline_result(g: Graph, p: Platform, plan: QuantPlan, calibrate: bool) -> QuantPlan:
    cal = StandInCalibration() if calibrate else None
    return default_pipeline(p, calibration=cal).run(g, plan).plan


# --------------------------------------------------------------------------------------------
# 1. purity


@given(cases(any_platforms(), edited=True))
def test_law1_purity(case: tuple[Graph, Platform, QuantPlan]) -> None:
    """No pass or pipeline changes its input graph or plan (compared to a deep snapshot)."""
    g, p, plan = case
    for step in steps(p):
        ft.assert_pure(step, g, plan)


@attrs.frozen
class _Mutating:
    """A broken pass: it writes a config's state in place through ``object.__setattr__``."""

    name = "mutating"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        for c in plan.configs:
            if c is not None:
                object.__setattr__(c, "state", QuantState.FP32)
                break
        return PassContext(graph, plan, "trt_int8", self.name).rec.result(plan)


def test_law1_purity_catches_a_mutating_pass() -> None:
    g, plan = find(
        st.builds(lambda g: (g, fusekit.init_plan(g, "trt_int8")), graphs()),
        lambda gp: any(c is not None and c.state != QuantState.FP32 for c in gp[1].configs),
        settings=FIND,
    )
    with pytest.raises(AssertionError, match="modified its input plan"):
        ft.assert_pure(_Mutating(), g, plan)


# --------------------------------------------------------------------------------------------
# 2. determinism


@given(cases(any_platforms(), edited=True))
def test_law2_same_inputs_same_outputs(case: tuple[Graph, Platform, QuantPlan]) -> None:
    """Running a pass twice on the same inputs gives equal plans and equal decision logs."""
    g, p, plan = case
    for step in steps(p):
        ft.assert_deterministic(step, g, plan)


@given(
    graphs(),
    st.sampled_from(CORRECTED + COMPAT),
    st.sampled_from(("all", "ppq-conservative")),
    st.booleans(),
    st.data(),
)
def test_law2_node_order_does_not_matter(
    g: Graph, name: str, dispatch: str, calibrate: bool, data: st.DataObject
) -> None:
    """Building the graph from its nodes in another order gives the same plan, slot by slot.

    (Ops keep their names, so "up to slot names" is plain equality of states and roots.)
    PPQ 0.6.6 itself is order-dependent in one respect that its rule sets reproduce: its
    alignment makes the op it visits last the root of a merged group, so for the ``ppq066_*``
    sets the plans must agree up to which member is the root (same groups, same states).
    """
    perm = data.draw(st.permutations(range(len(g))))
    g2 = permuted(g, perm)
    a = pipeline_result(
        g, fusekit.get_platform(name), fusekit.init_plan(g, name, dispatch), calibrate
    )
    b = pipeline_result(
        g2, fusekit.get_platform(name), fusekit.init_plan(g2, name, dispatch), calibrate
    )
    if name in COMPAT:
        assert up_to_root_choice(a) == up_to_root_choice(b)
    else:
        assert ft.states_and_roots(a) == ft.states_and_roots(b)


def up_to_root_choice(plan: QuantPlan) -> tuple[frozenset[frozenset[str]], dict[str, Any]]:
    """The plan's sharing groups, and each slot's state, where a group's root and the members
    overlapped onto it count as one kind ("SHARED"): what stays when the root is swapped."""
    groups: dict[Slot, list[Slot]] = {}
    for s in plan.slots():
        groups.setdefault(plan.root(s), []).append(s)
    states: dict[str, Any] = {}
    for root, members in groups.items():
        for m in members:
            state = plan[m].state.name
            shared = len(members) > 1 and (m == root or state == "OVERLAPPED")
            states[str(m)] = "SHARED" if shared else state
    return frozenset(frozenset(map(str, m)) for m in groups.values()), states


def test_up_to_root_choice_sees_a_different_state() -> None:
    """The weaker comparison still sees a slot whose state changed."""
    w = Initializer.from_array("w", np.ones((4, 4, 1, 1), np.float32))
    ops = [Op("c1", "Conv", ("x", "w"), ("c",)), Op("r1", "Relu", ("c",), ("r",))]
    g = Graph.build(ops, ["x"], ["r"], [w])
    plan = fusekit.init_plan(g, "ppq066_trt_int8")
    fused = default_pipeline("ppq066_trt_int8").run(g, plan).plan
    assert up_to_root_choice(plan) != up_to_root_choice(fused)
    assert up_to_root_choice(fused) == up_to_root_choice(fused)


@attrs.frozen
class _FirstOpSpecial:
    """A broken pass whose result depends on which op comes first in the node order."""

    name = "first_op_special"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        ctx = PassContext(graph, plan, "trt_int8", self.name)
        for name in graph.order:
            if plan.is_quantized(name) and graph.ops[name].inputs:
                sid = graph.index.slot_id(Slot(name, "in", 0))
                ctx.rec.config(
                    "first",
                    (),
                    sid,
                    plan[Slot(name, "in", 0)].with_state(QuantState.FP32),
                    "the first op is special",
                )
                break
        return ctx.rec.result(plan)


def test_law2_catches_node_order_dependence() -> None:
    def differs(args: tuple[Graph, list[int]]) -> bool:
        g, perm = args
        if sorted(perm) != list(range(len(g))):
            return False
        g2 = permuted(g, perm)
        a = _FirstOpSpecial().run(g, fusekit.init_plan(g, "trt_int8")).plan
        b = _FirstOpSpecial().run(g2, fusekit.init_plan(g2, "trt_int8")).plan
        return ft.states_and_roots(a) != ft.states_and_roots(b)

    pairs = graphs(min_steps=2).flatmap(
        lambda g: st.tuples(st.just(g), st.permutations(range(len(g))).map(list))
    )
    find(pairs, differs, settings=FIND)


def test_law2_catches_a_nondeterministic_pass() -> None:
    counter = itertools.count()

    @attrs.frozen
    class Flaky:
        name = "flaky"

        def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
            ctx = PassContext(graph, plan, "trt_int8", self.name)
            ctx.rec.refuse("flaky", (), "run {}", next(counter))
            return ctx.rec.result(plan)

    g = find(graphs(), lambda g: True, settings=FIND)
    with pytest.raises(AssertionError, match="different decision logs"):
        ft.assert_deterministic(Flaky(), g, fusekit.init_plan(g, "trt_int8"))


# --------------------------------------------------------------------------------------------
# 3. idempotence


def _regrows(p: Platform) -> bool:
    """PPQ 0.6.6's alignment is not idempotent: Align to Large re-derives the scale on every run,
    and its ``dominated_by`` of producers can switch off another op's master, which the next
    run re-aligns (documented quirks)."""
    return p.has_quirk("align_to_large_slave_bug") or p.has_quirk("alignment_overlap")


@given(cases(any_platforms(), edited=True, edit_links=False))
def test_law3_every_pass_is_idempotent(case: tuple[Graph, Platform, QuantPlan]) -> None:
    """A second run of any pass returns the very same plan object and logs no change, on
    fresh or calibrated plans with random slot states.

    Not on plans with hand-made links or scales on only some roots: a follower's state (PASSIVE
    or PASSIVE_INIT) is decided when it is linked, from whether its root has a scale, so a
    later re-link under a root without a scale (Concat -> Concat, only the first calibrated)
    leaves it stale until the next run. The laws that must hold for any plan (purity,
    determinism, the log) run on those plans.

    Excluded, as documented: Alignment on rule sets with PPQ's alignment quirks (PPQ grows the
    aligned scale by 256/255 per run; see the test below).
    """
    g, p, plan = case
    for step in steps(p, pipelines=False):
        if isinstance(step, Alignment) and _regrows(p):
            continue
        ft.assert_idempotent(step, g, plan)


@given(cases(st.one_of(corrected_platforms(), compat_platforms()), calibrated=False), st.booleans())
def test_law3_default_pipeline_is_idempotent(
    case: tuple[Graph, Platform, QuantPlan], calibrate: bool
) -> None:
    """The default pipeline (with or without calibration) is a fixpoint after one run, on
    plans from ``init_plan``. (On arbitrarily edited plans a later pass may give an earlier
    one new work, e.g. calibrating a master alignment created after calibration.) On PPQ's
    rule sets the pipeline runs without alignment, which is not idempotent there (tested
    below)."""
    g, p, plan = case
    cal = StandInCalibration() if calibrate else None
    pipeline = default_pipeline(p, calibration=cal)
    if _regrows(p):
        pipeline = pipeline.without("alignment")
    ft.assert_idempotent(pipeline, g, plan)


def test_law3_catches_ppq_align_to_large_regrowth() -> None:
    """PPQ's Align to Large is not idempotent; the check sees it."""

    def grows(gp: tuple[Graph, QuantPlan]) -> bool:
        g, plan = gp
        try:
            ft.assert_idempotent(default_pipeline("ppq066_trt_int8", StandInCalibration()), g, plan)
        except AssertionError:
            return True
        return False

    g, _ = find(
        graphs().map(lambda g: (g, fusekit.init_plan(g, "ppq066_trt_int8"))), grows, settings=FIND
    )
    assert any(op.op_type in ("Add", "Sub", "Sum") for op in g)


def test_law3_catches_a_pass_that_always_rebuilds() -> None:
    @attrs.frozen
    class Rebuild:
        name = "rebuild"

        def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
            ctx = PassContext(graph, plan, "trt_int8", self.name)
            ev = ctx.ev
            for s in plan.slots():
                ev.set_config(s, attrs.evolve(plan[s]))  # equal but a new object
                break
            return ctx.rec.result(plan)

    g = find(graphs(), lambda g: len(fusekit.init_plan(g, "trt_int8")) > 0, settings=FIND)
    with pytest.raises(AssertionError, match="idempotence"):
        ft.assert_idempotent(Rebuild(), g, fusekit.init_plan(g, "trt_int8"))


# --------------------------------------------------------------------------------------------
# 4. passive law


@given(cases(corrected_platforms(), calibrated=False), st.booleans())
def test_law4_passive(case: tuple[Graph, Platform, QuantPlan], calibrate: bool) -> None:
    """After the pipeline, every fusable passive op's outputs share its first input's group."""
    g, p, plan = case
    assert laws.passive_law(g, pipeline_result(g, p, plan, calibrate), p) == ()


def _broken_passive(g: Graph, plan: QuantPlan) -> QuantPlan:
    """Passive fusion that forgets every output but the first (a Split keeps 2+ scales)."""
    out = PassiveFusion("trt_int8").run(g, plan).plan
    for op in g:
        for k in range(1, len(op.outputs)):
            s = Slot(op.name, "out", k)
            if out.get(s) is not None and out.parent(s) is not None:
                out = out.unlink(s).with_state(s, QuantState.INITIAL)
    return out


def test_law4_catches_a_broken_passive_fusion() -> None:
    g = find(
        graphs(),
        lambda g: bool(
            laws.passive_law(g, _broken_passive(g, fusekit.init_plan(g, "trt_int8")), "trt_int8")
        ),
        settings=FIND,
    )
    assert any(op.op_type == "Split" for op in g)


def cross_scheme_links(before: QuantPlan, after: QuantPlan) -> list[str]:
    """Slots linked between ``before`` and ``after`` to a slot of another scheme."""
    out = []
    for s in after.slots():
        parent = after.parent(s)
        if parent is None or parent == before.parent(s):
            continue
        if not after[s].same_scheme(after[parent[0]]):
            out.append(f"{s} -> {parent[0]}")
    return out


@given(mixed_scheme_cases(corrected_platforms()))
def test_law4_simplify_requantizes_between_schemes(case: tuple[Graph, Platform, QuantPlan]) -> None:
    """Simplify shares one quantization of an edge only when both ends use one scheme: on
    mixed-precision plans, every slot it links has the scheme of the slot it is linked to."""
    g, p, plan = case
    fused = fuse(g, plan, p).plan
    assert cross_scheme_links(fused, Simplify(p).run(g, fused).plan) == []


# --------------------------------------------------------------------------------------------
# 5. activation law (and fusion survives the later passes)


@given(cases(corrected_platforms(), calibrated=False), st.booleans())
def test_law5_activation(case: tuple[Graph, Platform, QuantPlan], calibrate: bool) -> None:
    """A computing op's output is OVERLAPPED only when an activation (or a composite one, or
    an epilogue) is fused into it: one consumer, not a graph output."""
    g, p, plan = case
    assert laws.activation_law(g, pipeline_result(g, p, plan, calibrate), p) == ()


def _fusion_lost(g: Graph, p: Platform, plan: QuantPlan, calibrate: bool) -> list[str]:
    """Slots fusion switched off that the rest of the pipeline moved out of their fused group."""
    fused = fuse(g, plan, p).plan
    final = pipeline_result(g, p, plan, calibrate)
    lost = []
    for s in fused.slots():
        if fused[s].state == QuantState.OVERLAPPED:
            root = fused.root(s)
            if final[s].state != QuantState.OVERLAPPED or final.root(s) != final.root(root):
                lost.append(str(s))
    return lost


@given(cases(corrected_platforms(), calibrated=False), st.booleans())
def test_law5_fusion_survives_the_pipeline(
    case: tuple[Graph, Platform, QuantPlan], calibrate: bool
) -> None:
    """A slot fused away (epilogue, activation, composite, passive) stays switched off and in its
    kernel's group through simplify, calibration, alignment and passive parameters."""
    g, p, plan = case
    assert _fusion_lost(g, p, plan, calibrate) == []


def test_law5_catches_ppq_graph_output_fusion() -> None:
    """PPQ fuses a Conv into its Relu even when the Conv's output is a graph output."""
    ppq = "ppq066_trt_int8"

    def broken(g: Graph) -> bool:
        fused = fuse(g, fusekit.init_plan(g, ppq), ppq).plan
        return bool(laws.activation_law(g, fused, ppq))

    g = find(graphs(), broken, settings=FIND)
    assert set(g.outputs) & {
        t
        for op in g
        if op.op_type in ("Conv", "MatMul", "Gemm", "ConvTranspose")
        for t in op.outputs
    }


def test_law5_catches_alignment_that_splits_a_fused_kernel() -> None:
    """Without the guard fusekit adds (as with PPQ's alignment), aligning the bias Add folded
    into a Conv pulls the kernel apart."""
    unguarded = fusekit.get_platform("trt_int8").evolve(
        name="unguarded", quirks=frozenset({"alignment_overlap"})
    )
    g = find(
        graphs(),
        lambda g: bool(_fusion_lost(g, unguarded, fusekit.init_plan(g, unguarded), False)),
        settings=FIND,
    )
    assert any(op.op_type in ("Add", "Sub") for op in g)


# --------------------------------------------------------------------------------------------
# 6. no dead quantization


@given(cases(corrected_platforms(), calibrated=False), st.booleans())
def test_law6_no_dead_quantization(
    case: tuple[Graph, Platform, QuantPlan], calibrate: bool
) -> None:
    """Every edge between quantized ops is quantized somewhere; no chain ends in a dead root."""
    g, p, plan = case
    assert laws.no_dead_quantization(g, pipeline_result(g, p, plan, calibrate), p) == ()


def test_law6_catches_ppq_alignment_fan_out() -> None:
    """PPQ 0.6.6 overlaps a fan-out producer into an Add's group: its other consumer reads
    unquantized data (ppq-behaviour.md 3.6)."""

    def dead(g: Graph) -> bool:
        p = fusekit.get_platform("ppq066_trt_int8")
        final = pipeline_result(g, p, fusekit.init_plan(g, p), True)
        return any(
            v.slot is not None and g.tensor_of(v.slot) not in g.outputs
            for v in laws.no_dead_quantization(g, final, p)
        )

    g = find(graphs(), dead, settings=FIND)
    assert any(op.op_type in ("Add", "Sub", "Sum", "Concat", "Resize") for op in g)


# --------------------------------------------------------------------------------------------
# 7. acyclic sharing


@given(cases(any_platforms(), calibrated=False), st.data())
def test_law7_links_never_make_a_cycle(
    case: tuple[Graph, Platform, QuantPlan], data: st.DataObject
) -> None:
    """Random overlap/follow sequences either link, or raise SharingCycle exactly when the
    link would close a cycle; every chain always ends in a root."""
    _, _, plan = case
    slots = list(plan.slots())
    assume(len(slots) >= 2)
    for _ in range(data.draw(st.integers(1, 12))):
        a, b = data.draw(st.sampled_from(slots)), data.draw(st.sampled_from(slots))
        kind = data.draw(st.sampled_from(("overlap", "follow")))
        chain_b = [s for s, _ in plan.chain(b)]
        closes = a == b if kind == "overlap" else a in chain_b
        try:
            plan = plan.overlap(a, b) if kind == "overlap" else plan.follow(a, b)
        except SharingCycle:
            assert closes
            continue
        assert not closes
        assert laws.acyclic_sharing(plan) == ()
        if kind == "follow":
            assert plan.parent(a) == (b, LinkKind.FOLLOW)
        else:
            assert plan.root(a) == plan.root(b)
    for s in slots:
        assert plan.chain(s)[-1][1] is None


def test_law7_catches_a_corrupted_link_vector() -> None:
    g = find(graphs(), lambda g: len(fusekit.init_plan(g, "trt_int8")) >= 2, settings=FIND)
    plan = fusekit.init_plan(g, "trt_int8")
    a, b = list(plan.slots())[:2]
    ia, ib = g.index.slot_id(a), g.index.slot_id(b)
    links = plan._links.tolist()  # quant.py's private encoding, on purpose
    links[ia], links[ib] = ib * 2 + 1, ia * 2 + 1  # a -> b -> a, bypassing the API
    bad = QuantPlan(g, plan.configs, pvector(links), plan.dispatch)
    found = laws.acyclic_sharing(bad)
    assert found and found[0].law == "acyclic-sharing" and "loops" in found[0].message


# --------------------------------------------------------------------------------------------
# 8. the decision log is complete


@given(cases(any_platforms(), edited=True))
def test_law8_decision_log_is_complete(case: tuple[Graph, Platform, QuantPlan]) -> None:
    """Replaying the decisions onto the input plan reproduces the result; every changed slot is
    in the log; every refusal gives a reason."""
    g, p, plan = case
    for step in steps(p):
        ft.assert_log_complete(step.run(g, plan))


def test_law8_catches_a_missing_decision() -> None:
    def truncated(gp: tuple[Graph, QuantPlan]) -> FusionResult | None:
        g, plan = gp
        r = fuse(g, plan, "trt_int8")
        raw = [x for x in r._raw if x[0] != "refuse"]
        if not raw:
            return None
        return FusionResult(r.plan, r.input_plan, r.pass_name, tuple(raw[:-1]))

    g, plan = find(
        graphs().map(lambda g: (g, fusekit.init_plan(g, "trt_int8"))),
        lambda gp: truncated(gp) is not None,
        settings=FIND,
    )
    broken = truncated((g, plan))
    assert broken is not None
    with pytest.raises(AssertionError, match="does not reproduce"):
        ft.assert_log_complete(broken)


@settings(max_examples=examples(0.5))
@given(cases(corrected_platforms(), calibrated=False))
def test_every_pipeline_prefix_keeps_the_plan_laws_that_apply(
    case: tuple[Graph, Platform, QuantPlan],
) -> None:
    """Acyclic sharing and no dead quantization hold after every prefix of the pipeline."""
    g, p, plan = case
    current = plan
    for step in default_pipeline(p, calibration=StandInCalibration()):
        current = step.run(g, current).plan
        fusekit.check_invariants(g)
        assert laws.check(g, current, p, ["acyclic-sharing", "no-dead-quantization"]) == ()
