"""Attacks on the assertion consumer (`kernel.xml._assertions`), on real Responses that the running
hub issued over HTTP: wrapping, stripping, key injection, audience, time, replay, recipient,
DTDs. Every refusal is a typed error; forged content is never returned."""
from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from lxml import etree

from kernel.db import session_scope, utcnow
from kernel.replay import DatabaseReplayCache
from kernel.xml import _assertions as A
from kernel.xml._dsig import (
    ForbiddenXML,
    SignatureInvalid,
    SignatureMissing,
    XMLSecurityError,
    sign_enveloped,
)
from tests import xml_attacks as X
from tests.saml_sp import NS, Browser, TestSP, response_from_page
from tests.test_idp_sso import cli, register

EVIL = "attacker"


def forge_name(element: etree._Element) -> None:
    for name_id in element.iter(f"{{{NS['saml']}}}NameID"):
        name_id.text = X.EVIL_NAME_ID


@pytest.fixture(scope="module")
def sps(hub, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attack-sp")
    cli("person", "add", "--username", "attack-victim", "--password-stdin", stdin="victim password\n")
    return (register(TestSP("https://attack-a.example.jp/sp", "https://attack-a.example.jp"), tmp),
            register(TestSP("https://attack-b.example.jp/sp", "https://attack-b.example.jp"), tmp))


@pytest.fixture(scope="module")
def idp_key(hub):
    from kernel.keys import keystore

    return keystore().ensure_signing_key("idp")


def fresh_response(hub, sp: TestSP) -> tuple[bytes, str]:
    browser = Browser(hub.base_url)
    request_id, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    first = browser.start(sp, etree.tostring(root))
    page = browser.login(first, "attack-victim", "victim password")
    _, _, fields = response_from_page(page.text)
    return base64.b64decode(fields["SAMLResponse"]), request_id


def validate(hub, xml: bytes, sp: TestSP, request_id: str, idp_key, **over):
    args = {"idp_entity_id": hub.settings.idp_entity_id, "idp_keys": [idp_key.public_key],
                "audience": sp.entity_id, "acs_url": sp.acs_url, "pending_request_ids": {request_id}}
    args.update(over)
    with session_scope() as db:
        cache = DatabaseReplayCache(db_session=db, issuer=hub.settings.idp_entity_id)
        return A.validate_response(xml, replay_cache=cache, **args)


def test_genuine_response_validates_once(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    got = validate(hub, xml, sp, rid, idp_key)
    assert got.name_id.endswith("@renkei.localhost") and got.sp_name_qualifier == sp.entity_id
    assert got.attributes["urn:oasis:names:tc:SAML:attribute:pairwise-id"] == [got.name_id]
    with pytest.raises(A.ReplayedAssertion):
        validate(hub, xml, sp, rid, idp_key)


@pytest.mark.parametrize("attack", [X.xsw1, X.xsw2, X.xsw3, X.xsw4, X.xsw5, X.xsw6, X.xsw7, X.xsw8])
def test_signature_wrapping_refused(hub, sps, idp_key, attack):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    try:
        forged = attack(xml, forge=forge_name)
    except ValueError:
        pytest.skip("this wrapping variant does not apply to a doubly signed response")
    with pytest.raises(XMLSecurityError) as err:
        validate(hub, forged, sp, rid, idp_key)
    assert X.EVIL_NAME_ID not in str(err.value)


def test_unsigned_assertion_refused(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    with pytest.raises(SignatureMissing):
        validate(hub, X.strip_signatures(xml, forge=forge_name), sp, rid, idp_key)


def test_signed_response_with_unsigned_assertion_refused(hub, sps, idp_key):
    """Even signed by the real IdP key, a Response signature does not stand in for the
    assertion's own (the consumed element must carry the signature)."""
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    root = etree.fromstring(xml)
    root.remove(root.find("ds:Signature", NS))
    assertion = root.find("saml:Assertion", NS)
    assertion.remove(assertion.find("ds:Signature", NS))
    sign_enveloped(root, idp_key.private_key)
    with pytest.raises(SignatureMissing):
        validate(hub, etree.tostring(root), sp, rid, idp_key)


def test_key_injection_and_algorithm_confusion_refused(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    for forged in (X.key_injection(xml, forge=forge_name),
                   X.hmac_with_public_key(xml, public_key=idp_key.public_key, forge=forge_name)):
        with pytest.raises(SignatureInvalid):
            validate(hub, forged, sp, rid, idp_key)


def test_assertion_for_another_audience_refused(hub, sps, idp_key):
    a, b = sps
    xml, rid = fresh_response(hub, b)  # issued for agency B
    with pytest.raises(A.DestinationMismatch):  # presented at A's ACS
        validate(hub, xml, a, rid, idp_key)
    # even re-signed by the real IdP with A's Destination/Recipient, the Audience is still B
    root = etree.fromstring(xml)
    root.remove(root.find("ds:Signature", NS))
    root.set("Destination", a.acs_url)
    assertion = root.find("saml:Assertion", NS)
    assertion.remove(assertion.find("ds:Signature", NS))
    assertion.find(".//saml:SubjectConfirmationData", NS).set("Recipient", a.acs_url)
    sign_enveloped(assertion, idp_key.private_key)
    sign_enveloped(root, idp_key.private_key)
    with pytest.raises(A.AudienceMismatch):
        validate(hub, etree.tostring(root), a, rid, idp_key)


def test_expired_conditions_refused(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    with pytest.raises(A.AssertionExpired):
        validate(hub, xml, sp, rid, idp_key, now=utcnow() + timedelta(minutes=10))
    with pytest.raises(A.AssertionExpired):
        validate(hub, xml, sp, rid, idp_key, now=utcnow() - timedelta(minutes=10))


def test_replayed_or_foreign_in_response_to_refused(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    with pytest.raises(A.InResponseToMismatch):
        validate(hub, xml, sp, rid, idp_key, pending_request_ids={"_some-other-request"})
    validate(hub, xml, sp, rid, idp_key)
    with pytest.raises(A.ReplayedAssertion):
        validate(hub, xml, sp, rid, idp_key)


def test_wrong_acs_recipient_refused(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    with pytest.raises(A.DestinationMismatch):
        validate(hub, xml, sp, rid, idp_key, acs_url="https://attack-a.example.jp/other-acs")


def test_dtd_and_entity_payloads_refused(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    for forged in (X.billion_laughs(xml), X.external_entity(xml)):
        with pytest.raises(ForbiddenXML):
            validate(hub, forged, sp, rid, idp_key)


def test_comment_inside_name_id_refused(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    with pytest.raises(ForbiddenXML):
        validate(hub, X.comment_in_name_id(xml), sp, rid, idp_key)


def test_second_digest_value_and_signed_info_refused(hub, sps, idp_key):
    sp, _ = sps
    xml, rid = fresh_response(hub, sp)
    for forged in (X.second_digest_value(xml, forge=forge_name), X.second_signed_info(xml, forge=forge_name),
                   X.comment_in_digest_value(xml, forge=forge_name)):
        with pytest.raises(XMLSecurityError):
            validate(hub, forged, sp, rid, idp_key)
