"""Corrected rule sets for the vendor backends PPQ serves: RKNN, SNPE/QNN, OpenVINO, NCNN, TRT FP8.

PPQ 0.6.6 ships a quantizer for each of these backends, reproduced exactly by the ``ppq066_*``
sets of :mod:`fusekit._ppq066`. Those carry PPQ's typos (``'DropoutSlice'``, ``'SoftPlus'``),
fuse activations into graph outputs, quantize input 1 of Conv/Gemm as a weight whatever it is,
and use policies that sometimes differ from what the vendor's tools produce (RKNN-Toolkit2's
per-channel weights and int8 activations, TensorRT's arbitrary FP8 scales). The sets here are
fusekit's corrected versions, one per backend family users deploy today, built from the same
ingredients as ``trt_int8``/``ort_int8`` (fusekit's passive list, sockets, alignment, epilogue
folding, weight axes). The sources each policy was checked against, and every difference from
PPQ's set, are in ``docs/platforms.md``; a policy the vendor's documentation does not settle
keeps PPQ's choice and is marked there as unverified.

Kept in a module of their own so the rule data of the vendor sets does not crowd
:mod:`fusekit.platforms`, which registers :data:`VENDOR_PLATFORMS` at import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._ppq066 import _DSP_QUANT, _RKNN_BASE
from .platforms import (
    _COMMON_QUANT,
    _FK_ALIGNMENT,
    _FK_WEIGHTS,
    _SINGLE_ACTS,
    ASYM_PT,
    FUSEKIT_PASSIVE,
    FUSEKIT_SOCKETS,
    SYM_PC,
    SYM_PT,
    BiasRule,
    Platform,
    QuantRule,
    SocketRule,
)
from .quant import QuantPolicy, QuantProperty, QuantState, RoundingPolicy

__all__ = [
    "NCNN_INT8",
    "OPENVINO_INT8",
    "OPENVINO_INT8_MIXED",
    "RKNN_INT8",
    "SNPE_INT8",
    "TRT_FP8",
    "VENDOR_PLATFORMS",
]

P = QuantProperty
#: TensorRT's FP8: symmetric, no zero point, any float scale (no power-of-two restriction)
FP8_PT = QuantPolicy.of(P.PER_TENSOR, P.FLOATING, P.SYMMETRICAL)
FP8_PC = QuantPolicy.of(P.PER_CHANNEL, P.FLOATING, P.SYMMETRICAL)

HALF_EVEN = RoundingPolicy.ROUND_HALF_EVEN
FAR = RoundingPolicy.ROUND_HALF_FAR_FROM_ZERO

_COMPUTING = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_EPILOGUE = frozenset({"BatchNormalization", "Add", "Sub", "Mul", "Div"})


def _bias32(policy: QuantPolicy, axis: int | None) -> BiasRule:
    """An int32 bias with ``scale = in_scale * w_scale`` (PASSIVE_INIT), full int32 range."""
    return BiasRule(
        QuantState.PASSIVE_INIT,
        QuantRule(policy, 32, -(2**31), 2**31 - 1, HALF_EVEN, "minmax", axis),
    )


def _vendor(
    name: str,
    desc: str,
    target: str,
    *,
    quant: Iterable[str],
    acts: Iterable[str],
    patterns: Iterable[str],
    activation: QuantRule,
    weights: Mapping[str, QuantRule],
    bias: BiasRule,
    fp32_outputs: Iterable[str] = (),
    alignment: Mapping[str, frozenset[str]] = _FK_ALIGNMENT,
    **extra: object,
) -> Platform:
    """A corrected rule set: fusekit's passive list, sockets, alignment and epilogue folding.

    ``fp32_outputs`` names op types whose outputs stay FP32 (backends that quantize only the
    inputs of their int8/fp8 kernels, NCNN and TensorRT FP8): their output sockets say FP32.
    """
    quant = frozenset(quant)
    sockets = dict(FUSEKIT_SOCKETS)
    for t in fp32_outputs:
        base = FUSEKIT_SOCKETS.get(t)
        sockets[t] = SocketRule(base.inputs if base is not None else (), ("FP32",))
    return Platform(
        name=name,
        description=desc,
        quant_types=quant,
        computing_types=_COMPUTING,
        activation_types=frozenset(acts),
        activation_patterns=frozenset(patterns),
        epilogue_types=_EPILOGUE,
        passive_types=FUSEKIT_PASSIVE,
        passive_conditions={"Pad": "pad_constant_zero"},
        sockets=sockets,
        activation=activation,
        weights=weights,
        bias=bias,
        fp32_inputs_from={"LayerNormalization": 1},
        alignment=alignment,
        ppq_target=target,
        **extra,  # type: ignore[arg-type]
    )


# ----- RKNN (Rockchip NPU, RKNN-Toolkit2) ------------------------------------------------------

# PPQ's RKNN list (RKNN_PerTensorQuantizer), with fusekit's real passive ops instead of PPQ's
# 'DropoutSlice' set.
_RKNN_QUANT = _RKNN_BASE | FUSEKIT_PASSIVE
_RKNN_W = QuantRule(SYM_PC, 8, -128, 127, HALF_EVEN, "minmax", 0)

RKNN_INT8 = _vendor(
    "rknn_int8",
    "Rockchip RKNN-Toolkit2 INT8: asymmetric int8 per-tensor activations, per-channel int8 "
    "weights, int32 bias; Conv/Gemm + Relu/Clip fusion",
    "RKNN_INT8",
    quant=_RKNN_QUANT,
    acts=("Relu", "Clip"),
    patterns=(),
    activation=QuantRule(ASYM_PT, 8, -128, 127, HALF_EVEN, "minmax"),
    weights={"Conv": _RKNN_W, "Gemm": _RKNN_W},
    bias=_bias32(SYM_PC, 0),
)

# ----- SNPE / QNN (Qualcomm Hexagon DSP / HTP) --------------------------------------------------

# PPQ's DSP list without its Caffe names ('Interp', 'Scale'), plus fusekit's passive ops.
_SNPE_QUANT = (_DSP_QUANT - {"Interp", "Scale"}) | FUSEKIT_PASSIVE
_U8 = QuantRule(ASYM_PT, 8, 0, 255, HALF_EVEN, "minmax")

SNPE_INT8 = _vendor(
    "snpe_int8",
    "Qualcomm SNPE / QNN DSP-HTP INT8 (TF-style uint8): asymmetric uint8 per-tensor activations "
    "and weights, int32 bias; Conv/Gemm + Relu/Clip fusion",
    "SNPE_INT8",
    quant=_SNPE_QUANT,
    acts=("Relu", "Clip"),
    patterns=(),
    activation=_U8,
    weights={"Conv": _U8, "ConvTranspose": _U8, "Gemm": _U8},
    bias=_bias32(SYM_PT, None),
)

# ----- OpenVINO (NNCF / LPT, "performance" preset) ----------------------------------------------

# NNCF's weights use the narrow range [-127, 127] (measured on its exports: bench/nncf_placement.py)
_OV_WEIGHTS = {
    t: QuantRule(SYM_PC, 8, -127, 127, HALF_EVEN, "minmax", r.channel_axis)
    for t, r in _FK_WEIGHTS.items()
}

OPENVINO_INT8 = _vendor(
    "openvino_int8",
    "OpenVINO INT8 (NNCF performance preset): quantizers on the inputs of Conv/Gemm/MatMul and "
    "residual Adds; symmetric int8 per-tensor activations (per channel into a depthwise Conv), "
    "symmetric per-channel [-127, 127] weights, FP32 bias",
    "OPENVINO_INT8",
    quant=_COMMON_QUANT | {"LayerNormalization"},
    acts=_SINGLE_ACTS,
    patterns=("swish", "mish", "hardswish", "gelu"),
    activation=QuantRule(SYM_PT, 8, -128, 127, HALF_EVEN, "minmax"),
    weights=_OV_WEIGHTS,
    bias=BiasRule(QuantState.FP32),
    # OpenVINO takes a scale per channel on a depthwise convolution's input (issue 15 item 5;
    # the measurement is in docs/accuracy.md)
    depthwise_input_per_channel=True,
    # NNCF, OpenVINO's quantizer, places its FakeQuantize ops on the inputs of quantizable ops
    # (convolutions, MatMul, residual Add) and none on their outputs: the low-precision
    # transformations fold it into the next kernel's input (measured on its exports:
    # bench/nncf_placement.py; accuracy against the old fused-output default in
    # docs/accuracy.md, issue 15)
    placement="computing-input",
    # NNCF's CPU hardware config asks one scale only of a Concat's inputs ("scales: unified");
    # an Add's two inputs keep their own scales (aligning them cost 2.5 dB on
    # ppocr_mobile_v2_cls_textlike: docs/accuracy.md)
    alignment={"concat": frozenset({"Concat"})},
)

# NNCF's MIXED preset (symmetric weights, asymmetric activations; OpenVINO's CPU plugin runs
# both presets): a tensor that is never negative (a ReLU, HardSigmoid or Sigmoid output) gets
# all 256 levels instead of the 128 of a symmetric int8 range, and a skewed one its own zero
# point. Everything else is the performance preset's (measured: docs/accuracy.md, issue 15).
OPENVINO_INT8_MIXED = OPENVINO_INT8.evolve(
    name="openvino_int8_mixed",
    description=(
        "OpenVINO INT8 (NNCF mixed preset): as openvino_int8, but asymmetric uint8 per-tensor "
        "activations (per channel into a depthwise Conv)"
    ),
    activation=QuantRule(ASYM_PT, 8, 0, 255, HALF_EVEN, "minmax"),
)

# ----- NCNN (Tencent ncnn, ncnn2table / ncnn2int8) ----------------------------------------------

_NCNN_W = QuantRule(SYM_PC, 8, -127, 127, FAR, "minmax", 0)

NCNN_INT8 = _vendor(
    "ncnn_int8",
    "Tencent ncnn INT8: Conv/Gemm inputs quantized (symmetric +-127, round half away from zero), "
    "outputs FP32; per-channel weights, 6-bit 3x3 stride-1 kernels, FP32 bias",
    "NCNN_INT8",
    quant=("Conv", "Gemm"),
    acts=(),
    patterns=(),
    activation=QuantRule(SYM_PT, 8, -127, 127, FAR, "minmax"),
    weights={"Conv": _NCNN_W, "Gemm": _NCNN_W},
    bias=BiasRule(QuantState.FP32),
    fp32_outputs=("Conv", "Gemm"),
    weight_conditions={"Conv": "kernel3_s1_d1_g1"},
    conditional_weights={"Conv": QuantRule(SYM_PC, 6, -31, 31, FAR, "minmax", 0)},
)

# ----- TensorRT FP8 (E4M3, explicit quantization) -----------------------------------------------

_E4M3 = QuantRule(FP8_PT, 8, -448.0, 448.0, HALF_EVEN, "minmax", None, 4)


def _e4m3_w(axis: int) -> QuantRule:
    return QuantRule(FP8_PC, 8, -448.0, 448.0, HALF_EVEN, "minmax", axis, 4)


TRT_FP8 = _vendor(
    "trt_fp8",
    "TensorRT FP8 E4M3 (explicit Q/DQ): inputs of Conv/Gemm/MatMul quantized, outputs FP32; "
    "per-tensor activations, per-channel weights, any float scale, FP32 bias",
    "TRT_FP8",
    quant=("Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool"),
    acts=(),
    patterns=(),
    activation=_E4M3,
    weights={
        "Conv": _e4m3_w(0),
        "ConvTranspose": _e4m3_w(1),
        "Gemm": _e4m3_w(0),
        "MatMul": _e4m3_w(-1),
    },
    bias=BiasRule(QuantState.FP32),
    fp32_outputs=("Conv", "ConvTranspose", "Gemm", "MatMul"),
)

#: Every rule set of this module, registered by :mod:`fusekit.platforms`.
VENDOR_PLATFORMS: tuple[Platform, ...] = (
    RKNN_INT8,
    SNPE_INT8,
    OPENVINO_INT8,
    OPENVINO_INT8_MIXED,
    NCNN_INT8,
    TRT_FP8,
)
