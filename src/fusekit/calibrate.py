"""Calibration: run the float model in onnxruntime and give every quantization root a scale.

:func:`calibrate` (and the pass form :class:`Calibration`, which slots into
:func:`fusekit.default_pipeline`) runs the *float* model in a real onnxruntime session whose
graph outputs are extended with every intermediate tensor the plan needs, over calibration
inputs. Statistics are streamed: a running min/max per tensor (or per channel), or a bounded
histogram (percentile, entropy and MSE observers), so memory depends on the model, never on the
number of samples.

What gets a scale follows PPQ's life cycle (and fusekit's calibration contract):

* every root slot in state INITIAL is observed on its own tensor and becomes ACTIVATED;
* a root in PASSIVE_INIT that has FOLLOW members (an alignment master waiting for its range)
  gets the union of its own tensor's range and its followers' ranges and becomes PASSIVE;
* every slot still PASSIVE_INIT whose root now has a scale becomes PASSIVE;
* OVERLAPPED slots are never observed: their root's tensor (e.g. the ReLU output, not the
  convolution output before it) is what gets calibrated;
* constant inputs (weights) are measured on the initializer values themselves, per channel
  when their policy is per-channel (``channel_axis``);
* biases and other derived parameters are left to :class:`fusekit.PassiveParameters`, which
  :func:`calibrate` runs afterwards by default.

Calibration data is an ``.npz`` file, a folder of ``.npy`` files, a single ``.npy`` file, or any
iterable of feed dicts (see :func:`load_data`); :func:`random_data` generates clearly labelled
random inputs from the model's input shapes when a user has none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from .errors import InvalidData, ModelRunError
from .graph import Graph
from .passes._core import FusionResult, Recorder
from .quant import (
    OBSERVER_MIN_SCALE,
    QuantPlan,
    QuantState,
    TensorQuantConfig,
    Visibility,
    check_plan_graph,
    dequantize_values,
    minmax_to_scale_offset,
    minmax_to_scale_offset_array,
    quantize_values,
)
from .runtime import (
    Dataset,
    Feed,
    InputSpec,
    as_dataset,
    augmented_session,
    input_specs,
    load_data,
    model_bytes,
    model_label,
    progress_bar,
    random_data,
    run,
    session,
)

__all__ = [
    "OBSERVERS",
    "OBSERVER_ALIASES",
    "Calibration",
    "CalibrationResult",
    "Dataset",
    "Feed",
    "InputSpec",
    "InvalidData",
    "ModelRunError",
    "Target",
    "TensorRange",
    "as_dataset",
    "calibrate",
    "calibration_targets",
    "check_finite_weights",
    "collect_ranges",
    "entropy_threshold",
    "input_specs",
    "load_data",
    "minmax_to_scale_offset_array",
    "model_bytes",
    "mse_threshold",
    "random_data",
    "session",
]

#: Observers :func:`calibrate` implements: ``minmax``, ``percentile`` (a quantile of the values),
#: ``entropy`` (TensorRT's KL-divergence threshold), ``mse`` (the range that minimizes the
#: expected quantization error) and ``mean_minmax`` (the mean over calibration batches of each
#: batch's min and max: NNCF's default for per-tensor activations). Other names in a config fall
#: back to ``minmax``; PPQ's ``kl`` is an alias of ``entropy``.
OBSERVERS = ("minmax", "percentile", "entropy", "mse", "mean_minmax")

#: Other spellings of an observer, as PPQ's configs write them.
OBSERVER_ALIASES = {"kl": "entropy"}


# --------------------------------------------------------------------------------------------
# observers


@attrs.frozen
class TensorRange:
    """What calibration measured on one tensor: the range it keeps and the raw extremes.

    ``lo``/``hi`` are floats for a per-tensor range, 1-D arrays for a per-channel one.
    ``min``/``max`` are the extremes seen (equal to lo/hi for min-max), ``samples`` the number
    of samples observed and ``observer`` which observer produced lo/hi.
    """

    lo: Any
    hi: Any
    min: Any
    max: Any
    samples: int
    observer: str

    @property
    def amax(self) -> float:
        """The largest magnitude the range keeps."""
        return float(max(np.max(np.abs(self.lo)), np.max(np.abs(self.hi))))


# Every observer's ``update`` returns True when the array held NaN or +-Inf (those values are
# never part of a range); ``empty`` is True when values were seen but none was finite, which
# :func:`collect_ranges` refuses rather than giving the tensor the minimum scale.


class _MinMax:
    __slots__ = ("hi", "lo", "n", "values")

    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf
        self.n = 0
        self.values = 0

    def update(self, x: np.ndarray[Any, Any]) -> bool:
        self.n += 1
        if x.size == 0:
            return False
        self.values += x.size
        lo, hi = float(np.min(x)), float(np.max(x))  # NaN propagates, Inf shows: no extra pass
        bad = not (math.isfinite(lo) and math.isfinite(hi))
        if bad:
            f = x[np.isfinite(x)]
            if f.size == 0:
                return True
            lo, hi = float(np.min(f)), float(np.max(f))
        self._add(lo, hi)
        return bad

    def _add(self, lo: float, hi: float) -> None:
        """Fold one update's finite extremes into the range."""
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)

    @property
    def empty(self) -> bool:
        return self.values > 0 and self.lo > self.hi

    def result(self) -> TensorRange:
        lo, hi = (self.lo, self.hi) if self.lo <= self.hi else (0.0, 0.0)
        return TensorRange(lo, hi, lo, hi, self.n, "minmax")


class _MeanMinMax(_MinMax):
    """The mean over updates (calibration batches) of each batch's min and max.

    NNCF's default range for a per-tensor activation (``MEAN_MINMAX``): a rare extreme batch
    widens the range by its share of the batches only, so the common values keep more levels
    (measured in docs/accuracy.md: it wins on some models and loses on others). Streaming: two
    running sums. A batch without finite values adds nothing to the means.
    """

    __slots__ = ("batches", "sum_hi", "sum_lo")

    def __init__(self) -> None:
        super().__init__()
        self.sum_lo = 0.0
        self.sum_hi = 0.0
        self.batches = 0

    def _add(self, lo: float, hi: float) -> None:
        super()._add(lo, hi)
        self.sum_lo += lo
        self.sum_hi += hi
        self.batches += 1

    def result(self) -> TensorRange:
        r = super().result()
        if not self.batches:
            return TensorRange(r.lo, r.hi, r.min, r.max, r.samples, "mean_minmax")
        lo, hi = self.sum_lo / self.batches, self.sum_hi / self.batches
        return TensorRange(lo, hi, r.min, r.max, r.samples, "mean_minmax")


class _ChannelMinMax:
    __slots__ = ("axis", "hi", "lo", "n", "values")

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.lo: np.ndarray[Any, Any] | None = None
        self.hi: np.ndarray[Any, Any] | None = None
        self.n = 0
        self.values = 0

    def update(self, x: np.ndarray[Any, Any]) -> bool:
        self.n += 1
        axis = self.axis if self.axis >= 0 else x.ndim + self.axis
        if not 0 <= axis < x.ndim:
            raise InvalidData(f"channel axis {self.axis} does not exist in a rank-{x.ndim} tensor")
        m = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(np.float64)
        self.values += m.size
        finite = np.isfinite(m)
        bad = not bool(finite.all())
        if m.shape[1] == 0:
            lo = np.full(m.shape[0], np.inf)
            hi = np.full(m.shape[0], -np.inf)
        elif bad:  # a channel without finite values keeps lo > hi, which empty reports
            lo = np.where(finite, m, np.inf).min(axis=1)
            hi = np.where(finite, m, -np.inf).max(axis=1)
        else:
            lo, hi = m.min(axis=1), m.max(axis=1)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        elif self.lo.shape != lo.shape:
            raise InvalidData(
                f"the number of channels changed between samples ({self.lo.size} -> {lo.size})"
            )
        else:
            self.lo = np.minimum(self.lo, lo)
            self.hi = np.maximum(self.hi, hi)
        return bad

    @property
    def empty(self) -> bool:
        """True if some channel had values but none of them finite."""
        if self.lo is None or self.hi is None or not self.values:
            return False
        return bool(np.any(self.lo > self.hi))

    def result(self) -> TensorRange:
        lo = self.lo if self.lo is not None else np.zeros(0)
        hi = self.hi if self.hi is not None else np.zeros(0)
        unseen = lo > hi  # channels of size 0: no values, no range
        if np.any(unseen):
            lo, hi = np.where(unseen, 0.0, lo), np.where(unseen, 0.0, hi)
        return TensorRange(lo, hi, lo, hi, self.n, "minmax")


class _Histogram:
    """A signed histogram over ``[-limit, limit]`` that doubles its range as data grows.

    Doubling merges neighbouring bins pairwise, so the histogram stays exact at its current
    resolution and its size never changes: memory per tensor is ``2 * bins`` counters whatever
    the number of samples. Quantiles are read at bin edges, on the safe side (the kept range is
    never narrower than the true quantile by more than one bin).
    """

    __slots__ = ("bins", "counts", "hi", "limit", "lo", "n", "percentile", "values")

    #: Start the range at a power of two. Doubling then always ends on the same limit as one
    #: histogram of all the data at once, with the same bin edges: streaming == one-shot,
    #: exactly. (The percentile observer predates this and keeps its data-fitted start.)
    POW2_LIMIT = False

    def __init__(self, percentile: float, bins: int) -> None:
        self.percentile = percentile
        self.bins = bins + (bins % 2)
        self.counts: np.ndarray[Any, Any] | None = None
        self.limit = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.n = 0
        self.values = 0

    @property
    def empty(self) -> bool:
        return self.values > 0 and self.counts is None

    def update(self, x: np.ndarray[Any, Any]) -> bool:
        self.n += 1
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.size == 0:
            return False
        self.values += x.size
        bad = not np.all(np.isfinite(x))
        if bad:
            x = x[np.isfinite(x)]
            if x.size == 0:
                return True
        lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        m = max(abs(lo), abs(hi))
        nb = 2 * self.bins
        if self.counts is None:
            self.counts = np.zeros(nb, dtype=np.int64)
            self.limit = m if m > 0 else OBSERVER_MIN_SCALE
            if self.POW2_LIMIT:
                self.limit = 2.0 ** math.ceil(math.log2(self.limit))
        while m > self.limit:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.zeros(nb, dtype=np.int64)
            self.counts[self.bins // 2 : self.bins // 2 + self.bins] = merged
            self.limit *= 2.0
        idx = ((x + self.limit) * (nb / (2.0 * self.limit))).astype(np.int64)
        np.clip(idx, 0, nb - 1, out=idx)
        self.counts += np.bincount(idx, minlength=nb)
        return bad

    def result(self) -> TensorRange:
        if self.counts is None:
            return TensorRange(0.0, 0.0, 0.0, 0.0, self.n, "percentile")
        cum = np.cumsum(self.counts)
        total = float(cum[-1])
        width = 2.0 * self.limit / (2 * self.bins)
        k_hi = int(np.searchsorted(cum, self.percentile * total, side="left"))
        k_lo = int(np.searchsorted(cum, (1.0 - self.percentile) * total, side="left"))
        hi = min(-self.limit + (k_hi + 1) * width, self.hi)
        lo = max(-self.limit + k_lo * width, self.lo)
        return TensorRange(lo, hi, self.lo, self.hi, self.n, "percentile")


class _AbsHistogram(_Histogram):
    """A streaming histogram read as a symmetric threshold ``T`` on ``|x|``.

    The signed histogram folds into ``bins`` bins of ``|x|`` over ``[0, limit]``; subclasses
    pick ``T`` and the kept range is ``[max(min, -T), min(max, T)]`` (a one-sided tensor, such
    as a ReLU output, keeps its side). Exact zeros are counted apart: zero is on every
    quantization grid, so they cost no rounding error (a ReLU output is mostly zeros).
    """

    __slots__ = ("zeros",)
    POW2_LIMIT = True
    NAME = "histogram"

    def __init__(self, percentile: float, bins: int) -> None:
        super().__init__(percentile, bins)
        self.zeros = 0

    def update(self, x: np.ndarray[Any, Any]) -> bool:
        bad = super().update(x)
        a = np.asarray(x)
        self.zeros += int(np.count_nonzero(a == 0))
        return bad

    def folded(self) -> tuple[np.ndarray[Any, Any], float]:
        """``(counts of |x| per bin over [0, limit], bin width)``, exact zeros removed."""
        assert self.counts is not None
        half = self.bins
        counts = self.counts[half:].astype(np.float64)
        counts += self.counts[:half][::-1]
        counts[0] = max(counts[0] - self.zeros, 0.0)
        return counts, self.limit / half

    def threshold(self, counts: np.ndarray[Any, Any], width: float) -> float:
        raise NotImplementedError

    def result(self) -> TensorRange:
        if self.counts is None:
            return TensorRange(0.0, 0.0, 0.0, 0.0, self.n, self.NAME)
        counts, width = self.folded()
        if not counts.any():  # only zeros: nothing to clip
            t = max(abs(self.lo), abs(self.hi))
        else:
            t = self.threshold(counts, width)
        lo = max(self.lo, -t) if self.lo < 0 else self.lo
        hi = min(self.hi, t) if self.hi > 0 else self.hi
        return TensorRange(lo, hi, self.lo, self.hi, self.n, self.NAME)


#: Quantized levels on one side of zero for the entropy calibrator (TensorRT's 128) and the
#: largest level of the int8 grid the MSE search assumes (a symmetric int8 grid: 127 steps).
ENTROPY_LEVELS = 128
MSE_LEVELS = 127


#: The largest share of values the entropy calibrator may clip (see :func:`entropy_threshold`).
ENTROPY_MAX_CLIPPED = 1e-5


def entropy_threshold(
    counts: np.ndarray[Any, Any],
    width: float,
    levels: int = ENTROPY_LEVELS,
    max_clipped: float = ENTROPY_MAX_CLIPPED,
) -> float:
    """The ``|x|`` threshold whose ``levels``-level quantization loses the least information.

    TensorRT's entropy calibration: for every candidate threshold ``i`` bins wide (from
    ``levels`` to all bins), the reference distribution P is the histogram cut at ``i`` with
    the clipped mass added to its last bin; Q merges the first ``i`` bins into ``levels``
    groups and spreads each group's mass evenly over its non-empty bins. The threshold with
    the smallest KL(P || Q) wins. Returns the upper edge of the chosen bin.

    One guard TensorRT lacks: a threshold may clip at most ``max_clipped`` of the values.
    On a tensor with no mass near zero (a sigmoid output in [0.2, 0.8], a softmax over two
    classes) the normalized divergence cannot see a whole mode folded into the last bin and
    picks a threshold just above the lowest value: the tensor collapses to one level. Measured
    on the shared accuracy data, unguarded entropy lost 10-20 dB on four of six models. The
    bound is small (1e-5) because the rare large values can be the signal: a recognizer's
    softmax holds one near-1 probability per 6625 classes, and a 1e-3 bound clipped them all.
    """
    c = np.asarray(counts, dtype=np.float64)
    n = c.size
    nz = np.nonzero(c)[0]
    if nz.size == 0:
        return 0.0
    last = int(nz[-1]) + 1
    if last <= levels:  # everything fits in ``levels`` bins: no clipping can help
        return last * width
    total_tail = np.concatenate([np.cumsum(c[::-1])[::-1], [0.0]])
    allowed = max_clipped * total_tail[0]
    best_i, best_kl = last, math.inf
    for i in range(levels, min(n, last) + 1):
        if total_tail[i] > allowed:
            continue
        p = c[:i].copy()
        p[i - 1] += total_tail[i]
        group = (np.arange(i) * levels) // i
        used = c[:i] > 0
        gsum = np.bincount(group, weights=c[:i], minlength=levels)
        gcnt = np.bincount(group, weights=used, minlength=levels)
        q = np.where(used, gsum[group] / np.maximum(gcnt[group], 1.0), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps <= 0 or qs <= 0:
            continue
        p /= ps
        q /= qs
        mask = p > 0
        # a bin P has and Q lacks (the clipped mass landing on an empty last bin): smoothed,
        # as TensorRT does, so the divergence stays finite but large
        qm = np.maximum(q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * width


def mse_threshold(counts: np.ndarray[Any, Any], width: float, levels: int = MSE_LEVELS) -> float:
    """The ``|x|`` threshold ``T`` minimizing the expected squared error of quantizing ``|x|``.

    Values under ``T`` are rounded to a grid of step ``T / levels`` (error ``step**2 / 12``
    each, the uniform rounding model); values over it are clipped (error ``(|x| - T)**2``,
    at the bin centre). Every bin edge is a candidate; the sums are prefix sums, so the
    search is linear in the number of bins.
    """
    c = np.asarray(counts, dtype=np.float64)
    n = c.size
    if not c.any():
        return 0.0
    centers = (np.arange(n) + 0.5) * width
    t = np.arange(1, n + 1) * width  # candidate k keeps bins [0, k)
    inside = np.cumsum(c)
    # tails over bins >= k: counts, sum of centres, sum of squared centres
    s0 = np.concatenate([np.cumsum(c[::-1])[::-1][1:], [0.0]])
    s1 = np.concatenate([np.cumsum((c * centers)[::-1])[::-1][1:], [0.0]])
    s2 = np.concatenate([np.cumsum((c * centers**2)[::-1])[::-1][1:], [0.0]])
    clip = s2 - 2.0 * t * s1 + t**2 * s0
    rounding = inside * (t / levels) ** 2 / 12.0
    err = clip + rounding
    k = int(np.argmin(err))
    return float(t[k])


class _Entropy(_AbsHistogram):
    """TensorRT's entropy calibrator over the streaming histogram (:func:`entropy_threshold`)."""

    __slots__ = ()
    NAME = "entropy"

    def threshold(self, counts: np.ndarray[Any, Any], width: float) -> float:
        return entropy_threshold(counts, width)


class _Mse(_AbsHistogram):
    """The MSE-minimizing range over the streaming histogram (see :func:`mse_threshold`)."""

    __slots__ = ()
    NAME = "mse"

    def threshold(self, counts: np.ndarray[Any, Any], width: float) -> float:
        return mse_threshold(counts, width)


class _ChannelHistograms:
    """One streaming histogram observer per channel of ``axis`` (per-channel activations)."""

    __slots__ = ("axis", "bins", "factory", "hists", "n", "percentile")

    def __init__(self, factory: type[_Histogram], axis: int, percentile: float, bins: int):
        self.factory = factory
        self.axis = axis
        self.percentile = percentile
        self.bins = bins
        self.hists: list[_Histogram] | None = None
        self.n = 0

    def update(self, x: np.ndarray[Any, Any]) -> bool:
        self.n += 1
        axis = self.axis if self.axis >= 0 else x.ndim + self.axis
        if not 0 <= axis < x.ndim:
            raise InvalidData(f"channel axis {self.axis} does not exist in a rank-{x.ndim} tensor")
        m = np.moveaxis(np.asarray(x), axis, 0).reshape(x.shape[axis], -1)
        if self.hists is None:
            self.hists = [self.factory(self.percentile, self.bins) for _ in range(m.shape[0])]
        elif len(self.hists) != m.shape[0]:
            raise InvalidData(
                f"the number of channels changed between samples ({len(self.hists)} -> "
                f"{m.shape[0]})"
            )
        bad = False
        for h, row in zip(self.hists, m):
            bad = h.update(row) or bad
        return bad

    @property
    def empty(self) -> bool:
        return self.hists is not None and any(h.empty for h in self.hists)

    def result(self) -> TensorRange:
        parts = [h.result() for h in self.hists or []]
        name = parts[0].observer if parts else "minmax"

        def col(field: str) -> np.ndarray[Any, Any]:
            return np.asarray([float(getattr(r, field)) for r in parts], dtype=np.float64)

        return TensorRange(col("lo"), col("hi"), col("min"), col("max"), self.n, name)


#: Histogram observers by name (minmax is not a histogram; per-channel ranges are min-max).
_HISTOGRAMS: dict[str, type[_Histogram]] = {
    "percentile": _Histogram,
    "entropy": _Entropy,
    "mse": _Mse,
}


def _observer_name(cfg: TensorQuantConfig, forced: str | None) -> str:
    name = (forced or cfg.observer or "minmax").lower()
    name = OBSERVER_ALIASES.get(name, name)
    return name if name in OBSERVERS else "minmax"


def collect_ranges(
    graph: Graph,
    tensors: Mapping[str, Iterable[tuple[str, int | None]]],
    data: Any,
    *,
    percentile: float = 0.9999,
    bins: int = 2048,
    progress: bool | None = None,
    initializers: Mapping[str, np.ndarray[Any, Any]] | None = None,
    allow_nonfinite: bool = False,
) -> dict[tuple[str, str, int | None], TensorRange]:
    """Run the float model over ``data`` and measure the requested tensors.

    ``tensors`` maps a tensor name to the observations wanted on it, each
    ``(observer, channel_axis)`` with observer one of :data:`OBSERVERS` and
    ``channel_axis`` None for a per-tensor range. Initializers are measured on their values;
    every other tensor is added as an output of the float model and streamed through the
    observers, one sample at a time. ``initializers`` replaces initializer values in the model
    that runs (e.g. weights already quantized). Returns ``{(tensor, observer, axis):
    TensorRange}``; ``data`` is only read when some tensor is not an initializer.

    NaN or +-Inf in the data (naming file, input and sample) or in a measured initializer, and
    NaN in a tensor the model computes, raise :class:`InvalidData`: a range that silently drops
    them describes data the network will not see. (+-Inf the model itself computes, such as an
    attention mask's -inf, are left out of the range: QuantizeLinear saturates them.)
    ``allow_nonfinite`` skips all such values instead.
    A tensor with no finite value at all is refused either way (it has no range; 0.1 gave it
    the minimum scale).
    """
    wanted: dict[tuple[str, str, int | None], Any] = {}
    for t, specs in tensors.items():
        for obs, axis in specs:
            key = (t, obs, axis)
            if key in wanted:
                continue
            if axis is not None and obs in _HISTOGRAMS:
                wanted[key] = _ChannelHistograms(_HISTOGRAMS[obs], axis, percentile, bins)
            elif axis is not None:  # per channel, mean_minmax too (NNCF: min-max per channel)
                wanted[key] = _ChannelMinMax(axis)
            elif obs in _HISTOGRAMS:
                wanted[key] = _HISTOGRAMS[obs](percentile, bins)
            elif obs == "mean_minmax":
                wanted[key] = _MeanMinMax()
            else:
                wanted[key] = _MinMax()
    by_tensor: dict[str, list[Any]] = {}
    for (t, _, _), ob in wanted.items():
        by_tensor.setdefault(t, []).append(ob)
    for t in list(by_tensor):
        init = graph.initializers.get(t)
        if init is not None:
            arr = np.asarray(init.array(), dtype=np.float64)
            for ob in by_tensor.pop(t):
                if ob.update(arr) and not allow_nonfinite:
                    raise _nonfinite_initializer(graph, t, arr)
    if by_tensor:
        ds = as_dataset(data, graph, split="calib")
        inputs = {s.name for s in input_specs(graph)}
        fetch = [t for t in by_tensor if t not in inputs]
        sess = augmented_session(graph, fetch, initializers) if fetch else None
        bar = progress_bar(progress, "calibrating", ds.length)
        n = 0
        try:
            for feed in ds:
                if not allow_nonfinite:
                    _check_finite_feed(feed, ds.label, n)
                values: list[Any] = (
                    run(sess, fetch, feed, f"calibrating {model_label(graph)}", n)
                    if sess is not None
                    else []
                )
                got = dict(zip(fetch, values))
                for t, observers in by_tensor.items():
                    v = got[t] if t in got else feed.get(t)
                    if v is None:
                        continue
                    arr = np.asarray(v)
                    if arr.dtype.kind not in "f":
                        arr = arr.astype(np.float64)
                    for ob in observers:
                        # +-Inf the model computes (an attention mask's -inf) saturate in
                        # QuantizeLinear as they do in any int8 backend: left out of the range.
                        # A NaN has no quantized value at all: refused.
                        if ob.update(arr) and not allow_nonfinite and np.isnan(arr).any():
                            raise InvalidData(
                                f"{ds.label}: sample {n}: the model computes NaN in tensor "
                                f"{t!r} ({_count_nonfinite(arr)}); fusekit cannot calibrate a "
                                "range for it (allow_nonfinite / --allow-nonfinite skips such "
                                "values)"
                            )
                n += 1
                bar.step()
        finally:
            bar.close()
        if n == 0:
            raise InvalidData(f"{ds.label}: no calibration samples")
    for (t, _, _), ob in wanted.items():
        if ob.empty:
            where = "initializer" if t in graph.initializers else "tensor"
            raise InvalidData(
                f"{where} {t!r} has no finite value in any of its {ob.n} sample(s) "
                "(all NaN or Inf): it has no range to calibrate"
            )
    return {k: ob.result() for k, ob in wanted.items()}


def _count_nonfinite(arr: np.ndarray[Any, Any]) -> str:
    """``"3 NaN, 1 Inf of 768 values"``, for messages."""
    a = np.asarray(arr)
    nan = int(np.count_nonzero(np.isnan(a)))
    inf = int(np.count_nonzero(np.isinf(a)))
    return f"{nan} NaN, {inf} Inf of {a.size} values"


def _check_finite_feed(feed: Feed, label: str, k: int) -> None:
    """Refuse a calibration sample with NaN or Inf in a float input, naming file/input/sample."""
    for name, v in feed.items():
        a = np.asarray(v)
        if a.dtype.kind in "fc" and a.size and not np.isfinite(a).all():
            raise InvalidData(
                f"{label}: input {name!r}, sample {k}: {_count_nonfinite(a)} are not finite; "
                "calibration data must be finite (allow_nonfinite / --allow-nonfinite skips "
                "such values)"
            )


def _nonfinite_initializer(graph: Graph, name: str, arr: np.ndarray[Any, Any]) -> InvalidData:
    users = ", ".join(sorted({s.op for s in graph.consumers(name)})[:3]) or "no op"
    return InvalidData(
        f"initializer {name!r} (read by {users}) has {_count_nonfinite(arr)} not finite; a "
        "quantized weight must be finite (allow_nonfinite / --allow-nonfinite quantizes the "
        "finite values and maps NaN to zero)"
    )


def check_finite_weights(graph: Graph, plan: QuantPlan) -> None:
    """Refuse NaN/Inf in any float initializer that a quantized slot of ``plan`` reads.

    Weights, biases, Clip bounds: everything export would turn into integers (NaN has no
    integer; 0.1 wrote 0 with a raw numpy warning). Raises :class:`InvalidData` naming the
    initializer and the ops reading it.
    """
    idx = graph.index
    inits = graph.initializers
    seen: set[str] = set()
    configs, names = plan.configs, idx.tensor_names
    for oid, platform in enumerate(plan.dispatch):
        if platform is None:
            continue
        for sid in idx.input_sids(oid):
            cfg = configs[sid]
            tid = idx.slot_tensor[sid]
            if cfg is None or tid < 0 or cfg.state == QuantState.FP32:
                continue
            name = names[tid]
            if name in seen or name not in inits:
                continue
            seen.add(name)
            arr = np.asarray(inits[name].array())
            if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
                raise _nonfinite_initializer(graph, name, arr)


# --------------------------------------------------------------------------------------------
# scales


@attrs.frozen
class Target:
    """One root to calibrate: the slot, the tensors to observe, how, and its new state."""

    root: int
    observe: tuple[str, ...]
    observer: str
    axis: int | None
    state: QuantState


def calibration_targets(
    plan: QuantPlan, observer: str | None = None, *, override: bool = False
) -> list[Target]:
    """The roots calibration gives a scale to, and the tensors each one is measured on.

    Roots in INITIAL (or, with ``override``, ACTIVATED) are measured on their own tensor and
    their FOLLOW members' tensors; PASSIVE_INIT roots with FOLLOW members (alignment masters)
    likewise. OVERLAPPED members, INTERNAL members (Clip bounds, Pad values) and FP32 slots are
    never measured. Constant tensors are always measured with min-max on their values.
    """
    graph = plan.graph
    idx = graph.index
    configs = plan.configs
    roots = plan.root_ids()
    follow = plan.follower_ids()
    names = idx.tensor_names
    out: list[Target] = []
    for sid, cfg in enumerate(configs):
        if cfg is None or roots[sid] != sid:
            continue
        members = follow.get(sid, [])
        if cfg.state == QuantState.INITIAL or (override and cfg.state == QuantState.ACTIVATED):
            new_state = QuantState.ACTIVATED
        elif cfg.state == QuantState.PASSIVE_INIT and members:
            new_state = QuantState.PASSIVE
        else:
            continue
        tensors: list[str] = []
        for s in (sid, *members):
            c = configs[s]
            if s != sid and (
                c.visibility == Visibility.INTERNAL
                or c.state in (QuantState.FP32, QuantState.OVERLAPPED)
            ):
                continue
            tid = idx.slot_tensor[s]
            if tid >= 0 and names[tid] not in tensors:
                tensors.append(names[tid])
        if not tensors:
            continue
        axis = cfg.channel_axis if cfg.policy.per_channel else None
        obs = _observer_name(cfg, observer)
        out.append(Target(sid, tuple(tensors), obs, axis, new_state))
    return out


class CalibrationResult(FusionResult):
    """A :class:`~fusekit.FusionResult` that also carries the measured ranges.

    ``ranges`` maps ``(tensor, observer, channel_axis)`` to the :class:`TensorRange` measured,
    ``samples`` is the number of samples run and ``data_label`` says where they came from.
    """

    __slots__ = ("data_label", "ranges", "samples")

    def __init__(
        self,
        plan: QuantPlan,
        input_plan: QuantPlan,
        pass_name: str,
        raw: tuple[Any, ...],
        ranges: Mapping[tuple[str, str, int | None], TensorRange],
        samples: int,
        data_label: str,
    ):
        super().__init__(plan, input_plan, pass_name, raw)
        self.ranges = dict(ranges)
        self.samples = samples
        self.data_label = data_label

    def tensor_range(self, tensor: str) -> TensorRange | None:
        """The per-tensor range measured on ``tensor`` (None if it was not observed)."""
        for (t, _, axis), r in self.ranges.items():
            if t == tensor and axis is None:
                return r
        return None


@attrs.frozen
class Calibration:
    """Calibration as a pass: ``Calibration(data).run(graph, plan)`` -> :class:`CalibrationResult`.

    Fields are the options of :func:`calibrate`. Put it in a pipeline with
    ``fusekit.default_pipeline(platform, calibration=Calibration(data))``: it then runs after
    fusion and simplify and before alignment, as in PPQ. ``passive_parameters`` runs
    :class:`fusekit.PassiveParameters` afterwards (off here, since the default pipeline ends
    with it anyway). With ``weights_first`` (default) the weights are calibrated first and the
    activations are measured on the network with its weights already quantized, as PPQ does
    (its parameter pass runs before runtime calibration), so activation ranges describe the
    network that will run.
    """

    data: Any = attrs.field(eq=False, repr=False)
    observer: str | None = None
    percentile: float = 0.9999
    bins: int = 2048
    override: bool = False
    passive_parameters: bool = False
    progress: bool | None = None
    weights_first: bool = True
    allow_nonfinite: bool = False

    name = "calibration"

    def __attrs_post_init__(self) -> None:
        if self.observer is not None and (
            OBSERVER_ALIASES.get(self.observer.lower(), self.observer.lower()) not in OBSERVERS
        ):
            raise InvalidData(
                f"unknown observer {self.observer!r}; choose one of {', '.join(OBSERVERS)}"
            )
        if not 0.5 < self.percentile <= 1.0:
            raise InvalidData(f"percentile must be in (0.5, 1], got {self.percentile}")
        if self.bins < 2:
            raise InvalidData(f"bins must be at least 2, got {self.bins}")

    def _wanted(
        self, graph: Graph, targets: Sequence[Target]
    ) -> dict[str, list[tuple[str, int | None]]]:
        wanted: dict[str, list[tuple[str, int | None]]] = {}
        for tg in targets:
            for t in tg.observe:
                wanted.setdefault(t, []).append(_observation(graph, tg, t))
        return wanted

    def run(self, graph: Graph, plan: QuantPlan) -> CalibrationResult:
        """Measure, set the scales and states; returns the new plan and one decision per root."""
        check_plan_graph(plan, graph, self.name)  # before any run, not after the measuring
        if not self.allow_nonfinite:
            check_finite_weights(graph, plan)
        targets = calibration_targets(plan, self.observer, override=self.override)
        inits = graph.initializers
        consts = [tg for tg in targets if all(t in inits for t in tg.observe)]
        acts = [tg for tg in targets if not all(t in inits for t in tg.observe)]
        # constants first: their ranges need no data, and with weights_first the activations
        # are then measured on the network as it will run, with its weights quantized
        ranges = (
            collect_ranges(
                graph, self._wanted(graph, consts), None, allow_nonfinite=self.allow_nonfinite
            )
            if consts
            else {}
        )
        scales = {tg.root: self._scale(plan, tg, ranges) for tg in consts}
        replace = _quantized_initializers(graph, plan, consts, scales) if self.weights_first else {}
        ds = as_dataset(self.data, graph, split="calib")
        if acts:
            ranges.update(
                collect_ranges(
                    graph,
                    self._wanted(graph, acts),
                    ds,
                    percentile=self.percentile,
                    bins=self.bins,
                    progress=self.progress,
                    initializers=replace,
                    allow_nonfinite=self.allow_nonfinite,
                )
            )
        rec = Recorder(graph, plan, self.name)
        idx = graph.index
        ev = rec.ev
        for tg in targets:
            scale, offset, what, observer = (
                scales[tg.root] if tg.root in scales else self._scale(plan, tg, ranges)
            )
            new = ev.cfg(tg.root).with_scale(scale, offset).with_state(tg.state)
            over = f" (union of {len(tg.observe)} tensors)" if len(tg.observe) > 1 else ""
            rec.config(
                "calibrate",
                (idx.slot_op[tg.root],),
                tg.root,
                new,
                "{} observed {}: range {}{}",
                idx.tensor_names[idx.slot_tensor[tg.root]],
                observer,
                what,
                over,
            )
        _activate_followers(rec)
        samples = max((r.samples for r in ranges.values()), default=0)
        # the measurements, then the recorder's log of what they set
        out = CalibrationResult(plan, plan, self.name, (), ranges, samples, ds.label)
        out = out.then(rec.result(plan))
        if self.passive_parameters:
            out = _with_passive_parameters(graph, out)
        return out

    @staticmethod
    def _scale(
        plan: QuantPlan, tg: Target, ranges: Mapping[tuple[str, str, int | None], TensorRange]
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], str, str]:
        """``(scale, offset, description, observer)`` of a target from its members' ranges."""
        graph = plan.graph
        cfg = plan.configs[tg.root]
        parts = [ranges[_range_key(graph, tg, t)] for t in tg.observe]
        if tg.axis is not None:
            lo, hi = parts[0].lo, parts[0].hi
            for r in parts[1:]:
                if np.shape(r.lo) != np.shape(lo):
                    raise InvalidData(
                        f"{graph.index.slot_key(tg.root)}: members have different channel counts"
                    )
                lo, hi = np.minimum(lo, r.lo), np.maximum(hi, r.hi)
            scale, offset = minmax_to_scale_offset_array(lo, hi, cfg)
            amax = float(max(np.max(np.abs(lo), initial=0.0), np.max(np.abs(hi), initial=0.0)))
            what = f"{np.size(scale)} channels, max |x| {amax:.6g}"
        else:
            lo_f = min(float(r.lo) for r in parts)
            hi_f = max(float(r.hi) for r in parts)
            s, o = minmax_to_scale_offset(lo_f, hi_f, cfg)
            scale, offset = np.asarray(s, np.float32), np.asarray(o, np.float32)
            what = f"[{lo_f:.6g}, {hi_f:.6g}]"
        return scale, offset, what, parts[0].observer


def _range_key(graph: Graph, tg: Target, tensor: str) -> tuple[str, str, int | None]:
    obs, axis = _observation(graph, tg, tensor)
    return tensor, obs, axis


def _observation(graph: Graph, tg: Target, tensor: str) -> tuple[str, int | None]:
    """How ``tensor`` is observed for ``tg``: constants are min-max (per channel or not).

    A per-channel activation uses the target's observer on each channel (one streaming
    histogram per channel for percentile, entropy and MSE).
    """
    if tensor in graph.initializers:
        return "minmax", tg.axis
    return tg.observer, tg.axis


def _quantized_initializers(
    graph: Graph,
    plan: QuantPlan,
    targets: Sequence[Target],
    scales: Mapping[int, tuple[Any, Any, str, str]],
) -> dict[str, np.ndarray[Any, Any]]:
    """Initializer name -> its quantized-then-dequantized value, for weights about to activate.

    An initializer that several slots quantize differently is left float (it has no single
    quantized value).
    """

    idx = graph.index
    out: dict[str, np.ndarray[Any, Any]] = {}
    clash: set[str] = set()
    for tg in targets:
        if tg.state != QuantState.ACTIVATED or len(tg.observe) != 1:
            continue
        name = tg.observe[0]
        if idx.tensor_names[idx.slot_tensor[tg.root]] != name:
            continue
        init = graph.initializers[name]
        value = np.asarray(init.array())
        if value.dtype != np.float32:
            continue
        cfg = plan.configs[tg.root]
        if cfg.policy.floating:
            continue
        scale, offset = scales[tg.root][0], scales[tg.root][1]
        axis = tg.axis
        if axis is not None:
            axis = axis + value.ndim if axis < 0 else axis
            if not 0 <= axis < value.ndim or value.shape[axis] != np.size(scale):
                continue
        elif np.size(scale) != 1:
            continue
        q = quantize_values(value, cfg, scale, offset, axis)
        deq = dequantize_values(q, scale, offset, axis)
        if name in out and not np.array_equal(out[name], deq):
            clash.add(name)
        out[name] = deq
    for name in clash:
        del out[name]
    return out


def _activate_followers(rec: Recorder) -> None:
    """Every slot still PASSIVE_INIT whose root now has a scale becomes PASSIVE."""
    ev = rec.ev
    idx = rec.idx
    for sid in range(len(ev.configs)):
        cfg = ev.cfg(sid)
        if cfg is None or cfg.state != QuantState.PASSIVE_INIT or ev.parent(sid) < 0:
            continue
        root_cfg = ev.cfg(ev.root(sid))
        if root_cfg.scale is None or root_cfg.offset is None:
            continue
        rec.config(
            "calibrate-follower",
            (idx.slot_op[sid],),
            sid,
            cfg.with_state(QuantState.PASSIVE),
            "{} quantizes with {}'s scale, now calibrated",
            idx.slot_key(sid),
            idx.slot_key(ev.root(sid)),
        )


def _with_passive_parameters(graph: Graph, res: CalibrationResult) -> CalibrationResult:
    from .passes import PassiveParameters

    plan = res.plan
    later = []
    for platform in sorted({p for p in plan.dispatch if p is not None}):
        later.append(PassiveParameters(platform).run(graph, plan))
        plan = later[-1].plan
    return res.then(*later)


def calibrate(
    graph: Graph,
    plan: QuantPlan,
    data: Any,
    observer: str | None = "minmax",
    *,
    percentile: float = 0.9999,
    bins: int = 2048,
    override: bool = False,
    passive_parameters: bool = True,
    weights_first: bool = True,
    progress: bool | None = None,
    allow_nonfinite: bool = False,
) -> QuantPlan:
    """Give every root of ``plan`` that needs one a scale, measured by running ``graph``.

    ``data`` is a path (``.npz``, folder of ``.npy``, ``.npy``), a :class:`Dataset`, or an
    iterable of feed dicts. ``observer`` is ``"minmax"``, ``"percentile"`` (``percentile``
    of the values kept), ``"entropy"`` (TensorRT's KL-divergence threshold) or ``"mse"`` (the
    range minimizing the expected squared quantization error), the last three read from a
    ``bins``-bin streaming histogram per tensor, ``"mean_minmax"`` (the mean of each
    calibration batch's min and max, NNCF's per-tensor default; per-channel ranges stay
    min-max), or None to use each config's own observer
    (a rule set names it in its activation rule). Weights are always measured min-max on their
    values, per channel when their policy says so. With ``passive_parameters`` (default)
    biases, Clip bounds and Pad values are derived afterwards by
    :class:`fusekit.PassiveParameters` for each platform of the plan. With ``weights_first``
    activations are measured with the weights already quantized (see :class:`Calibration`).
    ``progress`` shows a bar on stderr when it is a terminal. The inputs are unchanged;
    returns the new plan.

    NaN or Inf in the data, in a quantized op's initializer or in a measured tensor raise
    :class:`InvalidData` naming the file, input and sample (or the initializer, or the tensor);
    ``allow_nonfinite=True`` skips those values instead (a tensor with no finite value is still
    refused, and export maps a NaN weight to the zero point).
    """
    check_plan_graph(plan, graph, "calibrate")
    cal = Calibration(
        data,
        observer=observer,
        percentile=percentile,
        bins=bins,
        override=override,
        passive_parameters=passive_parameters,
        progress=progress,
        weights_first=weights_first,
        allow_nonfinite=allow_nonfinite,
    )
    return cal.run(graph, plan).plan
