"""Tables of the IdP room: people's accounts, registered agencies (SPs), sessions."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from renkei.db import Base, utcnow


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


class Agency(Base):
    """An agency system registered from its SAML metadata (a service provider)."""

    __tablename__ = "agencies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_id: Mapped[str] = mapped_column(String(1024), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    agency_class: Mapped[str] = mapped_column(String(100), default="")
    authn_requests_signed: Mapped[bool] = mapped_column(Boolean, default=False)
    want_assertions_signed: Mapped[bool] = mapped_column(Boolean, default=True)
    metadata_xml: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    endpoints: Mapped[list[AgencyEndpoint]] = relationship(
        back_populates="agency", cascade="all, delete-orphan", lazy="selectin"
    )
    certificates: Mapped[list[AgencyCertificate]] = relationship(
        back_populates="agency", cascade="all, delete-orphan", lazy="selectin"
    )


class AgencyEndpoint(Base):
    """An AssertionConsumerService or SingleLogoutService endpoint from the agency's metadata."""

    __tablename__ = "agency_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # "acs" | "slo"
    binding: Mapped[str] = mapped_column(String(200))
    location: Mapped[str] = mapped_column(String(1024))
    response_location: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)

    agency: Mapped[Agency] = relationship(back_populates="endpoints")


class AgencyCertificate(Base):
    """A certificate pinned from metadata; the only keys an agency's signatures are checked with."""

    __tablename__ = "agency_certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    use: Mapped[str] = mapped_column(String(20))  # "signing" | "encryption"
    cert_pem: Mapped[str] = mapped_column(Text)

    agency: Mapped[Agency] = relationship(back_populates="certificates")


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
