"""Planted bugs the law suite must kill (issue 16): a mutation check of the property suite.

Each mutant is a plausible bug planted in memory for one test (pytest's ``monkeypatch`` on a
pass class or on the :class:`~fusekit.passes.Recorder` every pass records its links through;
no source is edited, and the decision log stays consistent with the plan, so only the plan
laws can see the bug). For each mutant, the law the suite states about that structure is run
on the law test's own strategy, with the active profile's example budget
(``settings.default.max_examples``: 30 in ``dev``, 500 in ``ci``), and must find a violation.

Examples each mutant needed before its law saw it, measured in the ``ci`` profile
(derandomized, so these are facts about the suite; ``pytest -s`` prints them; re-measured
after the join graphs got a Conv after the join, which moved the last two from 77 and 12):

==========================================  ==================  ========
mutant                                      law                 examples
==========================================  ==================  ========
outputs follow the second input             passive (law 4)     2
only the first Split output shares         passive (law 4)     2
activation fused despite a second consumer  activation (law 5)  12
alignment skips one input                   reference (law 9)   63
simplify links different schemes            simplify (law 4)    2
==========================================  ==================  ========

Before issue 16 the first survived all 500 examples of the passive law (no generated passive
op had a second quantized input) and the last could not be seen at all (no generated plan
had two schemes on one edge).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fusekit
from fusekit import Graph, Platform, QuantPlan, QuantState, Slot, TensorQuantConfig, laws
from fusekit.passes import ActivationFusion, Alignment, PassiveFusion, Recorder, Simplify, fuse

from .conftest import CI_EXAMPLES
from .strategies import (
    COMPAT,
    cases,
    corrected_platforms,
    graphs,
    initial_plans,
    mixed_scheme_cases,
    mixed_scheme_plans,
)
from .test_laws import cross_scheme_links, pipeline_result
from .test_reference import first_disagreement

Case = tuple[Graph, Platform, QuantPlan]

# --------------------------------------------------------------------------------------------
# the mutants


def _quantized(rec: Recorder, sid: int) -> bool:
    cfg = rec.ev.cfg(sid)
    return cfg is not None and cfg.state != QuantState.FP32


def second_input(mp: pytest.MonkeyPatch) -> None:
    """Passive fusion overlaps the outputs by input 1 when that input is quantized."""
    overlap = Recorder.overlap

    def mutant(self: Recorder, rule: str, ops: tuple[int, ...], a: int, b: int, *rest: Any) -> bool:
        if self.pass_name == PassiveFusion.name and rule == "passive":
            o = ops[0]
            if self.idx.n_in[o] >= 2 and _quantized(self, b + 1):
                b += 1
        return overlap(self, rule, ops, a, b, *rest)

    mp.setattr(Recorder, "overlap", mutant)


def first_output_only(mp: pytest.MonkeyPatch) -> None:
    """Passive fusion links only output 0 (a Split's other outputs keep their own scale)."""
    overlap = Recorder.overlap

    def mutant(self: Recorder, rule: str, ops: tuple[int, ...], a: int, b: int, *rest: Any) -> bool:
        if self.pass_name == PassiveFusion.name and rule == "passive":
            o = ops[0]
            if a != self.idx.slot_base[o] + self.idx.n_in[o]:
                return False
        return overlap(self, rule, ops, a, b, *rest)

    mp.setattr(Recorder, "overlap", mutant)


def fan_out_activation(mp: pytest.MonkeyPatch) -> None:
    """Activation fusion fuses a computing op whose output has a second consumer."""
    refuse = Recorder.refuse

    def mutant(self: Recorder, rule: str, ops: tuple[int, ...], why: str, *args: Any) -> None:
        text = why.format(*args)
        if (
            self.pass_name == ActivationFusion.name
            and rule == "activation"
            and " consumers" in text
        ):
            c, a = (self.names[o] for o in ops)
            g = self.graph
            t = next(t for t in g.ops[c].outputs if t in g.ops[a].inputs)
            c_out = self.idx.slot_id(Slot(c, "out", g.ops[c].outputs.index(t)))
            a_in = self.idx.slot_id(Slot(a, "in", g.ops[a].inputs.index(t)))
            a_out = self.idx.slot_id(Slot(a, "out", 0))
            same = self.ev.dispatch[ops[0]] == self.ev.dispatch[ops[1]] is not None
            if same and all(_quantized(self, s) for s in (c_out, a_in, a_out)):
                self.overlap(rule, ops, c_out, a_out, "fused anyway")
                self.overlap(rule, ops, a_in, a_out, "fused anyway")
                return
        refuse(self, rule, ops, why, *args)

    mp.setattr(Recorder, "refuse", mutant)


def skip_last_input(mp: pytest.MonkeyPatch) -> None:
    """Alignment leaves the last input of a multi-input op out of the aligned group."""
    follow = Recorder.follow

    def mutant(self: Recorder, rule: str, ops: tuple[int, ...], a: int, m: int, *rest: Any) -> bool:
        if self.pass_name == Alignment.name and len(ops) == 1:
            o = ops[0]
            n = self.idx.n_in[o]
            if n >= 2 and a == self.idx.slot_base[o] + n - 1:
                return False
        return follow(self, rule, ops, a, m, *rest)

    mp.setattr(Recorder, "follow", mutant)


def any_scheme(mp: pytest.MonkeyPatch) -> None:
    """Simplify treats every pair of configs as the same scheme (one quantization per edge
    even between an 8-bit and a 16-bit slot)."""
    run = Simplify.run

    def mutant(self: Simplify, graph: Graph, plan: QuantPlan) -> Any:
        with pytest.MonkeyPatch.context() as inner:
            inner.setattr(TensorQuantConfig, "same_scheme", lambda a, b: True)
            return run(self, graph, plan)

    mp.setattr(Simplify, "run", mutant)


# --------------------------------------------------------------------------------------------
# the laws that must see them (the law tests' bodies, as predicates)


def passive_broken(args: tuple[Case, bool]) -> bool:
    (g, p, plan), calibrate = args
    return bool(laws.passive_law(g, pipeline_result(g, p, plan, calibrate), p))


def activation_broken(args: tuple[Case, bool]) -> bool:
    (g, p, plan), calibrate = args
    return bool(laws.activation_law(g, pipeline_result(g, p, plan, calibrate), p))


@st.composite
def _compat_cases(draw: st.DrawFn) -> Case:
    """What law 9 draws: a graph, a ppq066 rule set, an initial plan, half the time with
    mixed schemes."""
    g = draw(graphs())
    p = fusekit.get_platform(draw(st.sampled_from(COMPAT)))
    plan = draw(initial_plans(g, p))
    if draw(st.booleans()):
        plan = draw(mixed_scheme_plans(plan))
    return g, p, plan


def reference_broken(case: Case) -> bool:
    return first_disagreement(*case) is not None


def simplify_broken(case: Case) -> bool:
    g, p, plan = case
    fused = fuse(g, plan, p).plan
    return bool(cross_scheme_links(fused, Simplify(p).run(g, fused).plan))


_LAW_PIPELINE = st.tuples(cases(corrected_platforms(), calibrated=False), st.booleans())

#: mutant -> (the law that must kill it, its strategy, the law's check as a predicate)
MUTANTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str, Any, Callable[[Any], bool]]] = {
    "outputs follow the second input": (second_input, "passive", _LAW_PIPELINE, passive_broken),
    "only the first Split output shares": (
        first_output_only,
        "passive",
        _LAW_PIPELINE,
        passive_broken,
    ),
    "activation fused despite a second consumer": (
        fan_out_activation,
        "activation",
        _LAW_PIPELINE,
        activation_broken,
    ),
    "alignment skips one input": (skip_last_input, "reference", _compat_cases(), reference_broken),
    "simplify links different schemes": (
        any_scheme,
        "simplify",
        mixed_scheme_cases(corrected_platforms()),
        simplify_broken,
    ),
}


class _Killed(Exception):
    """The law found a violation (stops the search at once)."""


def examples_to_kill(strategy: Any, broken: Callable[[Any], bool], budget: int) -> int | None:
    """How many examples of ``strategy`` the search drew before ``broken`` held (None if it
    never did within ``budget``). Generation only, no shrinking; derandomized as the active
    profile is."""
    count = 0
    first: list[int] = []

    @settings(
        max_examples=budget,
        derandomize=settings.default.derandomize,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def search(case: Any) -> None:
        nonlocal count
        count += 1
        if broken(case):
            first.append(count)
            raise _Killed

    with contextlib.suppress(_Killed):
        search()
    return first[0] if first else None


#: Mutants the ``dev`` profile's budget (60 random examples) must kill too: the simplest, whose
#: structure the join cases put in the first few examples (6 runs: killed after 2-7 examples).
#: The other two took 3-187 (activation) and 4-55 (alignment) examples in dev runs; they are
#: held to the ``ci`` budget in every profile.
DEV_KILLS = frozenset(
    {
        "outputs follow the second input",
        "only the first Split output shares",
        "simplify links different schemes",
    }
)


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_laws_kill_the_mutant(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the ``ci`` budget (whatever the profile: the search stops at the first kill, so
    this costs little), and for the simplest mutants within the active profile's budget, the
    mutant breaks the law about its structure."""
    plant, law, strategy, broken = MUTANTS[name]
    budget = settings.default.max_examples
    plant(monkeypatch)
    needed = examples_to_kill(strategy, broken, max(budget, CI_EXAMPLES))
    print(f"\n{name}: killed by the {law} law after {needed} examples (profile budget {budget})")
    assert needed is not None, (
        f"the mutant {name!r} survived {CI_EXAMPLES} examples of the {law} law"
    )
    if name in DEV_KILLS:
        assert needed <= budget, f"{name!r} needed {needed} examples, the profile runs {budget}"
    # the kill is the mutant's doing: without it, the same search (the same examples when the
    # profile is derandomized) finds nothing
    monkeypatch.undo()
    assert examples_to_kill(strategy, broken, needed) is None
