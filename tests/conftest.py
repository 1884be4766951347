"""Shared fixtures: a fresh database (SQLite, or PostgreSQL when RENKEI_TEST_POSTGRES_URL is
set), keys generated per run, and a hub served over real HTTP on a free localhost port."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from kernel.db import dispose_engines
from kernel.settings import reset_settings

POSTGRES_URL = os.environ.get("RENKEI_TEST_POSTGRES_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database_url(tmp: Path, name: str = "renkei") -> str:
    """An empty database: a new SQLite file, or a new PostgreSQL database on the test server."""
    if not POSTGRES_URL:
        return f"sqlite:///{tmp / (name + '.sqlite3')}"
    base, _, _db = POSTGRES_URL.rpartition("/")
    dbname = f"renkei_t_{name}_{os.getpid()}".replace("-", "_").lower()
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    admin.dispose()
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def hub_env(tmp_path_factory) -> dict[str, str]:
    """Environment of the test hub: its home, database and base URL (keys made by `init`)."""
    home = tmp_path_factory.mktemp("hub")
    port = free_port()
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

    def __init__(self, env: dict[str, str]):
        import uvicorn

        from kernel.settings import get_settings
        from renkei.app import create_app

        self.env = env
        self.settings = get_settings()
        self.base_url = env["RENKEI_BASE_URL"]
        self.port = int(self.base_url.rsplit(":", 1)[1])
        config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the test hub did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def hub(hub_env):
    running = Hub(hub_env)
    yield running
    running.stop()


def demo_on_free_ports(tmp: Path) -> tuple[Path, dict, dict[str, str]]:
    """A copy of config/demo.yaml (and its whitelist) on free ports, with the environment of a
    fresh demo home and database: (config path, config, env)."""
    import shutil

    import yaml

    config_dir = Path(__file__).resolve().parent.parent / "config"
    config = yaml.safe_load((config_dir / "demo.yaml").read_text(encoding="utf-8"))
    config["hub"]["port"] = free_port()
    for agency in config["agencies"]:
        agency["port"] = free_port()
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    shutil.copy(config_dir / config["whitelist"], tmp / config["whitelist"])
    env = {"RENKEI_HOME": str(tmp / "home"), "RENKEI_BASE_URL": f"http://127.0.0.1:{config['hub']['port']}",
           "RENKEI_DATABASE_URL": fresh_database_url(tmp, "demo")}
    return path, config, env


# the shared cross-agency test federation (tests/federation.py)
from tests.federation import bootstrap, fed  # noqa: F401
