"""Operators act with a trace: named, hashed, revocable operator tokens; every administrative
change through the operator API or the CLI and every authentication event lands in the
operations log with who, what and before/after; requests leave one JSON line each."""
from __future__ import annotations

import getpass
import hashlib
import json
import re
import time
import uuid

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from access_history.models import OperationEntry
from idp import accounts
from kernel.db import session_scope
from kernel.settings import reset_settings
from renkei.cli import main
from renkei.operator_api import operator_token
from renkei.operators import Operator
from tests.conftest import listening_socket, serve_in_thread
from tests.saml_sp import TestSP
from tests.test_login_hardening import TOTP_SECRET, browser_from, pending_login, submit

CLI_ACTOR = f"cli:{getpass.getuser()}"


def cli(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result.output


def entries(**where) -> list[OperationEntry]:
    """The operations log's entries matching `where`, oldest first."""
    with session_scope() as db:
        stmt = select(OperationEntry).filter_by(**where).order_by(OperationEntry.id)
        rows = list(db.scalars(stmt))
        db.expunge_all()
    return rows


def new_operator() -> tuple[str, str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    token = cli("operator", "add", name).strip().splitlines()[-1]
    return name, token


def api(token: str) -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=20)


def test_a_named_operator_acts_under_their_name_until_revoked(hub):
    name, token = new_operator()
    assert token.startswith("rko_") and len(token) >= 43
    [added] = entries(action="operator.add", target=name)
    assert added.actor == CLI_ACTOR and added.channel == "cli"
    # only the token's SHA-256 is stored
    with session_scope() as db:
        row = db.scalar(select(Operator).where(Operator.name == name))
        assert row.token_hash == hashlib.sha256(token.encode()).digest() and row.revoked_at is None
    urn = f"urn:renkei:ops:{uuid.uuid4().hex[:8]}"
    with api(token) as client:
        r = client.post(f"{hub.base_url}/api/operator/service-types", json={"urn": urn, "name": "税", "info_types": ["ZEI"]})
        assert r.status_code == 201, r.text
        [change] = entries(action="service_type.add", target=urn)
        assert (change.actor, change.channel, change.outcome) == (name, "api", "ok")
        assert json.loads(change.detail) == {"after": {"info_types": ["ZEI"], "name": "税"}}
        assert change.client == "127.0.0.1"
        assert re.search(rf"^{re.escape(name)}\t.*\t{re.escape(CLI_ACTOR)}\tactive$", cli("operator", "list"), re.MULTILINE)

        cli("operator", "revoke", name)
        assert entries(action="operator.revoke", target=name)[0].actor == CLI_ACTOR
        assert re.search(rf"^{re.escape(name)}\t.*\trevoked ", cli("operator", "list"), re.MULTILINE)
        failures_before = len(entries(action="operator.auth_failed"))
        r = client.delete(f"{hub.base_url}/api/operator/service-types", params={"urn": urn})
        assert r.status_code == 401
    failed = entries(action="operator.auth_failed")
    assert len(failed) == failures_before + 1
    assert json.loads(failed[-1].detail)["reason"] == "unknown or revoked token"
    assert token not in failed[-1].detail and failed[-1].outcome == "refused"
    # a revoked name is never reused, so the log's names stay unambiguous
    assert "exists already" in cli("operator", "add", name, ok=False)
    assert "reserved" in cli("operator", "add", "bootstrap", ok=False)


def test_the_shared_token_is_logged_as_bootstrap_and_can_be_turned_off(hub, monkeypatch):
    provider = f"https://p-{uuid.uuid4().hex[:6]}.example.jp/sp"
    with api(operator_token()) as client:
        r = client.post(f"{hub.base_url}/api/operator/service-types",
                        json={"urn": f"urn:renkei:ops:{provider[10:18]}", "info_types": ["X"]})
        assert r.status_code == 201
        assert entries(action="service_type.add", target=r.json()["urn"])[0].actor == "bootstrap"
        monkeypatch.setenv("RENKEI_OPERATOR_BOOTSTRAP", "off")
        reset_settings()
        try:
            refused = client.get(f"{hub.base_url}/api/operator/service-types")
        finally:
            monkeypatch.delenv("RENKEI_OPERATOR_BOOTSTRAP")
            reset_settings()
        assert refused.status_code == 401
        assert client.get(f"{hub.base_url}/api/operator/service-types").status_code == 200


def test_cli_changes_are_logged_with_before_and_after(hub, tmp_path):
    urn = f"urn:renkei:ops:{uuid.uuid4().hex[:8]}"
    cli("service-type", "add", "--urn", urn, "--name", "名", "--info-type", "A1", "--info-type", "A2")
    [added] = entries(action="service_type.add", target=urn)
    assert added.actor == CLI_ACTOR and json.loads(added.detail)["after"]["info_types"] == ["A1", "A2"]
    cli("service-type", "remove", urn)
    assert json.loads(entries(action="service_type.remove", target=urn)[0].detail) == {"before": {"offerings": 0}}
    name = f"person-{uuid.uuid4().hex[:6]}"
    result = CliRunner().invoke(main, ["person", "add", "--username", name, "--password-stdin", "--totp"],
                                input="a secret password\n")
    assert result.exit_code == 0, result.output
    [person] = entries(action="person.add", target=name)
    assert json.loads(person.detail) == {"after": {"display_name": False, "master_id": False, "totp": True}}
    seed = re.search(r"TOTP secret: (\S+)", result.output).group(1)
    assert "a secret password" not in person.detail and seed not in person.detail
    wl = tmp_path / "wl.yaml"
    task = f"T{uuid.uuid4().hex[:6]}"
    wl.write_text(f"""whitelist:
  - requester: class:municipality
    provider: class:municipality
    task: {{code: {task}, name: 事務}}
    info_type: {{code: OPSI, name: 情報}}
    legal_basis: test
    consent: required
""", encoding="utf-8")
    cli("whitelist", "import", str(wl))
    imported = entries(action="whitelist.import")[-1]
    assert imported.actor == CLI_ACTOR and json.loads(imported.detail)["after"]["created"] == 1


@pytest.fixture(scope="module")
def login_sp(hub, tmp_path_factory):
    sp = TestSP("https://ops-log.example.jp/sp", "https://ops-log.example.jp")
    path = tmp_path_factory.mktemp("ops-sp") / "md.xml"
    path.write_bytes(sp.metadata())
    cli("agency", "add", "--metadata", str(path), "--class", "municipality")
    assert entries(action="agency.add", target=sp.entity_id)[0].actor == CLI_ACTOR
    return sp


def test_logins_are_logged_by_a_keyed_hash_of_the_name(hub, login_sp):
    name, password = f"u-{uuid.uuid4().hex[:8]}", "a good long password"
    with session_scope() as db:
        accounts.add_person(db_session=db, username=name, password=password, totp_secret=TOTP_SECRET)
    ref = accounts.login_name_ref(username=name)
    typo = accounts.login_name_ref(username=name + "x")
    assert ref.startswith("login:") and name not in ref and ref != typo
    browser = browser_from(hub, "127.0.0.1")
    pending = pending_login(browser, login_sp)
    assert submit(browser, pending, name + "x", password).status_code == 401  # an unknown name
    assert submit(browser, pending, name, "wrong password").status_code == 401
    assert submit(browser, pending, name, password).status_code == 200  # the TOTP form
    now = time.time()
    valid = {accounts.totp(TOTP_SECRET, now + drift) for drift in (-60, -30, 0, 30, 60)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c not in valid)
    assert browser.client.post("/idp/login/totp", data={"pending": pending, "code": wrong}).status_code == 401
    ok = browser.client.post("/idp/login/totp", data={"pending": pending, "code": accounts.totp(TOTP_SECRET)})
    assert ok.status_code == 200 and "SAMLResponse" in ok.text
    mine = [(e.action, e.outcome) for e in entries(actor=ref)]
    assert mine == [("login.failed", "refused"), ("login.password_ok", "ok"), ("totp.failed", "refused"),
                    ("login.ok", "ok")]
    [unknown] = entries(actor=typo)
    assert (unknown.action, unknown.target, unknown.channel) == ("login.failed", login_sp.entity_id, "login")
    with session_scope() as db:  # no entry spells the name out, wherever it would hide
        assert not [e for e in db.scalars(select(OperationEntry)) if name in e.actor + e.target + e.detail]


def test_client_assertion_failures_at_the_discovery_api_are_logged(hub):
    url = f"{hub.base_url}/api/discovery/query"
    body = {"service_type": "urn:renkei:x:y", "task": "T", "person": {"pseudonym": "p"}}
    before = len(entries(action="discovery.client_auth_failed"))
    assert httpx.post(url, json=body, timeout=20).status_code == 401
    from joserfc import jwt
    from joserfc.jwk import ECKey

    forged = jwt.encode({"alg": "ES256"}, {"iss": "https://nobody.example.jp/sp", "sub": "https://nobody.example.jp/sp",
                                           "aud": url, "exp": 4102444800, "jti": uuid.uuid4().hex},
                        ECKey.generate_key("P-256"))
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {forged}"}, timeout=20).status_code == 401
    failed = entries(action="discovery.client_auth_failed")[before:]
    assert json.loads(failed[0].detail)["reason"] == "no bearer client assertion"
    assert failed[1].target == "https://nobody.example.jp/sp"
    assert "registered" in json.loads(failed[1].detail)["reason"] and forged not in failed[1].detail


def test_each_request_leaves_one_json_line_without_query_or_cookie(hub, tmp_path):
    from kernel.settings import get_settings
    from renkei.app import create_app

    log = tmp_path / "requests.jsonl"
    settings = get_settings().model_copy(update={"request_log": str(log)})
    sock = listening_socket()
    server, thread = serve_in_thread(create_app(settings), sock)
    try:
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        r = httpx.get(f"{base}/idp/sso?SAMLRequest=SECRETREQUEST&RelayState=RELAY", timeout=20,
                      headers={"Cookie": "renkei_idp=COOKIEVALUE", "Authorization": "Bearer AUTHVALUE"})
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    [line] = log.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert set(record) == {"time", "method", "path", "status", "duration_ms", "client", "request_id"}
    assert (record["method"], record["path"], record["status"]) == ("GET", "/idp/sso", r.status_code)
    assert record["client"] == "127.0.0.1" and record["duration_ms"] >= 0
    assert record["request_id"] == r.headers["x-request-id"]
    for secret in ("SECRETREQUEST", "RELAY", "COOKIEVALUE", "AUTHVALUE", "?"):
        assert secret not in line
