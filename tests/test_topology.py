"""The one read model (``fusekit._topology.Topology``) and the derived-fact cache of a graph."""

from __future__ import annotations

import numpy as np
import pytest

from fusekit import GraphIndex, Initializer, Op, TensorType
from fusekit._ppq066 import shared_empty_arrays
from fusekit._topology import Topology
from fusekit.dispatch import _Walker
from fusekit.graph import Graph, GraphArrays
from fusekit.report import _GraphFacts

from .test_graph import small

F32 = TensorType(1, (1, 4, 8, 8))


class Counter:
    """A derived-fact function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, graph: Graph, *args: object) -> tuple[object, ...]:
        self.calls += 1
        return (len(graph), *args)


def test_index_and_arrays_are_one_read_model() -> None:
    """0.1's two copies are one object now; the public names still work."""
    g = small()
    assert g.index is g.arrays()
    assert isinstance(g.index, Topology)
    assert GraphIndex is Topology and GraphArrays is Topology
    assert g.positions() == {n: i for i, n in enumerate(g.order)}  # op ids are positions
    assert g.index.order == list(range(len(g)))


def test_topology_is_read_only() -> None:
    with pytest.raises(AttributeError, match="read-only"):
        small().index.op_names = []  # type: ignore[misc]


def test_derived_is_computed_once_per_graph_value_keyed_by_function_and_arguments() -> None:
    g = small()
    f, h = Counter(), Counter()
    assert g.derived(f) == (5,)
    assert g.derived(f) == (5,)
    assert f.calls == 1
    assert g.derived(f, "a") == (5, "a") and g.derived(f, "b") == (5, "b")
    assert f.calls == 3  # other arguments, other facts
    g.derived(h)
    assert h.calls == 1 and f.calls == 3  # another function never reads f's entry
    assert small().derived(f) == (5,) and f.calls == 4  # an equal value is another value


def test_an_edit_keeping_the_structure_shares_the_lists_but_not_the_derived_facts() -> None:
    g = small()
    f = Counter()
    g.derived(f)
    new = g.with_constant_values({"w": np.full((4, 4, 1, 1), 2, np.float32)})
    assert new.index is not g.index
    assert new.index.slot_tensor is g.index.slot_tensor  # no rebuild for new weights
    assert new.index.is_const is g.index.is_const
    new.derived(f)
    assert f.calls == 2  # a fact may read the weights: computed again for the new value
    typed = g.with_value_type("r1", F32)
    assert typed.index.consumers is g.index.consumers


def test_a_structural_edit_builds_a_fresh_topology_and_leaves_the_old_one() -> None:
    g = small()
    before = g.index.snapshot()
    new = g.add_op(Op("neg", "Neg", ("r1",), ("neg",)), before="sq")
    assert g.index.snapshot() == before
    assert new.index.op_id == {n: i for i, n in enumerate(new.order)}
    assert new.index.snapshot() == Topology.build(new.ops[n] for n in new.order).snapshot()
    assert new.index.op_names[new.index.op_id["neg"]] == "neg"


def test_preds_and_succs_are_the_graphs_edges_one_per_slot() -> None:
    g = small()
    t = g.index
    for op in g:
        o = t.op_id[op.name]
        assert tuple(t.op_names[p] for p in t.preds[o]) == g.upstream(op.name)
        assert tuple(t.op_names[s] for s in t.succs[o]) == g.downstream(op.name)
    assert [t.op_names[s] for s in t.succs[t.op_id["r1"]]] == ["sq", "sq", "c2"]


def test_ops_of_types_is_in_topological_order_and_remembered() -> None:
    t = small().index
    hit = t.ops_of_types(frozenset({"Add", "Conv"}))
    assert [t.op_names[o] for o in hit] == ["c1", "c2", "add"]
    assert t.ops_of_types(frozenset({"Add", "Conv"})) is hit
    assert t.ops_of_types(frozenset({"Gemm"})) == ()


def test_report_and_ppq_walker_read_the_topology_instead_of_copies() -> None:
    g = small()
    t = g.index
    facts = _GraphFacts(g)
    assert facts.names is t.op_names and facts.slot_tensor is t.slot_tensor
    assert facts.preds == [[], [0], [1], [1], [2, 3]]  # positions, without repeats
    w = _Walker(g)
    assert w.up is t.preds and w.down is t.succs
    assert w.in0_src == [-1, 0, 1, 1, 2] and w.inlast_src == [-1, 0, 1, -1, 3]


def test_the_shared_empty_view_is_a_variant_with_its_own_cache() -> None:
    g = Graph.build(
        [
            Op("c", "Conv", ("x", "w"), ("c",)),
            Op("clip", "Clip", ("c", "", "hi"), ("y",)),
        ],
        inputs={"x": F32},
        outputs=["y"],
        initializers=[
            Initializer.from_array("w", np.ones((4, 4, 1, 1), np.float32)),
            Initializer.from_array("hi", np.array(6, np.float32)),
        ],
    )
    view = shared_empty_arrays(g)
    assert shared_empty_arrays(g) is view  # computed once per graph value
    assert view is not g.index and view.op_names is g.index.op_names
    assert view.slot_tensor[g.index.slot_base[1] + 1] == len(g.index.tensor_names)
    assert g.index.slot_tensor[g.index.slot_base[1] + 1] == -1  # the graph's own is untouched
    assert view._derived is not g.index._derived
