"""`renkei history prune`: drop whole months of entries older than each log's retention."""
from __future__ import annotations

import getpass

import click

from kernel.settings import get_settings
from renkei.audit_cli import _ready_db


@click.group()
def history() -> None:
    """Keep the access history and the operations log within their retention (保存期間)."""


@history.command("prune")
@click.option("--dry-run", is_flag=True, help="Say what would be dropped; change nothing.")
def history_prune(dry_run: bool) -> None:
    """Drop the months older than RENKEI_HISTORY_RETENTION_DAYS (access) and
    RENKEI_OPERATIONS_RETENTION_DAYS (operations); the Merkle tree stays, so exports verify.

    Also creates the coming months' partitions (PostgreSQL). The pruning is itself recorded
    in the operations log.
    """
    from access_history import retention
    from access_history import service as history_service
    from access_history.models import ACCESS_LOG, OPERATIONS_LOG, OperationIn
    from kernel.db import session_scope

    url = _ready_db()
    settings = get_settings()
    days = {ACCESS_LOG: settings.history_retention_days, OPERATIONS_LOG: settings.operations_retention_days}
    with session_scope(url) as db:
        if dry_run:
            plans = retention.plan(db_session=db, retention=days)
            db.rollback()
        else:
            retention.ensure_partitions(db.connection())
            plans = retention.prune(db_session=db, retention=days)
            history_service.record_operation(db_session=db, operation=OperationIn(
                actor=f"cli:{getpass.getuser()}", channel="cli", action="history.prune",
                target="history", detail={"logs": [p.describe() for p in plans]}))
    verb = "would drop" if dry_run else "dropped"
    for p in plans:
        where = f" ({len(p.partitions)} partitions)" if p.partitions else ""
        click.echo(f"{p.log}: {verb} {p.entries} entries recorded before {p.cut:%Y-%m-%d}{where} "
                   f"(retention {p.retention_days} days)")
