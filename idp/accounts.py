"""People's accounts: argon2id passwords, optional TOTP (RFC 6238) sealed at rest, and a login
throttle per account name and per client address (NIST SP 800-63B §5.2.2)."""
from __future__ import annotations

import base64
import binascii
import hmac
import math
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from idp.models import LoginThrottle, Person, PersonRole
from kernel.db import utcnow
from kernel.errors import UserError
from kernel.keys import KeyStore, keystore
from kernel.settings import Settings
from kernel.validate import identifier_problem

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# verified against when the username is unknown, so timing does not reveal which accounts exist
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

USERNAME_MAX = 128  # persons.username
PASSWORD_MAX = 1024  # longer is no password anyone types; argon2 need not hash megabytes
TOTP_SECRET = "totp"  # the key-store secret that seals TOTP seeds in the database
TOTP_STEP = 30
TOTP_DIGITS = 6


class AccountError(UserError, ValueError):
    """Bad account input (duplicate username, weak password, ...)."""


class LoginFailed(Exception):
    """Wrong username, password or code. The message never says which."""


class LoginThrottled(LoginFailed):
    """Too many recent failures for this account name or client address: wait `retry_after` s.

    Raised alike for known and unknown usernames, and even for the right password."""

    def __init__(self, retry_after: int):
        super().__init__(f"too many failed attempts; try again in {retry_after} seconds")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Authenticated:
    person_key: str
    needs_totp: bool


@dataclass(frozen=True)
class LoginLimits:
    """How failures slow further tries: free ones, then a delay doubling per failure."""

    account_free_failures: int
    address_free_failures: int
    first_delay: float
    max_delay: float
    window: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimits:
        return cls(
            account_free_failures=settings.login_free_failures,
            address_free_failures=settings.login_address_free_failures,
            first_delay=settings.login_first_delay_seconds,
            max_delay=settings.login_max_delay_seconds,
            window=timedelta(seconds=settings.login_failure_window_seconds),
        )

    def delay(self, key: str, failures: int) -> float:
        free = self.address_free_failures if key.startswith("address:") else self.account_free_failures
        if failures < free:
            return 0.0
        return min(self.first_delay * 2 ** min(failures - free, 40), self.max_delay)


def add_person(
    *, db_session: Session, username: str, password: str, display_name: str = "",
    totp_secret: str | None = None, keys: KeyStore | None = None,
) -> Person:
    """Create an account with an argon2id password hash and a fresh internal person key."""
    username = username.strip()
    if problem := identifier_problem(username, max_length=USERNAME_MAX):
        raise AccountError(f"username {problem}")
    if len(password) < 8:
        raise AccountError("password must be at least 8 characters")
    if len(password) > PASSWORD_MAX:
        raise AccountError(f"password must be at most {PASSWORD_MAX} characters")
    if db_session.scalar(select(Person.id).where(Person.username == username)):
        raise AccountError(f"username {username!r} is taken")
    person_key = secrets.token_hex(16)
    person = Person(
        person_key=person_key,
        username=username,
        display_name=display_name or username,
        password_hash=_hasher.hash(password),
        totp_secret=seal_totp_secret(keys=keys or keystore(), person_key=person_key, secret_b32=totp_secret)
        if totp_secret else None,
    )
    db_session.add(person)
    db_session.flush()
    return person


def valid_username(username: str) -> bool:
    """Fits the column and holds no control characters (PostgreSQL refuses NUL outright)."""
    return identifier_problem(username, max_length=USERNAME_MAX) is None


def check_password(
    *, db_session: Session, username: str, password: str, client_address: str, limits: LoginLimits,
    now: datetime | None = None,
) -> Authenticated:
    """First factor, throttled per account name and per client address before anything else."""
    now = now or utcnow()
    username = username.strip()
    plausible = valid_username(username) and len(password) <= PASSWORD_MAX
    # a name that cannot exist gets no counter of its own; its address still counts
    counters = [_address_key(client_address)] + ([_account_key(username)] if plausible else [])
    _refuse_if_throttled(db_session=db_session, counters=counters, limits=limits, now=now)
    person = db_session.scalar(select(Person).where(Person.username == username)) if plausible else None
    # an unknown name costs one argon2 verify too, so timing does not tell it apart
    if not _verify(person.password_hash if person else _DUMMY_HASH, password) or person is None:
        _count_failure(db_session=db_session, counters=counters, limits=limits, now=now)
        raise LoginFailed("unknown username or wrong password")
    if _hasher.check_needs_rehash(person.password_hash):
        person.password_hash = _hasher.hash(password)
    if not person.totp_secret:
        _forget_failures(db_session=db_session, username=username)
    return Authenticated(person.person_key, needs_totp=bool(person.totp_secret))


def check_totp(
    *, db_session: Session, person_key: str, code: str, client_address: str, limits: LoginLimits,
    keys: KeyStore | None = None, now: float | None = None,
) -> None:
    """Second factor: a TOTP code (30 s steps, one step of drift either way), each step once."""
    person = db_session.scalar(select(Person).where(Person.person_key == person_key))
    if person is None or not person.totp_secret:
        raise LoginFailed("no second factor is set for this account")
    now = time.time() if now is None else now
    when = utcnow()
    counters = [_address_key(client_address), _account_key(person.username)]
    _refuse_if_throttled(db_session=db_session, counters=counters, limits=limits, now=when)
    seed = open_totp_secret(keys=keys or keystore(), person_key=person_key, sealed=person.totp_secret)
    step = _matching_step(seed, code, now)
    if step is None:
        _count_failure(db_session=db_session, counters=counters, limits=limits, now=when)
        raise LoginFailed("wrong one-time code")
    # RFC 6238 §5.2: a step once accepted is spent; the conditional UPDATE lets exactly one of
    # two concurrent submits through
    spent = db_session.execute(
        update(Person)
        .where(Person.id == person.id, or_(Person.totp_last_step.is_(None), Person.totp_last_step < step))
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:
        raise LoginFailed("this one-time code was already used")
    _forget_failures(db_session=db_session, username=person.username)


def failures(*, db_session: Session, username: str | None = None, client_address: str | None = None) -> int:
    """Recent failures counted for an account name or a client address (for operators and tests)."""
    key = _account_key(username.strip()) if username is not None else _address_key(client_address or "")
    row = db_session.get(LoginThrottle, key)
    return row.failures if row else 0


def refuse_if_throttled(
    *, db_session: Session, client_address: str, username: str | None, limits: LoginLimits,
) -> None:
    """The throttle's check for another factor (a passkey): raises LoginThrottled while the
    address, or the account when known, must wait."""
    counters = [_address_key(client_address)] + ([_account_key(username)] if username is not None else [])
    _refuse_if_throttled(db_session=db_session, counters=counters, limits=limits, now=utcnow())


def count_failure(*, db_session: Session, client_address: str, username: str | None, limits: LoginLimits) -> None:
    """A failed attempt of another factor counts like a wrong password."""
    counters = [_address_key(client_address)] + ([_account_key(username)] if username is not None else [])
    _count_failure(db_session=db_session, counters=counters, limits=limits, now=utcnow())


def forget_failures(*, db_session: Session, username: str) -> None:
    """A completed login clears the account's counter (never the address's)."""
    _forget_failures(db_session=db_session, username=username)


def _verify(hash_: str, password: str) -> bool:
    try:
        return _hasher.verify(hash_, password)
    except (VerificationError, InvalidHashError):
        return False


def _account_key(username: str) -> str:
    return f"account:{username}"


def _address_key(address: str) -> str:
    return f"address:{address[:64]}"


def _refuse_if_throttled(*, db_session: Session, counters: list[str], limits: LoginLimits, now: datetime) -> None:
    wait = 0.0
    for row in db_session.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(counters))):
        if row.last_failure_at <= now - limits.window:
            continue
        until = row.last_failure_at + timedelta(seconds=limits.delay(row.key, row.failures))
        wait = max(wait, (until - now).total_seconds())
    if wait > 0:
        raise LoginThrottled(math.ceil(wait))


def _count_failure(*, db_session: Session, counters: list[str], limits: LoginLimits, now: datetime) -> None:
    """One more failure on each counter, in one atomic upsert each (parallel guesses all count)."""
    now = max(now, utcnow())  # the delay runs from the failure, not from the request's start
    insert = postgresql_insert if db_session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for key in counters:  # always address before account: concurrent requests lock in one order
        stmt = insert(LoginThrottle).values(key=key, failures=1, last_failure_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[LoginThrottle.key],
            set_={
                "failures": case(
                    (LoginThrottle.last_failure_at <= now - limits.window, 1),
                    else_=LoginThrottle.failures + 1,
                ),
                "last_failure_at": now,
            },
        )
        db_session.execute(stmt)


def _forget_failures(*, db_session: Session, username: str) -> None:
    # only the account's: a success must not reset the address an attacker guesses from
    db_session.execute(delete(LoginThrottle).where(LoginThrottle.key == _account_key(username)))


# --- TOTP, RFC 6238, by pyca/cryptography; seeds sealed with AES-GCM ------------------------

def new_totp_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def _b32decode(secret_b32: str) -> bytes:
    try:
        return base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    except (binascii.Error, ValueError):
        raise AccountError("the TOTP secret is not base32") from None


def _totp(seed: bytes) -> TOTP:
    # authenticator apps use SHA-1 seeds of 10 to 20 bytes; RFC 4226 asks for 16 at least
    return TOTP(seed, TOTP_DIGITS, hashes.SHA1(), TOTP_STEP, enforce_key_length=False)


def totp(secret_b32: str, at: float | None = None) -> str:
    """The code an authenticator shows at `at` (now by default)."""
    return _totp(_b32decode(secret_b32)).generate(time.time() if at is None else at).decode()


def _matching_step(seed: bytes, code: str, now: float) -> int | None:
    code = code.strip().replace(" ", "")
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    generator = _totp(seed)
    for drift in (0, -1, 1):
        at = now + drift * TOTP_STEP
        if hmac.compare_digest(generator.generate(at), code.encode()):
            return int(at // TOTP_STEP)
    return None


def verify_totp(secret_b32: str, code: str, at: float | None = None) -> bool:
    """Whether `code` is valid now (one step of drift either way); does not spend it."""
    return _matching_step(_b32decode(secret_b32), code, time.time() if at is None else at) is not None


def totp_uri(secret_b32: str, username: str, issuer: str = "Renkei") -> str:
    """The otpauth:// URI for authenticator apps, label and issuer percent-encoded."""
    return _totp(_b32decode(secret_b32)).get_provisioning_uri(username, issuer)


def seal_totp_secret(*, keys: KeyStore, person_key: str, secret_b32: str) -> str:
    """AES-GCM under the newest `totp` secret, bound to the person (their key is the AAD)."""
    version, key = keys.current_secret(TOTP_SECRET)
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(
        nonce, _b32decode(secret_b32), person_key.encode()
    )
    return f"v{version}.{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def open_totp_secret(*, keys: KeyStore, person_key: str, sealed: str) -> bytes:
    """The raw TOTP seed; a seal that does not open is an error, never a plain-text fallback."""
    try:
        version, _, body = sealed.partition(".")
        blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        key = keys.secret(TOTP_SECRET, int(version.removeprefix("v")))
        return AESGCM(key).decrypt(blob[:12], blob[12:], person_key.encode())
    except (ValueError, binascii.Error, OSError, InvalidTag):
        raise AccountError("the stored TOTP secret cannot be opened with this hub's keys") from None


def totp_secret_of(*, keys: KeyStore, person: Person) -> str | None:
    """The person's TOTP secret in base32, as authenticator apps take it (the demo prints it)."""
    if not person.totp_secret:
        return None
    seed = open_totp_secret(keys=keys, person_key=person.person_key, sealed=person.totp_secret)
    return base64.b32encode(seed).decode().rstrip("=")


def login_name_ref(*, username: str, keys: KeyStore | None = None) -> str:
    """How the operations log names who tried to log in: a keyed hash of the typed name.

    Failed logins are full of mistyped names, other people's names and passwords typed into
    the name field; the hash lets an auditor correlate attempts on one name (and, holding the
    hub's keys, test whether a given name was tried) without the log spelling any of them out.
    Keyed with the first `totp` secret version, so it survives rotations and cannot be
    computed from a dictionary by whoever reads an export."""
    keys = keys or keystore()
    first = keys.secret_versions(TOTP_SECRET)[0]
    mac = hmac.new(keys.secret(TOTP_SECRET, first), b"renkei/login-name/v1\0" + username.strip().encode(
        "utf-8", "surrogatepass"), "sha256")
    return "login:" + mac.hexdigest()[:32]


def login_name_ref_of(*, db_session: Session, person_key: str, keys: KeyStore | None = None) -> str:
    """The login-name reference of an existing account (for second-factor events)."""
    person = db_session.scalar(select(Person).where(Person.person_key == person_key))
    return login_name_ref(username=person.username if person else "", keys=keys)


def has_totp(*, db_session: Session, person_key: str) -> bool:
    """Whether the person has a TOTP second factor."""
    return bool(db_session.scalar(select(Person.totp_secret).where(Person.person_key == person_key)))


def find(*, db_session: Session, username: str) -> Person | None:
    """The account with this username, if any."""
    return db_session.scalar(select(Person).where(Person.username == username.strip()))


# --- roles --------------------------------------------------------------------------------

AUDITOR = "auditor"  # 監査: exports and verifies the history, reads the anomaly reports
ROLES = (AUDITOR,)


def _person_or_error(db_session: Session, username: str) -> Person:
    person = find(db_session=db_session, username=username) if valid_username(username.strip()) else None
    if person is None:
        raise AccountError(f"no person {username.strip()!r}")
    return person


def _role_or_error(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
    return role


def add_role(*, db_session: Session, username: str, role: str) -> bool:
    """Grant a role; False if the person already held it."""
    person, role = _person_or_error(db_session, username), _role_or_error(role)
    if role in roles_of(db_session=db_session, person_key=person.person_key):
        return False
    db_session.add(PersonRole(person_key=person.person_key, role=role, granted_at=utcnow()))
    db_session.flush()
    return True


def remove_role(*, db_session: Session, username: str, role: str) -> bool:
    """Take a role away; False if the person did not hold it."""
    person, role = _person_or_error(db_session, username), _role_or_error(role)
    gone = db_session.execute(delete(PersonRole).where(PersonRole.person_key == person.person_key,
                                                       PersonRole.role == role))
    return gone.rowcount > 0


def roles_of(*, db_session: Session, person_key: str) -> frozenset[str]:
    """The roles a person holds (read on every request, so a removal applies at once)."""
    return frozenset(db_session.scalars(select(PersonRole.role).where(PersonRole.person_key == person_key)))


def list_roles(*, db_session: Session, role: str | None = None) -> list[tuple[str, str]]:
    """(username, role) of every grant, optionally of one role, by username."""
    stmt = select(Person.username, PersonRole.role).join(PersonRole, PersonRole.person_key == Person.person_key)
    if role is not None:
        stmt = stmt.where(PersonRole.role == _role_or_error(role))
    return [(u, r) for u, r in db_session.execute(stmt.order_by(Person.username, PersonRole.role))]


def username_of(*, db_session: Session, person_key: str) -> str | None:
    """The login name of a person key (shown to the people a person chose, never to agencies)."""
    return db_session.scalar(select(Person.username).where(Person.person_key == person_key))
