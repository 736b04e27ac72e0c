"""The ``fusekit`` command line.

Verbs: ``info`` (summary of a model), ``fuse`` (the main job). Every verb accepts ``--json``.
Exit codes: 0 ok, 2 bad input (one line on stderr, no traceback unless ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ._version import __version__
from .errors import FusekitError
from .examples import example_model_path
from .graph import Graph
from .onnx_io import ModelExtras, load

__all__ = ["main", "summarize"]


def summarize(graph: Graph) -> dict[str, Any]:
    """A JSON-able summary of a graph: op count, op-type histogram, inputs, outputs, opsets."""
    hist = Counter(op.op_type for op in graph)
    opsets: dict[str, int] = {}
    if isinstance(graph.extras, ModelExtras):
        for o in graph.extras.model.opset_import:
            opsets[o.domain or "ai.onnx"] = o.version

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


def _cmd_info(args: argparse.Namespace) -> int:
    path = args.model or str(example_model_path())
    graph = load(path)
    s = summarize(graph)
    if args.json:
        print(json.dumps({"model": path, **s}, indent=2))
    else:
        _print_summary(s, path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(
        prog="fusekit",
        description="Decide where a quantized ONNX network really needs quantization.",
    )
    p.add_argument("--version", action="version", version=f"fusekit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="verb", required=True)
    info = sub.add_parser("info", help="summarize a model (ops, op types, inputs, outputs)")
    info.add_argument("model", nargs="?", help="ONNX file (default: the bundled example)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)
    fuse = sub.add_parser("fuse", help="plan and fuse a model (default: the bundled example)")
    fuse.add_argument("model", nargs="?", help="ONNX file (default: the bundled example)")
    fuse.add_argument("--json", action="store_true", help="machine-readable output")
    fuse.add_argument("--out-dir", default=None, help="where to write outputs")
    fuse.set_defaults(func=_cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusekit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FusekitError as e:
        if args.debug:
            raise
        print(f"fusekit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
