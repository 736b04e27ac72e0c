"""The plan's sharing queries (issue 12 item 2): the link encoding stays inside quant.py."""

from __future__ import annotations

import pytest
from pyrsistent import pvector

import fusekit
from fusekit import InvalidPlan, LinkKind, NotARoot, QuantPlan, QuantState, SharingCycle, Slot
from fusekit.plan_io import plan_from_dict, plan_to_dict

from .graphs import G


def four_relus() -> tuple[fusekit.Graph, QuantPlan]:
    g = G().relu("a", "x").relu("b", "a").relu("c", "b").relu("d", "c").build(["d"])
    return g, fusekit.init_plan(g, "trt_int8", dispatch=dict.fromkeys("abcd", "trt_int8"))


A, B, C, D = (Slot(n, "out", 0) for n in "abcd")


def linked() -> tuple[fusekit.Graph, QuantPlan]:
    """a overlapped by b, c follows b, d follows c: b is the root of everything but d's chain."""
    g, plan = four_relus()
    plan = plan.overlap(A, B).follow(C, B).follow(D, C)
    return g, plan


def corrupted(g: fusekit.Graph, plan: QuantPlan, *pairs: tuple[Slot, Slot]) -> QuantPlan:
    """``plan`` with raw FOLLOW links written past the API (a hand-made or damaged table)."""
    links = plan._links.tolist()  # quant.py's private encoding, on purpose
    for child, parent in pairs:
        links[g.index.slot_id(child)] = g.index.slot_id(parent) * 2 + 1
    return QuantPlan(g, plan.configs, pvector(links), plan.dispatch)


class TestQueries:
    """parent_id, link_kind_id, root_id and friends answer from the private link table."""

    def test_parent_and_kind_by_id(self) -> None:
        g, plan = linked()
        sid = g.index.slot_id
        assert plan.parent_id(sid(A)) == sid(B)
        assert plan.link_kind_id(sid(A)) is LinkKind.OVERLAP
        assert plan.parent_id(sid(D)) == sid(C)
        assert plan.link_kind_id(sid(D)) is LinkKind.FOLLOW
        assert plan.parent_id(sid(B)) == -1 and plan.link_kind_id(sid(B)) is None

    def test_link_kind_by_slot(self) -> None:
        _, plan = linked()
        assert plan.link_kind(A) is LinkKind.OVERLAP
        assert plan.link_kind(C) is LinkKind.FOLLOW
        assert plan.link_kind(B) is None

    def test_root_id_follows_every_link(self) -> None:
        g, plan = linked()
        sid = g.index.slot_id
        assert plan.root_id(sid(D)) == sid(B)
        assert plan.root(D) == B

    def test_parent_ids_and_link_table_cover_every_slot(self) -> None:
        g, plan = linked()
        sid = g.index.slot_id
        parents = plan.parent_ids()
        table = plan.link_table()
        assert len(parents) == len(table) == g.index.n_slots
        assert parents[sid(D)] == sid(C) and table[sid(D)] == (sid(C), LinkKind.FOLLOW)
        assert parents[sid(B)] == -1 and table[sid(B)] == (-1, None)
        assert [p for p, _ in table] == parents

    def test_link_table_changes_with_the_links_only(self) -> None:
        _, plan = linked()
        assert plan.with_state(B, QuantState.FP32).link_table() == plan.link_table()
        assert plan.unlink(D).link_table() != plan.link_table()

    def test_follower_ids_group_follow_links_by_root(self) -> None:
        g, plan = linked()
        sid = g.index.slot_id
        # c and d are linked by FOLLOW (d through c); a is OVERLAPPED, not a follower
        assert plan.follower_ids() == {sid(B): [sid(C), sid(D)]}
        assert plan.followers(B) == (C, D)

    def test_followers_of_a_linked_slot_is_refused(self) -> None:
        _, plan = linked()
        with pytest.raises(NotARoot) as e:
            plan.followers(C)
        assert e.value.slot == C

    def test_a_plan_without_links_has_no_followers(self) -> None:
        _, plan = four_relus()
        assert plan.follower_ids() == {}
        assert plan.parent_ids() == [-1] * len(plan.parent_ids())


class TestEvolverQueries:
    """The transient answers the same questions as it is now (what passes read in loops)."""

    def test_parent_kind_follows_root(self) -> None:
        g, plan = four_relus()
        sid = g.index.slot_id
        ev = plan.evolver()
        ev.overlap(A, B)
        ev.follow(C, B)
        assert ev.parent(sid(A)) == sid(B) and ev.link_kind(sid(A)) is LinkKind.OVERLAP
        assert ev.parent(sid(C)) == sid(B) and ev.link_kind(sid(C)) is LinkKind.FOLLOW
        assert ev.follows(sid(C), sid(B)) and not ev.follows(sid(A), sid(B))
        assert ev.parent(sid(B)) == -1 and ev.link_kind(sid(B)) is None
        ev.follow(D, C)
        assert ev.root(sid(D)) == sid(B)
        assert not ev.follows(sid(D), sid(B))  # d follows c directly, not b

    def test_follow_refuses_a_cycle_through_a_long_chain(self) -> None:
        _g, plan = four_relus()
        ev = plan.evolver()
        ev.follow(B, A)
        ev.follow(C, B)
        ev.follow(D, C)
        with pytest.raises(SharingCycle) as e:
            ev.follow(A, D)
        assert e.value.chain == (A, D, C, B, A)

    def test_overlap_merges_roots_and_switches_both_off(self) -> None:
        _g, plan = four_relus()
        ev = plan.evolver()
        assert ev.overlap(A, B)
        assert not ev.overlap(A, B)  # already one group
        new = ev.persistent()
        assert new.state(A) is QuantState.OVERLAPPED and new.root(A) == B


class TestCycles:
    """One cycle guard: a corrupted table raises InvalidPlan naming the loop, never hangs."""

    def test_root_id_on_a_loop_raises(self) -> None:
        g, plan = four_relus()
        bad = corrupted(g, plan, (A, B), (B, A))
        with pytest.raises(InvalidPlan, match="sharing cycle"):
            bad.root(A)

    def test_root_ids_on_a_loop_raises_instead_of_looping(self) -> None:
        g, plan = four_relus()
        bad = corrupted(g, plan, (A, B), (B, C), (C, A))
        with pytest.raises(InvalidPlan, match="sharing cycle") as e:
            bad.root_ids()
        assert e.value.slot in (A, B, C)

    def test_sharing_cycles_lists_each_loop_once(self) -> None:
        g, plan = four_relus()
        bad = corrupted(g, plan, (A, B), (B, A), (C, D), (D, C))
        loops = bad.sharing_cycles()
        assert sorted(loops) == sorted([(A, B, A), (C, D, C)])
        assert plan.sharing_cycles() == ()

    def test_chain_on_a_loop_raises(self) -> None:
        g, plan = four_relus()
        with pytest.raises(InvalidPlan):
            corrupted(g, plan, (A, B), (B, A)).chain(A)


class TestFromIds:
    """QuantPlan.from_ids: the one way to build a plan with links from ids (plan files use it)."""

    def test_round_trip_of_the_link_table(self) -> None:
        g, plan = linked()
        links = [
            (s, p, k) for s, (p, k) in enumerate(plan.link_table()) if k is not None and p >= 0
        ]
        again = QuantPlan.from_ids(g, plan.configs, plan.dispatch, links)
        assert again == plan

    def test_a_cycle_is_refused_with_its_location(self) -> None:
        g, plan = four_relus()
        sid = g.index.slot_id
        links = [(sid(A), sid(B), LinkKind.FOLLOW), (sid(B), sid(A), LinkKind.OVERLAP)]
        with pytest.raises(InvalidPlan, match="sharing cycle") as e:
            QuantPlan.from_ids(g, plan.configs, plan.dispatch, links, where="p.json.links")
        assert e.value.path == "p.json.links"
        assert str(e.value).startswith("p.json.links: sharing cycle")

    def test_a_self_link_and_a_double_link_are_refused(self) -> None:
        g, plan = four_relus()
        a, b, c = (g.index.slot_id(s) for s in (A, B, C))
        with pytest.raises(InvalidPlan, match="itself") as e:
            QuantPlan.from_ids(g, plan.configs, plan.dispatch, [(a, a, LinkKind.OVERLAP)])
        assert e.value.slot == A
        twice = [(a, b, LinkKind.OVERLAP), (a, c, LinkKind.FOLLOW)]
        with pytest.raises(InvalidPlan, match="twice"):
            QuantPlan.from_ids(g, plan.configs, plan.dispatch, twice)

    def test_wrong_lengths_are_refused(self) -> None:
        g, plan = four_relus()
        with pytest.raises(InvalidPlan, match="configs"):
            QuantPlan.from_ids(g, list(plan.configs)[:-1], plan.dispatch)

    def test_plan_files_are_checked_for_cycles_through_quant(self) -> None:
        g, plan = linked()
        data = plan_to_dict(plan)
        data["links"]["b|out|0"] = ["d|out|0", "follow"]  # d -> c -> b -> d
        with pytest.raises(InvalidPlan, match="sharing cycle") as e:
            plan_from_dict(g, data, source="p.json")
        assert e.value.path == "p.json.links"
