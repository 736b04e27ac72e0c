"""Sensitivity: which sharing group costs the accuracy, and leaving the worst ones float.

:func:`sensitivity` takes a calibrated plan and, for every sharing group that quantizes an
activation, exports the plan with *only that group* left float (all its slots FP32) and
measures the lowest output SQNR against the float model. A group's ``gain_db`` is the SQNR
recovered by leaving it float; ``pairs`` the activation Q/DQ pairs that costs (the int8
coverage given up). The float model's outputs are computed once; each variant gets one
onnxruntime session. Each group is explained by the rules that made it (from the pipeline's
decision log): which fusion or alignment tied its members to one scale.

:func:`leave_float` is the edit itself and :func:`greedy_fallback` applies it to the ``n``
most harmful groups (ranked once, by their single-group gain).
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
    "GroupSensitivity",
    "Sensitivity",
    "activation_groups",
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
        }


@attrs.frozen
class Sensitivity:
    """The ranking: groups by SQNR recovered when left float, largest first."""

    base_sqnr_db: float
    base_pairs: int
    groups: tuple[GroupSensitivity, ...]
    samples: int
    sessions: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "base_sqnr_db": _json(self.base_sqnr_db),
            "base_activation_pairs": self.base_pairs,
            "samples": self.samples,
            "sessions": self.sessions,
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
) -> Sensitivity:
    """Rank the activation groups of calibrated ``plan`` by the SQNR recovered left float.

    ``data`` is the evaluation data (read once, kept in memory); ``decisions`` the pipeline's
    decision log (for each group's rules); ``float_graph`` the reference (default ``graph``;
    pass the original model when ``graph`` was equalized). ``max_groups`` evaluates only the
    groups with the most quantized tensors (None: all). ``kernels`` as in
    :func:`fusekit.evaluate.evaluate`.
    """
    from .evaluate import _Acc
    from .export import build_qdq
    from .onnx_io import ModelExtras, to_model
    from .runtime import as_dataset, model_bytes, progress_bar, run, session

    check_plan_graph(plan, graph, "sensitivity")
    if kernels not in ("reference", "int8"):
        raise InvalidData(f"unknown kernels {kernels!r}; choose reference or int8")
    ref_graph = float_graph if float_graph is not None else graph
    level = "none" if kernels == "reference" else "all"
    base_dir = ref_graph.extras.base_dir if isinstance(ref_graph.extras, ModelExtras) else None
    ds = as_dataset(data, ref_graph, split="eval")
    feeds = list(ds)
    if not feeds:
        raise InvalidData(f"{ds.label}: no evaluation samples")
    outputs = list(ref_graph.outputs)
    ref_sess = session(model_bytes(to_model(ref_graph), base_dir), "float model", optimize=level)
    refs = [run(ref_sess, outputs, f, "float model", k) for k, f in enumerate(feeds)]
    del ref_sess

    def measure(p: QuantPlan, label: str) -> tuple[float, int]:
        qdq = build_qdq(graph, p)
        sess = session(qdq.model.SerializeToString(), label, optimize=level)
        accs = [_Acc() for _ in outputs]
        for k, f in enumerate(feeds):
            for acc, r, q in zip(accs, refs[k], run(sess, outputs, f, label, k)):
                acc.add(r, q)
        worst = min(a.metrics(o).sqnr_db for a, o in zip(accs, outputs))
        return worst, qdq.activation_pairs

    base, base_pairs = measure(plan, "quantized model")
    groups = activation_groups(plan)
    if max_groups is not None:
        groups = sorted(groups, key=lambda g: (-len(g[2]), str(g[0])))[:max_groups]
    bar = progress_bar(progress, "sensitivity", len(groups))
    out: list[GroupSensitivity] = []
    try:
        for root, group, tensors in groups:
            sqnr, pairs = measure(leave_float(plan, [root]), f"{root} left float")
            gain = sqnr - base if math.isfinite(sqnr) and math.isfinite(base) else math.inf
            out.append(
                GroupSensitivity(
                    root,
                    tensors,
                    len(group),
                    _rules(decisions, group),
                    sqnr,
                    gain,
                    base_pairs - pairs,
                )
            )
            bar.step()
    finally:
        bar.close()
    out.sort(key=lambda g: (-g.gain_db, str(g.root)))
    return Sensitivity(base, base_pairs, tuple(out), len(feeds), len(groups) + 1)


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
