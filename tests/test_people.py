"""The portal for other people, over real HTTP: auditors export, verify and review the history
(roles granted with `renkei person role`), representatives (代理人) act for a principal only
within their grant and every action shows to the principal, and every SSO answer lands in the
person's history."""
from __future__ import annotations

import json
import re
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from click.testing import CliRunner

from access_history import audit
from access_history import service as history
from consent.models import PolicyRuleIn
from idp import accounts
from kernel.db import session_scope
from kernel.keys import keystore
from renkei.cli import main
from renkei_provider import Disclosure
from tests.federation import RESIDENT, set_rules
from tests.history_helpers import export_lines, integrate
from tests.test_disclosure_reports import reporter
from tests.test_discovery_api import query
from tests.test_portal import JAPANESE, portal_login, visible_text

PASSWORD = "people password"


def person(prefix: str) -> str:
    """A fresh account; its username."""
    username = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with session_scope() as db:
        accounts.add_person(db_session=db, username=username, password=PASSWORD)
    return username


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def operations(hub) -> list[dict]:
    return [json.loads(line) for line in export_lines(hub, "operations")[1:-1]
            if json.loads(line)["type"] == "entry"]


def verifier_key(hub, log: str = "access") -> str:
    return history.log_signer(keys=keystore(), scope=hub.settings.scope, log=log).verifier_key


# --- auditors -----------------------------------------------------------------------------

def auditor(hub) -> tuple[str, httpx.Client]:
    username = person("auditor")
    assert "is auditor" in cli("person", "role", "add", "--username", username, "auditor")
    assert f"{username}\tauditor" in cli("person", "role", "list")
    return username, portal_login(hub, username, PASSWORD)


def download(client: httpx.Client, **fields: str) -> httpx.Response:
    plan = client.get("/portal/audit/export", params=fields)
    assert plan.status_code == 200, plan.text[:300]
    assert "ダウンロードを始める" in plan.text and "KiB" in plan.text  # the size before it starts
    return client.post("/portal/audit/export", data={"csrf_token": csrf(plan), **fields})


def test_an_auditor_exports_and_the_export_verifies(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    username, client = auditor(hub)
    home = client.get("/portal/audit")
    assert home.status_code == 200 and 'href="/portal/audit"' in home.text  # its menu entry
    got = download(client, log="access", fmt="jsonl")
    assert got.status_code == 200
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["cache-control"] == "no-store"
    lines = got.text.splitlines()
    report = audit.verify(lines, verifier_key=verifier_key(hub))
    assert report.ok, report.summary()
    assert report.entries > 0 and json.loads(lines[0])["complete"]
    # a filtered export (one agency, today) verifies too and shows that agency's entries only
    today = datetime.now(UTC).date().isoformat()
    filtered = download(client, log="access", fmt="jsonl", agency=fed["a"].entity_id, start=today, end=today)
    shown = [json.loads(t) for t in filtered.text.splitlines() if '"type":"entry"' in t]
    assert shown and all(fed["a"].entity_id in (e["requester"], e["provider"], e["owner"]) for e in shown)
    assert audit.verify(filtered.text.splitlines(), verifier_key=verifier_key(hub)).ok
    csv_export = download(client, log="operations", fmt="csv")
    assert csv_export.status_code == 200 and csv_export.text.startswith("index,")
    # every export over HTTP is itself in the operations log, by the auditor's name
    exports = [e for e in operations(hub) if e["action"] == "audit.export" and e["actor"] == username]
    assert len(exports) == 3 and {e["target"] for e in exports} == {"access", "operations"}


def test_an_uploaded_export_is_verified_and_a_tampered_line_is_named(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    _, client = auditor(hub)
    lines = export_lines(hub, "access")
    token = csrf(client.get("/portal/audit"))

    def upload(text: str) -> httpx.Response:
        return client.post("/portal/audit/verify", data={"csrf_token": token},
                           files={"export": ("export.jsonl", text.encode(), "application/jsonl")})

    sound = upload("\n".join(lines) + "\n")
    assert sound.status_code == 200 and "改ざんは見つかりませんでした" in sound.text
    number = next(i for i, t in enumerate(lines) if '"type": "entry"' in t)
    entry = json.loads(lines[number])
    entry["outcome"] = "DENIED_BY_PERSON" if entry["outcome"] != "DENIED_BY_PERSON" else "PERMITTED_BY_LAW"
    tampered = [*lines[:number], json.dumps(entry, ensure_ascii=False), *lines[number + 1:]]
    bad = upload("\n".join(tampered) + "\n")
    assert bad.status_code == 200 and "このエクスポートは正しくありません" in bad.text
    assert f"line {number + 1}" in bad.text and "altered" in bad.text
    dropped = upload("\n".join([*lines[:number], *lines[number + 1:]]) + "\n")
    assert "このエクスポートは正しくありません" in dropped.text and "missing" in dropped.text
    assert client.post("/portal/audit/verify", data={"csrf_token": "forged"},
                       files={"export": ("e.jsonl", b"{}", "application/jsonl")}).status_code == 403
    assert claimed_too_big(hub, client) == 413  # refused before a byte of the body is read
    unsized = client.post("/portal/audit/verify", content=iter([b"--x--"]),
                          headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert unsized.status_code == 411


def claimed_too_big(hub, client: httpx.Client) -> int:
    """POST a body that declares more than the upload limit (a raw socket: httpx sends what it
    declares) and return the status the hub answers with before reading it."""
    cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    head = (f"POST /portal/audit/verify HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\nCookie: {cookie}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {hub.settings.audit_upload_max_bytes * 2}\r\n\r\n--x\r\n")
    with socket.create_connection(("127.0.0.1", hub.port), timeout=20) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(4096).decode("latin-1")
    return int(answer.split(" ", 2)[1])


def test_the_anomaly_list_shows_disclosures_the_hub_never_permitted(hub, fed, bootstrap):
    agency = reporter(hub, fed["a"])
    unknown = uuid.uuid4().hex
    agency.record(Disclosure(unknown, "t-people", fed["r"].entity_id, "JUKI", ("JUMINHYO",), datetime.now(UTC)))
    assert agency.flush().accepted
    _, client = auditor(hub)
    page = client.get("/portal/audit/anomalies")
    assert page.status_code == 200 and unknown in page.text
    assert "24.0 h" in page.text  # RENKEI_DISCLOSURE_REPORT_WITHIN_SECONDS, 86400 by default


def test_audit_pages_are_404_for_anyone_without_the_role(hub, fed):
    username, client = auditor(hub)
    outsider = portal_login(hub, person("outsider"), PASSWORD)
    token = csrf(outsider.get("/portal/logout"))
    assert 'href="/portal/audit"' not in outsider.get("/portal/").text
    paths = ("/portal/audit", "/portal/audit/export", "/portal/audit/anomalies",
             "/portal/audit/export?log=access&fmt=jsonl")
    for path in paths:
        assert outsider.get(path).status_code == 404, path
    assert outsider.post("/portal/audit/export", data={"csrf_token": token, "log": "access"}).status_code == 404
    assert outsider.post("/portal/audit/verify", data={"csrf_token": token},
                         files={"export": ("e.jsonl", b"{}", "application/jsonl")}).status_code == 404
    # a removed role ends on the very next request
    assert client.get("/portal/audit").status_code == 200
    assert "no longer auditor" in cli("person", "role", "remove", "--username", username, "auditor")
    for path in paths:
        assert client.get(path).status_code == 404, path
    result = CliRunner().invoke(main, ["person", "role", "add", "--username", username, "emperor"])
    assert result.exit_code != 0 and "unknown role" in result.output


# --- representatives ----------------------------------------------------------------------

def appoint(client: httpx.Client, username: str, start: datetime, end: datetime) -> httpx.Response:
    token = csrf(client.get("/portal/representatives"))
    return client.post("/portal/representatives", data={
        "csrf_token": token, "username": username, "starts_at": start.strftime("%Y-%m-%dT%H:%M:%S"),
        "ends_at": end.strftime("%Y-%m-%dT%H:%M:%S")})


def grant_ids(page: httpx.Response) -> list[str]:
    return re.findall(r'href="/portal/acting/([0-9a-f]+)/history"', page.text)


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def test_a_representative_sees_the_principals_pages_only_while_the_grant_lives(hub, fed):
    principal_name, helper_name = person("principal"), person("helper")
    principal = portal_login(hub, principal_name, PASSWORD)  # its SSO is history to show
    helper = portal_login(hub, helper_name, PASSWORD)
    assert grant_ids(helper.get("/portal/representatives")) == []
    now = utc_now()
    assert appoint(principal, helper_name, now - timedelta(minutes=1), now + timedelta(hours=1)).status_code == 303
    [grant] = grant_ids(helper.get("/portal/representatives"))
    seen = helper.get(f"/portal/acting/{grant}/history")
    assert seen.status_code == 200 and principal_name in seen.text and "pairwise-id" in seen.text
    assert seen.headers["cache-control"] == "no-store"
    assert helper.get(f"/portal/acting/{grant}/data").status_code == 200
    # nobody else reaches the grant: not a third person, not the principal, not by revoking it
    stranger = portal_login(hub, person("stranger"), PASSWORD)
    assert stranger.get(f"/portal/acting/{grant}/history").status_code == 404
    assert principal.get(f"/portal/acting/{grant}/history").status_code == 404
    token = csrf(helper.get("/portal/representatives"))
    assert helper.post(f"/portal/representatives/{grant}/revoke", data={"csrf_token": token}).status_code == 404
    # every action shows on the principal's page and in the operations log
    page = principal.get("/portal/representatives")
    assert page.text.count(f"/portal/acting/{grant}/") == 2 and helper_name in page.text
    assert "やりとり履歴を見ました" in page.text and "情報の所在を見ました" in page.text
    logged = [e for e in operations(hub) if e["target"] == f"representative:{grant}"]
    assert [e["action"] for e in logged if e["actor"] == helper_name] == [
        "representative.view_history", "representative.view_data"]
    assert [e["action"] for e in logged if e["actor"] == principal_name] == ["representative.appoint"]
    # the principal revokes alone: the very next request is refused
    revoked = principal.post(f"/portal/representatives/{grant}/revoke", data={"csrf_token": csrf(page)})
    assert revoked.status_code == 303
    assert helper.get(f"/portal/acting/{grant}/history").status_code == 404
    assert "取り消し済み" in principal.get("/portal/representatives").text


def test_a_grant_works_only_within_its_period(hub, fed):
    principal_name, helper_name = person("principal"), person("helper")
    principal = portal_login(hub, principal_name, PASSWORD)
    helper = portal_login(hub, helper_name, PASSWORD)
    now = utc_now()
    assert appoint(principal, helper_name, now + timedelta(days=1), now + timedelta(days=2)).status_code == 303
    [future] = re.findall(r'/portal/representatives/([0-9a-f]+)/revoke', principal.get("/portal/representatives").text)
    assert helper.get(f"/portal/acting/{future}/history").status_code == 404  # not yet
    assert grant_ids(helper.get("/portal/representatives")) == []
    assert appoint(principal, helper_name, now - timedelta(minutes=1), utc_now() + timedelta(seconds=3)).status_code == 303
    [grant] = grant_ids(helper.get("/portal/representatives"))
    assert helper.get(f"/portal/acting/{grant}/history").status_code == 200
    deadline = time.monotonic() + 20
    while helper.get(f"/portal/acting/{grant}/history").status_code == 200:  # until the end passes
        assert time.monotonic() < deadline, "the grant outlived its end"
        time.sleep(0.2)
    assert helper.get(f"/portal/acting/{grant}/data").status_code == 404


def test_bad_appointments_are_a_clear_400(hub, fed):
    principal_name = person("principal")
    principal = portal_login(hub, principal_name, PASSWORD)
    now = utc_now()
    for username, start, end, reason in (
        (principal_name, now, now + timedelta(days=1), "自分自身"),
        ("nobody-" + uuid.uuid4().hex, now, now + timedelta(days=1), "登録されていません"),
        ("bad\x00name", now, now + timedelta(days=1), "利用者名が正しくありません"),
        (principal_name, now, now - timedelta(days=1), "終了日時"),
        (principal_name, now, now + timedelta(days=3000), "5年"),
    ):
        r = appoint(principal, username, start, end)
        assert r.status_code == 400 and reason in r.text, (username, r.text[:200])
    token = csrf(principal.get("/portal/representatives"))
    r = principal.post("/portal/representatives", data={"csrf_token": token, "username": "x",
                                                         "starts_at": "tomorrow", "ends_at": "later"})
    assert r.status_code == 400 and "日時の形式" in r.text
    assert principal.post("/portal/representatives", data={
        "csrf_token": "forged", "username": "x", "starts_at": "2030-01-01T00:00", "ends_at": "2030-02-01T00:00"}
    ).status_code == 403
    assert principal.post("/portal/representatives/" + "f" * 32 + "/revoke",
                          data={"csrf_token": token}).status_code == 404
    assert grant_ids(principal.get("/portal/representatives")) == []


# --- SSO in the history -------------------------------------------------------------------

def test_every_sso_answer_is_in_the_persons_history(hub, fed):
    username = person("sso")
    client = portal_login(hub, username, PASSWORD, "/portal/history")
    page = client.get("/portal/history")
    assert "pairwise-id" in page.text
    with session_scope() as db:
        key = accounts.find(db_session=db, username=username).person_key
        entries = [t.entry for t in history.timeline(db_session=db, person_key=key).entries]
    [sso] = entries
    assert (sso.kind, sso.channel, sso.info_type_code, sso.outcome, sso.permitted) == (
        "decision", "sso", "pairwise-id", "PERMITTED_BY_CONSENT", True)
    assert sso.requester == f"{hub.base_url}/portal/metadata" and sso.provider == hub.settings.idp_entity_id
    integrate(hub)
    assert audit.verify(export_lines(hub), verifier_key=verifier_key(hub)).ok


def test_people_pages_in_english_have_no_japanese_left(hub, fed):
    principal_name, helper_name = person("principal"), person("helper")
    principal = portal_login(hub, principal_name, PASSWORD)
    now = utc_now()
    assert appoint(principal, helper_name, now - timedelta(minutes=1), now + timedelta(hours=1)).status_code == 303
    cli("person", "role", "add", "--username", helper_name, "auditor")
    helper = portal_login(hub, helper_name, PASSWORD)
    [grant] = grant_ids(helper.get("/portal/representatives"))
    helper.get(f"/portal/acting/{grant}/history")
    for browser, paths in ((principal, ("/portal/representatives",)),
                           (helper, ("/portal/representatives", f"/portal/acting/{grant}/history",
                                     f"/portal/acting/{grant}/data", "/portal/audit", "/portal/audit/anomalies",
                                     "/portal/audit/export?log=access&fmt=jsonl"))):
        browser.get("/portal/lang", params={"to": "en", "next": "/portal/"})
        for path in paths:
            page = browser.get(path)
            assert page.status_code == 200 and '<html lang="en">' in page.text, path
            leftover = JAPANESE.findall(visible_text(page.text))
            assert not leftover, (path, "".join(leftover)[:80])
