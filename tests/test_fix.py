"""fusekit fix is idempotent: fixing a fixed model changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fusekit.calibrate import random_data
from fusekit.export import build_qdq, count_qdq
from fusekit.fix import fix_plan
from fusekit.qimport import import_quantized, placement

from .test_qimport import _feeds, _qs_kwargs, _quantize_static

quantization = pytest.importorskip("onnxruntime.quantization")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _fixed(model: onnx.ModelProto, platform: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``fusekit fix`` as the CLI runs it (clamps restored, missing points calibrated)."""
    got = import_quantized(model, restore_clamps=True)
    result = fix_plan(got.graph, got.plan, platform, data=random_data(got.graph, 2))
    return build_qdq(got.graph, result.plan).model, result.counts()


def _assert_fix_is_idempotent(q: onnx.ModelProto, platform: str) -> None:
    once, _ = _fixed(q, platform)
    twice, counts = _fixed(once, platform)
    assert set(counts) == {"kept"}, counts  # nothing calibrated, converted, merged or removed
    assert count_qdq(twice) == count_qdq(once)
    assert placement(import_quantized(twice).plan) == placement(import_quantized(once).plan)
    feeds: dict[str, Any] = _feeds(q, 1)
    for a, b in zip(_session(once).run(None, feeds), _session(twice).run(None, feeds), strict=True):
        assert np.array_equal(a, b)


#: The sample in make test (the clamps restored after a Reshape of a Relu'd average: the case
#: that made a second fix add a Clip at r172; a Swish/HardSwish model; a plain ResNet)
SAMPLE = ["onnx_light_resnet50", "mobilenet_v3_small", "resnet18"]


@pytest.mark.parametrize("platform", ["trt_int8", "ort_int8"])
@pytest.mark.parametrize("model", SAMPLE)
def test_fix_of_a_fixed_model_changes_nothing(tmp_path: Path, model: str, platform: str) -> None:
    """quantize_static's QDQ model fixed once, then fixed again: every point is kept, the same
    Q/DQ in the same places, the same outputs bit for bit."""
    spec = {"quant_format": "QDQ", "per_channel": False, "activation_type": "QUInt8"}
    _assert_fix_is_idempotent(_quantize_static(tmp_path, model, **_qs_kwargs(spec)), platform)
