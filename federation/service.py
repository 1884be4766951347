"""The agency registry: service providers registered from their SAML metadata (metadata §2.4.4)."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session

from federation.models import Agency, AgencyCertificate, AgencyEndpoint
from federation.oidc import OidcClient, client_from_json
from kernel.cache import TTLCache
from kernel.db import utcnow
from kernel.errors import UserError, shown
from kernel.invalidation import registry_changed
from kernel.validate import identifier_problem
from kernel.xml import XMLSecurityError, parse_xml

MD_NS = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
MDUI_NS = "urn:oasis:names:tc:SAML:metadata:ui"
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_SOAP = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"
_NS = {"md": MD_NS, "ds": DS_NS, "mdui": MDUI_NS}


class MetadataError(UserError, ValueError):
    """Agency metadata that cannot be registered; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    binding: str
    location: str
    response_location: str | None = None
    index: int | None = None
    is_default: bool = False


@dataclass(frozen=True)
class RegisteredAgency:
    """An immutable view of a registered SP, safe to cache across requests."""

    entity_id: str
    name: str
    agency_class: str
    authn_requests_signed: bool
    want_assertions_signed: bool
    acs: tuple[Endpoint, ...]
    slo: tuple[Endpoint, ...]
    signing_keys: tuple = field(default=())
    encryption_certs: tuple[x509.Certificate, ...] = field(default=())
    # the agency's OpenID Connect client registration, if it connects over OIDC (federation.oidc)
    oidc: OidcClient | None = None
    allow_unsolicited: bool = False

    def acs_for(self, url: str | None, index: int | None) -> Endpoint | None:
        """The ACS a request names (by URL or index), or the default one when it names none."""
        posts = [e for e in self.acs if e.binding == BINDING_POST]
        if url is not None:
            return next((e for e in posts if e.location == url), None)
        if index is not None:
            return next((e for e in posts if e.index == index), None)
        return next((e for e in posts if e.is_default), posts[0] if posts else None)

    def slo_redirect(self) -> Endpoint | None:
        return next((e for e in self.slo if e.binding == BINDING_REDIRECT), None)

    def slo_soap(self) -> Endpoint | None:
        """The back-channel SingleLogoutService (SOAP binding, bindings §3.2), if offered."""
        return next((e for e in self.slo if e.binding == BINDING_SOAP), None)


@dataclass
class ParsedMetadata:
    entity_id: str
    name: str
    authn_requests_signed: bool
    want_assertions_signed: bool
    endpoints: list[tuple[str, Endpoint]]
    certificates: list[tuple[str, str]]  # (use, PEM)
    xml: str


def parse_sp_metadata(data: bytes) -> ParsedMetadata:
    """Read an SP EntityDescriptor: entityID, ACS/SLO endpoints, pinned certificates."""
    try:
        root = parse_xml(data, max_bytes=1024 * 1024)
    except XMLSecurityError as exc:
        raise MetadataError(f"metadata refused: {exc}") from None
    if root.tag != f"{{{MD_NS}}}EntityDescriptor":
        raise MetadataError("metadata must be one md:EntityDescriptor")
    entity_id = (root.get("entityID") or "").strip()
    if not entity_id:
        raise MetadataError("EntityDescriptor has no entityID")
    sps = root.findall("md:SPSSODescriptor", _NS)
    if len(sps) != 1:
        raise MetadataError(f"expected one SPSSODescriptor, found {len(sps)}")
    sp = sps[0]
    if "urn:oasis:names:tc:SAML:2.0:protocol" not in (sp.get("protocolSupportEnumeration") or ""):
        raise MetadataError("SPSSODescriptor does not support SAML 2.0 protocol")
    endpoints: list[tuple[str, Endpoint]] = []
    for kind, tag in (("acs", "AssertionConsumerService"), ("slo", "SingleLogoutService")):
        for el in sp.findall(f"md:{tag}", _NS):
            location = (el.get("Location") or "").strip()
            if not location.startswith(("https://", "http://")):
                raise MetadataError(f"{tag} Location must be an http(s) URL, got {location!r}")
            index = el.get("index")
            endpoints.append(
                (
                    kind,
                    Endpoint(
                        binding=el.get("Binding") or "",
                        location=location,
                        response_location=el.get("ResponseLocation"),
                        index=int(index) if index and index.isdigit() else None,
                        is_default=(el.get("isDefault") or "").lower() in ("true", "1"),
                    ),
                )
            )
    if not any(k == "acs" and e.binding == BINDING_POST for k, e in endpoints):
        raise MetadataError("no AssertionConsumerService with the HTTP-POST binding")
    certificates: list[tuple[str, str]] = []
    for kd in sp.findall("md:KeyDescriptor", _NS):
        declared = kd.get("use")
        for cert_el in kd.iterfind(".//ds:X509Certificate", _NS):
            pem, can_encrypt = _cert_pem(cert_el.text or "")
            if declared == "encryption" and not can_encrypt:
                raise MetadataError("an encryption KeyDescriptor must hold an RSA key of 2048 bits or more")
            # a KeyDescriptor without `use` serves both, but only RSA keys can receive RSA-OAEP
            uses = [declared] if declared else ["signing", "encryption"] if can_encrypt else ["signing"]
            certificates.extend((use, pem) for use in uses)
    name = _display_name(root, sp) or entity_id
    return ParsedMetadata(
        entity_id=entity_id,
        name=name,
        authn_requests_signed=_flag(sp.get("AuthnRequestsSigned")),
        want_assertions_signed=_flag(sp.get("WantAssertionsSigned"), default=True),
        endpoints=endpoints,
        certificates=certificates,
        xml=etree.tostring(root, encoding="unicode"),
    )


def _flag(value: str | None, default: bool = False) -> bool:
    return default if value is None else value.strip().lower() in ("true", "1")


def _cert_pem(b64: str) -> tuple[str, bool]:
    """The certificate as PEM, and whether its key can receive RSA-OAEP (RSA, 2048 bits or more)."""
    try:
        der = base64.b64decode("".join(b64.split()), validate=True)
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise MetadataError(f"KeyDescriptor holds an unreadable certificate: {exc}") from None
    key = cert.public_key()
    can_encrypt = isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    return cert.public_bytes(serialization.Encoding.PEM).decode(), can_encrypt


def _display_name(root, sp) -> str | None:
    for path in (".//mdui:DisplayName", "md:Organization/md:OrganizationDisplayName"):
        el = sp.find(path, _NS) if path.startswith(".//mdui") else root.find(path, _NS)
        if el is not None and (el.text or "").strip():
            return el.text.strip()
    return None


def register(
    *, db_session: Session, metadata: bytes, agency_class: str = "", name: str | None = None, replace: bool = False
) -> Agency:
    """Register (or, with replace, update) an agency from its metadata."""
    if agency_class and (problem := identifier_problem(agency_class, max_length=100)):
        raise MetadataError(f"agency class {shown(agency_class)} {problem}")
    parsed = parse_sp_metadata(metadata)
    existing = db_session.scalar(select(Agency).where(Agency.entity_id == parsed.entity_id))
    if existing is not None and existing.retired_at is not None:
        # history names the retired agency by this entity ID and checks it against these
        # keys: a newcomer must not take them over, so a retired entity ID is never reused
        raise MetadataError(
            f"agency {parsed.entity_id} was retired on {existing.retired_at:%Y-%m-%d}; "
            "a retired entity ID cannot be registered again"
        )
    if existing is not None and not replace:
        raise MetadataError(f"agency {parsed.entity_id} is already registered")
    agency = existing or Agency(entity_id=parsed.entity_id)
    agency.name = name or parsed.name
    agency.agency_class = agency_class or (existing.agency_class if existing else "")
    agency.authn_requests_signed = parsed.authn_requests_signed
    agency.want_assertions_signed = parsed.want_assertions_signed
    agency.metadata_xml = parsed.xml
    agency.endpoints = [
        AgencyEndpoint(
            kind=kind,
            binding=e.binding,
            location=e.location,
            response_location=e.response_location,
            index=e.index,
            is_default=e.is_default,
        )
        for kind, e in parsed.endpoints
    ]
    agency.certificates = [AgencyCertificate(use=use, cert_pem=pem) for use, pem in parsed.certificates]
    db_session.add(agency)
    db_session.flush()
    registry_changed(db_session)
    return agency


def retire(*, db_session: Session, entity_id: str, at: datetime | None = None) -> Agency:
    """Mark an agency retired: no new SSO, tokens or lookups; its row and keys stay for history.

    Only the registry's part: the roof retires the agency in every other room in the same
    transaction (renkei.retirement).
    """
    agency = db_session.scalar(select(Agency).where(Agency.entity_id == entity_id))
    if agency is None:
        raise MetadataError(f"no agency {entity_id} is registered")
    if agency.retired_at is not None:
        raise MetadataError(f"agency {entity_id} was already retired on {agency.retired_at:%Y-%m-%d}")
    agency.retired_at = at or utcnow()
    db_session.flush()
    registry_changed(db_session)
    return agency


def is_retired(*, db_session: Session, entity_id: str) -> bool:
    """Whether this entity ID names a retired agency (for a clear refusal; `lookup` says None)."""
    retired_at = db_session.scalar(select(Agency.retired_at).where(Agency.entity_id == entity_id))
    return retired_at is not None


def list_all(*, db_session: Session) -> list[Agency]:
    """Every registered agency, retired ones included (see `retired_at`), by entity ID."""
    return list(db_session.scalars(select(Agency).order_by(Agency.entity_id)))


# Registered agencies change rarely; a few seconds of caching keeps SSO off three queries.
_cache: TTLCache[RegisteredAgency | None] = TTLCache(seconds=5.0)


def lookup(*, db_session: Session, entity_id: str) -> RegisteredAgency | None:
    """The live agency for an entity ID (cached for a few seconds), or None when it is unknown
    or retired: every live use (SSO, discovery, tokens, links) refuses a retired agency alike."""

    def load() -> RegisteredAgency | None:
        agency = db_session.scalar(
            select(Agency).where(Agency.entity_id == entity_id, Agency.retired_at.is_(None))
        )
        return _view(agency) if agency is not None else None

    return _cache.get(entity_id, load)


def _view(agency: Agency) -> RegisteredAgency:
    def endpoints(kind: str) -> tuple[Endpoint, ...]:
        return tuple(
            Endpoint(e.binding, e.location, e.response_location, e.index, e.is_default)
            for e in agency.endpoints
            if e.kind == kind
        )

    certs = [(c.use, x509.load_pem_x509_certificate(c.cert_pem.encode())) for c in agency.certificates]
    oidc = client_from_json(agency.oidc_client.metadata_json) if agency.oidc_client is not None else None
    return RegisteredAgency(
        entity_id=agency.entity_id,
        name=agency.name,
        agency_class=agency.agency_class,
        authn_requests_signed=agency.authn_requests_signed,
        want_assertions_signed=agency.want_assertions_signed,
        acs=endpoints("acs"),
        slo=endpoints("slo"),
        # an OIDC agency's JWKS sign its client assertions to the discovery service too
        signing_keys=tuple(c.public_key() for use, c in certs if use == "signing") + (oidc.public_keys if oidc else ()),
        encryption_certs=tuple(c for use, c in certs if use == "encryption"),
        oidc=oidc,
        allow_unsolicited=bool(agency.allow_unsolicited),
    )


def set_allow_unsolicited(*, db_session: Session, entity_id: str, allow: bool) -> Agency:
    """Allow or forbid IdP-initiated (unsolicited) SSO to a live agency's registered ACS."""
    agency = db_session.scalar(select(Agency).where(Agency.entity_id == entity_id))
    if agency is None:
        raise MetadataError(f"no agency {entity_id} is registered")
    if agency.retired_at is not None:
        raise MetadataError(f"agency {entity_id} was retired on {agency.retired_at:%Y-%m-%d}")
    agency.allow_unsolicited = allow
    db_session.flush()
    registry_changed(db_session)
    return agency
