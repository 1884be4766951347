"""login hardening: a login throttle instead of the account lockout, TOTP seeds sealed with
AES-GCM and spent once per step, an idle timeout for IdP sessions

Revision ID: 0006_login_hardening
Revises: 0005_agency_retirement
"""
from __future__ import annotations

import base64
import os

import sqlalchemy as sa
from alembic import op

revision = "0006_login_hardening"
down_revision = "0005_agency_retirement"
branch_labels = None
depends_on = None

# the same format as idp.accounts.seal_totp_secret, written out here so that this revision
# keeps meaning what it meant when the code moves on
TOTP_SECRET = "totp"


def _keystore():
    from kernel.keys import keystore

    return keystore()


def _seal(key: bytes, version: int, person_key: str, secret_b32: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    seed = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, seed, person_key.encode())
    return f"v{version}.{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def _open(keys, person_key: str, sealed: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    version, _, body = sealed.partition(".")
    blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    seed = AESGCM(keys.load_secret(TOTP_SECRET, int(version[1:]))).decrypt(blob[:12], blob[12:], person_key.encode())
    return base64.b32encode(seed).decode().rstrip("=")


_persons = sa.table(
    "persons",
    sa.column("id", sa.Integer()),
    sa.column("person_key", sa.String()),
    sa.column("totp_secret", sa.String()),
)


def upgrade() -> None:
    op.create_table(
        "login_throttles",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_throttles")),
    )
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.alter_column("totp_secret", existing_type=sa.String(64), type_=sa.String(255),
                              existing_nullable=True)
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch_op.drop_column("failed_logins")
        batch_op.drop_column("locked_until")
    with op.batch_alter_table("idp_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_seen_at", sa.DateTime(), nullable=True))

    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_persons.c.id, _persons.c.person_key, _persons.c.totp_secret)
        .where(_persons.c.totp_secret.is_not(None))
    ).all()
    if rows:  # the key store is touched only when there is something to seal
        keys = _keystore()
        version = keys.ensure_secret(TOTP_SECRET)
        key = keys.load_secret(TOTP_SECRET, version)
        for row in rows:
            bind.execute(
                sa.update(_persons).where(_persons.c.id == row.id)
                .values(totp_secret=_seal(key, version, row.person_key, row.totp_secret))
            )


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_persons.c.id, _persons.c.person_key, _persons.c.totp_secret)
        .where(_persons.c.totp_secret.is_not(None))
    ).all()
    if rows:
        keys = _keystore()
        for row in rows:
            bind.execute(
                sa.update(_persons).where(_persons.c.id == row.id)
                .values(totp_secret=_open(keys, row.person_key, row.totp_secret))
            )
    with op.batch_alter_table("idp_sessions", schema=None) as batch_op:
        batch_op.drop_column("last_seen_at")
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locked_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"))
        batch_op.drop_column("totp_last_step")
        batch_op.alter_column("totp_secret", existing_type=sa.String(255), type_=sa.String(64),
                              existing_nullable=True)
    op.drop_table("login_throttles")
