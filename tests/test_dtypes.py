"""Element-type inference (:mod:`fusekit.dtypes`): the rule table, and agreement with onnx.

Quantization must never touch an integer or boolean tensor, so every rule of the table has a
case here, and on real models the inferred types are checked against onnx's own shape
inference wherever it knows a type.
"""

from __future__ import annotations

import gzip

import numpy as np
import onnx
import pytest

import fusekit
from fusekit import Graph, Initializer, Op, TensorType
from fusekit.dtypes import BOOL, FLOAT_TYPES, INT64, elem_types, is_float_type, tensor_elem_types
from fusekit.graph import OpaqueAttribute

from .conftest import CORPUS

FLOAT, INT32, FLOAT16, STRING = 1, 6, 10, 8


def _graph(
    ops: list[Op],
    inits: tuple[Initializer, ...] = (),
    outputs: list[str] | None = None,
    x_type: int = FLOAT,
) -> Graph:
    outs = outputs or [t for t in ops[-1].outputs if t]
    return Graph.build(ops, {"x": TensorType(x_type, (2, 3))}, outs, inits)


class TestRules:
    """One case per row of the rule table."""

    @pytest.mark.parametrize("op_type", ["Shape", "Size", "NonZero", "ArgMax", "ArgMin"])
    def test_index_producers_give_int64(self, op_type: str) -> None:
        g = _graph([Op("o", op_type, ("x",), ("y",))])
        assert elem_types(g)["y"] == INT64

    @pytest.mark.parametrize("op_type", ["Equal", "Greater", "Less", "And", "Not", "IsNaN"])
    def test_comparisons_give_bool(self, op_type: str) -> None:
        ins = ("x",) if op_type in {"Not", "IsNaN"} else ("x", "x")
        g = _graph([Op("o", op_type, ins, ("y",))])
        assert elem_types(g)["y"] == BOOL

    def test_cast_reads_its_to_attribute(self) -> None:
        g = _graph(
            [Op("c", "Cast", ("x",), ("y",), {"to": INT32}), Op("r", "Relu", ("y",), ("z",))]
        )
        types = elem_types(g)
        assert types["y"] == INT32
        assert types["z"] == INT32  # everything else: the first data input's type

    def test_constant_value_kinds(self) -> None:
        ops = [
            Op("k1", "Constant", (), ("a",), {"value_float": 1.0}),
            Op("k2", "Constant", (), ("b",), {"value_ints": [1, 2]}),
            Op("k3", "Constant", (), ("c",), {"value": np.zeros(2, np.int32)}),
            Op("k4", "Constant", (), ("d",), {"value_string": b"s"}),
            Op("add", "Add", ("x", "a"), ("y",)),
        ]
        types = elem_types(_graph(ops, outputs=["y", "b", "c", "d"]))
        assert (types["a"], types["b"], types["c"], types["d"]) == (FLOAT, INT64, INT32, STRING)

    def test_constant_of_shape(self) -> None:
        ops = [
            Op("s", "Shape", ("x",), ("s",)),
            Op("z", "ConstantOfShape", ("s",), ("z",)),
            Op("o", "ConstantOfShape", ("s",), ("o",), {"value": np.zeros(1, np.int64)}),
        ]
        types = elem_types(_graph(ops, outputs=["z", "o"]))
        assert (types["s"], types["z"], types["o"]) == (INT64, FLOAT, INT64)

    def test_where_takes_its_second_input(self) -> None:
        ops = [
            Op("cmp", "Greater", ("x", "x"), ("m",)),
            Op("w", "Where", ("m", "x", "x"), ("y",)),
        ]
        types = elem_types(_graph(ops))
        assert types["m"] == BOOL and types["y"] == FLOAT

    def test_topk_indices_and_unique_extras(self) -> None:
        k = Initializer.from_array("k", np.array([1], np.int64))
        ops = [
            Op("t", "TopK", ("x", "k"), ("v", "i")),
            Op("u", "Unique", ("x",), ("uy", "ui", "uinv", "ucount")),
        ]
        types = elem_types(_graph(ops, (k,), outputs=["v", "i", "uy", "ui", "uinv", "ucount"]))
        assert types["v"] == FLOAT and types["i"] == INT64
        assert types["uy"] == FLOAT and types["ui"] == types["uinv"] == types["ucount"] == INT64

    def test_dequantize_is_float_quantize_follows_its_zero_point(self) -> None:
        s = Initializer.from_array("s", np.array(0.1, np.float32))
        zp = Initializer.from_array("zp", np.array(0, np.uint8))
        ops = [
            Op("q", "QuantizeLinear", ("x", "s", "zp"), ("q",)),
            Op("q8", "QuantizeLinear", ("x", "s"), ("q8",)),
            Op("dq", "DequantizeLinear", ("q", "s", "zp"), ("d",)),
        ]
        types = elem_types(_graph(ops, (s, zp), outputs=["d", "q8"]))
        assert types["q"] == 2  # uint8, from the zero point
        assert types["q8"] == 2  # no zero point: uint8 by the operator's default
        assert types["d"] == FLOAT

    def test_control_flow(self) -> None:
        """An If's first input is its boolean condition: its outputs must not be typed bool
        (silero_vad_16k_op15's decoder was never quantized because of that)."""
        body = OpaqueAttribute("GRAPH", b"")
        m = Initializer.from_array("m", np.array(3, np.int64))
        ops = [
            Op("cond", "Greater", ("x", "x"), ("c",)),
            Op("if", "If", ("c",), ("i",), {"then_branch": body, "else_branch": body}),
            Op("loop", "Loop", ("m", "c", "x", "m"), ("lx", "lm", "ls"), {"body": body}),
            Op("scan", "Scan", ("x", "x"), ("sx", "ss"), {"body": body, "num_scan_inputs": 1}),
        ]
        types = elem_types(_graph(ops, (m,), outputs=["i", "lx", "lm", "ls", "sx", "ss"]))
        assert types["i"] == 0  # unknown, not BOOL
        assert (types["lx"], types["lm"], types["ls"]) == (FLOAT, INT64, 0)
        assert (types["sx"], types["ss"]) == (FLOAT, 0)

    def test_declared_types_win(self) -> None:
        ops = [Op("r", "Relu", ("x",), ("y",))]
        g = Graph.build(
            ops,
            {"x": TensorType(FLOAT, (2,))},
            ["y"],
            value_types={"y": TensorType(FLOAT16, (2,))},
        )
        assert elem_types(g)["y"] == FLOAT16

    def test_initializer_types(self) -> None:
        w = Initializer.from_array("w", np.ones(3, np.int32))
        g = _graph([Op("a", "Add", ("w", "w"), ("y",))], (w,))
        assert elem_types(g)["w"] == INT32 and elem_types(g)["y"] == INT32

    def test_custom_domain_outputs_are_unknown(self) -> None:
        g = _graph([Op("c", "MyCustomOp", ("x",), ("y",))])
        assert elem_types(g)["y"] == 0
        assert is_float_type(0)  # unknown is treated as float (it may be quantized)

    def test_float_types(self) -> None:
        assert {FLOAT, FLOAT16, 11, 16} <= FLOAT_TYPES
        assert not any(is_float_type(t) for t in (2, 3, 6, INT64, BOOL, STRING))

    def test_computed_once_per_graph(self) -> None:
        g = _graph([Op("r", "Relu", ("x",), ("y",))])
        assert tensor_elem_types(g) is tensor_elem_types(g)
        assert elem_types(g) is elem_types(g)


@pytest.mark.parametrize("model", ["bert24_encoder_op13", "silero_vad_16k_op15", "yolov5s_silu"])
def test_agrees_with_onnx_shape_inference(model: str) -> None:
    """Wherever onnx's shape inference knows a tensor's element type, fusekit infers the same."""
    with gzip.open(CORPUS / "models" / f"{model}.onnx.gz") as f:
        proto = onnx.load_model_from_string(f.read())
    graph = fusekit.load(proto)
    inferred = onnx.shape_inference.infer_shapes(proto)
    known = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    types = elem_types(graph)
    compared = {name: t for name, t in known.items() if name in types}
    assert len(compared) > 20
    wrong = {n: (types[n], t) for n, t in compared.items() if types[n] not in (0, t)}
    assert not wrong, wrong
    non_float = [n for n, t in compared.items() if not is_float_type(t)]
    if model != "yolov5s_silu":
        assert non_float, "the model has integer/bool tensors: the comparison must reach them"
