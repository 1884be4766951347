"""The discovery service's JSON face over HTTP: every decision branch, log before disclose,
unlinkability, client authentication, and the two ways of naming the person."""
from __future__ import annotations

import base64

import httpx
import pytest
from lxml import etree
from sqlalchemy import text

from access_history.models import HistoryEntry
from consent.models import PolicyRuleIn
from kernel.db import get_engine, session_scope
from kernel.keys import keystore
from kernel.xml._enc import DecryptionFailed, decrypt_element
from pseudonym import service as pseudonyms
from tests.federation import ANNEX, MEDICAL, RESIDENT, ask, set_rules, sso_assertion
from tests.saml_sp import NS


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
            row = db.query(HistoryEntry).filter_by(decision_id=offering["decision_id"]).one()
            assert row.permitted == offering["permitted"] and row.outcome == offering["reason"]
            assert row.person_key == fed["person_key"] and row.requester == fed["r"].entity_id


def _fail_log_writes(on: bool) -> None:
    engine = get_engine()
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS log_down"))
            if on:
                conn.execute(text("CREATE TRIGGER log_down BEFORE INSERT ON history_entries "
                                  "BEGIN SELECT RAISE(ABORT, 'log storage down'); END"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS log_down ON history_entries"))
            if on:
                conn.execute(text("CREATE OR REPLACE FUNCTION log_down() RETURNS trigger AS $$ "
                                  "BEGIN RAISE EXCEPTION 'log storage down'; END $$ LANGUAGE plpgsql"))
                conn.execute(text("CREATE TRIGGER log_down BEFORE INSERT ON history_entries "
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
        assert db.query(HistoryEntry).filter_by(decision_id=decision).first().staff == p_r
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
