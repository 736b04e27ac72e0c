"""Audit a quantized model's Q/DQ placement against a platform's fusion rules, slot by slot.

:func:`audit` takes the float graph and the plan of an imported model
(:func:`fusekit.load_quantized`), runs the platform's default pipeline on the same graph and
compares where the model quantizes with where the platform would, tensor by tensor and slot by
slot. Each difference is a :class:`Finding` with a kind, a severity, the ops/tensors/slots, the
platform rule behind it (the decision-log entry of the pipeline, as ``explain`` shows it) and
the fix. The kinds are explained with examples in ``docs/audit.md``:

=========================  ========  ======================================================
kind                       severity  what
=========================  ========  ======================================================
``fused_activation_qdq``   warning   Q/DQ between a computing op and the activation it fuses
``passive_scale_change``   warning   a passive op's output scale differs from its input's
``passive_requantize``     info      a passive op's output requantized with the same scale
``unaligned_inputs``       warning   inputs of an aligned op (Concat, Add, ...) differ
``float_input``            error     a computing op input without Q/DQ: the op runs float
``bias_not_int32``         error     a bias the platform quantizes is float or not int32
``bias_scale``             error     an int32 bias scale is not input scale x weight scale
``weight_per_tensor``      warning   per-tensor weights where the platform is per-channel
``weight_axis``            error     per-channel weights on another axis than the channels
``unsupported_scheme``     error     asymmetric/uint8/zero point or bit width the backend
                                     cannot run (info where the backend runs it anyway)
``qdq_on_shape``           error     Q/DQ on a shape or index input
``extra_qdq``              warning   Q/DQ on a value the platform leaves float
``dangling_qdq``           warning   a Q without DQ or a DQ without Q (info: unread DQ)
``float_kernel``           error     onnxruntime runs a Conv/MatMul/Gemm in float (opt-in)
``stray_qdq``              warning   a Q/DQ onnxruntime executes in float (opt-in)
=========================  ========  ======================================================

The last two are onnxruntime's own verdict on the model file (:func:`kernel_findings`, from
:func:`fusekit.kernels.kernel_report`; ``fusekit audit --kernels``), whatever the platform.

Severity: ``error`` when the backend cannot run that part in int8 or the simulation lies
about what runs, ``warning`` for an avoidable requantization, ``info`` for a difference with no
cost.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import numpy as np

from ._util import gc_paused
from .dispatch import init_plan
from .graph import Graph, Slot, rule_type
from .passes import default_pipeline
from .passes._core import Decision, PipelineResult, _first_changes
from .platforms import Platform, get_platform
from .quant import QuantPlan, QuantState, Visibility

__all__ = ["SEVERITIES", "AuditResult", "Finding", "audit", "kernel_findings"]

SEVERITIES = ("error", "warning", "info")

#: Backends that run only symmetric signed 8-bit Q/DQ (TensorRT's explicit quantization).
_SYMMETRIC_ONLY = frozenset({"TRT_INT8"})
_FUSING_PASSES = frozenset({"activation_fusion", "composite_activation_fusion", "epilogue_fusion"})


@attrs.frozen
class Finding:
    """One difference between the model's placement and the platform's plan."""

    kind: str
    severity: str
    message: str
    ops: tuple[str, ...] = ()
    tensors: tuple[str, ...] = ()
    slots: tuple[Slot, ...] = ()
    rule: str = ""
    decision: str = ""
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "ops": list(self.ops),
            "tensors": list(self.tensors),
            "slots": [str(s) for s in self.slots],
            "rule": self.rule,
            "decision": self.decision,
            "fix": self.fix,
        }

    def line(self) -> str:
        """One human line: ``severity kind: message (fix)``."""
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{self.severity:7s} {self.kind}: {self.message}{fix}"


@attrs.frozen
class AuditResult:
    """The findings of :func:`audit`, in graph order, and the platform's pipeline result."""

    platform: str
    findings: tuple[Finding, ...]
    expected: PipelineResult = attrs.field(repr=False)

    def count(self, severity: str | None = None) -> int:
        """How many findings (of ``severity``)."""
        return sum(1 for f in self.findings if severity is None or f.severity == severity)

    def by_kind(self) -> dict[str, int]:
        """``{kind: count}``, sorted by kind."""
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return dict(sorted(out.items()))

    @property
    def has_errors(self) -> bool:
        """True when a finding is an error (the CLI exits 1)."""
        return any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "platform": self.platform,
            "counts": {s: self.count(s) for s in SEVERITIES},
            "by_kind": self.by_kind(),
            "findings": [f.to_json() for f in self.findings],
        }


class _Where:
    """Where a plan quantizes, as :func:`fusekit.export_qdq` places its Q/DQ: per input slot
    the root whose scale it reads, per tensor the root of the pair after its producer.

    ``roots``: the root slot id of every slot id that has a config. ``after``: ``{tensor id:
    root}`` for the tensors quantized right after their producer. ``reads``: ``{input slot
    id: root}`` for every slot that reads a quantized value (its own pair, a parameter's DQ, or
    the pair after the producer); ``read_roots`` is ``reads`` as an array (-1: reads float).
    :func:`_placement_ids` computes them over numpy arrays from one decision per config object
    (the exporter's placement decides per slot and builds a key object for each: ~0.35 s per
    plan at 100k ops, and the audit places two); a plan that path does not decide goes to the
    exporter's own ``_Placement``, which decides (or raises) as export does.
    """

    def __init__(self, plan: QuantPlan, require_scales: bool):
        self.plan = plan
        self.configs = plan.configs.tolist()
        #: per slot id, the bits of its config (:func:`_config_codes`)
        self.codes = _config_codes(self.configs)
        got = _placement_ids(plan, require_scales, self.codes)
        if got is None:
            got = _exporter_placement(plan, require_scales)
        roots, self.after, self.reads, read_roots = got
        self.roots = np.asarray(roots, dtype=np.int64)
        if read_roots is None:
            read_roots = np.full(len(self.configs), -1, dtype=np.int64)
            n = len(self.reads)
            keys = np.fromiter(self.reads, np.int64, n)
            read_roots[keys] = np.fromiter(self.reads.values(), np.int64, n)
        #: ``reads`` as an array: per slot id the root it reads, -1 where it reads float
        self.read_roots: np.ndarray[Any, Any] = read_roots

    @functools.cached_property
    def quantized_tensors(self) -> set[int]:
        """The tensor ids quantized after their producer or in front of a reader."""
        return {int(t) for t in np.flatnonzero(self.quantized_mask()[:-1])}

    def quantized_mask(self) -> np.ndarray[Any, Any]:
        """Per tensor id (plus one, for -1): whether it is quantized somewhere."""
        st, _, _, const = self.plan.graph.derived(_slot_arrays)
        out = np.zeros(len(const), dtype=bool)
        out[np.fromiter(self.after, np.int64, len(self.after))] = True
        out[st[self.read_roots >= 0]] = True
        return out

    def scale(self, root: int) -> np.ndarray[Any, Any] | None:
        cfg = self.plan.configs[root]
        return None if cfg is None else cfg.scale


#: roots (list or array), after, reads, reads as an array (or None: made from the dict)
_Placed = tuple[Any, dict[int, int], dict[int, int], np.ndarray[Any, Any] | None]


def _exporter_placement(plan: QuantPlan, require_scales: bool) -> _Placed:
    """``(roots, after, reads, None)`` from the exporter's ``_Placement`` (the reference the
    fast path below must agree with; tests compare the two)."""
    from .export import _Placement  # the exporter's own placement decision

    pl = _Placement(plan, require_scales=require_scales, constant_params=True)
    after = {tid: k.root for tid, k in pl.after.items()}
    reads: dict[int, int] = {}
    for sid, k in (*pl.before.items(), *pl.params.items()):
        reads[sid] = k.root
    consumers = plan.graph.arrays().consumers
    for tid, root in after.items():
        for sid in consumers[tid]:
            reads.setdefault(sid, root)
    return pl.roots, after, reads, None


def _slot_arrays(graph: Graph) -> tuple[np.ndarray[Any, Any], ...]:
    """Per slot id: its tensor id (-1 for none), whether it is an input, its op id; per tensor
    id plus one (for -1): whether it is a constant (``export._constant_tensors``). Read-only
    numpy arrays, made once per graph (``Graph.derived``) for :func:`_placement_ids`."""
    from .export import _constant_tensors

    ar = graph.arrays()
    n = len(ar.slot_tensor)
    st = np.asarray(ar.slot_tensor, dtype=np.int64)
    op = np.asarray(ar.slot_op, dtype=np.int64)
    base, n_in = np.asarray(ar.slot_base, dtype=np.int64), np.asarray(ar.n_in, dtype=np.int64)
    is_in = (np.arange(n, dtype=np.int64) - base[op]) < n_in[op] if n else np.zeros(0, bool)
    const = np.zeros(len(ar.tensor_names) + 1, dtype=bool)  # [-1]: no tensor, not constant
    const[sorted(_constant_tensors(graph))] = True
    out = (st, is_in, op, const)
    for a in out:
        a.flags.writeable = False
    return out


def _root_array(parents: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """The root of every slot id by pointer jumping (each round doubles the length of chain
    resolved: a few rounds whatever the depth); None if the links loop."""
    r = np.where(parents < 0, np.arange(len(parents), dtype=np.int64), parents)
    for _ in range(64):  # 2**64 exceeds any chain: more rounds means a loop
        nxt = r[r]
        if np.array_equal(nxt, r):
            return r
        r = nxt
    return None


#: bits of a config's code (:func:`_config_codes`)
_EXPORTS = 1  # export's _status gives it a key (when its tensor is a constant: _CONST_ONLY)
_OVERLAPPED = 2  # state OVERLAPPED
_READS_ROOT = 4  # _status reads its root's config (not FP32, not INTERNAL)
_CONST_ONLY = 8  # a 32-bit bias: an int32 DQ when its tensor is a constant, else float
_HAS_SCALE = 16  # scale and offset set
_CONFIG = 32  # a config (the slot's op is quantized)
_NEEDS_SCALE = 64  # an exported state: with require_scales, its root must have a scale
_PENDING_SCALE = 128  # INITIAL or PASSIVE_INIT (not FP32, not INTERNAL): waits for a scale


def _config_codes(configs: list[Any]) -> np.ndarray[Any, Any]:
    """Per slot id, the bits above of its config: what export's ``_status`` decides from
    the config alone. Plans share config objects (a pipeline's plan has ~10, an imported one
    one per point), so each is decided once and spread over the slots by ``id``."""
    from .export import _qtype

    FP32, OVERLAPPED = QuantState.FP32, QuantState.OVERLAPPED
    INTERNAL, FORCE_EXPORT = Visibility.INTERNAL, Visibility.FORCE_EXPORT
    PENDING, EXPORTED = QuantState.PENDING, QuantState.EXPORTED
    ids = list(map(id, configs))
    code_of: dict[int, int] = {id(None): 0}
    for i, cfg in dict(zip(ids, configs)).items():
        if cfg is None:
            continue
        state = cfg.state
        code = _CONFIG | (_OVERLAPPED if state == OVERLAPPED else 0)
        if cfg.scale is not None and cfg.offset is not None:
            code |= _HAS_SCALE
        if state == FP32 or cfg.visibility == INTERNAL:
            code_of[i] = code  # _status: None before it reads the root
            continue
        code |= _READS_ROOT
        if state in PENDING:
            code |= _PENDING_SCALE
            ok = True  # _status: a key, or NotCalibrated with require_scales
        else:
            ok = state in EXPORTED or cfg.visibility == FORCE_EXPORT
            if state in EXPORTED:
                code |= _NEEDS_SCALE
        if ok and _qtype(cfg, False) is not None:
            code |= _EXPORTS
        elif ok and _qtype(cfg, True) is not None:
            code |= _CONST_ONLY
        code_of[i] = code
    return np.fromiter(map(code_of.__getitem__, ids), dtype=np.int64, count=len(ids))


def _placement_ids(
    plan: QuantPlan, require_scales: bool, codes: np.ndarray[Any, Any] | None = None
) -> _Placed | None:
    """The exporter's placement decision (``export._Placement``: ``_status`` per slot,
    ``_same_tensor_exporter`` for an overlapped input, a constant input as a parameter, a
    consumer reading the pair after its producer) for the root ids only, over numpy arrays
    (``codes``: the :func:`_config_codes` of the plan's configs, computed when not given).

    Returns None when the exporter would raise or when a plan is unusual (a slot still waiting
    for a scale while scales are required, a root without a config or scale, a sharing loop):
    the caller then runs the exporter's placement itself, which raises or decides as export
    does.
    """
    graph = plan.graph
    st, is_in, slot_op, const = graph.derived(_slot_arrays)
    if codes is None:
        codes = _config_codes(plan.configs.tolist())
    if require_scales and np.any(codes & _PENDING_SCALE):
        return None  # the exporter names the first such slot (NotCalibrated)
    parents = np.asarray(plan.parent_ids(), dtype=np.int64)
    roots = _root_array(parents)
    if roots is None:
        return None  # a sharing loop: root_ids raises InvalidPlan naming it
    codes = codes.copy()
    # _status reads the root's config of these slots (and, with require_scales, the scale
    # of an exported state's root): without them the exporter raises
    if not np.all(codes[roots[(codes & _READS_ROOT) != 0]] & _CONFIG):
        return None
    if require_scales and not np.all(codes[roots[(codes & _NEEDS_SCALE) != 0]] & _HAS_SCALE):
        return None  # NotCalibrated, naming the first such slot
    codes[((codes & _CONST_ONLY) != 0) & const[st]] |= _EXPORTS
    quantized = np.asarray([d is not None for d in plan.dispatch.tolist()], dtype=bool)
    live = quantized[slot_op] & (st >= 0) if len(st) else np.zeros(0, bool)
    exports = (codes & _EXPORTS) != 0
    overlapped = (codes & _OVERLAPPED) != 0
    # producers first: the tensors quantized right after their producer
    outs = np.flatnonzero(live & ~is_in & exports)
    after = dict(zip(st[outs].tolist(), roots[outs].tolist()))
    # inputs: their own pair, or a parameter's DQ (the exporter's before and params)
    ins = np.flatnonzero(live & is_in & exports & ~overlapped)
    read_roots = np.full(len(st), -1, dtype=np.int64)  # per slot id, the root it reads
    read_roots[ins] = roots[ins]
    # overlapped inputs: the value their nearest exporting ancestor on the same tensor gives
    todo = np.flatnonzero(live & is_in & overlapped)
    tid, cur = st[todo], parents[todo]
    while len(todo):
        on = cur >= 0
        on[on] = st[cur[on]] == tid[on]
        todo, tid, cur = todo[on], tid[on], cur[on]
        hit = exports[cur]
        read_roots[todo[hit]] = roots[cur[hit]]
        todo, tid, cur = todo[~hit], tid[~hit], parents[cur[~hit]]
    # every other reader of a tensor quantized after its producer reads that pair (the
    # exporter's setdefault: a slot with its own key keeps it)
    after_root = np.full(len(const), -1, dtype=np.int64)
    after_root[st[outs]] = roots[outs]
    got = after_root[st]
    rest = is_in & (got >= 0) & (read_roots < 0)
    read_roots[rest] = got[rest]
    keys = np.flatnonzero(read_roots >= 0)
    return roots, after, dict(zip(keys.tolist(), read_roots[keys].tolist())), read_roots


def _same(a: np.ndarray[Any, Any] | None, b: np.ndarray[Any, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    if a is b and a.size == 1:  # members reading one root's scale: no numpy call
        v = a.item()
        return not (isinstance(v, float) and math.isnan(v))  # array_equal: NaN != NaN
    a32, b32 = np.asarray(a, np.float32).reshape(-1), np.asarray(b, np.float32).reshape(-1)
    return a32.shape == b32.shape and bool(np.array_equal(a32, b32))


def _nonzero(offset: np.ndarray[Any, Any] | None) -> bool:
    """``offset.any()`` (a zero point set) without the Python wrapper of ``ndarray.any``."""
    return offset is not None and bool(np.count_nonzero(offset))


def audit(
    graph: Graph,
    plan: QuantPlan,
    platform: Platform | str,
    *,
    dangling: Iterable[Any] = (),
    dispatch: str = "all",
) -> AuditResult:
    """Compare ``plan`` (a model's placement, e.g. from :func:`fusekit.load_quantized`) with
    what ``platform``'s default pipeline plans for ``graph``; see the module docstring.

    ``dangling`` takes :attr:`fusekit.qimport.QuantizedImport.dangling` to report unpaired
    Q/DQ as well; ``dispatch`` goes to :func:`fusekit.init_plan`. The plan must hold scales
    (an imported plan does).
    """
    # hundreds of thousands of small acyclic objects; promoted at the end, or the collector's
    # next young collection walks them all (half a second at 100k ops; see gc_paused)
    with gc_paused(promote=True):
        return _audit(graph, plan, platform, dangling, dispatch)


def _audit(
    graph: Graph, plan: QuantPlan, platform: Platform | str, dangling: Iterable[Any], dispatch: str
) -> AuditResult:
    p = get_platform(platform)
    res = default_pipeline(p).run(graph, init_plan(graph, p, dispatch))
    want_plan = res.plan
    have = _Where(plan, require_scales=True)
    want = _Where(want_plan, require_scales=False)
    made_by: list[Callable[[Slot], Decision | None]] = []  # on the first finding needing it
    idx = graph.index
    ar = graph.arrays()  # plain lists for the per-slot loops (the pipeline built them)
    st = ar.slot_tensor
    names = ar.tensor_names
    findings: list[Finding] = []
    symmetric_only = p.ppq_target in _SYMMETRIC_ONLY

    def decision_of(slot: Slot) -> Decision | None:
        # the decision log costs more than the audit: replay it only when a finding needs it,
        # and build only the decisions findings name (27k findings at 100k ops: ~1 s -> ~0.5 s)
        if not made_by:
            made_by.append(_first_changes(res))
        return made_by[0](slot)

    # 1. points the model has where the platform has none: fused, passive, or float ops
    for tid in np.flatnonzero(have.quantized_mask() & ~want.quantized_mask()).tolist():
        t = names[tid]
        prod = graph.producer(t)
        readers = graph.consumers(t)
        d = decision_of(prod) if prod is not None else None  # (a finding follows)
        ops = tuple(s.op for s in ([prod] if prod is not None else []) + list(readers))
        slots = tuple(([prod] if prod is not None else []) + list(readers))
        soi = [
            s
            for s in readers
            if p.socket(rule_type(graph.op(s.op))).input(s.index) == "SOI"
            and (sid := idx.slot_id(s)) in have.reads
        ]
        if soi:
            findings.append(
                Finding(
                    "qdq_on_shape",
                    "error",
                    f"{t} is quantized but {soi[0].op} reads it as shape/index data",
                    tuple(s.op for s in soi),
                    (t,),
                    tuple(soi),
                    rule=f"{p.name} sockets: {rule_type(graph.op(soi[0].op))} input "
                    f"{soi[0].index} is SOI",
                    fix=f"remove the Q/DQ on {t}",
                )
            )
            continue
        if d is not None and d.pass_name in _FUSING_PASSES:
            findings.append(
                Finding(
                    "fused_activation_qdq",
                    "warning",
                    f"Q/DQ on {t} between {d.ops[0]} and "
                    f"{', '.join(d.ops[1:])}, which {p.name} fuses into it ({d.rule}): an "
                    "extra requantization and a lost fusion",
                    d.ops,
                    (t,),
                    slots,
                    rule=d.rule,
                    decision=str(d),
                    fix=f"remove the Q/DQ pair on {t}; quantize the activation's output only",
                )
            )
            continue
        if d is not None and d.pass_name == "passive_fusion" and prod is not None:
            op = graph.op(prod.op)
            in_root = have.reads.get(idx.slot_id(Slot(prod.op, "in", 0)))
            out_root = have.after.get(tid)
            if out_root is None:
                out_root = next(
                    (have.reads[r] for r in map(idx.slot_id, readers) if r in have.reads), None
                )
            same = (
                in_root is not None
                and out_root is not None
                and _same(have.scale(in_root), have.scale(out_root))
            )
            if same:
                findings.append(
                    Finding(
                        "passive_requantize",
                        "info",
                        f"{op.op_type} {op.name} output {t} is requantized with its input's "
                        "scale: the backend passes it through, the Q/DQ costs nothing",
                        (op.name,),
                        (t,),
                        slots,
                        rule=d.rule,
                        decision=str(d),
                        fix=f"the Q/DQ on {t} can go",
                    )
                )
            else:
                findings.append(
                    Finding(
                        "passive_scale_change",
                        "warning",
                        f"{op.op_type} {op.name} output {t} has another scale than its input"
                        + ("" if in_root is not None else " (its input is float)")
                        + f": {p.name} keeps a passive op's input scale, the backend "
                        "requantizes or leaves the int8 path",
                        (op.name,),
                        (t,),
                        slots,
                        rule=d.rule,
                        decision=str(d),
                        fix=f"give {t} the scale of {op.inputs[0]} (or drop its Q/DQ)",
                    )
                )
            continue
        findings.append(
            Finding(
                "extra_qdq",
                "warning",
                f"Q/DQ on {t}, which {p.name} leaves float" + (f" ({d})" if d is not None else ""),
                ops,
                (t,),
                slots,
                rule=d.rule if d is not None else "not quantized by the platform",
                decision=str(d) if d is not None else "",
                fix=f"remove the Q/DQ on {t}",
            )
        )

    # 2. slot by slot on the ops the platform quantizes. The candidates of each kind are
    #    found over arrays (input slots of quantized ops by what each plan reads, aligned
    #    groups by op and root), the op values read only for a finding; the findings are
    #    sorted back into the order of a walk over the ops (per op: its float inputs, its
    #    aligned groups, its weight, its bias).
    staged: list[tuple[int, int, int, Finding]] = []  # (op position, kind, slot id, finding)
    pos = ar.pos
    dispatched = want_plan.dispatch.tolist()
    st_np, is_in, slot_op_np, _ = graph.derived(_slot_arrays)
    slot_op = ar.slot_op
    quantized_op = np.asarray([d is not None for d in dispatched], dtype=bool)
    live_in = quantized_op[slot_op_np] & is_in if len(st_np) else np.zeros(0, dtype=bool)
    have_root = have.read_roots
    have_reads, want_reads = have_root >= 0, want.read_roots >= 0
    # computing op inputs the platform quantizes but the model reads float
    computing, bias_types = p.computing_types, p.bias_types
    for sid in np.flatnonzero(live_in & want_reads & ~have_reads & (st_np >= 0)).tolist():
        oid = slot_op[sid]
        t_rule = ar.op_types[oid]  # the rule type
        k = sid - ar.slot_base[oid]
        if t_rule not in computing or (k == 2 and t_rule in bias_types):
            continue  # a bias: the rules below
        name = ar.op_names[oid]
        what = "weight" if k == 1 else "activation"
        op = graph.op(name)
        finding = Finding(
            "float_input",
            "error",
            f"{op.op_type} {name} input {k} ({what} {names[st[sid]]}) has no Q/DQ: "
            "the op runs in float",
            (name,),
            (names[st[sid]],),
            (Slot(name, "in", k),),
            rule=f"{p.name} quantizes {op.op_type} input {k}",
            fix=f"quantize {names[st[sid]]} in front of {name}",
        )
        staged.append((pos[oid], 0, sid, finding))
    # aligned inputs: the platform gives them one scale (one root), the model several
    # (overlapped: fused away, not aligned)
    aligned = live_in & have_reads & ((want.codes & (_CONFIG | _OVERLAPPED)) == _CONFIG)
    sids = np.flatnonzero(aligned)
    key = slot_op_np[sids] * max(len(st_np), 1) + want.roots[sids]
    by_key = np.argsort(key, kind="stable")  # members of a group stay in slot order
    runs = np.flatnonzero(np.r_[True, key[by_key][1:] != key[by_key][:-1]])
    ends = np.r_[runs[1:], len(by_key)]
    groups = ends - runs > 1
    # a group whose members all read one root of the model has one scale (unless it is
    # NaN, which array_equal does not equal to itself): only the others are compared
    one_root = np.zeros(len(runs), dtype=bool)
    if len(by_key):
        member_roots = have_root[sids[by_key]]
        first = member_roots[runs]
        one_root = first == np.maximum.reduceat(member_roots, runs)
        one_root &= first == np.minimum.reduceat(member_roots, runs)
        for r in set(first[groups & one_root].tolist()):
            sc = have.scale(r)
            if not _same(sc, sc):
                one_root[first == r] = False
    check = groups & ~one_root
    for lo, hi in zip(runs[check].tolist(), ends[check].tolist()):
        members = sids[by_key[lo:hi]].tolist()
        scales = [have.scale(have.reads[s]) for s in members]
        if all(_same(scales[0], sc) for sc in scales[1:]):
            continue
        oid = slot_op[members[0]]
        name = ar.op_names[oid]
        slots_ = tuple(idx.slot_key(s) for s in members)
        op = graph.op(name)
        d = next((x for x in map(decision_of, slots_) if x is not None), None)
        finding = Finding(
            "unaligned_inputs",
            "warning",
            f"{op.op_type} {name} inputs {[s.index for s in slots_]} have different "
            f"scales; {p.name} aligns them to one",
            (name,),
            tuple(names[st[s]] for s in members),
            slots_,
            rule=d.rule if d is not None else "alignment",
            decision=str(d) if d is not None else "",
            fix="quantize these inputs with one scale (the range covering all of them)",
        )
        staged.append((pos[oid], 1, members[0], finding))
    # weights and biases
    n_in, base = ar.n_in, ar.slot_base
    FP32 = QuantState.FP32
    want_cfgs, have_cfgs = want.configs, have.configs
    for t_rule in p.weights:
        for oid in ar.by_type.get(t_rule, ()):
            if dispatched[oid] is None or n_in[oid] < 2:
                continue
            sid = base[oid] + 1
            root = have.reads.get(sid)
            want_cfg = want_cfgs[sid]
            if root is None or want_cfg is None or want_cfg.state == FP32:
                continue
            cfg = have_cfgs[root]
            if want_cfg.policy.per_channel and not (
                cfg.scale is not None
                and cfg.scale.size > 1
                and cfg.channel_axis == want_cfg.channel_axis
            ):  # else per channel on the platform's axis: _weights finds nothing
                found: list[Finding] = []
                _weights(found, ar.op_names[oid], sid, have, want_plan, p)
                staged.extend((pos[oid], 2, sid, f) for f in found)
    for t_rule in bias_types:
        for oid in ar.by_type.get(t_rule, ()):
            if dispatched[oid] is None or n_in[oid] < 3 or st[base[oid] + 2] < 0:
                continue
            want_cfg = want_cfgs[base[oid] + 2]
            if want_cfg is None or want_cfg.state == FP32:
                continue  # the platform leaves the bias float: _bias finds nothing
            found = []
            in_sids = range(base[oid], base[oid] + n_in[oid])
            _bias(found, ar.op_names[oid], in_sids, have, want_plan, p)
            staged.extend((pos[oid], 3, base[oid] + 2, f) for f in found)
    staged.sort(key=lambda x: x[:3])
    findings.extend(f for *_, f in staged)

    # 3. schemes the backend cannot run
    want_act = p.activation
    want_bits, symmetric = want_act.num_bits, want_act.policy.symmetric
    for root in sorted({*have.reads.values(), *have.after.values()}):
        cfg = have_cfgs[root]
        if cfg is None or cfg.num_bits >= 32:
            continue
        bits_bad = cfg.num_bits != want_bits
        problems = []
        if bits_bad:
            problems.append(f"{cfg.num_bits}-bit (the platform runs {want_bits}-bit)")
        if symmetric and cfg.quant_min >= 0:
            problems.append("unsigned (uint8)")
        if symmetric and _nonzero(cfg.offset):
            problems.append("non-zero zero point")
        if not problems:
            continue
        slot = idx.slot_key(root)
        t = names[st[root]]
        sev = "error" if symmetric_only or bits_bad else "info"
        findings.append(
            Finding(
                "unsupported_scheme",
                sev,
                f"{t} is quantized {', '.join(problems)}"
                + (
                    f": {p.name} runs symmetric signed Q/DQ only"
                    if sev == "error"
                    else f": {p.name}'s rule is symmetric signed, the backend runs it anyway"
                ),
                (slot.op,),
                (t,),
                (slot,),
                rule=f"{p.name} activation rule {want_act.policy} {want_act.num_bits}-bit",
                fix="requantize symmetric int8 (zero point 0)",
            )
        )

    # 4. Q/DQ the import could not pair
    for dg in dangling:
        unread = dg.kind == "dq_unread"
        findings.append(
            Finding(
                "dangling_qdq",
                "info" if unread else "warning",
                {
                    "q_without_dq": f"QuantizeLinear {dg.node} on {dg.tensor} has no "
                    "DequantizeLinear after it: integer data leaves the Q/DQ scheme",
                    "dq_without_q": f"DequantizeLinear {dg.node} reads {dg.tensor}, which no "
                    "QuantizeLinear or integer initializer gives",
                    "dq_unread": f"DequantizeLinear {dg.node} of {dg.tensor} feeds nothing",
                }.get(dg.kind, f"{dg.kind} {dg.node}"),
                (dg.node,),
                (dg.tensor,),
                fix="remove it" if unread else "pair it or remove it",
            )
        )
    return AuditResult(p.name, tuple(findings), res)


def _weights(
    findings: list[Finding],
    name: str,
    sid: int,
    have: _Where,
    want_plan: QuantPlan,
    p: Platform,
) -> None:
    idx = want_plan.graph.index
    root = have.reads.get(sid)
    want_cfg = want_plan.configs[sid]
    if root is None or want_cfg is None or want_cfg.state == QuantState.FP32:
        return
    if not want_cfg.policy.per_channel:
        return
    cfg = have.plan.configs[root]
    slot = idx.slot_key(sid)
    t = idx.tensor_names[idx.slot_tensor[sid]]
    scale = cfg.scale
    per_channel = scale is not None and scale.size > 1
    shape = want_plan.graph.initializers.get(t)
    dims = shape.dims if shape is not None else ()
    axis = want_cfg.channel_axis
    if axis is not None and dims and len(dims) > axis % len(dims) and dims[axis % len(dims)] == 1:
        return  # one channel: per-tensor is per-channel
    if per_channel and cfg.channel_axis == want_cfg.channel_axis:
        return
    op = want_plan.graph.op(name)
    if not per_channel:
        findings.append(
            Finding(
                "weight_per_tensor",
                "warning",
                f"{op.op_type} {op.name} weight {t} is quantized per tensor; {p.name} "
                f"quantizes it per channel (axis {want_cfg.channel_axis}): accuracy is lost",
                (op.name,),
                (t,),
                (slot,),
                rule=f"{p.name} weight rule {want_cfg.policy}",
                fix=f"quantize {t} per channel along axis {want_cfg.channel_axis}",
            )
        )
    elif cfg.channel_axis != want_cfg.channel_axis:
        findings.append(
            Finding(
                "weight_axis",
                "error",
                f"{op.op_type} {op.name} weight {t} is quantized per channel along axis "
                f"{cfg.channel_axis}, not the output channels (axis {want_cfg.channel_axis})",
                (op.name,),
                (t,),
                (slot,),
                rule=f"{p.name} weight rule {want_cfg.policy}",
                fix=f"quantize {t} along axis {want_cfg.channel_axis}",
            )
        )


def _bias(
    findings: list[Finding],
    name: str,
    in_sids: Sequence[int],
    have: _Where,
    want_plan: QuantPlan,
    p: Platform,
) -> None:
    idx = want_plan.graph.index
    sid = in_sids[2]
    want_cfg = want_plan.configs[sid]
    root = have.reads.get(sid)
    if want_cfg is None or want_cfg.state == QuantState.FP32:
        return
    t = idx.tensor_names[idx.slot_tensor[sid]]
    slot = idx.slot_key(sid)
    op = want_plan.graph.op(name)  # one per quantized bias: cheap next to the numpy below
    cfg = have.plan.configs[root] if root is not None else None
    if cfg is None or cfg.num_bits != 32:
        findings.append(
            Finding(
                "bias_not_int32",
                "error",
                f"{op.op_type} {op.name} bias {t} is "
                + ("float" if cfg is None else f"{cfg.num_bits}-bit")
                + f"; {p.name} runs an int32 bias with scale input x weight",
                (op.name,),
                (t,),
                (slot,),
                rule=f"{p.name} bias rule ({want_cfg.state.name}, 32-bit)",
                fix=f"store {t} as int32 with scale = input scale x weight scale",
            )
        )
        return
    x_root = have.reads.get(in_sids[0])
    w_root = have.reads.get(in_sids[1])
    if x_root is None or w_root is None:
        return
    sx, sw = have.scale(x_root), have.scale(w_root)
    if sx is None or sw is None or cfg.scale is None:
        return
    expect = np.asarray(sx, np.float32).reshape(-1) * np.asarray(sw, np.float32).reshape(-1)
    got = np.asarray(cfg.scale, np.float32).reshape(-1)
    if got.size == 1 and expect.size > 1:
        got = np.broadcast_to(got, expect.shape)
    if expect.size == 1 and got.size > 1:
        expect = np.broadcast_to(expect, got.shape)
    if got.shape == expect.shape and np.allclose(got, expect, rtol=1e-5, atol=0):
        return
    findings.append(
        Finding(
            "bias_scale",
            "error",
            f"{op.op_type} {op.name} bias {t} scale is not input scale x weight scale: the "
            "integer kernel adds it at another scale than the simulation",
            (op.name,),
            (t,),
            (slot,),
            rule=f"{p.name} bias rule: scale = input scale x weight scale",
            fix=f"requantize {t} with scale input x weight",
        )
    )


def kernel_findings(report: Any) -> tuple[Finding, ...]:
    """Findings from onnxruntime's verdict on the model (a :class:`fusekit.kernels.KernelReport`).

    A computing op onnxruntime's CPU provider runs in float is an error (the int8 accuracy the
    model claims is not what runs there), with the report's reason; a Q/DQ it executes in
    float around float kernels is a warning (it costs time and buys nothing).
    """
    out: list[Finding] = []
    for e in report.ops:
        if e.int8:
            continue
        out.append(
            Finding(
                "float_kernel",
                "error",
                f"onnxruntime runs {e.op_type} {e.op} as {e.kernel or 'nothing'} (float): "
                f"{e.reason}",
                (e.op,),
                rule=f"onnxruntime {report.ort_version} CPU provider, {report.level} optimizations",
                fix="quantize its inputs and output as the int8 kernel needs (see the reason)",
            )
        )
    for q in report.stray_qdq:
        out.append(
            Finding(
                "stray_qdq",
                "warning",
                f"{q.op_type} {q.node} on {q.tensor} is executed in float next to "
                f"{', '.join(q.next_to) or 'float ops'}",
                (q.node,),
                (q.tensor,),
                rule=f"onnxruntime {report.ort_version} CPU provider",
                fix=f"remove the Q/DQ on {q.tensor}",
            )
        )
    return tuple(out)
