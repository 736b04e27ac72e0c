"""fusekit against peer quantizers on the shared accuracy data (issue 13's peer benchmark).

For every model/data pair of the shared accuracy set (32 calibration, 16 evaluation samples,
written by ``../shared/accuracy/make_data.py``) it quantizes the float model with

* ``fusekit``: ``ort_int8`` as shipped on this checkout (default pipeline, min-max observers,
  QDQ export); ``fusekit-trt``: ``trt_int8`` the same way; ``fusekit-unfused`` /
  ``fusekit-trt-unfused``: calibration and passive parameters only (``fusekit compare``'s
  unfused variant); ``fusekit-ov``: ``openvino_int8`` as shipped (the fair comparison for NNCF,
  whose exports are made for OpenVINO), ``fusekit-ov-fo``: the same with the ``fused-output``
  placement and every alignment family (``openvino_int8`` before issue 15),
  ``fusekit-ov-aligned``: ``fusekit-ov`` with residual Adds aligned, ``fusekit-ov-pt``: per-tensor
  depthwise inputs, ``fusekit-ov-unfused``: calibration and passive parameters only,
  ``fusekit-ov-bc``: ``fusekit-ov`` and bias correction (NNCF applies its fast bias correction
  by default), ``fusekit-ov-mmm``: ``fusekit-ov`` with the ``mean_minmax`` observer (NNCF's
  range for per-tensor activations);
* ``qs-pc`` / ``qs-pt``: onnxruntime's ``quantize_static`` as its documentation says to use it:
  ``quant_pre_process`` first, QDQ format, uint8 activations, int8 weights, MinMax calibrator on
  the same 32 samples, per-channel and per-tensor weights;
* ``nncf``: NNCF's ONNX post-training quantization (``nncf.quantize``, its defaults,
  ``subset_size=32``, after ONNX shape inference, which NNCF asks for) when ``nncf`` is
  importable.

Models older than opset 13 are converted to opset 13 before the peers see them (per-channel
DequantizeLinear needs it; onnxruntime's documentation asks for it), counted in their time. Per
quantizer and output it reports: SQNR against the float model on the 16 evaluation samples
(reference kernels: every Q/DQ executed as written, the accuracy of the scheme on any machine),
QuantizeLinear nodes, the CPU time of quantization (``time.process_time``, all threads of this
process: load, pre-processing, calibration, export), onnxruntime CPU latency of the float model
and the export side by side (1 thread, same process; :func:`fusekit.evaluate.measure_latency`)
and the int8 coverage (:func:`fusekit.kernels.kernel_report`). A quantizer that fails gets a row
with its error.

    FUSEKIT_ACCURACY_DIR=/tmp/acc python ../shared/accuracy/make_data.py
    python bench/peers.py --acc /tmp/acc [--models a,b] [--quantizers fusekit,qs-pc]
    python bench/peers.py --acc /tmp/acc --write-docs   # also into docs/accuracy.md

Peers are optional imports: bench/ is not part of the package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx

import fusekit
from fusekit.calibrate import Calibration, load_data
from fusekit.equalize import bias_correction as _bias_correction
from fusekit.evaluate import cpu_name, evaluate, measure_latency
from fusekit.export import build_qdq
from fusekit.onnx_io import write_bytes_atomic
from fusekit.passes import PassiveParameters, Pipeline

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "accuracy.md"
BEGIN = "<!-- peers:begin (bench/peers.py --write-docs) -->"
END = "<!-- peers:end -->"
QUANTIZERS = (
    "fusekit",
    "fusekit-unfused",
    "fusekit-trt",
    "fusekit-trt-unfused",
    "fusekit-ov",
    "fusekit-ov-fo",
    "fusekit-ov-aligned",
    "fusekit-ov-pt",
    "fusekit-ov-unfused",
    "fusekit-ov-bc",
    "fusekit-ov-mmm",
    "fusekit-ov-mixed",
    "qs-pc",
    "qs-pt",
    "nncf",
    "nncf-mixed",
)


# --------------------------------------------------------------------------------------------
# quantizers: (float model path, calibration feeds, work dir) -> QDQ model path, note


def _fusekit_with(
    platform: str,
    fused: bool = True,
    bias_correction: bool = False,
    observer: str = "minmax",
    **changes: Any,
) -> Callable[[Path, Path, Path], Any]:
    """fusekit's default pipeline on ``platform`` (or, unfused, calibration and passive
    parameters only, as ``fusekit compare``'s unfused variant); ``changes`` derive a variant
    of the rule set (``Platform.evolve``); ``bias_correction`` runs
    :func:`fusekit.equalize.bias_correction` on the result (``fuse --bias-correction``);
    ``observer`` is the activation observer (``--observer``)."""
    rules = fusekit.get_platform(platform)
    if changes:
        rules = rules.evolve(**changes)

    def run(model: Path, data: Path, work: Path) -> tuple[Path, str]:
        g = fusekit.load(model)
        calib = load_data(data, g, split="calib")
        plan = fusekit.init_plan(g, rules)
        cal = Calibration(calib, observer=observer)
        if fused:
            pipe = fusekit.default_pipeline(rules, calibration=cal)
        else:
            pipe = Pipeline((cal, PassiveParameters(rules)))
        res = pipe.run(g, plan)
        if bias_correction:
            g = _bias_correction(g, res.plan, calib, progress=False).graph
        out = work / "fusekit.onnx"
        onnx.save(build_qdq(g, res.plan).model, str(out))
        note = ", ".join(
            [
                platform,
                *(f"{k}={v}" if isinstance(v, (str, bool)) else k for k, v in changes.items()),
            ]
        )
        note += ", bias correction" if bias_correction else ""
        note += f", {observer}" if observer != "minmax" else ""
        return out, note if fused else f"{note}, unfused"

    return run


_fusekit = _fusekit_with("ort_int8")


def _opset13(model: Path, work: Path) -> tuple[Path, str]:
    m = onnx.load(str(model))
    v = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    if v >= 13:
        return model, ""
    from onnx import version_converter

    up = version_converter.convert_version(m, 13)
    out = work / "opset13.onnx"
    onnx.save(up, str(out))
    return out, f"opset {v}->13"


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over fusekit's dataset."""

    def __init__(self, feeds: list[dict[str, Any]]):
        self.it = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self.it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def _quantize_static(per_channel: bool) -> Callable[[Path, Path, Path], tuple[Path, str]]:
    def run(model: Path, data: Path, work: Path) -> tuple[Path, str]:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        src, note = _opset13(model, work)
        pre = work / "pre.onnx"
        notes = [note] if note else []
        with _cwd(work):  # its symbolic shape inference leaves a temp file in the cwd
            try:
                quant_pre_process(str(src), str(pre))
            except Exception as e:  # symbolic shape inference fails on some models
                notes.append(f"pre-process without symbolic shapes ({type(e).__name__})")
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        g = fusekit.load(model)
        feeds = list(load_data(data, g, split="calib"))
        out = work / ("qs-pc.onnx" if per_channel else "qs-pt.onnx")
        quantize_static(
            str(pre),
            str(out),
            _Reader(feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return out, "; ".join(notes)

    return run


def _nncf(model: Path, data: Path, work: Path, preset: str | None = None) -> tuple[Path, str]:
    """NNCF's ``nncf.quantize`` with its defaults, or with ``preset`` ("mixed": asymmetric
    activations, the preset fusekit's ``openvino_int8_mixed`` describes)."""
    import nncf

    src, note = _opset13(model, work)
    g = fusekit.load(model)
    feeds = list(load_data(data, g, split="calib"))
    # NNCF asks for known shapes ("consider to run pre-processing"): ONNX shape inference
    m = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    with contextlib.redirect_stdout(sys.stderr):  # its progress bars: keep stdout a table
        extra: dict[str, Any] = {}
        if preset == "mixed":
            extra["preset"] = nncf.QuantizationPreset.MIXED
        q = nncf.quantize(m, nncf.Dataset(feeds), subset_size=len(feeds), **extra)
    out = work / "nncf.onnx"
    onnx.save(q, str(out))
    said = f"nncf {nncf.__version__}" + (f", {preset} preset" if preset else "")
    return out, "; ".join(x for x in (note, said) if x)


def _nncf_mixed(model: Path, data: Path, work: Path) -> tuple[Path, str]:
    return _nncf(model, data, work, preset="mixed")


RUNNERS: dict[str, Callable[[Path, Path, Path], tuple[Path, str]]] = {
    "fusekit": _fusekit,
    "fusekit-unfused": _fusekit_with("ort_int8", fused=False),
    "fusekit-trt": _fusekit_with("trt_int8"),
    "fusekit-trt-unfused": _fusekit_with("trt_int8", fused=False),
    "fusekit-ov": _fusekit_with("openvino_int8"),
    "fusekit-ov-fo": _fusekit_with(
        "openvino_int8",
        placement="fused-output",
        alignment=fusekit.get_platform("trt_int8").alignment,
    ),
    "fusekit-ov-aligned": _fusekit_with(
        "openvino_int8", alignment=fusekit.get_platform("trt_int8").alignment
    ),
    "fusekit-ov-pt": _fusekit_with("openvino_int8", depthwise_input_per_channel=False),
    "fusekit-ov-unfused": _fusekit_with("openvino_int8", fused=False),
    "fusekit-ov-bc": _fusekit_with("openvino_int8", bias_correction=True),
    "fusekit-ov-mmm": _fusekit_with("openvino_int8", observer="mean_minmax"),
    "qs-pc": _quantize_static(True),
    "qs-pt": _quantize_static(False),
    "nncf": _nncf,
    "nncf-mixed": _nncf_mixed,
    "fusekit-ov-mixed": _fusekit_with("openvino_int8_mixed"),
}


def _available(name: str) -> bool:
    if not name.startswith("nncf"):
        return True
    try:
        import nncf  # noqa: F401
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------------------------
# measurement


def measure_one(
    quantizer: str, model: Path, data: Path, runs: int, work: Path
) -> list[dict[str, Any]]:
    """Rows (one per graph output) for one quantizer on one model/data pair."""
    g = fusekit.load(model)
    outputs = list(g.outputs)
    base = {"quantizer": quantizer}
    t0 = time.process_time()
    try:
        qdq, note = RUNNERS[quantizer](model, data, work)
    except Exception as e:  # a failing peer is a result, not a crash
        msg = f"quantization failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
        return [{**base, "output": o, "error": msg} for o in outputs]
    cpu_s = time.process_time() - t0
    try:
        ev = load_data(data, g, split="eval")
        e = evaluate(g, str(qdq), ev, kernels="reference")
        lat = measure_latency(g, str(qdq), ev, runs=runs, threads=1) if runs > 0 else None
    except Exception as ex:
        msg = f"evaluation failed: {type(ex).__name__}: {str(ex).strip().splitlines()[0][:160]}"
        return [{**base, "output": o, "error": msg, "cpu_s": cpu_s} for o in outputs]
    q_nodes = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(qdq)).graph.node)
    return [
        {
            **base,
            "output": o.name,
            "sqnr_db": o.sqnr_db,
            "q_nodes": q_nodes,
            "cpu_s": cpu_s,
            "float_ms": lat.float_ms if lat else None,
            "qdq_ms": lat.qdq_ms if lat else None,
            "speedup": lat.speedup if lat else None,
            "int8_ops": lat.int8_ops if lat else None,
            "computing_ops": lat.computing_ops if lat else None,
            "note": note,
        }
        for o in e.outputs
    ]


def _pairs(acc: Path, only: set[str] | None) -> list[tuple[str, Path, Path]]:
    manifest = json.loads((acc / "data" / "manifest.json").read_text())["models"]
    out = []
    for name, m in manifest.items():
        if only and name not in only:
            continue
        out.append((name, acc / m["model"], acc / "data" / f"{name}.npz"))
    return out


def table(rows: list[dict[str, Any]], header: str) -> str:
    """The markdown table of ``rows``, after a ``header`` paragraph."""
    lines = [
        header,
        "",
        "| model / output | quantizer | SQNR dB | Q nodes | quantize CPU s | float ms | QDQ ms "
        "| speed vs float | int8 Conv/MatMul/Gemm | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        where = f"{r['model']} / {r['output']}"
        if "error" in r:
            lines.append(
                f"| {where} | {r['quantizer']} | - | - | - | - | - | - | - | {r['error']} |"
            )
            continue
        if r.get("float_ms") is None:  # measured with --runs 0: no latency
            lat = "- | - | - | -"
        else:
            cov = f"{r['int8_ops']} of {r['computing_ops']}"
            lat = f"{r['float_ms']:.2f} | {r['qdq_ms']:.2f} | {r['speedup']:.2f}x | {cov}"
        lines.append(
            f"| {where} | {r['quantizer']} | {r['sqnr_db']:.2f} | {r['q_nodes']} | "
            f"{r['cpu_s']:.1f} | {lat} | {r['note']} |"
        )
    return "\n".join(lines)


def write_docs(text: str, doc: Path = DOC) -> None:
    """Replace the marked peers section of ``doc`` (or append it) atomically."""
    old = doc.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = head + block + tail
    else:
        new = old.rstrip("\n") + "\n\n## Peer quantizers (bench/peers.py)\n\n" + block + "\n"
    write_bytes_atomic(doc, new.encode())


def _commit() -> str:
    """The checkout's commit, so a table says which rule set produced the fusekit rows."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return f"commit {out.stdout.strip()}"
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--acc", default=os.environ.get("FUSEKIT_ACCURACY_DIR", "/tmp/acc"))
    ap.add_argument("--models", help="comma-separated data names (default: all)")
    ap.add_argument("--quantizers", default=",".join(QUANTIZERS))
    ap.add_argument(
        "--runs", type=int, default=20, help="timed runs per latency (default 20; 0: no latency)"
    )
    ap.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    ap.add_argument("--write-docs", action="store_true", help="write the table into docs")
    ap.add_argument(
        "--from-json", metavar="ROWS", help="render rows saved by --json instead of measuring"
    )
    args = ap.parse_args(argv)
    acc = Path(args.acc).resolve()  # the quantizers may change the working directory
    only = set(args.models.split(",")) if args.models else None
    wanted = [q for q in args.quantizers.split(",") if q]
    unknown = [q for q in wanted if q not in RUNNERS]
    if unknown:
        ap.error(f"unknown quantizer(s) {unknown}; choose from {', '.join(QUANTIZERS)}")
    skipped = [q for q in wanted if not _available(q)]
    rows: list[dict[str, Any]] = []
    saved_header = ""
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows = saved["rows"] if isinstance(saved, dict) else saved
        saved_header = saved.get("header", "") if isinstance(saved, dict) else ""
        wanted = []
    for name, model, data in _pairs(acc, only) if wanted else []:
        for q in wanted:
            if q in skipped:
                continue
            print(f"[peers] {name}: {q}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix="fusekit-peers-") as d:
                for r in measure_one(q, model, data, args.runs, Path(d)):
                    rows.append({"model": name, **r})
    import onnxruntime

    header = (
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} by `bench/peers.py` "
        f"(fusekit {_commit()}) on "
        f"{cpu_name()}, onnxruntime {onnxruntime.__version__}, 1 thread, latency = median of "
        f"{args.runs} runs after 3 warm-up (float and QDQ alternating, same process); SQNR with "
        "reference kernels on the 16 evaluation samples; quantize CPU s = process CPU time of "
        "the quantizer (load, pre-processing, 32-sample calibration, export)."
        + (f" Not installed: {', '.join(skipped)}." if skipped else "")
    )
    header = saved_header or header
    text = table(rows, header)
    print(text)
    if args.json:
        doc = {"header": header, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
