"""Checks that a model is something fusekit can quantize, for the CLI and library callers.

The library functions (:func:`~fusekit.dispatch.init_plan`, the passes, ``Pipeline.run``)
accept any graph, quantized or not: they are pure functions over a graph value, and a test or
a tool may well want to plan an already-quantized graph on purpose. The command line calls
:func:`require_float_model` before any work, because a user who passes a QDQ model to
``fusekit fuse`` gets a doubly-quantized model and an SQNR measured against the wrong
reference; a library caller who wants the same guard calls it too.
"""

from __future__ import annotations

from collections import Counter

from .errors import AlreadyQuantized
from .graph import Graph

__all__ = ["QUANTIZATION_OP_TYPES", "quantization_ops", "require_float_model"]

#: Op types that only a quantized model holds: the Q/DQ pair, onnxruntime's QOperator format
#: (QLinear*), integer kernels and dynamic quantization.
QUANTIZATION_OP_TYPES = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)

# onnxruntime's quantization tools write these in the ONNX domain and in com.microsoft
_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})


def _is_quantization_op(op_type: str, domain: str) -> bool:
    if domain not in _DOMAINS:
        return False
    return op_type in QUANTIZATION_OP_TYPES or op_type.startswith("QLinear")


def quantization_ops(graph: Graph) -> dict[str, int]:
    """``{op_type: count}`` of the quantization nodes in ``graph``'s main graph (empty: float)."""
    counts = Counter(op.op_type for op in graph if _is_quantization_op(op.op_type, op.domain))
    return dict(sorted(counts.items()))


def require_float_model(graph: Graph, source: str | None = None) -> None:
    """Raise :class:`~fusekit.errors.AlreadyQuantized` if ``graph`` holds quantization nodes.

    ``source`` (the model's path) is named in the message.
    """
    counts = quantization_ops(graph)
    if counts:
        raise AlreadyQuantized(counts, source)
