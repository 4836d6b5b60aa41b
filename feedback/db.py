"""Engines and session factories for the preference database (SQLite file or PostgreSQL), and migrations.

The URL comes from the caller (`--db` on the command line), else the environment variable
`TTPO_DB_URL`, else a SQLite file in the data directory. Schema changes go through Alembic
(`feedback/migrations`); `upgrade_to_head` is applied when the app starts.

    python -m feedback.db upgrade --db sqlite:///data/ttpo.sqlite3
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from feedback.errors import InputError

DB_URL_ENV = "TTPO_DB_URL"
SQLITE_FILENAME = "ttpo.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def resolve_db_url(url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The database URL: `url` if given, else $TTPO_DB_URL, else sqlite:///<data_dir>/ttpo.sqlite3."""
    if url:
        return url
    env_url = os.environ.get(DB_URL_ENV)
    if env_url:
        return env_url
    if data_dir is None:
        raise InputError(f"no database given: pass --db URL, set ${DB_URL_ENV}, or give a data directory")
    path = Path(data_dir).resolve() / SQLITE_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling would BEGIN lazily and break SAVEPOINTs; turn it off and
    # emit BEGIN ourselves (see _begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _begin_immediate(connection: Any) -> None:
    # Take the write lock at BEGIN: in WAL mode a deferred transaction that reads and then writes
    # fails at once (SQLITE_BUSY_SNAPSHOT) when another writer committed meanwhile; busy_timeout cannot
    # help it. IMMEDIATE makes writers queue instead. Transactions here are one short user event.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for `url`: SQLite with WAL, foreign keys and a busy timeout; PostgreSQL with a pinged pool."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise InputError("in-memory SQLite is not supported (each connection would see its own empty "
                             "database); use a file: sqlite:///path/to/ttpo.sqlite3")
        engine = create_engine(
            parsed, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        event.listen(engine, "connect", _set_sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the installed driver
        return create_engine(parsed, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10,
                             pool_recycle=1800)
    raise InputError(f"unsupported database {backend!r}: use sqlite:///FILE or postgresql://USER@HOST/DB")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Session factory; callers own the transaction: `with factory.begin() as s: ...` per user event."""
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(engine_or_url: Engine | str) -> str:
    """Apply every Alembic migration not yet applied; returns the head revision now in the database."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()
    return revision or ""


@dataclass(frozen=True)
class Database:
    """The long-lived database handles of one process."""

    engine: Engine
    sessions: sessionmaker[Session]


def open_database(url: str | None = None, data_dir: str | os.PathLike[str] | None = None,
                  *, migrate: bool = True) -> Database:
    """Resolve the URL, build the engine, bring the schema to head (unless `migrate=False`)."""
    engine = make_engine(resolve_db_url(url, data_dir))
    if migrate:
        upgrade_to_head(engine)
    return Database(engine=engine, sessions=make_session_factory(engine))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m feedback.db", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["upgrade"], help="upgrade: apply migrations up to head")
    parser.add_argument("--db", default=None, help=f"database URL (default: ${DB_URL_ENV} or DATA_DIR)")
    parser.add_argument("--data-dir", default="data", help="where the default SQLite file lives")
    args = parser.parse_args(argv)
    url = resolve_db_url(args.db, args.data_dir)
    print(f"{make_url(url).render_as_string(hide_password=True)} at revision {upgrade_to_head(url)}")


if __name__ == "__main__":
    main()
