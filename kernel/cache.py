"""A small per-process cache for registry data that changes rarely (agencies, service types).

Entries live for a few seconds. A change to what they hold clears every cache of every hub
process through `kernel.invalidation` (at once in the process that made it, and again when it
commits; on PostgreSQL in the others when the commit's NOTIFY arrives); the few seconds bound
only what NOTIFY cannot reach (SQLite's other processes, a listener reconnecting).

When an entry expires under load, one thread reloads it and the others keep answering from the
value it replaces until the new one is in (otherwise every request in flight at that moment
would load it: 20-odd agency loads at once per worker, every few seconds). A load that began
before a `clear` is not kept: it may have read what the clear was for.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

_ALL: weakref.WeakSet[TTLCache] = weakref.WeakSet()  # every cache of this process


def clear_all() -> None:
    """Clear every cache of this process (kernel.invalidation: the registry changed)."""
    for cache in list(_ALL):
        cache.clear()


class TTLCache(Generic[V]):
    def __init__(self, seconds: float, max_entries: int = 10_000):
        self.seconds = seconds
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, V]] = {}
        self._loading: set[Hashable] = set()  # keys a thread is reloading now
        self._generation = 0  # bumped by clear
        self._lock = threading.Lock()
        _ALL.add(self)

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value for `key`, loaded (and kept) if absent or older than the TTL; while
        another thread reloads an expired entry, its last value."""
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.seconds:
            return hit[1]
        with self._lock:
            if hit is not None and key in self._loading and self._entries.get(key) is hit:
                return hit[1]
            self._loading.add(key)
            generation = self._generation
        try:
            value = load()
        finally:
            with self._lock:
                self._loading.discard(key)
        with self._lock:
            if generation == self._generation:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._generation += 1
