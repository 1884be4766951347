"""The schema Alembic builds is the schema the models describe: upgrade a fresh database to
head, compare it with every room's metadata, and walk it down to base and up again.

Tests built with `create_all` cannot see a drift between models and revisions; these can.
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from kernel.db import Base, alembic_config, make_engine
from tests.conftest import fresh_database_url

# every module that declares tables on the shared metadata
MODEL_MODULES = ("kernel.replay", "federation.models", "idp.models", "idp.oidc.models", "pseudonym.models",
                 "consent.models", "discovery.models", "access_history.models", "portal.models",
                 "relay.models", "process.models", "renkei.operators")


# PostgreSQL's monthly partitions of the history (access_history/retention.py) are created by
# the migration and the integrator under their parent table; they are no model of their own
PARTITION = re.compile(r"^(history_entries|operation_entries)_(p\d{4}_\d{2}|default)$")


def _not_a_partition(obj, name, type_, reflected, compare_to) -> bool:
    table = obj.table.name if type_ in ("index", "unique_constraint", "column") else name
    return not (type_ in ("table", "index", "unique_constraint", "column") and PARTITION.match(table or ""))


def _server_default_differs(_context, _inspected, _column, inspected_default, metadata_default, _rendered):
    """The history's ids come from a PostgreSQL sequence (nextval) there and from a counter row
    on SQLite, so the models name no server default for them; anything else is compared."""
    if metadata_default is None and inspected_default and "nextval(" in str(inspected_default):
        return False
    return None


def metadata():
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return Base.metadata


def drift(url: str) -> list:
    """Alembic's differences between the database at `url` and the models' metadata."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True,
                "compare_server_default": _server_default_differs,
                "include_object": _not_a_partition,
            })
            # alembic_version is Alembic's own bookkeeping, not a model
            return [d for d in compare_metadata(context, metadata())
                    if not (d[0] == "remove_table" and d[1].name == "alembic_version")]
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {t for t in inspect(engine).get_table_names() if not PARTITION.match(t)} - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.fixture
def db_url(tmp_path) -> str:
    return fresh_database_url(tmp_path, f"migrations_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}")


def test_every_models_module_is_compared():
    """A new room's tables cannot slip past the comparison."""
    root = Path(__file__).resolve().parent.parent
    found = {".".join(p.relative_to(root).with_suffix("").parts) for p in root.glob("*/models.py")}
    assert found <= set(MODEL_MODULES), f"add {sorted(found - set(MODEL_MODULES))} to MODEL_MODULES"


def test_migrated_schema_matches_the_models(db_url):
    command.upgrade(alembic_config(db_url), "head")
    assert tables(db_url) == set(metadata().tables), "every model's table is created by a revision"
    assert drift(db_url) == []


def test_downgrade_to_base_then_upgrade_again(db_url):
    cfg = alembic_config(db_url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    assert tables(db_url) == set(), "base leaves no table behind"
    command.upgrade(cfg, "head")
    assert drift(db_url) == []


def test_each_revision_steps_down_and_up(db_url):
    """Every single step reverses cleanly, not only the whole walk."""
    cfg = alembic_config(db_url)
    revisions = [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()]
    command.upgrade(cfg, "head")
    for _ in revisions:
        command.downgrade(cfg, "-1")
        command.upgrade(cfg, "+1")
        command.downgrade(cfg, "-1")
    assert tables(db_url) == set()


def test_serve_refuses_a_database_behind_head(db_url, tmp_path):
    """`renkei serve` names the revision it found and the one it needs (none is covered in
    test_cli.py; here the schema exists but one revision short)."""
    cfg = alembic_config(db_url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "-1")
    head = ScriptDirectory.from_config(cfg).get_current_head()
    (tmp_path / "home").mkdir()  # a home exists: the schema is what is refused
    env = {**os.environ, "RENKEI_HOME": str(tmp_path / "home"), "RENKEI_DATABASE_URL": db_url}
    proc = subprocess.run([str(Path(sys.executable).with_name("renkei")), "serve", "--port", "1"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"needs {head}" in proc.stderr and "renkei init" in proc.stderr
    assert "revision none" not in proc.stderr
