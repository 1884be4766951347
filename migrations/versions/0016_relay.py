"""relay: the route table, submitted envelopes (one per sender and receipt number) and the
durable outbox of forwarded envelopes

Revision ID: 0016_relay
Revises: 0012_wide_ids
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_relay"
down_revision = "0012_wide_ids"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "relay_routes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("process_type", sa.String(length=128), nullable=False),
        sa.Column("message_type", sa.String(length=128), nullable=False),
        sa.Column("logical_to", sa.String(length=256), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("agency", sa.String(length=1024), nullable=False),
        sa.Column("service_type", sa.String(length=256), nullable=False),
        sa.Column("task_code", sa.String(length=64), nullable=False),
        sa.Column("info_type_code", sa.String(length=64), nullable=False),
        sa.Column("attachments", sa.String(length=2048), nullable=False),
        sa.Column("binding", sa.String(length=8), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_routes")),
        sa.UniqueConstraint("process_type", "message_type", "logical_to", name="uq_relay_routes_destination"),
    )
    op.create_table(
        "relay_envelopes",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("sender", sa.String(length=1024), nullable=False),
        sa.Column("receipt_number", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("process_type", sa.String(length=128), nullable=False),
        sa.Column("message_type", sa.String(length=128), nullable=False),
        sa.Column("query_group_id", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_envelopes")),
        sa.UniqueConstraint("sender", "receipt_number", name="uq_relay_envelopes_receipt"),
    )
    op.create_table(
        "relay_deliveries",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("envelope_id", BIG_ID, nullable=False),
        sa.Column("receipt_number", sa.String(length=64), nullable=False),
        sa.Column("logical_to", sa.String(length=256), nullable=False),
        sa.Column("receiver", sa.String(length=1024), nullable=False),
        sa.Column("endpoint", sa.String(length=1024), nullable=False),
        sa.Column("binding", sa.String(length=8), nullable=False),
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.Column("ack_status", sa.String(length=16), nullable=True),
        sa.Column("ack_time", sa.DateTime(), nullable=True),
        sa.Column("ack_remark", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("keep_until", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["envelope_id"], ["relay_envelopes.id"], ondelete="CASCADE",
                                name=op.f("fk_relay_deliveries_envelope_id_relay_envelopes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_deliveries")),
    )
    op.create_index(op.f("ix_relay_deliveries_envelope_id"), "relay_deliveries", ["envelope_id"])
    op.create_index("ix_relay_deliveries_due", "relay_deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_relay_deliveries_receiver", "relay_deliveries", ["receiver", "state", "id"])


def downgrade() -> None:
    op.drop_index("ix_relay_deliveries_receiver", table_name="relay_deliveries")
    op.drop_index("ix_relay_deliveries_due", table_name="relay_deliveries")
    op.drop_index(op.f("ix_relay_deliveries_envelope_id"), table_name="relay_deliveries")
    op.drop_table("relay_deliveries")
    op.drop_table("relay_envelopes")
    op.drop_table("relay_routes")
