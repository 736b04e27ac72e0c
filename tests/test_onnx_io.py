"""ONNX in and out: sources, names, laziness, edits written back, sub-graphs, external data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusekit
from fusekit import Graph, Initializer, InvalidModel, Op, TensorType
from fusekit.examples import example_model_path
from fusekit.onnx_io import ModelExtras

from ._roundtrip import outputs_equal, run_ort, structural_differences

F = TensorProto.FLOAT


def conv_relu_model(**node_names: str) -> onnx.ModelProto:
    """x -> Conv(w, b) -> Relu -> Mul(r, r) -> y, names overridable, with value_info on r."""
    w = numpy_helper.from_array(np.full((2, 3, 1, 1), 0.5, np.float32), "w")
    b = numpy_helper.from_array(np.array([0.1, -0.2], np.float32), "b")
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], name=node_names.get("conv", "conv"), pads=[0, 0, 0, 0]
        ),
        helper.make_node("Relu", ["c"], ["r"], name=node_names.get("relu", "relu")),
        helper.make_node("Mul", ["r", "r"], ["y"], name=node_names.get("mul", "mul")),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 2, 4, 4])],
        initializer=[w, b],
        value_info=[helper.make_tensor_value_info("r", F, [1, 2, 4, 4])],
        doc_string="a doc string",
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, {"author": "fusekit tests"})
    return m


FEEDS = {"x": np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)}


class TestSources:
    """load accepts a path (str or Path), bytes-like objects and a ModelProto."""

    @pytest.mark.parametrize("kind", ["str", "path", "bytes", "bytearray", "memoryview", "proto"])
    def test_every_source_kind(self, kind: str, tmp_path: Path) -> None:
        m = conv_relu_model()
        data = m.SerializeToString()
        p = tmp_path / "m.onnx"
        p.write_bytes(data)
        source: Any = {
            "str": str(p),
            "path": p,
            "bytes": data,
            "bytearray": bytearray(data),
            "memoryview": memoryview(data),
            "proto": m,
        }[kind]
        g = fusekit.load(source)
        assert list(g.order) == ["conv", "relu", "mul"]
        assert fusekit.to_model(g).SerializeToString() == data

    def test_model_proto_is_copied(self) -> None:
        m = conv_relu_model()
        data = m.SerializeToString()
        g = fusekit.load(m)
        m.graph.node[0].op_type = "Changed"  # the caller's proto, after loading
        del m.graph.initializer[:]
        assert g.op("conv").op_type == "Conv"
        assert fusekit.to_model(g).SerializeToString() == data

    def test_unknown_source_type(self) -> None:
        with pytest.raises(InvalidModel, match="cannot load a int"):
            fusekit.load(42)  # type: ignore[arg-type]

    def test_bundled_example(self) -> None:
        g = fusekit.load(example_model_path())
        assert len(g) == 566
        assert fusekit.to_model(g).SerializeToString() == example_model_path().read_bytes()


class TestNames:
    """Unnamed and duplicate node names get deterministic unique names, restored on export."""

    def test_unnamed_and_duplicates(self) -> None:
        m = conv_relu_model(conv="", relu="Conv_0", mul="Conv_0")
        data = m.SerializeToString()
        g = fusekit.load(data)
        # the named Relu keeps "Conv_0"; the unnamed Conv (#0) would be "Conv_0" too, so it
        # becomes "Conv_0__2"; the duplicate Mul then gets the next free suffix
        assert list(g.order) == ["Conv_0__2", "Conv_0", "Conv_0__3"]
        assert dict(g.original_names) == {"Conv_0__2": "", "Conv_0__3": "Conv_0"}
        assert list(fusekit.load(data).order) == list(g.order)  # deterministic
        back = fusekit.to_model(g)
        assert [n.name for n in back.graph.node] == ["", "Conv_0", "Conv_0"]
        assert back.SerializeToString() == data

    def test_invented_name_is_dropped_with_its_op(self) -> None:
        g = fusekit.load(conv_relu_model(mul="").SerializeToString())
        assert dict(g.original_names) == {"Mul_2": ""}
        g2 = g.replace_op("Mul_2", Op("square", "Mul", ("r", "r"), ("y",)))
        assert dict(g2.original_names) == {}
        assert [n.name for n in fusekit.to_model(g2).graph.node] == ["conv", "relu", "square"]


class TestLaziness:
    """Loading decodes no attribute and no weight; writing back decodes none either."""

    def test_nothing_decoded_by_load_or_to_model(self) -> None:
        g = fusekit.load(conv_relu_model().SerializeToString())
        fusekit.to_model(g)
        assert all(op.attributes._items is None for op in g)
        assert all(i._array is None for i in g.initializers.values())
        assert g.op("conv").attributes["pads"] == (0, 0, 0, 0)  # decoded on demand
        assert g.initializers["b"].array().tolist() == pytest.approx([0.1, -0.2])

    def test_extras_tables_are_built_on_demand(self) -> None:
        g = fusekit.load(conv_relu_model().SerializeToString())
        extras = g.extras
        assert isinstance(extras, ModelExtras)
        assert extras._value_info is None
        assert set(extras.value_info) == {"r"} and set(extras.input_info) == {"x"}
        assert set(extras.output_info) == {"y"}


class TestEditsWrittenBack:
    """Edited graphs export valid models that compute the same thing."""

    def test_renamed_graph_input_keeps_its_type(self) -> None:
        m = conv_relu_model()
        g = fusekit.load(m).rename_tensor("x", "image").rename_tensor("r", "act")
        back = fusekit.to_model(g)
        onnx.checker.check_model(back, full_check=True)
        assert back.graph.input[0].name == "image"
        assert back.graph.input[0].type == m.graph.input[0].type
        assert [vi.name for vi in back.graph.value_info] == ["act"]
        got = run_ort(back.SerializeToString(), {"image": FEEDS["x"]})
        assert outputs_equal(run_ort(m.SerializeToString(), FEEDS), got)

    def test_renamed_initializer_keeps_its_bytes(self) -> None:
        m = conv_relu_model()
        back = fusekit.to_model(fusekit.load(m).rename_tensor("w", "weight"))
        inits = {t.name: t for t in back.graph.initializer}
        assert inits["weight"].raw_data == m.graph.initializer[0].raw_data
        assert "w" not in inits and back.graph.node[0].input[1] == "weight"
        assert outputs_equal(
            run_ort(m.SerializeToString(), FEEDS), run_ort(back.SerializeToString(), FEEDS)
        )

    def test_changed_attributes_are_reencoded(self) -> None:
        m = conv_relu_model()
        g = fusekit.load(m)
        conv = g.op("conv")
        g2 = g.replace_op(
            "conv",
            Op("conv", "Conv", conv.inputs, conv.outputs, conv.attributes.set("strides", (2, 2))),
        )
        back = fusekit.to_model(g2)
        attrs = {a.name: helper.get_attribute_value(a) for a in back.graph.node[0].attribute}
        assert attrs == {"pads": [0, 0, 0, 0], "strides": [2, 2]}
        assert fusekit.to_model(g).graph.node[0] == m.graph.node[0]  # the original untouched

    def test_python_built_ops_and_initializers(self) -> None:
        m = conv_relu_model()
        g = fusekit.load(m)
        scale = Initializer.from_array("scale", np.array([2.0], np.float32))
        g2 = g.add_initializer(scale).add_op(Op("scaled", "Mul", ("y", "scale"), ("z",)))
        g2 = (
            g2.add_op(
                Op("clip", "Clip", ("z",), ("out",), domain=""),
            )
            .with_outputs(["out"])
            .with_value_type("out", TensorType(F, (1, 2, 4, 4)))
        )
        back = fusekit.to_model(g2)
        onnx.checker.check_model(back, full_check=True)
        assert back.graph.node[-1].name == "clip" and back.graph.initializer[-1].name == "scale"
        (y,) = run_ort(m.SerializeToString(), FEEDS)
        (out,) = run_ort(back.SerializeToString(), FEEDS)
        assert np.array_equal(out, y * np.float32(2.0))

    def test_attribute_value_kinds_round_trip(self) -> None:
        values = {
            "i": 3,
            "f": 0.5,
            "s": "text",
            "ints": (1, 2),
            "floats": (0.25, 0.5),
            "strings": ("a", "b"),
            "t": np.arange(4, dtype=np.int64),
        }
        g = Graph.build(
            [Op("c", "Custom", ("x",), ("y",), values, domain="test.domain")],
            inputs={"x": TensorType(F, (1,))},
            outputs=["y"],
        )
        again = fusekit.load(fusekit.to_model(g))
        assert again.op("c").attributes == values
        assert again.op("c").domain == "test.domain"

    def test_scalar_and_strided_arrays_keep_their_shape(self) -> None:
        """A 0-d weight or Constant value stays 0-d; a transposed (strided) array keeps its
        values (regression: ascontiguousarray made scalars shape (1,))."""
        strided = np.arange(6, dtype=np.float32).reshape(2, 3).T
        g = Graph.build(
            [
                Op("k", "Constant", (), ("half",), {"value": np.array(0.5, np.float32)}),
                Op("m", "Mul", ("x", "half"), ("a",)),
                Op("s", "Add", ("a", "lo"), ("b",)),
                Op("t", "Add", ("b", "w"), ("y",)),
            ],
            inputs={"x": TensorType(F, (3, 2))},
            outputs=["y"],
            initializers=[
                Initializer.from_array("lo", np.array(-1.0, np.float32)),
                Initializer.from_array("w", strided),
            ],
            value_types={"y": TensorType(F, (3, 2))},
        )
        back = fusekit.load(fusekit.to_model(g))
        assert back.initializers["lo"].dims == () and back.initializers["lo"].array().shape == ()
        assert np.array_equal(back.initializers["w"].array(), strided)
        assert back.op("k").attributes["value"].shape == ()
        x = np.ones((3, 2), np.float32)
        (y,) = run_ort(fusekit.to_model(g).SerializeToString(), {"x": x})
        assert np.array_equal(y, x * 0.5 - 1.0 + strided)

    def test_value_types_added_in_python_are_written_sorted(self) -> None:
        g = fusekit.load(conv_relu_model())
        g = g.with_value_type("y", TensorType(F, (1, 2, 4, 4)))  # an output: not value_info
        # added in this order, written sorted after the file's own
        g = g.with_value_type("c", TensorType(F, (1, 2, 4, 4)))
        g = g.with_value_type("b", TensorType(F, (2,)))
        back = fusekit.to_model(g)
        assert [vi.name for vi in back.graph.value_info] == ["r", "b", "c"]
        onnx.checker.check_model(back, full_check=True)

    def test_header_metadata_and_doc_strings_survive_an_edit(self) -> None:
        m = conv_relu_model()
        back = fusekit.to_model(fusekit.load(m).rename_tensor("y", "out"))
        assert back.metadata_props == m.metadata_props
        assert back.graph.doc_string == "a doc string"
        assert back.opset_import == m.opset_import and back.ir_version == 8


def test_graph_built_in_python_exports_a_runnable_model() -> None:
    """A graph with no ONNX origin gets a default header and runs in onnxruntime."""
    g = Graph.build(
        [Op("r", "Relu", ("x",), ("y",))],
        inputs={"x": TensorType(F, (2, 3))},
        outputs=["y"],
        value_types={"y": TensorType(F, (2, 3))},
        name="tiny",
    )
    m = fusekit.to_model(g)
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.name == "tiny" and m.producer_name == "fusekit"
    x = np.array([[-1, 0, 1], [2, -3, 4]], np.float32)
    assert np.array_equal(run_ort(m.SerializeToString(), {"x": x})[0], np.maximum(x, 0))


def if_model(*, producer_after_if: bool) -> onnx.ModelProto:
    """``y = If(cond, then: t + 1, else: t - 1)`` with ``t = Relu(x)`` captured by both bodies."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")

    def branch(op: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node(op, ["t", "one"], [f"{op}_out"])],
            op,
            [],
            [helper.make_tensor_value_info(f"{op}_out", F, [2])],
        )

    relu = helper.make_node("Relu", ["x"], ["t"], name="relu")
    iff = helper.make_node(
        "If", ["cond"], ["y"], name="if", then_branch=branch("Add"), else_branch=branch("Sub")
    )
    graph = helper.make_graph(
        [iff, relu] if producer_after_if else [relu, iff],
        "g",
        [
            helper.make_tensor_value_info("x", F, [2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", F, [2])],
        initializer=[one],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


class TestSubgraphs:
    """Tensors read inside If/Loop bodies order the op after their producers."""

    def test_captures_are_implicit_inputs(self) -> None:
        g = fusekit.load(if_model(producer_after_if=False))
        assert g.op("if").implicit_inputs == ("t", "one")
        assert g.op("if").inputs == ("cond",)
        assert (
            fusekit.to_model(g).SerializeToString()
            == if_model(producer_after_if=False).SerializeToString()
        )

    def test_file_order_with_if_before_its_capture_is_repaired(self) -> None:
        bad = if_model(producer_after_if=True)
        g = fusekit.load(bad)
        assert list(g.order) == ["relu", "if"]
        back = fusekit.to_model(g)
        assert structural_differences(bad, back) == []
        onnx.checker.check_model(back, full_check=True)
        feeds = {"x": np.array([-1.0, 2.0], np.float32), "cond": np.array(True)}
        assert run_ort(back.SerializeToString(), feeds)[0].tolist() == [1.0, 3.0]

    def test_subgraph_attribute_is_opaque_but_intact(self) -> None:
        g = fusekit.load(if_model(producer_after_if=False))
        then = g.op("if").attributes["then_branch"]
        assert then.kind == "GRAPH"
        parsed = onnx.AttributeProto.FromString(then.payload)
        assert parsed.g.node[0].op_type == "Add"


def sparse_model() -> onnx.ModelProto:
    values = numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "s")
    indices = numpy_helper.from_array(np.array([1, 4], np.int64), "s_idx")
    sparse = helper.make_sparse_tensor(values, indices, [6])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "s"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", F, [6])],
        [helper.make_tensor_value_info("y", F, [6])],
        sparse_initializer=[sparse],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_sparse_initializer_decodes_and_renames() -> None:
    """A sparse initializer is dense on demand, and a rename reaches its values' name."""
    m = sparse_model()
    g = fusekit.load(m)
    assert g.initializers["s"].array().tolist() == [0, 5, 0, 0, 7, 0]
    assert fusekit.to_model(g).SerializeToString() == m.SerializeToString()
    back = fusekit.to_model(g.rename_tensor("s", "bias"))
    assert back.graph.sparse_initializer[0].values.name == "bias"
    assert back.graph.node[0].input[1] == "bias"
    onnx.checker.check_model(back)


class TestExternalData:
    """Weights in external files are read lazily and never lost on save."""

    @pytest.fixture
    def external(self, tmp_path: Path) -> Path:
        m = conv_relu_model()
        path = tmp_path / "src" / "model.onnx"
        path.parent.mkdir()
        onnx.save_model(
            m, path, save_as_external_data=True, location="weights.bin", size_threshold=0
        )
        return path

    def test_load_from_path_decodes_external_weights(self, external: Path) -> None:
        g = fusekit.load(external)
        assert g.initializers["w"].array().shape == (2, 3, 1, 1)
        assert float(g.initializers["w"].array()[0, 0, 0, 0]) == 0.5

    def test_load_from_bytes_cannot_find_the_weights(self, external: Path) -> None:
        g = fusekit.load(external.read_bytes())
        with pytest.raises(InvalidModel, match="external file") as e:
            g.initializers["w"].array()
        assert "'w'" in str(e.value)

    def test_save_elsewhere_embeds_the_weights(self, external: Path, tmp_path: Path) -> None:
        out = tmp_path / "other" / "copy.onnx"
        out.parent.mkdir()
        fusekit.save(fusekit.load(external), out)
        saved = onnx.load(out)
        assert not any(t.data_location == TensorProto.EXTERNAL for t in saved.graph.initializer)
        assert outputs_equal(
            run_ort(saved.SerializeToString(), FEEDS),
            run_ort(conv_relu_model().SerializeToString(), FEEDS),
        )

    def test_save_beside_keeps_the_reference(self, external: Path) -> None:
        out = external.parent / "copy.onnx"
        fusekit.save(fusekit.load(external), out)
        raw = onnx.load(out, load_external_data=False)
        assert all(t.data_location == TensorProto.EXTERNAL for t in raw.graph.initializer)
        assert outputs_equal(
            run_ort_path(out), run_ort(conv_relu_model().SerializeToString(), FEEDS)
        )


def run_ort_path(path: Path) -> list[Any]:
    import onnxruntime as ort

    return list(
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, FEEDS)
    )


def test_save_writes_the_model_and_no_temp_file(tmp_path: Path) -> None:
    """save writes exactly to_model's bytes, then nothing else is left in the directory."""
    g = fusekit.load(conv_relu_model())
    out = tmp_path / "out.onnx"
    fusekit.save(g, out)
    assert out.read_bytes() == fusekit.to_model(g).SerializeToString()
    assert os.listdir(tmp_path) == ["out.onnx"]
    fusekit.save(g.rename_tensor("x", "image"), out)  # over an existing file
    assert fusekit.load(out).inputs == ("image",)
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_saved_files_follow_the_umask(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600); the result must look like a plain write."""
    from fusekit.onnx_io import write_bytes_atomic

    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def _fresh_index(g: Graph) -> Any:
    from fusekit._topology import Topology

    return Topology.build((g.ops[n] for n in g.order), g.initializers, g.outputs)


def test_the_loaders_op_list_numbers_the_index_as_the_ops_by_name_do() -> None:
    """``load`` hands its op list (in file order, already topological) to the first index
    build instead of a PMap lookup per op; the index is the one a lookup per op gives, the
    list is dropped once used, and a file out of order keeps the lookups (its order is sorted
    afresh)."""
    g = fusekit.load(example_model_path())
    listed = g._cache.ops_in_order
    assert listed is not None and [op.name for op in listed] == list(g.order)
    assert g.index.snapshot() == _fresh_index(g).snapshot()
    assert g._cache.ops_in_order is None

    m = conv_relu_model()
    m.graph.node.reverse()  # mul, relu, conv: not in order
    h = fusekit.load(m)
    assert h._cache.ops_in_order is None
    assert [h.ops[n].op_type for n in h.order] == ["Conv", "Relu", "Mul"]
    assert h.index.snapshot() == _fresh_index(h).snapshot()
