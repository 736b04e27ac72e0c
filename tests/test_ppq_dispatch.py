"""``init_plan(..., dispatch="ppq-conservative")``: PPQ's decisions, in linear time and memory.

The first version memoised PPQ's walk per op as a set and unioned the sets up the graph, as PPQ
does: quadratic (9.5 s and 2.7 GB at 10k ops, killed at 50k). :meth:`_Walker.opset` now does two
linear walks. Same decisions: the corpus parity test (``test_ppq_parity.py``), plus a
differential test of the old walk (kept below as the reference, it is short) against the new on
random graphs rich in the op types the dispatcher treats specially, and on the corpus views.
Linear: the work (lines executed + calls, never wall-clock) grows ~10x for 10x the ops, and
the peak memory the dispatcher allocates (tracemalloc, deterministic) ~5x for 5x the ops. The
work count alone cannot see the old walk's cost, which hid in one C call (``set |= set``): it
grew 9.7x like the new one, while its peak memory grew 24.8x (26 MB -> 643 MB for 1k -> 5k).
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

import fusekit
from fusekit.dispatch import _Walker, ppq_conservative_dispatch
from fusekit.graph import Graph, Initializer, Op

from .conftest import CORPUS
from .test_perf_smoke import BOUND, generate, work

PPQ_SETS = ("ppq066_trt_int8", "ppq066_ort_int8", "ppq066_rknn_int8", "ppq066_ncnn_int8")


def _reference_opset(
    self: _Walker, starts: Iterable[int], rp: Any, ep: Any, down: bool
) -> set[int]:
    """The previous, quadratic walk: PPQ's memoised ``_opset_matching`` (a set per op)."""
    nxt = self.down if down else self.up
    cache: dict[int, set[int]] = {}

    def relayed(x: int, y: int) -> bool:
        return (ep is None or not ep(y)) and bool(rp(x, y))

    out: set[int] = set()
    for s in starts:
        stack = [s]
        while stack:
            x = stack[-1]
            if x in cache:
                stack.pop()
                continue
            following = nxt[x]
            todo = [y for y in following if y not in cache and relayed(x, y)]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            if not following and ep is None:
                cache[x] = {x}
                continue
            res: set[int] = set()
            for y in following:
                if ep is not None and ep(y):
                    res.add(x)
                    res.add(y)
                elif not rp(x, y):
                    if ep is None:
                        res.add(x)
                elif cache[y]:
                    res |= cache[y]
                    res.add(x)
            cache[x] = res
        out |= cache[s]
    return out


# op type -> number of inputs (the dispatcher looks at sockets, shape generators, linear
# activations and the integer-calculation ops, so these are over-represented)
_TYPES = {
    "Conv": 2,
    "Gemm": 2,
    "MatMul": 2,
    "Relu": 1,
    "Clip": 3,
    "Add": 2,
    "Mul": 2,
    "Concat": 3,
    "MaxPool": 1,
    "Reshape": 2,
    "Shape": 1,
    "Gather": 2,
    "Slice": 3,
    "Resize": 3,
    "TopK": 2,
    "Expand": 2,
    "ConstantOfShape": 1,
    "NonMaxSuppression": 3,
    "ScatterND": 3,
    "Sigmoid": 1,
    "Transpose": 1,
    "Softmax": 1,
    "Cast": 1,
}


def random_graph(rng: random.Random, n_ops: int) -> Graph:
    """A random DAG (structure only): each op reads earlier tensors, inputs or a constant."""
    tensors = ["x"]
    inits = [Initializer.from_array("k", np.ones(4, np.float32))]
    ops = []
    types = sorted(_TYPES)
    for i in range(n_ops):
        t = rng.choice(types)
        ins = []
        for _ in range(_TYPES[t]):
            r = rng.random()
            ins.append("k" if r < 0.2 else rng.choice(tensors[-6:] if r < 0.7 else tensors))
        outs = [f"t{i}"] + ([f"t{i}b"] if t == "TopK" else [])
        ops.append(Op(f"n{i}", t, tuple(ins), tuple(outs)))
        tensors.extend(outs)
    return Graph.build(ops, ["x"], [tensors[-1]], inits)


def _both(graph: Graph, name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    p = fusekit.get_platform(name)
    new = ppq_conservative_dispatch(graph, p)
    with monkeypatch.context() as m:
        m.setattr(_Walker, "opset", _reference_opset)
        old = ppq_conservative_dispatch(graph, p)
    return new, old


@pytest.mark.parametrize("seed", range(6))
def test_same_decisions_as_the_quadratic_walk_on_random_graphs(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    for _ in range(40):
        g = random_graph(rng, rng.randint(3, 40))
        for name in PPQ_SETS:
            new, old = _both(g, name, monkeypatch)
            assert new == old, (name, g.order)
            seen |= set(new.values())
    assert {"FP32", "SOI"} <= seen and seen & set(PPQ_SETS)  # every outcome was exercised


@pytest.mark.parametrize("model", ["ppocrv4_det", "ddddocr_det", "silero_vad_16k_op15"])
def test_same_decisions_as_the_quadratic_walk_on_corpus_views(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = fusekit.load(CORPUS / "ppq-view" / f"{model}.onnx")
    for name in PPQ_SETS:
        new, old = _both(g, name, monkeypatch)
        assert new == old


def test_ppq_conservative_dispatch_does_linear_work() -> None:
    """Work for 10x the ops grows ~10x (the quadratic walk: ~100x)."""
    counts = []
    for n in (1_000, 10_000):
        g = fusekit.load(generate.make_model(n, seed=1).SerializeToString())
        g.index, g.arrays()
        counts.append(
            work(lambda g=g: fusekit.init_plan(g, "ppq066_trt_int8", dispatch="ppq-conservative"))
        )
    ratio = counts[1] / counts[0]
    assert ratio < BOUND, (ratio, counts)


def test_ppq_conservative_dispatch_memory_is_linear() -> None:
    """Peak allocation for 5x the ops: measured 5.8x (the quadratic walk: 24.8x)."""
    p = fusekit.get_platform("ppq066_trt_int8")
    peaks = []
    for n in (1_000, 5_000):
        g = fusekit.load(generate.make_model(n, seed=1).SerializeToString())
        g.index, g.arrays()
        tracemalloc.start()
        try:
            ppq_conservative_dispatch(g, p)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] / peaks[0] < 10, peaks
