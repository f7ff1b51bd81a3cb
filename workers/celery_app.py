"""The worker's Celery app, built from the environment's settings.

    celery -A workers.celery_app worker -Q cpu --concurrency 2          # ingest, poses, webhooks
    celery -A workers.celery_app worker -Q gpu --pool solo              # train, export, renders (one per GPU)

CUDA is touched only inside a task (core.engine.train imports torch lazily), never in the parent process, so
forked pool children can use it.
"""

from __future__ import annotations

from service.queues import make_celery
from service.settings import get_settings

app = make_celery(get_settings())
