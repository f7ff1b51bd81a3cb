"""The job store's leases, attempts and progress (SQLite and PostgreSQL), the reconciler, and the stage
runner in-process (no Celery): the rules that keep one live worker per job."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from core.pipeline import load_pipeline
from service import crud
from service.broker import BrokerView
from service.db import Database
from service.keys import create_key
from service.queues import enqueue_stage, make_celery
from service.reconciler import reconcile_once
from service.settings import Settings
from service.storage import Storage
from tests.service.helpers import FAKE, REPO, png_bytes
from workers.runner import WorkerContext, run_stage_task

PG_URL = os.environ.get("NERFSERVE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_db():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(PG_URL, connect_timeout=2)
    except Exception as e:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {e}")
    admin.autocommit = True
    name = f"nerfserve_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    return admin, name, url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path: Path):
    if request.param == "sqlite":
        d = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
        d.create_all()
        yield d
        d.dispose()
        return
    admin, name, url = _postgres_db()
    d = Database(url)
    d.create_all()
    yield d
    d.dispose()
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def new_job(db: Database) -> str:
    key, _ = create_key(db, f"k-{uuid.uuid4().hex[:6]}")
    return crud.create_job(db, key.id, {"steps": 10}).id


def make_stale(db: Database, job_id: str, seconds: float = 3600) -> None:
    crud.update_job(db, job_id, heartbeat_at=time.time() - seconds)


def test_lease_is_exclusive_until_it_goes_stale(db: Database):
    jid = new_job(db)
    a = crud.take_lease(db, jid, "ingest", "worker-a", lease_timeout_s=60, max_attempts=3)
    assert a.ok and a.job.state == "estimating_poses" and a.job.attempts == 1
    b = crud.take_lease(db, jid, "ingest", "worker-b", lease_timeout_s=60, max_attempts=3)
    assert not b.ok and b.why == "leased by worker-a"
    assert crud.take_lease(db, jid, "train", "worker-b", 60, 3).why == "at stage ingest, not train"
    assert crud.renew_lease(db, jid, "worker-a") == (True, False)
    make_stale(db, jid)
    b = crud.take_lease(db, jid, "ingest", "worker-b", 60, 3)
    assert b.ok and b.job.attempts == 2
    # The old holder has lost every right to write.
    assert crud.renew_lease(db, jid, "worker-a")[0] is False
    assert crud.report_progress(db, jid, "worker-a", "ingest", 0.5, None, {}) is False
    assert crud.finish_stage(db, jid, "worker-a", "ingest", {}) is None
    assert crud.finish_stage(db, jid, "worker-b", "ingest", {"images": 3}) == "poses"
    job = crud.get_job(db, jid)
    assert (job.state, job.stage, job.attempts, job.lease_owner) == ("estimating_poses", "poses", 0, None)
    assert job.metrics["ingest.images"] == 3 and "ingest" in job.stage_durations


def test_attempts_are_capped(db: Database):
    jid = new_job(db)
    for i in range(3):
        assert crud.take_lease(db, jid, "ingest", f"w{i}", 60, 3).ok
        make_stale(db, jid)
    r = crud.take_lease(db, jid, "ingest", "w4", 60, 3)
    assert not r.ok and r.why == "attempts exhausted"


def test_progress_is_monotonic_and_banded(db: Database):
    jid = new_job(db)
    crud.finish_stage(db, jid, "nobody", "ingest", {})  # not leased: no effect
    assert crud.get_job(db, jid).stage == "ingest"
    for stage in ("ingest", "poses"):
        assert crud.take_lease(db, jid, stage, "w", 60, 3).ok
        crud.finish_stage(db, jid, "w", stage, {})
    assert crud.take_lease(db, jid, "train", "w", 60, 3).ok
    assert crud.report_progress(db, jid, "w", "train", 0.5, 12.0, {"train.step": 5})
    j = crud.get_job(db, jid)
    assert j.progress == pytest.approx(25 + 65 * 0.5) and j.eta_s == 12.0 and j.metrics["train.step"] == 5
    crud.report_progress(db, jid, "w", "train", 0.2, None, {})
    assert crud.get_job(db, jid).progress == pytest.approx(57.5)  # never goes back
    crud.finish_stage(db, jid, "w", "train", {})
    assert crud.take_lease(db, jid, "export", "w", 60, 3).ok
    assert crud.finish_stage(db, jid, "w", "export", {}) == "succeeded"
    j = crud.get_job(db, jid)
    assert (j.state, j.progress, j.done_stages) == ("succeeded", 100.0, ["ingest", "poses", "train", "export"])


def test_cancel_is_immediate_without_a_live_worker_else_flagged(db: Database):
    jid = new_job(db)
    assert crud.request_cancel(db, jid, lease_timeout_s=60) == "cancelled"
    jid = new_job(db)
    assert crud.take_lease(db, jid, "ingest", "w", 60, 3).ok
    assert crud.request_cancel(db, jid, lease_timeout_s=60) == "estimating_poses"
    assert crud.renew_lease(db, jid, "w") == (True, True)
    make_stale(db, jid)
    assert crud.request_cancel(db, jid, lease_timeout_s=60) == "cancelled"  # its worker is dead


def _settings(tmp_path: Path, redis_url: str, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", redis_url=redis_url, pipeline=FAKE, lease_timeout_s=60,
                    requeue_grace_s=0, **kw)


def test_reconciler_requeues_dead_workers_jobs_and_lost_messages_and_gives_up_after_3(tmp_path, redis_url):
    s = _settings(tmp_path, redis_url)
    db = Database(s.db_url)
    db.create_all()
    storage = Storage(s.data_root)
    celery = make_celery(s)
    published: list[tuple[str, str]] = []

    def enqueue(job_id: str, stage: str) -> None:
        published.append((job_id, stage))
        enqueue_stage(celery, job_id, stage)

    held, lost, dead, doomed = (new_job(db) for _ in range(4))
    enqueue_stage(celery, held, "ingest")  # a real message in Redis carries `held`
    for jid in (dead, doomed):
        assert crud.take_lease(db, jid, "ingest", "w", 60, 3).ok
        make_stale(db, jid)
    crud.update_job(db, doomed, attempts=3)
    rep = reconcile_once(db, storage, s, BrokerView(s), enqueue)
    assert sorted(rep.requeued) == sorted([lost, dead]) and rep.failed == [doomed]
    assert held not in [j for j, _ in published]
    assert crud.get_job(db, doomed).error_code == "worker_lost"
    assert crud.get_job(db, dead).lease_owner is None
    # Now every active job has a message: nothing more to do.
    assert reconcile_once(db, storage, s, BrokerView(s), enqueue).requeued == []
    db.dispose()


def _context(tmp_path: Path, redis_url: str, **kw) -> WorkerContext:
    s = _settings(tmp_path, redis_url, heartbeat_s=0.5, progress_interval_s=0.1, **kw)
    db = Database(s.db_url)
    db.create_all()
    storage = Storage(s.data_root)
    storage.ensure()
    return WorkerContext(settings=s, db=db, storage=storage, pipeline=load_pipeline(FAKE),
                         enqueue_stage=lambda j, st: None, enqueue_webhook=lambda j: None)


def _job_with_inputs(ctx: WorkerContext, options: dict) -> str:
    key, _ = create_key(ctx.db, f"k-{uuid.uuid4().hex[:6]}")
    jid = crud.create_job(ctx.db, key.id, options).id
    inputs = ctx.storage.job_dirs(jid).inputs
    inputs.mkdir(parents=True)
    for i in range(3):
        (inputs / f"{i}.png").write_bytes(png_bytes(i))
    return jid


def test_runner_runs_stages_in_order_and_skips_what_is_done(tmp_path, redis_url):
    ctx = _context(tmp_path, redis_url)
    jid = _job_with_inputs(ctx, {"steps": 5})
    assert run_stage_task(ctx, jid, "poses") == "skipped: at stage ingest, not poses"
    for stage, nxt in (("ingest", "poses"), ("poses", "train"), ("train", "export"), ("export", "succeeded")):
        assert run_stage_task(ctx, jid, stage) == f"done -> {nxt}"
    assert run_stage_task(ctx, jid, "export") == "skipped: already succeeded"
    calls = (ctx.storage.job_dirs(jid).root / "fake_calls.txt").read_text().split()
    assert [c for c in calls if c in ("ingest", "poses", "train", "export")] == ["ingest", "poses", "train", "export"]


def test_runner_stops_training_within_seconds_on_cancel(tmp_path, redis_url, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    ctx = _context(tmp_path, redis_url)
    jid = _job_with_inputs(ctx, {"steps": 10_000})
    for stage in ("ingest", "poses"):
        run_stage_task(ctx, jid, stage)
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(run_stage_task(ctx, jid, "train")))
    t.start()
    deadline = time.time() + 20
    while crud.get_job(ctx.db, jid).metrics.get("train.step", 0) < 3:
        assert time.time() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    crud.request_cancel(ctx.db, jid, ctx.settings.lease_timeout_s)
    t.join(10)
    assert out == ["cancelled"] and time.monotonic() - t0 < 3
    job = crud.get_job(ctx.db, jid)
    assert job.state == "cancelled" and job.lease_owner is None
    assert 3 <= job.metrics["train.step"] < 10_000


def test_stage_failure_is_reported_with_its_message(tmp_path, redis_url, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_STAGE", "poses")
    ctx = _context(tmp_path, redis_url)
    jid = _job_with_inputs(ctx, {})
    run_stage_task(ctx, jid, "ingest")
    assert run_stage_task(ctx, jid, "poses") == "failed"
    job = crud.get_job(ctx.db, jid)
    assert job.state == "failed" and job.error_code == "fake_refused" and "refuses" in job.error_message


def test_worker_parent_process_does_not_import_torch():
    """CUDA must not be initialised before the fork: the worker app and its tasks import no torch."""
    code = ("import sys, workers.celery_app, workers.tasks, workers.runner, core.pipeline;"
            "assert 'torch' not in sys.modules, 'torch imported in the worker parent'")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
