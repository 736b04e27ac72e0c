"""Sensitivity: which sharing group costs the accuracy, and leaving the worst ones float.

:func:`sensitivity` takes a calibrated plan and, for every sharing group that quantizes an
activation, exports the plan with *only that group* left float (all its slots FP32) and
measures the lowest output SQNR against the float model. A group's ``gain_db`` is the SQNR
recovered by leaving it float; ``pairs`` the activation Q/DQ pairs that costs (the int8
coverage given up). The float model's outputs are computed once; each variant gets one
onnxruntime session. Each group is explained by the rules that made it (from the pipeline's
decision log): which fusion or alignment tied its members to one scale.

:func:`leave_float` is the edit itself and :func:`greedy_fallback` applies it to the ``n``
most harmful groups (ranked once, by their single-group gain); :func:`fallback_to_target`
leaves groups float in ranking order, measuring the whole plan after each, until a target
SQNR is reached (``fuse --target-sqnr``). :func:`choose_observer` (``fuse --observer auto``)
runs the pipeline once per candidate observer and keeps the one whose export scores best on
the calibration data.

A scan of a large model is thousands of short onnxruntime runs: it screens every group on a
few samples and scores only the best again on all of them, runs one intra-op thread per
session, and counts its runs so tests can bound the work without timing it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from .errors import InvalidData
from .graph import Graph, Slot
from .quant import QuantPlan, QuantState, Visibility, check_plan_graph

__all__ = [
    "AUTO_OBSERVERS",
    "Fallback",
    "FallbackStep",
    "GroupSensitivity",
    "ObserverChoice",
    "Sensitivity",
    "activation_groups",
    "choose_observer",
    "fallback_to_target",
    "greedy_fallback",
    "leave_float",
    "sensitivity",
]

_LIVE = (QuantState.ACTIVATED, QuantState.PASSIVE, QuantState.OVERLAPPED)


@attrs.frozen
class GroupSensitivity:
    """One sharing group's cost: the SQNR with only it left float, and what made the group."""

    root: Slot
    tensors: tuple[str, ...]
    slots: int
    rules: tuple[str, ...]
    sqnr_db: float
    gain_db: float
    pairs: int
    #: evaluation samples behind ``sqnr_db``/``gain_db`` (fewer for a group only screened)
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "root": str(self.root),
            "tensors": list(self.tensors),
            "slots": self.slots,
            "rules": list(self.rules),
            "sqnr_db": _json(self.sqnr_db),
            "gain_db": _json(self.gain_db),
            "pairs": self.pairs,
            "samples": self.samples,
        }


@attrs.frozen
class Sensitivity:
    """The ranking: groups by SQNR recovered when left float, largest first.

    Groups scored on every sample (the refined ones) come first, the groups only screened after
    them, each part by gain.
    """

    base_sqnr_db: float
    base_pairs: int
    groups: tuple[GroupSensitivity, ...]
    samples: int
    sessions: int
    #: samples of the first stage (every group), equal to ``samples`` without screening
    screen_samples: int = 0
    #: groups whose export equals the plan's own (gain exactly 0, not run)
    skipped: int = 0
    #: quantized-model runs in all (one per session and sample scored)
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "base_sqnr_db": _json(self.base_sqnr_db),
            "base_activation_pairs": self.base_pairs,
            "samples": self.samples,
            "sessions": self.sessions,
            "screen_samples": self.screen_samples,
            "skipped": self.skipped,
            "runs": self.runs,
            "groups": [g.to_dict() for g in self.groups],
        }


def _json(x: float) -> float | str:
    return round(x, 4) if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def activation_groups(plan: QuantPlan) -> list[tuple[Slot, frozenset[Slot], tuple[str, ...]]]:
    """``(root, slots, activation tensors)`` of every group that quantizes a computed tensor."""
    graph = plan.graph
    out = []
    for group in plan.groups(min_size=1):
        tensors: list[str] = []
        for s in sorted(group):
            cfg = plan[s]
            if cfg.state not in _LIVE or cfg.visibility == Visibility.INTERNAL:
                continue
            t = graph.tensor_of(s)
            if t and not graph.is_constant(t) and t not in tensors:
                tensors.append(t)
        if tensors:
            out.append((plan.root(next(iter(group))), group, tuple(tensors)))
    return out


def leave_float(plan: QuantPlan, roots: Iterable[Slot]) -> QuantPlan:
    """``plan`` with every slot of the groups rooted at ``roots`` in state FP32."""
    wanted = {plan.root(r) for r in roots}
    if not wanted:
        return plan
    e = plan.evolver()
    for group in plan.groups(min_size=1):
        root = plan.root(next(iter(group)))
        if root not in wanted:
            continue
        for s in group:
            e.set_config(s, plan[s].with_state(QuantState.FP32))
    return e.persistent()


def _rules(decisions: Sequence[Any], group: frozenset[Slot]) -> tuple[str, ...]:
    rules: list[str] = []
    for d in decisions:
        if d.action not in ("overlap", "follow"):
            continue
        if (d.slot in group or d.target in group) and d.rule not in rules:
            rules.append(d.rule)
    return tuple(rules)


class _Meter:
    """Exports a plan, runs it in one onnxruntime session and scores it against the float model.

    The float outputs are computed once; ``runs`` counts every quantized-model run (the work a
    scan does, which the tests count instead of timing it). ``base`` is the serialized export
    of the plan the scan starts from: a variant that serializes to the same bytes scores the
    same, so it is never run.
    """

    def __init__(
        self,
        graph: Graph,
        ref_graph: Graph,
        data: Any,
        kernels: str,
        threads: int,
    ) -> None:
        from .onnx_io import ModelExtras, to_model
        from .runtime import as_dataset, model_bytes, model_label, run, session

        if kernels not in ("reference", "int8"):
            raise InvalidData(f"unknown kernels {kernels!r}; choose reference or int8")
        self.graph, self.threads = graph, threads
        self.level = "none" if kernels == "reference" else "all"
        base_dir = ref_graph.extras.base_dir if isinstance(ref_graph.extras, ModelExtras) else None
        ds = as_dataset(data, ref_graph, split="eval")
        self.feeds = list(ds)
        if not self.feeds:
            raise InvalidData(f"{ds.label}: no evaluation samples")
        self.outputs = list(ref_graph.outputs)
        what = f"float model {model_label(ref_graph)}"
        ref = session(
            model_bytes(to_model(ref_graph), base_dir), what, optimize=self.level, threads=threads
        )
        self.refs = [run(ref, self.outputs, f, what, k) for k, f in enumerate(self.feeds)]
        self.runs = 0
        self.sessions = 0
        self.checked = True

    def export(self, p: QuantPlan) -> tuple[bytes, int]:
        """The serialized QDQ model of ``p`` and its activation Q/DQ pairs."""
        from .export import build_qdq

        # onnx.checker once, on the plan's own export: a variant only drops Q/DQ pairs
        qdq = build_qdq(self.graph, p, check=self.checked)
        self.checked = False
        return qdq.model.SerializeToString(), qdq.activation_pairs

    def score(self, model: bytes, label: str, n: int | None = None) -> float:
        """The lowest output SQNR of ``model`` over the first ``n`` samples (None: all)."""
        return self.scores(model, label, n)[0]

    def scores(self, model: bytes, label: str, n: int | None, prefix: int = 0) -> list[float]:
        """:meth:`score` over the first ``n`` samples, then over the first ``prefix`` too
        (the same runs: one session scores a plan on the screening and the full set)."""
        from .evaluate import _Acc
        from .runtime import run, session

        sess = session(model, label, optimize=self.level, threads=self.threads)
        self.sessions += 1
        accs = [_Acc() for _ in self.outputs]
        feeds = self.feeds if n is None else self.feeds[:n]
        got: list[float] = []
        for k, f in enumerate(feeds):
            self.runs += 1
            for acc, r, q in zip(accs, self.refs[k], run(sess, self.outputs, f, label, k)):
                acc.add(r, q)
            if k + 1 == prefix:
                got.append(self._worst(accs))
        return [self._worst(accs), *got]

    def _worst(self, accs: list[Any]) -> float:
        return float(min(a.metrics(o).sqnr_db for a, o in zip(accs, self.outputs)))


def _gain(sqnr: float, base: float) -> float:
    return sqnr - base if math.isfinite(sqnr) and math.isfinite(base) else math.inf


def sensitivity(
    graph: Graph,
    plan: QuantPlan,
    data: Any,
    *,
    decisions: Sequence[Any] = (),
    float_graph: Graph | None = None,
    max_groups: int | None = None,
    kernels: str = "reference",
    progress: bool | None = None,
    screen_samples: int | None = 2,
    refine: int = 8,
    threads: int = 1,
) -> Sensitivity:
    """Rank the activation groups of calibrated ``plan`` by the SQNR recovered left float.

    ``data`` is the evaluation data (read once, kept in memory); ``decisions`` the pipeline's
    decision log (for each group's rules); ``float_graph`` the reference (default ``graph``;
    pass the original model when ``graph`` was equalized). ``max_groups`` evaluates only the
    groups with the most quantized tensors (None: all). ``kernels`` as in
    :func:`fusekit.evaluate.evaluate`.

    Two stages keep a large model's scan short: every group is first scored on the first
    ``screen_samples`` samples, then the ``refine`` groups that gained most there (and gained
    at all) are scored again on every sample. A group whose export is byte-identical to the
    plan's own (its Q/DQ pairs are written for another group too) is not run: its gain is
    exactly 0. ``screen_samples=None`` (or at least the sample count) scores every group on
    every sample. ``threads`` is onnxruntime's intra-op thread count per session (1: many
    short runs spend half their CPU spinning idle threads otherwise).
    """
    check_plan_graph(plan, graph, "sensitivity")
    from .runtime import progress_bar

    ref_graph = float_graph if float_graph is not None else graph
    meter = _Meter(graph, ref_graph, data, kernels, threads)
    n_all = len(meter.feeds)
    screen = None if screen_samples is None or screen_samples >= n_all else max(1, screen_samples)
    base_bytes, base_pairs = meter.export(plan)
    base, *first = meter.scores(base_bytes, "quantized model", None, screen or 0)
    base_screen = first[0] if first else base
    groups = activation_groups(plan)
    if max_groups is not None:
        groups = sorted(groups, key=lambda g: (-len(g[2]), str(g[0])))[:max_groups]
    rules = {root: _rules(decisions, group) for root, group, _ in groups}
    bar = progress_bar(progress, "sensitivity", len(groups))
    screened: list[GroupSensitivity] = []
    skipped = 0
    try:
        for root, group, tensors in groups:
            model, pairs = meter.export(leave_float(plan, [root]))
            if model == base_bytes:
                skipped += 1
                sqnr = base_screen
            else:
                sqnr = meter.score(model, f"{root} left float", screen)
            screened.append(
                GroupSensitivity(
                    root,
                    tensors,
                    len(group),
                    rules[root],
                    sqnr,
                    _gain(sqnr, base_screen),
                    base_pairs - pairs,
                    screen or n_all,
                )
            )
            bar.step()
    finally:
        bar.close()
    screened.sort(key=lambda g: (-g.gain_db, str(g.root)))
    if screen is None:
        out = screened
    else:
        top = [g for g in screened[:refine] if g.gain_db > 0]
        refined = []
        for g in top:
            model, _ = meter.export(leave_float(plan, [g.root]))
            sqnr = meter.score(model, f"{g.root} left float")
            refined.append(attrs.evolve(g, sqnr_db=sqnr, gain_db=_gain(sqnr, base), samples=n_all))
        refined.sort(key=lambda g: (-g.gain_db, str(g.root)))
        out = refined + screened[len(top) :]
    return Sensitivity(
        base, base_pairs, tuple(out), n_all, meter.sessions, screen or n_all, skipped, meter.runs
    )


def greedy_fallback(
    plan: QuantPlan, ranking: Sensitivity, n: int, *, min_gain_db: float = 0.0
) -> tuple[QuantPlan, tuple[GroupSensitivity, ...]]:
    """Leave the ``n`` groups with the largest single-group gain (above ``min_gain_db``) float.

    Returns the new plan and the groups chosen. The ranking is measured once, one group at a
    time; gains of several groups need not add up (measure the result).
    """
    if n < 0:
        raise InvalidData(f"the number of float groups must be 0 or more, got {n}")
    chosen = tuple(g for g in ranking.groups if g.gain_db > min_gain_db)[:n]
    return leave_float(plan, [g.root for g in chosen]), chosen


@attrs.frozen
class FallbackStep:
    """One group tried by :func:`fallback_to_target`, with the plan's SQNR after trying it.

    ``kept`` is False when leaving the group float, on top of the groups kept before it, did
    not raise the lowest SQNR (gains measured one group at a time need not add up); the group
    then stays quantized. ``pairs`` is the activation Q/DQ pairs given up by every kept group
    so far: the int8 coverage the fallback costs.
    """

    group: GroupSensitivity
    sqnr_db: float
    kept: bool
    pairs: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "root": str(self.group.root),
            "tensors": list(self.group.tensors),
            "rules": list(self.group.rules),
            "sqnr_db": _json(self.sqnr_db),
            "kept": self.kept,
            "pairs_given_up": self.pairs,
        }


@attrs.frozen
class Fallback:
    """What :func:`fallback_to_target` did: the plan, each step, and whether it got there."""

    plan: QuantPlan
    target_db: float
    base_sqnr_db: float
    sqnr_db: float
    reached: bool
    steps: tuple[FallbackStep, ...]
    base_pairs: int
    samples: int

    @property
    def chosen(self) -> tuple[GroupSensitivity, ...]:
        """The groups left float, in the order they were chosen."""
        return tuple(s.group for s in self.steps if s.kept)

    @property
    def pairs(self) -> int:
        """Activation Q/DQ pairs given up in all."""
        kept = [s.pairs for s in self.steps if s.kept]
        return kept[-1] if kept else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "target_db": self.target_db,
            "reached": self.reached,
            "base_sqnr_db": _json(self.base_sqnr_db),
            "sqnr_db": _json(self.sqnr_db),
            "base_activation_pairs": self.base_pairs,
            "pairs_given_up": self.pairs,
            "samples": self.samples,
            "steps": [s.to_dict() for s in self.steps],
        }


def fallback_to_target(
    graph: Graph,
    plan: QuantPlan,
    data: Any,
    target_db: float,
    ranking: Sensitivity,
    *,
    float_graph: Graph | None = None,
    kernels: str = "reference",
    threads: int = 1,
    progress: bool | None = None,
) -> Fallback:
    """Leave the most harmful groups float, greedily, until the lowest SQNR reaches ``target_db``.

    The candidates are ``ranking``'s groups with a positive gain, in its order. Each is left
    float on top of the groups kept so far and the plan is measured on every sample of
    ``data`` (one session per step); a group that does not raise the SQNR is put back. It
    stops at the first plan at or above the target, or when the candidates run out
    (``reached`` False: the plan then holds every group that helped). A plan already at the
    target is returned as is (the very same object), with no step.
    """
    check_plan_graph(plan, graph, "fallback")
    if not math.isfinite(target_db):
        raise InvalidData(f"the target SQNR must be a finite number of dB, got {target_db}")
    from .runtime import progress_bar

    meter = _Meter(graph, float_graph if float_graph is not None else graph, data, kernels, threads)
    base_bytes, base_pairs = meter.export(plan)
    base = meter.score(base_bytes, "quantized model")
    current, sqnr = plan, base
    steps: list[FallbackStep] = []
    given_up = 0
    candidates = [g for g in ranking.groups if g.gain_db > 0]
    bar = progress_bar(progress, "fallback", len(candidates))
    try:
        for g in candidates:
            if sqnr >= target_db:
                break
            trial = leave_float(current, [g.root])
            model, pairs = meter.export(trial)
            got = meter.score(model, f"{g.root} left float")
            kept = got > sqnr
            if kept:
                current, sqnr, given_up = trial, got, base_pairs - pairs
            steps.append(FallbackStep(g, got, kept, given_up))
            bar.step()
    finally:
        bar.close()
    return Fallback(
        current,
        target_db,
        base,
        sqnr,
        sqnr >= target_db,
        tuple(steps),
        base_pairs,
        len(meter.feeds),
    )


#: The candidates of ``--observer auto``: min-max keeps every value the data shows (right
#: where the rare extreme is the signal: a classifier's logits, a sigmoid's output);
#: mean_minmax (NNCF's default) keeps a typical sample's range (right where one outlier sample
#: would cost every other sample its resolution). Measured on the shared accuracy data, neither
#: wins everywhere (docs/accuracy.md).
AUTO_OBSERVERS = ("minmax", "mean_minmax")


@attrs.frozen
class ObserverChoice:
    """What :func:`choose_observer` measured: the observer kept, every candidate's score
    (lowest output SQNR in dB on the scoring data) and the kept candidate's pipeline result."""

    observer: str
    scores: tuple[tuple[str, float], ...]
    result: Any = attrs.field(eq=False, repr=False)
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "observer": self.observer,
            "scores_db": {name: _json(v) for name, v in self.scores},
            "samples": self.samples,
        }


def choose_observer(
    graph: Graph,
    plan: QuantPlan,
    platform: Any,
    data: Any,
    *,
    candidates: Sequence[str] = AUTO_OBSERVERS,
    score_data: Any = None,
    float_graph: Graph | None = None,
    kernels: str = "reference",
    progress: bool | None = None,
    allow_nonfinite: bool = False,
    threads: int = 1,
) -> ObserverChoice:
    """Run ``platform``'s default pipeline once per observer in ``candidates`` (calibrating on
    ``data``) and keep the one whose export has the highest lowest-output SQNR against the
    float model on ``score_data`` (default: ``data`` itself: no evaluation data is spent on
    the choice). Ties keep the earlier candidate.

    Why end to end: the per-tensor optimum (the ``mse`` observer) is not the network's. Which
    range serves a model depends on where its extremes carry signal, and only the outputs
    show that. Costs one pipeline run, one export and one pass over the scoring data per
    candidate; the float outputs are computed once.
    """
    from .calibrate import Calibration
    from .passes import default_pipeline

    if not candidates:
        raise InvalidData("choose_observer needs at least one candidate observer")
    check_plan_graph(plan, graph, "choose_observer")
    ref_graph = float_graph if float_graph is not None else graph
    meter = _Meter(
        graph, ref_graph, score_data if score_data is not None else data, kernels, threads
    )
    best: tuple[float, str, Any] | None = None
    scores: list[tuple[str, float]] = []
    for name in candidates:
        cal = Calibration(data, observer=name, progress=progress, allow_nonfinite=allow_nonfinite)
        res = default_pipeline(platform, calibration=cal).run(graph, plan)
        model, _ = meter.export(res.plan)
        sqnr = meter.score(model, f"observer {name}")
        scores.append((name, sqnr))
        if best is None or (math.isfinite(sqnr) and not sqnr <= best[0]):
            best = (sqnr, name, res)
    assert best is not None
    return ObserverChoice(best[1], tuple(scores), best[2], len(meter.feeds))
