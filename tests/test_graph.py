"""The graph value: Slot, Op, Attributes, Initializer, Graph.build and every pure edit.

Every edit test goes through :func:`edit`, which checks the three promises of an edit: the new
graph passes ``check_invariants``; the old graph is unchanged (ops, order, index, producers
and consumers compared with a snapshot taken before); and the new graph's index (its
topology, built on first read or shared from the parent by an edit that keeps the structure)
equals one built from scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import pytest

import fusekit
from fusekit import (
    Attributes,
    DanglingInput,
    DuplicateProducer,
    Graph,
    GraphCycle,
    GraphIndex,
    Initializer,
    InvalidGraph,
    Op,
    OpaqueAttribute,
    Slot,
    TensorType,
    UnknownOp,
    UnknownSlot,
    check_invariants,
)

F32 = TensorType(1, (1, 4, 8, 8))


def weights() -> list[Initializer]:
    return [
        Initializer.from_array("w", np.ones((4, 4, 1, 1), np.float32)),
        Initializer.from_array("b", np.zeros(4, np.float32)),
    ]


def small() -> Graph:
    """x -> c1 (Conv) -> r1 (Relu) -> sq = Mul(r1, r1) and c2 (Conv r1) -> add -> output."""
    return Graph.build(
        [
            Op("c1", "Conv", ("x", "w", "b"), ("c1",), {"pads": (0, 0, 0, 0)}),
            Op("r1", "Relu", ("c1",), ("r1",)),
            Op("sq", "Mul", ("r1", "r1"), ("sq",)),
            Op("c2", "Conv", ("r1", "w"), ("c2",)),
            Op("add", "Add", ("sq", "c2"), ("add",)),
        ],
        inputs={"x": F32},
        outputs=["add"],
        initializers=weights(),
    )


def snapshot(g: Graph) -> tuple[Any, ...]:
    """Everything observable about a graph, in plain Python values."""
    return (
        dict(g.ops),
        list(g.order),
        g.inputs,
        g.outputs,
        dict(g.initializers),
        dict(g.value_types),
        dict(g.original_names),
        g.index.snapshot(),
        {t: (g.producer(t), g.consumers(t)) for t in g.tensor_names()},
    )


def fresh_index_snapshot(g: Graph) -> tuple[Any, ...]:
    return GraphIndex.build(g.ops[n] for n in g.order).snapshot()


def edit(g: Graph, change: Callable[[Graph], Graph], monkeypatch: pytest.MonkeyPatch) -> Graph:
    """Apply ``change`` and check the promises of a pure edit (see the module docstring)."""
    before = snapshot(g)  # also builds the parent's index
    new = change(g)
    assert new is not g
    assert new.index.snapshot() == fresh_index_snapshot(new)
    assert new.index.op_id == {n: i for i, n in enumerate(new.order)}  # op ids are positions
    check_invariants(new)
    assert snapshot(g) == before  # the old graph is unchanged
    check_invariants(g)
    return new


# --------------------------------------------------------------------------------------------
# Slot


class TestSlot:
    """Slots are value keys with a text form."""

    def test_text_round_trip(self) -> None:
        s = Slot("conv|1", "in", 2)
        assert str(s) == "conv|1|in|2"
        assert Slot.parse(str(s)) == s

    @pytest.mark.parametrize("text", ["conv", "conv|in", "conv|up|0", "conv|in|x", "|in|"])
    def test_parse_rejects_malformed(self, text: str) -> None:
        with pytest.raises(UnknownSlot) as e:
            Slot.parse(text)
        assert isinstance(e.value, KeyError)
        assert text in str(e.value)

    def test_value_semantics(self) -> None:
        assert Slot("a", "out", 0) == Slot("a", "out", 0)
        assert len({Slot("a", "out", 0), Slot("a", "out", 0), Slot("a", "in", 0)}) == 2


# --------------------------------------------------------------------------------------------
# Op and Attributes


class TestOp:
    """Ops are frozen values; lists become tuples and dicts become Attributes."""

    def test_normalises_fields(self) -> None:
        op = Op("r", "Relu", ["x"], ["y"], {"alpha": 0.5})  # type: ignore[arg-type]
        assert op.inputs == ("x",) and op.outputs == ("y",)
        assert isinstance(op.attributes, Attributes) and op.attributes["alpha"] == 0.5
        assert op.domain == "" and op.implicit_inputs == ()

    def test_frozen(self) -> None:
        op = Op("r", "Relu", ("x",), ("y",))
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            op.name = "s"  # type: ignore[misc]

    def test_equality_ignores_source(self) -> None:
        a = Op("r", "Relu", ("x",), ("y",), source=object())
        b = Op("r", "Relu", ("x",), ("y",), source=object())
        assert a == b and hash(a) == hash(b)
        assert a != attrs.evolve(a, inputs=("z",))

    def test_slots_inputs_then_outputs(self) -> None:
        op = Op("m", "Mul", ("x", "x"), ("y",))
        assert op.slots() == (Slot("m", "in", 0), Slot("m", "in", 1), Slot("m", "out", 0))


class TestAttributes:
    """An immutable, lazily decoded mapping."""

    def test_mapping_and_order(self) -> None:
        a = Attributes({"b": 1, "a": (1, 2)})
        assert list(a) == ["a", "b"] and len(a) == 2 and a["a"] == (1, 2)
        assert dict(a) == {"a": (1, 2), "b": 1}
        with pytest.raises(KeyError):
            a["c"]
        with pytest.raises(TypeError):
            a["b"] = 2  # type: ignore[index]

    def test_set_returns_new_mapping(self) -> None:
        a = Attributes({"k": 1})
        b = a.set("k", 2)
        assert a["k"] == 1 and b["k"] == 2
        assert b.source is None

    def test_lazy_decode_runs_once_on_first_access(self) -> None:
        calls: list[object] = []

        def decode(src: object) -> dict[str, Any]:
            calls.append(src)
            return {"axis": 1}

        src = object()
        a = Attributes(source=src, decode=decode)
        assert calls == []  # nothing decoded at construction
        assert a.source is src
        assert a["axis"] == 1 and len(a) == 1 and list(a) == ["axis"]
        assert calls == [src]

    def test_equality_with_arrays_and_nan(self) -> None:
        arr = np.array([1.0, np.nan], np.float32)
        assert Attributes({"t": arr}) == Attributes({"t": arr.copy()})
        assert Attributes({"t": arr}) == {"t": arr.copy()}
        assert Attributes({"t": arr}) != Attributes({"t": arr.astype(np.float64)})
        assert Attributes({"t": arr}) != Attributes({"t": np.array([1.0, 2.0], np.float32)})
        assert Attributes({"t": arr}) != Attributes({"t": (1.0, 2.0)})
        assert Attributes({"k": 1}) != Attributes({"k": 1, "j": 2})

    def test_opaque_attribute_repr_hides_payload(self) -> None:
        o = OpaqueAttribute("GRAPH", b"\x00" * 100)
        assert "100 bytes" in repr(o)
        assert Attributes({"g": o}) == Attributes({"g": OpaqueAttribute("GRAPH", b"\x00" * 100)})


# --------------------------------------------------------------------------------------------
# Initializer


class TestInitializer:
    """Constant tensors: copied, read-only, frozen, optionally lazy."""

    def test_from_array_copies_and_freezes(self) -> None:
        src = np.arange(6, dtype=np.float32).reshape(2, 3)
        i = Initializer.from_array("w", src)
        src[0, 0] = 99
        assert i.array()[0, 0] == 0
        assert not i.array().flags.writeable
        assert (i.elem_type, i.dims, i.size) == (1, (2, 3), 6)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            i.name = "v"  # type: ignore[misc]
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            i._array = None

    def test_lazy_decode_once(self) -> None:
        calls: list[object] = []

        def decode(src: object) -> np.ndarray[Any, Any]:
            calls.append(src)
            return np.zeros(3, np.int64)

        i = Initializer("s", 7, (3,), source="proto", decode=decode)
        assert calls == []
        assert i.array().tolist() == [0, 0, 0] and i.array().tolist() == [0, 0, 0]
        assert calls == ["proto"]
        assert not i.array().flags.writeable

    def test_equality(self) -> None:
        a = Initializer.from_array("w", np.ones(2, np.float32))
        assert a == Initializer.from_array("w", np.ones(2, np.float32))
        assert a != Initializer.from_array("w", np.zeros(2, np.float32))
        assert a != Initializer.from_array("v", np.ones(2, np.float32))

    def test_rejects_inconsistent_construction(self) -> None:
        with pytest.raises(InvalidGraph, match="dims"):
            Initializer("w", 1, (3,), array=np.ones(2, np.float32))
        with pytest.raises(InvalidGraph, match="needs an array"):
            Initializer("w", 1, (3,))


# --------------------------------------------------------------------------------------------
# Graph.build and queries


class TestBuild:
    """Graph.build validates at the boundary and sorts ops topologically."""

    def test_sorts_ops_and_keeps_a_valid_order(self) -> None:
        g = Graph.build(
            [Op("b", "Relu", ("a",), ("b",)), Op("a", "Relu", ("x",), ("a",))],
            inputs=["x"],
            outputs=["b"],
        )
        assert list(g.order) == ["a", "b"]
        check_invariants(g)

    def test_keeps_an_order_that_is_already_topological(self) -> None:
        g = small()
        assert list(g.order) == ["c1", "r1", "sq", "c2", "add"]

    def test_dangling_input(self) -> None:
        with pytest.raises(DanglingInput, match="'nowhere'") as e:
            Graph.build([Op("a", "Relu", ("nowhere",), ("a",))], inputs=["x"], outputs=["a"])
        assert isinstance(e.value, ValueError)
        assert "'a' reads 'nowhere'" in str(e.value)

    def test_unproduced_graph_output(self) -> None:
        with pytest.raises(DanglingInput, match="graph output 'ghost'"):
            Graph.build([Op("a", "Relu", ("x",), ("a",))], inputs=["x"], outputs=["ghost"])

    def test_duplicate_producer_two_ops(self) -> None:
        with pytest.raises(DuplicateProducer, match="'t' is produced by both 'a' and op 'b'"):
            Graph.build(
                [Op("a", "Relu", ("x",), ("t",)), Op("b", "Relu", ("x",), ("t",))],
                inputs=["x"],
                outputs=["t"],
            )

    def test_duplicate_producer_op_and_graph_input(self) -> None:
        with pytest.raises(DuplicateProducer, match="graph input or initializer"):
            Graph.build([Op("a", "Relu", ("x",), ("x",))], inputs=["x"], outputs=["x"])

    def test_cycle(self) -> None:
        with pytest.raises(GraphCycle, match="cycle through 2 ops: 'a', 'b'"):
            Graph.build(
                [
                    Op("a", "Add", ("x", "b"), ("a",)),
                    Op("b", "Relu", ("a",), ("b",)),
                ],
                inputs=["x"],
                outputs=["b"],
            )

    def test_self_loop(self) -> None:
        with pytest.raises(GraphCycle, match="cycle through 1 op: 'a'"):
            Graph.build([Op("a", "Add", ("x", "a"), ("a",))], inputs=["x"], outputs=["a"])

    def test_duplicate_op_names(self) -> None:
        with pytest.raises(InvalidGraph, match="duplicate op names: a"):
            Graph.build(
                [Op("a", "Relu", ("x",), ("t",)), Op("a", "Relu", ("t",), ("u",))],
                inputs=["x"],
                outputs=["u"],
            )

    def test_duplicate_graph_inputs(self) -> None:
        with pytest.raises(InvalidGraph, match="duplicate graph input"):
            Graph.build([Op("a", "Relu", ("x",), ("a",))], inputs=["x", "x"], outputs=["a"])

    def test_every_problem_is_listed(self) -> None:
        with pytest.raises(DanglingInput) as e:
            Graph.build(
                [Op("a", "Relu", ("p",), ("a",)), Op("b", "Relu", ("q",), ("b",))],
                inputs=["x"],
                outputs=["a"],
            )
        assert len(e.value.problems) == 2


class TestQueries:
    """Slot-based producers and consumers, tensor views."""

    def test_mul_x_x_has_two_consumer_slots(self) -> None:
        g = small()
        assert g.consumers("r1") == (
            Slot("sq", "in", 0),
            Slot("sq", "in", 1),
            Slot("c2", "in", 0),
        )
        assert g.producer("r1") == Slot("r1", "out", 0)
        assert g.downstream("r1") == ("sq", "sq", "c2")
        assert g.upstream("sq") == ("r1", "r1")

    def test_graph_inputs_and_initializers_have_no_producer_op(self) -> None:
        g = small()
        assert g.producer("x") is None and g.producer("w") is None
        assert g.consumers("w") == (Slot("c1", "in", 1), Slot("c2", "in", 1))
        assert g.consumers("nothing") == ()
        assert g.producer("nothing") is None

    def test_tensor_views(self) -> None:
        g = small()
        x, w, add = g.tensor("x"), g.tensor("w"), g.tensor("add")
        assert (x.is_graph_input, x.shape, x.elem_type) == (True, (1, 4, 8, 8), 1)
        assert (w.is_initializer, w.is_constant, w.shape) == (True, True, (4, 4, 1, 1))
        assert add.is_graph_output and not add.is_constant
        assert g.tensor_of(Slot("sq", "in", 1)) == "r1"
        with pytest.raises(UnknownSlot):
            g.tensor_of(Slot("sq", "in", 2))
        with pytest.raises(UnknownOp) as e:
            g.op("nope")
        assert isinstance(e.value, KeyError) and "'nope'" in str(e.value)

    def test_constant_op_output_is_constant(self) -> None:
        g = Graph.build(
            [
                Op("k", "Constant", (), ("k",), {"value": np.ones(1, np.float32)}),
                Op("a", "Add", ("x", "k"), ("a",)),
            ],
            inputs=["x"],
            outputs=["a"],
        )
        assert g.is_constant("k") and not g.is_constant("a")

    def test_ops_by_type_and_tensor_names(self) -> None:
        g = small()
        by = g.ops_by_type()
        idx = g.index
        assert [idx.op_names[i] for i in by["Conv"]] == ["c1", "c2"]
        assert g.tensor_names() == ("x", "b", "w", "c1", "r1", "sq", "c2", "add")
        assert [op.name for op in g] == list(g.order) and len(g) == 5

    def test_index_slot_ids_round_trip(self) -> None:
        g = small()
        idx = g.index
        for op in g:
            for s in op.slots():
                assert idx.slot_key(idx.slot_id(s)) == s
        with pytest.raises(UnknownSlot):
            idx.slot_id(Slot("sq", "in", 5))
        with pytest.raises(UnknownSlot):
            idx.slot_id(Slot("ghost", "in", 0))


# --------------------------------------------------------------------------------------------
# Pure edits


class TestAddOp:
    """add_op places the op after its producers, or before a named op."""

    def test_after_last_producer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(g, lambda g: g.add_op(Op("neg", "Neg", ("r1",), ("neg",))), monkeypatch)
        assert list(new.order) == ["c1", "r1", "neg", "sq", "c2", "add"]
        assert Slot("neg", "in", 0) in new.consumers("r1")
        assert new.producer("neg") == Slot("neg", "out", 0)

    def test_before_named_op(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(
            g, lambda g: g.add_op(Op("neg", "Neg", ("x",), ("neg",)), before="c2"), monkeypatch
        )
        assert list(new.order) == ["c1", "r1", "sq", "neg", "c2", "add"]

    def test_refusals(self) -> None:
        g = small()
        with pytest.raises(InvalidGraph, match="already exists"):
            g.add_op(Op("r1", "Relu", ("x",), ("other",)))
        with pytest.raises(DanglingInput, match="'ghost'"):
            g.add_op(Op("n", "Neg", ("ghost",), ("n",)))
        with pytest.raises(DuplicateProducer, match="'sq'"):
            g.add_op(Op("n", "Neg", ("x",), ("sq",)))
        with pytest.raises(DuplicateProducer, match="'x'"):
            g.add_op(Op("n", "Neg", ("r1",), ("x",)))
        with pytest.raises(DuplicateProducer, match="'w'"):
            g.add_op(Op("n", "Neg", ("r1",), ("w",)))
        with pytest.raises(DuplicateProducer, match="twice"):
            g.add_op(Op("n", "Split", ("r1",), ("p", "p")))
        with pytest.raises(UnknownOp):
            g.add_op(Op("n", "Neg", ("x",), ("n",)), before="ghost")
        with pytest.raises(GraphCycle, match="before 'r1' produces it"):
            g.add_op(Op("n", "Neg", ("r1",), ("n",)), before="c1")
        check_invariants(g)


class TestRemoveOp:
    """remove_op drops an op whose outputs nobody needs."""

    def test_remove_unread_op(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small().add_op(Op("neg", "Neg", ("r1",), ("neg",)))
        new = edit(g, lambda g: g.remove_op("neg"), monkeypatch)
        assert "neg" not in new.ops and "neg" not in new.order
        assert new.consumers("r1") == small().consumers("r1")

    def test_refuses_while_outputs_are_read(self) -> None:
        g = small()
        with pytest.raises(InvalidGraph, match="'r1' is still read by c2, sq"):
            g.remove_op("r1")

    def test_refuses_graph_output_producer(self) -> None:
        with pytest.raises(InvalidGraph, match="'add' is a graph output"):
            small().remove_op("add")

    def test_unknown_op(self) -> None:
        with pytest.raises(UnknownOp):
            small().remove_op("ghost")


class TestReplaceOp:
    """replace_op swaps an op for another, rewiring the index in place."""

    def test_same_arity_rewire(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(
            g, lambda g: g.replace_op("sq", Op("sq", "Mul", ("r1", "c1"), ("sq",))), monkeypatch
        )
        assert new.consumers("r1") == (Slot("sq", "in", 0), Slot("c2", "in", 0))
        assert Slot("sq", "in", 1) in new.consumers("c1")
        assert new.op("sq").inputs == ("r1", "c1")

    def test_different_arity(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(
            g,
            lambda g: g.replace_op("c2", Op("c2", "Conv", ("r1", "w", "b"), ("c2",))),
            monkeypatch,
        )
        assert new.consumers("b") == (Slot("c1", "in", 2), Slot("c2", "in", 2))
        assert new.index.slot_key(new.index.slot_id(Slot("c2", "in", 2))) == Slot("c2", "in", 2)

    def test_renamed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(
            g, lambda g: g.replace_op("r1", Op("act", "Clip", ("c1",), ("r1",))), monkeypatch
        )
        assert "r1" not in new.ops and new.op("act").op_type == "Clip"
        assert list(new.order) == ["c1", "act", "sq", "c2", "add"]
        assert new.producer("r1") == Slot("act", "out", 0)
        assert new.upstream("sq") == ("act", "act")

    def test_reading_a_later_tensor_moves_the_op(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()  # sq comes before c2; make sq read c2: acyclic, but the order must change
        new = edit(
            g, lambda g: g.replace_op("sq", Op("sq", "Mul", ("r1", "c2"), ("sq",))), monkeypatch
        )
        pos = new.positions()
        assert pos["c2"] < pos["sq"] < pos["add"]

    def test_refusals(self) -> None:
        g = small()
        with pytest.raises(GraphCycle):
            g.replace_op("r1", Op("r1", "Add", ("c1", "sq"), ("r1",)))
        with pytest.raises(DanglingInput, match="'ghost'"):
            g.replace_op("r1", Op("r1", "Relu", ("ghost",), ("r1",)))
        with pytest.raises(DuplicateProducer, match="'c2'"):
            g.replace_op("sq", Op("sq", "Mul", ("r1", "r1"), ("c2",)))
        with pytest.raises(InvalidGraph, match="'r1' is still read"):
            g.replace_op("r1", Op("r1", "Relu", ("c1",), ("r1b",)))
        with pytest.raises(InvalidGraph, match="'add' is a graph output"):
            g.replace_op("add", Op("add", "Add", ("sq", "c2"), ("sum",)))
        with pytest.raises(InvalidGraph, match="already exists"):
            g.replace_op("sq", Op("c2", "Mul", ("r1", "r1"), ("sq",)))
        check_invariants(g)


class TestOtherEdits:
    """set_input, rename_tensor, initializers, outputs and value types."""

    def test_set_input(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(g, lambda g: g.set_input("add", 1, "r1"), monkeypatch)
        assert new.op("add").inputs == ("sq", "r1")
        assert new.consumers("c2") == ()
        with pytest.raises(UnknownSlot):
            g.set_input("add", 2, "r1")

    def test_set_input_to_omitted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(g, lambda g: g.set_input("c1", 2, ""), monkeypatch)
        assert new.op("c1").inputs == ("x", "w", "")
        assert new.consumers("b") == ()

    def test_rename_intermediate_tensor(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(g, lambda g: g.rename_tensor("r1", "act"), monkeypatch)
        assert new.op("r1").outputs == ("act",)
        assert new.op("sq").inputs == ("act", "act")
        assert new.consumers("act") == g.consumers("r1")
        assert new.consumers("r1") == () and new.producer("r1") is None

    def test_rename_graph_input_and_output(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(g, lambda g: g.rename_tensor("x", "image"), monkeypatch)
        new = edit(new, lambda g: g.rename_tensor("add", "logits"), monkeypatch)
        assert new.inputs == ("image",) and new.outputs == ("logits",)
        assert new.op("c1").inputs[0] == "image"
        assert new.tensor("image").shape == (1, 4, 8, 8)  # the declared type moved too

    def test_rename_initializer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(g, lambda g: g.rename_tensor("w", "weight"), monkeypatch)
        assert "w" not in new.initializers
        assert new.initializers["weight"].name == "weight"
        assert np.array_equal(new.initializers["weight"].array(), g.initializers["w"].array())
        assert new.consumers("weight") == (Slot("c1", "in", 1), Slot("c2", "in", 1))

    def test_rename_refusals(self) -> None:
        g = small()
        assert g.rename_tensor("r1", "r1") is g
        with pytest.raises(InvalidGraph, match="already used"):
            g.rename_tensor("r1", "c2")
        with pytest.raises(InvalidGraph, match="already used"):
            g.rename_tensor("r1", "w")
        with pytest.raises(InvalidGraph, match="no such tensor"):
            g.rename_tensor("ghost", "spirit")
        with pytest.raises(InvalidGraph, match="empty name"):
            g.rename_tensor("r1", "")

    def test_name_of_a_removed_tensor_is_free_again(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small().add_op(Op("neg", "Neg", ("r1",), ("neg",))).remove_op("neg")
        new = edit(g, lambda g: g.rename_tensor("sq", "neg"), monkeypatch)
        assert new.producer("neg") == Slot("sq", "out", 0)

    def test_add_and_remove_initializer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        k = Initializer.from_array("k", np.full(4, 2.0, np.float32))
        new = edit(g, lambda g: g.add_initializer(k), monkeypatch)
        assert new.initializers["k"] is k and new.is_constant("k")
        back = edit(new, lambda g: g.remove_initializer("k"), monkeypatch)
        assert "k" not in back.initializers
        with pytest.raises(DuplicateProducer):
            g.add_initializer(Initializer.from_array("r1", np.zeros(1, np.float32)))
        with pytest.raises(InvalidGraph, match="still read by c1, c2"):
            g.remove_initializer("w")
        with pytest.raises(InvalidGraph, match="no initializer"):
            g.remove_initializer("ghost")

    def test_with_outputs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(g, lambda g: g.with_outputs(["add", "r1"]), monkeypatch)
        assert new.outputs == ("add", "r1") and new.is_graph_output("r1")
        with pytest.raises(DanglingInput, match="'ghost'"):
            g.with_outputs(["ghost"])

    def test_with_value_type(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        new = edit(g, lambda g: g.with_value_type("r1", F32), monkeypatch)
        assert new.tensor("r1").shape == (1, 4, 8, 8) and g.tensor("r1").shape is None

    def test_a_chain_of_edits_keeps_patching(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = small()
        for i in range(20):
            g = edit(
                g, lambda g, i=i: g.add_op(Op(f"n{i}", "Neg", ("r1",), (f"n{i}",))), monkeypatch
            )
        for i in range(0, 20, 2):
            g = edit(g, lambda g, i=i: g.remove_op(f"n{i}"), monkeypatch)
        assert len(g) == 15
        assert len(g.consumers("r1")) == 3 + 10

    def test_edit_without_built_index_leaves_it_lazy(self) -> None:
        g = small()
        assert g._cache.index is None  # nobody asked for it yet
        new = g.with_value_type("r1", F32)
        assert new._cache.index is None  # nothing to patch, nothing built
        check_invariants(new)

    def test_subgraph_capture_blocks_rename(self) -> None:
        body = OpaqueAttribute("GRAPH", b"")
        g = Graph.build(
            [
                Op("r", "Relu", ("x",), ("r",)),
                Op("if", "If", ("c",), ("y",), {"then_branch": body}, implicit_inputs=("r",)),
            ],
            inputs=["x", "c"],
            outputs=["y"],
        )
        with pytest.raises(InvalidGraph, match="sub-graphs of if"):
            g.rename_tensor("r", "s")
        with pytest.raises(InvalidGraph, match="already used"):
            g.rename_tensor("x", "r")
        # the capture orders the If after its producer, and keeps the producer alive
        assert list(g.order) == ["r", "if"]
        with pytest.raises(DanglingInput):
            Graph.build(
                [Op("if", "If", ("c",), ("y",), implicit_inputs=("ghost",))],
                inputs=["c"],
                outputs=["y"],
            )


def test_check_invariants_reports_a_tampered_index() -> None:
    """A cached index that disagrees with a fresh one is an invariant violation."""
    g = small()
    g.index  # build it
    wrong = GraphIndex.build([g.ops["c1"], g.ops["r1"]])
    g._cache.index = wrong
    with pytest.raises(InvalidGraph, match="index differs"):
        check_invariants(g)


def test_check_invariants_lists_structural_problems() -> None:
    """Invariant violations in a hand-made value are all reported."""
    g = small()
    broken = attrs.evolve(g, order=g.order.remove("r1"), outputs=("ghost",))
    with pytest.raises(InvalidGraph) as e:
        check_invariants(broken)
    text = " | ".join(e.value.problems)
    assert "missing from order" in text and "'ghost' is not produced" in text
    assert fusekit.InvalidGraph is InvalidGraph


# --------------------------------------------------------------------------------------------
# Bulk construction helpers used by the loader


def test_promote_to_old_generation_moves_young_objects() -> None:
    """Fresh objects leave the young generation at once (so no collection walks them now)."""
    import gc

    from fusekit._util import promote_to_old_generation

    was = gc.isenabled()
    gc.disable()
    try:
        fresh = [object()]
        assert any(o is fresh for o in gc.get_objects(0))
        promote_to_old_generation()
        assert not any(o is fresh for o in gc.get_objects(0))
        assert any(o is fresh for o in gc.get_objects(2))
        gc.freeze()  # an application's own frozen objects are left alone
        frozen = gc.get_freeze_count()
        promote_to_old_generation()
        assert gc.get_freeze_count() == frozen
        gc.unfreeze()
    finally:
        if was:
            gc.enable()
