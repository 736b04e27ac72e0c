"""``fusekit platforms``: one line per rule set, and ``NAME --diff OTHER``."""

from __future__ import annotations

import json

import pytest

import fusekit
from fusekit._platform_info import family, platform_diff, platform_summary, rule_text
from fusekit.platforms import get_platform

from .test_cli import run


def test_every_rule_set_is_listed_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["platforms"], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(fusekit.platforms())
    by_name = {ln.split()[0]: ln for ln in lines}
    assert set(by_name) == set(fusekit.platforms())
    assert "RKNN (Rockchip), PPQ 0.6.6 | act uint8 asym PT" in by_name["ppq066_rknn_int8"]
    assert "fp8 E4M3 PT p2" in by_name["ppq066_trt_fp8"]
    assert "fuses nothing" in by_name["ppq066_ncnn_int8"]
    assert "TensorRT, corrected" in by_name["trt_int8"] and "[swish]" in by_name["trt_int8"]
    doc = json.loads(run(["platforms", "--json"], capsys)[1])
    assert all(d["family"] and d["summary"] for d in doc)


def test_rule_text() -> None:
    p = get_platform("ppq066_nxp_int8")
    assert rule_text(p.activation) == "int8 sym PT p2"
    assert rule_text(p.weights["Conv"]) == "int8 sym PC p2"
    assert rule_text(get_platform("ppq066_ncnn_int8").conditional_weights["Conv"]) == (
        "int6 sym PC"
    )
    assert family(p.evolve(name="mine", ppq_target="")) == "custom, corrected"


def test_diff_names_what_changes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["platforms", "ppq066_trt_int8", "--diff", "trt_int8"], capsys)
    assert code == 0
    assert "activation_types: only first: SoftPlus; only second:" in out
    assert "quirks: only first:" in out and "graph_output_fusion" in out
    assert "weights[MatMul][channel_axis]: 0 -> -1" in out
    # the DSP family shares one quantizer: SNPE and QNN differ only by PPQ's target name
    assert platform_diff(get_platform("ppq066_snpe_int8"), get_platform("ppq066_qnn_dsp_int8")) == [
        "ppq_target: SNPE_INT8 -> QNN_DSP_INT8"
    ]
    same = run(["platforms", "trt_int8", "--diff", "trt_int8", "--json"], capsys)[1]
    assert json.loads(same)["differences"] == []
    assert run(["platforms", "trt_int8", "--diff", "nope"], capsys)[0] == 2
    assert run(["platforms", "--diff", "trt_int8"], capsys)[0] == 2


def test_summary_mentions_every_policy_kind() -> None:
    s = platform_summary(get_platform("ppq066_metax_int8_c"))
    assert "w Conv/MatMul int8 sym PC; Gemm int8 sym PT" in s and "bias 30-bit" in s
