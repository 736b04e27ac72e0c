"""Matrix-vector layers (a classifier after global pooling) left float by rule-set data."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import fusekit
from fusekit.dispatch import matvec_ops
from fusekit.errors import InvalidPlatform
from fusekit.rulefile import platform_from_dict, platform_to_dict

from .test_calibrate import _model, _w


def classifier() -> bytes:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (M = 1), and a batched Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], "gap"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], "fc", transB=1),
        helper.make_node("Reshape", ["r", "shape"], ["rows"], "to_rows"),
        helper.make_node("MatMul", ["rows", "m"], ["z"], "rows_matmul"),
    ]
    inits = {
        "w": _w((8, 3, 3, 3), seed=1),
        "fc": _w((5, 8), seed=2),
        "fb": _w((5,), seed=3),
        "shape": np.array([36, 8], np.int64),
        "m": _w((8, 4), seed=4),
    }
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 5]), ("z", [36, 4])])


def test_the_classifier_after_pooling_is_a_matvec_and_batched_rows_are_not() -> None:
    g = fusekit.load(classifier())
    assert matvec_ops(g) == {"fc"}


def test_float_matvec_leaves_the_classifier_float_and_nothing_feeding_only_it() -> None:
    g = fusekit.load(classifier())
    base = fusekit.get_platform("ort_int8")
    assert base.float_matvec  # the shipped default since the issue 15 follow-up
    int8 = fusekit.init_plan(g, base.evolve(name="ort_int8_mv", float_matvec=False))
    assert int8.is_quantized("fc") and int8.is_quantized("flatten")
    plan = fusekit.init_plan(g, base)
    assert not plan.is_quantized("fc")
    # node-unit placement: the Flatten would hand a float Gemm a DequantizeLinear output
    assert not plan.is_quantized("flatten") and not plan.is_quantized("gap")
    assert plan.is_quantized("conv") and plan.is_quantized("rows_matmul")


def test_rule_files_carry_float_matvec() -> None:
    p = fusekit.get_platform("ort_int8").evolve(name="fmv", float_matvec=True)
    d = platform_to_dict(p)
    assert d["float_matvec"] is True and platform_from_dict(d) == p
    with pytest.raises(InvalidPlatform, match="true or false"):
        platform_from_dict({"name": "x", "base": "ort_int8", "float_matvec": "yes"})
