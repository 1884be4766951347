"""The portal's pages for other people: representatives (代理人) and the auditor's pages (監査).

Authorisation sits in the route dependencies: `AUDITOR` answers 404 to anyone without the
role (the pages do not exist for them), and an acting page finds its grant only together with
the logged-in person's own key and only while the grant is live.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session, object_session
from starlette.concurrency import run_in_threadpool

from access_history import audit
from access_history.models import ACCESS_LOG, LOG_NAMES
from kernel.db import utcnow
from kernel.settings import get_settings
from kernel.web import DB
from portal import history_views, people, policy_views, service
from portal.history_views import FILTER_QUERY
from portal.models import PortalSession, Representative
from portal.views import PERSON, _page, _pages
from portal.wording import OUTCOMES

# no prefix of its own: portal.views includes it into its router, whose "/portal" applies
router = APIRouter(prefix="/portal", tags=["portal"], include_in_schema=False)


def _is_auditor(session: PortalSession | None) -> bool:
    """For the menu: whether to show the auditor's entry (the pages check again themselves)."""
    db_session = object_session(session) if session is not None else None
    return db_session is not None and people.is_auditor(db_session=db_session, person_key=session.person_key)


# what the principal reads about their representatives' actions (message IDs of people.po)
ACTIONS = {"representative.view_history": "やりとり履歴を見ました",
           "representative.view_data": "情報の所在を見ました",
           "representative.view_policy": "利用許諾の設定を見ました",
           "representative.preview_policy": "利用許諾の変更を確認しました（保存なし）",
           people.CHANGE_POLICY: "利用許諾を変更しました",
           "representative.view_consent": "同意の記録を見ました",
           "representative.view_receipt": "同意レシートを見ました",
           "representative.download_receipt": "同意レシートをダウンロードしました",
           "representative.download_csv": "やりとり履歴をCSVでダウンロードしました",
           "representative.download_pdf": "やりとり履歴をPDFでダウンロードしました",
           "representative.download_json": "やりとり履歴を記録の証明付きJSONでダウンロードしました"}

_pages.env.globals["portal_is_auditor"] = _is_auditor
_pages.env.globals["action_text"] = lambda code: ACTIONS.get(code, code)

GRANT_ID_MAX = 32
LINE_MAX = 1024 * 1024  # one export line; longer is no export of ours


def _refused(request: Request, session: PortalSession, message: str, status_code: int = 400) -> Response:
    return _page(request, "message.html", session, status_code=status_code, title="要求を処理できません",
                 message=message)


def _csrf_ok(session: PortalSession, token: str) -> bool:
    return secrets.compare_digest(token.encode(), session.csrf_token.encode())


# --- representatives ----------------------------------------------------------------------

def _moment(value: str) -> datetime | None:
    """A datetime-local (or date) field, read as UTC; None if it is no date."""
    try:
        moment = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    if moment is not None and moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _representatives_page(request: Request, db_session: Session, session: PortalSession,
                          status_code: int = 200, error: str | None = None, form: dict | None = None) -> Response:
    now = utcnow()
    return _page(request, "representatives.html", session, status_code=status_code, title="代理人",
                 given=people.grants_given(db_session=db_session, principal_key=session.person_key),
                 held=people.grants_held(db_session=db_session, representative_key=session.person_key, now=now),
                 actions=people.actions_for(db_session=db_session, principal_key=session.person_key),
                 is_live=lambda g: people.is_live(g, now), error=error,
                 form=form or {"username": "", "starts_at": now.strftime("%Y-%m-%dT%H:%M"),
                               "ends_at": (now + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")})


@router.get("/representatives")
def representatives(request: Request, db_session: Session = DB, session: PortalSession = PERSON) -> Response:
    """代理人: whom I let act for me (and what they did), and for whom I may act."""
    return _representatives_page(request, db_session, session)


@router.post("/representatives")
def appoint(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
            csrf_token: str = Form(..., max_length=64), username: str = Form(..., max_length=people.NAME_MAX),
            starts_at: str = Form(..., max_length=32), ends_at: str = Form(..., max_length=32)) -> Response:
    """Appoint a representative for a period."""
    if not _csrf_ok(session, csrf_token):
        return _refused(request, session, "フォームの有効期限が切れました。もう一度お試しください。", 403)
    start, end = _moment(starts_at), _moment(ends_at)
    form = {"username": username, "starts_at": starts_at, "ends_at": ends_at}
    if start is None or end is None:
        return _representatives_page(request, db_session, session, 400, "日時の形式が正しくありません。", form)
    try:
        people.appoint(db_session=db_session, principal_key=session.person_key, username=username,
                       starts_at=start, ends_at=end)
    except people.PeopleError as exc:
        return _representatives_page(request, db_session, session, 400, str(exc), form)
    return RedirectResponse("/portal/representatives", status_code=303)


@router.post("/representatives/{grant_id}/revoke")
def revoke(grant_id: str, request: Request, db_session: Session = DB, session: PortalSession = PERSON,
           csrf_token: str = Form(..., max_length=64)) -> Response:
    """Revoke a grant at once; only its principal can."""
    if not _csrf_ok(session, csrf_token):
        return _refused(request, session, "フォームの有効期限が切れました。もう一度お試しください。", 403)
    if len(grant_id) > GRANT_ID_MAX or not people.revoke(db_session=db_session, principal_key=session.person_key,
                                                          grant_id=grant_id):
        raise HTTPException(404)
    return RedirectResponse("/portal/representatives", status_code=303)


def acting_grant(grant_id: str, db_session: Session = DB,
                 session: PortalSession = PERSON) -> Representative:
    """Route dependency: the live grant the logged-in person acts on, or 404 (checked per request)."""
    grant = people.acting_grant(db_session=db_session, representative_key=session.person_key,
                                grant_id=grant_id) if len(grant_id) <= GRANT_ID_MAX else None
    if grant is None:
        raise HTTPException(404)
    return grant


ACTING = Depends(acting_grant)


def _acting_owner(grant: Representative) -> policy_views.Owner:
    return policy_views.Owner(grant.principal_key, f"/portal/acting/{grant.id}", grant)


@router.get("/acting/{grant_id}/history")
def acting_history(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                   grant: Representative = ACTING, cursor: str | None = Query(None, max_length=200),
                   start: str | None = FILTER_QUERY["start"], end: str | None = FILTER_QUERY["end"],
                   agency: str | None = FILTER_QUERY["agency"],
                   outcome: str | None = FILTER_QUERY["outcome"]) -> Response:
    """The principal's やりとり履歴, seen by their representative (and logged for the principal)."""
    try:
        page = service.history_page(db_session=db_session, person_key=grant.principal_key, cursor=cursor,
                                    filters=history_views.timeline_filter(start, end, agency, outcome))
    except ValueError:
        return _refused(request, session, "ページの指定が正しくありません。")
    people.record_action(db_session=db_session, grant=grant, action="representative.view_history",
                         path=request.url.path)
    return _page(request, "acting_history.html", session, title="代理でやりとり履歴を見る", grant=grant,
                 page=page, names=service.agency_names(db_session=db_session), base=f"/portal/acting/{grant.id}",
                 filters={"start": start or "", "end": end or "", "agency": agency or "", "outcome": outcome or ""})


@router.get("/acting/{grant_id}/history/download.{fmt}")
def acting_download(fmt: str, request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                    grant: Representative = ACTING,
                    start: str | None = FILTER_QUERY["start"], end: str | None = FILTER_QUERY["end"],
                    agency: str | None = FILTER_QUERY["agency"],
                    outcome: str | None = FILTER_QUERY["outcome"]) -> Response:
    """The principal's history as CSV, PDF or JSON with proofs (the download logged for them)."""
    if fmt not in ("csv", "pdf", "json"):
        raise HTTPException(404)
    filters = history_views.timeline_filter(start, end, agency, outcome)

    def record() -> None:
        people.record_action(db_session=db_session, grant=grant, action=f"representative.download_{fmt}",
                             path=request.url.path)

    if fmt == "json":
        record()  # before the file is made: the proof download commits this request's transaction
        return history_views.proofs_download(db_session, grant.principal_key, filters)
    if fmt == "csv":
        response = history_views.csv_download(request, db_session, grant.principal_key, filters)
    else:
        response = history_views.pdf_download(request, db_session, session, grant.principal_key, filters)
    if response.status_code == 200:  # a PDF refused (too long, no font) was no download
        record()
    return response


@router.get("/acting/{grant_id}/data")
def acting_data(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                grant: Representative = ACTING) -> Response:
    """The principal's 情報の所在, seen by their representative (and logged for the principal)."""
    holdings = service.where_my_data_is(db_session=db_session, person_key=grant.principal_key)
    people.record_action(db_session=db_session, grant=grant, action="representative.view_data",
                         path=request.url.path)
    return _page(request, "acting_data.html", session, title="代理で情報の所在を見る", grant=grant,
                 holdings=holdings)


@router.get("/acting/{grant_id}/policy")
def acting_policy(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                  grant: Representative = ACTING) -> Response:
    """The principal's 利用許諾, for their representative to manage."""
    people.record_action(db_session=db_session, grant=grant, action="representative.view_policy",
                         path=request.url.path)
    return policy_views.policy_view(request, db_session, session, _acting_owner(grant))


@router.post("/acting/{grant_id}/policy/preview")
def acting_preview(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                   grant: Representative = ACTING, csrf_token: str = Form("", max_length=64),
                   entry_id: int = Form(..., ge=1, le=2**31 - 1), change: str = Form(..., max_length=8),
                   valid_until: str | None = Form(None, max_length=10)) -> Response:
    """What a representative's change would refuse and what a law still requires, saving nothing."""
    response = policy_views.preview_view(request, db_session, session, _acting_owner(grant), csrf_token=csrf_token,
                                         entry_id=entry_id, change=change, valid_until=valid_until)
    if response.status_code == 200:
        people.record_action(db_session=db_session, grant=grant, action="representative.preview_policy",
                             path=request.url.path)
    return response


@router.post("/acting/{grant_id}/policy")
def acting_save(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                grant: Representative = ACTING, csrf_token: str = Form("", max_length=64),
                entry_id: int = Form(..., ge=1, le=2**31 - 1), change: str = Form(..., max_length=8),
                valid_until: str | None = Form(None, max_length=10)) -> Response:
    """Save a representative's change to the principal's policy; the receipt names the representative."""
    settings = get_settings()
    try:
        receipt_id = policy_views.save_change(
            db_session, session, _acting_owner(grant),
            principal_id=people.principal_pseudonym(db_session=db_session, settings=settings, grant=grant,
                                                    portal_entity_id=service.identity(settings).entity_id),
            collection_method=f"{policy_views.COLLECTED_BY_REPRESENTATIVE}:{grant.representative_name}",
            csrf_token=csrf_token, entry_id=entry_id, change=change, valid_until=valid_until)
    except policy_views.FormRefused as refused:
        return policy_views.refusal_page(request, session, refused)
    people.record_policy_change(db_session=db_session, grant=grant, receipt_id=receipt_id)
    return RedirectResponse(f"/portal/acting/{grant.id}/consent/{receipt_id}?saved=1", status_code=303)


@router.get("/acting/{grant_id}/consent")
def acting_consent(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                   grant: Representative = ACTING) -> Response:
    """The principal's consent record, seen by their representative."""
    people.record_action(db_session=db_session, grant=grant, action="representative.view_consent",
                         path=request.url.path)
    made_by = people.policy_changes_by_representatives(db_session=db_session, principal_key=grant.principal_key)
    return policy_views.consent_view(request, db_session, session, _acting_owner(grant), made_by)


@router.get("/acting/{grant_id}/consent/{receipt_id}.jws")
def acting_receipt_jws(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                       grant: Representative = ACTING,
                       receipt_id: str = Path(..., max_length=policy_views.RECEIPT_ID_MAX)) -> Response:
    """One of the principal's receipts as its JWS (the download logged for the principal)."""
    response = policy_views.receipt_jws_view(request, db_session, session, _acting_owner(grant), receipt_id)
    if response.status_code == 200:
        people.record_action(db_session=db_session, grant=grant, action="representative.download_receipt",
                             path=request.url.path)
    return response


@router.get("/acting/{grant_id}/consent/{receipt_id}")
def acting_receipt(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                   grant: Representative = ACTING,
                   receipt_id: str = Path(..., max_length=policy_views.RECEIPT_ID_MAX)) -> Response:
    """One of the principal's receipts, read by their representative."""
    response = policy_views.receipt_view(request, db_session, session, _acting_owner(grant), receipt_id)
    if response.status_code == 200:
        people.record_action(db_session=db_session, grant=grant, action="representative.view_receipt",
                             path=request.url.path)
    return response


# --- auditors -----------------------------------------------------------------------------

def current_auditor(db_session: Session = DB, session: PortalSession = PERSON) -> PortalSession:
    """Route dependency: the session of a person holding the auditor role; 404 for anyone else."""
    if not people.is_auditor(db_session=db_session, person_key=session.person_key):
        raise HTTPException(404)
    return session


AUDITOR = Depends(current_auditor)


def _audit_page(request: Request, session: PortalSession, status_code: int = 200, **context) -> Response:
    return _page(request, "audit.html", session, status_code=status_code, title="監査", logs=LOG_NAMES,
                 outcomes=OUTCOMES.items(), max_upload=get_settings().audit_upload_max_bytes, **context)


@router.get("/audit")
def audit_home(request: Request, session: PortalSession = AUDITOR) -> Response:
    """監査: export, verify an export, and the anomaly reports."""
    return _audit_page(request, session)


def _export_request(log: str, fmt: str, start: str, end: str, agency: str,
                    outcome: str) -> tuple[audit.ExportFilter, str, str] | None:
    """The export's filters from the form; None if any field is not one we offer."""
    if log not in LOG_NAMES or fmt not in ("jsonl", "csv") or (outcome and outcome not in OUTCOMES):
        return None
    first, last = _moment(start), _moment(end)
    if (start and first is None) or (end and last is None) or any(c < " " for c in agency):
        return None
    if last is not None and len(end) <= 10:
        last += timedelta(days=1)  # a date is the whole day: the period includes it
    return audit.ExportFilter(first, last, agency or None, outcome or None), log, fmt


@router.get("/audit/export")
def audit_export_plan(request: Request, session: PortalSession = AUDITOR,
                      log: str = Query(ACCESS_LOG, max_length=16), fmt: str = Query("jsonl", max_length=8),
                      start: str = Query("", max_length=32), end: str = Query("", max_length=32),
                      agency: str = Query("", max_length=1024), outcome: str = Query("", max_length=64)) -> Response:
    """Before an export starts: what it will hold and about how large it will be."""
    asked = _export_request(log, fmt, start, end, agency, outcome)
    if asked is None:
        return _audit_page(request, session, status_code=400, error="エクスポートの条件が正しくありません。")
    filters, log, fmt = asked
    plan = people.plan_export(settings=get_settings(), log=log, filters=filters, fmt=fmt)
    return _page(request, "audit_export.html", session, title="エクスポートの確認", plan=plan, fmt=fmt,
                 fields={"log": log, "fmt": fmt, "start": start, "end": end, "agency": agency,
                         "outcome": outcome})


@router.post("/audit/export")
def audit_export(request: Request, db_session: Session = DB, session: PortalSession = AUDITOR,
                 csrf_token: str = Form(..., max_length=64), log: str = Form(ACCESS_LOG, max_length=16),
                 fmt: str = Form("jsonl", max_length=8), start: str = Form("", max_length=32),
                 end: str = Form("", max_length=32), agency: str = Form("", max_length=1024),
                 outcome: str = Form("", max_length=64)) -> Response:
    """Stream the export as a download (constant memory); the export is itself logged first."""
    if not _csrf_ok(session, csrf_token):
        return _refused(request, session, "フォームの有効期限が切れました。もう一度お試しください。", 403)
    asked = _export_request(log, fmt, start, end, agency, outcome)
    if asked is None:
        return _audit_page(request, session, status_code=400, error="エクスポートの条件が正しくありません。")
    filters, log, fmt = asked
    settings = get_settings()
    plan = people.plan_export(settings=settings, log=log, filters=filters, fmt=fmt)
    # recorded in this request's transaction, which commits before the first byte leaves
    people.record_export(db_session=db_session, auditor=people.name_of(db_session=db_session,
                                                                       person_key=session.person_key),
                         log=log, filters=filters, fmt=fmt, plan=plan)
    name = f"renkei-{log}-{utcnow():%Y%m%dT%H%M%SZ}.{fmt}"
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/jsonl; charset=utf-8"
    return StreamingResponse(
        people.stream_export(settings=settings, log=log, filters=filters, fmt=fmt), media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store",
                 "X-Content-Type-Options": "nosniff"})


def _text_lines(stream: BinaryIO) -> Iterator[str]:
    """An upload's lines as text; a line too long or not UTF-8 ends the stream as a bad line."""
    while raw := stream.readline(LINE_MAX + 1):
        if len(raw) > LINE_MAX:
            yield "\x00 line too long"
            return
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            yield "\x00 not UTF-8"
            return


@router.post("/audit/verify")
async def audit_verify(request: Request, session: PortalSession = AUDITOR) -> Response:
    """Verify an uploaded export (multipart, size-limited) against this hub's checkpoint key."""
    limit = get_settings().audit_upload_max_bytes
    try:
        length = int(request.headers.get("content-length", ""))
    except ValueError:
        return _audit_page(request, session, status_code=411, error="アップロードの大きさが分かりません。")
    if length > limit + 64 * 1024:  # the form's own fields and boundaries on top of the file
        return _audit_page(request, session, status_code=413, error="ファイルが大きすぎます。")
    async with request.form(max_files=1, max_fields=4) as form:
        upload, token = form.get("export"), form.get("csrf_token")
        if not isinstance(token, str) or not _csrf_ok(session, token[:64]):
            return _refused(request, session, "フォームの有効期限が切れました。もう一度お試しください。", 403)
        if upload is None or isinstance(upload, str):
            return _audit_page(request, session, status_code=400, error="ファイルを選んでください。")
        if upload.size is not None and upload.size > limit:
            return _audit_page(request, session, status_code=413, error="ファイルが大きすぎます。")
        report = await run_in_threadpool(people.verify_upload, settings=get_settings(),
                                         lines=_text_lines(upload.file))
    return _page(request, "audit_verify.html", session, title="検証の結果", report=report,
                 filename=(upload.filename or "")[:200])


@router.get("/audit/anomalies")
def audit_anomalies(request: Request, db_session: Session = DB, session: PortalSession = AUDITOR) -> Response:
    """Disclosures the hub did not permit, and permits no provider reported in time."""
    settings = get_settings()
    anomalous, unreported = people.anomalies(db_session=db_session, settings=settings)
    return _page(request, "audit_anomalies.html", session, title="不一致の一覧", anomalous=anomalous,
                 unreported=unreported, within_hours=settings.disclosure_report_within_seconds / 3600,
                 names=service.agency_names(db_session=db_session))
