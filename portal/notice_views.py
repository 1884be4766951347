"""お知らせ: the person's notices, marking them read, and which kinds to be told of (and where)."""
from __future__ import annotations

import secrets

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from kernel.settings import get_settings
from kernel.web import DB
from portal import notices
from portal.models import EMAIL_MAX, NOTICE_KINDS, PortalSession
from portal.service import agency_names
from portal.views import PERSON, _page

router = APIRouter(prefix="/portal", tags=["portal"], include_in_schema=False)

KIND_LABELS = {
    "access": "すべてのやりとり",
    "refusal": "拒否されたやりとり",
    "override": "拒否の意思表示に関わらず法律により提供されたもの",
    "anomaly": "不一致（許可されていない提供の報告）",
}
ID_MAX = 2**63 - 1
KINDS_FIELD = Form(default_factory=list)  # checked against NOTICE_KINDS by the service


def _forged(request: Request, session: PortalSession, csrf_token: str) -> Response | None:
    if secrets.compare_digest(csrf_token, session.csrf_token):
        return None
    return _page(request, "message.html", session, status_code=403, title="要求を処理できません",
                 message="フォームの有効期限が切れました。もう一度お試しください。")


@router.get("/notices")
def notice_list(request: Request, db_session: Session = DB, session: PortalSession = PERSON) -> Response:
    """My notices, newest first, with how many are unread."""
    rows = notices.notices(db_session=db_session, person_key=session.person_key)
    return _page(request, "notices.html", session, title="お知らせ", notices=rows,
                 unread=notices.unread_count(db_session=db_session, person_key=session.person_key),
                 kind_titles=notices.KIND_TITLES, names=agency_names(db_session=db_session))


@router.post("/notices/read")
def notice_read(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                csrf_token: str = Form(..., max_length=64), notice_id: int | None = Form(None, ge=1, le=ID_MAX)) -> Response:
    """Mark one notice (or, without an id, all of them) read."""
    if (refused := _forged(request, session, csrf_token)) is not None:
        return refused
    if notice_id is not None and notices.notice(db_session=db_session, person_key=session.person_key,
                                                notice_id=notice_id) is None:
        return _page(request, "message.html", session, status_code=404, title="要求を処理できません",
                     message="お知らせが見つかりません。")
    notices.mark_read(db_session=db_session, person_key=session.person_key, notice_id=notice_id)
    return RedirectResponse("/portal/notices", status_code=303)


@router.get("/notices/settings")
def notice_settings(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                    saved: bool = False) -> Response:
    """Which kinds of event to be told of, and the e-mail address for them."""
    prefs = notices.preferences(db_session=db_session, person_key=session.person_key)
    return _page(request, "notice_settings.html", session, title="お知らせの設定", prefs=prefs,
                 kinds=[(k, KIND_LABELS[k]) for k in NOTICE_KINDS], email_max=EMAIL_MAX, saved=saved,
                 mail_enabled=bool(get_settings().smtp_host), error=None)


@router.post("/notices/settings")
def save_notice_settings(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                         csrf_token: str = Form(..., max_length=64),
                         kind: list[str] = KINDS_FIELD,
                         email: str = Form("", max_length=EMAIL_MAX)) -> Response:
    """Store the person's notice settings (a 400 with the reason, nothing stored, if invalid)."""
    if (refused := _forged(request, session, csrf_token)) is not None:
        return refused
    try:
        notices.set_preferences(db_session=db_session, person_key=session.person_key, kinds=set(kind), email=email)
    except notices.InvalidPreference as exc:
        return _page(request, "notice_settings.html", session, status_code=400, title="お知らせの設定",
                     prefs=notices.Preferences(frozenset(k for k in kind if k in NOTICE_KINDS), None),
                     kinds=[(k, KIND_LABELS[k]) for k in NOTICE_KINDS], email_max=EMAIL_MAX, saved=False,
                     mail_enabled=bool(get_settings().smtp_host), error=str(exc))
    return RedirectResponse("/portal/notices/settings?saved=true", status_code=303)
