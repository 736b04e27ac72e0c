"""fusekit's performance suite (``make bench``): stages timed at 1k..1M ops against a floor.

For each size a generated model (``bench/generate.py``: ResNet, MobileNetV2, CSP-SiLU and
transformer blocks, deterministic by seed; cached in ``bench/models/``) is measured in its own
worker process, so that peak RSS is per size and one size's garbage does not slow the next:

* ``onnx.load`` and ``fusekit.load`` (ONNX file to graph value), then ``index``: the graph's
  producer/consumer index and its list arrays, built once per graph value on first use;
* ``init_plan`` and every pass of ``default_pipeline`` (no calibration), each pass on the
  previous pass's plan, and ``pipeline``: init_plan plus the whole pipeline, end to end, on a
  graph whose index exists (``pipeline_cold`` adds the index: a freshly loaded graph);
* the floor (``bench/floor.py``): the same decisions by a plain mutable implementation over
  lists and dicts, per stage, after checking that it gives every slot the same state and root
  as fusekit (sizes up to 100k);
* ``export_qdq`` of a plan calibrated by a cheap stand-in (every root calibration must cover
  gets scale 1), when ``fusekit.export.export_qdq`` exists; then ``import_quantized`` of that
  export and ``audit`` of the import (issue 11: within 2x ``pipeline``; also reported against
  ``load`` + ``pipeline``, the whole job on the float model);
* memory: peak RSS of the worker, and tracemalloc's count of the bytes held by every plan
  version of one pipeline run (init_plan's and each pass's) against the bytes held by the last
  version alone, both after the graph and its index exist (they are shared by every version
  and not counted).

Each time is the median of ``--repeat`` runs in the same process, as wall-clock seconds
(``time.perf_counter``) and CPU seconds of the process (``time.process_time``, less disturbed
when other jobs share the machine's two cores). The table shows medians in milliseconds; the
JSON file (``bench/results/bench-<time>.json``, and ``latest.json``) has every run, the ratios
fusekit/floor, fusekit.load/onnx.load and t(100k)/t(10k), and the issue's targets as
met/missed.

Usage: ``python bench/run.py [--sizes 1k,10k,50k,100k] [--platform trt_int8] [--repeat 5]``;
``--sizes 1m`` runs the million-op graph (minutes, several GiB).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform as pyplatform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

PASS_STAGES = (
    "epilogue_fusion",
    "activation_fusion",
    "composite_activation_fusion",
    "passive_fusion",
    "simplify",
    "alignment",
    "passive_parameters",
)
FLOOR_STAGES = dict(
    zip(
        ("init_plan", *PASS_STAGES),
        ("init", "epilogue", "activation", "composite", "passive", "simplify", "alignment",
         "parameters"),
        strict=True,
    )
)  # fmt: skip
TARGETS = {
    "pipeline_seconds_100k": 1.0,
    "pipeline_vs_floor": 4.0,
    "scaling_100k_over_10k": 12.0,
    "load_vs_onnx": 2.0,
    "versions_memory_ratio": 1.5,
    "import_audit_vs_pipeline": 2.0,  # issue 11
}


def parse_size(text: str) -> int:
    """``"10k"`` -> 10000, ``"1m"`` -> 1000000, ``"2500"`` -> 2500."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def model_path(n: int, seed: int) -> Path:
    """The generated model of ``n`` ops (written on first use)."""
    path = MODELS / (f"g{n}.onnx" if seed == 0 else f"g{n}_s{seed}.onnx")
    if not path.exists():
        import generate

        t = time.perf_counter()
        generate.save_model(generate.make_model(n, seed), path)
        print(f"  generated {path.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


# --------------------------------------------------------------------------------------------
# the worker: one size, one process


def _read_node_fields(model: Any) -> list[tuple[Any, ...]]:
    """Every node's name, op_type, domain, inputs and outputs: the least any importer reads.

    The cheapest reading measured (slices of the repeated fields, the collector paused as
    fusekit's readers pause it); the ``import+audit least`` row starts from it.
    """
    gc.disable()
    try:
        return [
            (n.name, n.op_type, n.domain, tuple(n.input[:]), tuple(n.output[:]), n)
            for n in model.graph.node
        ]
    finally:
        gc.enable()


def _build_from_fields(header: Any, fields: list[tuple[Any, ...]], inits: list[Any]) -> Any:
    """The float graph value from node fields read already (``fusekit.load``'s build alone)."""
    from fusekit._util import gc_paused
    from fusekit.onnx_io import build_graph_from_nodes

    with gc_paused():
        return build_graph_from_nodes(header, fields, inits, "bench", None)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


class Stages:
    """Runs per stage; ``summary()`` gives medians."""

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[float, float]]] = {}

    def add(self, stage: str, wall: float, cpu: float) -> None:
        self.runs.setdefault(stage, []).append((wall, cpu))

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            k: {
                "wall": statistics.median(w for w, _ in v),
                "cpu": statistics.median(c for _, c in v),
                "cpu_min": min(c for _, c in v),
                "runs": [[round(w, 6), round(c, 6)] for w, c in v],
            }
            for k, v in self.runs.items()
        }


def stand_in_calibration(graph: Any, plan: Any, platform: str) -> Any:
    """A plan calibrated by a stand-in: scale 1 for every root the calibration contract covers.

    INITIAL roots become ACTIVATED; PASSIVE_INIT roots with FOLLOW members become PASSIVE;
    per-channel roots get one scale per channel of their constant; every PASSIVE_INIT member of
    a now calibrated group becomes PASSIVE. Then PassiveParameters derives the biases.
    """
    import numpy as np

    from fusekit import LinkKind, PassiveParameters, QuantState

    ev = plan.evolver()
    ar = graph.arrays()
    parents = plan.parent_ids()
    followed = {parents[s] for s in range(len(parents)) if plan.link_kind_id(s) is LinkKind.FOLLOW}
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for sid, cfg in enumerate(plan.configs):
        if cfg is None or parents[sid] >= 0:
            continue
        if cfg.state == QuantState.INITIAL:
            state = QuantState.ACTIVATED
        elif cfg.state == QuantState.PASSIVE_INIT and sid in followed:
            state = QuantState.PASSIVE
        else:
            continue
        scale, offset = one, zero
        if cfg.policy.per_channel and cfg.channel_axis is not None:
            init = graph.initializers.get(ar.tensor_names[ar.slot_tensor[sid]])
            n = init.dims[cfg.channel_axis] if init is not None and init.dims else 1
            scale, offset = np.ones(n, np.float32), np.zeros(n, np.float32)
        ev.set_cfg(sid, cfg.with_scale(scale, offset).with_state(state))
    for sid, cfg in enumerate(plan.configs):
        if cfg is not None and cfg.state == QuantState.PASSIVE_INIT and parents[sid] >= 0:
            root = ev.cfg(ev.root(sid))
            if root.scale is not None:
                ev.set_cfg(sid, cfg.with_state(QuantState.PASSIVE))
    calibrated = ev.persistent()
    return PassiveParameters(platform).run(graph, calibrated).plan


def version_memory(graph: Any, platform: str, path: Path) -> dict[str, Any]:
    """Bytes held by every plan version of one pipeline run vs by its last version alone.

    tracemalloc counts the bytes allocated (and still alive) from the moment it starts: the
    graph, its index and arrays exist before, so only what the plans themselves hold is counted
    (vectors, configs, link integers). ``all`` keeps init_plan's plan and every pass's output
    plan (not the decision logs, measured separately as ``logs``); ``last`` drops all but the
    final plan. Structural sharing shows as ``all`` well below ``versions x last``.

    Every version also references the graph value (shared, never copied): ``graph_bytes`` is
    what tracemalloc counts for loading the graph and building its index and arrays (the
    protobuf objects the loader keeps for a lossless round trip live in C++ and are not
    counted), and ``ratio_with_graph`` compares graph + all versions with graph + last version.
    """
    import fusekit

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    other = fusekit.load(str(path))
    other.index, other.arrays()
    graph_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del other
    gc.collect()

    pipe = fusekit.default_pipeline(platform)
    pipe.run(graph, fusekit.init_plan(graph, platform))  # warm: caches, interned configs
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    plan = fusekit.init_plan(graph, platform)
    res = pipe.run(graph, plan)
    gc.collect()
    with_logs = tracemalloc.get_traced_memory()[0] - base
    plans = [plan, *(r.plan for r in res.results)]
    distinct = len({id(p) for p in plans})
    del res
    gc.collect()
    all_versions = tracemalloc.get_traced_memory()[0] - base
    last = plans[-1]
    del plans, plan
    gc.collect()
    one = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del last
    return {
        "versions": distinct,
        "all_bytes": all_versions,
        "last_bytes": one,
        "logs_bytes": with_logs - all_versions,
        "ratio": all_versions / one if one else None,
        "graph_bytes": graph_bytes,
        "ratio_with_graph": (graph_bytes + all_versions) / (graph_bytes + one),
        "method": "tracemalloc, bytes alive: every plan version kept vs the last one kept; "
        "graph and index allocated before tracing",
    }


def worker(n: int, args: argparse.Namespace) -> dict[str, Any]:
    import floor
    import onnx

    import fusekit

    path = model_path(n, args.seed)
    # small graphs run more often: a scheduling hiccup is a larger share of a short stage, and
    # the scaling ratios divide by these times
    repeat = args.repeat * 3 if n <= 20_000 else args.repeat
    repeat = repeat if n < 1_000_000 else max(1, min(args.repeat, 2))
    st = Stages()
    out: dict[str, Any] = {"ops": n, "file_bytes": path.stat().st_size, "repeat": repeat}

    for _ in range(repeat):
        model, w, c = _timed(lambda: onnx.load(str(path)))
        st.add("onnx_load", w, c)
        del model
        gc.collect()
    graphs = []
    for _ in range(repeat):
        g, w, c = _timed(lambda: fusekit.load(str(path)))
        st.add("load", w, c)
        graphs.append(g)
    for g in graphs:
        _, w, c = _timed(lambda g=g: (g.index, g.arrays()))
        st.add("index", w, c)
    g = graphs[-1]
    del graphs
    gc.collect()
    out["slots"] = g.index.n_slots

    for _ in range(repeat):  # PPQ's conservative dispatcher, next to the default dispatch
        _, w, c = _timed(lambda: fusekit.init_plan(g, args.platform, dispatch="ppq-conservative"))
        st.add("init_plan_ppq", w, c)
    pipe = fusekit.default_pipeline(args.platform)
    for _ in range(repeat):
        plan, w, c = _timed(lambda: fusekit.init_plan(g, args.platform))
        st.add("init_plan", w, c)
        for p in pipe.passes:
            res, w, c = _timed(lambda p=p, plan=plan: p.run(g, plan))
            st.add(p.name, w, c)
            plan = res.plan
        del plan, res
        res, w, c = _timed(lambda: pipe.run(g, fusekit.init_plan(g, args.platform)))
        st.add("pipeline", w, c)
    out["changes"] = sum(r.n_changes for r in res.results)
    out["refusals"] = sum(r.n_refusals for r in res.results)
    # work per pass (changes + refusals): the generator's block mix is not exactly the same at
    # every size, so a pass's work can grow faster than the op count
    out["decisions"] = {r.pass_name: r.n_changes + r.n_refusals for r in res.results}
    final = res.plan
    # a pass that changes nothing returns its input plan object
    again = pipe.run(g, final)
    out["rerun_same_object"] = all(r.plan is r.input_plan for r in again.results)
    del again

    fk_platform = fusekit.get_platform(args.platform)
    if not fk_platform.quirks:
        fl = Stages()
        proto = onnx.load(str(path))
        fg, w, c = _timed(lambda: floor.FloorGraph(proto))
        fl.add("graph", w, c)
        rules = floor.Rules(fk_platform)
        for _ in range(repeat):
            gc.disable()  # the floor allocates no garbage worth collecting; fusekit pauses too
            c0, w0 = time.process_time(), time.perf_counter()
            fplan, times = floor.run_stages(fg, rules)
            fl.add("pipeline", time.perf_counter() - w0, time.process_time() - c0)
            gc.enable()
            for name, (w, c) in zip(floor.STAGES, times, strict=True):
                fl.add(name, w, c)
        if n <= 100_000:
            problems = floor.compare(fg, fplan, final)
            out["floor_agrees"] = not problems
            out["floor_problems"] = problems[:20]
        out["floor"] = fl.summary()
        del proto, fg, fplan
    gc.collect()

    if not args.no_export:
        try:
            from fusekit.export import export_qdq
        except ImportError:
            export_qdq = None
        if export_qdq is not None:
            calibrated = stand_in_calibration(g, final, args.platform)
            for _ in range(max(1, min(repeat, 3))):
                model, w, c = _timed(lambda: export_qdq(g, calibrated))
                st.add("export_qdq", w, c)
            out["export_nodes"] = len(model.graph.node)
            # issue 11: a quantized model in: import its QDQ export, audit it
            from fusekit.audit import audit
            from fusekit.qimport import import_quantized

            for _ in range(max(1, min(repeat, 3))):
                got, w, c = _timed(lambda: import_quantized(model))
                st.add("import_quantized", w, c)
                _, w, c = _timed(lambda got=got: audit(got.graph, got.plan, args.platform))
                st.add("audit", w, c)
            # the least import + audit can cost in this design (docs/audit.md, "Speed"): any
            # importer reads every node's fields of the QDQ model and builds the float graph
            # value; the audit's pipeline needs the graph's index; then the pipeline itself.
            # Only the quantization-specific work (pairing, scales, the plan, the comparison)
            # is left out.
            for _ in range(max(1, min(repeat, 3))):
                _, w, c = _timed(lambda: _read_node_fields(model))
                st.add("least_read_qdq", w, c)
            float_model = onnx.load(str(path))
            fields = _read_node_fields(float_model)
            inits = list(float_model.graph.initializer)
            del float_model.graph.node[:], float_model.graph.initializer[:]
            for _ in range(max(1, min(repeat, 3))):
                _, w, c = _timed(lambda: _build_from_fields(float_model, fields, inits))
                st.add("least_build_float", w, c)
            del model, calibrated, got, float_model, fields, inits
            gc.collect()

    out["stages"] = st.summary()
    if not args.no_memory:
        out["version_memory"] = version_memory(g, args.platform, path)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


# --------------------------------------------------------------------------------------------
# the parent: sizes, ratios, table, JSON


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """fusekit/floor and load/onnx.load per size; t(big)/t(small) per stage across sizes."""
    out: dict[str, Any] = {"per_size": {}, "scaling": {}}
    for key, r in results.items():
        s = r["stages"]
        per: dict[str, Any] = {}
        if "onnx_load" in s:
            per["load_vs_onnx"] = {k: s["load"][k] / s["onnx_load"][k] for k in ("wall", "cpu")}
        if "import_quantized" in s and "audit" in s:  # issue 11: import + audit vs pipeline
            per["import_audit_vs_pipeline"] = {
                k: (s["import_quantized"][k] + s["audit"][k]) / s["pipeline"][k]
                for k in ("wall", "cpu")
            }
            # the user's whole job on the quantized model against the whole job on the float
            # model: import + audit vs fusekit.load of the float file + the pipeline
            per["import_audit_vs_load_pipeline"] = {
                k: (s["import_quantized"][k] + s["audit"][k]) / (s["load"][k] + s["pipeline"][k])
                for k in ("wall", "cpu")
            }
        if "least_read_qdq" in s:  # issue 11: the least import + audit can cost here
            per["import_audit_least_vs_pipeline"] = {
                k: (
                    s["least_read_qdq"][k]
                    + s["least_build_float"][k]
                    + s["index"][k]
                    + s["pipeline"][k]
                )
                / s["pipeline"][k]
                for k in ("wall", "cpu")
            }
        if "floor" in r:
            f = r["floor"]
            for stage in ("pipeline", *FLOOR_STAGES):
                fs = FLOOR_STAGES.get(stage, stage)
                if stage in s and fs in f and f[fs]["wall"] > 0:
                    per[f"{stage}_vs_floor"] = {
                        k: s[stage][k] / f[fs][k] for k in ("wall", "cpu") if f[fs][k] > 0
                    }
        out["per_size"][key] = per
    sizes = sorted(results, key=lambda k: results[k]["ops"])
    for a, b in itertools.pairwise(sizes):
        sa, sb = results[a]["stages"], results[b]["stages"]
        factor = results[b]["ops"] / results[a]["ops"]
        out["scaling"][f"{b}/{a}"] = {
            "size_factor": factor,
            **{k: sb[k]["cpu"] / sa[k]["cpu"] for k in sb if k in sa and sa[k]["cpu"] > 0},
        }
    if "10k" in results and "100k" in results:
        sa, sb = results["10k"]["stages"], results["100k"]["stages"]
        out["scaling"]["100k/10k"] = {
            "size_factor": 10.0,
            **{k: sb[k]["cpu"] / sa[k]["cpu"] for k in sb if k in sa and sa[k]["cpu"] > 0},
        }
        out["scaling_min_100k/10k"] = {
            k: sb[k]["cpu_min"] / sa[k]["cpu_min"]
            for k in sb
            if k in sa and sa[k].get("cpu_min") and "cpu_min" in sb[k]
        }
        da, db = results["10k"].get("decisions", {}), results["100k"].get("decisions", {})
        out["work_growth_100k/10k"] = {k: db[k] / da[k] for k in db if da.get(k)}
    return out


def targets(results: dict[str, Any], rat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    r100 = results.get("100k")
    if r100:
        s = r100["stages"]
        out["pipeline_100k_seconds"] = {
            "wall": s["pipeline"]["wall"],
            "cpu": s["pipeline"]["cpu"],
            "cold_wall": s["pipeline"]["wall"] + s["index"]["wall"],
            "target": TARGETS["pipeline_seconds_100k"],
            "met": s["pipeline"]["wall"] <= TARGETS["pipeline_seconds_100k"],
        }
        per = rat["per_size"]["100k"]
        if "pipeline_vs_floor" in per:
            v = per["pipeline_vs_floor"]
            out["pipeline_vs_floor_100k"] = {
                **v,
                "target": TARGETS["pipeline_vs_floor"],
                "met": v["wall"] <= TARGETS["pipeline_vs_floor"],
            }
        v = per["load_vs_onnx"]
        out["load_vs_onnx_100k"] = {
            **v,
            "target": TARGETS["load_vs_onnx"],
            "met": v["wall"] <= TARGETS["load_vs_onnx"],
        }
        if "import_audit_vs_pipeline" in per:  # issue 11: a quantized model in
            v = per["import_audit_vs_pipeline"]
            out["import_audit_vs_pipeline_100k"] = {
                **v,
                "target": TARGETS["import_audit_vs_pipeline"],
                "met": v["cpu"] <= TARGETS["import_audit_vs_pipeline"],
            }
            v = per.get("import_audit_least_vs_pipeline")
            if v is not None:  # informational: the least the target is measured against
                out["import_audit_least_vs_pipeline_100k"] = {
                    **v,
                    "target": TARGETS["import_audit_vs_pipeline"],
                    "met": v["cpu"] <= TARGETS["import_audit_vs_pipeline"],
                }
            v = per["import_audit_vs_load_pipeline"]  # informational: the whole jobs
            out["import_audit_vs_load_pipeline_100k"] = {
                **v,
                "target": TARGETS["import_audit_vs_pipeline"],
                "met": v["cpu"] <= TARGETS["import_audit_vs_pipeline"],
            }
        vm = r100.get("version_memory")
        if vm:
            out["versions_memory_100k"] = {
                "ratio": vm["ratio"],
                "all_mb": vm["all_bytes"] / 1e6,
                "last_mb": vm["last_bytes"] / 1e6,
                "ratio_with_graph": vm["ratio_with_graph"],
                "target": TARGETS["versions_memory_ratio"],
                "met": vm["ratio"] <= TARGETS["versions_memory_ratio"],
            }
    sc = rat["scaling"].get("100k/10k")
    if sc:
        worst = max((v, k) for k, v in sc.items() if k != "size_factor")
        fastest = rat.get("scaling_min_100k/10k", {})
        worst_fast = max(((v, k) for k, v in fastest.items()), default=(0.0, ""))
        out["scaling_100k_over_10k"] = {
            "worst_stage": worst[1],
            "worst": worst[0],
            "over_target": {
                k: round(v, 1)
                for k, v in sc.items()
                if k != "size_factor" and v > TARGETS["scaling_100k_over_10k"]
            },
            "worst_of_fastest_runs": {"stage": worst_fast[1], "ratio": worst_fast[0]},
            "target": TARGETS["scaling_100k_over_10k"],
            "met": worst[0] <= TARGETS["scaling_100k_over_10k"],
        }
    if "1M" in results:
        r = results["1M"]
        out["1M"] = {
            "completed": True,
            "peak_rss_gib": r["peak_rss_bytes"] / 2**30,
            "met": r["peak_rss_bytes"] <= 24 * 2**30,
        }
    return out


def _import_audit_ratio(r: dict[str, Any]) -> str:
    """(import_quantized + audit) / pipeline, CPU medians (issue 11's target: <= 2)."""
    s = r["stages"]
    if "audit" not in s:
        return "-"
    return f"{(s['import_quantized']['cpu'] + s['audit']['cpu']) / s['pipeline']['cpu']:.1f}x"


def _whole_job_ratio(r: dict[str, Any]) -> str:
    """(import_quantized + audit) / (load + pipeline), CPU medians: the whole job on the
    quantized model against the whole job on the float model (``load``: fusekit.load of the
    float file; ``import_quantized`` starts from the parsed QDQ ModelProto)."""
    s = r["stages"]
    if "audit" not in s:
        return "-"
    job = s["import_quantized"]["cpu"] + s["audit"]["cpu"]
    return f"{job / (s['load']['cpu'] + s['pipeline']['cpu']):.1f}x"


def _least_ratio(r: dict[str, Any]) -> str:
    """(QDQ node fields + float graph build + index + pipeline) / pipeline, CPU medians: what
    import + audit cost at the least in this design (issue 11's target sits at 2x)."""
    s = r["stages"]
    if "least_read_qdq" not in s:
        return "-"
    least = sum(s[k]["cpu"] for k in ("least_read_qdq", "least_build_float", "index"))
    return f"{(least + s['pipeline']['cpu']) / s['pipeline']['cpu']:.2f}x"


def table(results: dict[str, Any], rat: dict[str, Any]) -> str:
    sizes = sorted(results, key=lambda k: results[k]["ops"])
    stages = [
        "onnx_load",
        "load",
        "index",
        "init_plan",
        "init_plan_ppq",
        *PASS_STAGES,
        "pipeline",
        "export_qdq",
        "import_quantized",
        "audit",
        "least_read_qdq",
        "least_build_float",
    ]
    lines = []
    head = f"{'stage':<28}" + "".join(f"{s:>22}" for s in sizes)
    lines.append("median ms: fusekit wall / cpu   [fusekit/floor, cpu]")
    lines.append(head)
    for stage in stages:
        row = f"{stage:<28}"
        for s in sizes:
            st = results[s]["stages"].get(stage)
            if st is None:
                row += f"{'-':>22}"
                continue
            cell = f"{st['wall'] * 1e3:.0f}/{st['cpu'] * 1e3:.0f}"
            fr = rat["per_size"][s].get(f"{stage}_vs_floor")
            if fr and "cpu" in fr:
                cell += f" [{fr['cpu']:.1f}x]"
            row += f"{cell:>22}"
        lines.append(row)
    row = f"{'floor pipeline':<28}"
    for s in sizes:
        f = results[s].get("floor", {}).get("pipeline")
        cell = "-" if f is None else f"{f['wall'] * 1e3:.0f}/{f['cpu'] * 1e3:.0f}"
        row += f"{cell:>22}"
    lines.append(row)
    lines.append("")
    lines.append(f"{'per size':<28}" + "".join(f"{s:>22}" for s in sizes))
    extra = [
        ("slots", lambda r: f"{r['slots']}"),
        ("changes / refusals", lambda r: f"{r['changes']}/{r['refusals']}"),
        ("floor agrees", lambda r: str(r.get("floor_agrees", "-"))),
        ("import+audit / pipeline", _import_audit_ratio),
        ("import+audit / (load+pipe)", _whole_job_ratio),
        ("import+audit least / pipe", _least_ratio),
        ("rerun returns same plan", lambda r: str(r.get("rerun_same_object"))),
        ("peak RSS MiB", lambda r: f"{r['peak_rss_bytes'] / 2**20:.0f}"),
        (
            "versions: all/last MB",
            lambda r: (
                f"{r['version_memory']['all_bytes'] / 1e6:.1f}/"
                f"{r['version_memory']['last_bytes'] / 1e6:.1f}"
                f" ({r['version_memory']['ratio']:.2f}x)"
                if "version_memory" in r
                else "-"
            ),
        ),
    ]
    for name, fn in extra:
        lines.append(f"{name:<28}" + "".join(f"{fn(results[s]):>22}" for s in sizes))
    sc = rat["scaling"]
    work = rat.get("work_growth_100k/10k", {})
    fastest = rat.get("scaling_min_100k/10k", {})
    if sc:
        lines.append("")
        lines.append(
            "scaling: ratios of median cpu times (linear = size factor); 'fastest': of the "
            "fastest runs; 'work': of the decisions made"
        )
        keys = list(sc)
        lines.append(
            f"{'stage':<28}"
            + "".join(f"{k:>14}" for k in keys)
            + (f"{'fastest 100k/10k':>18}{'work 100k/10k':>15}" if fastest else "")
        )
        for stage in stages:
            if any(stage in sc[k] for k in keys):
                lines.append(
                    f"{stage:<28}"
                    + "".join(
                        f"{(f'{sc[k][stage]:.1f}' if stage in sc[k] else '-'):>14}" for k in keys
                    )
                    + (f"{fastest[stage]:>18.1f}" if stage in fastest else "")
                    + (f"{work[stage]:>15.1f}" if stage in work else "")
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1k,10k,50k,100k", help="comma list: 1k,10k,50k,100k,1m")
    ap.add_argument("--platform", default="trt_int8")
    ap.add_argument("--repeat", type=int, default=5, help="runs per stage (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc measurement")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        result = worker(args.worker, args)
        args.worker_out.write_text(json.dumps(result))
        return 0

    sizes = sorted(parse_size(s) for s in args.sizes.split(",") if s.strip())
    for n in sizes:
        model_path(n, args.seed)
    results: dict[str, Any] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    for n in sizes:
        tmp = args.out / f".worker-{label(n)}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(n)]
        cmd += ["--worker-out", str(tmp), "--platform", args.platform]
        cmd += ["--repeat", str(args.repeat), "--seed", str(args.seed)]
        cmd += ["--no-export"] * args.no_export + ["--no-memory"] * args.no_memory
        t = time.perf_counter()
        print(f"{label(n)}: running ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        results[label(n)] = json.loads(tmp.read_text())
        tmp.unlink()
        print(f"{label(n)}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rat = ratios(results)
    report = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "python": sys.version.split()[0],
            "machine": pyplatform.machine(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "platform": args.platform,
            "repeat": args.repeat,
            "seed": args.seed,
        },
        "sizes": results,
        "ratios": rat,
        "targets": targets(results, rat),
    }
    text = table(results, rat)
    print(text)
    print()
    for k, v in report["targets"].items():
        print(f"target {k}: {json.dumps(v)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}.json", "latest.json"):
        (args.out / name).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out / f'bench-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
