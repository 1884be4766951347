"""Why a provider token was refused.

Every error carries a stable `code` (for a provider's JSON answer and its logs) and a fixed
message. Neither ever repeats anything the token says: a token names a person (encrypted) and
a decision, and an error message may travel back to whoever presented the token.
"""

from __future__ import annotations


class TokenRejected(Exception):
    """The token is not acceptable here. `str(error)` is safe to return to the presenter."""

    code = "TOKEN_REJECTED"
    status = 400
    default_message = "the token was refused"

    def __init__(self, message: str | None = None):
        super().__init__(message or self.default_message)


class TokenMalformed(TokenRejected):
    """Not a SAML assertion of the shape docs/discovery.md fixes (or not base64/XML at all)."""

    code = "TOKEN_MALFORMED"
    default_message = "the token is not a well-formed Renkei provider token"


class TokenSignatureInvalid(TokenRejected):
    """No valid signature by a key pinned from the hub's metadata over the assertion read."""

    code = "TOKEN_SIGNATURE_INVALID"
    status = 401
    default_message = "the token is not signed by the hub"


class TokenIssuerMismatch(TokenRejected):
    """Signed by a hub key but issued in another name than the hub's entity ID."""

    code = "TOKEN_ISSUER_MISMATCH"
    status = 401
    default_message = "the token was not issued by the hub"


class TokenAudienceMismatch(TokenRejected):
    """The token is addressed to another provider (Audience or the subject's SPNameQualifier)."""

    code = "TOKEN_AUDIENCE_MISMATCH"
    status = 403
    default_message = "the token is addressed to another provider"


class TokenNotForThisEndpoint(TokenRejected):
    """SubjectConfirmationData Recipient is not the endpoint the token was presented at."""

    code = "TOKEN_NOT_FOR_THIS_ENDPOINT"
    status = 403
    default_message = "the token is for another endpoint of this provider"


class TokenExpired(TokenRejected):
    """Outside the token's time window (NotBefore / NotOnOrAfter, with the allowed skew)."""

    code = "TOKEN_EXPIRED"
    status = 401
    default_message = "the token is outside its validity period"


class TokenReplayed(TokenRejected):
    """The token was already accepted once (OneTimeUse)."""

    code = "TOKEN_REPLAYED"
    status = 409
    default_message = "the token was already used"


class TokenUndecryptable(TokenRejected):
    """The subject or the local-ID attribute cannot be decrypted with this provider's keys."""

    code = "TOKEN_UNDECRYPTABLE"
    status = 403
    default_message = "the token's encrypted parts cannot be decrypted with this provider's key"
