"""The IdP's business functions: check an incoming request, keep sessions, answer agencies.

Views call these; the caller owns the transaction (one request, one commit).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_plus

from lxml import etree
from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from access_history import service as history
from access_history.models import Channel, EntryIn, EntryKind
from federation import service as agencies
from federation.service import RegisteredAgency
from idp import participants, saml
from idp.models import IdpSession, LoginThrottle, LogoutInProgress, PendingAuthn, SessionParticipant
from kernel import replay
from kernel.db import utcnow
from kernel.keys import KeyStore, SigningKey, current_signing_key
from kernel.settings import Settings, get_settings
from kernel.xml import (
    XMLSecurityError,
    deflate_redirect,
    parse_xml,
    sign_enveloped,
    verify_redirect_query,
    verify_signed,
)
from kernel.xml.saml import (
    INVALID_NAMEID_POLICY,
    NAMEID_UNSPECIFIED,
    REQUEST_DENIED,
    RESPONDER,
    UNSUPPORTED_BINDING,
)
from pseudonym import bootstrap
from pseudonym import service as pseudonyms

IDP_ROLE = "idp"


class BadRequest(Exception):
    """A request the IdP cannot answer to the agency (unknown SP, untrusted ACS, bad signature).

    Shown to the person as a 4xx page; nothing is sent to an address that was not verified.
    """


@dataclass
class Answer:
    """A SAML message to deliver to an agency by the HTTP-POST binding."""

    url: str
    field: str  # "SAMLResponse"
    value: str
    relay_state: str | None


def signing_key() -> SigningKey:
    """The IdP's newest signing key."""
    return current_signing_key(IDP_ROLE)


def sso_url(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + "/idp/sso"


def slo_url(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + "/idp/slo"


# --- decoding and checking requests ------------------------------------------------------

def decode_post_message(value: str, *, max_bytes: int) -> bytes:
    """HTTP-POST binding (bindings §3.5.4): base64 of the XML, size-limited before decoding."""
    if len(value) > max_bytes * 4 // 3 + 4:
        raise BadRequest("the SAML message is larger than this IdP accepts")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the SAML message is not valid base64") from None


def check_authn_request(
    *,
    db_session: Session,
    settings: Settings,
    xml: bytes,
    relay_state: str | None,
    raw_query: str | None,
) -> tuple[RegisteredAgency, saml.AuthnRequest, replay.Once]:
    """Parse, authenticate and bound an AuthnRequest; return its agency, the request and its
    ID for the replay cache, not yet remembered: the answer remembers it, a Success Response
    with its history entry (`answer_success`), anything else before it answers
    (`remember_request`).

    `raw_query` is the untouched query string for the HTTP-Redirect binding (its signature is
    over the encoded octets, bindings §3.4.4.1); None for HTTP-POST.
    """
    try:
        root = parse_xml(xml, max_bytes=settings.max_message_bytes)
    except XMLSecurityError as exc:
        raise BadRequest(f"the AuthnRequest was refused: {exc}") from None
    issuer = saml.issuer_of(root)
    agency = agencies.lookup(db_session=db_session, entity_id=issuer) if issuer else None
    if agency is None:
        _refuse_retired(db_session, issuer)
        raise BadRequest(f"the service provider {issuer!r} is not registered with this IdP")
    must_sign = agency.authn_requests_signed or settings.require_signed_requests
    try:
        if raw_query is not None:
            signed = _query_has_signature(raw_query)
            if signed or must_sign:
                verify_redirect_query(raw_query, agency.signing_keys)
        else:
            signed = root.find("{http://www.w3.org/2000/09/xmldsig#}Signature") is not None
            root = verify_signed(root, agency.signing_keys, require_signature=must_sign)
    except XMLSecurityError as exc:
        raise BadRequest(f"the AuthnRequest signature was refused: {exc}") from None
    try:
        request = saml.read_authn_request(root)
    except saml.SamlStatusError as exc:
        raise BadRequest(f"the AuthnRequest is malformed: {exc.message}") from None
    if request.issuer != issuer:
        raise BadRequest("the verified AuthnRequest names another Issuer")
    request.signed = signed
    request.relay_state = relay_state
    if relay_state is not None and (len(relay_state.encode()) > 80 or not relay_state.isprintable()):
        raise BadRequest("RelayState must be printable and not exceed 80 bytes (bindings §3.4.3)")
    acs = agency.acs_for(request.acs_url, request.acs_index)
    if acs is None:
        raise BadRequest(
            "the AssertionConsumerService in the request does not match the agency's registered one"
        )
    request.acs_location = acs.location
    # From here the ACS is trusted: refusals go back to the agency as SAML error statuses.
    try:
        _check_bounds(settings=settings, request=request, signed=signed)
    except saml.SamlStatusError as exc:
        exc.request = request
        raise
    once = replay.Once(request.issuer, request.id,
                       (request.issue_instant + timedelta(minutes=10)).replace(tzinfo=None))
    return agency, request, once


def remember_request(*, db_session: Session, once: replay.Once | None) -> None:
    """For an answer that logs nothing (an error Response, the login page): the request's ID
    into the replay cache now, before the answer leaves; SamlStatusError if it was used."""
    try:
        replay.remember_once(db_session=db_session, once=once)
    except replay.ReplayDetected:
        raise _replayed() from None


def _replayed() -> saml.SamlStatusError:
    return saml.SamlStatusError(saml.REQUESTER, "this AuthnRequest ID was already used", REQUEST_DENIED)


def _check_bounds(*, settings: Settings, request: saml.AuthnRequest, signed: bool) -> None:
    """Binding, Destination, time window, NameID policy, authn context (the replay check
    comes with the answer: `check_authn_request`)."""
    if request.protocol_binding and request.protocol_binding != saml.BINDING_POST:
        raise saml.SamlStatusError(
            RESPONDER, "this IdP answers only by HTTP-POST", UNSUPPORTED_BINDING
        )
    if signed and request.destination is None:
        raise saml.SamlStatusError(saml.REQUESTER, "a signed request must carry Destination")
    if request.destination is not None and request.destination != sso_url(settings):
        raise saml.SamlStatusError(saml.REQUESTER, "Destination is not this IdP's SSO endpoint")
    skew = timedelta(seconds=settings.clock_skew_seconds)
    now = utcnow()
    if not (now - timedelta(minutes=5) - skew <= request.issue_instant <= now + skew):
        raise saml.SamlStatusError(saml.REQUESTER, "IssueInstant is outside the accepted window")
    if request.name_id_format not in (None, saml.NAMEID_PERSISTENT, saml.NAMEID_TRANSIENT, NAMEID_UNSPECIFIED):
        raise saml.SamlStatusError(
            saml.REQUESTER, "only persistent and transient NameIDs are issued", INVALID_NAMEID_POLICY
        )
    if saml.required_level(request.requested_context) is None:
        raise saml.SamlStatusError(
            saml.REQUESTER, "the requested authentication context cannot be met", saml.NO_AUTHN_CONTEXT
        )


def _refuse_retired(db_session: Session, issuer: str | None) -> None:
    """A retired agency gets a plain 4xx saying so: nothing is ever sent to its endpoints."""
    if issuer and agencies.is_retired(db_session=db_session, entity_id=issuer):
        raise BadRequest(f"the service provider {issuer!r} has been retired from this federation")


def _query_has_signature(raw_query: str) -> bool:
    return any(part.split("=", 1)[0] == "Signature" for part in raw_query.split("&"))


# --- sessions and pending requests ---------------------------------------------------------

def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(
    *, db_session: Session, settings: Settings, person_key: str, level: int
) -> str:
    """Open an IdP session; returns the cookie token (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    db_session.add(
        IdpSession(
            id=_hash(token),
            person_key=person_key,
            session_index=secrets.token_hex(16),
            authn_context=saml.CLASS_FOR_LEVEL[level],
            authn_instant=now,
            expires_at=now + timedelta(seconds=settings.session_lifetime_seconds),
        )
    )
    db_session.flush()
    return token


@dataclass(frozen=True)
class LiveSession:
    """A live login session as the requests that use it read it (the row, not an ORM object:
    the hot SSO path reads it with one prebuilt statement, bench/README.md)."""

    id: str
    person_key: str
    session_index: str
    authn_context: str
    authn_instant: datetime
    expires_at: datetime
    # read with the session when it was read for an answer to `agency` (current_session): the
    # person's live pseudonym there, and whether the agency already took part in the session
    # under it; `answer_success` then reads neither again
    agency: str | None = None
    pseudonym: str | None = None
    participant_known: bool = False


_SESSIONS = IdpSession.__table__
_READ_SESSION = select(
    _SESSIONS.c.id, _SESSIONS.c.person_key, _SESSIONS.c.session_index, _SESSIONS.c.authn_context,
    _SESSIONS.c.authn_instant, _SESSIONS.c.expires_at, _SESSIONS.c.last_seen_at,
).where(_SESSIONS.c.id == bindparam("id"))
# the same, with what an answer to one agency needs, in one round trip (bindparam "agency")
_LIVE_PSEUDONYM = (pseudonyms.live_value_of(_SESSIONS.c.person_key, bindparam("agency"))
                   .correlate(_SESSIONS).scalar_subquery())  # the session of the outer read, at any depth
_READ_SESSION_FOR_AGENCY = _READ_SESSION.add_columns(
    _LIVE_PSEUDONYM.label("pseudonym"),
    participants.known_of(_SESSIONS.c.id, bindparam("agency"), _LIVE_PSEUDONYM).exists().label("participant_known"),
)
_TOUCH_SESSION = (_SESSIONS.update().where(_SESSIONS.c.id == bindparam("session_id"))
                  .values(last_seen_at=bindparam("now")))


def current_session(
    *, db_session: Session, token: str | None, settings: Settings | None = None, agency: str | None = None
) -> LiveSession | None:
    """The live session a cookie token names, if any: within its lifetime and not idle too long.
    With `agency`, read in the same statement what an answer to it needs (`LiveSession.agency`)."""
    if not token:
        return None
    connection = db_session.connection()
    if agency is None:
        row = connection.execute(_READ_SESSION, {"id": _hash(token)}).first()
    else:
        row = connection.execute(_READ_SESSION_FOR_AGENCY, {"id": _hash(token), "agency": agency}).first()
    now = utcnow()
    if row is None or row.expires_at <= now:
        return None
    seen = row.last_seen_at or row.authn_instant
    idle = timedelta(seconds=(settings or get_settings()).session_idle_seconds)
    if seen + idle <= now:
        return None
    if now - seen > _SEEN_GRANULARITY:  # not a write on every request
        connection.execute(_TOUCH_SESSION, {"session_id": row.id, "now": now})
    if agency is None:
        return LiveSession(row.id, row.person_key, row.session_index, row.authn_context, row.authn_instant,
                           row.expires_at)
    return LiveSession(row.id, row.person_key, row.session_index, row.authn_context, row.authn_instant,
                       row.expires_at, agency, row.pseudonym, bool(row.participant_known))


# how stale `last_seen_at` may get before a use refreshes it
_SEEN_GRANULARITY = timedelta(minutes=1)


def end_session(*, db_session: Session, token: str | None) -> None:
    """End the session a cookie token names, if any (its OIDC RPs are told too; idp/slo.py
    tells the SAML agencies)."""
    if token:
        _end_oidc_sessions(db_session, [_hash(token)])
        participants.forget(db_session=db_session, session_ids=[_hash(token)])
        db_session.execute(delete(IdpSession).where(IdpSession.id == _hash(token)))


def _end_oidc_sessions(db_session: Session, login_session_ids: list[str]) -> None:
    """One login session serves SAML and OIDC: ending it sends back-channel logout tokens."""
    from idp.oidc.logout import end_sessions  # the OIDC provider builds on this module

    for login_session_id in login_session_ids:
        end_sessions(db_session, login_session_id)


def logout_csrf_token(token: str) -> str:
    """The logout form's CSRF token: derived from the session cookie, which a cross-site page
    can neither read nor guess, so nothing needs storing."""
    return hmac.new(token.encode(), b"renkei idp logout", hashlib.sha256).hexdigest()


def check_logout_csrf(*, token: str, csrf: str) -> bool:
    """Whether a logout form carries the token of this browser's session."""
    return hmac.compare_digest(logout_csrf_token(token), csrf)


def session_level(session: LiveSession) -> int:
    return saml.LEVELS.get(session.authn_context, 1)


def save_pending(*, db_session: Session, request: saml.AuthnRequest) -> str:
    """Park an AuthnRequest while the person logs in; returns the pending token."""
    if random.random() < 0.01:  # sweep expired sessions and requests now and then
        expire_housekeeping(db_session=db_session)
    token = secrets.token_urlsafe(24)
    db_session.add(
        PendingAuthn(
            id=token,
            request_json=json.dumps(request.to_json()),
            expires_at=utcnow() + timedelta(minutes=15),
        )
    )
    db_session.flush()
    return token


def load_pending(*, db_session: Session, token: str) -> tuple[PendingAuthn, saml.AuthnRequest] | None:
    row = db_session.get(PendingAuthn, token) if token else None
    if row is None or row.expires_at <= utcnow():
        return None
    return row, saml.AuthnRequest.from_json(json.loads(row.request_json))


# --- answers ----------------------------------------------------------------------------

def _serialize(root: etree._Element) -> str:
    return base64.b64encode(etree.tostring(root, encoding="UTF-8", xml_declaration=True)).decode()


def answer_success(
    *,
    db_session: Session,
    settings: Settings,
    keys: KeyStore,
    agency: RegisteredAgency,
    request: saml.AuthnRequest,
    session: LiveSession,
    authn_context: str,
    once: replay.Once | None = None,
) -> Answer:
    """A signed Response with the person's pseudonym for this agency (profiles §4.1.4.2).

    `once` is the request's ID (`check_authn_request`), remembered with the release's history
    entry; a request answered before (a replay) gets an error Response instead."""
    now = utcnow()
    if session.agency == agency.entity_id:  # read with the session (current_session)
        existing = session.pseudonym
    elif not request.allow_create:
        existing = pseudonyms.find(db_session=db_session, person_key=session.person_key, agency=agency.entity_id)
    else:
        existing = None  # get_or_create reads it
    if not request.allow_create and existing is None:
        # core §3.4.1.1: AllowCreate="false" forbids establishing a new identifier for a first visit
        error = saml.SamlStatusError(RESPONDER, "no identifier exists for this person at this service"
                                     " and the request does not allow creating one", INVALID_NAMEID_POLICY)
        try:
            remember_request(db_session=db_session, once=once)
        except saml.SamlStatusError as replayed:
            error = replayed
        return answer_error(settings=settings, keys=keys, request=request, error=error)
    pseudonym = existing or pseudonyms.get_or_create(
        db_session=db_session,
        keys=keys,
        person_key=session.person_key,
        agency=agency.entity_id,
        scope=settings.scope,
    )
    name_id, name_id_format = pseudonym, saml.NAMEID_PERSISTENT
    if request.name_id_format == saml.NAMEID_TRANSIENT:
        name_id, name_id_format = participants.new_transient(), saml.NAMEID_TRANSIENT
    # the session's participant (whom Single Logout reaches) is written before the release is
    # logged, so it commits with the request's other writes: nothing is left to commit after the
    # log, one commit and round trip fewer per answer (a participant whose answer then failed
    # only gets a logout it does not need)
    participants.record(db_session=db_session, session=session, sp=agency.entity_id, name_id=name_id,
                        name_id_format=name_id_format,
                        known=name_id == existing and session.agency == agency.entity_id and session.participant_known)
    # what leaves the hub in this answer lands in the person's history first (log before
    # disclose): the session's own writes commit, then the entry is durable (group commit),
    # with the request's ID in the replay cache (a request answered before is refused there)
    try:
        record_release(db_session=db_session, settings=settings, agency=agency.entity_id,
                       person_key=session.person_key, authn_context=authn_context, once=once)
    except replay.ReplayDetected:
        return answer_error(settings=settings, keys=keys, request=request, error=_replayed())
    key = signing_key()
    assertion = saml.assertion(
        saml.AssertionFacts(
            idp_entity_id=settings.idp_entity_id,
            sp_entity_id=agency.entity_id,
            acs_url=request.acs_location,
            in_response_to=request.id or None,
            pseudonym=pseudonym,
            authn_context=authn_context,
            authn_instant=session.authn_instant,
            session_index=session.session_index,
            now=now,
            skew=timedelta(seconds=settings.clock_skew_seconds),
            name_id=name_id,
            name_id_format=name_id_format,
        )
    )
    assertion.find(f"{{{saml.SAML_NS}}}AttributeStatement").append(
        _discovery_epr(settings=settings, keys=keys, agency=agency, pseudonym=pseudonym, session=session)
    )
    sign_enveloped(assertion, key.private_key, certificate=key.certificate, algorithm=key.xml_algorithm)
    response = saml.response_root(
        issuer=settings.idp_entity_id,
        destination=request.acs_location,
        in_response_to=request.id or None,  # none for IdP-initiated SSO (profiles §4.1.5)
        now=now,
    )
    status = etree.SubElement(response, f"{{{saml.SAMLP_NS}}}Status")
    etree.SubElement(status, f"{{{saml.SAMLP_NS}}}StatusCode", {"Value": saml.SUCCESS})
    response.append(assertion)
    if settings.sign_response:
        sign_enveloped(response, key.private_key, certificate=key.certificate, algorithm=key.xml_algorithm)
    return Answer(request.acs_location, "SAMLResponse", _serialize(response), request.relay_state)


# SSO releases the pairwise pseudonym because the person logs in to that agency themself:
# their own act is the consent (profiles §4.1.4.2; no other attribute is released today)
SSO_INFO_TYPE = "pairwise-id"
SSO_TASK = "sso"
SSO_OUTCOME = "PERMITTED_BY_CONSENT"


def record_release(*, db_session: Session, settings: Settings, agency: str, person_key: str,
                   authn_context: str, once: replay.Once | None = None) -> None:
    """Record an SSO answer's release of the person's pseudonym to an agency (channel sso):
    commits the session's writes, then returns once the entry is durable (LogWriteFailed if
    not: then no assertion may be built), with `once` (the request's ID) remembered in the
    same batch (ReplayDetected, and no entry, if it was used)."""
    history.append_durably(db_session=db_session, entries=[EntryIn(
        kind=EntryKind.DECISION, channel=Channel.SSO, requester=agency, provider=settings.idp_entity_id,
        person_key=person_key, task_code=SSO_TASK, info_type_code=SSO_INFO_TYPE, outcome=SSO_OUTCOME,
        permitted=True, decision_id=secrets.token_hex(16), asked_at=utcnow(),
        detail={"authn_context": authn_context})], once=once)


def _discovery_epr(
    *, settings: Settings, keys: KeyStore, agency: RegisteredAgency, pseudonym: str, session: LiveSession
) -> etree._Element:
    """ID-WSF's DiscoveryEPR attribute: the bootstrap for cross-agency queries while the person
    is present, valid as long as the IdP session (docs/discovery.md)."""
    base = settings.base_url.rstrip("/")
    token = bootstrap.issue_bootstrap(
        keys=keys,
        audience=base + "/discovery",
        requester=agency.entity_id,
        pseudonym=pseudonym,
        expires=int(session.expires_at.replace(tzinfo=UTC).timestamp()),
    )
    return saml.discovery_epr_attribute(
        soap_url=base + "/discovery/soap", provider_id=base + "/discovery", token=token
    )


def answer_error(
    *, settings: Settings, keys: KeyStore, request: saml.AuthnRequest, error: saml.SamlStatusError
) -> Answer:
    """A signed error Response to the verified ACS (core §3.2.2.2 status codes)."""
    response = saml.error_response(
        issuer=settings.idp_entity_id,
        destination=request.acs_location,
        in_response_to=request.id,
        now=utcnow(),
        status=error.status,
        sub_status=error.sub_status,
        message=error.message,
    )
    key = signing_key()
    sign_enveloped(response, key.private_key, certificate=key.certificate, algorithm=key.xml_algorithm)
    return Answer(request.acs_location, "SAMLResponse", _serialize(response), request.relay_state)


# --- single logout: idp/slo.py ------------------------------------------------------------

def _deflate(root: etree._Element) -> str:
    return deflate_redirect(etree.tostring(root, encoding="UTF-8"))


def _query_params(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if name in params:
            raise BadRequest(f"the query repeats {name}")
        params[name] = unquote_plus(value)
    return params


def expire_housekeeping(*, db_session: Session, now: datetime | None = None) -> None:
    """Drop expired or idle sessions, pending requests and forgotten login failures."""
    now = now or utcnow()
    settings = get_settings()
    idle_since = now - timedelta(seconds=settings.session_idle_seconds)
    db_session.execute(delete(IdpSession).where(IdpSession.expires_at <= now))
    db_session.execute(
        delete(IdpSession).where(func.coalesce(IdpSession.last_seen_at, IdpSession.authn_instant) <= idle_since)
    )
    db_session.execute(delete(PendingAuthn).where(PendingAuthn.expires_at <= now))
    db_session.execute(delete(SessionParticipant).where(SessionParticipant.expires_at <= now))
    db_session.execute(delete(LogoutInProgress).where(LogoutInProgress.expires_at <= now))
    from idp.oidc.logout import expire as expire_oidc  # the OIDC provider builds on this module

    expire_oidc(db_session=db_session, now=now)
    db_session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.last_failure_at <= now - timedelta(seconds=settings.login_failure_window_seconds)
        )
    )
