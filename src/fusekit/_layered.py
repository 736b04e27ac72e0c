"""A persistent name -> value map that reads at ``dict`` speed.

``pyrsistent.PMap`` costs about 1 µs per lookup; the graph index is read millions of times by
the passes, so it keeps a frozen ``dict`` as its base and a small ``PMap`` overlay holding the
edits made since. Every update returns a new map and leaves the old one unchanged; when the
overlay grows past a quarter of the base it is folded into a fresh base dict, so updates stay
O(1) amortised and reads stay two hash probes at most.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from pyrsistent import PMap, pmap

K = TypeVar("K")
V = TypeVar("V")

_DELETED = object()
_EMPTY: PMap[Any, Any] = pmap()


class LayeredMap(Mapping[K, V], Generic[K, V]):
    """Immutable mapping: frozen ``dict`` base plus a persistent overlay of changes."""

    __slots__ = ("_base", "_len", "_over")

    def __init__(
        self, base: dict[K, V] | None = None, _over: PMap[Any, Any] = _EMPTY, _len: int = -1
    ):
        # The base dict is owned by this map (and its descendants) and never mutated.
        self._base: dict[K, V] = base if base is not None else {}
        self._over = _over
        self._len = len(self._base) if _len < 0 else _len

    def __getitem__(self, key: K) -> V:
        if self._over:
            v = self._over.get(key, _DELETED)
            if v is not _DELETED:
                if v is _TOMBSTONE:
                    raise KeyError(key)
                return v  # type: ignore[no-any-return]
        return self._base[key]

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        if self._over:
            v = self._over.get(key, _DELETED)
            if v is not _DELETED:
                return default if v is _TOMBSTONE else v
        return self._base.get(key, default)

    def __contains__(self, key: object) -> bool:
        if self._over:
            v = self._over.get(key, _DELETED)
            if v is not _DELETED:
                return v is not _TOMBSTONE
        return key in self._base

    def __iter__(self) -> Iterator[K]:
        if not self._over:
            yield from self._base
            return
        over = self._over
        for k in self._base:
            if k not in over:
                yield k
        for k, v in over.items():
            if v is not _TOMBSTONE:
                yield k

    def __len__(self) -> int:
        return self._len

    def _with(self, over: PMap[Any, Any], new_len: int) -> LayeredMap[K, V]:
        if len(over) > max(64, len(self._base) // 4):
            base = dict(self._base)
            for k, v in over.items():
                if v is _TOMBSTONE:
                    base.pop(k, None)
                else:
                    base[k] = v
            return LayeredMap(base, _EMPTY, new_len)
        return LayeredMap(self._base, over, new_len)

    def set(self, key: K, value: V) -> LayeredMap[K, V]:
        """Return a new map with ``key`` bound to ``value``."""
        new_len = self._len if key in self else self._len + 1
        return self._with(self._over.set(key, value), new_len)

    def remove(self, key: K) -> LayeredMap[K, V]:
        """Return a new map without ``key`` (KeyError if absent)."""
        if key not in self:
            raise KeyError(key)
        if key in self._base:
            over = self._over.set(key, _TOMBSTONE)
        else:
            over = self._over.remove(key)
        return self._with(over, self._len - 1)

    def __repr__(self) -> str:
        return f"LayeredMap({dict(self.items())!r})"


class _Tombstone:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<deleted>"


_TOMBSTONE = _Tombstone()
