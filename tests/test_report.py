"""fusekit.report: the HTML report, checked structurally with html.parser.

The document is parsed into a small element tree; every test reads that tree (never a regex over
the text) and compares it with facts computed here from the graph and plan through the public
API, so a drawing that lost an op, a marker or a group colour fails.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fusekit
from fusekit import FusekitError, Graph, InvalidPlan, QuantPlan, QuantState, Slot
from fusekit.examples import example_model_path
from fusekit.report import (
    LOG_FIELDS,
    QUANT_POINT_STATES,
    ReportError,
    render_report,
    write_report,
)

from .conftest import CORPUS, corpus_bytes
from .graphs import G

_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


class Node:
    """One element of the parsed document."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None):
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Node] = []
        self.text: list[str] = []  # text directly inside this element

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)
        ]

    def by_id(self, ident: str) -> Node:
        hits = [n for n in self.iter() if n.attrs.get("id") == ident]
        assert len(hits) == 1, f"{len(hits)} elements with id {ident!r}"
        return hits[0]

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def ancestors(self) -> Iterator[Node]:
        p = self.parent
        while p is not None:
            yield p
            p = p.parent


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in _VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"stray </{tag}>"
        self.cur = node.parent

    def handle_data(self, data: str) -> None:
        self.cur.text.append(data)


def parse_html(text: str) -> Node:
    """The element tree of ``text`` (asserts that every element is closed)."""
    b = _TreeBuilder()
    b.feed(text)
    b.close()
    assert b.cur is b.root, f"unclosed <{b.cur.tag}>"
    return b.root


def op_elements(doc: Node) -> list[Node]:
    """The op elements: class ``op`` inside a drawing page."""
    return [
        n
        for n in doc.iter()
        if "op" in n.classes and any(a.tag == "svg" and "gpage" in a.classes for a in n.ancestors())
    ]


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def example() -> tuple[Graph, QuantPlan, fusekit.PipelineResult]:
    g = fusekit.load(example_model_path())
    plan = fusekit.init_plan(g, "trt_int8")
    res = fusekit.default_pipeline("trt_int8").run(g, plan)
    return g, plan, res


@pytest.fixture(scope="module")
def example_doc(example: Any) -> tuple[str, Node]:
    g, _, res = example
    text = render_report(g, res.plan, res)
    return text, parse_html(text)


def _states(plan: QuantPlan) -> dict[str, QuantState]:
    return {str(s): plan[s].state for s in plan.slots()}


# --------------------------------------------------------------------------------------------
# the drawing


def test_one_op_element_per_op(example: Any, example_doc: Any) -> None:
    """Every op of the graph has exactly one element, across all pages."""
    g, _, _ = example
    _, doc = example_doc
    ops = op_elements(doc)
    assert len(ops) == len(g) == 566  # the bundled model
    assert Counter(n.attrs["data-op"] for n in ops) == Counter(g.order)
    # and nothing outside the drawing claims to be an op
    assert len(doc.find_all(cls="op")) == len(g)


def test_pages_are_all_in_the_document_one_shown(example_doc: Any) -> None:
    _, doc = example_doc
    pages = doc.find_all("svg", "gpage")
    assert len(pages) > 1, "the example is large enough to be paginated"
    assert [p.attrs["data-page"] for p in pages] == [str(k) for k in range(len(pages))]
    assert ["cur" in p.classes for p in pages] == [True] + [False] * (len(pages) - 1)
    assert all(op_elements(p) for p in pages), "no empty page"
    options = doc.by_id("fk-page").find_all("option")
    assert [o.attrs["value"] for o in options] == [str(k) for k in range(len(pages))]


def test_markers_are_the_quantization_points(example: Any, example_doc: Any) -> None:
    """A filled marker on exactly the slots that quantize, a hollow one on fused slots."""
    _, _, res = example
    _, doc = example_doc
    states = _states(res.plan)
    drawn: dict[str, str] = {}
    for n in doc.find_all("circle", "m"):
        if "data-slot" in n.attrs:
            assert n.attrs["data-slot"] not in drawn, "one marker per slot"
            drawn[n.attrs["data-slot"]] = next(c for c in ("ma", "mp", "mo") if c in n.classes)
    expected = {}
    for slot, st in states.items():
        if st in QUANT_POINT_STATES:
            expected[slot] = "mp" if st in (QuantState.PASSIVE, QuantState.PASSIVE_INIT) else "ma"
        elif st == QuantState.OVERLAPPED:
            expected[slot] = "mo"
    assert drawn == expected
    assert sum(1 for v in drawn.values() if v != "mo") == sum(
        1 for st in states.values() if st in QUANT_POINT_STATES
    )


def test_groups_coloured_consistently(example: Any, example_doc: Any) -> None:
    """One colour per sharing group, the same on markers, edges and the legend swatch."""
    _, _, res = example
    _, doc = example_doc
    colour: dict[str, set[str]] = defaultdict(set)
    members: dict[str, set[str]] = defaultdict(set)
    for n in doc.iter():
        grp = n.attrs.get("data-group")
        if grp is None or n.tag == "span":
            continue
        colour[grp].add(n.attrs["color"])
        if "data-slot" in n.attrs:
            members[grp].add(n.attrs["data-slot"])
    assert all(len(c) == 1 for c in colour.values())
    by_colour = Counter(next(iter(c)) for c in colour.values())
    assert max(by_colour.values()) == 1, "two groups share a colour"
    # the groups are the plan's: every drawn member of a group has the same root
    groups = res.plan.groups()
    assert len(colour) == len(groups) > 10
    slot_group = {str(s): k for k, grp in enumerate(groups) for s in grp}
    for grp, slots in members.items():
        assert len({slot_group[s] for s in slots}) == 1, grp
    # swatches
    swatches = doc.find_all("span", "sw")
    assert len(swatches) == len(groups)
    for sw in swatches:
        assert sw.attrs["style"] == f"background:{next(iter(colour[sw.attrs['data-group']]))}"


def _single_page(example: Any) -> Node:
    g, _, res = example
    return parse_html(render_report(g, res.plan, res, rows_per_page=10_000, page_ops=10_000))


def test_edges_quantized_fused_or_float(example: Any) -> None:
    """On one page every op-to-op edge is a path, classed by the plan (fused = dashed 'ov')."""
    g, _, res = example
    doc = _single_page(example)
    assert len(doc.find_all("svg", "gpage")) == 1
    plan = res.plan
    want: Counter[str] = Counter()
    for op in g:
        for k, t in enumerate(op.inputs):
            p = g.producer(t) if t else None
            if p is None:
                continue
            a, b = plan.get(p), plan.get(Slot(op.name, "in", k))
            ends = [c.state for c in (a, b) if c is not None]
            if any(s in QUANT_POINT_STATES for s in ends):
                want["q"] += 1
            elif QuantState.OVERLAPPED in ends:
                want["ov"] += 1
            else:
                want["fp"] += 1
    got = Counter(
        next(c for c in ("q", "ov", "fp") if c in n.classes)
        for n in doc.find_all("path", "e")
        if n.parent is not None and "edges" in n.parent.classes
    )
    assert got == want
    assert got["ov"] > 0 and got["q"] > 0


def test_layout_edges_point_down_and_boxes_do_not_overlap(example: Any) -> None:
    doc = _single_page(example)
    for n in doc.find_all("path", "e"):
        if n.parent is None or "edges" not in n.parent.classes:
            continue
        nums = [int(v) for v in re.findall(r"-?\d+", n.attrs["d"])]
        assert nums[1] < nums[-1], f"edge goes up: {n.attrs['d']}"
    rows: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for op in op_elements(doc):
        x, y = (int(v) for v in re.findall(r"-?\d+", op.attrs["transform"]))
        rect = op.find_all("rect")[0]
        rows[y].append((x, x + int(rect.attrs["width"])))
    for spans in rows.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start


def test_edges_between_pages_become_stubs_to_the_producer_page(
    example: Any, example_doc: Any
) -> None:
    g, _, _ = example
    _, doc = example_doc
    page_of: dict[str, int] = {}
    incoming: Counter[tuple[int, int]] = Counter()  # (consumer page, producer page)
    for page in doc.find_all("svg", "gpage"):
        k = int(page.attrs["data-page"])
        for op in op_elements(page):
            page_of[op.attrs["data-op"]] = k
        for x in page.find_all("g", "xref"):
            if " from " in x.find_all("title")[0].all_text():
                incoming[k, int(x.attrs["data-page-link"])] += 1
    want: Counter[tuple[int, int]] = Counter()
    for op in g:
        for t in op.inputs:
            p = g.producer(t) if t else None
            if p is not None and page_of[p.op] != page_of[op.name]:
                want[page_of[op.name], page_of[p.op]] += 1
    assert incoming == want
    assert sum(want.values()) > 0


def test_overview_for_large_graphs_keeps_one_element_per_op(example: Any) -> None:
    g, _, res = example
    text = render_report(g, res.plan, res, detail_limit=100)
    doc = parse_html(text)
    assert Counter(n.attrs["data-op"] for n in op_elements(doc)) == Counter(g.order)
    assert not doc.find_all("circle", "m") and not doc.find_all("path", "e")
    assert "overview: 566 ops exceed detail_limit=100" in doc.all_text()
    quantizing = {op.name for op in g if any(_quantizes(res.plan, s) for s in op.slots())}
    dark = {n.attrs["data-op"] for n in op_elements(doc) if "oq" in n.classes}
    assert dark == quantizing


def _quantizes(plan: QuantPlan, slot: Slot) -> bool:
    cfg = plan.get(slot)
    return cfg is not None and cfg.state in QUANT_POINT_STATES


# --------------------------------------------------------------------------------------------
# tables


def test_pass_table_counts(example: Any, example_doc: Any) -> None:
    _, plan, res = example
    _, doc = example_doc

    def points(p: QuantPlan) -> int:
        return sum(1 for s in p.slots() if p[s].state in QUANT_POINT_STATES)

    table = next(t for t in doc.find_all("table") if "Q points before" in t.all_text())
    rows = table.find_all("tr")[1:]
    assert len(rows) == len(res.results)
    for row, r in zip(rows, res.results):
        cells = [c.all_text() for c in row.find_all("td")]
        assert cells[1] == r.pass_name
        assert cells[2:4] == [str(r.n_changes), str(r.n_refusals)]
        assert cells[8:10] == [str(points(r.input_plan)), str(points(r.plan))]
        assert int(cells[10]) == points(r.plan) - points(r.input_plan)
        assert cells[12] == str(len(r.plan.groups()))
    assert rows[0].find_all("td")[8].all_text() == str(points(plan))


def log_data(doc: Node) -> str:
    """The raw text of the embedded decision log."""
    return doc.by_id("fk-log-data").all_text()


def log_records(doc: Node) -> list[dict[str, Any]]:
    """The decision log rows, as the report's script reads them."""
    return [dict(zip(LOG_FIELDS, r)) for r in json.loads(log_data(doc))]


def test_decision_log_lists_every_decision(example: Any, example_doc: Any) -> None:
    _, _, res = example
    _, doc = example_doc
    rows = log_records(doc)
    ds = res.decisions
    assert len(rows) == len(ds) > 0
    assert [r["n"] for r in rows] == list(range(1, len(ds) + 1))
    for row, d in zip(rows, ds):
        assert (row["pass"], row["rule"], row["action"], row["reason"]) == (
            d.pass_name,
            d.rule,
            d.action,
            d.reason,
        )
        assert row["slot"] == ("" if d.slot is None else str(d.slot))
        assert row["target"] == ("" if d.target is None else str(d.target))
        assert row["ops"] == list(d.ops)
        for c in d.changes:
            assert f"{c.slot}: {c.state_before.name}\u2192{c.state_after.name}" in row["changes"]
    # the filters offer exactly the values present
    for ident, key in (("fk-pass", "pass"), ("fk-rule", "rule"), ("fk-action", "action")):
        values = [o.attrs["value"] for o in doc.by_id(ident).find_all("option")]
        assert values == ["", *sorted({r[key] for r in rows})]
    assert {"overlap", "refuse"} <= {r["action"] for r in rows}
    table = doc.by_id("fk-log")
    assert [th.all_text() for th in table.find_all("th")] == ["#", *LOG_FIELDS[1:]]


def test_decision_rows_are_capped_fairly(example: Any) -> None:
    g, _, res = example
    doc = parse_html(render_report(g, res.plan, res, max_decision_rows=40))
    rows = log_records(doc)
    assert len(rows) == 40
    per_pass = Counter(r["pass"] for r in rows)
    busy = [r.pass_name for r in res.results if r.n_changes + r.n_refusals]
    assert set(per_pass) == set(busy), "every pass with decisions keeps some rows"
    assert f"The log has {len(res.decisions)} decisions" in doc.all_text()


def test_fusion_result_alone(example: Any) -> None:
    g, plan, _ = example
    r = fusekit.fuse(g, plan, "trt_int8")
    doc = parse_html(render_report(g, r.plan, r))
    table = next(t for t in doc.find_all("table") if "Q points before" in t.all_text())
    assert len(table.find_all("tr")) == 2
    assert len(log_records(doc)) == len(r.decisions)


def test_without_result(example: Any) -> None:
    g, plan, _ = example
    doc = parse_html(render_report(g, plan))
    assert len(op_elements(doc)) == len(g)
    assert not [n for n in doc.iter() if n.attrs.get("id") == "fk-log"]
    assert "No decision log" in doc.all_text()


def test_evaluation_table(example: Any) -> None:
    g, _, res = example
    evaluation = {
        "outputs": {
            "probs": {"sqnr_db": 25.61234, "cosine": 0.99871, "max_abs": 0.0123, "extra": 3},
            "<b>out&2</b>": {"sqnr_db": float("nan")},
        },
        "samples": 8,
        "data": "random inputs",
    }
    doc = parse_html(render_report(g, res.plan, res, evaluation))
    table = doc.by_id("fk-eval")
    rows = table.find_all("tr")
    assert [c.all_text() for c in rows[0].children] == [
        "output",
        "sqnr_db",
        "cosine",
        "max_abs",
        "extra",
    ]
    assert [c.all_text() for c in rows[1].children] == ["probs", "25.61", "0.9987", "0.0123", "3"]
    assert [c.all_text() for c in rows[2].children] == ["<b>out&2</b>", "nan", "", "", ""]
    assert not table.find_all("b"), "an output name became markup"
    text = doc.all_text()
    assert "random inputs" in text and "samples" in text


def test_evaluation_without_outputs_is_shown_as_is(example: Any) -> None:
    g, plan, _ = example
    doc = parse_html(render_report(g, plan, evaluation={"note": {"a": [1, 2]}}))
    assert '{"a": [1, 2]}' in doc.all_text()


# --------------------------------------------------------------------------------------------
# safety


HOSTILE = '<script>alert("x")</script>&amp;\'"'


def _hostile_graph() -> Graph:
    b = G(inputs=("in<\"'&>",))
    b.conv(HOSTILE, "in<\"'&>")
    b.relu("</svg><img src=x onerror=alert(1)>", HOSTILE)
    b.op("Constant", "k\x01</title>", [], value=np.float32(1.0))
    b.binary("Add", "sum -->", "</svg><img src=x onerror=alert(1)>", "k\x01</title>")
    return b.build(outputs=["sum -->"])


def test_model_strings_are_escaped() -> None:
    g = _hostile_graph()
    plan = fusekit.init_plan(g, "trt_int8")
    res = fusekit.default_pipeline("trt_int8").run(g, plan)
    assert any(HOSTILE in d.ops for d in res.decisions), "the log mentions the hostile op"
    text = render_report(g, res.plan, res, {"outputs": {HOSTILE: {"cosine": 1.0}}}, HOSTILE)
    doc = parse_html(text)
    scripts = [n.attrs.get("type", "") for n in doc.find_all("script")]
    assert scripts == ["application/json", ""], "only fusekit's own log data and script"
    assert not doc.find_all("img")
    names = {n.attrs["data-op"] for n in op_elements(doc)}
    assert names == {HOSTILE, "</svg><img src=x onerror=alert(1)>", "k\ufffd</title>", "sum -->"}
    assert doc.find_all("title")[0].all_text() == HOSTILE
    assert any(HOSTILE in r["ops"] for r in log_records(doc))
    assert not set(log_data(doc)) & set("<>&"), "the embedded log cannot end its element"
    assert "\x01" not in text
    # the raw text never holds a model string unescaped
    assert "<script>alert" not in text and "<img" not in text and "sum -->" not in text


def test_no_external_resources(example_doc: Any) -> None:
    text, doc = example_doc
    for n in doc.iter():
        assert "src" not in n.attrs, f"<{n.tag} src=...>"
        href = n.attrs.get("href")
        assert href is None or href.startswith("#"), href
        assert n.tag not in ("link", "iframe", "img", "object", "embed", "base")
    assert not re.search(r"url\(", text), "CSS must not load anything"
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", text))
    assert urls == {"http://www.w3.org/2000/svg"}, "only the SVG namespace name"
    csp = next(n for n in doc.find_all("meta") if n.attrs.get("http-equiv"))
    assert csp.attrs["content"].startswith("default-src 'none'")


# --------------------------------------------------------------------------------------------
# the API


def test_inputs_are_not_modified_and_output_is_deterministic(example: Any) -> None:
    g, plan, res = example
    before = (list(res.plan.configs), res.plan.link_table(), len(res.decisions), g.order)
    a = render_report(g, res.plan, res)
    b = render_report(g, res.plan, res)
    assert a == b
    after = (list(res.plan.configs), res.plan.link_table(), len(res.decisions), g.order)
    assert before == after
    assert res.input_plan is plan


def test_bad_arguments(example: Any) -> None:
    g, plan, res = example
    other = fusekit.load(corpus_bytes("mobilenet_v2")) if CORPUS.is_dir() else _hostile_graph()
    with pytest.raises(InvalidPlan, match="another graph"):
        render_report(other, plan)
    with pytest.raises(ReportError, match="result must be"):
        render_report(g, plan, result=[])  # type: ignore[arg-type]
    with pytest.raises(ReportError, match="evaluation must be a mapping"):
        render_report(g, plan, evaluation=[1.0])  # type: ignore[arg-type]
    with pytest.raises(ReportError, match="rows_per_page"):
        render_report(g, plan, rows_per_page=0)
    with pytest.raises(ReportError, match="plan must be"):
        render_report(g, res)  # type: ignore[arg-type]
    assert issubclass(ReportError, FusekitError) and issubclass(ReportError, ValueError)


def test_write_report_is_atomic(example: Any, tmp_path: Path) -> None:
    g, _, res = example
    path = tmp_path / "r.html"
    write_report(path, g, res.plan, res, title="t")
    assert path.read_text(encoding="utf-8") == render_report(g, res.plan, res, title="t")
    path.write_text("old")
    with pytest.raises(ReportError):
        write_report(path, g, res.plan, res, rows_per_page=-1)
    assert path.read_text() == "old"
    with pytest.raises(FusekitError, match="does not exist"):
        write_report(tmp_path / "missing" / "r.html", g, res.plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"], "no temporary file left"


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is missing")
def test_bert24_report() -> None:
    """The largest corpus model: every op drawn once, pages bounded, every decision logged."""
    g = fusekit.load(corpus_bytes("bert24_encoder_op13"))
    res = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
    doc = parse_html(render_report(g, res.plan, res))
    assert Counter(n.attrs["data-op"] for n in op_elements(doc)) == Counter(g.order)
    pages = doc.find_all("svg", "gpage")
    assert all(len(op_elements(p)) <= 2 * 300 for p in pages)  # page_ops, plus constants
    assert len(log_records(doc)) == len(res.decisions)
