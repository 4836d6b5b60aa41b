"""Engines and session factories for the preference database (SQLite file or PostgreSQL), and migrations.

The URL comes from the caller (`--db` on the command line), else the environment variable
`TTPO_DB_URL`, else a SQLite file in the data directory. Schema changes go through Alembic
(`feedback/record/migrations`); `upgrade_to_head` is applied when the app starts.

    python -m feedback.record.db upgrade --db sqlite:///data/ttpo.sqlite3
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from feedback.record.errors import InputError

DB_URL_ENV = "TTPO_DB_URL"
SQLITE_FILENAME = "ttpo.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
T = TypeVar("T")
MIGRATION_LOCK_KEY = 0x7470_6F6C  # PostgreSQL advisory lock held while migrating ("tpol")


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
    # emit BEGIN ourselves (see _SQLiteWriters).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


READ_ONLY_OPTION = "ttpo_read_only"
_HOLDS_WRITE_LOCK = "ttpo_holds_write_lock"


class _SQLiteWriters:
    """Begins SQLite transactions; writers of one process queue on a lock instead of SQLite's busy handler.

    Take the write lock at BEGIN: in WAL mode a deferred transaction that reads and then writes fails at
    once (SQLITE_BUSY_SNAPSHOT) when another writer committed meanwhile, and busy_timeout cannot help it;
    BEGIN IMMEDIATE makes writers wait instead. Within a process they wait on `lock` (woken at once when
    the writer before them ends) rather than in SQLite's busy handler, which sleeps in growing steps up
    to 100 ms and made tail latencies of concurrent votes seconds long. Writers in other processes still
    meet the busy timeout. Read-only transactions (`Database.reads`) begin DEFERRED and take no lock:
    WAL readers never wait for writers.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def begin(self, connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION, False):
            connection.exec_driver_sql("BEGIN")
            return
        self.lock.acquire()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        connection.info[_HOLDS_WRITE_LOCK] = connection.info.get(_HOLDS_WRITE_LOCK, 0) + 1

    def end(self, connection: Any) -> None:
        self._release(connection.info)

    def checkin(self, _dbapi_connection: Any, record: Any) -> None:
        self._release(record.info)  # a connection returned to the pool holds no lock, whatever happened

    def _release(self, info: dict) -> None:
        for _ in range(info.pop(_HOLDS_WRITE_LOCK, 0)):
            try:
                self.lock.release()
            except RuntimeError:  # released from another thread (a connection collected elsewhere): not ours
                break


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
        writers = _SQLiteWriters()
        event.listen(engine, "connect", _set_sqlite_pragmas)
        event.listen(engine, "begin", writers.begin)
        event.listen(engine, "commit", writers.end)
        event.listen(engine, "rollback", writers.end)
        event.listen(engine.pool, "checkin", writers.checkin)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the installed driver
        return create_engine(parsed, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10,
                             pool_recycle=1800)
    raise InputError(f"unsupported database {backend!r}: use sqlite:///FILE or postgresql://USER@HOST/DB")


TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "08000", "08003", "08006"})
"""PostgreSQL: serialization failure, deadlock, server shutdown of the connection, connection failures."""


def is_transient(exc: BaseException) -> bool:
    """True for database errors worth one more try: a dropped connection, a deadlock or serialization
    failure on PostgreSQL, a lock timeout (`database is locked`) on SQLite."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in TRANSIENT_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def retry_transient(work: Callable[[], T], attempts: int = 3, backoff_s: float = 0.05) -> T:
    """Run `work` (which opens and commits its own transaction) again after a transient database error.

    Only for work that is safe to repeat: a whole transaction that was rolled back, or one guarded by an
    idempotency key. Other errors, and the last transient one, propagate.
    """
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DBAPIError as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


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
            if connection.dialect.name == "postgresql":
                # Replicas starting together: one migrates, the others wait here and then find head.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            command.upgrade(_alembic_config(connection), "head")
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()
    return revision or ""


@dataclass(frozen=True)
class Database:
    """The long-lived database handles of one process.

    `sessions` for transactions that may write; `reads` for transactions that only read (on SQLite they
    do not take the write lock, so checks of tokens and ownership never queue behind votes).
    """

    engine: Engine
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]


def open_database(url: str | None = None, data_dir: str | os.PathLike[str] | None = None,
                  *, migrate: bool = True) -> Database:
    """Resolve the URL, build the engine, bring the schema to head (unless `migrate=False`)."""
    engine = make_engine(resolve_db_url(url, data_dir))
    if migrate:
        upgrade_to_head(engine)
    return Database(engine=engine, sessions=make_session_factory(engine),
                    reads=make_session_factory(engine.execution_options(**{READ_ONLY_OPTION: True})))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m feedback.record.db", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["upgrade"], help="upgrade: apply migrations up to head")
    parser.add_argument("--db", default=None, help=f"database URL (default: ${DB_URL_ENV} or DATA_DIR)")
    parser.add_argument("--data-dir", default="data", help="where the default SQLite file lives")
    args = parser.parse_args(argv)
    url = resolve_db_url(args.db, args.data_dir)
    print(f"{make_url(url).render_as_string(hide_password=True)} at revision {upgrade_to_head(url)}")


if __name__ == "__main__":
    main()
