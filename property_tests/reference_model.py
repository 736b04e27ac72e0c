"""A small, mutable, PPQ-0.6.6-style model of fusion, simplify, alignment and passive parameters.

Written from ../shared/reference/ppq-behaviour.md (sections 1.4-1.5, 3.2, 3.5, 3.6, 3.9 and 4.1),
deliberately in PPQ's own style rather than fusekit's: config objects with a ``dominator``
pointer that passes re-point in place, ops holding lists of those objects, a breadth-wise
pattern matcher over plain lists. It imports nothing from fusekit's passes, plan or matcher: it
is built from a graph's public fields (ops in order, their input/output tensor names, the graph
outputs, the initializers) and from the initial per-slot states a plan starts with (platform,
state, scheme, scale), all as plain data.

Modelling decisions (each is what PPQ does on the graph it sees after its own loader):

* ``Constant`` ops are parameters: PPQ's loader turns them into parameter variables before any
  pass runs, so here they are not ops, have no consumers and are nobody's producer.
* PPQ iterates ``graph.variables`` in simplify; here variables are visited in op order, output
  order (the order PPQ creates them while loading a topologically sorted file).
* Where PPQ raises (``dominated_by`` of a root by one of its members, ``master_by`` closing a
  cycle, Align to Large or a passive parameter reading an uncalibrated / unquantized input)
  the model's own API raises :class:`PPQError`. Inside the passes (which only meet these on
  plans a user edited) the model does what fusekit documents instead: the circular
  ``dominated_by`` is a no-op, the cyclic ``master_by`` is refused, the op is skipped.
* Omitted optional inputs (``""``) have no config (PPQ's loader drops them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# PPQ's QuantizationStates numbers (section 1.1)
INITIAL, BAKED, OVERLAPPED, ACTIVATED, PASSIVE, PASSIVE_INIT, PASSIVE_BAKED, FP32 = range(1, 9)
STATE_NAMES = {
    1: "INITIAL",
    2: "BAKED",
    3: "OVERLAPPED",
    4: "ACTIVATED",
    5: "PASSIVE",
    6: "PASSIVE_INIT",
    7: "PASSIVE_BAKED",
    8: "FP32",
}
PROPER = (PASSIVE, ACTIVATED, BAKED, OVERLAPPED)  # "properly quantized" (section 3.9)
REVISABLE = (ACTIVATED, FP32, INITIAL, PASSIVE, PASSIVE_INIT)  # is_revisable (section 1.3)


class PPQError(Exception):
    """Where PPQ would raise (ValueError, PermissionError, RecursionError)."""


class CircularReference(PPQError):
    """``root.dominated_by = member``: PPQ raises; fusekit does nothing (documented)."""


class MasterCycle(PPQError):
    """``master_by`` closing a cycle: PPQ recurses forever; fusekit raises or, in a pass,
    refuses the link."""


class TQC:
    """A TensorQuantizationConfig: mutable, with a union-find parent pointer."""

    __slots__ = (
        "asym",
        "dominator",
        "floating",
        "key",
        "offset",
        "per_channel",
        "power_of_2",
        "qmax",
        "qmin",
        "scale",
        "scheme",
        "state",
        "visibility",
    )

    def __init__(self, key: str, state: int, scheme: tuple[Any, ...], **fields: Any):
        self.key = key
        self.state = state
        self.scheme = scheme
        self.dominator: TQC = self
        self.scale: Any = fields.get("scale")
        self.offset: Any = fields.get("offset")
        self.qmin = fields.get("qmin", -128)
        self.qmax = fields.get("qmax", 127)
        self.asym = fields.get("asym", False)
        self.per_channel = fields.get("per_channel", False)
        self.floating = fields.get("floating", False)
        self.power_of_2 = fields.get("power_of_2", False)
        self.visibility = fields.get("visibility", "EXPORT_WHEN_ACTIVE")

    # -- union-find (sections 1.4 and 1.5) ------------------------------------------------------

    def root(self) -> TQC:
        node = self
        seen = 0
        while node.dominator is not node:
            node = node.dominator
            seen += 1
            if seen > 100_000:
                raise PPQError("dominator chain loops")
        return node

    def dominated_by(self, other: TQC) -> None:
        """``self.dominated_by = other``: a union that re-parents self's root (PPQ's setter)."""
        if other is self:
            raise PPQError("a config cannot dominate itself")
        root_a, root_b = self.root(), other.root()
        if self is root_b:
            raise CircularReference("circular reference: a root dominated by one of its members")
        if root_a is not root_b:
            root_a.dominator = root_b
            self.dominator = root_b
            root_a.state = OVERLAPPED
            self.state = OVERLAPPED

    def master_by(self, master: TQC) -> None:
        """``self.master_by = master``: a plain re-point, PASSIVE when the master has a scale."""
        if master is self:
            raise PPQError("a config cannot master itself")
        node = master
        while node.dominator is not node:  # PPQ has no guard and recurses forever
            node = node.dominator
            if node is self:
                raise MasterCycle("master_by would close a cycle")
        self.dominator = master
        root = master.root()
        self.state = PASSIVE if root.scale is not None and root.offset is not None else PASSIVE_INIT

    def resolved_scale(self) -> Any:
        return self.root().scale

    def resolved_offset(self) -> Any:
        return self.root().offset

    def same_scheme(self, other: TQC) -> bool:
        return self.scheme == other.scheme


class RefOp:
    """A quantable (or not) operation: inputs/outputs as tensor names, configs as lists."""

    def __init__(self, name: str, op_type: str, inputs: Sequence[str], outputs: Sequence[str]):
        self.name = name
        self.type = op_type
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.platform: str | None = None
        self.ins: list[TQC | None] = [None] * len(inputs)
        self.outs: list[TQC | None] = [None] * len(outputs)
        self.attributes: Mapping[str, Any] = {}

    @property
    def quantable(self) -> bool:
        return self.platform is not None

    def configs_with_vars(self) -> list[tuple[TQC, str]]:
        pairs = [(c, v) for c, v in zip(self.ins, self.inputs) if c is not None]
        return pairs + [(c, v) for c, v in zip(self.outs, self.outputs) if c is not None]


class RefModel:
    """The graph and its configs, mutated in place by the passes below."""

    def __init__(self, ops: Sequence[RefOp], outputs: Iterable[str], parameters: Iterable[str]):
        self.ops = list(ops)
        self.by_name = {op.name: op for op in self.ops}
        self.graph_outputs = set(outputs)
        self.parameters = set(parameters)
        self.producer: dict[str, tuple[RefOp, int]] = {}
        self.consumers: dict[str, list[tuple[RefOp, int]]] = {}
        for op in self.ops:
            for i, t in enumerate(op.outputs):
                if t:
                    self.producer[t] = (op, i)
            for i, t in enumerate(op.inputs):
                if t:
                    self.consumers.setdefault(t, []).append((op, i))

    # -- PPQ's graph helpers (section 4.2) -----------------------------------------------------

    def source_op(self, t: str) -> RefOp | None:
        p = self.producer.get(t)
        return p[0] if p is not None else None

    def downstream(self, op: RefOp) -> list[RefOp]:
        """Consumers of every output, with duplicates, graph outputs not counted."""
        return [c for t in op.outputs if t for c, _ in self.consumers.get(t, [])]

    def upstream(self, op: RefOp) -> list[RefOp]:
        """The source op of every input that has one, with duplicates."""
        out = []
        for t in op.inputs:
            s = self.source_op(t) if t else None
            if s is not None:
                out.append(s)
        return out

    def dest_idx(self, t: str) -> list[tuple[RefOp, int]]:
        """``zip(var.dest_ops, var.dest_idx)``: one entry per use, index = first occurrence."""
        return [(c, c.inputs.index(t)) for c, _ in self.consumers.get(t, [])]

    # -- the matcher (section 4.1) -------------------------------------------------------------

    def pattern_matching(
        self, preds: Sequence[Callable[[RefOp], bool]], edges: Sequence[tuple[int, int]]
    ) -> list[list[RefOp]]:
        n = len(preds)
        indeg = [0] * n
        for _, d in edges:
            indeg[d] += 1
        order: list[int] = []
        ready = [i for i in range(n) if indeg[i] == 0]
        while ready:
            i = ready.pop(0)
            order.append(i)
            for s, d in edges:
                if s == i:
                    indeg[d] -= 1
                    if indeg[d] == 0:
                        ready.append(d)
        parents = {i: [s for s, d in edges if d == i] for i in range(n)}
        partials: list[list[RefOp | None]] = []
        for op in self.ops:
            if preds[order[0]](op):
                p: list[RefOp | None] = [None] * n
                p[order[0]] = op
                partials.append(p)
        for i in order[1:]:
            cands = [op for op in self.ops if preds[i](op)]
            grown = []
            for p in partials:
                for c in cands:
                    if any(p[u] is not None and c not in self.downstream(p[u]) for u in parents[i]):
                        continue
                    if c in p:
                        continue
                    if parents[i]:
                        producers = {id(s): s for s in self.upstream(c)}
                        if any(s not in p for s in producers.values()):
                            continue
                        if len(producers) != len(parents[i]):
                            continue
                    q = list(p)
                    q[i] = c
                    grown.append(q)
            partials = grown
        results = []
        for p in partials:
            members = [op for op in p if op is not None]
            ok = True
            for i in range(n):
                has_child = any(s == i for s, _ in edges)
                op = p[i]
                if (
                    has_child
                    and op is not None
                    and any(d not in members for d in self.downstream(op))
                ):
                    ok = False
                    break
            if ok:
                results.append(members)
        return results

    # -- the passes ------------------------------------------------------------------------------

    def fusion(self, platform: RefPlatform) -> None:
        """QuantizeFusionPass (section 3.2): activation, Swish, Mish, passive ops."""
        comp, acts = platform.computing, platform.activations
        for c, a in self.pattern_matching(
            [lambda op: op.type in comp, lambda op: op.type in acts], [(0, 1)]
        ):
            if not (c.quantable and a.quantable):
                continue
            c_out = c.outs[0]
            assert c_out is not None
            if c.platform != a.platform and c_out.state != FP32:
                continue
            if len(self.downstream(c)) != 1 or len(self.upstream(a)) != 1:
                continue
            a_out, a_in = a.outs[0], a.ins[0]
            assert a_out is not None and a_in is not None
            _dominate(c_out, a_out)
            _dominate(a_in, a_out)
        if "Swish" in acts:
            for c, sig, mul in self.pattern_matching(
                [lambda op: op.type in comp, _type("Sigmoid"), _type("Mul")],
                [(0, 1), (1, 2), (0, 2)],
            ):
                if not all(o.quantable and o.platform == c.platform for o in (c, sig, mul)):
                    continue
                root = mul.outs[0]
                assert root is not None
                for cfg in (c.outs[0], sig.ins[0], sig.outs[0], mul.ins[0], mul.ins[1]):
                    assert cfg is not None
                    _dominate(cfg, root)
        if "Mish" in acts:
            for c, sp, th, mul in self.pattern_matching(
                [lambda op: op.type in comp, _type("Softplus"), _type("Tanh"), _type("Mul")],
                [(0, 1), (1, 2), (2, 3), (0, 3)],
            ):
                if not all(o.quantable and o.platform == c.platform for o in (c, sp, th, mul)):
                    continue
                root = mul.outs[0]
                assert root is not None
                cfgs = (c.outs[0], th.ins[0], th.outs[0], sp.ins[0], sp.outs[0])
                for cfg in (*cfgs, mul.ins[0], mul.ins[1]):
                    assert cfg is not None
                    _dominate(cfg, root)
        for op in self.ops:
            if op.type not in platform.passive:
                continue
            src = self.source_op(op.inputs[0]) if op.inputs and op.inputs[0] else None
            if src is None or not op.quantable or op.platform != src.platform:
                continue
            first = op.ins[0]
            assert first is not None
            for cfg in op.outs:
                assert cfg is not None
                _dominate(cfg, first)

    def simplify(self) -> None:
        """QuantizeSimplifyPass (section 3.5)."""
        for op in self.ops:
            if not op.quantable:
                continue
            for k, t in enumerate(op.outputs):
                if not t:
                    continue
                src = op.outs[k]
                assert src is not None
                if src.state == FP32:
                    continue
                for consumer, idx in self.dest_idx(t):
                    if not consumer.quantable or consumer.platform != op.platform:
                        continue
                    cfg = consumer.ins[idx]
                    assert cfg is not None
                    if cfg.state == INITIAL and cfg.same_scheme(src):
                        _dominate(cfg, src)

    def fake_calibration(self) -> None:
        """The parity goldens' stand-in: every INITIAL config gets scale 1, offset 0."""
        for op in self.ops:
            for cfg, _ in op.configs_with_vars():
                if cfg.state == INITIAL:
                    cfg.scale, cfg.offset, cfg.state = 1.0, 0.0, ACTIVATED

    def alignment(self, platform: RefPlatform) -> None:
        """QuantAlignmentPass with the default setting (section 3.6), 0.6.6 flavour."""
        for op in self.ops:
            if not op.quantable:
                continue
            if op.type in platform.align_elementwise:
                master = self._align_to_large(op)
            elif op.type in platform.align_concat or op.type in platform.align_resize:
                master = self._align_to_output(op)
            else:
                continue
            if master is None:
                continue
            for up in self.upstream(op):
                if not up.quantable:
                    continue
                for cfg, var in up.configs_with_vars():
                    if any(c is op for c, _ in self.consumers.get(var, [])):
                        _dominate(cfg, master)

    @staticmethod
    def _skipped(cfg: TQC) -> bool:
        return cfg.state == FP32 or cfg.floating

    def _align_to_output(self, op: RefOp) -> TQC:
        out = op.outs[0]
        assert out is not None
        for cfg in op.ins:
            if cfg is not None and not self._skipped(cfg):
                _master(cfg, out)
        return out

    def _align_to_large(self, op: RefOp) -> TQC | None:
        ins = [c for c in op.ins if c is not None]
        if not ins:
            return None
        lo = hi = 0.0
        last = ins[-1]
        for cfg in ins:
            if self._skipped(cfg):
                continue
            s, o = cfg.resolved_scale(), cfg.resolved_offset()
            if s is None or o is None:
                return None  # PPQ aligns after calibration (it would crash here)
            if cfg.per_channel or cfg.root().per_channel:
                return None  # PPQ asserts per-tensor configs
            lo = min(lo, float(s) * (cfg.qmin - float(o)))
            hi = max(hi, float(s) * (cfg.qmax - float(o)))
        master = ins[0]
        scale, offset = _minmax(lo, hi, master)
        master.dominator = master
        master.state = PASSIVE
        master.scale, master.offset = scale, offset
        if not self._skipped(last):  # PPQ tests the leftover loop variable (its bug)
            for cfg in ins[1:]:
                _master(cfg, master)
        return master

    def passive_parameters(self, platform: RefPlatform) -> None:
        """PassiveParameterQuantizePass (section 3.9); raising cases skip the op."""
        for op in self.ops:
            if not op.quantable:
                continue
            if op.type in ("Conv", "ConvTranspose", "Gemm") and len(op.inputs) == 3:
                b, x, w = op.ins[2], op.ins[0], op.ins[1]
                assert b is not None and x is not None and w is not None
                if b.state not in (PASSIVE, PASSIVE_INIT) or x.state not in PROPER:
                    continue
                xs, ws = x.resolved_scale(), w.resolved_scale()
                if xs is None or ws is None:
                    continue
                b.scale = np.asarray(ws, dtype=np.float64) * float(np.max(xs))
                b.offset = 0.0
                b.state = PASSIVE
            elif op.type in ("Clip", "Pad"):
                x = op.ins[0]
                assert x is not None
                ks = range(1, len(op.inputs)) if op.type == "Clip" else range(2, 3)
                if op.type == "Pad" and len(op.inputs) != 3:
                    continue
                if x.state not in PROPER:
                    continue  # PPQ raises PermissionError
                for k in ks:
                    cfg = op.ins[k]
                    if cfg is None:
                        continue
                    cfg.visibility = "INTERNAL"
                    _master(cfg, x)

    # -- reading the result ----------------------------------------------------------------------

    def configs(self) -> dict[str, TQC]:
        out = {}
        for op in self.ops:
            for k, c in enumerate(op.ins):
                if c is not None:
                    out[f"{op.name}|in|{k}"] = c
            for k, c in enumerate(op.outs):
                if c is not None:
                    out[f"{op.name}|out|{k}"] = c
        return out

    def states_and_roots(self) -> dict[str, tuple[str, str]]:
        return {k: (STATE_NAMES[c.state], c.root().key) for k, c in self.configs().items()}


def _dominate(cfg: TQC, by: TQC) -> None:
    """``cfg.dominated_by = by`` inside a pass: the circular case is a no-op (fusekit's rule)."""
    with contextlib.suppress(CircularReference):
        cfg.dominated_by(by)


def _master(cfg: TQC, master: TQC) -> None:
    """``cfg.master_by = master`` inside a pass: a link closing a cycle is refused."""
    with contextlib.suppress(MasterCycle):
        cfg.master_by(master)


def _type(t: str) -> Callable[[RefOp], bool]:
    return lambda op: op.type == t


def _minmax(lo: float, hi: float, cfg: TQC) -> tuple[float, float]:
    """PPQ's minmax_to_scale_offset for per-tensor linear configs."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = float(cfg.qmax - cfg.qmin)
    if cfg.asym:
        scale = max((hi - lo) / span, 1e-8)
        offset = float(np.round(cfg.qmin - lo / scale))
    else:
        scale = max(2 * max(abs(lo), abs(hi)) / span, 1e-8)
        offset = 0.0
    if cfg.power_of_2:
        scale = float(2 ** np.ceil(np.log2(scale)))
    return scale, offset


class RefPlatform:
    """The op-type lists a PPQ quantizer and its default setting use (plain sets)."""

    def __init__(
        self,
        computing: Iterable[str],
        activations: Iterable[str],
        passive: Iterable[str],
        align_elementwise: Iterable[str] = ("Add", "Sub", "Sum"),
        align_concat: Iterable[str] = ("Concat",),
        align_resize: Iterable[str] = ("Resize",),
    ):
        self.computing = frozenset(computing)
        self.activations = frozenset(activations)
        self.passive = frozenset(passive)
        self.align_elementwise = frozenset(align_elementwise)
        self.align_concat = frozenset(align_concat)
        self.align_resize = frozenset(align_resize)


def build(
    ops: Sequence[tuple[str, str, Sequence[str], Sequence[str]]],
    outputs: Iterable[str],
    parameters: Iterable[str],
    slots: Mapping[str, Mapping[str, Any]],
    platforms: Mapping[str, str | None],
) -> RefModel:
    """A model from plain data.

    ``ops``: (name, type, inputs, outputs) in file order; ``Constant`` ops become parameters.
    ``slots``: ``"op|in|0" -> {"state": int, "scheme": tuple, "scale": ..., "offset": ...,
    "qmin", "qmax", "asym", "per_channel", "floating", "power_of_2"}`` for quantized ops.
    ``platforms``: op name -> platform (None: not quantized).
    """
    params = set(parameters)
    kept = []
    for name, t, ins, outs in ops:
        if t == "Constant":
            params.update(o for o in outs if o)
            continue
        op = RefOp(name, t, ins, outs)
        op.platform = platforms.get(name)
        if op.platform is not None:
            for side, seq, cfgs in (("in", ins, op.ins), ("out", outs, op.outs)):
                for k, tensor in enumerate(seq):
                    key = f"{name}|{side}|{k}"
                    if tensor and key in slots:
                        d = dict(slots[key])
                        cfgs[k] = TQC(key, d.pop("state"), d.pop("scheme"), **d)
        kept.append(op)
    return RefModel(kept, outputs, params)
