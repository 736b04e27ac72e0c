"""Slot keys round-trip through their text form."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fusekit import Slot

names = st.text(min_size=1, max_size=12)


@given(names, st.sampled_from(["in", "out"]), st.integers(0, 50))
def test_slot_text_round_trip(op: str, side: str, index: int) -> None:
    s = Slot(op, side, index)
    assert Slot.parse(str(s)) == s
