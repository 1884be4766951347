"""Durable appends in batches (group commit), as Trillian Tessera's appender does.

One transaction per entry is bound by the WAL flush: a few milliseconds per COMMIT on this
kind of disk, i.e. a few hundred entries a second however many requests wait. Here a caller
(a discovery decision, an SSO release) hands its entries to the process's appender and
blocks; one writer thread takes whatever callers have handed in (up to `max_batch` entries,
waiting at most `max_wait` seconds for more once the first arrives), writes them all with
their queue rows in one transaction on a connection of its own, commits once and then
releases every waiter. A batch that fails fails every caller in it (`LogWriteFailed`), and
nothing of it stays: log before disclose holds for each caller, whose token is issued only
after its own `append` returned.

The caller computes its entries' salts and commitments in its own thread before handing them
in, so the writer only assigns ids and writes. Batches are written one after another, so the
queue (and so the tree) holds entries in the order their batches committed.

The writer uses its own connection: on SQLite, which has one writer at a time, the caller must
not hold a write transaction while it waits (it would wait for itself until SQLite's busy
timeout). `service.append_durably` therefore commits the caller's session first.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import LargeBinary, text
from sqlalchemy.engine import Connection, Engine

from access_history.errors import LogWriteFailed
from access_history.ledger import QUEUED
from access_history.models import ACCESS_LOG, ENTRY_SEQUENCES, HistoryEntry, LogQueue
from kernel import replay
from kernel.background import nudge
from kernel.replay import Once, ReplayDetected

log = logging.getLogger(__name__)

MAX_BATCH = 1024  # entries per transaction
MAX_WAIT = 0.0  # seconds a batch waits for more callers once its first entry is in (see below)
IDLE_EXIT = 5.0  # seconds without work before the writer thread ends (the next append restarts it)
WAIT_LIMIT = 60.0  # seconds a caller waits for its batch before giving up (and disclosing nothing)

_ENTRIES = HistoryEntry.__table__
_QUEUE = LogQueue.__table__


@dataclass(frozen=True)
class Appended:
    """An entry as committed: its row id, public entry id, time and leaf data."""

    id: int
    entry_id: str
    recorded_at: datetime
    leaf_data: bytes


@dataclass
class _Handed:
    rows: list[dict[str, Any]]
    once: Once | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupAppender:
    """The batching appender of one database (engine); `append` blocks until durable."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH, max_wait: float = MAX_WAIT):
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be >= 1 and max_wait >= 0")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: queue.SimpleQueue[_Handed] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.batches = 0  # committed batches (for benchmarks and tests)
        self.committed = 0  # committed entries

    def append(self, rows: Sequence[dict[str, Any]], *, once: Once | None = None) -> list[Appended]:
        """Write the rows (entry column values, commitments computed) durably; block until the
        batch holding them is committed. Raises LogWriteFailed if it was not.

        With `once` (a message ID not yet in the replay cache) the batch records the ID and
        the rows together: the rows only if the ID was new, else ReplayDetected and nothing of
        this caller's is written. Two callers with the same ID in one batch: the first wins."""
        if not rows:
            return []
        if once is not None and once.remembered:
            once = None
        handed = _Handed([dict(r) for r in rows], once)
        self._hand_in(handed)
        if not handed.done.wait(WAIT_LIMIT):
            raise LogWriteFailed("the access history did not confirm the write in time")
        if isinstance(handed.error, ReplayDetected):
            raise handed.error
        if handed.error is not None:
            raise LogWriteFailed("the access history could not be written") from handed.error
        if once is not None:
            once.remembered = True
        return [Appended(r["id"], r["entry_id"], r["recorded_at"], r["leaf_data"]) for r in handed.rows]

    def _hand_in(self, handed: _Handed) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's thread and queue are not ours
                self._queue, self._thread, self._pid = queue.SimpleQueue(), None, os.getpid()
            self._queue.put(handed)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="history-appender", daemon=True)
                self._thread.start()

    # --- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch, count = [first], len(first.rows)
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                try:
                    handed = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        handed = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                batch.append(handed)
                count += len(handed.rows)
            self._write(batch)

    def _write(self, batch: list[_Handed]) -> None:
        batch = _refuse_repeats_within(batch)
        error: BaseException | None = None
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    _insert_postgres(conn, batch)
                else:
                    _insert_sqlite(conn, batch)
                if any(handed.once is not None for handed in batch):
                    replay.sweep_now_and_then(conn)
        except Exception as exc:  # noqa: BLE001 - every waiter of the batch is told
            log.warning("history appender: a batch of %d callers failed: %s", len(batch), type(exc).__name__)
            error = exc
        else:
            written = sum(len(handed.rows) for handed in batch if handed.error is None)
            self.batches += 1
            self.committed += written
            if written:
                nudge(QUEUED)
        for handed in batch:
            if error is not None:
                handed.error = error
            handed.done.set()


def _json_type(column) -> str:
    """The column's type as json_to_recordset reads it (binary columns travel as hex text)."""
    from sqlalchemy import BigInteger, Boolean, DateTime

    for kind, name in ((BigInteger, "bigint"), (Boolean, "boolean"), (DateTime, "timestamp")):
        if isinstance(column.type, kind):
            return name
    return "text"


_COLUMNS = [c.name for c in _ENTRIES.columns if c.name != "id"]
_BINARY = [c.name for c in _ENTRIES.columns if isinstance(c.type, LargeBinary)]
# One statement (one round trip) and one parameter per batch: the rows as one JSON array,
# read by json_to_recordset (adapting a parameter per column costs the client ~0.3 ms a batch,
# a JSON text from orjson a few µs a row). Each row is given the sequence's next id; the queue
# rows are made from what the INSERT returns, in id order; the ids go back to their callers by
# entry ID (unique: made by the caller).
# With message IDs to remember (`once`), a first CTE inserts them into the replay cache and
# the entries' SELECT keeps the rows whose ID it inserted (data-modifying CTEs see each other's
# RETURNING): still one statement and one round trip for the batch.
_SEEN = replay.SeenMessage.__table__.name


def _postgres_batch(*, once: bool) -> str:
    record = ", ".join(f"{n} {_json_type(_ENTRIES.c[n])}" for n in _COLUMNS)
    seen = ""
    where = ""
    if once:
        seen = (f"o AS (INSERT INTO {_SEEN} (issuer, message_id, expires_at) "
                "SELECT issuer, message_id, expires_at FROM json_to_recordset(%s::json) "
                "AS s(issuer text, message_id text, expires_at timestamp) "
                "ON CONFLICT DO NOTHING RETURNING issuer, message_id), ")
        record += ", once_issuer text, once_id text"
        where = (" WHERE r.once_id IS NULL OR (r.once_issuer, r.once_id) IN "
                 "(SELECT issuer, message_id FROM o)")
    return (
        f"WITH {seen}e AS (INSERT INTO {_ENTRIES.name} (id, {', '.join(_COLUMNS)}) "
        f"SELECT nextval('{ENTRY_SEQUENCES[_ENTRIES.name]}'), "
        + ", ".join(f"decode(r.{n}, 'hex')" if n in _BINARY else f"r.{n}" for n in _COLUMNS)
        + f" FROM json_to_recordset(%s::json) AS r({record}){where}"
        + " RETURNING id, entry_id, recorded_at, leaf_data), "
        f"q AS (INSERT INTO {_QUEUE.name} (log, entry_ref, entry_time, leaf_data) "
        f"SELECT '{ACCESS_LOG}', id, recorded_at, leaf_data FROM e ORDER BY id) "
        "SELECT entry_id, id FROM e")


_POSTGRES_BATCH = _postgres_batch(once=False)
_POSTGRES_BATCH_ONCE = _postgres_batch(once=True)


def _insert_postgres(conn: Connection, batch: list[_Handed]) -> None:
    """The batch in one statement; with message IDs to remember (`once`), they go into the
    replay cache in the same statement and a caller's rows are inserted only if its ID was
    new (the unique index makes a concurrent batch holding the same ID wait for this one)."""
    onces = [handed.once for handed in batch if handed.once is not None]
    entries = orjson.dumps([
        {**{name: row[name].hex() if name in _BINARY and row.get(name) is not None else row.get(name)
            for name in _COLUMNS},
         **({"once_issuer": handed.once.issuer, "once_id": handed.once.message_id} if onces and handed.once else {})}
        for handed in batch for row in handed.rows]).decode()
    if onces:
        seen = orjson.dumps([{"issuer": o.issuer, "message_id": o.message_id, "expires_at": o.expires_at}
                             for o in onces]).decode()
        ids = dict(conn.exec_driver_sql(_POSTGRES_BATCH_ONCE, (seen, entries)).all())
    else:
        ids = dict(conn.exec_driver_sql(_POSTGRES_BATCH, (entries,)).all())
    for handed in batch:
        if handed.once is not None and handed.rows[0]["entry_id"] not in ids:
            handed.error = handed.once.refused()
            continue
        for row in handed.rows:
            row["id"] = ids[row["entry_id"]]


def _insert_sqlite(conn: Connection, batch: list[_Handed]) -> None:
    """The batch in one transaction: each caller's message ID first (INSERT OR IGNORE), then
    the rows of the callers whose ID was new, or which had none."""
    for handed in batch:
        if handed.once is not None:
            params = {"issuer": handed.once.issuer, "message_id": handed.once.message_id,
                      "expires_at": handed.once.expires_at}
            if conn.execute(replay.insert_statement(conn.dialect.name), params).first() is None:
                handed.error = handed.once.refused()
    rows = [row for handed in batch if handed.error is None for row in handed.rows]
    if not rows:
        return
    for row, ident in zip(rows, _new_ids(conn, len(rows)), strict=True):
        row["id"] = ident
    conn.execute(_ENTRIES.insert(), rows)
    conn.execute(_QUEUE.insert(), [
        {"log": ACCESS_LOG, "entry_ref": r["id"], "entry_time": r["recorded_at"],
         "leaf_data": r["leaf_data"]} for r in rows])


def _refuse_repeats_within(batch: list[_Handed]) -> list[_Handed]:
    """Two callers with the same message ID in one batch: the later one is a replay, told so
    at once and left out (one statement would insert the ID once and both callers' rows)."""
    kept: list[_Handed] = []
    keys: set[tuple[str, str]] = set()
    for handed in batch:
        if handed.once is not None:
            if handed.once.key in keys:
                handed.error = handed.once.refused()
                handed.done.set()
                continue
            keys.add(handed.once.key)
        kept.append(handed)
    return kept


def _new_ids(conn: Connection, n: int) -> list[int]:
    """`n` new entry ids, ascending: PostgreSQL's sequence, SQLite's counter row (bumped in
    this transaction, so it takes SQLite's write lock first; see models.EntryIdCounter)."""
    table = _ENTRIES.name
    if conn.dialect.name != "sqlite":
        return list(conn.execute(text(f"SELECT nextval('{ENTRY_SEQUENCES[table]}') "
                                      "FROM generate_series(1, :n)"), {"n": n}).scalars())
    last = conn.execute(text("UPDATE entry_id_counters SET last_id = last_id + :n WHERE table_name = :t "
                             "RETURNING last_id"), {"n": n, "t": table}).scalar()
    if last is None:  # a database made before the counter row: start after what is there
        last = conn.execute(text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar() + n
        conn.execute(text("INSERT INTO entry_id_counters (table_name, last_id) VALUES (:t, :i)"),
                     {"t": table, "i": last})
    return list(range(last - n + 1, last + 1))


_APPENDERS: weakref.WeakKeyDictionary[Engine, GroupAppender] = weakref.WeakKeyDictionary()
_APPENDERS_LOCK = threading.Lock()


def appender_for(engine: Engine) -> GroupAppender:
    """The process's appender for this engine's database (one writer thread per engine)."""
    with _APPENDERS_LOCK:
        found = _APPENDERS.get(engine)
        if found is None:
            found = _APPENDERS[engine] = GroupAppender(engine)
        return found
