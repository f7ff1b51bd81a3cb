"""/v1/uploads: resumable uploads of one big file (a zip or a video) in parts, each with its sha256.

    POST /v1/uploads {"filename", "size"}            -> an upload (and its job, state `uploading`)
    PUT  /v1/uploads/{id}/parts/{n}  (X-Part-SHA256)  -> stores part n (1-based) if its sha256 matches
    GET  /v1/uploads/{id}                             -> the parts received (resume after the last one)
    POST /v1/uploads/{id}/commit {"options"}          -> joins the parts, checks them, queues the job
"""

from __future__ import annotations

import re
import time
import uuid

from fastapi import APIRouter, Header, Path, Request
from sqlalchemy import select

from api.admission import admit, check_in_flight, check_webhook
from api.deps import Key, Svc, base_url
from api.errors import ApiError, not_found
from api.schemas import CommitIn, ErrorOut, JobOut, PartOut, UploadCreate, UploadOut, job_out
from api.services import Services
from service import crud
from service.intake import IMAGE_EXT, VIDEO_EXT
from service.models import Upload
from service.storage import CHUNK, atomic_write_chunks, remove_tree, safe_filename

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
ERRORS = {401: {"model": ErrorOut}, 404: {"model": ErrorOut}}
PART_RE = re.compile(r"^part-(\d{6})\.([0-9a-f]{64})$")
MAX_PARTS = 10000

RAW_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}


def owned_upload(svc: Services, key, upload_id: str) -> Upload:
    with svc.db.session() as s:
        up = s.get(Upload, upload_id)
    if up is None or up.owner != key.id:
        raise not_found("upload")
    return up


def received_parts(svc: Services, upload_id: str) -> list[PartOut]:
    d = svc.storage.upload_dir(upload_id)
    parts = []
    for p in d.glob("part-*") if d.is_dir() else []:
        m = PART_RE.match(p.name)
        if m:
            parts.append(PartOut(number=int(m.group(1)), size=p.stat().st_size, sha256=m.group(2)))
    return sorted(parts, key=lambda x: x.number)


def upload_out(svc: Services, up: Upload, base: str) -> UploadOut:
    parts = received_parts(svc, up.id)
    u = f"{base}/v1/uploads/{up.id}"
    return UploadOut(id=up.id, job_id=up.job_id or "", filename=up.filename, state=up.state, parts=parts,
                     received_bytes=sum(p.size for p in parts),
                     urls={"self": u, "parts": u + "/parts/{n}", "commit": u + "/commit",
                           "job": f"{base}/v1/jobs/{up.job_id}"})


@router.post("", status_code=201, response_model=UploadOut,
             responses={**ERRORS, 413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 429: {"model": ErrorOut}})
def create_upload(body: UploadCreate, request: Request, svc: Svc, key: Key) -> UploadOut:
    """Start a resumable upload of one zip or video; its job waits in state `uploading`."""
    name = safe_filename(body.filename)
    ext = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    if ext not in {".zip"} | VIDEO_EXT | IMAGE_EXT:
        raise ApiError(415, "unsupported_file", f"{body.filename}: resumable uploads take a .zip or a video",
                       "zip the images (`zip -r capture.zip images/`) and upload the zip")
    if body.size is not None and body.size > svc.settings.max_upload_bytes:
        raise ApiError(413, "too_large", f"{body.size} bytes is over the limit of "
                       f"{svc.settings.max_upload_bytes}", "send fewer or smaller images")
    check_in_flight(svc, key)
    job = crud.create_job(svc.db, key.id, {}, state="uploading")
    t = time.time()
    up = Upload(id=str(uuid.uuid4()), owner=key.id, created_at=t, updated_at=t, filename=name, size=body.size,
                state="open", job_id=job.id)
    with svc.db.session() as s:
        s.add(up)
    svc.storage.upload_dir(up.id).mkdir(parents=True, exist_ok=True)
    return upload_out(svc, up, base_url(request))


@router.get("/{upload_id}", response_model=UploadOut, responses=ERRORS)
def get_upload(upload_id: str, request: Request, svc: Svc, key: Key) -> UploadOut:
    """The parts received so far: a client resumes after the last one."""
    return upload_out(svc, owned_upload(svc, key, upload_id), base_url(request))


@router.put("/{upload_id}/parts/{number}", response_model=PartOut, openapi_extra=RAW_BODY,
            responses={**ERRORS, 400: {"model": ErrorOut}, 409: {"model": ErrorOut}, 413: {"model": ErrorOut}})
async def put_part(request: Request, svc: Svc, key: Key, upload_id: str,
                   number: int = Path(ge=1, le=MAX_PARTS),
                   x_part_sha256: str = Header(min_length=64, max_length=64, pattern="^[0-9a-fA-F]{64}$",
                                               description="sha256 (hex) of this part's bytes")) -> PartOut:
    """Store part `number` (the raw body). Sending a part again replaces it."""
    up = owned_upload(svc, key, upload_id)
    if up.state != "open":
        raise ApiError(409, "upload_not_open", "this upload was already committed")
    d = svc.storage.upload_dir(up.id)
    have = sum(p.size for p in received_parts(svc, up.id) if p.number != number)
    limit = min(svc.settings.max_part_bytes, max(svc.settings.max_upload_bytes - have, 0))
    want = x_part_sha256.lower()
    tmp = d / f".incoming-{number:06d}-{uuid.uuid4().hex[:8]}"
    buf = _PartWriter()
    try:
        async for c in request.stream():
            buf.add(c, limit, tmp)
    except BaseException:
        buf.discard(tmp)
        raise
    size, digest = buf.finish(tmp)
    if size == 0:
        buf.discard(tmp)
        raise ApiError(400, "empty_part", f"part {number} is empty", "send the part's bytes as the body")
    if digest != want:
        buf.discard(tmp)
        raise ApiError(400, "part_checksum_mismatch", f"part {number}: sha256 is {digest}, the header says {want}",
                       "the part was damaged in transit: send it again")
    for old in d.glob(f"part-{number:06d}.*"):
        old.unlink(missing_ok=True)
    tmp.rename(d / f"part-{number:06d}.{digest}")
    if up.job_id:
        crud.update_job(svc.db, up.job_id)  # still active: keeps the upload from expiring
    return PartOut(number=number, size=size, sha256=digest)


class _PartWriter:
    """Writes a streamed body to a temp file with a running sha256 (the body is never whole in RAM)."""

    def __init__(self) -> None:
        import hashlib

        self.h = hashlib.sha256()
        self.n = 0
        self.f = None

    def add(self, chunk: bytes, limit: int, tmp) -> None:
        self.n += len(chunk)
        if self.n > limit:
            raise ApiError(413, "too_large", f"the part is over {limit} bytes (per-part limit or what is left "
                           "of the upload's total)", "send smaller parts")
        if self.f is None:
            self.f = open(tmp, "wb")  # noqa: SIM115 - closed in finish/discard
        self.f.write(chunk)
        self.h.update(chunk)

    def finish(self, tmp) -> tuple[int, str]:
        if self.f is None:
            open(tmp, "wb").close()
        else:
            self.f.flush()
            self.f.close()
        return self.n, self.h.hexdigest()

    def discard(self, tmp) -> None:
        if self.f is not None and not self.f.closed:
            self.f.close()
        tmp.unlink(missing_ok=True)


@router.post("/{upload_id}/commit", status_code=201, response_model=JobOut,
             responses={**ERRORS, 400: {"model": ErrorOut}, 409: {"model": ErrorOut}, 413: {"model": ErrorOut},
                        415: {"model": ErrorOut}, 422: {"model": ErrorOut}})
def commit_upload(upload_id: str, request: Request, svc: Svc, key: Key, body: CommitIn | None = None) -> JobOut:
    """Join parts 1..N (no gaps) into the file, check it, and queue its job with `options`."""
    up = owned_upload(svc, key, upload_id)
    if up.state != "open":
        raise ApiError(409, "upload_not_open", "this upload was already committed")
    parts = received_parts(svc, up.id)
    if not parts:
        raise ApiError(400, "no_parts", "no parts were uploaded", "PUT /v1/uploads/{id}/parts/1 first")
    missing = sorted(set(range(1, parts[-1].number + 1)) - {p.number for p in parts})
    if missing:
        raise ApiError(400, "missing_parts", f"parts {missing[:20]} are missing", "upload them, then commit again")
    total = sum(p.size for p in parts)
    if up.size is not None and total != up.size:
        raise ApiError(400, "size_mismatch", f"received {total} bytes, the upload declared {up.size}",
                       "upload the missing bytes (GET the upload to see its parts)")
    opts = body.options if body else CommitIn().options
    check_webhook(svc.settings, opts)
    d = svc.storage.upload_dir(up.id)
    staging = svc.storage.new_staging_dir()

    def joined():
        for p in parts:
            with open(d / f"part-{p.number:06d}.{p.sha256}", "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

    try:
        atomic_write_chunks(staging / up.filename, joined())
    except BaseException:
        remove_tree(staging)
        raise
    job = admit(svc, key, staging, [(staging / up.filename, up.filename)], opts, job_id=up.job_id)
    with svc.db.session() as s:
        row = s.get(Upload, up.id)
        if row is not None:
            row.state, row.updated_at = "committed", time.time()
    remove_tree(d)
    return job_out(job, base_url(request))


def remove_uploads_of(svc: Services, job_id: str) -> None:
    """Delete the part folders of a job's uploads (the rows go with the job)."""
    with svc.db.session() as s:
        ids = list(s.scalars(select(Upload.id).where(Upload.job_id == job_id)))
    for uid in ids:
        remove_tree(svc.storage.upload_dir(uid))
