"""The FastAPI application: `create_app(settings)`; OpenAPI docs at /docs.

    uvicorn --factory api.app:create_app          # reads the environment (NERFSERVE_*, DATABASE_URL, REDIS_URL)
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.errors import install_handlers
from api.limits import PART_ROUTE, UPLOAD_ROUTE, BodyLimit
from api.routes import artifacts, health, jobs, renders, uploads
from api.services import Services
from service.settings import Settings, get_settings

log = logging.getLogger("nerfserve.api")
JSON_BODY_LIMIT = 1024 * 1024


def limit_for(settings: Settings):
    def pick(method: str, path: str) -> tuple[int, str]:
        if method == "POST" and UPLOAD_ROUTE.match(path):
            return settings.max_upload_bytes, ("send fewer or smaller images; the server's limit is "
                                               "NERFSERVE_MAX_UPLOAD_BYTES")
        if method == "PUT" and PART_ROUTE.match(path):
            return settings.max_part_bytes, "send smaller parts (NERFSERVE_MAX_PART_BYTES)"
        return JSON_BODY_LIMIT, "request bodies other than uploads are small JSON documents"

    return pick


def create_app(settings: Settings | None = None, reconcile: bool = True) -> FastAPI:
    """The API. `reconcile`: run the reconciler thread in this process (every reconcile_interval_s)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = Services.create(settings)
        app.state.services = svc
        svc.storage.clean_staging()
        thread = svc.reconciler() if reconcile else None
        if thread:
            thread.start()
        try:
            yield
        finally:
            if thread:
                thread.stop()
            svc.close()

    app = FastAPI(title="nerfserve", version="0.1.0", lifespan=lifespan,
                  description="Neural reconstruction as a service: upload photos, a zip or a video; get camera "
                              "poses, depth maps, meshes and novel views. Authenticate with `Authorization: "
                              "Bearer <key>` (`nerfserve keys create NAME`).")
    install_handlers(app)
    for r in (jobs.router, uploads.router, artifacts.router, renders.router, health.router):
        app.include_router(r)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Location", "Content-Range"])
    app.add_middleware(BodyLimit, limit_for=limit_for(settings))
    return app
