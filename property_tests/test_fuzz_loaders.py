"""Fuzzing the boundaries: mutated plan and platform JSON only ever raise FusekitError.

A valid document (a generated plan, a registered rule set) is mutated (values replaced by
random JSON of any type, keys deleted or added, the text truncated or a character changed)
and fed to the loaders. Each either loads a value that is usable (a plan whose every chain ends;
a platform that builds a plan) or raises a :class:`~fusekit.errors.FusekitError` subclass:
never a ``KeyError``/``TypeError``/``RecursionError`` from deep inside.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit
from fusekit import FusekitError, Graph, laws
from fusekit.plan_io import load_plan, plan_from_json, plan_to_dict
from fusekit.rulefile import load_platform, platform_from_dict, platform_to_dict

from .conftest import examples
from .strategies import COMPAT, CORRECTED, cases, mutated_json


def _fusekit_error_or_value(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except FusekitError as e:
        assert str(e), "an error must say what is wrong"
        return None


@settings(max_examples=examples(1.0))
@given(st.data())
def test_mutated_plan_json_raises_only_fusekit_errors(data: st.DataObject) -> None:
    g, _, plan = data.draw(cases(edited=True))
    text = data.draw(mutated_json(plan_to_dict(plan)))
    back = _fusekit_error_or_value(lambda: plan_from_json(g, text))
    if back is not None:
        assert isinstance(back, fusekit.QuantPlan)
        assert laws.acyclic_sharing(back) == ()
        for s in back.slots():
            back.root(s)


@given(st.data())
def test_mutated_plan_file_raises_only_fusekit_errors(data: st.DataObject) -> None:
    g, _, plan = data.draw(cases())
    text = data.draw(mutated_json(plan_to_dict(plan), max_mutations=1))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "plan.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _fusekit_error_or_value(lambda: load_plan(g, path))


def _platform_docs() -> st.SearchStrategy[dict[str, object]]:
    return st.sampled_from(CORRECTED + COMPAT).map(
        lambda n: platform_to_dict(fusekit.get_platform(n))
    )


def _usable(p: fusekit.Platform, g: Graph) -> None:
    plan = fusekit.init_plan(g, p)
    fusekit.default_pipeline(p).run(g, plan)


@settings(max_examples=examples(1.0))
@given(_platform_docs(), st.data())
def test_mutated_platform_json_raises_only_fusekit_errors(
    doc: dict[str, object], data: st.DataObject
) -> None:
    text = data.draw(mutated_json(doc))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rules.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        p = _fusekit_error_or_value(lambda: load_platform(path))
    if p is not None:
        assert isinstance(p, fusekit.Platform)
        g, _, _ = data.draw(cases())
        _fusekit_error_or_value(lambda: _usable(p, g))


@given(_platform_docs(), st.data())
def test_mutated_platform_dict_raises_only_fusekit_errors(
    doc: dict[str, object], data: st.DataObject
) -> None:
    try:
        mutated = json.loads(data.draw(mutated_json(doc)))
    except ValueError:
        return  # not JSON any more: that is load_platform's job (above)
    _fusekit_error_or_value(lambda: platform_from_dict(mutated))
