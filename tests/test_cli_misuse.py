"""The command line used wrongly (issue 10): it refuses, names the problem, and loses nothing.

Each test is a regression test of one item of issue 10 (the item number is in its name's
docstring): outputs over inputs, the ``--min-sqnr`` gate on NaN, already-quantized models,
external-data models, one size per symbolic dimension, exit codes, onnxruntime's messages,
up-front path checks and all-or-nothing outputs, and the small ones.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusekit
import fusekit.calibrate
import fusekit.cli
import fusekit.report
from fusekit import AlreadyQuantized, InvalidModel
from fusekit.calibrate import random_data
from fusekit.cli import main
from fusekit.evaluate import Evaluation, OutputMetrics
from fusekit.onnx_io import model_files, write_files_atomic

from .conftest import CORPUS
from .test_calibrate import conv_relu_model

ROOT = Path(__file__).resolve().parents[1]
F = TensorProto.FLOAT


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """stderr must be exactly one ``fusekit: error:`` line (no traceback, no ORT log)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusekit: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(conv_relu_model())
    return p


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    x = np.random.default_rng(0).standard_normal((6, 1, 3, 8, 8)).astype(np.float32)
    p = tmp_path / "d.npz"
    np.savez(p, calib__x=x[:4], eval__x=x[4:])
    return p


@pytest.fixture()
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading the model fail the test: a refusal must come before any work."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded: the refusal came after work started")

    monkeypatch.setattr(fusekit.cli, "load", boom)


# --------------------------------------------------------------------------------------------
# 1. an output path over an input or another output


@pytest.mark.parametrize(
    "extra",
    [
        ["-o", "{model}"],
        ["--plan", "{model}"],
        ["--report", "{data}"],
        ["--ranges", "{calib_dir}/x.npy"],
        ["-o", "{tmp}/q.onnx", "--report", "{tmp}/q.onnx"],
        ["--plan", "{tmp}/./p.json", "--ranges", "{tmp}/p.json"],
        ["--out-dir", "{tmp}/o", "--plan", "{tmp}/o/m.trt_int8.qdq.onnx"],
        ["--eval", "{data}", "-o", "{link}"],
    ],
)
def test_output_over_an_input_or_another_output_is_refused_before_work(
    extra: list[str],
    model: Path,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_work: None,
) -> None:
    """Item 1: refused with exit 2 before any work; the inputs are untouched."""
    calib_dir = tmp_path / "cd"
    calib_dir.mkdir()
    np.save(calib_dir / "x.npy", np.zeros((2, 1, 3, 8, 8), np.float32))
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    fields = {"model": model, "data": data, "tmp": tmp_path, "calib_dir": calib_dir, "link": link}
    argv = [a.format(**fields) for a in extra]
    calib = ["--calib", str(calib_dir)] if "{calib_dir}/x.npy" in extra else []
    if "{data}" in extra and "--eval" not in extra:
        calib = ["--calib", str(data)]
    before = {p: p.read_bytes() for p in (model, data, calib_dir / "x.npy")}
    code, _, err = run(["fuse", str(model), *calib, *argv], capsys)
    line = one_error_line(err)
    assert code == 2
    assert "would overwrite the input" in line or "are the same file" in line
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# 2. the --min-sqnr gate and NaN


def test_evaluation_min_sqnr_does_not_hide_a_nan_output() -> None:
    """Item 2: ``min()`` over [30, nan] is 30; the gate must see the NaN."""
    ev = Evaluation(
        (OutputMetrics("a", 30.0, 1.0, 0.1, 1), OutputMetrics("b", math.nan, 1.0, 0.1, 1)),
        1,
        "d",
        "reference",
    )
    assert math.isnan(ev.min_sqnr)
    assert not ev.passes(10.0)
    ok = Evaluation((OutputMetrics("a", math.inf, 1.0, 0.0, 1),), 1, "d", "reference")
    assert ok.passes(10.0)


def two_output_models(tmp_path: Path) -> tuple[Path, Path]:
    """A float model y1 = y2 = Relu(x) and a "QDQ" model whose second output is NaN."""

    def make(nan: bool) -> bytes:
        k = np.array([math.nan if nan else 0.0], np.float32)
        nodes = [
            helper.make_node("Relu", ["x"], ["y1"], "r1"),
            helper.make_node("Relu", ["x"], ["r2"], "r2"),
            helper.make_node("Add", ["r2", "k"], ["y2"], "add"),
        ]
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", F, [1, 4])],
            [helper.make_tensor_value_info(n, F, [1, 4]) for n in ("y1", "y2")],
            [numpy_helper.from_array(k, "k")],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        return m.SerializeToString()

    f, q = tmp_path / "f.onnx", tmp_path / "q.onnx"
    f.write_bytes(make(False))
    q.write_bytes(make(True))
    return f, q


def test_gate_fails_on_a_nan_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 2: a NaN SQNR on any output fails the gate: exit 1, "passed": false."""
    f, q = two_output_models(tmp_path)
    code, out, _ = run(["evaluate", str(f), str(q), "--min-sqnr", "10", "--json"], capsys)
    doc = json.loads(out)
    assert doc["outputs"][1]["sqnr_db"] == "nan"
    assert code == 1 and doc["passed"] is False


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_threshold_is_bad_input(
    value: str, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 2: ``--min-sqnr nan`` is refused (argparse: exit 2)."""
    with pytest.raises(SystemExit) as e:
        main(["fuse", str(model), "--samples", "1", f"--min-sqnr={value}"])
    assert e.value.code == 2
    assert "finite" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 3. already-quantized models


class _Reader:
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.it = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}] * 3)

    def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
        return next(self.it, None)


@pytest.fixture()
def quantized_models(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, Path]:
    """fusekit's own QDQ export and onnxruntime's quantize_static output (QDQ, QOperator)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    own = tmp_path / "own.qdq.onnx"
    assert run(["fuse", str(model), "--calib", str(data), "-o", str(own), "-q"], capsys)[0] == 0
    out = {"fusekit": own}
    reader = type("Reader", (_Reader, CalibrationDataReader), {})
    for fmt, name in ((QuantFormat.QDQ, "ort_qdq"), (QuantFormat.QOperator, "ort_qop")):
        quantize_static(str(model), str(tmp_path / f"{name}.onnx"), reader(), quant_format=fmt)
        out[name] = tmp_path / f"{name}.onnx"
    return out


@pytest.mark.parametrize("which", ["fusekit", "ort_qdq", "ort_qop"])
@pytest.mark.parametrize(
    "verb",
    [
        ["fuse", "{m}", "--samples", "1", "-o", "{tmp}/again.onnx"],
        ["compare", "{m}", "--samples", "1"],
        ["check", "{m}", "--platform", "trt_int8"],
        ["explain", "{m}", "--op", "conv1"],
    ],
)
def test_already_quantized_models_are_refused(
    which: str,
    verb: list[str],
    quantized_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Item 3: exit 2 and one line "already quantized: N QuantizeLinear/DequantizeLinear..."."""
    m = quantized_models[which]
    argv = [a.format(m=m, tmp=tmp_path) for a in verb]
    code, _, err = run(argv, capsys)
    line = one_error_line(err)
    assert code == 2, err
    assert "already quantized: " in line and "QuantizeLinear/DequantizeLinear nodes" in line
    assert str(m) in line
    if which == "ort_qop":
        assert "QLinearConv" in line
    assert not (tmp_path / "again.onnx").exists()


def test_already_quantized_library_check(quantized_models: dict[str, Path], model: Path) -> None:
    """Item 3: the check is a library function; init_plan itself still accepts such graphs."""
    assert fusekit.quantization_ops(fusekit.load(model)) == {}
    fusekit.require_float_model(fusekit.load(model))
    g = fusekit.load(quantized_models["ort_qop"])
    counts = fusekit.quantization_ops(g)
    assert counts["QLinearConv"] == 2
    with pytest.raises(AlreadyQuantized) as e:
        fusekit.require_float_model(g, "x.onnx")
    assert isinstance(e.value, ValueError) and e.value.counts == counts
    fusekit.init_plan(g, "trt_int8")  # documented: the library does not refuse


# --------------------------------------------------------------------------------------------
# 4. external data


def reshape_model() -> onnx.ModelProto:
    """conv -> relu -> reshape: the Reshape's int64 shape initializer stays as it is."""
    m = onnx.load_from_string(conv_relu_model())
    m.graph.node[-1].output[0] = "c2"
    m.graph.node.append(helper.make_node("Reshape", ["c2", "shape"], ["y"], "reshape"))
    m.graph.initializer.append(numpy_helper.from_array(np.array([1, 128], np.int64), "shape"))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("y", F, [1, 128]))
    onnx.checker.check_model(m)
    return m


def external_model(folder: Path) -> Path:
    """A model whose every initializer lives in ``m.onnx.data`` next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "m.onnx"
    onnx.save_model(
        reshape_model(),
        str(p),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    assert (folder / "m.onnx.data").is_file()
    return p


def no_external_refs(path: Path) -> bool:
    m = onnx.load(str(path), load_external_data=False)
    return all(t.data_location != TensorProto.EXTERNAL for t in m.graph.initializer)


@pytest.mark.parametrize("cwd", ["elsewhere", "model folder"])
def test_external_data_model_exports_self_contained(
    cwd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 4: the export never points at the source folder's .data file."""
    src = external_model(tmp_path / "src")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere" if cwd == "elsewhere" else tmp_path / "src")
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    code, _, err = run(["fuse", str(src), "--samples", "2", "-o", str(out), "-q"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx"]
    assert no_external_refs(out)
    (tmp_path / "src" / "m.onnx.data").unlink()  # the export must not need it
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})[0].shape == (1, 128)


def test_large_export_writes_its_own_data_file(tmp_path: Path) -> None:
    """Item 4: above the limit, weights go to ``<output>.data`` next to the output."""
    m = reshape_model()
    target = tmp_path / "big.onnx"
    assert list(model_files(m, target)) == [target]  # small: one self-contained file
    limit = m.ByteSize() - 1
    files = model_files(m, target, limit=limit, min_external=100)  # 16-byte shape stays
    assert sorted(p.name for p in files) == ["big.onnx", "big.onnx.data"]
    write_files_atomic(files)
    stored = onnx.load(str(target), load_external_data=False)
    locations = {
        e.value for t in stored.graph.initializer for e in t.external_data if e.key == "location"
    }
    assert locations == {"big.onnx.data"} and len(files[target]) <= limit
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(ref.run(None, {"x": x})[0], got.run(None, {"x": x})[0])
    with pytest.raises(InvalidModel, match="protobuf cannot hold it"):
        model_files(m, target, limit=10, min_external=16)


@pytest.mark.parametrize(
    "verb",
    [
        ["info", "{m}"],
        ["explain", "{m}", "--op", "conv1"],
        ["check", "{m}", "--platform", "trt_int8"],
        ["fuse", "{m}", "--no-calibrate"],
    ],
)
def test_missing_external_data_file_is_reported(
    verb: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 4: a missing .data file is bad input for every verb, naming the file."""
    src = external_model(tmp_path / "src")
    (tmp_path / "src" / "m.onnx.data").unlink()
    code, _, err = run([a.format(m=src) for a in verb], capsys)
    line = one_error_line(err)
    assert code == 2 and "m.onnx.data" in line and "does not exist" in line


# --------------------------------------------------------------------------------------------
# 8. one size per symbolic dimension


def symbolic_model() -> onnx.ModelProto:
    """a[batch, 8] and b[2, batch, 4], as silero_vad's input and state."""
    nodes = [
        helper.make_node("ReduceSum", ["a"], ["sa"], "ra", keepdims=0),
        helper.make_node("ReduceSum", ["b"], ["sb"], "rb", keepdims=0),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("a", F, ["batch", 8]),
            helper.make_tensor_value_info("b", F, [2, "batch", "?"]),
        ],
        [helper.make_tensor_value_info(n, F, []) for n in ("sa", "sb")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_one_size_per_dim_param() -> None:
    """Item 8: ``batch`` has one size in every input; --input-shape sizes propagate."""
    g = fusekit.load(symbolic_model())
    feed = next(iter(random_data(g, 1)))
    assert feed["a"].shape == (1, 8) and feed["b"].shape == (2, 1, 64)
    feed = next(iter(random_data(g, 1, shapes={"a": (3, 8)})))
    assert feed["a"].shape == (3, 8) and feed["b"].shape == (2, 3, 64)


def test_input_shape_of_an_unknown_input_is_an_error(
    model: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 8: a --input-shape name that is not an input is bad input."""
    code, _, err = run(["fuse", str(model), "--input-shape", "nope=1,2", "--samples", "1"], capsys)
    line = one_error_line(err)
    assert code == 2 and "'nope'" in line and "inputs: x" in line
    code, _, err = run(["fuse", str(model), "--calib", str(data), "--input-shape", "y=1"], capsys)
    assert code == 2 and "'y'" in one_error_line(err)  # also when nothing is generated


def test_silero_vad_fuses_with_generated_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 8: the corpus model whose ``batch`` was 1 in ``input`` and 64 in ``state``."""
    m = CORPUS / "models" / "silero_vad_16k_op15.onnx.gz"
    argv = ["fuse", str(m), "--samples", "1", "--input-shape", "input=1,512", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "state[2, 1, 128]" in json.loads(out)["calibration"]["data"]


# --------------------------------------------------------------------------------------------
# 12. exit codes: 2 for bad input, 3 for a bug, never 1


def test_string_valued_npz_is_bad_input(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 12: a .npz of strings is exit 2 naming the file (was a traceback, exit 1)."""
    p = tmp_path / "s.npz"
    np.savez(p, x=np.full((2, 1, 3, 8, 8), "abc"))
    code, _, err = run(["fuse", str(model), "--calib", str(p)], capsys)
    line = one_error_line(err)
    assert code == 2 and str(p) in line and "'x'" in line


def test_truncated_npz_is_bad_input(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 12: a truncated .npz (BadZipFile) is exit 2 naming the file."""
    p = tmp_path / "t.npz"
    p.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    code, _, err = run(["fuse", str(model), "--calib", str(p)], capsys)
    line = one_error_line(err)
    assert code == 2 and str(p) in line


@pytest.mark.parametrize("seed", ["-1", "x", str(2**64)])
def test_bad_seed_is_bad_input(model: Path, seed: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 12: ``--seed -1`` is refused by the parser (exit 2), not by numpy (exit 1)."""
    with pytest.raises(SystemExit) as e:
        main(["fuse", str(model), "--samples", "1", f"--seed={seed}"])
    assert e.value.code == 2
    assert "--seed" in capsys.readouterr().err


def test_huge_declared_input_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 12: a declared shape too large to allocate is exit 2, nothing allocated."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], "r")],
        "g",
        [helper.make_tensor_value_info("x", F, [100000, 100000, 100])],
        [helper.make_tensor_value_info("y", F, [100000, 100000, 100])],
    )
    p = tmp_path / "huge.onnx"
    p.write_bytes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    )
    code, _, err = run(["fuse", str(p), "--samples", "1"], capsys)
    line = one_error_line(err)
    assert code == 2 and "'x'" in line and "--input-shape" in line


def test_internal_error_exits_3_and_says_how_to_report(
    model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 12: an unexpected exception is exit 3 with one line; --debug shows the traceback."""

    def bug(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(fusekit.cli, "summarize", bug)
    code, _, err = run(["info", str(model)], capsys)
    line = one_error_line(err)
    assert code == 3
    assert "internal error: ZeroDivisionError: a bug" in line and "report" in line
    with pytest.raises(ZeroDivisionError):
        main(["info", str(model), "--debug"])


# --------------------------------------------------------------------------------------------
# 13. onnxruntime's messages


def test_onnxruntime_error_keeps_the_useful_line_and_no_log_leaks(
    model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Item 13: "index: 0 Got: 4 Expected: 1" survives, the data file and model are named,
    and onnxruntime's own log lines do not reach stderr."""
    p = tmp_path / "b4.npz"
    np.savez(p, x=np.zeros((2, 4, 3, 8, 8), np.float32))  # 2 samples of batch 4; model: 1
    code = main(["fuse", str(model), "--calib", str(p)])
    _, err = capfd.readouterr()
    line = one_error_line(err)
    assert code == 2
    assert "index: 0 Got: 4 Expected: 1" in line
    assert str(p) in line and str(model) in line
    assert "onnxruntime:" not in err.replace("onnxruntime failed", "").replace("[ONNXRuntime", "")


def test_onnxruntime_log_lines_do_not_leak(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Item 13: a node failing at run time: ORT's coloured "[E:onnxruntime:..." log line stays
    off stderr (run options' log level), and the message names the model file."""
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], "relu"),
            helper.make_node("Reshape", ["r", "s"], ["y"], "reshape"),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, ["n"])],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(np.array([3], np.int64), "s")],
    )
    m = tmp_path / "rs.onnx"
    m.write_bytes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    )
    d = tmp_path / "rs.npz"
    np.savez(d, x=np.zeros((2, 4), np.float32))  # 4 values cannot be reshaped to [3]
    code = main(["evaluate", str(m), str(m), "--data", str(d)])
    _, err = capfd.readouterr()
    line = one_error_line(err)
    assert code == 2 and "[E:onnxruntime" not in err
    assert line.startswith(f"fusekit: error: {m}: onnxruntime failed on sample 0")
    assert "requested shape:{3}" in line and str(d) in line


def test_gzip_model_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 13: a ``.onnx.gz`` model is read transparently (was "Wire format was corrupt")."""
    p = tmp_path / "m.onnx.gz"
    p.write_bytes(gzip.compress(conv_relu_model()))
    code, out, err = run(["info", str(p), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["ops"] == 3
    assert fusekit.to_model(fusekit.load(p)).SerializeToString() == conv_relu_model()
    p.write_bytes(gzip.compress(conv_relu_model())[:-20])
    code, _, err = run(["info", str(p)], capsys)
    assert code == 2 and "gzip" in one_error_line(err)


# --------------------------------------------------------------------------------------------
# 14. paths checked up front, outputs all or nothing, SIGTERM


@pytest.mark.parametrize(
    "extra, words",
    [
        (["-o", "{tmp}/missing/q.onnx"], "missing"),
        (["--report", "{tmp}"], "is a folder"),
        (["--eval", "{tmp}/typo.npz"], "--eval"),
        (["--calib", "{tmp}/typo.npz"], "--calib"),
        (["--out-dir", "{tmp}/file.txt/sub"], "not a folder"),
    ],
)
def test_paths_are_checked_before_work(
    extra: list[str],
    words: str,
    model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_work: None,
) -> None:
    """Item 14: a bad output folder or a mistyped --eval fails before the model is loaded."""
    (tmp_path / "file.txt").write_text("x")
    code, _, err = run(["fuse", str(model), *[a.format(tmp=tmp_path) for a in extra]], capsys)
    line = one_error_line(err)
    assert code == 2 and words in line


def test_a_late_failure_leaves_no_output(
    model: Path,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Item 14: the report failing last leaves neither the QDQ model, the plan nor ranges."""

    def fail(*args: Any, **kwargs: Any) -> str:
        raise fusekit.errors.ReportError("cannot draw")

    monkeypatch.setattr(fusekit.report, "render_report", fail)
    out = tmp_path / "out"
    code, _, err = run(["fuse", str(model), "--calib", str(data), "--out-dir", str(out)], capsys)
    assert code == 2 and "cannot draw" in one_error_line(err)
    assert not out.exists()


def test_a_failed_rename_leaves_none_of_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 14: if the second rename fails, the first file is removed and no temp is left."""
    calls = []
    real = os.replace

    def flaky(a: str, b: Any) -> None:
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "replace", flaky)
    files = {tmp_path / "a": b"1", tmp_path / "b": b"2", tmp_path / "c": b"3"}
    with pytest.raises(OSError):
        write_files_atomic(files)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_cleans_up_like_sigint(model: Path, data: Path, tmp_path: Path) -> None:
    """Item 14: SIGTERM while the outputs are written: exit 143, no hidden .tmp file left."""
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        real = os.replace
        def replace(a, b):  # the signal arrives while the set is being written
            os.kill(os.getpid(), signal.SIGTERM)
            real(a, b)
        os.replace = replace
        from fusekit.cli import main
        sys.exit(main(["fuse", {str(model)!r}, "--calib", {str(data)!r},
                       "-o", {str(out / "q.onnx")!r}, "--plan", {str(out / "p.json")!r}, "-q"]))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert "terminated" in r.stderr and "Traceback" not in r.stderr
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 15. the small ones


def test_zero_samples_is_bad_input(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 15: ``--samples 0`` is refused, not silently 8."""
    with pytest.raises(SystemExit) as e:
        main(["fuse", str(model), "--samples", "0"])
    assert e.value.code == 2 and "--samples" in capsys.readouterr().err


def test_no_calibrate_out_dir_creates_nothing(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 15: ``--no-calibrate --out-dir D`` is refused and D is not created."""
    d = tmp_path / "new"
    code, _, err = run(["fuse", str(model), "--no-calibrate", "--out-dir", str(d)], capsys)
    assert code == 2 and "--no-calibrate" in one_error_line(err)
    assert not d.exists()


def test_broken_pipe_is_quiet() -> None:
    """Item 15: ``fusekit platforms | head -0``: no "Broken pipe" message, no exit 2."""
    p = subprocess.Popen(
        [sys.executable, "-m", "fusekit", "platforms"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before fusekit writes a byte
    err = p.stderr.read().decode()
    code = p.wait(timeout=120)
    assert err == "" and code == 141


def test_complex_data_is_bad_input(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 15: complex values are refused (no raw numpy ComplexWarning)."""
    p = tmp_path / "c.npz"
    np.savez(p, x=np.ones((2, 1, 3, 8, 8), np.complex64))
    code, _, err = run(["fuse", str(model), "--calib", str(p)], capsys)
    line = one_error_line(err)
    assert code == 2 and "complex" in line and "Warning" not in err
    g = fusekit.load(model)
    with pytest.raises(fusekit.errors.InvalidData, match="complex"):  # feeds given in Python
        list(fusekit.calibrate.as_dataset([{"x": np.ones((1, 3, 8, 8), np.complex64)}], g))


def test_extras_model_is_not_a_live_proto(model: Path, tmp_path: Path) -> None:
    """Item 15: editing ``graph.extras.model`` does not change the graph or what it writes."""
    g = fusekit.load(model)
    before = fusekit.to_model(g).SerializeToString()
    m = g.extras.model
    m.graph.name = "edited"
    m.opset_import[0].version = 99
    del m.graph.node[:]
    assert g.extras.model.graph.name != "edited"
    assert fusekit.to_model(g).SerializeToString() == before == model.read_bytes()
    fusekit.save(g, tmp_path / "same.onnx")
    assert (tmp_path / "same.onnx").read_bytes() == model.read_bytes()
