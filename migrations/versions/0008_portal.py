"""portal: the person's portal sessions and the logins and logouts it asked the IdP for

Revision ID: 0008_portal
Revises: 0007_transparency_log
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_portal"
down_revision = "0007_transparency_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "portal_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("person_key", sa.String(length=64), nullable=False),
        sa.Column("name_id", sa.String(length=256), nullable=False),
        sa.Column("session_index", sa.String(length=256), nullable=True),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_sessions")),
    )
    op.create_index(op.f("ix_portal_sessions_person_key"), "portal_sessions", ["person_key"])
    op.create_index(op.f("ix_portal_sessions_expires_at"), "portal_sessions", ["expires_at"])
    op.create_table(
        "portal_pending",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("browser", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("next_path", sa.String(length=256), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_portal_pending")),
    )
    op.create_index(op.f("ix_portal_pending_browser"), "portal_pending", ["browser"])
    op.create_index(op.f("ix_portal_pending_expires_at"), "portal_pending", ["expires_at"])


def downgrade() -> None:
    op.drop_table("portal_pending")
    op.drop_table("portal_sessions")
