"""The benchmark's floor: fusekit's default decisions, written the plain mutable way.

This is what fusekit's persistent design is measured against (issue 6: the default pipeline
must stay within 4x of it). It makes the same decisions as ``init_plan(graph, platform)``
followed by ``default_pipeline(platform)`` without calibration, for fusekit's corrected rule
sets (``trt_int8``, ``ort_int8``, ``ppl_cuda_int8``; none of the ``ppq066_*`` quirks), but the
way a straightforward implementation would:

* the graph is lists indexed by op and slot number plus dicts keyed by tensor name, built once
  from the ONNX protobuf (:class:`FloorGraph`, not timed as part of the pipeline, like
  fusekit's graph index);
* the plan is parallel Python lists indexed by slot number (state, link, scheme, visibility)
  mutated in place: no versions, no evolvers, nothing returned when a pass changes nothing;
* every change and refusal appends one small tuple to a log list (fusekit keeps a decision
  log too; the floor formats no reasons);
* the patterns are matched by hand-written walks from the rarest op type of each pattern.

It is written for the benchmark only. ``bench/run.py`` checks on the 10k-op graph that it gives
every slot the same state and the same root as fusekit; :func:`compare` does the check.
Nothing here imports fusekit except :func:`compare`, the platform rule data it reads and
the list of ops that never fold to a constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

# a fact, not an algorithm: the ops that never fold to a constant are fusekit's own list
from fusekit._topology import _NOT_FOLDABLE

# states, numbered as fusekit.QuantState (and PPQ) number them
INITIAL, BAKED, OVERLAPPED, ACTIVATED, PASSIVE, PASSIVE_INIT, PASSIVE_BAKED, FP32 = range(1, 9)
INTERNAL = 3  # Visibility.INTERNAL
OVERLAP, FOLLOW = 0, 1
_FLOAT_ELEM = {0, 1, 10, 11, 16}
_FLOATING_FLAG = 0x8
_INDEX_OUT = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "NonMaxSuppression"}
_BOOL_OUT = {
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "IsNaN",
    "IsInf",
}


class FloorGraph:
    """An ONNX graph as lists (per op, per slot) and dicts (per tensor name)."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.names: list[str] = []
        self.types: list[str] = []
        self.inputs: list[list[str]] = []  # op -> input tensor names ("" omitted)
        self.outputs: list[list[str]] = []
        self.attrs: list[Any] = []  # op -> the NodeProto's attributes (read by Pad's rule)
        self.base: list[int] = []  # op -> first slot number (inputs, then outputs)
        self.slot_op: list[int] = []
        self.slot_tensor: list[str] = []
        self.producer: dict[str, int] = {}  # tensor -> output slot
        self.consumers: dict[str, list[int]] = {}  # tensor -> input slots, in op order
        self.position: dict[str, int] = {}
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.graph_inputs = [v.name for v in g.input]
        self.graph_outputs = {v.name for v in g.output}
        self.elem_type: dict[str, int] = {}
        for v in (*g.input, *g.output, *g.value_info):
            if v.type.HasField("tensor_type"):
                self.elem_type[v.name] = v.type.tensor_type.elem_type
        defined = set(self.inits) | set(self.graph_inputs) | {""}
        for i, node in enumerate(g.node):
            ins, outs = list(node.input), list(node.output)
            if not defined.issuperset(ins):
                raise ValueError("the floor needs a model whose nodes are in topological order")
            defined.update(outs)
            self.names.append(node.name)
            self.types.append(node.op_type)
            self.inputs.append(ins)
            self.outputs.append(outs)
            self.attrs.append(node.attribute)
            self.position[node.name] = i
            self.base.append(len(self.slot_op))
            for t in ins:
                if t:
                    self.consumers.setdefault(t, []).append(len(self.slot_op))
                self.slot_op.append(i)
                self.slot_tensor.append(t)
            for t in outs:
                if t:
                    self.producer[t] = len(self.slot_op)
                self.slot_op.append(i)
                self.slot_tensor.append(t)
        self.constants = set(self.inits)
        self.const_op = [False] * len(self.types)
        for i, t in enumerate(self.types):  # Constant ops, and standard ops of constants only
            ins = [x for x in self.inputs[i] if x]
            if t == "Constant" or (
                ins and t not in _NOT_FOLDABLE and all(x in self.constants for x in ins)
            ):
                self.const_op[i] = True
                self.constants.update(x for x in self.outputs[i] if x)
        self.n_ops = len(self.names)
        self._infer_elem_types()
        self.by_type: dict[str, list[int]] = {}
        for i, t in enumerate(self.types):
            self.by_type.setdefault(t, []).append(i)
        # op -> distinct consumer ops / producer ops, in slot order
        self.down: list[list[int]] = [[] for _ in range(self.n_ops)]
        self.up: list[list[int]] = [[] for _ in range(self.n_ops)]
        for i in range(self.n_ops):
            for t in self.outputs[i]:
                for c in self.consumers.get(t, ()) if t else ():
                    if self.slot_op[c] not in self.down[i]:
                        self.down[i].append(self.slot_op[c])
            for t in self.inputs[i]:
                o = self.producer_op(t)
                if o >= 0 and o not in self.up[i]:
                    self.up[i].append(o)

    def _infer_elem_types(self) -> None:
        """Element types of every tensor, propagated in node order (fusekit.dtypes' rules)."""
        et = self.elem_type
        for name, t in self.inits.items():
            et.setdefault(name, t.data_type)
        for i in range(self.n_ops):
            t = self.types[i]
            ins = self.inputs[i]
            attrs = {a.name: a for a in self.attrs[i]}
            if t in _INDEX_OUT:
                guess = 7
            elif t in _BOOL_OUT:
                guess = 9
            elif t == "Cast":
                guess = attrs["to"].i if "to" in attrs else 0
            elif t == "Constant":
                a = attrs.get("value")
                guess = a.t.data_type if a is not None else (1 if "value_float" in attrs else 7)
            elif t == "ConstantOfShape":
                guess = attrs["value"].t.data_type if "value" in attrs else 1
            elif t in ("Where", "CastLike") and len(ins) > 1:
                guess = et.get(ins[1], 0)
            else:
                first = next((x for x in ins if x), "")
                guess = et.get(first, 0) if first else 0
            for k, out in enumerate(self.outputs[i]):
                if out and out not in et:
                    et[out] = 7 if (t == "TopK" and k == 1) else guess

    def producer_op(self, tensor: str) -> int:
        s = self.producer.get(tensor) if tensor else None
        return -1 if s is None else self.slot_op[s]

    def n_uses(self, op: int) -> int:
        return sum(len(self.consumers.get(t, ())) for t in self.outputs[op] if t)


class Rules:
    """A fusekit rule set copied into plain sets and dicts (the floor never reads a PMap)."""

    def __init__(self, p: Any):
        self.name: str = p.name
        self.quant_types = set(p.quant_types)
        self.computing_types = set(p.computing_types)
        self.epilogue_types = set(p.epilogue_types)
        self.activation_types = set(p.activation_types)
        self.activation_patterns = set(p.activation_patterns)
        self.passive_types = set(p.passive_types)
        self.passive_conditions = dict(p.passive_conditions)
        self.socket_in = {t: r.inputs for t, r in p.sockets.items()}
        self.socket_out = {t: r.outputs for t, r in p.sockets.items()}
        self.weights = dict(p.weights)
        self.bias_types = set(p.bias_types)
        self.bias = p.bias
        self.activation = p.activation
        self.fp32_inputs_from = dict(p.fp32_inputs_from)
        self.alignment = {k: set(v) for k, v in p.alignment.items()}


class FloorPlan:
    """Per-slot quantization state as parallel lists, mutated in place."""

    def __init__(self, n_slots: int, n_ops: int):
        self.platform: list[str | None] = [None] * n_ops
        self.state: list[int] = [0] * n_slots  # 0: op not quantized
        self.link: list[int] = [-1] * n_slots  # parent slot * 2 + kind, or -1
        self.scheme: list[Any] = [None] * n_slots  # (policy, bits, qmin, qmax, exp, axis, round)
        self.visibility: list[int] = [0] * n_slots
        self.floating: list[bool] = [False] * n_slots
        self.log: list[tuple[Any, ...]] = []

    def root(self, s: int) -> int:
        link = self.link
        while link[s] >= 0:
            s = link[s] >> 1
        return s

    def overlap(self, rule: str, ops: Any, a: int, b: int) -> None:
        """PPQ's ``dominated_by`` as fusekit does it: a's group joins b's, a is switched off."""
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        self.link[ra] = self.link[a] = rb * 2 + OVERLAP
        self.state[ra] = self.state[a] = OVERLAPPED
        self.log.append((rule, ops, "overlap", a, b))

    def follow(self, rule: str, ops: Any, a: int, m: int) -> None:
        """PPQ's ``master_by``: a quantizes with m's (not yet calibrated) scale."""
        s = m
        while self.link[s] >= 0:
            s = self.link[s] >> 1
            if s == a:
                self.log.append((rule, ops, "refuse", a, m))
                return
        if self.link[a] != m * 2 + FOLLOW or self.state[a] != PASSIVE_INIT:
            self.link[a] = m * 2 + FOLLOW
            self.state[a] = PASSIVE_INIT  # no scales before calibration
            self.log.append((rule, ops, "follow", a, m))

    def refuse(self, rule: str, ops: Any) -> None:
        self.log.append((rule, ops, "refuse"))


def _scheme(rule: Any, axis: Any = None) -> tuple[Any, ...]:
    return (
        int(rule.policy.flags),
        rule.num_bits,
        rule.quant_min,
        rule.quant_max,
        rule.exponent_bits,
        rule.channel_axis if axis is None else axis,
        int(rule.rounding),
    )


# --------------------------------------------------------------------------------------------
# init_plan(graph, platform, dispatch="all")


def init_plan(g: FloorGraph, p: Rules) -> FloorPlan:
    """Dispatch every op of a quantized type except shape computations, then give every slot
    of a dispatched op its rule's scheme and state."""
    plan = FloorPlan(len(g.slot_op), g.n_ops)
    shape_only = [False] * g.n_ops
    for op in reversed(range(g.n_ops)):
        any_use, all_shape = False, True
        for t in g.outputs[op]:
            if not t:
                continue
            if t in g.graph_outputs:
                all_shape = False
            for c in g.consumers.get(t, ()):
                any_use = True
                co = g.slot_op[c]
                if shape_only[co]:
                    continue
                sock = p.socket_in.get(g.types[co])
                k = c - g.base[co]
                if sock is None or k >= len(sock) or sock[k] == "U":
                    all_shape = False
                    break
        shape_only[op] = any_use and all_shape
    act = _scheme(p.activation)
    bias = _scheme(p.bias.rule)
    act_float = bool(p.activation.policy.flags & _FLOATING_FLAG)
    bias_float = bool(p.bias.rule.policy.flags & _FLOATING_FLAG)
    not_float = {x for x, e in g.elem_type.items() if e not in _FLOAT_ELEM}
    # (type, inputs, outputs) -> the slots' (scheme, state, visibility, floating) lists
    templates: dict[tuple[str, int, int], tuple[list[Any], ...]] = {}
    candidate = [
        g.types[op] in p.quant_types
        and not shape_only[op]
        and not g.const_op[op]
        and not any(x in not_float for x in g.outputs[op])
        for op in range(g.n_ops)
    ]
    # keep the candidate regions that contain a computing op (union-find over candidate edges)
    parent = list(range(g.n_ops))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for op in range(g.n_ops):
        if candidate[op]:
            for x in g.inputs[op]:
                src = g.producer_op(x) if x else -1
                if src >= 0 and candidate[src]:
                    parent[find(op)] = find(src)
    anchored = {
        find(op) for op in range(g.n_ops) if candidate[op] and g.types[op] in p.computing_types
    }
    for op in range(g.n_ops):
        t = g.types[op]
        if not candidate[op] or find(op) not in anchored:
            continue
        plan.platform[op] = p.name
        n_in, n_out = len(g.inputs[op]), len(g.outputs[op])
        tpl = templates.get((t, n_in, n_out))
        if tpl is None:
            sock_in, sock_out = p.socket_in.get(t, ()), p.socket_out.get(t, ())
            fp32_from = p.fp32_inputs_from.get(t, n_in)
            n = n_in + n_out
            tpl = templates[(t, n_in, n_out)] = (
                [act] * n,
                [INITIAL] * n,
                [2] * n,
                [act_float] * n,
            )
            for k in range(n_in):
                if (k < len(sock_in) and sock_in[k] != "U") or k >= fp32_from:
                    tpl[1][k] = FP32
                elif k == 2 and n_in > 2 and t in p.bias_types:
                    tpl[0][k], tpl[1][k] = bias, int(p.bias.state)
                    tpl[2][k], tpl[3][k] = int(p.bias.visibility), bias_float
            for k in range(n_out):
                if k < len(sock_out) and sock_out[k] != "U":
                    tpl[1][n_in + k] = FP32
        b = g.base[op]
        e = b + n_in + n_out
        plan.scheme[b:e], plan.state[b:e], plan.visibility[b:e], plan.floating[b:e] = tpl
        x = g.inputs[op][1] if n_in > 1 else ""
        if t in p.weights and x in g.constants and tpl[1][1] != FP32:  # a constant weight
            w = p.weights[t]
            axis = w.channel_axis
            if axis is not None and axis < 0:
                init = g.inits.get(x)
                axis += len(init.dims) if init is not None else 2
            if t == "Gemm" and w.policy.flags & 0x2:  # per-channel: B's output axis
                ta = {a.name: a.i for a in g.attrs[op]}.get("transB", 0)
                axis = 0 if ta else 1
            plan.scheme[b + 1] = _scheme(w, axis)
            plan.floating[b + 1] = bool(w.policy.flags & _FLOATING_FLAG)
        for k in range(b, e):
            if g.slot_tensor[k] in not_float:
                plan.scheme[k], plan.state[k] = act, FP32
                plan.visibility[k], plan.floating[k] = 2, act_float
    return plan


# --------------------------------------------------------------------------------------------
# fusion passes


def _nonconst_input(g: FloorGraph, op: int) -> int:
    found = -1
    for k, t in enumerate(g.inputs[op]):
        if t and t not in g.constants:
            if found >= 0:
                return -1
            found = g.base[op] + k
    return found


def attached_ops(g: FloorGraph, p: Rules) -> set[int]:
    """Computing ops and the epilogues (BN, bias Add, ...) folded into them."""
    attached: set[int] = set()
    for op in range(g.n_ops):
        t = g.types[op]
        if t in p.computing_types:
            attached.add(op)
        elif t in p.epilogue_types:
            s = _nonconst_input(g, op)
            if s < 0:
                continue
            src = g.producer_op(g.slot_tensor[s])
            if src < 0 or src not in attached or len(g.outputs[src]) != 1:
                continue
            out = g.outputs[src][0]
            cons = g.consumers.get(out, [])
            if out and out not in g.graph_outputs and cons == [s]:
                attached.add(op)
    return attached


def epilogue(g: FloorGraph, plan: FloorPlan, p: Rules, attached: set[int]) -> None:
    st = plan.state
    for op in sorted(attached):
        if g.types[op] not in p.epilogue_types or g.types[op] in p.computing_types:
            continue
        s = _nonconst_input(g, op)
        src_out = g.producer[g.slot_tensor[s]]
        src = g.slot_op[src_out]
        ids = (src, op)
        if plan.platform[op] is None or plan.platform[src] != plan.platform[op]:
            plan.refuse("epilogue", ids)
            continue
        out = g.base[op] + len(g.inputs[op])
        if st[out] == FP32 or st[src_out] == FP32:
            plan.refuse("epilogue", ids)
            continue
        plan.overlap("epilogue", ids, src_out, out)
        plan.overlap("epilogue", ids, s, out)
        for k in range(g.base[op], g.base[op] + len(g.inputs[op])):
            if k != s and st[k] != FP32:
                plan.overlap("epilogue", ids, k, out)


def _producers(g: FloorGraph, op: int) -> list[int]:
    """Distinct producer ops of ``op``'s inputs, Constant ops excepted."""
    return [o for o in g.up[op] if not g.const_op[o]]


def _exclusive(g: FloorGraph, ids: tuple[int, ...], preds: list[int], succs: list[bool]) -> bool:
    """No op of the match reads from or feeds an op outside it (nor a graph output)."""
    for i, op in enumerate(ids):
        if preds[i]:
            producers = _producers(g, op)
            if len(producers) != preds[i] or any(x not in ids for x in producers):
                return False
        if succs[i] and (
            any(x not in ids for x in g.down[op])
            or any(t in g.graph_outputs for t in g.outputs[op] if t)
        ):
            return False
    return True


def activation(g: FloorGraph, plan: FloorPlan, p: Rules, attached: set[int]) -> None:
    st = plan.state
    matches: list[tuple[int, int]] = []
    for a in sorted(o for t in p.activation_types for o in g.by_type.get(t, ())):
        t0 = g.inputs[a][0] if g.inputs[a] else ""
        c = g.producer_op(t0)
        if c >= 0 and c != a and c in attached:
            matches.append((c, a))
    matches.sort()
    for c, a in matches:
        ids = (c, a)
        if (
            not _exclusive(g, ids, [0, 1], [True, False])
            or plan.platform[c] is None
            or plan.platform[a] is None
            or plan.platform[a] != plan.platform[c]
            or g.n_uses(c) != 1
        ):
            plan.refuse("activation", ids)
            continue
        n_up = sum(
            1 for t in g.inputs[a] if g.producer_op(t) >= 0 and not g.const_op[g.producer_op(t)]
        )
        if n_up != 1:
            plan.refuse("activation", ids)
            continue
        a_out = g.base[a] + len(g.inputs[a])
        c_out = a_in = -1
        for k, t in enumerate(g.outputs[c]):
            for s in g.consumers.get(t, ()) if t else ():
                if g.slot_op[s] == a and c_out < 0:
                    c_out, a_in = g.base[c] + len(g.inputs[c]) + k, s
        if st[c_out] == FP32 or st[a_out] == FP32:
            plan.refuse("activation", ids)
            continue
        plan.overlap("activation", ids, c_out, a_out)
        plan.overlap("activation", ids, a_in, a_out)


# Composite activations: (rule, node types, edges), node 0 is the computing op. Same order and
# shapes as fusekit.passes.composite_patterns.
_HARDSWISH = [
    (
        "hardswish",
        [None, {"Add"}, {"Clip", "Relu6"}, {"Div", "Mul"}, {"Mul"}],
        [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)],
    ),
    (
        "hardswish",
        [None, {"Add"}, {"Clip"}, {"Mul"}, {"Div", "Mul"}],
        [(0, 1), (1, 2), (2, 3), (0, 3), (3, 4)],
    ),
    ("hardswish", [None, {"HardSigmoid"}, {"Mul"}], [(0, 1), (1, 2), (0, 2)]),
]
_COMPOSITES = {
    "swish": [("swish", [None, {"Sigmoid"}, {"Mul"}], [(0, 1), (1, 2), (0, 2)])],
    "mish": [("mish", [None, {"Softplus"}, {"Tanh"}, {"Mul"}], [(0, 1), (1, 2), (2, 3), (0, 3)])],
    "hardswish": _HARDSWISH,
    "gelu": [
        (
            "gelu",
            [None, {"Div", "Mul"}, {"Erf"}, {"Add"}, {"Mul"}, {"Mul"}],
            [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4), (4, 5)],
        ),
        (
            "gelu",
            [None, {"Div", "Mul"}, {"Erf"}, {"Add"}, {"Mul"}, {"Mul"}],
            [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 5)],
        ),
    ],
}


def _match(
    g: FloorGraph, types: list[Any], edges: list[tuple[int, int]], attached: set[int]
) -> list[tuple[int, ...]]:
    """Every injective assignment of ops to the nodes respecting the edges, sorted.

    Starts from the ops of the rarest node type and binds the other nodes by walking one edge
    from an already bound node (consumers or producers), checking the other edges on the way.
    """
    n = len(types)
    counts = [
        len(attached) if t is None else sum(len(g.by_type.get(x, ())) for x in t) for t in types
    ]
    anchor = counts.index(min(counts))
    order = [anchor]
    while len(order) < n:
        for s, d in edges:
            if s in order and d not in order:
                order.append(d)
            elif d in order and s not in order:
                order.append(s)
    steps = []
    for k in range(1, n):
        i = order[k]
        via = next(
            (s, d) for s, d in edges if (d == i and s in order[:k]) or (s == i and d in order[:k])
        )
        checks = [
            (s, d) for s, d in edges if (s == i and d in order[:k]) or (d == i and s in order[:k])
        ]
        steps.append((i, via, checks))
    found: list[tuple[int, ...]] = []
    bound = [-1] * n

    def accepts(i: int, c: int) -> bool:
        return c in attached if types[i] is None else g.types[c] in types[i]

    def extend(k: int) -> None:
        if k == n:
            found.append(tuple(bound))
            return
        i, (s, d), checks = steps[k - 1]
        for c in g.down[bound[s]] if d == i else g.up[bound[d]]:
            if c in bound or not accepts(i, c):
                continue
            bound[i] = c
            if all(bound[y] in g.down[bound[x]] for x, y in checks):
                extend(k + 1)
            bound[i] = -1

    start = (
        attached
        if types[anchor] is None
        else (o for t in types[anchor] for o in g.by_type.get(t, ()))
    )
    for a in start:
        bound[anchor] = a
        extend(1)
    bound[anchor] = -1
    found.sort()
    return found


def composite(g: FloorGraph, plan: FloorPlan, p: Rules, attached: set[int]) -> None:
    st = plan.state
    done: set[int] = set()
    for name in ("swish", "mish", "hardswish", "gelu"):
        if name not in p.activation_patterns:
            continue
        for rule, types, edges in _COMPOSITES[name]:
            preds = [len({s for s, d in edges if d == i}) for i in range(len(types))]
            succs = [any(s == i for s, _ in edges) for i in range(len(types))]
            for ids in _match(g, types, edges, attached):
                if any(o in done for o in ids[1:]):
                    continue
                plat = plan.platform[ids[0]]
                if (
                    not _exclusive(g, ids, preds, succs)
                    or plat is None
                    or any(plan.platform[o] != plat for o in ids)
                ):
                    plan.refuse(rule, ids)
                    continue
                last = ids[-1]
                root = g.base[last] + len(g.inputs[last])
                if st[root] == FP32:
                    plan.refuse(rule, ids)
                    continue
                slots = [g.base[ids[0]] + len(g.inputs[ids[0]])]
                for o in ids[1:-1]:
                    b = g.base[o]
                    slots += [s for s in range(b, b + len(g.inputs[o])) if st[s] != FP32]
                    slots.append(b + len(g.inputs[o]))
                b = g.base[last]
                slots += [s for s in range(b, b + len(g.inputs[last])) if st[s] != FP32]
                for s in slots:
                    plan.overlap(rule, ids, s, root)
                done.update(ids[1:])


def _pad_constant_zero(g: FloorGraph, op: int) -> bool:
    mode, value = "constant", None
    for a in g.attrs[op]:
        if a.name == "mode":
            mode = a.s.decode("utf-8", "replace")
        elif a.name == "value":
            value = a.f
    if mode != "constant":
        return False
    ins = g.inputs[op]
    if len(ins) > 2 and ins[2]:
        init = g.inits.get(ins[2])
        if init is None:
            return False
        value = numpy_helper.to_array(init)
    return value is None or not np.any(np.asarray(value) != 0)


def passive(g: FloorGraph, plan: FloorPlan, p: Rules) -> None:
    st = plan.state
    todo = sorted(o for t in p.passive_types for o in g.by_type.get(t, ()))
    for op in todo:
        if not g.inputs[op]:
            continue
        src = g.producer_op(g.inputs[op][0])
        ids = (op,)
        if src < 0 or g.const_op[src] or plan.platform[op] is None:
            plan.refuse("passive", ids)
            continue
        if plan.platform[op] != plan.platform[src]:
            plan.refuse("passive", ids)
            continue
        if p.passive_conditions.get(g.types[op]) == "pad_constant_zero" and not (
            _pad_constant_zero(g, op)
        ):
            plan.refuse("passive", ids)
            continue
        s_in = g.base[op]
        if st[s_in] == FP32:
            plan.refuse("passive", ids)
            continue
        first = s_in + len(g.inputs[op])
        for s_out in range(first, first + len(g.outputs[op])):
            if st[s_out] != FP32:
                plan.overlap("passive", ids, s_out, s_in)


def simplify(g: FloorGraph, plan: FloorPlan) -> None:
    st, scheme = plan.state, plan.scheme
    for op in range(g.n_ops):
        plat = plan.platform[op]
        if plat is None:
            continue
        first = g.base[op] + len(g.inputs[op])
        for k, t in enumerate(g.outputs[op]):
            src = first + k
            if not t or st[src] == FP32:
                continue
            for c in g.consumers.get(t, ()):
                co = g.slot_op[c]
                if plan.platform[co] == plat and st[c] == INITIAL and scheme[c] == scheme[src]:
                    plan.overlap("simplify", (op, co), c, src)
    for t in g.graph_inputs:  # one scale for the quantized readers of a graph input
        if t in g.inits:
            continue
        first_c = -1
        # by consumer name and input index, as fusekit does (independent of the node order)
        readers = sorted(
            g.consumers.get(t, ()), key=lambda c: (g.names[g.slot_op[c]], c - g.base[g.slot_op[c]])
        )
        for c in readers:
            co = g.slot_op[c]
            if plan.platform[co] is None or st[c] != INITIAL:
                continue
            if first_c < 0:
                first_c = c
            elif plan.platform[g.slot_op[first_c]] == plan.platform[co] and (
                scheme[c] == scheme[first_c]
            ):
                plan.overlap("simplify-input", (g.slot_op[first_c], co), c, first_c)


def alignment(g: FloorGraph, plan: FloorPlan, p: Rules) -> None:
    """Default options: Align to Large (elementwise), Align to Output (Concat, Resize),
    producers pulled in (force_overlap)."""
    st, link = plan.state, plan.link
    groups = p.alignment
    methods: dict[str, str | None] = {}
    for group, method in (
        ("resize", "output"),
        ("pooling", None),
        ("concat", "output"),
        ("elementwise", "large"),
    ):  # later groups win, as in fusekit's elementwise-first test
        methods.update(dict.fromkeys(groups.get(group, ()), method))

    def alignable(s: int) -> bool:
        return st[s] not in (0, FP32) and not plan.floating[s]

    for op in range(g.n_ops):
        method = methods.get(g.types[op])
        if method is None or plan.platform[op] is None:
            continue
        ids = (op,)
        b, n_in = g.base[op], len(g.inputs[op])
        folded = n_in and g.outputs[op] and g.inputs[op][0] and st[b] == OVERLAPPED
        if folded and plan.root(b) == plan.root(b + n_in):
            plan.refuse(method, ids)  # folded into a kernel: nothing to align
            continue
        if method == "output":
            master = b + n_in
            for s in range(b, b + n_in):
                if alignable(s):
                    plan.follow("align", ids, s, master)
        else:
            if not n_in:
                continue
            master = b
            inputs = [s for s in range(b, b + n_in) if alignable(s)]
            if len(inputs) < 2 or inputs[0] != master:
                if len(inputs) >= 2:
                    plan.refuse("align", ids)
                continue
            done = link[master] < 0 and all(link[s] == master * 2 + FOLLOW for s in inputs[1:])
            if not (done and st[master] in (PASSIVE, PASSIVE_INIT)):
                if link[master] >= 0:
                    link[master] = -1
                    plan.log.append(("align", ids, "unlink", master))
                if st[master] != PASSIVE_INIT:
                    st[master] = PASSIVE_INIT
                    plan.log.append(("align", ids, "config", master))
                for s in inputs[1:]:
                    plan.follow("align", ids, s, master)
        # pull the producers of the inputs into the master's group
        consumed = set(g.inputs[op])
        for t in g.inputs[op]:
            up = g.producer_op(t)
            if up < 0 or plan.platform[up] is None:
                continue
            ub = g.base[up] + len(g.inputs[up])
            for k, ut in enumerate(g.outputs[up]):
                s = ub + k
                if not ut or ut not in consumed or not alignable(s):
                    continue
                target = s
                while link[target] >= 0 and link[target] & 1 == OVERLAP:
                    target = link[target] >> 1
                if plan.root(target) == plan.root(master):
                    continue
                if link[target] >= 0 and link[target] & 1 == FOLLOW:
                    owner = g.slot_op[link[target] >> 1]
                    if owner == up or g.names[owner] <= g.names[op]:
                        plan.refuse("align", (op, up))
                        continue
                plan.follow("align", (op, up), target, master)


def passive_parameters(g: FloorGraph, plan: FloorPlan, p: Rules) -> None:
    """Before calibration: biases wait for scales; Clip bounds and Pad values follow input 0."""
    st = plan.state
    for op in range(g.n_ops):
        if plan.platform[op] is None:
            continue
        t, b, n_in = g.types[op], g.base[op], len(g.inputs[op])
        if t in p.bias_types and n_in == 3:
            if st[b + 2] in (PASSIVE, PASSIVE_INIT):
                plan.refuse("bias", (op,))  # the input or weight has no scale yet
            continue
        if t == "Clip" and n_in > 1:
            ks = range(1, n_in)
        elif t == "Pad" and n_in == 3:
            ks = range(2, 3)
        else:
            continue
        if st[b] == FP32:
            plan.refuse("bounds", (op,))
            continue
        for k in ks:
            x = g.inputs[op][k]
            if not x:
                continue
            if x not in g.constants:
                plan.refuse("bounds", (op,))
                continue
            if plan.visibility[b + k] != INTERNAL:
                plan.visibility[b + k] = INTERNAL
                plan.log.append(("bounds", (op,), "config", b + k))
            plan.follow("bounds", (op,), b + k, b)


def pipeline(g: FloorGraph, p: Rules) -> FloorPlan:
    """``init_plan`` then every pass of ``default_pipeline`` (no calibration), in place."""
    plan = init_plan(g, p)
    if p.epilogue_types:
        attached = attached_ops(g, p)
        epilogue(g, plan, p, attached)
    else:
        attached = {o for t in p.computing_types for o in g.by_type.get(t, ())}
    if p.activation_types:
        activation(g, plan, p, attached)
    composite(g, plan, p, attached)
    passive(g, plan, p)
    simplify(g, plan)
    alignment(g, plan, p)
    passive_parameters(g, plan, p)
    return plan


STAGES = ("init", "epilogue", "activation", "composite", "passive", "simplify", "alignment",
          "parameters")  # fmt: skip


def run_stages(g: FloorGraph, p: Rules) -> tuple[FloorPlan, list[tuple[float, float]]]:
    """The pipeline with the (wall, cpu) seconds of each stage of :data:`STAGES`."""
    import time

    times: list[tuple[float, float]] = []

    def timed(fn: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - w, time.process_time() - c))
        return out

    plan: FloorPlan = timed(lambda: init_plan(g, p))
    attached: set[int] = set()

    def fold() -> None:
        nonlocal attached
        if p.epilogue_types:
            attached = attached_ops(g, p)
            epilogue(g, plan, p, attached)
        else:
            attached = {o for t in p.computing_types for o in g.by_type.get(t, ())}

    timed(fold)
    timed(lambda: activation(g, plan, p, attached) if p.activation_types else None)
    timed(lambda: composite(g, plan, p, attached))
    timed(lambda: passive(g, plan, p))
    timed(lambda: simplify(g, plan))
    timed(lambda: alignment(g, plan, p))
    timed(lambda: passive_parameters(g, plan, p))
    return plan, times


def compare(fg: FloorGraph, plan: FloorPlan, fk_plan: Any) -> list[str]:
    """Slots whose state or root differ between the floor's plan and a fusekit plan (empty
    when they agree on every slot of every quantized op, and on which ops are quantized)."""
    from fusekit import Slot

    idx = fk_plan.graph.index
    problems: list[str] = []

    def key(s: int) -> Slot:
        op = fg.slot_op[s]
        k = s - fg.base[op]
        n_in = len(fg.inputs[op])
        return Slot(fg.names[op], "in", k) if k < n_in else Slot(fg.names[op], "out", k - n_in)

    for op in range(fg.n_ops):
        if (plan.platform[op] is None) != (not fk_plan.is_quantized(fg.names[op])):
            problems.append(f"{fg.names[op]}: quantized differs")
    for s in range(len(fg.slot_op)):
        if plan.platform[fg.slot_op[s]] is None:
            continue
        slot = key(s)
        if idx.slot_id(slot) < 0:
            problems.append(f"{slot}: unknown to fusekit")
            continue
        if int(fk_plan[slot].state) != plan.state[s]:
            problems.append(f"{slot}: state {plan.state[s]} vs fusekit {fk_plan[slot].state!r}")
        if fk_plan.root(slot) != key(plan.root(s)):
            problems.append(f"{slot}: root {key(plan.root(s))} vs fusekit {fk_plan.root(slot)}")
    return problems
