"""discovery: service types and offerings (information location)

Revision ID: 0004_discovery
Revises: 0003_access_history
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_discovery"
down_revision = "0003_access_history"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "discovery_service_types",
        sa.Column("urn", sa.String(512), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("info_types", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("urn", name=op.f("pk_discovery_service_types")),
    )
    op.create_table(
        "discovery_offerings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(1024), nullable=False),
        sa.Column("service_type_urn", sa.String(512), nullable=False),
        sa.Column("endpoint", sa.String(1024), nullable=False),
        sa.Column("security_mechanism", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_type_urn"], ["discovery_service_types.urn"],
            name=op.f("fk_discovery_offerings_service_type_urn_discovery_service_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discovery_offerings")),
        sa.UniqueConstraint("provider", "service_type_urn", name=op.f("uq_discovery_offerings_provider")),
    )
    op.create_index(op.f("ix_discovery_offerings_provider"), "discovery_offerings", ["provider"])
    op.create_index(op.f("ix_discovery_offerings_service_type_urn"), "discovery_offerings", ["service_type_urn"])
    op.create_index("ix_local_links_person_agency", "local_links", ["person_key", "agency"])


def downgrade() -> None:
    op.drop_index("ix_local_links_person_agency", table_name="local_links")
    op.drop_table("discovery_offerings")
    op.drop_table("discovery_service_types")
