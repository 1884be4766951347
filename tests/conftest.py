"""Shared fixtures: a fresh database (SQLite, or PostgreSQL when RENKEI_TEST_POSTGRES_URL is
set), keys generated per run, and a hub served over real HTTP on a localhost port the kernel
chose (a socket bound to port 0 and kept open, so no other process can take it meanwhile)."""
from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text

from kernel.db import dispose_engines
from kernel.settings import reset_settings

POSTGRES_URL = os.environ.get("RENKEI_TEST_POSTGRES_URL")


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to a port the kernel picks, to hand to uvicorn (`sockets=[...]`).

    Binding and closing to "find a free port" races with every other test process; keeping
    the bound socket open until the server takes it over does not."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def agency_entity_id(port: int) -> str:
    """A test agency's entity ID: its port and a random segment. The session's hub outlives
    the agency servers of earlier test modules, whose ports the kernel hands out again, so a
    port alone may name an agency that is already registered."""
    return f"http://127.0.0.1:{port}/metadata/{secrets.token_hex(4)}"


def serve_in_thread(app, sock: socket.socket) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve `app` with uvicorn on the already bound `sock`, in a daemon thread, once started."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port_of(sock)} did not start")
        time.sleep(0.02)
    return server, thread


# fixtures that reach the database under test: a `nodb` test asking for one is mislabelled, and
# would silently go untested on PostgreSQL
DATABASE_FIXTURES = {"hub", "hub_env", "hub_socket", "fed", "bootstrap"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        used = DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("nodb") and used:
            raise pytest.UsageError(f"{item.nodeid} is marked nodb but uses {sorted(used)}")


_CREATED_DATABASES: list[str] = []  # this process's PostgreSQL test databases, dropped at the end


def _postgres_admin():
    return create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")


def fresh_database_url(tmp: Path, name: str = "renkei") -> str:
    """An empty database: a new SQLite file, or a new PostgreSQL database on the test server
    (dropped when the test session ends)."""
    if not POSTGRES_URL:
        return f"sqlite:///{tmp / (name + '.sqlite3')}"
    base, _, _db = POSTGRES_URL.rpartition("/")
    dbname = f"renkei_t_{name}_{os.getpid()}".replace("-", "_").lower()
    admin = _postgres_admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    admin.dispose()
    _CREATED_DATABASES.append(dbname)
    return f"{base}/{dbname}"


def pytest_sessionfinish(session, exitstatus) -> None:
    """Drop the PostgreSQL databases this process made (each xdist worker its own): a suite run
    left ~170 behind on the shared server before."""
    if not POSTGRES_URL or not _CREATED_DATABASES:
        return
    dispose_engines()
    admin = _postgres_admin()
    try:
        with admin.connect() as conn:
            for dbname in dict.fromkeys(_CREATED_DATABASES):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def hub_socket():
    """The test hub's listening socket, bound before its base URL is written anywhere."""
    sock = listening_socket()
    yield sock
    sock.close()


@contextmanager
def cli_home(tmp_path: Path, monkeypatch, name: str, **extra: str) -> Iterator[dict[str, str]]:
    """The environment of a fresh hub home for CLI tests (not yet `renkei init`ed), set for the
    test and forgotten after it."""
    env = {"RENKEI_HOME": str(tmp_path / "home"), "RENKEI_DATABASE_URL": fresh_database_url(tmp_path, name),
           "RENKEI_BASE_URL": "http://127.0.0.1:9999", **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    try:
        yield env
    finally:
        dispose_engines()
        monkeypatch.undo()
        reset_settings()


@pytest.fixture(scope="session")
def hub_env(tmp_path_factory, hub_socket) -> dict[str, str]:
    """Environment of the test hub: its home, database and base URL (keys made by `init`)."""
    home = tmp_path_factory.mktemp("hub")
    port = port_of(hub_socket)
    env = {
        "RENKEI_HOME": str(home),
        "RENKEI_DATABASE_URL": fresh_database_url(home, "hub"),
        "RENKEI_BASE_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(env)
    reset_settings()
    dispose_engines()
    from click.testing import CliRunner

    from renkei.cli import main

    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    return env


class Hub:
    """A running hub: its base URL and settings, served by uvicorn in a background thread."""

    def __init__(self, env: dict[str, str], sock: socket.socket):
        from kernel.settings import get_settings
        from renkei.app import create_app

        self.env = env
        self.settings = get_settings()
        self.base_url = env["RENKEI_BASE_URL"]
        self.port = port_of(sock)
        assert self.base_url == f"http://127.0.0.1:{self.port}"
        self.server, self.thread = serve_in_thread(create_app(self.settings), sock)
        if httpx.get(f"{self.base_url}/healthz", timeout=10).status_code != 200:
            raise RuntimeError("the test hub is not healthy")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def hub(hub_env, hub_socket):
    running = Hub(hub_env, hub_socket)
    yield running
    running.stop()


def demo_on_free_ports(tmp: Path, host: str | None = None) -> tuple[Path, dict, dict[str, str]]:
    """A copy of config/demo.yaml (and its whitelist) with every port 0, so `renkei demo` binds
    ports the kernel picks and prints their URLs (read them with `demo_urls`), with the
    environment of a fresh demo home and database: (config path, config, env). `host` names
    the servers otherwise (passkeys need a name such as localhost: browsers refuse IP addresses)."""
    import shutil

    import yaml

    config_dir = Path(__file__).resolve().parent.parent / "config"
    config = yaml.safe_load((config_dir / "demo.yaml").read_text(encoding="utf-8"))
    config["hub"]["port"] = 0
    if host is not None:
        config["hub"]["host"] = host
    for agency in config["agencies"]:
        agency["port"] = 0
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    shutil.copy(config_dir / config["whitelist"], tmp / config["whitelist"])
    for name in config.get("processes") or []:  # process definitions, by their relative paths
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(config_dir / name, tmp / name)
    env = {"RENKEI_HOME": str(tmp / "home"), "RENKEI_DATABASE_URL": fresh_database_url(tmp, "demo")}
    return path, config, env


def demo_urls(printed: str, config: dict) -> tuple[str, dict[str, str]] | None:
    """The hub's and each agency's URL (by key) as `renkei demo` printed them; None until all are."""
    import re

    hub = re.search(r"hub \(IdP\):\s+(http://\S+?)/\s", printed)
    agencies = {}
    for agency in config["agencies"]:
        found = re.search(re.escape(agency["name"]) + r":\s+(http://\S+?)/\s", printed)
        if found is None:
            return None
        agencies[agency["key"]] = found.group(1)
    return (hub.group(1), agencies) if hub else None


# the shared cross-agency test federation (tests/federation.py)
from tests.federation import bootstrap, fed  # noqa: F401

# the relay's envelope federation (tests/relay_helpers.py)
from tests.relay_helpers import relay_fed  # noqa: F401
