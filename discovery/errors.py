"""Why a discovery query as a whole is refused: one class per reason code.

Each class carries its stable `code` (the JSON API's `error`, the SOAP face's `lu:Status`
code) and its HTTP `status` for the JSON face. The message is safe to return to the requester.
docs/discovery.md lists the codes; the faces map `DiscoveryRefused` in one place each.
"""
from __future__ import annotations


class DiscoveryRefused(Exception):
    """The query as a whole is refused; `code` is stable, the message safe for the requester."""

    code = "DISCOVERY_REFUSED"
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BootstrapTokenRejected(DiscoveryRefused):
    """The bootstrap token from the person's SSO assertion (ID-WSF DS §4.1, DiscoveryEPR) is
    expired, forged, or issued for another requester or audience."""

    code = "BOOTSTRAP_TOKEN_REJECTED"
    status = 403


class PersonMismatch(DiscoveryRefused):
    """The pseudonym given beside a bootstrap token is not the one the token names."""

    code = "PERSON_MISMATCH"
    status = 403


class PersonNotNamed(DiscoveryRefused):
    """Neither a bootstrap token nor a pseudonym with a staff assertion names the person
    (docs/discovery.md, "naming the person")."""

    code = "PERSON_NOT_NAMED"


class UnknownPerson(DiscoveryRefused):
    """No person has that pseudonym at the requester (SAML core §3.8: UnknownPrincipal)."""

    code = "UNKNOWN_PERSON"
    status = 404


class StaffAssertionRejected(DiscoveryRefused):
    """The staff member's SSO assertion fails the hub's checks (SAML profiles §4.1.4:
    signature by the hub's IdP key, audience the requester, time window)."""

    code = "STAFF_ASSERTION_REJECTED"
    status = 403


class UnknownServiceType(DiscoveryRefused):
    """No service type with that URN is registered (ID-WSF DS §3.3, ServiceType)."""

    code = "UNKNOWN_SERVICE_TYPE"
    status = 404


class UnknownInfoType(DiscoveryRefused):
    """The service type does not disclose that information type (特定個人情報)."""

    code = "UNKNOWN_INFO_TYPE"


class UnknownTarget(DiscoveryRefused):
    """A NameIDMappingRequest names an agency that is not registered (SAML core §3.8)."""

    code = "UNKNOWN_TARGET"
    status = 404


class LogWriteFailed(DiscoveryRefused):
    """The decision could not be logged, so nothing was disclosed (DESIGN.md, "Log before
    disclose": if logging fails, the request fails)."""

    code = "LOG_WRITE_FAILED"
    status = 503

    def __init__(self, message: str = "the decision could not be logged; nothing was disclosed"):
        super().__init__(message)


class InvalidQuery(DiscoveryRefused):
    """A value of the query cannot be recorded as it is (too long, control characters): the
    requester's mistake, refused before anything is decided."""

    code = "INVALID_QUERY"
    status = 400


class HubUnavailable(DiscoveryRefused):
    """The hub's database failed on something other than the log write (a lost connection, a
    conflicting row); nothing was decided or disclosed. Only LogWriteFailed says the log failed."""

    code = "TEMPORARILY_UNAVAILABLE"
    status = 503

    def __init__(self, message: str = "the hub cannot answer right now; nothing was disclosed, try again"):
        super().__init__(message)
