"""PPQ 0.6.6 behaviours outside the corpus, reproduced by the ``ppq066_*`` rule sets.

Each test builds the 2- to 4-node reproduction of a disagreement found by a differential run
against PPQ 0.6.6 (issue 14), checks that the PPQ-compatible rule set makes PPQ's decision, and
that the corrected rule set keeps its own (documented in docs/differences-from-ppq.md). The
per-platform specifics of the rule sets of :mod:`fusekit._ppq066` are checked here too.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusekit
from fusekit import QuantState, Slot

from .graphs import G
from .test_passes import ppq_pipeline

PPQ = "ppq-conservative"


def inp(op: str, i: int = 0) -> Slot:
    return Slot(op, "in", i)


def out(op: str, i: int = 0) -> Slot:
    return Slot(op, "out", i)


def _computed_weights() -> list[object]:
    """Conv/Gemm weights computed from constants: Reshape(w_flat), DequantizeLinear, Transpose."""
    g1 = G().conv("c0", "x")
    g1.const("wf", np.ones(16) * 0.1)
    g1.const("shape", np.array([4, 4, 1, 1]))
    g1.op("Reshape", "w", ["wf", "shape"]).op("Conv", "c1", ["c0", "w"])
    g2 = G().conv("c0", "x")
    g2.inits["wq"] = fusekit.Initializer.from_array("wq", np.ones((4, 4, 1, 1), dtype=np.int8))
    g2.const("ws", 0.1)
    g2.op("DequantizeLinear", "w", ["wq", "ws"]).op("Conv", "c1", ["c0", "w"])
    g3 = G().conv("c0", "x").op("Flatten", "f", ["c0"])
    g3.const("wt", np.ones((100, 4)) * 0.1)
    g3.op("Transpose", "w", ["wt"], perm=[1, 0]).op("Gemm", "c1", ["f", "w"], transB=1)
    return [
        pytest.param("reshape", g1.build(["c1"]), id="reshape"),
        pytest.param("dequantize", g2.build(["c1"]), id="dequantize"),
        pytest.param("transpose", g3.build(["c1"]), id="transpose"),
    ]


@pytest.mark.parametrize(("case", "graph"), _computed_weights())
def test_trt_weight_computed_from_constants_is_per_tensor_in_ppq(
    case: str, graph: fusekit.Graph
) -> None:
    """PPQ's TensorRT quantizer goes per-channel only for a parameter, and PPQ does not fold
    constants: a computed weight is per-tensor. fusekit's trt_int8 folds it: per-channel."""
    p = fusekit.init_plan(graph, "ppq066_trt_int8", dispatch=PPQ)
    assert p.is_quantized("c1"), case
    assert not p[inp("c1", 1)].policy.per_channel
    assert p[inp("c0", 1)].policy.per_channel  # an initializer is a parameter
    q = fusekit.init_plan(graph, "trt_int8")
    assert q[inp("c1", 1)].policy.per_channel


def _activation_weight() -> fusekit.Graph:
    """Conv c0 -> MaxPool -> Reshape -> input 1 (the weight) of Conv c1."""
    g = G().conv("c0", "x").op("MaxPool", "mp", ["c0"], kernel_shape=[1, 1])
    g.const("shape", np.array([4, 4, 1, 1]))
    g.op("Reshape", "w", ["mp", "shape"]).conv("c", "x")
    return g.op("Conv", "c1", ["c", "w"]).build(["c1"])


@pytest.mark.parametrize("name", ["ppq066_ort_int8", "ppq066_ppl_cuda_int8"])
def test_non_constant_weight_is_per_channel_in_ppq_ort_and_ppl(name: str) -> None:
    """PPQ's ORT and PPL CUDA quantizers make input 1 of Conv/ConvTranspose/Gemm per-channel
    whatever it is, so simplify refuses to link it to its producer (another scheme) and it
    keeps its own scale; the corrected sets quantize it per-tensor and share the producer's."""
    g = _activation_weight()
    w = inp("c1", 1)
    assert fusekit.init_plan(g, name, dispatch=PPQ)[w].policy.per_channel
    p = ppq_pipeline(g, name)
    assert p[w].state == QuantState.ACTIVATED
    assert p.root(w) == w
    assert p.root(out("w")) != w
    # TensorRT's quantizer tests the weight's kind: per-tensor, linked to the Reshape output
    t = ppq_pipeline(g, "ppq066_trt_int8")
    assert t[w].state == QuantState.OVERLAPPED
    assert t.root(w) == t.root(out("w"))
    corrected = "ort_int8" if "ort" in name else "ppl_cuda_int8"
    c = fusekit.init_plan(g, corrected)
    assert not c[w].policy.per_channel


def test_ncnn_six_bit_three_tap_kernels() -> None:
    """NCNN's quantizer gives 6-bit weights ([-31, 31]) to convolutions whose every kernel
    dimension is 3 with stride 1, dilation 1, group 1 (1-D too, as PPQ did on silero_vad), and
    keeps Conv outputs FP32 (input-only quantization)."""
    g = G().conv("c0", "x")
    w3 = g.const("w3", np.ones((4, 4, 3, 3)))
    w1d = g.const("w1d", np.ones((4, 4, 3)))
    g.op("Conv", "k3", ["c0", w3], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.op("Conv", "k3s2", ["k3", w3], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    g.op("Conv", "k3g", ["k3", w3], kernel_shape=[3, 3], group=2, pads=[1, 1, 1, 1])
    g.op("Reshape", "r", ["k3", g.const("s", np.array([1, 4, 25]))])
    g.op("Conv", "k1d", ["r", w1d], kernel_shape=[3], pads=[1, 1])
    graph = g.build(["k3s2", "k3g", "k1d"])
    p = fusekit.init_plan(graph, "ppq066_ncnn_int8", dispatch=PPQ)
    bits = {op: (p[inp(op, 1)].num_bits, p[inp(op, 1)].quant_min) for op in ("k3", "k3s2", "k3g")}
    assert bits == {"k3": (6, -31), "k3s2": (8, -127), "k3g": (8, -127)}
    assert p[inp("c0", 1)].num_bits == 8  # a 1x1 kernel
    assert p[out("k3")].state == QuantState.FP32
    assert p[inp("k3", 0)].state == QuantState.INITIAL


def test_dsp_clip_bounds_start_passive_init_and_internal() -> None:
    """PPQ's DSP quantizer (PPL DSP, SNPE, QNN) makes Clip's min/max PASSIVE_INIT with INTERNAL
    visibility; the other quantizers leave them FP32 (the socket)."""
    g = G().conv("c0", "x").clip("cl", "c0").conv("c1", "cl").build(["c1"])
    for name in ("ppq066_ppl_dsp_int8", "ppq066_snpe_int8", "ppq066_qnn_dsp_int8"):
        p = fusekit.init_plan(g, name, dispatch=PPQ)
        for k in (1, 2):
            c = p[inp("cl", k)]
            assert (c.state, c.visibility) == (
                QuantState.PASSIVE_INIT,
                fusekit.Visibility.INTERNAL,
            ), name
        assert not p[inp("c0", 0)].policy.symmetric  # asymmetric uint8
    t = fusekit.init_plan(g, "ppq066_trt_int8", dispatch=PPQ)
    assert t[inp("cl", 1)].state == QuantState.FP32


def test_fp8_rule_sets_use_e4m3() -> None:
    """GraphCore and TensorRT FP8: floating, power-of-two, 4 exponent bits, +-448."""
    g = G().conv("c0", "x").conv("c1", "c0").build(["c1"])
    for name in ("ppq066_graphcore_fp8", "ppq066_trt_fp8"):
        p = fusekit.init_plan(g, name, dispatch=PPQ)
        c = p[inp("c1", 0)]
        assert c.policy.floating and c.exponent_bits == 4 and c.quant_max == 448.0, name
        assert p[inp("c1", 1)].policy.per_channel
    assert fusekit.init_plan(g, "ppq066_trt_fp8", dispatch=PPQ)[out("c1")].state == QuantState.FP32


def test_unknown_weight_condition_is_refused() -> None:
    base = fusekit.get_platform("ppq066_ncnn_int8")
    with pytest.raises(fusekit.InvalidPlatform, match="unknown weight conditions"):
        base.evolve(weight_conditions={"Conv": "nope"})
