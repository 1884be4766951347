"""Single Logout that reaches every agency of the login session (SAML profiles §4.4).

A LogoutRequest from one agency (HTTP-Redirect), or the IdP's own logout page, ends the login
sessions it names; then every other session participant is told: by the SOAP back-channel
(bindings §3.2) where its metadata offers it, otherwise by walking the browser through its
HTTP-Redirect SingleLogoutService, one agency after another (profiles §4.4.3.3). The answer to
the initiating agency is Success, with PartialLogout under it when some participant could not
be logged out (core §3.7.3.2). Every LogoutRequest and LogoutResponse received goes through the
hostile-XML parser and is checked against the sender's pinned keys only.
"""
from __future__ import annotations

import importlib
import json
import logging
import secrets
from dataclasses import asdict, dataclass, field
from datetime import timedelta

import httpx
from lxml import etree
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from federation import service as agencies
from federation.service import RegisteredAgency
from idp import participants, saml
from idp.models import IdpSession, LogoutInProgress
from idp.service import (
    BadRequest,
    _deflate,
    _hash,
    _query_params,
    _refuse_retired,
    signing_key,
    slo_url,
)
from kernel import replay
from kernel.db import utcnow
from kernel.settings import Settings
from kernel.xml import (
    XMLSecurityError,
    inflate_redirect,
    new_id,
    parse_xml,
    sign_enveloped,
    sign_redirect_query,
    verify_redirect_query,
    verify_signed,
)
from pseudonym import service as pseudonyms

log = logging.getLogger(__name__)

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ACTION = "http://www.oasis-open.org/committees/security"  # bindings §3.2.2.1
BACKCHANNEL_TIMEOUT_SECONDS = 5.0
LOGOUT_TTL = timedelta(minutes=10)  # how long a front-channel walk may take
_NS = {"saml": saml.SAML_NS, "samlp": saml.SAMLP_NS, "soap": SOAP11_NS}


@dataclass
class LogoutOutcome:
    """Which session participants were logged out, and which were not."""

    reached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class _Walk:
    """A logout in progress, kept in `idp_logouts` between the browser's hops."""

    initiator: str | None  # the agency whose LogoutRequest started it; None: the IdP's page
    request_id: str | None
    relay_state: str | None
    pending: list[dict]  # participants still to visit by the front channel
    failed: list[str]
    current: dict | None = None  # {"sp", "request_id"} of the LogoutRequest out now


# --- the public surface --------------------------------------------------------------------

def end_saml_sessions(*, db_session: Session, settings: Settings, login_session_id: str) -> LogoutOutcome:
    """End the SAML side of one login session by the back channel: a signed SOAP LogoutRequest
    to each participant offering one; the participants are forgotten. The `idp_sessions` row
    stays (the caller owns it). For other callers (the OIDC provider's logout)."""
    found = participants.of_sessions(db_session=db_session, session_ids=[login_session_id])
    participants.forget(db_session=db_session, session_ids=[login_session_id])
    outcome = LogoutOutcome()
    for p in found:
        agency = agencies.lookup(db_session=db_session, entity_id=p.sp)
        if agency is None:
            continue  # retired: nothing is ever sent to it
        ok = agency.slo_soap() is not None and send_soap_logout(settings=settings, agency=agency, participant=p)
        (outcome.reached if ok else outcome.failed).append(p.sp)
    return outcome


def handle_slo(*, db_session: Session, settings: Settings, raw_query: str, cookie_token: str | None) -> str:
    """GET /idp/slo: an agency's LogoutRequest, or its LogoutResponse in a walk we started;
    returns where to send the browser next."""
    params = _query_params(raw_query)
    if "SAMLResponse" in params:
        return _handle_logout_response(db_session=db_session, settings=settings, raw_query=raw_query,
                                       params=params)
    if "SAMLRequest" not in params:
        raise BadRequest("no SAMLRequest or SAMLResponse in the query")
    return _handle_logout_request(db_session=db_session, settings=settings, raw_query=raw_query,
                                  params=params, cookie_token=cookie_token)


def logout_everywhere(*, db_session: Session, settings: Settings, cookie_token: str) -> str:
    """The IdP's own logout page: end this browser's session everywhere; the next URL."""
    row = db_session.get(IdpSession, _session_id(cookie_token))
    ids = [row.id] if row is not None else []
    return _logout(db_session=db_session, settings=settings, session_ids=ids,
                   walk=_Walk(initiator=None, request_id=None, relay_state=None, pending=[], failed=[]))


def done_url(settings: Settings, *, partial: bool) -> str:
    return settings.base_url.rstrip("/") + "/idp/logout/done" + ("?partial=1" if partial else "")


# --- an agency's LogoutRequest ---------------------------------------------------------------

def _read_redirect_message(params: dict[str, str], name: str, settings: Settings) -> etree._Element:
    try:
        return parse_xml(inflate_redirect(params[name], max_bytes=settings.max_message_bytes),
                         max_bytes=settings.max_message_bytes)
    except XMLSecurityError as exc:
        raise BadRequest(f"the {name} was refused: {exc}") from None


def _handle_logout_request(*, db_session: Session, settings: Settings, raw_query: str, params: dict[str, str],
                           cookie_token: str | None) -> str:
    root = _read_redirect_message(params, "SAMLRequest", settings)
    issuer = saml.issuer_of(root)
    agency = agencies.lookup(db_session=db_session, entity_id=issuer) if issuer else None
    if agency is None:
        _refuse_retired(db_session, issuer)
        raise BadRequest(f"the service provider {issuer!r} is not registered with this IdP")
    endpoint = agency.slo_redirect()
    if endpoint is None:
        raise BadRequest("the agency registered no SingleLogoutService with the HTTP-Redirect binding")
    try:
        # profiles §4.4.4.1: the LogoutRequest MUST be signed
        verify_redirect_query(raw_query, agency.signing_keys)
        request = saml.read_logout_request(root)
    except XMLSecurityError as exc:
        raise BadRequest(f"the LogoutRequest signature was refused: {exc}") from None
    except saml.SamlStatusError as exc:
        raise BadRequest(f"the LogoutRequest is malformed: {exc.message}") from None
    relay_state = params.get("RelayState")
    if relay_state is not None and len(relay_state.encode()) > 80:
        raise BadRequest("RelayState must not exceed 80 bytes (bindings §3.4.3)")
    now = utcnow()
    problem = None
    if request.destination is not None and request.destination != slo_url(settings):
        problem = "Destination is not this IdP's SLO endpoint"
    elif request.not_on_or_after is not None and request.not_on_or_after <= now:
        problem = "the LogoutRequest has expired"
    else:
        try:
            replay.remember(db_session=db_session, issuer=agency.entity_id, message_id=request.id,
                            expires_at=request.issue_instant + timedelta(minutes=10))
        except replay.ReplayDetected:
            problem = "this LogoutRequest ID was already used"
    walk = _Walk(initiator=agency.entity_id, request_id=request.id, relay_state=relay_state, pending=[], failed=[])
    if problem is not None:
        return _answer_initiator(db_session=db_session, settings=settings, walk=walk,
                                 status=saml.REQUESTER, message=problem)
    ids = _sessions_named(db_session=db_session, agency=agency, request=request, cookie_token=cookie_token)
    return _logout(db_session=db_session, settings=settings, session_ids=ids, walk=walk)


def _session_id(cookie_token: str) -> str:
    return _hash(cookie_token)


def _sessions_named(*, db_session: Session, agency: RegisteredAgency, request: saml.LogoutRequest,
                    cookie_token: str | None) -> list[str]:
    """The browser's session and every session the NameID (and SessionIndex) name."""
    ids: set[str] = set()
    if cookie_token and db_session.get(IdpSession, _session_id(cookie_token)) is not None:
        ids.add(_session_id(cookie_token))
    if request.name_id:
        query = None
        transient = participants.sessions_of_transient(db_session=db_session, sp=agency.entity_id,
                                                       name_id=request.name_id)
        if transient:
            query = select(IdpSession.id).where(IdpSession.id.in_(transient))
        else:
            try:
                person = pseudonyms.resolve(db_session=db_session, agency=agency.entity_id, value=request.name_id)
            except pseudonyms.PseudonymError:
                person = None
            if person is not None:
                query = select(IdpSession.id).where(IdpSession.person_key == person.person_key)
        if query is not None:
            if request.session_indexes:
                query = query.where(IdpSession.session_index.in_(request.session_indexes))
            ids.update(db_session.scalars(query))
    return sorted(ids)


# --- ending sessions and telling the others ---------------------------------------------------

def _logout(*, db_session: Session, settings: Settings, session_ids: list[str], walk: _Walk) -> str:
    found = participants.of_sessions(db_session=db_session, session_ids=session_ids)
    walk.failed.extend(_end_oidc_sessions(db_session=db_session, session_ids=session_ids))
    participants.forget(db_session=db_session, session_ids=session_ids)
    if session_ids:
        db_session.execute(delete(IdpSession).where(IdpSession.id.in_(session_ids)))
    told: set[str] = set()
    for p in found:
        if p.sp == walk.initiator or p.sp in told:
            continue
        told.add(p.sp)
        agency = agencies.lookup(db_session=db_session, entity_id=p.sp)
        if agency is None:
            continue  # retired since: nothing is ever sent to it
        if agency.slo_soap() is not None:
            if not send_soap_logout(settings=settings, agency=agency, participant=p):
                walk.failed.append(p.sp)
        elif agency.slo_redirect() is not None:
            walk.pending.append(asdict(p))
        else:
            walk.failed.append(p.sp)  # no SingleLogoutService: it keeps its session
    return _next_hop(db_session=db_session, settings=settings, walk=walk, token=None)


def _end_oidc_sessions(*, db_session: Session, session_ids: list[str]) -> list[str]:
    """End the same login sessions' OIDC side (the OIDC provider's back-channel logout, when
    that module is installed); returns the relying parties that could not be logged out."""
    try:
        oidc_logout = importlib.import_module("idp.oidc.logout")
    except ImportError:
        return []
    failed = []
    for session_id in session_ids:  # before the idp_sessions rows go (its contract)
        for result in oidc_logout.end_sessions(db_session=db_session, login_session_id=session_id) or ():
            if not getattr(result, "ok", True):
                failed.append(f"oidc:{getattr(result, 'client_id', '?')}")
    return failed


def _next_hop(*, db_session: Session, settings: Settings, walk: _Walk, token: str | None) -> str:
    """Send the browser to the next participant's SLO endpoint, or finish the walk."""
    while walk.pending:
        p = participants.Participant(**walk.pending.pop(0))
        agency = agencies.lookup(db_session=db_session, entity_id=p.sp)
        endpoint = agency.slo_redirect() if agency is not None else None
        if endpoint is None:
            continue
        request = logout_request(settings=settings, participant=p, destination=endpoint.location)
        token = token or secrets.token_urlsafe(32)
        walk.current = {"sp": p.sp, "request_id": request.get("ID")}
        row = db_session.get(LogoutInProgress, token)
        if row is None:
            row = LogoutInProgress(id=token, state_json="", expires_at=utcnow() + LOGOUT_TTL)
            db_session.add(row)
        row.state_json = json.dumps(asdict(walk))
        db_session.flush()
        key = signing_key()
        query = sign_redirect_query([("SAMLRequest", _deflate(request)), ("RelayState", token)], key.private_key)
        return endpoint.location + ("&" if "?" in endpoint.location else "?") + query
    if token is not None:
        db_session.execute(delete(LogoutInProgress).where(LogoutInProgress.id == token))
    if walk.initiator is None:
        return done_url(settings, partial=bool(walk.failed))
    return _answer_initiator(db_session=db_session, settings=settings, walk=walk, status=saml.SUCCESS)


def _answer_initiator(*, db_session: Session, settings: Settings, walk: _Walk, status: str,
                      message: str | None = None) -> str:
    """The signed LogoutResponse to the agency that asked (profiles §4.4.3.4), by HTTP-Redirect."""
    agency = agencies.lookup(db_session=db_session, entity_id=walk.initiator)
    endpoint = agency.slo_redirect() if agency is not None else None
    if endpoint is None:
        return done_url(settings, partial=bool(walk.failed))
    destination = endpoint.response_location or endpoint.location
    answer = saml.logout_response(issuer=settings.idp_entity_id, destination=destination,
                                  in_response_to=walk.request_id, now=utcnow(), status=status, message=message)
    if status == saml.SUCCESS and walk.failed:
        code = answer.find("samlp:Status/samlp:StatusCode", _NS)
        etree.SubElement(code, f"{{{saml.SAMLP_NS}}}StatusCode", {"Value": saml.PARTIAL_LOGOUT})
        etree.SubElement(answer.find("samlp:Status", _NS), f"{{{saml.SAMLP_NS}}}StatusMessage").text = (
            f"{len(walk.failed)} other service(s) could not be logged out")
    params = [("SAMLResponse", _deflate(answer))]
    if walk.relay_state is not None:
        params.append(("RelayState", walk.relay_state))
    query = sign_redirect_query(params, signing_key().private_key)
    return destination + ("&" if "?" in destination else "?") + query


# --- the other participants' answers ------------------------------------------------------------

def _handle_logout_response(*, db_session: Session, settings: Settings, raw_query: str,
                            params: dict[str, str]) -> str:
    token = params.get("RelayState") or ""
    row = db_session.get(LogoutInProgress, token) if len(token) <= 64 else None
    if row is None or row.expires_at <= utcnow():
        raise BadRequest("this LogoutResponse belongs to no logout in progress here (unknown or expired RelayState)")
    walk = _Walk(**json.loads(row.state_json))
    current = walk.current or {}
    agency = agencies.lookup(db_session=db_session, entity_id=current.get("sp", ""))
    ok = False
    if agency is not None:
        try:
            root = _read_redirect_message(params, "SAMLResponse", settings)
            # profiles §4.4.4.2: the LogoutResponse MUST be signed; only the pinned keys count
            verify_redirect_query(raw_query, agency.signing_keys)
            ok = logout_response_ok(root, issuer=agency.entity_id, in_response_to=current.get("request_id"),
                                    destination=slo_url(settings))
        except (BadRequest, XMLSecurityError, saml.SamlStatusError) as exc:
            log.info("LogoutResponse from %s refused: %s", current.get("sp"), exc)
    if not ok:
        walk.failed.append(current.get("sp", "?"))
    walk.current = None
    return _next_hop(db_session=db_session, settings=settings, walk=walk, token=token)


def logout_response_ok(root: etree._Element, *, issuer: str, in_response_to: str | None,
                       destination: str | None) -> bool:
    """Whether a verified samlp:LogoutResponse (core §3.7.2) says Success to our request.

    Raises SamlStatusError when it is not a LogoutResponse at all."""
    if root.tag != f"{{{saml.SAMLP_NS}}}LogoutResponse":
        raise saml.SamlStatusError(saml.REQUESTER, "the message is not a samlp:LogoutResponse")
    if root.get("Version") != "2.0" or saml.issuer_of(root) != issuer:
        return False
    if not in_response_to or root.get("InResponseTo") != in_response_to:
        return False
    if destination is not None and root.get("Destination") not in (None, destination):
        return False
    codes = root.findall("samlp:Status/samlp:StatusCode", _NS)
    return len(codes) == 1 and codes[0].get("Value") == saml.SUCCESS


# --- outgoing LogoutRequests ---------------------------------------------------------------------

def logout_request(*, settings: Settings, participant: participants.Participant, destination: str) -> etree._Element:
    """A samlp:LogoutRequest (core §3.7.1) naming the participant's NameID and session."""
    now = utcnow()
    root = etree.Element(
        f"{{{saml.SAMLP_NS}}}LogoutRequest",
        {"ID": new_id(), "Version": "2.0", "IssueInstant": saml.saml_time(now), "Destination": destination,
         "NotOnOrAfter": saml.saml_time(now + timedelta(minutes=5))},
        nsmap={"samlp": saml.SAMLP_NS, "saml": saml.SAML_NS},
    )
    etree.SubElement(root, f"{{{saml.SAML_NS}}}Issuer").text = settings.idp_entity_id
    etree.SubElement(root, f"{{{saml.SAML_NS}}}NameID", {
        "Format": participant.name_id_format, "NameQualifier": settings.idp_entity_id,
        "SPNameQualifier": participant.sp}).text = participant.name_id
    etree.SubElement(root, f"{{{saml.SAMLP_NS}}}SessionIndex").text = participant.session_index
    return root


def send_soap_logout(*, settings: Settings, agency: RegisteredAgency, participant: participants.Participant) -> bool:
    """Back-channel logout (bindings §3.2, profiles §4.4.3.3): a signed LogoutRequest in a SOAP
    envelope; True only for a signed Success answering it, checked against the pinned keys."""
    endpoint = agency.slo_soap()
    request = logout_request(settings=settings, participant=participant, destination=endpoint.location)
    key = signing_key()
    sign_enveloped(request, key.private_key, certificate=key.certificate)
    envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soap": SOAP11_NS})
    etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body").append(request)
    try:
        answer = httpx.post(endpoint.location, content=etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"),
                            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": SOAP_ACTION},
                            timeout=BACKCHANNEL_TIMEOUT_SECONDS, follow_redirects=False)
    except httpx.HTTPError as exc:
        log.info("back-channel logout to %s failed: %s", agency.entity_id, exc)
        return False
    if answer.status_code != 200 or len(answer.content) > settings.max_message_bytes:
        log.info("back-channel logout to %s answered HTTP %s", agency.entity_id, answer.status_code)
        return False
    try:
        root = parse_xml(answer.content, max_bytes=settings.max_message_bytes)
        body = root.findall("soap:Body", _NS) if root.tag == f"{{{SOAP11_NS}}}Envelope" else []
        children = list(body[0]) if len(body) == 1 else []
        if len(children) != 1:
            return False
        verified = verify_signed(children[0], agency.signing_keys, require_signature=True)
        return logout_response_ok(verified, issuer=agency.entity_id, in_response_to=request.get("ID"),
                                  destination=None)
    except (XMLSecurityError, saml.SamlStatusError) as exc:
        log.info("back-channel LogoutResponse from %s refused: %s", agency.entity_id, exc)
        return False


__all__ = ["LogoutOutcome", "done_url", "end_saml_sessions", "handle_slo", "logout_everywhere",
           "logout_request", "logout_response_ok", "send_soap_logout"]
