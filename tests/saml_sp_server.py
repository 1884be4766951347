"""A running test SP for Single Logout: it answers the hub's LogoutRequests over the
front channel (HTTP-Redirect) and the back channel (SOAP), checking the hub's signatures with
`cryptography` and python-xmlsec and signing its answers with them, never with Renkei's code.

`mode` makes it misbehave on purpose: "ok", "unsigned" (answer without a signature),
"wrong-key" (sign with a key the hub never pinned), "refuse" (status Responder).
"""
from __future__ import annotations

import base64
import uuid
import zlib
from urllib.parse import parse_qsl, quote_plus

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from lxml import etree

from tests.conftest import listening_socket, port_of, serve_in_thread
from tests.saml_sp import MD, SAML, SAMLP, TestSP, make_key_and_cert, now_str, verify_with_xmlsec

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
_SIG_ALGS = {"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": hashes.SHA256(),
             "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256": hashes.SHA256()}


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def verify_redirect(raw_query: str, cert: x509.Certificate) -> dict[str, str]:
    """Check a Redirect-binding signature (bindings §3.4.4.1) with `cryptography` alone."""
    raw = dict(part.split("=", 1) for part in raw_query.split("&") if "=" in part)
    name = "SAMLRequest" if "SAMLRequest" in raw else "SAMLResponse"
    signed = "&".join(f"{k}={raw[k]}" for k in (name, "RelayState", "SigAlg") if k in raw).encode()
    values = dict(parse_qsl(raw_query, keep_blank_values=True))
    signature = base64.b64decode(values["Signature"])
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, signed, padding.PKCS1v15(), _SIG_ALGS[values["SigAlg"]])
    else:
        key.verify(signature, signed, ec.ECDSA(_SIG_ALGS[values["SigAlg"]]))
    return values


class LogoutSP:
    """A TestSP served over HTTP with a front-channel and, optionally, a SOAP SLO endpoint."""

    def __init__(self, name: str, hub_url: str, hub_cert: x509.Certificate, *, soap: bool = False,
                 front: bool = True, mode: str = "ok", soap_down: bool = False):
        self.sock = listening_socket()
        base = f"http://127.0.0.1:{port_of(self.sock)}"
        self.sp = TestSP(f"{base}/{name}", base)
        self.hub_url, self.hub_cert = hub_url, hub_cert
        self.soap, self.front, self.mode, self.soap_down = soap, front, mode, soap_down
        self.received: list[etree._Element] = []  # the LogoutRequests the hub sent
        self.server, self.thread = serve_in_thread(self._app(), self.sock)

    @property
    def soap_url(self) -> str:
        # a port nothing listens on stands for an SP that is down
        return "http://127.0.0.1:9/soap-sls" if self.soap_down else f"{self.sp.base_url}/soap-sls"

    def metadata(self) -> bytes:
        root = etree.fromstring(self.sp.metadata(), _parser())
        desc = root.find(f"{{{MD}}}SPSSODescriptor")
        slo = desc.find(f"{{{MD}}}SingleLogoutService")
        if self.soap:
            soap = etree.Element(f"{{{MD}}}SingleLogoutService", Binding=SOAP_BINDING, Location=self.soap_url)
            slo.addprevious(soap)
        if not self.front:
            desc.remove(slo)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def _response(self, request: etree._Element) -> etree._Element:
        root = etree.Element(f"{{{SAMLP}}}LogoutResponse", nsmap={"samlp": SAMLP, "saml": SAML})
        root.set("ID", "_" + uuid.uuid4().hex)
        root.set("Version", "2.0")
        root.set("IssueInstant", now_str())
        root.set("Destination", f"{self.hub_url}/idp/slo")
        root.set("InResponseTo", request.get("ID"))
        etree.SubElement(root, f"{{{SAML}}}Issuer").text = self.sp.entity_id
        status = etree.SubElement(root, f"{{{SAMLP}}}Status")
        etree.SubElement(status, f"{{{SAMLP}}}StatusCode", Value=RESPONDER if self.mode == "refuse" else SUCCESS)
        return root

    def _signer(self) -> TestSP:
        if self.mode != "wrong-key":
            return self.sp
        key, cert = make_key_and_cert("not the registered key")
        return TestSP(self.sp.entity_id, self.sp.base_url, key=key, cert=cert)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/sls")
        def front_channel(request: Request) -> Response:
            raw = request.url.query
            values = verify_redirect(raw, self.hub_cert)
            xml = zlib.decompress(base64.b64decode(values["SAMLRequest"]), -15)
            logout = etree.fromstring(xml, _parser())
            self.received.append(logout)
            answer = etree.tostring(self._response(logout))
            relay = values.get("RelayState")
            if self.mode == "unsigned":
                deflated = zlib.compress(answer)[2:-4]
                query = f"SAMLResponse={quote_plus(base64.b64encode(deflated).decode())}"
                if relay is not None:
                    query += f"&RelayState={quote_plus(relay)}"
            else:
                query = self._signer().redirect_query(answer, relay_state=relay, field_name="SAMLResponse")
            return RedirectResponse(f"{self.hub_url}/idp/slo?{query}", status_code=302)

        @app.post("/soap-sls")
        async def back_channel(request: Request) -> Response:
            envelope = etree.fromstring(await request.body(), _parser())
            logout = envelope.find(f"{{{SOAP}}}Body/{{{SAMLP}}}LogoutRequest")
            verify_with_xmlsec(logout, self.hub_cert)
            self.received.append(logout)
            answer = self._response(logout)
            if self.mode != "unsigned":
                self._signer().sign_xml(answer)
            out = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
            etree.SubElement(out, f"{{{SOAP}}}Body").append(answer)
            return Response(etree.tostring(out, xml_declaration=True, encoding="UTF-8"), media_type="text/xml")

        return app
