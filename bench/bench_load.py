"""Time ``fusekit.load`` against ``onnx.load`` side by side, in one process.

For each model the two loaders run alternately (``--repeats`` times each, after one warm-up)
from the same file, and the medians are compared. The issue's target is
``fusekit.load / onnx.load <= 2`` at 100k ops. ``onnx.load`` on a path parses the file and then
walks every node's attributes in Python looking for external data; the table also shows the
bare protobuf parse (``ModelProto.ParseFromString`` of the bytes) so the cost of building
Python objects for every op is visible on its own.

Models: the largest corpus models (decompressed once into ``bench/models/``) and generated
graphs (``bench/generate.py``; 100k ops by default, add ``--ops 1000000`` for 1M). Results go
to ``bench/results/load.json``.

Usage: ``python bench/bench_load.py [--repeats 7] [--ops 100000 ...] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import gzip
import json
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

import fusekit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "models"
MODELS = HERE / "models"
RESULTS = HERE / "results"
LARGEST_CORPUS = 5

sys.path.insert(0, str(HERE))
import generate  # noqa: E402  (bench/ is not a package)


def corpus_files() -> list[Path]:
    """The largest corpus models (by uncompressed size, from the corpus manifest) plus the one
    with the most ops, decompressed into bench/models/ on first use."""
    manifest = json.loads((CORPUS.parent / "manifest.json").read_text())["models"]
    by_size = sorted(manifest, key=lambda m: -m["file_size_bytes"])[:LARGEST_CORPUS]
    most_ops = max(manifest, key=lambda m: m["op_count"])
    chosen = by_size + ([most_ops] if most_ops not in by_size else [])
    out = []
    for entry in chosen:
        src = CORPUS.parent / entry["file"]
        dst = MODELS / src.name[: -len(".gz")]
        if not dst.exists():
            MODELS.mkdir(parents=True, exist_ok=True)
            with gzip.open(src) as f:
                dst.write_bytes(f.read())
        out.append(dst)
    return out


def generated_file(n_ops: int, seed: int = 0) -> Path:
    """bench/models/g<n>.onnx, generated (deterministically) if missing."""
    path = MODELS / f"g{n_ops}_s{seed}.onnx"
    if not path.exists():
        generate.save_model(generate.make_model(n_ops, seed), path)
    return path


def _time(fn: Callable[[], object]) -> float:
    gc.collect()  # each run starts from the same heap, whatever the previous one left
    t = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t
    del result
    return dt


def measure(path: Path, repeats: int) -> dict[str, Any]:
    """Median seconds of fusekit.load, onnx.load and the bare parse, alternating runs."""
    data = path.read_bytes()

    def parse() -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.ParseFromString(data)
        return m

    runs: dict[str, list[float]] = {"fusekit": [], "onnx": [], "parse": []}
    fusekit.load(path)  # warm-up: imports, caches, page cache
    onnx.load(path)
    for _ in range(repeats):
        runs["fusekit"].append(_time(lambda: fusekit.load(path)))
        runs["onnx"].append(_time(lambda: onnx.load(path)))
        runs["parse"].append(_time(parse))
    med = {k: statistics.median(v) for k, v in runs.items()}
    n_ops = len(fusekit.load(path))
    return {
        "model": path.name,
        "ops": n_ops,
        "bytes": len(data),
        "fusekit_s": med["fusekit"],
        "onnx_load_s": med["onnx"],
        "parse_only_s": med["parse"],
        "ratio_vs_onnx_load": med["fusekit"] / med["onnx"],
        "ratio_vs_parse": med["fusekit"] / med["parse"],
        "runs": runs,
    }


def profile(path: Path) -> None:
    """Print the top functions of one fusekit.load (for optimization work)."""
    fusekit.load(path)
    prof = cProfile.Profile()
    prof.enable()
    fusekit.load(path)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--ops", type=int, nargs="*", default=[100_000], help="generated sizes")
    ap.add_argument("--no-corpus", action="store_true", help="only the generated graphs")
    ap.add_argument("--profile", action="store_true", help="cProfile the largest model")
    args = ap.parse_args(argv)

    files = [] if args.no_corpus else corpus_files()
    files += [generated_file(n) for n in args.ops]
    if args.profile:
        profile(files[-1])
        return 0
    rows = []
    head = (
        f"{'model':36} {'ops':>8} {'MB':>7} {'fusekit ms':>11} {'onnx.load ms':>13} "
        f"{'parse ms':>9} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for path in files:
        r = measure(path, args.repeats)
        rows.append(r)
        print(
            f"{r['model']:36} {r['ops']:>8} {r['bytes'] / 1e6:>7.1f} "
            f"{r['fusekit_s'] * 1e3:>11.1f} {r['onnx_load_s'] * 1e3:>13.1f} "
            f"{r['parse_only_s'] * 1e3:>9.1f} {r['ratio_vs_onnx_load']:>6.2f}"
        )
    print("ratio = fusekit.load / onnx.load (medians of alternating runs); target <= 2 at 100k")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "load.json"
    meta = {
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "onnx": onnx.__version__,
        "fusekit": fusekit.__version__,
        "repeats": args.repeats,
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
