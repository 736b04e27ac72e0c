"""Small helpers shared by fusekit's modules: pausing the garbage collector while large
acyclic values are built, and writing output files all or nothing."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from .errors import InvalidModel

__all__ = [
    "gc_paused",
    "promote_to_old_generation",
    "without_gc",
    "write_bytes_atomic",
    "write_files_atomic",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def promote_to_old_generation() -> None:
    """Move every object the garbage collector tracks into its oldest generation, in O(1).

    Called at the end of a bulk build while the collector is paused (``gc_paused``). A 100k-op
    graph is ~700k tracked objects; without this, the first allocation after the collector is
    re-enabled runs a young-generation collection that walks every one of them (a third of the
    load time), and the next middle-generation collection walks them again. ``freeze()``
    followed by ``unfreeze()`` moves them to the oldest generation without walking them, which
    is where long-lived data ends up anyway; the next full collection still examines them, so
    nothing leaks. The only effect on other objects is that young garbage cycles of the process
    are collected at the next full collection instead of the next young one. Skipped when the
    application froze objects itself (``gc.freeze()`` before ``fork``), as ``unfreeze`` would
    thaw those too.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()


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
            if promote:
                promote_to_old_generation()
            gc.enable()


def without_gc(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` inside ``gc_paused(promote=True)``: for passes and plan builders, whose
    results are large acyclic values (see :func:`gc_paused`)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with gc_paused(promote=True):
            return fn(*args, **kwargs)

    return wrapper


def write_files_atomic(files: Mapping[Path, bytes]) -> None:
    """Write a set of files all or nothing.

    Every file is first written to a hidden temporary name in its own folder; only when all
    are written are they renamed into place. A failure (or Ctrl-C / SIGTERM, which the CLI
    turns into an exception) before the renames leaves none of them and no temporary file. The
    renames are not one transaction: if one fails, the files of the set renamed before it are
    removed (a file they replaced is gone by then; a rename within a folder does not fail for
    want of space, so this is the unlikely case).
    """
    temps: list[tuple[str, Path]] = []
    renamed: list[Path] = []
    try:
        for target, data in files.items():
            target = Path(target)
            _check_target(target)
            fd, tmp = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path(".")
            )
            temps.append((tmp, target))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_current_umask())
        while temps:
            tmp, target = temps[0]
            os.replace(tmp, target)
            temps.pop(0)
            renamed.append(target)
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if temps:  # the set is incomplete: the files already renamed are not left behind
            for target in renamed:
                with contextlib.suppress(OSError):
                    os.unlink(target)
        raise


def _check_target(target: Path) -> None:
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidModel(f"cannot write: directory {directory} does not exist", str(target))
    if target.is_dir():
        raise InvalidModel("cannot write: the target is a directory", str(target))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: Path | str, data: bytes) -> None:
    """Write ``data`` to ``target`` via a temp file and rename (no partial file on failure):
    :func:`write_files_atomic` for a set of one."""
    write_files_atomic({Path(target): data})
