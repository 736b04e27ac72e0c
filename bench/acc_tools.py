"""Measure issue 15's accuracy tools on the shared accuracy data (the figures of docs/accuracy.md).

For each model of the data folder (``FUSEKIT_ACCURACY_DIR`` layout: ``models/*.onnx``,
``data/*.npz`` with ``calib__``/``eval__`` splits, ``data/manifest.json``), each platform and
each variant, quantize with the default (fused) pipeline, export QDQ and evaluate the SQNR of
every output against the float model (reference kernels). A variant is an observer name
(``minmax``, ``percentile``, ``entropy``, ``mse``) optionally followed by ``+cle`` (cross-layer
equalization before quantizing) and/or ``+bc`` (bias correction after calibration).

    python bench/acc_tools.py /work/acc --platforms ort_int8,trt_int8 \\
        --variants minmax,entropy,mse,minmax+cle,minmax+bc > rows.jsonl

One JSON line per (model, platform, variant), written as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq


def run_variant(model: Path, data: Path, platform: str, variant: str) -> dict[str, Any]:
    """Quantize ``model`` one way and return the SQNR of each output (dB)."""
    observer, *tools = variant.split("+")
    g = fusekit.load(model)
    calib = load_data(data, g, split="calib")
    ev = load_data(data, g, split="eval")
    qgraph = g
    extra: dict[str, Any] = {}
    if "cle" in tools:
        from fusekit.equalize import equalize

        eq = equalize(g)
        qgraph = eq.graph
        extra["cle_pairs"] = len(eq.pairs)
    plan = fusekit.init_plan(qgraph, platform)
    cal = Calibration(calib, observer=observer)
    res = fusekit.default_pipeline(platform, calibration=cal).run(qgraph, plan)
    qplan = res.plan
    if "bc" in tools:
        from fusekit.equalize import bias_correction

        bc = bias_correction(qgraph, qplan, calib)
        qgraph, qplan = bc.graph, bc.plan
        extra["bc_ops"] = len(bc.corrected)
    qdq = build_qdq(qgraph, qplan)
    e = evaluate(g, qdq.model, ev)
    return {o.name: o.sqnr_db for o in e.outputs} | {"_extra": extra}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acc_dir")
    ap.add_argument("--platforms", default="ort_int8,trt_int8", help="names or rule files")
    ap.add_argument("--variants", default="minmax,percentile,entropy,mse")
    ap.add_argument("--models", default=None, help="comma-separated data names (default all)")
    args = ap.parse_args(argv)
    platforms = []
    for name in args.platforms.split(","):
        if name.endswith((".json", ".toml")):  # a rule file: registered under its own name
            name = fusekit.load_platform(name, register=True).name
        platforms.append(name)
    base = Path(args.acc_dir)
    manifest = json.loads((base / "data" / "manifest.json").read_text())["models"]
    names = args.models.split(",") if args.models else list(manifest)
    for name in names:
        model = base / manifest[name]["model"]
        data = base / "data" / f"{name}.npz"
        for platform in platforms:
            for variant in args.variants.split(","):
                t = time.process_time()
                try:
                    sqnr = run_variant(model, data, platform, variant)
                    err = None
                except Exception as e:  # a row that fails is reported, not fatal
                    sqnr, err = {}, f"{type(e).__name__}: {e}"
                row = {
                    "model": name,
                    "platform": platform,
                    "variant": variant,
                    "sqnr": {k: v for k, v in sqnr.items() if k != "_extra"},
                    "extra": sqnr.get("_extra", {}),
                    "error": err,
                    "cpu_s": round(time.process_time() - t, 1),
                }
                print(json.dumps(row), flush=True)
                print(f"{name} {platform} {variant}: {row['cpu_s']}s", file=sys.stderr)


if __name__ == "__main__":
    main()
