"""A tiny builder for hand-made test graphs.

``G().conv("c1", "x").relu("r1", "c1").build(outputs=["r1"])`` makes a graph whose op names
are also the names of their (first) output tensors, so tests read like the diagrams in
../shared/reference/ppq-behaviour.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusekit import Graph, Initializer, Op, TensorType

FLOAT = 1
SHAPE = (1, 4, 5, 5)


class G:
    """Accumulates ops, graph inputs and initializers; :meth:`build` validates the graph."""

    def __init__(self, inputs: tuple[str, ...] = ("x",)):
        self.ops: list[Op] = []
        self.inputs = {n: TensorType(FLOAT, SHAPE) for n in inputs}
        self.inits: dict[str, Initializer] = {}

    def const(self, name: str, value: Any) -> str:
        """An initializer called ``name``."""
        if name not in self.inits:
            self.inits[name] = Initializer.from_array(name, np.asarray(value, dtype=np.float32))
        return name

    def op(
        self, op_type: str, name: str, inputs: list[str], n_out: int = 1, **attributes: Any
    ) -> G:
        """Any op; outputs are ``name`` (one output) or ``name:0, name:1, ...``."""
        outs = [name] if n_out == 1 else [f"{name}:{i}" for i in range(n_out)]
        self.ops.append(Op(name, op_type, tuple(inputs), tuple(outs), attributes))
        return self

    def conv(self, name: str, x: str, bias: bool = True) -> G:
        """Conv with a 4x4x1x1 constant weight (and bias)."""
        w = self.const(f"{name}.w", np.ones((4, 4, 1, 1)) * 0.1)
        ins = [x, w]
        if bias:
            ins.append(self.const(f"{name}.b", np.zeros(4)))
        return self.op("Conv", name, ins)

    def relu(self, name: str, x: str) -> G:
        return self.op("Relu", name, [x])

    def clip(self, name: str, x: str, lo: float = 0.0, hi: float = 6.0) -> G:
        return self.op(
            "Clip", name, [x, self.const(f"{name}.min", lo), self.const(f"{name}.max", hi)]
        )

    def unary(self, op_type: str, name: str, x: str) -> G:
        return self.op(op_type, name, [x])

    def binary(self, op_type: str, name: str, a: str, b: str) -> G:
        return self.op(op_type, name, [a, b])

    def build(self, outputs: list[str]) -> Graph:
        """The validated graph."""
        return Graph.build(self.ops, self.inputs, outputs, self.inits.values())
