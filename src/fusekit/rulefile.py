"""Rule files: a :class:`~fusekit.platforms.Platform` read from and written to JSON or TOML.

A rule file is the user's way to describe a backend without writing Python: every field of
``Platform`` has a plain-data form, unknown keys and names are refused with the JSON path of
the mistake (:class:`~fusekit.errors.InvalidPlatform`), and :func:`platform_to_dict` gives the
exact inverse so a shipped rule set can be dumped, edited and loaded back
(``fusekit platforms --dump``). Kept apart from :mod:`fusekit.platforms` so the data module
stays data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .errors import InvalidPlatform
from .platforms import (
    BiasRule,
    Platform,
    QuantRule,
    SocketRule,
    get_platform,
    register_platform,
)
from .quant import QuantPolicy, QuantState, RoundingPolicy, Visibility

__all__ = ["load_platform", "platform_from_dict", "platform_to_dict", "unknown_op_types"]

_FIELDS = {f.name: f for f in attrs.fields(Platform)}
_SOCKET = frozenset({"U", "FP32", "SOI"})


def _rule_from(d: Any, where: str) -> QuantRule:
    if not isinstance(d, Mapping):
        raise InvalidPlatform(f"{where}: expected a table of rule fields")
    allowed = {f.name for f in attrs.fields(QuantRule)}
    extra = set(d) - allowed
    if extra:
        raise InvalidPlatform(
            f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}"
        )
    kw = dict(d)
    try:
        if "policy" in kw:
            kw["policy"] = QuantPolicy.parse(str(kw["policy"]))
        if "rounding" in kw:
            kw["rounding"] = RoundingPolicy[str(kw["rounding"])]
    except KeyError as e:
        raise InvalidPlatform(f"{where}: unknown rounding {e.args[0]!r}") from None
    except Exception as e:
        raise InvalidPlatform(f"{where}: {e}") from None
    for k, types in _RULE_TYPES.items():
        if k in kw and (isinstance(kw[k], bool) or not isinstance(kw[k], types)):
            raise InvalidPlatform(f"{where}: {k} has the wrong type ({type(kw[k]).__name__})")
    rule = QuantRule(**kw)
    try:
        rule.config()  # the config validators (bits, exponent, axis vs policy) run here
    except (TypeError, ValueError) as e:
        raise InvalidPlatform(f"{where}: {e}") from None
    return rule


_RULE_TYPES: dict[str, Any] = {
    "num_bits": int,
    "exponent_bits": int,
    "quant_min": (int, float),
    "quant_max": (int, float),
    "observer": str,
    "channel_axis": (int, type(None)),
}


def _names(value: Any, where: str) -> frozenset[str]:
    """A list of op-type names (strings) from rule-file data."""
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):
        raise InvalidPlatform(f"{where}: expected a list of names")
    items = list(value)
    if not all(isinstance(x, str) for x in items):
        raise InvalidPlatform(f"{where}: expected a list of names (strings)")
    return frozenset(items)


def platform_from_dict(d: Mapping[str, Any], *, source: str = "platform") -> Platform:
    """Build a :class:`Platform` from plain data (what JSON/TOML give), validating every field.

    Unknown fields and op types that are neither ONNX operators nor listed in
    ``non_onnx_types`` raise :class:`~fusekit.errors.InvalidPlatform` naming them. A ``"base"``
    key names a registered platform to start from; the other keys override its fields.
    """
    if not isinstance(d, Mapping):
        raise InvalidPlatform(f"{source}: expected a table/object at the top level")
    data = dict(d)
    base_name = data.pop("base", None)
    extra = set(data) - set(_FIELDS)
    if extra:
        raise InvalidPlatform(
            f"{source}: unknown field(s) {sorted(extra)}; allowed: {sorted(_FIELDS)} and 'base'"
        )
    if "name" not in data:
        raise InvalidPlatform(f"{source}: the field 'name' is required")
    kw: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{source}: field {key!r}"
        if key in ("name", "description", "ppq_target", "placement"):
            if not isinstance(value, str):
                raise InvalidPlatform(f"{where}: expected a string")
            kw[key] = value
        elif key in ("activation",):
            kw[key] = _rule_from(value, where)
        elif key in ("weights", "conditional_weights"):
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table op type -> rule")
            kw[key] = {k: _rule_from(v, f"{where}[{k!r}]") for k, v in value.items()}
        elif key == "bias":
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table")
            b = dict(value)
            try:
                state = QuantState[b.pop("state", "FP32")]
                vis = Visibility[b.pop("visibility", "EXPORT_WHEN_ACTIVE")]
            except (KeyError, TypeError) as e:
                raise InvalidPlatform(f"{where}: unknown state or visibility ({e})") from None
            kw[key] = BiasRule(state, _rule_from(b, where), vis)
        elif key == "sockets":
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table op type -> {{inputs, outputs}}")
            socks = {}
            for t, s in value.items():
                raw_ins = s.get("inputs", ()) if isinstance(s, Mapping) else s
                raw_outs = s.get("outputs", ()) if isinstance(s, Mapping) else ()
                if not all(isinstance(x, (list, tuple)) for x in (raw_ins, raw_outs)):
                    raise InvalidPlatform(f"{where}[{t!r}]: expected lists of U, FP32 or SOI")
                ins, outs = tuple(raw_ins), tuple(raw_outs)
                bad = [x for x in (*ins, *outs) if not isinstance(x, str) or x not in _SOCKET]
                if bad:
                    raise InvalidPlatform(
                        f"{where}[{t!r}]: entries must be U, FP32 or SOI, got {bad}"
                    )
                socks[t] = SocketRule(ins, outs)
            kw[key] = socks
        elif key in (
            "passive_conditions",
            "fp32_inputs_from",
            "weight_conditions",
            "passive_inputs_from",
        ):
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table")
            want: Any = str if key.endswith("_conditions") else int
            if any(isinstance(v, bool) or not isinstance(v, want) for v in value.values()):
                what = "condition names" if want is str else "input indices"
                raise InvalidPlatform(f"{where}: expected {what} as values")
            kw[key] = dict(value)
        elif key == "alignment":
            if not isinstance(value, Mapping):
                raise InvalidPlatform(f"{where}: expected a table")
            unknown = set(value) - {"elementwise", "concat", "pooling", "resize"}
            if unknown:
                raise InvalidPlatform(f"{where}: unknown alignment group(s) {sorted(unknown)}")
            kw[key] = {k: _names(v, f"{where}[{k!r}]") for k, v in value.items()}
        elif key in ("float_matvec", "depthwise_input_per_channel"):
            if not isinstance(value, bool):
                raise InvalidPlatform(f"{where}: expected true or false")
            kw[key] = value
        elif key == "alignment_required":
            names = _names(value, where)
            unknown = set(names) - {"elementwise", "concat", "pooling", "resize"}
            if unknown:
                raise InvalidPlatform(f"{where}: unknown alignment group(s) {sorted(unknown)}")
            kw[key] = names
        else:
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise InvalidPlatform(f"{where}: expected a list of names")
            kw[key] = frozenset(str(x) for x in value)
    try:
        if base_name is not None:
            p = get_platform(str(base_name)).evolve(**kw)
        else:
            p = Platform(**kw)
    except (TypeError, ValueError) as e:
        raise InvalidPlatform(f"{source}: {e}") from None
    unknown_ops = unknown_op_types(p)
    if unknown_ops:
        raise InvalidPlatform(
            f"{source}: unknown op type(s) {sorted(unknown_ops)}: not ONNX operators; "
            "list deliberate custom names in 'non_onnx_types'"
        )
    return p


def unknown_op_types(platform: Platform) -> frozenset[str]:
    """Op types the rule set names that are neither ONNX operators nor declared non-ONNX."""
    from ._onnx_registry import is_onnx_op

    return frozenset(
        t
        for t in platform.op_types()
        if "::" not in t and not is_onnx_op(t) and t not in platform.non_onnx_types
    )


def platform_to_dict(p: Platform) -> dict[str, Any]:
    """Plain data for JSON (round trips through :func:`platform_from_dict`)."""

    def rule(r: QuantRule) -> dict[str, Any]:
        return {
            "policy": str(r.policy),
            "num_bits": r.num_bits,
            "quant_min": r.quant_min,
            "quant_max": r.quant_max,
            "rounding": r.rounding.name,
            "observer": r.observer,
            "channel_axis": r.channel_axis,
            "exponent_bits": r.exponent_bits,
        }

    return {
        "name": p.name,
        "description": p.description,
        "ppq_target": p.ppq_target,
        "placement": p.placement,
        "quant_types": sorted(p.quant_types),
        "computing_types": sorted(p.computing_types),
        "activation_types": sorted(p.activation_types),
        "activation_patterns": sorted(p.activation_patterns),
        "epilogue_types": sorted(p.epilogue_types),
        "passive_types": sorted(p.passive_types),
        "passive_conditions": dict(p.passive_conditions),
        "sockets": {
            k: {"inputs": list(v.inputs), "outputs": list(v.outputs)}
            for k, v in sorted(p.sockets.items())
        },
        "activation": rule(p.activation),
        "weights": {k: rule(v) for k, v in sorted(p.weights.items())},
        "bias_types": sorted(p.bias_types),
        "bias": {
            "state": p.bias.state.name,
            "visibility": p.bias.visibility.name,
            **rule(p.bias.rule),
        },
        "fp32_inputs_from": dict(p.fp32_inputs_from),
        "weight_always": sorted(p.weight_always),
        "weight_conditions": dict(p.weight_conditions),
        "conditional_weights": {k: rule(v) for k, v in sorted(p.conditional_weights.items())},
        "passive_inputs_from": dict(p.passive_inputs_from),
        "linear_activations": sorted(p.linear_activations),
        "alignment": {k: sorted(v) for k, v in sorted(p.alignment.items())},
        "quirks": sorted(p.quirks),
        "non_onnx_types": sorted(p.non_onnx_types),
        "alignment_required": sorted(p.alignment_required),
        "float_matvec": p.float_matvec,
        "depthwise_input_per_channel": p.depthwise_input_per_channel,
    }


def load_platform(path: str | Path, *, register: bool = False) -> Platform:
    """Read a rule set from a ``.json`` or ``.toml`` file (see :func:`platform_from_dict`)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidPlatform(f"{p}: no such file")
    text = p.read_bytes()
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib  # type: ignore[import-not-found,unused-ignore]
            except ModuleNotFoundError:  # Python 3.10
                raise InvalidPlatform(f"{p}: TOML rule files need Python 3.11+; use JSON") from None
            data = tomllib.loads(text.decode("utf-8"))
        else:
            data = json.loads(text)
    except InvalidPlatform:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidPlatform(f"{p}: not valid {p.suffix.lstrip('.') or 'JSON'}: {e}") from None
    platform = platform_from_dict(data, source=str(p))
    if register:
        register_platform(platform, replace=True)
    return platform
