"""The audit places Q/DQ where the exporter does, for every plan.

``audit`` decides the placement of a plan per config object over numpy arrays
(``audit._placement_ids``) instead of building the exporter's ``_Placement``; for random
graphs, platforms (PPQ's quirks included), dispatches and plans (uncalibrated, calibrated, run
through the pipeline, edited: states, links, scales and visibility), with scales required or
not, it gives the exporter's roots, pairs after producers and reads, or (on a plan the
exporter refuses, and only then or on an odd plan) hands the plan to the exporter.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit
from fusekit import QuantState, Visibility
from fusekit.audit import _exporter_placement, _placement_ids
from fusekit.passes import default_pipeline

from .conftest import examples
from .strategies import StandInCalibration, any_platforms, cases


def _visibility_edits(data: st.DataObject, plan: fusekit.QuantPlan) -> fusekit.QuantPlan:
    """Some slots made INTERNAL or FORCE_EXPORT (the plan API's edits leave visibility)."""
    slots = list(plan.slots())
    for _ in range(data.draw(st.integers(0, 3)) if slots else 0):
        s = data.draw(st.sampled_from(slots))
        vis = data.draw(st.sampled_from([Visibility.INTERNAL, Visibility.FORCE_EXPORT]))
        plan = plan.with_config(s, attrs.evolve(plan[s], visibility=vis))
    return plan


@settings(max_examples=examples(1.0))
@given(cases(any_platforms(), edited=True), st.booleans(), st.data())
def test_audit_placement_is_the_exporters(
    case: tuple[fusekit.Graph, fusekit.Platform, fusekit.QuantPlan],
    run_pipeline: bool,
    data: st.DataObject,
) -> None:
    g, p, plan = case
    if run_pipeline:
        plan = default_pipeline(p, calibration=StandInCalibration()).run(g, plan).plan
    plan = _visibility_edits(data, plan)
    configs = plan.configs.tolist()
    for require in (False, True):
        fast = _placement_ids(plan, require)
        try:
            ref: Any = _exporter_placement(plan, require)
        except fusekit.FusekitError:
            assert fast is None, "the exporter refuses this plan; the audit must not place it"
            continue
        if fast is None:
            # handed over only when scales are required and a slot waits for one (pending,
            # or an exported state whose root has none)
            assert require and any(
                c is not None
                and (
                    c.state in QuantState.PENDING
                    or (c.state in QuantState.EXPORTED and configs[plan.root_id(s)].scale is None)
                )
                for s, c in enumerate(configs)
            )
            continue
        roots, after, reads, read_roots = fast
        assert reads == {s: r for s, r in enumerate(read_roots.tolist()) if r >= 0}
        assert after == ref[1]
        assert reads == ref[2]
        assert all(roots[s] == ref[0][s] for s, c in enumerate(configs) if c is not None)
