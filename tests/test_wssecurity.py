"""kernel.xml._wss against WSS SOAP Message Security 1.1 §8, an independent implementation
(python-xmlsec, on libxmlsec1) and the attacks of SECURITY.md adapted to detached signatures.

Attack envelopes are built and, where a valid signature is needed, signed by python-xmlsec with
the real sender's key, so each refusal is shown to come from the rule, not from a wrong key.
"""
from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import pytest
import xmlsec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from kernel.xml import _wss as ws
from kernel.xml._dsig import (
    DS_NS,
    ECDSA_SHA256,
    ForbiddenXML,
    SignatureInvalid,
    SignatureMissing,
    UnsupportedAlgorithm,
    XMLSecurityError,
)
from kernel.xml._wss import (
    WSSE_NS,
    FailedAuthentication,
    FailedCheck,
    InvalidSecurity,
    MessageExpired,
    fault_code,
    sign_envelope,
    soap_envelope,
    verify_envelope,
)
from tests.saml_sp import make_key_and_cert

pytestmark = pytest.mark.nodb  # pure WS-Security: no database; the PostgreSQL pass skips it

MAX = 256 * 1024
RK = "urn:renkei:2026"
PURPOSE = f"{{{RK}}}Purpose"
DISCO = "urn:liberty:disco:2006-08"
EVIL = "urn:renkei:service:evil.attacker.example"
GOOD = "urn:renkei:service:resident-record"
NS = {"soap": ws.SOAP11_NS, "wsse": ws.WSSE_NS, "wsu": ws.WSU_NS, "wsa": ws.WSA_NS, "ds": DS_NS,
      "sb": ws.SB_NS, "sbf": ws.SBF_NS, "disco": DISCO, "rk": RK}


@lru_cache(maxsize=1)
def sender():
    return make_key_and_cert("city.example")


@lru_cache(maxsize=1)
def attacker():
    return make_key_and_cert("attacker.example")


def pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pinned() -> list:
    return [sender()[1].public_key()]


# -- envelopes ---------------------------------------------------------------------------------
def envelope(service_type: str = GOOD, *, purpose: bool = False) -> etree._Element:
    env = soap_envelope({"sb": ws.SB_NS, "sbf": ws.SBF_NS, "disco": DISCO, "rk": RK})
    header, body = env[0], env[1]
    etree.SubElement(header, ws.FRAMEWORK, version="2.0")
    etree.SubElement(header, ws.SENDER, providerID="https://city.example/sp")
    if purpose:
        etree.SubElement(header, PURPOSE, task="T-1")
    query = etree.SubElement(body, f"{{{DISCO}}}Query")
    etree.SubElement(etree.SubElement(query, f"{{{DISCO}}}RequestedService"),
                     f"{{{DISCO}}}ServiceType").text = service_type
    return env


def signed(**kwargs) -> etree._Element:
    env = envelope(purpose=kwargs.pop("purpose", False))
    key, cert = kwargs.pop("signer", sender())
    sign_envelope(env, key, certificate=cert, action="urn:liberty:disco:2006-08:Query",
                  to="https://hub.example/discovery/soap", **kwargs)
    return env


def tostring(env: etree._Element) -> bytes:
    return etree.tostring(env)


def verify(data: bytes | etree._Element, keys=None, **kwargs):
    if isinstance(data, etree._Element):
        data = tostring(data)
    return verify_envelope(data, keys or pinned(), max_bytes=MAX, **kwargs)


def find(env: etree._Element, path: str) -> etree._Element:
    found = env.find(path, NS)
    assert found is not None, path
    return found


def utc(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def hand_built(*, created: datetime | None = None, lifetime: timedelta = timedelta(minutes=5),
               ids: bool = True) -> etree._Element:
    """An envelope with Security/Timestamp and wsu:Ids, built without kernel.xml._wss's signer."""
    env = envelope()
    header = env[0]
    wsa = {"MessageID": "urn:uuid:11111111-2222-3333-4444-555555555555",
           "Action": "urn:liberty:disco:2006-08:Query", "To": "https://hub.example/discovery/soap"}
    for name, text in wsa.items():
        etree.SubElement(header, f"{{{ws.WSA_NS}}}{name}").text = text
    security = etree.Element(ws.SECURITY)
    security.set(ws.MUST_UNDERSTAND, "1")
    header.insert(0, security)
    created = created or datetime.now(UTC)
    ts = etree.SubElement(security, ws.TIMESTAMP)
    etree.SubElement(ts, f"{{{ws.WSU_NS}}}Created").text = utc(created)
    etree.SubElement(ts, f"{{{ws.WSU_NS}}}Expires").text = utc(created + lifetime)
    if ids:
        for n, part in enumerate([env[1], ts, *[h for h in header if h.tag != ws.SECURITY]]):
            part.set(ws.WSU_ID, f"part-{n}")
    return env


def xmlsec_sign(env: etree._Element, parts: list[etree._Element], *, key=None, hmac_key: bytes | None = None,
                method=xmlsec.Transform.RSA_SHA256, digest=xmlsec.Transform.SHA256,
                transforms=(xmlsec.Transform.EXCL_C14N,), certificate=None) -> etree._Element:
    """Detached signature over `parts` (by wsu:Id) made by python-xmlsec, put in wsse:Security."""
    security = find(env, "soap:Header/wsse:Security")
    signature = xmlsec.template.create(env, xmlsec.Transform.EXCL_C14N, method, ns="ds")
    security.append(signature)
    for part in parts:
        ref = xmlsec.template.add_reference(signature, digest, uri="#" + part.get(ws.WSU_ID))
        for transform in transforms:
            xmlsec.template.add_transform(ref, transform)
    if certificate is not None:
        xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    xmlsec.tree.add_ids(env, ["Id"])
    ctx = xmlsec.SignatureContext()
    if hmac_key is not None:
        ctx.key = xmlsec.Key.from_binary_data(xmlsec.constants.KeyDataHmac, hmac_key)
    else:
        ctx.key = xmlsec.Key.from_memory(pem(key or sender()[0]), xmlsec.KeyFormat.PEM)
        if certificate is not None:
            ctx.key.load_cert_from_memory(cert_pem(certificate), xmlsec.KeyFormat.PEM)
    ctx.sign(signature)
    return env


def standard_parts(env: etree._Element) -> list[etree._Element]:
    header = env[0]
    return [env[1], find(env, "soap:Header/wsse:Security/wsu:Timestamp"),
            *[h for h in header if h.tag in ws.SIGNABLE_HEADERS]]


# -- the signer and verifier, and independent checks -------------------------------------------
def test_round_trip_returns_the_signed_parts():
    env = signed()
    result = verify(env)
    assert result.action == "urn:liberty:disco:2006-08:Query"
    assert result.to == "https://hub.example/discovery/soap"
    assert result.message_id.startswith("urn:uuid:")
    assert result.body.tag == ws.BODY
    assert result.body.findtext(".//disco:ServiceType", namespaces=NS) == GOOD
    assert result.header(ws.SENDER).get("providerID") == "https://city.example/sp"
    assert result.header(ws.FRAMEWORK).get("version") == "2.0"
    assert result.expires - result.created == timedelta(minutes=5)
    # the parts are new documents, parsed from the canonical octets, not the caller's tree
    assert result.body.getparent() is None and result.body.getroottree().getroot() is result.body


def test_signature_layout_is_wss_section_8():
    env = signed()
    security = find(env, "soap:Header/wsse:Security")
    assert security.get(ws.MUST_UNDERSTAND) == "1"
    assert [etree.QName(c).localname for c in security] == ["Timestamp", "BinarySecurityToken", "Signature"]
    refs = security.findall("ds:Signature/ds:SignedInfo/ds:Reference", NS)
    ids = {r.get("URI")[1:] for r in refs}
    signed_tags = {env.xpath("//*[@wsu:Id=$i]", i=i, namespaces=NS)[0].tag for i in ids}
    assert signed_tags == {ws.BODY, ws.TIMESTAMP, ws.MESSAGE_ID, ws.ACTION, ws.TO, ws.FRAMEWORK, ws.SENDER}
    for ref in refs:
        assert [t.get("Algorithm") for t in ref.findall("ds:Transforms/ds:Transform", NS)] == [
            "http://www.w3.org/2001/10/xml-exc-c14n#"]
    key_ref = find(security, "ds:Signature/ds:KeyInfo/wsse:SecurityTokenReference/wsse:Reference")
    assert key_ref.get("URI") == "#" + find(security, "wsse:BinarySecurityToken").get(ws.WSU_ID)


def test_python_xmlsec_verifies_our_signature_with_the_signer_certificate():
    env = etree.fromstring(tostring(signed()))
    xmlsec.tree.add_ids(env, ["Id"])
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(cert_pem(sender()[1]), xmlsec.KeyFormat.CERT_PEM)
    ctx.verify(find(env, "soap:Header/wsse:Security/ds:Signature"))
    # and it is the signer's key that matters: another certificate does not verify
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(cert_pem(attacker()[1]), xmlsec.KeyFormat.CERT_PEM)
    with pytest.raises(xmlsec.Error):
        ctx.verify(find(env, "soap:Header/wsse:Security/ds:Signature"))


def test_we_verify_a_signature_python_xmlsec_made():
    env = hand_built()
    xmlsec_sign(env, standard_parts(env))
    result = verify(env)
    assert result.message_id == "urn:uuid:11111111-2222-3333-4444-555555555555"


def test_ecdsa_signatures_verify():
    key = ec.generate_private_key(ec.SECP256R1())
    env = envelope()
    sign_envelope(env, key, algorithm=ECDSA_SHA256)
    assert verify(env, keys=[key.public_key()]).message_id


def test_extra_parts_are_signed_and_required_parts_enforced():
    env = envelope(purpose=True)
    sign_envelope(env, sender()[0], extra_parts=(PURPOSE,))
    result = verify(env, extra_parts=(PURPOSE,), required_parts=(PURPOSE,))
    assert result.header(PURPOSE).get("task") == "T-1"
    # signed without the Purpose: a verifier that treats it as signable refuses the envelope
    env = envelope(purpose=True)
    sign_envelope(env, sender()[0])
    with pytest.raises(InvalidSecurity, match="Purpose must be present and signed"):
        verify(env, extra_parts=(PURPOSE,))
    # and a required part that is missing altogether
    env = envelope()
    sign_envelope(env, sender()[0])
    with pytest.raises(InvalidSecurity, match="Purpose"):
        verify(env, extra_parts=(PURPOSE,), required_parts=(PURPOSE,))


def test_tampering_with_any_signed_part_is_detected():
    for path in (".//disco:ServiceType", "soap:Header/wsa:To", "soap:Header/wsa:MessageID",
                 "soap:Header/wsse:Security/wsu:Timestamp/wsu:Expires"):
        env = signed()
        find(env, path).text = EVIL if "ServiceType" in path else find(env, path).text + "x"
        with pytest.raises((FailedCheck, InvalidSecurity)):
            verify(env)
    env = signed()
    find(env, "soap:Header/sb:Sender").set("providerID", "https://evil.attacker.example/sp")
    with pytest.raises(FailedCheck):
        verify(env)


def test_key_info_is_ignored():
    env = signed()
    token = find(env, "soap:Header/wsse:Security/wsse:BinarySecurityToken")
    token.text = base64.b64encode(attacker()[1].public_bytes(serialization.Encoding.DER)).decode()
    assert verify(env).message_id


# -- attacks ------------------------------------------------------------------------------------
def test_body_wrapping_signed_body_moved_into_a_header_wrapper():
    env = signed()
    original = env[1]
    wrapper = etree.SubElement(env[0], f"{{{RK}}}Wrapper")
    env.remove(original)
    wrapper.append(original)
    forged = etree.SubElement(env, ws.BODY)
    query = etree.SubElement(forged, f"{{{DISCO}}}Query")
    etree.SubElement(etree.SubElement(query, f"{{{DISCO}}}RequestedService"),
                     f"{{{DISCO}}}ServiceType").text = EVIL
    with pytest.raises(InvalidSecurity):
        verify(env)


def test_body_wrapping_with_the_signed_body_hidden_in_the_security_header():
    env = signed()
    original = env[1]
    env.remove(original)
    find(env, "soap:Header/wsse:Security").append(original)
    forged = etree.SubElement(env, ws.BODY)
    etree.SubElement(forged, f"{{{DISCO}}}Query").text = EVIL
    with pytest.raises(InvalidSecurity):
        verify(env)


def test_body_wrapping_forged_body_takes_the_signed_id():
    env = signed()
    original = copy.deepcopy(env[1])
    etree.SubElement(env[0], f"{{{RK}}}Wrapper").append(original)
    find(env, ".//disco:ServiceType").text = EVIL  # in the real Body
    with pytest.raises(InvalidSecurity, match="duplicate ID"):
        verify(env)


def test_header_wrapping_signed_message_id_moved_and_replaced():
    env = signed()
    message_id = find(env, "soap:Header/wsa:MessageID")
    etree.SubElement(env[0], f"{{{RK}}}Wrapper").append(message_id)
    etree.SubElement(env[0], ws.MESSAGE_ID).text = "urn:uuid:fresh-for-replay"
    with pytest.raises(InvalidSecurity):
        verify(env)


def test_duplicate_wsu_id_anywhere_is_refused():
    env = signed()
    ts_id = find(env, "soap:Header/wsse:Security/wsu:Timestamp").get(ws.WSU_ID)
    find(env, ".//disco:Query").set(ws.WSU_ID, ts_id)
    with pytest.raises(InvalidSecurity, match="duplicate ID"):
        verify(env)
    env = signed()
    find(env, ".//disco:Query").set("ID", env[1].get(ws.WSU_ID))  # same value, another ID attribute
    with pytest.raises(InvalidSecurity, match="duplicate ID"):
        verify(env)


def test_duplicate_signable_header_is_refused():
    env = signed()
    etree.SubElement(env[0], ws.ACTION).text = "urn:evil"
    with pytest.raises(InvalidSecurity, match="more than once"):
        verify(env)


def test_unsigned_body_is_refused_even_with_a_valid_signature_over_the_rest():
    env = hand_built()
    xmlsec_sign(env, standard_parts(env)[1:])  # the sender's real key, everything but the Body
    with pytest.raises(InvalidSecurity, match="Body must be present and signed"):
        verify(env)


def test_unsigned_timestamp_or_message_id_is_refused():
    for skip in (ws.TIMESTAMP, ws.MESSAGE_ID):
        env = hand_built()
        xmlsec_sign(env, [p for p in standard_parts(env) if p.tag != skip])
        with pytest.raises(InvalidSecurity, match="must be present and signed"):
            verify(env)


def test_unsigned_addressing_header_present_is_refused():
    env = hand_built()
    xmlsec_sign(env, [p for p in standard_parts(env) if p.tag != ws.TO])
    with pytest.raises(InvalidSecurity, match="To must be present and signed"):
        verify(env)


def test_reference_to_an_element_that_may_not_be_signed():
    env = hand_built()
    query = find(env, ".//disco:Query")
    query.set(ws.WSU_ID, "inner-query")
    xmlsec_sign(env, [*standard_parts(env), query])
    with pytest.raises(InvalidSecurity, match="may not be signed"):
        verify(env)


def test_reference_into_the_security_header_is_refused():
    env = hand_built()
    security = find(env, "soap:Header/wsse:Security")
    token = etree.SubElement(security, ws.BINARY_SECURITY_TOKEN, ValueType=ws.X509V3)
    token.text = base64.b64encode(attacker()[1].public_bytes(serialization.Encoding.DER)).decode()
    token.set(ws.WSU_ID, "bst")
    xmlsec_sign(env, [*standard_parts(env), token])
    with pytest.raises(InvalidSecurity, match="may not be signed"):
        verify(env)


def test_expired_timestamp_is_refused():
    env = signed(now=datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(MessageExpired):
        verify(env)
    assert fault_code(MessageExpired("x")) == (ws.WSSE_NS, "MessageExpired")


def test_timestamp_from_the_future_is_refused():
    env = signed(now=datetime.now(UTC) + timedelta(minutes=3))
    with pytest.raises(MessageExpired):
        verify(env)


def test_long_lived_timestamp_is_refused():
    env = hand_built(lifetime=timedelta(hours=1))
    xmlsec_sign(env, standard_parts(env))
    with pytest.raises(InvalidSecurity, match="five minutes"):
        verify(env)


def test_hmac_signature_keyed_with_the_public_key_is_refused():
    env = hand_built()
    public_pem = sender()[1].public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    xmlsec_sign(env, standard_parts(env), hmac_key=public_pem, method=xmlsec.Transform.HMAC_SHA256)
    with pytest.raises(UnsupportedAlgorithm):
        verify(env)


def test_rsa_sha1_signature_is_refused():
    env = hand_built()
    xmlsec_sign(env, standard_parts(env), method=xmlsec.Transform.RSA_SHA1)
    with pytest.raises(UnsupportedAlgorithm):
        verify(env)


def test_sha1_digest_is_refused():
    env = hand_built()
    xmlsec_sign(env, standard_parts(env), digest=xmlsec.Transform.SHA1)
    with pytest.raises(UnsupportedAlgorithm):
        verify(env)


def test_other_transforms_are_refused():
    for transforms in ((xmlsec.Transform.ENVELOPED, xmlsec.Transform.EXCL_C14N),
                       (xmlsec.Transform.EXCL_C14N, xmlsec.Transform.EXCL_C14N),
                       (xmlsec.Transform.C14N,)):
        env = hand_built()
        xmlsec_sign(env, standard_parts(env), transforms=transforms)
        with pytest.raises(UnsupportedAlgorithm):
            verify(env)
    env = hand_built()  # no Transforms at all: the digest would be of inclusive c14n
    xmlsec_sign(env, standard_parts(env), transforms=())
    with pytest.raises(InvalidSecurity, match="Transforms"):
        verify(env)


def test_key_injection_via_binary_security_token_is_refused():
    env = signed(signer=attacker())  # attacker's key, attacker's certificate in the BST
    with pytest.raises(FailedAuthentication):
        verify(env)
    env = hand_built()
    xmlsec_sign(env, standard_parts(env), key=attacker()[0], certificate=attacker()[1])  # X509Data
    with pytest.raises(FailedAuthentication):
        verify(env)
    assert fault_code(FailedAuthentication("x")) == (ws.WSSE_NS, "FailedAuthentication")


def test_doctype_is_refused():
    data = tostring(signed())
    attacked = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "' + EVIL.encode() + b'">]>' + data)
    with pytest.raises(ForbiddenXML):
        verify(attacked)
    assert fault_code(ForbiddenXML("x")) == (ws.SOAP11_NS, "Client")


def test_signature_stripping():
    env = signed()
    signature = find(env, "soap:Header/wsse:Security/ds:Signature")
    signature.getparent().remove(signature)
    with pytest.raises(SignatureMissing):
        verify(env)
    env = signed()
    env[0].remove(find(env, "soap:Header/wsse:Security"))
    with pytest.raises(SignatureMissing):
        verify(env)


def test_two_security_headers_or_two_signatures_are_refused():
    env = signed()
    security = find(env, "soap:Header/wsse:Security")
    env[0].append(copy.deepcopy(security))
    with pytest.raises(XMLSecurityError):
        verify(env)
    env = signed()
    security = find(env, "soap:Header/wsse:Security")
    security.append(copy.deepcopy(find(security, "ds:Signature")))
    with pytest.raises(InvalidSecurity, match="exactly one Signature"):
        verify(env)


def test_second_signed_info_and_comment_in_digest_value_are_refused():
    env = signed()
    signature = find(env, "soap:Header/wsse:Security/ds:Signature")
    signature.insert(1, copy.deepcopy(signature[0]))
    with pytest.raises(SignatureInvalid, match="exactly one SignedInfo") as refused:
        verify(env)
    assert fault_code(refused.value) == (WSSE_NS, "InvalidSecurity")
    env = signed()
    digest = find(env, "soap:Header/wsse:Security/ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestValue")
    value = digest.text
    digest.text = value[:10]
    comment = etree.Comment("x")
    comment.tail = value[10:]
    digest.append(comment)
    with pytest.raises(XMLSecurityError, match="DigestValue"):  # refused already at parse
        verify(env)


def test_external_reference_is_refused():
    env = signed()
    ref = find(env, "soap:Header/wsse:Security/ds:Signature/ds:SignedInfo/ds:Reference")
    ref.set("URI", "https://attacker.example/body.xml")
    with pytest.raises(InvalidSecurity, match="same-document"):
        verify(env)


def test_trusted_keys_must_be_a_sequence():
    with pytest.raises(TypeError):
        verify_envelope(tostring(signed()), sender()[1].public_key(), max_bytes=MAX)
