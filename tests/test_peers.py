"""A second quantizer's models in: NNCF (optional, ``pip install -e '.[peers]'``).

NNCF's ONNX backend (``nncf.quantize`` on an ``onnx.ModelProto``, CPU) quantizes corpus
models in the test; fusekit imports them, audits them against trt_int8 and ort_int8, and
exports the unchanged import to a model with the same outputs bit for bit. Skipped when
NNCF is not installed (it is not in the ``test`` extra: its install pulls scipy,
scikit-learn and networkx, about a minute).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import onnx
import pytest

import fusekit
from fusekit.audit import audit
from fusekit.calibrate import random_data
from fusekit.export import export_qdq
from fusekit.qimport import import_quantized

from .conftest import corpus_bytes
from .test_qimport import _session

nncf = pytest.importorskip("nncf")


def _nncf_quantize(name: str) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    m = onnx.load_from_string(corpus_bytes(name))
    feeds = list(random_data(fusekit.load(corpus_bytes(name)), 4, seed=0))
    with contextlib.redirect_stdout(io.StringIO()):
        q = nncf.quantize(m, nncf.Dataset(feeds), subset_size=len(feeds))
    return q, feeds


@pytest.mark.parametrize("model", ["resnet18", "yolov5s_silu"])
def test_nncf_export_imports_audits_and_round_trips(model: str) -> None:
    q, feeds = _nncf_quantize(model)
    got = import_quantized(q)
    assert got.dangling == ()
    assert not fusekit.quantization_ops(got.graph)
    out = export_qdq(got.graph, got.plan)
    ref, again = _session(q).run(None, feeds[0]), _session(out).run(None, feeds[0])
    for a, b in zip(ref, again, strict=True):
        assert np.array_equal(a, b)
    clamped = import_quantized(q, restore_clamps=True)
    kinds = {
        p: audit(clamped.graph, clamped.plan, p, dangling=clamped.dangling).by_kind()
        for p in ("trt_int8", "ort_int8")
    }
    # NNCF keeps biases float: ort_int8's integer kernels want them int32 (TensorRT does not)
    assert kinds["ort_int8"].get("bias_not_int32", 0) > 0, kinds
    assert "bias_not_int32" not in kinds["trt_int8"], kinds
