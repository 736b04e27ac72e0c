"""bench/generate.py makes valid, runnable, deterministic graphs of the requested size."""

from __future__ import annotations

import collections
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

import fusekit

from ._roundtrip import ROOT, run_ort


def _load_generator() -> ModuleType:
    """bench/ is not a package: import generate.py from its path."""
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


@pytest.fixture(scope="module")
def model_1k() -> onnx.ModelProto:
    return generate.make_model(1000, seed=0)


def test_1k_model_is_valid(model_1k: onnx.ModelProto) -> None:
    """The 1k-op model passes the full checker (with shape inference)."""
    assert len(model_1k.graph.node) == 1000
    onnx.checker.check_model(model_1k, full_check=True)


def test_1k_model_runs_in_onnxruntime(model_1k: onnx.ModelProto) -> None:
    """onnxruntime runs it on a batch of 2 and gives finite class probabilities."""
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (y,) = run_ort(model_1k.SerializeToString(), {"images": x})
    assert y.shape == (2, 10)
    assert np.isfinite(y).all()
    assert np.allclose(y.sum(axis=1), 1.0, atol=1e-5)


def test_10k_model_is_valid() -> None:
    """The 10k-op model passes the checker too (structure, types, opset)."""
    m = generate.make_model(10_000, seed=3)
    assert len(m.graph.node) == 10_000
    onnx.checker.check_model(m)


def test_every_block_family_is_present(model_1k: onnx.ModelProto) -> None:
    """The ops of all four block families, with their realistic wiring, are in the model."""
    nodes = model_1k.graph.node
    hist = collections.Counter(n.op_type for n in nodes)
    for op in ("Conv", "Relu", "Add", "MaxPool", "Clip", "Sigmoid", "Mul", "Concat", "Resize",
               "MatMul", "Reshape", "Transpose", "Softmax", "ReduceMean", "Sub", "Pow", "Sqrt",
               "Div", "Erf"):  # fmt: skip
        assert hist[op] > 0, op
    inits = {t.name for t in model_1k.graph.initializer}
    clips = [n for n in nodes if n.op_type == "Clip"]
    assert all(len(n.input) == 3 and set(n.input[1:]) <= inits for n in clips)  # ReLU6
    assert any(a.name == "group" and a.i > 1 for n in nodes for a in n.attribute)  # depthwise
    # SiLU as Sigmoid*Mul: the Sigmoid's input is also the Mul's other input
    producer = {o: n for n in nodes for o in n.output}
    silu = [
        n for n in nodes
        if n.op_type == "Mul" and any(producer.get(i, n).op_type == "Sigmoid" for i in n.input)
    ]  # fmt: skip
    assert silu and all(producer[n.input[1]].input[0] == n.input[0] for n in silu)


def test_fan_out_is_realistic(model_1k: onnx.ModelProto) -> None:
    """Residual and attention inputs feed several ops; most tensors feed one."""
    readers = collections.Counter(i for n in model_1k.graph.node for i in n.input)
    produced = {o for n in model_1k.graph.node for o in n.output}
    fan = collections.Counter(readers[t] for t in produced)
    assert fan[1] > fan[2] > 0 and fan[3] + fan[4] > 0


def test_weights_are_few_and_shared() -> None:
    """Initializers do not grow with the op count: files stay small."""
    small, large = generate.make_model(1000), generate.make_model(10_000)
    assert len(large.graph.initializer) <= len(small.graph.initializer) + 10
    assert large.ByteSize() < 15 * small.ByteSize()


def test_deterministic_by_seed() -> None:
    """The same seed gives the same bytes; another seed another graph."""
    a = generate.make_model(2000, seed=7).SerializeToString()
    assert a == generate.make_model(2000, seed=7).SerializeToString()
    assert a != generate.make_model(2000, seed=8).SerializeToString()


@pytest.mark.parametrize("n", [10, 57, 1234, 5000])
def test_exact_op_count(n: int) -> None:
    assert len(generate.make_model(n, seed=n).graph.node) == n


def test_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError):
        generate.make_model(5)
    with pytest.raises(ValueError):
        generate.make_model(100, hw=7)


def test_fusekit_round_trip_of_a_generated_model(model_1k: onnx.ModelProto) -> None:
    """What the benchmark loads, fusekit reads losslessly."""
    data = model_1k.SerializeToString()
    g = fusekit.load(data)
    fusekit.check_invariants(g)
    assert fusekit.to_model(g).SerializeToString() == data


def test_cli_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "models" / "g.onnx"
    assert generate.main(["--ops", "300", "--out", str(out), "--seed", "2"]) == 0
    assert out.read_bytes() == generate.make_model(300, seed=2).SerializeToString()
