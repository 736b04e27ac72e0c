"""Issue 15: min-max vs mean_minmax (NNCF's default) and ``--observer auto`` on the shared data.

For every shared-data model (``FUSEKIT_ACCURACY_DIR``, default ``/tmp/acc``; ppocrv4_det on
noise inputs is left out: no quantizer has signal there) and for ``ort_int8`` and ``trt_int8``:
the default pipeline calibrated on the calib split with each candidate observer, exported,
and scored against the float model (reference kernels, lowest output SQNR) on the calib split
(what ``fusekit.sensitivity.choose_observer`` ranks by) and per output on the eval split (what
the tables report). ``auto`` is the candidate with the better calib-split score.

Usage: ``python bench/observer_auto.py [--acc DIR] [--models a,b]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.sensitivity import AUTO_OBSERVERS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--acc", default=os.environ.get("FUSEKIT_ACCURACY_DIR", "/tmp/acc"))
    ap.add_argument("--models", default="")
    ap.add_argument("--platforms", default="ort_int8,trt_int8")
    args = ap.parse_args(argv)
    acc = Path(args.acc)
    manifest = json.loads((acc / "data" / "manifest.json").read_text())["models"]
    only = {m for m in args.models.split(",") if m}
    platforms = [p for p in args.platforms.split(",") if p]
    head = ["model / output"]
    for p in platforms:
        head += [f"{p} {o}" for o in AUTO_OBSERVERS] + [f"{p} calib-split score", f"{p} auto"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for name, m in manifest.items():
        if name == "ppocrv4_det" or (only and name not in only):
            continue
        g = fusekit.load(acc / m["model"])
        data = acc / "data" / f"{name}.npz"
        calib, ev = load_data(data, g, split="calib"), load_data(data, g, split="eval")
        cells: dict[str, list[str]] = {o: [] for o in g.outputs}
        for p in platforms:
            got: dict[str, tuple[float, dict[str, float]]] = {}
            for obs in AUTO_OBSERVERS:
                cal = Calibration(calib, observer=obs)
                res = fusekit.default_pipeline(p, calibration=cal).run(g, fusekit.init_plan(g, p))
                model = build_qdq(g, res.plan).model.SerializeToString()
                on_calib = evaluate(g, model, calib, kernels="reference").min_sqnr
                on_eval = {o.name: o.sqnr_db for o in evaluate(g, model, ev).outputs}
                got[obs] = (on_calib, on_eval)
                print(f"# {name} {p} {obs}: calib {on_calib:.2f}", file=sys.stderr, flush=True)
            kept = max(AUTO_OBSERVERS, key=lambda o: (got[o][0], -AUTO_OBSERVERS.index(o)))
            score = " / ".join(f"{got[o][0]:.2f}" for o in AUTO_OBSERVERS)
            for out in cells:
                cells[out] += [f"{got[o][1][out]:.2f}" for o in AUTO_OBSERVERS]
                cells[out] += [score, f"{got[kept][1][out]:.2f} ({kept})"]
        for out, row in cells.items():
            print(f"| {name} / {out} | " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
