"""Downloads of a person's history (CSV, PDF, JSON with inclusion proofs), under /portal/history/."""
from __future__ import annotations

import itertools
import json

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from access_history import person as history_person
from access_history import service as history
from kernel.db import session_scope, utcnow
from kernel.keys import keystore
from kernel.settings import get_settings
from kernel.web import DB
from portal import history_files, i18n, service
from portal.models import PortalSession
from portal.views import PERSON, _page, _when

# no prefix of its own: portal.views includes this router, and its "/portal" prefix applies
# (a child prefix "/portal" would make /portal/portal/...)
router = APIRouter(prefix="/portal", tags=["portal"], include_in_schema=False)


def timeline_filter(start: str | None, end: str | None, agency: str | None, outcome: str | None) -> history.TimelineFilter:
    return history.TimelineFilter(start=_when(start), end=_when(end), agency=agency or None, outcome=outcome or None)


def _file(body: bytes, media_type: str, extension: str) -> Response:
    name = f"renkei-history-{utcnow():%Y%m%d}.{extension}"
    return Response(body, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff"})


PDF_MAX_ROWS = 1000
FILTER_QUERY = {"start": Query(None, max_length=32), "end": Query(None, max_length=32),
                "agency": Query(None, max_length=1024), "outcome": Query(None, max_length=64)}


def csv_download(request: Request, db_session: Session, person_key: str,
                 filters: history.TimelineFilter) -> Response:
    """A person's history (all, or as filtered) as CSV: UTF-8 with BOM, one row per entry."""
    i18n.set_language(request.cookies.get(i18n.COOKIE))
    items = history_person.entries(db_session=db_session, person_key=person_key, filters=filters)
    body = history_files.to_csv(items, service.agency_names(db_session=db_session))
    return _file(body, "text/csv; charset=utf-8", "csv")


def pdf_download(request: Request, db_session: Session, session: PortalSession, person_key: str,
                 filters: history.TimelineFilter) -> Response:
    """A person's history as a printable PDF with the Japanese font embedded."""
    i18n.set_language(request.cookies.get(i18n.COOKIE))
    # laying out a PDF costs far more than a CSV row: a bound keeps one request from taking minutes
    items = list(itertools.islice(history_person.entries(db_session=db_session, person_key=person_key,
                                                         filters=filters), PDF_MAX_ROWS + 1))
    if len(items) > PDF_MAX_ROWS:
        return _page(request, "message.html", session, status_code=400, title="PDFを作成できません",
                     message="PDFにできるのは1000件までです。期間を絞り込むか、CSVをご利用ください。")
    subtitle = f"{i18n.gettext('作成日時')}: {i18n.when(utcnow())} UTC"
    try:
        body = history_files.to_pdf(items, service.agency_names(db_session=db_session),
                                    title=i18n.gettext("やりとり履歴"), subtitle=subtitle)
    except history_files.NoFont:
        return _page(request, "message.html", session, status_code=503, title="PDFを作成できません",
                     message="PDFに使う日本語フォントがこのサーバーにありません。CSVをご利用ください。")
    return _file(body, "application/pdf", "pdf")


def proofs_download(db_session: Session, person_key: str, filters: history.TimelineFilter) -> Response:
    """A person's history with RFC 9162 inclusion proofs to the newest signed checkpoint."""
    settings = get_settings()
    keys = keystore()
    # end this request's transaction first: on SQLite an open write would block the integrator
    db_session.commit()
    history.integrate_all(session_scope=lambda: session_scope(settings.db_url), keys=keys, scope=settings.scope)
    signer = history.log_signer(keys=keys, scope=settings.scope, log="access")
    bundle = history_person.proof_bundle(db_session=db_session, person_key=person_key,
                                         verifier_key=signer.verifier_key, filters=filters)
    body = json.dumps(bundle, ensure_ascii=False, indent=1).encode("utf-8")
    return _file(body, "application/json", "json")


@router.get("/history/download.csv")
def download_csv(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                 start: str | None = FILTER_QUERY["start"], end: str | None = FILTER_QUERY["end"],
                 agency: str | None = FILTER_QUERY["agency"], outcome: str | None = FILTER_QUERY["outcome"]) -> Response:
    """My history (all, or as filtered) as CSV: UTF-8 with BOM, one row per entry."""
    return csv_download(request, db_session, session.person_key, timeline_filter(start, end, agency, outcome))


@router.get("/history/download.pdf")
def download_pdf(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                 start: str | None = FILTER_QUERY["start"], end: str | None = FILTER_QUERY["end"],
                 agency: str | None = FILTER_QUERY["agency"], outcome: str | None = FILTER_QUERY["outcome"]) -> Response:
    """My history as a printable PDF with the Japanese font embedded."""
    return pdf_download(request, db_session, session, session.person_key, timeline_filter(start, end, agency, outcome))


@router.get("/history/download.json")
def download_proofs(db_session: Session = DB, session: PortalSession = PERSON,
                    start: str | None = FILTER_QUERY["start"], end: str | None = FILTER_QUERY["end"],
                    agency: str | None = FILTER_QUERY["agency"], outcome: str | None = FILTER_QUERY["outcome"]) -> Response:
    """My history with RFC 9162 inclusion proofs to the newest signed checkpoint (checkable
    offline with `renkei audit check-proof`)."""
    return proofs_download(db_session, session.person_key, timeline_filter(start, end, agency, outcome))
