"""The audit's placement (``audit._Where``) is the exporter's, computed over arrays.

``audit`` compares where a model's plan and the platform's plan put Q/DQ. It used to build the
exporter's ``_Placement`` for both plans (a key object per slot, ~0.7 s at 100k ops); it now
decides per config object and spreads the decision over the slots with numpy
(``_placement_ids``), handing the plans that path does not cover to the exporter. These tests
hold the two to the same answer on real models and plans of several platforms; the law over
random plans is ``property_tests/test_audit_placement.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
import pytest

import fusekit
from fusekit.audit import _exporter_placement, _placement_ids, _Where
from fusekit.calibrate import calibrate, random_data
from fusekit.export import export_qdq
from fusekit.qimport import import_quantized

from .conftest import corpus_bytes
from .test_perf_smoke import work

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import generate  # noqa: E402  (bench/ is not a package)
import run  # noqa: E402


def _same(fast: Any, ref: Any, plan: fusekit.QuantPlan) -> None:
    roots, after, reads, read_roots = fast
    ref_roots, ref_after, ref_reads, _ = ref
    assert reads == {s: read_roots[s] for s in range(len(read_roots)) if read_roots[s] >= 0}
    assert after == ref_after
    assert reads == ref_reads
    configs = plan.configs.tolist()
    assert [r for r, c in zip(roots, configs) if c is not None] == [
        r for r, c in zip(ref_roots, configs) if c is not None
    ]


def _export(name: str, platform: str, fused: bool) -> onnx.ModelProto:
    g = fusekit.load(corpus_bytes(name))
    plan = fusekit.init_plan(g, platform)
    if fused:
        plan = fusekit.default_pipeline(platform).run(g, plan).plan
    return export_qdq(g, calibrate(g, plan, random_data(g, 2)))


@pytest.mark.parametrize(
    ("name", "exported_for", "fused"),
    [("yolov5s_silu", "trt_int8", True), ("yolov5s_silu", "trt_int8", False),
     ("mobilenet_v2", "ort_int8", True), ("unet_small_leaky", "ort_int8", False)],
)  # fmt: skip
def test_audit_placement_equals_the_exporters(name: str, exported_for: str, fused: bool) -> None:
    """The imported plan (scales required) and the plans of several platforms' pipelines and
    ``init_plan`` (scales not required; FP8, mixed precision, PPQ's rule sets): the array path
    decides each of them, and decides as the exporter's placement does."""
    got = import_quantized(_export(name, exported_for, fused))
    plans = [(got.plan, True), (got.plan, False)]
    for p in ("trt_int8", "ort_int8", "trt_fp8", "openvino_int8_mixed", "ppq066_ncnn_int8"):
        init = fusekit.init_plan(got.graph, p)
        plans += [(init, False), (fusekit.default_pipeline(p).run(got.graph, init).plan, False)]
    for plan, require in plans:
        fast = _placement_ids(plan, require)
        assert fast is not None
        _same(fast, _exporter_placement(plan, require), plan)
        assert _Where(plan, require).reads == fast[2]


def test_uncalibrated_plan_is_refused_as_export_refuses_it() -> None:
    """A plan without scales: the audit's placement leaves it to the exporter's, which names
    the first slot without a scale, as ``export_qdq`` does."""
    g = fusekit.load(corpus_bytes("resnet18"))
    plan = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    assert _placement_ids(plan, True) is None
    with pytest.raises(fusekit.NotCalibrated) as exported:
        export_qdq(g, plan)
    with pytest.raises(fusekit.NotCalibrated) as placed:
        _Where(plan, require_scales=True)
    assert str(placed.value) == str(exported.value)


def test_a_root_without_a_scale_goes_to_the_exporter() -> None:
    """One calibrated root's scale dropped: the array path does not guess, the exporter
    raises naming that slot."""
    got = import_quantized(_export("resnet18", "trt_int8", True))
    plan = got.plan
    root = next(s for s in plan.slots() if plan[s].state == fusekit.QuantState.ACTIVATED)
    broken = plan.with_config(root, attrs.evolve(plan[root], scale=None, offset=None))
    assert _placement_ids(broken, True) is None
    with pytest.raises(fusekit.NotCalibrated, match=str(root.op)):
        _Where(broken, require_scales=True)
    _same(_placement_ids(broken, False), _exporter_placement(broken, False), broken)


#: Python work (lines + calls, ``test_perf_smoke.work``) per op of the audit's two placements
#: on the 1k-op generated graph's QDQ import: the imported plan and the pipeline's. Measured
#: 24 + 5 (the exporter's placement: 124 + 136); the work per config object is what is left.
PLACEMENT_WORK_PER_OP = 45


def test_audit_placement_work_is_per_config_not_per_slot() -> None:
    n = 1_000
    g = fusekit.load(generate.make_model(n, seed=1).SerializeToString())
    plan = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    got = import_quantized(export_qdq(g, run.stand_in_calibration(g, plan, "trt_int8")))
    want = fusekit.default_pipeline("trt_int8").run(
        got.graph, fusekit.init_plan(got.graph, "trt_int8")
    )
    count = work(lambda: (_Where(got.plan, True), _Where(want.plan, False)))
    assert 0 < count / n < PLACEMENT_WORK_PER_OP, count / n


_WALK = ("float_input", "unaligned_inputs", "weight_per_tensor", "weight_axis")
_WALK_RANK = {**{k: i for i, k in enumerate(_WALK)}, "bias_not_int32": 4, "bias_scale": 4}


@pytest.mark.parametrize(
    ("exported_for", "audited_for"), [("ort_int8", "trt_int8"), ("trt_int8", "ort_int8")]
)
def test_slot_findings_come_in_walk_order(exported_for: str, audited_for: str) -> None:
    """The slot-by-slot findings are gathered per kind over arrays, then sorted back: in op
    order, and per op its float inputs, its aligned groups, its weight, its bias."""
    got = import_quantized(_export("unet_small_leaky", exported_for, True))
    res = fusekit.audit(got.graph, got.plan, audited_for)
    kinds = [f.kind for f in res.findings]
    walk = [i for i, k in enumerate(kinds) if k in _WALK_RANK]
    assert len({kinds[i] for i in walk}) >= 2  # the case mixes kinds
    assert walk == list(range(walk[0], walk[-1] + 1))  # one block, between the other steps
    position = {name: i for i, name in enumerate(got.graph.order)}
    keys = [(position[res.findings[i].ops[0]], _WALK_RANK[kinds[i]]) for i in walk]
    assert keys == sorted(keys)


def test_aligned_inputs_reading_one_nan_scale_are_unaligned() -> None:
    """Aligned inputs reading one root share its scale, so the audit does not compare them,
    except when that scale is NaN: compared (array_equal) it differs from itself, and the
    audit says so as it did when it compared every group."""
    got = import_quantized(_export("yolov5s_silu", "trt_int8", True))
    plan, g = got.plan, got.graph
    reads = _Where(plan, require_scales=True).reads
    idx = g.index
    for op in g:
        ins = [idx.slot_id(fusekit.Slot(op.name, "in", k)) for k in range(len(op.inputs))]
        roots = {reads.get(s) for s in ins}
        if op.op_type == "Concat" and len(ins) > 1 and len(roots) == 1 and None not in roots:
            break
    else:
        raise AssertionError("no Concat whose inputs read one root")
    assert fusekit.audit(g, plan, "trt_int8").findings == ()
    root = idx.slot_key(roots.pop())
    nan = plan.with_config(root, attrs.evolve(plan[root], scale=np.full(1, np.nan, np.float32)))
    found = [f for f in fusekit.audit(g, nan, "trt_int8").findings if f.kind == "unaligned_inputs"]
    assert [f.ops for f in found] == [(op.name,)]
