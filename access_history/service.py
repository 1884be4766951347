"""The access history (アクセス履歴) and the operations log: append, read, export.

The caller owns the transaction: `append`/`append_many`/`record_operation` add and flush, they
never commit. A query's decision entries are committed before any token leaves the hub
(DESIGN.md, "Log before disclose"); their integration into the Merkle tree follows within a
moment (`ledger`). Reads never show the hub's person key outside the hub.
"""
from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from access_history import appender, ledger
from access_history.errors import LogWriteFailed
from access_history.models import (
    ACCESS_LOG,
    OPERATIONS_LOG,
    Channel,
    EntryIn,
    EntryKind,
    HistoryEntry,
    LogLeaf,
    OperationEntry,
    OperationIn,
)
from access_history.record import canonical_json, commitment, iso_utc, person_ref
from kernel.db import utcnow
from kernel.keys import KeyStore
from kernel.replay import Once

NOTE_SECRET = "history-note"  # the seed of the Ed25519 key that signs checkpoints
PAGE_MAX = 200
EXPORT_BATCH = 2000


def _new_id() -> str:
    return secrets.token_hex(16)


# --- appending ------------------------------------------------------------------------------

def access_record(row: HistoryEntry) -> dict[str, Any]:
    """An entry's record: what its commitment covers and what an export shows."""
    return {
        "entry_id": row.entry_id, "kind": row.kind, "channel": row.channel, "owner": row.owner,
        "recorded_at": iso_utc(row.recorded_at), "asked_at": iso_utc(row.asked_at),
        "provided_at": iso_utc(row.provided_at), "requester": row.requester, "staff": row.staff,
        "provider": row.provider, "person_ref": person_ref(row.owner, row.person_key),
        "task_code": row.task_code, "legal_basis": row.legal_basis,
        "whitelist_entry": row.whitelist_entry, "info_type_code": row.info_type_code,
        "permitted": row.permitted, "outcome": row.outcome, "person_rule": row.person_rule,
        "overridden": bool(row.overridden), "decision_id": row.decision_id,
        "query_id": row.query_id, "query_group_id": row.query_group_id,
        "sealed_until": iso_utc(row.sealed_until), "sealed_reason": row.sealed_reason,
        "detail": _json_detail(row.detail),
    }


def operation_record(row: OperationEntry) -> dict[str, Any]:
    return {
        "entry_id": row.entry_id, "recorded_at": iso_utc(row.recorded_at), "actor": row.actor,
        "channel": row.channel, "action": row.action, "target": row.target,
        "outcome": row.outcome, "client": row.client, "detail": _json_detail(row.detail),
    }


def _json_detail(text: str) -> dict[str, Any]:
    import json

    return json.loads(text)


def _access_row(entry: EntryIn, now: datetime) -> HistoryEntry:
    row = HistoryEntry(
        entry_id=_new_id(), recorded_at=now, kind=str(entry.kind), channel=str(entry.channel),
        owner=entry.owner, asked_at=entry.asked_at, provided_at=entry.provided_at,
        requester=entry.requester, staff=entry.staff, provider=entry.provider,
        person_key=entry.person_key, task_code=entry.task_code, legal_basis=entry.legal_basis,
        whitelist_entry=entry.whitelist_entry, info_type_code=entry.info_type_code,
        permitted=entry.permitted, outcome=entry.outcome, person_rule=entry.person_rule,
        overridden=entry.overridden, decision_id=entry.decision_id, query_id=entry.query_id,
        query_group_id=entry.query_group_id, sealed_until=entry.sealed_until,
        sealed_reason=entry.sealed_reason, detail=canonical_json(entry.detail).decode(),
        salt=os.urandom(32),
    )
    row.leaf_data = commitment(ACCESS_LOG, row.salt, access_record(row))
    return row


def entry_values(entry: EntryIn, now: datetime) -> dict[str, Any]:
    """An entry's column values (without the id) with a fresh salt and its commitment: what
    the batching appender writes. The same record and commitment as `_access_row`'s."""
    values: dict[str, Any] = {
        "entry_id": _new_id(), "recorded_at": now, "kind": str(entry.kind), "channel": str(entry.channel),
        "owner": entry.owner, "asked_at": entry.asked_at, "provided_at": entry.provided_at,
        "requester": entry.requester, "staff": entry.staff, "provider": entry.provider,
        "person_key": entry.person_key, "task_code": entry.task_code, "legal_basis": entry.legal_basis,
        "whitelist_entry": entry.whitelist_entry, "info_type_code": entry.info_type_code,
        "permitted": entry.permitted, "outcome": entry.outcome, "person_rule": entry.person_rule,
        "overridden": entry.overridden, "decision_id": entry.decision_id, "query_id": entry.query_id,
        "query_group_id": entry.query_group_id, "sealed_until": entry.sealed_until,
        "sealed_reason": entry.sealed_reason, "detail": canonical_json(entry.detail).decode(),
        "salt": os.urandom(32),
    }
    values["leaf_data"] = commitment(ACCESS_LOG, values["salt"], access_record(SimpleNamespace(**values)))
    return values


def append_durably(*, db_session: Session, entries: Sequence[EntryIn],
                   once: Once | None = None) -> list[appender.Appended]:
    """Commit the caller's transaction, then record `entries` durably in a batch with other
    callers' (group commit, `appender`); returns once they are committed. Raises
    LogWriteFailed if the caller's commit or the batch failed: then nothing may be disclosed.

    `once`, the message ID of the request being answered, is remembered in the same batch,
    the entries only if it was new (ReplayDetected if not: nothing written, nothing to
    disclose). A request whose only write was that ID then commits nothing of its own.

    The caller's own writes commit first: on SQLite the batch needs the one write lock, which
    a caller still in a write transaction would hold while it waits.
    """
    try:
        db_session.commit()
    except SQLAlchemyError as exc:
        raise LogWriteFailed("the transaction before the history entries could not be committed") from exc
    now = utcnow()
    rows = [entry_values(entry, now) for entry in entries]
    bind = db_session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    return appender.appender_for(engine).append(rows, once=once)


def append(*, db_session: Session, entry: EntryIn) -> HistoryEntry:
    """Record one entry and queue it for the tree; flushes, the caller commits."""
    return append_many(db_session=db_session, entries=[entry])[0]


def append_many(*, db_session: Session, entries: Sequence[EntryIn]) -> list[HistoryEntry]:
    """Record entries (one query's decisions) and queue them; no lock is shared with other
    appends. Raises LogWriteFailed if the database refuses them."""
    now = utcnow()
    rows = [_access_row(entry, now) for entry in entries]
    try:
        db_session.add_all(rows)
        db_session.flush()
        ledger.enqueue_many(db_session=db_session, log=ACCESS_LOG,
                            rows=[(row.id, row.recorded_at, row.leaf_data) for row in rows])
    except SQLAlchemyError as exc:
        raise LogWriteFailed("the access history could not be written") from exc
    return rows


def _operation_row(operation: OperationIn, now: datetime) -> OperationEntry:
    row = OperationEntry(
        entry_id=_new_id(), recorded_at=now, actor=operation.actor,
        channel=operation.channel, action=operation.action, target=operation.target,
        outcome=operation.outcome, client=operation.client,
        detail=canonical_json(operation.detail).decode(), salt=os.urandom(32),
    )
    row.leaf_data = commitment(OPERATIONS_LOG, row.salt, operation_record(row))
    return row


def record_operation(*, db_session: Session, operation: OperationIn) -> OperationEntry:
    """Record an administrative change or authentication event; flushes, the caller commits."""
    row = _operation_row(operation, utcnow())
    try:
        db_session.add(row)
        db_session.flush()
        ledger.enqueue(db_session=db_session, log=OPERATIONS_LOG, entry_ref=row.id,
                       entry_time=row.recorded_at, leaf_data=row.leaf_data)
        db_session.flush()
    except SQLAlchemyError as exc:
        raise LogWriteFailed("the operations log could not be written") from exc
    return row


# --- signing --------------------------------------------------------------------------------

def log_origin(scope: str, log: str) -> str:
    """The checkpoint origin of one of the hub's logs, e.g. `renkei.example.jp/history/access`."""
    return f"{scope}/history/{log}"


def log_signer(*, keys: KeyStore, scope: str, log: str) -> ledger.LogSigner:
    """The signer of a log's checkpoints: the newest `history-note` seed as an Ed25519 key."""
    _, seed = keys.current_secret(NOTE_SECRET)
    origin = log_origin(scope, log)
    return ledger.LogSigner(origin, Ed25519PrivateKey.from_private_bytes(seed[:32]), origin)


def integrate_all(*, session_scope, keys: KeyStore, scope: str) -> int:
    """Integrate everything queued in every log now (tests, the CLI before an export)."""
    integrator = ledger.Integrator(session_scope, lambda log: log_signer(keys=keys, scope=scope, log=log))
    return integrator.run_once()


# --- one person's timeline ------------------------------------------------------------------

@dataclass(frozen=True)
class Cursor:
    """Where a page of a timeline ended: the last entry's time and id (keyset pagination)."""

    recorded_at: datetime
    id: int

    def encode(self) -> str:
        text = f"{self.recorded_at.isoformat(timespec='microseconds')}|{self.id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            when, _, ident = text.partition("|")
            return cls(datetime.fromisoformat(when), int(ident))
        except (ValueError, UnicodeDecodeError):
            raise ValueError("not a history cursor") from None


@dataclass(frozen=True)
class TimelineFilter:
    start: datetime | None = None
    end: datetime | None = None
    agency: str | None = None  # as requester or provider
    task_code: str | None = None
    info_type_code: str | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class TimelineEntry:
    """An entry as its person sees it; a sealed one shows only that it exists until its date."""

    entry: HistoryEntry
    sealed: bool


@dataclass(frozen=True)
class Page:
    entries: list[TimelineEntry]
    next_cursor: str | None


def _filters(f: TimelineFilter) -> list[Any]:
    conditions = []
    if f.start is not None:
        conditions.append(HistoryEntry.recorded_at >= f.start)
    if f.end is not None:
        conditions.append(HistoryEntry.recorded_at < f.end)
    if f.agency is not None:
        conditions.append(or_(HistoryEntry.requester == f.agency, HistoryEntry.provider == f.agency))
    if f.task_code is not None:
        conditions.append(HistoryEntry.task_code == f.task_code)
    if f.info_type_code is not None:
        conditions.append(HistoryEntry.info_type_code == f.info_type_code)
    if f.outcome is not None:
        conditions.append(HistoryEntry.outcome == f.outcome)
    return conditions


# PostgreSQL plans every month partition a timeline query may reach, and with years of
# partitions the planning costs more than the index scan. A page is first asked for within
# this window before its upper bound (a handful of partitions); only a person with fewer
# entries than a page in that window needs the unbounded query too. Either way the rows are
# the same: those the window misses are older than every row it found.
TIMELINE_WINDOW = timedelta(days=124)


def _naive_utc(t: datetime) -> datetime:
    return t if t.tzinfo is None else t.astimezone(UTC).replace(tzinfo=None)


def _newest_rows(db_session: Session, stmt, wanted: int, *, anchor: datetime,
                 start: datetime | None) -> list[HistoryEntry]:
    if db_session.get_bind().dialect.name == "postgresql" and (start is None or start < anchor - TIMELINE_WINDOW):
        rows = list(db_session.scalars(stmt.where(HistoryEntry.recorded_at >= anchor - TIMELINE_WINDOW)))
        if len(rows) >= wanted:
            return rows
    return list(db_session.scalars(stmt))


def timeline(*, db_session: Session, person_key: str, limit: int = 50, cursor: str | None = None,
             filters: TimelineFilter = TimelineFilter(), now: datetime | None = None) -> Page:
    """One page of a person's entries across the hub and every agency, newest first.

    Keyset-paginated on (recorded_at, id): entries that arrive while the person pages never
    shift a page, and a page costs one index range scan however long the history.
    """
    if not 1 <= limit <= PAGE_MAX:
        raise ValueError(f"limit must be 1..{PAGE_MAX}")
    stmt = select(HistoryEntry).where(HistoryEntry.person_key == person_key, *_filters(filters))
    if cursor is not None:
        c = Cursor.decode(cursor)
        # the plain `<=` lets PostgreSQL skip the month partitions after the cursor
        stmt = stmt.where(HistoryEntry.recorded_at <= c.recorded_at,
                          or_(HistoryEntry.recorded_at < c.recorded_at,
                              and_(HistoryEntry.recorded_at == c.recorded_at, HistoryEntry.id < c.id)))
    stmt = stmt.order_by(HistoryEntry.recorded_at.desc(), HistoryEntry.id.desc()).limit(limit + 1)
    now = now or utcnow()
    bounds = [c.recorded_at if cursor is not None else now, filters.end]
    rows = _newest_rows(db_session, stmt, limit + 1, anchor=min(_naive_utc(t) for t in bounds if t is not None),
                        start=None if filters.start is None else _naive_utc(filters.start))
    more = len(rows) > limit
    rows = rows[:limit]
    entries = [TimelineEntry(r, r.sealed_until is not None and r.sealed_until > now) for r in rows]
    next_cursor = Cursor(rows[-1].recorded_at, rows[-1].id).encode() if more and rows else None
    return Page(entries, next_cursor)


# what became of an electronic envelope the hub relayed (entries of kind relay, beside the
# decision that let it go): the hub's own disclosure to the receiver, or its failure
DELIVERED = "DELIVERED"  # the receiver acknowledged it (received, or a copy of one it had)
REJECTED_BY_RECEIVER = "REJECTED_BY_RECEIVER"  # the receiver got it and did not accept it
NOT_DELIVERED = "NOT_DELIVERED"  # the receiver never took it before the copy's keeping period ended
RELAY_OUTCOMES = (DELIVERED, REJECTED_BY_RECEIVER, NOT_DELIVERED)


def record_relay_outcome(*, db_session: Session, decision_id: str, outcome: str, provided_at: datetime | None,
                         detail: dict[str, Any]) -> HistoryEntry | None:
    """Record, in the caller's transaction, what became of a relayed envelope: an entry of kind
    relay with its decision's facts (who, whom, what, why, the query) and when the receiver was
    given it (`provided_at`, None if it never was). None if the decision is no longer in the
    history (retention removed it)."""
    if outcome not in RELAY_OUTCOMES:
        raise ValueError(f"a relay outcome is one of {', '.join(RELAY_OUTCOMES)}")
    decision = db_session.scalars(select(HistoryEntry).where(
        HistoryEntry.decision_id == decision_id, HistoryEntry.kind == EntryKind.DECISION.value)
        .order_by(HistoryEntry.id).limit(1)).first()
    if decision is None:
        return None
    return append(db_session=db_session, entry=EntryIn(
        kind=EntryKind.RELAY, channel=Channel.RELAY, owner=decision.owner, requester=decision.requester,
        provider=decision.provider, person_key=decision.person_key, task_code=decision.task_code,
        info_type_code=decision.info_type_code, outcome=outcome, decision_id=decision_id,
        permitted=decision.permitted, staff=decision.staff, legal_basis=decision.legal_basis,
        whitelist_entry=decision.whitelist_entry, person_rule=decision.person_rule, overridden=decision.overridden,
        asked_at=decision.asked_at, provided_at=provided_at, query_id=decision.query_id,
        query_group_id=decision.query_group_id, sealed_until=decision.sealed_until,
        sealed_reason=decision.sealed_reason, detail=detail))


def entries_for_decision(*, db_session: Session, decision_id: str) -> list[HistoryEntry]:
    """Every entry of one decision (the hub's and the provider's report), in order."""
    return list(db_session.scalars(select(HistoryEntry).where(HistoryEntry.decision_id == decision_id)
                                   .order_by(HistoryEntry.id)))


def leaf_index_of(*, db_session: Session, log: str, entry_ref: int) -> int | None:
    """The leaf index an entry was given, once integrated."""
    return db_session.scalar(select(LogLeaf.leaf_index).where(LogLeaf.log == log, LogLeaf.entry_ref == entry_ref))
