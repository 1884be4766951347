"""Ending the OIDC side of a login session: OpenID Connect Back-Channel Logout 1.0.

One login session serves SAML and OIDC alike (the IdP's `idp_sessions` row). When it ends (the
RP-initiated logout here, the IdP's logout page, or SAML Single Logout), `end_sessions` sends a
signed Logout Token (§2.4) to the `backchannel_logout_uri` of every RP that received an ID token
in that session, and forgets their codes and access tokens.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC

import httpx
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from federation import service as agencies
from idp.models import IdpSession
from idp.oidc import keys as op_keys
from idp.oidc.models import OidcCode, OidcRpSession, OidcToken
from idp.oidc.server import issuer
from kernel.db import utcnow
from kernel.keys import keystore
from kernel.settings import get_settings
from pseudonym import service as pseudonyms

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_LIFETIME = 120
SEND_TIMEOUT = 5.0  # seconds per RP: one unreachable RP must not hold the person's logout long


@dataclass(frozen=True)
class LogoutResult:
    """What one RP of the session was told: `ok` False when it could not be reached or refused."""

    client_id: str
    ok: bool
    detail: str


def logout_token(*, client_id: str, sub: str, sid: str, alg: str) -> str:
    """A Logout Token (Back-Channel Logout 1.0 §2.4), signed as the RP's ID tokens are and
    explicitly typed `logout+jwt`, so it can never pass for an ID token."""
    settings, keys = get_settings(), keystore()
    now = int(utcnow().replace(tzinfo=UTC).timestamp())
    key = op_keys.signing_key(keys, alg)
    claims = {"iss": issuer(settings), "aud": client_id, "iat": now, "exp": now + LOGOUT_TOKEN_LIFETIME,
              "jti": secrets.token_urlsafe(16), "sub": sub, "sid": sid, "events": {BACKCHANNEL_EVENT: {}}}
    header = {"alg": key.alg, "kid": key.kid, "typ": "logout+jwt"}
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    jwk = (ECKey if key.alg == "ES256" else RSAKey).import_key(key.private_key)
    return jws.serialize_compact(header, payload, jwk, algorithms=[key.alg])


def end_sessions(db_session: Session, login_session_id: str) -> list[LogoutResult]:
    """End the OIDC sessions of one login session (`idp_sessions.id`): every RP that got an ID
    token in it is sent a Logout Token; their codes and access tokens stop working. The caller
    ends the login session itself (or calls `end_login_session`) and owns the transaction."""
    keys, settings = keystore(), get_settings()
    results: list[LogoutResult] = []
    rps = list(db_session.scalars(select(OidcRpSession).where(OidcRpSession.login_session_id == login_session_id)))
    for rp in rps:
        agency = agencies.lookup(db_session=db_session, entity_id=rp.client_id)
        client = agency.oidc if agency is not None else None
        if client is None or not client.backchannel_logout_uri:
            results.append(LogoutResult(rp.client_id, False, "no backchannel_logout_uri registered"))
            continue
        sub = pseudonyms.get_or_create(db_session=db_session, keys=keys, person_key=rp.person_key,
                                       agency=rp.client_id, scope=settings.scope)
        token = logout_token(client_id=rp.client_id, sub=sub, sid=rp.sid, alg=client.id_token_signed_response_alg)
        try:
            answer = httpx.post(client.backchannel_logout_uri, data={"logout_token": token}, timeout=SEND_TIMEOUT,
                                headers={"Cache-Control": "no-store"})
            ok = answer.status_code in (200, 204)  # §2.8
            results.append(LogoutResult(rp.client_id, ok, f"HTTP {answer.status_code}"))
        except httpx.HTTPError as exc:
            results.append(LogoutResult(rp.client_id, False, type(exc).__name__))
    db_session.execute(delete(OidcRpSession).where(OidcRpSession.login_session_id == login_session_id))
    db_session.execute(delete(OidcToken).where(OidcToken.login_session_id == login_session_id))
    db_session.execute(delete(OidcCode).where(OidcCode.login_session_id == login_session_id))
    return results


def end_login_session(db_session: Session, login_session_id: str) -> list[LogoutResult]:
    """End a login session entirely: its OIDC RPs (`end_sessions`), its SAML SPs where the
    IdP can reach them over the back channel (`idp.slo`, where present), and the IdP session."""
    results = end_sessions(db_session, login_session_id)
    try:
        from idp import slo  # SAML Single Logout to every SP of the session, if this build has it
    except ImportError:
        slo = None
    if slo is not None and hasattr(slo, "end_saml_sessions"):
        slo.end_saml_sessions(db_session=db_session, settings=get_settings(), login_session_id=login_session_id)
    db_session.execute(delete(IdpSession).where(IdpSession.id == login_session_id))
    return results


def expire(*, db_session: Session, now=None) -> None:
    """Drop expired pending requests, codes and access tokens, and the RP sessions of login
    sessions that ended without a logout (expired or idle)."""
    from idp.oidc.models import OidcPending

    now = now or utcnow()
    db_session.execute(delete(OidcPending).where(OidcPending.expires_at <= now))
    db_session.execute(delete(OidcCode).where(OidcCode.expires_at <= now))
    db_session.execute(delete(OidcToken).where(OidcToken.expires_at <= now))
    live = select(IdpSession.id)
    db_session.execute(delete(OidcRpSession).where(OidcRpSession.login_session_id.not_in(live)))
