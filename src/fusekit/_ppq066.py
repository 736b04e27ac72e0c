"""PPQ 0.6.6's quantizers for the remaining fifteen targets, reproduced as ``ppq066_*`` rule sets.

PPQ ships one quantizer class per target platform; :mod:`fusekit.platforms` reproduces the
TensorRT, onnxruntime and PPL CUDA ones. This module holds the others (RKNN, OpenVINO, NCNN, MNN,
Tengine, the DSP family serving PPL DSP / SNPE / QNN, PPL DSP TI, Ascend, NXP, Metax channel- and
tensor-wise, FPGA, GraphCore FP8 and TensorRT FP8) as plain data, so that a model quantized with
any of them by PPQ can be planned identically here. The op lists, policies, bit widths and ranges
are the facts recorded in PPQ 0.6.6 (typos included: ``'SoftPlus'``, the ``'DropoutSlice'``
passive set, the FP8 quantizers reporting the PPL CUDA target); the differential test
``tests/test_ppq_parity.py`` checks every slot of every corpus model against PPQ's own records.

Kept apart from :mod:`fusekit.platforms` so the rule data of the reproductions does not crowd
the corrected rule sets; :mod:`fusekit.platforms` registers :data:`PPQ066_MORE` at import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._topology import Topology
from .graph import Graph
from .platforms import (
    _PPL_QUANT,
    _TRT_QUANT,
    PPQ_NON_ONNX,
    PPQ_PASSIVE,
    PPQ_SOCKETS,
    BiasRule,
    Platform,
    QuantRule,
    SocketRule,
    _ppq,
)
from .quant import QuantPolicy, QuantProperty, QuantState, RoundingPolicy, Visibility

__all__ = ["PPQ066_MORE", "shared_empty_arrays"]

P = QuantProperty
_LIN = P.LINEAR
SYM_PT = QuantPolicy.of(P.PER_TENSOR, _LIN, P.SYMMETRICAL)
SYM_PC = QuantPolicy.of(P.PER_CHANNEL, _LIN, P.SYMMETRICAL)
ASYM_PT = QuantPolicy.of(P.PER_TENSOR, _LIN, P.ASYMMETRICAL)
SYM_PT_P2 = QuantPolicy.of(P.PER_TENSOR, _LIN, P.SYMMETRICAL, P.POWER_OF_2)
SYM_PC_P2 = QuantPolicy.of(P.PER_CHANNEL, _LIN, P.SYMMETRICAL, P.POWER_OF_2)
FP8_PT = QuantPolicy.of(P.PER_TENSOR, P.FLOATING, P.SYMMETRICAL, P.POWER_OF_2)
FP8_PC = QuantPolicy.of(P.PER_CHANNEL, P.FLOATING, P.SYMMETRICAL, P.POWER_OF_2)

HALF_EVEN = RoundingPolicy.ROUND_HALF_EVEN
FAR = RoundingPolicy.ROUND_HALF_FAR_FROM_ZERO

# ----- op lists (PPQ 0.6.6 ``quant_operation_types``) ---------------------------------------

_DSP_QUANT: frozenset[str] = frozenset(
    [
        "Conv",
        "ConvTranspose",
        "Gemm",
        "Relu",
        "PRelu",
        "Clip",
        "Pad",
        "Resize",
        "MaxPool",
        "AveragePool",
        "GlobalMaxPool",
        "GlobalAveragePool",
        "Softmax",
        "Mul",
        "Add",
        "Max",
        "Sub",
        "Div",
        "Reshape",
        "LeakyRelu",
        "Concat",
        "Sigmoid",
        "Slice",
        "Interp",
        "ReduceMean",
        "Flatten",
        "Scale",
    ]
)
_NXP_QUANT = frozenset(
    [
        "Conv",
        "Gemm",
        "Relu",
        "PRelu",
        "Clip",
        "Pad",
        "Resize",
        "MaxPool",
        "AveragePool",
        "GlobalMaxPool",
        "GlobalAveragePool",
        "Mul",
        "Add",
        "Max",
        "Sub",
        "Div",
        "LeakyRelu",
        "Concat",
        "Sigmoid",
        "Slice",
    ]
)
_FPGA_QUANT = _NXP_QUANT | {"ConvTranspose"}
_RKNN_BASE: frozenset[str] = frozenset(
    [
        "Conv",
        "GlobalAveragePool",
        "AveragePool",
        "Relu",
        "Add",
        "Mul",
        "Clip",
        "Sigmoid",
        "MatMul",
        "Gemm",
        "Concat",
        "LeakyRelu",
    ]
)
_METAX_QUANT = frozenset(
    [
        "Conv",
        "Relu",
        "PRelu",
        "Clip",
        "Gemm",
        "Resize",
        "MaxPool",
        "AveragePool",
        "GlobalMaxPool",
        "GlobalAveragePool",
        "Mul",
        "Add",
        "LeakyRelu",
        "Split",
        "Concat",
        "Transpose",
        "Slice",
        "Reshape",
        "Flatten",
        "MatMul",
    ]
)
_BASE_ACTS = ("Relu", "Clip")
_TRT_ACTS = ("Relu", "Clip", "Swish", "SoftPlus", "Sigmoid", "Gelu")
_FP8_ACTS = ("Relu", "Clip", "Sigmoid", "LeakyRelu", "Swish", "Mish", "PRelu")

_CONV_LIKE = ("Conv", "ConvTranspose", "Gemm")


def _act(
    policy: QuantPolicy, lo: float, hi: float, rounding: RoundingPolicy = HALF_EVEN
) -> QuantRule:
    return QuantRule(policy, 8, lo, hi, rounding, "percentile")


def _w(
    policy: QuantPolicy,
    lo: float,
    hi: float,
    axis: int | None = None,
    rounding: RoundingPolicy = HALF_EVEN,
    bits: int = 8,
    exponent_bits: int = 0,
) -> QuantRule:
    return QuantRule(policy, bits, lo, hi, rounding, "minmax", axis, exponent_bits)


def _bias(
    state: QuantState,
    policy: QuantPolicy,
    bits: int,
    lo: int,
    hi: int,
    axis: int | None = None,
    visibility: Visibility = Visibility.EXPORT_WHEN_ACTIVE,
) -> BiasRule:
    return BiasRule(state, QuantRule(policy, bits, lo, hi, HALF_EVEN, "minmax", axis), visibility)


def _make(
    name: str,
    target: str,
    quant: Iterable[str],
    acts: Iterable[str],
    desc: str,
    activation: QuantRule,
    weights: Mapping[str, QuantRule],
    bias: BiasRule,
    *,
    weight_always: Iterable[str] = (),
    bias_types: Iterable[str] = _CONV_LIKE,
    fp32_outputs: Iterable[str] = (),
    fp32_from: Mapping[str, int] | None = None,
    **extra: object,
) -> Platform:
    """One PPQ quantizer: :func:`fusekit.platforms._ppq` plus the fields the others need."""
    base = _ppq(name, target, frozenset(quant), acts, desc, weights, bias, fp32_from)
    sockets = dict(PPQ_SOCKETS)
    for t in fp32_outputs:  # the quantizer forces these outputs to FP32 (input-only quantization)
        sockets[t] = SocketRule(PPQ_SOCKETS[t].inputs if t in PPQ_SOCKETS else (), ("FP32",))
    return base.evolve(
        activation=activation,
        sockets=sockets,
        weight_always=frozenset(weight_always),
        bias_types=frozenset(bias_types),
        **extra,
    )


# ----- the rule sets ------------------------------------------------------------------------

_U8 = _act(ASYM_PT, 0, 255)
_U8_W = _w(ASYM_PT, 0, 255)
_BIAS30 = _bias(QuantState.PASSIVE_INIT, SYM_PT, 30, -(2**29), 2**29 - 1)

_TRT_WEIGHTS = {
    "Conv": _w(SYM_PC, -128, 127, 0),
    "ConvTranspose": _w(SYM_PC, -128, 127, 1),
    "Gemm": _w(SYM_PC, -128, 127, 0),
    "MatMul": _w(SYM_PC, -128, 127, 0),  # PPQ: the reduction axis of a [K, N] weight (bug)
    "PPQBiasFusedMatMul": _w(SYM_PC, -128, 127, 0),
}

PPQ066_OPENVINO_INT8 = _make(
    "ppq066_openvino_int8",
    "OPENVINO_INT8",
    _TRT_QUANT,
    _TRT_ACTS,
    "PPQ 0.6.6 OpenvinoQuantizer (TensorRT's rules), reproduced exactly",
    _act(SYM_PT, -128, 127),
    _TRT_WEIGHTS,
    BiasRule(QuantState.FP32),
    fp32_from={"LayerNormalization": 1, "Attention": 2},
)


def _dsp(name: str, target: str, desc: str) -> Platform:
    return _make(
        name,
        target,
        _DSP_QUANT,
        _BASE_ACTS,
        desc,
        _U8,
        {t: _U8_W for t in _CONV_LIKE},
        _bias(QuantState.PASSIVE_INIT, SYM_PT, 30, -(2**29), 2**29 - 1, None, Visibility.INTERNAL),
        weight_always=_CONV_LIKE,
        passive_inputs_from={"Clip": 1},
        non_onnx_types=PPQ_NON_ONNX | {"Scale"},
    )


PPQ066_PPL_DSP_INT8 = _dsp(
    "ppq066_ppl_dsp_int8",
    "PPL_DSP_INT8",
    "PPQ 0.6.6 PPL_DSP_Quantizer: asymmetric uint8 per-tensor, 30-bit internal bias",
)
PPQ066_SNPE_INT8 = _dsp(
    "ppq066_snpe_int8", "SNPE_INT8", "PPQ 0.6.6 SNPE_INT8 (PPL_DSP_Quantizer's rules)"
)
PPQ066_QNN_DSP_INT8 = _dsp(
    "ppq066_qnn_dsp_int8", "QNN_DSP_INT8", "PPQ 0.6.6 QNN_DSP_INT8 (PPL_DSP_Quantizer's rules)"
)
PPQ066_PPL_DSP_TI_INT8 = _make(
    "ppq066_ppl_dsp_ti_int8",
    "PPL_DSP_TI_INT8",
    _DSP_QUANT,
    _BASE_ACTS,
    "PPQ 0.6.6 PPL_DSP_TI_Quantizer: symmetric int8, per-channel weights, FP32 bias",
    _act(SYM_PT, -128, 127),
    {
        "Conv": _w(SYM_PC, -128, 127, 0),
        "ConvTranspose": _w(SYM_PC, -128, 127, 1),
        "Gemm": _w(SYM_PC, -128, 127, 0),
    },
    BiasRule(QuantState.FP32),
    weight_always=_CONV_LIKE,
    non_onnx_types=PPQ_NON_ONNX | {"Scale"},
)
PPQ066_NXP_INT8 = _make(
    "ppq066_nxp_int8",
    "NXP_INT8",
    _NXP_QUANT,
    _BASE_ACTS,
    "PPQ 0.6.6 NXP_Quantizer: power-of-two scales everywhere, 30-bit per-channel bias",
    _act(SYM_PT_P2, -128, 127, RoundingPolicy.ROUND_HALF_UP),
    {
        "Conv": _w(SYM_PC_P2, -128, 127, 0, FAR),
        "Gemm": _w(SYM_PC_P2, -128, 127, 0),
    },
    _bias(QuantState.PASSIVE_INIT, SYM_PC_P2, 30, -(2**30), 2**30 - 1, 0),
    weight_always=("Conv", "Gemm"),
)
PPQ066_FPGA_INT8 = _make(
    "ppq066_fpga_int8",
    "FPGA_INT8",
    _FPGA_QUANT,
    _BASE_ACTS,
    "PPQ 0.6.6 FPGAQuantizer: symmetric int8, power-of-two scales, 30-bit bias",
    _act(SYM_PT_P2, -128, 127),
    {t: _w(SYM_PT_P2, -128, 127) for t in _CONV_LIKE},
    _bias(QuantState.PASSIVE_INIT, SYM_PT_P2, 30, -(2**29), 2**29 - 1),
    weight_always=_CONV_LIKE,
)
PPQ066_NCNN_INT8 = _make(
    "ppq066_ncnn_int8",
    "NCNN_INT8",
    ("Conv", "Gemm"),
    (),  # PPQ's NCNN list is an empty dict literal: no activation fusion
    "PPQ 0.6.6 NCNNQuantizer: Conv/Gemm inputs only (outputs FP32), 6-bit 3x3 stride-1 kernels",
    _act(SYM_PT, -127, 127, FAR),
    {"Conv": _w(SYM_PC, -127, 127, 0, FAR), "Gemm": _w(SYM_PC, -127, 127, 0, FAR)},
    BiasRule(QuantState.FP32),
    weight_always=("Conv", "Gemm"),
    fp32_outputs=("Conv", "Gemm"),
    weight_conditions={"Conv": "kernel3_s1_d1_g1"},
    conditional_weights={"Conv": _w(SYM_PC, -31, 31, 0, FAR, bits=6)},
)
PPQ066_MNN_INT8 = _make(
    "ppq066_mnn_int8",
    "MNN_INT8",
    ("Conv", "Add", "Gemm"),
    ("Relu", "Clip", "Swish", "SoftPlus", "Sigmoid"),
    "PPQ 0.6.6 MNNQuantizer: per-channel Conv weights; Gemm's bias is quantized as 8-bit data",
    _act(SYM_PT, -127, 127, FAR),
    {"Conv": _w(SYM_PC, -127, 127, 0, FAR), "Gemm": _w(SYM_PT, -127, 127, None, FAR)},
    BiasRule(QuantState.FP32, QuantRule(SYM_PT, 8, -127, 127, FAR, "minmax")),
    weight_always=("Conv", "Gemm"),
    bias_types=("Conv",),
)
PPQ066_RKNN_INT8 = _make(
    "ppq066_rknn_int8",
    "RKNN_INT8",
    _RKNN_BASE | PPQ_PASSIVE,
    _BASE_ACTS,
    "PPQ 0.6.6 RKNN_PerTensorQuantizer: asymmetric uint8 per-tensor, 32-bit bias",
    _U8,
    {"Conv": _U8_W, "Gemm": _U8_W},
    _bias(QuantState.PASSIVE_INIT, SYM_PT, 32, -(2**29), 2**29),
    weight_always=("Conv", "Gemm"),
    bias_types=("Conv", "Gemm"),
)
PPQ066_TENGINE_INT8 = _make(
    "ppq066_tengine_int8",
    "TENGINE_INT8",
    _RKNN_BASE | {"Softmax"},
    _BASE_ACTS,
    "PPQ 0.6.6 TengineQuantizer: asymmetric uint8 per-tensor, 30-bit bias",
    _U8,
    {"Conv": _U8_W, "Gemm": _U8_W},
    _BIAS30,
    weight_always=("Conv", "Gemm"),
    bias_types=("Conv", "Gemm"),
)
PPQ066_ASC_INT8 = _make(
    "ppq066_asc_int8",
    "ASC_INT8",
    ("Conv", "ConvTranspose", "Gemm", "AveragePool"),
    _BASE_ACTS,
    "PPQ 0.6.6 AscendQuantizer: asymmetric uint8 activations, per-channel int8 conv weights "
    "(PPQ refuses models with non-2-D convolutions or a Gemm without an axis attribute)",
    _act(ASYM_PT, 0, 255, FAR),
    {
        "Conv": _w(SYM_PC, -128, 127, 0, FAR),
        "ConvTranspose": _w(SYM_PC, -128, 127, 1, FAR),
        "Gemm": _w(SYM_PT, -128, 127, None, FAR),
    },
    BiasRule(QuantState.FP32, QuantRule(ASYM_PT, 8, 0, 255, FAR, "minmax")),
    weight_always=_CONV_LIKE,
)
PPQ066_METAX_INT8_C = _make(
    "ppq066_metax_int8_c",
    "METAX_INT8_C",
    _METAX_QUANT,
    _BASE_ACTS,
    "PPQ 0.6.6 MetaxChannelwiseQuantizer: symmetric int8, per-channel Conv/MatMul weights",
    _act(SYM_PT, -127, 127),
    {
        "Conv": _w(SYM_PC, -127, 127, 0),
        "Gemm": _w(SYM_PT, -127, 127),
        "MatMul": _w(SYM_PC, -127, 127, 1),
    },
    _bias(QuantState.PASSIVE_INIT, SYM_PC, 30, -(2**29), 2**29 - 1, 0),
    weight_always=("Conv", "Gemm", "MatMul"),
    bias_types=("Conv",),
)
PPQ066_METAX_INT8_T = _make(
    "ppq066_metax_int8_t",
    "METAX_INT8_T",
    _METAX_QUANT,
    _BASE_ACTS,
    "PPQ 0.6.6 MetaxTensorwiseQuantizer: asymmetric uint8 per-tensor, FP32 Conv bias",
    _U8,
    {"Conv": _U8_W, "Gemm": _U8_W},
    _bias(QuantState.FP32, SYM_PT, 30, -(2**29), 2**29 - 1),
    weight_always=("Conv", "Gemm"),
    bias_types=("Conv",),
)

_E4M3 = QuantRule(FP8_PT, 8, -448.0, 448.0, HALF_EVEN, "percentile", None, 4)


def _fp8_w(axis: int) -> QuantRule:
    return _w(FP8_PC, -448.0, 448.0, axis, exponent_bits=4)


_FP8_WEIGHTS = {
    "Conv": _fp8_w(0),
    "ConvTranspose": _fp8_w(1),
    "Gemm": _fp8_w(0),
    "MatMul": _fp8_w(0),
}
_FP8_BIAS = BiasRule(QuantState.FP32, _E4M3)

PPQ066_GRAPHCORE_FP8 = _make(
    "ppq066_graphcore_fp8",
    "PPL_CUDA_INT8",  # sic: PPQ's GraphCore quantizer reports the PPL CUDA target
    _PPL_QUANT | {"ConvTranspose", "MatMul"},
    _FP8_ACTS,
    "PPQ 0.6.6 GraphCoreQuantizer: FP8 E4M3 (4 exponent bits, +-448), power-of-two scales",
    _E4M3,
    _FP8_WEIGHTS,
    _FP8_BIAS,
    weight_always=("Conv", "ConvTranspose", "Gemm", "MatMul"),
)
PPQ066_TRT_FP8 = _make(
    "ppq066_trt_fp8",
    "PPL_CUDA_INT8",  # sic: PPQ's TensorRT FP8 quantizer reports the PPL CUDA target
    ("Conv", "Gemm", "AveragePool", "GlobalAveragePool", "ConvTranspose", "MatMul"),
    _FP8_ACTS,
    "PPQ 0.6.6 TensorRTQuantizer_FP8: FP8 E4M3 inputs of computing ops, their outputs FP32",
    _E4M3,
    _FP8_WEIGHTS,
    _FP8_BIAS,
    weight_always=("Conv", "ConvTranspose", "Gemm", "MatMul"),
    fp32_outputs=("Conv", "ConvTranspose", "Gemm", "MatMul"),
)

#: Every rule set of this module, registered by :mod:`fusekit.platforms`.
PPQ066_MORE: tuple[Platform, ...] = (
    PPQ066_RKNN_INT8,
    PPQ066_GRAPHCORE_FP8,
    PPQ066_TRT_FP8,
    PPQ066_OPENVINO_INT8,
    PPQ066_NCNN_INT8,
    PPQ066_MNN_INT8,
    PPQ066_TENGINE_INT8,
    PPQ066_SNPE_INT8,
    PPQ066_QNN_DSP_INT8,
    PPQ066_PPL_DSP_INT8,
    PPQ066_PPL_DSP_TI_INT8,
    PPQ066_ASC_INT8,
    PPQ066_NXP_INT8,
    PPQ066_METAX_INT8_C,
    PPQ066_METAX_INT8_T,
    PPQ066_FPGA_INT8,
)


# ----- PPQ's parser: every empty name ``''`` is one shared variable ---------------------------


def shared_empty_arrays(graph: Graph) -> Topology:
    """``graph.arrays()`` as PPQ's parser sees the graph: every omitted optional input (``''``)
    reads one shared tensor, produced by the first op with an empty *output* name, if any.

    ONNX's ``''`` means "no tensor", and fusekit's index says so (tensor id -1). PPQ 0.6.6 makes
    all ``''`` one variable, which has visible effects (issue 14): a ``Clip(c, '', max)`` bound
    becomes a passive slave like a real bound, alignment of ``Resize(y, '', s)`` pulls in every
    other Resize's ``''`` slot, and a ``Dropout -> [d, '']`` becomes a producer of every ``''``
    input, so ``Conv -> Clip(c, '', max)`` no longer fuses. The ``ppq066_*`` passes read these
    arrays (quirk ``shared_empty_name``); op and slot ids are the graph's own, only one tensor
    id is added. Computed once per graph value. When a ``''`` reader comes before the producer
    in the graph's order (PPQ itself crashes there), the shared tensor has no producer.
    """
    return graph.derived(_shared_empty_view)


def _shared_empty_view(graph: Graph) -> Topology:
    ar = graph.index
    st, base, n_in, n_out = ar.slot_tensor, ar.slot_base, ar.n_in, ar.n_out
    readers: list[int] = []
    writers: list[int] = []
    for o in ar.order:
        b = base[o]
        readers.extend(s for s in range(b, b + n_in[o]) if st[s] < 0)
        writers.extend(s for s in range(b + n_in[o], b + n_in[o] + n_out[o]) if st[s] < 0)
    if not readers and not writers:
        return ar
    e = len(ar.tensor_names)
    slot_tensor = list(st)
    for s in readers:
        slot_tensor[s] = e
    src = writers[0] if writers else -1
    if src >= 0 and readers and ar.pos[ar.slot_op[readers[0]]] < ar.pos[ar.slot_op[src]]:
        src = -1  # PPQ crashes on a reader before the producer; fusekit leaves it unproduced
    n_uses = ar.n_uses
    if src >= 0:
        slot_tensor[src] = e
        n_uses = list(n_uses)
        n_uses[ar.slot_op[src]] += len(readers)
    # a variant has its own cache: what other modules derive from it differs for this view
    return ar.variant(
        n_uses=n_uses,
        slot_tensor=slot_tensor,
        producer=[*ar.producer, src],
        consumers=[*ar.consumers, tuple(readers)],
        tensor_names=[*ar.tensor_names, ""],
        is_init=[*ar.is_init, False],
        is_const=[*ar.is_const, False],
        is_output=[*ar.is_output, False],
    )
