"""SAML 2.0 messages the IdP reads and writes (SAML core, OASIS saml-core-2.0-os).

Reading works only on elements that `kernel.xml._dsig` has parsed (and, where signed,
verified); writing builds Responses, LogoutResponses and the IdP's metadata.
"""
from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from lxml import etree

from kernel.xml import new_id, read_xs_datetime, xs_datetime
from kernel.xml.saml import (  # the vocabulary the IdP speaks, re-exported for its callers
    AC_PASSWORD,
    AC_PPT,
    AC_REFEDS_MFA,
    AC_TIMESYNC,
    AC_UNSPECIFIED,
    ATTRNAME_URI,
    BEARER,
    BINDING_POST,
    BINDING_REDIRECT,
    DISCO_NS,
    DISCOVERY_EPR,
    DS_NS,
    MD_NS,
    NAMEID_PERSISTENT,
    NO_AUTHN_CONTEXT,
    PAIRWISE_ID,
    REQUESTER,
    SAML_NS,
    SAMLP_NS,
    SBF_NS,
    SEC_NS,
    SUCCESS,
    TLS_BEARER,
    TOKEN_USAGE,
    VERSION_MISMATCH,
    WSA_NS,
    XS_NS,
    XSI_NS,
)

_NS = {"saml": SAML_NS, "samlp": SAMLP_NS}

NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"  # core §8.3.8
# core §3.7.3.2: a second-level status under Success when not every session participant logged out
PARTIAL_LOGOUT = "urn:oasis:names:tc:SAML:2.0:status:PartialLogout"

# A passkey login (WebAuthn, idp.passkeys): phishing-resistant multi-factor authentication, named
# by the class that NIST SP 800-63 relying parties ask for (login.gov's AAL2 with a
# phishing-resistant authenticator). A synced passkey is not AAL3 (no hardware-bound key), so
# the AAL3 URI would claim too much; docs/passkeys.md explains the choice.
AC_PASSKEY = "http://idmanagement.gov/ns/assurance/aal/2?phishing_resistant=true"

# 1 password, 2 password + TOTP, 3 passkey (alone with user verification, or after the password)
LEVELS = {AC_UNSPECIFIED: 0, AC_PASSWORD: 1, AC_PPT: 1, AC_TIMESYNC: 2, AC_REFEDS_MFA: 2, AC_PASSKEY: 3}
CLASS_FOR_LEVEL = {1: AC_PPT, 2: AC_TIMESYNC, 3: AC_PASSKEY}


class SamlStatusError(Exception):
    """A request the IdP answers with a SAML error status (core §3.2.2.2)."""

    def __init__(self, status: str, message: str, sub_status: str | None = None):
        super().__init__(message)
        self.status = status
        self.sub_status = sub_status
        self.message = message
        self.request = None  # the AuthnRequest being answered, once its ACS is trusted


saml_time = xs_datetime


def parse_saml_time(value: str | None, what: str = "IssueInstant") -> datetime:
    try:
        return read_xs_datetime(value)
    except ValueError as exc:
        raise SamlStatusError(REQUESTER, f"{what}: {exc}") from None


# --- bounds on what a request may carry, checked once as it is read ----------------------
# An ID is an xs:ID, so an NCName (core §1.3.4); 256 characters is the replay cache's column.
MAX_ID_CHARS = 256
_NCNAME = re.compile(r"[^\W\d][\w.\-]*")
# URIs (Issuer, Destination, ACS URL, Format, ...): the registry's columns hold 1024 characters
MAX_URI_CHARS = 1024
# xs:unsignedShort (metadata §2.2.3 IndexedEndpointType), in ASCII digits: int() would also
# take "²" or "٣", and a 5,000-digit number
_INDEX = re.compile(r"[0-9]{1,5}")
# an IssueInstant is compared against now and has minutes added to it: far-off years are refused
# here rather than overflowing later
_EARLIEST, _LATEST = datetime(1970, 1, 1), datetime(9000, 1, 1)


def _message_id(root: etree._Element, what: str) -> str:
    """The message's ID attribute: present, an NCName, at most MAX_ID_CHARS characters."""
    value = root.get("ID")
    if not value:
        raise SamlStatusError(REQUESTER, f"{what} has no ID")
    if len(value) > MAX_ID_CHARS or not _NCNAME.fullmatch(value):
        raise SamlStatusError(REQUESTER, f"{what} ID must be an NCName of at most {MAX_ID_CHARS} characters")
    return value


def _uri(root: etree._Element, name: str) -> str | None:
    """An attribute holding a URI: at most MAX_URI_CHARS characters, no control characters."""
    value = root.get(name)
    if value is not None and (len(value) > MAX_URI_CHARS or any(ord(c) < 0x20 or c == "\x7f" for c in value)):
        raise SamlStatusError(
            REQUESTER, f"{name} must be a URI of at most {MAX_URI_CHARS} characters, no control characters"
        )
    return value


def _issue_instant(root: etree._Element) -> datetime:
    instant = parse_saml_time(root.get("IssueInstant"))
    if not _EARLIEST <= instant < _LATEST:
        raise SamlStatusError(REQUESTER, "IssueInstant is not a plausible time")
    return instant


def _acs_index(root: etree._Element) -> int | None:
    index = root.get("AssertionConsumerServiceIndex")
    if index is None:
        return None
    if not _INDEX.fullmatch(index) or int(index) > 65535:
        raise SamlStatusError(REQUESTER, "AssertionConsumerServiceIndex must be a number from 0 to 65535")
    return int(index)


# --- reading ----------------------------------------------------------------------------

@dataclass
class RequestedContext:
    comparison: str
    classes: list[str]


@dataclass
class AuthnRequest:
    """The parts of a samlp:AuthnRequest (core §3.4.1) that the IdP acts on."""

    id: str
    issuer: str
    issue_instant: datetime
    destination: str | None
    acs_url: str | None
    acs_index: int | None
    protocol_binding: str | None
    force_authn: bool
    is_passive: bool
    name_id_format: str | None
    requested_context: RequestedContext | None
    relay_state: str | None = None
    signed: bool = False
    # NameIDPolicy AllowCreate (core §3.4.1.1): only an explicit "false" forbids a first pseudonym
    allow_create: bool = True
    # resolved by the IdP after checks
    acs_location: str = ""

    def to_json(self) -> dict:
        data = asdict(self)
        data["issue_instant"] = saml_time(self.issue_instant)
        return data

    @classmethod
    def from_json(cls, data: dict) -> AuthnRequest:
        data = dict(data)
        data["issue_instant"] = parse_saml_time(data["issue_instant"])
        rc = data.get("requested_context")
        data["requested_context"] = RequestedContext(**rc) if rc else None
        return cls(**data)


def _check_version(root: etree._Element) -> None:
    if root.get("Version") != "2.0":
        raise SamlStatusError(VERSION_MISMATCH, "only SAML Version 2.0 is supported")


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    # the whole text content: comments were refused at parse, so no split node hides a suffix
    return "".join(el.itertext()).strip() or None


def issuer_of(root: etree._Element) -> str | None:
    """The Issuer of a protocol message, read before the signature check to find its keys."""
    issuers = root.findall("saml:Issuer", _NS)
    issuer = _text(issuers[0]) if len(issuers) == 1 else None
    # longer than any registered entity ID: no agency, and not worth echoing in a refusal
    return issuer if issuer is not None and len(issuer) <= MAX_URI_CHARS else None


def read_authn_request(root: etree._Element) -> AuthnRequest:
    """Read an AuthnRequest (core §3.4.1) from an already-verified element."""
    if root.tag != f"{{{SAMLP_NS}}}AuthnRequest":
        raise SamlStatusError(REQUESTER, "the message is not a samlp:AuthnRequest")
    _check_version(root)
    request_id = _message_id(root, "AuthnRequest")
    issuer = issuer_of(root)
    if not issuer:
        raise SamlStatusError(REQUESTER, "AuthnRequest must carry exactly one Issuer")
    policy = root.find("samlp:NameIDPolicy", _NS)
    rac = root.find("samlp:RequestedAuthnContext", _NS)
    requested = None
    if rac is not None:
        classes = [c for c in (_text(e) for e in rac.findall("saml:AuthnContextClassRef", _NS)) if c]
        if rac.findall("saml:AuthnContextDeclRef", _NS):
            raise SamlStatusError(REQUESTER, "AuthnContextDeclRef is not supported", NO_AUTHN_CONTEXT)
        requested = RequestedContext(rac.get("Comparison") or "exact", classes)
    index = _acs_index(root)
    acs_url = _uri(root, "AssertionConsumerServiceURL")
    if index is not None and acs_url:
        raise SamlStatusError(REQUESTER, "give AssertionConsumerServiceURL or its index, not both")
    return AuthnRequest(
        id=request_id,
        issuer=issuer,
        issue_instant=_issue_instant(root),
        destination=_uri(root, "Destination"),
        acs_url=acs_url,
        acs_index=index,
        protocol_binding=_uri(root, "ProtocolBinding"),
        force_authn=(root.get("ForceAuthn") or "").lower() in ("true", "1"),
        is_passive=(root.get("IsPassive") or "").lower() in ("true", "1"),
        name_id_format=_uri(policy, "Format") if policy is not None else None,
        requested_context=requested,
        allow_create=policy is None or (policy.get("AllowCreate") or "").strip() not in ("false", "0"),
    )


@dataclass
class LogoutRequest:
    """The parts of a samlp:LogoutRequest (core §3.7.1) that the IdP acts on."""

    id: str
    issuer: str
    issue_instant: datetime
    destination: str | None
    not_on_or_after: datetime | None
    name_id: str | None
    session_indexes: list[str]


def read_logout_request(root: etree._Element) -> LogoutRequest:
    if root.tag != f"{{{SAMLP_NS}}}LogoutRequest":
        raise SamlStatusError(REQUESTER, "the message is not a samlp:LogoutRequest")
    _check_version(root)
    request_id = _message_id(root, "LogoutRequest")
    issuer = issuer_of(root)
    if not issuer:
        raise SamlStatusError(REQUESTER, "LogoutRequest needs exactly one Issuer")
    noa = root.get("NotOnOrAfter")
    return LogoutRequest(
        id=request_id,
        issuer=issuer,
        issue_instant=_issue_instant(root),
        destination=_uri(root, "Destination"),
        not_on_or_after=parse_saml_time(noa, "NotOnOrAfter") if noa else None,
        name_id=_text(root.find("saml:NameID", _NS)),
        session_indexes=[t for t in (_text(e) for e in root.findall("samlp:SessionIndex", _NS)) if t],
    )


# --- authentication context (core §3.3.2.2.1 comparison semantics) ------------------------

def required_level(requested: RequestedContext | None) -> int | None:
    """The weakest login that satisfies the request (1 password, 2 password+TOTP, 3 passkey),
    or None."""
    for level in (1, 2, 3):
        if context_for_level(requested, level) is not None:
            return level
    return None


def context_for_level(requested: RequestedContext | None, level: int) -> str | None:
    """The AuthnContextClassRef to assert for a login of `level`, or None if it cannot satisfy."""
    if requested is None or not requested.classes:
        return CLASS_FOR_LEVEL[level]
    known = [(c, LEVELS[c]) for c in requested.classes if c in LEVELS]
    if not known:
        return None
    levels = [lv for _, lv in known]
    match requested.comparison:
        case "exact":
            return next((c for c, lv in known if 1 <= lv <= level), None)
        case "minimum":
            return CLASS_FOR_LEVEL[level] if level >= min(levels) else None
        case "better":
            return CLASS_FOR_LEVEL[level] if level > min(levels) else None
        case "maximum":
            capped = min(level, max(levels))
            return CLASS_FOR_LEVEL[capped] if capped >= 1 else None
    return None


# --- writing ----------------------------------------------------------------------------

def _el(parent, ns: str, tag: str, attrib: dict | None = None, text: str | None = None):
    el = etree.SubElement(parent, f"{{{ns}}}{tag}", attrib or {})
    if text is not None:
        el.text = text
    return el


def _status(parent, status: str, sub_status: str | None, message: str | None) -> None:
    st = _el(parent, SAMLP_NS, "Status")
    code = _el(st, SAMLP_NS, "StatusCode", {"Value": status})
    if sub_status:
        _el(code, SAMLP_NS, "StatusCode", {"Value": sub_status})
    if message:
        _el(st, SAMLP_NS, "StatusMessage", text=message)


def response_root(
    *, issuer: str, destination: str, in_response_to: str | None, now: datetime
) -> etree._Element:
    attrs = {"ID": new_id(), "Version": "2.0", "IssueInstant": saml_time(now), "Destination": destination}
    if in_response_to:
        attrs["InResponseTo"] = in_response_to
    root = etree.Element(f"{{{SAMLP_NS}}}Response", attrs, nsmap={"samlp": SAMLP_NS, "saml": SAML_NS})
    _el(root, SAML_NS, "Issuer", text=issuer)
    return root


def error_response(
    *, issuer: str, destination: str, in_response_to: str | None, now: datetime,
    status: str, sub_status: str | None, message: str,
) -> etree._Element:
    root = response_root(issuer=issuer, destination=destination, in_response_to=in_response_to, now=now)
    _status(root, status, sub_status, message)
    return root


@dataclass(frozen=True)
class AssertionFacts:
    """What one assertion states about one person for one agency."""

    idp_entity_id: str
    sp_entity_id: str
    acs_url: str
    in_response_to: str | None
    pseudonym: str
    authn_context: str
    authn_instant: datetime
    session_index: str
    now: datetime
    lifetime: timedelta = timedelta(minutes=5)
    skew: timedelta = timedelta(seconds=60)
    # the NameID, when it is not the persistent pseudonym (a transient one, core §8.3.8)
    name_id: str | None = None
    name_id_format: str = NAMEID_PERSISTENT


def assertion(facts: AssertionFacts) -> etree._Element:
    """A saml:Assertion with a pairwise (or transient) NameID and the pairwise-id attribute,
    which carries the persistent pseudonym either way (Subject Identifier Attributes §3.3)."""
    f = facts
    a = etree.Element(
        f"{{{SAML_NS}}}Assertion",
        {"ID": new_id(), "Version": "2.0", "IssueInstant": saml_time(f.now)},
        nsmap={"saml": SAML_NS, "xs": XS_NS, "xsi": XSI_NS},
    )
    _el(a, SAML_NS, "Issuer", text=f.idp_entity_id)
    subject = _el(a, SAML_NS, "Subject")
    _el(
        subject,
        SAML_NS,
        "NameID",
        {"Format": f.name_id_format, "NameQualifier": f.idp_entity_id, "SPNameQualifier": f.sp_entity_id},
        f.name_id or f.pseudonym,
    )
    sc = _el(subject, SAML_NS, "SubjectConfirmation", {"Method": BEARER})
    scd = {"NotOnOrAfter": saml_time(f.now + f.lifetime), "Recipient": f.acs_url}
    if f.in_response_to:
        scd["InResponseTo"] = f.in_response_to
    _el(sc, SAML_NS, "SubjectConfirmationData", scd)
    cond = _el(
        a,
        SAML_NS,
        "Conditions",
        {"NotBefore": saml_time(f.now - f.skew), "NotOnOrAfter": saml_time(f.now + f.lifetime)},
    )
    _el(_el(cond, SAML_NS, "AudienceRestriction"), SAML_NS, "Audience", text=f.sp_entity_id)
    stmt = _el(
        a, SAML_NS, "AuthnStatement",
        {"AuthnInstant": saml_time(f.authn_instant), "SessionIndex": f.session_index},
    )
    _el(_el(stmt, SAML_NS, "AuthnContext"), SAML_NS, "AuthnContextClassRef", text=f.authn_context)
    attrs = _el(a, SAML_NS, "AttributeStatement")
    attr = _el(
        attrs, SAML_NS, "Attribute",
        {"Name": PAIRWISE_ID, "NameFormat": ATTRNAME_URI, "FriendlyName": "pairwise-id"},
    )
    _el(attr, SAML_NS, "AttributeValue", {f"{{{XSI_NS}}}type": "xs:string"}, f.pseudonym)
    return a


def logout_response(
    *, issuer: str, destination: str, in_response_to: str, now: datetime,
    status: str = SUCCESS, message: str | None = None,
) -> etree._Element:
    root = etree.Element(
        f"{{{SAMLP_NS}}}LogoutResponse",
        {
            "ID": new_id(), "Version": "2.0", "IssueInstant": saml_time(now),
            "Destination": destination, "InResponseTo": in_response_to,
        },
        nsmap={"samlp": SAMLP_NS, "saml": SAML_NS},
    )
    _el(root, SAML_NS, "Issuer", text=issuer)
    _status(root, status, None, message)
    return root


# the hub's own metadata extension: a role descriptor (metadata §2.4.1) for the discovery
# service, whose keys sign provider tokens and SOAP answers (docs/operations.md)
RENKEI_MD_NS = "urn:renkei:metadata"
DISCOVERY_DESCRIPTOR_TYPE = "renkei:DiscoveryServiceDescriptorType"


def idp_metadata(
    *, entity_id: str, sso_url: str, slo_url: str, signing_certs_der: list[bytes], want_signed: bool,
    discovery_certs_der: Sequence[bytes] = (),
) -> bytes:
    """The hub's EntityDescriptor: the IdP (metadata §2.4.3) with every published signing key,
    and, beside it, the discovery service's role descriptor with its own signing keys."""
    root = etree.Element(
        f"{{{MD_NS}}}EntityDescriptor", {"entityID": entity_id},
        nsmap={"md": MD_NS, "ds": DS_NS, "saml": SAML_NS},
    )
    idp = _el(
        root, MD_NS, "IDPSSODescriptor",
        {
            "protocolSupportEnumeration": SAMLP_NS,
            "WantAuthnRequestsSigned": "true" if want_signed else "false",
        },
    )
    for der in signing_certs_der:
        kd = _el(idp, MD_NS, "KeyDescriptor", {"use": "signing"})
        x509data = _el(_el(kd, DS_NS, "KeyInfo"), DS_NS, "X509Data")
        _el(x509data, DS_NS, "X509Certificate", text=base64.b64encode(der).decode())
    _el(idp, MD_NS, "SingleLogoutService", {"Binding": BINDING_REDIRECT, "Location": slo_url})
    _el(idp, MD_NS, "NameIDFormat", text=NAMEID_PERSISTENT)
    _el(idp, MD_NS, "NameIDFormat", text=NAMEID_TRANSIENT)
    for binding in (BINDING_REDIRECT, BINDING_POST):
        _el(idp, MD_NS, "SingleSignOnService", {"Binding": binding, "Location": sso_url})
    # the attribute this IdP releases (metadata §2.4.3), advertised without a value
    _el(
        idp, SAML_NS, "Attribute",
        {"Name": PAIRWISE_ID, "NameFormat": ATTRNAME_URI, "FriendlyName": "pairwise-id"},
    )
    if discovery_certs_der:
        disco = etree.SubElement(
            root, f"{{{MD_NS}}}RoleDescriptor",
            {f"{{{XSI_NS}}}type": DISCOVERY_DESCRIPTOR_TYPE, "protocolSupportEnumeration": DISCO_NS},
            nsmap={"xsi": XSI_NS, "renkei": RENKEI_MD_NS},
        )
        for der in discovery_certs_der:
            kd = _el(disco, MD_NS, "KeyDescriptor", {"use": "signing"})
            x509data = _el(_el(kd, DS_NS, "KeyInfo"), DS_NS, "X509Data")
            _el(x509data, DS_NS, "X509Certificate", text=base64.b64encode(der).decode())
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def discovery_epr_attribute(*, soap_url: str, provider_id: str, token: str) -> etree._Element:
    """The DiscoveryEPR attribute (ID-WSF DS 2.0 §4.4, ID-WSF SAML profile): where and how to
    ask the discovery service about this person."""
    attr = etree.Element(
        f"{{{SAML_NS}}}Attribute",
        {"Name": DISCOVERY_EPR, "NameFormat": ATTRNAME_URI, "FriendlyName": "DiscoveryEPR"},
        nsmap={"saml": SAML_NS},
    )
    value = etree.SubElement(attr, f"{{{SAML_NS}}}AttributeValue")
    epr = etree.SubElement(value, f"{{{WSA_NS}}}EndpointReference",
                           nsmap={"wsa": WSA_NS, "disco": DISCO_NS, "sec": SEC_NS, "sbf": SBF_NS})
    etree.SubElement(epr, f"{{{WSA_NS}}}Address").text = soap_url
    md = etree.SubElement(epr, f"{{{WSA_NS}}}Metadata")
    etree.SubElement(md, f"{{{DISCO_NS}}}Abstract").text = "Renkei discovery service"
    etree.SubElement(md, f"{{{DISCO_NS}}}ProviderID").text = provider_id
    etree.SubElement(md, f"{{{DISCO_NS}}}ServiceType").text = DISCO_NS
    ctx = etree.SubElement(md, f"{{{SEC_NS}}}SecurityContext")
    etree.SubElement(ctx, f"{{{DISCO_NS}}}SecurityMechID").text = TLS_BEARER
    etree.SubElement(ctx, f"{{{SEC_NS}}}Token", usage=TOKEN_USAGE).text = token
    return attr
