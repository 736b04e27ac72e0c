"""Quantized models in: read a QDQ model as the float graph plus the plan it encodes.

:func:`load_quantized` turns a model that already holds QuantizeLinear/DequantizeLinear (from
onnxruntime's ``quantize_static``, a QAT export, another tool or fusekit itself) into the
``(Graph, QuantPlan)`` pair fusekit works on, so the model's placement can be audited against a
platform's rules (:mod:`fusekit.audit`) and re-placed. The graph is the float network (Q/DQ
removed, integer weights dequantized exactly as DequantizeLinear computes them); the plan holds
every quantization point with its scale, zero point, bit width, signedness and axis.

How the model's Q/DQ become plan slots (what :func:`fusekit.export.export_qdq` reads back):

* a ``Q -> DQ`` pair that every reader of an op's output goes through is a point on the
  producer's output slot (ACTIVATED); the readers' input slots are OVERLAPPED by it;
* a pair only some readers go through (or on a graph input, or on a float initializer) is a
  point on those readers' input slots: the first ACTIVATED, the others OVERLAPPED by it;
* a second pair behind the first (a requantization for one reader) is that reader's own point;
* a DequantizeLinear of an integer initializer (int8/uint8/int16/uint16/int32 biases) is a point
  on the reading slot; the graph gets the dequantized float32 initializer;
* points whose Q/DQ read the same scale and zero-point initializers are one sharing group
  (FOLLOW links to the first point of the group).

Exported again, an unchanged imported plan gives a model whose outputs equal the input's in
onnxruntime with its optimizations off (16-bit points excepted: fusekit's exporter writes 8-bit
and int32 only, and says which slots it left float). QOperator models (QLinearConv,
QLinearMatMul, QGemm, QLinearAdd/Mul/Concat/Sigmoid/LeakyRelu/Softmax/GlobalAveragePool/
AveragePool, and the ops run on quantized tensors directly, MaxPool, Reshape, ...) are first
rewritten to the QDQ form they compute (:func:`_qoperator_to_qdq`). What cannot be represented
is refused with :class:`~fusekit.errors.UnsupportedQuantization` naming it: dynamic quantization
(DynamicQuantizeLinear, MatMulInteger, ConvInteger) and other QLinear ops by type, block-wise
Q/DQ, a Q/DQ chain more than two pairs deep, a scale that is not a constant.

Q/DQ the importer cannot pair (a QuantizeLinear read by something else than a
DequantizeLinear, a DequantizeLinear of a computed integer tensor) stay in the graph as ordinary
ops and are listed in :attr:`QuantizedImport.dangling`; a DequantizeLinear nobody reads is
dropped and listed too.
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from operator import itemgetter
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper
from pyrsistent import pvector

from ._util import gc_paused
from .errors import UnsupportedQuantization
from .graph import Graph, Initializer, Slot
from .guards import QUANTIZATION_OP_TYPES
from .onnx_io import NodeFields, _read, build_graph_from_nodes, copy_fields, load
from .quant import (
    NO_LINK,
    QuantPlan,
    QuantPolicy,
    QuantProperty,
    QuantState,
    TensorQuantConfig,
    _scaled_copy,
)

__all__ = [
    "IMPORTED_PLATFORM",
    "Dangling",
    "Placement",
    "QuantizedImport",
    "import_quantized",
    "load_quantized",
    "placement",
]

#: The dispatch name of the ops an imported plan quantizes (no rule set made the decisions).
IMPORTED_PLATFORM = "imported"

_QDQ_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})
_INT_TYPES: dict[int, tuple[str, int, int, int]] = {
    TensorProto.INT8: ("int8", 8, -128, 127),
    TensorProto.UINT8: ("uint8", 8, 0, 255),
    TensorProto.INT16: ("int16", 16, -(2**15), 2**15 - 1),
    TensorProto.UINT16: ("uint16", 16, 0, 2**16 - 1),
    TensorProto.INT32: ("int32", 32, -(2**31), 2**31 - 1),
    TensorProto.INT4: ("int4", 4, -8, 7),
    TensorProto.UINT4: ("uint4", 4, 0, 15),
}


@attrs.frozen
class Dangling:
    """A Q/DQ node the importer could not pair: ``kind`` is ``"q_without_dq"``,
    ``"dq_without_q"`` (both kept in the graph as ordinary ops) or ``"dq_unread"`` (dropped)."""

    kind: str
    node: str
    tensor: str


@attrs.frozen
class QuantizedImport:
    """What :func:`import_quantized` read: the float graph, the plan, and what it left aside.

    ``scale_names`` maps each root slot of the plan to the scale initializer its Q/DQ read
    (how sharing groups were found); ``source`` names the model.
    """

    graph: Graph
    plan: QuantPlan
    dangling: tuple[Dangling, ...] = ()
    scale_names: tuple[tuple[Slot, str], ...] = ()
    source: str = ""


@attrs.frozen
class _Params:
    """One Q/DQ node's parameters, by value (``key``) and by initializer name (``names``)."""

    dtype: int
    scale: np.ndarray[Any, Any] = attrs.field(eq=False)
    zero: np.ndarray[Any, Any] = attrs.field(eq=False)
    axis: int | None
    names: tuple[str, str]
    #: the parameters by value, ``(dtype, scale as float32 bytes, scale shape, zero point as
    #: int64 bytes, axis)``: computed once (pairs are matched and grouped by it); given by a
    #: reader that has the bytes already, else computed here
    key: tuple[Any, ...] = attrs.field(default=(), eq=False)

    def __attrs_post_init__(self) -> None:
        if self.key:
            return
        scale, zero = self.scale, self.zero
        key = (
            self.dtype,
            (scale if scale.dtype == _F32 else scale.astype(np.float32)).tobytes(),
            scale.shape,
            (zero if zero.dtype == _I64 else zero.astype(np.int64)).tobytes(),
            self.axis,
        )
        object.__setattr__(self, "key", key)


_F32, _I64 = np.dtype(np.float32), np.dtype(np.int64)


class _Reader:
    """Constant values and Q/DQ parameters of one model."""

    def __init__(self, m: ModelProto, label: str, base_dir: str | None, nd: _Nodes):
        self.label = label
        self.base_dir = base_dir
        g = m.graph
        self.inits = {t.name: t for t in g.initializer}
        # the Constant nodes from the fields already read (``nd``: no protobuf access per node)
        self.constants: dict[str, onnx.NodeProto] = {
            nd.outs[i][0]: nd.protos[i]
            for i in nd.constants
            if nd.types[i] == "Constant"
            and len(nd.outs[i]) == 1
            and nd.protos[i].domain in ("", "ai.onnx")
        }
        self.opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 21)
        self._values: dict[str, np.ndarray[Any, Any]] = {}
        self._params: dict[int, _Params] = {}  # id(node) -> params; the nodes outlive this
        self._shared: dict[tuple[Any, ...], _Params] = {}  # (scale, zero point, attributes)

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.constants

    def value(self, name: str, node: onnx.NodeProto) -> np.ndarray[Any, Any]:
        got = self._values.get(name)
        if got is not None:
            return got
        t = self.inits.get(name)
        if t is None and name in self.constants:
            c = self.constants[name]
            a = next((a for a in c.attribute if a.name == "value"), None)
            if a is not None:
                t = a.t
        if t is None:
            raise UnsupportedQuantization(
                f"node {node.name or node.op_type!r} ({node.op_type}) reads {name!r}, which is "
                "computed, not a constant: only constant scales, zero points and quantized "
                "weights can be imported",
                self.label,
            )
        arr = _fast_array(t)
        if arr is None:
            arr = np.asarray(numpy_helper.to_array(t, self.base_dir or ""))
        self._values[name] = arr
        return arr

    def params(self, n: onnx.NodeProto, ins: tuple[str, ...] | None = None) -> _Params:
        """The parameters of a QuantizeLinear/DequantizeLinear node (read once per node;
        ``ins``: its inputs when already read).

        A Q and its DQs read the same scale and zero point initializers with the same
        attributes: such nodes share one :class:`_Params` (read once, one ``key``), which also
        lets the plan builder share one config per point.
        """
        got = self._params.get(id(n))
        if got is not None:
            return got
        if ins is None:
            ins = tuple(n.input)
        shared: tuple[Any, ...] | None = None
        if len(ins) > 2 and ins[2]:
            at = n.attribute
            if not at:  # the common case: no attribute to read
                shared = (ins[1], ins[2], ())
            elif all(a.type == _INT_ATTR for a in at):
                # with a zero point input, the parameters depend on these names and attributes
                shared = (ins[1], ins[2], tuple(sorted((a.name, a.i) for a in at)))
            if shared is not None:
                got = self._shared.get(shared)
        if got is None:
            got = self._read_params(n, ins)
            if shared is not None:
                self._shared[shared] = got
        self._params[id(n)] = got
        return got

    def _read_params(self, n: onnx.NodeProto, ins: tuple[str, ...]) -> _Params:
        # each protobuf field read builds a wrapper: inputs read once, the label only to raise
        at = n.attribute
        if not at and len(ins) == 3 and ins[1] and ins[2]:
            got = self._scalar_params(ins)
            if got is not None:
                return got
        attrs_ = {a.name: helper.get_attribute_value(a) for a in at} if at else {}

        def label() -> str:
            return f"node {n.name or n.op_type!r} ({n.op_type})"

        if int(attrs_.get("block_size", 0) or 0) > 0:
            raise UnsupportedQuantization(
                f"{label()} is block-wise (block_size={attrs_['block_size']}): fusekit plans "
                "per-tensor and per-axis quantization only",
                self.label,
            )
        if len(ins) < 2 or not ins[1]:
            raise UnsupportedQuantization(f"{label()} has no scale input", self.label)
        scale = np.asarray(self.value(ins[1], n), dtype=np.float32)
        if len(ins) > 2 and ins[2]:
            zp_arr = self.value(ins[2], n)
            zp_init = self.inits.get(ins[2])
            dtype = zp_init.data_type if zp_init is not None else None
            if dtype is None:
                dtype = onnx.helper.np_dtype_to_tensor_dtype(zp_arr.dtype)
            zero = np.asarray(zp_arr).astype(np.int64)
            zname = ins[2]
        else:
            if n.op_type == "DequantizeLinear" and self.is_const(ins[0]):
                dtype = self._const_type(ins[0], n)
            else:
                dtype = int(attrs_.get("output_dtype", 0) or 0) or TensorProto.UINT8
            zero = np.zeros(scale.shape, np.int64)
            zname = ""
        if dtype not in _INT_TYPES:
            raise UnsupportedQuantization(
                f"{label()} quantizes to {TensorProto.DataType.Name(dtype).lower()}: fusekit "
                "imports int8, uint8, int16, uint16, int4, uint4 (and int32 biases)",
                self.label,
            )
        axis: int | None = None
        if scale.size > 1 or (scale.ndim == 1 and self.opset >= 13 and scale.size > 1):
            axis = int(attrs_.get("axis", 1))
        return _Params(dtype, scale, zero, axis, (ins[1], zname))

    def _scalar_params(self, ins: tuple[str, ...]) -> _Params | None:
        """The parameters of the common per-tensor case (a float32 scale and an 8/16-bit zero
        point, scalar initializers, no attribute), or None for :meth:`_read_params` to read.

        The values come from the tensor fields straight (no numpy decoding, which costs a
        third of importing a large model): the same ``_Params`` as the general reader's.
        """
        ts, tz = self.inits.get(ins[1]), self.inits.get(ins[2])
        if ts is None or tz is None or ts.data_type != _FLOAT:
            return None
        dtype = tz.data_type
        if dtype not in _SCALAR_FORMATS:
            return None
        sv, zv = _scalar(ts, _FLOAT), _scalar(tz, dtype)
        if sv is None or zv is None:
            return None
        scale, zero = np.array(sv, np.float32), np.array(zv, np.int64)
        # the key ``_Params`` computes, from the values (``=``: native order, as ``tobytes``)
        key = (dtype, _PACK_F32(sv), (), _PACK_I64(zv), None)
        return _Params(dtype, scale, zero, None, (ins[1], ins[2]), key)

    def _const_type(self, name: str, node: onnx.NodeProto) -> int:
        t = self.inits.get(name)
        if t is not None:
            return int(t.data_type)
        return int(onnx.helper.np_dtype_to_tensor_dtype(self.value(name, node).dtype))


_INT_ATTR = onnx.AttributeProto.INT
_FLOAT, _EXTERNAL = TensorProto.FLOAT, TensorProto.EXTERNAL

#: little-endian struct formats of the scalar types :func:`_scalar` reads from ``raw_data``
_SCALAR_FORMATS: dict[int, struct.Struct] = {
    TensorProto.FLOAT: struct.Struct("<f"),
    TensorProto.INT8: struct.Struct("<b"),
    TensorProto.UINT8: struct.Struct("<B"),
    TensorProto.INT16: struct.Struct("<h"),
    TensorProto.UINT16: struct.Struct("<H"),
}


_PACK_F32, _PACK_I64 = struct.Struct("=f").pack, struct.Struct("=q").pack


def _scalar(t: TensorProto, data_type: int) -> float | int | None:
    """The value of a scalar (``dims`` empty) float32 or 8/16-bit initializer held in the
    file (``data_type``: its type, read already), or None (another shape or type, external
    data: :func:`_fast_array` reads those)."""
    fmt = _SCALAR_FORMATS.get(data_type)
    if fmt is None or len(t.dims) or t.data_location == _EXTERNAL or t.HasField("segment"):
        return None
    raw = t.raw_data
    if raw:
        if len(raw) != fmt.size:
            return None
        v: float | int = fmt.unpack(raw)[0]
        return v
    if data_type == _FLOAT:
        return t.float_data[0] if len(t.float_data) == 1 else None
    return t.int32_data[0] if len(t.int32_data) == 1 else None  # 8/16-bit scalars live there


#: numpy types of the tensor types :func:`_fast_array` reads from ``raw_data``
_RAW_TYPES: dict[int, Any] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT16: np.int16,
    TensorProto.UINT16: np.uint16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
}


def _fast_array(t: TensorProto) -> np.ndarray[Any, Any] | None:
    """``t``'s value for the common case (raw little-endian data or a float scalar in
    ``float_data``), or None for ``numpy_helper.to_array`` to read.

    A quantized model has one scale and one zero point per Q/DQ; ``to_array``'s generality
    costs ~15 us each, a third of importing a large model.
    """
    data_type = t.data_type
    dt = _RAW_TYPES.get(data_type)
    if dt is None or t.data_location == TensorProto.EXTERNAL or t.HasField("segment"):
        return None
    dims = tuple(t.dims)
    raw = t.raw_data
    if raw:
        a = np.frombuffer(raw, dtype=_RAW_LE[data_type])
        if a.size != math.prod(dims):
            return None
        return a.astype(dt).reshape(dims)
    if dims:
        return None
    if t.data_type == TensorProto.FLOAT and len(t.float_data) == 1:
        return np.array(t.float_data[0], np.float32)
    if t.data_type in _INT32_DATA and len(t.int32_data) == 1:  # 8/16-bit scalars live there
        return np.array(t.int32_data[0], dt)
    return None


#: the little-endian dtypes of raw_data (numpy dtype objects built once: ``np.dtype(...)`` and
#: ``newbyteorder`` cost a microsecond each, per scale and zero point)
_RAW_LE: dict[int, np.dtype[Any]] = {
    k: np.dtype(v).newbyteorder("<") for k, v in _RAW_TYPES.items()
}

_INT32_DATA = frozenset(
    {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32}
)


def _refuse_qoperator(types: list[str], label: str, kinds: set[str] | None = None) -> None:
    """Refuse QOperator nodes (``types``: op types, "" outside the ONNX/com.microsoft domains;
    ``kinds``: the distinct ones, when known)."""
    bad = {
        t
        for t in (set(types) if kinds is None else kinds)  # the test per distinct type
        if (t in QUANTIZATION_OP_TYPES or t.startswith("QLinear"))
        and t not in ("QuantizeLinear", "DequantizeLinear")
    }
    if bad:
        found = Counter(t for t in types if t in bad)
        listed = ", ".join(f"{t} x{c}" for t, c in sorted(found.items()))
        raise UnsupportedQuantization(
            f"QOperator-format model: fusekit cannot read these op types: {listed}; "
            "export it in QDQ format (onnxruntime: quantize_static(..., "
            "quant_format=QuantFormat.QDQ)) and import that",
            label,
        )


def _dequantize(q: np.ndarray[Any, Any], p: _Params, rank: int) -> np.ndarray[Any, Any]:
    """``(q - zero_point) * scale`` in float32, as DequantizeLinear computes it."""
    s, z = p.scale.astype(np.float32), p.zero.astype(np.int64)
    if p.axis is not None:
        shape = [1] * rank
        shape[p.axis % rank] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    diff = np.asarray(q, dtype=np.int64) - z
    return np.asarray(diff.astype(np.float32) * s, dtype=np.float32)


#: (per channel, symmetric) -> the policy of an imported point (built once: ``QuantPolicy.of``
#: converts enum flags, a few microseconds per point)
_POLICIES: dict[tuple[bool, bool], QuantPolicy] = {
    (pc, sym): QuantPolicy.of(
        QuantProperty.LINEAR,
        QuantProperty.PER_CHANNEL if pc else QuantProperty.PER_TENSOR,
        QuantProperty.SYMMETRICAL if sym else QuantProperty.ASYMMETRICAL,
    )
    for pc in (False, True)
    for sym in (False, True)
}


#: (integer type, axis, symmetric, state) -> a config without scale (the converters and
#: validators run once per kind; each point copies it with its own scale, ``with_scale``)
_TEMPLATES: dict[tuple[int, int | None, bool, QuantState], TensorQuantConfig] = {}


def _config(p: _Params, rank: int | None, state: QuantState) -> TensorQuantConfig:
    """The config of a point with parameters ``p`` (``rank``: its tensor's, read only for a
    negative axis): a copy of one template per kind with the point's own read-only arrays."""
    _name, bits, lo, hi = _INT_TYPES[p.dtype]
    sym = lo < 0 and not p.key[3].strip(b"\0")  # the zero point's int64 bytes: all zero
    axis = p.axis
    if axis is not None and axis < 0 and rank is not None:
        axis += rank
    key = (p.dtype, axis, sym, state)
    template = _TEMPLATES.get(key)
    if template is None:
        template = _TEMPLATES[key] = TensorQuantConfig(
            policy=_POLICIES[axis is not None, sym],
            num_bits=bits,
            quant_min=lo,
            quant_max=hi,
            channel_axis=axis,
            observer="imported",
            state=state,
        )
    # per axis: one value per channel; per tensor: a scalar
    shape: Any = -1 if axis is not None else ()
    scale = np.array(p.scale, _F32).reshape(shape)
    scale.setflags(write=False)
    if sym and axis is None and p.zero.size == 1:
        offset = _ZERO_OFFSET  # a symmetric point's zero point: one shared read-only 0.0
    else:
        offset = p.zero.astype(_F32).reshape(shape)
        offset.setflags(write=False)
    return _scaled_copy(template, scale, offset, state)


_ZERO_OFFSET = np.zeros((), np.float32)
_ZERO_OFFSET.setflags(write=False)


@attrs.define
class _Point:
    """One quantization point found in the model, before the graph exists."""

    params: _Params
    kind: str  # "after" | "before" | "param"
    tensor: str  # the float tensor's name in the imported graph
    #: (model node, input index) of the reading slots
    readers: list[tuple[int, int]] = attrs.field(factory=list)
    #: (model node, output index) of the producer's slot; node -1: the Clip restored in front of
    #: a clamping Q (the op writing ``tensor``)
    producer: tuple[int, int] | None = None


def import_quantized(
    source: str | os.PathLike[str] | bytes | ModelProto,
    *,
    restore_clamps: bool = False,
    platform: str | None = None,
) -> QuantizedImport:
    """Read a QDQ model as its float graph, the plan its Q/DQ encode, and what was left aside.

    See the module docstring for how Q/DQ map to slots. Raises
    :class:`~fusekit.errors.UnsupportedQuantization` (QOperator nodes, block-wise, chains
    deeper than two pairs, computed scales) and whatever :func:`fusekit.load` raises.

    ``restore_clamps``: a per-tensor pair after a producer whose zero point is the lowest
    integer (uint8 with zero point 0) clamps negative values, and quantizers drop the ``Relu``
    or ``Clip(0, 6)`` it replaces (``quantize_static`` does). With this option the graph gets
    that clamp back as ``Clip(0, top of the Q's range)`` (named ``<tensor>_Clip``), the point
    sitting on its output: the float graph then computes what the model computes (without it,
    a HardSwish whose Clip was folded runs unbounded and can overflow), and a re-placement in a
    symmetric scheme keeps the clamp. Outputs are unchanged (the Q clamps to the same range).
    Off by default, so that
    the import of a model is exactly what it holds; ``fusekit audit`` and ``fix`` turn it on.

    ``platform``: the rule set the model was placed for, when known. The plan's quantized ops
    are then dispatched to it instead of ``"imported"``, so that ``export_qdq`` of the import
    applies that platform's export conventions again (``ort_int8``'s node units: the float
    readers of a standalone op's quantized output read its float value).
    """
    dispatch = IMPORTED_PLATFORM
    if platform is not None:
        from .platforms import get_platform

        dispatch = get_platform(platform).name
    # millions of small objects, no cycles; promoted at the end (see fusekit._util.gc_paused)
    with gc_paused(promote=True):
        return _import(source, restore_clamps, dispatch)


def _import(
    source: str | os.PathLike[str] | bytes | ModelProto,
    restore_clamps: bool,
    dispatch: str = IMPORTED_PLATFORM,
) -> QuantizedImport:
    m, label, base_dir = _read(source)
    if not m.HasField("graph"):
        return _plain(load(m), label)
    g = m.graph
    nd = _Nodes.read(g)
    op_kinds = set(nd.types)  # the distinct op types (a set built in C)
    if _is_qoperator(op_kinds):  # QLinearConv, QGemm, ...: the QDQ form it computes
        m = _qoperator_to_qdq(m, nd, label, base_dir)
        g = m.graph
        nd = _Nodes.read(g)
        op_kinds = set(nd.types)
    _refuse_qoperator(nd.types, label, op_kinds)
    rd = _Reader(m, label, base_dir, nd)
    nodes, node_ins, node_outs = nd.protos, nd.ins, nd.outs
    kinds = {"QuantizeLinear": 1, "DequantizeLinear": 2}
    qdq = [kinds.get(t, 0) for t in nd.types]  # 1 QuantizeLinear, 2 DequantizeLinear, else 0
    # tensor -> its (reader, input index), tensor -> its producer (read with the fields)
    readers, producer, sorted_file = nd.readers, nd.producer, nd.sorted_file
    outputs = [o.name for o in g.output]
    out_set = set(outputs)

    removed: set[int] = set()
    dangling: list[Dangling] = []
    alias: dict[str, tuple[str, int, int]] = {}  # DQ output -> (Q input, Q node, level)
    q_params: dict[int, _Params] = {}
    dq_of: dict[int, list[str]] = {}  # a pair's Q -> the outputs of its DQ nodes
    param_dq: dict[int, _Params] = {}

    def nm(i: int) -> str:
        return nd.names[i] or f"{nd.types[i] or nodes[i].op_type}#{i}"

    # 1. DequantizeLinear of integer constants: quantized weights and biases
    for i, kind in enumerate(qdq):
        if kind == 2 and node_ins[i] and rd.is_const(node_ins[i][0]):
            param_dq[i] = rd.params(nodes[i], node_ins[i])
            removed.add(i)
    # 2. Q nodes read only by DQ nodes with the same parameters: pairs (in node order, so a
    #    pair behind a pair sees its source already resolved when the file is sorted)
    order = range(len(node_ins)) if sorted_file else _topo(node_ins, producer)
    for i in order:
        if qdq[i] != 1:
            continue
        n = nodes[i]
        out = node_outs[i][0]
        rs = readers.get(out, [])
        paired = bool(rs) and out not in out_set
        for j, _ in rs:
            if qdq[j] != 2:
                paired = False
                break
        if not paired:
            dangling.append(Dangling("q_without_dq", nm(i), node_ins[i][0]))
            continue
        p = rd.params(n, node_ins[i])
        q_ins = node_ins[i][1:3]
        plain_q = len(q_ins) == 2 and bool(q_ins[1]) and not n.attribute
        for j, _ in rs:
            if plain_q and node_ins[j][1:3] == q_ins and not nodes[j].attribute:
                continue  # the Q's own scale and zero point initializers: the same parameters
            if rd.params(nodes[j], node_ins[j]).key != p.key:
                raise UnsupportedQuantization(
                    f"{nm(j)} dequantizes {out!r} with other parameters than {nm(i)} "
                    "quantized it with: not a Q/DQ pair fusekit can represent",
                    label,
                )
        src = node_ins[i][0]
        level = 1
        if src in alias:
            src, _, lv = alias[src]
            level = lv + 1
        if level > 2:
            raise UnsupportedQuantization(
                f"{nm(i)} requantizes a value already quantized twice: fusekit represents "
                "at most a pair after the producer and one per reader",
                label,
            )
        q_params[i] = p
        removed.add(i)
        dq_outs: list[str] = []
        dq_of[i] = dq_outs
        for j, _ in rs:
            removed.add(j)
            dq_out = node_outs[j][0]
            dq_outs.append(dq_out)
            alias[dq_out] = (src, i, level)
            if not readers.get(dq_out) and dq_out not in out_set:
                dangling.append(Dangling("dq_unread", nm(j), src))
    for i, kind in enumerate(qdq):
        if kind == 2 and i not in removed:
            ins = node_ins[i]
            dangling.append(Dangling("dq_without_q", nm(i), ins[0] if ins else ""))

    # 3. per float value: the pairs after its producer or in front of some readers
    rename: dict[str, str] = {}
    points: list[_Point] = []
    relus: list[tuple[str, float]] = []
    by_src: dict[str, list[int]] = {}
    for i in q_params:
        src = node_ins[i][0]
        by_src.setdefault(alias[src][0] if src in alias else src, []).append(i)
    direct_memo: dict[str, list[tuple[int, int]]] = {}
    first_out = [outs[0] if outs else "" for outs in node_outs]

    def direct_readers(t: str) -> list[tuple[int, int]]:
        """The readers of ``t`` that stay in the graph (not a removed Q/DQ)."""
        got = direct_memo.get(t)
        if got is None:
            got = direct_memo[t] = [(j, k) for j, k in readers.get(t, ()) if j not in removed]
        return got

    kept_float: set[str] = set()  # values with a point after the producer
    entry_ops: set[str] = set()  # (first outputs of) ops whose float output readers bypass
    nonneg_memo: dict[str, bool] = {}

    def nonneg(t: str, depth: int = 0) -> bool:
        """True when tensor ``t`` is never negative by construction: written by a Relu,
        Sigmoid, ..., a Clip at zero, the DequantizeLinear of a clamping Q, or a passive op
        (MaxPool, Reshape, Concat, ...) of such values. A clamping Q after it folded no Relu."""
        got = nonneg_memo.get(t)
        if got is not None:
            return got
        chain: list[str] = []
        result = False
        while True:
            known = nonneg_memo.get(t)
            if known is not None:
                result = known
                break
            chain.append(t)
            j = producer.get(t)
            if j is None:
                break
            op = nd.types[j]
            if op in _NON_NEGATIVE or _clips_at_zero(rd, nodes[j], op):
                result = True
                break
            ins = node_ins[j]
            if op == "DequantizeLinear" and ins and ins[0] in producer:
                qj = producer[ins[0]]
                if nd.types[qj] == "QuantizeLinear" and _clamps(rd.params(nodes[qj])):
                    result = True
                    break
                t = node_ins[qj][0] if nd.types[qj] == "QuantizeLinear" else ""
                if not t:
                    break
                continue
            if op == "Concat" and depth < 50:
                result = bool(ins) and all(nonneg(x, depth + 1) for x in ins)
                break
            if op in _NONNEG_PASSIVE and ins and ins[0]:
                t = ins[0]
                continue
            break
        for c in chain:
            nonneg_memo[c] = result
        return result

    def readers_of(q: int) -> list[tuple[int, int]]:
        return [rj for d in dq_of[q] for rj in direct_readers(d)]

    for src, qs in by_src.items():
        if len(qs) == 1:  # the common case: one pair on the value
            level1, level2 = (qs, []) if node_ins[qs[0]][0] == src else ([], qs)
        else:
            level1 = [q for q in qs if node_ins[q][0] == src]
            level2 = [q for q in qs if q not in level1]
        prod = producer.get(src)
        after = (
            bool(level1)
            and prod is not None
            and prod not in removed
            and not rd.is_const(src)
            and src not in out_set
            and (len(level1) == 1 or len({q_params[q].key for q in level1}) == 1)
        )
        # (one pair: its DQ outputs as they are, never modified here)
        outs1 = dq_of[level1[0]] if len(level1) == 1 else [d for q in level1 for d in dq_of[q]]
        if after and direct_readers(src):
            # read both as it is and through the pair: a point after the producer only when
            # fusekit's exporter wrote it so (``X_float -> Q -> DQ -> X``, the float readers
            # of a standalone op's output reading ``X_float``); those readers stay float
            after = len(outs1) == 1 and _producer_side_name(src, outs1[0])
            if after and prod is not None:
                entry_ops.add(first_out[prod])  # a node unit running in float (see _plan)
        if after and all(_reader_side_name(d, src) for d in outs1):
            after = False  # fusekit's own export named it a pair in front of the readers
        canonical = src
        if after:
            graph_outs = [d for d in outs1 if d in out_set]
            if len(set(graph_outs)) > 1:
                raise UnsupportedQuantization(
                    f"graph outputs {sorted(set(graph_outs))} are one quantized value: not "
                    "representable as one float tensor",
                    label,
                )
            if graph_outs:
                canonical = graph_outs[0]
            elif len(outs1) == 1:
                canonical = outs1[0]
        else:
            bad = [d for q in qs for d in dq_of[q] if d in out_set]
            if bad or level2:
                raise UnsupportedQuantization(
                    f"tensor {src!r} is read both as it is and through Q/DQ "
                    f"{'by graph output ' + repr(bad[0]) if bad else 'twice in a row'}: not "
                    "a placement fusekit can represent",
                    label,
                )
        if canonical != src:
            rename[src] = canonical
        for q in qs:
            for d in dq_of[q]:
                if d != canonical:
                    rename[d] = canonical
        assert prod is not None or not after
        if after:
            assert prod is not None
            p0 = _Point(
                q_params[level1[0]], "after", canonical, [], (prod, node_outs[prod].index(src))
            )
            if (
                restore_clamps
                and _clamps(p0.params)
                and not nonneg(src)
                and not _all_clamp(rd, nd, [r for q in level1 for r in readers_of(q)])
            ):
                relus.append((canonical, _top(p0.params)))
                p0.producer = (-1, 0)
            for q in level1:
                p0.readers.extend(readers_of(q))
            points.append(p0)
            kept_float.add(src)
            for q in level2:
                points.append(_Point(q_params[q], "before", canonical, readers_of(q)))
        else:
            for q in level1:
                points.append(_Point(q_params[q], "before", canonical, readers_of(q)))

    # a pair after its producer that only float readers bypass is a point, not unread
    dangling = [d for d in dangling if d.kind != "dq_unread" or d.tensor not in kept_float]

    # 4. quantized constants: one float initializer per (integer initializer, parameters)
    new_inits: list[Initializer] = []
    input_names = {vi.name for vi in g.input}
    new_names: set[str] = set()  # names this step takes

    def in_use(t: str) -> bool:
        return (
            t in new_names
            or t in readers
            or t in producer
            or t in rd.inits
            or t in out_set
            or t in input_names
        )

    def used_names() -> set[str]:  # every name in use (for fresh names: rarely needed)
        return set(readers) | set(producer) | set(rd.inits) | out_set | input_names | new_names

    made: dict[tuple[Any, ...], str] = {}
    for i, p in param_dq.items():
        n = nodes[i]
        src, dq_out = node_ins[i][0], node_outs[i][0]
        key = (src, p.key)
        fname = made.get(key)
        if fname is None:
            qv = rd.value(src, n)
            value = _dequantize(qv, p, max(qv.ndim, 1)).reshape(qv.shape)
            stripped = src[: -len("_quantized")] if src.endswith("_quantized") else ""
            if stripped and _requantizes_to(rd, stripped, n, qv, p):
                fname = stripped  # the float original is still there (read as it is too)
                made[key] = fname
            else:
                if dq_out in out_set or not stripped or in_use(stripped):
                    fname = dq_out
                else:
                    fname = stripped
                    new_names.add(fname)
                made[key] = fname
                new_inits.append(Initializer.from_array(fname, value))
        if dq_out != fname:
            rename[dq_out] = fname
        points.append(_Point(p, "param", fname, list(direct_readers(dq_out))))

    # 5. the float graph, straight from the node fields (no float model written and read back)
    pre: dict[str, str] = {}
    rows: tuple[list[int], list[str]] = ([], [])  # the graph's ops: model node, name
    graph = _float_graph(
        m, nd, removed, rename, new_inits, used_names, label, base_dir, relus, pre, rows, rd.inits
    )
    plan, scale_names = _plan(
        graph, points, rd, rename, pre, dispatch, entry_ops, first_out, rows[0], rows[1]
    )
    return QuantizedImport(graph, plan, tuple(dangling), scale_names, label)


def load_quantized(
    source: str | os.PathLike[str] | bytes | ModelProto,
    *,
    restore_clamps: bool = False,
    platform: str | None = None,
) -> tuple[Graph, QuantPlan]:
    """``(graph, plan)`` of a QDQ model: the float network and the placement it encodes.

    See :func:`import_quantized` (which also lists the Q/DQ it could not pair).
    """
    got = import_quantized(source, restore_clamps=restore_clamps, platform=platform)
    return got.graph, got.plan


def _producer_side_name(src: str, dq_output: str) -> bool:
    """True when ``src`` is the name fusekit's exporter gives a producer's renamed output
    (``X_float``, or ``X_float_N`` when that was taken) for the pair after it writing ``X``."""
    base = f"{dq_output}_float"
    return src == base or (src.startswith(base + "_") and src[len(base) + 1 :].isdigit())


def _reader_side_name(dq_output: str, src: str) -> bool:
    """True for the name fusekit's exporter gives a pair in front of a tensor's readers.

    A pair every reader goes through means the same whether it sits after the producer or in
    front of the readers; fusekit's exporter writes ``X -> Q -> DQ -> X_dequantized`` for the
    second and ``X_float -> Q -> DQ -> X`` for the first, so its own exports come back as the
    plan they came from. Other tools' pairs are read as points after the producer.
    """
    base = f"{src}_dequantized"
    return dq_output == base or (
        dq_output.startswith(base + "_") and dq_output[len(base) + 1 :].isdigit()
    )


#: Op types whose output is never negative: a clamping Q after them replaced no Relu/Clip.
_NON_NEGATIVE = frozenset(
    {"Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs", "Exp", "Sqrt", "Softplus", "Shape", "Size"}
)


def _clips_at_zero(rd: _Reader, n: onnx.NodeProto, op_type: str) -> bool:
    """True for a ``Clip`` whose lower bound is a constant >= 0: its output is never negative,
    so a clamping Q after it folded nothing (a clamp restored by an earlier import and written
    out by ``fix``: restoring another would make ``fix`` of a fixed model change it)."""
    if op_type != "Clip":
        return False
    if len(n.input) > 1:
        lo = n.input[1]
        if not lo or not rd.is_const(lo):
            return False
        return bool(np.all(np.asarray(rd.value(lo, n)) >= 0))
    at = {a.name: a for a in n.attribute}
    return "min" in at and at["min"].f >= 0


#: Ops whose output is a selection, average or rearrangement of input 0's values: never
#: negative when that input is not.
_NONNEG_PASSIVE = frozenset(
    {
        "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten",
        "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "Resize", "Identity", "Split",
        "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "ReduceMax", "ReduceMean",
    }
)  # fmt: skip


def _all_clamp(rd: _Reader, nd: _Nodes, readers: list[tuple[int, int]]) -> bool:
    """True when there are readers and every one clamps at zero itself (a Relu, a Clip with a
    lower bound >= 0): a clamping Q in front of them folded nothing."""
    return bool(readers) and all(
        k == 0 and (nd.types[j] == "Relu" or _clips_at_zero(rd, nd.protos[j], nd.types[j]))
        for j, k in readers
    )


def _clamps(p: _Params) -> bool:
    """True for a per-tensor Q whose zero point is its lowest integer: negatives clamp to 0."""
    lo = _INT_TYPES[p.dtype][2]
    return p.scale.size == 1 and bool(np.all(p.zero == lo))


def _top(p: _Params) -> float:
    """The largest value the Q represents: ``scale * (qmax - zero_point)`` in float32."""
    hi = _INT_TYPES[p.dtype][3]
    z = int(np.asarray(p.zero).reshape(-1)[0])
    return float(np.float32(np.asarray(p.scale).reshape(-1)[0]) * np.float32(hi - z))


def _requantizes_to(
    rd: _Reader, name: str, node: onnx.NodeProto, q: np.ndarray[Any, Any], p: _Params
) -> bool:
    """True when float initializer ``name`` quantizes to exactly ``q`` with ``p``.

    fusekit's export keeps a weight's float initializer when another reader takes it
    unquantized; the quantized reader then reads that very weight, not a dequantized copy.
    """
    t = rd.inits.get(name)
    if t is None or t.data_type != TensorProto.FLOAT or tuple(t.dims) != q.shape:
        return False
    v = np.asarray(rd.value(name, node), np.float32)
    s, z = p.scale.astype(np.float32), p.zero.astype(np.float64)
    if p.axis is not None:
        shape = [1] * max(v.ndim, 1)
        shape[p.axis % len(shape)] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    lo, hi = _INT_TYPES[p.dtype][2:]
    back = np.clip(np.round((v / s).astype(np.float64)) + z, lo, hi)
    return bool(np.array_equal(back, np.asarray(q, np.float64)))


def _plain(graph: Graph, label: str) -> QuantizedImport:
    return QuantizedImport(graph, QuantPlan.empty(graph), source=label)


def _topo(nodes: list[tuple[str, ...]], producer: dict[str, int]) -> list[int]:
    """Node indices (``nodes``: each node's inputs) in a topological order (file order when it
    already is one)."""
    get = producer.get
    if all(get(t, -1) < i for i, ins in enumerate(nodes) for t in ins):
        return list(range(len(nodes)))  # sorted, as ONNX requires: one pass, no walk
    state = [0] * len(nodes)
    out: list[int] = []
    for start in range(len(nodes)):
        if state[start]:
            continue
        stack = [(start, 0)]
        while stack:
            i, k = stack.pop()
            ins = nodes[i]
            if k == 0:
                if state[i]:
                    continue
                state[i] = 1
            if k < len(ins):
                stack.append((i, k + 1))
                j = producer.get(ins[k])
                if j is not None and not state[j]:
                    stack.append((j, 0))
                continue
            state[i] = 2
            out.append(i)
    return out


@attrs.frozen
class _Nodes:
    """The model's nodes with the fields the importer reads, read once (every protobuf field
    access builds a wrapper object: on a 200k-node model that dominated the import)."""

    protos: list[onnx.NodeProto]
    ins: list[tuple[str, ...]]
    outs: list[tuple[str, ...]]
    types: list[str]  # op_type, "" outside the ONNX and com.microsoft domains
    names: list[str]
    op_types: list[str]  # as in the node
    domains: list[str]
    #: tensor -> its (reader, input index), in node order
    readers: dict[str, list[tuple[int, int]]]
    producer: dict[str, int]  # tensor -> the node writing it
    #: whether the file order is topological (no name read before it is written, none twice)
    sorted_file: bool
    constants: list[int]  # the nodes whose op_type is "Constant" (any domain)

    @classmethod
    def read(cls, g: onnx.GraphProto) -> _Nodes:
        """The fields, then the readers and producers of every tensor and whether the file is
        sorted (one loop over the fields read).

        Each field is read by a comprehension of its own: a comprehension appends in the
        interpreter loop, a ``for`` loop calls ``append`` per field (measured on 200k nodes:
        0.13 s of the 0.9 s this takes).
        """
        protos = list(g.node)
        # slicing first: a third faster than iterating the container
        ins = [tuple(n.input[:]) for n in protos]
        outs = [tuple(n.output[:]) for n in protos]
        op_types = [n.op_type for n in protos]
        domains = [n.domain for n in protos]
        names = [n.name for n in protos]
        qdq_domains = _QDQ_DOMAINS
        types = [t if d in qdq_domains else "" for t, d in zip(op_types, domains, strict=True)]
        constants = [i for i, t in enumerate(op_types) if t == "Constant"]
        # a defaultdict while it is built (the append runs in C); a plain mapping after, where
        # a missing key raises again
        readers: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        producer: dict[str, int] = {}
        unwritten: set[str] = set()  # names read before any node wrote them
        writes = 0  # more than len(producer): a name written twice (load refuses it, unsorted)
        for i, n_ins in enumerate(ins):
            for k, t in enumerate(n_ins):
                if t:
                    readers[t].append((i, k))
                    if t not in producer:
                        unwritten.add(t)
            for t in outs[i]:
                if t:
                    producer[t] = i
                    writes += 1
        readers.default_factory = None
        sorted_file = writes == len(producer) and unwritten.isdisjoint(producer)
        return cls(
            protos,
            ins,
            outs,
            types,
            names,
            op_types,
            domains,
            readers,
            producer,
            sorted_file,
            constants,
        )


def _float_graph(
    m: ModelProto,
    nodes: _Nodes,
    removed: set[int],
    rename: dict[str, str],
    new_inits: Iterable[Initializer],
    taken: Callable[[], set[str]],
    label: str,
    base_dir: str | None,
    relus: Iterable[tuple[str, float]] = (),
    pre_names: dict[str, str] | None = None,
    rows_out: tuple[list[int], list[str]] | None = None,
    inits: dict[str, TensorProto] | None = None,
) -> Graph:
    """The float graph: the model without the removed Q/DQ, tensors renamed, dequantized
    weights added (numpy arrays, never written as tensors).

    Built straight from the node fields the importer read (:func:`build_graph_from_nodes`:
    :func:`fusekit.load`'s checks, no float model written and read back). The kept nodes are
    the ops' sources (their attributes decode lazily); their renamed inputs and outputs are
    the ops' own, which :func:`fusekit.to_model` writes. ``taken()`` gives every name in use
    (fresh names for restored clamps avoid it; built only when a clamp is restored).
    ``rows_out`` receives, per op given to the builder in order, the model node it is (-1 for
    a restored Clip) and its name. ``inits``: the model's initializers by name (read
    already), else read here.
    """
    if inits is None:
        inits = {t.name: t for t in m.graph.initializer}
    out = ModelProto()
    relu_at = dict(relus)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 21)
    clip_inits: list[TensorProto] = []
    namer: list[Callable[[str], str]] = []

    def fresh(base: str) -> str:
        if not namer:  # the first restored clamp: the names in use, once
            namer.append(_namer(taken() | set(nodes.names)))
        return namer[0](base)

    # everything but the nodes, initializers and value_info is copied into a header model
    copy_fields(m, out, skip=("graph",))
    g = out.graph
    copy_fields(m.graph, g, skip=("node", "initializer", "value_info"))
    kept: list[NodeFields] = []
    kept_nodes: list[int] = []  # the model node of each entry of ``kept`` (-1: a Clip)
    constants: list[tuple[int, str]] = []  # (position in kept, output) of Constant nodes
    read: set[str] = {o.name for o in g.output}
    produced: set[str] = set()
    rget = rename.get
    renamed = rename.keys()
    protos, names, all_ins, all_outs = nodes.protos, nodes.names, nodes.ins, nodes.outs
    op_types, domains, types = nodes.op_types, nodes.domains, nodes.types
    kinds = set(types)
    if not relu_at and "" not in kinds and kinds.isdisjoint(_SUBGRAPH_OPS):
        # the common case, no clamp to restore and no sub-graph: the rows by comprehensions
        # (one per field, each in the interpreter loop), the names read and written by
        # ``set.update`` over them all
        keep = [i for i in range(len(protos)) if i not in removed]
        k_ins = [all_ins[i] for i in keep]
        k_outs = [all_outs[i] for i in keep]
        if rename:  # most nodes touch no renamed name: a set test in C first
            disjoint = renamed.isdisjoint
            k_ins = [x if disjoint(x) else tuple([rget(t, t) for t in x]) for x in k_ins]
            k_outs = [x if disjoint(x) else tuple([rget(t, t) for t in x]) for x in k_outs]
        read.update(chain.from_iterable(k_ins))
        produced.update(chain.from_iterable(k_outs))
        if "Constant" in kinds:
            constants = [
                (k, k_outs[k][0] if k_outs[k] else "")
                for k, i in enumerate(keep)
                if types[i] == "Constant" and domains[i] in ("", "ai.onnx")
            ]
        kept = list(
            zip(
                [names[i] for i in keep],
                [op_types[i] for i in keep],
                [domains[i] for i in keep],
                k_ins,
                k_outs,
                [protos[i] for i in keep],
                strict=True,
            )
        )
        kept_nodes = keep
    else:  # clamps to restore or sub-graphs to read: node by node
        for i, c in enumerate(protos):
            if i in removed:
                continue
            ins, outs = all_ins[i], all_outs[i]
            if rename:  # most nodes touch no renamed name: a set test in C first
                if not renamed.isdisjoint(ins):
                    ins = tuple([rget(t, t) for t in ins])
                if not renamed.isdisjoint(outs):
                    outs = tuple([rget(t, t) for t in outs])
            read.update(ins)
            produced.update(outs)
            op = nodes.types[i]
            if op in _SUBGRAPH_OPS or not op:  # only these can hold sub-graphs
                for a in c.attribute:
                    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                        read.update(_captured(a))  # sub-graph captures
            if op == "Constant" and domains[i] in ("", "ai.onnx"):
                constants.append((len(kept), outs[0] if outs else ""))
            if relu_at and any(t in relu_at for t in outs):
                new_outs = list(outs)
                clips: list[NodeFields] = []
                for k, t in enumerate(outs):
                    if t not in relu_at:
                        continue
                    # the Relu/Clip the quantizer folded into a clamping Q
                    pre = fresh(f"{t}_before_clip")
                    new_outs[k] = pre
                    if pre_names is not None:
                        pre_names[t] = pre
                    top = relu_at[t]
                    if opset >= 11:
                        lo, hi = fresh(f"{t}_clip_min"), fresh(f"{t}_clip_max")
                        clip_inits.append(numpy_helper.from_array(np.array(0, np.float32), lo))
                        clip_inits.append(numpy_helper.from_array(np.array(top, np.float32), hi))
                        clip = helper.make_node("Clip", [pre, lo, hi], [t], fresh(f"{t}_Clip"))
                        read.update((pre, lo, hi))
                    else:
                        clip = helper.make_node(
                            "Clip", [pre], [t], fresh(f"{t}_Clip"), min=0.0, max=float(top)
                        )
                        read.add(pre)
                    produced.add(pre)
                    clips.append(
                        (clip.name, "Clip", "", tuple(clip.input), tuple(clip.output), clip)
                    )
                kept.append((names[i], op_types[i], domains[i], ins, tuple(new_outs), c))
                kept.extend(clips)
                kept_nodes.append(i)
                kept_nodes.extend([-1] * len(clips))
                continue
            kept.append((names[i], op_types[i], domains[i], ins, outs, c))
            kept_nodes.append(i)
    # Constant nodes that only fed Q/DQ parameters go with them
    unread = {k for k, t in constants if t not in read}
    rows = [n for k, n in enumerate(kept) if k not in unread] if unread else kept
    if rows_out is not None:
        rows_out[0].extend(
            [j for k, j in enumerate(kept_nodes) if k not in unread] if unread else kept_nodes
        )
        rows_out[1].extend([r[0] for r in rows])
    src = m.graph
    dense: list[TensorProto | Initializer]
    if len(inits) == len(src.initializer):  # ``inits`` in file order (no name twice)
        dense = [t for name, t in inits.items() if name in read]
        dropped = inits.keys() - read
    else:  # a name twice: the builder refuses it, as load does
        dense = [t for t in src.initializer if t.name in read]
        dropped = {t.name for t in src.initializer} - read
    dense.extend(new_inits)
    dense.extend(clip_inits)
    if dropped:
        ins_ = [vi for vi in g.input if vi.name not in dropped]
        del g.input[:]
        g.input.extend(ins_)
    for o in g.output:
        if o.name in rename:
            o.name = rename[o.name]
    live = read | produced
    seen: set[str] = {o.name for o in g.output}
    vis = []
    for vi in src.value_info:
        name = rename.get(vi.name, vi.name)
        if name in live and name not in seen:
            seen.add(name)
            vi.name = name  # the importer's own copy of the model
            vis.append(vi)
    g.value_info.extend(vis)
    return build_graph_from_nodes(out, rows, dense, label, base_dir)


def _captured(a: onnx.AttributeProto) -> set[str]:
    names: set[str] = set()
    graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
    for sg in graphs:
        for n in sg.node:
            names.update(n.input)
            for b in n.attribute:
                if b.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    names.update(_captured(b))
    return names


_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})

_BN = "BatchNormalization"


def _plan(
    graph: Graph,
    points: list[_Point],
    rd: _Reader,
    rename: dict[str, str],
    pre: dict[str, str],
    dispatch: str,
    entry_ops: set[str],
    first_out: list[str],
    row_nodes: list[int],
    row_names: list[str],
) -> tuple[QuantPlan, tuple[tuple[Slot, str], ...]]:
    """The plan of ``points`` on the imported graph (links: overlap per point, follow per
    shared scale initializer).

    A point names its slots by model node: the op of node ``j`` is found by position when
    the graph kept the builder's order and names (``row_nodes``, ``row_names``: a list
    compare), else by the tensor it writes (``first_out[j]``), as a reordered or renamed
    graph needs.

    With a ``"node-unit"`` ``dispatch`` platform or the default ``"imported"`` one, the ops of
    ``entry_ops`` (whose quantized output some float readers bypass: fusekit's export of an
    op that runs in float) keep their activation inputs FP32, as the plan they were exported
    from had them, so that the export routes those readers to the float value again (it does
    so for ``"imported"`` ops too: a float residual Add reading ``X_float`` stays float).
    """
    node_unit = False
    if dispatch != IMPORTED_PLATFORM:
        from .platforms import get_platform

        node_unit = get_platform(dispatch).placement == "node-unit"
    entry_oids = set()
    if node_unit or dispatch == IMPORTED_PLATFORM:
        for t in entry_ops:
            tid0 = graph.index.tensor_id.get(rename.get(t, t))
            if tid0 is not None and graph.index.producer[tid0] >= 0:
                entry_oids.add(int(graph.index.slot_op[graph.index.producer[tid0]]))
    idx = graph.index
    ar = graph.arrays()  # plain lists: the audit's pipeline builds them anyway
    tid_of = ar.tensor_id  # name -> tensor id (a dict)
    slot_base, n_in, slot_op, a_producer = ar.slot_base, ar.n_in, ar.slot_op, ar.producer
    op_types = ar.op_types
    # (slot, root slot, parameters, rank): the slot's config is OVERLAPPED already (one shared
    # object per point; ``overlap_sid`` would copy an ACTIVATED one per slot)
    overlaps: list[tuple[int, int, _Params, int | None]] = []
    roots: list[tuple[int, _Point]] = []

    # model node -> op id (-1: found by name, ``op_of``)
    node_op = [-1] * len(first_out)
    if ar.op_names == row_names:  # op id = position among the builder's rows
        for oid, j in enumerate(row_nodes):
            if j >= 0 and first_out[j]:
                node_op[j] = oid

    def op_of(j: int, tensor: str = "") -> int:
        """The id of the op of model node ``j`` (-1: the Clip restored in front of a clamping
        Q, the op writing ``tensor``), found by the tensor it writes."""
        if j < 0:
            name = tensor
        else:  # the node that wrote it (it writes the pre-Clip value when one was restored)
            first_output = first_out[j]
            name = rename.get(first_output, first_output)
            name = pre.get(name, name)
        tid = tid_of.get(name)
        if tid is None or a_producer[tid] < 0:
            raise UnsupportedQuantization(
                f"cannot find the op writing {first_out[j] if j >= 0 else tensor!r} in the "
                "imported graph",
                rd.label,
            )
        return int(slot_op[a_producer[tid]])

    is_init = ar.is_init
    # a dict, not the PMap: one lookup per point (a PMap ``get`` costs ~2 us in Python)
    vtypes = dict(graph.value_types.items())

    def rank_of(t: str) -> int | None:
        tid = tid_of.get(t)
        if tid is not None and is_init[tid]:
            return len(graph.initializers[t].dims)
        tt = vtypes.get(t)
        if tt is not None and tt.shape is not None:
            return len(tt.shape)
        return None

    memo: dict[tuple[int, int | None, QuantState], TensorQuantConfig] = {}

    def config(p: _Params, rank: int | None, state: QuantState) -> TensorQuantConfig:
        # one config object per (parameters, rank, state): most slots share their point's
        key = (id(p), rank, state)
        got = memo.get(key)
        if got is None:
            if state is QuantState.OVERLAPPED:  # a copy of the point's own (its arrays)
                a = config(p, rank, QuantState.ACTIVATED)
                assert a.scale is not None and a.offset is not None
                got = _scaled_copy(a, a.scale, a.offset, state)
            else:
                got = _config(p, rank, state)
            memo[key] = got
        return got

    # the tables by id (what ``QuantPlan.from_configs`` builds from names, without them); ops
    # with a quantized slot get configs for all their slots (FP32 where the model has none),
    # filled when the op is first met, before its points' configs are written
    fp32 = TensorQuantConfig(
        policy=QuantPolicy.of("PER_TENSOR", "LINEAR", "SYMMETRICAL"), state=QuantState.FP32
    )
    n_out = ar.n_out
    cfg_table: list[TensorQuantConfig | None] = [None] * idx.n_slots
    dispatch_table: list[str | None] = [None] * len(ar.op_names)

    def claim(oid: int) -> None:
        dispatch_table[oid] = dispatch
        base, size = slot_base[oid], n_in[oid] + n_out[oid]
        cfg_table[base : base + size] = [fp32] * size

    for pt in points:
        axis = pt.params.axis
        # the rank only places a negative axis (a per-tensor config is the same at any rank)
        rank = rank_of(pt.tensor) if axis is not None and axis < 0 else None
        first: int | None = None
        overlapped: TensorQuantConfig | None = None
        after = pt.kind == "after"
        if after:
            assert pt.producer is not None
            j, out_k = pt.producer
            oid = node_op[j] if j >= 0 else -1
            if oid < 0:
                oid = op_of(j, pt.tensor)
            first = slot_base[oid] + n_in[oid] + out_k
            if dispatch_table[oid] is None:
                claim(oid)
            cfg_table[first] = config(pt.params, rank, QuantState.ACTIVATED)
        for j, k in pt.readers:
            reader = node_op[j]
            if reader < 0:
                reader = op_of(j)
            if after and reader in entry_oids:
                continue  # an op running in float: its input stays FP32 (see above)
            if after and k == 0 and op_types[reader] == _BN:
                # it reads the pair's output as every consumer does; an OVERLAPPED input would
                # tell the exporter the BatchNormalization is fused into its producer (folded)
                continue
            sid = slot_base[reader] + k
            if dispatch_table[reader] is None:
                claim(reader)
            if first is None:
                first = sid
                state = (
                    QuantState.PASSIVE
                    if pt.kind == "param" and pt.params.dtype == TensorProto.INT32
                    else QuantState.ACTIVATED
                )
                cfg_table[sid] = config(pt.params, rank, state)
            else:
                if overlapped is None:  # once per point, not per reader
                    overlapped = config(pt.params, rank, QuantState.OVERLAPPED)
                cfg_table[sid] = overlapped
                overlaps.append((sid, first, pt.params, rank))
        if first is not None:
            roots.append((first, pt))
    n = idx.n_slots
    plan = QuantPlan(graph, pvector(cfg_table), pvector([NO_LINK] * n), pvector(dispatch_table))
    e = plan.evolver()
    for a, b, p, rank in overlaps:
        if not e.overlap_sid(a, b):  # already one set: the slot stays ACTIVATED
            e.set_cfg(a, config(p, rank, QuantState.ACTIVATED))
    by_name: dict[tuple[Any, ...], int] = {}
    names: list[tuple[Slot, str]] = []
    for sid, pt in sorted(roots, key=itemgetter(0)):
        key = (pt.params.names, pt.params.key)
        names.append((idx.slot_key(sid), pt.params.names[0]))
        master = by_name.get(key)
        if master is None:
            by_name[key] = sid
        elif e.root(sid) != e.root(master):
            e.follow_sid(sid, master)
    return e.persistent(), tuple(names)


# --------------------------------------------------------------------------------------------
# QOperator format: rewritten to the QDQ form it computes, then imported as any QDQ model

#: QOperator op -> (float op type, positions of (x, scale, zero point) triples of the quantized
#: inputs, positions of (scale, zero point) of the output or None for a float output). Inputs
#: not listed pass through (QLinearConv's int32 bias is handled apart).
_QOP: dict[str, tuple[str, tuple[tuple[int, int, int], ...], tuple[int, int] | None]] = {
    "QLinearConv": ("Conv", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMatMul": ("MatMul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QGemm": ("Gemm", ((0, 1, 2), (3, 4, 5)), (7, 8)),
    "QLinearAdd": ("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": ("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearSigmoid": ("Sigmoid", ((0, 1, 2),), (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", ((0, 1, 2),), (3, 4)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearAveragePool": ("AveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearConcat": ("Concat", (), (0, 1)),  # inputs: triples from position 2
    # ``opset``: the Softmax semantics it was made from, the model's own opset (dropped)
    "QLinearSoftmax": ("Softmax", ((0, 1, 2),), (3, 4)),
}

#: Ops onnxruntime's QOperator format runs on quantized tensors directly (the value keeps its
#: scale): their quantized data input is dequantized, their outputs quantized with its scale.
_QOP_PASSTHROUGH = frozenset(
    {
        "MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Resize", "Split",
        "Slice", "Gather", "Identity", "Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
    }
)  # fmt: skip

#: QOperator-family op types the conversion cannot read, with the reason named in the refusal.
_QOP_REFUSED = {
    "DynamicQuantizeLinear": "dynamic quantization: scales computed at run time",
    "MatMulInteger": "integer-output kernel (dynamic quantization): its scale is applied later",
    "ConvInteger": "integer-output kernel (dynamic quantization): its scale is applied later",
    "DynamicQuantizeMatMul": "dynamic quantization: scales computed at run time",
    "MatMulIntegerToFloat": "dynamic quantization: scales computed at run time",
}


class _Getter:
    """``get(k)``: input ``k`` of a node, ``""`` when omitted."""

    def __init__(self, ins: list[str]):
        self.ins = ins

    def __call__(self, k: int) -> str:
        return self.ins[k] if k < len(self.ins) else ""


def _is_qoperator(kinds: Iterable[str]) -> bool:
    """True when a node has one of ``kinds``: QOperator op types (``kinds``: distinct)."""
    return any(t in _QOP or t in _QOP_REFUSED or t.startswith("QLinear") for t in kinds)


def _qoperator_to_qdq(m: ModelProto, nd: _Nodes, label: str, base_dir: str | None) -> ModelProto:
    """The QDQ model a QOperator model computes: every QLinear op becomes ``DequantizeLinear``
    of its quantized inputs, the float op, ``QuantizeLinear`` of its output with the node's
    own scales and zero points; an int32 bias becomes ``DequantizeLinear`` with scale
    ``x_scale * w_scale``; ops run on quantized tensors directly (MaxPool, Reshape, ...) get
    the pair of the value they read. Refuses (naming every op type) what it cannot read.
    ``m`` is the importer's own copy: it is rebuilt in place.
    """
    g = m.graph
    bad: Counter[str] = Counter()
    for t, n in zip(nd.types, nd.protos, strict=True):
        if t in _QOP_REFUSED or (t.startswith("QLinear") and t not in _QOP):
            bad[t] += 1
        elif t == "QGemm" or t in ("QLinearGlobalAveragePool", "QLinearAveragePool"):
            at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if at.get("channels_last", 0):
                bad[f"{t}(channels_last=1)"] += 1
            if t == "QGemm" and (at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0):
                bad[f"{t}(alpha/beta != 1)"] += 1
    if bad:
        kinds = ", ".join(
            f"{t} x{c}" + (f" ({_QOP_REFUSED[t]})" if t in _QOP_REFUSED else "")
            for t, c in sorted(bad.items())
        )
        raise UnsupportedQuantization(
            f"QOperator-format model: fusekit cannot read these op types: {kinds}; export it "
            "statically quantized (onnxruntime: quantize_static) in QDQ or QOperator format",
            label,
        )
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 21)
    inits = {t.name: t for t in g.initializer}
    consts = {
        n.output[0]: n
        for n in nd.protos
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1
    }
    taken = {t for ins in nd.ins for t in ins} | {t for outs in nd.outs for t in outs}
    taken |= set(inits) | {vi.name for vi in g.input} | set(nd.names)
    new_inits: list[TensorProto] = []

    fresh = _namer(taken)

    def stripped(t: str) -> str:
        return t[: -len("_quantized")] if t.endswith("_quantized") else t

    def value(name: str, node: str) -> np.ndarray[Any, Any]:
        t = inits.get(name)
        if t is None and name in consts:
            a = next((a for a in consts[name].attribute if a.name == "value"), None)
            t = a.t if a is not None else None
        if t is None:
            raise UnsupportedQuantization(
                f"node {node!r} reads {name!r} as a scale, which is computed, not a constant",
                label,
            )
        return np.asarray(numpy_helper.to_array(t, base_dir or ""))

    qparams: dict[str, tuple[str, str]] = {}  # quantized tensor -> (scale, zero point)
    dq_memo: dict[tuple[str, str, str, int | None], str] = {}
    out_nodes: list[onnx.NodeProto] = []

    def dq(x: str, s: str, z: str, axis: int | None = None) -> str:
        key = (x, s, z, axis)
        got = dq_memo.get(key)
        if got is None:
            got = dq_memo[key] = fresh(stripped(x) if x.endswith("_quantized") else f"{x}_dq")
            ins = [x, s, z] if z else [x, s]
            node = helper.make_node("DequantizeLinear", ins, [got], fresh(f"{got}_DQ"))
            if axis is not None:
                node.attribute.append(helper.make_attribute("axis", axis))
            out_nodes.append(node)
        return got

    def q_after(float_out: str, y: str, s: str, z: str) -> None:
        ins = [float_out, s, z] if z else [float_out, s]
        out_nodes.append(helper.make_node("QuantizeLinear", ins, [y], fresh(f"{y}_Q")))
        qparams[y] = (s, z)

    def weight_axis(t: str, w: str, s: str, node: onnx.NodeProto) -> int | None:
        if value(s, node.name).size <= 1:
            return None
        if opset < 13:
            raise UnsupportedQuantization(
                f"{t} {node.name!r} has per-channel weights below opset 13 (DequantizeLinear "
                "has no axis there)",
                label,
            )
        if t == "QLinearConv":
            return 0
        if t == "QGemm":
            tb = next((a.i for a in node.attribute if a.name == "transB"), 0)
            return 0 if tb else 1
        rank = len(inits[w].dims) if w in inits else 2
        return rank - 1  # QLinearMatMul: per column of B

    for i, n in enumerate(nd.protos):
        t = nd.types[i]
        ins, outs = list(nd.ins[i]), list(nd.outs[i])
        get = _Getter(ins)
        if t == "QuantizeLinear" and outs:
            out_nodes.append(n)
            qparams[outs[0]] = (get(1), get(2))
            continue
        if t in _QOP:
            ftype, triples, yq = _QOP[t]
            if t == "QLinearConcat":
                triples = tuple((k, k + 1, k + 2) for k in range(2, len(ins), 3))
            float_ins: dict[int, str] = {}
            for xi, si, zi in triples:
                axis = weight_axis(t, get(xi), get(si), n) if xi == 3 else None
                float_ins[xi] = dq(get(xi), get(si), get(zi), axis)
            if t == "QLinearConcat":
                f_in = [float_ins[k] for k, _, _ in triples]
            else:
                f_in = [float_ins[k] for k, _, _ in triples]
                bias = get(8) if t == "QLinearConv" else get(6) if t == "QGemm" else ""
                if bias:  # int32, scale x_scale * w_scale, zero point 0
                    sx, sw = value(get(1), n.name), value(get(4), n.name)
                    sb = fresh(f"{stripped(bias)}_scale")
                    scale = (sx.astype(np.float32) * sw.astype(np.float32)).reshape(-1)
                    new_inits.append(
                        numpy_helper.from_array(scale if scale.size > 1 else scale[0], sb)
                    )
                    axis = 0 if scale.size > 1 else None
                    f_in.append(dq(bias, sb, "", axis))
            kept_at = [a for a in n.attribute if a.name not in ("channels_last", "opset")]
            y = outs[0]
            f_out = fresh(f"{stripped(y)}_float") if yq is not None else y
            fnode = helper.make_node(ftype, f_in, [f_out], n.name)
            fnode.attribute.extend(kept_at)
            out_nodes.append(fnode)
            if yq is not None:
                q_after(f_out, y, get(yq[0]), get(yq[1]))
            continue
        if t in _QOP_PASSTHROUGH and ins and ins[0] in qparams:
            s, z = qparams[ins[0]]
            ins[0] = dq(ins[0], s, z)
            f_outs = [fresh(f"{stripped(o)}_float") if o else "" for o in outs]
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.input[:] = ins
            c.output[:] = f_outs
            out_nodes.append(c)
            for fo, o in zip(f_outs, outs, strict=True):
                if o:
                    q_after(fo, o, s, z)
            continue
        out_nodes.append(n)
    del g.node[:]
    g.node.extend(out_nodes)
    g.initializer.extend(new_inits)
    # the quantized tensors' declared types no longer hold for the renamed ones: drop them
    kept_vi = [vi for vi in g.value_info if vi.name not in qparams]
    del g.value_info[:]
    g.value_info.extend(kept_vi)
    return m


# --------------------------------------------------------------------------------------------
# the placement a plan exports: what the round-trip law compares


PointKey = tuple[str, str, int]


@attrs.frozen
class Placement:
    """Where a plan puts Q/DQ when exported, with the values, and which points share a scale.

    ``points`` maps ``("after", tensor, 0)`` (a pair right after the tensor's producer),
    ``("in", op, k)`` (a pair, or a parameter's DequantizeLinear, in front of input ``k``) to
    ``(integer type, scale, zero point, axis)`` (scale and zero point as tuples of floats);
    ``groups`` holds the sets of at least two points that read one scale. A reader's pair the
    exporter merges into the producer's (equal values) is not a point of its own. Two plans
    with equal placements export models with the same Q/DQ, up to names.
    """

    points: Any  # dict[PointKey, tuple[str, tuple[float, ...], tuple[float, ...], int | None]]
    groups: frozenset[frozenset[PointKey]]


def placement(plan: QuantPlan) -> Placement:
    """The :class:`Placement` of ``plan`` (the scales must be set, as for export)."""
    from .export import _Placement  # the exporter's own decision, so the two cannot drift

    pl = _Placement(plan, require_scales=True, constant_params=True)
    idx = plan.graph.index
    configs = plan.configs

    def value(root: int, dtype: str) -> tuple[str, tuple[float, ...], tuple[float, ...], Any]:
        cfg = configs[root]
        scale = tuple(float(x) for x in np.asarray(cfg.scale, np.float32).reshape(-1))
        zero = tuple(
            0.0 if dtype == "int32" else float(x)
            for x in np.round(np.asarray(cfg.offset, np.float64)).reshape(-1)
        )
        axis = cfg.channel_axis if (len(scale) > 1 or cfg.policy.per_channel) else None
        if len(scale) == 1:
            axis = None
        return dtype, scale, zero, axis

    points: dict[PointKey, Any] = {}
    members: dict[int, list[PointKey]] = {}
    for tid, key in pl.after.items():
        pk: PointKey = ("after", idx.tensor_names[tid], 0)
        points[pk] = value(key.root, key.dtype)
        members.setdefault(key.root, []).append(pk)
    for d in (pl.before, pl.params):
        for sid, key in d.items():
            s = idx.slot_key(sid)
            v = value(key.root, key.dtype)
            tid = idx.slot_tensor[sid]
            a = pl.after.get(tid)
            if d is pl.before and a is not None and value(a.root, a.dtype) == v:
                continue  # the exporter reuses the producer's pair
            pk = ("in", s.op, s.index)
            points[pk] = v
            members.setdefault(key.root, []).append(pk)
    groups = frozenset(frozenset(m) for m in members.values() if len(m) > 1)
    return Placement(points, groups)


def _namer(taken: set[str]) -> Callable[[str], str]:
    """A function giving ``base`` or ``base_2``, ``base_3``... whichever is not in ``taken``
    yet, and adding it: new tensor and node names that cannot collide with the model's."""

    def fresh(base: str) -> str:
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    return fresh
