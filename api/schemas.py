"""Request and response schemas (pydantic). Inputs refuse unknown fields (422); outputs are separate."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

from service.models import Render
from service.views import JobError, JobOut, iso, job_out, job_urls  # noqa: F401  (re-exported)

OutputKind = Literal["depth", "mesh", "tsdf", "pointcloud", "views", "video"]


class JobOptions(BaseModel):
    """What to compute. Every field has a default that works."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["fast", "balanced", "quality"] = "balanced"
    model: Literal["nerf", "feature_field"] = "nerf"
    outputs: list[OutputKind] = Field(default_factory=lambda: ["depth", "mesh", "views"], min_length=1,
                                      max_length=6)
    feature_dim: int = Field(16, ge=4, le=64, description="feature_field: feature channels M_f")
    upsample: Literal[1, 2, 4, 8] = Field(4, description="feature_field: neural renderer upsampling (2^n)")
    composition: Literal["on", "off"] = Field("off", description="foreground (the region the cameras look at) "
                                              "+ background fields; enables mesh_part foreground")
    margin_loss: Literal["on", "off"] = Field("off", description="feature_field: also supervise the colour of the "
                                              "rays around each training patch (better on real captures)")
    mesh_method: Literal["auto", "density", "tsdf"] = "auto"
    mesh_part: Literal["all", "foreground"] = Field("all", description="foreground needs composition on")
    mesh_resolution: int = Field(256, ge=32, le=1024)
    max_image_size: int = Field(1600, ge=64, le=8192, description="longest image side after ingest, pixels")
    matcher: Literal["auto", "exhaustive", "sequential", "spatial"] = "auto"
    steps: int | None = Field(None, ge=1, le=1_000_000, description="training steps (default: the preset's)")
    webhook_url: AnyHttpUrl | None = Field(None, description="POSTed once when the job succeeds or fails")

    @field_validator("outputs")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _part_needs_composition(self) -> JobOptions:
        if self.mesh_part == "foreground" and self.composition != "on":
            raise ValueError("mesh_part 'foreground' needs composition 'on' (a foreground field to mesh)")
        return self

    def to_store(self) -> dict:
        d = self.model_dump(mode="json")
        return d


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

    options: JobOptions = Field(default_factory=JobOptions)


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
