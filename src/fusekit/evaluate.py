"""Accuracy: run the float model and its QDQ export in onnxruntime and compare the outputs.

:func:`evaluate` reports, per graph output, over all samples together:

* SQNR in dB, ``10 * log10(sum(ref**2) / sum((ref - q)**2))`` (the figure PPQ's accuracy
  reference uses; +inf when the outputs are identical),
* the cosine similarity of the flattened outputs,
* the largest absolute error.

:func:`compare` answers "what does fusion buy on this model": it runs the default pipeline with
and without fusion (and optionally without alignment), exports each, evaluates each, and for
every sharing group of the fused plan measures how far apart its members' calibrated ranges are
(a group that ties a tensor in pixels to a tensor of probabilities in [0, 1] rounds the
probabilities to zero).
"""

from __future__ import annotations

import math
import platform as _platform
import statistics
import time
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import numpy as np

from .calibrate import Calibration, CalibrationResult, collect_ranges
from .dispatch import init_plan
from .errors import InvalidData, ModelRunError
from .graph import Graph, Slot
from .onnx_io import ModelExtras, load, to_model
from .passes import PassiveParameters, Pipeline, PipelineResult, default_pipeline
from .platforms import FUSEKIT_PASSIVE, Platform, get_platform
from .quant import QuantPlan, QuantState, Visibility
from .runtime import (
    as_dataset,
    first_line,
    import_onnxruntime,
    model_bytes,
    model_label,
    progress_bar,
    run,
    session,
)

__all__ = [
    "KERNELS",
    "PASS_THROUGH",
    "Comparison",
    "Evaluation",
    "GroupSpread",
    "Latency",
    "OutputMetrics",
    "Variant",
    "compare",
    "cpu_name",
    "evaluate",
    "group_spreads",
    "measure_latency",
    "unquantized_inputs",
]


@attrs.frozen
class OutputMetrics:
    """How close one quantized output is to the float one, over all samples."""

    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite SQNR becomes the strings ``"inf"``/``"-inf"``)."""
        return {
            "name": self.name,
            "sqnr_db": _json_float(self.sqnr_db),
            "cosine": _json_float(self.cosine),
            "max_abs_error": _json_float(self.max_abs_error),
            "samples": self.samples,
        }


def _json_float(x: float) -> float | str:
    if math.isfinite(x):
        return round(x, 6)
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


@attrs.frozen
class Evaluation:
    """Per-output metrics of a QDQ model against its float model."""

    outputs: tuple[OutputMetrics, ...]
    samples: int
    data_label: str = ""
    kernels: str = "reference"

    def __getitem__(self, name: str) -> OutputMetrics:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    @property
    def min_sqnr(self) -> float:
        """The worst output's SQNR in dB; NaN if any output's is NaN (``min`` would hide it)."""
        values = [o.sqnr_db for o in self.outputs]
        if any(math.isnan(v) for v in values):
            return math.nan
        return min(values, default=math.inf)

    def passes(self, threshold: float) -> bool:
        """Whether every output's SQNR is a number at or above ``threshold`` dB.

        A NaN SQNR (NaN in the data or a NaN weight) fails: ``nan < threshold`` is False, so a
        plain comparison would let it pass. ``+inf`` (identical outputs) passes.
        """
        if math.isnan(threshold):
            raise InvalidData("the SQNR threshold is NaN; give a number of dB")
        return all(not math.isnan(o.sqnr_db) and o.sqnr_db >= threshold for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "samples": self.samples,
            "data": self.data_label,
            "kernels": self.kernels,
            "outputs": [o.to_dict() for o in self.outputs],
        }

    def to_report(self) -> dict[str, Any]:
        """The mapping :func:`fusekit.report.render_report` takes as ``evaluation``."""
        return {
            "outputs": {
                o.name: {"sqnr_db": o.sqnr_db, "cosine": o.cosine, "max_abs": o.max_abs_error}
                for o in self.outputs
            },
            "samples": self.samples,
            "data": self.data_label,
            "kernels": self.kernels,
        }

    def table(self) -> str:
        """A plain-text table, one line per output."""
        w = max([len(o.name) for o in self.outputs] + [6])
        lines = [f"{'output':<{w}}  {'SQNR dB':>8}  {'cosine':>8}  {'max |err|':>10}"]
        for o in self.outputs:
            lines.append(
                f"{o.name:<{w}}  {o.sqnr_db:>8.2f}  {o.cosine:>8.5f}  {o.max_abs_error:>10.4g}"
            )
        return "\n".join(lines)


class _Acc:
    __slots__ = ("dot", "err2", "max_err", "n", "q2", "ref2")

    def __init__(self) -> None:
        self.ref2 = self.err2 = self.q2 = self.dot = self.max_err = 0.0
        self.n = 0

    def add(self, ref: np.ndarray[Any, Any], q: np.ndarray[Any, Any]) -> None:
        r = np.asarray(ref, dtype=np.float64)
        x = np.asarray(q, dtype=np.float64)
        d = r - x
        self.ref2 += float(np.sum(r * r))
        self.q2 += float(np.sum(x * x))
        self.err2 += float(np.sum(d * d))
        self.dot += float(np.sum(r * x))
        if d.size:
            self.max_err = max(self.max_err, float(np.max(np.abs(d))))
        self.n += 1

    def metrics(self, name: str) -> OutputMetrics:
        if self.err2 == 0.0:
            sqnr = math.inf
        elif self.ref2 == 0.0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self.ref2 / self.err2)
        if self.ref2 > 0 and self.q2 > 0:
            cos = self.dot / math.sqrt(self.ref2 * self.q2)
        else:
            cos = 1.0 if self.ref2 == self.q2 else 0.0
        return OutputMetrics(name, sqnr, cos, self.max_err, self.n)


def _graph_of(model: Any) -> Graph:
    return model if isinstance(model, Graph) else load(model)


def _qdq_bytes(model: Any) -> tuple[bytes, str]:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model_bytes(model), "QDQ model"
    if isinstance(model, (bytes, bytearray)):
        return bytes(model), "QDQ model"
    g = load(model)  # a path: validates and names the file in errors
    base = g.extras.base_dir if isinstance(g.extras, ModelExtras) else None
    return model_bytes(to_model(g), base), str(model)


#: How :func:`evaluate` runs the QDQ model: ``"reference"`` executes every Q/DQ node as written
#: with float kernels in between (onnxruntime with graph optimizations off): the accuracy of
#: the quantization scheme itself, the same on every machine. ``"int8"`` lets onnxruntime fuse
#: Q/DQ groups into its integer kernels (its default), as an ORT CPU deployment runs; on x86
#: CPUs without VNNI those kernels multiply u8 x s8 pairs with 16-bit saturation, which can
#: cost many dB with full-range 8-bit weights.
KERNELS = ("reference", "int8")


def evaluate(
    float_graph: Any,
    qdq_model: Any,
    data: Any,
    *,
    kernels: str = "reference",
    progress: bool | None = None,
) -> Evaluation:
    """Compare ``qdq_model`` with ``float_graph`` on ``data``, output by output.

    ``float_graph`` is a :class:`~fusekit.Graph` or anything :func:`fusekit.load` reads;
    ``qdq_model`` a ``ModelProto``, bytes or a path. ``data`` is a path, a
    :class:`~fusekit.calibrate.Dataset` or an iterable of feeds (an ``.npz`` with ``eval__*``
    arrays uses those). ``kernels`` chooses how the QDQ model runs (see :data:`KERNELS`); the
    float model runs at the same onnxruntime optimization level, so a QDQ model without any
    Q/DQ compares as identical. The QDQ model must have the float model's output names.
    """
    if kernels not in KERNELS:
        raise InvalidData(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")
    graph = _graph_of(float_graph)
    base = graph.extras.base_dir if isinstance(graph.extras, ModelExtras) else None
    level = "none" if kernels == "reference" else "all"
    label = model_label(graph)
    ref_sess = session(model_bytes(to_model(graph), base), label, optimize=level)
    q_data, q_label = _qdq_bytes(qdq_model)
    q_sess = session(q_data, q_label, optimize=level)
    outputs = list(graph.outputs)
    q_outputs = {o.name for o in q_sess.get_outputs()}
    missing = [o for o in outputs if o not in q_outputs]
    if missing:
        raise InvalidData(
            f"{q_label} has no output(s) {', '.join(map(repr, missing))} of the float model"
        )
    ds = as_dataset(data, graph, split="eval")
    accs = {o: _Acc() for o in outputs}
    bar = progress_bar(progress, "evaluating", ds.length)
    n = 0
    try:
        for feed in ds:
            ref = run(ref_sess, outputs, feed, label, n)
            got = run(q_sess, outputs, feed, q_label, n)
            for o, r, q in zip(outputs, ref, got):
                if np.shape(r) != np.shape(q):
                    raise InvalidData(
                        f"output {o!r}: float shape {list(np.shape(r))} but QDQ shape "
                        f"{list(np.shape(q))} on sample {n}"
                    )
                accs[o].add(r, q)
            n += 1
            bar.step()
    finally:
        bar.close()
    if n == 0:
        raise InvalidData(f"{ds.label}: no evaluation samples")
    return Evaluation(tuple(accs[o].metrics(o) for o in outputs), n, ds.label, kernels)


# --------------------------------------------------------------------------------------------
# latency


def cpu_name() -> str:
    """The CPU model as the OS names it (``/proc/cpuinfo``), else what Python's platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine() or "unknown CPU"


@attrs.frozen
class Latency:
    """onnxruntime CPU latency of a float model and its QDQ export, measured side by side.

    Both sessions live in one process with the same thread count and optimization level (ORT's
    default, ``"all"``: what a deployment runs); after ``warmup`` runs each, the two models run
    alternately ``runs`` times on the same feed, so a busy machine slows both alike. Times are
    medians in milliseconds. ``int8_ops``/``computing_ops`` come from
    :func:`fusekit.kernels.kernel_report` on the QDQ model.
    """

    float_ms: float
    qdq_ms: float
    runs: int
    warmup: int
    threads: int
    cpu: str
    onnxruntime: str
    int8_ops: int
    computing_ops: int

    @property
    def speedup(self) -> float:
        """Float time over QDQ time: above 1 the export is faster than the float model."""
        return self.float_ms / self.qdq_ms if self.qdq_ms > 0 else math.inf

    @property
    def coverage(self) -> float:
        """Share of the Conv/ConvTranspose/MatMul/Gemm that run as int8 kernels."""
        return self.int8_ops / self.computing_ops if self.computing_ops else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "float_ms": _json_float(self.float_ms),
            "qdq_ms": _json_float(self.qdq_ms),
            "speedup": _json_float(self.speedup),
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "cpu": self.cpu,
            "onnxruntime": self.onnxruntime,
            "int8_ops": self.int8_ops,
            "computing_ops": self.computing_ops,
            "coverage": _json_float(self.coverage),
        }

    def line(self) -> str:
        """One line of text for the CLI."""
        return (
            f"latency: float {self.float_ms:.2f} ms, QDQ {self.qdq_ms:.2f} ms "
            f"({self.speedup:.2f}x); int8 kernels {self.int8_ops} of {self.computing_ops} "
            f"Conv/MatMul/Gemm ({100 * self.coverage:.0f}%); median of {self.runs} runs after "
            f"{self.warmup} warm-up, {self.threads} thread(s), onnxruntime {self.onnxruntime} "
            f"CPU, {self.cpu}"
        )


def _timed_session(data: bytes, label: str, threads: int) -> Any:
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.log_severity_level = 4  # FATAL only: fusekit reports ORT errors itself
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        raise ModelRunError(f"{label}: onnxruntime cannot load the model: {first_line(e)}") from e


def measure_latency(
    float_graph: Any,
    qdq_model: Any,
    data: Any,
    *,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 1,
) -> Latency:
    """Median onnxruntime CPU latency of ``float_graph`` and ``qdq_model`` on one sample.

    Arguments as for :func:`evaluate`; the first sample of ``data`` (evaluation split) is the
    feed. ``runs`` timed runs per model (alternating), after ``warmup`` untimed ones.
    """
    from .kernels import kernel_report

    if runs < 1 or warmup < 0 or threads < 1:
        raise InvalidData(
            f"latency needs runs >= 1, warmup >= 0, threads >= 1 (got {runs}, {warmup}, {threads})"
        )
    graph = _graph_of(float_graph)
    base = graph.extras.base_dir if isinstance(graph.extras, ModelExtras) else None
    f_label = graph.name or "float model"
    f_sess = _timed_session(model_bytes(to_model(graph), base), f_label, threads)
    q_data, q_label = _qdq_bytes(qdq_model)
    q_sess = _timed_session(q_data, q_label, threads)
    ds = as_dataset(data, graph, split="eval")
    feed = next(iter(ds), None)
    if feed is None:
        raise InvalidData(f"{ds.label}: no samples to time")
    sessions = ((f_sess, f_label), (q_sess, q_label))
    for _ in range(warmup):
        for sess, label in sessions:
            run(sess, None, feed, label, 0)
    times: tuple[list[float], list[float]] = ([], [])
    for k in range(runs):
        for (sess, label), acc in zip(sessions, times):
            t0 = time.perf_counter()
            run(sess, None, feed, label, k)
            acc.append(time.perf_counter() - t0)
    kr = kernel_report(q_data, threads=threads)
    return Latency(
        1e3 * statistics.median(times[0]),
        1e3 * statistics.median(times[1]),
        runs,
        warmup,
        threads,
        cpu_name(),
        str(import_onnxruntime().__version__),
        len(kr.int8_ops),
        len(kr.ops),
    )


# --------------------------------------------------------------------------------------------
# compare


@attrs.frozen
class GroupSpread:
    """The calibrated ranges of one sharing group's quantized tensors.

    ``members`` is ``((tensor, amax), ...)`` largest first; ``ratio`` the largest amax over
    the smallest, ``bits_lost`` its log2 (how many of the 8 bits the smallest member loses to
    the shared scale), ``flagged`` True when the ratio reaches the threshold.
    """

    root: Slot
    members: tuple[tuple[str, float], ...]
    ratio: float
    flagged: bool

    @property
    def bits_lost(self) -> float:
        """log2 of the ratio: bits of resolution the smallest member gives up."""
        return math.log2(self.ratio) if self.ratio > 0 and math.isfinite(self.ratio) else 99.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "root": str(self.root),
            "members": [{"tensor": t, "amax": _json_float(a)} for t, a in self.members],
            "ratio": _json_float(self.ratio),
            "bits_lost": _json_float(self.bits_lost),
            "flagged": self.flagged,
        }


def group_spreads(
    plan: QuantPlan,
    ranges: dict[str, float],
    threshold: float = 16.0,
) -> tuple[GroupSpread, ...]:
    """Spread of each sharing group's member ranges (``ranges``: tensor -> amax).

    Only members that quantize a tensor themselves count (ACTIVATED/PASSIVE, not INTERNAL,
    not constant): an OVERLAPPED member is fused on purpose and has no range of its own. Groups
    with fewer than two such tensors are left out. Sorted by ratio, largest first.
    """
    graph = plan.graph
    out: list[GroupSpread] = []
    for group in plan.groups(min_size=2):
        tensors: dict[str, float] = {}
        root = plan.root(next(iter(group)))
        for s in group:
            cfg = plan[s]
            if cfg.state not in QuantState.ACTIVE:
                continue
            if cfg.visibility == Visibility.INTERNAL:
                continue
            t = graph.tensor_of(s)
            if not t or graph.is_constant(t) or t not in ranges:
                continue
            tensors[t] = ranges[t]
        if len(tensors) < 2:
            continue
        amaxes = sorted(tensors.items(), key=lambda kv: (-kv[1], kv[0]))
        hi = amaxes[0][1]
        lo = amaxes[-1][1]
        ratio = math.inf if lo <= 0 else hi / lo
        out.append(GroupSpread(root, tuple(amaxes), ratio, ratio >= threshold))
    out.sort(key=lambda g: (-g.ratio if math.isfinite(g.ratio) else -math.inf, str(g.root)))
    return tuple(out)


@attrs.frozen
class Variant:
    """One way of quantizing the model in a comparison, exported and evaluated."""

    name: str
    plan: QuantPlan = attrs.field(repr=False)
    activation_pairs: int
    q_nodes: int
    dq_nodes: int
    evaluation: Evaluation
    latency: Latency | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = {
            "name": self.name,
            "activation_pairs": self.activation_pairs,
            "q_nodes": self.q_nodes,
            "dq_nodes": self.dq_nodes,
            "evaluation": self.evaluation.to_dict(),
        }
        if self.latency is not None:
            d["latency"] = self.latency.to_dict()
        return d


@attrs.frozen
class Comparison:
    """What :func:`compare` found: the variants, and the fused plan's group spreads."""

    platform: str
    variants: tuple[Variant, ...]
    groups: tuple[GroupSpread, ...]
    threshold: float
    #: the fused pipeline's decision log (what made each group; see fusekit.sensitivity)
    fused_decisions: tuple[Any, ...] = attrs.field(default=(), repr=False, eq=False)

    def __iter__(self) -> Iterator[Variant]:
        return iter(self.variants)

    def __getitem__(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def flagged(self) -> tuple[GroupSpread, ...]:
        """Groups whose members' ranges differ by at least the threshold."""
        return tuple(g for g in self.groups if g.flagged)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "platform": self.platform,
            "variants": [v.to_dict() for v in self.variants],
            "spread_threshold": self.threshold,
            "groups": [g.to_dict() for g in self.groups],
        }

    def table(self) -> str:
        """A plain-text table: one row per variant, SQNR per output."""
        outs = [o.name for o in self.variants[0].evaluation.outputs] if self.variants else []
        w = max([len(v.name) for v in self.variants] + [7])
        head = f"{'variant':<{w}}  {'Q/DQ pairs':>10}  " + "  ".join(
            f"{_short(o):>12}" for o in outs
        )
        lines = [head, " " * (w + 14) + "  ".join(f"{'SQNR dB':>12}" for _ in outs)]
        for v in self.variants:
            cells = "  ".join(f"{v.evaluation[o].sqnr_db:>12.2f}" for o in outs)
            lines.append(f"{v.name:<{w}}  {v.activation_pairs:>10}  {cells}")
        return "\n".join(lines)


def _short(name: str, n: int = 12) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1) :]


def _variant(
    name: str,
    graph: Graph,
    plan: QuantPlan,
    pipeline: Pipeline,
    eval_data: Any,
    kernels: str,
    progress: bool | None,
    latency_runs: int = 0,
    threads: int = 1,
) -> tuple[Variant, PipelineResult]:
    from .export import build_qdq

    res = pipeline.run(graph, plan)
    qdq = build_qdq(graph, res.plan)
    ev = evaluate(graph, qdq.model, eval_data, kernels=kernels, progress=progress)
    lat = (
        measure_latency(graph, qdq.model, eval_data, runs=latency_runs, threads=threads)
        if latency_runs > 0
        else None
    )
    v = Variant(name, res.plan, qdq.activation_pairs, qdq.q_nodes, qdq.dq_nodes, ev, lat)
    return v, res


def compare(
    graph: Graph,
    platform: Platform | str,
    calib_data: Any,
    eval_data: Any = None,
    *,
    alignment_off: bool = False,
    dispatch: Any = "all",
    observer: str | None = "minmax",
    spread_threshold: float = 16.0,
    kernels: str = "reference",
    progress: bool | None = None,
    latency_runs: int = 0,
    threads: int = 1,
) -> Comparison:
    """Quantize ``graph`` with and without fusion and measure what each costs.

    Variants: ``fused`` (the default pipeline: fusion, simplify, calibration, alignment,
    passive parameters), ``unfused`` (calibration and passive parameters only: every op
    quantizes its own inputs and outputs, as PPQ does with ``fusion=False``) and, with
    ``alignment_off``, ``fused, no alignment``. Each is calibrated on ``calib_data``, exported
    and evaluated on ``eval_data`` (default: ``calib_data``). ``groups`` lists the fused plan's
    sharing groups by the spread of their members' calibrated ranges; ``spread_threshold`` is
    the ratio from which a group is flagged (16 = the smallest member keeps 4 of its 8 bits).
    ``kernels`` is passed to :func:`evaluate`. With ``latency_runs`` > 0 each variant's export
    is also timed against the float model (:func:`measure_latency`, ``threads`` threads).
    """
    p = get_platform(platform)
    calib = as_dataset(calib_data, graph, split="calib")
    evald = calib if eval_data is None else as_dataset(eval_data, graph, split="eval")
    plan = init_plan(graph, p, dispatch=dispatch)
    cal = Calibration(calib, observer=observer, progress=progress)
    variants: list[Variant] = []
    timing = (latency_runs, threads)
    fused, fused_res = _variant(
        "fused",
        graph,
        plan,
        default_pipeline(p, calibration=cal),
        evald,
        kernels,
        progress,
        *timing,
    )
    variants.append(fused)
    unfused_pipe = Pipeline((cal, PassiveParameters(p)))
    variants.append(
        _variant("unfused", graph, plan, unfused_pipe, evald, kernels, progress, *timing)[0]
    )
    if alignment_off:
        pipe = default_pipeline(p, calibration=cal).without("alignment")
        variants.append(
            _variant("fused, no alignment", graph, plan, pipe, evald, kernels, progress, *timing)[0]
        )
    ranges: dict[str, float] = {}
    for r in fused_res.results:
        if isinstance(r, CalibrationResult):
            for (t, _obs, axis), rng in r.ranges.items():
                if axis is None:
                    ranges[t] = max(ranges.get(t, 0.0), rng.amax)
    missing = _group_tensors(fused.plan) - set(ranges)
    if missing:
        extra = collect_ranges(
            graph, {t: [("minmax", None)] for t in sorted(missing)}, calib, progress=progress
        )
        for (t, _, _), rng in extra.items():
            ranges[t] = rng.amax
    groups = group_spreads(fused.plan, ranges, spread_threshold)
    return Comparison(p.name, tuple(variants), groups, spread_threshold, fused_res.decisions)


def _group_tensors(plan: QuantPlan) -> set[str]:
    graph = plan.graph
    out: set[str] = set()
    for group in plan.groups(min_size=2):
        for s in group:
            cfg = plan[s]
            if cfg.state in QuantState.ACTIVE and (cfg.visibility != Visibility.INTERNAL):
                t = graph.tensor_of(s)
                if t and not graph.is_constant(t):
                    out.add(t)
    return out


#: Ops that move or select values without computing new ones: a value that passes through them
#: from a DequantizeLinear is still on its quantization grid.
PASS_THROUGH = FUSEKIT_PASSIVE | {"Concat", "Gather"}


def unquantized_inputs(
    model: Any,
    op_types: Iterable[str] = ("Conv", "ConvTranspose", "Gemm", "MatMul"),
    inputs: Iterable[int] = (0, 1),
) -> list[str]:
    """Inputs of computing ops in a QDQ model that do not read quantized values.

    For every node of ``op_types``, each listed input is traced back through
    :data:`PASS_THROUGH` ops; it counts as quantized when the trace ends at a
    DequantizeLinear. Returns ``"node|in|k"`` for each input that does not (PPQ 0.6.6's
    exports leave some Conv inputs like that, which makes its accuracy look better than a
    fully integer deployment would be).
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    kinds = set(op_types)
    wanted = tuple(inputs)
    out: list[str] = []
    for n in g.node:
        if n.op_type not in kinds:
            continue
        for k in wanted:
            if k >= len(n.input) or not n.input[k]:
                continue
            t = n.input[k]
            seen = 0
            p = producer.get(t)
            while p is not None and p.op_type in PASS_THROUGH and seen < len(g.node):
                p = producer.get(p.input[0]) if p.input else None
                seen += 1
            if p is None or p.op_type != "DequantizeLinear":
                out.append(f"{n.name or n.output[0]}|in|{k}")
    return out
