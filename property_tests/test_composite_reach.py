"""Every shipped composite rule both fuses and is refused over the generated graphs.

The strategies write each composite activation as itself or as a near miss (a wrong constant,
an operand in the wrong place, an extra reader of an inner tensor: ``NEAR_MISSES``). Over a
fixed derandomized sample, the composite pass of a rule set that enables every rule must fuse
each rule at least once and refuse it at least once, and for HardSwish and GELU the refusals
must include the rule's own check (a constant, an operand order), not only exclusivity: a
check that never fires, or a generator that never reaches it, fails here.
"""

from __future__ import annotations

from collections import Counter

import fusekit
from fusekit.composites import COMPOSITES
from fusekit.passes import CompositeActivationFusion
from fusekit.platforms import get_platform, platforms

from .strategies import graphs
from .test_strategies import _sample

SAMPLE = 400
KINDS = ("swish", "mish", "hardswish", "gelu")


def _outcomes(platform: str) -> Counter[tuple[str, str]]:
    """(rule, outcome) counts over the sample: outcome is fused, checked (refused by the
    rule's check) or refused (any other reason: not exclusive, FP32, another platform)."""
    counts: Counter[tuple[str, str]] = Counter()
    p = get_platform(platform)
    for g in _sample(graphs(min_steps=2, max_steps=6, kinds=KINDS), SAMPLE):
        assert isinstance(g, fusekit.Graph)
        r = CompositeActivationFusion(p).run(g, fusekit.init_plan(g, p))
        for rule, _ops in {(d.rule, d.ops) for d in r.changes}:
            counts[(rule, "fused")] += 1
        for d in r.refusals:
            kind = "checked" if d.reason.startswith(f"not a {d.rule} (") else "refused"
            counts[(d.rule, kind)] += 1
            if kind == "checked":
                operand = " divides by " in d.reason or " multiplies " in d.reason
                counts[(d.rule, "operand" if operand else "constant")] += 1
    return counts


def test_each_shipped_rule_fuses_and_is_refused() -> None:
    shipped = {n for name in platforms() for n in get_platform(name).activation_patterns}
    assert shipped == set(COMPOSITES)  # every registered rule is used by some rule set
    got = _outcomes("trt_int8")  # enables all four
    for rule in sorted(shipped):
        assert got[(rule, "fused")] >= 1, (rule, got)
        assert got[(rule, "checked")] + got[(rule, "refused")] >= 1, (rule, got)
    for rule in ("hardswish", "gelu"):
        assert got[(rule, "constant")] >= 1, (rule, got)  # a wrong constant is caught
        assert got[(rule, "operand")] >= 1, (rule, got)  # Div(6, c), Div(sqrt2, x)


def test_ppq_rule_sets_never_check() -> None:
    """The composite_unchecked quirk: the same near misses fuse or are refused structurally,
    never by a check (PPQ 0.6.6 matches op types and edges only)."""
    unchecked = get_platform("trt_int8").evolve(name="unchecked", quirks={"composite_unchecked"})
    counts: Counter[str] = Counter()
    for g in _sample(graphs(min_steps=2, max_steps=6, kinds=KINDS), 60):
        assert isinstance(g, fusekit.Graph)
        r = CompositeActivationFusion(unchecked).run(g, fusekit.init_plan(g, unchecked))
        for d in r.refusals:
            counts["checked" if d.reason.startswith(f"not a {d.rule} (") else "other"] += 1
        counts["fused"] += len(r.changes)
    assert counts["checked"] == 0 and counts["fused"] > 0
