"""bench/peers.py: rows per quantizer and output, failures as rows, the marked docs section."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from ._roundtrip import ROOT
from .test_calibrate import conv_relu_model


def _load_peers() -> ModuleType:
    """bench/ is not a package: import peers.py from its path."""
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


peers = _load_peers()


@pytest.fixture()
def acc(tmp_path: Path) -> Path:
    """A miniature accuracy directory laid out as ../shared/accuracy/make_data.py writes it."""
    (tmp_path / "models").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "models" / "tiny.onnx").write_bytes(conv_relu_model())
    x = np.random.default_rng(0).standard_normal((6, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data" / "tiny.npz", calib__x=x[:4], eval__x=x[4:])
    manifest = {"models": {"tiny": {"model": "models/tiny.onnx"}}}
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_rows_for_fusekit_and_quantize_static(
    acc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.json"
    argv = ["--acc", str(acc), "--quantizers", "fusekit,qs-pt", "--runs", "2", "--json", str(out)]
    assert peers.main(argv) == 0
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    rows: list[dict[str, Any]] = saved["rows"]
    assert [(r["model"], r["quantizer"], r["output"]) for r in rows] == [
        ("tiny", "fusekit", "y"),
        ("tiny", "qs-pt", "y"),
    ]
    for r in rows:
        assert "error" not in r, r
        assert r["computing_ops"] == 2 and r["q_nodes"] > 0
        assert r["float_ms"] > 0 and r["qdq_ms"] > 0 and r["cpu_s"] >= 0
    assert text.count("| tiny / y |") == 2 and "1 thread" in text
    # onnxruntime's own quantizer with uint8 activations: both Convs run as int8 kernels
    assert rows[1]["int8_ops"] == 2
    # the saved rows render to the same table without measuring again
    assert peers.main(["--acc", str(acc), "--from-json", str(out)]) == 0
    assert capsys.readouterr().out == text


def test_a_failing_quantizer_is_a_row(
    acc: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(model: Path, data: Path, work: Path) -> Any:
        raise RuntimeError("no luck\nsecond line")

    monkeypatch.setitem(peers.RUNNERS, "qs-pc", broken)
    assert peers.main(["--acc", str(acc), "--quantizers", "qs-pc", "--runs", "1"]) == 0
    text = capsys.readouterr().out
    assert "| tiny / y | qs-pc | - |" in text
    assert "quantization failed: RuntimeError: no luck |" in text


def test_write_docs_replaces_only_the_marked_section(tmp_path: Path) -> None:
    doc = tmp_path / "accuracy.md"
    doc.write_text("# Accuracy\n\nkept text\n")
    peers.write_docs("table one", doc)
    first = doc.read_text()
    assert first.startswith("# Accuracy\n\nkept text\n") and "table one" in first
    doc.write_text(first + "\ntrailing text\n")
    peers.write_docs("table two", doc)
    second = doc.read_text()
    assert "table one" not in second and "table two" in second
    assert second.count(peers.BEGIN) == 1 and second.endswith("trailing text\n")
    assert "kept text" in second
