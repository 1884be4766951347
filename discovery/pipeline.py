"""The cross-agency query (DESIGN.md flow 2) as one pipeline, read top to bottom:

    authenticate requester (the faces do this) → resolve the person → find providers →
    whitelist → the person's policy → log and commit → issue one token per permitted provider

Both faces (ID-WSF SOAP and the JSON API) and the NameIDMappingRequest call `discover` /
`map_name_id`, so they decide identically. Nothing leaves before the log entry is committed.
"""
from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from lxml import etree
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from access_history import service as history
from access_history.errors import InvalidLogEntry
from access_history.errors import LogWriteFailed as HistoryWriteFailed
from access_history.models import Channel, EntryIn, EntryKind
from consent import service as consent
from discovery import service as location
from discovery import tokens
from discovery.errors import (
    BootstrapTokenRejected,
    HubUnavailable,
    InvalidQuery,
    LogWriteFailed,
    PersonMismatch,
    PersonNotNamed,
    StaffAssertionRejected,
    UnknownInfoType,
    UnknownPerson,
    UnknownServiceType,
    UnknownTarget,
)
from discovery.tokens import DISCOVERY_ROLE
from federation import service as agencies
from federation.service import RegisteredAgency
from kernel.db import utcnow
from kernel.keys import KeyStore, current_signing_key, keystore
from kernel.replay import Once
from kernel.settings import Settings
from kernel.xml import (
    AssertionRejected,
    XMLSecurityError,
    encrypt_element,
    new_id,
    parse_xml,
    validate_assertion,
)
from pseudonym import bootstrap
from pseudonym import service as pseudonyms

log = logging.getLogger(__name__)

_Decided = TypeVar("_Decided")
NO_ENCRYPTION_KEY = "PROVIDER_HAS_NO_ENCRYPTION_KEY"


@dataclass(frozen=True)
class PersonRef:
    """How the requester names the person: a bootstrap token, or its own pseudonym plus the
    staff member's SSO assertion (docs/discovery.md)."""

    bootstrap_token: str | None = None
    pseudonym: str | None = None
    staff_assertion: bytes | None = None


@dataclass(frozen=True)
class Subject:
    person_key: str
    requester_pseudonym: str
    staff: str | None
    # read with the person in the same statement (pseudonym.service.resolve_with_holdings)
    holdings: dict[str, str] = field(default_factory=dict)
    holder_pseudonyms: dict[str, str] = field(default_factory=dict)


@dataclass
class OfferingDecision:
    """One provider's answer: permitted with an endpoint and token, or refused with a reason."""

    provider: str
    provider_name: str
    service_type: str
    endpoint: str
    security_mechanism: str
    permitted: bool
    reason: str
    decision_id: str
    overridden: bool = False
    whitelist_entry: int | None = None
    token: bytes | None = field(default=None, repr=False)
    # (information type, consent.Decision) for each type decided, in order; stays in the hub
    per_info_type: list = field(default_factory=list, repr=False)

    @property
    def token_b64(self) -> str | None:
        return base64.b64encode(self.token).decode() if self.token else None


def discovery_entity_id(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + "/discovery"


def _nothing_disclosed_on_database_failure(decide: Callable[..., _Decided]) -> Callable[..., _Decided]:
    """A database failure while deciding or logging rolls back and refuses the query: as
    LogWriteFailed when the log write (or the commit that makes it durable) failed, as
    HubUnavailable when anything else did. No token exists before the commit either way."""

    @functools.wraps(decide)
    def guarded(*, db_session: Session, **kwargs) -> _Decided:
        try:
            return decide(db_session=db_session, **kwargs)
        except HistoryWriteFailed as exc:
            db_session.rollback()
            raise LogWriteFailed() from exc
        except InvalidLogEntry as exc:
            db_session.rollback()
            raise InvalidQuery(str(exc)) from exc
        except SQLAlchemyError as exc:
            db_session.rollback()
            log.warning("discovery: the database failed outside the log write: %s", type(exc).__name__)
            raise HubUnavailable() from exc

    return guarded


def _commit_log(db_session: Session, entries: list[EntryIn], once: Once | None = None) -> None:
    """Commit the decision's own writes, then make its log entries durable in a batch with
    other requests' (group commit); a failure of either is the log write failing. `once`, the
    request's client assertion jti, is remembered in the same batch (ReplayDetected if used)."""
    history.append_durably(db_session=db_session, entries=entries, once=once)


@_nothing_disclosed_on_database_failure
def discover(
    *,
    db_session: Session,
    settings: Settings,
    requester: RegisteredAgency,
    person: PersonRef,
    service_type: str,
    task: str,
    info_type: str | None = None,
    now: datetime | None = None,
    query_group_id: str | None = None,
    once: Once | None = None,
) -> list[OfferingDecision]:
    """Decide, log durably, then issue tokens, for every provider of `service_type` for the person.

    Commits the session itself: "log before disclose" is this function's promise, not its
    caller's. If the log write or the commit fails, LogWriteFailed is raised and no token exists.
    `query_group_id` ties the entries to a larger procedure (a process run, `process/`).
    `once` (the request's client assertion jti, `kernel.jose.check_client_assertion`) is
    remembered with the entries: ReplayDetected, nothing logged and no token, if it was used.
    """
    now = now or utcnow()
    keys = keystore()
    subject = resolve_subject(db_session=db_session, settings=settings, keys=keys, requester=requester,
                              person=person, now=now)
    all_offerings, info_types = _offerings_and_info_types(db_session, service_type, info_type)
    held = subject.holdings  # read with the person: one round trip for person, holdings, pseudonyms
    offerings = location.offerings_for_person(offerings=all_offerings, holdings=held)
    # the law and the person's policy for every provider and information type: one statement
    decided = consent.decide_all(
        db_session=db_session, person_key=subject.person_key, requester=requester.entity_id, task_code=task,
        exchanges=[(o.provider, code) for o in offerings for code in info_types],
        classes_of=_classes_of(db_session), at=now)
    decisions = [_decide_offering(db_session, requester, subject, offering, task, info_types, now, decided=decided)
                 for offering in offerings]
    # the providers' own pseudonyms, stored (if new) in the same transaction as the decisions
    provider_pseudonyms = pseudonyms.get_or_create_many(
        db_session=db_session, keys=keys, person_key=subject.person_key,
        agencies=[d.provider for d in decisions if d.permitted], scope=settings.scope,
        known=subject.holder_pseudonyms,
    )
    entries = _log(requester, subject, decisions, task, channel=Channel.DISCOVERY, asked_at=now,
                   query_group_id=query_group_id)
    # log before disclose: the decisions are durable before any token exists
    _commit_log(db_session, entries, once)
    for d in decisions:
        if d.permitted:
            d.token = _token_for(db_session, settings, keys, requester, d, provider_pseudonyms[d.provider],
                                 held[d.provider], task, info_types, now)
    return decisions


def resolve_subject(
    *, db_session: Session, settings: Settings, keys: KeyStore, requester: RegisteredAgency,
    person: PersonRef, now: datetime,
) -> Subject:
    """Map the requester's way of naming the person to the hub's person key."""
    staff = None
    if person.bootstrap_token:
        try:
            boot = bootstrap.read_bootstrap(
                person.bootstrap_token, keys=keys,
                audience=discovery_entity_id(settings), requester=requester.entity_id,
                now=int(now.replace(tzinfo=UTC).timestamp()),
            )
        except bootstrap.BootstrapInvalid as exc:
            raise BootstrapTokenRejected(str(exc)) from None
        if person.pseudonym is not None and person.pseudonym != boot.pseudonym:
            raise PersonMismatch("the pseudonym given is not the bootstrap token's")
        pseudonym = boot.pseudonym
    elif person.pseudonym and person.staff_assertion:
        staff = _staff_member(db_session, settings, requester, person.staff_assertion, now)
        pseudonym = person.pseudonym
    else:
        raise PersonNotNamed(
            "name the person by a bootstrap token, or by your pseudonym with a staff assertion"
        )
    try:
        found = pseudonyms.resolve_with_holdings(db_session=db_session, agency=requester.entity_id, value=pseudonym)
    except pseudonyms.PseudonymError:
        raise UnknownPerson("no person has that pseudonym at your agency") from None
    return Subject(found.resolved.person_key, pseudonym, staff, found.holdings, found.holder_pseudonyms)


def _staff_member(db_session: Session, settings: Settings, requester: RegisteredAgency, xml: bytes,
                  now: datetime) -> str:
    """The staff member who asks: the NameID of the hub's own SSO assertion issued to the requester."""
    idp_keys = [c.public_key() for c in keystore().published_certificates("idp")]
    try:
        element = parse_xml(xml, max_bytes=settings.max_message_bytes)
        staff = validate_assertion(
            element, replay_cache=None, idp_entity_id=settings.idp_entity_id, idp_keys=idp_keys,
            audience=requester.entity_id, now=now, skew=timedelta(seconds=settings.clock_skew_seconds),
        )
    except (AssertionRejected, XMLSecurityError) as exc:
        raise StaffAssertionRejected(f"the staff assertion was refused: {exc}") from None
    return staff.name_id


def _offerings_and_info_types(db_session: Session, urn: str, info_type: str | None):
    found = location.service_location(db_session=db_session, urn=urn)
    if found is None:
        raise UnknownServiceType(f"no service type {urn}")
    stype, offerings = found
    codes = list(stype.info_types)
    if info_type is not None:
        if info_type not in codes:
            raise UnknownInfoType(f"{urn} does not disclose {info_type}")
        codes = [info_type]
    return offerings, codes


def _classes_of(db_session: Session) -> Callable[[str], set[str]]:
    def classes(entity_id: str) -> set[str]:
        agency = agencies.lookup(db_session=db_session, entity_id=entity_id)
        return {agency.agency_class} if agency and agency.agency_class else set()

    return classes


def _decide_offering(db_session: Session, requester: RegisteredAgency, subject: Subject,
                     offering: location.OfferingView, task: str, info_types: list[str],
                     now: datetime, policy=consent.READ_FRESH, *, needs_encryption: bool = True,
                     decided: Mapping[tuple[str, str], consent.Decision] | None = None) -> OfferingDecision:
    """Whitelist, then the person's policy, for every information type the offering discloses
    (or what `decided`, `consent.decide_all`'s answer, says of each); the offering is permitted
    only if every one is, and only to a provider that can decrypt (unless nothing is encrypted
    for it, as when the hub relays an envelope)."""
    provider = agencies.lookup(db_session=db_session, entity_id=offering.provider)
    result = OfferingDecision(
        provider=offering.provider, provider_name=provider.name if provider else offering.provider,
        service_type=offering.service_type, endpoint=offering.endpoint,
        security_mechanism=offering.security_mechanism, permitted=True, reason="", decision_id=new_id(),
    )
    for code in info_types:
        d = decided[offering.provider, code] if decided is not None else consent.decide(
            db_session=db_session, person_key=subject.person_key, requester=requester.entity_id,
            provider=offering.provider, task_code=task, info_type_code=code,
            classes_of=_classes_of(db_session), at=now, policy=policy)
        result.per_info_type.append((code, d))
        if not d.permitted:
            break
    refused = next((d for _, d in result.per_info_type if not d.permitted), None)
    if refused is not None:
        result.permitted, result.reason, result.whitelist_entry = False, str(refused.reason), refused.whitelist_entry_id
    else:
        result.overridden = any(d.overridden for _, d in result.per_info_type)
        overriding = next((d for _, d in result.per_info_type if d.overridden), None)
        result.reason = str((overriding or result.per_info_type[0][1]).reason)
        result.whitelist_entry = result.per_info_type[0][1].whitelist_entry_id
        if needs_encryption and (provider is None or not provider.encryption_certs):
            result.permitted, result.reason = False, NO_ENCRYPTION_KEY
    return result


def _log(requester: RegisteredAgency, subject: Subject,
         decisions: list[OfferingDecision], task: str, *, channel: Channel, asked_at: datetime,
         query_group_id: str | None = None, query_id: str | None = None) -> list[EntryIn]:
    """One history entry per information type decided, each with its own reason; the entries
    of one query share its query ID. `_commit_log` writes them."""
    query_id = query_id or new_id()
    entries = []
    for d in decisions:
        for code, decided in d.per_info_type:
            # a permit that is not acted on (the provider cannot decrypt) is logged as refused
            permitted = decided.permitted and d.permitted
            entries.append(EntryIn(
                kind=EntryKind.DECISION, channel=channel, decision_id=d.decision_id,
                requester=requester.entity_id, provider=d.provider, person_key=subject.person_key,
                task_code=task, info_type_code=code,
                outcome=str(decided.reason) if permitted or not decided.permitted else d.reason,
                permitted=permitted, staff=subject.staff, overridden=decided.overridden,
                whitelist_entry=None if decided.whitelist_entry_id is None else str(decided.whitelist_entry_id),
                legal_basis=decided.legal_basis,
                person_rule=None if decided.rule_id is None else str(decided.rule_id),
                asked_at=asked_at, query_id=query_id, query_group_id=query_group_id,
                detail={"service_type": d.service_type},
            ))
    return entries


def _token_for(db_session: Session, settings: Settings, keys: KeyStore, requester: RegisteredAgency,
               d: OfferingDecision, p_provider: str, local_id: str | None, task: str,
               info_types: list[str], now: datetime) -> bytes:
    provider = agencies.lookup(db_session=db_session, entity_id=d.provider)
    facts = tokens.ProviderTokenFacts(
        hub_entity_id=settings.idp_entity_id, provider=d.provider, endpoint=d.endpoint,
        provider_pseudonym=p_provider, requester=requester.entity_id, task=task, info_types=tuple(info_types),
        service_type=d.service_type,
        whitelist_entry=",".join(sorted({str(x.whitelist_entry_id) for _, x in d.per_info_type})),
        decision_id=d.decision_id,
        local_id=local_id, now=now, skew=timedelta(seconds=settings.clock_skew_seconds),
    )
    return tokens.provider_token(facts, signer=current_signing_key(DISCOVERY_ROLE), provider_cert=provider.encryption_certs[0])


@dataclass(frozen=True)
class RelayLeg:
    """One envelope the hub would forward: to `receiver` (the whitelist's requester, who learns
    the data) from the sender (the whitelist's provider, who discloses it), for `task`."""

    receiver: RegisteredAgency
    service_type: str
    endpoint: str
    task: str
    info_type: str


@dataclass
class RelayDecisions:
    person_key: str
    decisions: list[OfferingDecision]  # one per leg, in order; `provider` is the sender
    receiver_pseudonyms: dict[str, str]  # permitted receiver → its pseudonym for the person
    query_id: str


@_nothing_disclosed_on_database_failure
def decide_relay(
    *,
    db_session: Session,
    settings: Settings,
    sender: RegisteredAgency,
    sender_pseudonym: str,
    legs: list[RelayLeg],
    query_group_id: str,
    now: datetime | None = None,
) -> RelayDecisions:
    """Decide every leg of a relayed envelope on the discovery path (whitelist, then the
    person's policy) and log each decision in the access history (channel `relay`, one query
    ID, the caller's query group). Does not commit: the relay commits these entries with its
    outbox rows, and delivers only committed rows, so nothing leaves before its log entry."""
    now = now or utcnow()
    keys = keystore()
    try:
        person_key = pseudonyms.resolve(db_session=db_session, agency=sender.entity_id,
                                        value=sender_pseudonym).person_key
    except pseudonyms.PseudonymError:
        raise UnknownPerson("no person has that pseudonym at the sending agency") from None
    subject = Subject(person_key, sender_pseudonym, None)
    policy = consent.policy_in_force(db_session=db_session, person_key=person_key)
    decisions = []
    entries: list[EntryIn] = []
    query_id = new_id()
    for leg in legs:
        offering = location.OfferingView(sender.entity_id, leg.service_type, leg.endpoint, "", (leg.info_type,))
        d = _decide_offering(db_session, leg.receiver, subject, offering, leg.task, [leg.info_type], now, policy,
                             needs_encryption=False)
        decisions.append(d)
        entries += _log(leg.receiver, subject, [d], leg.task, channel=Channel.RELAY, asked_at=now,
                        query_group_id=query_group_id, query_id=query_id)
    # in the relay's own transaction, with its outbox rows: delivered only once both commit
    history.append_many(db_session=db_session, entries=entries)
    permitted = sorted({leg.receiver.entity_id for leg, d in zip(legs, decisions, strict=True) if d.permitted})
    receiver_pseudonyms = pseudonyms.get_or_create_many(
        db_session=db_session, keys=keys, person_key=person_key, agencies=permitted, scope=settings.scope,
    ) if permitted else {}
    return RelayDecisions(person_key, decisions, receiver_pseudonyms, query_id)


@_nothing_disclosed_on_database_failure
def map_name_id(
    *,
    db_session: Session,
    settings: Settings,
    requester: RegisteredAgency,
    person: PersonRef,
    target: str,
    task: str,
    info_type: str,
    now: datetime | None = None,
) -> tuple[OfferingDecision, etree._Element | None]:
    """SAML NameIDMappingRequest (core §3.8) on the same decision path as `discover`: may the
    requester learn how `target` names the person? The answer is an EncryptedID for the
    target, which the requester passes on and cannot read; logged before it is returned."""
    now = now or utcnow()
    keys = keystore()
    subject = resolve_subject(db_session=db_session, settings=settings, keys=keys, requester=requester,
                              person=person, now=now)
    provider = agencies.lookup(db_session=db_session, entity_id=target)
    if provider is None:
        raise UnknownTarget(f"no agency {target} is registered")
    offering = location.OfferingView(target, "urn:oasis:names:tc:SAML:2.0:protocol:NameIDMapping", "", "",
                                     (info_type,))
    decision = _decide_offering(db_session, requester, subject, offering, task, [info_type], now)
    p_target = None
    if decision.permitted:
        p_target = pseudonyms.get_or_create(db_session=db_session, keys=keys, person_key=subject.person_key,
                                            agency=target, scope=settings.scope)
    entries = _log(requester, subject, [decision], task, channel=Channel.NAME_MAPPING, asked_at=now)
    _commit_log(db_session, entries)  # log before disclose
    if p_target is None:
        return decision, None
    name_id = etree.Element(
        f"{{{tokens.SAML_NS}}}NameID",
        {"Format": tokens.NAMEID_PERSISTENT, "NameQualifier": settings.idp_entity_id, "SPNameQualifier": target},
        nsmap={"saml": tokens.SAML_NS},
    )
    name_id.text = p_target
    return decision, encrypt_element(name_id, provider.encryption_certs[0])
