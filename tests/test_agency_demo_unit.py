"""The demo agency SP on its own: metadata, signed AuthnRequests, and what /acs and /sls accept.

No Renkei IdP runs here. Where a test needs the hub, it plays the hub itself: it makes an IdP
key, publishes a small IdP metadata document and signs Responses with python-xmlsec directly,
so these tests also spell out what a Response must look like for the agency to accept it.
"""

from __future__ import annotations

import base64
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote_plus, unquote_plus, urlsplit

import httpx
import pytest
import xmlsec
from agency_demo import AgencyConfig, create_agency_app, sp_metadata
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from starlette.testclient import TestClient

pytestmark = pytest.mark.nodb  # the demo agency app alone: no hub, no database; the PostgreSQL pass skips it

HUB = "http://127.0.0.1:8000"
IDP_ENTITY_ID = f"{HUB}/idp/metadata"
BASE = "http://127.0.0.1:8101"
SP_ENTITY_ID = f"{BASE}/metadata"
PSEUDONYM = "k3j9x0q7v2m4t8w1@renkei.localhost"

NS = {
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
}
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
PAIRWISE_ID = "urn:oasis:names:tc:SAML:attribute:pairwise-id"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
PASSWORD_PROTECTED = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"


# -- the test plays the hub ------------------------------------------------------------------
class FakeIdpKey:
    """An IdP signing key with its certificate, as the hub would publish in its metadata."""

    def __init__(self, common_name: str = "renkei-idp-test"):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def cert_b64(self) -> str:
        return base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()


def idp_metadata(*keys: FakeIdpKey, with_slo: bool = True) -> str:
    descriptors = "".join(
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
        f"{k.cert_b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        for k in keys
    )
    slo = (
        f'<md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
        f'Location="{HUB}/idp/slo"/>'
        if with_slo
        else ""
    )
    return (
        f'<md:EntityDescriptor xmlns:md="{NS["md"]}" xmlns:ds="{NS["ds"]}" '
        f'entityID="{IDP_ENTITY_ID}">'
        f'<md:IDPSSODescriptor WantAuthnRequestsSigned="false" '
        f'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">{descriptors}{slo}'
        f"<md:NameIDFormat>{PERSISTENT}</md:NameIDFormat>"
        f'<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
        f'Location="{HUB}/idp/sso"/>'
        f'<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" '
        f'Location="{HUB}/idp/sso"/>'
        f"</md:IDPSSODescriptor></md:EntityDescriptor>"
    )


def saml_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_element(element: etree._Element, key: FakeIdpKey) -> None:
    """Enveloped RSA-SHA256 signature placed right after <saml:Issuer>, as the schema orders it."""
    signature = xmlsec.template.create(
        element, xmlsec.Transform.EXCL_C14N, xmlsec.Transform.RSA_SHA256
    )
    element.insert(1, signature)
    reference = xmlsec.template.add_reference(
        signature, xmlsec.Transform.SHA256, uri="#" + element.get("ID")
    )
    xmlsec.template.add_transform(reference, xmlsec.Transform.ENVELOPED)
    xmlsec.template.add_transform(reference, xmlsec.Transform.EXCL_C14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    xmlsec.tree.add_ids(element.getroottree().getroot(), ["ID"])
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(key.key_pem, xmlsec.KeyFormat.PEM)
    context.key.load_cert_from_memory(
        key.cert.public_bytes(serialization.Encoding.PEM), xmlsec.KeyFormat.CERT_PEM
    )
    context.sign(signature)


def saml_response(
    key: FakeIdpKey,
    *,
    in_response_to: str | None,
    name_id: str = PSEUDONYM,
    name_id_format: str = PERSISTENT,
    audience: str = SP_ENTITY_ID,
    recipient: str = f"{BASE}/acs",
    destination: str = f"{BASE}/acs",
    sign_assertion: bool = True,
    sign_response: bool = True,
    expires_in: timedelta = timedelta(minutes=5),
    tamper=None,
) -> str:
    """A Response as Renkei's IdP is expected to send it, base64 for the HTTP-POST binding."""
    now = datetime.now(UTC)
    irt = f' InResponseTo="{in_response_to}"' if in_response_to else ""
    xml = f"""<samlp:Response xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}"
      ID="_r{uuid.uuid4().hex}" Version="2.0" IssueInstant="{saml_time(now)}"
      Destination="{destination}"{irt}>
      <saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>
      <samlp:Status><samlp:StatusCode Value="{SUCCESS}"/></samlp:Status>
      <saml:Assertion ID="_a{uuid.uuid4().hex}" Version="2.0" IssueInstant="{saml_time(now)}">
        <saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>
        <saml:Subject>
          <saml:NameID Format="{name_id_format}" NameQualifier="{IDP_ENTITY_ID}"
            SPNameQualifier="{SP_ENTITY_ID}">{name_id}</saml:NameID>
          <saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">
            <saml:SubjectConfirmationData{irt} NotOnOrAfter="{saml_time(now + expires_in)}"
              Recipient="{recipient}"/>
          </saml:SubjectConfirmation>
        </saml:Subject>
        <saml:Conditions NotBefore="{saml_time(now - timedelta(minutes=1))}"
          NotOnOrAfter="{saml_time(now + expires_in)}">
          <saml:AudienceRestriction>
            <saml:Audience>{audience}</saml:Audience>
          </saml:AudienceRestriction>
        </saml:Conditions>
        <saml:AuthnStatement AuthnInstant="{saml_time(now)}" SessionIndex="_s-index-1">
          <saml:AuthnContext>
            <saml:AuthnContextClassRef>{PASSWORD_PROTECTED}</saml:AuthnContextClassRef>
          </saml:AuthnContext>
        </saml:AuthnStatement>
        <saml:AttributeStatement>
          <saml:Attribute Name="{PAIRWISE_ID}"
            NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:uri">
            <saml:AttributeValue>{name_id}</saml:AttributeValue>
          </saml:Attribute>
        </saml:AttributeStatement>
      </saml:Assertion>
    </samlp:Response>"""
    root = etree.fromstring(xml.encode())
    if sign_assertion:
        sign_element(root.find("saml:Assertion", NS), key)
    if sign_response:
        sign_element(root, key)
    if tamper:
        tamper(root)
    return base64.b64encode(etree.tostring(root)).decode()


def redirect_query(
    parameter: str, xml: str, key: FakeIdpKey | None, relay_state: str | None = None
) -> str:
    """An HTTP-Redirect binding query (SAML bindings §3.4.4.1), signed when `key` is given."""
    deflated = zlib.compress(xml.encode())[2:-4]
    parts = [f"{parameter}={quote_plus(base64.b64encode(deflated).decode())}"]
    if relay_state is not None:
        parts.append(f"RelayState={quote_plus(relay_state)}")
    if key is not None:
        parts.append(f"SigAlg={quote_plus(RSA_SHA256)}")
        signature = key.key.sign("&".join(parts).encode(), padding.PKCS1v15(), hashes.SHA256())
        parts.append(f"Signature={quote_plus(base64.b64encode(signature).decode())}")
    return "&".join(parts)


def inflate(value: str) -> etree._Element:
    return etree.fromstring(zlib.decompress(base64.b64decode(value), -15))


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def idp_key() -> FakeIdpKey:
    return FakeIdpKey()


def make_config(key_dir: Path, metadata: str | None, *, sign_requests: bool = True) -> AgencyConfig:
    return AgencyConfig(
        entity_id=SP_ENTITY_ID,
        name="転出元 市役所 (Demo City A)",
        base_url=BASE,
        hub_base_url=HUB,
        key_dir=key_dir,
        idp_metadata_xml=metadata,
        sign_requests=sign_requests,
    )


@pytest.fixture
def config(tmp_path: Path, idp_key: FakeIdpKey) -> AgencyConfig:
    return make_config(tmp_path / "keys", idp_metadata(idp_key))


@pytest.fixture
def client(config: AgencyConfig) -> TestClient:
    # base_url = the agency's public URL, so cookies and Destination checks see the real host.
    return TestClient(create_agency_app(config), base_url=BASE, follow_redirects=False)


def start_login(client: TestClient) -> str:
    """GET /login and return the ID of the AuthnRequest it sent."""
    location = client.get("/login").headers["location"]
    return inflate(parse_qs(urlsplit(location).query)["SAMLRequest"][0]).get("ID")


def sign_in(client: TestClient, key: FakeIdpKey) -> None:
    request_id = start_login(client)
    answer = client.post(
        "/acs", data={"SAMLResponse": saml_response(key, in_response_to=request_id)}
    )
    assert answer.status_code == 303, answer.text


def sp_cert_der(config: AgencyConfig) -> bytes:
    pem = (config.key_dir / "sp.cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


# -- SP metadata ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sign_requests", [True, False])
def test_sp_metadata_describes_the_agency(tmp_path: Path, sign_requests: bool) -> None:
    config = make_config(tmp_path / "keys", None, sign_requests=sign_requests)
    root = etree.fromstring(sp_metadata(config).encode())

    assert root.tag == f"{{{NS['md']}}}EntityDescriptor"
    assert root.get("entityID") == SP_ENTITY_ID
    sp = root.find("md:SPSSODescriptor", NS)
    assert sp.get("AuthnRequestsSigned") == str(sign_requests).lower()
    assert sp.get("WantAssertionsSigned") == "true"
    acs = sp.find("md:AssertionConsumerService", NS)
    assert acs.get("Location") == f"{BASE}/acs"
    assert acs.get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    slo = sp.find("md:SingleLogoutService", NS)
    assert slo.get("Location") == f"{BASE}/sls"
    assert slo.get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
    assert sp.findtext("md:NameIDFormat", namespaces=NS) == PERSISTENT
    signing = sp.findall("md:KeyDescriptor[@use='signing']//ds:X509Certificate", NS)
    assert [base64.b64decode(c.text) for c in signing] == [sp_cert_der(config)]
    assert root.findtext("md:Organization/md:OrganizationDisplayName", namespaces=NS) == config.name


def test_metadata_route_serves_the_same_document(client: TestClient, config: AgencyConfig) -> None:
    answer = client.get("/metadata")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/samlmetadata+xml")
    assert answer.text == sp_metadata(config)


def test_sp_key_is_created_once_and_kept_private(config: AgencyConfig) -> None:
    first = sp_metadata(config)
    assert (config.key_dir / "sp.key.pem").stat().st_mode & 0o077 == 0
    assert sp_metadata(config) == first  # same key and certificate on the next start


# -- SP-initiated SSO ------------------------------------------------------------------------------
def test_login_redirects_to_hub_with_signed_authn_request(
    client: TestClient, config: AgencyConfig
) -> None:
    answer = client.get("/login")
    assert answer.status_code == 302
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{HUB}/idp/sso"
    params = parse_qs(location.query)
    assert set(params) == {"SAMLRequest", "RelayState", "SigAlg", "Signature"}
    assert params["SigAlg"] == [RSA_SHA256]

    request = inflate(params["SAMLRequest"][0])
    assert request.tag == f"{{{NS['samlp']}}}AuthnRequest"
    assert request.get("AssertionConsumerServiceURL") == f"{BASE}/acs"
    assert request.get("ProtocolBinding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    assert request.get("Destination") == f"{HUB}/idp/sso"
    assert request.findtext("saml:Issuer", namespaces=NS) == SP_ENTITY_ID
    assert request.find("samlp:NameIDPolicy", NS).get("Format") == PERSISTENT
    assert request.find("samlp:RequestedAuthnContext", NS) is None

    # SAML bindings §3.4.4.1: the signature covers the raw, still URL-encoded
    # SAMLRequest=..&RelayState=..&SigAlg=.. octets, in that order.
    raw = dict(part.split("=", 1) for part in location.query.split("&"))
    signed = "&".join(f"{name}={raw[name]}" for name in ("SAMLRequest", "RelayState", "SigAlg"))
    sp_cert = x509.load_der_x509_certificate(sp_cert_der(config))
    sp_cert.public_key().verify(
        base64.b64decode(unquote_plus(raw["Signature"])),
        signed.encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_login_without_request_signing_sends_no_signature(
    tmp_path: Path, idp_key: FakeIdpKey
) -> None:
    config = make_config(tmp_path / "keys", idp_metadata(idp_key), sign_requests=False)
    client = TestClient(create_agency_app(config), base_url=BASE, follow_redirects=False)
    params = parse_qs(urlsplit(client.get("/login").headers["location"]).query)
    assert "Signature" not in params and "SigAlg" not in params
    assert inflate(params["SAMLRequest"][0]).get("AssertionConsumerServiceURL") == f"{BASE}/acs"


def test_full_sign_in_shows_the_pseudonym_this_agency_sees(
    client: TestClient, idp_key: FakeIdpKey
) -> None:
    assert "ログイン" in client.get("/").text
    sign_in(client, idp_key)
    page = client.get("/").text
    assert PSEUDONYM in page
    assert PERSISTENT in page
    assert PASSWORD_PROTECTED in page
    assert "_s-index-1" in page
    assert 'lang="ja"' in page


def test_response_signed_with_the_second_rotation_key_is_accepted(tmp_path: Path) -> None:
    old, new = FakeIdpKey("old"), FakeIdpKey("new")
    config = make_config(tmp_path / "keys", idp_metadata(old, new))
    client = TestClient(create_agency_app(config), base_url=BASE, follow_redirects=False)
    sign_in(client, new)
    assert PSEUDONYM in client.get("/").text


def test_assertion_signature_alone_is_enough(client: TestClient, idp_key: FakeIdpKey) -> None:
    request_id = start_login(client)
    posted = saml_response(idp_key, in_response_to=request_id, sign_response=False)
    assert client.post("/acs", data={"SAMLResponse": posted}).status_code == 303


# -- /acs refusals: always 400 with a reason, never 500 -----------------------------------------
@pytest.mark.parametrize(
    "form",
    [
        {},
        {"SAMLResponse": ""},
        {"SAMLResponse": "not base64 at all !!!"},
        {"SAMLResponse": base64.b64encode(b"plain text, not XML").decode()},
        {"SAMLResponse": base64.b64encode(b"<samlp:Response").decode()},
        {"SAMLResponse": base64.b64encode(b'<!DOCTYPE r [<!ENTITY x "boom">]><r>&x;</r>').decode()},
        {
            "SAMLResponse": base64.b64encode(
                f'<samlp:Response xmlns:samlp="{NS["samlp"]}" ID="_x" Version="2.0"/>'.encode()
            ).decode()
        },
    ],
)
def test_acs_refuses_garbage_with_a_reason(client: TestClient, form: dict[str, str]) -> None:
    start_login(client)
    answer = client.post("/acs", data=form)
    assert answer.status_code == 400
    assert "理由" in answer.text and "reason" in answer.text
    assert 'role="alert"' in answer.text


def test_acs_refuses_json_and_oversized_bodies(client: TestClient) -> None:
    start_login(client)
    assert client.post("/acs", json={"SAMLResponse": "x"}).status_code == 400
    start_login(client)
    assert client.post("/acs", data={"SAMLResponse": "A" * 600_000}).status_code == 400


def test_acs_refuses_unsolicited_responses(client: TestClient, idp_key: FakeIdpKey) -> None:
    answer = client.post("/acs", data={"SAMLResponse": saml_response(idp_key, in_response_to=None)})
    assert answer.status_code == 400
    assert "no sign-in is in progress" in answer.text
    # ... also when a login is pending but the Response does not say it answers it
    start_login(client)
    answer = client.post("/acs", data={"SAMLResponse": saml_response(idp_key, in_response_to=None)})
    assert answer.status_code == 400
    assert "does not answer" in answer.text


def _replace_name_id(root: etree._Element) -> None:
    root.find(".//saml:NameID", NS).text = "someone-else@renkei.localhost"


@pytest.mark.parametrize(
    ("changes", "reason_fragment"),
    [
        ({"audience": "http://127.0.0.1:8102/metadata"}, "not a valid audience"),
        ({"destination": "http://127.0.0.1:8102/acs"}, "instead of"),
        ({"recipient": "http://127.0.0.1:8102/acs"}, "SubjectConfirmation"),
        ({"sign_assertion": False}, "Assertion of the Response is not signed"),
        ({"sign_assertion": False, "sign_response": False}, "not signed"),
        ({"name_id_format": "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"}, "is not"),
        ({"expires_in": timedelta(minutes=-10)}, "expired"),
        ({"tamper": _replace_name_id}, "Signature validation failed"),
    ],
)
def test_acs_refuses_responses_the_toolkit_or_agency_must_reject(
    client: TestClient, idp_key: FakeIdpKey, changes: dict, reason_fragment: str
) -> None:
    request_id = start_login(client)
    posted = saml_response(idp_key, in_response_to=request_id, **changes)
    answer = client.post("/acs", data={"SAMLResponse": posted})
    assert answer.status_code == 400
    assert reason_fragment in answer.text
    assert PSEUDONYM not in client.get("/").text


def test_acs_refuses_a_response_signed_by_another_key(client: TestClient) -> None:
    request_id = start_login(client)
    posted = saml_response(FakeIdpKey("attacker"), in_response_to=request_id)
    answer = client.post("/acs", data={"SAMLResponse": posted})
    assert answer.status_code == 400
    assert "Signature validation failed" in answer.text


def test_acs_refuses_a_replayed_response(client: TestClient, idp_key: FakeIdpKey) -> None:
    request_id = start_login(client)
    posted = saml_response(idp_key, in_response_to=request_id)
    assert client.post("/acs", data={"SAMLResponse": posted}).status_code == 303
    # Same browser, the pending request is spent: the copy answers nothing.
    assert client.post("/acs", data={"SAMLResponse": posted}).status_code == 400
    # A fresh login does not revive it either (InResponseTo names the old request).
    start_login(client)
    answer = client.post("/acs", data={"SAMLResponse": posted})
    assert answer.status_code == 400
    assert "InResponseTo" in answer.text


def test_acs_refuses_another_browsers_response(config: AgencyConfig, idp_key: FakeIdpKey) -> None:
    app = create_agency_app(config)
    alice = TestClient(app, base_url=BASE, follow_redirects=False)
    mallory = TestClient(app, base_url=BASE, follow_redirects=False)
    alices_request = start_login(alice)
    start_login(mallory)
    posted = saml_response(idp_key, in_response_to=alices_request)
    assert mallory.post("/acs", data={"SAMLResponse": posted}).status_code == 400


# -- Single Logout --------------------------------------------------------------------------------
def test_logout_round_trip(client: TestClient, config: AgencyConfig, idp_key: FakeIdpKey) -> None:
    sign_in(client, idp_key)
    answer = client.post("/logout")
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{HUB}/idp/slo"
    params = parse_qs(location.query)
    assert params["SigAlg"] == [RSA_SHA256] and "Signature" in params
    logout_request = inflate(params["SAMLRequest"][0])
    assert logout_request.get("Destination") == f"{HUB}/idp/slo"
    assert logout_request.findtext("saml:Issuer", namespaces=NS) == SP_ENTITY_ID
    name_id = logout_request.find("saml:NameID", NS)
    assert name_id.text == PSEUDONYM and name_id.get("Format") == PERSISTENT
    assert logout_request.findtext("samlp:SessionIndex", namespaces=NS) == "_s-index-1"
    # Signed locally already: the home page no longer shows the person.
    assert PSEUDONYM not in client.get("/").text

    now = saml_time(datetime.now(UTC))
    logout_response = (
        f'<samlp:LogoutResponse xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}" '
        f'ID="_lr{uuid.uuid4().hex}" Version="2.0" IssueInstant="{now}" '
        f'Destination="{BASE}/sls" InResponseTo="{logout_request.get("ID")}">'
        f"<saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>"
        f'<samlp:Status><samlp:StatusCode Value="{SUCCESS}"/></samlp:Status>'
        f"</samlp:LogoutResponse>"
    )
    query = redirect_query("SAMLResponse", logout_response, idp_key, relay_state=f"{BASE}/")
    answer = client.get(f"/sls?{query}")
    assert answer.status_code == 200, answer.text
    assert "ログアウトしました" in answer.text


def test_sls_refuses_a_logout_response_signed_by_another_key(
    client: TestClient, idp_key: FakeIdpKey
) -> None:
    sign_in(client, idp_key)
    client.post("/logout")
    logout_response = (
        f'<samlp:LogoutResponse xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}" ID="_lr1" '
        f'Version="2.0" IssueInstant="{saml_time(datetime.now(UTC))}" Destination="{BASE}/sls">'
        f"<saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>"
        f'<samlp:Status><samlp:StatusCode Value="{SUCCESS}"/></samlp:Status></samlp:LogoutResponse>'
    )
    answer = client.get(f"/sls?{redirect_query('SAMLResponse', logout_response, FakeIdpKey('x'))}")
    assert answer.status_code == 400
    assert "Signature validation failed" in answer.text


def test_idp_initiated_logout_is_answered_and_ends_the_session(
    client: TestClient, idp_key: FakeIdpKey
) -> None:
    sign_in(client, idp_key)
    now = saml_time(datetime.now(UTC))
    logout_request = (
        f'<samlp:LogoutRequest xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}" '
        f'ID="_lq{uuid.uuid4().hex}" Version="2.0" IssueInstant="{now}" Destination="{BASE}/sls">'
        f"<saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>"
        f'<saml:NameID Format="{PERSISTENT}">{PSEUDONYM}</saml:NameID>'
        f"<samlp:SessionIndex>_s-index-1</samlp:SessionIndex></samlp:LogoutRequest>"
    )
    answer = client.get(f"/sls?{redirect_query('SAMLRequest', logout_request, idp_key)}")
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{HUB}/idp/slo"
    params = parse_qs(location.query)
    logout_response = inflate(params["SAMLResponse"][0])
    assert logout_response.get("InResponseTo", "").startswith("_lq")
    assert "Signature" in params
    assert PSEUDONYM not in client.get("/").text


@pytest.mark.parametrize(
    "query",
    [
        "",
        "SAMLResponse=%%%",
        "SAMLResponse=" + quote_plus(base64.b64encode(b"garbage").decode()),
        "SAMLRequest="
        + quote_plus(base64.b64encode(zlib.compress(b"A" * 2_000_000)[2:-4]).decode()),
    ],
)
def test_sls_refuses_garbage_with_a_reason(client: TestClient, query: str) -> None:
    answer = client.get(f"/sls?{query}")
    assert answer.status_code == 400
    assert 'role="alert"' in answer.text


def test_logout_when_hub_has_no_slo_ends_the_local_session(
    tmp_path: Path, idp_key: FakeIdpKey
) -> None:
    config = make_config(tmp_path / "keys", idp_metadata(idp_key, with_slo=False))
    client = TestClient(create_agency_app(config), base_url=BASE, follow_redirects=False)
    sign_in(client, idp_key)
    assert client.post("/logout").status_code == 200
    assert PSEUDONYM not in client.get("/").text


# -- IdP metadata from the hub -----------------------------------------------------------------
def test_idp_metadata_is_fetched_from_the_hub(
    tmp_path: Path, idp_key: FakeIdpKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []

    def hub(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200, text=idp_metadata(idp_key))

    real_client = httpx.AsyncClient
    monkeypatch.setattr(
        "agency_demo.saml.httpx.AsyncClient",
        lambda **kwargs: real_client(transport=httpx.MockTransport(hub), **kwargs),
    )
    client = TestClient(
        create_agency_app(make_config(tmp_path / "keys", None)),
        base_url=BASE,
        follow_redirects=False,
    )
    sign_in(client, idp_key)
    assert fetched == [IDP_ENTITY_ID]


def test_unreachable_hub_is_a_502_with_a_reason(tmp_path: Path) -> None:
    config = AgencyConfig(
        entity_id=SP_ENTITY_ID,
        name="Demo",
        base_url=BASE,
        hub_base_url="http://127.0.0.1:1",
        key_dir=tmp_path / "keys",
    )
    client = TestClient(create_agency_app(config), base_url=BASE, follow_redirects=False)
    answer = client.get("/login")
    assert answer.status_code == 502
    assert 'role="alert"' in answer.text


def test_pinned_idp_metadata_for_another_entity_fails_at_startup(
    tmp_path: Path, idp_key: FakeIdpKey
) -> None:
    wrong = idp_metadata(idp_key).replace(IDP_ENTITY_ID, "https://elsewhere.example/idp")
    with pytest.raises(Exception, match="no IDPSSODescriptor"):
        create_agency_app(make_config(tmp_path / "keys", wrong))
