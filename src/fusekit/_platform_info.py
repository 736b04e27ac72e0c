"""One-line summaries of rule sets and what two rule sets do differently (``fusekit platforms``).

With twenty-odd rule sets registered (fusekit's corrected ones and PPQ 0.6.6's reproductions),
a user migrating from PPQ needs to see at a glance which backend family a set targets, its
quantization policies and what it fuses, and, before switching, exactly which rules change.
Both are derived from :func:`fusekit.rulefile.platform_to_dict`, so every field of a
:class:`~fusekit.platforms.Platform` takes part in the comparison and nothing here can drift
from the rule data.
"""

from __future__ import annotations

from typing import Any

from .platforms import Platform, QuantRule
from .rulefile import platform_to_dict

__all__ = ["family", "platform_diff", "platform_summary", "rule_text"]

_FAMILIES = {
    "trt_int8": "TensorRT",
    "trt_fp8": "TensorRT FP8",
    "ort_int8": "onnxruntime",
    "ort_int8_softplus_tanh": "onnxruntime",
    "ppl_cuda_int8": "PPL CUDA",
    "rknn_int8": "RKNN (Rockchip)",
    "graphcore_fp8": "GraphCore FP8",
    "openvino_int8": "OpenVINO",
    "ncnn_int8": "NCNN",
    "mnn_int8": "MNN",
    "tengine_int8": "Tengine",
    "snpe_int8": "Qualcomm SNPE",
    "qnn_dsp_int8": "Qualcomm QNN DSP",
    "ppl_dsp_int8": "PPL DSP",
    "ppl_dsp_ti_int8": "PPL DSP TI",
    "asc_int8": "Ascend",
    "nxp_int8": "NXP",
    "metax_int8_c": "Metax (per-channel)",
    "metax_int8_t": "Metax (per-tensor)",
    "fpga_int8": "FPGA",
}


def family(p: Platform) -> str:
    """The backend family of a rule set, and whether it reproduces PPQ 0.6.6 or is corrected."""
    base = p.name.removeprefix("ppq066_")
    fam = _FAMILIES.get(base) or p.ppq_target or "custom"
    return f"{fam}, {'PPQ 0.6.6' if p.name.startswith('ppq066_') else 'corrected'}"


def rule_text(r: QuantRule) -> str:
    """A policy in a few characters: ``int8 sym PC``, ``uint8 asym PT``, ``fp8 E4M3 PT p2``."""
    pol = r.policy
    if pol.floating:
        kind = f"fp{r.num_bits} E{r.exponent_bits}M{r.num_bits - 1 - r.exponent_bits}"
    else:
        unsigned = not pol.symmetric and float(r.quant_min) >= 0
        kind = f"{'u' if unsigned else ''}int{r.num_bits} {'sym' if pol.symmetric else 'asym'}"
    text = f"{kind} {'PC' if pol.per_channel else 'PT'}"
    return text + (" p2" if "POWER_OF_2" in pol.names() else "")


def platform_summary(p: Platform) -> str:
    """One line: family; activation, weight and bias policies; what it fuses."""
    weights: dict[str, list[str]] = {}
    for t, r in sorted(p.weights.items()):
        weights.setdefault(rule_text(r), []).append(t)
    w = "; ".join(f"{'/'.join(ts)} {txt}" for txt, ts in weights.items()) or "-"
    bias = p.bias.state.name if p.bias.state.name == "FP32" else f"{p.bias.rule.num_bits}-bit"
    fuses = sorted(p.activation_types | {f"[{x}]" for x in p.activation_patterns})
    return (
        f"{family(p)} | act {rule_text(p.activation)} | w {w} | bias {bias} | "
        f"fuses {', '.join(fuses) if fuses else 'nothing'}"
    )


def _lines(key: str, a: Any, b: Any) -> list[str]:
    if a == b:
        return []
    if isinstance(a, list) and isinstance(b, list):
        only_a = sorted(set(map(str, a)) - set(map(str, b)))
        only_b = sorted(set(map(str, b)) - set(map(str, a)))
        parts = []
        if only_a:
            parts.append(f"only first: {', '.join(only_a)}")
        if only_b:
            parts.append(f"only second: {', '.join(only_b)}")
        return [f"{key}: {'; '.join(parts)}"] if parts else []
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{key}[{k}]: only second: {_short(b[k])}")
            elif k not in b:
                out.append(f"{key}[{k}]: only first: {_short(a[k])}")
            else:
                out.extend(_lines(f"{key}[{k}]", a[k], b[k]))
        return out
    return [f"{key}: {_short(a)} -> {_short(b)}"]


def _short(v: Any) -> str:
    if isinstance(v, dict) and "policy" in v:
        r = ", ".join(f"{k}={v[k]}" for k in ("policy", "num_bits", "channel_axis") if k in v)
        return "{" + r + (f", state={v['state']}" if "state" in v else "") + "}"
    return str(v)


def platform_diff(a: Platform, b: Platform) -> list[str]:
    """What rule set ``b`` does differently from ``a``: one line per differing field or entry
    (``description`` and ``name`` left out); empty when they make the same decisions."""
    da, db = platform_to_dict(a), platform_to_dict(b)
    out: list[str] = []
    for key in da:
        if key in ("name", "description"):
            continue
        out.extend(_lines(key, da[key], db.get(key)))
    return out
