"""Database engine, the one session dependency, and the migration guard.

The schema is only ever changed by Alembic revisions in `migrations/`.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
    false,
    func,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from kernel.background import nudge, take_session_nudges
from kernel.errors import UserError

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# 64-bit ids for tables that grow with the population or the traffic (PostgreSQL BIGINT);
# SQLite's INTEGER PRIMARY KEY is 64 bits already and only auto-increments under that name
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    """Naive UTC now: both SQLite and PostgreSQL columns store UTC without a zone."""
    return datetime.now(UTC).replace(tzinfo=None)


class DatabaseNotMigrated(UserError, RuntimeError):
    """The database schema is not at the code's Alembic head (behind it, or newer than it)."""


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def insert_or_ignore(db_session: Session, entity):
    """`INSERT … ON CONFLICT DO NOTHING` in the session's dialect: the way to create a row that
    a concurrent request may be creating too (the loser reads the winner's row afterwards)."""
    return insert_or_ignore_in(db_session.get_bind().dialect.name, entity)


def insert_or_ignore_in(dialect: str, entity):
    """`insert_or_ignore` for a dialect by name (for a Connection, or a statement built once)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(entity).on_conflict_do_nothing()


def serialize_writers(db_session: Session, *, key: str, table: Table) -> None:
    """Hold, until the session's transaction ends, a lock that every other transaction asking
    for the same `key` waits for, so that what it reads afterwards is what the previous holder
    committed (a read-modify-write that two requests must not interleave). PostgreSQL: a
    transaction-scoped advisory lock on the key's hash. SQLite, which has one writer: its
    write lock, taken by an UPDATE of `table` that matches no row. Asking again in the same
    transaction is harmless."""
    if db_session.get_bind().dialect.name == "postgresql":
        db_session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))
        return
    column = next(iter(table.primary_key.columns))
    db_session.execute(update(table).where(false()).values({column.name: column}))


# database connections per process unless set (Settings.db_pool_size, RENKEI_DB_POOL_SIZE)
POOL_SIZE = 30


def make_engine(url: str, *, pool_size: int = POOL_SIZE) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            # argon2 hashes and TOTP seeds live here: the owner's alone, like the keys
            parent = Path(path).parent
            if not parent.is_dir():
                parent.mkdir(mode=0o700, parents=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        # a file database's pool keeps what it made too (SQLite's QueuePool would close all but 5)
        pool = {} if path in ("", ":memory:") else {"pool_size": pool_size, "max_overflow": 0}
        engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    # Every connection the pool makes stays in it (no overflow): an overflow connection is closed
    # when it comes back while the pool is full, so a process with more requests in flight than
    # its pool's steady size reconnected for a fifth of its requests (0.23 connects per SSO
    # response: a PostgreSQL backend forked, ~0.5 ms of client CPU and ~3 ms of wall each).
    # A request beyond `pool_size` waits for a connection (pool_timeout) as it waited for one
    # beyond 10 + 20 overflow before.
    engine = create_engine(url, pool_size=pool_size, max_overflow=0, pool_recycle=1800)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


# A connection that went back to the pool less than this long ago is handed out unchecked: under
# load every checkout finds one, so the hot path pays no ping round trip (SQLAlchemy's
# pool_pre_ping pays one per checkout). One idle longer is pinged first, so the first requests
# after a database restart during a quiet spell get a fresh connection instead of a 500; a
# restart under load fails at most the transactions in flight (pre-ping could not save those
# either), and the disconnect they see invalidates the whole pool at once.
IDLE_PING_SECONDS = 5.0


def _note_checkin(_dbapi_connection, connection_record) -> None:
    connection_record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection, connection_record, _proxy) -> None:
    checked_in = connection_record.info.get("checked_in")
    if checked_in is None or time.monotonic() - checked_in < IDLE_PING_SECONDS:
        return  # new (just connected) or recently used
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()  # psycopg opened a transaction for the ping
    except Exception:  # noqa: BLE001 - any driver error: this connection is dead
        # the pool discards it and checks out (or connects) another (SQLAlchemy pool events)
        raise sa_exc.DisconnectionError() from None


@event.listens_for(Session, "after_commit")
def _nudge_committed(db_session: Session) -> None:
    """What the session's work asked to wake (kernel.background.nudge_after_commit) is woken now
    that it is durable."""
    nudge(*take_session_nudges(db_session))


@event.listens_for(Session, "after_rollback")
def _drop_nudges(db_session: Session) -> None:
    take_session_nudges(db_session)


_ENGINES: dict[str, Engine] = {}
_SESSIONMAKERS: dict[str, sessionmaker[Session]] = {}
# Background threads (the relay, the history appender) open sessions while a test or a forked
# worker disposes the engines: every change to the two registries holds this lock, and readers
# take their answer from one dict lookup.
_REGISTRY_LOCK = threading.Lock()


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the settings' database)."""
    from kernel.settings import get_settings

    settings = get_settings()
    url = url or settings.db_url
    engine = _ENGINES.get(url)
    if engine is None:
        with _REGISTRY_LOCK:
            engine = _ENGINES.get(url)
            if engine is None:  # no other thread made it meanwhile
                engine = _ENGINES[url] = make_engine(url, pool_size=settings.db_pool_size)
    return engine


def _sessionmaker(url: str | None) -> sessionmaker[Session]:
    engine = get_engine(url)
    key = str(engine.url)
    maker = _SESSIONMAKERS.get(key)
    if maker is None:
        with _REGISTRY_LOCK:
            maker = _SESSIONMAKERS.setdefault(key, sessionmaker(engine, expire_on_commit=False))
    return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on any error (nothing half-written)."""
    session = _sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close pooled connections and forget engines (after a fork, or between tests)."""
    with _REGISTRY_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
        _SESSIONMAKERS.clear()
    for engine in engines:
        engine.dispose()


# --- migrations -----------------------------------------------------------------------

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command

    _schema_revisions(url)  # refuses a schema newer than this code before Alembic tries
    command.upgrade(alembic_config(url), "head")


def check_migrated(url: str) -> None:
    """Refuse to run on a database whose schema is not at the code's head revision."""
    current, head = _schema_revisions(url)
    if current != head:
        raise DatabaseNotMigrated(
            f"the database at {_redact(url)} is at schema revision {current or 'none'}, "
            f"this Renkei needs {head}; run `renkei init` (it upgrades the schema) first"
        )


def _schema_revisions(url: str) -> tuple[str | None, str]:
    """The database's schema revision and the code's head; refuses a revision the code does not know."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config(url))
    head = scripts.get_current_head()
    with get_engine(url).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in {script.revision for script in scripts.walk_revisions()}:
        # `renkei init` could not help ("Can't locate revision"), and this code does not know
        # the schema it would run on
        raise DatabaseNotMigrated(
            f"the database at {_redact(url)} was migrated by a newer Renkei (schema revision "
            f"{current}; this Renkei knows up to {head}); run that newer Renkei, or restore a backup"
        )
    return current, head


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
