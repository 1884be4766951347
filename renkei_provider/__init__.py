"""What a provider agency imports to accept a Renkei hub token (docs/discovery.md).

    from renkei_provider import TokenVerifier, TokenRejected

    verifier = TokenVerifier(
        hub_metadata_xml=hub_metadata,            # {hub}/idp/metadata, pinned or fetched over TLS
        provider_entity_id="https://city-a.example.jp/sp",
        endpoint="https://city-a.example.jp/provide/resident-record",
        decryption_keys=[sp_private_key],         # the key behind the encryption certificate
    )
    try:
        accepted = verifier.verify(token)          # XML, or base64 of it; accepted once only
    except TokenRejected as exc:
        ...                                        # exc.code, exc.status, str(exc): safe to return
    record = my_records[accepted.local_id]
    reporter.record(Disclosure.of(accepted))     # tell the hub what was disclosed (reporter.py)

Depends only on the hub's XML layer (`kernel.xml`: lxml and cryptography) and joserfc, not on
the hub's database, settings or web code.
"""

from kernel.xml import InMemoryReplayCache, ReplayCache, SqliteReplayCache
from renkei_provider.envelope_receiver import EnvelopeReceiver, Received, SeenStore, SqliteSeenStore
from renkei_provider.errors import (
    TokenAudienceMismatch,
    TokenExpired,
    TokenIssuerMismatch,
    TokenMalformed,
    TokenNotForThisEndpoint,
    TokenRejected,
    TokenReplayed,
    TokenSignatureInvalid,
    TokenUndecryptable,
)
from renkei_provider.reporter import Disclosure, DisclosureReporter, ReportResult
from renkei_provider.verifier import (
    AcceptedToken,
    HubMetadataError,
    TokenVerifier,
    hub_signing_certificates,
)

__all__ = [
    "AcceptedToken",
    "Disclosure",
    "DisclosureReporter",
    "EnvelopeReceiver",
    "HubMetadataError",
    "InMemoryReplayCache",
    "Received",
    "ReplayCache",
    "ReportResult",
    "SeenStore",
    "SqliteReplayCache",
    "SqliteSeenStore",
    "TokenAudienceMismatch",
    "TokenExpired",
    "TokenIssuerMismatch",
    "TokenMalformed",
    "TokenNotForThisEndpoint",
    "TokenRejected",
    "TokenReplayed",
    "TokenSignatureInvalid",
    "TokenUndecryptable",
    "TokenVerifier",
    "hub_signing_certificates",
]
