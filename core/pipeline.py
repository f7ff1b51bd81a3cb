"""Stage glue: ingest -> poses -> train -> export (and renders), one job folder, no service imports.

Used by the workers (one Celery task per stage) and by `nerfserve reconstruct` (all stages in-process). This module
is light (no torch): the API imports it for the job folder and the stage table; the stage bodies, which import
the engine, are in `core.stages`.
Each stage reads what the previous one wrote under the job folder, writes its own outputs atomically,
and leaves a marker `stages/<stage>.json` when it is complete, so a stage that is run again skips
(idempotent); training resumes from its newest checkpoint.

Job folder layout (JobDirs):
    inputs/       the uploaded files (images, zips, videos)
    ingest/       decoded, resized images and the ingest report
    sfm/          transforms.json, colmap/sparse/0, sfm_report.json (poses, input frame)
    checkpoints/  training checkpoints
    scene/        the trained scene (TrainedScene.save)
    outputs/      the exports and outputs/manifest.json; renders under outputs/renders/<id>/
    stages/       completion markers
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_bytes
from core.jobspec import STAGE_OF_OPTION, JobSpec
from core.progress import ProgressFn, StopFn, never_stop, no_progress

STAGES = ("ingest", "poses", "train", "export")
# Job state while a stage runs, and the band of overall progress (0..100) each stage fills.
STAGE_STATE = {"ingest": "estimating_poses", "poses": "estimating_poses", "train": "training",
               "export": "exporting"}
STAGE_BAND = {"ingest": (0.0, 5.0), "poses": (5.0, 25.0), "train": (25.0, 90.0), "export": (90.0, 100.0)}
@dataclass(frozen=True)
class JobDirs:
    """The folders of one job under its root."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def ingest(self) -> Path:
        return self.root / "ingest"

    @property
    def sfm(self) -> Path:
        return self.root / "sfm"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def scene(self) -> Path:
        return self.root / "scene"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def render_dir(self, render_id: str) -> Path:
        return self.outputs / "renders" / render_id

    def marker(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"


@dataclass
class RenderRequest:
    """Novel views of a trained scene.

    c2w: (K, 4, 4) float64 camera-to-world, OpenCV camera axes, input frame.
    width, height: output size in pixels.
    focal: (fx, fy) in pixels, or None for the first capture camera's focal scaled to the width.
    what: any of ("rgb", "depth").
    """

    c2w: np.ndarray
    width: int
    height: int
    focal: tuple[float, float] | None = None
    what: tuple[str, ...] = ("rgb", "depth")


StageFn = Callable[[JobDirs, JobSpec, ProgressFn, StopFn], dict]
RenderFn = Callable[[JobDirs, RenderRequest, Path, ProgressFn, StopFn], list[Path]]


@dataclass(frozen=True)
class Pipeline:
    """The stage bodies. Each returns a dict of metrics (JSON-serialisable) for the job row."""

    ingest: StageFn
    poses: StageFn
    train: StageFn
    export: StageFn
    render: RenderFn
    name: str = "real"

    def stage(self, name: str) -> StageFn:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {STAGES}")
        return getattr(self, name)


def load_pipeline(spec: str) -> Pipeline:
    """Import a Pipeline from "package.module:ATTRIBUTE" (the default is core.stages:PIPELINE)."""
    module, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module), attr or "PIPELINE")
    if not isinstance(obj, Pipeline):
        raise TypeError(f"{spec} is a {type(obj).__name__}, not a core.pipeline.Pipeline")
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temp file beside `path`, then rename it over `path` (core.atomic)."""
    atomic_write_bytes(path, text.encode())


def stage_done(dirs: JobDirs, stage: str) -> dict | None:
    """The metrics a completed stage recorded, or None if it has not completed."""
    try:
        return json.loads(dirs.marker(stage).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def invalidate_from(dirs: JobDirs, stage: str) -> None:
    """Forget `stage` and every later one (markers, and their outputs where they would be stale)."""
    later = STAGES[STAGES.index(stage):]
    for s in later:
        dirs.marker(s).unlink(missing_ok=True)
    if "train" in later:
        shutil.rmtree(dirs.checkpoints, ignore_errors=True)
        shutil.rmtree(dirs.scene, ignore_errors=True)
    if "export" in later:
        keep = dirs.outputs / "renders"
        if dirs.outputs.is_dir():
            for p in dirs.outputs.iterdir():
                if p != keep:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()


def first_stage_for_changes(old: dict, new: dict) -> str | None:
    """The earliest stage whose options differ between two stored specs (JobSpec.to_store), or None. An option
    missing from a spec stored by an older version counts as its default."""
    defaults = JobSpec().to_store()
    changed = [stage for k, stage in STAGE_OF_OPTION.items()
               if stage is not None and k in new and old.get(k, defaults[k]) != new[k]]
    return min(changed, key=STAGES.index) if changed else None


def run_stage(pipeline: Pipeline, stage: str, dirs: JobDirs, options: JobSpec,
              progress: ProgressFn = no_progress, should_stop: StopFn = never_stop) -> dict:
    """Run one stage unless its marker says it is done; returns the stage's metrics."""
    done = stage_done(dirs, stage)
    if done is not None:
        return done
    metrics = pipeline.stage(stage)(dirs, options, progress, should_stop) or {}
    atomic_write_text(dirs.marker(stage), json.dumps(metrics, default=float))
    return metrics


def run_all(pipeline: Pipeline, dirs: JobDirs, options: JobSpec,
            progress: ProgressFn = no_progress, should_stop: StopFn = never_stop) -> dict:
    """Every stage in order, in this process (`nerfserve reconstruct`). Returns {stage: metrics}."""
    return {s: run_stage(pipeline, s, dirs, options, progress, should_stop) for s in STAGES}


def read_manifest(dirs: JobDirs) -> dict | None:
    """outputs/manifest.json as written by the export stage, or None."""
    try:
        return json.loads((dirs.outputs / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
