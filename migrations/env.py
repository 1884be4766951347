"""Alembic environment: every room's tables are registered on the shared metadata."""
from __future__ import annotations

import importlib

from alembic import context

from kernel import replay  # noqa: F401  (the kernel's replay-cache table)
from kernel.db import Base, make_engine
from renkei import operators  # noqa: F401  (the roof's one table: named operators)

for room in ("federation", "idp", "idp.oidc", "pseudonym", "consent", "discovery", "access_history", "portal",
             "relay", "process"):
    try:
        importlib.import_module(f"{room}.models")
    except ModuleNotFoundError as exc:  # a room without tables yet
        if exc.name != f"{room}.models":
            raise

target_metadata = Base.metadata


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    connectable = context.config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
