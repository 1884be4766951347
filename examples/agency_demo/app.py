"""A demo agency web app: a SAML service provider that signs people in through Renkei's IdP.

Agencies (転出元/転入先 municipalities, a health insurer, ...) run one of these each; it is also
the integration example, built on OneLogin's python3-saml. Routes:

  GET  /          home: who is signed in, as this agency sees them
  GET  /login     SP-initiated SSO: signed AuthnRequest over HTTP-Redirect (SAML bindings §3.4)
  POST /acs       AssertionConsumerService, HTTP-POST binding (SAML profiles §4.1.4)
  GET  /metadata  this SP's metadata, to register with the hub
  GET|POST /logout  SP-initiated Single Logout over HTTP-Redirect (SAML profiles §4.4)
  GET  /sls       SingleLogoutService: the hub's LogoutResponse (or LogoutRequest)
  POST /lookup    as requester: run one configured scenario through the hub's discovery API
                  and fetch each permitted provider's record (HTML, or JSON on Accept)
  POST /process   as the counter (窓口): file an application (e.g. 転入届) that starts a business
                  process flow at the hub for the signed-in person (HTML, or JSON on Accept)
  POST /provide/{name}  as provider: accept a hub token, answer the linked record (JSON)
  POST /relay/inbox  receive an envelope the hub relays (SOAP or JSON): verify the hub's and
                  each department's signature, dedupe by receipt number, answer the 受領Ack
  GET  /relay/inbox  the envelopes received so far (JSON, newest last)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import BackgroundTasks, FastAPI
from jinja2 import Environment, FileSystemLoader, select_autoescape
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.utils import OneLogin_Saml2_Error
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from agency_demo import counter
from agency_demo.config import AgencyConfig
from agency_demo.lookups import (
    LookupFailed,
    ProviderTokens,
    bootstrap_from_response,
    explain,
    load_private_key,
    record_for,
    run_lookup,
    token_text,
)
from agency_demo.saml import (
    MAX_MESSAGE_BYTES,
    PAIRWISE_ID_ATTRIBUTE,
    PERSISTENT,
    IdpMetadata,
    IdpMetadataError,
    redirect_message_too_large,
    sp_keys,
    sp_metadata,
    sp_settings,
    toolkit_request,
)
from agency_demo.sessions import SeenAssertions, SessionStore
from renkei_provider import (
    Disclosure,
    DisclosureReporter,
    EnvelopeReceiver,
    HubMetadataError,
    SqliteSeenStore,
    TokenRejected,
    hub_signing_certificates,
)

__all__ = ["AgencyConfig", "create_agency_app"]

# Session keys. The AuthnRequest/LogoutRequest IDs are kept in the browser's own session so a
# Response is accepted only by the browser that asked for it, and only once.
PENDING_AUTHN = "pending_authn_request_id"
PENDING_LOGOUT = "pending_logout_request_id"
LOGIN = "login"
# Kept server-side with the sign-in: the bootstrap token from the hub's assertion (what the
# agency presents to the discovery service while the person is present) and the CSRF token
# the lookup forms carry.
BOOTSTRAP = "bootstrap_token"
CSRF = "csrf_token"
MAX_PROVIDE_BODY = 256 * 1024
log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"

# Why /acs and /sls catch every exception: for hostile or broken input python3-saml raises
# whatever its layers raise (binascii, zlib, lxml, xmlsec and its own error classes). Each one
# means "reject this message", so it becomes a 400 with the reason, never a 500.


async def _report(reporter: DisclosureReporter) -> None:
    """Send what waits, after the answer left; a failed send stays queued for the next one."""
    result = await asyncio.to_thread(reporter.flush)
    if not result.accepted:
        log.warning("disclosure report not accepted (%s): %s", result.status, result.body)


def create_agency_app(config: AgencyConfig) -> FastAPI:
    """Build the agency's web app; creates its SP key pair on first run."""
    keypair = sp_keys(config)
    sp_part = sp_settings(config, keypair)
    metadata_xml = sp_metadata(config)
    idp = IdpMetadata(config, sp_part)
    sp_key = load_private_key(keypair.private_key_pem)
    provider_tokens = ProviderTokens(config, sp_key)
    # what this agency discloses under a token it reports back to the hub (アクセス履歴)
    disclosures = DisclosureReporter(report_url=f"{config.hub_base_url.rstrip('/')}/history/disclosures",
                                     agency_entity_id=config.entity_id, signing_key=sp_key)

    async def hub_token_metadata() -> str | bytes:
        """Whose signing keys provider tokens must carry: the hub's (IdP) metadata."""
        if config.hub_metadata_xml is not None:
            return config.hub_metadata_xml
        return await idp.document()

    sessions = SessionStore(
        # Cookies ignore ports, and several demo agencies share 127.0.0.1: one name each.
        cookie_name="agency_session_" + hashlib.sha256(config.entity_id.encode()).hexdigest()[:12],
        path=urlsplit(config.base_url).path or "/",
        secure=config.base_url.startswith("https://"),
    )
    seen_assertions = SeenAssertions()
    pages = _Pages(config)

    app = FastAPI(title=config.name, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.agency_config = config

    def refuse(
        request: Request,
        session: dict[str, Any],
        *,
        title_ja: str,
        title_en: str,
        reason: str | None,
        errors: list[str] | None = None,
        status_code: int = 400,
    ) -> Response:
        response = pages.render(
            "error.html",
            status_code=status_code,
            title_ja=title_ja,
            title_en=title_en,
            reason=reason,
            errors=errors or [],
        )
        _keep(sessions, request, response, session)  # a popped request ID stays spent
        return response

    @app.exception_handler(IdpMetadataError)
    async def hub_unavailable(request: Request, exc: IdpMetadataError) -> Response:
        return pages.render(
            "error.html",
            status_code=502,
            title_ja="連携ハブのメタデータを取得できません",
            title_en="The Renkei hub's IdP metadata is unavailable",
            reason=str(exc),
            errors=[],
        )

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        session = sessions.load(request)
        login = _current_login(session)
        other = sorted(
            (name, values)
            for name, values in (login or {}).get("attributes", {}).items()
            if name != PAIRWISE_ID_ATTRIBUTE
        )
        return pages.render(
            "home.html",
            login=login,
            other_attributes=other,
            scenarios=list(enumerate(config.scenarios)) if login else [],
            can_lookup=bool(login and session.get(BOOTSTRAP)),
            csrf_token=session.get(CSRF, ""),
            lookup_url=config.lookup_url,
            provided=[(urn, config.provide_url(urn)) for urn in config.provides],
            processes=list(enumerate(config.processes)) if login else [],
        )

    @app.get("/metadata")
    async def metadata() -> Response:
        return Response(metadata_xml, media_type="application/samlmetadata+xml")

    @app.get("/login")
    async def login(request: Request) -> Response:
        """Send the browser to the hub with an AuthnRequest (signed on the query string)."""
        auth = OneLogin_Saml2_Auth(toolkit_request(config.login_url, request), await idp.settings())
        # RelayState is only informative: after /acs we always go home, never to a URL the
        # request carried (that would be an open redirect).
        redirect_url = auth.login(return_to=config.home_url)
        session = sessions.load(request)
        session[PENDING_AUTHN] = auth.get_last_request_id()
        response = RedirectResponse(redirect_url, status_code=302)
        sessions.save(request, response, session)
        return response

    @app.post("/acs")
    async def assertion_consumer_service(request: Request) -> Response:
        """Accept the hub's signed Response and start this agency's session for the person."""
        session = sessions.load(request)
        request_id = session.pop(PENDING_AUTHN, None)  # one-time, whatever happens next

        def fail(reason: str | None, errors: list[str] | None = None) -> Response:
            return refuse(
                request,
                session,
                title_ja="ログインできませんでした",
                title_en="Sign-in failed",
                reason=reason,
                errors=errors,
            )

        if int(request.headers.get("content-length") or 0) > 2 * MAX_MESSAGE_BYTES:
            return fail("the POST body is too large for a SAML Response")
        saml_response = (await request.form()).get("SAMLResponse")
        if not isinstance(saml_response, str) or not saml_response:
            return fail("no SAMLResponse field in the POST (HTTP-POST binding expected)")
        if len(saml_response) > MAX_MESSAGE_BYTES:
            return fail("the SAMLResponse is too large")
        if request_id is None:
            # Unsolicited (IdP-initiated) responses are refused: without a request of our own
            # to bind to, a response could be injected into someone else's browser.
            return fail(
                "no sign-in is in progress in this browser (start at /login; if you did, the "
                "session cookie did not come back, e.g. the hub is on another site over http)"
            )

        auth = OneLogin_Saml2_Auth(
            toolkit_request(config.acs_url, request, {"SAMLResponse": saml_response}),
            await idp.settings(),
        )
        try:
            # Checks signature (against the hub's metadata certificates only), schema,
            # Destination, Recipient, Audience, Issuer, time window and InResponseTo.
            auth.process_response(request_id=request_id)
        except Exception as exc:  # noqa: BLE001 - any toolkit error is a rejection
            return fail(
                auth.get_last_error_reason() or str(exc), auth.get_errors() or ["invalid_response"]
            )
        if auth.get_errors() or not auth.is_authenticated():
            return fail(auth.get_last_error_reason(), auth.get_errors())

        problem = _agency_checks(auth, request_id, seen_assertions)
        if problem:
            return fail(problem, ["invalid_response"])

        bootstrap = bootstrap_from_response(
            auth.get_last_response_xml(),
            metadata_xml=await idp.document(),
            assertion_id=auth.get_last_assertion_id(),
        )
        response = RedirectResponse(config.home_url, status_code=303)
        sessions.save(
            request,
            response,
            {LOGIN: _login_record(auth), BOOTSTRAP: bootstrap, CSRF: secrets.token_urlsafe(32)},
            renew=True,
        )
        return response

    @app.post("/lookup")
    async def lookup(request: Request) -> Response:
        """Run one scenario: discovery query at the hub, then each permitted provider."""
        wants_json = "application/json" in request.headers.get("accept", "")
        session = sessions.load(request)

        def fail(status: int, code: str, message: str) -> Response:
            if wants_json:
                return JSONResponse({"error": code, "message": message}, status_code=status,
                                    headers={"Cache-Control": "no-store"})
            return pages.render("error.html", status_code=status, title_ja="照会できませんでした",
                                title_en="The lookup failed", reason=f"{code}: {message}", errors=[])

        form = await _signed_in_form(request, session, fail)
        if isinstance(form, Response):
            return form
        index = form.get("scenario")
        if not isinstance(index, str) or not index.isdigit() or int(index) >= len(config.scenarios):
            return fail(400, "UNKNOWN_SCENARIO", "no such lookup")
        scenario = config.scenarios[int(index)]
        if not session.get(BOOTSTRAP):
            return fail(409, "NO_BOOTSTRAP_TOKEN",
                        "the hub's sign-in carried no discovery token; sign in again")
        try:
            results = await run_lookup(config, sp_key, bootstrap_token=session[BOOTSTRAP],
                                       scenario=scenario)
        except LookupFailed as exc:
            return fail(exc.status, exc.code, exc.message)
        if wants_json:
            return JSONResponse([r.to_json() for r in results], headers={"Cache-Control": "no-store"})
        title, service_type, task, info_type, expect = scenario
        return pages.render(
            "lookup.html",
            title=title,
            service_type=service_type,
            task=task,
            info_type=info_type,
            expect=expect,
            expect_text=explain(expect) if expect else None,
            as_expected=any(r.reason == expect for r in results) if expect else None,
            results=results,
        )

    @app.post("/process")
    async def file_application(request: Request) -> Response:
        """The counter: the signed-in resident files an application that starts a process."""
        wants_json = "application/json" in request.headers.get("accept", "")
        session = sessions.load(request)

        def fail(status: int, code: str, message: str) -> Response:
            if wants_json:
                return JSONResponse({"error": code, "message": message}, status_code=status,
                                    headers={"Cache-Control": "no-store"})
            return pages.render("error.html", status_code=status, title_ja="申請を受け付けられませんでした",
                                title_en="The application was not accepted", reason=f"{code}: {message}", errors=[])

        form = await _signed_in_form(request, session, fail)
        if isinstance(form, Response):
            return form
        index = form.get("process")
        if not isinstance(index, str) or not index.isdigit() or int(index) >= len(config.processes):
            return fail(400, "UNKNOWN_PROCESS", "no such application")
        address = form.get("new_address")
        if not isinstance(address, str) or not address.strip() or len(address) > counter.ADDRESS_MAX \
                or any(ord(c) < 32 for c in address):
            return fail(400, "BAD_ADDRESS", f"give the new address (at most {counter.ADDRESS_MAX} characters)")
        if not session.get(BOOTSTRAP):
            return fail(409, "NO_BOOTSTRAP_TOKEN", "the hub's sign-in carried no discovery token; sign in again")
        process_id, title = config.processes[int(index)]
        try:
            run = await counter.start_process(config, sp_key, bootstrap_token=session[BOOTSTRAP],
                                              process_id=process_id,
                                              application={"新住所 (new address)": address.strip()})
        except LookupFailed as exc:
            return fail(exc.status, exc.code, exc.message)
        if wants_json:
            return JSONResponse(run, headers={"Cache-Control": "no-store"})
        return pages.render("process.html", title=title, run=run, explain=explain)

    @app.post("/provide/{name}")
    async def provide(name: str, request: Request, background: BackgroundTasks) -> Response:
        """Answer a provider token: hub-signed, for us and this endpoint, in time, once."""

        def answer(status: int, code: str, message: str) -> Response:
            return JSONResponse({"error": code, "message": message}, status_code=status,
                                headers={"Cache-Control": "no-store"})

        if name not in provider_tokens.by_name:
            return answer(404, "UNKNOWN_SERVICE", "this agency provides no such service")
        if int(request.headers.get("content-length") or 0) > MAX_PROVIDE_BODY:
            return answer(413, "TOO_LARGE", "the request body is too large")
        raw = await request.body()
        if len(raw) > MAX_PROVIDE_BODY:
            return answer(413, "TOO_LARGE", "the request body is too large")
        try:
            token = token_text(json.loads(raw))
        except ValueError:
            token = None
        if token is None:
            return answer(400, "BAD_REQUEST", 'send JSON {"token": <base64 of the hub token>}')
        try:
            verifier = provider_tokens.verifier(name, await hub_token_metadata())
        except (IdpMetadataError, HubMetadataError) as exc:
            return answer(502, "HUB_METADATA_UNAVAILABLE", str(exc))
        try:
            accepted = verifier.verify(token)
        except TokenRejected as exc:
            return answer(exc.status, exc.code, str(exc))
        if accepted.service_type != provider_tokens.by_name[name]:
            return answer(403, "SERVICE_TYPE_MISMATCH", "the token is for another service type")
        record = record_for(config, accepted, name)
        log.info("disclosure %s to %s for task %s: %s", accepted.decision_id, accepted.requester,
                 accepted.task, "record" if record is not None else "no record")
        if record is None:
            return answer(404, "NO_RECORD", "this agency holds no record for the person")
        disclosures.record(Disclosure.of(accepted))
        background.add_task(_report, disclosures)
        return JSONResponse(
            {"provider": config.entity_id, "provider_name": config.name,
             "service_type": accepted.service_type, "decision_id": accepted.decision_id,
             "record": record},
            headers={"Cache-Control": "no-store"},
        )

    inbox = _Inbox(config)

    @app.post("/relay/inbox")
    async def relay_inbox(request: Request) -> Response:
        """An envelope relayed by the hub: verified, deduplicated, acknowledged (受領Ack)."""
        body = await request.body()
        if len(body) > MAX_ENVELOPE_BODY:
            return JSONResponse({"error": "TOO_LARGE", "message": "the envelope is too large"}, status_code=413)
        try:
            receiver = inbox.receiver(await hub_token_metadata())
        except (IdpMetadataError, HubMetadataError) as exc:
            return JSONResponse({"error": "HUB_METADATA_UNAVAILABLE", "message": str(exc)}, status_code=502)
        outcome = receiver.receive(body, request.headers.get("content-type", ""))
        if outcome.envelope is not None:
            inbox.keep(outcome.envelope)
        log.info("envelope %s: %s %s", outcome.ack.receipt_number, outcome.ack.status, outcome.ack.remark)
        return Response(outcome.body, media_type=outcome.content_type, headers={"Cache-Control": "no-store"})

    @app.get("/relay/inbox")
    async def relay_inbox_list() -> Response:
        return JSONResponse({"envelopes": inbox.received}, headers={"Cache-Control": "no-store"})

    @app.api_route("/logout", methods=["GET", "POST"])
    async def logout(request: Request) -> Response:
        """Sign out here, then ask the hub to end its session too (LogoutRequest)."""
        session = sessions.load(request)
        login = _current_login(session)
        if login is None:
            return RedirectResponse(config.home_url, status_code=303)
        auth = OneLogin_Saml2_Auth(
            toolkit_request(config.logout_url, request), await idp.settings()
        )
        try:
            redirect_url = auth.logout(
                return_to=config.home_url,
                name_id=login["name_id"],
                name_id_format=login["name_id_format"],
                nq=login["name_qualifier"],
                spnq=login["sp_name_qualifier"],
                session_index=login["session_index"],
            )
        except OneLogin_Saml2_Error:  # the hub's metadata has no SingleLogoutService
            response = pages.render(
                "signed_out.html",
                note="この機関からはログアウトしました（連携ハブは一括ログアウトに対応していません）。",
            )
            sessions.end(request, response)
            return response
        # The local sign-in ends now, even if the hub never answers.
        response = RedirectResponse(redirect_url, status_code=303)
        sessions.save(request, response, {PENDING_LOGOUT: auth.get_last_request_id()})
        return response

    @app.get("/sls")
    async def single_logout_service(request: Request) -> Response:
        """The hub's answer to our LogoutRequest, or its own LogoutRequest (IdP-initiated)."""
        session = sessions.load(request)
        request_id = session.pop(PENDING_LOGOUT, None)

        def fail(reason: str | None, errors: list[str] | None = None) -> Response:
            return refuse(
                request,
                session,
                title_ja="ログアウト処理に失敗しました",
                title_en="Single logout failed",
                reason=reason,
                errors=errors,
            )

        message = request.query_params.get("SAMLResponse") or request.query_params.get(
            "SAMLRequest"
        )
        if not message:
            return fail(
                "no SAMLResponse or SAMLRequest in the query (HTTP-Redirect binding expected)"
            )
        if redirect_message_too_large(message):
            return fail("the SAML message is too large")

        auth = OneLogin_Saml2_Auth(toolkit_request(config.sls_url, request), await idp.settings())
        try:
            # Checks the Redirect-binding signature over the raw query (when present),
            # Issuer, Destination, InResponseTo and the status.
            hub_redirect = auth.process_slo(keep_local_session=True, request_id=request_id)
        except Exception as exc:  # noqa: BLE001 - any toolkit error is a rejection
            return fail(
                auth.get_last_error_reason() or str(exc), auth.get_errors() or ["invalid_logout"]
            )
        if auth.get_errors():
            return fail(auth.get_last_error_reason(), auth.get_errors())

        if hub_redirect:  # IdP-initiated: answer with our (signed) LogoutResponse
            response: Response = RedirectResponse(hub_redirect, status_code=303)
        else:
            response = pages.render("signed_out.html", note=None)
        sessions.end(request, response)
        return response

    return app


MAX_ENVELOPE_BODY = 32 * 1024 * 1024


class _Inbox:
    """The agency's envelope receiver (renkei_provider.EnvelopeReceiver) with the hub's keys
    from its metadata, receipt numbers kept in a SQLite file beside the agency's keys."""

    KEEP = 50

    def __init__(self, config: AgencyConfig):
        from cryptography import x509

        self._config = config
        self._departments = {
            name: [x509.load_pem_x509_certificate(pem.encode()) for pem in pems]
            for name, pems in (config.departments or {}).items()
        }
        config.key_dir.mkdir(parents=True, exist_ok=True)
        self._seen = SqliteSeenStore(config.key_dir / "envelopes-seen.sqlite3")
        self._cached: tuple[str | bytes, EnvelopeReceiver] | None = None
        self.received: list[dict[str, Any]] = []

    def receiver(self, hub_metadata: str | bytes) -> EnvelopeReceiver:
        if self._cached is None or self._cached[0] != hub_metadata:
            _, certs = hub_signing_certificates(hub_metadata, role="discovery")
            self._cached = (hub_metadata, EnvelopeReceiver(hub_keys=certs, department_keys=self._departments,
                                                           seen=self._seen))
        return self._cached[1]

    def keep(self, envelope) -> None:
        self.received.append({
            "receipt_number": envelope.header.receipt_number, "from": envelope.header.sender,
            "to": envelope.header.to, "decision_id": envelope.header.decision_id,
            "attributes": [{"name": n, "value": v} for n, v in envelope.attributes],
            "attachments": [{"name": a.name, "file_name": a.file_name, "media_type": a.media_type,
                             "signed_by": a.signature.department if a.signature else None}
                            for a in envelope.attachments],
        })
        del self.received[:-self.KEEP]


def _agency_checks(auth: OneLogin_Saml2_Auth, request_id: str, seen: SeenAssertions) -> str | None:
    """What this agency requires beyond the toolkit's checks; a reason, or None if all hold."""
    # The toolkit compares InResponseTo only when the Response carries one; we require it.
    if auth.get_last_response_in_response_to() != request_id:
        return f"the Response does not answer this browser's AuthnRequest {request_id}"
    # Records are keyed on the pairwise pseudonym, so only the persistent format will do.
    if auth.get_nameid_format() != PERSISTENT:
        return f"NameID format {auth.get_nameid_format()} is not {PERSISTENT}"
    if not seen.first_use(
        auth.get_last_assertion_id(), not_on_or_after=auth.get_last_assertion_not_on_or_after()
    ):
        return f"assertion {auth.get_last_assertion_id()} was already used (replay)"
    return None


def _login_record(auth: OneLogin_Saml2_Auth) -> dict[str, Any]:
    """What the agency keeps about a sign-in; the NameID is the key to its own records."""
    attributes = auth.get_attributes()
    return {
        "name_id": auth.get_nameid(),
        "name_id_format": auth.get_nameid_format(),
        "name_qualifier": auth.get_nameid_nq(),
        "sp_name_qualifier": auth.get_nameid_spnq(),
        "pairwise_id": (attributes.get(PAIRWISE_ID_ATTRIBUTE) or [None])[0],
        "attributes": attributes,
        "authn_contexts": auth.get_last_authn_contexts(),
        "session_index": auth.get_session_index(),
        "session_not_on_or_after": auth.get_session_expiration(),
    }


async def _signed_in_form(request: Request, session: dict[str, Any], fail) -> Any:
    """The posted form of a signed-in person, from this agency's own page (CSRF token), or the
    `fail` answer saying why not."""
    if _current_login(session) is None:
        return fail(401, "NOT_SIGNED_IN", "sign in first")
    if int(request.headers.get("content-length") or 0) > 4096:
        return fail(413, "TOO_LARGE", "the form is too large")
    form = await request.form()
    given = form.get("csrf_token")
    expected = session.get(CSRF)
    if not isinstance(given, str) or not expected or not hmac.compare_digest(given, expected):
        return fail(403, "CSRF", "the form did not come from this agency's page; reload it")
    return form


def _current_login(session: dict[str, Any]) -> dict[str, Any] | None:
    login = session.get(LOGIN)
    if (
        login
        and login.get("session_not_on_or_after")
        and login["session_not_on_or_after"] <= time.time()
    ):
        return None  # the hub said the session ends here (SessionNotOnOrAfter)
    return login


def _keep(
    sessions: SessionStore, request: Request, response: Response, session: dict[str, Any]
) -> None:
    if session:
        sessions.save(request, response, session)
    else:
        sessions.end(request, response)


class _Pages:
    """HTML pages, autoescaped, with the links every page needs."""

    def __init__(self, config: AgencyConfig):
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"])
        )
        self._common = {
            "agency_name": config.name,
            "home_url": config.home_url,
            "login_url": config.login_url,
            "logout_url": config.logout_url,
            "metadata_url": config.metadata_url,
        }

    def render(self, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self._env.get_template(template).render(**self._common, **context)
        return HTMLResponse(html, status_code=status_code)
