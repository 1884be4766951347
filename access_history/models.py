"""Tables and value objects of the access-history room.

Agencies and people live in other rooms, so owners, requesters, providers and person keys are
plain strings here. An owner is an agency's entity ID, or `hub` for the hub's own decisions.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from access_history.chain import canonical_json, iso_utc
from access_history.errors import InvalidLogEntry
from kernel.db import Base

HUB_OWNER = "hub"  # the owner of the hub's own decisions
PARTY_MAX = 1024
PERSON_KEY_MAX = 128
CODE_MAX = 64
STAFF_MAX = 256
HASH_LEN = 64  # hex SHA-256
DETAIL_MAX = 4096  # bytes of canonical JSON: the detail is a note, not a payload

# SQLite only makes an INTEGER PRIMARY KEY an auto-incrementing rowid; PostgreSQL gets 64 bits.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")
_NO_WHITESPACE = re.compile(r"\S+")


class EntryKind(StrEnum):
    """What an entry records."""

    DECISION = "decision"  # the hub decided whether a disclosure may happen (permit or deny)
    DISCLOSURE = "disclosure"  # a provider answered a query
    RELAY = "relay"  # the hub forwarded an electronic envelope (電子封筒) to the provider


# --- tables -------------------------------------------------------------------------------


class LogEntry(Base):
    """One entry of an owner's hash-chained access log; never updated or deleted once written."""

    __tablename__ = "access_log_entries"
    __table_args__ = (
        UniqueConstraint("owner", "seq"),
        CheckConstraint("kind IN ('decision', 'disclosure', 'relay')", name="kind"),
        CheckConstraint("seq >= 1", name="seq"),
        CheckConstraint("permitted IS NOT NULL OR kind = 'disclosure'", name="permitted"),
        # the portal's history page: one person's entries, newest first, by keyset
        Index("ix_access_log_entries_person_key_id", "person_key", "id"),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    owner: Mapped[str] = mapped_column(String(PARTY_MAX))
    seq: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    decision_id: Mapped[str] = mapped_column(String(CODE_MAX), index=True)
    requester: Mapped[str] = mapped_column(String(PARTY_MAX))  # 情報照会者
    provider: Mapped[str] = mapped_column(String(PARTY_MAX))  # 情報提供者
    person_key: Mapped[str] = mapped_column(String(PERSON_KEY_MAX))  # hub-internal, never exported
    staff: Mapped[str | None] = mapped_column(String(STAFF_MAX))  # 職員 who asked
    task_code: Mapped[str] = mapped_column(String(CODE_MAX))  # 事務
    info_type_code: Mapped[str] = mapped_column(String(CODE_MAX))  # 特定個人情報
    permitted: Mapped[bool | None] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(CODE_MAX))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON of a small object
    prev_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    entry_hash: Mapped[str] = mapped_column(String(HASH_LEN))

    @property
    def detail_values(self) -> dict[str, Any]:
        return json.loads(self.detail)


class LogHead(Base):
    """The newest seq and entry hash of one owner's log; its row lock serializes appends."""

    __tablename__ = "access_log_heads"

    owner: Mapped[str] = mapped_column(String(PARTY_MAX), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(HASH_LEN))


class Checkpoint(Base):
    """A signed tree head: the RFC 9162 Merkle root over an owner's entries 1..seq."""

    __tablename__ = "access_log_checkpoints"
    __table_args__ = (
        UniqueConstraint("owner", "seq"),
        # entries are numbered 1..n without gaps, so the newest seq covered is the tree size
        CheckConstraint("tree_size = seq", name="tree_size"),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    owner: Mapped[str] = mapped_column(String(PARTY_MAX))
    seq: Mapped[int] = mapped_column(BigInteger)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    signed_at: Mapped[datetime] = mapped_column(DateTime)
    signature: Mapped[str] = mapped_column(Text)
    key_version: Mapped[int] = mapped_column(Integer)

    def as_dict(self) -> dict[str, Any]:
        """The published form, as `verify_export` reads it."""
        return {
            "owner": self.owner,
            "seq": self.seq,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "signed_at": iso_utc(self.signed_at),
            "signature": self.signature,
            "key_version": self.key_version,
        }


# --- value objects ------------------------------------------------------------------------


def _text(name: str, value: object, limit: int, *, spaces: bool = True) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidLogEntry(f"{name} must be a non-empty text, got {value!r}")
    if len(value) > limit:
        raise InvalidLogEntry(f"{name} is longer than {limit} characters")
    if not spaces and not _NO_WHITESPACE.fullmatch(value):
        raise InvalidLogEntry(f"{name} must not contain whitespace, got {value!r}")


@dataclass(frozen=True)
class LogEntryIn:
    """One decision, disclosure or relay to log; the service adds seq, time and hashes."""

    owner: str
    kind: EntryKind
    decision_id: str
    requester: str
    provider: str
    person_key: str
    task_code: str
    info_type_code: str
    reason: str
    permitted: bool | None = None
    staff: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", EntryKind(self.kind))
        except ValueError:
            raise InvalidLogEntry(
                f"kind must be one of {', '.join(EntryKind)}, got {self.kind!r}"
            ) from None
        _text("owner", self.owner, PARTY_MAX, spaces=False)  # a line of the signed checkpoint
        _text("decision_id", self.decision_id, CODE_MAX)
        _text("requester", self.requester, PARTY_MAX)
        _text("provider", self.provider, PARTY_MAX)
        _text("person_key", self.person_key, PERSON_KEY_MAX)
        _text("task_code", self.task_code, CODE_MAX)
        _text("info_type_code", self.info_type_code, CODE_MAX)
        _text("reason", self.reason, CODE_MAX)
        if self.staff is not None:
            _text("staff", self.staff, STAFF_MAX)
        if self.permitted is None and self.kind is not EntryKind.DISCLOSURE:
            raise InvalidLogEntry(f"a {self.kind} entry must say whether it was permitted")
        if self.permitted is not None and not isinstance(self.permitted, bool):
            raise InvalidLogEntry(f"permitted must be true, false or null, got {self.permitted!r}")
        object.__setattr__(self, "detail", _normalized_detail(self.detail))


def _normalized_detail(detail: object) -> dict[str, Any]:
    """`detail` as it reads back from JSON, so the hash at append equals the hash at export."""
    if not isinstance(detail, Mapping) or not all(isinstance(k, str) for k in detail):
        raise InvalidLogEntry("detail must be an object with text keys")
    try:
        encoded = canonical_json(dict(detail))
    except (TypeError, ValueError) as exc:
        raise InvalidLogEntry(f"detail is not JSON: {exc}") from None
    if len(encoded) > DETAIL_MAX:
        raise InvalidLogEntry(f"detail is larger than {DETAIL_MAX} bytes")
    return json.loads(encoded)
