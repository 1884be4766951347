"""Retention of the logs' entries by whole months, and the month partitions it drops.

On PostgreSQL `history_entries` and `operation_entries` are partitioned by month of
`recorded_at`, with a DEFAULT partition so an append never fails for a missing month ("log
before disclose"); the coming months' partitions are created ahead, by the migration, by the
integrator (at most once an hour) and by `renkei history prune`. Pruning drops the months
older than a log's retention: on PostgreSQL it detaches and drops their partitions, on SQLite
it deletes their rows in one transaction with the append-only triggers lifted around it.
The tree (leaves, nodes, state, checkpoints) stays whole, so every proof still verifies; an
export shows a pruned entry's leaf as `{"type": "leaf", ..., "pruned": true}`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from access_history import tlog
from access_history.models import (
    ACCESS_LOG,
    OPERATIONS_LOG,
    HistoryEntry,
    LogState,
    OperationEntry,
)
from kernel.db import insert_or_ignore, utcnow

ENTRY_TABLES = {ACCESS_LOG: HistoryEntry.__tablename__, OPERATIONS_LOG: OperationEntry.__tablename__}
MONTHS_AHEAD = 3  # partitions exist for the current month and the next three
_MONTHLY = re.compile(r"_p(\d{4})_(\d{2})$")
_log = logging.getLogger("renkei.history")


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_months(month: datetime, count: int) -> datetime:
    index = month.year * 12 + month.month - 1 + count
    return month.replace(year=index // 12, month=index % 12 + 1)


def partition_name(table: str, month: datetime) -> str:
    return f"{table}_p{month.year:04d}_{month.month:02d}"


def _is_partitioned(conn: Connection, table: str) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return conn.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"),
                        {"t": table}).scalar() == "p"


def monthly_partitions(conn: Connection, table: str) -> dict[datetime, str]:
    """The table's month partitions by their first day (PostgreSQL; empty elsewhere)."""
    if not _is_partitioned(conn, table):
        return {}
    names = conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(:t)"), {"t": table}).scalars()
    months = {}
    for name in names:
        found = _MONTHLY.search(name)
        if found:
            months[datetime(int(found[1]), int(found[2]), 1)] = name
    return months


def _create_partition(conn: Connection, table: str, name: str, bounds: str) -> None:
    conn.execute(text(f"CREATE TABLE {name} PARTITION OF {table} {bounds}"))
    # row triggers are cloned onto every partition; TRUNCATE triggers are not, so add one
    conn.execute(text(f"CREATE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON {name} "
                      f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()"))


def ensure_partitions(conn: Connection, *, now: datetime | None = None, since: datetime | None = None) -> list[str]:
    """Create the missing month partitions from `since` (default: this month) to three months
    ahead, and the DEFAULT partition; returns the names created. A no-op outside PostgreSQL."""
    created: list[str] = []
    this_month = month_start(now or utcnow())
    first = month_start(since) if since is not None and since < this_month else this_month
    for table in ENTRY_TABLES.values():
        if not _is_partitioned(conn, table):
            continue
        default = f"{table}_default"
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": default}).scalar() is None:
            _create_partition(conn, table, default, "DEFAULT")
            created.append(default)
        existing = monthly_partitions(conn, table)
        month = first
        while month <= add_months(this_month, MONTHS_AHEAD):
            if month not in existing:
                name = partition_name(table, month)
                # a savepoint: rows of that month already in DEFAULT make the creation fail,
                # and then the DEFAULT partition keeps holding them
                try:
                    with conn.begin_nested():
                        _create_partition(conn, table, name, f"FOR VALUES FROM ('{month:%Y-%m-%d}') "
                                          f"TO ('{add_months(month, 1):%Y-%m-%d}')")
                except DBAPIError:
                    _log.warning("partition %s not created: its month has rows in %s", name, default)
                else:
                    created.append(name)
            month = add_months(month, 1)
    return created


@dataclass
class LogPrune:
    """What pruning one log drops: entries recorded before `cut`."""

    log: str
    retention_days: int
    cut: datetime
    entries: int = 0
    partitions: list[str] = field(default_factory=list)
    in_default: int = 0  # PostgreSQL: old rows that landed in the DEFAULT partition

    def describe(self) -> dict[str, object]:
        return {"log": self.log, "retention_days": self.retention_days,
                "pruned_before": self.cut.isoformat(), "entries": self.entries,
                "partitions": self.partitions, "from_default_partition": self.in_default}


def retention_cut(now: datetime, retention_days: int) -> datetime:
    """The first day of the month that holds `now - retention`: whole months before it go."""
    return month_start(now - timedelta(days=retention_days))


def plan(*, db_session: Session, retention: dict[str, int], now: datetime | None = None) -> list[LogPrune]:
    """What `prune` would drop for each log, changing nothing."""
    conn = db_session.connection()
    now = now or utcnow()
    plans = []
    for log, days in retention.items():
        table = ENTRY_TABLES[log]
        entry = HistoryEntry if log == ACCESS_LOG else OperationEntry
        item = LogPrune(log, days, retention_cut(now, days))
        months = monthly_partitions(conn, table)
        if months:
            for month, name in sorted(months.items()):
                if add_months(month, 1) <= item.cut:
                    item.partitions.append(name)
                    item.entries += conn.execute(text(f"SELECT count(*) FROM {name}")).scalar() or 0
            item.in_default = conn.execute(text(f"SELECT count(*) FROM {table}_default WHERE recorded_at < :cut"),
                                           {"cut": item.cut}).scalar() or 0
            item.entries += item.in_default
        else:
            item.entries = db_session.scalar(
                select(func.count()).select_from(entry).where(entry.recorded_at < item.cut)) or 0
        plans.append(item)
    return plans


def prune(*, db_session: Session, retention: dict[str, int], now: datetime | None = None) -> list[LogPrune]:
    """Drop each log's entries of whole months older than its retention; keep the tree.

    PostgreSQL: DETACH and DROP the month partitions, and delete what landed in DEFAULT (its
    row trigger disabled for that statement only).
    SQLite: DELETE the rows, the append-only triggers dropped and re-created around it. All in
    the caller's transaction, so it happens whole or not at all; the caller commits.
    """
    conn = db_session.connection()
    plans = plan(db_session=db_session, retention=retention, now=now)
    for item in plans:
        table = ENTRY_TABLES[item.log]
        if _is_partitioned(conn, table):
            for name in item.partitions:
                conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
                conn.execute(text(f"DROP TABLE {name}"))
            if item.in_default:  # months that had no partition when written
                default = f"{table}_default"
                conn.execute(text(f"ALTER TABLE {default} DISABLE TRIGGER {table}_no_change"))
                conn.execute(text(f"DELETE FROM {default} WHERE recorded_at < :cut"), {"cut": item.cut})
                conn.execute(text(f"ALTER TABLE {default} ENABLE TRIGGER {table}_no_change"))
        elif item.entries:
            entry = HistoryEntry if item.log == ACCESS_LOG else OperationEntry
            triggers = conn.execute(text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
                {"t": table}).all()
            for name, _ in triggers:
                conn.execute(text(f"DROP TRIGGER {name}"))
            conn.execute(delete(entry).where(entry.recorded_at < item.cut))
            for _, sql in triggers:
                conn.execute(text(sql))
        conn.execute(insert_or_ignore(db_session, LogState).values(
            log=item.log, size=0, root_hash=tlog.EMPTY_ROOT, frontier=b"", updated_at=utcnow()))
        conn.execute(update(LogState).where(LogState.log == item.log,
                                            (LogState.pruned_before.is_(None)) | (LogState.pruned_before < item.cut))
                     .values(pruned_before=item.cut))
    return plans


def pruned_before(*, db_session: Session, log: str) -> datetime | None:
    """Entries of the log recorded before this were dropped by retention (None: none were)."""
    return db_session.scalar(select(LogState.pruned_before).where(LogState.log == log))
