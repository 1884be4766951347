"""The portal's disclosure policy (利用許諾) and consent record pages, over real HTTP: a preview
that says exactly what a change refuses and what a law still requires, a save that issues a
verifiable receipt collected by the portal and that the very next discovery query obeys,
pause and resume, end dates, CSRF, and nobody reading another person's receipt."""
from __future__ import annotations

import functools
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta

import httpx
import pytest

from consent import receipts
from consent import service as consent
from consent.models import PolicyRuleIn
from idp import accounts
from kernel.db import session_scope, utcnow
from kernel.keys import keystore
from tests.federation import RESIDENT, set_rules
from tests.test_discovery_api import query
from tests.test_portal import JAPANESE, portal_login, visible_text

EXCHANGE = re.compile(r'<tr class="exchange" data-entry="(\d+)" data-provider="([^"]+)" data-reason="([A-Z_]+)">')


@pytest.fixture
def entries(fed) -> dict[str, int]:
    """The IDs of the shared federation's three whitelist entries, by information type."""
    r = fed["r"].entity_id
    ours = {(r, fed["a"].entity_id, "JUKI", "JUMINHYO"), (r, "class:municipality", "JUKI", "FUHYO"),
            ("class:municipality", "class:health_insurer", "YOBO", "IRYO")}
    with session_scope() as db:
        ids = {e.info_type_code: e.id for e in consent.list_whitelist(db_session=db)
               if (e.requester, e.provider, e.task_code, e.info_type_code) in ours}
    assert set(ids) == {"JUMINHYO", "FUHYO", "IRYO"}
    return ids


@pytest.fixture
def client(hub, fed) -> httpx.Client:
    set_rules(fed)  # each test starts from an empty policy of its own
    return portal_login(hub, "disco-person", "disco password", "/portal/policy")


def csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def policy_version(fed) -> int:
    with session_scope() as db:
        return consent.get_current_policy(db_session=db, person_key=fed["person_key"]).version


def preview(client: httpx.Client, entry_id: int, change: str, valid_until: str = "") -> httpx.Response:
    token = csrf(client.get("/portal/policy"))
    return client.post("/portal/policy/preview", data={"csrf_token": token, "entry_id": str(entry_id),
                                                       "change": change, "valid_until": valid_until})


def listed(page: httpx.Response, section: str, entry_ids) -> set[tuple[int, str, str]]:
    """(entry, provider, reason) of the exchanges a preview lists in one section (ours only:
    other tests may add entries to the shared hub)."""
    body = re.search(rf'<section id="{section}">(.*?)</section>', page.text, re.DOTALL).group(1)
    return {(int(e), p, r) for e, p, r in EXCHANGE.findall(body) if int(e) in set(entry_ids)}


def change(client: httpx.Client, entry_id: int, how: str, valid_until: str = "") -> str:
    """Preview, then press the preview's own confirm button; the receipt ID it lands on."""
    page = preview(client, entry_id, how, valid_until)
    assert page.status_code == 200, page.text[:500]
    confirm = re.search(r'<form method="post" action="/portal/policy">(.*?)</form>', page.text, re.DOTALL).group(1)
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', confirm))
    saved = client.post("/portal/policy", data=fields)
    assert saved.status_code == 303, re.findall(r"role=\"alert\">[^<]*", saved.text)
    return re.fullmatch(r"/portal/consent/([0-9a-f-]{36})\?saved=1", saved.headers["location"]).group(1)


def setting(client: httpx.Client, entry_id: int) -> str:
    row = re.search(rf'<tr id="entry-{entry_id}">.*?data-setting="(\w+)"', client.get("/portal/policy").text,
                    re.DOTALL)
    return row.group(1)


def test_preview_says_what_is_refused_and_what_the_law_requires_and_saves_nothing(client, fed, entries):
    a, m, n = fed["a"].entity_id, fed["m"].entity_id, fed["n"].entity_id
    page = client.get("/portal/policy")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    for entry_id in entries.values():
        assert f'<tr id="entry-{entry_id}">' in page.text  # A, M and N hold data about the person
    assert "demo" in page.text and "あなたの同意が必要です" in page.text and "法律により、同意がなくても" in page.text
    before = policy_version(fed)

    shown = preview(client, entries["JUMINHYO"], "deny")
    assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
    assert listed(shown, "refused", entries.values()) == {
        (entries["JUMINHYO"], a, "DENIED_BY_PERSON"),
        (entries["FUHYO"], a, "CONSENT_NOT_GIVEN"), (entries["FUHYO"], n, "CONSENT_NOT_GIVEN")}
    assert listed(shown, "by-law", entries.values()) == {(entries["IRYO"], m, "PERMITTED_BY_LAW")}

    shown = preview(client, entries["IRYO"], "deny")  # the law overrides this one's no
    assert (entries["IRYO"], m, "LAW_OVERRIDES_CONSENT") in listed(shown, "by-law", entries.values())
    assert not any(e == entries["IRYO"] for e, _, _ in listed(shown, "refused", entries.values()))

    shown = preview(client, entries["FUHYO"], "allow")
    assert listed(shown, "refused", entries.values()) == {(entries["JUMINHYO"], a, "CONSENT_NOT_GIVEN")}
    assert policy_version(fed) == before  # a preview saves nothing


def test_saving_issues_a_portal_receipt_and_the_next_query_obeys(hub, client, fed, bootstrap, entries):
    a = fed["a"].entity_id
    set_rules(fed, PolicyRuleIn(effect="allow", requester=fed["r"].entity_id))
    client.get("/portal/policy")
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["permitted"]
    receipt_id = change(client, entries["JUMINHYO"], "deny")

    jws = client.get(f"/portal/consent/{receipt_id}.jws")
    assert jws.status_code == 200 and jws.headers["content-type"] == "application/jose"
    assert jws.headers["cache-control"] == "no-store"
    claims = receipts.verify_receipt(jws.text, public_keys=receipts.receipt_public_keys(keystore()))
    assert claims["collectionMethod"] == "portal" and claims["consentReceiptID"] == receipt_id
    assert claims["policyUrl"] == f"{hub.base_url}/portal/policy"
    assert any("may not obtain" in p["purpose"] for s in claims["services"] for p in s["purposes"])

    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "DENIED_BY_PERSON"
    history = client.get("/portal/history", params={"outcome": "DENIED_BY_PERSON"})
    assert '<span class="outcome">あなたの拒否のルールにより提供されませんでした</span>' in history.text

    page = client.get(f"/portal/consent/{receipt_id}", params={"saved": "1"})
    assert page.status_code == 200 and "保存しました" in page.text and "このポータルで、あなた自身が設定しました" in page.text
    assert "署名は、ハブの同意用の鍵で確認できました" in page.text and receipt_id in page.text

    record = client.get("/portal/consent")
    assert record.status_code == 200 and f'href="/portal/consent/{receipt_id}.jws"' in record.text
    newest = record.text.split("<tbody>", 1)[1].split("</tr>", 1)[0]  # the newest version's row
    added, removed = re.findall(r"<td>(.*?)</td>", newest, re.DOTALL)[1:3]
    assert "拒否" in added and "JUMINHYO" in added  # what this change added
    assert removed.strip() == "—"  # the broader allow stays: the deny beats it


def test_pause_keeps_the_rule_and_resume_restores_it(hub, client, fed, bootstrap, entries):
    a, resident = fed["a"].entity_id, entries["JUMINHYO"]
    change(client, resident, "allow")
    assert setting(client, resident) == "allow"
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "PERMITTED_BY_CONSENT"
    change(client, resident, "pause")
    assert setting(client, resident) == "paused"
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "DENIED_BY_PERSON"
    change(client, resident, "resume")
    assert setting(client, resident) == "allow"
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "PERMITTED_BY_CONSENT"
    change(client, resident, "clear")
    assert setting(client, resident) == "none"
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "CONSENT_NOT_GIVEN"


def test_end_dates(hub, client, fed, bootstrap, entries):
    a, resident = fed["a"].entity_id, entries["JUMINHYO"]
    last_day = (utcnow() + timedelta(days=3)).date()
    receipt_id = change(client, resident, "allow", last_day.isoformat())
    end = datetime(last_day.year, last_day.month, last_day.day) + timedelta(days=1)  # the whole last day
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "PERMITTED_BY_CONSENT"
    claims = receipts.verify_receipt(client.get(f"/portal/consent/{receipt_id}.jws").text,
                                     public_keys=receipts.receipt_public_keys(keystore()))
    assert any(p["termination"].startswith(f"until {end.isoformat()}Z")
               for s in claims["services"] for p in s["purposes"])
    with session_scope() as db:  # the same decision the discovery service takes, at the end
        ask = {"db_session": db, "person_key": fed["person_key"], "requester": fed["r"].entity_id, "provider": a,
               "task_code": "JUKI", "info_type_code": "JUMINHYO", "classes_of": {a: ["municipality"]}}
        assert consent.decide(**ask, at=end - timedelta(seconds=1)).reason.value == "PERMITTED_BY_CONSENT"
        assert consent.decide(**ask, at=end).reason.value == "CONSENT_NOT_GIVEN"
    before = policy_version(fed)
    yesterday = (utcnow() - timedelta(days=1)).date().isoformat()
    for bad in (yesterday, "2026-02-30", "tomorrow"):
        refused = preview(client, resident, "deny", bad)
        assert refused.status_code == 400 and 'role="alert"' in refused.text
        token = csrf(client.get("/portal/policy"))
        saved = client.post("/portal/policy", data={"csrf_token": token, "entry_id": str(resident),
                                                    "change": "deny", "valid_until": bad})
        assert saved.status_code == 400
    assert policy_version(fed) == before  # nothing written


def confirm_form(client: httpx.Client, entry_id: int, how: str) -> dict[str, str]:
    """The fields of a preview's confirm button, not yet pressed."""
    page = preview(client, entry_id, how)
    assert page.status_code == 200, page.text[:500]
    confirm = re.search(r'<form method="post" action="/portal/policy">(.*?)</form>', page.text, re.DOTALL).group(1)
    return dict(re.findall(r'name="([^"]+)" value="([^"]*)"', confirm))


def press_together(start: threading.Barrier, browser: httpx.Client, form: dict[str, str]) -> httpx.Response:
    start.wait(timeout=20)
    return browser.post("/portal/policy", data=form)


def test_changes_saved_at_once_each_make_a_version_and_none_is_lost(hub, client, fed, entries):
    """Two tabs confirm two changes at the same instant: both are saved, one version after the
    other, and the newer one holds both changes (no version is computed from a stale policy,
    and the person sees no error)."""
    second = httpx.Client(base_url=hub.base_url, cookies=client.cookies, follow_redirects=False, timeout=20)
    for _ in range(4):
        set_rules(fed)
        before = policy_version(fed)
        forms = [confirm_form(client, entries["JUMINHYO"], "deny"), confirm_form(client, entries["FUHYO"], "deny")]
        start = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            saved = list(pool.map(functools.partial(press_together, start), (client, second), forms))
        assert [r.status_code for r in saved] == [303, 303], [r.text[:300] for r in saved]
        assert policy_version(fed) == before + 2
        assert setting(client, entries["JUMINHYO"]) == "deny" and setting(client, entries["FUHYO"]) == "deny"


def test_forms_need_the_session_token(client, fed, entries):
    before = policy_version(fed)
    form = {"entry_id": str(entries["JUMINHYO"]), "change": "deny"}
    for path in ("/portal/policy/preview", "/portal/policy"):
        assert client.post(path, data=form).status_code == 403
        assert client.post(path, data={**form, "csrf_token": "forged"}).status_code == 403
    assert policy_version(fed) == before


def test_another_persons_receipt_and_unknown_entries_are_not_found(hub, client, fed, entries):
    with session_scope() as db:
        other = accounts.add_person(db_session=db, username=f"other-{date.today().isoformat()}-{id(client)}",
                                    password="another password")
        version = consent.set_policy(db_session=db, person_key=other.person_key, rules=[PolicyRuleIn(effect="deny")],
                                     principal_id="other", collection_method="test-setup")
        foreign = version.receipt.id
    assert client.get(f"/portal/consent/{foreign}").status_code == 404
    assert client.get(f"/portal/consent/{foreign}.jws").status_code == 404
    assert client.get(f"/portal/consent/{'x' * 40}").status_code in (400, 404)
    token = csrf(client.get("/portal/policy"))
    for entry_id in ("999999", "abc"):
        r = client.post("/portal/policy/preview", data={"csrf_token": token, "entry_id": entry_id, "change": "deny"})
        assert r.status_code in (400, 404)
    bad = client.post("/portal/policy/preview", data={"csrf_token": token, "entry_id": str(entries["JUMINHYO"]),
                                                      "change": "explode"})
    assert bad.status_code == 400


def test_english_pages_of_the_policy_are_translated(client, fed, entries):
    receipt_id = change(client, entries["IRYO"], "deny")
    client.get("/portal/lang", params={"to": "en", "next": "/portal/policy"})
    try:
        pages = [client.get(p) for p in ("/portal/policy", "/portal/consent", f"/portal/consent/{receipt_id}?saved=1")]
        pages.append(preview(client, entries["JUMINHYO"], "deny"))
        for page in pages:
            assert page.status_code == 200 and '<html lang="en">' in page.text
            leftover = JAPANESE.findall(visible_text(page.text))
            assert not leftover, (page.url, "".join(leftover)[:80])
    finally:
        client.get("/portal/lang", params={"to": "ja", "next": "/portal/"})
