"""What every pass shares: the decision log, results, replay and ``explain``.

A pass never edits its inputs. It opens a :class:`Recorder` over the input plan, and every
change goes through it: the recorder applies the change to a plan transient *and* appends a
compact raw record (action, rule, ops, slot ids, reason template). The public
:class:`Decision` objects, with each changed slot's state and root before and after, are built
from those records only when someone reads ``result.decisions``: a 100k-op pass makes tens of
thousands of decisions and most callers never look at them.

Because the log holds exactly the operations that produced the plan, :func:`replay` of
``result.decisions`` onto the input plan reproduces ``result.plan`` (a property test checks it).

Every fusekit pass derives from :class:`FusionPass` (the model is onnx-ir's pass
infrastructure): its ``run`` does the prologue once (resolve the platform, check the plan
belongs to the graph, open the :class:`PassContext`, pause the garbage collector) and calls the
pass's ``apply(ctx)``. ``ensures`` names the laws of :mod:`fusekit.laws` the pass keeps;
:func:`fusekit.testing.check_pass` checks them, and so does every run when the environment
variable ``FUSEKIT_CHECK_ENSURES`` is set to ``1`` (debug mode: a broken law raises
:class:`~fusekit.errors.PostconditionError`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import attrs

from .._util import gc_paused
from ..errors import InvalidPlan, PostconditionError, SharingCycle, UnknownLaw, UnknownSlot
from ..graph import Graph, GraphArrays, Slot
from ..laws import LAWS, Violation
from ..laws import check as check_laws
from ..platforms import Platform, get_platform
from ..quant import (
    LinkKind,
    PlanEvolver,
    QuantPlan,
    QuantState,
    TensorQuantConfig,
    check_plan_graph,
)

__all__ = [
    "DEBUG_ENV",
    "Decision",
    "Explanation",
    "FusionPass",
    "FusionResult",
    "PassContext",
    "PipelineResult",
    "Recorder",
    "SlotChange",
    "broken_postconditions",
    "explain",
    "replay",
]

#: Set this environment variable to ``1`` to check every pass's ``ensures`` after each run.
DEBUG_ENV = "FUSEKIT_CHECK_ENSURES"

OVERLAP, FOLLOW, CONFIG, UNLINK, REFUSE = "overlap", "follow", "config", "unlink", "refuse"


@attrs.frozen
class SlotChange:
    """One slot changed by a decision: its state and root before and after."""

    slot: Slot
    state_before: QuantState
    state_after: QuantState
    root_before: Slot
    root_after: Slot


@attrs.frozen
class Decision:
    """One thing a pass did, or refused to do, and why.

    ``action`` is ``"overlap"`` (``slot`` switched off, shares ``target``'s scale), ``"follow"``
    (``slot`` quantizes with ``target``'s scale), ``"config"`` (``slot`` got ``config``),
    ``"unlink"`` (``slot`` became its own root) or ``"refuse"`` (a match the rule did not apply;
    ``reason`` says why). ``changes`` lists every slot whose state or link the action changed.
    """

    pass_name: str
    rule: str
    ops: tuple[str, ...]
    action: str
    reason: str
    slot: Slot | None = None
    target: Slot | None = None
    config: TensorQuantConfig | None = attrs.field(default=None, repr=False)
    changes: tuple[SlotChange, ...] = ()

    @property
    def is_refusal(self) -> bool:
        """True for a refused match."""
        return self.action == REFUSE

    def __str__(self) -> str:
        ops = ", ".join(self.ops)
        if self.action == REFUSE:
            return f"[{self.rule}] refused ({ops}): {self.reason}"
        tgt = f" by {self.target}" if self.target is not None else ""
        return f"[{self.rule}] {self.action} {self.slot}{tgt} ({ops}): {self.reason}"


class Recorder:
    """Applies a pass's changes to a plan transient and logs them compactly.

    Reasons are stored as a format string plus arguments and formatted only when decisions are
    materialized, so logging costs a tuple per decision in the hot loop.
    """

    __slots__ = ("ev", "graph", "idx", "names", "pass_name", "raw")

    def __init__(self, graph: Graph, plan: QuantPlan, pass_name: str):
        check_plan_graph(plan, graph, pass_name)
        self.graph = graph
        self.ev: PlanEvolver = plan.evolver()
        self.idx = graph.index
        self.names = self.idx.op_names
        self.pass_name = pass_name
        self.raw: list[tuple[Any, ...]] = []

    def overlap(
        self, rule: str, ops: tuple[int, ...], a: int, b: int, why: str, *args: Any
    ) -> bool:
        """Overlap slot id ``a`` by ``b`` (PPQ ``dominated_by``) and log it if anything changed."""
        if self.ev.overlap_sid(a, b):
            self.raw.append((OVERLAP, rule, ops, a, b, why, args, None))
            return True
        return False

    def follow(self, rule: str, ops: tuple[int, ...], a: int, m: int, why: str, *args: Any) -> bool:
        """Make slot id ``a`` follow ``m`` (PPQ ``master_by``) and log it if anything changed.

        A link that would close a sharing cycle (possible on a plan a user edited, where ``m``
        already depends on ``a``) is refused and logged, never raised: a pass does not crash on
        a plan the API allows.
        """
        try:
            changed = self.ev.follow_sid(a, m)
        except SharingCycle:
            key = self.idx.slot_key
            cycle = "{} cannot follow {}: {} already depends on it (a sharing cycle)"
            self.raw.append((REFUSE, rule, ops, -1, -1, cycle, (key(a), key(m), key(m)), None))
            return False
        if changed:
            self.raw.append((FOLLOW, rule, ops, a, m, why, args, None))
            return True
        return False

    def config(
        self,
        rule: str,
        ops: tuple[int, ...],
        sid: int,
        cfg: TensorQuantConfig,
        why: str,
        *args: Any,
    ) -> bool:
        """Give slot id ``sid`` a new config and log it if it differs."""
        old = self.ev.cfg(sid)
        # configs of different states differ: skip the field-by-field (and array) comparison
        if old is cfg or (old is not None and old.state == cfg.state and old == cfg):
            return False
        self.ev.set_cfg(sid, cfg)
        self.raw.append((CONFIG, rule, ops, sid, -1, why, args, cfg))
        return True

    def unlink(self, rule: str, ops: tuple[int, ...], sid: int, why: str, *args: Any) -> bool:
        """Make slot id ``sid`` its own root and log it if it was linked."""
        if self.ev.parent(sid) < 0:
            return False
        self.ev.unlink_sid(sid)
        self.raw.append((UNLINK, rule, ops, sid, -1, why, args, None))
        return True

    def refuse(self, rule: str, ops: tuple[int, ...], why: str, *args: Any) -> None:
        """Log a match the rule did not apply."""
        self.raw.append((REFUSE, rule, ops, -1, -1, why, args, None))

    def result(self, plan: QuantPlan) -> FusionResult:
        """The pass result: the new plan (``plan`` itself if unchanged) and the log."""
        new = self.ev.persistent()
        return FusionResult(new, plan, self.pass_name, tuple(self.raw))


def _fmt(why: str, args: tuple[Any, ...]) -> str:
    return why.format(*args) if args else why


_R = TypeVar("_R", bound="FusionResult")


class FusionResult:
    """What one pass produced: ``plan`` (the input object when nothing changed) and its log.

    ``decisions`` lists changes and refusals in the order they were made; ``changes`` and
    ``refusals`` split them. ``changed`` is ``plan is not input_plan``. Results of passes run
    one after the other combine with :meth:`concat` (a new result named for the whole) or
    :meth:`then` (this result, extended).
    """

    __slots__ = ("_decisions", "_raw", "input_plan", "pass_name", "plan")

    def __init__(
        self, plan: QuantPlan, input_plan: QuantPlan, pass_name: str, raw: tuple[Any, ...]
    ):
        self.plan = plan
        self.input_plan = input_plan
        self.pass_name = pass_name
        self._raw = raw
        self._decisions: tuple[Decision, ...] | None = None

    @classmethod
    def concat(
        cls, pass_name: str, input_plan: QuantPlan, results: Sequence[FusionResult]
    ) -> FusionResult:
        """One result for passes run in sequence from ``input_plan`` (each on the previous
        one's plan), named ``pass_name``: its plan is the last one, its log every pass's log in
        order. With no results, the plan is ``input_plan`` itself (unchanged)."""
        plan = input_plan
        raw: list[Any] = []
        for r in results:
            if r.input_plan is not plan:
                raise InvalidPlan(f"{pass_name}: {r.pass_name} did not run on the plan before it")
            raw.extend(r._raw)
            plan = r.plan
        return FusionResult(plan, input_plan, pass_name, tuple(raw))

    def then(self: _R, *later: FusionResult) -> _R:
        """This result extended by results of passes run after it (each on the previous
        plan): same type and name (a :class:`~fusekit.calibrate.CalibrationResult` keeps its
        ranges), the last plan, both logs."""
        if not later:
            return self
        raw = list(self._raw)
        plan = self.plan
        for r in later:
            if r.input_plan is not plan:
                raise InvalidPlan(f"{self.pass_name}: {r.pass_name} did not run on its plan")
            raw.extend(r._raw)
            plan = r.plan
        out = copy.copy(self)
        out.plan = plan
        out._raw = tuple(raw)
        out._decisions = None
        return out

    @property
    def changed(self) -> bool:
        """True if the pass changed the plan."""
        return self.plan is not self.input_plan

    @property
    def n_changes(self) -> int:
        """Number of changes (cheap: does not build Decision objects)."""
        return sum(1 for r in self._raw if r[0] != REFUSE)

    @property
    def n_refusals(self) -> int:
        """Number of refused matches (cheap)."""
        return sum(1 for r in self._raw if r[0] == REFUSE)

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """Every change and refusal, with slot-level before/after (built on first access)."""
        if self._decisions is None:
            self._decisions = _materialize(self.input_plan, self.pass_name, self._raw)
        return self._decisions

    @property
    def changes(self) -> tuple[Decision, ...]:
        """The decisions that changed the plan."""
        return tuple(d for d in self.decisions if not d.is_refusal)

    @property
    def refusals(self) -> tuple[Decision, ...]:
        """The matches a rule refused, with reasons."""
        return tuple(d for d in self.decisions if d.is_refusal)

    def __repr__(self) -> str:
        return (
            f"FusionResult(pass={self.pass_name!r}, changed={self.changed}, "
            f"changes={self.n_changes}, refusals={self.n_refusals})"
        )


#: One changed slot of a replayed record, as ids: slot, state and root before, state and root
#: after.
_Touched = tuple[int, QuantState, int, QuantState, int]


def _replay(
    plan: QuantPlan, raw: tuple[Any, ...]
) -> Iterator[tuple[tuple[Any, ...], tuple[_Touched, ...]]]:
    """Replay raw records on ``plan``: each record with the slots it changed, as ids.

    A change touches its slot and, for an overlap, the slot's old root (switched off with it).
    """
    ev = plan.evolver()
    for record in raw:
        action, a, b, cfg = record[0], record[3], record[4], record[7]
        if action == REFUSE:
            yield record, ()
            continue
        touched = [a]
        if action == OVERLAP:
            ra = ev.root(a)
            if ra != a:
                touched.append(ra)
        before = [(s, ev.cfg(s).state, ev.root(s)) for s in touched]
        if action == OVERLAP:
            ev.overlap_sid(a, b)
        elif action == FOLLOW:
            ev.follow_sid(a, b)
        elif action == CONFIG:
            ev.set_cfg(a, cfg)
        elif action == UNLINK:
            ev.unlink_sid(a)
        yield record, tuple((s, st, r, ev.cfg(s).state, ev.root(s)) for s, st, r in before)


class _Namer:
    """Slot keys and op names of one graph's ids, each slot's key built once (a record names
    its slots four or five times)."""

    __slots__ = ("keys", "names", "slot_key")

    def __init__(self, graph: Graph):
        idx = graph.index
        self.slot_key = idx.slot_key
        self.names = idx.op_names
        self.keys: dict[int, Slot] = {}

    def key(self, sid: int) -> Slot:
        k = self.keys.get(sid)
        if k is None:
            k = self.keys[sid] = self.slot_key(sid)
        return k

    def decision(
        self, pass_name: str, record: tuple[Any, ...], touched: tuple[_Touched, ...]
    ) -> Decision:
        """The :class:`Decision` of one replayed record."""
        action, rule, ops, a, b, why, args, cfg = record
        names = self.names
        op_names = tuple(names[o] for o in ops)
        reason = _fmt(why, args)
        if action == REFUSE:
            return Decision(pass_name, rule, op_names, REFUSE, reason)
        key = self.key
        changes = tuple(
            SlotChange(key(s), st, st_after, key(r), key(r_after))
            for s, st, r, st_after, r_after in touched
        )
        return Decision(
            pass_name,
            rule,
            op_names,
            action,
            reason,
            key(a),
            key(b) if b >= 0 else None,
            cfg,
            changes,
        )


def _materialize(plan: QuantPlan, pass_name: str, raw: tuple[Any, ...]) -> tuple[Decision, ...]:
    """Turn raw records into Decisions by replaying them on ``plan``."""
    namer = _Namer(plan.graph)
    return tuple(namer.decision(pass_name, rec, t) for rec, t in _replay(plan, raw))


def _first_changes(result: FusionResult) -> Callable[[Slot], Decision | None]:
    """The first decision of ``result`` (a pass's or a pipeline's) that changed a slot.

    Equal to scanning ``result.changes`` for the first decision listing the slot among its
    ``changes``, without building every :class:`Decision`: the records are replayed as ids
    and a decision is built when asked for (the audit names the decision of a few slots among
    hundreds of thousands). Slots the result never changed, or not in its graph, give None.
    """
    parts = result.results if isinstance(result, PipelineResult) else (result,)
    first: dict[int, tuple[str, tuple[Any, ...], tuple[_Touched, ...]]] = {}
    for r in parts:
        for rec, touched in _replay(r.input_plan, r._raw):
            for t in touched:
                if t[0] not in first:
                    first[t[0]] = (r.pass_name, rec, touched)
    idx = result.plan.graph.index
    namer = _Namer(result.plan.graph)
    built: dict[int, Decision] = {}  # one object per record, as ``decisions`` gives

    def get(slot: Slot) -> Decision | None:
        try:
            sid = idx.slot_id(slot)
        except UnknownSlot:
            return None
        entry = first.get(sid)
        if entry is None:
            return None
        d = built.get(id(entry[1]))
        if d is None:
            d = built[id(entry[1])] = namer.decision(*entry)
        return d

    return get


def replay(plan: QuantPlan, decisions: Iterable[Decision]) -> QuantPlan:
    """Apply logged decisions to ``plan`` (refusals are skipped); the inverse of the log."""
    ev = plan.evolver()
    for d in decisions:
        if d.action == REFUSE:
            continue
        assert d.slot is not None
        if d.action == OVERLAP:
            assert d.target is not None
            ev.overlap(d.slot, d.target)
        elif d.action == FOLLOW:
            assert d.target is not None
            ev.follow(d.slot, d.target)
        elif d.action == CONFIG:
            assert d.config is not None
            ev.set_config(d.slot, d.config)
        elif d.action == UNLINK:
            ev.unlink(d.slot)
        else:
            raise InvalidPlan(f"unknown decision action {d.action!r}")
    return ev.persistent()


class PipelineResult(FusionResult):
    """What a pipeline produced: the final plan and each pass's :class:`FusionResult`.

    A :class:`FusionResult` itself (so a pipeline is a pass), whose decisions keep the name of
    the pass that made each one.
    """

    __slots__ = ("results",)

    def __init__(
        self, input_plan: QuantPlan, results: Sequence[FusionResult], pass_name: str = "pipeline"
    ):
        self.results = tuple(results)
        plan = self.results[-1].plan if self.results else input_plan
        raw = tuple(rec for r in self.results for rec in r._raw)
        super().__init__(plan, input_plan, pass_name, raw)

    def then(self: _R, *later: FusionResult) -> _R:
        """This pipeline's result with the results of later passes appended."""
        if not later:
            return self
        assert isinstance(self, PipelineResult)
        return PipelineResult(self.input_plan, [*self.results, *later], self.pass_name)  # type: ignore[return-value]

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """Every decision of every pass, in order."""
        return tuple(d for r in self.results for d in r.decisions)

    @property
    def changes(self) -> tuple[Decision, ...]:
        """Every change of every pass, in order."""
        return tuple(d for r in self.results for d in r.changes)

    @property
    def refusals(self) -> tuple[Decision, ...]:
        """Every refusal of every pass, in order."""
        return tuple(d for r in self.results for d in r.refusals)

    def __iter__(self) -> Iterator[FusionResult]:
        return iter(self.results)

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.pass_name}:{r.n_changes}" for r in self.results)
        return f"PipelineResult({parts})"


@attrs.frozen
class Explanation:
    """Why a slot is (not) quantized and whose scale it uses, link by link."""

    slot: Slot
    state: QuantState
    root: Slot
    steps: tuple[str, ...]

    def __str__(self) -> str:
        return "\n".join(self.steps)


def explain(source: QuantPlan | FusionResult | PipelineResult, slot: Slot) -> Explanation:
    """Answer "why is this slot not quantized / why does it share this scale".

    With a result (of a pass or pipeline) each link of the slot's chain is attributed to the
    decision and rule that made it; with a bare plan the chain is described without rules.
    """
    decisions: tuple[Decision, ...] = ()
    if isinstance(source, QuantPlan):
        plan = source
    else:
        plan, decisions = source.plan, tuple(source.decisions)
    slot = Slot(*slot)
    cfg = plan[slot]
    made_by: dict[Slot, Decision] = {}
    for d in decisions:
        if d.is_refusal:
            continue
        for ch in d.changes:
            made_by[ch.slot] = d
    refused: dict[str, list[Decision]] = {}
    for d in decisions:
        if d.is_refusal:
            for op in d.ops:
                refused.setdefault(op, []).append(d)
    steps: list[str] = []
    chain = plan.chain(slot)
    tensor = plan.graph.tensor_of(slot)
    steps.append(f"{slot} (tensor {tensor!r}) is {cfg.state.name}.")
    for s, kind in chain:
        if kind is None:
            c = plan[s]
            if s == slot:
                steps.append(f"{s} is its own root: it {_root_words(c.state)}.")
            else:
                steps.append(f"{s} is the root: it {_root_words(c.state)}.")
            break
        parent = plan.parent(s)
        assert parent is not None
        what = "is overlapped by" if kind == LinkKind.OVERLAP else "follows"
        maker = made_by.get(s)
        why = (
            f" [{maker.pass_name}/{maker.rule} on {', '.join(maker.ops)}: {maker.reason}]"
            if maker
            else ""
        )
        steps.append(f"{s} {what} {parent[0]}{why}.")
    for d in refused.get(slot.op, ())[:3]:
        steps.append(f"note: {d.pass_name}/{d.rule} refused ({', '.join(d.ops)}): {d.reason}.")
    return Explanation(slot, cfg.state, plan.root(slot), tuple(steps))


def _root_words(state: QuantState) -> str:
    return {
        QuantState.INITIAL: "will be calibrated and quantizes this tensor",
        QuantState.ACTIVATED: "quantizes this tensor with its own scale",
        QuantState.PASSIVE: "quantizes with a scale derived from others",
        QuantState.PASSIVE_INIT: "will quantize with a scale derived from others",
        QuantState.FP32: "is never quantized (FP32)",
        QuantState.OVERLAPPED: "is switched off",
        QuantState.BAKED: "holds an already quantized value",
        QuantState.PASSIVE_BAKED: "holds an already quantized value",
    }[state]


class PassContext:
    """Read access a pass needs, over integer ids: quantized?, platform, slots, tensors.

    Opening one is the pass prologue: the platform resolved, the plan checked against the
    graph (:func:`~fusekit.quant.check_plan_graph`), a :class:`Recorder` over the plan.
    """

    __slots__ = ("ar", "ev", "graph", "idx", "plan", "platform", "rec")

    def __init__(self, graph: Graph, plan: QuantPlan, platform: Platform | str, pass_name: str):
        self.graph = graph
        self.plan = plan  #: the input plan (``rec.result(plan)`` ends a pass)
        self.platform = get_platform(platform)
        self.rec = Recorder(graph, plan, pass_name)
        self.ev = self.rec.ev
        self.idx = graph.index
        #: the graph's index as plain lists, what the passes' inner loops read
        self.ar: GraphArrays = graph.arrays()
        if self.platform.has_quirk("shared_empty_name"):
            from .._ppq066 import shared_empty_arrays  # PPQ's parser: all '' are one tensor

            self.ar = shared_empty_arrays(graph)

    def quantized(self, oid: int) -> bool:
        """Is op id ``oid`` quantized?"""
        return self.ev.platform(oid) is not None

    def name(self, oid: int) -> str:
        """Op name of ``oid``."""
        return self.ar.op_names[oid]  # type: ignore[no-any-return]

    def state(self, sid: int) -> QuantState:
        """State of slot id ``sid`` (the op must be quantized)."""
        return self.ev.cfg(sid).state

    def in_sid(self, oid: int, k: int) -> int:
        """Slot id of input ``k`` of ``oid``."""
        return self.ar.slot_base[oid] + k

    def out_sid(self, oid: int, k: int) -> int:
        """Slot id of output ``k`` of ``oid``."""
        ar = self.ar
        return ar.slot_base[oid] + ar.n_in[oid] + k


class FusionPass:
    """The base of fusekit's passes: one ``run`` with the prologue, the pass's ``apply(ctx)``.

    A pass is a frozen attrs class deriving from this one, whose fields are its options (the
    first is ``platform``, a name or a :class:`~fusekit.Platform`); it sets ``name`` and
    ``ensures`` as class attributes and implements :meth:`apply`. :meth:`run` resolves the
    platform, refuses a plan of another graph, opens the :class:`PassContext` (recorder, plan
    transient, graph arrays) with the garbage collector paused, and returns ``apply``'s
    result; in debug mode (``FUSEKIT_CHECK_ENSURES=1``) it then checks ``ensures``.

    ``ensures`` names laws of :data:`fusekit.laws.LAWS` the pass keeps: a law that held on the
    input plan holds on the output (checked on corrected rule sets; a PPQ-compatible rule set,
    one with quirks, breaks laws on purpose and is checked for ``acyclic-sharing`` only). An
    unknown name raises :class:`~fusekit.errors.UnknownLaw` when the class is defined.

    The shipped passes ensure ``acyclic-sharing`` only. ``no-dead-quantization`` and
    ``activation`` hold after every prefix of the default pipeline from
    :func:`~fusekit.init_plan` (property tests), but the debug mode found single passes
    breaking them on plans a user edited (a producer before a passive op left FP32, random
    links and states), so no pass claims them.
    """

    __slots__ = ()

    platform: Platform | str
    name: ClassVar[str] = "pass"
    ensures: ClassVar[tuple[str, ...]] = ("acyclic-sharing",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for law in cls.ensures:
            if law not in LAWS:
                raise UnknownLaw(law, tuple(LAWS))

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        """Apply the pass to ``plan``; returns the new plan and the decision log."""
        with gc_paused(promote=True):
            ctx = PassContext(graph, plan, self.platform, self.name)
            result = self.apply(ctx)
        if os.environ.get(DEBUG_ENV) == "1":
            broken = broken_postconditions(self, graph, result, ctx.platform)
            if broken:
                raise PostconditionError(self.name, broken)
        return result

    def apply(self, ctx: PassContext) -> FusionResult:
        """The pass's rules over ``ctx``; ends with ``ctx.rec.result(ctx.rec.ev.plan)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply(ctx)")


def broken_postconditions(
    step: Any, graph: Graph, result: FusionResult, platform: Platform | str | None = None
) -> tuple[Violation, ...]:
    """The violations of the laws ``step.ensures`` names, on ``result`` (see
    :class:`FusionPass`): laws that held on ``result.input_plan`` and fail on ``result.plan``.
    Empty for a step without ``ensures``. ``platform`` defaults to ``step.platform``."""
    ensures: tuple[str, ...] = tuple(getattr(step, "ensures", ()))
    for law in ensures:
        if law not in LAWS:
            raise UnknownLaw(law, tuple(LAWS))
    if not ensures or result.plan is result.input_plan:
        return ()
    p = get_platform(platform if platform is not None else step.platform)
    if p.quirks:
        ensures = tuple(law for law in ensures if law == "acyclic-sharing")
    after = check_laws(graph, result.plan, p, ensures)
    if not after:
        return ()
    broken_before = {v.law for v in check_laws(graph, result.input_plan, p, ensures)}
    return tuple(v for v in after if v.law not in broken_before)
