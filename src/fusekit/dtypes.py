"""Element types of every tensor, inferred without onnx shape inference.

Quantization only applies to floating-point tensors: an int64 attention mask or a boolean
condition must never get a Q/DQ pair. Models rarely declare the type of every intermediate
tensor, so :func:`elem_types` propagates types through the graph in topological order from what
is known (graph inputs, initializers, declared value_info) with a small table of rules: ops
that produce indices or shapes (Shape, ArgMax, NonZero, TopK's indices...), comparisons (bool),
Cast (its ``to`` attribute), Constant (its value), and, for everything else, the type of the
first data input. The core never imports onnx; type numbers are ONNX ``TensorProto.DataType``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .graph import Graph, OpaqueAttribute, onnx_elem_type

__all__ = ["BOOL", "FLOAT_TYPES", "INT64", "elem_types", "is_float_type"]

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


def elem_types(graph: Graph) -> Mapping[str, int]:
    """Tensor name -> ONNX element type (0 where it cannot be told), computed once per graph."""
    cache = graph._cache
    if cache.elem_types is not None:
        return cache.elem_types
    types: dict[str, int] = {}
    for name, tt in graph.value_types.items():
        if tt.elem_type:
            types[name] = tt.elem_type
    for name, init in graph.initializers.items():
        types.setdefault(name, init.elem_type)
    ops = graph.ops
    for name in graph.order:
        op = ops[name]
        t = op.op_type
        outs = op.outputs
        if op.domain not in ("", "ai.onnx"):
            guess = UNKNOWN
        elif t in _INDEX_OUT:
            guess = INT64
        elif t in _BOOL_OUT:
            guess = BOOL
        elif t in _FLOAT_OUT:
            guess = FLOAT
        elif t == "Cast":
            to = op.attributes.get("to")
            guess = int(to) if isinstance(to, int) else UNKNOWN
        elif t == "Constant":
            guess = _constant_type(op.attributes)
        elif t == "ConstantOfShape":
            guess = _attr_dtype(op.attributes["value"]) if "value" in op.attributes else FLOAT
        elif t in _FROM_INPUT1 and len(op.inputs) > 1:
            guess = types.get(op.inputs[1], UNKNOWN)
        elif t == "QuantizeLinear":
            zp = op.inputs[2] if len(op.inputs) > 2 else ""
            guess = types.get(zp, 2) if zp else 2
        else:
            first = next((x for x in op.inputs if x), "")
            guess = types.get(first, UNKNOWN) if first else UNKNOWN
        for k, out in enumerate(outs):
            if not out or out in types:
                continue
            if (t == "TopK" and k == 1) or (t == "Unique" and k > 0):
                types[out] = INT64
            else:
                types[out] = guess
    cache.elem_types = types
    return types
