"""A person's passkeys at the IdP (/idp/passkeys): list, add, remove, for whoever holds an IdP
session in this browser; and the script the passkey forms run. Logging in with a passkey is
in `idp.views`, beside the password and TOTP steps."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from access_history import service as history
from access_history.models import OperationIn
from idp import accounts, passkeys, service
from idp.views import SESSION_COOKIE, _client_address, error_page, page
from kernel.db import utcnow
from kernel.settings import get_settings
from kernel.web import DB

router = APIRouter(prefix="/idp", tags=["idp"], include_in_schema=False)
_SCRIPT = Path(__file__).resolve().parent / "static" / "passkeys.js"

# A new passkey logs its holder in from then on, so it is added only in a session whose login is
# this recent: a browser left logged in (or a stolen session cookie) cannot plant one.
RECENT_LOGIN = timedelta(minutes=15)
_LOG_IN_AGAIN = ("パスキーの追加には、15 分以内のログインが必要です。ログアウトしてから、もう一度ログインしてください。"
                 " Adding a passkey needs a login within the last 15 minutes: log out (/idp/logout), log in"
                 " again, then add it.")


@router.get("/static/passkeys.js")
def script() -> Response:
    return FileResponse(_SCRIPT, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


def _session(request: Request, db: Session):
    token = request.cookies.get(SESSION_COOKIE)
    return token, service.current_session(db_session=db, token=token, settings=get_settings())


def _not_logged_in() -> Response:
    return error_page(401, "パスキーを管理するには、先にポータルからログインしてください。"
                           " Log in first (for example at the portal, /portal/), then come back to manage your passkeys.",
                      title="ログインが必要です / Please log in")


def _record(db: Session, request: Request, person_key: str, action: str, passkey_id: int) -> None:
    # the passkey's number, not the name the person gave it ("Taro's phone")
    history.record_operation(db_session=db, operation=OperationIn(
        actor=accounts.login_name_ref_of(db_session=db, person_key=person_key), channel="login", action=action,
        target=f"passkey:{passkey_id}", outcome="ok", client=_client_address(request)[:64]))


def _logged_in_recently(session: service.LiveSession) -> bool:
    return utcnow() - session.authn_instant <= RECENT_LOGIN


def _page(db: Session, token: str, session: service.LiveSession, *, error: str | None = None,
          notice: str | None = None, status: int = 200) -> Response:
    person_key = session.person_key
    if _logged_in_recently(session):
        username = accounts.username_of(db_session=db, person_key=person_key) or ""
        display = accounts.find(db_session=db, username=username)
        adding = {"options": passkeys.registration_options(
            db_session=db, settings=get_settings(), person_key=person_key, username=username,
            display_name=display.display_name if display else username)}
    else:  # no add form, and no challenge issued for one
        adding = {"log_in_again": _LOG_IN_AGAIN}
    return page("passkeys.html", status_code=status, title="パスキー / Passkeys",
                items=passkeys.list_passkeys(db_session=db, person_key=person_key),
                csrf=passkeys.form_token(token), error=error, notice=notice, **adding)


@router.get("/passkeys")
def passkeys_page(request: Request, saved: str = "", removed: str = "", db: Session = DB) -> Response:
    token, session = _session(request, db)
    if session is None:
        return _not_logged_in()
    notice = ("パスキーを追加しました。 The passkey was added." if saved else
              "パスキーを削除しました。 The passkey was removed." if removed else None)
    return _page(db, token, session, notice=notice)


@router.post("/passkeys")
def passkeys_add(request: Request, csrf: str = Form(""), name: str = Form("", max_length=1024),
                 credential: str = Form("", max_length=passkeys.ANSWER_MAX), db: Session = DB) -> Response:
    """Keep a new passkey: the authenticator's answer to this page's registration options."""
    token, session = _session(request, db)
    if session is None:
        return _not_logged_in()
    if not passkeys.check_form_token(session_token=token, token=csrf):
        return error_page(403, "フォームの確認が無効です。 The form's confirmation is not valid; please reload the page.")
    if not _logged_in_recently(session):
        return _page(db, token, session, status=403, error="パスキーは追加されませんでした。 The passkey was not added.")
    if not credential:
        return _page(db, token, session, status=400,
                     error="パスキーの登録には JavaScript が必要です。 Adding a passkey needs JavaScript.")
    try:
        added = passkeys.register(db_session=db, settings=get_settings(), person_key=session.person_key,
                                  name=name, answer=credential)
    except passkeys.PasskeyError as exc:
        return _page(db, token, session, status=400,
                     error=f"パスキーを登録できませんでした。 The passkey was not added: {exc}")
    _record(db, request, session.person_key, "passkey.added", added.id)
    return RedirectResponse("/idp/passkeys?saved=1", status_code=303)


@router.post("/passkeys/remove")
def passkeys_remove(request: Request, csrf: str = Form(""), passkey: int = Form(0, ge=0, le=2**31 - 1),
                    db: Session = DB) -> Response:
    token, session = _session(request, db)
    if session is None:
        return _not_logged_in()
    if not passkeys.check_form_token(session_token=token, token=csrf):
        return error_page(403, "フォームの確認が無効です。 The form's confirmation is not valid; please reload the page.")
    try:
        gone = passkeys.remove(db_session=db, person_key=session.person_key, passkey_id=passkey)
    except passkeys.PasskeyError as exc:
        return _page(db, token, session, status=404, error=f"削除できませんでした。 Not removed: {exc}")
    _record(db, request, session.person_key, "passkey.removed", gone.id)
    return RedirectResponse("/idp/passkeys?removed=1", status_code=303)
