"""The portal as a SAML service provider of the hub's own IdP (SAML profiles §4.1, §4.4).

The portal is registered from its own metadata like any agency, asks for logins with signed
AuthnRequests over HTTP-Redirect, reads only the assertion it receives (its own pairwise
pseudonym of the person) through the ground's assertion consumer, and logs out by Single
Logout. Nothing here reads the IdP's sessions.
"""
from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from lxml import etree

from kernel.keys import SigningKey
from kernel.xml import (
    SAML_NS,
    SAMLP_NS,
    XMLSecurityError,
    new_id,
    parse_xml,
    saml,
    sign_redirect_query,
    validate_response,
    verify_redirect_query,
    xs_datetime,
)

PORTAL_ROLE = "portal"  # the key-store role of the portal's SP key (signing and encryption)
PORTAL_CLASS = "portal"


@dataclass(frozen=True)
class PortalSP:
    """The portal's SAML identity: entity ID, endpoints, and the hub IdP it trusts."""

    base_url: str
    idp_entity_id: str

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/") + "/portal"

    @property
    def entity_id(self) -> str:
        return self.root + "/metadata"

    @property
    def acs_url(self) -> str:
        return self.root + "/acs"

    @property
    def slo_url(self) -> str:
        return self.root + "/slo"

    @property
    def idp_sso_url(self) -> str:
        return self.base_url.rstrip("/") + "/idp/sso"

    @property
    def idp_slo_url(self) -> str:
        return self.base_url.rstrip("/") + "/idp/slo"


def metadata(sp: PortalSP, key: SigningKey) -> bytes:
    """The portal's SAML metadata (metadata §2.4.4): signed requests, POST ACS, Redirect SLO."""
    md = saml.MD_NS
    root = etree.Element(f"{{{md}}}EntityDescriptor", nsmap={"md": md, "ds": saml.DS_NS},
                         entityID=sp.entity_id)
    descriptor = etree.SubElement(root, f"{{{md}}}SPSSODescriptor", AuthnRequestsSigned="true",
                                  WantAssertionsSigned="true",
                                  protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol")
    cert = base64.b64encode(key.cert_der).decode()
    for use in ("signing", "encryption"):
        kd = etree.SubElement(descriptor, f"{{{md}}}KeyDescriptor", use=use)
        x509 = etree.SubElement(etree.SubElement(etree.SubElement(
            kd, f"{{{saml.DS_NS}}}KeyInfo"), f"{{{saml.DS_NS}}}X509Data"), f"{{{saml.DS_NS}}}X509Certificate")
        x509.text = cert
    etree.SubElement(descriptor, f"{{{md}}}SingleLogoutService", Binding=saml.BINDING_REDIRECT,
                     Location=sp.slo_url)
    etree.SubElement(descriptor, f"{{{md}}}NameIDFormat").text = saml.NAMEID_PERSISTENT
    etree.SubElement(descriptor, f"{{{md}}}AssertionConsumerService", Binding=saml.BINDING_POST,
                     Location=sp.acs_url, index="0", isDefault="true")
    org = etree.SubElement(root, f"{{{md}}}Organization")
    for tag, text in (("OrganizationName", "Renkei portal"), ("OrganizationDisplayName", "マイ連携ポータル"),
                      ("OrganizationURL", sp.root + "/")):
        etree.SubElement(org, f"{{{md}}}{tag}", {"{http://www.w3.org/XML/1998/namespace}lang": "ja"}).text = text
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _redirect(url: str, field: str, xml: bytes, relay_state: str | None, key: SigningKey) -> str:
    encoded = base64.b64encode(zlib.compress(xml)[2:-4]).decode()
    params = [(field, encoded)] + ([("RelayState", relay_state)] if relay_state else [])
    return f"{url}?{sign_redirect_query(params, key.private_key)}"


def login_redirect(sp: PortalSP, key: SigningKey, *, now: datetime, relay_state: str | None = None,
                   force_authn: bool = False) -> tuple[str, str]:
    """(request ID, URL): a signed AuthnRequest over HTTP-Redirect (core §3.4.1)."""
    request_id = new_id()
    root = etree.Element(f"{{{SAMLP_NS}}}AuthnRequest", nsmap={"samlp": SAMLP_NS, "saml": SAML_NS},
                         ID=request_id, Version="2.0", IssueInstant=xs_datetime(now),
                         Destination=sp.idp_sso_url, AssertionConsumerServiceURL=sp.acs_url,
                         ProtocolBinding=saml.BINDING_POST)
    if force_authn:
        root.set("ForceAuthn", "true")
    etree.SubElement(root, f"{{{SAML_NS}}}Issuer").text = sp.entity_id
    etree.SubElement(root, f"{{{SAMLP_NS}}}NameIDPolicy", Format=saml.NAMEID_PERSISTENT, AllowCreate="true")
    return request_id, _redirect(sp.idp_sso_url, "SAMLRequest", etree.tostring(root), relay_state, key)


def read_login(sp: PortalSP, saml_response: str, *, idp_keys, pending_ids, replay_cache, now: datetime,
               skew: timedelta, max_bytes: int):
    """The validated assertion of a Response to one of this browser's pending requests."""
    try:
        xml = base64.b64decode(saml_response, validate=True)
    except ValueError:
        raise XMLSecurityError("SAMLResponse is not base64") from None
    return validate_response(xml, replay_cache=replay_cache, idp_entity_id=sp.idp_entity_id,
                             idp_keys=idp_keys, audience=sp.entity_id, acs_url=sp.acs_url,
                             pending_request_ids=pending_ids, now=now, skew=skew, max_bytes=max_bytes)


def logout_redirect(sp: PortalSP, key: SigningKey, *, name_id: str, session_index: str | None,
                    now: datetime) -> tuple[str, str]:
    """(request ID, URL): a signed LogoutRequest to the IdP (core §3.7.1, bindings §3.4)."""
    request_id = new_id()
    root = etree.Element(f"{{{SAMLP_NS}}}LogoutRequest", nsmap={"samlp": SAMLP_NS, "saml": SAML_NS},
                         ID=request_id, Version="2.0", IssueInstant=xs_datetime(now),
                         Destination=sp.idp_slo_url)
    etree.SubElement(root, f"{{{SAML_NS}}}Issuer").text = sp.entity_id
    etree.SubElement(root, f"{{{SAML_NS}}}NameID", Format=saml.NAMEID_PERSISTENT,
                     SPNameQualifier=sp.entity_id, NameQualifier=sp.idp_entity_id).text = name_id
    if session_index:
        etree.SubElement(root, f"{{{SAMLP_NS}}}SessionIndex").text = session_index
    return request_id, _redirect(sp.idp_slo_url, "SAMLRequest", etree.tostring(root), None, key)


def read_logout_response(sp: PortalSP, raw_query: str, *, idp_keys, max_bytes: int) -> tuple[str | None, bool]:
    """(InResponseTo, success) of the IdP's signed LogoutResponse over HTTP-Redirect."""
    from kernel.xml import inflate_redirect

    fields = verify_redirect_query(raw_query, idp_keys)
    if "SAMLResponse" not in fields:
        raise XMLSecurityError("not a LogoutResponse")
    root = parse_xml(inflate_redirect(fields["SAMLResponse"], max_bytes=max_bytes), max_bytes=max_bytes)
    if root.tag != f"{{{SAMLP_NS}}}LogoutResponse" or root.get("Destination") != sp.slo_url:
        raise XMLSecurityError("not a LogoutResponse for this portal")
    issuer = root.find(f"{{{SAML_NS}}}Issuer")
    if issuer is None or (issuer.text or "").strip() != sp.idp_entity_id:
        raise XMLSecurityError("the LogoutResponse comes from another party")
    status = root.find(f"{{{SAMLP_NS}}}Status/{{{SAMLP_NS}}}StatusCode")
    return root.get("InResponseTo"), status is not None and status.get("Value") == saml.SUCCESS
