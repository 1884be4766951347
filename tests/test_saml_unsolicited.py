"""IdP-initiated (unsolicited) SSO over real HTTP (profiles §4.1.5): refused unless the
operator allowed it for the agency; then a Response without InResponseTo, to the registered
ACS only, that OneLogin's python3-saml accepts."""
from __future__ import annotations

import uuid

import httpx
import pytest
from click.testing import CliRunner

from renkei.cli import main
from tests.python3_saml_sp import toolkit
from tests.saml_sp import NS, Browser, TestSP, response_from_page, verify_with_xmlsec


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(main, list(args), input=stdin)


def cli(*args: str, stdin: str | None = None) -> str:
    result = run(*args, stdin=stdin)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def person(hub):
    cli("person", "add", "--username", "unsolicited-person", "--password-stdin", stdin="unsolicited pw 1\n")
    return "unsolicited-person", "unsolicited pw 1"


@pytest.fixture
def sp(hub, tmp_path):
    sp = TestSP(f"https://idp-init-{uuid.uuid4().hex[:8]}.example.jp/sp", "https://idp-init.example.jp")
    path = tmp_path / "md.xml"
    path.write_bytes(sp.metadata())
    cli("agency", "add", "--metadata", str(path))
    return sp


def test_refused_while_off_by_default(hub, sp):
    r = httpx.get(f"{hub.base_url}/idp/sso/unsolicited", params={"sp": sp.entity_id})
    assert r.status_code == 403
    assert "--allow-unsolicited" in r.text and "AuthnRequest" in r.text


def test_unknown_or_missing_sp_is_a_400(hub):
    assert httpx.get(f"{hub.base_url}/idp/sso/unsolicited").status_code == 400
    r = httpx.get(f"{hub.base_url}/idp/sso/unsolicited", params={"sp": "https://nobody.example/sp"})
    assert r.status_code == 400 and "not registered" in r.text


def test_allowed_agency_gets_an_unsolicited_response_python3_saml_accepts(hub, sp, person):
    assert "allowed" in cli("agency", "set", sp.entity_id, "--allow-unsolicited")
    browser = Browser(hub.base_url)
    first = browser.client.get("/idp/sso/unsolicited", params={"sp": sp.entity_id, "RelayState": "/home"})
    page = browser.login(first, *person)
    assert page.status_code == 200, page.text[:500]
    action, response, fields = response_from_page(page.text)
    assert action == sp.acs_url, "only the registered ACS"
    assert fields["RelayState"] == "/home"
    assert response.get("InResponseTo") is None
    from kernel.keys import keystore

    assertion = response.find("saml:Assertion", NS)
    verify_with_xmlsec(assertion, keystore().ensure_signing_key("idp").certificate)
    assert assertion.find("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData",
                          NS).get("InResponseTo") is None
    auth = toolkit(hub.base_url, sp, post=fields,
                   security={"rejectUnsolicitedResponsesWithInResponseTo": True})
    auth.process_response(request_id=None)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.is_authenticated() and auth.get_nameid()
    # with the session alive, the next one is answered at once
    again = browser.client.get("/idp/sso/unsolicited", params={"providerId": sp.entity_id})
    assert again.status_code == 200 and response_from_page(again.text)[0] == sp.acs_url
    # switched off again: refused
    cli("agency", "set", sp.entity_id, "--no-allow-unsolicited")
    assert browser.client.get("/idp/sso/unsolicited", params={"sp": sp.entity_id}).status_code == 403


def test_a_long_relay_state_is_refused(hub, sp):
    cli("agency", "set", sp.entity_id, "--allow-unsolicited")
    r = httpx.get(f"{hub.base_url}/idp/sso/unsolicited", params={"sp": sp.entity_id, "RelayState": "x" * 81})
    assert r.status_code == 400 and "RelayState" in r.text


def test_cli_set_refuses_unknown_agencies_and_empty_changes(hub, sp):
    result = run("agency", "set", "https://nobody.example/sp", "--allow-unsolicited")
    assert result.exit_code != 0 and "no agency" in result.output
    result = run("agency", "set", sp.entity_id)
    assert result.exit_code != 0 and "nothing to set" in result.output
