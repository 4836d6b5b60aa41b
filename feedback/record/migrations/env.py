"""Alembic environment: runs migrations on the connection handed over by `feedback.record.db.upgrade_to_head`.

Also usable from the alembic command line with `-x db=URL` (or $TTPO_DB_URL) for autogenerate.
"""

from __future__ import annotations

import os

from alembic import context

from feedback.record.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from feedback.record.db import make_engine

    url = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get("TTPO_DB_URL")
    if not url:
        raise RuntimeError("give the database: alembic -x db=URL ... or set TTPO_DB_URL")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; run against a database")
run_migrations_online()
