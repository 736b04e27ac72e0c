"""The fusion passes: pure functions from (graph, plan) to a new plan and a decision log.

Each pass is a frozen value whose fields are its options (``ActivationFusion("trt_int8")``);
``pass_.run(graph, plan)`` returns a :class:`FusionResult` and never modifies its inputs. When
nothing changes, ``result.plan is plan``. Every pass derives from :class:`FusionPass` (one
``run`` with the prologue, the pass's ``apply(ctx)``, the laws it ``ensures``).
"""

from ._core import (
    DEBUG_ENV,
    Decision,
    Explanation,
    FusionPass,
    FusionResult,
    PassContext,
    PipelineResult,
    Recorder,
    SlotChange,
    explain,
    replay,
)
from .activation import (
    ActivationFusion,
    CompositeActivationFusion,
    activation_fusion,
    composite_patterns,
)
from .alignment import ALIGN_METHODS, Alignment, alignment
from .epilogue import EpilogueFusion, attached_ops
from .parameters import PassiveParameters, passive_parameters
from .passive import PASSIVE_CONDITIONS, PassiveFusion, passive_fusion
from .pipeline import Pass, Pipeline, default_pipeline, fuse
from .simplify import Simplify, simplify

__all__ = [
    "ALIGN_METHODS",
    "DEBUG_ENV",
    "PASSIVE_CONDITIONS",
    "ActivationFusion",
    "Alignment",
    "CompositeActivationFusion",
    "Decision",
    "EpilogueFusion",
    "Explanation",
    "FusionPass",
    "FusionResult",
    "Pass",
    "PassContext",
    "PassiveFusion",
    "PassiveParameters",
    "Pipeline",
    "PipelineResult",
    "Recorder",
    "Simplify",
    "SlotChange",
    "activation_fusion",
    "alignment",
    "attached_ops",
    "composite_patterns",
    "default_pipeline",
    "explain",
    "fuse",
    "passive_fusion",
    "passive_parameters",
    "replay",
    "simplify",
]
