"""The portal's pages under /portal/: login by SSO, overview, where my data is, history."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from pathlib import Path

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from access_history import service as history
from kernel.db import utcnow
from kernel.settings import Settings, get_settings
from kernel.web import DB, Pages, raw_query
from portal import history_chart, i18n, notices, people, service
from portal.models import PortalSession
from portal.wording import OUTCOMES, outcome_text

_pages = Pages(Path(__file__).resolve().parent / "templates")
i18n.install(_pages.env)
router = APIRouter(prefix="/portal", tags=["portal"], include_in_schema=False)

SESSION_COOKIE = "portal_session"
BROWSER_COOKIE = "portal_browser"
IDLE = timedelta(minutes=30)


def _cookie(response: Response, name: str, value: str, settings: Settings, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax", path="/portal",
                        secure=settings.base_url.startswith("https://"))


def _page(request: Request, name: str, session: PortalSession | None = None, status_code: int = 200,
          **context) -> Response:
    """Render in the person's language (the cookie; Japanese by default)."""
    i18n.set_language(request.cookies.get(i18n.COOKIE))
    response = _pages.page(name, status_code=status_code, session=session, request_path=request.url.path,
                           outcome_text=outcome_text, **context)
    response.headers["Content-Language"] = i18n.current()
    return response


def _safe_next(value: str | None) -> str:
    """Only a path inside the portal: never an open redirect."""
    if value and value.startswith("/portal/") and "//" not in value and "\\" not in value and len(value) < 200:
        return value
    return "/portal/"


class LoginRequired(Exception):
    def __init__(self, next_path: str):
        self.next_path = next_path


def current_session(request: Request, db_session: Session = DB) -> PortalSession:
    """Route dependency: the person's portal session, or a redirect to log in."""
    session = service.load_session(db_session=db_session, token=request.cookies.get(SESSION_COOKIE), idle=IDLE)
    if session is None:
        raise LoginRequired(request.url.path)
    return session


PERSON = Depends(current_session)


def portal_static():
    """The portal's stylesheets (its own, and the Digital Agency's design tokens)."""
    from fastapi.staticfiles import StaticFiles

    return StaticFiles(directory=Path(__file__).resolve().parent / "static")


def login_redirect_handler(_request: Request, exc: LoginRequired) -> Response:
    return RedirectResponse(f"/portal/login?next={exc.next_path}", status_code=303)


@router.get("/lang")
def switch_language(to: str = Query(..., max_length=8), next: str | None = Query(None, max_length=256)) -> Response:
    """Switch the portal's language; the choice persists in a cookie (works without JavaScript)."""
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(i18n.COOKIE, i18n.choose(to), max_age=365 * 24 * 3600, httponly=True, samesite="lax",
                        path="/portal", secure=get_settings().base_url.startswith("https://"))
    return response


@router.get("/metadata")
def metadata() -> Response:
    """The portal's SAML SP metadata, as registered with the federation."""
    settings = get_settings()
    return Response(service.portal_sp.metadata(service.identity(settings), service.signing_key()),
                    media_type="application/samlmetadata+xml")


@router.get("/login")
def login(request: Request, db_session: Session = DB, next: str | None = Query(None, max_length=256)) -> Response:
    """Send the browser to the hub's IdP with a signed AuthnRequest."""
    settings = get_settings()
    browser = request.cookies.get(BROWSER_COOKIE)
    if not browser or len(browser) > 64:
        browser = secrets.token_urlsafe(24)
    url = service.start_login(db_session=db_session, settings=settings, browser=browser, next_path=_safe_next(next))
    response = RedirectResponse(url, status_code=303)
    _cookie(response, BROWSER_COOKIE, browser, settings)
    return response


@router.post("/acs")
def acs(request: Request, db_session: Session = DB, SAMLResponse: str = Form(..., max_length=400_000),
        RelayState: str | None = Form(None, max_length=80)) -> Response:
    """The AssertionConsumerService (HTTP-POST binding): start the portal session."""
    settings = get_settings()
    try:
        started = service.finish_login(db_session=db_session, settings=settings,
                                       browser=request.cookies.get(BROWSER_COOKIE) or "",
                                       saml_response=SAMLResponse)
    except service.LoginFailed as exc:
        return _page(request, "message.html", status_code=400, title="ログインできませんでした",
                     message="ログインの応答を受け付けられませんでした。", detail=str(exc), retry=True)
    response = RedirectResponse(started.next_path, status_code=303)
    _cookie(response, SESSION_COOKIE, started.token, settings)
    return response


@router.get("/logout")
def logout_form(request: Request, session: PortalSession = PERSON) -> Response:
    return _page(request, "logout.html", session, title="ログアウト")


@router.post("/logout")
def logout(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
           csrf_token: str = Form(..., max_length=64)) -> Response:
    """End the portal session and the single sign-on (Single Logout through the IdP)."""
    if not secrets.compare_digest(csrf_token, session.csrf_token):
        return _page(request, "message.html", session, status_code=403, title="要求を処理できません",
                     message="フォームの有効期限が切れました。もう一度お試しください。")
    url = service.start_logout(db_session=db_session, settings=get_settings(), session=session,
                               browser=request.cookies.get(BROWSER_COOKIE) or "")
    response = RedirectResponse(url, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/portal")
    return response


@router.get("/slo")
def slo(request: Request, db_session: Session = DB) -> Response:
    """The IdP's LogoutResponse (HTTP-Redirect binding)."""
    ok = service.finish_logout(db_session=db_session, settings=get_settings(), raw_query=raw_query(request))
    message = "ログアウトしました。" if ok else "ログアウトを確認できませんでした。ブラウザを閉じてください。"
    response = _page(request, "message.html", title="ログアウト", message=message, retry=False,
                     status_code=200 if ok else 400)
    response.delete_cookie(SESSION_COOKIE, path="/portal")
    return response


@router.get("/")
def overview(request: Request, db_session: Session = DB, session: PortalSession = PERSON) -> Response:
    """Overview: this month's exchanges, refusals, law over refusal, and the latest entries."""
    now = utcnow()
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    page = service.history_page(db_session=db_session, person_key=session.person_key, cursor=None,
                                filters=history.TimelineFilter(start=month), limit=200)
    entries = [e.entry for e in page.entries]
    counts = {
        "all": len(entries),
        "refused": sum(1 for e in entries if e.permitted is False),
        "overridden": sum(1 for e in entries if e.overridden),
        "anomalies": sum(1 for e in entries if e.kind == "disclosure" and e.outcome != "DISCLOSED"),
    }
    latest = service.history_page(db_session=db_session, person_key=session.person_key, cursor=None,
                                  filters=history.TimelineFilter(), limit=5)
    unread = notices.unread_count(db_session=db_session, person_key=session.person_key)
    return _page(request, "overview.html", session, title="概要", counts=counts, latest=latest.entries, unread=unread,
                 names=service.agency_names(db_session=db_session), more=page.next_cursor is not None)


@router.get("/data")
def where_my_data_is(request: Request, db_session: Session = DB, session: PortalSession = PERSON) -> Response:
    """情報の所在: the agencies that hold data about me, for which services."""
    holdings = service.where_my_data_is(db_session=db_session, person_key=session.person_key)
    return _page(request, "data.html", session, title="情報の所在", holdings=holdings)


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@router.get("/history")
def history_page(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                 cursor: str | None = Query(None, max_length=200), start: str | None = Query(None, max_length=32),
                 end: str | None = Query(None, max_length=32), agency: str | None = Query(None, max_length=1024),
                 outcome: str | None = Query(None, max_length=64)) -> Response:
    """やりとり履歴: my timeline, newest first, with filters."""
    filters = history.TimelineFilter(start=_when(start), end=_when(end), agency=agency or None,
                                     outcome=outcome or None)
    try:
        page = service.history_page(db_session=db_session, person_key=session.person_key, cursor=cursor,
                                    filters=filters)
    except ValueError:
        return _page(request, "message.html", session, status_code=400, title="要求を処理できません",
                     message="ページの指定が正しくありません。")
    chart = history_chart.build(service.monthly_outcomes(db_session=db_session, person_key=session.person_key),
                                utcnow())
    # what representatives did for me shows beside my own history (all of it on 代理人)
    acted = people.actions_for(db_session=db_session, principal_key=session.person_key, limit=5)
    return _page(request, "history.html", session, title="やりとり履歴", page=page, outcomes=OUTCOMES.items(),
                 acted=acted,
                 names=service.agency_names(db_session=db_session), chart=chart, bar_width=history_chart.BAR_WIDTH,
                 filters={"start": start or "", "end": end or "", "agency": agency or "", "outcome": outcome or ""})

