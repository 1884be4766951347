"""Installed process definitions and their lifecycle (seed 003: define → implement →
conformance test → operate). A definition version is immutable once installed; only an
operating one can run, and reaching `operating` needs a passing conformance run of every
agency whose endpoint the process drives.

The caller owns the transaction: these functions flush, never commit.
"""
from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from kernel.db import utcnow
from process.definition import ProcessDefinition, digest, parse_definition
from process.models import ConformanceRun, Lifecycle, ProcessDefinitionRow


class ProcessError(ValueError):
    """A lifecycle rule was broken; the message says which."""


class UnknownProcess(ProcessError):
    pass


class NotOperating(ProcessError):
    """The definition has not passed its conformance test and been put into operation."""


@dataclass(frozen=True)
class Installed:
    """A definition version as installed: its lifecycle status and its parsed content."""

    process_id: str
    version: int
    status: Lifecycle
    digest: str
    definition: ProcessDefinition


@functools.lru_cache(maxsize=64)
def _parsed(source: str, label: str) -> ProcessDefinition:
    """An installed version never changes: parse its text once (runs read it at every step)."""
    return parse_definition(source, source=label)


def _installed(row: ProcessDefinitionRow) -> Installed:
    return Installed(row.process_id, row.version, Lifecycle(row.status), row.digest,
                     _parsed(row.source, f"{row.process_id} v{row.version}"))


def conformance_parties(definition: ProcessDefinition) -> set[str]:
    """The agencies whose endpoints the process drives: a lookup's provider answers tokens, a
    relay's requester (the receiver of the notice) receives envelopes."""
    return {a.provider if a.exchange == "lookup" else a.requester for a in definition.activities}


def install(*, db_session: Session, definition: ProcessDefinition, source: str) -> tuple[Installed, bool]:
    """Install a version as `defined`; installing the same text again changes nothing. A
    version's content never changes: a changed definition is a new version."""
    row = db_session.get(ProcessDefinitionRow, (definition.id, definition.version))
    text_digest = digest(source)
    if row is not None:
        if row.digest != text_digest:
            raise ProcessError(f"{definition.id} version {definition.version} is installed with other "
                               f"content; give the changed definition a new version")
        return _installed(row), False
    now = utcnow()
    row = ProcessDefinitionRow(process_id=definition.id, version=definition.version, name=definition.name,
                               owner=definition.owner.name, process_type=definition.process_type,
                               source=source, digest=text_digest, status=str(Lifecycle.DEFINED),
                               installed_at=now, status_changed_at=now)
    db_session.add(row)
    db_session.flush()
    return _installed(row), True


def get(*, db_session: Session, process_id: str, version: int | None = None) -> Installed:
    """A version of a definition, by default the newest installed."""
    stmt = select(ProcessDefinitionRow).where(ProcessDefinitionRow.process_id == process_id)
    if version is not None:
        stmt = stmt.where(ProcessDefinitionRow.version == version)
    row = db_session.scalars(stmt.order_by(ProcessDefinitionRow.version.desc()).limit(1)).first()
    if row is None:
        raise UnknownProcess(f"no process {process_id}" + (f" version {version}" if version else "") + " is installed")
    return _installed(row)


def operating(*, db_session: Session, process_id: str) -> Installed:
    """The newest operating version: the one a trigger starts."""
    row = db_session.scalars(select(ProcessDefinitionRow).where(
        ProcessDefinitionRow.process_id == process_id, ProcessDefinitionRow.status == str(Lifecycle.OPERATING))
        .order_by(ProcessDefinitionRow.version.desc()).limit(1)).first()
    if row is None:
        get(db_session=db_session, process_id=process_id)  # UnknownProcess if none at all
        raise NotOperating(f"process {process_id} is not operating: it must pass its conformance test "
                           f"and be put into operation first")
    return _installed(row)


def list_installed(*, db_session: Session) -> list[ProcessDefinitionRow]:
    return list(db_session.scalars(select(ProcessDefinitionRow).order_by(
        ProcessDefinitionRow.process_id, ProcessDefinitionRow.version)))


def _set(db_session: Session, installed: Installed, status: Lifecycle) -> Installed:
    row = db_session.get(ProcessDefinitionRow, (installed.process_id, installed.version))
    row.status, row.status_changed_at = str(status), utcnow()
    db_session.flush()
    return _installed(row)


def mark_implemented(*, db_session: Session, process_id: str, version: int | None = None) -> Installed:
    """The agencies have built their side: the definition may now be conformance-tested."""
    installed = get(db_session=db_session, process_id=process_id, version=version)
    if installed.status is not Lifecycle.DEFINED:
        raise ProcessError(f"{process_id} v{installed.version} is {installed.status}, not defined")
    return _set(db_session, installed, Lifecycle.IMPLEMENTED)


def record_conformance(*, db_session: Session, installed: Installed, agency: str, passed: bool,
                       report: dict) -> Installed:
    """Keep one agency's conformance verdict; once every party's latest run has passed, the
    definition is conformance-tested. A failed run keeps it from getting there; it does not
    withdraw a version already operating (the owner installs a new version for that)."""
    if installed.status is Lifecycle.DEFINED:
        raise ProcessError(f"{installed.process_id} v{installed.version} is only defined: mark it "
                           f"implemented before testing its conformance")
    db_session.add(ConformanceRun(run_id=secrets.token_hex(16), process_id=installed.process_id,
                                  version=installed.version, agency=agency, passed=passed, ran_at=utcnow(),
                                  report=json.dumps(report, ensure_ascii=False, sort_keys=True)))
    db_session.flush()
    if installed.status is Lifecycle.IMPLEMENTED and not missing_conformance(db_session=db_session,
                                                                             installed=installed):
        return _set(db_session, installed, Lifecycle.CONFORMANCE_TESTED)
    return installed


def missing_conformance(*, db_session: Session, installed: Installed) -> list[str]:
    """The parties whose latest conformance run of this version is missing or failed."""
    missing = []
    for agency in sorted(conformance_parties(installed.definition)):
        latest = db_session.scalars(select(ConformanceRun).where(
            ConformanceRun.process_id == installed.process_id, ConformanceRun.version == installed.version,
            ConformanceRun.agency == agency).order_by(ConformanceRun.ran_at.desc()).limit(1)).first()
        if latest is None or not latest.passed:
            missing.append(agency)
    return missing


def put_into_operation(*, db_session: Session, process_id: str, version: int | None = None,
                       install_routes: Callable[[ProcessDefinition], None] | None = None) -> Installed:
    """Operate a conformance-tested version: its relay activities' routes go into the relay's
    route table (or through `install_routes`, when given), and triggers start it from now on."""
    installed = get(db_session=db_session, process_id=process_id, version=version)
    if installed.status is Lifecycle.OPERATING:
        return installed
    if installed.status is not Lifecycle.CONFORMANCE_TESTED:
        missing = missing_conformance(db_session=db_session, installed=installed)
        raise NotOperating(f"{process_id} v{installed.version} is {installed.status}: it cannot operate before "
                           f"it passes its conformance test" + (f" (not yet passed: {', '.join(missing)})"
                                                                if missing else ""))
    if install_routes is None:
        from process.relaying import install_routes as into_route_table

        into_route_table(db_session=db_session, definition=installed.definition)
    else:
        install_routes(installed.definition)
    return _set(db_session, installed, Lifecycle.OPERATING)
