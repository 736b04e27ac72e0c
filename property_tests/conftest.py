"""Hypothesis profiles: ``dev`` (fast), ``ci`` (reproducible), ``nightly`` (10x ``ci``).

``make test`` selects ``ci`` when ``CI=true`` (``--hypothesis-profile=ci``). Tests whose single
example is expensive (ONNX Runtime sessions, the stateful machine) ask for a fraction of the
profile's budget through :func:`examples`, so the profiles scale every test together.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 500

_common = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("dev", max_examples=30, **_common)
settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, derandomize=True, print_blob=True, **_common
)
settings.register_profile("nightly", max_examples=10 * CI_EXAMPLES, **_common)
settings.load_profile("dev")


def examples(fraction: float) -> int:
    """``fraction`` of the active profile's ``max_examples`` (at least 5)."""
    return max(5, int(settings.default.max_examples * fraction))
