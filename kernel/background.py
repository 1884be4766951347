"""Background work in a daemon thread of an app process (the history integrator, the notifier,
the relay's delivery worker), woken by the work itself instead of polling where that is safe
(the relay's worker has no topic: it would race a request delivering its own rows).

A loop runs a round when something it waits for was *nudged* (a topic named by the room that
makes the work, e.g. "history entries queued"), and otherwise only every `idle_interval`
seconds, for work that a nudge cannot announce: another process's (a CLI command, the other
worker), a retry that has fallen due. While rounds keep finding work they follow each other
every `interval` seconds, so work arriving in a burst is taken in batches.

Nudges are in-process: a room calls `nudge(topic)` once its work is durable, or marks a
database session with `nudge_after_commit(session, topic)` so that the nudge is sent when, and
only when, that session commits (a nudge before the commit would wake a loop that then finds
nothing and goes back to sleep for `idle_interval`).

A round that fails is logged and tried again at the next tick: the work it left undone stays
where the next round finds it (queued entries, an unmoved cursor).
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable

_LISTENERS: dict[str, weakref.WeakSet[Periodic]] = {}
_LISTENERS_LOCK = threading.Lock()
_SESSION_KEY = "renkei.nudges"  # Session.info: the topics to nudge when the session commits


def nudge(*topics: str) -> None:
    """Wake every running loop of this process that waits for one of `topics`."""
    for topic in topics:
        with _LISTENERS_LOCK:
            loops = list(_LISTENERS.get(topic, ()))
        for loop in loops:
            loop.wake()


def nudge_after_commit(db_session, *topics: str) -> None:
    """Nudge `topics` once `db_session` commits (kernel.db sends them; a rollback drops them)."""
    db_session.info.setdefault(_SESSION_KEY, set()).update(topics)


def take_session_nudges(db_session) -> Iterable[str]:
    """The topics a session was marked with, forgotten (kernel.db's commit and rollback hooks)."""
    return db_session.info.pop(_SESSION_KEY, ())


class Periodic:
    """Calls `run_once` when nudged on one of `wakes_on`, else every `idle_interval` seconds;
    every `interval` seconds while rounds find work (`run_once` returns a true value, or sets
    `busy`: work it could not take this time, such as a row another process holds)."""

    name = "periodic"  # the thread's name, and what a failed round's log line says
    wakes_on: tuple[str, ...] = ()

    def __init__(self, interval: float, idle_interval: float | None = None):
        self._interval = interval
        self._idle_interval = max(interval, idle_interval if idle_interval is not None else interval)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = logging.getLogger(f"renkei.{self.name}")
        self.rounds = 0  # rounds run so far (tests and benchmarks read it)
        self.busy = False

    def run_once(self) -> int:
        raise NotImplementedError

    def wake(self) -> None:
        """Run a round soon (at once if the loop is idle)."""
        self._wake.set()

    def _round(self) -> bool:
        self.rounds += 1
        self.busy = False
        try:
            return bool(self.run_once()) or self.busy
        except Exception:  # noqa: BLE001 - a failed round is retried at the next tick
            self._log.exception("%s failed; will retry", self.name)
            return False

    def start(self) -> None:
        with _LISTENERS_LOCK:
            for topic in self.wakes_on:
                _LISTENERS.setdefault(topic, weakref.WeakSet()).add(self)

        def loop() -> None:
            busy = False
            while not self._stop.wait(self._interval):  # the spacing between two rounds
                if not busy:
                    self._wake.wait(self._idle_interval - self._interval)
                    if self._stop.is_set():
                        return
                self._wake.clear()  # a nudge from here on asks for the round after this one
                busy = self._round()

        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with _LISTENERS_LOCK:
            for topic in self.wakes_on:
                _LISTENERS.get(topic, weakref.WeakSet()).discard(self)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
