"""Operator API for information location (情報所在管理) and the legal whitelist (別表第２)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from consent import service as consent
from consent.errors import WhitelistImportError
from consent.whitelist_io import entries_from_mappings
from discovery import service as location
from renkei.operator import require_operator
from renkei.web import DB

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
