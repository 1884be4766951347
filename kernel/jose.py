"""JOSE for the hub, on joserfc: client authentication by a JWT the client signs with its
registered key (RFC 7523 §3, OpenID Connect Core §9 "private_key_jwt"), and compact JWS
(RFC 7515 §7.1) for the hub's own signed statements (consent receipts, bootstrap tokens).

Keys come only from the caller (registered metadata, the hub's key store); a key or
certificate carried in a header is never used. Every way a token can be bad is one error.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws
from joserfc.errors import JoseError, MissingAlgorithmError
from joserfc.jwk import ECKey, OctKey, RSAKey
from joserfc.jws import CompactSignature, JWSRegistry
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy.orm import Session

from kernel import replay

MAX_LIFETIME = 300  # seconds a client assertion may be valid for (RFC 7523 §3 item 4)
CLOCK_SKEW = 60  # seconds of clock difference tolerated on exp / iat / nbf
MAX_ASSERTION_CHARS = 8192  # checked before anything is decoded
CLIENT_ASSERTION_ALGORITHMS = ("RS256", "PS256", "ES256")  # never "none", never HMAC
_JTI_PREFIX = "jwt:"
# the replay cache keeps "jwt:<jti>" in a String(256) column; longer would be a 500 on PostgreSQL
MAX_JTI_CHARS = 256 - len(_JTI_PREFIX)
MAX_ISSUER_CHARS = 1024  # agencies' entity_id column
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# b64=false (RFC 7797) and crit change how the token is read; nothing of ours needs them
_REFUSED_HEADERS = frozenset({"crit", "b64", "jwk", "jku", "x5u", "x5c"})
_CLIENT_ASSERTION_REGISTRY = JWSRegistry(algorithms=list(CLIENT_ASSERTION_ALGORITHMS))


class JwsInvalid(Exception):
    """The JWS is malformed, too large, of a refused algorithm, or no trusted key verifies it."""


class ClientAuthFailed(Exception):
    """The client assertion is missing, malformed, unsigned by a pinned key, or stale."""


# --- compact JWS -------------------------------------------------------------------------


def sign_jws(claims: Mapping[str, Any], *, key: Any, alg: str, kid: str | None = None) -> str:
    """`claims` as a compact JWS signed with `key` (a cryptography private key, or HMAC bytes)."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    payload = json.dumps(dict(claims), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return jws.serialize_compact(header, payload.encode(), _jose_key(key), algorithms=[alg])


def verify_jws(
    token: str,
    *,
    keys: Iterable[Any] | Callable[[Mapping[str, Any]], Iterable[Any]],
    algorithms: Sequence[str],
    max_chars: int = 64 * 1024,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (header, claims) of `token` if one of `keys` verifies it with an allowed algorithm.

    `keys` may be a function of the (unverified) header, to pick a key by its `kid`.
    """
    registry = JWSRegistry(algorithms=list(algorithms))
    signed = _extract(token, registry=registry, max_chars=max_chars)
    header = signed.headers()
    candidates = keys(header) if callable(keys) else keys
    if not any(_verifies(signed, key, registry) for key in candidates):
        raise JwsInvalid("the JWS signature does not verify with any trusted key")
    return header, _claims(signed)


def _extract(token: object, *, registry: JWSRegistry, max_chars: int) -> CompactSignature:
    """Parse a compact JWS without trusting it: size and alphabet first, then header checks."""
    # cap before decoding; and no character may be skipped silently (a lenient base64 decoder
    # would accept "forged" variants of a token)
    if not isinstance(token, str) or len(token) > max_chars or not _COMPACT.fullmatch(token):
        raise JwsInvalid("not a compact JWS of base64url parts within the size limit")
    try:
        signed = jws.extract_compact(token.encode("ascii"), registry=registry)
        header = signed.headers()
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in registry.allowed:
            raise JwsInvalid(f"the JWS algorithm must be {' or '.join(registry.allowed)}, got {alg!r}")
        if _REFUSED_HEADERS & header.keys():
            raise JwsInvalid(f"the JWS header may not carry {', '.join(sorted(_REFUSED_HEADERS & header.keys()))}")
        registry.check_header(header)
        registry.get_alg(alg)
    except JwsInvalid:
        raise
    except MissingAlgorithmError:
        raise JwsInvalid(f"the JWS algorithm must be {' or '.join(registry.allowed)}, got None") from None
    except (JoseError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        # joserfc reports bad JSON, types and algorithms in several ways; all are one answer
        raise JwsInvalid(f"the JWS header is not accepted ({type(exc).__name__})") from None
    return signed


def _verifies(signed: CompactSignature, key: Any, registry: JWSRegistry) -> bool:
    try:
        return jws.validate_compact(signed, _jose_key(key), registry=registry)
    except (JoseError, ValueError, TypeError):
        return False  # e.g. an RSA key offered for ES256: not this key


def _claims(signed: CompactSignature) -> dict[str, Any]:
    try:
        claims = json.loads(signed.payload)
    except (ValueError, RecursionError):
        raise JwsInvalid("the JWS payload is not JSON") from None
    if not isinstance(claims, dict):
        raise JwsInvalid("the JWS payload is not a JSON object")
    return claims


def _jose_key(key: Any) -> RSAKey | ECKey | OctKey:
    if isinstance(key, (RSAKey, ECKey, OctKey)):
        return key
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return RSAKey(key, key)
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return ECKey(key, key)
    if isinstance(key, bytes):
        return OctKey.import_key(key)
    raise TypeError(f"not a signing key: {type(key).__name__}")


# --- RFC 7523 client assertions ----------------------------------------------------------


def sign_client_assertion(private_key, *, issuer: str, audience: str, jti: str, lifetime: int = 60,
                          now: int | None = None) -> str:
    """A client assertion for `audience` (what a requester sends; also the demo agencies' helper)."""
    now = int(time.time()) if now is None else now
    alg = "ES256" if isinstance(private_key, ec.EllipticCurvePrivateKey) else "RS256"
    claims = {"iss": issuer, "sub": issuer, "aud": audience, "jti": jti, "iat": now, "exp": now + lifetime}
    return sign_jws(claims, key=private_key, alg=alg)


def verify_client_assertion(
    token: str,
    *,
    keys_for: Callable[[str], Sequence],
    audience: str | Sequence[str],
    db_session: Session,
    now: int | None = None,
) -> dict:
    """Verify a client assertion and return its claims; `keys_for(iss)` gives the pinned keys.

    iss and sub must be the same registered client, aud this endpoint (or one of the
    `audience` values given: an OP's token endpoint accepts its issuer too), exp within five
    minutes, iat/nbf (if present) not in the future, and the jti unused (kept in the replay
    cache until exp).
    """
    claims, once = check_client_assertion(token, keys_for=keys_for, audience=audience, now=now)
    remember_client_assertion(db_session=db_session, once=once)
    return claims


def check_client_assertion(
    token: str,
    *,
    keys_for: Callable[[str], Sequence],
    audience: str | Sequence[str],
    now: int | None = None,
) -> tuple[dict, replay.Once]:
    """`verify_client_assertion` but for the replay cache: the claims and the jti, which the
    caller must remember before it answers, with its history entries (`replay.Once`, as
    discovery does) or by `remember_client_assertion`."""
    now = int(time.time()) if now is None else now
    registry = _CLIENT_ASSERTION_REGISTRY
    try:
        signed = _extract(token, registry=registry, max_chars=MAX_ASSERTION_CHARS)
        unverified = _claims(signed)
    except JwsInvalid as exc:
        raise ClientAuthFailed(str(exc)) from None
    issuer = _short_text(unverified.get("iss"), "iss", MAX_ISSUER_CHARS)
    keys = keys_for(issuer)
    if not keys:
        raise ClientAuthFailed("the JWT issuer is not a registered agency")
    if not any(_verifies(signed, key, registry) for key in keys):
        raise ClientAuthFailed("the JWT signature does not verify with the agency's registered keys")
    claims = unverified  # now verified: the payload bytes were signed
    jti = _short_text(claims.get("jti"), "jti", MAX_JTI_CHARS)
    checks = JWTClaimsRegistry(
        now=now, leeway=CLOCK_SKEW,
        iss={"essential": True, "value": issuer},
        sub={"essential": True, "value": issuer},  # RFC 7523 §3 item 2: sub is the client itself
        aud={"essential": True, "value": audience} if isinstance(audience, str)
        else {"essential": True, "values": list(audience)},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        checks.validate(claims)
    except JoseError as exc:
        raise ClientAuthFailed(f"the JWT claims are not accepted: {exc}") from None
    exp = claims["exp"]
    if exp > now + MAX_LIFETIME + CLOCK_SKEW:
        raise ClientAuthFailed("the JWT lives longer than five minutes")
    return claims, replay.Once(issuer, _JTI_PREFIX + jti,
                               datetime.fromtimestamp(int(exp) + CLOCK_SKEW, UTC).replace(tzinfo=None))


ALREADY_USED = "this JWT was already used"


def remember_client_assertion(*, db_session: Session, once: replay.Once) -> None:
    """The jti of a checked client assertion into the replay cache now (`check_client_assertion`),
    unless it was remembered with the answer's history entries; ClientAuthFailed if used."""
    try:
        replay.remember_once(db_session=db_session, once=once)
    except replay.ReplayDetected:
        raise ClientAuthFailed(ALREADY_USED) from None


def _short_text(value: object, name: str, limit: int) -> str:
    """A claim that goes into a database lookup: a non-empty string within the column limit."""
    if not isinstance(value, str) or not value:
        raise ClientAuthFailed(f"the JWT {name} must be a non-empty string")
    if len(value) > limit or _CONTROL.search(value):
        raise ClientAuthFailed(f"the JWT {name} is longer than {limit} characters or has control characters")
    return value
