"""The portal logs people in as a SAML SP of the hub's own IdP (signed AuthnRequest over
HTTP-Redirect, POST-binding Response read through the ground's assertion consumer), shows only
the logged-in person's own data, and logs out by Single Logout."""
from __future__ import annotations

import re

import httpx
import pytest

from consent.models import PolicyRuleIn
from tests.federation import RESIDENT, set_rules
from tests.saml_sp import post_form_fields
from tests.test_discovery_api import query


def portal_login(hub, username: str, password: str, next_path: str = "/portal/") -> httpx.Client:
    """A browser logging into the portal: portal → IdP login → POST binding → portal ACS."""
    client = httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=20)
    r = client.get(next_path)
    assert r.status_code == 303 and r.headers["location"].startswith("/portal/login"), r.text[:300]
    r = client.get(r.headers["location"])
    assert r.status_code == 303 and "/idp/sso?SAMLRequest=" in r.headers["location"]
    assert "Signature=" in r.headers["location"]  # the portal signs its AuthnRequests
    r = client.get(r.headers["location"].removeprefix(hub.base_url))
    if r.status_code == 303:  # not logged in at the IdP yet: its login page
        page = client.get(r.headers["location"].removeprefix(hub.base_url))
        pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
        r = client.post("/idp/login", data={"pending": pending, "username": username, "password": password})
    assert r.status_code == 200, r.text[:500]
    action, fields = post_form_fields(r.text)
    assert action == f"{hub.base_url}/portal/acs"
    r = client.post("/portal/acs", data=fields)
    assert r.status_code == 303, r.text[:500]
    assert r.headers["location"] == next_path
    return client


def test_login_shows_my_history_and_data(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    decided = query(hub, fed, bootstrap, RESIDENT, "JUKI")
    client = portal_login(hub, "disco-person", "disco password", "/portal/history")
    page = client.get("/portal/history")
    assert page.status_code == 200 and "やりとり履歴" in page.text
    assert "PERMITTED_BY_CONSENT" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "portal_session" in page.request.headers["cookie"]
    data = client.get("/portal/data")
    assert data.status_code == 200
    rows = re.findall(r"<tr><td>", data.text)
    assert len(rows) == 3  # A, M and N hold data about this person
    overview = client.get("/portal/")
    assert overview.status_code == 200 and "今月のやりとり" in overview.text
    assert any(o["decision_id"] for o in decided.values())


def test_pages_need_a_login_and_the_acs_refuses_foreign_answers(hub):
    client = httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=20)
    for path in ("/portal/", "/portal/history", "/portal/data", "/portal/logout"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/portal/login")
    r = client.post("/portal/acs", data={"SAMLResponse": "PHNhbWxwOlJlc3BvbnNlLz4="})
    assert r.status_code == 400 and "portal_session" not in r.headers.get("set-cookie", "")
    r = client.get("/portal/login", params={"next": "https://evil.example/"})
    assert r.status_code == 303  # never an open redirect: the next path is dropped
    assert "evil" not in r.headers["location"]


def test_an_answer_for_another_browser_is_refused(hub, fed):
    """The Response answers a request another browser started: its cookie binds it."""
    first = httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=20)
    r = first.get("/portal/login")
    r = first.get(r.headers["location"].removeprefix(hub.base_url))
    page = first.get(r.headers["location"].removeprefix(hub.base_url))
    pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
    r = first.post("/idp/login", data={"pending": pending, "username": "disco-person", "password": "disco password"})
    _, fields = post_form_fields(r.text)
    other = httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=20)
    other.get("/portal/login")  # a browser cookie of its own, with a pending request of its own
    stolen = other.post("/portal/acs", data=fields)
    assert stolen.status_code == 400


def test_logout_is_single_logout_and_needs_the_form_token(hub, fed):
    client = portal_login(hub, "disco-person", "disco password")
    r = client.post("/portal/logout", data={"csrf_token": "forged"})
    assert r.status_code == 403
    form = client.get("/portal/logout")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    r = client.post("/portal/logout", data={"csrf_token": token})
    assert r.status_code == 303 and "/idp/slo?SAMLRequest=" in r.headers["location"]
    r = client.get(r.headers["location"].removeprefix(hub.base_url))
    assert r.status_code in (302, 303) and "/portal/slo?SAMLResponse=" in r.headers["location"]
    done = client.get(r.headers["location"].removeprefix(hub.base_url))
    assert done.status_code == 200 and "ログアウトしました" in done.text
    assert client.get("/portal/history").status_code == 303  # the portal session is gone
    again = client.get("/portal/login")
    assert client.get(again.headers["location"].removeprefix(hub.base_url)).status_code == 303  # IdP asks again


@pytest.mark.parametrize("cursor", ["%%%", "x" * 150])
def test_bad_cursors_are_a_clear_400(hub, fed, cursor):
    client = portal_login(hub, "disco-person", "disco password")
    assert client.get("/portal/history", params={"cursor": cursor}).status_code == 400


JAPANESE = __import__("re").compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def visible_text(html: str) -> str:
    import re as _re

    html = _re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=_re.DOTALL)
    html = _re.sub(r'<[^>]*lang="ja"[^>]*>[^<]*</a>', " ", html)  # the switch back to 日本語
    return _re.sub(r"<[^>]+>", " ", html)


def test_english_switch_persists_and_every_page_is_translated(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="deny", info_type_code="FUHYO"))  # a policy, and a receipt to read
    client = portal_login(hub, "disco-person", "disco password")
    receipt = re.search(r'href="(/portal/consent/[0-9a-f-]{36})"', client.get("/portal/consent").text).group(1)
    page = client.get("/portal/history")
    assert '<html lang="ja">' in page.text and page.headers["content-language"] == "ja"
    r = client.get("/portal/lang", params={"to": "en", "next": "/portal/history"})
    assert r.status_code == 303 and r.headers["location"] == "/portal/history"
    for path in ("/portal/", "/portal/data", "/portal/history", "/portal/logout", "/portal/policy",
                 "/portal/consent", receipt, "/portal/notices", "/portal/notices/settings",
                 "/portal/representatives"):
        page = client.get(path)
        assert page.status_code == 200 and '<html lang="en">' in page.text
        # this federation's data (agency names, codes) is ASCII: any Japanese left is untranslated
        leftover = JAPANESE.findall(visible_text(page.text))
        assert not leftover, (path, "".join(leftover)[:80])
    client.get("/portal/lang", params={"to": "ja", "next": "/portal/"})
    assert '<html lang="ja">' in client.get("/portal/").text


def test_pages_use_the_digital_agency_design_tokens(hub, fed):
    client = portal_login(hub, "disco-person", "disco password")
    page = client.get("/portal/")
    for sheet in ("/portal/static/vendor/digital-go-jp-design-tokens/tokens.css", "/portal/static/portal.css"):
        assert f'href="{sheet}"' in page.text
        css = client.get(sheet)
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    tokens = client.get("/portal/static/vendor/digital-go-jp-design-tokens/tokens.css").text
    assert "--color-primitive-blue-1000" in tokens and "--font-family-sans" in tokens
    assert "<style" not in page.text  # no inline styles on the portal's pages


@pytest.mark.nodb
def test_times_read_as_babel_writes_them_in_each_language():
    """portal.i18n.when keeps Babel's parsed patterns: its text is format_datetime's, medium."""
    import random
    from datetime import datetime, timedelta

    from babel.core import Locale
    from babel.dates import format_date, format_datetime

    from portal import i18n

    rng = random.Random(9)
    try:
        for lang, locale in (("ja", "ja_JP"), ("en", "en_GB")):
            i18n.set_language(lang)
            for _ in range(500):
                moment = datetime(2001, 1, 1) + timedelta(seconds=rng.randrange(10**9), microseconds=rng.randrange(10**6))
                assert i18n.when(moment) == format_datetime(moment, format="medium", locale=Locale.parse(locale))
                assert i18n.when(moment, date_only=True) == format_date(moment, format="medium",
                                                                         locale=Locale.parse(locale))
        assert i18n.when(datetime(2026, 12, 1, 3, 4, 5)) == "1 Dec 2026, 03:04:05"
        i18n.set_language("ja")
        assert i18n.when(datetime(2026, 12, 1, 3, 4, 5)) == "2026/12/01 3:04:05"
    finally:
        i18n.set_language("ja")
