"""Helpers shared by the round-trip tests: structural model comparison and onnxruntime runs.

Not a test module (the leading underscore keeps pytest from collecting it).
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from . import conftest

ROOT = Path(__file__).resolve().parents[1]
SHARED = conftest.SHARED  # the read-only data (see conftest.py)


def extract_all(archive: Path, dest: Path) -> None:
    """Extract a tar archive, with the safe ``data`` filter where Python has it (3.10.12+)."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - old patch releases
            tar.extractall(dest)


_SESSION_OPTIONS = ort.SessionOptions()
_SESSION_OPTIONS.log_severity_level = 4  # the backend suite provokes many warnings on purpose


def run_ort(model_bytes: bytes, feeds: Mapping[str, Any]) -> list[Any]:
    """Run a serialized model on the CPU provider and return every output."""
    sess = ort.InferenceSession(model_bytes, _SESSION_OPTIONS, providers=["CPUExecutionProvider"])
    return list(sess.run(None, dict(feeds)))


def values_equal(a: Any, b: Any) -> bool:
    """Exact equality of onnxruntime outputs: arrays (dtype, shape, NaN-aware), lists, maps."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def outputs_equal(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """True when two output lists are identical element by element."""
    return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller must feed (initializers listed as inputs excluded, IR < 4)."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _read_value(path: str, vi: onnx.ValueInfoProto) -> Any:
    """Read one ``input_N.pb`` of the backend test data as the value onnxruntime expects."""
    with open(path, "rb") as f:
        data = f.read()
    kind = vi.type.WhichOneof("value")
    if kind == "sequence_type":
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return numpy_helper.to_list(seq)
    if kind == "optional_type":
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return numpy_helper.to_optional(opt)
    if kind == "map_type":
        mp = onnx.MapProto()
        mp.ParseFromString(data)
        return numpy_helper.to_dict(mp)
    t = onnx.TensorProto()
    t.ParseFromString(data)
    return numpy_helper.to_array(t)


def backend_feeds(model: onnx.ModelProto, data_dir: str) -> dict[str, Any]:
    """The inputs of ``test_data_set_0`` (``input_0.pb`` ...), keyed by graph input name."""
    paths = sorted(
        glob.glob(os.path.join(data_dir, "input_*.pb")),
        key=lambda p: int(os.path.basename(p)[len("input_") : -len(".pb")]),
    )
    return {vi.name: _read_value(p, vi) for vi, p in zip(graph_inputs(model), paths)}


def classify_ort_error(message: str) -> str:
    """A short bucket name for why onnxruntime could not run an original model."""
    if "NOT_IMPLEMENTED" in message or "is not a registered function/op" in message:
        return "op or op version not implemented in onnxruntime"
    if "can't be converted to MLDataType" in message or "No corresponding Numpy type" in message:
        return "element type without a numpy binding in onnxruntime (float8, int4, bfloat16 ...)"
    if "Locale" in message:
        return "StringNormalizer: locale not installed on this machine"
    if "Exception during initialization" in message:
        return "kernel refused the model's attributes at session creation"
    if "Non-zero status code returned while running" in message:
        return "kernel failed at run time on the test data"
    if "INVALID_GRAPH" in message or "INVALID_ARGUMENT" in message:
        return "onnxruntime rejected the model or its inputs"
    return "other: " + message.splitlines()[0][:80]


def _strip_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ClearField("graph")
    return out


def structural_differences(a: onnx.ModelProto, b: onnx.ModelProto) -> list[str]:
    """What differs between two models apart from node order (empty list: equivalent).

    Compared: every field outside the graph (IR version, opsets, producer, metadata, functions
    ...), the graph name, doc string, inputs, outputs and metadata in order, initializers and
    sparse initializers by name and bytes, value_info and quantization annotations as sets, and
    the nodes as a multiset of their serialized form (name, op type, domain, inputs, outputs,
    attributes, doc string all included).
    """
    diffs: list[str] = []
    if _strip_graph(a).SerializeToString() != _strip_graph(b).SerializeToString():
        diffs.append("model fields outside the graph differ")
    ga, gb = a.graph, b.graph
    if ga.name != gb.name or ga.doc_string != gb.doc_string:
        diffs.append("graph name or doc string differs")
    for field in ("input", "output", "metadata_props"):
        sa = [x.SerializeToString() for x in getattr(ga, field)]
        sb = [x.SerializeToString() for x in getattr(gb, field)]
        if sa != sb:
            diffs.append(f"graph {field} differs")
    for field in ("initializer", "sparse_initializer", "value_info", "quantization_annotation"):
        sa = sorted(x.SerializeToString() for x in getattr(ga, field))
        sb = sorted(x.SerializeToString() for x in getattr(gb, field))
        if sa != sb:
            diffs.append(f"graph {field} differs")
    na = sorted(n.SerializeToString() for n in ga.node)
    nb = sorted(n.SerializeToString() for n in gb.node)
    if na != nb:
        diffs.append("the nodes differ (as a multiset)")
    return diffs


def is_topological(model: onnx.ModelProto) -> bool:
    """True when every node reads only graph inputs, initializers or earlier nodes' outputs.

    Sub-graph captures count as reads, so an If/Loop must come after what its bodies use.
    """
    g = model.graph
    defined = {vi.name for vi in g.input} | {t.name for t in g.initializer}
    defined |= {t.values.name for t in g.sparse_initializer}
    defined.add("")
    for n in g.node:
        if not set(n.input) <= defined or not set(_captures(n)) <= defined:
            return False
        defined.update(n.output)
    return True


def _captures(node: onnx.NodeProto) -> list[str]:
    """Outer names read inside a node's sub-graphs (written independently of fusekit's)."""
    out: list[str] = []

    def walk(g: onnx.GraphProto, scope: set[str]) -> None:
        local = scope | {vi.name for vi in g.input} | {t.name for t in g.initializer}
        for n in g.node:
            out.extend(t for t in n.input if t and t not in local)
            for a in n.attribute:
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    walk(sub, local)
            local |= set(n.output)

    for a in node.attribute:
        for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            walk(sub, set())
    return out


def has_unique_node_names(model: onnx.ModelProto) -> bool:
    """True when every node has a name and no two share one."""
    names = [n.name for n in model.graph.node]
    return all(names) and len(set(names)) == len(names)
