"""The electronic envelope (電子封筒, seed 001 §5.1): one model for every life event, and its two
equivalent forms, XML (relay/schema/envelope.xsd, SOAP binding in envelope.wsdl) and JSON
(OpenAPI at /api/relay/openapi.json). Both carry exactly the same information, so an envelope
converts XML → model → JSON → model → XML unchanged.

Signatures at two levels: each attachment may carry its issuing department's signature
(職責署名: an enveloped XML-DSig on the Attachment, or a JWS over its digest), the whole
envelope is signed by whoever sends it (the counter to the hub, the hub to a receiver). This
module is pure (lxml, cryptography, joserfc): the hub and the agencies' receiver share it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from lxml import etree

from kernel.xml import (
    DS_NS,
    SignatureInvalid,
    SignatureMissing,
    XMLSecurityError,
    new_id,
    parse_xml,
    read_xs_datetime,
    sign_enveloped,
    verify_signed,
    xs_datetime,
)

ENV_NS = "urn:renkei:envelope:1.0"
VERSION = "1.0"
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024  # a few certificates of a life event, in base64
JWS_ALGORITHMS = ("RS256", "PS256", "ES256")

# the attributes routing reads (メッセージ属性); others travel untouched
PROCESS_TYPE = "ProcessType"  # ビジネスプロセス種別
MESSAGE_TYPE = "MessageType"  # メッセージ種別
SOURCE_MUNICIPALITY = "SourceMunicipality"  # 転出元自治体
DESTINATION_MUNICIPALITY = "DestinationMunicipality"  # 転入先自治体
PERSON = "Person"  # the person, as the pseudonym of whoever receives this envelope
ASSURANCE_LEVEL = "AssuranceLevel"  # 認証レベル
REQUIRED_ATTRIBUTES = (PROCESS_TYPE, MESSAGE_TYPE, PERSON)

# limits, as the hub's tables enforce them (PostgreSQL refuses longer; SQLite would not)
RECEIPT_MAX = 64
PARTY_MAX = 1024
LOGICAL_MAX = 256
NAME_MAX = 128
VALUE_MAX = 1024
FILE_NAME_MAX = 255
MEDIA_TYPE_MAX = 127
MAX_ATTRIBUTES = 64
MAX_ATTACHMENTS = 64
REMARK_MAX = 512
_RECEIPT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,127}")
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,127}")  # an xs:ID (NCName), as new_id makes them
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class EnvelopeInvalid(ValueError):
    """The envelope breaks the schema or a limit; the message names the field."""


class EnvelopeSignatureInvalid(EnvelopeInvalid):
    """The envelope's or an attachment's signature is missing or does not verify with a trusted key."""


def _e(name: str) -> str:
    return f"{{{ENV_NS}}}{name}"


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepartmentSignature:
    """An issuing department's signature on one attachment (職責署名).

    `format` "xmldsig": `value` is the ds:Signature element (bytes) enveloped in the Attachment;
    `format` "jws": `value` is a compact JWS over the attachment's digest (see `attachment_digest`).
    """

    format: str
    department: str
    value: bytes


@dataclass(frozen=True)
class Attachment:
    """One document (添付書類): name (what it is, read by routing), file name, media type, content."""

    id: str
    name: str
    file_name: str
    media_type: str
    content: bytes = field(repr=False)
    signature: DepartmentSignature | None = None


@dataclass(frozen=True)
class Header:
    """The common header: receipt number (受付番号), sender, logical To / ReplyTo, timestamps."""

    receipt_number: str
    sender: str
    to: str
    reply_to: str
    created: datetime
    sent: datetime | None = None
    decision_id: str | None = None  # set by the hub on what it forwards: the logged decision


@dataclass(frozen=True)
class Envelope:
    """The electronic envelope (電子封筒): header, message attributes (名/値), attachments."""

    header: Header
    attributes: tuple[tuple[str, str], ...]
    attachments: tuple[Attachment, ...] = ()
    id: str = field(default_factory=new_id)

    def attribute(self, name: str) -> str | None:
        """The first value of a message attribute, or None."""
        return next((v for n, v in self.attributes if n == name), None)

    def with_attribute(self, name: str, value: str) -> Envelope:
        """A copy with every value of `name` replaced by one `value` (in the first one's place)."""
        out, done = [], False
        for n, v in self.attributes:
            if n != name:
                out.append((n, v))
            elif not done:
                out.append((n, value))
                done = True
        if not done:
            out.append((name, value))
        return replace(self, attributes=tuple(out))

    @property
    def process_type(self) -> str:
        return self.attribute(PROCESS_TYPE) or ""

    @property
    def message_type(self) -> str:
        return self.attribute(MESSAGE_TYPE) or ""

    @property
    def person(self) -> str:
        return self.attribute(PERSON) or ""


def new_envelope(*, receipt_number: str, sender: str, to: str, reply_to: str,
                 attributes: Sequence[tuple[str, str]], attachments: Sequence[Attachment] = (),
                 created: datetime | None = None) -> Envelope:
    """A new envelope, checked against the schema's limits."""
    env = Envelope(Header(receipt_number, sender, to, reply_to, _second(created or datetime.now(UTC))),
                   tuple(attributes), tuple(attachments))
    check(env)
    return env


def new_attachment(*, name: str, file_name: str, media_type: str, content: bytes) -> Attachment:
    return Attachment(id=new_id(), name=name, file_name=file_name, media_type=media_type, content=content)


def _second(at: datetime) -> datetime:
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return at.replace(microsecond=0)


def _text(value: object, what: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise EnvelopeInvalid(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise EnvelopeInvalid(f"{what} is longer than {limit} characters")
    if _CONTROL.search(value) or value != value.strip():
        raise EnvelopeInvalid(f"{what} has control characters or surrounding spaces")
    return value


def check(env: Envelope) -> None:
    """Refuse anything the schema or the hub's tables would not hold."""
    h = env.header
    if not isinstance(h.receipt_number, str) or not _RECEIPT.fullmatch(h.receipt_number):
        raise EnvelopeInvalid("ReceiptNumber must be 1-64 letters, digits or . _ : -")
    _text(h.sender, "From", PARTY_MAX)
    _text(h.to, "To", LOGICAL_MAX)
    _text(h.reply_to, "ReplyTo", LOGICAL_MAX)
    if h.decision_id is not None:
        _text(h.decision_id, "DecisionId", 64)
    if not 0 < len(env.attributes) <= MAX_ATTRIBUTES:
        raise EnvelopeInvalid(f"an envelope carries 1-{MAX_ATTRIBUTES} message attributes")
    for name, value in env.attributes:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise EnvelopeInvalid(f"attribute name {str(name)[:40]!r} is not a name (a letter, then letters, "
                                  "digits or . _ -; at most 128)")
        _text(value, f"attribute {name}", VALUE_MAX)
    for name in REQUIRED_ATTRIBUTES:
        if sum(1 for n, _ in env.attributes if n == name) != 1:
            raise EnvelopeInvalid(f"the envelope must carry exactly one {name} attribute")
    for name in (PROCESS_TYPE, MESSAGE_TYPE):  # route keys: names, as the route table holds them
        if not _NAME.fullmatch(env.attribute(name) or ""):
            raise EnvelopeInvalid(f"{name} must be a name (a letter, then letters, digits or . _ -; at most 128)")
    if len(env.attachments) > MAX_ATTACHMENTS:
        raise EnvelopeInvalid(f"an envelope carries at most {MAX_ATTACHMENTS} attachments")
    if not isinstance(env.id, str) or not _ID.fullmatch(env.id):
        raise EnvelopeInvalid("the envelope ID must be an xs:ID")
    ids = {env.id}
    for a in env.attachments:
        if not _NAME.fullmatch(a.name or ""):
            raise EnvelopeInvalid(f"attachment name {str(a.name)[:40]!r} is not a name")
        _text(a.file_name, f"attachment {a.name} file name", FILE_NAME_MAX)
        if not isinstance(a.media_type, str) or len(a.media_type) > MEDIA_TYPE_MAX \
                or not _MEDIA_TYPE.fullmatch(a.media_type):
            raise EnvelopeInvalid(f"attachment {a.name} media type is not type/subtype")
        if not isinstance(a.content, bytes):
            raise EnvelopeInvalid(f"attachment {a.name} content must be bytes")
        if not isinstance(a.id, str) or not _ID.fullmatch(a.id) or a.id in ids:
            raise EnvelopeInvalid("attachment IDs must be unique names")
        ids.add(a.id)
        if a.signature is not None:
            if a.signature.format not in ("xmldsig", "jws"):
                raise EnvelopeInvalid(f"attachment {a.name} signature format must be xmldsig or jws")
            _text(a.signature.department, f"attachment {a.name} signing department", PARTY_MAX)


# --- XML form ---------------------------------------------------------------------------------


def _attachment_element(a: Attachment) -> etree._Element:
    el = etree.Element(_e("Attachment"), {"ID": a.id, "Name": a.name, "FileName": a.file_name,
                                          "MediaType": a.media_type}, nsmap={"env": ENV_NS})
    etree.SubElement(el, _e("Content")).text = base64.b64encode(a.content).decode("ascii")
    sig = a.signature
    if sig is not None:
        el.set("SignedBy", sig.department)
        if sig.format == "xmldsig":
            el.insert(0, parse_xml(sig.value))
        else:
            etree.SubElement(el, _e("DepartmentJWS")).text = sig.value.decode("ascii")
    return el


def to_element(env: Envelope) -> etree._Element:
    """The envelope as an (unsigned) env:Envelope element."""
    check(env)
    root = etree.Element(_e("Envelope"), {"ID": env.id, "Version": VERSION}, nsmap={"env": ENV_NS})
    h = env.header
    header = etree.SubElement(root, _e("Header"))
    for tag, value in (("ReceiptNumber", h.receipt_number), ("From", h.sender), ("To", h.to),
                       ("ReplyTo", h.reply_to), ("Created", xs_datetime(h.created)),
                       ("Sent", xs_datetime(h.sent) if h.sent else None), ("DecisionId", h.decision_id)):
        if value is not None:
            etree.SubElement(header, _e(tag)).text = value
    attributes = etree.SubElement(root, _e("Attributes"))
    for name, value in env.attributes:
        etree.SubElement(attributes, _e("Attribute"), Name=name).text = value
    if env.attachments:
        attachments = etree.SubElement(root, _e("Attachments"))
        for a in env.attachments:
            attachments.append(_attachment_element(a))
    return root


def to_xml(env: Envelope) -> bytes:
    return etree.tostring(to_element(env))


def sign_element(env: Envelope, private_key, *, certificate=None) -> etree._Element:
    """The envelope as an env:Envelope element signed (enveloped XML-DSig) with `private_key`."""
    root = to_element(env)
    sign_enveloped(root, private_key, certificate=certificate)
    return root


def sign_xml(env: Envelope, private_key, *, certificate=None) -> bytes:
    """The envelope as XML, signed (enveloped XML-DSig) by the sender's key."""
    return etree.tostring(sign_element(env, private_key, certificate=certificate))


def sign_attachment_xml(attachment: Attachment, private_key, *, department: str) -> Attachment:
    """The attachment with its department's enveloped XML-DSig (職責署名)."""
    unsigned = replace(attachment, signature=None)
    el = _attachment_element(unsigned)
    el.set("SignedBy", department)
    sign_enveloped(el, private_key)
    signature = el.find(f"{{{DS_NS}}}Signature")
    return replace(attachment, signature=DepartmentSignature("xmldsig", department, etree.tostring(signature)))


def _child_text(parent: etree._Element, tag: str, *, required: bool = True) -> str | None:
    found = parent.findall(_e(tag))
    if len(found) > 1:
        raise EnvelopeInvalid(f"more than one {tag}")
    if not found:
        if required:
            raise EnvelopeInvalid(f"{tag} is missing")
        return None
    if len(found[0]):
        raise EnvelopeInvalid(f"{tag} must hold text only")
    return found[0].text or ""


def _time(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        return read_xs_datetime(text).replace(tzinfo=UTC)
    except (ValueError, TypeError, XMLSecurityError):
        raise EnvelopeInvalid(f"{what} is not an xs:dateTime in UTC") from None


def _b64(text: str | None, what: str) -> bytes:
    """Canonical base64 only (no line breaks or spaces: validate=True refuses any character
    outside the alphabet), so that the same content always serializes the same way."""
    text = text or ""
    try:
        if len(text) % 4:
            raise ValueError("length")
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeInvalid(f"{what} is not canonical base64 (no line breaks or spaces)") from None


def from_element(root: etree._Element) -> Envelope:
    """Read an env:Envelope element (already parsed hardened, and verified if signed)."""
    if root.tag != _e("Envelope") or root.get("Version") != VERSION:
        raise EnvelopeInvalid(f"not an env:Envelope version {VERSION} in namespace {ENV_NS}")
    order = [etree.QName(c).localname if etree.QName(c).namespace == ENV_NS else "?" for c in root
             if c.tag is not etree.Comment and etree.QName(c).namespace != DS_NS]
    if order not in (["Header", "Attributes"], ["Header", "Attributes", "Attachments"]):
        raise EnvelopeInvalid("an envelope holds Header, Attributes and optionally Attachments, in order")
    header = root.find(_e("Header"))
    h = Header(
        receipt_number=_child_text(header, "ReceiptNumber"), sender=_child_text(header, "From"),
        to=_child_text(header, "To"), reply_to=_child_text(header, "ReplyTo"),
        created=_time(_child_text(header, "Created"), "Created"),
        sent=_time(_child_text(header, "Sent", required=False), "Sent"),
        decision_id=_child_text(header, "DecisionId", required=False),
    )
    attributes = []
    for el in root.find(_e("Attributes")):
        if el.tag != _e("Attribute") or len(el):
            raise EnvelopeInvalid("Attributes holds Attribute elements of text only")
        attributes.append((el.get("Name") or "", el.text or ""))
    attachments = []
    holder = root.find(_e("Attachments"))
    for el in holder if holder is not None else ():
        if el.tag != _e("Attachment"):
            raise EnvelopeInvalid("Attachments holds Attachment elements only")
        attachments.append(_attachment_from(el))
    env = Envelope(h, tuple(attributes), tuple(attachments), id=root.get("ID") or "")
    check(env)
    return env


def _attachment_from(el: etree._Element) -> Attachment:
    signature = None
    dsig = el.findall(f"{{{DS_NS}}}Signature")
    jws_text = _child_text(el, "DepartmentJWS", required=False)
    department = el.get("SignedBy")
    if len(dsig) > 1 or (dsig and jws_text is not None):
        raise EnvelopeInvalid("an attachment carries at most one department signature")
    if (dsig or jws_text is not None) and not department:
        raise EnvelopeInvalid("a signed attachment names its department (SignedBy)")
    if dsig:
        signature = DepartmentSignature("xmldsig", department, etree.tostring(dsig[0]))
    elif jws_text is not None:
        signature = DepartmentSignature("jws", department, jws_text.encode("ascii", "replace"))
    elif department:
        raise EnvelopeInvalid("SignedBy without a department signature")
    return Attachment(
        id=el.get("ID") or "", name=el.get("Name") or "", file_name=el.get("FileName") or "",
        media_type=el.get("MediaType") or "", content=_b64(_child_text(el, "Content"), "Content"),
        signature=signature,
    )


def read_xml(data: bytes, *, trusted_keys: Sequence | None, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse (hardened: no DTD, entities or network; size-limited) and, with `trusted_keys`,
    verify the envelope's enveloped signature against those keys alone; the model is read
    only from what the signature covers. `trusted_keys=None` reads an unsigned envelope."""
    try:
        root = parse_xml(data, max_bytes=max_bytes)
        if root.tag == f"{{{SOAP11_NS}}}Envelope":
            root = soap_payload(root)
        if trusted_keys is not None:
            root = verify_signed(root, list(trusted_keys))
    except (SignatureMissing, SignatureInvalid) as exc:
        raise EnvelopeSignatureInvalid(str(exc)) from None
    except XMLSecurityError as exc:
        raise EnvelopeInvalid(str(exc)) from None
    return from_element(root)


# --- SOAP binding (envelope.wsdl) ---------------------------------------------------------------


def soap_payload(root: etree._Element) -> etree._Element:
    """The single element in a SOAP 1.1 Body."""
    body = root.findall(f"{{{SOAP11_NS}}}Body")
    if len(body) != 1:
        raise EnvelopeInvalid("a SOAP envelope has one Body")
    children = [c for c in body[0] if isinstance(c.tag, str)]
    if len(children) != 1:
        raise EnvelopeInvalid("the SOAP Body carries exactly one element")
    return children[0]


def soap_wrap(payload: bytes | etree._Element) -> bytes:
    """`payload` (an element or its XML) as the Body of a SOAP 1.1 envelope."""
    soap = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soap": SOAP11_NS})
    body = etree.SubElement(soap, f"{{{SOAP11_NS}}}Body")
    body.append(parse_xml(payload, max_bytes=MAX_ENVELOPE_BYTES) if isinstance(payload, bytes) else payload)
    return etree.tostring(soap, xml_declaration=True, encoding="UTF-8")


# --- JSON form --------------------------------------------------------------------------------


def to_json(env: Envelope) -> dict[str, Any]:
    """The JSON form (schema `Envelope` in the relay OpenAPI document)."""
    check(env)
    h = env.header
    header: dict[str, Any] = {"receipt_number": h.receipt_number, "from": h.sender, "to": h.to,
                              "reply_to": h.reply_to, "created": xs_datetime(h.created)}
    if h.sent:
        header["sent"] = xs_datetime(h.sent)
    if h.decision_id:
        header["decision_id"] = h.decision_id
    out: dict[str, Any] = {"id": env.id, "version": VERSION, "header": header,
                           "attributes": [{"name": n, "value": v} for n, v in env.attributes],
                           "attachments": []}
    for a in env.attachments:
        item: dict[str, Any] = {"id": a.id, "name": a.name, "file_name": a.file_name,
                                "media_type": a.media_type, "content": base64.b64encode(a.content).decode()}
        if a.signature:
            value = a.signature.value
            item["signature"] = {"format": a.signature.format, "department": a.signature.department,
                                 "value": value.decode("ascii") if a.signature.format == "jws"
                                 else base64.b64encode(value).decode()}
        out["attachments"].append(item)
    return out


def _field(obj: Mapping, key: str, what: str, *, required: bool = True) -> Any:
    if not isinstance(obj, Mapping):
        raise EnvelopeInvalid(f"{what} must be an object")
    if key not in obj:
        if required:
            raise EnvelopeInvalid(f"{what}.{key} is missing")
        return None
    return obj[key]


def from_json(data: Mapping[str, Any]) -> Envelope:
    """Read the JSON form; refuses unknown fields, so nothing travels unseen."""
    if not isinstance(data, Mapping) or set(data) - {"id", "version", "header", "attributes", "attachments"}:
        raise EnvelopeInvalid("an envelope object has id, version, header, attributes, attachments")
    if data.get("version") != VERSION:
        raise EnvelopeInvalid(f"version must be {VERSION}")
    hd = _field(data, "header", "envelope")
    if not isinstance(hd, Mapping) or set(hd) - {"receipt_number", "from", "to", "reply_to", "created", "sent",
                                                  "decision_id"}:
        raise EnvelopeInvalid("header has receipt_number, from, to, reply_to, created, sent, decision_id")
    h = Header(
        receipt_number=_field(hd, "receipt_number", "header"), sender=_field(hd, "from", "header"),
        to=_field(hd, "to", "header"), reply_to=_field(hd, "reply_to", "header"),
        created=_time(_str(_field(hd, "created", "header"), "header.created"), "header.created"),
        sent=_time(_str(hd.get("sent"), "header.sent"), "header.sent") if hd.get("sent") is not None else None,
        decision_id=hd.get("decision_id"),
    )
    attrs = _field(data, "attributes", "envelope")
    if not isinstance(attrs, list):
        raise EnvelopeInvalid("attributes must be a list")
    attributes = []
    for item in attrs[:MAX_ATTRIBUTES + 1]:
        if not isinstance(item, Mapping) or set(item) != {"name", "value"}:
            raise EnvelopeInvalid("each attribute is {name, value}")
        attributes.append((item["name"], item["value"]))
    items = data.get("attachments") or []
    if not isinstance(items, list):
        raise EnvelopeInvalid("attachments must be a list")
    attachments = []
    for item in items[:MAX_ATTACHMENTS + 1]:
        if not isinstance(item, Mapping) or set(item) - {"id", "name", "file_name", "media_type", "content",
                                                          "signature"}:
            raise EnvelopeInvalid("an attachment has id, name, file_name, media_type, content, signature")
        signature = None
        if item.get("signature") is not None:
            s = item["signature"]
            if not isinstance(s, Mapping) or set(s) != {"format", "department", "value"}:
                raise EnvelopeInvalid("an attachment signature is {format, department, value}")
            value = _str(s["value"], "attachment signature value")
            raw = value.encode("ascii", "replace") if s["format"] == "jws" else _b64(value, "signature value")
            if s["format"] == "xmldsig":
                try:
                    sig_el = parse_xml(raw, max_bytes=64 * 1024)
                except XMLSecurityError as exc:
                    raise EnvelopeInvalid(f"attachment signature: {exc}") from None
                if sig_el.tag != f"{{{DS_NS}}}Signature":
                    raise EnvelopeInvalid("an xmldsig attachment signature is a ds:Signature element")
            signature = DepartmentSignature(s["format"], s["department"], raw)
        attachments.append(Attachment(
            id=_str(_field(item, "id", "attachment"), "attachment id"),
            name=_field(item, "name", "attachment"), file_name=_field(item, "file_name", "attachment"),
            media_type=_field(item, "media_type", "attachment"),
            content=_b64(_str(_field(item, "content", "attachment"), "attachment content"), "attachment content"),
            signature=signature,
        ))
    env = Envelope(h, tuple(attributes), tuple(attachments), id=_str(_field(data, "id", "envelope"), "id"))
    check(env)
    return env


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise EnvelopeInvalid(f"{what} must be a string")
    return value


def _jose_key(key):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return RSAKey(key, key)
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return ECKey(key, key)
    if hasattr(key, "public_key") and hasattr(key, "public_bytes"):  # an x509 certificate
        return _jose_key(key.public_key())
    raise TypeError(f"not a signing key: {type(key).__name__}")


def _alg(key) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"


def _registry(algorithms: Sequence[str] = JWS_ALGORITHMS) -> jws.JWSRegistry:
    """joserfc's registry with room for an envelope: its default payload cap (128 kB) is for
    tokens, while an envelope carries documents (MAX_ENVELOPE_BYTES, in base64 inside JSON)."""
    registry = jws.JWSRegistry(algorithms=list(algorithms))
    registry.max_payload_length = 2 * MAX_ENVELOPE_BYTES
    return registry


def sign_json(env: Envelope, private_key) -> str:
    """The envelope's JSON form as a compact JWS (RFC 7515 §7.1) signed by the sender."""
    payload = json.dumps(to_json(env), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    alg = _alg(private_key)
    return jws.serialize_compact({"alg": alg, "typ": "renkei-envelope+json"}, payload.encode(),
                                 _jose_key(private_key), registry=_registry([alg]))


def read_jws(token: str, *, trusted_keys: Sequence, max_chars: int = 2 * MAX_ENVELOPE_BYTES) -> Envelope:
    """Verify a compact JWS against `trusted_keys` alone (headers carrying keys refused) and read
    the envelope from its payload."""
    claims = _verified_jws_payload(token, trusted_keys, max_chars=max_chars, what="envelope")
    return from_json(claims)


_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_REFUSED_HEADERS = frozenset({"crit", "b64", "jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"})


def _verified_jws_payload(token: object, trusted_keys: Sequence, *, max_chars: int, what: str) -> dict:
    if not isinstance(token, str) or len(token) > max_chars or not _COMPACT.fullmatch(token):
        raise EnvelopeInvalid(f"the {what} is not a compact JWS within the size limit")
    registry = _registry()
    try:
        signed = jws.extract_compact(token.encode("ascii"), registry=registry)
        header = signed.headers()
        if header.get("alg") not in JWS_ALGORITHMS or _REFUSED_HEADERS & header.keys():
            raise EnvelopeSignatureInvalid(f"the {what} JWS header is refused (alg {header.get('alg')!r})")
    except EnvelopeInvalid:
        raise
    except (JoseError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise EnvelopeInvalid(f"the {what} is not a readable JWS") from None
    ok = False
    for key in trusted_keys:
        try:
            ok = jws.validate_compact(signed, _jose_key(key), registry=registry)
        except (JoseError, ValueError, TypeError):
            ok = False
        if ok:
            break
    if not ok:
        raise EnvelopeSignatureInvalid(f"the {what} signature does not verify with any trusted key")
    try:
        payload = json.loads(signed.payload)
    except (ValueError, RecursionError):
        raise EnvelopeInvalid(f"the {what} JWS payload is not JSON") from None
    if not isinstance(payload, dict):
        raise EnvelopeInvalid(f"the {what} JWS payload is not an object")
    return payload


def attachment_digest(a: Attachment) -> dict[str, str]:
    """What a JWS department signature covers: the attachment's identity and content digest."""
    return {"id": a.id, "name": a.name, "file_name": a.file_name, "media_type": a.media_type,
            "sha256": base64.urlsafe_b64encode(hashlib.sha256(a.content).digest()).rstrip(b"=").decode()}


def sign_attachment_jws(attachment: Attachment, private_key, *, department: str) -> Attachment:
    """The attachment with its department's JWS over `attachment_digest` (職責署名)."""
    claims = dict(attachment_digest(attachment), department=department)
    payload = json.dumps(claims, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    alg = _alg(private_key)
    token = jws.serialize_compact({"alg": alg, "typ": "renkei-attachment+json"}, payload,
                                  _jose_key(private_key), algorithms=[alg])
    return replace(attachment, signature=DepartmentSignature("jws", department, token.encode("ascii")))


def verify_attachment(attachment: Attachment, trusted_keys: Sequence) -> None:
    """Check a department signature against that department's keys alone; raises
    EnvelopeSignatureInvalid when it is missing or does not cover this very attachment."""
    sig = attachment.signature
    if sig is None:
        raise EnvelopeSignatureInvalid(f"attachment {attachment.name} carries no department signature")
    if sig.format == "jws":
        claims = _verified_jws_payload(sig.value.decode("ascii", "replace"), trusted_keys, max_chars=16 * 1024,
                                       what=f"attachment {attachment.name} signature")
        expected = dict(attachment_digest(attachment), department=sig.department)
        if set(claims) != set(expected) or not all(hmac.compare_digest(str(claims[k]), expected[k])
                                                   for k in expected):
            raise EnvelopeSignatureInvalid(f"attachment {attachment.name}: the signature covers other content")
        return
    el = _attachment_element(attachment)
    try:
        verify_signed(el, list(trusted_keys))
    except XMLSecurityError as exc:
        raise EnvelopeSignatureInvalid(f"attachment {attachment.name}: {exc}") from None


# --- receipt acknowledgement (受領Ack) ------------------------------------------------------------

RECEIVED, DUPLICATE, REJECTED = "received", "duplicate", "rejected"
ACK_STATUSES = (RECEIVED, DUPLICATE, REJECTED)


@dataclass(frozen=True)
class Ack:
    """受領Ack: the receiver's (or the hub's) word on one envelope: status, time, remark."""

    receipt_number: str
    status: str
    time: datetime
    remark: str = ""

    def to_json(self) -> dict[str, str]:
        return {"receipt_number": self.receipt_number, "status": self.status, "time": xs_datetime(self.time),
                "remark": self.remark}

    def to_element(self) -> etree._Element:
        el = etree.Element(_e("Ack"), nsmap={"env": ENV_NS})
        etree.SubElement(el, _e("ReceiptNumber")).text = self.receipt_number
        etree.SubElement(el, _e("Status")).text = self.status
        etree.SubElement(el, _e("Time")).text = xs_datetime(self.time)
        etree.SubElement(el, _e("Remark")).text = self.remark
        return el


def ack_from_json(data: object) -> Ack:
    if not isinstance(data, Mapping) or data.get("status") not in ACK_STATUSES:
        raise EnvelopeInvalid("an ack is {receipt_number, status (received|duplicate|rejected), time, remark}")
    return Ack(_str(data.get("receipt_number"), "ack receipt_number")[:RECEIPT_MAX], data["status"],
               _time(_str(data.get("time"), "ack time"), "ack time"),
               str(data.get("remark") or "")[:REMARK_MAX])


def ack_from_xml(data: bytes) -> Ack:
    try:
        root = parse_xml(data, max_bytes=64 * 1024)
    except XMLSecurityError as exc:
        raise EnvelopeInvalid(f"ack: {exc}") from None
    if root.tag == f"{{{SOAP11_NS}}}Envelope":
        root = soap_payload(root)
    if root.tag != _e("Ack"):
        raise EnvelopeInvalid("not an env:Ack")
    status = _child_text(root, "Status")
    if status not in ACK_STATUSES:
        raise EnvelopeInvalid("ack status must be received, duplicate or rejected")
    return Ack(_child_text(root, "ReceiptNumber")[:RECEIPT_MAX], status,
               _time(_child_text(root, "Time"), "ack Time"),
               (_child_text(root, "Remark", required=False) or "")[:REMARK_MAX])
