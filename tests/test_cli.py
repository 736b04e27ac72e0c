"""The ``fusekit`` command line: verbs, JSON output, exit codes, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fusekit
from fusekit import Slot
from fusekit.cli import main
from fusekit.plan_io import load_plan, save_plan

from .test_calibrate import branch_add_model, concat_model, conv_relu_model

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(conv_relu_model())
    return p


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 3, 8, 8)).astype(np.float32)
    p = tmp_path / "d.npz"
    np.savez(p, calib__x=x[:4], eval__x=x[4:])
    return p


def test_fuse_bundled_example_writes_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run(["fuse", "--out-dir", str(out_dir), "--samples", "2"], capsys)
    assert code == 0, err
    assert "ppocr_mobile_v2_cls.onnx (bundled example)" in out
    assert "RANDOM DATA" in out and "random inputs (generated" in out
    for word in ("initial plan", "simplify", "calibration", "sharing groups", "SQNR", "wrote:"):
        assert word in out, word
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == [
        "ppocr_mobile_v2_cls.trt_int8.plan.json",
        "ppocr_mobile_v2_cls.trt_int8.qdq.onnx",
        "ppocr_mobile_v2_cls.trt_int8.ranges.json",
        "ppocr_mobile_v2_cls.trt_int8.report.html",
    ]
    qdq = onnx.load(out_dir / "ppocr_mobile_v2_cls.trt_int8.qdq.onnx")
    onnx.checker.check_model(qdq)
    sess = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.zeros((1, 3, 48, 192), np.float32)})[0]
    assert y.shape == (1, 2)
    html = (out_dir / "ppocr_mobile_v2_cls.trt_int8.report.html").read_text()
    assert "<svg" in html and "sqnr" in html.lower()
    ranges = json.loads((out_dir / "ppocr_mobile_v2_cls.trt_int8.ranges.json").read_text())
    assert ranges and all(v > 0 for v in ranges.values())


def test_fuse_json_on_a_model_with_data(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    o, plan, ranges = tmp_path / "q.onnx", tmp_path / "p.json", tmp_path / "r.json"
    argv = ["fuse", str(model), "--platform", "ort_int8", "--calib", str(data), "-o", str(o)]
    code, out, _ = run([*argv, "--plan", str(plan), "--ranges", str(ranges), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["platform"] == "ort_int8" and doc["ops"] == 3 and not doc["bundled_example"]
    assert doc["calibration"]["generated"] is False and doc["calibration"]["samples"] == 4
    assert doc["evaluation"]["samples"] == 2 and "eval__" in doc["evaluation"]["data"]
    passes = [p["pass"] for p in doc["passes"]]
    assert passes[-3:] == ["calibration", "alignment", "passive_parameters"]
    assert doc["points_initial"]["total"] > doc["points_final"]["total"]
    assert doc["export"]["activation_pairs"] == 3
    assert set(doc["files"]) == {"qdq", "plan", "ranges"}
    g = fusekit.load(model)
    p = load_plan(g, plan)
    assert p[Slot("conv1", "out", 0)].state == fusekit.QuantState.OVERLAPPED
    assert json.loads(ranges.read_text())["r1"] > 0
    assert onnx.load(o).graph.output[0].name == "y"


def test_fuse_evaluates_on_calibration_data_without_an_eval_split(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.random.default_rng(1).standard_normal((3, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", calib__x=x)
    code, out, _ = run(["fuse", str(model), "--calib", str(tmp_path / "c.npz"), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["evaluation"]["samples"] == 3
    assert "no separate evaluation set" in doc["evaluation"]["data"]


def test_fuse_min_sqnr_exit_code(
    model: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["fuse", str(model), "--calib", str(data)]
    assert run([*base, "--min-sqnr", "5"], capsys)[0] == 0
    code, _, err = run([*base, "--min-sqnr", "200"], capsys)
    assert code == 1 and "below --min-sqnr 200" in err


def test_fuse_without_calibration(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "p.json"
    code, out, _ = run(["fuse", str(model), "--no-calibrate", "--plan", str(plan)], capsys)
    assert code == 0 and "not calibrated" not in out and plan.is_file()
    code, _, err = run(
        ["fuse", str(model), "--no-calibrate", "-o", str(tmp_path / "q.onnx")], capsys
    )
    assert code == 2 and "--no-calibrate" in err


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["fuse", str(tmp_path / "nope.onnx")], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "nope.onnx" in err and "Traceback" not in err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    code, _, err = run(["info", str(bad)], capsys)
    assert code == 2 and "not an ONNX model" in err
    code, _, err = run(["fuse", "--platform", "nope"], capsys)
    assert code == 2 and "unknown platform 'nope'" in err
    with pytest.raises(fusekit.FusekitError):
        main(["--debug", "fuse", str(tmp_path / "nope.onnx")])
    with pytest.raises(fusekit.FusekitError):
        main(["fuse", str(tmp_path / "nope.onnx"), "--debug"])


def test_bad_calibration_data_is_exit_2(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "w.npz", y=np.zeros((2, 1, 3, 8, 8), np.float32))
    code, _, err = run(["fuse", str(model), "--calib", str(tmp_path / "w.npz")], capsys)
    assert code == 2 and "no array for input(s) 'x'" in err
    with pytest.raises(SystemExit) as e:
        main(["fuse", str(model), "--input-shape", "x=1,a"])
    assert e.value.code == 2


def test_explain_tensor_and_op(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["explain", str(model), "--tensor", "c1"], capsys)
    assert code == 0
    assert "conv1|out|0" in out and "relu1|in|0" in out and "overlapped" in out
    code, out, _ = run(["explain", str(model), "--op", "relu1", "--json"], capsys)
    doc = json.loads(out)
    assert {s["slot"] for s in doc["slots"]} == {"relu1|in|0", "relu1|out|0"}
    assert all(s["steps"] for s in doc["slots"])
    assert run(["explain", str(model), "--tensor", "nope"], capsys)[0] == 2
    assert run(["explain", str(model), "--op", "nope"], capsys)[0] == 2


def test_platforms(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["platforms"], capsys)
    assert code == 0 and out.splitlines()[0].startswith(fusekit.platforms()[0])
    assert "ort_int8" in out
    assert "ppq066_trt_int8" in out
    code, out, _ = run(["platforms", "ort_int8", "--json"], capsys)
    assert json.loads(out)["name"] == "ort_int8"
    code, out, _ = run(["platforms", "trt_int8"], capsys)
    assert "activation_types" in out
    assert run(["platforms", "nope"], capsys)[0] == 2
    names = [p["name"] for p in json.loads(run(["platforms", "--json"], capsys)[1])]
    assert names == list(fusekit.platforms())


def test_evaluate_verb(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    q = tmp_path / "q.onnx"
    assert run(["fuse", str(model), "--calib", str(data), "-o", str(q), "-q"], capsys)[0] == 0
    code, out, _ = run(["evaluate", str(model), str(q), "--data", str(data), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["samples"] == 2 and doc["outputs"][0]["name"] == "y"
    assert doc["generated"] is False
    code, out, _ = run(["evaluate", str(model), str(q)], capsys)
    assert code == 0 and "RANDOM DATA" in out and "SQNR" in out
    code, _, err = run(["evaluate", str(model), str(q), "--min-sqnr", "300"], capsys)
    assert code == 1 and "below --min-sqnr" in err


def test_compare_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "head.onnx"
    p.write_bytes(concat_model())
    code, out, _ = run(["compare", str(p), "--input-shape", "x=1,3,5,5"], capsys)
    assert code == 0
    assert "fused" in out and "unfused" in out
    # the boxes/scores Concat is split by alignment (16x rule): no tied group left to flag
    assert "0 tie ranges 16x apart or more" in out
    p2 = tmp_path / "add.onnx"
    p2.write_bytes(branch_add_model())
    code, out, _ = run(["compare", str(p2), "--no-alignment", "--json"], capsys)
    doc = json.loads(out)
    assert [v["name"] for v in doc["variants"]] == ["fused", "unfused", "fused, no alignment"]


def test_check_verb(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", str(model), "--platform", "trt_int8"], capsys)
    assert code == 0 and "keeps every law" in out
    g = fusekit.load(model)
    # relu1 reads conv1's output through a slot switched off by an unrelated root
    bad = fusekit.init_plan(g, "trt_int8").overlap(Slot("relu1", "in", 0), Slot("conv2", "out", 0))
    path = tmp_path / "bad.json"
    save_plan(bad, path)
    code, _, err = run(["check", str(model), "--platform", "trt_int8", "--plan", str(path)], capsys)
    assert code == 1 and "relu1|in|0" in err and "no-dead-quantization" in err
    code, out, _ = run(
        ["check", str(model), "--platform", "trt_int8", "--plan", str(path), "--json"], capsys
    )
    doc = json.loads(out)
    assert code == 1 and any(v["slot"] == "relu1|in|0" for v in doc["violations"])


def test_info_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", "--json"], capsys)
    assert code == 0 and json.loads(out)["ops"] == 566
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"fusekit {fusekit.__version__}"


def test_console_script_and_module(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("fusekit")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and fusekit.__version__ in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "fusekit", "platforms", "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and json.loads(r.stdout)
    r = subprocess.run(
        [sys.executable, "-m", "fusekit", "info", str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_quiet_prints_nothing(model: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["fuse", str(model), "--calib", str(data), "--quiet"], capsys)
    assert code == 0 and out == "" and err == ""
