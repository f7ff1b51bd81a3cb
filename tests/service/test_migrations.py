"""Schema migrations: the Alembic history makes exactly the models' schema (SQLite and PostgreSQL), a database
made by the pre-migration create_all is adopted with its data, upgrading is idempotent and safe to run from
several processes at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect, text

from service import crud, models  # noqa: F401  (models registers the tables)
from service.db import Base, Database, alembic_config
from service.keys import create_key

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("NERFSERVE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def make_url(tmp_path: Path) -> Iterator:
    """make_url(kind) -> the URL of a new, empty database ("sqlite" or "postgresql"); dropped afterwards."""
    made: list[str] = []
    admin = None

    def make(kind: str) -> str:
        nonlocal admin
        name = f"nerfserve_test_{uuid.uuid4().hex[:10]}"
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / (name + '.db')}"
        if admin is None:
            psycopg2 = pytest.importorskip("psycopg2")
            try:
                admin = psycopg2.connect(PG_URL, connect_timeout=2)
            except Exception as e:
                pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set NERFSERVE_TEST_POSTGRES): {e}")
            admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        made.append(name)
        return PG_URL.rsplit("/", 1)[0] + "/" + name

    yield make
    if admin is not None:
        with admin.cursor() as cur:
            for name in made:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def version(db: Database) -> list[str]:
    with db.engine.connect() as c:
        return [r[0] for r in c.execute(text("SELECT version_num FROM alembic_version"))]


def schema(db: Database) -> dict:
    """Tables -> columns (type, nullable), primary key, indexes, unique constraints and foreign keys, as reflected."""
    insp = inspect(db.engine)
    out = {}
    for t in sorted(set(insp.get_table_names()) - {"alembic_version"}):
        out[t] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                          for f in insp.get_foreign_keys(t)),
        }
    return out


def model_diff(db: Database, metadata: MetaData = Base.metadata) -> list:
    with db.engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrations_make_exactly_the_models_schema(make_url, kind: str):
    migrated, reference = Database(make_url(kind)), Database(make_url(kind))
    try:
        migrated.upgrade()
        reference.create_all()
        assert version(migrated) == [head()]
        # Same tables and columns as the models (a model change without a migration fails here) ...
        got = schema(migrated)
        assert set(got) == set(Base.metadata.tables)
        for name, table in Base.metadata.tables.items():
            assert [c[0] for c in got[name]["columns"]] == [c.name for c in table.columns], name
            assert {c[0]: c[2] for c in got[name]["columns"]} == {c.name: c.nullable for c in table.columns}, name
        # ... the same types, keys and indexes as create_all makes on this dialect, and no autogenerate diff.
        assert got == schema(reference)
        assert model_diff(migrated) == []
    finally:
        migrated.dispose()
        reference.dispose()


def test_model_diff_sees_a_column_without_migration(make_url):
    """The check above is not vacuous: a column added to the models alone is reported."""
    db = Database(make_url("sqlite"))
    db.upgrade()
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["jobs"].append_column(Column("priority", Integer, nullable=True))
    assert [d[0] for d in model_diff(db, changed)] == ["add_column"]
    db.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_database_made_by_create_all_is_adopted_with_its_jobs(make_url, kind: str):
    url = make_url(kind)
    old = Database(url)
    old.create_all()  # what every start did before migrations
    key, _ = create_key(old, "old")
    job = crud.create_job(old, key.id, {"steps": 7}, input_files=3)
    old.dispose()

    db = Database(url)
    db.upgrade()
    assert version(db) == [head()]
    kept = crud.get_job(db, job.id)
    assert kept is not None and kept.owner == key.id and kept.options == {"steps": 7} and kept.input_files == 3
    assert model_diff(db) == []
    db.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrading_twice_is_a_no_op(make_url, kind: str):
    db = Database(make_url(kind))
    db.upgrade()
    key, _ = create_key(db, "k")
    job = crud.create_job(db, key.id, {})
    before = schema(db)
    db.upgrade()
    assert version(db) == [head()] and schema(db) == before
    assert crud.get_job(db, job.id) is not None
    db.dispose()


@pytest.mark.parametrize("old", [False, True], ids=["fresh", "made_by_create_all"])
def test_concurrent_upgrades_of_one_sqlite_file_all_succeed(tmp_path: Path, old: bool):
    """API and workers starting at once on one SQLite file: each upgrade waits for the others, none fails."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    if old:
        d = Database(url)
        d.create_all()
        d.dispose()
    go = tmp_path / "go"
    # Each process imports, says so, then waits for `go`: the upgrades themselves start together.
    code = ("import os, sys, time\nfrom service.db import Database\ndb = Database(sys.argv[1])\n"
            "open(sys.argv[3], 'w').close()\nwhile not os.path.exists(sys.argv[2]):\n    time.sleep(0.002)\n"
            "db.upgrade(attempts=1)\n")
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", code, url, str(go), str(r)], cwd=REPO, stderr=subprocess.PIPE,
                              text=True) for r in ready]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], [err[-2000:] for _, err in results]
    db = Database(url)
    assert version(db) == [head()] and model_diff(db) == []
    db.dispose()
