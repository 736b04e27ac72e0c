"""fusekit: decide where a quantized ONNX network really needs quantization.

The public API, re-exported here:

* the graph value: :func:`load`, :func:`save`, :func:`to_model`, :class:`Graph`, :class:`Op`,
  :class:`Slot`, :func:`check_invariants`;
* quantization plans: :class:`QuantPlan`, :class:`TensorQuantConfig`, :class:`QuantState`, ...;
* errors: :class:`FusekitError` and its subclasses.
"""

from ._version import __version__
from .errors import (
    DanglingInput,
    DuplicateProducer,
    ExportError,
    FusekitError,
    GraphCycle,
    InvalidGraph,
    InvalidModel,
    InvalidPlan,
    InvalidPlatform,
    MissingDependency,
    ModelNotFound,
    NotCalibrated,
    SharingCycle,
    UnknownOp,
    UnknownPlatform,
    UnknownSlot,
)
from .graph import (
    Attributes,
    Graph,
    GraphIndex,
    Initializer,
    Op,
    OpaqueAttribute,
    Slot,
    Tensor,
    TensorType,
    check_invariants,
)
from .onnx_io import load, save, to_model
from .quant import (
    LinkKind,
    NotARoot,
    PlanEvolver,
    QuantPlan,
    QuantPolicy,
    QuantProperty,
    QuantState,
    RoundingPolicy,
    SlotDiff,
    TensorQuantConfig,
    Visibility,
    diff,
)

__all__ = [
    "Attributes",
    "DanglingInput",
    "DuplicateProducer",
    "ExportError",
    "FusekitError",
    "Graph",
    "GraphCycle",
    "GraphIndex",
    "Initializer",
    "InvalidGraph",
    "InvalidModel",
    "InvalidPlan",
    "InvalidPlatform",
    "LinkKind",
    "MissingDependency",
    "ModelNotFound",
    "NotARoot",
    "NotCalibrated",
    "Op",
    "OpaqueAttribute",
    "PlanEvolver",
    "QuantPlan",
    "QuantPolicy",
    "QuantProperty",
    "QuantState",
    "RoundingPolicy",
    "SharingCycle",
    "Slot",
    "SlotDiff",
    "Tensor",
    "TensorQuantConfig",
    "TensorType",
    "UnknownOp",
    "UnknownPlatform",
    "UnknownSlot",
    "Visibility",
    "__version__",
    "check_invariants",
    "diff",
    "load",
    "save",
    "to_model",
]
