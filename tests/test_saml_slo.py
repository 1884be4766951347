"""Single Logout that reaches every agency of the login session, over real HTTP (profiles §4.4):
the browser walks through the other agencies' front-channel endpoints, SOAP back-channel
agencies are called by the hub, and the initiator's LogoutResponse says PartialLogout under
Success when one could not be logged out. The agencies are independent implementations: our
python-xmlsec/cryptography test SPs and the demo agency built on OneLogin's python3-saml."""
from __future__ import annotations

import base64
import uuid
import zlib
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner
from lxml import etree

from renkei.cli import main
from tests.saml_sp import NS, SAMLP, Browser, TestSP, response_from_page
from tests.saml_sp_server import LogoutSP, verify_redirect
from tests.test_interop_python3_saml import AgencyServer, login_at
from tests.xml_attacks import billion_laughs, external_entity

SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
PARTIAL = "urn:oasis:names:tc:SAML:2.0:status:PartialLogout"


def cli(*args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def idp_cert(hub):
    from kernel.keys import keystore

    return keystore().ensure_signing_key("idp").certificate


@pytest.fixture(scope="module")
def person(hub):
    cli("person", "add", "--username", "slo-person", "--password-stdin", stdin="slo password 12\n")
    return "slo-person", "slo password 12"


@pytest.fixture
def make_sp(hub, idp_cert, tmp_path):
    started: list[LogoutSP] = []

    def make(name: str, **kwargs) -> LogoutSP:
        sp = LogoutSP(f"{name}-{uuid.uuid4().hex[:6]}", hub.base_url, idp_cert, **kwargs)
        path = tmp_path / f"{name}.xml"
        path.write_bytes(sp.metadata())
        cli("agency", "add", "--metadata", str(path))
        started.append(sp)
        return sp

    yield make
    for sp in started:
        sp.stop()


def log_in(hub, browser: Browser, sp: TestSP, person) -> str:
    """SSO at `sp`; returns the persistent NameID it got."""
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    first = browser.start(sp, etree.tostring(root))
    page = first if first.status_code == 200 else browser.login(first, *person)
    assert page.status_code == 200, page.text[:500]
    _, response, _ = response_from_page(page.text)
    return response.find("saml:Assertion/saml:Subject/saml:NameID", NS).text


def walk(browser: Browser, location: str, until: str, limit: int = 12) -> tuple[str, list[str]]:
    """Follow redirects until one leads to `until`; returns that URL and every host visited."""
    visited = []
    for _ in range(limit):
        if location.startswith(until):
            return location, visited
        visited.append(location.split("?")[0])
        r = browser.client.get(location)
        assert r.status_code in (302, 303), (location, r.status_code, r.text[:600])
        location = r.headers["location"]
    raise AssertionError(f"the logout never reached {until}: {visited}")


def final_status(location: str, idp_cert) -> list[str]:
    values = verify_redirect(urlsplit(location).query, idp_cert)
    answer = etree.fromstring(zlib.decompress(base64.b64decode(values["SAMLResponse"]), -15))
    return [c.get("Value") for c in answer.iter(f"{{{SAMLP}}}StatusCode")]


def sp_initiated_logout(hub, browser: Browser, initiator: LogoutSP, name_id: str, relay: str = "bye") -> str:
    xml = initiator.sp.logout_request(f"{hub.base_url}/idp/slo", name_id)
    r = browser.client.get("/idp/slo?" + initiator.sp.redirect_query(xml, relay_state=relay))
    assert r.status_code == 303, r.text[:500]
    return r.headers["location"]


def session_alive(hub, browser: Browser, sp: TestSP) -> bool:
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    return browser.start(sp, etree.tostring(root)).status_code == 200


def test_logout_reaches_front_channel_soap_and_python3_saml_agencies(hub, person, idp_cert, make_sp, tmp_path):
    initiator = make_sp("initiator")
    front = make_sp("front")
    soap = make_sp("soap", soap=True, front=False)
    onelogin = AgencyServer(hub, tmp_path, "SLO python3-saml 市役所", "slo-onelogin")
    try:
        browser = Browser(hub.base_url)
        initiator_id = log_in(hub, browser, initiator.sp, person)
        front_id = log_in(hub, browser, front.sp, person)
        soap_id = log_in(hub, browser, soap.sp, person)
        login_at(browser.client, onelogin, person)
        location = sp_initiated_logout(hub, browser, initiator, initiator_id)
        final, visited = walk(browser, location, initiator.sp.slo_url)
        assert final_status(final, idp_cert) == [SUCCESS]
        assert parse_qs(urlsplit(final).query)["RelayState"] == ["bye"]
        assert f"{front.sp.base_url}/sls" in visited and f"{onelogin.url}/sls" in visited
        assert [r.find("saml:NameID", NS).text for r in front.received] == [front_id]
        assert [r.find("saml:NameID", NS).text for r in soap.received] == [soap_id]
        assert initiator.received == [], "the initiator is answered, not asked"
        assert not session_alive(hub, browser, front.sp)
        # python3-saml saw our LogoutRequest and answered it with a valid, signed LogoutResponse:
        # a refused one would have made this a PartialLogout
    finally:
        onelogin.stop()


def test_a_back_channel_agency_that_is_down_makes_it_partial(hub, person, idp_cert, make_sp):
    initiator = make_sp("initiator-down")
    front = make_sp("front-down")
    down = make_sp("soap-down", soap=True, front=False, soap_down=True)
    browser = Browser(hub.base_url)
    name_id = log_in(hub, browser, initiator.sp, person)
    log_in(hub, browser, front.sp, person)
    log_in(hub, browser, down.sp, person)
    final, _ = walk(browser, sp_initiated_logout(hub, browser, initiator, name_id), initiator.sp.slo_url)
    assert final_status(final, idp_cert) == [SUCCESS, PARTIAL]
    assert len(front.received) == 1, "the others are still logged out"
    assert not session_alive(hub, browser, initiator.sp)


@pytest.mark.parametrize("mode", ["unsigned", "wrong-key", "refuse"])
def test_a_bad_front_channel_answer_counts_as_failed(hub, person, idp_cert, make_sp, mode):
    initiator = make_sp(f"initiator-{mode}")
    bad = make_sp(f"bad-{mode}", mode=mode)
    browser = Browser(hub.base_url)
    name_id = log_in(hub, browser, initiator.sp, person)
    log_in(hub, browser, bad.sp, person)
    final, _ = walk(browser, sp_initiated_logout(hub, browser, initiator, name_id), initiator.sp.slo_url)
    assert final_status(final, idp_cert) == [SUCCESS, PARTIAL]


@pytest.mark.parametrize("mode", ["unsigned", "wrong-key", "refuse"])
def test_a_bad_back_channel_answer_counts_as_failed(hub, person, idp_cert, make_sp, mode):
    initiator = make_sp(f"initiator-soap-{mode}")
    bad = make_sp(f"bad-soap-{mode}", soap=True, front=False, mode=mode)
    browser = Browser(hub.base_url)
    name_id = log_in(hub, browser, initiator.sp, person)
    log_in(hub, browser, bad.sp, person)
    location = sp_initiated_logout(hub, browser, initiator, name_id)
    assert len(bad.received) == 1
    assert final_status(location, idp_cert) == [SUCCESS, PARTIAL]


def test_the_idp_logout_page_logs_out_everywhere(hub, person, idp_cert, make_sp):
    import re

    front = make_sp("page-front")
    soap = make_sp("page-soap", soap=True, front=False)
    browser = Browser(hub.base_url)
    log_in(hub, browser, front.sp, person)
    log_in(hub, browser, soap.sp, person)
    form = browser.client.get("/idp/logout")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = browser.client.post("/idp/logout", data={"csrf": csrf, "scope": "all"})
    assert r.status_code == 303
    done, visited = walk(browser, r.headers["location"], f"{hub.base_url}/idp/logout/done")
    assert "partial" not in done
    assert visited == [f"{front.sp.base_url}/sls", f"{hub.base_url}/idp/slo"]
    assert len(front.received) == 1 and len(soap.received) == 1
    page = browser.client.get(done)
    assert page.status_code == 200 and "Logged out" in page.text
    assert not session_alive(hub, browser, front.sp)


def test_a_logout_response_for_no_logout_in_progress_is_refused(hub, make_sp):
    sp = make_sp("stray")
    root = etree.Element(f"{{{SAMLP}}}LogoutResponse", ID="_x", Version="2.0", InResponseTo="_nothing")
    query = sp.sp.redirect_query(etree.tostring(root), relay_state="forged-token", field_name="SAMLResponse")
    r = httpx.get(f"{hub.base_url}/idp/slo?{query}")
    assert r.status_code == 400 and "no logout in progress" in r.text


@pytest.mark.parametrize("attack", [billion_laughs, external_entity])
def test_hostile_logout_messages_are_refused(hub, person, make_sp, attack):
    initiator = make_sp(f"hostile-{attack.__name__}")
    signed = initiator.sp.sign_xml(etree.fromstring(
        initiator.sp.logout_request(f"{hub.base_url}/idp/slo", "someone")))
    hostile = attack(etree.tostring(signed))
    r = httpx.get(f"{hub.base_url}/idp/slo?" + initiator.sp.redirect_query(hostile))
    assert r.status_code == 400 and "refused" in r.text
    # the same as a LogoutResponse inside a logout in progress
    front = make_sp(f"hostile-front-{attack.__name__}")
    browser = Browser(hub.base_url)
    name_id = log_in(hub, browser, initiator.sp, person)
    log_in(hub, browser, front.sp, person)
    location = sp_initiated_logout(hub, browser, initiator, name_id)
    token = parse_qs(urlsplit(location).query)["RelayState"][0]
    answer = initiator.sp.sign_xml(etree.fromstring(
        b'<samlp:LogoutResponse xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        b'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r" Version="2.0" InResponseTo="_q">'
        b"<saml:Issuer>x</saml:Issuer></samlp:LogoutResponse>"))
    query = front.sp.redirect_query(attack(etree.tostring(answer)), relay_state=token, field_name="SAMLResponse")
    r = browser.client.get(f"/idp/slo?{query}")
    assert r.status_code == 303
    assert final_status(r.headers["location"], hub_cert(hub)) == [SUCCESS, PARTIAL]


def hub_cert(hub):
    from kernel.keys import keystore

    return keystore().ensure_signing_key("idp").certificate


def test_end_saml_sessions_tells_back_channel_agencies_and_names_the_rest(hub, person, make_sp):
    """The function the OIDC side calls to end the SAML side of the same login session."""
    import hashlib

    from idp.slo import end_saml_sessions
    from kernel.db import session_scope

    soap = make_sp("api-soap", soap=True, front=False)
    front = make_sp("api-front")
    browser = Browser(hub.base_url)
    soap_id = log_in(hub, browser, soap.sp, person)
    log_in(hub, browser, front.sp, person)
    login_session_id = hashlib.sha256(browser.client.cookies["renkei_idp"].encode()).hexdigest()
    with session_scope() as db:
        outcome = end_saml_sessions(db_session=db, settings=hub.settings, login_session_id=login_session_id)
    assert outcome.reached == [soap.sp.entity_id] and outcome.failed == [front.sp.entity_id]
    assert [r.find("saml:NameID", NS).text for r in soap.received] == [soap_id]
    with session_scope() as db:
        again = end_saml_sessions(db_session=db, settings=hub.settings, login_session_id=login_session_id)
    assert again.reached == [] and again.failed == [], "its participants were forgotten"
