"""roles: people's roles (auditor) in the idp room; representatives (代理人) and their actions
in the portal room

Revision ID: 0009_roles
Revises: 0008_portal
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_roles"
down_revision = "0008_portal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "person_roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("granted_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_person_roles")),
        sa.UniqueConstraint("person_key", "role", name=op.f("uq_person_roles_person_key")),
    )
    op.create_index(op.f("ix_person_roles_person_key"), "person_roles", ["person_key"])
    op.create_table(
        "portal_representatives",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("principal_key", sa.String(length=64), nullable=False),
        sa.Column("representative_key", sa.String(length=64), nullable=False),
        sa.Column("principal_name", sa.String(length=128), nullable=False),
        sa.Column("representative_name", sa.String(length=128), nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("ends_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_representatives")),
    )
    op.create_index(op.f("ix_portal_representatives_principal_key"), "portal_representatives", ["principal_key"])
    op.create_index(op.f("ix_portal_representatives_representative_key"), "portal_representatives",
                    ["representative_key"])
    op.create_table(
        "portal_representative_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_representative_actions")),
    )
    op.create_index(op.f("ix_portal_representative_actions_grant_id"), "portal_representative_actions",
                    ["grant_id"])


def downgrade() -> None:
    op.drop_table("portal_representative_actions")
    op.drop_table("portal_representatives")
    op.drop_table("person_roles")
