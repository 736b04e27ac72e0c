"""The package imports and loads its bundled example."""

from __future__ import annotations

import fusekit
from fusekit.examples import example_model_path


def test_bundled_example_loads() -> None:
    g = fusekit.load(example_model_path())
    assert len(g) == 566
    fusekit.check_invariants(g)
