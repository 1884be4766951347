"""OpenID Connect: agencies' registered client metadata (federation), and the OP's pending
authorization requests, one-time codes, access tokens and the RPs of each login session (idp).

Revision ID: 0018_oidc
Revises: 0017_process_flows
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_oidc"
down_revision = "0017_process_flows"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agency_oidc_clients",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agency_id", sa.Integer, sa.ForeignKey("agencies.id", ondelete="CASCADE"), nullable=False,
                  unique=True),
        sa.Column("metadata_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "oidc_pending",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(1024), nullable=False),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False, index=True),
    )
    op.create_table(
        "oidc_codes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(1024), nullable=False),
        sa.Column("redirect_uri", sa.String(1024), nullable=False),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("nonce", sa.String(256), nullable=True),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("code_challenge_method", sa.String(10), nullable=False),
        sa.Column("person_key", sa.String(64), nullable=False),
        sa.Column("login_session_id", sa.String(64), nullable=False),
        sa.Column("acr", sa.String(200), nullable=False),
        sa.Column("auth_time", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False, index=True),
    )
    op.create_index("ix_oidc_codes_nonce", "oidc_codes", ["client_id", "nonce"])
    op.create_table(
        "oidc_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(1024), nullable=False),
        sa.Column("person_key", sa.String(64), nullable=False),
        sa.Column("login_session_id", sa.String(64), nullable=False, index=True),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("acr", sa.String(200), nullable=False),
        sa.Column("auth_time", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False, index=True),
    )
    op.create_table(
        "oidc_rp_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("login_session_id", sa.String(64), nullable=False, index=True),
        sa.Column("client_id", sa.String(1024), nullable=False),
        sa.Column("person_key", sa.String(64), nullable=False),
        sa.Column("sid", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("login_session_id", "client_id"),
    )


def downgrade() -> None:
    for table in ("oidc_rp_sessions", "oidc_tokens", "oidc_codes", "oidc_pending", "agency_oidc_clients"):
        op.drop_table(table)
