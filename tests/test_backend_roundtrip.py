"""Every model of the ONNX project's own backend test data survives load + to_model unchanged.

The data (1,905 ``model.onnx`` files, most with ``test_data_set_0`` inputs and outputs) comes
from ``../shared/onnx-backend-tests``; nobody here wrote it, which is the point. Each model is
one test: the round trip must be byte-identical (or, when the file's node order is not
topological or its node names not unique, structurally equivalent), pass ``onnx.checker``
whenever the original does, and, when onnxruntime can run the original on its test inputs,
produce identical outputs. A model onnxruntime cannot run is counted with the reason, not
failed: that is onnxruntime's limit, not fusekit's. The last test prints the counts.
"""

from __future__ import annotations

import collections
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import onnx
import pytest

import fusekit

from ._roundtrip import (
    ROOT,
    SHARED,
    backend_feeds,
    classify_ort_error,
    extract_all,
    has_unique_node_names,
    is_topological,
    outputs_equal,
    run_ort,
    structural_differences,
)

ARCHIVE = SHARED / "onnx-backend-tests" / "onnx-1.22.0-backend-test-data.tar.gz"
TOP = "onnx-backend-tests/"
EXPECTED_MODELS = 1905


def _model_ids() -> list[str]:
    """``node/test_abs`` ... read from the archive's index at collection time."""
    if not ARCHIVE.is_file():
        return ["<missing ../shared/onnx-backend-tests archive>"]
    with tarfile.open(ARCHIVE) as tar:
        names = tar.getnames()
    return sorted(
        n[len(TOP) : -len("/model.onnx")]
        for n in names
        if n.startswith(TOP) and n.endswith("/model.onnx")
    )


MODEL_IDS = _model_ids()

# model id -> outcome, filled by test_round_trip and summarized by test_summary
RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="session")
def backend_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive extracted once per session (about a second)."""
    if not ARCHIVE.is_file():
        pytest.fail(f"{ARCHIVE} is missing: the tests need ../shared beside the checkout")
    out = tmp_path_factory.mktemp("onnx-backend")
    extract_all(ARCHIVE, out)
    return out / TOP


def check_model(model_id: str, root: Path) -> dict[str, Any]:
    """Round-trip one backend model; assert losslessness; return what happened."""
    folder = root / model_id
    original = (folder / "model.onnx").read_bytes()
    source = onnx.load_from_string(original)
    graph = fusekit.load(original)
    fusekit.check_invariants(graph)
    back = fusekit.to_model(graph)
    data = back.SerializeToString()
    outcome: dict[str, Any] = {"identical": data == original}
    if not outcome["identical"]:
        # Only a reordered or renamed node list may change the bytes, and only the order.
        assert not (is_topological(source) and has_unique_node_names(source)), (
            f"{model_id}: in topological order with unique names, yet not byte-identical"
        )
        assert structural_differences(source, back) == [], model_id
        assert is_topological(back), f"{model_id}: written in a non-topological order"
    try:
        onnx.checker.check_model(source)
        outcome["checker"] = True
    except onnx.checker.ValidationError:
        outcome["checker"] = False
    if outcome["checker"]:
        onnx.checker.check_model(back)  # raises, failing the test, if the round trip broke it

    data_dir = folder / "test_data_set_0"
    if not data_dir.is_dir():
        outcome["ort"] = "no test_data_set_0"
        return outcome
    feeds = backend_feeds(source, str(data_dir))
    try:
        expected = run_ort(original, feeds)
    except Exception as e:  # onnxruntime's own limits: counted, not failed
        outcome["ort"] = classify_ort_error(str(e))
        return outcome
    got = run_ort(data, feeds)
    if not outputs_equal(expected, got):
        again = run_ort(original, feeds)
        assert not outputs_equal(expected, again), (
            f"{model_id}: outputs differ after the round trip"
        )
        # the model is random (no seed): only the output structure can be compared
        assert [getattr(x, "shape", None) for x in expected] == [
            getattr(x, "shape", None) for x in got
        ], model_id
        outcome["ort"] = "ran (nondeterministic outputs, shapes compared)"
        return outcome
    outcome["ort"] = "ran"
    return outcome


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_round_trip(model_id: str, backend_dir: Path) -> None:
    """load + to_model is lossless, checker-valid and output-identical for this model."""
    RESULTS[model_id] = check_model(model_id, backend_dir)


def test_summary(backend_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every backend model was round-tripped; print and save the counts."""
    for model_id in MODEL_IDS:  # models deselected this session (-k) are checked here
        if model_id not in RESULTS:
            RESULTS[model_id] = check_model(model_id, backend_dir)
    assert len(MODEL_IDS) == EXPECTED_MODELS
    outcomes = [RESULTS[m] for m in MODEL_IDS]
    reasons = collections.Counter(o["ort"] for o in outcomes if not o["ort"].startswith("ran"))
    summary = {
        "models": len(outcomes),
        "byte_identical": sum(o["identical"] for o in outcomes),
        "structurally_equal_only": sum(not o["identical"] for o in outcomes),
        "checker_valid_originals": sum(o["checker"] for o in outcomes),
        "ran_in_onnxruntime": sum(o["ort"].startswith("ran") for o in outcomes),
        "onnxruntime_could_not_run": dict(reasons.most_common()),
    }
    out = ROOT / ".cache" / "backend-roundtrip-summary.json"
    os.makedirs(out.parent, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    with capsys.disabled():
        print("\nONNX backend round trip:", json.dumps(summary, indent=2))
    # The suite must keep exercising onnxruntime: a collapse of this count means the feeding
    # of test data broke, not that 1,600 models became unrunnable.
    assert summary["ran_in_onnxruntime"] >= 1500
    assert summary["ran_in_onnxruntime"] + sum(reasons.values()) == len(outcomes)
