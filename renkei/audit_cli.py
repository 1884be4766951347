"""`renkei audit`: export a log for an auditor, verify an export offline, keep a checkpoint."""
from __future__ import annotations

import getpass
import io
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from kernel.settings import get_settings

LOGS = ("access", "operations")


def _when(value: str | None, what: str) -> datetime | None:
    """A date (`2026-12-01`) or time (`2026-12-01T09:00:00+09:00`) as naive UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or ISO time", param_hint=what) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _ready_db() -> str:
    from kernel.db import DatabaseNotMigrated, check_migrated

    url = get_settings().db_url
    try:
        check_migrated(url)
    except DatabaseNotMigrated as exc:
        raise click.ClickException(str(exc)) from None
    return url


@click.group()
def audit() -> None:
    """Export the access history or the operations log, and verify exports (監査)."""


@audit.command("export")
@click.option("--from", "start", help="First day or time included (YYYY-MM-DD or ISO 8601).")
@click.option("--to", "end", help="First day or time no longer included.")
@click.option("--agency", help="Only entries naming this agency's entity ID (others stay as leaf hashes).")
@click.option("--outcome", help="Only entries with this outcome, e.g. DENIED_BY_PERSON.")
@click.option("--log", "log", type=click.Choice(LOGS), default="access", show_default=True)
@click.option("--format", "fmt", type=click.Choice(("jsonl", "csv")), default="jsonl", show_default=True,
              help="jsonl carries leaf data, the checkpoint and proofs; csv only the readable fields.")
@click.option("--since", "since", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A checkpoint you saved earlier: the export proves it extends that checkpoint.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (written whole or not at all).")
def audit_export(start, end, agency, outcome, log, fmt, since, out) -> None:
    """Stream a log's entries in a period to a file, with what proves them (constant memory)."""
    from access_history import audit as history_audit
    from access_history import service as history
    from access_history import tlog
    from access_history.models import OperationIn
    from kernel.db import session_scope
    from kernel.keys import keystore

    filters = history_audit.ExportFilter(_when(start, "--from"), _when(end, "--to"), agency, outcome)
    since_size = None
    if since is not None:
        try:
            since_size = tlog.Checkpoint.parse(tlog.note_text(since.read_text(encoding="utf-8"))).size
        except (tlog.ProofInvalid, UnicodeDecodeError, OSError) as exc:
            raise click.ClickException(f"{since}: not a saved checkpoint ({exc})") from None
    url = _ready_db()
    settings = get_settings()
    keys = keystore()
    history.integrate_all(session_scope=lambda: session_scope(url), keys=keys, scope=settings.scope)
    signer = history.log_signer(keys=keys, scope=settings.scope, log=log)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with session_scope(url) as db, tmp.open("wb") as fh:
            if fmt == "jsonl":  # streamed as bytes: the server formats the lines on PostgreSQL
                header = history_audit.export_header(db_session=db, log=log, verifier_key=signer.verifier_key,
                                                     filters=filters, since_size=since_size)
                counts: dict[str, int] = {}
                with click.progressbar(length=header["end_index"] - header["start_index"], label="exporting",
                                       file=sys.stderr, show_pos=True) as bar:
                    done = 0
                    for block in history_audit.export_jsonl_chunks(
                            db_session=db, log=log, verifier_key=signer.verifier_key, filters=filters,
                            since_size=since_size, counts=counts):
                        fh.write(block)
                        bar.update(counts["leaves"] - done)
                        done = counts["leaves"]
                entries = counts["entries"]
            else:
                lines = history_audit.export(db_session=db, log=log, verifier_key=signer.verifier_key,
                                             filters=filters, since_size=since_size)
                header = next(lines)
                total = header["end_index"] - header["start_index"]
                text_out = io.TextIOWrapper(fh, encoding="utf-8", newline="")
                with click.progressbar(length=total, label="exporting", file=sys.stderr,
                                       show_pos=True) as bar:
                    entries = history_audit.export_csv(_counting(header, lines, bar.update), text_out)
                text_out.flush()
                text_out.detach()
            history.record_operation(db_session=db, operation=OperationIn(
                actor=f"cli:{getpass.getuser()}", channel="cli", action="audit.export", target=log,
                detail={"filters": filters.describe(), "format": fmt, "entries": entries,
                        "tree_size": header["tree_size"]}))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"exported {entries} entries of the {log} log (tree size {header['tree_size']}) to {out}")


def _counting(header, lines, update):
    yield header
    for line in lines:
        if line.get("type") in ("entry", "leaf"):
            update(1)
        yield line


@audit.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--since", "since", type=click.Path(dir_okay=False, path_type=Path),
              help="A checkpoint you saved earlier: the export must extend it.")
@click.option("--key", "key", help="The hub's verifier key (GET /history/checkpoint.vkey), or a file holding it.")
def audit_verify(file: Path, since: Path | None, key: str | None) -> None:
    """Verify an export offline. Exit 0 when sound, 1 when not, 2 when it cannot be read.

    Names the first altered, missing, reordered or extra entry; with --since, also proves that
    the export extends the checkpoint you kept, so a history rewritten since then is caught.
    """
    from access_history import audit as history_audit

    try:
        saved = since.read_text(encoding="utf-8") if since else None
        if key is not None and Path(key).is_file():
            key = Path(key).read_text(encoding="utf-8").strip()
        with file.open(encoding="utf-8") as fh:
            report = history_audit.verify((line.rstrip("\n") for line in fh if line.strip()),
                                          verifier_key=key, saved_checkpoint=saved)
    except (OSError, UnicodeDecodeError) as exc:
        click.echo(f"cannot read the export: {exc}", err=True)
        sys.exit(2)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@audit.command("checkpoint")
@click.option("--log", "log", type=click.Choice(LOGS), default="access", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Save it to this file (keep it: later exports must extend it).")
def audit_checkpoint(log: str, out: Path | None) -> None:
    """Print (or save) the log's newest signed checkpoint, after integrating what is queued."""
    from access_history import ledger
    from access_history import service as history
    from kernel.db import session_scope
    from kernel.keys import keystore

    url = _ready_db()
    settings = get_settings()
    history.integrate_all(session_scope=lambda: session_scope(url), keys=keystore(), scope=settings.scope)
    with session_scope(url) as db:
        latest = ledger.latest_checkpoint(db_session=db, log=log)
        if latest is None:
            raise click.ClickException(f"the {log} log has no entries yet")
        note = latest.note
    if out is None:
        click.echo(note, nl=False)
    else:
        out.write_text(note, encoding="utf-8")
        click.echo(f"saved the checkpoint of size {latest.size} to {out}")


@audit.command("check-proof")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", "key", help="The hub's verifier key (GET /history/checkpoint.vkey), or a file holding it.")
def audit_check_proof(file: Path, key: str | None) -> None:
    """Check a person's history download (JSON with inclusion proofs) offline.

    Exit 0 when every entry is included in the signed checkpoint, 1 when not, 2 when the file
    cannot be read.
    """
    import json

    from access_history.person import check_bundle

    try:
        if key is not None and Path(key).is_file():
            key = Path(key).read_text(encoding="utf-8").strip()
        bundle = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        click.echo(f"cannot read the file: {exc}", err=True)
        sys.exit(2)
    report = check_bundle(bundle, verifier_key=key)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)
