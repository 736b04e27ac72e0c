"""The graph value: ops, tensors and initializers of an ONNX model as immutable data.

A :class:`Graph` is a frozen value. Its ops live in a ``PMap`` keyed by name and its
topological order in a ``PVector``; every edit (:meth:`Graph.add_op`, :meth:`Graph.remove_op`,
:meth:`Graph.rename_tensor`, ...) returns a new graph and leaves the old one valid, sharing
everything that did not change.

Passes read the graph through its :attr:`Graph.index`, a :class:`~fusekit._topology.Topology`
(public name :class:`GraphIndex`) that numbers ops, slots and tensors with integers so that the
hot loops run over plain lists instead of hashing names. It is built once per graph value, on
first use; an edit that keeps the structure (new weights, a value type) shares its lists, any
other edit leaves the new value to build its own. Facts derived from the graph are cached per
value by :meth:`Graph.derived`.

This module knows nothing of protobuf: :mod:`fusekit.onnx_io` translates ONNX to and from these
values, and hands over opaque ``source`` references so that a round trip is lossless without the
core ever importing ``onnx``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import numpy as np
from pyrsistent import PMap, PVector, pmap, pvector

from ._topology import Slot, Topology, rule_type
from ._util import gc_paused, promote_to_old_generation
from .errors import (
    DanglingInput,
    DuplicateProducer,
    GraphCycle,
    InvalidGraph,
    UnknownOp,
    UnknownSlot,
)

T = TypeVar("T")

__all__ = [
    "Attributes",
    "Graph",
    "GraphArrays",
    "GraphIndex",
    "Initializer",
    "Op",
    "OpaqueAttribute",
    "Slot",
    "Tensor",
    "TensorType",
    "check_invariants",
    "rule_type",
    "subgraph_notes",
]


# --------------------------------------------------------------------------------------------
# Bulk construction helpers


# --------------------------------------------------------------------------------------------
# Attributes


@attrs.frozen
class OpaqueAttribute:
    """An attribute fusekit keeps but does not interpret (sub-graphs, type protos, ...).

    ``kind`` is the ONNX attribute type name (``"GRAPH"``, ``"GRAPHS"``, ``"TYPE_PROTO"`` ...) and
    ``payload`` the serialized ``AttributeProto``, written back byte for byte.
    """

    kind: str
    payload: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


def _values_equal(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        )
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    return a == b


class Attributes(Mapping[str, Any]):
    """An op's attributes: an immutable ``name -> value`` mapping.

    Values are plain Python (``int``, ``float``, ``str``, tuples of those), read-only numpy arrays
    for tensors, and :class:`OpaqueAttribute` for sub-graphs. A mapping loaded from ONNX is decoded
    lazily on first access: a 100k-op model has half a million attributes and most passes never
    look at them. ``source`` is the opaque original the loader re-emits when nothing changed.
    """

    __slots__ = ("_decode", "_items", "_source")

    def __init__(
        self,
        items: Mapping[str, Any] | None = None,
        *,
        source: object = None,
        decode: Callable[[object], Mapping[str, Any]] | None = None,
    ):
        self._items: PMap[str, Any] | None = pmap(items) if items is not None else None
        self._source = source
        self._decode = decode
        if self._items is None and (source is None or decode is None):
            self._items = pmap()

    @property
    def source(self) -> object:
        """The loader's original attribute list, or None for attributes built in Python."""
        return self._source

    def _map(self) -> PMap[str, Any]:
        items = self._items
        if items is None:
            assert self._decode is not None
            items = pmap(self._decode(self._source))
            self._items = items
        return items

    def __getitem__(self, key: str) -> Any:
        return self._map()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._map()))

    def __len__(self) -> int:
        return len(self._map())

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        mine, theirs = self._map(), dict(other.items())
        return mine.keys() == theirs.keys() and all(
            _values_equal(v, theirs[k]) for k, v in mine.items()
        )

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._map().keys())))

    def set(self, key: str, value: Any) -> Attributes:
        """Return new attributes with ``key`` set (the ONNX source is dropped)."""
        return Attributes(self._map().set(key, value))

    def __repr__(self) -> str:
        return "Attributes({" + ", ".join(f"{k!r}: {self[k]!r}" for k in self) + "})"


EMPTY_ATTRIBUTES = Attributes()
_Decoder = Callable[[object], Mapping[str, Any]]
_new = object.__new__  # the loader's factories fill slots of a bare instance directly


def _to_attributes(value: Mapping[str, Any] | Attributes | None) -> Attributes:
    if value is None:
        return EMPTY_ATTRIBUTES
    if isinstance(value, Attributes):
        return value
    return Attributes(value)


# --------------------------------------------------------------------------------------------
# Ops, tensors, initializers


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return value if type(value) is tuple else tuple(value)


@attrs.frozen
class Op:
    """One node of the graph.

    ``inputs`` and ``outputs`` are tensor names in slot order; ``""`` marks an omitted optional
    input. ``implicit_inputs`` lists outer-scope tensors that the op's sub-graphs (If/Loop/Scan)
    read; they order the op after their producers but are not quantization slots. ``source`` is
    the loader's original node, kept so that fields fusekit does not model (doc strings,
    metadata) survive a round trip; it takes no part in equality.
    """

    name: str
    op_type: str
    inputs: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    outputs: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    attributes: Attributes = attrs.field(
        default=EMPTY_ATTRIBUTES, converter=_to_attributes, hash=False
    )
    domain: str = ""
    implicit_inputs: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    source: object = attrs.field(default=None, eq=False, repr=False, hash=False)

    def slots(self) -> tuple[Slot, ...]:
        """Every input slot then every output slot of this op."""
        n = self.name
        return tuple(Slot(n, "in", i) for i in range(len(self.inputs))) + tuple(
            Slot(n, "out", i) for i in range(len(self.outputs))
        )


def _loaded_op_factory() -> Callable[..., Op]:
    """The loader's constructor of an op whose attributes stay undecoded in ``node``.

    One call builds both the op and its lazy :class:`Attributes` (filling slots directly):
    the load loop runs it once per node, and a Python call costs as much as three slot writes.
    """
    d = Op.__dict__
    setters = [d[f.name].__set__ for f in attrs.fields(Op)]
    s_name, s_type, s_in, s_out, s_attr, s_dom, s_impl, s_src = setters
    a = Attributes.__dict__
    a_items, a_src, a_dec = a["_items"].__set__, a["_source"].__set__, a["_decode"].__set__

    def make(
        name: str,
        op_type: str,
        inputs: tuple[str, ...],
        outputs: tuple[str, ...],
        domain: str,
        implicit_inputs: tuple[str, ...],
        node: object,
        decode: _Decoder,
    ) -> Op:
        attributes: Attributes = _new(Attributes)
        a_items(attributes, None)
        a_src(attributes, node)
        a_dec(attributes, decode)
        op = _new(Op)
        s_name(op, name)
        s_type(op, op_type)
        s_in(op, inputs)
        s_out(op, outputs)
        s_attr(op, attributes)
        s_dom(op, domain)
        s_impl(op, implicit_inputs)
        s_src(op, node)
        return op

    return make


make_loaded_op = _loaded_op_factory()


@attrs.frozen
class TensorType:
    """Element type (ONNX ``TensorProto.DataType`` number, 0 = unknown) and shape if known.

    A shape is a tuple whose entries are ints, symbolic dimension names, or None when unknown;
    ``shape is None`` means even the rank is unknown.
    """

    elem_type: int = 0
    shape: tuple[int | str | None, ...] | None = None


UNKNOWN_TYPE = TensorType()


@attrs.frozen
class Tensor:
    """What the graph knows about one tensor name (a view computed by :meth:`Graph.tensor`)."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None
    is_initializer: bool
    is_constant: bool
    is_graph_input: bool
    is_graph_output: bool


# ONNX TensorProto.DataType numbers for the numpy dtypes fusekit creates (facts, not onnx import).
_NP_TO_ONNX = {
    np.dtype("float32"): 1,
    np.dtype("uint8"): 2,
    np.dtype("int8"): 3,
    np.dtype("uint16"): 4,
    np.dtype("int16"): 5,
    np.dtype("int32"): 6,
    np.dtype("int64"): 7,
    np.dtype("bool"): 9,
    np.dtype("float16"): 10,
    np.dtype("float64"): 11,
    np.dtype("uint32"): 12,
    np.dtype("uint64"): 13,
}


def onnx_elem_type(dtype: np.dtype[Any]) -> int:
    """The ONNX element type number of a numpy dtype (InvalidGraph if unsupported)."""
    try:
        return _NP_TO_ONNX[np.dtype(dtype)]
    except KeyError:
        raise InvalidGraph(f"numpy dtype {dtype} has no ONNX element type here") from None


class Initializer:
    """A constant tensor stored in the model (a weight, a bias, a shape).

    Data is held lazily: an initializer read from ONNX keeps a reference to the protobuf tensor
    and decodes it to a read-only numpy array only when :meth:`array` is called, so loading a
    model never copies its weights into Python objects. The original bytes are written back on
    export, so a round trip is byte-identical.
    """

    __slots__ = ("_array", "_decode", "dims", "elem_type", "name", "source")

    name: str
    elem_type: int  # ONNX TensorProto.DataType number
    dims: tuple[int, ...]
    source: object  # the loader's original tensor, or None
    _decode: Callable[[object], np.ndarray[Any, Any]] | None
    _array: np.ndarray[Any, Any] | None

    def __init__(
        self,
        name: str,
        elem_type: int,
        dims: tuple[int, ...],
        *,
        array: np.ndarray[Any, Any] | None = None,
        source: object = None,
        decode: Callable[[object], np.ndarray[Any, Any]] | None = None,
    ):
        dims = tuple(dims)
        if array is not None:
            array = np.array(array, copy=True)
            array.setflags(write=False)
            if tuple(array.shape) != dims:
                raise InvalidGraph(
                    f"initializer {name!r}: dims {dims} do not match the array's shape "
                    f"{tuple(array.shape)}"
                )
        elif source is None or decode is None:
            raise InvalidGraph(f"initializer {name!r} needs an array or a source and a decoder")
        # object.__setattr__: this class refuses attribute assignment once built
        _set = object.__setattr__
        _set(self, "name", name)
        _set(self, "elem_type", elem_type)
        _set(self, "dims", dims)
        _set(self, "source", source)
        _set(self, "_decode", decode)
        _set(self, "_array", array)

    def __setattr__(self, key: str, value: object) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def __delattr__(self, key: str) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    @classmethod
    def from_array(cls, name: str, array: np.ndarray[Any, Any]) -> Initializer:
        """An initializer holding a (copied, read-only) numpy array."""
        arr = np.asarray(array)
        return cls(name, onnx_elem_type(arr.dtype), tuple(arr.shape), array=arr)

    def array(self) -> np.ndarray[Any, Any]:
        """The value as a read-only numpy array (decoded on first use)."""
        arr = self._array
        if arr is None:
            assert self._decode is not None, "initializer has neither data nor source"
            arr = np.asarray(self._decode(self.source))
            if arr.flags.writeable:
                arr.setflags(write=False)
            object.__setattr__(self, "_array", arr)  # a cache: the value itself never changes
        return arr

    @property
    def size(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.dims:
            n *= d
        return n

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Initializer):
            return NotImplemented
        return (
            self.name == other.name
            and self.elem_type == other.elem_type
            and self.dims == other.dims
            and (
                (self.source is not None and self.source is other.source)
                or _values_equal(self.array(), other.array())
            )
        )

    def __hash__(self) -> int:
        return hash((self.name, self.elem_type, self.dims))

    def __repr__(self) -> str:
        return f"Initializer({self.name!r}, elem_type={self.elem_type}, dims={self.dims})"


def _lazy_initializer_factory() -> Callable[..., Initializer]:
    """The loader's constructor of lazily decoded initializers (slots filled directly)."""
    d = Initializer.__dict__
    s_name, s_type, s_dims = d["name"].__set__, d["elem_type"].__set__, d["dims"].__set__
    s_src, s_dec, s_arr = d["source"].__set__, d["_decode"].__set__, d["_array"].__set__

    def make(
        name: str,
        elem_type: int,
        dims: tuple[int, ...],
        source: object,
        decode: Callable[[object], np.ndarray[Any, Any]],
    ) -> Initializer:
        i: Initializer = _new(Initializer)
        s_name(i, name)
        s_type(i, elem_type)
        s_dims(i, dims)
        s_src(i, source)
        s_dec(i, decode)
        s_arr(i, None)
        return i

    return make


make_lazy_initializer = _lazy_initializer_factory()


# --------------------------------------------------------------------------------------------
# The read model (see fusekit._topology)

#: 0.1's names of the read model: the persistent index and its plain-list copy are one now
GraphIndex = Topology
GraphArrays = Topology
_SUBGRAPH_TYPES = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def subgraph_notes(graph: Graph) -> tuple[str, ...]:
    """One "left float" line per op whose sub-graph bodies fusekit does not quantize."""
    return tuple(
        f"{t} {name!r}: sub-graph {', '.join(attrs_)} not planned; its ops run in float"
        for name, t, attrs_ in graph.subgraph_ops()
    )


class _Cache:
    """Derived data of one graph value, computed on first use (never part of equality).

    ``index`` is the graph's :class:`~fusekit._topology.Topology` (every other derived fact
    lives in its cache, see :meth:`Graph.derived`). ``ops_in_order``: the ops in ``order``
    as the builder held them (the loader), until the index is built: numbering them from a
    list skips one ``PMap`` lookup per op (a third of the index's time at 100k ops).
    """

    __slots__ = ("fingerprint", "index", "ops_in_order")

    def __init__(self, index: Topology | None = None):
        self.index = index
        self.fingerprint: str | None = None
        self.ops_in_order: list[Op] | None = None


def remember_op_order(graph: Graph, ops: list[Op]) -> Graph:
    """Hand the first :attr:`Graph.index` build ``graph``'s ops as a list, in ``order``.

    For builders that hold that list already (:func:`fusekit.onnx_io.load`, whose nodes are
    in topological order): the index then numbers the ops without one ``PMap`` lookup each.
    ``ops[i]`` must be ``graph.ops[graph.order[i]]``; the list is dropped once the index exists.
    """
    graph._cache.ops_in_order = ops
    return graph


@attrs.frozen
class Graph:
    """An ONNX graph as an immutable value.

    ``ops`` maps unique op names to :class:`Op`; ``order`` is a topological order of those names.
    ``inputs``/``outputs`` are the graph's input and output tensor names, ``initializers`` its
    constant tensors and ``value_types`` the element types and shapes it declares.
    ``original_names`` maps an op name fusekit invented (the ONNX node was unnamed, or its name
    was a duplicate) to the node's original name, restored on export. ``extras`` is the loader's
    opaque record of everything fusekit does not model (opsets, metadata, functions, ...).
    """

    ops: PMap[str, Op] = attrs.field(repr=lambda m: f"<{len(m)} ops>")
    order: PVector[str] = attrs.field(repr=False)
    inputs: tuple[str, ...] = attrs.field(converter=_str_tuple)
    outputs: tuple[str, ...] = attrs.field(converter=_str_tuple)
    initializers: PMap[str, Initializer] = attrs.field(
        factory=pmap, repr=lambda m: f"<{len(m)} initializers>"
    )
    value_types: PMap[str, TensorType] = attrs.field(factory=pmap, repr=False)
    name: str = ""
    original_names: PMap[str, str] = attrs.field(factory=pmap, repr=False)
    extras: object = attrs.field(default=None, eq=False, repr=False)
    _cache: _Cache = attrs.field(factory=_Cache, eq=False, repr=False, alias="_cache")

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        ops: Iterable[Op],
        inputs: Sequence[str] | Mapping[str, TensorType],
        outputs: Sequence[str],
        initializers: Iterable[Initializer] = (),
        value_types: Mapping[str, TensorType] | None = None,
        name: str = "graph",
    ) -> Graph:
        """Build and validate a graph from ops in any order (they are sorted topologically).

        ``inputs`` may be a mapping of graph input name to its :class:`TensorType`.
        Raises :class:`InvalidGraph` (or a subclass) naming every problem found.
        """
        op_list = list(ops)
        types = dict(value_types or {})
        if isinstance(inputs, Mapping):
            types.update(inputs)
            input_names = tuple(inputs)
        else:
            input_names = tuple(inputs)
        seen: set[str] = set()
        dups = [op.name for op in op_list if op.name in seen or seen.add(op.name)]  # type: ignore[func-returns-value]
        if dups:
            raise InvalidGraph(f"duplicate op names: {', '.join(sorted(set(dups)))}")
        inits = {i.name: i for i in initializers}
        order = topological_order(op_list, set(input_names) | set(inits), outputs=outputs)
        g = cls(
            ops=pmap({op.name: op for op in op_list}),
            order=pvector(order),
            inputs=input_names,
            outputs=tuple(outputs),
            initializers=pmap(inits),
            value_types=pmap(types),
            name=name,
        )
        check_invariants(g)
        return g

    # -- derived data ---------------------------------------------------------------------

    @property
    def index(self) -> Topology:
        """The graph's read model: ops, slots and tensors as integer ids and their relations
        (:class:`~fusekit._topology.Topology`), built on first use, once per graph value."""
        cache = self._cache
        idx = cache.index
        if idx is None:
            ops = self.ops
            listed = cache.ops_in_order
            with gc_paused():
                idx = cache.index = Topology.build(
                    listed if listed is not None else (ops[n] for n in self.order),
                    self.initializers,
                    self.outputs,
                )
                promote_to_old_generation()
            cache.ops_in_order = None
        return idx

    def arrays(self) -> Topology:
        """The same read model as :attr:`index` (0.1 kept a plain-list copy of the index here)."""
        return self.index

    def derived(self, fn: Callable[..., T], *args: Hashable) -> T:
        """``fn(self, *args)``, computed once per graph value and shared by every caller.

        The one cache of facts derived from a graph (element types, the non-float flags, the
        epilogue ops attached to a computing op, PPQ's shared-empty view): keyed by the
        function and its arguments, so two modules cannot collide on a name, and typed by what
        ``fn`` returns. ``fn`` must be a pure function of the graph and its arguments.
        """
        return self.index.cached((fn, *args), lambda: fn(self, *args))

    def fingerprint(self) -> str:
        """A short, stable digest of the graph's structure (computed once per graph value).

        It covers what a plan's slots refer to: every op's name, domain, type and the tensor
        each of its input and output slots reads or writes. It does not depend on op order,
        weights, shapes or the graph's name, and it is the same in every process (no Python
        string hashing), so a plan file can record it and :func:`fusekit.load_plan` can tell
        that a plan was written for another model even when op names and slot counts agree.
        Each op contributes one 64-bit BLAKE2b digest, summed modulo 2**64.
        """
        fp = self._cache.fingerprint
        if fp is None:
            total = 0
            blake = hashlib.blake2b
            for op in self.ops.values():
                domain = "" if op.domain == "ai.onnx" else op.domain
                record = "\x1f".join((op.name, domain, op.op_type, *op.inputs, "\x1e", *op.outputs))
                total += int.from_bytes(blake(record.encode(), digest_size=8).digest(), "big")
            fp = self._cache.fingerprint = f"{total % (1 << 64):016x}"
        return fp

    def subgraph_ops(self) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """Ops with sub-graphs (If/Loop/Scan bodies...): ``(op name, rule type, attributes)``.

        fusekit plans, calibrates and exports the main graph only; the ops inside these bodies
        run in float. Callers list them as "left float" (the CLI summary and ``--json``, the
        report, the export notes) so that nothing is left float silently. Only op types that
        can carry a sub-graph are looked at (the four ONNX ones and ops of other domains), in
        topological order.
        """
        ar = self.arrays()
        out: list[tuple[str, str, tuple[str, ...]]] = []
        ids = sorted(
            (o for t, lst in ar.by_type.items() if t in _SUBGRAPH_TYPES or "::" in t for o in lst),
            key=ar.pos.__getitem__,
        )
        for o in ids:
            op = self.ops[ar.op_names[o]]
            attrs_ = tuple(
                k
                for k, v in op.attributes.items()
                if isinstance(v, OpaqueAttribute) and v.kind in ("GRAPH", "GRAPHS")
            )
            if attrs_:
                out.append((op.name, ar.op_types[o], attrs_))
        return tuple(out)

    def positions(self) -> Mapping[str, int]:
        """Op name -> position in :attr:`order` (the topology's op ids are positions)."""
        return self.index.op_id

    def ops_by_type(self) -> Mapping[str, tuple[int, ...]]:
        """Op type -> op ids in topological order (computed once per graph value).

        The pattern matcher starts from these lists, so it never scans every op per pattern node.
        """
        return self.index.by_type

    # -- queries --------------------------------------------------------------------------

    def op(self, name: str) -> Op:
        """The op called ``name`` (UnknownOp if absent)."""
        try:
            return self.ops[name]
        except KeyError:
            raise UnknownOp(name) from None

    def __iter__(self) -> Iterator[Op]:
        ops = self.ops
        return (ops[n] for n in self.order)

    def __len__(self) -> int:
        return len(self.order)

    def producer(self, tensor: str) -> Slot | None:
        """The output slot producing ``tensor``, or None (graph input, initializer, unknown)."""
        idx = self.index
        tid = idx.tensor_id.get(tensor)
        if tid is None or idx.producer[tid] < 0:
            return None
        return idx.slot_key(idx.producer[tid])

    def consumers(self, tensor: str) -> tuple[Slot, ...]:
        """Every input slot reading ``tensor``, in op-id then input order."""
        idx = self.index
        tid = idx.tensor_id.get(tensor)
        if tid is None:
            return ()
        return tuple(idx.slot_key(s) for s in idx.consumers[tid])

    def tensor_of(self, slot: Slot) -> str:
        """The tensor name a slot reads or writes (``""`` for an omitted optional input)."""
        op = self.op(slot.op)
        seq = op.inputs if slot.side == "in" else op.outputs
        if slot.side not in ("in", "out") or not 0 <= slot.index < len(seq):
            raise UnknownSlot(slot)
        return seq[slot.index]

    def is_graph_input(self, tensor: str) -> bool:
        """True if ``tensor`` is a graph input."""
        return tensor in self.inputs

    def is_graph_output(self, tensor: str) -> bool:
        """True if ``tensor`` is a graph output."""
        return tensor in self.outputs

    def is_initializer(self, tensor: str) -> bool:
        """True if ``tensor`` is an initializer."""
        return tensor in self.initializers

    def is_constant(self, tensor: str) -> bool:
        """True if ``tensor`` is constant: an initializer, a ``Constant`` op's output, or
        computed by standard ops from constants only (a backend folds those)."""
        if tensor in self.initializers:
            return True
        idx = self.index
        tid = idx.tensor_id.get(tensor)
        return tid is not None and idx.is_const[tid]

    def tensor(self, name: str) -> Tensor:
        """What the graph knows about tensor ``name``."""
        tt = self.value_types.get(name)
        init = self.initializers.get(name)
        if init is not None and (tt is None or tt.shape is None):
            tt = TensorType(init.elem_type, tuple(init.dims))
        tt = tt or UNKNOWN_TYPE
        return Tensor(
            name,
            tt.elem_type,
            tt.shape,
            is_initializer=init is not None,
            is_constant=self.is_constant(name),
            is_graph_input=name in self.inputs,
            is_graph_output=name in self.outputs,
        )

    def tensor_names(self) -> tuple[str, ...]:
        """Every tensor name the graph mentions: graph inputs, initializers (sorted: a PMap's
        order depends on the string hash seed), then op inputs and outputs in op order."""
        seen: dict[str, None] = dict.fromkeys(self.inputs)
        seen.update(dict.fromkeys(sorted(self.initializers)))
        for op in self:
            seen.update(dict.fromkeys(t for t in op.inputs if t))
            seen.update(dict.fromkeys(t for t in op.outputs if t))
        return tuple(seen)

    def downstream(self, op_name: str) -> tuple[str, ...]:
        """Names of ops consuming any output of ``op_name`` (one entry per consuming slot)."""
        idx = self.index
        oid = idx.op_id.get(op_name)
        if oid is None:
            raise UnknownOp(op_name)
        out: list[str] = []
        for sid in idx.output_sids(oid):
            tid = idx.slot_tensor[sid]
            if tid >= 0:
                out.extend(idx.op_names[idx.slot_op[c]] for c in idx.consumers[tid])
        return tuple(out)

    def upstream(self, op_name: str) -> tuple[str, ...]:
        """Names of ops producing the inputs of ``op_name`` (one entry per produced input)."""
        idx = self.index
        oid = idx.op_id.get(op_name)
        if oid is None:
            raise UnknownOp(op_name)
        out: list[str] = []
        for sid in idx.input_sids(oid):
            tid = idx.slot_tensor[sid]
            if tid >= 0 and idx.producer[tid] >= 0:
                out.append(idx.op_names[idx.slot_op[idx.producer[tid]]])
        return tuple(out)

    # -- pure edits -------------------------------------------------------------------------

    def _derive(self, same_structure: bool, **changes: Any) -> Graph:
        """A new graph value with ``changes``.

        ``same_structure``: the edit keeps every op, the order, the initializers the ops read
        and the graph outputs, so the new value shares this one's topology lists (not its
        derived facts, which may read what changed). Any other edit leaves the new value
        without a topology: it is built on first read. (0.1 patched a persistent index per
        edit; see :mod:`fusekit._topology` for why that went.)
        """
        old = self._cache.index
        new_index = old.sharing_structure() if (same_structure and old is not None) else None
        return attrs.evolve(self, _cache=_Cache(new_index), **changes)

    def _known_tensor(self, name: str) -> bool:
        if name in self.inputs or name in self.initializers:
            return True
        idx = self.index
        tid = idx.tensor_id.get(name)
        return tid is not None and idx.producer[tid] >= 0

    def _producer_of(self, tensor: str) -> str | None:
        """Name of the op writing ``tensor`` (None: graph input, initializer or unknown)."""
        idx = self.index
        tid = idx.tensor_id.get(tensor) if tensor else None
        if tid is None or idx.producer[tid] < 0:
            return None
        return idx.op_names[idx.slot_op[idx.producer[tid]]]  # type: ignore[no-any-return]

    def _readers_of(self, tensor: str) -> list[str]:
        """Names of the ops reading ``tensor`` (one entry per reading slot)."""
        idx = self.index
        tid = idx.tensor_id.get(tensor) if tensor else None
        if tid is None:
            return []
        return [idx.op_names[idx.slot_op[s]] for s in idx.consumers[tid]]

    def add_op(self, op: Op, *, before: str | None = None) -> Graph:
        """A graph with ``op`` added.

        It is placed right after the last producer of its inputs (and before the first reader
        of its outputs, which exist only between the steps of a rewiring), or just before the
        op named ``before`` when given. Its inputs must exist and its outputs must be new.
        """
        if op.name in self.ops:
            raise InvalidGraph(f"op {op.name!r} already exists")
        for t in (*op.inputs, *op.implicit_inputs):
            if t and not self._known_tensor(t):
                raise DanglingInput(f"op {op.name!r} reads {t!r}, which nothing produces")
        outs = [t for t in op.outputs if t]
        if len(set(outs)) != len(outs):
            raise DuplicateProducer(f"op {op.name!r} writes the same tensor twice: {op.outputs}")
        for t in outs:
            if self._known_tensor(t):
                raise DuplicateProducer(f"op {op.name!r} writes {t!r}, which is already produced")
        pos = self.positions()
        if before is not None:
            if before not in self.ops:
                raise UnknownOp(before)
            at = pos[before]
        else:
            at = 0
            for t in (*op.inputs, *op.implicit_inputs):
                p = self._producer_of(t)
                if p is not None:
                    at = max(at, pos[p] + 1)
        order = self.order
        new_order = (
            order[:at].append(op.name).extend(order[at:])
            if at < len(order)
            else order.append(op.name)
        )
        g = self._derive(False, ops=self.ops.set(op.name, op), order=new_order)
        if _order_broken_at(g, op.name):
            if before is not None:  # the caller asked for this place: say why it is wrong
                _check_order_local(g, op.name)
            g = g._resorted()
        return g

    def _resorted(self) -> Graph:
        """This graph with its order recomputed (GraphCycle if there is none).

        Op ids are positions, so the new value builds its own topology when first read.
        """
        ops = self.ops
        available = set(self.inputs)
        available.update(self.initializers)
        order = topological_order([ops[n] for n in self.order], available)
        return attrs.evolve(self, order=pvector(order), _cache=_Cache())

    def _check_removable(self, op: Op, keep: Iterable[str] = ()) -> None:
        """Refuse to drop an output of ``op`` that is still read or is a graph output."""
        kept = set(keep)
        for t in op.outputs:
            if not t or t in kept:
                continue
            users = sorted(set(self._readers_of(t)) - {op.name})
            if users:
                raise InvalidGraph(
                    f"cannot remove {op.name!r}: its output {t!r} is still read by "
                    f"{', '.join(users)}"
                )
            if t in self.outputs:
                raise InvalidGraph(f"cannot remove {op.name!r}: its output {t!r} is a graph output")

    def remove_op(self, name: str) -> Graph:
        """A graph without op ``name``; its outputs must be neither read nor graph outputs."""
        op = self.op(name)
        self._check_removable(op)
        return self.remove_op_unchecked(name)

    def replace_op(self, name: str, new: Op) -> Graph:
        """A graph where op ``name`` is replaced by ``new`` (which may rename or rewire it).

        ``new`` may read any existing tensor (the order is adjusted if it now reads something
        produced later; a real cycle raises :class:`GraphCycle`), must keep every output that
        is still read or is a graph output, and may not write a tensor produced elsewhere.
        """
        old = self.op(name)
        if new.name != name and new.name in self.ops:
            raise InvalidGraph(f"op {new.name!r} already exists")
        for t in (*new.inputs, *new.implicit_inputs):
            if t and not self._known_tensor(t):
                raise DanglingInput(f"op {name!r} would read {t!r}, which nothing produces")
        outs = [t for t in new.outputs if t]
        if len(set(outs)) != len(outs):
            raise DuplicateProducer(f"op {new.name!r} writes the same tensor twice: {new.outputs}")
        for t in outs:
            if t not in old.outputs and self._known_tensor(t):
                raise DuplicateProducer(
                    f"op {new.name!r} would write {t!r}, which is already produced"
                )
        self._check_removable(old, keep=new.outputs)
        if new.name != name:
            before = self._next_after(name)
            g = self.remove_op_unchecked(name)
            return g.add_op(new, before=before) if before else g.add_op(new)
        g = self._derive(False, ops=self.ops.set(name, new))
        return g._resorted() if _order_broken_at(g, name) else g

    def _next_after(self, name: str) -> str | None:
        at = self.positions()[name]
        return self.order[at + 1] if at + 1 < len(self.order) else None

    def remove_op_unchecked(self, name: str) -> Graph:
        """Remove ``name`` even if its outputs are still consumed (for rewiring in steps)."""
        self.op(name)
        at = self.positions()[name]
        order = self.order
        return self._derive(
            False,
            ops=self.ops.remove(name),
            order=order[:at].extend(order[at + 1 :]),
            original_names=self.original_names.discard(name),
        )

    def set_input(self, op_name: str, index: int, tensor: str) -> Graph:
        """A graph where input ``index`` of ``op_name`` reads ``tensor``."""
        op = self.op(op_name)
        if not 0 <= index < len(op.inputs):
            raise UnknownSlot(Slot(op_name, "in", index))
        ins = list(op.inputs)
        ins[index] = tensor
        return self.replace_op(op_name, attrs.evolve(op, inputs=tuple(ins)))

    def rename_tensor(self, old: str, new: str) -> Graph:
        """A graph where tensor ``old`` is called ``new`` everywhere (ops, I/O, initializers)."""
        if old == new:
            return self
        if not new:
            raise InvalidGraph(f"cannot rename {old!r} to the empty name (an omitted input)")
        if self._mentions(new):
            raise InvalidGraph(f"cannot rename {old!r} to {new!r}: {new!r} is already used")
        if not self._mentions(old):
            raise InvalidGraph(f"cannot rename {old!r}: no such tensor")
        captured_by = self._captured_by(old)
        if captured_by:
            raise InvalidGraph(
                f"cannot rename {old!r}: the sub-graphs of {', '.join(captured_by)} read it, and "
                "fusekit keeps sub-graphs opaque (they would still read the old name)"
            )
        idx = self.index
        tid = idx.tensor_id.get(old)
        touched: set[str] = set()
        if tid is not None:
            if idx.producer[tid] >= 0:
                touched.add(idx.op_names[idx.slot_op[idx.producer[tid]]])
            touched.update(idx.op_names[idx.slot_op[s]] for s in idx.consumers[tid])
        ops_e = self.ops.evolver()

        def ren(ts: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(new if t == old else t for t in ts)

        for n in touched:
            op = self.ops[n]
            ops_e[n] = attrs.evolve(op, inputs=ren(op.inputs), outputs=ren(op.outputs))
        inits = self.initializers
        if old in inits:
            i = inits[old]
            moved = Initializer(
                new,
                i.elem_type,
                i.dims,
                array=i.array() if i.source is None else None,
                source=i.source,
                decode=i._decode,
            )
            inits = inits.remove(old).set(new, moved)
        vt = self.value_types
        if old in vt:
            vt = vt.remove(old).set(new, vt[old])
        return self._derive(
            False,
            ops=ops_e.persistent(),
            inputs=ren(self.inputs),
            outputs=ren(self.outputs),
            initializers=inits,
            value_types=vt,
        )

    def _mentions(self, name: str) -> bool:
        """True if some op, graph input/output or initializer uses the tensor name."""
        if name in self.inputs or name in self.outputs or name in self.initializers:
            return True
        idx = self.index
        tid = idx.tensor_id.get(name)
        # the index keeps the ids of tensors whose ops were removed: those are free again
        if tid is not None and (idx.producer[tid] >= 0 or len(idx.consumers[tid]) > 0):
            return True
        return bool(self._captured_by(name))

    def _captured_by(self, name: str) -> list[str]:
        """Ops whose sub-graphs read ``name`` (implicit inputs are rare and not indexed)."""
        return [op.name for op in self if op.implicit_inputs and name in op.implicit_inputs]

    def add_initializer(self, init: Initializer) -> Graph:
        """A graph with a new constant tensor."""
        if self._mentions(init.name):
            raise DuplicateProducer(f"initializer {init.name!r}: the name is already used")
        return self._derive(True, initializers=self.initializers.set(init.name, init))

    def with_constant_values(self, values: Mapping[str, np.ndarray[Any, Any]]) -> Graph:
        """A graph whose constant tensors named in ``values`` hold new arrays (weights rescaled).

        A name is an initializer or the output of a ``Constant`` op (its ``value``). Names,
        shapes and element types stay: the structure, and so the index, is shared, and a plan
        of this graph fits the new one. No change returns the very same graph.
        """
        if not values:
            return self
        inits = self.initializers.evolver()
        ops = self.ops.evolver()
        for name, arr in values.items():
            a = np.asarray(arr)
            old = self.initializers.get(name)
            if old is not None:
                dims, elem = old.dims, old.elem_type
            else:
                p = self.producer(name)
                op = self.op(p.op) if p is not None else None
                v = op.attributes.get("value") if op is not None else None
                if op is None or op.op_type != "Constant" or not isinstance(v, np.ndarray):
                    raise InvalidGraph(f"{name!r} is neither an initializer nor a Constant value")
                dims, elem = tuple(v.shape), onnx_elem_type(v.dtype)
            if tuple(a.shape) != dims or onnx_elem_type(a.dtype) != elem:
                raise InvalidGraph(
                    f"constant {name!r}: a new value must keep dims {dims} and element type "
                    f"{elem} (got {tuple(a.shape)}, {a.dtype})"
                )
            if old is not None:
                inits[name] = Initializer.from_array(name, a)
            else:
                frozen = np.array(a, copy=True)
                frozen.setflags(write=False)
                assert op is not None
                ops[op.name] = attrs.evolve(op, attributes=op.attributes.set("value", frozen))
        return self._derive(True, initializers=inits.persistent(), ops=ops.persistent())

    def remove_initializer(self, name: str) -> Graph:
        """A graph without initializer ``name`` (which must be unused)."""
        if name not in self.initializers:
            raise InvalidGraph(f"no initializer named {name!r}")
        readers = sorted(set(self._readers_of(name)) | set(self._captured_by(name)))
        if readers:
            raise InvalidGraph(f"initializer {name!r} is still read by {', '.join(readers)}")
        if name in self.outputs and name not in self.inputs:
            raise InvalidGraph(f"initializer {name!r} is a graph output")
        return self._derive(True, initializers=self.initializers.remove(name))

    def with_outputs(self, outputs: Sequence[str]) -> Graph:
        """A graph with different graph outputs (each must be produced)."""
        for t in outputs:
            if not self._known_tensor(t):
                raise DanglingInput(f"graph output {t!r} is not produced")
        return self._derive(False, outputs=tuple(outputs))

    def with_value_type(self, tensor: str, tt: TensorType) -> Graph:
        """A graph declaring ``tensor``'s element type and shape."""
        return self._derive(True, value_types=self.value_types.set(tensor, tt))


def _order_broken_at(g: Graph, name: str) -> bool:
    """True if op ``name`` sits before a producer of its inputs or after a reader of its
    outputs (the only places an edit of that one op can break the order)."""
    try:
        _check_order_local(g, name)
    except GraphCycle:
        return True
    return False


def _check_order_local(g: Graph, name: str) -> None:
    """Validate that ``name`` sits after its producers and before its consumers."""
    pos = g.positions()
    at = pos[name]
    op = g.ops[name]
    idx = g.index
    for t in (*op.inputs, *op.implicit_inputs):
        tid = idx.tensor_id.get(t) if t else None
        if tid is not None and idx.producer[tid] >= 0:
            p = idx.op_names[idx.slot_op[idx.producer[tid]]]
            if pos[p] >= at:
                raise GraphCycle(f"op {name!r} would read {t!r} before {p!r} produces it")
    for t in op.outputs:
        tid = idx.tensor_id.get(t) if t else None
        if tid is not None:
            for s in idx.consumers[tid]:
                c = idx.op_names[idx.slot_op[s]]
                if pos[c] <= at:
                    raise GraphCycle(f"op {c!r} would read {t!r} before {name!r} produces it")


# --------------------------------------------------------------------------------------------
# Ordering and invariants


def topological_order(
    ops: Sequence[Op],
    available: Iterable[str],
    source: str | None = None,
    *,
    outputs: Iterable[str] = (),
) -> list[str]:
    """Names of ``ops`` in a topological order, as close to the given order as possible.

    If the given order is already topological it is returned unchanged (so a round trip keeps
    the file's node order). Otherwise Kahn's algorithm picks, among ready ops, the one that came
    first. ``available`` are the tensors defined before any op runs (graph inputs and
    initializers); every name in ``outputs`` (the graph outputs) must be produced. Raises
    :class:`GraphCycle` naming the ops on a cycle, :class:`DuplicateProducer` for a tensor
    written twice and :class:`DanglingInput` for a tensor nothing produces.
    """
    # Fast path, one pass of C-level set operations per op: every op reads only names defined
    # before it, and the set of defined names grows by exactly the number of (non-empty)
    # outputs, so no tensor is written twice. Loading a 100k-op model spends most of its
    # ordering time here, so anything unusual falls through to the precise path below.
    defined = set(available)
    defined.add("")  # an omitted optional input reads nothing
    expected = len(defined)
    issuperset = defined.issuperset
    update = defined.update
    in_order = True
    for op in ops:
        if not issuperset(op.inputs) or (op.implicit_inputs and not issuperset(op.implicit_inputs)):
            in_order = False
            break
        outs = op.outputs
        update(outs)
        expected += len(outs) - outs.count("") if "" in outs else len(outs)
    outputs = tuple(outputs)
    if in_order and len(defined) == expected and issuperset(outputs) and "" not in outputs:
        return [op.name for op in ops]
    return _sorted_or_raise(ops, set(available), source, outputs)


def _sorted_or_raise(
    ops: Sequence[Op], available: set[str], source: str | None, outputs: tuple[str, ...]
) -> list[str]:
    """The precise (slower) half of :func:`topological_order`: diagnose, then sort."""
    producer: dict[str, int] = {}
    problems: list[str] = []
    for t in available:
        producer[t] = -1
    for i, op in enumerate(ops):
        for t in op.outputs:
            if not t:
                continue
            if t in producer:
                who = (
                    "a graph input or initializer"
                    if producer[t] < 0
                    else repr(ops[producer[t]].name)
                )
                problems.append(f"tensor {t!r} is produced by both {who} and op {op.name!r}")
            else:
                producer[t] = i
    if problems:
        raise DuplicateProducer(problems[0], problems, source)
    dangling = []
    for op in ops:
        for t in (*op.inputs, *op.implicit_inputs):
            if t and t not in producer:
                dangling.append(f"op {op.name!r} reads {t!r}, which nothing produces")
    for t in outputs:
        if not t or t not in producer:
            dangling.append(f"graph output {t!r} is not produced by any op, input or initializer")
    if dangling:
        raise DanglingInput(dangling[0], dangling, source)
    n = len(ops)
    indeg = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for i, op in enumerate(ops):
        deps = {producer[t] for t in (*op.inputs, *op.implicit_inputs) if t and producer[t] >= 0}
        indeg[i] = len(deps)
        for d in deps:
            succ[d].append(i)
    heap = [i for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    out: list[int] = []
    while heap:
        i = heapq.heappop(heap)
        out.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, j)
    if len(out) < n:
        raise GraphCycle(_describe_cycle(ops, succ, indeg), source=source)
    return [ops[i].name for i in out]


def _describe_cycle(ops: Sequence[Op], succ: list[list[int]], indeg: list[int]) -> str:
    """Name the ops on a cycle, given what Kahn's algorithm could not order.

    The unordered ops are the cycles plus everything downstream of them; peeling off, in
    reverse, the ops none of whose successors are unordered leaves the cycles (and any path
    between two of them), which is what the user has to fix.
    """
    stuck = {i for i in range(len(ops)) if indeg[i] > 0}
    out_deg = {i: sum(1 for j in succ[i] if j in stuck) for i in stuck}
    pred: dict[int, list[int]] = {i: [] for i in stuck}
    for i in stuck:
        for j in succ[i]:
            if j in stuck:
                pred[j].append(i)
    leaves = [i for i, d in out_deg.items() if d == 0]
    on_cycle = set(stuck)
    while leaves:
        i = leaves.pop()
        on_cycle.discard(i)
        for p in pred[i]:
            out_deg[p] -= 1
            if out_deg[p] == 0:
                leaves.append(p)
    names = sorted(ops[i].name for i in on_cycle)
    shown = ", ".join(repr(s) for s in names[:8]) + (" ..." if len(names) > 8 else "")
    text = f"the graph has a cycle through {len(names)} {'op' if len(names) == 1 else 'ops'}"
    text += f": {shown}"
    waiting = len(stuck) - len(on_cycle)
    if waiting:
        text += f" ({waiting} more {'op depends' if waiting == 1 else 'ops depend'} on it)"
    return text


def check_invariants(graph: Graph) -> None:
    """Raise :class:`InvalidGraph` listing every broken structural rule of ``graph``.

    Checks: op keys match op names; ``order`` is a permutation of the ops; one producer per
    tensor (op, graph input or initializer); no dangling input; acyclic and ``order``
    topological; graph outputs produced; duplicate graph input names; and, if an index was built,
    that it equals an index built from scratch.
    """
    problems: list[str] = []
    ops = graph.ops
    for k, stored in ops.items():
        if k != stored.name:
            problems.append(f"op stored under {k!r} is named {stored.name!r}")
    order = list(graph.order)
    if len(order) != len(set(order)):
        problems.append("order lists an op twice")
    if set(order) != set(ops.keys()):
        missing = set(ops.keys()) - set(order)
        extra = set(order) - set(ops.keys())
        if missing:
            problems.append(f"ops missing from order: {sorted(missing)[:5]}")
        if extra:
            problems.append(f"order names unknown ops: {sorted(extra)[:5]}")
    if len(graph.inputs) != len(set(graph.inputs)):
        problems.append("duplicate graph input names")
    produced: dict[str, str] = {}
    for t in graph.inputs:
        produced[t] = "graph input"
    for t in graph.initializers:
        if t in produced and produced[t] == "graph input":
            continue  # IR < 4 lists initializers as graph inputs too; that is allowed
        produced[t] = "initializer"
    for name in order:
        maybe = ops.get(name)
        if maybe is None:
            continue
        op = maybe
        for t in (*op.inputs, *op.implicit_inputs):
            if not t:
                continue
            if t not in produced:
                problems.append(f"op {name!r} reads {t!r} before anything produces it")
        for t in op.outputs:
            if not t:
                continue
            if t in produced:
                problems.append(f"tensor {t!r} is produced by both {produced[t]} and op {name!r}")
            else:
                produced[t] = f"op {name!r}"
    for t in graph.outputs:
        if t not in produced:
            problems.append(f"graph output {t!r} is not produced")
    idx = graph._cache.index
    if idx is not None and not problems:
        fresh = Topology.build((ops[n] for n in order), graph.initializers, graph.outputs)
        if idx.snapshot() != fresh.snapshot():
            problems.append("the cached producer/consumer index differs from a fresh one")
    if problems:
        raise InvalidGraph(problems[0], problems)
