"""Generate large, realistic ONNX graphs for the load benchmark (deterministic by seed).

``make_model(n_ops, seed)`` stacks the block families fusekit's rules are written for, in
sections of a few blocks each, until the graph has exactly ``n_ops`` nodes:

* ResNet bottlenecks: Conv-Relu, Conv3x3-Relu, Conv, residual Add, Relu, sometimes a MaxPool;
* MobileNetV2 inverted residuals: Conv-Clip(0, 6) (ReLU6, min/max as initializer inputs),
  depthwise Conv-Clip, projection Conv, residual Add;
* YOLO-style CSP blocks: SiLU written as Sigmoid*Mul, two branches, bottlenecks, Concat, and a
  PAN step (MaxPool stride 2, Resize x2, Concat with the skip);
* transformer blocks over the flattened feature map: MatMul+Add projections, Reshape/Transpose
  into heads, Softmax attention, decomposed LayerNorm
  (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add) and decomposed GELU (Div/Erf/Add/Mul/Mul).

The fan-out is the real one: residual inputs feed two ops, SiLU's input feeds Sigmoid and Mul,
a transformer block's input feeds the Q, K and V projections and the residual Add. The feature map
keeps one shape ``[N, C, H, W]`` everywhere, so every weight is one of a few small initializers
shared by all blocks: a 1M-op file stays around 100 MB and is mostly node protos, which is what a
loader benchmark should measure. The batch dimension is symbolic (``N``).

Usage: ``python bench/generate.py --ops 100000 --out bench/models/g100k.onnx``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; onnxruntime accepts it everywhere

__all__ = ["make_model", "save_model"]


class _Builder:
    """Accumulates nodes and shared initializers while the block functions call it."""

    def __init__(
        self, graph: onnx.GraphProto, rng: np.random.Generator, channels: int, hw: int, heads: int
    ):
        self.rng = rng
        self.c = channels
        self.hw = hw
        self.heads = heads
        # nodes go straight into the model's graph: a list of 1M NodeProtos copied into it by
        # helper.make_graph would need twice the memory
        self.nodes = graph.node
        self.inits: dict[str, onnx.TensorProto] = {}
        self._n_tensors = 0
        self._attr_cache: dict[tuple[str, Any], onnx.AttributeProto] = {}

    # -- primitives ------------------------------------------------------------------------

    def fresh(self) -> str:
        self._n_tensors += 1
        return f"t{self._n_tensors}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> str:
        """Append a node; returns its first output (the only one every block here needs)."""
        outs = [self.fresh() for _ in range(n_out)]
        node = self.nodes.add()
        node.op_type = op_type
        node.name = f"{op_type}_{len(self.nodes)}"
        node.input.extend(inputs)
        node.output.extend(outs)
        for k in sorted(attrs):
            v = attrs[k]
            key = (k, tuple(v) if isinstance(v, list) else v)
            a = self._attr_cache.get(key)
            if a is None:
                a = self._attr_cache[key] = helper.make_attribute(k, v)
            node.attribute.append(a)
        return outs[0]

    def const(self, name: str, value: np.ndarray[Any, Any]) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(value, name)
        return name

    def weight(self, kind: str, shape: tuple[int, ...]) -> str:
        """One of three shared variants of a weight of this shape (picked by the seed)."""
        variant = int(self.rng.integers(3))
        name = f"{kind}_{'x'.join(map(str, shape))}_v{variant}"
        if name not in self.inits:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            std = 1.0 / np.sqrt(max(fan_in, 1))
            w = self.rng.normal(0.0, std, size=shape).astype(np.float32)
            self.inits[name] = numpy_helper.from_array(w, name)
        return name

    def bias(self, n: int) -> str:
        variant = int(self.rng.integers(3))
        name = f"b_{n}_v{variant}"
        if name not in self.inits:
            b = self.rng.normal(0.0, 0.05, size=(n,)).astype(np.float32)
            self.inits[name] = numpy_helper.from_array(b, name)
        return name

    # -- layers ----------------------------------------------------------------------------

    def conv(self, x: str, c_in: int, c_out: int, k: int, *, group: int = 1) -> str:
        w = self.weight("w", (c_out, c_in // group, k, k))
        p = k // 2
        attrs: dict[str, Any] = {"kernel_shape": [k, k], "pads": [p, p, p, p]}
        if group != 1:
            attrs["group"] = group
        return self.op("Conv", [x, w, self.bias(c_out)], **attrs)

    def relu6(self, x: str) -> str:
        lo = self.const("clip_min", np.array(0.0, np.float32))
        hi = self.const("clip_max", np.array(6.0, np.float32))
        return self.op("Clip", [x, lo, hi])

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def linear(self, x: str, d_in: int, d_out: int) -> str:
        return self.op("Add", [self.op("MatMul", [x, self.weight("fc", (d_in, d_out))]),
                               self.bias(d_out)])  # fmt: skip

    def layer_norm(self, x: str, d: int) -> str:
        mean = self.op("ReduceMean", [x], axes=[-1])
        xc = self.op("Sub", [x, mean])
        two = self.const("ln_two", np.array(2.0, np.float32))
        eps = self.const("ln_eps", np.array(1e-5, np.float32))
        var = self.op("ReduceMean", [self.op("Pow", [xc, two])], axes=[-1])
        std = self.op("Sqrt", [self.op("Add", [var, eps])])
        y = self.op("Div", [xc, std])
        return self.op("Add", [self.op("Mul", [y, self.weight("gamma", (d,))]), self.bias(d)])

    def gelu(self, x: str) -> str:
        sqrt2 = self.const("gelu_sqrt2", np.array(np.sqrt(2.0), np.float32))
        one = self.const("gelu_one", np.array(1.0, np.float32))
        half = self.const("gelu_half", np.array(0.5, np.float32))
        e = self.op("Add", [self.op("Erf", [self.op("Div", [x, sqrt2])]), one])
        return self.op("Mul", [self.op("Mul", [x, e]), half])

    # -- blocks (each keeps the shape of its input) ------------------------------------------

    def resnet_bottleneck(self, x: str) -> str:
        c, m = self.c, self.c // 2
        y = self.op("Relu", [self.conv(x, c, m, 1)])
        y = self.op("Relu", [self.conv(y, m, m, 3)])
        y = self.conv(y, m, c, 1)
        y = self.op("Relu", [self.op("Add", [y, x])])
        if self.rng.random() < 0.25:
            y = self.op("MaxPool", [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        return y

    def inverted_residual(self, x: str) -> str:
        c, e = self.c, self.c * 2
        y = self.relu6(self.conv(x, c, e, 1))
        y = self.relu6(self.conv(y, e, e, 3, group=e))
        y = self.conv(y, e, c, 1)
        return self.op("Add", [x, y])

    def csp_block(self, x: str) -> str:
        c, h = self.c, self.c // 2
        a = self.silu(self.conv(x, c, h, 1))
        b = self.silu(self.conv(x, c, h, 1))
        for _ in range(int(self.rng.integers(1, 3))):
            y = self.silu(self.conv(b, h, h, 1))
            y = self.silu(self.conv(y, h, h, 3))
            b = self.op("Add", [b, y])
        y = self.silu(self.conv(self.op("Concat", [a, b], axis=1), c, c, 1))
        # PAN step: down, process, up, and fuse with the skip connection
        down = self.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
        down = self.silu(self.conv(down, c, c, 3))
        scales = self.const("resize_x2", np.array([1.0, 1.0, 2.0, 2.0], np.float32))
        up = self.op("Resize", [down, "", scales], mode="nearest")
        return self.silu(self.conv(self.op("Concat", [up, y], axis=1), 2 * c, c, 1))

    def transformer_block(self, x: str) -> str:
        d, nh = self.c, self.heads
        dh = d // nh
        heads = self.const("shape_heads", np.array([0, -1, nh, dh], np.int64))
        merge = self.const("shape_merge", np.array([0, -1, d], np.int64))
        scale = self.const("attn_scale", np.array(1.0 / np.sqrt(dh), np.float32))
        h = self.layer_norm(x, d)
        q = self.op("Transpose", [self.op("Reshape", [self.linear(h, d, d), heads])],
                    perm=[0, 2, 1, 3])  # fmt: skip
        k = self.op("Transpose", [self.op("Reshape", [self.linear(h, d, d), heads])],
                    perm=[0, 2, 3, 1])  # fmt: skip
        v = self.op("Transpose", [self.op("Reshape", [self.linear(h, d, d), heads])],
                    perm=[0, 2, 1, 3])  # fmt: skip
        att = self.op("Softmax", [self.op("Mul", [self.op("MatMul", [q, k]), scale])], axis=-1)
        o = self.op("Transpose", [self.op("MatMul", [att, v])], perm=[0, 2, 1, 3])
        o = self.linear(self.op("Reshape", [o, merge]), d, d)
        x = self.op("Add", [x, o])
        f = self.linear(self.gelu(self.linear(self.layer_norm(x, d), d, 4 * d)), 4 * d, d)
        return self.op("Add", [x, f])

    def to_tokens(self, x: str) -> str:
        flat = self.const("shape_tokens", np.array([0, self.c, -1], np.int64))
        return self.op("Transpose", [self.op("Reshape", [x, flat])], perm=[0, 2, 1])

    def to_map(self, x: str) -> str:
        shape = self.const("shape_map", np.array([0, self.c, self.hw, self.hw], np.int64))
        return self.op("Reshape", [self.op("Transpose", [x], perm=[0, 2, 1]), shape])


# Measured node counts per block (upper bounds where a block has random parts); the filler
# uses them to stop before overshooting the target.
_SECTIONS: dict[str, tuple[Callable[[_Builder, str], str], int]] = {
    "resnet": (_Builder.resnet_bottleneck, 9),
    "mobilenet": (_Builder.inverted_residual, 6),
    "csp": (_Builder.csp_block, 33),
    "transformer": (_Builder.transformer_block, 49),
}
_HEAD = 4  # GlobalAveragePool, Flatten, Gemm, Softmax
_STEM = 2  # Conv, Relu


def make_model(
    n_ops: int, seed: int = 0, *, channels: int = 16, hw: int = 8, heads: int = 2
) -> onnx.ModelProto:
    """A model with exactly ``n_ops`` nodes (at least 10) built from stacked realistic blocks.

    The same ``(n_ops, seed, channels, hw, heads)`` always gives the same bytes. ``hw`` (the
    spatial size, even) and ``channels`` keep the model cheap to run in onnxruntime; they do not
    change the graph's shape as a loader sees it.
    """
    if n_ops < 10:
        raise ValueError("n_ops must be at least 10")
    if hw % 2 or channels % (2 * heads):
        raise ValueError("hw must be even and channels a multiple of 2*heads")
    rng = np.random.default_rng(seed)
    model = helper.make_model(
        onnx.GraphProto(),
        producer_name="fusekit-bench-generate",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    g = model.graph
    b = _Builder(g, rng, channels, hw, heads)
    budget = n_ops - _HEAD
    x = b.op("Relu", [b.conv("images", 3, channels, 3)])
    names = sorted(_SECTIONS)
    while True:
        kind = names[int(rng.integers(len(names)))]
        block, size = _SECTIONS[kind]
        reserve = 2 if kind == "transformer" else 0  # to_tokens before, to_map after
        if len(b.nodes) + size + 2 * reserve > budget:
            break
        if kind == "transformer":
            x = b.to_tokens(x)
        for _ in range(int(rng.integers(2, 7))):
            if len(b.nodes) + size + reserve > budget:
                break
            x = block(b, x)
        if kind == "transformer":
            x = b.to_map(x)
    while len(b.nodes) < budget:  # fill the last few nodes with Conv-Relu pairs (or one Relu)
        if budget - len(b.nodes) >= 2:
            x = b.op("Relu", [b.conv(x, channels, channels, 3)])
        else:
            x = b.op("Relu", [x])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    y = b.op("Gemm", [y, b.weight("head", (10, channels)), b.bias(10)], transB=1)
    out = b.op("Softmax", [y], axis=-1)
    g.name = f"generated_{n_ops}_s{seed}"
    g.input.append(helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, hw, hw]))
    g.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10]))
    g.initializer.extend(b.inits.values())
    assert len(g.node) == n_ops, (len(g.node), n_ops)
    return model


def save_model(model: onnx.ModelProto, path: str | Path) -> int:
    """Write ``model`` to ``path`` (parents created); returns the file size in bytes."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    p.write_bytes(data)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, required=True, help="number of nodes (e.g. 100000)")
    ap.add_argument("--out", required=True, help="where to write the .onnx file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--hw", type=int, default=8, help="spatial size of the input image")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    model = make_model(args.ops, args.seed, channels=args.channels, hw=args.hw)
    size = save_model(model, args.out)
    dt = time.perf_counter() - t0
    print(f"{args.out}: {args.ops} ops, {size / 1e6:.1f} MB, {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
