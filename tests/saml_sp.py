"""A test service provider written independently of Renkei's XML code: python-xmlsec signs
and verifies XML, `cryptography` signs Redirect-binding queries, lxml builds the messages.

Protocol tests drive the hub through it over real HTTP, the way an agency's SP would.
"""
from __future__ import annotations

import base64
import re
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.parse import quote_plus

import httpx
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
NS = {"saml": SAML, "samlp": SAMLP, "ds": DS, "md": MD}


def now_str(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_key_and_cert(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


@dataclass
class TestSP:
    __test__ = False  # a helper, not a test class

    entity_id: str
    base_url: str
    authn_requests_signed: bool = True
    encryption: bool = True  # publish the certificate for encryption too (tokens for this SP)
    key: rsa.RSAPrivateKey = field(default=None)
    cert: x509.Certificate = field(default=None)

    def __post_init__(self):
        if self.key is None:
            self.key, self.cert = make_key_and_cert(self.entity_id[-60:])

    @property
    def acs_url(self) -> str:
        return f"{self.base_url}/acs"

    @property
    def slo_url(self) -> str:
        return f"{self.base_url}/sls"

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def metadata(self) -> bytes:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        root = etree.Element(f"{{{MD}}}EntityDescriptor", entityID=self.entity_id, nsmap={"md": MD, "ds": DS})
        sp = etree.SubElement(root, f"{{{MD}}}SPSSODescriptor", protocolSupportEnumeration=SAMLP,
                              AuthnRequestsSigned=str(self.authn_requests_signed).lower(),
                              WantAssertionsSigned="true")
        for use in ("signing", "encryption") if self.encryption else ("signing",):
            kd = etree.SubElement(sp, f"{{{MD}}}KeyDescriptor", use=use)
            x = etree.SubElement(etree.SubElement(etree.SubElement(kd, f"{{{DS}}}KeyInfo"), f"{{{DS}}}X509Data"),
                                 f"{{{DS}}}X509Certificate")
            x.text = base64.b64encode(der).decode()
        etree.SubElement(sp, f"{{{MD}}}SingleLogoutService", Binding=REDIRECT, Location=self.slo_url)
        etree.SubElement(sp, f"{{{MD}}}AssertionConsumerService", Binding=POST, Location=self.acs_url,
                         index="0", isDefault="true")
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    # -- requests ------------------------------------------------------------------------
    def authn_request(self, destination: str, *, request_id: str | None = None, acs_url: str | None = None,
                      issuer: str | None = None, issue_instant: str | None = None,
                      requested_context: tuple[str, list[str]] | None = None,
                      force_authn: bool = False, is_passive: bool = False) -> tuple[str, etree._Element]:
        request_id = request_id or "_" + uuid.uuid4().hex
        root = etree.Element(f"{{{SAMLP}}}AuthnRequest", nsmap={"samlp": SAMLP, "saml": SAML})
        root.set("ID", request_id)
        root.set("Version", "2.0")
        root.set("IssueInstant", issue_instant or now_str())
        root.set("Destination", destination)
        root.set("AssertionConsumerServiceURL", acs_url or self.acs_url)
        root.set("ProtocolBinding", POST)
        if force_authn:
            root.set("ForceAuthn", "true")
        if is_passive:
            root.set("IsPassive", "true")
        etree.SubElement(root, f"{{{SAML}}}Issuer").text = issuer or self.entity_id
        etree.SubElement(root, f"{{{SAMLP}}}NameIDPolicy",
                         Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent", AllowCreate="true")
        if requested_context:
            comparison, classes = requested_context
            rac = etree.SubElement(root, f"{{{SAMLP}}}RequestedAuthnContext", Comparison=comparison)
            for c in classes:
                etree.SubElement(rac, f"{{{SAML}}}AuthnContextClassRef").text = c
        return request_id, root

    def redirect_query(self, xml: bytes, *, relay_state: str | None = None, sign: bool = True,
                       field_name: str = "SAMLRequest") -> str:
        """HTTP-Redirect binding encoding, signed with `cryptography` (bindings §3.4.4.1)."""
        deflated = zlib.compress(xml)[2:-4]
        parts = [f"{field_name}={quote_plus(base64.b64encode(deflated).decode())}"]
        if relay_state is not None:
            parts.append(f"RelayState={quote_plus(relay_state)}")
        if sign:
            parts.append(f"SigAlg={quote_plus(RSA_SHA256)}")
            signature = self.key.sign("&".join(parts).encode(), padding.PKCS1v15(), hashes.SHA256())
            parts.append(f"Signature={quote_plus(base64.b64encode(signature).decode())}")
        return "&".join(parts)

    def sign_xml(self, root: etree._Element) -> etree._Element:
        """Enveloped XML signature with python-xmlsec (an implementation independent of ours)."""
        sig = xmlsec.template.create(root, xmlsec.Transform.EXCL_C14N, xmlsec.Transform.RSA_SHA256)
        issuer = root.find(f"{{{SAML}}}Issuer")
        issuer.addnext(sig)
        ref = xmlsec.template.add_reference(sig, xmlsec.Transform.SHA256, uri="#" + root.get("ID"))
        xmlsec.template.add_transform(ref, xmlsec.Transform.ENVELOPED)
        xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
        ctx = xmlsec.SignatureContext()
        ctx.key = xmlsec.Key.from_memory(self.key_pem, xmlsec.KeyFormat.PEM)
        xmlsec.tree.add_ids(root, ["ID"])
        ctx.sign(sig)
        return root

    def logout_request(self, destination: str, name_id: str, session_index: str | None = None) -> bytes:
        root = etree.Element(f"{{{SAMLP}}}LogoutRequest", nsmap={"samlp": SAMLP, "saml": SAML})
        root.set("ID", "_" + uuid.uuid4().hex)
        root.set("Version", "2.0")
        root.set("IssueInstant", now_str())
        root.set("Destination", destination)
        etree.SubElement(root, f"{{{SAML}}}Issuer").text = self.entity_id
        etree.SubElement(root, f"{{{SAML}}}NameID",
                         Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent").text = name_id
        if session_index:
            etree.SubElement(root, f"{{{SAMLP}}}SessionIndex").text = session_index
        return etree.tostring(root)


def verify_with_xmlsec(element: etree._Element, cert: x509.Certificate) -> None:
    """Check an enveloped signature with python-xmlsec against a pinned certificate."""
    sig = element.find(f"{{{DS}}}Signature")
    assert sig is not None, "no signature"
    xmlsec.tree.add_ids(element, ["ID"])
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(cert.public_bytes(serialization.Encoding.PEM), xmlsec.KeyFormat.CERT_PEM)
    ctx.verify(sig)


_FORM_FIELD = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)"')
_FORM_ACTION = re.compile(r'<form method="post" action="([^"]*)"')


def post_form_fields(html: str) -> tuple[str, dict[str, str]]:
    """The action URL and hidden fields of an HTTP-POST binding page."""
    action = _FORM_ACTION.search(html)
    assert action, html[:500]
    return unescape(action.group(1)), {k: unescape(v) for k, v in _FORM_FIELD.findall(html)}


class Browser:
    """A person's browser: follows the IdP's redirects and submits its login form."""

    def __init__(self, hub_url: str):
        self.hub_url = hub_url
        self.client = httpx.Client(base_url=hub_url, follow_redirects=False, timeout=20)

    def start(self, sp: TestSP, request_xml: bytes, relay_state: str | None = None, sign: bool = True,
              binding: str = "redirect") -> httpx.Response:
        if binding == "redirect":
            return self.client.get("/idp/sso?" + sp.redirect_query(request_xml, relay_state=relay_state, sign=sign))
        data = {"SAMLRequest": base64.b64encode(request_xml).decode()}
        if relay_state is not None:
            data["RelayState"] = relay_state
        return self.client.post("/idp/sso", data=data)

    def login(self, login_redirect: httpx.Response, username: str, password: str) -> httpx.Response:
        assert login_redirect.status_code == 303, login_redirect.text[:500]
        location = login_redirect.headers["location"].removeprefix(self.hub_url)
        page = self.client.get(location)
        assert page.status_code == 200, page.text[-700:]
        pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
        return self.client.post("/idp/login", data={"pending": pending, "username": username, "password": password})

    def totp(self, page: httpx.Response, code: str) -> httpx.Response:
        pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
        return self.client.post("/idp/login/totp", data={"pending": pending, "code": code})


def response_from_page(html: str) -> tuple[str, etree._Element, dict[str, str]]:
    """Decode the SAMLResponse that a POST-binding page carries: (action, Response element, fields)."""
    action, fields = post_form_fields(html)
    xml = base64.b64decode(fields["SAMLResponse"])
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return action, etree.fromstring(xml, parser), fields

