"""Time ``fusekit.sensitivity`` on one model of the shared accuracy data (issue 15's target).

The target: the sensitivity ranking of the largest corpus model (ddddocr_det) in under two
minutes on this machine. Measures CPU (``time.process_time``: every thread of this process)
and wall time of the scan alone (not the calibration before it), with the sessions and runs it
made, for the settings given, and compares each ranking's top groups with the first setting's.

    python bench/sensitivity_time.py /work/acc --model ddddocr_det \\
        --settings full-default-threads,full,screen4

A setting is ``full`` (every group on every sample) or ``screenN`` (N samples first, the top
``--refine`` groups on all), with ``-default-threads`` for onnxruntime's own thread count
(0.1's behaviour) instead of one intra-op thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.sensitivity import sensitivity


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acc_dir")
    ap.add_argument("--model", default="ddddocr_det")
    ap.add_argument("--platform", default="ort_int8")
    ap.add_argument("--settings", default="full-default-threads,screen4")
    ap.add_argument("--refine", type=int, default=8)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--max-groups", type=int, default=None, help="scan only this many groups")
    args = ap.parse_args(argv)
    base = Path(args.acc_dir)
    manifest = json.loads((base / "data" / "manifest.json").read_text())["models"]
    model = base / manifest[args.model]["model"]
    data = base / "data" / f"{args.model}.npz"
    g = fusekit.load(model)
    calib = load_data(data, g, split="calib")
    ev = load_data(data, g, split="eval")
    plan0 = fusekit.init_plan(g, args.platform)
    res = fusekit.default_pipeline(args.platform, calibration=Calibration(calib)).run(g, plan0)
    first: list[str] | None = None
    for setting in args.settings.split(","):
        threads = 0 if setting.endswith("-default-threads") else 1
        kind = setting.removesuffix("-default-threads")
        screen = None if kind == "full" else int(kind.removeprefix("screen"))
        t, w = time.process_time(), time.perf_counter()
        s = sensitivity(
            g,
            res.plan,
            ev,
            decisions=res.decisions,
            screen_samples=screen,
            refine=args.refine,
            threads=threads,
            progress=False,
            max_groups=args.max_groups,
        )
        cpu, wall = time.process_time() - t, time.perf_counter() - w
        top = [str(x.root) for x in s.groups[: args.top]]
        first = first or top
        row = {
            "model": args.model,
            "setting": setting,
            "cpu_s": round(cpu, 1),
            "wall_s": round(wall, 1),
            "groups": len(s.groups),
            "sessions": s.sessions,
            "runs": s.runs,
            "skipped": s.skipped,
            "base_sqnr_db": round(s.base_sqnr_db, 2),
            "top": [(str(x.root), round(x.gain_db, 2), x.pairs) for x in s.groups[: args.top]],
            "top_shared_with_first": len(set(top) & set(first)),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
