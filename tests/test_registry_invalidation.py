"""No registry cache lets a retired agency (or a replaced key) be honoured: not in the process
that retired it, even when another request read the agency while the retirement was still
uncommitted, and, on PostgreSQL, not in any other hub process once the change has committed
(NOTIFY renkei_registry, delivered at commit, heard by each process's RegistryListener).
Nothing here waits a fixed time: each wait ends when its condition holds."""
from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from federation import service as agencies
from kernel.db import dispose_engines, session_scope, upgrade
from kernel.invalidation import CHANNEL, RegistryListener
from tests.conftest import POSTGRES_URL, fresh_database_url
from tests.saml_sp import TestSP


@pytest.fixture(scope="module")
def db_url(tmp_path_factory):
    url = fresh_database_url(tmp_path_factory.mktemp("registry"), "registry")
    upgrade(url)
    yield url
    dispose_engines()


def _registered(db_url: str) -> str:
    sp = TestSP(f"https://reg-{uuid.uuid4().hex[:8]}.example.jp/sp", "https://reg.example.jp")
    with session_scope(db_url) as db:
        agencies.register(db_session=db, metadata=sp.metadata(), agency_class="municipality")
    return sp.entity_id


def _live(db_url: str, entity_id: str) -> bool:
    with session_scope(db_url) as db:
        return agencies.lookup(db_session=db, entity_id=entity_id) is not None


def _wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)  # polling the condition, not a fixed wait
    return condition()


def test_a_lookup_while_the_retirement_is_uncommitted_is_not_kept(db_url, monkeypatch):
    monkeypatch.setattr(agencies._cache, "seconds", 3600)  # the cache's expiry cannot rescue it
    entity_id = _registered(db_url)
    assert _live(db_url, entity_id)  # cached
    with session_scope(db_url) as writer:
        agencies.retire(db_session=writer, entity_id=entity_id)
        # another request meanwhile: it reads the committed row (still live) and caches it
        assert _live(db_url, entity_id)
    assert not _live(db_url, entity_id)  # the commit cleared what that request cached


def test_a_replaced_key_is_not_served_from_the_cache(db_url, monkeypatch):
    monkeypatch.setattr(agencies._cache, "seconds", 3600)
    sp = TestSP(f"https://rekey-{uuid.uuid4().hex[:8]}.example.jp/sp", "https://rekey.example.jp")
    with session_scope(db_url) as db:
        agencies.register(db_session=db, metadata=sp.metadata(), agency_class="municipality")
    with session_scope(db_url) as db:
        old = agencies.lookup(db_session=db, entity_id=sp.entity_id).signing_keys
    rekeyed = TestSP(sp.entity_id, sp.base_url)  # same entity, new key pair
    with session_scope(db_url) as db:
        agencies.register(db_session=db, metadata=rekeyed.metadata(), agency_class="municipality", replace=True)
    with session_scope(db_url) as db:
        new = agencies.lookup(db_session=db, entity_id=sp.entity_id).signing_keys
    assert [k.public_numbers() for k in new] == [rekeyed.key.public_key().public_numbers()]
    assert [k.public_numbers() for k in new] != [k.public_numbers() for k in old]


postgres_only = pytest.mark.skipif(not POSTGRES_URL, reason="NOTIFY is PostgreSQL's: needs RENKEI_TEST_POSTGRES_URL")


def _conninfo(db_url: str) -> str:
    return db_url.replace("postgresql+psycopg://", "postgresql://")


@postgres_only
def test_another_process_committed_retirement_clears_this_process_cache(db_url, monkeypatch):
    monkeypatch.setattr(agencies._cache, "seconds", 3600)  # only the listener can clear it in time
    listener = RegistryListener(db_url)
    listener.start()
    try:
        assert listener.listening.wait(10), "the listener did not connect"
        entity_id = _registered(db_url)
        assert _live(db_url, entity_id)  # cached in this process
        # another hub process retires it: its own connection, its own transaction, its NOTIFY
        with psycopg.connect(_conninfo(db_url)) as other:
            other.execute("UPDATE agencies SET retired_at = now() WHERE entity_id = %s", (entity_id,))
            other.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            assert _live(db_url, entity_id)  # uncommitted: nothing to hear yet, the cache stands
        # committed on leaving the block: the listener hears it and clears the cache
        assert _wait_until(lambda: not _live(db_url, entity_id)), "the retired agency is still served"
    finally:
        listener.stop()


@postgres_only
def test_a_registry_change_notifies_the_other_processes_when_it_commits(db_url):
    with psycopg.connect(_conninfo(db_url), autocommit=True) as other:
        other.execute(f"LISTEN {CHANNEL}")
        entity_id = _registered(db_url)  # registering is a change too
        heard = list(other.notifies(timeout=10, stop_after=1))
        assert [n.channel for n in heard] == [CHANNEL]
        with session_scope(db_url) as db:
            agencies.retire(db_session=db, entity_id=entity_id)
        heard = list(other.notifies(timeout=10, stop_after=1))
        assert [n.channel for n in heard] == [CHANNEL]


@postgres_only
def test_the_listener_reconnects_and_clears_what_it_may_have_missed(db_url, monkeypatch):
    monkeypatch.setattr(RegistryListener, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(agencies._cache, "seconds", 3600)
    listener = RegistryListener(db_url)
    listener.start()
    try:
        assert listener.listening.wait(10)
        entity_id = _registered(db_url)
        assert _live(db_url, entity_id)
        # its connection is cut (a server restart); meanwhile the agency is retired without a
        # NOTIFY anyone hears
        with psycopg.connect(_conninfo(db_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()")
            admin.execute("UPDATE agencies SET retired_at = now() WHERE entity_id = %s", (entity_id,))
        assert _wait_until(lambda: not _live(db_url, entity_id)), "a reconnected listener kept the old cache"
    finally:
        listener.stop()
