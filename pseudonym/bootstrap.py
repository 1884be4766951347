"""The bootstrap token: a sealed statement "agency R knows this person as p_R until exp".

The IdP puts it into SSO assertions inside ID-WSF's DiscoveryEPR attribute; the discovery
service reads it to learn who the query is about. It says only what its holder already knows
(its own pseudonym), and only the hub can check it: a compact JWS (RFC 7515) with HS256 under
a versioned hub secret whose version the `kid` names, so the secret can rotate.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kernel.jose import JwsInvalid, sign_jws, verify_jws
from kernel.keys import KeyProblem, KeyStore

BOOTSTRAP_SECRET = "bootstrap"
ALGORITHM = "HS256"  # only the hub issues and checks it, so a shared secret suffices
MAX_TOKEN_CHARS = 2048
_KID = re.compile(rf"{BOOTSTRAP_SECRET}-v([1-9][0-9]{{0,8}})")


class BootstrapInvalid(ValueError):
    """The bootstrap token is not the hub's, has expired, or was issued to another agency."""


@dataclass(frozen=True)
class Bootstrap:
    requester: str
    pseudonym: str
    expires: int


def issue_bootstrap(*, keys: KeyStore, audience: str, requester: str, pseudonym: str, expires: int) -> str:
    """A JWS under the newest bootstrap secret: says only what the requester already knows."""
    version = keys.current_secret_version(BOOTSTRAP_SECRET)  # newest on disk: a rotation applies at once
    claims = {"aud": audience, "req": requester, "sub": pseudonym, "exp": expires}
    return sign_jws(claims, key=bootstrap_secret(keys, version), alg=ALGORITHM, kid=f"{BOOTSTRAP_SECRET}-v{version}")


def read_bootstrap(token: str, *, keys: KeyStore, audience: str, requester: str, now: int) -> Bootstrap:
    """Check a bootstrap token's seal (under the secret version its kid names), audience, expiry
    and that `requester` is its holder."""

    def secret_named_by(header: dict[str, Any]) -> list[bytes]:
        match = _KID.fullmatch(header["kid"]) if isinstance(header.get("kid"), str) else None
        try:
            return [bootstrap_secret(keys, int(match.group(1)))] if match else []
        except (FileNotFoundError, KeyProblem):  # a kid of a version never made: the key store says so
            raise BootstrapInvalid("the bootstrap token names no known secret version") from None

    try:
        _, claims = verify_jws(token.strip(), keys=secret_named_by, algorithms=[ALGORITHM],
                               max_chars=MAX_TOKEN_CHARS)
    except JwsInvalid as exc:
        raise BootstrapInvalid(f"not a Renkei bootstrap token: {exc}") from None
    if claims.get("aud") != audience:
        raise BootstrapInvalid("the bootstrap token is for another service")
    if claims.get("req") != requester:
        raise BootstrapInvalid("the bootstrap token was issued to another agency")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now:
        raise BootstrapInvalid("the bootstrap token has expired")
    if not isinstance(claims.get("sub"), str):
        raise BootstrapInvalid("the bootstrap token names no pseudonym")
    return Bootstrap(claims["req"], claims["sub"], exp)


def bootstrap_secret(keys: KeyStore, version: int) -> bytes:
    """One version of the hub's bootstrap-token secret (the key store caches it)."""
    return keys.secret(BOOTSTRAP_SECRET, version)
