"""fusekit.load_quantized: QDQ models in, as the float graph plus the plan their Q/DQ encode."""

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
from fusekit.calibrate import calibrate, random_data
from fusekit.export import count_qdq, export_qdq
from fusekit.qimport import import_quantized, placement

from .conftest import corpus_bytes, corpus_models

quantization = pytest.importorskip("onnxruntime.quantization")


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    """Reference kernels: every graph optimization off, so Q/DQ run as written (bit-exact)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.normal(size=shape).astype(np.float32)
    return out


def _assert_same_outputs(
    a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, Any] | None = None
) -> None:
    feeds = _feeds(a) if feeds is None else feeds
    oa, ob = _session(a).run(None, feeds), _session(b).run(None, feeds)
    assert len(oa) == len(ob)
    for x, y in zip(oa, ob):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), float(np.max(np.abs(x - y)))


class _Reader(quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
    """Two random samples, the calibration data of quantize_static."""

    def __init__(self, model: onnx.ModelProto, n: int = 2):
        self.items = iter(_feeds(model, seed) for seed in range(n))

    def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
        return next(self.items, None)


def _quantize_static(tmp_path: Path, name: str, **kw: Any) -> onnx.ModelProto:
    """onnxruntime's quantize_static applied to corpus model ``name``, in the test."""
    src = tmp_path / f"{name}.onnx"
    src.write_bytes(corpus_bytes(name))
    dst = tmp_path / f"{name}.q.onnx"
    model = onnx.load(str(src))
    quantization.quantize_static(str(src), str(dst), _Reader(model), **kw)
    return onnx.load(str(dst))


QS = {
    "qdq_per_tensor_quint8": {
        "quant_format": "QDQ",
        "per_channel": False,
        "activation_type": "QUInt8",
    },
    "qdq_per_channel_qint8": {
        "quant_format": "QDQ",
        "per_channel": True,
        "activation_type": "QInt8",
    },
}


def _qs_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    q = quantization
    return {
        "quant_format": getattr(q.QuantFormat, spec["quant_format"]),
        "per_channel": spec["per_channel"],
        "activation_type": getattr(q.QuantType, spec["activation_type"]),
        "weight_type": q.QuantType.QInt8,
    }


@pytest.mark.parametrize("kind", sorted(QS))
@pytest.mark.parametrize("model", ["resnet18", "unet_small_leaky"])
def test_quantize_static_models_round_trip_bit_exact(tmp_path: Path, kind: str, model: str) -> None:
    """quantize_static's QDQ output imports, and the unchanged plan exports to a model with
    the same outputs bit for bit (reference kernels) and the same number of Q/DQ."""
    q = _quantize_static(tmp_path, model, **_qs_kwargs(QS[kind]))
    graph, plan = fusekit.load_quantized(q)
    assert not fusekit.quantization_ops(graph)  # the float network: no Q/DQ left
    assert len(plan) > 0
    out = export_qdq(graph, plan)
    _assert_same_outputs(q, out)
    before = {t: c for t, c in count_qdq(q).items() if c}
    assert count_qdq(out) == count_qdq(q), before


def test_per_channel_weights_and_zero_points_are_read(tmp_path: Path) -> None:
    """Per-axis weights keep their axis; uint8 activations keep their zero points; int32
    biases are 32-bit points with their own scale."""
    q = _quantize_static(
        tmp_path,
        "resnet18",
        **_qs_kwargs({"quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8"}),
    )
    graph, plan = fusekit.load_quantized(q)
    conv = next(op for op in graph if op.op_type == "Conv")
    w = plan[fusekit.Slot(conv.name, "in", 1)]
    assert w.policy.per_channel and w.channel_axis == 0 and w.num_bits == 8
    assert w.scale is not None and w.scale.size == graph.initializers[conv.inputs[1]].dims[0]
    b = plan[fusekit.Slot(conv.name, "in", 2)]
    assert b.num_bits == 32
    x = plan.root(fusekit.Slot(conv.name, "in", 0))
    cfg = plan[x]
    assert cfg.quant_min == 0 and cfg.quant_max == 255  # QUInt8
    offsets = [plan.offset_of(s) for s in plan if plan[s].quant_min == 0 and plan[s].is_active]
    assert any(o is not None and np.any(o != 0) for o in offsets)  # non-zero zero points


def test_weights_are_dequantized_exactly(tmp_path: Path) -> None:
    """The float weight is (q - zero_point) * scale in float32, as DequantizeLinear gives it."""
    q = _quantize_static(tmp_path, "resnet18", **_qs_kwargs(QS["qdq_per_channel_qint8"]))
    graph, _ = fusekit.load_quantized(q)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    dq = next(
        n for n in q.graph.node if n.op_type == "DequantizeLinear" and inits[n.input[0]].ndim == 4
    )
    qv, s, z = (inits[t] for t in dq.input)
    expect = (qv.astype(np.int64) - z.reshape(-1, 1, 1, 1)).astype(np.float32) * s.reshape(
        -1, 1, 1, 1
    )
    name = dq.input[0][: -len("_quantized")]
    assert np.array_equal(graph.initializers[name].array(), expect)


def _sqnr(ref: np.ndarray[Any, Any], got: np.ndarray[Any, Any]) -> float:
    r = ref.astype(np.float64)
    noise = float(np.sum((r - got.astype(np.float64)) ** 2))
    return float(10 * np.log10(float(np.sum(r**2)) / max(noise, 1e-30)))


#: Tolerance of a QOperator model against the QDQ form fusekit reads from it (SQNR in dB over
#: the model's outputs). Not bit-exact: a QLinear kernel requantizes its integer accumulator
#: with a fixed-point multiplier and rounds once, where the QDQ form computes in float between
#: DequantizeLinear and QuantizeLinear; each op may land one step of its output scale apart and
#: the steps propagate. Measured 40.6-296 dB on these models; the float graph (no Q/DQ at all)
#: is 42-58 dB from the QOperator model, so 30 dB still catches a wrong scale, axis, bias or op.
QOPERATOR_SQNR_DB = 30.0


@pytest.mark.parametrize(
    "model,per_channel",
    [
        ("resnet18", False),  # QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm, MaxPool
        ("resnet18", True),
        ("unet_small_leaky", True),  # QLinearLeakyRelu, QLinearConcat
        ("mobilenet_v3_small", False),  # QLinearMul, HardSwish between DQ and Q
    ],
)
def test_qoperator_models_import(tmp_path: Path, model: str, per_channel: bool) -> None:
    """quantize_static's QOperator output imports as the QDQ form it computes: the float graph
    has no quantized op left and is close to the QOperator model; export_qdq of the import runs
    in onnxruntime and matches the QOperator model within QOPERATOR_SQNR_DB."""
    spec = {"quant_format": "QOperator", "per_channel": per_channel, "activation_type": "QUInt8"}
    q = _quantize_static(tmp_path, model, **_qs_kwargs(spec))
    assert any(n.op_type.startswith("QLinear") for n in q.graph.node)
    graph, plan = fusekit.load_quantized(q, restore_clamps=True)
    assert not fusekit.quantization_ops(graph)
    assert not any(op.op_type.startswith("QLinear") or op.op_type == "QGemm" for op in graph)
    convs = [op for op in graph if op.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "QLinearConv" for n in q.graph.node)
    w = plan[fusekit.Slot(convs[0].name, "in", 1)]
    assert w.num_bits == 8 and w.policy.per_channel == per_channel
    b = plan[fusekit.Slot(convs[0].name, "in", 2)]
    assert b.num_bits == 32  # the int32 bias, scale x_scale * w_scale
    out = export_qdq(graph, plan)
    for seed in range(2):
        feeds = _feeds(q, seed)
        ref = _session(q).run(None, feeds)
        flt = _session(fusekit.to_model(graph)).run(None, feeds)
        got = _session(out).run(None, feeds)
        for r, f, e in zip(ref, flt, got, strict=True):
            assert _sqnr(r, f) >= QOPERATOR_SQNR_DB
            assert _sqnr(r, e) >= QOPERATOR_SQNR_DB


def test_qoperator_matmul_and_gemm(tmp_path: Path) -> None:
    """QLinearMatMul (per-column weights), QGemm and QLinearSoftmax come back as
    MatMul/Gemm/Softmax with their points; the export matches the QOperator model."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], "mm"),
        helper.make_node("Relu", ["h"], ["r"], "relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["z"], "gemm"),
        helper.make_node("Softmax", ["z"], ["y"], "softmax", axis=1),
    ]
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    src, dst = tmp_path / "mm.onnx", tmp_path / "mm.q.onnx"
    onnx.save(m, str(src))
    spec = {"quant_format": "QOperator", "per_channel": True, "activation_type": "QInt8"}
    quantization.quantize_static(str(src), str(dst), _Reader(m, 4), **_qs_kwargs(spec))
    q = onnx.load(str(dst))
    types = {n.op_type for n in q.graph.node}
    assert {"QLinearMatMul", "QGemm", "QLinearSoftmax"} <= types, types
    graph, plan = fusekit.load_quantized(q)  # (quantize_static folds the Relu into the Q)
    assert [op.op_type for op in graph] == ["MatMul", "Gemm", "Softmax"]
    mm, gemm, softmax = graph
    assert softmax.attributes["axis"] == 1 and "opset" not in softmax.attributes
    w = plan[fusekit.Slot(mm.name, "in", 1)]
    assert w.num_bits == 8 and w.policy.per_channel and w.channel_axis == 1  # per column
    assert plan[fusekit.Slot(gemm.name, "in", 2)].num_bits == 32
    feeds = _feeds(q, 3)
    ref = _session(q).run(None, feeds)[0]
    assert _sqnr(ref, _session(export_qdq(graph, plan)).run(None, feeds)[0]) >= QOPERATOR_SQNR_DB


def test_dynamic_quantization_and_unknown_qoperator_ops_are_refused_by_name() -> None:
    """Dynamic quantization (DynamicQuantizeLinear + MatMulInteger) and QLinear ops the
    conversion does not read are refused, each op type named; an InvalidModel (exit 2)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [2, 4])
    w = numpy_helper.from_array(np.ones((8, 4), np.uint8), "w")
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], "dql"),
        helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["y"], "mmi"),
    ]
    m = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [w]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    with pytest.raises(fusekit.UnsupportedQuantization) as e:
        fusekit.load_quantized(m)
    assert "DynamicQuantizeLinear" in str(e.value) and "MatMulInteger" in str(e.value)
    assert "dynamic quantization" in str(e.value)
    assert isinstance(e.value, fusekit.InvalidModel)
    soft = helper.make_node(
        "QLinearReduceMean", ["a", "s", "z", "s", "z"], ["b"], "rm", domain="com.microsoft"
    )
    m2 = helper.make_model(
        helper.make_graph(
            [soft],
            "g",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 4])],
            [helper.make_tensor_value_info("b", TensorProto.UINT8, [2, 4])],
            [
                numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                numpy_helper.from_array(np.array(128, np.uint8), "z"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)],
    )
    with pytest.raises(fusekit.UnsupportedQuantization, match="QLinearReduceMean"):
        fusekit.load_quantized(m2)


@pytest.mark.parametrize("platform", ["trt_int8", "ort_int8"])
@pytest.mark.parametrize("quantized_weights", [True, False])
@pytest.mark.parametrize("model", ["resnet18", "unet_small_leaky", "mobilenet_v3_small"])
def test_fusekit_export_imports_back(platform: str, quantized_weights: bool, model: str) -> None:
    """Importing fusekit's own export gives the same graph structure and the same placement
    (points, scales, zero points, axes, sharing groups); with float weights under Q/DQ the
    initializers are the very same values (int32 biases excepted: they are dequantized).
    Models of opset 13 or newer: export raises older ones to 13, so the graph changes."""
    g = fusekit.load(corpus_bytes(model))
    plan = fusekit.default_pipeline(platform).run(g, fusekit.init_plan(g, platform)).plan
    plan = calibrate(g, plan, random_data(g, 2))
    m = export_qdq(g, plan, quantized_weights=quantized_weights)
    got = import_quantized(m)
    assert got.dangling == ()
    assert got.graph.fingerprint() == g.fingerprint()
    assert placement(got.plan) == placement(plan)
    if not quantized_weights:  # biases are int32 either way: compare the others
        biases = {g.tensor_of(s) for s in plan if plan[s].num_bits == 32}
        for name, init in g.initializers.items():
            if name in biases:
                continue
            assert np.array_equal(got.graph.initializers[name].array(), init.array()), name
    _assert_same_outputs(m, export_qdq(got.graph, got.plan))


def _qdq_model(nodes: list[onnx.NodeProto], inits: list[TensorProto], opset: int = 13) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    buf = io.BytesIO()
    onnx.save(m, buf)
    return buf.getvalue()


def _scale(name: str, v: float = 0.1) -> TensorProto:
    return numpy_helper.from_array(np.array(v, np.float32), name)


def test_block_wise_qdq_is_refused() -> None:
    """A block-wise DequantizeLinear (opset 21 block_size) is refused, naming the node."""
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q")
    s = numpy_helper.from_array(np.full((4, 2), 0.1, np.float32), "w_s")
    dq = helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "dq_w", axis=1, block_size=2)
    mm = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    with pytest.raises(fusekit.UnsupportedQuantization, match=r"dq_w.*block-wise"):
        fusekit.load_quantized(_qdq_model([dq, mm], [w, s], opset=21))


def test_opset_10_qdq_without_zero_point_is_uint8() -> None:
    """Opset 10 Q/DQ without a zero point are uint8 with zero point 0, per tensor."""
    q = helper.make_node("QuantizeLinear", ["x", "s"], ["xq"], "q")
    dq = helper.make_node("DequantizeLinear", ["xq", "s"], ["xd"], "dq")
    r = helper.make_node("Relu", ["xd"], ["y"], "r")
    src = _qdq_model([q, dq, r], [_scale("s", 0.05)], opset=10)
    graph, plan = fusekit.load_quantized(src)
    assert [op.op_type for op in graph] == ["Relu"]
    cfg = plan[fusekit.Slot("r", "in", 0)]
    assert (cfg.quant_min, cfg.quant_max, cfg.num_bits) == (0, 255, 8)
    assert float(cfg.scale) == np.float32(0.05) and float(cfg.offset) == 0
    _assert_same_outputs(onnx.load_from_string(src), export_qdq(graph, plan))


def test_shared_scale_initializer_makes_one_group() -> None:
    """Two pairs reading the same scale and zero-point initializers are one sharing group."""
    zp = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], "r1"),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"], "qa"),
        helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["ad"], "dqa"),
        helper.make_node("Sigmoid", ["ad"], ["b"], "sg"),
        helper.make_node("QuantizeLinear", ["b", "s", "z"], ["bq"], "qb"),
        helper.make_node("DequantizeLinear", ["bq", "s", "z"], ["y"], "dqb"),
    ]
    graph, plan = fusekit.load_quantized(_qdq_model(nodes, [_scale("s"), zp]))
    r1, sg = fusekit.Slot("r1", "out", 0), fusekit.Slot("sg", "out", 0)
    assert plan.root(r1) == plan.root(sg)
    assert graph.outputs == ("y",)


def test_dangling_q_is_kept_and_listed() -> None:
    """A QuantizeLinear read by a non-DQ op stays in the graph and is listed as dangling."""
    zp = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], "q"),
        helper.make_node("Cast", ["xq"], ["y"], "c", to=TensorProto.FLOAT),
    ]
    got = import_quantized(_qdq_model(nodes, [_scale("s"), zp]))
    assert [d.kind for d in got.dangling] == ["q_without_dq"]
    assert [op.op_type for op in got.graph] == ["QuantizeLinear", "Cast"]


def test_input_proto_is_not_modified(tmp_path: Path) -> None:
    """Importing a ModelProto leaves the caller's proto untouched."""
    q = _quantize_static(tmp_path, "resnet18", **_qs_kwargs(QS["qdq_per_tensor_quint8"]))
    before = q.SerializeToString()
    fusekit.load_quantized(q)
    assert q.SerializeToString() == before


def _folds(g: fusekit.Graph, m: onnx.ModelProto) -> set[str]:
    """The BatchNormalization ops of ``g`` the export folded away (absent from ``m``)."""
    names = {n.name for n in m.graph.node}
    return {op.name for op in g if op.op_type == "BatchNormalization" and op.name not in names}


def _export_differences(m1: onnx.ModelProto, m2: onnx.ModelProto) -> list[str]:
    """How two QDQ models differ as exports: their float graphs, their placements (points,
    scales, zero points, axes, groups), their ops; empty when they are the same export."""
    a, b = import_quantized(m1), import_quantized(m2)
    diffs = []
    if a.graph.fingerprint() != b.graph.fingerprint():
        diffs.append("float graph")
    pa, pb = placement(a.plan), placement(b.plan)
    if pa.points != pb.points:
        diffs.append(f"points: {sorted(set(pa.points) ^ set(pb.points))[:3]} or values")
    if pa.groups != pb.groups:
        diffs.append("groups")
    if sorted(n.op_type for n in m1.graph.node) != sorted(n.op_type for n in m2.graph.node):
        diffs.append("node op types")
    return diffs


def _fixed_point(g: fusekit.Graph, plan: fusekit.QuantPlan) -> tuple[onnx.ModelProto, Any]:
    """``m = export(g, plan)`` and ``export(*load_quantized(m))``: export is a fixed point of
    import when the two are the same export."""
    m = export_qdq(g, plan)
    got = import_quantized(m)
    assert got.dangling == ()
    return m, export_qdq(got.graph, got.plan)


def test_float_reader_of_standalone_output_imports_as_after_point() -> None:
    """ort_int8 leaves a standalone Relu's output pair after it while the next Relu reads the
    float tensor (``X_float``): that pair is a point after the producer, not an unread DQ."""
    x = helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 4, 5, 5])
    y = helper.make_tensor_value_info("t6", TensorProto.FLOAT, [1, 4, 5, 5])
    w = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4, 1, 1), "w")
    nodes = [
        helper.make_node("Relu", ["x0"], ["t1"], "relu_2"),
        helper.make_node("Relu", ["t1"], ["t3"], "relu_4"),
        helper.make_node("Conv", ["t3", "w"], ["t6"], "conv_7", kernel_shape=[1, 1]),
    ]
    src = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 13)]
    )
    from fusekit.testing import StandInCalibration

    g = fusekit.load(src.SerializeToString())
    pipe = fusekit.default_pipeline("ort_int8", calibration=StandInCalibration())
    plan = pipe.run(g, fusekit.init_plan(g, "ort_int8")).plan
    assert plan[fusekit.Slot("relu_2", "out", 0)].is_active
    assert not plan[fusekit.Slot("relu_4", "in", 0)].is_active
    m = export_qdq(g, plan)
    assert "t1_float" in m.graph.node[1].input  # relu_4 reads the float tensor
    got = import_quantized(m)
    assert got.dangling == ()
    assert got.graph.fingerprint() == g.fingerprint()
    assert placement(got.plan) == placement(plan)


def test_export_fixed_point_comparison_catches_a_dropped_link_or_scale() -> None:
    """The fixed-point check can fail: a re-export with one scale changed, or with one pair
    dropped (its reader rewired to the float value), or with a sharing link dropped differs."""
    g = fusekit.load(corpus_bytes("resnet18"))
    plan = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    plan = calibrate(g, plan, random_data(g, 2))
    m, again = _fixed_point(g, plan)
    assert _export_differences(m, again) == []
    # a scale changed
    bad = onnx.ModelProto()
    bad.CopyFrom(again)
    dq = next(n for n in bad.graph.node if n.op_type == "DequantizeLinear")
    init = next(t for t in bad.graph.initializer if t.name == dq.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
    assert _export_differences(m, bad)
    # a pair dropped: the readers of its DQ read the Q's input instead
    bad.CopyFrom(again)
    q = next(n for n in bad.graph.node if n.op_type == "QuantizeLinear" and n.input[0] != "input")
    dqs = [
        n for n in bad.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]
    ]
    for n in bad.graph.node:
        for k, t in enumerate(n.input):
            if t in {d.output[0] for d in dqs}:
                n.input[k] = q.input[0]
    for n in [q, *dqs]:
        bad.graph.node.remove(n)
    assert _export_differences(m, bad)
    # a sharing link dropped: one pair gets its own copy of the scale initializer
    bad.CopyFrom(again)
    uses: dict[str, list[onnx.NodeProto]] = {}
    for n in bad.graph.node:
        if n.op_type == "QuantizeLinear":
            uses.setdefault(n.input[1], []).append(n)
    shared = next(ns for ns in uses.values() if len(ns) > 1)
    src_init = next(t for t in bad.graph.initializer if t.name == shared[1].input[1])
    copy = numpy_helper.from_array(numpy_helper.to_array(src_init), src_init.name + "_copy")
    bad.graph.initializer.append(copy)
    lone = shared[1].output[0]
    shared[1].input[1] = copy.name
    for n in bad.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] == lone:
            n.input[1] = copy.name
    assert _export_differences(m, bad) == ["groups"]


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["trt_int8", "ort_int8"])
@pytest.mark.parametrize("model", corpus_models())
def test_every_corpus_model_export_imports_back(model: str, platform: str) -> None:
    """The sweep: for every corpus model and platform, re-exporting the import of fusekit's
    export gives the same export (see :func:`_fixed_point`). When export folds no
    BatchNormalization, the export also imports back to
    the same placement (a stand-in calibration gives the scales: no onnxruntime run), and to
    the same graph when the model is opset 13 or newer (export raises older ones to 13), up to
    Constant weights coming back as initializers."""
    from fusekit.testing import StandInCalibration

    g = fusekit.load(corpus_bytes(model))
    pipe = fusekit.default_pipeline(platform, calibration=StandInCalibration())
    plan = pipe.run(g, fusekit.init_plan(g, platform)).plan
    m, again = _fixed_point(g, plan)
    # for every model, export is a fixed point of import: the same points, scales, zero
    # points, groups, and the same outputs under the reference kernels
    assert _export_differences(m, again) == []
    # typed inputs, dynamic sizes resolved (silero's reflect padding needs > 64 samples)
    feeds = next(iter(random_data(g, 1, default_dim=512 if "silero" in model else 64)))
    _assert_same_outputs(m, again, feeds)
    got = import_quantized(m)
    if _folds(g, m):  # a BatchNormalization folded at export is gone for good
        return
    assert placement(got.plan) == placement(plan)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    original = onnx.load_from_string(corpus_bytes(model))
    src_opset = next(o.version for o in original.opset_import if o.domain in ("", "ai.onnx"))
    if src_opset >= 13:
        assert opset == src_opset
        # Constant ops holding a weight come back as initializers (the export drops them)
        folded = {op.name for op in g if op.op_type == "Constant" and op.name not in got.graph.ops}
        assert set(got.graph.ops) == set(g.ops) - folded
        for name, op in got.graph.ops.items():
            assert (op.op_type, op.inputs, op.outputs) == (
                g.ops[name].op_type,
                g.ops[name].inputs,
                g.ops[name].outputs,
            ), name
        consts = {g.ops[n].outputs[0] for n in folded}
        assert set(got.graph.initializers) == set(g.initializers) | consts


def test_conv_with_two_readers_one_a_batchnorm_exports() -> None:
    """Found by the restated import law (ci profile): Conv -> {BatchNormalization, Relu}.

    The BatchNormalization must not be folded into the Conv (the Relu reads the Conv's own
    output); the exporter folded it anyway and wrote an unsorted model."""
    from fusekit.testing import StandInCalibration

    x = helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 4, 5, 5])
    outs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1, 4, 5, 5]) for t in "yz"]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w")]
    for name, v in (("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)):
        inits.append(numpy_helper.from_array(np.full(4, v, np.float32), name))
    nodes = [
        helper.make_node("Relu", ["x0"], ["t1"], "relu_in"),
        helper.make_node("Conv", ["t1", "w"], ["t4"], "conv", kernel_shape=[1, 1]),
        helper.make_node("BatchNormalization", ["t4", "g", "b", "m", "v"], ["t5"], "bn"),
        helper.make_node("Relu", ["t5"], ["y"], "relu_bn"),
        helper.make_node("Relu", ["t4"], ["z"], "relu_conv"),
    ]
    src = helper.make_model(
        helper.make_graph(nodes, "g", [x], outs, inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    g = fusekit.load(src.SerializeToString())
    pipe = fusekit.default_pipeline("trt_int8", calibration=StandInCalibration())
    plan = pipe.run(g, fusekit.init_plan(g, "trt_int8")).plan
    m = export_qdq(g, plan)
    assert [n.name for n in m.graph.node if n.op_type == "BatchNormalization"] == ["bn"]
    assert _export_differences(m, _fixed_point(g, plan)[1]) == []


def test_import_with_platform_keeps_node_unit_float_routing() -> None:
    """ort_int8 exports a standalone op running in float (a Relu after a float Sum) as
    ``X_float -> Q -> DQ -> X`` with its float readers on ``X_float``; imported with
    ``platform="ort_int8"`` or without a platform and exported again, the model is the same
    node for node."""
    g = fusekit.load(corpus_bytes("onnx_light_shufflenet"))
    plan = fusekit.default_pipeline("ort_int8").run(g, fusekit.init_plan(g, "ort_int8")).plan
    m = export_qdq(g, calibrate(g, plan, random_data(g, 2)))

    def wiring(model: onnx.ModelProto) -> list[tuple[str, tuple[str, ...]]]:
        return sorted((n.op_type, tuple(n.input)) for n in model.graph.node)

    got = import_quantized(m, platform="ort_int8")
    again = export_qdq(got.graph, got.plan)
    assert wiring(again) == wiring(m)
    _assert_same_outputs(m, again)
    # issue 15 follow-up: the default "imported" dispatch keeps the routing too (it sent the
    # float readers through the DequantizeLinear, which broke the fixed point's outputs on
    # resnet18 once ort_int8 left its classifier float)
    plain = import_quantized(m)
    plain_again = export_qdq(plain.graph, plain.plan)
    assert wiring(plain_again) == wiring(m)
    _assert_same_outputs(m, plain_again)


def test_imported_batchnorm_reading_a_pair_still_reads_it() -> None:
    """Issue 15 follow-up: the exporter routes an imported op's float readers to the float
    copy of a point after an op that runs in float; a BatchNormalization that read the pair's
    output in the source (the importer gives it no config: OVERLAPPED would mean folded) must
    still read the DequantizeLinear output, or the re-export computes something else."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])
    inits = [_scale("s", 0.05), numpy_helper.from_array(np.array(0, np.uint8), "z")]
    for name, v in (("g", 1.5), ("b", 0.2), ("m", 0.1), ("v", 2.0)):
        inits.append(numpy_helper.from_array(np.full(4, v, np.float32), name))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], "relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], "q"),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"], "dq"),
        helper.make_node("BatchNormalization", ["rd", "g", "b", "m", "v"], ["y"], "bn"),
    ]
    src = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    got = import_quantized(src)
    again = export_qdq(got.graph, got.plan)
    bn = next(n for n in again.graph.node if n.op_type == "BatchNormalization")
    prod = {o: n for n in again.graph.node for o in n.output}
    assert prod[bn.input[0]].op_type == "DequantizeLinear"
    _assert_same_outputs(src, again)


def test_unsorted_file_imports_as_the_sorted_one() -> None:
    """A QDQ file whose nodes are not in topological order (reversed here) gives the graph and
    the plan of the sorted file: the importer walks the nodes in a topological order then, so
    a pair behind a pair (a requantization for one reader) sees the first pair resolved (its
    one-pass check of the file order must see a name read before it is written)."""
    f = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", f, [1, 2, 3, 3])
    outs = [helper.make_tensor_value_info(t, f, [1, 2, 3, 3]) for t in ("y1", "y2")]
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    params = [
        numpy_helper.from_array(np.array(v, np.float32 if n[0] == "s" else np.int8), n)
        for n, v in (("s1", 0.1), ("z1", 0), ("s2", 0.2), ("z2", 0))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
        helper.make_node("QuantizeLinear", ["c", "s1", "z1"], ["q1"], "q1"),
        helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"], "dq1"),
        helper.make_node("Relu", ["d1"], ["y1"], "relu"),
        helper.make_node("QuantizeLinear", ["d1", "s2", "z2"], ["q2"], "q2"),
        helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["d2"], "dq2"),
        helper.make_node("Sigmoid", ["d2"], ["y2"], "sigmoid"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], outs, [w, *params]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes[::-1])
    want, got = import_quantized(model), import_quantized(shuffled)
    assert set(want.graph.ops) == {"conv", "relu", "sigmoid"}
    assert got.graph.ops == want.graph.ops
    assert placement(got.plan) == placement(want.plan)
    assert got.dangling == want.dangling == ()
    # a third pair behind the second is refused whatever the file order (the depth of a pair
    # is its source's plus one only when the source was seen first)
    deep = [
        *nodes[:6],
        helper.make_node("QuantizeLinear", ["d2", "s1", "z1"], ["q3"], "q3"),
        helper.make_node("DequantizeLinear", ["q3", "s1", "z1"], ["d3"], "dq3"),
        helper.make_node("Sigmoid", ["d3"], ["y2"], "sigmoid"),
    ]
    for order in (deep, deep[::-1]):
        del shuffled.graph.node[:]
        shuffled.graph.node.extend(order)
        with pytest.raises(fusekit.UnsupportedQuantization, match="quantized twice"):
            import_quantized(shuffled)


def test_ops_found_by_position_and_by_name_agree() -> None:
    """The plan builder finds a point's ops by their position among the float graph's ops when
    the graph kept the importer's order and names, else by the tensor each writes (unnamed
    nodes get invented names). Both give the same plan, also when the positions shift: a
    Constant that only fed Q/DQ parameters is dropped, a Clip is restored after a Conv."""
    f = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", f, [1, 2, 3, 3])
    y = helper.make_tensor_value_info("y", f, [1, 2, 3, 3])
    inits = [
        numpy_helper.from_array(np.array(0, np.uint8), "zx"),
        numpy_helper.from_array(np.array(0.05, np.float32), "sc"),
        numpy_helper.from_array(np.array(0, np.uint8), "zc"),
        numpy_helper.from_array(np.arange(4, dtype=np.int8).reshape(2, 2, 1, 1), "wq"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
    ]
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "sx_value")
    nodes = [
        helper.make_node("Constant", [], ["sx"], "const", value=scale),  # dropped: a shift
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], "qx"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], "dqx"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], "dqw"),
        helper.make_node("Conv", ["xd", "w"], ["c"], "conv1"),
        helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["cq"], "qc"),  # clamps: a Clip
        helper.make_node("DequantizeLinear", ["cq", "sc", "zc"], ["cd"], "dqc"),
        helper.make_node("Conv", ["cd", "w"], ["y"], "conv2"),
    ]
    named = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    unnamed = onnx.ModelProto()
    unnamed.CopyFrom(named)
    for n in unnamed.graph.node:
        n.name = ""
    for restore in (False, True):
        a = import_quantized(named, restore_clamps=restore)
        b = import_quantized(unnamed, restore_clamps=restore)
        ia, ib = a.graph.index, b.graph.index
        assert ia.op_names != ib.op_names  # invented names: the ops found by name
        assert [a.graph.ops[n].op_type for n in ia.op_names] == [
            b.graph.ops[n].op_type for n in ib.op_names
        ]
        assert ("Clip" in [a.graph.ops[n].op_type for n in ia.op_names]) is restore
        assert list(a.plan.configs) == list(b.plan.configs)
        assert [a.plan.root_id(s) for s in range(ia.n_slots)] == [
            b.plan.root_id(s) for s in range(ib.n_slots)
        ]
        quantized = [ia.slot_key(s) for s, c in enumerate(a.plan.configs) if c is not None]
        assert {k.op for k in quantized} == {"conv1", "conv2"} | ({"cd_Clip"} if restore else set())


@pytest.mark.parametrize("zp_type", [TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16])
@pytest.mark.parametrize("raw", [True, False])
def test_scalar_parameters_read_as_the_general_reader_reads_them(zp_type: int, raw: bool) -> None:
    """The per-tensor fast path (scalar scale and zero point read from the tensor fields) gives
    the parameters numpy's decoding gives, from ``raw_data`` and from the typed fields."""
    from fusekit.onnx_io import _read
    from fusekit.qimport import _Nodes, _Reader

    np_zp = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16}
    if raw:
        inits = [
            numpy_helper.from_array(np.array(0.0123, np.float32), "s"),
            numpy_helper.from_array(np.array(3, np_zp[zp_type]), "z"),
        ]
    else:  # float_data and int32_data
        inits = [
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.0123]),
            helper.make_tensor("z", zp_type, [], [3]),
        ]
    assert bool(inits[0].raw_data) is raw and bool(inits[1].raw_data) is raw
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], "q")
    model = helper.make_model(
        helper.make_graph(
            [node], "g", [x], [helper.make_tensor_value_info("q", zp_type, [2])], inits
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    m, label, base = _read(model)
    nd = _Nodes.read(m.graph)
    rd = _Reader(m, label, base, nd)
    fast = rd._scalar_params(nd.ins[0])
    assert fast is not None
    node_with_attr = onnx.NodeProto()
    node_with_attr.CopyFrom(nd.protos[0])
    node_with_attr.attribute.append(helper.make_attribute("axis", 1))  # the general reader
    general = rd._read_params(node_with_attr, nd.ins[0])
    assert (fast.dtype, fast.key, fast.names, fast.axis) == (
        general.dtype,
        general.key,
        general.names,
        general.axis,
    )
    assert fast.scale.dtype == general.scale.dtype and fast.zero.dtype == general.zero.dtype
    assert float(fast.scale) == np.float32(0.0123) and int(fast.zero) == 3
