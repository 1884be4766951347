"""Tables of the discovery room: service types and who offers them (情報所在管理).

Which providers hold data about a person comes from the pseudonym room's local-ID links.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kernel.db import Base, utcnow


class ServiceType(Base):
    """A kind of service (e.g. resident record) and the information types it discloses."""

    __tablename__ = "discovery_service_types"

    urn: Mapped[str] = mapped_column(String(512), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    info_types: Mapped[str] = mapped_column(Text)  # space-separated 特定個人情報 codes
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    offerings: Mapped[list[Offering]] = relationship(back_populates="service_type", cascade="all, delete-orphan")

    @property
    def info_type_codes(self) -> list[str]:
        return self.info_types.split()


class Offering(Base):
    """A provider agency's endpoint for one service type."""

    __tablename__ = "discovery_offerings"
    __table_args__ = (UniqueConstraint("provider", "service_type_urn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(1024), index=True)
    service_type_urn: Mapped[str] = mapped_column(
        ForeignKey("discovery_service_types.urn", ondelete="CASCADE"), index=True
    )
    endpoint: Mapped[str] = mapped_column(String(1024))
    security_mechanism: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # set when the provider is retired: kept for history, never listed or decided by default
    retired_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    service_type: Mapped[ServiceType] = relationship(back_populates="offerings")
