"""A self-contained HTML report of a quantization plan and the decisions that made it.

:func:`render_report` returns one HTML document (inline CSS and JavaScript, no network access:
a Content-Security-Policy forbids every fetch) with

* a summary of the model and the plan (quantization points, independent scales, groups);
* a drawing of the graph as SVG generated here: ops in topological layers, one element per op
  (``<g class="op" data-op="NAME">``), a marker on every port that quantizes (Q/DQ), a dashed
  line for every edge that fusion left without quantization (overlapped), and one colour per
  sharing group on the markers and edges of that group, with a legend;
* the per-pass summary (quantization points before and after each pass, changes, refusals);
* the decision log as a table with a text filter and pass/rule/action filters;
* the evaluation table (per-output SQNR, cosine, max abs error) when one is given.

Why a hand-made layout rather than Graphviz: the report must not depend on an external program
or a JavaScript library fetched from a CDN, and a layered layout of a DAG that is already in
topological order costs O(ops + edges), so it stays fast for the largest corpus models.

Large graphs are paginated: the layers are cut into pages of ``rows_per_page`` rows (and about
``page_ops`` ops); every page is its own ``<svg>`` in the document, all but the current one
hidden, so each op has exactly one element in the whole document. Edges between pages become
short stubs that jump to the other page when clicked; Constant ops are small squares above the
port they feed, so they cost no row. Above ``detail_limit`` ops (5000) the drawing switches to
an overview: a small square per op in topological order, coloured by quantization status, with
no edges or markers, still one element per op. A 100k-op graph then renders in about 7 s (plus
the time to build its decision log if nobody read it before) into about 13 MB, against about
120 MB for the detailed drawing. The decision log is embedded as JSON and drawn by the page's
script a few hundred rows at a time; it holds at most ``max_decision_rows`` rows, shared
fairly between passes, and says so when it is cut.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._util import gc_paused, write_bytes_atomic
from ._version import __version__
from .errors import ReportError
from .graph import Graph, subgraph_notes
from .passes import Decision, FusionResult, PipelineResult
from .quant import QuantPlan, QuantState, check_plan_graph

__all__ = [
    "QUANT_POINT_STATES",
    "ReportError",
    "render_report",
    "write_report",
]

QUANT_POINT_STATES: frozenset[QuantState] = QuantState.POINT
"""The states in which a slot is a quantization point (a Q/DQ pair on export, once calibrated).

INITIAL and PASSIVE_INIT count because they are ACTIVATED/PASSIVE-to-be: calibration only
gives them a scale, it does not switch them off.
"""

_PASSIVE_STATES = QuantState.PASSIVE_LIKE


# --------------------------------------------------------------------------------------------
# Escaping

_UNSAFE_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _e(value: object) -> str:
    """Escape any text for HTML text and attribute values.

    Model names are arbitrary strings: ``<``, ``&`` and quotes are escaped, and control
    characters and lone surrogates (which HTML cannot carry, and UTF-8 cannot encode) become
    U+FFFD, so a hostile name can neither inject markup nor break the file's encoding.
    """
    return html.escape(_UNSAFE_CHARS.sub("\ufffd", str(value)), quote=True)


def _short(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` characters with an ellipsis (the full name goes in a title)."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _num(value: object) -> str:
    """A metric value as text: floats to 4 significant digits, anything else as ``str``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if isinstance(value, int):
            return str(value)
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.4e}"
    try:  # numpy scalars and 0-d arrays
        return _num(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


# --------------------------------------------------------------------------------------------
# Plan facts


class _PlanFacts:
    """Per-slot state, root and sharing group of one plan, in flat lists indexed by slot id."""

    __slots__ = ("colour", "configs", "group", "group_members", "roots", "states")

    def __init__(self, plan: QuantPlan):
        self.configs: list[Any] = plan.configs.tolist()
        self.states: list[QuantState | None] = [
            None if c is None else c.state for c in self.configs
        ]
        self.roots: list[int] = plan.root_ids()
        members: dict[int, list[int]] = {}
        for sid, r in enumerate(self.roots):
            if r >= 0:
                members.setdefault(r, []).append(sid)
        shared = sorted(r for r, m in members.items() if len(m) >= 2)
        # group number by root slot id: stable for a given plan, independent of dict order
        self.group: dict[int, int] = {}
        self.group_members: list[list[int]] = []
        for g, r in enumerate(shared):
            ms = members[r]
            self.group_members.append(ms)
            for sid in ms:
                self.group[sid] = g
        self.colour = [_group_colour(g) for g in range(len(shared))]

    def points(self) -> int:
        """Number of quantization points (slots in a :data:`QUANT_POINT_STATES` state)."""
        return sum(1 for s in self.states if s in QUANT_POINT_STATES)

    def scales(self) -> int:
        """Number of independent scales: distinct roots of the quantization points."""
        st = self.states
        return len({r for sid, r in enumerate(self.roots) if st[sid] in QUANT_POINT_STATES})


def _points_and_scales(plan: QuantPlan) -> tuple[int, int, int]:
    """(quantization points, independent scales, sharing groups) of ``plan``."""
    roots = plan.root_ids()
    qp = QUANT_POINT_STATES
    points = 0
    scales: set[int] = set()
    for sid, c in enumerate(plan.configs):
        if c is not None and c.state in qp:
            points += 1
            scales.add(roots[sid])
    sizes = Counter(r for r in roots if r >= 0)
    return points, len(scales), sum(1 for k in sizes.values() if k >= 2)


def _group_colour(g: int) -> str:
    """A distinct colour per group: golden-angle hues, three lightness levels."""
    hue = (g * 137.508) % 360.0
    light = (40, 52, 33)[(g // 7) % 3]
    return f"hsl({hue:.1f},72%,{light}%)"


# --------------------------------------------------------------------------------------------
# Graph facts and layout

_ROW_H = 84  # vertical pitch of the rows of the detailed drawing
_BOX_H = 34
_CHIP = 10  # a Constant op: a small square above its consumer
_GAP = 18  # horizontal gap between boxes
_MARGIN = 24
_TOP = 40  # room above the first row for graph-input and off-page stubs
_MAX_ROW_OPS = 40  # a wider layer wraps into several rows
_DOT, _DOT_STEP = 8, 11  # overview: square size and pitch
_DOTS_PER_ROW, _DOT_ROWS_PER_PAGE = 100, 50


class _GraphFacts:
    """The graph's topology under the drawing's names, plus op-level edges without repeats.

    The lists are the topology's own (op ids are positions in topological order), not copies;
    ``preds``/``succs`` are deduplicated and sorted, as the layered layout wants them.
    """

    __slots__ = (
        "base",
        "consumers",
        "graph_inputs",
        "graph_outputs",
        "n_in",
        "n_out",
        "names",
        "oids",
        "pos",
        "preds",
        "producer",
        "slot_op",
        "slot_tensor",
        "succs",
        "tensor_names",
        "types",
    )

    def __init__(self, graph: Graph):
        idx = graph.index
        self.oids: list[int] = idx.order
        self.pos: list[int] = idx.pos
        self.names: list[str] = idx.op_names
        self.types: list[str] = idx.op_types
        self.base: list[int] = idx.slot_base
        self.n_in: list[int] = idx.n_in
        self.n_out: list[int] = idx.n_out
        self.slot_op: list[int] = idx.slot_op
        self.slot_tensor: list[int] = idx.slot_tensor
        self.producer: list[int] = idx.producer
        self.consumers: list[tuple[int, ...]] = idx.consumers
        self.tensor_names: list[str] = idx.tensor_names
        self.graph_inputs = frozenset(graph.inputs)
        self.graph_outputs = frozenset(graph.outputs)
        self.preds: list[list[int]] = []
        self.succs: list[list[int]] = [[] for _ in self.oids]
        for i, ps_ in enumerate(idx.preds):
            ps = set(ps_)
            ps.discard(i)
            self.preds.append(sorted(ps))
            for p in ps:
                self.succs[p].append(i)


def _layers(preds: list[list[int]], succs: list[list[int]]) -> list[int]:
    """Longest-path layers, then sources (constants) moved down next to their first consumer.

    Without the second step the hundreds of Constant ops of an exported model would all sit in
    layer 0, one huge row far away from the ops that read them.
    """
    n = len(preds)
    layer = [0] * n
    for i in range(n):
        ps = preds[i]
        if ps:
            layer[i] = max(layer[p] for p in ps) + 1
    for i in range(n):
        if not preds[i] and succs[i]:
            layer[i] = min(layer[s] for s in succs[i]) - 1
    return layer


class _Layout:
    """Where every op (by position) is drawn: page, x, y, width, height."""

    __slots__ = ("h", "page", "page_info", "pages", "w", "x", "y")

    def __init__(self, n: int):
        self.page = [0] * n
        self.x = [0] * n
        self.y = [0] * n
        self.w = [0] * n
        self.h = [0] * n
        self.pages: list[list[int]] = []  # page -> op positions, in drawing order
        self.page_info: list[str] = []  # page -> "layers a-b" / "ops a-b"


def _chips(facts: _GraphFacts) -> list[int]:
    """For each op position, the consumer a Constant op is drawn on (-1: laid out normally).

    Exported models hold hundreds of Constant ops (Reshape shapes, Clip bounds); as boxes of
    their own they would double the drawing. Each becomes a small square just above the input
    port of its first consumer, so it costs no row and no width.
    """
    g = facts
    out = [-1] * len(g.oids)
    for i, oid in enumerate(g.oids):
        if g.types[oid] == "Constant" and g.n_in[oid] == 0 and g.succs[i]:
            out[i] = g.succs[i][0]
    return out


def _layered_layout(
    facts: _GraphFacts,
    widths: list[int],
    heights: list[int],
    chip_of: list[int],
    rows_per_page: int,
    page_ops: int,
) -> _Layout:
    """Rows of ops ordered by the barycentre of their producers, then cut into pages.

    In each row the ops are sorted by the mean x of the ops feeding them and placed as close to
    that x as the row allows, so chains run straight down and branches sit side by side. Wide
    layers wrap; a page closes after ``rows_per_page`` rows or ``page_ops`` ops. Constants
    (``chip_of``) go above their consumer's port. Linear in ops + edges.
    """
    preds = [[p for p in ps if chip_of[p] < 0] for ps in facts.preds]
    succs = facts.succs
    n = len(preds)
    layer = _layers(preds, succs)
    by_layer: list[list[int]] = [[] for _ in range(max(layer, default=-1) + 1)]
    for i in range(n):
        if chip_of[i] < 0:
            by_layer[layer[i]].append(i)
    lay = _Layout(n)
    lay.w, lay.h = widths, heights
    centre = [0.0] * n
    rows: list[tuple[int, list[int]]] = []
    for li, ops in enumerate(by_layer):
        key: dict[int, float] = {}
        for i in ops:
            ps = preds[i]
            key[i] = sum(centre[p] for p in ps) / len(ps) if ps else math.inf
        ops.sort(key=lambda i: (key[i], i))
        for start in range(0, len(ops), _MAX_ROW_OPS):
            chunk = ops[start : start + _MAX_ROW_OPS]
            cursor = 0.0
            for i in chunk:
                kx = key[i]
                x = cursor if math.isinf(kx) else max(cursor, kx - widths[i] / 2)
                lay.x[i] = round(x)
                centre[i] = x + widths[i] / 2
                cursor = x + widths[i] + _GAP
            rows.append((li, chunk))
    page: list[int] = []
    n_rows = first = last = 0
    for li, chunk in rows:
        if page and (n_rows >= rows_per_page or len(page) + len(chunk) > page_ops):
            lay.pages.append(page)
            lay.page_info.append(_layers_text(first, last, len(page)))
            page, n_rows = [], 0
        if not page:
            first = li
        last = li
        for i in chunk:
            lay.page[i] = len(lay.pages)
            lay.y[i] = _TOP + n_rows * _ROW_H
        page.extend(chunk)
        n_rows += 1
    if page:
        lay.pages.append(page)
        lay.page_info.append(_layers_text(first, last, len(page)))
    # constants: above the port of their consumer, on its page
    g = facts
    for i, c in enumerate(chip_of):
        if c < 0:
            continue
        oid = g.oids[c]
        b, ni = g.base[oid], g.n_in[oid]
        t = g.slot_tensor[g.base[g.oids[i]] + g.n_in[g.oids[i]]]  # the constant's output
        k = next((k for k in range(ni) if g.slot_tensor[b + k] == t), 0)
        port = lay.x[c] + round((k + 1) * widths[c] / (ni + 1))
        lay.x[i] = port - widths[i] // 2
        lay.y[i] = lay.y[c] - heights[i] - 12
        lay.page[i] = lay.page[c]
        lay.pages[lay.page[c]].append(i)
    # each page starts at its own left edge
    for pg in lay.pages:
        dx = _MARGIN - min(lay.x[i] for i in pg)
        for i in pg:
            lay.x[i] += dx
    return lay


def _layers_text(first: int, last: int, n_ops: int) -> str:
    span = f"layer {first}" if first == last else f"layers {first}-{last}"
    return f"{span}, {n_ops} ops"


def _grid_layout(n: int) -> _Layout:
    """Overview: ops in topological order on a grid of small squares, paged."""
    lay = _Layout(n)
    per_page = _DOTS_PER_ROW * _DOT_ROWS_PER_PAGE
    for i in range(n):
        k = i % per_page
        lay.page[i] = i // per_page
        lay.x[i] = _MARGIN + (k % _DOTS_PER_ROW) * _DOT_STEP
        lay.y[i] = _MARGIN + (k // _DOTS_PER_ROW) * _DOT_STEP
        lay.w[i] = lay.h[i] = _DOT
    for start in range(0, n, per_page):
        lay.pages.append(list(range(start, min(n, start + per_page))))
        lay.page_info.append(f"ops {start + 1}-{min(n, start + per_page)} in topological order")
    return lay


# --------------------------------------------------------------------------------------------
# Drawing


def _state_name(state: QuantState | None) -> str:
    return "not quantized" if state is None else state.name


class _Drawer:
    """Writes the SVG pages of one graph + plan (detailed or overview)."""

    def __init__(
        self, graph: Graph, plan: QuantPlan, g: _GraphFacts, pf: _PlanFacts, overview: bool
    ):
        self.graph = graph
        self.g = g
        self.pf = pf
        self.overview = overview
        self.dispatch: list[str | None] = plan.dispatch.tolist()
        self.group_size = [len(m) for m in pf.group_members]
        self.lay = _Layout(0)

    # -- helpers ---------------------------------------------------------------------------

    def slot_text(self, sid: int) -> str:
        g = self.g
        oid = g.slot_op[sid]
        k = sid - g.base[oid]
        ni = g.n_in[oid]
        side, i = ("in", k) if k < ni else ("out", k - ni)
        return f"{g.names[oid]}|{side}|{i}"

    def colour_attrs(self, sid: int) -> str:
        grp = self.pf.group.get(sid)
        if grp is None:
            return ""
        return f' data-group="g{grp + 1}" color="{self.pf.colour[grp]}"'

    def marker(self, sid: int, cx: int, cy: int) -> str:
        """The Q/DQ marker of a slot ('' when the slot does not quantize and is not fused)."""
        state = self.pf.states[sid]
        if state is None:
            return ""
        if state in QUANT_POINT_STATES:
            cls = "m mp" if state in _PASSIVE_STATES else "m ma"
            r = 4.5
        elif state == QuantState.OVERLAPPED:
            cls, r = "m mo", 3.0
        else:
            return ""
        t = self.g.slot_tensor[sid]
        tensor = self.g.tensor_names[t] if t >= 0 else ""
        root = self.pf.roots[sid]
        lines = [f"{self.slot_text(sid)}  (tensor {tensor!r})", state.name]
        if root != sid:
            verb = "fused: reads the scale of" if cls == "m mo" else "uses the scale of"
            lines.append(f"{verb} {self.slot_text(root)}")
        grp = self.pf.group.get(sid)
        if grp is not None:
            lines.append(f"sharing group g{grp + 1} ({self.group_size[grp]} slots)")
        return (
            f'<circle class="{cls}" data-slot="{_e(self.slot_text(sid))}"'
            f'{self.colour_attrs(sid)} cx="{cx}" cy="{cy}" r="{r}">'
            f"<title>{_e(chr(10).join(lines))}</title></circle>"
        )

    def port_x(self, i: int, side_count: int, k: int) -> int:
        lay = self.lay
        return lay.x[i] + round((k + 1) * lay.w[i] / (side_count + 1))

    # -- pages -----------------------------------------------------------------------------

    def draw(self, rows_per_page: int, page_ops: int) -> tuple[list[str], list[str]]:
        """The SVG text of every page, and each page's description."""
        g = self.g
        n = len(g.oids)
        if self.overview:
            self.lay = _grid_layout(n)
        else:
            widths, heights = [0] * n, [0] * n
            chip_of = _chips(g)
            for i, oid in enumerate(g.oids):
                if chip_of[i] >= 0:
                    widths[i] = heights[i] = _CHIP
                else:
                    label = max(len(g.types[oid]), len(_short(g.names[oid], 26)))
                    ports = max(g.n_in[oid], g.n_out[oid]) + 1
                    widths[i] = max(84, min(200, 7 * label + 16), 12 * ports)
                    heights[i] = _BOX_H
            self.lay = _layered_layout(g, widths, heights, chip_of, rows_per_page, page_ops)
        out = []
        for p, ops in enumerate(self.lay.pages):
            out.append(self.overview_page(p, ops) if self.overview else self.page(p, ops))
        return out, self.lay.page_info

    def svg_open(self, p: int, ops: Sequence[int], extra_h: int) -> str:
        lay = self.lay
        width = max(lay.x[i] + lay.w[i] for i in ops) + _MARGIN
        height = max(lay.y[i] + lay.h[i] for i in ops) + extra_h
        cls = "gpage overview cur" if p == 0 else "gpage overview"
        if not self.overview:
            cls = "gpage cur" if p == 0 else "gpage"
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" data-page="{p}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        )

    def overview_page(self, p: int, ops: list[int]) -> str:
        g, lay, pf = self.g, self.lay, self.pf
        st = pf.states
        parts = [self.svg_open(p, ops, _MARGIN)]
        for i in ops:
            oid = g.oids[i]
            sids = range(g.base[oid], g.base[oid] + g.n_in[oid] + g.n_out[oid])
            if self.dispatch[oid] is None:
                cls = "op of"
            elif any(st[s] in QUANT_POINT_STATES for s in sids):
                cls = "op oq"
            else:
                cls = "op oo"
            parts.append(
                f'<rect class="{cls}" data-op="{_e(g.names[oid])}" x="{lay.x[i]}" '
                f'y="{lay.y[i]}" width="{_DOT}" height="{_DOT}"/>'
            )
        parts.append("</svg>")
        return "".join(parts)

    def page(self, p: int, ops: list[int]) -> str:
        g, lay, pf = self.g, self.lay, self.pf
        st = pf.states
        edges: list[str] = []
        stubs: list[str] = []
        boxes: list[str] = []
        on_page = set(ops)
        for i in ops:
            oid = g.oids[i]
            b, ni, no = g.base[oid], g.n_in[oid], g.n_out[oid]
            top, bottom = lay.y[i], lay.y[i] + lay.h[i]
            # incoming edges, and stubs for inputs that come from elsewhere
            for k in range(ni):
                cs = b + k
                t = g.slot_tensor[cs]
                if t < 0:
                    continue
                x2 = self.port_x(i, ni, k)
                tname = g.tensor_names[t]
                ps = g.producer[t]
                if ps < 0:
                    if tname in g.graph_inputs:
                        stubs.append(
                            f'<path class="stub gin" d="M{x2},{top - 22}V{top}"/>'
                            f'<text class="lbl" x="{x2 + 3}" y="{top - 24}">'
                            f"{_e(_short(tname, 24))}<title>graph input {_e(tname)}</title></text>"
                        )
                    else:
                        stubs.append(f'<path class="stub init" d="M{x2},{top - 8}V{top}"/>')
                    continue
                j = g.pos[g.slot_op[ps]]
                if j not in on_page:
                    stubs.append(
                        f'<g class="xref" data-page-link="{lay.page[j]}">'
                        f'<path class="stub" d="M{x2},{top - 16}V{top}"/>'
                        f'<text class="lbl" x="{x2 + 3}" y="{top - 10}">'
                        f"p{lay.page[j] + 1}</text><title>{_e(tname)} from "
                        f"{_e(g.names[g.slot_op[ps]])} on page {lay.page[j] + 1}</title></g>"
                    )
                    continue
                pop = g.slot_op[ps]
                x1 = self.port_x(j, g.n_out[pop], ps - g.base[pop] - g.n_in[pop])
                y1 = lay.y[j] + lay.h[j]
                edges.append(self.edge(ps, cs, x1, y1, x2, top, tname))
            # outgoing stubs: graph outputs and consumers on other pages
            for k in range(no):
                s = b + ni + k
                t = g.slot_tensor[s]
                if t < 0:
                    continue
                x1 = self.port_x(i, no, k)
                tname = g.tensor_names[t]
                if tname in g.graph_outputs:
                    stubs.append(
                        f'<path class="stub gout" d="M{x1},{bottom}V{bottom + 22}"/>'
                        f'<text class="lbl" x="{x1 + 3}" y="{bottom + 30}">'
                        f"{_e(_short(tname, 24))}<title>graph output {_e(tname)}</title></text>"
                    )
                far = sorted({lay.page[g.pos[g.slot_op[c]]] for c in g.consumers[t]} - {p})
                if far:
                    # one stub per port: it leads to the next page that reads the tensor
                    label = " ".join(f"p{q + 1}" for q in far[:3])
                    if len(far) > 3:
                        label += f" +{len(far) - 3}"
                    pages = ", ".join(str(q + 1) for q in far)
                    stubs.append(
                        f'<g class="xref" data-page-link="{far[0]}">'
                        f'<path class="stub" d="M{x1},{bottom}V{bottom + 16}"/>'
                        f'<text class="lbl" x="{x1 + 3}" y="{bottom + 16}">{label}</text>'
                        f"<title>{_e(tname)} read on page(s) {pages}</title></g>"
                    )
            boxes.append(self.box(i, oid, st))
        parts = [self.svg_open(p, ops, _MARGIN + 24), '<g class="edges">']
        parts.extend(edges)
        parts.append('</g><g class="stubs">')
        parts.extend(stubs)
        parts.append("</g>")
        parts.extend(boxes)
        parts.append("</svg>")
        return "".join(parts)

    def edge(self, ps: int, cs: int, x1: int, y1: int, x2: int, y2: int, tensor: str) -> str:
        st = self.pf.states
        sp, sc = st[ps], st[cs]
        if sp in QUANT_POINT_STATES or sc in QUANT_POINT_STATES:
            cls = "e q"
            colour = self.colour_attrs(ps if sp in QUANT_POINT_STATES else cs)
            what = "quantized"
        elif QuantState.OVERLAPPED in (sp, sc):
            fused = ps if sp == QuantState.OVERLAPPED else cs
            cls, colour, what = "e ov", self.colour_attrs(fused), "fused"
        else:
            cls, colour, what = "e fp", "", "float"
        d = max(1, min(40, (y2 - y1) // 2))
        return (
            f'<path class="{cls}"{colour} d="M{x1},{y1}C{x1},{y1 + d} {x2},{y2 - d} {x2},{y2}">'
            f"<title>{_e(tensor)} ({what})</title></path>"
        )

    def box(self, i: int, oid: int, st: list[QuantState | None]) -> str:
        g, lay = self.g, self.lay
        name, typ = g.names[oid], g.types[oid]
        x, y, w, h = lay.x[i], lay.y[i], lay.w[i], lay.h[i]
        platform = self.dispatch[oid]
        b, ni, no = g.base[oid], g.n_in[oid], g.n_out[oid]
        chip = w == _CHIP and h == _CHIP
        cls = "op const" if chip else "op" if platform else "op fp32"
        tip = [name, f"{typ} on {platform}" if platform else f"{typ}, not quantized (FP32)"]
        for k in range(ni + no):
            s = b + k
            if len(tip) > 14:
                tip.append("...")
                break
            t = g.slot_tensor[s]
            if t < 0:
                continue
            side = f"in{k}" if k < ni else f"out{k - ni}"
            tip.append(f"{side} {g.tensor_names[t]}: {_state_name(st[s])}")
        parts = [
            f'<g class="{cls}" data-op="{_e(name)}" transform="translate({x},{y})">',
            f"<title>{_e(chr(10).join(tip))}</title>",
            f'<rect width="{w}" height="{h}" rx="{2 if chip else 4}"/>',
        ]
        if not chip:
            parts.append(f'<text class="t" x="{w // 2}" y="14">{_e(typ)}</text>')
            parts.append(f'<text class="n" x="{w // 2}" y="27">{_e(_short(name, 26))}</text>')
        for k in range(ni):
            parts.append(self.marker(b + k, round((k + 1) * w / (ni + 1)), 0))
        for k in range(no):
            parts.append(self.marker(b + ni + k, round((k + 1) * w / (no + 1)), h))
        parts.append("</g>")
        return "".join(parts)


# --------------------------------------------------------------------------------------------
# Tables


def _edge_counts(g: _GraphFacts, pf: _PlanFacts) -> Counter[str]:
    """How many op-to-op edges carry a Q/DQ ('q'), were fused away ('ov') or stay float."""
    st = pf.states
    out: Counter[str] = Counter()
    for oid in g.oids:
        b = g.base[oid]
        for cs in range(b, b + g.n_in[oid]):
            t = g.slot_tensor[cs]
            if t < 0 or g.producer[t] < 0:
                continue
            sp, sc = st[g.producer[t]], st[cs]
            if sp in QUANT_POINT_STATES or sc in QUANT_POINT_STATES:
                out["q"] += 1
            elif QuantState.OVERLAPPED in (sp, sc):
                out["ov"] += 1
            else:
                out["fp"] += 1
    return out


def _kv_table(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _summary(
    graph: Graph, g: _GraphFacts, pf: _PlanFacts, dispatch: Sequence[str | None], drawing: str
) -> str:
    hist = Counter(g.types[oid] for oid in g.oids)
    types = ", ".join(f"{_e(t)} {c}" for t, c in hist.most_common(12))
    if len(hist) > 12:
        types += f", ... ({len(hist)} op types)"
    platforms = Counter(dispatch[oid] for oid in g.oids if dispatch[oid] is not None)
    quantized = sum(platforms.values())
    plat = ", ".join(f"{_e(k)} {v}" for k, v in platforms.most_common()) or "none"
    st = Counter(s.name for s in pf.states if s is not None)
    states = ", ".join(f"{k} {v}" for k, v in sorted(st.items())) or "none"
    groups = pf.group_members
    if groups:
        big = max(range(len(groups)), key=lambda k: (len(groups[k]), -k))
        root = _slot_text(g, pf.roots[groups[big][0]])
        largest = f"g{big + 1}: {len(groups[big])} slots, root {_e(root)}"
    else:
        largest = "none"
    edges = _edge_counts(g, pf)
    return _kv_table(
        [
            ("model", _e(graph.name or "(unnamed)")),
            ("ops", f"{len(g.oids)} ({types})"),
            ("quantized ops", f"{quantized} ({plat}); {len(g.oids) - quantized} FP32"),
            ("slot states", states),
            ("quantization points", f"{pf.points()} (slots that quantize: Q/DQ markers)"),
            ("independent scales", str(pf.scales())),
            ("sharing groups", f"{len(groups)} (largest {largest})"),
            (
                "edges",
                f"{edges['q']} quantized, {edges['ov']} fused (no Q/DQ), {edges['fp']} float",
            ),
            ("drawing", drawing),
            *(
                [("left float", "<br>".join(_e(n) for n in subgraph_notes(graph)))]
                if graph.subgraph_ops()
                else []
            ),
        ]
    )


def _slot_text(g: _GraphFacts, sid: int) -> str:
    oid = g.slot_op[sid]
    k = sid - g.base[oid]
    ni = g.n_in[oid]
    return f"{g.names[oid]}|in|{k}" if k < ni else f"{g.names[oid]}|out|{k - ni}"


def _results_of(result: FusionResult | PipelineResult) -> tuple[FusionResult, ...]:
    return result.results if isinstance(result, PipelineResult) else (result,)


def _pass_table(results: Sequence[FusionResult], plan: QuantPlan) -> str:
    """Quantization points before/after each pass, and what each pass did."""
    cache: dict[int, tuple[int, int, int]] = {}

    def facts(p: QuantPlan) -> tuple[int, int, int]:
        key = id(p)
        if key not in cache:
            cache[key] = _points_and_scales(p)
        return cache[key]

    head = (
        "<tr><th>#</th><th>pass</th><th>changes</th><th>refusals</th><th>overlap</th>"
        "<th>follow</th><th>config</th><th>unlink</th><th>Q points before</th>"
        "<th>after</th><th>&Delta;</th><th>scales after</th><th>groups after</th></tr>"
    )
    rows = []
    for k, r in enumerate(results):
        acts = Counter(d.action for d in r.decisions)
        before, _, _ = facts(r.input_plan)
        after, scales, groups = facts(r.plan)
        delta = after - before
        rows.append(
            f"<tr><td>{k + 1}</td><td>{_e(r.pass_name)}</td><td>{r.n_changes}</td>"
            f"<td>{r.n_refusals}</td><td>{acts['overlap']}</td><td>{acts['follow']}</td>"
            f"<td>{acts['config']}</td><td>{acts['unlink']}</td><td>{before}</td>"
            f"<td>{after}</td><td>{delta:+d}</td><td>{scales}</td><td>{groups}</td></tr>"
        )
    note = ""
    if results and plan is not results[-1].plan:
        pts, scales, groups = facts(plan)
        note = (
            f'<p class="note">The drawn plan is not the last pass\'s plan (e.g. it was calibrated '
            f"afterwards): {pts} quantization points, {scales} scales, {groups} groups.</p>"
        )
    return f'<table class="grid">{head}{"".join(rows)}</table>{note}'


def _budget(counts: Sequence[int], cap: int) -> list[int]:
    """Share ``cap`` rows between passes: small logs in full, the rest split evenly."""
    if sum(counts) <= cap:
        return list(counts)
    alloc = [0] * len(counts)
    remaining = cap
    order = sorted(range(len(counts)), key=lambda k: counts[k])
    for n_left, k in zip(range(len(order), 0, -1), order):
        alloc[k] = min(counts[k], remaining // n_left)
        remaining -= alloc[k]
    return alloc


def _clean(text: object) -> str:
    """``str(text)`` without the characters HTML and UTF-8 cannot carry (see :func:`_e`)."""
    return _UNSAFE_CHARS.sub("\ufffd", str(text))


def _json_in_html(value: object) -> str:
    """JSON that can sit inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` are written as ``\\u003c``-style escapes, so no model string can close
    the element or start a comment; ``JSON.parse`` turns them back into the same characters.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


LOG_FIELDS = ("n", "pass", "rule", "action", "slot", "target", "ops", "reason", "changes")
"""The fields of one row of the embedded decision log, in order (``ops`` is a list)."""


def _decision_record(n: int, d: Decision) -> list[object]:
    changes = "; ".join(
        f"{c.slot}: {c.state_before.name}\u2192{c.state_after.name}"
        + (f" (root {c.root_after})" if c.root_after != c.root_before else "")
        for c in d.changes
    )
    return [
        n,
        _clean(d.pass_name),
        _clean(d.rule),
        _clean(d.action),
        "" if d.slot is None else _clean(d.slot),
        "" if d.target is None else _clean(d.target),
        [_clean(o) for o in d.ops],
        _clean(d.reason),
        _clean(changes),
    ]


def _options(select_id: str, label: str, values: Iterable[str]) -> str:
    opts = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in sorted(set(values)))
    return (
        f'<label>{label} <select id="{select_id}"><option value="">all</option>'
        f"{opts}</select></label>"
    )


def _decision_log(results: Sequence[FusionResult], max_rows: int) -> str:
    """The decision log: filter controls, an empty table, and the rows as embedded JSON.

    The rows are data, not markup: the script shows the first matches of the current filter
    and more on request. A table of thousands of rows as HTML cost the browser seconds of
    layout (3900 rows of bert24 took 4 s in headless Chromium); as JSON they cost milliseconds.
    """
    counts = [r.n_changes + r.n_refusals for r in results]
    alloc = _budget(counts, max_rows)
    records: list[list[object]] = []
    passes: list[str] = []
    rules: set[str] = set()
    actions: set[str] = set()
    offset = 0
    for r, take, count in zip(results, alloc, counts):
        passes.append(r.pass_name)
        for k, d in enumerate(r.decisions[:take]):
            rules.add(d.rule)
            actions.add(d.action)
            records.append(_decision_record(offset + k + 1, d))
        offset += count
    total = sum(counts)
    note = ""
    if len(records) < total:
        shown = ", ".join(
            f"{_e(r.pass_name)} {a} of {c}" for r, a, c in zip(results, alloc, counts)
        )
        note = (
            f'<p class="note">The log has {total} decisions; the table holds {len(records)} '
            f"({shown}): the first ones of each pass. The per-pass counts above are complete; "
            "<code>fusekit explain</code> answers for any slot.</p>"
        )
    if not records:
        return note + '<p class="note">The passes made no decisions.</p>'
    controls = (
        '<div class="filters"><label>search <input id="fk-q" type="search" '
        'placeholder="op, slot, tensor, reason..." size="40"></label> '
        + _options("fk-pass", "pass", passes)
        + " "
        + _options("fk-rule", "rule", rules)
        + " "
        + _options("fk-action", "action", actions)
        + f' <span id="fk-count">{len(records)} decisions</span></div>'
    )
    head = "".join(f"<th>{'#' if f == 'n' else f}</th>" for f in LOG_FIELDS)
    return (
        f"{note}{controls}"
        '<noscript><p class="note">The decision log needs JavaScript.</p></noscript>'
        f'<table class="grid log" id="fk-log"><thead><tr>{head}</tr></thead><tbody></tbody>'
        '</table><p><button id="fk-more" type="button" hidden>show more</button></p>'
        f'<script type="application/json" id="fk-log-data">{_json_in_html(records)}</script>'
    )


_MAX_LEGEND_GROUPS = 500


def _groups_table(g: _GraphFacts, pf: _PlanFacts) -> str:
    groups = pf.group_members
    if not groups:
        return '<p class="note">No slots share a scale.</p>'
    st = pf.states
    order = sorted(range(len(groups)), key=lambda k: (-len(groups[k]), k))
    rows = []
    for k in order[:_MAX_LEGEND_GROUPS]:
        ms = groups[k]
        root = pf.roots[ms[0]]
        points = sum(1 for s in ms if st[s] in QUANT_POINT_STATES)
        names = ", ".join(_e(_slot_text(g, s)) for s in ms[:6])
        if len(ms) > 6:
            names += f", ... +{len(ms) - 6}"
        root_op = g.names[g.slot_op[root]]
        rows.append(
            f'<tr data-group-link="g{k + 1}"><td><span class="sw" data-group="g{k + 1}" '
            f'style="background:{pf.colour[k]}"></span> g{k + 1}</td><td>{len(ms)}</td>'
            f'<td>{points}</td><td><span class="opref" data-goto="{_e(root_op)}">'
            f"{_e(_slot_text(g, root))}</span></td><td>{names}</td></tr>"
        )
    note = ""
    if len(groups) > _MAX_LEGEND_GROUPS:
        note = (
            f'<p class="note">{len(groups)} groups; the {_MAX_LEGEND_GROUPS} largest are '
            "listed. Every group is coloured in the drawing.</p>"
        )
    is_open = " open" if len(groups) <= 20 else ""
    return (
        f"<details{is_open}><summary>{len(groups)} groups of slots sharing one scale, largest "
        "first; click a row to highlight its slots in the drawing</summary>"
        f'{note}<table class="grid groups"><tr><th>group</th><th>slots</th><th>Q points</th>'
        f"<th>root (owns the scale)</th><th>members</th></tr>{''.join(rows)}</table></details>"
    )


_METRIC_ORDER = ("sqnr_db", "cosine", "max_abs")


def _evaluation_section(evaluation: Mapping[str, Any]) -> str:
    """Per-output metrics as a table; any other entries as key/value rows."""
    parts = []
    outputs = evaluation.get("outputs")
    if isinstance(outputs, Mapping) and outputs:
        keys: list[str] = []
        for metrics in outputs.values():
            if isinstance(metrics, Mapping):
                keys.extend(str(k) for k in metrics if str(k) not in keys)
        cols = [k for k in _METRIC_ORDER if k in keys] + sorted(
            k for k in keys if k not in _METRIC_ORDER
        )
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        rows = []
        for name, metrics in outputs.items():
            if isinstance(metrics, Mapping):
                m = {str(k): v for k, v in metrics.items()}
                cells = "".join(f"<td>{_e(_num(m[c])) if c in m else ''}</td>" for c in cols)
            else:
                cells = f'<td colspan="{max(1, len(cols))}">{_e(_num(metrics))}</td>'
            rows.append(f"<tr><th>{_e(name)}</th>{cells}</tr>")
        parts.append(
            f'<table class="grid eval" id="fk-eval"><tr><th>output</th>{head}</tr>'
            f"{''.join(rows)}</table>"
        )
    other = [(str(k), v) for k, v in evaluation.items() if k != "outputs"]
    if other:
        parts.append(_kv_table((k, _e(_jsonish(v))) for k, v in other))
    if not parts:
        parts.append('<p class="note">The evaluation is empty.</p>')
    return "".join(parts)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars as lists and numbers; anything else as its text."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


def _jsonish(value: Any) -> str:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return _num(value) if isinstance(value, float) else str(value)
    try:
        return json.dumps(value, default=_plain, sort_keys=True)
    except (TypeError, ValueError):
        return str(value)


# --------------------------------------------------------------------------------------------
# The document

_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)

_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:0 1.5em 3em;color:#1d232a;background:#fff}
h1{font-size:20px;margin:.8em 0 .2em}h2{font-size:16px;margin:1.6em 0 .5em;
border-bottom:1px solid #d5dae0;padding-bottom:.2em}
.meta,.note{color:#5b6670}.note{font-size:12px}
table{border-collapse:collapse;margin:.3em 0}
.kv th{text-align:left;padding:2px 1em 2px 0;font-weight:600;vertical-align:top;
white-space:nowrap}.kv td{padding:2px 0}
.grid th,.grid td{border:1px solid #d5dae0;padding:2px 6px;text-align:left;vertical-align:top}
.grid th{background:#f1f4f7}.grid td{font-variant-numeric:tabular-nums}
.log td:nth-child(5),.log td:nth-child(6),.log td:nth-child(7),.log td:nth-child(9){
font-family:ui-monospace,monospace;font-size:12px;overflow-wrap:anywhere}
.filters{margin:.5em 0;display:flex;gap:1em;flex-wrap:wrap;align-items:center}
#fk-count{color:#5b6670}
.opref{color:#0b57d0;cursor:pointer;text-decoration:underline dotted}
.groups tr[data-group-link]{cursor:pointer}.groups tr.sel{background:#fff6d6}
.sw{display:inline-block;width:12px;height:12px;border-radius:6px;vertical-align:-2px}
.nav{position:sticky;top:0;z-index:2;background:#fff;padding:6px 0;display:flex;gap:.6em;
align-items:center;flex-wrap:wrap;border-bottom:1px solid #e4e8ec}
#fk-hover{color:#5b6670;font-family:ui-monospace,monospace;font-size:12px}
.canvas{overflow:auto;max-height:80vh;border:1px solid #e4e8ec;background:#fcfdfe}
svg.gpage{display:none}svg.gpage.cur{display:block}
.op rect{fill:#e8f0fe;stroke:#4a6fa5;stroke-width:1}
.op.fp32 rect{fill:#f1f1f1;stroke:#9aa0a6;stroke-dasharray:4 2}
.op.const rect{fill:#e9e4c9;stroke:#9c9470}
.op text{font:11px system-ui,sans-serif;text-anchor:middle;pointer-events:none}
.op .t{font-weight:600}.op .n{fill:#5b6670;font-size:10px}
.op{cursor:pointer}.op.hl rect{stroke:#e8710a;stroke-width:3}
.e{fill:none;stroke-width:1.3}.e.q{stroke:#39424c}.e.q[color]{stroke:currentColor}
.e.ov{stroke:#8d96a0;stroke-dasharray:5 3}.e.ov[color]{stroke:currentColor}
.e.fp{stroke:#c3c8ce}
.stub{fill:none;stroke:#8d96a0;stroke-width:1.2}.stub.gin,.stub.gout{stroke:#0b57d0}
.xref{cursor:pointer}.xref .stub{stroke-dasharray:2 2}
.lbl{font:10px ui-monospace,monospace;fill:#5b6670}
.m{stroke:#fff;stroke-width:1.2}.m.ma,.m.mp{fill:#39424c}.m[color]{fill:currentColor}
.m.mp{stroke:#1d232a;stroke-dasharray:2 1.5}
.m.mo{fill:#fff;stroke:#8d96a0}.m.mo[color]{stroke:currentColor;fill:#fff}
.hl.m{stroke:#e8710a;stroke-width:3}.hl.e{stroke-width:4}
.legend{display:flex;flex-wrap:wrap;gap:.4em 1.4em;margin:.4em 0}.icon{vertical-align:-2px}
.cbox{fill:#e9e4c9;stroke:#9c9470}
.overview .op{cursor:default}.oq{fill:#2f6fd0}.oo{fill:#9ec1f2}.of{fill:#d0d4d9}
.overview .op.hl{stroke:#e8710a;stroke-width:2}
"""


def _icon(body: str) -> str:
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" class="icon" width="34" height="14" '
        f'viewBox="0 0 34 14">{body}</svg>'
    )


_LEGEND_ITEMS = (
    ('<circle class="m ma" cx="17" cy="7" r="4.5"/>', "quantizes (Q/DQ)"),
    ('<circle class="m mp" cx="17" cy="7" r="4.5"/>', "quantizes with a derived scale (passive)"),
    ('<circle class="m mo" cx="17" cy="7" r="3"/>', "fused into a neighbour (overlapped)"),
    ('<path class="e q" d="M2,7H32"/>', "edge with Q/DQ"),
    ('<path class="e ov" d="M2,7H32"/>', "fused edge, no Q/DQ"),
    ('<path class="e fp" d="M2,7H32"/>', "float edge"),
    ('<rect class="cbox" x="12" y="2" width="10" height="10" rx="2"/>', "Constant op"),
)
_LEGEND = (
    '<div class="legend">'
    + "".join(f"<span>{_icon(svg)} {text}</span>" for svg, text in _LEGEND_ITEMS)
    + "</div>"
)

_JS = r"""
(function () {
  'use strict';
  var doc = document;
  function $(id) { return doc.getElementById(id); }
  var pages = Array.prototype.slice.call(doc.querySelectorAll('svg.gpage'));
  var sel = $('fk-page'), info = $('fk-pageinfo'), hover = $('fk-hover');
  var cur = 0;
  function show(i) {
    if (!pages.length) { return; }
    i = Math.max(0, Math.min(pages.length - 1, i));
    pages[cur].classList.remove('cur');
    pages[i].classList.add('cur');
    cur = i;
    if (sel) { sel.value = String(i); }
    if (info) { info.textContent = 'page ' + (i + 1) + ' of ' + pages.length; }
  }
  var opEls = new Map();
  doc.querySelectorAll('svg.gpage .op').forEach(function (el) {
    opEls.set(el.getAttribute('data-op'), el);
  });
  var lit = [];
  function unlight() {
    lit.forEach(function (el) { el.classList.remove('hl'); });
    lit = [];
  }
  function light(el) { el.classList.add('hl'); lit.push(el); }
  function pageOf(el) { return pages.indexOf(el.closest('svg.gpage')); }
  function reveal(el) {
    show(pageOf(el));
    if (el.scrollIntoView) { el.scrollIntoView({block: 'center', inline: 'center'}); }
  }
  function goTo(name) {
    var el = opEls.get(name);
    if (!el) { return false; }
    unlight(); light(el); reveal(el);
    if (hover) { hover.textContent = name; }
    return true;
  }
  function findOp(text) {
    if (!text || goTo(text)) { return; }
    var low = text.toLowerCase(), hit = null;
    opEls.forEach(function (el, name) {
      if (hit === null && name.toLowerCase().indexOf(low) >= 0) { hit = name; }
    });
    if (hit !== null) { goTo(hit); } else if (hover) { hover.textContent = 'no op matches'; }
  }
  var prev = $('fk-prev'), next = $('fk-next'), find = $('fk-find');
  if (prev) { prev.addEventListener('click', function () { show(cur - 1); }); }
  if (next) { next.addEventListener('click', function () { show(cur + 1); }); }
  if (sel) { sel.addEventListener('change', function () { show(parseInt(sel.value, 10)); }); }
  if (find) {
    find.addEventListener('keydown', function (ev) {
      if (ev.key === 'Enter') { findOp(find.value.trim()); }
    });
  }
  // the decision log: rows are JSON data; show the first matches of the filter
  var table = $('fk-log'), q = $('fk-q'), fPass = $('fk-pass'), fRule = $('fk-rule');
  var fAction = $('fk-action'), count = $('fk-count'), more = $('fk-more');
  var data = $('fk-log-data');
  var log = data ? JSON.parse(data.textContent) : [];
  var hay = log.map(function (d) {
    return [d[0], d[1], d[2], d[3], d[4], d[5], d[6].join(' '), d[7], d[8]].join('\n')
      .toLowerCase();
  });
  var STEP = 200, limit = STEP, hits = [];
  function cell(tr, text) {
    var td = doc.createElement('td');
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }
  function draw() {
    if (!table) { return; }
    var body = doc.createElement('tbody');
    var n = Math.min(limit, hits.length);
    for (var k = 0; k < n; k++) {
      var d = log[hits[k]], tr = doc.createElement('tr');
      tr.setAttribute('data-pass', d[1]);
      tr.setAttribute('data-rule', d[2]);
      tr.setAttribute('data-action', d[3]);
      for (var f = 0; f < 6; f++) { cell(tr, String(d[f])); }
      var ops = cell(tr, '');
      d[6].forEach(function (name, i) {
        if (i) { ops.appendChild(doc.createTextNode(' ')); }
        var s = doc.createElement('span');
        s.className = 'opref';
        s.setAttribute('data-goto', name);
        s.textContent = name;
        ops.appendChild(s);
      });
      cell(tr, d[7]);
      cell(tr, d[8]);
      body.appendChild(tr);
    }
    table.replaceChild(body, table.tBodies[0]);
    if (count) {
      count.textContent = hits.length + ' of ' + log.length + ' decisions' +
        (n < hits.length ? ' (showing ' + n + ')' : '');
    }
    if (more) { more.hidden = n >= hits.length; }
  }
  function filter() {
    var words = q ? q.value.toLowerCase().split(/\s+/).filter(Boolean) : [];
    var p = fPass ? fPass.value : '', r = fRule ? fRule.value : '';
    var a = fAction ? fAction.value : '';
    hits = [];
    for (var i = 0; i < log.length; i++) {
      var d = log[i];
      if ((p && d[1] !== p) || (r && d[2] !== r) || (a && d[3] !== a)) { continue; }
      var ok = true;
      for (var w = 0; ok && w < words.length; w++) { ok = hay[i].indexOf(words[w]) >= 0; }
      if (ok) { hits.push(i); }
    }
    limit = STEP;
    draw();
    return hits.length;
  }
  [q, fPass, fRule, fAction].forEach(function (el) {
    if (el) { el.addEventListener(el === q ? 'input' : 'change', filter); }
  });
  if (more) { more.addEventListener('click', function () { limit += 5 * STEP; draw(); }); }
  var selRow = null;
  doc.addEventListener('click', function (ev) {
    var t = ev.target;
    if (!(t instanceof Element)) { return; }
    var go = t.closest('[data-goto]');
    if (go) { goTo(go.getAttribute('data-goto')); return; }
    var link = t.closest('[data-page-link]');
    if (link) { show(parseInt(link.getAttribute('data-page-link'), 10)); return; }
    var grp = t.closest('tr[data-group-link]');
    if (grp) {
      var id = grp.getAttribute('data-group-link');
      unlight();
      if (selRow) { selRow.classList.remove('sel'); }
      selRow = grp; grp.classList.add('sel');
      var first = null;
      doc.querySelectorAll('svg.gpage [data-group="' + id + '"]').forEach(function (el) {
        light(el);
        if (first === null) { first = el; }
      });
      if (first) { reveal(first); }
      return;
    }
    var op = t.closest('svg.gpage .op');
    if (op && q) {
      q.value = op.getAttribute('data-op');
      var n = filter();
      if (hover) { hover.textContent = q.value + ': ' + n + ' decisions in the log below'; }
    }
  });
  pages.forEach(function (svg) {
    svg.addEventListener('mouseover', function (ev) {
      var t = ev.target;
      var op = t instanceof Element ? t.closest('.op') : null;
      if (op && hover) { hover.textContent = op.getAttribute('data-op'); }
    });
  });
  filter();
  show(0);
  doc.body.setAttribute('data-ready', '1');
})();
"""


def _check_inputs(
    graph: object, plan: object, result: object, evaluation: object, options: Mapping[str, int]
) -> None:
    if not isinstance(graph, Graph):
        raise ReportError(f"graph must be a fusekit Graph, got {type(graph).__name__}")
    if not isinstance(plan, QuantPlan):
        raise ReportError(f"plan must be a fusekit QuantPlan, got {type(plan).__name__}")
    check_plan_graph(plan, graph, "render_report")
    if result is not None and not isinstance(result, (FusionResult, PipelineResult)):
        raise ReportError(
            f"result must be a FusionResult or PipelineResult, got {type(result).__name__}"
        )
    if evaluation is not None and not isinstance(evaluation, Mapping):
        raise ReportError(
            f"evaluation must be a mapping such as {{'outputs': {{name: metrics}}}}, "
            f"got {type(evaluation).__name__}"
        )
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ReportError(f"{name} must be a positive int, got {value!r}")


def render_report(
    graph: Graph,
    plan: QuantPlan,
    result: FusionResult | PipelineResult | None = None,
    evaluation: Mapping[str, Any] | None = None,
    title: str | None = None,
    *,
    rows_per_page: int = 24,
    page_ops: int = 300,
    detail_limit: int = 5000,
    max_decision_rows: int = 20000,
) -> str:
    """The HTML report of ``plan`` on ``graph`` as one self-contained document.

    ``result`` (the decision log of a pass or pipeline) adds the per-pass summary and the
    decision log; ``evaluation`` (``{"outputs": {name: {"sqnr_db": ..., "cosine": ...,
    "max_abs": ...}}, ...}``, any other entries shown as key/value rows) adds the accuracy table.
    The detailed drawing has ``rows_per_page`` layer rows and at most ``page_ops`` ops per page
    (Constant ops, drawn beside their consumer, not counted); graphs with more than
    ``detail_limit`` ops are drawn as an overview (5000 ops per page); the decision table holds at
    most ``max_decision_rows`` rows. The output depends only on the arguments (no timestamps),
    so two renders of the same inputs are identical.

    Raises :class:`ReportError` for arguments of the wrong kind and
    :class:`~fusekit.errors.InvalidPlan` when ``plan`` belongs to another graph.
    """
    options = {
        "rows_per_page": rows_per_page,
        "page_ops": page_ops,
        "detail_limit": detail_limit,
        "max_decision_rows": max_decision_rows,
    }
    _check_inputs(graph, plan, result, evaluation, options)
    # a report builds hundreds of thousands of small strings and lists for a large graph; with
    # the collector running, each burst rescans every live object (the decision log included),
    # which measured 3x slower than the work itself. Nothing built here holds a cycle.
    with gc_paused():
        return _render(graph, plan, result, evaluation, title, **options)


def _render(
    graph: Graph,
    plan: QuantPlan,
    result: FusionResult | PipelineResult | None,
    evaluation: Mapping[str, Any] | None,
    title: str | None,
    *,
    rows_per_page: int,
    page_ops: int,
    detail_limit: int,
    max_decision_rows: int,
) -> str:
    g = _GraphFacts(graph)
    pf = _PlanFacts(plan)
    overview = len(g.oids) > detail_limit
    drawer = _Drawer(graph, plan, g, pf, overview)
    svgs, page_info = drawer.draw(rows_per_page, page_ops)
    if overview:
        drawing = (
            f"overview: {len(g.oids)} ops exceed detail_limit={detail_limit}, so each op is a "
            "square (dark: has quantization points, light: quantized but fused, grey: FP32); "
            "no edges or markers"
        )
    else:
        drawing = f"{len(svgs)} page(s) of up to {rows_per_page} layer rows"
    doc_title = title if title is not None else f"fusekit report: {graph.name or 'model'}"
    out = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(doc_title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(doc_title)}</h1>",
        f'<p class="meta">generated by fusekit {_e(__version__)}</p>',
        "<h2>Summary</h2>",
        _summary(graph, g, pf, drawer.dispatch, drawing),
    ]
    if evaluation is not None:
        out.append('<h2 id="evaluation">Evaluation</h2>')
        out.append(_evaluation_section(evaluation))
    results = _results_of(result) if result is not None else ()
    if results:
        out.append('<h2 id="passes">Passes</h2>')
        out.append(_pass_table(results, plan))
    out.append('<h2 id="graph">Graph</h2>')
    if overview:
        out.append(
            '<div class="legend"><span><svg class="icon" width="14" height="14"><rect class="oq" '
            'width="10" height="10" y="2"/></svg> has quantization points</span><span><svg '
            'class="icon" width="14" height="14"><rect class="oo" width="10" height="10" y="2"/>'
            '</svg> quantized, every slot fused or FP32</span><span><svg class="icon" '
            'width="14" height="14"><rect class="of" width="10" height="10" y="2"/></svg> not '
            "quantized</span></div>"
        )
    else:
        out.append(_LEGEND)
        out.append(
            '<p class="note">Boxes are ops (dashed: not quantized); a filled circle on a port is '
            "a quantization point, its colour the sharing group; a hollow circle is a slot fused "
            "into a neighbour. Dashed edges were fused and carry no Q/DQ. Stubs marked pN lead "
            "to page N. Hover for details; click an op to filter the decision log.</p>"
        )
    options_html = "".join(
        f'<option value="{k}">{k + 1}: {_e(t)}</option>' for k, t in enumerate(page_info)
    )
    out.append(
        '<div class="nav"><button id="fk-prev" type="button">&#9664; prev</button>'
        f'<span id="fk-pageinfo">page 1 of {len(svgs)}</span>'
        '<button id="fk-next" type="button">next &#9654;</button>'
        f'<select id="fk-page">{options_html}</select>'
        '<input id="fk-find" type="search" placeholder="find op (Enter)" size="28">'
        '<span id="fk-hover"></span></div>'
    )
    out.append('<div class="canvas">')
    out.extend(svgs)
    out.append("</div>")
    out.append('<h2 id="groups">Sharing groups</h2>')
    out.append(_groups_table(g, pf))
    out.append('<h2 id="decisions">Decision log</h2>')
    if results:
        out.append(_decision_log(results, max_decision_rows))
    else:
        out.append('<p class="note">No decision log: the report was made without a result.</p>')
    out.append(f"<script>{_JS}</script></body></html>\n")
    return "".join(out)


def write_report(
    path: str | Path,
    graph: Graph,
    plan: QuantPlan,
    result: FusionResult | PipelineResult | None = None,
    evaluation: Mapping[str, Any] | None = None,
    title: str | None = None,
    **options: int,
) -> None:
    """Render the report (see :func:`render_report`) and write it to ``path`` atomically.

    The file is written through a temporary file and a rename, so a failure never leaves a
    half-written report behind. ``options`` are :func:`render_report`'s keyword options.
    """
    text = render_report(graph, plan, result, evaluation, title, **options)
    write_bytes_atomic(Path(path), text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# the audit report (issue 11): a quantized model's own placement, its findings highlighted,
# beside the platform's plan


_AUDIT_CSS = (
    "mark.fk-finding{padding:0 2px;border-radius:2px}"
    "mark.fk-sev-error{background:#f6c3c3}mark.fk-sev-warning{background:#fbe3a8}"
    "mark.fk-sev-info{background:#d7e6f7}"
    "path.fk-hl{stroke:#d00 !important;stroke-width:3px !important}"
    "table.fk-audit td{vertical-align:top}"
)


def _audit_state(plan: QuantPlan, roots: Sequence[int], sid: int) -> str:
    """A slot's state in ``plan``, with its point's bit width and scale."""
    import numpy as np

    cfg = plan.configs[sid]
    if cfg is None:
        return "not quantized"
    text: str = cfg.state.name
    root = roots[sid]
    rc = plan.configs[root] if root >= 0 else cfg
    if rc is not None and rc.scale is not None and cfg.state in QUANT_POINT_STATES:
        scale = np.asarray(rc.scale).reshape(-1)
        text += f" {rc.num_bits}-bit scale " + (
            _num(float(scale[0])) if scale.size == 1 else f"x{scale.size}"
        )
    return text


def render_audit_report(
    graph: Graph,
    plan: QuantPlan,
    result: Any,
    title: str | None = None,
    **options: int,
) -> str:
    """The HTML report of an audit (:func:`fusekit.audit.audit`'s ``AuditResult``): the
    model's actual placement ``plan`` drawn as :func:`render_report` draws a plan, with

    * a findings table (severity, kind, tensors, ops, message, fix, platform rule and the
      pipeline's decision), every tensor a finding names marked
      (``<mark class="fk-finding fk-sev-<severity>" data-tensor="...">``);
    * the edges of those tensors highlighted in the drawing (class ``fk-hl``);
    * the model's placement beside the platform's plan (``result.expected.plan``), slot by
      slot, for every slot a finding names.

    ``options`` are :func:`render_report`'s keyword options.
    """
    from .audit import AuditResult
    from .errors import UnknownSlot

    if not isinstance(result, AuditResult):
        raise ReportError(f"result must be an AuditResult, not {type(result).__name__}")
    want = result.expected.plan
    doc_title = title if title is not None else f"fusekit audit: {graph.name or 'model'}"
    base = render_report(graph, plan, None, None, doc_title, **options)
    idx = graph.index
    rows = []
    for f in result.findings:
        marks = " ".join(
            f'<mark class="fk-finding fk-sev-{_e(f.severity)}" data-tensor="{_e(t)}">{_e(t)}</mark>'
            for t in f.tensors
        )
        rule = _e(f.rule) + (f"<br><code>{_e(f.decision)}</code>" if f.decision else "")
        rows.append(
            f'<tr class="fk-sev-{_e(f.severity)}"><td>{_e(f.severity)}</td><td>{_e(f.kind)}</td>'
            f"<td>{marks}</td><td>{_e(', '.join(f.ops))}</td><td>{_e(f.message)}</td>"
            f"<td>{_e(f.fix)}</td><td>{rule}</td></tr>"
        )
    counts = ", ".join(f"{result.count(s)} {s}" for s in ("error", "warning", "info"))
    section = [
        f'<h2 id="findings">Findings against {_e(result.platform)}</h2>',
        f'<p class="note">{len(result.findings)} finding(s): {_e(counts)}. The drawing below '
        "is the model's own placement; the edges of the tensors a finding names are drawn "
        "red.</p>",
        '<table class="fk-audit"><tr><th>severity</th><th>kind</th><th>tensors</th><th>ops</th>'
        "<th>what</th><th>fix</th><th>platform rule / decision</th></tr>",
        *rows,
        "</table>",
        f'<h2 id="beside">Model placement beside the {_e(result.platform)} plan</h2>',
        '<table class="fk-audit"><tr><th>slot</th><th>tensor</th><th>model</th>'
        f"<th>{_e(result.platform)}</th></tr>",
    ]
    seen: set[int] = set()
    have_roots, want_roots = plan.root_ids(), want.root_ids()
    for f in result.findings:
        for s in f.slots:
            try:
                sid = idx.slot_id(s)
            except UnknownSlot:  # not a slot of this graph
                continue
            if sid in seen:
                continue
            seen.add(sid)
            tid = idx.slot_tensor[sid]
            t = idx.tensor_names[tid] if tid >= 0 else ""
            model, platform = (
                _audit_state(plan, have_roots, sid),
                _audit_state(want, want_roots, sid),
            )
            section.append(
                f'<tr><td>{_e(str(s))}</td><td><mark class="fk-finding fk-sev-{_e(f.severity)}" '
                f'data-tensor="{_e(t)}">{_e(t)}</mark></td><td>{_e(model)}</td>'
                f"<td>{_e(platform)}</td></tr>"
            )
    section.append("</table>")
    out = base.replace("</style>", _AUDIT_CSS + "</style>", 1)
    out = out.replace('<h2 id="graph">', "".join(section) + '<h2 id="graph">', 1)
    hot = {t for f in result.findings for t in f.tensors}
    if hot:
        titles = "|".join(re.escape(_e(t)) for t in sorted(hot, key=len, reverse=True))
        pattern = re.compile(r'<path class="(e [a-z]+)"([^>]*)><title>(' + titles + r") \(")
        out = pattern.sub(lambda m: f'<path class="{m[1]} fk-hl"{m[2]}><title>{m[3]} (', out)
        # an edge cut by a page break is a stub on each page
        stub = re.compile(
            r'<path class="stub"([^>]*)/>(<text[^<]*</text>)<title>(' + titles + r") (read|from) "
        )
        out = stub.sub(
            lambda m: f'<path class="stub fk-hl"{m[1]}/>{m[2]}<title>{m[3]} {m[4]} ', out
        )
    return out
