"""Smoke benchmark: every stage must scale linearly (issue 6).

Times 2k- and 20k-op generated graphs (``bench/generate.py``) in this process and asserts that
the whole pipeline's CPU time (and load's, and the index's) grows by less than 20x for 10x the
ops: a linear stage grows ~10x, a quadratic one ~100x (PPQ's matcher grows ~25x from 10k to
50k ops). Each pass on its own must stay under 40x: on the 2k graph a pass takes about a
millisecond with all its data in the CPU caches, and on the 20k graph it does not, which alone
moves single-pass ratios between 8x and 25x from run to run; a quadratic pass still lands near
100x. The generator's block mix is not the same at every size (the 20k graph has relatively
more SiLU blocks), so a pass whose work, its number of decisions, grows by more than 10x gets
a proportionally larger bound. Ratios only, never absolute seconds, so a slow or busy machine
does not fail it; each time is the fastest of several runs, which keeps a scheduling hiccup
from looking like super-linear work.

A hub graph (one tensor read by thousands of ops) checks that high fan-out stays linear too.
It also checks the benchmark's floor (``bench/floor.py``, the plain mutable implementation the
suite compares against) still makes fusekit's decisions, and that re-running the pipeline on
its own result returns every input plan object unchanged. Runs in about 6 seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
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
BOUND = 20.0  # for 10x the ops: 2x linear (whole pipeline, load, index, init_plan)
PASS_BOUND = 40.0  # one pass: 4x linear, still well under a quadratic pass's ~100x
RUNS = {SMALL: 9, BIG: 3}


def _fastest(fn: Callable[[], Any], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _stage_times(n: int) -> tuple[dict[str, float], dict[str, int]]:
    """Fastest CPU seconds per stage on a generated graph of ``n`` ops, and each pass's work
    (its changes plus refusals)."""
    runs = RUNS[n]
    model = generate.make_model(n, seed=1)
    data = model.SerializeToString()
    times = {"load": _fastest(lambda: fusekit.load(data), runs)}
    graphs = [fusekit.load(data) for _ in range(runs)]
    times["index"] = min(_fastest(lambda g=g: (g.index, g.arrays()), 1) for g in graphs)
    g = graphs[0]
    times["init_plan"] = _fastest(lambda: fusekit.init_plan(g, PLATFORM), runs)
    plan = fusekit.init_plan(g, PLATFORM)
    work: dict[str, int] = {}
    for p in default_pipeline(PLATFORM).passes:
        times[p.name] = _fastest(lambda p=p, plan=plan: p.run(g, plan), runs)
        res = p.run(g, plan)
        work[p.name] = res.n_changes + res.n_refusals
        plan = res.plan
    pipe = default_pipeline(PLATFORM)
    times["pipeline"] = _fastest(lambda: pipe.run(g, fusekit.init_plan(g, PLATFORM)), runs)
    return times, work


Timings = tuple[tuple[dict[str, float], dict[str, int]], tuple[dict[str, float], dict[str, int]]]


@pytest.fixture(scope="module")
def timings() -> Timings:
    return _stage_times(SMALL), _stage_times(BIG)


def test_every_stage_scales_linearly(timings: Timings) -> None:
    (small, work_small), (big, work_big) = timings
    assert small.keys() == big.keys()
    ratios = {k: big[k] / max(small[k], 1e-4) for k in big}
    bounds = {
        k: PASS_BOUND * max(1.0, work_big[k] / max(work_small[k], 1) / (BIG / SMALL))
        if k in work_big
        else BOUND
        for k in big
    }
    slow = {k: (round(r, 1), round(bounds[k], 1)) for k, r in ratios.items() if r >= bounds[k]}
    if slow:  # one more round before failing: a busy machine can stall one measurement
        (small2, _), (big2, _) = _stage_times(SMALL), _stage_times(BIG)
        ratios = {k: min(r, big2[k] / max(small2[k], 1e-4)) for k, r in ratios.items()}
        slow = {k: (round(r, 1), round(bounds[k], 1)) for k, r in ratios.items() if r >= bounds[k]}
    assert not slow, f"t({BIG})/t({SMALL}) over its bound (super-linear): {slow}; all: {ratios}"
    # the whole pipeline did real work at both sizes (guards against timing nothing)
    assert big["pipeline"] > small["pipeline"] > 0
    assert all(work_big[k] >= work_small[k] for k in work_big)


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
    times = []
    for k in (SMALL // 2, BIG // 2):
        g = _hub(k)
        g.index, g.arrays()
        pipe = default_pipeline(PLATFORM)
        times.append(
            _fastest(lambda g=g, pipe=pipe: pipe.run(g, fusekit.init_plan(g, PLATFORM)), 3)
        )
    assert times[1] / max(times[0], 1e-4) < BOUND, times


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
