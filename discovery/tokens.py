"""Tokens of the discovery flow (docs/discovery.md).

- The bootstrap token: an HMAC-sealed statement "agency R knows this person as p_R until exp",
  put into SSO assertions inside ID-WSF's DiscoveryEPR attribute; only the hub can check it.
- The provider token: a hub-signed SAML assertion for one provider, its subject encrypted so
  that only that provider can read its own pseudonym.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from cryptography import x509
from lxml import etree

from kernel.keys import KeyStore, SigningKey
from kernel.xml import SAML_NS, encrypt_element, new_id, sign_enveloped, xs_datetime

# The token's vocabulary is the provider module's contract (docs/discovery.md): one definition.
from renkei_provider.verifier import (
    ATTR_DECISION_ID,
    ATTR_INFO_TYPE,
    ATTR_LOCAL_ID,
    ATTR_REQUESTER,
    ATTR_SERVICE_TYPE,
    ATTR_TASK,
    ATTR_WHITELIST_ENTRY,
    ATTRNAME_URI,
    BEARER,
    NAMEID_PERSISTENT,
)

BOOTSTRAP_SECRET = "bootstrap"
DISCOVERY_EPR = "urn:liberty:disco:2006-08:DiscoveryEPR"
DISCO_NS = "urn:liberty:disco:2006-08"
WSA_NS = "http://www.w3.org/2005/08/addressing"
SEC_NS = "urn:liberty:security:2006-08"
SBF_NS = "urn:liberty:sb"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
TOKEN_USAGE = "urn:liberty:security:tokenusage:2006-08:SecurityToken"

TOKEN_LIFETIME = timedelta(minutes=5)


class BootstrapInvalid(ValueError):
    """The bootstrap token is not the hub's, has expired, or was issued to another agency."""


@dataclass(frozen=True)
class Bootstrap:
    requester: str
    pseudonym: str
    expires: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_bootstrap(*, secret: bytes, audience: str, requester: str, pseudonym: str, expires: int) -> str:
    """`rk1.<payload>.<mac>`: says only what the requester already knows (its own pseudonym)."""
    payload = _b64url(json.dumps(
        {"aud": audience, "req": requester, "sub": pseudonym, "exp": expires}, separators=(",", ":")
    ).encode())
    mac = hmac.new(secret, f"rk1.{payload}".encode(), hashlib.sha256).digest()
    return f"rk1.{payload}.{_b64url(mac)}"


def read_bootstrap(token: str, *, secret: bytes, audience: str, requester: str, now: int) -> Bootstrap:
    """Check a bootstrap token's seal, audience, expiry and that `requester` is its holder."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != "rk1" or len(token) > 2048:
        raise BootstrapInvalid("not a Renkei bootstrap token")
    expected = hmac.new(secret, f"rk1.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        given = _unb64url(parts[2])
        claims = json.loads(_unb64url(parts[1]))
    except (ValueError, json.JSONDecodeError):
        raise BootstrapInvalid("not a Renkei bootstrap token") from None
    if not hmac.compare_digest(expected, given):
        raise BootstrapInvalid("the bootstrap token's seal does not verify")
    if claims.get("aud") != audience:
        raise BootstrapInvalid("the bootstrap token is for another service")
    if claims.get("req") != requester:
        raise BootstrapInvalid("the bootstrap token was issued to another agency")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
        raise BootstrapInvalid("the bootstrap token has expired")
    return Bootstrap(claims["req"], str(claims["sub"]), claims["exp"])


def bootstrap_secret(keys: KeyStore) -> bytes:
    """The hub's bootstrap-token secret, read once per process."""
    return _bootstrap_secret(str(keys.directory))


@lru_cache(maxsize=4)
def _bootstrap_secret(keys_dir: str) -> bytes:
    keys = KeyStore(keys_dir)
    return keys.load_secret(BOOTSTRAP_SECRET, keys.ensure_secret(BOOTSTRAP_SECRET))


def discovery_epr_attribute(*, soap_url: str, provider_id: str, token: str) -> etree._Element:
    """The DiscoveryEPR attribute (ID-WSF DS 2.0 §4.4, ID-WSF SAML profile): where and how to
    ask the discovery service about this person."""
    attr = etree.Element(
        f"{{{SAML_NS}}}Attribute",
        {"Name": DISCOVERY_EPR, "NameFormat": ATTRNAME_URI, "FriendlyName": "DiscoveryEPR"},
        nsmap={"saml": SAML_NS},
    )
    value = etree.SubElement(attr, f"{{{SAML_NS}}}AttributeValue")
    epr = etree.SubElement(value, f"{{{WSA_NS}}}EndpointReference",
                           nsmap={"wsa": WSA_NS, "disco": DISCO_NS, "sec": SEC_NS, "sbf": SBF_NS})
    etree.SubElement(epr, f"{{{WSA_NS}}}Address").text = soap_url
    md = etree.SubElement(epr, f"{{{WSA_NS}}}Metadata")
    etree.SubElement(md, f"{{{DISCO_NS}}}Abstract").text = "Renkei discovery service"
    etree.SubElement(md, f"{{{DISCO_NS}}}ProviderID").text = provider_id
    etree.SubElement(md, f"{{{DISCO_NS}}}ServiceType").text = DISCO_NS
    ctx = etree.SubElement(md, f"{{{SEC_NS}}}SecurityContext")
    etree.SubElement(ctx, f"{{{DISCO_NS}}}SecurityMechID").text = "urn:liberty:security:2005-02:TLS:Bearer"
    etree.SubElement(ctx, f"{{{SEC_NS}}}Token", usage=TOKEN_USAGE).text = token
    return attr


@dataclass(frozen=True)
class ProviderTokenFacts:
    """Everything one provider token states."""

    hub_entity_id: str
    provider: str
    endpoint: str
    provider_pseudonym: str
    requester: str
    task: str
    info_types: tuple[str, ...]
    service_type: str
    whitelist_entry: str
    decision_id: str
    local_id: str | None
    now: datetime
    skew: timedelta = timedelta(seconds=60)


_saml_time = xs_datetime


def _attribute(parent: etree._Element, name: str, values: list[str]) -> etree._Element:
    attr = etree.SubElement(parent, f"{{{SAML_NS}}}Attribute", Name=name, NameFormat=ATTRNAME_URI)
    for v in values:
        etree.SubElement(attr, f"{{{SAML_NS}}}AttributeValue").text = v
    return attr


def provider_token(facts: ProviderTokenFacts, *, signer: SigningKey, provider_cert: x509.Certificate) -> bytes:
    """The signed assertion a provider accepts once, within five minutes, as docs/discovery.md says."""
    f = facts
    expires = _saml_time(f.now + TOKEN_LIFETIME)
    a = etree.Element(
        f"{{{SAML_NS}}}Assertion",
        {"ID": new_id(), "Version": "2.0", "IssueInstant": _saml_time(f.now)},
        nsmap={"saml": SAML_NS},
    )
    etree.SubElement(a, f"{{{SAML_NS}}}Issuer").text = f.hub_entity_id
    subject = etree.SubElement(a, f"{{{SAML_NS}}}Subject")
    name_id = etree.Element(
        f"{{{SAML_NS}}}NameID",
        {"Format": NAMEID_PERSISTENT, "NameQualifier": f.hub_entity_id, "SPNameQualifier": f.provider},
        nsmap={"saml": SAML_NS},
    )
    name_id.text = f.provider_pseudonym
    subject.append(encrypt_element(name_id, provider_cert))
    sc = etree.SubElement(subject, f"{{{SAML_NS}}}SubjectConfirmation", Method=BEARER)
    etree.SubElement(sc, f"{{{SAML_NS}}}SubjectConfirmationData", NotOnOrAfter=expires, Recipient=f.endpoint)
    cond = etree.SubElement(a, f"{{{SAML_NS}}}Conditions", NotBefore=_saml_time(f.now - f.skew),
                            NotOnOrAfter=expires)
    etree.SubElement(etree.SubElement(cond, f"{{{SAML_NS}}}AudienceRestriction"),
                     f"{{{SAML_NS}}}Audience").text = f.provider
    etree.SubElement(cond, f"{{{SAML_NS}}}OneTimeUse")
    stmt = etree.SubElement(a, f"{{{SAML_NS}}}AttributeStatement")
    _attribute(stmt, ATTR_REQUESTER, [f.requester])
    _attribute(stmt, ATTR_TASK, [f.task])
    _attribute(stmt, ATTR_INFO_TYPE, list(f.info_types))
    _attribute(stmt, ATTR_SERVICE_TYPE, [f.service_type])
    _attribute(stmt, ATTR_WHITELIST_ENTRY, [f.whitelist_entry])
    _attribute(stmt, ATTR_DECISION_ID, [f.decision_id])
    if f.local_id is not None:
        local = etree.Element(f"{{{SAML_NS}}}Attribute", Name=ATTR_LOCAL_ID, NameFormat=ATTRNAME_URI,
                              nsmap={"saml": SAML_NS})
        etree.SubElement(local, f"{{{SAML_NS}}}AttributeValue").text = f.local_id
        stmt.append(encrypt_element(local, provider_cert,
                                    wrapper_tag=f"{{{SAML_NS}}}EncryptedAttribute"))
    sign_enveloped(a, signer.private_key, certificate=signer.certificate)
    return etree.tostring(a, encoding="UTF-8")
