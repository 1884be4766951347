"""Tables of the IdP room: people's accounts and their sessions."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, utcnow


class Person(Base):
    """A person's login account. `person_key` is the hub-internal key: it never leaves the hub."""

    __tablename__ = "persons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_key: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class IdpSession(Base):
    """A person's login session at the IdP; the cookie holds a token, the table its SHA-256."""

    __tablename__ = "idp_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_key: Mapped[str] = mapped_column(String(64), index=True)
    session_index: Mapped[str] = mapped_column(String(64), unique=True)
    authn_context: Mapped[str] = mapped_column(String(200))
    authn_instant: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class PendingAuthn(Base):
    """An AuthnRequest waiting for the person to log in (kept in the database, not in memory)."""

    __tablename__ = "pending_authn"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_json: Mapped[str] = mapped_column(Text)
    password_ok_person: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
