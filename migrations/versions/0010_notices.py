"""portal notices: a person's notice preferences, their notices, and the notifier's cursor

Revision ID: 0010_notices
Revises: 0009_roles
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_notices"
down_revision = "0009_roles"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "portal_notice_preferences",
        sa.Column("person_key", sa.String(length=128), nullable=False),
        sa.Column("on_access", sa.Boolean(), nullable=False),
        sa.Column("on_refusal", sa.Boolean(), nullable=False),
        sa.Column("on_override", sa.Boolean(), nullable=False),
        sa.Column("on_anomaly", sa.Boolean(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("person_key", name=op.f("pk_portal_notice_preferences")),
    )
    op.create_table(
        "portal_notices",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("person_key", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("entry_id", sa.String(length=32), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("requester", sa.String(length=1024), nullable=False),
        sa.Column("provider", sa.String(length=1024), nullable=False),
        sa.Column("outcome", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("read_at", sa.DateTime(), nullable=True),
        sa.Column("mail", sa.String(length=8), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_notices")),
        sa.UniqueConstraint("person_key", "entry_id", name="uq_portal_notices_person_entry"),
    )
    op.create_index("ix_portal_notices_person_unread", "portal_notices", ["person_key", "read_at", "id"])
    op.create_index(op.f("ix_portal_notices_mail"), "portal_notices", ["mail"])
    op.create_table(
        "portal_notice_cursor",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("next_index", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_portal_notice_cursor")),
    )


def downgrade() -> None:
    op.drop_table("portal_notice_cursor")
    op.drop_index(op.f("ix_portal_notices_mail"), table_name="portal_notices")
    op.drop_index("ix_portal_notices_person_unread", table_name="portal_notices")
    op.drop_table("portal_notices")
    op.drop_table("portal_notice_preferences")
