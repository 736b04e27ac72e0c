"""Errors as data (issue 12 item 7): one module, builtin bases, fields used in the message."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pytest

import fusekit
from fusekit import errors
from fusekit.plan_io import load_plan, plan_from_dict, plan_to_dict

from .graphs import G


def _modules() -> list[str]:
    names = ["fusekit"]
    for info in pkgutil.walk_packages(fusekit.__path__, "fusekit."):
        if not info.name.endswith("__main__"):  # importing it runs the command line
            names.append(info.name)
    return names


OPTIONAL = ("fusekit.testing", "fusekit.calibrate", "fusekit.evaluate", "fusekit.kernels")


def test_every_exception_class_lives_in_errors() -> None:
    """No module defines its own exception class (they were in cli, patterns and quant).

    cli's private ``_Terminated`` (a BaseException carrying SIGTERM, like KeyboardInterrupt)
    is a signal, not an error, and is not counted.
    """
    outside = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except errors.MissingDependency:
            assert name in OPTIONAL
            continue
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Exception)
                and obj.__module__.startswith("fusekit")
                and obj.__module__ != "fusekit.errors"
            ):
                outside.append(f"{obj.__module__}.{obj.__name__}")
    assert outside == []


def test_old_import_paths_still_work() -> None:
    from fusekit.cli import CliError
    from fusekit.patterns import PatternError
    from fusekit.quant import NotARoot

    assert CliError is errors.CliError
    assert PatternError is errors.PatternError
    assert NotARoot is errors.NotARoot is fusekit.NotARoot


def test_every_error_is_a_fusekit_error_and_a_builtin() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.FusekitError)
        if cls is not errors.FusekitError:
            assert any(b.__module__ == "builtins" and b is not Exception for b in cls.__mro__), name


def test_no_bare_fusekit_error_is_raised() -> None:
    src = Path(fusekit.__file__).parent
    bare = [
        f"{p.name}:{i}"
        for p in sorted(src.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "raise FusekitError(" in line
    ]
    assert bare == []


class TestInvalidPlan:
    def test_fields_and_message(self) -> None:
        e = errors.InvalidPlan("expected a string", path="p.json.configs[0].policy")
        assert e.path == "p.json.configs[0].policy" and e.reason == "expected a string"
        assert e.slot is None and e.file is None
        assert str(e) == "p.json.configs[0].policy: expected a string"
        assert isinstance(e, ValueError)

    def test_slot_locates_when_there_is_no_path(self) -> None:
        slot = fusekit.Slot("conv", "out", 0)
        e = errors.InvalidPlan("no config", slot=slot)
        assert e.slot == slot and str(e) == "conv|out|0: no config"

    def test_plan_io_fills_the_json_path(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").build(["r1"])
        data = plan_to_dict(fusekit.init_plan(g, "trt_int8"))
        data["configs"][0]["policy"] = 3
        with pytest.raises(errors.InvalidPlan) as e:
            plan_from_dict(g, data, source="p.json")
        assert e.value.path == "p.json.configs[0].policy"
        assert e.value.reason == "expected a string"
        assert str(e.value) == "p.json.configs[0].policy: expected a string"

    def test_a_config_validator_error_gets_the_path_of_its_config(self) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").build(["r1"])
        data = plan_to_dict(fusekit.init_plan(g, "trt_int8"))
        data["configs"][0]["num_bits"] = 1
        with pytest.raises(errors.InvalidPlan) as e:
            plan_from_dict(g, data, source="p.json")
        assert e.value.path == "p.json.configs[0]"
        assert "num_bits must be in 2..32" in e.value.reason

    def test_load_plan_names_the_file(self, tmp_path: Path) -> None:
        g = G().conv("c1", "x").relu("r1", "c1").build(["r1"])
        data = plan_to_dict(fusekit.init_plan(g, "trt_int8"))
        data["ops"]["c1"]["platform"] = ""
        path = tmp_path / "p.json"
        path.write_text(json.dumps(data))
        with pytest.raises(errors.InvalidPlan) as e:
            load_plan(g, path)
        assert e.value.file == str(path)
        assert e.value.path == f"{path}.ops['c1'].platform"
        with pytest.raises(errors.InvalidPlan) as missing:
            load_plan(g, tmp_path / "none.json")
        assert missing.value.file == str(tmp_path / "none.json")
        assert str(missing.value).endswith("none.json: no such file")

    def test_not_a_root_carries_both_slots(self) -> None:
        g = G().relu("a", "x").relu("b", "a").build(["b"])
        plan = fusekit.init_plan(g, "trt_int8", dispatch={"a": "trt_int8", "b": "trt_int8"})
        a, b = fusekit.Slot("a", "out", 0), fusekit.Slot("b", "out", 0)
        with pytest.raises(errors.NotARoot) as e:
            plan.follow(a, b).set_scale(a, 1.0, 0.0)
        assert e.value.slot == a and e.value.root == b
        assert isinstance(e.value, PermissionError) and isinstance(e.value, errors.InvalidPlan)


class TestInvalidPlatform:
    def test_fields_and_message(self) -> None:
        e = errors.InvalidPlatform(
            "unknown op type 'Cnv'", platform="mine", field="computing_types", file="r.toml"
        )
        assert (e.platform, e.field, e.file) == ("mine", "computing_types", "r.toml")
        assert e.reason == "unknown op type 'Cnv'"
        assert str(e) == "r.toml: platform 'mine': unknown op type 'Cnv'"

    def test_without_fields_the_message_is_unchanged(self) -> None:
        assert str(errors.InvalidPlatform("bad")) == "bad"

    def test_alignment_options_name_the_field(self) -> None:
        with pytest.raises(errors.InvalidPlatform) as e:
            fusekit.Alignment("trt_int8", concat="Align to Input")
        assert e.value.field == "concat"


class TestNewErrors:
    def test_unknown_law(self) -> None:
        g = G().conv("c1", "x").build(["c1"])
        with pytest.raises(errors.UnknownLaw) as e:
            fusekit.laws.check(g, fusekit.init_plan(g, "trt_int8"), "trt_int8", ["pasive"])
        assert e.value.law == "pasive" and "passive" in e.value.known
        assert isinstance(e.value, KeyError)
        assert str(e.value).startswith("unknown law 'pasive'")

    def test_not_a_pass(self) -> None:
        e = errors.NotAPass(42)
        assert e.value == 42 and isinstance(e, TypeError) and "42 is not a pass" in str(e)

    def test_postcondition_error_lists_the_violations(self) -> None:
        v = fusekit.laws.Violation("activation", None, "switched off")
        e = errors.PostconditionError("mine", [v])
        assert e.pass_name == "mine" and e.violations == (v,)
        assert isinstance(e, AssertionError)
        assert "[activation]: switched off" in str(e)
