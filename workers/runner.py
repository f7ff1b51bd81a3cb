"""What a stage task does: take the lease, heartbeat, run the stage, report progress, hand on.

The task function in workers.tasks is a thin wrapper around `run_stage_task`; everything here is plain
Python (no Celery), given a WorkerContext.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import Cancelled, UserInputError
from core.jobspec import JobSpec
from core.pipeline import STAGE_BAND, Pipeline, run_stage
from core.progress import ProgressEvent
from service import crud
from service.db import Database
from service.joblog import append_log
from service.reconciler import fail_worker_lost
from service.settings import Settings
from service.storage import Storage

log = logging.getLogger("nerfserve.worker")


@dataclass
class WorkerContext:
    """Per-process resources of a worker (made after the fork; see workers.tasks.context)."""

    settings: Settings
    db: Database
    storage: Storage
    pipeline: Pipeline
    enqueue_stage: Callable[[str, str], None]  # (job id, stage)
    enqueue_webhook: Callable[[str], None]  # (job id)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def in_pool_child() -> bool:
    """True inside a prefork pool child (which may exit hard: the pool replaces it)."""
    return multiprocessing.current_process().name != "MainProcess"


class Heartbeat:
    """A thread that renews the lease every `settings.heartbeat_s` and watches for cancellation.

    should_stop() turns True when the user cancelled or the lease was lost; the stage then stops at its
    next check (between training steps). If it does not stop within cancel_grace_s and this is a pool
    child, the job is marked cancelled and the process exits, which frees the GPU at once.
    """

    def __init__(self, ctx: WorkerContext, job_id: str, worker: str) -> None:
        self.ctx, self.job_id, self.worker = ctx, job_id, worker
        self.cancelled = False
        self.lost = False
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def lose(self) -> None:
        self.lost = True
        self._stop.set()

    def _loop(self) -> None:
        s = self.ctx.settings
        tick = min(1.0, s.heartbeat_s)
        last_renew = time.monotonic()
        cancel_seen: float | None = None
        while not self._done.wait(tick):
            try:
                if time.monotonic() - last_renew >= s.heartbeat_s:
                    held, cancel = crud.renew_lease(self.ctx.db, self.job_id, self.worker)
                    last_renew = time.monotonic()
                    if not held:
                        self.lose()
                else:
                    job = crud.get_job(self.ctx.db, self.job_id)
                    cancel = job is None or job.cancel_requested
            except Exception as e:  # a database hiccup: keep working, try again next tick
                log.warning("heartbeat for %s failed: %s", self.job_id, e)
                continue
            if cancel and not self.cancelled:
                self.cancelled = True
                cancel_seen = time.monotonic()
                self._stop.set()
            if cancel_seen is not None and time.monotonic() - cancel_seen > s.cancel_grace_s and in_pool_child():
                crud.end_job(self.ctx.db, self.job_id, "cancelled", "cancelled", "cancelled by the user",
                              worker=self.worker)
                append_log(self.ctx.storage.log_path(self.job_id), "cancelled (stage did not stop; worker "
                           "process ended)")
                os._exit(0)


class ProgressWriter:
    """A ProgressFn that writes to the job row about once a second and to the log every few seconds."""

    def __init__(self, ctx: WorkerContext, job_id: str, worker: str, stage: str, hb: Heartbeat) -> None:
        self.ctx, self.job_id, self.worker, self.stage, self.hb = ctx, job_id, worker, stage, hb
        self.started = time.monotonic()
        self.last_write = -1e9
        self.last_log = -1e9
        self.reports = 0

    def __call__(self, ev: ProgressEvent) -> None:
        t = time.monotonic()
        frac = min(max(float(ev.fraction), 0.0), 1.0)
        if t - self.last_write < self.ctx.settings.progress_interval_s and frac < 1.0:
            return
        self.last_write = t
        self.reports += 1
        eta = ev.metrics.get("eta_s")
        if eta is None and frac > 0.01:
            eta = (t - self.started) * (1 - frac) / frac
        metrics = {f"{self.stage}.{k}": v for k, v in ev.metrics.items()
                   if isinstance(v, int | float | str) and not isinstance(v, bool) and k != "eta_s"}
        if not crud.report_progress(self.ctx.db, self.job_id, self.worker, self.stage, frac,
                                     None if eta is None else float(eta), metrics):
            self.hb.lose()
            return
        if t - self.last_log >= 5.0 or self.reports == 1:
            self.last_log = t
            lo, hi = STAGE_BAND[self.stage]
            shown = " ".join(f"{k}={_short(v)}" for k, v in ev.metrics.items())
            append_log(self.ctx.storage.log_path(self.job_id),
                       f"[{self.stage}] {frac * 100:.0f}% (overall {lo + (hi - lo) * frac:.0f}%) "
                       f"{ev.message} {shown}".rstrip())


def _short(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def free_accelerator() -> None:
    """Release cached GPU memory at once (after a cancel or a failure)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_stage_task(ctx: WorkerContext, job_id: str, stage: str) -> str:
    """Run `stage` of `job_id` if this worker can take the lease. Returns what happened (for logs/tests)."""
    s = ctx.settings
    worker = worker_id()
    logp = ctx.storage.log_path(job_id)
    lease = crud.take_lease(ctx.db, job_id, stage, worker, s.lease_timeout_s, s.max_attempts)
    if not lease.ok:
        return _not_taken(ctx, job_id, stage, lease)
    job = lease.job
    assert job is not None
    append_log(logp, f"[{stage}] started (attempt {job.attempts}, worker {worker})")
    with Heartbeat(ctx, job_id, worker) as hb:
        writer = ProgressWriter(ctx, job_id, worker, stage, hb)
        try:
            spec = JobSpec.from_store(job.options or {}, device=s.device)
            metrics = run_stage(ctx.pipeline, stage, ctx.storage.job_dirs(job_id), spec, writer,
                                hb.should_stop)
            if hb.cancelled:
                raise Cancelled()
        except Cancelled:
            free_accelerator()
            if hb.lost:
                append_log(logp, f"[{stage}] stopped: lease lost to another worker")
                return "lease lost"
            crud.end_job(ctx.db, job_id, "cancelled", "cancelled", "cancelled by the user", worker=worker)
            append_log(logp, f"[{stage}] cancelled")
            _notify(ctx, job_id)
            return "cancelled"
        except UserInputError as e:
            free_accelerator()
            crud.end_job(ctx.db, job_id, "failed", e.code, f"{e.message} {e.hint}".strip(), worker=worker)
            append_log(logp, f"[{stage}] failed: {e.code}: {e.message} {e.hint}".rstrip())
            _notify(ctx, job_id)
            return "failed"
        except Exception as e:
            free_accelerator()
            log.exception("stage %s of job %s failed", stage, job_id)
            msg = f"stage {stage} failed: {type(e).__name__}: {e}"[:2000]
            crud.end_job(ctx.db, job_id, "failed", "stage_error", msg, worker=worker)
            append_log(logp, f"[{stage}] failed: {msg}")
            _notify(ctx, job_id)
            return "failed"
    if hb.lost:
        return "lease lost"
    nxt = crud.finish_stage(ctx.db, job_id, worker, stage, metrics)
    append_log(logp, f"[{stage}] done ({writer.reports} progress reports)")
    if nxt == "succeeded":
        append_log(logp, "job succeeded")
        _notify(ctx, job_id)
    elif nxt is not None:
        _publish(ctx, job_id, nxt)
    return f"done -> {nxt}"


def _publish(ctx: WorkerContext, job_id: str, stage: str) -> None:
    """Hand the job to the next stage's queue. If the broker is down, the reconciler re-enqueues it."""
    try:
        ctx.enqueue_stage(job_id, stage)
        crud.mark_enqueued(ctx.db, job_id)
    except Exception as e:
        log.warning("could not enqueue %s for %s (the reconciler will): %s", stage, job_id, e)


def _notify(ctx: WorkerContext, job_id: str) -> None:
    job = crud.get_job(ctx.db, job_id)
    if job is None or not (job.options or {}).get("webhook_url"):
        return
    try:
        ctx.enqueue_webhook(job_id)
    except Exception as e:
        log.warning("could not enqueue the webhook of %s: %s", job_id, e)


def _not_taken(ctx: WorkerContext, job_id: str, stage: str, lease: crud.LeaseResult) -> str:
    """A task that did not get the lease: finish off what only it can (cancel, give up), else do nothing."""
    logp = ctx.storage.log_path(job_id)
    if lease.why == "cancel requested":
        if crud.end_job(ctx.db, job_id, "cancelled", "cancelled", "cancelled by the user"):
            append_log(logp, f"[{stage}] cancelled before it started")
            _notify(ctx, job_id)
    elif lease.why == "attempts exhausted":
        fail_worker_lost(ctx.db, ctx.storage, job_id, stage, ctx.settings.max_attempts)
        _notify(ctx, job_id)
    log.info("job %s stage %s not run: %s", job_id, stage, lease.why)
    return f"skipped: {lease.why}"
