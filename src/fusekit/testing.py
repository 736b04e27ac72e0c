"""Property-based testing for fusekit and for users' own rule sets, patterns and passes.

This module is what fusekit's own property suite runs, exposed so that anyone who writes a
:class:`~fusekit.Platform`, a pattern or a pass can verify it the same way in their own pytest
suite. It needs Hypothesis (``pip install 'fusekit[testing]'``); importing it without Hypothesis
raises :class:`~fusekit.errors.MissingDependency`.

Strategies (all shrink towards small linear chains and the simplest choices):

* :func:`graphs` -- random ONNX-valid graphs built acyclic by construction: every op draws its
  inputs from tensors that already exist. They reach computing ops (Conv, ConvTranspose, Gemm,
  MatMul with constant weights, from initializers or ``Constant`` ops) with one and several
  consumers, every single-op activation, Swish and Mish in both operand orders, HardSwish and GELU
  decompositions and near misses of each (:data:`NEAR_MISSES`: a wrong constant, an operand in
  the wrong place, an extra reader of an inner tensor), passive ops including multi-output
  ``Split``, ``Concat``/``Sum`` with 2-4 inputs, ``Mul(x, x)``, graph inputs feeding anything,
  graph outputs taken from the middle of a pattern, and ops no platform quantizes. Shapes are
  tracked, so every graph also runs in ONNX Runtime.
* :func:`rule_sets` -- platforms derived from a registered one by removing or adding op types,
  activation patterns, alignment groups, bias and activation rules (``Platform.evolve``).
* :func:`dispatches`, :func:`initial_plans` (``init_plan`` with random dispatch, several platforms
  per graph), :func:`edited_plans` (random states, links and scales through the plan API) and
  :func:`calibrated_plans` (every root calibration is contracted to cover gets a scale).

Law checks (plain functions raising ``AssertionError`` with every broken law listed):
:func:`assert_pure`, :func:`assert_deterministic`, :func:`assert_idempotent`,
:func:`assert_log_complete`, :func:`assert_plan_laws` (the laws of :mod:`fusekit.laws`) and
:func:`check_pass`, which runs them all on one pass or pipeline. Typical use::

    import fusekit
    from hypothesis import given, strategies as st
    from fusekit import testing as ft

    @given(st.data())
    def test_my_rule_set(data):
        graph = data.draw(ft.graphs())
        plan = data.draw(ft.initial_plans(graph, MY_PLATFORM))
        ft.check_pass(fusekit.default_pipeline(MY_PLATFORM), graph, plan, MY_PLATFORM)
"""

from __future__ import annotations

from ._version import __version__ as _fusekit_version
from .errors import MissingDependency

try:
    from hypothesis import strategies as st
except ImportError as _e:  # pragma: no cover - exercised in a subprocess by the test suite
    raise MissingDependency(
        "fusekit.testing needs the 'hypothesis' package: pip install 'fusekit[testing]' "
        f"(or pip install hypothesis) to use it with fusekit {_fusekit_version}"
    ) from _e

import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from .composites import COMPOSITES
from .dispatch import init_plan
from .errors import SharingCycle
from .graph import Graph, Initializer, Op, Slot, TensorType, check_invariants
from .laws import check as check_laws
from .passes import FusionResult, PipelineResult, replay
from .passes._core import PassContext
from .platforms import QUIRKS, BiasRule, Platform, QuantRule, get_platform
from .quant import (
    LinkKind,
    NotARoot,
    QuantPlan,
    QuantPolicy,
    QuantProperty,
    QuantState,
    TensorQuantConfig,
)

__all__ = [
    "ACTIVATION_TYPES",
    "COMPUTING_TYPES",
    "FOREIGN_TYPES",
    "NEAR_MISSES",
    "PASSIVE_TYPES",
    "STEP_KINDS",
    "StandInCalibration",
    "assert_deterministic",
    "assert_idempotent",
    "assert_log_complete",
    "assert_plan_laws",
    "assert_pure",
    "calibrated_plans",
    "check_pass",
    "dispatches",
    "edited_plans",
    "graph_snapshot",
    "graphs",
    "initial_plans",
    "permuted",
    "plan_snapshot",
    "rule_sets",
    "states_and_roots",
]

# --------------------------------------------------------------------------------------------
# graphs

#: Single-op activations the generator emits (every ``activation_types`` entry of the shipped
#: rule sets that is an ONNX operator at opset 21).
ACTIVATION_TYPES: tuple[str, ...] = (
    "Relu",
    "Clip",
    "Sigmoid",
    "LeakyRelu",
    "PRelu",
    "Tanh",
    "Softplus",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "Mish",
    "Erf",
)
#: Computing ops (weights are constants: initializers or ``Constant`` ops).
COMPUTING_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "ConvTranspose")
#: Passive (data-moving) ops, ``Split`` aside.
PASSIVE_TYPES: tuple[str, ...] = (
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Identity",
    "Dropout",
    "Slice",
    "Pad",
    "Squeeze",
    "Unsqueeze",
    "GlobalMaxPool",
)
#: Ops no shipped rule set quantizes (``Softmax`` is quantized by some, never fused).
FOREIGN_TYPES: tuple[str, ...] = ("Abs", "Neg", "Cos", "Softmax")
#: The building steps of :func:`graphs`, simplest first (what shrinking moves towards).
#: Repetitions weight the draw towards what fusion cares about.
STEP_KINDS: tuple[str, ...] = (
    "activation",
    "computing",
    "fused",
    "fused",
    "passive",
    "binary",
    "swish",
    "mish",
    "hardswish",
    "gelu",
    "split",
    "concat",
    "pool",
    "resize",
    "foreign",
    "fused",
    "passive",
    "binary",
    "foreign",
)

_MAX_ELEMS = 2048
_MAX_DIM = 48
Shape = tuple[int, ...]


def _elems(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Builder:
    """Mutable scratch state of one :func:`graphs` draw (never escapes the strategy)."""

    def __init__(self, draw: st.DrawFn, seed: int):
        self.draw = draw
        self.rng = np.random.default_rng(seed)
        self.ops: list[Op] = []
        self.inits: list[Initializer] = []
        self.types: dict[str, TensorType] = {}
        self.data: list[tuple[str, Shape]] = []  # float activations, creation order
        self.n = 0

    # -- names, tensors, constants -------------------------------------------------------

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def tensor(self, shape: Shape) -> str:
        t = self.fresh("t")
        self.types[t] = TensorType(1, shape)
        self.data.append((t, shape))
        return t

    def weights(self, shape: Shape) -> np.ndarray[Any, Any]:
        return self.rng.normal(0.0, 0.5, size=shape).astype(np.float32)

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """A constant input: an initializer, or (one time in four) a ``Constant`` op."""
        arr = np.asarray(value, dtype=dtype)
        if self.draw(st.integers(0, 3)) == 3:
            out = self.fresh("k")
            self.ops.append(Op(self.fresh("const_"), "Constant", (), (out,), {"value": arr}))
            return out  # no declared type: the value carries it
        name = self.fresh("c")
        self.inits.append(Initializer.from_array(name, arr))
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(values, dtype=np.int64), np.int64)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        out_shapes: Sequence[Shape],
        attributes: Mapping[str, Any] | None = None,
    ) -> list[str]:
        outs = [self.tensor(s) for s in out_shapes]
        self.ops.append(
            Op(self.fresh(op_type.lower() + "_"), op_type, tuple(inputs), tuple(outs), attributes)
        )
        return outs

    # -- choosing inputs ----------------------------------------------------------------------

    def pick(self, ok: Callable[[Shape], bool] | None = None) -> tuple[str, Shape] | None:
        """An existing tensor: the newest (three times in four; shrinks to it) or any older one."""
        cands = [d for d in self.data if ok is None or ok(d[1])]
        if not cands:
            return None
        if self.draw(st.integers(0, 3)) != 3:
            return cands[-1]
        return cands[-1 - self.draw(st.integers(0, len(cands) - 1))]

    def choose(self, options: Sequence[str]) -> str:
        return self.draw(st.sampled_from(tuple(options)))


def _rank4(s: Shape) -> bool:
    return len(s) == 4


def _activation(b: _Builder, x: str, shape: Shape, op_type: str | None = None) -> str:
    t = op_type or b.choose(ACTIVATION_TYPES)
    attributes: dict[str, Any] = {}
    inputs = [x]
    if t == "Clip":
        variant = b.draw(st.integers(0, 3))
        if variant == 0:
            inputs += [b.const(0.0), b.const(6.0)]
        elif variant == 2:
            inputs += [b.const(0.0)]
        elif variant == 3:
            inputs += ["", b.const(6.0)]
    elif t == "PRelu":
        slope_shape = (shape[1], 1, 1) if len(shape) == 4 else (1,)
        inputs.append(b.const(np.full(slope_shape, 0.25)))
    elif t == "LeakyRelu":
        attributes["alpha"] = 0.125
    elif t == "Elu":
        attributes["alpha"] = 0.5
    elif t == "HardSigmoid":
        attributes["alpha"] = 0.25
    return b.op(t, inputs, [shape], attributes)[0]


def _computing(b: _Builder, x: str, shape: Shape) -> tuple[str, Shape]:
    if len(shape) < 2:  # computing ops need a matrix: make one
        x = b.op("Unsqueeze", [x, b.ints([0])], [(1, *shape)])[0]
        shape = (1, *shape)
    t = b.choose(COMPUTING_TYPES)
    if t in ("Conv", "ConvTranspose") and not _rank4(shape):
        t = "MatMul"
    if t == "Gemm" and len(shape) != 2:  # Gemm is 2-D: flatten first (a passive op too)
        flat = (_elems(shape[:-1]), shape[-1])
        x = b.op("Flatten", [x], [flat], {"axis": len(shape) - 1})[0]
        shape = flat
    with_bias = b.draw(st.booleans())
    if t == "Conv":
        k = b.draw(st.sampled_from((1, 3)))
        # one in four is depthwise (group == C_in == C_out), which some rule sets quantize per
        # channel; chosen by the builder's seeded generator, not a draw, so that the draws (and
        # the reach figures of the derandomized sample) stay those of the other steps
        groups = shape[1] if shape[1] > 1 and b.rng.integers(0, 4) == 3 else 1
        c_out = shape[1] if groups > 1 else 4
        w = b.const(b.weights((c_out, shape[1] // groups, k, k)))
        ins = [x, w] + ([b.const(b.weights((c_out,)))] if with_bias else [])
        out = (shape[0], c_out, shape[2], shape[3])
        p = k // 2
        attributes: dict[str, Any] = {"kernel_shape": (k, k), "pads": (p, p, p, p)}
        if groups > 1:
            attributes["group"] = groups
        return b.op(t, ins, [out], attributes)[0], out
    if t == "ConvTranspose":
        w = b.const(b.weights((shape[1], 4, 1, 1)))
        ins = [x, w] + ([b.const(b.weights((4,)))] if with_bias else [])
        out = (shape[0], 4, shape[2], shape[3])
        return b.op(t, ins, [out], {"kernel_shape": (1, 1)})[0], out
    d = shape[-1]
    if t == "Gemm":
        ins = [x, b.const(b.weights((d, d)))]
        if with_bias:
            ins.append(b.const(b.weights((d,))))
        attributes = {"transB": 1} if b.draw(st.booleans()) else {}
        return b.op(t, ins, [shape], attributes)[0], shape
    # MatMul: a constant weight, or (rarely) another activation of the same square shape
    other = None
    if shape[-2] == shape[-1] and b.draw(st.integers(0, 4)) == 4:
        other = b.pick(lambda s: s == shape)
    w = other[0] if other is not None else b.const(b.weights((d, d)))
    return b.op(t, [x, w], [shape])[0], shape


def _passive(b: _Builder, x: str, shape: Shape) -> tuple[str, Shape] | None:
    r = len(shape)
    options = ["Reshape", "Flatten", "Transpose", "Identity", "Dropout", "Slice"]
    if r == 4:
        options = ["MaxPool", *options, "Pad", "GlobalMaxPool"]
    if 1 in shape:
        options.append("Squeeze")
    if r < 5:
        options.append("Unsqueeze")
    t = b.choose(options)
    out: Shape
    if t == "MaxPool":
        k = b.draw(st.sampled_from((3, 1)))
        p = k // 2
        attributes = {"kernel_shape": (k, k), "pads": (p, p, p, p)}
        return b.op(t, [x], [shape], attributes)[0], shape
    if t == "GlobalMaxPool":
        out = (shape[0], shape[1], 1, 1)
        return b.op(t, [x], [out])[0], out
    if t == "Reshape":
        if r == 2:
            out = (1, shape[0], 1, shape[1])
        else:
            out = (_elems(shape[:-1]), shape[-1])
        return b.op(t, [x, b.ints(out)], [out])[0], out
    if t == "Flatten":
        out = (_elems(shape[:-1]), shape[-1]) if r > 1 else (1, shape[0])
        return b.op(t, [x], [out], {"axis": max(r - 1, 1)})[0], out
    if t == "Transpose":
        perm = (*range(r - 2), r - 1, r - 2)
        out = tuple(shape[i] for i in perm)
        return b.op(t, [x], [out], {"perm": perm})[0], out
    if t in ("Identity", "Dropout"):
        return b.op(t, [x], [shape])[0], shape
    if t == "Slice":  # the whole of one axis: the last one, or axis 0 when axes are omitted
        if b.draw(st.booleans()):
            ins = [x, b.ints([0]), b.ints([shape[-1]]), b.ints([r - 1])]
        else:
            ins = [x, b.ints([0]), b.ints([shape[0]])]
        return b.op(t, ins, [shape])[0], shape
    if t == "Pad":
        grow = b.draw(st.booleans()) and _elems(shape) * 2 <= _MAX_ELEMS
        pads = [0, 0, 1, 1, 0, 0, 1, 1] if grow else [0] * 8
        out = (shape[0], shape[1], shape[2] + 2, shape[3] + 2) if grow else shape
        ins = [x, b.ints(pads)]
        value = b.draw(st.integers(0, 2))
        if value:
            ins.append(b.const(0.0 if value == 1 else 1.0))
        return b.op(t, ins, [out], {"mode": "constant"})[0], out
    if t == "Squeeze":
        axis = shape.index(1)
        out = shape[:axis] + shape[axis + 1 :]
        if not out:
            return None
        return b.op(t, [x, b.ints([axis])], [out])[0], out
    out = (1, *shape)
    return b.op("Unsqueeze", [x, b.ints([0])], [out])[0], out


def _binary(b: _Builder, x: str, shape: Shape) -> str:
    t = b.choose(("Add", "Mul", "Sum", "Sub", "Div", "Max", "Min"))
    if t == "Sum":  # variadic: 2-4 inputs
        k = b.draw(st.sampled_from((3, 2, 4)))
        ins = [x]
        for _ in range(k - 1):
            y = b.pick(lambda s: s == shape)
            ins.append(y[0] if y is not None else x)
        return b.op(t, ins, [shape])[0]
    kind = b.draw(st.integers(0, 3))
    if kind == 0:
        y = b.pick(lambda s: s == shape)
        other = y[0] if y is not None else x
    elif kind == 1:
        other = x  # Mul(x, x): one tensor read by two slots of one op
    elif kind == 2:
        other = b.const(np.float32(0.5))
    else:
        bshape = (1, shape[1], 1, 1) if len(shape) == 4 else (1,)
        y = b.pick(lambda s: s == bshape)
        other = y[0] if y is not None else b.const(np.full(bshape, 2.0))
    ins = [other, x] if b.draw(st.booleans()) else [x, other]
    return b.op(t, ins, [shape])[0]


def _epilogue(b: _Builder, x: str, shape: Shape) -> str:
    """What exporters leave after a computing op: a BatchNorm, or a bias Add / scale Mul."""
    t = b.choose(("Add", "BatchNormalization", "Mul"))
    if t == "BatchNormalization" and _rank4(shape):
        c = shape[1]
        params = [b.const(v) for v in (np.ones(c), np.zeros(c), np.zeros(c), np.ones(c))]
        return b.op(t, [x, *params], [shape])[0]
    bshape = (1, shape[1], 1, 1) if _rank4(shape) else (shape[-1],)
    value = b.weights(bshape) if t != "Mul" else np.abs(b.weights(bshape)) + 0.5
    other = b.const(value)
    return b.op("Mul" if t == "Mul" else "Add", [x, other], [shape])[0]


def _maybe_computing(b: _Builder, x: str, shape: Shape) -> tuple[str, Shape]:
    """Mostly a fresh computing op (so a composite activation can fuse into it), else ``x``."""
    if b.draw(st.integers(0, 3)) != 3:
        return _computing(b, x, shape)
    return x, shape


def _mul(b: _Builder, a: str, c: str, shape: Shape) -> str:
    ins = [c, a] if b.draw(st.booleans()) else [a, c]
    return b.op("Mul", ins, [shape])[0]


#: How a composite activation step is written (:func:`graphs`): the activation itself, or a
#: near miss a fusion rule must refuse or not match (first: what shrinking moves towards).
#: ``"constant"``: one constant is not the activation's (HardSwish ``x+5``, GELU ``x/2``);
#: ``"operand"``: an operand in the wrong place (``Div(6, c)``, ``Div(sqrt2, x)``) or, for
#: Swish and Mish, the product of another tensor than ``x``; ``"consumer"``: an inner tensor
#: is also read by an op outside the activation.
NEAR_MISSES: tuple[str, ...] = ("none", "constant", "operand", "consumer")


def _near_miss(b: _Builder) -> str:
    """Mostly the true activation (two times in three), else one kind of near miss."""
    if b.draw(st.integers(0, 2)) != 2:
        return "none"
    return b.draw(st.sampled_from(NEAR_MISSES[1:]))


def _consumer(b: _Builder, miss: str, inner: str, shape: Shape) -> None:
    """The ``"consumer"`` near miss: a foreign op also reads the inner tensor ``inner``."""
    if miss == "consumer":
        b.op("Neg", [inner], [shape])


def _other(b: _Builder, x: str, shape: Shape) -> str:
    """A tensor of ``x``'s shape that is not ``x`` (the ``"operand"`` near miss of a product)."""
    y = b.pick(lambda s: s == shape)
    if y is not None and y[0] != x:
        return y[0]
    return b.op("Neg", [x], [shape])[0]


def _swish(b: _Builder, x: str, shape: Shape) -> str:
    x, shape = _maybe_computing(b, x, shape)
    miss = _near_miss(b)
    s = b.op("Sigmoid", [x], [shape])[0]
    _consumer(b, miss, s, shape)
    return _mul(b, _other(b, x, shape) if miss == "operand" else x, s, shape)


def _mish(b: _Builder, x: str, shape: Shape) -> str:
    x, shape = _maybe_computing(b, x, shape)
    miss = _near_miss(b)
    sp = b.op("Softplus", [x], [shape])[0]
    th = b.op("Tanh", [sp], [shape])[0]
    _consumer(b, miss, th if b.draw(st.booleans()) else sp, shape)
    return _mul(b, _other(b, x, shape) if miss == "operand" else x, th, shape)


def _scale_by(b: _Builder, x: str, shape: Shape, divisor: float, swap: bool = False) -> str:
    """``x / divisor`` written as a Div or as a Mul by the inverse (``swap``: ``divisor / x``,
    always a Div)."""
    if swap:
        return b.op("Div", [b.const(np.float32(divisor)), x], [shape])[0]
    if b.draw(st.booleans()):
        return b.op("Mul", [x, b.const(np.float32(1.0 / divisor))], [shape])[0]
    return b.op("Div", [x, b.const(np.float32(divisor))], [shape])[0]


def _wrong(b: _Builder, miss: str, names: Sequence[str]) -> str | None:
    """Which constant a ``"constant"`` near miss gets wrong (None otherwise)."""
    return b.draw(st.sampled_from(tuple(names))) if miss == "constant" else None


def _hardswish(b: _Builder, x: str, shape: Shape) -> str:
    x, shape = _maybe_computing(b, x, shape)
    miss = _near_miss(b)
    variant = b.draw(st.integers(0, 2))
    if variant == 2:
        # HardSwish's HardSigmoid: slope 1/6 (as float32, exact in an ONNX file), offset 0.5
        alpha = 0.25 if miss == "constant" else float(np.float32(1.0 / 6.0))
        h = b.op("HardSigmoid", [x], [shape], {"alpha": alpha})[0]
        _consumer(b, miss, h, shape)
        return _mul(b, _other(b, x, shape) if miss == "operand" else x, h, shape)
    wrong = _wrong(b, miss, ("add", "min", "max", "div"))
    three = b.const(np.float32(5.0 if wrong == "add" else 3.0))
    a = b.op("Add", [three, x] if b.draw(st.booleans()) else [x, three], [shape])[0]
    lo, hi = (-1.0 if wrong == "min" else 0.0), (7.0 if wrong == "max" else 6.0)
    c = b.op("Clip", [a, b.const(lo), b.const(hi)], [shape])[0]
    _consumer(b, miss, a if b.draw(st.booleans()) else c, shape)
    div, swap = (8.0 if wrong == "div" else 6.0), miss == "operand"
    if variant == 0:
        return _mul(b, x, _scale_by(b, c, shape, div, swap), shape)
    return _scale_by(b, _mul(b, x, c, shape), shape, div, swap)


def _gelu(b: _Builder, x: str, shape: Shape) -> str:
    x, shape = _maybe_computing(b, x, shape)
    miss = _near_miss(b)
    wrong = _wrong(b, miss, ("sqrt2", "one", "half"))
    sqrt2 = 2.0 if wrong == "sqrt2" else float(np.sqrt(np.float32(2.0)))
    d = _scale_by(b, x, shape, sqrt2, miss == "operand")
    e = b.op("Erf", [d], [shape])[0]
    a = b.op("Add", [e, b.const(np.float32(2.0 if wrong == "one" else 1.0))], [shape])[0]
    _consumer(b, miss, e if b.draw(st.booleans()) else a, shape)
    half = b.const(np.float32(0.25 if wrong == "half" else 0.5))
    if b.draw(st.booleans()):
        m = _mul(b, x, a, shape)
        return b.op("Mul", [m, half], [shape])[0]
    h = b.op("Mul", [a, half], [shape])[0]
    return _mul(b, x, h, shape)


def _split(b: _Builder, x: str, shape: Shape) -> None:
    c = shape[1]
    divisors = [k for k in (2, 3, 4) if c % k == 0]
    equal = b.draw(st.booleans())
    if divisors and equal:
        n = b.draw(st.sampled_from(divisors))
        outs = [(shape[0], c // n, *shape[2:])] * n
        b.op("Split", [x], outs, {"axis": 1, "num_outputs": n})
        return
    sizes = [1, c - 1] if c < 3 or b.draw(st.booleans()) else [1, 1, c - 2]
    outs = [(shape[0], k, *shape[2:]) for k in sizes]
    b.op("Split", [x, b.ints(sizes)], outs, {"axis": 1})


def _concat(b: _Builder, x: str, shape: Shape) -> None:
    k = b.draw(st.integers(2, 4))
    ins = [x]
    total = shape[1]

    def fits(s: Shape, total: int) -> bool:
        if len(s) != len(shape) or any(s[i] != shape[i] for i in range(len(s)) if i != 1):
            return False
        grown = total + s[1]
        return grown <= _MAX_DIM and _elems(s) // max(s[1], 1) * grown <= _MAX_ELEMS

    for _ in range(k - 1):
        y = b.pick(functools.partial(fits, total=total))
        if y is None:
            break
        ins.append(y[0])
        total += y[1][1]
    out = (shape[0], total, *shape[2:])
    b.op("Concat", ins, [out], {"axis": 1})


def _pool(b: _Builder, x: str, shape: Shape) -> None:
    if b.draw(st.booleans()):
        b.op("GlobalAveragePool", [x], [(shape[0], shape[1], 1, 1)])
    else:
        b.op("AveragePool", [x], [shape], {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1)})


def _resize(b: _Builder, x: str, shape: Shape) -> None:
    grow = b.draw(st.booleans()) and _elems(shape) * 4 <= _MAX_ELEMS
    scales = [1.0, 1.0, 2.0, 2.0] if grow else [1.0, 1.0, 1.0, 1.0]
    out = (shape[0], shape[1], shape[2] * 2, shape[3] * 2) if grow else shape
    b.op("Resize", [x, "", b.const(np.asarray(scales, dtype=np.float32))], [out])


def _step(b: _Builder, kind: str) -> None:
    """Add one building block; a block whose shape needs are not met adds an activation."""
    picked = b.pick()
    assert picked is not None  # the graph input always exists
    x, shape = picked
    if kind == "computing":
        _computing(b, x, shape)
    elif kind == "fused":
        y, s = _computing(b, x, shape)
        if b.draw(st.integers(0, 2)) == 2:
            y = _epilogue(b, y, s)
        _activation(b, y, s)
    elif kind == "passive":
        if _passive(b, x, shape) is None:
            _activation(b, x, shape)
    elif kind == "binary":
        _binary(b, x, shape)
    elif kind == "swish":
        _swish(b, x, shape)
    elif kind == "mish":
        _mish(b, x, shape)
    elif kind == "hardswish":
        _hardswish(b, x, shape)
    elif kind == "gelu":
        _gelu(b, x, shape)
    elif kind == "split":
        p = b.pick(lambda s: len(s) >= 2 and s[1] >= 2)
        if p is None:
            _activation(b, x, shape)
        else:
            _split(b, *p)
    elif kind == "concat":
        p = b.pick(lambda s: len(s) >= 2)
        if p is None:
            _activation(b, x, shape)
        else:
            _concat(b, *p)
    elif kind in ("pool", "resize"):
        p = b.pick(_rank4)
        if p is None:
            _activation(b, x, shape)
        elif kind == "pool":
            _pool(b, *p)
        else:
            _resize(b, *p)
    elif kind == "foreign":
        t = b.choose(FOREIGN_TYPES)
        b.op(t, [x], [shape], {"axis": -1} if t == "Softmax" else None)
    else:
        _activation(b, x, shape)


@st.composite
def graphs(
    draw: st.DrawFn,
    *,
    min_steps: int = 1,
    max_steps: int = 10,
    kinds: Sequence[str] = STEP_KINDS,
) -> Graph:
    """Random valid graphs, built acyclic by construction (see the module docstring).

    ``kinds`` restricts the building steps (a subset of :data:`STEP_KINDS`). Data tensors are
    float32 with tracked static shapes (the first graph input is ``[1, 4, 5, 5]``), every tensor
    has a declared type, and attribute values are exact in float32, so a graph survives an ONNX
    round trip unchanged and ONNX Runtime can run it.
    """
    b = _Builder(draw, draw(st.integers(0, 2**32 - 1)))
    inputs: dict[str, TensorType] = {}
    shapes: list[Shape] = [(1, 4, 5, 5)]
    if draw(st.integers(0, 3)) == 3:
        shapes.append(draw(st.sampled_from(((1, 4, 5, 5), (4, 5)))))
    for k, s in enumerate(shapes):
        name = f"x{k}"
        inputs[name] = TensorType(1, s)
        b.data.append((name, s))
    n = draw(st.integers(min_steps, max_steps))
    for _ in range(n):
        _step(b, draw(st.sampled_from(tuple(kinds))))
    consumed = {t for op in b.ops for t in op.inputs}
    made = [t for t, _ in b.data if t not in inputs]
    outputs = [t for t in made if t not in consumed]  # never empty: the last op's outputs
    middle = [t for t in made if t in consumed]
    if middle:  # graph outputs from the middle of a pattern (shrinks to none)
        extra = draw(st.lists(st.sampled_from(middle), max_size=2, unique=True))
        outputs += [t for t in middle if t in extra]
    types = {k: v for k, v in b.types.items() if k not in inputs}
    g = Graph.build(b.ops, inputs, outputs, b.inits, types)
    check_invariants(g)
    return g


def permuted(graph: Graph, order: Sequence[int]) -> Graph:
    """The same graph built from its ops listed in another order (``order`` permutes positions).

    :meth:`Graph.build` keeps a given order when it is topological and otherwise sorts it as
    close to the given order as it can, so this is how a test reorders the nodes of a file.
    """
    ops = [graph.ops[graph.order[i]] for i in order]
    return Graph.build(
        ops,
        {t: graph.value_types.get(t, TensorType()) for t in graph.inputs},
        graph.outputs,
        graph.initializers.values(),
        {k: v for k, v in graph.value_types.items() if k not in graph.inputs},
        name=graph.name,
    )


# --------------------------------------------------------------------------------------------
# rule sets, dispatch, plans

_ASYM_PT = QuantPolicy.of(
    QuantProperty.PER_TENSOR, QuantProperty.LINEAR, QuantProperty.ASYMMETRICAL
)
_P2_PT = QuantPolicy.of(
    QuantProperty.PER_TENSOR,
    QuantProperty.LINEAR,
    QuantProperty.SYMMETRICAL,
    QuantProperty.POWER_OF_2,
)


@st.composite
def rule_sets(
    draw: st.DrawFn,
    base: Platform | str | None = None,
    *,
    quirks: bool = False,
) -> Platform:
    """Platforms derived from ``base`` (default: a corrected registered one) by random edits.

    Removes random subsets of the quantized, computing, activation, passive types, activation
    patterns and alignment groups; may add ops no rule set quantizes as extra activations;
    varies the activation and bias rules. Roles stay disjoint (no op type is both computing and
    passive), and every activation and composite pattern kept can fire (its ops stay in
    ``quant_types``, as :class:`~fusekit.platforms.Platform` requires). With ``quirks`` a
    random subset of PPQ 0.6.6's quirks is switched on. The result is named ``custom_<base>``
    and is not registered (passes accept Platform values).
    """
    if base is None:
        base = draw(st.sampled_from(("trt_int8", "ort_int8", "ppl_cuda_int8")))
    p = get_platform(base)

    def minus(items: frozenset[str]) -> frozenset[str]:
        if not items:
            return items
        drop = draw(st.sets(st.sampled_from(sorted(items)), max_size=max(1, len(items) // 3)))
        return items - drop

    extra_acts = draw(st.sets(st.sampled_from(("Abs", "Neg", "Cos")), max_size=2))
    acts = minus(p.activation_types) | extra_acts
    quant = minus(p.quant_types) | extra_acts
    computing = minus(p.computing_types)
    # a fused activation is quantized (Platform checks it): keep the rules that can still fire
    patterns = frozenset(
        name
        for name in minus(p.activation_patterns)
        if any(all(ts & quant for ts in f.op_types()) for f in COMPOSITES[name].forms)
    )
    changes: dict[str, Any] = {
        "name": f"custom_{p.name}",
        "quant_types": quant,
        "computing_types": computing,
        "activation_types": acts & quant,
        "activation_patterns": patterns,
        "passive_types": minus(p.passive_types),
        "alignment": {k: p.alignment[k] for k in minus(frozenset(p.alignment))},
    }
    act_rule = draw(st.sampled_from(("keep", "asym", "pow2")))
    if act_rule == "asym":
        changes["activation"] = QuantRule(_ASYM_PT, quant_min=0, quant_max=255)
    elif act_rule == "pow2":
        changes["activation"] = QuantRule(_P2_PT)
    if draw(st.booleans()):
        changes["bias"] = draw(
            st.sampled_from((BiasRule(QuantState.FP32), get_platform("ppl_cuda_int8").bias))
        )
    if quirks:
        changes["quirks"] = frozenset(draw(st.sets(st.sampled_from(sorted(QUIRKS)))))
    return p.evolve(**changes)


@st.composite
def dispatches(
    draw: st.DrawFn,
    graph: Graph,
    others: Sequence[str] = ("other_platform",),
    *,
    min_size: int = 0,
) -> dict[str, str | None]:
    """An ``init_plan`` dispatch mapping: some ops on another platform, some left FP32.

    ``Constant`` ops are never dispatched: they are parameters, not computations.
    """
    names = tuple(n for n in graph.order if graph.ops[n].op_type != "Constant")
    if not names:
        return {}
    return draw(
        st.dictionaries(
            st.sampled_from(names),
            st.sampled_from((*others, None)),
            min_size=min(min_size, len(names)),
            max_size=len(names),
        )
    )


@st.composite
def initial_plans(
    draw: st.DrawFn,
    graph: Graph,
    platform: Platform | str,
    *,
    conservative: bool = True,
) -> QuantPlan:
    """``init_plan(graph, platform, dispatch)`` with dispatch ``"all"``, a random mapping (so
    several platforms share one graph) or, if ``conservative``, PPQ's conservative dispatcher."""
    modes = ("all", "mapping", "ppq-conservative") if conservative else ("all", "mapping")
    mode = draw(st.sampled_from(modes))
    if mode == "mapping":
        return init_plan(graph, platform, draw(dispatches(graph, min_size=1)))
    return init_plan(graph, platform, mode)


_STATES = tuple(QuantState)


@st.composite
def edited_plans(
    draw: st.DrawFn, plan: QuantPlan, *, max_edits: int = 6, links: bool = True
) -> QuantPlan:
    """``plan`` after random edits through the public plan API: states, overlap and follow
    links (a :class:`~fusekit.errors.SharingCycle` is expected and skipped), unlinks and
    scales on roots. Every result is a plan the API allows, however odd. With ``links=False``
    only states are edited (links and scales are left to the passes and calibration)."""
    slots = tuple(plan.slots())
    if not slots:
        return plan
    kinds = ("state", "overlap", "follow", "unlink", "scale") if links else ("state",)
    for _ in range(draw(st.integers(0, max_edits))):
        kind = draw(st.sampled_from(kinds))
        s = draw(st.sampled_from(slots))
        try:
            if kind == "state":
                plan = plan.with_state(s, draw(st.sampled_from(_STATES)))
            elif kind == "overlap":
                plan = plan.overlap(s, draw(st.sampled_from(slots)))
            elif kind == "follow":
                plan = plan.follow(s, draw(st.sampled_from(slots)))
            elif kind == "unlink":
                plan = plan.unlink(s)
            else:
                plan = plan.set_scale(s, draw(_scales), 0.0)
        except (SharingCycle, NotARoot):
            continue
    return plan


_scales = st.floats(min_value=2.0**-12, max_value=2.0**4, width=32, allow_subnormal=False)


def _needs_scale(plan: QuantPlan) -> list[Slot]:
    """Roots the calibration contract covers: INITIAL roots, PASSIVE_INIT roots with followers."""
    followed: set[Slot] = set()
    for s in plan.slots():
        parent = plan.parent(s)
        if parent is not None and parent[1] == LinkKind.FOLLOW:
            followed.add(parent[0])
    out = []
    for s in plan.slots():
        if plan.parent(s) is not None:
            continue
        st_ = plan[s].state
        if st_ == QuantState.INITIAL or (st_ == QuantState.PASSIVE_INIT and s in followed):
            out.append(s)
    return out


def _constant_shape(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    """The shape of a constant: an initializer's dims or a ``Constant`` op's value shape."""
    init = graph.initializers.get(tensor)
    if init is not None:
        return tuple(init.dims)
    prod = graph.producer(tensor)
    if prod is not None and graph.ops[prod.op].op_type == "Constant":
        value = graph.ops[prod.op].attributes.get("value")
        if isinstance(value, np.ndarray):
            return tuple(value.shape)
    return None


def _calibrated_config(
    graph: Graph, slot: Slot, cfg: TensorQuantConfig, scale: float
) -> TensorQuantConfig:
    offset = 0.0
    if cfg.policy.has(QuantProperty.ASYMMETRICAL):
        offset = float(round((float(cfg.quant_min) + float(cfg.quant_max)) / 2))
    value: Any = np.float32(scale)
    off: Any = np.float32(offset)
    if cfg.policy.per_channel and cfg.channel_axis is not None:
        dims = _constant_shape(graph, graph.tensor_of(slot))
        if dims is None:  # an activation quantized per channel: its declared shape
            shape = graph.tensor(graph.tensor_of(slot)).shape
            if shape is not None and all(isinstance(d, int) for d in shape):
                dims = tuple(int(d) for d in shape if isinstance(d, int))
        n = 1
        if dims is not None and -len(dims) <= cfg.channel_axis < len(dims):
            n = dims[cfg.channel_axis]
        value = np.full((n,), scale, dtype=np.float32)
        off = np.full((n,), offset, dtype=np.float32)
    state = QuantState.ACTIVATED if cfg.state == QuantState.INITIAL else QuantState.PASSIVE
    return cfg.with_scale(value, off).with_state(state)


@st.composite
def calibrated_plans(draw: st.DrawFn, plan: QuantPlan) -> QuantPlan:
    """``plan`` with a random scale on every root the calibration contract covers.

    INITIAL roots become ACTIVATED, PASSIVE_INIT roots with FOLLOW members (alignment masters)
    become PASSIVE; per-channel weight roots get one scale per channel.
    """
    ev = plan.evolver()
    for s in _needs_scale(plan):
        ev.set_config(s, _calibrated_config(plan.graph, s, plan[s], draw(_scales)))
    plan = ev.persistent()
    return _activate_followers(plan)


def _activate_followers(plan: QuantPlan) -> QuantPlan:
    """PASSIVE_INIT followers of a calibrated root become PASSIVE (as calibration does).

    Passive fusion of ``node-unit`` rule sets makes data-mover outputs follow their input
    before calibration; the calibration contract then activates them with the root's scale.
    """
    ev = plan.evolver()
    for s in plan.slots():
        cfg = plan[s]
        if cfg is None or cfg.state != QuantState.PASSIVE_INIT or plan.parent(s) is None:
            continue
        root = plan[plan.root(s)]
        if root.scale is not None and root.offset is not None:
            ev.set_config(s, cfg.with_state(QuantState.PASSIVE))
    return ev.persistent()


@attrs.frozen
class StandInCalibration:
    """A deterministic stand-in for calibration, usable as a pipeline pass.

    Gives every root the calibration contract covers a scale derived from a hash of its slot
    name (``2**-k``, k in 0..7), as a logged ``config`` decision, so that
    ``default_pipeline(p, calibration=StandInCalibration())`` exercises the passes that run
    after calibration (alignment with scales, bias derivation) without running a model.
    """

    name = "stand_in_calibration"

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        """Calibrate; a second run changes nothing (every covered root has a scale)."""
        ctx = PassContext(graph, plan, _ANY_PLATFORM, self.name)
        idx = graph.index
        for s in _needs_scale(plan):
            scale = 2.0 ** -(zlib.crc32(str(s).encode()) % 8)
            sid = idx.slot_id(s)
            new = _calibrated_config(graph, s, plan[s], scale)
            ctx.rec.config("calibration", (idx.slot_op[sid],), sid, new, "stand-in calibration")
        # followers of a calibrated root become PASSIVE, as real calibration makes them
        ev = ctx.rec.ev
        for sid in range(idx.n_slots):
            cfg = ev.cfg(sid)
            if cfg is None or cfg.state != QuantState.PASSIVE_INIT or ev.parent(sid) < 0:
                continue
            root = ev.cfg(ev.root(sid))
            if root.scale is not None and root.offset is not None:
                new = cfg.with_state(QuantState.PASSIVE)
                ctx.rec.config("calibration", (idx.slot_op[sid],), sid, new, "stand-in follower")
        return ctx.rec.result(plan)


_ANY_PLATFORM = Platform(name="stand_in_calibration")


# --------------------------------------------------------------------------------------------
# snapshots and comparisons


def _freeze(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (tuple, list)):
        return tuple(_freeze(v) for v in value)
    return value


def graph_snapshot(graph: Graph) -> tuple[Any, ...]:
    """A deep, comparable copy of everything a graph value holds (for purity checks)."""
    ops = tuple(
        (
            op.name,
            op.op_type,
            op.inputs,
            op.outputs,
            op.domain,
            tuple((k, _freeze(op.attributes[k])) for k in op.attributes),
        )
        for op in graph
    )
    inits = tuple(
        sorted(
            (n, i.elem_type, i.dims, _freeze(np.array(i.array(), copy=True)))
            for n, i in graph.initializers.items()
        )
    )
    return (
        ops,
        tuple(graph.order),
        graph.inputs,
        graph.outputs,
        inits,
        tuple(sorted(graph.value_types.items(), key=lambda kv: kv[0])),
        graph.name,
    )


def _cfg_key(cfg: TensorQuantConfig | None) -> Any:
    if cfg is None:
        return None
    return tuple(_freeze(getattr(cfg, f.name)) for f in attrs.fields(TensorQuantConfig))


def plan_snapshot(plan: QuantPlan) -> tuple[Any, ...]:
    """A deep, comparable copy of a plan's configs, links and dispatch (for purity checks)."""
    return (
        tuple(_cfg_key(c) for c in plan.configs),
        plan.link_table(),
        tuple(plan.dispatch),
    )


def states_and_roots(plan: QuantPlan) -> dict[str, tuple[str, str]]:
    """``{"op|in|0": (state name, root slot)}`` for every slot: a plan up to scales."""
    return {str(s): (plan[s].state.name, str(plan.root(s))) for s in plan.slots()}


# --------------------------------------------------------------------------------------------
# law checks

Runnable = Any  # a pass, a Pipeline, anything with .run(graph, plan)


def _fail(title: str, problems: Sequence[str]) -> None:
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise AssertionError(f"{title}:\n  {shown}{more}")


def assert_pure(step: Runnable, graph: Graph, plan: QuantPlan) -> Any:
    """Run ``step`` and assert it left ``graph`` and ``plan`` exactly as they were.

    Returns the step's result. Catches a pass that mutates a config, a link vector, an
    initializer's data or an op's attributes in place (values are frozen, but Python lets a
    determined pass write through ``object.__setattr__`` or a writable numpy view).
    """
    g0, p0 = graph_snapshot(graph), plan_snapshot(plan)
    result = step.run(graph, plan)
    problems = []
    if graph_snapshot(graph) != g0:
        problems.append(f"{_name(step)} modified its input graph")
    if plan_snapshot(plan) != p0:
        problems.append(f"{_name(step)} modified its input plan")
    _fail("purity", problems)
    return result


def _name(step: Runnable) -> str:
    return str(getattr(step, "name", type(step).__name__))


def assert_deterministic(step: Runnable, graph: Graph, plan: QuantPlan) -> Any:
    """Run ``step`` twice on the same inputs: equal plans and equal decision logs."""
    a, b = step.run(graph, plan), step.run(graph, plan)
    problems = []
    if a.plan != b.plan:
        problems.append(f"{_name(step)} gave two different plans for the same inputs")
    if a.decisions != b.decisions:
        problems.append(f"{_name(step)} gave two different decision logs for the same inputs")
    _fail("determinism", problems)
    return a


def assert_idempotent(step: Runnable, graph: Graph, plan: QuantPlan) -> Any:
    """Run ``step`` on its own output: the very same plan object comes back, with no changes.

    Refusals may repeat (they describe the graph). Returns the first result.
    """
    first = step.run(graph, plan)
    second = step.run(graph, first.plan)
    problems = []
    if second.plan is not first.plan:
        changed = [str(d) for d in second.changes][:5]
        problems.append(
            f"{_name(step)} changed its own output on a second run: {changed or 'a new object'}"
        )
    elif second.changes:
        problems.append(f"{_name(step)} logged changes on a second run: {second.changes[:3]}")
    _fail("idempotence", problems)
    return first


def assert_log_complete(result: FusionResult | PipelineResult) -> None:
    """The decision log is the whole story of ``result``.

    Replaying the decisions onto the input plan gives the output plan; every slot whose config
    or direct link changed appears in some decision's ``changes``; every refusal has a reason.
    """
    problems = []
    before, after = result.input_plan, result.plan
    decisions = result.decisions
    if replay(before, decisions) != after:
        problems.append("replay(input_plan, decisions) does not reproduce the result plan")
    logged = {ch.slot for d in decisions for ch in d.changes}
    logged |= {d.slot for d in decisions if d.slot is not None and not d.is_refusal}
    for s in after.slots():
        changed = before.get(s) != after.get(s) or before.parent(s) != after.parent(s)
        if changed and s not in logged:
            problems.append(f"{s} changed but no decision lists it")
    for d in decisions:
        if d.is_refusal and not d.reason.strip():
            problems.append(f"a refusal of {d.rule} on {d.ops} gives no reason")
    _fail("decision log", problems)


def assert_plan_laws(
    graph: Graph,
    plan: QuantPlan,
    platform: Platform | str,
    laws: Sequence[str] | None = None,
) -> None:
    """The laws of :mod:`fusekit.laws` hold for ``plan`` (all, or the ones named)."""
    _fail("plan laws", [str(v) for v in check_laws(graph, plan, platform, laws)])


def check_pass(
    step: Runnable,
    graph: Graph,
    plan: QuantPlan,
    platform: Platform | str | None = None,
    laws: Sequence[str] | None = None,
) -> Any:
    """Every law of a pass or pipeline on one input: purity, determinism, idempotence, the
    decision log, the laws the pass ``ensures``, and (when ``platform`` is given) the plan
    laws on the result.

    A pass with ``ensures`` (every :class:`~fusekit.passes.FusionPass`; each pass of a
    :class:`~fusekit.Pipeline`) is checked for the laws it names first: one that held on the
    input plan and fails on the result raises :class:`~fusekit.errors.PostconditionError` (an
    ``AssertionError``) naming the pass. The plan laws are postconditions of a whole pipeline
    (the passive law, for instance, holds once passive fusion has run); for a single pass name
    the ones it guarantees in ``laws`` (e.g. ``["acyclic-sharing", "no-dead-quantization"]``).
    Returns the first result. Use it inside a Hypothesis test over :func:`graphs`.
    """
    result = assert_pure(step, graph, plan)
    _check_ensures(step, graph, plan, platform)
    assert_deterministic(step, graph, plan)
    assert_idempotent(step, graph, plan)
    assert_log_complete(result)
    if platform is not None:
        assert_plan_laws(graph, result.plan, platform, laws)
    return result


def _check_ensures(
    step: Runnable, graph: Graph, plan: QuantPlan, platform: Platform | str | None = None
) -> QuantPlan:
    """Run ``step`` (each pass of a pipeline in turn) and raise
    :class:`~fusekit.errors.PostconditionError` if a pass broke a law its ``ensures`` names.

    ``platform`` gives the laws their meaning; by default each pass's own ``platform`` field.
    A step without ``ensures`` (a user's pass that declares none) is not checked. Returns the
    last plan.
    """
    # imported here, not at the top: keeps this module's import block as it was (merges)
    from .errors import PostconditionError
    from .passes import Pipeline
    from .passes._core import broken_postconditions

    if isinstance(step, Pipeline):
        for s in step.passes:
            plan = _check_ensures(s, graph, plan, platform)
        return plan
    r = step.run(graph, plan)
    if getattr(step, "ensures", ()) and (platform is not None or hasattr(step, "platform")):
        broken = broken_postconditions(step, graph, r, platform)
        if broken:
            raise PostconditionError(_name(step), broken)
    return r.plan  # type: ignore[no-any-return]
