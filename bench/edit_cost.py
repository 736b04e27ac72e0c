"""What index patching was worth (issue 12 item 4): the read model's build cost and memory, and
the CPU cost of a chain of structural edits on a large graph, each edit's result read.

Usage: ``python bench/edit_cost.py bench/models/g100000.onnx`` (run ``bench/run.py`` once to
generate the model). Prints one line; run it on two checkouts (``PYTHONPATH=.../src``) to
compare. 0.1's numbers (patched index plus list copy) and the single topology's are in
``fusekit/_topology.py``'s docstring.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc

import fusekit
from fusekit import Op


def main(path: str, k: int = 20) -> None:
    def build() -> float:
        g = fusekit.load(path)
        t = time.process_time()
        g.index, g.arrays()
        return time.process_time() - t

    index_s = sorted(build() for _ in range(3))[1]
    g = fusekit.load(path)
    gc.collect()
    tracemalloc.start()
    g.index, g.arrays()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    g0 = fusekit.load(path)
    _ = g0.index
    names = list(g0.order)[100 : 100 + k]
    t = time.process_time()
    g = g0
    for i, name in enumerate(names):  # add an Identity reading each op, then read the result
        out = g.ops[name].outputs[0]
        g = g.add_op(Op(f"probe{i}", "Identity", (out,), (f"probe{i}_o",)))
        g.producer(f"probe{i}_o")
    chain_s = time.process_time() - t
    print(
        f"ops={len(g0)} index_cpu_s={index_s:.3f} index_mb={held / 1e6:.1f} "
        f"add_op_chain_{k}_cpu_s={chain_s:.3f} per_edit_ms={1000 * chain_s / k:.1f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
