"""手続の流れ: the person's process runs (one procedure, e.g. a move, as one story): which steps
ran, which were refused and why, which were not needed. Read through the process room's
service functions; each step links to the history entries of its decision."""
from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from kernel.web import DB
from portal import service
from portal.models import PortalSession
from portal.views import PERSON, _page
from process import engine

router = APIRouter(prefix="/portal", tags=["portal"], include_in_schema=False)

# what happened to a step, in plain words (the reason code follows in the page)
STEP_WORDS = {
    "done": "行われました",
    "refused": "行われませんでした（提供は認められませんでした）",
    "failed": "行えませんでした",
    "skipped": "必要がなかったため行われませんでした",
    "blocked": "前の手順が行われなかったため行われませんでした",
    "pending": "処理中です",
}
RUN_WORDS = {"running": "処理中", "completed": "完了", "incomplete": "一部の手順が行われませんでした"}


@router.get("/procedures")
def procedures_page(request: Request, db_session: Session = DB, session: PortalSession = PERSON,
                    group: str | None = Query(None, max_length=64)) -> Response:
    """My procedures (newest first), or one of them (?group=its query group ID, as in my history)."""
    if group:
        run = engine.run_for_group(db_session=db_session, person_key=session.person_key, query_group_id=group)
        runs = [run] if run is not None else []
    else:
        runs = engine.runs_of_person(db_session=db_session, person_key=session.person_key)
    return _page(request, "procedures.html", session, title="手続の流れ", runs=runs, one=bool(group),
                 names=service.agency_names(db_session=db_session), step_words=STEP_WORDS, run_words=RUN_WORDS)
