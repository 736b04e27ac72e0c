"""The exceptions fusekit raises.

Every error fusekit raises on purpose derives from :class:`FusekitError`, and also from the
builtin exception a caller would expect (``InvalidModel`` is a ``ValueError``, ``UnknownSlot`` a
``KeyError``...), so ``except ValueError`` keeps working for code that does not know fusekit.
Errors carry the facts as fields (``path``, ``op``, ``slot``, ``problems``) and say in their
message what went wrong and where, so a user never has to read a protobuf traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "AlreadyQuantized",
    "CliError",
    "DanglingInput",
    "DuplicateProducer",
    "ExportError",
    "FusekitError",
    "GraphCycle",
    "InvalidData",
    "InvalidGraph",
    "InvalidModel",
    "InvalidPlan",
    "InvalidPlatform",
    "MissingDependency",
    "ModelNotFound",
    "ModelRunError",
    "NotAPass",
    "NotARoot",
    "NotCalibrated",
    "PatternError",
    "PlanGraphMismatch",
    "PostconditionError",
    "ReportError",
    "SharingCycle",
    "UnknownLaw",
    "UnknownOp",
    "UnknownPlatform",
    "UnknownSlot",
    "UnsupportedModel",
    "UnsupportedQuantization",
]


class FusekitError(Exception):
    """Root of every error fusekit raises on purpose."""


class InvalidGraph(FusekitError, ValueError):
    """A graph breaks a structural rule (one producer per tensor, acyclic, ...).

    ``problems`` lists every violation found, one plain sentence each.
    """

    def __init__(self, message: str, problems: Sequence[str] = (), source: str | None = None):
        self.problems = tuple(problems) or (message,)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + message)


class DanglingInput(InvalidGraph):
    """An op consumes a tensor that nothing produces (no op, graph input or initializer)."""


class DuplicateProducer(InvalidGraph):
    """Two producers (ops, graph inputs or initializers) write the same tensor name."""


class GraphCycle(InvalidGraph):
    """The ops cannot be ordered: some op (indirectly) consumes its own output."""


class InvalidModel(FusekitError, ValueError):
    """A file or byte string is not a usable ONNX model."""

    def __init__(self, message: str, source: str | None = None):
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + message)


class UnsupportedModel(InvalidModel):
    """A valid model fusekit cannot quantize correctly (float16 tensors): refused, not guessed."""


class UnsupportedQuantization(UnsupportedModel):
    """A quantized model whose quantization fusekit cannot read (QOperator nodes, block-wise
    Q/DQ, computed scales): refused by :func:`fusekit.load_quantized`, naming what it is."""


class ModelNotFound(InvalidModel, FileNotFoundError):
    """The model path does not exist."""


class UnknownOp(FusekitError, KeyError):
    """An op name that the graph does not have."""

    def __init__(self, op: str, where: str = "graph"):
        self.op = op
        super().__init__(f"no op named {op!r} in the {where}")

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownSlot(FusekitError, KeyError):
    """A slot key that does not address an input or output of an op in the graph/plan."""

    def __init__(self, slot: object, why: str = ""):
        self.slot = slot
        super().__init__(f"unknown slot {slot}" + (f": {why}" if why else ""))

    def __str__(self) -> str:
        return str(self.args[0])


class SharingCycle(FusekitError, ValueError):
    """Linking two slots would make a slot (indirectly) its own master.

    ``chain`` is the link path that would close the cycle, first element the slot being linked.
    """

    def __init__(self, chain: Sequence[object]):
        self.chain = tuple(chain)
        text = " -> ".join(str(s) for s in self.chain)
        super().__init__(f"sharing cycle: {text}")


def _located(message: str, *where: str | None) -> str:
    """``message`` prefixed by the first location given (``"plan.ops['conv']: bad"``)."""
    for w in where:
        if w:
            return f"{w}: {message}"
    return message


class InvalidPlan(FusekitError, ValueError):
    """A quantization plan (or its JSON form) is malformed.

    The fields say where, and the message starts with the most precise of them: ``path`` is
    the JSON path of the bad field, rooted at the file or source name
    (``"p.json.links['a|out|0']"``); ``slot`` the slot concerned (a :class:`~fusekit.Slot` or
    its text); ``file`` the plan file read (None for in-memory data). ``reason`` is the
    message without the location.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        slot: object = None,
        file: str | None = None,
    ):
        self.reason = message
        self.path = path
        self.slot = slot
        self.file = file
        super().__init__(_located(message, path, None if slot is None else str(slot), file))


class NotARoot(InvalidPlan, PermissionError):
    """Setting a scale on a slot that reads its scale from another slot (as PPQ forbids).

    ``slot`` is the slot refused, ``root`` the slot whose scale it uses.
    """

    def __init__(self, message: str, *, slot: object = None, root: object = None):
        self.root = root
        super().__init__(message, slot=slot)


class PlanGraphMismatch(InvalidPlan):
    """A plan (or plan file) was made for another graph than the one it is used with.

    ``difference`` names the first structural difference found (an op missing, another type,
    other wiring, other counts), so the user sees *why* the plan does not fit.
    """

    def __init__(self, message: str, difference: str = "", *, file: str | None = None):
        self.difference = difference
        super().__init__(message, file=file)


class InvalidPlatform(FusekitError, ValueError):
    """A platform rule set is malformed: unknown field, unknown op type, bad value.

    ``platform`` names the rule set, ``field`` the rule field (``"activation_types"``,
    ``"elementwise"``), ``file`` the rule file read; the message starts with the file, then
    ``platform 'NAME'``, when they are given. ``reason`` is the message without them.
    """

    def __init__(
        self,
        message: str,
        *,
        platform: str | None = None,
        field: str | None = None,
        file: str | None = None,
    ):
        self.reason = message
        self.platform = platform
        self.field = field
        self.file = file
        where = ": ".join(w for w in (file, f"platform {platform!r}" if platform else None) if w)
        super().__init__(_located(message, where))


class UnknownPlatform(FusekitError, KeyError):
    """A platform name that is not registered."""

    def __init__(self, name: str, known: Sequence[str] = ()):
        self.name = name
        hint = f"; registered: {', '.join(known)}" if known else ""
        super().__init__(f"unknown platform {name!r}{hint}")

    def __str__(self) -> str:
        return str(self.args[0])


class NotCalibrated(FusekitError, ValueError):
    """An export or derivation needs a scale that a slot does not have yet."""

    def __init__(self, message: str, slot: object = None):
        self.slot = slot
        super().__init__(message)


class PatternError(FusekitError, ValueError):
    """A pattern is malformed (unknown node in an edge, a cycle, disconnected nodes)."""


class CliError(FusekitError, ValueError):
    """A command-line usage problem found after parsing (a missing file, a bad combination)."""


class UnknownLaw(FusekitError, KeyError):
    """A law name that :data:`fusekit.laws.LAWS` does not have (in ``check`` or a pass's
    ``ensures``). ``law`` is the name asked for, ``known`` the registered names."""

    def __init__(self, law: str, known: Sequence[str] = ()):
        self.law = law
        self.known = tuple(known)
        hint = f"; known: {', '.join(self.known)}" if self.known else ""
        super().__init__(f"unknown law {law!r}{hint}")

    def __str__(self) -> str:
        return str(self.args[0])


class NotAPass(FusekitError, TypeError):
    """A pipeline was given something that is not a pass (no ``name`` or no ``run``).

    ``value`` is the object refused.
    """

    def __init__(self, value: object, where: str = "a pipeline"):
        self.value = value
        super().__init__(
            f"{value!r} is not a pass (needs .name and .run(graph, plan)); {where} holds passes"
        )


class PostconditionError(FusekitError, AssertionError):
    """A pass broke a law it declares in ``ensures`` (found by :func:`fusekit.testing.check_pass`
    or by the debug mode, ``FUSEKIT_CHECK_ENSURES=1``).

    ``pass_name`` names the pass, ``violations`` lists every broken law as
    :class:`~fusekit.laws.Violation` values. An ``AssertionError`` like the other law checks.
    """

    def __init__(self, pass_name: str, violations: Sequence[object]):
        self.pass_name = pass_name
        self.violations = tuple(violations)
        shown = "\n  ".join(str(v) for v in self.violations[:20])
        more = len(self.violations) - 20
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{pass_name} broke a law it ensures ({len(self.violations)} violation(s)):"
            f"\n  {shown}{tail}"
        )


class ExportError(FusekitError, RuntimeError):
    """Export could not produce a valid model; nothing was written."""


class MissingDependency(FusekitError, ImportError):
    """An optional dependency (onnxruntime, hypothesis) is needed for this feature."""


class InvalidData(FusekitError, ValueError):
    """Calibration or evaluation data that does not fit the model (missing input, bad shape...)."""


class ModelRunError(FusekitError, RuntimeError):
    """onnxruntime refused to load or run a model; the message says which model and why."""


class ReportError(FusekitError, ValueError):
    """An argument of the HTML report is not something a report can be made of."""


class AlreadyQuantized(FusekitError, ValueError):
    """The model already holds quantization nodes (Q/DQ, QLinear*, integer kernels).

    fusekit plans the quantization of a *float* model; quantizing a quantized one again wraps
    every DequantizeLinear in a new Q/DQ pair and reports accuracy against the quantized model
    as if it were the float one. ``counts`` is ``{op_type: number}`` of the quantization nodes
    found; ``source`` names the model.
    """

    def __init__(self, counts: Mapping[str, int], source: str | None = None):
        self.counts = dict(counts)
        self.source = source
        qdq = sum(n for t, n in self.counts.items() if t in ("QuantizeLinear", "DequantizeLinear"))
        other = [f"{n} {t}" for t, n in sorted(self.counts.items()) if t not in _QDQ_TYPES]
        parts = ([f"{qdq} QuantizeLinear/DequantizeLinear nodes"] if qdq else []) + other
        prefix = f"{source}: " if source else ""
        super().__init__(
            f"{prefix}already quantized: {', '.join(parts)}; fusekit quantizes float models, "
            "give it the float model this one was made from"
            + (
                " (or check this model's placement: 'fusekit audit MODEL --platform P', "
                "re-place it: 'fusekit fix MODEL --platform P -o OUT.onnx')"
                if qdq
                else ""
            )
        )


_QDQ_TYPES = ("QuantizeLinear", "DequantizeLinear")
