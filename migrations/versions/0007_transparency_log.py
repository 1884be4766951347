"""access history as one transparency log per log name: entries with salted commitments, a
queue, the RFC 9162 tree's leaves and nodes, its state and signed checkpoints; and the
operations log. Replaces the per-owner hash chains of 0003 (their entries are carried over
and queued into the new tree; their old chain checkpoints are not: the new tree's first
checkpoint covers them).

Revision ID: 0007_transparency_log
Revises: 0006_login_hardening
"""
from __future__ import annotations

import json
import os
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0007_transparency_log"
down_revision = "0006_login_hardening"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("history_entries", "operation_entries", "tlog_leaves", "tlog_nodes", "tlog_checkpoints")


def _append_only(table: str) -> list[str]:
    if op.get_bind().dialect.name == "postgresql":
        function = (f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN RAISE EXCEPTION '{table} is append-only'; END $$")
        no_change = (f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
                     f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()")
        no_truncate = (f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()")
        return [function, no_change, no_truncate]
    refuse = f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
    return [f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} {refuse}",
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} {refuse}"]


def _entry_id(table: str) -> sa.Column:
    """An entry's id: from a sequence on PostgreSQL, from `entry_id_counters` on SQLite (the
    key is (id, recorded_at), which SQLite cannot autoincrement)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE SEQUENCE {table}_id_seq AS bigint")
        return sa.Column('id', sa.BigInteger(), server_default=sa.text(f"nextval('{table}_id_seq')"),
                         nullable=False)
    return sa.Column('id', sa.BigInteger(), nullable=False)


def _partitioned() -> dict[str, str]:
    """PostgreSQL: partition the entries by month of recorded_at (retention drops months)."""
    if op.get_bind().dialect.name == "postgresql":
        return {"postgresql_partition_by": "RANGE (recorded_at)"}
    return {}


def upgrade() -> None:
    op.create_table('history_entries',
    _entry_id('history_entries'),
    sa.Column('entry_id', sa.String(length=32), nullable=False),
    sa.Column('recorded_at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('owner', sa.String(length=1024), nullable=False),
    sa.Column('asked_at', sa.DateTime(), nullable=True),
    sa.Column('provided_at', sa.DateTime(), nullable=True),
    sa.Column('requester', sa.String(length=1024), nullable=False),
    sa.Column('staff', sa.String(length=256), nullable=True),
    sa.Column('provider', sa.String(length=1024), nullable=False),
    sa.Column('person_key', sa.String(length=128), nullable=False),
    sa.Column('task_code', sa.String(length=64), nullable=False),
    sa.Column('legal_basis', sa.String(length=512), nullable=True),
    sa.Column('whitelist_entry', sa.String(length=64), nullable=True),
    sa.Column('info_type_code', sa.String(length=64), nullable=False),
    sa.Column('permitted', sa.Boolean(), nullable=True),
    sa.Column('outcome', sa.String(length=64), nullable=False),
    sa.Column('person_rule', sa.String(length=64), nullable=True),
    sa.Column('overridden', sa.Boolean(), nullable=False),
    sa.Column('decision_id', sa.String(length=64), nullable=False),
    sa.Column('query_id', sa.String(length=64), nullable=True),
    sa.Column('query_group_id', sa.String(length=64), nullable=True),
    sa.Column('sealed_until', sa.DateTime(), nullable=True),
    sa.Column('sealed_reason', sa.String(length=512), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('salt', sa.LargeBinary(length=32), nullable=False),
    sa.Column('leaf_data', sa.LargeBinary(length=32), nullable=False),
    sa.CheckConstraint("kind IN ('decision', 'disclosure', 'relay')", name=op.f('ck_history_entries_kind')),
    sa.CheckConstraint("permitted IS NOT NULL OR kind = 'disclosure'", name=op.f('ck_history_entries_permitted')),
    sa.PrimaryKeyConstraint('id', 'recorded_at', name=op.f('pk_history_entries')),
    sa.UniqueConstraint('entry_id', 'recorded_at', name=op.f('uq_history_entries_entry_id')),
    **_partitioned(),
    )
    op.create_index(op.f('ix_history_entries_decision_id'), 'history_entries', ['decision_id'], unique=False)
    op.create_index('ix_history_entries_person_time', 'history_entries', ['person_key', 'recorded_at', 'id'], unique=False)
    op.create_index(op.f('ix_history_entries_query_group_id'), 'history_entries', ['query_group_id'], unique=False)
    op.create_index('ix_history_entries_recorded_at', 'history_entries', ['recorded_at', 'id'], unique=False)
    op.create_table('operation_entries',
    _entry_id('operation_entries'),
    sa.Column('entry_id', sa.String(length=32), nullable=False),
    sa.Column('recorded_at', sa.DateTime(), nullable=False),
    sa.Column('actor', sa.String(length=256), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=1024), nullable=False),
    sa.Column('outcome', sa.String(length=64), nullable=False),
    sa.Column('client', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('salt', sa.LargeBinary(length=32), nullable=False),
    sa.Column('leaf_data', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', 'recorded_at', name=op.f('pk_operation_entries')),
    sa.UniqueConstraint('entry_id', 'recorded_at', name=op.f('uq_operation_entries_entry_id')),
    **_partitioned(),
    )
    op.create_table('entry_id_counters',
    sa.Column('table_name', sa.String(length=32), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('table_name', name=op.f('pk_entry_id_counters'))
    )
    op.create_index('ix_operation_entries_recorded_at', 'operation_entries', ['recorded_at', 'id'], unique=False)
    op.create_table('disclosure_reports',
    sa.Column('decision_id', sa.String(length=64), nullable=False),
    sa.Column('info_type_code', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=1024), nullable=False),
    sa.Column('reported_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('decision_id', 'info_type_code', 'owner', name=op.f('pk_disclosure_reports'))
    )
    op.create_table('tlog_checkpoints',
    sa.Column('log', sa.String(length=16), nullable=False),
    sa.Column('size', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('root_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('signed_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('log', 'size', name=op.f('pk_tlog_checkpoints'))
    )
    op.create_table('tlog_leaves',
    sa.Column('log', sa.String(length=16), nullable=False),
    sa.Column('leaf_index', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('entry_ref', sa.BigInteger(), nullable=False),
    sa.Column('entry_time', sa.DateTime(), nullable=False),
    sa.Column('leaf_hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('log', 'leaf_index', name=op.f('pk_tlog_leaves'))
    )
    op.create_index('ix_tlog_leaves_entry', 'tlog_leaves', ['log', 'entry_ref'], unique=True)
    op.create_index('ix_tlog_leaves_time', 'tlog_leaves', ['log', 'entry_time'], unique=False)
    op.create_table('tlog_nodes',
    sa.Column('log', sa.String(length=16), nullable=False),
    sa.Column('level', sa.SmallInteger(), autoincrement=False, nullable=False),
    sa.Column('node_index', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('log', 'level', 'node_index', name=op.f('pk_tlog_nodes'))
    )
    op.create_table('tlog_queue',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('log', sa.String(length=16), nullable=False),
    sa.Column('entry_ref', sa.BigInteger(), nullable=False),
    sa.Column('entry_time', sa.DateTime(), nullable=False),
    sa.Column('leaf_data', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tlog_queue'))
    )
    op.create_index('ix_tlog_queue_log_id', 'tlog_queue', ['log', 'id'], unique=False)
    op.create_table('tlog_state',
    sa.Column('log', sa.String(length=16), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('root_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('frontier', sa.LargeBinary(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('pruned_before', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('log', name=op.f('pk_tlog_state'))
    )
    for table in APPEND_ONLY:
        for statement in _append_only(table):
            op.execute(statement)
    _carry_over_old_entries()
    _drop_old_tables()


def _carry_over_old_entries() -> None:
    """Each entry of the old per-owner chains becomes an entry of the new log, queued in order."""
    from access_history.record import commitment, iso_utc, person_ref
    from access_history.retention import ensure_partitions

    bind = op.get_bind()
    old = bind.execute(sa.text(
        "SELECT owner, seq, recorded_at, kind, decision_id, requester, provider, person_key, staff, "
        "task_code, info_type_code, permitted, reason, detail FROM access_log_entries ORDER BY id"
    )).mappings().all()
    from datetime import datetime

    oldest = min((r["recorded_at"] for r in old), default=None)
    if isinstance(oldest, str):
        oldest = datetime.fromisoformat(oldest)
    ensure_partitions(bind, since=oldest)  # the old entries' months, and the next three
    entries = sa.table("history_entries", *[sa.column(c) for c in (
        "id", "entry_id", "recorded_at", "kind", "channel", "owner", "asked_at", "provided_at", "requester",
        "staff", "provider", "person_key", "task_code", "legal_basis", "whitelist_entry",
        "info_type_code", "permitted", "outcome", "person_rule", "overridden", "decision_id",
        "query_id", "query_group_id", "sealed_until", "sealed_reason", "detail", "salt", "leaf_data")])
    queue = sa.table("tlog_queue", sa.column("log"), sa.column("entry_ref"), sa.column("entry_time"),
                     sa.column("leaf_data"))
    for ref, row in enumerate(old, start=1):
        detail = json.loads(row["detail"] or "{}")
        recorded_at = row["recorded_at"]
        if isinstance(recorded_at, str):
            recorded_at = datetime.fromisoformat(recorded_at)
        whitelist_entry = detail.pop("whitelist_entry", None)
        overridden = bool(detail.pop("overridden", False))
        detail["carried_over_from"] = f"{row['owner']}#{row['seq']}"
        values = {
            "id": ref, "entry_id": secrets.token_hex(16), "recorded_at": recorded_at, "kind": row["kind"],
            "channel": "name_mapping" if "NameIDMapping" in str(detail.get("service_type")) else "discovery",
            "owner": row["owner"], "asked_at": recorded_at, "provided_at": None,
            "requester": row["requester"], "staff": row["staff"], "provider": row["provider"],
            "person_key": row["person_key"], "task_code": row["task_code"], "legal_basis": None,
            "whitelist_entry": None if whitelist_entry is None else str(whitelist_entry),
            "info_type_code": row["info_type_code"],
            "permitted": None if row["permitted"] is None else bool(row["permitted"]),
            "outcome": row["reason"], "person_rule": None, "overridden": overridden,
            "decision_id": row["decision_id"], "query_id": None, "query_group_id": None,
            "sealed_until": None, "sealed_reason": None,
            "detail": json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            "salt": os.urandom(32),
        }
        record = {k: values[k] for k in values if k not in ("id", "person_key", "salt")}
        record.update(recorded_at=iso_utc(recorded_at), asked_at=iso_utc(recorded_at),
                      person_ref=person_ref(row["owner"], row["person_key"]), detail=detail)
        values["leaf_data"] = commitment("access", values["salt"], record)
        bind.execute(entries.insert().values(**values))
        bind.execute(queue.insert().values(log="access", entry_ref=ref, entry_time=recorded_at,
                                           leaf_data=values["leaf_data"]))
    # the ids given here are taken: the next append continues after them
    if bind.dialect.name == "postgresql":
        if old:
            bind.execute(sa.text("SELECT setval('history_entries_id_seq', :n)"), {"n": len(old)})
    else:
        bind.execute(sa.text("INSERT INTO entry_id_counters (table_name, last_id) VALUES "
                             "('history_entries', :n), ('operation_entries', 0)"), {"n": len(old)})


def _drop_old_tables() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER access_log_entries_no_truncate ON access_log_entries")
        op.execute("DROP TRIGGER access_log_entries_no_change ON access_log_entries")
        op.execute("DROP FUNCTION access_log_entries_append_only()")
    else:
        op.execute("DROP TRIGGER access_log_entries_no_delete")
        op.execute("DROP TRIGGER access_log_entries_no_update")
    op.drop_table("access_log_heads")
    op.drop_table("access_log_checkpoints")
    op.drop_index(op.f("ix_access_log_entries_decision_id"), table_name="access_log_entries")
    op.drop_index("ix_access_log_entries_person_key_id", table_name="access_log_entries")
    op.drop_index(op.f("ix_access_log_entries_recorded_at"), table_name="access_log_entries")
    op.drop_table("access_log_entries")


def downgrade() -> None:
    """Back to 0003's empty per-owner chains: the new log's entries do not fit them and are
    dropped with its tables (export them first)."""
    import importlib

    for table in APPEND_ONLY:
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
            op.execute(f"DROP TRIGGER {table}_no_change ON {table}")
            op.execute(f"DROP FUNCTION {table}_append_only() CASCADE")  # and the partitions' triggers
        else:
            op.execute(f"DROP TRIGGER {table}_no_delete")
            op.execute(f"DROP TRIGGER {table}_no_update")
    for table in ("disclosure_reports", "tlog_state", "tlog_queue", "tlog_nodes", "tlog_leaves", "tlog_checkpoints",
                  "entry_id_counters", "operation_entries", "history_entries"):
        op.drop_table(table)  # a partitioned table takes its partitions with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS history_entries_id_seq")
        op.execute("DROP SEQUENCE IF EXISTS operation_entries_id_seq")
    importlib.import_module("migrations.versions.0003_access_history").upgrade()
