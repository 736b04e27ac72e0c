"""Rule files on the command line, and biases kept quantized under per-tensor weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import fusekit
from fusekit import Slot
from fusekit.calibrate import Calibration
from fusekit.cli import main
from fusekit.export import build_qdq
from fusekit.laws import check
from fusekit.rulefile import platform_from_dict

from .test_calibrate import conv_relu_model, samples

PT = "PER_TENSOR+LINEAR+SYMMETRICAL"
RULES: dict[str, Any] = {
    "name": "ort_int8_per_tensor",
    "base": "ort_int8",
    "description": "ort_int8 with per-tensor weights",
    "weights": {t: {"policy": PT, "observer": "minmax"} for t in ("Conv", "Gemm", "MatMul")},
}
TOML = """name = "ort_int8_per_tensor_toml"
base = "ort_int8"
[weights.Conv]
policy = "PER_TENSOR+LINEAR+SYMMETRICAL"
observer = "minmax"
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    m = tmp_path / "m.onnx"
    m.write_bytes(conv_relu_model())
    x = np.random.default_rng(0).standard_normal((6, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", calib__x=x[:4], eval__x=x[4:])
    j = tmp_path / "rules.json"
    j.write_text(json.dumps(RULES))
    t = tmp_path / "rules.toml"
    t.write_text(TOML)
    return {"model": m, "data": tmp_path / "d.npz", "json": j, "toml": t, "dir": tmp_path}


def _bias_dqs(model: onnx.ModelProto) -> list[str]:
    """Names of the int32 initializers a DequantizeLinear turns into a bias."""
    ints = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32}
    return [
        n.input[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in ints
    ]


@pytest.mark.parametrize("kind", ["json", "toml"])
def test_fuse_takes_a_rule_file(
    kind: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = files["dir"] / "out"
    argv = ["fuse", str(files["model"]), "--platform", str(files[kind]), "--calib"]
    code, out, err = run([*argv, str(files["data"]), "--out-dir", str(out_dir), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    name = "ort_int8_per_tensor" if kind == "json" else "ort_int8_per_tensor_toml"
    assert doc["platform"] == name
    assert doc["export"]["left_float"] == []  # no bias left float
    qdq = onnx.load(out_dir / f"m.{name}.qdq.onnx")
    assert len(_bias_dqs(qdq)) == 2  # both Conv biases are int32 + DequantizeLinear
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in qdq.graph.initializer}
    for n in qdq.graph.node:  # per-tensor weights: one scale each
        if n.op_type == "DequantizeLinear" and n.input[0].startswith("w"):
            assert scales[n.input[1]].size == 1


def test_other_verbs_take_a_rule_file(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rules = str(files["json"])
    code, out, err = run(["platforms", rules, "--json"], capsys)
    assert code == 0, err and json.loads(out)["name"] == "ort_int8_per_tensor"
    code, out, err = run(["check", str(files["model"]), "--platform", rules], capsys)
    assert code == 0, err
    assert "ort_int8_per_tensor" in out
    code, out, err = run(
        ["explain", str(files["model"]), "--op", "conv1", "--platform", rules], capsys
    )
    assert code == 0, err
    argv = ["compare", str(files["model"]), "--platform", rules, "--calib", str(files["data"])]
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["platform"] == "ort_int8_per_tensor"


def test_rule_file_errors_are_exit_2(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    clash = files["dir"] / "clash.json"
    clash.write_text(json.dumps({**RULES, "name": "trt_int8"}))
    model = str(files["model"])
    code, _, err = run(["check", model, "--platform", str(clash)], capsys)
    assert code == 2 and "like a built-in platform" in err and err.count("\n") == 1
    bad = files["dir"] / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(["check", model, "--platform", str(bad)], capsys)
    assert code == 2 and "bad.json" in err
    code, _, err = run(["check", model, "--platform", str(files["dir"] / "none.toml")], capsys)
    assert code == 2 and "no such file" in err
    # a built-in's exact rules under its own name are fine
    same = files["dir"] / "same.json"
    same.write_text(json.dumps({"name": "trt_int8", "base": "trt_int8"}))
    code, _, err = run(["check", model, "--platform", str(same)], capsys)
    assert code == 0, err


def test_per_tensor_weights_keep_the_bias_quantized() -> None:
    """bias scale = input scale x weight scale, one per tensor (0.1 left the bias float)."""
    p = platform_from_dict({**RULES, "name": "ort_int8_pt_lib"})
    fusekit.register_platform(p, replace=True)
    g = fusekit.load(conv_relu_model())
    plan0 = fusekit.init_plan(g, p)
    res = fusekit.default_pipeline(p, calibration=Calibration(samples(4))).run(g, plan0)
    plan = res.plan
    for conv in ("conv1", "conv2"):
        b = plan[Slot(conv, "in", 2)]
        assert b.state == fusekit.QuantState.PASSIVE
        assert not b.policy.per_channel and b.channel_axis is None and b.num_bits == 32
        xs = float(plan.scale_of(Slot(conv, "in", 0)))
        ws = float(plan.scale_of(Slot(conv, "in", 1)))
        assert float(b.scale) == pytest.approx(xs * ws, rel=1e-6)
    assert not check(g, plan, p.name)
    qdq = build_qdq(g, plan)
    assert qdq.skipped == () and len(_bias_dqs(qdq.model)) == 2
    # the per-channel rule set is unchanged: per-channel bias scales
    pc = fusekit.default_pipeline("ort_int8", calibration=Calibration(samples(4))).run(
        g, fusekit.init_plan(g, "ort_int8")
    )
    assert np.size(pc.plan[Slot("conv1", "in", 2)].scale) == 4
