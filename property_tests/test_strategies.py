"""The strategies reach what the laws need, with a stated frequency, and shrink to small chains.

Reach is counted over a fixed derandomized sample (``SAMPLE`` graphs, the same in every
profile), so the fractions below are facts about the generator, not about luck. Each stated
minimum is about half of what the sample shows, so a change of the generator that starves a
shape fails here first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import fusekit
from fusekit import Graph, Op
from fusekit.passes import PassiveFusion

from .strategies import (
    ACTIVATION_TYPES,
    JOIN_TYPES,
    PASSIVE_TYPES,
    SOURCE_KINDS,
    cases,
    graphs,
    initial_plans,
    join_cases,
    rule_sets,
)

SAMPLE = 400
COMPUTING = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
TRT = fusekit.get_platform("trt_int8")


def _producer_type(g: Graph, t: str) -> str | None:
    p = g.producer(t)
    return g.ops[p.op].op_type if p is not None else None


def _is_computing_out(g: Graph, t: str) -> bool:
    return _producer_type(g, t) in COMPUTING


def _mul_of(g: Graph, x: str, y: str) -> list[Op]:
    """Mul ops reading exactly (x, y) in that order."""
    return [op for op in g if op.op_type == "Mul" and op.inputs == (x, y)]


def _swish(g: Graph, order: str) -> bool:
    for sig in g:
        if sig.op_type == "Sigmoid" and _is_computing_out(g, sig.inputs[0]):
            x, s = sig.inputs[0], sig.outputs[0]
            if _mul_of(g, *((x, s) if order == "xs" else (s, x))):
                return True
    return False


def _mish(g: Graph, order: str) -> bool:
    for sp in g:
        if sp.op_type != "Softplus" or not _is_computing_out(g, sp.inputs[0]):
            continue
        for th in g:
            if th.op_type == "Tanh" and th.inputs == sp.outputs:
                x, t = sp.inputs[0], th.outputs[0]
                if _mul_of(g, *((x, t) if order == "xt" else (t, x))):
                    return True
    return False


def _follows(g: Graph, t: str, op_type: str) -> list[Op]:
    return [g.ops[c.op] for c in g.consumers(t) if g.ops[c.op].op_type == op_type]


def _hardswish(g: Graph, variant: str) -> bool:
    for x in (t for op in g if op.op_type in COMPUTING for t in op.outputs):
        if variant == "hardsigmoid":
            if any(
                _mul_of(g, x, h.outputs[0]) or _mul_of(g, h.outputs[0], x)
                for h in _follows(g, x, "HardSigmoid")
            ):
                return True
            continue
        for add in _follows(g, x, "Add"):
            for clip in _follows(g, add.outputs[0], "Clip"):
                c = clip.outputs[0]
                muls = [m for m in _follows(g, c, "Mul") if x in m.inputs]
                scaled = _follows(g, c, "Div") + [
                    m for m in _follows(g, c, "Mul") if x not in m.inputs
                ]
                if variant == "clip/6" and any(
                    _mul_of(g, x, d.outputs[0]) or _mul_of(g, d.outputs[0], x) for d in scaled
                ):
                    return True
                if variant == "(x*clip)/6" and any(
                    _follows(g, m.outputs[0], "Div") or _follows(g, m.outputs[0], "Mul")
                    for m in muls
                ):
                    return True
    return False


def _gelu(g: Graph) -> bool:
    return any(
        op.op_type == "Erf" and _producer_type(g, op.inputs[0]) in ("Div", "Mul") for op in g
    )


def _consumer_count(g: Graph, t: str) -> int:
    return len(g.consumers(t))


def _features(g: Graph) -> set[str]:
    f: set[str] = set()
    outputs = set(g.outputs)
    for op in g:
        t = op.op_type
        if t in COMPUTING:
            n = _consumer_count(g, op.outputs[0])
            if n == 1 and op.outputs[0] not in outputs:
                f.add("computing with one consumer")
            if n >= 2:
                f.add("computing with several consumers")
            if g.is_constant(op.inputs[1]) if len(op.inputs) > 1 else False:
                f.add("computing with a constant weight")
        if t == "Conv" and op.attributes.get("group", 1) > 1:
            f.add("depthwise Conv")
        if t in ACTIVATION_TYPES:
            f.add(f"activation {t}")
            if _is_computing_out(g, op.inputs[0]):
                f.add("computing -> activation")
        if t in PASSIVE_TYPES or t == "Split":
            f.add("passive op")
        if t == "Split" and len(op.outputs) >= 2:
            f.add("multi-output Split")
        if t == "Concat":
            f.add(f"Concat with {min(len(op.inputs), 4)} inputs")
        if t == "Sum" and len(op.inputs) >= 3:
            f.add("Sum with 3-4 inputs")
        if t in ("Add", "Sub") and len(op.inputs) == 2:
            f.add(f"{t} with 2 inputs")
        if t == "Mul" and op.inputs[0] == op.inputs[1]:
            f.add("Mul(x, x)")
        if t not in TRT.quant_types and t != "Constant":
            f.add("op the platform does not quantize")
        epilogue = t in ("Add", "Mul", "BatchNormalization") and _is_computing_out(g, op.inputs[0])
        if epilogue and all(g.is_constant(x) for x in op.inputs[1:]):
            f.add("computing -> epilogue")
        for x in op.inputs:
            if x in g.initializers:
                f.add("initializer input")
            if _producer_type(g, x) == "Constant":
                f.add("Constant op input")
            if x in g.inputs:
                kind = (
                    "computing"
                    if t in COMPUTING
                    else "activation"
                    if t in ACTIVATION_TYPES
                    else "passive"
                    if t in PASSIVE_TYPES
                    else "other"
                )
                f.add(f"graph input feeds {kind}")
    for t in g.inputs:
        if _consumer_count(g, t) >= 2:
            f.add("graph input with several consumers")
    if any(_consumer_count(g, t) > 0 for t in outputs):
        f.add("graph output from the middle")
    for name, check in _COMPOSITES.items():
        if check(g):
            f.add(name)
    return f


_COMPOSITES: dict[str, Callable[[Graph], bool]] = {
    "Swish x*sigmoid(x)": lambda g: _swish(g, "xs"),
    "Swish sigmoid(x)*x": lambda g: _swish(g, "sx"),
    "Mish x*tanh(softplus(x))": lambda g: _mish(g, "xt"),
    "Mish tanh(softplus(x))*x": lambda g: _mish(g, "tx"),
    "HardSwish x*(clip(x+3)/6)": lambda g: _hardswish(g, "clip/6"),
    "HardSwish (x*clip(x+3))/6": lambda g: _hardswish(g, "(x*clip)/6"),
    "HardSwish x*hardsigmoid(x)": lambda g: _hardswish(g, "hardsigmoid"),
    "GELU decomposition": _gelu,
}

#: Minimum fraction of generated graphs showing each shape (about half the observed one).
REACH: dict[str, float] = {
    "computing with one consumer": 0.25,
    "computing with several consumers": 0.20,
    "computing with a constant weight": 0.40,
    "computing -> activation": 0.30,
    "computing -> epilogue": 0.15,
    **{f"activation {t}": 0.008 for t in ACTIVATION_TYPES},
    "activation Relu": 0.15,
    "passive op": 0.30,
    "multi-output Split": 0.12,
    "Concat with 2 inputs": 0.04,
    "Concat with 3 inputs": 0.015,
    "Concat with 4 inputs": 0.04,
    "Sum with 3-4 inputs": 0.02,
    "Add with 2 inputs": 0.20,
    "Sub with 2 inputs": 0.03,
    "Mul(x, x)": 0.01,
    "depthwise Conv": 0.025,
    "op the platform does not quantize": 0.08,
    "initializer input": 0.50,
    "Constant op input": 0.25,
    "graph input feeds computing": 0.12,
    "graph input feeds activation": 0.06,
    "graph input feeds passive": 0.08,
    "graph input feeds other": 0.25,
    "graph input with several consumers": 0.15,
    "graph output from the middle": 0.12,
    "Swish x*sigmoid(x)": 0.02,
    "Swish sigmoid(x)*x": 0.03,
    "Mish x*tanh(softplus(x))": 0.04,
    "Mish tanh(softplus(x))*x": 0.02,
    "HardSwish x*(clip(x+3)/6)": 0.03,
    "HardSwish (x*clip(x+3))/6": 0.015,
    "HardSwish x*hardsigmoid(x)": 0.012,
    "GELU decomposition": 0.10,
}


def _sample(strategy: st.SearchStrategy[object], n: int = SAMPLE) -> list[object]:
    out: list[object] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(x: object) -> None:
        out.append(x)

    collect()
    return out


def reach() -> dict[str, float]:
    """Fraction of the sample showing each feature."""
    graphs_ = _sample(graphs())
    counts: Counter[str] = Counter()
    for g in graphs_:
        assert isinstance(g, Graph)
        counts.update(_features(g))
    return {k: counts[k] / len(graphs_) for k in REACH}


def test_graph_strategy_reach() -> None:
    got = reach()
    starved = {k: (round(got[k], 3), want) for k, want in REACH.items() if got[k] < want}
    assert starved == {}, f"shapes generated less often than stated: {starved}"


def test_several_platforms_share_a_graph() -> None:
    """Random dispatch tables put ops of one graph on two platforms (or leave them FP32)."""
    pairs = _sample(graphs().flatmap(lambda g: initial_plans(g, "trt_int8")), 300)
    multi = 0
    for plan in pairs:
        assert isinstance(plan, fusekit.QuantPlan)
        plats = {plan.platform_of(op.name) for op in plan.graph} - {None}
        multi += len(plats) >= 2
    assert multi / len(pairs) >= 0.05


def test_shrinks_to_a_small_linear_chain() -> None:
    """The minimal graph with a computing op followed by an activation is exactly that pair."""
    g = find(
        graphs(),
        lambda g: "computing -> activation" in _features(g),
        settings=settings(database=None, max_examples=500),
    )
    assert len(g) == 2
    first, second = list(g)
    assert first.inputs[0] == "x0" and second.inputs == first.outputs


# --------------------------------------------------------------------------------------------
# multi-input passive ops (issue 16)


def _source_kind(g: Graph, t: str) -> str:
    """Which :data:`SOURCE_KINDS` entry tensor ``t`` of a join graph comes from."""
    if t in g.inputs:
        return "graph input"
    prod = g.producer(t)
    if prod is None or g.is_constant(t):
        return "constant"
    if len({c.op for c in g.consumers(t)}) >= 2:
        return "shared producer"
    op_type = g.ops[prod.op].op_type
    if op_type == "Conv":
        return "computing"
    if op_type in ("MaxPool", "Concat"):  # (a Split half is concatenated back to full size)
        return "passive"
    return "fused activation"


def _quantized_inputs(plan: fusekit.QuantPlan, op: Op) -> list[int]:
    slots = (fusekit.Slot(op.name, "in", k) for k in range(len(op.inputs)))
    return [
        s.index
        for s in slots
        if (c := plan.get(s)) is not None and c.state != fusekit.QuantState.FP32
    ]


def _computing_after(g: Graph, op: Op) -> bool:
    """Is a Conv reachable from ``op``'s outputs? (If not, a "node-unit" rule set leaves
    ``op`` in its float tail.)"""
    todo, seen = list(op.outputs), set()
    while todo:
        t = todo.pop()
        for c in g.consumers(t):
            nxt = g.ops[c.op]
            if nxt.op_type in COMPUTING:
                return True
            if nxt.name not in seen:
                seen.add(nxt.name)
                todo += nxt.outputs
    return False


def _join_features(case: tuple[Graph, fusekit.Platform, fusekit.QuantPlan]) -> set[str]:
    """Features of the join of a :func:`join_cases` case (the last multi-input op: the ones
    before it are the Concats that bring a Split's halves back to full size)."""
    g, p, plan = case
    op = [op for op in g if op.op_type in JOIN_TYPES and len(op.inputs) >= 2][-1]
    f: set[str] = set()
    if p.placement == "node-unit" and not _computing_after(g, op):
        f.add("join in a node-unit float tail")
    q = _quantized_inputs(plan, op)
    if op.op_type == "Where":
        if {1, 2} <= set(q):
            f.add("Where with two quantized data inputs")
        return f
    if op.op_type not in p.passive_types or len(q) < 2:
        return f
    f.add(f"passive {op.op_type} with 2+ quantized inputs")
    if op.op_type == "Pad" and 2 in q:
        f.add("passive Pad with a quantized pad value")
    if len(set(op.inputs)) < len(op.inputs):
        f.add("passive join reading one tensor twice")
    f.add(f"passive join, first input from {_source_kind(g, op.inputs[0])}")
    fused = PassiveFusion(p).run(g, plan).plan
    out = fusekit.Slot(op.name, "out", 0)
    if fused.parent(out) == (fusekit.Slot(op.name, "in", 0), fusekit.LinkKind.OVERLAP):
        f.add("passive fusion applies to a join with 2+ quantized inputs")
        if any(g.ops[c.op].op_type == "Split" for c in g.consumers(op.outputs[0])):
            f.add("Split after a fused passive join")
    return f


#: The rule sets :data:`JOIN_REACH` was measured on: fusekit's general corrected sets and rule
#: sets derived from them. The vendor sets that quantize only computing-op inputs (ncnn_int8,
#: trt_fp8) reach no join with quantized inputs by design and would only thin the sample; the
#: laws still run on every corrected set (``corrected_platforms()``).
_JOIN_BASE = st.one_of(
    st.sampled_from(("trt_int8", "ort_int8", "ppl_cuda_int8")).map(fusekit.get_platform),
    rule_sets(),
)


def join_reach() -> dict[str, float]:
    """Fraction of a fixed sample of :func:`join_cases` showing each join feature."""
    sample = _sample(join_cases(_JOIN_BASE))
    counts: Counter[str] = Counter()
    for case in sample:
        counts.update(_join_features(case))  # type: ignore[arg-type]
    return {k: counts[k] / len(sample) for k in JOIN_REACH}


#: Minimum fraction of join cases showing each feature: about half the observed fraction
#: (in brackets), never under the 2% issue 16 asks for. Measured after the join graphs got a
#: Conv after the join three times in four (ort_int8's float tail) and stopped chaining
#: sources onto the first input.
JOIN_REACH: dict[str, float] = {
    "passive Concat with 2+ quantized inputs": 0.055,  # (0.115)
    "passive Add with 2+ quantized inputs": 0.025,  # (0.052)
    "passive Sum with 2+ quantized inputs": 0.055,  # (0.113)
    "passive Max with 2+ quantized inputs": 0.05,  # (0.105)
    "passive Mul with 2+ quantized inputs": 0.025,  # (0.055)
    "passive Pad with 2+ quantized inputs": 0.03,  # (0.062)
    "passive Pad with a quantized pad value": 0.03,  # (0.062)
    "Where with two quantized data inputs": 0.055,  # (0.117)
    "passive join reading one tensor twice": 0.05,  # (0.102)
    "passive join, first input from fused activation": 0.045,  # (0.090)
    "passive join, first input from shared producer": 0.035,  # (0.072)
    "passive join, first input from graph input": 0.025,  # (0.050)
    "passive join, first input from constant": 0.04,  # (0.080)
    "passive join, first input from computing": 0.06,  # (0.128)
    "passive join, first input from passive": 0.04,  # (0.083)
    "passive fusion applies to a join with 2+ quantized inputs": 0.125,  # (0.255)
    "Split after a fused passive join": 0.04,  # (0.083)
    "join in a node-unit float tail": 0.02,  # (0.043)
}


def test_join_strategy_reach() -> None:
    """Passive multi-input ops with several quantized inputs, the first from every kind of
    source, each in at least 2% of join cases."""
    assert {f"passive join, first input from {k}" for k in SOURCE_KINDS} <= set(JOIN_REACH)
    assert {f"passive {t} with 2+ quantized inputs" for t in JOIN_TYPES[:-1]} <= set(JOIN_REACH)
    got = join_reach()
    starved = {k: (round(got[k], 3), want) for k, want in JOIN_REACH.items() if got[k] < want}
    assert starved == {}, f"join shapes generated less often than stated: {starved}"


def test_cases_draw_join_cases() -> None:
    """One law-test case in three is a join case (so the law tests meet multi-input passive
    ops at that rate times the fractions above)."""
    sample = _sample(cases(), 300)
    joins = sum(
        any(op.op_type in JOIN_TYPES and op.name.startswith(op.op_type.lower()) for op in c[0])
        and c[1].name.startswith("passive_")  # type: ignore[index]
        for c in sample
    )
    # observed 0.35 (105/300); 0.23 before the join graphs got their Conv after the join:
    # Hypothesis favours 0 for the leading integers(0, 2), so the fraction moves with the
    # stream around the nominal one in three
    assert joins / len(sample) >= 0.25
