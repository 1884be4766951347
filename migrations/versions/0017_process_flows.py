"""process flows: installed process definitions and their lifecycle, conformance runs,
process runs and the state of each activity (業務プロセスフロー)

Revision ID: 0017_process_flows
Revises: 0016_relay (0012_wide_ids before the relay branch was merged in)
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_process_flows"
down_revision = "0016_relay"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "process_definitions",
        sa.Column("process_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("process_type", sa.String(length=128), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("installed_at", sa.DateTime(), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("status IN ('defined', 'implemented', 'conformance-tested', 'operating')",
                           name=op.f("ck_process_definitions_status")),
        sa.PrimaryKeyConstraint("process_id", "version", name=op.f("pk_process_definitions")),
    )
    op.create_table(
        "process_conformance_runs",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("process_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("agency", sa.String(length=1024), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("ran_at", sa.DateTime(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["process_id", "version"],
                                ["process_definitions.process_id", "process_definitions.version"],
                                name=op.f("fk_process_conformance_runs_process_id_process_definitions")),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_process_conformance_runs")),
    )
    op.create_index("ix_process_conformance_runs_definition", "process_conformance_runs",
                    ["process_id", "version", "agency"])
    op.create_table(
        "process_instances",
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("query_group_id", sa.String(length=32), nullable=False),
        sa.Column("process_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.String(length=128), nullable=False),
        sa.Column("trigger_channel", sa.String(length=128), nullable=False),
        sa.Column("started_by", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("application", sa.Text(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'completed', 'incomplete')",
                           name=op.f("ck_process_instances_status")),
        sa.ForeignKeyConstraint(["process_id", "version"],
                                ["process_definitions.process_id", "process_definitions.version"],
                                name=op.f("fk_process_instances_process_id_process_definitions")),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_process_instances")),
        sa.UniqueConstraint("query_group_id", name=op.f("uq_process_instances_query_group_id")),
    )
    op.create_index("ix_process_instances_person", "process_instances", ["person_key", "started_at"])
    op.create_index("ix_process_instances_status", "process_instances", ["status"])
    op.create_table(
        "process_steps",
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("activity_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("decision_ids", sa.String(length=512), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'done', 'refused', 'failed', 'skipped', 'blocked')",
                           name=op.f("ck_process_steps_status")),
        sa.PrimaryKeyConstraint("instance_id", "activity_id", name=op.f("pk_process_steps")),
    )


def downgrade() -> None:
    op.drop_table("process_steps")
    op.drop_index("ix_process_instances_status", table_name="process_instances")
    op.drop_index("ix_process_instances_person", table_name="process_instances")
    op.drop_table("process_instances")
    op.drop_index("ix_process_conformance_runs_definition", table_name="process_conformance_runs")
    op.drop_table("process_conformance_runs")
    op.drop_table("process_definitions")
