"""The operator API: information location (情報所在管理) and the legal whitelist (別表第２).

Its credential is a bearer token from RENKEI_OPERATOR_TOKEN, or one generated into
RENKEI_HOME/keys/operator-token by `renkei init`; a token shorter than 32 characters is refused
(the hub does not start with one).
"""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from consent import service as consent
from consent.errors import WhitelistImportError
from consent.whitelist_io import entries_from_mappings
from discovery import service as location
from kernel.keys import private_directory
from kernel.settings import get_settings
from kernel.web import DB

MIN_TOKEN_CHARS = 32


class OperatorTokenProblem(RuntimeError):
    """The operator token is missing, empty or too short to guard the operator API."""


def _token_path() -> Path:
    return get_settings().keys_dir / "operator-token"


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
    if "RENKEI_OPERATOR_TOKEN" in os.environ or path.exists():
        return
    private_directory(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32))


def require_operator(authorization: str = Header("", description="Bearer <operator token>")) -> None:
    """FastAPI dependency: only the operator may manage the federation's registry."""
    scheme, _, token = authorization.partition(" ")
    try:
        expected = operator_token()
    except OperatorTokenProblem:
        expected = None  # never compare against an empty or short token: nobody gets in
    if scheme.lower() != "bearer" or expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="operator token required",
                            headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(prefix="/api/operator", tags=["operator"], dependencies=[Depends(require_operator)])


class ServiceTypeIO(BaseModel):
    urn: str
    name: str = ""
    info_types: list[str] = Field(..., min_length=1)


class OfferingIO(BaseModel):
    provider: str
    service_type: str
    endpoint: str
    security_mechanism: str = location.BEARER_SAML


class WhitelistEntryIO(BaseModel):
    requester: str
    provider: str
    task_code: str
    task_name: str
    info_type_code: str
    info_type_name: str
    legal_basis: str
    consent: str = Field(..., description="required | override")


def _bad(exc: Exception) -> HTTPException:
    return HTTPException(status_code=400, detail=str(exc))


@router.get("/service-types", response_model=list[ServiceTypeIO])
def list_service_types(db: Session = DB):
    return [ServiceTypeIO(urn=s.urn, name=s.name, info_types=s.info_type_codes)
            for s in location.list_service_types(db_session=db)]


@router.post("/service-types", response_model=ServiceTypeIO, status_code=201)
def add_service_type(body: ServiceTypeIO, db: Session = DB):
    try:
        location.add_service_type(db_session=db, urn=body.urn, name=body.name, info_types=body.info_types)
    except location.LocationError as exc:
        raise _bad(exc) from None
    return body


@router.delete("/service-types", status_code=204)
def remove_service_type(urn: str = Query(...), db: Session = DB) -> None:
    try:
        location.remove_service_type(db_session=db, urn=urn)
    except location.LocationError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


@router.get("/offerings", response_model=list[OfferingIO])
def list_offerings(service_type: str | None = None, db: Session = DB):
    return [OfferingIO(provider=o.provider, service_type=o.service_type_urn, endpoint=o.endpoint,
                       security_mechanism=o.security_mechanism)
            for o in location.list_offerings(db_session=db, service_type=service_type)]


@router.post("/offerings", response_model=OfferingIO, status_code=201)
def add_offering(body: OfferingIO, db: Session = DB):
    try:
        location.add_offering(db_session=db, provider=body.provider, service_type=body.service_type,
                              endpoint=body.endpoint, security_mechanism=body.security_mechanism)
    except location.LocationError as exc:
        raise _bad(exc) from None
    return body


@router.delete("/offerings", status_code=204)
def remove_offering(provider: str = Query(...), service_type: str = Query(...), db: Session = DB) -> None:
    try:
        location.remove_offering(db_session=db, provider=provider, service_type=service_type)
    except location.LocationError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


@router.get("/whitelist", response_model=list[WhitelistEntryIO])
def export_whitelist(db: Session = DB):
    return [WhitelistEntryIO(**{f: getattr(e, f) for f in WhitelistEntryIO.model_fields})
            for e in consent.export_whitelist(db_session=db)]


@router.put("/whitelist", response_model=dict)
def import_whitelist(body: list[dict], replace: bool = False, db: Session = DB):
    """Import entries (all or nothing); with replace=true, entries not listed are dropped."""
    try:
        entries = entries_from_mappings(body, source="request body")
        summary = consent.import_whitelist(db_session=db, entries=entries, replace=replace)
    except WhitelistImportError as exc:
        raise HTTPException(status_code=400, detail=exc.problems) from None
    return {"created": summary.created, "updated": summary.updated, "unchanged": summary.unchanged,
            "removed": summary.removed}
