"""The federation's metadata as one signed aggregate (md:EntitiesDescriptor, metadata §2.3.1)
and per entity by the Metadata Query protocol (draft-young-md-query, -saml profile).

Every live agency's registered EntityDescriptor plus the hub's own, each answer signed with
the hub's key and bounded by validUntil and cacheDuration, so relying parties can pin the
hub's key once and trust the rest through it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session

from federation.models import Agency
from federation.service import DS_NS, MD_NS
from kernel.db import utcnow
from kernel.xml import new_id, parse_xml, sign_enveloped, xs_datetime

VALID_FOR = timedelta(days=7)
CACHE_DURATION = "PT6H"  # xs:duration: how long a relying party may use a copy before asking again
FEDERATION_NAME = "urn:renkei:federation"


def _entities(*, db_session: Session, own: Sequence[bytes]) -> list[etree._Element]:
    """The hub's own entities, then every live agency's that has SAML metadata (one registered
    from OIDC client metadata alone has none), without their own signatures or IDs (the
    aggregate's one signature covers them; a stray ID could collide with another)."""
    rows = db_session.scalars(select(Agency.metadata_xml)
                              .where(Agency.retired_at.is_(None), Agency.metadata_xml != "")
                              .order_by(Agency.entity_id))
    out = []
    for xml in [*own, *(r.encode() for r in rows)]:
        entity = parse_xml(xml, max_bytes=1024 * 1024)
        for signature in entity.findall(f"{{{DS_NS}}}Signature"):
            entity.remove(signature)
        entity.attrib.pop("ID", None)
        out.append(entity)
    return out


def _bounded(root: etree._Element) -> None:
    root.set("ID", new_id())
    root.set("validUntil", xs_datetime(utcnow() + VALID_FOR))
    root.set("cacheDuration", CACHE_DURATION)


def aggregate(
    *, db_session: Session, own: Sequence[bytes], key: PrivateKeyTypes, certificate: x509.Certificate
) -> bytes:
    """Every entity of the federation in one signed EntitiesDescriptor."""
    root = etree.Element(f"{{{MD_NS}}}EntitiesDescriptor", {"Name": FEDERATION_NAME},
                         nsmap={"md": MD_NS, "ds": DS_NS})
    _bounded(root)
    for entity in _entities(db_session=db_session, own=own):
        root.append(entity)
    sign_enveloped(root, key, certificate=certificate)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def sha1_identifier(entity_id: str) -> str:
    """The MDQ `{sha1}` form of an entity ID (MDQ SAML profile §2.1)."""
    return "{sha1}" + hashlib.sha1(entity_id.encode()).hexdigest()


def query(
    *, db_session: Session, own: Sequence[bytes], identifier: str, key: PrivateKeyTypes,
    certificate: x509.Certificate,
) -> bytes | None:
    """One entity, signed, by entity ID or its `{sha1}hex` form; None when unknown."""
    wanted = identifier.lower() if identifier.startswith("{sha1}") else None
    for entity in _entities(db_session=db_session, own=own):
        entity_id = entity.get("entityID") or ""
        if entity_id == identifier or (wanted is not None and sha1_identifier(entity_id) == wanted):
            _bounded(entity)
            sign_enveloped(entity, key, certificate=certificate)
            return etree.tostring(entity, xml_declaration=True, encoding="UTF-8")
    return None
