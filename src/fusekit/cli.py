"""The ``fusekit`` command line.

Verbs:

* ``fuse [MODEL]``: the main job: plan, fuse, calibrate, export, evaluate, report;
* ``explain MODEL --tensor NAME | --op NAME``: the decision chain of a tensor's or op's slots;
* ``platforms [NAME]``: the registered rule sets;
* ``evaluate FLOAT.onnx QDQ.onnx``: accuracy of a QDQ model against its float model
  (``--latency``: CPU latency side by side); ``evaluate QDQ.onnx --kernels``: which ops
  onnxruntime runs as int8 kernels, and why the others stay float;
* ``compare MODEL``: fused vs unfused (vs no alignment), and groups that tie ranges apart;
* ``check MODEL --platform NAME [--plan PLAN.json]``: the plan laws;
* ``audit QDQ.onnx --platform NAME``: a quantized model's Q/DQ placement against the
  platform's rules, finding by finding (exit 1 when one is an error);
* ``fix QDQ.onnx --platform NAME -o OUT.onnx [--calib DATA] [--float FLOAT.onnx]``: the
  platform's placement with the model's own scales, summarized point by point;
* ``info [MODEL]``: a summary of a model.

Every verb accepts ``--json`` (one JSON document on stdout) and ``--quiet``. Exit codes: 0 ok,
1 an evaluation below ``--min-sqnr`` (or, for ``check``, a broken law), 2 bad input: one line on
stderr, no traceback unless ``--debug``; 3 an internal error (a bug: the message says how to
report it); 130/143 interrupted by SIGINT/SIGTERM (nothing half-written is left); 141 the
reader of stdout went away (``fusekit platforms | head -1``).

Before any work the CLI checks what it can: every input exists, no output is an input or
another output, every output folder exists (or, for ``--out-dir``, can be created) and the
model is not already quantized. The output files are written as one set at the end (see
:func:`fusekit._util.write_files_atomic`): a failure leaves none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._util import write_files_atomic
from ._version import __version__
from .errors import CliError, FusekitError, ModelRunError, UnknownOp
from .examples import example_model_path
from .graph import Graph, Slot
from .guards import require_float_model
from .onnx_io import ModelExtras, load, model_files

__all__ = ["build_parser", "main", "summarize"]

#: Input shape of the bundled example (PaddleOCR's direction classifier takes 48x192 crops).
EXAMPLE_SHAPES: dict[str, tuple[int, ...]] = {"x": (1, 3, 48, 192)}


class _Output:
    """Human text on stdout unless ``--json`` or ``--quiet``; notes on stderr."""

    def __init__(self, args: argparse.Namespace):
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))

    def line(self, text: str = "") -> None:
        if not self.json and not self.quiet:
            print(text)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"fusekit: {text}", file=sys.stderr)

    def doc(self, data: Any) -> None:
        if self.json:
            print(json.dumps(data, indent=2, default=_json_default, allow_nan=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return None
    return str(value)


def _clean(value: Any) -> Any:
    """Replace non-finite floats (SQNR of +inf) by strings so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# info


def summarize(graph: Graph) -> dict[str, Any]:
    """A JSON-able summary of a graph: op count, op-type histogram, inputs, outputs, opsets."""
    hist = Counter(op.op_type for op in graph)
    opsets: dict[str, int] = {}
    if isinstance(graph.extras, ModelExtras):
        for domain, version in graph.extras.opsets.items():
            opsets[domain or "ai.onnx"] = version

    def io(names: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for n in names:
            t = graph.tensor(n)
            out.append({"name": n, "elem_type": t.elem_type, "shape": t.shape})
        return out

    return {
        "name": graph.name,
        "ops": len(graph),
        "op_types": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": io([n for n in graph.inputs if n not in graph.initializers]),
        "outputs": io(graph.outputs),
        "initializers": len(graph.initializers),
        "opsets": opsets,
    }


def _print_summary(s: dict[str, Any], path: str) -> None:
    print(f"model: {path}")
    print(f"  ops: {s['ops']}   initializers: {s['initializers']}   opsets: {s['opsets']}")
    for kind in ("inputs", "outputs"):
        for t in s[kind]:
            print(f"  {kind[:-1]}: {t['name']}  type={t['elem_type']} shape={t['shape']}")
    print("  op types: " + ", ".join(f"{k} {v}" for k, v in s["op_types"].items()))


def _model_arg(args: argparse.Namespace) -> tuple[str, bool]:
    if getattr(args, "model", None):
        return str(args.model), False
    return str(example_model_path()), True


def _cmd_info(args: argparse.Namespace) -> int:
    path, _ = _model_arg(args)
    graph = load(path)
    s = summarize(graph)
    out = _Output(args)
    if out.json:
        out.doc({"model": path, **s})
    elif not out.quiet:
        _print_summary(s, path)
    return 0


# --------------------------------------------------------------------------------------------
# data


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected NAME=D1,D2,... with positive dimensions, got {text!r}"
        )
    return name, shape


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 2**63-1, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _shapes(args: argparse.Namespace, example: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = dict(EXAMPLE_SHAPES) if example else {}
    shapes.update(dict(getattr(args, "input_shape", None) or []))
    return shapes


def _check_shape_names(args: argparse.Namespace, graph: Graph) -> None:
    """A --input-shape naming no input is a typo, even when no input is generated."""
    from .calibrate import input_specs

    names = [s.name for s in input_specs(graph)]
    unknown = [n for n, _ in getattr(args, "input_shape", None) or [] if n not in names]
    if unknown:
        raise CliError(
            f"--input-shape names {', '.join(map(repr, unknown))}, which the model does not take "
            f"as input (inputs: {', '.join(names) or 'none'})"
        )


def _calib_data(args: argparse.Namespace, graph: Graph, example: bool) -> Any:
    from .calibrate import load_data, random_data

    if args.calib:
        return load_data(args.calib, graph, split="calib", limit=args.samples)
    return random_data(graph, args.samples or 8, seed=args.seed, shapes=_shapes(args, example))


def _eval_data(args: argparse.Namespace, graph: Graph, example: bool, calib: Any) -> Any:
    """Evaluation samples: --eval, else the eval split of --calib, else fresh random inputs."""
    from .calibrate import InvalidData, load_data, random_data

    source = getattr(args, "eval", None)
    if source:
        return load_data(source, graph, split="eval", limit=args.samples)
    if getattr(args, "calib", None):
        try:
            ds = load_data(args.calib, graph, split="eval", limit=args.samples)
        except InvalidData:  # e.g. only calib__* arrays: evaluate on those
            ds = None
        if ds is None or ds.label == calib.label:
            ds = load_data(args.calib, graph, split="calib", limit=args.samples)
            ds.label += " (the calibration samples: no separate evaluation set)"
        return ds
    return random_data(graph, args.samples or 8, seed=args.seed + 1, shapes=_shapes(args, example))


@contextlib.contextmanager
def _running_on(label: str) -> Iterator[None]:
    """Name the data set in an onnxruntime failure (the model is named already)."""
    try:
        yield
    except ModelRunError as e:
        raise ModelRunError(f"{e} (data: {label})") from e


def _check_inputs_exist(paths: Mapping[str, str | None]) -> None:
    """Fail before any work when a data or plan file does not exist (a mistyped --eval)."""
    for option, value in paths.items():
        if value and not Path(value).exists():
            raise CliError(f"{option} {value}: no such file or folder")


def _progress(args: argparse.Namespace) -> bool:
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))


# --------------------------------------------------------------------------------------------
# fuse


def _outputs(args: argparse.Namespace, path: str, platform: str) -> dict[str, Path]:
    stem = Path(path).name
    for suffix in (".gz", ".onnx"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    files: dict[str, Path] = {}
    if args.out_dir:
        d = Path(args.out_dir)
        files = {
            "qdq": d / f"{stem}.{platform}.qdq.onnx",
            "plan": d / f"{stem}.{platform}.plan.json",
            "ranges": d / f"{stem}.{platform}.ranges.json",
            "report": d / f"{stem}.{platform}.report.html",
        }
    for key, value in (
        ("qdq", args.output),
        ("plan", args.plan),
        ("ranges", args.ranges),
        ("report", args.report),
    ):
        if value:
            files[key] = Path(value)
    return files


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: same resolved path, or the same existing inode."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):
        pass
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_outputs(
    inputs: Mapping[str, str | None], files: Mapping[str, Path], out_dir: str | None = None
) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other.

    ``inputs`` maps an option (``model``, ``--calib``...) to its path; a folder input
    (``--calib dir/``) also protects the ``.npy`` files in it. The QDQ model's possible
    external data file (``OUT.onnx.data``, written above 2 GB) counts as an output too.
    """
    outs = dict(files)
    if "qdq" in outs:
        outs["qdq data"] = outs["qdq"].with_name(outs["qdq"].name + ".data")
    ins = [(k, Path(v)) for k, v in inputs.items() if v]
    option = {
        "qdq": "-o",
        "qdq data": "the data file of -o",
        "plan": "--plan",
        "ranges": "--ranges",
        "report": "--report",
    }
    items = list(outs.items())
    for i, (kind, target) in enumerate(items):
        name = option.get(kind, kind)
        for what, src in ins:
            inside = src.is_dir() and target.suffix == ".npy" and _same_file(target.parent, src)
            if _same_file(target, src) or inside:
                raise CliError(f"{name} {target} would overwrite the input ({what}) {src}")
        for other, target2 in items[i + 1 :]:
            if _same_file(target, target2):
                raise CliError(
                    f"{name} and {option.get(other, other)} are the same file {target}; "
                    "give each output its own path"
                )
    for kind, target in files.items():
        creatable = out_dir is not None and target.parent == Path(out_dir)
        _check_writable(option.get(kind, kind), target, creatable)


def _check_writable(option: str, target: Path, creatable: bool) -> None:
    """The output's folder exists, or (``--out-dir``, ``creatable``) can be created."""
    if target.is_dir():
        raise CliError(f"{option} {target} is a folder; give a file name")
    folder = target.parent if str(target.parent) else Path(".")
    probe = folder
    while creatable and not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.exists():
        raise CliError(f"{option} {target}: the folder {probe} does not exist")
    if not probe.is_dir():
        raise CliError(f"{option} {target}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CliError(f"{option} {target}: cannot write in {probe}")


def _group_facts(plan: Any) -> tuple[int, int, str | None]:
    groups = plan.groups(min_size=2)
    if not groups:
        return 0, 0, None
    largest = max(groups, key=len)
    return len(groups), len(largest), str(plan.root(next(iter(largest))))


def _cmd_fuse(args: argparse.Namespace) -> int:
    from .calibrate import Calibration
    from .dispatch import init_plan
    from .evaluate import evaluate
    from .export import build_qdq, dynamic_ranges, quant_points
    from .passes import default_pipeline
    from .plan_io import plan_to_json
    from .platforms import get_platform

    out = _Output(args)
    path, example = _model_arg(args)
    platform = get_platform(args.platform)
    files = _outputs(args, path, platform.name)
    if args.no_calibrate and ("qdq" in files or "ranges" in files):
        raise CliError("--no-calibrate cannot export a QDQ model or ranges (they need scales)")
    inputs = {"model": path, "--calib": args.calib, "--eval": args.eval}
    _check_inputs_exist({"--calib": args.calib, "--eval": args.eval})
    _check_outputs(inputs, files, args.out_dir)
    if args.max_float_groups < 0:
        raise CliError(f"--max-float-groups must be 0 or more, got {args.max_float_groups}")
    if args.target_sqnr is not None and (args.no_calibrate or args.max_float_groups):
        raise CliError("--target-sqnr needs calibration and excludes --max-float-groups")
    if args.target_sqnr is not None and not math.isfinite(args.target_sqnr):
        raise CliError(f"--target-sqnr must be a finite number of dB, got {args.target_sqnr}")
    if args.no_calibrate and args.bias_correction:
        raise CliError("--bias-correction needs calibration (the weight scales)")
    graph = load(path)
    require_float_model(graph, path)
    _check_shape_names(args, graph)
    float_graph = graph  # what the QDQ model is evaluated against
    tools: dict[str, Any] = {}
    if args.equalize:
        from .equalize import equalize

        eq = equalize(graph)
        graph = eq.graph
        if eq.pairs and all(r.policy.per_channel for r in platform.weights.values()):
            out.note(
                f"{platform.name} quantizes weights per channel: equalization mostly moves range "
                "into the activations there (measure it: docs/accuracy.md)"
            )
        tools["equalization"] = {
            "pairs": len(eq.pairs),
            "iterations": eq.iterations,
            "largest_imbalance_before": max((p.imbalance_before for p in eq.pairs), default=1.0),
            "largest_imbalance_after": max((p.imbalance_after for p in eq.pairs), default=1.0),
            "refused": [{"op": op, "reason": why} for op, why in eq.refused],
        }
    plan0 = init_plan(graph, platform, dispatch=args.dispatch)
    calib = None if args.no_calibrate else _calib_data(args, graph, example)
    cal = (
        Calibration(
            calib,
            observer=args.observer,
            progress=_progress(args),
            allow_nonfinite=args.allow_nonfinite,
        )
        if calib is not None
        else None
    )
    with _running_on(calib.label if calib is not None else "-"):
        result = default_pipeline(platform, calibration=cal).run(graph, plan0)
    plan = result.plan

    def rank(plan: Any, data: Any) -> Any:
        """The sensitivity ranking of ``plan``'s groups on ``data`` (fallback options)."""
        from .sensitivity import sensitivity

        return sensitivity(
            graph,
            plan,
            data,
            decisions=result.decisions,
            float_graph=float_graph,
            kernels=args.kernels,
            progress=_progress(args),
        )

    if args.max_float_groups and calib is not None:
        from .sensitivity import greedy_fallback

        with _running_on(calib.label):
            ranking = rank(plan, calib)
        plan, chosen = greedy_fallback(plan, ranking, args.max_float_groups)
        tools["float_groups"] = {
            "ranked_on": calib.label,
            "base_sqnr_db": ranking.base_sqnr_db,
            "groups": [g.to_dict() for g in chosen],
        }
    target_missed = None
    if args.target_sqnr is not None and calib is not None:
        from .sensitivity import fallback_to_target

        ev_target = _eval_data(args, graph, example, calib)
        with _running_on(ev_target.label):
            ranking = rank(plan, ev_target)
            fb = fallback_to_target(
                graph,
                plan,
                ev_target,
                args.target_sqnr,
                ranking,
                float_graph=float_graph,
                kernels=args.kernels,
                progress=_progress(args),
            )
        plan = fb.plan
        tools["target_sqnr"] = {"data": ev_target.label, **fb.to_dict()}
        target_missed = None if fb.reached else fb
    if args.bias_correction and calib is not None:
        from .equalize import bias_correction

        with _running_on(calib.label):
            bc = bias_correction(graph, plan, calib, progress=_progress(args))
        graph = bc.graph
        tools["bias_correction"] = {
            "corrected": len(bc.corrected),
            "largest_shift": max(bc.corrected.values(), default=0.0),
            "refused": [{"op": op, "reason": why} for op, why in bc.refused],
        }

    passes = []
    before = quant_points(plan0)
    for r in result.results:
        after = quant_points(r.plan)
        passes.append(
            {
                "pass": r.pass_name,
                "points_before": before["total"],
                "points_after": after["total"],
                "activation_points_after": after["activations"],
                "changes": r.n_changes,
                "refusals": r.n_refusals,
            }
        )
        before = after
    n_groups, largest, largest_root = _group_facts(plan)
    doc: dict[str, Any] = {
        "model": path,
        "bundled_example": example,
        "platform": platform.name,
        "dispatch": args.dispatch,
        "ops": len(graph),
        "quantized_ops": sum(1 for op in graph if plan.is_quantized(op.name)),
        "points_initial": quant_points(plan0),
        "points_final": quant_points(plan),
        "passes": passes,
        "groups": n_groups,
        "largest_group": {"slots": largest, "root": largest_root},
        **tools,
    }
    evaluation = None
    qdq = None
    if calib is not None:
        doc["calibration"] = {
            "data": calib.label,
            "generated": calib.generated,
            "samples": calib.length,
            "observer": args.observer or "per config",
        }
        qdq = build_qdq(graph, plan)
        doc["export"] = {
            "q_nodes": qdq.q_nodes,
            "dq_nodes": qdq.dq_nodes,
            "activation_pairs": qdq.activation_pairs,
            "parameter_dqs": qdq.parameter_dqs,
            "opset": qdq.opset,
            "left_float": list(qdq.skipped),
        }
        ev_data = _eval_data(args, graph, example, calib)
        with _running_on(ev_data.label):
            evaluation = evaluate(
                float_graph, qdq.model, ev_data, kernels=args.kernels, progress=_progress(args)
            )
        doc["evaluation"] = evaluation.to_dict()
        doc["evaluation"]["generated"] = bool(getattr(ev_data, "generated", False))

    # every output is built in memory first, then written as one set: a failure (or a signal)
    # anywhere before the renames leaves none of them
    contents: dict[Path, bytes] = {}
    written: dict[str, str] = {}
    if "qdq" in files and qdq is not None:
        contents.update(model_files(qdq.model, files["qdq"]))
        written["qdq"] = str(files["qdq"])
        data_file = files["qdq"].with_name(files["qdq"].name + ".data")
        if data_file in contents:
            written["qdq data"] = str(data_file)
    if "plan" in files:
        contents[files["plan"]] = plan_to_json(plan, indent=1).encode("utf-8")
        written["plan"] = str(files["plan"])
    if "ranges" in files:
        contents[files["ranges"]] = json.dumps(dynamic_ranges(plan), indent=1).encode("utf-8")
        written["ranges"] = str(files["ranges"])
    if "report" in files:
        html = _render_report(graph, plan, result, evaluation, path, out)
        if html is not None:
            contents[files["report"]] = html.encode("utf-8")
            written["report"] = str(files["report"])
    _write_set(contents, Path(args.out_dir) if args.out_dir else None)
    doc["files"] = written

    code = 0
    if args.min_sqnr is not None and evaluation is not None:
        doc["min_sqnr"] = args.min_sqnr
        doc["passed"] = evaluation.passes(args.min_sqnr)
        if not doc["passed"]:
            code = 1
    if target_missed is not None:
        code = 1
    if out.json:
        out.doc(_clean(doc))
    else:
        _print_fuse(out, doc, evaluation)
        if target_missed is not None:
            out.note(
                f"--target-sqnr {args.target_sqnr} not reached: {target_missed.sqnr_db:.2f} dB "
                f"with every group that helped left float ({len(target_missed.chosen)}); "
                "the outputs hold that plan"
            )
        if code and args.min_sqnr is not None and not doc.get("passed", True):
            out.note(
                f"lowest output SQNR {evaluation.min_sqnr:.2f} dB is below --min-sqnr "  # type: ignore[union-attr]
                f"{args.min_sqnr}"
            )
    return code


def _write_set(contents: Mapping[Path, bytes], out_dir: Path | None) -> None:
    """Write the outputs all or nothing; an ``--out-dir`` created here goes if that fails."""
    created = out_dir is not None and not out_dir.exists()
    if out_dir is not None and contents:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CliError(f"cannot create output folder {out_dir}: {e.strerror or e}") from None
    try:
        write_files_atomic(contents)
    except BaseException:
        if created and out_dir is not None:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only when empty: nothing of the user's is removed
        raise


def _render_report(
    graph: Graph,
    plan: Any,
    result: Any,
    evaluation: Any,
    path: str,
    out: _Output,
) -> str | None:
    try:
        from .report import render_report
    except ImportError:  # pragma: no cover - report.py ships with the package
        out.note("the HTML report needs fusekit.report, which this installation lacks; skipped")
        return None
    return render_report(
        graph,
        plan,
        result=result,
        evaluation=evaluation.to_report() if evaluation is not None else None,
        title=f"fusekit: {Path(path).name}",
    )


def _print_fuse(out: _Output, doc: dict[str, Any], evaluation: Any) -> None:
    name = Path(doc["model"]).name + (" (bundled example)" if doc["bundled_example"] else "")
    out.line(f"fusekit {__version__}: {name}")
    out.line(
        f"  {doc['ops']} ops, {doc['quantized_ops']} quantized for {doc['platform']} "
        f"(dispatch {doc['dispatch']})"
    )
    out.line("  quantization points (Q/DQ pairs on activations + quantized parameters):")
    out.line(f"    {'initial plan':<22} {doc['points_initial']['total']:>6}")
    for p in doc["passes"]:
        delta = p["points_after"] - p["points_before"]
        d = f"{delta:+d}" if delta else "  0"
        refused = f", {p['refusals']} refused" if p["refusals"] else ""
        out.line(
            f"    {p['pass']:<22} {p['points_after']:>6}  ({d}; {p['changes']} changes{refused})"
        )
    lg = doc["largest_group"]
    out.line(
        f"  sharing groups: {doc['groups']}"
        + (f", largest {lg['slots']} slots (root {lg['root']})" if lg["slots"] else "")
    )
    eq = doc.get("equalization")
    if eq:
        out.line(
            f"  equalization: {eq['pairs']} Conv pairs balanced in {eq['iterations']} rounds "
            f"(largest channel range ratio {eq['largest_imbalance_before']:.3g} -> "
            f"{eq['largest_imbalance_after']:.3g}), {len(eq['refused'])} refused"
        )
    fg = doc.get("float_groups")
    if fg:
        gains = ", ".join(f"{g['root']} {g['gain_db']:+.2f} dB" for g in fg["groups"]) or "none"
        out.line(f"  left float (ranked on the calibration data): {gains}")
    ts = doc.get("target_sqnr")
    if ts:
        out.line(
            f"  --target-sqnr {ts['target_db']:g}: {ts['base_sqnr_db']} -> {ts['sqnr_db']} dB "
            f"({'reached' if ts['reached'] else 'NOT reached'}), {ts['pairs_given_up']} of "
            f"{ts['base_activation_pairs']} activation Q/DQ pairs given up, on {ts['data']}"
        )
        for st in ts["steps"]:
            mark = "float" if st["kept"] else "kept int8 (no gain)"
            out.line(
                f"    {st['root']}: {st['sqnr_db']} dB, {st['pairs_given_up']} pairs given up "
                f"so far [{', '.join(st['rules']) or 'its own quantizer'}] {mark}"
            )
    bc = doc.get("bias_correction")
    if bc:
        out.line(
            f"  bias correction: {bc['corrected']} biases corrected (largest shift "
            f"{bc['largest_shift']:.3g}), {len(bc['refused'])} ops refused"
        )
    cal = doc.get("calibration")
    if cal:
        tag = "  ** RANDOM DATA: scales say little about real inputs; pass --calib **"
        out.line(
            f"  calibration: {cal['samples']} samples of {cal['data']}, observer {cal['observer']}"
        )
        if cal["generated"]:
            out.line(tag)
        ex = doc["export"]
        out.line(
            f"  export: {ex['activation_pairs']} Q/DQ pairs on activations, "
            f"{ex['parameter_dqs']} quantized parameters, opset {ex['opset']}"
        )
        for note in ex["left_float"][:5]:
            out.line(f"    left float: {note}")
        if len(ex["left_float"]) > 5:
            out.line(f"    left float: ... {len(ex['left_float']) - 5} more (see --json)")
    if evaluation is not None:
        gen = " (generated)" if doc["evaluation"].get("generated") else ""
        out.line(
            f"  accuracy vs the float model, {evaluation.samples} samples{gen}, "
            f"{evaluation.kernels} kernels:"
        )
        for line in evaluation.table().splitlines():
            out.line(f"    {line}")
    if doc["files"]:
        out.line("  wrote:")
        for kind, f in doc["files"].items():
            out.line(f"    {kind:<7} {f}")
    elif not doc.get("calibration"):
        out.line("  (not calibrated: nothing exported)")


# --------------------------------------------------------------------------------------------
# explain


def _cmd_explain(args: argparse.Namespace) -> int:
    from .dispatch import init_plan
    from .passes import default_pipeline, explain

    out = _Output(args)
    graph = load(args.model)
    require_float_model(graph, args.model)
    plan0 = init_plan(graph, args.platform, dispatch=args.dispatch)
    result = default_pipeline(args.platform).run(graph, plan0)
    plan = result.plan
    slots: list[Slot] = []
    if args.op:
        if args.op not in graph.ops:
            raise UnknownOp(args.op, "model")
        slots = list(graph.op(args.op).slots())
        subject = f"op {args.op!r}"
    else:
        t = args.tensor
        idx = graph.index
        if t not in idx.tensor_id:
            raise CliError(f"no tensor named {t!r} in {args.model}")
        p = graph.producer(t)
        slots = ([p] if p is not None else []) + list(graph.consumers(t))
        subject = f"tensor {t!r}"
    entries: list[dict[str, Any]] = []
    for s in slots:
        if not plan.is_quantized(s.op):
            entries.append(
                {"slot": str(s), "quantized": False, "steps": [f"{s}: op {s.op} is not quantized"]}
            )
            continue
        why = explain(result, s)
        entries.append(
            {
                "slot": str(s),
                "quantized": True,
                "state": why.state.name,
                "root": str(why.root),
                "steps": list(why.steps),
            }
        )
    if out.json:
        out.doc(
            {"model": args.model, "platform": args.platform, "subject": subject, "slots": entries}
        )
        return 0
    out.line(f"{subject} in {args.model}, platform {args.platform}:")
    if not entries:
        out.line("  no op reads or writes it")
    for e in entries:
        out.line(f"  {e['slot']}:")
        for step in e["steps"]:
            out.line(f"    {step}")
    return 0


# --------------------------------------------------------------------------------------------
# platforms


def _cmd_platforms(args: argparse.Namespace) -> int:
    from ._platform_info import family, platform_diff, platform_summary
    from .errors import InvalidPlatform
    from .platforms import get_platform, platforms
    from .rulefile import platform_to_dict

    out = _Output(args)
    if args.diff:
        if not args.name:
            raise InvalidPlatform("--diff OTHER compares rule set NAME with OTHER: give NAME too")
        a, b = get_platform(args.name), get_platform(args.diff)
        diff = platform_diff(a, b)
        if out.json:
            out.doc({"first": a.name, "second": b.name, "differences": diff})
            return 0
        out.line(f"{a.name} -> {b.name}: {len(diff) or 'no'} difference(s)")
        for line in diff:
            out.line(f"  {line}")
        return 0
    if args.name:
        p = get_platform(args.name)
        d = platform_to_dict(p)
        if out.json:
            out.doc(d)
            return 0
        out.line(f"{p.name}: {p.description}")
        for key in (
            "quant_types",
            "activation_types",
            "activation_patterns",
            "passive_types",
            "quirks",
        ):
            values = d[key]
            out.line(f"  {key}: {', '.join(values) if values else '-'}")
        out.line(f"  activation: {d['activation']['policy']} {d['activation']['observer']}")
        for t, r in d["weights"].items():
            out.line(f"  weight of {t}: {r['policy']} axis {r['channel_axis']}")
        out.line(f"  bias: {d['bias']['state']} ({d['bias']['num_bits']} bit)")
        out.line(
            "  alignment: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in d["alignment"].items())
        )
        return 0
    names = platforms()
    if out.json:
        out.doc(
            [
                {
                    "name": n,
                    "description": get_platform(n).description,
                    "ppq": n.startswith("ppq"),
                    "family": family(get_platform(n)),
                    "summary": platform_summary(get_platform(n)),
                }
                for n in names
            ]
        )
        return 0
    w = max(len(n) for n in names)
    for n in names:
        out.line(f"{n:<{w}}  {platform_summary(get_platform(n))}")
    return 0


# --------------------------------------------------------------------------------------------
# evaluate / compare / check


def _cmd_kernels(args: argparse.Namespace) -> int:
    """``evaluate [FLOAT.onnx] QDQ.onnx --kernels``: onnxruntime's int8/float verdict per op."""
    from .kernels import kernel_report

    out = _Output(args)
    path = args.qdq or args.model
    load(path)  # validates the file and names it in errors
    report = kernel_report(path, level=args.level, threads=args.threads)
    if out.json:
        out.doc(_clean(report.to_dict()))
    else:
        out.line(report.table())
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .calibrate import load_data, random_data
    from .evaluate import evaluate, measure_latency

    if args.kernels == "report":
        return _cmd_kernels(args)
    if args.qdq is None:
        raise CliError(
            "evaluate needs FLOAT.onnx QDQ.onnx (or QDQ.onnx --kernels to list int8 kernels)"
        )
    out = _Output(args)
    _check_inputs_exist({"--data": args.data})
    graph = load(args.model)
    load(args.qdq)  # validates the file and names it in errors
    _check_shape_names(args, graph)
    if args.data:
        data: Any = load_data(args.data, graph, split="eval", limit=args.samples)
    else:
        data = random_data(graph, args.samples or 8, seed=args.seed, shapes=_shapes(args, False))
    with _running_on(data.label):
        ev = evaluate(graph, args.qdq, data, kernels=args.kernels, progress=_progress(args))
    lat = (
        measure_latency(graph, args.qdq, data, runs=args.runs, threads=args.threads)
        if args.latency
        else None
    )
    code = 1 if args.min_sqnr is not None and not ev.passes(args.min_sqnr) else 0
    if out.json:
        d = ev.to_dict()
        d.update(model=args.model, qdq=args.qdq, generated=data.generated)
        if lat is not None:
            d["latency"] = lat.to_dict()
        if args.min_sqnr is not None:
            d["min_sqnr"] = args.min_sqnr
            d["passed"] = code == 0
        out.doc(_clean(d))
    else:
        gen = "  ** RANDOM DATA **" if data.generated else ""
        out.line(f"{args.qdq} vs {args.model}: {ev.samples} samples of {data.label}{gen}")
        out.line(f"kernels: {ev.kernels}")
        out.line(ev.table())
        if lat is not None:
            out.line(lat.line())
        if code:
            out.note(f"lowest output SQNR {ev.min_sqnr:.2f} dB is below --min-sqnr {args.min_sqnr}")
    return code


def _cmd_compare(args: argparse.Namespace) -> int:
    from .evaluate import compare

    out = _Output(args)
    path, example = _model_arg(args)
    _check_inputs_exist({"--calib": args.calib, "--eval": args.eval})
    graph = load(path)
    require_float_model(graph, path)
    _check_shape_names(args, graph)
    calib = _calib_data(args, graph, example)
    evald = _eval_data(args, graph, example, calib)
    with _running_on(f"{calib.label} / {evald.label}"):
        cmp = compare(
            graph,
            args.platform,
            calib,
            evald,
            alignment_off=args.no_alignment,
            dispatch=args.dispatch,
            observer=args.observer,
            spread_threshold=args.spread_threshold,
            kernels=args.kernels,
            progress=_progress(args),
            latency_runs=args.runs if args.latency else 0,
            threads=args.threads,
        )
    fused = cmp["fused"].evaluation
    code = 1 if args.min_sqnr is not None and not fused.passes(args.min_sqnr) else 0
    sens = None
    if args.sensitivity:
        from .sensitivity import sensitivity

        with _running_on(evald.label):
            sens = sensitivity(
                graph,
                cmp["fused"].plan,
                evald,
                decisions=cmp.fused_decisions,
                kernels=args.kernels,
                progress=_progress(args),
            )
    if out.json:
        d = cmp.to_dict()
        d.update(model=path, calibration=calib.label, evaluation_data=evald.label)
        if sens is not None:
            d["sensitivity"] = sens.to_dict()
        if args.min_sqnr is not None:
            d.update(min_sqnr=args.min_sqnr, passed=code == 0)
        out.doc(_clean(d))
        return code
    out.line(f"{Path(path).name} on {cmp.platform}: calibrated on {calib.label}")
    if calib.generated:
        out.line("  ** RANDOM DATA: pass --calib for meaningful figures **")
    out.line(f"evaluated on {evald.label}, {fused.kernels} kernels")
    out.line(cmp.table())
    for v in cmp.variants:
        if v.latency is not None:
            out.line(f"{v.name}: {v.latency.line()}")
    flagged = cmp.flagged
    out.line(
        f"sharing groups of the fused plan: {len(cmp.groups)} with 2+ quantized tensors, "
        f"{len(flagged)} tie ranges {cmp.threshold:g}x apart or more"
    )
    for g in (flagged or cmp.groups)[: args.top]:
        mark = "!!" if g.flagged else "  "
        members = ", ".join(f"{t} {a:.3g}" for t, a in g.members[:4])
        more = f", +{len(g.members) - 4}" if len(g.members) > 4 else ""
        out.line(f"  {mark} {g.ratio:8.1f}x  root {g.root}: {members}{more}")
    if sens is not None:
        out.line(
            f"sensitivity: fused lowest SQNR {sens.base_sqnr_db:.2f} dB; recovered with one "
            f"group left float ({sens.sessions} sessions, {sens.runs} runs: every group on "
            f"{sens.screen_samples} sample(s), the best on all {sens.samples}):"
        )
        for gs in sens.groups[: args.top]:
            rules = ", ".join(gs.rules) or "its own quantizer"
            out.line(
                f"  {gs.gain_db:+7.2f} dB  root {gs.root} ({gs.pairs} Q/DQ pair(s)): "
                f"{', '.join(gs.tensors[:3])}{', ...' if len(gs.tensors) > 3 else ''} [{rules}]"
            )
    if code:
        out.note(f"fused lowest SQNR {fused.min_sqnr:.2f} dB is below --min-sqnr {args.min_sqnr}")
    return code


def _cmd_check(args: argparse.Namespace) -> int:
    from .dispatch import init_plan
    from .passes import default_pipeline

    try:
        from .laws import check
    except ImportError:  # pragma: no cover - laws.py ships with the package
        raise CliError("'check' needs fusekit.laws, which this installation lacks") from None
    out = _Output(args)
    _check_inputs_exist({"--plan": args.plan})
    graph = load(args.model)
    require_float_model(graph, args.model)
    if args.plan:
        from .plan_io import load_plan

        plan = load_plan(graph, args.plan)
        source = args.plan
    else:
        plan = default_pipeline(args.platform).run(graph, init_plan(graph, args.platform)).plan
        source = "the default pipeline (uncalibrated)"
    violations = check(graph, plan, args.platform)
    code = 1 if violations else 0
    if out.json:
        out.doc(
            {
                "model": args.model,
                "platform": args.platform,
                "plan": source,
                "violations": [
                    {
                        "law": v.law,
                        "slot": None if v.slot is None else str(v.slot),
                        "message": v.message,
                    }
                    for v in violations
                ],
            }
        )
        return code
    if violations:
        for v in violations:
            print(f"fusekit: {v}", file=sys.stderr)
        out.note(f"{len(violations)} violation(s) of the plan laws in {source}")
    else:
        out.line(f"{args.model}: plan from {source} keeps every law on {args.platform}")
    return code


# --------------------------------------------------------------------------------------------
# parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or human summary")
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )


def _platform_opts(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--platform",
        default=None if required else "trt_int8",
        required=required,
        help="rule set: a name (see 'fusekit platforms'; default trt_int8) or a rule file "
        "(.json or .toml, see docs/platforms.md)",
    )
    p.add_argument(
        "--dispatch",
        default="all",
        choices=("all", "ppq-conservative"),
        help="which ops are quantized (default all)",
    )


def _latency_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--latency",
        action="store_true",
        help="also time the float and the QDQ model in onnxruntime on this CPU, side by side",
    )
    p.add_argument("--runs", type=_positive, default=20, help="timed runs per model (default 20)")
    p.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="onnxruntime intra-op threads for --latency/--kernels (default 1)",
    )


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _data_opts(p: argparse.ArgumentParser, calib: bool = True, kernel_report: bool = False) -> None:
    if calib:
        p.add_argument(
            "--calib",
            metavar="DATA",
            help="calibration data: .npz, .npy or a folder of .npy (default: random inputs)",
        )
        p.add_argument(
            "--eval",
            metavar="DATA",
            help="evaluation data (default: the eval__* split of --calib, or fresh random inputs)",
        )
        p.add_argument(
            "--observer",
            choices=("minmax", "percentile", "entropy", "mse", "mean_minmax"),
            default=None,
            help="activation observer: min-max, 0.9999 percentile, entropy (TensorRT's KL "
            "threshold), mse (least squared quantization error) or mean_minmax (mean of each "
            "batch's min and max, NNCF's); default: the platform's rule for each op type",
        )
    p.add_argument(
        "--samples", type=_positive_int, default=None, help="number of samples (random: 8)"
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="seed of generated inputs, 0 or more (default 0)"
    )
    p.add_argument(
        "--input-shape",
        action="append",
        type=_parse_shape,
        metavar="NAME=D1,D2,..",
        help="shape of a generated input with dynamic dimensions (repeatable)",
    )
    if kernel_report:  # a bare --kernels lists the int8 kernels (no float model needed)
        p.add_argument(
            "--kernels",
            nargs="?",
            const="report",
            choices=("reference", "int8", "report"),
            default="reference",
            help="alone: list which ops onnxruntime's CPU provider runs as int8 kernels and why "
            "the others stay float; with a value: how the QDQ model runs when evaluated "
            "(reference, default, or int8)",
        )
    else:
        p.add_argument(
            "--kernels",
            choices=("reference", "int8"),
            default="reference",
            help="how the QDQ model runs when evaluated: every Q/DQ as written with float ops "
            "(reference, default) or onnxruntime's fused int8 kernels",
        )
    p.add_argument(
        "--min-sqnr",
        type=_finite_float,
        default=None,
        metavar="DB",
        help="exit 1 if an output's SQNR is below DB",
    )


# --------------------------------------------------------------------------------------------
# audit / fix (quantized models in)


def _cmd_audit(args: argparse.Namespace) -> int:
    """``audit QDQ.onnx --platform P``: the model's Q/DQ placement against the platform's."""
    from .audit import AuditResult, audit
    from .qimport import import_quantized

    out = _Output(args)
    if args.report:
        _check_outputs({"model": args.model}, {"report": Path(args.report)})
    got = import_quantized(args.model, restore_clamps=True)
    result = audit(
        got.graph, got.plan, args.platform, dangling=got.dangling, dispatch=args.dispatch
    )
    if args.kernels:  # onnxruntime's own verdict on the file, added to the findings
        from .audit import kernel_findings
        from .kernels import kernel_report

        extra = kernel_findings(kernel_report(args.model))
        result = AuditResult(result.platform, (*result.findings, *extra), result.expected)
    if args.report:  # the model's placement, findings highlighted, beside the platform's plan
        from ._util import write_bytes_atomic
        from .report import render_audit_report

        html_text = render_audit_report(got.graph, got.plan, result)
        write_bytes_atomic(Path(args.report), html_text.encode("utf-8"))
    if out.json:
        doc = result.to_json()
        doc["model"] = str(args.model)
        out.doc(_clean(doc))
    else:
        out.line(f"audit of {args.model} against {result.platform}:")
        for f in result.findings:
            out.line("  " + f.line())
        counts = ", ".join(f"{result.count(s)} {s}" for s in ("error", "warning", "info"))
        out.line(f"{len(result.findings)} finding(s): {counts}")
    return 1 if result.has_errors else 0


def _cmd_fix(args: argparse.Namespace) -> int:
    """``fix QDQ.onnx --platform P -o OUT.onnx``: re-place Q/DQ by the platform's plan."""
    from ._util import write_bytes_atomic
    from .export import build_qdq, count_qdq
    from .fix import fix_plan
    from .qimport import import_quantized

    out = _Output(args)
    target = Path(args.output)
    _check_outputs(
        {"model": args.model, "--calib": args.calib, "--float": args.float_model},
        {"qdq": target},
    )
    if args.float_model:
        load(args.float_model)  # validates the file before any work
    got = import_quantized(args.model, restore_clamps=True)
    data: Any = None
    if args.calib:
        from .calibrate import load_data

        data = load_data(args.calib, got.graph, limit=args.samples)
    result = fix_plan(got.graph, got.plan, args.platform, data=data, dispatch=args.dispatch)
    built = build_qdq(got.graph, result.plan)
    original = _read_model(args.model)
    before = count_qdq(original)
    after = count_qdq(built.model)
    doc: dict[str, Any] = {
        "model": str(args.model),
        "platform": args.platform,
        "output": str(target),
        "qdq_before": before,
        "qdq_after": after,
        "counts": result.counts(),
        "changes": [
            {
                "action": c.action,
                "tensor": c.tensor,
                "slot": str(c.slot) if c.slot else None,
                "detail": c.detail,
            }
            for c in result.changes
        ],
    }
    if args.float_model:
        from .calibrate import random_data
        from .evaluate import evaluate

        fg = load(args.float_model)
        eval_data = data if data is not None else random_data(fg, args.samples or 8, seed=args.seed)
        ev_before = evaluate(fg, original, eval_data)
        ev_after = evaluate(fg, built.model, eval_data)
        doc["sqnr_before"] = ev_before.min_sqnr
        doc["sqnr_after"] = ev_after.min_sqnr
    write_bytes_atomic(target, built.model.SerializeToString())
    if out.json:
        out.doc(_clean(doc))
        return 0
    out.line(f"fixed {args.model} for {args.platform} -> {target}")
    for c in result.changes:
        out.line("  " + c.line())
    out.line(
        f"Q/DQ: {before.get('QuantizeLinear', 0)} Q + {before.get('DequantizeLinear', 0)} DQ -> "
        f"{after.get('QuantizeLinear', 0)} Q + {after.get('DequantizeLinear', 0)} DQ; "
        + ", ".join(f"{n} {a}" for a, n in result.counts().items())
    )
    if args.float_model:
        out.line(
            f"min SQNR vs the float model: {doc['sqnr_before']:.2f} dB before, "
            f"{doc['sqnr_after']:.2f} dB after"
        )
    return 0


def _read_model(path: str) -> Any:
    from .onnx_io import _read

    return _read(path)[0]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(
        prog="fusekit",
        description="Decide where a quantized ONNX network really needs quantization.",
    )
    p.add_argument("--version", action="version", version=f"fusekit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    fuse = sub.add_parser(
        "fuse",
        help="plan, fuse, calibrate, export and evaluate a model (default: the bundled example)",
    )
    fuse.add_argument("model", nargs="?", help="ONNX file (default: the bundled example)")
    _platform_opts(fuse)
    _data_opts(fuse)
    fuse.add_argument("-o", "--output", metavar="OUT.onnx", help="write the QDQ model")
    fuse.add_argument("--plan", metavar="OUT.json", help="write the plan as JSON")
    fuse.add_argument("--ranges", metavar="OUT.json", help="write TensorRT dynamic ranges")
    fuse.add_argument("--report", metavar="OUT.html", help="write the HTML report")
    fuse.add_argument("--out-dir", metavar="DIR", help="write all four, with default names")
    fuse.add_argument(
        "--equalize",
        action="store_true",
        help="cross-layer equalization first: balance the channel ranges of Conv -> "
        "[BatchNormalization] -> [Relu] -> Conv pairs (the float model computes the same)",
    )
    fuse.add_argument(
        "--bias-correction",
        action="store_true",
        help="after calibration, fold each quantized Conv/Gemm's expected output shift from "
        "weight quantization into its bias",
    )
    fuse.add_argument(
        "--max-float-groups",
        type=int,
        default=0,
        metavar="N",
        help="leave float the N sharing groups whose float-ness recovers the most SQNR on the "
        "calibration data (ranked one group at a time, as 'compare --sensitivity')",
    )
    fuse.add_argument(
        "--target-sqnr",
        type=float,
        default=None,
        metavar="DB",
        help="leave the most harmful sharing groups float, greedily, until the lowest output "
        "SQNR on the evaluation data reaches DB (exit 1 if no choice gets there; the outputs "
        "then hold every group that helped)",
    )
    fuse.add_argument(
        "--no-calibrate",
        action="store_true",
        help="plan and fuse only (no calibration, export or evaluation)",
    )
    fuse.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="skip NaN/Inf in calibration data and quantized weights instead of refusing them",
    )
    _common(fuse)
    fuse.set_defaults(func=_cmd_fuse)

    ex = sub.add_parser("explain", help="why a tensor's or op's slots are (not) quantized")
    ex.add_argument("model", help="ONNX file")
    what = ex.add_mutually_exclusive_group(required=True)
    what.add_argument("--tensor", metavar="NAME", help="a tensor name")
    what.add_argument("--op", metavar="NAME", help="an op name")
    _platform_opts(ex)
    _common(ex)
    ex.set_defaults(func=_cmd_explain)

    pl = sub.add_parser("platforms", help="list the rule sets, or show one")
    pl.add_argument("name", nargs="?", help="a platform name or a rule file (.json/.toml)")
    pl.add_argument(
        "--diff", metavar="OTHER", help="what rule set OTHER does differently from NAME"
    )
    _common(pl)
    pl.set_defaults(func=_cmd_platforms)

    ev = sub.add_parser(
        "evaluate",
        help="accuracy of a QDQ model against its float model, or (--kernels) its int8 kernels",
    )
    ev.add_argument("model", help="the float ONNX model (with --kernels alone: the QDQ model)")
    ev.add_argument("qdq", nargs="?", help="the QDQ ONNX model")
    ev.add_argument("--data", metavar="DATA", help="evaluation data (default: random inputs)")
    _data_opts(ev, calib=False, kernel_report=True)
    ev.add_argument(
        "--level",
        choices=("extended", "all"),
        default="extended",
        help="onnxruntime optimization level read by --kernels (default extended)",
    )
    _latency_opts(ev)
    _common(ev)
    ev.set_defaults(func=_cmd_evaluate)

    cmp = sub.add_parser("compare", help="fused vs unfused: Q/DQ pairs, SQNR, group spreads")
    cmp.add_argument("model", nargs="?", help="ONNX file (default: the bundled example)")
    _platform_opts(cmp)
    _data_opts(cmp)
    cmp.add_argument(
        "--no-alignment", action="store_true", help="also run the fused pipeline without alignment"
    )
    cmp.add_argument(
        "--spread-threshold",
        type=float,
        default=16.0,
        metavar="X",
        help="flag groups whose members' ranges differ by X times or more (default 16)",
    )
    cmp.add_argument("--top", type=int, default=10, help="groups to list (default 10)")
    cmp.add_argument(
        "--sensitivity",
        action="store_true",
        help="rank the fused plan's groups by the SQNR recovered when only that group is left "
        "float (one export and onnxruntime session per group)",
    )
    _latency_opts(cmp)
    _common(cmp)
    cmp.set_defaults(func=_cmd_compare)

    ck = sub.add_parser("check", help="check a plan against the plan laws")
    ck.add_argument("model", help="ONNX file")
    _platform_opts(ck, required=True)
    ck.add_argument(
        "--plan", metavar="PLAN.json", help="a plan file (default: the default pipeline)"
    )
    _common(ck)
    ck.set_defaults(func=_cmd_check)

    au = sub.add_parser(
        "audit", help="a quantized model's Q/DQ placement against a platform's fusion rules"
    )
    au.add_argument("model", help="the QDQ ONNX model")
    _platform_opts(au, required=True)
    au.add_argument(
        "--kernels",
        action="store_true",
        help="add onnxruntime's verdict: computing ops it runs in float, Q/DQ it runs in float",
    )
    au.add_argument(
        "--report",
        metavar="R.html",
        help="write an HTML report: the model's placement with the findings highlighted, "
        "beside the platform's plan",
    )
    _common(au)
    au.set_defaults(func=_cmd_audit)

    fx = sub.add_parser(
        "fix", help="re-place a quantized model's Q/DQ by a platform's plan, keeping its scales"
    )
    fx.add_argument("model", help="the QDQ ONNX model")
    _platform_opts(fx, required=True)
    fx.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="the fixed model")
    fx.add_argument(
        "--calib", metavar="DATA", help="calibration data for the points the model lacks"
    )
    fx.add_argument(
        "--float",
        dest="float_model",
        metavar="FLOAT.onnx",
        help="the float model: report the SQNR of the original and the fixed model against it",
    )
    fx.add_argument("--samples", type=_positive_int, default=None, help="samples to use")
    fx.add_argument("--seed", type=_seed, default=0, help="seed of generated inputs (default 0)")
    _common(fx)
    fx.set_defaults(func=_cmd_fix)

    info = sub.add_parser("info", help="summarize a model (ops, op types, inputs, outputs)")
    info.add_argument("model", nargs="?", help="ONNX file (default: the bundled example)")
    _common(info)
    info.set_defaults(func=_cmd_info)
    return p


#: Where to report a bug (printed with exit code 3).
ISSUES_URL = "https://github.com/fusekit/fusekit/issues"


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception for the duration of a verb (main thread only).

    The default action kills the process at once, leaving the hidden temporary files of a
    write in progress; as an exception it unwinds through the same cleanup as Ctrl-C.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusekit`` console script; returns the exit code.

    0 ok, 1 a failed gate (``--min-sqnr``, ``check``), 2 bad input (one line on stderr), 3 an
    internal error (a bug), 130/143 SIGINT/SIGTERM, 141 stdout closed by its reader.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        with _sigterm_raises():
            _load_rule_files(args)
            code = int(args.func(args))
            sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
            return code
    except BrokenPipeError:
        # the reader went away (`fusekit platforms | head -1`): not an error of ours. Python
        # would report the failed flush of stdout at exit; point stdout at devnull instead
        # (the recipe of the `signal` module's documentation)
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141
    except FusekitError as e:
        if debug:
            raise
        _error(_one_line(e))
        return 2
    except MemoryError:
        if debug:
            raise
        _error("out of memory; try fewer samples (--samples) or smaller inputs (--input-shape)")
        return 2
    except OSError as e:
        if debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _error(f"{where}{e.strerror or e}")
        return 2
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("fusekit: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("fusekit: terminated", file=sys.stderr)
        return 143
    except Exception as e:
        if debug:
            raise
        frame = traceback.extract_tb(e.__traceback__)[-1]
        _error(
            f"internal error: {type(e).__name__}: {_one_line(e)} "
            f"(at {Path(frame.filename).name}:{frame.lineno}). This is a bug in fusekit "
            f"{__version__}; please report it at {ISSUES_URL} with the command line and the "
            "output of the same command with --debug"
        )
        return 3


def _is_rule_file(value: str) -> bool:
    """A ``--platform`` value naming a file (``.json``/``.toml``, or a path) instead of a name."""
    return Path(value).suffix.lower() in (".json", ".toml") or os.sep in value


def _load_rule_files(args: argparse.Namespace) -> None:
    """``--platform rules.json|toml`` (and ``platforms rules.toml``): a rule set from a file.

    The file is read with :func:`fusekit.load_platform` and registered for this run under its
    own ``name``, which every verb then uses as if it were built in (outputs are named after
    it). A file that reuses a built-in name with different rules is refused: its outputs would
    carry the built-in's name.
    """
    from .platforms import get_platform, platforms, register_platform
    from .rulefile import load_platform

    builtin = {n: get_platform(n) for n in platforms()}  # nothing else is registered yet
    for attr in ("platform", "name", "diff"):
        value = getattr(args, attr, None)
        if not isinstance(value, str) or not _is_rule_file(value):
            continue
        if attr in ("name", "diff") and args.func is not _cmd_platforms:
            continue
        p = load_platform(value)
        if p.name in builtin and builtin[p.name] != p:
            raise CliError(
                f"{value}: the rule set is named {p.name!r}, like a built-in platform, but "
                "its rules differ; give it a name of its own (its outputs carry the name)"
            )
        register_platform(p, replace=True)
        setattr(args, attr, p.name)


def _error(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"fusekit: error: {text}", file=sys.stderr)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
