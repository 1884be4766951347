"""The hub app as `renkei serve` builds it, plus database counters for the benchmarks.

`uvicorn bench.counted_app:create_app --factory` serves exactly `renkei.app.create_app()`; it
only listens to SQLAlchemy's engine events in each worker process and writes the running
totals to `$RENKEI_BENCH_COUNTS/<pid>.json` every 0.5 s, so a benchmark reads, per response,
how many statements, commits, rollbacks, pool checkouts and liveness pings (each a round trip)
the server did, how many database connections it opened and how many each worker holds.
Nothing in the request path changes: a counter increment per event is all it adds.
"""
from __future__ import annotations

import gc
import json
import os
import re
import threading
import time
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

COUNTS = {"statements": 0, "commits": 0, "writing_commits": 0, "rollbacks": 0, "checkouts": 0, "pings": 0,
          "connects": 0, "connections": 0, "peak_connections": 0}
SQL_MIX: dict[str, int] = {}  # statement head (verb and table) -> times executed
# the garbage collector's pauses in this worker (a request waits for one that happens under it)
GC = {"collections": 0, "full_collections": 0, "pause_ms_total": 0.0, "pause_ms_max": 0.0}
_gc_started: list[float] = []


def _gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started.append(time.perf_counter())
    elif _gc_started:
        pause = 1000 * (time.perf_counter() - _gc_started.pop())
        GC["collections"] += 1
        GC["full_collections"] += info.get("generation") == 2
        GC["pause_ms_total"] += pause
        GC["pause_ms_max"] = max(GC["pause_ms_max"], pause)


def _statement(conn, _cursor, statement: str, *_args, **_kwargs) -> None:
    COUNTS["statements"] += 1
    head = _head(statement)
    SQL_MIX[head] = SQL_MIX.get(head, 0) + 1
    if _WRITE.search(statement):
        conn.info["bench_wrote"] = True


# a statement that writes rows (also inside a CTE); SELECT … FOR UPDATE only locks
_WRITE = re.compile(r"\bINSERT\s+(?:OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\S+\s+SET\b|\bDELETE\s+FROM\b", re.IGNORECASE)


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+([\w.\"]+)", re.IGNORECASE)


def _head(statement: str) -> str:
    """`VERB table[, joined table...]` (and FOR UPDATE), e.g. "SELECT pseudonyms"."""
    words = statement.split(None, 1)
    verb = words[0].upper() if words else "?"
    tables = list(dict.fromkeys(t.strip('"') for t in _TABLE.findall(statement)))
    lock = " FOR UPDATE" if "FOR UPDATE" in statement.upper() else ""
    return f"{verb} {', '.join(tables[:3])}{lock}"[:100]


def _commit(conn) -> None:
    """A COMMIT; `writing_commits` counts those of transactions that wrote a row (the durable
    ones: PostgreSQL flushes WAL for these only; a read-only transaction's COMMIT is a round
    trip, nothing more)."""
    COUNTS["commits"] += 1
    COUNTS["writing_commits"] += bool(conn.info.pop("bench_wrote", False))


def _rollback(conn) -> None:
    COUNTS["rollbacks"] += 1
    conn.info.pop("bench_wrote", None)


def _checkout(_dbapi_connection, connection_record, _proxy) -> None:
    from kernel import db

    COUNTS["checkouts"] += 1
    # kernel.db pings a PostgreSQL connection only if it sat idle (the same test as its listener)
    checked_in = connection_record.info.get("checked_in")
    if checked_in is not None and time.monotonic() - checked_in >= db.IDLE_PING_SECONDS:
        COUNTS["pings"] += 1


def _connect(*_args) -> None:
    COUNTS["connects"] += 1  # new database sessions opened (a pool that churns pays one per request)
    COUNTS["connections"] += 1
    COUNTS["peak_connections"] = max(COUNTS["peak_connections"], COUNTS["connections"])


def _close(*_args) -> None:
    COUNTS["connections"] -= 1


def _writer(directory: Path) -> None:
    path = directory / f"{os.getpid()}.json"
    mix = directory / f"{os.getpid()}.sqlmix"
    tmp = directory / f".{os.getpid()}.tmp"
    while True:
        tmp.write_text(json.dumps({**COUNTS, "gc": GC}))
        os.replace(tmp, path)  # readers never see half a file
        tmp.write_text(json.dumps(dict(SQL_MIX)))
        os.replace(tmp, mix)
        time.sleep(0.5)


def create_app():
    """renkei.app.create_app(), with the counters listening in this worker."""
    from renkei.app import create_app as renkei_app

    event.listen(Engine, "before_cursor_execute", _statement)
    event.listen(Engine, "commit", _commit)
    event.listen(Engine, "rollback", _rollback)
    event.listen(Pool, "checkout", _checkout)
    event.listen(Pool, "connect", _connect)
    event.listen(Pool, "close", _close)
    event.listen(Pool, "detach", _close)
    gc.callbacks.append(_gc)
    directory = os.environ.get("RENKEI_BENCH_COUNTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        threading.Thread(target=_writer, args=(Path(directory),), daemon=True, name="bench-counts").start()
    return renkei_app()
