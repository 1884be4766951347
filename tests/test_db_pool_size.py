"""The pool keeps every connection it makes (no overflow to close and reopen): a process with
more requests in flight than a small steady pool used to reconnect for a fifth of them. Its
size is RENKEI_DB_POOL_SIZE; a request beyond it waits for a connection. Both databases."""
from __future__ import annotations

import pytest
from sqlalchemy import event
from sqlalchemy.exc import TimeoutError as PoolTimeout

from kernel import db
from kernel.settings import reset_settings
from tests.conftest import fresh_database_url


@pytest.fixture
def url(tmp_path):
    return fresh_database_url(tmp_path, "poolsize")


def test_connections_made_under_a_burst_stay_for_the_next(url):
    engine = db.make_engine(url)
    connects: list[object] = []
    event.listen(engine, "connect", lambda *_: connects.append(1))
    try:
        for _ in range(2):  # a burst of 15 requests in flight (more than the old steady 10), twice
            held = [engine.connect() for _ in range(15)]
            for conn in held:
                conn.exec_driver_sql("SELECT 1")
                conn.close()
        assert len(connects) == 15  # the second burst reconnected nothing
        assert engine.pool.checkedin() == 15
    finally:
        engine.dispose()


def test_the_pool_size_comes_from_the_environment_and_bounds_the_connections(url, monkeypatch):
    monkeypatch.setenv("RENKEI_DB_POOL_SIZE", "3")
    reset_settings()
    db.dispose_engines()
    try:
        engine = db.get_engine(url)
        assert engine.pool.size() == 3
        held = [engine.connect() for _ in range(3)]
        engine.pool._timeout = 0.05  # a fourth request would wait this long for one of them
        with pytest.raises(PoolTimeout):
            engine.connect()
        held.pop().close()
        engine.connect().close()  # one came back: the waiting request gets it
        for conn in held:
            conn.close()
    finally:
        db.dispose_engines()
        monkeypatch.delenv("RENKEI_DB_POOL_SIZE")
        reset_settings()


@pytest.mark.parametrize("size", ["0", "-1", "1001", "many"])
def test_a_pool_size_out_of_range_is_refused_at_startup(size, monkeypatch):
    from pydantic import ValidationError

    from kernel.settings import get_settings

    monkeypatch.setenv("RENKEI_DB_POOL_SIZE", size)
    reset_settings()
    try:
        with pytest.raises(ValidationError, match="db_pool_size"):
            get_settings()
    finally:
        monkeypatch.delenv("RENKEI_DB_POOL_SIZE")
        reset_settings()


def test_engines_are_disposed_while_other_threads_open_them(tmp_path):
    """A background thread opening an engine while a test (or a forked worker) disposes them
    all: neither sees the registry change under it (CI once failed with "dictionary changed
    size during iteration"), and every thread asking for one URL at once gets one engine."""
    import threading

    db.dispose_engines()
    urls = [f"sqlite:///{tmp_path}/registry{i}.db" for i in range(40)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def open_engines() -> None:
        try:
            while not stop.is_set():
                for url in urls:
                    db.get_engine(url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_engines) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(200):
            db.dispose_engines()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        db.dispose_engines()
    assert errors == []

    seen: list[object] = []
    barrier = threading.Barrier(8)

    def race_for_one() -> None:
        barrier.wait()
        seen.append(db.get_engine(urls[0]))

    racers = [threading.Thread(target=race_for_one) for _ in range(8)]
    for thread in racers:
        thread.start()
    for thread in racers:
        thread.join()
    try:
        assert len({id(engine) for engine in seen}) == 1
    finally:
        db.dispose_engines()
