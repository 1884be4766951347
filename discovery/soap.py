"""The discovery service's SOAP faces, deciding exactly as the JSON face does (`pipeline`):

- `POST /discovery/soap`: ID-WSF 2.0 Discovery Service Query over the ID-WSF 2.0
  SOAP binding, the requester authenticated by a WS-Security signature (`kernel.xml._wss`).
- `POST /idp/nim`: SAML 2.0 NameIDMappingRequest (core §3.8) over the SAML SOAP binding
  (bindings §3.2), the request carrying its own enveloped signature.

A Query envelope (SOAP 1.1):

    soap:Header
      sbf:Framework version="2.0"                    signed
      sb:Sender providerID="{requester entity ID}"   signed; picks the keys the signature must match
      wsa:MessageID, wsa:Action (urn:liberty:disco:2006-08:Query), wsa:To ({hub}/discovery/soap)
                                                     signed; the MessageID is accepted once
      rk:Purpose task="{事務 code}" [infoType="{特定個人情報 code}"]   signed
          (xmlns:rk="urn:renkei:2026": the Renkei extension header naming the task of the query)
      [sb:TargetIdentity] saml:NameID = the requester's pseudonym         signed (back office)
      wsse:Security  wsu:Timestamp (signed), ds:Signature, and the person's evidence:
          sec:Token usage="urn:liberty:security:tokenusage:2006-08:SecurityToken" = the bootstrap JWS
          or saml:Assertion = the staff member's SSO assertion (with sb:TargetIdentity)
    soap:Body  disco:Query/disco:RequestedService/disco:ServiceType   signed

The answer is a hub-signed envelope: disco:QueryResponse with lu:Status (OK, NoResults, or
Failed with the reason code in a nested lu:Status), one wsa:EndpointReference per permitted
offering (its wsa:Metadata carries the one-time provider token in sec:SecurityContext/sec:Token),
and one `rk:Decision provider permitted reason decisionId overridden` per provider decided.
A message the hub cannot authenticate gets a SOAP 1.1 Fault (HTTP 500, SOAP 1.1 §6.2) whose
detail holds `lu:Status code="{reason code}"`.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lxml import etree
from sqlalchemy.orm import Session

from discovery import pipeline
from discovery.errors import (
    DiscoveryRefused,
    HubUnavailable,
    LogWriteFailed,
    UnknownPerson,
    UnknownTarget,
)
from discovery.tokens import DISCOVERY_ROLE
from federation import service as agencies
from federation.service import RegisteredAgency
from kernel import replay
from kernel.db import utcnow
from kernel.keys import current_signing_key
from kernel.settings import Settings, get_settings
from kernel.web import in_unit_of_work
from kernel.xml import (
    ACTION,
    BODY,
    ENVELOPE,
    FRAMEWORK,
    HEADER,
    MUST_UNDERSTAND,
    SAML_NS,
    SAMLP_NS,
    SB_NS,
    SBF_NS,
    SECURITY,
    SENDER,
    SIGNABLE_HEADERS,
    SOAP11_NS,
    TARGET_IDENTITY,
    TO,
    WSA_NS,
    WSSE_NS,
    VerifiedEnvelope,
    XMLSecurityError,
    fault_code,
    new_id,
    parse_xml,
    read_xs_datetime,
    saml,
    sign_envelope,
    sign_enveloped,
    soap_envelope,
    verify_envelope,
    verify_signed,
    xs_datetime,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["discovery"])

RK_NS = "urn:renkei:2026"
LU_NS = "urn:liberty:util:2006-08"
DISCO_NS = saml.DISCO_NS
SEC_NS = saml.SEC_NS

PURPOSE = f"{{{RK_NS}}}Purpose"
DECISION = f"{{{RK_NS}}}Decision"
SEC_TOKEN = f"{{{SEC_NS}}}Token"
SAML_ASSERTION = f"{{{SAML_NS}}}Assertion"
SAML_NAME_ID = f"{{{SAML_NS}}}NameID"

FRAMEWORK_VERSION = "2.0"
QUERY_ACTION = "urn:liberty:disco:2006-08:Query"
QUERY_RESPONSE_ACTION = "urn:liberty:disco:2006-08:QueryResponse"
FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"
UNKNOWN_PRINCIPAL = "urn:oasis:names:tc:SAML:2.0:status:UnknownPrincipal"
NIM_LIFETIME = timedelta(minutes=5)  # how old a NameIDMappingRequest may be (its ID is kept as long)

# ID-WSF DS 2.0 QueryResponse top-level status codes (lu:Status@code)
STATUS_OK, STATUS_NO_RESULTS, STATUS_FAILED = "OK", "NoResults", "Failed"

_KNOWN_HEADERS = frozenset({SECURITY, PURPOSE, *SIGNABLE_HEADERS})
_XML = "text/xml; charset=utf-8"  # SOAP 1.1 §6.1.1
_NSMAP = {"sb": SB_NS, "sbf": SBF_NS, "disco": DISCO_NS, "lu": LU_NS, "sec": SEC_NS, "rk": RK_NS}
_CODE = re.compile(r"^\S{1,64}$")


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def soap_url(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + "/discovery/soap"


def nim_url(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + "/idp/nim"


class SoapFault(Exception):
    """A message refused at the SOAP/WS-Security layer: faultcode, reason code, safe message."""

    def __init__(self, code: tuple[str, str], reason: str, message: str, relates_to: str | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.relates_to = relates_to  # the verified wsa:MessageID, once there is one


FAILED_AUTHENTICATION = (WSSE_NS, "FailedAuthentication")
INVALID_SECURITY = (WSSE_NS, "InvalidSecurity")
CLIENT = (SOAP11_NS, "Client")
SERVER = (SOAP11_NS, "Server")
MUST_UNDERSTAND_FAULT = (SOAP11_NS, "MustUnderstand")


# -- routes ----------------------------------------------------------------------------------
@router.post("/discovery/soap", include_in_schema=False)
async def discovery_soap(request: Request) -> Response:
    """ID-WSF 2.0 Discovery Service Query over the ID-WSF SOAP binding (module docstring)."""
    settings = get_settings()

    def refuse(fault: SoapFault) -> Response:
        return _fault(settings, fault)

    try:
        raw = await _read_body(request, settings.max_message_bytes)
    except SoapFault as fault:
        return refuse(fault)
    return await in_unit_of_work(_guarded, _discovery, settings, raw, refuse)


@router.post("/idp/nim", include_in_schema=False)
async def name_id_mapping(request: Request) -> Response:
    """SAML 2.0 NameIDMappingRequest (core §3.8) over the SAML SOAP binding (bindings §3.2)."""
    settings = get_settings()
    try:
        raw = await _read_body(request, settings.max_message_bytes)
    except SoapFault as fault:
        return _saml_soap_fault(fault)
    return await in_unit_of_work(_guarded, _name_id_mapping, settings, raw, _saml_soap_fault)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused once it passes `limit` bytes (before any parsing)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise SoapFault(CLIENT, "MESSAGE_TOO_LARGE", f"the message is larger than {limit} bytes")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise SoapFault(CLIENT, "MESSAGE_TOO_LARGE", f"the message is larger than {limit} bytes")
    return bytes(received)


def _guarded(db: Session, handler: Callable[[Session, Settings, bytes], Response], settings: Settings,
             raw: bytes, refuse: Callable[[SoapFault], Response]) -> Response:
    """Any unexpected error becomes a soap:Server fault with nothing half-written, never a trace."""
    try:
        return handler(db, settings, raw)
    except Exception:
        log.exception("unexpected error on a SOAP endpoint")
        db.rollback()
        return refuse(SoapFault(SERVER, "INTERNAL_ERROR", "internal error"))


# -- ID-WSF Discovery Service Query ------------------------------------------------------------
@dataclass(frozen=True)
class _Query:
    requester: RegisteredAgency
    message_id: str
    task: str
    info_type: str | None
    person: pipeline.PersonRef
    service_type: str


def _discovery(db: Session, settings: Settings, raw: bytes) -> Response:
    try:
        query = _authenticated_query(db, settings, raw)
    except XMLSecurityError as exc:
        return _fault(settings, SoapFault(fault_code(exc), _security_reason(exc), str(exc)))
    except SoapFault as fault:
        return _fault(settings, fault)
    try:
        decisions = pipeline.discover(
            db_session=db, settings=settings, requester=query.requester, person=query.person,
            service_type=query.service_type, task=query.task, info_type=query.info_type,
        )
    except DiscoveryRefused as exc:
        return _query_refused(settings, query.message_id, exc)
    return _query_response(settings, query.message_id, decisions)


def _query_refused(settings: Settings, message_id: str, exc: DiscoveryRefused) -> Response:
    """A refused query: a QueryResponse with status Failed and the reason code (ID-WSF DS 2.0
    §4.2.3), except a log failure, which is the hub's fault: a soap:Server Fault (SOAP 1.1 §4.4)."""
    if isinstance(exc, (LogWriteFailed, HubUnavailable)):
        return _fault(settings, SoapFault(SERVER, exc.code, exc.message, relates_to=message_id))
    return _query_response(settings, message_id, [], refused=exc)


def _authenticated_query(db: Session, settings: Settings, raw: bytes) -> _Query:
    """Authenticate the sender (ID-WSF SecMech 2.0: peer-signed message), then read the query
    from the signed parts only."""
    sender = _claimed_sender(raw, settings.max_message_bytes)
    requester = agencies.lookup(db_session=db, entity_id=sender)
    if requester is None or not requester.signing_keys:
        raise SoapFault(FAILED_AUTHENTICATION, "UNKNOWN_SENDER", "the sb:Sender is not a registered agency")
    skew = timedelta(seconds=settings.clock_skew_seconds)
    verified = verify_envelope(
        raw, list(requester.signing_keys), max_bytes=settings.max_message_bytes, skew=skew,
        extra_parts=(PURPOSE,), required_parts=(ACTION, TO, SENDER, FRAMEWORK, PURPOSE),
    )
    if verified.header(SENDER).get("providerID") != sender:
        raise SoapFault(FAILED_AUTHENTICATION, "UNKNOWN_SENDER", "the signed sb:Sender names another agency")
    try:
        _check_binding(verified, settings)
        try:
            replay.remember(db_session=db, issuer=sender, message_id="wsa:" + verified.message_id,
                            expires_at=verified.expires.replace(tzinfo=None) + skew)
        except replay.ReplayDetected:
            raise SoapFault(INVALID_SECURITY, "MESSAGE_REPLAYED",
                            "this wsa:MessageID was already received") from None
        task, info_type = _purpose(verified.header(PURPOSE))
        person = _person(verified)
        service_type = _requested_service_type(verified.body)
    except SoapFault as fault:
        fault.relates_to = verified.message_id
        raise
    return _Query(requester, verified.message_id, task, info_type, person, service_type)


def _claimed_sender(raw: bytes, max_bytes: int) -> str:
    """Who the message says it is from (sb:Sender, ID-WSF SOAP binding 2.0), read before the
    signature is checked only to choose the keys; the signed copy must say the same."""
    root = parse_xml(raw, max_bytes=max_bytes)
    headers = root.findall(HEADER) if root.tag == ENVELOPE else []
    if len(headers) != 1:
        raise SoapFault(CLIENT, "NOT_A_SOAP_ENVELOPE", "send one SOAP 1.1 Envelope with a Header")
    for block in headers[0]:
        if isinstance(block.tag, str) and block.get(MUST_UNDERSTAND) in ("1", "true") \
                and block.tag not in _KNOWN_HEADERS:
            raise SoapFault(MUST_UNDERSTAND_FAULT, "HEADER_NOT_UNDERSTOOD",
                            f"header {block.tag} is not understood")
    senders = headers[0].findall(SENDER)
    if len(senders) != 1 or not (senders[0].get("providerID") or "").strip():
        raise SoapFault(FAILED_AUTHENTICATION, "UNKNOWN_SENDER", "send exactly one sb:Sender with a providerID")
    return senders[0].get("providerID")


def _check_binding(verified: VerifiedEnvelope, settings: Settings) -> None:
    """ID-WSF SOAP binding 2.0: framework version, WS-Addressing Action and To."""
    if verified.header(FRAMEWORK).get("version") != FRAMEWORK_VERSION:
        raise SoapFault(CLIENT, "FrameworkVersionMismatch", "only sbf:Framework version 2.0 is supported")
    if verified.action != QUERY_ACTION:
        raise SoapFault((WSA_NS, "ActionNotSupported"), "ACTION_NOT_SUPPORTED", f"wsa:Action must be {QUERY_ACTION}")
    if verified.to != soap_url(settings):
        raise SoapFault((WSA_NS, "InvalidAddressingHeader"), "WRONG_DESTINATION",
                        "wsa:To is not this discovery service")


def _purpose(block: etree._Element) -> tuple[str, str | None]:
    """rk:Purpose: the administrative task (事務) and optionally one information type."""
    task = (block.get("task") or "").strip()
    info_type = block.get("infoType")
    if not _CODE.match(task) or (info_type is not None and not _CODE.match(info_type)):
        raise SoapFault(CLIENT, "PURPOSE_INVALID", "rk:Purpose needs a task code (and an optional infoType)")
    return task, info_type


def _single_text(element: etree._Element, what: str, reason: str = "PERSON_NOT_NAMED") -> str:
    if len(element) or not (element.text or "").strip():
        raise SoapFault(CLIENT, reason, f"{what} must hold one text value")
    return element.text.strip()


def _person(verified: VerifiedEnvelope) -> pipeline.PersonRef:
    """The person: a bootstrap token, or the signed TargetIdentity pseudonym with a staff assertion."""
    boot = [t for t in verified.tokens if t.tag == SEC_TOKEN]
    staff = [t for t in verified.tokens if t.tag == SAML_ASSERTION]
    if len(boot) > 1 or len(staff) > 1:
        raise SoapFault(CLIENT, "PERSON_NOT_NAMED", "send at most one sec:Token and one staff saml:Assertion")
    token = None
    if boot:
        if boot[0].get("usage") != saml.TOKEN_USAGE:
            raise SoapFault(CLIENT, "PERSON_NOT_NAMED", f"sec:Token usage must be {saml.TOKEN_USAGE}")
        token = _single_text(boot[0], "sec:Token")
    pseudonym = None
    target = verified.header(TARGET_IDENTITY)
    if target is not None:
        name_ids = [c for c in target if isinstance(c.tag, str)]
        if len(name_ids) != 1 or name_ids[0].tag != SAML_NAME_ID:
            raise SoapFault(CLIENT, "PERSON_NOT_NAMED", "sb:TargetIdentity must hold one saml:NameID")
        pseudonym = _single_text(name_ids[0], "saml:NameID")
    assertion = etree.tostring(staff[0], with_tail=False) if staff else None
    return pipeline.PersonRef(bootstrap_token=token, pseudonym=pseudonym, staff_assertion=assertion)


def _requested_service_type(body: etree._Element) -> str:
    """Body: exactly disco:Query/disco:RequestedService/disco:ServiceType (ID-WSF DS 2.0 Query)."""
    def only(parent: etree._Element, tag: str) -> etree._Element:
        children = [c for c in parent if isinstance(c.tag, str)]
        if len(children) != 1 or children[0].tag != tag:
            raise SoapFault(CLIENT, "UNSUPPORTED_QUERY",
                            "the Body must be one disco:Query with one RequestedService naming one ServiceType")
        return children[0]

    service_type = only(only(only(body, _q(DISCO_NS, "Query")), _q(DISCO_NS, "RequestedService")),
                        _q(DISCO_NS, "ServiceType"))
    return _single_text(service_type, "disco:ServiceType", "UNSUPPORTED_QUERY")


def _security_reason(exc: XMLSecurityError) -> str:
    local = fault_code(exc)[1]
    return {"FailedAuthentication": "SIGNATURE_INVALID", "FailedCheck": "SIGNATURE_INVALID",
            "UnsupportedAlgorithm": "UNSUPPORTED_ALGORITHM", "MessageExpired": "MESSAGE_EXPIRED",
            "Client": "MALFORMED_MESSAGE"}.get(local, "INVALID_SECURITY")


# -- answers ---------------------------------------------------------------------------------
def _hub_envelope(settings: Settings) -> etree._Element:
    envelope = soap_envelope(_NSMAP)
    header = envelope[0]
    etree.SubElement(header, FRAMEWORK, version=FRAMEWORK_VERSION)
    etree.SubElement(header, SENDER, providerID=pipeline.discovery_entity_id(settings))
    return envelope


def _signed(envelope: etree._Element, *, action: str, relates_to: str | None, status_code: int) -> Response:
    key = current_signing_key(DISCOVERY_ROLE)
    sign_envelope(envelope, key.private_key, certificate=key.certificate, action=action,
                  relates_to=relates_to, algorithm=key.xml_algorithm)
    body = etree.tostring(envelope, encoding="UTF-8", xml_declaration=True)
    return Response(body, status_code=status_code, media_type=_XML, headers={"Cache-Control": "no-store"})


def _fault(settings: Settings, fault: SoapFault) -> Response:
    """A SOAP 1.1 Fault (§4.4), HTTP 500 (§6.2), the reason code as an ID-WSF lu:Status.

    Signed only for a requester whose signature verified (`relates_to` is then its MessageID):
    anonymous garbage gets an unsigned fault, so it cannot make the hub spend an RSA signature.
    """
    envelope = _hub_envelope(settings)
    namespace, local = fault.code
    element = etree.SubElement(envelope[1], _q(SOAP11_NS, "Fault"), nsmap={"wsse": WSSE_NS, "wsa": WSA_NS})
    prefix = {SOAP11_NS: "soap", WSSE_NS: "wsse", WSA_NS: "wsa"}[namespace]
    etree.SubElement(element, "faultcode").text = f"{prefix}:{local}"
    etree.SubElement(element, "faultstring").text = fault.message
    detail = etree.SubElement(element, "detail")
    etree.SubElement(detail, _q(LU_NS, "Status"), code=fault.reason, comment=fault.message)
    if fault.relates_to is None:
        return Response(etree.tostring(envelope, encoding="UTF-8", xml_declaration=True), status_code=500,
                        media_type=_XML, headers={"Cache-Control": "no-store"})
    return _signed(envelope, action=FAULT_ACTION, relates_to=fault.relates_to, status_code=500)


def _query_response(settings: Settings, relates_to: str, decisions: list[pipeline.OfferingDecision],
                    refused: DiscoveryRefused | None = None) -> Response:
    """disco:QueryResponse (ID-WSF DS 2.0) with an EPR per permitted offering and every decision."""
    envelope = _hub_envelope(settings)
    response = etree.SubElement(envelope[1], _q(DISCO_NS, "QueryResponse"))
    status = etree.SubElement(response, _q(LU_NS, "Status"))
    if refused is not None:
        status.set("code", STATUS_FAILED)
        status.set("comment", refused.message)
        etree.SubElement(status, _q(LU_NS, "Status"), code=refused.code)
    elif any(d.permitted for d in decisions):
        status.set("code", STATUS_OK)
    else:
        status.set("code", STATUS_NO_RESULTS)
    for d in decisions:
        if d.permitted:
            response.append(_endpoint_reference(settings, d))
    for d in decisions:
        etree.SubElement(response, DECISION, provider=d.provider, permitted=_bool(d.permitted),
                         reason=d.reason, decisionId=d.decision_id, overridden=_bool(d.overridden))
    return _signed(envelope, action=QUERY_RESPONSE_ACTION, relates_to=relates_to, status_code=200)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _endpoint_reference(settings: Settings, d: pipeline.OfferingDecision) -> etree._Element:
    """The provider's EPR (ID-WSF DS 2.0 endpoint reference) with its one-time token in the security context."""
    def el(parent: etree._Element, namespace: str, name: str, text: str | None = None, **attrs: str):
        child = etree.SubElement(parent, _q(namespace, name), attrs)
        if text is not None:
            child.text = text
        return child

    epr = etree.Element(_q(WSA_NS, "EndpointReference"))
    el(epr, WSA_NS, "Address", d.endpoint)
    metadata = el(epr, WSA_NS, "Metadata")
    el(metadata, DISCO_NS, "Abstract", f"{d.provider_name}: {d.service_type}")
    el(metadata, DISCO_NS, "ProviderID", d.provider)
    context = el(metadata, DISCO_NS, "ServiceContext")
    el(context, DISCO_NS, "ServiceType", d.service_type)
    endpoint = el(context, DISCO_NS, "EndpointContext")
    el(endpoint, DISCO_NS, "Address", d.endpoint)
    el(endpoint, SBF_NS, "Framework", version=FRAMEWORK_VERSION)
    el(endpoint, DISCO_NS, "SecurityMechID", d.security_mechanism)
    security = el(metadata, SEC_NS, "SecurityContext")
    el(security, DISCO_NS, "SecurityMechID", d.security_mechanism)
    token = el(security, SEC_NS, "Token", usage=saml.TOKEN_USAGE)
    token.append(parse_xml(d.token, max_bytes=max(settings.max_message_bytes, len(d.token))))
    return epr


# -- SAML NameIDMappingRequest -----------------------------------------------------------------
class _SamlRefusal(Exception):
    def __init__(self, status: str, sub_status: str | None, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.status, self.sub_status, self.reason, self.message = status, sub_status, reason, message
        self.authenticated = False  # refused after the requester's signature verified


@dataclass(frozen=True)
class _Mapping:
    requester: RegisteredAgency
    request_id: str
    target: str
    task: str
    info_type: str
    person: pipeline.PersonRef


def _name_id_mapping(db: Session, settings: Settings, raw: bytes) -> Response:
    try:
        request = _nim_request(raw, settings.max_message_bytes)
    except XMLSecurityError as exc:
        return _saml_soap_fault(SoapFault(CLIENT, "MALFORMED_MESSAGE", str(exc)))
    except SoapFault as fault:
        return _saml_soap_fault(fault)
    in_response_to = request.get("ID")
    try:
        mapping = _authenticated_mapping(db, settings, request)
        decision, encrypted = pipeline.map_name_id(
            db_session=db, settings=settings, requester=mapping.requester, person=mapping.person,
            target=mapping.target, task=mapping.task, info_type=mapping.info_type,
        )
    except _SamlRefusal as refusal:
        return _nim_response(settings, in_response_to, refusal=refusal, sign=refusal.authenticated)
    except DiscoveryRefused as exc:
        return _nim_response(settings, in_response_to, refusal=_nim_refusal(exc))
    return _nim_response(settings, in_response_to, decision=decision, encrypted=encrypted)


def _nim_refusal(exc: DiscoveryRefused) -> _SamlRefusal:
    """A refused NameIDMappingRequest as SAML status codes (core §3.2.2.2): the hub's own
    failure is Responder, anything else Requester with the closest second-level code."""
    if isinstance(exc, LogWriteFailed):
        return _SamlRefusal(saml.RESPONDER, None, exc.code, "the decision could not be logged")
    if isinstance(exc, HubUnavailable):
        return _SamlRefusal(saml.RESPONDER, None, exc.code, exc.message)
    if isinstance(exc, UnknownPerson):
        return _SamlRefusal(saml.REQUESTER, UNKNOWN_PRINCIPAL, exc.code, exc.message)
    if isinstance(exc, UnknownTarget):
        return _SamlRefusal(saml.REQUESTER, saml.INVALID_NAMEID_POLICY, exc.code, exc.message)
    return _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, exc.code, exc.message)


def _saml_soap_fault(refused: SoapFault) -> Response:
    """SAML SOAP binding §3.2.3: a SOAP-level error (no SAML request to answer) is a SOAP Fault;
    SAML processing errors are SAML responses with an error status instead."""
    envelope = etree.Element(ENVELOPE, nsmap={"soap": SOAP11_NS})
    fault = etree.SubElement(etree.SubElement(envelope, BODY), _q(SOAP11_NS, "Fault"))
    namespace, local = refused.code
    etree.SubElement(fault, "faultcode").text = f"soap:{local}" if namespace == SOAP11_NS else "soap:Client"
    etree.SubElement(fault, "faultstring").text = refused.message
    return Response(etree.tostring(envelope, encoding="UTF-8", xml_declaration=True), status_code=500,
                    media_type=_XML, headers={"Cache-Control": "no-store"})


def _nim_request(raw: bytes, max_bytes: int) -> etree._Element:
    root = parse_xml(raw, max_bytes=max_bytes)
    if root.tag != ENVELOPE:
        raise SoapFault(CLIENT, "NOT_A_SOAP_ENVELOPE", "send one SOAP 1.1 Envelope")
    for header in root.findall(HEADER):
        for block in header:
            if isinstance(block.tag, str) and block.get(MUST_UNDERSTAND) in ("1", "true"):
                raise SoapFault(MUST_UNDERSTAND_FAULT, "HEADER_NOT_UNDERSTOOD", f"header {block.tag} is not understood")
    bodies = root.findall(BODY)
    children = [c for c in bodies[0] if isinstance(c.tag, str)] if len(bodies) == 1 else []
    if len(children) != 1 or children[0].tag != _q(SAMLP_NS, "NameIDMappingRequest"):
        raise SoapFault(CLIENT, "UNSUPPORTED_REQUEST", "the Body must hold one samlp:NameIDMappingRequest")
    return children[0]


def _issuer(request: etree._Element) -> str:
    issuers = request.findall(_q(SAML_NS, "Issuer"))
    if len(issuers) != 1 or len(issuers[0]) or not (issuers[0].text or "").strip():
        raise _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, "UNKNOWN_REQUESTER",
                           "the request must carry exactly one Issuer")
    return issuers[0].text.strip()


def _authenticated_mapping(db: Session, settings: Settings, request: etree._Element) -> _Mapping:
    """Verify the requester's signature (SAML core §5) with its pinned keys, then read the signed
    request only: issuer, destination, freshness, replay, the person and the target."""
    claimed = _issuer(request)
    requester = agencies.lookup(db_session=db, entity_id=claimed)
    if requester is None or not requester.signing_keys:
        raise _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, "UNKNOWN_REQUESTER",
                           "the Issuer is not a registered agency")
    try:
        signed = verify_signed(request, list(requester.signing_keys))
    except XMLSecurityError as exc:
        raise _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, "SIGNATURE_INVALID", str(exc)) from None
    try:
        return _verified_mapping(db, settings, requester, claimed, signed)
    except _SamlRefusal as refusal:
        refusal.authenticated = True
        raise


def _verified_mapping(db: Session, settings: Settings, requester: RegisteredAgency, claimed: str,
                      signed: etree._Element) -> _Mapping:
    """The checks on a request whose signature verified: its refusals are answered signed."""
    if _issuer(signed) != claimed:
        raise _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, "UNKNOWN_REQUESTER", "the Issuer changed")
    if signed.get("Version") != "2.0":
        raise _SamlRefusal(saml.VERSION_MISMATCH, None, "VERSION_MISMATCH", "SAML 2.0 only")
    if signed.get("Destination") != nim_url(settings):
        raise _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, "WRONG_DESTINATION",
                           "Destination must be this endpoint")
    issued = _issue_instant(signed.get("IssueInstant"))
    skew = timedelta(seconds=settings.clock_skew_seconds)
    now = utcnow()
    if issued > now + skew or issued < now - NIM_LIFETIME - skew:
        raise _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, "MESSAGE_EXPIRED",
                           "IssueInstant is not within the last five minutes")
    try:
        replay.remember(db_session=db, issuer=claimed, message_id="saml:" + signed.get("ID"),
                        expires_at=issued + NIM_LIFETIME + 2 * skew)
    except replay.ReplayDetected:
        raise _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, "MESSAGE_REPLAYED",
                           "this request ID was already received") from None
    return _mapping_facts(requester, signed)


def _issue_instant(value: str | None) -> datetime:
    try:
        return read_xs_datetime(value)
    except ValueError as exc:
        raise _SamlRefusal(saml.REQUESTER, None, "MALFORMED_REQUEST", f"IssueInstant: {exc}") from None


def _mapping_facts(requester: RegisteredAgency, signed: etree._Element) -> _Mapping:
    def refuse(message: str, sub: str = saml.REQUEST_DENIED, reason: str = "MALFORMED_REQUEST"):
        return _SamlRefusal(saml.REQUESTER, sub, reason, message)

    extensions = signed.findall(_q(SAMLP_NS, "Extensions"))
    parts = [c for c in extensions[0] if isinstance(c.tag, str)] if len(extensions) == 1 else []
    purposes = [p for p in parts if p.tag == PURPOSE]
    boot = [p for p in parts if p.tag == SEC_TOKEN]
    staff = [p for p in parts if p.tag == SAML_ASSERTION]
    if len(purposes) != 1 or len(boot) > 1 or len(staff) > 1 or len(parts) != 1 + len(boot) + len(staff):
        raise refuse("samlp:Extensions must hold one rk:Purpose, and at most one sec:Token and one "
                     "saml:Assertion")
    task = (purposes[0].get("task") or "").strip()
    info_type = (purposes[0].get("infoType") or "").strip()
    if not _CODE.match(task) or not _CODE.match(info_type):
        raise refuse("rk:Purpose needs a task and an infoType", reason="PURPOSE_INVALID")
    token = None
    if boot:
        if boot[0].get("usage") != saml.TOKEN_USAGE or len(boot[0]) or not (boot[0].text or "").strip():
            raise refuse("sec:Token must be a SecurityToken holding the bootstrap token", reason="PERSON_NOT_NAMED")
        token = boot[0].text.strip()
    name_ids = signed.findall(SAML_NAME_ID)
    if len(name_ids) != 1 or len(name_ids[0]) or not (name_ids[0].text or "").strip():
        raise refuse("the request must name the person by one saml:NameID", reason="PERSON_NOT_NAMED")
    policies = signed.findall(_q(SAMLP_NS, "NameIDPolicy"))
    if len(policies) != 1 or not (policies[0].get("SPNameQualifier") or "").strip():
        raise refuse("NameIDPolicy must name the target agency in SPNameQualifier", saml.INVALID_NAMEID_POLICY)
    if policies[0].get("Format") not in (None, saml.NAMEID_PERSISTENT):
        raise refuse("only persistent identifiers are mapped", saml.INVALID_NAMEID_POLICY)
    return _Mapping(
        requester=requester, request_id=signed.get("ID"), target=policies[0].get("SPNameQualifier").strip(),
        task=task, info_type=info_type,
        person=pipeline.PersonRef(bootstrap_token=token, pseudonym=name_ids[0].text.strip(),
                                  staff_assertion=etree.tostring(staff[0], with_tail=False) if staff else None),
    )


def _nim_response(settings: Settings, in_response_to: str | None, *,
                  decision: pipeline.OfferingDecision | None = None, encrypted: etree._Element | None = None,
                  refusal: _SamlRefusal | None = None, sign: bool = True) -> Response:
    """samlp:NameIDMappingResponse (core §3.8.2) in a SOAP envelope, signed by the hub unless
    it refuses a request whose signature never verified (no RSA signature spent on garbage)."""
    response = etree.Element(_q(SAMLP_NS, "NameIDMappingResponse"), nsmap={"samlp": SAMLP_NS, "saml": SAML_NS})
    response.set("ID", new_id())
    if in_response_to and len(in_response_to) <= 256:
        response.set("InResponseTo", in_response_to)
    response.set("Version", "2.0")
    response.set("IssueInstant", xs_datetime(utcnow()))
    etree.SubElement(response, _q(SAML_NS, "Issuer")).text = settings.idp_entity_id
    status = etree.SubElement(response, _q(SAMLP_NS, "Status"))
    if decision is not None and decision.permitted and encrypted is not None:
        etree.SubElement(status, _q(SAMLP_NS, "StatusCode"), Value=saml.SUCCESS)
    else:
        if refusal is None:
            refusal = _SamlRefusal(saml.REQUESTER, saml.REQUEST_DENIED, decision.reason if decision else "FAILED")
        code = etree.SubElement(status, _q(SAMLP_NS, "StatusCode"), Value=refusal.status)
        if refusal.sub_status:
            etree.SubElement(code, _q(SAMLP_NS, "StatusCode"), Value=refusal.sub_status)
        message = refusal.reason + (f": {refusal.message}" if refusal.message else "")
        etree.SubElement(status, _q(SAMLP_NS, "StatusMessage")).text = message
    if decision is not None:
        detail = etree.SubElement(status, _q(SAMLP_NS, "StatusDetail"))
        etree.SubElement(detail, DECISION, nsmap={"rk": RK_NS}, provider=decision.provider,
                         permitted=_bool(decision.permitted), reason=decision.reason,
                         decisionId=decision.decision_id, overridden=_bool(decision.overridden))
    if decision is not None and decision.permitted and encrypted is not None:
        response.append(encrypted)
    if sign:
        key = current_signing_key(DISCOVERY_ROLE)
        sign_enveloped(response, key.private_key, certificate=key.certificate, algorithm=key.xml_algorithm)
    envelope = etree.Element(ENVELOPE, nsmap={"soap": SOAP11_NS})
    etree.SubElement(envelope, BODY).append(response)
    return Response(etree.tostring(envelope, encoding="UTF-8", xml_declaration=True), media_type=_XML,
                    headers={"Cache-Control": "no-store"})
