"""ONNX in and out: the only core module that talks protobuf.

:func:`load` turns a file, a byte string or a ``ModelProto`` into a :class:`~fusekit.graph.Graph`
and :func:`to_model` turns a graph back into a ``ModelProto``. The round trip is lossless:
every field fusekit does not model (opset imports, metadata, doc strings, value_info,
functions, external-data references, node metadata) is carried along in ``Graph.extras`` and in
each op's opaque ``source``, and initializers keep their original protobuf bytes. An unchanged
graph therefore serializes to exactly the bytes it was read from (when the file's node order was
already topological and its node names unique).

Loading is lazy where it matters for speed: attributes and initializer data are decoded on first
access, and each node's fields are read exactly once. ``fusekit.load`` of a 100k-op model costs
under twice ``onnx.load`` of the same file (``bench/bench_load.py``); what remains is reading the
protobuf fields (upb parses lazily, so every field access allocates) and building one Op each.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, ModelProto, TensorProto, helper, numpy_helper
from pyrsistent import pmap, pvector

from ._util import gc_paused, promote_to_old_generation, write_bytes_atomic, write_files_atomic
from .errors import InvalidGraph, InvalidModel, ModelNotFound
from .graph import (
    Graph,
    Initializer,
    Op,
    OpaqueAttribute,
    TensorType,
    make_lazy_initializer,
    make_loaded_op,
    remember_op_order,
    topological_order,
)

__all__ = [
    "PROTOBUF_LIMIT",
    "ModelExtras",
    "build_graph",
    "build_graph_from_nodes",
    "copy_fields",
    "embed_external_data",
    "load",
    "model_files",
    "save",
    "to_model",
    "write_bytes_atomic",
    "write_files_atomic",
]

ModelSource = str | os.PathLike[str] | bytes | ModelProto


class ModelExtras:
    """What fusekit keeps of a ModelProto without modelling it.

    The parsed original is private and never modified; :attr:`model` hands out a copy, because a
    graph is an immutable value and a caller editing the proto it got must not change what
    :func:`to_model` writes later. ``base_dir`` is where external data files live and ``label``
    names the model in error messages (its path when it was loaded from a file). fusekit reads
    header fields, graph doc strings, value_info, functions and so on from the original when
    writing the model back. The name -> ValueInfoProto tables are built on first use: only
    :func:`to_model` needs them, and a model with full shape information has as many
    value_info entries as nodes.
    """

    __slots__ = (
        "_init_order", "_input_info", "_model", "_output_info", "_value_info", "base_dir", "label"
    )  # fmt: skip

    def __init__(
        self,
        model: ModelProto,
        base_dir: str | None,
        label: str = "<model>",
        init_order: tuple[str, ...] | None = None,
    ):
        self._model = model
        # the dense initializers' file order when ``model`` does not hold them (the importer's
        # float graph: :func:`build_graph_from_nodes`)
        self._init_order = init_order
        self.base_dir = base_dir
        self.label = label
        self._input_info: dict[str, onnx.ValueInfoProto] | None = None
        self._output_info: dict[str, onnx.ValueInfoProto] | None = None
        self._value_info: dict[str, onnx.ValueInfoProto] | None = None

    @property
    def model(self) -> ModelProto:
        """A copy of the original ``ModelProto`` (editing it changes nothing in the graph)."""
        m = ModelProto()
        m.CopyFrom(self._model)
        return m

    @property
    def opsets(self) -> dict[str, int]:
        """The model's opset imports, domain -> version (``""`` is the ONNX domain)."""
        return {o.domain: o.version for o in self._model.opset_import}

    @property
    def input_info(self) -> dict[str, onnx.ValueInfoProto]:
        """Graph input name -> its original ValueInfoProto."""
        if self._input_info is None:
            self._input_info = {vi.name: vi for vi in self._model.graph.input}
        return self._input_info

    @property
    def output_info(self) -> dict[str, onnx.ValueInfoProto]:
        """Graph output name -> its original ValueInfoProto."""
        if self._output_info is None:
            self._output_info = {vi.name: vi for vi in self._model.graph.output}
        return self._output_info

    @property
    def value_info(self) -> dict[str, onnx.ValueInfoProto]:
        """Tensor name -> its original ``graph.value_info`` entry."""
        if self._value_info is None:
            self._value_info = {vi.name: vi for vi in self._model.graph.value_info}
        return self._value_info


# --------------------------------------------------------------------------------------------
# decoding

# Errors that decoding a damaged attribute or tensor raises from inside onnx/numpy/protobuf.
_DECODE_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    OSError,
    onnx.checker.ValidationError,
)


def _decode_attribute(a: AttributeProto) -> Any:
    t = a.type
    if a.ref_attr_name:
        return OpaqueAttribute("REF", a.SerializeToString())
    if t == AttributeProto.FLOAT:
        return a.f
    if t == AttributeProto.INT:
        return a.i
    if t == AttributeProto.STRING:
        try:
            return a.s.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(a.s)
    if t == AttributeProto.FLOATS:
        return tuple(a.floats)
    if t == AttributeProto.INTS:
        return tuple(a.ints)
    if t == AttributeProto.STRINGS:
        out: list[str | bytes] = []
        for s in a.strings:
            try:
                out.append(s.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(bytes(s))
        return tuple(out)
    if t == AttributeProto.TENSOR and a.t.data_location != TensorProto.EXTERNAL:
        try:
            arr = numpy_helper.to_array(a.t)
        except Exception:  # unusual element types: keep opaque
            return OpaqueAttribute("TENSOR", a.SerializeToString())
        arr = np.array(arr, copy=True)
        arr.setflags(write=False)
        return arr
    kind = AttributeProto.AttributeType.Name(t) if t in _ATTRIBUTE_TYPES else f"TYPE_{t}"
    return OpaqueAttribute(kind, a.SerializeToString())


_ATTRIBUTE_TYPES = frozenset(AttributeProto.AttributeType.values())


def _attribute_decoder(label: str) -> Callable[[object], Mapping[str, Any]]:
    """The lazy decoder of one load: a damaged attribute raises InvalidModel naming the file."""

    def decode(node: object) -> Mapping[str, Any]:
        n: onnx.NodeProto = node  # type: ignore[assignment]
        out: dict[str, Any] = {}
        for a in n.attribute:
            name = a.name
            if type(name) is not str:
                raise InvalidModel(
                    f"node {_node_label(n)} has an attribute name that is not valid UTF-8", label
                )
            try:
                out[name] = _decode_attribute(a)
            except _DECODE_ERRORS as e:
                raise InvalidModel(
                    f"node {_node_label(n)}: attribute {name!r} cannot be decoded ({e})", label
                ) from None
        return out

    return decode


def _node_label(n: onnx.NodeProto) -> str:
    """How an error message names a node: its name, or its op type when it has none."""
    return repr(_text(n.name)) if n.name else f"<unnamed {_text(n.op_type)}>"


def _text(value: str | bytes) -> str:
    """A name for an error message, even when the file's bytes are not valid UTF-8."""
    return value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")


def _encode_attribute(name: str, value: Any) -> AttributeProto:
    if isinstance(value, OpaqueAttribute):
        a = AttributeProto()
        a.ParseFromString(value.payload)
        a.name = name
        return a
    if isinstance(value, np.ndarray):
        # from_array, not ascontiguousarray first: that turns a 0-d array (a scalar Constant)
        # into shape (1,)
        return helper.make_attribute(name, numpy_helper.from_array(np.asarray(value)))
    if isinstance(value, tuple):
        value = list(value)
    return helper.make_attribute(name, value)


_MAX_DENSE = 2**31  # elements; a sparse tensor claiming more is damaged, not densified


def _tensor_decoder(base_dir: str | None, label: str) -> Callable[[object], np.ndarray[Any, Any]]:
    """The lazy initializer decoder of one load (damaged data raises InvalidModel)."""

    def to_array(t: TensorProto) -> np.ndarray[Any, Any]:
        if t.data_location == TensorProto.EXTERNAL and base_dir is None:
            raise InvalidModel(
                f"initializer {t.name!r} keeps its data in an external file, but the model was "
                "not loaded from a path; load it from its file so the data can be found",
                label,
            )
        return numpy_helper.to_array(t, base_dir=base_dir or "")

    def decode(t: object) -> np.ndarray[Any, Any]:
        try:
            if isinstance(t, onnx.SparseTensorProto):
                dense = to_array(t.values)
                idx = to_array(t.indices)
                shape = tuple(t.dims)
                size = int(np.prod(shape, dtype=np.float64))  # float: no int64 overflow
                if not 0 <= size <= _MAX_DENSE:
                    raise ValueError(f"dims {shape} are not a plausible dense size")
                out = np.zeros(size, dtype=dense.dtype)
                if idx.ndim == 1:
                    out[idx] = dense
                else:
                    out[np.ravel_multi_index(idx.T, shape)] = dense
                return out.reshape(shape)
            return to_array(t)  # type: ignore[arg-type]
        except InvalidModel:
            raise
        except _DECODE_ERRORS as e:
            name = t.values.name if isinstance(t, onnx.SparseTensorProto) else t.name  # type: ignore[attr-defined]
            raise InvalidModel(f"initializer {name!r} cannot be decoded ({e})", label) from None

    return decode


def _type_of(vi: onnx.ValueInfoProto) -> TensorType | None:
    """The tensor type a value_info declares (None for sequences, maps, optionals, no type)."""
    return _tensor_type(vi.type, vi.name)


def _tensor_type(tt: onnx.TypeProto, name: str) -> TensorType | None:
    if tt.WhichOneof("value") != "tensor_type":
        return None
    t = tt.tensor_type
    if not t.HasField("shape"):
        return TensorType(t.elem_type, None)
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        kind = d.WhichOneof("value")
        if kind == "dim_value":
            dims.append(d.dim_value)
        elif kind == "dim_param":
            p = d.dim_param
            if type(p) is not str:
                raise UnicodeError(f"a dimension name of {_text(name)!r}")
            dims.append(p)
        else:
            dims.append(None)
    return TensorType(t.elem_type, tuple(dims))


def _read_types(g: onnx.GraphProto) -> dict[str, TensorType]:
    """Declared tensor types of the graph inputs, outputs and value_info, by name.

    Decoding a TypeProto field by field costs ~8 µs; most tensors of a model share a handful
    of types, so each distinct serialized TypeProto is decoded once (TensorType is immutable,
    sharing it is safe).
    """
    types: dict[str, TensorType] = {}
    seen: dict[bytes, TensorType | None] = {}
    for seq in (g.input, g.output, g.value_info):
        for vi in seq:
            nm = vi.name
            if type(nm) is not str:
                raise UnicodeError(f"the value_info name {_text(nm)!r}")
            t = vi.type
            key = t.SerializeToString()
            if key in seen:
                tt = seen[key]
            else:
                tt = seen[key] = _tensor_type(t, nm)
            if tt is not None:
                types[nm] = tt
    return types


def _subgraph_captures(node: onnx.NodeProto) -> tuple[str, ...]:
    """Outer-scope tensor names read inside the sub-graphs of ``node`` (If/Loop/Scan)."""
    captured: list[str] = []

    def visit(g: onnx.GraphProto, outer_defined: set[str]) -> None:
        defined = set(outer_defined)
        defined.update(i.name for i in g.input)
        defined.update(i.name for i in g.initializer)
        defined.update(i.values.name for i in g.sparse_initializer)
        for n in g.node:
            for t in n.input:
                if t and t not in defined and t not in captured:
                    captured.append(t)
            for a in n.attribute:
                if a.type == AttributeProto.GRAPH:
                    visit(a.g, defined)
                elif a.type == AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        visit(sg, defined)
            defined.update(o for o in n.output if o)

    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            visit(a.g, set())
        elif a.type == AttributeProto.GRAPHS:
            for sg in a.graphs:
                visit(sg, set())
    return tuple(captured)


# Default-domain ops whose schemas have GRAPH/GRAPHS attributes. Only these, and ops of other
# domains (custom ops may carry sub-graphs), are searched for sub-graph captures: looking at
# every node's attribute list would cost more than the rest of the load loop.
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
_SUBGRAPH_TYPES = (AttributeProto.GRAPH, AttributeProto.GRAPHS)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in _SUBGRAPH_TYPES for a in node.attribute)


# --------------------------------------------------------------------------------------------
# load


def _read(source: ModelSource) -> tuple[ModelProto, str, str | None]:
    if isinstance(source, ModelProto):
        m = ModelProto()
        m.CopyFrom(source)  # the graph must not change if the caller mutates their proto
        return m, "<ModelProto>", None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = f"<{len(data)} bytes>"
        base_dir = None
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        label = str(p)
        try:
            exists, is_dir = p.exists(), p.is_dir()
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            raise InvalidModel(f"cannot read: {e}", label) from None
        if not exists:
            raise ModelNotFound("no such file", label)
        if is_dir:
            raise InvalidModel("is a directory, not an ONNX file", label)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InvalidModel(f"cannot read: {e.strerror or e}", label) from None
        base_dir = str(p.parent)
    else:
        raise InvalidModel(
            f"cannot load a {type(source).__name__}; pass a path, bytes or ModelProto"
        )
    if not data:
        raise InvalidModel("empty file, not an ONNX model", label)
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, label)
    m = ModelProto()
    try:
        m.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InvalidModel(f"not an ONNX model (protobuf decoding failed: {e})", label) from None
    return m, label, base_dir


_GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(data: bytes, label: str) -> bytes:
    """The model inside a gzip file (``model.onnx.gz`` is how many model zoos ship models)."""
    try:
        out = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise InvalidModel(f"a damaged gzip file ({e})", label) from None
    if not out:
        raise InvalidModel("a gzip file holding nothing, not an ONNX model", label)
    return out


def load(source: ModelSource) -> Graph:
    """Read an ONNX model (path, bytes or ``ModelProto``) as a :class:`Graph`.

    A gzip-compressed file (``model.onnx.gz``) is read transparently. Unnamed nodes get
    deterministic names (``<OpType>_<n>``) and duplicate names are made unique
    (``name__2``); :func:`to_model` restores the original names. Raises
    :class:`~fusekit.errors.InvalidModel` (file missing, not ONNX, no graph, bad node, a name
    that is not UTF-8, an external data file that does not exist) or
    :class:`~fusekit.errors.InvalidGraph` (dangling input, two producers, cycle, graph output
    nothing produces), each naming the file and the problem.
    """
    m, label, base_dir = _read(source)
    if not m.HasField("graph") or (m.ir_version <= 0 and len(m.opset_import) == 0):
        raise InvalidModel("not an ONNX model (no graph, no IR version, no opset)", label)
    with gc_paused():
        return build_graph(m, label, base_dir)


def build_graph(m: ModelProto, label: str, base_dir: str | None) -> Graph:
    """The graph value of a parsed model ``m`` (no defensive copy), errors naming ``label``.

    :func:`load`'s core; :func:`build_graph_from_nodes` runs the same loop on node fields
    read already (the importer's float graph, :func:`fusekit.qimport.import_quantized`).
    """
    return _build_wrapped(m, label, base_dir, None)


#: One node's fields as :func:`build_graph_from_nodes` takes them: name, op_type, domain, inputs,
#: outputs, and the node (kept as the op's source: its attributes are decoded from it lazily).
NodeFields = tuple[str, str, str, tuple[str, ...], tuple[str, ...], onnx.NodeProto]


def build_graph_from_nodes(
    m: ModelProto,
    nodes: list[NodeFields],
    initializers: list[TensorProto | Initializer],
    label: str,
    base_dir: str | None,
) -> Graph:
    """:func:`build_graph` of a model whose nodes and dense initializers were read already.

    ``m`` holds everything but the nodes and the dense initializers (header, graph inputs,
    outputs, value_info, sparse initializers); ``nodes`` are the nodes' fields in file order
    and ``initializers`` the dense initializers in file order (written back in that order):
    tensors (decoded lazily, as :func:`load` does) or :class:`Initializer` values (arrays).
    The importer (:mod:`fusekit.qimport`) builds its float graph this way from the fields it
    holds, instead of writing a float model and reading it back; the checks and the errors are
    :func:`load`'s (one loop, shared).
    """
    return _build_wrapped(m, label, base_dir, (nodes, initializers))


def _build_wrapped(
    m: ModelProto,
    label: str,
    base_dir: str | None,
    given: tuple[list[NodeFields], list[TensorProto | Initializer]] | None,
) -> Graph:
    try:
        return _build_graph(m, m.graph, label, base_dir, given)
    except InvalidGraph as e:
        if e.source is None:
            raise type(e)(str(e), e.problems, label) from None
        raise
    except UnicodeError as e:
        # upb hands out ``bytes`` for a string field that is not UTF-8; writing such a value
        # back would fail much later, so the file is refused here
        raise InvalidModel(f"not a valid ONNX model: {e} is not valid UTF-8", label) from None


_NAME = attrgetter("name")
_INPUTS = attrgetter("inputs")
_OUTPUTS = attrgetter("outputs")
_IMPLICIT = attrgetter("implicit_inputs")


def _check_header(m: ModelProto, g: onnx.GraphProto) -> None:
    """Header strings are written back field by field, so they must be real text."""
    fields = [
        ("the producer name", m.producer_name),
        ("the producer version", m.producer_version),
        ("the model domain", m.domain),
        ("the model doc string", m.doc_string),
        ("the graph name", g.name),
        ("the graph doc string", g.doc_string),
    ]
    fields.extend(("an opset domain", o.domain) for o in m.opset_import)
    for what, value in fields:
        if type(value) is not str:
            raise UnicodeError(what)


def _find_non_text(ops: list[Op], *groups: tuple[str, ...]) -> None:
    """Raise UnicodeError naming the first op or tensor name that is not ``str``.

    upb returns ``bytes`` for a string field that is not valid UTF-8. The load loop detects
    that cheaply (``str.join`` refuses bytes in C); this slow scan only finds the culprit.
    """
    for op in ops:
        for what, value in (
            ("a node name", op.name),
            ("an op type", op.op_type),
            ("a domain", op.domain),
            *(("a tensor name", t) for t in (*op.inputs, *op.outputs, *op.implicit_inputs)),
        ):
            if type(value) is not str:
                raise UnicodeError(f"{what} ({_text(value)!r})")
    for t in chain.from_iterable(groups):
        if type(t) is not str:
            raise UnicodeError(f"the graph input, output or initializer name {_text(t)!r}")


def _unique_names(ops: list[Op]) -> tuple[list[Op], dict[str, str]]:
    """Give unnamed and duplicate-named ops deterministic unique names.

    The first op carrying a name keeps it; an unnamed op becomes ``<OpType>_<position>`` and a
    later duplicate ``<name>__2``, ``__3``..., each avoiding every name already in use. Returns
    the ops and the map invented name -> original name (restored by :func:`to_model`).
    """
    used: set[str] = set()
    pending: list[int] = []
    for i, op in enumerate(ops):
        nm = op.name
        if nm and nm not in used:
            used.add(nm)
        else:
            pending.append(i)
    original: dict[str, str] = {}
    out = list(ops)
    for i in pending:
        op = ops[i]
        base = op.name or f"{op.op_type}_{i}"
        cand = base
        k = 2
        while cand in used:
            cand = f"{base}__{k}"
            k += 1
        used.add(cand)
        original[cand] = op.name
        out[i] = attrs.evolve(op, name=cand)  # rare (unnamed/duplicate nodes): no fast path
    return out, original


def _build_graph(
    m: ModelProto,
    g: onnx.GraphProto,
    label: str,
    base_dir: str | None,
    given: tuple[list[NodeFields], list[TensorProto | Initializer]] | None = None,
) -> Graph:
    _check_header(m, g)
    input_names = tuple(vi.name for vi in g.input)
    if len(set(input_names)) != len(input_names):
        dup = sorted({_text(n) for n in input_names if input_names.count(n) > 1})
        raise InvalidModel(f"duplicate graph input names: {', '.join(dup)}", label)
    if any(not n for n in input_names):
        raise InvalidModel("a graph input has an empty name", label)
    output_names = tuple(vi.name for vi in g.output)
    if any(not n for n in output_names):
        raise InvalidModel("a graph output has an empty name", label)
    inits = _read_initializers(g, base_dir, label, None if given is None else given[1])
    # the importer's dense initializers are not in ``m``: their order is kept apart
    init_order = None if given is None else tuple(k for k in inits if k not in _sparse_names(g))
    available = set(input_names)
    available.update(inits)

    # The hot loop: one pass over the nodes reading each protobuf field once (reading a field
    # of a upb message allocates a wrapper and fresh str objects), attributes not at all (they
    # are decoded on first use). It also runs the fast half of topological_order on the fresh
    # tuples: every op reads only names defined before it, and the defined set grows by
    # exactly the number of non-empty outputs (no tensor written twice).
    make = make_loaded_op
    decode_attrs = _attribute_decoder(label)
    subgraph_ops = _SUBGRAPH_OPS
    defined = set(available)
    defined.add("")  # an omitted optional input reads nothing
    expected = len(defined)
    issuperset = defined.issuperset
    update = defined.update
    in_order = True
    op_list: list[Op] = []
    append = op_list.append
    names: list[str] = []
    name_append = names.append
    rows = given[0] if given is not None else _node_fields(g)
    for name, op_type, domain, ins, outs, n in rows:
        if type(op_type) is not str or not op_type:
            return _bad_node(g, n, label, given)
        implicit: tuple[str, ...] = ()
        if domain or op_type in subgraph_ops:  # rare: look for sub-graphs
            if type(domain) is not str:
                return _bad_node(g, n, label, given)
            if (domain not in ("", "ai.onnx") or op_type in subgraph_ops) and _has_subgraph(n):
                implicit = _subgraph_captures(n)
                if not issuperset(implicit):
                    in_order = False
        if in_order:
            if issuperset(ins):
                update(outs)
                expected += len(outs) - outs.count("") if "" in outs else len(outs)
            else:
                in_order = False
        name_append(name)
        append(make(name, op_type, ins, outs, domain, implicit, n, decode_attrs))

    try:  # str.join refuses bytes in C: the cheap way to know every name is text
        "".join(names)
        "".join(output_names)
        if in_order:
            "".join(defined)  # graph inputs, initializers, every op's inputs and outputs
        else:
            "".join(available)
            for get in (_INPUTS, _OUTPUTS, _IMPLICIT):
                "".join(chain.from_iterable(map(get, op_list)))
    except TypeError:
        _find_non_text(op_list, input_names, output_names, tuple(inits))

    distinct = set(names)
    original: dict[str, str] = {}
    if len(distinct) != len(names) or "" in distinct:
        op_list, original = _unique_names(op_list)
        names = list(map(_NAME, op_list))

    listed = in_order and len(defined) == expected and issuperset(output_names)
    if listed:
        order = names
    else:
        order = topological_order(op_list, available, label, outputs=output_names)

    types = _read_types(g)

    graph = Graph(
        ops=pmap(dict(zip(names, op_list))),
        order=pvector(order),
        inputs=input_names,
        outputs=output_names,
        initializers=pmap(inits),
        value_types=pmap(types),
        name=g.name,
        original_names=pmap(original),
        extras=ModelExtras(m, base_dir, label, init_order),
    )
    if listed:  # op_list is in ``order``: the index numbers it without name lookups
        remember_op_order(graph, op_list)
    promote_to_old_generation()
    return graph


def _sparse_names(g: onnx.GraphProto) -> set[str]:
    return {st.values.name for st in g.sparse_initializer}


def _node_fields(g: onnx.GraphProto) -> Iterator[NodeFields]:
    """Each node's fields, each protobuf field read once (every access allocates; slicing a
    repeated field first is a third faster than iterating it)."""
    return ((n.name, n.op_type, n.domain, tuple(n.input[:]), tuple(n.output[:]), n) for n in g.node)


def _bad_node(
    g: onnx.GraphProto,
    n: onnx.NodeProto,
    label: str,
    given: tuple[list[NodeFields], list[TensorProto | Initializer]] | None = None,
) -> Graph:
    """Raise for a node without a usable op_type or domain (typed to end the load loop)."""
    if given is None:
        i = list(g.node).index(n)
    else:  # the position among the nodes given
        i = next(k for k, row in enumerate(given[0]) if row[5] is n)
    if not n.op_type:
        what = "has no op_type"
    elif type(n.op_type) is not str:
        what = "has an op_type that is not valid UTF-8"
    else:
        what = "has a domain that is not valid UTF-8"
    raise InvalidModel(f"node #{i} ({_text(n.name) or 'unnamed'}) {what}", label)


def _read_initializers(
    g: onnx.GraphProto,
    base_dir: str | None,
    label: str,
    dense: list[TensorProto | Initializer] | None = None,
) -> dict[str, Initializer]:
    """The graph's dense (``dense`` when given) and sparse initializers by name, their data
    left undecoded."""
    decode_tensor = _tensor_decoder(base_dir, label)
    inits: dict[str, Initializer] = {}
    external: list[TensorProto] = []
    for t in g.initializer if dense is None else dense:
        nm = t.name
        if not nm:
            raise InvalidModel("an initializer has an empty name", label)
        if nm in inits:
            raise InvalidModel(f"initializer {_text(nm)!r} is defined twice", label)
        if isinstance(t, Initializer):
            inits[nm] = t
            continue
        inits[nm] = make_lazy_initializer(nm, t.data_type, tuple(t.dims), t, decode_tensor)
        if t.data_location == _EXTERNAL:
            external.append(t)
    for st in g.sparse_initializer:
        nm = st.values.name
        if not nm:
            raise InvalidModel("a sparse initializer has an empty name", label)
        if nm in inits:
            raise InvalidModel(f"initializer {_text(nm)!r} is defined twice", label)
        inits[nm] = Initializer(
            nm, st.values.data_type, tuple(st.dims), source=st, decode=decode_tensor
        )
    if external and base_dir is not None:
        _check_external_files(external, base_dir, label)
    return inits


_EXTERNAL = TensorProto.EXTERNAL


def _check_external_files(tensors: list[TensorProto], base_dir: str, label: str) -> None:
    """Refuse a model whose external data files are missing, when it is loaded.

    Weights are decoded lazily, so without this check a missing ``.data`` file shows up only
    when some step reads a weight (or, worse, in a file written from the model). Only the
    files' existence is checked here; their content is read on demand.
    """
    seen: set[str] = set()
    for t in tensors:
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        if location is None:
            raise InvalidModel(
                f"initializer {_text(t.name)!r} is marked external but names no data file", label
            )
        if location in seen:
            continue
        seen.add(location)
        path = Path(base_dir) / location
        if not path.is_file():
            raise InvalidModel(
                f"initializer {_text(t.name)!r} keeps its data in {str(path)!r}, which does not "
                "exist; keep the data file next to the model",
                label,
            )


# --------------------------------------------------------------------------------------------
# write


def _value_info(
    name: str, tt: TensorType | None, original: onnx.ValueInfoProto | None
) -> onnx.ValueInfoProto:
    if original is not None and (tt is None or _type_of(original) == tt):
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(original)
        vi.name = name
        return vi
    if tt is None:
        return helper.make_value_info(name, onnx.TypeProto())
    shape = None if tt.shape is None else list(tt.shape)
    return helper.make_tensor_value_info(name, tt.elem_type, shape)


def to_model(graph: Graph) -> ModelProto:
    """Write ``graph`` as a ``ModelProto``, restoring every field fusekit carried along."""
    extras = graph.extras if isinstance(graph.extras, ModelExtras) else None
    out = ModelProto()
    if extras is not None:
        out.CopyFrom(_header_only(extras._model))
    else:
        # a graph built in Python: opset 20 (onnxruntime 1.32 rejects some valid opset-21 QDQ
        # patterns at its default optimization level) and the IR version that goes with it
        op = out.opset_import.add()
        op.domain = ""
        op.version = min(onnx.defs.onnx_opset_version(), 20)
        out.ir_version = helper.find_min_ir_version_for([op])
        out.producer_name = "fusekit"
    og = out.graph
    if extras is not None:
        sg = extras._model.graph
        og.name = sg.name
        if sg.doc_string:
            og.doc_string = sg.doc_string
    else:
        og.name = graph.name or "graph"
    if graph.name != og.name:
        og.name = graph.name

    originals = graph.original_names
    ops = graph.ops
    for name in graph.order:
        op = ops[name]
        n = og.node.add()
        src_node = op.source
        if isinstance(src_node, onnx.NodeProto):
            n.CopyFrom(src_node)
            if tuple(n.input) != op.inputs:
                del n.input[:]
                n.input.extend(op.inputs)
            if tuple(n.output) != op.outputs:
                del n.output[:]
                n.output.extend(op.outputs)
            if n.op_type != op.op_type:
                n.op_type = op.op_type
            if n.domain != op.domain:
                n.domain = op.domain
            if op.attributes.source is not src_node:
                del n.attribute[:]
                n.attribute.extend(_encode_attribute(k, op.attributes[k]) for k in op.attributes)
        else:
            n.op_type = op.op_type
            if op.domain:
                n.domain = op.domain
            n.input.extend(op.inputs)
            n.output.extend(op.outputs)
            src_attr = op.attributes.source
            if isinstance(src_attr, onnx.NodeProto):
                n.attribute.extend(src_attr.attribute)
            else:
                n.attribute.extend(_encode_attribute(k, op.attributes[k]) for k in op.attributes)
        want = originals.get(name, name)
        if n.name != want:
            n.name = want

    for init in _initializers_in_file_order(graph, extras):
        src_t = init.source
        if isinstance(src_t, onnx.SparseTensorProto):
            st = og.sparse_initializer.add()
            st.CopyFrom(src_t)
            if st.values.name != init.name:  # renamed by Graph.rename_tensor
                st.values.name = init.name
            continue
        t = og.initializer.add()
        if isinstance(src_t, TensorProto):
            t.CopyFrom(src_t)
            t.name = init.name
        else:
            t.CopyFrom(numpy_helper.from_array(init.array(), init.name))  # 0-d stays 0-d

    types = graph.value_types
    in_info = extras.input_info if extras else {}
    out_info = extras.output_info if extras else {}
    vi_info = extras.value_info if extras else {}
    for t in graph.inputs:
        og.input.append(_value_info(t, types.get(t), in_info.get(t)))
    for t in graph.outputs:
        og.output.append(_value_info(t, types.get(t), out_info.get(t)))
    if extras is not None:
        sg = extras._model.graph
        known = _mentioned(graph)
        for vi in sg.value_info:
            if vi.name in known or vi.name in types:
                og.value_info.append(_value_info(vi.name, types.get(vi.name), vi))
        og.quantization_annotation.extend(sg.quantization_annotation)
        if len(sg.metadata_props):
            og.metadata_props.extend(sg.metadata_props)
    io = set(graph.inputs) | set(graph.outputs)
    for name in sorted(types):  # sorted: PMap order depends on the str hash seed
        if name not in io and name not in vi_info:
            og.value_info.append(_value_info(name, types[name], None))
    return out


def _initializers_in_file_order(graph: Graph, extras: ModelExtras | None) -> list[Initializer]:
    """Initializers in the order the file had them, then new ones sorted by name."""
    inits = graph.initializers
    out: list[Initializer] = []
    seen: set[str] = set()
    if extras is not None:
        sg = extras._model.graph
        names = extras._init_order
        for nm in (t.name for t in sg.initializer) if names is None else names:
            i = inits.get(nm)
            if i is not None and nm not in seen:
                out.append(i)
                seen.add(nm)
        for st in sg.sparse_initializer:
            i = inits.get(st.values.name)
            if i is not None and st.values.name not in seen:
                out.append(i)
                seen.add(st.values.name)
    out.extend(inits[k] for k in sorted(inits) if k not in seen)
    return out


def _mentioned(graph: Graph) -> set[str]:
    names: set[str] = set(graph.inputs) | set(graph.outputs) | set(graph.initializers)
    for op in graph.ops.values():
        names.update(op.inputs)
        names.update(op.outputs)
    return names


def copy_fields(src: Any, dst: Any, skip: tuple[str, ...] = ()) -> None:
    """Copy the fields set in protobuf message ``src`` into ``dst``, except those in ``skip``.

    How fusekit copies a model or graph header without its bulk (nodes, initializer bytes):
    ``CopyFrom`` followed by ``ClearField`` would copy the bulk first.
    """
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _header_only(src: ModelProto) -> ModelProto:
    """A copy of ``src`` with an empty graph (initializer bytes are not copied twice)."""
    saved = ModelProto()
    copy_fields(src, saved, skip=("graph",))
    return saved


def save(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Write ``graph`` as an ONNX file, atomically.

    The model is serialized in memory, written to a temporary file in the target directory and
    renamed over ``path``: a failure at any point leaves no partial file behind.
    """
    model = to_model(graph)
    extras = graph.extras if isinstance(graph.extras, ModelExtras) else None
    target = Path(path)
    base_dir = extras.base_dir if extras is not None else None
    if base_dir is not None and Path(base_dir).resolve() != target.parent.resolve():
        _embed_external_data(model, base_dir)
    write_bytes_atomic(target, model.SerializeToString())


def _embed_external_data(model: ModelProto, base_dir: str) -> None:
    embed_external_data(model, base_dir)


def embed_external_data(model: ModelProto, base_dir: str | None, label: str = "") -> int:
    """Read every external initializer of ``model`` (in place) from ``base_dir``.

    A model built from a loaded graph still points at the *source* folder's data files; a file
    written elsewhere would point at nothing. Embedding the data makes the model
    self-contained; :func:`model_files` decides later whether it needs its own data file.
    Returns how many tensors were embedded; raises InvalidModel naming a missing data file.
    """
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    n = 0
    for t in model.graph.initializer:
        if uses_external_data(t):
            if base_dir is None:
                raise InvalidModel(
                    f"initializer {t.name!r} keeps its data in an external file, but the model "
                    "was not loaded from a path",
                    label or None,
                )
            try:
                load_external_data_for_tensor(t, base_dir)
            except (OSError, ValueError) as e:
                raise InvalidModel(
                    f"initializer {t.name!r}: cannot read its external data ({e})", label or None
                ) from None
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
            n += 1
    return n


#: The largest serialized protobuf message: a model above it must keep its weights in a file
#: of their own.
PROTOBUF_LIMIT = 2**31 - 1


def model_files(
    model: ModelProto,
    target: str | os.PathLike[str],
    *,
    limit: int = PROTOBUF_LIMIT,
    min_external: int = 1024,
) -> dict[Path, bytes]:
    """The files that hold a self-contained ``model`` at ``target``, path -> content.

    Below ``limit`` bytes that is the model alone, every weight inside it. Above, the
    initializers of ``min_external`` bytes or more move to ``<target name>.data`` next to the
    model (one file, offsets in the model), the ONNX external-data layout onnxruntime reads.
    ``limit`` is a parameter so that the second layout can be tested without 2 GB of weights.
    Nothing is written here: pass the result to :func:`write_files_atomic`.
    """
    from onnx.external_data_helper import uses_external_data

    target = Path(target)
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise InvalidModel(
            "the model still refers to external data files; embed them first (embed_external_data)",
            str(target),
        )
    if model.ByteSize() <= limit:
        return {target: model.SerializeToString()}
    m = ModelProto()
    m.CopyFrom(model)
    location = target.name + ".data"
    chunks: list[bytes] = []
    offset = 0
    for t in m.graph.initializer:
        if not t.HasField("raw_data") or len(t.raw_data) < min_external:
            continue
        raw = t.raw_data
        pad = -offset % 64  # aligned, so that readers may map the file
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        chunks.append(raw)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset), ("length", len(raw))):
            entry = t.external_data.add()
            entry.key = key
            entry.value = str(value)
        offset += len(raw)
    if m.ByteSize() > limit:
        raise InvalidModel(
            f"the model is {m.ByteSize()} bytes even with its weights in {location}; "
            "protobuf cannot hold it",
            str(target),
        )
    return {target: m.SerializeToString(), target.with_name(location): b"".join(chunks)}
