"""Who else a person's portal serves: representatives (代理人) a person appoints, and auditors
(監査) who export, verify and review the history.

A representative acts for the principal only through a grant that is live at that very request
(within its period, not revoked); every grant ID is looked up together with the person's own key.
Every representative action is kept for the principal and written to the operations log.
"""
from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain, islice

from sqlalchemy import select
from sqlalchemy.orm import Session

from access_history import audit, reports
from access_history import service as history
from access_history.models import ACCESS_LOG, LOG_NAMES, HistoryEntry, OperationIn
from idp import accounts
from kernel.db import session_scope, utcnow
from kernel.keys import keystore
from kernel.settings import Settings
from portal.models import Representative, RepresentativeAction
from pseudonym import service as pseudonyms

LONGEST_GRANT = timedelta(days=5 * 366)
MOST_LIVE_GRANTS = 20  # per principal: a person has a few helpers, not a crowd
NAME_MAX = 128  # portal_representatives.*_name, persons.username
ACTION_PATH_MAX = 256


class PeopleError(ValueError):
    """Input the portal refuses; the message is a message ID the page translates."""


# --- roles --------------------------------------------------------------------------------

def is_auditor(*, db_session: Session, person_key: str) -> bool:
    """Whether the person holds the auditor role now (read at every request)."""
    return accounts.AUDITOR in accounts.roles_of(db_session=db_session, person_key=person_key)


def name_of(*, db_session: Session, person_key: str) -> str:
    """The person's username, as the operations log names actors."""
    return accounts.username_of(db_session=db_session, person_key=person_key) or "unknown"


# --- representatives ----------------------------------------------------------------------

def appoint(*, db_session: Session, principal_key: str, username: str, starts_at: datetime,
            ends_at: datetime, now: datetime | None = None) -> Representative:
    """Let the person named `username` act for the principal from `starts_at` until `ends_at`."""
    now = now or utcnow()
    username = username.strip()
    if not accounts.valid_username(username):
        raise PeopleError("利用者名が正しくありません。")
    if ends_at <= starts_at or ends_at <= now:
        raise PeopleError("終了日時は開始日時より後の、これからの日時にしてください。")
    if ends_at - starts_at > LONGEST_GRANT:
        raise PeopleError("代理の期間は5年までです。")
    person = accounts.find(db_session=db_session, username=username)
    if person is None:
        raise PeopleError("その利用者名の人は登録されていません。")
    if person.person_key == principal_key:
        raise PeopleError("自分自身を代理人にすることはできません。")
    if len(live_grants_given(db_session=db_session, principal_key=principal_key, now=now)) >= MOST_LIVE_GRANTS:
        raise PeopleError("有効な代理人が多すぎます。不要な代理を取り消してください。")
    grant = Representative(
        id=secrets.token_hex(16), principal_key=principal_key, representative_key=person.person_key,
        principal_name=name_of(db_session=db_session, person_key=principal_key)[:NAME_MAX],
        representative_name=person.username, starts_at=starts_at, ends_at=ends_at, created_at=now)
    db_session.add(grant)
    db_session.flush()
    _log(db_session, actor=grant.principal_name, action="representative.appoint", grant=grant,
         detail={"starts_at": starts_at.isoformat(), "ends_at": ends_at.isoformat()})
    return grant


def grants_given(*, db_session: Session, principal_key: str) -> list[Representative]:
    """Every grant the principal made, newest first."""
    return list(db_session.scalars(select(Representative).where(Representative.principal_key == principal_key)
                                   .order_by(Representative.created_at.desc()).limit(200)))


def live_grants_given(*, db_session: Session, principal_key: str, now: datetime) -> list[Representative]:
    return [g for g in grants_given(db_session=db_session, principal_key=principal_key) if is_live(g, now)]


def grants_held(*, db_session: Session, representative_key: str, now: datetime | None = None) -> list[Representative]:
    """The grants a person may act on now."""
    now = now or utcnow()
    return list(db_session.scalars(select(Representative).where(
        Representative.representative_key == representative_key, Representative.revoked_at.is_(None),
        Representative.starts_at <= now, Representative.ends_at > now).order_by(Representative.principal_name)))


def is_live(grant: Representative, now: datetime) -> bool:
    return grant.revoked_at is None and grant.starts_at <= now < grant.ends_at


def revoke(*, db_session: Session, principal_key: str, grant_id: str, now: datetime | None = None) -> bool:
    """End a grant now; only its principal can, and False if it is not theirs."""
    grant = db_session.scalar(select(Representative).where(Representative.id == grant_id,
                                                           Representative.principal_key == principal_key))
    if grant is None:
        return False
    if grant.revoked_at is None:
        grant.revoked_at = now or utcnow()
        _log(db_session, actor=grant.principal_name, action="representative.revoke", grant=grant)
    return True


def acting_grant(*, db_session: Session, representative_key: str, grant_id: str,
                 now: datetime | None = None) -> Representative | None:
    """The grant this person acts on, if it is theirs and live at this very moment."""
    grant = db_session.scalar(select(Representative).where(
        Representative.id == grant_id, Representative.representative_key == representative_key))
    return grant if grant is not None and is_live(grant, now or utcnow()) else None


def record_action(*, db_session: Session, grant: Representative, action: str, path: str) -> None:
    """Keep what a representative did, for the principal's page and the operations log."""
    db_session.add(RepresentativeAction(grant_id=grant.id, at=utcnow(), action=action,
                                        path=path[:ACTION_PATH_MAX]))
    _log(db_session, actor=grant.representative_name, action=action, grant=grant, detail={"path": path[:200]})


@dataclass(frozen=True)
class ActionSeen:
    at: datetime
    representative: str
    action: str
    path: str


def actions_for(*, db_session: Session, principal_key: str, limit: int = 200) -> list[ActionSeen]:
    """What the principal's representatives did, newest first."""
    rows = db_session.execute(
        select(RepresentativeAction, Representative.representative_name)
        .join(Representative, Representative.id == RepresentativeAction.grant_id)
        .where(Representative.principal_key == principal_key)
        .order_by(RepresentativeAction.at.desc(), RepresentativeAction.id.desc()).limit(limit))
    return [ActionSeen(a.at, name, a.action, a.path) for a, name in rows]


CHANGE_POLICY = "representative.change_policy"


def record_policy_change(*, db_session: Session, grant: Representative, receipt_id: str) -> None:
    """Keep that a representative changed the principal's policy, pointing at the receipt's page."""
    record_action(db_session=db_session, grant=grant, action=CHANGE_POLICY, path=f"/portal/consent/{receipt_id}")


def policy_changes_by_representatives(*, db_session: Session, principal_key: str) -> dict[str, str]:
    """The principal's receipts that a representative's change issued, with the representative's name."""
    rows = db_session.execute(
        select(RepresentativeAction.path, Representative.representative_name)
        .join(Representative, Representative.id == RepresentativeAction.grant_id)
        .where(Representative.principal_key == principal_key, RepresentativeAction.action == CHANGE_POLICY))
    return {path.rsplit("/", 1)[-1]: name for path, name in rows}


def principal_pseudonym(*, db_session: Session, settings: Settings, grant: Representative,
                        portal_entity_id: str) -> str:
    """The principal's own pseudonym at the portal: what names them on a receipt, as when they
    change their policy themself."""
    return pseudonyms.get_or_create(db_session=db_session, keys=keystore(), person_key=grant.principal_key,
                                    agency=portal_entity_id, scope=settings.scope)


def _log(db_session: Session, *, actor: str, action: str, grant: Representative,
         detail: dict | None = None) -> None:
    # the target is the grant, never a person key: the operations log is exported to auditors
    history.record_operation(db_session=db_session, operation=OperationIn(
        actor=actor, channel="portal", action=action, target=f"representative:{grant.id}",
        detail=detail or {}))


# --- auditors -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportPlan:
    """What an export will hold, told to the auditor before it starts."""

    log: str
    tree_size: int
    leaves: int
    expected_bytes: int


def _verifier_key(settings: Settings, log: str) -> str:
    return history.log_signer(keys=keystore(), scope=settings.scope, log=log).verifier_key


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _lines(lines: Iterable[dict], fmt: str) -> Iterator[str]:
    """The export as text lines, JSONL (verifiable) or CSV (readable fields only), one at a time."""
    if fmt != "csv":
        for line in lines:
            yield json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(audit.CSV_COLUMNS)
    for line in lines:
        if line.get("type") == "entry":
            writer.writerow([_cell(line.get(c)) for c in audit.CSV_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def plan_export(*, settings: Settings, log: str, filters: audit.ExportFilter, fmt: str) -> ExportPlan:
    """Integrate what is queued, then size the export: its leaves, and bytes from a sample."""
    history.integrate_all(session_scope=session_scope, keys=keystore(), scope=settings.scope)
    with session_scope() as db:
        lines = audit.export(db_session=db, log=log, verifier_key=_verifier_key(settings, log), filters=filters)
        header = next(lines)
        leaves = header["end_index"] - header["start_index"]
        sample = list(islice(lines, 50))
        rows = [t for t in _lines(chain([header], sample), fmt) if t]
        head, body = rows[0], rows[1:]  # the JSONL header or the CSV column names, then leaves
        per_leaf = sum(map(len, (t.encode() for t in body))) / max(1, len(sample))
        expected = len(head.encode()) + int(per_leaf * leaves) + 40
    return ExportPlan(log, header["tree_size"], leaves, expected)


def stream_export(*, settings: Settings, log: str, filters: audit.ExportFilter, fmt: str) -> Iterator[bytes]:
    """The export's bytes in chunks of about 64 KiB, read in batches (constant memory)."""
    with session_scope() as db:
        lines = audit.export(db_session=db, log=log, verifier_key=_verifier_key(settings, log), filters=filters)
        chunk: list[bytes] = []
        size = 0
        for text in _lines(lines, fmt):
            data = text.encode()
            chunk.append(data)
            size += len(data)
            if size >= 64 * 1024:
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield b"".join(chunk)


def record_export(*, db_session: Session, auditor: str, log: str, filters: audit.ExportFilter, fmt: str,
                  plan: ExportPlan) -> None:
    """Every export over the portal is itself an entry of the operations log."""
    history.record_operation(db_session=db_session, operation=OperationIn(
        actor=auditor, channel="portal", action="audit.export", target=log,
        detail={"filters": filters.describe(), "format": fmt, "leaves": plan.leaves,
                "tree_size": plan.tree_size}))


def verify_upload(*, settings: Settings, lines: Iterator[str]) -> audit.Report:
    """Verify an uploaded export against this hub's own checkpoint key for the log it names."""
    first = next(lines, None)
    if first is None:
        return audit.Report().fail("the export is empty")
    try:
        named = json.loads(first).get("log")
    except (ValueError, AttributeError, RecursionError):
        named = None
    key = _verifier_key(settings, named if named in LOG_NAMES else ACCESS_LOG)
    return audit.verify(chain([first], lines), verifier_key=key)


def anomalies(*, db_session: Session, settings: Settings, limit: int = 200
              ) -> tuple[list[HistoryEntry], list[HistoryEntry]]:
    """(disclosures the hub did not permit, permits no provider reported in time)."""
    within = timedelta(seconds=settings.disclosure_report_within_seconds)
    return (reports.anomalous_disclosures(db_session=db_session, limit=limit),
            reports.unreported_permits(db_session=db_session, older_than=within, limit=limit))
