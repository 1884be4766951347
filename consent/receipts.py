"""Consent receipts: Kantara Initiative Consent Receipt Specification v1.1, signed as a JWS.

Each change of a person's disclosure policy yields one receipt listing the rules in force,
signed with the hub's `consent` role key (RS256). Verification trusts only keys given to it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from consent.errors import ReceiptInvalid
from consent.models import CLASS_PREFIX, Effect, PolicyRuleIn
from kernel.jose import JwsInvalid, sign_jws, verify_jws
from kernel.keys import KeyStore, SigningKey

KANTARA_VERSION = "KI-CR-v1.1.0"
KEY_ROLE = "consent"
ALGORITHM = "RS256"  # RFC 7518 §3.3; the only one a receipt may carry
MAX_RECEIPT_CHARS = 64 * 1024
# Kantara CR v1.1 §4: the fields every receipt carries
REQUIRED_FIELDS = (
    "version",
    "jurisdiction",
    "consentTimestamp",
    "collectionMethod",
    "consentReceiptID",
    "piiPrincipalId",
    "piiControllers",
    "policyUrl",
    "services",
    "sensitive",
    "spiCat",
)
# 特定個人情報 (My Number-linked personal information) is sensitive by law
SENSITIVE_CATEGORY = "特定個人情報"
# Kantara CR v1.1 collectionMethod: the channel a change really came through, said by its caller
COLLECTED_BY_OPERATOR_CLI = "operator-cli"  # `renkei policy add/remove`, on the person's behalf
COLLECTED_AT_DEMO_SETUP = "demo-setup"  # `renkei demo` loading config/demo.yaml's policies
COLLECTED_BY_PORTAL = "portal"  # the person themself, on the citizen portal's policy page


@dataclass(frozen=True)
class PiiController:
    """The PII controller named on receipts: the hub's operator."""

    name: str = "Renkei 連携ハブ運営者 (demo)"
    contact: str = "Renkei privacy desk"
    email: str = "privacy@renkei.example"
    phone: str = "+81-3-0000-0000"
    street_address: str = "1-1 Kasumigaseki, Chiyoda-ku"
    locality: str = "Tokyo"
    country: str = "JP"
    url: str | None = None

    def as_claim(self) -> dict[str, Any]:
        claim: dict[str, Any] = {
            "piiController": self.name,
            "onBehalf": False,
            "contact": self.contact,
            "address": {
                "streetAddress": self.street_address,
                "addressLocality": self.locality,
                "addressCountry": self.country,
            },
            "email": self.email,
            "phone": self.phone,
        }
        if self.url:
            claim["piiControllerUrl"] = self.url
        return claim


@dataclass(frozen=True)
class ReceiptIssuer:
    """What signs receipts and what they say about the controller and its policy."""

    signing_key: SigningKey
    policy_url: str
    controller: PiiController = field(default_factory=PiiController)
    jurisdiction: str = "JP"
    language: str = "ja"

    @property
    def kid(self) -> str:
        return f"{self.signing_key.role}-v{self.signing_key.version}"


def default_issuer(*, policy_url: str | None = None) -> ReceiptIssuer:
    """The issuer from settings: the newest `consent` key in RENKEI_HOME/keys; the policy URL
    is the page the change was made on when the caller has one (the portal), else the
    operator's privacy policy URL."""
    from kernel.keys import keystore
    from kernel.settings import get_settings

    settings = get_settings()
    base_url = settings.base_url.rstrip("/")
    return ReceiptIssuer(
        signing_key=keystore().current_signing_key(KEY_ROLE),
        policy_url=policy_url or settings.privacy_policy_url or f"{base_url}/",
        controller=PiiController(url=base_url),
    )


def build_claims(
    *,
    issuer: ReceiptIssuer,
    receipt_id: str,
    issued_at: datetime,
    collection_method: str,
    principal_id: str,
    rules: Sequence[PolicyRuleIn],
    task_names: Mapping[str, str],
    info_type_names: Mapping[str, str],
) -> dict[str, Any]:
    """The Kantara CR v1.1 claims for a policy version made of `rules`."""
    public_pem = issuer.signing_key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    return {
        "version": KANTARA_VERSION,
        "jurisdiction": issuer.jurisdiction,
        "consentTimestamp": int(issued_at.replace(tzinfo=UTC).timestamp()),
        "collectionMethod": collection_method,
        "consentReceiptID": receipt_id,
        "publicKey": public_pem,
        "language": issuer.language,
        "piiPrincipalId": principal_id,
        "piiControllers": [issuer.controller.as_claim()],
        "policyUrl": issuer.policy_url,
        "services": _services(rules, task_names, info_type_names),
        "sensitive": True,
        "spiCat": _spi_categories(rules, info_type_names),
    }


def sign_receipt(claims: dict[str, Any], *, issuer: ReceiptIssuer) -> str:
    """`claims` as a compact JWS signed with the issuer's key."""
    # the kid (role-vN) names the key version, so receipts signed before a rotation still verify
    return sign_jws(claims, key=issuer.signing_key.private_key, alg=ALGORITHM, kid=issuer.kid)


def verify_receipt(token: str, *, public_keys: Iterable[rsa.RSAPublicKey]) -> dict[str, Any]:
    """The receipt's claims if its signature verifies with one of `public_keys`."""
    try:
        _, claims = verify_jws(token, keys=list(public_keys), algorithms=[ALGORITHM], max_chars=MAX_RECEIPT_CHARS)
    except JwsInvalid as exc:
        raise ReceiptInvalid(str(exc)) from None
    missing = [name for name in REQUIRED_FIELDS if name not in claims]
    if missing:
        raise ReceiptInvalid(f"consent receipt lacks {', '.join(missing)}")
    if claims["version"] != KANTARA_VERSION:
        raise ReceiptInvalid(f"consent receipt version must be {KANTARA_VERSION}")
    return claims


def receipt_public_keys(keys: KeyStore) -> list[rsa.RSAPublicKey]:
    """Every version of the `consent` key, newest first: old receipts stay verifiable."""
    versions = reversed(keys.signing_versions(KEY_ROLE))
    return [keys.load_signing_key(KEY_ROLE, v).public_key for v in versions]


# --- receipt body -------------------------------------------------------------------------


def _label(code: str | None, names: Mapping[str, str], anything: str) -> str:
    if code is None:
        return anything
    name = names.get(code)
    return f"{name} ({code})" if name else code


def _party(value: str | None, anything: str) -> str:
    if value is None:
        return anything
    if value.startswith(CLASS_PREFIX):
        return f"every agency of class {value[len(CLASS_PREFIX):]}"
    return value


def _purpose(rule: PolicyRuleIn, info_type_names: Mapping[str, str]) -> dict[str, Any]:
    info = _label(rule.info_type_code, info_type_names, "すべての特定個人情報 (any information)")
    requester = _party(rule.requester, "any requester")
    provider = _party(rule.provider, "any provider")
    verb = "may" if rule.effect is Effect.ALLOW else "may not"
    purpose: dict[str, Any] = {
        "purpose": f"{requester} {verb} obtain {info} from {provider}",
        "purposeCategory": [f"{rule.effect.value} disclosure"],
        "consentType": "EXPLICIT",
        "piiCategory": [info],
        "primaryPurpose": False,
        "termination": _termination(rule),
        "thirdPartyDisclosure": rule.effect is Effect.ALLOW,
    }
    if rule.effect is Effect.ALLOW:
        purpose["thirdPartyName"] = requester
    return purpose


def _termination(rule: PolicyRuleIn) -> str:
    parts = []
    if rule.valid_from:
        parts.append(f"from {rule.valid_from.isoformat()}Z")
    parts.append(
        f"until {rule.valid_until.isoformat()}Z" if rule.valid_until else "until revoked"
    )
    return " ".join(parts) + "; revocable at any time"


def _services(
    rules: Sequence[PolicyRuleIn],
    task_names: Mapping[str, str],
    info_type_names: Mapping[str, str],
) -> list[dict[str, Any]]:
    # one service per task (事務), in the order the person's rules mention them
    by_task: dict[str | None, list[dict[str, Any]]] = {}
    for rule in rules:
        by_task.setdefault(rule.task_code, []).append(_purpose(rule, info_type_names))
    return [
        {"service": _label(task, task_names, "すべての事務 (any task)"), "purposes": purposes}
        for task, purposes in by_task.items()
    ]


def _spi_categories(rules: Sequence[PolicyRuleIn], info_type_names: Mapping[str, str]) -> list[str]:
    labels = {_label(r.info_type_code, info_type_names, SENSITIVE_CATEGORY) for r in rules}
    return sorted(labels) or [SENSITIVE_CATEGORY]
