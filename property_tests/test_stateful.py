"""Law 12: random edits and passes applied to fusekit's persistent values and to the mutable
PPQ-style reference model in lockstep.

After every step the two agree slot by slot (state and root), and every earlier version of the
plan and of the graph is exactly as it was when it was made: persistence, checked the way
pyrsistent checks its vectors against a plain list.

Known, documented differences the machine asserts rather than hides:

* ``overlap`` of a group's root by one of its own members: PPQ raises ("circular reference"),
  fusekit treats it like the member-to-root direction, a no-op returning the same plan;
* ``set_scale`` on a root in a state PPQ does not consider revisable (OVERLAPPED, BAKED,
  PASSIVE_BAKED): PPQ raises, fusekit sets it (only a linked slot is refused, NotARoot).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import fusekit
from fusekit import Graph, NotARoot, Op, QuantPlan, QuantState, SharingCycle, Slot
from fusekit import testing as ft
from fusekit.passes import Alignment, PassiveParameters, Simplify, fuse

from . import reference_model as rm
from .conftest import examples
from .strategies import COMPAT, graphs, initial_plans
from .test_reference import fake_calibration, reference_of, reference_platform

_STATES = tuple(QuantState)


class PlanMachine(RuleBasedStateMachine):
    """fusekit plan + graph versions vs. one mutable reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.graph: Graph | None = None
        self.plan: QuantPlan | None = None
        self.model: rm.RefModel | None = None
        self.history: list[tuple[QuantPlan, Any]] = []
        self.graphs: list[tuple[Graph, Any]] = []
        self.platform: fusekit.Platform | None = None

    # -- setup -------------------------------------------------------------------------------

    @initialize(g=graphs(), name=st.sampled_from(COMPAT), data=st.data())
    def start(self, g: Graph, name: str, data: st.DataObject) -> None:
        self.platform = fusekit.get_platform(name)
        self._reset(g, data.draw(initial_plans(g, self.platform)))

    def _reset(self, g: Graph, plan: QuantPlan) -> None:
        self.graph = g
        self.graphs.append((g, ft.graph_snapshot(g)))
        self._set(plan)
        self.model = reference_of(g, plan)

    def _set(self, plan: QuantPlan) -> None:
        self.plan = plan
        self.history.append((plan, ft.plan_snapshot(plan)))

    def _slots(self) -> list[Slot]:
        assert self.plan is not None and self.graph is not None
        return [s for s in self.plan.slots() if s.side == "out" or self.graph.tensor_of(s)]

    def _pick(self, i: int) -> Slot:
        slots = self._slots()
        return slots[i % len(slots)]

    def _cfg(self, s: Slot) -> rm.TQC:
        assert self.model is not None
        return self.model.configs()[str(s)]

    def _has_slots(self) -> bool:
        return self.plan is not None and len(self._slots()) > 0

    # -- plan edits ---------------------------------------------------------------------------

    @precondition(_has_slots)
    @rule(i=st.integers(0, 10_000), j=st.integers(0, 10_000))
    def overlap(self, i: int, j: int) -> None:
        assert self.plan is not None
        a, b = self._pick(i), self._pick(j)
        try:
            self._cfg(a).dominated_by(self._cfg(b))
            ppq_error = False
        except rm.PPQError:
            ppq_error = True
        try:
            new = self.plan.overlap(a, b)
        except SharingCycle:
            assert ppq_error and a == b
            return
        if ppq_error:  # documented: a root overlapped by its own member is a no-op here
            assert new is self.plan and self.plan.root(b) == a
            return
        self._set(new)

    @precondition(_has_slots)
    @rule(i=st.integers(0, 10_000), j=st.integers(0, 10_000))
    def follow(self, i: int, j: int) -> None:
        assert self.plan is not None
        a, b = self._pick(i), self._pick(j)
        try:
            self._cfg(a).master_by(self._cfg(b))
            ppq_error = False
        except rm.PPQError:
            ppq_error = True
        try:
            new = self.plan.follow(a, b)
        except SharingCycle:
            assert ppq_error
            return
        assert not ppq_error
        self._set(new)

    @precondition(_has_slots)
    @rule(i=st.integers(0, 10_000), state=st.sampled_from(_STATES))
    def set_state(self, i: int, state: QuantState) -> None:
        assert self.plan is not None
        s = self._pick(i)
        self._cfg(s).state = int(state)
        self._set(self.plan.with_state(s, state))

    @precondition(_has_slots)
    @rule(i=st.integers(0, 10_000), scale=st.sampled_from((0.25, 0.5, 1.0, 2.0)))
    def set_scale(self, i: int, scale: float) -> None:
        assert self.plan is not None
        s = self._pick(i)
        cfg = self._cfg(s)
        try:
            new = self.plan.set_scale(s, scale, 0.0)
        except NotARoot:
            assert cfg.root() is not cfg  # PPQ: PermissionError, the config is not its own root
            return
        assert cfg.root() is cfg
        # PPQ would also refuse a root in a non-revisable state; fusekit sets it (documented)
        cfg.scale, cfg.offset = np.float32(scale), np.float32(0.0)
        self._set(new)

    @precondition(_has_slots)
    @rule(i=st.integers(0, 10_000))
    def unlink(self, i: int) -> None:
        assert self.plan is not None
        s = self._pick(i)
        cfg = self._cfg(s)
        cfg.dominator = cfg
        self._set(self.plan.unlink(s))

    # -- passes ----------------------------------------------------------------------------------

    @precondition(lambda self: self.plan is not None)
    @rule(kind=st.sampled_from(("fusion", "simplify", "calibrate", "alignment", "parameters")))
    def run_pass(self, kind: str) -> None:
        g, plan, model, p = self.graph, self.plan, self.model, self.platform
        assert g is not None and plan is not None and model is not None and p is not None
        rp = reference_platform(p)
        if kind == "fusion":
            model.fusion(rp)
            new = fuse(g, plan, p).plan
        elif kind == "simplify":
            model.simplify()
            new = Simplify(p).run(g, plan).plan
        elif kind == "calibrate":
            model.fake_calibration()
            new = fake_calibration(plan)
        elif kind == "alignment":
            model.alignment(rp)
            new = Alignment(p).run(g, plan).plan
        else:
            model.passive_parameters(rp)
            new = PassiveParameters(p).run(g, plan).plan
        self._set(new)

    # -- graph edits -------------------------------------------------------------------------------

    @precondition(lambda self: self.graph is not None)
    @rule(op_type=st.sampled_from(("Relu", "Identity", "Sigmoid")), data=st.data())
    def append_op(self, op_type: str, data: st.DataObject) -> None:
        """A graph edit: a new op reading an existing tensor; the plan starts afresh."""
        g = self.graph
        assert g is not None and self.platform is not None
        reads = data.draw(st.sampled_from(sorted(g.value_types)))
        name = f"edit{len(self.graphs)}"
        g2 = g.add_op(Op(name, op_type, (reads,), (f"{name}_out",)))
        g2 = g2.with_outputs((*g.outputs, f"{name}_out"))
        fusekit.check_invariants(g2)
        assert name not in g.ops and name in g2.ops
        self._reset(g2, fusekit.init_plan(g2, self.platform))

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def agrees_with_the_reference(self) -> None:
        if self.plan is None or self.model is None:
            return
        ours = ft.states_and_roots(self.plan)
        theirs = self.model.states_and_roots()
        diff = {k: (ours.get(k), v) for k, v in theirs.items() if ours.get(k) != v}
        assert diff == {}

    @invariant()
    def earlier_versions_are_unchanged(self) -> None:
        for plan, snap in self.history:
            assert ft.plan_snapshot(plan) == snap
        for g, snap in self.graphs:
            assert ft.graph_snapshot(g) == snap


PlanMachine.TestCase.settings = settings(
    max_examples=examples(0.25), stateful_step_count=25, deadline=None
)
test_law12_stateful = PlanMachine.TestCase
