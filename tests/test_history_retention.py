"""Retention: `renkei history prune` drops whole months older than each log's retention (month
partitions on PostgreSQL, rows on SQLite), keeps the tree, and exports still verify."""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from access_history import audit, ledger, retention, service
from access_history.models import HistoryEntry, OperationEntry, OperationIn
from kernel.db import utcnow
from kernel.keys import KeyStore
from kernel.settings import reset_settings
from renkei.cli import main
from tests.test_access_history import Log, decision

POSTGRES = "postgresql"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> KeyStore:
    keys = KeyStore(tmp_path_factory.mktemp("keys"))
    keys.create_secret(service.NOTE_SECRET)
    return keys


@pytest.fixture()
def log(tmp_path, keys) -> Log:
    return Log(tmp_path, f"retention_{secrets.token_hex(3)}", keys)


def append_at(log: Log, when: datetime, entries) -> list[HistoryEntry]:
    """Entries as if the hub had recorded them at `when` (an old month), queued for the tree."""
    with log.session() as db:
        rows = [service._access_row(entry, when) for entry in entries]
        db.add_all(rows)
        db.flush()
        ledger.enqueue_many(db_session=db, log="access",
                            rows=[(r.id, r.recorded_at, r.leaf_data) for r in rows])
        return rows


def operation_at(log: Log, when: datetime, action: str) -> OperationEntry:
    with log.session() as db:
        row = service._operation_row(OperationIn(actor="ops", channel="cli", action=action,
                                                 target="t"), when)
        db.add(row)
        db.flush()
        ledger.enqueue(db_session=db, log="operations", entry_ref=row.id, entry_time=row.recorded_at,
                       leaf_data=row.leaf_data)
        return row


def partitions(log: Log, table: str) -> set[str]:
    with log.engine.connect() as conn:
        return set(retention.monthly_partitions(conn, table).values())


def counts(log: Log) -> tuple[int, int]:
    with log.session() as db:
        return (db.scalar(select(func.count()).select_from(HistoryEntry)),
                db.scalar(select(func.count()).select_from(OperationEntry)))


def test_prune_drops_old_months_keeps_the_tree_and_exports_still_verify(log):
    now = utcnow()
    cut = retention.retention_cut(now, 400)
    prev_month = retention.add_months(cut, -1)
    # partitions from the month before the cut on; the month before that has none, so its
    # entry lands in the DEFAULT partition on PostgreSQL (and must be pruned all the same)
    with log.session() as db:
        retention.ensure_partitions(db.connection(), now=now, since=prev_month)
    in_default = append_at(log, retention.add_months(cut, -2) + timedelta(days=3), [decision("alice")])
    old = append_at(log, prev_month + timedelta(days=5), [decision("alice"), decision("bob")])
    kept = append_at(log, cut + timedelta(hours=1), [decision("alice")])
    recent = log.append([decision("alice")])
    old_op = operation_at(log, prev_month + timedelta(days=5), "whitelist.import")
    saved = log.checkpoint()
    before = counts(log)
    if log.engine.dialect.name == POSTGRES:
        assert retention.partition_name("history_entries", prev_month) in partitions(log, "history_entries")

    days = {"access": 400, "operations": 100_000}  # the operations log keeps everything
    with log.session() as db:
        planned = retention.plan(db_session=db, retention=days, now=now)
    assert [(p.log, p.entries, p.cut) for p in planned] == [("access", 3, cut), ("operations", 0, planned[1].cut)]
    assert counts(log) == before  # a plan (the dry run) changes nothing

    with log.session() as db:
        done = retention.prune(db_session=db, retention=days, now=now)
    assert done[0].entries == 3 and done[1].entries == 0
    assert counts(log) == (before[0] - 3, before[1])
    with log.session() as db:
        left = set(db.scalars(select(HistoryEntry.entry_id)))
        assert left == {r.entry_id for r in kept + recent}
        assert db.get(OperationEntry, (old_op.id, old_op.recorded_at)) is not None
        page = service.timeline(db_session=db, person_key="alice")
        assert {e.entry.entry_id for e in page.entries} == {kept[0].entry_id, recent[0].entry_id}
        # the append-only triggers are still there for normal use
        with pytest.raises(DBAPIError), db.begin_nested():
            db.execute(update(HistoryEntry).values(task_code="X"))
        with pytest.raises(DBAPIError), db.begin_nested():
            db.execute(text("DELETE FROM history_entries"))
    if log.engine.dialect.name == POSTGRES:
        names = partitions(log, "history_entries")
        assert retention.partition_name("history_entries", prev_month) not in names
        assert retention.partition_name("history_entries", retention.month_start(now)) in names
        assert retention.partition_name("operation_entries", prev_month) in partitions(log, "operation_entries")

    lines = log.export()
    header = json.loads(lines[0])
    assert header["pruned_before"] == cut.isoformat()
    pruned = [json.loads(line) for line in lines if json.loads(line).get("pruned")]
    assert len(pruned) == 3 and all(p["type"] == "leaf" for p in pruned)
    report = log.verify(lines, saved=saved)
    assert report.ok, report.summary()
    assert report.entries == 2
    # a window export of the pruned months still proves its range: leaves only
    window = log.export(audit.ExportFilter(start=retention.add_months(cut, -2), end=cut))
    assert [json.loads(x).get("pruned") for x in window[1:-1]] == [True, True, True]
    assert log.verify(window).ok
    assert {r.entry_id for r in in_default + old}.isdisjoint(left)


def test_appends_land_in_a_month_without_a_partition(log):
    """The DEFAULT partition takes an entry whose month has no partition: logging never fails."""
    far = retention.add_months(retention.month_start(utcnow()), 40)
    rows = append_at(log, far + timedelta(days=2), [decision("carol")])
    with log.session() as db:
        assert db.get(HistoryEntry, (rows[0].id, rows[0].recorded_at)) is not None
        if log.engine.dialect.name == POSTGRES:
            where = db.scalar(text("SELECT tableoid::regclass::text FROM history_entries WHERE id = :i"),
                              {"i": rows[0].id})
            assert where == "history_entries_default"


def test_ids_are_unique_under_concurrent_appends(log):
    import threading

    errors: list[BaseException] = []

    def appender() -> None:
        try:
            for _ in range(10):
                log.append([decision("dave"), decision("dave")])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with log.session() as db:
        ids = db.scalars(select(HistoryEntry.id)).all()
    assert len(ids) == 80 == len(set(ids))


def test_cli_prune_respects_retention_settings_and_dry_run(log, monkeypatch):
    now = utcnow()
    old = append_at(log, now - timedelta(days=100), [decision("erin")])
    if log.engine.dialect.name == POSTGRES:
        with log.session() as db:
            retention.ensure_partitions(db.connection(), since=old[0].recorded_at)
    log.integrate()
    monkeypatch.setenv("RENKEI_DATABASE_URL", log.url)
    monkeypatch.setenv("RENKEI_HISTORY_RETENTION_DAYS", "30")
    monkeypatch.setenv("RENKEI_OPERATIONS_RETENTION_DAYS", "30")
    reset_settings()
    try:
        before = counts(log)
        dry = CliRunner().invoke(main, ["history", "prune", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "access: would drop 1 entries" in dry.output
        assert counts(log) == before

        monkeypatch.setenv("RENKEI_HISTORY_RETENTION_DAYS", "36500")
        kept = CliRunner().invoke(main, ["history", "prune"])
        assert kept.exit_code == 0 and "access: dropped 0 entries" in kept.output, kept.output
        assert counts(log)[0] == before[0]

        monkeypatch.setenv("RENKEI_HISTORY_RETENTION_DAYS", "30")
        done = CliRunner().invoke(main, ["history", "prune"])
        assert done.exit_code == 0 and "access: dropped 1 entries" in done.output, done.output
        assert counts(log)[0] == before[0] - 1
        with log.session() as db:
            actions = db.scalars(select(OperationEntry.action)).all()
        assert actions.count("history.prune") == 2
        assert log.verify(log.export()).ok
    finally:
        monkeypatch.undo()
        reset_settings()


def test_the_integrator_keeps_partitions_ahead_at_most_once_an_hour(log):
    if log.engine.dialect.name != POSTGRES:
        pytest.skip("month partitions are PostgreSQL's")
    ahead = retention.partition_name(
        "history_entries", retention.add_months(retention.month_start(utcnow()), retention.MONTHS_AHEAD))

    def drop_ahead() -> None:
        with log.engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {ahead}"))

    drop_ahead()
    integrator = ledger.Integrator(log.session, lambda name: log.signer(name))
    integrator.run_once()
    assert ahead in partitions(log, "history_entries")
    drop_ahead()
    integrator.run_once()  # within the hour: no catalogue work on every round
    assert ahead not in partitions(log, "history_entries")
