"""Quantization plans as JSON (a versioned schema), read back exactly.

Schema ``fusekit-plan`` version 2::

    {
      "format": "fusekit-plan", "version": 2,
      "graph": {"name": "...", "ops": 566, "slots": 1480, "fingerprint": "9c0f...16 hex"},
      "configs": [ {"state": "INITIAL", "policy": "PER_TENSOR+LINEAR+SYMMETRICAL",
                    "num_bits": 8, "quant_min": -128, "quant_max": 127, "exponent_bits": 0,
                    "rounding": "ROUND_HALF_EVEN", "channel_axis": null,
                    "observer": "minmax", "visibility": "EXPORT_WHEN_ACTIVE",
                    "scale": null | {"dtype": "float32", "shape": [], "data": [0.0123]},
                    "offset": null | {...}}, ... ],
      "ops": {"conv1": {"platform": "trt_int8", "in": [0, 1, 2], "out": [0]}, ...},
      "links": {"conv1|out|0": ["relu1|out|0", "overlap"], ...}
    }

Only quantized ops appear in ``ops``; each slot refers to an entry of the shared ``configs``
table (a 100k-op plan has a handful of distinct configs before calibration). ``links`` holds
each linked slot's direct parent and the link kind. Scales and offsets keep their dtype and
shape, and floats are written with Python's shortest exact repr, so a round trip is exact.
Reading validates everything and names the first bad field.

``graph`` identifies the model the plan was written for: its name, op count, number of
quantized slots and :meth:`~fusekit.Graph.fingerprint` (op names, domains, types and slot
wiring). Exporters name ops ``Conv_0``, ``Relu_1``... in every model, so matching op names
prove nothing; a plan whose ``graph`` record disagrees with the graph it is loaded for is
refused with :class:`~fusekit.errors.PlanGraphMismatch` naming the difference. Version 1 (fusekit
0.1) had no fingerprint: such files are still read, checked on name and counts only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._util import write_bytes_atomic
from .dispatch import refuse_other_floats
from .errors import InvalidPlan, PlanGraphMismatch, UnknownSlot
from .graph import Graph, Slot
from .quant import (
    LinkKind,
    QuantPlan,
    QuantPolicy,
    QuantState,
    RoundingPolicy,
    TensorQuantConfig,
    Visibility,
)

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "load_plan",
    "plan_from_dict",
    "plan_from_json",
    "plan_to_dict",
    "plan_to_json",
    "save_plan",
]

PLAN_FORMAT = "fusekit-plan"
PLAN_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_KINDS = {"overlap": LinkKind.OVERLAP, "follow": LinkKind.FOLLOW}


def _array_to_json(a: np.ndarray[Any, Any] | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()}


def _config_to_json(c: TensorQuantConfig) -> dict[str, Any]:
    return {
        "state": c.state.name,
        "policy": str(c.policy),
        "num_bits": c.num_bits,
        "quant_min": c.quant_min,
        "quant_max": c.quant_max,
        "exponent_bits": c.exponent_bits,
        "rounding": c.rounding.name,
        "channel_axis": c.channel_axis,
        "observer": c.observer,
        "visibility": c.visibility.name,
        "scale": _array_to_json(c.scale),
        "offset": _array_to_json(c.offset),
    }


def plan_to_dict(plan: QuantPlan) -> dict[str, Any]:
    """The plan as plain JSON-able data (schema above)."""
    idx = plan.graph.index
    table: list[dict[str, Any]] = []
    by_id: dict[int, int] = {}
    by_value: dict[str, int] = {}

    def ref(c: TensorQuantConfig) -> int:
        k = by_id.get(id(c))
        if k is None:
            data = _config_to_json(c)
            key = json.dumps(data, sort_keys=True)
            k = by_value.get(key)
            if k is None:
                k = by_value[key] = len(table)
                table.append(data)
            by_id[id(c)] = k
        return k

    ops: dict[str, Any] = {}
    links: dict[str, Any] = {}
    configs, dispatch = plan.configs, plan.dispatch
    for name in plan.graph.order:
        oid = idx.op_id[name]
        platform = dispatch[oid]
        if platform is None:
            continue
        ins = [ref(configs[s]) for s in idx.input_sids(oid)]
        outs = [ref(configs[s]) for s in idx.output_sids(oid)]
        ops[name] = {"platform": platform, "in": ins, "out": outs}
        for s in idx.slot_ids_of(oid):
            parent = plan.parent_id(s)
            if parent >= 0:
                kind = "overlap" if plan.link_kind_id(s) is LinkKind.OVERLAP else "follow"
                links[str(idx.slot_key(s))] = [str(idx.slot_key(parent)), kind]
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "graph": {
            "name": plan.graph.name,
            "ops": len(plan.graph),
            "slots": len(plan),
            "fingerprint": plan.graph.fingerprint(),
        },
        "configs": table,
        "ops": ops,
        "links": links,
    }


def plan_to_json(plan: QuantPlan, *, indent: int | None = None) -> str:
    """The plan as a JSON string."""
    return json.dumps(plan_to_dict(plan), indent=indent)


def save_plan(plan: QuantPlan, path: str | Path) -> None:
    """Write the plan as JSON, atomically."""
    write_bytes_atomic(Path(path), plan_to_json(plan, indent=1).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# reading


def _need(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise InvalidPlan("expected an object", path=where)
    if key not in d:
        raise InvalidPlan(f"missing field {key!r}", path=where)
    return d[key]


def _enum(cls: Any, value: Any, where: str) -> Any:
    try:
        return cls[value]
    except (KeyError, TypeError):
        names = ", ".join(m for m in cls.__members__)
        raise InvalidPlan(f"{value!r} is not one of {names}", path=where) from None


def _array_from_json(d: Any, where: str) -> np.ndarray[Any, Any] | None:
    if d is None:
        return None
    dtype = _need(d, "dtype", where)
    shape = _need(d, "shape", where)
    data = _need(d, "data", where)
    try:
        dt = np.dtype(dtype)
        if dt.kind not in "fiu":
            raise TypeError(dtype)
        if not isinstance(shape, list) or not all(isinstance(x, int) and x >= 0 for x in shape):
            raise ValueError("shape")
        if not isinstance(data, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in data
        ):
            raise ValueError("data")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.array(data, dtype=dt).reshape(shape)
    except (TypeError, ValueError, OverflowError):
        raise InvalidPlan(
            f"not a valid array (dtype {dtype!r}, shape {shape!r})", path=where
        ) from None
    if dt.kind == "f" and not np.all(np.isfinite(arr)):
        raise InvalidPlan("scales and offsets must be finite numbers", path=where)
    return arr


def _number(value: Any, where: str, integral: bool = False) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidPlan(f"expected a number, got {value!r}", path=where)
    if integral and not isinstance(value, int):
        raise InvalidPlan(f"expected an integer, got {value!r}", path=where)
    return value


def _config_from_json(d: Any, where: str) -> TensorQuantConfig:
    if not isinstance(d, Mapping):
        raise InvalidPlan("expected an object", path=where)
    known = {
        "state",
        "policy",
        "num_bits",
        "quant_min",
        "quant_max",
        "exponent_bits",
        "rounding",
        "channel_axis",
        "observer",
        "visibility",
        "scale",
        "offset",
    }
    extra = set(d) - known
    if extra:
        raise InvalidPlan(f"unknown field(s) {sorted(extra)}", path=where)
    policy_text = _need(d, "policy", where)
    if not isinstance(policy_text, str):
        raise InvalidPlan("expected a string", path=f"{where}.policy")
    axis = d.get("channel_axis")
    if axis is not None:
        axis = _number(axis, f"{where}.channel_axis", integral=True)
    observer = d.get("observer")
    if observer is not None and not isinstance(observer, str):
        raise InvalidPlan("expected a string or null", path=f"{where}.observer")
    try:
        return TensorQuantConfig(
            policy=QuantPolicy.parse(policy_text),
            num_bits=int(_number(_need(d, "num_bits", where), f"{where}.num_bits", True)),
            quant_min=_number(_need(d, "quant_min", where), f"{where}.quant_min"),
            quant_max=_number(_need(d, "quant_max", where), f"{where}.quant_max"),
            exponent_bits=int(_number(d.get("exponent_bits", 0), f"{where}.exponent_bits", True)),
            rounding=_enum(
                RoundingPolicy, d.get("rounding", "ROUND_HALF_EVEN"), f"{where}.rounding"
            ),
            channel_axis=axis,  # type: ignore[arg-type]
            observer=observer,
            scale=_array_from_json(d.get("scale"), f"{where}.scale"),
            offset=_array_from_json(d.get("offset"), f"{where}.offset"),
            visibility=_enum(
                Visibility, d.get("visibility", "EXPORT_WHEN_ACTIVE"), f"{where}.visibility"
            ),
            state=_enum(QuantState, _need(d, "state", where), f"{where}.state"),
        )
    except InvalidPlan as e:
        if e.path is not None:
            raise
        raise InvalidPlan(e.reason, path=where) from None


def plan_from_dict(graph: Graph, data: Any, *, source: str = "plan") -> QuantPlan:
    """Rebuild a plan for ``graph`` from :func:`plan_to_dict` data, validating every field."""
    if not isinstance(data, Mapping):
        raise InvalidPlan("expected a JSON object at the top level", path=source)
    if data.get("format") != PLAN_FORMAT:
        raise InvalidPlan(f"field 'format' must be {PLAN_FORMAT!r}", path=source)
    version = data.get("version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise InvalidPlan(
            f"unsupported version {version!r} (this fusekit reads "
            f"{', '.join(map(str, _READABLE_VERSIONS))})",
            path=source,
        )
    record = _check_graph_record(graph, data, version, source)
    raw_configs = _need(data, "configs", source)
    if not isinstance(raw_configs, list):
        raise InvalidPlan("expected a list", path=f"{source}.configs")
    table = [_config_from_json(c, f"{source}.configs[{i}]") for i, c in enumerate(raw_configs)]
    idx = graph.index
    configs: list[TensorQuantConfig | None] = [None] * idx.n_slots
    dispatch: list[str | None] = [None] * len(idx.op_names)
    ops = _need(data, "ops", source)
    if not isinstance(ops, Mapping):
        raise InvalidPlan("expected an object", path=f"{source}.ops")
    for name, entry in ops.items():
        where = f"{source}.ops[{name!r}]"
        oid = idx.op_id.get(name)
        if oid is None:
            raise InvalidPlan(f"the graph has no op named {name!r}", path=where)
        platform = _need(entry, "platform", where)
        if not isinstance(platform, str) or not platform:
            raise InvalidPlan("expected a non-empty string", path=f"{where}.platform")
        dispatch[oid] = platform
        for side, sids in (("in", idx.input_sids(oid)), ("out", idx.output_sids(oid))):
            refs = _need(entry, side, where)
            if not isinstance(refs, list) or len(refs) != len(sids):
                raise InvalidPlan(
                    f"expected a list of {len(sids)} config indices "
                    f"({name} has {len(sids)} {'inputs' if side == 'in' else 'outputs'})",
                    path=f"{where}.{side}",
                )
            for k, (r, sid) in enumerate(zip(refs, sids)):
                if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < len(table):
                    raise InvalidPlan(
                        f"config index {r!r} out of range", path=f"{where}.{side}[{k}]"
                    )
                configs[sid] = table[r]
    links: list[tuple[int, int, LinkKind]] = []
    raw_links = data.get("links", {})
    if not isinstance(raw_links, Mapping):
        raise InvalidPlan("expected an object", path=f"{source}.links")
    for key, value in raw_links.items():
        where = f"{source}.links[{key!r}]"
        try:
            child = idx.slot_id(Slot.parse(key))
        except UnknownSlot as e:
            raise InvalidPlan(f"{e}", path=where) from None
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
            raise InvalidPlan("expected [parent slot, 'overlap' | 'follow']", path=where)
        try:
            parent = idx.slot_id(Slot.parse(value[0]))
        except UnknownSlot as e:
            raise InvalidPlan(f"{e}", path=where) from None
        kind = _KINDS.get(value[1]) if isinstance(value[1], str) else None
        if kind is None:
            raise InvalidPlan(f"link kind {value[1]!r} is not 'overlap' or 'follow'", path=where)
        if configs[child] is None or configs[parent] is None:
            raise InvalidPlan("links a slot of an op the plan does not quantize", path=where)
        if child == parent:
            raise InvalidPlan("a slot cannot be linked to itself", path=where)
        links.append((child, parent, kind))
    # the sharing structure is validated (no cycle) by quant.py, which owns its encoding
    plan = QuantPlan.from_ids(graph, configs, dispatch, links, where=f"{source}.links")
    refuse_other_floats(graph, plan)  # as init_plan: no plan may claim a float16 tensor
    if record is not None and record[2] != len(plan):
        raise PlanGraphMismatch(
            f"{source}: the plan was written for another graph: its graph record says "
            f"{record[2]} quantized slots, its ops give {len(plan)} here",
            "quantized slot count",
        )
    return plan


def _check_graph_record(
    graph: Graph, data: Mapping[str, Any], version: int, source: str
) -> tuple[str, int, int] | None:
    """Compare the file's ``graph`` record with ``graph``; refuse a plan of another model.

    Returns (name, ops, slots) for the final slot-count check, or None for a version-1 dict
    without a record (hand-made data; 0.1 always wrote one).
    """
    where = f"{source}.graph"
    if "graph" not in data and version == 1:
        return None
    rec = _need(data, "graph", source)
    if not isinstance(rec, Mapping):
        raise InvalidPlan("expected an object", path=where)
    name = _need(rec, "name", where)
    if not isinstance(name, str):
        raise InvalidPlan("expected a string", path=f"{where}.name")
    n_ops = _number(_need(rec, "ops", where), f"{where}.ops", integral=True)
    n_slots = _number(_need(rec, "slots", where), f"{where}.slots", integral=True)
    here = graph.name

    def refuse(what: str) -> PlanGraphMismatch:
        return PlanGraphMismatch(
            f"{source}: the plan was written for another graph ({what}); "
            "make a new plan for this model",
            what,
        )

    if name != here:
        raise refuse(f"graph name {name!r}, this graph is {here!r}")
    if n_ops != len(graph):
        raise refuse(f"{n_ops} ops, this graph has {len(graph)}")
    if version >= 2:
        fp = _need(rec, "fingerprint", where)
        if not isinstance(fp, str):
            raise InvalidPlan("expected a string", path=f"{where}.fingerprint")
        if fp != graph.fingerprint():
            raise refuse(
                f"structural fingerprint {fp}, this graph's is {graph.fingerprint()}: "
                "an op's type, domain or wiring differs"
            )
    return name, int(n_ops), int(n_slots)


def plan_from_json(graph: Graph, text: str | bytes, *, source: str = "plan") -> QuantPlan:
    """Parse :func:`plan_to_json` output back into a plan for ``graph``."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidPlan(f"not valid JSON ({e})", path=source) from None
    return plan_from_dict(graph, data, source=source)


def load_plan(graph: Graph, path: str | Path) -> QuantPlan:
    """Read a plan JSON file written by :func:`save_plan` (for the same graph)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidPlan("no such file", file=str(p))
    try:
        return plan_from_json(graph, p.read_bytes(), source=str(p))
    except InvalidPlan as e:
        e.file = str(p)  # the paths in the message already start with it
        raise
