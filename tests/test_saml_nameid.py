"""NameIDPolicy over real HTTP (SAML core §3.4.1.1, SAML2Int): transient NameIDs that are fresh
per assertion while pairwise-id keeps the persistent pseudonym, formats the IdP refuses,
AllowCreate="false", and a transient NameID that still names its session for Single Logout.
Checked by our python-xmlsec test SP and by OneLogin's python3-saml."""
from __future__ import annotations

import uuid
import zlib
from base64 import b64decode
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from lxml import etree

from renkei.cli import main
from tests.python3_saml_sp import TRANSIENT, toolkit
from tests.saml_sp import NS, SAMLP, Browser, TestSP, response_from_page, verify_with_xmlsec

PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
PAIRWISE = "urn:oasis:names:tc:SAML:attribute:pairwise-id"
INVALID_POLICY = "urn:oasis:names:tc:SAML:2.0:status:InvalidNameIDPolicy"


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
    cli("person", "add", "--username", "nameid-person", "--password-stdin", stdin="nameid password 1\n")
    return "nameid-person", "nameid password 1"


def new_sp(tmp_path, name: str) -> TestSP:
    sp = TestSP(f"https://{name}-{uuid.uuid4().hex[:8]}.example.jp/sp", f"https://{name}.example.jp")
    path = tmp_path / f"{name}.xml"
    path.write_bytes(sp.metadata())
    cli("agency", "add", "--metadata", str(path), "--class", "municipality")
    return sp


def request_with_policy(hub, sp: TestSP, fmt: str | None, allow_create: str | None = "true"):
    request_id, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    policy = root.find("samlp:NameIDPolicy", NS)
    if fmt is None:
        root.remove(policy)
    else:
        policy.set("Format", fmt)
        if allow_create is None:
            del policy.attrib["AllowCreate"]
        else:
            policy.set("AllowCreate", allow_create)
    return request_id, etree.tostring(root)


def sso(hub, sp, person, browser=None, fmt=PERSISTENT, allow_create="true"):
    browser = browser or Browser(hub.base_url)
    _, xml = request_with_policy(hub, sp, fmt, allow_create)
    first = browser.start(sp, xml)
    page = first if first.status_code == 200 else browser.login(first, *person)
    assert page.status_code == 200, page.text[:500]
    _, response, _ = response_from_page(page.text)
    return browser, response


def subject(response, idp_cert) -> tuple[str, str, str]:
    """(NameID, its Format, the pairwise-id value) of the one verified assertion."""
    assertion = response.find("saml:Assertion", NS)
    verify_with_xmlsec(assertion, idp_cert)
    name_id = assertion.find("saml:Subject/saml:NameID", NS)
    pairwise = assertion.find(f"saml:AttributeStatement/saml:Attribute[@Name='{PAIRWISE}']/saml:AttributeValue", NS)
    return name_id.text, name_id.get("Format"), pairwise.text


def status_codes(response) -> list[str]:
    return [c.get("Value") for c in response.iter(f"{{{SAMLP}}}StatusCode")]


def test_transient_is_fresh_per_assertion_and_pairwise_id_stays(hub, person, idp_cert, tmp_path):
    sp = new_sp(tmp_path, "transient")
    browser, first = sso(hub, sp, person, fmt=TRANSIENT)
    _, again = sso(hub, sp, person, browser=browser, fmt=TRANSIENT)
    _, persistent = sso(hub, sp, person, browser=browser, fmt=PERSISTENT)
    n1, f1, p1 = subject(first, idp_cert)
    n2, f2, p2 = subject(again, idp_cert)
    n3, f3, p3 = subject(persistent, idp_cert)
    assert f1 == f2 == TRANSIENT and f3 == PERSISTENT
    assert n1 != n2, "a transient NameID is never reused"
    assert p1 == p2 == p3 == n3, "pairwise-id carries the persistent pseudonym either way"
    assert n1 not in (p1,) and n2 != p1


@pytest.mark.parametrize("fmt", [None, UNSPECIFIED])
def test_unspecified_or_no_policy_gets_the_persistent_pseudonym(hub, person, idp_cert, tmp_path, fmt):
    sp = new_sp(tmp_path, "unspecified")
    _, response = sso(hub, sp, person, fmt=fmt)
    name_id, name_format, pairwise = subject(response, idp_cert)
    assert name_format == PERSISTENT and name_id == pairwise


def test_an_unsupported_format_is_answered_with_invalid_nameid_policy(hub, person, idp_cert, tmp_path):
    sp = new_sp(tmp_path, "email")
    _, xml = request_with_policy(hub, sp, EMAIL)
    page = Browser(hub.base_url).start(sp, xml)
    assert page.status_code == 200, page.text[:400]
    _, response, _ = response_from_page(page.text)
    verify_with_xmlsec(response, idp_cert)
    assert status_codes(response)[-1] == INVALID_POLICY
    assert response.find("saml:Assertion", NS) is None


def test_allow_create_false_refuses_a_first_visit_and_accepts_a_known_one(hub, person, idp_cert, tmp_path):
    sp = new_sp(tmp_path, "nocreate")
    browser, refused = sso(hub, sp, person, allow_create="false")
    assert status_codes(refused)[-1] == INVALID_POLICY
    assert refused.find("saml:Assertion", NS) is None
    # AllowCreate absent or true establishes the pseudonym; then "false" is satisfied
    _, created = sso(hub, sp, person, browser=browser, allow_create=None)
    _, known = sso(hub, sp, person, browser=browser, allow_create="false")
    assert subject(created, idp_cert)[0] == subject(known, idp_cert)[0]


def test_a_transient_nameid_names_its_session_for_logout(hub, person, idp_cert, tmp_path):
    sp = new_sp(tmp_path, "transient-slo")
    browser, response = sso(hub, sp, person, fmt=TRANSIENT)
    name_id, _, _ = subject(response, idp_cert)
    # the LogoutRequest comes without the browser's cookie: only the transient mapping finds it
    xml = sp.logout_request(f"{hub.base_url}/idp/slo", name_id)
    xml = xml.replace(PERSISTENT.encode(), TRANSIENT.encode())
    other = Browser(hub.base_url)
    r = other.client.get("/idp/slo?" + sp.redirect_query(xml))
    assert r.status_code == 303, r.text[:400]
    query = parse_qs(urlsplit(r.headers["location"]).query)
    answer = etree.fromstring(zlib.decompress(b64decode(query["SAMLResponse"][0]), -15))
    assert [c.get("Value") for c in answer.iter(f"{{{SAMLP}}}StatusCode")] == [
        "urn:oasis:names:tc:SAML:2.0:status:Success"]
    _, xml = request_with_policy(hub, sp, TRANSIENT)
    assert browser.start(sp, xml).status_code == 303, "the session named by the transient NameID ended"


def test_python3_saml_requesting_transient_accepts_the_answer(hub, person, tmp_path):
    sp = new_sp(tmp_path, "onelogin-transient")
    browser = Browser(hub.base_url)
    requester = toolkit(hub.base_url, sp, name_id_format=TRANSIENT, url=sp.base_url + "/login")
    login_url = requester.login()
    assert "/idp/sso?" in login_url
    first = browser.client.get(login_url)
    page = browser.login(first, *person)
    assert page.status_code == 200, page.text[:500]
    _, _, fields = response_from_page(page.text)
    auth = toolkit(hub.base_url, sp, name_id_format=TRANSIENT, post=fields)
    auth.process_response(request_id=requester.get_last_request_id())  # InResponseTo checked
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.is_authenticated()
    assert auth.get_nameid_format() == TRANSIENT
    pairwise = auth.get_attribute(PAIRWISE)
    assert pairwise and pairwise[0] != auth.get_nameid()


def test_metadata_offers_both_formats(hub):
    import httpx

    root = etree.fromstring(httpx.get(f"{hub.base_url}/idp/metadata").content)
    formats = [e.text for e in root.iter("{urn:oasis:names:tc:SAML:2.0:metadata}NameIDFormat")]
    assert formats == [PERSISTENT, TRANSIENT]
