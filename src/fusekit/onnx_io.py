"""ONNX in and out: the only core module that talks protobuf.

:func:`load` turns a file, a byte string or a ``ModelProto`` into a :class:`~fusekit.graph.Graph`
and :func:`to_model` turns a graph back into a ``ModelProto``. The round trip is lossless:
every field fusekit does not model (opset imports, metadata, doc strings, value_info,
functions, external-data references, node metadata) is carried along in ``Graph.extras`` and in
each op's opaque ``source``, and initializers keep their original protobuf bytes. An unchanged
graph therefore serializes to exactly the bytes it was read from (when the file's node order was
already topological and its node names unique).

Loading is lazy where it matters for speed: attributes and initializer data are decoded on first
access, so ``fusekit.load`` costs about as much as ``onnx.load`` itself.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, ModelProto, TensorProto, helper, numpy_helper
from pyrsistent import pmap, pvector

from ._util import gc_paused
from .errors import InvalidGraph, InvalidModel, ModelNotFound
from .graph import (
    EMPTY_ATTRIBUTES,
    Attributes,
    Graph,
    Initializer,
    Op,
    OpaqueAttribute,
    TensorType,
    make_op_fast,
    topological_order,
)

__all__ = ["ModelExtras", "load", "save", "to_model"]

ModelSource = str | os.PathLike[str] | bytes | ModelProto


class ModelExtras:
    """What fusekit keeps of a ModelProto without modelling it.

    ``model`` is the parsed original (never modified); ``base_dir`` is where external data
    files live. fusekit reads header fields, graph doc strings, value_info, functions and so on
    from it when writing the model back.
    """

    __slots__ = ("base_dir", "input_info", "model", "output_info", "value_info")

    def __init__(self, model: ModelProto, base_dir: str | None):
        self.model = model
        self.base_dir = base_dir
        g = model.graph
        self.input_info = {vi.name: vi for vi in g.input}
        self.output_info = {vi.name: vi for vi in g.output}
        self.value_info = {vi.name: vi for vi in g.value_info}


# --------------------------------------------------------------------------------------------
# decoding


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
    kind = AttributeProto.AttributeType.Name(t)
    return OpaqueAttribute(kind, a.SerializeToString())


def _decode_node_attributes(node: object) -> Mapping[str, Any]:
    return {a.name: _decode_attribute(a) for a in node.attribute}  # type: ignore[attr-defined]


def _encode_attribute(name: str, value: Any) -> AttributeProto:
    if isinstance(value, OpaqueAttribute):
        a = AttributeProto()
        a.ParseFromString(value.payload)
        a.name = name
        return a
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(np.ascontiguousarray(value)))
    if isinstance(value, tuple):
        value = list(value)
    return helper.make_attribute(name, value)


def _tensor_decoder(base_dir: str | None) -> Any:
    def decode(t: object) -> np.ndarray[Any, Any]:
        if isinstance(t, onnx.SparseTensorProto):
            from onnx import numpy_helper as nh

            dense = nh.to_array(t.values)
            idx = nh.to_array(t.indices)
            shape = tuple(t.dims)
            out = np.zeros(int(np.prod(shape)), dtype=dense.dtype)
            if idx.ndim == 1:
                out[idx] = dense
            else:
                out[np.ravel_multi_index(idx.T, shape)] = dense
            return out.reshape(shape)
        return numpy_helper.to_array(t, base_dir=base_dir or "")  # type: ignore[arg-type]

    return decode


def _type_of(vi: onnx.ValueInfoProto) -> TensorType | None:
    tt = vi.type
    if not tt.HasField("tensor_type"):
        return None
    t = tt.tensor_type
    shape: tuple[int | str | None, ...] | None = None
    if t.HasField("shape"):
        dims: list[int | str | None] = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorType(t.elem_type, shape)


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


_SUBGRAPH_TYPES = (AttributeProto.GRAPH, AttributeProto.GRAPHS)


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
        if not p.exists():
            raise ModelNotFound("no such file", label)
        if p.is_dir():
            raise InvalidModel("is a directory, not an ONNX file", label)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InvalidModel(f"cannot read: {e.strerror}", label) from None
        base_dir = str(p.parent)
    else:
        raise InvalidModel(
            f"cannot load a {type(source).__name__}; pass a path, bytes or ModelProto"
        )
    if not data:
        raise InvalidModel("empty file, not an ONNX model", label)
    m = ModelProto()
    try:
        m.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InvalidModel(f"not an ONNX model (protobuf decoding failed: {e})", label) from None
    return m, label, base_dir


def load(source: ModelSource) -> Graph:
    """Read an ONNX model (path, bytes or ``ModelProto``) as a :class:`Graph`.

    Unnamed nodes get deterministic names (``<OpType>_<n>``) and duplicate names are made unique
    (``name__2``); :func:`to_model` restores the original names. Raises
    :class:`~fusekit.errors.InvalidModel` (file missing, not ONNX, no graph, bad node) or
    :class:`~fusekit.errors.InvalidGraph` (dangling input, two producers, cycle), each naming the
    file and the problem.
    """
    m, label, base_dir = _read(source)
    if not m.HasField("graph") or (m.ir_version <= 0 and len(m.opset_import) == 0):
        raise InvalidModel("not an ONNX model (no graph, no IR version, no opset)", label)
    g = m.graph
    try:
        with gc_paused():
            return _build_graph(m, g, label, base_dir)
    except InvalidGraph as e:
        if e.source is None:
            raise type(e)(str(e), e.problems, label) from None
        raise


def _build_graph(m: ModelProto, g: onnx.GraphProto, label: str, base_dir: str | None) -> Graph:
    input_names = tuple(vi.name for vi in g.input)
    if len(set(input_names)) != len(input_names):
        dup = sorted({n for n in input_names if input_names.count(n) > 1})
        raise InvalidModel(f"duplicate graph input names: {', '.join(dup)}", label)
    if any(not n for n in input_names):
        raise InvalidModel("a graph input has an empty name", label)
    output_names = tuple(vi.name for vi in g.output)

    nodes = g.node
    used: set[str] = set()
    names: list[str] = []
    original: dict[str, str] = {}
    pending: list[int] = []
    for i, n in enumerate(nodes):
        nm = n.name
        if not n.op_type:
            raise InvalidModel(f"node #{i} ({nm or 'unnamed'}) has no op_type", label)
        if nm and nm not in used:
            used.add(nm)
            names.append(nm)
        else:
            names.append("")
            pending.append(i)
    for i in pending:
        n = nodes[i]
        base = n.name or f"{n.op_type}_{i}"
        cand = base
        k = 2
        while cand in used:
            cand = f"{base}__{k}"
            k += 1
        used.add(cand)
        names[i] = cand
        original[cand] = n.name

    op_list: list[Op] = []
    decode_attrs = _decode_node_attributes
    for i, n in enumerate(nodes):
        attrs_ = n.attribute
        implicit: tuple[str, ...] = ()
        if attrs_:
            attributes = Attributes(source=n, decode=decode_attrs)
            for a in attrs_:
                if a.type in _SUBGRAPH_TYPES:
                    implicit = _subgraph_captures(n)
                    break
        else:
            attributes = EMPTY_ATTRIBUTES
        op_list.append(
            make_op_fast(
                names[i],
                n.op_type,
                tuple(n.input),
                tuple(n.output),
                attributes,
                n.domain,
                implicit,
                n,
            )
        )

    decode_tensor = _tensor_decoder(base_dir)
    inits: dict[str, Initializer] = {}
    for t in g.initializer:
        if not t.name:
            raise InvalidModel("an initializer has an empty name", label)
        if t.name in inits:
            raise InvalidModel(f"initializer {t.name!r} is defined twice", label)
        inits[t.name] = Initializer(
            t.name, t.data_type, tuple(t.dims), source=t, decode=decode_tensor
        )
    for st in g.sparse_initializer:
        nm = st.values.name
        if nm in inits:
            raise InvalidModel(f"initializer {nm!r} is defined twice", label)
        inits[nm] = Initializer(
            nm, st.values.data_type, tuple(st.dims), source=st, decode=decode_tensor
        )

    available = set(input_names) | set(inits)
    order = topological_order(op_list, available, label)

    types: dict[str, TensorType] = {}
    for seq in (g.input, g.output, g.value_info):
        for vi in seq:
            tt = _type_of(vi)
            if tt is not None:
                types[vi.name] = tt

    return Graph(
        ops=pmap({op.name: op for op in op_list}),
        order=pvector(order),
        inputs=input_names,
        outputs=output_names,
        initializers=pmap(inits),
        value_types=pmap(types),
        name=g.name,
        original_names=pmap(original),
        extras=ModelExtras(m, base_dir),
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
        out.CopyFrom(_header_only(extras.model))
    else:
        out.ir_version = onnx.IR_VERSION
        op = out.opset_import.add()
        op.domain = ""
        op.version = min(onnx.defs.onnx_opset_version(), 21)
        out.producer_name = "fusekit"
    og = out.graph
    if extras is not None:
        sg = extras.model.graph
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
            og.sparse_initializer.add().CopyFrom(src_t)
            continue
        t = og.initializer.add()
        if isinstance(src_t, TensorProto):
            t.CopyFrom(src_t)
            t.name = init.name
        else:
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(init.array()), init.name))

    types = graph.value_types
    in_info = extras.input_info if extras else {}
    out_info = extras.output_info if extras else {}
    vi_info = extras.value_info if extras else {}
    for t in graph.inputs:
        og.input.append(_value_info(t, types.get(t), in_info.get(t)))
    for t in graph.outputs:
        og.output.append(_value_info(t, types.get(t), out_info.get(t)))
    if extras is not None:
        sg = extras.model.graph
        known = _mentioned(graph)
        for vi in sg.value_info:
            if vi.name in known or vi.name in types:
                og.value_info.append(_value_info(vi.name, types.get(vi.name), vi))
        og.quantization_annotation.extend(sg.quantization_annotation)
        if len(sg.metadata_props):
            og.metadata_props.extend(sg.metadata_props)
    io = set(graph.inputs) | set(graph.outputs)
    for name, tt in types.items():
        if name not in io and name not in vi_info:
            og.value_info.append(_value_info(name, tt, None))
    return out


def _initializers_in_file_order(graph: Graph, extras: ModelExtras | None) -> list[Initializer]:
    """Initializers in the order the file had them, then new ones sorted by name."""
    inits = graph.initializers
    out: list[Initializer] = []
    seen: set[str] = set()
    if extras is not None:
        sg = extras.model.graph
        for t in sg.initializer:
            i = inits.get(t.name)
            if i is not None and t.name not in seen:
                out.append(i)
                seen.add(t.name)
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


def _header_only(src: ModelProto) -> ModelProto:
    """A copy of ``src`` with an empty graph (initializer bytes are not copied twice)."""
    saved = ModelProto()
    for field, value in src.ListFields():
        if field.name == "graph":
            continue
        if field.is_repeated:
            getattr(saved, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(saved, field.name).CopyFrom(value)
        else:
            setattr(saved, field.name, value)
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
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    for t in model.graph.initializer:
        if uses_external_data(t):
            load_external_data_for_tensor(t, base_dir)
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` via a temp file and rename (no partial file on failure)."""
    target = Path(target)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidModel(f"cannot write: directory {directory} does not exist", str(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
