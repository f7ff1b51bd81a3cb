"""What the API process holds: settings, database, storage, a Celery publisher and a broker view."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery

from service import crud
from service.broker import BrokerView
from service.db import Database
from service.queues import enqueue_render, enqueue_stage, make_celery
from service.reconciler import ReconcileReport, ReconcilerThread, reconcile_once
from service.settings import Settings
from service.storage import Storage

log = logging.getLogger("nerfserve.api")


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: Storage
    celery: Celery
    broker: BrokerView

    @staticmethod
    def create(settings: Settings) -> Services:
        storage = Storage(settings.data_root)
        storage.ensure()
        db = Database(settings.db_url)
        db.upgrade()
        return Services(settings, db, storage, make_celery(settings), BrokerView(settings))

    def enqueue(self, job_id: str, stage: str) -> bool:
        """Publish a stage task; on a broker failure the job stays queued and the reconciler retries."""
        try:
            enqueue_stage(self.celery, job_id, stage)
        except Exception as e:
            log.warning("enqueue of %s failed (the reconciler will retry): %s", job_id, e)
            return False
        crud.mark_enqueued(self.db, job_id)
        return True

    def enqueue_render(self, render_id: str) -> None:
        enqueue_render(self.celery, render_id)

    def reconcile(self) -> ReconcileReport:
        return reconcile_once(self.db, self.storage, self.settings, self.broker,
                              lambda job_id, stage: enqueue_stage(self.celery, job_id, stage))

    def reconciler(self) -> ReconcilerThread:
        return ReconcilerThread(self.settings.reconcile_interval_s, self.reconcile)

    def close(self) -> None:
        self.db.dispose()
