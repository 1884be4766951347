"""SAML features SPs expect: session participants (for SLO and transient NameIDs), logouts in
progress, unsolicited SSO per agency, and metadata refreshed from a URL under a pinned key

Revision ID: 0019_saml_complete
Revises: 0018_oidc
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_saml_complete"
down_revision = "0018_oidc"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idp_session_participants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("sp", sa.String(length=1024), nullable=False),
        sa.Column("name_id", sa.String(length=256), nullable=False),
        sa.Column("name_id_format", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idp_session_participants")),
    )
    op.create_index(op.f("ix_idp_session_participants_session_id"), "idp_session_participants", ["session_id"])
    op.create_index(op.f("ix_idp_session_participants_name_id"), "idp_session_participants", ["name_id"])
    op.create_index(op.f("ix_idp_session_participants_expires_at"), "idp_session_participants", ["expires_at"])
    op.create_table(
        "idp_logouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("state_json", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idp_logouts")),
    )
    op.create_index(op.f("ix_idp_logouts_expires_at"), "idp_logouts", ["expires_at"])
    with op.batch_alter_table("agencies") as batch:
        batch.add_column(sa.Column("allow_unsolicited", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("metadata_url", sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column("metadata_signing_cert", sa.Text(), nullable=True))
        batch.add_column(sa.Column("metadata_valid_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("metadata_refreshed_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agencies") as batch:
        for column in ("metadata_refreshed_at", "metadata_valid_until", "metadata_signing_cert",
                       "metadata_url", "allow_unsolicited"):
            batch.drop_column(column)
    op.drop_table("idp_logouts")
    op.drop_table("idp_session_participants")
