"""64-bit ids for the tables that grow with the population or the traffic: the replay cache
(one row per message; 2^31 ids last about 100 days at 245 requests/s), pseudonyms, their
rotation maps and agencies' local-ID links. SQLite's INTEGER ids are 64 bits already.

Revision ID: 0012_wide_ids
Revises: 0011_operators
"""
from __future__ import annotations

from alembic import op

revision = "0012_wide_ids"
down_revision = "0011_operators"
branch_labels = None
depends_on = None

TABLES = ("seen_messages", "pseudonyms", "pseudonym_rotations", "local_links")


def _retype(sql_type: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id TYPE {sql_type}")
        op.execute(f"ALTER SEQUENCE IF EXISTS {table}_id_seq AS {sql_type}")


def upgrade() -> None:
    _retype("bigint")


def downgrade() -> None:
    _retype("integer")
