"""Tables of the portal room: the person's portal sessions and the logins they started, and the
representatives (代理人) people appoint, with what each representative did."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base


class PortalSession(Base):
    """A person logged into the portal; the cookie holds a token, the table its SHA-256."""

    __tablename__ = "portal_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_key: Mapped[str] = mapped_column(String(64), index=True)
    name_id: Mapped[str] = mapped_column(String(256))  # the portal's own pairwise pseudonym
    session_index: Mapped[str | None] = mapped_column(String(256))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class PortalPending(Base):
    """A login or logout the portal asked the IdP for, bound to the browser that asked."""

    __tablename__ = "portal_pending"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    browser: Mapped[str] = mapped_column(String(64), index=True)  # SHA-256 of the browser cookie
    kind: Mapped[str] = mapped_column(String(8))  # login | logout
    next_path: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


# --- notices (お知らせ) ---------------------------------------------------------------------

NOTICE_KINDS = ("access", "refusal", "override", "anomaly")  # any access ⊇ the others
EMAIL_MAX = 254  # RFC 5321 §4.5.3.1.3, a forward-path less its angle brackets


class NoticePreference(Base):
    """Which kinds of event a person wants to be told of, and where to e-mail them."""

    __tablename__ = "portal_notice_preferences"

    person_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    on_access: Mapped[bool] = mapped_column(Boolean, default=False)
    on_refusal: Mapped[bool] = mapped_column(Boolean, default=False)
    on_override: Mapped[bool] = mapped_column(Boolean, default=False)
    on_anomaly: Mapped[bool] = mapped_column(Boolean, default=False)
    email: Mapped[str | None] = mapped_column(String(EMAIL_MAX))
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Notice(Base):
    """A notice to a person about one entry of their access history."""

    __tablename__ = "portal_notices"
    __table_args__ = (
        UniqueConstraint("person_key", "entry_id", name="uq_portal_notices_person_entry"),
        Index("ix_portal_notices_person_unread", "person_key", "read_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    person_key: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # one of NOTICE_KINDS, the most specific
    entry_id: Mapped[str] = mapped_column(String(32))
    recorded_at: Mapped[datetime] = mapped_column(DateTime)
    requester: Mapped[str] = mapped_column(String(1024))
    provider: Mapped[str] = mapped_column(String(1024))
    outcome: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    read_at: Mapped[datetime | None] = mapped_column(DateTime)
    mail: Mapped[str | None] = mapped_column(String(8), index=True)  # pending | sent; None: no mail


class NoticeCursor(Base):
    """How far the notifier has read the access log: the next leaf index to look at."""

    __tablename__ = "portal_notice_cursor"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    next_index: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Representative(Base):
    """A person (the principal) lets another registered person act for them for a period."""

    __tablename__ = "portal_representatives"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # random hex, shown in URLs
    principal_key: Mapped[str] = mapped_column(String(64), index=True)
    representative_key: Mapped[str] = mapped_column(String(64), index=True)
    principal_name: Mapped[str] = mapped_column(String(128))  # usernames, shown to the other side
    representative_name: Mapped[str] = mapped_column(String(128))
    starts_at: Mapped[datetime] = mapped_column(DateTime)
    ends_at: Mapped[datetime] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class RepresentativeAction(Base):
    """Something a representative did for the principal (also in the operations log)."""

    __tablename__ = "portal_representative_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grant_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    action: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(256))
