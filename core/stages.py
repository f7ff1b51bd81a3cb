"""The real stage bodies: ingest (core.dataparsers.ingest), poses (core.dataparsers.sfm), train (core.engine),
export (core.export) and novel-view renders, over one job folder (core.pipeline.JobDirs)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.dataparsers.ingest import IngestConfig, IngestResult, ingest
from core.dataparsers.readers import load_capture
from core.dataparsers.sfm import SfmConfig, estimate_poses
from core.engine.train import train
from core.export.pipeline import export_all
from core.export.views import render_poses
from core.jobspec import JobSpec, export_config, train_config
from core.pipeline import JobDirs, Pipeline, RenderRequest
from core.progress import ProgressFn, StopFn
from core.scene.load import load_scene


def _input_files(dirs: JobDirs) -> list[Path]:
    return sorted(p for p in dirs.inputs.rglob("*") if p.is_file() and not p.name.startswith("."))


def ingest_stage(dirs: JobDirs, spec: JobSpec, progress: ProgressFn, should_stop: StopFn) -> dict:
    """Decode and resize the uploads into dirs.ingest (images, report)."""
    result = ingest(_input_files(dirs), dirs.ingest, IngestConfig(max_side=spec.max_image_size), progress)
    result.save()
    return {"images": len(result.image_paths), "rejected": len(result.rejected),
            "known_poses": result.known_poses is not None}


def poses_stage(dirs: JobDirs, spec: JobSpec, progress: ProgressFn, should_stop: StopFn) -> dict:
    """Estimate camera poses from dirs.ingest into dirs.sfm (transforms.json, report)."""
    cfg = SfmConfig(matcher=spec.matcher)
    result = estimate_poses(IngestResult.load(dirs.ingest), dirs.sfm, cfg, progress, should_stop)
    report = getattr(result, "report", None) or {}
    keys = ("registered", "images", "registered_fraction", "mean_reprojection_error_px", "points3d", "matcher")
    return {k: report[k] for k in keys if isinstance(report, dict) and k in report}


def train_stage(dirs: JobDirs, spec: JobSpec, progress: ProgressFn, should_stop: StopFn) -> dict:
    """Train on dirs.sfm's capture; checkpoints in dirs.checkpoints (resumed); the scene in dirs.scene."""
    capture = load_capture(dirs.sfm)
    scene = train(capture, train_config(spec), progress, should_stop, checkpoint_dir=dirs.checkpoints,
                  resume=True)
    tmp = dirs.root / ".scene.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    scene.save(tmp)
    shutil.rmtree(dirs.scene, ignore_errors=True)
    os.replace(tmp, dirs.scene)
    return {k: v for k, v in scene.metrics.items() if isinstance(v, int | float | str)}


def export_stage(dirs: JobDirs, spec: JobSpec, progress: ProgressFn, should_stop: StopFn) -> dict:
    """Export the trained scene into dirs.outputs (and outputs/manifest.json)."""
    scene = load_scene(dirs.scene, device=spec.device)
    manifest = export_all(scene, dirs.outputs, export_config(spec), progress, should_stop,
                          capture=load_capture(dirs.sfm))
    return {"files": len(manifest.get("files", []))}


def render_stage(dirs: JobDirs, request: RenderRequest, out_dir: Path, progress: ProgressFn,
                 should_stop: StopFn) -> list[Path]:
    """Render novel views of dirs.scene into out_dir; returns the files written."""
    scene = load_scene(dirs.scene)
    k0 = scene.intrinsics[0].scaled(request.width, request.height)
    if request.focal is not None:
        k0 = replace(k0, fx=float(request.focal[0]), fy=float(request.focal[1]))
    return list(render_poses(scene, np.asarray(request.c2w, dtype=np.float64), k0, out_dir, what=request.what))


PIPELINE = Pipeline(ingest=ingest_stage, poses=poses_stage, train=train_stage, export=export_stage,
                    render=render_stage)
