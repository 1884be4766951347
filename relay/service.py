"""Relaying an envelope, read top to bottom (seed 001 §5.1):

    verify the sender's signature (registered keys) → idempotency by receipt number → route by
    (process type, message type) → resolve each logical destination to an agency and endpoint
    (情報所在管理) → split the attachments per destination → decide each (the discovery path:
    whitelist, the person's policy, the log, channel `relay`) → translate the pseudonym →
    re-sign with the hub's key → commit the outbox rows with the log entries → deliver

Delivery is the outbox's job (`claim_due` / `deliver` / `DeliveryWorker`): in id order per
receiver, retried with backoff while the receiver is down, kept for resend until `keep_until`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import httpx
from lxml import etree
from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from access_history import service as history
from discovery import pipeline
from discovery import service as location
from discovery.errors import DiscoveryRefused, LogWriteFailed
from discovery.tokens import DISCOVERY_ROLE
from federation import service as agencies
from federation.service import RegisteredAgency
from kernel.background import Periodic
from kernel.db import utcnow
from kernel.keys import current_signing_key, keystore
from kernel.settings import Settings
from kernel.xml import XMLSecurityError, new_id, parse_xml
from relay import routes as route_table
from relay.errors import (
    DestinationUnresolved,
    EnvelopeMalformed,
    HubUnavailable,
    NoRoute,
    NotFound,
    ReceiptConflict,
    RelayRefused,
    SignatureRejected,
    UnknownPerson,
    UnknownSender,
)
from relay.models import (
    DELIVERED,
    EXPIRED,
    QUEUED,
    REFUSED,
    REJECTED,
    RelayDelivery,
    RelayEnvelope,
)
from renkei_provider import envelope as env_format
from renkei_provider.envelope import (
    ENV_NS,
    SOAP11_NS,
    Ack,
    Envelope,
    EnvelopeInvalid,
    EnvelopeSignatureInvalid,
)

log = logging.getLogger(__name__)

# the hub signs what it forwards with the discovery role's key: the key agencies already pin
# from the hub's metadata for discovery tokens (one role, one rotation, one published set)
RELAY_ROLE = DISCOVERY_ROLE
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
SOAP_ACTION = "urn:renkei:envelope:1.0:Deliver"
REMARK_MAX = 512


@lru_cache(maxsize=1)
def envelope_schema() -> etree.XMLSchema:
    """relay/schema/envelope.xsd, loaded once (no network: the schema imports nothing)."""
    return etree.XMLSchema(etree.parse(str(SCHEMA_DIR / "envelope.xsd")))


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryStatus:
    """One destination of a submitted envelope, as the sender may see it (受領Ack)."""

    logical_to: str
    state: str  # queued | delivered | rejected | refused | expired
    reason: str  # the decision's reason code
    decision_id: str
    ack_status: str | None = None
    ack_time: datetime | None = None
    ack_remark: str | None = None
    attempts: int = 0

    def to_json(self) -> dict:
        return {"to": self.logical_to, "state": self.state, "reason": self.reason, "decision_id": self.decision_id,
                "ack": None if self.ack_status is None else {
                    "status": self.ack_status, "remark": self.ack_remark or "",
                    "time": self.ack_time.replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if self.ack_time else None},
                "attempts": self.attempts}


@dataclass(frozen=True)
class SubmitResult:
    receipt_number: str
    sender: str
    query_group_id: str
    received_at: datetime
    duplicate: bool
    deliveries: tuple[DeliveryStatus, ...]
    delivery_ids: tuple[int, ...] = ()

    def to_json(self) -> dict:
        return {"receipt_number": self.receipt_number, "query_group_id": self.query_group_id,
                "received_at": self.received_at.replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "duplicate": self.duplicate, "deliveries": [d.to_json() for d in self.deliveries]}

    def to_element(self) -> etree._Element:
        """The SOAP face's answer: env:SubmitResponse with one env:Delivery per destination."""
        e = lambda n: f"{{{ENV_NS}}}{n}"
        root = etree.Element(e("SubmitResponse"), nsmap={"env": ENV_NS})
        etree.SubElement(root, e("ReceiptNumber")).text = self.receipt_number
        etree.SubElement(root, e("QueryGroupId")).text = self.query_group_id
        etree.SubElement(root, e("Duplicate")).text = "true" if self.duplicate else "false"
        for d in self.deliveries:
            el = etree.SubElement(root, e("Delivery"), To=d.logical_to, State=d.state, Reason=d.reason,
                                  DecisionId=d.decision_id)
            if d.ack_status:
                ack = Ack(self.receipt_number, d.ack_status, d.ack_time.replace(tzinfo=UTC), d.ack_remark or "")
                el.append(ack.to_element())
        return root


# --- receiving from a sender ---------------------------------------------------------------------


def _sender_of(db_session: Session, claimed: str | None) -> RegisteredAgency:
    sender = agencies.lookup(db_session=db_session, entity_id=claimed) if claimed else None
    if sender is None or not sender.signing_keys:
        raise UnknownSender("From names no registered agency with a signing key")
    return sender


def receive_xml(*, db_session: Session, settings: Settings, data: bytes, query_group_id: str | None = None,
                now: datetime | None = None) -> SubmitResult:
    """An envelope in XML (bare or in a SOAP 1.1 Body), signed by its sender: verify, then `submit`."""
    try:
        root = parse_xml(data, max_bytes=env_format.MAX_ENVELOPE_BYTES)
        if root.tag == f"{{{SOAP11_NS}}}Envelope":
            root = env_format.soap_payload(root)
    except (XMLSecurityError, EnvelopeInvalid) as exc:
        raise EnvelopeMalformed(str(exc)) from None
    # the claimed sender picks the keys; every field is then read from what they verified
    claimed = root.findtext(f"{{{ENV_NS}}}Header/{{{ENV_NS}}}From")
    sender = _sender_of(db_session, claimed)
    try:
        from kernel.xml import verify_signed

        verified = verify_signed(root, list(sender.signing_keys))
    except XMLSecurityError as exc:
        raise SignatureRejected(f"the envelope signature is refused: {exc}") from None
    if not envelope_schema().validate(verified):
        error = envelope_schema().error_log.last_error
        raise EnvelopeMalformed(f"the envelope does not follow envelope.xsd: {error.message if error else ''}"[:300])
    try:
        envelope = env_format.from_element(verified)
    except EnvelopeInvalid as exc:
        raise EnvelopeMalformed(str(exc)) from None
    if envelope.header.sender != sender.entity_id:
        raise SignatureRejected("the signed From is not the agency whose key verified it")
    return submit(db_session=db_session, settings=settings, sender=sender, envelope=envelope,
                  query_group_id=query_group_id, now=now)


def receive_jws(*, db_session: Session, settings: Settings, token: str, query_group_id: str | None = None,
                now: datetime | None = None) -> SubmitResult:
    """An envelope's JSON form as a compact JWS signed by its sender: verify, then `submit`."""
    claimed = _unverified_sender(token)
    sender = _sender_of(db_session, claimed)
    try:
        envelope = env_format.read_jws(token, trusted_keys=sender.signing_keys)
    except EnvelopeSignatureInvalid as exc:
        raise SignatureRejected(str(exc)) from None
    except EnvelopeInvalid as exc:
        raise EnvelopeMalformed(str(exc)) from None
    if envelope.header.sender != sender.entity_id:
        raise SignatureRejected("the signed from is not the agency whose key verified it")
    return submit(db_session=db_session, settings=settings, sender=sender, envelope=envelope,
                  query_group_id=query_group_id, now=now)


def _unverified_sender(token: str) -> str | None:
    """header.from of a JWS payload, read only to choose the keys that must then verify it."""
    import base64

    if not isinstance(token, str) or len(token) > 2 * env_format.MAX_ENVELOPE_BYTES or token.count(".") != 2:
        raise EnvelopeMalformed("not a compact JWS within the size limit")
    part = token.split(".")[1]
    try:
        payload = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        claimed = payload["header"]["from"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise EnvelopeMalformed("the JWS payload is not an envelope") from None
    return claimed if isinstance(claimed, str) else None


def digest(envelope: Envelope) -> str:
    """SHA-256 of the envelope's JSON form: the same envelope in either form has one digest."""
    canonical = json.dumps(env_format.to_json(envelope), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class _Leg:
    destination: route_table.Destination
    receiver: RegisteredAgency
    endpoint: str
    attachments: tuple


def _legs(db_session: Session, route: route_table.Route, envelope: Envelope) -> list[_Leg]:
    """Each logical destination resolved to an agency and the endpoint of its offering."""
    legs = []
    for d in route.destinations:
        entity_id = envelope.attribute(d.agency[1:]) if d.agency.startswith("@") else d.agency
        receiver = agencies.lookup(db_session=db_session, entity_id=entity_id) if entity_id else None
        if receiver is None:
            raise DestinationUnresolved(f"destination {d.logical_to}: {d.agency} names no registered agency")
        found = location.service_location(db_session=db_session, urn=d.service_type)
        endpoint = next((o.endpoint for o in (found[1] if found else ()) if o.provider == receiver.entity_id), None)
        if endpoint is None:
            raise DestinationUnresolved(f"destination {d.logical_to}: the agency offers no {d.service_type}")
        wanted = set(d.attachments)
        attachments = tuple(a for a in envelope.attachments if not wanted or a.name in wanted)
        legs.append(_Leg(d, receiver, endpoint, attachments))
    return legs


def submit(*, db_session: Session, settings: Settings, sender: RegisteredAgency, envelope: Envelope,
           query_group_id: str | None = None, now: datetime | None = None) -> SubmitResult:
    """Route, decide, log and queue an envelope already verified as `sender`'s; commits.

    Submitting the same envelope (same sender, receipt number and content) again changes
    nothing and answers its current status; other content under a used receipt number is
    refused (ReceiptConflict). `query_group_id` ties the decisions to a process run."""
    now = (now or utcnow()).replace(microsecond=0)
    fingerprint = digest(envelope)
    existing = _existing(db_session, sender.entity_id, envelope.header.receipt_number)
    if existing is not None:
        if existing.digest != fingerprint:
            raise ReceiptConflict(f"receipt number {envelope.header.receipt_number} was used for another envelope")
        return status(db_session=db_session, sender=sender.entity_id,
                      receipt_number=envelope.header.receipt_number, duplicate=True)
    route = route_table.get_route(db_session=db_session, process_type=envelope.process_type,
                                  message_type=envelope.message_type)
    if route is None:
        raise NoRoute(f"no route for process type {envelope.process_type}, message type {envelope.message_type}")
    legs = _legs(db_session, route, envelope)
    group = query_group_id or new_id()
    try:
        decided = pipeline.decide_relay(
            db_session=db_session, settings=settings, sender=sender, sender_pseudonym=envelope.person,
            legs=[pipeline.RelayLeg(leg.receiver, leg.destination.service_type, leg.endpoint, leg.destination.task,
                                    leg.destination.info_type) for leg in legs],
            query_group_id=group, now=now,
        )
    except LogWriteFailed as exc:
        raise HubUnavailable(exc.message) from None
    except DiscoveryRefused as exc:
        if exc.code == "UNKNOWN_PERSON":
            raise UnknownPerson("the Person attribute is no pseudonym of the sending agency") from None
        raise RelayRefused(exc.message) from None
    row = RelayEnvelope(sender=sender.entity_id, receipt_number=envelope.header.receipt_number,
                        digest=fingerprint, process_type=envelope.process_type, message_type=envelope.message_type,
                        query_group_id=group, received_at=now)
    db_session.add(row)
    try:
        db_session.flush()
    except IntegrityError:  # the same receipt number submitted concurrently: the first one won
        db_session.rollback()
        return submit(db_session=db_session, settings=settings, sender=sender, envelope=envelope,
                      query_group_id=query_group_id, now=now)
    keep_until = now + timedelta(days=settings.relay_retention_days)
    signer = current_signing_key(RELAY_ROLE)
    deliveries = []
    for leg, d in zip(legs, decided.decisions, strict=True):
        body = None
        if d.permitted:
            forwarded = replace(
                envelope.with_attribute(env_format.PERSON, decided.receiver_pseudonyms[leg.receiver.entity_id]),
                header=replace(envelope.header, to=leg.destination.logical_to, sent=now, decision_id=d.decision_id),
                attachments=leg.attachments, id=new_id(),
            )
            body = forwarded_body(forwarded, leg.destination.binding, signer)
        deliveries.append(RelayDelivery(
            envelope_id=row.id, receipt_number=envelope.header.receipt_number, logical_to=leg.destination.logical_to,
            receiver=leg.receiver.entity_id, endpoint=leg.endpoint, binding=leg.destination.binding,
            decision_id=d.decision_id, state=QUEUED if d.permitted else REFUSED, reason=d.reason[:64], body=body,
            attempts=0, next_attempt_at=now, created_at=now, keep_until=keep_until,
        ))
    db_session.add_all(deliveries)
    try:
        db_session.commit()  # log before disclose: the decisions and the outbox rows together
    except SQLAlchemyError as exc:
        db_session.rollback()
        raise HubUnavailable("the decisions could not be recorded; nothing will be sent") from exc
    return SubmitResult(
        envelope.header.receipt_number, sender.entity_id, group, now, False,
        tuple(_status_of(r) for r in deliveries), tuple(r.id for r in deliveries),
    )


def forwarded_body(envelope: Envelope, binding: str, signer) -> bytes:
    """What the hub POSTs to a receiver: the envelope signed with the hub's key, in a SOAP 1.1
    Body or as a JSON object holding the JWS."""
    if binding == "json":
        return json.dumps({"envelope": env_format.sign_json(envelope, signer.private_key)}).encode()
    # exclusive c14n ignores the SOAP ancestors: the signed element is wrapped as it is
    return env_format.soap_wrap(env_format.sign_element(envelope, signer.private_key))


def _existing(db_session: Session, sender: str, receipt_number: str) -> RelayEnvelope | None:
    return db_session.scalar(select(RelayEnvelope).where(RelayEnvelope.sender == sender,
                                                         RelayEnvelope.receipt_number == receipt_number))


def _status_of(row: RelayDelivery) -> DeliveryStatus:
    return DeliveryStatus(row.logical_to, row.state, row.reason, row.decision_id, row.ack_status, row.ack_time,
                          row.ack_remark, row.attempts)


def status(*, db_session: Session, sender: str, receipt_number: str, duplicate: bool = False) -> SubmitResult:
    """Where each destination of a submitted envelope stands (the sender's 受領Ack)."""
    env = _existing(db_session, sender, receipt_number)
    if env is None:
        raise NotFound(f"no envelope {receipt_number} from this sender")
    rows = list(db_session.scalars(select(RelayDelivery).where(RelayDelivery.envelope_id == env.id)
                                   .order_by(RelayDelivery.id)))
    # a resend adds a row per receiver: the sender sees each destination once, its latest row
    latest: dict[str, RelayDelivery] = {}
    for r in rows:
        latest[r.logical_to] = r
    return SubmitResult(receipt_number, sender, env.query_group_id, env.received_at, duplicate,
                        tuple(_status_of(r) for r in latest.values()), tuple(r.id for r in latest.values()))


def resend(*, db_session: Session, receiver: str, sender: str, receipt_number: str,
           now: datetime | None = None) -> int:
    """Queue the kept copy of every envelope of (sender, receipt number) forwarded to `receiver`
    again (resend on request); returns how many. Flushes; the caller commits."""
    now = now or utcnow()
    env = _existing(db_session, sender, receipt_number)
    rows = [] if env is None else list(db_session.scalars(
        select(RelayDelivery).where(RelayDelivery.envelope_id == env.id, RelayDelivery.receiver == receiver,
                                    RelayDelivery.state.in_((DELIVERED, REJECTED, EXPIRED)),
                                    RelayDelivery.body.is_not(None))))
    if not rows:
        raise NotFound("no kept envelope with that receipt number was forwarded to you")
    seen = set()
    for r in rows:
        if r.logical_to in seen:
            continue
        seen.add(r.logical_to)
        db_session.add(RelayDelivery(
            envelope_id=r.envelope_id, receipt_number=r.receipt_number, logical_to=r.logical_to, receiver=r.receiver,
            endpoint=r.endpoint, binding=r.binding, decision_id=r.decision_id, state=QUEUED, reason=r.reason,
            body=r.body, attempts=0, next_attempt_at=now, created_at=now, keep_until=r.keep_until,
        ))
    db_session.flush()
    return len(seen)


# --- delivery (the outbox) ---------------------------------------------------------------------


def claim_due(*, db_session: Session, now: datetime, lease: timedelta, limit: int = 16,
              only: Sequence[int] | None = None) -> list[int]:
    """Claim the deliveries due now, at most one per receiver: the oldest queued one (order per
    destination). Rows another worker holds are skipped (FOR UPDATE SKIP LOCKED on PostgreSQL;
    SQLite writes one at a time). Commits the claims."""
    earlier = aliased(RelayDelivery)
    head_of_line = ~select(earlier.id).where(
        earlier.receiver == RelayDelivery.receiver, earlier.state == QUEUED, earlier.id < RelayDelivery.id,
    ).exists()
    free = (RelayDelivery.claimed_until.is_(None)) | (RelayDelivery.claimed_until < now)
    query = (select(RelayDelivery.id)
             .where(RelayDelivery.state == QUEUED, RelayDelivery.next_attempt_at <= now, free, head_of_line)
             .order_by(RelayDelivery.id).limit(limit).with_for_update(skip_locked=True))
    if only is not None:
        query = query.where(RelayDelivery.id.in_(list(only)))
    ids = list(db_session.scalars(query))
    claimed = []
    for delivery_id in ids:
        # compare-and-set: on SQLite (no row locks) two workers may have read the same row
        result = db_session.execute(
            update(RelayDelivery).where(and_(RelayDelivery.id == delivery_id, RelayDelivery.state == QUEUED, free))
            .values(claimed_until=now + lease).execution_options(synchronize_session=False))
        if result.rowcount:
            claimed.append(delivery_id)
    db_session.commit()
    return claimed


def _backoff(settings: Settings, attempts: int) -> timedelta:
    return timedelta(seconds=min(settings.relay_retry_max_seconds,
                                 settings.relay_retry_base_seconds * 2 ** min(attempts - 1, 30)))


def post(endpoint: str, binding: str, body: bytes, *, timeout: float,
         client: httpx.Client | None = None) -> Ack:
    """POST one forwarded envelope and read the receiver's 受領Ack; raises on anything else."""
    headers = ({"Content-Type": "application/json"} if binding == "json"
               else {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{SOAP_ACTION}"'})
    send = client.post if client is not None else httpx.post
    response = send(endpoint, content=body, headers=headers, timeout=timeout)
    if response.status_code >= 500 or response.status_code in (404, 408, 429):
        raise httpx.HTTPStatusError(f"receiver answered {response.status_code}", request=response.request,
                                    response=response)
    if binding == "json":
        try:
            answer = response.json()
        except ValueError:
            answer = None
        return env_format.ack_from_json(answer.get("ack") if isinstance(answer, dict) else None)
    return env_format.ack_from_xml(response.content)


def deliver(*, session_scope: Callable, settings: Settings, delivery_id: int,
            client: httpx.Client | None = None) -> str:
    """Send one claimed delivery and record the outcome: the receiver's ack, or a retry later
    (backoff) while it is down, or `expired` once the copy's keeping period is over."""
    with session_scope() as db:
        row = db.get(RelayDelivery, delivery_id)
        if row is None or row.state != QUEUED or row.body is None:
            return row.state if row is not None else "gone"
        endpoint, binding, body, receipt = row.endpoint, row.binding, row.body, row.receipt_number
    error = None
    try:
        ack = post(endpoint, binding, body, timeout=settings.relay_timeout_seconds, client=client)
        if ack.receipt_number != receipt:
            raise EnvelopeInvalid("the ack names another receipt number")
    except (httpx.HTTPError, EnvelopeInvalid, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:REMARK_MAX]
    now = utcnow()
    with session_scope() as db:
        row = db.get(RelayDelivery, delivery_id)
        if row is None or row.state != QUEUED:
            return row.state if row is not None else "gone"
        row.claimed_until = None
        row.attempts += 1
        if error is None:
            row.state = REJECTED if ack.status == env_format.REJECTED else DELIVERED
            row.ack_status, row.ack_remark = ack.status, ack.remark[:REMARK_MAX]
            row.ack_time = ack.time.astimezone(UTC).replace(tzinfo=None)
            # the receiver has it (even if it did not accept it): the hub disclosed it now
            _record_outcome(db, row, history.REJECTED_BY_RECEIVER if row.state == REJECTED else history.DELIVERED,
                            provided_at=now)
        else:
            row.last_error = error
            if now >= row.keep_until:
                row.state = EXPIRED
                _record_outcome(db, row, history.NOT_DELIVERED, provided_at=None)
            else:
                row.next_attempt_at = now + _backoff(settings, row.attempts)
        return row.state


def _record_outcome(db_session: Session, row: RelayDelivery, outcome: str, *, provided_at: datetime | None) -> None:
    """The delivery's end in the person's access history, in the transaction that records it
    on the row: a delivery ends once, so it is recorded once (a resend is a delivery of its
    own, recorded when it ends)."""
    history.record_relay_outcome(
        db_session=db_session, decision_id=row.decision_id, outcome=outcome, provided_at=provided_at,
        detail={"receipt_number": row.receipt_number, "to": row.logical_to, "ack": row.ack_status,
                "attempts": row.attempts})


def run_deliveries(*, session_scope: Callable, settings: Settings, only: Sequence[int] | None = None,
                   client: httpx.Client | None = None) -> int:
    """Claim what is due (of `only`, if given) and deliver it; returns how many were attempted."""
    lease = timedelta(seconds=settings.relay_lease_seconds)
    with session_scope() as db:
        ids = claim_due(db_session=db, now=utcnow(), lease=lease, only=only)
    for delivery_id in ids:
        deliver(session_scope=session_scope, settings=settings, delivery_id=delivery_id, client=client)
    return len(ids)


def settle(*, session_scope: Callable, ids: Sequence[int], timeout: float) -> None:
    """Wait (up to `timeout` seconds) while any of `ids` is being delivered by a worker, so a
    synchronous answer reports the receiver's ack even when the background worker took the row.

    A worker is delivering a row it has claimed (a lease in `claimed_until`), and on PostgreSQL
    also one it is claiming right now: locked by its `FOR UPDATE SKIP LOCKED` read, its lease
    not yet committed. A caller whose own claim skipped the row because a worker's round had it
    locked must wait for that worker rather than report the row as still queued."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _in_delivery(session_scope, list(ids), utcnow()):
            return
        time.sleep(0.02)


def _in_delivery(session_scope: Callable, ids: list[int], now: datetime) -> bool:
    """Whether a worker holds (or is taking) any of the queued deliveries `ids`."""
    with session_scope() as db:
        queued = RelayDelivery.id.in_(ids), RelayDelivery.state == QUEUED
        if db.scalar(select(RelayDelivery.id).where(
                *queued, RelayDelivery.claimed_until.is_not(None), RelayDelivery.claimed_until >= now).limit(1)):
            return True
        if db.get_bind().dialect.name != "postgresql":
            return False  # SQLite claims under its one write lock: no claim is half-made
        waiting = set(db.scalars(select(RelayDelivery.id).where(*queued)))
        free = set(db.scalars(select(RelayDelivery.id).where(*queued).with_for_update(skip_locked=True)))
        return bool(waiting - free)


def purge_expired_copies(*, db_session: Session, now: datetime | None = None) -> int:
    """Drop the bodies of settled deliveries whose keeping period is over; the rows stay as the record."""
    result = db_session.execute(
        update(RelayDelivery).where(RelayDelivery.keep_until < (now or utcnow()), RelayDelivery.state != QUEUED,
                                    RelayDelivery.body.is_not(None))
        .values(body=None).execution_options(synchronize_session=False))
    return result.rowcount or 0


class DeliveryWorker(Periodic):
    """Delivers the outbox in a daemon thread of each app process (like the history Integrator);
    several processes share the table safely through row claims."""

    name = "relay-delivery"
    PURGE_EVERY = 3600.0

    def __init__(self, session_scope: Callable, settings: Settings):
        # Not woken by a queued row: an envelope submitted synchronously is delivered by its own
        # request (`run_deliveries` + `settle`), and a worker woken by the same commit raced it
        # for the row (a synchronous answer then read 'queued' under load). Idle, it looks at
        # least as often as the first retry falls due; every 0.2 s while it finds work.
        super().__init__(settings.relay_worker_seconds,
                         min(settings.background_idle_seconds, settings.relay_retry_base_seconds))
        self._session_scope = session_scope
        self._settings = settings
        self._purged: float | None = None
        self._client = httpx.Client()
        self.paused = False  # a paused worker claims nothing (tests pause one process's worker)

    def run_once(self) -> int:
        import time

        if self.paused:
            return 0
        if self._purged is None or time.monotonic() - self._purged > self.PURGE_EVERY:
            self._purged = time.monotonic()
            with self._session_scope() as db:
                purge_expired_copies(db_session=db)
        done = 0
        while True:
            count = run_deliveries(session_scope=self._session_scope, settings=self._settings, client=self._client)
            done += count
            if not count:
                return done

    def stop(self) -> None:
        super().stop()
        self._client.close()


def hub_certificates() -> list:
    """The certificates receivers pin to verify what the hub forwards (published in the hub's
    metadata as the discovery role)."""
    return keystore().published_certificates(RELAY_ROLE)
