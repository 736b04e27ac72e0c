"""``fusekit evaluate --kernels`` and ``--latency`` (and ``compare --latency``) on the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from fusekit.cli import main

from .test_calibrate import branch_add_model, conv_relu_model
from .test_kernels import qdq_model


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_kernels_on_a_qdq_model_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No float model needed: the verdict and the reason of every computing op."""
    p = tmp_path / "s8relu.qdq.onnx"
    p.write_bytes(qdq_model(relu=True, act=TensorProto.INT8).SerializeToString())
    code, out, _ = run(["evaluate", str(p), "--kernels"], capsys)
    assert code == 0
    assert "0 of 1 Conv/ConvTranspose/MatMul/Gemm run as int8 kernels" in out
    assert "op0" in out and "FusedConv" in out and "kept between it and its QuantizeLinear" in out
    assert "stray Q/DQ" in out
    code, out, _ = run(["evaluate", str(p), "--kernels", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["coverage"] == 0.0 and doc["ops"][0]["kernel"] == "FusedConv"


def test_kernels_with_two_models_reads_the_qdq_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    q = tmp_path / "u8.qdq.onnx"
    q.write_bytes(qdq_model(relu=True).SerializeToString())
    f = tmp_path / "float.onnx"
    f.write_bytes(conv_relu_model())
    code, out, _ = run(
        ["evaluate", str(f), str(q), "--kernels", "--json", "--level", "all"], capsys
    )
    doc = json.loads(out)
    assert code == 0 and doc["model"] == str(q) and doc["level"] == "all"
    assert doc["ops"][0]["int8"] is True


def test_kernels_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["evaluate", str(tmp_path / "none.onnx"), "--kernels"], capsys)
    assert code == 2 and "none.onnx" in err
    bad = qdq_model()
    bad.graph.node[3].op_type = "NoSuchOp"  # the Conv
    p = tmp_path / "bad.qdq.onnx"
    p.write_bytes(bad.SerializeToString())
    code, _, err = run(["evaluate", str(p), "--kernels"], capsys)
    assert code == 2 and "bad.qdq.onnx" in err
    # without --kernels, evaluate still needs both models
    code, _, err = run(["evaluate", str(p)], capsys)
    assert code == 2 and "FLOAT.onnx QDQ.onnx" in err


def test_evaluate_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(conv_relu_model())
    x = np.random.default_rng(0).standard_normal((4, 1, 3, 8, 8)).astype(np.float32)
    d = tmp_path / "d.npz"
    np.savez(d, calib__x=x[:2], eval__x=x[2:])
    q = tmp_path / "q.onnx"
    assert (
        run(
            ["fuse", str(f), "--platform", "ort_int8", "--calib", str(d), "-o", str(q), "-q"],
            capsys,
        )[0]
        == 0
    )
    argv = ["evaluate", str(f), str(q), "--data", str(d), "--latency", "--runs", "3"]
    code, out, _ = run([*argv, "--json"], capsys)
    lat = json.loads(out)["latency"]
    assert code == 0
    assert lat["runs"] == 3 and lat["threads"] == 1 and lat["warmup"] == 3
    assert lat["float_ms"] > 0 and lat["qdq_ms"] > 0 and lat["cpu"]
    assert lat["computing_ops"] == 2 and 0 <= lat["int8_ops"] <= 2
    code, out, _ = run([*argv, "--threads", "2"], capsys)
    assert code == 0 and "latency: float" in out and "2 thread(s)" in out
    with pytest.raises(SystemExit) as exc:  # argparse refuses it: exit 2, usage on stderr
        main([*argv, "--runs", "0"])
    assert exc.value.code == 2
    assert "--runs: expected a positive integer" in capsys.readouterr().err


def test_compare_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "add.onnx"
    p.write_bytes(branch_add_model())
    code, out, _ = run(["compare", str(p), "--latency", "--runs", "2", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0
    for v in doc["variants"]:
        assert v["latency"]["runs"] == 2 and v["latency"]["qdq_ms"] > 0
    code, out, _ = run(["compare", str(p), "--latency", "--runs", "2"], capsys)
    assert code == 0 and "fused: latency: float" in out and "unfused: latency: float" in out
