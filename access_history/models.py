"""Tables and value objects of the access-history room.

Two kinds of rows: the entries themselves (what was decided, disclosed or administered, with
the salt that commits to them), and one transparency log per log name (`access`,
`operations`) built over those commitments: a queue of entries waiting to be sequenced, the
leaves and interior nodes of the RFC 9162 Merkle tree, the tree's state and its signed
checkpoints. Agencies and people live in other rooms, so parties and person keys are plain
strings here. Every table but the queue and the state is append-only (triggers refuse UPDATE
and DELETE on PostgreSQL and SQLite alike).
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
    LargeBinary,
    PrimaryKeyConstraint,
    Sequence,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from access_history.errors import InvalidLogEntry
from kernel.db import BIG_ID, Base

HUB_OWNER = "hub"  # the owner of the hub's own decisions
ACCESS_LOG = "access"
OPERATIONS_LOG = "operations"
LOG_NAMES = (ACCESS_LOG, OPERATIONS_LOG)

PARTY_MAX = 1024
PERSON_KEY_MAX = 128
CODE_MAX = 64
STAFF_MAX = 256
TEXT_MAX = 512
DETAIL_MAX = 4096  # bytes of canonical JSON: the detail is a note, not a payload
ID_LEN = 32  # hex of 16 random bytes
SALT_LEN = 32
HASH_LEN = 32

# Entries are partitioned by month on PostgreSQL, so their key is (id, recorded_at) and `id`
# cannot autoincrement: PostgreSQL draws it from a sequence, SQLite from `entry_id_counters`.
ENTRY_SEQUENCES = {"history_entries": "history_entries_id_seq",
                   "operation_entries": "operation_entries_id_seq"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EntryKind(StrEnum):
    """What an access entry records."""

    DECISION = "decision"  # the hub decided whether a disclosure may happen (permit or deny)
    DISCLOSURE = "disclosure"  # a provider reports that it answered a query
    RELAY = "relay"  # the hub forwarded an electronic envelope (電子封筒) to the provider


class Channel(StrEnum):
    """How the data travelled (or would have)."""

    SSO = "sso"  # attributes released in an SSO assertion
    DISCOVERY = "discovery"  # a discovery token for a provider
    NAME_MAPPING = "name_mapping"  # a SAML NameIDMappingRequest
    RELAY = "relay"  # an envelope relayed by the hub
    REPORT = "report"  # a provider's own report of what it disclosed


# --- entries ------------------------------------------------------------------------------


class HistoryEntry(Base):
    """One entry of the access history (アクセス履歴); never updated or deleted once written."""

    __tablename__ = "history_entries"
    __table_args__ = (
        CheckConstraint("kind IN ('decision', 'disclosure', 'relay')", name="kind"),
        CheckConstraint("permitted IS NOT NULL OR kind = 'disclosure'", name="permitted"),
        # one person's timeline, newest first, by keyset (recorded_at, id)
        Index("ix_history_entries_person_time", "person_key", "recorded_at", "id"),
        Index("ix_history_entries_recorded_at", "recorded_at", "id"),
        # a partitioned table's keys must include its partition key
        PrimaryKeyConstraint("id", "recorded_at"),
        UniqueConstraint("entry_id", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Sequence(ENTRY_SEQUENCES["history_entries"]),
                                    autoincrement=False)
    entry_id: Mapped[str] = mapped_column(String(ID_LEN))
    recorded_at: Mapped[datetime] = mapped_column(DateTime)
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(PARTY_MAX))  # whose log: an agency, or the hub
    asked_at: Mapped[datetime | None] = mapped_column(DateTime)
    provided_at: Mapped[datetime | None] = mapped_column(DateTime)
    requester: Mapped[str] = mapped_column(String(PARTY_MAX))  # 情報照会者
    staff: Mapped[str | None] = mapped_column(String(STAFF_MAX))  # 職員 who asked
    provider: Mapped[str] = mapped_column(String(PARTY_MAX))  # 情報提供者
    person_key: Mapped[str] = mapped_column(String(PERSON_KEY_MAX))  # hub-internal, never exported
    task_code: Mapped[str] = mapped_column(String(CODE_MAX))  # 事務
    legal_basis: Mapped[str | None] = mapped_column(String(TEXT_MAX))  # the law the entry cites
    whitelist_entry: Mapped[str | None] = mapped_column(String(CODE_MAX))
    info_type_code: Mapped[str] = mapped_column(String(CODE_MAX))  # 特定個人情報
    permitted: Mapped[bool | None] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(String(CODE_MAX))
    person_rule: Mapped[str | None] = mapped_column(String(CODE_MAX))  # the person's rule that decided
    overridden: Mapped[bool] = mapped_column(Boolean, default=False)  # the law over a refusal
    decision_id: Mapped[str] = mapped_column(String(CODE_MAX), index=True)
    query_id: Mapped[str | None] = mapped_column(String(CODE_MAX))
    query_group_id: Mapped[str | None] = mapped_column(String(CODE_MAX), index=True)
    sealed_until: Mapped[datetime | None] = mapped_column(DateTime)
    sealed_reason: Mapped[str | None] = mapped_column(String(TEXT_MAX))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON of a small object
    salt: Mapped[bytes] = mapped_column(LargeBinary(SALT_LEN))
    leaf_data: Mapped[bytes] = mapped_column(LargeBinary(HASH_LEN))  # the salted commitment


class OperationEntry(Base):
    """One entry of the operations log: an administrative change or an authentication event."""

    __tablename__ = "operation_entries"
    __table_args__ = (
        Index("ix_operation_entries_recorded_at", "recorded_at", "id"),
        PrimaryKeyConstraint("id", "recorded_at"),
        UniqueConstraint("entry_id", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Sequence(ENTRY_SEQUENCES["operation_entries"]),
                                    autoincrement=False)
    entry_id: Mapped[str] = mapped_column(String(ID_LEN))
    recorded_at: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(STAFF_MAX))  # a named operator, or who tried
    channel: Mapped[str] = mapped_column(String(16))  # api | cli | login
    action: Mapped[str] = mapped_column(String(CODE_MAX))  # e.g. whitelist.import, login.failed
    target: Mapped[str] = mapped_column(String(PARTY_MAX))
    outcome: Mapped[str] = mapped_column(String(CODE_MAX))
    client: Mapped[str | None] = mapped_column(String(CODE_MAX))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON: before/after, reason
    salt: Mapped[bytes] = mapped_column(LargeBinary(SALT_LEN))
    leaf_data: Mapped[bytes] = mapped_column(LargeBinary(HASH_LEN))


class EntryIdCounter(Base):
    """The last id given to an entry table's row, on SQLite (PostgreSQL uses a sequence).

    Bumped in the appending transaction itself: SQLite has one writer at a time, so the bump
    takes the write lock first and no two transactions see the same value; a rollback gives
    the id back with the entry. (A separate transaction would wait for the caller's own lock.)
    """

    __tablename__ = "entry_id_counters"

    table_name: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)


def _assign_sqlite_id(mapper, connection, target) -> None:
    if target.id is not None or connection.dialect.name != "sqlite":
        return
    table = mapper.local_table.name
    target.id = connection.execute(
        text("UPDATE entry_id_counters SET last_id = last_id + 1 WHERE table_name = :t RETURNING last_id"),
        {"t": table}).scalar()
    if target.id is None:  # a database made before the counter row: start after what is there
        target.id = (connection.execute(text(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")).scalar())
        connection.execute(text("INSERT INTO entry_id_counters (table_name, last_id) VALUES (:t, :i)"),
                           {"t": table, "i": target.id})


class DisclosureReport(Base):
    """Which disclosures an agency has reported, once each: a resent batch records nothing twice."""

    __tablename__ = "disclosure_reports"

    decision_id: Mapped[str] = mapped_column(String(CODE_MAX), primary_key=True)
    info_type_code: Mapped[str] = mapped_column(String(CODE_MAX), primary_key=True)
    owner: Mapped[str] = mapped_column(String(PARTY_MAX), primary_key=True)
    reported_at: Mapped[datetime] = mapped_column(DateTime)


# --- the transparency log -----------------------------------------------------------------


class LogQueue(Base):
    """Entries committed but not yet sequenced into their log's tree (Tessera's pool)."""

    __tablename__ = "tlog_queue"
    __table_args__ = (Index("ix_tlog_queue_log_id", "log", "id"),)

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    log: Mapped[str] = mapped_column(String(16))
    entry_ref: Mapped[int] = mapped_column(BigInteger)
    entry_time: Mapped[datetime] = mapped_column(DateTime)  # the entry's recorded_at: its partition
    leaf_data: Mapped[bytes] = mapped_column(LargeBinary(HASH_LEN))


class LogLeaf(Base):
    """Leaf `leaf_index` of a log: which entry it is and its RFC 9162 leaf hash."""

    __tablename__ = "tlog_leaves"
    __table_args__ = (Index("ix_tlog_leaves_entry", "log", "entry_ref", unique=True),
                      Index("ix_tlog_leaves_time", "log", "entry_time"))

    log: Mapped[str] = mapped_column(String(16), primary_key=True)
    leaf_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry_ref: Mapped[int] = mapped_column(BigInteger)
    # the entry's recorded_at: entries are joined on (id, recorded_at), so PostgreSQL reads
    # only the month partitions it needs, and the leaf outlives its pruned entry
    entry_time: Mapped[datetime] = mapped_column(DateTime)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_LEN))


class LogNode(Base):
    """The hash of a complete subtree: leaves [index·2^level, (index+1)·2^level), level ≥ 1."""

    __tablename__ = "tlog_nodes"

    log: Mapped[str] = mapped_column(String(16), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    node_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_LEN))


class LogState(Base):
    """A log's tree as integrated so far: size, root and right edge. Its row lock makes one
    integrator at a time; appends never touch it, so they run in parallel."""

    __tablename__ = "tlog_state"

    log: Mapped[str] = mapped_column(String(16), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_LEN))
    frontier: Mapped[bytes] = mapped_column(LargeBinary)  # the right edge's subtree roots
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # entries recorded before this were dropped by retention; their leaves and nodes stay
    pruned_before: Mapped[datetime | None] = mapped_column(DateTime)


class LogCheckpoint(Base):
    """A signed checkpoint (C2SP tlog-checkpoint in a signed note) of a log at one size."""

    __tablename__ = "tlog_checkpoints"

    log: Mapped[str] = mapped_column(String(16), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_LEN))
    note: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime] = mapped_column(DateTime)


event.listen(HistoryEntry, "before_insert", _assign_sqlite_id)
event.listen(OperationEntry, "before_insert", _assign_sqlite_id)


# --- value objects ------------------------------------------------------------------------


def _text(name: str, value: object, limit: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise InvalidLogEntry(f"{name} must be a non-empty text")
    if len(value) > limit:
        raise InvalidLogEntry(f"{name} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise InvalidLogEntry(f"{name} must not contain control characters")


def normalized_detail(detail: object) -> dict[str, Any]:
    """`detail` as it reads back from JSON, so the commitment at append equals the export's."""
    from access_history.record import canonical_json

    if not isinstance(detail, Mapping) or not all(isinstance(k, str) for k in detail):
        raise InvalidLogEntry("detail must be an object with text keys")
    try:
        encoded = canonical_json(dict(detail))
    except (TypeError, ValueError) as exc:
        raise InvalidLogEntry(f"detail is not JSON: {exc}") from None
    if len(encoded) > DETAIL_MAX:
        raise InvalidLogEntry(f"detail is larger than {DETAIL_MAX} bytes")
    return json.loads(encoded)


@dataclass(frozen=True)
class EntryIn:
    """One decision, disclosure or relay to record; the service adds ids, time and salt."""

    kind: EntryKind
    channel: Channel
    requester: str
    provider: str
    person_key: str
    task_code: str
    info_type_code: str
    outcome: str
    decision_id: str
    owner: str = HUB_OWNER
    permitted: bool | None = None
    staff: str | None = None
    legal_basis: str | None = None
    whitelist_entry: str | None = None
    person_rule: str | None = None
    overridden: bool = False
    asked_at: datetime | None = None
    provided_at: datetime | None = None
    query_id: str | None = None
    query_group_id: str | None = None
    sealed_until: datetime | None = None
    sealed_reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, enum in (("kind", EntryKind), ("channel", Channel)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise InvalidLogEntry(f"{name} must be one of {', '.join(enum)}") from None
        _text("owner", self.owner, PARTY_MAX)
        _text("requester", self.requester, PARTY_MAX)
        _text("provider", self.provider, PARTY_MAX)
        _text("person_key", self.person_key, PERSON_KEY_MAX)
        for name in ("task_code", "info_type_code", "outcome", "decision_id"):
            _text(name, getattr(self, name), CODE_MAX)
        for name in ("whitelist_entry", "person_rule", "query_id", "query_group_id"):
            _text(name, getattr(self, name), CODE_MAX, optional=True)
        _text("staff", self.staff, STAFF_MAX, optional=True)
        _text("legal_basis", self.legal_basis, TEXT_MAX, optional=True)
        _text("sealed_reason", self.sealed_reason, TEXT_MAX, optional=True)
        if (self.sealed_until is None) != (self.sealed_reason is None):
            raise InvalidLogEntry("a sealed entry names both its reason and its date")
        if self.permitted is None and self.kind is not EntryKind.DISCLOSURE:
            raise InvalidLogEntry(f"a {self.kind} entry must say whether it was permitted")
        if self.permitted is not None and not isinstance(self.permitted, bool):
            raise InvalidLogEntry("permitted must be true, false or null")
        object.__setattr__(self, "detail", normalized_detail(self.detail))


@dataclass(frozen=True)
class OperationIn:
    """One administrative change or authentication event to record."""

    actor: str
    channel: str
    action: str
    target: str
    outcome: str = "ok"
    client: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text("actor", self.actor, STAFF_MAX)
        _text("channel", self.channel, 16)
        _text("action", self.action, CODE_MAX)
        _text("target", self.target, PARTY_MAX)
        _text("outcome", self.outcome, CODE_MAX)
        _text("client", self.client, CODE_MAX, optional=True)
        object.__setattr__(self, "detail", normalized_detail(self.detail))
