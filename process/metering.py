"""Metering (課金): how many queries and provisions each requester made of each provider, in
each process and month, for billing. Counted from the access history itself (its auditor
export, read at the newest signed checkpoint), so the bill and the history cannot disagree and
there is no second counter to drift.

One row per (month, requester, provider, process): `queries` is the number of decisions (one
per provider asked, whatever the number of information types), `permitted` and `refused` split
them, `provided` counts the disclosures the providers reported and the envelopes the hub
delivered for them (relay). A query outside any process run is billed under the process `-`.
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from access_history import audit
from access_history.models import ACCESS_LOG
from process.models import ProcessInstance

NO_PROCESS = "-"
COLUMNS = ("month", "requester", "provider", "process", "queries", "permitted", "refused", "provided")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class BadMonth(ValueError):
    pass


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of `YYYY-MM`, UTC."""
    found = _MONTH.match(month)
    if found is None:
        raise BadMonth(f"{month!r} is not a month; write YYYY-MM, e.g. 2026-12")
    year, mon = int(found.group(1)), int(found.group(2))
    if not 1970 <= year <= 9998:
        raise BadMonth(f"{month!r} is out of range")
    start = datetime(year, mon, 1)
    end = datetime(year + (mon == 12), 1 if mon == 12 else mon + 1, 1)
    return start, end


@dataclass(frozen=True)
class MeterRow:
    month: str
    requester: str
    provider: str
    process: str
    queries: int
    permitted: int
    refused: int
    provided: int


def meter(*, db_session: Session, month: str, verifier_key: str) -> list[MeterRow]:
    """The month's counts, from the history entries in the signed tree (integrate first)."""
    start, end = month_bounds(month)
    lines = audit.export(db_session=db_session, log=ACCESS_LOG, verifier_key=verifier_key,
                         filters=audit.ExportFilter(start, end))
    return _count(db_session, month, (line for line in lines if line.get("type") == "entry"))


def _count(db_session: Session, month: str, entries: Iterable[dict]) -> list[MeterRow]:
    decisions: dict[tuple[str, str, str | None], tuple[bool, str | None]] = {}
    provided: Counter = Counter()
    for e in entries:
        key = (e["requester"], e["provider"])
        if e["kind"] == "decision":
            # several entries (one per information type) make one decision; it is permitted
            # only if each of them is
            seen = decisions.get((*key, e["decision_id"]))
            permitted = bool(e["permitted"]) and (seen is None or seen[0])
            decisions[(*key, e["decision_id"])] = (permitted, e.get("query_group_id") or (seen and seen[1]))
        elif e["kind"] == "disclosure" or (e["kind"] == "relay" and e.get("provided_at")):
            # a provider's report, or an envelope the hub handed to its receiver
            provided[(*key, e["decision_id"])] += 1
    groups = {g for _, g in decisions.values() if g}
    process_of = _processes(db_session, groups)
    rows: dict[tuple[str, str, str], Counter] = {}
    for (requester, provider, decision_id), (permitted, group) in decisions.items():
        c = rows.setdefault((requester, provider, process_of.get(group, NO_PROCESS)), Counter())
        c["queries"] += 1
        c["permitted" if permitted else "refused"] += 1
        c["provided"] += 1 if provided.get((requester, provider, decision_id)) else 0
    for requester, provider, decision_id in provided:
        if (requester, provider, decision_id) not in decisions:  # decided in an earlier month
            rows.setdefault((requester, provider, NO_PROCESS), Counter())["provided"] += 1
    return [MeterRow(month, r, p, proc, c["queries"], c["permitted"], c["refused"], c["provided"])
            for (r, p, proc), c in sorted(rows.items())]


def _processes(db_session: Session, groups: set[str]) -> dict[str, str]:
    """query group → the process it is a run of."""
    found: dict[str, str] = {}
    ordered = sorted(groups)
    for i in range(0, len(ordered), 500):
        for group, process_id in db_session.execute(
                select(ProcessInstance.query_group_id, ProcessInstance.process_id)
                .where(ProcessInstance.query_group_id.in_(ordered[i:i + 500]))):
            found[group] = process_id
    return found


def to_csv(rows: Iterable[MeterRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([_safe(getattr(r, c)) for c in COLUMNS])
    return out.getvalue()


def _safe(value: object) -> object:
    """No cell a spreadsheet would run as a formula (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") and value != NO_PROCESS:
        return "'" + value
    return value
