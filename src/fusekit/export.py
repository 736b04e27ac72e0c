"""Export a calibrated plan: QDQ ONNX, the plan as JSON, and a TensorRT dynamic-range file.

:func:`export_qdq` writes QuantizeLinear/DequantizeLinear exactly where the plan quantizes:

* an active output slot puts ``Q -> DQ`` right after its producer (the producer's output is
  renamed, the DQ writes the original name, so every consumer and graph output reads the
  quantized value and graph output names are preserved);
* an active input slot whose value is not already quantized with the same scale gets its own
  ``Q -> DQ`` in front of its op (a graph input, or a real requantization); slots of one
  sharing group on one tensor share that pair;
* an OVERLAPPED slot gets nothing: ``Conv -> Relu`` exports as ``DQ -> Conv -> Relu -> Q -> DQ``;
* a weight becomes an int8 initializer plus a DequantizeLinear (per channel along
  ``channel_axis``), or with ``quantized_weights=False`` a Q/DQ pair on the float weight; a
  32-bit bias becomes an int32 initializer plus a DequantizeLinear;
* every slot of a group uses the one scale/zero-point initializer pair of its root;
* a floating (FP8) config exports as Q/DQ with a ``FLOAT8E4M3FN`` (or ``FLOAT8E5M2``) zero point
  of 0, on activations and on the float weights alike, and the model is raised to opset 19
  (the first whose Q/DQ take float8; only the Reduce ops, whose ``axes`` became an input at 18,
  need rewriting on the way from 13).
* a BatchNormalization the plan folded into the Conv/ConvTranspose/Gemm before it (its input
  slot overlapped by the epilogue pass) is folded for real: the weight becomes
  ``W * gamma / sqrt(var + eps)`` per output channel and the bias ``(b - mean) * k + beta``,
  both quantized after folding (the weight's per-channel scales recomputed from the folded
  values with its rule, the int32 bias at ``input scale * folded weight scale``), and the
  BatchNormalization node disappears. A backend cannot fold it once the weight is a
  DequantizeLinear output (onnxruntime runs ``Conv -> BatchNormalization`` in float then).

The model is assembled in a single pass over the float ``ModelProto`` (no per-node graph
edits), so export is linear in the model size. Models below opset 13 are raised to 13 (the
first opset with per-channel DequantizeLinear): only the nodes whose operator changed meaning
since the model's opset are rewritten, each by onnx's own version converter.

Exporting a plan with a slot that still needs a scale raises
:class:`~fusekit.errors.NotCalibrated` naming the first such slot. Every file is written
atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._util import gc_paused, write_bytes_atomic, write_files_atomic
from .dtypes import FLOAT, UNKNOWN, tensor_elem_types
from .errors import ExportError, NotCalibrated
from .graph import Graph, subgraph_notes
from .onnx_io import (
    ModelExtras,
    embed_external_data,
    model_files,
    to_model,
)
from .quant import (
    QuantPlan,
    QuantPolicy,
    QuantProperty,
    QuantState,
    TensorQuantConfig,
    Visibility,
    check_plan_graph,
    dequantize_values,
    minmax_to_scale_offset,
    quantize_values,
    scale_range,
)

__all__ = [
    "QDQExport",
    "build_qdq",
    "count_qdq",
    "dequantize_values",
    "dynamic_ranges",
    "export_qdq",
    "quant_points",
    "quantize_values",
    "save_qdq",
    "save_ranges",
]

_MIN_OPSET = 13
_EXPORT_STATES = QuantState.EXPORTED
_PENDING = QuantState.PENDING


# --------------------------------------------------------------------------------------------
# placement: which slots export, and where their Q/DQ goes


@attrs.frozen
class _Key:
    """What one Q/DQ pair quantizes with: a root slot and the integer type of the pair."""

    root: int
    dtype: str  # "int8" | "uint8" | "int32" | "float8e4m3fn" | "float8e5m2"


def _qtype(cfg: TensorQuantConfig, param: bool) -> str | None:
    """The ONNX integer type a slot exports as, or None if Q/DQ cannot express it."""
    if cfg.policy.floating:
        # FP8 (opset 19 QuantizeLinear saturates to the type's range, no zero point): E4M3
        # (+-448) and E5M2 (+-57344) as ONNX defines them, 8 bits without a sign-bit spare
        if cfg.num_bits == 8 and cfg.exponent_bits == 4 and float(cfg.quant_max) <= 448.0:
            return "float8e4m3fn"
        if cfg.num_bits == 8 and cfg.exponent_bits == 5 and float(cfg.quant_max) <= 57344.0:
            return "float8e5m2"
        return None
    lo, hi = int(cfg.quant_min), int(cfg.quant_max)
    if cfg.num_bits == 8:
        if lo >= -128 and hi <= 127:
            return "int8"
        if lo >= 0 and hi <= 255:
            return "uint8"
        return None
    if param and cfg.num_bits > 8 and lo >= -(2**31) and hi <= 2**31 - 1:
        return "int32"  # a bias: DequantizeLinear of an int32 initializer
    return None


_UNSET: Any = object()  # a slot whose export key is not decided yet


class _Placement:
    """Where every Q/DQ of a plan goes; computed over integer ids in one pass.

    ``after[tid]``: key of the pair inserted right after the producer of tensor ``tid``.
    ``before[sid]``: key of the pair feeding consumer slot ``sid`` (shared per tensor and key).
    ``params[sid]``: key of a constant input (weight, bias) quantized at slot ``sid``.
    ``skipped``: one note per active slot Q/DQ cannot express.
    """

    def __init__(self, plan: QuantPlan, *, require_scales: bool, constant_params: bool):
        graph = plan.graph
        idx = graph.index
        configs = plan.configs.tolist()
        parents = plan.parent_ids()
        self.roots = roots = plan.root_ids()
        self.after: dict[int, _Key] = {}
        self.before: dict[int, _Key] = {}
        self.params: dict[int, _Key] = {}
        self.skipped: list[str] = []
        self._qtypes: dict[tuple[int, bool], str | None] = {}  # configs are shared objects
        slot_tensor = graph.arrays().slot_tensor
        self.constants = constants = _constant_tensors(graph)
        # the key of each slot id once decided (a list: the loops below read it inline, a call
        # per slot cost as much as the decision)
        memo: list[Any] = [_UNSET] * len(configs)
        FP32, INTERNAL = QuantState.FP32, Visibility.INTERNAL

        def status(sid: int) -> _Key | None:
            k = memo[sid]
            if k is _UNSET:
                k = memo[sid] = self._status(
                    sid, configs, roots, parents, slot_tensor, constants, require_scales, idx
                )
            return k  # type: ignore[no-any-return]

        self.status = status
        ar = graph.arrays()  # plain lists: slot ranges per op without a call each
        slot_base, n_in, n_out = ar.slot_base, ar.n_in, ar.n_out
        dispatch = plan.dispatch.tolist()
        quantized = [oid for oid in ar.order if dispatch[oid] is not None]
        if require_scales:  # name the first slot without a scale in plan order
            OVER = QuantState.OVERLAPPED
            for oid in quantized:
                base = slot_base[oid]
                for sid in range(base, base + n_in[oid] + n_out[oid]):
                    cfg = configs[sid]
                    if slot_tensor[sid] >= 0 and cfg is not None and cfg.state is not OVER:
                        memo[sid] = self._status(  # each slot once: no memo to read yet
                            sid, configs, roots, parents, slot_tensor, constants, True, idx
                        )
        # producers first: which tensors carry a quantized value after their producer
        after = self.after
        for oid in quantized:
            base = slot_base[oid] + n_in[oid]
            for sid in range(base, base + n_out[oid]):
                tid = slot_tensor[sid]
                cfg = configs[sid]
                if tid < 0 or cfg is None or cfg.state is FP32 or cfg.visibility is INTERNAL:
                    continue
                k = memo[sid]
                if k is _UNSET:
                    k = status(sid)
                if k is not None:
                    after[tid] = k
        OVERLAPPED = QuantState.OVERLAPPED
        params, before = self.params, self.before
        for oid in quantized:
            base = slot_base[oid]
            for sid in range(base, base + n_in[oid]):
                tid = slot_tensor[sid]
                cfg = configs[sid]
                if tid < 0 or cfg is None or cfg.state is FP32:
                    continue
                if cfg.state is OVERLAPPED:
                    k = self._same_tensor_exporter(sid, tid, parents, status, slot_tensor)
                else:
                    k = memo[sid]
                    if k is _UNSET:
                        k = status(sid)
                if k is None:
                    continue
                if constant_params and tid in constants:
                    params[sid] = k
                    continue
                a = after.get(tid)
                if a is not None and a.root == k.root:
                    continue  # the producer's pair already quantizes it with this scale
                before[sid] = k

    def _status(
        self,
        sid: int,
        configs: list[Any],
        roots: list[int],
        parents: list[int],
        slot_tensor: list[int],
        constants: frozenset[int],
        require_scales: bool,
        idx: Any,
    ) -> _Key | None:
        """The key a slot exports with, or None (FP32, INTERNAL, overlapped, inexpressible)."""
        cfg = configs[sid]
        if cfg is None or cfg.state == QuantState.FP32:
            return None
        if cfg.visibility == Visibility.INTERNAL:
            return None
        state = cfg.state
        root_cfg = configs[roots[sid]]
        has_scale = root_cfg.scale is not None and root_cfg.offset is not None
        if state in _PENDING or (state in _EXPORT_STATES and not has_scale):
            if require_scales:
                what = (
                    "has no scale yet: calibrate the plan"
                    if state != QuantState.PASSIVE_INIT or parents[sid] >= 0
                    else "is PASSIVE_INIT: run fusekit.PassiveParameters after calibration"
                )
                raise NotCalibrated(
                    f"cannot export: slot {idx.slot_key(sid)} ({state.name}) {what}",
                    idx.slot_key(sid),
                )
        elif state not in _EXPORT_STATES and cfg.visibility != Visibility.FORCE_EXPORT:
            return None
        tid = slot_tensor[sid]
        memo_key = (id(cfg), tid in constants)
        qt = self._qtypes.get(memo_key, "?")
        if qt == "?":
            qt = self._qtypes[memo_key] = _qtype(cfg, tid in constants)
        if qt is None:
            self.skipped.append(
                f"{idx.slot_key(sid)}: {cfg.num_bits}-bit {cfg.policy} "
                f"[{cfg.quant_min}, {cfg.quant_max}] has no QDQ form; left float"
            )
            return None
        return _Key(roots[sid], qt)

    @staticmethod
    def _same_tensor_exporter(
        sid: int, tid: int, parents: list[int], status: Any, slot_tensor: list[int]
    ) -> _Key | None:
        """For an overlapped input: the slot on the same tensor that quantizes it, if any.

        Simplify overlaps a consumer by the producer (or, for a graph input, by the first
        consumer): the consumer then reads that slot's quantized value. An overlap that leaves
        the tensor (a fused activation, a passive op) means the value is not quantized here.
        """
        s = sid
        while parents[s] >= 0:
            s = parents[s]
            if slot_tensor[s] != tid:
                return None
            k = status(s)
            if k is not None:
                return k  # type: ignore[no-any-return]
        return None


def _constant_tensors(graph: Graph) -> frozenset[int]:
    """Tensor ids of initializers and of ``Constant`` op outputs."""
    idx = graph.index
    # the index's initializer flags (iterating the initializers' PMap runs in Python)
    out = {tid for tid, init in enumerate(graph.arrays().is_init) if init}
    for oid in graph.ops_by_type().get("Constant", ()):
        for sid in idx.output_sids(oid):
            tid = idx.slot_tensor[sid]
            if tid >= 0:
                out.add(tid)
    return frozenset(out)


def _const_value(graph: Graph, name: str) -> np.ndarray[Any, Any] | None:
    """The value of a constant tensor (initializer or ``Constant`` op output), else None."""
    init = graph.initializers.get(name)
    if init is not None:
        return np.asarray(init.array())
    p = graph.producer(name)
    if p is None:
        return None
    op = graph.op(p.op)
    if op.op_type != "Constant" or op.domain not in ("", "ai.onnx"):
        return None
    attrs_ = op.attributes
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs_:
            v = attrs_[key]
            if isinstance(v, np.ndarray):
                return v
            if isinstance(v, (int, float, tuple)):
                return np.asarray(v, dtype=np.int64 if "int" in key else np.float32)
    return None


def quant_points(plan: QuantPlan) -> dict[str, int]:
    """How many Q/DQ the plan places: ``{"activations": pairs, "parameters": DQs, "total"}``.

    Works on uncalibrated plans too (INITIAL and PASSIVE_INIT slots count as the points they
    will become), which is how the CLI shows the effect of each pass. Pairs are counted per
    tensor and sharing group, as :func:`export_qdq` creates them (export may merge a few more
    whose calibrated scales happen to be equal).
    """
    pl = _Placement(plan, require_scales=False, constant_params=True)
    idx = plan.graph.index
    consumer_pairs = {(idx.slot_tensor[s], k) for s, k in pl.before.items()}
    param_dqs = {(idx.slot_tensor[s], k) for s, k in pl.params.items()}
    acts = len(pl.after) + len(consumer_pairs)
    return {"activations": acts, "parameters": len(param_dqs), "total": acts + len(param_dqs)}


# --------------------------------------------------------------------------------------------
# the exporter


_NP: dict[str, type[np.signedinteger[Any]] | type[np.unsignedinteger[Any]]] = {
    "int8": np.int8,
    "uint8": np.uint8,
    "int32": np.int32,
}
_ONNX = {
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int32": TensorProto.INT32,
    "float8e4m3fn": TensorProto.FLOAT8E4M3FN,
    "float8e5m2": TensorProto.FLOAT8E5M2,
}
#: fusekit.qimport.IMPORTED_PLATFORM (not imported from there: qimport imports this module)
_IMPORTED = "imported"

_FP8_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take float8 types


def _qdq_node(
    op_type: str, inputs: list[str], output: str, name: str, axis: int | None
) -> onnx.NodeProto:
    node: onnx.NodeProto = helper.make_node(op_type, inputs, [output], name)
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


@attrs.frozen
class QDQExport:
    """The result of :func:`build_qdq`: the model and what export did.

    ``q_nodes``/``dq_nodes`` count the inserted nodes, ``activation_pairs`` the Q/DQ pairs on
    activations, ``parameter_dqs`` the DequantizeLinear of int8/int32 parameters, ``skipped``
    one note per op whose sub-graph bodies (If/Loop/Scan) stay float
    (:func:`fusekit.graph.subgraph_notes`), then one per slot left float because Q/DQ cannot
    express its config or its tensor is not float32, and
    ``opset`` the model's ``ai.onnx`` opset after export.
    """

    model: Any = attrs.field(repr=False)
    q_nodes: int
    dq_nodes: int
    activation_pairs: int
    parameter_dqs: int
    skipped: tuple[str, ...]
    opset: int


class _Names:
    """Fresh tensor and node names that collide with nothing in the model."""

    def __init__(self, used: Iterable[str]):
        self.used = set(used)

    def fresh(self, base: str) -> str:
        name = base
        k = 2
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name


class _Builder:
    def __init__(self, graph: Graph, plan: QuantPlan, quantized_weights: bool):
        self.graph = graph
        self.plan = plan
        self.idx = graph.index
        self.quantized_weights = quantized_weights
        self.pl = _Placement(plan, require_scales=True, constant_params=True)
        self.inits: list[TensorProto] = []
        self.qparams: dict[_Key, tuple[str, str]] = {}
        used = set(self.idx.tensor_names) | set(graph.initializers) | set(graph.inputs)
        self.tensors = _Names(used)
        self.nodes = _Names(n for n in graph.original_names.values())
        self.nodes.used.update(graph.ops.keys())
        self.q = 0
        self.dq = 0
        self.pairs = 0
        self.param_dqs = 0
        self.notes = list(self.pl.skipped)
        self._axes: dict[int, int | None] = {}
        self.fp8 = False  # a float8 Q/DQ was written: the model needs opset 19
        self.folds = _batchnorm_folds(graph, plan, self.pl, self.notes)
        self.folded_bn = {f.bn: f for f in self.folds.values()}

    # -- constants ----------------------------------------------------------------------------

    def _scale_zp(self, key: _Key) -> tuple[str, str]:
        """The shared scale / zero-point initializers of ``key``'s root."""
        got = self.qparams.get(key)
        if got is not None:
            return got
        cfg = self.plan.configs[key.root]
        assert cfg.scale is not None and cfg.offset is not None
        base = self.idx.tensor_names[self.idx.slot_tensor[key.root]]
        s_name = self.tensors.fresh(f"{base}_scale")
        z_name = self.tensors.fresh(f"{base}_zero_point")
        if key.dtype.startswith("float8"):
            return self._fp8_scale_zp(key, s_name, z_name)
        info = np.iinfo(_NP[key.dtype])
        if cfg.scale.size == 1 and self._axis(key, None) is None:
            # the common case, built without numpy_helper: a 100k-op model has 50k of these
            sv = float(cfg.scale.reshape(()))
            if not (math.isfinite(sv) and sv > 0):
                raise ExportError(
                    f"slot {self.idx.slot_key(key.root)} has scale {sv}: not positive and finite"
                )
            zv = 0 if key.dtype == "int32" else round(float(cfg.offset.reshape(())))
            zv = min(max(zv, int(info.min)), int(info.max))
            st = TensorProto(name=s_name, data_type=TensorProto.FLOAT)
            st.float_data.append(sv)
            zt = TensorProto(name=z_name, data_type=_ONNX[key.dtype])
            zt.int32_data.append(zv)
            self.inits.extend((st, zt))
            self.qparams[key] = (s_name, z_name)
            return s_name, z_name
        scale = np.asarray(cfg.scale, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ExportError(
                f"slot {self.idx.slot_key(key.root)} has a scale that is not positive and finite"
            )
        zp = np.round(np.asarray(cfg.offset, dtype=np.float64)).reshape(-1)
        if key.dtype == "int32":
            zp = np.zeros_like(zp)
        zp = np.clip(zp, info.min, info.max).astype(_NP[key.dtype])
        if zp.shape != scale.shape:
            zp = np.broadcast_to(zp, scale.shape).copy()
        self.inits.append(numpy_helper.from_array(scale, s_name))
        self.inits.append(numpy_helper.from_array(zp, z_name))
        self.qparams[key] = (s_name, z_name)
        return s_name, z_name

    def _fp8_scale_zp(self, key: _Key, s_name: str, z_name: str) -> tuple[str, str]:
        """FP8 scale and zero point: float scales, a float8 zero point of 0 (no offset)."""
        cfg = self.plan.configs[key.root]
        scale = np.asarray(cfg.scale, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ExportError(
                f"slot {self.idx.slot_key(key.root)} has a scale that is not positive and finite"
            )
        per_channel = self._axis(key, None) is not None
        dims = [scale.size] if per_channel else []
        self.inits.append(helper.make_tensor(s_name, TensorProto.FLOAT, dims, scale.tolist()))
        self.inits.append(helper.make_tensor(z_name, _ONNX[key.dtype], dims, [0.0] * scale.size))
        self.fp8 = True
        self.qparams[key] = (s_name, z_name)
        return s_name, z_name

    def _axis(self, key: _Key, rank: int | None) -> int | None:
        """The channel axis of ``key``'s Q/DQ (None for per-tensor), made non-negative."""
        if key.root in self._axes:
            axis = self._axes[key.root]
        else:
            cfg = self.plan.configs[key.root]
            scale = cfg.scale
            if scale is None or (scale.size == 1 and not cfg.policy.per_channel):
                axis = None
            else:
                axis = cfg.channel_axis if cfg.channel_axis is not None else 0
            self._axes[key.root] = axis
        if axis is not None and rank is not None and axis < 0:
            axis += rank
        return axis

    # -- nodes --------------------------------------------------------------------------------

    def qdq(self, src: str, key: _Key, dst: str, rank: int | None) -> list[onnx.NodeProto]:
        """``src -> Q -> DQ -> dst`` with ``key``'s parameters."""
        s, z = self._scale_zp(key)
        mid = self.tensors.fresh(f"{src}_quantized")
        axis = self._axis(key, rank)
        qn = _qdq_node(
            "QuantizeLinear", [src, s, z], mid, self.nodes.fresh(f"{src}_QuantizeLinear"), axis
        )
        dqn = _qdq_node(
            "DequantizeLinear", [mid, s, z], dst, self.nodes.fresh(f"{src}_DequantizeLinear"), axis
        )
        self.q += 1
        self.dq += 1
        return [qn, dqn]

    def param(self, sid: int, key: _Key, dst: str) -> list[onnx.NodeProto]:
        """A constant input: int initializer + DQ (or Q/DQ on the float value)."""
        idx = self.idx
        name = idx.tensor_names[idx.slot_tensor[sid]]
        const = _const_value(self.graph, name)
        assert const is not None
        value = np.asarray(const)
        cfg = self.plan.configs[key.root]
        scale = np.asarray(cfg.scale, dtype=np.float64)
        axis = self._axis(key, value.ndim)
        if key.dtype != "int32" and (not self.quantized_weights or key.dtype.startswith("float8")):
            # FP8 weights: Q/DQ on the float weight (numpy has no float8 type to store them)
            self._check_channels(sid, value, scale, axis)
            self.pairs += 1
            return self.qdq(name, key, dst, value.ndim)
        # a Gemm bias [1, N] broadcasts like [N]: quantize it flat along its channels
        if (
            key.dtype == "int32"
            and axis is not None
            and value.ndim != 1
            and value.size == scale.size
        ):
            value = value.reshape(-1)
            axis = 0
        if not self._check_channels(sid, value, scale, axis, fatal=key.dtype != "int32"):
            self.notes.append(
                f"{idx.slot_key(sid)}: bias of shape {list(value.shape)} does not match its "
                f"{scale.size} channel scales; left float"
            )
            return []
        q = quantize_values(value, cfg, scale, cfg.offset, axis, zero_offset=key.dtype == "int32")
        q = q.astype(_NP[key.dtype])
        qname = self.tensors.fresh(f"{name}_quantized")
        self.inits.append(numpy_helper.from_array(q, qname))
        s, z = self._scale_zp(key)
        self.dq += 1
        self.param_dqs += 1
        node_name = self.nodes.fresh(f"{name}_DequantizeLinear")
        return [_qdq_node("DequantizeLinear", [qname, s, z], dst, node_name, axis)]

    def _check_channels(
        self,
        sid: int,
        value: np.ndarray[Any, Any],
        scale: np.ndarray[Any, Any],
        axis: int | None,
        fatal: bool = True,
    ) -> bool:
        if axis is None:
            return scale.size == 1 or self._fail(sid, "a per-tensor slot has several scales", fatal)
        if not 0 <= axis < value.ndim or value.shape[axis] != scale.size:
            dims = list(value.shape)
            return self._fail(
                sid, f"{scale.size} channel scales on axis {axis} of a {dims} tensor", fatal
            )
        return True

    def _fail(self, sid: int, why: str, fatal: bool) -> bool:
        if fatal:
            raise ExportError(f"cannot export slot {self.idx.slot_key(sid)}: {why}")
        return False

    # -- BatchNorm folding --------------------------------------------------------------------

    def _folded_params(self, fold: _Fold, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The folded weight and bias of ``fold``'s computing op, quantized after folding.

        Rewires ``node`` (the computing op) to read them; returns the DequantizeLinear nodes.
        """
        idx, plan = self.idx, self.plan
        b0 = idx.slot_base[fold.op]
        w_sid, b_sid = b0 + 1, b0 + 2
        w_name = idx.tensor_names[idx.slot_tensor[w_sid]]
        out: list[onnx.NodeProto] = []
        w_key = self.pl.params.get(w_sid)
        w_scale: np.ndarray[Any, Any] | None = None
        if w_key is None:  # the weight stays float: store the folded float weight
            wf = self.tensors.fresh(f"{w_name}_folded")
            self.inits.append(numpy_helper.from_array(fold.weight.astype(np.float32), wf))
            node.input[1] = wf
        else:
            cfg = plan.configs[w_key.root]
            axis = self._axis(w_key, fold.weight.ndim)
            w_scale, w_zp = _refit_scale(fold.weight, cfg, axis)
            dq_out = self.tensors.fresh(f"{w_name}_folded_dequantized")
            out.append(
                self._const_dq(
                    f"{w_name}_folded", fold.weight, cfg, w_scale, w_zp, axis, w_key.dtype, dq_out
                )
            )
            node.input[1] = dq_out
        bias = fold.bias.astype(np.float32)
        b_name = f"{node.name or w_name}_folded_bias"
        b_key = self.pl.params.get(b_sid) if fold.has_bias else None
        in_root = self.pl.roots[b0]
        in_cfg = plan.configs[in_root]
        int_bias = (
            w_scale is not None
            and in_cfg.scale is not None
            and (b_key is not None or (not fold.has_bias and _bias_is_int(plan, self.pl, fold)))
        )
        if int_bias:
            assert w_scale is not None and in_cfg.scale is not None
            b_scale = (np.float64(np.asarray(in_cfg.scale).reshape(())) * w_scale).astype(
                np.float32
            )
            bcfg = plan.configs[b_key.root] if b_key is not None else _int32_bias_cfg()
            dq_out = self.tensors.fresh(f"{b_name}_dequantized")
            out.append(
                self._const_dq(
                    b_name,
                    bias.reshape(-1),
                    bcfg,
                    b_scale,
                    np.zeros_like(b_scale),
                    0,
                    "int32",
                    dq_out,
                )
            )
        else:
            dq_out = self.tensors.fresh(b_name)
            self.inits.append(numpy_helper.from_array(bias.reshape(fold.bias_shape), dq_out))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = dq_out
        return out

    def _const_dq(
        self,
        base: str,
        value: np.ndarray[Any, Any],
        cfg: TensorQuantConfig,
        scale: np.ndarray[Any, Any],
        zp: np.ndarray[Any, Any],
        axis: int | None,
        dtype: str,
        dst: str,
    ) -> onnx.NodeProto:
        """An integer initializer of ``value`` and the DequantizeLinear writing ``dst``."""
        q = quantize_values(value, cfg, scale, zp, axis, zero_offset=dtype == "int32")
        qname = self.tensors.fresh(f"{base}_quantized")
        self.inits.append(numpy_helper.from_array(q.astype(_NP[dtype]), qname))
        s_name = self.tensors.fresh(f"{base}_scale")
        z_name = self.tensors.fresh(f"{base}_zero_point")
        flat = axis is None
        s_arr = np.asarray(scale, dtype=np.float32)
        z_arr = np.round(np.asarray(zp, dtype=np.float64)).astype(_NP[dtype])
        if flat:
            s_arr, z_arr = s_arr.reshape(()), z_arr.reshape(())
        else:
            s_arr, z_arr = s_arr.reshape(-1), z_arr.reshape(-1)
        self.inits.append(numpy_helper.from_array(s_arr, s_name))
        self.inits.append(numpy_helper.from_array(z_arr, z_name))
        self.dq += 1
        self.param_dqs += 1
        node_name = self.nodes.fresh(f"{base}_DequantizeLinear")
        return _qdq_node("DequantizeLinear", [qname, s_name, z_name], dst, node_name, axis)

    # -- assembly -----------------------------------------------------------------------------

    def _drop_non_float(self) -> None:
        """Leave tensors that are not float32 unquantized (QuantizeLinear takes float32).

        A plan can quantize an integer tensor when the rule set quantizes whatever the data
        type (PPQ's rule sets, quirk ``any_dtype``) or an explicit dispatch says so: an int64
        mask through Unsqueeze, a sample rate through Mul. The types are the ones
        :func:`fusekit.dtypes.tensor_elem_types` infers for dispatch, so the exporter and the
        planner cannot disagree about what is float.
        """
        idx, pl = self.idx, self.pl
        names = idx.tensor_names
        wanted = set(pl.after) | {idx.slot_tensor[s] for s in (*pl.before, *pl.params)}
        if not wanted:
            return
        types = tensor_elem_types(self.graph)
        elem = {tid: types[tid] for tid in wanted if types[tid] not in (UNKNOWN, FLOAT)}
        bad = set(elem)
        if not bad:
            return
        for tid in sorted(bad):
            dtype = TensorProto.DataType.Name(elem[tid]).lower()
            self.notes.append(f"tensor {names[tid]!r} is {dtype}, not float: left unquantized")
        for tid in bad:
            pl.after.pop(tid, None)
        for d in (pl.before, pl.params):
            for sid in [s for s in d if idx.slot_tensor[s] in bad]:
                del d[sid]

    def build(self) -> QDQExport:
        graph, idx, pl = self.graph, self.idx, self.pl
        model = to_model(graph)
        self._drop_non_float()
        og = model.graph
        src_nodes = list(og.node)
        types = graph.value_types

        def rank(t: str) -> int | None:
            tt = types.get(t)
            if tt is not None and tt.shape is not None:
                return len(tt.shape)
            init = graph.initializers.get(t)
            return len(init.dims) if init is not None else None

        # consumer-side pairs shared per (tensor, key); parameter DQs shared per (tensor,
        # quantized value): a weight read by many ops with equal scales is stored once
        shared: dict[Any, str] = {}
        out_nodes: list[onnx.NodeProto] = []
        folded_nodes: dict[int, onnx.NodeProto] = {}  # computing op id -> its node
        # tensor id -> the float output of a producer that runs in float although its output
        # is quantized (node-unit rule sets: a standalone Relu after a float Sum): its float
        # readers take that tensor, not the DequantizeLinear output (see _entry_producer)
        entry_float: dict[int, str] = {}
        imported_entry: set[int] = set()  # those of entry_float an imported plan quantizes
        configs = self.plan.configs
        for pos, name in enumerate(graph.order):
            oid = idx.op_id[name]
            node = src_nodes[pos]
            fold = self.folds.get(oid)
            if fold is not None:
                out_nodes.extend(self._folded_params(fold, node))
                folded_nodes[oid] = node
            for k, sid in enumerate(idx.input_sids(oid)):
                if fold is not None and k in (1, 2):
                    continue  # the folded weight and bias are in place already
                key = pl.params.get(sid) or pl.before.get(sid)
                if key is None:
                    tid = idx.slot_tensor[sid]
                    cfg = configs[sid]
                    if (
                        tid in entry_float
                        and (cfg is None or cfg.state is QuantState.FP32)
                        and not (
                            k == 0
                            and node.op_type == "BatchNormalization"
                            and tid in imported_entry
                        )
                    ):
                        # (the importer leaves a BatchNormalization reading a pair's output
                        # without a config: OVERLAPPED would say it is folded)
                        node.input[k] = entry_float[tid]
                    continue
                tid = idx.slot_tensor[sid]
                t = idx.tensor_names[tid]
                share = self._param_share_key(tid, key) if sid in pl.params else (tid, key)
                got = shared.get(share)
                if got is None:
                    dst = self.tensors.fresh(f"{t}_dequantized")
                    if sid in pl.params:
                        new = self.param(sid, key, dst)
                    elif self._same_as_producer(tid, key):
                        new = []
                    else:
                        new = self.qdq(t, key, dst, rank(t))
                        self.pairs += 1
                    if not new:
                        continue
                    out_nodes.extend(new)
                    shared[share] = got = dst
                node.input[k] = got
            post: list[onnx.NodeProto] = []
            entry = self._entry_producer(oid)
            for k, sid in enumerate(idx.output_sids(oid)):
                tid = idx.slot_tensor[sid]
                key = pl.after.get(tid) if tid >= 0 and idx.producer[tid] == sid else None
                if key is None:
                    continue
                t = idx.tensor_names[tid]
                float_name = self.tensors.fresh(f"{t}_float")
                node.output[k] = float_name
                if entry:
                    entry_float[tid] = float_name
                    if self.plan.dispatch[oid] == _IMPORTED:
                        imported_entry.add(tid)
                post.extend(self.qdq(float_name, key, t, rank(t)))
                self.pairs += 1
            bn = self.folded_bn.get(oid)
            if bn is not None:  # the computing op writes what the BatchNormalization wrote
                folded_nodes[bn.op].output[0] = node.output[0]
                out_nodes.extend(post)
                continue
            out_nodes.append(node)
            out_nodes.extend(post)

        # graph inputs that are consumed quantized must still be inputs; float initializers
        # no longer read by anything are dropped (with their input entry in old-IR models)
        read: set[str] = set(graph.outputs)
        for n in out_nodes:
            read.update(n.input)
        for op in graph.ops.values():
            read.update(op.implicit_inputs)
        # Constant nodes whose value now lives in an int8 initializer
        out_nodes = [
            n
            for n in out_nodes
            if n.op_type != "Constant" or n.domain not in ("", "ai.onnx") or n.output[0] in read
        ]
        keep = [t for t in og.initializer if t.name in read]
        dropped = {t.name for t in og.initializer} - read
        del og.initializer[:]
        og.initializer.extend(keep)
        og.initializer.extend(self.inits)
        if dropped:
            ins = [vi for vi in og.input if vi.name not in dropped]
            del og.input[:]
            og.input.extend(ins)
            vis = [vi for vi in og.value_info if vi.name not in dropped]
            del og.value_info[:]
            og.value_info.extend(vis)
        opset = _ai_onnx_opset(model)
        if opset < _MIN_OPSET:
            scalars = {t.name for t in self.inits if not t.dims}
            out_nodes, extra = _upgrade_nodes(out_nodes, opset, graph, scalars=scalars)
            og.initializer.extend(extra)
            _set_opset(model, _MIN_OPSET)
            opset = _MIN_OPSET
        if self.fp8 and opset < _FP8_OPSET:
            out_nodes, extra = _upgrade_nodes(out_nodes, opset, graph, _FP8_OPSET)
            og.initializer.extend(extra)
            _set_opset(model, _FP8_OPSET)
            opset = _FP8_OPSET
        del og.node[:]
        og.node.extend(out_nodes)
        model.ir_version = max(model.ir_version, 9 if self.fp8 else 7)
        return QDQExport(
            model,
            self.q,
            self.dq,
            self.pairs,
            self.param_dqs,
            (*subgraph_notes(self.graph), *self.notes),
            opset,
        )

    def _entry_producer(self, oid: int) -> bool:
        """Does op ``oid`` run in float although its output is quantized (node units only)?

        With a ``"node-unit"`` rule set, an op whose every non-constant input is read in float
        (a standalone Relu after a float Sum, whose FP32 input the activation pass set) runs
        in float; its QuantizeLinear only enters the int8 domain for the int8 ops that read
        it. A float reader of the same tensor must take the float value: reading the
        DequantizeLinear output would be a Q -> DQ round trip executed in float (onnxruntime
        has no int8 Sum), rounding for nothing. An op that reads a quantized input (a Conv, a
        fused Relu) is an int8 node unit: its output must feed QuantizeLinear nodes only, so
        its float readers keep the DequantizeLinear (a legitimate exit from int8).
        """
        from .platforms import get_platform

        name = self.plan.dispatch[oid]
        if not name:
            return False
        # an imported plan (fusekit.qimport, no rule set) of a node-unit export: the importer
        # reads ``X_float -> Q -> DQ -> X`` with float readers on ``X_float`` as a point after
        # a producer whose inputs are all float, and leaves those readers' slots without a
        # config; re-exported, they must read the float copy again (the fixed point)
        if name != _IMPORTED:
            try:
                if get_platform(name).placement != "node-unit":
                    return False
            except Exception:
                return False
        idx, configs, constants = self.idx, self.plan.configs, self.pl.constants
        for sid in idx.input_sids(oid):
            tid = idx.slot_tensor[sid]
            if tid < 0 or tid in constants:
                continue
            cfg = configs[sid]
            if cfg is not None and cfg.state is not QuantState.FP32:
                return False
        return True

    def _param_share_key(self, tid: int, key: _Key) -> tuple[Any, ...]:
        """Parameters quantized to the same integers with the same scales share one DQ."""
        cfg = self.plan.configs[key.root]
        assert cfg.scale is not None and cfg.offset is not None
        return (
            tid,
            key.dtype,
            np.asarray(cfg.scale, dtype=np.float32).tobytes(),
            np.asarray(cfg.offset, dtype=np.float32).tobytes(),
            np.shape(cfg.scale),
            cfg.channel_axis,
            cfg.rounding,
            cfg.quant_min,
            cfg.quant_max,
        )

    def _same_as_producer(self, tid: int, key: _Key) -> bool:
        """True when the producer's pair already quantizes with exactly ``key``'s values."""
        a = self.pl.after.get(tid)
        if a is None or a.dtype != key.dtype:
            return False
        ca, ck = self.plan.configs[a.root], self.plan.configs[key.root]
        return bool(
            ca.scale is not None
            and ck.scale is not None
            and np.array_equal(ca.scale, ck.scale)
            and ca.offset is not None
            and ck.offset is not None
            and np.array_equal(np.round(ca.offset), np.round(ck.offset))
        )


# --------------------------------------------------------------------------------------------
# BatchNorm folding


_FOLD_INTO = {"Conv": 0, "ConvTranspose": 1, "Gemm": -1}  # op type -> output-channel axis of W


@attrs.frozen
class _Fold:
    """A BatchNormalization folded into the computing op before it, with the folded values."""

    op: int  # the computing op
    bn: int  # the BatchNormalization op
    weight: np.ndarray[Any, Any] = attrs.field(eq=False)
    bias: np.ndarray[Any, Any] = attrs.field(eq=False)
    bias_shape: tuple[int, ...]
    has_bias: bool


def _batchnorm_folds(
    graph: Graph, plan: QuantPlan, pl: _Placement, notes: list[str]
) -> dict[int, _Fold]:
    """Computing op id -> its fold, for every BatchNormalization the plan fused (see module doc).

    A fold needs what the epilogue pass already checked (the computing op's only consumer, the
    other operands constant) plus constant weight and bias values here; a fused BatchNorm that
    cannot be folded stays in the graph, with a note.
    """
    idx = graph.index
    configs = plan.configs
    out: dict[int, _Fold] = {}
    for bn in graph.ops_by_type().get("BatchNormalization", ()):
        b = idx.slot_base[bn]
        cfg = configs[b]
        if cfg is None or cfg.state is not QuantState.OVERLAPPED:
            continue
        op = graph.op(idx.op_names[bn])
        tid = idx.slot_tensor[b]
        prod = idx.producer[tid] if tid >= 0 else -1
        if prod < 0:
            continue
        cop = idx.slot_op[prod]
        conv = graph.op(idx.op_names[cop])
        # the plan overlaps a BatchNormalization's input with the tensor it reads whenever they
        # share a scale; folding also needs the computing op's output to reach nothing but it
        # (another reader would see the folded values)
        readers = {idx.slot_op[c] for c in idx.consumers[tid]}
        if readers != {bn} or idx.tensor_names[tid] in graph.outputs:
            notes.append(
                f"{op.name}: not folded: the output of {conv.name} is read by other ops or is "
                "a graph output"
            )
            continue
        if tid in pl.after or b in pl.before:
            # the computing op's own output is a quantization point (no epilogue fusion: the
            # BatchNormalization only shares its scale): a fold would leave that point's
            # QuantizeLinear reading a tensor nothing computes any more
            notes.append(
                f"{op.name}: not folded: the output of {conv.name} is quantized by the plan"
            )
            continue
        why = _fold(graph, conv, op)
        if isinstance(why, str):
            notes.append(f"{op.name}: fused into {conv.name} by the plan but not folded: {why}")
            continue
        weight, bias, bias_shape, has_bias = why
        out[cop] = _Fold(cop, bn, weight, bias, bias_shape, has_bias)
    return out


def _fold(
    graph: Graph, conv: Any, bn: Any
) -> str | tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], tuple[int, ...], bool]:
    """The folded ``(weight, bias, bias shape, had a bias)`` of ``conv -> bn``, or why not."""
    if conv.op_type not in _FOLD_INTO or conv.domain not in ("", "ai.onnx"):
        return f"{conv.op_type} has no weight to fold into"
    if len([o for o in bn.outputs if o]) != 1:
        return "it has training outputs"
    if len(conv.inputs) < 2 or not conv.inputs[1]:
        return "the computing op has no weight"
    w = _const_value(graph, conv.inputs[1])
    if w is None or w.dtype != np.float32:
        return "the weight is not a float32 constant"
    has_bias = len(conv.inputs) > 2 and bool(conv.inputs[2])
    b = _const_value(graph, conv.inputs[2]) if has_bias else None
    if has_bias and (b is None or b.dtype != np.float32):
        return "the bias is not a float32 constant"
    vals = [_const_value(graph, n) if n else None for n in bn.inputs[1:5]]
    if len(vals) != 4 or any(v is None for v in vals):
        return "its scale/bias/mean/var are not constants"
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in vals)
    eps = float(bn.attributes.get("epsilon", 1e-5))
    axis = _FOLD_INTO[conv.op_type]
    if conv.op_type == "Gemm":
        if (
            float(conv.attributes.get("alpha", 1.0)) != 1.0
            or float(conv.attributes.get("beta", 1.0)) != 1.0
            or w.ndim != 2
        ):
            return "Gemm with alpha/beta other than 1"
        axis = 0 if conv.attributes.get("transB", 0) else 1
    if conv.op_type == "ConvTranspose" and int(conv.attributes.get("group", 1)) != 1:
        return "grouped ConvTranspose"
    n = w.shape[axis]
    if not all(v.size == n for v in (gamma, beta, mean, var)):
        return f"{gamma.size} BatchNorm channels for {n} output channels"
    k = gamma / np.sqrt(var + eps)
    shape = [1] * w.ndim
    shape[axis] = n
    weight = (np.asarray(w, dtype=np.float64) * k.reshape(shape)).astype(np.float32)
    b0 = np.zeros(n) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
    if b0.size != n:
        return f"a bias of {b0.size} values for {n} output channels"
    bias = ((b0 - mean) * k + beta).astype(np.float32)
    bias_shape = tuple(np.shape(b)) if b is not None else (n,)
    return weight, bias, bias_shape, has_bias


def _refit_scale(
    value: np.ndarray[Any, Any], cfg: TensorQuantConfig, axis: int | None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The min-max scale and offset of a folded weight under its rule (per channel or not)."""
    v = np.asarray(value, dtype=np.float64)
    if axis is None:
        s, o = minmax_to_scale_offset(float(v.min()), float(v.max()), cfg)
        return np.asarray(s, np.float32), np.asarray(o, np.float32)
    moved = np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1)
    pairs = [minmax_to_scale_offset(float(r.min()), float(r.max()), cfg) for r in moved]
    return (
        np.asarray([p[0] for p in pairs], np.float32),
        np.asarray([p[1] for p in pairs], np.float32),
    )


def _bias_is_int(plan: QuantPlan, pl: _Placement, fold: _Fold) -> bool:
    """Would the computing op's bias be int32 (its op type's rule), had the model one?"""
    from .platforms import get_platform

    name = plan.dispatch[fold.op]
    if not name:
        return False
    try:
        p = get_platform(name)
    except Exception:
        return False
    return p.bias.state is not QuantState.FP32 and p.bias.rule.num_bits == 32


def _int32_bias_cfg() -> TensorQuantConfig:
    """The config of an int32 bias the model did not have (the fold adds it)."""
    return TensorQuantConfig(
        policy=QuantPolicy.of(
            QuantProperty.PER_CHANNEL, QuantProperty.LINEAR, QuantProperty.SYMMETRICAL
        ),
        num_bits=32,
        quant_min=-(2**31),
        quant_max=2**31 - 1,
        channel_axis=0,
    )


def _ai_onnx_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _set_opset(model: onnx.ModelProto, version: int) -> None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
            return
    op = model.opset_import.add()
    op.domain = ""
    op.version = version


# Operators whose ``axes`` attribute became an input at opset 18; every other operator changed
# between opsets 13 and 19 only by new types, attributes or optional inputs (Reshape's
# allowzero, Resize's modes, Split's num_outputs, Cast's saturate, ...), with defaults that keep
# a node's meaning, so the FP8 export (opset 19) converts just these.
_REDUCE_AXES_INPUT_18 = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
    }
)

# Operators whose changes from the listed opset up to 13 only add types, attributes or
# optional inputs: a node written for any opset from that one on means the same at 13.
_ADDITIVE_FROM: Mapping[str, int] = {
    **dict.fromkeys(
        (
            "Abs",
            "Acos",
            "Add",
            "And",
            "ArgMax",
            "ArgMin",
            "Asin",
            "Atan",
            "AveragePool",
            "BatchNormalization",
            "Cast",
            "Ceil",
            "Concat",
            "Constant",
            "ConstantOfShape",
            "Conv",
            "ConvTranspose",
            "Cos",
            "DepthToSpace",
            "Div",
            "Einsum",
            "Elu",
            "Equal",
            "Erf",
            "Exp",
            "Expand",
            "Flatten",
            "Floor",
            "Gather",
            "GatherElements",
            "GatherND",
            "Gemm",
            "GlobalAveragePool",
            "GlobalMaxPool",
            "Greater",
            "HardSigmoid",
            "HardSwish",
            "Identity",
            "InstanceNormalization",
            "LeakyRelu",
            "Less",
            "LRN",
            "Log",
            "MatMul",
            "Max",
            "MaxPool",
            "Mean",
            "Min",
            "Mod",
            "Mul",
            "Neg",
            "NonZero",
            "Not",
            "Or",
            "Pow",
            "PRelu",
            "Range",
            "Reciprocal",
            "ReduceL",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "Relu",
            "Reshape",
            "Round",
            "ScatterElements",
            "ScatterND",
            "Selu",
            "Shape",
            "Sigmoid",
            "Sign",
            "Sin",
            "Size",
            "Softplus",
            "SpaceToDepth",
            "Sqrt",
            "Sub",
            "Sum",
            "Tan",
            "Tanh",
            "Tile",
            "Transpose",
            "Where",
            "Xor",
        ),
        1,
    ),
    "Clip": 11,
    "Pad": 11,
    "Slice": 10,
    "Resize": 11,
    "TopK": 10,
    "Dropout": 12,
}


_SUBGRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def _upgrade_nodes(
    nodes: list[onnx.NodeProto],
    opset: int,
    graph: Graph,
    target: int = _MIN_OPSET,
    scalars: AbstractSet[str] = frozenset(),
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Rewrite the nodes whose operator changed meaning between ``opset`` and ``target`` (13,
    or 19 for FP8 Q/DQ from a model already at 13 or above).

    Each such node is converted alone (a one-node model through onnx's version converter) and
    spliced back with fresh names for anything the converter created. ``scalars`` names the
    per-tensor scale initializers, whose Q/DQ pairs may move over a converter-made Reshape
    (:func:`_hoist_points_over_reshape`).
    """
    from onnx import version_converter

    out: list[onnx.NodeProto] = []
    extra: list[TensorProto] = []
    used = {t for n in nodes for t in (*n.input, *n.output)} | set(graph.initializers)
    names = _Names(used)
    tails: set[str] = set()  # outputs of converted nodes now written by a trailing Reshape
    for n in nodes:
        if n.domain not in ("", "ai.onnx") or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            out.append(n)
            continue
        try:
            since = onnx.defs.get_schema(n.op_type, target, "").since_version
        except onnx.defs.SchemaError:
            out.append(n)
            continue
        if target == _MIN_OPSET:
            additive = opset >= _ADDITIVE_FROM.get(n.op_type, target + 1)
        else:  # from 13 on, only the Reduce family changed meaning (axes became an input)
            additive = n.op_type not in _REDUCE_AXES_INPUT_18
        if since <= opset or additive:
            out.append(n)
            continue
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute
        ):
            raise ExportError(
                f"node {n.name or n.op_type!r} has sub-graphs and the model's opset {opset} is "
                f"below {target}; convert the model to opset {target} first"
            )
        mini_inputs = []
        mini_inits = []
        for t in n.input:
            if not t:
                continue
            init = graph.initializers.get(t)
            if init is not None and init.size <= 4096:
                mini_inits.append(numpy_helper.from_array(np.asarray(init.array()), t))
                continue
            tt = graph.value_types.get(t)
            elem = tt.elem_type if tt is not None and tt.elem_type else TensorProto.FLOAT
            shape = list(tt.shape) if tt is not None and tt.shape is not None else None
            mini_inputs.append(helper.make_tensor_value_info(t, elem, shape))
        outs = [helper.make_empty_tensor_value_info(t) for t in n.output if t]
        g = helper.make_graph([n], "node", mini_inputs, outs, mini_inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 7
        try:
            c = version_converter.convert_version(m, target)
        except Exception as e:
            raise ExportError(
                f"cannot raise {n.op_type} node {n.name!r} from opset {opset} to {target}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        keep = {t for t in n.input if t} | {t for t in n.output if t}
        last = c.graph.node[-1] if len(c.graph.node) > 1 else None
        if last is not None and last.op_type == "Reshape" and list(last.output) == [n.output[0]]:
            tails.add(n.output[0])  # e.g. Softmax < 13: Flatten, Softmax, Reshape
        rename: dict[str, str] = {}
        for cn in c.graph.node:
            for t in cn.output:
                if t and t not in keep and t not in rename:
                    rename[t] = names.fresh(f"{n.name or n.op_type}_{t}")
        for ci in c.graph.initializer:
            if ci.name not in keep and ci.name not in rename:
                rename[ci.name] = names.fresh(f"{n.name or n.op_type}_{ci.name}")
        for cn in c.graph.node:
            new = onnx.NodeProto()
            new.CopyFrom(cn)
            for i, t in enumerate(new.input):
                if t in rename:
                    new.input[i] = rename[t]
            for i, t in enumerate(new.output):
                if t in rename:
                    new.output[i] = rename[t]
            if new.name and new.name != n.name:
                new.name = names.fresh(f"{n.name}_{new.op_type}")
            out.append(new)
        for ci in c.graph.initializer:
            if ci.name in rename:
                t = TensorProto()
                t.CopyFrom(ci)
                t.name = rename[ci.name]
                extra.append(t)
    return _hoist_points_over_reshape(out, tails, names, scalars), extra


def _hoist_points_over_reshape(
    nodes: list[onnx.NodeProto], tails: set[str], names: _Names, scalars: AbstractSet[str]
) -> list[onnx.NodeProto]:
    """Move a per-tensor Q/DQ pair from after a converter-made trailing Reshape to before it.

    The version converter writes an opset < 13 Softmax (LogSoftmax, Hardmax) as
    ``Flatten -> Softmax -> Reshape``, so the output point the plan put on the Softmax lands
    after the Reshape: read back (``import_quantized``), the model then shows a passive op
    whose output is quantized while its input is float, and ``audit`` rightly calls that a
    ``passive_scale_change``. A per-tensor quantization commutes with a Reshape bit for bit,
    so the pair moves onto the computing op's own output, where the plan meant it: ``core ->
    Q -> DQ -> Reshape``. Left alone: a tail read by anything but one QuantizeLinear, a
    per-axis scale (its axis would change meaning across the Reshape).
    """
    if not tails:
        return nodes
    readers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for n in nodes:
        for t in n.input:
            readers.setdefault(t, []).append(n)
        for t in n.output:
            producer[t] = n
    moved: dict[int, onnx.NodeProto] = {}  # id(DQ) -> the Reshape to place right after it
    dropped: set[int] = set()
    for tail in tails:
        reshape = producer.get(tail)
        rs = readers.get(tail, [])
        if reshape is None or reshape.op_type != "Reshape" or len(rs) != 1:
            continue
        q = rs[0]
        if q.op_type != "QuantizeLinear" or q.input[1] not in scalars:
            continue
        dqs = readers.get(q.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        dq = dqs[0]
        inner = reshape.input[0]
        q.input[0] = inner
        out = dq.output[0]
        dq.output[0] = names.fresh(f"{inner}_dequantized")
        reshape.input[0] = dq.output[0]
        reshape.output[0] = out
        moved[id(dq)] = reshape
        dropped.add(id(reshape))
    out_nodes: list[onnx.NodeProto] = []
    for n in nodes:
        if id(n) in dropped:
            continue
        out_nodes.append(n)
        if id(n) in moved:
            out_nodes.append(moved[id(n)])
    return out_nodes


def build_qdq(
    graph: Graph, plan: QuantPlan, *, quantized_weights: bool = True, check: bool = True
) -> QDQExport:
    """Build the QDQ model of a calibrated plan and report what was inserted (see module doc).

    ``quantized_weights`` stores weights as int8 initializers with a DequantizeLinear (the
    default); False keeps the float weights behind a Q/DQ pair. ``check`` runs
    ``onnx.checker`` on the result and raises :class:`~fusekit.errors.ExportError` if it fails.
    """
    check_plan_graph(plan, graph, "export")
    with gc_paused():
        result = _Builder(graph, plan, quantized_weights).build()
    # weights left float may still point at the source folder's .data file: read them in, so
    # the model is self-contained wherever it is written (model_files splits it if too large)
    extras = graph.extras if isinstance(graph.extras, ModelExtras) else None
    embed_external_data(
        result.model,
        extras.base_dir if extras is not None else None,
        extras.label if extras is not None else "",
    )
    if check:
        try:
            onnx.checker.check_model(result.model)
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
            raise ExportError(f"the exported model does not pass onnx.checker: {first}") from None
    return result


def export_qdq(
    graph: Graph, plan: QuantPlan, *, quantized_weights: bool = True, check: bool = True
) -> onnx.ModelProto:
    """The QDQ ONNX model of a calibrated ``plan`` over ``graph`` (see :func:`build_qdq`)."""
    model: onnx.ModelProto = build_qdq(
        graph, plan, quantized_weights=quantized_weights, check=check
    ).model
    return model


def save_qdq(
    graph: Graph,
    plan: QuantPlan,
    path: str | os.PathLike[str],
    *,
    quantized_weights: bool = True,
) -> QDQExport:
    """Export and write the QDQ model atomically; returns what :func:`build_qdq` did.

    Nothing is written when export fails.
    """
    res = build_qdq(graph, plan, quantized_weights=quantized_weights)
    write_files_atomic(model_files(res.model, path))  # above 2 GB: weights in <path>.data
    return res


def count_qdq(model: onnx.ModelProto) -> dict[str, int]:
    """Number of QuantizeLinear and DequantizeLinear nodes in a model's main graph."""
    q = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")
    dq = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    return {"QuantizeLinear": q, "DequantizeLinear": dq}


# --------------------------------------------------------------------------------------------
# JSON


def dynamic_ranges(plan: QuantPlan) -> dict[str, float]:
    """Tensor name -> amax for TensorRT's ``ITensor::setDynamicRange(-amax, amax)``.

    Every tensor read or written by a quantized, non-FP32 slot gets its group root's range, an
    OVERLAPPED tensor included (TensorRT fuses it, but wants a range for every tensor of an
    INT8 layer). ``amax = scale * quant_max`` for symmetric schemes, so that TensorRT's
    ``amax / 127`` gives back exactly the plan's scale; asymmetric roots give the larger end
    of their range. The producer's slot wins over consumers'; per-channel roots (weights) and
    INTERNAL slots are left out. Raises :class:`NotCalibrated` if a tensor's root has no scale.
    """
    idx = plan.graph.index
    configs = plan.configs
    roots = plan.root_ids()
    out: dict[str, float] = {}
    order = [idx.op_id[n] for n in plan.graph.order]
    for pass_outputs in (True, False):
        for oid in order:
            if plan.dispatch[oid] is None:
                continue
            sids = idx.output_sids(oid) if pass_outputs else idx.input_sids(oid)
            for sid in sids:
                tid = idx.slot_tensor[sid]
                cfg = configs[sid]
                if tid < 0 or cfg is None or cfg.state == QuantState.FP32:
                    continue
                name = idx.tensor_names[tid]
                if name in out or name in plan.graph.initializers:
                    continue
                tt = plan.graph.value_types.get(name)
                if tt is not None and tt.elem_type not in (0, TensorProto.FLOAT):
                    continue  # an integer tensor the plan quantizes by mistake
                if cfg.visibility == Visibility.INTERNAL:
                    continue
                rcfg = configs[roots[sid]]
                if rcfg.policy.per_channel:
                    continue
                if rcfg.scale is None or rcfg.offset is None:
                    raise NotCalibrated(
                        f"cannot write ranges: tensor {name!r} ({idx.slot_key(sid)}) has no "
                        "scale yet",
                        idx.slot_key(sid),
                    )
                s = float(np.max(rcfg.scale))
                if rcfg.policy.has(QuantProperty.ASYMMETRICAL):
                    lo, hi = scale_range(rcfg, rcfg.scale, rcfg.offset)
                    out[name] = max(abs(lo), abs(hi))
                else:
                    out[name] = s * float(rcfg.quant_max)
    return dict(sorted(out.items()))


def save_ranges(plan: QuantPlan, path: str | os.PathLike[str]) -> dict[str, float]:
    """Write :func:`dynamic_ranges` as a JSON object, atomically; returns the ranges."""
    ranges = dynamic_ranges(plan)
    text = json.dumps(ranges, indent=1)
    write_bytes_atomic(Path(path), text.encode("utf-8"))
    return ranges
