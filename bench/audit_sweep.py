"""Issue 11's numbers: quantized models in, per tool and corpus model; fix on accuracy data.

Part 1 (``--part import``): every corpus model quantized by each tool, in this process:
onnxruntime's ``quantize_static`` (QDQ per-tensor QUInt8 activations, QDQ per-channel QInt8,
QOperator per-tensor QUInt8; two random calibration samples), fusekit's own export for
``trt_int8`` and ``ort_int8`` (calibrated on two random samples), and NNCF's ONNX backend when
installed (four random samples). Each model is imported (``restore_clamps=True``, as ``audit``
does) and audited against ``trt_int8`` and ``ort_int8``; the table gives, per tool and model,
whether it imported (or the refusal) and the findings by kind.

Part 2 (``--part fix``): on the shared accuracy data (``FUSEKIT_ACCURACY_DIR``, default
``/tmp/acc``, made by ``../shared/accuracy/make_data.py``), ``quantize_static`` QDQ
(per-tensor QUInt8, calibrated on the data's calib split) is fixed for ``trt_int8`` and
``ort_int8`` (missing points calibrated on the calib split) and both models are evaluated
against the float model on the eval split (reference kernels): Q/DQ counts and min SQNR.

Usage: ``python bench/audit_sweep.py [--part import|fix|all] [--models a,b] [--out F.json]``;
prints markdown tables (the ones in ``docs/audit.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

import fusekit
from fusekit.audit import audit
from fusekit.calibrate import calibrate, load_data, random_data
from fusekit.export import build_qdq, count_qdq, export_qdq
from fusekit.fix import fix_plan
from fusekit.qimport import import_quantized

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent.parent / "shared" / "corpus" / "models"
ABBREV = {
    "fused_activation_qdq": "fact",
    "passive_scale_change": "psc",
    "passive_requantize": "preq",
    "unaligned_inputs": "unal",
    "float_input": "fin",
    "bias_not_int32": "b32",
    "bias_scale": "bsc",
    "weight_per_tensor": "wpt",
    "weight_axis": "wax",
    "unsupported_scheme": "sch",
    "qdq_on_shape": "shp",
    "extra_qdq": "xtra",
    "dangling_qdq": "dang",
}


def _corpus(name: str) -> bytes:
    import gzip

    return gzip.open(CORPUS / f"{name}.onnx.gz").read()


def _qs(fmt: str, per_channel: bool, act: str) -> Callable[[str, Path], onnx.ModelProto]:
    def run(name: str, work: Path) -> onnx.ModelProto:
        from onnxruntime import quantization as q

        src, dst = work / f"{name}.onnx", work / f"{name}.{fmt}.onnx"
        src.write_bytes(_corpus(name))
        g = fusekit.load(str(src))
        feeds = iter(list(random_data(g, 2, seed=0)))

        class Reader(q.CalibrationDataReader):  # type: ignore[misc]
            def get_next(self) -> dict[str, Any] | None:
                return next(feeds, None)

        q.quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=getattr(q.QuantFormat, fmt),
            per_channel=per_channel,
            activation_type=getattr(q.QuantType, act),
            weight_type=q.QuantType.QInt8,
        )
        return onnx.load(str(dst))

    return run


def _fusekit(platform: str) -> Callable[[str, Path], onnx.ModelProto]:
    def run(name: str, work: Path) -> onnx.ModelProto:
        g = fusekit.load(_corpus(name))
        plan = fusekit.default_pipeline(platform).run(g, fusekit.init_plan(g, platform)).plan
        return export_qdq(g, calibrate(g, plan, random_data(g, 2)))

    return run


def _nncf(name: str, work: Path) -> onnx.ModelProto:
    import nncf

    m = onnx.load_from_string(_corpus(name))
    feeds = list(random_data(fusekit.load(_corpus(name)), 4, seed=0))
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(m, nncf.Dataset(feeds), subset_size=len(feeds))


TOOLS: dict[str, Callable[[str, Path], onnx.ModelProto]] = {
    "qs QDQ pt QUInt8": _qs("QDQ", False, "QUInt8"),
    "qs QDQ pc QInt8": _qs("QDQ", True, "QInt8"),
    "qs QOperator pt QUInt8": _qs("QOperator", False, "QUInt8"),
    "fusekit trt_int8": _fusekit("trt_int8"),
    "fusekit ort_int8": _fusekit("ort_int8"),
    "nncf": _nncf,
}


def _kinds(d: dict[str, int]) -> str:
    return " ".join(f"{ABBREV.get(k, k)}:{v}" for k, v in d.items()) or "-"


def part_import(models: list[str]) -> list[dict[str, Any]]:
    rows = []
    for tool, make in TOOLS.items():
        for name in models:
            row: dict[str, Any] = {"tool": tool, "model": name}
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    q = make(name, Path(tmp))
                except Exception as e:  # a quantizer failing is a result, not a crash
                    row["quantize_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    continue
            t = time.process_time()
            try:
                got = import_quantized(q, restore_clamps=True)
            except Exception as e:
                row["import_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                continue
            row["import_s"] = time.process_time() - t
            row["dangling"] = len(got.dangling)
            for p in ("trt_int8", "ort_int8"):
                r = audit(got.graph, got.plan, p, dangling=got.dangling)
                row[p] = r.by_kind()
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


class _Reader:
    """quantize_static's calibration reader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, Any]]):
        self.items = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self.items, None)


def part_fix(acc: Path, only: set[str] | None) -> list[dict[str, Any]]:
    from onnxruntime import quantization as q

    from fusekit.evaluate import evaluate

    manifest = json.loads((acc / "data" / "manifest.json").read_text())["models"]
    rows = []
    for name, m in manifest.items():
        if only and name not in only:
            continue
        model, data = acc / m["model"], acc / "data" / f"{name}.npz"
        g = fusekit.load(str(model))
        calib = load_data(str(data), g, split="calib")
        ev = load_data(str(data), g, split="eval")
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "q.onnx"
            try:
                q.quantize_static(
                    str(model),
                    str(dst),
                    _Reader(list(calib)),
                    quant_format=q.QuantFormat.QDQ,
                    per_channel=False,
                    activation_type=q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                )
            except Exception as e:
                rows.append({"model": name, "error": f"quantize_static: {e}"[:160]})
                continue
            original = onnx.load(str(dst))
        before = evaluate(g, original, ev)
        got = import_quantized(original, restore_clamps=True)
        for p in ("trt_int8", "ort_int8"):
            row: dict[str, Any] = {"model": name, "platform": p}
            try:
                res = fix_plan(got.graph, got.plan, p, data=calib)
                fixed = build_qdq(got.graph, res.plan).model
                after = evaluate(g, fixed, ev)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:140]}"
                rows.append(row)
                continue
            cb, ca = count_qdq(original), count_qdq(fixed)
            row.update(
                q_before=cb.get("QuantizeLinear", 0),
                dq_before=cb.get("DequantizeLinear", 0),
                q_after=ca.get("QuantizeLinear", 0),
                dq_after=ca.get("DequantizeLinear", 0),
                sqnr_before=before.min_sqnr,
                sqnr_after=after.min_sqnr,
                actions=res.counts(),
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def import_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| tool | model | imported | trt_int8 findings | ort_int8 findings |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "quantize_error" in r:
            lines.append(
                f"| {r['tool']} | {r['model']} | (tool failed: {r['quantize_error']}) | | |"
            )
        elif "import_error" in r:
            lines.append(f"| {r['tool']} | {r['model']} | no: {r['import_error']} | | |")
        else:
            lines.append(
                f"| {r['tool']} | {r['model']} | yes | {_kinds(r['trt_int8'])} | "
                f"{_kinds(r['ort_int8'])} |"
            )
    return "\n".join(lines)


def fix_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | platform | Q + DQ before | Q + DQ after | min SQNR before (dB) | after (dB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r.get('platform', '')} | {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['platform']} | {r['q_before']} + {r['dq_before']} | "
            f"{r['q_after']} + {r['dq_after']} | {r['sqnr_before']:.2f} | {r['sqnr_after']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("import", "fix", "all"), default="all")
    ap.add_argument("--models", default="", help="comma list (default: every corpus model)")
    ap.add_argument("--acc", default=os.environ.get("FUSEKIT_ACCURACY_DIR", "/tmp/acc"))
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    args = ap.parse_args(argv)
    only = {m for m in args.models.split(",") if m}
    doc: dict[str, Any] = {}
    if args.part in ("import", "all"):
        models = sorted(only) or sorted(p.name[: -len(".onnx.gz")] for p in CORPUS.glob("*.gz"))
        doc["import"] = part_import(models)
        print(import_table(doc["import"]))
        print()
    if args.part in ("fix", "all"):
        doc["fix"] = part_fix(Path(args.acc), only or None)
        print(fix_table(doc["fix"]))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
