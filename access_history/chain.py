"""Canonical encoding, entry hashes, Merkle tree hashes and checkpoint signatures (RFC 9162 §2.1).

Pure functions without a database: the hub writes with them and an auditor verifies with them,
so both sides hash exactly the same bytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# RFC 9162 §2.1.1: leaves and interior nodes are hashed with different one-byte prefixes, so a
# leaf can never be passed off as a node (second-preimage resistance).
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
GENESIS_HASH = "0" * 64  # prev_hash of every log's seq 1
CHECKPOINT_LABEL = "renkei-access-log-checkpoint/v1"
_PERSON_REF_DOMAIN = b"renkei/access-log-person/v1\x00"

# What an entry hash covers, in the export's own field names; `entry_hash` itself is not here.
HASHED_FIELDS = (
    "owner",
    "seq",
    "recorded_at",
    "kind",
    "decision_id",
    "requester",
    "provider",
    "person_ref",
    "staff",
    "task_code",
    "info_type_code",
    "permitted",
    "reason",
    "detail",
    "prev_hash",
)
EXPORT_FIELDS = (*HASHED_FIELDS, "entry_hash")


def iso_utc(value: datetime) -> str:
    """`value` as ISO 8601 UTC with microseconds and 'Z'; a naive value is taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def _encode_other(value: object) -> str:
    if isinstance(value, datetime):
        return iso_utc(value)
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> bytes:
    """The one encoding that is ever hashed: sorted keys, no whitespace, UTF-8, ISO 'Z' times."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_encode_other,
    ).encode("utf-8")


def person_ref(owner: str, person_key: str) -> str:
    """What an export shows instead of the hub's person key: a digest that differs per owner,
    so two agencies' exports cannot be joined on it (DESIGN.md, Unlinkability)."""
    message = _PERSON_REF_DOMAIN + owner.encode() + b"\x00" + person_key.encode()
    return hashlib.sha256(message).hexdigest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: SHA-256(0x01 || MTH(left) || MTH(right))."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def entry_hash(fields: Mapping[str, Any]) -> str:
    """Hex leaf hash of one entry: its HASHED_FIELDS (prev_hash among them), canonical JSON."""
    return leaf_hash(canonical_json({name: fields[name] for name in HASHED_FIELDS})).hex()


class MerkleFrontier:
    """RFC 9162 §2.1.1 Merkle tree hash built leaf by leaf in O(log n) memory.

    The stack holds the roots of the perfect subtrees the leaves so far decompose into, largest
    first; that decomposition is exactly the RFC's split at the largest power of two below n.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, leaf: bytes) -> None:
        size, node = 1, leaf
        while self._stack and self._stack[-1][0] == size:
            left_size, left = self._stack.pop()
            size, node = left_size + size, node_hash(left, node)
        self._stack.append((size, node))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return hashlib.sha256(b"").digest()  # MTH({}) = SHA-256()
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


def merkle_root(leaf_hashes: Iterable[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over already leaf-hashed entries (0x01 prefix on every node)."""
    frontier = MerkleFrontier()
    for leaf in leaf_hashes:
        frontier.add(leaf)
    return frontier.root()


def checkpoint_text(*, owner: str, seq: int, root_hash: str, signed_at: str) -> bytes:
    """The bytes a checkpoint's signature covers: label, owner, seq (= tree size), root, time."""
    return f"{CHECKPOINT_LABEL}\n{owner}\n{seq}\n{root_hash}\n{signed_at}".encode()


def sign_checkpoint(text: bytes, *, private_key: rsa.RSAPrivateKey) -> str:
    """Base64 RSASSA-PKCS1-v1_5 / SHA-256 signature over `text`."""
    signature = private_key.sign(text, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def checkpoint_signature_valid(
    text: bytes, signature: str, *, public_keys: Iterable[rsa.RSAPublicKey]
) -> bool:
    """True when one of `public_keys` verifies `signature` over `text`."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return False
    for key in public_keys:
        try:
            key.verify(raw, text, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        return True
    return False
