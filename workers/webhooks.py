"""Webhook delivery: one POST of the job's final state, signed when NERFSERVE_WEBHOOK_SECRET is set."""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx

from service import crud
from service.joblog import append_log
from service.views import job_out
from workers.runner import WorkerContext

SIGNATURE_HEADER = "X-Nerfserve-Signature"


def payload(ctx: WorkerContext, job_id: str) -> bytes | None:
    job = crud.get_job(ctx.db, job_id)
    if job is None or not (job.options or {}).get("webhook_url"):
        return None
    body = {"event": f"job.{job.state}", "job": job_out(job, ctx.settings.public_url.rstrip("/"))
            .model_dump(mode="json")}
    return json.dumps(body, sort_keys=True).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(ctx: WorkerContext, job_id: str, attempt: int) -> tuple[str, bool]:
    """POST once. Returns (outcome, retry?): retry on connection errors, 429 and 5xx only."""
    body = payload(ctx, job_id)
    if body is None:
        return "no webhook", False
    job = crud.get_job(ctx.db, job_id)
    assert job is not None
    url = job.options["webhook_url"]
    headers = {"Content-Type": "application/json", "User-Agent": "nerfserve-webhook"}
    if ctx.settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(ctx.settings.webhook_secret, body)
    try:
        r = httpx.post(url, content=body, headers=headers, timeout=ctx.settings.webhook_timeout_s)
        code, retry = r.status_code, r.status_code == 429 or r.status_code >= 500
        outcome = f"HTTP {code}"
    except httpx.HTTPError as e:
        outcome, retry = f"{type(e).__name__}", True
    final = not retry or attempt > ctx.settings.webhook_retries
    status = f"{'delivered' if not retry else 'failed' if final else 'retrying'}: {outcome} (attempt {attempt})"
    crud.update_job(ctx.db, job_id, webhook_status=status, updated_at=job.updated_at)
    append_log(ctx.storage.log_path(job_id), f"webhook {status}")
    return status, retry
