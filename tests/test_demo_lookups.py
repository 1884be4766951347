"""Cross-agency lookups between demo agency apps (python3-saml SPs) through the running hub.

A person signs in at the requester agency (転入先); its home page offers the configured
scenarios; POST /lookup asks the hub's JSON discovery API and fetches each permitted record
from the provider agency's /provide endpoint, which checks the token with renkei_provider.
"""
from __future__ import annotations

import base64
import re
import time
import uuid
from html import unescape

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from lxml import etree

from kernel.jose import sign_client_assertion
from renkei.cli import main
from tests.conftest import agency_entity_id, listening_socket, port_of, serve_in_thread
from tests.saml_sp import NS, post_form_fields

RUN = uuid.uuid4().hex[:8]
RESIDENT = "urn:renkei:service:resident-record"
ANNEX = "urn:renkei:service:family-register-annex"
MEDICAL = "urn:renkei:service:medical-benefit"
SERVICE_TYPES = {RESIDENT: "JUMINHYO", ANNEX: "KOSEKI-FUHYO", MEDICAL: "IRYO-HOKEN-KYUFU"}
# task codes of this module only, so other modules' whitelist entries cannot decide for it
TENNYU, YOBO = f"JUKI-TENNYU-{RUN}", f"YOBO-KYUSAI-{RUN}"
MASTER_ID = f"8{int(RUN, 16) % 10**11:011d}"
USERNAME, PASSWORD = f"lookup-{RUN}", "lookup demo password"
CITY_A_LOCAL, INSURER_LOCAL = f"A-{RUN}", f"INS-{RUN}"

CITY_A_RECORDS = {
    CITY_A_LOCAL: {
        "resident-record": {"氏名": "山田 太郎", "住所": "デモ市中央1-1", "世帯主": "山田 太郎"},
        ANNEX: {"本籍": "デモ市本町2"},
    },
}
INSURER_RECORDS = {INSURER_LOCAL: {"保険者番号": "06139999", "資格取得日": "2020-04-01"}}
SCENARIOS = (
    ("転出元から住民票情報を取得", RESIDENT, TENNYU, None, "PERMITTED_BY_CONSENT"),
    ("住民基本台帳事務で医療保険情報を照会", MEDICAL, TENNYU, None, "NO_WHITELIST_ENTRY"),
    ("戸籍の附票情報を照会", ANNEX, TENNYU, None, "DENIED_BY_PERSON"),
    ("予防接種健康被害救済で医療保険情報を照会", MEDICAL, YOBO, "IRYO-HOKEN-KYUFU", "PERMITTED_BY_LAW"),
)


def cli(*args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


class AgencyServer:
    """One demo agency app on a free port, registered at the hub from its own SP metadata."""

    def __init__(self, hub, tmp_path, key: str, name: str, agency_class: str, **extra):
        from agency_demo import AgencyConfig, create_agency_app, sp_metadata

        sock = listening_socket()
        port = port_of(sock)
        self.config = AgencyConfig(
            entity_id=agency_entity_id(port), name=name, base_url=f"http://127.0.0.1:{port}",
            hub_base_url=hub.base_url, key_dir=tmp_path / key, **extra,
        )
        md = tmp_path / f"{key}.xml"
        md.write_text(sp_metadata(self.config))
        cli("agency", "add", "--metadata", str(md), "--class", agency_class)
        self.server, self.thread = serve_in_thread(create_agency_app(self.config), sock)
        self.url = self.config.base_url
        self.entity_id = self.config.entity_id

    def private_key(self):
        pem = (self.config.key_dir / "sp.key.pem").read_bytes()
        return serialization.load_pem_private_key(pem, password=None)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def load_federation(city_b: AgencyServer, city_a: AgencyServer, insurer: AgencyServer) -> None:
    """Service types, offerings, whitelist and the person's policy, via the service functions."""
    from consent import service as consent
    from consent.models import PolicyRuleIn, WhitelistEntryIn
    from discovery import service as location
    from idp import accounts
    from kernel.db import session_scope

    with session_scope() as db:
        for urn, info in SERVICE_TYPES.items():  # the demo's URNs; another module may have them
            if location.get_service_type(db_session=db, urn=urn) is None:
                location.add_service_type(db_session=db, urn=urn, name=urn, info_types=[info])
        for provider, urns in ((city_a, (RESIDENT, ANNEX)), (insurer, (MEDICAL,))):
            for urn in urns:
                location.add_offering(db_session=db, provider=provider.entity_id, service_type=urn,
                                      endpoint=provider.config.provide_url(urn))

        def allow(provider: AgencyServer, task: str, info: str, mode: str) -> None:
            consent.create_whitelist_entry(db_session=db, entry=WhitelistEntryIn(
                requester=city_b.entity_id, provider=provider.entity_id, task_code=task, task_name=task,
                info_type_code=info, info_type_name=info, legal_basis="番号法 別表第二 (test)", consent=mode,
            ))

        allow(city_a, TENNYU, "JUMINHYO", "required")
        allow(city_a, TENNYU, "KOSEKI-FUHYO", "required")
        allow(insurer, YOBO, "IRYO-HOKEN-KYUFU", "override")  # none for TENNYU: not in the law
        person_key = accounts.find(db_session=db, username=USERNAME).person_key
        consent.set_policy(collection_method="test-setup", db_session=db, person_key=person_key, principal_id=USERNAME, rules=[
            PolicyRuleIn(effect="allow", requester=city_b.entity_id, info_type_code="JUMINHYO"),
            PolicyRuleIn(effect="deny", info_type_code="KOSEKI-FUHYO"),
        ])


@pytest.fixture(scope="module")
def agencies(hub, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lookups")
    city_b = AgencyServer(hub, tmp, "city-b", "転入先 市役所 (test)", "municipality", scenarios=SCENARIOS)
    city_a = AgencyServer(hub, tmp, "city-a", "転出元 市役所 (test)", "municipality",
                          provides=(RESIDENT, ANNEX, "urn:renkei:service:moving-address"),
                          records=CITY_A_RECORDS)
    insurer = AgencyServer(hub, tmp, "insurer", "健康保険組合 (test)", "health_insurer",
                           provides=(MEDICAL,), records=INSURER_RECORDS)
    cli("person", "add", "--username", USERNAME, "--password-stdin", "--master-id", MASTER_ID,
        stdin=PASSWORD + "\n")
    for agency, local_id in ((city_a, CITY_A_LOCAL), (insurer, INSURER_LOCAL)):
        links = tmp / f"links-{agency.config.key_dir.name}.csv"
        links.write_text(f"{local_id},{MASTER_ID}\n", encoding="utf-8")
        cli("link", "import", "--agency", agency.entity_id, str(links))
    load_federation(city_b, city_a, insurer)
    yield {"city_b": city_b, "city_a": city_a, "insurer": insurer}
    for server in (city_b, city_a, insurer):
        server.stop()


def login_at(client: httpx.Client, agency: AgencyServer) -> tuple[str, str]:
    """Browser login at the agency through the hub; returns (home page HTML, bootstrap token)."""
    r = client.get(f"{agency.url}/login")
    assert r.status_code in (302, 303), r.text[:300]
    r = client.get(r.headers["location"])
    if r.status_code == 303:
        page = client.get(r.headers["location"])
        pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
        r = client.post(page.url, data={"pending": pending, "username": USERNAME, "password": PASSWORD})
    assert r.status_code == 200, r.text[:500]
    action, fields = post_form_fields(r.text)
    response = etree.fromstring(base64.b64decode(fields["SAMLResponse"]))
    token = response.find(".//saml:Attribute[@Name='urn:liberty:disco:2006-08:DiscoveryEPR']//"
                          "{urn:liberty:security:2006-08}Token", NS)
    acs = client.post(action, data=fields)
    assert acs.status_code == 303, acs.text[:1500]
    home = client.get(acs.headers["location"])
    assert home.status_code == 200
    return home.text, token.text.strip()


def lookup_forms(html: str) -> tuple[str, list[str]]:
    """The CSRF token and the scenario indices of the home page's lookup buttons."""
    csrf = set(re.findall(r'name="csrf_token" value="([^"]+)"', html))
    assert len(csrf) == 1, html
    return unescape(csrf.pop()), re.findall(r'name="scenario" value="(\d+)"', html)


@pytest.fixture(scope="module")
def signed_in(agencies):
    browser = httpx.Client(timeout=30)
    home, bootstrap = login_at(browser, agencies["city_b"])
    csrf, indices = lookup_forms(home)
    yield {"browser": browser, "home": home, "csrf": csrf, "indices": indices, "bootstrap": bootstrap}
    browser.close()


def run(signed_in, agencies, index: int, *, json: bool = True) -> httpx.Response:
    headers = {"Accept": "application/json"} if json else {}
    return signed_in["browser"].post(f"{agencies['city_b'].url}/lookup", headers=headers,
                                     data={"csrf_token": signed_in["csrf"], "scenario": str(index)})


def test_home_page_offers_the_scenarios(signed_in):
    assert signed_in["indices"] == ["0", "1", "2", "3"]
    for title, *_ in SCENARIOS:
        assert title in unescape(signed_in["home"])


def test_permitted_lookup_returns_the_providers_record(signed_in, agencies):
    r = run(signed_in, agencies, 0)
    assert r.status_code == 200, r.text
    results = r.json()
    assert len(results) == 1
    result = results[0]
    assert result["provider"] == agencies["city_a"].entity_id
    assert result["permitted"] is True
    assert result["reason"] == "PERMITTED_BY_CONSENT"
    assert result["decision_id"]
    assert result["error"] is None
    assert result["record"] == CITY_A_RECORDS[CITY_A_LOCAL]["resident-record"]


def test_the_providing_agency_reports_its_disclosure_to_the_hub(signed_in, agencies):
    """転出元 answered the token; it reports the disclosure on its own, signed with its key, and
    the hub matches it to its decision (a permitted disclosure, no anomaly)."""
    from sqlalchemy import select

    from access_history.models import HistoryEntry
    from kernel.db import session_scope

    decision_id = run(signed_in, agencies, 0).json()[0]["decision_id"]
    deadline = time.monotonic() + 60  # the reporter sends in batches; a loaded machine delays them
    while True:
        with session_scope() as db:
            reported = db.scalars(select(HistoryEntry).where(HistoryEntry.decision_id == decision_id,
                                                             HistoryEntry.kind == "disclosure")).all()
        if reported or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(e.owner, e.outcome) for e in reported] == [(agencies["city_a"].entity_id, "DISCLOSED")]


def test_lookup_permitted_by_law_reaches_the_insurer(signed_in, agencies):
    results = run(signed_in, agencies, 3).json()
    assert [(r["provider"], r["permitted"], r["reason"]) for r in results] == [
        (agencies["insurer"].entity_id, True, "PERMITTED_BY_LAW")]
    assert results[0]["record"] == INSURER_RECORDS[INSURER_LOCAL]


@pytest.mark.parametrize(("index", "provider", "reason"), [
    (1, "insurer", "NO_WHITELIST_ENTRY"),
    (2, "city_a", "DENIED_BY_PERSON"),
])
def test_refused_lookups_say_why_and_return_no_record(signed_in, agencies, index, provider, reason):
    r = run(signed_in, agencies, index)
    assert r.status_code == 200, r.text
    results = r.json()
    assert len(results) == 1
    assert results[0]["provider"] == agencies[provider].entity_id
    assert results[0]["permitted"] is False
    assert results[0]["reason"] == reason
    assert results[0]["decision_id"]
    assert results[0]["record"] is None
    for value in ("デモ市", "06139999", CITY_A_LOCAL, INSURER_LOCAL):
        assert value not in r.text


def test_lookup_page_shows_decisions_and_records(signed_in, agencies):
    page = run(signed_in, agencies, 0, json=False)
    assert page.status_code == 200
    html = unescape(page.text)
    assert "転出元 市役所 (test)" in html
    assert "PERMITTED_BY_CONSENT" in html and "本人の同意" in html and "the person consented" in html
    assert "デモ市中央1-1" in html
    assert "想定どおり" in html
    refused = unescape(run(signed_in, agencies, 2, json=False).text)
    assert "DENIED_BY_PERSON" in refused and "本人が提供を拒否" in refused
    assert "本籍" not in refused


def test_lookup_requires_the_sessions_csrf_token_and_a_sign_in(signed_in, agencies):
    url = f"{agencies['city_b'].url}/lookup"
    accept = {"Accept": "application/json"}
    bad = signed_in["browser"].post(url, headers=accept, data={"csrf_token": "forged", "scenario": "0"})
    assert bad.status_code == 403 and bad.json()["error"] == "CSRF"
    missing = signed_in["browser"].post(url, headers=accept, data={"scenario": "0"})
    assert missing.status_code == 403
    unknown = signed_in["browser"].post(url, headers=accept,
                                        data={"csrf_token": signed_in["csrf"], "scenario": "99"})
    assert unknown.status_code == 400
    with httpx.Client(timeout=10) as stranger:
        r = stranger.post(url, headers=accept, data={"csrf_token": signed_in["csrf"], "scenario": "0"})
    assert r.status_code == 401


def hub_token(hub, agencies, bootstrap: str, service_type: str, task: str) -> dict:
    """Query the hub as the requester agency (its SP key) and return the permitted offering."""
    requester = agencies["city_b"]
    url = f"{hub.base_url}/api/discovery/query"
    jwt = sign_client_assertion(requester.private_key(), issuer=requester.entity_id, audience=url,
                                jti=uuid.uuid4().hex)
    r = httpx.post(url, headers={"Authorization": f"Bearer {jwt}"}, timeout=20, json={
        "service_type": service_type, "task": task, "person": {"bootstrap_token": bootstrap}})
    assert r.status_code == 200, r.text
    (offering,) = [o for o in r.json()["offerings"] if o["permitted"]]
    return offering


def test_provider_endpoint_checks_the_token(hub, signed_in, agencies):
    city_a, insurer = agencies["city_a"], agencies["insurer"]
    offering = hub_token(hub, agencies, signed_in["bootstrap"], RESIDENT, TENNYU)
    assert offering["endpoint"] == f"{city_a.url}/provide/resident-record"
    body = {"token": offering["token"]}

    elsewhere = httpx.post(f"{city_a.url}/provide/family-register-annex", json=body)
    assert elsewhere.status_code == 403 and elsewhere.json()["error"] == "TOKEN_NOT_FOR_THIS_ENDPOINT"
    other_provider = httpx.post(f"{insurer.url}/provide/medical-benefit", json=body)
    assert other_provider.status_code == 403
    assert other_provider.json()["error"] == "TOKEN_AUDIENCE_MISMATCH"
    tampered = base64.b64decode(offering["token"]).replace(TENNYU.encode(), b"OTHER-TASK")
    forged = httpx.post(offering["endpoint"], json={"token": base64.b64encode(tampered).decode()})
    assert forged.status_code == 401 and forged.json()["error"] == "TOKEN_SIGNATURE_INVALID"

    first = httpx.post(offering["endpoint"], json=body)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "provider": city_a.entity_id, "provider_name": city_a.config.name, "service_type": RESIDENT,
        "decision_id": offering["decision_id"], "record": CITY_A_RECORDS[CITY_A_LOCAL]["resident-record"],
    }
    again = httpx.post(offering["endpoint"], json=body)
    assert again.status_code == 409 and again.json()["error"] == "TOKEN_REPLAYED"
    for text in (again.text, elsewhere.text, other_provider.text, forged.text):
        assert offering["decision_id"] not in text and CITY_A_LOCAL not in text


def test_provider_endpoint_refuses_bad_requests(agencies):
    city_a = agencies["city_a"]
    assert httpx.post(f"{city_a.url}/provide/no-such-service", json={"token": "x"}).status_code == 404
    assert httpx.post(f"{city_a.url}/provide/resident-record", content=b"not json").status_code == 400
    assert httpx.post(f"{city_a.url}/provide/resident-record", json={"token": 5}).status_code == 400
    junk = httpx.post(f"{city_a.url}/provide/resident-record", json={"token": "bm90IGEgdG9rZW4="})
    assert junk.status_code == 400 and junk.json()["error"] == "TOKEN_MALFORMED"
    big = httpx.post(f"{city_a.url}/provide/resident-record", json={"token": "A" * 300_000})
    assert big.status_code == 413


def test_agency_metadata_publishes_an_encryption_certificate(agencies):
    root = etree.fromstring(httpx.get(agencies["city_a"].config.metadata_url).content)
    uses = [kd.get("use") for kd in root.iter("{urn:oasis:names:tc:SAML:2.0:metadata}KeyDescriptor")]
    assert sorted(uses) == ["encryption", "signing"]


def test_a_record_part_kept_for_another_service_is_never_returned():
    """Plain fields answer any permitted service; a part kept under another service's URN does
    not ride along (the token permits one service)."""
    from datetime import UTC, datetime

    from agency_demo.config import AgencyConfig
    from agency_demo.lookups import record_for

    from renkei_provider import AcceptedToken

    config = AgencyConfig(entity_id="https://a.example/sp", name="A", base_url="https://a.example",
                          hub_base_url="https://hub.example", key_dir="/nonexistent",
                          records={"L-1": {"氏名": "山田 太郎", ANNEX: {"本籍": "デモ市本町2"}}})

    def token(service_type: str) -> AcceptedToken:
        return AcceptedToken(provider_pseudonym="p@renkei.localhost", requester="https://b.example/sp",
                             task="T", info_types=("I",), service_type=service_type, decision_id="_d",
                             whitelist_entry="1", local_id="L-1", not_on_or_after=datetime.now(UTC),
                             assertion_id="_a")

    assert record_for(config, token("urn:renkei:service:resident-record"), "resident-record") == {"氏名": "山田 太郎"}
    assert record_for(config, token(ANNEX), "family-register-annex") == {"本籍": "デモ市本町2"}
