"""kernel.xml._dsig against its spec, independent checkers and the attacks in SECURITY.md.

Independent checkers: the xmlsec1 binary, python-xmlsec and OneLogin's python3-saml (all on
libxmlsec1, none used by the module under test). Keys are generated per test session.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import re
import shutil
import subprocess
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from lxml import etree
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from kernel.xml import _dsig as xs
from kernel.xml._dsig import (
    ForbiddenXML,
    MalformedXML,
    MessageTooLarge,
    SignatureInvalid,
    SignatureMissing,
    UnsupportedAlgorithm,
    XMLSecurityError,
)
from tests import xml_attacks as attacks

pytestmark = pytest.mark.nodb  # pure XML security: no database; the PostgreSQL pass skips it

SAML = xs.SAML_NS
SAMLP = xs.SAMLP_NS
DS = xs.DS_NS
NS = {"saml": SAML, "samlp": SAMLP, "ds": DS}
VICTIM = "victim@city.example"
ASSERTION_ID_ATTR = f"{SAML}:Assertion"
needs_xmlsec1 = pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="xmlsec1 missing")


# -- keys and messages -----------------------------------------------------------------------
@dataclass(frozen=True)
class Signer:
    key: PrivateKeyTypes
    certificate: x509.Certificate
    algorithm: str

    @property
    def public_key(self) -> PublicKeyTypes:
        return self.key.public_key()

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@pytest.fixture(scope="session")
def idp() -> Signer:
    key, certificate = attacks.make_key_and_certificate("idp.renkei.example")
    return Signer(key, certificate, xs.RSA_SHA256)


@pytest.fixture(scope="session")
def idp_ec() -> Signer:
    key, certificate = attacks.make_key_and_certificate("idp-ec.renkei.example", kind="ec")
    return Signer(key, certificate, xs.ECDSA_SHA256)


@pytest.fixture(scope="session")
def other() -> Signer:
    key, certificate = attacks.make_key_and_certificate("someone-else.example")
    return Signer(key, certificate, xs.RSA_SHA256)


def assertion_xml(assertion_id: str = "_a1", name_id: str = VICTIM) -> str:
    return f"""<saml:Assertion xmlns:saml="{SAML}" xmlns:xs="http://www.w3.org/2001/XMLSchema" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ID="{assertion_id}" Version="2.0" \
IssueInstant="2025-04-01T09:00:00Z">
    <saml:Issuer>https://idp.renkei.example/saml</saml:Issuer>
    <saml:Subject>
      <saml:NameID Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent" \
SPNameQualifier="https://city.example/sp">{name_id}</saml:NameID>
      <saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">
        <saml:SubjectConfirmationData InResponseTo="_req1" Recipient="https://city.example/acs" \
NotOnOrAfter="2025-04-01T09:05:00Z"/>
      </saml:SubjectConfirmation>
    </saml:Subject>
    <saml:Conditions NotBefore="2025-04-01T08:59:00Z" NotOnOrAfter="2025-04-01T09:05:00Z">
      <saml:AudienceRestriction><saml:Audience>https://city.example/sp</saml:Audience>\
</saml:AudienceRestriction>
    </saml:Conditions>
    <saml:AuthnStatement AuthnInstant="2025-04-01T09:00:00Z" SessionIndex="_s1">
      <saml:AuthnContext><saml:AuthnContextClassRef>\
urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef>\
</saml:AuthnContext>
    </saml:AuthnStatement>
    <saml:AttributeStatement>
      <saml:Attribute Name="urn:oid:2.5.4.42" FriendlyName="givenName">\
<saml:AttributeValue xsi:type="xs:string">Hanako</saml:AttributeValue></saml:Attribute>
      <saml:Attribute Name="urn:oid:2.5.4.4" FriendlyName="sn">\
<saml:AttributeValue xsi:type="xs:string">Yamada</saml:AttributeValue></saml:Attribute>
    </saml:AttributeStatement>
  </saml:Assertion>"""


def response_xml(name_id: str = VICTIM) -> bytes:
    return f"""<samlp:Response xmlns:samlp="{SAMLP}" xmlns:saml="{SAML}" ID="_r1" Version="2.0" \
IssueInstant="2025-04-01T09:00:00Z" Destination="https://city.example/acs" InResponseTo="_req1">
  <saml:Issuer>https://idp.renkei.example/saml</saml:Issuer>
  <samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/>\
</samlp:Status>
  {assertion_xml(name_id=name_id)}
</samlp:Response>""".encode()


def authn_request_xml() -> bytes:
    return f"""<samlp:AuthnRequest xmlns:samlp="{SAMLP}" xmlns:saml="{SAML}" ID="_req1" \
Version="2.0" IssueInstant="2025-04-01T09:00:00Z" Destination="https://idp.renkei.example/sso" \
AssertionConsumerServiceURL="https://city.example/acs">
  <saml:Issuer>https://city.example/sp</saml:Issuer>
  <samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"/>
</samlp:AuthnRequest>""".encode()


def sign_assertion(xml: bytes, signer: Signer, *, certificate: bool = True) -> bytes:
    root = xs.parse_xml(xml)
    cert = signer.certificate if certificate else None
    xs.sign_enveloped(root.find("saml:Assertion", NS), signer.key, certificate=cert,
                      algorithm=signer.algorithm)
    return etree.tostring(root)


def sign_root(xml: bytes, signer: Signer) -> bytes:
    root = xs.parse_xml(xml)
    xs.sign_enveloped(root, signer.key, certificate=signer.certificate, algorithm=signer.algorithm)
    return etree.tostring(root)


@pytest.fixture(scope="session")
def assertion_signed(idp: Signer) -> bytes:
    return sign_assertion(response_xml(), idp)


@pytest.fixture(scope="session")
def response_signed(idp: Signer) -> bytes:
    return sign_root(response_xml(), idp)


@pytest.fixture(scope="session")
def request_signed(idp: Signer) -> bytes:
    return sign_root(authn_request_xml(), idp)


def name_id_of(element: etree._Element) -> str | None:
    return element.findtext(".//saml:Subject/saml:NameID", namespaces=NS)


def read_name_id(xml: bytes, keys) -> str | None:
    """How a consumer is meant to use the API: verify what it reads, one assertion only."""
    root = xs.parse_xml(xml)
    response_signed = root.find("ds:Signature", NS) is not None
    root = xs.verify_signed(root, keys, require_signature=False)
    assertions = root.findall("saml:Assertion", NS)
    if len(assertions) != 1:
        raise ValueError("exactly one assertion is required")
    assertion = xs.verify_signed(assertions[0], keys, require_signature=not response_signed)
    return name_id_of(assertion)


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "curve", "algorithm"),
    [
        ("rsa", None, xs.RSA_SHA256),
        ("rsa", None, xs.RSA_SHA384),
        ("rsa", None, xs.RSA_SHA512),
        ("ec", ec.SECP256R1(), xs.ECDSA_SHA256),
        ("ec", ec.SECP384R1(), xs.ECDSA_SHA384),
        ("ec", ec.SECP521R1(), xs.ECDSA_SHA512),
    ],
)
def test_round_trip(kind, curve, algorithm, other: Signer) -> None:
    if kind == "rsa":
        key: PrivateKeyTypes = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(curve)
    root = xs.parse_xml(response_xml())
    assertion = root.find("saml:Assertion", NS)
    xs.sign_enveloped(assertion, key, algorithm=algorithm)
    wire = etree.tostring(root)

    received = xs.parse_xml(wire).find("saml:Assertion", NS)
    verified = xs.verify_signed(received, [other.public_key, key.public_key()])
    assert name_id_of(verified) == VICTIM
    assert verified.find("ds:Signature", NS) is None
    assert verified.get("ID") == "_a1"

    with pytest.raises(SignatureInvalid, match="does not verify"):
        xs.verify_signed(received, [other.public_key])
    tampered = xs.parse_xml(wire.replace(VICTIM.encode(), b"mallory@city.example"))
    with pytest.raises(SignatureInvalid, match="digest"):
        xs.verify_signed(tampered.find("saml:Assertion", NS), [key.public_key()])


def test_signature_sits_after_issuer_or_first(idp: Signer) -> None:
    root = xs.parse_xml(response_xml())
    xs.sign_enveloped(root, idp.key)
    assert [etree.QName(child).localname for child in root][:3] == ["Issuer", "Signature", "Status"]
    bare = xs.parse_xml(f'<samlp:LogoutResponse xmlns:samlp="{SAMLP}" ID="_x"><samlp:Status/>'
                        "</samlp:LogoutResponse>")
    xs.sign_enveloped(bare, idp.key)
    assert bare[0].tag == f"{{{DS}}}Signature"
    reference = bare.find("ds:Signature/ds:SignedInfo/ds:Reference", NS)
    assert reference.get("URI") == "#_x"
    assert [t.get("Algorithm") for t in reference.find("ds:Transforms", NS)] == [
        xs.ENVELOPED_SIGNATURE,
        xs.EXC_C14N,
    ]
    assert reference.find("ds:DigestMethod", NS).get("Algorithm") == xs.DIGEST_SHA256


def test_sign_enveloped_refuses_misuse(idp: Signer, idp_ec: Signer) -> None:
    with pytest.raises(ValueError, match="ID"):
        xs.sign_enveloped(etree.fromstring("<a/>"), idp.key)
    root = xs.parse_xml(authn_request_xml())
    xs.sign_enveloped(root, idp.key)
    with pytest.raises(ValueError, match="already"):
        xs.sign_enveloped(root, idp.key)
    with pytest.raises(TypeError):
        xs.sign_enveloped(xs.parse_xml(authn_request_xml()), idp.key, algorithm=xs.ECDSA_SHA256)
    with pytest.raises(TypeError):
        xs.sign_enveloped(xs.parse_xml(authn_request_xml()), idp_ec.key)
    with pytest.raises(UnsupportedAlgorithm):
        xs.sign_enveloped(xs.parse_xml(authn_request_xml()), idp.key,
                          algorithm=attacks.RSA_SHA1)


def test_verify_returns_only_signed_bytes_and_leaves_input_alone(
    assertion_signed: bytes, idp: Signer
) -> None:
    with_comment = assertion_signed.replace(b"<saml:Subject>", b"<saml:Subject><!-- note -->")
    root = xs.parse_xml(with_comment)
    before = etree.tostring(root)
    assertion = root.find("saml:Assertion", NS)
    verified = xs.verify_signed(assertion, [idp.public_key])
    assert verified is not assertion
    assert verified.getparent() is None
    assert etree.tostring(root) == before
    assert not list(verified.iter(etree.Comment))
    assert verified.find("ds:Signature", NS) is None
    # the result is exactly the canonical octets the digest covered
    body = copy.deepcopy(assertion)
    body.remove(body.find("ds:Signature", NS))
    assert xs.c14n(verified) == xs.c14n(body)
    digest = assertion.findtext(".//ds:DigestValue", namespaces=NS)
    assert base64.b64encode(hashlib.sha256(xs.c14n(verified)).digest()).decode() == digest


def test_response_and_nested_assertion_both_signed(idp: Signer) -> None:
    wire = sign_root(sign_assertion(response_xml(), idp), idp)
    verified = xs.verify_signed(xs.parse_xml(wire), [idp.public_key])
    assertion = verified.find("saml:Assertion", NS)
    assert assertion.find("ds:Signature", NS) is not None  # only the outer one is removed
    assert name_id_of(xs.verify_signed(assertion, [idp.public_key])) == VICTIM
    assert read_name_id(wire, [idp.public_key]) == VICTIM


def test_require_signature(idp: Signer, assertion_signed: bytes) -> None:
    unsigned = xs.parse_xml(response_xml())
    assert xs.verify_signed(unsigned, [idp.public_key], require_signature=False) is unsigned
    with pytest.raises(SignatureMissing):
        xs.verify_signed(unsigned, [idp.public_key])
    # a signature that is present is always checked
    broken = xs.parse_xml(assertion_signed.replace(b"Hanako", b"Taro"))
    with pytest.raises(SignatureInvalid):
        xs.verify_signed(broken.find("saml:Assertion", NS), [idp.public_key],
                         require_signature=False)


def test_trusted_keys_forms(assertion_signed: bytes, idp: Signer) -> None:
    assertion = xs.parse_xml(assertion_signed).find("saml:Assertion", NS)
    assert name_id_of(xs.verify_signed(assertion, [idp.certificate])) == VICTIM
    assert name_id_of(xs.verify_signed(assertion, (idp.public_key,))) == VICTIM
    with pytest.raises(SignatureInvalid):
        xs.verify_signed(assertion, [])
    with pytest.raises(TypeError):
        xs.verify_signed(assertion, idp.public_key)


def test_key_info_is_ignored(idp: Signer, other: Signer) -> None:
    # signed by the pinned key but carrying someone else's certificate: accepted
    root = xs.parse_xml(response_xml())
    assertion = root.find("saml:Assertion", NS)
    xs.sign_enveloped(assertion, idp.key, certificate=other.certificate)
    assert name_id_of(xs.verify_signed(assertion, [idp.public_key])) == VICTIM
    # signed by another key carrying the pinned certificate: refused
    root = xs.parse_xml(response_xml())
    assertion = root.find("saml:Assertion", NS)
    xs.sign_enveloped(assertion, other.key, certificate=idp.certificate)
    with pytest.raises(SignatureInvalid):
        xs.verify_signed(assertion, [idp.public_key])


def _mutate_signed_info(xml: bytes, path: str, attribute: str, value: str) -> etree._Element:
    root = xs.parse_xml(xml)
    assertion = root.find("saml:Assertion", NS)
    assertion.find(path, NS).set(attribute, value)
    return assertion


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("ds:Signature/ds:SignedInfo/ds:CanonicalizationMethod",
         "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"),
        ("ds:Signature/ds:SignedInfo/ds:CanonicalizationMethod",
         "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"),
        ("ds:Signature/ds:SignedInfo/ds:SignatureMethod", attacks.RSA_SHA1),
        ("ds:Signature/ds:SignedInfo/ds:SignatureMethod", attacks.HMAC_SHA256),
        ("ds:Signature/ds:SignedInfo/ds:SignatureMethod",
         "http://www.w3.org/2000/09/xmldsig#dsa-sha1"),
        ("ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestMethod", attacks.SHA1),
        ("ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform",
         "http://www.w3.org/TR/1999/REC-xpath-19991116"),
    ],
)
def test_algorithm_allow_list(assertion_signed: bytes, idp: Signer, path: str, value: str) -> None:
    assertion = _mutate_signed_info(assertion_signed, path, "Algorithm", value)
    with pytest.raises(UnsupportedAlgorithm):
        xs.verify_signed(assertion, [idp.public_key])


def test_transform_shape(assertion_signed: bytes, idp: Signer) -> None:
    root = xs.parse_xml(assertion_signed)
    transforms = root.find("saml:Assertion/ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms",
                           NS)
    transforms.append(copy.deepcopy(transforms[1]))
    with pytest.raises(UnsupportedAlgorithm, match="at most two"):
        xs.verify_signed(root.find("saml:Assertion", NS), [idp.public_key])
    transforms.remove(transforms[2])
    transforms[0].addprevious(transforms[1])  # exc-c14n before enveloped-signature
    with pytest.raises(UnsupportedAlgorithm):
        xs.verify_signed(root.find("saml:Assertion", NS), [idp.public_key])


def test_reference_must_name_the_element(assertion_signed: bytes, idp: Signer) -> None:
    root = xs.parse_xml(assertion_signed)
    assertion = root.find("saml:Assertion", NS)
    assertion.set("ID", "_other")
    with pytest.raises(SignatureInvalid, match="does not reference"):
        xs.verify_signed(assertion, [idp.public_key])
    del assertion.attrib["ID"]
    with pytest.raises(SignatureInvalid, match="no ID"):
        xs.verify_signed(assertion, [idp.public_key])


def test_two_signatures_refused(assertion_signed: bytes, idp: Signer) -> None:
    root = xs.parse_xml(assertion_signed)
    assertion = root.find("saml:Assertion", NS)
    signature = assertion.find("ds:Signature", NS)
    signature.addnext(copy.deepcopy(signature))
    with pytest.raises(SignatureInvalid, match="more than one Signature"):
        xs.verify_signed(assertion, [idp.public_key])


def test_signature_value_must_be_plain_text(assertion_signed: bytes, idp: Signer) -> None:
    root = etree.fromstring(assertion_signed)  # a tree not built by parse_xml
    value = root.find("saml:Assertion/ds:Signature/ds:SignatureValue", NS)
    etree.SubElement(value, "junk")
    with pytest.raises(ForbiddenXML, match="text only"):
        xs.verify_signed(root.find("saml:Assertion", NS), [idp.public_key])


def test_ecdsa_signature_of_wrong_length(idp_ec: Signer) -> None:
    root = xs.parse_xml(response_xml())
    assertion = root.find("saml:Assertion", NS)
    xs.sign_enveloped(assertion, idp_ec.key, algorithm=xs.ECDSA_SHA256)
    value = assertion.find("ds:Signature/ds:SignatureValue", NS)
    value.text = base64.b64encode(base64.b64decode(value.text) + b"\0").decode()
    with pytest.raises(SignatureInvalid):
        xs.verify_signed(assertion, [idp_ec.public_key])


# -- independent checkers --------------------------------------------------------------------
def run_xmlsec1(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["xmlsec1", *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=30, check=False)


def xmlsec1_verify(tmp_path: Path, xml: bytes, cert_pem: bytes, node: str) -> int:
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "message.xml").write_bytes(xml)
    return run_xmlsec1(tmp_path, "--verify", "--enabled-key-data", "x509", "--pubkey-cert-pem",
                       "cert.pem", "--id-attr:ID", node, "message.xml").returncode


@needs_xmlsec1
@pytest.mark.parametrize("signer_name", ["idp", "idp_ec"])
@pytest.mark.parametrize("with_certificate", [True, False])
def test_xmlsec1_accepts_our_signature(
    request, tmp_path: Path, signer_name: str, with_certificate: bool, other: Signer
) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    wire = sign_assertion(response_xml(), signer, certificate=with_certificate)
    assert xmlsec1_verify(tmp_path, wire, signer.cert_pem, ASSERTION_ID_ATTR) == 0
    # the checker can fail: wrong certificate, and content changed after signing
    assert xmlsec1_verify(tmp_path, wire, other.cert_pem, ASSERTION_ID_ATTR) != 0
    tampered = wire.replace(b"Yamada", b"Suzuki")
    assert xmlsec1_verify(tmp_path, tampered, signer.cert_pem, ASSERTION_ID_ATTR) != 0


@needs_xmlsec1
def test_xmlsec1_accepts_our_signed_response_and_request(
    tmp_path: Path, response_signed: bytes, request_signed: bytes, idp: Signer
) -> None:
    assert xmlsec1_verify(tmp_path, response_signed, idp.cert_pem, f"{SAMLP}:Response") == 0
    assert xmlsec1_verify(tmp_path, request_signed, idp.cert_pem, f"{SAMLP}:AuthnRequest") == 0


def python_xmlsec_verify(xml: bytes, cert_pem: bytes) -> None:
    root = etree.fromstring(xml)
    xmlsec.tree.add_ids(root, ["ID"])
    signature = xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature)
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(cert_pem, xmlsec.constants.KeyDataFormatCertPem, None)
    context.verify(signature)


@pytest.mark.parametrize("signer_name", ["idp", "idp_ec"])
def test_python_xmlsec_accepts_our_signature(request, signer_name: str, other: Signer) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    wire = sign_assertion(response_xml(), signer)
    python_xmlsec_verify(wire, signer.cert_pem)
    with pytest.raises(xmlsec.Error):
        python_xmlsec_verify(wire, other.cert_pem)
    with pytest.raises(xmlsec.Error):
        python_xmlsec_verify(wire.replace(b"Hanako", b"Jiro"), signer.cert_pem)


def test_onelogin_accepts_our_signature(response_signed: bytes, idp: Signer, other: Signer) -> None:
    assert OneLogin_Saml2_Utils.validate_sign(response_signed, cert=idp.cert_pem.decode())
    assert not OneLogin_Saml2_Utils.validate_sign(response_signed, cert=other.cert_pem.decode())


SIGNATURE_TEMPLATE = f"""
    <ds:Signature xmlns:ds="{DS}">
      <ds:SignedInfo>
        <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
        <ds:SignatureMethod Algorithm="{{algorithm}}"/>
        <ds:Reference URI="#_a1">
          <ds:Transforms>
            <ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
            <ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#">
              <ec:InclusiveNamespaces xmlns:ec="http://www.w3.org/2001/10/xml-exc-c14n#" \
PrefixList="xs"/>
            </ds:Transform>
          </ds:Transforms>
          <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
          <ds:DigestValue/>
        </ds:Reference>
      </ds:SignedInfo>
      <ds:SignatureValue/>
      <ds:KeyInfo><ds:X509Data/></ds:KeyInfo>
    </ds:Signature>"""


@needs_xmlsec1
@pytest.mark.parametrize("signer_name", ["idp", "idp_ec"])
def test_we_accept_xmlsec1_signature(request, tmp_path: Path, signer_name: str) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    template = response_xml().replace(
        b"</saml:Issuer>\n    <saml:Subject>",
        b"</saml:Issuer>" + SIGNATURE_TEMPLATE.format(algorithm=signer.algorithm).encode()
        + b"\n    <saml:Subject>",
    )
    assert template.count(b"<ds:Signature xmlns") == 1
    (tmp_path / "key.pem").write_bytes(signer.key_pem)
    (tmp_path / "cert.pem").write_bytes(signer.cert_pem)
    (tmp_path / "template.xml").write_bytes(template)
    result = run_xmlsec1(tmp_path, "--sign", "--privkey-pem", "key.pem,cert.pem", "--id-attr:ID",
                         ASSERTION_ID_ATTR, "--output", "signed.xml", "template.xml")
    assert result.returncode == 0, result.stderr
    wire = (tmp_path / "signed.xml").read_bytes()

    verified = xs.verify_signed(xs.parse_xml(wire).find("saml:Assertion", NS),
                                [signer.public_key])
    assert name_id_of(verified) == VICTIM
    # PrefixList="xs": the digested octets, hence the result, keep the xs declaration
    assert verified.nsmap.get("xs") == "http://www.w3.org/2001/XMLSchema"
    assert read_name_id(wire, [signer.public_key]) == VICTIM
    tampered = xs.parse_xml(wire.replace(b"Hanako", b"Jiro")).find("saml:Assertion", NS)
    with pytest.raises(SignatureInvalid):
        xs.verify_signed(tampered, [signer.public_key])


def test_we_accept_python_xmlsec_signature(idp: Signer) -> None:
    root = etree.fromstring(response_xml())
    assertion = root.find("saml:Assertion", NS)
    signature = xmlsec.template.create(assertion, xmlsec.constants.TransformExclC14N,
                                       xmlsec.constants.TransformRsaSha512, ns="ds")
    assertion.find("saml:Issuer", NS).addnext(signature)
    reference = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha512,
                                              uri="#_a1")
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(idp.key_pem, xmlsec.constants.KeyDataFormatPem, None)
    context.key.load_cert_from_memory(idp.cert_pem, xmlsec.constants.KeyDataFormatCertPem)
    xmlsec.tree.add_ids(root, ["ID"])
    context.sign(signature)
    wire = etree.tostring(root)
    assert name_id_of(xs.verify_signed(xs.parse_xml(wire).find("saml:Assertion", NS),
                                       [idp.public_key])) == VICTIM


INHERITED_NAMESPACES = f"""<samlp:Response xmlns:samlp="{SAMLP}" xmlns:saml="{SAML}" \
xmlns="urn:example:default" xmlns:xs="http://www.w3.org/2001/XMLSchema" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:unused="urn:unused" ID="_r9">
  <saml:Issuer>https://idp.renkei.example/saml</saml:Issuer>
  <saml:Assertion ID="_a9" Version="2.0" IssueInstant="2025-04-01T09:00:00Z">
    <saml:Issuer>https://idp.renkei.example/saml</saml:Issuer>
    <saml:Subject><saml:NameID>{VICTIM}</saml:NameID></saml:Subject>
    <saml:AttributeStatement><saml:Attribute Name="n"><saml:AttributeValue \
xsi:type="xs:string">v</saml:AttributeValue></saml:Attribute></saml:AttributeStatement>
    <Note xml:lang="ja">連携 &amp; &lt;x&gt;</Note>
  </saml:Assertion>
</samlp:Response>""".encode()


def _python_xmlsec_sign(xml: bytes, signer: Signer, prefixes: list[str] | None) -> bytes:
    root = etree.fromstring(xml)
    assertion = root.find("saml:Assertion", NS)
    signature = xmlsec.template.create(assertion, xmlsec.constants.TransformExclC14N,
                                       xmlsec.constants.TransformRsaSha256, ns="ds")
    assertion.find("saml:Issuer", NS).addnext(signature)
    reference = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha256,
                                              uri="#" + assertion.get("ID"))
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
    transform = xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
    if prefixes:
        xmlsec.template.transform_add_c14n_inclusive_namespaces(transform, prefixes)
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(signer.key_pem, xmlsec.constants.KeyDataFormatPem, None)
    xmlsec.tree.add_ids(root, ["ID"])
    context.sign(signature)
    return etree.tostring(root)


@pytest.mark.parametrize("prefixes", [None, ["xs"], ["xs", "unused", "xsi"]])
def test_inherited_namespaces_interop(idp: Signer, prefixes: list[str] | None) -> None:
    """Namespaces declared on the Response only, a default namespace and xml:lang in scope:
    both directions agree with libxmlsec1 on what the digest covers."""
    wire = _python_xmlsec_sign(INHERITED_NAMESPACES, idp, prefixes)
    assertion = xs.parse_xml(wire).find("saml:Assertion", NS)
    verified = xs.verify_signed(assertion, [idp.public_key])
    assert verified.findtext("{urn:example:default}Note") == "連携 & <x>"
    for prefix in prefixes or []:
        assert prefix in verified.nsmap  # InclusiveNamespaces made it into the signed octets
    tampered = xs.parse_xml(wire).find("saml:Assertion", NS)
    tampered.find("{urn:example:default}Note").text = "連携"
    with pytest.raises(SignatureInvalid, match="digest"):
        xs.verify_signed(tampered, [idp.public_key])

    ours = xs.parse_xml(INHERITED_NAMESPACES)
    xs.sign_enveloped(ours.find("saml:Assertion", NS), idp.key)
    python_xmlsec_verify(etree.tostring(ours), idp.cert_pem)


def test_inclusive_default_namespace_refused_not_misdigested(idp: Signer) -> None:
    """lxml cannot render "#default" in a PrefixList; with a default namespace in scope
    that would change the digest, so such a signature is refused, never misread."""
    wire = _python_xmlsec_sign(INHERITED_NAMESPACES, idp, ["#default", "xs"])
    python_xmlsec_verify(wire, idp.cert_pem)  # valid for libxmlsec1
    with pytest.raises(UnsupportedAlgorithm, match="#default"):
        xs.verify_signed(xs.parse_xml(wire).find("saml:Assertion", NS), [idp.public_key])
    # without a default namespace in scope "#default" changes nothing and is accepted
    plain = INHERITED_NAMESPACES.replace(b' xmlns="urn:example:default"', b"").replace(
        b"<Note", b'<Note xmlns="urn:example:default"')
    wire = _python_xmlsec_sign(plain, idp, ["#default", "xs"])
    verified = xs.verify_signed(xs.parse_xml(wire).find("saml:Assertion", NS), [idp.public_key])
    assert name_id_of(verified) == VICTIM


def test_we_accept_onelogin_signature(idp: Signer, other: Signer) -> None:
    wire = OneLogin_Saml2_Utils.add_sign(authn_request_xml(), idp.key_pem.decode(),
                                         idp.cert_pem.decode())
    verified = xs.verify_signed(xs.parse_xml(wire), [idp.public_key])
    assert verified.get("AssertionConsumerServiceURL") == "https://city.example/acs"
    with pytest.raises(SignatureInvalid):
        xs.verify_signed(xs.parse_xml(wire), [other.public_key])


# -- the attacks -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    base: str  # fixture holding the validly signed message
    make: Callable[[bytes, Signer], bytes]
    expected: type[XMLSecurityError]
    match: str
    target: str = "assertion"  # what a position-based reader would take: "assertion" / "root"


def _xsw(name: str, new_id: bool) -> Callable[[bytes, Signer], bytes]:
    return lambda xml, _signer: attacks.XSW[name](xml, new_id=new_id)


DIGEST_OR_STRUCTURE = "Signature must|digest|reference|duplicate"
CASES = [
    Case("xsw1-new-id", "response_signed", _xsw("xsw1", True), SignatureInvalid,
         "Signature must hold", "root"),
    Case("xsw1-same-id", "response_signed", _xsw("xsw1", False), SignatureInvalid,
         "Signature must hold|duplicate", "root"),
    Case("xsw2-new-id", "response_signed", _xsw("xsw2", True), SignatureInvalid,
         "does not reference", "root"),
    Case("xsw2-same-id", "response_signed", _xsw("xsw2", False), SignatureInvalid,
         "duplicate ID", "root"),
    Case("xsw1-request", "request_signed", _xsw("xsw1", True), SignatureInvalid,
         "Signature must hold", "root"),
    Case("xsw2-request", "request_signed", _xsw("xsw2", False), SignatureInvalid,
         "duplicate ID", "root"),
    Case("xsw3-new-id", "assertion_signed", _xsw("xsw3", True), SignatureMissing, "signed"),
    Case("xsw3-same-id", "assertion_signed", _xsw("xsw3", False), SignatureMissing, "signed"),
    Case("xsw4-new-id", "assertion_signed", _xsw("xsw4", True), SignatureMissing, "signed"),
    Case("xsw4-same-id", "assertion_signed", _xsw("xsw4", False), SignatureMissing, "signed"),
    Case("xsw5-same-id", "assertion_signed", _xsw("xsw5", False), SignatureInvalid,
         "duplicate ID"),
    Case("xsw5-new-id", "assertion_signed", _xsw("xsw5", True), SignatureInvalid,
         "does not reference"),
    Case("xsw6-same-id", "assertion_signed", _xsw("xsw6", False), SignatureInvalid,
         "Signature must hold"),
    Case("xsw6-new-id", "assertion_signed", _xsw("xsw6", True), SignatureInvalid,
         "Signature must hold"),
    Case("xsw7-new-id", "assertion_signed", _xsw("xsw7", True), SignatureMissing, "signed"),
    Case("xsw7-same-id", "assertion_signed", _xsw("xsw7", False), SignatureMissing, "signed"),
    Case("xsw8-same-id", "assertion_signed", _xsw("xsw8", False), SignatureInvalid,
         "Signature must hold"),
    Case("xsw8-new-id", "assertion_signed", _xsw("xsw8", True), SignatureInvalid,
         "Signature must hold"),
    Case("strip-assertion", "assertion_signed", lambda x, s: attacks.strip_signatures(x),
         SignatureMissing, "signed"),
    Case("strip-response", "response_signed", lambda x, s: attacks.strip_signatures(x),
         SignatureMissing, "signed", "root"),
    Case("key-injection", "assertion_signed", lambda x, s: attacks.key_injection(x),
         SignatureInvalid, "does not verify"),
    Case("key-injection-response", "response_signed", lambda x, s: attacks.key_injection(x),
         SignatureInvalid, "does not verify", "root"),
    Case("hmac-public-key", "assertion_signed",
         lambda x, s: attacks.hmac_with_public_key(x, s.public_key), UnsupportedAlgorithm,
         "hmac"),
    Case("hmac-sha1-public-key", "request_signed",
         lambda x, s: attacks.hmac_with_public_key(x, s.public_key, algorithm=attacks.HMAC_SHA1),
         UnsupportedAlgorithm, "hmac", "root"),
    Case("sha1-signature", "assertion_signed", lambda x, s: attacks.sha1_signature(x, key=s.key),
         UnsupportedAlgorithm, "rsa-sha1"),
    Case("sha1-digest", "assertion_signed", lambda x, s: attacks.sha1_digest(x, key=s.key),
         UnsupportedAlgorithm, "sha1"),
    Case("second-digest-value", "assertion_signed",
         lambda x, s: attacks.second_digest_value(x), SignatureInvalid, "digest"),
    Case("second-digest-value-response", "response_signed",
         lambda x, s: attacks.second_digest_value(x), SignatureInvalid, "digest", "root"),
    Case("second-signed-info-before", "assertion_signed",
         lambda x, s: attacks.second_signed_info(x), SignatureInvalid, "exactly one SignedInfo"),
    Case("second-signed-info-after", "assertion_signed",
         lambda x, s: attacks.second_signed_info(x, before=False), SignatureInvalid,
         "exactly one SignedInfo"),
    Case("xslt-transform", "assertion_signed", lambda x, s: attacks.xslt_transform(x, key=s.key),
         UnsupportedAlgorithm, "Transform"),
    Case("xpath-transform", "request_signed", lambda x, s: attacks.xpath_transform(x, key=s.key),
         UnsupportedAlgorithm, "Transform", "root"),
    Case("external-reference", "assertion_signed",
         lambda x, s: attacks.external_reference(x, key=s.key), SignatureInvalid,
         "does not reference"),
    Case("external-http-reference", "response_signed",
         lambda x, s: attacks.external_reference(x, uri="http://attacker.example/a", key=s.key),
         SignatureInvalid, "does not reference", "root"),
    Case("duplicate-ID", "assertion_signed", lambda x, s: attacks.duplicate_id(x),
         SignatureInvalid, "duplicate ID"),
    Case("duplicate-Id", "assertion_signed", lambda x, s: attacks.duplicate_id(x, attribute="Id"),
         SignatureInvalid, "duplicate ID"),
    Case("duplicate-id", "assertion_signed", lambda x, s: attacks.duplicate_id(x, attribute="id"),
         SignatureInvalid, "duplicate ID"),
    Case("duplicate-xml-id", "assertion_signed",
         lambda x, s: attacks.duplicate_id(x, attribute="{http://www.w3.org/XML/1998/namespace}id"),
         SignatureInvalid, "duplicate ID"),
]


def _target(root: etree._Element, which: str) -> etree._Element:
    return root if which == "root" else root.find("saml:Assertion", NS)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_attack_refused(request, case: Case, idp: Signer) -> None:
    signed: bytes = request.getfixturevalue(case.base)
    attacked = case.make(signed, idp)
    assert attacked != signed
    root = xs.parse_xml(attacked)
    with pytest.raises(case.expected, match=re.compile(case.match, re.IGNORECASE)):
        xs.verify_signed(_target(root, case.target), [idp.public_key])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_attack_never_yields_forged_content(request, case: Case, idp: Signer) -> None:
    """Whatever element a caller picks, verification never hands back forged content."""
    attacked = case.make(request.getfixturevalue(case.base), idp)
    assert attacks.EVIL_MARKER.encode() in attacked
    root = xs.parse_xml(attacked)
    candidates = [node for node in root.iter(etree.Element) if node.get("ID")]
    assert candidates
    for candidate in candidates:
        try:
            verified = xs.verify_signed(candidate, [idp.public_key])
        except XMLSecurityError:
            continue
        assert attacks.EVIL_MARKER.encode() not in etree.tostring(verified)
    with pytest.raises((XMLSecurityError, ValueError)):
        read_name_id(attacked, [idp.public_key])


def test_attack_signer_is_sound(assertion_signed: bytes, idp: Signer, tmp_path: Path) -> None:
    """Control: the attack module's own signer, used with the pinned key and allowed
    algorithms, is accepted, so the refusals above come from the rules, not the signer."""
    root = xs.parse_xml(assertion_signed)
    assertion = root.find("saml:Assertion", NS)
    attacks.forge_identity(assertion)
    attacks.resign(assertion, idp.key, certificate=idp.certificate)
    wire = etree.tostring(root)
    assert read_name_id(wire, [idp.public_key]) == attacks.EVIL_NAME_ID
    python_xmlsec_verify(wire, idp.cert_pem)


def test_hmac_attack_would_verify_if_allowed(assertion_signed: bytes, idp: Signer) -> None:
    """The HMAC payload is a genuine HMAC under the public key: only the allow-list stops it."""
    attacked = attacks.hmac_with_public_key(assertion_signed, idp.public_key)
    signature = xs.parse_xml(attacked).find("saml:Assertion/ds:Signature", NS)
    octets = xs.c14n(signature.find("ds:SignedInfo", NS))
    expected = hmac.new(attacks.public_key_pem(idp.public_key), octets,
                               hashlib.sha256).digest()
    assert base64.b64decode(signature.findtext("ds:SignatureValue", namespaces=NS)) == expected


@pytest.mark.parametrize(
    "make",
    [
        lambda x: attacks.comment_in_name_id(x),
        lambda x: attacks.comment_in_digest_value(x),
    ],
    ids=["comment-in-nameid", "comment-in-digestvalue"],
)
@pytest.mark.parametrize("base", ["assertion_signed", "response_signed"])
def test_comment_attacks_refused(request, make, base: str, idp: Signer) -> None:
    attacked = make(request.getfixturevalue(base))
    assert b"<!--" in attacked
    with pytest.raises(ForbiddenXML, match="comments"):
        xs.parse_xml(attacked)
    # a tree built by some other parser is refused by verify_signed too
    lax = etree.fromstring(attacked)
    for node in lax.iter(etree.Element):
        if node.find("ds:Signature", NS) is not None:
            with pytest.raises(ForbiddenXML, match="comments"):
                xs.verify_signed(node, [idp.public_key])


def test_comment_in_name_id_keeps_a_valid_signature(assertion_signed: bytes, idp: Signer) -> None:
    """Why the comment attack works elsewhere: c14n hides it, so the signature still verifies."""
    attacked = attacks.comment_in_name_id(assertion_signed)
    assert b"victim@city<!---->.example" in attacked
    lax = etree.fromstring(attacked)
    python_xmlsec_verify(attacked, idp.cert_pem)
    assert lax.find(".//saml:NameID", NS).text == "victim@city"  # the naive first text node


@pytest.mark.parametrize(
    "make", [attacks.billion_laughs, attacks.external_entity, attacks.external_dtd],
    ids=["billion-laughs", "external-entity", "external-dtd"],
)
@pytest.mark.parametrize("base", ["assertion_signed", "request_signed"])
def test_dtd_attacks_refused(request, make, base: str, idp: Signer) -> None:
    signed = request.getfixturevalue(base)
    with pytest.raises(ForbiddenXML, match="DOCTYPE"):
        xs.parse_xml(make(signed))
    # UTF-16 hides "<!DOCTYPE" from a byte search: refused for its encoding before parsing
    with pytest.raises(MalformedXML, match="UTF-8"):
        xs.parse_xml(make(signed, encoding="utf-16"))
    if make is attacks.billion_laughs:
        return  # libxml2 itself refuses to build that tree (amplification limit)
    # a tree that some other parser built with a DTD is refused by verify_signed
    lax = etree.fromstring(make(signed), etree.XMLParser(resolve_entities=False, load_dtd=False,
                                                         no_network=True))
    target = lax if base == "request_signed" else lax.find("saml:Assertion", NS)
    with pytest.raises(ForbiddenXML, match="DOCTYPE"):
        xs.verify_signed(target, [idp.public_key])


def test_external_entity_never_read(assertion_signed: bytes, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    for encoding in ("utf-8", "utf-16"):
        payload = attacks.external_entity(assertion_signed, system_id=secret.as_uri(),
                                          encoding=encoding)
        with pytest.raises(XMLSecurityError) as raised:
            xs.parse_xml(payload)
        assert "TOPSECRET" not in str(raised.value)


def test_hardened_parser_itself_never_loads_external_entities(tmp_path: Path) -> None:
    """Second line of defence behind the encoding and DOCTYPE checks: libxml2 fetches
    external subsets even with load_dtd off, so the module's parser refuses every load."""
    secret = tmp_path / "secret.dtd"
    secret.write_text("TOPSECRET")
    document = f'<!DOCTYPE a SYSTEM "{secret.as_uri()}"><a/>'.encode()
    with pytest.raises(ForbiddenXML, match="external"):
        etree.fromstring(document, xs._parser())


# -- parse_xml -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "document",
    [
        b'<!DOCTYPE a><a/>',
        b'<!doctype a><a/>',
        b'<?xml version="1.0"?>\n<!DocType a [<!ENTITY x "y">]><a>&x;</a>',
        b'<!DOCTYPE a SYSTEM "http://attacker.example/a.dtd"><a/>',
    ],
)
def test_parse_refuses_doctype(document: bytes) -> None:
    with pytest.raises(ForbiddenXML):
        xs.parse_xml(document)


@pytest.mark.parametrize(
    "document",
    [
        '<?xml version="1.0" encoding="UTF-16"?><a/>'.encode("utf-16"),
        '<?xml version="1.0" encoding="UTF-32"?><a/>'.encode("utf-32"),
        b'<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE a+AD4-<a/>',
        b'<?xml version="1.0" encoding="ISO-2022-JP"?><a/>',
        "<a/>".encode("cp500"),  # EBCDIC
    ],
)
def test_parse_refuses_other_encodings(document: bytes) -> None:
    with pytest.raises(MalformedXML, match="UTF-8"):
        xs.parse_xml(document)


def test_parse_accepts_utf8_forms() -> None:
    for document in (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<a>\xe9\x80\xa3\xe6\x90\xba</a>',
        b"\xef\xbb\xbf<a>x</a>",
        "<a>連携</a>",
    ):
        assert xs.parse_xml(document).tag == "a"
    assert xs.parse_xml("<a>連携</a>").text == "連携"


def test_parse_size_checked_before_parsing() -> None:
    with pytest.raises(MessageTooLarge):
        xs.parse_xml(b"\0" * 262_145)  # garbage: refused for its size, never parsed
    with pytest.raises(MessageTooLarge):
        xs.parse_xml(b"<a>" + b"x" * 100 + b"</a>", max_bytes=64)
    assert xs.parse_xml(b"<a>" + b"x" * 100 + b"</a>", max_bytes=107).tag == "a"
    with pytest.raises(MessageTooLarge):
        xs.parse_xml("<a>" + "連" * 40 + "</a>", max_bytes=100)  # counted in UTF-8 bytes


@pytest.mark.parametrize(
    "document",
    [
        b'<a><?php evil() ?></a>',
        b'<?xml-stylesheet href="http://attacker.example/x.xsl"?><a/>',
        b"<a/><?after ?>",
        f'<saml:Assertion xmlns:saml="{SAML}"><saml:NameID>v<?pi ?>x</saml:NameID>'
        "</saml:Assertion>".encode(),
    ],
)
def test_parse_refuses_processing_instructions(document: bytes) -> None:
    with pytest.raises(ForbiddenXML, match="processing instructions"):
        xs.parse_xml(document)


@pytest.mark.parametrize(
    ("field", "namespace"),
    [
        ("saml:NameID", SAML),
        ("saml:Issuer", SAML),
        ("saml:AttributeValue", SAML),
        ("ds:DigestValue", DS),
        ("ds:SignatureValue", DS),
    ],
)
def test_parse_refuses_comments_in_identity_fields(field: str, namespace: str) -> None:
    prefix = field.split(":")[0]
    document = (f'<r xmlns:{prefix}="{namespace}"><{field}>victim<!---->.evil</{field}>'
                "<!-- elsewhere is fine --></r>")
    with pytest.raises(ForbiddenXML, match="comments"):
        xs.parse_xml(document)


def test_parse_tolerates_comments_elsewhere_and_refuses_markup_in_name_id() -> None:
    root = xs.parse_xml(f'<!-- top --><saml:Assertion xmlns:saml="{SAML}"><!-- c -->'
                        "<saml:Subject><!-- c --><saml:NameID>v</saml:NameID></saml:Subject>"
                        "<saml:AttributeValue><x>structured</x></saml:AttributeValue>"
                        "</saml:Assertion>")
    assert root.findtext(".//saml:NameID", namespaces=NS) == "v"
    with pytest.raises(ForbiddenXML, match="text only"):
        xs.parse_xml(f'<saml:NameID xmlns:saml="{SAML}">victim<b/>.evil</saml:NameID>')


@pytest.mark.parametrize(
    "document",
    [b"", b"<a>", b"<a></b>", b"<a>&undefined;</a>", b"not xml", b"<a/><b/>",
     b"<a>" * 5000 + b"</a>" * 5000],
)
def test_parse_refuses_malformed(document: bytes) -> None:
    with pytest.raises(MalformedXML):
        xs.parse_xml(document)


def test_c14n_and_new_id() -> None:
    root = etree.fromstring(b'<a xmlns:u="urn:unused" xmlns:p="urn:p"><p:b  z="1" a="2"><!--x-->'
                            b"<c/></p:b></a>")
    assert xs.c14n(root[0]) == b'<p:b xmlns:p="urn:p" a="2" z="1"><c></c></p:b>'
    ids = {xs.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"_[0-9a-f]{40}", value) for value in ids)


# -- HTTP-Redirect binding -------------------------------------------------------------------
def test_deflate_round_trip() -> None:
    xml = authn_request_xml()
    encoded = xs.deflate_redirect(xml)
    assert "%" not in encoded
    assert xs.inflate_redirect(encoded) == xml
    assert zlib.decompress(base64.b64decode(encoded), -15) == xml  # raw DEFLATE, no header


@pytest.fixture(scope="module")
def bomb() -> str:
    return attacks.deflate_bomb(inflated_size=128 * 1024 * 1024)


def test_deflate_bomb_cut_off(bomb: str) -> None:
    assert len(bomb) < 262_144  # small enough to pass the encoded-length limit
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(MessageTooLarge, match="inflated"):
            xs.inflate_redirect(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2.0
    assert peak < 4 * 1024 * 1024  # not the 128 MiB the bomb expands to


def test_inflate_limits_and_errors(bomb: str) -> None:
    with pytest.raises(MessageTooLarge, match="encoded"):
        xs.inflate_redirect(bomb, max_bytes=4096)
    xml = authn_request_xml()
    with pytest.raises(MessageTooLarge):
        xs.inflate_redirect(xs.deflate_redirect(xml), max_bytes=len(xml) - 1)
    assert xs.inflate_redirect(xs.deflate_redirect(xml), max_bytes=len(xml)) == xml
    raw = base64.b64decode(xs.deflate_redirect(xml))
    with pytest.raises(MalformedXML, match="truncated"):
        xs.inflate_redirect(base64.b64encode(raw[:-8]).decode())
    with pytest.raises(MalformedXML, match="after"):
        xs.inflate_redirect(base64.b64encode(raw + b"junk").decode())
    with pytest.raises(MalformedXML, match="base64"):
        xs.inflate_redirect("not*base64!")
    with pytest.raises(MalformedXML):
        xs.inflate_redirect(base64.b64encode(b"\xff" * 40).decode())


def _query_pairs(query: str) -> list[str]:
    return query.split("&")


@pytest.mark.parametrize("signer_name", ["idp", "idp_ec"])
@pytest.mark.parametrize("relay_state", [None, "https://city.example/page?x=1&y=連携"])
@pytest.mark.parametrize("message", ["SAMLRequest", "SAMLResponse"])
def test_redirect_round_trip(request, signer_name: str, relay_state, message: str) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    encoded = xs.deflate_redirect(authn_request_xml())
    params = [(message, encoded)] + ([("RelayState", relay_state)] if relay_state else [])
    query = xs.sign_redirect_query(params, signer.key, algorithm=signer.algorithm)
    names = [pair.split("=")[0] for pair in _query_pairs(query)]
    assert names == [message] + (["RelayState"] if relay_state else []) + ["SigAlg", "Signature"]
    assert f"SigAlg={quote_plus(signer.algorithm)}" in query
    result = xs.verify_redirect_query(query, [signer.public_key])
    assert result[message] == encoded
    assert result.get("RelayState") == relay_state
    assert result["SigAlg"] == signer.algorithm
    assert xs.inflate_redirect(result[message]) == authn_request_xml()


@pytest.fixture(scope="module")
def signed_query(idp: Signer) -> str:
    params = [("SAMLRequest", xs.deflate_redirect(authn_request_xml())),
              ("RelayState", "token-123")]
    return xs.sign_redirect_query(params, idp.key)


def test_redirect_tampering_refused(signed_query: str, idp: Signer, other: Signer) -> None:
    assert xs.verify_redirect_query(signed_query, [idp.public_key])["RelayState"] == "token-123"
    with pytest.raises(SignatureInvalid):
        xs.verify_redirect_query(signed_query.replace("token-123", "token-124"), [idp.public_key])
    without_relay = "&".join(p for p in _query_pairs(signed_query)
                             if not p.startswith("RelayState="))
    with pytest.raises(SignatureInvalid):
        xs.verify_redirect_query(without_relay, [idp.public_key])
    with pytest.raises(SignatureInvalid, match="does not verify"):
        xs.verify_redirect_query(signed_query, [other.public_key])
    request_value = _query_pairs(signed_query)[0]
    forged = signed_query.replace(request_value, "SAMLRequest="
                                  + quote_plus(xs.deflate_redirect(b"<samlp:AuthnRequest/>")))
    with pytest.raises(SignatureInvalid):
        xs.verify_redirect_query(forged, [idp.public_key])


def test_redirect_signed_in_wrong_order_refused(idp: Signer) -> None:
    """§3.4.4.1 fixes the order of the signed octets; a signature over another order fails."""
    request_part = "SAMLRequest=" + quote_plus(xs.deflate_redirect(authn_request_xml()))
    relay_part = "RelayState=abc"
    alg_part = "SigAlg=" + quote_plus(xs.RSA_SHA256)
    reordered = f"{relay_part}&{request_part}&{alg_part}"
    signature = idp.key.sign(reordered.encode(), padding.PKCS1v15(), hashes.SHA256())
    query = reordered + "&Signature=" + quote_plus(base64.b64encode(signature).decode())
    with pytest.raises(SignatureInvalid, match="does not verify"):
        xs.verify_redirect_query(query, [idp.public_key])


def test_redirect_url_order_does_not_matter(signed_query: str, idp: Signer) -> None:
    """The verifier rebuilds the spec order from the raw components, as §3.4.4.1 requires."""
    shuffled = "&".join(reversed(_query_pairs(signed_query)))
    assert xs.verify_redirect_query(shuffled, [idp.public_key])["RelayState"] == "token-123"
    assert xs.verify_redirect_query("?" + signed_query, [idp.public_key])


def test_redirect_uses_raw_encoding(idp: Signer) -> None:
    """Signed octets are the values as received; a sender's own (lower-case) percent
    encoding must verify, and re-encoding it the canonical way must not."""
    relay = "https://city.example/a b?c=d"
    lower = quote(relay, safe="").lower().replace("%20", "+")
    parts = ["SAMLRequest=" + quote_plus(xs.deflate_redirect(authn_request_xml())),
             "RelayState=" + lower, "SigAlg=" + quote_plus(xs.RSA_SHA256)]
    signed = "&".join(parts)
    signature = idp.key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    query = signed + "&Signature=" + quote_plus(base64.b64encode(signature).decode())
    assert xs.verify_redirect_query(query, [idp.public_key])["RelayState"] == relay
    recoded = query.replace("RelayState=" + lower, "RelayState=" + quote_plus(relay))
    assert recoded != query
    with pytest.raises(SignatureInvalid):
        xs.verify_redirect_query(recoded, [idp.public_key])


def test_redirect_sigalg_downgrade_refused(signed_query: str, idp: Signer) -> None:
    swapped = signed_query.replace(quote_plus(xs.RSA_SHA256), quote_plus(attacks.RSA_SHA1))
    assert swapped != signed_query
    with pytest.raises(UnsupportedAlgorithm):
        xs.verify_redirect_query(swapped, [idp.public_key])
    # even a genuine RSA-SHA1 signature by the pinned key is refused
    octets = ("SAMLRequest=" + quote_plus(xs.deflate_redirect(authn_request_xml()))
              + "&SigAlg=" + quote_plus(attacks.RSA_SHA1))
    signature = idp.key.sign(octets.encode(), padding.PKCS1v15(), hashes.SHA1())
    query = octets + "&Signature=" + quote_plus(base64.b64encode(signature).decode())
    with pytest.raises(UnsupportedAlgorithm):
        xs.verify_redirect_query(query, [idp.public_key])
    hmac_alg = signed_query.replace(quote_plus(xs.RSA_SHA256), quote_plus(attacks.HMAC_SHA256))
    with pytest.raises(UnsupportedAlgorithm):
        xs.verify_redirect_query(hmac_alg, [idp.public_key])


def test_redirect_shape_refused(signed_query: str, idp: Signer) -> None:
    pairs = _query_pairs(signed_query)
    with pytest.raises(SignatureMissing):
        xs.verify_redirect_query("&".join(p for p in pairs if not p.startswith("Signature=")),
                                 [idp.public_key])
    with pytest.raises(SignatureInvalid, match="SigAlg"):
        xs.verify_redirect_query("&".join(p for p in pairs if not p.startswith("SigAlg=")),
                                 [idp.public_key])
    with pytest.raises(SignatureInvalid, match="more than once"):
        xs.verify_redirect_query(signed_query + "&RelayState=other", [idp.public_key])
    with pytest.raises(SignatureInvalid, match="more than once"):
        xs.verify_redirect_query(signed_query + "&SAMLRequest=" + pairs[0].split("=", 1)[1],
                                 [idp.public_key])
    with pytest.raises(SignatureInvalid, match="more than once"):
        xs.verify_redirect_query(signed_query + "&Sig%41lg=x", [idp.public_key])
    with pytest.raises(SignatureInvalid, match="exactly one"):
        xs.verify_redirect_query(signed_query + "&SAMLResponse=x", [idp.public_key])
    result = xs.verify_redirect_query(signed_query + "&unsigned=evil", [idp.public_key])
    assert "unsigned" not in result and "Signature" not in result
    with pytest.raises(ValueError):
        xs.sign_redirect_query([("RelayState", "x"), ("SAMLRequest", "y")], idp.key)
    with pytest.raises(ValueError):
        xs.sign_redirect_query([("SAMLRequest", "y"), ("Other", "x")], idp.key)
