"""Cross-agency lookups (DESIGN.md flow 2), both sides, as an agency would write them.

Requester side: after SSO the agency keeps the person's bootstrap token (the DiscoveryEPR
attribute of the hub's assertion), asks the hub's JSON discovery API for a service type with a
client assertion signed by its SP key, and fetches each permitted provider's record with the
one-time token the hub issued for that provider.

Provider side: `POST /provide/{name}` accepts a token with `renkei_provider.TokenVerifier`
(hub-signed, for this agency and this endpoint, in time, once) and answers with the record
linked to the local ID inside the token.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agency_demo.config import AgencyConfig, Scenario, provide_name
from kernel.jose import sign_client_assertion
from kernel.xml import SAML_NS, SAMLP_NS, XMLSecurityError, parse_xml, verify_signed
from renkei_provider import (
    AcceptedToken,
    HubMetadataError,
    InMemoryReplayCache,
    ReplayCache,
    TokenVerifier,
    hub_signing_certificates,
)

log = logging.getLogger(__name__)

DISCOVERY_EPR = "urn:liberty:disco:2006-08:DiscoveryEPR"
_WSA = "http://www.w3.org/2005/08/addressing"
_SEC = "urn:liberty:security:2006-08"
_NS = {"saml": SAML_NS, "samlp": SAMLP_NS, "wsa": _WSA, "sec": _SEC}
MAX_ANSWER_BYTES = 1024 * 1024
HTTP_TIMEOUT = 15.0

# Reason codes of the hub's decisions (consent.models.DecisionReason and the pipeline's own),
# explained for the page: (日本語, English).
REASONS: dict[str, tuple[str, str]] = {
    "PERMITTED_BY_CONSENT": ("本人の同意に基づき提供されます", "Permitted: the person consented"),
    "PERMITTED_BY_LAW": (
        "法令に基づき提供されます（本人の同意は不要）",
        "Permitted by law; the person's consent is not required",
    ),
    "LAW_OVERRIDES_CONSENT": (
        "本人は拒否していますが、法令に基づき提供されます（本人に通知されます）",
        "The person said no, but the law overrides it (the person is shown this exchange)",
    ),
    "NO_WHITELIST_ENTRY": (
        "法令上の根拠（別表第二）がないため提供できません",
        "Refused: no legal basis (no whitelist entry) for this exchange",
    ),
    "DENIED_BY_PERSON": (
        "本人が提供を拒否しているため提供できません",
        "Refused: the person's disclosure policy says no",
    ),
    "CONSENT_NOT_GIVEN": (
        "本人の同意が必要ですが、同意がないため提供できません",
        "Refused: this exchange needs the person's consent, and there is none",
    ),
    "PROVIDER_HAS_NO_ENCRYPTION_KEY": (
        "提供機関の暗号化用証明書が登録されていないため提供できません",
        "Refused: the provider registered no encryption certificate for its tokens",
    ),
}


def explain(reason: str) -> tuple[str, str]:
    return REASONS.get(reason, ("判定理由コードをご確認ください", f"Reason code {reason}"))


class LookupFailed(Exception):
    """The query as a whole failed (hub refused or unreachable); `code` is stable."""

    def __init__(self, code: str, message: str, status: int = 502):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class LookupResult:
    """One provider's answer, as the page and the JSON face show it."""

    provider: str
    provider_name: str
    permitted: bool
    reason: str
    decision_id: str
    overridden: bool = False
    record: dict[str, Any] | None = None
    error: str | None = None  # the provider refused the token or could not be reached

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reason_ja(self) -> str:
        return explain(self.reason)[0]

    @property
    def reason_en(self) -> str:
        return explain(self.reason)[1]


# -- requester side ---------------------------------------------------------------------------
def bootstrap_from_response(
    response_xml: str | bytes | None, *, metadata_xml: str | bytes, assertion_id: str | None
) -> str | None:
    """The bootstrap token of the DiscoveryEPR attribute, read from the signed assertion.

    The toolkit has validated the Response; the token is still read only from the element
    that a hub signature covers (checked again with the hub's metadata keys), and only from
    the one assertion the toolkit accepted. None if the assertion carries no DiscoveryEPR.
    """
    if not response_xml:
        return None
    try:
        _, certificates = hub_signing_certificates(metadata_xml)
        root = parse_xml(response_xml, max_bytes=MAX_ANSWER_BYTES)
        assertions = root.findall("saml:Assertion", _NS)
        if root.tag != f"{{{SAMLP_NS}}}Response" or len(assertions) != 1:
            return None
        signed = verify_signed(assertions[0], list(certificates))
    except (XMLSecurityError, HubMetadataError) as exc:
        log.warning("no bootstrap token kept: %s", exc)
        return None
    if assertion_id is not None and signed.get("ID") != assertion_id:
        return None
    tokens = [
        "".join(token.itertext()).strip()
        for attr in signed.iterfind("saml:AttributeStatement/saml:Attribute", _NS)
        if attr.get("Name") == DISCOVERY_EPR
        for token in attr.iterfind(
            "saml:AttributeValue/wsa:EndpointReference/wsa:Metadata/sec:SecurityContext/sec:Token",
            _NS,
        )
    ]
    return tokens[0] if len(tokens) == 1 and tokens[0] else None


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the SP key must be an RSA key")
    return key


async def run_lookup(
    config: AgencyConfig,
    sp_key: rsa.RSAPrivateKey,
    *,
    bootstrap_token: str,
    scenario: Scenario,
    client: httpx.AsyncClient | None = None,
) -> list[LookupResult]:
    """Ask the hub for the scenario's service type, then fetch every permitted record."""
    _title, service_type, task, info_type, _expect = scenario
    assertion = sign_client_assertion(
        sp_key, issuer=config.entity_id, audience=config.discovery_query_url, jti=uuid.uuid4().hex
    )
    body: dict[str, Any] = {
        "service_type": service_type,
        "task": task,
        "person": {"bootstrap_token": bootstrap_token},
    }
    if info_type:
        body["info_type"] = info_type
    own_client = client is None
    client = client or httpx.AsyncClient(timeout=HTTP_TIMEOUT)
    try:
        try:
            answer = await client.post(
                config.discovery_query_url, json=body,
                headers={"Authorization": f"Bearer {assertion}", "Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise LookupFailed("HUB_UNREACHABLE", f"the hub could not be reached: {exc}") from None
        data = _json(answer)
        if answer.status_code != 200 or not isinstance(data.get("offerings"), list):
            code = str(data.get("error") or f"HTTP_{answer.status_code}")
            message = str(data.get("message") or "the hub refused the query")
            raise LookupFailed(code, message)
        results = []
        for offering in data["offerings"]:
            result = LookupResult(
                provider=str(offering.get("provider", "")),
                provider_name=str(offering.get("provider_name") or offering.get("provider", "")),
                permitted=bool(offering.get("permitted")),
                reason=str(offering.get("reason", "")),
                decision_id=str(offering.get("decision_id", "")),
                overridden=bool(offering.get("overridden")),
            )
            if result.permitted:
                await _fetch_record(client, offering, result)
            results.append(result)
        return results
    finally:
        if own_client:
            await client.aclose()


async def _fetch_record(client: httpx.AsyncClient, offering: Mapping[str, Any], result: LookupResult) -> None:
    endpoint, token = offering.get("endpoint"), offering.get("token")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")) or not token:
        result.error = "NO_ENDPOINT_OR_TOKEN"
        return
    try:
        answer = await client.post(endpoint, json={"token": token}, headers={"Accept": "application/json"})
    except httpx.HTTPError:
        result.error = "PROVIDER_UNREACHABLE"
        return
    data = _json(answer)
    if answer.status_code == 200 and isinstance(data.get("record"), dict):
        result.record = data["record"]
    else:
        result.error = str(data.get("error") or f"HTTP_{answer.status_code}")


def _json(answer: httpx.Response) -> dict[str, Any]:
    if len(answer.content) > MAX_ANSWER_BYTES:
        return {}
    try:
        data = answer.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# -- provider side ----------------------------------------------------------------------------
class ProviderTokens:
    """One TokenVerifier per provided endpoint, sharing one replay cache.

    Rebuilt when the hub metadata document changes (a refresh during key rotation); the replay
    cache survives the rebuild, so a token stays usable once across it.
    """

    def __init__(self, config: AgencyConfig, sp_key: rsa.RSAPrivateKey,
                 replay_cache: ReplayCache | None = None):
        self._config = config
        self._key = sp_key
        self.replay_cache = replay_cache or InMemoryReplayCache()
        self._source: str | bytes | None = None
        self._verifiers: dict[str, TokenVerifier] = {}
        self.by_name = {provide_name(urn): urn for urn in config.provides}

    def verifier(self, name: str, metadata_xml: str | bytes) -> TokenVerifier:
        if metadata_xml is not self._source:
            self._verifiers = {}
            self._source = metadata_xml
        verifier = self._verifiers.get(name)
        if verifier is None:
            verifier = TokenVerifier(
                hub_metadata_xml=metadata_xml,
                provider_entity_id=self._config.entity_id,
                endpoint=self._config.provide_url(self.by_name[name]),
                decryption_keys=[self._key],
                replay_cache=self.replay_cache,
            )
            if verifier.hub_entity_id != self._config.idp_entity_id:
                raise HubMetadataError("the hub metadata is for another entity than the configured hub")
            self._verifiers[name] = verifier
        return verifier


def record_for(config: AgencyConfig, accepted: AcceptedToken, name: str) -> dict[str, Any] | None:
    """The agency's record for the token's local ID: the part for this service if it has one,
    else the plain fields — never a part kept for another service (the token permits one)."""
    if accepted.local_id is None:
        return None
    record = config.records.get(accepted.local_id)
    if record is None:
        return None
    for key in (accepted.service_type, name):
        part = record.get(key)
        if isinstance(part, Mapping):
            return dict(part)
    return {k: v for k, v in record.items() if not isinstance(v, Mapping)}


def token_text(body: Any) -> str | None:
    """The token of a `{"token": <base64>}` request body, if the body is shaped so."""
    if not isinstance(body, dict) or not isinstance(body.get("token"), str) or not body["token"]:
        return None
    return body["token"]
