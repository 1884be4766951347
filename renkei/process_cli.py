"""`renkei process`, `renkei conformance` and `renkei metering`: business process flows
(業務プロセスフロー), their conformance tests and billing counts (docs/processes.md)."""
from __future__ import annotations

import getpass
import os
from pathlib import Path

import click

from kernel.settings import get_settings
from renkei.audit_cli import _ready_db


def _placeholders(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, entity_id = value.partition("=")
        if not sep or not key or not entity_id:
            raise click.BadParameter(f"{value!r}: write NAME=ENTITY_ID", param_hint="--set")
        out[key] = entity_id
    return out


def _load(file: Path, values: tuple[str, ...]):
    from process.definition import DefinitionInvalid, load_definition

    try:
        return load_definition(file, placeholders=_placeholders(values))
    except DefinitionInvalid as exc:
        raise click.ClickException(str(exc)) from None


def _write_whole(out: Path, text: str | bytes) -> None:
    """Write the file whole or not at all."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _operation(db, action: str, target: str, detail: dict) -> None:
    from access_history import service as history
    from access_history.models import OperationIn

    history.record_operation(db_session=db, operation=OperationIn(
        actor=f"cli:{getpass.getuser()}", channel="cli", action=action, target=target[:1024], detail=detail))


def _process_errors():
    from process.service import ProcessError

    return ProcessError


SET_HELP = "Fill {NAME} in the file with an agency's entity ID (repeatable)."


@click.group()
def process() -> None:
    """Business process flows (業務プロセスフロー): install, advance, export."""


@process.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "values", multiple=True, help=SET_HELP)
def process_validate(file: Path, values: tuple[str, ...]) -> None:
    """Check a definition file; say what is wrong and where."""
    definition, _ = _load(file, values)
    click.echo(f"{definition.id} v{definition.version}: valid, {len(definition.activities)} activities, "
               f"owner {definition.owner.name}")


@process.command("export-bpmn")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "values", multiple=True, help=SET_HELP)
def process_export_bpmn(file: Path, out: Path, values: tuple[str, ...]) -> None:
    """Write the definition as BPMN 2.0 XML for the process owner's modelling tools."""
    from process.bpmn import export_bpmn

    definition, _ = _load(file, values)
    _write_whole(out, export_bpmn(definition))
    click.echo(f"wrote {definition.id} v{definition.version} as BPMN 2.0 to {out}")


@process.command("install")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "values", multiple=True, help=SET_HELP)
def process_install(file: Path, values: tuple[str, ...]) -> None:
    """Install a definition version (lifecycle: defined)."""
    from kernel.db import session_scope
    from process import service

    definition, text = _load(file, values)
    with session_scope(_ready_db()) as db:
        try:
            installed, new = service.install(db_session=db, definition=definition, source=text)
        except _process_errors() as exc:
            raise click.ClickException(str(exc)) from None
        if new:
            _operation(db, "process.install", definition.id, {"version": definition.version,
                                                              "digest": installed.digest})
    click.echo(f"{definition.id} v{definition.version}: {'installed' if new else 'already installed'}, "
               f"{installed.status}")


@process.command("list")
def process_list() -> None:
    """Installed definitions and where each is in its lifecycle."""
    from kernel.db import session_scope
    from process import service

    with session_scope(_ready_db()) as db:
        for row in service.list_installed(db_session=db):
            click.echo(f"{row.process_id}\tv{row.version}\t{row.status}\t{row.owner}\t{row.name}")


def _advance(action: str, process_id: str, version: int | None) -> None:
    from kernel.db import session_scope
    from process import service

    with session_scope(_ready_db()) as db:
        try:
            if action == "implemented":
                installed = service.mark_implemented(db_session=db, process_id=process_id, version=version)
            else:
                installed = service.put_into_operation(db_session=db, process_id=process_id, version=version)
        except _process_errors() as exc:
            raise click.ClickException(str(exc)) from None
        _operation(db, f"process.{action}", process_id, {"version": installed.version})
    click.echo(f"{process_id} v{installed.version}: {installed.status}")


@process.command("implemented")
@click.argument("process_id")
@click.option("--version", type=int, help="Default: the newest installed.")
def process_implemented(process_id: str, version: int | None) -> None:
    """The agencies have built their side: the definition may be conformance-tested."""
    _advance("implemented", process_id, version)


@process.command("operate")
@click.argument("process_id")
@click.option("--version", type=int, help="Default: the newest installed.")
def process_operate(process_id: str, version: int | None) -> None:
    """Put a conformance-tested version into operation (installs its relay routes)."""
    _advance("operate", process_id, version)


@click.group()
def conformance() -> None:
    """Conformance tests of agencies' endpoints against a process (適合性試験)."""


@conformance.command("run")
@click.option("--agency", required=True, help="The entity ID of the agency under test.")
@click.option("--process", "process_id", required=True, help="The process definition's ID.")
@click.option("--version", type=int, help="Default: the newest installed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Directory for the report (conformance-PROCESS-vN-*.md and .json).")
@click.option("--deadline", type=float, default=5.0, show_default=True,
              help="Seconds an endpoint may take to answer.")
def conformance_run(agency: str, process_id: str, version: int | None, out: Path, deadline: float) -> None:
    """Drive the agency's endpoints through every activity it takes part in; exit 1 if it fails."""
    import hashlib

    from kernel.db import session_scope
    from process import conformance as kit
    from process import service

    if not 0 < deadline <= 120:
        raise click.BadParameter("give 0 < seconds <= 120", param_hint="--deadline")
    url = _ready_db()
    settings = get_settings()
    with session_scope(url) as db:
        try:
            installed = service.get(db_session=db, process_id=process_id, version=version)
            report = kit.run_conformance(db_session=db, settings=settings, installed=installed, agency=agency,
                                         deadline=deadline)
            after = service.record_conformance(db_session=db, installed=installed, agency=agency,
                                               passed=report.passed, report=report.to_json())
        except (ValueError, _process_errors()) as exc:
            raise click.ClickException(str(exc)) from None
        _operation(db, "conformance.run", agency, {"process": process_id, "version": installed.version,
                                                     "passed": report.passed})
    out.mkdir(parents=True, exist_ok=True)
    stem = f"conformance-{process_id}-v{installed.version}-{hashlib.sha256(agency.encode()).hexdigest()[:8]}"
    _write_whole(out / f"{stem}.md", report.to_markdown())
    _write_whole(out / f"{stem}.json", kit.report_json(report))
    click.echo(report.to_markdown())
    click.echo(f"report written to {out / stem}.md and .json; {process_id} v{installed.version} is {after.status}")
    if not report.passed:
        raise SystemExit(1)


@click.group()
def metering() -> None:
    """Billing counts (課金) built from the access history."""


@metering.command("export")
@click.option("--month", required=True, help="YYYY-MM (UTC).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def metering_export(month: str, out: Path) -> None:
    """Counts per requester, provider and process in a month, as CSV."""
    from access_history import service as history
    from kernel.db import session_scope
    from kernel.keys import keystore
    from process import metering as meter

    try:
        meter.month_bounds(month)
    except meter.BadMonth as exc:
        raise click.BadParameter(str(exc), param_hint="--month") from None
    url = _ready_db()
    settings = get_settings()
    keys = keystore()
    history.integrate_all(session_scope=lambda: session_scope(url), keys=keys, scope=settings.scope)
    signer = history.log_signer(keys=keys, scope=settings.scope, log="access")
    with session_scope(url) as db:
        rows = meter.meter(db_session=db, month=month, verifier_key=signer.verifier_key)
        _write_whole(out, meter.to_csv(rows))
        _operation(db, "metering.export", month, {"rows": len(rows)})
    click.echo(f"wrote {len(rows)} rows for {month} to {out}")
