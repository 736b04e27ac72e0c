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
from pyrsistent import pvector

from ._util import write_bytes_atomic
from .dispatch import refuse_other_floats
from .errors import InvalidPlan, PlanGraphMismatch, UnknownSlot
from .graph import Graph, Slot
from .quant import (
    NO_LINK,
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
    configs, link_v, dispatch = plan.configs, plan.links, plan.dispatch
    for name in plan.graph.order:
        oid = idx.op_id[name]
        platform = dispatch[oid]
        if platform is None:
            continue
        ins = [ref(configs[s]) for s in idx.input_sids(oid)]
        outs = [ref(configs[s]) for s in idx.output_sids(oid)]
        ops[name] = {"platform": platform, "in": ins, "out": outs}
        for s in idx.slot_ids_of(oid):
            link = link_v[s]
            if link >= 0:
                kind = "overlap" if link & 1 == LinkKind.OVERLAP else "follow"
                links[str(idx.slot_key(s))] = [str(idx.slot_key(link >> 1)), kind]
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
        raise InvalidPlan(f"{where}: expected an object")
    if key not in d:
        raise InvalidPlan(f"{where}: missing field {key!r}")
    return d[key]


def _enum(cls: Any, value: Any, where: str) -> Any:
    try:
        return cls[value]
    except (KeyError, TypeError):
        names = ", ".join(m for m in cls.__members__)
        raise InvalidPlan(f"{where}: {value!r} is not one of {names}") from None


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
            f"{where}: not a valid array (dtype {dtype!r}, shape {shape!r})"
        ) from None
    if dt.kind == "f" and not np.all(np.isfinite(arr)):
        raise InvalidPlan(f"{where}: scales and offsets must be finite numbers")
    return arr


def _number(value: Any, where: str, integral: bool = False) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidPlan(f"{where}: expected a number, got {value!r}")
    if integral and not isinstance(value, int):
        raise InvalidPlan(f"{where}: expected an integer, got {value!r}")
    return value


def _config_from_json(d: Any, where: str) -> TensorQuantConfig:
    if not isinstance(d, Mapping):
        raise InvalidPlan(f"{where}: expected an object")
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
        raise InvalidPlan(f"{where}: unknown field(s) {sorted(extra)}")
    policy_text = _need(d, "policy", where)
    if not isinstance(policy_text, str):
        raise InvalidPlan(f"{where}.policy: expected a string")
    axis = d.get("channel_axis")
    if axis is not None:
        axis = _number(axis, f"{where}.channel_axis", integral=True)
    observer = d.get("observer")
    if observer is not None and not isinstance(observer, str):
        raise InvalidPlan(f"{where}.observer: expected a string or null")
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
        if str(e).startswith(where):
            raise
        raise InvalidPlan(f"{where}: {e}") from None


def plan_from_dict(graph: Graph, data: Any, *, source: str = "plan") -> QuantPlan:
    """Rebuild a plan for ``graph`` from :func:`plan_to_dict` data, validating every field."""
    if not isinstance(data, Mapping):
        raise InvalidPlan(f"{source}: expected a JSON object at the top level")
    if data.get("format") != PLAN_FORMAT:
        raise InvalidPlan(f"{source}: field 'format' must be {PLAN_FORMAT!r}")
    version = data.get("version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise InvalidPlan(
            f"{source}: unsupported version {version!r} (this fusekit reads "
            f"{', '.join(map(str, _READABLE_VERSIONS))})"
        )
    record = _check_graph_record(graph, data, version, source)
    raw_configs = _need(data, "configs", source)
    if not isinstance(raw_configs, list):
        raise InvalidPlan(f"{source}.configs: expected a list")
    table = [_config_from_json(c, f"{source}.configs[{i}]") for i, c in enumerate(raw_configs)]
    idx = graph.index
    configs: list[TensorQuantConfig | None] = [None] * idx.n_slots
    dispatch: list[str | None] = [None] * len(idx.op_names)
    ops = _need(data, "ops", source)
    if not isinstance(ops, Mapping):
        raise InvalidPlan(f"{source}.ops: expected an object")
    for name, entry in ops.items():
        where = f"{source}.ops[{name!r}]"
        oid = idx.op_id.get(name)
        if oid is None:
            raise InvalidPlan(f"{where}: the graph has no op named {name!r}")
        platform = _need(entry, "platform", where)
        if not isinstance(platform, str) or not platform:
            raise InvalidPlan(f"{where}.platform: expected a non-empty string")
        dispatch[oid] = platform
        for side, sids in (("in", idx.input_sids(oid)), ("out", idx.output_sids(oid))):
            refs = _need(entry, side, where)
            if not isinstance(refs, list) or len(refs) != len(sids):
                raise InvalidPlan(
                    f"{where}.{side}: expected a list of {len(sids)} config indices "
                    f"({name} has {len(sids)} {'inputs' if side == 'in' else 'outputs'})"
                )
            for k, (r, sid) in enumerate(zip(refs, sids)):
                if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < len(table):
                    raise InvalidPlan(f"{where}.{side}[{k}]: config index {r!r} out of range")
                configs[sid] = table[r]
    links = [NO_LINK] * idx.n_slots
    raw_links = data.get("links", {})
    if not isinstance(raw_links, Mapping):
        raise InvalidPlan(f"{source}.links: expected an object")
    for key, value in raw_links.items():
        where = f"{source}.links[{key!r}]"
        try:
            child = idx.slot_id(Slot.parse(key))
        except UnknownSlot as e:
            raise InvalidPlan(f"{where}: {e}") from None
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
            raise InvalidPlan(f"{where}: expected [parent slot, 'overlap' | 'follow']")
        try:
            parent = idx.slot_id(Slot.parse(value[0]))
        except UnknownSlot as e:
            raise InvalidPlan(f"{where}: {e}") from None
        kind = _KINDS.get(value[1]) if isinstance(value[1], str) else None
        if kind is None:
            raise InvalidPlan(f"{where}: link kind {value[1]!r} is not 'overlap' or 'follow'")
        if configs[child] is None or configs[parent] is None:
            raise InvalidPlan(f"{where}: links a slot of an op the plan does not quantize")
        if child == parent:
            raise InvalidPlan(f"{where}: a slot cannot be linked to itself")
        links[child] = parent * 2 + int(kind)
    _check_acyclic(links, idx, source)
    plan = QuantPlan(graph, pvector(configs), pvector(links), pvector(dispatch))
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
        raise InvalidPlan(f"{where}: expected an object")
    name = _need(rec, "name", where)
    if not isinstance(name, str):
        raise InvalidPlan(f"{where}.name: expected a string")
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
            raise InvalidPlan(f"{where}.fingerprint: expected a string")
        if fp != graph.fingerprint():
            raise refuse(
                f"structural fingerprint {fp}, this graph's is {graph.fingerprint()}: "
                "an op's type, domain or wiring differs"
            )
    return name, int(n_ops), int(n_slots)


def _check_acyclic(links: list[int], idx: Any, source: str) -> None:
    state = [0] * len(links)  # 0 unvisited, 1 on the current path, 2 done
    for start in range(len(links)):
        if state[start]:
            continue
        path = []
        s = start
        while s >= 0 and state[s] == 0:
            state[s] = 1
            path.append(s)
            s = links[s] >> 1 if links[s] >= 0 else -1
        if s >= 0 and state[s] == 1:
            cyc = [*path[path.index(s) :], s]
            chain = " -> ".join(str(idx.slot_key(x)) for x in cyc)
            raise InvalidPlan(f"{source}.links: sharing cycle {chain}")
        for p in path:
            state[p] = 2


def plan_from_json(graph: Graph, text: str | bytes, *, source: str = "plan") -> QuantPlan:
    """Parse :func:`plan_to_json` output back into a plan for ``graph``."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidPlan(f"{source}: not valid JSON ({e})") from None
    return plan_from_dict(graph, data, source=source)


def load_plan(graph: Graph, path: str | Path) -> QuantPlan:
    """Read a plan JSON file written by :func:`save_plan` (for the same graph)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidPlan(f"{p}: no such file")
    return plan_from_json(graph, p.read_bytes(), source=str(p))
