"""Is a name an ONNX operator? (The one question the core asks of ``onnx.defs``.)"""

from __future__ import annotations

from functools import cache

import onnx.defs

__all__ = ["is_onnx_op"]


@cache
def is_onnx_op(op_type: str, domain: str = "") -> bool:
    """True if ``op_type`` is an ONNX operator (default or ``ai.onnx.ml`` domain).

    A name that is not valid Unicode text (a lone surrogate, as from a damaged JSON rule file)
    names no operator: ``onnx.defs`` cannot take it and would raise TypeError, so the caller
    reports it as an unknown op type instead.
    """
    try:
        op_type.encode("utf-8")
        domain.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(onnx.defs.has(op_type, domain) or onnx.defs.has(op_type, "ai.onnx.ml"))
