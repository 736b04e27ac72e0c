"""Platform rule sets: the registry check against ONNX, rule files, init_plan."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnx.defs
import pytest

import fusekit
from fusekit import InvalidPlatform, QuantState, Slot, UnknownPlatform
from fusekit.platforms import PPQ066_TRT_INT8, TRT_INT8
from fusekit.rulefile import platform_from_dict, platform_to_dict, unknown_op_types

from .graphs import G


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Platforms registered by a test stay in that test (the registry is process-global)."""
    module = importlib.import_module("fusekit.platforms")  # fusekit.platforms is the function
    monkeypatch.setattr(module, "_REGISTRY", dict(module._REGISTRY))


def _is_onnx(name: str) -> bool:
    return bool(onnx.defs.has(name) or onnx.defs.has(name, "ai.onnx.ml"))


@pytest.mark.parametrize("name", fusekit.platforms())
def test_every_op_type_is_onnx_or_declared(name: str) -> None:
    """Catches PPQ's 'DropoutSlice' and 'SoftPlus': every name is an ONNX op or listed as not."""
    p = fusekit.get_platform(name)
    unknown = {t for t in p.op_types() if not _is_onnx(t)}
    assert unknown <= p.non_onnx_types, sorted(unknown - p.non_onnx_types)
    assert unknown_op_types(p) == frozenset()
    # the declared list holds no ONNX names (it would hide a real op behind a declaration)
    assert not {t for t in p.non_onnx_types if _is_onnx(t)}


def test_corrected_lists_fix_ppq_typos() -> None:
    assert "DropoutSlice" in PPQ066_TRT_INT8.passive_types
    assert "SoftPlus" in PPQ066_TRT_INT8.activation_types
    for name in ("trt_int8", "ort_int8", "ppl_cuda_int8"):
        p = fusekit.get_platform(name)
        assert {"Slice", "Dropout"} <= p.passive_types
        assert "DropoutSlice" not in p.passive_types and "SoftPlus" not in p.activation_types
        assert not p.quirks
    assert "Softplus" in TRT_INT8.activation_types


def test_registry() -> None:
    names = fusekit.platforms()
    assert {
        "trt_int8",
        "ort_int8",
        "ppl_cuda_int8",
        "ppq066_trt_int8",
        "ppq066_ort_int8",
        "ppq066_ppl_cuda_int8",
    } <= set(names)
    with pytest.raises(UnknownPlatform) as e:
        fusekit.get_platform("tensorrt")
    assert "trt_int8" in str(e.value) and isinstance(e.value, KeyError)
    custom = TRT_INT8.evolve(name="my_trt", activation_types=frozenset({"Relu"}))
    fusekit.register_platform(custom)
    assert fusekit.get_platform("my_trt") is custom
    with pytest.raises(InvalidPlatform):
        fusekit.register_platform(custom.evolve(passive_types=frozenset()))


def test_rule_dict_round_trip() -> None:
    for name in fusekit.platforms():
        p = fusekit.get_platform(name)
        assert platform_from_dict(json.loads(json.dumps(platform_to_dict(p)))) == p


def test_rule_file_errors_name_the_problem(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"name": "x", "base": "trt_int8", "activation_typez": ["Relu"]}))
    with pytest.raises(InvalidPlatform, match="activation_typez"):
        fusekit.load_platform(f)
    f.write_text(
        json.dumps({"name": "x", "base": "trt_int8", "passive_types": ["MaxPool", "Reshap"]})
    )
    with pytest.raises(InvalidPlatform, match="Reshap"):
        fusekit.load_platform(f)
    f.write_text(
        json.dumps({"name": "x", "activation": {"policy": "PER_TENSOR+LINEAR", "bits": 8}})
    )
    with pytest.raises(InvalidPlatform, match="bits"):
        fusekit.load_platform(f)
    f.write_text("{not json")
    with pytest.raises(InvalidPlatform, match="not valid"):
        fusekit.load_platform(f)
    with pytest.raises(InvalidPlatform, match="no such file"):
        fusekit.load_platform(tmp_path / "missing.json")


def test_rule_file_json_and_toml(tmp_path: Path) -> None:
    f = tmp_path / "npu.json"
    f.write_text(
        json.dumps(
            {
                "name": "my_npu",
                "base": "trt_int8",
                "activation_types": ["Relu", "Clip"],
                "activation_patterns": [],  # trt_int8's composites need ops not quantized here
                "non_onnx_types": ["MyFusedOp"],
                "quant_types": ["Conv", "Relu", "Clip", "MyFusedOp"],
            }
        )
    )
    p = fusekit.load_platform(f, register=True)
    assert p.activation_types == {"Relu", "Clip"} and "MyFusedOp" in p.quant_types
    assert fusekit.get_platform("my_npu") == p
    t = tmp_path / "npu.toml"
    t.write_text('name = "my_npu2"\nbase = "ort_int8"\nactivation_types = ["Relu"]\n')
    try:
        import tomllib  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(InvalidPlatform, match=r"Python 3\.11"):
            fusekit.load_platform(t)
    else:
        assert fusekit.load_platform(t).activation_types == {"Relu"}


class TestInitPlan:
    def test_slot_states_follow_the_rules(self) -> None:
        b = G().conv("c", "x").clip("k", "c")
        b.inits["shape"] = fusekit.Initializer.from_array("shape", np.array([1, -1]))
        b.op("Reshape", "rs", ["k", "shape"])
        g = b.build(["rs"])
        for name, bias_state in (
            ("trt_int8", QuantState.FP32),
            ("ppl_cuda_int8", QuantState.PASSIVE_INIT),
        ):
            p = fusekit.init_plan(g, name)
            assert p[Slot("c", "in", 0)].state == QuantState.INITIAL
            w = p[Slot("c", "in", 1)]
            assert w.policy.per_channel and w.channel_axis == 0 and w.observer == "minmax"
            assert p[Slot("c", "in", 2)].state == bias_state
            assert p[Slot("k", "in", 1)].state == QuantState.FP32  # Clip bounds: socket FP32
            assert p[Slot("rs", "in", 1)].state == QuantState.FP32  # Reshape shape: SOI
            assert p.platform_of("c") == name

    def test_explicit_dispatch_and_errors(self) -> None:
        g = G().conv("c", "x").relu("r", "c").build(["r"])
        p = fusekit.init_plan(g, "trt_int8", dispatch={"r": None})
        assert p.is_quantized("c") and not p.is_quantized("r")
        p2 = fusekit.init_plan(g, "trt_int8", dispatch={"r": "ort_int8"})
        assert p2.platform_of("r") == "ort_int8"
        with pytest.raises(InvalidPlatform):
            fusekit.init_plan(g, "trt_int8", dispatch={"nope": None})
        with pytest.raises(InvalidPlatform):
            fusekit.init_plan(g, "trt_int8", dispatch="aggressive")

    def test_shape_subgraph_is_not_quantized(self) -> None:
        b = G().conv("c", "x")
        b.op("Shape", "sh", ["c"])
        b.inits["i0"] = fusekit.Initializer.from_array("i0", np.array([0], np.int64))
        b.op("Gather", "ga", ["sh", "i0"])
        b.inits["m1"] = fusekit.Initializer.from_array("m1", np.array([-1], np.int64))
        b.op("Concat", "cat", ["ga", "m1"], axis=0)
        b.op("Reshape", "rs", ["c", "cat"])
        g = b.build(["rs"])
        p = fusekit.init_plan(g, "trt_int8")
        assert not p.is_quantized("cat")  # feeds only the Reshape's shape socket
        assert p.is_quantized("rs")


def test_names_moved_out_of_platforms_stay_reachable_there() -> None:
    """0.1 code imported init_plan and the rule-file functions from fusekit.platforms."""
    import fusekit.dispatch
    import fusekit.rulefile

    module = importlib.import_module("fusekit.platforms")
    assert module.init_plan is fusekit.dispatch.init_plan
    assert module.load_platform is fusekit.rulefile.load_platform
    assert module.platform_to_dict is fusekit.rulefile.platform_to_dict
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name


def test_named_quirks_alone_switch_ppq_dtype_and_gemm_axis() -> None:
    """dispatch asks for a named quirk, not "has any quirk": a corrected rule set with one
    unrelated quirk keeps fusekit's dtype and Gemm-axis rules; each quirk alone switches its
    own behaviour."""
    g = G().op("Flatten", "f", ["x"])
    g.const("wg", np.ones((100, 8)) * 0.1)
    graph = g.op("Gemm", "gm", ["f", "wg"], transB=0).build(["gm"])
    ncnn = fusekit.get_platform("ncnn_int8")
    other = ncnn.evolve(name="ncnn_other_quirk", quirks={"graph_output_fusion"})
    assert fusekit.init_plan(graph, other)[Slot("gm", "in", 1)].channel_axis == 1
    axis0 = ncnn.evolve(name="ncnn_axis0", quirks={"gemm_weight_axis_0"})
    assert fusekit.init_plan(graph, axis0)[Slot("gm", "in", 1)].channel_axis == 0

    ints = G().op("Shape", "shape", ["x"]).op("Mul", "mul", ["shape", "shape"]).build(["mul"])
    trt0 = fusekit.get_platform("trt_int8")
    trt = trt0.evolve(name="trt_mul", quant_types=trt0.quant_types | {"Mul"})
    for quirk, quantized in (("graph_output_fusion", False), ("any_dtype", True)):
        p = trt.evolve(quirks={quirk})
        plan = fusekit.init_plan(ints, p, dispatch={"mul": p, "shape": p})  # dispatch forced
        assert (plan[Slot("mul", "out", 0)].state != QuantState.FP32) is quantized, quirk


def test_generator_activations_cover_every_shipped_rule_set() -> None:
    """fusekit.testing's generator emits every single-op activation a shipped rule set fuses
    (an ONNX operator up to opset 21, the generator's opset): a rule set gaining one the
    generator does not build would go untested by the property suite."""
    import onnx.defs

    from fusekit.testing import ACTIVATION_TYPES

    shipped = set()
    for name in fusekit.platforms():
        shipped |= fusekit.get_platform(name).activation_types
    at21 = set()
    for t in shipped:
        try:
            onnx.defs.get_schema(t, 21, "")
        except onnx.defs.SchemaError:
            continue
        at21.add(t)
    assert at21 <= set(ACTIVATION_TYPES), sorted(at21 - set(ACTIVATION_TYPES))


def test_platform_validation_errors_carry_the_platform_and_field() -> None:
    trt = fusekit.get_platform("trt_int8")
    cases = {
        "quirks": {"quirks": {"no_such_quirk"}},
        "placement": {"placement": "everywhere"},
        "activation_patterns": {"activation_patterns": {"silu"}},
        "activation_types": {"activation_types": trt.activation_types | {"Softsign"}},
    }
    for field, change in cases.items():
        with pytest.raises(InvalidPlatform) as err:
            trt.evolve(name="mine", **change)
        assert (err.value.platform, err.value.field) == ("mine", field)
        assert str(err.value).startswith("platform 'mine': "), str(err.value)
