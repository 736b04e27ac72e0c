"""Hypothesis profiles: ``dev`` (fast), ``ci`` (reproducible), ``nightly`` (10x ``ci``).

``make test`` selects ``ci`` when ``CI=true`` (``--hypothesis-profile=ci``). Tests whose single
example is expensive (ONNX Runtime sessions, the stateful machine) ask for a fraction of the
profile's budget through :func:`examples`, so the profiles scale every test together.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 500
#: 60, not 30: at 30 random examples the law tests missed the simplest planted bug ("only the
#: first output of a Split shares") about one run in ten (see test_mutants.py).
DEV_EXAMPLES = 60

_common = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("dev", max_examples=DEV_EXAMPLES, **_common)
settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, derandomize=True, print_blob=True, **_common
)
settings.register_profile("nightly", max_examples=10 * CI_EXAMPLES, **_common)
settings.load_profile("dev")


def examples(fraction: float) -> int:
    """``fraction`` of the active profile's ``max_examples`` (at least 5)."""
    return max(5, int(settings.default.max_examples * fraction))
