"""The discovery service's JSON face (described in the OpenAPI document at /api/openapi.json).

Same operation and decisions as the ID-WSF SOAP face; the requester authenticates with a
JWT signed by its registered key (RFC 7523 client assertion, "private_key_jwt")."""
from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from access_history import service as history
from access_history.models import CODE_MAX, OperationIn
from discovery import pipeline
from discovery import service as location
from discovery.errors import DiscoveryRefused, StaffAssertionRejected
from federation import service as agencies
from kernel.jose import (
    ALREADY_USED,
    ClientAuthFailed,
    check_client_assertion,
    remember_client_assertion,
)
from kernel.replay import Once, ReplayDetected
from kernel.settings import get_settings
from kernel.validate import bounded_text
from kernel.web import in_unit_of_work
from pseudonym.service import PSEUDONYM_MAX

router = APIRouter(prefix="/api/discovery", tags=["discovery"])


# a bootstrap token is a few hundred characters; a staff assertion at most the SOAP faces'
# message limit (RENKEI_MAX_MESSAGE_BYTES, 256 KiB by default) in base64
BOOTSTRAP_TOKEN_MAX = 4096
STAFF_ASSERTION_MAX = 4 * (256 * 1024) // 3 + 4


class PersonIn(BaseModel):
    """Name the person by a bootstrap token, or by your own pseudonym with a staff assertion."""

    bootstrap_token: bounded_text(BOOTSTRAP_TOKEN_MAX) | None = Field(
        None, description="From the DiscoveryEPR of the person's SSO assertion")
    pseudonym: bounded_text(PSEUDONYM_MAX) | None = Field(None, description="Your agency's pseudonym for the person")
    staff_assertion: bounded_text(STAFF_ASSERTION_MAX) | None = Field(
        None, description="Base64 of the staff member's SSO assertion")


class DiscoveryQueryIn(BaseModel):
    service_type: bounded_text(location.URN_MAX) = Field(
        ..., description="Service type URN, e.g. urn:renkei:service:resident-record")
    task: bounded_text(CODE_MAX) = Field(..., description="Administrative task (事務) code the query is for")
    info_type: bounded_text(location.INFO_TYPE_CODE_MAX) | None = Field(
        None, description="One information type (特定個人情報) of the service type")
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


def _record_client_auth_failure(db: Session, request: Request, issuer: str | None, reason: str) -> None:
    """A refused client assertion in the operations log: the agency it claimed to be, and why
    (the JWT itself never: it may be a valid one replayed)."""
    history.record_operation(db_session=db, operation=OperationIn(
        actor="unknown", channel="api", action="discovery.client_auth_failed",
        target=issuer or "unknown", outcome="refused",
        client=request.client.host[:64] if request.client else None, detail={"reason": reason[:300]}))


@router.post(
    "/query",
    response_model=DiscoveryQueryOut,
    responses={400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut},
               404: {"model": ErrorOut}, 503: {"model": ErrorOut}},
    summary="Discovery query (ID-WSF DS Query, JSON face)",
)
async def query(
    request: Request,
    body: DiscoveryQueryIn,
    authorization: str = Header("", description="Bearer <client assertion JWT signed with your registered key>"),
):
    """Where does the person's data for this service type live, and may I fetch it for this task?

    Each provider holding data about the person is decided (whitelist, then the person's
    policy) and logged before anything is returned; permitted ones come with a one-time token.
    """
    return await in_unit_of_work(_query, request, body, authorization)


def _query(db: Session, request: Request, body: DiscoveryQueryIn, authorization: str) -> JSONResponse:
    scheme, _, jwt = authorization.partition(" ")
    if scheme.lower() != "bearer" or not jwt:
        _record_client_auth_failure(db, request, None, "no bearer client assertion")
        return _error(401, "invalid_client", "send Authorization: Bearer <client assertion JWT>")

    claimed: list[str] = []  # the issuer the JWT names, once it passed the length and control checks

    def keys_for(entity_id: str):
        claimed.append(entity_id)
        agency = agencies.lookup(db_session=db, entity_id=entity_id)
        return agency.signing_keys if agency else ()

    try:
        claims, once = check_client_assertion(jwt, keys_for=keys_for, audience=query_url())
        # the jti is remembered with the decisions' log entries (one group commit); an answer
        # that logged nothing remembers it before it leaves
        answer = _answer(db, body, claims, once)
        remember_client_assertion(db_session=db, once=once)
    except ReplayDetected:
        _record_client_auth_failure(db, request, claimed[0], ALREADY_USED)
        return _error(401, "invalid_client", ALREADY_USED)
    except ClientAuthFailed as exc:
        _record_client_auth_failure(db, request, claimed[0] if claimed else None, str(exc))
        return _error(401, "invalid_client", str(exc))
    return answer


def _answer(db: Session, body: DiscoveryQueryIn, claims: dict, once: Once) -> JSONResponse:
    """The decisions for an authenticated requester, `once` (its jti) remembered with their log."""
    settings = get_settings()
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
            service_type=body.service_type, task=body.task, info_type=body.info_type, once=once,
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
