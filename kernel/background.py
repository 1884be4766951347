"""Periodic work in a daemon thread of an app process (the history integrator, the notifier).

A round that fails is logged and tried again at the next tick: the work it left undone stays
where the next round finds it (queued entries, an unmoved cursor).
"""
from __future__ import annotations

import logging
import threading


class Periodic:
    """Calls `run_once` every `interval` seconds from `start` until `stop`."""

    name = "periodic"  # the thread's name, and what a failed round's log line says

    def __init__(self, interval: float):
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = logging.getLogger(f"renkei.{self.name}")

    def run_once(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self._interval):
                try:
                    self.run_once()
                except Exception:  # noqa: BLE001 - a failed round is retried at the next tick
                    self._log.exception("%s failed; will retry", self.name)

        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
