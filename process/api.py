"""Starting a process run over HTTP: the trigger of an application at an agency's counter
(窓口). The agency authenticates as for discovery (RFC 7523 client assertion) and names the
person as it would to discovery; the hub runs the process and answers with each step's
outcome and what the agency, as requester, received."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from discovery import pipeline
from discovery.api import PersonIn
from discovery.errors import DiscoveryRefused
from federation import service as agencies
from kernel.db import session_scope, utcnow
from kernel.jose import ClientAuthFailed, verify_client_assertion
from kernel.keys import keystore
from kernel.settings import Settings, get_settings
from kernel.validate import bounded_text
from kernel.web import DB
from process import engine, service
from process.definition import PROCESS_ID_MAX

router = APIRouter(prefix="/api/process", tags=["process"])


class StartIn(BaseModel):
    process: bounded_text(PROCESS_ID_MAX) = Field(..., description="The process definition's ID")
    channel: str = Field("counter", pattern="^(counter|portal|life_event)$")
    person: PersonIn
    application: dict[str, Any] | None = Field(
        None, description="The application as filed (e.g. the new address); relayed notices carry it")


def start_url() -> str:
    return get_settings().base_url.rstrip("/") + "/api/process/start"


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers={"Cache-Control": "no-store"})


def run_json(view: engine.RunView, delivered: dict[str, Any], requester: str) -> dict[str, Any]:
    return {
        "instance_id": view.instance_id, "query_group_id": view.query_group_id, "process": view.process_id,
        "version": view.version, "status": str(view.status),
        "steps": [{"activity": s.activity_id, "name": s.name, "status": str(s.status), "reason": s.reason,
                   "decision_ids": list(s.decision_ids),
                   # only what this agency itself received as requester
                   "received": delivered.get(s.activity_id) if s.requester == requester else None}
                  for s in view.steps],
    }


@router.post("/start", summary="Start a process run (an application at a counter)")
async def start(body: StartIn, authorization: str = Header("", description="Bearer <client assertion JWT>"),
                db: Session = DB):
    """Start the operating version of a process for the person and run it to its end."""
    settings = get_settings()
    scheme, _, jwt = authorization.partition(" ")
    if scheme.lower() != "bearer" or not jwt:
        return _error(401, "invalid_client", "send Authorization: Bearer <client assertion JWT>")
    # the database work runs off the event loop (as in the sync routes), and so does the run
    admitted = await run_in_threadpool(_admit, db, settings, body, jwt)
    if isinstance(admitted, JSONResponse):
        return admitted
    instance_id, requester = admitted
    delivered: dict[str, Any] = {}
    view = await run_in_threadpool(lambda: engine.run(session_scope=lambda: session_scope(settings.db_url),
                                                      settings=settings, instance_id=instance_id,
                                                      delivered=delivered))
    return JSONResponse(run_json(view, delivered, requester.entity_id), headers={"Cache-Control": "no-store"})


def _admit(db: Session, settings: Settings, body: StartIn, jwt: str):
    """Authenticate the trigger, check the process and the person, and start the run: its id
    and the requester, or the error answer."""

    def keys_for(entity_id: str):
        agency = agencies.lookup(db_session=db, entity_id=entity_id)
        return agency.signing_keys if agency else ()

    try:
        claims = verify_client_assertion(jwt, keys_for=keys_for, audience=start_url(), db_session=db)
    except ClientAuthFailed as exc:
        return _error(401, "invalid_client", str(exc))
    requester = agencies.lookup(db_session=db, entity_id=claims["iss"])
    try:
        installed = service.operating(db_session=db, process_id=body.process)
    except service.UnknownProcess as exc:
        return _error(404, "UNKNOWN_PROCESS", str(exc))
    except service.NotOperating as exc:
        return _error(409, "PROCESS_NOT_OPERATING", str(exc))
    if installed.definition.trigger.requester != requester.entity_id:
        return _error(403, "NOT_THE_TRIGGER", "this process is not started by your agency")
    if body.person.staff_assertion:
        return _error(400, "BAD_REQUEST", "name the person by a bootstrap token")
    try:
        subject = pipeline.resolve_subject(
            db_session=db, settings=settings, keys=keystore(), requester=requester,
            person=pipeline.PersonRef(bootstrap_token=body.person.bootstrap_token, pseudonym=body.person.pseudonym),
            now=utcnow())
    except DiscoveryRefused as exc:
        return _error(exc.status, exc.code, exc.message)
    try:
        instance_id = engine.start(db_session=db, process_id=body.process, person_key=subject.person_key,
                                   started_by=requester.entity_id, channel=body.channel,
                                   application=body.application)
    except service.ProcessError as exc:
        return _error(400, "BAD_TRIGGER", str(exc))
    return instance_id, requester
