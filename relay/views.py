"""The relay's faces: SOAP 1.1 (envelope.wsdl) at /relay/soap and JSON at /api/relay (described in
/api/relay/openapi.json). A sender submits a signed envelope; by default the hub delivers it
before answering (synchronous), with `Prefer: respond-async` (RFC 7240) it answers 202 once the
envelope is durably queued. Errors are 4xx with a reason code; a SOAP Fault on the SOAP face."""
from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from federation import service as agencies
from kernel.db import session_scope
from kernel.jose import ClientAuthFailed, verify_client_assertion
from kernel.settings import Settings, get_settings
from kernel.web import DB
from relay import service
from relay.errors import EnvelopeMalformed, RelayRefused
from relay.service import SCHEMA_DIR, SubmitResult
from renkei_provider import envelope as env_format
from renkei_provider.envelope import SOAP11_NS, EnvelopeInvalid

router = APIRouter(tags=["relay"])
_XML = "text/xml; charset=utf-8"


# --- the JSON form, as OpenAPI schemas (renkei_provider.envelope.to_json / from_json) ------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HeaderJson(_Strict):
    receipt_number: str = Field(..., max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
                                description="受付番号: unique per sender; resubmitting it is idempotent")
    from_: str = Field(..., alias="from", max_length=1024, description="The sender's entity ID")
    to: str = Field(..., max_length=256, description="Logical destination")
    reply_to: str = Field(..., max_length=256, description="Logical address for answers")
    created: str = Field(..., description="xs:dateTime in UTC, whole seconds")
    sent: str | None = Field(None, description="Set by whoever sends it on")
    decision_id: str | None = Field(None, max_length=64, description="Set by the hub: the logged decision")


class AttributeJson(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,127}$",
                      description="ProcessType, MessageType, SourceMunicipality, DestinationMunicipality, "
                                  "Person, AssuranceLevel, or another name (carried untouched)")
    value: str = Field(..., max_length=1024)


class SignatureJson(_Strict):
    format: str = Field(..., pattern="^(xmldsig|jws)$")
    department: str = Field(..., max_length=1024, description="The issuing department (職責署名)")
    value: str = Field(..., description="jws: the compact JWS; xmldsig: base64 of the ds:Signature element")


class AttachmentJson(_Strict):
    id: str
    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,127}$")
    file_name: str = Field(..., max_length=255)
    media_type: str = Field(..., max_length=127)
    content: str = Field(..., description="Base64 (RFC 4648 §4, no line breaks)")
    signature: SignatureJson | None = None


class EnvelopeJson(_Strict):
    """The electronic envelope (電子封筒) in its JSON form; the same information as envelope.xsd."""

    id: str
    version: str = Field("1.0", pattern=r"^1\.0$")
    header: HeaderJson
    attributes: list[AttributeJson] = Field(..., min_length=1, max_length=64)
    attachments: list[AttachmentJson] = Field(default_factory=list, max_length=64)


class SubmitIn(_Strict):
    envelope: str = Field(..., max_length=2 * env_format.MAX_ENVELOPE_BYTES, description="Compact JWS (RS256/PS256/ES256) whose payload is an Envelope, "
                                           "signed with the sender's registered key")


class AckJson(BaseModel):
    status: str = Field(..., description="received | duplicate | rejected (the receiver's 受領Ack)")
    time: str | None
    remark: str


class DeliveryJson(BaseModel):
    to: str = Field(..., description="The logical destination")
    state: str = Field(..., description="queued | delivered | rejected | refused | expired")
    reason: str = Field(..., description="The decision's reason code (whitelist, the person's policy)")
    decision_id: str
    ack: AckJson | None
    attempts: int


class SubmitOut(BaseModel):
    receipt_number: str
    query_group_id: str
    received_at: str
    duplicate: bool
    deliveries: list[DeliveryJson]


class ResendIn(_Strict):
    sender: str = Field(..., max_length=1024)
    receipt_number: str = Field(..., max_length=64)


class ErrorOut(BaseModel):
    error: str
    message: str


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers={"Cache-Control": "no-store"})


def _deliver_now(settings: Settings, result: SubmitResult, db: Session) -> SubmitResult:
    """Synchronous delivery: try this envelope's rows now (those first in line for their receiver)."""
    if result.delivery_ids and not result.duplicate:
        scope = lambda: session_scope(settings.db_url)
        service.run_deliveries(session_scope=scope, settings=settings, only=result.delivery_ids)
        service.settle(session_scope=scope, ids=result.delivery_ids, timeout=settings.relay_timeout_seconds + 1)
        db.expire_all()
        return service.status(db_session=db, sender=result.sender, receipt_number=result.receipt_number)
    return result


def _asynchronous(prefer: str | None) -> bool:
    return "respond-async" in (prefer or "").lower()


@router.post("/api/relay/envelopes", response_model=SubmitOut, summary="Submit a signed envelope (JSON)",
             responses={202: {"model": SubmitOut}, 400: {"model": ErrorOut}, 401: {"model": ErrorOut},
                        404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut},
                        503: {"model": ErrorOut}})
def submit_json(body: SubmitIn, db: Session = DB,
                prefer: str | None = Header(None, description="respond-async: answer once queued")):
    """Verify the sender's signature, route, decide and log each destination, queue, and (unless
    asked to respond asynchronously) deliver before answering with each destination's 受領Ack."""
    settings = get_settings()
    try:
        result = service.receive_jws(db_session=db, settings=settings, token=body.envelope)
        if not _asynchronous(prefer):
            result = _deliver_now(settings, result, db)
    except RelayRefused as exc:
        return _error(exc.status, exc.code, exc.message)
    return JSONResponse(result.to_json(), status_code=202 if _asynchronous(prefer) and not result.duplicate else 200,
                        headers={"Cache-Control": "no-store"})


@router.post("/api/relay/validate", summary="Check an (unsigned) envelope against the schema",
             responses={400: {"model": ErrorOut}})
def validate(body: EnvelopeJson) -> dict:
    """For senders building envelopes: is this JSON form valid? Nothing is stored or sent."""
    try:
        env_format.from_json(body.model_dump(by_alias=True, exclude_none=True))
    except EnvelopeInvalid as exc:
        return _error(400, EnvelopeMalformed.code, str(exc))
    return {"valid": True}


def _client(request: Request, db: Session, authorization: str) -> str | JSONResponse:
    """The agency a client assertion (RFC 7523, audience this URL) authenticates."""
    scheme, _, jwt = authorization.partition(" ")
    if scheme.lower() != "bearer" or not jwt:
        return _error(401, "invalid_client", "send Authorization: Bearer <client assertion JWT>")

    def keys_for(entity_id: str):
        agency = agencies.lookup(db_session=db, entity_id=entity_id)
        return agency.signing_keys if agency else ()

    audience = get_settings().base_url.rstrip("/") + request.url.path
    try:
        claims = verify_client_assertion(jwt, keys_for=keys_for, audience=audience, db_session=db)
    except ClientAuthFailed as exc:
        return _error(401, "invalid_client", str(exc))
    return claims["iss"]


@router.get("/api/relay/envelopes/{receipt_number}", response_model=SubmitOut,
            summary="Where a submitted envelope stands (the sender's 受領Ack)",
            responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}})
def envelope_status(receipt_number: str, request: Request, db: Session = DB,
                    authorization: str = Header("", description="Bearer <client assertion of the sender>")):
    sender = _client(request, db, authorization)
    if isinstance(sender, JSONResponse):
        return sender
    try:
        result = service.status(db_session=db, sender=sender, receipt_number=receipt_number[:64])
    except RelayRefused as exc:
        return _error(exc.status, exc.code, exc.message)
    return JSONResponse(result.to_json(), headers={"Cache-Control": "no-store"})


@router.post("/api/relay/resend", summary="Ask for a kept envelope again (the receiver)",
             responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}})
def resend(body: ResendIn, request: Request, db: Session = DB,
           authorization: str = Header("", description="Bearer <client assertion of the receiver>")):
    """Queue again every envelope of (sender, receipt number) forwarded to the calling receiver,
    from the copy the hub keeps (RENKEI_RELAY_RETENTION_DAYS)."""
    receiver = _client(request, db, authorization)
    if isinstance(receiver, JSONResponse):
        return receiver
    try:
        count = service.resend(db_session=db, receiver=receiver, sender=body.sender,
                               receipt_number=body.receipt_number)
    except RelayRefused as exc:
        return _error(exc.status, exc.code, exc.message)
    return JSONResponse({"queued": count}, status_code=202)


# --- SOAP face ---------------------------------------------------------------------------------


def _soap(payload: etree._Element, status: int = 200) -> Response:
    return Response(env_format.soap_wrap(payload), status_code=status, media_type=_XML,
                    headers={"Cache-Control": "no-store"})


def soap_fault(code: str, message: str, *, client: bool = True) -> etree._Element:
    """A SOAP 1.1 Fault (§4.4) whose faultstring carries the reason code and message."""
    fault = etree.Element(f"{{{SOAP11_NS}}}Fault", nsmap={"soap": SOAP11_NS})
    etree.SubElement(fault, "faultcode").text = "soap:Client" if client else "soap:Server"
    etree.SubElement(fault, "faultstring").text = f"{code}: {message}"
    return fault


@router.post("/relay/soap", summary="Submit a signed envelope (SOAP 1.1, envelope.wsdl)",
             response_class=Response)
async def submit_soap(request: Request, db: Session = DB,
                      prefer: str | None = Header(None, description="respond-async: answer once queued")):
    settings = get_settings()
    declared = request.headers.get("content-length") or "0"
    if not declared.isdigit() or int(declared) > env_format.MAX_ENVELOPE_BYTES:
        return _soap(soap_fault(EnvelopeMalformed.code, "the envelope is too large"), 413)
    body = await request.body()
    if len(body) > env_format.MAX_ENVELOPE_BYTES:
        return _soap(soap_fault(EnvelopeMalformed.code, "the envelope is too large"), 413)
    from starlette.concurrency import run_in_threadpool

    def work() -> SubmitResult:
        result = service.receive_xml(db_session=db, settings=settings, data=body)
        return result if _asynchronous(prefer) else _deliver_now(settings, result, db)

    try:
        result = await run_in_threadpool(work)
    except RelayRefused as exc:
        return _soap(soap_fault(exc.code, exc.message, client=exc.status < 500), exc.status)
    return _soap(result.to_element(), 202 if _asynchronous(prefer) and not result.duplicate else 200)


# --- published descriptions --------------------------------------------------------------------


@router.get("/relay/envelope.xsd", include_in_schema=False)
def envelope_xsd() -> Response:
    return Response((SCHEMA_DIR / "envelope.xsd").read_bytes(), media_type="application/xml")


@router.get("/relay/envelope.wsdl", include_in_schema=False)
def envelope_wsdl() -> Response:
    return Response((SCHEMA_DIR / "envelope.wsdl").read_bytes(), media_type="application/xml")


def openapi_document() -> dict:
    """The relay's own OpenAPI 3 description (its JSON routes and the Envelope schema)."""
    return get_openapi(title="Renkei relay (電子封筒)", version="1.0",
                       description="Electronic envelopes relayed by the hub; the XML form is envelope.xsd.",
                       routes=[r for r in router.routes if getattr(r, "path", "").startswith("/api/relay")])


@router.get("/api/relay/openapi.json", include_in_schema=False)
def relay_openapi() -> JSONResponse:
    return JSONResponse(openapi_document())
