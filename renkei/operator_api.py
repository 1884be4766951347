"""The operator API: information location (情報所在管理) and the legal whitelist (別表第２).

Its credentials are named operators' tokens (`renkei operator add NAME`, renkei/operators.py).
The shared bootstrap token, RENKEI_OPERATOR_TOKEN or RENKEI_HOME/keys/operator-token generated
by `renkei init`, still works (logged as "bootstrap") until RENKEI_OPERATOR_BOOTSTRAP=off; one
shorter than 32 characters is refused (the hub does not start with one). Every change made here
is recorded in the operations log, in the change's own transaction, with the operator's name.
"""
from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from access_history import service as history
from access_history.models import OperationIn
from consent import service as consent
from consent.errors import WhitelistImportError
from consent.whitelist_io import entries_from_mappings
from discovery import service as location
from kernel.db import session_scope
from kernel.keys import private_directory
from kernel.settings import get_settings
from kernel.validate import bounded_text, control_problem
from kernel.web import DB
from renkei import operators

MIN_TOKEN_CHARS = 32


class OperatorTokenProblem(RuntimeError):
    """The operator token is missing, empty or too short to guard the operator API."""


def _token_path() -> Path:
    return get_settings().keys_dir / "operator-token"


def bootstrap_enabled() -> bool:
    """Whether the shared bootstrap token is still accepted (RENKEI_OPERATOR_BOOTSTRAP)."""
    return get_settings().operator_bootstrap


def operator_token() -> str:
    """The configured operator token (never created here), refused if missing or short."""
    if "RENKEI_OPERATOR_TOKEN" in os.environ:
        token, source = os.environ["RENKEI_OPERATOR_TOKEN"].strip(), "RENKEI_OPERATOR_TOKEN"
        fix = f"set it to at least {MIN_TOKEN_CHARS} random characters, e.g. `openssl rand -base64 33`"
    else:
        path = _token_path()
        source = str(path)
        fix = "delete it and run `renkei init` to generate one, or set RENKEI_OPERATOR_TOKEN"
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise OperatorTokenProblem(f"{source} is missing; run `renkei init` "
                                       "(or set RENKEI_OPERATOR_TOKEN)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise OperatorTokenProblem(f"{source} cannot be read ({exc}); {fix}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise OperatorTokenProblem(f"the operator token in {source} is {'empty' if not token else 'too short'} "
                                   f"(at least {MIN_TOKEN_CHARS} characters); {fix}")
    return token


def ensure_operator_token() -> None:
    """Generate RENKEI_HOME/keys/operator-token (0600) unless it or RENKEI_OPERATOR_TOKEN exists
    (`renkei init` and `renkei demo` only; an existing one, even a bad one, is never replaced)."""
    path = _token_path()
    if "RENKEI_OPERATOR_TOKEN" in os.environ or path.exists() or not bootstrap_enabled():
        return
    private_directory(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32))


@dataclass(frozen=True)
class Actor:
    """Who is acting on the operator API: a named operator, or "bootstrap"."""

    name: str
    client: str | None


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _authenticated_name(db: Session, authorization: str) -> tuple[str | None, str]:
    """The operator's name for an Authorization header, or None and why not."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None, "no bearer token"
    if len(token) > 1024 or control_problem(token):  # no credential looks like this: not even a lookup
        return None, "malformed token"
    if name := operators.authenticate(db_session=db, token=token):
        return name, "ok"
    if bootstrap_enabled():
        try:
            expected = operator_token()
        except OperatorTokenProblem:
            expected = None  # never compare against an empty or short token: nobody gets in
        if expected is not None and hmac.compare_digest(token.encode(), expected.encode()):
            return operators.BOOTSTRAP, "ok"
    return None, "unknown or revoked token"


def require_operator(request: Request, db: Session = DB,
                     authorization: str = Header("", description="Bearer <operator token>")) -> Actor:
    """FastAPI dependency: only a named operator (or the bootstrap token) may manage the
    federation's registry; a refusal is logged in its own transaction (the request's rolls back)."""
    name, reason = _authenticated_name(db, authorization)
    if name is not None:
        return Actor(name, client_address(request))
    with session_scope() as log_db:
        history.record_operation(db_session=log_db, operation=OperationIn(
            actor="unknown", channel="api", action="operator.auth_failed", target="operator-api",
            outcome="refused", client=_short(client_address(request)),
            detail={"reason": reason, "method": request.method, "path": request.url.path[:200]}))
    raise HTTPException(status_code=401, detail="operator token required",
                        headers={"WWW-Authenticate": "Bearer"})


def _short(value: str | None) -> str | None:
    return value[:64] if value else value


OPERATOR = Depends(require_operator)


def record(db: Session, actor: Actor, action: str, target: str, **detail: Any) -> None:
    """Record one change by `actor` in the operations log, in the change's transaction."""
    history.record_operation(db_session=db, operation=OperationIn(
        actor=actor.name, channel="api", action=action, target=target[:1024], client=_short(actor.client),
        detail=detail))


router = APIRouter(prefix="/api/operator", tags=["operator"], dependencies=[OPERATOR])

# each field as long as the column that stores it; no control characters (kernel.validate)
Urn = bounded_text(location.URN_MAX)
Party = bounded_text(location.PROVIDER_MAX)


class ServiceTypeIO(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urn: Urn
    name: bounded_text(location.SERVICE_NAME_MAX, min_length=0) = ""
    info_types: list[bounded_text(location.INFO_TYPE_CODE_MAX)] = Field(..., min_length=1, max_length=256)


class OfferingIO(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Party
    service_type: Urn
    endpoint: bounded_text(location.ENDPOINT_MAX)
    security_mechanism: bounded_text(location.MECHANISM_MAX) = location.BEARER_SAML


class WhitelistEntryIO(BaseModel):
    requester: str
    provider: str
    task_code: str
    task_name: str
    info_type_code: str
    info_type_name: str
    legal_basis: str
    consent: str = Field(..., description="required | override")


MAX_WHITELIST_ENTRIES = 10_000  # 別表第２ has a few hundred rows


def _bad(exc: Exception) -> HTTPException:
    return HTTPException(status_code=400, detail=str(exc))


@router.get("/service-types", response_model=list[ServiceTypeIO])
def list_service_types(db: Session = DB):
    return [ServiceTypeIO(urn=s.urn, name=s.name, info_types=s.info_type_codes)
            for s in location.list_service_types(db_session=db)]


@router.post("/service-types", response_model=ServiceTypeIO, status_code=201)
def add_service_type(body: ServiceTypeIO, db: Session = DB, actor: Actor = OPERATOR):
    try:
        location.add_service_type(db_session=db, urn=body.urn, name=body.name, info_types=body.info_types)
    except location.LocationError as exc:
        raise _bad(exc) from None
    record(db, actor, "service_type.add", body.urn, after={"name": body.name, "info_types": body.info_types})
    return body


@router.delete("/service-types", status_code=204)
def remove_service_type(urn: Annotated[Urn, Query()], db: Session = DB, actor: Actor = OPERATOR) -> None:
    offerings = len(location.list_offerings(db_session=db, service_type=urn, include_retired=True))
    try:
        location.remove_service_type(db_session=db, urn=urn)
    except location.LocationError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    record(db, actor, "service_type.remove", urn, before={"offerings": offerings})


@router.get("/offerings", response_model=list[OfferingIO])
def list_offerings(service_type: Urn | None = None, db: Session = DB):
    return [OfferingIO(provider=o.provider, service_type=o.service_type_urn, endpoint=o.endpoint,
                       security_mechanism=o.security_mechanism)
            for o in location.list_offerings(db_session=db, service_type=service_type)]


@router.post("/offerings", response_model=OfferingIO, status_code=201)
def add_offering(body: OfferingIO, db: Session = DB, actor: Actor = OPERATOR):
    try:
        location.add_offering(db_session=db, provider=body.provider, service_type=body.service_type,
                              endpoint=body.endpoint, security_mechanism=body.security_mechanism)
    except location.LocationError as exc:
        raise _bad(exc) from None
    record(db, actor, "offering.add", body.provider, service_type=body.service_type,
           after={"endpoint": body.endpoint, "security_mechanism": body.security_mechanism})
    return body


@router.delete("/offerings", status_code=204)
def remove_offering(provider: Annotated[Party, Query()], service_type: Annotated[Urn, Query()], db: Session = DB,
                    actor: Actor = OPERATOR) -> None:
    try:
        location.remove_offering(db_session=db, provider=provider, service_type=service_type)
    except location.LocationError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    record(db, actor, "offering.remove", provider, service_type=service_type)


@router.get("/whitelist", response_model=list[WhitelistEntryIO])
def export_whitelist(db: Session = DB):
    return [WhitelistEntryIO(**{f: getattr(e, f) for f in WhitelistEntryIO.model_fields})
            for e in consent.export_whitelist(db_session=db)]


@router.put("/whitelist", response_model=dict)
def import_whitelist(body: Annotated[list[dict[str, Any]], Body(max_length=MAX_WHITELIST_ENTRIES)],
                     replace: bool = False, db: Session = DB, actor: Actor = OPERATOR):
    """Import entries (all or nothing); with replace=true, entries not listed are dropped."""
    try:
        entries = entries_from_mappings(body, source="request body")
        summary = consent.import_whitelist(db_session=db, entries=entries, replace=replace)
    except WhitelistImportError as exc:
        raise HTTPException(status_code=400, detail=exc.problems) from None
    record(db, actor, "whitelist.replace" if replace else "whitelist.import", "whitelist",
           entries=len(entries), after={"created": summary.created, "updated": summary.updated,
                                        "unchanged": summary.unchanged, "removed": summary.removed})
    return {"created": summary.created, "updated": summary.updated, "unchanged": summary.unchanged,
            "removed": summary.removed}
