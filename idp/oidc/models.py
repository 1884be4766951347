"""Tables of the OpenID Connect provider: pending authorization requests, one-time codes,
access tokens and which RPs a login session reached (for back-channel logout).

Codes and tokens are stored by their SHA-256, never in clear: a database dump hands out none.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, utcnow


class OidcPending(Base):
    """An authorization request parked while the person logs in (the query string as received)."""

    __tablename__ = "oidc_pending"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(1024))
    query: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class OidcCode(Base):
    """An authorization code (RFC 6749 §4.1.2): single use, a minute long, bound to the client,
    the redirect URI and the PKCE challenge."""

    __tablename__ = "oidc_codes"
    __table_args__ = (Index("ix_oidc_codes_nonce", "client_id", "nonce"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the code
    client_id: Mapped[str] = mapped_column(String(1024))
    redirect_uri: Mapped[str] = mapped_column(String(1024))
    scope: Mapped[str] = mapped_column(String(200))
    nonce: Mapped[str | None] = mapped_column(String(256), nullable=True)
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(10))
    person_key: Mapped[str] = mapped_column(String(64))
    login_session_id: Mapped[str] = mapped_column(String(64))
    acr: Mapped[str] = mapped_column(String(200))
    auth_time: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)

    # authlib's AuthorizationCodeMixin / OIDC AuthorizationCodeMixin
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        from datetime import UTC

        return int(self.auth_time.replace(tzinfo=UTC).timestamp())

    def get_acr(self) -> str:
        return self.acr

    def get_amr(self) -> list[str] | None:
        return None


class OidcToken(Base):
    """An access token for UserInfo (RFC 6750 bearer), stored by its SHA-256."""

    __tablename__ = "oidc_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(1024))
    person_key: Mapped[str] = mapped_column(String(64))
    login_session_id: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(200))
    acr: Mapped[str] = mapped_column(String(200))
    auth_time: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class OidcRpSession(Base):
    """An RP that received an ID token in a login session, with the `sid` it was told
    (Back-Channel Logout 1.0 §2.1)."""

    __tablename__ = "oidc_rp_sessions"
    __table_args__ = (UniqueConstraint("login_session_id", "client_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login_session_id: Mapped[str] = mapped_column(String(64), index=True)
    client_id: Mapped[str] = mapped_column(String(1024))
    person_key: Mapped[str] = mapped_column(String(64))
    sid: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
