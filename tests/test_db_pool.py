"""The PostgreSQL pool without a pre-ping per checkout: a connection used a moment ago is handed
out unchecked (no round trip on the hot path), one that sat idle is pinged first, so a database
connection that died while the hub was quiet (a restart, an idle timeout) never costs a request.

PostgreSQL only: SQLite has no server to lose.
"""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from kernel import db
from tests.conftest import POSTGRES_URL, fresh_database_url

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="needs RENKEI_TEST_POSTGRES_URL")


def _kill(url: str, pid: int) -> None:
    admin = create_engine(url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    admin.dispose()


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()


@pytest.fixture
def engine(tmp_path):
    url = fresh_database_url(tmp_path, "pool")
    engine = db.make_engine(url)
    yield url, engine
    engine.dispose()


def test_a_connection_that_died_while_idle_is_replaced_before_use(engine, monkeypatch):
    url, eng = engine
    pid = _backend_pid(eng)
    _kill(url, pid)
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # as if it had sat idle for a while
    assert _backend_pid(eng) != pid  # answered on a fresh connection, no error


def test_a_recently_used_connection_is_not_pinged(engine, monkeypatch):
    """The other side of the trade: within the idle window no ping runs (the hot path pays no
    round trip), so a connection killed in that window is only found by the statement."""
    url, eng = engine
    pid = _backend_pid(eng)
    _kill(url, pid)
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)
    with pytest.raises(OperationalError):
        _backend_pid(eng)
    # the disconnect invalidated the pool: the next checkout connects afresh
    assert _backend_pid(eng) != pid
