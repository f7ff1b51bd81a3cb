"""/v1/jobs: create (multipart), list, status, log, cancel, restart, delete."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.admission import admit, check_in_flight, check_webhook, parse_options, receive_files, validate_options
from api.deps import Key, Svc, base_url
from api.errors import ApiError, not_found
from api.limits import BodyTooLarge
from api.schemas import ErrorOut, JobList, JobOut, LogOut, RestartIn, job_out
from core.pipeline import STAGES, first_stage_for_changes, invalidate_from
from service import crud
from service.joblog import append_log, read_log
from service.models import TERMINAL_STATES, Job
from service.storage import remove_tree

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS = {401: {"model": ErrorOut}, 404: {"model": ErrorOut}}

MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["files"],
            "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "images, a zip of images, or a video"},
                "options": {"type": "string", "description": "JSON object of JobSpec, e.g. "
                                                             '{"preset": "fast", "outputs": ["mesh"]}'},
            }}}},
    }
}


def owned(svc, key, job_id: str) -> Job:
    job = crud.get_job(svc.db, job_id, owner=key.id)
    if job is None:
        raise not_found("job")
    return job


@router.post("", status_code=201, response_model=JobOut, openapi_extra=MULTIPART_BODY,
             responses={**ERRORS, 413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut},
                        429: {"model": ErrorOut}})
async def create_job(request: Request, response: Response, svc: Svc, key: Key) -> JobOut:
    """Upload images, a zip or a video (multipart `files`) plus `options` JSON; the job is queued."""
    check_in_flight(svc, key)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(415, "multipart_required", "send the capture as multipart/form-data",
                       "curl -F files=@capture.zip -F 'options={\"preset\":\"fast\"}' ...; or use /v1/uploads")
    s = svc.settings
    try:
        form = await request.form(max_files=s.max_images + 16, max_fields=32)
    except (ApiError, BodyTooLarge):
        raise
    except Exception as e:  # starlette's parser errors (HTTPException 400 / MultiPartException)
        msg = str(getattr(e, "detail", e))
        if "Too many files" in msg:
            raise ApiError(413, "too_many_images", f"more than {s.max_images} files",
                           "send fewer images, or one zip") from None
        raise ApiError(400, "bad_multipart", f"could not read the multipart body: {msg}",
                       "send `files` parts and an optional `options` field") from None
    try:
        uploads = [v for k, v in form.multi_items() if k == "files" and isinstance(v, UploadFile)]
        unknown = sorted({k for k, _ in form.multi_items()} - {"files", "options"})
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown form fields {unknown}",
                           "send only `files` (one or more) and `options`")
        raw_opts = form.get("options")
        if raw_opts is not None and not isinstance(raw_opts, str):
            raise ApiError(422, "invalid_options", "options must be a text field holding JSON, not a file")
        options = parse_options(raw_opts)
        await run_in_threadpool(check_webhook, s, options)
        if not uploads:
            raise ApiError(400, "no_files", "the request holds no `files` parts",
                           "attach images, a zip or a video as `files`")
        job = await run_in_threadpool(_stage_and_admit, svc, key, uploads, options)
    finally:
        await form.close()
    out = job_out(job, base_url(request))
    response.headers["Location"] = out.urls["self"]
    return out


def _stage_and_admit(svc, key, uploads: list[UploadFile], options) -> Job:
    staging = svc.storage.new_staging_dir()
    try:
        named = receive_files(uploads, staging)
    except BaseException:
        remove_tree(staging)
        raise
    return admit(svc, key, staging, named, options)


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(request: Request, svc: Svc, key: Key, limit: int = Query(20, ge=1, le=200),
              offset: int = Query(0, ge=0, le=10**9), state: str | None = Query(None, max_length=32)) -> JobList:
    """The caller's jobs, newest first."""
    rows, total = crud.list_jobs(svc.db, key.id, limit, offset, state)
    base = base_url(request)
    nxt = f"{base}/v1/jobs?limit={limit}&offset={offset + limit}" if offset + limit < total else None
    return JobList(items=[job_out(j, base) for j in rows], total=total, limit=limit, offset=offset, next=nxt)


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(job_id: str, request: Request, svc: Svc, key: Key) -> JobOut:
    """State, stage, progress (stage 0..1 and overall 0..100), ETA, metrics and error."""
    return job_out(owned(svc, key, job_id), base_url(request))


@router.get("/{job_id}/log", response_model=LogOut, responses=ERRORS)
def get_log(job_id: str, svc: Svc, key: Key, since: int = Query(0, ge=0, le=10**9),
            limit: int = Query(1000, ge=1, le=10000)) -> LogOut:
    """Log lines from line `since` on; poll with the returned `next`."""
    job = owned(svc, key, job_id)
    lines, nxt = read_log(svc.storage.log_path(job.id), since, limit)
    return LogOut(lines=lines, next=nxt, state=job.state)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
def cancel_job(job_id: str, request: Request, svc: Svc, key: Key) -> JobOut:
    """Stop the job. A running stage stops at its next check (seconds); the state becomes `cancelled`."""
    job = owned(svc, key, job_id)
    if job.state not in TERMINAL_STATES:
        state = crud.request_cancel(svc.db, job.id, svc.settings.lease_timeout_s)
        append_log(svc.storage.log_path(job.id), f"cancel requested (state now {state})")
    return job_out(owned(svc, key, job_id), base_url(request))


@router.post("/{job_id}/restart", response_model=JobOut, responses={**ERRORS, 409: {"model": ErrorOut},
                                                                     422: {"model": ErrorOut}})
def restart_job(job_id: str, request: Request, svc: Svc, key: Key, body: RestartIn | None = None) -> JobOut:
    """Run a finished job again from its last completed stage, optionally with changed options."""
    job = owned(svc, key, job_id)
    if job.state not in TERMINAL_STATES:
        raise ApiError(409, "job_running", f"the job is {job.state}", "cancel it first, or wait for it to end")
    old = job.options or {}
    spec = validate_options({**old, **((body.options if body else None) or {})})
    check_webhook(svc.settings, spec)
    new = spec.to_store()
    done = [s for s in STAGES if s in (job.done_stages or [])]
    changed = first_stage_for_changes(old, new)
    if changed is not None:
        invalidate_from(svc.storage.job_dirs(job.id), changed)
        done = [s for s in done if STAGES.index(s) < STAGES.index(changed)]
    if len(done) == len(STAGES):
        raise ApiError(409, "nothing_to_redo", "the job already succeeded with these options",
                       "pass changed options, e.g. {\"options\": {\"mesh_resolution\": 512}}")
    check_in_flight(svc, key)
    restarted = crud.restart_job(svc.db, job.id, new, done)
    if restarted is None:
        raise ApiError(409, "job_running", "the job was started meanwhile")
    append_log(svc.storage.log_path(job.id), f"restart requested at stage {restarted.stage}")
    svc.enqueue(job.id, restarted.stage or STAGES[0])
    return job_out(owned(svc, key, job_id), base_url(request))


@router.delete("/{job_id}", status_code=204, responses=ERRORS)
def delete_job(job_id: str, svc: Svc, key: Key) -> Response:
    """Cancel the job if it runs, then remove its row and all of its files."""
    job = owned(svc, key, job_id)
    if job.state not in TERMINAL_STATES:
        crud.request_cancel(svc.db, job.id, svc.settings.lease_timeout_s)
    from api.routes.uploads import remove_uploads_of

    remove_uploads_of(svc, job.id)
    crud.delete_job(svc.db, job.id)
    svc.storage.remove_job(job.id)
    return Response(status_code=204)
