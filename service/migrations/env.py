"""Alembic environment. Migrates the connection that service.db hands over in `config.attributes["connection"]`
(inside its transaction and lock); without one (alembic run by hand), the configured URL or the service's."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from service import models  # noqa: F401  (registers the tables on Base.metadata)
from service.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from service.settings import Settings

    return Settings().db_url


def _run(connection: Connection) -> None:
    # Batch mode: ALTERs on SQLite become copy-and-rename; on PostgreSQL plain ALTERs.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    _run(conn)
else:
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()
