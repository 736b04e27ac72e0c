"""Small helpers shared by fusekit's modules."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

__all__ = ["gc_paused", "without_gc"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextmanager
def gc_paused(*, promote: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small immutable objects.

    Building a 100k-op graph or plan allocates millions of tuples and attrs instances; each
    allocation burst triggers generational collections that rescan everything alive, which
    measured 2-3x slower than the work itself. The values built here hold no reference cycles,
    so nothing is lost by collecting later. Nested use is safe.

    With ``promote``, the outermost pause ends by moving every tracked object into the oldest
    generation without walking it (``gc.freeze()`` then ``gc.unfreeze()``, both O(1)). Without
    it, the objects built during the pause are all young when the collector resumes: the next
    young collection walks them, and a fusion pipeline's survivors then trigger a full
    collection of the whole graph (a second on a 100k-op graph). Promoted objects are still
    examined by the next full collection, so nothing leaks; skipped when the application froze
    objects itself (``unfreeze`` would thaw those too).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if promote and gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def without_gc(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` inside ``gc_paused(promote=True)``: for passes and plan builders, whose
    results are large acyclic values (see :func:`gc_paused`)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with gc_paused(promote=True):
            return fn(*args, **kwargs)

    return wrapper
