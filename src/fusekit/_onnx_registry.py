"""Is a name an ONNX operator? (The one question the core asks of ``onnx.defs``.)"""

from __future__ import annotations

from functools import cache

import onnx.defs

__all__ = ["is_onnx_op"]


@cache
def is_onnx_op(op_type: str, domain: str = "") -> bool:
    """True if ``op_type`` is an ONNX operator (default or ``ai.onnx.ml`` domain)."""
    return bool(onnx.defs.has(op_type, domain) or onnx.defs.has(op_type, "ai.onnx.ml"))
