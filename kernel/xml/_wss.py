"""WS-Security for Renkei's SOAP faces: sign and verify the parts of a SOAP 1.1 envelope with one
detached XML signature (WSS SOAP Message Security 1.1 §8, X.509 Token Profile 1.1, as the ID-WSF 2.0
Security Mechanisms use them for peer-signed messages), as strict as `kernel.xml._dsig` and built on its parser.

Public API: `soap_envelope`, `sign_envelope`, `verify_envelope` -> `VerifiedEnvelope`, the typed
errors and `fault_code`. Callers read only the parts `verify_envelope` returns: each is parsed
afresh from exactly the canonical octets whose digest was checked.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from lxml import etree

from kernel.xml._dsig import (  # the layer's shared primitives, private to the package
    _C14N_METHOD,
    _DIGEST_METHOD,
    _DIGEST_VALUE,
    _DIGESTS,
    _INCLUSIVE_NAMESPACES,
    _KEY_INFO,
    _REFERENCE,
    _SIGNATURE,
    _SIGNATURE_METHOD,
    _SIGNATURE_VALUE,
    _SIGNED_INFO,
    _TRANSFORM,
    _TRANSFORMS,
    DIGEST_SHA256,
    DS_NS,
    EXC_C14N,
    RSA_SHA256,
    ForbiddenXML,
    MalformedXML,
    MessageTooLarge,
    SignatureInvalid,
    SignatureMissing,
    UnsupportedAlgorithm,
    XMLSecurityError,
    _base64_text,
    _c14n,
    _sign_octets,
    _signature_algorithm,
    _signature_parts,
    _verify_octets,
    parse_xml,
)
from kernel.xml._dsig import _children as _element_children
from kernel.xml._time import read_xs_datetime, xs_datetime

__all__ = [
    "SBF_NS",
    "SB_NS",
    "SIGNABLE_HEADERS",
    "SOAP11_NS",
    "WSA_NS",
    "WSSE_NS",
    "WSU_NS",
    "FailedAuthentication",
    "FailedCheck",
    "InvalidSecurity",
    "MessageExpired",
    "VerifiedEnvelope",
    "fault_code",
    "sign_envelope",
    "soap_envelope",
    "verify_envelope",
]

SOAP11_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE_NS: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
WSA_NS: Final = "http://www.w3.org/2005/08/addressing"
SBF_NS: Final = "urn:liberty:sb"
SB_NS: Final = "urn:liberty:sb:2006-08"

# X.509 Token Profile 1.1 and SOAP Message Security 1.1 value and encoding types.
X509V3: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
BASE64_BINARY: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)

TIMESTAMP_LIFETIME: Final = timedelta(minutes=5)
DEFAULT_SKEW: Final = timedelta(seconds=60)
MAX_REFERENCES: Final = 16
MAX_MESSAGE_ID: Final = 200

_NSMAP: Final = {"soap": SOAP11_NS, "wsse": WSSE_NS, "wsu": WSU_NS, "wsa": WSA_NS}


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


ENVELOPE: Final = _q(SOAP11_NS, "Envelope")
HEADER: Final = _q(SOAP11_NS, "Header")
BODY: Final = _q(SOAP11_NS, "Body")
MUST_UNDERSTAND: Final = _q(SOAP11_NS, "mustUnderstand")
SECURITY: Final = _q(WSSE_NS, "Security")
BINARY_SECURITY_TOKEN: Final = _q(WSSE_NS, "BinarySecurityToken")
TIMESTAMP: Final = _q(WSU_NS, "Timestamp")
WSU_ID: Final = _q(WSU_NS, "Id")
MESSAGE_ID: Final = _q(WSA_NS, "MessageID")
ACTION: Final = _q(WSA_NS, "Action")
TO: Final = _q(WSA_NS, "To")
RELATES_TO: Final = _q(WSA_NS, "RelatesTo")
FRAMEWORK: Final = _q(SBF_NS, "Framework")
SENDER: Final = _q(SB_NS, "Sender")
TARGET_IDENTITY: Final = _q(SB_NS, "TargetIdentity")

# Header blocks (direct children of soap:Header) a signature may cover: the ID-WSF SOAP binding's
# addressing headers, framework, sender and target identity. A face adds its own with
# `extra_parts`. Anything else, and anything inside wsse:Security but the Timestamp, can never
# be a signed part.
SIGNABLE_HEADERS: Final = frozenset({MESSAGE_ID, ACTION, TO, RELATES_TO, FRAMEWORK, SENDER, TARGET_IDENTITY})
_ALWAYS_SIGNED: Final = (BODY, TIMESTAMP, MESSAGE_ID)


# -- errors (SOAP Message Security 1.1 §12 names the fault for each) ------------------------
class InvalidSecurity(SignatureInvalid):
    """wsse:InvalidSecurity: the Security header or the signed parts are not what §8 allows
    (wrapping, duplicate IDs, a part not covered, more than one header or signature)."""


class FailedAuthentication(SignatureInvalid):
    """wsse:FailedAuthentication: the signature does not verify with any key pinned for the sender."""


class FailedCheck(SignatureInvalid):
    """wsse:FailedCheck: a signed part's digest does not match (the content was altered)."""


class MessageExpired(XMLSecurityError):
    """wsse:MessageExpired: the wsu:Timestamp is outside its window, allowing for clock skew."""


_FAULTS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (UnsupportedAlgorithm, "UnsupportedAlgorithm"),
    (FailedAuthentication, "FailedAuthentication"),
    (FailedCheck, "FailedCheck"),
    (MessageExpired, "MessageExpired"),
    (SignatureInvalid, "InvalidSecurity"),
    (SignatureMissing, "InvalidSecurity"),
)


def fault_code(error: XMLSecurityError) -> tuple[str, str]:
    """The SOAP 1.1 faultcode (namespace, local name) for a refusal (WSS 1.1 §12; SOAP 1.1
    §4.4.1 `Client` for input that is not a well-formed, harmless envelope)."""
    if isinstance(error, (MalformedXML, ForbiddenXML, MessageTooLarge)):
        return SOAP11_NS, "Client"
    for kind, local in _FAULTS:
        if isinstance(error, kind):
            return WSSE_NS, local
    return WSSE_NS, "InvalidSecurity"


# -- algorithms: the XML security layer's one allow-list and signer (RFC 6931; never HMAC,
# never SHA-1), shared with xmlsecurity rather than copied.
_algorithm = _signature_algorithm


# -- names (the XMLDSig ones are xmlsecurity's) ------------------------------------------------
_STR: Final = _q(WSSE_NS, "SecurityTokenReference")
_WSSE_REFERENCE: Final = _q(WSSE_NS, "Reference")
_CREATED: Final = _q(WSU_NS, "Created")
_EXPIRES: Final = _q(WSU_NS, "Expires")

_NCNAME: Final = re.compile(r"^[A-Za-z_][\w.\-]*$")
_UTC_TIME: Final = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?Z$")


# -- building and signing --------------------------------------------------------------------
def soap_envelope(nsmap: Mapping[str, str] | None = None) -> etree._Element:
    """An empty SOAP 1.1 envelope (Header, Body) declaring the WSS and addressing prefixes."""
    envelope = etree.Element(ENVELOPE, nsmap={**_NSMAP, **(nsmap or {})})
    etree.SubElement(envelope, HEADER)
    etree.SubElement(envelope, BODY)
    return envelope




def _new_wsu_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _header_block(header: etree._Element, tag: str, text: str | None) -> etree._Element | None:
    existing = header.findall(tag)
    if len(existing) > 1:
        raise ValueError(f"the envelope carries more than one {etree.QName(tag).localname} header")
    if text is None:
        return existing[0] if existing else None
    block = existing[0] if existing else etree.SubElement(header, tag)
    block.text = text
    return block


def sign_envelope(
    envelope: etree._Element,
    private_key: PrivateKeyTypes,
    *,
    certificate: x509.Certificate | None = None,
    message_id: str | None = None,
    action: str | None = None,
    to: str | None = None,
    relates_to: str | None = None,
    extra_parts: Collection[str] = (),
    algorithm: str = RSA_SHA256,
    now: datetime | None = None,
) -> None:
    """Sign a SOAP 1.1 envelope in place (SOAP Message Security 1.1 §8).

    Adds to wsse:Security (created, mustUnderstand) a wsu:Timestamp valid for five minutes and
    a detached ds:Signature with one Reference per part: soap:Body, the Timestamp, and every
    header block of `SIGNABLE_HEADERS` or `extra_parts` present (wsa:MessageID is created if
    missing; Action, To and RelatesTo are set when given). Exclusive c14n, one exc-c14n
    transform per Reference, SHA-256 digests. A certificate goes into a BinarySecurityToken
    referenced from KeyInfo, for information only: verifiers use pinned keys.
    """
    if envelope.tag != ENVELOPE:
        raise ValueError("not a SOAP 1.1 soap:Envelope")
    _algorithm(algorithm)
    headers = envelope.findall(HEADER)
    bodies = envelope.findall(BODY)
    if len(bodies) != 1 or len(headers) > 1:
        raise ValueError("the envelope needs one soap:Body and at most one soap:Header")
    if headers:
        header = headers[0]
    else:
        header = etree.Element(HEADER)
        envelope.insert(0, header)
    if header.find(SECURITY) is not None:
        raise ValueError("the envelope already carries a wsse:Security header")
    if message_id is not None or header.find(MESSAGE_ID) is None:
        _header_block(header, MESSAGE_ID, message_id or f"urn:uuid:{uuid.uuid4()}")
    _header_block(header, ACTION, action)
    _header_block(header, TO, to)
    _header_block(header, RELATES_TO, relates_to)

    security = etree.Element(SECURITY, nsmap={"wsse": WSSE_NS, "wsu": WSU_NS})
    security.set(MUST_UNDERSTAND, "1")
    header.insert(0, security)
    issued = now or datetime.now(UTC)
    timestamp = etree.SubElement(security, TIMESTAMP)
    timestamp.set(WSU_ID, _new_wsu_id("TS"))
    etree.SubElement(timestamp, _CREATED).text = xs_datetime(issued)
    etree.SubElement(timestamp, _EXPIRES).text = xs_datetime(issued + TIMESTAMP_LIFETIME)
    token_id = None
    if certificate is not None:
        token_id = _new_wsu_id("X509")
        token = etree.SubElement(security, BINARY_SECURITY_TOKEN, ValueType=X509V3, EncodingType=BASE64_BINARY)
        token.set(WSU_ID, token_id)
        token.text = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")

    signable = SIGNABLE_HEADERS | frozenset(extra_parts)
    parts = [bodies[0], timestamp, *(h for h in header if isinstance(h.tag, str) and h.tag in signable)]
    signature = etree.SubElement(security, _SIGNATURE, nsmap={"ds": DS_NS})
    signed_info = etree.SubElement(signature, _SIGNED_INFO)
    etree.SubElement(signed_info, _C14N_METHOD, Algorithm=EXC_C14N)
    etree.SubElement(signed_info, _SIGNATURE_METHOD, Algorithm=algorithm)
    for part in parts:
        part_id = part.get(WSU_ID)
        if not part_id:
            part_id = _new_wsu_id(etree.QName(part).localname)
            part.set(WSU_ID, part_id)
        reference = etree.SubElement(signed_info, _REFERENCE, URI="#" + part_id)
        etree.SubElement(etree.SubElement(reference, _TRANSFORMS), _TRANSFORM, Algorithm=EXC_C14N)
        etree.SubElement(reference, _DIGEST_METHOD, Algorithm=DIGEST_SHA256)
        etree.SubElement(reference, _DIGEST_VALUE).text = base64.b64encode(
            hashlib.sha256(_c14n(part, None)).digest()
        ).decode("ascii")
    value = etree.SubElement(signature, _SIGNATURE_VALUE)
    if token_id is not None:
        token_reference = etree.SubElement(etree.SubElement(signature, _KEY_INFO), _STR)
        etree.SubElement(token_reference, _WSSE_REFERENCE, URI="#" + token_id, ValueType=X509V3)
    value.text = base64.b64encode(_sign_octets(private_key, algorithm, _c14n(signed_info, None))).decode("ascii")


# -- verifying -------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedEnvelope:
    """The signed parts of an envelope, each parsed from the canonical octets that were digested.

    `headers` maps the tag of every signed header block to that block; `tokens` are the other
    children of wsse:Security (bootstrap tokens, SAML assertions): NOT covered by the message
    signature, so each must prove itself (its own seal or signature) before it is believed.
    """

    body: etree._Element
    headers: Mapping[str, etree._Element]
    created: datetime
    expires: datetime
    tokens: tuple[etree._Element, ...] = field(default=(), repr=False)

    def header(self, tag: str) -> etree._Element | None:
        return self.headers.get(tag)

    def _text(self, tag: str) -> str | None:
        block = self.headers.get(tag)
        return None if block is None else _text_of(block)

    @property
    def message_id(self) -> str:
        return self._text(MESSAGE_ID) or ""

    @property
    def action(self) -> str | None:
        return self._text(ACTION)

    @property
    def to(self) -> str | None:
        return self._text(TO)

    @property
    def relates_to(self) -> str | None:
        return self._text(RELATES_TO)


def _text_of(element: etree._Element) -> str:
    if len(element):
        raise InvalidSecurity(f"{etree.QName(element).localname} must contain text only")
    return (element.text or "").strip()


def verify_envelope(
    envelope_bytes: bytes,
    trusted_keys: Sequence[PublicKeyTypes | x509.Certificate],
    *,
    max_bytes: int,
    now: datetime | None = None,
    skew: timedelta = DEFAULT_SKEW,
    extra_parts: Collection[str] = (),
    required_parts: Collection[str] = (),
) -> VerifiedEnvelope:
    """Verify the WS-Security signature of a SOAP 1.1 envelope; return its signed parts.

    One wsse:Security header holding one ds:Signature with one SignedInfo; allow-listed
    algorithms; every Reference a same-document `#id` naming exactly one element by wsu:Id (no
    ID value twice in the message), and that element one of the envelope's own soap:Body, the
    Security header's wsu:Timestamp, or a header block of `SIGNABLE_HEADERS`/`extra_parts` that
    is a direct child of soap:Header. Body, Timestamp, MessageID, every `required_parts` and
    every signable header block present must be covered. KeyInfo is ignored; only
    `trusted_keys` (pinned from the sender's metadata) are tried.
    """
    if isinstance(trusted_keys, (str, bytes)) or not isinstance(trusted_keys, Sequence):
        raise TypeError("trusted_keys must be a sequence of public keys or certificates")
    root = parse_xml(envelope_bytes, max_bytes=max_bytes)
    header, body = _envelope_parts(root)
    security = _security_header(root, header)
    signature, timestamp, tokens = _security_parts(security)
    signed_info, signature_value = _signature_parts(signature)
    prefixes, algorithm, references = _signed_info_parts(signed_info)

    signable = SIGNABLE_HEADERS | frozenset(extra_parts)
    allowed = _signable_elements(header, body, timestamp, signable)
    by_id = _elements_by_wsu_id(root)
    targets: list[tuple[etree._Element, str, bytes, list[str] | None]] = []
    for reference in references:
        uri, digest_method, digest_value, digest_prefixes = _reference_parts(reference)
        element = by_id.get(uri[1:])
        if element is None:
            raise InvalidSecurity(f"the Reference {uri} names no element of the message")
        if not any(element is a for a in allowed):
            raise InvalidSecurity(f"the Reference {uri} names an element that may not be signed here")
        if any(element is t[0] for t in targets):
            raise InvalidSecurity("two References name the same element")
        targets.append((element, digest_method, digest_value, digest_prefixes))

    if not _verify_octets(trusted_keys, algorithm, signature_value, _c14n(signed_info, prefixes)):
        raise FailedAuthentication("signature does not verify with any key registered for the sender")

    parts: dict[str, etree._Element] = {}
    for element, digest_method, digest_value, digest_prefixes in targets:
        octets = _c14n(element, digest_prefixes)
        if not hmac.compare_digest(_DIGESTS[digest_method](octets).digest(), digest_value):
            raise FailedCheck(f"digest of the signed {etree.QName(element).localname} does not match")
        parts[element.tag] = parse_xml(octets, max_bytes=max_bytes)

    present = {h.tag for h in allowed if h.tag in signable}
    for tag in (*_ALWAYS_SIGNED, *required_parts, *present):
        if tag not in parts:
            raise InvalidSecurity(f"{etree.QName(tag).localname} must be present and signed")
    created, expires = _check_timestamp(parts.pop(TIMESTAMP), now or datetime.now(UTC), skew)
    signed_body = parts.pop(BODY)
    message_id = _text_of(parts[MESSAGE_ID])
    if not message_id or len(message_id) > MAX_MESSAGE_ID or any(c.isspace() for c in message_id):
        raise InvalidSecurity(f"wsa:MessageID must be one token of at most {MAX_MESSAGE_ID} characters")
    return VerifiedEnvelope(body=signed_body, headers=parts, created=created, expires=expires, tokens=tokens)


def _envelope_parts(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    """SOAP 1.1 §4: Envelope holds an optional Header then the Body, nothing else here."""
    if root.tag != ENVELOPE:
        raise InvalidSecurity("not a SOAP 1.1 soap:Envelope")
    children = _element_children(root, "Envelope")
    if [c.tag for c in children] != [HEADER, BODY]:
        raise InvalidSecurity("the Envelope must hold exactly one Header and then one Body")
    return children[0], children[1]


def _security_header(root: etree._Element, header: etree._Element) -> etree._Element:
    headers = [h for h in header if h.tag == SECURITY]
    if not headers:
        raise SignatureMissing("the message carries no wsse:Security header")
    if len(headers) > 1 or sum(1 for _ in root.iter(SECURITY)) != 1:
        raise InvalidSecurity("exactly one wsse:Security header is allowed")
    if headers[0].get("actor") is not None or headers[0].get(_q(SOAP11_NS, "actor")) is not None:
        raise InvalidSecurity("the wsse:Security header must be for the ultimate receiver (no actor)")
    return headers[0]


def _security_parts(
    security: etree._Element,
) -> tuple[etree._Element, etree._Element, tuple[etree._Element, ...]]:
    children = _element_children(security, "Security")
    signatures = [c for c in children if c.tag == _SIGNATURE]
    timestamps = [c for c in children if c.tag == TIMESTAMP]
    if not signatures:
        raise SignatureMissing("the wsse:Security header carries no signature")
    if len(signatures) != 1:
        raise InvalidSecurity("the wsse:Security header must carry exactly one Signature")
    if len(timestamps) != 1:
        raise InvalidSecurity("the wsse:Security header must carry exactly one wsu:Timestamp")
    tokens = tuple(c for c in children if c.tag not in (_SIGNATURE, TIMESTAMP, BINARY_SECURITY_TOKEN))
    return signatures[0], timestamps[0], tokens


def _signed_info_parts(signed_info: etree._Element) -> tuple[list[str] | None, str, list[etree._Element]]:
    """XMLDSig core §4.3: CanonicalizationMethod, SignatureMethod, then References."""
    children = _element_children(signed_info, "SignedInfo")
    tags = [c.tag for c in children]
    if tags[:2] != [_C14N_METHOD, _SIGNATURE_METHOD] or not tags[2:] or set(tags[2:]) != {_REFERENCE}:
        raise InvalidSecurity("SignedInfo is not CanonicalizationMethod, SignatureMethod, References")
    if len(tags) - 2 > MAX_REFERENCES:
        raise InvalidSecurity(f"at most {MAX_REFERENCES} References are accepted")
    prefixes = _c14n_prefixes(children[0])
    algorithm = children[1].get("Algorithm") or ""
    _algorithm(algorithm)
    if _element_children(children[1], "SignatureMethod"):  # e.g. HMACOutputLength
        raise UnsupportedAlgorithm("SignatureMethod must have no parameters")
    return prefixes, algorithm, children[2:]


def _c14n_prefixes(method: etree._Element) -> list[str] | None:
    """Exclusive c14n only, with its optional InclusiveNamespaces PrefixList (no #default)."""
    if method.get("Algorithm") != EXC_C14N:
        raise UnsupportedAlgorithm(f"canonicalization {method.get('Algorithm')!r} is not accepted; use exc-c14n")
    children = _element_children(method, "canonicalization method")
    if not children:
        return None
    if len(children) != 1 or children[0].tag != _INCLUSIVE_NAMESPACES:
        raise UnsupportedAlgorithm("unexpected parameters for exclusive c14n")
    prefixes = (children[0].get("PrefixList") or "").split()
    if any(not _NCNAME.match(p) for p in prefixes):
        # "#default" included: lxml cannot render it as exc-c14n requires, so refuse it
        raise UnsupportedAlgorithm("malformed or unsupported InclusiveNamespaces PrefixList")
    return prefixes


def _reference_parts(reference: etree._Element) -> tuple[str, str, bytes, list[str] | None]:
    """XMLDSig core §4.3.3 profiled by WSS 1.1 §8: `#id`, one exc-c14n transform, SHA-2."""
    uri = reference.get("URI") or ""
    if not uri.startswith("#") or not _NCNAME.match(uri[1:]):
        raise InvalidSecurity("every Reference must be a same-document #id")
    children = _element_children(reference, "Reference")
    if [c.tag for c in children] != [_TRANSFORMS, _DIGEST_METHOD, _DIGEST_VALUE]:
        raise InvalidSecurity("Reference must hold Transforms, DigestMethod and DigestValue")
    transforms = _element_children(children[0], "Transforms")
    if len(transforms) != 1 or transforms[0].tag != _TRANSFORM or transforms[0].get("Algorithm") != EXC_C14N:
        raise UnsupportedAlgorithm("each Reference must have exactly the exclusive c14n transform")
    prefixes = _c14n_prefixes(transforms[0])
    digest_method = children[1].get("Algorithm") or ""
    if digest_method not in _DIGESTS or _element_children(children[1], "DigestMethod"):
        raise UnsupportedAlgorithm(f"digest algorithm {digest_method!r} is not accepted; use SHA-256 or longer")
    digest_value = _base64_text(children[2], "DigestValue")
    if len(digest_value) != _DIGESTS[digest_method]().digest_size:
        raise InvalidSecurity("DigestValue has the wrong length")
    return uri, digest_method, digest_value, prefixes


def _signable_elements(
    header: etree._Element, body: etree._Element, timestamp: etree._Element, signable: frozenset[str]
) -> list[etree._Element]:
    blocks = [h for h in header if isinstance(h.tag, str) and h.tag in signable]
    tags = [b.tag for b in blocks]
    if len(tags) != len(set(tags)):
        raise InvalidSecurity("a signable header block appears more than once")
    return [body, timestamp, *blocks]


_ID_FINDER: Final = etree.XPath(
    "//@wsu:Id | //@ID | //@Id | //@id | //@xml:id", namespaces={"wsu": WSU_NS}
)


def _elements_by_wsu_id(root: etree._Element) -> dict[str, etree._Element]:
    """wsu:Id -> element, refusing any ID value (of any ID-like attribute) seen twice."""
    seen: set[str] = set()
    by_id: dict[str, etree._Element] = {}
    for attribute in _ID_FINDER(root):
        value = str(attribute)
        if value in seen:
            raise InvalidSecurity("duplicate ID in the message")
        seen.add(value)
        if attribute.attrname == WSU_ID:
            by_id[value] = attribute.getparent()
    return by_id


def _time(text: str, what: str) -> datetime:
    if not _UTC_TIME.match(text):
        raise InvalidSecurity(f"{what} must be an xs:dateTime in UTC (…Z)")
    try:
        return read_xs_datetime(text).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidSecurity(f"{what} is not a valid time") from None


def _check_timestamp(timestamp: etree._Element, now: datetime, skew: timedelta) -> tuple[datetime, datetime]:
    """WSS 1.1 §10: Created, then Expires; fresh within `skew`, living at most five minutes."""
    children = _element_children(timestamp, "Timestamp")
    if [c.tag for c in children] != [_CREATED, _EXPIRES]:
        raise InvalidSecurity("wsu:Timestamp must hold Created then Expires")
    created = _time(_text_of(children[0]), "Created")
    expires = _time(_text_of(children[1]), "Expires")
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    if expires <= created or expires - created > TIMESTAMP_LIFETIME:
        raise InvalidSecurity("wsu:Timestamp must expire after Created and within five minutes of it")
    if created > now + skew:
        raise MessageExpired("the message was created in the future")
    if expires <= now - skew:
        raise MessageExpired("the message has expired")
    return created, expires
