"""Where fusekit's ``openvino_int8`` puts quantization, next to where NNCF (OpenVINO's own
quantizer, ONNX backend) puts it, on corpus models (issue 14).

Both quantize the same float model: fusekit with ``openvino_int8`` (default pipeline, min-max
observers, QDQ export), NNCF with ``nncf.quantize`` and its defaults (preset ``PERFORMANCE``,
target ``ANY``) after ONNX shape inference, which NNCF asks for; both calibrate on the same
random samples (placement does not depend on the data). Models older than opset 13 are
converted to 13 first (for both). The comparison is over activation tensors (not
initializers): a tensor is *quantized* by a tool when some QuantizeLinear of its export reads it.
It reports the agreement (tensors both quantize / tensors either quantizes) and every kind of
difference, a kind being "producer type -> consumer types" of the tensor, and the weights each
tool quantizes (initializers read by a QuantizeLinear or produced int8 for a DequantizeLinear).

    pip install nncf   # optional: never a fusekit dependency
    python bench/nncf_placement.py [--models mobilenet_v2,resnet18] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnx.shape_inference
import onnx.version_converter

import fusekit
from fusekit.calibrate import Calibration, random_data
from fusekit.export import build_qdq

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "models"
MODELS = ("mobilenet_v2", "resnet18", "mobilenet_v3_small", "yolov5s_silu")
_QDQ = {"QuantizeLinear", "DequantizeLinear"}


def _model(name: str) -> onnx.ModelProto:
    with gzip.open(CORPUS / f"{name}.onnx.gz") as f:
        m = onnx.load_model_from_string(f.read())
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=13)
    if opset < 13:
        m = onnx.version_converter.convert_version(m, 13)
    return onnx.shape_inference.infer_shapes(m)


def _quantized(m: onnx.ModelProto, names: set[str]) -> tuple[set[str], set[str]]:
    """(activation tensors read by a QuantizeLinear, weights quantized) of a QDQ model, named
    as in the float model (``names``): fusekit's export renames a quantized tensor ``x`` to
    ``x_float`` and a pre-quantized weight ``w`` to ``w_quantized``."""

    def orig(t: str) -> str:
        for suffix in ("_float", "_quantized"):
            if t not in names and t.endswith(suffix) and t[: -len(suffix)] in names:
                return t[: -len(suffix)]
        if t not in names and t.startswith("q_output_"):  # NNCF: q_output_<weight>_<k>
            base = t[len("q_output_") :].rpartition("_")[0]
            if base in names:
                return base
        return t

    inits = {i.name for i in m.graph.initializer}
    acts: set[str] = set()
    weights: set[str] = set()
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            (weights if n.input[0] in inits else acts).add(orig(n.input[0]))
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:
            weights.add(orig(n.input[0]))
    return acts, weights


def _scheme(m: onnx.ModelProto) -> dict[str, Any]:
    """Zero-point types of the activation quantizers, and the int range the weights use."""
    from onnx import numpy_helper

    inits = {i.name: i for i in m.graph.initializer}
    act_zp: Counter[str] = Counter()
    lo, hi, per_channel, weights = 0, 0, 0, 0
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and len(n.input) > 2:
            zp = numpy_helper.to_array(inits[n.input[2]])
            act_zp[f"{zp.dtype}{'' if not zp.any() else ' zp!=0'}"] += 1
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:
            w = numpy_helper.to_array(inits[n.input[0]])
            if w.dtype.kind in "iu" and w.dtype.itemsize == 1:
                weights += 1
                lo, hi = min(lo, int(w.min())), max(hi, int(w.max()))
                per_channel += numpy_helper.to_array(inits[n.input[1]]).size > 1
    return {
        "activation_zero_points": dict(act_zp),
        "weight_int_range": [lo, hi],
        "weights_per_channel": f"{per_channel}/{weights}",
    }


def _kinds(m: onnx.ModelProto) -> dict[str, str]:
    """tensor -> "producer type -> consumer types" in the float model."""
    prod = {o: n.op_type for n in m.graph.node for o in n.output}
    cons: dict[str, list[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n.op_type)
    outs = {o.name for o in m.graph.output}
    kinds = {}
    for t in set(prod) | set(cons):
        c = sorted(set(cons.get(t, []))) + (["<graph output>"] if t in outs else [])
        kinds[t] = f"{prod.get(t, '<graph input>')} -> {'/'.join(c) or '-'}"
    return kinds


def compare(name: str, samples: int = 8) -> dict[str, Any]:
    import nncf

    m = _model(name)
    g = fusekit.load(m.SerializeToString())
    data = random_data(g, samples, seed=0)
    pipe = fusekit.default_pipeline(
        "openvino_int8", calibration=Calibration(data, observer="minmax")
    )
    plan = pipe.run(g, fusekit.init_plan(g, "openvino_int8")).plan
    ours = build_qdq(g, plan).model
    feeds = list(data)
    with contextlib.redirect_stdout(sys.stderr):
        theirs = nncf.quantize(m, nncf.Dataset(feeds), subset_size=len(feeds))
    names = {t for n in m.graph.node for t in (*n.input, *n.output)}
    names |= {i.name for i in m.graph.input} | {i.name for i in m.graph.initializer}
    fa, fw = _quantized(ours, names)
    na, nw = _quantized(theirs, names)
    kinds = _kinds(m)
    only_f = Counter(kinds.get(t, "?") for t in fa - na)
    only_n = Counter(kinds.get(t, "?") for t in na - fa)
    return {
        "model": name,
        "nncf": nncf.__version__,
        "both": len(fa & na),
        "fusekit_only": len(fa - na),
        "nncf_only": len(na - fa),
        "agreement": len(fa & na) / max(1, len(fa | na)),
        "weights_fusekit": len(fw),
        "weights_nncf": len(nw),
        "weights_both": len(fw & nw),
        "scheme_fusekit": _scheme(ours),
        "scheme_nncf": _scheme(theirs),
        "kinds_fusekit_only": dict(only_f.most_common()),
        "kinds_nncf_only": dict(only_n.most_common()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        r = compare(name)
        rows.append(r)
        print(
            f"{name}: both {r['both']}, fusekit only {r['fusekit_only']}, nncf only "
            f"{r['nncf_only']}, agreement {r['agreement']:.1%}; weights fusekit "
            f"{r['weights_fusekit']} nncf {r['weights_nncf']} both {r['weights_both']}"
        )
        print(f"    scheme fusekit {r['scheme_fusekit']}")
        print(f"    scheme nncf    {r['scheme_nncf']}")
        for side in ("fusekit_only", "nncf_only"):
            for kind, n in r[f"kinds_{side}"].items():
                print(f"    {side:13} {n:4}  {kind}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
