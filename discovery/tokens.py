"""Tokens of the discovery flow (docs/discovery.md); the bootstrap token that names the person
is the pseudonym room's (`pseudonym.bootstrap`).

- The provider token: a hub-signed SAML assertion for one provider, its subject encrypted so
  that only that provider can read its own pseudonym.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from lxml import etree

from kernel.keys import SigningKey
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

# The key role that signs provider tokens and the discovery service's SOAP answers.
DISCOVERY_ROLE = "discovery"

TOKEN_LIFETIME = timedelta(minutes=5)


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
    sign_enveloped(a, signer.private_key, certificate=signer.certificate, algorithm=signer.xml_algorithm)
    return etree.tostring(a, encoding="UTF-8")
