"""ECDSA P-256 hub keys: chosen at `renkei init --key-type ec-p256` (or a rotation), published in
the hub metadata, and used for every IdP and discovery signature, checked by independent
implementations: the xmlsec1 binary, OneLogin's python3-saml logging in over HTTP, and
`renkei_provider` accepting a provider token from a real discovery answer.

The EC hub is a real `renkei serve` process with a home of its own (as in test_keys.py), so its
keys never touch the shared RSA test hub.
"""
from __future__ import annotations

import base64
import os
import re
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree

from kernel.db import dispose_engines
from kernel.jose import sign_client_assertion
from kernel.keys import EC_P256, RSA_2048, KeyProblem, KeyStore
from kernel.settings import reset_settings
from kernel.xml import ECDSA_SHA256, RSA_SHA256, SignatureInvalid, parse_xml, verify_signed
from renkei_provider import TokenSignatureInvalid, TokenVerifier, hub_signing_certificates
from tests.conftest import agency_entity_id, listening_socket, port_of, serve_in_thread
from tests.saml_sp import NS, Browser, TestSP, post_form_fields, response_from_page
from tests.test_keys import ServedHub, certificate, der, new_env, ok, published

DS = "http://www.w3.org/2000/09/xmldsig#"
DISCOVERY_EPR = "urn:liberty:disco:2006-08:DiscoveryEPR"
SEC_NS = "urn:liberty:security:2006-08"
PROTOCOL, ASSERTION = "urn:oasis:names:tc:SAML:2.0:protocol", "urn:oasis:names:tc:SAML:2.0:assertion"
RUN = uuid.uuid4().hex[:8]
SERVICE, INFO, TASK = f"urn:renkei:service:ec-{RUN}", "JUMINHYO", f"TASK-EC-{RUN}"
MASTER_ID, LOCAL_ID = f"8{int(RUN, 16) % 10**11:011d}", f"EC-{RUN}-1"
USER, PASSWORD = "ec-alice", "correct horse battery"


@contextmanager
def under(env: dict[str, str]):
    """Run in-process service code against the EC hub's home and database, then restore."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings()
    dispose_engines()
    try:
        yield
    finally:
        dispose_engines()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()


class EcFederation:
    """An EC hub with a requester, a provider offering SERVICE, a whitelist entry and consent."""

    def __init__(self, tmp: Path):
        sock = listening_socket()
        self.env = new_env(tmp, port=port_of(sock))
        self.init_output = ok(self.env, "init", "--key-type", "ec-p256")
        ok(self.env, "person", "add", "--username", USER, "--password-stdin", "--master-id", MASTER_ID,
           stdin=PASSWORD + "\n")
        self.requester = TestSP(f"https://ec-req-{RUN}.example.jp/sp", f"https://ec-req-{RUN}.example.jp")
        self.provider = TestSP(f"https://ec-prov-{RUN}.example.jp/sp", f"https://ec-prov-{RUN}.example.jp")
        self.endpoint = f"{self.provider.base_url}/provide/resident-record"
        for sp, encryption in ((self.requester, False), (self.provider, True)):
            md = tmp / f"{uuid.uuid4().hex}.xml"
            md.write_bytes(_with_encryption_key(sp.metadata()) if encryption else sp.metadata())
            ok(self.env, "agency", "add", "--metadata", str(md), "--class", "municipality")
        links = tmp / "links.csv"
        links.write_text(f"local_id,master_id\n{LOCAL_ID},{MASTER_ID}\n", encoding="utf-8")
        ok(self.env, "link", "import", "--agency", self.provider.entity_id, str(links))
        with under(self.env):
            self._location_and_consent()
        self.hub = ServedHub(self.env, sock)
        self.base_url = self.hub.base_url

    def _location_and_consent(self) -> None:
        from consent import service as consent
        from consent.models import PolicyRuleIn, WhitelistEntryIn
        from discovery import service as location
        from idp import accounts
        from kernel.db import session_scope

        with session_scope() as db:
            location.add_service_type(db_session=db, urn=SERVICE, name="住民票 (ec test)", info_types=[INFO])
            location.add_offering(db_session=db, provider=self.provider.entity_id, service_type=SERVICE,
                                  endpoint=self.endpoint)
            consent.create_whitelist_entry(db_session=db, entry=WhitelistEntryIn(
                requester=self.requester.entity_id, provider=self.provider.entity_id, task_code=TASK,
                task_name="転入届 (ec test)", info_type_code=INFO, info_type_name="住民票情報",
                legal_basis="番号法 別表第二 (test)", consent="required"))
            person_key = accounts.find(db_session=db, username=USER).person_key
            consent.set_policy(collection_method="test-setup", db_session=db, person_key=person_key,
                               principal_id=USER, rules=[PolicyRuleIn(effect="allow", requester=self.requester.entity_id)])

    def sso(self, sp: TestSP, browser: Browser | None = None) -> etree._Element:
        browser = browser or Browser(self.base_url)
        _, root = sp.authn_request(f"{self.base_url}/idp/sso")
        first = browser.start(sp, etree.tostring(root))
        page = first if first.status_code == 200 else browser.login(first, USER, PASSWORD)
        assert page.status_code == 200, page.text[:800]
        return response_from_page(page.text)[1]


def _with_encryption_key(metadata: bytes) -> bytes:
    import copy

    root = etree.fromstring(metadata)
    signing = root.find("md:SPSSODescriptor/md:KeyDescriptor", NS)
    encryption = copy.deepcopy(signing)
    encryption.set("use", "encryption")
    signing.addnext(encryption)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    federation = EcFederation(tmp_path_factory.mktemp("ec-hub"))
    yield federation
    federation.hub.stop()


def _signature_method(element: etree._Element) -> str:
    return element.find(f"{{{DS}}}Signature/{{{DS}}}SignedInfo/{{{DS}}}SignatureMethod").get("Algorithm")


def _xmlsec1(doc: Path, cert: Path, node: str) -> subprocess.CompletedProcess:
    # --enabled-key-data x509: without it xmlsec1 would trust a key carried in the message
    return subprocess.run(["xmlsec1", "--verify", "--enabled-key-data", "x509", "--pubkey-cert-pem", str(cert),
                           "--id-attr:ID", node, "--node-name", node, str(doc)],
                          capture_output=True, text=True, check=False, timeout=60)


def test_init_makes_ec_idp_and_discovery_keys_and_metadata_publishes_them(fed):
    home = fed.env["RENKEI_HOME"]
    store = KeyStore(Path(home, "keys"))
    for role in ("idp", "discovery"):
        key = store.current_signing_key(role)
        assert key.key_type == EC_P256 and isinstance(key.private_key.curve, ec.SECP256R1)
        assert key.xml_algorithm == ECDSA_SHA256 and key.jws_algorithm == "ES256"
        assert published(fed.hub, role) == [der(certificate(home, role, 1))]
        assert f"{role} signs with ec-p256 key v1" in fed.init_output
    # consent receipts (RS256) and the portal's SP key (it decrypts too) stay RSA
    for role in ("consent", "portal"):
        assert store.current_signing_key(role).key_type == RSA_2048
    metadata = httpx.get(f"{fed.base_url}/idp/metadata", timeout=10).content
    _, certs = hub_signing_certificates(metadata, role="idp")
    assert isinstance(certs[0].public_key(), ec.EllipticCurvePublicKey)


def test_xmlsec1_verifies_the_ecdsa_signed_response_and_assertion(fed, tmp_path):
    response = fed.sso(fed.requester)
    assertion = response.find("saml:Assertion", NS)
    for element in (response, assertion):
        assert _signature_method(element) == ECDSA_SHA256
        value = base64.b64decode(element.findtext(f"{{{DS}}}Signature/{{{DS}}}SignatureValue"))
        assert len(value) == 64  # raw r || s of P-256 (RFC 4051 §3.3.1), not a DER SEQUENCE
    doc = tmp_path / "response.xml"
    doc.write_bytes(etree.tostring(response))
    cert = tmp_path / "idp.pem"
    idp_cert = certificate(fed.env["RENKEI_HOME"], "idp", 1)
    cert.write_bytes(idp_cert.public_bytes(serialization.Encoding.PEM))
    for node in (f"{PROTOCOL}:Response", f"{ASSERTION}:Assertion"):
        run = _xmlsec1(doc, cert, node)
        assert run.returncode == 0 and "OK" in run.stderr, run.stderr
    # and the negative: one flipped bit of r and xmlsec1 refuses it
    sig_value = response.find(f"{{{DS}}}Signature/{{{DS}}}SignatureValue")
    raw = bytearray(base64.b64decode(sig_value.text))
    raw[5] ^= 1
    sig_value.text = base64.b64encode(bytes(raw)).decode()
    doc.write_bytes(etree.tostring(response))
    assert _xmlsec1(doc, cert, f"{PROTOCOL}:Response").returncode != 0
    # our own verifier: the EC key verifies, the pinned RSA keys of another hub do not
    fresh = fed.sso(fed.requester)
    verify_signed(parse_xml(etree.tostring(fresh)), [idp_cert])
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(SignatureInvalid):
        verify_signed(parse_xml(etree.tostring(fresh)), [other])


def test_python3_saml_logs_in_against_the_ec_idp_over_http(fed, tmp_path):
    from agency_demo import AgencyConfig, create_agency_app, sp_metadata

    sock = listening_socket()
    port = port_of(sock)
    config = AgencyConfig(entity_id=agency_entity_id(port), name="EC 市役所",
                          base_url=f"http://127.0.0.1:{port}", hub_base_url=fed.base_url, key_dir=tmp_path / "agency")
    md = tmp_path / "agency.xml"
    md.write_text(sp_metadata(config))
    ok(fed.env, "agency", "add", "--metadata", str(md), "--class", "municipality")
    server, thread = serve_in_thread(create_agency_app(config), sock)
    try:
        with httpx.Client(timeout=30) as client:
            r = client.get(f"{config.base_url}/login")
            assert r.status_code in (302, 303), r.text[:300]
            r = client.get(r.headers["location"])
            page = client.get(r.headers["location"])
            pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
            r = client.post(page.url, data={"pending": pending, "username": USER, "password": PASSWORD})
            assert r.status_code == 200, r.text[:500]
            action, fields = post_form_fields(r.text)
            assert action == f"{config.base_url}/acs"
            acs = client.post(action, data=fields)
            if acs.status_code in (302, 303):
                acs = client.get(acs.headers["location"])
            # python3-saml in strict mode validated both ECDSA signatures against the metadata
            assert acs.status_code == 200, acs.text[:1500]
            assert re.search(r"<code>[a-z2-7]{52}@[^<]+</code>", acs.text)
            # a tampered Response is refused by python3-saml (the check is real)
            tampered = dict(fields)
            xml = base64.b64decode(fields["SAMLResponse"]).replace(b"urn:oasis:names:tc:SAML:2.0:ac:classes",
                                                                   b"urn:oasis:names:tc:SAML:2.0:ac:klasses", 1)
            tampered["SAMLResponse"] = base64.b64encode(xml).decode()
            assert client.post(action, data=tampered).status_code != 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_renkei_provider_accepts_an_ecdsa_signed_provider_token(fed):
    browser = Browser(fed.base_url)
    requester_assertion = fed.sso(fed.requester, browser).find("saml:Assertion", NS)
    provider_pseudonym = fed.sso(fed.provider, browser).find("saml:Assertion/saml:Subject/saml:NameID", NS).text
    attr = requester_assertion.find(f"saml:AttributeStatement/saml:Attribute[@Name='{DISCOVERY_EPR}']", NS)
    bootstrap = attr.find(f".//{{{SEC_NS}}}Token").text.strip()
    url = f"{fed.base_url}/api/discovery/query"
    jwt = sign_client_assertion(fed.requester.key, issuer=fed.requester.entity_id, audience=url,
                                jti=uuid.uuid4().hex)
    answer = httpx.post(url, headers={"Authorization": f"Bearer {jwt}"}, timeout=30, json={
        "service_type": SERVICE, "task": TASK, "person": {"bootstrap_token": bootstrap}})
    assert answer.status_code == 200, answer.text
    (offering,) = [o for o in answer.json()["offerings"] if o["permitted"]]
    token = base64.b64decode(offering["token"])
    assert _signature_method(etree.fromstring(token)) == ECDSA_SHA256

    metadata = httpx.get(f"{fed.base_url}/idp/metadata", timeout=10).content
    verifier = TokenVerifier(hub_metadata_xml=metadata, provider_entity_id=fed.provider.entity_id,
                             endpoint=fed.endpoint, decryption_keys=[fed.provider.key])
    accepted = verifier.verify(offering["token"])
    assert accepted.provider_pseudonym == provider_pseudonym and accepted.local_id == LOCAL_ID

    # the same token is refused by a verifier pinned to another (RSA) hub key: keys are pinned
    rsa_hub = _metadata_with_discovery_cert(metadata, _rsa_cert())
    other = TokenVerifier(hub_metadata_xml=rsa_hub, provider_entity_id=fed.provider.entity_id,
                          endpoint=fed.endpoint, decryption_keys=[fed.provider.key])
    with pytest.raises(TokenSignatureInvalid):
        other.verify(offering["token"])


def _rsa_cert() -> x509.Certificate:
    from kernel.keys import generate_rsa_key, self_signed_certificate

    return self_signed_certificate(generate_rsa_key(), "another hub")


def _metadata_with_discovery_cert(metadata: bytes, cert: x509.Certificate) -> bytes:
    root = etree.fromstring(metadata)
    for descriptor in root.iter("{urn:oasis:names:tc:SAML:2.0:metadata}RoleDescriptor"):
        for value in descriptor.iter(f"{{{DS}}}X509Certificate"):
            value.text = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    return etree.tostring(root)


def test_rotation_changes_the_key_type_without_a_restart(fed):
    home = fed.env["RENKEI_HOME"]
    out = ok(fed.env, "keys", "rotate", "discovery", "--key-type", "rsa-2048")
    assert "rsa-2048 key v2" in out
    assert published(fed.hub, "discovery") == [der(certificate(home, "discovery", 2)),
                                               der(certificate(home, "discovery", 1))]
    assert isinstance(certificate(home, "discovery", 2).public_key(), rsa.RSAPublicKey)
    # a rotation without --key-type keeps the current type
    assert "rsa-2048 key v3" in ok(fed.env, "keys", "rotate", "discovery")
    assert "ec-p256 key v4" in ok(fed.env, "keys", "rotate", "discovery", "--key-type", "ec-p256")
    # and the IdP: an RSA rotation signs the very next response with RSA-SHA256
    ok(fed.env, "keys", "rotate", "idp", "--key-type", "rsa-2048")
    response = fed.sso(fed.requester)
    assert _signature_method(response) == RSA_SHA256
    verify_signed(parse_xml(etree.tostring(response)), [certificate(home, "idp", 2)])
    ok(fed.env, "keys", "rotate", "idp", "--key-type", "ec-p256")
    assert _signature_method(fed.sso(fed.requester)) == ECDSA_SHA256


@pytest.mark.nodb
def test_key_store_refuses_keys_it_cannot_sign_with(tmp_path):
    """A key file of another curve or a short RSA key is named as a problem, never used."""
    from kernel.keys import self_signed_certificate

    store = KeyStore(tmp_path)
    for role, key in (("p384", ec.generate_private_key(ec.SECP384R1())),
                      ("short", rsa.generate_private_key(public_exponent=65537, key_size=1024))):
        (tmp_path / f"{role}-v1.cert.pem").write_bytes(
            self_signed_certificate(key, role).public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{role}-v1.key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        with pytest.raises(KeyProblem, match="ECDSA P-256"):
            store.current_signing_key(role)
    # an EC key beside the certificate of another EC key is refused as a mismatch
    made = store.create_signing_key("mixed", key_type=EC_P256)
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "mixed-v1.key.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(KeyProblem, match="does not match"):
        KeyStore(tmp_path).current_signing_key("mixed")
    assert made.key_type == EC_P256
    with pytest.raises(ValueError):
        store.create_signing_key("nope", key_type="ec-p384")
    assert not list(tmp_path.glob("nope-*"))
