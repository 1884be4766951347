"""Tables and value objects of the consent room.

Agencies live in another room, so requesters and providers are plain strings here: an agency's
entity ID (`http://127.0.0.1:8101/metadata`) or a class of agencies (`class:municipality`).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from consent.errors import InvalidPolicyRule, WhitelistImportError
from kernel.db import Base, utcnow
from kernel.errors import shown
from kernel.validate import control_problem, identifier_problem

CLASS_PREFIX = "class:"
PARTY_MAX = 1024
CODE_MAX = 64
NAME_MAX = 512
PERSON_KEY_MAX = 128
LEGAL_BASIS_MAX = 512  # as long as the access history stores the law a decision cites

_CLASS_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


class ConsentMode(StrEnum):
    """Whether a whitelist entry needs the person's consent or the law overrides it."""

    REQUIRED = "required"
    OVERRIDE = "override"


class Effect(StrEnum):
    """What a rule of the person's policy does."""

    ALLOW = "allow"
    DENY = "deny"


class DecisionReason(StrEnum):
    """Why a disclosure was permitted or refused; logged and shown to the person."""

    NO_WHITELIST_ENTRY = "NO_WHITELIST_ENTRY"
    DENIED_BY_PERSON = "DENIED_BY_PERSON"
    LAW_OVERRIDES_CONSENT = "LAW_OVERRIDES_CONSENT"
    CONSENT_NOT_GIVEN = "CONSENT_NOT_GIVEN"
    PERMITTED_BY_CONSENT = "PERMITTED_BY_CONSENT"
    # an override entry and no rule of the person's about it: the law alone permits
    PERMITTED_BY_LAW = "PERMITTED_BY_LAW"


def party_problem(value: object) -> str | None:
    """Why `value` is not a valid party reference (entity ID or `class:<name>`), or None."""
    if not isinstance(value, str) or not value.strip():
        return f"must be an agency entity ID or 'class:<name>', got {shown(value)}"
    if problem := identifier_problem(value, max_length=PARTY_MAX):
        return problem
    if value.startswith(CLASS_PREFIX):
        if not _CLASS_NAME.fullmatch(value[len(CLASS_PREFIX):]):
            return f"class name must be letters, digits, '_', '.' or '-', got {shown(value)}"
        return None
    if not _URI.fullmatch(value):
        return f"must be an agency entity ID (a URI) or 'class:<name>', got {shown(value)}"
    return None


# --- tables -------------------------------------------------------------------------------


class WhitelistEntry(Base):
    """One exchange the law allows (別表第２): requester, provider, task (事務), information."""

    __tablename__ = "consent_whitelist_entry"
    __table_args__ = (
        UniqueConstraint("requester", "provider", "task_code", "info_type_code"),
        CheckConstraint("consent IN ('required', 'override')", name="consent"),
        Index("ix_consent_whitelist_entry_task_info", "task_code", "info_type_code"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    requester: Mapped[str] = mapped_column(String(PARTY_MAX))  # 情報照会者
    provider: Mapped[str] = mapped_column(String(PARTY_MAX))  # 情報提供者
    task_code: Mapped[str] = mapped_column(String(CODE_MAX))  # 事務
    task_name: Mapped[str] = mapped_column(String(NAME_MAX))
    info_type_code: Mapped[str] = mapped_column(String(CODE_MAX))  # 特定個人情報
    info_type_name: Mapped[str] = mapped_column(String(NAME_MAX))
    legal_basis: Mapped[str] = mapped_column(Text)
    consent: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # set when an agency it names is retired: kept for history, never decides again
    retired_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    @property
    def consent_mode(self) -> ConsentMode:
        return ConsentMode(self.consent)


class PolicyVersion(Base):
    """One version of a person's disclosure policy (利用許諾ポリシー); never changed once written."""

    __tablename__ = "consent_policy_version"
    __table_args__ = (UniqueConstraint("person_key", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_key: Mapped[str] = mapped_column(String(PERSON_KEY_MAX))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    rules: Mapped[list[PolicyRule]] = relationship(
        back_populates="policy_version",
        order_by="PolicyRule.position",
        cascade="all, delete-orphan",
        lazy="selectin",
    )
    receipt: Mapped[ConsentReceipt | None] = relationship(back_populates="policy_version")


class PolicyRule(Base):
    """An allow or deny over requester, provider, task and information type (None = any)."""

    __tablename__ = "consent_policy_rule"
    __table_args__ = (
        CheckConstraint("effect IN ('allow', 'deny')", name="effect"),
        CheckConstraint(
            "valid_from IS NULL OR valid_until IS NULL OR valid_from < valid_until",
            name="period",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("consent_policy_version.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    effect: Mapped[str] = mapped_column(String(8))
    requester: Mapped[str | None] = mapped_column(String(PARTY_MAX))
    provider: Mapped[str | None] = mapped_column(String(PARTY_MAX))
    task_code: Mapped[str | None] = mapped_column(String(CODE_MAX))
    info_type_code: Mapped[str | None] = mapped_column(String(CODE_MAX))
    valid_from: Mapped[datetime | None] = mapped_column(DateTime)
    valid_until: Mapped[datetime | None] = mapped_column(DateTime)

    policy_version: Mapped[PolicyVersion] = relationship(back_populates="rules")

    def in_force(self, at: datetime) -> bool:
        """True when `at` (naive UTC) lies in [valid_from, valid_until)."""
        return rule_in_force(self, at)

    def as_input(self) -> PolicyRuleIn:
        return PolicyRuleIn(
            effect=Effect(self.effect),
            requester=self.requester,
            provider=self.provider,
            task_code=self.task_code,
            info_type_code=self.info_type_code,
            valid_from=self.valid_from,
            valid_until=self.valid_until,
        )


def rule_in_force(rule: PolicyRule | Any, at: datetime) -> bool:
    """True when `at` (naive UTC) lies in the rule's [valid_from, valid_until): for a rule as a
    row too (`consent.service.policy_in_force`)."""
    if rule.valid_from is not None and at < rule.valid_from:
        return False
    return rule.valid_until is None or at < rule.valid_until


class ConsentReceipt(Base):
    """A signed Kantara consent receipt (compact JWS) issued for one policy version."""

    __tablename__ = "consent_receipt"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # consentReceiptID
    person_key: Mapped[str] = mapped_column(String(PERSON_KEY_MAX), index=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("consent_policy_version.id", ondelete="CASCADE"), unique=True
    )
    issued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    key_version: Mapped[int] = mapped_column(Integer)
    jws: Mapped[str] = mapped_column(Text)

    policy_version: Mapped[PolicyVersion] = relationship(back_populates="receipt")


# --- value objects ------------------------------------------------------------------------


WHITELIST_FIELDS = (
    "requester",
    "provider",
    "task_code",
    "task_name",
    "info_type_code",
    "info_type_name",
    "consent",
    "legal_basis",
)


def whitelist_entry_problems(values: Mapping[str, object]) -> list[tuple[str, str]]:
    """Every (field, message) wrong with a whitelist entry's values; empty when it is valid."""
    problems: list[tuple[str, str]] = []
    for field in ("requester", "provider"):
        if problem := party_problem(values.get(field)):
            problems.append((field, f"{field} {problem}"))
    limits = {"task_code": CODE_MAX, "info_type_code": CODE_MAX, "task_name": NAME_MAX,
              "info_type_name": NAME_MAX, "legal_basis": LEGAL_BASIS_MAX}
    for field, limit in limits.items():
        value = values.get(field)
        if not isinstance(value, str) or not value.strip():
            problems.append((field, f"{field} must be a non-empty text, got {shown(value)}"))
        elif field.endswith("_code") and (problem := identifier_problem(value, max_length=limit)):
            problems.append((field, f"{field} {problem}"))
        elif limit and len(value) > limit:
            problems.append((field, f"{field} is longer than {limit} characters"))
        # PostgreSQL refuses NUL, bidi overrides mislead readers; a long name or law may break lines
        elif problem := control_problem(value, allow="\n"):
            problems.append((field, f"{field} {problem}"))
    consent = values.get("consent")
    if consent not in tuple(ConsentMode):
        problems.append(("consent", f"consent must be 'required' or 'override', got {shown(consent)}"))
    return problems


@dataclass(frozen=True)
class WhitelistEntryIn:
    """A validated whitelist entry as read from a file or an operator form."""

    requester: str
    provider: str
    task_code: str
    task_name: str
    info_type_code: str
    info_type_name: str
    legal_basis: str
    consent: ConsentMode

    def __post_init__(self) -> None:
        problems = whitelist_entry_problems(self.__dict__)
        if problems:
            raise WhitelistImportError([message for _, message in problems])
        object.__setattr__(self, "consent", ConsentMode(self.consent))

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.requester, self.provider, self.task_code, self.info_type_code)

    @classmethod
    def from_row(cls, row: WhitelistEntry) -> WhitelistEntryIn:
        return cls(
            requester=row.requester,
            provider=row.provider,
            task_code=row.task_code,
            task_name=row.task_name,
            info_type_code=row.info_type_code,
            info_type_name=row.info_type_name,
            legal_basis=row.legal_basis,
            consent=ConsentMode(row.consent),
        )


@dataclass(frozen=True)
class PolicyRuleIn:
    """A rule the person sets; every field but `effect` is optional and then matches anything."""

    effect: Effect
    requester: str | None = None
    provider: str | None = None
    task_code: str | None = None
    info_type_code: str | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "effect", Effect(self.effect))
        except ValueError:
            raise InvalidPolicyRule(
                f"effect must be 'allow' or 'deny', got {shown(self.effect)}"
            ) from None
        for field in ("requester", "provider"):
            value = getattr(self, field)
            if value is not None and (problem := party_problem(value)):
                raise InvalidPolicyRule(f"{field} {problem}")
        for field in ("task_code", "info_type_code"):
            value = getattr(self, field)
            if value is not None and (not value.strip() or identifier_problem(value, max_length=CODE_MAX)):
                raise InvalidPolicyRule(
                    f"{field} must be 1-{CODE_MAX} characters without control characters, got {shown(value)}"
                )
        for field in ("valid_from", "valid_until"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, naive_utc(value))
        if self.valid_from and self.valid_until and self.valid_from >= self.valid_until:
            raise InvalidPolicyRule("valid_until must be later than valid_from")


@dataclass(frozen=True)
class Decision:
    """The outcome of one disclosure question, with the reason that decided it."""

    permitted: bool
    reason: DecisionReason
    whitelist_entry_id: int | None
    policy_version: int | None
    overridden: bool = False  # the person said no and the law overrode it
    rule_id: int | None = None  # the person's rule that decided, if any
    legal_basis: str | None = None  # the law the whitelist entry cites


def naive_utc(value: datetime) -> datetime:
    """`value` as naive UTC, the way every timestamp is stored."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)
