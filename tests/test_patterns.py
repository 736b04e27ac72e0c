"""The pattern matcher on its own: structure, ports, injectivity, order, exclusivity, errors.

The fusion passes exercise the matcher through PPQ's patterns; these tests pin the public
contract of :mod:`fusekit.patterns` for users who write their own :class:`Pattern` values.
"""

from __future__ import annotations

import pytest

from fusekit.patterns import (
    Edge,
    Node,
    OpSet,
    Pattern,
    PatternError,
    find,
    find_ids,
    match,
    ops_of,
    type_node,
)

from .graphs import G

CONV_RELU = Pattern(
    "conv_relu",
    nodes=(Node("conv", {"Conv"}), Node("act", {"Relu"})),
    edges=(Edge("conv", "act"),),
)
SWISH = Pattern(
    "swish",
    nodes=(Node("x", {"Conv"}), Node("sig", {"Sigmoid"}), Node("mul", {"Mul"})),
    edges=(Edge("x", "sig"), Edge("sig", "mul"), Edge("x", "mul")),
)


class TestStructure:
    """Chains and diamonds match where the edges exist, and nowhere else."""

    def test_chain(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").conv("c2", "r1").relu("r2", "c2").build(["r2"])
        ms = match(g, CONV_RELU)
        assert [m.ops for m in ms] == [("c1", "r1"), ("c2", "r2")]
        assert ms[0]["conv"] == "c1" and ms[0]["act"] == "r1"
        assert ms[0][1] == ms[0].ops  # a NamedTuple: integers index its fields
        assert ms[0].as_dict() == {"conv": "c1", "act": "r1"}
        with pytest.raises(KeyError):
            ms[0]["nope"]

    def test_no_edge_no_match(self) -> None:
        g = G().conv("c1", "x").relu("r1", "x").build(["c1", "r1"])
        assert find(g, CONV_RELU) == []

    def test_diamond(self) -> None:
        g = (
            G()
            .conv("c1", "x")
            .unary("Sigmoid", "s1", "c1")
            .binary("Mul", "m1", "c1", "s1")
            .build(["m1"])
        )
        assert [m.ops for m in match(g, SWISH)] == [("c1", "s1", "m1")]

    def test_diamond_needs_both_edges(self) -> None:
        # the Mul reads the Sigmoid twice, not the Conv: the x -> mul edge is missing
        g = (
            G()
            .conv("c1", "x")
            .unary("Sigmoid", "s1", "c1")
            .binary("Mul", "m1", "s1", "s1")
            .build(["m1"])
        )
        assert find(g, SWISH) == []

    def test_single_node_pattern(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").relu("r2", "r1").build(["r2"])
        p = Pattern("relu", nodes=(type_node("r", "Relu"),), edges=())
        assert [m.ops for m in match(g, p)] == [("r1",), ("r2",)]

    def test_where_predicate(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").conv("c2", "r1").relu("r2", "c2").build(["r2"])
        p = Pattern(
            "late",
            nodes=(Node("conv", {"Conv"}, where=lambda op: op.name == "c2"), Node("act", {"Relu"})),
            edges=(Edge("conv", "act"),),
        )
        assert [m.ops for m in match(g, p)] == [("c2", "r2")]

    def test_any_type_node(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").build(["r1"])
        p = Pattern("any_relu", nodes=(Node("a"), Node("r", {"Relu"})), edges=(Edge("a", "r"),))
        assert [m.ops for m in match(g, p)] == [("c1", "r1")]


class TestPorts:
    """An edge that names ports matches only that output/input pair."""

    def _graph(self, sigmoid_first: bool) -> object:
        g = G().conv("c1", "x").unary("Sigmoid", "s1", "c1")
        args = ("s1", "c1") if sigmoid_first else ("c1", "s1")
        return g.binary("Mul", "m1", *args).build(["m1"])

    @pytest.mark.parametrize("sigmoid_first", [True, False])
    def test_destination_port(self, sigmoid_first: bool) -> None:
        g = self._graph(sigmoid_first)
        p = Pattern(
            "swish_x_first",
            nodes=SWISH.nodes,
            edges=(Edge("x", "sig"), Edge("sig", "mul", dst_port=1), Edge("x", "mul", dst_port=0)),
        )
        expected = [] if sigmoid_first else [("c1", "s1", "m1")]
        assert [m.ops for m in match(g, p)] == expected  # type: ignore[arg-type]

    def test_source_port(self) -> None:
        g = (
            G()
            .conv("c1", "x")
            .op("Split", "sp", ["c1"], n_out=2)
            .relu("r0", "sp:0")
            .unary("Sigmoid", "s1", "sp:1")
            .build(["r0", "s1"])
        )
        second = Pattern(
            "split_second",
            nodes=(Node("split", {"Split"}), Node("act")),
            edges=(Edge("split", "act", src_port=1),),
        )
        assert [m.ops for m in match(g, second, exclusive=False)] == [("sp", "s1")]
        out_of_range = Pattern(
            "split_third",
            nodes=(Node("split", {"Split"}), Node("act")),
            edges=(Edge("split", "act", src_port=2),),
        )
        assert find(g, out_of_range) == []


class TestInjectivityAndOrder:
    def test_two_nodes_never_bind_one_op(self) -> None:
        two_readers = Pattern(
            "fork",
            nodes=(Node("c", {"Conv"}), Node("a", {"Relu"}), Node("b", {"Relu"})),
            edges=(Edge("c", "a"), Edge("c", "b")),
        )
        one = G().conv("c1", "x").relu("r1", "c1").build(["r1"])
        assert find(one, two_readers) == []
        two = G().conv("c1", "x").relu("r1", "c1").relu("r2", "c1").build(["r1", "r2"])
        found = [f.match.ops for f in find(two, two_readers)]
        assert sorted(found) == [("c1", "r1", "r2"), ("c1", "r2", "r1")]

    def test_order_is_topological_whatever_the_build_order(self) -> None:
        g = G()
        for i in range(5):
            g.conv(f"c{i}", "x" if i == 0 else f"r{i - 1}").relu(f"r{i}", f"c{i}")
        g.ops.reverse()  # Graph.build sorts topologically
        graph = g.build(["r4"])
        assert [m.ops for m in match(graph, CONV_RELU)] == [(f"c{i}", f"r{i}") for i in range(5)]
        assert find(graph, CONV_RELU) == find(graph, CONV_RELU)

    def test_find_ids_agree_with_find(self) -> None:
        graph = G().conv("c1", "x").relu("r1", "c1").conv("c2", "r1").relu("r2", "c2").build(["r2"])
        names = graph.arrays().op_names
        pairs = find_ids(graph, CONV_RELU)
        assert [tuple(names[o] for o in ids) for ids, _ in pairs] == [
            f.match.ops for f in find(graph, CONV_RELU)
        ]
        assert [f.op_ids for f in find(graph, CONV_RELU)] == [ids for ids, _ in pairs]


class TestExclusivity:
    """Each reason a structural match is not exclusive, as the decision log shows it."""

    def test_second_consumer(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").relu("r2", "c1").build(["r1", "r2"])
        reasons = {f.match.ops: f.reason for f in find(g, CONV_RELU)}
        assert reasons[("c1", "r1")] == "c1 has 2 consumers (r2 is outside the pattern)"
        assert match(g, CONV_RELU) == []
        assert len(match(g, CONV_RELU, exclusive=False)) == 2

    def test_inner_node_reads_from_outside(self) -> None:
        g = G().conv("c1", "x").conv("c2", "x").binary("Add", "a", "c1", "c2").build(["a"])
        p = Pattern(
            "conv_add",
            nodes=(Node("conv", {"Conv"}), Node("add", {"Add"})),
            edges=(Edge("conv", "add"),),
        )
        reasons = {f.match.ops: f.reason for f in find(g, p)}
        assert reasons[("c1", "a")] == "a also reads from c2, outside the pattern"

    def test_inner_node_reads_a_graph_input(self) -> None:
        # producers counted: Mul reads c1 and the graph input x -> 1 producer, pattern has 2
        g = (
            G()
            .conv("c1", "x")
            .unary("Sigmoid", "s1", "x")
            .binary("Mul", "m1", "c1", "s1")
            .build(["m1"])
        )
        p = Pattern(
            "two_in",
            nodes=(Node("c", {"Conv"}), Node("s", {"Sigmoid"}), Node("m", {"Mul"})),
            edges=(Edge("c", "m"), Edge("s", "m")),
        )
        assert [f.reason for f in find(g, p)] == [None]
        p_one = Pattern(
            "one_in",
            nodes=(Node("c", {"Conv"}), Node("s", {"Sigmoid"}), Node("m", {"Mul"})),
            edges=(Edge("c", "m"), Edge("c", "s")),
        )
        assert find(g, p_one) == []
        chain = Pattern(
            "mul_after_sigmoid_only",
            nodes=(Node("s", {"Sigmoid"}), Node("m", {"Mul"})),
            edges=(Edge("s", "m"),),
        )
        (f,) = find(g, chain)
        assert f.reason == "m1 also reads from c1, outside the pattern"

    def test_producer_count(self) -> None:
        # chain c -> s -> m, but m reads c1 as well as s1: every producer is inside the match,
        # yet m has two producer ops where the pattern gives it one in-edge
        g = (
            G()
            .conv("c1", "x")
            .unary("Sigmoid", "s1", "c1")
            .binary("Mul", "m1", "c1", "s1")
            .build(["m1"])
        )
        chain = Pattern(
            "chain",
            nodes=(Node("c", {"Conv"}), Node("s", {"Sigmoid"}), Node("m", {"Mul"})),
            edges=(Edge("c", "s"), Edge("s", "m")),
        )
        (f,) = find(g, chain)
        assert f.reason == "m1 reads from 2 producer op(s), the pattern expects 1"

    def test_graph_output(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").build(["c1", "r1"])
        (f,) = find(g, CONV_RELU)
        assert f.reason == "output of c1 is a graph output"
        (ppq,) = find(g, CONV_RELU, graph_outputs_count=False)
        assert ppq.reason is None
        assert match(g, CONV_RELU, graph_outputs_count=False)[0].ops == ("c1", "r1")

    def test_constant_op_is_not_a_producer(self) -> None:
        g = (
            G()
            .conv("c1", "x")
            .op("Constant", "k", [], value=None)
            .binary("Add", "a", "c1", "k")
            .build(["a"])
        )
        p = Pattern(
            "conv_add",
            nodes=(Node("conv", {"Conv"}), Node("add", {"Add"})),
            edges=(Edge("conv", "add"),),
        )
        assert [f.reason for f in find(g, p)] == [None]


def test_a_tensor_with_many_readers() -> None:
    """Edge checks against an op with more than eight readers use its reader set."""
    g = G().conv("c1", "x")
    for i in range(20):
        g.unary("Sigmoid", f"s{i}", "c1").binary("Mul", f"m{i}", "c1", f"s{i}")
    graph = g.build([f"m{i}" for i in range(20)])
    found = find(graph, SWISH)
    assert [f.match.ops for f in found] == [("c1", f"s{i}", f"m{i}") for i in range(20)]
    assert all(f.reason is not None and "c1 has 40 consumers" in f.reason for f in found)


def test_opset_predicate_same_and_other_graph() -> None:
    graph = G().conv("c1", "x").relu("r1", "c1").conv("c2", "r1").relu("r2", "c2").build(["r2"])
    ids = [graph.arrays().op_names.index("c2")]
    only_c2 = OpSet(graph, ids)
    p = Pattern(
        "c2_relu",
        nodes=(Node("conv", {"Conv"}, where=only_c2), Node("act", {"Relu"})),
        edges=(Edge("conv", "act"),),
    )
    assert [m.ops for m in match(graph, p)] == [("c2", "r2")]
    # called with an op (from any graph) it tests the name
    other = G().conv("c2", "x").relu("r2", "c2").build(["r2"])
    assert only_c2(other.ops["c2"]) and not only_c2(other.ops["r2"])
    assert [m.ops for m in match(other, p)] == [("c2", "r2")]


def test_helpers() -> None:
    assert type_node("a", "Relu") == Node("a", frozenset({"Relu"}))
    assert ops_of({"a": "x", "b": "y"}) == ("x", "y")
    assert CONV_RELU.node("act").types == frozenset({"Relu"})
    with pytest.raises(PatternError, match="has no node 'zz'"):
        CONV_RELU.node("zz")


@pytest.mark.parametrize(
    ("nodes", "edges", "message"),
    [
        ((), (), "has no nodes"),
        ((Node("a"), Node("a")), (), "duplicate node names"),
        ((Node("a"),), (Edge("a", "b"),), "edge a->b names an unknown node"),
        ((Node("a"),), (Edge("a", "a"),), "self edge on a"),
        ((Node("a"), Node("b")), (Edge("a", "b"), Edge("b", "a")), "has a cycle"),
        ((Node("a"), Node("b"), Node("c")), (Edge("a", "b"),), r"is not connected: \['c'\]"),
    ],
)
def test_malformed_patterns(nodes: tuple[Node, ...], edges: tuple[Edge, ...], message: str) -> None:
    with pytest.raises(PatternError, match=message):
        Pattern("bad", nodes=nodes, edges=edges)
    assert issubclass(PatternError, ValueError)
