"""Compact JWS with RS256 only (RFC 7515 §7.1, RFC 7518 §3.3), for consent receipts.

Verification accepts exactly one algorithm and only keys the caller trusts; a key or
certificate carried in the header is never used.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from consent.errors import ReceiptInvalid

ALGORITHM = "RS256"
MAX_TOKEN_BYTES = 64 * 1024
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not text or any(c not in _B64URL for c in text):
        raise ReceiptInvalid("JWS part is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ReceiptInvalid("JWS part is not base64url") from None


def _json_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def sign(claims: dict[str, Any], *, private_key: rsa.RSAPrivateKey, kid: str) -> str:
    """`claims` as a compact JWS signed with RS256 (RSASSA-PKCS1-v1_5 over SHA-256)."""
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": kid}
    signing_input = f"{b64url_encode(_json_bytes(header))}.{b64url_encode(_json_bytes(claims))}"
    signature = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url_encode(signature)}"


def verify(token: str, *, public_keys: Iterable[rsa.RSAPublicKey]) -> dict[str, Any]:
    """The claims of `token` if one of `public_keys` verifies its RS256 signature."""
    if len(token) > MAX_TOKEN_BYTES:
        raise ReceiptInvalid("JWS is too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise ReceiptInvalid("not a compact JWS (three base64url parts)")
    header = _json_object(b64url_decode(parts[0]), "header")
    if header.get("alg") != ALGORITHM:
        raise ReceiptInvalid(f"JWS algorithm must be {ALGORITHM}, got {header.get('alg')!r}")
    if "crit" in header:
        raise ReceiptInvalid("JWS critical header parameters are not supported")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    signature = b64url_decode(parts[2])
    for key in public_keys:
        try:
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        return _json_object(b64url_decode(parts[1]), "payload")
    raise ReceiptInvalid("JWS signature does not verify with any trusted key")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ReceiptInvalid(f"JWS {what} is not JSON") from None
    if not isinstance(value, dict):
        raise ReceiptInvalid(f"JWS {what} is not a JSON object")
    return value
