"""A small test federation for cross-agency queries, shared by the discovery, SOAP, crash and
provider tests: requester R, providers A, M, N, one person linked at A, M and N."""
from __future__ import annotations

import uuid

import httpx
import pytest
from lxml import etree

from consent import service as consent
from consent.models import PolicyRuleIn, WhitelistEntryIn
from discovery import service as location
from idp import accounts
from kernel.db import session_scope
from kernel.jose import sign_client_assertion
from kernel.keys import keystore
from pseudonym import service as pseudonyms
from tests.saml_sp import NS, Browser, TestSP, response_from_page
from tests.test_idp_sso import register

RESIDENT = "urn:renkei:test:resident-record"
MEDICAL = "urn:renkei:test:medical-benefit"
ANNEX = "urn:renkei:test:annex"
DISCO_EPR = "urn:liberty:disco:2006-08:DiscoveryEPR"


@pytest.fixture(scope="session")
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
        consent.set_policy(collection_method="test-setup", db_session=db, person_key=fed["person_key"], rules=list(rules), principal_id="disco-person")


def sso_assertion(hub, sp: TestSP) -> etree._Element:
    browser = Browser(hub.base_url)
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    page = browser.login(browser.start(sp, etree.tostring(root)), "disco-person", "disco password")
    _, response, _ = response_from_page(page.text)
    return response.find("saml:Assertion", NS)


def bootstrap_of(assertion: etree._Element) -> str:
    attr = assertion.find(f"saml:AttributeStatement/saml:Attribute[@Name='{DISCO_EPR}']", NS)
    return next(el.text for el in attr.iter("{urn:liberty:security:2006-08}Token"))


@pytest.fixture(scope="session")
def bootstrap(hub, fed):
    return bootstrap_of(sso_assertion(hub, fed["r"]))


def ask(hub, requester: TestSP, body: dict, *, key=None, audience=None, jti=None, base=None) -> httpx.Response:
    """A discovery query as `requester`, authenticated by a fresh client assertion."""
    jwt = sign_client_assertion(key or requester.key, issuer=requester.entity_id,
                                audience=audience or f"{hub.base_url}/api/discovery/query",
                                jti=jti or uuid.uuid4().hex)
    return httpx.post(f"{base or hub.base_url}/api/discovery/query", json=body,
                      headers={"Authorization": f"Bearer {jwt}"}, timeout=20)


