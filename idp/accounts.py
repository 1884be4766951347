"""People's accounts: argon2id passwords, optional TOTP (RFC 6238), per-account lockout."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.models import Person
from kernel.db import utcnow
from kernel.errors import UserError
from kernel.validate import identifier_problem

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# verified against when the username is unknown, so timing does not reveal which accounts exist
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(UserError, ValueError):
    """Bad account input (duplicate username, weak password, ...)."""


class LoginFailed(Exception):
    """Wrong username, password or code. The message never says which."""


class AccountLocked(LoginFailed):
    """Too many failures in a row: the account waits before the next try."""


@dataclass(frozen=True)
class Authenticated:
    person_key: str
    needs_totp: bool


def add_person(
    *, db_session: Session, username: str, password: str, display_name: str = "", totp_secret: str | None = None
) -> Person:
    """Create an account with an argon2id password hash and a fresh internal person key."""
    username = username.strip()
    if not username or len(username) > 128:
        raise AccountError("username must be 1 to 128 characters")
    if problem := identifier_problem(username, max_length=128):
        raise AccountError(f"username {problem}")
    if len(password) < 8:
        raise AccountError("password must be at least 8 characters")
    if db_session.scalar(select(Person.id).where(Person.username == username)):
        raise AccountError(f"username {username!r} is taken")
    person = Person(
        person_key=secrets.token_hex(16),
        username=username,
        display_name=display_name or username,
        password_hash=_hasher.hash(password),
        totp_secret=totp_secret,
    )
    db_session.add(person)
    db_session.flush()
    return person


def check_password(
    *, db_session: Session, username: str, password: str, max_failures: int, lockout_seconds: int
) -> Authenticated:
    """First factor. Failures count per account; past `max_failures` the account is locked."""
    person = db_session.scalar(select(Person).where(Person.username == username.strip()))
    if person is None:
        _verify(_DUMMY_HASH, password)
        raise LoginFailed("unknown username or wrong password")
    _refuse_if_locked(person)
    if not _verify(person.password_hash, password):
        _count_failure(person, max_failures, lockout_seconds)
        raise LoginFailed("unknown username or wrong password")
    if _hasher.check_needs_rehash(person.password_hash):
        person.password_hash = _hasher.hash(password)
    if not person.totp_secret:
        person.failed_logins = 0
    return Authenticated(person.person_key, needs_totp=bool(person.totp_secret))


def check_totp(
    *, db_session: Session, person_key: str, code: str, max_failures: int, lockout_seconds: int
) -> None:
    """Second factor: a TOTP code (30 s steps, one step of drift either way)."""
    person = db_session.scalar(select(Person).where(Person.person_key == person_key))
    if person is None or not person.totp_secret:
        raise LoginFailed("no second factor is set for this account")
    _refuse_if_locked(person)
    if not verify_totp(person.totp_secret, code):
        _count_failure(person, max_failures, lockout_seconds)
        raise LoginFailed("wrong one-time code")
    person.failed_logins = 0


def _verify(hash_: str, password: str) -> bool:
    try:
        return _hasher.verify(hash_, password)
    except (VerificationError, InvalidHashError):
        return False


def _refuse_if_locked(person: Person) -> None:
    if person.locked_until and person.locked_until > utcnow():
        wait = int((person.locked_until - utcnow()).total_seconds()) + 1
        raise AccountLocked(f"too many failed attempts; try again in {wait} seconds")


def _count_failure(person: Person, max_failures: int, lockout_seconds: int) -> None:
    person.failed_logins += 1
    if person.failed_logins >= max_failures:
        person.locked_until = utcnow() + timedelta(seconds=lockout_seconds)
        person.failed_logins = 0


# --- TOTP, RFC 6238 (HOTP, RFC 4226 §5.3, over 30-second time steps) -------------------

def new_totp_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def totp(secret_b32: str, at: float | None = None, step: int = 30, digits: int = 6) -> str:
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    counter = int((time.time() if at is None else at) // step)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def verify_totp(secret_b32: str, code: str, at: float | None = None) -> bool:
    now = time.time() if at is None else at
    code = code.strip().replace(" ", "")
    return any(hmac.compare_digest(totp(secret_b32, now + drift * 30), code) for drift in (-1, 0, 1))


def totp_uri(secret_b32: str, username: str, issuer: str = "Renkei") -> str:
    return f"otpauth://totp/{issuer}:{username}?secret={secret_b32}&issuer={issuer}"


def find(*, db_session: Session, username: str) -> Person | None:
    """The account with this username, if any."""
    return db_session.scalar(select(Person).where(Person.username == username.strip()))
