"""Entropy and MSE calibrators: constructed tensors whose right range is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from onnx import helper

import fusekit
from fusekit import Slot
from fusekit.calibrate import (
    Calibration,
    InvalidData,
    _Entropy,
    _Histogram,
    _MeanMinMax,
    _Mse,
    calibrate,
    collect_ranges,
    entropy_threshold,
    mse_threshold,
)
from fusekit.cli import main
from fusekit.platforms import QuantRule, get_platform

from .test_calibrate import _model, conv_relu_model, samples

RNG = np.random.default_rng(15)


def _outliers(n: int = 1_000_000, at: float = 60.0, k: int = 1) -> np.ndarray[Any, Any]:
    """N(0, 1) with ``k`` values planted at each of ``+-at``.

    Rare enough to be worth clipping by squared error: keeping ``at`` costs every value a
    rounding error of ``(at / 127)**2 / 12``, about ``n * at**2 / 194000`` in all, against
    ``2 * k * at**2`` for clipping them (MSE keeps outliers more common than ~5 per million).
    """
    x = RNG.standard_normal(n)
    x[:k] = at
    x[k : 2 * k] = -at
    return x


def _bimodal(n: int = 200_000) -> np.ndarray[Any, Any]:
    """A main mode at 0 and a second one (a fifth of the values) at +-8: both must be kept."""
    x = RNG.standard_normal(n)
    k = n // 10
    x[:k] = 8.0 + 0.5 * RNG.standard_normal(k)
    x[k : 2 * k] = -8.0 + 0.5 * RNG.standard_normal(k)
    return x


def _two_far_modes(n: int = 200_000) -> np.ndarray[Any, Any]:
    """Two narrow modes at -10 and +10, nothing near zero."""
    x = RNG.standard_normal(n) * 0.3
    x[: n // 2] += 10.0
    x[n // 2 :] -= 10.0
    return x


def _fed(observer: type[_Histogram], *chunks: np.ndarray[Any, Any]) -> _Histogram:
    h = observer(0.9999, 2048)
    for c in chunks:
        h.update(c)
    return h


def _quant_mse(x: np.ndarray[Any, Any], t: float, levels: int = 127) -> float:
    """The real mean squared error of a symmetric ``levels``-step grid clipped at ``t``."""
    step = t / levels
    q = np.clip(np.round(x / step), -levels, levels) * step
    return float(np.mean((x - q) ** 2))


@pytest.mark.parametrize(("observer", "most"), [(_Entropy, 10.0), (_Mse, 30.0)])
def test_outliers_are_clipped_where_minmax_keeps_them(
    observer: type[_Histogram], most: float
) -> None:
    """Entropy clips to a few sigma; MSE weighs the outliers' squared error and stops higher."""
    x = _outliers()
    r = _fed(observer, x).result()
    assert r.min == -60.0 and r.max == 60.0  # the extremes are still reported
    assert 2.5 < r.hi < most and -most < r.lo < -2.5
    mm = collect_ranges(fusekit.load(conv_relu_model()), {"w1": [("minmax", None)]}, None)
    assert next(iter(mm.values())).observer == "minmax"  # (min-max of a constant: unchanged)


@pytest.mark.parametrize("observer", [_Entropy, _Mse])
def test_a_bimodal_tensor_keeps_both_modes(observer: type[_Histogram]) -> None:
    x = _bimodal()
    r = _fed(observer, x).result()
    assert r.hi >= 9.0 and r.lo <= -9.0  # the second mode is kept to 2 of its sigmas at least
    assert r.hi <= x.max() + 1e-9 and r.lo >= x.min() - 1e-9


@pytest.mark.parametrize("observer", [_Entropy, _Mse])
def test_no_mass_near_zero_keeps_both_modes(observer: type[_Histogram]) -> None:
    """Two far modes, nothing near zero (a sigmoid or softmax output is like that)."""
    x = _two_far_modes()
    r = _fed(observer, x).result()
    assert r.hi >= 10.5 and r.lo <= -10.5


def test_unguarded_entropy_collapses_a_tensor_without_mass_near_zero() -> None:
    """TensorRT's search as published (no clipping bound) folds a whole mode into the last bin:
    the reason for ``max_clipped`` (fusekit's default clips at most 1e-5 of the values)."""
    x = RNG.uniform(0.2, 0.8, 200_000)  # a sigmoid output
    h = _fed(_Entropy, x)
    assert isinstance(h, _Entropy)
    counts, width = h.folded()
    assert entropy_threshold(counts, width, max_clipped=1.0) < 0.3
    assert entropy_threshold(counts, width) > 0.79


def test_mse_threshold_is_near_the_true_optimum() -> None:
    """The histogram's pick costs at most 2% more error than a brute-force search on the data."""
    x = _outliers()
    r = _fed(_Mse, x).result()
    grid = np.linspace(1.0, 60.0, 600)
    best = min(_quant_mse(x, t) for t in grid)
    assert _quant_mse(x, r.hi) <= best * 1.02
    assert _quant_mse(x, r.hi) < _quant_mse(x, 60.0) / 3  # min-max's error is 3x worse
    assert 10.0 < r.hi < 25.0  # the optimum trades the two outliers against every rounding


def test_mse_on_laplace_data_matches_the_published_optimum() -> None:
    """Banner et al. (ACIQ) give the 8-bit MSE-optimal clip of Laplace(b) data as 9.89 b."""
    x = RNG.laplace(0.0, 1.0, 1_000_000)
    r = _fed(_Mse, x).result()
    assert 9.0 < r.hi < 10.8 and x.max() > 11.5


def test_uniform_data_is_not_clipped() -> None:
    """Uniform values have no tail: every threshold under the maximum clips real mass."""
    x = RNG.uniform(-1.0, 1.0, 200_000)
    for observer in (_Entropy, _Mse):
        r = _fed(observer, x).result()
        assert r.hi > 0.97 and r.lo < -0.97, observer


def test_one_sided_tensor_keeps_its_side_and_its_zeros_cost_nothing() -> None:
    """A ReLU output: half exact zeros. They are on the grid and must not pull T down."""
    x = np.maximum(RNG.standard_normal(200_000), 0.0)
    r = _fed(_Mse, x).result()
    assert r.lo == 0.0 and 2.5 < r.hi <= x.max()
    h = _fed(_Mse, x)
    assert isinstance(h, _Mse) and h.zeros == int(np.count_nonzero(x == 0))
    with_zeros_counted = mse_threshold(*h.folded())
    counts, width = h.folded()
    counts[0] += h.zeros  # what a histogram blind to exact zeros would see
    assert mse_threshold(counts, width) < with_zeros_counted


@pytest.mark.parametrize("observer", [_Entropy, _Mse])
def test_streaming_equals_one_shot(observer: type[_Histogram]) -> None:
    """Samples one at a time with a growing range == all of them at once, bin for bin."""
    chunks = [RNG.standard_normal(3000) * (1 + 3 * k) for k in range(12)]
    streamed = _fed(observer, *chunks)
    once = _fed(observer, np.concatenate(chunks))
    assert streamed.limit == once.limit
    assert streamed.counts is not None and once.counts is not None
    assert streamed.counts.size == 4096  # memory is constant in the number of samples
    np.testing.assert_array_equal(streamed.counts, once.counts)
    assert attrs.evolve(streamed.result(), samples=1) == once.result()


def test_entropy_threshold_small_cases() -> None:
    # everything in the first 128 bins: nothing to gain by clipping, keep it all
    c = np.zeros(2048)
    c[:100] = 5
    assert entropy_threshold(c, 0.5) == 50.0
    assert entropy_threshold(np.zeros(2048), 1.0) == 0.0
    assert mse_threshold(np.zeros(16), 1.0) == 0.0


def _big_conv() -> bytes:
    """x[1,3,64,64] -> 1x1 conv -> relu: enough values per sample for an outlier to be rare."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv1"),
        helper.make_node("Relu", ["c"], ["y"], "relu1"),
    ]
    w = np.random.default_rng(2).standard_normal((4, 3, 1, 1)).astype(np.float32)
    return _model(nodes, {"w": w}, [("x", [1, 3, 64, 64])], [("y", [1, 4, 64, 64])])


def test_calibrate_with_entropy_and_mse_clips_an_input_outlier() -> None:
    model = _big_conv()
    feeds = samples(32, (1, 3, 64, 64))
    feeds[0]["x"][0, 0, 0, 0] = 50.0  # one outlier among 393216 values
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, "trt_int8")
    x = Slot("conv1", "in", 0)
    mm = float(calibrate(g, plan, feeds, observer="minmax").scale_of(x))
    assert mm == pytest.approx(50.0 * 2 / 255, rel=1e-5)
    for name in ("entropy", "mse", "kl"):
        res = Calibration(feeds, observer=name, passive_parameters=True).run(g, plan)
        assert float(res.plan.scale_of(x)) < mm / 2.5, name  # 50 -> below 20
        said = [d.reason for d in res.decisions if d.slot == x or d.rule == "calibrate"]
        assert any(("mse" if name == "mse" else "entropy") in r for r in said), said


def test_rule_set_chooses_the_observer() -> None:
    """With no observer forced, the platform's activation rule names it (here: mse)."""
    feeds = samples(32, (1, 3, 64, 64))
    feeds[0]["x"][0, 0, 0, 0] = 50.0
    g = fusekit.load(_big_conv())
    base = get_platform("trt_int8")
    mse = attrs.evolve(base, name="trt_int8_mse", activation=QuantRule(observer="mse"))
    fusekit.register_platform(mse, replace=True)
    x = Slot("conv1", "in", 0)
    by_rule = calibrate(g, fusekit.init_plan(g, mse), feeds, observer=None)
    forced = calibrate(g, fusekit.init_plan(g, base), feeds, observer="mse")
    plain = calibrate(g, fusekit.init_plan(g, base), feeds, observer=None)
    assert float(by_rule.scale_of(x)) == float(forced.scale_of(x))
    assert float(plain.scale_of(x)) > 2.5 * float(by_rule.scale_of(x))


def _model_and_data(tmp_path: Path) -> Path:
    """The small Conv-Relu-Conv model and a d.npz beside it (4 calibration, 2 evaluation)."""
    m = tmp_path / "m.onnx"
    m.write_bytes(conv_relu_model())
    data = RNG.standard_normal((6, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", calib__x=data[:4], eval__x=data[4:])
    return m


def test_unknown_observer_is_refused() -> None:
    with pytest.raises(InvalidData, match="unknown observer 'median'"):
        Calibration([], observer="median")


@pytest.mark.parametrize("observer", ["entropy", "mse", "mean_minmax"])
def test_cli_observer(observer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _model_and_data(tmp_path)
    argv = ["fuse", str(m), "--calib", str(tmp_path / "d.npz"), "--observer", observer]
    code = main([*argv, "--json", "-o", str(tmp_path / "q.onnx")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["calibration"]["observer"] == observer


@pytest.mark.parametrize("observer", ["entropy", "mse", "percentile"])
def test_per_channel_statistics_use_the_observer_on_each_channel(observer: str) -> None:
    """A per-channel activation slot gets one histogram per channel, streamed like the rest."""
    g = fusekit.load(conv_relu_model())
    feeds = samples(6)
    for f in feeds:  # an outlier in channel 0 of the input only
        f["x"][0, 0, 0, 0] = 40.0
    got = collect_ranges(g, {"x": [(observer, 1), ("minmax", 1)]}, feeds)
    r, mm = got[("x", observer, 1)], got[("x", "minmax", 1)]
    assert r.observer == observer and np.shape(r.hi) == (3,)
    assert float(mm.hi[0]) == 40.0 and float(np.max(r.hi[1:])) < 10.0  # channels apart...
    stacked = np.concatenate([f["x"] for f in feeds])
    for c in range(3):  # ...and each channel is what that observer gives on the channel alone
        h = _fed({"entropy": _Entropy, "mse": _Mse, "percentile": _Histogram}[observer])
        for f in feeds:
            h.update(f["x"][:, c].ravel())
        assert float(r.hi[c]) == pytest.approx(h.result().hi)
        assert float(r.max[c]) == pytest.approx(float(stacked[:, c].max()))


def test_mean_minmax_is_the_mean_of_each_samples_extremes() -> None:
    """NNCF's MEAN_MINMAX: one outlier sample moves the range by 1/n of its excess, not all of
    it; the extremes seen stay in ``min``/``max``; streaming (one sample at a time)."""
    g = fusekit.load(conv_relu_model())
    feeds = samples(8)
    feeds[3]["x"][0, 1, 2, 2] = 80.0
    got = collect_ranges(g, {"x": [("mean_minmax", None), ("minmax", None)]}, feeds)
    r, mm = got[("x", "mean_minmax", None)], got[("x", "minmax", None)]
    lows = [float(f["x"].min()) for f in feeds]
    highs = [float(f["x"].max()) for f in feeds]
    assert r.observer == "mean_minmax"
    assert r.lo == pytest.approx(np.mean(lows)) and r.hi == pytest.approx(np.mean(highs))
    assert mm.hi == 80.0 and r.max == 80.0 and r.min == mm.min
    assert r.hi < 80.0 / 4  # the outlier sample counts once in eight
    # per channel it is min-max per channel, as NNCF does for per-channel activations
    pc = collect_ranges(g, {"x": [("mean_minmax", 1), ("minmax", 1)]}, feeds)
    assert np.array_equal(pc[("x", "mean_minmax", 1)].hi, pc[("x", "minmax", 1)].hi)


def test_mean_minmax_through_calibrate() -> None:
    model = _big_conv()
    feeds = samples(8, (1, 3, 64, 64))
    feeds[0]["x"][0, 0, 0, 0] = 50.0
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, "trt_int8")
    x = Slot("conv1", "in", 0)
    mm = float(calibrate(g, plan, feeds, observer="minmax").scale_of(x))
    mean = float(calibrate(g, plan, feeds, observer="mean_minmax").scale_of(x))
    assert mean < mm / 2  # 50 counts one eighth


def _logit_model() -> bytes:
    """x -> Conv (1x1) -> y, where channel 0 of x carries the signal in rare large values:
    mean_minmax clips them (one sample in eight holds them), min-max keeps them."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")]
    w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    return _model(nodes, {"w": w}, [("x", [1, 3, 8, 8])], [("y", [1, 3, 8, 8])])


def test_choose_observer_keeps_the_candidate_whose_export_scores_best() -> None:
    """A planted case each way: rare large values that are the signal (min-max must win), and
    one outlier sample among tiny values (mean_minmax must win). The choice is the measured
    best, and its result is that candidate's pipeline result."""
    from fusekit.sensitivity import choose_observer

    g = fusekit.load(_logit_model())
    plan = fusekit.init_plan(g, "trt_int8")
    rng = np.random.default_rng(5)
    signal = [
        {"x": (rng.standard_normal((1, 3, 8, 8)) * 0.05).astype(np.float32)} for _ in range(8)
    ]
    for f in signal:  # every sample has a few large values: clipping them destroys the output
        f["x"][0, :, :2, :2] = rng.uniform(20, 40, (3, 2, 2)).astype(np.float32)
    choice = choose_observer(g, plan, "trt_int8", signal)
    scores = dict(choice.scores)
    assert choice.observer == "minmax" and scores["minmax"] > scores["mean_minmax"]
    outlier = [{"x": rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    outlier[0]["x"][0, 0, 0, 0] = 200.0  # one sample: min-max spends the grid on it
    choice = choose_observer(g, plan, "trt_int8", outlier, score_data=outlier[1:])
    scores = dict(choice.scores)
    assert choice.observer == "mean_minmax" and scores["mean_minmax"] > scores["minmax"] + 3
    cal = Calibration(outlier, observer="mean_minmax")
    expect = fusekit.default_pipeline("trt_int8", calibration=cal).run(g, plan).plan
    assert choice.result.plan == expect


def test_cli_observer_auto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _model_and_data(tmp_path)
    argv = ["fuse", str(m), "--calib", str(tmp_path / "d.npz"), "--observer", "auto"]
    assert main([*argv, "--json", "-o", str(tmp_path / "q.onnx")]) == 0
    doc = json.loads(capsys.readouterr().out)
    kept = doc["observer_choice"]["observer"]
    assert kept in ("minmax", "mean_minmax")
    assert doc["calibration"]["observer"] == f"auto: {kept}"
    assert set(doc["observer_choice"]["scores_db"]) == {"minmax", "mean_minmax"}
    assert (tmp_path / "q.onnx").exists()
    assert main([*argv[:2], "--no-calibrate", "--observer", "auto", "--json"]) == 2
    assert "--observer auto needs calibration" in capsys.readouterr().err
    cmp = ["compare", str(m), "--calib", str(tmp_path / "d.npz"), "--observer", "auto"]
    assert main(cmp) == 2
    assert "--observer auto is for fuse" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("platform", "real", "expect"),
    [
        ("trt_int8", True, "auto: "),
        ("ort_int8", True, "auto: "),
        ("trt_int8", False, "per config"),  # generated inputs: nothing to measure the choice on
        ("ppq066_trt_int8", True, "per config"),  # PPQ-compatible: PPQ's own observers
    ],
)
def test_fuse_defaults_to_auto_on_real_data(
    platform: str, real: bool, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = _model_and_data(tmp_path)
    argv = ["fuse", str(m), "--platform", platform, "--json", "-o", str(tmp_path / "q.onnx")]
    if real:
        argv += ["--calib", str(tmp_path / "d.npz")]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["calibration"]["observer"].startswith(expect)
    assert ("observer_choice" in doc) == expect.startswith("auto")
# ----- mean_minmax: NNCF's per-tensor activation range ----------------------------------------


def test_mean_minmax_is_the_mean_of_each_batchs_extremes() -> None:
    """Four batches whose extremes are known: lo/hi are the means, min/max the extremes, and a
    batch without finite values adds nothing to the means."""
    ob = _MeanMinMax()
    for lo, hi in ((-1.0, 1.0), (-1.0, 2.0), (-1.0, 3.0), (-5.0, 10.0)):
        ob.update(np.array([lo, 0.0, hi]))
    assert ob.update(np.array([np.nan, np.inf]))  # reported, not part of any mean
    r = ob.result()
    assert (r.lo, r.hi) == (-2.0, 4.0)
    assert (r.min, r.max) == (-5.0, 10.0) and r.observer == "mean_minmax"


def test_calibrate_with_mean_minmax_shrinks_a_one_batch_outlier() -> None:
    """One outlier in one of 8 samples: min-max keeps it, mean_minmax keeps 1/8 of it plus the
    mean of the other samples' extremes (the scale computed from the feeds directly)."""
    model = conv_relu_model()
    feeds = samples(8)
    feeds[0]["x"][0, 0, 0, 0] = 50.0
    g = fusekit.load(model)
    plan = fusekit.init_plan(g, "trt_int8")  # symmetric int8 per tensor: scale = amax / 127.5
    x = Slot("conv1", "in", 0)
    lo = float(np.mean([f["x"].min() for f in feeds]))
    hi = float(np.mean([f["x"].max() for f in feeds]))
    got = float(calibrate(g, plan, feeds, observer="mean_minmax").scale_of(x))
    assert got == pytest.approx(max(-lo, hi) * 2 / 255, rel=1e-5)
    assert got < float(calibrate(g, plan, feeds, observer="minmax").scale_of(x)) / 4
