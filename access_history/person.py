"""One person's view of the access history: monthly counts, downloads, and proofs of inclusion.

A proof bundle lets a person show a third party, offline, that the hub recorded an entry:
each entry carries its record, salt and leaf data (the salted commitment), its leaf index and
the RFC 9162 inclusion proof to the newest signed checkpoint, which travels with its verifier
key. `check_bundle` is the pure checker; `renkei audit check-proof FILE` runs it.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from access_history import ledger, tlog
from access_history.models import ACCESS_LOG, HistoryEntry, LogLeaf
from access_history.record import commitment
from access_history.service import PAGE_MAX, TimelineEntry, TimelineFilter, access_record, timeline
from kernel.db import utcnow

BUNDLE_FORMAT = "renkei-history-proofs/v1"
CHART_MONTHS = 12


# --- counts per month -------------------------------------------------------------------------

@dataclass(frozen=True)
class MonthCount:
    month: str  # YYYY-MM (UTC)
    outcome: str
    count: int


def month_starts(now: datetime, months: int = CHART_MONTHS) -> list[datetime]:
    """The first instants of the last `months` calendar months, oldest first, this one last."""
    year, month = now.year, now.month
    starts = []
    for _ in range(months):
        starts.append(datetime(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return starts[::-1]


def monthly_outcomes(*, db_session: Session, person_key: str, now: datetime | None = None,
                     months: int = CHART_MONTHS) -> list[MonthCount]:
    """How many entries of each outcome the person had per month, over the last `months`
    months: one GROUP BY on the person's (person_key, recorded_at) index."""
    start = month_starts(now or utcnow(), months)[0]
    if db_session.get_bind().dialect.name == "postgresql":
        month = func.to_char(HistoryEntry.recorded_at, "YYYY-MM")
    else:
        month = func.strftime("%Y-%m", HistoryEntry.recorded_at)
    rows = db_session.execute(
        select(month.label("month"), HistoryEntry.outcome, func.count())
        .where(HistoryEntry.person_key == person_key, HistoryEntry.recorded_at >= start)
        .group_by(month, HistoryEntry.outcome).order_by(month, HistoryEntry.outcome)).all()
    return [MonthCount(m, outcome, count) for m, outcome, count in rows]


# --- the person's entries, for downloads ----------------------------------------------------

def entries(*, db_session: Session, person_key: str, filters: TimelineFilter | None = None,
            now: datetime | None = None) -> Iterator[TimelineEntry]:
    """Every entry of the person matching `filters`, newest first, page by page."""
    cursor, filters = None, filters or TimelineFilter()
    while True:
        page = timeline(db_session=db_session, person_key=person_key, limit=PAGE_MAX, cursor=cursor,
                        filters=filters, now=now)
        yield from page.entries
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def proof_bundle(*, db_session: Session, person_key: str, verifier_key: str,
                 filters: TimelineFilter | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The person's entries with inclusion proofs to the newest checkpoint (integrate first).

    An entry not yet in that checkpoint is listed under `pending` by its id; a sealed entry
    shows only that it exists, like on the history page."""
    now = now or utcnow()
    checkpoint = ledger.latest_checkpoint(db_session=db_session, log=ACCESS_LOG)
    size = checkpoint.size if checkpoint else 0
    shown: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    sealed: list[dict[str, Any]] = []
    page: list[TimelineEntry] = []

    def flush() -> None:
        ids = [item.entry.id for item in page]
        indices = dict(db_session.execute(select(LogLeaf.entry_ref, LogLeaf.leaf_index).where(
            LogLeaf.log == ACCESS_LOG, LogLeaf.entry_ref.in_(ids))).all()) if ids else {}
        for item in page:
            row = item.entry
            index = indices.get(row.id)
            if item.sealed:
                sealed.append({"recorded_at": access_record(row)["recorded_at"],
                               "sealed_until": access_record(row)["sealed_until"]})
            elif index is None or index >= size:
                pending.append({"entry_id": row.entry_id, "recorded_at": access_record(row)["recorded_at"]})
            else:
                proof = ledger.inclusion_proof(db_session=db_session, log=ACCESS_LOG, index=index, size=size)
                shown.append({"index": index, "leaf_data": _b64(row.leaf_data), "salt": _b64(row.salt),
                              **access_record(row), "inclusion_proof": [_b64(h) for h in proof]})
        page.clear()

    for item in entries(db_session=db_session, person_key=person_key, filters=filters, now=now):
        page.append(item)
        if len(page) >= PAGE_MAX:
            flush()
    flush()
    return {"format": BUNDLE_FORMAT, "log": ACCESS_LOG, "tree_size": size,
            "checkpoint": checkpoint.note if checkpoint else None, "verifier_key": verifier_key,
            "entries": shown, "pending": pending, "sealed": sealed}


# --- new entries in log order, for notices ----------------------------------------------------

def integrated_after(*, db_session: Session, start_index: int,
                     limit: int = 500) -> list[tuple[int, HistoryEntry]]:
    """Integrated entries from leaf `start_index` on, in leaf order.

    Leaf indices are given by one integrator at a time and without gaps, so a reader that
    keeps the next index as its cursor never skips an entry committed late (entry ids can)."""
    rows = db_session.execute(
        select(LogLeaf.leaf_index, HistoryEntry).join(HistoryEntry, HistoryEntry.id == LogLeaf.entry_ref)
        .where(LogLeaf.log == ACCESS_LOG, LogLeaf.leaf_index >= start_index)
        .order_by(LogLeaf.leaf_index).limit(limit)).all()
    return [(index, row) for index, row in rows]


def integrated_count(*, db_session: Session) -> int:
    """How many access entries the tree holds (the next leaf index)."""
    return ledger.integrated_size(db_session=db_session, log=ACCESS_LOG)


# --- the offline checker (pure) -----------------------------------------------------------------

@dataclass
class ProofReport:
    """What checking a bundle found: `ok`, how many entries verified, and every problem."""

    checked: int = 0
    pending: int = 0
    tree_size: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return (f"sound: {self.checked} entries are included in the signed checkpoint of size "
                    f"{self.tree_size}" + (f"; {self.pending} not yet integrated" if self.pending else ""))
        return "NOT sound: " + "; ".join(self.problems[:5])


class _Bad(Exception):
    """An entry of a bundle that is not even shaped like one."""


def _raw(value: Any, what: str, length: int | None = 32) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if length is not None and len(raw) != length:
        raise ValueError(f"{what} has {len(raw)} bytes, not {length}")
    return raw


def check_bundle(bundle: Mapping[str, Any], *, verifier_key: str | None = None) -> ProofReport:
    """Check a proof bundle offline: the checkpoint's signature, then each entry's commitment
    and its inclusion proof. `verifier_key` pins the hub's key (else the bundle's is used)."""
    report = ProofReport()
    if not isinstance(bundle, Mapping) or bundle.get("format") != BUNDLE_FORMAT:
        report.problems.append(f"not a {BUNDLE_FORMAT} file")
        return report
    if verifier_key is None:
        report.notes.append("the hub's key was taken from the file itself; pass --key to pin it")
    try:
        verifier = tlog.parse_verifier_key(str(verifier_key or bundle.get("verifier_key")))
        checkpoint = tlog.open_checkpoint(str(bundle.get("checkpoint")), verifier)
    except tlog.ProofInvalid as exc:
        report.problems.append(f"the checkpoint does not verify: {exc}")
        return report
    report.tree_size = checkpoint.size
    listed = bundle.get("entries")
    if not isinstance(listed, list):
        report.problems.append("the file lists no entries")
        return report
    for number, entry in enumerate(listed, start=1):
        name = entry.get("entry_id") if isinstance(entry, Mapping) else None
        try:
            if not isinstance(entry, Mapping):
                raise _Bad("not an object")
            index = entry.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                raise _Bad("no leaf index")
            leaf_data = _raw(entry.get("leaf_data"), "leaf_data")
            salt = _raw(entry.get("salt"), "salt")
            if commitment(ACCESS_LOG, salt, entry) != leaf_data:
                raise ValueError("its fields do not match its leaf data (the entry was altered)")
            proof = [_raw(h, "a proof hash") for h in entry.get("inclusion_proof") or []]
            tlog.verify_inclusion(tlog.leaf_hash(leaf_data), index, checkpoint.size, proof, checkpoint.root)
        except (_Bad, ValueError, tlog.ProofInvalid) as exc:
            report.problems.append(f"entry {number} ({name!r}): {exc}")
            continue
        report.checked += 1
    pending = bundle.get("pending")
    report.pending = len(pending) if isinstance(pending, list) else 0
    return report

