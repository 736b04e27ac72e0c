"""Which ops of a QDQ model onnxruntime's CPU provider really runs as int8 kernels, and why not.

A QDQ file says where values are quantized; the backend decides what runs in integer
arithmetic. onnxruntime fuses a *node unit* (``DequantizeLinear`` on each input -> op ->
``QuantizeLinear`` on the output) into one integer kernel (``QLinearConv``, ``QLinearMatMul``,
``QGemm``, ``MatMulIntegerToFloat``, ``QLinearAdd``, ...). Whatever its selectors do not match
runs in float between a DequantizeLinear and a QuantizeLinear: slower than the float model and
no longer what the plan promised. :func:`kernel_report` asks onnxruntime itself: it lets the CPU
provider optimize the model, reads the optimized graph back and says, for every
Conv/ConvTranspose/MatMul/Gemm of the *input* model, which kernel it became, and when that
kernel is float, the visible cause in the input graph.

How optimized nodes map back to input nodes (read from onnxruntime's
``core/optimizer/qdq_transformer/selectors_actions`` and checked on small models): the QDQ
actions replace the target node by a new node that keeps the target's *name* (``conv0`` stays
``conv0`` as ``QLinearConv``) and takes the QuantizeLinear's *output* tensor; float fusions
(``FusedConv``, ``FusedMatMul``, ``FusedGemm``) also keep the name; a fusion that builds a new
node appends its name (MatMul + Add -> Gemm ``fc/MatMulAddFusion``); the level-3 layout
transformers append ``_token_N`` (NHWC ``QLinearConv`` becomes ``conv0_token_1``). Nodes are
matched by name, then by the name without these suffixes, then by output tensor (for unnamed
nodes).

Optimization level: ``"extended"`` (ORT_ENABLE_EXTENDED, default) is where onnxruntime makes
every int8 decision: the QDQ selector/action transformer runs at level 2. ``"all"`` adds the
level-3 layout transforms (NCHWc blocked float convolutions, NHWC int8 convolutions with
Transposes around them): what this very CPU runs, but the saved graph is CPU-specific and the
int8/float split is the same. The report can read either.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InvalidData, ModelRunError
from .onnx_io import _read
from .runtime import first_line, import_onnxruntime, model_bytes

__all__ = [
    "COMPUTING_OPS",
    "INT8_KERNELS",
    "LEVELS",
    "KernelEntry",
    "KernelReport",
    "StrayQDQ",
    "kernel_report",
]

#: The ops whose int8-ness decides a quantized model's speed; :meth:`KernelReport.coverage`
#: counts these.
COMPUTING_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")

#: Node types of onnxruntime's optimized graph that compute on integers (besides every
#: ``QLinear*`` op, which counts too).
INT8_KERNELS = frozenset(
    {
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QAttention",
        "QEmbedLayerNormalization",
        "QOrderedMatMul",
    }
)

#: Ops of the input model that onnxruntime can run as a QLinear* kernel besides the computing
#: ops (reported as ``others``).
QLINEAR_CAPABLE = frozenset(
    {
        "Add",
        "Mul",
        "Sigmoid",
        "LeakyRelu",
        "Concat",
        "AveragePool",
        "GlobalAveragePool",
        "Softmax",
        "Where",
    }
)

#: Ops that move int8 values without computing: onnxruntime drops the DequantizeLinear/
#: QuantizeLinear around them and runs them on the 8-bit tensor (its QDQ "drop" rules; not
#: DepthToSpace/SpaceToDepth, which have no integer implementation).
DATA_MOVEMENT = frozenset(
    {
        "MaxPool",
        "Resize",
        "ReduceMax",
        "ReduceMin",
        "ArgMax",
        "Split",
        "Expand",
        "Flatten",
        "Gather",
        "GatherElements",
        "Reshape",
        "Slice",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)

#: Computing ops for which onnxruntime's CPU QDQ rules have no node unit at all.
NO_QDQ_RULE = frozenset({"ConvTranspose"})

#: ``level`` argument -> onnxruntime GraphOptimizationLevel attribute name.
LEVELS = {"extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}

_TOKEN = re.compile(r"(_token_\d+|/[A-Za-z0-9]*Fusion)+$")  # ORT suffixes of rewritten nodes
_QD = ("QuantizeLinear", "DequantizeLinear")


def _is_int8_kernel(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in INT8_KERNELS


@attrs.frozen
class KernelEntry:
    """What one op of the input model became in onnxruntime's optimized graph.

    ``op`` is the input node's name (its first output when unnamed), ``kernel`` the optimized
    node's type (``"QLinearConv"``, ``"Conv"``, ``"FusedConv"``, ...; ``""`` when the node
    disappeared), ``reason`` why it is not int8 (``""`` when it is).
    """

    op: str
    op_type: str
    int8: bool
    kernel: str
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "op": self.op,
            "op_type": self.op_type,
            "int8": self.int8,
            "kernel": self.kernel,
            "reason": self.reason,
        }


@attrs.frozen
class StrayQDQ:
    """A QuantizeLinear/DequantizeLinear left in the optimized graph that no int8 kernel uses.

    The backend executes such a quantization point in float (round, clamp, rescale) and the
    values around it are computed by float kernels: it costs time and accuracy and buys
    nothing. ``next_to`` names the float neighbours (producer of a Q, consumers of a DQ).
    """

    node: str
    op_type: str
    tensor: str
    next_to: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "node": self.node,
            "op_type": self.op_type,
            "tensor": self.tensor,
            "next_to": list(self.next_to),
        }


@attrs.frozen
class KernelReport:
    """Per-op int8/float verdicts of onnxruntime's CPU provider on one model.

    ``ops`` covers every Conv/ConvTranspose/MatMul/Gemm of the input model, ``others`` the
    quantized ops with possible QLinear kernels (Add, Mul, Sigmoid, Concat, pools, Softmax,
    ...) and the data-movement ops between a DequantizeLinear and a QuantizeLinear,
    ``stray_qdq`` the quantization points executed in float.
    """

    model: str
    level: str
    ops: tuple[KernelEntry, ...]
    others: tuple[KernelEntry, ...]
    stray_qdq: tuple[StrayQDQ, ...]
    ort_version: str
    optimized_op_types: tuple[tuple[str, int], ...] = ()

    def __getitem__(self, op: str) -> KernelEntry:
        """The entry of input node ``op`` (computing ops first, then the others)."""
        for e in self.ops + self.others:
            if e.op == op:
                return e
        raise KeyError(op)

    @property
    def int8_ops(self) -> tuple[KernelEntry, ...]:
        """The computing ops that run as int8 kernels."""
        return tuple(e for e in self.ops if e.int8)

    @property
    def float_ops(self) -> tuple[KernelEntry, ...]:
        """The computing ops that stay float."""
        return tuple(e for e in self.ops if not e.int8)

    def coverage(self) -> float:
        """Int8 computing ops / computing ops (1.0 for a model without computing ops)."""
        return len(self.int8_ops) / len(self.ops) if self.ops else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "model": self.model,
            "level": self.level,
            "onnxruntime": self.ort_version,
            "computing_ops": len(self.ops),
            "int8_computing_ops": len(self.int8_ops),
            "coverage": round(self.coverage(), 6),
            "ops": [e.to_dict() for e in self.ops],
            "others": [e.to_dict() for e in self.others],
            "stray_qdq": [s.to_dict() for s in self.stray_qdq],
            "optimized_op_types": dict(self.optimized_op_types),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        """One line: coverage and counts."""
        n8, n = len(self.int8_ops), len(self.ops)
        pct = 100.0 * self.coverage()
        others8 = sum(e.int8 for e in self.others)
        return (
            f"{n8} of {n} Conv/ConvTranspose/MatMul/Gemm run as int8 kernels ({pct:.0f}%); "
            f"other quantized ops: {others8} of {len(self.others)} int8; "
            f"stray Q/DQ: {len(self.stray_qdq)} (onnxruntime {self.ort_version}, "
            f"level {self.level})"
        )

    def table(self) -> str:
        """Plain text: a summary line, then one line per op (float ones first), then stray Q/DQ."""
        lines = [self.summary()]
        entries = sorted(self.ops, key=lambda e: e.int8) + sorted(self.others, key=lambda e: e.int8)
        if entries:
            w = max(len(e.op) for e in entries)
            t = max(len(e.op_type) for e in entries)
            k = max([len(e.kernel) for e in entries] + [6])
            lines.append("")
            lines.append(f"{'op':<{w}}  {'type':<{t}}  {'kernel':<{k}}  int8  why float")
            for e in entries:
                flag = "yes " if e.int8 else "NO  "
                lines.append(
                    f"{e.op:<{w}}  {e.op_type:<{t}}  {e.kernel or '-':<{k}}  {flag}  {e.reason}"
                )
        if self.stray_qdq:
            lines.append("")
            lines.append("stray Q/DQ (executed in float next to float ops):")
            for s in self.stray_qdq:
                lines.append(
                    f"  {s.op_type} {s.node} on {s.tensor!r} next to " + ", ".join(s.next_to)
                )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the input model's structure


class _Index:
    """Producers, consumers and constants of one graph, by tensor name."""

    def __init__(self, g: onnx.GraphProto) -> None:
        self.nodes = list(g.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in g.initializer}
        self.outputs = {o.name for o in g.output}
        self.inputs = {i.name for i in g.input} - set(self.inits)

    def elem_type(self, tensor: str) -> int | None:
        """The element type of a tensor when it is an initializer or a Q output."""
        if tensor in self.inits:
            return int(self.inits[tensor].data_type)
        p = self.producer.get(tensor)
        if p is not None and p.op_type == "QuantizeLinear":
            if len(p.input) > 2 and p.input[2] in self.inits:
                return int(self.inits[p.input[2]].data_type)
            return int(onnx.TensorProto.UINT8)  # ONNX default without a zero point
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return int(a.t.data_type)
        return None

    def dq_type(self, dq: onnx.NodeProto) -> int | None:
        """The integer type a DequantizeLinear reads (its zero point has the same type)."""
        if len(dq.input) > 2 and dq.input[2]:
            t = self.elem_type(dq.input[2])
            if t is not None:
                return t
        return self.elem_type(dq.input[0])

    def const(self, tensor: str) -> np.ndarray[Any, Any] | None:
        if tensor in self.inits:
            return np.asarray(numpy_helper.to_array(self.inits[tensor]))
        p = self.producer.get(tensor)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return np.asarray(numpy_helper.to_array(a.t))
        return None


def _label(n: onnx.NodeProto) -> str:
    return n.name or (n.output[0] if n.output else n.op_type)


_TYPE_NAMES = {
    int(onnx.TensorProto.UINT8): "uint8",
    int(onnx.TensorProto.INT8): "int8",
    int(onnx.TensorProto.UINT16): "uint16",
    int(onnx.TensorProto.INT16): "int16",
    int(onnx.TensorProto.INT32): "int32",
    int(onnx.TensorProto.FLOAT): "float",
}


def _tname(t: int | None) -> str:
    return "?" if t is None else _TYPE_NAMES.get(t, f"type {t}")


def _relu_redundant(ix: _Index, q: onnx.NodeProto) -> tuple[bool, str]:
    """Whether a Relu before QuantizeLinear ``q`` is implied by its zero point (zp = type min)."""
    zp_name = q.input[2] if len(q.input) > 2 and q.input[2] else ""
    zp = ix.const(zp_name) if zp_name else np.zeros((), np.uint8)
    t = ix.elem_type(q.output[0])
    if zp is None:
        return False, "a computed zero point"
    info = np.iinfo(zp.dtype) if np.issubdtype(zp.dtype, np.integer) else None
    desc = f"zero point {zp.ravel()[0] if zp.size == 1 else zp.ravel().tolist()} of {_tname(t)}"
    return bool(info is not None and np.all(zp == info.min)), desc


def _inputs_reason(ix: _Index, n: onnx.NodeProto, slots: Iterable[int]) -> list[str]:
    out: list[str] = []
    for k in slots:
        if k >= len(n.input) or not n.input[k]:
            continue
        t = n.input[k]
        p = ix.producer.get(t)
        if p is not None and p.op_type == "DequantizeLinear":
            continue
        what = "weight" if (k == 1 and n.op_type in ("Conv", "ConvTranspose", "Gemm")) else "input"
        if t in ix.inits or (p is not None and p.op_type == "Constant"):
            out.append(f"{what} {k} is a float constant, not a DequantizeLinear output")
        elif p is None:
            out.append(f"{what} {k} is the float graph input {t!r}, not a DequantizeLinear output")
        else:
            out.append(f"{what} {k} comes from {p.op_type} {_label(p)!r}, not a DequantizeLinear")
    return out


def _output_reason(ix: _Index, n: onnx.NodeProto) -> list[str]:
    if not n.output:
        return []
    t = n.output[0]
    cons = ix.consumers.get(t, [])
    if t in ix.outputs:
        return ["its output is a graph output, not quantized"]
    if not cons:
        return ["its output is unused"]
    if all(c.op_type == "QuantizeLinear" for c in cons):
        return []
    if len(cons) == 1 and cons[0].op_type in ("Relu", "Clip"):
        act = cons[0]
        a_cons = ix.consumers.get(act.output[0], [])
        if a_cons and all(c.op_type == "QuantizeLinear" for c in a_cons):
            redundant, desc = _relu_redundant(ix, a_cons[0])
            if act.op_type == "Relu" and redundant:
                return [f"{act.op_type} {_label(act)!r} before its QuantizeLinear ({desc})"]
            when = (
                "the quantized range starts at the Relu's lower bound 0"
                if act.op_type == "Relu"
                else "the quantized range lies inside the Clip's range"
            )
            return [
                f"{act.op_type} {_label(act)!r} kept between it and its QuantizeLinear: "
                f"{desc} does not make it redundant (onnxruntime drops it only when {when})"
            ]
    kinds = sorted({c.op_type for c in cons})
    if len(cons) > 1 and any(c.op_type == "QuantizeLinear" for c in cons):
        return [f"its output has {len(cons)} consumers ({', '.join(kinds)}), not only a Q"]
    return [f"its output is not quantized (feeds {', '.join(kinds)})"]


def _types_reason(ix: _Index, n: onnx.NodeProto) -> list[str]:
    """Type combinations onnxruntime's CPU QDQ selectors refuse."""
    if n.op_type not in COMPUTING_OPS or len(n.input) < 2:
        return []
    ts = []
    for k in (0, 1):
        p = ix.producer.get(n.input[k])
        if p is None or p.op_type != "DequantizeLinear":
            return []
        ts.append(ix.dq_type(p))
    a, w = ts
    if a is None or w is None:
        return []
    eight = (int(onnx.TensorProto.UINT8), int(onnx.TensorProto.INT8))
    if a not in eight or w not in eight:
        return [f"unsupported types: input {_tname(a)}, weight {_tname(w)}"]
    if a == int(onnx.TensorProto.INT8) and w == int(onnx.TensorProto.UINT8):
        return ["unsupported type combination: int8 input with uint8 weight"]
    return []


def _optimized_types_reason(oix: _OptIndex, found: onnx.NodeProto | None) -> list[str]:
    """Type mismatches of a float node unit in the optimized graph.

    onnxruntime first rewrites int8 Q -> DQ pairs of activations to uint8 (its
    QDQS8ToU8Transformer, for x86 kernels); a pair it cannot rewrite (a QuantizeLinear read by
    several DequantizeLinear) stays int8, and a node unit whose input and output types then
    differ is not fused (its selectors need equal types).
    """
    if found is None or _is_int8_kernel(found.op_type):
        return []
    ix = oix.ix
    # which inputs must share the output's type: the activation of a computing op, all inputs
    # of an elementwise/variadic op (weights and biases have their own rules)
    n_in = 1 if found.op_type in _WEIGHTED else len(found.input)
    types: list[tuple[str, int | None]] = []
    for t in found.input[:n_in]:
        if not t:
            continue
        p = ix.producer.get(t)
        if p is None or p.op_type != "DequantizeLinear":
            return []
        types.append((p.input[0], ix.dq_type(p)))
    if not found.output:
        return []
    cons = ix.consumers.get(found.output[0], [])
    if not cons or any(c.op_type != "QuantizeLinear" for c in cons):
        return []
    types.append((cons[0].output[0], ix.elem_type(cons[0].output[0])))
    kinds = {k for _, k in types}
    if None in kinds or len(kinds) < 2:
        return []
    names = [_tname(k) for _, k in types]
    converted = any("qdq_s8_to_u8" in t for t, _ in types)  # ORT's name for rewritten pairs
    how = (
        "; onnxruntime rewrote some int8 Q/DQ pairs to uint8 but not the others"
        if converted
        else ""
    )
    return [
        f"inputs {', '.join(names[:-1])} and output {names[-1]} differ "
        f"(a node unit needs equal activation types{how})"
    ]


_WEIGHTED = frozenset(
    {"Conv", "FusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm"}
)


def _why_float(ix: _Index, n: onnx.NodeProto, kernel: str, extra: Sequence[str] = ()) -> str:
    if n.op_type == "Concat":
        slots: Iterable[int] = range(len(n.input))
    elif n.op_type in ("Add", "Mul") or n.op_type in COMPUTING_OPS:
        slots = (0, 1)
    else:
        slots = (0,)
    reasons = _inputs_reason(ix, n, slots) + _types_reason(ix, n) + _output_reason(ix, n) + [*extra]
    if n.op_type in NO_QDQ_RULE and kernel == n.op_type:
        reasons.append(
            f"onnxruntime's CPU QDQ rules have no {n.op_type} node unit (no int8 kernel for it)"
        )
    if not kernel:
        reasons.insert(0, "removed by the optimizer (folded or fused into another node)")
    elif kernel != n.op_type:
        reasons.insert(0, f"runs as float {kernel}")
    if not reasons:
        reasons.append("onnxruntime kept it float although its inputs and output are quantized")
    return "; ".join(reasons)


# --------------------------------------------------------------------------------------------
# the optimized graph


def _q_chain_outputs(ix: _Index, n: onnx.NodeProto) -> set[str]:
    """Tensors the fused node of ``n`` may write: its outputs and its QuantizeLinear outputs."""
    out = {o for o in n.output if o}
    frontier = list(out)
    for t in frontier:
        for c in ix.consumers.get(t, []):
            if c.op_type == "QuantizeLinear":
                out.update(o for o in c.output if o)
            elif c.op_type in ("Relu", "Clip") and len(ix.consumers.get(t, [])) == 1:
                for c2 in ix.consumers.get(c.output[0], []):
                    if c2.op_type == "QuantizeLinear":
                        out.update(o for o in c2.output if o)
    return out


def _plausible(src: onnx.NodeProto, opt: onnx.NodeProto) -> bool:
    o = opt.op_type
    s = src.op_type
    return (
        o == s
        or _is_int8_kernel(o)
        or o in (f"Fused{s}", f"Nchwc{s}")
        or (s == "MatMul" and o in ("FusedMatMul", "Gemm", "FusedGemm"))
        or (o.startswith("Nchwc") and s in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool"))
    )


class _OptIndex:
    def __init__(self, g: onnx.GraphProto) -> None:
        self.g = g
        self.ix = _Index(g)
        self.by_name: dict[str, onnx.NodeProto] = {}
        self.by_base: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            if n.name:
                self.by_name.setdefault(n.name, n)
                self.by_base.setdefault(_TOKEN.sub("", n.name), []).append(n)
        self.int8 = _int8_tensors(self.ix)

    def find(self, src: onnx.NodeProto, outs: set[str]) -> onnx.NodeProto | None:
        if src.name:
            n = self.by_name.get(src.name)
            if n is not None and _plausible(src, n):
                return n
            for n in self.by_base.get(src.name, []):
                if _plausible(src, n) and n.op_type != "Transpose":
                    return n
        for t in sorted(outs):
            n = self.ix.producer.get(t)
            if n is not None and _plausible(src, n):
                return n
        return None


def _int8_tensors(ix: _Index) -> set[str]:
    """Tensors of the optimized graph that hold 8-bit integers."""
    q8: set[str] = set()
    for t, init in ix.inits.items():
        if init.data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
            q8.add(t)
    for n in ix.nodes:  # topological order: ORT saves nodes sorted
        if n.op_type == "QuantizeLinear" or (
            _is_int8_kernel(n.op_type) and n.op_type not in ("MatMulIntegerToFloat",)
        ):
            if n.op_type == "QGemm" and len(n.input) < 9:
                continue  # QGemm without y_scale writes float
            q8.update(o for o in n.output if o)
        elif n.op_type in DATA_MOVEMENT and n.input and n.input[0] in q8:
            q8.update(o for o in n.output if o)
    return q8


def _stray(ix: _Index) -> list[StrayQDQ]:
    """Q nodes whose values no int8 op reads; DQ nodes fed by a Q round trip or a constant."""

    def int8_user(t: str, depth: int = 0) -> bool:
        for c in ix.consumers.get(t, []):
            if c.op_type == "DequantizeLinear":
                continue
            if c.op_type in DATA_MOVEMENT and depth < 32:
                if int8_user(c.output[0], depth + 1):
                    return True
                continue
            return True
        return t in ix.outputs

    def source(t: str) -> onnx.NodeProto | None:
        p = ix.producer.get(t)
        seen = 0
        while p is not None and p.op_type in DATA_MOVEMENT and seen < 32:
            p = ix.producer.get(p.input[0])
            seen += 1
        return p

    out: list[StrayQDQ] = []
    for n in ix.nodes:
        if n.op_type == "QuantizeLinear":
            if not int8_user(n.output[0]):
                p = ix.producer.get(n.input[0])
                nb: tuple[str, ...] = (
                    (p.op_type + " " + _label(p),) if p is not None else (f"input {n.input[0]}",)
                )
                out.append(StrayQDQ(_label(n), n.op_type, n.input[0], nb))
        elif n.op_type == "DequantizeLinear":
            t = n.input[0]
            p = source(t)
            from_round_trip = p is not None and p.op_type == "QuantizeLinear"
            from_const = p is None and t in ix.inits  # a weight or bias dequantized at run time
            if from_round_trip or from_const:
                nb = tuple(
                    sorted({c.op_type + " " + _label(c) for c in ix.consumers.get(n.output[0], [])})
                )
                out.append(StrayQDQ(_label(n), n.op_type, t, nb or ("graph output",)))
    return out


# --------------------------------------------------------------------------------------------
# entry point


def _optimize(data: bytes, label: str, level: str, threads: int) -> onnx.ModelProto:
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.log_severity_level = 4  # FATAL only: fusekit reports ORT errors itself
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="fusekit-kernels-") as d:
        path = os.path.join(d, "optimized.onnx")
        so.optimized_model_filepath = path
        try:
            ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ModelRunError(
                f"{label}: onnxruntime cannot load the model: {first_line(e)}"
            ) from e
        try:
            return onnx.load(path)
        except Exception as e:  # pragma: no cover - ORT wrote something onnx cannot read
            raise ModelRunError(
                f"{label}: cannot read onnxruntime's optimized model: {first_line(e)}"
            ) from e


def _counts(types: Sequence[str]) -> tuple[tuple[str, int], ...]:
    c: dict[str, int] = {}
    for t in types:
        c[t] = c.get(t, 0) + 1
    return tuple(sorted(c.items()))


def kernel_report(model: Any, *, level: str = "extended", threads: int = 1) -> KernelReport:
    """Ask onnxruntime's CPU provider which ops of ``model`` run as int8 kernels.

    ``model`` is an ``onnx.ModelProto``, serialized bytes or a path. ``level`` is
    ``"extended"`` (where onnxruntime makes its QDQ fusions; the default) or ``"all"`` (adds
    the CPU-specific layout transforms); ``threads`` the intra-op thread count of the session
    (it does not change the decisions). Raises :class:`~fusekit.errors.InvalidModel` for
    something that is not a model and :class:`~fusekit.errors.ModelRunError` (naming the
    model) when onnxruntime refuses it.
    """
    if level not in LEVELS:
        raise InvalidData(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    if threads < 1:
        raise InvalidData(f"threads must be at least 1, not {threads}")
    m, label, base_dir = _read(model)
    if not isinstance(model, (str, os.PathLike)):
        label = "<model>" if label.startswith("<") else label
    opt = _optimize(model_bytes(m, base_dir), label, level, threads)
    return _analyze(m, opt, label, level)


def _analyze(m: onnx.ModelProto, opt: onnx.ModelProto, label: str, level: str) -> KernelReport:
    ix = _Index(m.graph)
    oix = _OptIndex(opt.graph)
    ops: list[KernelEntry] = []
    others: list[KernelEntry] = []
    for n in ix.nodes:
        computing = n.op_type in COMPUTING_OPS
        other = n.op_type in QLINEAR_CAPABLE and _touches_qdq(ix, n)
        moving = n.op_type in DATA_MOVEMENT and _between_qdq(ix, n)
        if not (computing or other or moving):
            continue
        found = oix.find(n, _q_chain_outputs(ix, n))
        kernel = found.op_type if found is not None else ""
        if moving:
            int8 = found is not None and bool(found.input) and found.input[0] in oix.int8
        else:
            int8 = _is_int8_kernel(kernel)
        reason = "" if int8 else _why_float(ix, n, kernel, _optimized_types_reason(oix, found))
        e = KernelEntry(_label(n), n.op_type, int8, kernel, reason)
        (ops if computing else others).append(e)
    return KernelReport(
        label,
        level,
        tuple(ops),
        tuple(others),
        tuple(_stray(oix.ix)),
        str(import_onnxruntime().__version__),
        _counts([n.op_type for n in opt.graph.node]),
    )


def _touches_qdq(ix: _Index, n: onnx.NodeProto) -> bool:
    """True when some input comes from a DequantizeLinear or the output feeds a QuantizeLinear."""
    for t in n.input:
        p = ix.producer.get(t)
        if p is not None and p.op_type == "DequantizeLinear":
            return True
    return any(c.op_type == "QuantizeLinear" for o in n.output for c in ix.consumers.get(o, []))


def _between_qdq(ix: _Index, n: onnx.NodeProto) -> bool:
    if not n.input:
        return False
    p = ix.producer.get(n.input[0])
    if p is None or p.op_type != "DequantizeLinear":
        return False
    return any(c.op_type == "QuantizeLinear" for c in ix.consumers.get(n.output[0], []))
