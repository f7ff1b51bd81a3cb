"""/v1/jobs/{id}/artifacts: the export manifest with URLs, and file downloads (HTTP Range supported)."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from api.deps import Key, Svc, base_url
from api.errors import ApiError
from api.routes.jobs import ERRORS, owned
from api.schemas import ArtifactsOut, ErrorOut, FileOut
from core.pipeline import read_manifest
from service.storage import resolve_inside

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])


@router.get("/{job_id}/artifacts", response_model=ArtifactsOut, responses={**ERRORS, 409: {"model": ErrorOut}})
def list_artifacts(job_id: str, request: Request, svc: Svc, key: Key) -> ArtifactsOut:
    """The manifest written by the export stage: every file with kind, format, frame, units, bytes, sha256."""
    job = owned(svc, key, job_id)
    manifest = read_manifest(svc.storage.job_dirs(job.id))
    if manifest is None:
        raise ApiError(409, "no_artifacts_yet", f"the job is {job.state}; artifacts appear when it has exported",
                       "poll GET /v1/jobs/{id} until state is succeeded")
    base = f"{base_url(request)}/v1/jobs/{job.id}/artifacts"
    files = [FileOut(**{**f, "url": f"{base}/{f['path']}"}) for f in manifest.get("files", [])
             if isinstance(f, dict) and "path" in f]
    extra = {k: v for k, v in manifest.items() if k not in ("files", "job_id")}
    return ArtifactsOut(job_id=job.id, files=files, **extra)


@router.get("/{job_id}/artifacts/{path:path}", response_class=FileResponse,
            responses={**ERRORS, 400: {"model": ErrorOut}, 206: {"description": "a byte range"},
                       200: {"content": {"application/octet-stream": {}}}})
def get_artifact(job_id: str, path: str, svc: Svc, key: Key) -> FileResponse:
    """One output file. Send `Range: bytes=a-b` to resume a download."""
    job = owned(svc, key, job_id)
    outputs = svc.storage.job_dirs(job.id).outputs
    p = resolve_inside(outputs, path)
    if not p.is_file():
        raise ApiError(404, "artifact_not_found", f"no artifact {path!r} in this job",
                       "list them with GET /v1/jobs/{id}/artifacts")
    media = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
    return FileResponse(p, media_type=media, filename=p.name)
