"""Request and response schemas (pydantic). Inputs refuse unknown fields (422); outputs are separate."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.jobspec import JobSpec
from service.models import Render
from service.views import JobError, JobOut, iso, job_out, job_urls  # noqa: F401  (re-exported)


class RestartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    options: dict | None = Field(None, description="options to change (same fields as when creating the job)")



class ErrorOut(BaseModel):
    error: str
    message: str
    hint: str = ""


class JobList(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int
    next: str | None


class LogOut(BaseModel):
    lines: list[str]
    next: int = Field(description="pass as ?since= to get only newer lines")
    state: str


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255, description="e.g. capture.zip or walk.mp4")
    size: int | None = Field(None, ge=1, description="total bytes, if known (checked against the limit)")


class PartOut(BaseModel):
    number: int
    size: int
    sha256: str


class UploadOut(BaseModel):
    id: str
    job_id: str
    filename: str
    state: str
    parts: list[PartOut]
    received_bytes: int
    urls: dict[str, str]


class CommitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    options: JobSpec = Field(default_factory=JobSpec, description="the job's options (core.jobspec.JobSpec)")


class RenderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    poses: list[list[list[float]]] = Field(
        min_length=1, description="camera-to-world 4x4 matrices, OpenCV axes (x right, y down, z forward), "
                                  "in the job's input frame (the frame of its transforms.json / sfm outputs)")
    width: int = Field(ge=8, le=8192)
    height: int = Field(ge=8, le=8192)
    focal: list[float] | None = Field(None, min_length=2, max_length=2,
                                      description="[fx, fy] in pixels; default: the first camera's, scaled")
    what: list[Literal["rgb", "depth"]] = Field(default_factory=lambda: ["rgb", "depth"], min_length=1)

    @field_validator("poses")
    @classmethod
    def _matrices(cls, v: list[list[list[float]]]) -> list[list[list[float]]]:
        for i, m in enumerate(v):
            if len(m) != 4 or any(len(r) != 4 for r in m):
                raise ValueError(f"pose {i} is not a 4x4 matrix")
            if not all(math.isfinite(x) for r in m for x in r):
                raise ValueError(f"pose {i} has a non-finite value")
            if any(abs(a - b) > 1e-6 for a, b in zip(m[3], (0, 0, 0, 1), strict=True)):
                raise ValueError(f"pose {i}: the last row must be [0, 0, 0, 1]")
        return v

    @field_validator("focal")
    @classmethod
    def _focal(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(f) and f > 0 for f in v):
            raise ValueError("focal lengths must be positive pixels")
        return v


class FileOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    path: str
    url: str
    sha256: str | None = None
    bytes: int | None = None


class RenderOut(BaseModel):
    id: str
    job_id: str
    state: str
    files: list[FileOut]
    error: str | None
    urls: dict[str, str]


class ArtifactsOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    job_id: str
    files: list[FileOut]


def render_out(r: Render, base: str = "") -> RenderOut:
    j = f"{base}/v1/jobs/{r.job_id}"
    files = [FileOut(**{**f, "url": f"{j}/artifacts/{f['path']}"}) for f in (r.files or [])]
    return RenderOut(id=r.id, job_id=r.job_id, state=r.state, files=files, error=r.error_message,
                     urls={"self": f"{j}/renders/{r.id}"})
