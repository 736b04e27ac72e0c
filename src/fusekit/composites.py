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

    Built once per pass run over the graph's arrays. Constant values are read once per tensor
    (a model shares one ``sqrt(2)`` initializer between all its GELUs), so checking tens of
    thousands of matches costs a dictionary lookup each.
    """

    __slots__ = ("_values", "ar", "graph")

    def __init__(self, graph: Graph):
        self.graph = graph
        self.ar = graph.arrays()
        self._values: dict[int, np.ndarray[Any, Any] | None] = {}

    def name(self, o: int) -> str:
        """The name of op ``o``."""
        return str(self.ar.op_names[o])

    def n_inputs(self, o: int) -> int:
        """How many input slots op ``o`` has."""
        return int(self.ar.n_in[o])

    def input(self, o: int, k: int) -> int:
        """Tensor id of input ``k`` of op ``o`` (-1 when omitted or absent)."""
        ar = self.ar
        if k >= ar.n_in[o]:
            return -1
        return int(ar.slot_tensor[ar.slot_base[o] + k])

    def output(self, o: int, k: int = 0) -> int:
        """Tensor id of output ``k`` of op ``o``."""
        ar = self.ar
        return int(ar.slot_tensor[ar.slot_base[o] + ar.n_in[o] + k])

    def port_from(self, o: int, src: int) -> int:
        """The first input of ``o`` that reads an output of op ``src`` (-1 if none)."""
        ar = self.ar
        st, prod, slot_op = ar.slot_tensor, ar.producer, ar.slot_op
        for k in range(ar.n_in[o]):
            tid = st[ar.slot_base[o] + k]
            if tid >= 0 and prod[tid] >= 0 and slot_op[prod[tid]] == src:
                return k
        return -1

    def value(self, tid: int) -> np.ndarray[Any, Any] | None:
        """The value of a literal constant tensor (an initializer or a ``Constant`` op's).

        None for anything else, a constant computed by other ops included: the checks accept
        only what they can read.
        """
        if tid < 0:
            return None
        if tid in self._values:
            return self._values[tid]
        out: np.ndarray[Any, Any] | None = None
        ar, graph = self.ar, self.graph
        name = ar.tensor_names[tid]
        if ar.is_init[tid]:
            out = np.asarray(graph.initializers[name].array())
        elif ar.producer[tid] >= 0:
            src = ar.slot_op[ar.producer[tid]]
            op = graph.ops[ar.op_names[src]]
            if op.op_type == "Constant" and op.domain in ("", "ai.onnx"):
                for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                    v = op.attributes.get(key)
                    if isinstance(v, np.ndarray):
                        out = v
                    elif isinstance(v, (int, float, tuple)):
                        out = np.asarray(v, dtype=np.float64)
                    if out is not None:
                        break
        if out is not None and out.dtype.kind not in "fiu":
            out = None
        self._values[tid] = out
        return out

    def rank(self, tid: int) -> int | None:
        """The declared rank of a tensor, if the graph knows it."""
        tt = self.graph.value_types.get(self.ar.tensor_names[tid])
        return None if tt is None or tt.shape is None else len(tt.shape)

    def attr(self, o: int, key: str, default: float) -> float:
        """A float attribute of op ``o`` (``default`` when absent or not a number)."""
        v = self.graph.ops[self.ar.op_names[o]].attributes.get(key, default)
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
    tid = ops.input(o, k)
    v = ops.value(tid)
    if v is None:
        return 0.0, f"the {what} of {ops.name(o)} is not a literal constant"
    if v.size != 1:
        return 0.0, f"the {what} of {ops.name(o)} has {v.size} values, not one"
    r = ops.rank(x_tid) if x_tid >= 0 else None
    if r is not None and v.ndim > r:
        return 0.0, (
            f"the {what} of {ops.name(o)} has rank {v.ndim}, more than its operand's {r}: "
            "it changes the output's shape"
        )
    return float(v.reshape(-1)[0]), None


def _constant_operand(
    ops: Operands, o: int, src: int, target: float, rule: str, what: str
) -> str | None:
    """``o`` combines the output of ``src`` with one constant equal to ``target``.

    For a Div, the data must be the numerator (``Div(c, 6)``, never ``Div(6, c)``); for Add and
    Mul the order is free.
    """
    port = ops.port_from(o, src)
    if ops.n_inputs(o) != 2 or port < 0:
        return f"{ops.name(o)} does not combine {ops.name(src)} with one constant"
    op_type = ops.ar.op_types[o]
    if op_type == "Div" and port != 0:
        return f"{ops.name(o)} divides by {ops.name(src)}; a {rule} divides it by a constant"
    v, why = _scalar(ops, o, 1 - port, ops.input(o, port), what)
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
    ins = [ops.input(o, k) for k in range(ops.n_inputs(o))]
    if sorted(ins) != sorted((a, b)):
        names = ops.ar.tensor_names
        return (
            f"{ops.name(o)} multiplies {', '.join(repr(names[t]) for t in ins if t >= 0)}, "
            f"not {names[a]!r} by {names[b]!r} as a {rule} does"
        )
    return None


def _clip_bounds(ops: Operands, clip: int, x_tid: int, lo: float, hi: float) -> str | None:
    """A Clip with bounds ``lo``/``hi`` (inputs since opset 11, attributes before; a Relu6
    is ``Clip(0, 6)`` by definition)."""
    if ops.ar.op_types[clip] == "Relu6":  # clip(x, 0, 6) by definition
        return None if (lo, hi) == (0.0, 6.0) else f"{ops.name(clip)} clips to [0, 6]"
    bounds: list[float] = []
    for k, key, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        if ops.n_inputs(clip) > 1:
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


def _first(*reasons: Callable[[], str | None]) -> str | None:
    for r in reasons:
        why = r()
        if why is not None:
            return why
    return None


# ----- the checks, one per form ------------------------------------------------------------
# ``ids`` are op ids in the form's node order; ids[0] is the op the activation follows.


def _check_swish(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """Swish/SiLU: the Mul multiplies the Sigmoid's own input by the Sigmoid."""
    _, sig, mul = ids
    return _reads_both(ops, mul, ops.input(sig, 0), ops.output(sig), "Swish")


def _check_mish(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """Mish: the Mul multiplies the Softplus's own input by tanh(softplus(x))."""
    _, sp, th, mul = ids
    return _reads_both(ops, mul, ops.input(sp, 0), ops.output(th), "Mish")


def _hardsigmoid_part(ops: Operands, x: int, add: int, clip: int) -> tuple[int, str | None]:
    """``clip(x + 3, 0, 6)``: returns the tensor the Add reads from ``x`` and a reason."""
    port = ops.port_from(add, x)
    x_tid = ops.input(add, port)
    why = _first(
        lambda: _constant_operand(ops, add, x, 3.0, "HardSwish", "addend"),
        lambda: _clip_bounds(ops, clip, x_tid, 0.0, 6.0),
    )
    return x_tid, why


def _check_hardswish_clip_div(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """HardSwish ``x * (clip(x + 3, 0, 6) / 6)``."""
    x, add, clip, div, mul = ids
    x_tid, why = _hardsigmoid_part(ops, x, add, clip)
    return why or _first(
        lambda: _scaled(ops, div, clip, 6.0, "HardSwish", "divisor"),
        lambda: _reads_both(ops, mul, x_tid, ops.output(div), "HardSwish"),
    )


def _check_hardswish_mul_div(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """HardSwish ``(x * clip(x + 3, 0, 6)) / 6``."""
    x, add, clip, mul, div = ids
    x_tid, why = _hardsigmoid_part(ops, x, add, clip)
    return why or _first(
        lambda: _reads_both(ops, mul, x_tid, ops.output(clip), "HardSwish"),
        lambda: _scaled(ops, div, mul, 6.0, "HardSwish", "divisor"),
    )


def _check_hardswish_hardsigmoid(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """HardSwish ``x * hardsigmoid(x)`` with HardSwish's slope 1/6 and offset 0.5."""
    _, hsig, mul = ids
    alpha, beta = ops.attr(hsig, "alpha", 0.2), ops.attr(hsig, "beta", 0.5)
    if not (_close(alpha, 1.0 / 6.0) and _close(beta, 0.5)):
        return (
            f"{ops.name(hsig)} has alpha {_fmt(alpha)}, beta {_fmt(beta)}; a HardSwish's "
            "HardSigmoid has alpha 1/6, beta 0.5"
        )
    return _reads_both(ops, mul, ops.input(hsig, 0), ops.output(hsig), "HardSwish")


_SQRT2 = float(np.sqrt(2.0))


def _erf_part(ops: Operands, x: int, div: int, add: int, erf: int) -> tuple[int, str | None]:
    """``erf(x / sqrt 2) + 1``: returns the tensor the Div reads from ``x`` and a reason."""
    x_tid = ops.input(div, max(ops.port_from(div, x), 0))
    why = _first(
        lambda: _scaled(ops, div, x, _SQRT2, "GELU", "divisor"),
        lambda: _constant_operand(ops, add, erf, 1.0, "GELU", "addend"),
    )
    return x_tid, why


def _check_gelu_mul_half(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """GELU ``(x * (erf(x / sqrt 2) + 1)) * 0.5``."""
    x, div, erf, add, mul, half = ids
    x_tid, why = _erf_part(ops, x, div, add, erf)
    return why or _first(
        lambda: _reads_both(ops, mul, x_tid, ops.output(add), "GELU"),
        lambda: _constant_operand(ops, half, mul, 0.5, "GELU", "factor"),
    )


def _check_gelu_half_mul(ops: Operands, ids: tuple[int, ...]) -> str | None:
    """GELU ``x * ((erf(x / sqrt 2) + 1) * 0.5)``."""
    x, div, erf, add, half, mul = ids
    x_tid, why = _erf_part(ops, x, div, add, erf)
    return why or _first(
        lambda: _constant_operand(ops, half, add, 0.5, "GELU", "factor"),
        lambda: _reads_both(ops, mul, x_tid, ops.output(half), "GELU"),
    )


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
