"""The access history's public face: checkpoints and proofs, in the formats verifiers speak.

Nothing here holds personal data (leaves are salted commitments), so it is served to anyone:
`GET /history/checkpoint` (a C2SP tlog-checkpoint signed note), `/history/checkpoint.vkey`
(its note verifier key) and RFC 9162 inclusion and consistency proofs as `{"hashes": [...]}`.
Agencies report what they disclosed to `POST /history/disclosures` (reports.py).
"""
from __future__ import annotations

import base64

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.orm import Session

from access_history import ledger, reports, service
from access_history.models import ACCESS_LOG, LOG_NAMES
from federation import service as agencies
from kernel.keys import keystore
from kernel.settings import get_settings
from kernel.web import DB

router = APIRouter(prefix="/history", tags=["history"])
MAX_INDEX = 2**62


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": "invalid_request", "message": message}, status)


def _log_name(log: str) -> str | None:
    return log if log in LOG_NAMES else None


@router.get("/checkpoint", response_class=PlainTextResponse)
def checkpoint(db_session: Session = DB, log: str = Query(ACCESS_LOG, max_length=16)):
    """The newest signed checkpoint of the log (C2SP tlog-checkpoint)."""
    if _log_name(log) is None:
        return _problem(404, "no such log")
    latest = ledger.latest_checkpoint(db_session=db_session, log=log)
    if latest is None:
        return _problem(404, "the log has no checkpoint yet")
    return PlainTextResponse(latest.note, headers={"Cache-Control": "no-cache"})


@router.get("/checkpoint.vkey", response_class=PlainTextResponse)
def checkpoint_vkey(log: str = Query(ACCESS_LOG, max_length=16)):
    """The note verifier key that checks the log's checkpoints."""
    if _log_name(log) is None:
        return _problem(404, "no such log")
    settings = get_settings()
    signer = service.log_signer(keys=keystore(), scope=settings.scope, log=log)
    return PlainTextResponse(signer.verifier_key + "\n")


def _hashes(values: list[bytes]) -> dict:
    return {"hashes": [base64.b64encode(v).decode() for v in values]}


@router.get("/proof/inclusion")
def inclusion(db_session: Session = DB, index: int = Query(..., ge=0, le=MAX_INDEX),
              size: int = Query(..., ge=1, le=MAX_INDEX), log: str = Query(ACCESS_LOG, max_length=16)):
    """RFC 9162 §2.1.3 inclusion proof of leaf `index` in the tree of `size` leaves."""
    if _log_name(log) is None:
        return _problem(404, "no such log")
    if index >= size:
        return _problem(400, "index must be smaller than size")
    if size > ledger.integrated_size(db_session=db_session, log=log):
        return _problem(404, "the log is not that large yet")
    return _hashes(ledger.inclusion_proof(db_session=db_session, log=log, index=index, size=size))


@router.get("/proof/consistency")
def consistency(db_session: Session = DB, from_size: int = Query(..., alias="from", ge=1, le=MAX_INDEX),
                to_size: int = Query(..., alias="to", ge=1, le=MAX_INDEX),
                log: str = Query(ACCESS_LOG, max_length=16)):
    """RFC 9162 §2.1.4 consistency proof from the tree of `from` leaves to that of `to`."""
    if _log_name(log) is None:
        return _problem(404, "no such log")
    if from_size > to_size:
        return _problem(400, "from must not exceed to")
    if to_size > ledger.integrated_size(db_session=db_session, log=log):
        return _problem(404, "the log is not that large yet")
    return _hashes(ledger.consistency_proof(db_session=db_session, log=log, old_size=from_size,
                                            new_size=to_size))


def disclosures_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/history/disclosures"


@router.post("/disclosures")
async def disclosures(request: Request, db_session: Session = DB):
    """An agency's signed batch of disclosure records (`renkei_provider.DisclosureReporter`)."""
    if int(request.headers.get("content-length") or 0) > reports.MAX_BATCH_BYTES:
        return _problem(413, "the batch is too large")
    body = await request.body()
    if len(body) > reports.MAX_BATCH_BYTES:
        return _problem(413, "the batch is too large")
    # the database work runs off the event loop: a report that waits for a concurrent one's row
    # (a resend of the same batch) must not stop the loop that would let the other commit
    return await run_in_threadpool(_receive, db_session, body)


def _receive(db_session: Session, body: bytes):
    try:
        token = body.decode("ascii").strip()
        issuer = reports.unverified_issuer(token)
    except (UnicodeDecodeError, reports.ReportRefused) as exc:
        return _problem(400, str(exc) if isinstance(exc, reports.ReportRefused) else "not a compact JWS")
    agency = agencies.lookup(db_session=db_session, entity_id=issuer)
    if agency is None or not agency.signing_keys:
        return JSONResponse({"error": "invalid_client", "message": "unknown reporting agency"}, 401)
    try:
        result = reports.receive_batch(db_session=db_session, token=token, agency=agency.entity_id,
                                       agency_keys=agency.signing_keys,
                                       audience=disclosures_url(get_settings().base_url))
    except reports.ReportRefused as exc:
        return JSONResponse({"error": "invalid_request", "message": str(exc)}, 400)
    return result.as_dict()
