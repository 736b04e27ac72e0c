"""Calibration: scales measured by running the float model in onnxruntime.

Also home of the small hand-built models the export, evaluate and CLI tests share.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusekit
from fusekit import QuantState, Slot
from fusekit.calibrate import (
    Calibration,
    CalibrationResult,
    Dataset,
    InvalidData,
    ModelRunError,
    _Histogram,
    as_dataset,
    calibrate,
    calibration_targets,
    collect_ranges,
    load_data,
    minmax_to_scale_offset_array,
    random_data,
)
from fusekit.examples import example_model_path
from fusekit.quant import QuantPolicy, TensorQuantConfig, minmax_to_scale_offset

RNG = np.random.default_rng(7)

# --------------------------------------------------------------------------------------------
# small models (shared with test_export / test_evaluate / test_cli)


def _w(shape: tuple[int, ...], scale: float = 0.5, seed: int = 0) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray[Any, Any]],
    inputs: list[tuple[str, list[Any]]],
    outputs: list[tuple[str, list[Any]]],
    opset: int = 13,
) -> bytes:
    g = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return bytes(m.SerializeToString())


def conv_relu_model(opset: int = 13) -> bytes:
    """x[1,3,8,8] -> conv1 -> relu1 -> conv2 -> y."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], "conv2"),
    ]
    inits = {
        "w1": _w((4, 3, 3, 3), seed=1),
        "b1": _w((4,), 0.1, seed=2),
        "w2": _w((2, 4, 1, 1), seed=3),
        "b2": _w((2,), 0.1, seed=4),
    }
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])], opset)


def branch_add_model() -> bytes:
    """x feeds two Conv-Relu branches of very different range, added, then a Conv."""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ca"], "conv_a"),
        helper.make_node("Relu", ["ca"], ["ra"], "relu_a"),
        helper.make_node("Conv", ["x", "wb"], ["cb"], "conv_b"),
        helper.make_node("Relu", ["cb"], ["rb"], "relu_b"),
        helper.make_node("Add", ["ra", "rb"], ["s"], "add"),
        helper.make_node("Conv", ["s", "wc"], ["y"], "conv_c"),
    ]
    inits = {
        "wa": _w((4, 3, 1, 1), seed=5),
        "wb": _w((4, 3, 1, 1), 5.0, seed=6),
        "wc": _w((2, 4, 1, 1), seed=7),
    }
    return _model(nodes, inits, [("x", [1, 3, 6, 6])], [("y", [1, 2, 6, 6])])


def concat_model() -> bytes:
    """A head that concatenates pixel-scale boxes with [0, 1] scores (one shared scale)."""
    nodes = [
        helper.make_node("Conv", ["x", "wb"], ["boxes_raw"], "conv_box"),
        helper.make_node("Mul", ["boxes_raw", "k"], ["boxes"], "scale_box"),
        helper.make_node("Conv", ["x", "ws"], ["logits"], "conv_score"),
        helper.make_node("Sigmoid", ["logits"], ["scores"], "sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], "concat", axis=1),
    ]
    inits = {
        "wb": _w((4, 3, 1, 1), seed=8),
        "ws": _w((2, 3, 1, 1), seed=9),
        "k": np.array(400.0, dtype=np.float32),
    }
    return _model(nodes, inits, [("x", [1, 3, 5, 5])], [("y", [1, 6, 5, 5])])


def samples(n: int, shape: tuple[int, ...] = (1, 3, 8, 8), seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def run_float(model: bytes, feeds: list[dict[str, Any]], tensors: list[str]) -> list[list[Any]]:
    """Intermediate tensors of the float model, by an independent ORT session."""
    m = onnx.load_from_string(model)
    for t in tensors:
        m.graph.output.append(onnx.ValueInfoProto(name=t))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return [s.run(tensors, f) for f in feeds]


def pipeline_plan(
    model: bytes, platform: str, data: Any, **kw: Any
) -> tuple[fusekit.Graph, fusekit.QuantPlan]:
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, platform)
    res = fusekit.default_pipeline(platform, calibration=Calibration(data, **kw)).run(g, plan)
    return g, res.plan


# --------------------------------------------------------------------------------------------
# the calibration contract


def test_initial_roots_get_minmax_scales_and_become_activated() -> None:
    model = conv_relu_model()
    feeds = samples(3)
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, "trt_int8")
    fused = fusekit.default_pipeline("trt_int8").run(g, plan).plan
    out = calibrate(g, fused, feeds, observer="minmax", weights_first=False)
    # the fused Relu output is what is observed, not the Conv output before it
    ref = run_float(model, feeds, ["x", "r1", "y", "c1"])
    r1 = np.concatenate([r[1].ravel() for r in ref])
    s, _ = minmax_to_scale_offset(float(r1.min()), float(r1.max()), out[Slot("relu1", "out", 0)])
    assert float(out.scale_of(Slot("relu1", "out", 0))) == pytest.approx(s, rel=1e-6)
    assert out.scale_of(Slot("conv1", "out", 0)) is out.scale_of(Slot("relu1", "out", 0))
    assert out[Slot("conv1", "out", 0)].state == QuantState.OVERLAPPED
    x = np.concatenate([r[0].ravel() for r in ref])
    sx, _ = minmax_to_scale_offset(float(x.min()), float(x.max()), out[Slot("conv1", "in", 0)])
    assert float(out.scale_of(Slot("conv1", "in", 0))) == pytest.approx(sx, rel=1e-6)
    states = {out[s].state for s in out.slots()}
    assert QuantState.INITIAL not in states and QuantState.PASSIVE_INIT not in states
    for s in out.slots():
        if fused[s].state == QuantState.INITIAL and fused.root(s) == s:
            assert out[s].state == QuantState.ACTIVATED, s


def test_weights_get_per_channel_scales_from_their_values() -> None:
    model = conv_relu_model()
    g = fusekit.load(model)
    plan = calibrate(g, fusekit.init_plan(g, "trt_int8"), samples(1))
    w = numpy_helper.to_array(onnx.load_from_string(model).graph.initializer[0])
    cfg = plan[Slot("conv1", "in", 1)]
    assert cfg.state == QuantState.ACTIVATED and cfg.channel_axis == 0
    expected = np.abs(w).reshape(4, -1).max(axis=1) * 2 / 255
    np.testing.assert_allclose(cfg.scale, expected.astype(np.float32), rtol=1e-6)
    assert cfg.scale.shape == (4,)


def test_bias_is_derived_by_passive_parameters() -> None:
    g = fusekit.load(conv_relu_model())
    plan = fusekit.default_pipeline("ort_int8").run(g, fusekit.init_plan(g, "ort_int8")).plan
    bias = Slot("conv1", "in", 2)
    assert plan[bias].state == QuantState.PASSIVE_INIT
    raw = calibrate(g, plan, samples(2), passive_parameters=False)
    assert raw[bias].state == QuantState.PASSIVE_INIT and raw[bias].scale is None
    out = calibrate(g, plan, samples(2))
    assert out[bias].state == QuantState.PASSIVE
    xs = float(out.scale_of(Slot("conv1", "in", 0)))
    np.testing.assert_allclose(out[bias].scale, out[Slot("conv1", "in", 1)].scale * xs, rtol=1e-6)


def test_alignment_master_gets_union_of_its_followers_ranges() -> None:
    model = branch_add_model()
    feeds = samples(3, (1, 3, 6, 6))
    g = fusekit.load(model)
    plan = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    master = Slot("add", "in", 0)
    assert plan[master].state == QuantState.PASSIVE_INIT and plan.root(master) == master
    assert any(plan.parent(s) is not None for s in plan.group(master) if s != master)
    out = calibrate(g, plan, feeds, weights_first=False)
    ref = run_float(model, feeds, ["ra", "rb"])
    ra, rb = (np.concatenate([r[i].ravel() for r in ref]) for i in (0, 1))
    hi = max(float(ra.max()), float(rb.max()))
    s, _ = minmax_to_scale_offset(0.0, hi, out[master])
    assert out[master].state == QuantState.PASSIVE
    assert float(out[master].scale) == pytest.approx(s, rel=1e-6)
    for member in out.group(master):
        assert out[member].state in (QuantState.PASSIVE, QuantState.OVERLAPPED), member
    # the small branch alone would have had a much smaller scale
    assert float(ra.max()) < hi / 4 or float(rb.max()) < hi / 4


def test_calibration_in_pipeline_matches_calibrating_after_it() -> None:
    """PPQ's order (calibrate, then align) and fusekit's deferred master give the same plan."""
    model = branch_add_model()
    feeds = samples(3, (1, 3, 6, 6))
    g = fusekit.load(model)
    p0 = fusekit.init_plan(g, "ort_int8")
    inside = (
        fusekit.default_pipeline("ort_int8", calibration=Calibration(feeds, weights_first=False))
        .run(g, p0)
        .plan
    )
    plan = fusekit.default_pipeline("ort_int8").run(g, p0).plan
    after = calibrate(g, plan, feeds, weights_first=False)
    assert [inside.root(s) for s in inside.slots()] == [after.root(s) for s in after.slots()]
    for s in inside.slots():
        assert inside[s].state == after[s].state, s
        a, b = inside.scale_of(s), after.scale_of(s)
        assert (a is None) == (b is None), s
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=str(s))


def test_overlapped_slots_are_not_observed() -> None:
    g = fusekit.load(conv_relu_model())
    plan = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    observed = {t for tg in calibration_targets(plan) for t in tg.observe}
    assert "r1" in observed and "x" in observed
    assert "c1" not in observed  # the fused conv output


def test_weights_first_measures_the_weight_quantized_network() -> None:
    model = conv_relu_model()
    feeds = samples(2)
    g = fusekit.load(model)
    plan = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    a = Calibration(feeds, weights_first=True).run(g, plan)
    b = Calibration(feeds, weights_first=False).run(g, plan)
    ra, rb = a.tensor_range("r1"), b.tensor_range("r1")
    assert ra is not None and rb is not None
    assert ra.hi != rb.hi  # measured through quantized weights
    assert ra.hi == pytest.approx(rb.hi, rel=0.05)
    # weights themselves are identical either way
    w = Slot("conv1", "in", 1)
    np.testing.assert_array_equal(a.plan[w].scale, b.plan[w].scale)


def test_calibration_pass_logs_one_decision_per_root_and_keeps_inputs() -> None:
    g = fusekit.load(conv_relu_model())
    plan = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    before = {s: plan[s] for s in plan.slots()}
    res = Calibration(samples(2)).run(g, plan)
    assert isinstance(res, CalibrationResult)
    assert res.input_plan is plan and res.changed and res.samples == 2
    rules = {d.rule for d in res.decisions}
    assert rules == {"calibrate"}
    assert len(res.decisions) == len(calibration_targets(plan))
    assert all(plan[s] == before[s] for s in plan.slots())  # input plan untouched
    assert fusekit.replay(plan, res.decisions) == res.plan


def test_calibration_is_deterministic() -> None:
    g = fusekit.load(conv_relu_model())
    plan = fusekit.init_plan(g, "ppl_cuda_int8")
    a = calibrate(g, plan, samples(2))
    b = calibrate(g, plan, samples(2))
    assert a == b


# --------------------------------------------------------------------------------------------
# observers


def test_minmax_streams_over_samples() -> None:
    model = conv_relu_model()
    feeds = samples(4)
    g = fusekit.load(model)
    got = collect_ranges(g, {"c1": [("minmax", None)], "w1": [("minmax", 0)]}, feeds)
    c1 = np.concatenate([r[0].ravel() for r in run_float(model, feeds, ["c1"])])
    r = got[("c1", "minmax", None)]
    assert r.samples == 4
    assert r.lo == pytest.approx(float(c1.min()), rel=1e-6)
    assert r.hi == pytest.approx(float(c1.max()), rel=1e-6)
    w = got[("w1", "minmax", 0)]
    assert np.shape(w.lo) == (4,)


def test_percentile_histogram_is_bounded_and_close_to_the_quantile() -> None:
    h = _Histogram(0.999, 512)
    rng = np.random.default_rng(3)
    chunks = []
    for k in range(20):  # the range grows: the histogram rescales, never grows in size
        x = rng.standard_normal(5000) * (1 + k)
        chunks.append(x)
        h.update(x)
        assert h.counts is not None and h.counts.size == 1024
    allx = np.concatenate(chunks)
    r = h.result()
    width = 2 * h.limit / 1024
    assert r.max == pytest.approx(allx.max())
    assert abs(r.hi - np.quantile(allx, 0.999)) <= 2 * width
    assert abs(r.lo - np.quantile(allx, 0.001)) <= 2 * width
    assert r.lo < 0 < r.hi < allx.max()


def test_percentile_observer_clips_outliers() -> None:
    model = conv_relu_model()
    feeds = samples(3)
    feeds[0]["x"][0, 0, 0, 0] = 50.0  # one outlier
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, "trt_int8")
    mm = calibrate(g, plan, feeds, observer="minmax")
    pc = calibrate(g, plan, feeds, observer="percentile", percentile=0.99)
    x = Slot("conv1", "in", 0)
    assert float(mm.scale_of(x)) == pytest.approx(50.0 * 2 / 255, rel=1e-5)
    assert float(pc.scale_of(x)) < float(mm.scale_of(x)) / 5


def test_vectorized_scale_matches_the_scalar_rule() -> None:
    rng = np.random.default_rng(1)
    lo, hi = -np.abs(rng.standard_normal(50)), np.abs(rng.standard_normal(50))
    lo[3] = hi[4] = 0.0
    for flags in (
        "PER_CHANNEL+LINEAR+SYMMETRICAL",
        "PER_CHANNEL+LINEAR+ASYMMETRICAL",
        "PER_CHANNEL+LINEAR+SYMMETRICAL+POWER_OF_2",
    ):
        asym = "ASYM" in flags
        cfg = TensorQuantConfig(
            QuantPolicy.parse(flags),
            quant_min=0 if asym else -128,
            quant_max=255 if asym else 127,
            channel_axis=0,
        )
        s, o = minmax_to_scale_offset_array(lo, hi, cfg)
        for i in range(50):
            es, eo = minmax_to_scale_offset(lo[i], hi[i], cfg)
            assert s[i] == np.float32(es) and o[i] == np.float32(eo), (flags, i)


# --------------------------------------------------------------------------------------------
# data


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_with_input_names_and_with_splits(tmp_path: Path) -> None:
    g = fusekit.load(conv_relu_model())
    x = np.random.default_rng(0).standard_normal((5, 1, 3, 8, 8))
    ds = load_data(_npz(tmp_path / "a.npz", x=x), g)
    got = list(ds)
    assert len(ds) == 5 and len(got) == 5
    assert got[2]["x"].dtype == np.float32 and got[2]["x"].shape == (1, 3, 8, 8)
    np.testing.assert_allclose(got[2]["x"], x[2].astype(np.float32))
    assert next(iter(ds))["x"].tobytes() == got[0]["x"].tobytes()  # re-iterable
    split = _npz(tmp_path / "b.npz", calib__x=x[:3], eval__x=x[3:])
    assert len(load_data(split, g, split="calib")) == 3
    assert len(load_data(split, g, split="eval")) == 2
    one = load_data(_npz(tmp_path / "c.npz", x=x[0]), g)  # a single sample, model rank
    assert len(one) == 1
    assert len(load_data(split, g, split="calib", limit=2)) == 2


def test_folder_of_npy(tmp_path: Path) -> None:
    g = fusekit.load(conv_relu_model())
    d = tmp_path / "d"
    d.mkdir()
    for k in range(3):
        np.save(d / f"s{k}.npy", np.full((1, 3, 8, 8), k, np.float32))
    np.save(d / "s3.npy", np.zeros((2, 1, 3, 8, 8), np.float32))  # a stack of two
    ds = load_data(d, g)
    vals = [float(f["x"][0, 0, 0, 0]) for f in ds]
    assert vals == [0.0, 1.0, 2.0, 0.0, 0.0] and len(ds) == 5
    named = tmp_path / "named"
    named.mkdir()
    np.save(named / "x.npy", np.zeros((4, 1, 3, 8, 8), np.float32))
    np.save(named / "other.npy", np.zeros((1,), np.float32))
    assert len(load_data(named, g)) == 4
    np.save(tmp_path / "one.npy", np.zeros((2, 1, 3, 8, 8), np.float32))
    assert len(load_data(tmp_path / "one.npy", g)) == 2


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros((2, 1, 3, 8, 8))}, "no array for input(s) 'x'"),
        ({"x": np.zeros((2, 3, 8))}, "has shape [2, 3, 8]"),
        ({"calib__y": np.zeros((2, 1, 3, 8, 8))}, "splits present: calib"),
        ({"x": np.zeros((0, 1, 3, 8, 8))}, "contains no samples"),
    ],
)
def test_bad_data_names_the_file_and_input(
    tmp_path: Path, arrays: dict[str, Any], message: str
) -> None:
    g = fusekit.load(conv_relu_model())
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InvalidData, match=r"bad\.npz") as e:
        load_data(path, g, split="calib")
    assert message in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, fusekit.FusekitError)


def test_bad_data_sources(tmp_path: Path) -> None:
    g = fusekit.load(branch_add_model())
    with pytest.raises(InvalidData, match="no such file"):
        load_data(tmp_path / "missing.npz", g)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InvalidData, match=r"expected an \.npz"):
        load_data(tmp_path / "x.txt", g)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidData, match="not a readable"):
        load_data(tmp_path / "junk.npz", g)
    with pytest.raises(InvalidData, match=r"not inputs of the model"):
        list(as_dataset([{"x": np.zeros((1, 3, 6, 6), np.float32), "z": 1}], g))
    with pytest.raises(InvalidData, match="no value for input 'x'"):
        list(as_dataset([{}], g))
    with pytest.raises(InvalidData, match="not one feed"):
        as_dataset({"x": np.zeros(1)}, g)


def test_random_data_is_labelled_deterministic_and_shaped() -> None:
    g = fusekit.load(example_model_path())
    ds = random_data(g, 3, seed=5, shapes={"x": (1, 3, 48, 192)})
    assert ds.generated and "random inputs (generated" in ds.label and len(ds) == 3
    a, b = list(ds), list(random_data(g, 3, seed=5, shapes={"x": (1, 3, 48, 192)}))
    assert a[1]["x"].shape == (1, 3, 48, 192)
    assert all(np.array_equal(p["x"], q["x"]) for p, q in zip(a, b))
    assert not np.array_equal(a[0]["x"], a[1]["x"])
    dyn = next(iter(random_data(g, 1, default_dim=16)))["x"]
    assert dyn.shape == (1, 3, 16, 16)  # (-1, 3, ?, ?): batch 1, others default_dim
    with pytest.raises(InvalidData):
        random_data(g, 0)


def test_onnxruntime_failure_is_a_fusekit_error() -> None:
    g = fusekit.load(conv_relu_model())
    wrong = [{"x": np.zeros((1, 5, 8, 8), np.float32)}]  # 5 channels into a 3-channel conv
    with pytest.raises(ModelRunError, match="sample 0"):
        calibrate(g, fusekit.init_plan(g, "trt_int8"), wrong)


def test_progress_bar_only_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    g = fusekit.load(conv_relu_model())
    plan = fusekit.init_plan(g, "trt_int8")
    calibrate(g, plan, samples(2), progress=True)
    assert capsys.readouterr().err == ""  # stderr is not a TTY under pytest

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    calibrate(g, plan, samples(2), progress=True)
    assert "calibrating [" in tty.getvalue() and "2/2" in tty.getvalue()
    tty.seek(0)
    tty.truncate()
    calibrate(g, plan, samples(2), progress=False)
    assert tty.getvalue() == ""


def test_dataset_from_a_generator_is_consumed_once() -> None:
    g = fusekit.load(conv_relu_model())
    gen = (f for f in samples(2))
    ds = as_dataset(gen, g)
    assert isinstance(ds, Dataset) and ds.length is None
    assert len(list(ds)) == 2 and list(ds) == []
    out = io.StringIO()
    print(ds, file=out)
    assert "samples=?" in out.getvalue()
