"""The one read model of a graph value: its topology as integer-indexed plain lists.

Every module that reads a :class:`~fusekit.graph.Graph` in a loop (init_plan and the
dispatchers, the passes and the pattern matcher, export, the report, plan files) reads the same
:class:`Topology`, built once per graph value on first use (``graph.index`` and
``graph.arrays()`` both return it). Ops are numbered in the graph's topological order, so an
op id *is* its position; an op's slots are numbered contiguously, inputs first; tensors are
numbered in order of first mention. Everything is a ``list`` or ``dict`` because reading a
``list`` element costs half a ``PVector`` element and a ``dict`` lookup a fiftieth of a ``PMap``
one, and ``init_plan`` and the passes read these facts millions of times on a large graph.
Nothing here is ever mutated after :meth:`Topology.build` returns.

Facts derived from the graph (element types, the non-float flags, the epilogue ops attached to
a computing op, PPQ's shared-empty view) are cached per graph value by
:meth:`fusekit.graph.Graph.derived`, keyed by the function that computes them and its
arguments, in the topology's one cache (:meth:`Topology.cached`).

0.1 kept two copies: a persistent ``GraphIndex`` that graph edits patched, and plain-list
``GraphArrays`` copied from it per graph value. No module of ``src`` edits a graph structurally
(the one edit fusekit makes, :meth:`~fusekit.graph.Graph.with_constant_values`, keeps the
structure and shares the lists), so the patching served only the public edit API. Measured on
the 100k-op bench model (CPU time): the two copies took 0.48 s and 63 MB per graph, the one
topology 0.37 s and 51 MB, a cost every loaded model paid; a chain of 20 ``add_op`` edits, each
read, took 67 ms per edit patched (already linear: the order and positions are rebuilt) and
506 ms per edit rebuilt. The patching went: an edit's result builds its topology when first
read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .errors import UnknownSlot

if TYPE_CHECKING:
    from .graph import Initializer, Op

__all__ = ["ONNX_DOMAINS", "Slot", "Topology", "rule_type"]

T = TypeVar("T")

ONNX_DOMAINS = ("", "ai.onnx")

# deterministic ONNX ops that read only constants fold to a constant, except these
_NOT_FOLDABLE = frozenset(
    {
        "If",
        "Loop",
        "Scan",
        "SequenceMap",
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)


class Slot(NamedTuple):
    """One input or output of one op: ``Slot("conv_1", "out", 0)``.

    A slot, not a tensor, is what gets a quantization config: ``Mul(x, x)`` has two input slots
    reading one tensor. ``Slot`` is a named tuple (not an attrs class) because plans and passes
    hash millions of them; it is immutable and compares by value. Public as
    :class:`fusekit.graph.Slot`; defined here because the topology numbers slots.
    """

    op: str
    side: str  # "in" or "out"
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose

    def __str__(self) -> str:
        return f"{self[0]}|{self[1]}|{self[2]}"

    @classmethod
    def parse(cls, text: str) -> Slot:
        """Parse the ``"op|in|0"`` form used in JSON files and PPQ goldens."""
        op, sep, rest = text.rpartition("|")
        name, sep2, side = op.rpartition("|")
        if not sep or not sep2 or side not in ("in", "out") or not rest.isdigit():
            raise UnknownSlot(text, "expected 'op|in|N' or 'op|out|N'")
        return cls(name, side, int(rest))


Slot.__module__ = "fusekit.graph"  # its public home (repr, pickles, docs)


def rule_type(op: Op) -> str:
    """The name rules know ``op`` by: its type in ONNX's own domain, else ``"domain::Type"``.

    Platform rule sets and patterns name ONNX operators (``Conv``, ``Relu``...). An op of
    another domain that happens to share a name (a private ``Conv``, ``com.microsoft``'s
    ``Gelu``) is a different operator with unknown semantics, so it must not be planned as the
    ONNX one; a rule set can still name it explicitly as ``"com.microsoft::Gelu"``.
    """
    d = op.domain
    return op.op_type if d in ONNX_DOMAINS else f"{d}::{op.op_type}"


class Topology:
    """Ops, slots and tensors of one graph value as integer ids, with their relations.

    Per op id (= position in topological order): name, rule type, first slot id, input and
    output counts, consuming slots of its outputs; per slot id: op and tensor (-1 for an omitted
    optional input); per tensor id: name, producing output slot (-1: graph input, initializer or
    nothing), consuming input slots, and whether it is an initializer, a constant, a graph
    output. ``op_id``/``tensor_id`` map names back to ids. Read-only: never mutate a field.
    """

    __slots__ = (
        "_derived",
        "by_type",
        "const_op",
        "consumers",
        "is_const",
        "is_init",
        "is_output",
        "n_in",
        "n_out",
        "n_uses",
        "op_id",
        "op_names",
        "op_types",
        "order",
        "pos",
        "producer",
        "slot_base",
        "slot_op",
        "slot_tensor",
        "tensor_id",
        "tensor_names",
    )

    op_id: dict[str, int]  # op name -> op id
    op_names: list[Any]  # op id -> name
    # op id -> rule type: the op type in ONNX's domain, "domain::Type" in any other
    # (:func:`rule_type`), so that no rule, pattern or pass takes a private Conv for ONNX's
    op_types: list[Any]
    slot_base: list[int]  # op id -> first slot id
    n_in: list[int]  # op id -> number of inputs
    n_out: list[int]  # op id -> number of outputs
    n_uses: list[int]  # op id -> consuming slots of all its outputs (a tensor read twice: 2)
    slot_op: list[int]  # slot id -> op id
    slot_tensor: list[int]  # slot id -> tensor id (-1 for an omitted optional input)
    tensor_id: dict[str, int]  # tensor name -> tensor id
    tensor_names: list[str]  # tensor id -> name
    producer: list[int]  # tensor id -> producing output slot id, or -1
    consumers: list[tuple[int, ...]]  # tensor id -> consuming input slot ids, in slot order
    is_init: list[bool]  # tensor id -> is an initializer
    is_const: list[bool]  # tensor id -> constant: an initializer, or computed from constants only
    const_op: list[bool]  # op id -> a Constant op, or an op that reads only constants (it folds)
    is_output: list[bool]  # tensor id -> is a graph output
    by_type: dict[str, tuple[int, ...]]  # rule type -> op ids in topological order
    # op ids in topological order, and op id -> position: both the identity (0.1's patched
    # index had holes and its own numbering); kept because every pass reads them
    order: list[int]
    pos: list[int]
    _derived: dict[Hashable, Any]

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"Topology is read-only (tried to set {key!r})")

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        ops: Iterable[Op],
        initializers: Mapping[str, Initializer] | Iterable[str] = (),
        outputs: Iterable[str] = (),
    ) -> Topology:
        """Number ``ops`` (in the given order, which must be topological for the constant
        facts to be right) and derive every relation in one sweep."""
        op_list: list[Op] = ops if isinstance(ops, list) else list(ops)
        op_names = [op.name for op in op_list]
        op_id = dict(zip(op_names, range(len(op_names))))  # a repeated name: the last wins
        op_types = [
            op.op_type if op.domain in ONNX_DOMAINS else f"{op.domain}::{op.op_type}"
            for op in op_list
        ]
        slot_base: list[int] = []
        n_in: list[int] = []
        n_out: list[int] = []
        slot_tensor: list[int] = []
        tensor_id: dict[str, int] = {}
        tensor_names: list[str] = []
        producer: list[int] = []
        consumers: list[list[int]] = []
        # the hot loop (every slot of every op): bound methods, no attribute lookups
        get_tid = tensor_id.get
        put_slot = slot_tensor.append
        new_name, new_producer, new_consumers = (
            tensor_names.append,
            producer.append,
            consumers.append,
        )
        put_base, put_in, put_out = slot_base.append, n_in.append, n_out.append
        sid = 0
        for op in op_list:
            put_base(sid)
            ins, outs = op.inputs, op.outputs
            put_in(len(ins))
            put_out(len(outs))
            for t in ins:
                if t:
                    tid = get_tid(t)
                    if tid is None:
                        tid = tensor_id[t] = len(tensor_names)
                        new_name(t)
                        new_producer(-1)
                        new_consumers([sid])
                    else:
                        consumers[tid].append(sid)
                    put_slot(tid)
                else:
                    put_slot(-1)
                sid += 1
            for t in outs:
                if t:
                    tid = get_tid(t)
                    if tid is None:
                        tid = tensor_id[t] = len(tensor_names)
                        new_name(t)
                        new_producer(sid)
                        new_consumers([])
                    elif producer[tid] < 0:
                        producer[tid] = sid
                    # a second producer is reported by check_invariants, first one wins here
                    put_slot(tid)
                else:
                    put_slot(-1)
                sid += 1
        slot_op = list(
            itertools.chain.from_iterable(
                itertools.repeat(o, a + b) for o, (a, b) in enumerate(zip(n_in, n_out))
            )
        )
        n_ops, n_t = len(op_names), len(tensor_names)
        cons = [tuple(c) for c in consumers]
        order = list(range(n_ops))
        acc: dict[str, list[int]] = {}
        for o, t in enumerate(op_types):
            lst = acc.get(t)
            if lst is None:
                acc[t] = [o]
            else:
                lst.append(o)
        is_init = [False] * n_t
        for name in initializers:
            tid = tensor_id.get(name)
            if tid is not None:
                is_init[tid] = True
        is_const = list(is_init)
        st, base = slot_tensor, slot_base
        # A Constant op, and any deterministic op reading only constants, folds to a constant
        # (Constant -> Reshape of a bias): every backend folds it, so it is never quantized and
        # never counts as a producer when matching.
        const_op = [False] * n_ops
        for o in order:
            t = op_types[o]
            if t == "Constant":
                folds = True
            elif n_in[o] == 0 or t in _NOT_FOLDABLE:
                folds = False
            else:
                folds = True
                for s in range(base[o], base[o] + n_in[o]):
                    if st[s] >= 0 and not is_const[st[s]]:
                        folds = False
                        break
                if folds:  # only standard ONNX ops are known to be pure functions
                    op = op_list[o]
                    folds = op.domain in ONNX_DOMAINS and not op.implicit_inputs
            if folds:
                const_op[o] = True
                b = base[o] + n_in[o]
                for s in range(b, b + n_out[o]):
                    if st[s] >= 0:
                        is_const[st[s]] = True
        is_output = [False] * n_t
        for name in outputs:
            tid = tensor_id.get(name)
            if tid is not None:
                is_output[tid] = True
        n_uses = [0] * n_ops
        for o in order:
            if n_out[o] == 1:  # the common case, without a generator
                t_ = st[base[o] + n_in[o]]
                n_uses[o] = len(cons[t_]) if t_ >= 0 else 0
            else:
                b = base[o] + n_in[o]
                n_uses[o] = sum(len(cons[st[s]]) for s in range(b, b + n_out[o]) if st[s] >= 0)
        return cls._make(
            op_id=op_id,
            op_names=op_names,
            op_types=op_types,
            slot_base=slot_base,
            n_in=n_in,
            n_out=n_out,
            n_uses=n_uses,
            slot_op=slot_op,
            slot_tensor=slot_tensor,
            tensor_id=tensor_id,
            tensor_names=tensor_names,
            producer=producer,
            consumers=cons,
            is_init=is_init,
            is_const=is_const,
            const_op=const_op,
            is_output=is_output,
            by_type={k: tuple(v) for k, v in acc.items()},
            order=order,
            pos=order,  # op id == position: one list serves both
        )

    @classmethod
    def _make(cls, **fields: Any) -> Topology:
        new: Topology = object.__new__(cls)
        put = object.__setattr__
        for k, v in fields.items():
            put(new, k, v)
        put(new, "_derived", {})
        return new

    def variant(self, **changes: Any) -> Topology:
        """A topology with some fields replaced (a different reading of the same graph, e.g.
        PPQ's shared empty name) and its own, empty cache of derived facts."""
        fields = {k: getattr(self, k) for k in Topology.__slots__ if k != "_derived"}
        unknown = changes.keys() - fields.keys()
        if unknown:
            raise AttributeError(f"Topology has no field(s) {sorted(unknown)}")
        fields.update(changes)
        return Topology._make(**fields)

    def sharing_structure(self) -> Topology:
        """This topology for another graph value of the same structure: same lists, but no
        derived facts (those may read what differs, such as initializer values)."""
        return self.variant()

    # -- derived facts --------------------------------------------------------------------

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, once per topology, remembered under ``key``.

        The one cache of facts derived from a graph value: :meth:`fusekit.graph.Graph.derived`
        keys it by the function computing a fact and that function's arguments (so two modules
        cannot collide on a name, and a fact has the type its function returns); the topology
        keys its own facts (``preds``, ``ops_of_types``) by strings no function equals. A
        topology is per graph value, and a :meth:`variant` starts with an empty cache.
        """
        d = self._derived
        try:
            return d[key]  # type: ignore[no-any-return]
        except KeyError:
            value = d[key] = compute()
            return value

    def ops_of_types(self, types: frozenset[str]) -> tuple[int, ...]:
        """Op ids of the ops whose type is in ``types``, in topological order.

        What a pass that handles a few op types iterates instead of every op of the graph
        (scanning 100k ops to find the 20k Adds and Concats cost a pass as much as its work).
        Linear (a mark per op, then one C-level sweep), and remembered per type set.
        """
        return self.cached(("ops_of_types", types), lambda: self._ops_of_types(types))

    def _ops_of_types(self, types: frozenset[str]) -> tuple[int, ...]:
        lists = [self.by_type[t] for t in types if t in self.by_type]
        if len(lists) <= 1:
            return lists[0] if lists else ()
        n = len(self.order)
        mark = bytearray(n)
        for lst in lists:
            for o in lst:
                mark[o] = 1
        return tuple(itertools.compress(range(n), mark))

    @property
    def preds(self) -> list[list[int]]:
        """Op id -> the op ids producing its inputs, one entry per produced input slot.

        The op-level adjacency (PPQ's dispatcher walks it, the report lays it out); built on
        first use.
        """
        return self.cached("preds", self._preds)

    def _preds(self) -> list[list[int]]:
        st, prod, slot_op, base, n_in = (
            self.slot_tensor,
            self.producer,
            self.slot_op,
            self.slot_base,
            self.n_in,
        )
        out: list[list[int]] = []
        for o in self.order:
            row: list[int] = []
            for s in range(base[o], base[o] + n_in[o]):
                t = st[s]
                if t >= 0 and prod[t] >= 0:
                    row.append(slot_op[prod[t]])
            out.append(row)
        return out

    @property
    def succs(self) -> list[list[int]]:
        """Op id -> the op ids reading its outputs, one entry per consuming slot (outputs in
        order, each output's readers in slot order)."""
        return self.cached("succs", self._succs)

    def _succs(self) -> list[list[int]]:
        st, cons, slot_op, base, n_in, n_out = (
            self.slot_tensor,
            self.consumers,
            self.slot_op,
            self.slot_base,
            self.n_in,
            self.n_out,
        )
        out: list[list[int]] = []
        for o in self.order:
            row: list[int] = []
            b = base[o] + n_in[o]
            for s in range(b, b + n_out[o]):
                t = st[s]
                if t >= 0:
                    row.extend(slot_op[c] for c in cons[t])
            out.append(row)
        return out

    # -- id <-> key conversions -----------------------------------------------------------

    @property
    def n_slots(self) -> int:
        """Number of slot ids."""
        return len(self.slot_op)

    def slot_id(self, slot: Slot) -> int:
        """The integer id of a slot key (UnknownSlot if it does not exist)."""
        oid = self.op_id.get(slot[0])
        if oid is None:
            raise UnknownSlot(slot, f"no op named {slot[0]!r}")
        side, i = slot[1], slot[2]
        if side == "in":
            if not 0 <= i < self.n_in[oid]:
                raise UnknownSlot(slot, f"{slot[0]} has {self.n_in[oid]} inputs")
            return self.slot_base[oid] + i
        if side == "out":
            if not 0 <= i < self.n_out[oid]:
                raise UnknownSlot(slot, f"{slot[0]} has {self.n_out[oid]} outputs")
            return self.slot_base[oid] + self.n_in[oid] + i
        raise UnknownSlot(slot, "side must be 'in' or 'out'")

    def slot_key(self, sid: int) -> Slot:
        """The slot key of an integer slot id."""
        oid = self.slot_op[sid]
        k = sid - self.slot_base[oid]
        ni = self.n_in[oid]
        name = self.op_names[oid]
        if k < ni:
            return Slot(name, "in", k)
        return Slot(name, "out", k - ni)

    def is_output_slot(self, sid: int) -> bool:
        """True if the slot id is an output slot."""
        oid = self.slot_op[sid]
        return sid - self.slot_base[oid] >= self.n_in[oid]

    def slot_ids_of(self, oid: int) -> range:
        """All slot ids of an op (inputs then outputs)."""
        b = self.slot_base[oid]
        return range(b, b + self.n_in[oid] + self.n_out[oid])

    def input_sids(self, oid: int) -> range:
        """Input slot ids of an op."""
        b = self.slot_base[oid]
        return range(b, b + self.n_in[oid])

    def output_sids(self, oid: int) -> range:
        """Output slot ids of an op."""
        b = self.slot_base[oid] + self.n_in[oid]
        return range(b, b + self.n_out[oid])

    def snapshot(self) -> tuple[Any, ...]:
        """A comparable summary (names, not ids) used by the invariant check."""
        producers = {}
        consumers = {}
        for tid, name in enumerate(self.tensor_names):
            p = self.producer[tid]
            if p >= 0:
                producers[name] = self.slot_key(p)
            c = self.consumers[tid]
            if c:
                consumers[name] = sorted(self.slot_key(s) for s in c)
        live = dict(zip(self.op_names, self.op_types))
        return live, producers, consumers
