"""The portal's disclosure policy (利用許諾) and consent record pages: the person's setting for
every exchange the law allows about them, a preview before saving, and every receipt issued."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from consent import receipts
from consent import service as consent
from consent.errors import InvalidPolicyRule, ReceiptInvalid
from federation import service as agencies
from kernel.db import utcnow
from kernel.keys import keystore
from kernel.settings import get_settings
from kernel.web import DB
from portal import people, service
from portal.models import PortalSession
from portal.views import PERSON, _page
from pseudonym import service as pseudonyms

router = APIRouter(prefix="/portal", tags=["portal"], include_in_schema=False)

RECEIPT_ID_MAX = 36  # a UUID, as consent_receipt.id holds it
# outcomes of a previewed exchange: refused on the person's account, or happening because of a law
REFUSED = ("DENIED_BY_PERSON", "CONSENT_NOT_GIVEN")
BY_LAW = ("LAW_OVERRIDES_CONSENT", "PERMITTED_BY_LAW")
# a change a representative (代理人) made on the portal: the receipt says so, and names them
COLLECTED_BY_REPRESENTATIVE = "portal-representative"


class FormRefused(Exception):
    """A form the portal cannot act on: the status and the message to show (a message ID)."""

    def __init__(self, status_code: int, message: str):
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class _Situation:
    """Everything the person's setting is judged against, read in the request's transaction."""

    entries: list[tuple[Any, list[str]]]  # (whitelist entry, the holders it names as provider)
    rules: list[Any]  # the person's current rules, as consent's PolicyRuleIn values
    classes: dict[str, set[str]]
    names: dict[str, str]


def _situation(db_session: Session, person_key: str) -> _Situation:
    known = agencies.list_all(db_session=db_session)
    classes = {a.entity_id: {a.agency_class} if a.agency_class else set() for a in known}
    held = pseudonyms.holdings(db_session=db_session, person_key=person_key)
    entries = consent.entries_concerning(db_session=db_session, holders=held, classes_of=classes)
    current = consent.get_current_policy(db_session=db_session, person_key=person_key)
    rules = [r.as_input() for r in current.rules] if current else []
    return _Situation(entries, rules, classes, {a.entity_id: a.name for a in known})


def _check_form(session: PortalSession, csrf_token: str) -> None:
    if not secrets.compare_digest(csrf_token.encode(), session.csrf_token.encode()):
        raise FormRefused(403, "フォームの有効期限が切れました。もう一度お試しください。")


def _end_of(value: str | None, change: str) -> datetime | None:
    """The end date from the form as the first instant after that day (UTC); only for allow/deny."""
    if not value or change not in ("allow", "deny"):
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise FormRefused(400, "終了日の形式が正しくありません。") from None
    end = datetime(day.year, day.month, day.day) + timedelta(days=1)
    if end <= utcnow():
        raise FormRefused(400, "終了日は今日以降の日付にしてください。")
    return end


def _planned(situation: _Situation, entry_id: int, change: str,
             valid_until: str | None) -> tuple[Any, list[Any]]:
    """The whitelist entry (only one concerning this person) and the rules the change makes."""
    entry = next((e for e, _ in situation.entries if e.id == entry_id), None)
    if entry is None:
        raise FormRefused(404, "指定されたものは見つかりませんでした。")
    if change not in consent.ENTRY_CHANGES:
        raise FormRefused(400, "設定の変更の種類が正しくありません。")
    try:
        rules = consent.change_entry_rules(entry=entry, rules=situation.rules, change=change,
                                           valid_until=_end_of(valid_until, change))
    except InvalidPolicyRule:
        raise FormRefused(400, "この設定は保存できません。") from None
    return entry, rules


def refusal_page(request: Request, session: PortalSession, refused: FormRefused) -> Response:
    return _page(request, "message.html", session, status_code=refused.status_code,
                 title="要求を処理できません", message=refused.message)


@dataclass(frozen=True)
class Owner:
    """Whose policy the pages show and change: the logged-in person, or a principal a
    representative acts for (then `base` is the grant's own path and `acting` its name)."""

    person_key: str
    base: str = "/portal"
    acting: Any = None  # the live grant (portal.models.Representative) when a representative acts

    def context(self) -> dict[str, Any]:
        return {"base": self.base, "grant": self.acting}


def own(session: PortalSession) -> Owner:
    return Owner(session.person_key)


def policy_view(request: Request, db_session: Session, session: PortalSession, owner: Owner) -> Response:
    situation = _situation(db_session, owner.person_key)
    rows = [(entry, providers, consent.entry_setting(entry=entry, rules=situation.rules))
            for entry, providers in situation.entries]
    return _page(request, "policy.html", session, title="利用許諾", rows=rows, names=situation.names,
                 today=utcnow().date().isoformat(), **owner.context())


def preview_view(request: Request, db_session: Session, session: PortalSession, owner: Owner, *,
                 csrf_token: str, entry_id: int, change: str, valid_until: str | None) -> Response:
    try:
        _check_form(session, csrf_token)
        situation = _situation(db_session, owner.person_key)
        entry, rules = _planned(situation, entry_id, change, valid_until)
    except FormRefused as refused:
        return refusal_page(request, session, refused)
    before = {(x.entry.id, x.provider): x.decision.reason.value
              for x in consent.weigh_exchanges(entries=situation.entries, rules=situation.rules,
                                               classes_of=situation.classes)}
    after = consent.weigh_exchanges(entries=situation.entries, rules=rules, classes_of=situation.classes)
    changed = {(x.entry.id, x.provider) for x in after if before.get((x.entry.id, x.provider)) != x.decision.reason}
    return _page(request, "policy_preview.html", session, title="変更の確認", entry=entry, change=change,
                 valid_until=(valid_until or "") if change in ("allow", "deny") else "",
                 refused=[x for x in after if x.decision.reason in REFUSED],
                 by_law=[x for x in after if x.decision.reason in BY_LAW],
                 changed=changed, names=situation.names, **owner.context())


def save_change(db_session: Session, session: PortalSession, owner: Owner, *, principal_id: str,
                collection_method: str, csrf_token: str, entry_id: int, change: str,
                valid_until: str | None) -> str:
    """Save a previewed change as a new policy version of `owner`; the ID of its signed receipt.
    Raises FormRefused for a form the portal cannot act on."""
    _check_form(session, csrf_token)
    # the change is made to the policy in force when it is saved, not when it was previewed:
    # another tab's change saved meanwhile stays (consent.lock_policy)
    consent.lock_policy(db_session=db_session, person_key=owner.person_key)
    _, rules = _planned(_situation(db_session, owner.person_key), entry_id, change, valid_until)
    version = consent.set_policy(
        db_session=db_session, person_key=owner.person_key, rules=rules, principal_id=principal_id,
        collection_method=collection_method,
        issuer=receipts.default_issuer(policy_url=f"{get_settings().base_url.rstrip('/')}/portal/policy"))
    return version.receipt.id


def consent_view(request: Request, db_session: Session, session: PortalSession, owner: Owner,
                 made_by: dict[str, str]) -> Response:
    """`made_by`: the receipts of changes a representative made, with the representative's name."""
    changes = consent.policy_history(db_session=db_session, person_key=owner.person_key)
    return _page(request, "consent.html", session, title="同意の記録", changes=changes, made_by=made_by,
                 names=service.agency_names(db_session=db_session), **owner.context())


def _not_found(request: Request, session: PortalSession) -> Response:
    return refusal_page(request, session, FormRefused(404, "指定されたものは見つかりませんでした。"))


def receipt_jws_view(request: Request, db_session: Session, session: PortalSession, owner: Owner,
                     receipt_id: str) -> Response:
    row = consent.get_receipt(db_session=db_session, receipt_id=receipt_id, person_key=owner.person_key)
    if row is None:
        return _not_found(request, session)
    return Response(row.jws, media_type="application/jose", headers={
        "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="consent-receipt-{row.id}.jws"'})


def representative_of(claims: dict[str, Any] | None) -> str | None:
    """The representative a receipt names as having made the change (None: the person themself)."""
    method = (claims or {}).get("collectionMethod")
    prefix = COLLECTED_BY_REPRESENTATIVE + ":"
    return method[len(prefix):] if isinstance(method, str) and method.startswith(prefix) else None


def receipt_view(request: Request, db_session: Session, session: PortalSession, owner: Owner,
                 receipt_id: str) -> Response:
    row = consent.get_receipt(db_session=db_session, receipt_id=receipt_id, person_key=owner.person_key)
    if row is None:
        return _not_found(request, session)
    try:
        claims = consent.verify_stored_receipt(db_session=db_session, receipt_id=row.id, keys=keystore())
    except ReceiptInvalid:
        claims = None
    issued = (datetime.fromtimestamp(claims["consentTimestamp"], UTC).replace(tzinfo=None)
              if claims else row.issued_at)
    return _page(request, "receipt.html", session, title="同意レシート", receipt=row, claims=claims,
                 issued=issued, rules=[r.as_input() for r in row.policy_version.rules],
                 made_by=representative_of(claims), saved=request.query_params.get("saved") == "1",
                 names=service.agency_names(db_session=db_session), **owner.context())


# --- the person's own pages -------------------------------------------------------------------

@router.get("/policy")
def policy_page(request: Request, db_session: Session = DB, session: PortalSession = PERSON) -> Response:
    """利用許諾: every exchange the law allows about me, what the law says, and my setting."""
    return policy_view(request, db_session, session, own(session))


@router.post("/policy/preview")
def preview(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
            csrf_token: str = Form("", max_length=64), entry_id: int = Form(..., ge=1, le=2**31 - 1),
            change: str = Form(..., max_length=8), valid_until: str | None = Form(None, max_length=10)) -> Response:
    """変更の確認: what the change would refuse and what a law still requires, saving nothing."""
    return preview_view(request, db_session, session, own(session), csrf_token=csrf_token, entry_id=entry_id,
                        change=change, valid_until=valid_until)


@router.post("/policy")
def save(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
         csrf_token: str = Form("", max_length=64), entry_id: int = Form(..., ge=1, le=2**31 - 1),
         change: str = Form(..., max_length=8), valid_until: str | None = Form(None, max_length=10)) -> Response:
    """Save the previewed change as a new policy version and issue its signed consent receipt."""
    try:
        # the person's pseudonym at the portal names them on the receipt without the hub's key
        receipt_id = save_change(db_session, session, own(session), principal_id=session.name_id,
                                 collection_method=receipts.COLLECTED_BY_PORTAL, csrf_token=csrf_token,
                                 entry_id=entry_id, change=change, valid_until=valid_until)
    except FormRefused as refused:
        return refusal_page(request, session, refused)
    return RedirectResponse(f"/portal/consent/{receipt_id}?saved=1", status_code=303)


@router.get("/consent")
def consent_record(request: Request, db_session: Session = DB, session: PortalSession = PERSON) -> Response:
    """同意の記録: every version of my policy, what changed (and who changed it), and its receipt."""
    made_by = people.policy_changes_by_representatives(db_session=db_session, principal_key=session.person_key)
    return consent_view(request, db_session, session, own(session), made_by)


@router.get("/consent/{receipt_id}.jws")
def receipt_jws(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                receipt_id: str = Path(..., max_length=RECEIPT_ID_MAX)) -> Response:
    """The receipt as issued: its compact JWS, for the person to keep and verify."""
    return receipt_jws_view(request, db_session, session, own(session), receipt_id)


@router.get("/consent/{receipt_id}")
def receipt_page(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                 receipt_id: str = Path(..., max_length=RECEIPT_ID_MAX)) -> Response:
    """One receipt's claims in plain words, checked against the hub's consent keys."""
    return receipt_view(request, db_session, session, own(session), receipt_id)
