"""Security headers on every answer of the hub over real HTTP (pages, metadata, JSON, OpenAPI,
404s, redirects, SOAP faults, errors), HSTS on an https hub, the API docs page off by default
and self-hosted when on, and the HTTP-POST binding page allowed to post only to its ACS."""
from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from kernel.web import DEFAULT_CSP, HSTS, csp_source
from tests.conftest import listening_socket, port_of, serve_in_thread
from tests.saml_sp import TestSP, now_str
from tests.test_idp_sso import register

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# (method, path, body): one of each kind of answer
ANSWERS = [
    ("GET", "/", None),  # an HTML page
    ("GET", "/idp/metadata", None),  # SAML metadata
    ("GET", "/api/openapi.json", None),  # the OpenAPI document
    ("GET", "/healthz", None),  # JSON
    ("GET", "/no/such/page", None),  # 404
    ("GET", "/idp/metadata/", None),  # a redirect (trailing slash)
    ("GET", "/idp/sso", None),  # a 4xx page
    ("POST", "/api/discovery/query", b"{}"),  # a JSON API refusal
    ("POST", "/discovery/soap", b"garbage"),  # a SOAP fault
    ("GET", "/api/docs", None),  # off by default: 404
]


def assert_secured(r: httpx.Response, *, hsts: bool) -> None:
    where = f"{r.request.method} {r.request.url.path} -> {r.status_code}"
    assert r.headers.get("X-Content-Type-Options") == "nosniff", where
    assert r.headers.get("Referrer-Policy") == "no-referrer", where
    assert r.headers.get("X-Frame-Options") == "DENY", where
    assert "frame-ancestors 'none'" in r.headers.get("Content-Security-Policy", ""), where
    assert r.headers.get("Cache-Control"), where
    if not r.headers.get("content-type", "").startswith("text/html"):
        assert r.headers["Content-Security-Policy"] == DEFAULT_CSP, where
    assert (r.headers.get("Strict-Transport-Security") == HSTS) if hsts else \
        ("Strict-Transport-Security" not in r.headers), where


@pytest.mark.parametrize(("method", "path", "body"), ANSWERS, ids=[f"{m} {p}" for m, p, _ in ANSWERS])
def test_every_answer_carries_the_security_headers(hub, method, path, body):
    r = httpx.request(method, hub.base_url + path, content=body, follow_redirects=False, timeout=20)
    assert_secured(r, hsts=False)


def test_api_docs_are_off_by_default_but_the_openapi_document_is_served(hub):
    assert httpx.get(hub.base_url + "/api/docs").status_code == 404
    r = httpx.get(hub.base_url + "/api/openapi.json")
    assert r.status_code == 200 and r.json()["openapi"]


@pytest.fixture(scope="module")
def https_hub_with_docs(hub):
    """A second app on the same database, configured as served over https with API docs on."""

    from kernel.settings import Settings
    from renkei.app import create_app

    settings = Settings(home=hub.settings.home, database_url=hub.settings.database_url,
                        base_url="https://hub.example.jp", api_docs=True)
    app = create_app(settings)

    @app.get("/test-only/crash", include_in_schema=False)
    def crash() -> None:
        raise RuntimeError("an unexpected failure")

    sock = listening_socket()
    base = f"http://127.0.0.1:{port_of(sock)}"
    server, thread = serve_in_thread(app, sock)
    yield base
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize(("method", "path", "body"), ANSWERS[:-1], ids=[f"{m} {p}" for m, p, _ in ANSWERS[:-1]])
def test_an_https_hub_sends_hsts_on_every_answer(https_hub_with_docs, method, path, body):
    r = httpx.request(method, https_hub_with_docs + path, content=body, follow_redirects=False, timeout=20)
    assert_secured(r, hsts=True)


def test_an_unexpected_error_still_carries_the_headers(https_hub_with_docs):
    r = httpx.get(https_hub_with_docs + "/test-only/crash")
    assert r.status_code == 500 and "Traceback" not in r.text
    assert_secured(r, hsts=True)


def test_api_docs_when_on_load_only_from_the_hub_itself(https_hub_with_docs):
    page = httpx.get(https_hub_with_docs + "/api/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = dict(d.strip().split(" ", 1) for d in page.headers["Content-Security-Policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["default-src"] == "'none'"
    assert csp["style-src"].split()[0] == "'self'" and "http" not in page.headers["Content-Security-Policy"]
    assert "<script>" not in page.text and "http" not in page.text  # nothing inline, nothing from elsewhere
    for asset, kind in (("docs/swagger-ui-bundle.js", "javascript"), ("docs/swagger-ui.css", "css"),
                        ("docs/init.js", "javascript")):
        r = httpx.get(f"{https_hub_with_docs}/api/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 50, asset
        assert f'"{asset}"' in page.text
    assert httpx.get(https_hub_with_docs + "/api/docs/index.html").status_code == 404
    assert httpx.get(https_hub_with_docs + "/api/docs/..%2F..%2Fsettings.py").status_code == 404


@pytest.fixture(scope="module")
def sp(hub, tmp_path_factory) -> TestSP:
    sp = TestSP("https://csp.example.jp/sp", "https://csp.example.jp", authn_requests_signed=False)
    return register(sp, tmp_path_factory.mktemp("sp"))


def _form_action(r: httpx.Response) -> str:
    directives = [d.strip() for d in r.headers["Content-Security-Policy"].split(";")]
    return next(d for d in directives if d.startswith("form-action "))


def test_post_binding_page_may_post_only_to_the_registered_acs(hub, sp):
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso", issue_instant=now_str(timedelta(hours=-1)))
    from lxml import etree

    with httpx.Client(base_url=hub.base_url, timeout=20) as client:
        answer = client.get("/idp/sso?" + sp.redirect_query(etree.tostring(root), sign=False))
        assert answer.status_code == 200 and 'id="saml-post"' in answer.text
        assert _form_action(answer) == f"form-action 'self' {sp.acs_url}"
        _, fresh = sp.authn_request(f"{hub.base_url}/idp/sso")
        login = client.get("/idp/sso?" + sp.redirect_query(etree.tostring(fresh), sign=False),
                           follow_redirects=True)
        assert login.status_code == 200 and _form_action(login) == "form-action 'self'"


@pytest.mark.parametrize(("url", "source"), [
    ("https://sp.example.jp/acs", "https://sp.example.jp/acs"),
    ("https://sp.example.jp:8443/saml/acs?x=1#f", "https://sp.example.jp:8443/saml/acs"),
    ("https://sp.example.jp/a;b c,d'", "https://sp.example.jp/a%3Bb%20c%2Cd%27"),
    ("javascript:alert(1)", None),
    ("/relative/acs", None),
])
def test_an_acs_url_cannot_widen_or_break_the_policy(url, source):
    assert csp_source(url) == source


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_api_docs_render_in_a_browser_without_csp_violations(https_hub_with_docs):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(https_hub_with_docs + "/api/docs")
            page.wait_for_selector(".opblock", timeout=15_000)  # Swagger UI listed the operations
            assert "/api/discovery/query" in page.content()
            assert not [p for p in problems if "Content Security Policy" in p], problems
        finally:
            browser.close()
