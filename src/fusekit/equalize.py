"""Cross-layer equalization and bias correction: weight edits that make int8 cost less.

Both are pure functions returning new values; neither changes the graph's structure, so the
index is shared and a plan of the input graph fits the output graph.

:func:`equalize` (cross-layer equalization, Nagel et al.'s data-free quantization, as AIMET and
PPQ ship it) balances the per-channel weight ranges of two convolutions in a row. For a chain
``Conv A -> [BatchNormalization] -> [Relu | LeakyRelu] -> Conv B``, output channel ``i`` of A
is divided by ``s_i`` and input channel ``i`` of B multiplied by it; ReLU and LeakyReLU commute
with a positive scale, so the float model computes the same outputs (up to float rounding).
With ``r1_i`` the range of A's output channel ``i`` and ``r2_i`` the range of B's input channel
``i``, ``s_i = sqrt(r1_i * r2_i) / r2_i`` leaves both at ``sqrt(r1_i * r2_i)``: a channel whose
range was far below the tensor's largest no longer loses its bits to per-tensor (or to the
per-channel input side of B's) quantization. Pairs that involve a depthwise convolution (where
the imbalance is largest) are balanced first, and chains are iterated until the scales settle.
With a BatchNormalization in between, its ``scale`` and ``B`` are divided by ``s_i`` instead of
A (exact, where rescaling A would also need the BN's ``epsilon`` rescaled), and ``r1`` is the
range of A's weights folded with the BN: what a BN-folding export quantizes.

:func:`bias_correction` (NNCF's fast bias correction is the reference idea) removes the expected
output shift that weight quantization adds to each quantized Conv/Gemm: ``E[(W_q - W) x]``,
from the per-channel mean of the op's float input measured over the calibration data, is
subtracted from the bias. It needs a calibrated plan (the weight scales) and onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from .errors import InvalidData
from .graph import Graph, Op, Slot
from .quant import QuantPlan, QuantState, check_plan_graph

__all__ = [
    "BiasCorrectionResult",
    "EqualizationPair",
    "EqualizeResult",
    "bias_correction",
    "equalization_pairs",
    "equalize",
]

#: Activations between the two convolutions that commute with a positive per-channel scale.
HOMOGENEOUS = frozenset({"Relu", "LeakyRelu"})


@attrs.frozen
class EqualizationPair:
    """Two convolutions whose shared channels are balanced, and what lies between them.

    ``via`` names the ops in between (a BatchNormalization, an activation); ``imbalance`` is
    the largest ``max(r1/r2, r2/r1)`` over the channels before and after (1.0 = balanced).
    """

    first: str
    second: str
    via: tuple[str, ...]
    channels: int
    imbalance_before: float = 1.0
    imbalance_after: float = 1.0


@attrs.frozen
class EqualizeResult:
    """The equalized graph, the pairs balanced and the chains refused (op, reason)."""

    graph: Graph
    pairs: tuple[EqualizationPair, ...]
    refused: tuple[tuple[str, str], ...]
    iterations: int


def _value(graph: Graph, name: str) -> np.ndarray[Any, Any] | None:
    """The float32 value of constant ``name`` (an initializer or a ``Constant`` op's value)."""
    if not name:
        return None
    init = graph.initializers.get(name)
    if init is not None:
        return np.asarray(init.array()) if init.elem_type == 1 else None
    p = graph.producer(name)
    if p is None:
        return None
    op = graph.op(p.op)
    v = op.attributes.get("value") if op.op_type == "Constant" else None
    return v if isinstance(v, np.ndarray) and v.dtype == np.float32 else None


def _const(graph: Graph, name: str, reader: str) -> np.ndarray[Any, Any] | None:
    """The float32 value of constant ``name`` if only ``reader`` reads it, else None."""
    v = _value(graph, name)
    if v is None or {s.op for s in graph.consumers(name)} != {reader}:
        return None
    return v


def _is_depthwise(op: Op, w: np.ndarray[Any, Any]) -> bool:
    return int(op.attributes.get("group", 1)) > 1 and w.shape[1] == 1


def equalization_pairs(
    graph: Graph, *, through_batchnorm: bool = True
) -> tuple[list[EqualizationPair], list[tuple[str, str]]]:
    """The ``Conv -> [BatchNormalization] -> [Relu|LeakyRelu] -> Conv`` chains that can be balanced.

    Returns ``(pairs, refused)``; ``refused`` lists ``(conv, reason)`` for a convolution
    followed by something that almost qualifies (a shared weight, a tensor read twice, a graph
    output in between). Pairs involving a depthwise convolution come first.
    """
    pairs: list[EqualizationPair] = []
    refused: list[tuple[str, str]] = []
    outputs = set(graph.outputs)
    for op in graph:
        if op.op_type != "Conv" or op.domain not in ("", "ai.onnx") or len(op.inputs) < 2:
            continue
        w1 = _const(graph, op.inputs[1], op.name)
        if w1 is None or w1.ndim < 3:
            continue
        if len(op.inputs) > 2 and op.inputs[2] and _const(graph, op.inputs[2], op.name) is None:
            refused.append((op.name, "its bias is not a float constant of its own"))
            continue
        via: list[str] = []
        t = op.outputs[0]
        second: Op | None = None
        why = ""
        while True:
            cons = graph.consumers(t)
            if t in outputs:
                why = f"{t!r} is a graph output"
                break
            if len(cons) != 1:
                why = f"{t!r} is read by {len(cons)} ops" if cons else ""
                break
            nxt = graph.op(cons[0].op)
            kinds = [graph.op(v).op_type for v in via]
            if cons[0].index != 0:
                break
            if (
                nxt.op_type == "BatchNormalization"
                and len(nxt.inputs) >= 5
                and through_batchnorm
                and not kinds
                and len([o for o in nxt.outputs if o]) == 1
                and all(_const(graph, nxt.inputs[k], nxt.name) is not None for k in range(1, 5))
            ):
                via.append(nxt.name)
                t = nxt.outputs[0]
                continue
            if nxt.op_type in HOMOGENEOUS and not any(k in HOMOGENEOUS for k in kinds):
                via.append(nxt.name)
                t = nxt.outputs[0]
                continue
            if nxt.op_type == "Conv" and len(nxt.inputs) > 1:
                w2 = _const(graph, nxt.inputs[1], nxt.name)
                if w2 is None:
                    why = f"the weight of {nxt.name} is not a float constant of its own"
                elif (
                    w2.ndim != w1.ndim
                    or w2.shape[1] * int(nxt.attributes.get("group", 1)) != (w1.shape[0])
                ):
                    why = f"{nxt.name}'s input channels do not match {op.name}'s outputs"
                else:
                    second = nxt
            break
        if second is not None:
            pairs.append(EqualizationPair(op.name, second.name, tuple(via), int(w1.shape[0])))
        elif why:
            refused.append((op.name, why))

    def depthwise_first(p: EqualizationPair) -> int:
        a, b = graph.op(p.first), graph.op(p.second)
        wa, wb = _value(graph, a.inputs[1]), _value(graph, b.inputs[1])
        assert wa is not None and wb is not None
        return 0 if _is_depthwise(a, wa) or _is_depthwise(b, wb) else 1

    pairs.sort(key=depthwise_first)
    return pairs, refused


def _input_channel_ranges(w2: np.ndarray[Any, Any], group: int) -> np.ndarray[Any, Any]:
    """Largest |weight| of a grouped Conv per *input* channel (``group * w2.shape[1]`` of them)."""
    cout_pg = w2.shape[0] // group
    g = np.abs(w2).reshape(group, cout_pg, w2.shape[1], -1)
    return np.asarray(g.max(axis=(1, 3)).reshape(-1), dtype=np.float64)


def _scale_input_channels(
    w2: np.ndarray[Any, Any], group: int, s: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    cout_pg = w2.shape[0] // group
    g = w2.astype(np.float64).reshape(group, cout_pg, w2.shape[1], -1)
    g = g * s.reshape(group, 1, w2.shape[1], 1)
    return np.asarray(g.reshape(w2.shape), dtype=np.float32)


def _imbalance(r1: np.ndarray[Any, Any], r2: np.ndarray[Any, Any]) -> float:
    ok = (r1 > 0) & (r2 > 0)
    if not ok.any():
        return 1.0
    ratio = r1[ok] / r2[ok]
    return float(np.max(np.maximum(ratio, 1.0 / ratio)))


def equalize(
    graph: Graph,
    *,
    iterations: int = 20,
    tolerance: float = 1e-3,
    through_batchnorm: bool = True,
) -> EqualizeResult:
    """Balance the weight ranges of every equalizable Conv pair (see the module docstring).

    Runs on the float model, before planning and calibration (the ranges it changes are what
    calibration measures). Repeats over all pairs until no scale moves by more than
    ``tolerance`` (relative) or ``iterations`` rounds; chains ``A -> B -> C`` share B and need
    a few. Returns the new graph (the same object when nothing qualifies), the pairs with their
    imbalance before and after, and the refusals.
    """
    if iterations < 1:
        raise InvalidData(f"iterations must be at least 1, got {iterations}")
    pairs, refused = equalization_pairs(graph, through_batchnorm=through_batchnorm)
    if not pairs:
        return EqualizeResult(graph, (), tuple(refused), 0)
    cur: dict[str, np.ndarray[Any, Any]] = {}

    def value(name: str) -> np.ndarray[Any, Any]:
        if name not in cur:
            v = _value(graph, name)
            assert v is not None  # equalization_pairs checked every value it touches
            cur[name] = np.asarray(v, dtype=np.float32)
        return cur[name]

    def ranges(p: EqualizationPair) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        a, b = graph.op(p.first), graph.op(p.second)
        w1 = value(a.inputs[1])
        r1 = np.abs(w1.astype(np.float64)).reshape(w1.shape[0], -1).max(axis=1)
        bn = [graph.op(v) for v in p.via if graph.op(v).op_type == "BatchNormalization"]
        if bn:
            n = bn[0]
            eps = float(n.attributes.get("epsilon", 1e-5))
            gamma = value(n.inputs[1]).astype(np.float64)
            var = value(n.inputs[4]).astype(np.float64)
            r1 = r1 * np.abs(gamma) / np.sqrt(var + eps)
        r2 = _input_channel_ranges(value(b.inputs[1]), int(b.attributes.get("group", 1)))
        return r1, r2

    before = {p: _imbalance(*ranges(p)) for p in pairs}
    rounds = 0
    for rounds in range(1, iterations + 1):  # noqa: B007 - reported
        moved = 0.0
        for p in pairs:
            r1, r2 = ranges(p)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
            a, b = graph.op(p.first), graph.op(p.second)
            bn = [graph.op(v) for v in p.via if graph.op(v).op_type == "BatchNormalization"]
            if bn:  # the BN's output is what reaches B: scale its affine part
                for k in (1, 2):
                    name = bn[0].inputs[k]
                    cur[name] = (value(name).astype(np.float64) / s).astype(np.float32)
            else:
                w1 = value(a.inputs[1]).astype(np.float64)
                shape = (-1,) + (1,) * (w1.ndim - 1)
                cur[a.inputs[1]] = (w1 / s.reshape(shape)).astype(np.float32)
                if len(a.inputs) > 2 and a.inputs[2]:
                    bias = value(a.inputs[2]).astype(np.float64)
                    cur[a.inputs[2]] = (bias / s).astype(np.float32)
            group = int(b.attributes.get("group", 1))
            cur[b.inputs[1]] = _scale_input_channels(value(b.inputs[1]), group, s)
        if moved < math.log1p(tolerance):
            break
    done = tuple(
        attrs.evolve(p, imbalance_before=before[p], imbalance_after=_imbalance(*ranges(p)))
        for p in pairs
    )
    return EqualizeResult(graph.with_constant_values(cur), done, tuple(refused), rounds)


# --------------------------------------------------------------------------------------------
# bias correction


@attrs.frozen
class BiasCorrectionResult:
    """The corrected graph, its plan, the per-op shifts removed and the ops refused.

    ``corrected`` maps an op to the largest absolute shift removed from one of its output
    channels; ``plan`` is the input plan (the structure is unchanged, so it fits ``graph``).
    """

    graph: Graph
    plan: QuantPlan
    corrected: Mapping[str, float]
    refused: tuple[tuple[str, str], ...]
    samples: int


def _weight_error(plan: QuantPlan, op: Op, w: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """``W_q - W`` for the weight of ``op`` as ``plan`` quantizes it (None: not quantized)."""
    from .quant import dequantize_values, quantize_values

    slot = Slot(op.name, "in", 1)
    cfg = plan.get(slot)
    if cfg is None or cfg.state not in QuantState.ACTIVE:
        return None
    root = plan[plan.root(slot)]
    scale, offset = plan.scale_of(slot), plan.offset_of(slot)
    if scale is None or offset is None or root.policy.floating:
        return None
    axis = root.channel_axis if root.policy.per_channel else None
    if axis is not None and axis < 0:
        axis += w.ndim
    q = quantize_values(w, root, scale, offset, axis)
    deq = np.asarray(dequantize_values(q, scale, offset, axis), np.float64)
    return np.asarray(deq - w.astype(np.float64))


#: Where a shift is folded: (initializer, sign, multiplier per channel); the initializer's new
#: value is ``value + sign * multiplier * shift``.
_Carrier = tuple[str, float, Any]


def _carrier(graph: Graph, op: Op, w: np.ndarray[Any, Any]) -> _Carrier | str:
    """Where ``op``'s output shift can be removed, or why it cannot (a refusal reason).

    The op's own bias first; else (a Conv without bias, as PaddlePaddle exports them) the
    per-channel constant of what follows: a BatchNormalization's mean (``+ shift``), an
    Add's constant (``- shift``), or a Mul by a constant then an Add (``- mul * shift``, the
    BatchNorm that converters fold into Mul/Add).
    """
    channels = w.shape[0] if op.op_type == "Conv" else None
    if len(op.inputs) > 2 and op.inputs[2]:
        if _const(graph, op.inputs[2], op.name) is None:
            return "its bias is not a float constant of its own"
        if op.op_type == "Gemm":
            beta = float(op.attributes.get("beta", 1.0))
            if beta == 0:
                return "Gemm with beta 0"
            return op.inputs[2], -1.0 / beta, 1.0
        return op.inputs[2], -1.0, 1.0
    if channels is None:
        return "no bias input (adding one would change the graph)"
    rank = w.ndim
    mult: Any = 1.0
    t = op.outputs[0]
    for _ in range(2):
        cons = graph.consumers(t)
        if len(cons) != 1 or t in graph.outputs:
            break
        nxt = graph.op(cons[0].op)
        if (
            nxt.op_type == "BatchNormalization"
            and cons[0].index == 0
            and len(nxt.inputs) >= 5
            and isinstance(mult, float)
        ):
            if _const(graph, nxt.inputs[3], nxt.name) is not None:
                return nxt.inputs[3], 1.0, 1.0
            break
        if nxt.op_type not in ("Add", "Mul") or len(nxt.inputs) != 2:
            break
        other = nxt.inputs[1 - cons[0].index]
        c = _const(graph, other, nxt.name)
        if c is None or not _per_channel(c, channels, rank):
            break
        if nxt.op_type == "Add":
            return other, -1.0, mult
        if not isinstance(mult, float):  # a second Mul: not handled
            break
        mult = np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64)
        t = nxt.outputs[0]
    return "no bias input and no per-channel BatchNormalization/Add after it"


def _per_channel(c: np.ndarray[Any, Any], channels: int, rank: int) -> bool:
    """True if ``c`` broadcasts along the channel axis (1) of a rank-``rank`` tensor only."""
    if c.ndim > rank:
        return False
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    return shape[0] == 1 and shape[1] in (1, channels) and all(d == 1 for d in shape[2:])


def _shift(op: Op, dw: np.ndarray[Any, Any], mean_x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Expected output shift per output channel of ``op`` for weight error ``dw``."""
    if op.op_type == "Conv":
        group = int(op.attributes.get("group", 1))
        cout_pg = dw.shape[0] // group
        per_in = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(axis=2)  # [O, C/g]
        ex = mean_x.reshape(group, dw.shape[1])
        out: np.ndarray[Any, Any] = np.einsum(
            "gij,gj->gi", per_in.reshape(group, cout_pg, -1), ex
        ).reshape(-1)
        return out
    # Gemm: y = alpha * A' @ B' + beta * C
    b = dw.T if int(op.attributes.get("transB", 0)) else dw  # [K, N]
    alpha = float(op.attributes.get("alpha", 1.0))
    return np.asarray(alpha * (mean_x @ b), dtype=np.float64)


def bias_correction(
    graph: Graph,
    plan: QuantPlan,
    data: Any,
    *,
    progress: bool | None = None,
) -> BiasCorrectionResult:
    """Fold the expected output shift of each quantized Conv/Gemm's weight error into its bias.

    For every op whose weight ``plan`` quantizes (calibrated) and whose bias is a float
    initializer of its own, the mean of its float input per channel is measured over ``data``
    (streamed: one running sum per channel) and ``E[(W_q - W) x]`` subtracted from the bias.
    Border effects of padding are ignored (every kernel tap is assumed to see the channel
    mean). MatMul has no bias input and is refused, as are ops without a bias (adding one
    would change the graph's structure). Returns the new graph; ``plan`` still fits it.
    """
    from .runtime import (
        as_dataset,
        augmented_session,
        input_specs,
        model_label,
        progress_bar,
        run,
    )

    check_plan_graph(plan, graph, "bias_correction")
    refused: list[tuple[str, str]] = []
    targets: list[tuple[Op, np.ndarray[Any, Any], _Carrier]] = []
    for op in graph:
        if op.op_type not in ("Conv", "Gemm", "MatMul") or not plan.is_quantized(op.name):
            continue
        if op.op_type == "MatMul":
            refused.append((op.name, "MatMul has no bias input to correct"))
            continue
        if op.op_type == "Gemm" and int(op.attributes.get("transA", 0)):
            refused.append((op.name, "Gemm with transA: not handled"))
            continue
        w = _const(graph, op.inputs[1], op.name) if len(op.inputs) > 1 else None
        if w is None:
            refused.append((op.name, "its weight is not a float constant of its own"))
            continue
        carrier = _carrier(graph, op, w)
        if isinstance(carrier, str):
            refused.append((op.name, carrier))
            continue
        dw = _weight_error(plan, op, w)
        if dw is None:
            refused.append((op.name, "its weight is not quantized with a scale"))
            continue
        targets.append((op, dw, carrier))
    if not targets:
        return BiasCorrectionResult(graph, plan, {}, tuple(refused), 0)
    fetch_names = sorted({op.inputs[0] for op, _, _ in targets})
    inputs = {s.name for s in input_specs(graph)}
    fetch = [t for t in fetch_names if t not in inputs]
    sess = augmented_session(graph, fetch) if fetch else None
    ds = as_dataset(data, graph, split="calib")
    sums: dict[str, np.ndarray[Any, Any]] = {}
    counts: dict[str, int] = {}
    axis_of = {op.inputs[0]: (1 if op.op_type == "Conv" else -1) for op, _, _ in targets}
    bar = progress_bar(progress, "bias correction", ds.length)
    n = 0
    try:
        for feed in ds:
            got = dict(zip(fetch, run(sess, fetch, feed, model_label(graph), n) if sess else []))
            for t in fetch_names:
                v = got[t] if t in got else feed.get(t)
                if v is None:
                    continue
                x = np.moveaxis(np.asarray(v, dtype=np.float64), axis_of[t], 0)
                x = x.reshape(x.shape[0], -1)
                sums[t] = sums.get(t, 0.0) + x.sum(axis=1)
                counts[t] = counts.get(t, 0) + x.shape[1]
            n += 1
            bar.step()
    finally:
        bar.close()
    if n == 0:
        raise InvalidData(f"{ds.label}: no samples for bias correction")
    new: dict[str, np.ndarray[Any, Any]] = {}
    corrected: dict[str, float] = {}
    for op, dw, (name, sign, mult) in targets:
        t = op.inputs[0]
        mean_x = sums[t] / max(counts[t], 1)
        try:
            shift = _shift(op, dw, mean_x)
        except ValueError:
            refused.append((op.name, "input channels do not match the weight"))
            continue
        value = np.asarray(_value(graph, name), dtype=np.float64)
        if value.size != shift.size:
            refused.append((op.name, f"{name!r} does not hold one value per output channel"))
            continue
        delta = (sign * mult * shift).reshape(value.shape)
        new[name] = (value + delta).astype(np.float32)
        corrected[op.name] = float(np.max(np.abs(shift)))
    return BiasCorrectionResult(graph.with_constant_values(new), plan, corrected, tuple(refused), n)
