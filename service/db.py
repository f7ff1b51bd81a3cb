"""Database engine, sessions and schema migrations (SQLAlchemy 2, Alembic). SQLite by default (WAL, busy
timeout); PostgreSQL by URL.

The schema is the Alembic history in service/migrations; `Database.upgrade()` applies it at every start.
A new migration, from the models: `alembic.command.revision(alembic_config(url), autogenerate=True,
rev_id="0002", message="...")`, then review it.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("nerfserve.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The first revision and the tables it makes: what create_all made before migrations existed.
INITIAL_REVISION = "0001"
INITIAL_TABLES = frozenset({"api_keys", "jobs", "uploads", "renders"})
_PG_MIGRATION_LOCK = 0x6E657266  # pg_advisory_xact_lock key that serialises migrations ("nerf")
_UPGRADE_LOCK = threading.Lock()  # Alembic's context is process-global: one migration per process at a time


class Base(DeclarativeBase):
    pass


def postgres_driver_url(url: str) -> str:
    """postgres://, postgresql:// -> with the installed driver (SQLAlchemy 2.1 defaults to psycopg 3;
    the `postgres` extra installs psycopg2)."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            rest = url[len(scheme):]
            driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
            return f"postgresql+{driver}://{rest}"
    return url


def make_engine(url: str) -> Engine:
    """An engine for `url`; for SQLite the folder is created and WAL + a busy timeout are set."""
    url = postgres_driver_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """The Alembic configuration, built in code (no alembic.ini): the package's migrations, and the connection to
    migrate (or a URL, when env.py should connect by itself)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _is_memory_sqlite(url: str) -> bool:
    return url.startswith("sqlite") and url.split("///", 1)[-1] in ("", ":memory:")


def _migration_engine(url: str) -> Engine:
    """An engine whose transactions lock the database for writing from their start: on SQLite, pysqlite's own
    transaction handling is turned off and every transaction is BEGIN IMMEDIATE, so DDL is transactional and a
    second process waits (busy timeout) instead of racing. PostgreSQL locks with an advisory lock instead."""
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _manual_transactions(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _migrate(conn: Connection) -> None:
    """In one locked transaction: adopt a database made by create_all (stamp it at the initial revision, its data
    untouched), then upgrade to head. The lock makes a concurrent start wait and then find nothing to do."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    tables = set(inspect(conn).get_table_names())
    current = MigrationContext.configure(conn).get_current_revision()
    cfg = alembic_config(connection=conn)
    if current is None and tables & INITIAL_TABLES:
        missing = INITIAL_TABLES - tables
        if missing:
            raise RuntimeError(f"database has some of the service's tables but not {sorted(missing)} and no "
                               "alembic_version: not a schema this version knows how to adopt")
        log.info("adopting a database made without migrations: stamping it at %s", INITIAL_REVISION)
        command.stamp(cfg, INITIAL_REVISION)
    command.upgrade(cfg, "head")


class Database:
    """An engine plus a session factory; `upgrade` brings the schema to the newest migration."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self, attempts: int = 10) -> None:
        """`alembic upgrade head`, adopting a database made by create_all. Safe to run at every start, by several
        processes at once: the migration runs under a write lock, and a database error is retried (re-checked)."""
        engine = self.engine if _is_memory_sqlite(self.url) else _migration_engine(self.url)
        try:
            for attempt in range(1, attempts + 1):
                try:
                    with _UPGRADE_LOCK, engine.begin() as conn:
                        _migrate(conn)
                    return
                except DBAPIError as e:
                    if attempt == attempts:
                        raise
                    log.warning("schema upgrade failed (%s); retrying", e.orig)
                    time.sleep(min(2.0, 0.2 * attempt))   # e.g. SQLite's WAL switch under a concurrent start
        finally:
            if engine is not self.engine:
                engine.dispose()

    def create_all(self) -> None:
        """The tables straight from the models, without migrations (the schema before migrations; tests)."""
        from service import models  # noqa: F401  (registers the tables)

        Base.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
