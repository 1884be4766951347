"""One-time use of provider tokens: the assertion IDs a provider has already accepted.

A provider keeps each accepted token's ID until the token expires (plus the clock skew), so a
second presentation is refused (SAML core §2.5.1.6 OneTimeUse, profiles §4.1.4.5).
`InMemoryReplayCache` serves one process; agencies that run several processes behind a load
balancer share a `SqliteReplayCache` file (or implement `ReplayCache` on their own database).
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class ReplayCache(Protocol):
    """Where a provider remembers accepted token IDs."""

    def first_use(self, token_id: str, *, expires_at: datetime, now: datetime) -> bool:
        """Record `token_id` until `expires_at`; True if it was not recorded yet (atomically).

        Both times are timezone-aware UTC. An ID whose record expired before `now` counts as new.
        """
        ...


def _ts(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class InMemoryReplayCache:
    """A thread-safe in-process cache; expired IDs are swept as new ones arrive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._next_sweep = 0.0

    def first_use(self, token_id: str, *, expires_at: datetime, now: datetime) -> bool:
        now_ts, expires_ts = _ts(now), _ts(expires_at)
        with self._lock:
            if now_ts >= self._next_sweep:
                self._expiry = {k: t for k, t in self._expiry.items() if t > now_ts}
                self._next_sweep = now_ts + 30
            known = self._expiry.get(token_id)
            if known is not None and known > now_ts:
                return False
            self._expiry[token_id] = expires_ts
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)


class SqliteReplayCache:
    """A replay cache in one SQLite file, shared by every process of an agency on one host.

    Each call opens its own connection, so instances are safe across threads and processes;
    the primary key makes "insert if absent" atomic.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        self.path = Path(path)
        self._timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS renkei_seen_tokens "
                "(token_id TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
            )
            conn.execute(
                "CREATE INDEX IF NOT EXISTS renkei_seen_tokens_expiry "
                "ON renkei_seen_tokens (expires_at)"
            )
        self._calls = 0

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)

    def first_use(self, token_id: str, *, expires_at: datetime, now: datetime) -> bool:
        now_ts, expires_ts = _ts(now), _ts(expires_at)
        self._calls += 1
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if self._calls % 100 == 1:  # sweep now and then, off the common path
                conn.execute("DELETE FROM renkei_seen_tokens WHERE expires_at <= ?", (now_ts,))
            else:
                conn.execute(
                    "DELETE FROM renkei_seen_tokens WHERE token_id = ? AND expires_at <= ?",
                    (token_id, now_ts),
                )
            inserted = conn.execute(
                "INSERT OR IGNORE INTO renkei_seen_tokens (token_id, expires_at) VALUES (?, ?)",
                (token_id, expires_ts),
            ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        return inserted == 1
