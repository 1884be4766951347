"""Tables of the federation room: registered agencies, their endpoints and pinned keys."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kernel.db import Base, utcnow


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
    # set once the agency is retired: the row, metadata and keys stay so history naming it
    # stays readable and verifiable, but it takes part in nothing new
    retired_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # IdP-initiated (unsolicited) SSO to this agency's registered ACS: off unless the operator allows it
    allow_unsolicited: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # metadata refreshed from a URL, accepted only when signed by this pinned certificate
    metadata_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    metadata_signing_cert: Mapped[str | None] = mapped_column(Text, nullable=True)
    metadata_valid_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    metadata_refreshed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    endpoints: Mapped[list[AgencyEndpoint]] = relationship(
        back_populates="agency", cascade="all, delete-orphan", lazy="selectin"
    )
    certificates: Mapped[list[AgencyCertificate]] = relationship(
        back_populates="agency", cascade="all, delete-orphan", lazy="selectin"
    )
    # set for an agency that connects over OpenID Connect (federation.oidc)
    oidc_client: Mapped[AgencyOidcClient | None] = relationship(
        cascade="all, delete-orphan", lazy="selectin", uselist=False
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


class AgencyOidcClient(Base):
    """An agency's OpenID Connect client metadata (RFC 7591 fields), checked at registration;
    the JWKS in it are the only keys its client assertions and request objects verify with."""

    __tablename__ = "agency_oidc_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), unique=True)
    metadata_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
