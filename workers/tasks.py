"""Celery tasks: one per stage, plus renders and webhooks. Each message carries one id only.

Stage and render tasks are idempotent (a lease guards them; a stage skips what is done), so they ack
late: a message is acknowledged only once its task has finished. The webhook task is not (a POST
may repeat), so it acks early and retries with back-off itself.
"""

from __future__ import annotations

import os

from celery import Task, shared_task

from service import queues
from service.settings import Settings, get_settings
from workers.runner import WorkerContext, run_stage_task

_CONTEXT: tuple[int, WorkerContext] | None = None


def context(app) -> WorkerContext:
    """This process's WorkerContext, made on first use after the fork (no engine crosses a fork)."""
    global _CONTEXT
    if _CONTEXT is not None and _CONTEXT[0] == os.getpid():
        return _CONTEXT[1]
    from core.pipeline import load_pipeline
    from service.db import Database
    from service.storage import Storage

    settings: Settings = getattr(app, "nerfserve_settings", None) or get_settings()
    db = Database(settings.db_url)
    db.upgrade()
    ctx = WorkerContext(settings=settings, db=db, storage=Storage(settings.data_root),
                        pipeline=load_pipeline(settings.pipeline),
                        enqueue_stage=lambda job_id, stage: queues.enqueue_stage(app, job_id, stage),
                        enqueue_webhook=lambda job_id: queues.enqueue_webhook(app, job_id))
    _CONTEXT = (os.getpid(), ctx)
    return ctx


def _stage_task(stage: str):
    @shared_task(name=queues.stage_task_name(stage), bind=True, acks_late=True, ignore_result=True)
    def task(self: Task, job_id: str) -> str:
        return run_stage_task(context(self.app), job_id, stage)

    task.__doc__ = f"Run stage {stage!r} of a job (message: the job id)."
    return task


ingest = _stage_task("ingest")
poses = _stage_task("poses")
train = _stage_task("train")
export = _stage_task("export")


@shared_task(name=queues.RENDER_TASK, bind=True, acks_late=True, ignore_result=True)
def render(self: Task, render_id: str) -> str:
    """Render novel views of a trained job (message: the render id)."""
    from workers.renders import run_render

    return run_render(context(self.app), render_id)


@shared_task(name=queues.WEBHOOK_TASK, bind=True, acks_late=False, ignore_result=True, max_retries=None)
def webhook(self: Task, job_id: str) -> str:
    """POST the job's final state to its webhook_url; retried with exponential back-off."""
    from workers.webhooks import deliver

    ctx = context(self.app)
    outcome, retry = deliver(ctx, job_id, attempt=self.request.retries + 1)
    if retry and self.request.retries < ctx.settings.webhook_retries:
        raise self.retry(countdown=ctx.settings.webhook_backoff_s * 2 ** self.request.retries)
    return outcome
