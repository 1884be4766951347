"""Named operators: who may use the operator API, each with their own revocable token.

A token is 32 random bytes (URL-safe base64) and only its SHA-256 is stored. A token is not a
password: nobody chooses it and it has 256 bits of entropy, so a stolen hash cannot be guessed
back however fast the hash, and a slow hash (argon2) would only cost every API request time.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from access_history import service as history
from access_history.models import STAFF_MAX, OperationIn
from kernel.db import Base, utcnow
from kernel.errors import UserError, shown
from kernel.validate import identifier_problem

OPERATOR_NAME_MAX = 64
TOKEN_PREFIX = "rko_"  # recognisable in a leaked paste or a secret scanner
BOOTSTRAP = "bootstrap"  # the shared token's name in the operations log; no operator may take it


class OperatorError(UserError, ValueError):
    """An operator name that cannot be added or revoked."""


class Operator(Base):
    """One named operator credential; revoked ones stay, so the log's names stay explained."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(OPERATOR_NAME_MAX), unique=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(STAFF_MAX))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


@dataclass(frozen=True)
class NewOperator:
    name: str
    token: str  # shown once, never stored


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _check_name(name: str) -> None:
    if problem := identifier_problem(name, max_length=OPERATOR_NAME_MAX):
        raise OperatorError(f"operator name {problem}")
    if name.strip() != name or name.lower() == BOOTSTRAP or name.startswith("cli:"):
        raise OperatorError(f"operator name {shown(name)} is reserved or has surrounding spaces")


def add(*, db_session: Session, name: str, actor: str) -> NewOperator:
    """Create a named operator and its token (returned once); logged in the same transaction."""
    _check_name(name)
    if db_session.scalar(select(Operator).where(Operator.name == name)) is not None:
        raise OperatorError(f"operator {shown(name)} exists already (names are never reused)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db_session.add(Operator(name=name, token_hash=token_hash(token), created_by=actor))
    db_session.flush()
    history.record_operation(db_session=db_session, operation=OperationIn(
        actor=actor, channel=_channel(actor), action="operator.add", target=name))
    return NewOperator(name, token)


def revoke(*, db_session: Session, name: str, actor: str) -> None:
    """Revoke an operator's token at once; logged in the same transaction."""
    row = db_session.scalar(select(Operator).where(Operator.name == name))
    if row is None:
        raise OperatorError(f"no operator {shown(name)}")
    if row.revoked_at is not None:
        raise OperatorError(f"operator {shown(name)} was revoked already")
    row.revoked_at = utcnow()
    db_session.flush()
    history.record_operation(db_session=db_session, operation=OperationIn(
        actor=actor, channel=_channel(actor), action="operator.revoke", target=name))


def list_all(*, db_session: Session) -> list[Operator]:
    """Every operator, revoked ones included, by name."""
    return list(db_session.scalars(select(Operator).order_by(Operator.name)))


def authenticate(*, db_session: Session, token: str) -> str | None:
    """The name of the live operator holding `token`, or None.

    Looked up by hash: the comparison the database makes is on a digest the caller cannot
    steer, so its timing says nothing about the stored token."""
    row = db_session.scalar(select(Operator).where(Operator.token_hash == token_hash(token),
                                                   Operator.revoked_at.is_(None)))
    return row.name if row is not None else None


def _channel(actor: str) -> str:
    return "cli" if actor.startswith("cli:") else "api"
