"""The bootstrap token: a sealed statement "agency R knows this person as p_R until exp".

The IdP puts it into SSO assertions inside ID-WSF's DiscoveryEPR attribute; the discovery
service reads it to learn who the query is about. It says only what its holder already knows
(its own pseudonym), and only the hub can check it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from kernel.keys import KeyStore

BOOTSTRAP_SECRET = "bootstrap"


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
    """The hub's newest bootstrap-token secret (the key store caches it)."""
    return keys.current_secret(BOOTSTRAP_SECRET)[1]
