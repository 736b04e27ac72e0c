"""Strategies of the property suite.

The graph, rule-set, plan and scale strategies are fusekit's public ones
(:mod:`fusekit.testing`), so users test their rule sets with exactly what fusekit is tested
with; this module adds what only the suite needs: platform choices, a graph-plus-plan bundle,
and mutated JSON documents for the loader fuzzing.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

import fusekit
from fusekit import Graph, Platform, QuantPlan
from fusekit.testing import (
    ACTIVATION_TYPES,
    COMPUTING_TYPES,
    FOREIGN_TYPES,
    PASSIVE_TYPES,
    STEP_KINDS,
    StandInCalibration,
    calibrated_plans,
    dispatches,
    edited_plans,
    graphs,
    initial_plans,
    permuted,
    rule_sets,
)

__all__ = [
    "ACTIVATION_TYPES",
    "COMPAT",
    "COMPUTING_TYPES",
    "CORRECTED",
    "FOREIGN_TYPES",
    "PASSIVE_TYPES",
    "STEP_KINDS",
    "StandInCalibration",
    "any_platforms",
    "calibrated_plans",
    "cases",
    "compat_platforms",
    "corrected_platforms",
    "dispatches",
    "edited_plans",
    "graphs",
    "initial_plans",
    "mutated_json",
    "permuted",
    "rule_sets",
]

CORRECTED = ("trt_int8", "ort_int8", "ppl_cuda_int8")
_FIRST_COMPAT = (
    "ppq066_trt_int8",
    "ppq066_ort_int8",
    "ppq066_ppl_cuda_int8",
    "ppq066_ort_int8_softplus_tanh",
)
#: every PPQ 0.6.6 reproduction fusekit ships (the four first, then all of fusekit._ppq066)
COMPAT = tuple(
    sorted(
        (n for n in fusekit.platforms() if n.startswith("ppq066_")),
        key=lambda n: (n not in _FIRST_COMPAT, n),
    )
)


def corrected_platforms() -> st.SearchStrategy[Platform]:
    """fusekit's own rule sets, and random rule sets derived from them without PPQ quirks."""
    return st.one_of(st.sampled_from(CORRECTED).map(fusekit.get_platform), rule_sets())


def compat_platforms() -> st.SearchStrategy[Platform]:
    """PPQ 0.6.6's rule sets, reproduced exactly."""
    return st.sampled_from(COMPAT).map(fusekit.get_platform)


def any_platforms() -> st.SearchStrategy[Platform]:
    """Every kind: corrected, PPQ's, and derived rule sets with random PPQ quirks switched on."""
    return st.one_of(corrected_platforms(), compat_platforms(), rule_sets(quirks=True))


@st.composite
def cases(
    draw: st.DrawFn,
    platforms: st.SearchStrategy[Platform] | None = None,
    *,
    edited: bool = False,
    calibrated: bool | None = None,
    edit_links: bool = True,
) -> tuple[Graph, Platform, QuantPlan]:
    """A graph, a platform and a plan for it (``init_plan`` with a random dispatch; optionally
    calibrated; with ``edited``, also random edits through the plan API, of states only unless
    ``edit_links``)."""
    g = draw(graphs())
    p = draw(platforms if platforms is not None else corrected_platforms())
    plan = draw(initial_plans(g, p))
    if calibrated is None:
        calibrated = draw(st.booleans())
    if calibrated:
        plan = draw(calibrated_plans(plan))
    if edited:
        plan = draw(edited_plans(plan, links=edit_links))
    return g, p, plan


# --------------------------------------------------------------------------------------------
# mutated JSON (loader fuzzing)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        new = dict(doc)
        new[head] = _replace(doc[head], rest, value)
        return new
    new_list = list(doc)
    new_list[head] = _replace(doc[head], rest, value)
    return new_list


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict):
        return _replace(doc, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})
    return _replace(doc, path[:-1], [v for i, v in enumerate(parent) if i != path[-1]])


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any, max_mutations: int = 3) -> str:
    """``doc`` (plain JSON data) with random values replaced, keys deleted or added, then
    serialized; sometimes the text itself is truncated or has a byte changed."""
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(("replace", "delete", "add")))
        if kind == "replace":
            doc = _replace(doc, path, draw(_json_values))
        elif kind == "delete" and path:
            doc = _delete(doc, path)
        else:
            target: Any = doc
            for k in path:
                target = target[k]
            if isinstance(target, dict):
                doc = _replace(doc, path, {**target, draw(st.text(max_size=8)): draw(_json_values)})
            elif isinstance(target, list):
                doc = _replace(doc, path, [*target, draw(_json_values)])
    text = json.dumps(doc, allow_nan=True)
    damage = draw(st.sampled_from(("none", "none", "truncate", "byte")))
    if damage == "truncate" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif damage == "byte" and text:
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.characters()) + text[i + 1 :]
    return text
