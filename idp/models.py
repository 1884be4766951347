"""Tables of the IdP room: people's accounts, their sessions, passkeys and the login throttle."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, Text, UniqueConstraint
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
    # the TOTP seed sealed with AES-GCM under the hub's `totp` secret (idp.accounts)
    totp_secret: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # the last accepted TOTP time step: a code is good once (RFC 6238 §5.2)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
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
    # refreshed at most once a minute, so the idle timeout costs no write per request
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class LoginThrottle(Base):
    """Recent failed logins per account name or per client address (NIST SP 800-63B §5.2.2).

    Kept for unknown usernames too, so the answers do not tell which accounts exist.
    """

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # "account:NAME" or "address:IP"
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime)


class PendingAuthn(Base):
    """An AuthnRequest waiting for the person to log in (kept in the database, not in memory)."""

    __tablename__ = "pending_authn"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_json: Mapped[str] = mapped_column(Text)
    password_ok_person: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class PersonRole(Base):
    """A role a person holds beyond their own pages (e.g. `auditor`, 監査), granted by the operator."""

    __tablename__ = "person_roles"
    __table_args__ = (UniqueConstraint("person_key", "role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_key: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(32))
    granted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SessionParticipant(Base):
    """An agency that got an assertion in a login session, with the NameID it got: whom Single
    Logout must reach, and how a transient NameID maps back to its session (profiles §4.4)."""

    __tablename__ = "idp_session_participants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)  # IdpSession.id
    sp: Mapped[str] = mapped_column(String(1024))
    name_id: Mapped[str] = mapped_column(String(256), index=True)
    name_id_format: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class LogoutInProgress(Base):
    """A front-channel Single Logout walking the browser through the other agencies' SLO
    endpoints; the RelayState of each LogoutRequest names it."""

    __tablename__ = "idp_logouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state_json: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class Passkey(Base):
    """A person's WebAuthn credential (idp.passkeys): several per person, each named by them."""

    __tablename__ = "passkeys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_key: Mapped[str] = mapped_column(String(64), index=True)
    # base64url of the credential ID, at most 1023 bytes (WebAuthn L3 §5.1 rawId)
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)
    # base64url of the random user.id the authenticator keeps (never the person key: it would
    # leave the hub inside every authenticator); the same for all of a person's passkeys
    user_handle: Mapped[str] = mapped_column(String(96), index=True)
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)  # COSE_Key, as the authenticator sent it
    sign_count: Mapped[int] = mapped_column(BigInteger)
    transports: Mapped[str] = mapped_column(String(200), default="")  # comma-separated
    aaguid: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class PasskeyChallenge(Base):
    """A WebAuthn challenge waiting for its answer: short-lived, spent on first use, in the
    database so any app process can check it."""

    __tablename__ = "passkey_challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the challenge, base64url
    purpose: Mapped[str] = mapped_column(String(16))  # "register", "login" or "second"
    person_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    pending: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # the PendingAuthn it serves
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
