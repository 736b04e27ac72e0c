"""Matrix-vector layers in float or int8 (issue 15 item 5): SQNR and latency, per model.

For each model/data pair of the shared accuracy data whose graph has
:func:`fusekit.dispatch.matvec_ops` (a classifier Gemm/MatMul after global pooling), quantize
with the rule set as shipped and with ``float_matvec=True``, export QDQ, and measure the SQNR
of every output against the float model (reference and int8 kernels) and the onnxruntime CPU
latency of each export next to the float model (:func:`fusekit.evaluate.measure_latency`,
what ``fusekit evaluate --latency`` runs: one thread, medians, alternating runs), then the
two exports against each other the same way (``--ab-runs``), which a busy machine disturbs
less than two separate float-vs-QDQ measurements.

    python bench/matvec.py /work/acc --platforms ort_int8,trt_int8 --runs 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.dispatch import matvec_ops
from fusekit.evaluate import cpu_name, evaluate, measure_latency
from fusekit.export import build_qdq
from fusekit.kernels import kernel_report
from fusekit.runtime import session


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acc_dir")
    ap.add_argument("--platforms", default="ort_int8,trt_int8")
    ap.add_argument("--models", default=None)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--ab-runs", type=int, default=300, help="runs of the A/B latency")
    args = ap.parse_args(argv)
    base = Path(args.acc_dir)
    manifest = json.loads((base / "data" / "manifest.json").read_text())["models"]
    names = args.models.split(",") if args.models else list(manifest)
    print(json.dumps({"cpu": cpu_name()}), flush=True)
    for name in names:
        g = fusekit.load(base / manifest[name]["model"])
        mv = matvec_ops(g)
        if not mv:
            continue
        data = base / "data" / f"{name}.npz"
        calib = load_data(data, g, split="calib")
        ev = load_data(data, g, split="eval")
        for pname in args.platforms.split(","):
            shipped = fusekit.get_platform(pname)
            exports = []
            for p in (shipped.evolve(float_matvec=False), shipped.evolve(float_matvec=True)):
                plan0 = fusekit.init_plan(g, p)
                res = fusekit.default_pipeline(p, calibration=Calibration(calib)).run(g, plan0)
                qdq = build_qdq(g, res.plan)
                ref = evaluate(g, qdq.model, ev)
                int8 = evaluate(g, qdq.model, ev, kernels="int8")
                lat = measure_latency(g, qdq.model, ev, runs=args.runs)
                kr = kernel_report(qdq.model)
                exports.append(qdq.model)
                row = {
                    "data": name,
                    "platform": pname,
                    "float_matvec": p.float_matvec,
                    "matvec_ops": sorted(mv),
                    "sqnr_reference": round(ref.min_sqnr, 2),
                    "sqnr_int8": round(int8.min_sqnr, 2),
                    "float_ms": round(lat.float_ms, 3),
                    "qdq_ms": round(lat.qdq_ms, 3),
                    "int8_ops": f"{len(kr.int8_ops)} of {len(kr.ops)}",
                    "q_nodes": qdq.q_nodes,
                }
                print(json.dumps(row), flush=True)
            # the two exports against each other, alternating in one process (one thread,
            # ORT's full optimization as a deployment runs it, medians after 5 warm-ups)
            a_ms, b_ms = ab_latency(exports, ev, args.ab_runs)
            print(
                json.dumps(
                    {
                        "data": name,
                        "platform": pname,
                        "ab_int8_matvec_ms": round(a_ms, 4),
                        "ab_float_matvec_ms": round(b_ms, 4),
                        "runs": args.ab_runs,
                    }
                ),
                flush=True,
            )


def ab_latency(models: list[Any], ev: Any, runs: int) -> tuple[float, float]:
    """Median ms of each of two models on the first evaluation sample, run alternately."""
    sessions = [session(m.SerializeToString(), "export", optimize="all", threads=1) for m in models]
    feed = next(iter(ev))
    times: list[list[float]] = [[], []]
    for k in range(runs + 5):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, feed)
            if k >= 5:
                times[i].append((time.perf_counter() - t) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


if __name__ == "__main__":
    main()
