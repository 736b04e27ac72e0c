"""The corrected vendor rule sets of issue 14: rknn, snpe, openvino, ncnn (int8) and trt_fp8.

Each test builds a small graph showing one characteristic decision of a set (what fuses, what is
passive, the policy of activations, weights and bias) next to PPQ 0.6.6's decision for the same
backend (``ppq066_*``) where the two differ; docs/platforms.md says why. The end of the file
exports corpus models with every set and runs them in onnxruntime.
"""

from __future__ import annotations

import gzip
import math

import numpy as np
import onnx
import pytest

import fusekit
from fusekit import QuantState, Slot
from fusekit.calibrate import Calibration, random_data
from fusekit.errors import InvalidPlan
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.passes import fuse
from fusekit.quant import QuantPolicy, QuantProperty, TensorQuantConfig

from .conftest import CORPUS
from .graphs import G

VENDOR = ("rknn_int8", "snpe_int8", "openvino_int8", "openvino_int8_mixed", "ncnn_int8", "trt_fp8")
PPQ = "ppq-conservative"
FP32, INITIAL, OVERLAPPED = QuantState.FP32, QuantState.INITIAL, QuantState.OVERLAPPED
P = QuantProperty


def inp(op: str, i: int = 0) -> Slot:
    return Slot(op, "in", i)


def out(op: str, i: int = 0) -> Slot:
    return Slot(op, "out", i)


def fused_output(name: str) -> fusekit.Platform:
    """The rule set ``name`` with PPQ's ``fused-output`` placement, where its fusion rules show
    in the plan (``openvino_int8`` places points on computing inputs only by default)."""
    p = fusekit.get_platform(name)
    return p if p.placement == "fused-output" else p.evolve(placement="fused-output")


def fused(g: fusekit.Graph, name: str) -> fusekit.QuantPlan:
    p = fused_output(name)
    return fuse(g, fusekit.init_plan(g, p), p).plan


def ppq_fused(g: fusekit.Graph, name: str) -> fusekit.QuantPlan:
    return fuse(g, fusekit.init_plan(g, name, dispatch=PPQ), name).plan


def _conv_relu_conv() -> fusekit.Graph:
    return G().conv("c0", "x").relu("r", "c0").conv("c1", "r").build(["c1"])


def _activation_weight() -> fusekit.Graph:
    """Conv c1 whose weight is an activation: Conv c0 -> Reshape -> input 1 of c1."""
    g = G().conv("c0", "x").conv("c", "x")
    g.const("shape", np.array([4, 4, 1, 1]))
    g.op("Reshape", "w", ["c0", "shape"])
    return g.op("Conv", "c1", ["c", "w"]).build(["c1"])


# ----- every vendor set ---------------------------------------------------------------------


@pytest.mark.parametrize("name", VENDOR)
def test_vendor_sets_are_registered_corrected_sets(name: str) -> None:
    """No PPQ quirk, no PPQ typo, every name an ONNX op; the PPQ target recorded."""
    p = fusekit.get_platform(name)
    assert name in fusekit.platforms()
    assert not p.quirks and not p.weight_always
    assert "DropoutSlice" not in p.passive_types and "SoftPlus" not in p.activation_types
    assert not p.non_onnx_types
    assert {"Dropout", "Slice", "MaxPool"} <= p.passive_types
    assert p.ppq_target


@pytest.mark.parametrize("name", ["rknn_int8", "snpe_int8", "openvino_int8"])
def test_graph_output_is_not_fused(name: str) -> None:
    """A Conv output that is a graph output keeps its own scale; PPQ fuses it anyway."""
    g = G().conv("c0", "x").conv("c1", "c0").relu("r", "c1").conv("c2", "r").build(["c1", "c2"])
    assert fused(g, name)[out("c1")].state == INITIAL
    assert ppq_fused(g, f"ppq066_{name}")[out("c1")].state == OVERLAPPED
    # without the graph output, Conv -> Relu fuses in both
    h = _conv_relu_conv()
    assert fused(h, name).root(out("c0")) == out("r")


@pytest.mark.parametrize("name", ["rknn_int8", "snpe_int8", "ncnn_int8"])
def test_non_constant_weight_gets_the_activation_rule(name: str) -> None:
    """PPQ's RKNN, DSP and NCNN quantizers give input 1 of Conv the weight rule whatever it is;
    the corrected sets give the weight rule only to constants (an activation weight is data)."""
    g = _activation_weight()
    ours = fusekit.init_plan(g, name)
    p = fusekit.get_platform(name)
    assert ours[inp("c1", 1)].same_scheme(p.activation.config())
    assert ours[inp("c0", 1)].same_scheme(
        p.weights["Conv"].config(axis=p.weights["Conv"].channel_axis)
    )
    assert fusekit.get_platform(f"ppq066_{name}").weight_always >= {"Conv"}


def test_dropout_and_slice_are_passive() -> None:
    """PPQ's passive set holds 'DropoutSlice' (a missing comma): Slice and Dropout are not
    passive there, and PPQ's RKNN set (whose op list is its passive set) does not quantize a
    Slice at all. The corrected sets pass both through at their input's scale."""
    b = G().conv("c", "x")
    b.inits["st"] = fusekit.Initializer.from_array("st", np.array([0], np.int64))
    b.inits["en"] = fusekit.Initializer.from_array("en", np.array([2], np.int64))
    b.op("Slice", "sl", ["c", "st", "en"]).conv("c2", "sl")
    g = b.build(["c2"])
    for name in ("rknn_int8", "snpe_int8", "openvino_int8"):
        p = fused_output(name)
        ours = fusekit.default_pipeline(p).run(g, fusekit.init_plan(g, p)).plan
        assert ours.root(out("sl")) == ours.root(out("c")), name
    ppq = fusekit.default_pipeline("ppq066_rknn_int8").run(
        g, fusekit.init_plan(g, "ppq066_rknn_int8", dispatch=PPQ)
    )
    assert not ppq.plan.is_quantized("sl")


# ----- RKNN ---------------------------------------------------------------------------------


def test_rknn_policies() -> None:
    """RKNN-Toolkit2: asymmetric int8 per-tensor activations ('asymmetric_quantized-8'),
    per-channel weights (quantized_method='channel', the default), an int32 bias with the
    product scale. PPQ's set is RKNN-Toolkit1's uint8 per-tensor everywhere."""
    g = _conv_relu_conv()
    p = fusekit.init_plan(g, "rknn_int8")
    a, w, b = p[inp("c0", 0)], p[inp("c0", 1)], p[inp("c0", 2)]
    assert not a.policy.symmetric and not a.policy.per_channel
    assert (a.quant_min, a.quant_max) == (-128, 127)
    assert w.policy.per_channel and w.policy.symmetric and w.channel_axis == 0
    assert (b.state, b.num_bits) == (QuantState.PASSIVE_INIT, 32)
    q = fusekit.init_plan(g, "ppq066_rknn_int8", dispatch=PPQ)
    assert (q[inp("c0", 0)].quant_min, q[inp("c0", 0)].quant_max) == (0, 255)
    assert not q[inp("c0", 1)].policy.per_channel


def test_rknn_fuses_relu_and_clip_only() -> None:
    g = G().conv("c0", "x").clip("cl", "c0").conv("c1", "cl").build(["c1"])
    assert fused(g, "rknn_int8").root(out("c0")) == out("cl")
    h = G().conv("c0", "x").unary("Sigmoid", "s", "c0").conv("c1", "s").build(["c1"])
    plan = fused(h, "rknn_int8")
    assert plan[out("c0")].state == INITIAL  # Sigmoid is quantized, not fused
    assert plan.is_quantized("s")


# ----- SNPE / QNN ---------------------------------------------------------------------------


def test_snpe_policies() -> None:
    """SNPE's TF-style 8-bit: uint8 [0, 255] with an offset for activations and weights,
    per-tensor; the bias int32 (--bias_bitwidth 32) and exported, where PPQ keeps a 30-bit
    internal bias and makes Clip's bounds passive."""
    g = G().conv("c0", "x").clip("cl", "c0").conv("c1", "cl").build(["c1"])
    p = fusekit.init_plan(g, "snpe_int8")
    for s in (inp("c0", 0), inp("c0", 1)):
        c = p[s]
        assert (c.quant_min, c.quant_max) == (0, 255) and not c.policy.symmetric
        assert not c.policy.per_channel
    b = p[inp("c0", 2)]
    assert (b.state, b.num_bits, b.visibility) == (
        QuantState.PASSIVE_INIT,
        32,
        fusekit.Visibility.EXPORT_WHEN_ACTIVE,
    )
    assert p[inp("cl", 1)].state == FP32 and p[inp("cl", 2)].state == FP32
    q = fusekit.init_plan(g, "ppq066_snpe_int8", dispatch=PPQ)
    assert q[inp("c0", 2)].num_bits == 30
    assert q[inp("cl", 1)].state == QuantState.PASSIVE_INIT
    assert fused(g, "snpe_int8").root(out("c0")) == out("cl")


# ----- OpenVINO -----------------------------------------------------------------------------


def test_openvino_weight_axes_and_bias() -> None:
    """Per-channel weights along the output channels: MatMul's last axis and Gemm's row or
    column by transB (PPQ: axis 0 always, the reduction axis of a MatMul weight); FP32 bias."""
    g = G().conv("c0", "x").op("Flatten", "f", ["c0"])
    g.const("wm", np.ones((100, 8)) * 0.1)
    g.const("wg", np.ones((100, 8)) * 0.1)
    g.op("MatMul", "m", ["f", "wm"]).op("Gemm", "gm", ["f", "wg"], transB=0)
    graph = g.build(["m", "gm"])
    p = fusekit.init_plan(graph, "openvino_int8")
    assert p[inp("m", 1)].channel_axis == 1
    assert p[inp("gm", 1)].channel_axis == 1
    assert p[inp("c0", 2)].state == FP32
    assert p[inp("c0", 0)].policy.symmetric
    # NNCF's narrow weight range (measured by bench/nncf_placement.py); PPQ: [-128, 127]
    assert (p[inp("c0", 1)].quant_min, p[inp("c0", 1)].quant_max) == (-127, 127)
    q = fusekit.init_plan(graph, "ppq066_openvino_int8", dispatch=PPQ)
    assert q[inp("m", 1)].channel_axis == 0
    assert q[inp("c0", 1)].quant_min == -128


def test_openvino_fuses_hardswish_pattern_and_leaky_relu() -> None:
    """Conv -> HardSigmoid(alpha=1/6), Mul(c, hsig) (HardSwish as exported by PyTorch) and Conv ->
    LeakyRelu fuse into the Conv (OpenVINO's CPU plugin and NNCF's fused patterns); PPQ's
    OpenVINO set (TensorRT's rules) knows neither, so the Conv output stays quantized."""
    g = G().conv("c0", "x").op("HardSigmoid", "s", ["c0"], alpha=1.0 / 6.0)
    graph = g.binary("Mul", "m", "c0", "s").conv("c1", "m").build(["c1"])
    ours = fused(graph, "openvino_int8")
    assert ours[out("c0")].state == OVERLAPPED and ours.root(out("c0")) == out("m")
    assert ppq_fused(graph, "ppq066_openvino_int8")[out("c0")].state == INITIAL
    h = G().conv("c0", "x").unary("LeakyRelu", "lr", "c0").conv("c1", "lr").build(["c1"])
    assert fused(h, "openvino_int8").root(out("c0")) == out("lr")
    assert ppq_fused(h, "ppq066_openvino_int8")[out("c0")].state == INITIAL


def test_openvino_keeps_a_residual_adds_inputs_on_their_own_scales() -> None:
    """NNCF's CPU hardware config asks one scale of a Concat's inputs only: the two inputs of a
    residual Add keep their own scales under openvino_int8 (quantized, as computing-input
    places them); trt_int8's alignment families put them on one scale."""
    g = G().conv("c0", "x").conv("c1", "c0").binary("Add", "a", "c0", "c1").conv("c2", "a")
    graph = g.build(["c2"])
    p = fusekit.get_platform("openvino_int8")
    aligned = p.evolve(
        name="openvino_int8_aligned", alignment=fusekit.get_platform("trt_int8").alignment
    )
    data = random_data(graph, 4, seed=0)
    ours = fusekit.default_pipeline(p, calibration=Calibration(data)).run(
        graph, fusekit.init_plan(graph, p)
    )
    assert ours.plan.is_quantized("a")
    assert ours.plan.root(inp("a", 0)) != ours.plan.root(inp("a", 1))
    assert ours.plan[inp("a", 0)].scale != ours.plan[inp("a", 1)].scale
    other = fusekit.default_pipeline(aligned, calibration=Calibration(data))
    plan = other.run(graph, fusekit.init_plan(graph, aligned)).plan
    assert plan.root(inp("a", 0)) == plan.root(inp("a", 1))


# ----- NCNN ---------------------------------------------------------------------------------


def test_ncnn_input_only_quantization() -> None:
    """ncnn quantizes the inputs of its int8 Conv/Gemm (symmetric +-127, round half away from
    zero), dequantizes their outputs; Relu and pooling stay float; 3x3 stride-1 kernels 6-bit."""
    g = G().conv("c0", "x").relu("r", "c0")
    w3 = g.const("w3", np.ones((4, 4, 3, 3)) * 0.1)
    g.op("Conv", "k3", ["r", w3], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = g.build(["k3"])
    p = fused(graph, "ncnn_int8")
    a = p[inp("c0", 0)]
    assert (a.quant_min, a.quant_max, a.rounding) == (
        -127,
        127,
        fusekit.RoundingPolicy.ROUND_HALF_FAR_FROM_ZERO,
    )
    assert p[out("c0")].state == FP32 and p[out("k3")].state == FP32
    assert not p.is_quantized("r") or p[out("r")].state == FP32
    assert p[inp("k3", 0)].state == INITIAL
    assert (p[inp("k3", 1)].num_bits, p[inp("k3", 1)].quant_max) == (6, 31)
    assert (p[inp("c0", 1)].num_bits, p[inp("c0", 1)].channel_axis) == (8, 0)
    assert p[inp("c0", 2)].state == FP32


def test_ncnn_gemm_weight_axis_follows_trans_b() -> None:
    """PPQ's NCNN set takes axis 0 of a Gemm weight whatever transB says (the reduction axis
    when transB=0); the corrected set takes the output channels."""
    g = G().op("Flatten", "f", ["x"])
    g.const("wg", np.ones((100, 8)) * 0.1)
    graph = g.op("Gemm", "gm", ["f", "wg"], transB=0).build(["gm"])
    assert fusekit.init_plan(graph, "ncnn_int8")[inp("gm", 1)].channel_axis == 1
    assert fusekit.init_plan(graph, "ppq066_ncnn_int8")[inp("gm", 1)].channel_axis == 0


# ----- TensorRT FP8 -------------------------------------------------------------------------


def test_floating_policy_without_power_of_two_is_accepted() -> None:
    """TensorRT's FP8 scales are any float; PPQ accepts FP8 only with POWER_OF_2."""
    pol = QuantPolicy.of(P.PER_TENSOR, P.FLOATING, P.SYMMETRICAL)
    c = TensorQuantConfig(pol, 8, -448.0, 448.0, exponent_bits=4)
    assert c.policy.floating and not c.policy.has(P.POWER_OF_2)
    with pytest.raises(InvalidPlan):  # still refused: floating and asymmetric
        TensorQuantConfig(QuantPolicy.of(P.PER_TENSOR, P.FLOATING, P.ASYMMETRICAL), 8)


def test_trt_fp8_policies_and_placement() -> None:
    g = G().conv("c0", "x").relu("r", "c0").op("Flatten", "f", ["r"])
    g.const("wm", np.ones((100, 8)) * 0.1)
    graph = g.op("MatMul", "m", ["f", "wm"]).build(["m"])
    p = fused(graph, "trt_fp8")
    a, w = p[inp("c0", 0)], p[inp("m", 1)]
    assert a.policy.floating and not a.policy.has(P.POWER_OF_2) and not a.policy.per_channel
    assert (a.exponent_bits, a.quant_max) == (4, 448.0)
    assert w.policy.per_channel and w.channel_axis == 1 and not w.policy.has(P.POWER_OF_2)
    assert p[out("c0")].state == FP32 and p[out("m")].state == FP32
    assert p[inp("c0", 2)].state == FP32
    assert p[inp("m", 0)].state == INITIAL


def _calibrated(graph: fusekit.Graph, name: str) -> fusekit.QuantPlan:
    data = random_data(graph, 4, seed=0)
    pipe = fusekit.default_pipeline(name, calibration=Calibration(data, observer="minmax"))
    return pipe.run(graph, fusekit.init_plan(graph, name)).plan


def _is_power_of_two(v: float) -> bool:
    return math.frexp(v)[0] == 0.5


def test_trt_fp8_scales_are_not_rounded_to_powers_of_two() -> None:
    """The calibrated scale is absmax / 448 exactly; PPQ's FP8 rounds it up to 2**k (up to 2x
    coarser)."""
    g = G()
    w = g.const("w", np.linspace(-0.3, 0.7, 16).reshape(4, 4, 1, 1))
    graph = g.op("Conv", "c", ["x", w]).build(["c"])
    ours = _calibrated(graph, "trt_fp8")
    ws = np.asarray(ours.scale_of(inp("c", 1)), dtype=np.float64).ravel()
    want = np.abs(np.linspace(-0.3, 0.7, 16).reshape(4, 4)).max(axis=1) / 448.0
    np.testing.assert_allclose(ws, want, rtol=1e-6)
    assert not all(_is_power_of_two(float(v)) for v in ws)
    ppq = _calibrated(graph, "ppq066_trt_fp8")
    assert all(_is_power_of_two(float(v)) for v in np.asarray(ppq.scale_of(inp("c", 1))).ravel())


# ----- corpus exports -----------------------------------------------------------------------


def _corpus(name: str) -> fusekit.Graph:
    with gzip.open(CORPUS / "models" / f"{name}.onnx.gz") as f:
        return fusekit.load(f.read())


_ZP_TYPES = {
    "rknn_int8": {onnx.TensorProto.INT8},
    "snpe_int8": {onnx.TensorProto.UINT8},
    "openvino_int8": {onnx.TensorProto.INT8},
    "openvino_int8_mixed": {onnx.TensorProto.INT8, onnx.TensorProto.UINT8},
    "ncnn_int8": {onnx.TensorProto.INT8},
    "trt_fp8": {onnx.TensorProto.FLOAT8E4M3FN},
}


@pytest.mark.parametrize("model", ["mobilenet_v2", "silero_vad_16k_sequence"])
@pytest.mark.parametrize("name", VENDOR)
def test_corpus_export_passes_checker_and_runs(name: str, model: str) -> None:
    g = _corpus(model)
    plan = _calibrated(g, name)
    q = build_qdq(g, plan)
    onnx.checker.check_model(q.model, full_check=True)
    assert q.q_nodes > 0
    zps = {
        i.data_type
        for i in q.model.graph.initializer
        if i.name.endswith("zero_point") and i.data_type != onnx.TensorProto.INT32
    }
    assert zps and zps <= _ZP_TYPES[name], zps
    if name == "trt_fp8":
        assert q.opset == 19
    ev = evaluate(g, q.model, random_data(g, 4, seed=0))
    assert all(math.isfinite(o.sqnr_db) for o in ev.outputs), ev.outputs


def test_openvino_mixed_gives_a_non_negative_tensor_all_256_levels() -> None:
    """NNCF's mixed preset: asymmetric uint8 activations. A Relu output read by a Conv gets zero
    point 0 and scale max/255, half the performance preset's symmetric int8 scale; weights
    stay symmetric int8; everything else (placement, depthwise, alignment) is openvino_int8's."""
    from fusekit.calibrate import calibrate

    from .test_calibrate import conv_relu_model, samples

    mixed = fusekit.get_platform("openvino_int8_mixed")
    perf = fusekit.get_platform("openvino_int8")
    for field in ("placement", "alignment", "depthwise_input_per_channel", "weights", "bias"):
        assert getattr(mixed, field) == getattr(perf, field), field
    g = fusekit.load(conv_relu_model())
    feeds = samples(4)
    got = {}
    for p in (mixed, perf):
        plan = calibrate(g, fusekit.init_plan(g, p), feeds)
        qdq = build_qdq(g, plan).model
        zp = {i.name: i for i in qdq.graph.initializer if i.name.endswith("zero_point")}
        got[p.name] = (plan, zp)
    plan, zp = got["openvino_int8_mixed"]
    relu_in = next(s for s in plan if s.side == "in" and s.op == "conv2" and s.index == 0)
    assert plan[relu_in].quant_min == 0 and plan[relu_in].quant_max == 255
    assert float(plan.offset_of(relu_in)) == 0.0  # a Relu output: the zero point is 0
    perf_plan = got["openvino_int8"][0]
    ratio = float(perf_plan.scale_of(relu_in)) / float(plan.scale_of(relu_in))
    assert ratio == pytest.approx(2.0, rel=1e-3)  # one more bit for a non-negative tensor
    types = {i.data_type for i in zp.values()}
    assert onnx.TensorProto.UINT8 in types and onnx.TensorProto.INT8 in types  # acts, weights
