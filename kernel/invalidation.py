"""Registry caches (`kernel.cache.TTLCache`) cleared when what they hold changes.

A change to registry data (an agency registered, re-keyed or retired, a service type or
offering changed) calls `registry_changed(db_session)` in its transaction:

- this process's caches are cleared at once and again when the transaction commits, so a
  value another thread loaded while the change was still uncommitted (the old row) is not
  kept;
- on PostgreSQL the transaction also sends `NOTIFY renkei_registry`, which the server delivers
  only if and when it commits; every hub process runs a `RegistryListener` that clears its own
  caches on it. So a retired agency or a rotated key is refused by every worker within
  milliseconds of the commit, not after the caches' few seconds.

On SQLite (one machine: the demo, small installations) there is no NOTIFY: another process's
change (`renkei agency retire` beside a running `renkei serve`) is seen when the entry expires.
"""
from __future__ import annotations

import logging
import threading

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from kernel.cache import clear_all

log = logging.getLogger(__name__)

CHANNEL = "renkei_registry"
_PENDING = "renkei.registry_changed"  # Session.info key: clear the caches once this commits


def registry_changed(db_session: Session) -> None:
    """This transaction changes what the registry caches hold (see the module docstring)."""
    clear_all()
    db_session.info[_PENDING] = True
    if db_session.get_bind().dialect.name == "postgresql":
        db_session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


@event.listens_for(Session, "after_commit")
def _clear_after_commit(db_session: Session) -> None:
    if db_session.info.pop(_PENDING, False):
        clear_all()


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(db_session: Session) -> None:
    db_session.info.pop(_PENDING, None)


class RegistryListener:
    """A thread with a connection of its own that LISTENs on PostgreSQL for registry changes
    committed by any process and clears this process's caches. While it is not connected
    (the server restarting) the caches' expiry still bounds what a worker may serve; on
    (re)connecting it clears them, since it may have missed a change."""

    RETRY_SECONDS = 1.0

    def __init__(self, url: str) -> None:
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.listening = threading.Event()  # set while LISTEN is in place (tests wait for it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="registry-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    clear_all()  # whatever changed while nobody listened
                    self.listening.set()
                    while not self._stop.is_set():
                        for _notice in connection.notifies(timeout=0.5):
                            clear_all()
            except Exception as exc:  # noqa: BLE001 - any connection failure: retry, the TTL bounds staleness
                log.warning("registry listener: %s; retrying", type(exc).__name__)
            finally:
                self.listening.clear()
            self._stop.wait(self.RETRY_SECONDS)


__all__ = ["CHANNEL", "RegistryListener", "registry_changed"]
