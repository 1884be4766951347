"""HTTP routes of the OpenID Connect provider: discovery, JWKS, authorization (with the IdP's
login pages and session), token, UserInfo and RP-initiated logout. Thin: Authlib's server
(`idp.oidc.server`) decides; these read the request and write its answer."""
from __future__ import annotations

import json
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oidc.rpinitiated import EndSessionEndpoint
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from idp import saml
from idp import service as idp_service
from idp.oidc import keys as op_keys
from idp.oidc import logout
from idp.oidc.models import OidcPending
from idp.oidc.server import (
    ACR_VALUES_MAX,
    SCOPES,
    STATE_MAX,
    Context,
    Grantee,
    HubRequest,
    HubServer,
    Reply,
    endpoint,
    issuer,
    userinfo,
)
from kernel.db import utcnow
from kernel.keys import keystore
from kernel.settings import get_settings
from kernel.web import DB, Pages

_pages = Pages(Path(__file__).resolve().parent.parent / "templates")
page, error_page = _pages.page, _pages.error_page

router = APIRouter(tags=["oidc"])

# the IdP's cookies (idp.views): one login session for SAML and OIDC
SESSION_COOKIE = "renkei_idp"
PENDING_COOKIE = "renkei_pending"
OIDC_PENDING_COOKIE = "renkei_oidc_pending"
# the login pages (idp.views) hand a finished login back here for requests of this "binding"
RESUME_BINDING = "urn:renkei:oidc:authorize"
MAX_QUERY_CHARS = 8192
PENDING_LIFETIME = timedelta(minutes=15)


def _server(db: Session) -> HubServer:
    return HubServer(Context(db_session=db, settings=get_settings(), keys=keystore()))


def _reply(reply: Reply) -> Response:
    """Authlib's (status, body, headers) as a Starlette response."""
    headers = dict(reply.headers)
    if reply.status in (301, 302, 303) and "Location" in headers:
        return RedirectResponse(headers.pop("Location"), status_code=303 if reply.status == 302 else reply.status,
                                headers=headers)
    if isinstance(reply.body, (dict, list)):
        return JSONResponse(reply.body, status_code=reply.status, headers=headers)
    return Response(reply.body or b"", status_code=reply.status, headers=headers)


def _secure() -> bool:
    return get_settings().base_url.startswith("https://")


# --- discovery ---------------------------------------------------------------------------


@router.get("/.well-known/openid-configuration")
def configuration() -> JSONResponse:
    """OpenID Connect Discovery 1.0 §3 provider metadata."""
    settings = get_settings()
    return JSONResponse({
        "issuer": issuer(settings),
        "authorization_endpoint": endpoint(settings, "authorize"),
        "token_endpoint": endpoint(settings, "token"),
        "userinfo_endpoint": endpoint(settings, "userinfo"),
        "jwks_uri": endpoint(settings, "jwks"),
        "end_session_endpoint": endpoint(settings, "logout"),
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "sid"],
        "acr_values_supported": sorted(set(saml.CLASS_FOR_LEVEL.values())),
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "request_parameter_supported": True,
        "request_object_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "request_uri_parameter_supported": False,
        "claims_parameter_supported": False,
    }, headers={"Cache-Control": "max-age=300"})


@router.get("/idp/oidc/jwks")
def jwks() -> JSONResponse:
    """The OP's public keys: the two newest of each algorithm, so keys rotate without downtime."""
    return JSONResponse(op_keys.jwks(keystore()), headers={"Cache-Control": "max-age=300"})


# --- authorization -------------------------------------------------------------------------


@router.get("/idp/oidc/authorize")
def authorize_get(request: Request, db: Session = DB) -> Response:
    """OpenID Connect Core §3.1.2.1, by GET."""
    return _authorize(request, db, parse_qsl(request.url.query, keep_blank_values=True), resumed=False)


@router.post("/idp/oidc/authorize")
async def authorize_post(request: Request, db: Session = DB) -> Response:
    """OpenID Connect Core §3.1.2.1, by POST (form-encoded)."""
    form = await request.form()
    params = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    # the database work runs off the event loop, as in the sync routes
    return await run_in_threadpool(_authorize, request, db, params, resumed=False)


def _error_redirect(server: HubServer, oreq: HubRequest, error: OAuth2Error) -> Response:
    """An error to the validated redirect URI, with state and iss (RFC 9207 §2), or a page when
    the redirect URI is not (yet) trusted (RFC 6749 §4.1.2.1: never redirect then)."""
    if not error.redirect_uri:
        # an error raised before the redirect URI was checked: it still goes back to the RP when
        # the client is known and the URI is one it registered (as Authlib does for
        # unsupported_response_type, RFC 6749 §4.1.2.1)
        client = server.query_client(oreq.payload.client_id or "")
        if client is not None and oreq.payload.redirect_uri and client.check_redirect_uri(oreq.payload.redirect_uri):
            error.redirect_uri = oreq.payload.redirect_uri
    if not error.redirect_uri:
        return error_page(400, f"認可要求を処理できません。The authorization request was refused: "
                               f"{error.error}: {error.description or ''}")
    error.state = oreq.payload.state
    reply = server.handle_error_response(oreq, error)
    reply.location = add_params_to_uri(reply.location, {"iss": issuer(server.ctx.settings)})
    return _reply(reply)


def _authorize(request: Request, db: Session, params: list[tuple[str, str]], *, resumed: bool) -> Response:
    settings = get_settings()
    if sum(len(k) + len(v) for k, v in params) > MAX_QUERY_CHARS:
        return error_page(400, f"認可要求が大きすぎます。The authorization request exceeds {MAX_QUERY_CHARS} characters.")
    server = _server(db)
    oreq = HubRequest("GET", endpoint(settings, "authorize"), params, request.headers)
    try:
        server.request_objects.apply(server, oreq)
    except OAuth2Error as error:
        return _error_redirect(server, HubRequest("GET", oreq.uri, params, request.headers), error)
    data = oreq.payload.data
    session = idp_service.current_session(db_session=db, token=request.cookies.get(SESSION_COOKIE), settings=settings)
    prompts = (data.get("prompt") or "").split()
    acr_values = data.get("acr_values")
    requested = saml.RequestedContext("minimum", acr_values.split()) if acr_values else None
    if not acr_values:
        needed: int | None = 1
    else:  # the weakest acceptable value sets the bar (a voluntary claim, OIDC Core §3.1.2.1)
        needed = saml.required_level(requested) if len(acr_values) <= ACR_VALUES_MAX else None
    grantee = None
    if session is not None and needed is not None:
        level = idp_service.session_level(session)
        fresh = resumed or not ("login" in prompts or _too_old(session, data.get("max_age")))
        if fresh and level >= needed:
            grantee = Grantee(session.person_key, session.id, saml.context_for_level(requested, level),
                              session.authn_instant)
    try:
        if len(data.get("state") or "") > STATE_MAX:
            raise OAuth2Error(f"state must not exceed {STATE_MAX} characters")
        if "registration" in data:
            raise _after_validation(server, oreq, "registration_not_supported",
                                    "the registration parameter is not supported")
        grant = server.get_consent_grant(oreq, end_user=grantee)
        if needed is None:
            raise _after_validation(server, oreq, "unmet_authentication_requirements",
                                    "none of the acr_values can be met by this OP")
        if grantee is None and resumed:
            if session is None:  # the login pages did not leave a session in this browser
                raise _after_validation(server, oreq, "login_required", "the person did not log in")
            raise _after_validation(server, oreq, "unmet_authentication_requirements",
                                    "this account cannot log in as strongly as the service requires")
    except OAuth2Error as error:
        return _error_redirect(server, oreq, error)
    if grantee is not None:
        return _reply(server.create_authorization_response(oreq, grant_user=grantee, grant=grant))
    verified = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in data.items() if k != "request"]
    return _park(db, oreq, verified, requested, force="login" in prompts or session is not None)


def _too_old(session, max_age: str | None) -> bool:
    """OIDC Core §3.1.2.1 max_age: the login is older than the RP accepts."""
    if max_age is None or not max_age.isdigit() or len(max_age) > 9:
        return False
    return session.authn_instant + timedelta(seconds=int(max_age)) < utcnow()


class _Refused(OAuth2Error):
    pass


def _after_validation(server: HubServer, oreq: HubRequest, code: str, description: str) -> OAuth2Error:
    """An error that goes back to the RP: the redirect URI is validated first (exact match)."""
    client = server.query_client(oreq.payload.client_id or "")
    redirect_uri = oreq.payload.redirect_uri
    error = _Refused(description=description)
    error.error = code
    if client is not None and redirect_uri and client.check_redirect_uri(redirect_uri):
        error.redirect_uri = redirect_uri
    return error


def _park(db: Session, oreq: HubRequest, params: list[tuple[str, str]], requested, *, force: bool) -> Response:
    """Keep the request while the person logs in on the IdP's login pages, which hand the
    finished login back to `/idp/oidc/authorize/resume`."""
    settings = get_settings()
    token = secrets.token_urlsafe(24)
    now = utcnow()
    db.add(OidcPending(id=token, client_id=oreq.payload.client_id, query=urlencode(params),
                       expires_at=now + PENDING_LIFETIME))
    resume = f"{endpoint(settings, 'authorize/resume')}?{urlencode({'pending': token})}"
    login = saml.AuthnRequest(
        id=f"oidc-{token}", issuer=oreq.payload.client_id, issue_instant=now, destination=None, acs_url=None,
        acs_index=None, protocol_binding=RESUME_BINDING, force_authn=force, is_passive=False,
        name_id_format=None, requested_context=requested, acs_location=resume)
    pending = idp_service.save_pending(db_session=db, request=login)
    response = RedirectResponse(f"{settings.base_url.rstrip('/')}/idp/login?{urlencode({'pending': pending})}",
                                status_code=303)
    response.set_cookie(PENDING_COOKIE, pending, httponly=True, samesite="lax", secure=_secure(), path="/idp")
    response.set_cookie(OIDC_PENDING_COOKIE, token, httponly=True, samesite="lax", secure=_secure(),
                        path="/idp/oidc")
    return response


@router.get("/idp/oidc/authorize/resume")
def authorize_resume(request: Request, pending: str = "", db: Session = DB) -> Response:
    """Back from the login pages: answer the parked request with the new login session."""
    if not pending or len(pending) > 64 or request.cookies.get(OIDC_PENDING_COOKIE) != pending:
        return error_page(400, "認可要求が見つからないか、このブラウザのものではありません。"
                               " The authorization request is unknown or not from this browser.")
    row = db.get(OidcPending, pending)
    if row is None or row.expires_at <= utcnow():
        return error_page(400, "認可要求の有効期限が切れました。The authorization request has expired.")
    db.delete(row)
    response = _authorize(request, db, parse_qsl(row.query, keep_blank_values=True), resumed=True)
    response.delete_cookie(OIDC_PENDING_COOKIE, path="/idp/oidc")
    return response


def finish_login(authn: saml.AuthnRequest) -> RedirectResponse | None:
    """For the login pages: where a finished login of an OIDC request goes (None for SAML)."""
    if authn.protocol_binding != RESUME_BINDING:
        return None
    return RedirectResponse(authn.acs_location, status_code=303)


# --- token and UserInfo ----------------------------------------------------------------------


@router.post("/idp/oidc/token")
async def token(request: Request, db: Session = DB) -> Response:
    """OpenID Connect Core §3.1.3: the code for an ID token, client authenticated by
    private_key_jwt."""
    form = await request.form()
    params = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    if sum(len(k) + len(v) for k, v in params) > 4 * MAX_QUERY_CHARS:
        return JSONResponse({"error": "invalid_request", "error_description": "the request is too large"}, 400)
    return await run_in_threadpool(_token, request, db, params)


def _token(request: Request, db: Session, params: list[tuple[str, str]]) -> Response:
    server = _server(db)
    oreq = HubRequest("POST", endpoint(get_settings(), "token"), params, request.headers)
    return _reply(server.create_token_response(oreq))


@router.api_route("/idp/oidc/userinfo", methods=["GET", "POST"])
def userinfo_endpoint(request: Request, db: Session = DB) -> Response:
    """OpenID Connect Core §5.3 (bearer token in the Authorization header only)."""
    server = _server(db)
    oreq = HubRequest(request.method, endpoint(get_settings(), "userinfo"), [], request.headers)
    return _reply(userinfo(server, oreq))


# --- RP-initiated logout ----------------------------------------------------------------------


class _EndSession(EndSessionEndpoint):
    def __init__(self, server: HubServer, cookie_token: str | None):
        super().__init__(server)
        self.cookie_token = cookie_token
        self.ended: list[logout.LogoutResult] | None = None

    def get_server_jwks(self) -> KeySet:
        return KeySet.import_key_set(op_keys.jwks(self.server.ctx.keys))

    def get_algorithms(self) -> list[str]:
        return ["RS256", "ES256"]

    def end_session(self, end_session_request) -> None:
        ctx = self.server.ctx
        session = idp_service.current_session(db_session=ctx.db_session, token=self.cookie_token,
                                              settings=ctx.settings)
        if session is not None:
            self.ended = logout.end_login_session(ctx.db_session, session.id)


@router.get("/idp/oidc/logout")
def end_session(request: Request, db: Session = DB) -> Response:
    """RP-Initiated Logout 1.0 §2: with a valid id_token_hint the login session ends here (and
    every other RP of it is told over the back channel); without one, the person confirms on the
    IdP's logout page (a link or image alone must not log anyone out)."""
    params = parse_qsl(request.url.query, keep_blank_values=True)
    if sum(len(k) + len(v) for k, v in params) > MAX_QUERY_CHARS:
        return error_page(400, "ログアウト要求が大きすぎます。The logout request is too large.")
    server = _server(db)
    oreq = HubRequest("GET", endpoint(get_settings(), "logout"), params, request.headers)
    cookie = request.cookies.get(SESSION_COOKIE)
    ep = _EndSession(server, cookie)
    try:
        validated = ep.validate_request(oreq)
    except OAuth2Error as error:
        return error_page(400, f"ログアウト要求を処理できません。The logout request was refused: {error.description}")
    if validated.id_token_claims is None:
        return RedirectResponse(f"{get_settings().base_url.rstrip('/')}/idp/logout", status_code=303)
    result = ep.create_response(validated)
    response = _reply(server.handle_response(*result)) if result else page(
        "error.html", title="ログアウトしました / Logged out", reason="Renkei からログアウトしました。You are logged out of Renkei.")
    response.delete_cookie(SESSION_COOKIE, path="/idp")
    return response
