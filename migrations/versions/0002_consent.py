"""consent: legal whitelist, versioned disclosure policies, consent receipts

Revision ID: 0002_consent
Revises: 0001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_consent"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_whitelist_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("requester", sa.String(length=1024), nullable=False),
        sa.Column("provider", sa.String(length=1024), nullable=False),
        sa.Column("task_code", sa.String(length=64), nullable=False),
        sa.Column("task_name", sa.String(length=512), nullable=False),
        sa.Column("info_type_code", sa.String(length=64), nullable=False),
        sa.Column("info_type_name", sa.String(length=512), nullable=False),
        sa.Column("legal_basis", sa.Text(), nullable=False),
        sa.Column("consent", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "consent IN ('required', 'override')",
            name=op.f("ck_consent_whitelist_entry_consent"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_whitelist_entry")),
        sa.UniqueConstraint(
            "requester",
            "provider",
            "task_code",
            "info_type_code",
            name=op.f("uq_consent_whitelist_entry_requester"),
        ),
    )
    op.create_index(
        "ix_consent_whitelist_entry_task_info",
        "consent_whitelist_entry",
        ["task_code", "info_type_code"],
        unique=False,
    )

    op.create_table(
        "consent_policy_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_policy_version")),
        sa.UniqueConstraint(
            "person_key", "version", name=op.f("uq_consent_policy_version_person_key")
        ),
    )

    op.create_table(
        "consent_policy_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("effect", sa.String(length=8), nullable=False),
        sa.Column("requester", sa.String(length=1024), nullable=True),
        sa.Column("provider", sa.String(length=1024), nullable=True),
        sa.Column("task_code", sa.String(length=64), nullable=True),
        sa.Column("info_type_code", sa.String(length=64), nullable=True),
        sa.Column("valid_from", sa.DateTime(), nullable=True),
        sa.Column("valid_until", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "effect IN ('allow', 'deny')", name=op.f("ck_consent_policy_rule_effect")
        ),
        sa.CheckConstraint(
            "valid_from IS NULL OR valid_until IS NULL OR valid_from < valid_until",
            name=op.f("ck_consent_policy_rule_period"),
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["consent_policy_version.id"],
            name=op.f("fk_consent_policy_rule_version_id_consent_policy_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_policy_rule")),
    )
    op.create_index(
        op.f("ix_consent_policy_rule_version_id"),
        "consent_policy_rule",
        ["version_id"],
        unique=False,
    )

    op.create_table(
        "consent_receipt",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("person_key", sa.String(length=128), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["consent_policy_version.id"],
            name=op.f("fk_consent_receipt_version_id_consent_policy_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_receipt")),
        sa.UniqueConstraint("version_id", name=op.f("uq_consent_receipt_version_id")),
    )
    op.create_index(
        op.f("ix_consent_receipt_person_key"), "consent_receipt", ["person_key"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_consent_receipt_person_key"), table_name="consent_receipt")
    op.drop_table("consent_receipt")
    op.drop_index(op.f("ix_consent_policy_rule_version_id"), table_name="consent_policy_rule")
    op.drop_table("consent_policy_rule")
    op.drop_table("consent_policy_version")
    op.drop_index("ix_consent_whitelist_entry_task_info", table_name="consent_whitelist_entry")
    op.drop_table("consent_whitelist_entry")
