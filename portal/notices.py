"""Notices (お知らせ): a person opts in per kind of event and is told in the portal and by e-mail.

How notices are made, off the discovery hot path: a discovery request only appends its
entries (access_history); the history integrator gives them leaf indices in the Merkle tree;
then a `Notifier` thread in each app process reads the newly integrated entries in leaf order
after a cursor (one row, locked while a round runs, so processes take turns), makes the
notices of the people who asked for them, and moves the cursor, all in one transaction. Leaf
order has no gaps, so an entry committed late is never skipped. E-mails are sent afterwards
from the notices still marked `pending`; they carry no detail of the exchange, only that
there is something to read in the portal. Entries sealed at the time are not noticed.
"""
from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from access_history import ledger as history_ledger
from access_history import person as history_person
from kernel.background import Periodic
from kernel.db import insert_or_ignore, utcnow
from kernel.settings import Settings
from portal.models import EMAIL_MAX, NOTICE_KINDS, Notice, NoticeCursor, NoticePreference

CURSOR = "access"
BATCH = 500
MAIL_BATCH = 50
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f<>(),;:\"\[\]\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")

KIND_TITLES = {
    "access": "あなたの情報のやりとりがありました",
    "refusal": "やりとりが拒否されました",
    "override": "拒否の意思表示に関わらず法律により提供されました",
    "anomaly": "不一致が報告されました",
}


class InvalidPreference(ValueError):
    """The notice settings cannot be stored; the reason is safe to show."""


@dataclass(frozen=True)
class Preferences:
    kinds: frozenset[str]
    email: str | None


def event_kinds(*, permitted: bool | None, overridden: bool, kind: str, outcome: str) -> list[str]:
    """The kinds an entry is an instance of, most specific first ('access' is every entry)."""
    kinds = []
    if kind == "disclosure" and outcome != "DISCLOSED":
        kinds.append("anomaly")
    if overridden:
        kinds.append("override")
    if permitted is False:
        kinds.append("refusal")
    return [*kinds, "access"]


def preferences(*, db_session: Session, person_key: str) -> Preferences:
    row = db_session.get(NoticePreference, person_key)
    if row is None:
        return Preferences(frozenset(), None)
    kinds = {k for k in NOTICE_KINDS if getattr(row, f"on_{k}")}
    return Preferences(frozenset(kinds), row.email)


def set_preferences(*, db_session: Session, person_key: str, kinds: set[str], email: str | None) -> Preferences:
    """Store which kinds the person wants and their e-mail address (empty: no e-mail)."""
    unknown = kinds - set(NOTICE_KINDS)
    if unknown:
        raise InvalidPreference("不明なお知らせの種類です。")
    email = (email or "").strip() or None
    if email is not None and (len(email) > EMAIL_MAX or not _EMAIL.fullmatch(email)):
        raise InvalidPreference("メールアドレスの形式が正しくありません。")
    row = db_session.get(NoticePreference, person_key) or NoticePreference(person_key=person_key)
    for k in NOTICE_KINDS:
        setattr(row, f"on_{k}", k in kinds)
    row.email, row.updated_at = email, utcnow()
    db_session.add(row)
    db_session.flush()
    return Preferences(frozenset(kinds), email)


def notices(*, db_session: Session, person_key: str, limit: int = 100) -> list[Notice]:
    """The person's newest notices."""
    return list(db_session.scalars(select(Notice).where(Notice.person_key == person_key)
                                   .order_by(Notice.id.desc()).limit(limit)))


def notice(*, db_session: Session, person_key: str, notice_id: int) -> Notice | None:
    """One of the person's notices; another person's id finds nothing."""
    return db_session.scalar(select(Notice).where(Notice.id == notice_id, Notice.person_key == person_key))


def unread_count(*, db_session: Session, person_key: str) -> int:
    return db_session.scalar(select(func.count()).select_from(Notice).where(
        Notice.person_key == person_key, Notice.read_at.is_(None))) or 0


def mark_read(*, db_session: Session, person_key: str, notice_id: int | None = None) -> int:
    """Mark one of the person's notices (or all of them) read; another person's id finds nothing."""
    stmt = update(Notice).where(Notice.person_key == person_key, Notice.read_at.is_(None))
    if notice_id is not None:
        stmt = stmt.where(Notice.id == notice_id)
    return db_session.execute(stmt.values(read_at=utcnow()), execution_options={"synchronize_session": False}).rowcount


# --- making notices (the Notifier's round) ----------------------------------------------------

def _lock_cursor(db_session: Session) -> NoticeCursor | None:
    """The cursor row, locked for this transaction; None while another process holds it."""
    db_session.execute(insert_or_ignore(db_session, NoticeCursor).values(name=CURSOR, next_index=0,
                                                                         updated_at=utcnow()))
    stmt = select(NoticeCursor).where(NoticeCursor.name == CURSOR)
    if db_session.get_bind().dialect.name == "sqlite":
        # take SQLite's write lock now, so a second notifier waits rather than reading the same batch
        db_session.execute(update(NoticeCursor).where(NoticeCursor.name == CURSOR)
                           .values(next_index=NoticeCursor.next_index),
                           execution_options={"synchronize_session": False})
    else:
        stmt = stmt.with_for_update(skip_locked=True)
    return db_session.scalar(stmt.execution_options(populate_existing=True))


def produce(*, db_session: Session, mail_enabled: bool, batch: int = BATCH, now: datetime | None = None) -> int:
    """Turn the next integrated history entries into notices; returns how many entries were read.

    The caller commits: the notices and the cursor's move are one unit."""
    known = db_session.get(NoticeCursor, CURSOR)
    if known is not None and known.next_index >= history_person.integrated_count(db_session=db_session):
        return 0  # nothing new: no write, so an idle round never takes SQLite's write lock
    cursor = _lock_cursor(db_session)
    if cursor is None:
        return 0
    now = now or utcnow()
    rows = history_person.integrated_after(db_session=db_session, start_index=cursor.next_index, limit=batch)
    if not rows:
        return 0
    people = {row.person_key for _, row in rows}
    prefs = {p.person_key: p for p in db_session.scalars(
        select(NoticePreference).where(NoticePreference.person_key.in_(people)))}
    made = []
    for _, row in rows:
        pref = prefs.get(row.person_key)
        if pref is None or (row.sealed_until is not None and row.sealed_until > now):
            continue
        kinds = event_kinds(permitted=row.permitted, overridden=bool(row.overridden), kind=row.kind,
                            outcome=row.outcome)
        if not any(getattr(pref, f"on_{k}") for k in kinds):
            continue
        made.append({"person_key": row.person_key, "kind": kinds[0], "entry_id": row.entry_id,
                     "recorded_at": row.recorded_at, "requester": row.requester, "provider": row.provider,
                     "outcome": row.outcome, "created_at": now, "read_at": None,
                     "mail": "pending" if mail_enabled and pref.email else None})
    if made:  # the unique (person, entry) makes a round that is repeated after a crash harmless
        db_session.execute(insert_or_ignore(db_session, Notice), made)
    cursor.next_index = rows[-1][0] + 1
    cursor.updated_at = now
    db_session.flush()
    return len(rows)


def _message(settings: Settings, to: str, kind: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"] = settings.smtp_from, to
    message["Subject"] = f"【マイ連携ポータル】{KIND_TITLES[kind]}"
    portal = f"{settings.base_url.rstrip('/')}/portal/notices"
    message.set_content(
        f"{KIND_TITLES[kind]}。\n詳しくはマイ連携ポータルでご確認ください: {portal}\n\n"
        f"There is a new notice about your information in the Renkei portal: {portal}\n"
        "(このメールには、やりとりの内容は含まれません。 This e-mail holds no detail of the exchange.)\n")
    return message


def send_mail(*, db_session: Session, settings: Settings, limit: int = MAIL_BATCH) -> int:
    """E-mail the pending notices through the configured SMTP server; returns how many went."""
    if not settings.smtp_host:
        return 0
    pending = db_session.execute(
        select(Notice.id, Notice.kind, NoticePreference.email)
        .join(NoticePreference, NoticePreference.person_key == Notice.person_key)
        .where(Notice.mail == "pending").order_by(Notice.id).limit(limit)).all()
    if not pending:
        return 0
    sent = []
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
        for notice_id, kind, email in pending:
            if email:
                smtp.send_message(_message(settings, email, kind))
            sent.append(notice_id)
    db_session.execute(update(Notice).where(Notice.id.in_(sent)).values(mail="sent"),
                       execution_options={"synchronize_session": False})
    return len(sent)


class Notifier(Periodic):
    """Makes notices from newly integrated entries in a daemon thread: woken when its process's
    integrator grew the tree, idle otherwise (every `idle_interval` seconds it looks for what
    another process integrated)."""

    name = "portal-notifier"
    wakes_on = (history_ledger.INTEGRATED,)

    def __init__(self, session_scope: Callable, settings: Callable[[], Settings], interval: float = 0.5,
                 idle_interval: float | None = None):
        super().__init__(interval, idle_interval)
        self._session_scope = session_scope
        self._settings = settings

    def run_once(self) -> int:
        settings = self._settings()
        done = 0
        while True:
            with self._session_scope() as db:
                count = produce(db_session=db, mail_enabled=bool(settings.smtp_host))
            done += count
            if count < BATCH:
                break
        if settings.smtp_host:
            with self._session_scope() as db:
                send_mail(db_session=db, settings=settings)
        return done
