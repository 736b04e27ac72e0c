"""Scaling smoke test: every stage must do linear work (issues 6 and 10).

Counts the work each stage does on 2k- and 20k-op generated graphs (``bench/generate.py``) and
asserts it grows by less than 20x for 10x the ops: a linear stage grows ~10x, a quadratic one
~100x (PPQ's matcher grows ~25x from 10k to 50k ops).

Work is counted, not timed: every Python line executed and every Python or C function called
while the stage runs (``sys.settrace`` + ``sys.setprofile``). The count is the same on an idle and
a busy machine, so this test cannot fail by chance; an earlier version compared CPU times and
failed a fresh-clone ``make test`` on a loaded machine (``index`` grew 20.1x, bound 20). Wall-clock
scaling lives in ``make bench`` (``bench/run.py``). What the count cannot see is a quadratic loop
hidden inside one C call (``x in some_list``); fusekit's hot loops are Python, so the count does.

Measured with CPython 3.11 (work ratio for 10x the ops): load 9.8, index 9.9, init_plan 9.8,
passes 8.9-11.6 except composite activation fusion 13.8 (the generator's 20k graph has
relatively more SiLU blocks), hub graph 10.0. The bound 20 leaves room for the mix and for other
Python versions, and is far below a quadratic stage's ~100.

A hub graph (one tensor read by thousands of ops) checks that high fan-out stays linear too.
It also checks the benchmark's floor (``bench/floor.py``, the plain mutable implementation the
suite compares against) still makes fusekit's decisions, and that re-running the pipeline on
its own result returns every input plan object unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest

import fusekit
from fusekit.graph import Graph, Initializer, Op
from fusekit.passes import default_pipeline

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import floor  # noqa: E402  (bench/ is not a package)
import generate  # noqa: E402

PLATFORM = "trt_int8"
SMALL, BIG = 2_000, 20_000
BOUND = 20.0  # for 10x the ops: 2x linear, 5x below quadratic


def work(fn: Callable[[], Any]) -> int:
    """Lines executed plus functions called (Python and C) while ``fn()`` runs."""
    n = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal n
        n += 1
        return trace

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal n
        if event == "c_call":
            n += 1

    old_trace, old_profile = sys.gettrace(), sys.getprofile()
    sys.setprofile(profile)
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(old_trace)
        sys.setprofile(old_profile)
    return n


def _stage_work(n: int) -> dict[str, int]:
    """Work per stage on a fresh generated graph of ``n`` ops (lazy caches built once, inside
    the stage that builds them, as in a real run)."""
    data = generate.make_model(n, seed=1).SerializeToString()
    counts = {"load": work(lambda: fusekit.load(data))}
    g = fusekit.load(data)
    counts["index"] = work(lambda: (g.index, g.arrays()))
    counts["init_plan"] = work(lambda: fusekit.init_plan(g, PLATFORM))
    plan = fusekit.init_plan(g, PLATFORM)
    for p in default_pipeline(PLATFORM).passes:
        out: list[Any] = []
        counts[p.name] = work(lambda p=p, plan=plan, out=out: out.append(p.run(g, plan)))
        assert out[0].plan is not None
        plan = out[0].plan
    return counts


@pytest.fixture(scope="module")
def stage_work() -> tuple[dict[str, int], dict[str, int]]:
    return _stage_work(SMALL), _stage_work(BIG)


def test_every_stage_does_linear_work(stage_work: tuple[dict[str, int], dict[str, int]]) -> None:
    small, big = stage_work
    assert small.keys() == big.keys()
    ratios = {k: round(big[k] / max(small[k], 1), 2) for k in big}
    slow = {k: r for k, r in ratios.items() if r >= BOUND}
    assert not slow, f"work({BIG})/work({SMALL}) over {BOUND} (super-linear): {slow}; all: {ratios}"
    # every stage did real work, more of it on the bigger graph (guards against counting nothing)
    assert all(big[k] > small[k] > 0 for k in big), (small, big)


def test_the_work_count_sees_a_quadratic_loop() -> None:
    """The counter itself: a quadratic loop over 10x the items does ~100x the work."""

    def quadratic(k: int) -> None:
        items = list(range(k))
        for a in items:
            for b in items:
                if a == b:
                    pass

    ratio = work(lambda: quadratic(200)) / work(lambda: quadratic(20))
    assert ratio > 4 * BOUND, ratio  # measured 92.7


def _hub(k: int) -> Graph:
    """One Conv output read by ``k`` Sigmoid -> Mul(x, sigmoid(x)) pairs (2k + 1 ops)."""
    ops = [Op("conv", "Conv", ("x", "W"), ("c",))]
    for i in range(k):
        ops.append(Op(f"s{i}", "Sigmoid", ("c",), (f"g{i}",)))
        ops.append(Op(f"m{i}", "Mul", ("c", f"g{i}"), (f"y{i}",)))
    w = Initializer.from_array("W", np.ones((4, 4, 1, 1), np.float32))
    return Graph.build(ops, ["x"], [f"y{i}" for i in range(k)], [w])


def test_a_tensor_with_many_readers_scales_linearly() -> None:
    """Matching walks every reader of a tensor per candidate; with one tensor read by
    thousands of ops that is quadratic unless the matcher indexes the readers."""
    counts = []
    for k in (SMALL // 2, BIG // 2):
        g = _hub(k)
        g.index, g.arrays()
        pipe = default_pipeline(PLATFORM)
        counts.append(work(lambda g=g, pipe=pipe: pipe.run(g, fusekit.init_plan(g, PLATFORM))))
    assert counts[1] / max(counts[0], 1) < BOUND, counts


def test_floor_makes_fusekits_decisions() -> None:
    model = generate.make_model(SMALL, seed=1)
    fg = floor.FloorGraph(model)
    fplan = floor.pipeline(fg, floor.Rules(fusekit.get_platform(PLATFORM)))
    g = fusekit.load(model)
    res = default_pipeline(PLATFORM).run(g, fusekit.init_plan(g, PLATFORM))
    assert res.changed
    assert floor.compare(fg, fplan, res.plan) == []


def test_a_pass_that_changes_nothing_returns_its_input() -> None:
    g = fusekit.load(generate.make_model(SMALL, seed=1))
    pipe = default_pipeline(PLATFORM)
    first = pipe.run(g, fusekit.init_plan(g, PLATFORM))
    again = pipe.run(g, first.plan)
    assert first.changed
    assert all(r.plan is r.input_plan for r in again.results)
    assert again.plan is first.plan
