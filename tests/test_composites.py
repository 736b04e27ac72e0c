"""Composite activations are registered, checked values; rule sets name only what exists.

Issue 12, item 1: a HardSwish or GELU is fused only when its constants and operands are the
activation's, the refusal reason reaches the decision log and ``fusekit explain``, PPQ's rule
sets keep PPQ's unchecked behaviour through a named quirk, and a Platform refuses unknown
composite and condition names and activations it does not quantize.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fusekit
from fusekit import Graph, QuantState, Slot, TensorType
from fusekit.cli import main
from fusekit.composites import COMPOSITES
from fusekit.errors import InvalidPlatform
from fusekit.passes import PASSIVE_CONDITIONS as PASSIVE_CHECKS
from fusekit.passes import CompositeActivationFusion, PassiveFusion, explain
from fusekit.platforms import (
    ACTIVATION_PATTERNS,
    PASSIVE_CONDITIONS,
    QUIRKS,
    Platform,
    get_platform,
    platforms,
)

from .graphs import G

OVERLAPPED = QuantState.OVERLAPPED
TRT = get_platform("trt_int8")


def out(op: str) -> Slot:
    return Slot(op, "out", 0)


def composite(graph: Graph, platform: str | Platform = "trt_int8") -> Any:
    p = get_platform(platform)
    return CompositeActivationFusion(p).run(graph, fusekit.init_plan(graph, p))


def fused_by(result: Any, rule: str) -> bool:
    return any(d.rule == rule for d in result.changes)


def refusals(result: Any, rule: str) -> list[str]:
    return [d.reason for d in result.refusals if d.rule == rule]


def hardswish(
    add: float = 3.0,
    lo: float = 0.0,
    hi: float = 6.0,
    div: float = 6.0,
    *,
    product_first: bool = True,
    as_factor: bool = False,
    swap_div: bool = False,
) -> Graph:
    """``(x*clip(x+add,lo,hi))/div`` (or ``x*(clip(...)/div)``) after a Conv."""
    b = G().conv("c", "x")
    b.binary("Add", "ad", "c", b.const("k_add", add)).clip("k", "ad", lo, hi)
    scale = ("Mul", b.const("k_div", 1.0 / div)) if as_factor else ("Div", b.const("k_div", div))
    if product_first:
        b.binary("Mul", "m", "c", "k")
        ins = [scale[1], "m"] if swap_div else ["m", scale[1]]
        b.op(scale[0], "last", ins)
    else:
        ins = [scale[1], "k"] if swap_div else ["k", scale[1]]
        b.op(scale[0], "dv", ins).binary("Mul", "last", "c", "dv")
    return b.conv("c2", "last").build(["c2"])


def gelu(
    sqrt2: float = float(np.sqrt(2.0)), one: float = 1.0, half: float = 0.5, *, swap: bool = False
) -> Graph:
    """``(x*(erf(x/sqrt2)+one))*half`` after a Conv."""
    b = G().conv("c", "x")
    k = b.const("k_sqrt2", sqrt2)
    b.op("Div", "d", [k, "c"] if swap else ["c", k]).unary("Erf", "e", "d")
    b.binary("Add", "a", "e", b.const("k_one", one)).binary("Mul", "m", "c", "a")
    b.binary("Mul", "h", "m", b.const("k_half", half))
    return b.conv("c2", "h").build(["c2"])


class TestHardSwish:
    def test_wrong_constants_do_not_fuse(self) -> None:
        """Regression: x*clip(x+5,-1,7)/8 has HardSwish's shape and was fused as one."""
        r = composite(hardswish(5.0, -1.0, 7.0, 8.0))
        assert not fused_by(r, "hardswish")
        assert r.plan[out("c")].state != OVERLAPPED
        (why,) = refusals(r, "hardswish")
        assert "the addend of ad is 5; a HardSwish needs 3" in why
        assert "(x*clip(x+3,0,6))/6" in why

    def test_explain_shows_the_reason(self) -> None:
        g = hardswish(5.0, -1.0, 7.0, 8.0)
        result = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
        steps = " ".join(explain(result, out("c")).steps)
        assert "hardswish refused" in steps and "needs 3" in steps

    @pytest.mark.parametrize(
        ("kwargs", "reason"),
        [
            ({"add": 2.0}, "the addend of ad is 2; a HardSwish needs 3"),
            ({"lo": -1.0}, "k clips to [-1, 6]; a HardSwish clips to [0, 6]"),
            ({"hi": 7.0}, "k clips to [0, 7]"),
            ({"div": 8.0}, "the divisor of last is 8; a HardSwish needs 6"),
            ({"swap_div": True}, "last divides by m; a HardSwish divides it by a constant"),
            ({"div": 5.0, "as_factor": True}, "divisor (as a factor) of last is 0.2;"),
        ],
    )
    def test_each_constant_and_operand_is_checked(
        self, kwargs: dict[str, Any], reason: str
    ) -> None:
        r = composite(hardswish(**kwargs))
        assert not fused_by(r, "hardswish")
        assert any(reason in why for why in refusals(r, "hardswish")), refusals(r, "hardswish")

    @pytest.mark.parametrize("product_first", [True, False])
    @pytest.mark.parametrize("as_factor", [True, False])
    def test_true_hardswish_fuses(self, product_first: bool, as_factor: bool) -> None:
        r = composite(hardswish(product_first=product_first, as_factor=as_factor))
        assert fused_by(r, "hardswish") and not refusals(r, "hardswish")
        assert r.plan.root(out("c")) == out("last")

    def test_clip_attributes_before_opset_11(self) -> None:
        """Clip-6 keeps its bounds in attributes; absent ones are unbounded."""
        for attrs_, ok in (({"min": 0.0, "max": 6.0}, True), ({"min": 0.0}, False)):
            b = G().conv("c", "x")
            b.binary("Add", "ad", "c", b.const("three", 3.0)).op("Clip", "k", ["ad"], **attrs_)
            b.binary("Mul", "m", "c", "k").binary("Div", "last", "m", b.const("six", 6.0))
            assert fused_by(composite(b.conv("c2", "last").build(["c2"])), "hardswish") is ok

    def test_hardsigmoid_needs_hardswish_slope(self) -> None:
        for alpha, ok in ((1.0 / 6.0, True), (None, False), (0.25, False)):
            b = G().conv("c", "x")
            kw = {} if alpha is None else {"alpha": alpha}
            b.op("HardSigmoid", "s", ["c"], **kw).binary("Mul", "m", "s", "c")
            r = composite(b.conv("c2", "m").build(["c2"]))
            assert fused_by(r, "hardswish") is ok, refusals(r, "hardswish")
            if not ok:
                assert "a HardSwish's HardSigmoid has alpha 1/6" in refusals(r, "hardswish")[0]

    def test_a_constant_that_broadcasts_is_refused(self) -> None:
        """A (1,1,1,1,1) addend turns the rank-4 output into rank 5; several values are not
        one constant."""
        for value, reason in (
            (np.full((1, 1, 1, 1, 1), 3.0), "has rank 5, more than its operand's 4"),
            (np.full((4, 1, 1), 3.0), "has 4 values, not one"),
        ):
            b = G().conv("c", "x")
            b.binary("Add", "ad", "c", b.const("three", value)).clip("k", "ad")
            b.binary("Mul", "m", "c", "k").binary("Div", "last", "m", b.const("six", 6.0))
            b.conv("c2", "last")
            g = Graph.build(
                b.ops, b.inputs, ["c2"], b.inits.values(), {"c": TensorType(1, (1, 4, 5, 5))}
            )
            r = composite(g)
            assert not fused_by(r, "hardswish")
            assert any(reason in why for why in refusals(r, "hardswish"))

    def test_ppq_quirk_keeps_the_unchecked_fusion(self) -> None:
        """PPQ 0.6.6 matches op types and edges only: with the quirk the near miss fuses."""
        ppq_like = TRT.evolve(name="unchecked", quirks={"composite_unchecked"})
        r = composite(hardswish(5.0, -1.0, 7.0, 8.0), ppq_like)
        assert fused_by(r, "hardswish") and r.plan.root(out("c")) == out("last")
        assert "composite_unchecked" in get_platform("ppq066_trt_int8").quirks


class TestGelu:
    @pytest.mark.parametrize(
        ("kwargs", "reason"),
        [
            ({"sqrt2": 2.0}, "the divisor of d is 2; a GELU needs 1.41421"),
            ({"one": 2.0}, "the addend of a is 2; a GELU needs 1"),
            ({"half": 0.25}, "the factor of h is 0.25; a GELU needs 0.5"),
            ({"swap": True}, "d divides by c; a GELU divides it by a constant"),
        ],
    )
    def test_wrong_constants_and_order_are_refused(
        self, kwargs: dict[str, Any], reason: str
    ) -> None:
        r = composite(gelu(**kwargs))
        assert not fused_by(r, "gelu")
        assert any(reason in why for why in refusals(r, "gelu")), refusals(r, "gelu")

    def test_gelu_and_rounded_constants_fuse(self) -> None:
        for sqrt2 in (float(np.sqrt(2.0)), 1.4142, 1.41421):
            r = composite(gelu(sqrt2))
            assert fused_by(r, "gelu") and r.plan.root(out("c")) == out("h")

    def test_constant_op_values_are_read(self) -> None:
        """A sqrt 2 held by a Constant op is checked like an initializer."""
        b = G().conv("c", "x")
        b.op("Constant", "k", [], value=np.array(3.0, np.float32))
        b.binary("Div", "d", "c", "k").unary("Erf", "e", "d")
        b.binary("Add", "a", "e", b.const("one", 1.0)).binary("Mul", "m", "c", "a")
        b.binary("Mul", "h", "m", b.const("half", 0.5)).conv("c2", "h")
        r = composite(b.build(["c2"]))
        assert any("the divisor of d is 3" in why for why in refusals(r, "gelu"))


def test_swish_operand_must_be_the_sigmoid_input() -> None:
    """Mul(x1, Sigmoid(x0)) of two outputs of one op is not x*sigmoid(x)."""
    p = Platform(
        name="split_anchor",
        quant_types={"Split", "Sigmoid", "Mul"},
        computing_types={"Split"},
        activation_patterns={"swish"},
    )
    b = G().op("Split", "sp", ["x"], n_out=2, axis=1, num_outputs=2)
    b.unary("Sigmoid", "s", "sp:0").binary("Mul", "m", "sp:1", "s")
    r = composite(b.build(["m"]), p)
    assert not fused_by(r, "swish")
    assert any("not 'sp:0' by 's'" in why for why in refusals(r, "swish")), refusals(r, "swish")
    b = G().op("Split", "sp", ["x"], n_out=2, axis=1, num_outputs=2)
    b.unary("Sigmoid", "s", "sp:0").binary("Mul", "m", "s", "sp:0")  # sp:1 unread
    assert fused_by(composite(b.build(["m"]), p), "swish")


class TestPlatformNames:
    def test_registry_is_the_source_of_the_names(self) -> None:
        assert set(ACTIVATION_PATTERNS) == set(COMPOSITES) == {"swish", "mish", "hardswish", "gelu"}
        assert set(PASSIVE_CONDITIONS) == set(PASSIVE_CHECKS)

    def test_unknown_pattern_name(self) -> None:
        """Regression: "silu" was accepted and did nothing."""
        with pytest.raises(InvalidPlatform) as e:
            TRT.evolve(name="mine", activation_patterns={"swish", "silu"})
        msg = str(e.value)
        assert "activation_patterns" in msg and "['silu']" in msg and "'hardswish'" in msg

    def test_unknown_condition_name(self) -> None:
        """Regression: a misspelt condition made every Pad passive without a check."""
        with pytest.raises(InvalidPlatform) as e:
            TRT.evolve(name="mine", passive_conditions={"Pad": "pad_constant_zer0"})
        msg = str(e.value)
        assert "passive_conditions" in msg and "pad_constant_zer0" in msg
        assert "pad_constant_zero" in msg

    def test_condition_is_applied(self) -> None:
        b = G().conv("c", "x")
        b.inits["pads"] = fusekit.Initializer.from_array("pads", np.zeros(8, np.int64))
        g = b.op("Pad", "pr", ["c", "pads"], mode="reflect").conv("c2", "pr").build(["c2"])
        r = PassiveFusion("trt_int8").run(g, fusekit.init_plan(g, "trt_int8"))
        assert any("reflect" in d.reason for d in r.refusals)

    def test_activation_not_quantized(self) -> None:
        with pytest.raises(InvalidPlatform) as e:
            TRT.evolve(name="mine", quant_types=TRT.quant_types - {"Elu"})
        msg = str(e.value)
        assert "activation_types names ['Elu']" in msg and "quant_types" in msg

    def test_pattern_that_can_never_fuse(self) -> None:
        with pytest.raises(InvalidPlatform) as e:
            TRT.evolve(name="mine", quant_types=TRT.quant_types - {"Erf"})
        assert "'gelu', which would never fuse" in str(e.value) and "Erf" in str(e.value)
        # HardSwish still fuses through x*hardsigmoid(x) without Clip
        TRT.evolve(name="mine", quant_types=TRT.quant_types - {"Clip"}, activation_types={"Relu"})
        with pytest.raises(InvalidPlatform, match="'hardswish'"):
            TRT.evolve(
                name="mine",
                quant_types=TRT.quant_types - {"Clip", "HardSigmoid"},
                activation_types={"Relu"},
            )

    def test_ppq_lists_are_allowed_by_their_quirk(self) -> None:
        p = get_platform("ppq066_trt_int8")
        assert "Swish" in p.activation_types - p.quant_types
        assert "unquantized_activations" in p.quirks and "unquantized_activations" in QUIRKS
        with pytest.raises(InvalidPlatform, match="Swish"):
            p.evolve(name="mine", quirks=p.quirks - {"unquantized_activations"})

    def test_every_registered_rule_set_is_valid(self) -> None:
        """Every shipped rule set passes the checks (evolve builds, and validates, anew)."""
        for name in platforms():
            p = get_platform(name)
            assert p.evolve() == p

    def test_rule_file_with_unknown_pattern_exits_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        rules = tmp_path / "npu.json"
        rules.write_text(
            json.dumps({"name": "npu", "base": "trt_int8", "activation_patterns": ["silu"]})
        )
        model = tmp_path / "m.onnx"
        fusekit.save(hardswish(), model)
        code = main(["explain", str(model), "--platform", str(rules), "--tensor", "c"])
        assert code == 2
        assert "silu" in capsys.readouterr().err


def test_cli_explain_names_the_wrong_constant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    fusekit.save(hardswish(5.0, -1.0, 7.0, 8.0), model)
    assert main(["explain", str(model), "--platform", "trt_int8", "--tensor", "c"]) == 0
    text = capsys.readouterr().out
    assert "not a hardswish" in text and "needs 3" in text
