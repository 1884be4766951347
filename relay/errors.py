"""Why the hub refuses an envelope as a whole: one class per reason code, each with its HTTP
status (the JSON face's `error`, the SOAP face's fault string). Messages are safe to return."""
from __future__ import annotations


class RelayRefused(Exception):
    code = "RELAY_REFUSED"
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class EnvelopeMalformed(RelayRefused):
    """The envelope breaks the schema (relay/schema/envelope.xsd) or a limit."""

    code = "ENVELOPE_MALFORMED"


class UnknownSender(RelayRefused):
    """The envelope's From names no registered (live) agency."""

    code = "UNKNOWN_SENDER"
    status = 401


class SignatureRejected(RelayRefused):
    """The envelope is unsigned, or no key registered for its sender verifies it."""

    code = "SIGNATURE_REJECTED"
    status = 401


class ReceiptConflict(RelayRefused):
    """The sender already submitted another envelope under this receipt number (受付番号)."""

    code = "RECEIPT_NUMBER_REUSED"
    status = 409


class NoRoute(RelayRefused):
    """No route for the envelope's (process type, message type)."""

    code = "NO_ROUTE"
    status = 404


class DestinationUnresolved(RelayRefused):
    """A logical destination resolves to no registered agency or no endpoint in the service registry."""

    code = "DESTINATION_UNRESOLVED"
    status = 422


class UnknownPerson(RelayRefused):
    """The Person attribute is no pseudonym of the sender's."""

    code = "UNKNOWN_PERSON"
    status = 404


class HubUnavailable(RelayRefused):
    """The hub's database failed; nothing was written, nothing will be sent."""

    code = "HUB_UNAVAILABLE"
    status = 503


class NotFound(RelayRefused):
    code = "NOT_FOUND"
    status = 404
