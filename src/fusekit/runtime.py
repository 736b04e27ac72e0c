"""Running models in onnxruntime, and the data they run on.

Everything fusekit does with a live model goes through here: building a session with
onnxruntime's logging silenced and its errors turned into :class:`~fusekit.errors.ModelRunError`
naming the model, running it, and reading calibration or evaluation inputs (``.npz``, a folder
of ``.npy`` files, feed dicts, or clearly labelled random data from the input shapes), checked
against the model's inputs. :mod:`fusekit.calibrate`, :mod:`fusekit.evaluate`,
:mod:`fusekit.kernels`, :mod:`fusekit.sensitivity` and :mod:`fusekit.equalize` share it, so a
model is loaded and an error is worded one way. onnxruntime is imported lazily: the planning
API works without it.
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeGuard

import attrs
import numpy as np

from .errors import InvalidData, MissingDependency, ModelRunError
from .graph import Graph

__all__ = [
    "Dataset",
    "Feed",
    "InputSpec",
    "Progress",
    "as_dataset",
    "augmented_session",
    "first_line",
    "import_onnxruntime",
    "input_specs",
    "load_data",
    "model_bytes",
    "model_label",
    "progress_bar",
    "random_data",
    "run",
    "session",
]

Feed = dict[str, np.ndarray[Any, Any]]


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - the test extra installs it
        raise MissingDependency(
            "calibration and evaluation need onnxruntime: pip install 'fusekit[ort]'"
        ) from None
    return onnxruntime


def model_bytes(model: Any, base_dir: str | None = None) -> bytes:
    """Serialize a ``ModelProto`` for onnxruntime, embedding external weights if any.

    onnxruntime reads a model from bytes without knowing where its external data files are, so
    tensors stored outside the file are loaded from ``base_dir`` first.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    if base_dir is not None and any(uses_external_data(t) for t in model.graph.initializer):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for t in m.graph.initializer:
            if uses_external_data(t):
                load_external_data_for_tensor(t, base_dir)
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
        model = m
    return bytes(model.SerializeToString())


def session(data: bytes, label: str, *, optimize: str = "all", threads: int = 0) -> Any:
    """An onnxruntime CPU session over serialized model ``data`` (``label`` names it in errors).

    ``optimize`` is ORT's graph optimization level: ``"all"`` (ORT's default, what a
    deployment runs), ``"basic"`` (constant folding and the like: calibration reads
    intermediate tensors, which must be computed as the float graph says) or ``"none"``
    (every node runs as written: Q/DQ stay separate nodes instead of becoming int8 kernels).
    ``threads`` > 0 fixes ORT's intra-op thread count (0: ORT's default, one per core). Many
    short runs spend half their CPU spinning threads that wait for work: one thread halves
    the CPU of a sensitivity scan on a two-core machine (measured on ddddocr_det).
    """
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.log_severity_level = _ORT_QUIET  # fusekit reports ORT's errors itself, once, named
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimize not in levels:
        raise InvalidData(f"unknown optimization level {optimize!r}; use {', '.join(levels)}")
    so.graph_optimization_level = levels[optimize]
    if threads > 0:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise ModelRunError(f"{label}: onnxruntime cannot load the model: {first_line(e)}") from e


#: onnxruntime log severity: 4 is FATAL only. ORT logs a failed node run as an ERROR line of its
#: own on stderr (coloured, with a source location) before raising; fusekit raises
#: ModelRunError with the same facts, so the log line would only say it twice.
_ORT_QUIET = 4


def first_line(e: BaseException) -> str:
    """ORT's message on one line: every non-empty line joined, the boilerplate dropped.

    ORT puts the useful part on later lines ("index: 0 Got: 4 Expected: 1" under "Got invalid
    dimensions for input"), so keeping only the first line lost it.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Please fix either the inputs")]
    text = "; ".join(lines) if lines else type(e).__name__
    return text if len(text) <= 1000 else text[:997] + "..."


def _run_options() -> Any:
    ro = import_onnxruntime().RunOptions()
    ro.log_severity_level = _ORT_QUIET
    return ro


def run(sess: Any, outputs: Sequence[str] | None, feed: Feed, label: str, k: int) -> list[Any]:
    try:
        return list(sess.run(outputs, feed, _run_options()))
    except Exception as e:
        raise ModelRunError(f"{label}: onnxruntime failed on sample {k}: {first_line(e)}") from e


# --------------------------------------------------------------------------------------------
# data

# ONNX element type -> numpy dtype (the types a graph input can reasonably have)
_ELEM_DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}


@attrs.frozen
class InputSpec:
    """A graph input as calibration sees it: name, numpy dtype and (possibly symbolic) shape."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | str | None, ...] | None


def input_specs(graph: Graph) -> tuple[InputSpec, ...]:
    """The inputs a feed must provide (graph inputs that are not initializers)."""
    out = []
    for name in graph.inputs:
        if name in graph.initializers:
            continue
        t = graph.tensor(name)
        dtype = np.dtype(_ELEM_DTYPES.get(t.elem_type, np.float32))
        out.append(InputSpec(name, dtype, t.shape))
    return tuple(out)


class Dataset:
    """Re-iterable calibration or evaluation samples, each a feed ``{input name: array}``.

    ``label`` says where the samples come from (a file, or "random inputs"), ``generated`` is
    True for random data, and ``len()`` is the number of samples when it is known. Iterating
    twice yields the same samples (a one-shot iterator given by a caller is the exception: it is
    consumed by the first pass over it).
    """

    def __init__(
        self,
        factory: Callable[[], Iterator[Feed]],
        label: str,
        length: int | None = None,
        *,
        generated: bool = False,
    ):
        self._factory = factory
        self.label = label
        self.length = length
        self.generated = generated

    def __iter__(self) -> Iterator[Feed]:
        return self._factory()

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this dataset does not know its length")
        return self.length

    def __repr__(self) -> str:
        n = "?" if self.length is None else self.length
        return f"Dataset({self.label!r}, samples={n})"


def _samples_of(
    arr: np.ndarray[Any, Any], spec: InputSpec, where: str
) -> tuple[np.ndarray[Any, Any], bool]:
    """``(array, batched)``: batched when axis 0 enumerates samples (rank = input rank + 1)."""
    if arr.dtype.kind not in "biuf":
        what = "complex numbers" if arr.dtype.kind == "c" else f"{arr.dtype} values"
        raise InvalidData(
            f"{where}: array for input {spec.name!r} holds {what}; the model takes "
            f"{spec.dtype} (give real numbers)"
        )
    if spec.shape is not None and arr.ndim == len(spec.shape) + 1:
        return arr, True
    if spec.shape is not None and arr.ndim != len(spec.shape):
        raise InvalidData(
            f"{where}: array for input {spec.name!r} has shape {list(arr.shape)}; the model "
            f"expects rank {len(spec.shape)} (one sample) or {len(spec.shape) + 1} (samples "
            "along axis 0)"
        )
    return arr, False


def _from_arrays(
    arrays: Mapping[str, Callable[[], np.ndarray[Any, Any]]], specs: Sequence[InputSpec], where: str
) -> tuple[Callable[[], Iterator[Feed]], int]:
    """Feeds from one array per input (samples along axis 0, or a single sample)."""
    loaded: dict[str, tuple[np.ndarray[Any, Any], bool]] = {}
    counts: set[int] = set()
    for spec in specs:
        arr, batched = _samples_of(np.asarray(arrays[spec.name]()), spec, where)
        loaded[spec.name] = (arr, batched)
        counts.add(arr.shape[0] if batched else 1)
    if len(counts) > 1:
        detail = ", ".join(f"{k}: {a.shape[0] if b else 1}" for k, (a, b) in sorted(loaded.items()))
        raise InvalidData(f"{where}: inputs have different numbers of samples ({detail})")
    n = counts.pop() if counts else 0

    def factory() -> Iterator[Feed]:
        for i in range(n):
            yield {
                name: np.asarray(a[i] if batched else a, order="C")
                for name, (a, batched) in loaded.items()
            }

    return factory, n


def load_data(
    source: str | os.PathLike[str],
    graph: Graph,
    *,
    split: str | None = None,
    limit: int | None = None,
) -> Dataset:
    """Samples for ``graph`` from a file or folder.

    * ``.npz``: one array per input, named after the input (or ``<split>__<input>``, e.g.
      ``calib__x`` / ``eval__x`` as fusekit's accuracy data has; ``split`` picks the prefix);
    * a folder: ``<input>.npy`` per input, or, for a single-input model, any ``*.npy`` files
      (sorted by name), each one sample or a stack of samples;
    * ``.npy``: a single-input model's samples.

    An array whose rank is the input's rank + 1 holds samples along axis 0; an array of the
    input's rank is one sample. Arrays are cast to the input's element type. ``limit`` keeps
    the first samples only. Raises :class:`InvalidData` naming the file and input.
    """
    p = Path(source)
    where = str(p)
    specs = input_specs(graph)
    if not p.exists():
        raise InvalidData(f"{where}: no such file or folder")
    names = [s.name for s in specs]
    if p.is_dir():
        per_input = {n: p / f"{_safe_file_name(n)}.npy" for n in names}
        if all(f.is_file() for f in per_input.values()):
            getters = {n: _npy_getter(f) for n, f in per_input.items()}
            factory, n = _from_arrays(getters, specs, where)
        elif len(specs) == 1:
            files = sorted(p.glob("*.npy"))
            if not files:
                raise InvalidData(f"{where}: no .npy files in the folder")
            factory, n = _from_files(files, specs[0], where)
        else:
            raise InvalidData(
                f"{where}: expected one file per input ({', '.join(f'{n}.npy' for n in names)})"
            )
    elif p.suffix == ".npz":
        try:
            npz = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise InvalidData(f"{where}: not a readable .npz file ({e})") from None
        keys = set(npz.files)
        prefix = ""
        if split is not None and all(f"{split}__{n}" in keys for n in names):
            prefix = f"{split}__"
        elif not all(n in keys for n in names):
            splits = sorted({k.split("__", 1)[0] for k in keys if "__" in k})
            hint = f"; splits present: {', '.join(splits)}" if splits else ""
            missing = [n for n in names if n not in keys]
            raise InvalidData(
                f"{where}: no array for input(s) {', '.join(map(repr, missing))} "
                f"(arrays: {', '.join(sorted(keys)) or 'none'}){hint}"
            )
        getters = {n: _npz_getter(npz, prefix + n) for n in names}
        factory, n = _from_arrays(getters, specs, where)
        if prefix:
            where = f"{where} ({prefix}*)"
    elif p.suffix == ".npy":
        if len(specs) != 1:
            raise InvalidData(
                f"{where}: a single .npy file can only feed a model with one input; this one "
                f"has {len(specs)} ({', '.join(names)})"
            )
        factory, n = _from_arrays({names[0]: _npy_getter(p)}, specs, where)
    else:
        raise InvalidData(f"{where}: expected an .npz file, an .npy file or a folder of .npy")
    if n == 0:
        raise InvalidData(f"{where}: contains no samples")
    if limit is not None and limit < n:
        n = limit
        inner = factory

        def factory() -> Iterator[Feed]:
            it = inner()
            for _ in range(n):
                yield next(it)

    return Dataset(_cast_feeds(factory, specs), f"{where}", n)


def _safe_file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _npy_getter(path: Path) -> Callable[[], np.ndarray[Any, Any]]:
    def get() -> np.ndarray[Any, Any]:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)  # type: ignore[no-any-return]
        except (OSError, ValueError) as e:
            raise InvalidData(f"{path}: not a readable .npy file ({e})") from None

    return get


def _npz_getter(npz: Any, key: str) -> Callable[[], np.ndarray[Any, Any]]:
    def get() -> np.ndarray[Any, Any]:
        try:
            return np.asarray(npz[key])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            where = getattr(npz, "fid", None)
            name = getattr(where, "name", "the .npz file")
            raise InvalidData(f"{name}: array {key!r} cannot be read ({e})") from None

    return get


def _from_files(
    files: Sequence[Path], spec: InputSpec, where: str
) -> tuple[Callable[[], Iterator[Feed]], int]:
    n = 0
    shapes: list[tuple[np.ndarray[Any, Any], bool]] = []
    for f in files:
        arr, batched = _samples_of(_npy_getter(f)(), spec, str(f))
        shapes.append((arr, batched))
        n += arr.shape[0] if batched else 1

    def factory() -> Iterator[Feed]:
        for f in files:
            arr, batched = _samples_of(_npy_getter(f)(), spec, str(f))
            if batched:
                for i in range(arr.shape[0]):
                    yield {spec.name: np.asarray(arr[i], order="C")}
            else:
                yield {spec.name: np.asarray(arr, order="C")}

    return factory, n


def _cast_feeds(
    factory: Callable[[], Iterator[Feed]], specs: Sequence[InputSpec]
) -> Callable[[], Iterator[Feed]]:
    dtypes = {s.name: s.dtype for s in specs}

    def cast() -> Iterator[Feed]:
        for feed in factory():
            yield {k: (v if v.dtype == dtypes[k] else v.astype(dtypes[k])) for k, v in feed.items()}

    return cast


#: Elements a generated input may have (2**28 float32 = 1 GiB): a declared shape beyond it is
#: a mistake to report, not an allocation to attempt.
MAX_GENERATED_ELEMENTS = 2**28


def _resolve_shapes(
    specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]] | None, default_dim: int
) -> dict[str, tuple[int, ...]]:
    """The concrete shape of every generated input, one size per symbolic dimension name.

    A ``dim_param`` such as ``batch`` names one size across the whole model: sizes given in
    ``shapes`` bind the names their dimensions carry (so ``--input-shape x=4,...`` makes every
    ``batch`` 4); an unbound name is 1 if it is ever the first axis of an input (a batch) and
    ``default_dim`` otherwise; an unnamed dynamic dimension is 1 on axis 0, ``default_dim``
    elsewhere. Raises InvalidData for a name that is not an input, a rank that does not match,
    a fixed dimension given another size, two sizes for one name, or a shape too large.
    """
    given = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    names = [s.name for s in specs]
    unknown = [k for k in given if k not in names]
    if unknown:
        raise InvalidData(
            f"--input-shape names {', '.join(map(repr, unknown))}, which the model does not take "
            f"as input (inputs: {', '.join(names) or 'none'})"
        )
    bound: dict[str, int] = {}
    for spec in specs:
        if spec.name not in given:
            continue
        dims = given[spec.name]
        if any(d <= 0 for d in dims):
            raise InvalidData(f"input {spec.name!r}: shape {list(dims)} has a size below 1")
        if spec.shape is None:
            continue
        if len(dims) != len(spec.shape):
            raise InvalidData(
                f"input {spec.name!r} has rank {len(spec.shape)} ({_shape_text(spec.shape)}); "
                f"the shape given, {list(dims)}, has rank {len(dims)}"
            )
        for i, (want, got) in enumerate(zip(spec.shape, dims)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InvalidData(
                    f"input {spec.name!r}: axis {i} is fixed at {want} in the model, "
                    f"the shape given says {got}"
                )
            if _named(want) and bound.setdefault(want, got) != got:
                raise InvalidData(
                    f"dimension {want!r} is {bound[want]} in one --input-shape and {got} "
                    f"in the one of {spec.name!r}; one name, one size"
                )
    batch_names = {s.shape[0] for s in specs if s.shape and _named(s.shape[0])}
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name in given:
            out[spec.name] = given[spec.name]
        elif spec.shape is None:
            raise InvalidData(
                f"input {spec.name!r} has no known shape; give one (--input-shape "
                f"{spec.name}=1,3,224,224)"
            )
        else:
            sizes: list[int] = []
            for i, d in enumerate(spec.shape):
                if isinstance(d, int) and d > 0:
                    sizes.append(d)
                elif isinstance(d, str) and _named(d):
                    if d not in bound:
                        bound[d] = 1 if d in batch_names else default_dim
                    sizes.append(bound[d])
                else:
                    sizes.append(1 if i == 0 else default_dim)
            out[spec.name] = tuple(sizes)
        size = math.prod(out[spec.name])
        if size > MAX_GENERATED_ELEMENTS:
            raise InvalidData(
                f"input {spec.name!r}: a generated sample of shape {list(out[spec.name])} has "
                f"{size} elements, more than fusekit generates ({MAX_GENERATED_ELEMENTS}); give "
                "a smaller one (--input-shape) or real data (--calib)"
            )
    return out


def _named(dim: int | str | None) -> TypeGuard[str]:
    """Whether a dimension carries a real name: exporters write "?", "-1" or "None" for
    "unknown", which names nothing (paddle2onnx marks every dynamic axis "?")."""
    return (
        isinstance(dim, str)
        and any(c.isalpha() for c in dim)
        and dim.lower() not in ("none", "unk", "unknown", "dynamic")
    )


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def random_data(
    graph: Graph,
    n: int = 8,
    *,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    fixed: Mapping[str, Any] | None = None,
    default_dim: int = 64,
) -> Dataset:
    """``n`` random samples from the model's input shapes, labelled as generated.

    Float inputs are standard normal, integer inputs zero, booleans False (random integers would
    index out of range in embeddings). Dynamic dimensions are 1 on axis 0 (the batch) and
    ``default_dim`` elsewhere unless ``shapes`` gives the input's full shape; ``fixed`` gives
    inputs a constant value (e.g. a sample rate). A symbolic dimension name has one size across
    all inputs (see :func:`_resolve_shapes`); ``shapes`` naming something that is not an input
    is an error. This is for a quick look at a model: scales calibrated on noise say little
    about accuracy on real data.
    """
    if n <= 0:
        raise InvalidData(f"random_data needs a positive number of samples, got {n}")
    specs = input_specs(graph)
    resolved = _resolve_shapes(specs, shapes, default_dim)
    fixed = dict(fixed or {})

    def factory() -> Iterator[Feed]:
        rng = np.random.default_rng([seed, zlib.crc32((graph.name or "").encode())])
        for _ in range(n):
            feed: Feed = {}
            for s in specs:
                if s.name in fixed:
                    feed[s.name] = np.asarray(fixed[s.name], dtype=s.dtype)
                elif s.dtype.kind == "f":
                    feed[s.name] = rng.standard_normal(resolved[s.name]).astype(s.dtype)
                else:
                    feed[s.name] = np.zeros(resolved[s.name], dtype=s.dtype)
            yield feed

    desc = ", ".join(f"{k}{list(v)}" for k, v in resolved.items())
    return Dataset(factory, f"random inputs (generated, seed {seed}: {desc})", n, generated=True)


def as_dataset(data: Any, graph: Graph, *, split: str | None = None) -> Dataset:
    """Accept a :class:`Dataset`, a path (see :func:`load_data`), or an iterable of feeds."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_data(data, graph, split=split)
    if isinstance(data, Mapping):
        raise InvalidData("data must be an iterable of feeds ({input: array}), not one feed")
    if isinstance(data, Iterable):
        specs = input_specs(graph)
        items = data
        n = len(data) if isinstance(data, Sequence) else None

        def factory() -> Iterator[Feed]:
            for k, feed in enumerate(items):
                if not isinstance(feed, Mapping):
                    raise InvalidData(f"sample {k} is a {type(feed).__name__}, not a feed dict")
                yield _check_feed(feed, specs, k)

        return Dataset(factory, "samples given in Python", n)
    raise InvalidData(f"cannot use a {type(data).__name__} as data")


def _check_feed(feed: Mapping[str, Any], specs: Sequence[InputSpec], k: int) -> Feed:
    out: Feed = {}
    for s in specs:
        if s.name not in feed:
            raise InvalidData(f"sample {k} has no value for input {s.name!r}")
        v = np.asarray(feed[s.name])
        if v.dtype.kind not in "biuf":
            what = "complex numbers" if v.dtype.kind == "c" else f"{v.dtype} values"
            raise InvalidData(f"sample {k}: input {s.name!r} holds {what}, not real numbers")
        out[s.name] = v if v.dtype == s.dtype else v.astype(s.dtype)
    extra = set(feed) - {s.name for s in specs}
    if extra:
        raise InvalidData(
            f"sample {k} has values for {', '.join(sorted(map(repr, extra)))}, which are not "
            "inputs of the model"
        )
    return out


class Progress:
    """A one-line progress bar on a terminal (nothing when disabled)."""

    def __init__(self, enabled: bool, label: str, total: int | None, stream: TextIO) -> None:
        self.enabled = enabled
        self.label = label
        self.total = total
        self.stream = stream
        self.done = 0

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.total:
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "." * (width - filled)
            text = f"\r{self.label} [{bar}] {self.done}/{self.total}"
        else:
            text = f"\r{self.label} {self.done}"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


def progress_bar(progress: bool | None, label: str, total: int | None) -> Progress:
    enabled = bool(progress) if progress is not None else False
    return Progress(enabled and sys.stderr.isatty(), label, total, sys.stderr)


def augmented_session(
    graph: Graph,
    fetch: Sequence[str],
    initializers: Mapping[str, np.ndarray[Any, Any]] | None = None,
) -> Any:
    """A session over the float model with ``fetch`` added as graph outputs."""
    import onnx
    from onnx import numpy_helper

    from .onnx_io import ModelExtras, to_model

    model = to_model(graph)
    if initializers:
        for t in model.graph.initializer:
            if t.name in initializers:
                t.CopyFrom(numpy_helper.from_array(initializers[t.name], t.name))
    have = {o.name for o in model.graph.output}
    for t in fetch:
        if t not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
            have.add(t)
    base = graph.extras.base_dir if isinstance(graph.extras, ModelExtras) else None
    return session(model_bytes(model, base), model_label(graph), optimize="basic")


def model_label(graph: Graph) -> str:
    """How messages name the model: its file when it was loaded from one, else its name."""
    from .onnx_io import ModelExtras

    label = graph.extras.label if isinstance(graph.extras, ModelExtras) else ""
    if label and not label.startswith("<"):  # "<ModelProto>", "<123 bytes>": not a file
        return label
    return f"model {graph.name!r}" if graph.name else "the model"
