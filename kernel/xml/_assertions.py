"""Consuming SAML assertions safely (SAML profiles §4.1.4.3, core §2.5, §2.7.2): the SP side.

The portal's SP, the discovery service (staff assertions, bootstrap tokens) and the
provider token module read assertions only through `validate_response` / `validate_assertion`,
which enforce what DESIGN.md's "Hostile XML" invariant lists: a signature by a pinned key over
the very assertion read, exactly one assertion, audience, recipient, destination, time window,
InResponseTo, and a replay cache of assertion IDs.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lxml import etree

from kernel.xml._dsig import SAML_NS, SAMLP_NS, XMLSecurityError, parse_xml, verify_signed
from kernel.xml._replay import ReplayCache
from kernel.xml._time import read_xs_datetime, utcnow

_NS = {"saml": SAML_NS, "samlp": SAMLP_NS}
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"


class AssertionRejected(XMLSecurityError):
    """The assertion or response breaks a rule; each subclass names the rule."""


class NotExactlyOneAssertion(AssertionRejected):
    """A response must carry exactly one (unencrypted) assertion, and nothing that looks like one."""


class StatusNotSuccess(AssertionRejected):
    """The response's top-level status is not Success (core §3.2.2.2)."""


class IssuerMismatch(AssertionRejected):
    """The Issuer is not the identity provider whose keys were trusted."""


class DestinationMismatch(AssertionRejected):
    """Response@Destination is not this endpoint (bindings §3.5.5.2)."""


class RecipientMismatch(AssertionRejected):
    """SubjectConfirmationData@Recipient is not this endpoint (profiles §4.1.4.3)."""


class AudienceMismatch(AssertionRejected):
    """No AudienceRestriction names this party (core §2.5.1.4)."""


class AssertionExpired(AssertionRejected):
    """Outside NotBefore / NotOnOrAfter, allowing for the configured clock skew."""


class InResponseToMismatch(AssertionRejected):
    """The response answers no request that this party has pending (profiles §4.1.4.3)."""


class ReplayedAssertion(AssertionRejected):
    """This assertion ID was already consumed (profiles §4.1.4.5)."""


@dataclass(frozen=True)
class ValidatedAssertion:
    """What a verified assertion says, read from the signed element only."""

    assertion_id: str
    issuer: str
    name_id: str
    name_id_format: str | None
    sp_name_qualifier: str | None
    not_on_or_after: datetime
    authn_context: str | None
    session_index: str | None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    element: etree._Element | None = field(default=None, compare=False, repr=False)


def _time(value: str | None, what: str) -> datetime:
    try:
        return read_xs_datetime(value)
    except ValueError as exc:
        raise AssertionRejected(f"{what}: {exc}") from None


def _text(el: etree._Element | None) -> str | None:
    return "".join(el.itertext()).strip() or None if el is not None else None


def validate_response(
    xml: bytes,
    *,
    replay_cache: ReplayCache | None,
    idp_entity_id: str,
    idp_keys: Sequence,
    audience: str,
    acs_url: str,
    pending_request_ids: Collection[str],
    now: datetime | None = None,
    skew: timedelta = timedelta(seconds=60),
    max_bytes: int = 262_144,
) -> ValidatedAssertion:
    """Validate a samlp:Response from the HTTP-POST binding and return its one assertion."""
    root = parse_xml(xml, max_bytes=max_bytes)
    if root.tag != f"{{{SAMLP_NS}}}Response" or root.get("Version") != "2.0":
        raise AssertionRejected("the message is not a SAML 2.0 samlp:Response")
    if root.find("{http://www.w3.org/2000/09/xmldsig#}Signature") is not None:
        root = verify_signed(root, idp_keys)
    if root.get("Destination") != acs_url:
        raise DestinationMismatch("Response Destination is not this AssertionConsumerService")
    issuer = _text(root.find("saml:Issuer", _NS))
    if issuer is not None and issuer != idp_entity_id:
        raise IssuerMismatch("the Response was issued by another party")
    status = root.find("samlp:Status/samlp:StatusCode", _NS)
    if status is None or status.get("Value") != SUCCESS:
        value = status.get("Value") if status is not None else "none"
        raise StatusNotSuccess(f"the identity provider answered {value}")
    in_response_to = root.get("InResponseTo")
    if in_response_to is None or in_response_to not in pending_request_ids:
        raise InResponseToMismatch("the Response answers no pending request of this session")
    if root.findall(".//saml:EncryptedAssertion", _NS):
        raise NotExactlyOneAssertion("encrypted assertions are not accepted here")
    everywhere = list(root.iter(f"{{{SAML_NS}}}Assertion"))
    direct = root.findall("saml:Assertion", _NS)
    if len(everywhere) != 1 or len(direct) != 1:
        raise NotExactlyOneAssertion(f"expected exactly one Assertion, found {len(everywhere)}")
    return validate_assertion(
        direct[0],
        replay_cache=replay_cache,
        idp_entity_id=idp_entity_id,
        idp_keys=idp_keys,
        audience=audience,
        recipient=acs_url,
        in_response_to=in_response_to,
        now=now,
        skew=skew,
    )


def validate_assertion(
    assertion: etree._Element | bytes,
    *,
    replay_cache: ReplayCache | None,
    idp_entity_id: str,
    idp_keys: Sequence,
    audience: str,
    recipient: str | None = None,
    in_response_to: str | None = None,
    now: datetime | None = None,
    skew: timedelta = timedelta(seconds=60),
) -> ValidatedAssertion:
    """Verify a signed saml:Assertion and enforce its conditions; return what it says.

    The signature is required and must be the assertion's own: the returned facts are read
    from the element the signature covers, never from the surrounding document.
    """
    if isinstance(assertion, bytes):
        assertion = parse_xml(assertion)
    if assertion.tag != f"{{{SAML_NS}}}Assertion" or assertion.get("Version") != "2.0":
        raise AssertionRejected("not a SAML 2.0 saml:Assertion")
    a = verify_signed(assertion, idp_keys)
    now = now or utcnow()
    if _text(a.find("saml:Issuer", _NS)) != idp_entity_id:
        raise IssuerMismatch("the Assertion was issued by another party")
    subject = a.find("saml:Subject", _NS)
    name_ids = subject.findall("saml:NameID", _NS) if subject is not None else []
    if len(name_ids) != 1 or not _text(name_ids[0]):
        raise AssertionRejected("the Subject must carry exactly one non-empty NameID")
    conditions = a.findall("saml:Conditions", _NS)
    if len(conditions) != 1:
        raise AssertionRejected("the Assertion must carry exactly one Conditions element")
    cond = conditions[0]
    not_before = cond.get("NotBefore")
    if not_before and _time(not_before, "NotBefore") > now + skew:
        raise AssertionExpired("the Assertion is not valid yet")
    not_on_or_after = _time(cond.get("NotOnOrAfter"), "Conditions NotOnOrAfter")
    if not_on_or_after <= now - skew:
        raise AssertionExpired("the Assertion has expired")
    restrictions = cond.findall("saml:AudienceRestriction", _NS)
    if not restrictions or any(
        audience not in [_text(x) for x in r.findall("saml:Audience", _NS)] for r in restrictions
    ):
        raise AudienceMismatch("the Assertion is addressed to another audience")
    _check_bearer(subject, recipient=recipient, in_response_to=in_response_to, now=now, skew=skew)
    # replay_cache=None: the caller reads the assertion as evidence (a staff member's SSO
    # assertion cited in a query), not as a one-time login
    if replay_cache is not None and not replay_cache.first_use(
        a.get("ID"), expires_at=not_on_or_after + skew, now=now
    ):
        raise ReplayedAssertion("this Assertion was already used")
    authn = a.find("saml:AuthnStatement", _NS)
    attributes: dict[str, list[str]] = {}
    for attr in a.iterfind("saml:AttributeStatement/saml:Attribute", _NS):
        values = [_text(v) or "" for v in attr.findall("saml:AttributeValue", _NS)]
        attributes.setdefault(attr.get("Name", ""), []).extend(values)
    return ValidatedAssertion(
        assertion_id=a.get("ID"),
        issuer=idp_entity_id,
        name_id=_text(name_ids[0]),
        name_id_format=name_ids[0].get("Format"),
        sp_name_qualifier=name_ids[0].get("SPNameQualifier"),
        not_on_or_after=not_on_or_after,
        authn_context=_text(a.find(".//saml:AuthnContextClassRef", _NS)),
        session_index=authn.get("SessionIndex") if authn is not None else None,
        attributes=attributes,
        element=a,
    )


def _check_bearer(subject, *, recipient: str | None, in_response_to: str | None, now: datetime,
                  skew: timedelta) -> None:
    """At least one bearer SubjectConfirmation must fit (profiles §4.1.4.2, §4.1.4.3)."""
    if recipient is None and in_response_to is None:
        return
    reasons = []
    for sc in subject.findall("saml:SubjectConfirmation", _NS):
        if sc.get("Method") != BEARER:
            continue
        data = sc.find("saml:SubjectConfirmationData", _NS)
        if data is None:
            reasons.append(AssertionRejected("bearer confirmation without data"))
            continue
        if recipient is not None and data.get("Recipient") != recipient:
            reasons.append(RecipientMismatch("SubjectConfirmationData Recipient is not this endpoint"))
            continue
        if in_response_to is not None and data.get("InResponseTo") != in_response_to:
            reasons.append(InResponseToMismatch("SubjectConfirmationData answers another request"))
            continue
        if _time(data.get("NotOnOrAfter"), "SubjectConfirmationData NotOnOrAfter") <= now - skew:
            reasons.append(AssertionExpired("the bearer confirmation has expired"))
            continue
        return
    raise reasons[0] if reasons else AssertionRejected("no bearer SubjectConfirmation")
