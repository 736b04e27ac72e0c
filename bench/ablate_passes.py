"""Drop one pass at a time from the default pipeline and measure the SQNR (shared accuracy data).

Which fusion costs a model its dB: for one model/data pair and one rule set, the default
pipeline (min-max calibration) is run whole and then without each of its fusion passes, and
every variant's QDQ export is evaluated against the float model (lowest output SQNR,
reference kernels, evaluation samples). A variant whose export fails says so.

    python bench/ablate_passes.py /work/acc --data ppocrv4_rec --platform trt_int8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq

#: what is never dropped: calibration measures, passive parameters derive biases and bounds
_KEEP = ("calibration", "passive_parameters")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acc_dir")
    ap.add_argument("--data", default="ppocrv4_rec")
    ap.add_argument("--platform", default="trt_int8")
    args = ap.parse_args(argv)
    base = Path(args.acc_dir)
    manifest = json.loads((base / "data" / "manifest.json").read_text())["models"]
    g = fusekit.load(base / manifest[args.data]["model"])
    data = base / "data" / f"{args.data}.npz"
    calib = load_data(data, g, split="calib")
    ev = load_data(data, g, split="eval")
    full = fusekit.default_pipeline(args.platform, calibration=Calibration(calib))
    passes = [p.name for p in full.passes if p.name not in _KEEP]  # the platform's own list
    for drop in (None, *passes):
        pipe = full if drop is None else full.without(drop)
        res = pipe.run(g, fusekit.init_plan(g, args.platform))
        row: dict[str, object] = {"data": args.data, "platform": args.platform, "without": drop}
        try:
            row["sqnr"] = round(evaluate(g, build_qdq(g, res.plan).model, ev).min_sqnr, 2)
        except fusekit.FusekitError as e:
            row["error"] = str(e)[:200]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
