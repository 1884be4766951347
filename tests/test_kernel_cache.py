"""kernel.cache.TTLCache: registry data cached per process for a few seconds, reloaded by one
thread when it expires (the others answer from the value it replaces meanwhile), and a load
that raced a `clear` is not kept."""
from __future__ import annotations

import threading

from kernel import cache as cache_module
from kernel.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_an_entry_is_kept_for_its_ttl_then_reloaded(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(cache_module.time, "monotonic", clock.monotonic)
    cache: TTLCache[int] = TTLCache(seconds=5)
    loads = iter(range(1, 10))
    assert cache.get("a", lambda: next(loads)) == 1
    clock.now += 4.9
    assert cache.get("a", lambda: next(loads)) == 1
    clock.now += 0.2
    assert cache.get("a", lambda: next(loads)) == 2


def test_one_thread_reloads_an_expired_entry_while_the_others_answer_from_the_old_value(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(cache_module.time, "monotonic", clock.monotonic)
    cache: TTLCache[str] = TTLCache(seconds=5)
    assert cache.get("agency", lambda: "old") == "old"
    clock.now += 10  # expired
    loading, release = threading.Event(), threading.Event()
    loads: list[str] = []

    def slow_load() -> str:
        loads.append("reload")
        loading.set()
        assert release.wait(10)
        return "new"

    reloader = threading.Thread(target=lambda: cache.get("agency", slow_load))
    reloader.start()
    assert loading.wait(10)
    # while it reloads, twenty more requests: none loads, each gets the value being replaced
    answers = [cache.get("agency", lambda: loads.append("stampede") or "stampede") for _ in range(20)]
    release.set()
    reloader.join(10)
    assert answers == ["old"] * 20 and loads == ["reload"]
    assert cache.get("agency", lambda: "unexpected") == "new"


def test_a_load_that_raced_a_clear_is_not_kept(monkeypatch):
    cache: TTLCache[str] = TTLCache(seconds=5)

    def load_then_cleared() -> str:
        cache.clear()  # e.g. the agency was retired while this load read it
        return "read before the change"

    assert cache.get("agency", load_then_cleared) == "read before the change"
    assert cache.get("agency", lambda: "after the change") == "after the change"


def test_a_cleared_entry_is_not_answered_while_another_thread_reloads_it():
    cache: TTLCache[str] = TTLCache(seconds=5)
    assert cache.get("agency", lambda: "live") == "live"
    loading, release = threading.Event(), threading.Event()

    def slow_load() -> str:
        loading.set()
        assert release.wait(10)
        return "retired"

    cache.clear()
    reloader = threading.Thread(target=lambda: cache.get("agency", slow_load))
    reloader.start()
    assert loading.wait(10)
    try:
        assert cache.get("agency", lambda: "retired") == "retired"  # loads itself, never "live"
    finally:
        release.set()
        reloader.join(10)


def test_a_failed_load_leaves_no_reload_in_progress():
    cache: TTLCache[str] = TTLCache(seconds=0)

    def broken() -> str:
        raise RuntimeError("database down")

    assert cache.get("k", lambda: "v") == "v"
    try:
        cache.get("k", broken)
    except RuntimeError:
        pass
    assert cache.get("k", lambda: "fresh") == "fresh"
