"""The federation's metadata over HTTP: the signed aggregate and the Metadata Query protocol
(MDQ, draft-young-md-query §3: GET {base}/entities/{ID}, ID URL-encoded or `{sha1}hex`).

Served by the IdP room because the hub's own entity and the signing key are the IdP's."""
from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy.orm import Session

from federation import aggregate
from idp import saml, service
from kernel.keys import keystore
from kernel.settings import get_settings
from kernel.web import DB

router = APIRouter(prefix="/federation", tags=["federation"])

MEDIA_TYPE = "application/samlmetadata+xml"
# the discovery service's key role (discovery/tokens.py); rooms do not import each other
DISCOVERY_ROLE = "discovery"


def own_entity() -> bytes:
    """The hub's own EntityDescriptor, as /idp/metadata publishes it."""
    settings = get_settings()
    keys = keystore()
    return saml.idp_metadata(
        entity_id=settings.idp_entity_id,
        sso_url=service.sso_url(settings),
        slo_url=service.slo_url(settings),
        signing_certs_der=[c.public_bytes(Encoding.DER) for c in keys.published_certificates(service.IDP_ROLE)],
        want_signed=settings.require_signed_requests,
        discovery_certs_der=[c.public_bytes(Encoding.DER) for c in keys.published_certificates(DISCOVERY_ROLE)],
    )


@router.get("/metadata")
def federation_metadata(db: Session = DB) -> Response:
    """Every live agency and the hub in one EntitiesDescriptor signed with the IdP's key."""
    key = service.signing_key()
    body = aggregate.aggregate(db_session=db, own=[own_entity()], key=key.private_key,
                               certificate=key.certificate)
    return Response(body, media_type=MEDIA_TYPE, headers={"Cache-Control": "max-age=21600"})


@router.get("/mdq/entities")
def mdq_all(db: Session = DB) -> Response:
    """MDQ §3.1: the request for all entities answers with the aggregate."""
    return federation_metadata(db)


@router.get("/mdq/entities/{identifier:path}")
def mdq_entity(identifier: str, db: Session = DB) -> Response:
    """MDQ §3.2: one entity, signed; 404 when the federation has no such entity. The
    identifier arrives percent-decoded once, as the protocol encodes it once."""
    if len(identifier) > 1024:
        return Response("entity identifier too long\n", status_code=400, media_type="text/plain")
    key = service.signing_key()
    body = aggregate.query(db_session=db, own=[own_entity()], identifier=identifier,
                           key=key.private_key, certificate=key.certificate)
    if body is None:
        return Response("no such entity in this federation\n", status_code=404, media_type="text/plain")
    return Response(body, media_type=MEDIA_TYPE, headers={"Cache-Control": "max-age=21600"})
