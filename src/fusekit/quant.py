"""Quantization plans: a config for every slot, and which slots share one scale.

A :class:`QuantPlan` is the value every fusion pass turns into a new version. It holds

* a :class:`TensorQuantConfig` per slot of every quantized op (PPQ's ``TensorQuantizationConfig``:
  policy, bits, range, rounding, observer, state, scale and offset), and
* the sharing structure, a persistent union-find over slots with PPQ's two link kinds:
  ``overlap`` (PPQ ``dominated_by``: the slot is switched off and reads its root's scale) and
  ``follow`` (PPQ ``master_by``: the slot stays active but quantizes with its master's scale).

Plans are immutable. Every update (:meth:`QuantPlan.overlap`, :meth:`QuantPlan.follow`,
:meth:`QuantPlan.with_config`, :meth:`QuantPlan.set_scale`) returns a new plan that shares all
unchanged data with the old one. Passes batch their updates through a :class:`PlanEvolver`
(a transient, like pyrsistent's evolvers); if nothing changed it gives back the very same plan
object, so "did this pass do anything" is ``result.plan is plan``.

Internally slots are numbered by the graph's :class:`~fusekit.graph.GraphIndex` and configs and
links live in persistent vectors indexed by slot id; the public API speaks :class:`Slot` keys.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

import attrs
import numpy as np
from pyrsistent import PVector, pvector

from .errors import InvalidPlan, NotARoot, PlanGraphMismatch, SharingCycle, UnknownSlot
from .graph import Graph, GraphIndex, Slot

__all__ = [
    "LinkKind",
    "NotARoot",
    "PlanEvolver",
    "QuantPlan",
    "QuantPolicy",
    "QuantProperty",
    "QuantState",
    "ReadVector",
    "RoundingPolicy",
    "SlotDiff",
    "TensorQuantConfig",
    "Visibility",
    "check_plan_graph",
    "dequantize_values",
    "diff",
    "graph_difference",
    "minmax_to_scale_offset",
    "minmax_to_scale_offset_array",
    "quantize_values",
    "scale_range",
]


# --------------------------------------------------------------------------------------------
# Enums (PPQ 0.6.6 names and numbers)


class QuantState(enum.IntEnum):
    """The life-cycle state of one slot's config, with PPQ's meanings.

    ``INITIAL``: no scale yet, will be calibrated. ``ACTIVATED``: own scale, quantizes.
    ``OVERLAPPED``: switched off, another slot quantizes this tensor (fused). ``PASSIVE``: quantizes
    with a scale that belongs to another slot (bias, aligned inputs). ``PASSIVE_INIT``: passive,
    master not calibrated yet. ``BAKED``/``PASSIVE_BAKED``: the parameter already holds its
    quantized value. ``FP32``: never quantized.
    """

    INITIAL = 1
    BAKED = 2
    OVERLAPPED = 3
    ACTIVATED = 4
    PASSIVE = 5
    PASSIVE_INIT = 6
    PASSIVE_BAKED = 7
    FP32 = 8

    # Named sets of states, one definition each (assigned below the class: an enum's body
    # would make them members). Modules test membership in these, never in literal tuples.
    #: ACTIVATED, PASSIVE: the slot quantizes its tensor with a scale it has now.
    ACTIVE: ClassVar[frozenset[QuantState]]
    #: INITIAL, PASSIVE_INIT: a quantization point still waiting for calibration.
    PENDING: ClassVar[frozenset[QuantState]]
    #: PASSIVE, PASSIVE_INIT: the scale belongs to another slot (calibrated or not yet).
    PASSIVE_LIKE: ClassVar[frozenset[QuantState]]
    #: ACTIVE | PENDING: a quantization point (a Q/DQ pair on export once calibrated).
    POINT: ClassVar[frozenset[QuantState]]
    #: ACTIVE plus BAKED, PASSIVE_BAKED: what export writes (PPQ's ``can_export`` and active).
    EXPORTED: ClassVar[frozenset[QuantState]]

    @property
    def is_active(self) -> bool:
        """True for the states in which the slot quantizes its tensor (ACTIVATED, PASSIVE)."""
        return self in QuantState.ACTIVE

    @property
    def can_export(self) -> bool:
        """PPQ's ``QuantizationStates.can_export``: False only for INITIAL and PASSIVE_INIT."""
        return self not in QuantState.PENDING


QuantState.ACTIVE = frozenset({QuantState.ACTIVATED, QuantState.PASSIVE})
QuantState.PENDING = frozenset({QuantState.INITIAL, QuantState.PASSIVE_INIT})
QuantState.PASSIVE_LIKE = frozenset({QuantState.PASSIVE, QuantState.PASSIVE_INIT})
QuantState.POINT = QuantState.ACTIVE | QuantState.PENDING
QuantState.EXPORTED = QuantState.ACTIVE | {QuantState.BAKED, QuantState.PASSIVE_BAKED}
_ACTIVE = QuantState.ACTIVE


def _enum_name(self: enum.Enum) -> str:
    return self.name


_EXPORT_STATES = QuantState.EXPORTED


class QuantProperty(enum.IntFlag):
    """Policy bit flags, as PPQ numbers them."""

    PER_TENSOR = 0x1
    PER_CHANNEL = 0x2
    LINEAR = 0x4
    FLOATING = 0x8
    SYMMETRICAL = 0x10
    ASYMMETRICAL = 0x20
    POWER_OF_2 = 0x40
    DYNAMIC = 0x80


def _accepted_policies() -> frozenset[int]:
    P = QuantProperty
    out: set[int] = set()
    for sym in (P.SYMMETRICAL, P.ASYMMETRICAL):
        for gran in (P.PER_TENSOR, P.PER_CHANNEL):
            for p2 in (0, P.POWER_OF_2):
                out.add(int(P.LINEAR | sym | gran | p2))
                out.add(int(P.LINEAR | sym | gran | p2 | P.DYNAMIC))
    for gran in (P.PER_TENSOR, P.PER_CHANNEL):
        # PPQ accepts FP8 only with power-of-two scales; TensorRT's FP8 takes any float scale
        for p2 in (0, P.POWER_OF_2):
            out.add(int(P.FLOATING | P.SYMMETRICAL | gran | p2))
    return frozenset(out)


_ACCEPTED = _accepted_policies()
_PER_CHANNEL = int(QuantProperty.PER_CHANNEL)
_SYMMETRICAL = int(QuantProperty.SYMMETRICAL)
_FLOATING = int(QuantProperty.FLOATING)


def _check_policy(_: object, __: object, value: int) -> None:
    if int(value) not in _ACCEPTED:
        raise InvalidPlan(
            f"quantization policy {QuantProperty(value)!r} is not a combination PPQ accepts"
        )


@attrs.frozen
class QuantPolicy:
    """A validated combination of :class:`QuantProperty` flags (only PPQ's 18 combinations).

    ``str(policy)`` is PPQ's spelling, e.g. ``"PER_TENSOR+LINEAR+SYMMETRICAL"``.
    """

    flags: int = attrs.field(converter=int, validator=_check_policy)

    @classmethod
    def of(cls, *props: QuantProperty | str) -> QuantPolicy:
        """Build from flags or names: ``QuantPolicy.of("PER_TENSOR", "LINEAR", "SYMMETRICAL")``."""
        v = 0
        for p in props:
            v |= int(QuantProperty[p] if isinstance(p, str) else p)
        return cls(v)

    @classmethod
    def parse(cls, text: str) -> QuantPolicy:
        """Parse ``"PER_TENSOR+LINEAR+SYMMETRICAL"`` (order free)."""
        try:
            return cls.of(*[p.strip() for p in text.split("+") if p.strip()])
        except KeyError as e:
            raise InvalidPlan(f"unknown policy flag {e.args[0]!r} in {text!r}") from None

    def has(self, prop: QuantProperty) -> bool:
        """True if ``prop`` is set."""
        return bool(self.flags & prop)

    # The three properties below test plain ints: ``flags & QuantProperty.X`` goes through
    # IntFlag.__and__ and builds an enum member, 20x slower, and passes ask per slot.

    @property
    def per_channel(self) -> bool:
        """True for per-channel policies."""
        return bool(self.flags & _PER_CHANNEL)

    @property
    def symmetric(self) -> bool:
        """True for symmetric policies."""
        return bool(self.flags & _SYMMETRICAL)

    @property
    def floating(self) -> bool:
        """True for floating-point (FP8-style) policies."""
        return bool(self.flags & _FLOATING)

    def names(self) -> tuple[str, ...]:
        """Flag names in PPQ's order (ascending bit value)."""
        return tuple(p.name for p in QuantProperty if self.flags & p and p.name)

    def __str__(self) -> str:
        return "+".join(self.names())


class RoundingPolicy(enum.IntEnum):
    """PPQ's seven rounding policies (PPQ's misspelt ``ROUND_HALF_FAR_FORM_ZERO`` is an alias)."""

    ROUND_HALF_EVEN = 0
    ROUND_HALF_UP = 1
    ROUND_HALF_DOWN = 2
    ROUND_HALF_TOWARDS_ZERO = 3
    ROUND_HALF_FAR_FROM_ZERO = 4
    ROUND_TO_NEAR_INT = 5
    ROUND_UP = 6
    ROUND_HALF_FAR_FORM_ZERO = 4  # PPQ spells it so; an alias of ROUND_HALF_FAR_FROM_ZERO


class Visibility(enum.IntEnum):
    """Whether an exporter writes a config: when active (default), always, or never."""

    FORCE_EXPORT = 1
    EXPORT_WHEN_ACTIVE = 2
    INTERNAL = 3


class LinkKind(enum.IntEnum):
    """How a slot is linked to its parent in the sharing structure."""

    OVERLAP = 0  # PPQ dominated_by: switched off, the root quantizes this tensor
    FOLLOW = 1  # PPQ master_by: still quantizes, with the master's scale/offset


# --------------------------------------------------------------------------------------------
# Tensor quantization config


def _array_or_none(value: Any) -> np.ndarray[Any, Any] | None:
    if value is None:
        return None
    arr = np.array(
        value, dtype=np.float32 if not isinstance(value, np.ndarray) else None, copy=True
    )
    arr.setflags(write=False)
    return arr


def _arrays_equal(a: np.ndarray[Any, Any] | None, b: np.ndarray[Any, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def _check_bits(inst: TensorQuantConfig, _: object, value: int) -> None:
    if not 2 <= value <= 32:
        raise InvalidPlan(f"num_bits must be in 2..32, got {value}")


def _check_exponent(inst: TensorQuantConfig, _: object, value: int) -> None:
    if not 0 <= value <= 8:
        raise InvalidPlan(f"exponent_bits must be in 0..8, got {value}")
    if value and not inst.policy.floating:
        raise InvalidPlan("exponent_bits is only allowed with a FLOATING policy")


def _check_axis(inst: TensorQuantConfig, _: object, value: int | None) -> None:
    if value is not None and not inst.policy.per_channel:
        raise InvalidPlan("channel_axis is only allowed with a PER_CHANNEL policy")


@attrs.frozen
class TensorQuantConfig:
    """How one slot is quantized (PPQ's TensorQuantizationConfig, as a value).

    ``quant_min``/``quant_max`` are ints for LINEAR policies and floats (e.g. +-448.0) for FLOATING
    ones. ``scale``/``offset`` are None until calibration, then read-only numpy arrays. A slot
    that shares another slot's scale keeps its own policy and bits (PPQ does the same); the
    shared scale is read with :meth:`QuantPlan.scale_of`.
    """

    policy: QuantPolicy
    num_bits: int = attrs.field(default=8, validator=_check_bits)
    quant_min: int | float = -128
    quant_max: int | float = 127
    exponent_bits: int = attrs.field(default=0, validator=_check_exponent)
    rounding: RoundingPolicy = RoundingPolicy.ROUND_HALF_EVEN
    channel_axis: int | None = attrs.field(default=None, validator=_check_axis)
    observer: str | None = None
    scale: np.ndarray[Any, Any] | None = attrs.field(
        default=None, converter=_array_or_none, eq=attrs.cmp_using(eq=_arrays_equal), hash=False
    )
    offset: np.ndarray[Any, Any] | None = attrs.field(
        default=None, converter=_array_or_none, eq=attrs.cmp_using(eq=_arrays_equal), hash=False
    )
    visibility: Visibility = Visibility.EXPORT_WHEN_ACTIVE
    state: QuantState = QuantState.INITIAL

    @property
    def is_active(self) -> bool:
        """True if the config quantizes its tensor now (ACTIVATED or PASSIVE)."""
        return self.state in _ACTIVE

    def can_export(
        self, export_overlapped: bool = False, *, scale: Any = None, offset: Any = None
    ) -> bool:
        """PPQ's ``TensorQuantizationConfig.can_export``.

        False for INTERNAL visibility; otherwise scale and offset must exist (pass the resolved
        ones with ``scale=``/``offset=`` for a slot that shares its root's) and the state must be
        ACTIVATED, PASSIVE, BAKED or PASSIVE_BAKED (or OVERLAPPED with ``export_overlapped``), or
        the visibility FORCE_EXPORT.
        """
        if self.visibility == Visibility.INTERNAL:
            return False
        s = self.scale if scale is None else scale
        o = self.offset if offset is None else offset
        if s is None or o is None:
            return False
        if self.visibility == Visibility.FORCE_EXPORT:
            return True
        return self.state in _EXPORT_STATES or (
            export_overlapped and self.state == QuantState.OVERLAPPED
        )

    def same_scheme(self, other: TensorQuantConfig) -> bool:
        """PPQ's ``is_same_scheme``: equal range, policy, bits, exponent, axis and rounding."""
        if self is other:
            return True
        return (
            self.quant_max == other.quant_max
            and self.quant_min == other.quant_min
            and self.policy == other.policy
            and self.num_bits == other.num_bits
            and self.exponent_bits == other.exponent_bits
            and self.channel_axis == other.channel_axis
            and self.rounding == other.rounding
        )

    def with_state(self, state: QuantState) -> TensorQuantConfig:
        """The same config in another state (a fast copy; passes call this in hot loops).

        An uncalibrated config returns one shared object per (config, state): ``init_plan``
        gives thousands of slots the same config object, so a pass that overlaps them all
        allocates nothing (see :func:`_variant`).
        """
        if self.state is state:
            return self
        if self.scale is None:
            entry = _VARIANTS.get(id(self))  # _variant's lookup, inlined for the hot path
            if entry is not None and entry[0] is self:
                new = entry[1].get(state)
                if new is not None:
                    return new
            return _variant(self, state, None)
        return _fast_replace(self, state=state)

    def with_visibility(self, visibility: Visibility) -> TensorQuantConfig:
        """The same config with another visibility (shared like :meth:`with_state`)."""
        if self.visibility is visibility:
            return self
        if self.scale is None:
            return _variant(self, None, visibility)
        return _fast_replace(self, visibility=visibility)

    def with_scale(self, scale: Any, offset: Any) -> TensorQuantConfig:
        """The same config with a scale and offset."""
        return _fast_replace(self, scale=_array_or_none(scale), offset=_array_or_none(offset))


_TQC_FIELDS = tuple(f.name for f in attrs.fields(TensorQuantConfig))
_TQC_SETTERS = tuple(TensorQuantConfig.__dict__[n].__set__ for n in _TQC_FIELDS)


def _fast_replace(cfg: TensorQuantConfig, **changes: Any) -> TensorQuantConfig:
    """Copy ``cfg`` with ``changes`` without re-running converters/validators (3x faster)."""
    new = object.__new__(TensorQuantConfig)
    for name, setter in zip(_TQC_FIELDS, _TQC_SETTERS):
        setter(new, changes[name] if name in changes else getattr(cfg, name))
    return new


def _scaled_copy(
    cfg: TensorQuantConfig,
    scale: np.ndarray[Any, Any],
    offset: np.ndarray[Any, Any],
    state: QuantState,
) -> TensorQuantConfig:
    """Copy ``cfg`` with ``scale``, ``offset`` and ``state``, the arrays taken as they are.

    The bulk builder's path (the importer makes one per quantization point, tens of thousands
    on a large model): the caller passes read-only float32 arrays it made itself, so neither
    the converter's copy nor :func:`_fast_replace`'s keyword lookups run (~4x cheaper).
    """
    new = object.__new__(TensorQuantConfig)
    for setter, value in zip(
        _TQC_SETTERS,
        (
            cfg.policy,
            cfg.num_bits,
            cfg.quant_min,
            cfg.quant_max,
            cfg.exponent_bits,
            cfg.rounding,
            cfg.channel_axis,
            cfg.observer,
            scale,
            offset,
            cfg.visibility,
            state,
        ),
        strict=True,
    ):
        setter(new, value)
    return new


# the field order _scaled_copy writes in (checked at import, also under ``python -O``)
if _TQC_FIELDS != (
    "policy",
    "num_bits",
    "quant_min",
    "quant_max",
    "exponent_bits",
    "rounding",
    "channel_axis",
    "observer",
    "scale",
    "offset",
    "visibility",
    "state",
):
    raise ImportError(f"TensorQuantConfig's fields changed order: {_TQC_FIELDS}")


# id(config) -> (config, {state: variant}, {visibility: variant}). Holding the config keeps
# its id from being reused while the entry exists. Bounded: cleared when full, which only
# costs later calls a fresh copy (variants are equal by value either way).
_VARIANTS: dict[
    int,
    tuple[
        TensorQuantConfig,
        dict[QuantState, TensorQuantConfig],
        dict[Visibility, TensorQuantConfig],
    ],
] = {}
_MAX_VARIANTS = 4096


def _variant(
    cfg: TensorQuantConfig, state: QuantState | None, visibility: Visibility | None
) -> TensorQuantConfig:
    """The shared copy of an uncalibrated ``cfg`` with another state or visibility.

    Passes derive configs in their inner loops (an overlapped slot, a passive bias, an
    internal Clip bound). Allocating one object per slot cost more than the pass's logic and
    made every plan version hold its own copies; sharing one variant per (config, change)
    keeps the copies out of the hot loop and the plan versions small. Configs with a scale
    are not shared: they are calibrated one root at a time, so they rarely repeat.
    """
    entry = _VARIANTS.get(id(cfg))
    if entry is None or entry[0] is not cfg:
        if len(_VARIANTS) >= _MAX_VARIANTS:
            _VARIANTS.clear()
        entry = _VARIANTS[id(cfg)] = (cfg, {}, {})
    if state is not None:
        new = entry[1].get(state)
        if new is None:
            new = entry[1][state] = _fast_replace(cfg, state=state)
    else:
        assert visibility is not None
        new = entry[2].get(visibility)
        if new is None:
            new = entry[2][visibility] = _fast_replace(cfg, visibility=visibility)
    return new


# --------------------------------------------------------------------------------------------
# The plan


# The sharing structure is stored as one int per slot id: NO_LINK for a root, else
# ``parent * 2 + kind``. That encoding is private to this module: every other module asks
# QuantPlan / PlanEvolver (parent_id, link_kind_id, root_id, follower_ids, ...). NO_LINK is
# exported only for building a plan with no links (``pvector([NO_LINK] * n)``).
NO_LINK = -1
_KIND_OF = (LinkKind.OVERLAP, LinkKind.FOLLOW)  # link & 1 -> kind, without an enum call

_T_co = TypeVar("_T_co", covariant=True)


class ReadVector(Protocol[_T_co]):
    """What a plan evolver's live tables offer a pass: indexing by id and a length (no writes:
    writes go through the evolver's methods, which keep the change flag and the log right)."""

    def __getitem__(self, i: int, /) -> _T_co: ...

    def __len__(self) -> int: ...


def _cycle_error(
    links: Any, start: int, key: Callable[[int], Slot] | None, where: str | None
) -> InvalidPlan:
    """The error for a link chain from ``start`` that never reaches a root, naming the loop."""
    seen: dict[int, int] = {}
    path: list[int] = []
    s = start
    while s >= 0 and s not in seen:
        seen[s] = len(path)
        path.append(s)
        link = links[s]
        s = link >> 1 if link >= 0 else -1
    loop = [*path[seen[s] :], s] if s >= 0 else path
    text = " -> ".join(str(key(x)) if key is not None else str(x) for x in loop)
    slot = key(loop[0]) if key is not None and loop else None
    return InvalidPlan(f"sharing cycle {text}", path=where, slot=None if where else slot)


def _root(links: Any, sid: int) -> int:
    """Root slot id of ``sid``: the one root-finding walk (with the one cycle guard).

    A chain longer than the number of slots is a loop (impossible through the API; a
    corrupted or hand-made link table); it raises :class:`InvalidPlan` naming the loop.
    """
    link = links[sid]
    steps = 0
    limit = len(links)
    while link >= 0:
        sid = link >> 1
        link = links[sid]
        steps += 1
        if steps > limit:
            raise _cycle_error(links, sid, None, None)
    return sid


def _roots(
    links: list[int], key: Callable[[int], Slot] | None = None, where: str | None = None
) -> list[int]:
    """Root of every slot id in O(slots) (each chain walked once); raises on a loop.

    This is also the acyclicity check of a whole link table (plan files are validated with it).
    """
    n = len(links)
    roots = [-1] * n
    for sid in range(n):
        if roots[sid] >= 0:
            continue
        path = []
        s = sid
        while links[s] >= 0 and roots[s] < 0:
            path.append(s)
            if len(path) > n:
                raise _cycle_error(links, sid, key, where)
            s = links[s] >> 1
        r = roots[s] if roots[s] >= 0 else s
        roots[s] = r
        for p in path:
            roots[p] = r
    return roots


class SlotDiff(NamedTuple):
    """One slot that differs between two plans."""

    slot: Slot
    before: TensorQuantConfig | None
    after: TensorQuantConfig | None
    root_before: Slot | None
    root_after: Slot | None


@attrs.frozen(eq=False)
class QuantPlan:
    """Per-slot quantization configs of one graph plus their scale-sharing structure.

    Build one with :func:`fusekit.init_plan`. ``plan[slot]`` is the slot's
    :class:`TensorQuantConfig`; :meth:`root`, :meth:`group`, :meth:`groups`, :meth:`scale_of` query
    the sharing; :meth:`overlap`, :meth:`follow`, :meth:`with_config`, :meth:`set_scale` return
    new plans. Two plans are equal when they give every slot the same config, link and platform.
    """

    graph: Graph = attrs.field(repr=False)
    configs: PVector[Any] = attrs.field(repr=False)  # slot id -> TensorQuantConfig | None
    # slot id -> NO_LINK or parent*2 + LinkKind: private (read it with parent_id & co); the
    # constructor argument is still called ``links``
    _links: PVector[int] = attrs.field(repr=False)
    dispatch: PVector[str | None] = attrs.field(repr=False)  # op id -> platform (None: FP32)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def empty(cls, graph: Graph) -> QuantPlan:
        """A plan in which no op is quantized."""
        idx = graph.index
        n = idx.n_slots
        return cls(
            graph, pvector([None] * n), pvector([NO_LINK] * n), pvector([None] * len(idx.op_names))
        )

    @classmethod
    def from_configs(
        cls,
        graph: Graph,
        ops: Mapping[str, tuple[str, Iterable[TensorQuantConfig], Iterable[TensorQuantConfig]]],
    ) -> QuantPlan:
        """A plan from ``{op: (platform, input configs, output configs)}``; other ops unquantized.

        Validates that every op exists and that each op gets one config per input and output.
        """
        idx = graph.index
        configs: list[TensorQuantConfig | None] = [None] * idx.n_slots
        dispatch: list[str | None] = [None] * len(idx.op_names)
        for name, (platform, ins, outs) in ops.items():
            oid = idx.op_id.get(name)
            if oid is None:
                raise InvalidPlan(f"plan names op {name!r}, which the graph does not have")
            ins, outs = tuple(ins), tuple(outs)
            if len(ins) != idx.n_in[oid] or len(outs) != idx.n_out[oid]:
                raise InvalidPlan(
                    f"op {name!r} has {idx.n_in[oid]} inputs and {idx.n_out[oid]} outputs, "
                    f"the plan gives {len(ins)} and {len(outs)} configs"
                )
            base = idx.slot_base[oid]
            for k, c in enumerate((*ins, *outs)):
                if not isinstance(c, TensorQuantConfig):
                    raise InvalidPlan(f"op {name!r} slot {k}: expected a TensorQuantConfig")
                configs[base + k] = c
            dispatch[oid] = platform
        return cls(graph, pvector(configs), pvector([NO_LINK] * idx.n_slots), pvector(dispatch))

    @classmethod
    def from_ids(
        cls,
        graph: Graph,
        configs: Iterable[TensorQuantConfig | None],
        dispatch: Iterable[str | None],
        links: Iterable[tuple[int, int, LinkKind]] = (),
        *,
        where: str | None = None,
    ) -> QuantPlan:
        """A plan from tables by id: a config per slot id, a platform per op id, and the links
        as ``(slot id, parent slot id, kind)`` triples (the reader of plan files uses it).

        Validates what the ids alone can show: lengths, no slot linked to itself or twice, and
        no sharing cycle (:class:`InvalidPlan` naming the loop; ``where`` locates the links in
        the error, e.g. ``"p.json.links"``).
        """
        idx = graph.index
        cfg_v, disp_v = pvector(configs), pvector(dispatch)
        if len(cfg_v) != idx.n_slots or len(disp_v) != len(idx.op_names):
            raise InvalidPlan(
                f"expected {idx.n_slots} configs and {len(idx.op_names)} platforms, got "
                f"{len(cfg_v)} and {len(disp_v)}",
                path=where,
            )
        table = [NO_LINK] * idx.n_slots
        for child, parent, kind in links:
            if not (0 <= child < idx.n_slots and 0 <= parent < idx.n_slots):
                raise InvalidPlan(f"slot id {child} or {parent} out of range", path=where)
            if child == parent:
                raise InvalidPlan(
                    "a slot cannot be linked to itself", path=where, slot=idx.slot_key(child)
                )
            if table[child] != NO_LINK:
                raise InvalidPlan("a slot is linked twice", path=where, slot=idx.slot_key(child))
            table[child] = parent * 2 + int(kind)
        _roots(table, idx.slot_key, where)  # raises on a sharing cycle
        return cls(graph, cfg_v, pvector(table), disp_v)

    # -- equality ---------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, QuantPlan):
            return NotImplemented
        return (
            self._links == other._links
            and self.dispatch == other.dispatch
            and len(self.configs) == len(other.configs)
            and all(a is b or a == b for a, b in zip(self.configs, other.configs))
        )

    def __hash__(self) -> int:
        return hash((len(self.configs), tuple(self._links)))

    # -- slot access ------------------------------------------------------------------------

    @property
    def index(self) -> GraphIndex:
        """The graph's index (slot ids)."""
        return self.graph.index

    def _sid(self, slot: Slot) -> int:
        sid = self.graph.index.slot_id(slot)
        if self.configs[sid] is None:
            raise UnknownSlot(slot, f"op {slot[0]!r} is not quantized in this plan")
        return sid

    def __getitem__(self, slot: Slot) -> TensorQuantConfig:
        return self.configs[self._sid(slot)]  # type: ignore[no-any-return]

    def get(self, slot: Slot) -> TensorQuantConfig | None:
        """The slot's config, or None if its op is not quantized or the slot does not exist."""
        try:
            return self.configs[self.graph.index.slot_id(slot)]  # type: ignore[no-any-return]
        except UnknownSlot:
            return None

    def __contains__(self, slot: object) -> bool:
        if not isinstance(slot, tuple) or len(slot) != 3:
            return False
        return self.get(Slot(*slot)) is not None

    def slots(self) -> Iterator[Slot]:
        """Every slot of every quantized op, ops in topological order, inputs before outputs."""
        idx = self.graph.index
        configs = self.configs
        for name in self.graph.order:
            oid = idx.op_id[name]
            for sid in idx.slot_ids_of(oid):
                if configs[sid] is not None:
                    yield idx.slot_key(sid)

    def __iter__(self) -> Iterator[Slot]:
        return self.slots()

    def __len__(self) -> int:
        return sum(1 for c in self.configs if c is not None)

    def is_quantized(self, op: str) -> bool:
        """True if ``op`` is quantized in this plan."""
        oid = self.graph.index.op_id.get(op)
        return oid is not None and self.dispatch[oid] is not None

    def platform_of(self, op: str) -> str | None:
        """The platform ``op`` is dispatched to, or None if it is not quantized."""
        oid = self.graph.index.op_id.get(op)
        return None if oid is None else self.dispatch[oid]

    def state(self, slot: Slot) -> QuantState:
        """The slot's state."""
        return self[slot].state

    # -- sharing ------------------------------------------------------------------------------

    def parent_id(self, sid: int) -> int:
        """Slot id of ``sid``'s direct parent, or -1 for a root."""
        link = self._links[sid]
        return link >> 1 if link >= 0 else -1

    def link_kind_id(self, sid: int) -> LinkKind | None:
        """How slot id ``sid`` is linked to its parent (None for a root)."""
        link = self._links[sid]
        return _KIND_OF[link & 1] if link >= 0 else None

    def root_id(self, sid: int) -> int:
        """Root slot id of slot id ``sid`` (InvalidPlan if a corrupted link table loops)."""
        return _root(self._links, sid)

    def parent_ids(self) -> list[int]:
        """The direct parent of every slot id (-1 for roots), as a plain list for loops."""
        return [link >> 1 if link >= 0 else -1 for link in self._links]

    def link_table(self) -> tuple[tuple[int, LinkKind | None], ...]:
        """``(parent id, kind)`` of every slot id: the whole sharing structure as a comparable
        value (purity checks snapshot it)."""
        kind = _KIND_OF
        return tuple((x >> 1, kind[x & 1]) if x >= 0 else (-1, None) for x in self._links)

    def parent(self, slot: Slot) -> tuple[Slot, LinkKind] | None:
        """The slot's direct link ``(parent, kind)``, or None for a root."""
        sid = self._sid(slot)
        link = self._links[sid]
        if link < 0:
            return None
        return self.graph.index.slot_key(link >> 1), _KIND_OF[link & 1]

    def link_kind(self, slot: Slot) -> LinkKind | None:
        """How ``slot`` is linked to its parent: OVERLAP, FOLLOW, or None for a root."""
        return self.link_kind_id(self._sid(slot))

    def root(self, slot: Slot) -> Slot:
        """The slot whose scale/offset ``slot`` uses, following every overlap and follow link."""
        return self.graph.index.slot_key(_root(self._links, self._sid(slot)))

    def chain(self, slot: Slot) -> tuple[tuple[Slot, LinkKind | None], ...]:
        """The link path from ``slot`` to its root: ``((slot, kind), ..., (root, None))``."""
        key = self.graph.index.slot_key
        links = self._links
        sid = self._sid(slot)
        root = _root(links, sid)  # guards the walk below against a loop
        out: list[tuple[Slot, LinkKind | None]] = []
        while sid != root:
            link = links[sid]
            out.append((key(sid), _KIND_OF[link & 1]))
            sid = link >> 1
        out.append((key(root), None))
        return tuple(out)

    def root_ids(self) -> list[int]:
        """Root slot id of every slot id (-1 where the op is not quantized), in O(slots)."""
        roots = _roots(self._links.tolist(), self.graph.index.slot_key)
        for sid, cfg in enumerate(self.configs):
            if cfg is None:
                roots[sid] = -1
        return roots

    def follower_ids(self) -> dict[int, list[int]]:
        """``{root id: [slot ids linked to a parent by FOLLOW, in id order]}`` for every root
        with such members: the slots that keep quantizing with the root's scale (aligned
        inputs, Clip bounds), which calibration measures with the root."""
        links = self._links.tolist()
        configs = self.configs
        out: dict[int, list[int]] = {}
        roots: list[int] | None = None
        for sid, link in enumerate(links):
            if link >= 0 and link & 1 and configs[sid] is not None:
                if roots is None:
                    roots = _roots(links, self.graph.index.slot_key)
                out.setdefault(roots[sid], []).append(sid)
        return out

    def sharing_cycles(self) -> tuple[tuple[Slot, ...], ...]:
        """Every loop in the link table, each as ``(s, ..., s)`` (empty for any plan made
        through this API; a hand-made or corrupted table can loop). O(slots)."""
        links = self._links.tolist()
        key = self.graph.index.slot_key
        state = [0] * len(links)  # 0 unvisited, 1 on the current path, 2 done
        out: list[tuple[Slot, ...]] = []
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
                out.append(tuple(key(x) for x in (*path[path.index(s) :], s)))
            for p in path:
                state[p] = 2
        return tuple(out)

    def followers(self, root: Slot) -> tuple[Slot, ...]:
        """The slots sharing ``root``'s scale through a FOLLOW link (``root`` must be a root)."""
        sid = self._sid(root)
        if self._links[sid] >= 0:
            owner = self.graph.index.slot_key(_root(self._links, sid))
            raise NotARoot(f"{root} is not a root: it uses the scale of {owner}", slot=root)
        key = self.graph.index.slot_key
        return tuple(key(s) for s in self.follower_ids().get(sid, ()))

    def group(self, slot: Slot) -> frozenset[Slot]:
        """Every slot sharing ``slot``'s root (including both)."""
        r = _root(self._links, self._sid(slot))
        idx = self.graph.index
        return frozenset(idx.slot_key(s) for s, rr in enumerate(self.root_ids()) if rr == r)

    def groups(self, min_size: int = 2) -> tuple[frozenset[Slot], ...]:
        """Every set of at least ``min_size`` slots sharing one root, ordered by root slot id."""
        acc: dict[int, list[int]] = {}
        for s, r in enumerate(self.root_ids()):
            if r >= 0:
                acc.setdefault(r, []).append(s)
        idx = self.graph.index
        return tuple(
            frozenset(idx.slot_key(s) for s in members)
            for _, members in sorted(acc.items())
            if len(members) >= min_size
        )

    def scale_of(self, slot: Slot) -> np.ndarray[Any, Any] | None:
        """The scale ``slot`` quantizes with: its root's."""
        return self.configs[_root(self._links, self._sid(slot))].scale  # type: ignore[no-any-return]

    def offset_of(self, slot: Slot) -> np.ndarray[Any, Any] | None:
        """The offset (zero point) ``slot`` quantizes with: its root's."""
        return self.configs[_root(self._links, self._sid(slot))].offset  # type: ignore[no-any-return]

    # -- updates ------------------------------------------------------------------------------

    def evolver(self) -> PlanEvolver:
        """A transient for batching many updates (what passes use)."""
        return PlanEvolver(self)

    def overlap(self, slot: Slot, by: Slot) -> QuantPlan:
        """PPQ's ``slot.dominated_by = by``: merge ``slot``'s group into ``by``'s.

        ``slot``'s root is re-parented under ``by``'s root and so is ``slot`` itself; both become
        OVERLAPPED. If they already share a root nothing changes (PPQ raises for a root linked to
        its own member; fusekit treats both directions alike).
        """
        e = self.evolver()
        e.overlap(slot, by)
        return e.persistent()

    def follow(self, slot: Slot, master: Slot) -> QuantPlan:
        """PPQ's ``slot.master_by = master``: ``slot`` quantizes with ``master``'s scale.

        ``slot`` becomes PASSIVE (or PASSIVE_INIT while the master has no scale). Raises
        :class:`~fusekit.errors.SharingCycle` when ``master`` already depends on ``slot``.
        """
        e = self.evolver()
        e.follow(slot, master)
        return e.persistent()

    def with_config(self, slot: Slot, config: TensorQuantConfig) -> QuantPlan:
        """A plan where ``slot`` has ``config`` (its links are unchanged)."""
        e = self.evolver()
        e.set_config(slot, config)
        return e.persistent()

    def with_state(self, slot: Slot, state: QuantState) -> QuantPlan:
        """A plan where ``slot`` is in ``state``."""
        return self.with_config(slot, self[slot].with_state(state))

    def set_scale(self, root: Slot, scale: Any, offset: Any) -> QuantPlan:
        """A plan where root slot ``root`` has ``scale``/``offset`` (NotARoot for a linked slot)."""
        e = self.evolver()
        e.set_scale(root, scale, offset)
        return e.persistent()

    def unlink(self, slot: Slot) -> QuantPlan:
        """A plan where ``slot`` is its own root again (its state is left as it is)."""
        e = self.evolver()
        e.unlink(slot)
        return e.persistent()


_OVERLAPPED = QuantState.OVERLAPPED
_PASSIVE = QuantState.PASSIVE
_PASSIVE_INIT = QuantState.PASSIVE_INIT


class PlanEvolver:
    """A transient over a :class:`QuantPlan`: batch updates, then :meth:`persistent`.

    Reads see the updates made so far. :meth:`persistent` returns the original plan object when
    nothing changed. Methods taking ``sid`` work on integer slot ids (the graph index's) and are
    what passes use in their loops; the others take :class:`Slot` keys. The link encoding stays
    inside: passes read links with :meth:`parent`, :meth:`link_kind`, :meth:`follows` and
    :meth:`root`.
    """

    __slots__ = ("_cfg", "_dirty", "_dispatch", "_index", "_links", "_plan")

    def __init__(self, plan: QuantPlan):
        self._plan = plan
        self._cfg = plan.configs.evolver()
        self._links = plan._links.evolver()
        self._dispatch = plan.dispatch.evolver()
        self._index = plan.graph.index
        self._dirty = False

    @property
    def plan(self) -> QuantPlan:
        """The plan this evolver started from."""
        return self._plan

    @property
    def index(self) -> GraphIndex:
        """The graph index (slot ids)."""
        return self._index

    @property
    def configs(self) -> ReadVector[TensorQuantConfig]:
        """The configs as they are now, indexed by slot id: read them, write with the methods.

        None for the slots of unquantized ops (not in the type: passes test :meth:`platform`
        first). Passes bind this once and index it in their loops (a method call per read
        cost as much as the pass's own logic on a large graph).
        """
        return self._cfg

    @property
    def dispatch(self) -> ReadVector[str | None]:
        """The platform of every op id as it is now (read only; see :meth:`platform`)."""
        return self._dispatch

    def sid(self, slot: Slot) -> int:
        """Integer id of a slot of a quantized op."""
        sid = self._index.slot_id(slot)
        if self._cfg[sid] is None:
            raise UnknownSlot(slot, f"op {slot[0]!r} is not quantized in this plan")
        return sid

    # -- reads ----------------------------------------------------------------------------------

    def cfg(self, sid: int) -> TensorQuantConfig:
        """Config of slot id ``sid``.

        Only meaningful for slots of quantized ops; for others it returns None (not checked:
        passes call this in their inner loops and test :meth:`platform` first).
        """
        return self._cfg[sid]  # type: ignore[no-any-return]

    def parent(self, sid: int) -> int:
        """Slot id of ``sid``'s direct parent as it is now, or -1 for a root."""
        link = self._links[sid]
        return link >> 1 if link >= 0 else -1

    def link_kind(self, sid: int) -> LinkKind | None:
        """How ``sid`` is linked to its parent now (None for a root)."""
        link = self._links[sid]
        return _KIND_OF[link & 1] if link >= 0 else None

    def follows(self, sid: int, master: int) -> bool:
        """True if ``sid`` is linked to ``master`` directly by a FOLLOW link."""
        return self._links[sid] == master * 2 + 1

    def root(self, sid: int) -> int:
        """Root slot id of ``sid`` (a root answers without the walk: passes ask in loops)."""
        links = self._links
        return sid if links[sid] < 0 else _root(links, sid)

    def platform(self, oid: int) -> str | None:
        """Platform of op id ``oid`` (None if not quantized)."""
        return self._dispatch[oid]

    # -- writes ---------------------------------------------------------------------------------

    def set_cfg(self, sid: int, cfg: TensorQuantConfig | None) -> None:
        """Set the config of slot id ``sid`` (no-op if it is the same object)."""
        if self._cfg[sid] is not cfg:
            self._cfg[sid] = cfg
            self._dirty = True

    def set_state(self, sid: int, state: QuantState) -> None:
        """Set the state of slot id ``sid``."""
        cfg = self._cfg[sid]
        if cfg.state is not state:
            self._cfg[sid] = cfg.with_state(state)
            self._dirty = True

    def _set_link(self, sid: int, link: int) -> None:
        if self._links[sid] != link:
            self._links[sid] = link
            self._dirty = True

    def set_platform(self, oid: int, platform: str | None) -> None:
        """Dispatch op id ``oid`` to ``platform`` (configs must be set separately)."""
        if self._dispatch[oid] != platform:
            self._dispatch[oid] = platform
            self._dirty = True

    def overlap_sid(self, a: int, b: int) -> bool:
        """PPQ ``dominated_by`` on slot ids; returns False when nothing changed.

        Written out rather than composed from :meth:`set_state`: fusion passes call it for
        most slots of a graph, and the calls cost more than the work. So it calls
        :func:`_root` only for a linked slot, and looks the OVERLAPPED variant of a config up
        in :data:`_VARIANTS` itself (what :meth:`TensorQuantConfig.with_state` does first).
        """
        if a == b:
            raise SharingCycle([self._index.slot_key(a), self._index.slot_key(b)])
        links = self._links
        ra = a if links[a] < 0 else _root(links, a)
        rb = b if links[b] < 0 else _root(links, b)
        if ra == rb:
            return False
        link = rb << 1  # rb, OVERLAP
        links[ra] = link  # ra was a root, so this is a change
        cfgs, variants = self._cfg, _VARIANTS
        if a != ra:
            if links[a] != link:
                links[a] = link
            cfg = cfgs[a]
            if cfg.state is not _OVERLAPPED:
                entry = variants.get(id(cfg))
                new = entry[1].get(_OVERLAPPED) if entry is not None and entry[0] is cfg else None
                cfgs[a] = new if new is not None else cfg.with_state(_OVERLAPPED)
        cfg = cfgs[ra]
        if cfg.state is not _OVERLAPPED:
            entry = variants.get(id(cfg))
            new = entry[1].get(_OVERLAPPED) if entry is not None and entry[0] is cfg else None
            cfgs[ra] = new if new is not None else cfg.with_state(_OVERLAPPED)
        self._dirty = True
        return True

    def follow_sid(self, a: int, m: int) -> bool:
        """PPQ ``master_by`` on slot ids (cycle-safe); returns False when nothing changed."""
        if a == m:
            raise SharingCycle([self._index.slot_key(a), self._index.slot_key(m)])
        links = self._links
        root = m if links[m] < 0 else _root(links, m)
        if root != m and self._on_chain(a, m, root):
            chain = [m]
            x = m
            while x != a:
                x = links[x] >> 1
                chain.append(x)
            key = self._index.slot_key
            raise SharingCycle([key(a), *(key(x) for x in chain)])
        root_cfg = self._cfg[root]
        ready = root_cfg.scale is not None and root_cfg.offset is not None
        new_link = m * 2 + 1  # m, FOLLOW
        changed = links[a] != new_link
        if changed:
            links[a] = new_link
            self._dirty = True
        cfg = self._cfg[a]
        state = _PASSIVE if ready else _PASSIVE_INIT
        if cfg.state is not state:
            entry = _VARIANTS.get(id(cfg))  # with_state's lookup, inlined as in overlap_sid
            new = entry[1].get(state) if entry is not None and entry[0] is cfg else None
            self._cfg[a] = new if new is not None else cfg.with_state(state)
            self._dirty = True
            return True
        return changed

    def _on_chain(self, a: int, m: int, root: int) -> bool:
        """Is ``a`` on the link path from ``m`` to its ``root`` (so ``m`` depends on ``a``)?"""
        links = self._links
        s = m
        while s != root:
            s = links[s] >> 1
            if s == a:
                return True
        return False

    def unlink_sid(self, sid: int) -> None:
        """Make ``sid`` its own root (state unchanged)."""
        self._set_link(sid, NO_LINK)

    def overlap(self, slot: Slot, by: Slot) -> bool:
        """:meth:`QuantPlan.overlap` on this transient."""
        return self.overlap_sid(self.sid(slot), self.sid(by))

    def follow(self, slot: Slot, master: Slot) -> bool:
        """:meth:`QuantPlan.follow` on this transient."""
        return self.follow_sid(self.sid(slot), self.sid(master))

    def unlink(self, slot: Slot) -> None:
        """:meth:`QuantPlan.unlink` on this transient."""
        self.unlink_sid(self.sid(slot))

    def set_config(self, slot: Slot, cfg: TensorQuantConfig) -> None:
        """Set a slot's config."""
        if not isinstance(cfg, TensorQuantConfig):
            raise InvalidPlan("expected a TensorQuantConfig", slot=slot)
        self.set_cfg(self.sid(slot), cfg)

    def set_scale(self, slot: Slot, scale: Any, offset: Any) -> None:
        """Set the scale/offset of a root slot (NotARoot otherwise)."""
        sid = self.sid(slot)
        if self._links[sid] >= 0:
            owner = self._index.slot_key(self.root(sid))
            raise NotARoot(
                f"cannot set the scale of {slot}: it uses the scale of {owner}",
                slot=slot,
                root=owner,
            )
        self.set_cfg(sid, self._cfg[sid].with_scale(scale, offset))

    def is_dirty(self) -> bool:
        """True once any write changed something."""
        return self._dirty

    def persistent(self) -> QuantPlan:
        """The resulting plan (the original object if nothing changed)."""
        if not self._dirty:
            return self._plan
        p = self._plan
        return QuantPlan(
            p.graph, self._cfg.persistent(), self._links.persistent(), self._dispatch.persistent()
        )


def _norm_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def graph_difference(a: Graph, b: Graph) -> str | None:
    """The first structural difference between two graphs, in words (None: same structure).

    Compares what plan slots refer to: op names, then each op's domain, type and slot wiring.
    Used to explain a refused plan; costs one walk over both graphs, so only on failure.
    """
    names_a, names_b = a.ops.keys(), b.ops.keys()
    if len(names_a) != len(names_b):
        return f"{len(names_a)} ops against {len(names_b)} ops"
    for name in a.order:
        op_a = a.ops[name]
        op_b = b.ops.get(name)
        if op_b is None:
            return f"op {name!r} is missing"
        da, db = _norm_domain(op_a.domain), _norm_domain(op_b.domain)
        if (da, op_a.op_type) != (db, op_b.op_type):
            ta = f"{da}::{op_a.op_type}" if da else op_a.op_type
            tb = f"{db}::{op_b.op_type}" if db else op_b.op_type
            return f"op {name!r} is {ta} against {tb}"
        for side, xs, ys in (("in", op_a.inputs, op_b.inputs), ("out", op_a.outputs, op_b.outputs)):
            if len(xs) != len(ys):
                return f"op {name!r} has {len(xs)} {side}put slots against {len(ys)}"
            for k, (x, y) in enumerate(zip(xs, ys)):
                if x != y:
                    return f"slot {name}|{side}|{k} is tensor {x!r} against {y!r}"
    ia, ib = a.index, b.index
    if ia.n_slots != ib.n_slots or list(ia.op_names) != list(ib.op_names):
        return "the ops are numbered differently (one graph was edited after the plan was made)"
    return None


def check_plan_graph(plan: QuantPlan, graph: Graph, where: str = "") -> None:
    """Refuse a plan that was made for another graph than ``graph`` (the one check, everywhere).

    A plan addresses slots by integer id, so it fits ``graph`` only if it is the plan's own
    graph, shares its index (a graph derived without structural edits), or has the same
    structure *and* numbering. The first two are identity tests (what every pass of a pipeline
    hits); otherwise both graphs' cached :meth:`Graph.fingerprint` values are compared and the
    id vectors checked. Raises :class:`~fusekit.errors.PlanGraphMismatch` naming the first
    difference. ``where`` prefixes the message (the caller's name).
    """
    pg = plan.graph
    if pg is graph:
        return
    pi, gi = pg.index, graph.index
    if pi is gi:
        return
    if (
        len(plan.configs) == gi.n_slots
        and pg.fingerprint() == graph.fingerprint()
        and pi.op_names == gi.op_names
        and pi.n_in == gi.n_in
        and pi.n_out == gi.n_out
    ):
        return
    what = graph_difference(pg, graph) or "the slot numbering differs"
    prefix = f"{where}: " if where else ""
    name_p, name_g = pg.name or "unnamed", graph.name or "unnamed"
    raise PlanGraphMismatch(
        f"{prefix}the plan belongs to a different graph (made for {name_p!r}, another graph "
        f"than {name_g!r}): {what} (plan's graph against this one)",
        what,
    )


def diff(a: QuantPlan, b: QuantPlan) -> tuple[SlotDiff, ...]:
    """Slots whose config or root differ between two plans of the same graph, in slot-id order."""
    if a is b:
        return ()
    check_plan_graph(b, a.graph, "diff")
    ra, rb = a.root_ids(), b.root_ids()
    idx = a.graph.index
    out: list[SlotDiff] = []
    for sid, (ca, cb) in enumerate(zip(a.configs, b.configs)):
        if ca is cb and ra[sid] == rb[sid]:
            continue
        if ca is not None and cb is not None and ca == cb and ra[sid] == rb[sid]:
            continue
        out.append(
            SlotDiff(
                idx.slot_key(sid),
                ca,
                cb,
                idx.slot_key(ra[sid]) if ra[sid] >= 0 else None,
                idx.slot_key(rb[sid]) if rb[sid] >= 0 else None,
            )
        )
    return tuple(out)


OBSERVER_MIN_SCALE = 1e-8


def minmax_to_scale_offset(
    min_val: float, max_val: float, cfg: TensorQuantConfig
) -> tuple[float, float]:
    """Scale and offset covering ``[min_val, max_val]`` under ``cfg``'s scheme (PPQ's rule).

    The range is first widened to include 0. Symmetric: ``scale = 2*max(|min|,|max|) /
    (qmax - qmin)``, offset 0. Asymmetric: ``scale = (max - min) / (qmax - qmin)`` and the
    offset rounds ``qmin - min/scale`` half-to-even. Scales never go below 1e-8; power-of-2
    policies round the scale up to a power of two.
    """
    lo = min(float(min_val), 0.0)
    hi = max(float(max_val), 0.0)
    span = float(cfg.quant_max) - float(cfg.quant_min)
    if cfg.policy.has(QuantProperty.ASYMMETRICAL):
        scale = max((hi - lo) / span, OBSERVER_MIN_SCALE)
        offset = float(np.round(float(cfg.quant_min) - lo / scale))
    else:
        scale = max(2.0 * max(abs(lo), abs(hi)) / span, OBSERVER_MIN_SCALE)
        offset = 0.0
    if cfg.policy.has(QuantProperty.POWER_OF_2):
        scale = float(2.0 ** np.ceil(np.log2(scale)))
    return scale, offset


def scale_range(cfg: TensorQuantConfig, scale: Any, offset: Any) -> tuple[float, float]:
    """The float range ``[min, max]`` a per-tensor scale/offset represents under ``cfg``.

    The exact inverse of :func:`minmax_to_scale_offset` for symmetric schemes
    (``+-scale*(qmax-qmin)/2``), so recomputing a scale from its own range gives it back; PPQ
    uses ``scale*(qmin-offset), scale*(qmax-offset)`` instead, which grows the scale by 256/255
    on every round trip.
    """
    s = float(np.max(np.asarray(scale)))
    o = float(np.max(np.asarray(offset))) if offset is not None else 0.0
    if cfg.policy.has(QuantProperty.ASYMMETRICAL):
        return s * (float(cfg.quant_min) - o), s * (float(cfg.quant_max) - o)
    half = s * (float(cfg.quant_max) - float(cfg.quant_min)) / 2.0
    return -half, half


def minmax_to_scale_offset_array(
    lo: np.ndarray[Any, Any], hi: np.ndarray[Any, Any], cfg: TensorQuantConfig
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """:func:`fusekit.quant.minmax_to_scale_offset` over arrays (per-channel ranges).

    Computes exactly what the scalar function computes for each element (float64 arithmetic,
    the same clamping and rounding), vectorized: a per-channel weight of a 100k-op graph has
    millions of channels in total. Returns float32 scale and offset arrays.
    """
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    span = float(cfg.quant_max) - float(cfg.quant_min)
    if cfg.policy.has(QuantProperty.ASYMMETRICAL):
        scale = np.maximum((hi - lo) / span, OBSERVER_MIN_SCALE)
        offset = np.round(float(cfg.quant_min) - lo / scale)
    else:
        scale = np.maximum(2.0 * np.maximum(np.abs(lo), np.abs(hi)) / span, OBSERVER_MIN_SCALE)
        offset = np.zeros_like(scale)
    if cfg.policy.has(QuantProperty.POWER_OF_2):
        scale = 2.0 ** np.ceil(np.log2(scale))
    return scale.astype(np.float32), offset.astype(np.float32)


# The numerics of QuantizeLinear/DequantizeLinear, beside the scale math they invert: export
# writes integer weights with them, calibration and bias correction measure quantization error.


def _round(x: np.ndarray[Any, Any], policy: RoundingPolicy) -> np.ndarray[Any, Any]:
    if policy == RoundingPolicy.ROUND_HALF_UP:
        out = np.floor(x + 0.5)
    elif policy == RoundingPolicy.ROUND_HALF_DOWN:
        out = np.ceil(x - 0.5)
    elif policy == RoundingPolicy.ROUND_HALF_TOWARDS_ZERO:
        out = np.sign(x) * np.ceil(np.abs(x) - 0.5)
    elif policy == RoundingPolicy.ROUND_HALF_FAR_FROM_ZERO:
        out = np.sign(x) * np.floor(np.abs(x) + 0.5)
    elif policy == RoundingPolicy.ROUND_UP:
        out = np.ceil(x)
    else:  # ROUND_HALF_EVEN, ROUND_TO_NEAR_INT
        out = np.round(x)
    return np.asarray(out, dtype=np.float64)


def _broadcast(
    scale: Any, offset: Any, ndim: int, axis: int | None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    s = np.asarray(scale, dtype=np.float32)
    o = np.round(np.asarray(offset, dtype=np.float64)) if offset is not None else np.zeros(1)
    if axis is not None:
        shape = [1] * ndim
        shape[axis] = -1
        return s.reshape(shape), (o.reshape(shape) if o.size > 1 else o.reshape(()))
    return s.reshape(()), o.reshape(()) if o.size == 1 else o


def quantize_values(
    value: np.ndarray[Any, Any],
    cfg: TensorQuantConfig,
    scale: Any,
    offset: Any,
    axis: int | None,
    *,
    zero_offset: bool = False,
) -> np.ndarray[Any, Any]:
    """The integers ``value`` quantizes to: ``clip(round(value / scale) + offset)`` by ``cfg``.

    ``axis`` is the channel axis of a per-channel scale (None: per tensor). The division is
    done in float32, as QuantizeLinear (and PPQ) compute it: a weight at the edge of its range
    divides to +-127.5 give or take an ulp, and float64 would round it the other way from what
    a Q node on the float weight gives. Returns float64 integral values, clipped to
    ``[quant_min, quant_max]``.

    +-Inf clip to the ends of the range and NaN (which no integer represents) maps to the zero
    point, explicitly: calibration refuses non-finite weights unless the user allowed them
    (``allow_nonfinite``), and then this is what they get, without a numpy warning.
    """
    v = np.asarray(value)
    s_b, o_b = _broadcast(scale, None if zero_offset else offset, v.ndim, axis)
    ratio = v.astype(np.float32) / s_b
    q = _round(ratio.astype(np.float64), cfg.rounding) + o_b
    nan = np.isnan(q)
    if nan.any():
        q = np.where(nan, np.broadcast_to(o_b, q.shape), q)
    return np.asarray(np.clip(q, float(cfg.quant_min), float(cfg.quant_max)), dtype=np.float64)


def dequantize_values(
    q: np.ndarray[Any, Any], scale: Any, offset: Any, axis: int | None
) -> np.ndarray[Any, Any]:
    """``(q - offset) * scale`` in float32, as DequantizeLinear computes it."""
    s_b, o_b = _broadcast(scale, offset, np.ndim(q), axis)
    out = (np.asarray(q, dtype=np.float64) - o_b).astype(np.float32) * s_b
    return np.asarray(out, dtype=np.float32)


# Python 3.11 prints an IntEnum as its number; fusekit's enums print their (PPQ) names.
for _enum in (QuantState, RoundingPolicy, Visibility, LinkKind):
    _enum.__str__ = _enum_name  # type: ignore[method-assign,assignment]
