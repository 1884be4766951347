"""Tables of the process room: installed definitions and their lifecycle, conformance runs,
and the runs (instances) of processes with the state of each activity.

Agencies and people live in other rooms: here they are plain strings (entity IDs, the hub's
person key), as in the consent room."""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base
from process.definition import ACTIVITY_ID_MAX, CODE_MAX, NAME_MAX, PARTY_MAX, PROCESS_ID_MAX

ID_LEN = 32  # hex of 16 random bytes
PERSON_KEY_MAX = 128
REASON_MAX = 512


class Lifecycle(StrEnum):
    """A definition's lifecycle (seed 003): define → implement → conformance test → operate."""

    DEFINED = "defined"
    IMPLEMENTED = "implemented"
    CONFORMANCE_TESTED = "conformance-tested"
    OPERATING = "operating"


class StepStatus(StrEnum):
    PENDING = "pending"  # waiting for what it comes after, or for its delivery
    DONE = "done"  # the exchange was permitted and carried out
    REFUSED = "refused"  # the hub refused it (whitelist, the person's policy) or the provider did
    FAILED = "failed"  # it could not be carried out (a provider unreachable, no offering)
    SKIPPED = "skipped"  # its branch was not taken
    BLOCKED = "blocked"  # something it depends on did not complete


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"  # every activity done or skipped
    INCOMPLETE = "incomplete"  # finished, some activity refused, failed or blocked


class ProcessDefinitionRow(Base):
    """One version of a process definition as installed, and where it is in its lifecycle."""

    __tablename__ = "process_definitions"
    __table_args__ = (
        CheckConstraint("status IN ('defined', 'implemented', 'conformance-tested', 'operating')",
                        name="status"),
    )

    process_id: Mapped[str] = mapped_column(String(PROCESS_ID_MAX), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    owner: Mapped[str] = mapped_column(String(NAME_MAX))  # the process owner (ministry)
    process_type: Mapped[str] = mapped_column(String(CODE_MAX))
    source: Mapped[str] = mapped_column(Text)  # the YAML as installed
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of the source
    status: Mapped[str] = mapped_column(String(32))
    installed_at: Mapped[datetime] = mapped_column(DateTime)
    status_changed_at: Mapped[datetime] = mapped_column(DateTime)


class ConformanceRun(Base):
    """One conformance test of one agency against one definition version, and its verdict."""

    __tablename__ = "process_conformance_runs"
    __table_args__ = (
        ForeignKeyConstraint(["process_id", "version"],
                             ["process_definitions.process_id", "process_definitions.version"]),
        Index("ix_process_conformance_runs_definition", "process_id", "version", "agency"),
    )

    run_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    process_id: Mapped[str] = mapped_column(String(PROCESS_ID_MAX))
    version: Mapped[int] = mapped_column(Integer)
    agency: Mapped[str] = mapped_column(String(PARTY_MAX))
    passed: Mapped[bool] = mapped_column(Boolean)
    ran_at: Mapped[datetime] = mapped_column(DateTime)
    report: Mapped[str] = mapped_column(Text)  # the JSON report as written


class ProcessInstance(Base):
    """One run of a process for one person: its access-history entries share its query group."""

    __tablename__ = "process_instances"
    __table_args__ = (
        ForeignKeyConstraint(["process_id", "version"],
                             ["process_definitions.process_id", "process_definitions.version"]),
        CheckConstraint("status IN ('running', 'completed', 'incomplete')", name="status"),
        Index("ix_process_instances_person", "person_key", "started_at"),
        Index("ix_process_instances_status", "status"),
    )

    instance_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    query_group_id: Mapped[str] = mapped_column(String(ID_LEN), unique=True)
    process_id: Mapped[str] = mapped_column(String(PROCESS_ID_MAX))
    version: Mapped[int] = mapped_column(Integer)
    person_key: Mapped[str] = mapped_column(String(PERSON_KEY_MAX))
    trigger_channel: Mapped[str] = mapped_column(String(CODE_MAX))  # counter | portal | life_event
    started_by: Mapped[str] = mapped_column(String(PARTY_MAX))  # the agency, or the portal
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # the application as filed (申請内容), which relayed notices carry; dropped when the run ends
    application: Mapped[str | None] = mapped_column(Text)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime)  # one runner at a time


class ProcessStep(Base):
    """The state of one activity of one run; written as the run moves, so a restart resumes."""

    __tablename__ = "process_steps"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'done', 'refused', 'failed', 'skipped', 'blocked')",
                        name="status"),
    )

    instance_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    activity_id: Mapped[str] = mapped_column(String(ACTIVITY_ID_MAX), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(REASON_MAX))
    decision_ids: Mapped[str | None] = mapped_column(String(REASON_MAX))  # comma-separated
    result: Mapped[str | None] = mapped_column(Text)  # JSON: what the requester received
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
