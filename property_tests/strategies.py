"""Strategies of the property suite.

The graph, rule-set, plan and scale strategies are fusekit's public ones
(:mod:`fusekit.testing`), so users test their rule sets with exactly what fusekit is tested
with; this module adds what only the suite needs: platform choices, a graph-plus-plan bundle,
mutated JSON documents for the loader fuzzing, and (issue 16) rule sets making multi-input
ops passive with "join" graphs feeding them several quantized inputs, and mixed-scheme plans.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

import fusekit
from fusekit import Graph, Platform, QuantPlan
from fusekit.testing import (
    ACTIVATION_TYPES,
    COMPUTING_TYPES,
    FOREIGN_TYPES,
    PASSIVE_TYPES,
    STEP_KINDS,
    StandInCalibration,
    calibrated_plans,
    dispatches,
    edited_plans,
    graphs,
    initial_plans,
    permuted,
    rule_sets,
)

__all__ = [
    "ACTIVATION_TYPES",
    "COMPAT",
    "COMPUTING_TYPES",
    "CORRECTED",
    "FOREIGN_TYPES",
    "JOIN_TYPES",
    "OTHER_SCHEMES",
    "PASSIVE_TYPES",
    "SOURCE_KINDS",
    "STEP_KINDS",
    "StandInCalibration",
    "any_platforms",
    "calibrated_plans",
    "cases",
    "compat_platforms",
    "corrected_platforms",
    "dispatches",
    "edited_plans",
    "graphs",
    "initial_plans",
    "join_cases",
    "join_graphs",
    "mixed_scheme_cases",
    "mixed_scheme_plans",
    "mutated_json",
    "passive_rule_sets",
    "permuted",
    "rule_sets",
]

CORRECTED = ("trt_int8", "ort_int8", "ppl_cuda_int8")
CORRECTED += (
    "rknn_int8",
    "snpe_int8",
    "openvino_int8",
    "openvino_int8_mixed",
    "ncnn_int8",
    "trt_fp8",
)
_FIRST_COMPAT = (
    "ppq066_trt_int8",
    "ppq066_ort_int8",
    "ppq066_ppl_cuda_int8",
    "ppq066_ort_int8_softplus_tanh",
)
#: every PPQ 0.6.6 reproduction fusekit ships (the four first, then all of fusekit._ppq066)
COMPAT = tuple(
    sorted(
        (n for n in fusekit.platforms() if n.startswith("ppq066_")),
        key=lambda n: (n not in _FIRST_COMPAT, n),
    )
)


def corrected_platforms() -> st.SearchStrategy[Platform]:
    """fusekit's own rule sets, and random rule sets derived from them without PPQ quirks."""
    return st.one_of(st.sampled_from(CORRECTED).map(fusekit.get_platform), rule_sets())


def compat_platforms() -> st.SearchStrategy[Platform]:
    """PPQ 0.6.6's rule sets, reproduced exactly."""
    return st.sampled_from(COMPAT).map(fusekit.get_platform)


def any_platforms() -> st.SearchStrategy[Platform]:
    """Every kind: corrected, PPQ's, and derived rule sets with random PPQ quirks switched on."""
    return st.one_of(corrected_platforms(), compat_platforms(), rule_sets(quirks=True))


@st.composite
def cases(
    draw: st.DrawFn,
    platforms: st.SearchStrategy[Platform] | None = None,
    *,
    edited: bool = False,
    calibrated: bool | None = None,
    edit_links: bool = True,
    joins: bool = True,
) -> tuple[Graph, Platform, QuantPlan]:
    """A graph, a platform and a plan for it (``init_plan`` with a random dispatch; optionally
    calibrated; with ``edited``, also random edits through the plan API, of states only unless
    ``edit_links``).

    With ``joins`` (the default), one case in three is a :func:`join_cases` one: a multi-input
    op made passive by a rule set derived from a drawn platform, so the laws also meet passive
    ops with several quantized inputs (issue 16).
    """
    base = platforms if platforms is not None else corrected_platforms()
    if joins and draw(st.integers(0, 2)) == 2:
        g, p, plan = draw(join_cases(base))
    else:
        g = draw(graphs())
        p = draw(base)
        plan = draw(initial_plans(g, p))
    if calibrated is None:
        calibrated = draw(st.booleans())
    if calibrated:
        plan = draw(calibrated_plans(plan))
    if edited:
        plan = draw(edited_plans(plan, links=edit_links))
    return g, p, plan


# --------------------------------------------------------------------------------------------
# mutated JSON (loader fuzzing)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        new = dict(doc)
        new[head] = _replace(doc[head], rest, value)
        return new
    new_list = list(doc)
    new_list[head] = _replace(doc[head], rest, value)
    return new_list


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict):
        return _replace(doc, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})
    return _replace(doc, path[:-1], [v for i, v in enumerate(parent) if i != path[-1]])


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any, max_mutations: int = 3) -> str:
    """``doc`` (plain JSON data) with random values replaced, keys deleted or added, then
    serialized; sometimes the text itself is truncated or has a byte changed."""
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(("replace", "delete", "add")))
        if kind == "replace":
            doc = _replace(doc, path, draw(_json_values))
        elif kind == "delete" and path:
            doc = _delete(doc, path)
        else:
            target: Any = doc
            for k in path:
                target = target[k]
            if isinstance(target, dict):
                doc = _replace(doc, path, {**target, draw(st.text(max_size=8)): draw(_json_values)})
            elif isinstance(target, list):
                doc = _replace(doc, path, [*target, draw(_json_values)])
    text = json.dumps(doc, allow_nan=True)
    damage = draw(st.sampled_from(("none", "none", "truncate", "byte")))
    if damage == "truncate" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif damage == "byte" and text:
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.characters()) + text[i + 1 :]
    return text


# --------------------------------------------------------------------------------------------
# multi-input passive ops (issue 16)
#
# fusekit's registered rule sets make only single-input data movers passive, so the passive
# law's FIRST-input half ("outputs share the scale of input 0, whatever the other inputs
# use") is only ever exercised when a rule set makes a multi-input op passive. These
# strategies build such rule sets (``Platform.evolve`` on a drawn base) and small graphs whose
# "join" op reads several quantized inputs, each from a drawn kind of source, in a drawn order.

#: Multi-input op types :func:`passive_rule_sets` makes passive (and :func:`join_graphs` builds).
JOIN_TYPES: tuple[str, ...] = ("Concat", "Add", "Sum", "Max", "Mul", "Pad", "Where")
#: Where a join input comes from. "fused activation" is the output of Conv -> activation,
#: "shared producer" a Conv output that another op reads too (so nothing fuses into it),
#: "computing" a Conv output read only by the join, "passive" a passive op after a fused pair
#: (two times in three half of a Split, concatenated back to full size; else a MaxPool).
SOURCE_KINDS: tuple[str, ...] = (
    "fused activation",
    "shared producer",
    "graph input",
    "constant",
    "computing",
    "passive",
)
_JOIN_SHAPE = (1, 4, 5, 5)


class _Join:
    """Mutable scratch state of one :func:`join_graphs` draw (never escapes the strategy)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.ops: list[fusekit.Op] = []
        self.inits: list[fusekit.Initializer] = []
        self.types: dict[str, fusekit.TensorType] = {}
        self.extra_outputs: list[str] = []
        self.n = 0
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def op(
        self,
        op_type: str,
        inputs: list[str],
        shape: tuple[int, ...] = _JOIN_SHAPE,
        attributes: dict[str, Any] | None = None,
        elem_type: int = 1,
    ) -> str:
        out = self.fresh("t")
        self.types[out] = fusekit.TensorType(elem_type, shape)
        name = self.fresh(op_type.lower() + "_")
        self.ops.append(fusekit.Op(name, op_type, tuple(inputs), (out,), attributes))
        return out

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """An initializer, or (one time in four) a ``Constant`` op's output."""
        arr = np.asarray(value, dtype=dtype)
        if self.draw(st.integers(0, 3)) == 3:
            out = self.fresh("k")
            name = self.fresh("const_")
            self.ops.append(fusekit.Op(name, "Constant", (), (out,), {"value": arr}))
            return out
        name = self.fresh("c")
        self.inits.append(fusekit.Initializer.from_array(name, arr))
        return name

    def conv(self, x: str) -> str:
        c = _JOIN_SHAPE[1]
        w = self.const(self.rng.normal(0.0, 0.5, size=(c, c, 1, 1)))
        return self.op("Conv", [x, w], attributes={"kernel_shape": (1, 1)})

    def base(self, x: str, made: list[str]) -> str:
        """What a source's Conv reads: the graph input, or (one time in three) an earlier
        computed source tensor other than the first input, so sources also chain. Never a
        constant: an op reading only constants folds into a constant, which the passes treat
        as one (a constant first input is its own source kind). Never the first input: a
        second reader would turn it into a "shared producer" whatever kind was drawn for it,
        and the first input's kind is what the passive law is about."""
        computed = [t for t in made[1:] if t in self.types]
        if computed and self.draw(st.integers(0, 2)) == 2:
            return self.draw(st.sampled_from(computed))
        return x

    def source(self, kind: str, x: str, made: list[str]) -> str:
        if kind == "graph input":
            return x
        if kind == "constant":
            return self.const(self.rng.normal(0.0, 1.0, size=_JOIN_SHAPE))
        c = self.conv(self.base(x, made))
        if kind == "computing":
            return c
        if kind == "shared producer":
            other = self.op(self.draw(st.sampled_from(("Relu", "Sigmoid", "Abs"))), [c])
            self.extra_outputs.append(other)
            return c
        act = self.op(self.draw(st.sampled_from(("Relu", "Relu", "Clip", "Sigmoid"))), [c])
        if kind == "fused activation":
            return act
        if self.draw(st.integers(0, 2)) != 2:  # mostly a Split: the passive op with 2 outputs
            return self.split_source(act)
        k = self.draw(st.sampled_from((1, 3)))
        attributes = {"kernel_shape": (k, k), "pads": (k // 2,) * 4}
        return self.op("MaxPool", [act], attributes=attributes)

    def split(self, x: str, shape: tuple[int, ...]) -> tuple[str, str]:
        """A 2-way Split of ``x`` along the channels: the passive op with several outputs."""
        half = (shape[0], shape[1] // 2, *shape[2:])
        outs = (self.fresh("t"), self.fresh("t"))
        for o in outs:
            self.types[o] = fusekit.TensorType(1, half)
        name = self.fresh("split_")
        self.ops.append(fusekit.Op(name, "Split", (x,), outs, {"axis": 1, "num_outputs": 2}))
        return outs

    def split_source(self, x: str) -> str:
        """One half of a Split of ``x``, concatenated with itself back to ``x``'s shape (every
        source has one shape)."""
        half = self.split(x, _JOIN_SHAPE)[self.draw(st.integers(0, 1))]
        return self.op("Concat", [half, half], _JOIN_SHAPE, {"axis": 1})


def _source_kinds(draw: st.DrawFn, n: int) -> list[str]:
    """``n`` source kinds, each drawn uniformly (the first one is what the passive law is
    about: every kind must reach it)."""
    return [draw(st.sampled_from(SOURCE_KINDS)) for _ in range(n)]


@st.composite
def join_graphs(draw: st.DrawFn, join_types: Sequence[str] = JOIN_TYPES) -> Graph:
    """Small graphs around one multi-input op ("join"): Concat/Sum with 2-4 inputs, Add, Max or
    Mul with 2, ``Pad(data, pads, value)`` with a constant or computed scalar pad value,
    ``Where(cond, a, b)``. Each data input comes from a drawn :data:`SOURCE_KINDS` source (the
    first one uniformly), sometimes the same tensor twice; the join's output is a graph output
    or feeds a Relu, a Conv, a MaxPool or (one time in three) a 2-way Split, the passive op
    with several outputs; three times in four a Conv follows, so the join is not in a float
    tail.
    """
    b = _Join(draw)
    x = "x0"
    made: list[str] = []
    t = draw(st.sampled_from(tuple(join_types)))
    n = {"Concat": draw(st.integers(2, 4)), "Sum": draw(st.integers(2, 4))}.get(t, 2)
    ins: list[str] = []
    for kind in _source_kinds(draw, n):
        if ins and draw(st.integers(0, 5)) == 5:
            ins.append(draw(st.sampled_from(ins)))  # the same tensor read twice
            continue
        ins.append(b.source(kind, x, made))
        made.append(ins[-1])
    if all(i != x and i not in b.types for i in ins):
        # only constants: the join would fold into a constant (the passes treat an op reading
        # only constants as one), so its last input is computed instead
        ins[-1] = b.source("computing", x, made)
        made.append(ins[-1])
    shape = _JOIN_SHAPE
    if t == "Concat":
        shape = (1, _JOIN_SHAPE[1] * n, *_JOIN_SHAPE[2:])
        y = b.op("Concat", ins, shape, {"axis": 1})
    elif t == "Pad":
        data = ins[0]
        value_kind = draw(st.sampled_from(("computed", "constant", "zero", "none")))
        if data != x and data not in b.types:  # a constant: the pad value must be computed
            value_kind = "computed"  # (from ins[1], which is then computed: see above)
        pad_ins = [data, b.const(np.asarray([0, 0, 1, 1, 0, 0, 1, 1]), np.int64)]
        if value_kind == "computed":  # a scalar computed from another source: a quantized slot
            pad_ins.append(b.op("ReduceMax", [ins[1]], (), {"keepdims": 0}))
        elif value_kind != "none":
            pad_ins.append(b.const(np.float32(0.0 if value_kind == "zero" else 0.5)))
        shape = (1, _JOIN_SHAPE[1], _JOIN_SHAPE[2] + 2, _JOIN_SHAPE[3] + 2)
        y = b.op("Pad", pad_ins, shape, {"mode": "constant"})
    elif t == "Where":
        cond = b.op("Greater", [ins[0], b.const(np.float32(0.0))], elem_type=9)
        y = b.op("Where", [cond, ins[0], ins[1]])
    else:
        y = b.op(t, ins)
    after = draw(st.sampled_from(("Split", "output", "Relu", "Conv", "MaxPool", "Split")))
    outputs = [y]
    if after == "Split":  # (every join output has an even channel count)
        outputs = list(b.split(y, shape))
    elif after not in ("output", "Split"):
        if after == "Conv":
            c = shape[1]
            w = b.const(b.rng.normal(0.0, 0.5, size=(4, c, 1, 1)))
            z = b.op("Conv", [y, w], (1, 4, *shape[2:]), {"kernel_shape": (1, 1)})
        else:
            attributes = (
                {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1)} if after == "MaxPool" else None
            )
            z = b.op(after, [y], shape, attributes)
        outputs = [z, y] if draw(st.integers(0, 4)) == 4 else [z]
    if after != "Conv" and draw(st.integers(0, 3)) != 3:
        # Three times in four a Conv reads the first tensor after the join, so the join is
        # not in the float tail of a "node-unit" rule set (ort_int8 leaves the ops from which
        # no computing op is reachable FP32) and is connected to a computing op even when its
        # inputs are only graph inputs and constants (the "all" dispatch quantizes only such
        # regions): without it half of the joins had no quantized input at all. The fourth
        # time the join stays at the end of the graph, so the laws meet float tails too.
        end = outputs[0]
        c = b.types[end].shape[1]
        w = b.const(b.rng.normal(0.0, 0.5, size=(4, c, 1, 1)))
        end_shape = (1, 4, *b.types[end].shape[2:])
        outputs[0] = b.op("Conv", [end, w], end_shape, {"kernel_shape": (1, 1)})
    consumed = {i for op in b.ops for i in op.inputs}
    outputs += [o for o in b.extra_outputs if o not in outputs]
    outputs += [o for o in made if o not in consumed and o not in outputs and o in b.types]
    g = Graph.build(b.ops, {x: fusekit.TensorType(1, _JOIN_SHAPE)}, outputs, b.inits, b.types)
    fusekit.check_invariants(g)
    return g


@st.composite
def passive_rule_sets(draw: st.DrawFn, base: st.SearchStrategy[Platform] | None = None) -> Platform:
    """A rule set (drawn from ``base``, default :func:`corrected_platforms`) that also makes
    multi-input ops passive: each of :data:`JOIN_TYPES` with probability 3/4, quantized too.

    Such an op stays out of the other roles (epilogue, alignment), as :func:`rule_sets` keeps
    roles disjoint, except that one time in four it also stays in its alignment group
    (alignment then aligns the inputs with the passive group: one scale for all). ``Pad``'s
    "pad with zero" precondition is kept half the time, so a pad value from a run-time tensor
    is both refused and fused. ``Where`` keeps the base's sockets (its condition is FP32, so
    passive fusion must refuse it).
    """
    p = draw(base if base is not None else corrected_platforms())
    joins = frozenset(t for t in JOIN_TYPES if draw(st.integers(0, 3)) != 3)
    if not joins:
        joins = frozenset({draw(st.sampled_from(JOIN_TYPES))})
    changes: dict[str, Any] = {
        "name": f"passive_{p.name}",
        "quant_types": p.quant_types | joins | {"ReduceMax"},
        "passive_types": p.passive_types | joins,
        "epilogue_types": p.epilogue_types - joins,
    }
    if draw(st.integers(0, 3)) != 3:
        changes["alignment"] = {k: v - joins for k, v in p.alignment.items()}
    if draw(st.booleans()):
        changes["passive_conditions"] = {
            k: v for k, v in p.passive_conditions.items() if k != "Pad"
        }
    return p.evolve(**changes)


@st.composite
def join_cases(
    draw: st.DrawFn, platforms: st.SearchStrategy[Platform] | None = None
) -> tuple[Graph, Platform, QuantPlan]:
    """A :func:`join_graphs` graph, a :func:`passive_rule_sets` rule set over ``platforms``
    and an initial plan (random dispatch one time in three, as :func:`initial_plans` does)."""
    g = draw(join_graphs())
    p = draw(passive_rule_sets(platforms))
    return g, p, draw(initial_plans(g, p))


# --------------------------------------------------------------------------------------------
# mixed-precision plans (simplify's "same scheme" rule)

_ASYM_U8 = fusekit.QuantRule(
    fusekit.QuantPolicy.of(
        fusekit.QuantProperty.PER_TENSOR,
        fusekit.QuantProperty.LINEAR,
        fusekit.QuantProperty.ASYMMETRICAL,
    ),
    quant_min=0,
    quant_max=255,
)
#: Activation schemes other than the registered rule sets' 8-bit symmetric one.
OTHER_SCHEMES: tuple[fusekit.QuantRule, ...] = (
    fusekit.QuantRule(num_bits=16, quant_min=-32768, quant_max=32767),
    _ASYM_U8,
)


@st.composite
def mixed_scheme_plans(draw: st.DrawFn, plan: QuantPlan) -> QuantPlan:
    """``plan`` with every INITIAL per-tensor slot of some quantized ops moved to another
    scheme (16 bits, or asymmetric uint8), the way a user asks for mixed precision through
    ``set_config``. Edges between such an op and its neighbours join two schemes, which
    simplify must leave as a requantization."""
    names = [op.name for op in plan.graph if plan.is_quantized(op.name)]
    if not names:
        return plan
    ev = plan.evolver()
    for name in draw(st.sets(st.sampled_from(names), min_size=1)):
        rule = draw(st.sampled_from(OTHER_SCHEMES))
        op = plan.graph.ops[name]
        for side, n in (("in", len(op.inputs)), ("out", len(op.outputs))):
            for k in range(n):
                s = fusekit.Slot(name, side, k)
                c = plan.get(s)
                initial = c is not None and c.state == fusekit.QuantState.INITIAL
                if initial and c is not None and not c.policy.per_channel:
                    ev.set_config(s, rule.config(c.state))
    return ev.persistent()


@st.composite
def mixed_scheme_cases(
    draw: st.DrawFn, platforms: st.SearchStrategy[Platform] | None = None
) -> tuple[Graph, Platform, QuantPlan]:
    """:func:`cases` (uncalibrated) with a :func:`mixed_scheme_plans` plan."""
    g, p, plan = draw(cases(platforms, calibrated=False))
    return g, p, draw(mixed_scheme_plans(plan))
