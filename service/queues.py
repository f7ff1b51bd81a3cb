"""Celery app factory and publishing: two queues (`cpu`: ingest, poses, webhooks; `gpu`: train, export, renders).

Messages carry only ids; the jobs table holds the state. There is no result backend: Celery's task
state is never read as a job's status. The worker's app is `workers.celery_app:app`; the API makes its
own with `make_celery(settings)` to publish.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from service.settings import Settings

STAGE_QUEUE = {"ingest": "cpu", "poses": "cpu", "train": "gpu", "export": "gpu"}
TASK_PREFIX = "nerfserve."


def stage_task_name(stage: str) -> str:
    return f"{TASK_PREFIX}stage.{stage}"


RENDER_TASK = f"{TASK_PREFIX}render"
WEBHOOK_TASK = f"{TASK_PREFIX}webhook"
TASK_QUEUE = {**{stage_task_name(s): q for s, q in STAGE_QUEUE.items()}, RENDER_TASK: "gpu", WEBHOOK_TASK: "cpu"}


def broker_options(settings: Settings) -> dict:
    """Transport options: the visibility timeout (Redis) or the folders of the filesystem transport."""
    url = settings.celery_broker_url
    if url.startswith("filesystem"):
        d = settings.broker_dir
        for sub in ("queue", "control", "processed"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        return {"data_folder_in": str(d / "queue"), "data_folder_out": str(d / "queue"),
                "control_folder": str(d / "control"), "processed_folder": str(d / "processed"),
                "store_processed": False, "polling_interval": 0.5}
    vt = float(settings.visibility_timeout_s)
    # Sweep for expired unacked messages every ~vt/4 (at most every 10 s), so a short visibility timeout
    # really redelivers; socket timeouts so a vanished broker cannot hang a publish forever.
    opts = {"visibility_timeout": vt, "unacked_restore_interval": max(1, min(10, int(vt / 4))),
            "unacked_restore_throttle": 1, "socket_timeout": 30, "socket_connect_timeout": 5}
    if settings.redis_key_prefix:
        opts["global_keyprefix"] = settings.redis_key_prefix
    return opts


def make_celery(settings: Settings) -> Celery:
    app = Celery("nerfserve", broker=settings.celery_broker_url, include=["workers.tasks"])
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        # Each queue has its own direct exchange and key: a message for one never lands in the other.
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in ("cpu", "gpu")],
        task_default_queue="cpu",
        task_default_exchange="cpu",
        task_default_routing_key="cpu",
        task_routes={name: {"queue": q} for name, q in TASK_QUEUE.items()},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        task_acks_late=False,  # per task: only the idempotent ones ack late
        task_reject_on_worker_lost=False,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 2},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.nerfserve_settings = settings
    return app


def enqueue_stage(celery: Celery, job_id: str, stage: str) -> None:
    """Publish the task of `stage` for `job_id` (the message carries the job id only)."""
    import uuid

    celery.send_task(stage_task_name(stage), args=[job_id], queue=STAGE_QUEUE[stage],
                     task_id=f"{job_id}.{stage}.{uuid.uuid4().hex[:8]}")


def enqueue_render(celery: Celery, render_id: str) -> None:
    celery.send_task(RENDER_TASK, args=[render_id], queue="gpu")


def enqueue_webhook(celery: Celery, job_id: str) -> None:
    celery.send_task(WEBHOOK_TASK, args=[job_id], queue="cpu")
