"""The reconciler: the jobs table is the truth, so it repairs the queue from it.

Every `reconcile_interval_s` (in the api process) it:
- cancels jobs whose resumable upload was abandoned (not committed within upload_expiry_s);
- finds active jobs whose lease went stale (the worker died: kill -9, OOM, a lost host) and either
  re-enqueues them, or fails them once `max_attempts` attempts died, or cancels them if asked;
- finds active jobs that no worker holds and no broker message carries (the broker lost its data, or a
  worker died between two stages) and enqueues them again.
Duplicates are harmless: a task that finds a live lease, or a stage already done, exits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from service import crud
from service.broker import BrokerView
from service.db import Database
from service.joblog import append_log
from service.models import Job
from service.settings import Settings
from service.storage import Storage

log = logging.getLogger("nerfserve.reconciler")


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def reconcile_once(db: Database, storage: Storage, settings: Settings, broker: BrokerView,
                   enqueue: Callable[[str, str], None]) -> ReconcileReport:
    rep = ReconcileReport()
    rep.cancelled += crud.expire_uploads(db, settings.upload_expiry_s)
    for job in crud.stale_leases(db, settings.lease_timeout_s):
        _recover_stale(db, storage, settings, job, enqueue, rep)
    waiting = crud.waiting_jobs(db, crud.now() - settings.requeue_grace_s)
    if waiting:
        held = broker.held_job_ids([j.id for j in waiting])
        if held is not None:
            for job in waiting:
                if job.id not in held:
                    _requeue(db, storage, job, enqueue, rep, "no broker message holds it")
    return rep


def _recover_stale(db: Database, storage: Storage, settings: Settings, job: Job,
                   enqueue: Callable[[str, str], None], rep: ReconcileReport) -> None:
    # Release the dead worker's lease only if it is still the same one we saw (no race with a renewal).
    if not crud.update_job(db, job.id, Job.lease_owner == job.lease_owner, Job.heartbeat_at == job.heartbeat_at,
                            lease_owner=None, heartbeat_at=None):
        return
    logp = storage.log_path(job.id)
    append_log(logp, f"[{job.stage}] worker {job.lease_owner} went silent (lease stale)")
    if job.cancel_requested:
        if crud.end_job(db, job.id, "cancelled", "cancelled", "cancelled by the user"):
            rep.cancelled.append(job.id)
    elif job.attempts >= settings.max_attempts:
        if fail_worker_lost(db, storage, job.id, job.stage or "?", job.attempts):
            rep.failed.append(job.id)
    else:
        _requeue(db, storage, job, enqueue, rep, "its worker died")


def _requeue(db: Database, storage: Storage, job: Job, enqueue: Callable[[str, str], None],
             rep: ReconcileReport, why: str) -> None:
    if job.stage is None:
        return
    try:
        enqueue(job.id, job.stage)
    except Exception as e:
        log.warning("re-enqueue of %s failed (will retry): %s", job.id, e)
        return
    crud.mark_enqueued(db, job.id)
    append_log(storage.log_path(job.id), f"[{job.stage}] re-enqueued: {why}")
    log.info("re-enqueued job %s at stage %s: %s", job.id, job.stage, why)
    rep.requeued.append(job.id)


class ReconcilerThread:
    """Runs reconcile_once every interval in a daemon thread until stopped."""

    def __init__(self, interval_s: float, fn: Callable[[], ReconcileReport]) -> None:
        self.interval_s, self.fn = interval_s, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception as e:  # the broker or database is down: try again next time
                log.warning("reconcile failed: %s", e)


def fail_worker_lost(db: Database, storage: Storage, job_id: str, stage: str, attempts: int) -> bool:
    """Fail a job whose worker died on every attempt (e.g. killed for running out of memory)."""
    msg = (f"the worker running stage '{stage}' died without reporting on {attempts} attempts (killed, "
           "e.g. out of memory). Try smaller images (max_image_size), the 'fast' preset, or fewer images.")
    if crud.end_job(db, job_id, "failed", "worker_lost", msg):
        append_log(storage.log_path(job_id), f"[{stage}] failed: worker_lost: {msg}")
        return True
    return False
