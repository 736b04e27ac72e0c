"""Per-channel activation scales on depthwise Conv inputs (issue 15 item 5), rule-set data.

``openvino_int8`` quantizes the data input of a depthwise convolution with one scale per
channel (OpenVINO's depthwise kernels take them); ``ort_int8`` and ``trt_int8`` keep one scale
per tensor (their int8 kernels take one input scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

import fusekit
from fusekit.calibrate import Calibration
from fusekit.dispatch import is_depthwise_conv
from fusekit.errors import InvalidPlatform
from fusekit.evaluate import evaluate
from fusekit.export import build_qdq
from fusekit.graph import Slot
from fusekit.rulefile import platform_from_dict, platform_to_dict

from .test_calibrate import _model

#: per-channel gains of the expansion: the depthwise input's channels span 4 decades
_GAINS = np.array([0.001, 0.003, 0.01, 0.03, 0.1, 1.0, 3.0, 10.0], np.float32)


def depthwise_model() -> bytes:
    """x[1,8,8,8] (channels of very different ranges) -> dw (3x3, group 8) -> y, and a dense
    3x3 Conv on the same tensor -> z (not depthwise).
    """
    rng = np.random.default_rng(0)
    # the depthwise weights undo the gains: every output channel matters equally
    dw = (rng.standard_normal((8, 1, 3, 3)) / _GAINS[:, None, None, None]).astype(np.float32)
    dense = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "wd"], ["y"], "dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wz"], ["z"], "dense", pads=[1, 1, 1, 1]),
    ]
    inits = {"wd": dw, "wz": dense}
    return _model(nodes, inits, [("x", [1, 8, 8, 8])], [("y", [1, 8, 8, 8]), ("z", [1, 4, 8, 8])])


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(seed)
    gains = _GAINS[None, :, None, None]
    return [{"x": (rng.standard_normal((1, 8, 8, 8)) * gains).astype(np.float32)} for _ in range(n)]


def _export(g: fusekit.Graph, p: fusekit.Platform) -> tuple[Any, onnx.ModelProto]:
    plan = fusekit.init_plan(g, p)
    res = fusekit.default_pipeline(p, calibration=Calibration(_feeds(16, 1))).run(g, plan)
    return res.plan, build_qdq(g, res.plan).model


def _qdq_axes(model: onnx.ModelProto, reader: str) -> list[tuple[str, int | None, int]]:
    """(op type, axis, scale size) of the Q/DQ chain in front of ``reader``'s input 0."""
    by_out = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == reader)
    out = []
    t = node.input[0]
    while t in by_out and by_out[t].op_type in ("QuantizeLinear", "DequantizeLinear"):
        n = by_out[t]
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        out.append((n.op_type, axis, int(inits[n.input[1]].size)))
        t = n.input[0]
    return out


def test_depthwise_is_group_equal_to_channels() -> None:
    g = fusekit.load(depthwise_model())
    assert is_depthwise_conv(g, g.ops["dw"])
    assert not is_depthwise_conv(g, g.ops["dense"])


def test_depthwise_weights_held_in_a_constant_op_count() -> None:
    """The OCR models hold their weights in ``Constant`` ops (no declared shape)."""
    w = np.ones((8, 1, 3, 3), np.float32)
    nodes = [
        helper.make_node("Constant", [], ["wd"], "wd_const", value=onnx.numpy_helper.from_array(w)),
        helper.make_node("Conv", ["x", "wd"], ["y"], "dw", group=8, pads=[1, 1, 1, 1]),
    ]
    g = fusekit.load(_model(nodes, {}, [("x", [1, 8, 8, 8])], [("y", [1, 8, 8, 8])]))
    assert is_depthwise_conv(g, g.ops["dw"])
    plan = fusekit.init_plan(g, "openvino_int8")
    assert plan[Slot("dw", "in", 0)].policy.per_channel


def test_openvino_int8_gives_the_depthwise_input_a_per_channel_config() -> None:
    g = fusekit.load(depthwise_model())
    p = fusekit.get_platform("openvino_int8")
    assert p.depthwise_input_per_channel
    plan = fusekit.init_plan(g, p)
    cfg = plan[Slot("dw", "in", 0)]
    assert cfg.policy.per_channel and cfg.channel_axis == 1
    assert cfg.policy.symmetric and (cfg.quant_min, cfg.quant_max) == (-128, 127)
    # the dense Conv reading the same tensor and the producer's output stay per-tensor
    assert not plan[Slot("dense", "in", 0)].policy.per_channel


@pytest.mark.parametrize("name", ["ort_int8", "trt_int8"])
def test_int8_kernels_of_ort_and_trt_keep_per_tensor_activations(name: str) -> None:
    g = fusekit.load(depthwise_model())
    p = fusekit.get_platform(name)
    assert not p.depthwise_input_per_channel
    plan, model = _export(g, p)
    for s in plan.slots():
        cfg = plan[s]
        if not g.is_constant(g.tensor_of(s)):
            assert not cfg.policy.per_channel, s
    assert all(axis is None for _, axis, _ in _qdq_axes(model, "dw"))


def test_per_channel_input_is_calibrated_exported_on_axis_1_and_beats_per_tensor() -> None:
    g = fusekit.load(depthwise_model())
    pc = fusekit.get_platform("openvino_int8")
    pt = pc.evolve(name="openvino_int8_pt", depthwise_input_per_channel=False)
    plan, model = _export(g, pc)
    # calibrated per channel: one scale per channel, tracking the gains (4 decades)
    root = plan.root(Slot("dw", "in", 0))
    assert root == Slot("dw", "in", 0)  # not merged into the producer's per-tensor group
    scale = plan.scale_of(root)
    assert scale is not None and scale.shape == (8,)
    assert scale.max() / scale.min() > 1000
    # exported as a per-axis Q/DQ (axis 1, 8 scales) on the graph input
    assert _qdq_axes(model, "dw") == [("DequantizeLinear", 1, 8), ("QuantizeLinear", 1, 8)]
    assert all(axis is None for _, axis, _ in _qdq_axes(model, "dense"))
    _, model_pt = _export(g, pt)
    assert all(axis is None for _, axis, _ in _qdq_axes(model_pt, "dw"))
    # onnxruntime runs it (reference kernels); per channel is far better on y, equal on z
    ev = _feeds(8, 2)
    e_pc, e_pt = evaluate(g, model, ev), evaluate(g, model_pt, ev)
    y_pc, y_pt = e_pc["y"].sqnr_db, e_pt["y"].sqnr_db
    print(f"depthwise output SQNR: per-channel input {y_pc:.2f} dB, per-tensor {y_pt:.2f} dB")
    assert y_pc > y_pt + 10.0, (y_pc, y_pt)
    assert y_pc > 25.0
    assert abs(e_pc["z"].sqnr_db - e_pt["z"].sqnr_db) < 0.01


def test_rule_files_carry_depthwise_input_per_channel() -> None:
    p = fusekit.get_platform("openvino_int8")
    d = platform_to_dict(p)
    assert d["depthwise_input_per_channel"] is True
    assert platform_from_dict(d) == p
    off = platform_from_dict(
        {"name": "x", "base": "openvino_int8", "depthwise_input_per_channel": False}
    )
    assert not off.depthwise_input_per_channel
    with pytest.raises(InvalidPlatform, match="true or false"):
        platform_from_dict({"name": "x", "base": "ort_int8", "depthwise_input_per_channel": 1})
    with pytest.raises(InvalidPlatform, match="depthwise_input_per_channel"):
        fusekit.get_platform("ort_int8").evolve(depthwise_input_per_channel="yes")
    with pytest.raises(InvalidPlatform, match="already per-channel"):
        p.evolve(activation=p.weights["Conv"])


def test_the_export_imports_back_per_channel_and_audits_clean() -> None:
    """Import, plan files and the audit read the per-channel activation as the plan has it."""
    from fusekit.audit import audit
    from fusekit.qimport import import_quantized

    g = fusekit.load(depthwise_model())
    _, model = _export(g, fusekit.get_platform("openvino_int8"))
    imp = import_quantized(model, platform="openvino_int8")
    cfg = imp.plan[Slot("dw", "in", 0)]
    assert cfg.policy.per_channel and cfg.channel_axis == 1
    assert cfg.scale is not None and cfg.scale.shape == (8,)
    assert audit(imp.graph, imp.plan, "openvino_int8").count() == 0
    # onnxruntime's optimized (int8) kernels run the axis=1 pair too
    assert evaluate(g, model, _feeds(4, 3), kernels="int8")["y"].sqnr_db > 25.0


def _produced_depthwise_input() -> fusekit.Graph:
    """Conv -> Relu -> MaxPool -> depthwise Conv."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "we"], ["e"], "expand"),
        helper.make_node("Relu", ["e"], ["r"], "relu"),
        helper.make_node("MaxPool", ["r"], ["m"], "pool", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["m", "wd"], ["y"], "dw", group=8, pads=[1, 1, 1, 1]),
    ]
    inits = {
        "we": rng.standard_normal((8, 8, 1, 1)).astype(np.float32),
        "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
    }
    return fusekit.load(_model(nodes, inits, [("x", [1, 8, 8, 8])], [("y", [1, 8, 8, 8])]))


def test_a_produced_depthwise_input_requantizes_from_the_producers_per_tensor_point() -> None:
    """Under the fused-output placement, fusion, passive fusion and simplify leave the depthwise
    input a per-channel root of its own; the fused Relu output stays per-tensor."""
    g = _produced_depthwise_input()
    p = fusekit.get_platform("openvino_int8").evolve(placement="fused-output")
    plan, model = _export(g, p)
    dw_in = Slot("dw", "in", 0)
    assert plan.root(dw_in) == dw_in and plan[dw_in].policy.per_channel
    relu_root = plan.root(Slot("pool", "out", 0))
    assert relu_root == Slot("relu", "out", 0)  # activation + passive fusion did happen
    assert not plan[relu_root].policy.per_channel
    assert plan.root(Slot("expand", "out", 0)) == relu_root
    chain = _qdq_axes(model, "dw")
    assert chain[:2] == [("DequantizeLinear", 1, 8), ("QuantizeLinear", 1, 8)]


def test_openvino_int8_quantizes_a_produced_depthwise_input_once_per_channel() -> None:
    """openvino_int8's default placement (computing-input, as NNCF places its quantizers): the
    producer's output carries no point, so the depthwise input's per-channel Q/DQ pair is the
    tensor's only quantization (no per-tensor requantization in front of it)."""
    g = _produced_depthwise_input()
    p = fusekit.get_platform("openvino_int8")
    assert p.placement == "computing-input"
    plan, model = _export(g, p)
    dw_in = Slot("dw", "in", 0)
    assert plan.root(dw_in) == dw_in and plan[dw_in].policy.per_channel
    assert not plan.is_quantized("relu") and not plan.is_quantized("pool")
    assert plan[Slot("expand", "out", 0)].state == fusekit.QuantState.FP32
    assert _qdq_axes(model, "dw") == [("DequantizeLinear", 1, 8), ("QuantizeLinear", 1, 8)]
