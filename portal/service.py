"""The portal's service functions: its SAML identity, logins and sessions, and what a person sees.

Every read for a person goes through the rooms' own service functions, keyed by the person key
the portal's pseudonym maps back to inside the hub; an ID from a URL or form is only ever
looked up together with that person key, so another person's ID finds nothing.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from access_history import person as history_person
from access_history import service as history
from discovery import service as location
from federation import service as agencies
from kernel.db import utcnow
from kernel.keys import KeyStore, SigningKey, current_signing_key
from kernel.replay import DatabaseReplayCache
from kernel.settings import Settings, get_settings
from kernel.xml import XMLSecurityError
from portal import sp as portal_sp
from portal.models import PortalPending, PortalSession
from pseudonym import service as pseudonyms

PENDING_LIFETIME = timedelta(minutes=10)
SESSION_LIFETIME = timedelta(hours=8)


class LoginFailed(ValueError):
    """The IdP's answer could not be accepted; the reason is safe to show."""


def identity(settings: Settings) -> portal_sp.PortalSP:
    return portal_sp.PortalSP(settings.base_url, settings.idp_entity_id)


def signing_key() -> SigningKey:
    return current_signing_key(portal_sp.PORTAL_ROLE)


def register(*, db_session: Session, settings: Settings, keys: KeyStore) -> None:
    """Register (or refresh) the portal as an agency of the federation, from its own metadata."""
    me = identity(settings)
    xml = portal_sp.metadata(me, keys.ensure_signing_key(portal_sp.PORTAL_ROLE))
    existing = agencies.lookup(db_session=db_session, entity_id=me.entity_id)
    agencies.register(db_session=db_session, metadata=xml, agency_class=portal_sp.PORTAL_CLASS,
                      name="マイ連携ポータル", replace=existing is not None)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_login(*, db_session: Session, settings: Settings, browser: str, next_path: str,
                now: datetime | None = None) -> str:
    """The IdP URL to send the browser to; the request is remembered for this browser only."""
    now = now or utcnow()
    request_id, url = portal_sp.login_redirect(identity(settings), signing_key(), now=now)
    db_session.add(PortalPending(request_id=request_id, browser=_digest(browser), kind="login",
                                 next_path=next_path, expires_at=now + PENDING_LIFETIME))
    return url


@dataclass(frozen=True)
class Started:
    token: str
    next_path: str


def finish_login(*, db_session: Session, settings: Settings, browser: str, saml_response: str,
                 now: datetime | None = None) -> Started:
    """Accept the IdP's Response to one of this browser's pending logins; start a session."""
    now = now or utcnow()
    pending = {p.request_id: p for p in db_session.scalars(
        select(PortalPending).where(PortalPending.browser == _digest(browser), PortalPending.kind == "login",
                                    PortalPending.expires_at > now))}
    me = identity(settings)
    idp_keys = [c.public_key() for c in KeyStore(settings.keys_dir).published_certificates("idp")]
    try:
        assertion = portal_sp.read_login(
            me, saml_response, idp_keys=idp_keys, pending_ids=set(pending),
            replay_cache=DatabaseReplayCache(db_session=db_session, issuer=settings.idp_entity_id),
            now=now, skew=timedelta(seconds=settings.clock_skew_seconds),
            max_bytes=settings.max_message_bytes)
    except XMLSecurityError as exc:
        raise LoginFailed(f"the login answer was refused: {exc}") from None
    try:
        person = pseudonyms.resolve(db_session=db_session, agency=me.entity_id, value=assertion.name_id)
    except pseudonyms.PseudonymError:
        raise LoginFailed("the login answer names no person known to the portal") from None
    request_id = next(iter(pending)) if len(pending) == 1 else None
    for p in pending.values():
        db_session.delete(p)
    token = secrets.token_urlsafe(32)
    db_session.add(PortalSession(
        id=_digest(token), person_key=person.person_key, name_id=assertion.name_id,
        session_index=assertion.session_index, csrf_token=secrets.token_urlsafe(24), created_at=now,
        last_seen_at=now, expires_at=now + SESSION_LIFETIME))
    next_path = pending[request_id].next_path if request_id else "/portal/"
    return Started(token, next_path)


def load_session(*, db_session: Session, token: str | None, idle: timedelta,
                 now: datetime | None = None) -> PortalSession | None:
    """The live session of this cookie, touched; None if absent, expired or idle too long."""
    if not token or len(token) > 128:
        return None
    now = now or utcnow()
    row = db_session.get(PortalSession, _digest(token))
    if row is None or row.expires_at <= now or row.last_seen_at + idle <= now:
        return None
    if now - row.last_seen_at > timedelta(minutes=1):  # a write a minute at most, not per page
        row.last_seen_at = now
    return row


def start_logout(*, db_session: Session, settings: Settings, session: PortalSession, browser: str,
                 now: datetime | None = None) -> str:
    """End the portal session and ask the IdP to end the person's single sign-on (SLO)."""
    now = now or utcnow()
    request_id, url = portal_sp.logout_redirect(identity(settings), signing_key(), name_id=session.name_id,
                                                session_index=session.session_index, now=now)
    db_session.add(PortalPending(request_id=request_id, browser=_digest(browser), kind="logout",
                                 next_path="/portal/", expires_at=now + PENDING_LIFETIME))
    db_session.delete(session)
    return url


def finish_logout(*, db_session: Session, settings: Settings, raw_query: str) -> bool:
    """Read the IdP's LogoutResponse; True if it answers a logout this portal asked for."""
    idp_keys = [c.public_key() for c in KeyStore(settings.keys_dir).published_certificates("idp")]
    try:
        in_response_to, ok = portal_sp.read_logout_response(identity(settings), raw_query, idp_keys=idp_keys,
                                                            max_bytes=settings.max_message_bytes)
    except XMLSecurityError:
        return False
    pending = db_session.get(PortalPending, in_response_to) if in_response_to else None
    if pending is None or pending.kind != "logout":
        return False
    db_session.delete(pending)
    return ok


def sweep(*, db_session: Session, now: datetime | None = None) -> None:
    """Forget expired sessions and pending requests."""
    now = now or utcnow()
    db_session.execute(delete(PortalSession).where(PortalSession.expires_at < now))
    db_session.execute(delete(PortalPending).where(PortalPending.expires_at < now))


# --- what a person sees -----------------------------------------------------------------------

@dataclass(frozen=True)
class Holding:
    """An agency that holds data about me, and the services it offers from that data."""

    entity_id: str
    name: str
    services: tuple[str, ...]


def where_my_data_is(*, db_session: Session, person_key: str) -> list[Holding]:
    """情報の所在: the agencies linked to the person, with the service types they offer."""
    held = pseudonyms.holdings(db_session=db_session, person_key=person_key)
    by_provider: dict[str, list[str]] = {}
    for offering in location.list_offerings(db_session=db_session):
        by_provider.setdefault(offering.provider, []).append(offering.service_type_urn)
    names = {a.entity_id: a.name for a in agencies.list_all(db_session=db_session)}
    return [Holding(agency, names.get(agency, agency), tuple(sorted(by_provider.get(agency, ()))))
            for agency in sorted(held, key=lambda a: names.get(a, a))]


def history_page(*, db_session: Session, person_key: str, cursor: str | None,
                 filters: history.TimelineFilter, limit: int = 50) -> history.Page:
    return history.timeline(db_session=db_session, person_key=person_key, limit=limit, cursor=cursor,
                            filters=filters)


HUB_IDP_NAME = "連携基盤（ログイン）"  # the hub's own IdP: the provider of SSO releases


def agency_names(*, db_session: Session) -> dict[str, str]:
    """Display names by entity ID: every registered agency, and the hub's own IdP."""
    names = {a.entity_id: a.name for a in agencies.list_all(db_session=db_session)}
    names.setdefault(get_settings().idp_entity_id, HUB_IDP_NAME)
    return names


def monthly_outcomes(*, db_session: Session, person_key: str) -> list[history_person.MonthCount]:
    """The person's exchanges per month and outcome over the last twelve months."""
    return history_person.monthly_outcomes(db_session=db_session, person_key=person_key)
