"""Agency metadata kept fresh from the agency's own URL: fetched, accepted only when signed by
the certificate pinned at registration, current (validUntil) and naming the same entity.

Everything is checked before anything is written: a refused document leaves the registry as
it was (metadata §2.3.2 validUntil; the pinned-key model of SAML metadata interop §2.5).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session

from federation.models import Agency
from federation.service import MD_NS, MetadataError, register
from kernel.db import utcnow
from kernel.xml import XMLSecurityError, parse_xml, read_xs_datetime, verify_signed

MAX_METADATA_BYTES = 1024 * 1024
FETCH_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class SignedMetadata:
    """An EntityDescriptor whose signature checked out against the pinned certificate."""

    xml: bytes  # exactly what the signature covered
    entity_id: str
    valid_until: datetime | None


def load_signing_cert(pem: bytes) -> str:
    """The pinned metadata-signing certificate, as PEM text; MetadataError if it is not one."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise MetadataError(f"the metadata signing certificate is not a PEM certificate: {exc}") from None
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fetch(url: str) -> bytes:
    """GET the metadata document, at most MAX_METADATA_BYTES, over http(s) only."""
    if not url.startswith(("https://", "http://")) or len(url) > 1024:
        raise MetadataError("the metadata URL must be an http(s) URL of at most 1024 characters")
    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False) as response:
            if response.status_code != 200:
                raise MetadataError(f"fetching {url} answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_METADATA_BYTES:
                    raise MetadataError(f"the metadata at {url} is larger than {MAX_METADATA_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise MetadataError(f"cannot fetch {url}: {exc}") from None
    return bytes(body)


def verify_metadata(data: bytes, signing_cert_pem: str, *, now: datetime | None = None) -> SignedMetadata:
    """Check a fetched EntityDescriptor: hostile-XML parse, enveloped signature by the pinned
    key over the whole document, not expired."""
    cert = x509.load_pem_x509_certificate(signing_cert_pem.encode())
    try:
        root = parse_xml(data, max_bytes=MAX_METADATA_BYTES)
        if root.tag != f"{{{MD_NS}}}EntityDescriptor":
            raise MetadataError("the fetched metadata must be one md:EntityDescriptor")
        verified = verify_signed(root, [cert], require_signature=True)
    except XMLSecurityError as exc:
        raise MetadataError(f"the fetched metadata was refused: {exc}") from None
    valid_until = None
    if verified.get("validUntil") is not None:
        try:
            valid_until = read_xs_datetime(verified.get("validUntil"))
        except ValueError as exc:
            raise MetadataError(f"validUntil is not a time: {exc}") from None
        if valid_until <= (now or utcnow()):
            raise MetadataError(f"the fetched metadata expired at {valid_until:%Y-%m-%d %H:%M:%S} (validUntil)")
    entity_id = (verified.get("entityID") or "").strip()
    return SignedMetadata(etree.tostring(verified), entity_id, valid_until)


def add_from_url(
    *, db_session: Session, url: str, signing_cert_pem: str, agency_class: str = "", name: str | None = None
) -> Agency:
    """Register an agency from signed metadata at a URL, pinning the URL and the signer."""
    signed = verify_metadata(fetch(url), signing_cert_pem)
    agency = register(db_session=db_session, metadata=signed.xml, agency_class=agency_class, name=name)
    _remember(agency, url=url, signing_cert_pem=signing_cert_pem, valid_until=signed.valid_until)
    db_session.flush()
    return agency


def refresh(*, db_session: Session, entity_id: str) -> Agency:
    """Fetch and re-register one agency's metadata from its pinned URL."""
    agency = db_session.scalar(select(Agency).where(Agency.entity_id == entity_id))
    if agency is None:
        raise MetadataError(f"no agency {entity_id} is registered")
    if not agency.metadata_url or not agency.metadata_signing_cert:
        raise MetadataError(f"agency {entity_id} was not registered from a metadata URL")
    signed = verify_metadata(fetch(agency.metadata_url), agency.metadata_signing_cert)
    if signed.entity_id != entity_id:
        raise MetadataError(
            f"the metadata at {agency.metadata_url} names entityID {signed.entity_id!r}, not {entity_id!r};"
            " an entity cannot change its ID by refresh"
        )
    register(db_session=db_session, metadata=signed.xml, replace=True)
    _remember(agency, url=agency.metadata_url, signing_cert_pem=agency.metadata_signing_cert,
              valid_until=signed.valid_until)
    db_session.flush()
    return agency


def refreshable(*, db_session: Session) -> list[str]:
    """Entity IDs of live agencies registered from a metadata URL."""
    return list(db_session.scalars(
        select(Agency.entity_id).where(Agency.metadata_url.is_not(None), Agency.retired_at.is_(None))
        .order_by(Agency.entity_id)
    ))


def _remember(agency: Agency, *, url: str, signing_cert_pem: str, valid_until: datetime | None) -> None:
    agency.metadata_url = url
    agency.metadata_signing_cert = signing_cert_pem
    agency.metadata_valid_until = valid_until
    agency.metadata_refreshed_at = utcnow()
