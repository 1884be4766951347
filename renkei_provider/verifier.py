"""Accepting a hub-issued provider token (docs/discovery.md, "The provider token").

The order of the checks is part of the contract:

1. parse with the hardened parser (no DTDs, entities, PIs; size limit);
2. verify the assertion's own enveloped signature against the signing keys pinned from the
   discovery service keys in the hub metadata, and from then on read only the element the signature covers;
3. Issuer, Audience, Recipient, time window, OneTimeUse;
4. only then decrypt the subject (EncryptedID) and the local-ID EncryptedAttribute, with this
   provider's keys: a forged token never reaches the decryption code (SECURITY.md, last row);
5. finally record the assertion ID in the replay cache, so a token refused for any other
   reason does not use up its one presentation.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from kernel.xml import (
    SAML_NS,
    InMemoryReplayCache,
    ReplayCache,
    XMLSecurityError,
    decrypt_element,
    parse_xml,
    read_xs_datetime,
    verify_signed,
)
from renkei_provider.errors import (
    TokenAudienceMismatch,
    TokenExpired,
    TokenIssuerMismatch,
    TokenMalformed,
    TokenNotForThisEndpoint,
    TokenReplayed,
    TokenSignatureInvalid,
    TokenUndecryptable,
)

MD_NS = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_ENTITY = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
ATTRNAME_URI = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
DISCO_NS = "urn:liberty:disco:2006-08"
RENKEI_MD_NS = "urn:renkei:metadata"
DISCOVERY_DESCRIPTOR_TYPE = "DiscoveryServiceDescriptorType"

ATTR_REQUESTER = "urn:renkei:attr:requester"
ATTR_TASK = "urn:renkei:attr:task"
ATTR_INFO_TYPE = "urn:renkei:attr:info-type"
ATTR_WHITELIST_ENTRY = "urn:renkei:attr:whitelist-entry"
ATTR_DECISION_ID = "urn:renkei:attr:decision-id"
ATTR_SERVICE_TYPE = "urn:renkei:attr:service-type"
ATTR_LOCAL_ID = "urn:renkei:attr:local-id"

MAX_TOKEN_BYTES = 128 * 1024  # a real token is a few kilobytes
MAX_METADATA_BYTES = 1024 * 1024
MAX_ENCRYPTED_ATTRIBUTES = 4

_ASSERTION = f"{{{SAML_NS}}}Assertion"
_ISSUER = f"{{{SAML_NS}}}Issuer"
_SUBJECT = f"{{{SAML_NS}}}Subject"
_NAME_ID = f"{{{SAML_NS}}}NameID"
_BASE_ID = f"{{{SAML_NS}}}BaseID"
_ENCRYPTED_ID = f"{{{SAML_NS}}}EncryptedID"
_CONFIRMATION = f"{{{SAML_NS}}}SubjectConfirmation"
_CONFIRMATION_DATA = f"{{{SAML_NS}}}SubjectConfirmationData"
_CONDITIONS = f"{{{SAML_NS}}}Conditions"
_AUDIENCE_RESTRICTION = f"{{{SAML_NS}}}AudienceRestriction"
_AUDIENCE = f"{{{SAML_NS}}}Audience"
_ONE_TIME_USE = f"{{{SAML_NS}}}OneTimeUse"
_ATTRIBUTE_STATEMENT = f"{{{SAML_NS}}}AttributeStatement"
_ATTRIBUTE = f"{{{SAML_NS}}}Attribute"
_ATTRIBUTE_VALUE = f"{{{SAML_NS}}}AttributeValue"
_ENCRYPTED_ATTRIBUTE = f"{{{SAML_NS}}}EncryptedAttribute"
_UTF8_BOM = b"\xef\xbb\xbf"


class HubMetadataError(ValueError):
    """The hub metadata given to `TokenVerifier` does not describe a usable hub IdP."""


@dataclass(frozen=True)
class AcceptedToken:
    """What a verified provider token says; read from the signed assertion only.

    `provider_pseudonym` (this provider's own pairwise pseudonym for the person) and `local_id`
    (this provider's own record ID, if it linked one) were encrypted for this provider alone.
    Times are timezone-aware UTC.
    """

    provider_pseudonym: str = field(repr=False)
    requester: str
    task: str
    info_types: tuple[str, ...]
    service_type: str
    decision_id: str
    whitelist_entry: str
    local_id: str | None = field(repr=False)
    not_on_or_after: datetime
    assertion_id: str


def hub_signing_certificates(
    metadata_xml: bytes | str, *, role: str = "idp"
) -> tuple[str, tuple[x509.Certificate, ...]]:
    """(entityID, signing certificates) of one of the hub's roles, read from its metadata.

    role="idp" reads the one md:EntityDescriptor's IDPSSODescriptor (the keys that sign SSO
    responses); role="discovery" reads its discovery service RoleDescriptor (the keys that sign
    provider tokens and the discovery service's SOAP answers). Every KeyDescriptor with
    use="signing" or without `use` counts (metadata §2.4.1.1), so a rotation's two keys do.
    """
    try:
        root = parse_xml(metadata_xml, max_bytes=MAX_METADATA_BYTES)
    except XMLSecurityError as exc:
        raise HubMetadataError(f"the hub metadata is not acceptable XML: {exc}") from None
    if root.tag != f"{{{MD_NS}}}EntityDescriptor":
        raise HubMetadataError("the hub metadata must be one md:EntityDescriptor")
    entity_id = (root.get("entityID") or "").strip()
    if not entity_id:
        raise HubMetadataError("the hub metadata has no entityID")
    if role == "idp":
        idps = root.findall(f"{{{MD_NS}}}IDPSSODescriptor")
        if len(idps) != 1:
            raise HubMetadataError(f"expected one IDPSSODescriptor, found {len(idps)}")
        if PROTOCOL not in (idps[0].get("protocolSupportEnumeration") or "").split():
            raise HubMetadataError("the IDPSSODescriptor does not support SAML 2.0")
        descriptor_element = idps[0]
    elif role == "discovery":
        found = [r for r in root.findall(f"{{{MD_NS}}}RoleDescriptor") if _is_discovery_descriptor(r)]
        if len(found) != 1:
            raise HubMetadataError(f"expected one discovery service RoleDescriptor, found {len(found)}")
        descriptor_element = found[0]
    else:
        raise ValueError(f"unknown hub role {role!r} (idp or discovery)")
    certificates: list[x509.Certificate] = []
    for descriptor in descriptor_element.findall(f"{{{MD_NS}}}KeyDescriptor"):
        if descriptor.get("use") not in (None, "signing"):
            continue
        for element in descriptor.iterfind(f"{{{DS_NS}}}KeyInfo/{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate"):
            try:
                der = base64.b64decode("".join((element.text or "").split()), validate=True)
                certificates.append(x509.load_der_x509_certificate(der))
            except ValueError:
                raise HubMetadataError("a KeyDescriptor holds an unreadable certificate") from None
    if not certificates:
        raise HubMetadataError(f"the hub metadata publishes no {role} signing certificate")
    return entity_id, tuple(certificates)


def _is_discovery_descriptor(element: etree._Element) -> bool:
    """Whether a RoleDescriptor is the hub's discovery service (its xsi:type, namespace-resolved)."""
    prefix, _, local = (element.get(f"{{{XSI_NS}}}type") or "").rpartition(":")
    return (
        local == DISCOVERY_DESCRIPTOR_TYPE
        and element.nsmap.get(prefix or None) == RENKEI_MD_NS
        and DISCO_NS in (element.get("protocolSupportEnumeration") or "").split()
    )


class TokenVerifier:
    """Accepts provider tokens for one provider endpoint (or for any of its endpoints).

    hub_metadata_xml   — the hub's metadata (`{hub}/idp/metadata`): its entityID is the
                         expected Issuer and its discovery service's signing certificates
                         the only trusted keys.
    provider_entity_id — this provider's SAML entityID: the token's Audience and the subject's
                         SPNameQualifier.
    endpoint           — the URL the token is presented at; must equal the token's
                         SubjectConfirmationData Recipient. None skips that check (only for a
                         provider that serves every service type at one place and checks the
                         token's service_type itself).
    decryption_keys    — this provider's RSA private key(s) whose certificates its SAML metadata
                         publishes for encryption (several during a key rotation).
    replay_cache       — where accepted token IDs are kept; share one between the verifiers of
                         all endpoints and processes of a provider. Default: in this process.
    skew_seconds       — clock difference tolerated on every time check.
    """

    def __init__(
        self,
        *,
        hub_metadata_xml: bytes | str,
        provider_entity_id: str,
        endpoint: str | None,
        decryption_keys: Sequence[rsa.RSAPrivateKey],
        replay_cache: ReplayCache | None = None,
        skew_seconds: float = 60,
        max_token_bytes: int = MAX_TOKEN_BYTES,
    ):
        if not provider_entity_id:
            raise ValueError("provider_entity_id is required")
        keys = list(decryption_keys) if isinstance(decryption_keys, Sequence) else []
        if not keys or not all(isinstance(k, rsa.RSAPrivateKey) for k in keys):
            raise TypeError("decryption_keys must be a non-empty sequence of RSA private keys")
        if skew_seconds < 0:
            raise ValueError("skew_seconds cannot be negative")
        self.hub_entity_id, self.signing_certificates = hub_signing_certificates(hub_metadata_xml, role="discovery")
        self.provider_entity_id = provider_entity_id
        self.endpoint = endpoint
        self.replay_cache: ReplayCache = replay_cache if replay_cache is not None else InMemoryReplayCache()
        self._keys = tuple(keys)
        self._skew = timedelta(seconds=skew_seconds)
        self._max_bytes = max_token_bytes

    def verify(self, token: bytes | str, *, now: datetime | None = None) -> AcceptedToken:
        """Accept the token once, or raise a `TokenRejected` subclass.

        `token` is the assertion's XML, or base64 of it (as the discovery answer carries it).
        `now` (default: the current time; naive values are read as UTC) is for tests and
        batch re-checks; the replay cache sees the same clock.
        """
        now = _utc(now) if now is not None else datetime.now(UTC)
        try:
            root = parse_xml(self._xml_of(token), max_bytes=self._max_bytes)
        except XMLSecurityError:
            raise TokenMalformed() from None
        if root.tag != _ASSERTION or root.get("Version") != "2.0":
            raise TokenMalformed()
        try:
            a = verify_signed(root, list(self.signing_certificates))
        except XMLSecurityError:
            raise TokenSignatureInvalid() from None
        # From here on `a` is the signed element itself (re-parsed from the digested octets).
        assertion_id = a.get("ID") or ""
        issuers = a.findall(_ISSUER)
        if len(issuers) != 1 or issuers[0].get("Format") not in (None, NAMEID_ENTITY):
            raise TokenMalformed()
        if _text(issuers[0]) != self.hub_entity_id:
            raise TokenIssuerMismatch()

        conditions = _one(a, _CONDITIONS)
        self._check_audience(conditions)
        subject = _one(a, _SUBJECT)
        confirmation_expiry = self._check_confirmation(subject, now)
        not_on_or_after = self._check_time(conditions, now)
        if len(conditions.findall(_ONE_TIME_USE)) != 1:
            raise TokenMalformed("the token is not marked for one-time use")

        pseudonym = self._subject_pseudonym(subject)
        statement = _one(a, _ATTRIBUTE_STATEMENT)
        attributes, local_id = self._attributes(statement)

        accepted = AcceptedToken(
            provider_pseudonym=pseudonym,
            requester=_single(attributes, ATTR_REQUESTER),
            task=_single(attributes, ATTR_TASK),
            info_types=tuple(_values(attributes, ATTR_INFO_TYPE)),
            service_type=_single(attributes, ATTR_SERVICE_TYPE),
            decision_id=_single(attributes, ATTR_DECISION_ID),
            whitelist_entry=_single(attributes, ATTR_WHITELIST_ENTRY),
            local_id=local_id,
            not_on_or_after=not_on_or_after,
            assertion_id=assertion_id,
        )
        keep_until = max(not_on_or_after, confirmation_expiry) + self._skew
        if not self.replay_cache.first_use(
            f"{self.hub_entity_id} {assertion_id}", expires_at=keep_until, now=now
        ):
            raise TokenReplayed()
        return accepted

    # -- steps ---------------------------------------------------------------------------
    def _xml_of(self, token: bytes | str) -> bytes:
        if isinstance(token, str):
            raw = token.encode("utf-8")
        elif isinstance(token, (bytes, bytearray, memoryview)):
            raw = bytes(token)
        else:
            raise TypeError("token must be bytes or str")
        if len(raw) > 2 * self._max_bytes:
            raise TokenMalformed()
        stripped = raw.strip()
        if stripped.startswith((b"<", _UTF8_BOM + b"<")):
            return raw
        try:
            return base64.b64decode(b"".join(stripped.split()), validate=True)
        except (binascii.Error, ValueError):
            raise TokenMalformed() from None

    def _check_audience(self, conditions: etree._Element) -> None:
        """Every AudienceRestriction must name this provider (core §2.5.1.4)."""
        restrictions = conditions.findall(_AUDIENCE_RESTRICTION)
        if not restrictions or any(
            self.provider_entity_id not in [_text(x) for x in r.findall(_AUDIENCE)]
            for r in restrictions
        ):
            raise TokenAudienceMismatch()

    def _check_time(self, conditions: etree._Element, now: datetime) -> datetime:
        not_before = conditions.get("NotBefore")
        if not_before is not None and _time(not_before) > now + self._skew:
            raise TokenExpired("the token is not valid yet")
        not_on_or_after = _time(conditions.get("NotOnOrAfter"))
        if not_on_or_after <= now - self._skew:
            raise TokenExpired("the token has expired")
        return not_on_or_after

    def _check_confirmation(self, subject: etree._Element, now: datetime) -> datetime:
        """A bearer SubjectConfirmation for this endpoint, still valid (profiles §4.1.4.2)."""
        problem: type[Exception] = TokenMalformed
        for confirmation in subject.findall(_CONFIRMATION):
            if confirmation.get("Method") != BEARER:
                continue
            data = confirmation.findall(_CONFIRMATION_DATA)
            if len(data) != 1:
                continue
            if self.endpoint is not None and data[0].get("Recipient") != self.endpoint:
                problem = TokenNotForThisEndpoint
                continue
            expires = _time(data[0].get("NotOnOrAfter"))
            not_before = data[0].get("NotBefore")
            if expires <= now - self._skew or (
                not_before is not None and _time(not_before) > now + self._skew
            ):
                problem = TokenExpired
                continue
            return expires
        raise problem()

    def _subject_pseudonym(self, subject: etree._Element) -> str:
        if subject.findall(_NAME_ID) or subject.findall(_BASE_ID):
            raise TokenMalformed()  # the subject must be encrypted for the provider
        name_id = self._decrypt(_one(subject, _ENCRYPTED_ID))
        if name_id.tag != _NAME_ID or len(name_id):
            raise TokenMalformed()
        if name_id.get("Format") != NAMEID_PERSISTENT or name_id.get("NameQualifier") != self.hub_entity_id:
            raise TokenMalformed()
        if name_id.get("SPNameQualifier") != self.provider_entity_id:
            raise TokenAudienceMismatch()
        value = _text(name_id)
        if not value:
            raise TokenMalformed()
        return value

    def _attributes(self, statement: etree._Element) -> tuple[dict[str, list[str]], str | None]:
        attributes: dict[str, list[str]] = {}
        encrypted: list[etree._Element] = []
        for child in statement:
            if not isinstance(child.tag, str):
                continue
            if child.tag == _ATTRIBUTE:
                name, values = _attribute(child)
                if name in attributes or name == ATTR_LOCAL_ID:  # the local ID only encrypted
                    raise TokenMalformed()
                attributes[name] = values
            elif child.tag == _ENCRYPTED_ATTRIBUTE:
                encrypted.append(child)
            else:
                raise TokenMalformed()
        if len(encrypted) > MAX_ENCRYPTED_ATTRIBUTES:
            raise TokenMalformed()
        local_ids: list[str] = []
        for wrapper in encrypted:
            name, values = _attribute(self._decrypt(wrapper))
            if name == ATTR_LOCAL_ID:
                if len(values) != 1 or not values[0]:
                    raise TokenMalformed()
                local_ids.append(values[0])
        if len(local_ids) > 1:
            raise TokenMalformed()
        return attributes, (local_ids[0] if local_ids else None)

    def _decrypt(self, wrapper: etree._Element) -> etree._Element:
        try:
            return decrypt_element(wrapper, self._keys)
        except XMLSecurityError:
            raise TokenUndecryptable() from None


# -- reading the signed element ----------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _time(value: str | None) -> datetime:
    try:
        return read_xs_datetime(value).replace(tzinfo=UTC)
    except ValueError:
        raise TokenMalformed() from None


def _text(element: etree._Element | None) -> str:
    if element is None:
        return ""
    return "".join(element.itertext()).strip()


def _one(parent: etree._Element, tag: str) -> etree._Element:
    found = parent.findall(tag)
    if len(found) != 1:
        raise TokenMalformed()
    return found[0]


def _attribute(element: etree._Element) -> tuple[str, list[str]]:
    if element.tag != _ATTRIBUTE or element.get("NameFormat") not in (None, ATTRNAME_URI):
        raise TokenMalformed()
    name = element.get("Name") or ""
    values = []
    for value in element.findall(_ATTRIBUTE_VALUE):
        if len(value):  # text only, no markup inside a value
            raise TokenMalformed()
        values.append(_text(value))
    return name, values


def _values(attributes: dict[str, list[str]], name: str) -> list[str]:
    values = attributes.get(name) or []
    if not values or any(not v for v in values):
        raise TokenMalformed()
    return values


def _single(attributes: dict[str, list[str]], name: str) -> str:
    values = _values(attributes, name)
    if len(values) != 1:
        raise TokenMalformed()
    return values[0]
