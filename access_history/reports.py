"""Agencies' reports of what they disclosed, matched against what the hub permitted.

An agency's batch is a JWS signed with a key pinned from its registered metadata. Each record
names the decision it answered; the hub records it as a `disclosure` entry owned by that
agency, in the same log as the decision, with the decision's person, requester, task and law.
A disclosure the hub never permitted (no such decision for this provider, a refusal, or an
information type the decision did not cover) is recorded all the same, flagged as an anomaly:
the log keeps what happened, the flag says it should not have. Permitted decisions that no
report answers within the configured time are flagged as unreported.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from access_history import service
from access_history.models import (
    CODE_MAX,
    Channel,
    DisclosureReport,
    EntryIn,
    EntryKind,
    HistoryEntry,
)
from kernel.db import insert_or_ignore, utcnow
from kernel.xml import read_xs_datetime

DISCLOSED = "DISCLOSED"
# anomalies: what an agency reports having disclosed that the hub did not permit
UNMATCHED = "UNMATCHED_DISCLOSURE"  # no decision of the hub by that ID for this provider
NOT_PERMITTED = "DISCLOSED_DESPITE_REFUSAL"  # the decision refused it
OUTSIDE_INFO_TYPES = "OUTSIDE_PERMITTED_INFO_TYPES"  # the decision did not cover that information
UNREPORTED = "UNREPORTED_PERMIT"  # a permit no report answered in time (flagged at read time)
ANOMALIES = (UNMATCHED, NOT_PERMITTED, OUTSIDE_INFO_TYPES)
UNKNOWN_PERSON = "-"  # the person of an unmatched report is not known to the hub

MAX_BATCH_BYTES = 512 * 1024
MAX_ITEMS = 1000
MAX_AGE = timedelta(minutes=10)
ALGORITHMS = ["RS256", "PS256", "ES256"]


class ReportRefused(ValueError):
    """The batch is not acceptable: not signed by the agency, stale, or malformed."""


@dataclass
class BatchResult:
    recorded: int = 0
    duplicates: int = 0
    anomalies: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"recorded": self.recorded, "duplicates": self.duplicates, "anomalies": self.anomalies}


def _public_jwk(key):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return RSAKey.import_key(key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(key)
    return None


def unverified_issuer(token: str) -> str:
    """The `iss` a batch claims, to find the agency whose keys must have signed it."""
    try:
        _, payload, _ = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise ReportRefused("not a compact JWS") from None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(issuer, str) or not issuer or len(issuer) > 1024:
        raise ReportRefused("the batch names no issuer")
    return issuer


def _verified_claims(token: str, keys: Sequence, *, issuer: str, audience: str, now: datetime) -> dict:
    jwks = [k for k in (_public_jwk(key) for key in keys) if k is not None]
    for key in jwks:
        try:
            claims = json.loads(jws.deserialize_compact(token, key, algorithms=ALGORITHMS).payload)
            break
        except (JoseError, ValueError):
            continue
    else:
        raise ReportRefused("the batch is not signed by a key of the reporting agency")
    if not isinstance(claims, dict) or claims.get("iss") != issuer or claims.get("aud") != audience:
        raise ReportRefused("the batch is for another hub or from another agency")
    issued = claims.get("iat")
    if not isinstance(issued, int) or abs(now.timestamp() - issued) > MAX_AGE.total_seconds():
        raise ReportRefused("the batch is stale or from the future")
    items = claims.get("disclosures")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_ITEMS:
        raise ReportRefused(f"a batch carries 1..{MAX_ITEMS} disclosures")
    return claims


def _code(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > CODE_MAX or not value.isprintable():
        raise ReportRefused(f"{what} must be a short printable text")
    return value


def _item(item: object) -> tuple[str, list[str], datetime]:
    if not isinstance(item, dict):
        raise ReportRefused("each disclosure is an object")
    types = item.get("info_types")
    if not isinstance(types, list) or not 0 < len(types) <= 32:
        raise ReportRefused("info_types must list 1..32 codes")
    try:
        provided = read_xs_datetime(item.get("provided_at") if isinstance(item.get("provided_at"), str) else None)
    except ValueError:
        raise ReportRefused("provided_at must be an xs:dateTime (ISO 8601) time") from None
    return _code(item.get("decision_id"), "decision_id"), [_code(t, "an info type") for t in types], provided


def receive_batch(*, db_session: Session, token: str, agency: str, agency_keys: Sequence, audience: str,
                  now: datetime | None = None) -> BatchResult:
    """Check a batch's signature and record each disclosure once; the caller commits."""
    now = now or utcnow()
    claims = _verified_claims(token, agency_keys, issuer=agency, audience=audience, now=now)
    parsed = [_item(item) for item in claims["disclosures"]]  # all or nothing
    result = BatchResult()
    for decision_id, info_types, provided_at in parsed:
        decisions = {e.info_type_code: e for e in db_session.scalars(
            select(HistoryEntry).where(HistoryEntry.decision_id == decision_id,
                                       HistoryEntry.kind == EntryKind.DECISION.value))}
        for info_type in dict.fromkeys(info_types):
            fresh = db_session.execute(insert_or_ignore(db_session, DisclosureReport).values(
                decision_id=decision_id, info_type_code=info_type, owner=agency, reported_at=now,
            ).returning(DisclosureReport.decision_id)).first()
            if fresh is None:
                result.duplicates += 1
                continue
            entry = _disclosure_entry(agency, decision_id, info_type, provided_at, decisions)
            service.append(db_session=db_session, entry=entry)
            result.recorded += 1
            if entry.outcome in ANOMALIES:
                result.anomalies.append({"decision_id": decision_id, "info_type": info_type,
                                         "anomaly": entry.outcome})
    return result


def _disclosure_entry(agency: str, decision_id: str, info_type: str, provided_at: datetime,
                      decisions: dict[str, HistoryEntry]) -> EntryIn:
    decided = decisions.get(info_type)
    any_decision = next(iter(decisions.values()), None)
    if any_decision is None or any_decision.provider != agency:
        outcome, basis = UNMATCHED, None
    elif decided is None:
        outcome, basis = OUTSIDE_INFO_TYPES, any_decision
    elif not decided.permitted:
        outcome, basis = NOT_PERMITTED, decided
    else:
        outcome, basis = DISCLOSED, decided
    return EntryIn(
        kind=EntryKind.DISCLOSURE, channel=Channel.REPORT, owner=agency, outcome=outcome,
        decision_id=decision_id, info_type_code=info_type, provider=agency, provided_at=provided_at,
        requester=basis.requester if basis else "-", staff=basis.staff if basis else None,
        person_key=basis.person_key if basis else UNKNOWN_PERSON,
        task_code=basis.task_code if basis else "-", legal_basis=basis.legal_basis if basis else None,
        whitelist_entry=basis.whitelist_entry if basis else None,
        asked_at=basis.asked_at if basis else None, query_id=basis.query_id if basis else None,
        query_group_id=basis.query_group_id if basis else None,
    )


def unreported_permits(*, db_session: Session, older_than: timedelta, now: datetime | None = None,
                       limit: int = 1000) -> list[HistoryEntry]:
    """Permitted token decisions no agency reported within `older_than`, oldest first."""
    cutoff = (now or utcnow()) - older_than
    reported = exists().where(and_(DisclosureReport.decision_id == HistoryEntry.decision_id,
                                   DisclosureReport.info_type_code == HistoryEntry.info_type_code))
    return list(db_session.scalars(
        select(HistoryEntry).where(HistoryEntry.kind == EntryKind.DECISION.value,
                                   HistoryEntry.channel == Channel.DISCOVERY.value,
                                   HistoryEntry.permitted.is_(True), HistoryEntry.recorded_at < cutoff,
                                   ~reported)
        .order_by(HistoryEntry.recorded_at).limit(limit)))


def anomalous_disclosures(*, db_session: Session, limit: int = 1000) -> list[HistoryEntry]:
    """Disclosures agencies reported that the hub did not permit, newest first."""
    return list(db_session.scalars(
        select(HistoryEntry).where(HistoryEntry.kind == EntryKind.DISCLOSURE.value,
                                   HistoryEntry.outcome.in_(ANOMALIES))
        .order_by(HistoryEntry.recorded_at.desc()).limit(limit)))
