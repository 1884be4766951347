"""access history: hash-chained log entries per owner, their heads, signed checkpoints

Revision ID: 0003_access_history
Revises: 0002_consent
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_access_history"
down_revision = "0002_consent"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Entries are evidence: the database itself refuses to change or remove them.
_PG_APPEND_ONLY = [
    """
    CREATE FUNCTION access_log_entries_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'access_log_entries is append-only';
    END
    $$
    """,
    """
    CREATE TRIGGER access_log_entries_no_change
    BEFORE UPDATE OR DELETE ON access_log_entries
    FOR EACH ROW EXECUTE FUNCTION access_log_entries_append_only()
    """,
    """
    CREATE TRIGGER access_log_entries_no_truncate
    BEFORE TRUNCATE ON access_log_entries
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_entries_append_only()
    """,
]
_SQLITE_APPEND_ONLY = [
    """
    CREATE TRIGGER access_log_entries_no_update BEFORE UPDATE ON access_log_entries
    BEGIN SELECT RAISE(ABORT, 'access_log_entries is append-only'); END
    """,
    """
    CREATE TRIGGER access_log_entries_no_delete BEFORE DELETE ON access_log_entries
    BEGIN SELECT RAISE(ABORT, 'access_log_entries is append-only'); END
    """,
]


def upgrade() -> None:
    op.create_table(
        "access_log_entries",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("owner", sa.String(length=1024), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("requester", sa.String(length=1024), nullable=False),
        sa.Column("provider", sa.String(length=1024), nullable=False),
        sa.Column("person_key", sa.String(length=128), nullable=False),
        sa.Column("staff", sa.String(length=256), nullable=True),
        sa.Column("task_code", sa.String(length=64), nullable=False),
        sa.Column("info_type_code", sa.String(length=64), nullable=False),
        sa.Column("permitted", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint(
            "kind IN ('decision', 'disclosure', 'relay')",
            name=op.f("ck_access_log_entries_kind"),
        ),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_access_log_entries_seq")),
        sa.CheckConstraint(
            "permitted IS NOT NULL OR kind = 'disclosure'",
            name=op.f("ck_access_log_entries_permitted"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_log_entries")),
        sa.UniqueConstraint("owner", "seq", name=op.f("uq_access_log_entries_owner")),
    )
    op.create_index(
        "ix_access_log_entries_person_key_id",
        "access_log_entries",
        ["person_key", "id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_access_log_entries_decision_id"),
        "access_log_entries",
        ["decision_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_access_log_entries_recorded_at"),
        "access_log_entries",
        ["recorded_at"],
        unique=False,
    )

    op.create_table(
        "access_log_heads",
        sa.Column("owner", sa.String(length=1024), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_access_log_heads")),
    )

    op.create_table(
        "access_log_checkpoints",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("owner", sa.String(length=1024), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "tree_size = seq", name=op.f("ck_access_log_checkpoints_tree_size")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_log_checkpoints")),
        sa.UniqueConstraint("owner", "seq", name=op.f("uq_access_log_checkpoints_owner")),
    )

    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for statement in _PG_APPEND_ONLY:
            op.execute(statement)
    elif dialect == "sqlite":
        for statement in _SQLITE_APPEND_ONLY:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER access_log_entries_no_truncate ON access_log_entries")
        op.execute("DROP TRIGGER access_log_entries_no_change ON access_log_entries")
        op.execute("DROP FUNCTION access_log_entries_append_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER access_log_entries_no_delete")
        op.execute("DROP TRIGGER access_log_entries_no_update")
    op.drop_table("access_log_checkpoints")
    op.drop_table("access_log_heads")
    op.drop_index(op.f("ix_access_log_entries_recorded_at"), table_name="access_log_entries")
    op.drop_index(op.f("ix_access_log_entries_decision_id"), table_name="access_log_entries")
    op.drop_index("ix_access_log_entries_person_key_id", table_name="access_log_entries")
    op.drop_table("access_log_entries")
