"""The discovery service's JSON face over HTTP: every decision branch, log before disclose,
unlinkability, client authentication, and the two ways of naming the person."""
from __future__ import annotations

import base64
import uuid

import httpx
import pytest
from lxml import etree
from sqlalchemy import text

from access_history.models import LogEntry
from consent import service as consent
from consent.models import PolicyRuleIn, WhitelistEntryIn
from discovery import service as location
from idp import accounts
from pseudonym import service as pseudonyms
from renkei.db import get_engine, session_scope
from renkei.jwt import sign_client_assertion
from renkei.keys import keystore
from renkei.xmlenc import DecryptionFailed, decrypt_element
from tests.saml_sp import NS, Browser, TestSP, response_from_page
from tests.test_idp_sso import register

RESIDENT = "urn:renkei:test:resident-record"
MEDICAL = "urn:renkei:test:medical-benefit"
ANNEX = "urn:renkei:test:annex"
DISCO_EPR = "urn:liberty:disco:2006-08:DiscoveryEPR"


@pytest.fixture(scope="module")
def fed(hub, tmp_path_factory):
    """A small federation: requester R (a municipality), providers A (municipality) and M
    (insurer), a provider N without an encryption key, one person linked at A, M and N."""
    tmp = tmp_path_factory.mktemp("disco")
    r = register(TestSP("https://r.disco.example.jp/sp", "https://r.disco.example.jp"), tmp, "municipality")
    a = register(TestSP("https://a.disco.example.jp/sp", "https://a.disco.example.jp"), tmp, "municipality")
    m = register(TestSP("https://m.disco.example.jp/sp", "https://m.disco.example.jp"), tmp, "health_insurer")
    n = register(TestSP("https://n.disco.example.jp/sp", "https://n.disco.example.jp", encryption=False), tmp,
                 "municipality")
    keys = keystore()
    with session_scope() as db:
        person = accounts.add_person(db_session=db, username="disco-person", password="disco password")
        pseudonyms.register_master_id(db_session=db, keys=keys, person_key=person.person_key, master_id="77-77-77")
        for sp, local in ((a, "A-1"), (m, "M-1"), (n, "N-1")):
            pseudonyms.import_local_links(db_session=db, keys=keys, agency=sp.entity_id, csv_text=f"{local},77-77-77")
        location.add_service_type(db_session=db, urn=RESIDENT, name="resident", info_types=["JUMINHYO"])
        location.add_service_type(db_session=db, urn=MEDICAL, name="medical", info_types=["IRYO"])
        location.add_service_type(db_session=db, urn=ANNEX, name="annex", info_types=["FUHYO"])
        for sp, urn in ((a, RESIDENT), (n, RESIDENT), (m, MEDICAL), (a, ANNEX), (n, ANNEX)):
            location.add_offering(db_session=db, provider=sp.entity_id, service_type=urn,
                                  endpoint=f"{sp.base_url}/provide")
        consent.import_whitelist(db_session=db, entries=[
            WhitelistEntryIn(requester=r.entity_id, provider=a.entity_id, task_code="JUKI", task_name="住基",
                             info_type_code="JUMINHYO", info_type_name="住民票", legal_basis="demo", consent="required"),
            WhitelistEntryIn(requester=r.entity_id, provider="class:municipality", task_code="JUKI",
                             task_name="住基", info_type_code="FUHYO", info_type_name="附票", legal_basis="demo",
                             consent="required"),
            WhitelistEntryIn(requester="class:municipality", provider="class:health_insurer", task_code="YOBO",
                             task_name="予防接種", info_type_code="IRYO", info_type_name="医療保険", legal_basis="demo",
                             consent="override"),
        ])
        person_key = person.person_key
    return {"r": r, "a": a, "m": m, "n": n, "person_key": person_key}


def set_rules(fed, *rules: PolicyRuleIn) -> None:
    with session_scope() as db:
        consent.set_policy(db_session=db, person_key=fed["person_key"], rules=list(rules), principal_id="disco-person")


def sso_assertion(hub, sp: TestSP) -> etree._Element:
    browser = Browser(hub.base_url)
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    page = browser.login(browser.start(sp, etree.tostring(root)), "disco-person", "disco password")
    _, response, _ = response_from_page(page.text)
    return response.find("saml:Assertion", NS)


def bootstrap_of(assertion: etree._Element) -> str:
    attr = assertion.find(f"saml:AttributeStatement/saml:Attribute[@Name='{DISCO_EPR}']", NS)
    return next(el.text for el in attr.iter("{urn:liberty:security:2006-08}Token"))


@pytest.fixture(scope="module")
def bootstrap(hub, fed):
    return bootstrap_of(sso_assertion(hub, fed["r"]))


def ask(hub, requester: TestSP, body: dict, *, key=None, audience=None, jti=None, base=None) -> httpx.Response:
    """A discovery query as `requester`, authenticated by a fresh client assertion."""
    jwt = sign_client_assertion(key or requester.key, issuer=requester.entity_id,
                                audience=audience or f"{hub.base_url}/api/discovery/query",
                                jti=jti or uuid.uuid4().hex)
    return httpx.post(f"{base or hub.base_url}/api/discovery/query", json=body,
                      headers={"Authorization": f"Bearer {jwt}"}, timeout=20)


def query(hub, fed, bootstrap, service_type, task, **over) -> dict[str, dict]:
    r = ask(hub, fed["r"], {"service_type": service_type, "task": task, "person": {"bootstrap_token": bootstrap},
                            **over})
    assert r.status_code == 200, r.text
    return {o["provider"]: o for o in r.json()["offerings"]}


def test_permitted_query_returns_a_token_only_the_provider_can_read(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow", requester=fed["r"].entity_id, info_type_code="JUMINHYO"))
    got = query(hub, fed, bootstrap, RESIDENT, "JUKI")
    a = got[fed["a"].entity_id]
    assert a["permitted"] and a["reason"] == "PERMITTED_BY_CONSENT" and a["endpoint"] == f"{fed['a'].base_url}/provide"
    token = etree.fromstring(base64.b64decode(a["token"]))
    assert token.find("saml:Conditions/saml:AudienceRestriction/saml:Audience", NS).text == fed["a"].entity_id
    assert token.find("saml:Conditions/saml:OneTimeUse", NS) is not None
    name_id = decrypt_element(token.find("saml:Subject/saml:EncryptedID", NS), [fed["a"].key])
    with session_scope() as db:
        expected = pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=fed["person_key"],
                                            agency=fed["a"].entity_id, scope=hub.settings.scope)
    assert name_id.text == expected
    with pytest.raises(DecryptionFailed):
        decrypt_element(token.find("saml:Subject/saml:EncryptedID", NS), [fed["r"].key])
    assert got[fed["n"].entity_id]["reason"] == "NO_WHITELIST_ENTRY"  # the entry names A alone
    # a provider without an encryption key gets no token, even where law and person allow
    set_rules(fed, PolicyRuleIn(effect="allow", requester=fed["r"].entity_id))
    annex = query(hub, fed, bootstrap, ANNEX, "JUKI")
    assert annex[fed["a"].entity_id]["permitted"]
    n = annex[fed["n"].entity_id]
    assert not n["permitted"] and n["reason"] == "PROVIDER_HAS_NO_ENCRYPTION_KEY" and n["token"] is None


def test_every_decision_branch(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="deny", info_type_code="FUHYO"), PolicyRuleIn(effect="deny", info_type_code="IRYO"))
    a, m = fed["a"].entity_id, fed["m"].entity_id
    assert query(hub, fed, bootstrap, MEDICAL, "JUKI")[m]["reason"] == "NO_WHITELIST_ENTRY"
    assert query(hub, fed, bootstrap, ANNEX, "JUKI")[a]["reason"] == "DENIED_BY_PERSON"
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "CONSENT_NOT_GIVEN"
    overridden = query(hub, fed, bootstrap, MEDICAL, "YOBO")[m]
    assert overridden["permitted"] and overridden["reason"] == "LAW_OVERRIDES_CONSENT" and overridden["overridden"]
    set_rules(fed)
    by_law = query(hub, fed, bootstrap, MEDICAL, "YOBO")[m]
    assert by_law["permitted"] and by_law["reason"] == "PERMITTED_BY_LAW" and not by_law["overridden"]
    for refused in (query(hub, fed, bootstrap, ANNEX, "JUKI")[a], query(hub, fed, bootstrap, MEDICAL, "JUKI")[m]):
        assert refused["token"] is None and refused["endpoint"] is None


def test_revocation_applies_to_the_very_next_query(hub, fed, bootstrap):
    a = fed["a"].entity_id
    set_rules(fed, PolicyRuleIn(effect="allow", requester=fed["r"].entity_id))
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["permitted"]
    set_rules(fed, PolicyRuleIn(effect="deny", requester=fed["r"].entity_id))
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "DENIED_BY_PERSON"


def test_every_decision_is_in_the_hub_log(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    got = query(hub, fed, bootstrap, RESIDENT, "JUKI")
    with session_scope() as db:
        for offering in got.values():
            row = db.query(LogEntry).filter_by(decision_id=offering["decision_id"]).one()
            assert row.permitted == offering["permitted"] and row.reason == offering["reason"]
            assert row.person_key == fed["person_key"] and row.requester == fed["r"].entity_id


def _fail_log_writes(on: bool) -> None:
    engine = get_engine()
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS log_down"))
            if on:
                conn.execute(text("CREATE TRIGGER log_down BEFORE INSERT ON access_log_entries "
                                  "BEGIN SELECT RAISE(ABORT, 'log storage down'); END"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS log_down ON access_log_entries"))
            if on:
                conn.execute(text("CREATE OR REPLACE FUNCTION log_down() RETURNS trigger AS $$ "
                                  "BEGIN RAISE EXCEPTION 'log storage down'; END $$ LANGUAGE plpgsql"))
                conn.execute(text("CREATE TRIGGER log_down BEFORE INSERT ON access_log_entries "
                                  "FOR EACH ROW EXECUTE FUNCTION log_down()"))


def test_log_before_disclose_a_failing_log_write_yields_no_token(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    _fail_log_writes(True)
    try:
        r = ask(hub, fed["r"], {"service_type": RESIDENT, "task": "JUKI", "person": {"bootstrap_token": bootstrap}})
    finally:
        _fail_log_writes(False)
    assert r.status_code == 503 and r.json()["error"] == "LOG_WRITE_FAILED"
    assert "token" not in r.text
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[fed["a"].entity_id]["token"]


def test_requester_never_sees_another_agencys_pseudonym(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    with session_scope() as db:
        theirs = [p for p in (pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=fed["person_key"],
                                                        agency=sp.entity_id, scope=hub.settings.scope)
                              for sp in (fed["a"], fed["m"], fed["n"]))]
    answers = [
        ask(hub, fed["r"], {"service_type": st, "task": t, "person": {"bootstrap_token": bootstrap}}).text
        for st, t in ((RESIDENT, "JUKI"), (MEDICAL, "YOBO"), (ANNEX, "JUKI"), (MEDICAL, "JUKI"), ("urn:x:nope", "J"))
    ]
    answers.append(ask(hub, fed["r"], {"service_type": RESIDENT, "task": "JUKI",
                                       "person": {"pseudonym": theirs[0], "staff_assertion": "AAAA"}}).text)
    blob = "\n".join(answers)
    tokens = [base64.b64decode(o["token"]) for a in answers[:4] if '"offerings"' in a
              for o in __import__("json").loads(a)["offerings"] if o["token"]]
    assert tokens
    for p in theirs:
        local = p.split("@")[0]
        assert local not in blob and base64.b64encode(p.encode()).decode()[:40] not in blob
        assert all(local.encode() not in t for t in tokens)
    assert fed["person_key"] not in blob
    assert all(b"A-1" not in t and b"M-1" not in t for t in tokens), "local IDs travel encrypted"


def test_client_authentication(hub, fed, bootstrap):
    body = {"service_type": RESIDENT, "task": "JUKI", "person": {"bootstrap_token": bootstrap}}
    assert httpx.post(f"{hub.base_url}/api/discovery/query", json=body).status_code == 401
    assert ask(hub, fed["r"], body, key=fed["a"].key).status_code == 401  # signed by another agency's key
    assert ask(hub, fed["r"], body, audience="https://elsewhere/").status_code == 401
    assert ask(hub, fed["r"], body, jti="fixed-jti").status_code == 200
    replayed = ask(hub, fed["r"], body, jti="fixed-jti")
    assert replayed.status_code == 401 and "already used" in replayed.json()["message"]


def test_bootstrap_token_only_for_its_requester(hub, fed, bootstrap):
    r = ask(hub, fed["a"], {"service_type": RESIDENT, "task": "JUKI", "person": {"bootstrap_token": bootstrap}})
    assert r.status_code == 403 and r.json()["error"] == "BOOTSTRAP_TOKEN_REJECTED"
    forged = bootstrap[:-4] + ("AAAA" if not bootstrap.endswith("AAAA") else "BBBB")
    r = ask(hub, fed["r"], {"service_type": RESIDENT, "task": "JUKI", "person": {"bootstrap_token": forged}})
    assert r.status_code == 403


def test_back_office_staff_assertion_path(hub, fed):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    staff = sso_assertion(hub, fed["r"])  # a staff member logged into R (here: the same account)
    p_r = staff.find("saml:Subject/saml:NameID", NS).text
    body = {"service_type": RESIDENT, "task": "JUKI",
            "person": {"pseudonym": p_r, "staff_assertion": base64.b64encode(etree.tostring(staff)).decode()}}
    r = ask(hub, fed["r"], body)
    assert r.status_code == 200 and r.json()["offerings"]
    decision = r.json()["offerings"][0]["decision_id"]
    with session_scope() as db:
        assert db.query(LogEntry).filter_by(decision_id=decision).first().staff == p_r
    # the same assertion presented by another agency is for the wrong audience
    with session_scope() as db:
        p_a = pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=fed["person_key"],
                                       agency=fed["a"].entity_id, scope=hub.settings.scope)
    body["person"]["pseudonym"] = p_a
    r = ask(hub, fed["a"], body)
    assert r.status_code == 403 and r.json()["error"] == "STAFF_ASSERTION_REJECTED"


def test_bad_input_is_a_clear_4xx(hub, fed, bootstrap):
    assert ask(hub, fed["r"], {"task": "JUKI"}).status_code == 400
    r = ask(hub, fed["r"], {"service_type": "urn:x:nope", "task": "J", "person": {"bootstrap_token": bootstrap}})
    assert r.status_code == 404 and r.json()["error"] == "UNKNOWN_SERVICE_TYPE"
    r = ask(hub, fed["r"], {"service_type": RESIDENT, "task": "J", "person": {}})
    assert r.status_code == 400 and r.json()["error"] == "PERSON_NOT_NAMED"


def test_openapi_describes_the_query(hub):
    spec = httpx.get(f"{hub.base_url}/api/openapi.json").json()
    assert "/api/discovery/query" in spec["paths"]
