"""The agency app's own browser sessions, and the assertion IDs it has already accepted.

Starlette's SessionMiddleware needs itsdangerous, which is not among Renkei's dependencies, so
the demo keeps sessions in a dict keyed by a random cookie. That suits one demo process; an
agency's real system keeps them in its own database or cache.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

SESSION_LIFETIME_SECONDS = 8 * 3600


@dataclass
class _Entry:
    data: dict[str, Any]
    expires_at: float = field(default_factory=lambda: time.time() + SESSION_LIFETIME_SECONDS)


class SessionStore:
    """Server-side sessions: the cookie carries only an unguessable random key."""

    def __init__(self, *, cookie_name: str, path: str, secure: bool):
        self.cookie_name = cookie_name
        self._path = path
        # The IdP answers with a cross-site POST to /acs. Over https the cookie must say
        # SameSite=None (with Secure) to come along; over plain http (the local demo) browsers
        # refuse that, so Lax is used and the hub must be on the same site (same host name,
        # any port), e.g. both on 127.0.0.1.
        self._secure = secure
        self._samesite = "none" if secure else "lax"
        self._sessions: dict[str, _Entry] = {}

    def load(self, request: Request) -> dict[str, Any]:
        """A copy of this browser's session data ({} if none); change it, then `save`."""
        entry = self._sessions.get(request.cookies.get(self.cookie_name, ""))
        if entry is None or entry.expires_at < time.time():
            return {}
        return dict(entry.data)

    def save(
        self, request: Request, response: Response, data: dict[str, Any], *, renew: bool = False
    ) -> None:
        """Store `data` for this browser; `renew` issues a new key (do it at login)."""
        key = request.cookies.get(self.cookie_name, "")
        if renew or key not in self._sessions:
            # Never adopt a key the browser made up, and drop the old one at login so a key
            # planted before login (session fixation) is worth nothing after it.
            self._sessions.pop(key, None)
            key = secrets.token_urlsafe(32)
        self._sessions[key] = _Entry(dict(data))
        response.set_cookie(
            self.cookie_name,
            key,
            max_age=SESSION_LIFETIME_SECONDS,
            path=self._path,
            secure=self._secure,
            httponly=True,
            samesite=self._samesite,
        )
        self._forget_expired()

    def end(self, request: Request, response: Response) -> None:
        self._sessions.pop(request.cookies.get(self.cookie_name, ""), None)
        response.delete_cookie(
            self.cookie_name,
            path=self._path,
            secure=self._secure,
            httponly=True,
            samesite=self._samesite,
        )

    def _forget_expired(self) -> None:
        if len(self._sessions) < 1000:
            return
        now = time.time()
        for key in [k for k, entry in self._sessions.items() if entry.expires_at < now]:
            del self._sessions[key]


class SeenAssertions:
    """Assertion IDs accepted so far, kept until the assertion expires (SAML profiles §4.1.4.5).

    The one-time InResponseTo binding already stops a replay into another browser; this makes
    the refusal explicit and also covers a replay within the same browser session.
    """

    def __init__(self) -> None:
        self._expiry_by_id: dict[str, float] = {}

    def first_use(self, assertion_id: str, *, not_on_or_after: float | None) -> bool:
        now = time.time()
        self._expiry_by_id = {k: t for k, t in self._expiry_by_id.items() if t > now}
        if assertion_id in self._expiry_by_id:
            return False
        # Without an expiry, remember it as long as a session could last.
        self._expiry_by_id[assertion_id] = not_on_or_after or now + SESSION_LIFETIME_SECONDS
        return True
