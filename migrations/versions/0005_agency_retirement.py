"""agency retirement: agencies, offerings and whitelist entries are retired, never deleted

Revision ID: 0005_agency_retirement
Revises: 0004_discovery
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_agency_retirement"
down_revision = "0004_discovery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("agencies", "discovery_offerings", "consent_whitelist_entry"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("retired_at", sa.DateTime(), nullable=True))
    op.create_table(
        "pseudonym_retired_agencies",
        sa.Column("agency", sa.String(1024), nullable=False),
        sa.Column("retired_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("agency", name=op.f("pk_pseudonym_retired_agencies")),
    )


def downgrade() -> None:
    op.drop_table("pseudonym_retired_agencies")
    for table in ("consent_whitelist_entry", "discovery_offerings", "agencies"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("retired_at")
