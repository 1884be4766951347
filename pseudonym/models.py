"""Tables of the pseudonym room. People and agencies are named by key strings, not foreign keys:
the rooms that own them may change without this one reaching into their tables."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import BIG_ID, Base, utcnow


class Pseudonym(Base):
    """The pairwise pseudonym of one person for one agency, under one key version."""

    __tablename__ = "pseudonyms"
    __table_args__ = (
        Index("ix_pseudonyms_person_agency", "person_key", "agency"),
        # at most one live pseudonym per (person, agency)
        Index(
            "uq_pseudonyms_live",
            "person_key",
            "agency",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    person_key: Mapped[str] = mapped_column(String(64))
    agency: Mapped[str] = mapped_column(String(1024))
    value: Mapped[str] = mapped_column(String(256), unique=True)
    key_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AgencyKeyVersion(Base):
    """Which pseudonym key version an agency's pseudonyms are computed under."""

    __tablename__ = "pseudonym_agency_keys"

    agency: Mapped[str] = mapped_column(String(1024), primary_key=True)
    key_version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Rotation(Base):
    """Old-to-new pseudonym map kept for the one agency whose key was rotated."""

    __tablename__ = "pseudonym_rotations"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    agency: Mapped[str] = mapped_column(String(1024), index=True)
    old_value: Mapped[str] = mapped_column(String(256), unique=True)
    new_value: Mapped[str] = mapped_column(String(256))
    from_version: Mapped[int] = mapped_column(Integer)
    to_version: Mapped[int] = mapped_column(Integer)
    rotated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class MasterIdentifier(Base):
    """A person's master identifier (e.g. an individual number), kept only as a keyed hash."""

    __tablename__ = "master_identifiers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_key: Mapped[str] = mapped_column(String(64), unique=True)
    master_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_version: Mapped[int] = mapped_column(Integer)


class LocalLink(Base):
    """An agency's own record ID for a person, linked once by the operator's CSV import."""

    __tablename__ = "local_links"
    __table_args__ = (
        UniqueConstraint("agency", "local_id"),
        Index("ix_local_links_person_agency", "person_key", "agency"),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    agency: Mapped[str] = mapped_column(String(1024), index=True)
    local_id: Mapped[str] = mapped_column(String(256))
    person_key: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RetiredAgency(Base):
    """An agency retired from the federation: its pseudonyms and links stay (they are
    history), but no new ones are made for it."""

    __tablename__ = "pseudonym_retired_agencies"

    agency: Mapped[str] = mapped_column(String(1024), primary_key=True)
    retired_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
