"""Cross-layer equalization and bias correction on constructed models with known answers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import fusekit
from fusekit import Slot
from fusekit.calibrate import Calibration
from fusekit.equalize import bias_correction, equalization_pairs, equalize
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.quant import check_plan_graph

from .test_calibrate import _model, samples

RNG = np.random.default_rng(150)


def _unbalanced_pair() -> bytes:
    """x[1,3,8,8] -> conv1 (4 ch, ranges 100 / 1 / 0.01 / 1) -> relu -> conv2 -> y."""
    w1 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1 *= np.array([100.0, 1.0, 0.01, 1.0], np.float32)[:, None, None, None]
    b1 = np.array([5.0, 0.1, 0.001, -0.2], np.float32)
    w2 = RNG.standard_normal((2, 4, 1, 1)).astype(np.float32)
    w2 *= np.array([0.01, 1.0, 100.0, 1.0], np.float32)[None, :, None, None]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], "conv2"),
    ]
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": np.zeros(2, np.float32)}
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])])


def _depthwise_separable() -> bytes:
    """conv (3->8) -> BN -> relu -> depthwise 3x3 -> leaky relu -> pointwise (8->4), and a tap."""
    w0 = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w0 *= np.exp(RNG.uniform(-3, 3, 8)).astype(np.float32)[:, None, None, None]
    dw = RNG.standard_normal((8, 1, 3, 3)).astype(np.float32)
    dw *= np.exp(RNG.uniform(-3, 3, 8)).astype(np.float32)[:, None, None, None]
    pw = RNG.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], "conv0", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c0", "g", "be", "m", "v"], ["n0"], "bn0", epsilon=1e-3
        ),
        helper.make_node("Relu", ["n0"], ["r0"], "relu0"),
        helper.make_node("Conv", ["r0", "dw", "bd"], ["c1"], "dw1", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["r1"], "lrelu1", alpha=0.1),
        helper.make_node("Conv", ["r1", "pw", "bp"], ["y"], "pw2"),
        # a tap on conv0's output through another path: not equalizable
        helper.make_node("Conv", ["x", "wt"], ["t"], "tap"),
        helper.make_node("Relu", ["t"], ["t2"], "tap_relu"),
    ]
    inits = {
        "w0": w0,
        "b0": RNG.standard_normal(8).astype(np.float32),
        "g": RNG.uniform(0.5, 2, 8).astype(np.float32),
        "be": RNG.standard_normal(8).astype(np.float32),
        "m": RNG.standard_normal(8).astype(np.float32),
        "v": RNG.uniform(0.5, 2, 8).astype(np.float32),
        "dw": dw,
        "bd": RNG.standard_normal(8).astype(np.float32),
        "pw": pw,
        "bp": RNG.standard_normal(4).astype(np.float32),
        "wt": RNG.standard_normal((2, 3, 1, 1)).astype(np.float32),
    }
    outs = [("y", [1, 4, 8, 8]), ("t2", [1, 2, 8, 8])]
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], outs)


def _run(graph: fusekit.Graph, feeds: list[dict[str, Any]]) -> list[list[Any]]:
    m = fusekit.to_model(graph)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return [s.run(None, f) for f in feeds]


def _channel_ranges(g: fusekit.Graph, w: str, axis: int) -> np.ndarray[Any, Any]:
    a = np.abs(np.asarray(g.initializers[w].array(), np.float64))
    return np.asarray(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1))


def test_an_unbalanced_pair_is_balanced_and_the_float_model_unchanged() -> None:
    g = fusekit.load(_unbalanced_pair())
    before = {k: np.array(v.array()) for k, v in g.initializers.items()}
    res = equalize(g)
    assert len(res.pairs) == 1
    p = res.pairs[0]
    assert (p.first, p.second, p.via) == ("conv1", "conv2", ("relu1",))
    assert p.imbalance_before > 1e3 and p.imbalance_after == pytest.approx(1.0, rel=1e-5)
    r1 = _channel_ranges(res.graph, "w1", 0)
    r2 = _channel_ranges(res.graph, "w2", 1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)  # s = sqrt(r1 r2) / r2 meets in the middle
    assert res.iterations == 2  # one pair: settled after the first round, checked by the second
    feeds = samples(4)
    for a, b in zip(_run(g, feeds), _run(res.graph, feeds)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-4 * float(np.abs(a[0]).max()))
    # the input graph is untouched, and its plan still fits the result
    for k, v in g.initializers.items():
        np.testing.assert_array_equal(v.array(), before[k])
    plan = fusekit.init_plan(g, "trt_int8")
    check_plan_graph(plan, res.graph)


def test_equalization_pays_in_int8() -> None:
    """Per-channel weights cannot fix conv2's input channels 1e4 apart; equalization does."""
    g = fusekit.load(_unbalanced_pair())
    feeds = samples(8, seed=3)
    ev = samples(4, seed=4)
    sqnr = {}
    for name, graph in (("plain", g), ("equalized", equalize(g).graph)):
        plan = fusekit.init_plan(graph, "ort_int8")
        res = fusekit.default_pipeline("ort_int8", calibration=Calibration(feeds)).run(graph, plan)
        sqnr[name] = evaluate(g, build_qdq(graph, res.plan).model, ev).min_sqnr
    assert sqnr["equalized"] > sqnr["plain"] + 20.0, sqnr  # measured: 1.2 -> 34.3 dB


def test_depthwise_separable_block_first_and_through_batchnorm() -> None:
    g = fusekit.load(_depthwise_separable())
    pairs, refused = equalization_pairs(g)
    assert [(p.first, p.second) for p in pairs] == [("conv0", "dw1"), ("dw1", "pw2")]
    assert pairs[0].via == ("bn0", "relu0") and pairs[1].via == ("lrelu1",)
    assert ("tap", "'t2' is a graph output") in refused
    res = equalize(g, iterations=50, tolerance=1e-6)
    assert all(p.imbalance_after < 1.01 for p in res.pairs), res.pairs
    assert max(p.imbalance_before for p in res.pairs) > 20
    # BN absorbed the scale: conv0's weights are untouched, the BN's gamma and beta moved
    np.testing.assert_array_equal(
        res.graph.initializers["w0"].array(), g.initializers["w0"].array()
    )
    assert not np.array_equal(res.graph.initializers["g"].array(), g.initializers["g"].array())
    feeds = samples(4, seed=5)
    for a, b in zip(_run(g, feeds), _run(res.graph, feeds)):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4 * float(np.abs(u).max()))
    plain = equalize(g, through_batchnorm=False)
    assert [(p.first, p.second) for p in plain.pairs] == [("dw1", "pw2")]


def test_nothing_to_equalize_returns_the_same_graph() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], "c")]
    g = fusekit.load(
        _model(
            nodes,
            {"w": np.ones((2, 3, 1, 1), np.float32)},
            [("x", [1, 3, 4, 4])],
            [("y", [1, 2, 4, 4])],
        )
    )
    res = equalize(g)
    assert res.graph is g and res.pairs == ()


def _biased_conv(tail: str = "bias") -> tuple[bytes, np.ndarray[Any, Any]]:
    """A 1x1 conv whose weights all round the same way: quantization shifts every output.

    ``tail`` says where the bias lives: the Conv's own ``bias``, a ``bn`` after a bias-less
    Conv, or ``muladd`` (a BatchNorm folded into Mul and Add, as converters write it).
    """
    step = 1.0 / 127
    w = np.full((4, 16, 1, 1), 0.0, np.float32)
    for o in range(4):
        w[o, 0] = 1.0  # the channel's max: step = 1/127 per channel
        # every other weight rounds down by 0.45 step
        w[o, 1:, 0, 0] = ((np.arange(15) % 7 + 1) + 0.45) * step
    inits: dict[str, np.ndarray[Any, Any]] = {"w": w}
    if tail == "bias":
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], "conv")]
        inits["b"] = np.zeros(4, np.float32)
    elif tail == "bn":
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
            helper.make_node("BatchNormalization", ["c", "g", "be", "b", "v"], ["y"], "bn"),
        ]
        inits.update(
            g=np.full(4, 2.0, np.float32),
            be=np.full(4, 0.5, np.float32),
            b=np.zeros(4, np.float32),
            v=np.ones(4, np.float32),
        )
    else:
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
            helper.make_node("Mul", ["c", "a"], ["m"], "mul"),
            helper.make_node("Add", ["m", "b"], ["y"], "add"),
        ]
        inits.update(a=np.full((1, 4, 1, 1), 2.0, np.float32), b=np.zeros((1, 4, 1, 1), np.float32))
    return _model(nodes, inits, [("x", [1, 16, 8, 8])], [("y", [1, 4, 8, 8])]), w


@pytest.mark.parametrize(
    ("tail", "sign", "gain"), [("bias", -1, 1), ("bn", 1, 1), ("muladd", -1, 2)]
)
def test_bias_correction_removes_a_biased_weight_error(tail: str, sign: int, gain: float) -> None:
    model, w = _biased_conv(tail)
    g = fusekit.load(model)
    rng = np.random.default_rng(9)
    feeds = [{"x": (3.0 + rng.standard_normal((1, 16, 8, 8))).astype(np.float32)} for _ in range(8)]
    plan0 = fusekit.init_plan(g, "ort_int8")
    plan = fusekit.default_pipeline("ort_int8", calibration=Calibration(feeds)).run(g, plan0).plan
    res = bias_correction(g, plan, feeds)
    assert res.plan is plan and list(res.corrected) == ["conv"] and res.samples == 8
    # the expected shift, computed here from the plan's weight grid: sum(W_q - W) x mean(x)
    cfg = plan[plan.root(Slot("conv", "in", 1))]
    scale = np.asarray(plan.scale_of(Slot("conv", "in", 1)), np.float64).reshape(-1, 1, 1, 1)
    wq = np.clip(np.round(w / scale), cfg.quant_min, cfg.quant_max) * scale
    mean_x = float(np.mean([f["x"] for f in feeds]))
    want = (wq - w).reshape(4, -1).sum(axis=1) * mean_x
    assert np.all(want < -0.1)  # all four channels shift the same way
    new_b = np.asarray(res.graph.initializers["b"].array()).reshape(-1)
    np.testing.assert_allclose(new_b, sign * gain * want, rtol=0.02)
    check_plan_graph(plan, res.graph)

    def mean_error(graph: fusekit.Graph) -> float:
        qdq = build_qdq(graph, plan).model
        s = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
        f = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return float(np.mean([s.run(None, x)[0] - f.run(None, x)[0] for x in feeds]))

    before, after = mean_error(g), mean_error(res.graph)
    assert abs(before) > 0.1 and abs(after) < abs(before) / 10, (before, after)


def test_bias_correction_refuses_what_it_cannot_correct() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "nobias"),
        helper.make_node("Flatten", ["c"], ["f"], "flat"),
        helper.make_node("MatMul", ["f", "m"], ["y"], "mm"),
    ]
    inits = {
        "w": RNG.standard_normal((2, 3, 1, 1)).astype(np.float32),
        "m": RNG.standard_normal((32, 4)).astype(np.float32),
    }
    g = fusekit.load(_model(nodes, inits, [("x", [1, 3, 4, 4])], [("y", [1, 4])]))
    feeds = samples(2, (1, 3, 4, 4))
    plan = (
        fusekit.default_pipeline("ort_int8", calibration=Calibration(feeds))
        .run(g, fusekit.init_plan(g, "ort_int8"))
        .plan
    )
    res = bias_correction(g, plan, feeds)
    assert res.graph is g and not res.corrected
    assert dict(res.refused) == {
        "nobias": "no bias input and no per-channel BatchNormalization/Add after it",
        "mm": "MatMul has no bias input to correct",
    }


def test_to_model_of_an_edited_graph_round_trips(tmp_path: Any) -> None:
    g = fusekit.load(_unbalanced_pair())
    res = equalize(g)
    path = tmp_path / "eq.onnx"
    fusekit.save(res.graph, path)
    back = onnx.load(path)
    got = {t.name: onnx.numpy_helper.to_array(t) for t in back.graph.initializer}
    np.testing.assert_array_equal(got["w1"], res.graph.initializers["w1"].array())


def test_cli_fuse_equalize_and_bias_correction(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from fusekit.cli import main

    m = tmp_path / "m.onnx"
    m.write_bytes(_unbalanced_pair())
    x = np.random.default_rng(2).standard_normal((12, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", calib__x=x[:8], eval__x=x[8:])
    base = ["fuse", str(m), "--platform", "ort_int8", "--calib", str(tmp_path / "d.npz")]
    docs = {}
    for name, extra in (("plain", []), ("tools", ["--equalize", "--bias-correction"])):
        out = tmp_path / f"{name}.onnx"
        code = main([*base, *extra, "-o", str(out), "--json"])
        text, err = capsys.readouterr()
        assert code == 0, err
        assert ("quantizes weights per channel" in err) == (name == "tools")
        docs[name] = json.loads(text)
    tools = docs["tools"]
    assert tools["equalization"]["pairs"] == 1
    assert tools["equalization"]["largest_imbalance_after"] == pytest.approx(1.0, rel=1e-4)
    assert tools["bias_correction"]["corrected"] == 2
    assert "equalization" not in docs["plain"]
    sq = {k: d["evaluation"]["outputs"][0]["sqnr_db"] for k, d in docs.items()}
    assert sq["tools"] > sq["plain"] + 20, sq
    code = main([*base, "--no-calibrate", "--bias-correction"])
    _, err = capsys.readouterr()
    assert code == 2 and "--bias-correction needs calibration" in err


def test_weights_in_constant_ops_are_edited_too() -> None:
    """PaddlePaddle exports weights as Constant nodes, not initializers: both tools see them."""
    m = onnx.load_from_string(_unbalanced_pair())
    consts = []
    for init in list(m.graph.initializer):
        consts.append(
            helper.make_node("Constant", [], [init.name], f"const_{init.name}", value=init)
        )
    del m.graph.initializer[:]
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(consts + nodes)
    g = fusekit.load(m.SerializeToString())
    assert not g.initializers
    res = equalize(g)
    assert len(res.pairs) == 1 and res.pairs[0].imbalance_after == pytest.approx(1.0, rel=1e-5)
    feeds = samples(3)
    for a, b in zip(_run(g, feeds), _run(res.graph, feeds)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-4 * float(np.abs(a[0]).max()))
    plan = (
        fusekit.default_pipeline("ort_int8", calibration=Calibration(feeds))
        .run(res.graph, fusekit.init_plan(res.graph, "ort_int8"))
        .plan
    )
    bc = bias_correction(res.graph, plan, feeds)
    assert set(bc.corrected) == {"conv1", "conv2"}
    b1 = bc.graph.op("const_b1").attributes["value"]
    assert not np.array_equal(b1, res.graph.op("const_b1").attributes["value"])


def test_bias_correction_refuses_two_muls_instead_of_failing() -> None:
    """Conv -> Mul -> Mul: no Add to carry the shift (0.1 of this code raised on the array test)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
        helper.make_node("Mul", ["c", "a"], ["m"], "mul1"),
        helper.make_node("Mul", ["m", "a2"], ["y"], "mul2"),
    ]
    inits = {
        "w": RNG.standard_normal((4, 3, 1, 1)).astype(np.float32),
        "a": np.full((1, 4, 1, 1), 2.0, np.float32),
        "a2": np.full((1, 4, 1, 1), 3.0, np.float32),
    }
    g = fusekit.load(_model(nodes, inits, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])]))
    feeds = samples(2, (1, 3, 4, 4))
    plan = (
        fusekit.default_pipeline("ort_int8", calibration=Calibration(feeds))
        .run(g, fusekit.init_plan(g, "ort_int8"))
        .plan
    )
    res = bias_correction(g, plan, feeds)
    assert res.graph is g and dict(res.refused) == {
        "conv": "no bias input and no per-channel BatchNormalization/Add after it"
    }
