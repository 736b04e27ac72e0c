"""Pipelines: compositions of passes that are themselves values, and :func:`fuse`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import attrs

from .._util import without_gc
from ..errors import NotAPass
from ..graph import Graph
from ..platforms import Platform, get_platform
from ..quant import QuantPlan, check_plan_graph
from ._core import FusionResult, PipelineResult
from .activation import ActivationFusion, CompositeActivationFusion
from .alignment import Alignment
from .epilogue import EpilogueFusion
from .parameters import PassiveParameters
from .passive import PassiveFusion
from .simplify import Simplify

__all__ = ["Pass", "Pipeline", "default_pipeline", "fuse"]


@runtime_checkable
class Pass(Protocol):
    """Anything with a ``name`` and ``run(graph, plan) -> FusionResult`` is a pass.

    fusekit's own passes derive from :class:`~fusekit.passes.FusionPass`; a :class:`Pipeline`
    is a pass too (its :class:`PipelineResult` is a :class:`FusionResult`).
    """

    name: str

    def run(self, graph: Graph, plan: QuantPlan) -> FusionResult:
        """Return the new plan and the decisions."""
        ...


def _as_passes(value: Any) -> tuple[Any, ...]:
    passes = tuple(value)
    for p in passes:
        if not isinstance(p, Pass):
            raise NotAPass(p)
    return passes


@attrs.frozen
class Pipeline:
    """A sequence of passes, run in order; its repr is its spec."""

    passes: tuple[Any, ...] = attrs.field(converter=_as_passes)

    name = "pipeline"

    @without_gc
    def run(self, graph: Graph, plan: QuantPlan) -> PipelineResult:
        """Run every pass on the previous one's plan (a nested pipeline's results are flattened
        into this one's)."""
        check_plan_graph(plan, graph, self.name)  # also with no passes; each pass checks again
        results: list[FusionResult] = []
        current = plan
        for p in self.passes:
            r = p.run(graph, current)
            if isinstance(r, PipelineResult):
                results.extend(r.results)
                current = r.plan
            else:
                results.append(r)
                current = r.plan
        return PipelineResult(plan, results)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def without(self, *names: str) -> Pipeline:
        """The same pipeline without the passes called ``names``."""
        return Pipeline(tuple(p for p in self.passes if p.name not in names))


def default_pipeline(
    platform: Platform | str, calibration: Any = None, **alignment: Any
) -> Pipeline:
    """PPQ's default order: fusion, simplify, [calibration], alignment, passive parameters.

    ``calibration`` is an optional pass (e.g. :class:`fusekit.calibrate.Calibration`) run between
    simplify and alignment; ``alignment`` keyword options go to :class:`Alignment`.
    """
    get_platform(platform)  # fail early on an unknown name
    passes: list[Any] = [
        EpilogueFusion(platform),
        ActivationFusion(platform),
        CompositeActivationFusion(platform),
        PassiveFusion(platform),
        Simplify(platform),
    ]
    if calibration is not None:
        passes.append(calibration)
    passes.append(Alignment(platform, **alignment))
    passes.append(PassiveParameters(platform))
    return Pipeline(tuple(passes))


@without_gc
def fuse(
    graph: Graph,
    plan: QuantPlan,
    platform: Platform | str,
    *,
    epilogue: bool = True,
    activation: bool = True,
    composite: bool = True,
    passive: bool = True,
) -> FusionResult:
    """The equivalent of PPQ's QuantizeFusionPass: activation, Swish/Mish..., passive fusion.

    fusekit's rule sets first fold BatchNorm/bias epilogues into the computing op (PPQ does that
    while loading the graph).

    Each step can be switched off. Returns one :class:`FusionResult` whose decisions carry the
    rule that made each change (``activation``, ``swish``, ``mish``, ``passive``, ...).
    """
    steps: list[Any] = []
    if epilogue and get_platform(platform).epilogue_types:
        steps.append(EpilogueFusion(platform))
    if activation:
        steps.append(ActivationFusion(platform))
    if composite:
        steps.append(CompositeActivationFusion(platform))
    if passive:
        steps.append(PassiveFusion(platform))
    check_plan_graph(plan, graph, "fuse")
    results: list[FusionResult] = []
    current = plan
    for s in steps:
        results.append(s.run(graph, current))
        current = results[-1].plan
    return FusionResult.concat("fuse", plan, results)
