"""Shared web plumbing: each room's pages over the kernel's base templates, the DB-session
dependency, security headers."""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session

from kernel.db import session_scope

_KERNEL_TEMPLATES = Path(__file__).resolve().parent / "templates"


class Pages:
    """Templates of one room, falling back to the kernel's own (`base.html`, `error.html`)."""

    def __init__(self, *template_dirs: Path):
        loaders = [FileSystemLoader(str(d)) for d in (*template_dirs, _KERNEL_TEMPLATES)]
        self.env = Environment(loader=ChoiceLoader(loaders), autoescape=select_autoescape(["html"]))

    def page(self, name: str, status_code: int = 200, **context) -> HTMLResponse:
        """Render a template with a fresh CSP nonce for its one inline script, if any."""
        nonce = secrets.token_urlsafe(12)
        html = self.env.get_template(name).render(nonce=nonce, **context)
        headers = dict(SECURITY_HEADERS)
        headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'nonce-{nonce}'; "
            "form-action *; base-uri 'none'; frame-ancestors 'none'"
        )
        return HTMLResponse(html, status_code=status_code, headers=headers)

    def error_page(self, status_code: int, reason: str,
                   title: str = "要求を処理できません / Request refused") -> HTMLResponse:
        """A 4xx page that says why (DESIGN.md: clear errors)."""
        return self.page("error.html", status_code=status_code, title=title, reason=reason)


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


_kernel_pages = Pages()
error_page = _kernel_pages.error_page


def _db_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


# The one DB-session dependency: one request, one transaction. scope="function" commits when
# the route returns, before the response leaves, so a client never outruns the commit.
DB = Depends(_db_session, scope="function")


def raw_query(request: Request) -> str:
    """The query string exactly as received (signatures cover the encoded octets)."""
    return request.scope.get("query_string", b"").decode("latin-1")
