"""The job spec: every option of a job, its range, its default and the stage it invalidates, defined once.

The HTTP API takes a `JobSpec` as a job's `options`; the CLI's flags are generated from it (`cli/options.py`);
`train_config` and `export_config` turn it into the engine's configs. Values are strictly typed: `steps: true`,
`steps: "100"` or `upsample: 4.0` are refused, as are unknown names.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from core.errors import UserInputError
from core.export.config import DEFAULT_MESH_METHOD, MESH_RESOLUTION_RANGE, ExportConfig
from core.models.config import EVAL_MAX_SIDE_RANGE, EVAL_VIEWS_MAX, TrainConfig

Stage = Literal["ingest", "poses", "train", "export"]
OutputKind = Literal["depth", "mesh", "tsdf", "pointcloud", "views", "video"]
Device = Literal["auto", "cpu", "cuda"]


def _opt(default: Any, stage: Stage | None, description: str, **kw: Any) -> Any:
    """A field with its help text and the stage a change of it invalidates (None: no stage)."""
    return Field(default, description=description, json_schema_extra={"stage": stage}, **kw)


class JobSpec(BaseModel):
    """What a job computes. Every default works; every field is documented in /docs and `nerfserve --help`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # ingest and poses
    max_image_size: StrictInt = _opt(1600, "ingest", "longest image side in pixels for poses and training "
                                     "(larger images are downscaled, intrinsics scaled with them)", ge=64, le=8192)
    matcher: Literal["auto", "exhaustive", "sequential", "spatial"] = _opt(
        "auto", "poses", "feature matching: auto picks sequential for video, spatial for geotagged photos")
    # training
    preset: Literal["fast", "balanced", "quality"] = _opt(
        "balanced", "train", "training preset: fast (minutes on a CPU), balanced, quality")
    steps: StrictInt | None = _opt(None, "train", "training steps; none: the preset's", ge=1, le=1_000_000)
    model: Literal["nerf", "feature_field"] = _opt(
        "nerf", "train", "nerf (hash-grid NeRF) or feature_field (GIRAFFE-style features + a neural renderer)")
    feature_dim: StrictInt = _opt(16, "train", "feature_field: feature channels per point", ge=4, le=64)
    upsample: Literal[1, 2, 4, 8] = _opt(4, "train", "feature_field: the neural renderer's upsampling factor")
    skip_kernel: Literal[1, 3] = _opt(1, "train", "feature_field: first-skip colour correction per ray (1) "
                                      "or 3x3 (3)")
    margin_loss: Literal["on", "off"] = _opt("off", "train", "feature_field: also supervise the colour of the "
                                             "rays around each training patch")
    composition: Literal["on", "off"] = _opt("off", "train", "a foreground field (where the cameras look) plus "
                                             "a background field; enables mesh_part foreground")
    scene_mode: Literal["auto", "bounded", "unbounded"] = _opt(
        "auto", "train", "bounded (an object in a box) or unbounded (contracted space); auto from the cameras")
    sampler: Literal["occupancy", "hierarchical"] = _opt(
        "occupancy", "train", "ray sampling: occupancy grid (instant-ngp) or coarse-to-fine")
    pixel_sampling: Literal["uniform", "selective"] = _opt(
        "uniform", "train", "training pixels: uniform, or selective (more rays where the error is high)")
    device: Device = _opt("auto", "train", "where to train and render: auto (CUDA when present), cpu or cuda; a "
                          "service worker's own setting replaces auto")
    backend: Literal["auto", "torch", "triton", "tcnn"] = _opt(
        "auto", "train", "hash-grid backend: auto picks tcnn if installed, else triton on CUDA, else torch")
    eval_views: StrictInt = _opt(4, "train", "held-out views evaluated after training; 0: every one", ge=0,
                                 le=EVAL_VIEWS_MAX)
    eval_max_side: StrictInt = _opt(400, "train", "long side of the evaluation renders in pixels; 0: full size",
                                    ge=0, le=EVAL_MAX_SIDE_RANGE[1])
    # export
    outputs: list[OutputKind] = _opt(["depth", "mesh", "views"], "export", "what to export",
                                     min_length=1, max_length=6)
    mesh_method: Literal["auto", "density", "tsdf"] = _opt(
        "auto", "export", f"mesh extraction: density (marching cubes), tsdf, auto ({DEFAULT_MESH_METHOD})")
    mesh_part: Literal["all", "foreground"] = _opt("all", "export", "foreground needs composition on")
    mesh_resolution: StrictInt = _opt(256, "export", "marching-cubes samples along the longest side",
                                      ge=MESH_RESOLUTION_RANGE[0], le=MESH_RESOLUTION_RANGE[1])
    mesh_face_budget: StrictInt | None = _opt(None, "export", "decimate meshes to at most this many faces",
                                              ge=100, le=50_000_000)
    frames: StrictInt = _opt(60, "export", "frames of the novel-view orbit and video", ge=1, le=3600)
    fps: StrictInt = _opt(24, "export", "video frame rate", ge=1, le=120)
    view_max_side: StrictInt = _opt(720, "export", "long side of novel views in pixels", ge=16, le=8192)
    depth_max_side: StrictInt | None = _opt(None, "export", "long side of depth maps; none: the image's",
                                            ge=16, le=8192)
    depth_views: Literal["all", "train", "test"] = _opt("all", "export", "cameras that get depth maps")
    fusion_max_side: StrictInt = _opt(256, "export", "long side of the internal renders for fusion, colours "
                                      "and the point cloud", ge=16, le=4096)
    # delivery
    webhook_url: AnyHttpUrl | None = _opt(None, None, "POSTed once when the job succeeds or fails")

    @model_validator(mode="before")
    @classmethod
    def _integers_are_integers(cls, data: Any) -> Any:
        """Integer choices (upsample, skip_kernel) refuse true and 4.0 like the other integers do."""
        if isinstance(data, dict):
            for name, value in data.items():
                f = cls.model_fields.get(name)
                if f is not None and get_origin(f.annotation) is Literal \
                        and all(type(a) is int for a in get_args(f.annotation)) and type(value) is not int:
                    raise ValueError(f"{name}: must be an integer, one of {list(get_args(f.annotation))}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.mesh_part == "foreground" and self.composition != "on":
            raise ValueError("mesh_part 'foreground' needs composition 'on' (a foreground field to mesh)")
        if 0 < self.eval_max_side < EVAL_MAX_SIDE_RANGE[0]:
            raise ValueError(f"eval_max_side: 0 (full size) or {EVAL_MAX_SIDE_RANGE[0]} to {EVAL_MAX_SIDE_RANGE[1]}")
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError("outputs: each kind once")
        return self

    def to_store(self) -> dict:
        """JSON-ready values, every field (defaults included), as a job row keeps them."""
        return self.model_dump(mode="json")

    @classmethod
    def from_store(cls, data: dict, device: str | None = None) -> JobSpec:
        """The spec of a stored job (`to_store` output), validated like a new one; `device` replaces "auto".

        Raises UserInputError("invalid_options") with what was wrong."""
        try:
            spec = cls.model_validate(data)
        except ValidationError as e:
            raise UserInputError("invalid_options", f"the job's options are not valid: {describe(e)}",
                                 "Restart the job with valid options (see JobSpec in /docs).") from None
        if device and spec.device == "auto":
            spec = spec.model_copy(update={"device": device})
        return spec


def describe(e: ValidationError, most: int = 5) -> str:
    """A one-line summary of a validation error: `name: message; ...`."""
    def one(d: dict) -> str:
        where = ".".join(str(x) for x in d["loc"]) or "options"
        got = f" (got {d['input']!r})" if d.get("type") != "missing" and not isinstance(d.get("input"), dict) else ""
        return f"{where}: {d['msg']}{got}"

    return "; ".join(one(d) for d in e.errors()[:most])


def option_stage(name: str) -> Stage | None:
    """The earliest stage a change of option `name` invalidates (None: no stage)."""
    return JobSpec.model_fields[name].json_schema_extra["stage"]


STAGE_OF_OPTION: dict[str, Stage | None] = {name: option_stage(name) for name in JobSpec.model_fields}


def train_config(spec: JobSpec) -> TrainConfig:
    """The TrainConfig of a spec."""
    over: dict = {"model": spec.model, "device": spec.device, "feature_dim": spec.feature_dim,
                  "upsample": spec.upsample, "composition": spec.composition == "on",
                  "margin_loss": spec.margin_loss == "on",
                  "skip_kernel": spec.skip_kernel, "scene_mode": spec.scene_mode, "sampler": spec.sampler,
                  "pixel_sampling": spec.pixel_sampling, "backend": spec.backend, "max_side": spec.max_image_size,
                  "eval_views": spec.eval_views, "eval_max_side": spec.eval_max_side}
    if spec.steps:
        # A short run still checkpoints about ten times, so a crashed worker loses little.
        base = TrainConfig.preset(spec.preset)
        over["steps"] = spec.steps
        over["checkpoint_every"] = max(10, min(base.checkpoint_every, spec.steps // 10))
    return TrainConfig.preset(spec.preset, **over)


def export_config(spec: JobSpec, **extra: Any) -> ExportConfig:
    """The ExportConfig of a spec; `extra`: ExportConfig fields the spec does not hold (e.g. a camera-path file)."""
    kw: dict = {"what": tuple(spec.outputs), "mesh_resolution": spec.mesh_resolution, "mesh_part": spec.mesh_part,
                "mesh_face_budget": spec.mesh_face_budget, "n_frames": spec.frames, "fps": spec.fps,
                "view_max_side": spec.view_max_side, "depth_max_side": spec.depth_max_side,
                "depth_views": spec.depth_views, "fusion_max_side": spec.fusion_max_side}
    if spec.mesh_method != "auto":
        kw["mesh_method"] = spec.mesh_method
    return ExportConfig(**{**kw, **extra})
