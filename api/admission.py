"""Turning checked uploads into a queued job: limits per key, staging, the job row, the first task."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import update
from starlette.datastructures import UploadFile

from api.errors import ApiError
from api.services import Services
from core.jobspec import JobSpec, describe
from service import crud, netguard
from service.intake import check_files, zip_limits
from service.joblog import append_log
from service.models import ApiKey, Job
from service.settings import Settings
from service.storage import CHUNK, atomic_write_chunks, remove_tree, safe_filename

MAX_OPTIONS_BYTES = 64 * 1024


def check_in_flight(svc: Services, key: ApiKey) -> None:
    n = crud.count_in_flight(svc.db, key.id)
    limit = svc.settings.max_jobs_in_flight
    if n >= limit:
        raise ApiError(429, "too_many_jobs", f"this key has {n} jobs in flight, the limit is {limit}",
                       "wait for one to finish, or cancel one (POST /v1/jobs/{id}/cancel)",
                       {"Retry-After": "60"})


def parse_options(raw: str | None) -> JobSpec:
    """The `options` form field (a JSON object of at most MAX_OPTIONS_BYTES) -> JobSpec; 413/422 with what was
    wrong."""
    size = len(raw.encode("utf-8", "surrogatepass")) if raw else 0
    if size > MAX_OPTIONS_BYTES:
        raise ApiError(413, "options_too_large", f"options is {size} bytes, over the limit of {MAX_OPTIONS_BYTES}",
                       'send only the options you set, e.g. {"preset": "fast"}')
    try:
        data = json.loads(raw) if raw and raw.strip() else {}
    except json.JSONDecodeError as e:
        raise ApiError(422, "invalid_options", f"options is not valid JSON ({e.msg} at {e.pos})",
                       'send a JSON object, e.g. {"preset": "fast"}') from None
    except RecursionError:
        raise ApiError(422, "invalid_options", "options is nested too deeply",
                       'send a flat JSON object, e.g. {"preset": "fast"}') from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_options", "options must be a JSON object", 'e.g. {"preset": "fast"}')
    return validate_options(data)


def validate_options(data: dict) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, "invalid_options", f"options: {describe(e)}",
                       "see JobSpec in /docs for the allowed names and values") from None


def check_webhook(settings: Settings, spec: JobSpec) -> None:
    """422 when the spec's webhook_url points at an internal address (see service.netguard). Resolves the host:
    blocking, call it from a worker thread."""
    if spec.webhook_url is None:
        return
    try:
        netguard.check_url(str(spec.webhook_url), settings.webhook_allow_hosts)
    except netguard.Refused as e:
        raise ApiError(422, "invalid_options", f"options: webhook_url: {e.message}", e.hint) from None


def receive_files(uploads: list[UploadFile], staging: Path) -> list[tuple[Path, str]]:
    """Copy each uploaded file into `staging` (atomically, by chunks). Returns (path, original name).

    Blocking: call it from a worker thread (starlette.concurrency.run_in_threadpool).
    """
    out: list[tuple[Path, str]] = []
    used: set[str] = set()
    for up in uploads:
        original = up.filename or "upload"
        name = safe_filename(original)
        stem, dot, ext = name.rpartition(".")
        i = 1
        while name.lower() in used:
            name = f"{stem or ext}_{i}{dot}{ext if stem else ''}"
            i += 1
        used.add(name.lower())
        up.file.seek(0)

        def chunks(f=up.file):
            while chunk := f.read(CHUNK):
                yield chunk

        atomic_write_chunks(staging / name, chunks())
        out.append((staging / name, original))
    return out


def admit(svc: Services, key: ApiKey, staging: Path, named: list[tuple[Path, str]], options: JobSpec,
          job_id: str | None = None) -> Job:
    """Check the staged files, make (or promote) the job row, move the files in, enqueue the first stage.

    On any refusal the staging folder is removed and no job row is left behind (for an existing
    `uploading` job, the row stays as it was).
    """
    s = svc.settings
    try:
        intake = check_files(named, s.max_images, zip_limits(s))
        opts = options.to_store()
        if job_id is None:
            job = crud.create_job(svc.db, key.id, opts, state="queued", input_bytes=intake.bytes,
                                   input_files=intake.files)
        else:
            with svc.db.session() as sess:
                res = sess.execute(update(Job).where(Job.id == job_id, Job.state == "uploading").values(
                    state="queued", options=opts, input_bytes=intake.bytes, input_files=intake.files,
                    updated_at=crud.now()))
                if res.rowcount != 1:
                    raise ApiError(409, "upload_not_open", "this upload was already committed or its job removed")
            job = crud.get_job(svc.db, job_id)
            assert job is not None
        dirs = svc.storage.job_dirs(job.id)
        dirs.root.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, dirs.inputs)
        except OSError:
            if job_id is None:
                crud.delete_job(svc.db, job.id)
            raise
    finally:
        remove_tree(staging)
    append_log(svc.storage.log_path(job.id), f"job created: {intake.files} files ({intake.images} images, "
               f"{intake.videos} videos, {intake.bytes} bytes); options {json.dumps(opts, sort_keys=True)}")
    svc.enqueue(job.id, "ingest")
    return crud.get_job(svc.db, job.id) or job
