"""Platform rule sets as data, and :func:`init_plan`.

A :class:`Platform` is a frozen value, not a class hierarchy: which op types a backend
quantizes, which activations it fuses into the preceding computing op, which ops only move data
(passive), which inputs are never quantized (sockets), and the policies of activations, weights
and biases. fusekit ships corrected rule sets (``trt_int8``, ``ort_int8``, ``ppl_cuda_int8``) and
the rule sets of PPQ 0.6.6 reproduced exactly, typos included (``ppq066_trt_int8``,
``ppq066_ort_int8``, ``ppq066_ppl_cuda_int8``, ``ppq066_ort_int8_softplus_tanh`` here, and one for
each of PPQ's other targets in :mod:`fusekit._ppq066`), for parity tests and for users
migrating from PPQ. Users register their own with :func:`register_platform`
or load them from JSON/TOML with :func:`load_platform`.

Every op type named in a rule set is checked against the ONNX operator registry by the test
suite; names that are not ONNX operators (PPQ's own fused types and typos) must be listed in
``non_onnx_types``.

Rules name operators of ONNX's own domain (``""`` / ``"ai.onnx"``). An op of any other
domain is known to every rule by its qualified name ``"domain::Type"``
(:func:`fusekit.graph.rule_type`), so a private ``Conv`` or ``com.microsoft``'s ``Gelu`` is
never planned as the ONNX operator; a rule set that does want ``com.microsoft::Gelu`` names it
so, explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from pyrsistent import PMap, pmap, pvector

from ._util import without_gc
from .dtypes import FLOAT_TYPES, tensor_elem_types
from .errors import InvalidPlatform, UnknownPlatform, UnsupportedModel
from .graph import Graph, Op
from .quant import (
    NO_LINK,
    QuantPlan,
    QuantPolicy,
    QuantProperty,
    QuantState,
    RoundingPolicy,
    TensorQuantConfig,
    Visibility,
)

__all__ = [
    "PLACEMENTS",
    "QUIRKS",
    "WEIGHT_CONDITIONS",
    "BiasRule",
    "Platform",
    "QuantRule",
    "SocketRule",
    "get_platform",
    "init_plan",
    "load_platform",
    "platform_from_dict",
    "platform_to_dict",
    "platforms",
    "refuse_other_floats",
    "register_platform",
]

P = QuantProperty
SYM_PT = QuantPolicy.of(P.PER_TENSOR, P.LINEAR, P.SYMMETRICAL)
SYM_PC = QuantPolicy.of(P.PER_CHANNEL, P.LINEAR, P.SYMMETRICAL)
ASYM_PT = QuantPolicy.of(P.PER_TENSOR, P.LINEAR, P.ASYMMETRICAL)

#: Where a rule set puts its quantization points (:attr:`Platform.placement`).
PLACEMENTS: Mapping[str, str] = {
    "fused-output": "a point on the output of every quantized op (after its fused activation) "
    "and on every input it reads, graph outputs and the tail included (PPQ's model)",
    "node-unit": "the same points, as node units DequantizeLinear -> op -> QuantizeLinear for "
    "the backend to match, but the tail after the last computing op (the ops from which no "
    "Conv/ConvTranspose/Gemm/MatMul is reachable) stays float, so graph outputs are not "
    "rounded (onnxruntime's CPU provider)",
    "computing-input": "points only on the inputs of Conv/ConvTranspose/Gemm/MatMul (and their "
    "weights) and on both inputs of a residual Add; outputs are left to the kernel (NVIDIA's "
    "recommendation for TensorRT explicit quantization, what ModelOpt and NNCF write)",
}

#: PPQ 0.6.6 behaviours a rule set can switch on (the ``ppq066_*`` sets switch on all of them).
QUIRKS: Mapping[str, str] = {
    "graph_output_fusion": "activation/Swish fusion ignores graph outputs and overlaps them",
    "first_occurrence_input": "Mul(x, x): only the first input slot of a repeated tensor is "
    "de-duplicated by simplify",
    "alignment_overlap": "alignment overlaps upstream outputs (0.6.6 dominated_by), leaving "
    "fan-out edges unquantized",
    "align_to_large_slave_bug": "align-to-large tests the last input's state instead of each "
    "slave's",
    "align_to_large_regrow": "align-to-large recomputes the range from the current scales on "
    "every run (the scale grows by 256/255 each time)",
    "platform_mismatch_fp32_fuse": "activation fusion across platforms proceeds when the computing "
    "op's output is FP32",
    "bake_clip_bounds": "Clip min/max become passive slaves of the Clip input, so a fused ReLU6 "
    "bound is rewritten by baking",
    "shared_empty_name": "every empty name '' (an omitted optional input or output) is one "
    "shared tensor, as PPQ's parser makes it: Clip(c, '', max) bounds, Resize '' slots and an "
    "op with an empty output name (Dropout -> [d, '']) become linked",
    "weight_parameter_only": "a weight computed from constants (Reshape(w) -> Conv, Transpose(w) "
    "-> Gemm) is not a parameter: the weight rule skips it (PPQ does not fold constants)",
}

#: Named preconditions of :attr:`Platform.weight_conditions`.
WEIGHT_CONDITIONS: Mapping[str, str] = {
    "kernel3_s1_d1_g1": "a convolution whose every kernel dimension is 3, with stride 1, "
    "dilation 1 and group 1 (3x3, and 3 in 1-D: NCNN's 6-bit weights)",
}


@attrs.frozen
class SocketRule:
    """Which inputs/outputs of an op type are never quantized.

    Each entry is ``"U"`` (unspecified: quantized like any slot), ``"FP32"`` or ``"SOI"``
    (shape-or-index data). Slots beyond the tuple are ``"U"``.
    """

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def input(self, i: int) -> str:
        """The rule for input ``i``."""
        return self.inputs[i] if i < len(self.inputs) else "U"

    def output(self, i: int) -> str:
        """The rule for output ``i``."""
        return self.outputs[i] if i < len(self.outputs) else "U"


@attrs.frozen
class QuantRule:
    """How a class of slots (activations, or one op type's weight) is quantized."""

    policy: QuantPolicy = SYM_PT
    num_bits: int = 8
    quant_min: int | float = -128
    quant_max: int | float = 127
    rounding: RoundingPolicy = RoundingPolicy.ROUND_HALF_EVEN
    observer: str = "percentile"
    channel_axis: int | None = None  # -1: the last axis of the weight
    exponent_bits: int = 0

    def config(
        self, state: QuantState = QuantState.INITIAL, axis: int | None = None
    ) -> TensorQuantConfig:
        """A fresh config following this rule."""
        return TensorQuantConfig(
            policy=self.policy,
            num_bits=self.num_bits,
            quant_min=self.quant_min,
            quant_max=self.quant_max,
            exponent_bits=self.exponent_bits,
            rounding=self.rounding,
            channel_axis=axis if axis is not None else self.channel_axis,
            observer=self.observer,
            state=state,
        )


@attrs.frozen
class BiasRule:
    """The bias of Conv/ConvTranspose/Gemm: FP32, or PASSIVE_INIT with ``in_scale * w_scale``."""

    state: QuantState = QuantState.FP32
    rule: QuantRule = QuantRule()
    visibility: Visibility = Visibility.EXPORT_WHEN_ACTIVE


def _fs(items: Iterable[str]) -> frozenset[str]:
    return frozenset(items)


def _pm(items: Mapping[str, Any] | None) -> PMap[str, Any]:
    return pmap(items or {})


@attrs.frozen
class Platform:
    """A backend's quantization rules, as data.

    Fields:

    * ``quant_types``: op types the backend quantizes.
    * ``computing_types``: ops an activation can be fused into (PPQ's COMPUTING_OP).
    * ``activation_types``: single-op activations fused after a computing op.
    * ``activation_patterns``: composite activations fused after a computing op
      (``"swish"``, ``"mish"``, ``"hardswish"``, ``"gelu"``).
    * ``epilogue_types``: ops folded into the computing op before them when their other
      operands are constant (BatchNormalization, a bias Add, a scale Mul); activations then fuse
      after the folded op.
    * ``passive_types``: ops whose outputs keep their first input's scale;
      ``passive_conditions``: op type -> named precondition (``"pad_constant_zero"``).
    * ``sockets``: op type -> which inputs/outputs are never quantized.
    * ``activation``: the rule of ordinary slots; ``weights``: op type -> rule for input 1 when
      it is a constant; ``bias_types``/``bias``: the rule of input 2 of those ops;
      ``fp32_inputs_from``: op type -> first input index that stays FP32.
    * ``weight_always``: op types whose input 1 gets the weight rule even when it is not a
      constant (most PPQ quantizers test the input's position, not its kind).
    * ``weight_conditions``/``conditional_weights``: op type -> named precondition
      (``"kernel3_s1_d1_g1"``) and the weight rule used when it holds (NCNN's 6-bit 3x3 kernels).
    * ``passive_inputs_from``: op type -> first input index that starts PASSIVE_INIT with
      INTERNAL visibility (PPQ's DSP quantizer does this to Clip's min/max).
    * ``linear_activations``: ops PPQ's dispatcher moves onto their producer's platform.
    * ``alignment``: op families the alignment pass aligns.
    * ``quirks``: PPQ 0.6.6 behaviours reproduced (see :data:`QUIRKS`).
    * ``non_onnx_types``: names used above that are not ONNX operators, declared as such.
    * ``placement``: where the quantization points go, one of :data:`PLACEMENTS`
      (``"fused-output"``, ``"node-unit"`` or ``"computing-input"``).

    Every name means an operator of ONNX's own domain, except a qualified
    ``"domain::Type"`` (``"com.microsoft::Gelu"``), which matches that domain's op only.
    """

    name: str
    description: str = ""
    quant_types: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    computing_types: frozenset[str] = attrs.field(
        default=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"}), converter=_fs
    )
    activation_types: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    activation_patterns: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    epilogue_types: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    passive_types: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    passive_conditions: PMap[str, str] = attrs.field(factory=pmap, converter=_pm)
    sockets: PMap[str, SocketRule] = attrs.field(factory=pmap, converter=_pm)
    activation: QuantRule = QuantRule()
    weights: PMap[str, QuantRule] = attrs.field(factory=pmap, converter=_pm)
    bias_types: frozenset[str] = attrs.field(
        default=frozenset({"Conv", "ConvTranspose", "Gemm"}), converter=_fs
    )
    bias: BiasRule = BiasRule()
    fp32_inputs_from: PMap[str, int] = attrs.field(factory=pmap, converter=_pm)
    weight_always: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    weight_conditions: PMap[str, str] = attrs.field(factory=pmap, converter=_pm)
    conditional_weights: PMap[str, QuantRule] = attrs.field(factory=pmap, converter=_pm)
    passive_inputs_from: PMap[str, int] = attrs.field(factory=pmap, converter=_pm)
    linear_activations: frozenset[str] = attrs.field(
        default=frozenset({"Relu", "Clip"}), converter=_fs
    )
    alignment: PMap[str, frozenset[str]] = attrs.field(factory=pmap, converter=_pm)
    quirks: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    non_onnx_types: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    ppq_target: str = ""
    placement: str = "fused-output"

    def __attrs_post_init__(self) -> None:
        unknown = self.quirks - set(QUIRKS)
        if unknown:
            raise InvalidPlatform(f"platform {self.name!r}: unknown quirks {sorted(unknown)}")
        bad = set(self.weight_conditions.values()) - set(WEIGHT_CONDITIONS)
        if bad:
            raise InvalidPlatform(
                f"platform {self.name!r}: unknown weight conditions {sorted(bad)}; "
                f"known: {sorted(WEIGHT_CONDITIONS)}"
            )
        missing = set(self.weight_conditions) - (set(self.conditional_weights) & set(self.weights))
        if missing:
            raise InvalidPlatform(
                f"platform {self.name!r}: weight_conditions names {sorted(missing)} without a rule "
                "in both conditional_weights and weights"
            )
        if self.placement not in PLACEMENTS:
            raise InvalidPlatform(
                f"platform {self.name!r}: unknown placement {self.placement!r}; "
                f"use one of {sorted(PLACEMENTS)}"
            )

    def has_quirk(self, quirk: str) -> bool:
        """True if this rule set reproduces PPQ 0.6.6 behaviour ``quirk``."""
        return quirk in self.quirks

    def socket(self, op_type: str) -> SocketRule:
        """The socket rule of an op type (all ``"U"`` when none is given)."""
        return self.sockets.get(op_type, _DEFAULT_SOCKET)

    def op_types(self) -> frozenset[str]:
        """Every op type this rule set names anywhere."""
        names: set[str] = set()
        names |= self.quant_types | self.computing_types | self.activation_types
        names |= self.epilogue_types
        names |= self.passive_types | self.bias_types | self.linear_activations
        names |= set(self.passive_conditions) | set(self.sockets) | set(self.weights)
        names |= set(self.fp32_inputs_from) | self.weight_always | set(self.weight_conditions)
        names |= set(self.conditional_weights) | set(self.passive_inputs_from)
        for v in self.alignment.values():
            names |= v
        return frozenset(names)

    def evolve(self, **changes: Any) -> Platform:
        """A copy with some fields changed (the way to derive a custom rule set)."""
        return attrs.evolve(self, **changes)


_DEFAULT_SOCKET = SocketRule()

U, F, S = "U", "FP32", "SOI"

# PPQ's DEFAULT_SOCKET_TABLE as evaluated (reference section 2.3).
PPQ_SOCKETS: Mapping[str, SocketRule] = {
    "Reshape": SocketRule((U, S)),
    "Pad": SocketRule((U, S, S)),
    "Resize": SocketRule((U, S, S, S)),
    "Slice": SocketRule((U, S, S, S, S)),
    "Split": SocketRule((U, S)),
    "Squeeze": SocketRule((U, S)),
    "Unsqueeze": SocketRule((U, S)),
    "Expand": SocketRule((U, S)),
    "Tile": SocketRule((U, S, S)),
    "TopK": SocketRule((U, S), (U, F)),
    "Clip": SocketRule((U, F, F)),
    "Gather": SocketRule((U, F)),
    "GatherElements": SocketRule((U, F)),
    "GatherND": SocketRule((U, F)),
    "grid_sampler": SocketRule((U, F)),
    "ScatterElements": SocketRule((U, F, U)),
    "ScatterND": SocketRule((U, F, U)),
    "Where": SocketRule((U, F, F)),
    "RoiAlign": SocketRule((U, F, S)),
    "MMCVRoiAlign": SocketRule((U, F, S)),
    "NonMaxSuppression": SocketRule((U, F, S, S, S)),
    "ConstantOfShape": SocketRule((S,)),
    "Range": SocketRule((S, S, S)),
    "OneHot": SocketRule((S, S, S), (S,)),
    "Shape": SocketRule((U,), (S,)),
    "NonZero": SocketRule((U,), (F,)),
    **{
        t: SocketRule((U, U), (F,))
        for t in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor")
    },
}

# Corrected sockets: PPQ's, with Where's slots fixed (condition FP32, both data inputs
# quantized), Pad's constant value quantized with the data, and ONNX ops PPQ never listed.
FUSEKIT_SOCKETS: Mapping[str, SocketRule] = {
    **{k: v for k, v in PPQ_SOCKETS.items() if k not in ("grid_sampler", "MMCVRoiAlign")},
    "Where": SocketRule((F, U, U)),
    "Pad": SocketRule((U, S, U, S)),
    "BatchNormalization": SocketRule((U, F, F, F, F)),
    "LayerNormalization": SocketRule((U, F, F)),
    "Size": SocketRule((U,), (S,)),
    "GridSample": SocketRule((U, F)),
    "Upsample": SocketRule((U, S)),
    "ReduceMean": SocketRule((U, S)),
    "ReduceMax": SocketRule((U, S)),
    "ReduceSum": SocketRule((U, S)),
    "CumSum": SocketRule((U, S)),
}

PPQ_COMPUTING = frozenset(
    {"Conv", "Gemm", "ConvTranspose", "MatMul", "Attention", "PPQBiasFusedMatMul"}
)
PPQ_PASSIVE = frozenset(  # as Python evaluated PPQ's set: 'Dropout' 'Slice' -> 'DropoutSlice'
    {
        "DropoutSlice",
        "Flatten",
        "GlobalMaxPool",
        "Identity",
        "Interp",
        "MaxPool",
        "Pad",
        "Reshape",
        "Split",
        "Squeeze",
        "Transpose",
        "Unsqueeze",
    }
)
PPQ_ALIGNMENT = {
    "elementwise": frozenset({"Add", "Sub", "Sum"}),
    "concat": frozenset({"Concat"}),
    "pooling": frozenset({"AveragePool", "GlobalAveragePool"}),
    "resize": frozenset({"Resize"}),
}
PPQ_NON_ONNX = frozenset(
    {"Interp", "PPQBiasFusedMatMul", "DropoutSlice", "SoftPlus", "grid_sampler", "MMCVRoiAlign"}
)

_TRT_QUANT = frozenset(
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
        "Interp",
        "ReduceMean",
        "Transpose",
        "Slice",
        "Flatten",
        "HardSwish",
        "HardSigmoid",
        "MatMul",
        "Attention",
        "LayerNormalization",
        "Gelu",
        "PPQBiasFusedMatMul",
    ]
)
_ORT_QUANT = (
    _TRT_QUANT - {"Attention", "LayerNormalization", "Gelu", "PPQBiasFusedMatMul"}
) | PPQ_PASSIVE
_PPL_QUANT = frozenset(
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
        "Sigmoid",
        "ReduceMean",
    ]
)

_PPQ_TRT_WEIGHTS = {
    "Conv": QuantRule(SYM_PC, channel_axis=0, observer="minmax"),
    "ConvTranspose": QuantRule(SYM_PC, channel_axis=1, observer="minmax"),
    "Gemm": QuantRule(SYM_PC, channel_axis=0, observer="minmax"),
    "MatMul": QuantRule(SYM_PC, channel_axis=0, observer="minmax"),  # PPQ: the reduction axis (bug)
    "PPQBiasFusedMatMul": QuantRule(SYM_PC, channel_axis=0, observer="minmax"),
}
_PPQ_ORT_WEIGHTS = {
    "Conv": QuantRule(SYM_PC, channel_axis=0, observer="minmax"),
    "ConvTranspose": QuantRule(SYM_PC, channel_axis=1, observer="minmax"),
    "Gemm": QuantRule(SYM_PC, channel_axis=0, observer="minmax"),
}
_PPQ_ORT_BIAS = BiasRule(QuantState.FP32, QuantRule(SYM_PC, channel_axis=0, observer="minmax"))
_PPL_BIAS = BiasRule(
    QuantState.PASSIVE_INIT,
    QuantRule(
        SYM_PC,
        num_bits=32,
        quant_min=-(2**31 - 1),
        quant_max=2**31 - 1,
        channel_axis=0,
        observer="minmax",
    ),
)
_ALL_QUIRKS = frozenset(QUIRKS)


def _ppq(
    name: str,
    target: str,
    quant: frozenset[str],
    acts: Iterable[str],
    desc: str,
    weights: Mapping[str, QuantRule],
    bias: BiasRule,
    fp32_from: Mapping[str, int] | None = None,
    weight_always: Iterable[str] = (),
) -> Platform:
    acts = frozenset(acts)
    patterns = {p for p, flag in (("swish", "Swish"), ("mish", "Mish")) if flag in acts}
    return Platform(
        name=name,
        description=desc,
        quant_types=quant,
        computing_types=PPQ_COMPUTING,
        activation_types=acts,
        activation_patterns=patterns,
        passive_types=PPQ_PASSIVE,
        sockets=PPQ_SOCKETS,
        activation=QuantRule(SYM_PT, observer="percentile"),
        weights=weights,
        bias=bias,
        fp32_inputs_from=fp32_from or {},
        weight_always=frozenset(weight_always),
        alignment=PPQ_ALIGNMENT,
        quirks=_ALL_QUIRKS,
        non_onnx_types=PPQ_NON_ONNX,
        ppq_target=target,
    )


PPQ066_TRT_INT8 = _ppq(
    "ppq066_trt_int8",
    "TRT_INT8",
    _TRT_QUANT,
    ("Relu", "Clip", "Swish", "SoftPlus", "Sigmoid", "Gelu"),
    "PPQ 0.6.6 TensorRTQuantizer, reproduced exactly (typos and bugs included)",
    _PPQ_TRT_WEIGHTS,
    BiasRule(QuantState.FP32),
    {"LayerNormalization": 1, "Attention": 2},
)
PPQ066_ORT_INT8 = _ppq(
    "ppq066_ort_int8",
    "INT8",
    _ORT_QUANT,
    ("Relu", "Clip", "Sigmoid", "Swish", "Mish", "LeakyRelu"),
    "PPQ 0.6.6 OnnxruntimeQuantizer, reproduced exactly (typos and bugs included)",
    _PPQ_ORT_WEIGHTS,
    _PPQ_ORT_BIAS,
    weight_always=("Conv", "ConvTranspose", "Gemm"),  # PPQ: input 1, constant or not
)
PPQ066_ORT_INT8_SOFTPLUS_TANH = PPQ066_ORT_INT8.evolve(
    name="ppq066_ort_int8_softplus_tanh",
    quant_types=PPQ066_ORT_INT8.quant_types | {"Softplus", "Tanh"},
    description="PPQ 0.6.6 OnnxruntimeQuantizer with Softplus and Tanh quantable (so Mish fires)",
)
PPQ066_PPL_CUDA_INT8 = _ppq(
    "ppq066_ppl_cuda_int8",
    "PPL_CUDA_INT8",
    _PPL_QUANT,
    ("Relu", "Clip", "Sigmoid", "LeakyRelu"),
    "PPQ 0.6.6 PPLCUDAQuantizer, reproduced exactly (typos and bugs included)",
    {
        "Conv": _PPQ_TRT_WEIGHTS["Conv"],
        "ConvTranspose": _PPQ_TRT_WEIGHTS["ConvTranspose"],
        "Gemm": _PPQ_TRT_WEIGHTS["Gemm"],
    },
    _PPL_BIAS,
    weight_always=("Conv", "ConvTranspose", "Gemm"),  # PPQ: input 1, constant or not
)

# ----- corrected rule sets -------------------------------------------------------------------

FUSEKIT_PASSIVE = frozenset(
    {
        "MaxPool",
        "GlobalMaxPool",
        "Reshape",
        "Flatten",
        "Identity",
        "Dropout",
        "Slice",
        "Pad",
        "Split",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "DepthToSpace",
        "SpaceToDepth",
    }
)
_SINGLE_ACTS = frozenset(
    {
        "Relu",
        "Clip",
        "LeakyRelu",
        "PRelu",
        "Sigmoid",
        "Tanh",
        "Softplus",
        "Elu",
        "Selu",
        "HardSigmoid",
        "HardSwish",
        "Gelu",
        "Mish",
        "Swish",
    }
)
_PATTERNS = frozenset({"swish", "mish", "hardswish", "gelu"})
_COMMON_QUANT = frozenset(
    [
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "BatchNormalization",
        "Relu",
        "PRelu",
        "Clip",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "Softplus",
        "Elu",
        "Selu",
        "HardSigmoid",
        "HardSwish",
        "Gelu",
        "Mish",
        "Swish",
        "Erf",
        "Pad",
        "Resize",
        "MaxPool",
        "AveragePool",
        "GlobalMaxPool",
        "GlobalAveragePool",
        "Softmax",
        "Mul",
        "Add",
        "Sub",
        "Div",
        "Max",
        "Min",
        "Sum",
        "Concat",
        "ReduceMean",
        "Reshape",
        "Transpose",
        "Slice",
        "Flatten",
        "Split",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Dropout",
        "DepthToSpace",
        "SpaceToDepth",
    ]
)
_FK_WEIGHTS = {
    "Conv": QuantRule(SYM_PC, channel_axis=0, observer="minmax"),
    "ConvTranspose": QuantRule(SYM_PC, channel_axis=1, observer="minmax"),
    "Gemm": QuantRule(SYM_PC, channel_axis=0, observer="minmax"),
    "MatMul": QuantRule(SYM_PC, channel_axis=-1, observer="minmax"),  # output channels: last axis
}
_FK_ALIGNMENT = {
    "elementwise": frozenset({"Add", "Sub", "Sum"}),
    "concat": frozenset({"Concat"}),
    "pooling": frozenset({"AveragePool", "GlobalAveragePool"}),
    "resize": frozenset({"Resize"}),
}


def _fusekit(
    name: str,
    desc: str,
    quant: frozenset[str],
    acts: frozenset[str],
    patterns: frozenset[str],
    bias: BiasRule,
    target: str,
    weights: Mapping[str, QuantRule] = _FK_WEIGHTS,
) -> Platform:
    return Platform(
        name=name,
        description=desc,
        quant_types=quant,
        computing_types=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"}),
        activation_types=acts,
        activation_patterns=patterns,
        epilogue_types=frozenset({"BatchNormalization", "Add", "Sub", "Mul", "Div"}),
        passive_types=FUSEKIT_PASSIVE,
        passive_conditions={"Pad": "pad_constant_zero"},
        sockets=FUSEKIT_SOCKETS,
        activation=QuantRule(SYM_PT, observer="minmax"),
        weights=weights,
        bias=bias,
        fp32_inputs_from={"LayerNormalization": 1},
        alignment=_FK_ALIGNMENT,
        ppq_target=target,
    )


TRT_INT8 = _fusekit(
    "trt_int8",
    "TensorRT INT8 (explicit Q/DQ): fuses Conv/Gemm/MatMul with pointwise activations, "
    "passes data movers through at the input's scale",
    _COMMON_QUANT | {"LayerNormalization"},
    _SINGLE_ACTS,
    _PATTERNS,
    BiasRule(QuantState.FP32),
    "TRT_INT8",
)
# onnxruntime's CPU provider, as its QDQ optimizer really runs a model (docs/platforms.md has
# the sources and the experiments behind every line). It turns DequantizeLinear -> op ->
# QuantizeLinear node units into int8 kernels: QLinearConv, QLinearMatMul (or
# MatMulIntegerToFloat without a Q), QGemm, QLinearAdd/Mul, QLinearSigmoid/LeakyRelu/Softmax,
# QLinearConcat, QLinear(Global)AveragePool, QLinearWhere; it drops the Q/DQ around data movers
# whose input and output share parameters. Every other op runs in float between a DQ and a Q.
ORT_QUANT = frozenset(
    {
        # node units with an int8 kernel
        "Conv",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "Sigmoid",
        "LeakyRelu",
        "Softmax",
        "Concat",
        "GlobalAveragePool",
        "AveragePool",
        "Where",
        # removed before a QuantizeLinear whose zero point makes them redundant (fused below)
        "Relu",
        "Clip",
        # folded into the Conv/Gemm weights and bias at export (an epilogue)
        "BatchNormalization",
        # data movers: Q/DQ dropped when the input and output parameters are equal
        "MaxPool",
        "Resize",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Gather",
        "Expand",
        "Tile",
        "Split",
        "Identity",
        "Dropout",
        # not here: Pad, GlobalMaxPool, DepthToSpace, SpaceToDepth (onnxruntime 1.32 keeps
        # their Q/DQ and runs them in float: a point there rounds for nothing)
    }
)
ORT_PASSIVE = frozenset(
    {
        "MaxPool",
        "Reshape",
        "Flatten",
        "Identity",
        "Dropout",
        "Slice",
        "Split",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Gather",
        "Expand",
        "Tile",
    }
)
#: uint8 activations, zero point where the calibrated range puts it: a non-negative tensor
#: (a ReLU output) gets zero point 0 and all 256 levels, and onnxruntime drops a Relu/Clip
#: before a QuantizeLinear only when the zero point is the type's minimum.
ORT_ACTIVATION = QuantRule(ASYM_PT, quant_min=0, quant_max=255, observer="minmax")
ORT_INT8 = Platform(
    name="ort_int8",
    description="ONNX Runtime QDQ INT8 (CPU EP), as its QDQ optimizer runs it: node units "
    "DQ -> op -> Q for the ops with int8 kernels, Relu/Clip folded into QLinearConv through the "
    "zero point, uint8 asymmetric activations, int8 symmetric per-channel weights, int32 bias, "
    "BatchNorm folded into the weights at export, the tail after the last computing op float",
    quant_types=ORT_QUANT,
    computing_types=frozenset({"Conv", "Gemm", "MatMul"}),
    activation_types=frozenset({"Relu", "Clip"}),
    activation_patterns=frozenset(),
    epilogue_types=frozenset({"BatchNormalization"}),
    passive_types=ORT_PASSIVE,
    sockets=FUSEKIT_SOCKETS,
    activation=ORT_ACTIVATION,
    weights={k: _FK_WEIGHTS[k] for k in ("Conv", "Gemm", "MatMul")},
    bias=BiasRule(
        QuantState.PASSIVE_INIT,
        QuantRule(
            SYM_PC,
            num_bits=32,
            quant_min=-(2**31),
            quant_max=2**31 - 1,
            channel_axis=0,
            observer="minmax",
        ),
    ),
    fp32_inputs_from={"LayerNormalization": 1},
    # QLinearAdd/QLinearConcat/QLinearAveragePool take one scale per input and output: nothing
    # to align. Resize drops its Q/DQ only when input and output parameters are equal.
    alignment={"resize": frozenset({"Resize"})},
    ppq_target="ONNXRUNTIME",
    placement="node-unit",
)
PPL_CUDA_INT8 = _fusekit(
    "ppl_cuda_int8",
    "OpenPPL CUDA INT8: Conv/Gemm + Relu/Clip/Sigmoid/LeakyRelu fusion, 32-bit passive bias",
    _PPL_QUANT | {"Dropout", "Squeeze", "Unsqueeze", "Identity", "BatchNormalization"},
    frozenset({"Relu", "Clip", "Sigmoid", "LeakyRelu"}),
    frozenset(),
    _PPL_BIAS,
    "PPL_CUDA_INT8",
    {k: _FK_WEIGHTS[k] for k in ("Conv", "ConvTranspose", "Gemm")},
)

_REGISTRY: dict[str, Platform] = {}


def register_platform(platform: Platform, *, replace: bool = False) -> Platform:
    """Make ``platform`` available by name to :func:`get_platform` and :func:`init_plan`."""
    if not isinstance(platform, Platform):
        raise InvalidPlatform("register_platform needs a Platform value")
    if platform.name in _REGISTRY and not replace and _REGISTRY[platform.name] != platform:
        raise InvalidPlatform(f"a different platform named {platform.name!r} is already registered")
    _REGISTRY[platform.name] = platform
    return platform


for _p in (
    TRT_INT8,
    ORT_INT8,
    PPL_CUDA_INT8,
    PPQ066_TRT_INT8,
    PPQ066_ORT_INT8,
    PPQ066_ORT_INT8_SOFTPLUS_TANH,
    PPQ066_PPL_CUDA_INT8,
):
    register_platform(_p)


from ._ppq066 import PPQ066_MORE  # noqa: E402 (it builds on the definitions above)

for _p in PPQ066_MORE:
    register_platform(_p)

from ._vendor import VENDOR_PLATFORMS  # noqa: E402 (RKNN, SNPE, OpenVINO, NCNN, TRT FP8)

for _p in VENDOR_PLATFORMS:
    register_platform(_p)


def platforms() -> tuple[str, ...]:
    """Names of the registered platforms, corrected ones first."""
    return tuple(sorted(_REGISTRY, key=lambda n: (n.startswith("ppq"), n)))


def get_platform(platform: Platform | str) -> Platform:
    """The registered platform called ``platform`` (a Platform value is returned as is)."""
    if isinstance(platform, Platform):
        return platform
    try:
        return _REGISTRY[platform]
    except KeyError:
        raise UnknownPlatform(str(platform), platforms()) from None


# --------------------------------------------------------------------------------------------
# rule files


_FIELDS = {f.name: f for f in attrs.fields(Platform)}
_SOCKET = frozenset({"U", "FP32", "SOI"})


def _rule_from(d: Any, where: str) -> QuantRule:
    if not isinstance(d, Mapping):
        raise InvalidPlatform(f"{where}: expected a table of rule fields")
    allowed = {f.name for f in attrs.fields(QuantRule)}
    extra = set(d) - allowed
    if extra:
        raise InvalidPlatform(
            f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}"
        )
    kw = dict(d)
    try:
        if "policy" in kw:
            kw["policy"] = QuantPolicy.parse(str(kw["policy"]))
        if "rounding" in kw:
            kw["rounding"] = RoundingPolicy[str(kw["rounding"])]
    except KeyError as e:
        raise InvalidPlatform(f"{where}: unknown rounding {e.args[0]!r}") from None
    except Exception as e:
        raise InvalidPlatform(f"{where}: {e}") from None
    for k, types in _RULE_TYPES.items():
        if k in kw and (isinstance(kw[k], bool) or not isinstance(kw[k], types)):
            raise InvalidPlatform(f"{where}: {k} has the wrong type ({type(kw[k]).__name__})")
    rule = QuantRule(**kw)
    try:
        rule.config()  # the config validators (bits, exponent, axis vs policy) run here
    except (TypeError, ValueError) as e:
        raise InvalidPlatform(f"{where}: {e}") from None
    return rule


_RULE_TYPES: dict[str, Any] = {
    "num_bits": int,
    "exponent_bits": int,
    "quant_min": (int, float),
    "quant_max": (int, float),
    "observer": str,
    "channel_axis": (int, type(None)),
}


def _names(value: Any, where: str) -> frozenset[str]:
    """A list of op-type names (strings) from rule-file data."""
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):
        raise InvalidPlatform(f"{where}: expected a list of names")
    items = list(value)
    if not all(isinstance(x, str) for x in items):
        raise InvalidPlatform(f"{where}: expected a list of names (strings)")
    return frozenset(items)


def platform_from_dict(d: Mapping[str, Any], *, source: str = "platform") -> Platform:
    """Build a :class:`Platform` from plain data (what JSON/TOML give), validating every field.

    Unknown fields and op types that are neither ONNX operators nor listed in
    ``non_onnx_types`` raise :class:`~fusekit.errors.InvalidPlatform` naming them. A ``"base"``
    key names a registered platform to start from; the other keys override its fields.
    """
    if not isinstance(d, Mapping):
        raise InvalidPlatform(f"{source}: expected a table/object at the top level")
    data = dict(d)
    base_name = data.pop("base", None)
    extra = set(data) - set(_FIELDS)
    if extra:
        raise InvalidPlatform(
            f"{source}: unknown field(s) {sorted(extra)}; allowed: {sorted(_FIELDS)} and 'base'"
        )
    if "name" not in data:
        raise InvalidPlatform(f"{source}: the field 'name' is required")
    kw: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{source}: field {key!r}"
        if key in ("name", "description", "ppq_target", "placement"):
            if not isinstance(value, str):
                raise InvalidPlatform(f"{where}: expected a string")
            kw[key] = value
        elif key in ("activation",):
            kw[key] = _rule_from(value, where)
        elif key in ("weights", "conditional_weights"):
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table op type -> rule")
            kw[key] = {k: _rule_from(v, f"{where}[{k!r}]") for k, v in value.items()}
        elif key == "bias":
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table")
            b = dict(value)
            try:
                state = QuantState[b.pop("state", "FP32")]
                vis = Visibility[b.pop("visibility", "EXPORT_WHEN_ACTIVE")]
            except (KeyError, TypeError) as e:
                raise InvalidPlatform(f"{where}: unknown state or visibility ({e})") from None
            kw[key] = BiasRule(state, _rule_from(b, where), vis)
        elif key == "sockets":
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table op type -> {{inputs, outputs}}")
            socks = {}
            for t, s in value.items():
                raw_ins = s.get("inputs", ()) if isinstance(s, Mapping) else s
                raw_outs = s.get("outputs", ()) if isinstance(s, Mapping) else ()
                if not all(isinstance(x, (list, tuple)) for x in (raw_ins, raw_outs)):
                    raise InvalidPlatform(f"{where}[{t!r}]: expected lists of U, FP32 or SOI")
                ins, outs = tuple(raw_ins), tuple(raw_outs)
                bad = [x for x in (*ins, *outs) if not isinstance(x, str) or x not in _SOCKET]
                if bad:
                    raise InvalidPlatform(
                        f"{where}[{t!r}]: entries must be U, FP32 or SOI, got {bad}"
                    )
                socks[t] = SocketRule(ins, outs)
            kw[key] = socks
        elif key in (
            "passive_conditions",
            "fp32_inputs_from",
            "weight_conditions",
            "passive_inputs_from",
        ):
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table")
            want: Any = str if key.endswith("_conditions") else int
            if any(isinstance(v, bool) or not isinstance(v, want) for v in value.values()):
                what = "condition names" if want is str else "input indices"
                raise InvalidPlatform(f"{where}: expected {what} as values")
            kw[key] = dict(value)
        elif key == "alignment":
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table")
            unknown = set(value) - {"elementwise", "concat", "pooling", "resize"}
            if unknown:
                raise InvalidPlatform(f"{where}: unknown alignment group(s) {sorted(unknown)}")
            kw[key] = {k: _names(v, f"{where}[{k!r}]") for k, v in value.items()}
        else:
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise InvalidPlatform(f"{where}: expected a list of names")
            kw[key] = frozenset(str(x) for x in value)
    try:
        if base_name is not None:
            p = get_platform(str(base_name)).evolve(**kw)
        else:
            p = Platform(**kw)
    except (TypeError, ValueError) as e:
        raise InvalidPlatform(f"{source}: {e}") from None
    unknown_ops = unknown_op_types(p)
    if unknown_ops:
        raise InvalidPlatform(
            f"{source}: unknown op type(s) {sorted(unknown_ops)}: not ONNX operators; "
            "list deliberate custom names in 'non_onnx_types'"
        )
    return p


def unknown_op_types(platform: Platform) -> frozenset[str]:
    """Op types the rule set names that are neither ONNX operators nor declared non-ONNX."""
    from ._onnx_registry import is_onnx_op

    return frozenset(
        t
        for t in platform.op_types()
        if "::" not in t and not is_onnx_op(t) and t not in platform.non_onnx_types
    )


def platform_to_dict(p: Platform) -> dict[str, Any]:
    """Plain data for JSON (round trips through :func:`platform_from_dict`)."""

    def rule(r: QuantRule) -> dict[str, Any]:
        return {
            "policy": str(r.policy),
            "num_bits": r.num_bits,
            "quant_min": r.quant_min,
            "quant_max": r.quant_max,
            "rounding": r.rounding.name,
            "observer": r.observer,
            "channel_axis": r.channel_axis,
            "exponent_bits": r.exponent_bits,
        }

    return {
        "name": p.name,
        "description": p.description,
        "ppq_target": p.ppq_target,
        "placement": p.placement,
        "quant_types": sorted(p.quant_types),
        "computing_types": sorted(p.computing_types),
        "activation_types": sorted(p.activation_types),
        "activation_patterns": sorted(p.activation_patterns),
        "epilogue_types": sorted(p.epilogue_types),
        "passive_types": sorted(p.passive_types),
        "passive_conditions": dict(p.passive_conditions),
        "sockets": {
            k: {"inputs": list(v.inputs), "outputs": list(v.outputs)}
            for k, v in sorted(p.sockets.items())
        },
        "activation": rule(p.activation),
        "weights": {k: rule(v) for k, v in sorted(p.weights.items())},
        "bias_types": sorted(p.bias_types),
        "bias": {
            "state": p.bias.state.name,
            "visibility": p.bias.visibility.name,
            **rule(p.bias.rule),
        },
        "fp32_inputs_from": dict(p.fp32_inputs_from),
        "weight_always": sorted(p.weight_always),
        "weight_conditions": dict(p.weight_conditions),
        "conditional_weights": {k: rule(v) for k, v in sorted(p.conditional_weights.items())},
        "passive_inputs_from": dict(p.passive_inputs_from),
        "linear_activations": sorted(p.linear_activations),
        "alignment": {k: sorted(v) for k, v in sorted(p.alignment.items())},
        "quirks": sorted(p.quirks),
        "non_onnx_types": sorted(p.non_onnx_types),
    }


def load_platform(path: str | Path, *, register: bool = False) -> Platform:
    """Read a rule set from a ``.json`` or ``.toml`` file (see :func:`platform_from_dict`)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidPlatform(f"{p}: no such file")
    text = p.read_bytes()
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib  # type: ignore[import-not-found,unused-ignore]
            except ModuleNotFoundError:  # Python 3.10
                raise InvalidPlatform(f"{p}: TOML rule files need Python 3.11+; use JSON") from None
            data = tomllib.loads(text.decode("utf-8"))
        else:
            data = json.loads(text)
    except InvalidPlatform:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidPlatform(f"{p}: not valid {p.suffix.lstrip('.') or 'JSON'}: {e}") from None
    platform = platform_from_dict(data, source=str(p))
    if register:
        register_platform(platform, replace=True)
    return platform


# --------------------------------------------------------------------------------------------
# dispatch and init_plan


class _Walker:
    """PPQ's ``SearchableGraph.opset_matching`` over integer op ids (memoised, iterative)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.idx = graph.index
        idx = self.idx
        n_ops = len(idx.op_names)
        self.down: list[list[int]] = [[] for _ in range(n_ops)]
        self.up: list[list[int]] = [[] for _ in range(n_ops)]
        self.in0_src: list[int] = [-1] * n_ops
        self.inlast_src: list[int] = [-1] * n_ops
        for name in graph.order:
            oid = idx.op_id[name]
            for k, sid in enumerate(idx.input_sids(oid)):
                tid = idx.slot_tensor[sid]
                p = idx.producer[tid] if tid >= 0 else -1
                src = idx.slot_op[p] if p >= 0 else -1
                if src >= 0:
                    self.up[oid].append(src)
                if k == 0:
                    self.in0_src[oid] = src
                self.inlast_src[oid] = src
            for sid in idx.output_sids(oid):
                tid = idx.slot_tensor[sid]
                if tid >= 0:
                    self.down[oid].extend(idx.slot_op[c] for c in idx.consumers[tid])
        self.types = list(graph.arrays().op_types)  # rule types: domain-qualified off ONNX
        self.boundary = [
            idx.op_names[i] is not None and (not self.up[i] or not self.down[i])
            for i in range(n_ops)
        ]

    def opset(self, starts: Iterable[int], rp: Any, ep: Any, down: bool) -> set[int]:
        """The union over ``starts`` of PPQ's memoised ``_opset_matching``, in linear time.

        PPQ (and fusekit's first version) memoised, per op, the *set* of ops its walk returns
        and unioned those sets up the graph: quadratic time and memory (9.5 s and 2.7 GB at 10k
        ops). The same set is: the ops reachable from a start along relayed edges (``rp(x, y)``
        with ``y`` not an end point) through ops that can still reach an end point that way,
        plus the end points those ops point at. Two linear walks compute it: backwards from the
        end points (which ops can reach one), then forwards from the starts. Without end points
        (``ep is None``) every op qualifies and the walk is plain reachability.
        """
        nxt = self.down if down else self.up
        prev = self.up if down else self.down
        n = len(nxt)
        if ep is None:
            end = [False] * n
            good = [True] * n
        else:
            end = [bool(ep(y)) for y in range(n)]
            good = [False] * n
            stack = [x for x in range(n) if any(end[y] for y in nxt[x])]
            for x in stack:
                good[x] = True
            while stack:
                y = stack.pop()
                if end[y]:
                    continue  # an end point is never relayed through
                for x in prev[y]:
                    if not good[x] and rp(x, y):
                        good[x] = True
                        stack.append(x)
        out: set[int] = set()
        seen = [False] * n
        stack = []
        for s in starts:
            if good[s] and not seen[s]:
                seen[s] = True
                stack.append(s)
        while stack:
            x = stack.pop()
            out.add(x)
            for y in nxt[x]:
                if end[y]:
                    out.add(y)
                elif not seen[y] and good[y] and rp(x, y):
                    seen[y] = True
                    stack.append(y)
        return out


def _ends(
    soi: frozenset[int],
    quant: set[int],
    boundary: list[bool],
    types: list[str],
    computing: frozenset[str],
) -> Any:
    return lambda y: y in soi or y in quant or boundary[y] or types[y] in computing


_INT_CALC = frozenset(
    {
        "Reshape",
        "Slice",
        "Gather",
        "Pad",
        "Resize",
        "Split",
        "TopK",
        "Tile",
        "Expand",
        "RoiAlign",
        "MMCVRoiAlign",
    }
)


def ppq_conservative_dispatch(graph: Graph, platform: Platform) -> dict[int, str]:
    """PPQ 0.6.6's ``ConservativeDispatcher``: op id -> platform name, ``"FP32"`` or ``"SOI"``.

    Quantized region: ops reachable downstream from a computing op through quantable ops.
    Shape-or-index region: ops feeding SOI/FP32 sockets and what flows into/out of them.
    Relu/Clip/Shape/TopK/NMS then follow the platform of their input's producer.
    """
    w = _Walker(graph)
    idx = w.idx
    types = w.types
    quant_types = platform.quant_types
    computing = platform.computing_types
    live = [i for i, n in enumerate(idx.op_names) if n is not None]
    # receivers: producers of any FP32/SOI socket input
    receivers: set[int] = set()
    for oid in live:
        sock = platform.socket(types[oid])
        if not sock.inputs:
            continue
        for k, sid in enumerate(idx.input_sids(oid)):
            if k < len(sock.inputs) and sock.inputs[k] in ("SOI", "FP32"):
                tid = idx.slot_tensor[sid]
                p = idx.producer[tid] if tid >= 0 else -1
                if p >= 0:
                    receivers.add(idx.slot_op[p])
    generators = {
        o
        for o in live
        if types[o] in {"Shape", "NonMaxSuppression", "Constant", "ConstantOfShape", "TopK"}
    }

    def value_tracing(x: int, y: int) -> bool:
        t = types[y]
        if t in _INT_CALC:
            return w.in0_src[y] == x
        if t == "ScatterND":
            return w.in0_src[y] == x or w.inlast_src[y] == x
        return t not in ("ConstantOfShape", "Shape", "NonMaxSuppression")

    def reverse_tracing(x: int, y: int) -> bool:
        ty, tx = types[y], types[x]
        if ty in ("Shape", "TopK"):
            return False
        if tx in _INT_CALC:
            return y == w.in0_src[x]
        if tx == "ScatterND":
            return y == w.in0_src[x] or y == w.inlast_src[x]
        return tx not in ("NonMaxSuppression", "Shape")

    boundary = w.boundary
    comp = [o for o in live if types[o] in computing]
    quant = w.opset(comp, value_tracing, lambda y: types[y] not in quant_types or boundary[y], True)
    quant = {o for o in quant if types[o] in quant_types}
    ext = w.opset(
        comp,
        value_tracing,
        lambda y: types[y] in ("Shape", "TopK", "NonMaxSuppression") or boundary[y],
        True,
    )
    fwd = w.opset(
        [o for o in live if o in generators and types[o] != "Constant"],
        value_tracing,
        lambda y: y in receivers or y in quant or boundary[y] or types[y] in computing,
        True,
    )
    soi = set(receivers) | {o for o in fwd if not (types[o] in computing or o in quant)}
    while True:
        starts = [o for o in live if o in soi and types[o] != "Shape"]
        bwd = w.opset(
            starts, reverse_tracing, _ends(frozenset(soi), quant, boundary, types, computing), False
        )
        bwd = {o for o in bwd if not (types[o] in computing or o in quant)}
        if bwd <= soi:
            break
        soi |= bwd
    table: dict[int, str] = {}
    for o in live:
        if o in soi and o not in ext:
            table[o] = "SOI"
        elif o in quant:
            table[o] = platform.name
        else:
            table[o] = "FP32"
    for name in graph.order:
        o = idx.op_id[name]
        t = types[o]
        if t in ("Shape", "TopK", "NonMaxSuppression"):
            src = w.in0_src[o]
            table[o] = table[src] if src >= 0 else "FP32"
        if t in platform.linear_activations:
            src = w.in0_src[o]
            if src >= 0:
                table[o] = table[src]
    # PPQ dispatches the region as UNSPECIFIED; its quantizer then quantizes only listed types
    for o, plat in table.items():
        if plat == platform.name and types[o] not in quant_types:
            table[o] = "FP32"
    return table


def all_dispatch(
    graph: Graph, platform: Platform, *, quantize_tail: bool = False
) -> dict[int, str]:
    """fusekit's default dispatch: the ops of quantized types that compute float data next to
    a computing op.

    An op is left FP32 when an output's element type (declared or inferred by
    :func:`fusekit.dtypes.elem_types`) is not floating point; when every consumer of its outputs
    is a never-quantized (FP32/SOI) socket or another such op (the shape-computing sub-graph
    Shape -> Gather -> Concat -> Reshape.shape, whose values must never be rounded); or when it
    is not connected, through other such ops, to a computing op (Conv, Gemm, MatMul...).
    With a ``"node-unit"`` placement, the tail after the last computing op is left FP32 too
    unless ``quantize_tail`` is set, and so is every op that reaches a computing op only
    through float ops (see :func:`_drop_tail`).
    """
    # Reads the graph's plain-list arrays and plain dicts of the rule set: on a 100k-op graph
    # the PMap lookups of the straightforward version cost more than the dispatch itself.
    ar = graph.arrays()
    op_types, base, n_in, n_out = ar.op_types, ar.slot_base, ar.n_in, ar.n_out
    st, cons, slot_op, is_output = ar.slot_tensor, ar.consumers, ar.slot_op, ar.is_output
    prod = ar.producer
    quant_types = platform.quant_types
    # op type -> input rules, for the types with a never-quantized input
    special = {t: r.inputs for t, r in platform.sockets.items() if any(x != "U" for x in r.inputs)}
    # Only an op feeding a never-quantized socket, or a producer of a shape-only op, can be
    # shape-only: start from the first and add the second on the way (consumers come later in
    # the order, so the reverse walk decides them first), and skip every other op.
    maybe: set[int] = set()
    for t, rules in special.items():
        for coid in ar.by_type.get(t, ()):
            for k in range(min(len(rules), n_in[coid])):
                tid = st[base[coid] + k]
                if rules[k] != "U" and tid >= 0 and prod[tid] >= 0:
                    maybe.add(slot_op[prod[tid]])
    shape_only = [False] * len(op_types)
    for oid in reversed(ar.order):
        if oid not in maybe:
            continue
        any_use = False
        all_shape = True
        b = base[oid] + n_in[oid]
        for sid in range(b, b + n_out[oid]):
            tid = st[sid]
            if tid < 0:
                continue
            if is_output[tid]:
                all_shape = False
            for c in cons[tid]:
                any_use = True
                coid = slot_op[c]
                if shape_only[coid]:
                    continue
                row = special.get(op_types[coid])
                k = c - base[coid]
                if row is None or k >= len(row) or row[k] == "U":
                    all_shape = False
        if any_use and all_shape:
            shape_only[oid] = True
            for sid in range(base[oid], base[oid] + n_in[oid]):
                tid = st[sid]
                if tid >= 0 and prod[tid] >= 0:
                    maybe.add(slot_op[prod[tid]])
    not_float = _non_float(graph)
    name = platform.name
    computing = platform.computing_types
    const_op = ar.const_op
    candidate = [False] * len(op_types)
    for oid in ar.order:
        if op_types[oid] not in quant_types or shape_only[oid] or const_op[oid]:
            continue  # ops that fold to constants are computed once, never quantized
        b = base[oid] + n_in[oid]
        for sid in range(b, b + n_out[oid]):
            tid = st[sid]
            if tid >= 0 and not_float[tid]:
                break
        else:
            candidate[oid] = True
    # Keep only the regions of candidate ops connected to a computing op: an Add alone between a
    # float Pow and a float Sqrt gains nothing from int8 (no int8 kernel reads or writes it) and
    # costs two requantizations (4 dB on silero_vad's STFT magnitude). A walk over candidate
    # edges (both directions) from the computing ops marks the regions kept.
    keep = [False] * len(op_types)
    stack = [o for o in ar.order if candidate[o] and op_types[o] in computing]
    for o in stack:
        keep[o] = True
    while stack:
        o = stack.pop()
        b = base[o]
        for sid in range(b, b + n_in[o]):
            tid = st[sid]
            if tid >= 0 and prod[tid] >= 0:
                src = slot_op[prod[tid]]
                if candidate[src] and not keep[src]:
                    keep[src] = True
                    stack.append(src)
        for sid in range(b + n_in[o], b + n_in[o] + n_out[o]):
            tid = st[sid]
            if tid >= 0:
                for c in cons[tid]:
                    dst = slot_op[c]
                    if candidate[dst] and not keep[dst]:
                        keep[dst] = True
                        stack.append(dst)
    if platform.placement == "node-unit" and not quantize_tail:
        _drop_tail(ar, computing, platform.epilogue_types | platform.activation_types, keep)
    return {oid: name if keep[oid] else "FP32" for oid in ar.order}


def _drop_tail(
    ar: Any, computing: frozenset[str], fusable: frozenset[str], keep: list[bool]
) -> None:
    """Leave float every op from which no quantized computing op is reachable through
    quantized ops (the tail, and the ops that feed only float ops).

    After the last Conv/Gemm/MatMul of a path no int8 kernel reads the values any more, so a
    quantization point there only rounds what the user gets: on YOLOv8 the final Concat shared
    one scale between box pixels and class scores, and every score rounded to 0. The computing
    op's own output keeps its point (onnxruntime's QLinearConv needs its QuantizeLinear).
    The same holds in front of an op the rule set leaves float: a LeakyRelu whose only reader
    is a ConvTranspose would hand it a DequantizeLinear output, and onnxruntime then quantizes
    the ConvTranspose's float weights itself and still runs it in float.
    An epilogue or activation (``fusable``) right after a kept computing op stays: it belongs
    to that op's int8 kernel (a BatchNormalization folded into the Conv, a Relu dropped by the
    zero point) and the value leaves int8 after it.
    """
    op_types, base, n_in, n_out = ar.op_types, ar.slot_base, ar.n_in, ar.n_out
    st, cons, slot_op, prod = ar.slot_tensor, ar.consumers, ar.slot_op, ar.producer
    attached = [False] * len(op_types)  # fused onto a kept computing op (forward order)
    for oid in ar.order:
        if not keep[oid] or op_types[oid] not in fusable or n_in[oid] == 0:
            continue
        tid = st[base[oid]]
        if tid >= 0 and prod[tid] >= 0:
            src = slot_op[prod[tid]]
            attached[oid] = keep[src] and (op_types[src] in computing or attached[src])
    feeds = [False] * len(op_types)  # a kept computing op is reachable through kept ops
    reaches = [False] * len(op_types)  # a computing op is reachable at all (not the tail)
    for oid in reversed(ar.order):
        b = base[oid] + n_in[oid]
        hit = far = False
        for sid in range(b, b + n_out[oid]):
            tid = st[sid]
            if tid < 0:
                continue
            for c in cons[tid]:
                co = slot_op[c]
                comp = op_types[co] in computing
                far = far or reaches[co] or comp
                # only through quantized ops: a float op in between (ConvTranspose, LSTM,
                # Sum) reads float values whatever follows it
                if keep[co] and (feeds[co] or comp):
                    hit = True
        feeds[oid], reaches[oid] = hit, far
        if keep[oid] and not hit and op_types[oid] not in computing:
            keep[oid] = attached[oid] and far


def _non_float(graph: Graph) -> list[bool]:
    """Per tensor id: is its element type known and not floating point? (cached per graph)"""
    memo = graph.arrays().memo
    hit: list[bool] | None = memo.get("non_float")
    if hit is None:
        hit = memo["non_float"] = [et not in FLOAT_TYPES for et in tensor_elem_types(graph)]
    return hit


@without_gc
def init_plan(
    graph: Graph,
    platform: Platform | str,
    dispatch: str | Mapping[str, str | None] = "all",
    *,
    quantize_tail: bool = False,
) -> QuantPlan:
    """Create the per-slot configs of ``graph`` for ``platform``.

    ``dispatch`` chooses which ops are quantized: ``"all"`` (every op of a type the platform
    quantizes, except shape computations), ``"ppq-conservative"`` (PPQ 0.6.6's conservative
    dispatcher, for parity) or an explicit mapping op name -> platform name (None or ``"FP32"``
    to leave an op unquantized); ops the mapping omits follow ``"all"``.

    With a ``"node-unit"`` rule set (``ort_int8``) the ops after the last computing op, up to
    the graph outputs, stay FP32; ``quantize_tail=True`` quantizes them like the rest.

    Slot states follow the platform's rules: sockets that are never quantized start FP32, the
    bias follows the bias rule, constant weights of computing ops get the weight rule, and every
    other slot gets the activation rule in state INITIAL.
    """
    p = get_platform(platform)
    idx = graph.index
    if isinstance(dispatch, str):
        if dispatch == "all":
            table = all_dispatch(graph, p, quantize_tail=quantize_tail)
        elif dispatch == "ppq-conservative":
            table = ppq_conservative_dispatch(graph, p)
        else:
            raise InvalidPlatform(
                f"unknown dispatch {dispatch!r}: use 'all', 'ppq-conservative' or a mapping"
            )
    else:
        table = all_dispatch(graph, p, quantize_tail=quantize_tail)
        for name, plat in dispatch.items():
            oid = idx.op_id.get(name)
            if oid is None:
                raise InvalidPlatform(f"dispatch names op {name!r}, which the graph does not have")
            table[oid] = "FP32" if plat is None else str(plat)
    plan = _build_plan(graph, p, table)
    refuse_other_floats(graph, plan)
    return plan


_OTHER_FLOATS = {10: "float16", 11: "double", 16: "bfloat16"}


def refuse_other_floats(graph: Graph, plan: QuantPlan) -> None:
    """Refuse a plan that would quantize a float16, bfloat16 or double tensor.

    fusekit's scales, export and ranges are float32 (QuantizeLinear with a float32 scale reads
    a float32 tensor); 0.1 planned such tensors, exported them unquantized and still wrote
    their INT8 ranges and counted them as quantized. Refusing keeps plan, export, ranges and
    summary in agreement. One scan of the tensor types; the slots are walked only when some
    tensor has such a type.
    """
    types = tensor_elem_types(graph)
    other = _OTHER_FLOATS.keys()
    if not any(t in other for t in types):  # the common case: one scan of a list of ints
        return
    ar = graph.arrays()
    idx = graph.index
    configs, st = plan.configs, ar.slot_tensor
    found: dict[str, tuple[str, str]] = {}
    for oid, platform in enumerate(plan.dispatch):
        if platform is None:
            continue
        for sid in range(ar.slot_base[oid], ar.slot_base[oid] + ar.n_in[oid] + ar.n_out[oid]):
            cfg, tid = configs[sid], st[sid]
            if cfg is None or tid < 0 or cfg.state == QuantState.FP32:
                continue
            kind = _OTHER_FLOATS.get(types[tid])
            if kind is not None and idx.tensor_names[tid] not in found:
                found[idx.tensor_names[tid]] = (kind, idx.op_names[oid])
    if found:
        name, (kind, op) = next(iter(found.items()))
        kinds = ", ".join(sorted({k for k, _ in found.values()}))
        raise UnsupportedModel(
            f"{graph.name or 'model'}: {len(found)} tensor(s) to quantize are {kinds}, not "
            f"float32 (first: {name!r} of op {op!r}, {kind}); fusekit quantizes float32 "
            "networks: convert the model to float32 first, or leave those ops unquantized "
            "with an explicit dispatch"
        )


def _build_plan(graph: Graph, p: Platform, table: Mapping[int, str]) -> QuantPlan:
    """The configs of every slot of the dispatched ops (see :func:`init_plan`).

    The slots of every op of one (type, arity) get the same configs, except a weight that may
    or may not be a constant, so each such op copies a template built once by
    :func:`_slot_template`: slots share config objects, and a 100k-op graph costs a list slice
    per op instead of a rule evaluation per slot.
    """
    ar = graph.arrays()
    n_slots = len(ar.slot_op)
    configs: list[TensorQuantConfig | None] = [None] * n_slots
    dispatch: list[str | None] = [None] * len(ar.op_names)
    act = p.activation.config()
    act_fp32 = p.activation.config(QuantState.FP32)
    bias_cfg = p.bias.rule.config(p.bias.state)
    if p.bias.visibility != Visibility.EXPORT_WHEN_ACTIVE:
        bias_cfg = bias_cfg.with_visibility(p.bias.visibility)
    weight_cfgs: dict[tuple[str, int], TensorQuantConfig] = {}
    inits = graph.initializers
    st, is_const, names = ar.slot_tensor, ar.is_const, ar.tensor_names
    op_types, base, n_in, n_out = ar.op_types, ar.slot_base, ar.n_in, ar.n_out
    weights = dict(p.weights)
    templates: dict[tuple[str, int, int], tuple[list[TensorQuantConfig], bool]] = {}
    # fusekit's rule sets never quantize a slot on integer/bool data; PPQ's quantize what the
    # quantizer's rules say, whatever the data type
    not_float = _non_float(graph) if not p.quirks else None
    ops, op_names = graph.ops, ar.op_names
    always = p.weight_always
    if p.has_quirk("weight_parameter_only"):
        # PPQ's parameters: initializers and Constant outputs, not tensors computed from them
        is_init, prod, slot_op = ar.is_init, ar.producer, ar.slot_op

        def is_param(tid: int) -> bool:
            if is_init[tid]:
                return True
            src = prod[tid]
            return src >= 0 and op_types[slot_op[src]] == "Constant"

    else:

        def is_param(tid: int) -> bool:
            return is_const[tid]

    for oid, plat in table.items():
        if plat in ("FP32", "SOI"):
            continue
        dispatch[oid] = plat
        t = op_types[oid]
        ni, no = n_in[oid], n_out[oid]
        key = (t, ni, no)
        tpl = templates.get(key)
        if tpl is None:
            tpl = templates[key] = _slot_template(p, t, ni, no, act, act_fp32, bias_cfg)
        cfgs, weight_slot = tpl
        b = base[oid]
        configs[b : b + ni + no] = cfgs
        if weight_slot:
            tid = st[b + 1]
            if tid >= 0 and (t in always or is_param(tid)):
                cond = p.weight_conditions.get(t)
                wr = weights[t]
                if cond is not None and _weight_condition(cond, ops[op_names[oid]]):
                    wr = p.conditional_weights[t]
                    rank = -3  # a cache key of its own; the axis is the rule's
                elif wr.channel_axis is None or wr.channel_axis >= 0:
                    rank = 0
                else:  # the axis is relative to the weight's rank
                    init = inits.get(names[tid])
                    rank = len(init.dims) if init is not None else 2
                if t == "Gemm" and not p.quirks and wr.policy.per_channel:
                    # output channels are the rows of B only when transB=1 (PPQ: always axis 0)
                    trans_b = ops[op_names[oid]].attributes.get("transB", 0)
                    rank = -1 if trans_b else -2
                cfg = weight_cfgs.get((t, rank))
                if cfg is None:
                    if rank == -1:
                        axis: int | None = 0
                    elif rank == -2:
                        axis = 1
                    elif rank == -3:
                        axis = wr.channel_axis
                    else:
                        axis = (
                            rank + wr.channel_axis if rank and wr.channel_axis is not None else None
                        )
                    cfg = weight_cfgs[(t, rank)] = wr.config(axis=axis)
                configs[b + 1] = cfg
        if not_float is not None:
            for sid in range(b, b + ni + no):
                if st[sid] >= 0 and not_float[st[sid]]:
                    configs[sid] = act_fp32
    if p.placement == "computing-input":
        _computing_inputs_only(ar, p, configs, dispatch, act_fp32)
    return QuantPlan(graph, pvector(configs), pvector([NO_LINK] * n_slots), pvector(dispatch))


def _weight_condition(cond: str, op: Op) -> bool:
    """Does ``op`` meet the named precondition (see :data:`WEIGHT_CONDITIONS`)?"""
    if cond == "kernel3_s1_d1_g1":
        a = op.attributes
        kernel = tuple(a.get("kernel_shape", ()))
        return (
            bool(kernel)
            and all(k == 3 for k in kernel)
            and all(s == 1 for s in a.get("strides", ()))
            and all(d == 1 for d in a.get("dilations", ()))
            and a.get("group", 1) == 1
        )
    raise InvalidPlatform(f"unknown weight condition {cond!r}")  # pragma: no cover (validated)


def _computing_inputs_only(
    ar: Any,
    p: Platform,
    configs: list[TensorQuantConfig | None],
    dispatch: list[str | None],
    act_fp32: TensorQuantConfig,
) -> None:
    """The computing-input style: points only on the inputs of computing ops and residual Adds.

    NVIDIA's recommendation for TensorRT explicit quantization (and what ModelOpt and NNCF
    write): the kernel decides its own output precision, so outputs carry no point; a residual
    Add (two produced inputs) keeps Q/DQ on both inputs so that TensorRT can fuse it into the
    convolution before it. Every other op is left unquantized.
    """
    st, is_const, types = ar.slot_tensor, ar.is_const, ar.op_types
    base, n_in, n_out = ar.slot_base, ar.n_in, ar.n_out
    computing = p.computing_types
    for oid, plat in enumerate(dispatch):
        if plat is None:
            continue
        b, ni, no = base[oid], n_in[oid], n_out[oid]
        residual = (
            types[oid] == "Add"
            and ni == 2
            and all(st[s] >= 0 and not is_const[st[s]] for s in range(b, b + 2))
        )
        if types[oid] in computing or residual:
            for s in range(b + ni, b + ni + no):
                if configs[s] is not None:
                    configs[s] = act_fp32
            continue
        dispatch[oid] = None
        for s in range(b, b + ni + no):
            configs[s] = None


def _slot_template(
    p: Platform,
    t: str,
    n_in: int,
    n_out: int,
    act: TensorQuantConfig,
    act_fp32: TensorQuantConfig,
    bias_cfg: TensorQuantConfig,
) -> tuple[list[TensorQuantConfig], bool]:
    """The configs of an op of type ``t`` with this arity, and whether input 1 is a weight slot.

    Sockets that are never quantized and inputs from ``fp32_inputs_from`` on are FP32; input 1
    of a type with a weight rule gets the weight's config when it is a constant (decided per op
    by the caller; the template holds the activation config there); input 2 of a bias type gets
    the bias rule; every other slot the activation rule.
    """
    sock = p.sockets.get(t)
    fp32_start = p.fp32_inputs_from.get(t, n_in)
    passive_start = p.passive_inputs_from.get(t, n_in)
    cfgs: list[TensorQuantConfig] = []
    weight_slot = False
    for k in range(n_in):
        if k >= passive_start:
            cfgs.append(
                act.with_state(QuantState.PASSIVE_INIT).with_visibility(Visibility.INTERNAL)
            )
        elif (sock is not None and sock.input(k) != "U") or k >= fp32_start:
            cfgs.append(act_fp32)
        elif k == 1 and t in p.weights:
            weight_slot = True
            cfgs.append(act)
        elif k == 2 and n_in > 2 and t in p.bias_types:
            cfgs.append(bias_cfg)
        else:
            cfgs.append(act)
    for k in range(n_out):
        cfgs.append(act_fp32 if (sock is not None and sock.output(k) != "U") else act)
    return cfgs, weight_slot
