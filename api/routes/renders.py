"""/v1/jobs/{id}/renders: novel views (images and depth) of a trained job, rendered on a GPU worker."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request

from api.deps import Key, Svc, base_url
from api.errors import ApiError, not_found
from api.routes.jobs import ERRORS, owned
from api.schemas import ErrorOut, RenderIn, RenderOut, render_out
from service.models import Render

router = APIRouter(prefix="/v1/jobs", tags=["renders"])


@router.post("/{job_id}/renders", status_code=202, response_model=RenderOut,
             responses={**ERRORS, 409: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}})
def create_render(job_id: str, body: RenderIn, request: Request, svc: Svc, key: Key) -> RenderOut:
    """Queue a render of `poses` (camera-to-world, OpenCV axes, input frame) at width x height."""
    job = owned(svc, key, job_id)
    s = svc.settings
    if "train" not in (job.done_stages or []):
        raise ApiError(409, "not_trained", f"the job is {job.state}; it can render once training is done",
                       "poll GET /v1/jobs/{id} until its stage is exporting or it succeeded")
    if len(body.poses) > s.max_render_poses:
        raise ApiError(413, "too_many_poses", f"{len(body.poses)} poses, the limit is {s.max_render_poses}",
                       "split the request")
    if body.width * body.height > s.max_render_pixels:
        raise ApiError(413, "too_many_pixels", f"{body.width}x{body.height} is over {s.max_render_pixels} pixels",
                       "ask for a smaller resolution")
    t = time.time()
    r = Render(id=str(uuid.uuid4()), job_id=job.id, owner=key.id, created_at=t, updated_at=t, state="queued",
               request=body.model_dump(mode="json"), files=[], attempts=0)
    with svc.db.session() as sess:
        sess.add(r)
    try:
        svc.enqueue_render(r.id)
    except Exception:
        raise ApiError(503, "broker_unavailable", "the render could not be queued",
                       "retry in a minute") from None
    return render_out(r, base_url(request))


@router.get("/{job_id}/renders/{render_id}", response_model=RenderOut, responses=ERRORS)
def get_render(job_id: str, render_id: str, request: Request, svc: Svc, key: Key) -> RenderOut:
    """The render's state and, once it succeeded, its files (download them from their `url`)."""
    job = owned(svc, key, job_id)
    with svc.db.session() as sess:
        r = sess.get(Render, render_id)
    if r is None or r.job_id != job.id:
        raise not_found("render")
    return render_out(r, base_url(request))
