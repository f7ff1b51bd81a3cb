"""Webhook delivery: one POST of the job's final state, signed when NERFSERVE_WEBHOOK_SECRET is set.

Right before connecting, the target's host is resolved and checked again (service.netguard), and the POST goes to
the checked address with the original Host header and TLS server name: a name that resolves to an internal
address by now (DNS rebinding) gets nothing. Proxies from the environment are not used, for the same reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx

from service import crud, netguard
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


def post_pinned(target: netguard.Target, body: bytes, headers: dict[str, str], timeout_s: float) -> httpx.Response:
    """POST `body` to the first of the target's checked addresses that accepts a connection; no redirects."""
    url = httpx.URL(target.url)
    headers = {**headers, "Host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": target.host} if url.scheme == "https" else {}
    ssl_context = httpx.create_ssl_context()
    error: httpx.HTTPError | None = None
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False, verify=ssl_context) as client:
        for address in target.addresses:
            try:
                return client.post(url.copy_with(host=str(address)), content=body, headers=headers,
                                   extensions=extensions)
            except httpx.ConnectError as e:
                error = e
    assert error is not None
    raise error


def deliver(ctx: WorkerContext, job_id: str, attempt: int) -> tuple[str, bool]:
    """POST once. Returns (outcome, retry?): retry on connection and DNS errors, 429 and 5xx only; a target
    that resolves to a refused address is never contacted nor retried."""
    body = payload(ctx, job_id)
    if body is None:
        return "no webhook", False
    job = crud.get_job(ctx.db, job_id)
    assert job is not None
    url = job.options["webhook_url"]
    headers = {"Content-Type": "application/json", "User-Agent": "nerfserve-webhook"}
    if ctx.settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(ctx.settings.webhook_secret, body)
    refused = False
    try:
        target = netguard.check_url(url, ctx.settings.webhook_allow_hosts)
        r = post_pinned(target, body, headers, ctx.settings.webhook_timeout_s)
        code, retry = r.status_code, r.status_code == 429 or r.status_code >= 500
        outcome = f"HTTP {code}"
    except netguard.Unresolved as e:
        outcome, retry = e.message, True
    except netguard.Refused as e:
        outcome, retry, refused = e.message, False, True
    except httpx.HTTPError as e:
        outcome, retry = f"{type(e).__name__}", True
    final = not retry or attempt > ctx.settings.webhook_retries
    verdict = "refused" if refused else "delivered" if not retry else "failed" if final else "retrying"
    status = f"{verdict}: {outcome} (attempt {attempt})"
    if len(status) > 200:  # the column's width
        status = f"{verdict}: {outcome[:200 - len(verdict) - 20]}... (attempt {attempt})"
    crud.update_job(ctx.db, job_id, webhook_status=status, updated_at=job.updated_at)
    append_log(ctx.storage.log_path(job_id), f"webhook {status}")
    return status, retry
