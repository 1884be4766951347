"""The replay cache: message IDs already accepted, kept in the database until they expire.

In the database, not in memory, so every app process behind a load balancer sees the same.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, String, UniqueConstraint, delete
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.db import BIG_ID, Base, insert_or_ignore_in, utcnow


class ReplayDetected(Exception):
    """A message ID was seen before (SAML profiles §4.1.4.5)."""


class SeenMessage(Base):
    __tablename__ = "seen_messages"
    __table_args__ = (UniqueConstraint("issuer", "message_id"),)

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(1024))
    message_id: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


def remember_at_once(*, db_session: Session, issuer: str, message_id: str, expires_at: datetime) -> None:
    """`remember` for IDs checked at the start of a request, before anything is disclosed.

    On SQLite in its own short transaction, committed at once: the request's transaction then
    takes no write lock until its end (SQLite has one writer; holding it through signing
    serializes every request). On PostgreSQL in the request's own transaction, so a request
    commits once: the unique index makes a concurrent duplicate wait for this transaction and
    then find the row, and a request that rolls back disclosed nothing, so its ID may be used
    again (what leaves the hub is only ever sent after that commit).
    """
    if db_session.get_bind().dialect.name == "postgresql":
        remember(db_session=db_session, issuer=issuer, message_id=message_id, expires_at=expires_at)
        return
    with Session(bind=db_session.get_bind()) as own:
        remember(db_session=own, issuer=issuer, message_id=message_id, expires_at=expires_at)
        own.commit()


@dataclass
class Once:
    """A message ID to be remembered before the answer to its message leaves the hub, later
    than at the start of the request: with the answer's history entries, in their group
    commit (`access_history.appender`), so a request that writes nothing else commits nothing
    of its own. Whatever takes it sets `remembered`; a request that answers without logging
    calls `remember_once` before it answers."""

    issuer: str
    message_id: str
    expires_at: datetime  # naive UTC, as the column holds it
    remembered: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.issuer, self.message_id

    def refused(self) -> ReplayDetected:
        return _seen_before(self.issuer, self.message_id)


def remember_once(*, db_session: Session, once: Once | None) -> None:
    """Remember `once` now (`remember_at_once`) unless that was done; ReplayDetected if used."""
    if once is None or once.remembered:
        return
    remember_at_once(db_session=db_session, issuer=once.issuer, message_id=once.message_id,
                     expires_at=once.expires_at)
    once.remembered = True


_INSERTS: dict[str, object] = {}  # per dialect, built once (a prebuilt Core statement)


def insert_statement(dialect: str):
    """`INSERT … ON CONFLICT DO NOTHING RETURNING id` into the cache: a row back means the ID
    was new (rowcount is not reliable across drivers; a returned row is)."""
    stmt = _INSERTS.get(dialect)
    if stmt is None:
        stmt = _INSERTS[dialect] = insert_or_ignore_in(dialect, SeenMessage).returning(SeenMessage.id)
    return stmt


def _insert(db_session: Session):
    return insert_statement(db_session.get_bind().dialect.name)


def remember(*, db_session: Session, issuer: str, message_id: str, expires_at: datetime) -> None:
    """Record a message ID once; raise ReplayDetected if it was already recorded."""
    params = {"issuer": issuer, "message_id": message_id, "expires_at": expires_at}
    if db_session.connection().execute(_insert(db_session), params).first() is None:
        raise _seen_before(issuer, message_id)
    sweep_now_and_then(db_session.connection())


def _seen_before(issuer: str, message_id: str) -> ReplayDetected:
    return ReplayDetected(f"message {message_id!r} from {issuer} was already received")


def sweep_now_and_then(connection) -> None:
    """Delete expired IDs on one call in a hundred: off the common path, yet never piling up."""
    if random.random() < 0.01:
        connection.execute(delete(SeenMessage).where(SeenMessage.expires_at < utcnow()))


class DatabaseReplayCache:
    """The hub's replay cache seen through `kernel.xml.ReplayCache`, for one issuer's IDs."""

    def __init__(self, *, db_session: Session, issuer: str):
        self.db_session = db_session
        self.issuer = issuer

    def first_use(self, token_id: str, *, expires_at: datetime, now: datetime) -> bool:
        try:
            remember(db_session=self.db_session, issuer=self.issuer, message_id=token_id,
                     expires_at=expires_at.replace(tzinfo=None))
        except ReplayDetected:
            return False
        return True
