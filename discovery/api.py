"""The discovery service's JSON face (described in the OpenAPI document at /api/openapi.json).

Same operation and decisions as the ID-WSF SOAP face; the requester authenticates with a
JWT signed by its registered key (RFC 7523 client assertion, "private_key_jwt")."""
from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from discovery import pipeline
from discovery.errors import DiscoveryRefused, StaffAssertionRejected
from federation import service as agencies
from kernel.jose import ClientAuthFailed, verify_client_assertion
from kernel.settings import get_settings
from kernel.web import DB

router = APIRouter(prefix="/api/discovery", tags=["discovery"])


class PersonIn(BaseModel):
    """Name the person by a bootstrap token, or by your own pseudonym with a staff assertion."""

    bootstrap_token: str | None = Field(None, description="From the DiscoveryEPR of the person's SSO assertion")
    pseudonym: str | None = Field(None, description="Your agency's pseudonym for the person")
    staff_assertion: str | None = Field(None, description="Base64 of the staff member's SSO assertion")


class DiscoveryQueryIn(BaseModel):
    service_type: str = Field(..., description="Service type URN, e.g. urn:renkei:service:resident-record")
    task: str = Field(..., description="Administrative task (事務) code the query is for")
    info_type: str | None = Field(None, description="One information type (特定個人情報) of the service type")
    person: PersonIn


class OfferingOut(BaseModel):
    provider: str
    provider_name: str
    service_type: str
    permitted: bool
    reason: str = Field(..., description="Reason code of the decision")
    decision_id: str
    overridden: bool = Field(False, description="The person said no and the law overrode it")
    endpoint: str | None = None
    security_mechanism: str | None = None
    token: str | None = Field(None, description="Base64 of the hub-signed SAML assertion for the provider")


class DiscoveryQueryOut(BaseModel):
    offerings: list[OfferingOut]


class ErrorOut(BaseModel):
    error: str
    message: str


def query_url() -> str:
    return get_settings().base_url.rstrip("/") + "/api/discovery/query"


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers={"Cache-Control": "no-store"})


def _refused(exc: DiscoveryRefused, *, status: int | None = None) -> JSONResponse:
    """Every refusal's JSON answer: its class's code and HTTP status, its safe message."""
    return _error(status or exc.status, exc.code, exc.message)


@router.post(
    "/query",
    response_model=DiscoveryQueryOut,
    responses={400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut},
               404: {"model": ErrorOut}, 503: {"model": ErrorOut}},
    summary="Discovery query (ID-WSF DS Query, JSON face)",
)
def query(
    body: DiscoveryQueryIn,
    authorization: str = Header("", description="Bearer <client assertion JWT signed with your registered key>"),
    db: Session = DB,
):
    """Where does the person's data for this service type live, and may I fetch it for this task?

    Each provider holding data about the person is decided (whitelist, then the person's
    policy) and logged before anything is returned; permitted ones come with a one-time token.
    """
    settings = get_settings()
    scheme, _, jwt = authorization.partition(" ")
    if scheme.lower() != "bearer" or not jwt:
        return _error(401, "invalid_client", "send Authorization: Bearer <client assertion JWT>")

    def keys_for(entity_id: str):
        agency = agencies.lookup(db_session=db, entity_id=entity_id)
        return agency.signing_keys if agency else ()

    try:
        claims = verify_client_assertion(jwt, keys_for=keys_for, audience=query_url(), db_session=db)
    except ClientAuthFailed as exc:
        return _error(401, "invalid_client", str(exc))
    requester = agencies.lookup(db_session=db, entity_id=claims["iss"])
    staff = None
    if body.person.staff_assertion:
        try:
            staff = base64.b64decode(body.person.staff_assertion, validate=True)
        except (binascii.Error, ValueError):
            # malformed rather than refused after checking: 400, as the API has always answered
            return _refused(StaffAssertionRejected("staff_assertion is not base64"), status=400)
    person = pipeline.PersonRef(bootstrap_token=body.person.bootstrap_token, pseudonym=body.person.pseudonym,
                                staff_assertion=staff)
    try:
        decisions = pipeline.discover(
            db_session=db, settings=settings, requester=requester, person=person,
            service_type=body.service_type, task=body.task, info_type=body.info_type,
        )
    except DiscoveryRefused as exc:
        return _refused(exc)
    answer = DiscoveryQueryOut(offerings=[
        OfferingOut(
            provider=d.provider, provider_name=d.provider_name, service_type=d.service_type,
            permitted=d.permitted, reason=d.reason, decision_id=d.decision_id, overridden=d.overridden,
            endpoint=d.endpoint if d.permitted else None,
            security_mechanism=d.security_mechanism if d.permitted else None,
            token=d.token_b64,
        )
        for d in decisions
    ])
    # bearer tokens inside: never cached by any intermediary
    return JSONResponse(answer.model_dump(), headers={"Cache-Control": "no-store"})
