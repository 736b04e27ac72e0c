"""The HTML report in a real browser: headless Chromium loads it, runs its script, and we read
back the live DOM.

How errors are caught (no Python browser driver needed): the test writes a copy of the report
with a small probe script inserted first in ``<head>``. The probe records, before the report's
own code runs, every uncaught exception (``window.onerror``, capture phase, so failed resource
loads count too), unhandled promise rejection, Content-Security-Policy violation (the report
forbids all network access, so any fetch would be one) and every ``console.error``/``warn``
call. After ``load`` it also drives the page the way a user would (filter the decision log, go
to the next page, jump to an op from the log) and writes everything it saw as JSON into a
``<pre id="fk-probe">``. ``chromium --dump-dom`` prints the DOM after the page has loaded, so
the JSON comes back on stdout, together with the op elements the test counts itself.

As a second net, Chromium runs with ``--enable-logging=stderr --v=0``, which prints every console
message as a ``CONSOLE`` line; the report never writes to the console, so any such line fails.

Without Chromium the test skips with a message, except under ``CI=true``: ``.ci/run`` installs
Debian's ``chromium`` there, so a missing browser means the check did not run, and that fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import fusekit
from fusekit.examples import example_model_path
from fusekit.report import render_report

from .test_report import HOSTILE, _hostile_graph, log_records, op_elements, parse_html

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    # let the load handlers and the probe's timer run before the DOM is dumped
    "--virtual-time-budget=10000",
    "--dump-dom",
)

PROBE = r"""
(function () {
  var errors = [];
  function rec(kind, msg) { errors.push(kind + ': ' + msg); }
  window.addEventListener('error', function (e) {
    var what = e.message || (e.target && e.target.outerHTML) || 'resource failed';
    rec('error', what);
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    rec('rejection', String(e.reason));
  });
  document.addEventListener('securitypolicyviolation', function (e) {
    rec('csp', e.violatedDirective + ' ' + e.blockedURI);
  });
  ['error', 'warn'].forEach(function (k) {
    var orig = console[k];
    console[k] = function () {
      rec('console.' + k, Array.prototype.join.call(arguments, ' '));
      return orig.apply(console, arguments);
    };
  });
  function visibleRows() {
    var t = document.getElementById('fk-log');
    if (!t) { return -1; }
    return Array.prototype.filter.call(t.tBodies[0].rows, function (r) {
      return getComputedStyle(r).display !== 'none';
    }).length;
  }
  function counted() { return document.getElementById('fk-count').textContent; }
  function shown() {
    return Array.prototype.map.call(document.querySelectorAll('svg.gpage'), function (s) {
      return getComputedStyle(s).display !== 'none';
    });
  }
  function set(id, value, ev) {
    var el = document.getElementById(id);
    el.value = value;
    el.dispatchEvent(new Event(ev));
  }
  window.addEventListener('load', function () {
    setTimeout(function () {
      var out = {};
      try {
        out.ready = document.body.getAttribute('data-ready');
        out.ops = document.querySelectorAll('svg.gpage .op').length;
        out.resources = performance.getEntriesByType('resource').length;
        out.shownAtStart = shown();
        out.rows = visibleRows();
        if (out.rows >= 0) {
          out.countAtStart = counted();
          document.getElementById('fk-more').click();
          out.rowsAfterMore = visibleRows();
          set('fk-q', FILTER, 'input');
          out.filtered = visibleRows();
          out.countFiltered = counted();
          set('fk-q', '', 'input');
          set('fk-action', 'refuse', 'change');
          out.refusals = visibleRows();
          out.countRefusals = counted();
          set('fk-action', '', 'change');
          out.rowsAfterReset = visibleRows();
        }
        var next = document.getElementById('fk-next');
        next.click();
        out.shownAfterNext = shown();
        if (document.getElementById('fk-q')) { set('fk-q', GOTO, 'input'); }
        var ref = Array.prototype.find.call(document.querySelectorAll('[data-goto]'),
          function (el) { return el.getAttribute('data-goto') === GOTO; });
        if (ref) {
          ref.click();
          out.shownAfterGoto = shown();
          out.highlighted = Array.prototype.map.call(
            document.querySelectorAll('svg.gpage .op.hl'),
            function (el) { return el.getAttribute('data-op'); });
        }
      } catch (e) {
        rec('probe', e && e.stack ? e.stack : String(e));
      }
      out.errors = errors;
      var pre = document.createElement('pre');
      pre.id = 'fk-probe';
      pre.textContent = JSON.stringify(out);
      document.body.appendChild(pre);
    }, 0);
  });
})();
"""


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = _chromium()
    if exe is None:
        msg = (
            "chromium is not installed, so the report was not checked in a browser "
            "(install Debian's `chromium` package to run this test; .ci/run does so in CI)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test, but " + msg)
        pytest.skip(msg)
    return exe


def _js(text: str) -> str:
    """A JS string literal that cannot end the inline script it sits in."""
    return json.dumps(text).replace("<", "\\u003c")


def _load(chromium: str, html: str, tmp: Path, filter_text: str, goto: str) -> tuple[Any, str]:
    """Load ``html`` (with the probe) in Chromium; the dumped DOM tree and Chromium's stderr."""
    probe = PROBE.replace("FILTER", _js(filter_text)).replace("GOTO", _js(goto))
    head = '<meta charset="utf-8">'
    assert html.count(head) == 1
    page = tmp / "report.html"
    page.write_text(html.replace(head, head + f"<script>{probe}</script>", 1), encoding="utf-8")
    proc = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return parse_html(proc.stdout), proc.stderr


def _probe(doc: Any) -> dict[str, Any]:
    hits = [n for n in doc.iter() if n.attrs.get("id") == "fk-probe"]
    assert len(hits) == 1, "the probe did not report: the page's load handlers never ran"
    return json.loads(hits[0].all_text())  # type: ignore[no-any-return]


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"CONSOLE[(:]", line)]


def _matches(html: str, text: str) -> int:
    """How many log rows the report's search should keep for ``text`` (one word)."""
    doc = parse_html(html)
    hay = [
        "\n".join(str(v) if not isinstance(v, list) else " ".join(v) for v in rec.values()).lower()
        for rec in log_records(doc)
    ]
    return sum(1 for h in hay if text.lower() in h)


def test_example_report_in_chromium(chromium: str, tmp_path: Path) -> None:
    """The bundled model's report: no errors, one SVG element per op, working controls."""
    g = fusekit.load(example_model_path())
    res = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
    html = render_report(g, res.plan, res, {"outputs": {"probs": {"sqnr_db": 20.0}}})
    last_op = g.order[-1]
    doc, stderr = _load(chromium, html, tmp_path, "Reshape@1", last_op)
    out = _probe(doc)

    assert out["errors"] == []
    assert _console_lines(stderr) == []
    assert out["resources"] == 0, "the page fetched something"
    assert out["ready"] == "1", "the report's script did not finish"

    # one SVG element per op: counted by the live page and again in the dumped DOM
    assert out["ops"] == len(g)
    assert Counter(n.attrs["data-op"] for n in op_elements(doc)) == Counter(g.order)

    n_pages = len(out["shownAtStart"])
    assert n_pages > 1
    assert out["shownAtStart"] == [True] + [False] * (n_pages - 1)
    assert out["shownAfterNext"] == [False, True] + [False] * (n_pages - 2)
    assert out["shownAfterGoto"] == [False] * (n_pages - 1) + [True]
    assert out["highlighted"] == [last_op]

    total = len(res.decisions)
    assert total > 200, "enough decisions to need 'show more'"
    assert out["rows"] == out["rowsAfterReset"] == 200
    assert out["countAtStart"] == f"{total} of {total} decisions (showing 200)"
    assert out["rowsAfterMore"] == min(total, 1200)
    expected = _matches(html, "Reshape@1")
    assert 0 < expected < total
    assert out["filtered"] == min(expected, 200)
    assert out["countFiltered"].startswith(f"{expected} of {total} decisions")
    n_refusals = len(res.refusals)
    assert n_refusals > 0
    assert out["refusals"] == min(n_refusals, 200)
    assert out["countRefusals"].startswith(f"{n_refusals} of {total} decisions")


def test_hostile_names_in_chromium(chromium: str, tmp_path: Path) -> None:
    """Names that look like markup stay text in the browser: no script runs, nothing loads."""
    g = _hostile_graph()
    res = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
    html = render_report(g, res.plan, res, title=HOSTILE)
    doc, stderr = _load(chromium, html, tmp_path, HOSTILE, HOSTILE)
    out = _probe(doc)
    assert out["errors"] == []
    assert _console_lines(stderr) == []
    assert out["resources"] == 0
    assert out["ops"] == len(g)
    assert not doc.find_all("img")
    assert {n.attrs["data-op"] for n in op_elements(doc)} == set(g.order) - {"k\x01</title>"} | {
        "k\ufffd</title>"
    }
    assert out["filtered"] == _matches(html, HOSTILE) > 0
    assert out["highlighted"] == [HOSTILE]


def test_the_probe_sees_errors(chromium: str, tmp_path: Path) -> None:
    """The harness is not blind: a report with a script error, a console.error and an external
    image (blocked by the report's CSP) is reported on all channels."""
    g = _hostile_graph()
    html = render_report(g, fusekit.init_plan(g, "trt_int8"))
    broken = html.replace(
        "</body>",
        '<img src="https://example.invalid/x.png"><script>console.error("boom");'
        "notDefined();</script></body>",
    )
    doc, stderr = _load(chromium, broken, tmp_path, "", "")
    errors = _probe(doc)["errors"]
    assert any(e.startswith("console.error: boom") for e in errors), errors
    assert any("notDefined" in e for e in errors), errors
    assert any(e.startswith("csp: img-src") for e in errors), errors
    assert len(_console_lines(stderr)) >= 2
