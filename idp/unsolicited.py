"""IdP-initiated ("unsolicited") Web Browser SSO (profiles §4.1.5): a Response no AuthnRequest
asked for, sent only to the agency's registered default ACS and only to agencies the operator
allowed (`renkei agency set ENTITY_ID --allow-unsolicited`). Shibboleth-style entry point:
GET /idp/sso/unsolicited?sp=ENTITY_ID[&RelayState=...] (providerId= is accepted too)."""
from __future__ import annotations

from sqlalchemy.orm import Session

from federation import service as agencies
from federation.service import RegisteredAgency
from idp import saml
from idp.service import BadRequest
from kernel.db import utcnow


class UnsolicitedRefused(BadRequest):
    """Unsolicited SSO is not allowed for this agency (shown as 403)."""


def unsolicited_request(
    *, db_session: Session, sp: str | None, relay_state: str | None
) -> tuple[RegisteredAgency, saml.AuthnRequest]:
    """The agency and a stand-in request (no ID, so no InResponseTo) for an unsolicited Response."""
    if not sp or len(sp) > saml.MAX_URI_CHARS:
        raise BadRequest("name the service provider: ?sp=ENTITY_ID")
    agency = agencies.lookup(db_session=db_session, entity_id=sp)
    if agency is None:
        if agencies.is_retired(db_session=db_session, entity_id=sp):
            raise BadRequest(f"the service provider {sp!r} has been retired from this federation")
        raise BadRequest(f"the service provider {sp!r} is not registered with this IdP")
    if not agency.allow_unsolicited:
        raise UnsolicitedRefused(
            f"IdP-initiated SSO is not enabled for {sp!r}; the service must send an AuthnRequest"
            " (operators enable it with `renkei agency set ENTITY_ID --allow-unsolicited`)")
    if relay_state is not None and (len(relay_state.encode()) > 80 or not relay_state.isprintable()):
        raise BadRequest("RelayState must be printable and not exceed 80 bytes (bindings §3.4.3)")
    acs = agency.acs_for(None, None)
    if acs is None:  # registration requires an HTTP-POST ACS; kept for safety
        raise BadRequest(f"the service provider {sp!r} has no HTTP-POST AssertionConsumerService")
    request = saml.AuthnRequest(
        id="", issuer=agency.entity_id, issue_instant=utcnow(), destination=None, acs_url=None, acs_index=None,
        protocol_binding=saml.BINDING_POST, force_authn=False, is_passive=False, name_id_format=None,
        requested_context=None, relay_state=relay_state, acs_location=acs.location,
    )
    return agency, request
