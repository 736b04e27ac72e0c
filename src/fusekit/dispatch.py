"""Dispatch and :func:`init_plan`: which ops a platform quantizes in a given graph.

A :class:`~fusekit.platforms.Platform` says which op *types* a backend quantizes; whether a
given op is quantized also depends on the graph around it (an op fed only by shape arithmetic,
PPQ's conservative dispatcher walking from computing ops, the float tail after the last
computing op on onnxruntime). This module turns (graph, platform) into the initial
:class:`~fusekit.quant.QuantPlan` the passes start from: a config for every input and output
slot of every op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyrsistent import pvector

from ._util import without_gc
from .dtypes import FLOAT_TYPES, tensor_elem_types
from .errors import InvalidPlatform, UnsupportedModel
from .graph import UNKNOWN_TYPE, Graph, Op
from .platforms import Platform, get_platform
from .quant import (
    NO_LINK,
    QuantPlan,
    QuantPolicy,
    QuantProperty,
    QuantState,
    TensorQuantConfig,
    Visibility,
)

__all__ = [
    "all_dispatch",
    "init_plan",
    "is_depthwise_conv",
    "ppq_conservative_dispatch",
    "refuse_other_floats",
]


class _Walker:
    """PPQ's ``SearchableGraph.opset_matching`` over integer op ids (memoised, iterative).

    Its adjacency is the graph's topology (``preds``/``succs``: one entry per edge slot); only
    the producers of each op's first and last input are its own, for PPQ's tracing rules.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.idx = idx = graph.index
        self.up: list[list[int]] = idx.preds
        self.down: list[list[int]] = idx.succs
        st, prod, slot_op, base, n_in = (
            idx.slot_tensor,
            idx.producer,
            idx.slot_op,
            idx.slot_base,
            idx.n_in,
        )

        def source(sid: int) -> int:
            tid = st[sid]
            p = prod[tid] if tid >= 0 else -1
            return slot_op[p] if p >= 0 else -1

        self.in0_src = [source(base[o]) if n_in[o] else -1 for o in idx.order]
        self.inlast_src = [source(base[o] + n_in[o] - 1) if n_in[o] else -1 for o in idx.order]
        self.types: list[str] = idx.op_types  # rule types: domain-qualified off ONNX
        self.boundary = [not u or not d for u, d in zip(self.up, self.down)]

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


_GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"})
#: ops that keep a pooled vector a vector: data movers, pointwise activations, a 1x1 Conv on
#: the pooled 1x1 map (itself a matrix-vector product), arithmetic with a constant
_ROW_MOVERS = frozenset(
    {
        "Flatten",
        "Reshape",
        "Squeeze",
        "Identity",
        "Dropout",
        "Relu",
        "Clip",
        "HardSwish",
        "HardSigmoid",
        "Sigmoid",
        "Tanh",
        "LeakyRelu",
        "Conv",
        "Gemm",
        "MatMul",
        "Mul",
        "Add",
        "Div",
        "Sub",
    }
)
_BINARY = frozenset({"Mul", "Add", "Div", "Sub"})


def matvec_ops(graph: Graph) -> frozenset[str]:
    """Gemm/MatMul ops that multiply one row by a matrix (matrix-vector products).

    An op qualifies when its first input has a declared shape whose dimensions before the last
    are all 1 (M = 1 rows), or comes from a global pooling (GlobalAveragePool, GlobalMaxPool,
    ReduceMean/ReduceMax) through data movers, pointwise activations, arithmetic with a
    constant and 1x1 Convs on the pooled map only: a classifier head. Batched
    inputs make such a head M = batch rows; the rule reads the model as exported. An int8
    matrix-vector kernel reads every weight once per row and gains little over float, while
    the quantization noise of a classifier's logits costs the most (``docs/accuracy.md``).
    """
    producer = {t: op for op in graph for t in op.outputs if t}
    found: set[str] = set()
    for op in graph:
        if op.op_type not in ("Gemm", "MatMul") or not op.inputs:
            continue
        a = op.inputs[0]
        shape = graph.value_types.get(a, UNKNOWN_TYPE).shape
        if op.op_type == "Gemm" and "transA" in op.attributes and op.attributes["transA"]:
            shape = None  # A is K x M: the rows are its last dimension
        if shape and len(shape) >= 2 and all(d == 1 for d in shape[:-1]):
            found.add(op.name)
            continue
        t = a
        for _ in range(8):  # a few movers at most between the pooling and the head
            prod = producer.get(t)
            if prod is None:
                break
            if prod.op_type in _GLOBAL_POOLS:
                found.add(op.name)
                break
            if prod.op_type not in _ROW_MOVERS or not prod.inputs:
                break
            if prod.op_type in _BINARY:  # x op constant only: the vector stays a vector
                others = [x for x in prod.inputs if x and not graph.is_constant(x)]
                if len(others) != 1:
                    break
                t = others[0]
                continue
            t = prod.inputs[0]
    return frozenset(found)


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
    A rule set with ``float_matvec`` leaves the :func:`matvec_ops` float.
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
    left_float = matvec_ops(graph) if platform.float_matvec else frozenset()
    names = ar.op_names
    for oid in ar.order:
        if op_types[oid] not in quant_types or shape_only[oid] or const_op[oid]:
            continue  # ops that fold to constants are computed once, never quantized
        if left_float and names[oid] in left_float:
            continue  # a matrix-vector product the rule set runs in float
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
    return graph.derived(_non_float_flags)


def _non_float_flags(graph: Graph) -> list[bool]:
    return [et not in FLOAT_TYPES for et in tensor_elem_types(graph)]


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
    not_float = None if p.has_quirk("any_dtype") else _non_float(graph)
    ops, op_names = graph.ops, ar.op_names
    always = p.weight_always
    dw_cfg = _depthwise_input_config(p) if p.depthwise_input_per_channel else None
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
                if t == "Gemm" and wr.policy.per_channel and not p.has_quirk("gemm_weight_axis_0"):
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
        if (
            dw_cfg is not None
            and t == "Conv"
            and configs[b] is act
            and is_depthwise_conv(graph, ops[op_names[oid]])
        ):
            configs[b] = dw_cfg  # the backend's depthwise kernel takes a scale per channel
        if not_float is not None:
            for sid in range(b, b + ni + no):
                if st[sid] >= 0 and not_float[st[sid]]:
                    configs[sid] = act_fp32
    if p.placement == "computing-input":
        _computing_inputs_only(ar, p, configs, dispatch, act_fp32)
    return QuantPlan(graph, pvector(configs), pvector([NO_LINK] * n_slots), pvector(dispatch))


def _depthwise_input_config(p: Platform) -> TensorQuantConfig:
    """The activation rule of ``p`` made per-channel on axis 1 (NCHW channels).

    Everything else (bits, range, symmetry, rounding, observer) stays the activation rule's,
    so the per-channel input differs from a per-tensor one only in its granularity: the
    observer measures one range per channel, the export writes a 1-D scale with ``axis=1``.
    """
    r = p.activation
    flags = (r.policy.flags & ~int(QuantProperty.PER_TENSOR)) | int(QuantProperty.PER_CHANNEL)
    return TensorQuantConfig(
        policy=QuantPolicy(flags),
        num_bits=r.num_bits,
        quant_min=r.quant_min,
        quant_max=r.quant_max,
        exponent_bits=r.exponent_bits,
        rounding=r.rounding,
        channel_axis=1,
        observer=r.observer,
    )


def is_depthwise_conv(graph: Graph, op: Op) -> bool:
    """Is ``op`` a depthwise convolution: ``group == C_in == C_out > 1``?

    Read from the weight's shape ``(C_out, C_in / group, k...)``: ``C_out == group`` and one
    input channel per group (so ``C_in == group``). A weight of unknown shape is not
    depthwise (the plan then keeps the per-tensor input, which every backend runs).
    """
    if op.op_type != "Conv" or len(op.inputs) < 2 or not op.inputs[1]:
        return False
    group = op.attributes.get("group", 1)
    if not isinstance(group, int) or group <= 1:
        return False
    shape = _weight_shape(graph, op.inputs[1])
    if shape is None or len(shape) < 3:
        return False
    if shape[0] != group or shape[1] != 1:
        return False
    x = graph.tensor(op.inputs[0]).shape if op.inputs[0] else None
    # a declared input channel count that contradicts the weight is left alone (not an error
    # here: the model checker reports it)
    return x is None or len(x) < 2 or not isinstance(x[1], int) or x[1] == group


def _weight_shape(graph: Graph, name: str) -> tuple[int | str | None, ...] | None:
    """The shape of a weight: declared, an initializer's dims or a ``Constant`` op's value."""
    shape = graph.tensor(name).shape
    if shape is None:
        prod = graph.producer(name)
        if prod is not None and graph.ops[prod.op].op_type == "Constant":
            value = graph.ops[prod.op].attributes.get("value")
            shape = getattr(value, "shape", None)
    return None if shape is None else tuple(shape)


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
