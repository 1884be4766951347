"""HTTP routes of the IdP: metadata, SSO (Redirect and POST in), login, SLO. Thin: they call
`idp.service` and turn its outcomes into pages, redirects and POST-binding forms."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from access_history import service as history
from access_history.models import OperationIn
from federation import service as agencies
from idp import accounts, federation_views, passkeys, saml, service, slo, unsolicited
from idp.oidc.views import finish_login as finish_oidc_login
from kernel import replay
from kernel.keys import keystore
from kernel.settings import get_settings
from kernel.web import DB, Pages, in_unit_of_work, raw_query
from kernel.xml import XMLSecurityError, inflate_redirect
from kernel.xml.saml import NO_PASSIVE, RESPONDER

_pages = Pages(Path(__file__).resolve().parent / "templates")
page, error_page = _pages.page, _pages.error_page

router = APIRouter(prefix="/idp", tags=["idp"])

SESSION_COOKIE = "renkei_idp"
PENDING_COOKIE = "renkei_pending"


@router.get("/metadata")
def metadata() -> Response:
    """The hub's SAML metadata: the IdP's and the discovery service's two newest signing keys
    each, so rotation needs no downtime."""
    return Response(federation_views.own_entity(), media_type="application/samlmetadata+xml")


@router.get("/sso")
async def sso_redirect(request: Request) -> Response:
    """HTTP-Redirect binding (bindings §3.4): DEFLATE + base64 in the query string."""
    return await in_unit_of_work(_sso_redirect, request)


def _sso_redirect(db: Session, request: Request) -> Response:
    settings = get_settings()
    encoded = request.query_params.get("SAMLRequest")
    if not encoded:
        return error_page(400, "SAMLRequest がありません。The request carries no SAMLRequest.")
    try:
        xml = inflate_redirect(encoded, max_bytes=settings.max_message_bytes)
    except XMLSecurityError as exc:
        return error_page(400, f"SAMLRequest を読めません: {exc}")
    return _start(request, db, xml, request.query_params.get("RelayState"), raw_query(request))


@router.post("/sso")
async def sso_post(
    request: Request,
    SAMLRequest: str = Form(""),
    RelayState: str | None = Form(None),
) -> Response:
    """HTTP-POST binding (bindings §3.5): base64 XML in a form field."""
    return await in_unit_of_work(_sso_post, request, SAMLRequest, RelayState)


def _sso_post(db: Session, request: Request, saml_request: str, relay_state: str | None) -> Response:
    if not saml_request:
        return error_page(400, "SAMLRequest がありません。The request carries no SAMLRequest.")
    try:
        xml = service.decode_post_message(saml_request, max_bytes=get_settings().max_message_bytes)
    except service.BadRequest as exc:
        return error_page(400, str(exc))
    return _start(request, db, xml, relay_state, None)


def _start(request: Request, db: Session, xml: bytes, relay_state: str | None, query: str | None) -> Response:
    settings = get_settings()
    try:
        agency, authn, once = service.check_authn_request(
            db_session=db, settings=settings, xml=xml, relay_state=relay_state, raw_query=query
        )
    except service.BadRequest as exc:
        return error_page(400, str(exc))
    except saml.SamlStatusError as exc:
        return _post_answer(service.answer_error(settings=settings, keys=keystore(), request=exc.request, error=exc))
    return _answer_or_login(request, db, agency, authn, once)


@router.get("/sso/unsolicited")
def sso_unsolicited(request: Request, sp: str | None = None, providerId: str | None = None,
                    RelayState: str | None = None, db: Session = DB) -> Response:
    """IdP-initiated SSO (profiles §4.1.5) to an agency that allows it (idp/unsolicited.py)."""
    try:
        agency, authn = unsolicited.unsolicited_request(db_session=db, sp=sp or providerId, relay_state=RelayState)
    except unsolicited.UnsolicitedRefused as exc:
        return error_page(403, str(exc))
    except service.BadRequest as exc:
        return error_page(400, str(exc))
    return _answer_or_login(request, db, agency, authn)


def _answer_or_login(request: Request, db: Session, agency, authn: saml.AuthnRequest,
                     once: replay.Once | None = None) -> Response:
    """Answer at once from a live session that is strong enough, or park the request and log in.

    `once` is the request's ID for the replay cache: remembered with the answer's history
    entry, or here before any other answer (the parked request is answered after the login
    without it)."""
    settings = get_settings()
    session = service.current_session(db_session=db, token=request.cookies.get(SESSION_COOKIE), settings=settings,
                                      agency=agency.entity_id)
    if session is not None and not authn.force_authn:
        context = saml.context_for_level(authn.requested_context, service.session_level(session))
        if context is not None:
            return _post_answer(
                service.answer_success(
                    db_session=db, settings=settings, keys=keystore(), agency=agency,
                    request=authn, session=session, authn_context=context, once=once,
                )
            )
    try:
        service.remember_request(db_session=db, once=once)
    except saml.SamlStatusError as exc:
        return _post_answer(service.answer_error(settings=settings, keys=keystore(), request=authn, error=exc))
    if authn.is_passive:
        error = saml.SamlStatusError(RESPONDER, "the person must log in", NO_PASSIVE)
        return _post_answer(service.answer_error(settings=settings, keys=keystore(), request=authn, error=error))
    pending = service.save_pending(db_session=db, request=authn)
    response = RedirectResponse(f"{settings.base_url.rstrip('/')}/idp/login?pending={pending}", status_code=303)
    response.set_cookie(PENDING_COOKIE, pending, httponly=True, samesite="lax", secure=_secure(), path="/idp")
    return response


def _secure() -> bool:
    return get_settings().base_url.startswith("https://")


def _post_answer(answer: service.Answer) -> HTMLResponse:
    return page(
        "post_binding.html",
        title="サービスに戻ります / Returning to the service",
        url=answer.url,
        field=answer.field,
        value=answer.value,
        relay_state=answer.relay_state,
        form_targets=[answer.url],  # the registered ACS of this answer, nothing else
    )


def _pending_or_error(request: Request, db: Session, token: str):
    if not token or request.cookies.get(PENDING_COOKIE) != token:
        return None, error_page(400, "ログイン要求が見つからないか、このブラウザのものではありません。"
                                     " The login request is unknown, expired or not from this browser.")
    loaded = service.load_pending(db_session=db, token=token)
    if loaded is None:
        return None, error_page(400, "ログイン要求の有効期限が切れました。The login request has expired.")
    return loaded, None


@router.get("/login")
def login_form(request: Request, pending: str = "", db: Session = DB) -> Response:
    loaded, error = _pending_or_error(request, db, pending)
    if error:
        return error
    _row, authn = loaded
    return _login_page(db, authn, pending)


def _login_page(db: Session, authn: saml.AuthnRequest, pending: str, error: str | None = None,
                username: str | None = None, status: int = 200) -> HTMLResponse:
    agency = agencies.lookup(db_session=db, entity_id=authn.issuer)
    return page("login.html", status_code=status, title="ログイン / Log in", pending=pending,
                agency_name=agency.name if agency else authn.issuer, error=error, username=username,
                passkey_options=passkeys.login_options(db_session=db, settings=get_settings(), pending=pending))


def _second_factor_page(db: Session, authn: saml.AuthnRequest, pending: str, person_key: str,
                        error: str | None = None, status: int = 200) -> HTMLResponse:
    """After the password, for a person with passkeys: a passkey, or their TOTP code where the
    agency asks for no more than that."""
    totp = accounts.has_totp(db_session=db, person_key=person_key) and (
        saml.required_level(authn.requested_context) or 1) <= 2
    return page("passkey_step.html", status_code=status, title="本人確認 / Confirm it is you", pending=pending,
                error=error, totp=totp, passkey_options=passkeys.login_options(
                    db_session=db, settings=get_settings(), pending=pending, person_key=person_key))


_WRONG_PASSWORD = "ユーザー名またはパスワードが違います。 Unknown username or wrong password."


def _throttled_text(wait: int) -> str:
    return (f"失敗が続いたため、{wait} 秒後にもう一度お試しください。"
            f" Too many failed attempts: please wait {wait} seconds, then try again.")


def _client_address(request: Request) -> str:
    # behind a proxy uvicorn's --forwarded-allow-ips puts the real client here
    return request.client.host if request.client else "unknown"


def _record_login(db: Session, request: Request, action: str, who: str, outcome: str, sp: str) -> None:
    """An authentication event in the operations log, committed with the throttle's counters."""
    history.record_operation(db_session=db, operation=OperationIn(
        actor=who, channel="login", action=action, target=sp[:1024], outcome=outcome,
        client=_client_address(request)[:64]))


@router.post("/login")
def login_submit(
    request: Request,
    pending: str = Form(""),
    username: str = Form(""),
    password: str = Form(""),
    db: Session = DB,
) -> Response:
    settings = get_settings()
    loaded, error = _pending_or_error(request, db, pending)
    if error:
        return error
    row, authn = loaded
    try:
        result = accounts.check_password(
            db_session=db, username=username, password=password,
            client_address=_client_address(request), limits=accounts.LoginLimits.from_settings(settings),
        )
    except accounts.LoginThrottled as exc:
        _record_login(db, request, "login.throttled", accounts.login_name_ref(username=username), "refused",
                      authn.issuer)
        # the same answer for known and unknown names, right or wrong password
        response = _login_page(db, authn, pending, _throttled_text(exc.retry_after), username, status=429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except accounts.LoginFailed:
        _record_login(db, request, "login.failed", accounts.login_name_ref(username=username), "refused",
                      authn.issuer)
        return _login_page(db, authn, pending, _WRONG_PASSWORD, username, status=401)
    second_passkey = passkeys.has_passkeys(db_session=db, person_key=result.person_key)
    _record_login(db, request, "login.password_ok" if result.needs_totp or second_passkey else "login.ok",
                  accounts.login_name_ref(username=username), "ok", authn.issuer)
    if second_passkey:
        row.password_ok_person = result.person_key
        return _second_factor_page(db, authn, pending, result.person_key)
    if result.needs_totp:
        row.password_ok_person = result.person_key
        return page("totp.html", title="確認コード / One-time code", pending=pending)
    return _finish(request, db, authn, row, result.person_key, level=1)


@router.post("/login/totp")
def totp_submit(
    request: Request, pending: str = Form(""), code: str = Form(""), db: Session = DB
) -> Response:
    settings = get_settings()
    loaded, error = _pending_or_error(request, db, pending)
    if error:
        return error
    row, authn = loaded
    if not row.password_ok_person:
        return error_page(400, "先にパスワードを入力してください。Enter your password first.")
    try:
        accounts.check_totp(
            db_session=db, person_key=row.password_ok_person, code=code,
            client_address=_client_address(request), limits=accounts.LoginLimits.from_settings(settings),
        )
    except accounts.LoginThrottled as exc:
        _record_login(db, request, "totp.throttled", accounts.login_name_ref_of(
            db_session=db, person_key=row.password_ok_person), "refused", authn.issuer)
        response = page("totp.html", status_code=429, title="確認コード", pending=pending,
                        error=_throttled_text(exc.retry_after))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except accounts.LoginFailed:
        _record_login(db, request, "totp.failed", accounts.login_name_ref_of(
            db_session=db, person_key=row.password_ok_person), "refused", authn.issuer)
        return page("totp.html", status_code=401, title="確認コード", pending=pending,
                    error="確認コードが違うか、使用済みです。Wrong or already used one-time code.")
    _record_login(db, request, "login.ok", accounts.login_name_ref_of(
        db_session=db, person_key=row.password_ok_person), "ok", authn.issuer)
    return _finish(request, db, authn, row, row.password_ok_person, level=2)


@router.post("/login/passkey")
def passkey_submit(
    request: Request, pending: str = Form(""), credential: str = Form("", max_length=passkeys.ANSWER_MAX),
    db: Session = DB,
) -> Response:
    """A passkey's assertion: the whole login (passwordless), or the second factor after the
    password; either way a phishing-resistant multi-factor login (level 3)."""
    settings = get_settings()
    loaded, error = _pending_or_error(request, db, pending)
    if error:
        return error
    row, authn = loaded
    try:
        verified = passkeys.authenticate(
            db_session=db, settings=settings, pending=pending, answer=credential,
            client_address=_client_address(request), limits=accounts.LoginLimits.from_settings(settings))
    except accounts.LoginFailed as exc:
        throttled = isinstance(exc, accounts.LoginThrottled)
        action = ("passkey.throttled" if throttled else
                  "passkey.clone_suspected" if isinstance(exc, passkeys.CloneSuspected) else "passkey.failed")
        whose = getattr(exc, "person_key", None) or row.password_ok_person
        who = accounts.login_name_ref_of(db_session=db, person_key=whose) if whose else "passkey:unknown"
        _record_login(db, request, action, who, "refused", authn.issuer)
        text = (_throttled_text(exc.retry_after) if throttled else
                f"パスキーで確認できませんでした。 The passkey was not accepted: {exc}")
        status = 429 if throttled else 401
        if row.password_ok_person:
            response = _second_factor_page(db, authn, pending, row.password_ok_person, text, status)
        else:
            response = _login_page(db, authn, pending, text, status=status)
        if throttled:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if row.password_ok_person and row.password_ok_person != verified.person_key:
        # the password named one person and the passkey another: neither logs in
        _record_login(db, request, "passkey.failed", accounts.login_name_ref_of(
            db_session=db, person_key=row.password_ok_person), "refused", authn.issuer)
        return _second_factor_page(db, authn, pending, row.password_ok_person,
                                   "このパスキーは別のアカウントのものです。 This passkey belongs to another account.", 401)
    _record_login(db, request, "login.ok", accounts.login_name_ref_of(
        db_session=db, person_key=verified.person_key), "ok", authn.issuer)
    return _finish(request, db, authn, row, verified.person_key, level=3)


def _finish(request: Request, db: Session, authn: saml.AuthnRequest, row, person_key: str,
            level: int) -> Response:
    """Login done: end any earlier session in this browser, open a new one, forget the pending
    request, answer the agency."""
    settings = get_settings()
    db.delete(row)
    # a ForceAuthn re-login, perhaps as another person, must not leave the old session usable
    service.end_session(db_session=db, token=request.cookies.get(SESSION_COOKIE))
    token = service.start_session(db_session=db, settings=settings, person_key=person_key, level=level)
    session = service.current_session(db_session=db, token=token, settings=settings)
    context = saml.context_for_level(authn.requested_context, level)
    if (resume := finish_oidc_login(authn)) is not None:  # an OIDC authorization request goes on there
        response = resume
    elif context is None:
        error = saml.SamlStatusError(
            RESPONDER, "this account cannot log in as strongly as the service requires",
            saml.NO_AUTHN_CONTEXT,
        )
        response = _post_answer(service.answer_error(settings=settings, keys=keystore(), request=authn, error=error))
    else:
        agency = agencies.lookup(db_session=db, entity_id=authn.issuer)
        if agency is None:
            return error_page(400, "このサービスは登録を取り消されました。The service is no longer registered.")
        answer = service.answer_success(
            db_session=db, settings=settings, keys=keystore(), agency=agency,
            request=authn, session=session, authn_context=context,
        )
        response = _post_answer(answer)
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="lax", secure=_secure(), path="/idp",
        max_age=settings.session_lifetime_seconds,
    )
    response.delete_cookie(PENDING_COOKIE, path="/idp")
    return response


@router.get("/slo")
def slo_redirect(request: Request, db: Session = DB) -> Response:
    """Single Logout over HTTP-Redirect (profiles §4.4): an agency's LogoutRequest, or another
    agency's LogoutResponse while the browser walks through every participant (idp/slo.py)."""
    try:
        url = slo.handle_slo(
            db_session=db, settings=get_settings(),
            raw_query=raw_query(request), cookie_token=request.cookies.get(SESSION_COOKIE),
        )
    except service.BadRequest as exc:
        return error_page(400, str(exc))
    response = RedirectResponse(url, status_code=303)
    if "SAMLRequest" in request.query_params:
        response.delete_cookie(SESSION_COOKIE, path="/idp")
    return response


@router.get("/logout")
def logout_form(request: Request, db: Session = DB) -> Response:
    """Ask before ending the IdP session: a GET changes nothing (a link or image cannot log
    anyone out)."""
    token = request.cookies.get(SESSION_COOKIE)
    if service.current_session(db_session=db, token=token, settings=get_settings()) is None:
        return _logged_out()
    return page("logout.html", title="ログアウト / Log out", csrf=service.logout_csrf_token(token))


@router.post("/logout")
def local_logout(request: Request, csrf: str = Form(""), scope: str = Form("local"), db: Session = DB) -> Response:
    """End the IdP session in this browser; with scope=all (the page's first button) tell every
    agency of the session too (Single Logout). Needs the form's CSRF token."""
    token = request.cookies.get(SESSION_COOKIE)
    if token and not service.check_logout_csrf(token=token, csrf=csrf):
        return error_page(403, "ログアウトの確認が無効です。もう一度お試しください。"
                               " The logout confirmation is not valid; please try again from the logout page.")
    if token and scope == "all":
        url = slo.logout_everywhere(db_session=db, settings=get_settings(), cookie_token=token)
        response = RedirectResponse(url, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/idp")
        return response
    service.end_session(db_session=db, token=token)
    return _logged_out()


@router.get("/logout/done")
def logout_done(partial: str | None = None) -> Response:
    """Where the IdP's own Single Logout ends: whether every service could be told."""
    if partial:
        response = page("error.html", title="一部のサービスからログアウトできませんでした / Partly logged out",
                        reason="Renkei からログアウトしましたが、一部のサービスからはログアウトできませんでした。"
                               "ブラウザを閉じてください。 You are logged out of Renkei, but some services"
                               " could not be logged out: close your browser to end their sessions.")
        response.delete_cookie(SESSION_COOKIE, path="/idp")
        return response
    return _logged_out()


def _logged_out() -> Response:
    response = page("error.html", title="ログアウトしました / Logged out",
                    reason="Renkei からログアウトしました。You are logged out of Renkei.")
    response.delete_cookie(SESSION_COOKIE, path="/idp")
    return response
