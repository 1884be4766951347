"""Shared web plumbing: each room's pages over the kernel's base templates, the DB-session
dependency, security headers."""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel.db import session_scope

_KERNEL_TEMPLATES = Path(__file__).resolve().parent / "templates"


class Pages:
    """Templates of one room, falling back to the kernel's own (`base.html`, `error.html`)."""

    def __init__(self, *template_dirs: Path):
        loaders = [FileSystemLoader(str(d)) for d in (*template_dirs, _KERNEL_TEMPLATES)]
        self.env = Environment(loader=ChoiceLoader(loaders), autoescape=select_autoescape(["html"]))

    def page(self, name: str, status_code: int = 200, *, form_targets: Iterable[str] = (),
             **context) -> HTMLResponse:
        """Render a template with a fresh CSP nonce for its one inline script, if any.

        Its forms may post to this origin and to `form_targets` only (e.g. the agency's
        registered ACS URL on an HTTP-POST binding page), never anywhere else.
        """
        nonce = secrets.token_urlsafe(12)
        html = self.env.get_template(name).render(nonce=nonce, **context)
        headers = dict(SECURITY_HEADERS)
        # a target that is no http(s) URL is left out: the browser then refuses the post
        form_action = " ".join(["'self'", *filter(None, map(csp_source, form_targets))])
        headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'nonce-{nonce}'; "
            f"form-action {form_action}; base-uri 'none'; frame-ancestors 'none'"
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


# Answers that are not pages (JSON, XML, metadata, redirects, errors) load nothing, run
# nothing and may not be framed; a page brings its own, wider policy.
DEFAULT_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
HSTS = "max-age=63072000; includeSubDomains"


def csp_source(url: str) -> str | None:
    """A URL as a CSP source expression (CSP3 §2.3.1): scheme, host, port and path only, with
    the characters that would end the expression or the directive (space, `;`, `,`) escaped;
    None if it is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("https", "http") or not parts.netloc:
        return None
    netloc = quote(parts.netloc, safe=":@[].-_~")
    return f"{parts.scheme}://{netloc}{quote(parts.path, safe='/:@!$&()*+=-._~%')}"


def add_security_headers(headers: MutableHeaders, *, hsts: bool) -> None:
    """Complete an answer's headers; what the route set itself (its CSP, its caching) stays."""
    for name, value in SECURITY_HEADERS.items():
        if name not in headers:
            headers[name] = value
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = DEFAULT_CSP
    if hsts:
        headers["Strict-Transport-Security"] = HSTS


class SecurityHeaders:
    """Pure ASGI middleware: every HTTP answer leaves with the security headers, whichever
    route, error handler or 404 produced it (no BaseHTTPMiddleware: no second task per
    request, streaming bodies pass untouched). HSTS only when the hub is served over https."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_security_headers(MutableHeaders(scope=message), hsts=self.hsts)
            await send(message)

        await self.app(scope, receive, send_secured)


def request_log_sink(target: str) -> Callable[[str], None] | None:
    """Where request lines go (RENKEI_REQUEST_LOG): "stderr", "off", or a file path (appended,
    0600; one write per line, so processes sharing the file never interleave within a line)."""
    if target == "off":
        return None
    if target == "stderr":
        return lambda line: (sys.stderr.write(line), sys.stderr.flush())
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return lambda line: os.write(fd, line.encode("utf-8"))


class RequestLog:
    """Pure ASGI middleware: one JSON line per HTTP request (time, method, path, status,
    duration, client address, request ID), answered with an X-Request-ID header to quote.

    The path only: a query string carries SAMLRequest, tokens and search terms; cookies,
    authorization headers and bodies never come near it, so no personal data does either."""

    def __init__(self, app: ASGIApp, *, sink: Callable[[str], None]) -> None:
        self.app = app
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = secrets.token_hex(8)  # ours, never the client's: a log line cannot be forged
        status = 500  # what the server answers if the app fails before it starts an answer

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client")
            line = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "method": scope.get("method", "")[:16], "path": scope.get("path", "")[:512],
                "status": status, "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": client[0] if client else None, "request_id": request_id,
            }
            try:
                self.sink(json.dumps(line, ensure_ascii=True) + "\n")
            except OSError:
                pass  # a full disk must not turn answers into errors; the operations log is the record


_kernel_pages = Pages()
error_page = _kernel_pages.error_page


def _db_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


# The one DB-session dependency: one request, one transaction. scope="function" commits when
# the route returns, before the response leaves, so a client never outruns the commit.
DB = Depends(_db_session, scope="function")


T = TypeVar("T")


async def in_unit_of_work(work: Callable[..., T], /, *args, **kwargs) -> T:
    """`work(db, *args, **kwargs)` in one unit of work, in one trip through the threadpool: the
    same transaction `DB` gives a `def` route (committed before the answer leaves), without the
    two more trips a generator dependency takes (its start and its end each run in the
    threadpool). For the hot paths: each trip costs CPU and, under load, a contended interpreter
    lock (bench/README.md, "Where the time goes")."""

    def run() -> T:
        with session_scope() as db:
            return work(db, *args, **kwargs)

    return await run_in_threadpool(run)


def raw_query(request: Request) -> str:
    """The query string exactly as received (signatures cover the encoded octets)."""
    return request.scope.get("query_string", b"").decode("latin-1")
