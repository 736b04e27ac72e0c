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
    with pytest.raises(fusekit.InvalidPlatform, match="without a rule"):
        base.evolve(weight_conditions={"Gemm": "kernel3_s1_d1_g1"})


# ----- PPQ's parser makes every '' one shared variable (issue 14, every platform) -------------


def _clip_empty_min(dropout: str | None = None) -> fusekit.Graph:
    """Conv -> Clip(c, '', max) -> Conv; with ``dropout`` "before"/"after", a Dropout -> [d, '']
    added before or after the Clip."""
    g = G().conv("c0", "x")
    drop = fusekit.Op("d", "Dropout", ("x",), ("d", ""))
    if dropout == "before":
        g.ops.append(drop)
    g.const("mx", 6.0)
    g.op("Clip", "cl", ["c0", "", "mx"]).conv("c1", "cl")
    if dropout == "after":
        g.ops.append(drop)
    return g.build(["c1", "d"] if dropout else ["c1"])


@pytest.mark.parametrize("name", ["ppq066_trt_int8", "ppq066_rknn_int8", "ppq066_ppl_dsp_int8"])
def test_empty_clip_bound_follows_the_clip_output_in_ppq(name: str) -> None:
    """(a) The empty min is a variable to PPQ: passive parameters make it a slave of the Clip
    input, which fusion put under the Clip output."""
    g = _clip_empty_min()
    p = ppq_pipeline(g, name)
    assert p[inp("cl", 1)].state == QuantState.PASSIVE
    assert p.root(inp("cl", 1)) == out("cl")
    assert p.root(inp("cl", 2)) == out("cl")


def test_empty_clip_bound_stays_unquantized_when_corrected() -> None:
    g = _clip_empty_min()
    q = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    assert q.root(inp("cl", 1)) == inp("cl", 1)
    assert q[inp("cl", 1)].state == QuantState.FP32


def test_empty_resize_roi_is_aligned_across_resizes_in_ppq() -> None:
    """(b) Conv -> Resize(x, '', s) -> Resize(y, '', s): aligning the second Resize to its output
    pulls the first one's '' slot into its group, as it does the shared scales ``s``."""
    g = G().conv("c0", "x")
    g.const("s", np.array([1.0, 1.0, 2.0, 2.0]))
    g.op("Resize", "r1", ["c0", "", "s"]).op("Resize", "r2", ["r1", "", "s"]).conv("c1", "r2")
    graph = g.build(["c1"])
    p = ppq_pipeline(graph, "ppq066_trt_int8")
    assert p[inp("r1", 1)].state == QuantState.OVERLAPPED
    assert p.root(inp("r1", 1)) == out("r2")
    assert p.root(inp("r1", 2)) == out("r2")  # the same as a really shared tensor
    t = ppq_pipeline(graph, "trt_int8")
    assert t[inp("r1", 1)].state == QuantState.FP32
    assert t.root(inp("r1", 1)) == inp("r1", 1)


def test_empty_output_name_produces_every_empty_input_in_ppq() -> None:
    """(c) Dropout -> [d, ''] is the producer of every '' input: Clip(c, '', max) then has two
    producers and does not fuse with the Conv; the corrected sets fuse it."""
    g = _clip_empty_min("before")
    p = ppq_pipeline(g, "ppq066_trt_int8")
    assert p[out("c0")].state == QuantState.ACTIVATED
    assert p.root(out("c0")) == out("c0")
    assert p.root(out("cl")) == out("cl")
    assert p.root(inp("cl", 1)) == out("c0")  # the bound follows the (unfused) Clip input
    t = ppq_pipeline(g, "trt_int8")
    assert t[out("c0")].state == QuantState.OVERLAPPED
    assert t.root(out("c0")) == out("cl")


def test_empty_input_before_its_producer_does_not_crash() -> None:
    """PPQ crashes when a '' reader precedes the op writing ''; fusekit leaves '' unproduced,
    so the Clip fuses as in (a)."""
    g = _clip_empty_min("after")
    p = ppq_pipeline(g, "ppq066_trt_int8")
    assert p.root(out("c0")) == out("cl")
    assert p.root(inp("cl", 1)) == out("cl")


def test_graph_without_empty_names_reads_the_plain_arrays() -> None:
    from fusekit._ppq066 import shared_empty_arrays

    g = G().conv("c0", "x").build(["c0"])
    assert shared_empty_arrays(g) is g.arrays()
    h = _clip_empty_min()
    assert shared_empty_arrays(h) is shared_empty_arrays(h)  # once per graph value
    assert h.arrays().slot_tensor.count(-1) == 1  # the graph's own index is untouched
