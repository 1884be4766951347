"""The exported form of a log entry and the salted commitment a leaf holds: pure functions.

The hub computes a leaf's data from an entry's record when it appends it, and an auditor
recomputes it from an export line, offline, with the same function; so both sides hash the
very same bytes. The tree holds only `leaf_data = SHA-256(domain || salt || record)`: no
personal data, so checkpoints and proofs can be handed to anyone, and a leaf reveals nothing
without the entry and its salt.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

ACCESS_DOMAIN = b"renkei/history-entry/v1\x00"
OPERATIONS_DOMAIN = b"renkei/operations-entry/v1\x00"
PERSON_REF_DOMAIN = b"renkei/history-person/v1\x00"

# An access entry's record, in the export's own field names and order.
ACCESS_FIELDS = (
    "entry_id", "kind", "channel", "owner", "recorded_at", "asked_at", "provided_at",
    "requester", "staff", "provider", "person_ref", "task_code", "legal_basis",
    "whitelist_entry", "info_type_code", "permitted", "outcome", "person_rule", "overridden",
    "decision_id", "query_id", "query_group_id", "sealed_until", "sealed_reason", "detail",
)
OPERATION_FIELDS = (
    "entry_id", "recorded_at", "actor", "channel", "action", "target", "outcome", "client",
    "detail",
)
FIELDS = {"access": ACCESS_FIELDS, "operations": OPERATION_FIELDS}
DOMAINS = {"access": ACCESS_DOMAIN, "operations": OPERATIONS_DOMAIN}


def iso_utc(value: datetime | None) -> str | None:
    """`value` as ISO 8601 UTC with microseconds and 'Z'; a naive value is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def _encode_other(value: object) -> str:
    if isinstance(value, datetime):
        return iso_utc(value)  # type: ignore[return-value]
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> bytes:
    """The one encoding that is ever hashed: sorted keys, no whitespace, UTF-8, ISO 'Z' times."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_encode_other).encode("utf-8")


def person_ref(owner: str, person_key: str) -> str:
    """What an export shows instead of the hub's person key: a digest that differs per owner,
    so two agencies' exports cannot be joined on it (DESIGN.md, Unlinkability)."""
    return hashlib.sha256(PERSON_REF_DOMAIN + owner.encode() + b"\x00" + person_key.encode()).hexdigest()


def commitment(log: str, salt: bytes, record: Mapping[str, Any]) -> bytes:
    """The leaf data of an entry: SHA-256 over the log's domain, the salt and the record."""
    body = canonical_json({name: record.get(name) for name in FIELDS[log]})
    return hashlib.sha256(DOMAINS[log] + salt + body).digest()
