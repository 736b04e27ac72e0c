"""Composite activations as registered values: the forms each is written as, and its checks.

An exporter writes SiLU as ``Mul(x, Sigmoid(x))``, HardSwish as ``x * Clip(x + 3, 0, 6) / 6``,
GELU as ``x * 0.5 * (1 + Erf(x / sqrt 2))``. A backend that recognises the decomposition runs it
as one kernel, so no quantization point sits inside it. Recognising it by op types and edges
alone is not enough: ``x * Clip(x + 5, -1, 7) / 8`` has HardSwish's shape and is another
function, which no backend fuses into a HardSwish kernel.

So each composite activation is a :class:`CompositeRule`, a frozen value holding

* its :class:`CompositeForm` s, each a pattern after the op the activation follows (node
  ``"x"``) and a *check* that returns why a structural match is not this activation (a wrong
  constant, an operand in the wrong place, a constant that broadcasts the result to another
  shape), or None;
* the slots a fused match switches off (:func:`inner_slots`).

:data:`COMPOSITES` is the one registry: :attr:`fusekit.platforms.Platform.activation_patterns`
may name only its keys (an unknown name is an :class:`~fusekit.errors.InvalidPlatform`), and
:class:`fusekit.passes.CompositeActivationFusion` logs a check's reason as a REFUSE decision,
which ``fusekit explain`` shows next to the slot. Rule sets with the
``"composite_unchecked"`` quirk (the ``ppq066_*`` ones) skip the checks, as PPQ 0.6.6 does.

This module sits below :mod:`fusekit.platforms` (which validates rule sets against the
registry) and imports only the graph, the matcher and the plan's states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import numpy as np

from .graph import Graph
from .patterns import Edge, Node, Pattern
from .quant import QuantState

__all__ = [
    "COMPOSITES",
    "CompositeForm",
    "CompositeRule",
    "Operands",
    "inner_slots",
]

#: Relative tolerance of a constant check (exporters write 0.7071 or 1.41421 for sqrt 2).
RTOL = 1e-3


class Operands:
    """What the checks read about the ops of a match: operand tensors, constants, attributes.

    Built once per pass run over the graph's arrays (bound to attributes: a check runs for
    each of tens of thousands of matches). Constant values are read once per tensor (a model
    shares one ``sqrt(2)`` initializer between all its GELUs), so checking a constant costs a
    dictionary lookup.
    """

    __slots__ = ("_consts", "ar", "base", "graph", "n_in", "names", "prod", "slot_op", "st")

    def __init__(self, graph: Graph):
        self.graph = graph
        self.ar = ar = graph.arrays()
        self.st, self.base, self.n_in = ar.slot_tensor, ar.slot_base, ar.n_in
        self.prod, self.slot_op, self.names = ar.producer, ar.slot_op, ar.op_names
        # tensor id -> (single value or None, number of values, rank), None if not a literal
        self._consts: dict[int, tuple[float | None, int, int] | None] = {}

    def name(self, o: int) -> str:
        """The name of op ``o``."""
        return str(self.names[o])

    def input(self, o: int, k: int) -> int:
        """Tensor id of input ``k`` of op ``o`` (-1 when omitted or absent)."""
        return self.st[self.base[o] + k] if k < self.n_in[o] else -1

    def output(self, o: int) -> int:
        """Tensor id of output 0 of op ``o``."""
        return self.st[self.base[o] + self.n_in[o]]

    def producer(self, tid: int) -> int:
        """The op producing tensor ``tid`` (-1 for a graph input, initializer or omitted one)."""
        if tid < 0:
            return -1
        p = self.prod[tid]
        return self.slot_op[p] if p >= 0 else -1

    def value(self, tid: int) -> np.ndarray[Any, Any] | None:
        """The value of a literal constant tensor (an initializer or a ``Constant`` op's).

        None for anything else, a constant computed by other ops included: the checks accept
        only what they can read.
        """
        if tid < 0:
            return None
        out: np.ndarray[Any, Any] | None = None
        ar, graph = self.ar, self.graph
        if ar.is_init[tid]:
            out = np.asarray(graph.initializers[ar.tensor_names[tid]].array())
        elif ar.producer[tid] >= 0:
            op = graph.ops[self.names[self.producer(tid)]]
            if op.op_type == "Constant" and op.domain in ("", "ai.onnx"):
                for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                    v = op.attributes.get(key)
                    if isinstance(v, np.ndarray):
                        out = v
                    elif isinstance(v, (int, float, tuple)):
                        out = np.asarray(v, dtype=np.float64)
                    if out is not None:
                        break
        return out if out is not None and out.dtype.kind in "fiu" else None

    def constant(self, tid: int) -> tuple[float | None, int, int] | None:
        """(the value if it is a single one, its number of values, its rank) of a literal
        constant, or None; remembered per tensor."""
        try:
            return self._consts[tid]
        except KeyError:  # once per tensor
            pass
        v = self.value(tid)
        info = None if v is None else (float(v.flat[0]) if v.size == 1 else None, v.size, v.ndim)
        self._consts[tid] = info
        return info

    def rank(self, tid: int) -> int | None:
        """The declared rank of a tensor, if the graph knows it."""
        tt = self.graph.value_types.get(self.ar.tensor_names[tid])
        return None if tt is None or tt.shape is None else len(tt.shape)

    def attr(self, o: int, key: str, default: float) -> float:
        """A float attribute of op ``o`` (``default`` when absent or not a number)."""
        v = self.graph.ops[self.names[o]].attributes.get(key, default)
        return float(v) if isinstance(v, (int, float)) else default


def _close(v: float, target: float) -> bool:
    return abs(v - target) <= (RTOL * abs(target) if target else 1e-6)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _scalar(ops: Operands, o: int, k: int, x_tid: int, what: str) -> tuple[float, str | None]:
    """The single value of constant input ``k`` of ``o``, or the reason there is none.

    A constant with several elements, or with more dimensions than the data it is combined
    with, would broadcast the result to another shape than the activation's input: no backend
    runs that as the activation.
    """
    info = ops.constant(ops.input(o, k))
    if info is None:
        return 0.0, f"the {what} of {ops.name(o)} is not a literal constant"
    v, size, ndim = info
    if v is None:
        return 0.0, f"the {what} of {ops.name(o)} has {size} values, not one"
    if ndim:  # a 0-d constant never changes the shape
        r = ops.rank(x_tid) if x_tid >= 0 else None
        if r is not None and ndim > r:
            return 0.0, (
                f"the {what} of {ops.name(o)} has rank {ndim}, more than its operand's {r}: "
                "it changes the output's shape"
            )
    return v, None


def _constant_operand(
    ops: Operands, o: int, src: int, target: float, rule: str, what: str
) -> str | None:
    """``o`` combines the output of ``src`` with one constant equal to ``target``.

    For a Div, the data must be the numerator (``Div(c, 6)``, never ``Div(6, c)``); for Add and
    Mul the order is free.
    """
    st, b = ops.st, ops.base[o]
    port = -1
    if ops.n_in[o] == 2:
        port = 0 if ops.producer(st[b]) == src else 1 if ops.producer(st[b + 1]) == src else -1
    if port < 0:
        return f"{ops.name(o)} does not combine {ops.name(src)} with one constant"
    if port and ops.ar.op_types[o] == "Div":
        return f"{ops.name(o)} divides by {ops.name(src)}; a {rule} divides it by a constant"
    v, why = _scalar(ops, o, 1 - port, st[b + port], what)
    if why is not None:
        return why
    if not _close(v, target):
        return f"the {what} of {ops.name(o)} is {_fmt(v)}; a {rule} needs {_fmt(target)}"
    return None


def _scaled(ops: Operands, o: int, src: int, divisor: float, rule: str, what: str) -> str | None:
    """``o`` is ``src / divisor``: a Div by ``divisor`` or a Mul by its inverse."""
    if ops.ar.op_types[o] == "Div":
        return _constant_operand(ops, o, src, divisor, rule, what)
    return _constant_operand(ops, o, src, 1.0 / divisor, rule, f"{what} (as a factor)")


def _reads_both(ops: Operands, o: int, a: int, b: int, rule: str) -> str | None:
    """``o`` reads exactly the tensors ``a`` and ``b`` (in either order)."""
    st, first = ops.st, ops.base[o]
    if ops.n_in[o] == 2:
        t0, t1 = st[first], st[first + 1]
        if (t0 == a and t1 == b) or (t0 == b and t1 == a):
            return None
    names = ops.ar.tensor_names
    ins = [st[first + k] for k in range(ops.n_in[o])]
    return (
        f"{ops.name(o)} multiplies {', '.join(repr(names[t]) for t in ins if t >= 0)}, "
        f"not {names[a]!r} by {names[b]!r} as a {rule} does"
    )


def _clip_bounds(ops: Operands, clip: int, x_tid: int, lo: float, hi: float) -> str | None:
    """A Clip with bounds ``lo``/``hi`` (inputs since opset 11, attributes before; a Relu6
    is ``Clip(0, 6)`` by definition)."""
    if ops.ar.op_types[clip] == "Relu6":
        return None if (lo, hi) == (0.0, 6.0) else f"{ops.name(clip)} clips to [0, 6]"
    bounds: list[float] = []
    for k, key, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        if ops.n_in[clip] > 1:
            if ops.input(clip, k) < 0:
                bounds.append(float(default))
                continue
            v, why = _scalar(ops, clip, k, x_tid, key)
            if why is not None:
                return why
            bounds.append(v)
        else:
            bounds.append(ops.attr(clip, key, float(default)))
    if not (_close(bounds[0], lo) and _close(bounds[1], hi)):
        return (
            f"{ops.name(clip)} clips to [{_fmt(bounds[0])}, {_fmt(bounds[1])}]; a HardSwish "
            f"clips to [{_fmt(lo)}, {_fmt(hi)}]"
        )
    return None


def _port_from(ops: Operands, o: int, src: int) -> int:
    """The first input of ``o`` that reads an output of op ``src`` (0 if none)."""
    for k in range(ops.n_in[o]):
        if ops.producer(ops.input(o, k)) == src:
            return k
    return 0


# ----- the checks, one per form ------------------------------------------------------------
# ``ids`` are op ids in the form's node order; ids[0] is the op the activation follows.


def _check_swish(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """Swish/SiLU: the Mul multiplies the Sigmoid's own input by the Sigmoid."""
    _, sig, mul = ids
    return _reads_both(ops, mul, ops.st[ops.base[sig]], ops.output(sig), "Swish")


def _check_mish(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """Mish: the Mul multiplies the Softplus's own input by tanh(softplus(x))."""
    _, sp, th, mul = ids
    return _reads_both(ops, mul, ops.st[ops.base[sp]], ops.output(th), "Mish")


def _hardsigmoid_part(ops: Operands, x: int, add: int, clip: int) -> tuple[int, str | None]:
    """``clip(x + 3, 0, 6)``: returns the tensor the Add reads from ``x`` and a reason."""
    x_tid = ops.input(add, _port_from(ops, add, x))
    why = _constant_operand(ops, add, x, 3.0, "HardSwish", "addend")
    return x_tid, why or _clip_bounds(ops, clip, x_tid, 0.0, 6.0)


def _check_hardswish_clip_div(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """HardSwish ``x * (clip(x + 3, 0, 6) / 6)``."""
    x, add, clip, div, mul = ids
    x_tid, why = _hardsigmoid_part(ops, x, add, clip)
    if why is None:
        why = _scaled(ops, div, clip, 6.0, "HardSwish", "divisor")
    return why or _reads_both(ops, mul, x_tid, ops.output(div), "HardSwish")


def _check_hardswish_mul_div(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """HardSwish ``(x * clip(x + 3, 0, 6)) / 6``."""
    x, add, clip, mul, div = ids
    x_tid, why = _hardsigmoid_part(ops, x, add, clip)
    if why is None:
        why = _reads_both(ops, mul, x_tid, ops.output(clip), "HardSwish")
    return why or _scaled(ops, div, mul, 6.0, "HardSwish", "divisor")


def _check_hardswish_hardsigmoid(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """HardSwish ``x * hardsigmoid(x)`` with HardSwish's slope 1/6 and offset 0.5."""
    _, hsig, mul = ids
    alpha, beta = ops.attr(hsig, "alpha", 0.2), ops.attr(hsig, "beta", 0.5)
    if not (_close(alpha, 1.0 / 6.0) and _close(beta, 0.5)):
        return (
            f"{ops.name(hsig)} has alpha {_fmt(alpha)}, beta {_fmt(beta)}; a HardSwish's "
            "HardSigmoid has alpha 1/6, beta 0.5"
        )
    return _reads_both(ops, mul, ops.st[ops.base[hsig]], ops.output(hsig), "HardSwish")


_SQRT2 = float(np.sqrt(2.0))


def _erf_part(ops: Operands, x: int, div: int, add: int, erf: int) -> tuple[int, str | None]:
    """``erf(x / sqrt 2) + 1``: returns the tensor the Div reads from ``x`` and a reason."""
    x_tid = ops.input(div, _port_from(ops, div, x))
    why = _scaled(ops, div, x, _SQRT2, "GELU", "divisor")
    return x_tid, why or _constant_operand(ops, add, erf, 1.0, "GELU", "addend")


def _check_gelu_mul_half(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """GELU ``(x * (erf(x / sqrt 2) + 1)) * 0.5``."""
    x, div, erf, add, mul, half = ids
    x_tid, why = _erf_part(ops, x, div, add, erf)
    if why is None:
        why = _reads_both(ops, mul, x_tid, ops.output(add), "GELU")
    return why or _constant_operand(ops, half, mul, 0.5, "GELU", "factor")


def _check_gelu_half_mul(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """GELU ``x * ((erf(x / sqrt 2) + 1) * 0.5)``."""
    x, div, erf, add, half, mul = ids
    x_tid, why = _erf_part(ops, x, div, add, erf)
    if why is None:
        why = _constant_operand(ops, half, add, 0.5, "GELU", "factor")
    return why or _reads_both(ops, mul, x_tid, ops.output(half), "GELU")


# ----- values ------------------------------------------------------------------------------

Check = Callable[[Operands, tuple[int, ...]], str | None]
SlotsFn = Callable[[Any, Any, tuple[int, ...], bool], list[int]]


@attrs.frozen
class CompositeForm:
    """One way a composite activation is written: ops after the anchor ``x``, and a check.

    ``nodes`` and ``edges`` are a :class:`~fusekit.patterns.Pattern` without its first node,
    the op the activation follows (called ``"x"`` in the edges): which ops that is depends on
    the rule set (computing ops, or epilogues folded into one), so :meth:`pattern` adds it.
    ``check(operands, ids)`` gets the matched op ids in node order (``ids[0]`` is the anchor)
    and returns why the match is not this activation, or None.
    """

    formula: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    check: Check = attrs.field(eq=False)

    def pattern(self, rule: str, anchor: Node) -> Pattern:
        """The full pattern, with ``anchor``'s predicate as the node ``"x"``."""
        return Pattern(rule, (Node("x", anchor.types, anchor.where), *self.nodes), self.edges)

    def op_types(self) -> tuple[frozenset[str], ...]:
        """The op types each node after the anchor accepts."""
        return tuple(n.types or frozenset() for n in self.nodes)


@attrs.frozen
class CompositeRule:
    """A composite activation: its name, what it computes, its forms, the slots it switches off.

    ``slots(arrays, configs, ids, compat)`` lists the slot ids a fused match overlaps by the
    output of its last op (:func:`inner_slots` for every shipped rule).
    """

    name: str
    description: str
    forms: tuple[CompositeForm, ...]
    slots: SlotsFn = attrs.field(eq=False)

    def patterns(self, anchor: Node) -> tuple[Pattern, ...]:
        """The pattern of every form after ``anchor``, in the registry's order."""
        return tuple(f.pattern(self.name, anchor) for f in self.forms)


def inner_slots(ar: Any, cfgs: Any, ids: tuple[int, ...], compat: bool) -> list[int]:
    """Slots switched off inside a fused composite activation, in PPQ's linking order.

    The anchor's output 0, then the first input and output 0 of every inner op, then every
    input of the last op. fusekit also switches off the other non-FP32 inputs of inner ops
    (the constants 3, 6, 0.5 of HardSwish and GELU), which a fused kernel never quantizes;
    PPQ-compatible rule sets (``compat``) link PPQ's slots whatever their state (FP32 ones
    included).
    """
    base, n_in = ar.slot_base, ar.n_in
    fp32 = QuantState.FP32
    slots = [base[ids[0]] + n_in[ids[0]]]
    for o in ids[1:-1]:
        first = base[o]
        for s in range(first, first + (min(n_in[o], 1) if compat else n_in[o])):
            if compat or cfgs[s].state != fp32:  # PPQ links these whatever their state
                slots.append(s)
        slots.append(first + n_in[o])
    last = ids[-1]
    for s in range(base[last], base[last] + n_in[last]):
        if compat or cfgs[s].state != fp32:
            slots.append(s)
    return slots


def _nodes(*spec: tuple[str, Iterable[str]]) -> tuple[Node, ...]:
    return tuple(Node(name, frozenset(types)) for name, types in spec)


def _edges(*spec: str) -> tuple[Edge, ...]:
    pairs = (e.split("->") for e in spec)
    return tuple(Edge(src, dst) for src, dst in pairs)


_SCALE = ("Div", "Mul")  # x / c is also written x * (1 / c)

SWISH = CompositeRule(
    "swish",
    "Swish/SiLU x*sigmoid(x), either operand order",
    (
        CompositeForm(
            "x*sigmoid(x)",
            _nodes(("sigmoid", {"Sigmoid"}), ("mul", {"Mul"})),
            _edges("x->sigmoid", "sigmoid->mul", "x->mul"),
            _check_swish,
        ),
    ),
    inner_slots,
)
MISH = CompositeRule(
    "mish",
    "Mish x*tanh(softplus(x)), either operand order",
    (
        CompositeForm(
            "x*tanh(softplus(x))",
            _nodes(("softplus", {"Softplus"}), ("tanh", {"Tanh"}), ("mul", {"Mul"})),
            _edges("x->softplus", "softplus->tanh", "tanh->mul", "x->mul"),
            _check_mish,
        ),
    ),
    inner_slots,
)
HARDSWISH = CompositeRule(
    "hardswish",
    "HardSwish x*clip(x+3,0,6)/6 (the division before or after the product, or a product by "
    "1/6) and x*hardsigmoid(x) with alpha 1/6, beta 0.5",
    (
        CompositeForm(
            "x*(clip(x+3,0,6)/6)",
            _nodes(
                ("add", {"Add"}), ("clip", {"Clip", "Relu6"}), ("div", _SCALE), ("mul", {"Mul"})
            ),
            _edges("x->add", "add->clip", "clip->div", "div->mul", "x->mul"),
            _check_hardswish_clip_div,
        ),
        CompositeForm(
            "(x*clip(x+3,0,6))/6",
            _nodes(("add", {"Add"}), ("clip", {"Clip"}), ("mul", {"Mul"}), ("div", _SCALE)),
            _edges("x->add", "add->clip", "clip->mul", "x->mul", "mul->div"),
            _check_hardswish_mul_div,
        ),
        CompositeForm(
            "x*hardsigmoid(x)",
            _nodes(("hsig", {"HardSigmoid"}), ("mul", {"Mul"})),
            _edges("x->hsig", "hsig->mul", "x->mul"),
            _check_hardswish_hardsigmoid,
        ),
    ),
    inner_slots,
)
GELU = CompositeRule(
    "gelu",
    "GELU x*0.5*(1+erf(x/sqrt2)), the 0.5 applied to the product or to the erf term "
    "(x/sqrt2 also written x*0.70711)",
    (
        CompositeForm(
            "(x*(erf(x/sqrt2)+1))*0.5",
            _nodes(
                ("div", _SCALE),
                ("erf", {"Erf"}),
                ("add", {"Add"}),
                ("mul", {"Mul"}),
                ("half", {"Mul"}),
            ),
            _edges("x->div", "div->erf", "erf->add", "add->mul", "x->mul", "mul->half"),
            _check_gelu_mul_half,
        ),
        CompositeForm(
            "x*((erf(x/sqrt2)+1)*0.5)",
            _nodes(
                ("div", _SCALE),
                ("erf", {"Erf"}),
                ("add", {"Add"}),
                ("half", {"Mul"}),
                ("mul", {"Mul"}),
            ),
            _edges("x->div", "div->erf", "erf->add", "add->half", "half->mul", "x->mul"),
            _check_gelu_half_mul,
        ),
    ),
    inner_slots,
)

#: Every composite activation a rule set can enable, by the name
#: :attr:`~fusekit.platforms.Platform.activation_patterns` uses, in the order the pass applies
#: them (PPQ's Swish before Mish; a match never reuses an op an earlier match fused).
COMPOSITES: Mapping[str, CompositeRule] = {r.name: r for r in (SWISH, MISH, HARDSWISH, GELU)}
