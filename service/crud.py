"""The job store: every change of a job's state is a (conditional) UPDATE of its row.

The row holds the truth and the lock. A worker takes a *lease* on a job (owner id + heartbeat time) with
one atomic conditional UPDATE, renews it while it works, and every write it makes afterwards is
conditional on still holding it, so no job ever has two live workers.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update

from core.pipeline import STAGE_BAND, STAGE_STATE, STAGES
from service.db import Database
from service.models import ACTIVE_STATES, TERMINAL_STATES, Job


def now() -> float:
    return time.time()


def new_job_id() -> str:
    """uuid4: 122 random bits, unguessable."""
    return str(uuid.uuid4())


def create_job(db: Database, owner: str, options: dict, state: str = "queued", input_bytes: int = 0,
               input_files: int = 0, job_id: str | None = None) -> Job:
    t = now()
    job = Job(id=job_id or new_job_id(), owner=owner, created_at=t, updated_at=t, state=state,
              stage=STAGES[0], stage_progress=0.0, progress=0.0, options=options, metrics={}, attempts=0,
              done_stages=[], stage_durations={}, cancel_requested=False, input_bytes=input_bytes,
              input_files=input_files)
    with db.session() as s:
        s.add(job)
    return job


def get_job(db: Database, job_id: str, owner: str | None = None) -> Job | None:
    """The job, or None when it does not exist or belongs to another key (callers answer 404 for both)."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job


def list_jobs(db: Database, owner: str, limit: int, offset: int, state: str | None = None
              ) -> tuple[list[Job], int]:
    """(page of the owner's jobs, newest first; total count)."""
    with db.session() as s:
        q = select(Job).where(Job.owner == owner)
        if state:
            q = q.where(Job.state == state)
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
        return list(rows), int(total)


def count_in_flight(db: Database, owner: str) -> int:
    with db.session() as s:
        q = select(func.count()).select_from(Job).where(
            Job.owner == owner, Job.state.in_((*ACTIVE_STATES, "uploading")))
        return int(s.scalar(q) or 0)


def update_job(db: Database, job_id: str, *conditions, **values) -> bool:
    """UPDATE jobs SET values WHERE id = job_id AND conditions; True if a row changed."""
    values.setdefault("updated_at", now())
    with db.session() as s:
        res = s.execute(update(Job).where(Job.id == job_id, *conditions).values(**values))
        return res.rowcount == 1


def mark_enqueued(db: Database, job_id: str) -> None:
    update_job(db, job_id, enqueued_at=now())


# ---- leases ----------------------------------------------------------------------------------------


@dataclass
class LeaseResult:
    """ok: the caller holds the job. Otherwise `why` says why not (the task then exits without work)."""

    ok: bool
    why: str = ""
    job: Job | None = None


def take_lease(db: Database, job_id: str, stage: str, worker: str, lease_timeout_s: float,
               max_attempts: int) -> LeaseResult:
    """Atomically take the job for `stage` if nobody live holds it. Counts an attempt."""
    t = now()
    live = (Job.lease_owner.is_(None)) | (Job.heartbeat_at < t - lease_timeout_s)
    ok = update_job(db, job_id, Job.stage == stage, Job.state.in_(ACTIVE_STATES), Job.cancel_requested.is_(False),
                    Job.attempts < max_attempts, live,
                    lease_owner=worker, heartbeat_at=t, attempts=Job.attempts + 1, state=STAGE_STATE[stage],
                    stage_started_at=t, error_code=None, error_message=None)
    job = get_job(db, job_id)
    if ok:
        return LeaseResult(True, job=job)
    if job is None:
        return LeaseResult(False, "deleted")
    if job.state in TERMINAL_STATES:
        return LeaseResult(False, f"already {job.state}", job)
    if job.stage != stage:
        return LeaseResult(False, f"at stage {job.stage}, not {stage}", job)
    if job.cancel_requested:
        return LeaseResult(False, "cancel requested", job)
    if job.attempts >= max_attempts:
        return LeaseResult(False, "attempts exhausted", job)
    return LeaseResult(False, f"leased by {job.lease_owner}", job)


def renew_lease(db: Database, job_id: str, worker: str) -> tuple[bool, bool]:
    """Heartbeat. Returns (still held, cancel requested)."""
    held = update_job(db, job_id, Job.lease_owner == worker, heartbeat_at=now(), updated_at=Job.updated_at)
    job = get_job(db, job_id)
    return held, bool(job is not None and job.cancel_requested)


def report_progress(db: Database, job_id: str, worker: str, stage: str, fraction: float,
                    eta_s: float | None, metrics: dict | None) -> bool:
    """Progress of the leased stage; overall progress never decreases. False if the lease is lost."""
    lo, hi = STAGE_BAND[stage]
    fraction = min(max(float(fraction), 0.0), 1.0)
    overall = lo + (hi - lo) * fraction
    job = get_job(db, job_id)
    if job is None:
        return False
    # Only the lease holder writes progress, so read-then-write cannot race another writer.
    values: dict = {"stage_progress": fraction, "progress": max(job.progress, overall), "eta_s": eta_s,
                    "heartbeat_at": now()}
    if metrics:
        values["metrics"] = {**(job.metrics or {}), **metrics}
    return update_job(db, job_id, Job.lease_owner == worker, **values)


def finish_stage(db: Database, job_id: str, worker: str, stage: str, metrics: dict) -> str | None:
    """Record a completed stage and move the row to the next one (lease released). Returns it or None."""
    job = get_job(db, job_id)
    if job is None or job.lease_owner != worker:
        return None
    i = STAGES.index(stage)
    nxt = STAGES[i + 1] if i + 1 < len(STAGES) else None
    durations = {**(job.stage_durations or {}), stage: now() - (job.stage_started_at or now())}
    done = [*[s for s in (job.done_stages or []) if s != stage], stage]
    values: dict = {"done_stages": done, "stage_durations": durations, "lease_owner": None, "heartbeat_at": None,
                    "attempts": 0, "metrics": {**(job.metrics or {}), **{f"{stage}.{k}": v for k, v in
                                                                          metrics.items()}},
                    "progress": max(job.progress, STAGE_BAND[stage][1])}
    if nxt is None:
        values.update(state="succeeded", stage=None, stage_progress=1.0, progress=100.0, eta_s=0.0)
    else:
        values.update(state=STAGE_STATE[nxt], stage=nxt, stage_progress=0.0, eta_s=None)
    ok = update_job(db, job_id, Job.lease_owner == worker, **values)
    return (nxt or "succeeded") if ok else None


def end_job(db: Database, job_id: str, state: str, code: str | None = None, message: str | None = None,
            worker: str | None = None) -> bool:
    """Move a job to a terminal state (failed / cancelled), releasing any lease.

    worker: only if this worker still holds the lease (None: unconditionally, for non-terminal jobs).
    """
    assert state in TERMINAL_STATES
    cond = [Job.state.not_in(TERMINAL_STATES)]
    if worker is not None:
        cond.append(Job.lease_owner == worker)
    return update_job(db, job_id, *cond, state=state, error_code=code, error_message=message, lease_owner=None,
                      heartbeat_at=None, eta_s=None)


def release_lease(db: Database, job_id: str, worker: str) -> bool:
    return update_job(db, job_id, Job.lease_owner == worker, lease_owner=None, heartbeat_at=None)


def request_cancel(db: Database, job_id: str, lease_timeout_s: float) -> str:
    """Cancel: at once when no live worker holds the job, else flag it for the worker. Returns the state."""
    t = now()
    not_live = (Job.lease_owner.is_(None)) | (Job.heartbeat_at < t - lease_timeout_s)
    if update_job(db, job_id, Job.state.not_in(TERMINAL_STATES), not_live, state="cancelled",
                  cancel_requested=True, lease_owner=None, heartbeat_at=None, eta_s=None,
                  error_code="cancelled", error_message="cancelled by the user"):
        return "cancelled"
    update_job(db, job_id, Job.state.not_in(TERMINAL_STATES), cancel_requested=True)
    job = get_job(db, job_id)
    return job.state if job else "deleted"


def restart_job(db: Database, job_id: str, options: dict, done_stages: list[str]) -> Job | None:
    """Put a finished job back in the queue at its first stage not done. None if it is not finished."""
    nxt = next((s for s in STAGES if s not in done_stages), None)
    if nxt is None:
        return None
    ok = update_job(db, job_id, Job.state.in_(TERMINAL_STATES), state=STAGE_STATE[nxt] if done_stages else "queued",
                    stage=nxt, stage_progress=0.0, progress=STAGE_BAND[nxt][0], attempts=0, options=options,
                    done_stages=done_stages, cancel_requested=False, error_code=None, error_message=None,
                    lease_owner=None, heartbeat_at=None, eta_s=None, webhook_status=None)
    return get_job(db, job_id) if ok else None


def delete_job(db: Database, job_id: str) -> None:
    from service.models import Render, Upload

    with db.session() as s:
        for model in (Render, Upload):
            for row in s.scalars(select(model).where(model.job_id == job_id)):
                s.delete(row)
        job = s.get(Job, job_id)
        if job is not None:
            s.delete(job)


# ---- what the reconciler looks at --------------------------------------------------------------------


def stale_leases(db: Database, lease_timeout_s: float) -> list[Job]:
    """Active jobs whose worker stopped heartbeating."""
    with db.session() as s:
        q = select(Job).where(Job.state.in_(ACTIVE_STATES), Job.lease_owner.is_not(None),
                              Job.heartbeat_at < now() - lease_timeout_s)
        return list(s.scalars(q))


def waiting_jobs(db: Database, enqueued_before: float) -> list[Job]:
    """Active jobs no worker holds, last enqueued (or, if never, last changed) before the given time."""
    with db.session() as s:
        q = select(Job).where(Job.state.in_(ACTIVE_STATES), Job.lease_owner.is_(None),
                              func.coalesce(Job.enqueued_at, Job.updated_at) < enqueued_before)
        return list(s.scalars(q))


def expire_uploads(db: Database, older_than_s: float) -> list[str]:
    """Cancel jobs still `uploading` after older_than_s (abandoned resumable uploads). Returns their ids."""
    with db.session() as s:
        ids = list(s.scalars(select(Job.id).where(Job.state == "uploading",
                                                  Job.updated_at < now() - older_than_s)))
    return [j for j in ids if update_job(db, j, Job.state == "uploading", state="cancelled",
                                         error_code="upload_expired",
                                         error_message="the upload was not committed in time")]


def count_by_state(db: Database) -> dict[str, int]:
    with db.session() as s:
        rows = s.execute(select(Job.state, func.count()).group_by(Job.state))
        return {state: int(n) for state, n in rows}


def stage_duration_stats(db: Database) -> dict[str, tuple[float, int]]:
    """stage -> (sum of seconds, count) over all jobs' completed stages."""
    out: dict[str, tuple[float, int]] = {}
    with db.session() as s:
        for durations in s.scalars(select(Job.stage_durations)):
            for stage, sec in (durations or {}).items():
                total, n = out.get(stage, (0.0, 0))
                out[stage] = (total + float(sec), n + 1)
    return out
