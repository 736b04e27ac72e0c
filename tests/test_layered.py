"""LayeredMap behaves exactly like a dict, and every version stays as it was."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusekit._layered import LayeredMap

KEYS = st.integers(0, 120)  # a small key space, so sets overwrite and removes hit
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers()),
        st.tuples(st.just("remove"), KEYS, st.none()),
    ),
    max_size=150,
)


def same_as_dict(m: LayeredMap[int, Any], d: dict[int, Any]) -> None:
    """Every read of ``m`` answers as ``d`` does."""
    assert len(m) == len(d)
    assert dict(m.items()) == d
    assert sorted(m) == sorted(d)
    assert len(list(m)) == len(d)  # iteration yields each key once
    for k in range(-1, 122):
        assert (k in m) == (k in d)
        assert m.get(k) == d.get(k)
        assert m.get(k, "absent") == d.get(k, "absent")
        if k in d:
            assert m[k] == d[k]
        else:
            with pytest.raises(KeyError):
                m[k]


@given(base=st.dictionaries(KEYS, st.integers(), max_size=100), ops=OPS)
def test_agrees_with_dict_and_keeps_every_version(base: dict[int, int], ops: list[Any]) -> None:
    """Random set/remove sequences: each version reads like the dict it models, forever."""
    m: LayeredMap[int, int] = LayeredMap(dict(base))
    model = dict(base)
    versions = [(m, dict(model))]
    for op, k, v in ops:
        if op == "set":
            m = m.set(k, v)
            model[k] = v
        elif k in model:
            m = m.remove(k)
            del model[k]
        else:
            with pytest.raises(KeyError):
                m.remove(k)
        versions.append((m, dict(model)))
    same_as_dict(m, model)
    for old, snapshot in versions:  # no later update changed an earlier version
        assert dict(old.items()) == snapshot
        assert len(old) == len(snapshot)


def test_base_dict_is_never_mutated() -> None:
    """The dict a map is built from is owned by it and stays untouched by updates."""
    base = {i: i for i in range(10)}
    m = LayeredMap(base)
    for i in range(200):  # enough updates to fold the overlay into a new base several times
        m = m.set(i, -i).remove(i) if i % 2 else m.set(i, -i)
    assert base == {i: i for i in range(10)}


def test_overlay_is_folded_into_a_new_base() -> None:
    """Past the threshold the overlay is folded: reads stay two probes at most."""
    m = LayeredMap({i: i for i in range(1000)})
    for i in range(300):  # threshold: max(64, 1000 // 4) = 250 overlay entries
        m = m.set(i, -i)
    assert len(m._over) < 250
    assert all(m[i] == -i for i in range(300))
    assert m[999] == 999


def test_remove_then_set_again() -> None:
    """A key deleted from the base can come back with a new value."""
    m = LayeredMap({"a": 1, "b": 2})
    gone = m.remove("a")
    back = gone.set("a", 3)
    assert "a" not in gone and len(gone) == 1
    assert back["a"] == 3 and len(back) == 2
    assert m["a"] == 1 and len(m) == 2
    assert list(back) == ["b", "a"]


def test_none_values_and_defaults() -> None:
    """A stored None is a value, not an absence."""
    m: LayeredMap[str, Any] = LayeredMap().set("k", None)
    assert "k" in m
    assert m.get("k", "default") is None
    assert m["k"] is None


def test_remove_missing_key_raises() -> None:
    """Removing an absent key is a KeyError, like ``del d[k]``."""
    with pytest.raises(KeyError):
        LayeredMap({"a": 1}).remove("b")
    with pytest.raises(KeyError):
        LayeredMap({"a": 1}).remove("a").remove("a")


def test_equality_and_repr() -> None:
    """Equal to any mapping with the same items; repr shows the items."""
    m = LayeredMap({"a": 1}).set("b", 2)
    assert m == {"a": 1, "b": 2}
    assert m != {"a": 1}
    assert repr(m) == "LayeredMap({'a': 1, 'b': 2})"
