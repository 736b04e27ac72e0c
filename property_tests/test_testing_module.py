"""The public pieces users rely on: ``fusekit.laws`` on hand-made plans, and ``fusekit.testing``
(its import guard, and the user workflow of the README)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit
from fusekit import FusekitError, Graph, Initializer, Op, QuantState, Slot, TensorType, laws
from fusekit import testing as ft

S = (1, 4, 5, 5)
W = np.full((4, 4, 1, 1), 0.1, np.float32)


def _graph(ops: list[Op], outputs: list[str]) -> Graph:
    return Graph.build(ops, {"x": TensorType(1, S)}, outputs, [Initializer.from_array("w", W)])


def _conv_relu_conv() -> Graph:
    return _graph(
        [
            Op("c", "Conv", ("x", "w"), ("a",)),
            Op("r", "Relu", ("a",), ("b",)),
            Op("c2", "Conv", ("b", "w"), ("y",)),
        ],
        ["y"],
    )


def test_laws_hold_for_the_pipeline_result() -> None:
    g = _conv_relu_conv()
    plan = fusekit.default_pipeline("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    assert laws.check(g, plan, "trt_int8") == ()


def test_activation_law_flags_an_unfused_overlapped_computing_output() -> None:
    g = _graph([Op("c", "Conv", ("x", "w"), ("a",)), Op("c2", "Conv", ("a", "w"), ("y",))], ["y"])
    plan = fusekit.init_plan(g, "trt_int8").overlap(Slot("c", "out", 0), Slot("c2", "out", 0))
    v = laws.activation_law(g, plan, "trt_int8")
    assert [x.slot for x in v] == [Slot("c", "out", 0)]
    assert "not an activation" in v[0].message and v[0].law == "activation"


def test_activation_law_flags_a_fused_graph_output() -> None:
    g = _graph([Op("c", "Conv", ("x", "w"), ("a",)), Op("r", "Relu", ("a",), ("b",))], ["a", "b"])
    plan = fusekit.init_plan(g, "trt_int8").overlap(Slot("c", "out", 0), Slot("r", "out", 0))
    assert "graph output" in laws.activation_law(g, plan, "trt_int8")[0].message


def test_passive_law_flags_a_split_output_with_its_own_scale() -> None:
    g = Graph.build(
        [
            Op("c", "Conv", ("x", "w"), ("a",)),
            Op("sp", "Split", ("a",), ("s0", "s1"), {"axis": 1, "num_outputs": 2}),
        ],
        {"x": TensorType(1, S)},
        ["s0", "s1"],
        [Initializer.from_array("w", W)],
    )
    plan = fusekit.init_plan(g, "trt_int8").overlap(Slot("sp", "out", 0), Slot("sp", "in", 0))
    v = laws.passive_law(g, plan, "trt_int8")
    assert [x.slot for x in v] == [Slot("sp", "out", 1)]
    full = fusekit.PassiveFusion("trt_int8").run(g, fusekit.init_plan(g, "trt_int8")).plan
    assert laws.passive_law(g, full, "trt_int8") == ()


def test_no_dead_quantization_flags_a_fan_out_edge_and_a_dead_root() -> None:
    g = _graph(
        [
            Op("c", "Conv", ("x", "w"), ("a",)),
            Op("r", "Relu", ("a",), ("b",)),
            Op("c2", "Conv", ("a", "w"), ("y",)),
        ],
        ["b", "y"],
    )
    plan = fusekit.init_plan(g, "trt_int8")
    # PPQ 0.6.6's shape of bug: the producer is switched off into one consumer's group
    bad = plan.overlap(Slot("c2", "in", 0), Slot("c", "out", 0))
    bad = bad.overlap(Slot("c", "out", 0), Slot("r", "out", 0))
    v = laws.no_dead_quantization(g, bad, "trt_int8")
    assert Slot("c2", "in", 0) in [x.slot for x in v]
    dead = plan.overlap(Slot("c2", "in", 0), Slot("c", "out", 0)).with_state(
        Slot("c", "out", 0), QuantState.FP32
    )
    assert any("FP32" in x.message for x in laws.no_dead_quantization(g, dead, "trt_int8"))


def test_check_names_unknown_laws_and_foreign_plans() -> None:
    g = _conv_relu_conv()
    plan = fusekit.init_plan(g, "trt_int8")
    with pytest.raises(FusekitError, match="unknown law"):
        laws.check(g, plan, "trt_int8", ["gravity"])
    other = _graph([Op("r", "Relu", ("x",), ("y",))], ["y"])
    with pytest.raises(FusekitError, match="different graph"):
        laws.check(other, plan, "trt_int8")
    assert str(laws.Violation("passive", None, "why")) == "[passive]: why"


def test_importing_fusekit_testing_without_hypothesis_raises_missing_dependency() -> None:
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "hypothesis" or name.startswith("hypothesis."):
                    raise ModuleNotFoundError("No module named 'hypothesis'")
                return None
        sys.meta_path.insert(0, Block())
        import fusekit
        from fusekit.errors import MissingDependency
        try:
            import fusekit.testing
        except MissingDependency as e:
            assert isinstance(e, ImportError)
            print("MISSING:", e)
        else:
            print("IMPORTED")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("MISSING:") and "pip install" in out and "hypothesis" in out


# The README example (readme-testing.md), run as a test: a custom rule set checked the way a
# user would check it in their own suite.
MY_PLATFORM = fusekit.get_platform("trt_int8").evolve(
    name="my_npu",
    activation_types=frozenset({"Relu", "Clip"}),
    activation_patterns=frozenset(),
    passive_types=frozenset({"MaxPool", "Reshape", "Transpose", "Identity"}),
)


@settings(max_examples=25)
@given(st.data())
def test_readme_example_custom_rule_set(data: st.DataObject) -> None:
    graph = data.draw(ft.graphs())
    plan = data.draw(ft.initial_plans(graph, MY_PLATFORM))
    ft.check_pass(fusekit.default_pipeline(MY_PLATFORM), graph, plan, MY_PLATFORM)


def test_check_pass_reports_every_broken_law() -> None:
    g = _conv_relu_conv()

    class Unfuse:
        """A user pass with a bug: it switches off every computing op's output."""

        name = "unfuse"

        def run(self, graph: Graph, plan: fusekit.QuantPlan) -> fusekit.FusionResult:
            ev = plan.evolver()
            for op in graph:
                if op.op_type == "Conv":
                    ev.overlap(Slot(op.name, "out", 0), Slot("r", "out", 0))
            return fusekit.FusionResult(ev.persistent(), plan, self.name, ())

    with pytest.raises(AssertionError, match="decision log"):
        ft.check_pass(Unfuse(), g, fusekit.init_plan(g, "trt_int8"), "trt_int8")
