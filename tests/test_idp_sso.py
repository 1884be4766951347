"""SAML Web Browser SSO against the running hub over real HTTP (profiles §4.1), with an SP
whose XML signing and checking is python-xmlsec's, not ours."""
from __future__ import annotations

import base64
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from click.testing import CliRunner
from lxml import etree

from idp.accounts import totp
from renkei.cli import main
from tests.saml_sp import NS, Browser, TestSP, now_str, response_from_page, verify_with_xmlsec

PAIRWISE = "urn:oasis:names:tc:SAML:attribute:pairwise-id"
PPT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
TIMESYNC = "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken"


def cli(*args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def idp_cert(hub):
    from kernel.keys import keystore

    return keystore().ensure_signing_key("idp").certificate


def register(sp: TestSP, tmp_path, agency_class: str = "municipality") -> TestSP:
    path = tmp_path / f"md-{uuid.uuid4().hex}.xml"
    path.write_bytes(sp.metadata())
    cli("agency", "add", "--metadata", str(path), "--class", agency_class)
    return sp


@pytest.fixture(scope="module")
def people(hub):
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    cli("person", "add", "--username", "alice", "--password-stdin", "--master-id", "1111-2222-3333",
        stdin="correct horse battery\n")
    cli("person", "add", "--username", "bob", "--password-stdin", stdin="another good pass\n")
    # a TOTP person, added through the service (the CLI generates its own secret)
    from idp import accounts
    from kernel.db import session_scope

    with session_scope() as db:
        accounts.add_person(db_session=db, username="carol", password="carol's password",
                            totp_secret=secret)
    return {"alice": "correct horse battery", "bob": "another good pass", "carol": "carol's password",
            "carol_totp": secret}


@pytest.fixture(scope="module")
def city_a(hub, tmp_path_factory):
    return register(TestSP("https://city-a.example.jp/sp", "https://city-a.example.jp"),
                    tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def city_b(hub, tmp_path_factory):
    return register(TestSP("https://city-b.example.jp/sp", "https://city-b.example.jp"),
                    tmp_path_factory.mktemp("sp"))


def sso(hub, sp: TestSP, browser: Browser | None = None, user: str = "alice", password: str = "",
        binding: str = "redirect", **request_kwargs):
    """Run one SP-initiated SSO; returns (browser, request id, ACS action, Response element)."""
    browser = browser or Browser(hub.base_url)
    request_id, root = sp.authn_request(f"{hub.base_url}/idp/sso", **request_kwargs)
    if binding == "post":
        sp.sign_xml(root)
    first = browser.start(sp, etree.tostring(root), relay_state="state-1", binding=binding)
    page = first if first.status_code == 200 else browser.login(first, user, password)
    assert page.status_code == 200, page.text[:800]
    action, response, fields = response_from_page(page.text)
    assert fields.get("RelayState") == "state-1"
    return browser, request_id, action, response


def assertion_of(response, idp_cert):
    verify_with_xmlsec(response, idp_cert)
    assertions = response.findall("saml:Assertion", NS)
    assert len(assertions) == 1
    verify_with_xmlsec(assertions[0], idp_cert)
    return assertions[0]


def test_metadata_describes_the_idp(hub):
    import httpx

    r = httpx.get(f"{hub.base_url}/idp/metadata")
    assert r.status_code == 200
    root = etree.fromstring(r.content)
    assert root.get("entityID") == f"{hub.base_url}/idp/metadata"
    md = "urn:oasis:names:tc:SAML:2.0:metadata"
    sso_services = root.findall(f".//{{{md}}}SingleSignOnService")
    assert {s.get("Binding").rsplit(":", 1)[1] for s in sso_services} == {"HTTP-Redirect", "HTTP-POST"}
    assert root.findall(f".//{{{md}}}KeyDescriptor[@use='signing']")


def test_sso_redirect_binding_gives_signed_persistent_pairwise_nameid(hub, people, city_a, idp_cert):
    _, request_id, action, response = sso(hub, city_a, password=people["alice"])
    assert action == city_a.acs_url
    assert response.get("InResponseTo") == request_id
    assert response.get("Destination") == city_a.acs_url
    status = response.find("samlp:Status/samlp:StatusCode", NS).get("Value")
    assert status.endswith(":Success")
    a = assertion_of(response, idp_cert)
    name_id = a.find("saml:Subject/saml:NameID", NS)
    assert name_id.get("Format") == "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    assert name_id.get("NameQualifier") == f"{hub.base_url}/idp/metadata"
    assert name_id.get("SPNameQualifier") == city_a.entity_id
    value, _, scope = name_id.text.partition("@")
    assert len(value) == 52 and value == value.lower() and scope
    attr = a.find(f"saml:AttributeStatement/saml:Attribute[@Name='{PAIRWISE}']/saml:AttributeValue", NS)
    assert attr.text == name_id.text
    assert a.find("saml:Conditions/saml:AudienceRestriction/saml:Audience", NS).text == city_a.entity_id
    scd = a.find("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS)
    assert scd.get("Recipient") == city_a.acs_url and scd.get("InResponseTo") == request_id
    assert a.find(".//saml:AuthnContextClassRef", NS).text == PPT


def test_sso_post_binding_with_signed_request(hub, people, city_a, idp_cert):
    _, request_id, _, response = sso(hub, city_a, password=people["alice"], binding="post")
    assert response.get("InResponseTo") == request_id
    assertion_of(response, idp_cert)


def test_pseudonyms_pairwise_and_stable(hub, people, city_a, city_b, idp_cert):
    def name_for(sp, user):
        _, _, _, response = sso(hub, sp, user=user, password=people[user])
        return assertion_of(response, idp_cert).find("saml:Subject/saml:NameID", NS).text

    a1, a2 = name_for(city_a, "alice"), name_for(city_a, "alice")
    b1 = name_for(city_b, "alice")
    assert a1 == a2, "one agency sees the same pseudonym across logins"
    assert a1 != b1, "two agencies see different pseudonyms"
    assert name_for(city_a, "bob") not in (a1, b1)


def test_session_reuse_skips_login(hub, people, city_a):
    browser, *_ = sso(hub, city_a, password=people["alice"])
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso")
    r = browser.start(city_a, etree.tostring(root))
    assert r.status_code == 200 and "SAMLResponse" in r.text


def test_totp_raises_authn_context(hub, people, city_a, idp_cert):
    browser = Browser(hub.base_url)
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso")
    first = browser.start(city_a, etree.tostring(root))
    code_page = browser.login(first, "carol", people["carol"])
    assert 'autocomplete="one-time-code"' in code_page.text
    wrong = browser.totp(code_page, "000000" if totp(people["carol_totp"]) != "000000" else "111111")
    assert wrong.status_code == 401
    done = browser.totp(wrong, totp(people["carol_totp"]))
    _, response, _ = response_from_page(done.text)
    assert assertion_of(response, idp_cert).find(".//saml:AuthnContextClassRef", NS).text == TIMESYNC


def test_unmeetable_authn_context_is_a_saml_error(hub, people, city_a):
    _, _, _, response = sso(hub, city_a, password=people["bob"], user="bob",
                            requested_context=("exact", [TIMESYNC]))
    top = response.find("samlp:Status/samlp:StatusCode", NS)
    assert top.get("Value").endswith(":Responder")
    assert top.find("samlp:StatusCode", NS).get("Value").endswith(":NoAuthnContext")
    assert response.find("saml:Assertion", NS) is None


def test_unknown_context_class_refused_before_login(hub, city_a):
    browser = Browser(hub.base_url)
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso",
                                   requested_context=("exact", ["urn:example:smartcard"]))
    r = browser.start(city_a, etree.tostring(root))
    assert r.status_code == 200
    _, response, _ = response_from_page(r.text)
    sub = response.find("samlp:Status/samlp:StatusCode/samlp:StatusCode", NS)
    assert sub.get("Value").endswith(":NoAuthnContext")


def test_login_page_autocomplete_and_throttle(hub, city_a, people):
    browser = Browser(hub.base_url)
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso")
    first = browser.start(city_a, etree.tostring(root))
    page = browser.client.get(first.headers["location"])
    assert 'autocomplete="username"' in page.text and 'autocomplete="current-password"' in page.text
    answers = [browser.login(first, "bob", f"wrong-{i}") for i in range(6)]
    codes = [r.status_code for r in answers]
    assert codes[:5] == [401] * 5 and codes[5] == 429 and "retry-after" in answers[5].headers
    # even the right password waits out the delay
    assert browser.login(first, "bob", people["bob"]).status_code == 429
    from idp.models import LoginThrottle
    from kernel.db import session_scope

    with session_scope() as db:  # lift the throttle for the other tests
        db.query(LoginThrottle).filter(LoginThrottle.key.in_(["account:bob", "address:127.0.0.1"])).delete()


def test_wrong_acs_url_is_a_4xx_page_not_a_redirect(hub, city_a):
    browser = Browser(hub.base_url)
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso", acs_url="https://evil.example/acs")
    r = browser.start(city_a, etree.tostring(root))
    assert r.status_code == 400
    assert "AssertionConsumerService" in r.text
    assert "evil.example" not in r.headers.get("location", "")


def test_unsigned_request_refused_when_metadata_requires_signing(hub, city_a):
    browser = Browser(hub.base_url)
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso")
    assert browser.start(city_a, etree.tostring(root), sign=False).status_code == 400
    assert browser.start(city_a, etree.tostring(root), binding="post").status_code == 400


def test_request_signed_by_another_key_refused(hub, city_a):
    impostor = TestSP(city_a.entity_id, city_a.base_url)
    browser = Browser(hub.base_url)
    _, root = impostor.authn_request(f"{hub.base_url}/idp/sso")
    r = browser.start(impostor, etree.tostring(root))
    assert r.status_code == 400 and "signature" in r.text


def test_replayed_authn_request_refused(hub, people, city_a):
    browser, *_ = sso(hub, city_a, password=people["alice"])
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso", request_id="_replayed-id-1")
    assert "Success" in _status(browser.start(city_a, etree.tostring(root)))
    again = browser.start(city_a, etree.tostring(root))
    assert "RequestDenied" in _status(again)


def test_concurrent_copies_of_one_request_get_one_assertion_and_one_history_entry(hub, people, city_a):
    """The request's ID is remembered with the release's history entry, in its group commit:
    eight copies of one signed AuthnRequest sent at once by a logged-in browser get one
    Success and seven RequestDenied, and the person's history holds one release."""
    import httpx

    browser, *_ = sso(hub, city_a, password=people["alice"])
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso", request_id=f"_raced-{uuid.uuid4().hex}")
    query = city_a.redirect_query(etree.tostring(root))  # signed once: eight identical copies
    before = _releases_to(city_a)
    barrier = threading.Barrier(8)

    def send(_: int) -> str:
        with httpx.Client(base_url=hub.base_url, cookies=browser.client.cookies, timeout=30) as client:
            barrier.wait(timeout=30)
            return _status(client.get("/idp/sso?" + query))

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert sum("Success" in s for s in statuses) == 1, statuses
    assert sum("RequestDenied" in s for s in statuses) == 7, statuses
    assert _releases_to(city_a) == before + 1


def test_a_request_parked_for_login_is_not_answered_again_from_a_session(hub, people, city_a):
    """A request that went to the login page was remembered then: the same request from a
    logged-in browser is refused, and nothing is logged for it."""
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso", request_id=f"_parked-{uuid.uuid4().hex}")
    assert Browser(hub.base_url).start(city_a, etree.tostring(root)).status_code == 303  # parked
    browser, *_ = sso(hub, city_a, password=people["alice"])
    before = _releases_to(city_a)
    assert "RequestDenied" in _status(browser.start(city_a, etree.tostring(root)))
    assert _releases_to(city_a) == before


def _releases_to(sp: TestSP) -> int:
    from sqlalchemy import func, select

    from access_history.models import HistoryEntry
    from kernel.db import session_scope

    with session_scope() as db:
        return db.scalar(select(func.count()).select_from(HistoryEntry)
                         .where(HistoryEntry.requester == sp.entity_id, HistoryEntry.channel == "sso"))


def _status(r) -> str:
    _, response, _ = response_from_page(r.text)
    return " ".join(c.get("Value") for c in response.iter(f"{{{NS['samlp']}}}StatusCode"))


def test_stale_request_refused(hub, city_a):
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso", issue_instant=now_str(timedelta(hours=-1)))
    r = Browser(hub.base_url).start(city_a, etree.tostring(root))
    assert "Requester" in _status(r)


def test_doctype_and_entities_refused(hub, city_a):
    xml = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_a" '
           b'Version="2.0" IssueInstant="2026-01-01T00:00:00Z">&x;</samlp:AuthnRequest>')
    for binding in ("redirect", "post"):
        r = Browser(hub.base_url).start(city_a, xml, binding=binding, sign=False)
        assert r.status_code == 400
        assert "root:" not in r.text


def test_garbage_is_4xx_never_500(hub):
    import httpx

    for params in ({"SAMLRequest": "%%%"}, {"SAMLRequest": base64.b64encode(b"not deflate").decode()}, {}):
        assert httpx.get(f"{hub.base_url}/idp/sso", params=params).status_code == 400
    assert httpx.post(f"{hub.base_url}/idp/sso", data={"SAMLRequest": "@@@"}).status_code == 400
    assert httpx.post(f"{hub.base_url}/idp/login", data={"pending": "nope"}).status_code == 400


def test_xmlsec1_accepts_the_response_signatures(hub, people, city_a, idp_cert, tmp_path):
    """The independent xmlsec1 binary, trusting only the pinned IdP certificate."""
    from cryptography.hazmat.primitives import serialization

    _, _, _, response = sso(hub, city_a, password=people["alice"])
    cert = tmp_path / "idp.pem"
    cert.write_bytes(idp_cert.public_bytes(serialization.Encoding.PEM))
    doc = tmp_path / "response.xml"
    doc.write_bytes(etree.tostring(response))
    for node in ("urn:oasis:names:tc:SAML:2.0:protocol:Response", "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"):
        run = subprocess.run(
            ["xmlsec1", "--verify", "--enabled-key-data", "x509", "--pubkey-cert-pem", str(cert),
             "--id-attr:ID", node, "--node-name", node, str(doc)],
            capture_output=True, text=True, check=False,
        )
        assert run.returncode == 0, run.stderr
        assert "OK" in run.stderr


def test_single_logout_redirect(hub, people, city_a, idp_cert):
    from urllib.parse import parse_qs, urlsplit

    import httpx

    browser, _, _, response = sso(hub, city_a, password=people["alice"])
    a = assertion_of(response, idp_cert)
    name_id = a.find("saml:Subject/saml:NameID", NS).text
    index = a.find("saml:AuthnStatement", NS).get("SessionIndex")
    xml = city_a.logout_request(f"{hub.base_url}/idp/slo", name_id, index)
    r = browser.client.get("/idp/slo?" + city_a.redirect_query(xml, relay_state="bye"))
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith(city_a.slo_url + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["RelayState"] == ["bye"] and "Signature" in query
    import zlib
    answer = etree.fromstring(zlib.decompress(base64.b64decode(query["SAMLResponse"][0]), -15))
    assert answer.find("samlp:Status/samlp:StatusCode", NS).get("Value").endswith(":Success")
    # the session is gone: a new request needs a login
    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso")
    assert browser.start(city_a, etree.tostring(root)).status_code == 303
    # an unsigned LogoutRequest is refused
    unsigned = httpx.get(f"{hub.base_url}/idp/slo?" + city_a.redirect_query(xml, sign=False))
    assert unsigned.status_code == 400


def test_metadata_publishes_the_two_newest_keys_after_rotation(hub, tmp_path):
    """Rotation without downtime: after `renkei keys rotate idp` metadata lists the new key and
    the previous one, so agencies can pin the new one before it signs."""
    import httpx

    from kernel.keys import KeyStore

    keys = KeyStore(tmp_path / "keys")
    for _ in range(3):
        keys.create_signing_key("idp")
    published = keys.published_certificates("idp")
    assert [c.serial_number for c in published] == [
        keys.load_signing_key("idp", v).certificate.serial_number for v in (3, 2)]
    from renkei_provider import hub_signing_certificates

    before = httpx.get(f"{hub.base_url}/idp/metadata").content
    idp_certs = hub_signing_certificates(before, role="idp")[1]
    assert len(idp_certs) == len(KeyStore(hub.settings.keys_dir).published_certificates("idp"))


# XSW3-8 wrap an Assertion inside a Response; tests/test_assertion_attacks.py runs those.
@pytest.mark.parametrize("attack", ["xsw1", "xsw2", "strip_signatures", "key_injection", "sha1_signature",
                                    "second_signed_info", "billion_laughs", "external_entity"])
def test_attacked_signed_authn_requests_are_refused_over_http(hub, city_a, attack):
    """SECURITY.md's corpus against the IdP's HTTP-POST binding: a forged AuthnRequest never
    gets an answer, least of all at the forger's ACS URL."""
    from tests import xml_attacks as X

    _, root = city_a.authn_request(f"{hub.base_url}/idp/sso")
    signed = etree.tostring(city_a.sign_xml(root))
    forged = getattr(X, attack)(signed)
    r = Browser(hub.base_url).start(city_a, forged, binding="post", sign=False)
    assert r.status_code == 400, r.text[-400:]
    assert "SAMLResponse" not in r.text and "attacker.example" not in r.text


def test_expired_sessions_and_pending_requests_are_swept(hub):
    from datetime import timedelta

    from idp import service
    from idp.models import IdpSession, PendingAuthn
    from kernel.db import session_scope, utcnow

    with session_scope() as db:
        token = service.start_session(db_session=db, settings=hub.settings, person_key="sweep-me", level=1)
        db.add(PendingAuthn(id="sweep-pending", request_json="{}", expires_at=utcnow() - timedelta(seconds=1)))
    with session_scope() as db:
        assert service.current_session(db_session=db, token=token) is not None
        service.expire_housekeeping(db_session=db, now=utcnow() + timedelta(seconds=hub.settings.session_lifetime_seconds + 1))
    with session_scope() as db:
        assert db.query(IdpSession).filter_by(person_key="sweep-me").count() == 0
        assert db.get(PendingAuthn, "sweep-pending") is None


def test_a_session_ended_in_this_transaction_is_not_live(hub):
    """The session is read by a Core statement on the request's connection: a session ended
    earlier in the same unit of work (a re-login, a logout) is not answered from."""
    from idp import service
    from kernel.db import session_scope

    with session_scope() as db:
        token = service.start_session(db_session=db, settings=hub.settings, person_key="ended-here", level=2)
        live = service.current_session(db_session=db, token=token)
        assert live is not None and live.person_key == "ended-here" and service.session_level(live) == 2
        service.end_session(db_session=db, token=token)
        assert service.current_session(db_session=db, token=token) is None
