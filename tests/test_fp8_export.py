"""FP8 (E4M3) QDQ export: plans with floating policies export as QuantizeLinear/DequantizeLinear
with a ``FLOAT8E4M3FN`` zero point at opset 19, and onnxruntime runs them.

Also the law of power-of-two platforms: every scale a power-of-two policy is calibrated to is an
exact power of two (FP8 sets, NXP, FPGA).
"""

from __future__ import annotations

import gzip
import math

import numpy as np
import onnx
import pytest

import fusekit
from fusekit.calibrate import Calibration, random_data
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.quant import QuantProperty

from .conftest import CORPUS
from .graphs import G


def _calibrated(graph: fusekit.Graph, platform: str, dispatch: str = "all") -> fusekit.QuantPlan:
    data = random_data(graph, 4, seed=0)  # evaluated on the same samples: a smoke check
    pipe = fusekit.default_pipeline(platform, calibration=Calibration(data, observer="minmax"))
    return pipe.run(graph, fusekit.init_plan(graph, platform, dispatch=dispatch)).plan


def _small() -> fusekit.Graph:
    g = G().conv("c0", "x").relu("r", "c0").conv("c1", "r")
    return g.op("MaxPool", "mp", ["c1"], kernel_shape=[1, 1]).conv("c2", "mp").build(["c2"])


def _corpus(name: str) -> fusekit.Graph:
    with gzip.open(CORPUS / "models" / f"{name}.onnx.gz") as f:
        return fusekit.load(f.read())


@pytest.mark.parametrize("platform", ["ppq066_graphcore_fp8", "ppq066_trt_fp8"])
def test_fp8_plan_exports_float8_qdq_that_onnxruntime_runs(platform: str) -> None:
    g = _corpus("silero_vad_16k_sequence")
    plan = _calibrated(g, platform)
    q = build_qdq(g, plan)
    onnx.checker.check_model(q.model, full_check=True)
    assert q.opset == 19 and not q.skipped
    zps = [i for i in q.model.graph.initializer if i.name.endswith("zero_point")]
    assert zps and all(i.data_type == onnx.TensorProto.FLOAT8E4M3FN for i in zps)
    assert q.q_nodes > 0
    ev = evaluate(g, q.model, random_data(g, 4, seed=0))
    assert all(o.sqnr_db > 10 for o in ev.outputs), ev.outputs  # E4M3: 3 mantissa bits


def test_int8_export_keeps_its_opset() -> None:
    g = _corpus("silero_vad_16k_sequence")
    q = build_qdq(g, _calibrated(g, "trt_int8"))
    assert q.opset == 16  # the model's own
    assert not any(i.data_type == onnx.TensorProto.FLOAT8E4M3FN for i in q.model.graph.initializer)


def test_fp8_export_raises_old_models_to_opset_19() -> None:
    """onnx_light_resnet50 is opset 9: raised to 13 node by node, then to 19 (the Reduce ops'
    axes become inputs at 18; nothing else in 13..19 changes a node's meaning)."""
    g = _corpus("onnx_light_resnet50")
    q = build_qdq(g, _calibrated(g, "ppq066_trt_fp8"))
    onnx.checker.check_model(q.model)
    assert q.opset == 19
    ev = evaluate(g, q.model, random_data(g, 1, seed=1))
    assert all(math.isfinite(o.sqnr_db) or o.sqnr_db > 0 for o in ev.outputs)


@pytest.mark.parametrize(
    "platform", ["ppq066_graphcore_fp8", "ppq066_nxp_int8", "ppq066_fpga_int8"]
)
def test_every_power_of_two_scale_is_a_power_of_two(platform: str) -> None:
    g = _small()
    plan = _calibrated(g, platform, dispatch="ppq-conservative")
    n = 0
    for s in plan.slots():
        c = plan[s]
        if c.scale is None or not c.policy.has(QuantProperty.POWER_OF_2):
            continue
        for v in np.asarray(c.scale, dtype=np.float64).ravel():
            m, _ = math.frexp(float(v))
            assert m == 0.5, (s, v)  # exactly 2**k
            n += 1
    assert n > 0
