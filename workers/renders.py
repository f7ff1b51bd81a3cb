"""The render task body: novel views of a trained job, written under outputs/renders/<render id>/."""

from __future__ import annotations

import logging
import time

import numpy as np
from sqlalchemy import update

from core.errors import UserInputError
from core.pipeline import RenderRequest
from core.progress import never_stop, no_progress
from service.models import Job, Render
from service.storage import file_sha256
from workers.runner import WorkerContext, free_accelerator

log = logging.getLogger("nerfserve.worker")


def take_render(ctx: WorkerContext, render_id: str) -> Render | None:
    """queued -> running (or a running one whose worker went silent); None if not ours to run."""
    t = time.time()
    stale = t - ctx.settings.lease_timeout_s
    with ctx.db.session() as s:
        res = s.execute(update(Render).where(Render.id == render_id, (Render.state == "queued") | (
            (Render.state == "running") & (Render.updated_at < stale))).values(
            state="running", updated_at=t, attempts=Render.attempts + 1))
        if res.rowcount != 1:
            return None
        return s.get(Render, render_id)


def _finish(ctx: WorkerContext, render_id: str, **values) -> None:
    with ctx.db.session() as s:
        s.execute(update(Render).where(Render.id == render_id).values(updated_at=time.time(), **values))


def run_render(ctx: WorkerContext, render_id: str) -> str:
    r = take_render(ctx, render_id)
    if r is None:
        return "skipped"
    if r.attempts > ctx.settings.max_attempts:
        _finish(ctx, render_id, state="failed", error_message="the render worker died on every attempt")
        return "failed"
    with ctx.db.session() as s:
        job = s.get(Job, r.job_id)
    dirs = ctx.storage.job_dirs(r.job_id)
    out = dirs.render_dir(render_id)
    q = r.request
    req = RenderRequest(c2w=np.asarray(q["poses"], dtype=np.float64), width=int(q["width"]),
                        height=int(q["height"]), focal=tuple(q["focal"]) if q.get("focal") else None,
                        what=tuple(q.get("what") or ("rgb", "depth")))
    try:
        if job is None:
            raise UserInputError("job_deleted", "the job was deleted")
        paths = ctx.pipeline.render(dirs, req, out, no_progress, never_stop)
    except UserInputError as e:
        _finish(ctx, render_id, state="failed", error_message=f"{e.message} {e.hint}".strip())
        return "failed"
    except Exception as e:
        log.exception("render %s failed", render_id)
        free_accelerator()
        _finish(ctx, render_id, state="failed", error_message=f"render failed: {type(e).__name__}: {e}"[:2000])
        return "failed"
    files = []
    for p in paths:
        rel = p.relative_to(dirs.outputs).as_posix()
        kind = "depth" if "depth" in p.name else "rgb"
        files.append({"path": rel, "kind": kind, "bytes": p.stat().st_size, "sha256": file_sha256(p)})
    _finish(ctx, render_id, state="succeeded", files=files)
    return "succeeded"
