"""Who took part in a login session: every agency that got an assertion, with the NameID it
got. Single Logout reaches exactly these (profiles §4.4.3.3), and a transient NameID, which
nothing else can map back to a person, resolves through them for the session's lifetime.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from idp.models import IdpSession, SessionParticipant
from idp.saml import NAMEID_PERSISTENT, NAMEID_TRANSIENT

if TYPE_CHECKING:
    from idp.service import LiveSession


@dataclass(frozen=True)
class Participant:
    session_id: str
    sp: str
    name_id: str
    name_id_format: str
    session_index: str


def new_transient() -> str:
    """A transient NameID (core §8.3.8): random, used once, opaque; 160 bits."""
    return "_" + secrets.token_hex(20)


_PARTICIPANTS = SessionParticipant.__table__


def known_of(session_id, sp, name_id):
    """Whether `sp` was already given `name_id` in the session (columns or bound parameters):
    a statement of its own, or `exists(…)` inside the session's read."""
    return select(_PARTICIPANTS.c.id).where(
        _PARTICIPANTS.c.session_id == session_id, _PARTICIPANTS.c.sp == sp,
        _PARTICIPANTS.c.name_id == name_id).limit(1)


_KNOWN = known_of(bindparam("session_id"), bindparam("sp"), bindparam("name_id"))
_ADD = _PARTICIPANTS.insert()


def record(*, db_session: Session, session: LiveSession, sp: str, name_id: str, name_id_format: str,
           known: bool = False) -> None:
    """Note that `sp` got an assertion in `session` naming the person `name_id` (prebuilt Core
    statements: this runs on every SSO answer); `known`: the session's read found it already."""
    if known:
        return
    connection = db_session.connection()
    params = {"session_id": session.id, "sp": sp, "name_id": name_id}
    if connection.execute(_KNOWN, params).first() is None:
        connection.execute(_ADD, {**params, "name_id_format": name_id_format, "expires_at": session.expires_at})


def sessions_of_transient(*, db_session: Session, sp: str, name_id: str) -> list[str]:
    """The sessions in which `sp` was given this transient NameID (one, unless it is reused)."""
    return list(db_session.scalars(select(SessionParticipant.session_id).where(
        SessionParticipant.sp == sp, SessionParticipant.name_id == name_id,
        SessionParticipant.name_id_format == NAMEID_TRANSIENT)))


def of_sessions(*, db_session: Session, session_ids: list[str]) -> list[Participant]:
    """Every participant of these sessions, once per (agency, NameID)."""
    if not session_ids:
        return []
    rows = db_session.execute(
        select(SessionParticipant, IdpSession.session_index)
        .join(IdpSession, IdpSession.id == SessionParticipant.session_id)
        .where(SessionParticipant.session_id.in_(session_ids))
        .order_by(SessionParticipant.id)
    ).all()
    seen: dict[tuple[str, str], Participant] = {}
    for row, index in rows:
        seen.setdefault((row.sp, row.name_id),
                        Participant(row.session_id, row.sp, row.name_id, row.name_id_format, index))
    return list(seen.values())


def forget(*, db_session: Session, session_ids: list[str]) -> None:
    """Drop the participants of ended sessions."""
    if session_ids:
        db_session.execute(delete(SessionParticipant).where(SessionParticipant.session_id.in_(session_ids)))


__all__ = ["NAMEID_PERSISTENT", "NAMEID_TRANSIENT", "Participant", "forget", "new_transient", "of_sessions",
           "record", "sessions_of_transient"]
