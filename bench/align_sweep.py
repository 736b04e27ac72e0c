"""Sweep alignment's split factor (``Alignment(max_spread=...)``) on the shared accuracy data.

Issue 15 item 3: align an op's inputs to one scale when their calibrated ranges are within a
factor measured to be harmless, requantize otherwise. For each model/data pair, each platform
and each factor, the default pipeline runs up to calibration once; then alignment with that
factor and the passive parameters, QDQ export, and the SQNR of every output against the float
model on the evaluation samples (reference kernels). Variants: ``none`` (no alignment pass at
all), ``always`` (``max_spread=0``: never split), a number (every family split at that ratio
or more), ``family=X/family=Y`` (per family, the others at ``max_spread``), and ``unfused``
(calibration and passive parameters only, as ``fusekit compare``).

    python bench/align_sweep.py /work/acc --platforms trt_int8 --factors always,64,16,8,4,2,none

One JSON line per (data, platform, variant) with the SQNR per output, the aligned ops and the
split ones (with their ratios). ``--bert`` adds the corpus's synthetic-weight
bert24_encoder_op13 (a transformer) on random token ids (32 calibration, 16 evaluation).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.passes import Alignment, PassiveParameters, Pipeline, default_pipeline

ROOT = Path(__file__).resolve().parents[1]
_RATIO = re.compile(r"differ by ([0-9.]+|inf)x")


def bert_data(g: fusekit.Graph, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Random token ids below the embedding table's row count; full attention masks."""
    rows = min(
        g.initializers[op.inputs[0]].dims[0]
        for op in g
        if op.op_type == "Gather" and op.inputs[0] in g.initializers
    )
    rng = np.random.default_rng(seed)

    def feeds(n: int) -> list[dict[str, Any]]:
        return [
            {
                "input_ids": rng.integers(0, rows, (1, 64)).astype(np.int64),
                "attention_mask": np.ones((1, 64), np.int64),
            }
            for _ in range(n)
        ]

    return feeds(32), feeds(16)


def sweep(
    name: str, g: fusekit.Graph, calib: Any, ev: Any, platform: str, factors: list[str]
) -> None:
    plan0 = fusekit.init_plan(g, platform)
    cal = Calibration(calib)
    full = default_pipeline(platform, calibration=cal)
    pre = Pipeline(full.passes[:-2]).run(g, plan0)  # up to and with calibration
    for variant in factors:
        t = time.process_time()
        aligned: list[str] = []
        split: list[tuple[str, float]] = []
        if variant == "unfused":
            plan = Pipeline((cal, PassiveParameters(platform))).run(g, plan0).plan
        elif variant == "none":
            plan = PassiveParameters(platform).run(g, pre.plan).plan
        else:
            if "=" in variant:  # per family, e.g. elementwise=0/concat=16 (others: 16)
                fam = {k: float(v) for k, v in (x.split("=") for x in variant.split("/"))}
                align = Alignment(platform, spread_by_family=fam)
            else:
                spread = 0.0 if variant == "always" else float(variant)
                align = Alignment(platform, max_spread=spread, spread_by_family={})
            r = align.run(g, pre.plan)
            for d in r.refusals:
                m = _RATIO.search(d.reason)
                if m:
                    split.append((d.ops[0], float(m.group(1))))
            aligned = sorted({d.ops[0] for d in r.decisions if d.action == "follow"})
            plan = PassiveParameters(platform).run(g, r.plan).plan
        e = evaluate(g, build_qdq(g, plan).model, ev)
        row = {
            "data": name,
            "platform": platform,
            "variant": variant,
            "sqnr": {o.name: round(o.sqnr_db, 3) for o in e.outputs},
            "min_sqnr": round(e.min_sqnr, 3),
            "aligned_ops": len(aligned),
            "split": sorted(split, key=lambda x: -x[1]),
            "cpu_s": round(time.process_time() - t, 1),
        }
        print(json.dumps(row), flush=True)
        print(f"{name} {platform} {variant}: {row['min_sqnr']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acc_dir")
    ap.add_argument("--platforms", default="trt_int8")
    ap.add_argument("--factors", default="always,64,32,16,8,4,2,none,unfused")
    ap.add_argument("--models", default=None, help="comma-separated data names (default all)")
    ap.add_argument("--bert", action="store_true")
    args = ap.parse_args(argv)
    factors = args.factors.split(",")
    base = Path(args.acc_dir)
    manifest = json.loads((base / "data" / "manifest.json").read_text())["models"]
    names = args.models.split(",") if args.models else list(manifest)
    for platform in args.platforms.split(","):
        if args.bert:
            path = ROOT.parent / "shared" / "corpus" / "models" / "bert24_encoder_op13.onnx.gz"
            g = fusekit.load(gzip.decompress(path.read_bytes()))
            calib, ev = bert_data(g, 0)
            sweep("bert24_encoder_op13 (random ids)", g, calib, ev, platform, factors)
        for name in names:
            g = fusekit.load(base / manifest[name]["model"])
            data = base / "data" / f"{name}.npz"
            calib = load_data(data, g, split="calib")
            ev = load_data(data, g, split="eval")
            sweep(name, g, calib, ev, platform, factors)


if __name__ == "__main__":
    main()
