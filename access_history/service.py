"""Business functions of the access-history room: append, read, checkpoint, export, verify.

The caller owns the transaction: these functions add and flush, they never commit. A query's
decision entry is committed before any token leaves the hub (DESIGN.md, Log before disclose).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Select, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from access_history import chain
from access_history.chain import (
    EXPORT_FIELDS,
    GENESIS_HASH,
    MerkleFrontier,
    canonical_json,
    iso_utc,
    merkle_root,
)
from access_history.errors import ExportInvalid, LogWriteFailed
from access_history.models import Checkpoint, LogEntry, LogEntryIn, LogHead
from kernel.db import utcnow
from kernel.keys import KeyStore

KEY_ROLE = "log"
PAGE_MAX = 1000
EXPORT_BATCH = 1000

__all__ = [
    "Coverage",
    "VerificationReport",
    "append",
    "canonical_json",
    "checkpoint",
    "entries_for_owner",
    "entries_for_person",
    "export",
    "export_coverage",
    "latest_checkpoint",
    "log_public_keys",
    "merkle_root",
    "verify_export",
]


# --- writing ------------------------------------------------------------------------------


def append(*, db_session: Session, entry: LogEntryIn) -> LogEntry:
    """Add `entry` at the end of its owner's chain and flush; the caller commits."""
    return append_many(db_session=db_session, entries=[entry])[0]


def append_many(*, db_session: Session, entries: Sequence[LogEntryIn]) -> list[LogEntry]:
    """Add `entries`, in order, at the end of their owners' chains with one lock and one flush
    per owner (one query's decisions); the caller commits."""
    rows: list[LogEntry] = []
    owner = None
    try:
        # owners in sorted order, so two transactions never lock two heads crosswise
        for owner in sorted({e.owner for e in entries}):
            head = _lock_head(db_session, owner)
            for entry in (e for e in entries if e.owner == owner):
                row = _chained_row(entry, head)
                db_session.add(row)
                head.seq, head.head_hash = row.seq, row.entry_hash
                rows.append(row)
        db_session.flush()
    except SQLAlchemyError as exc:
        raise LogWriteFailed(
            f"the access log of {owner} could not be written ({type(exc).__name__})"
        ) from exc
    return rows


def _chained_row(entry: LogEntryIn, head: LogHead) -> LogEntry:
    row = LogEntry(
        owner=entry.owner,
        seq=head.seq + 1,
        recorded_at=utcnow(),  # taken under the lock: times rise with seq on one clock
        kind=str(entry.kind),
        decision_id=entry.decision_id,
        requester=entry.requester,
        provider=entry.provider,
        person_key=entry.person_key,
        staff=entry.staff,
        task_code=entry.task_code,
        info_type_code=entry.info_type_code,
        permitted=entry.permitted,
        reason=entry.reason,
        detail=canonical_json(entry.detail).decode("utf-8"),
        prev_hash=head.head_hash,
    )
    row.entry_hash = chain.entry_hash(export_line(row))
    return row


def _lock_head(db_session: Session, owner: str) -> LogHead:
    """The owner's head row, locked until the caller's transaction ends; created on first use."""
    dialect = db_session.get_bind().dialect.name
    if dialect == "sqlite":
        # pysqlite begins a transaction only at the first write, so a plain read could see a head
        # another writer is about to move; a no-op write takes SQLite's single write lock first.
        db_session.execute(
            update(LogHead).where(LogHead.owner == owner).values(seq=LogHead.seq),
            execution_options={"synchronize_session": False},
        )
    head = _select_head(db_session, owner, lock=True)
    if head is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        db_session.execute(
            insert(LogHead)
            .values(owner=owner, seq=0, head_hash=GENESIS_HASH)
            .on_conflict_do_nothing(index_elements=["owner"])
        )
        head = _select_head(db_session, owner, lock=True)
    assert head is not None
    return head


def _select_head(db_session: Session, owner: str, *, lock: bool) -> LogHead | None:
    stmt = select(LogHead).where(LogHead.owner == owner)
    if lock:
        stmt = stmt.with_for_update()
    # the session may hold this head from an earlier transaction: always read the row afresh
    return db_session.scalar(stmt.execution_options(populate_existing=True))


def checkpoint(*, db_session: Session, owner: str, keys: KeyStore) -> Checkpoint:
    """Sign the owner's current tree head with the hub's `log` key (the same one if unchanged)."""
    head = _select_head(db_session, owner, lock=False)
    size, head_hash = (head.seq, head.head_hash) if head else (0, GENESIS_HASH)
    existing = db_session.scalar(
        select(Checkpoint).where(Checkpoint.owner == owner, Checkpoint.seq == size)
    )
    if existing is not None:
        return existing
    # entries 1..size committed no later than the head that names them, so all are visible
    hashes = db_session.scalars(
        select(LogEntry.entry_hash)
        .where(LogEntry.owner == owner, LogEntry.seq <= size)
        .order_by(LogEntry.seq)
        .execution_options(yield_per=EXPORT_BATCH)
    )
    frontier = MerkleFrontier()
    last = GENESIS_HASH
    for last in hashes:
        frontier.add(bytes.fromhex(last))
    if frontier.size != size or last != head_hash:
        raise LogWriteFailed(f"the access log of {owner} does not match its head at seq {size}")
    signing_key = keys.current_signing_key(KEY_ROLE)
    row = Checkpoint(
        owner=owner,
        seq=size,
        tree_size=size,
        root_hash=frontier.root().hex(),
        signed_at=utcnow(),
        key_version=signing_key.version,
    )
    text = chain.checkpoint_text(
        owner=owner, seq=size, root_hash=row.root_hash, signed_at=iso_utc(row.signed_at)
    )
    row.signature = chain.sign_checkpoint(text, private_key=signing_key.private_key)
    try:
        db_session.add(row)
        db_session.flush()
    except SQLAlchemyError as exc:
        raise LogWriteFailed(f"the checkpoint of {owner} could not be written") from exc
    return row


# --- reading ------------------------------------------------------------------------------


def entries_for_person(
    *, db_session: Session, person_key: str, limit: int, before_id: int | None = None
) -> list[LogEntry]:
    """One page of the person's entries across every owner, newest first (pass the last id on)."""
    if not 1 <= limit <= PAGE_MAX:
        raise ValueError(f"limit must be 1..{PAGE_MAX}, got {limit}")
    stmt = select(LogEntry).where(LogEntry.person_key == person_key)
    if before_id is not None:
        stmt = stmt.where(LogEntry.id < before_id)
    return list(db_session.scalars(stmt.order_by(LogEntry.id.desc()).limit(limit)))


def entries_for_owner(
    *, db_session: Session, owner: str, since_seq: int = 0, until_seq: int | None = None
) -> list[LogEntry]:
    """The owner's entries with since_seq < seq <= until_seq, in chain order."""
    stmt = select(LogEntry).where(LogEntry.owner == owner, LogEntry.seq > since_seq)
    if until_seq is not None:
        stmt = stmt.where(LogEntry.seq <= until_seq)
    return list(db_session.scalars(stmt.order_by(LogEntry.seq)))


def latest_checkpoint(*, db_session: Session, owner: str) -> Checkpoint | None:
    """The owner's newest signed tree head, if any."""
    return db_session.scalar(
        select(Checkpoint).where(Checkpoint.owner == owner).order_by(Checkpoint.seq.desc()).limit(1)
    )


def log_public_keys(keys: KeyStore) -> list[rsa.RSAPublicKey]:
    """Every version of the hub's `log` key, newest first: old checkpoints stay verifiable."""
    versions = reversed(keys.signing_versions(KEY_ROLE))
    return [keys.load_signing_key(KEY_ROLE, v).public_key for v in versions]


# --- auditor export -------------------------------------------------------------------------


class Coverage(StrEnum):
    """Which rows of each owner's chain an export holds, and so what verification can prove."""

    FULL = "full"  # every row from seq 1: a missing row anywhere but the tail is detected
    RANGE = "range"  # one unbroken run of seqs per owner (a time window)
    SELECTION = "selection"  # any subset in order (one person's rows): gaps are expected


def export_coverage(
    *, person_key: str | None = None, start: datetime | None = None, end: datetime | None = None
) -> Coverage:
    """The coverage `export` gives for these filters, to pass on to `verify_export`."""
    if person_key is not None:
        return Coverage.SELECTION
    return Coverage.FULL if start is None and end is None else Coverage.RANGE


_EXPORT_COLUMNS = (
    LogEntry.owner,
    LogEntry.seq,
    LogEntry.recorded_at,
    LogEntry.kind,
    LogEntry.decision_id,
    LogEntry.requester,
    LogEntry.provider,
    LogEntry.person_key,
    LogEntry.staff,
    LogEntry.task_code,
    LogEntry.info_type_code,
    LogEntry.permitted,
    LogEntry.reason,
    LogEntry.detail,
    LogEntry.prev_hash,
    LogEntry.entry_hash,
)


def export(
    *,
    db_session: Session,
    owner: str | None = None,
    person_key: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream rows as JSON-ready dicts by owner and seq, for start <= recorded_at < end.

    Rows carry seq, prev_hash and entry_hash, and a per-owner `person_ref` instead of the
    person key. Without `person_key`, a time window is widened to whole runs of seqs per owner.
    """
    if person_key is not None:
        stmt = select(*_EXPORT_COLUMNS).where(
            LogEntry.person_key == person_key, *_window(start, end)
        )
    elif start is None and end is None:
        stmt = select(*_EXPORT_COLUMNS)
    else:
        stmt = _seq_runs_in_window(start, end, owner)
    if owner is not None:
        stmt = stmt.where(LogEntry.owner == owner)
    stmt = stmt.order_by(LogEntry.owner, LogEntry.seq).execution_options(yield_per=EXPORT_BATCH)
    for row in db_session.execute(stmt):
        yield export_line(row)


def _window(start: datetime | None, end: datetime | None) -> list[Any]:
    conditions = []
    if start is not None:
        conditions.append(LogEntry.recorded_at >= _naive_utc(start))
    if end is not None:
        conditions.append(LogEntry.recorded_at < _naive_utc(end))
    return conditions


def _seq_runs_in_window(start: datetime | None, end: datetime | None, owner: str | None) -> Select:
    # from each owner's first to last seq inside the window, so the rows form one unbroken run
    # even if a clock stepped back; verify_export can then check every link (Coverage.RANGE)
    bounds = select(
        LogEntry.owner.label("owner"),
        func.min(LogEntry.seq).label("low"),
        func.max(LogEntry.seq).label("high"),
    ).where(*_window(start, end))
    if owner is not None:
        bounds = bounds.where(LogEntry.owner == owner)
    runs = bounds.group_by(LogEntry.owner).subquery()
    return select(*_EXPORT_COLUMNS).join(
        runs, and_(LogEntry.owner == runs.c.owner, LogEntry.seq.between(runs.c.low, runs.c.high))
    )


def _naive_utc(value: datetime) -> datetime:
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def export_line(row: Any) -> dict[str, Any]:
    """One entry (a LogEntry or an export row) in its exported, hashed form."""
    return {
        "owner": row.owner,
        "seq": row.seq,
        "recorded_at": iso_utc(row.recorded_at),
        "kind": row.kind,
        "decision_id": row.decision_id,
        "requester": row.requester,
        "provider": row.provider,
        "person_ref": chain.person_ref(row.owner, row.person_key),
        "staff": row.staff,
        "task_code": row.task_code,
        "info_type_code": row.info_type_code,
        "permitted": row.permitted,
        "reason": row.reason,
        "detail": json.loads(row.detail),
        "prev_hash": row.prev_hash,
        "entry_hash": row.entry_hash,
    }


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationReport:
    """What `verify_export` found: ok, or the first bad row and why."""

    ok: bool
    rows: int  # rows read (up to and including the first bad one)
    heads: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # owner -> seq, hash
    checkpoint_verified: bool = False
    owner: str | None = None
    first_bad_seq: int | None = None
    problem: str | None = None

    def raise_if_invalid(self) -> None:
        if not self.ok:
            raise ExportInvalid(self)


@dataclass(frozen=True)
class _Failure:
    owner: str | None
    seq: int | None
    problem: str


_HEX64 = re.compile(r"[0-9a-f]{64}")


def verify_export(
    lines: Iterable[Mapping[str, Any]],
    *,
    checkpoint: Mapping[str, Any] | None = None,
    public_keys: Iterable[rsa.RSAPublicKey] = (),
    coverage: Coverage = Coverage.FULL,
) -> VerificationReport:
    """Recompute every entry hash and chain link, and the checkpoint's root and signature.

    Detects a changed, removed, inserted or reordered row and names the first bad seq. A
    checkpoint needs its owner's rows 1..tree_size, so it fits only FULL exports.
    """
    verifier = _Verifier(Coverage(coverage))
    if checkpoint is not None and (
        failure := verifier.expect_checkpoint(checkpoint, list(public_keys))
    ):
        return verifier.report(failure)
    for line in lines:
        if failure := verifier.feed(line):
            return verifier.report(failure)
    return verifier.report(verifier.finish())


class _Verifier:
    """Walks export rows once, keeping per owner only the last seq and hash (streams any size)."""

    def __init__(self, coverage: Coverage):
        self.coverage = coverage
        self.rows = 0
        self.heads: dict[str, tuple[int, str]] = {}
        self.checkpoint: Mapping[str, Any] | None = None
        self.frontier = MerkleFrontier()

    def report(self, failure: _Failure | None) -> VerificationReport:
        return VerificationReport(
            ok=failure is None,
            rows=self.rows,
            heads=dict(self.heads),
            checkpoint_verified=failure is None and self.checkpoint is not None,
            owner=failure.owner if failure else None,
            first_bad_seq=failure.seq if failure else None,
            problem=failure.problem if failure else None,
        )

    def expect_checkpoint(
        self, cp: Mapping[str, Any], public_keys: list[rsa.RSAPublicKey]
    ) -> _Failure | None:
        owner = cp.get("owner") if isinstance(cp, Mapping) else None
        if not _checkpoint_well_formed(cp):
            return _Failure(owner if isinstance(owner, str) else None, None,
                            "the checkpoint is malformed")
        text = chain.checkpoint_text(owner=cp["owner"], seq=cp["seq"], root_hash=cp["root_hash"],
                                     signed_at=cp["signed_at"])
        if not chain.checkpoint_signature_valid(text, cp["signature"], public_keys=public_keys):
            return _Failure(cp["owner"], None,
                            "the checkpoint's signature does not verify with any trusted log key")
        self.checkpoint = cp
        return None

    def feed(self, line: object) -> _Failure | None:
        self.rows += 1
        if not _row_well_formed(line):
            owner, seq = _peek(line)
            return _Failure(owner, seq, "the row is malformed (missing, extra or mistyped fields)")
        assert isinstance(line, Mapping)
        owner, seq = line["owner"], line["seq"]
        if chain.entry_hash(line) != line["entry_hash"]:
            return _Failure(owner, seq, "entry_hash does not match the row's fields: it was changed")
        failure = self._link(line) or self._cover(line)
        self.heads[owner] = (seq, line["entry_hash"])
        return failure

    def _link(self, line: Mapping[str, Any]) -> _Failure | None:
        owner, seq, prev_hash = line["owner"], line["seq"], line["prev_hash"]
        last = self.heads.get(owner)
        if last is not None and seq <= last[0]:
            return _Failure(owner, seq, f"seq {seq} follows seq {last[0]}: rows were reordered, "
                                        "duplicated or inserted")
        if seq == 1:
            if prev_hash != GENESIS_HASH:
                return _Failure(owner, seq, "seq 1 does not start from the genesis hash")
        elif last is not None and seq == last[0] + 1:
            if prev_hash != last[1]:
                return _Failure(owner, seq, f"prev_hash of seq {seq} is not the entry_hash of seq "
                                            f"{seq - 1}: a row was changed, inserted or removed")
        elif self.coverage is not Coverage.SELECTION:
            expected = last[0] + 1 if last is not None else 1
            if seq > expected and (last is not None or self.coverage is Coverage.FULL):
                return _Failure(owner, expected, f"seq {expected} is missing: rows were removed")
        return None

    def _cover(self, line: Mapping[str, Any]) -> _Failure | None:
        cp = self.checkpoint
        if cp is None or line["owner"] != cp["owner"] or line["seq"] > cp["tree_size"]:
            return None
        expected = self.frontier.size + 1
        if line["seq"] != expected:
            return _Failure(cp["owner"], expected,
                            f"seq {expected} is missing: the checkpoint covers 1..{cp['tree_size']}")
        self.frontier.add(bytes.fromhex(line["entry_hash"]))
        return None

    def finish(self) -> _Failure | None:
        cp = self.checkpoint
        if cp is None:
            return None
        if self.frontier.size < cp["tree_size"]:
            missing = self.frontier.size + 1
            return _Failure(cp["owner"], missing, f"the export stops before seq {missing}, but "
                            f"the checkpoint covers 1..{cp['tree_size']}: rows were removed")
        if self.frontier.root().hex() != cp["root_hash"]:
            return _Failure(cp["owner"], None, f"the Merkle root over seq 1..{cp['tree_size']} "
                                               "differs from the checkpoint's: the log was rewritten")
        return None


def _peek(line: object) -> tuple[str | None, int | None]:
    if not isinstance(line, Mapping):
        return None, None
    owner, seq = line.get("owner"), line.get("seq")
    return (owner if isinstance(owner, str) else None,
            seq if isinstance(seq, int) and not isinstance(seq, bool) else None)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _row_well_formed(line: object) -> bool:
    if not isinstance(line, Mapping) or set(line) != set(EXPORT_FIELDS):
        return False
    texts = ("owner", "recorded_at", "kind", "decision_id", "requester", "provider", "person_ref",
             "task_code", "info_type_code", "reason")
    return (
        all(isinstance(line[name], str) for name in texts)
        and _is_int(line["seq"])
        and line["seq"] >= 1
        and (line["staff"] is None or isinstance(line["staff"], str))
        and (line["permitted"] is None or isinstance(line["permitted"], bool))
        and isinstance(line["detail"], Mapping)
        and all(isinstance(line[h], str) and _HEX64.fullmatch(line[h])
                for h in ("prev_hash", "entry_hash"))
    )


def _checkpoint_well_formed(cp: object) -> bool:
    return (
        isinstance(cp, Mapping)
        and all(isinstance(cp.get(k), str) for k in ("owner", "root_hash", "signed_at", "signature"))
        and _is_int(cp.get("seq"))
        and _is_int(cp.get("tree_size"))
        and cp["seq"] == cp["tree_size"] >= 0
        and bool(_HEX64.fullmatch(cp["root_hash"]))
    )
