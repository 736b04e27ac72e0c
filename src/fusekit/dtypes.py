"""Element types of every tensor, inferred without onnx shape inference.

Quantization only applies to floating-point tensors: an int64 attention mask or a boolean
condition must never get a Q/DQ pair. Models rarely declare the type of every intermediate
tensor, so :func:`elem_types` propagates types through the graph in topological order from what
is known (graph inputs, initializers, declared value_info) with a small table of rules: ops
that produce indices or shapes (Shape, ArgMax, NonZero, TopK's indices...), comparisons (bool),
Cast (its ``to`` attribute), Constant (its value), control flow (an If's outputs are unknown: its
first input is the boolean condition, not data; a Loop's or Scan's carried state keeps its initial
value's type), and, for everything else, the type of the first data input. The core never
imports onnx; type numbers are ONNX ``TensorProto.DataType``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .graph import Graph, OpaqueAttribute, onnx_elem_type

__all__ = ["BOOL", "FLOAT_TYPES", "INT64", "elem_types", "is_float_type", "tensor_elem_types"]

UNKNOWN, FLOAT, INT64, BOOL, FLOAT16, DOUBLE, BFLOAT16 = 0, 1, 7, 9, 10, 11, 16
#: Element types that can be quantized (0 = unknown is treated as float).
FLOAT_TYPES = frozenset({UNKNOWN, FLOAT, FLOAT16, DOUBLE, BFLOAT16})

_INDEX_OUT = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "NonMaxSuppression"})
_BOOL_OUT = frozenset(
    {
        "Equal",
        "Greater",
        "Less",
        "GreaterOrEqual",
        "LessOrEqual",
        "And",
        "Or",
        "Xor",
        "Not",
        "IsNaN",
        "IsInf",
    }
)
_FROM_INPUT1 = frozenset({"Where", "CastLike"})
_FLOAT_OUT = frozenset(
    {"DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}
)


_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def _scan_states(attributes: Mapping[str, Any], n_inputs: int) -> int:
    """How many of a Scan's inputs are loop state (the rest are scanned)."""
    n_scan = attributes.get("num_scan_inputs")
    return n_inputs - n_scan if isinstance(n_scan, int) else 0


def is_float_type(elem_type: int) -> bool:
    """True if tensors of this ONNX element type can be quantized (unknown counts as float)."""
    return elem_type in FLOAT_TYPES


def _attr_dtype(value: Any) -> int:
    if isinstance(value, np.ndarray):
        try:
            return onnx_elem_type(value.dtype)
        except Exception:
            return UNKNOWN
    if isinstance(value, OpaqueAttribute):
        return UNKNOWN
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT64
    if isinstance(value, float):
        return FLOAT
    return UNKNOWN


def _constant_type(attrs: Mapping[str, Any]) -> int:
    for key, t in (
        ("value_float", FLOAT),
        ("value_floats", FLOAT),
        ("value_int", INT64),
        ("value_ints", INT64),
        ("value_string", 8),
        ("value_strings", 8),
    ):
        if key in attrs:
            return t
    if "value" in attrs:
        return _attr_dtype(attrs["value"])
    return UNKNOWN


def tensor_elem_types(graph: Graph) -> list[int]:
    """Element type of every tensor id of ``graph.index`` (0 where it cannot be told).

    Computed once per graph value over the graph's topology (a 100k-op graph takes a
    fraction of a second); only Cast, Constant and ConstantOfShape ops have their attributes
    decoded. Op types that are not ONNX operators (custom domains) give unknown outputs.
    """
    return graph.derived(_tensor_elem_types)


def _tensor_elem_types(graph: Graph) -> list[int]:
    from ._onnx_registry import is_onnx_op

    ar = graph.index

    tensor_id = ar.tensor_id
    types = [UNKNOWN] * len(ar.tensor_names)
    known = [False] * len(types)
    for name, tt in graph.value_types.items():
        tid = tensor_id.get(name)
        if tid is not None and tt.elem_type:
            types[tid], known[tid] = tt.elem_type, True
    for name, init in graph.initializers.items():
        tid = tensor_id.get(name)
        if tid is not None and not known[tid]:
            types[tid], known[tid] = init.elem_type, True
    st, base, n_in, n_out, op_types = ar.slot_tensor, ar.slot_base, ar.n_in, ar.n_out, ar.op_types
    ops, names = graph.ops, ar.op_names
    standard: dict[str, bool] = {}
    for o in ar.order:
        t = op_types[o]
        b, ni = base[o], n_in[o]
        std = standard.get(t)
        if std is None:
            std = standard[t] = is_onnx_op(t)
        if not std:
            guess = UNKNOWN
        elif t in _INDEX_OUT:
            guess = INT64
        elif t in _BOOL_OUT:
            guess = BOOL
        elif t in _FLOAT_OUT:
            guess = FLOAT
        elif t == "Cast":
            to = ops[names[o]].attributes.get("to")
            guess = int(to) if isinstance(to, int) else UNKNOWN
        elif t == "Constant":
            guess = _constant_type(ops[names[o]].attributes)
        elif t == "ConstantOfShape":
            a = ops[names[o]].attributes
            guess = _attr_dtype(a["value"]) if "value" in a else FLOAT
        elif t in _FROM_INPUT1 and ni > 1:
            tid = st[b + 1]
            guess = types[tid] if tid >= 0 else UNKNOWN
        elif t in _CONTROL_FLOW:
            ob = b + ni
            for k in range(n_out[o]):
                tid = st[ob + k]
                if tid < 0 or known[tid]:
                    continue
                known[tid] = True
                # Loop(M, cond, v...) -> (v..., scan outputs); Scan(state..., scans...) ->
                # (state..., scan outputs); If -> unknown (the branches' types are not read)
                src = b + 2 + k if t == "Loop" else b + k
                n_state = ni - 2 if t == "Loop" else _scan_states(ops[names[o]].attributes, ni)
                carried = t != "If" and k < n_state and src < b + ni and st[src] >= 0
                types[tid] = types[st[src]] if carried else UNKNOWN
            continue
        elif t == "QuantizeLinear":
            tid = st[b + 2] if ni > 2 else -1
            guess = types[tid] if tid >= 0 else 2
        else:
            guess = UNKNOWN
            for s in range(b, b + ni):
                if st[s] >= 0:
                    guess = types[st[s]]
                    break
        ob = b + ni
        for k in range(n_out[o]):
            tid = st[ob + k]
            if tid < 0 or known[tid]:
                continue
            known[tid] = True
            types[tid] = INT64 if (t == "TopK" and k == 1) or (t == "Unique" and k > 0) else guess
    return types


def elem_types(graph: Graph) -> Mapping[str, int]:
    """Tensor name -> ONNX element type (0 where it cannot be told), computed once per graph."""
    return graph.derived(_elem_types_by_name)


def _elem_types_by_name(graph: Graph) -> dict[str, int]:
    return dict(zip(graph.index.tensor_names, tensor_elem_types(graph)))
