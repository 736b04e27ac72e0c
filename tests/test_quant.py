"""Quantization plans: configs, the persistent union-find, and their PPQ semantics."""

from __future__ import annotations

import numpy as np
import pytest

import fusekit
from fusekit import (
    InvalidPlan,
    LinkKind,
    NotARoot,
    QuantPlan,
    QuantPolicy,
    QuantState,
    SharingCycle,
    Slot,
    TensorQuantConfig,
    UnknownSlot,
)
from fusekit.quant import minmax_to_scale_offset, scale_range

from .graphs import G


def four_relus() -> tuple[fusekit.Graph, QuantPlan]:
    g = G().relu("a", "x").relu("b", "a").relu("c", "b").relu("d", "c").build(["d"])
    # no computing op: the default dispatch would leave these float, so dispatch explicitly
    return g, fusekit.init_plan(g, "trt_int8", dispatch=dict.fromkeys("abcd", "trt_int8"))


A, B, C, D = (Slot(n, "out", 0) for n in "abcd")


class TestConfigs:
    def test_policy_accepts_only_ppq_combinations(self) -> None:
        assert (
            str(QuantPolicy.of("PER_TENSOR", "LINEAR", "SYMMETRICAL"))
            == "PER_TENSOR+LINEAR+SYMMETRICAL"
        )
        assert QuantPolicy.parse("SYMMETRICAL+PER_CHANNEL+LINEAR").per_channel
        with pytest.raises(InvalidPlan):
            QuantPolicy.of("PER_TENSOR", "FLOATING", "ASYMMETRICAL")
        with pytest.raises(InvalidPlan):
            QuantPolicy.parse("PER_TENSOR+BOGUS")

    def test_config_validation(self) -> None:
        pt = QuantPolicy.of("PER_TENSOR", "LINEAR", "SYMMETRICAL")
        with pytest.raises(InvalidPlan):
            TensorQuantConfig(pt, num_bits=1)
        with pytest.raises(InvalidPlan):
            TensorQuantConfig(pt, channel_axis=0)
        with pytest.raises(InvalidPlan):
            TensorQuantConfig(pt, exponent_bits=4)

    def test_helpers(self) -> None:
        pt = QuantPolicy.of("PER_TENSOR", "LINEAR", "SYMMETRICAL")
        c = TensorQuantConfig(pt)
        assert not c.is_active and not c.can_export()
        a = c.with_scale(0.5, 0.0).with_state(QuantState.ACTIVATED)
        assert a.is_active and a.can_export() and c.same_scheme(a)
        assert not a.scale.flags.writeable  # read-only arrays
        assert c.with_state(QuantState.INITIAL) is c
        o = a.with_state(QuantState.OVERLAPPED)
        assert not o.can_export() and o.can_export(export_overlapped=True)
        assert not c.same_scheme(TensorQuantConfig(pt, num_bits=4, quant_min=-8, quant_max=7))
        assert QuantState.PASSIVE.is_active and not QuantState.PASSIVE_INIT.can_export

    def test_scale_from_range_and_back_is_exact(self) -> None:
        cfg = TensorQuantConfig(QuantPolicy.of("PER_TENSOR", "LINEAR", "SYMMETRICAL"))
        s, o = minmax_to_scale_offset(-3.0, 2.0, cfg)
        assert s == pytest.approx(6.0 / 255) and o == 0
        lo, hi = scale_range(cfg, s, o)
        assert minmax_to_scale_offset(lo, hi, cfg)[0] == pytest.approx(s, rel=1e-12)
        asym = TensorQuantConfig(
            QuantPolicy.of("PER_TENSOR", "LINEAR", "ASYMMETRICAL"), quant_min=0, quant_max=255
        )
        s, o = minmax_to_scale_offset(-1.0, 3.0, asym)
        assert s == pytest.approx(4.0 / 255) and o == round(1.0 / s)


class TestUnionFind:
    """PPQ's dominated_by / master_by semantics (reference section 1.4-1.5)."""

    def test_overlap_merges_whole_groups_by_reparenting_the_root(self) -> None:
        # A->B, C->A, B->D: reading C's scale gives D's; B is OVERLAPPED, D keeps its state
        _, p = four_relus()
        p = p.overlap(A, by=B).overlap(C, by=A).overlap(B, by=D)
        assert p.root(C) == D
        assert p[B].state == QuantState.OVERLAPPED
        assert p[D].state == QuantState.INITIAL
        assert p.group(C) == frozenset({A, B, C, D})
        assert p.groups() == (frozenset({A, B, C, D}),)

    def test_overlap_within_a_group_is_a_no_op_both_ways(self) -> None:
        _, p = four_relus()
        p = p.overlap(A, by=B)
        assert p.overlap(A, by=B) is p
        assert p.overlap(B, by=A) is p  # PPQ raises "circular reference" here; fusekit is symmetric
        with pytest.raises(SharingCycle):
            p.overlap(A, by=A)

    def test_follow_keeps_the_slot_active_and_is_cycle_safe(self) -> None:
        _, p = four_relus()
        p = p.follow(A, master=B)
        assert p[A].state == QuantState.PASSIVE_INIT  # master has no scale yet
        assert p.parent(A) == (B, LinkKind.FOLLOW)
        p2 = p.set_scale(B, 0.5, 0.0).follow(C, master=B)
        assert p2[C].state == QuantState.PASSIVE
        assert float(p2.scale_of(A)) == 0.5
        with pytest.raises(SharingCycle) as e:
            p2.follow(B, master=A)
        assert e.value.chain[0] == B and e.value.chain[-1] == B

    def test_follow_moves_only_the_slot_not_its_group(self) -> None:
        _, p = four_relus()
        p = p.overlap(C, by=B).follow(B, master=D)  # C now reaches D through B
        assert p.root(C) == D
        assert p.chain(C) == ((C, LinkKind.OVERLAP), (B, LinkKind.FOLLOW), (D, None))

    def test_set_scale_only_on_roots(self) -> None:
        _, p = four_relus()
        p = p.overlap(A, by=B)
        with pytest.raises(NotARoot):
            p.set_scale(A, 1.0, 0.0)
        assert isinstance(NotARoot("x"), PermissionError)
        q = p.set_scale(B, 0.25, 0.0)
        assert float(q.scale_of(A)) == 0.25 and q.offset_of(A) == 0

    def test_updates_never_touch_the_old_plan(self) -> None:
        _, p = four_relus()
        snap = (list(p.configs), p.link_table())
        p.overlap(A, by=B).follow(C, master=D).set_scale(D, 1.0, 0.0).with_state(A, QuantState.FP32)
        assert (list(p.configs), p.link_table()) == snap
        assert p.root(A) == A and p[A].state == QuantState.INITIAL

    def test_evolver_returns_same_object_when_nothing_changes(self) -> None:
        _, p = four_relus()
        e = p.evolver()
        e.set_config(A, p[A])
        assert e.persistent() is p
        e.overlap(A, B)
        assert e.persistent() is not p

    def test_unknown_slots(self) -> None:
        _g, p = four_relus()
        with pytest.raises(UnknownSlot):
            p[Slot("nope", "out", 0)]
        with pytest.raises(UnknownSlot):
            p[Slot("a", "out", 3)]
        assert p.get(Slot("a", "side", 0)) is None
        assert Slot("a", "in", 0) in p and ("zz", "in", 0) not in p

    def test_diff_lists_config_and_root_changes(self) -> None:
        _, p = four_relus()
        q = p.overlap(A, by=B)
        d = {x.slot: x for x in fusekit.diff(p, q)}
        assert set(d) == {A}
        assert d[A].root_before == A and d[A].root_after == B
        assert fusekit.diff(q, q) == ()

    def test_plans_compare_by_content(self) -> None:
        g, p = four_relus()
        assert fusekit.init_plan(g, "trt_int8", dispatch=dict.fromkeys("abcd", "trt_int8")) == p
        assert p.overlap(A, by=B) != p
        assert len(p) == 8 and next(iter(p.slots())) == Slot("a", "in", 0)

    def test_from_configs_validates(self) -> None:
        g, p = four_relus()
        c = p[A]
        assert QuantPlan.from_configs(g, {"a": ("trt_int8", [c], [c])})[A] is c
        with pytest.raises(InvalidPlan):
            QuantPlan.from_configs(g, {"a": ("trt_int8", [c, c], [c])})
        with pytest.raises(InvalidPlan):
            QuantPlan.from_configs(g, {"zz": ("trt_int8", [c], [c])})


def test_scales_are_float32_arrays() -> None:
    _, p = four_relus()
    q = p.set_scale(A, np.float64(0.1), 0)
    assert q.scale_of(A).dtype == np.float32


def test_named_state_sets_are_the_one_definition() -> None:
    """QuantState's named sets agree with each other and with PPQ's can_export."""
    from fusekit.quant import QuantState as S

    assert S.POINT == S.ACTIVE | S.PENDING and not S.ACTIVE & S.PENDING
    assert {S.BAKED, S.PASSIVE_BAKED} == S.EXPORTED - S.ACTIVE
    assert {S.PASSIVE, S.PASSIVE_INIT} == S.PASSIVE_LIKE
    assert {s for s in S if s.can_export} == set(S) - S.PENDING
    assert {s for s in S if s.is_active} == S.ACTIVE
    assert len(S) == 8  # the sets are not enum members
