"""Backend check: what ``ort_int8`` quantizes, onnxruntime runs as int8 kernels.

For corpus models: plan with ``ort_int8``, calibrate on a few random samples, export QDQ, let
onnxruntime's CPU provider optimize the graph (``ORT_ENABLE_EXTENDED``) and read the result:

* every Conv/ConvTranspose/MatMul/Gemm the plan quantizes is an int8 kernel (QLinearConv,
  QLinearMatMul, MatMulIntegerToFloat, QGemm): their count is the number of computing ops
  the plan quantizes;
* every QuantizeLinear the export wrote is consumed by an integer op: none survives whose only
  readers are DequantizeLinear nodes (a quantization point the backend executes in float);
* op by op, :func:`fusekit.kernels.kernel_report` (the analyzer behind ``fusekit evaluate
  --kernels``) finds each quantized computing op running as an int8 kernel, and no stray Q/DQ.

A few small models run in every ``make test``; all of them under ``-m slow``.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter

import onnx
import onnxruntime as ort
import pytest

import fusekit
from fusekit.calibrate import Calibration, random_data
from fusekit.export import export_qdq
from fusekit.kernels import kernel_report

from .conftest import corpus_bytes, corpus_models

COMPUTING = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
FLOAT_COMPUTING = COMPUTING | {"FusedConv", "FusedGemm", "FusedMatMul"}
INT8_KERNELS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "MatMulIntegerToFloat",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConvTranspose",
    }
)
SHAPES = {"silero_vad_16k_op15": {"input": [1, 512], "state": [2, 1, 128]}}
FAST = ("onnx_light_shufflenet", "mobilenet_v3_small", "silero_vad_16k_sequence")


def optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "optimized.onnx")
        so.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(path)


def check(name: str) -> None:
    g = fusekit.load(corpus_bytes(name))
    plan0 = fusekit.init_plan(g, "ort_int8")
    # silero's STFT reflect-pads by 64: its audio input needs more than 64 samples
    cal = Calibration(random_data(g, n=2, seed=0, shapes=SHAPES.get(name)))
    plan = fusekit.default_pipeline("ort_int8", calibration=cal).run(g, plan0).plan
    idx = g.index
    quantized = [
        op.name
        for op in g.ops.values()
        if op.op_type in COMPUTING
        and plan.dispatch[idx.op_id[op.name]] is not None
        and plan[fusekit.Slot(op.name, "in", 0)].state is not fusekit.QuantState.FP32
    ]
    model = export_qdq(g, plan)
    report = kernel_report(model)
    not_int8 = {op: report[op].reason for op in quantized if not report[op].int8}
    assert not_int8 == {}, f"{name}: quantized but run in float by onnxruntime: {not_int8}"
    assert report.stray_qdq == (), f"{name}: stray Q/DQ: {report.stray_qdq[:5]}"
    opt = optimized(model).graph
    types = Counter(n.op_type for n in opt.node)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in opt.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    # (a float op reading a dequantized weight is no proof of a bug: onnxruntime quantizes
    # the float weights of a ConvTranspose that reads a DequantizeLinear itself, then runs it
    # in float for want of a kernel; the count below is the check)
    int8 = sum(types[t] for t in INT8_KERNELS)
    assert int8 == len(quantized), (
        f"{name}: the plan quantizes {len(quantized)} computing ops, onnxruntime runs {int8} "
        f"int8 kernels ({dict(types)})"
    )
    graph_outputs = {o.name for o in opt.output}
    dead = [
        n.name
        for n in opt.node
        if n.op_type == "QuantizeLinear"
        and n.output[0] not in graph_outputs
        and all(r.op_type == "DequantizeLinear" for r in readers.get(n.output[0], []))
    ]
    assert dead == [], f"{name}: Q/DQ pairs onnxruntime runs in float: {dead[:5]} ({len(dead)})"


@pytest.mark.parametrize("name", [m for m in FAST if m in corpus_models()])
def test_ort_int8_runs_int8(name: str) -> None:
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in corpus_models() if m not in FAST])
def test_ort_int8_runs_int8_whole_corpus(name: str) -> None:
    check(name)
