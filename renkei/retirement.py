"""Retiring an agency (`renkei agency remove`): every room hears it, in one transaction.

The roof calls each room's own service function; no room reaches into another's tables.
Nothing is deleted: history naming the agency stays readable and verifiable.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from consent import service as consent
from discovery import service as location
from federation import service as agencies
from kernel.db import utcnow
from pseudonym import service as pseudonyms


@dataclass(frozen=True)
class Retirement:
    """What retiring one agency changed."""

    entity_id: str
    offerings: int
    whitelist_entries: int


def retire_agency(*, db_session: Session, entity_id: str) -> Retirement:
    """Retire an agency in the registry, discovery, consent and pseudonym rooms at one instant.

    The caller owns the transaction, so either every room hears it or none does.
    """
    at = utcnow()
    agencies.retire(db_session=db_session, entity_id=entity_id, at=at)  # refuses unknown/retired
    offerings = location.retire_provider(db_session=db_session, provider=entity_id, at=at)
    entries = consent.retire_agency(db_session=db_session, agency=entity_id, at=at)
    pseudonyms.retire_agency(db_session=db_session, agency=entity_id, at=at)
    return Retirement(entity_id=entity_id, offerings=offerings, whitelist_entries=entries)
