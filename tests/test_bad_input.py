"""Bad input gets a FusekitError naming the file and the problem; save is atomic.

Also a Hypothesis test that feeds damaged bytes of real models (bit flips, overwritten bytes,
truncations) to ``fusekit.load``: whatever happens, the only exceptions that may escape load,
check_invariants, to_model, attribute decoding and weight decoding are FusekitError subclasses,
and a graph that loads always satisfies the invariants.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import fusekit
import fusekit.onnx_io
from fusekit import (
    DanglingInput,
    DuplicateProducer,
    FusekitError,
    GraphCycle,
    InvalidGraph,
    InvalidModel,
    ModelNotFound,
)
from fusekit.cli import main as cli_main

from ._roundtrip import SHARED
from .conftest import corpus_bytes

F = TensorProto.FLOAT


def model_with(
    nodes: list[onnx.NodeProto], inputs: tuple[str, ...] = ("x",), outputs: tuple[str, ...] = ("y",)
) -> bytes:
    """A serialized opset-17 model with float inputs/outputs of shape [2] and these nodes."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, [2]) for n in inputs],
        [helper.make_tensor_value_info(n, F, [2]) for n in outputs],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return m.SerializeToString()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def load_error(path: Path) -> FusekitError:
    """The FusekitError loading ``path`` raises; its message must name the file."""
    with pytest.raises(FusekitError) as e:
        fusekit.load(path)
    assert str(path) in str(e.value)
    return e.value


# --------------------------------------------------------------------------------------------
# Not a model at all


def test_missing_file(tmp_path: Path) -> None:
    e = load_error(tmp_path / "nope.onnx")
    assert isinstance(e, ModelNotFound)
    assert isinstance(e, FileNotFoundError) and isinstance(e, ValueError)
    assert "no such file" in str(e)


def test_directory(tmp_path: Path) -> None:
    e = load_error(tmp_path)
    assert isinstance(e, InvalidModel) and isinstance(e, ValueError)
    assert "is a directory" in str(e)


def test_empty_file(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "empty.onnx", b""))
    assert isinstance(e, InvalidModel) and "empty file" in str(e)


def test_random_bytes(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    e = load_error(write(tmp_path, "noise.onnx", data))
    assert isinstance(e, InvalidModel) and "not an ONNX model" in str(e)


def test_text_file(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "README.onnx", b"# fusekit\n\nThis is not a model.\n"))
    assert isinstance(e, InvalidModel) and "not an ONNX model" in str(e)


def test_another_protobuf_message(tmp_path: Path) -> None:
    """A valid protobuf that is no ModelProto (here a TensorProto) is refused."""
    data = numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString()
    e = load_error(write(tmp_path, "tensor.onnx", data))
    assert isinstance(e, InvalidModel) and "not an ONNX model" in str(e)


def test_model_header_without_graph(tmp_path: Path) -> None:
    data = onnx.ModelProto(ir_version=8, producer_name="someone").SerializeToString()
    e = load_error(write(tmp_path, "header.onnx", data))
    assert isinstance(e, InvalidModel) and "no graph" in str(e)


@pytest.mark.parametrize("where", [1, 10, 100, 1 / 3, 1 / 2, 2 / 3, -3, -1])
def test_truncated_model(tmp_path: Path, where: float) -> None:
    data = corpus_bytes("silero_vad_16k_sequence")
    cut = int(where) if abs(where) >= 1 else int(len(data) * where)
    e = load_error(write(tmp_path, "cut.onnx", data[:cut]))
    assert isinstance(e, InvalidModel) and "protobuf decoding failed" in str(e)


def test_path_with_nul_byte() -> None:
    """A path no file system accepts is reported, not a raw ValueError from os."""
    with pytest.raises(InvalidModel, match=r"no such file|cannot read") as e:
        fusekit.load("bad\0name.onnx")
    assert "bad\x00name.onnx" in str(e.value)


# --------------------------------------------------------------------------------------------
# A model, but not a valid graph


def test_dangling_input(tmp_path: Path) -> None:
    data = model_with([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")])
    e = load_error(write(tmp_path, "dangling.onnx", data))
    assert isinstance(e, DanglingInput) and isinstance(e, InvalidGraph)
    assert "op 'add' reads 'ghost', which nothing produces" in str(e)


def test_two_producers(tmp_path: Path) -> None:
    data = model_with(
        [
            helper.make_node("Relu", ["x"], ["y"], name="a"),
            helper.make_node("Neg", ["x"], ["y"], name="b"),
        ]
    )
    e = load_error(write(tmp_path, "twice.onnx", data))
    assert isinstance(e, DuplicateProducer)
    assert "tensor 'y' is produced by both 'a' and op 'b'" in str(e)


def test_cycle(tmp_path: Path) -> None:
    data = model_with(
        [
            helper.make_node("Add", ["x", "u"], ["t"], name="a"),
            helper.make_node("Relu", ["t"], ["u"], name="b"),
            helper.make_node("Neg", ["u"], ["y"], name="c"),
        ]
    )
    e = load_error(write(tmp_path, "cycle.onnx", data))
    assert isinstance(e, GraphCycle)
    assert "cycle through 2 ops: 'a', 'b' (1 more op depends on it)" in str(e)


def test_duplicate_graph_input_names(tmp_path: Path) -> None:
    data = model_with([helper.make_node("Add", ["x", "x"], ["y"])], inputs=("x", "x"))
    e = load_error(write(tmp_path, "dup-inputs.onnx", data))
    assert isinstance(e, InvalidModel) and "duplicate graph input names: x" in str(e)


def test_node_with_empty_op_type(tmp_path: Path) -> None:
    data = model_with([helper.make_node("", ["x"], ["y"], name="blank")])
    e = load_error(write(tmp_path, "no-type.onnx", data))
    assert isinstance(e, InvalidModel) and "node #0 (blank) has no op_type" in str(e)


def test_graph_output_nothing_produces(tmp_path: Path) -> None:
    data = model_with([helper.make_node("Relu", ["x"], ["y"])], outputs=("y", "z"))
    e = load_error(write(tmp_path, "no-output.onnx", data))
    assert isinstance(e, DanglingInput) and "graph output 'z'" in str(e)


def test_initializer_defined_twice(tmp_path: Path) -> None:
    m = onnx.ModelProto.FromString(model_with([helper.make_node("Add", ["x", "k"], ["y"])]))
    k = numpy_helper.from_array(np.ones(2, np.float32), "k")
    m.graph.initializer.extend([k, k])
    e = load_error(write(tmp_path, "init-twice.onnx", m.SerializeToString()))
    assert isinstance(e, InvalidModel) and "initializer 'k' is defined twice" in str(e)


def test_name_that_is_not_utf8(tmp_path: Path) -> None:
    data = model_with([helper.make_node("Relu", ["x"], ["y"], name="relu_AB")])
    bad = data.replace(b"relu_AB", b"relu_\xff\xfe")
    e = load_error(write(tmp_path, "latin.onnx", bad))
    assert isinstance(e, InvalidModel) and "not valid UTF-8" in str(e)


def test_weights_that_cannot_be_decoded(tmp_path: Path) -> None:
    """Weights are decoded lazily; damaged data raises InvalidModel naming file and tensor."""
    m = onnx.ModelProto.FromString(model_with([helper.make_node("Add", ["x", "k"], ["y"])]))
    k = numpy_helper.from_array(np.ones(2, np.float32), "k")
    k.raw_data = b"\x00" * 5  # 5 bytes cannot hold two float32 values
    m.graph.initializer.append(k)
    p = write(tmp_path, "bad-weights.onnx", m.SerializeToString())
    g = fusekit.load(p)
    with pytest.raises(InvalidModel) as e:
        g.initializers["k"].array()
    assert str(p) in str(e.value) and "initializer 'k' cannot be decoded" in str(e.value)


def test_sparse_weights_with_absurd_dims(tmp_path: Path) -> None:
    """A damaged sparse tensor claiming 2**40 elements is refused, not densified."""
    m = onnx.ModelProto.FromString(model_with([helper.make_node("Add", ["x", "s"], ["y"])]))
    values = numpy_helper.from_array(np.array([1.0], np.float32), "s")
    indices = numpy_helper.from_array(np.array([3], np.int64), "s_idx")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2**40]))
    p = write(tmp_path, "sparse.onnx", m.SerializeToString())
    with pytest.raises(InvalidModel, match="initializer 's' cannot be decoded") as e:
        fusekit.load(p).initializers["s"].array()
    assert str(p) in str(e.value)


# --------------------------------------------------------------------------------------------
# Damaged real models: only FusekitError may escape


@functools.lru_cache(maxsize=1)
def seed_models() -> tuple[bytes, ...]:
    """Small real models: two corpus models (one with If sub-graphs) and every 25th backend
    model (read straight from the tar)."""
    out = [corpus_bytes("silero_vad_16k_op15"), corpus_bytes("silero_vad_16k_sequence")]
    archive = SHARED / "onnx-backend-tests" / "onnx-1.22.0-backend-test-data.tar.gz"
    with tarfile.open(archive) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.name.endswith("/model.onnx")), key=lambda m: m.name
        )
        for m in members[::25]:
            f = tar.extractfile(m)
            assert f is not None
            out.append(f.read())
    return tuple(out)


@st.composite
def damaged_models(draw: st.DrawFn) -> bytes:
    """A seed model with a few bits flipped, bytes overwritten, or its tail cut off."""
    seeds = seed_models()
    data = bytearray(seeds[draw(st.integers(0, len(seeds) - 1))])
    kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "flip+truncate"]))
    if "flip" in kind or kind == "overwrite":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            if kind == "overwrite":
                data[i] = draw(st.integers(0, 255))
            else:
                data[i] ^= 1 << draw(st.integers(0, 7))
    if "truncate" in kind:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return bytes(data)


def exercise(data: bytes) -> None:
    """Load and use a possibly damaged model the ways a caller would."""
    g = fusekit.load(data)
    fusekit.check_invariants(g)  # a graph that loads is a valid graph
    g.index.snapshot()
    for op in g:
        dict(op.attributes)
    for init in g.initializers.values():
        init.array()
    fusekit.to_model(g).SerializeToString()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_models())
def test_damaged_models_raise_only_fusekit_errors(data: bytes) -> None:
    """Bit flips and truncations of real models never leak a raw protobuf/KeyError/..."""
    with contextlib.suppress(FusekitError):
        exercise(data)


def test_damaged_models_strategy_reaches_both_outcomes() -> None:
    """The strategy must produce models that load and models that do not (else it tests
    little): check over a fixed sample of seeds and cut points."""
    loaded = refused = 0
    for data in seed_models()[:20]:
        for cut in (len(data), len(data) // 2):
            try:
                fusekit.load(data[:cut])
                loaded += 1
            except FusekitError:
                refused += 1
    assert loaded > 0 and refused > 0


# --------------------------------------------------------------------------------------------
# Atomic save


def small_graph() -> fusekit.Graph:
    return fusekit.load(model_with([helper.make_node("Relu", ["x"], ["y"], name="r")]))


def test_save_failure_at_rename_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write(tmp_path, "model.onnx", b"the old content")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        fusekit.save(small_graph(), target)
    assert target.read_bytes() == b"the old content"
    assert os.listdir(tmp_path) == ["model.onnx"]  # the temp file was removed


def test_save_failure_while_writing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "new.onnx"

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        fusekit.save(small_graph(), target)
    assert os.listdir(tmp_path) == []


def test_save_failure_while_serializing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write(tmp_path, "model.onnx", b"the old content")

    def broken_to_model(graph: fusekit.Graph) -> onnx.ModelProto:
        raise MemoryError("serializing failed")

    monkeypatch.setattr(fusekit.onnx_io, "to_model", broken_to_model)
    with pytest.raises(MemoryError):
        fusekit.save(small_graph(), target)
    assert target.read_bytes() == b"the old content"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_save_to_a_missing_directory_or_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="does not exist"):
        fusekit.save(small_graph(), tmp_path / "no" / "such" / "dir.onnx")
    with pytest.raises(InvalidModel, match="is a directory"):
        fusekit.save(small_graph(), tmp_path)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_info_on_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.onnx", b"not a model")
    assert cli_main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fusekit: error: ")
    assert str(bad) in err and "not an ONNX model" in err


def test_cli_info_on_a_missing_file_in_a_subprocess(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "fusekit", "info", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert str(missing) in r.stderr and "no such file" in r.stderr
