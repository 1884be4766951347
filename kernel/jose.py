"""Client authentication by a JWT the client signs with its registered key (RFC 7523 §3,
OpenID Connect Core §9 "private_key_jwt"), checked against keys pinned from its metadata."""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from sqlalchemy.orm import Session

from kernel import replay

MAX_LIFETIME = 300  # seconds a client assertion may be valid for
_ALGORITHMS = {"RS256": hashes.SHA256, "PS256": hashes.SHA256, "ES256": hashes.SHA256}


class ClientAuthFailed(Exception):
    """The client assertion is missing, malformed, unsigned by a pinned key, or stale."""


def _unb64(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except ValueError:
        raise ClientAuthFailed("the JWT is not base64url") from None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sign_client_assertion(private_key, *, issuer: str, audience: str, jti: str, lifetime: int = 60,
                          now: int | None = None) -> str:
    """A client assertion for `audience` (what a requester sends; also the demo agencies' helper)."""
    now = int(time.time()) if now is None else now
    alg = "ES256" if isinstance(private_key, ec.EllipticCurvePrivateKey) else "RS256"
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    claims = {"iss": issuer, "sub": issuer, "aud": audience, "jti": jti, "iat": now, "exp": now + lifetime}
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode()
    if alg == "RS256":
        signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{header}.{body}.{_b64(signature)}"


def verify_client_assertion(
    token: str,
    *,
    keys_for: Callable[[str], Sequence],
    audience: str,
    db_session: Session,
    now: int | None = None,
) -> dict:
    """Verify a client assertion and return its claims; `keys_for(iss)` gives the pinned keys.

    iss and sub must be the same registered client, aud this endpoint, exp within five
    minutes, and the jti unused (kept in the replay cache until exp).
    """
    now = int(time.time()) if now is None else now
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 8192:
        raise ClientAuthFailed("not a compact JWS")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, json.JSONDecodeError):
        raise ClientAuthFailed("the JWT header or claims are not JSON") from None
    alg = header.get("alg") if isinstance(header, dict) else None
    if alg not in _ALGORITHMS:  # never "none", never HMAC keyed with a public key
        raise ClientAuthFailed(f"JWT algorithm {alg!r} is not accepted")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise ClientAuthFailed("the JWT has no issuer")
    keys = keys_for(claims["iss"])
    if not keys:
        raise ClientAuthFailed("the JWT issuer is not a registered agency")
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    signature = _unb64(parts[2])
    if not any(_verify(key, alg, signing_input, signature) for key in keys):
        raise ClientAuthFailed("the JWT signature does not verify with the agency's registered keys")
    if claims.get("sub") != claims["iss"]:
        raise ClientAuthFailed("the JWT sub must equal iss")
    aud = claims.get("aud")
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise ClientAuthFailed("the JWT is for another audience")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now or exp > now + MAX_LIFETIME + 60:
        raise ClientAuthFailed("the JWT has expired or lives longer than five minutes")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise ClientAuthFailed("the JWT needs a jti")
    try:
        replay.remember_at_once(db_session=db_session, issuer=claims["iss"], message_id="jwt:" + claims["jti"],
                        expires_at=datetime.fromtimestamp(exp, UTC).replace(tzinfo=None))
    except replay.ReplayDetected:
        raise ClientAuthFailed("this JWT was already used") from None
    return claims


def _verify(key, alg: str, data: bytes, signature: bytes) -> bool:
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True
